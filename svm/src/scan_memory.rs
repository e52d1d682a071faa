//! `svm scan-memory`: scan guest RAM from a dump (raw image or `dump-guest-memory` ELF core)
//! or a QEMU RAM file with the same signatures as `svm scan`, and report each detection with
//! the guest-physical address where its bytes are.
//!
//! Each RAM region (a contiguous guest-physical range) is cut into chunks scanned in
//! parallel; every chunk also reads `window` bytes into the next one, and a match is reported
//! only by the chunk it starts in, so a signature up to `window` bytes long is found wherever
//! it lies, across page boundaries and chunk boundaries alike.

use crate::scan::load_set;
use anyhow::Result;
use hypervisor_api::mem::{Dump, Gpa, RamLayout};
use scanner::{ScanResult, Scanner};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Options of `svm scan-memory`.
#[derive(Debug, Clone)]
pub struct MemScanOptions {
    /// Signature files or directories; empty = the embedded default set.
    pub databases: Vec<PathBuf>,
    /// Dumps or RAM files.
    pub paths: Vec<PathBuf>,
    /// Treat every file as raw RAM (file offset = guest-physical address).
    pub raw: bool,
    /// JSON lines.
    pub json: bool,
    /// Scanner threads.
    pub threads: usize,
    /// Chunk size in bytes.
    pub chunk: u64,
    /// Bytes each chunk reads into the next (the longest signature found across a chunk
    /// boundary).
    pub window: u64,
    /// Load what is valid in the signature files and skip the rest.
    pub skip_invalid: bool,
    /// The VM's QMP socket, for the actions below.
    pub qmp: Option<PathBuf>,
    /// On a detection, pause the VM (QMP `stop`).
    pub pause: bool,
    /// On a detection, write the VM's memory (QMP `dump-guest-memory`) into this directory.
    pub forensics: Option<PathBuf>,
}

/// A chunk's detections (signature, guest-physical address), or why it was not scanned.
type ChunkResult = Result<Vec<(String, Option<Gpa>)>, String>;

/// One detection.
#[derive(Debug, Clone, serde::Serialize)]
struct Hit {
    dump: String,
    signature: String,
    gpa: Option<String>,
}

/// Run it; exit 0 nothing found, 1 something found, 2 an error (nothing is called clean that
/// was not scanned).
pub fn run(opts: &MemScanOptions) -> Result<ExitCode> {
    let (set, load_time) = load_set(&opts.databases, opts.skip_invalid)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads.max(1))
        .thread_name(|i| format!("svm-memscan-{i}"))
        .build()?;
    let started = Instant::now();
    let (mut found, mut errors, mut bytes) = (0u64, 0u64, 0u64);
    let out = std::io::stdout();
    let mut out = out.lock();
    for path in &opts.paths {
        let name = path.display().to_string();
        let dump = match dump_of(opts, path) {
            Ok(d) => d,
            Err(e) => {
                errors += 1;
                line(&mut out, opts.json, &name, None, Some(&format!("{e:#}")))?;
                continue;
            }
        };
        let (hits, errs, n) = pool.install(|| scan_dump(&set, &dump, &name, opts));
        bytes += n;
        for e in &errs {
            line(&mut out, opts.json, &name, None, Some(e))?;
        }
        errors += errs.len() as u64;
        for h in &hits {
            line(&mut out, opts.json, &name, Some(h), None)?;
        }
        found += hits.len() as u64;
        if hits.is_empty() && errs.is_empty() && !opts.json {
            writeln!(out, "{name}: OK")?;
        }
        if !hits.is_empty() {
            if let Err(e) = act(opts, &name, &mut out) {
                errors += 1;
                line(&mut out, opts.json, &name, None, Some(&format!("{e:#}")))?;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let mb = bytes as f64 / 1e6;
    if opts.json {
        let summary = serde_json::json!({"summary": {
            "dumps": opts.paths.len(), "ram_bytes": bytes, "detections": found,
            "errors": errors, "seconds": secs, "mb_per_s": mb / secs,
            "load_seconds": load_time.as_secs_f64(),
        }});
        writeln!(out, "{summary}")?;
    } else {
        writeln!(out, "\n----------- MEMORY SCAN SUMMARY -----------")?;
        writeln!(out, "Dumps: {}", opts.paths.len())?;
        writeln!(out, "RAM scanned: {mb:.2} MB")?;
        writeln!(out, "Detections: {found}")?;
        writeln!(out, "Errors: {errors}")?;
        writeln!(
            out,
            "Time: {secs:.3} s ({:.1} MB/s), signatures loaded in {:.3} s",
            mb / secs,
            load_time.as_secs_f64()
        )?;
    }
    Ok(ExitCode::from(if errors > 0 {
        2
    } else if found > 0 {
        1
    } else {
        0
    }))
}

/// Open one dump; a QEMU RAM file with a QMP socket gets its guest-physical layout from QEMU.
fn dump_of(opts: &MemScanOptions, path: &Path) -> Result<Dump> {
    use anyhow::Context;
    if !opts.raw {
        return Ok(Dump::open(path)?);
    }
    let Some(sock) = &opts.qmp else {
        return Ok(Dump::open_raw(path)?);
    };
    let len = std::fs::metadata(path)?.len();
    let layout = hypervisor_api::qmp::Qmp::connect(sock, Duration::from_secs(5))
        .and_then(|mut q| q.ram_layout(len))
        .with_context(|| format!("RAM layout from QMP {}", sock.display()))?;
    Ok(Dump::open_raw_with_layout(path, layout)?)
}

/// The actions on a detection: pause the VM, then dump its memory for forensics.
fn act(opts: &MemScanOptions, name: &str, out: &mut impl Write) -> Result<()> {
    use anyhow::Context;
    if !opts.pause && opts.forensics.is_none() {
        return Ok(());
    }
    let sock = opts
        .qmp
        .as_ref()
        .context("--pause and --forensics need --qmp SOCKET")?;
    let label = format!("svm-{}", std::process::id());
    for (action, detail) in qmp_actions(sock, opts.pause, opts.forensics.as_deref(), &label)? {
        report_action(out, opts.json, name, action, &detail)?;
    }
    Ok(())
}

/// The actions on a memory detection, through the VM's QMP socket: pause it (`stop`), then
/// write its memory (`dump-guest-memory`) to `dump_dir/LABEL-SECONDS.core`. Returns what was
/// done: ("pause", the status QEMU reports after it) and ("dump", the file).
pub fn qmp_actions(
    sock: &Path,
    pause: bool,
    dump_dir: Option<&Path>,
    label: &str,
) -> Result<Vec<(&'static str, String)>> {
    use anyhow::Context;
    let mut q = hypervisor_api::qmp::Qmp::connect(sock, Duration::from_secs(5))
        .with_context(|| format!("QMP {}", sock.display()))?;
    let mut done = Vec::new();
    if pause {
        q.stop()?;
        done.push(("pause", q.status()?));
    }
    if let Some(dir) = dump_dir {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let file = dir.join(format!("{label}-{secs}.core"));
        q.set_timeout(Duration::from_secs(600));
        q.dump_guest_memory(&file)?;
        done.push(("dump", file.display().to_string()));
    }
    Ok(done)
}

fn report_action(
    out: &mut impl Write,
    json: bool,
    dump: &str,
    action: &str,
    detail: &str,
) -> std::io::Result<()> {
    if json {
        writeln!(
            out,
            "{}",
            serde_json::json!({"dump": dump, "action": action, "result": detail})
        )
    } else {
        writeln!(out, "{dump}: action {action}: {detail}")
    }
}

fn line(
    out: &mut impl Write,
    json: bool,
    dump: &str,
    hit: Option<&Hit>,
    error: Option<&str>,
) -> std::io::Result<()> {
    match (json, hit, error) {
        (true, Some(h), _) => writeln!(out, "{}", serde_json::to_string(h).unwrap_or_default()),
        (true, None, Some(e)) => writeln!(out, "{}", serde_json::json!({"dump": dump, "error": e})),
        (false, Some(h), _) => match &h.gpa {
            Some(g) => writeln!(out, "{dump}: {} FOUND at {g}", h.signature),
            None => writeln!(out, "{dump}: {} FOUND", h.signature),
        },
        (false, None, Some(e)) => writeln!(out, "{dump}: {e} ERROR"),
        _ => Ok(()),
    }
}

/// The chunks of a region: (first GPA, offset in the region, bytes owned, bytes read).
fn chunks(len: u64, chunk: u64, window: u64) -> Vec<(u64, u64, u64)> {
    let chunk = chunk.max(4096);
    let mut v = Vec::new();
    let mut at = 0;
    while at < len {
        let own = chunk.min(len - at);
        let read = (own + window).min(len - at);
        v.push((at, own, read));
        at += own;
    }
    v
}

fn scan_dump(
    set: &signatures::SignatureSet,
    dump: &Dump,
    name: &str,
    opts: &MemScanOptions,
) -> (Vec<Hit>, Vec<String>, u64) {
    use rayon::prelude::*;
    let mut work = Vec::new();
    let mut errors = Vec::new();
    let mut bytes = 0;
    for r in dump.regions() {
        match dump.region_bytes(r) {
            Ok(b) => {
                bytes += r.len;
                for (at, own, read) in chunks(r.len, opts.chunk, opts.window) {
                    work.push((r.gpa, b, at, own, read));
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    let results: Vec<ChunkResult> = work
        .par_iter()
        .map_init(
            || Scanner::for_memory(set),
            |scanner, &(gpa, b, at, own, read)| {
                let (Ok(s), Ok(e)) = (usize::try_from(at), usize::try_from(at + read)) else {
                    return Err(format!("region {gpa:#x}: chunk beyond the address space"));
                };
                let Some(data) = b.get(s..e) else {
                    return Err(format!("region {gpa:#x}: chunk {at:#x} outside the map"));
                };
                match scanner.scan_bytes(data) {
                    ScanResult::Clean => Ok(Vec::new()),
                    ScanResult::Infected { matches } => Ok(matches
                        .into_iter()
                        // A match starting in the window belongs to the next chunk.
                        .filter(|m| m.offset.is_none_or(|o| o < own || own == read))
                        .map(|m| (m.name, m.offset.map(|o| gpa + at + o)))
                        .collect()),
                    ScanResult::Unscanned { reason } => Err(format!(
                        "guest-physical {:#x}+{read}: not scanned: {reason}",
                        gpa + at
                    )),
                }
            },
        )
        .collect();
    let mut hits = Vec::new();
    for r in results {
        match r {
            Ok(v) => hits.extend(v.into_iter().map(|(signature, gpa)| Hit {
                dump: name.to_owned(),
                signature,
                gpa: gpa.map(|g| format!("{g:#x}")),
            })),
            Err(e) => errors.push(e),
        }
    }
    hits.sort_by(|a, b| a.gpa.cmp(&b.gpa).then(a.signature.cmp(&b.signature)));
    hits.dedup_by(|a, b| a.gpa == b.gpa && a.signature == b.signature);
    (hits, errors, bytes)
}

#[cfg(test)]
mod tests {
    use super::chunks;

    #[test]
    fn chunks_cover_the_region_once_and_read_into_the_next() {
        let c = chunks(10_000, 4096, 100);
        assert_eq!(
            c,
            vec![(0, 4096, 4196), (4096, 4096, 4196), (8192, 1808, 1808)]
        );
        let owned: u64 = c.iter().map(|x| x.1).sum();
        assert_eq!(owned, 10_000);
        assert!(chunks(0, 4096, 100).is_empty());
    }
}
