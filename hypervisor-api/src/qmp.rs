//! A small blocking QMP client (QEMU Machine Protocol, JSON lines over a unix socket): the
//! capabilities handshake, `query-status`, `stop`, `cont` and `dump-guest-memory`.
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
