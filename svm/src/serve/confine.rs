//! Landlock: after start-up, the whole daemon may touch only the paths its configuration names.
//!
//! [`restrict`] runs once, in the main thread, before any other thread exists, so every thread
//! the daemon later starts (I/O, scanners, sweepers, the audit writer) inherits the ruleset.
//!
//! | access | where |
//! |---|---|
//! | read | the directories of the config file, the `-d` signature files, trusted key files, the admin TLS files and each VM's RAM file (a rule holds an inode: a replaced file must stay reachable); `-d` directories; clamd's `scan_paths`, `/proc`, a few name-service files in `/etc` |
//! | read, create, write, remove | `[update] state_dir`, the audit log's directory, the socket directories, `forensics_dir` |
//! | execute, device ioctls, links across directories | nowhere |
//!
//! Paths a `SIGHUP` reload adds are not reachable until a restart; the log says so. On a
//! kernel without Landlock the daemon runs unconfined and says so in one line.

use super::ServeOptions;
use crate::config::Resolved;
use anyhow::{Context, Result};
use landlock::{
    make_bitflags, Access, AccessFs, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, ABI,
};
use std::path::{Path, PathBuf};

/// The newest ABI this code was tested with; older kernels get what they support.
const ABI_TESTED: ABI = ABI::V5;

/// What one rule grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Grant {
    /// Read files, list directories.
    Read,
    /// Read, and create, write, truncate and remove files and sockets beneath.
    Write,
}

impl Grant {
    fn access(self) -> BitFlags<AccessFs> {
        match self {
            Grant::Read => make_bitflags!(AccessFs::{ReadFile | ReadDir}),
            Grant::Write => make_bitflags!(AccessFs::{
                ReadFile | ReadDir | WriteFile | Truncate | MakeReg | MakeSock | MakeDir
                    | RemoveFile | RemoveDir
            }),
        }
    }
}

/// Files glibc's name service reads (the mirror's host name, user names in logs).
const NAME_SERVICE: &[&str] = &[
    "/etc/passwd",
    "/etc/group",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/services",
    "/etc/localtime",
];

/// Every path the daemon needs after start-up, with what it needs there. With `create`,
/// directories that must exist for a rule (state, sockets, forensics) are created.
fn plan(opts: &ServeOptions, r: &Resolved, create: bool) -> Result<Vec<(PathBuf, Grant)>> {
    let cfg = &r.cfg;
    let mut out: Vec<(PathBuf, Grant)> = Vec::new();
    let mut write_dir = |dir: &Path, what: &str| -> Result<()> {
        if create {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating {what} directory {}", dir.display()))?;
        }
        out.push((dir.to_path_buf(), Grant::Write));
        Ok(())
    };
    let parent = |p: &Path| match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    write_dir(&parent(&cfg.server.listen), "socket")?;
    if let Some(p) = &cfg.update.admin_socket {
        write_dir(&parent(p), "admin socket")?;
    }
    if let Some(p) = &cfg.clamd.socket {
        write_dir(&parent(p), "clamd socket")?;
    }
    if let Some(p) = &cfg.server.audit_log {
        write_dir(&parent(p), "audit log")?;
    }
    if let Some(d) = &cfg.update.state_dir {
        write_dir(d, "state")?;
    }
    for g in cfg.groups.values() {
        if let Some(d) = &g.forensics_dir {
            write_dir(d, "forensics")?;
        }
    }
    // A rule holds an inode, so a file replaced by a new one (an edited config, a restarted
    // QEMU's RAM file, a rotated key) would fall outside it: files get their directory.
    let mut files: Vec<PathBuf> = Vec::new();
    files.extend(opts.config.iter().cloned());
    files.extend(
        cfg.update
            .trusted_keys
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.is_file()),
    );
    files.extend(cfg.update.admin_tls_cert.iter().cloned());
    files.extend(cfg.update.admin_tls_key.iter().cloned());
    files.extend(cfg.update.admin_token_file.iter().cloned());
    files.extend(cfg.vm.iter().filter_map(|v| v.qemu_ram.clone()));
    let mut read: Vec<PathBuf> = files.iter().map(|f| parent(f)).collect();
    read.extend(
        opts.databases
            .iter()
            .map(|d| if d.is_dir() { d.clone() } else { parent(d) }),
    );
    read.extend(cfg.server.vm_socket_dir.iter().cloned());
    if cfg.clamd.socket.is_some() || cfg.clamd.tcp.is_some() {
        read.extend(cfg.clamd.scan_paths.iter().cloned());
    }
    read.push(PathBuf::from("/proc"));
    read.extend(NAME_SERVICE.iter().map(PathBuf::from));
    out.extend(
        read.into_iter()
            .filter(|p| p.exists())
            .map(|p| (p, Grant::Read)),
    );
    Ok(out)
}

/// Confine the whole process to the configured paths. Must run before any other thread is
/// started. Returns the line that was logged.
pub fn restrict(opts: &ServeOptions, r: &Resolved) -> Result<String> {
    if !r.cfg.server.landlock {
        let line = "svm serve: landlock: off ([server] landlock = false): file access is not \
                    confined"
            .to_string();
        eprintln!("{line}");
        return Ok(line);
    }
    let threads = std::fs::read_dir("/proc/self/task").map_or(0, Iterator::count);
    if threads > 1 {
        anyhow::bail!(
            "landlock: {threads} threads exist already; the ruleset would not cover them"
        );
    }
    let rules = plan(opts, r, true)?;
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(ABI_TESTED))
        .context("landlock ruleset")?
        .create()
        .context("landlock ruleset")?;
    for (path, grant) in &rules {
        let fd = PathFd::new(path).with_context(|| format!("landlock: {}", path.display()))?;
        // A rule on a file may only grant file rights.
        let access = if path.is_dir() {
            grant.access()
        } else {
            grant.access() & AccessFs::from_file(ABI_TESTED)
        };
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, access))
            .with_context(|| format!("landlock rule for {}", path.display()))?;
    }
    let status = ruleset.restrict_self().context("landlock_restrict_self")?;
    let line = match status.ruleset {
        RulesetStatus::FullyEnforced => format!(
            "svm serve: landlock: enforced: file access is confined to {} configured paths",
            rules.len()
        ),
        RulesetStatus::PartiallyEnforced => format!(
            "svm serve: landlock: partly enforced (this kernel's Landlock ABI is older than \
             v5): file access is confined to {} configured paths for the rights it knows",
            rules.len()
        ),
        RulesetStatus::NotEnforced => "svm serve: landlock: not available (a kernel without it, \
                                       disabled at boot, or its system calls filtered): file \
                                       access is not confined"
            .to_string(),
    };
    eprintln!("{line}");
    Ok(line)
}

/// The paths `new` needs that `old`'s ruleset does not cover (for a reload's warning).
pub fn added_paths(opts: &ServeOptions, old: &Resolved, new: &Resolved) -> Vec<String> {
    let covered = |p: &Path, g: Grant, rules: &[(PathBuf, Grant)]| {
        rules
            .iter()
            .any(|(r, rg)| p.starts_with(r) && (*rg == Grant::Write || g == Grant::Read))
    };
    let (Ok(before), Ok(after)) = (plan(opts, old, false), plan(opts, new, false)) else {
        return Vec::new();
    };
    after
        .into_iter()
        .filter(|(p, g)| !covered(p, *g, &before))
        .map(|(p, _)| p.display().to_string())
        .collect()
}
