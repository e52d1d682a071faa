//! A small blocking QMP client (QEMU Machine Protocol, JSON lines over a unix socket): the
//! capabilities handshake, `query-status`, `stop`, `cont`, `dump-guest-memory`, and the RAM
//! layout of a guest whose RAM is a `memory-backend-file` ([`Qmp::ram_layout`]).
//!
//! The peer is treated as untrusted input: every wait has a deadline, a line is at most
//! [`MAX_LINE`] bytes, and anything that is not the expected JSON is an error, never a panic.
//!
//! ```no_run
//! use hypervisor_api::qmp::Qmp;
//! use std::time::Duration;
//! let mut q = Qmp::connect("/run/svm/vm1.qmp".as_ref(), Duration::from_secs(5)).unwrap();
//! if q.status().unwrap() == "running" {
//!     q.stop().unwrap();
//! }
//! ```

use crate::mem::Region;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// The longest QMP line accepted.
pub const MAX_LINE: usize = 1 << 20;

/// Why a QMP exchange failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QmpError {
    /// The socket failed.
    #[error("QMP: {0}")]
    Io(#[from] std::io::Error),
    /// No answer in time.
    #[error("QMP: no answer within {0:?}")]
    Timeout(Duration),
    /// The peer did not speak QMP.
    #[error("QMP: protocol error: {0}")]
    Protocol(String),
    /// QEMU refused the command.
    #[error("QMP: {command} failed: {class}: {desc}")]
    Command {
        /// The command.
        command: String,
        /// QEMU's error class.
        class: String,
        /// QEMU's description.
        desc: String,
    },
}

/// A QMP session.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    timeout: Duration,
    next_id: u64,
}

impl Qmp {
    /// Connect, read the greeting and enter command mode; every step within `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let s = UnixStream::connect(path)?;
        let writer = s.try_clone()?;
        let mut q = Qmp {
            reader: BufReader::new(s),
            writer,
            timeout,
            next_id: 1,
        };
        let deadline = Instant::now() + timeout;
        let greeting = q.read_json(deadline)?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!(
                "expected the QMP greeting, got {}",
                short(&greeting)
            )));
        }
        q.execute("qmp_capabilities", None)?;
        Ok(q)
    }

    /// Change the per-command timeout (e.g. for a long `dump-guest-memory`).
    pub fn set_timeout(&mut self, t: Duration) {
        self.timeout = t;
    }

    /// Run a command and return its `return` value. Asynchronous events are skipped.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if let (Some(a), Some(m)) = (arguments, msg.as_object_mut()) {
            m.insert("arguments".into(), a);
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer.set_write_timeout(Some(self.timeout))?;
        self.writer.write_all(line.as_bytes())?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let v = self.read_json(deadline)?;
            if v.get("event").is_some() {
                continue;
            }
            if v.get("id").and_then(Value::as_u64) != Some(id) {
                // A reply to an earlier, abandoned command, or junk with no id.
                if v.get("return").is_some() || v.get("error").is_some() {
                    continue;
                }
                return Err(QmpError::Protocol(format!(
                    "unexpected message {}",
                    short(&v)
                )));
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                let field = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
                return Err(QmpError::Command {
                    command: command.to_owned(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            return Err(QmpError::Protocol(format!(
                "a reply with neither return nor error: {}",
                short(&v)
            )));
        }
    }

    /// `query-status`: "running", "paused", …
    pub fn status(&mut self) -> Result<String, QmpError> {
        let r = self.execute("query-status", None)?;
        r.get("status")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| QmpError::Protocol(format!("query-status returned {}", short(&r))))
    }

    /// Pause the VM.
    pub fn stop(&mut self) -> Result<(), QmpError> {
        self.execute("stop", None).map(|_| ())
    }

    /// Resume the VM.
    pub fn cont(&mut self) -> Result<(), QmpError> {
        self.execute("cont", None).map(|_| ())
    }

    /// Write the guest's memory as an ELF core to `path` (synchronously).
    pub fn dump_guest_memory(&mut self, path: &Path) -> Result<(), QmpError> {
        let protocol = format!("file:{}", path.display());
        self.execute(
            "dump-guest-memory",
            Some(json!({ "paging": false, "protocol": protocol })),
        )
        .map(|_| ())
    }

    /// Where the bytes of the guest's RAM file sit in guest-physical memory.
    ///
    /// The memory backend is the one (from `query-memdev`) of `file_len` bytes; its mappings
    /// come from the flattened memory tree of the system address space (HMP `info mtree -f`,
    /// through `human-monitor-command`). A q35 guest above 2.75 GiB has its first 2 GiB at 0
    /// and the rest at 4 GiB; ROM and device windows below 1 MiB shadow some of the file.
    pub fn ram_layout(&mut self, file_len: u64) -> Result<Vec<Region>, QmpError> {
        let memdevs = self.execute("query-memdev", None)?;
        let list = memdevs.as_array().ok_or_else(|| {
            QmpError::Protocol(format!("query-memdev returned {}", short(&memdevs)))
        })?;
        let id = list
            .iter()
            .find(|m| m.get("size").and_then(Value::as_u64) == Some(file_len))
            .and_then(|m| m.get("id").and_then(Value::as_str))
            .ok_or_else(|| {
                QmpError::Protocol(format!(
                    "no memory backend of {file_len} bytes (the RAM file's size); the guest's \
                     RAM must be a memory-backend-file (query-memdev: {})",
                    short(&memdevs)
                ))
            })?
            .to_owned();
        let tree = self.execute(
            "human-monitor-command",
            Some(json!({ "command-line": "info mtree -f" })),
        )?;
        let text = tree
            .as_str()
            .ok_or_else(|| QmpError::Protocol(format!("info mtree returned {}", short(&tree))))?;
        parse_mtree(text, &id).map_err(QmpError::Protocol)
    }

    /// One JSON object, before `deadline`.
    fn read_json(&mut self, deadline: Instant) -> Result<Value, QmpError> {
        let mut buf = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(QmpError::Timeout(self.timeout));
            }
            self.reader.get_ref().set_read_timeout(Some(left))?;
            let room = (MAX_LINE + 1).saturating_sub(buf.len()) as u64;
            let r = std::io::Read::take(&mut self.reader, room).read_until(b'\n', &mut buf);
            match r {
                Ok(0) => return Err(QmpError::Protocol("the peer closed the socket".into())),
                Ok(_) if buf.ends_with(b"\n") => break,
                Ok(_) if buf.len() > MAX_LINE => {
                    return Err(QmpError::Protocol(format!(
                        "a line longer than {MAX_LINE} bytes"
                    )))
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(QmpError::Timeout(self.timeout))
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        serde_json::from_slice(&buf).map_err(|e| {
            QmpError::Protocol(format!(
                "not JSON ({e}): {:?}",
                String::from_utf8_lossy(buf.get(..80).unwrap_or(&buf))
            ))
        })
    }
}

/// The most RAM ranges [`parse_mtree`] accepts.
const MAX_RANGES: usize = 4096;

/// The guest-physical ranges of memory backend `backend` in the flattened memory tree of the
/// system address space (`AS "memory"`), from HMP `info mtree -f` text, e.g.
/// `  0000000100000000-000000013fffffff (prio 0, ram): mem @0000000080000000`. Adjacent
/// ranges that continue each other are merged. The text is untrusted: every line that is not
/// a range is skipped, and numbers are checked.
pub fn parse_mtree(text: &str, backend: &str) -> Result<Vec<Region>, String> {
    // The flat view's lines: from its `AS "memory"` line to the next blank line (HMP ends
    // lines with "\r\n").
    let mut lines = text
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != "AS \"memory\", root: system");
    if lines.next().is_none() {
        return Err("info mtree -f shows no flat view of the system address space".into());
    }
    let mut out: Vec<Region> = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        let Some((range, rest)) = line.split_once(" (prio ") else {
            continue;
        };
        let Some((kind, target)) = rest.split_once("): ") else {
            continue;
        };
        // "0, ram" → "ram"
        if kind.rsplit(", ").next() != Some("ram") {
            continue;
        }
        let mut words = target.split_whitespace();
        if words.next() != Some(backend) {
            continue;
        }
        let hex = |s: &str| u64::from_str_radix(s, 16).map_err(|e| format!("{line:?}: {e}"));
        let (lo, hi) = range
            .split_once('-')
            .ok_or_else(|| format!("{line:?}: no range"))?;
        let (lo, hi) = (hex(lo)?, hex(hi)?);
        let offset = match words.next().and_then(|w| w.strip_prefix('@')) {
            Some(o) => hex(o)?,
            None => 0,
        };
        let len = hi
            .checked_sub(lo)
            .and_then(|l| l.checked_add(1))
            .ok_or_else(|| format!("{line:?}: an empty or reversed range"))?;
        if let Some(last) = out.last_mut() {
            let continues = last.gpa.checked_add(last.len) == Some(lo)
                && last.file_offset.checked_add(last.len) == Some(offset);
            if let Some(merged) = last.len.checked_add(len).filter(|_| continues) {
                last.len = merged;
                continue;
            }
        }
        if out.len() >= MAX_RANGES {
            return Err(format!("more than {MAX_RANGES} RAM ranges"));
        }
        out.push(Region {
            gpa: lo,
            len,
            file_offset: offset,
        });
    }
    if out.is_empty() {
        return Err(format!(
            "memory backend {backend:?} is not mapped in the system address space"
        ));
    }
    Ok(out)
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(120) {
        Some((i, _)) => format!("{}…", s.get(..i).unwrap_or("")),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A fake QMP peer that plays `script` (a list of lines to send after each line read,
    /// the first before reading anything).
    fn peer(script: Vec<Vec<u8>>) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("qmp.sock");
        let l = UnixListener::bind(&p).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            for (i, out) in script.into_iter().enumerate() {
                if i > 0 {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                }
                let _ = s.write_all(&out);
            }
            std::thread::sleep(Duration::from_secs(5));
        });
        (dir, p)
    }

    const GREETING: &[u8] = b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n";

    #[test]
    fn a_well_behaved_peer_answers_with_events_in_between() {
        let (_d, p) = peer(vec![
            GREETING.to_vec(),
            b"{\"return\": {}, \"id\": 1}\n".to_vec(),
            b"{\"event\": \"STOP\"}\n{\"return\": {\"status\": \"paused\", \"running\": false}, \"id\": 2}\n".to_vec(),
            b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"nope\"}, \"id\": 3}\n".to_vec(),
        ]);
        let mut q = Qmp::connect(&p, Duration::from_secs(5)).unwrap();
        assert_eq!(q.status().unwrap(), "paused");
        let e = q.stop().unwrap_err().to_string();
        assert!(e.contains("GenericError") && e.contains("nope"), "{e}");
    }

    /// `info mtree -f` of QEMU 7.2, q35, 3 GiB in memory-backend-file `mem` (cut).
    const MTREE: &str = "FlatView #0
 AS \"memory\", root: system
 AS \"cpu-memory-0\", root: system
 Root memory region: system
  0000000000000000-00000000000bffff (prio 0, ram): mem
  00000000000c0000-00000000000dffff (prio 1, rom): pc.rom
  00000000000e0000-00000000000fffff (prio 0, rom): pc.bios @0000000000020000
  0000000000100000-000000007fffffff (prio 0, ram): mem @0000000000100000
  00000000fec00000-00000000fec00fff (prio 0, i/o): ioapic
  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios
  0000000100000000-000000013fffffff (prio 0, ram): mem @0000000080000000 KVM

FlatView #1
 AS \"cpu-smm-0\", root: memory
 Root memory region: memory
  0000000000000000-00000000ffffffff (prio 0, ram): mem

FlatView #3
 AS \"I/O\", root: io
  0000000000000000-0000000000000007 (prio 0, i/o): dma-chan
";

    #[test]
    fn the_ram_layout_comes_from_the_system_flat_view() {
        let r = parse_mtree(MTREE, "mem").unwrap();
        assert_eq!(
            r,
            vec![
                Region {
                    gpa: 0,
                    len: 0xc0000,
                    file_offset: 0
                },
                Region {
                    gpa: 0x10_0000,
                    len: 0x8000_0000 - 0x10_0000,
                    file_offset: 0x10_0000
                },
                Region {
                    gpa: 0x1_0000_0000,
                    len: 0x4000_0000,
                    file_offset: 0x8000_0000
                },
            ]
        );
        // Another backend, no system view, bad numbers: clear errors.
        assert!(parse_mtree(MTREE, "other")
            .unwrap_err()
            .contains("not mapped"));
        assert!(parse_mtree("FlatView #0\n", "mem").is_err());
        let bad = MTREE.replace("0000000100000000-", "00000001000zz000-");
        assert!(parse_mtree(&bad, "mem").is_err());
        let rev = MTREE.replace(
            "0000000100000000-000000013fffffff",
            "0000000200000000-000000013fffffff",
        );
        assert!(parse_mtree(&rev, "mem").is_err());
        // HMP's line ends.
        assert_eq!(
            parse_mtree(&MTREE.replace('\n', "\r\n"), "mem")
                .unwrap()
                .len(),
            3
        );
        // Garbage lines are skipped.
        let junk = MTREE.replace(
            "Root memory region: system",
            "Root memory region: system\n  (prio \n  ): x",
        );
        assert_eq!(parse_mtree(&junk, "mem").unwrap().len(), 3);
    }

    #[test]
    fn garbage_silence_and_huge_lines_are_errors_within_the_timeout() {
        let t = Duration::from_millis(300);
        let (_d, p) = peer(vec![b"this is not json\n".to_vec()]);
        assert!(matches!(Qmp::connect(&p, t), Err(QmpError::Protocol(_))));
        let (_d, p) = peer(vec![b"{\"hello\": 1}\n".to_vec()]);
        assert!(matches!(Qmp::connect(&p, t), Err(QmpError::Protocol(_))));
        // Never answers: a timeout, not a hang.
        let (_d, p) = peer(vec![Vec::new()]);
        assert!(matches!(Qmp::connect(&p, t), Err(QmpError::Timeout(_))));
        // Greets, then never answers the handshake.
        let (_d, p) = peer(vec![GREETING.to_vec(), Vec::new()]);
        assert!(matches!(Qmp::connect(&p, t), Err(QmpError::Timeout(_))));
        // A line without end.
        let (_d, p) = peer(vec![vec![b'{'; MAX_LINE + 10]]);
        assert!(matches!(
            Qmp::connect(&p, Duration::from_secs(5)),
            Err(QmpError::Protocol(_))
        ));
    }
}
