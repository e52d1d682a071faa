//! Least privilege: `svm serve` binds its sockets and opens its files as the user it starts
//! as, then, with `[server] user = "NAME"`, drops to that user for good: supplementary groups,
//! group and user all change (in every thread), and with them every capability goes.

use anyhow::{bail, Context, Result};
use nix::unistd::{setgid, setgroups, setuid, Uid, User};

/// Become `name` for the rest of the process's life.
pub fn drop_to(name: &str) -> Result<()> {
    let user = User::from_name(name)
        .with_context(|| format!("[server] user {name:?}"))?
        .with_context(|| format!("[server] user {name:?}: no such user"))?;
    let current = Uid::current();
    if current == user.uid && Uid::effective() == user.uid {
        return Ok(());
    }
    if !Uid::effective().is_root() {
        bail!(
            "[server] user = {name:?}: svm serve runs as uid {current}, and only root can \
             change to another user"
        );
    }
    setgroups(&[user.gid]).context("setgroups")?;
    setgid(user.gid).context("setgid")?;
    setuid(user.uid).context("setuid")?;
    // There must be no way back.
    if setuid(Uid::from_raw(0)).is_ok() {
        bail!("privileges could be regained after dropping them to {name:?}");
    }
    eprintln!(
        "svm serve: running as {name} (uid {}, gid {}) from here on",
        user.uid, user.gid
    );
    Ok(())
}
