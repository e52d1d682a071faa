//! Guest memory sources, described by capabilities: a backend implements only what it can do.
//!
//! - [`PhysRead`]: read guest-physical memory.
//! - [`RamLayout`]: the guest-physical ranges that hold RAM, and (for file-backed sources)
//!   each range as one contiguous byte slice, so a scanner can match across page boundaries
//!   without copying.
//!
//! Sources here (feature `dump`):
//! - [`Dump`], mapped read-only: a raw RAM image (file offset = guest-physical address, or a
//!   layout given by the caller, e.g. from QMP), and the ELF core written by QEMU's
//!   `dump-guest-memory`, whose `PT_LOAD` segments carry guest-physical addresses in
//!   `p_paddr`.
//! - [`LiveRam`]: a running QEMU guest's `memory-backend-file`, read with `pread` and never
//!   mapped, so the host truncating the file gives an error ([`MemError::Shrunk`]), not a
//!   SIGBUS. Its layout comes from QMP (`hypervisor_api::qmp::Qmp::ram_layout`, feature
//!   `qemu`): guests with more RAM than fits below the PCI hole (2 GiB on q35 above 2.75 GiB,
//!   3 GiB on pc) have the rest at 4 GiB and up.
//!
//! ```no_run
//! use hypervisor_api::mem::{Dump, RamLayout, PhysRead};
//! let d = Dump::open("guest.core".as_ref()).unwrap();
//! for r in d.regions() {
//!     println!("{:#x}..{:#x}", r.gpa, r.gpa + r.len);
//! }
//! let mut page = [0u8; 4096];
//! d.read_phys(0x1000, &mut page).unwrap();
//! ```
//!
//! # Current limitations
//! - A raw image whose guest has a RAM hole below 4 GiB must be described by the caller
//!   (the file alone does not say where the hole is): [`Dump::open_raw_with_layout`].
//! - Page events for QEMU come from hashing pages (svm's sweeper), not from traps.

use std::path::Path;

/// A guest-physical address.
pub type Gpa = u64;

/// One contiguous guest-physical range of RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Its first guest-physical address.
    pub gpa: Gpa,
    /// Its length in bytes.
    pub len: u64,
    /// Where its bytes start in the source's backing file.
    pub file_offset: u64,
}

/// Why a memory source cannot be used or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MemError {
    /// The file could not be opened or mapped.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The dump is not a well-formed ELF core or raw image.
    #[error("malformed dump: {0}")]
    Malformed(String),
    /// An address outside every RAM region.
    #[error("guest-physical range {gpa:#x}+{len} is not RAM in this source")]
    NotRam {
        /// Start.
        gpa: Gpa,
        /// Length.
        len: u64,
    },
    /// The backing file shrank under us.
    #[error("the backing file is now {now} bytes, shorter than the {expected} mapped")]
    Shrunk {
        /// Bytes expected.
        expected: u64,
        /// Bytes now.
        now: u64,
    },
}

/// Read guest-physical memory.
pub trait PhysRead {
    /// Fill `buf` from `gpa`. The whole range must be RAM.
    fn read_phys(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), MemError>;
}

/// The RAM layout, with each region's bytes.
pub trait RamLayout {
    /// The RAM regions, sorted by address, not overlapping.
    fn regions(&self) -> &[Region];
    /// One region's bytes (zero-copy for file-backed sources).
    fn region_bytes(&self, r: &Region) -> Result<&[u8], MemError>;
}

/// Which kind of file a [`Dump`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpKind {
    /// Raw RAM: file offset = guest-physical address.
    Raw,
    /// An ELF core from `dump-guest-memory`.
    ElfCore,
}

/// A memory dump or RAM file, mapped read-only.
#[derive(Debug)]
pub struct Dump {
    map: memmap2::Mmap,
    file: std::fs::File,
    kind: DumpKind,
    regions: Vec<Region>,
}

/// The most `PT_LOAD` segments accepted (QEMU writes one per RAM block).
const MAX_SEGMENTS: usize = 4096;

impl Dump {
    /// Open a dump: an ELF core if it starts with the ELF magic, else raw RAM.
    pub fn open(path: &Path) -> Result<Dump, MemError> {
        Self::open_as(path, None)
    }

    /// Open a raw RAM file (e.g. QEMU's `memory-backend-file`), whatever its first bytes.
    pub fn open_raw(path: &Path) -> Result<Dump, MemError> {
        Self::open_as(path, Some(DumpKind::Raw))
    }

    /// Open a raw RAM file whose guest-physical layout is known (from QMP): each region says
    /// where its bytes are in the file. Regions must lie inside the file and not overlap.
    pub fn open_raw_with_layout(path: &Path, layout: Vec<Region>) -> Result<Dump, MemError> {
        let mut d = Self::open_as(path, Some(DumpKind::Raw))?;
        d.regions = check_layout(layout, d.map.len() as u64)?;
        Ok(d)
    }

    /// Open as `kind`, or by the first bytes when `None`.
    fn open_as(path: &Path, kind: Option<DumpKind>) -> Result<Dump, MemError> {
        let file = std::fs::File::open(path)?;
        let map = map(&file)?;
        let kind = kind.unwrap_or(if map.starts_with(b"\x7fELF") {
            DumpKind::ElfCore
        } else {
            DumpKind::Raw
        });
        let regions = match kind {
            DumpKind::ElfCore => elf_core_regions(&map)?,
            DumpKind::Raw => vec![Region {
                gpa: 0,
                len: map.len() as u64,
                file_offset: 0,
            }],
        };
        Ok(Dump {
            map,
            file,
            kind,
            regions,
        })
    }

    /// What kind of file this is.
    pub fn kind(&self) -> DumpKind {
        self.kind
    }

    /// Total RAM bytes.
    pub fn ram_bytes(&self) -> u64 {
        self.regions.iter().map(|r| r.len).sum()
    }

    /// Fails when the file is now shorter than what was mapped: touching the missing part of
    /// the mapping would raise SIGBUS. Call before reading a file another process may
    /// truncate (a live RAM file).
    pub fn check_size(&self) -> Result<(), MemError> {
        let now = self.file.metadata()?.len();
        let expected = self.map.len() as u64;
        if now < expected {
            return Err(MemError::Shrunk { expected, now });
        }
        Ok(())
    }
}

fn map(file: &std::fs::File) -> Result<memmap2::Mmap, MemError> {
    if file.metadata()?.len() == 0 {
        return Err(MemError::Malformed("the file is empty".into()));
    }
    // SAFETY: the mapping is read-only and private to this process. Another process may
    // truncate the file (a live RAM file); `Dump::check_size` lets callers detect that before
    // reading, and dump files are not modified while scanned.
    #[allow(unsafe_code)]
    let m = unsafe { memmap2::Mmap::map(file)? };
    Ok(m)
}

/// The RAM regions of an ELF core: its `PT_LOAD` segments, by `p_paddr`. Segments must lie
/// inside the file, must not overlap in guest-physical space, and must carry their bytes
/// (`p_filesz == p_memsz`); anything else is refused with the reason.
pub fn elf_core_regions(data: &[u8]) -> Result<Vec<Region>, MemError> {
    use object::read::elf::{FileHeader, ProgramHeader};
    let bad = |m: String| MemError::Malformed(m);
    let hdr = object::elf::FileHeader64::<object::Endianness>::parse(data)
        .map_err(|e| bad(format!("ELF header: {e}")))?;
    let endian = hdr.endian().map_err(|e| bad(format!("ELF header: {e}")))?;
    if hdr.e_type(endian) != object::elf::ET_CORE {
        return Err(bad(format!(
            "ELF type {} is not a core file (4)",
            hdr.e_type(endian)
        )));
    }
    let phdrs = hdr
        .program_headers(endian, data)
        .map_err(|e| bad(format!("program headers: {e}")))?;
    let mut regions = Vec::new();
    for (i, ph) in phdrs.iter().enumerate() {
        if ph.p_type(endian) != object::elf::PT_LOAD {
            continue;
        }
        if regions.len() >= MAX_SEGMENTS {
            return Err(bad(format!("more than {MAX_SEGMENTS} PT_LOAD segments")));
        }
        let (off, gpa) = (ph.p_offset(endian), ph.p_paddr(endian));
        let (filesz, memsz) = (ph.p_filesz(endian), ph.p_memsz(endian));
        if filesz != memsz {
            return Err(bad(format!(
                "segment {i}: {filesz} bytes in the file for {memsz} in memory (a dump with holes or filtering is not supported)"
            )));
        }
        if filesz == 0 {
            continue;
        }
        off.checked_add(filesz)
            .filter(|&e| e <= data.len() as u64)
            .ok_or_else(|| {
                bad(format!(
                    "segment {i}: bytes {off}+{filesz} lie outside the {}-byte file (truncated dump?)",
                    data.len()
                ))
            })?;
        if gpa.checked_add(filesz).is_none() {
            return Err(bad(format!(
                "segment {i}: address {gpa:#x}+{filesz} overflows"
            )));
        }
        regions.push(Region {
            gpa,
            len: filesz,
            file_offset: off,
        });
    }
    sort_disjoint(&mut regions, "segments")?;
    if regions.is_empty() {
        return Err(bad("no PT_LOAD segment: nothing to scan".into()));
    }
    Ok(regions)
}

/// Sort regions by guest-physical address; overlapping ones are an error naming `what`.
/// Every region's end must already be known not to overflow.
fn sort_disjoint(regions: &mut [Region], what: &str) -> Result<(), MemError> {
    regions.sort_by_key(|r| r.gpa);
    for w in regions.windows(2) {
        if let [a, b] = w {
            if a.gpa + a.len > b.gpa {
                return Err(MemError::Malformed(format!(
                    "{what} overlap: {:#x}+{:#x} and {:#x}+{:#x}",
                    a.gpa, a.len, b.gpa, b.len
                )));
            }
        }
    }
    Ok(())
}

/// Check a RAM layout against a file of `file_len` bytes: every region inside the file, none
/// overlapping another in guest-physical space; returned sorted by address.
pub fn check_layout(mut regions: Vec<Region>, file_len: u64) -> Result<Vec<Region>, MemError> {
    let bad = |m: String| MemError::Malformed(m);
    if regions.is_empty() {
        return Err(bad("the RAM layout has no region".into()));
    }
    if regions.len() > MAX_SEGMENTS {
        return Err(bad(format!("more than {MAX_SEGMENTS} RAM regions")));
    }
    for r in &regions {
        let inside = r
            .file_offset
            .checked_add(r.len)
            .is_some_and(|e| e <= file_len);
        if !inside || r.len == 0 || r.gpa.checked_add(r.len).is_none() {
            return Err(bad(format!(
                "RAM region {:#x}+{:#x} at file offset {:#x} does not fit a {file_len}-byte file",
                r.gpa, r.len, r.file_offset
            )));
        }
    }
    sort_disjoint(&mut regions, "RAM regions")?;
    Ok(regions)
}

/// The guest-physical address of a byte of the backing file, if some region maps it (bytes of
/// a RAM file under a ROM or device window have none).
pub fn gpa_of(regions: &[Region], file_offset: u64) -> Option<Gpa> {
    regions
        .iter()
        .find(|r| file_offset >= r.file_offset && file_offset - r.file_offset < r.len)
        .map(|r| r.gpa + (file_offset - r.file_offset))
}

/// The region holding `gpa..gpa+len` entirely, and the file offset of `gpa`.
fn file_offset_of(regions: &[Region], gpa: Gpa, len: u64) -> Result<(&Region, u64), MemError> {
    regions
        .iter()
        .find(|r| gpa >= r.gpa && gpa.saturating_add(len) <= r.gpa + r.len)
        .map(|r| (r, r.file_offset + (gpa - r.gpa)))
        .ok_or(MemError::NotRam { gpa, len })
}

/// A live guest's RAM file, read with `pread` (never mapped: the host may truncate or replace
/// it at any moment, and a read past the end is then an error, not a SIGBUS).
#[derive(Debug)]
pub struct LiveRam {
    file: std::fs::File,
    len: u64,
    regions: Vec<Region>,
}

impl LiveRam {
    /// Open a RAM file. `layout` maps its bytes to guest-physical addresses; `None` means
    /// file offset = guest-physical address (right for guests whose RAM all fits below the
    /// PCI hole).
    pub fn open(path: &Path, layout: Option<Vec<Region>>) -> Result<LiveRam, MemError> {
        let file = std::fs::File::open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(MemError::Malformed("not a regular file".into()));
        }
        let len = meta.len();
        if len == 0 {
            return Err(MemError::Malformed("the file is empty".into()));
        }
        let regions = match layout {
            Some(l) => check_layout(l, len)?,
            None => vec![Region {
                gpa: 0,
                len,
                file_offset: 0,
            }],
        };
        Ok(LiveRam { file, len, regions })
    }

    /// The file's length when opened.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file was empty (never: `open` refuses empty files).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The RAM regions, sorted by guest-physical address.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// Fill `buf` from file offset `offset`. A file now shorter than that is
    /// [`MemError::Shrunk`].
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), MemError> {
        use std::os::unix::fs::FileExt;
        let mut done = 0;
        while let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
            match self.file.read_at(rest, offset + done as u64) {
                Ok(0) => {
                    let now = self.file.metadata().map_or(0, |m| m.len());
                    return Err(MemError::Shrunk {
                        expected: self.len,
                        now,
                    });
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Whether `path` no longer names this file at this size (the VM restarted, the file
    /// was replaced, shrank or grew): reopen it.
    pub fn is_stale(&self, path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(path), self.file.metadata()) {
            (Ok(now), Ok(mine)) => {
                now.len() != self.len || now.ino() != mine.ino() || now.dev() != mine.dev()
            }
            _ => true,
        }
    }

    /// Fails when the file is now shorter than when opened.
    pub fn check_size(&self) -> Result<(), MemError> {
        let now = self.file.metadata()?.len();
        if now < self.len {
            return Err(MemError::Shrunk {
                expected: self.len,
                now,
            });
        }
        Ok(())
    }
}

impl PhysRead for LiveRam {
    fn read_phys(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), MemError> {
        let (_, at) = file_offset_of(&self.regions, gpa, buf.len() as u64)?;
        self.read_at(at, buf)
    }
}

impl RamLayout for Dump {
    fn regions(&self) -> &[Region] {
        &self.regions
    }

    fn region_bytes(&self, r: &Region) -> Result<&[u8], MemError> {
        let start = usize::try_from(r.file_offset).ok();
        let end = r
            .file_offset
            .checked_add(r.len)
            .and_then(|e| usize::try_from(e).ok());
        match (start, end) {
            (Some(s), Some(e)) => self.map.get(s..e).ok_or(MemError::NotRam {
                gpa: r.gpa,
                len: r.len,
            }),
            _ => Err(MemError::NotRam {
                gpa: r.gpa,
                len: r.len,
            }),
        }
    }
}

impl PhysRead for Dump {
    fn read_phys(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), MemError> {
        let len = buf.len() as u64;
        let (r, _) = file_offset_of(&self.regions, gpa, len)?;
        let bytes = self.region_bytes(r)?;
        let at = usize::try_from(gpa - r.gpa).unwrap_or(usize::MAX);
        let src = bytes
            .get(at..at.saturating_add(buf.len()))
            .ok_or(MemError::NotRam { gpa, len })?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// Test material: build small ELF cores (for tests, fuzz seeds and examples).
pub mod testing {
    /// A minimal little-endian x86-64 ELF64 core: the header, one `PT_LOAD` program header per
    /// segment, then the segments' bytes in order. Each segment is (guest-physical address,
    /// bytes, a file offset to write in its header instead of the real one).
    #[allow(clippy::indexing_slicing)]
    pub fn elf_core(segs: &[(u64, Vec<u8>, Option<u64>)]) -> Vec<u8> {
        let phoff = 64u64;
        let data_at = phoff + 56 * segs.len() as u64;
        let mut out = vec![0u8; 64];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2; // 64-bit
        out[5] = 1; // little endian
        out[6] = 1; // version
        out[16..18].copy_from_slice(&4u16.to_le_bytes()); // ET_CORE
        out[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
        out[20..24].copy_from_slice(&1u32.to_le_bytes());
        out[32..40].copy_from_slice(&phoff.to_le_bytes());
        out[52..54].copy_from_slice(&64u16.to_le_bytes());
        out[54..56].copy_from_slice(&56u16.to_le_bytes());
        out[56..58].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        let mut off = data_at;
        let mut body = Vec::new();
        for (paddr, bytes, at) in segs {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
            ph[8..16].copy_from_slice(&at.unwrap_or(off).to_le_bytes());
            ph[24..32].copy_from_slice(&paddr.to_le_bytes());
            ph[32..40].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            ph[40..48].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(&ph);
            body.extend_from_slice(bytes);
            off += bytes.len() as u64;
        }
        out.extend_from_slice(&body);
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::mem::testing::elf_core;

    /// What a host does to a live RAM file under the reader.
    fn truncate(path: &Path, len: u64) {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(len)
            .unwrap();
    }

    fn write(bytes: &[u8]) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), bytes).unwrap();
        f
    }

    #[test]
    fn elf_core_segments_map_to_guest_physical_addresses() {
        let low = vec![1u8; 4096];
        let mut high = vec![0u8; 8192];
        high[100..104].copy_from_slice(b"ABCD");
        let f = write(&elf_core(&[(0x10_0000, high, None), (0, low, None)]));
        let d = Dump::open(f.path()).unwrap();
        assert_eq!(d.kind(), DumpKind::ElfCore);
        assert_eq!(d.regions().len(), 2);
        assert_eq!(d.regions()[0].gpa, 0);
        assert_eq!(d.ram_bytes(), 4096 + 8192);
        let mut b = [0u8; 4];
        d.read_phys(0x10_0000 + 100, &mut b).unwrap();
        assert_eq!(&b, b"ABCD");
        d.read_phys(0xfff, &mut b[..1]).unwrap();
        assert_eq!(b[0], 1);
        // Not RAM: the gap, and a read running off a region's end.
        assert!(d.read_phys(0x2000, &mut b).is_err());
        assert!(d.read_phys(0xffe, &mut b).is_err());
    }

    #[test]
    fn raw_images_are_ram_from_zero() {
        let mut ram = vec![0u8; 3 * 4096];
        ram[4095] = 7;
        let f = write(&ram);
        let d = Dump::open(f.path()).unwrap();
        assert_eq!(d.kind(), DumpKind::Raw);
        assert_eq!(
            d.regions(),
            &[Region {
                gpa: 0,
                len: 3 * 4096,
                file_offset: 0
            }]
        );
        let mut b = [0u8; 2];
        d.read_phys(4095, &mut b).unwrap();
        assert_eq!(b, [7, 0]);
        d.check_size().unwrap();
    }

    #[test]
    fn bad_cores_get_clear_errors() {
        let seg = vec![9u8; 4096];
        let good = elf_core(&[(0, seg.clone(), None)]);
        // Truncated: the segment's bytes are not all there.
        let cut = write(&good[..good.len() - 1]);
        let e = Dump::open(cut.path()).unwrap_err().to_string();
        assert!(e.contains("outside"), "{e}");
        // Truncated inside the program headers.
        let cut = write(&good[..70]);
        assert!(Dump::open(cut.path()).is_err());
        // Overlapping segments.
        let ov = write(&elf_core(&[
            (0, seg.clone(), None),
            (0x800, seg.clone(), None),
        ]));
        let e = Dump::open(ov.path()).unwrap_err().to_string();
        assert!(e.contains("overlap"), "{e}");
        // A segment pointing past the end of the file.
        let far = write(&elf_core(&[(0, seg.clone(), Some(1 << 40))]));
        assert!(Dump::open(far.path()).is_err());
        // An address that overflows.
        let wrap = write(&elf_core(&[(u64::MAX - 10, seg, None)]));
        assert!(Dump::open(wrap.path()).is_err());
        // Not a core, and empty files.
        let mut exec = good.clone();
        exec[16] = 2;
        assert!(Dump::open(write(&exec).path()).is_err());
        assert!(Dump::open(write(b"").path()).is_err());
    }

    #[test]
    fn live_ram_reads_through_a_layout_and_survives_truncation() {
        // A 3-page file: page 0 at GPA 0, pages 1-2 at 4 GiB (a guest with a PCI hole).
        let mut ram = vec![0u8; 3 * 4096];
        ram[4096..4100].copy_from_slice(b"HIGH");
        let f = write(&ram);
        let layout = vec![
            Region {
                gpa: 0x1_0000_0000,
                len: 8192,
                file_offset: 4096,
            },
            Region {
                gpa: 0,
                len: 4096,
                file_offset: 0,
            },
        ];
        let live = LiveRam::open(f.path(), Some(layout.clone())).unwrap();
        assert!(!live.is_stale(f.path()));
        assert_eq!(live.regions()[0].gpa, 0);
        let mut b = [0u8; 4];
        live.read_phys(0x1_0000_0000, &mut b).unwrap();
        assert_eq!(&b, b"HIGH");
        assert_eq!(gpa_of(live.regions(), 4096), Some(0x1_0000_0000));
        assert_eq!(gpa_of(live.regions(), 3 * 4096), None);
        // The hole is not RAM; neither is a read running off a region.
        assert!(matches!(
            live.read_phys(0x1000, &mut b),
            Err(MemError::NotRam { .. })
        ));
        assert!(live.read_phys(0xffe, &mut b).is_err());
        // The same layout over a mapped dump.
        let d = Dump::open_raw_with_layout(f.path(), layout).unwrap();
        d.read_phys(0x1_0000_0000, &mut b).unwrap();
        assert_eq!(&b, b"HIGH");
        // Layouts that do not fit the file, or overlap, are refused.
        let past = vec![Region {
            gpa: 0,
            len: 8192,
            file_offset: 8192,
        }];
        assert!(LiveRam::open(f.path(), Some(past)).is_err());
        let overlap = vec![
            Region {
                gpa: 0,
                len: 8192,
                file_offset: 0,
            },
            Region {
                gpa: 4096,
                len: 4096,
                file_offset: 8192,
            },
        ];
        assert!(Dump::open_raw_with_layout(f.path(), overlap).is_err());
        assert!(LiveRam::open(f.path(), Some(vec![])).is_err());
        // The host truncates the file: reads past the new end are errors, never a SIGBUS.
        truncate(f.path(), 4096);
        let e = live.read_phys(0x1_0000_0000, &mut b).unwrap_err();
        assert!(matches!(e, MemError::Shrunk { now: 4096, .. }), "{e}");
        assert!(live.check_size().is_err());
        assert!(live.is_stale(f.path()));
        live.read_phys(0, &mut b).unwrap();
    }

    #[test]
    fn a_shrunk_ram_file_is_detected() {
        let f = write(&vec![0u8; 8192]);
        let d = Dump::open_raw(f.path()).unwrap();
        truncate(f.path(), 4096);
        assert!(matches!(d.check_size(), Err(MemError::Shrunk { .. })));
    }
}
