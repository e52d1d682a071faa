//! `svm-agent`: mark mounts with fanotify and let the security VM decide every open and exec.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use thin_agent::{Agent, AgentConfig, Fallback};

#[derive(Parser, Debug)]
#[command(
    name = "svm-agent",
    version,
    about = "svm thin agent: fanotify -> security VM -> allow/deny"
)]
struct Cli {
    /// The SVM's unix socket.
    #[arg(long, default_value = "/run/svm/svm.sock")]
    socket: PathBuf,
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
}

fn main() -> ExitCode {
    let c = Cli::parse();
    let cfg = AgentConfig {
        socket: c.socket,
        mounts: c.mounts,
        open_perm: c.open_perm,
        deadline_ms: c.deadline_ms,
        fallback: if c.fallback == "deny" {
            Fallback::Deny
        } else {
            Fallback::Allow
        },
    };
    match Agent::new(cfg).run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("svm-agent: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
