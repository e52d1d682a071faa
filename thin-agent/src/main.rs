//! `svm-agent`: mark mounts with fanotify and let the security VM decide every open and exec.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use thin_agent::{Agent, AgentConfig, Endpoint, Fallback};

#[derive(Parser, Debug)]
#[command(
    name = "svm-agent",
    version,
    about = "svm thin agent: fanotify -> security VM -> allow/deny",
    after_help = "Endpoints: unix:PATH (same host or container), virtio:/dev/virtio-ports/NAME \
                  (QEMU guest; the host side is `svm serve --vm-socket-dir`), vsock:CID:PORT \
                  (the host is CID 2)."
)]
struct Cli {
    /// The SVM's unix socket (same as --connect unix:PATH).
    #[arg(long, conflicts_with = "connect")]
    socket: Option<PathBuf>,
    /// Where the SVM is: unix:PATH, virtio:PATH or vsock:CID:PORT.
    #[arg(long, default_value = "unix:/run/svm/svm.sock")]
    connect: Endpoint,
    /// A mount to protect (repeatable; never /).
    #[arg(long = "mount", required = true)]
    mounts: Vec<PathBuf>,
    /// Ask on every open, not only on exec.
    #[arg(long)]
    open_perm: bool,
    /// Longest wait for a verdict, in ms (the SVM's group deadline may be shorter).
    #[arg(long, default_value_t = 2000)]
    deadline_ms: u32,
    /// Policy when no SVM has ever answered: allow or deny.
    #[arg(long, default_value = "allow", value_parser = ["allow", "deny"])]
    fallback: String,
    /// Do not tell the SVM about written files (close_write notifications).
    #[arg(long)]
    no_close_write: bool,
}

fn main() -> ExitCode {
    let c = Cli::parse();
    let cfg = AgentConfig {
        endpoint: c.socket.map_or(c.connect, Endpoint::Unix),
        mounts: c.mounts,
        open_perm: c.open_perm,
        deadline_ms: c.deadline_ms,
        fallback: if c.fallback == "deny" {
            Fallback::Deny
        } else {
            Fallback::Allow
        },
        notify_close_write: !c.no_close_write,
    };
    match Agent::new(cfg).run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("svm-agent: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
