//! `svm check PATH...`: act as a guest over the real protocol and print the verdicts.

use crate::client::Guest;
use anyhow::Result;
use hypervisor_api::proto::{WireAction, WireStatus};
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
            let shown = f.display();
            match guest.check_file(&f).await {
                Ok(v) => {
                    let action = match v.action {
                        WireAction::Allow => "allow",
                        _ => "deny",
                    };
                    let (status, detail) = match &v.status {
                        WireStatus::Clean => ("clean", String::new()),
                        WireStatus::Infected(n) => {
                            infected = true;
                            ("infected", n.join(", "))
                        }
                        WireStatus::Unscanned(r) => {
                            errors = true;
                            ("unscanned", r.clone())
                        }
                    };
                    if opts.json {
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
                    errors = true;
                    if opts.json {
                        println!(
                            "{}",
                            serde_json::json!({"path": f, "error": format!("{e:#}")})
                        );
                    } else {
                        println!("{shown}: {e:#} ERROR");
                    }
                    // A protocol error closes the connection: reconnect for the next file.
                    if let Ok(g) = Guest::connect(&opts.socket).await {
                        guest = g;
                    }
                }
            }
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
