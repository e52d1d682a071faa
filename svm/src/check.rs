//! `svm check PATH...`: act as a guest over the real protocol and print the verdicts.

use crate::client::Guest;
use anyhow::{Context, Result};
use hypervisor_api::proto::{
    self, Content, FileEvent, FileIdentity, FileOp, Message, VerdictMsg, WireAction, WireStatus,
};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Options of `svm check`.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// The daemon's socket.
    pub socket: PathBuf,
    /// Files (directories are walked).
    pub paths: Vec<PathBuf>,
    /// One JSON object per file.
    pub json: bool,
    /// Pass each file as a descriptor (SCM_RIGHTS) instead of sending its bytes.
    pub pass_fd: bool,
}

fn walk(p: &Path, out: &mut Vec<PathBuf>) {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            if let Ok(rd) = std::fs::read_dir(p) {
                let mut v: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
                v.sort();
                for c in v {
                    walk(&c, out);
                }
            }
        }
        _ => out.push(p.to_path_buf()),
    }
}

fn report(f: &Path, r: Result<VerdictMsg>, json: bool, infected: &mut bool, errors: &mut bool) {
    let shown = f.display();
    match r {
        Ok(v) => {
            let action = match v.action {
                WireAction::Allow => "allow",
                _ => "deny",
            };
            let (status, detail) = match &v.status {
                WireStatus::Clean => ("clean", String::new()),
                WireStatus::Infected(n) => {
                    *infected = true;
                    ("infected", n.join(", "))
                }
                WireStatus::Unscanned(r) => {
                    *errors = true;
                    ("unscanned", r.clone())
                }
            };
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "path": f, "action": action, "status": status,
                        "detail": detail, "sigset_version": v.sigset_version,
                    })
                );
            } else {
                match status {
                    "clean" => println!("{shown}: OK ({action})"),
                    "infected" => println!("{shown}: {detail} FOUND ({action})"),
                    _ => println!("{shown}: {detail} UNSCANNED ({action})"),
                }
            }
        }
        Err(e) => {
            *errors = true;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"path": f, "error": format!("{e:#}")})
                );
            } else {
                println!("{shown}: {e:#} ERROR");
            }
        }
    }
}

/// Send one file as a descriptor over a fresh blocking connection: `FILE_EVENT` in fd mode
/// with the descriptor attached (SCM_RIGHTS) to the frame's bytes.
fn check_fd(socket: &Path, f: &Path) -> Result<VerdictMsg> {
    use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::io::{IoSlice, Read, Write};
    use std::mem::MaybeUninit;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let file = std::fs::File::open(f)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        anyhow::bail!("not a regular file");
    }
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(120)))?;
    let mut buf = Vec::new();
    let mut next = |s: &mut std::os::unix::net::UnixStream| -> Result<Message> {
        loop {
            if let Some((m, n)) = proto::decode_frame(&buf, proto::HARD_MAX_PAYLOAD)? {
                buf.drain(..n);
                return Ok(m);
            }
            let mut chunk = [0u8; 8192];
            let n = s.read(&mut chunk)?;
            if n == 0 {
                anyhow::bail!("the SVM closed the connection");
            }
            buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
    };
    s.write_all(&crate::client::hello("").to_frame())?;
    match next(&mut s)? {
        Message::Welcome(_) => {}
        Message::Error(e) => anyhow::bail!("the SVM refused: {:?}: {}", e.code, e.message),
        m => anyhow::bail!("expected WELCOME, got type 0x{:02x}", m.ty()),
    }
    let frame = Message::FileEvent(FileEvent {
        request_id: 1,
        op: FileOp::Open,
        deadline_ms: 0,
        identity: FileIdentity::Posix {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        },
        size: meta.size(),
        path: f.as_os_str().as_encoded_bytes().to_vec(),
        content: Content::Fd,
    })
    .to_frame();
    let fds = [file.as_fd()];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    if !anc.push(SendAncillaryMessage::ScmRights(&fds)) {
        anyhow::bail!("no room for the descriptor");
    }
    let sent = sendmsg(&s, &[IoSlice::new(&frame)], &mut anc, SendFlags::NOSIGNAL)
        .map_err(std::io::Error::from)?;
    s.write_all(frame.get(sent..).unwrap_or_default())?;
    loop {
        match next(&mut s)? {
            Message::Verdict(v) if v.request_id == 1 => return Ok(v),
            Message::Error(e) => anyhow::bail!("{:?}: {}", e.code, e.message),
            _ => {}
        }
    }
}

/// Run `svm check`. Exit 0: all clean; 1: something infected; 2: an error or an unscanned
/// file.
pub fn run(opts: &CheckOptions) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut guest = Guest::connect(&opts.socket).await?;
        let mut files = Vec::new();
        for p in &opts.paths {
            walk(
                &std::path::absolute(p).unwrap_or_else(|_| p.clone()),
                &mut files,
            );
        }
        let (mut infected, mut errors) = (false, false);
        for f in files {
            let r = if opts.pass_fd {
                check_fd(&opts.socket, &f)
            } else {
                guest.check_file(&f).await
            };
            if r.is_err() && !opts.pass_fd {
                // A protocol error closes the connection: reconnect for the next file.
                if let Ok(g) = Guest::connect(&opts.socket).await {
                    guest = g;
                }
            }
            report(&f, r, opts.json, &mut infected, &mut errors);
        }
        Ok(if errors {
            ExitCode::from(2)
        } else if infected {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        })
    })
}
