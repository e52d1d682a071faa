//! The thin agent inside a real QEMU guest (TCG): `svm-agent` in a busybox initramfs talks to
//! `svm serve` on this host over virtio-serial. The guest opens EICAR and a clean file, runs
//! a clean and an infected program, and prints what happened on its serial console, which
//! this test reads.
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

#[test]
fn the_agent_in_a_qemu_guest_blocks_eicar_over_virtio_serial() {
    if !have("qemu-system-x86_64") {
        eprintln!(
            "SKIPPED: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86; .ci/run does)"
        );
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let img = work.path().join("img");
    let st = Command::new(repo().join("scripts/guest-image.sh"))
        .arg(&img)
        .arg(svm_tests::built_bin("svm-agent"))
        .status()
        .unwrap();
    assert!(st.success(), "scripts/guest-image.sh failed");

    let vms = work.path().join("vms");
    std::fs::create_dir(&vms).unwrap();
    let cfg = "[server]\n[groups.default]\ndeadline_ms = 5000\n";
    let d = Daemon::start(cfg, &["--vm-socket-dir", vms.to_str().unwrap()]);

    let serial = work.path().join("serial.log");
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35,accel=tcg",
            "-cpu",
            "max",
            "-smp",
            "1",
            "-m",
            "256M",
        ])
        .arg("-kernel")
        .arg(img.join("vmlinuz"))
        .arg("-initrd")
        .arg(img.join("initrd.gz"))
        .args([
            "-append",
            "console=ttyS0 panic=-1 quiet svm.role=agent-test",
            "-display",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
            "-serial",
        ])
        .arg(format!("file:{}", serial.display()))
        .args(["-device", "virtio-serial", "-chardev"])
        .arg(format!(
            "socket,path={},server=on,wait=off,id=c0",
            vms.join("testvm.sock").display()
        ))
        .args(["-device", "virtserialport,chardev=c0,name=org.svm.agent"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // TCG boots in about 12 s here; the role powers the guest off when it is done.
    let until = Instant::now() + Duration::from_secs(300);
    loop {
        if qemu.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > until {
            let _ = qemu.kill();
            let _ = qemu.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let console = std::fs::read_to_string(&serial).unwrap_or_default();
    let lines: Vec<&str> = console
        .lines()
        .filter(|l| l.contains("SVM-GUEST:"))
        .collect();
    let has = |s: &str| lines.iter().any(|l| l.contains(s));
    let ctx = || format!("guest console:\n{}", lines.join("\n"));
    assert!(
        has("SVM-GUEST: done"),
        "the guest did not finish\n{}",
        ctx()
    );
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
