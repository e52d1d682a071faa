//! Containers and compressed files: gzip, bzip2, xz, zip (stored and deflate) and tar,
//! recognised by their magic bytes and opened in memory, member by member.
//!
//! Every reader treats its input as hostile. Declared sizes are never trusted: a member is
//! read through a cap one byte past what the [`ArchiveLimits`] still allow, so a
//! decompression bomb, or a header that claims less than it holds, stops at the cap. Nothing
//! is written to disk, so `../` in member names cannot escape anywhere; such names are only
//! reported, as given. Nesting depth, member count and total bytes are bounded, which also
//! ends self-referencing archives.

use std::io::{Cursor, Read};
use std::time::Instant;

/// ClamAV-style limits on what is unpacked from one scanned object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveLimits {
    /// Containers nested deeper than this are not opened (ClamAV's `MaxRecursion`).
    pub max_depth: u32,
    /// Members unpacked in all, at every depth (ClamAV's `MaxFiles`).
    pub max_files: u32,
    /// Bytes unpacked in all (ClamAV's `MaxScanSize`).
    pub max_total: u64,
    /// Bytes of one member (ClamAV's `MaxFileSize`).
    pub max_member: u64,
    /// Bytes unpacked from one container may be at most this many times its own size (above
    /// [`RATIO_FLOOR`]); 0 = no ratio limit. Stops decompression bombs early, before the size
    /// limits are reached.
    pub max_ratio: u32,
    /// Report a limit hit as the detection `Heuristics.Limits.Exceeded` (ClamAV's
    /// `AlertExceedsMax`) instead of unscanned.
    pub alert_exceeds_max: bool,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        ArchiveLimits {
            max_depth: 17,
            max_files: 10_000,
            max_total: 400 << 20,
            max_member: 100 << 20,
            max_ratio: 1000,
            alert_exceeds_max: false,
        }
    }
}

/// A container format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// gzip (RFC 1952), members concatenated.
    Gzip,
    /// bzip2, streams concatenated.
    Bzip2,
    /// xz.
    Xz,
    /// zip (stored and deflate members).
    Zip,
    /// POSIX/GNU tar.
    Tar,
}

impl Kind {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Gzip => "gzip",
            Kind::Bzip2 => "bzip2",
            Kind::Xz => "xz",
            Kind::Zip => "zip",
            Kind::Tar => "tar",
        }
    }
}

/// The container format of `data`, by its magic bytes.
pub fn detect(data: &[u8]) -> Option<Kind> {
    match data {
        [0x1f, 0x8b, 8, ..] => Some(Kind::Gzip),
        [b'B', b'Z', b'h', b'1'..=b'9', ..] => Some(Kind::Bzip2),
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => Some(Kind::Xz),
        [b'P', b'K', 3, 4, ..] | [b'P', b'K', 5, 6, ..] => Some(Kind::Zip),
        _ if data.get(257..262) == Some(b"ustar") => Some(Kind::Tar),
        _ => None,
    }
}

/// Every container may unpack this much whatever its ratio.
pub const RATIO_FLOOR: u64 = 1 << 20;

/// What is left of the limits while one object is unpacked.
#[derive(Debug, Clone)]
pub struct Budget {
    files: u32,
    bytes: u64,
    member: u64,
    ratio: u64,
    /// What the container being unpacked may still yield under the ratio limit.
    room: u64,
    deadline: Option<Instant>,
    /// The first limit that was hit, if any: the object was not fully scanned.
    pub exceeded: Option<String>,
    /// Unpacking stopped at the deadline.
    pub timed_out: bool,
}

impl Budget {
    /// A fresh budget.
    pub fn new(l: &ArchiveLimits) -> Self {
        Budget {
            files: l.max_files,
            bytes: l.max_total,
            member: l.max_member,
            ratio: u64::from(l.max_ratio),
            room: u64::MAX,
            deadline: None,
            exceeded: None,
            timed_out: false,
        }
    }

    /// Stop decompressing at `deadline` (the object's scan-time limit).
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    fn exceed(&mut self, what: String) {
        if self.exceeded.is_none() {
            self.exceeded = Some(what);
        }
    }

    /// Read a member through the caps. `None` when a limit stopped it (recorded).
    fn read_member(&mut self, name: &str, r: impl Read) -> std::io::Result<Option<Vec<u8>>> {
        if self.files == 0 {
            self.exceed("too many files in archives".into());
            return Ok(None);
        }
        self.files -= 1;
        let cap = self.member.min(self.bytes).min(self.room);
        let mut out = Vec::new();
        let r = Timed {
            inner: r,
            deadline: self.deadline,
        };
        match r.take(cap.saturating_add(1)).read_to_end(&mut out) {
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                self.timed_out = true;
                return Ok(None);
            }
            r => r?,
        };
        if out.len() as u64 > cap {
            self.exceed(if cap == self.member {
                format!("{name}: a member over {} bytes", self.member)
            } else if cap == self.bytes {
                "archive content over the total scan size".to_owned()
            } else {
                format!(
                    "{name}: unpacks to over {} times its container's size",
                    self.ratio
                )
            });
            return Ok(None);
        }
        self.bytes -= out.len() as u64;
        self.room = self.room.saturating_sub(out.len() as u64);
        Ok(Some(out))
    }

    /// Start unpacking a container of `len` bytes: returns the outer container's room, for
    /// [`Budget::end_container`].
    fn begin_container(&mut self, len: usize) -> u64 {
        let outer = self.room;
        self.room = if self.ratio == 0 {
            u64::MAX
        } else {
            (len as u64).saturating_mul(self.ratio).max(RATIO_FLOOR)
        };
        outer
    }

    fn end_container(&mut self, outer: u64, used: u64) {
        self.room = outer.saturating_sub(used);
    }
}

/// A reader that fails with `TimedOut` once its deadline has passed.
struct Timed<R> {
    inner: R,
    deadline: Option<Instant>,
}

impl<R: Read> Read for Timed<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.deadline.is_some_and(|d| Instant::now() > d) {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.inner.read(buf)
    }
}

/// What the caller wants after a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// The next member.
    Continue,
    /// Stop unpacking (a timeout).
    Stop,
}

/// Call `f(name, bytes)` for every member of a `kind` container, within `budget`. A corrupt
/// or truncated container yields the members before the damage and then `Err` with what went
/// wrong; limits are recorded in the budget, not returned.
pub fn for_each_member(
    kind: Kind,
    data: &[u8],
    budget: &mut Budget,
    f: &mut dyn FnMut(&str, &[u8], &mut Budget) -> Flow,
) -> Result<(), String> {
    let outer = budget.begin_container(data.len());
    let before = budget.bytes;
    let r = members_of(kind, data, budget, f);
    // What this container unpacked (nested ones included) counts against the outer room.
    let used = before.saturating_sub(budget.bytes);
    budget.end_container(outer, used);
    r
}

fn members_of(
    kind: Kind,
    data: &[u8],
    budget: &mut Budget,
    f: &mut dyn FnMut(&str, &[u8], &mut Budget) -> Flow,
) -> Result<(), String> {
    match kind {
        Kind::Gzip => {
            let mut dec = flate2::read::MultiGzDecoder::new(data);
            let bytes = budget
                .read_member("(gzip)", &mut dec)
                .map_err(|e| format!("gzip: {e}"))?;
            // The name stored in the header, once the header has been read.
            let name = dec
                .header()
                .and_then(|h| h.filename())
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .unwrap_or_else(|| "(gzip)".to_owned());
            if let Some(bytes) = bytes {
                f(&name, &bytes, budget);
            }
            Ok(())
        }
        Kind::Bzip2 => {
            let mut dec = bzip2::read::MultiBzDecoder::new(data);
            member(budget, "(bzip2)", &mut dec, f).map(|_| ())
        }
        Kind::Xz => {
            // lzma-rs writes into a sink; the sink enforces the cap.
            let cap = budget.member.min(budget.bytes).min(budget.room);
            if budget.files == 0 {
                budget.exceed("too many files in archives".into());
                return Ok(());
            }
            budget.files -= 1;
            let mut sink = CappedVec {
                out: Vec::new(),
                cap,
            };
            let input = Timed {
                inner: data,
                deadline: budget.deadline,
            };
            let r = lzma_rs::xz_decompress(&mut std::io::BufReader::new(input), &mut sink);
            if matches!(&r, Err(lzma_rs::error::Error::IoError(e)) if e.kind() == std::io::ErrorKind::TimedOut)
            {
                budget.timed_out = true;
                return Ok(());
            }
            if sink.out.len() as u64 > cap
                || matches!(&r, Err(lzma_rs::error::Error::IoError(e)) if e.kind() == std::io::ErrorKind::WriteZero)
            {
                budget.exceed(format!("(xz): a member over {cap} bytes"));
                return Ok(());
            }
            budget.bytes -= sink.out.len() as u64;
            budget.room = budget.room.saturating_sub(sink.out.len() as u64);
            if !sink.out.is_empty() {
                let _ = f("(xz)", &sink.out, budget);
            }
            r.map_err(|e| format!("xz: {e}"))
        }
        Kind::Zip => zip_members(data, budget, f),
        Kind::Tar => tar_members(data, budget, f),
    }
}

/// Read one member through the budget and hand it to `f`.
fn member(
    budget: &mut Budget,
    name: &str,
    r: impl Read,
    f: &mut dyn FnMut(&str, &[u8], &mut Budget) -> Flow,
) -> Result<Flow, String> {
    match budget.read_member(name, r) {
        Ok(Some(bytes)) => Ok(f(name, &bytes, budget)),
        Ok(None) => Ok(Flow::Continue),
        Err(e) => Err(format!("{name}: {e}")),
    }
}

fn zip_members(
    data: &[u8],
    budget: &mut Budget,
    f: &mut dyn FnMut(&str, &[u8], &mut Budget) -> Flow,
) -> Result<(), String> {
    let mut z = zip::ZipArchive::new(Cursor::new(data)).map_err(|e| format!("zip: {e}"))?;
    for i in 0..z.len() {
        // bzip2 members are decoded here, with the pure-Rust decoder.
        let bzip2 = z.by_index_raw(i).is_ok_and(|r| {
            r.compression() == zip::CompressionMethod::BZIP2 && !r.encrypted() && !r.is_dir()
        });
        if bzip2 {
            let mut raw = z
                .by_index_raw(i)
                .map_err(|e| format!("zip member {i}: {e}"))?;
            let name = raw.name().to_owned();
            if member(budget, &name, bzip2::read::BzDecoder::new(&mut raw), f)? == Flow::Stop {
                return Ok(());
            }
            continue;
        }
        let mut entry = match z.by_index(i) {
            Ok(e) => e,
            Err(zip::result::ZipError::UnsupportedArchive(what)) => {
                budget.exceed(format!("zip member {i}: {what}"));
                continue;
            }
            Err(e) => return Err(format!("zip member {i}: {e}")),
        };
        if entry.is_dir() {
            continue;
        }
        if entry.encrypted() {
            budget.exceed(format!("{}: encrypted", entry.name()));
            continue;
        }
        let name = entry.name().to_owned();
        if member(budget, &name, &mut entry, f)? == Flow::Stop {
            return Ok(());
        }
    }
    Ok(())
}

fn tar_members(
    data: &[u8],
    budget: &mut Budget,
    f: &mut dyn FnMut(&str, &[u8], &mut Budget) -> Flow,
) -> Result<(), String> {
    let mut a = tar::Archive::new(Cursor::new(data));
    let entries = a.entries().map_err(|e| format!("tar: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("tar: {e}"))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path_bytes()
            .iter()
            .map(|&b| b as char)
            .collect::<String>();
        if member(budget, &name, &mut entry, f)? == Flow::Stop {
            return Ok(());
        }
    }
    Ok(())
}

/// A writer that refuses bytes past its cap (one byte over is kept, to tell "at the cap" from
/// "over it").
struct CappedVec {
    out: Vec<u8>,
    cap: u64,
}

impl std::io::Write for CappedVec {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = (self.cap + 1).saturating_sub(self.out.len() as u64);
        if room == 0 {
            return Ok(0);
        }
        let n = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        self.out.extend_from_slice(buf.get(..n).unwrap_or(&[]));
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use std::io::Write;

    /// Members (name, bytes), the budget left, and the reader's result.
    type Unpacked = (Vec<(String, Vec<u8>)>, Budget, Result<(), String>);

    fn members(data: &[u8], limits: &ArchiveLimits) -> Unpacked {
        let mut b = Budget::new(limits);
        let mut out = Vec::new();
        let r = match detect(data) {
            Some(k) => for_each_member(k, data, &mut b, &mut |n, d, _| {
                out.push((n.to_owned(), d.to_vec()));
                Flow::Continue
            }),
            None => Err("not a container".into()),
        };
        (out, b, r)
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn each_format_yields_its_members() {
        let (m, _, r) = members(&gz(b"inside gzip"), &ArchiveLimits::default());
        assert!(r.is_ok());
        assert_eq!(m, vec![("(gzip)".into(), b"inside gzip".to_vec())]);
        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        bz.write_all(b"inside bzip2").unwrap();
        let (m, _, _) = members(&bz.finish().unwrap(), &ArchiveLimits::default());
        assert_eq!(m[0].1, b"inside bzip2");
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut &b"inside xz"[..], &mut xz).unwrap();
        let (m, _, r) = members(&xz, &ArchiveLimits::default());
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(m[0].1, b"inside xz");
        // A `../` name (the tar crate refuses to write one: set the raw field).
        let mut t = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..12].copy_from_slice(b"../dir/x.exe");
        h.set_size(9);
        h.set_cksum();
        t.append(&h, &b"inside ta"[..]).unwrap();
        let (m, _, r) = members(&t.into_inner().unwrap(), &ArchiveLimits::default());
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(m, vec![("../dir/x.exe".into(), b"inside ta".to_vec())]);
        let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, method) in [
            ("a.txt", zip::CompressionMethod::Stored),
            ("d/b.txt", zip::CompressionMethod::Deflated),
        ] {
            z.start_file(
                name,
                zip::write::SimpleFileOptions::default().compression_method(method),
            )
            .unwrap();
            z.write_all(name.as_bytes()).unwrap();
        }
        let (m, _, r) = members(&z.finish().unwrap().into_inner(), &ArchiveLimits::default());
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(m.len(), 2);
        assert_eq!(m[1], ("d/b.txt".into(), b"d/b.txt".to_vec()));
    }

    #[test]
    fn bombs_and_lies_stop_at_the_limits() {
        let limits = ArchiveLimits {
            max_member: 1 << 20,
            ..ArchiveLimits::default()
        };
        // 64 MiB of zeros in a few kB.
        let bomb = gz(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 1 << 20);
        let (m, b, _) = members(&bomb, &limits);
        assert!(m.is_empty());
        assert!(b.exceeded.unwrap().contains("over 1048576 bytes"));
        // A truncated stream: an error, never a member past the damage.
        let whole = gz(&[7u8; 10_000]);
        let (m, _, r) = members(&whole[..whole.len() / 2], &limits);
        assert!(m.is_empty() && r.is_err(), "{m:?} {r:?}");
        // A zip whose header claims a small size but holds more: read to the cap only.
        let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
        z.start_file("big", zip::write::SimpleFileOptions::default())
            .unwrap();
        z.write_all(&vec![1u8; 2 << 20]).unwrap();
        let (m, b, _) = members(&z.finish().unwrap().into_inner(), &limits);
        assert!(m.is_empty());
        assert!(b.exceeded.is_some());
        // Member count.
        let mut t = tar::Builder::new(Vec::new());
        for i in 0..5 {
            let mut h = tar::Header::new_gnu();
            h.set_size(1);
            h.set_cksum();
            t.append_data(&mut h, format!("f{i}"), &b"x"[..]).unwrap();
        }
        let few = ArchiveLimits {
            max_files: 3,
            ..limits
        };
        let (m, b, _) = members(&t.into_inner().unwrap(), &few);
        assert_eq!(m.len(), 3);
        assert!(b.exceeded.unwrap().contains("too many files"));
    }

    #[test]
    fn a_bomb_stops_at_the_ratio_and_a_slow_one_at_the_deadline() {
        // 32 MiB of zeros in bzip2: a ratio far above 1000, under the size limits.
        let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..32 {
            enc.write_all(&chunk).unwrap();
        }
        let bomb = enc.finish().unwrap();
        let limits = ArchiveLimits {
            max_member: 1 << 30,
            max_total: 1 << 30,
            ..ArchiveLimits::default()
        };
        let (m, b, _) = members(&bomb, &limits);
        assert!(m.is_empty());
        let why = b.exceeded.unwrap();
        assert!(why.contains("over 1000 times"), "{why}");
        // Without the ratio limit, it unpacks (the size limits allow it).
        let (m, b, _) = members(
            &bomb,
            &ArchiveLimits {
                max_ratio: 0,
                ..limits
            },
        );
        assert_eq!(m.len(), 1);
        assert!(b.exceeded.is_none());
        // A deadline already past: nothing is unpacked, and the budget says why.
        let mut budget = Budget::new(&ArchiveLimits {
            max_ratio: 0,
            ..limits
        })
        .with_deadline(std::time::Instant::now());
        let mut n = 0;
        let _ = for_each_member(Kind::Bzip2, &bomb, &mut budget, &mut |_, _, _| {
            n += 1;
            Flow::Continue
        });
        assert_eq!(n, 0);
        assert!(budget.timed_out);
    }

    #[test]
    fn garbage_after_a_magic_is_an_error_not_a_panic() {
        for magic in [
            &b"\x1f\x8b\x08"[..],
            b"BZh9",
            b"\xfd7zXZ\0",
            b"PK\x03\x04",
            b"PK\x05\x06",
        ] {
            let mut d = magic.to_vec();
            d.extend_from_slice(&[0xff; 600]);
            let (m, _, r) = members(&d, &ArchiveLimits::default());
            assert!(m.is_empty());
            assert!(r.is_err(), "{magic:?}");
        }
    }
}
