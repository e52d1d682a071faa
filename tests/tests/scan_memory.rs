//! `svm scan-memory` on raw RAM images and ELF cores: detections with the guest-physical
//! address where the bytes really are, across page boundaries, and clear errors for bad dumps.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use hypervisor_api::mem::testing::elf_core;
use std::path::Path;
use svm_tests::{code, mem_payload, mem_payload_ndb, svm, wait_until};

/// `svm scan-memory -d DB FLAGS... DUMP`.
fn scan_memory(db: &Path, flags: &[&str], dump: &Path) -> std::process::Output {
    let mut args: Vec<&std::ffi::OsStr> =
        vec!["scan-memory".as_ref(), "-d".as_ref(), db.as_os_str()];
    args.extend(flags.iter().map(std::ffi::OsStr::new));
    args.push(dump.as_os_str());
    svm(args)
}

/// Pseudo-random filler (xorshift), so no page is trivially empty.
fn noise(n: usize, mut x: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The `gpa` fields of the JSON detections.
fn gpas(stdout: &[u8]) -> Vec<u64> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("gpa")?.as_str().map(str::to_owned))
        .map(|g| u64::from_str_radix(g.trim_start_matches("0x"), 16).unwrap())
        .collect()
}

#[test]
fn a_payload_straddling_pages_is_found_at_its_guest_physical_address() {
    let dir = tempfile::tempdir().unwrap();
    let db = mem_payload_ndb(dir.path());
    let p = mem_payload();
    // Raw RAM: the payload starts 10 bytes before the end of page 5.
    let at = 6 * 4096 - 10;
    let mut ram = noise(1 << 20, 7);
    ram[at..at + p.len()].copy_from_slice(&p);
    let raw = dir.path().join("ram.raw");
    std::fs::write(&raw, &ram).unwrap();
    // Small tasks and a window just long enough: the split falls inside the payload.
    let o = scan_memory(&db, &["--json", "--chunk", "4K", "--window", "64"], &raw);
    assert_eq!(code(&o), 1, "{}", String::from_utf8_lossy(&o.stdout));
    let g = gpas(&o.stdout);
    assert_eq!(g, vec![at as u64]);
    // The address is right: the bytes there are the payload.
    assert_eq!(&ram[g[0] as usize..g[0] as usize + p.len()], &p[..]);

    // An ELF core: low RAM at 0, a segment at 1 MiB holding the payload across a page
    // boundary, written to the file first (file order is not address order).
    let mut high = noise(64 << 10, 9);
    let off = 3 * 4096 - 5;
    high[off..off + p.len()].copy_from_slice(&p);
    let low = noise(256 << 10, 11);
    let core = dir.path().join("guest.core");
    std::fs::write(&core, elf_core(&[(0x10_0000, high, None), (0, low, None)])).unwrap();
    let o = scan_memory(&db, &["--json"], &core);
    assert_eq!(code(&o), 1, "{}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(gpas(&o.stdout), vec![0x10_0000 + off as u64]);
    // Text output names the dump, the signature and the address, clamscan-style.
    let o = scan_memory(&db, &[], &core);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(&format!("Test.Mem.Payload FOUND at {:#x}", 0x10_0000 + off)),
        "{text}"
    );
}

#[test]
fn clean_ram_is_ok_and_bad_dumps_are_errors_not_clean() {
    let dir = tempfile::tempdir().unwrap();
    let db = mem_payload_ndb(dir.path());
    let clean = dir.path().join("clean.raw");
    std::fs::write(&clean, noise(256 << 10, 3)).unwrap();
    let o = scan_memory(&db, &[], &clean);
    assert_eq!(code(&o), 0);
    assert!(String::from_utf8_lossy(&o.stdout).contains("clean.raw: OK"));

    let seg = noise(8192, 5);
    let good = elf_core(&[(0, seg.clone(), None)]);
    let bad: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated.core",
            good[..good.len() - 100].to_vec(),
            "outside",
        ),
        ("headers-cut.core", good[..80].to_vec(), "malformed"),
        (
            "overlap.core",
            elf_core(&[(0, seg.clone(), None), (4096, seg.clone(), None)]),
            "overlap",
        ),
        ("far.core", elf_core(&[(0, seg, Some(1 << 40))]), "outside"),
        ("empty.raw", Vec::new(), "empty"),
    ];
    for (name, bytes, why) in bad {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let o = scan_memory(&db, &[], &p);
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(code(&o), 2, "{name}: {out}");
        assert!(out.contains("ERROR") && out.contains(why), "{name}: {out}");
        assert!(!out.contains(": OK"), "{name}: {out}");
    }
}

#[test]
fn sweepers_follow_reloads_and_survive_a_ram_file_that_shrinks() {
    let dir = tempfile::tempdir().unwrap();
    let db = mem_payload_ndb(dir.path());
    let p = mem_payload();
    let ram = dir.path().join("ram");
    let mut bytes = noise(64 * 4096, 7);
    // Straddles the boundary between pages 4 and 5.
    let at = 5 * 4096 - 10;
    bytes[at..at + p.len()].copy_from_slice(&p);
    std::fs::write(&ram, &bytes).unwrap();
    let server = "[server]\nsweep_interval_ms = 100\nsweep_max_cpu = 0.5\n";
    let d = svm_tests::Daemon::start(server, &["-d", db.to_str().unwrap()]);
    let memory_records = || {
        d.audit()
            .into_iter()
            .filter(|r| r.contains("\"op\":\"memory\""))
            .collect::<Vec<_>>()
    };
    // No VM yet. A reload adds one: its sweeper starts and finds the payload.
    std::fs::write(
        d.dir.path().join("svm.toml"),
        format!(
            "{server}[[vm]]\nname = \"hup\"\nqemu_ram = \"{}\"\n",
            ram.display()
        ),
    )
    .unwrap();
    d.signal("HUP");
    let rec = d.wait_audit(&["\"op\":\"memory\""], 60);
    let rec: serde_json::Value = serde_json::from_str(&rec).unwrap();
    assert_eq!(rec["vm"], "hup");
    assert_eq!(rec["signatures"][0], "Test.Mem.Payload");
    assert_eq!(rec["path"], format!("gpa:{at:#x}"));
    // The host truncates the RAM file under the sweeper: an error, no crash, and it sweeps
    // the file again once it is back (the payload, moved, is the same incident: a repeat).
    let errors = d.metric("svm_memory_errors_total");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&ram)
        .unwrap()
        .set_len(8 * 4096)
        .unwrap();
    wait_until("the shrink to be noticed", 60, || {
        d.metric("svm_memory_errors_total") > errors
    });
    let mut moved = noise(64 * 4096, 9);
    moved[40 * 4096 + 100..40 * 4096 + 100 + p.len()].copy_from_slice(&p);
    std::fs::write(&ram, &moved).unwrap();
    wait_until("the moved payload", 60, || {
        d.metric("svm_memory_repeats_total") >= 1.0
    });
    assert_eq!(memory_records().len(), 1, "{:?}", d.audit());
    // A reload without the VM stops its sweeper (its thread is gone).
    // The sweeper's thread: its nice value (field 19 of its stat), for each such thread.
    let sweeper_threads = |pid: u32| -> Vec<i32> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|t| {
                let t = t.ok()?.path();
                let comm = std::fs::read_to_string(t.join("comm")).ok()?;
                let stat = std::fs::read_to_string(t.join("stat")).ok()?;
                let after_comm = stat.rsplit_once(')')?.1;
                let nice = after_comm.split_whitespace().nth(16)?.parse().ok()?;
                (comm.trim() == "svm-mem-hup").then_some(nice)
            })
            .collect()
    };
    // One sweeper, at the lowest CPU priority: file events go first.
    assert_eq!(sweeper_threads(d.child.id()), vec![19]);
    std::fs::write(d.dir.path().join("svm.toml"), server).unwrap();
    d.signal("HUP");
    wait_until("the sweeper to stop", 60, || {
        sweeper_threads(d.child.id()).is_empty()
    });
    let mut d = d;
    assert!(d.alive());
}
