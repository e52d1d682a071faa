//! `deny-syscalls`: run a command with some system calls failing with EPERM, as a systemd
//! unit's `SystemCallFilter=` does.
//!
//! ```text
//! deny-syscalls NR[,NR...] COMMAND [ARG...]
//! ```

use seccompiler::{apply_filter, BpfProgram, SeccompAction, SeccompFilter, TargetArch};
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(nrs), Some(cmd)) = (args.first(), args.get(1)) else {
        eprintln!("usage: deny-syscalls NR[,NR...] COMMAND [ARG...]");
        std::process::exit(2);
    };
    let mut rules = BTreeMap::new();
    for nr in nrs.split(',') {
        let Ok(nr) = nr.parse::<i64>() else {
            eprintln!("deny-syscalls: {nr:?} is not a system call number");
            std::process::exit(2);
        };
        rules.insert(nr, Vec::new());
    }
    let prog: Result<BpfProgram, String> = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| e.to_string())
        .and_then(|arch| {
            SeccompFilter::new(
                rules,
                SeccompAction::Allow,
                SeccompAction::Errno(libc::EPERM as u32),
                arch,
            )
            .map_err(|e| e.to_string())
        })
        .and_then(|f| {
            f.try_into()
                .map_err(|e: seccompiler::BackendError| e.to_string())
        });
    let prog = match prog {
        Ok(p) => p,
        Err(e) => {
            eprintln!("deny-syscalls: {e}");
            std::process::exit(2);
        }
    };
    // no_new_privs, which a filter needs without CAP_SYS_ADMIN, is set by apply_filter.
    if let Err(e) = apply_filter(&prog) {
        eprintln!("deny-syscalls: {e}");
        std::process::exit(2);
    }
    let e = std::process::Command::new(cmd)
        .args(args.get(2..).unwrap_or_default())
        .exec();
    eprintln!("deny-syscalls: {cmd}: {e}");
    std::process::exit(127);
}
