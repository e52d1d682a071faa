//! The thin agent inside a real QEMU guest (TCG): `svm-agent` in a busybox initramfs talks to
//! `svm serve` on this host over virtio-serial. The guest opens EICAR and a clean file, runs
//! a clean and an infected program, and prints what happened on its serial console, which
//! this test reads. A second guest keeps its RAM in a shared file and assembles a payload in
//! memory at run time; `svm scan-memory` finds it at its guest-physical address, pauses the
//! VM through QMP and writes a forensic dump, and the test reads the bytes back through
//! vmi-rs's `VmiCore`. A third guest (never started) has RAM above 4 GiB: its addresses come
//! from the layout QEMU reports.
//!
//! Needs `qemu-system-x86_64` and the Debian packages `linux-image-amd64` and
//! `busybox-static` (downloaded by `scripts/guest-image.sh`, cached in
//! /var/tmp/svm-guest-cache). `.ci/run` installs QEMU.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use svm_tests::Daemon;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A QEMU guest booted from the test image with one role; killed on drop.
struct Guest {
    child: std::process::Child,
    serial: PathBuf,
}

impl Guest {
    /// Boot `img` (from `scripts/guest-image.sh`) with `svm.role=ROLE`, the serial console
    /// in `dir/serial.log`, and `extra` QEMU arguments.
    fn boot(img: &Path, dir: &Path, role: &str, machine: &str, extra: &[String]) -> Guest {
        let serial = dir.join("serial.log");
        let child = Command::new("qemu-system-x86_64")
            .args([
                "-machine", machine, "-cpu", "max", "-smp", "1", "-m", "256M",
            ])
            .arg("-kernel")
            .arg(img.join("vmlinuz"))
            .arg("-initrd")
            .arg(img.join("initrd.gz"))
            .arg("-append")
            .arg(format!("console=ttyS0 panic=-1 quiet svm.role={role}"))
            .args([
                "-display",
                "none",
                "-monitor",
                "none",
                "-no-reboot",
                "-serial",
            ])
            .arg(format!("file:{}", serial.display()))
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Guest { child, serial }
    }

    /// The console lines the image's roles print.
    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.serial)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("SVM-GUEST:"))
            .map(str::to_owned)
            .collect()
    }

    /// Wait until the console shows `needle` or the guest exits; false after `secs`.
    fn wait_for(&mut self, needle: &str, secs: u64) -> bool {
        let until = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < until {
            if self.lines().iter().any(|l| l.contains(needle)) {
                return true;
            }
            if self.child.try_wait().unwrap().is_some() {
                return self.lines().iter().any(|l| l.contains(needle));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Build the test image into `dir/img`.
fn image(dir: &Path) -> PathBuf {
    let img = dir.join("img");
    let st = Command::new(repo().join("scripts/guest-image.sh"))
        .arg(&img)
        .arg(svm_tests::built_bin("svm-agent"))
        .status()
        .unwrap();
    assert!(st.success(), "scripts/guest-image.sh failed");
    img
}

fn no_qemu() -> bool {
    if have("qemu-system-x86_64") {
        return false;
    }
    eprintln!(
        "SKIPPED: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86; .ci/run does)"
    );
    true
}

#[test]
fn the_agent_in_a_qemu_guest_blocks_eicar_over_virtio_serial() {
    if no_qemu() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let img = image(work.path());
    let vms = work.path().join("vms");
    std::fs::create_dir(&vms).unwrap();
    let cfg = "[server]\n[groups.default]\ndeadline_ms = 5000\n";
    let d = Daemon::start(cfg, &["--vm-socket-dir", vms.to_str().unwrap()]);
    let extra: Vec<String> = vec![
        "-device".into(),
        "virtio-serial".into(),
        "-chardev".into(),
        format!(
            "socket,path={},server=on,wait=off,id=c0",
            vms.join("testvm.sock").display()
        ),
        "-device".into(),
        "virtserialport,chardev=c0,name=org.svm.agent".into(),
    ];
    let mut g = Guest::boot(&img, work.path(), "agent-test", "q35,accel=tcg", &extra);
    // TCG boots in about 12 s here; the role powers the guest off when it is done.
    let done = g.wait_for("SVM-GUEST: done", 300);
    let lines = g.lines();
    let has = |s: &str| lines.iter().any(|l| l.contains(s));
    let ctx = || format!("guest console:\n{}", lines.join("\n"));
    assert!(done, "the guest did not finish\n{}", ctx());
    assert!(has("clean=OK hello from the guest"), "{}", ctx());
    assert!(has("eicar=DENIED"), "{}", ctx());
    assert!(has("exec-clean=OK"), "{}", ctx());
    assert!(has("exec-infected=DENIED"), "{}", ctx());
    assert!(has("restart-eicar=DENIED"), "{}", ctx());
    // The verdicts came from this SVM, for the VM named by its socket.
    let audit = d.audit();
    assert!(
        audit.iter().any(|r| r.contains("\"vm\":\"testvm\"")
            && r.contains("\"action\":\"deny\"")
            && r.contains("Eicar-Test-Signature")),
        "no deny for testvm in the audit log: {audit:?}"
    );
    assert!(
        d.metric("svm_events_total{op=\"open\",result=\"infected\"}") >= 1.0,
        "{}",
        ctx()
    );
}

/// A guest running the `mem-test` role with its RAM in a shared file and a QMP socket, booted
/// until its payload is in memory, and an `.ndb` signature for that payload.
struct MemGuest {
    work: tempfile::TempDir,
    g: Guest,
    ram: PathBuf,
    qmp: PathBuf,
    payload: Vec<u8>,
    db: PathBuf,
}

/// `None` (with the reason printed) where QEMU is missing.
fn mem_guest() -> Option<MemGuest> {
    if no_qemu() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let img = image(work);
    let ram = work.join("ram");
    let qmp = work.join("qmp.sock");
    let extra: Vec<String> = vec![
        "-object".into(),
        format!(
            "memory-backend-file,id=mem,size=256M,mem-path={},share=on",
            ram.display()
        ),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", qmp.display()),
    ];
    let machine = "q35,accel=tcg,memory-backend=mem";
    let mut g = Guest::boot(&img, work, "mem-test", machine, &extra);
    assert!(
        g.wait_for("payload ready", 300),
        "the guest never assembled its payload: {:?}",
        g.lines()
    );
    let db = svm_tests::mem_payload_ndb(work);
    Some(MemGuest {
        work: dir,
        g,
        ram,
        qmp,
        payload: svm_tests::mem_payload(),
        db,
    })
}

/// `svm scan-memory -d DB --qemu-ram --json --qmp QMP EXTRA... RAM`.
fn scan_live_ram(
    db: &Path,
    qmp: &Path,
    ram: &Path,
    extra: &[&std::ffi::OsStr],
) -> std::process::Output {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "scan-memory".as_ref(),
        "-d".as_ref(),
        db.as_os_str(),
        "--qemu-ram".as_ref(),
        "--json".as_ref(),
        "--qmp".as_ref(),
        qmp.as_os_str(),
    ];
    args.extend_from_slice(extra);
    args.push(ram.as_os_str());
    svm_tests::svm(args)
}

#[test]
fn a_payload_assembled_in_guest_memory_is_found_at_its_address_and_the_vm_paused() {
    let Some(MemGuest {
        work,
        g,
        ram,
        qmp,
        payload,
        db,
    }) = mem_guest()
    else {
        return;
    };
    let forensics = work.path().join("forensics");
    std::fs::create_dir(&forensics).unwrap();
    // The shell may still be copying the string around: scan until it is seen (bounded).
    let until = Instant::now() + Duration::from_secs(60);
    let out = loop {
        let o = scan_live_ram(
            &db,
            &qmp,
            &ram,
            &[
                "--pause".as_ref(),
                "--forensics".as_ref(),
                forensics.as_os_str(),
            ],
        );
        if svm_tests::code(&o) == 1 || Instant::now() > until {
            break o;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(svm_tests::code(&out), 1, "{text}");
    // Every reported guest-physical address really holds the payload (RAM file offset =
    // guest-physical address for a 256 MiB q35 guest).
    let gpas: Vec<u64> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("gpa")?.as_str().map(str::to_owned))
        .map(|g| u64::from_str_radix(g.trim_start_matches("0x"), 16).unwrap())
        .collect();
    assert!(!gpas.is_empty(), "{text}");
    // The pause policy: QEMU reports the VM paused.
    let mut q = hypervisor_api::qmp::Qmp::connect(&qmp, Duration::from_secs(10)).unwrap();
    assert_eq!(q.status().unwrap(), "paused", "{text}");
    // Read them back through vmi-rs's VmiCore over this project's driver, with the layout
    // QEMU reports: the vmi-rs ecosystem can be layered on the live guest.
    let layout = q
        .ram_layout(std::fs::metadata(&ram).unwrap().len())
        .unwrap();
    let live = hypervisor_api::mem::LiveRam::open(&ram, Some(layout)).unwrap();
    let core = vmi::VmiCore::new(hypervisor_api::vmi_driver::QemuRamDriver::new(live, 1)).unwrap();
    for g in &gpas {
        let mut back = vec![0u8; payload.len()];
        core.read(vmi::Pa(*g), &mut back).unwrap();
        assert_eq!(back, payload, "at {g:#x}");
    }
    // The forensic dump is an ELF core that holds the payload too.
    let dumps: Vec<PathBuf> = std::fs::read_dir(&forensics)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dumps.len(), 1, "{text}");
    let o = svm_tests::svm([
        "scan-memory".as_ref(),
        "-d".as_ref(),
        db.as_os_str(),
        dumps[0].as_os_str(),
    ]);
    assert_eq!(
        svm_tests::code(&o),
        1,
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    drop(g);
}

#[test]
fn svm_serve_sweeps_a_live_guest_and_pauses_it_on_a_memory_detection() {
    let Some(MemGuest {
        work: _work,
        g,
        ram,
        qmp,
        payload,
        db,
    }) = mem_guest()
    else {
        return;
    };
    let cfg = format!(
        "[server]\nsweep_interval_ms = 500\nsweep_max_cpu = 0.5\n\
         [groups.watched]\non_memory_detect = \"pause\"\n\
         [[vm]]\nname = \"memvm\"\ngroup = \"watched\"\nqemu_ram = \"{}\"\nqmp = \"{}\"\n",
        ram.display(),
        qmp.display()
    );
    let d = Daemon::start(&cfg, &["-d", db.to_str().unwrap()]);
    // The sweeper finds the payload in a later round (generous bound; not a timing test).
    let record = d.wait_audit(&["\"op\":\"memory\"", "\"vm\":\"memvm\""], 120);
    let v: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!(v["signatures"][0], "Test.Mem.Payload", "{record}");
    assert_eq!(v["action"], "pause", "{record}");
    assert!(v["reason"].is_null(), "the pause failed: {record}");
    let gpa = v["path"].as_str().unwrap().trim_start_matches("gpa:0x");
    let gpa = usize::from_str_radix(gpa, 16).unwrap();
    let mem = std::fs::read(&ram).unwrap();
    assert_eq!(&mem[gpa..gpa + payload.len()], &payload[..], "at {gpa:#x}");
    let mut q = hypervisor_api::qmp::Qmp::connect(&qmp, Duration::from_secs(10)).unwrap();
    assert_eq!(q.status().unwrap(), "paused");
    assert!(d.metric("svm_memory_detections_total") >= 1.0);
    assert!(d.metric("svm_memory_pages_scanned_total") >= 1.0);
    // Zero pages and other repeated content were scanned once.
    assert!(d.metric("svm_memory_pages_deduped_total") >= 1.0);
    // Resumed, the guest's shell copies the payload to new addresses: they are found, but
    // one incident is one report and one action (the VM is not paused again).
    q.cont().unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    while d.metric("svm_memory_repeats_total") < 1.0 {
        assert!(Instant::now() < until, "the payload was never found again");
        std::thread::sleep(Duration::from_millis(500));
    }
    let again = d
        .audit()
        .into_iter()
        .filter(|r| r.contains("\"op\":\"memory\"") && r.contains("\"vm\":\"memvm\""))
        .count();
    assert_eq!(again, 1, "{:?}", d.audit());
    assert_eq!(q.status().unwrap(), "running");
    drop(g);
}

#[test]
fn a_guest_with_ram_above_4_gib_is_addressed_through_its_layout_from_qmp() {
    use hypervisor_api::mem::{LiveRam, Region};
    use hypervisor_api::vmi_driver::QemuRamDriver;
    use std::os::unix::fs::FileExt;
    if no_qemu() {
        return;
    }
    // A q35 guest with 2.75 GiB: its first 2 GiB are at 0, the rest at 4 GiB. It never runs
    // (-S): the test writes the payload into its RAM file, as a guest would.
    let dir = tempfile::tempdir().unwrap();
    let (ram, qmp) = (dir.path().join("ram"), dir.path().join("qmp.sock"));
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35,accel=tcg,memory-backend=mem",
            "-m",
            "2816M",
        ])
        .arg("-object")
        .arg(format!(
            "memory-backend-file,id=mem,size=2816M,mem-path={},share=on",
            ram.display()
        ))
        .args([
            "-S",
            "-display",
            "none",
            "-nodefaults",
            "-monitor",
            "none",
            "-qmp",
        ])
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _vm = Guest {
        child,
        serial: dir.path().join("none"),
    };
    let until = Instant::now() + Duration::from_secs(60);
    let mut q = loop {
        match hypervisor_api::qmp::Qmp::connect(&qmp, Duration::from_secs(5)) {
            Ok(q) => break q,
            Err(e) => assert!(Instant::now() < until, "QEMU's QMP never came up: {e}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let len = std::fs::metadata(&ram).unwrap().len();
    let layout = q.ram_layout(len).unwrap();
    drop(q);
    let high = Region {
        gpa: 0x1_0000_0000,
        len: 0x3000_0000,
        file_offset: 0x8000_0000,
    };
    assert!(layout.contains(&high), "{layout:x?}");
    // The payload straddles two pages of the part above 4 GiB.
    let payload = svm_tests::mem_payload();
    let off = 0x8000_0000 + 0x5000 - 9;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&ram)
        .unwrap()
        .write_all_at(&payload, off)
        .unwrap();
    let gpa = 0x1_0000_0000 + 0x5000 - 9;
    let db = svm_tests::mem_payload_ndb(dir.path());
    // svm scan-memory reports the guest-physical address, not the file offset.
    let o = scan_live_ram(&db, &qmp, &ram, &[]);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(svm_tests::code(&o), 1, "{text}");
    assert!(text.contains(&format!("\"gpa\":\"{gpa:#x}\"")), "{text}");
    // vmi-rs's VmiCore, over this crate's driver, reads the payload at that address.
    let live = LiveRam::open(&ram, Some(layout)).unwrap();
    let core = vmi::VmiCore::new(QemuRamDriver::new(live, 1)).unwrap();
    let mut back = vec![0u8; payload.len()];
    core.read(vmi::Pa(gpa), &mut back).unwrap();
    assert_eq!(back, payload);
    // And the sweeper of svm serve, with the VM's QMP socket, reports the same address.
    let cfg = format!(
        "[server]\nsweep_interval_ms = 200\nsweep_max_cpu = 0.5\n\
         [[vm]]\nname = \"big\"\nqemu_ram = \"{}\"\nqmp = \"{}\"\n",
        ram.display(),
        qmp.display()
    );
    let d = Daemon::start(&cfg, &["-d", db.to_str().unwrap()]);
    let record = d.wait_audit(&["\"op\":\"memory\""], 120);
    assert!(
        record.contains(&format!("\"path\":\"gpa:{gpa:#x}\"")),
        "{record}"
    );
}
