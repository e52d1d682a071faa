//! A seccomp filter for the scanner threads, installed before they touch guest data: they may
//! read what they are given, allocate, wait and exit, and nothing else. Opening files, making
//! sockets, running programs, changing identities or mounts all fail with EPERM.
//!
//! The filter is per thread (the rest of the daemon keeps its syscalls), and it also sets
//! `no_new_privs` on the thread. On a kernel without seccomp, the thread runs unfiltered and
//! says so once.

use seccompiler::{apply_filter, BpfProgram, SeccompAction, SeccompFilter, TargetArch};
use std::collections::BTreeMap;

/// The syscalls a scanner thread makes: reading spooled content (a buffer or a sealed memfd),
/// the allocator and mapped files, YARA's compiled rules (wasmtime maps and protects code,
/// and handles traps with signals), thread waits, time and logging to stderr. Threads may be
/// made (they inherit the filter); programs may not be run.
const ALLOWED: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_pread64,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_memfd_create,
    libc::SYS_ftruncate,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_getrandom,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_sigaltstack,
    libc::SYS_membarrier,
    // yara-x starts a timer thread on first use; a thread made here inherits this filter.
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_prctl,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// Install the filter on the calling thread. Returns why it could not be installed.
pub fn confine_scanner_thread() -> Result<(), String> {
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        ALLOWED.iter().map(|&n| (n, Vec::new())).collect();
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        arch,
    )
    .map_err(|e| e.to_string())?;
    let prog: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())?;
    apply_filter(&prog).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn a_confined_thread_cannot_open_files_but_can_scan() {
        // The set is compiled elsewhere (compiling uses a thread pool); the thread scans.
        let set = signatures::default_set().unwrap();
        let t = std::thread::spawn(move || {
            super::confine_scanner_thread().unwrap();
            let open = std::fs::File::open("/etc/hostname").map(|_| ());
            let r = scanner::Scanner::new(&set).scan_bytes(b"plain bytes");
            let status = std::fs::read_to_string("/proc/thread-self/status");
            (open.err().map(|e| e.raw_os_error()), r, status.is_err())
        });
        let (open_err, r, status_err) = t.join().unwrap();
        assert_eq!(open_err, Some(Some(libc::EPERM)));
        assert_eq!(r, scanner::ScanResult::Clean);
        assert!(status_err, "no file can be opened, not even under /proc");
    }
}

#[cfg(test)]
mod yara_tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn yara_rules_run_in_a_confined_thread() {
        let mut l = signatures::Loader::new(signatures::LoadOptions::strict());
        l.add_bytes(
            "r.yar",
            b"rule Confined_Rule { strings: $a = \"needle\" condition: $a }\n",
        )
        .unwrap();
        let set = l.build().unwrap();
        let t = std::thread::spawn(move || {
            super::confine_scanner_thread().unwrap();
            let mut s = scanner::Scanner::new(&set);
            (s.scan_bytes(b"hay needle hay"), s.scan_bytes(b"hay"))
        });
        let (hit, miss) = t.join().unwrap();
        assert!(
            matches!(&hit, scanner::ScanResult::Infected { matches } if matches[0].name == "Confined_Rule"),
            "{hit:?}"
        );
        assert_eq!(miss, scanner::ScanResult::Clean);
    }
}
