//! Memory introspection for QEMU guests: one sweeper thread per VM with `qemu_ram` reads the
//! guest's RAM file (mapped read-only), hashes every 4 KiB page each round, and scans the
//! pages that changed, with `memory_window` bytes of their neighbours so signatures across a
//! page boundary are found. Pages whose content was already scanned with the current
//! signature set, in any VM, are skipped (host-wide page dedup: linked clones and shared
//! kernel pages are scanned once). A detection is audited (op `memory`, the guest-physical
//! address as the path) and counted, then the group's `on_memory_detect` acts: alert, pause
//! (QMP `stop`) or dump (pause, then `dump-guest-memory` into `forensics_dir`).
//!
//! A round never takes more than `sweep_max_cpu` of one CPU: after a round that took `t`,
//! the sweeper sleeps at least `t × (1 / share − 1)`, and rounds start at most every
//! `sweep_interval_ms`.

use super::audit::{now_rfc3339, Record};
use super::Shared;
use crate::config::{MemoryAction, VmConfig};
use hypervisor_api::mem::{Dump, RamLayout};
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

/// Start a sweeper for every configured VM with a RAM file.
pub fn start(shared: &Arc<Shared>, stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<()>> {
    let cfg = shared.config.load();
    let seen = Arc::new(PageSeen::new(cfg.cfg.server.page_dedup_entries.max(1)));
    let mut out = Vec::new();
    for vm in cfg.cfg.vm.iter().filter(|v| v.qemu_ram.is_some()) {
        let name = vm.name.clone();
        let (shared, stop, seen, vm) = (shared.clone(), stop.clone(), seen.clone(), vm.clone());
        let h = std::thread::Builder::new()
            .name(format!("svm-mem-{name}"))
            .spawn(move || sweep(&shared, &vm, &stop, &seen));
        match h {
            Ok(h) => out.push(h),
            Err(e) => tracing::error!(vm = %name, "cannot start the memory sweeper: {e}"),
        }
    }
    out
}

/// Sleep up to `d`, waking early when stopping.
fn nap(stop: &AtomicBool, d: Duration) {
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

fn sweep(shared: &Shared, vm: &VmConfig, stop: &AtomicBool, seen: &PageSeen) {
    let Some(path) = vm.qemu_ram.clone() else {
        return;
    };
    let m = &shared.metrics;
    let mut prev: Vec<u128> = Vec::new();
    let mut reported = Reported::new();
    let mut dump: Option<Dump> = None;
    let mut logged_error = false;
    while !stop.load(Ordering::Relaxed) {
        let server = shared.config.load().cfg.server.clone();
        let interval = Duration::from_millis(server.sweep_interval_ms.max(10));
        let share = server.sweep_max_cpu.clamp(0.01, 1.0);
        let t0 = Instant::now();
        // (Re)open the RAM file; a file that shrank is reopened (never read past its end).
        if dump.as_ref().is_some_and(|d| d.check_size().is_err()) {
            tracing::warn!(vm = %vm.name, "the RAM file {} shrank; reopening", path.display());
            m.mem_errors.inc();
            dump = None;
            prev.clear();
        }
        if dump.is_none() {
            match Dump::open_raw(&path) {
                Ok(d) => {
                    tracing::info!(vm = %vm.name, bytes = d.ram_bytes(), "sweeping {}", path.display());
                    dump = Some(d);
                    logged_error = false;
                }
                Err(e) => {
                    if !logged_error {
                        tracing::warn!(vm = %vm.name, "cannot open the RAM file {}: {e}", path.display());
                        logged_error = true;
                    }
                    nap(stop, interval);
                    continue;
                }
            }
        }
        let Some(d) = &dump else { continue };
        round(
            shared,
            vm,
            d,
            &mut prev,
            seen,
            &mut reported,
            server.memory_window,
        );
        m.mem_rounds.inc();
        let busy = t0.elapsed();
        let rest = busy.mul_f64(1.0 / share - 1.0);
        nap(stop, rest.max(interval.saturating_sub(busy)));
    }
}

/// One round over the VM's RAM.
fn round(
    shared: &Shared,
    vm: &VmConfig,
    d: &Dump,
    prev: &mut Vec<u128>,
    seen: &PageSeen,
    reported: &mut Reported,
    window: u64,
) {
    let m = &shared.metrics;
    let sigs = shared.sigs.load_full();
    let Some(r) = d.regions().first().copied() else {
        return;
    };
    let ram = match d.region_bytes(&r) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(vm = %vm.name, "RAM file: {e}");
            m.mem_errors.inc();
            return;
        }
    };
    let pages = ram.len() / PAGE;
    let first = prev.len() != pages;
    if first {
        *prev = vec![0; pages];
    }
    // Pages to scan: changed since the last round and not scanned anywhere with this set.
    let mut todo: Vec<(usize, u128)> = Vec::new();
    // Content already queued this round (zero pages, duplicated pages): scanned once.
    let mut queued = std::collections::HashSet::new();
    for (i, page) in ram.chunks_exact(PAGE).enumerate() {
        let h = page_hash(page);
        let Some(slot) = prev.get_mut(i) else { break };
        if !first && *slot == h {
            continue;
        }
        *slot = h;
        if seen.get(&(h, sigs.version)).is_some() || !queued.insert(h) {
            m.mem_pages_deduped.inc();
            continue;
        }
        todo.push((i, h));
    }
    m.mem_pages_hashed.inc_by(pages as u64);
    if todo.is_empty() {
        return;
    }
    let mut scanner = crate::scan_memory::memory_scanner(&sigs.set);
    let window = usize::try_from(window).unwrap_or(PAGE);
    let mut at = 0;
    while let Some(&(start, _)) = todo.get(at) {
        // A run of consecutive pages.
        let mut end = start;
        while todo.get(at + 1).is_some_and(|&(p, _)| p == end + 1) {
            end += 1;
            at += 1;
        }
        at += 1;
        let lo = (start * PAGE).saturating_sub(window);
        let hi = ((end + 1) * PAGE).saturating_add(window).min(ram.len());
        let Some(bytes) = ram.get(lo..hi) else {
            continue;
        };
        m.mem_pages_scanned.inc_by((end + 1 - start) as u64);
        match scanner.scan_bytes(bytes) {
            ScanResult::Clean => {}
            ScanResult::Infected { matches } => {
                for hit in matches {
                    let gpa = r.gpa + lo as u64 + hit.offset.unwrap_or(0);
                    if reported
                        .get(&hit.name)
                        .is_some_and(|t| t.elapsed() < REPORT_AGAIN_AFTER)
                    {
                        shared.metrics.mem_repeats.inc();
                        continue;
                    }
                    if reported.len() >= 10_000 {
                        reported.clear();
                    }
                    detected(shared, vm, &hit.name, gpa, sigs.version);
                    reported.insert(hit.name, Instant::now());
                }
            }
            ScanResult::Unscanned { reason } => {
                tracing::warn!(vm = %vm.name, "pages {start}..={end} not scanned: {reason}");
                m.mem_errors.inc();
            }
        }
    }
    for (_, h) in todo {
        seen.insert((h, sigs.version), ());
    }
}

fn detected(shared: &Shared, vm: &VmConfig, name: &str, gpa: u64, version: u64) {
    let cfg = shared.config.load();
    let group = cfg.group_of(&vm.name);
    let action = group.cfg.on_memory_detect;
    shared.metrics.mem_detections.inc();
    tracing::warn!(vm = %vm.name, gpa = format!("{gpa:#x}"), "memory detection: {name}");
    let outcome = act(vm, action, group.cfg.forensics_dir.as_deref());
    shared.audit.log(
        Record {
            time: now_rfc3339(),
            vm: Arc::from(vm.name.as_str()),
            group: group.name.clone(),
            op: "memory",
            path: format!("gpa:{gpa:#x}"),
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
