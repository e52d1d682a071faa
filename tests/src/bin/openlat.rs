//! `openlat`: the per-open latency probe of `bench/agent-open.sh`.
//!
//! ```text
//! openlat measure [--label L] PATH...   open + read every regular file under PATH (sorted),
//!                                       time each open() and each open+read; print one JSON line
//! openlat read PATH...                  open + read every file, print nothing (the workload of
//!                                       the program-start benchmark)
//! openlat denied FILE                   exit 0 when opening FILE fails with EPERM (an on-access
//!                                       scanner blocked it), 1 otherwise
//! ```
//!
//! Directories are walked before any timing starts (readdir does not trigger fanotify open
//! permission events for the files), so only `File::open` + `read_to_end` are timed.

#![forbid(unsafe_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

fn walk(p: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let md = std::fs::symlink_metadata(p)?;
    if md.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()?;
        entries.sort();
        for e in entries {
            walk(&e, out)?;
        }
    } else if md.is_file() {
        out.push(p.to_path_buf());
    }
    Ok(())
}

fn files_of(paths: &[String]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for p in paths {
        walk(Path::new(p), &mut files).map_err(|e| format!("{p}: {e}"))?;
    }
    if files.is_empty() {
        return Err("no files".into());
    }
    Ok(files)
}

/// Nearest-rank percentile of sorted nanoseconds, in µs.
fn pct_us(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).copied().unwrap_or_default() as f64 / 1000.0
}

fn mean_us(v: &[u64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64 / 1000.0
}

fn stats(name: &str, v: &mut [u64]) -> String {
    v.sort_unstable();
    format!(
        "\"{name}_p50_us\":{:.2},\"{name}_p90_us\":{:.2},\"{name}_p99_us\":{:.2},\"{name}_p999_us\":{:.2},\"{name}_mean_us\":{:.2},\"{name}_max_us\":{:.2}",
        pct_us(v, 0.50),
        pct_us(v, 0.90),
        pct_us(v, 0.99),
        pct_us(v, 0.999),
        mean_us(v),
        v.last().copied().unwrap_or_default() as f64 / 1000.0
    )
}

/// This process's user + system CPU time in clock ticks (`/proc/self/stat`), for the
/// script's "other CPU" noise indicator; 0 when unreadable.
fn self_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name's closing parenthesis start at field 3; utime and stime
    // are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    rest.split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum()
}

fn measure(label: &str, paths: &[String]) -> Result<(), String> {
    let files = files_of(paths)?;
    let mut open_ns = Vec::with_capacity(files.len());
    let mut total_ns = Vec::with_capacity(files.len());
    let mut buf = Vec::with_capacity(1 << 16);
    let mut errors = 0u64;
    let mut first_error = String::new();
    let mut bytes = 0u64;
    let all = Instant::now();
    for f in &files {
        buf.clear();
        let t0 = Instant::now();
        let r = std::fs::File::open(f);
        let t1 = Instant::now();
        let r = r.and_then(|mut h| h.read_to_end(&mut buf));
        let t2 = Instant::now();
        match r {
            Ok(n) => {
                bytes += n as u64;
                open_ns.push(u64::try_from((t1 - t0).as_nanos()).unwrap_or(u64::MAX));
                total_ns.push(u64::try_from((t2 - t0).as_nanos()).unwrap_or(u64::MAX));
            }
            Err(e) => {
                if errors == 0 {
                    first_error = format!("{}: {e}", f.display()).replace(['"', '\\'], "_");
                }
                errors += 1;
            }
        }
    }
    let wall = all.elapsed().as_secs_f64();
    println!(
        "{{\"label\":\"{}\",\"files\":{},\"errors\":{errors},\"first_error\":\"{first_error}\",\"bytes\":{bytes},\"wall_s\":{wall:.4},\"self_cpu_ticks\":{},{},{}}}",
        label.replace(['"', '\\'], "_"),
        files.len(),
        self_cpu_ticks(),
        stats("open", &mut open_ns),
        stats("open_read", &mut total_ns),
    );
    if errors > 0 {
        return Err(format!("{errors} files could not be opened or read"));
    }
    Ok(())
}

fn read_all(paths: &[String]) -> Result<(), String> {
    let mut buf = Vec::with_capacity(1 << 16);
    for f in files_of(paths)? {
        buf.clear();
        std::fs::File::open(&f)
            .and_then(|mut h| h.read_to_end(&mut buf))
            .map_err(|e| format!("{}: {e}", f.display()))?;
    }
    Ok(())
}

fn denied(path: &str) -> ExitCode {
    match std::fs::File::open(path) {
        Err(e) if e.raw_os_error() == Some(1) => {
            println!("{path}: open denied (EPERM)");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{path}: open failed, but not with EPERM: {e}");
            ExitCode::FAILURE
        }
        Ok(_) => {
            println!("{path}: open allowed");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: openlat measure [--label L] PATH... | openlat read PATH... | openlat denied FILE"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        return usage();
    };
    let r = match cmd.as_str() {
        "measure" => {
            let (label, paths) = match rest {
                [flag, l, paths @ ..] if flag == "--label" => (l.as_str(), paths),
                paths => ("", paths),
            };
            measure(label, paths)
        }
        "read" => read_all(rest),
        "denied" => {
            return match rest {
                [p] => denied(p),
                _ => usage(),
            }
        }
        _ => return usage(),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("openlat: {e}");
            ExitCode::FAILURE
        }
    }
}
