//! `svm`: the security VM's command line.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use svm::scan::{load_set, ScanOptions};

#[derive(Parser, Debug)]
#[command(
    name = "svm",
    version,
    about = "Agentless antivirus for virtualized fleets"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Scan files and directories (offline / on-demand), like clamscan.
    Scan(ScanArgs),
    /// Scan guest RAM from dumps (raw or `dump-guest-memory` ELF cores) or QEMU RAM files;
    /// detections are reported with their guest-physical address.
    ScanMemory(ScanMemoryArgs),
    /// Run the security VM daemon: guest events in, allow/deny verdicts out.
    Serve(ServeArgs),
    /// Act as a guest: send files to a running `svm serve` and print its verdicts.
    Check(CheckArgs),
    /// Simulate N guests over the real protocol against fresh daemons and report latency,
    /// throughput, scans and memory.
    BenchStorm(StormArgs),
    /// Signature tools.
    Sigs {
        #[command(subcommand)]
        cmd: SigsCmd,
    },
}

#[derive(clap::Args, Debug)]
struct ScanMemoryArgs {
    /// Signature file or directory (repeatable). Default: the embedded default set.
    #[arg(short = 'd', long = "database", value_name = "DB")]
    databases: Vec<PathBuf>,
    /// The files are QEMU RAM files (`memory-backend-file`): raw, whatever their first bytes.
    /// With --qmp, the guest-physical layout comes from QEMU (RAM above 4 GiB); without,
    /// file offset = guest-physical address.
    #[arg(long)]
    qemu_ram: bool,
    /// One JSON object per detection or error, then a summary object.
    #[arg(long)]
    json: bool,
    /// Scanner threads [default: the number of CPUs].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Bytes scanned per task.
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = svm::size::parse_size)]
    chunk: u64,
    /// Bytes each task reads into the next: signatures up to this long are found across
    /// task boundaries (page boundaries never split a task).
    #[arg(long, value_name = "SIZE", default_value = "64K", value_parser = svm::size::parse_size)]
    window: u64,
    /// Load the valid signatures and skip malformed lines.
    #[arg(long)]
    skip_invalid: bool,
    /// The VM's QMP socket (for the RAM layout with --qemu-ram, --pause and --forensics).
    #[arg(long, value_name = "SOCKET")]
    qmp: Option<PathBuf>,
    /// On a detection, pause the VM through QMP.
    #[arg(long, requires = "qmp")]
    pause: bool,
    /// On a detection, dump the VM's memory (dump-guest-memory) into DIR.
    #[arg(long, value_name = "DIR", requires = "qmp")]
    forensics: Option<PathBuf>,
    /// Dump or RAM files.
    #[arg(required = true, value_name = "DUMP")]
    paths: Vec<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct ScanArgs {
    /// Signature file or directory (repeatable). Default: the embedded default set.
    #[arg(short = 'd', long = "database", value_name = "DB")]
    databases: Vec<PathBuf>,
    /// One JSON object per file, then a summary object.
    #[arg(long)]
    json: bool,
    /// Scanner threads [default: the number of CPUs].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Files larger than this are reported unscanned (an error), never clean.
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = svm::size::parse_size)]
    max_filesize: u64,
    /// Longest time one file may take, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 120_000)]
    max_scantime: u64,
    /// Open containers (gzip, bzip2, xz, zip, tar) and scan their members.
    #[arg(long, value_name = "yes|no", default_value = "yes", value_parser = yes_no, action = clap::ArgAction::Set)]
    scan_archive: bool,
    /// Containers nested deeper than this are not opened (the object is then unscanned).
    #[arg(long, value_name = "N", default_value_t = 17)]
    max_recursion: u32,
    /// Members unpacked from one file, at every depth.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    max_files: u32,
    /// Bytes unpacked from one file in all.
    #[arg(long, value_name = "SIZE", default_value = "400M", value_parser = svm::size::parse_size)]
    max_scansize: u64,
    /// Bytes of one member of a container.
    #[arg(long, value_name = "SIZE", default_value = "100M", value_parser = svm::size::parse_size)]
    max_membersize: u64,
    /// A container may unpack at most N times its own size (above 1 MiB); 0 = no ratio
    /// limit. Stops decompression bombs early.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    max_ratio: u32,
    /// Report a file a limit stopped as Heuristics.Limits.Exceeded FOUND, not unscanned.
    #[arg(long)]
    alert_exceeds_max: bool,
    /// Leave out paths matching this glob (matched on the whole path and on the file name).
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,
    /// Load the valid signature lines and skip malformed ones (they are counted).
    #[arg(long)]
    skip_invalid: bool,
    /// Follow symbolic links found while walking directories.
    #[arg(long)]
    follow_symlinks: bool,
    /// Print only infected files and problems.
    #[arg(short = 'i', long)]
    infected: bool,
    /// Print every matching signature of a file, not only the first.
    #[arg(long)]
    allmatch: bool,
    /// Do not print the summary.
    #[arg(long)]
    no_summary: bool,
    /// Files and directories to scan.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// TOML configuration (policies, VM groups, limits); every setting has a default.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Signature file or directory (repeatable). Default: the embedded default set.
    #[arg(short = 'd', long = "database", value_name = "DB")]
    databases: Vec<PathBuf>,
    /// Unix socket for same-host agents and `svm check` [default: /run/svm/svm.sock].
    #[arg(long, value_name = "PATH")]
    listen: Option<PathBuf>,
    /// Directory of QEMU virtio-serial sockets, one per VM, named VM.sock.
    #[arg(long, value_name = "DIR")]
    vm_socket_dir: Option<PathBuf>,
    /// AF_VSOCK port for guest agents; the peer's CID names the VM ([[vm]] cid).
    #[arg(long, value_name = "PORT")]
    vsock_port: Option<u32>,
    /// Address for /metrics and /healthz [default: 127.0.0.1:9310]; "" turns it off.
    #[arg(long, value_name = "HOST:PORT")]
    metrics: Option<String>,
    /// Audit log file (JSON lines) [default: standard error].
    #[arg(long, value_name = "FILE")]
    audit_log: Option<PathBuf>,
    /// Scanner threads [default: one per core].
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
}

#[derive(clap::Args, Debug)]
struct CheckArgs {
    /// The daemon's socket.
    #[arg(long, value_name = "PATH", env = "SVM_SOCKET", default_value = svm::config::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// One JSON object per file.
    #[arg(long)]
    json: bool,
    /// Pass each file to the daemon as a descriptor (SCM_RIGHTS) instead of its bytes.
    #[arg(long)]
    pass_fd: bool,
    /// Files or directories.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct StormArgs {
    /// Simulated guests (each is its own VM socket).
    #[arg(long, default_value_t = 440)]
    guests: usize,
    /// Files per guest, sampled from --from.
    #[arg(long, default_value_t = 2000)]
    files: usize,
    /// Directory the files are sampled from.
    #[arg(long, default_value = "/usr")]
    from: PathBuf,
    /// Leave out files larger than this.
    #[arg(long, default_value = "64M", value_parser = svm::size::parse_size)]
    max_file_size: u64,
    /// linked: every guest has the same files (clones of one master); unique: its own.
    #[arg(long, default_value = "linked", value_parser = ["linked", "unique"])]
    mode: String,
    /// Events in flight per guest.
    #[arg(long, default_value_t = 4)]
    window: usize,
    /// Files up to this size are sent inline; larger ones when the SVM asks (READ_REQ).
    #[arg(long, default_value = "4K", value_parser = svm::size::parse_size)]
    inline_max: u64,
    /// Repetitions, each with a fresh daemon.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Also run paced warm phases at these total rates in events/s (open loop), e.g. 20000,50000.
    #[arg(long, value_delimiter = ',')]
    rate: Vec<u64>,
    /// Sampling seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Async threads of the load generator itself.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// One JSON object with every repetition.
    #[arg(long)]
    json: bool,
    /// Push this signature bundle to the daemon's admin API during the boots (repeatable, in
    /// order): a swap under load. Needs --admin-socket.
    #[arg(long, value_name = "BUNDLE", requires = "admin_socket")]
    push: Vec<PathBuf>,
    /// The admin socket of the daemon (its `[update] admin_socket`, in a config passed after --).
    #[arg(long, value_name = "PATH")]
    admin_socket: Option<PathBuf>,
    /// Milliseconds before each push.
    #[arg(long, value_name = "MS", default_value_t = 200)]
    push_every_ms: u64,
    /// Push between boot 1 and boot 2 instead (boot 2 is the storm after the update).
    #[arg(long, requires = "admin_socket")]
    push_between_boots: bool,
    /// Extra arguments for `svm serve` (after --).
    #[arg(last = true)]
    serve_args: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum SigsCmd {
    /// Load a signature set and describe it (counts, skipped kinds, digest, load time).
    Info {
        /// Signature file or directory (repeatable). Default: the embedded default set.
        #[arg(short = 'd', long = "database", value_name = "DB")]
        databases: Vec<PathBuf>,
        /// Skip malformed lines instead of refusing the set.
        #[arg(long)]
        skip_invalid: bool,
    },
    /// Create a publisher key pair: PREFIX.key (secret, mode 0600) and PREFIX.pub.
    Keygen {
        /// Path prefix of the two files.
        #[arg(short = 'o', long = "out", value_name = "PREFIX")]
        prefix: PathBuf,
    },
    /// Pack the signature files of DIR into an unsigned bundle (the set must load).
    Build {
        /// Directory of signature files (not recursive).
        dir: PathBuf,
        /// The set version: higher than every bundle released before.
        #[arg(long, value_name = "N")]
        set_version: u64,
        /// The bundle file to write.
        #[arg(short = 'o', long = "out", value_name = "FILE")]
        out: PathBuf,
    },
    /// Sign a bundle with a publisher's secret key.
    Sign {
        /// The bundle.
        bundle: PathBuf,
        /// The secret key file (from `keygen`).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Where to write the signed bundle [default: over the input].
        #[arg(short = 'o', long = "out", value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Verify a bundle as `svm serve` would: signature, caps, digests, then load the set.
    Verify {
        /// The bundle.
        bundle: PathBuf,
        /// A trusted public key: 64 hex digits or a .pub file (repeatable).
        #[arg(long = "trust", value_name = "KEY", required = true)]
        trust: Vec<String>,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Print a bundle's manifest (not verified).
    Inspect {
        /// The bundle.
        bundle: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SVM_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("svm: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Scan(a) => {
            let threads = a
                .threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
            let opts = ScanOptions {
                databases: a.databases,
                paths: a.paths,
                json: a.json,
                threads,
                limits: scanner::Limits {
                    max_file_size: a.max_filesize,
                    max_scan_time: Duration::from_millis(a.max_scantime),
                    archives: scanner::ArchiveLimits {
                        max_depth: if a.scan_archive { a.max_recursion } else { 0 },
                        max_files: a.max_files,
                        max_total: a.max_scansize,
                        max_member: a.max_membersize,
                        max_ratio: a.max_ratio,
                        alert_exceeds_max: a.alert_exceeds_max,
                    },
                },
                exclude: a.exclude,
                skip_invalid: a.skip_invalid,
                follow_symlinks: a.follow_symlinks,
                infected_only: a.infected,
                no_summary: a.no_summary,
                all_match: a.allmatch,
            };
            svm::scan::run(&opts)
        }
        Cmd::Serve(a) => {
            svm::serve::run(svm::serve::ServeOptions {
                config: a.config,
                databases: a.databases,
                listen: a.listen,
                vm_socket_dir: a.vm_socket_dir,
                vsock_port: a.vsock_port,
                metrics: a.metrics,
                audit_log: a.audit_log,
                workers: a.workers,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::BenchStorm(a) => {
            svm::storm::run(&svm::storm::StormOptions {
                guests: a.guests,
                files: a.files,
                from: a.from,
                max_file_size: a.max_file_size,
                linked: a.mode == "linked",
                window: a.window.max(1),
                inline_max: a.inline_max,
                reps: a.reps.max(1),
                rates: a.rate,
                seed: a.seed,
                client_threads: a.client_threads,
                svm: std::env::current_exe()?,
                serve_args: a.serve_args,
                json: a.json,
                push: a.push,
                admin_socket: a.admin_socket,
                push_every: std::time::Duration::from_millis(a.push_every_ms),
                push_between: a.push_between_boots,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::ScanMemory(a) => svm::scan_memory::run(&svm::scan_memory::MemScanOptions {
            databases: a.databases,
            paths: a.paths,
            raw: a.qemu_ram,
            json: a.json,
            threads: a
                .threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            chunk: a.chunk,
            window: a.window,
            skip_invalid: a.skip_invalid,
            qmp: a.qmp,
            pause: a.pause,
            forensics: a.forensics,
        }),
        Cmd::Check(a) => svm::check::run(&svm::check::CheckOptions {
            socket: a.socket,
            paths: a.paths,
            json: a.json,
            pass_fd: a.pass_fd,
        }),
        Cmd::Sigs { cmd } => {
            match cmd {
                SigsCmd::Info {
                    databases,
                    skip_invalid,
                } => {
                    let (set, load) = load_set(&databases, skip_invalid)?;
                    let info = serde_json::json!({
                        "sources": set.sources(),
                        "counts": set.counts(),
                        "skipped": set.skipped(),
                        "invalid_skipped": set.invalid_skipped(),
                        "digest": set.digest_hex(),
                        "load_seconds": load.as_secs_f64(),
                        "heap_bytes": set.heap_bytes(),
                    });
                    println!("{}", serde_json::to_string_pretty(&info)?);
                }
                SigsCmd::Keygen { prefix } => svm::sigs::keygen(&prefix)?,
                SigsCmd::Build {
                    dir,
                    set_version,
                    out,
                } => svm::sigs::build(&dir, set_version, &out)?,
                SigsCmd::Sign { bundle, key, out } => {
                    let out = out.unwrap_or_else(|| bundle.clone());
                    svm::sigs::sign(&bundle, &key, &out)?
                }
                SigsCmd::Verify {
                    bundle,
                    trust,
                    json,
                } => svm::sigs::verify(&bundle, &trust, json)?,
                SigsCmd::Inspect { bundle } => svm::sigs::inspect(&bundle)?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// clamscan's `yes`/`no` option values.
fn yes_no(v: &str) -> Result<bool, String> {
    match v {
        "yes" => Ok(true),
        "no" => Ok(false),
        other => Err(format!("{other:?}: expected yes or no")),
    }
}
