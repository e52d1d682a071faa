//! Memory introspection for QEMU guests: one sweeper thread per VM with `qemu_ram`.
//!
//! - It reads the guest's RAM file with `pread`, block by block (never a mapping: a file the
//!   host truncates is an error, not a SIGBUS). With `qmp`, the guest-physical layout comes
//!   from QEMU, so guests with RAM above 4 GiB report true addresses.
//! - It hashes every 4 KiB page each round and scans the pages that changed, with
//!   `memory_window` bytes of their neighbours, so signatures across a page boundary are
//!   found. Only the signatures that mean something in RAM are used
//!   ([`scanner::Scanner::for_memory`]).
//! - Pages whose content was already scanned with the current signature set, in any VM, are
//!   skipped (host-wide page dedup: linked clones and shared kernel pages are scanned once).
//! - A detection is audited (op `memory`, the guest-physical address as the path) and
//!   counted, then the group's `on_memory_detect` acts: alert, pause (QMP `stop`) or dump
//!   (pause, then `dump-guest-memory` into `forensics_dir`).
//! - A supervisor follows configuration reloads (SIGHUP): sweepers start and stop with the
//!   `[[vm]]` entries.
//! - With `qmp`, each round first checks that QEMU listens on it: while it does not (QEMU
//!   killed, the socket removed) the VM is not swept, which is logged, audited (op `memory`,
//!   result `unscanned`) and counted in `svm_memory_errors_total`, and a new QEMU on the socket is picked up with its layout.
//! - Sweeper threads run at nice 19: file events, whose guests wait on a deadline, go first.
//!
//! A round never takes more than `sweep_max_cpu` of one CPU: after a round that took `t`,
//! the sweeper sleeps at least `t × (1 / share − 1)`, and rounds start at most every
//! `sweep_interval_ms`.

use super::audit::{now_rfc3339, Record};
use super::Shared;
use crate::config::{MemoryAction, VmConfig};
use hypervisor_api::mem::{gpa_of, LiveRam};
use hypervisor_api::qmp::Qmp;
use scanner::ScanResult;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Guest page size.
pub const PAGE: usize = 4096;

/// Content hashes of pages already scanned, with the set version they were scanned with.
pub type PageSeen = quick_cache::sync::Cache<(u128, u64), ()>;

/// Signatures already reported for one VM → when. Live code copies itself around (a shell
/// re-expands a variable, a heap grows), so one infection shows up at new addresses round
/// after round. One incident is one report and one action: the same signature in the same VM
/// is reported and acted on again only after [`REPORT_AGAIN_AFTER`] (so an administrator who
/// resumes a paused VM to investigate is not overruled a second later). Repeats are counted
/// in `svm_memory_repeats_total`.
type Reported = std::collections::HashMap<String, Instant>;

/// How long a repeated detection stays quiet.
pub const REPORT_AGAIN_AFTER: Duration = Duration::from_secs(3600);

/// What a sweeper is started with; a change (on SIGHUP) restarts the VM's sweeper.
type SweepKey = (String, std::path::PathBuf, Option<std::path::PathBuf>);

/// A running sweeper.
struct Sweeper {
    key: SweepKey,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

/// Start the supervisor: it runs a sweeper for every configured VM with a RAM file, and
/// follows configuration reloads (SIGHUP): VMs added get a sweeper, VMs removed or whose
/// `qemu_ram`/`qmp` changed have theirs stopped (and restarted with the new paths).
pub fn start(shared: &Arc<Shared>, stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<()>> {
    let cfg = shared.config.load();
    let seen = Arc::new(PageSeen::new(cfg.cfg.server.page_dedup_entries.max(1)));
    let (shared, stop) = (shared.clone(), stop.clone());
    match std::thread::Builder::new()
        .name("svm-mem".into())
        .spawn(move || supervise(&shared, &stop, &seen))
    {
        Ok(h) => vec![h],
        Err(e) => {
            tracing::error!("cannot start the memory sweepers: {e}");
            Vec::new()
        }
    }
}

fn supervise(shared: &Arc<Shared>, stop: &AtomicBool, seen: &Arc<PageSeen>) {
    let mut running: Vec<Sweeper> = Vec::new();
    let mut seen_config = std::ptr::null();
    while !stop.load(Ordering::Relaxed) {
        let cfg = shared.config.load_full();
        if !std::ptr::eq(Arc::as_ptr(&cfg), seen_config) {
            seen_config = Arc::as_ptr(&cfg);
            let wanted: Vec<(SweepKey, &VmConfig)> = cfg
                .cfg
                .vm
                .iter()
                .filter_map(|v| {
                    let ram = v.qemu_ram.clone()?;
                    Some(((v.name.clone(), ram, v.qmp.clone()), v))
                })
                .collect();
            let (keep, gone): (Vec<Sweeper>, Vec<Sweeper>) = running
                .into_iter()
                .partition(|s| wanted.iter().any(|(k, _)| *k == s.key));
            for s in gone {
                tracing::info!(vm = %s.key.0, "memory sweeper stopped (configuration changed)");
                s.stop.store(true, Ordering::Relaxed);
                let _ = s.thread.join();
            }
            running = keep;
            for (key, vm) in wanted {
                if running.iter().any(|s| s.key == key) {
                    continue;
                }
                let own_stop = Arc::new(AtomicBool::new(false));
                let (sh, st, sn, vm) = (shared.clone(), own_stop.clone(), seen.clone(), vm.clone());
                match std::thread::Builder::new()
                    .name(format!("svm-mem-{}", key.0))
                    .spawn(move || sweep(&sh, &vm, &st, &sn))
                {
                    Ok(thread) => running.push(Sweeper {
                        key,
                        stop: own_stop,
                        thread,
                    }),
                    Err(e) => tracing::error!(vm = %key.0, "cannot start the memory sweeper: {e}"),
                }
            }
        }
        nap(stop, Duration::from_millis(500));
    }
    for s in &running {
        s.stop.store(true, Ordering::Relaxed);
    }
    for s in running {
        let _ = s.thread.join();
    }
}

/// Sleep up to `d`, waking early when stopping.
pub(crate) fn nap(stop: &AtomicBool, d: Duration) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

fn page_hash(p: &[u8]) -> u128 {
    let h = blake3::hash(p);
    let mut b = [0u8; 16];
    b.copy_from_slice(h.as_bytes().get(..16).unwrap_or(&[0; 16]));
    u128::from_le_bytes(b)
}

/// Pages read and hashed at once (the file is read in blocks of this many pages).
const BLOCK_PAGES: usize = 256;

/// Open a VM's RAM file with its guest-physical layout from QMP (or, without a QMP socket,
/// file offset = guest-physical address).
fn open_ram(vm: &VmConfig, path: &std::path::Path) -> Result<LiveRam, String> {
    let layout = match &vm.qmp {
        None => None,
        Some(sock) => {
            let len = std::fs::metadata(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .len();
            let mut q = Qmp::connect(sock, Duration::from_secs(5))
                .map_err(|e| format!("RAM layout from {}: {e}", sock.display()))?;
            Some(
                q.ram_layout(len)
                    .map_err(|e| format!("RAM layout from {}: {e}", sock.display()))?,
            )
        }
    };
    LiveRam::open(path, layout).map_err(|e| format!("{}: {e}", path.display()))
}

fn sweep(shared: &Shared, vm: &VmConfig, stop: &AtomicBool, seen: &PageSeen) {
    let Some(path) = vm.qemu_ram.clone() else {
        return;
    };
    // Memory sweeps yield to file events: this thread (Linux priorities are per thread) runs
    // at the lowest CPU priority, so the scan workers answering guests' deadlines go first.
    if let Err(e) = rustix::process::setpriority_process(None, 19) {
        tracing::warn!(vm = %vm.name, "cannot lower the sweeper's priority: {e}");
    }
    let m = &shared.metrics;
    let mut prev: Vec<u128> = Vec::new();
    let mut reported = Reported::new();
    let mut ram: Option<LiveRam> = None;
    let mut logged_error = false;
    while !stop.load(Ordering::Relaxed) {
        let server = shared.config.load().cfg.server.clone();
        let interval = Duration::from_millis(server.sweep_interval_ms.max(10));
        let share = server.sweep_max_cpu.clamp(0.01, 1.0);
        let t0 = Instant::now();
        // A file that shrank, grew or was replaced (the VM restarted) is reopened.
        if let Some(r) = ram.as_ref().filter(|r| r.is_stale(&path)) {
            if r.check_size().is_err() {
                tracing::warn!(vm = %vm.name, "the RAM file {} shrank; reopening", path.display());
                m.mem_errors.inc();
            } else {
                tracing::info!(vm = %vm.name, "the RAM file {} changed; reopening", path.display());
            }
            ram = None;
        }
        // With `qmp`, the VM is the QEMU behind it: when that is gone (killed, or its
        // socket removed) the RAM file is no longer a running guest's memory and its layout
        // may not hold for the next QEMU. Its memory is then not swept, which is counted and
        // logged (never reported as swept); the sweeper opens it again, with the layout of a
        // new QEMU, once one answers on the socket.
        if let (Some(_), Some(sock)) = (&ram, &vm.qmp) {
            if let Err(e) = qmp_listening(sock) {
                tracing::warn!(vm = %vm.name,
                    "QEMU's QMP socket {} does not answer ({e}): memory not swept until a QEMU is back",
                    sock.display());
                m.mem_errors.inc();
                unswept(shared, vm, &format!("QMP socket {}: {e}", sock.display()));
                ram = None;
                logged_error = true;
                nap(stop, interval);
                continue;
            }
        }
        if ram.is_none() {
            prev.clear();
            match open_ram(vm, &path) {
                Ok(r) => {
                    tracing::info!(vm = %vm.name, bytes = r.len(), regions = r.regions().len(),
                        "sweeping {}", path.display());
                    ram = Some(r);
                    logged_error = false;
                }
                Err(e) => {
                    if !logged_error {
                        tracing::warn!(vm = %vm.name, "cannot sweep: {e}");
                        logged_error = true;
                    }
                    nap(stop, interval);
                    continue;
                }
            }
        }
        let Some(r) = &ram else { continue };
        let window = usize::try_from(server.memory_window).unwrap_or(PAGE);
        let mut round = Round {
            shared,
            vm,
            ram: r,
            seen,
            reported: &mut reported,
            window,
            queued: std::collections::HashSet::new(),
        };
        if let Err(e) = round.run(&mut prev) {
            tracing::warn!(vm = %vm.name, "RAM file: {e}");
            m.mem_errors.inc();
            ram = None;
        }
        m.mem_rounds.inc();
        let busy = t0.elapsed();
        let rest = busy.mul_f64(1.0 / share - 1.0);
        nap(stop, rest.max(interval.saturating_sub(busy)));
    }
}

/// Whether something listens on the QMP socket `sock`: a non-blocking connect, closed at
/// once (it never waits on a QEMU that is stopped or busy; a full queue is a listener).
fn qmp_listening(sock: &std::path::Path) -> std::io::Result<()> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    match rustix::net::connect(&fd, &SocketAddrUnix::new(sock)?) {
        Ok(()) | Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INPROGRESS) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// One round over a VM's RAM.
struct Round<'a> {
    shared: &'a Shared,
    vm: &'a VmConfig,
    ram: &'a LiveRam,
    seen: &'a PageSeen,
    reported: &'a mut Reported,
    /// Bytes of the neighbouring pages scanned with a changed run.
    window: usize,
    /// Content already scanned this round (zero pages, duplicated pages): scanned once.
    queued: std::collections::HashSet<u128>,
}

impl Round<'_> {
    /// Read the file block by block (`pread`, never a mapping: a file truncated under us is
    /// an error, not a SIGBUS), hash every page, and scan the pages that changed since the
    /// last round and were not scanned anywhere with this signature set.
    fn run(&mut self, prev: &mut Vec<u128>) -> Result<(), hypervisor_api::mem::MemError> {
        let sigs = self.shared.sigs.load_full();
        let len = self.ram.len();
        let pages = usize::try_from(len / PAGE as u64).unwrap_or(0);
        let first = prev.len() != pages;
        if first {
            *prev = vec![0; pages];
        }
        let mut scanner = scanner::Scanner::for_memory(&sigs.set);
        let mut buf = Vec::new();
        let mut todo: Vec<(usize, u128)> = Vec::new();
        let mut block = 0;
        while block < pages {
            let end = (block + BLOCK_PAGES).min(pages);
            // The block's pages plus `window` bytes on each side.
            let lo = (block * PAGE).saturating_sub(self.window) as u64;
            let hi = ((end * PAGE).saturating_add(self.window) as u64).min(len);
            buf.resize(usize::try_from(hi - lo).unwrap_or(0), 0);
            self.ram.read_at(lo, &mut buf)?;
            let base = block * PAGE - lo as usize;
            todo.clear();
            for i in block..end {
                let at = base + (i - block) * PAGE;
                let Some(page) = buf.get(at..at + PAGE) else {
                    break;
                };
                let h = page_hash(page);
                let Some(slot) = prev.get_mut(i) else { break };
                if !first && *slot == h {
                    continue;
                }
                *slot = h;
                if self.seen.get(&(h, sigs.version)).is_some() || !self.queued.insert(h) {
                    self.shared.metrics.mem_pages_deduped.inc();
                    continue;
                }
                todo.push((i, h));
            }
            self.scan_runs(&mut scanner, &todo, &buf, lo, sigs.version);
            for &(_, h) in &todo {
                self.seen.insert((h, sigs.version), ());
            }
            self.shared
                .metrics
                .mem_pages_hashed
                .inc_by((end - block) as u64);
            block = end;
        }
        Ok(())
    }

    /// Scan each run of consecutive changed pages in `buf` (file bytes from `lo`), with the
    /// window into its neighbours.
    fn scan_runs(
        &mut self,
        scanner: &mut scanner::Scanner<'_>,
        todo: &[(usize, u128)],
        buf: &[u8],
        lo: u64,
        version: u64,
    ) {
        let lo = lo as usize;
        let mut at = 0;
        while let Some(&(start, _)) = todo.get(at) {
            let mut end = start;
            while todo.get(at + 1).is_some_and(|&(p, _)| p == end + 1) {
                end += 1;
                at += 1;
            }
            at += 1;
            let from = (start * PAGE).saturating_sub(self.window).max(lo);
            let to = ((end + 1) * PAGE).saturating_add(self.window);
            let Some(bytes) = buf.get(from - lo..(to - lo).min(buf.len())) else {
                continue;
            };
            self.shared
                .metrics
                .mem_pages_scanned
                .inc_by((end + 1 - start) as u64);
            match scanner.scan_bytes(bytes) {
                ScanResult::Clean => {}
                ScanResult::Infected { matches } => {
                    for hit in matches {
                        let offset = from as u64 + hit.offset.unwrap_or(0);
                        self.hit(&hit.name, offset, version);
                    }
                }
                ScanResult::Unscanned { reason } => {
                    tracing::warn!(vm = %self.vm.name, "pages {start}..={end} not scanned: {reason}");
                    self.shared.metrics.mem_errors.inc();
                }
            }
        }
    }

    /// A detection at file offset `offset`: reported and acted on once per incident.
    fn hit(&mut self, name: &str, offset: u64, version: u64) {
        if self
            .reported
            .get(name)
            .is_some_and(|t| t.elapsed() < REPORT_AGAIN_AFTER)
        {
            self.shared.metrics.mem_repeats.inc();
            return;
        }
        if self.reported.len() >= 10_000 {
            self.reported.clear();
        }
        let place = match gpa_of(self.ram.regions(), offset) {
            Some(gpa) => format!("gpa:{gpa:#x}"),
            // Bytes of the RAM file shadowed by a ROM or device window.
            None => format!("ram-offset:{offset:#x}"),
        };
        detected(self.shared, self.vm, name, &place, version);
        self.reported.insert(name.to_owned(), Instant::now());
    }
}

/// Audit that a VM's memory is not swept any more (per VM; the metrics only count).
fn unswept(shared: &Shared, vm: &VmConfig, reason: &str) {
    let cfg = shared.config.load();
    shared.audit.log(
        Record {
            time: now_rfc3339(),
            vm: Arc::from(vm.name.as_str()),
            group: cfg.group_of(&vm.name).name.clone(),
            op: "memory",
            path: String::new(),
            content_hash: None,
            signatures: Vec::new(),
            sigset_version: shared.sigs.load().version,
            action: "none",
            result: "unscanned",
            policy: None,
            reason: Some(format!("memory not swept: {reason}")),
            cached: false,
            latency_ms: 0.0,
            session: 0,
        },
        &shared.metrics.audit_dropped,
    );
}

fn detected(shared: &Shared, vm: &VmConfig, name: &str, place: &str, version: u64) {
    let cfg = shared.config.load();
    let group = cfg.group_of(&vm.name);
    let action = group.cfg.on_memory_detect;
    shared.metrics.mem_detections.inc();
    tracing::warn!(vm = %vm.name, at = place, "memory detection: {name}");
    let outcome = act(vm, action, group.cfg.forensics_dir.as_deref());
    shared.audit.log(
        Record {
            time: now_rfc3339(),
            vm: Arc::from(vm.name.as_str()),
            group: group.name.clone(),
            op: "memory",
            path: place.to_owned(),
            content_hash: None,
            signatures: vec![name.to_owned()],
            sigset_version: version,
            action: match action {
                MemoryAction::Alert => "alert",
                MemoryAction::Pause => "pause",
                MemoryAction::Dump => "dump",
            },
            result: "infected",
            policy: None,
            reason: outcome.err(),
            cached: false,
            latency_ms: 0.0,
            session: 0,
        },
        &shared.metrics.audit_dropped,
    );
}

/// Pause and/or dump through QMP; the error says what failed.
fn act(vm: &VmConfig, action: MemoryAction, dir: Option<&std::path::Path>) -> Result<(), String> {
    if action == MemoryAction::Alert {
        return Ok(());
    }
    let sock = vm.qmp.as_ref().ok_or("no qmp socket configured")?;
    let dump_dir = match action {
        MemoryAction::Dump => Some(dir.ok_or("no forensics_dir configured")?),
        _ => None,
    };
    let done = crate::scan_memory::qmp_actions(sock, true, dump_dir, &vm.name)
        .map_err(|e| format!("{e:#}"))?;
    for (what, detail) in done {
        tracing::warn!(vm = %vm.name, "memory detection: {what}: {detail}");
    }
    Ok(())
}
