//! Output of `svm scan`: clamscan-style text or JSON lines, a progress bar, and the summary.

use crate::scan::{is_problem, ScanOptions};
use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use scanner::{FileScan, ScanResult};
use serde_json::json;
use signatures::SignatureSet;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Something the walk or a scanner worker reports.
#[derive(Debug)]
pub enum Event {
    /// A file was scanned (or could not be).
    File {
        /// The file.
        path: PathBuf,
        /// Its outcome.
        scan: FileScan,
    },
    /// A directory was entered.
    Dir,
    /// Left out by `--exclude`.
    Excluded {
        /// The path.
        path: PathBuf,
    },
    /// Not scanned on purpose (links not followed, FIFOs, sockets, devices).
    Skipped {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The walk failed on this path.
    Error {
        /// The path.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

#[derive(Debug, Default)]
struct Totals {
    dirs: u64,
    files: u64,
    infected: u64,
    unscanned: u64,
    errors: u64,
    skipped: u64,
    excluded: u64,
    bytes: u64,
}

/// Collects events, prints them, and computes the exit code.
#[derive(Debug)]
pub struct Report {
    out: BufWriter<io::Stdout>,
    json: bool,
    infected_only: bool,
    all_match: bool,
    no_summary: bool,
    known: u64,
    load_time: Duration,
    totals: Totals,
    bar: Option<ProgressBar>,
}

impl Report {
    /// A report for these options.
    pub fn new(opts: &ScanOptions, set: &SignatureSet, load_time: Duration) -> Self {
        let bar = io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        Report {
            out: BufWriter::with_capacity(1 << 16, io::stdout()),
            json: opts.json,
            infected_only: opts.infected_only,
            all_match: opts.all_match,
            no_summary: opts.no_summary,
            known: set.counts().detection_total(),
            load_time,
            totals: Totals::default(),
            bar,
        }
    }

    /// Handle one event. An error means stdout is gone.
    pub fn event(&mut self, ev: Event) -> io::Result<()> {
        let t = &mut self.totals;
        match ev {
            Event::Dir => {
                t.dirs += 1;
                return Ok(());
            }
            Event::Excluded { .. } => {
                t.excluded += 1;
                return Ok(());
            }
            Event::Skipped { path, reason } => {
                t.skipped += 1;
                if self.json {
                    let v = json!({"path": path.to_string_lossy(), "result": "skipped", "reason": reason});
                    writeln!(self.out, "{v}")?;
                } else if !self.infected_only {
                    writeln!(self.out, "{}: {reason} SKIPPED", path.display())?;
                }
            }
            Event::Error { path, message } => {
                t.errors += 1;
                if self.json {
                    let v = json!({"path": path.to_string_lossy(), "result": "error", "reason": message});
                    writeln!(self.out, "{v}")?;
                } else {
                    writeln!(self.out, "{}: {message} ERROR", path.display())?;
                }
            }
            Event::File { path, scan } => {
                t.files += 1;
                t.bytes += scan.bytes;
                if is_problem(&scan.result) {
                    t.unscanned += 1;
                }
                if matches!(scan.result, ScanResult::Infected { .. }) {
                    t.infected += 1;
                }
                if self.json {
                    let mut v = serde_json::to_value(&scan.result).unwrap_or_else(|_| json!({}));
                    if let Some(o) = v.as_object_mut() {
                        o.insert("path".into(), json!(path.to_string_lossy()));
                        o.insert("size".into(), json!(scan.bytes));
                        if let ScanResult::Unscanned { reason } = &scan.result {
                            o.insert("message".into(), json!(reason.to_string()));
                        }
                    }
                    writeln!(self.out, "{v}")?;
                } else {
                    match &scan.result {
                        ScanResult::Clean => {
                            if !self.infected_only {
                                writeln!(self.out, "{}: OK", path.display())?;
                            }
                        }
                        ScanResult::Infected { matches } => {
                            let n = if self.all_match { matches.len() } else { 1 };
                            for m in matches.iter().take(n) {
                                writeln!(self.out, "{}: {} FOUND", path.display(), m.name)?;
                            }
                        }
                        ScanResult::Unscanned { reason } => {
                            writeln!(self.out, "{}: Unscanned: {reason} ERROR", path.display())?;
                        }
                    }
                }
                if let Some(bar) = &self.bar {
                    let t = &self.totals;
                    bar.set_message(format!(
                        "{} files, {:.1} MiB, {} infected",
                        t.files,
                        mib(t.bytes),
                        t.infected
                    ));
                }
            }
        }
        Ok(())
    }

    /// Print the summary and return the exit code: 1 if anything was found, else 2 if any
    /// file was unscanned or failed, else 0.
    pub fn finish(mut self, elapsed: Duration) -> Result<ExitCode> {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let t = &self.totals;
        let secs = elapsed.as_secs_f64();
        let speed = if secs > 0.0 { mib(t.bytes) / secs } else { 0.0 };
        let code = if t.infected > 0 {
            1
        } else if t.unscanned > 0 || t.errors > 0 {
            2
        } else {
            0
        };
        let res: io::Result<()> = (|| {
            if self.json {
                let v = json!({"summary": {
                    "known_signatures": self.known,
                    "engine_version": env!("CARGO_PKG_VERSION"),
                    "scanned_directories": t.dirs,
                    "scanned_files": t.files,
                    "infected_files": t.infected,
                    "unscanned_files": t.unscanned,
                    "errors": t.errors,
                    "skipped": t.skipped,
                    "excluded": t.excluded,
                    "data_scanned_bytes": t.bytes,
                    "time_seconds": secs,
                    "load_seconds": self.load_time.as_secs_f64(),
                    "mib_per_second": speed,
                    "exit_code": code,
                }});
                writeln!(self.out, "{v}")?;
            } else if !self.no_summary {
                writeln!(self.out, "\n----------- SCAN SUMMARY -----------")?;
                writeln!(self.out, "Known viruses: {}", self.known)?;
                writeln!(
                    self.out,
                    "Engine version: svm {}",
                    env!("CARGO_PKG_VERSION")
                )?;
                writeln!(self.out, "Scanned directories: {}", t.dirs)?;
                writeln!(self.out, "Scanned files: {}", t.files - t.unscanned)?;
                writeln!(self.out, "Infected files: {}", t.infected)?;
                writeln!(self.out, "Unscanned files: {}", t.unscanned)?;
                writeln!(self.out, "Errors: {}", t.errors)?;
                writeln!(self.out, "Skipped: {}", t.skipped)?;
                if t.excluded > 0 {
                    writeln!(self.out, "Excluded: {}", t.excluded)?;
                }
                writeln!(self.out, "Data scanned: {:.2} MB", mib(t.bytes))?;
                writeln!(
                    self.out,
                    "Signature load time: {:.3} sec",
                    self.load_time.as_secs_f64()
                )?;
                let whole = elapsed.as_secs();
                writeln!(
                    self.out,
                    "Time: {secs:.3} sec ({} m {} s)",
                    whole / 60,
                    whole % 60
                )?;
                writeln!(self.out, "Speed: {speed:.1} MB/s")?;
            }
            self.out.flush()
        })();
        match res {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
            Err(e) => return Err(e.into()),
            Ok(()) => {}
        }
        Ok(ExitCode::from(code))
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
