//! `svm scan`: a parallel offline scan of files and directories.

use crate::report::{Event, Report};
use anyhow::{Context, Result};
use crossbeam_channel::{bounded, unbounded, Sender};
use globset::{Glob, GlobSet, GlobSetBuilder};
use scanner::{file_type_name, io_error_text, Limits, ScanResult, Scanner};
use signatures::{LoadOptions, Loader, SignatureSet};
use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Options of one scan, from the command line.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Signature files or directories; empty means the embedded default set.
    pub databases: Vec<PathBuf>,
    /// What to scan.
    pub paths: Vec<PathBuf>,
    /// One JSON object per file, then a summary object.
    pub json: bool,
    /// Scanner threads.
    pub threads: usize,
    /// Per-object limits.
    pub limits: Limits,
    /// Globs of paths (or file names) to leave out.
    pub exclude: Vec<String>,
    /// Load the valid signature lines and skip malformed ones.
    pub skip_invalid: bool,
    /// Follow symbolic links met during the walk.
    pub follow_symlinks: bool,
    /// Print only infected files and problems (text mode).
    pub infected_only: bool,
    /// Leave out the summary.
    pub no_summary: bool,
    /// Print every match of a file, not only the first (text mode).
    pub all_match: bool,
}

/// Load the signature set the options name, reporting the kinds skipped in one warning.
pub fn load_set(databases: &[PathBuf], skip_invalid: bool) -> Result<(SignatureSet, Duration)> {
    let start = Instant::now();
    let mut loader = Loader::new(LoadOptions::strict().skip_invalid(skip_invalid));
    if databases.is_empty() {
        loader.add_default()?;
    }
    for db in databases {
        loader
            .add_path(db)
            .with_context(|| format!("loading signatures from {}", db.display()))?;
    }
    let set = loader.build()?;
    let elapsed = start.elapsed();
    let skipped: u64 = set.skipped().values().sum();
    if skipped > 0 {
        let parts: Vec<String> = set
            .skipped()
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        eprintln!(
            "warning: {skipped} valid signature line(s) of kinds not supported yet were not loaded ({})",
            parts.join("; ")
        );
    }
    if set.invalid_skipped() > 0 {
        eprintln!(
            "warning: {} malformed signature line(s) were skipped (--skip-invalid)",
            set.invalid_skipped()
        );
    }
    Ok((set, elapsed))
}

/// Run `svm scan`.
pub fn run(opts: &ScanOptions) -> Result<ExitCode> {
    let (set, load_time) = load_set(&opts.databases, opts.skip_invalid)?;
    let exclude = build_globs(&opts.exclude)?;
    let threads = opts.threads.max(1);
    let started = Instant::now();
    let mut report = Report::new(opts, &set, load_time);

    let (work_tx, work_rx) = bounded::<PathBuf>(4096);
    let (ev_tx, ev_rx) = unbounded::<Event>();
    std::thread::scope(|s| -> Result<()> {
        let walker_ev = ev_tx.clone();
        let walker_opts = opts.clone();
        let exclude = &exclude;
        s.spawn(move || walk_all(&walker_opts, exclude, threads, &work_tx, &walker_ev));
        for _ in 0..threads {
            let rx = work_rx.clone();
            let tx = ev_tx.clone();
            let set = &set;
            let limits = opts.limits;
            s.spawn(move || {
                let mut scanner = Scanner::new(set);
                scanner.set_limits(limits);
                for path in rx {
                    let scan = scanner.scan_file(&path);
                    if tx.send(Event::File { path, scan }).is_err() {
                        break;
                    }
                }
            });
        }
        drop(ev_tx);
        drop(work_rx);
        for ev in ev_rx {
            if report.event(ev).is_err() {
                // Broken pipe: stop quietly.
                return Ok(());
            }
        }
        Ok(())
    })?;
    let code = report.finish(started.elapsed())?;
    Ok(code)
}

fn build_globs(patterns: &[String]) -> Result<GlobSet> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(Glob::new(p).with_context(|| format!("bad --exclude glob {p:?}"))?);
    }
    Ok(b.build()?)
}

fn excluded(set: &GlobSet, path: &Path) -> bool {
    !set.is_empty() && (set.is_match(path) || path.file_name().is_some_and(|n| set.is_match(n)))
}

struct Walk<'a> {
    opts: &'a ScanOptions,
    exclude: &'a GlobSet,
    work: &'a Sender<PathBuf>,
    events: &'a Sender<Event>,
    visited: Mutex<HashSet<(u64, u64)>>,
}

fn walk_all(
    opts: &ScanOptions,
    exclude: &GlobSet,
    threads: usize,
    work: &Sender<PathBuf>,
    events: &Sender<Event>,
) {
    let w = Walk {
        opts,
        exclude,
        work,
        events,
        visited: Mutex::new(HashSet::new()),
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("svm-walk-{i}"))
        .build();
    let w = &w;
    match pool {
        Ok(pool) => pool.scope(|scope| w.roots(scope)),
        Err(_) => rayon::scope(|scope| w.roots(scope)),
    }
}

impl<'a> Walk<'a> {
    fn roots<'s>(&'s self, scope: &rayon::Scope<'s>) {
        for root in &self.opts.paths {
            // Paths named on the command line are followed even when they are links.
            match fs::metadata(root) {
                Ok(meta) => self.visit(scope, root.clone(), meta),
                Err(e) => self.error(root.clone(), io_error_text(&e)),
            }
        }
    }

    fn error(&self, path: PathBuf, message: String) {
        let _ = self.events.send(Event::Error { path, message });
    }

    fn visit<'s>(&'s self, scope: &rayon::Scope<'s>, path: PathBuf, meta: fs::Metadata) {
        if excluded(self.exclude, &path) {
            let _ = self.events.send(Event::Excluded { path });
            return;
        }
        let ft = meta.file_type();
        if ft.is_dir() {
            if let Ok(mut v) = self.visited.lock() {
                if !v.insert((meta.dev(), meta.ino())) {
                    return; // a link loop or a directory named twice
                }
            }
            scope.spawn(move |scope| self.read_dir(scope, path));
        } else if ft.is_file() {
            let _ = self.work.send(path);
        } else {
            // FIFOs, sockets and devices are reported; opening a FIFO could block forever.
            let what = file_type_name(&ft);
            let _ = self.events.send(Event::Skipped {
                path,
                reason: format!("not a regular file ({what})"),
            });
        }
    }

    fn read_dir<'s>(&'s self, scope: &rayon::Scope<'s>, dir: PathBuf) {
        let _ = self.events.send(Event::Dir);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => return self.error(dir, io_error_text(&e)),
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    self.error(dir.clone(), io_error_text(&e));
                    continue;
                }
            };
            let path = entry.path();
            let ft = match entry.file_type() {
                Ok(ft) => ft,
                Err(e) => {
                    self.error(path, io_error_text(&e));
                    continue;
                }
            };
            if ft.is_symlink() {
                if !self.opts.follow_symlinks {
                    if !excluded(self.exclude, &path) {
                        let _ = self.events.send(Event::Skipped {
                            path,
                            reason: "symbolic link not followed (use --follow-symlinks)".into(),
                        });
                    }
                    continue;
                }
                match fs::metadata(&path) {
                    Ok(meta) => self.visit(scope, path, meta),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        self.error(path, "Broken symbolic link".into())
                    }
                    Err(e) => self.error(path, io_error_text(&e)),
                }
                continue;
            }
            if ft.is_dir() || !ft.is_file() {
                match fs::symlink_metadata(&path) {
                    Ok(meta) => self.visit(scope, path, meta),
                    Err(e) => self.error(path, io_error_text(&e)),
                }
            } else if excluded(self.exclude, &path) {
                let _ = self.events.send(Event::Excluded { path });
            } else {
                let _ = self.work.send(path);
            }
        }
    }
}

/// Whether a result counts as a problem for the exit code.
pub(crate) fn is_problem(r: &ScanResult) -> bool {
    matches!(r, ScanResult::Unscanned { .. })
}
