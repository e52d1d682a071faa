//! The audit log (JSON lines, one record per non-clean verdict or policy fallback), written by
//! its own thread so that guests never wait on the disk, and a rate limiter for log lines a
//! guest can trigger.

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use serde::Serialize;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// One audit record.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// RFC 3339 UTC.
    pub time: String,
    /// The VM (from the transport).
    pub vm: Arc<str>,
    /// Its group.
    pub group: String,
    /// open, exec, close_write.
    pub op: &'static str,
    /// The path as the guest reported it (lossy UTF-8).
    pub path: String,
    /// BLAKE3 of the content, when it was read.
    pub content_hash: Option<String>,
    /// Matching signatures.
    pub signatures: Vec<String>,
    /// Signature set version.
    pub sigset_version: u64,
    /// allow or deny (or none for a notification).
    pub action: &'static str,
    /// clean, infected, unscanned, timeout, error, excluded.
    pub result: &'static str,
    /// The policy that decided, when a fallback did.
    pub policy: Option<&'static str>,
    /// Why, for fallbacks.
    pub reason: Option<String>,
    /// Whether the verdict came from the cache (never told to the guest).
    pub cached: bool,
    /// Milliseconds from event to verdict.
    pub latency_ms: f64,
    /// The connection's session id.
    pub session: u64,
}

/// The current time in RFC 3339, UTC, with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// A handle for sending records to the writer thread.
#[derive(Debug, Clone)]
pub struct Audit {
    tx: Sender<Record>,
}

/// Start the writer. `path` None = standard error. `dropped` counts records lost.
pub fn start(
    path: Option<&Path>,
    dropped: prometheus_client::metrics::counter::Counter,
) -> anyhow::Result<(Audit, std::thread::JoinHandle<()>)> {
    let (out, id): (Box<dyn Write + Send>, _) = match path {
        Some(p) => {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let f =
                open(p).map_err(|e| anyhow::anyhow!("opening audit log {}: {e}", p.display()))?;
            let id = file_id(&f);
            (Box::new(f), id)
        }
        None => (Box::new(std::io::stderr()), None),
    };
    let (tx, rx) = bounded(65_536);
    let path = path.map(Path::to_path_buf);
    let h = std::thread::Builder::new()
        .name("svm-audit".into())
        .spawn(move || writer(rx, out, id, path.as_deref(), dropped))?;
    Ok((Audit { tx }, h))
}

fn open(p: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
}

/// Which file this is (device, inode).
fn file_id(f: &std::fs::File) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    f.metadata().ok().map(|m| (m.dev(), m.ino()))
}

/// Write one record's line. A record cut short by an error (a full disk takes part of it)
/// sets `torn`; the next record then starts with a newline, so that it, and every record
/// after it, stays a line of its own.
fn write_line(out: &mut dyn Write, line: &[u8], torn: &mut bool) -> std::io::Result<()> {
    if *torn {
        out.write_all(b"\n")?;
        *torn = false;
    }
    let mut done = 0;
    while let Some(rest) = line.get(done..).filter(|r| !r.is_empty()) {
        match out.write(rest) {
            Ok(0) => {
                *torn = done > 0;
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                *torn = done > 0;
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Writes records as they come. When the log cannot be written (its disk full, read-only,
/// or gone) the records are dropped and counted, verdicts never wait, the failure is logged
/// once, and before each later batch the log is opened again by its path: a disk remounted
/// or replaced after an error is written to again (and that is logged too). `id`: which
/// file `out` is.
fn writer(
    rx: Receiver<Record>,
    mut out: Box<dyn Write + Send>,
    mut id: Option<(u64, u64)>,
    path: Option<&Path>,
    dropped: prometheus_client::metrics::counter::Counter,
) {
    let mut line = Vec::with_capacity(512);
    // Records dropped since writing started to fail.
    let mut failing: Option<u64> = None;
    // The last record written was cut short (in the file `id`).
    let mut torn = false;
    let shown = || path.map_or_else(|| "<stderr>".into(), |p| p.display().to_string());
    while let Ok(rec) = rx.recv() {
        let mut batch = vec![rec];
        batch.extend(rx.try_iter().take(1023));
        if let (Some(_), Some(p)) = (failing, path) {
            if let Ok(f) = open(p) {
                let now = file_id(&f);
                // A cut record in another file (the old disk) needs no newline here.
                torn &= now == id;
                id = now;
                out = Box::new(f);
            }
        }
        let mut error = None;
        let mut lost = 0;
        for r in batch {
            line.clear();
            if serde_json::to_writer(&mut line, &r).is_err() {
                dropped.inc();
                continue;
            }
            line.push(b'\n');
            if let Err(e) = write_line(&mut out, &line, &mut torn) {
                lost += 1;
                error.get_or_insert(e);
            }
        }
        if let Err(e) = out.flush() {
            error.get_or_insert(e);
        }
        dropped.inc_by(lost);
        match (error, failing) {
            (Some(e), None) => {
                tracing::error!(
                    "cannot write the audit log {}: {e}; its records are dropped and counted \
                     (svm_audit_dropped_total) until it can be written again",
                    shown()
                );
                failing = Some(lost);
            }
            (Some(_), Some(n)) => failing = Some(n + lost),
            (None, Some(n)) => {
                tracing::warn!(
                    "the audit log {} is written again ({n} records were dropped)",
                    shown()
                );
                failing = None;
            }
            (None, None) => {}
        }
    }
}

impl Audit {
    /// Queue a record; when the writer is far behind the record is counted as dropped.
    pub fn log(&self, rec: Record, dropped: &prometheus_client::metrics::counter::Counter) {
        match self.tx.try_send(rec) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                dropped.inc();
            }
        }
    }
}

/// Allows `per_second` log lines per second per limiter; counts the rest.
#[derive(Debug)]
pub struct LogLimiter {
    per_second: u64,
    window: AtomicU64,
    count: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimiter {
    /// A limiter.
    pub const fn new(per_second: u64) -> Self {
        LogLimiter {
            per_second,
            window: AtomicU64::new(0),
            count: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether a line may be logged now. When a new second starts, returns how many lines
    /// the previous windows suppressed so the caller can say so.
    pub fn allow(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.window.swap(now, Ordering::Relaxed) != now {
            self.count.store(0, Ordering::Relaxed);
        }
        if self.count.fetch_add(1, Ordering::Relaxed) < self.per_second {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_caps_a_burst() {
        let l = LogLimiter::new(3);
        let allowed = (0..100).filter(|_| l.allow().is_some()).count();
        // At most two windows can be touched by a fast loop.
        assert!((3..=6).contains(&allowed), "{allowed}");
    }
}
