//! A clamd-compatible listener (`[clamd] socket`, optionally `tcp`): mail filters, upload
//! scanners, `clamdscan` and the Python `clamd` package talk to `svm serve` unchanged.
//!
//! Commands, with clamd 1.4's replies byte for byte (the `z` prefix ends commands and replies
//! with NUL, `n` and no prefix with a newline): `PING`, `VERSION`, `VERSIONCOMMANDS`,
//! `RELOAD`, `SHUTDOWN` (only with `allow_shutdown`), `SCAN`, `CONTSCAN`, `MULTISCAN`,
//! `ALLMATCHSCAN`, `INSTREAM` (chunks of a 4-byte big-endian length, up to `max_stream`),
//! `FILDES` (a descriptor passed with `SCM_RIGHTS`, unix socket only), `STATS`, and
//! `IDSESSION` … `END` (replies prefixed with the command's number in the session).
//!
//! Every scan goes through the same pipeline as a guest event: the verdict cache, single
//! flight, the scheduler, the audit log and the metrics, accounted under the VM name
//! `[clamd] vm` and the policies of its group. `RELOAD` re-verifies the persisted bundle
//! (`[update] state_dir`) through the update path of signed bundles; it never loads
//! unsigned files.
//!
//! Where replies differ from clamd's, on purpose:
//! - `VERSION` names svm and its signature set (`svm 0.1.0/<set version>/<loaded at>`).
//! - A file svm could not scan (over a limit, unreadable) is `… ERROR`, never `OK`.
//! - Signature names carry no `.UNOFFICIAL` suffix: svm has no "official" database.

use super::pipeline::{scan_request, EventCtx, Outcome, SigState, SpoolGuard};
use super::Shared;
use crate::config::ClamdConfig;
use anyhow::{Context, Result};
use hypervisor_api::clamd::{
    legacy_command, parse_command, split_command, ChunkDecoder, Command, Delim, ParseError,
    ScanMode, Step,
};
use hypervisor_api::proto::{Content, FileEvent, FileIdentity, FileOp};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

/// How long an unprefixed command without its newline may pause before it is taken as is.
const LEGACY_PAUSE: Duration = Duration::from_millis(200);
/// The most files one `SCAN` of a directory visits.
const MAX_WALK: usize = 1_000_000;
/// `MULTISCAN`: files scanned at once.
const MULTISCAN_PARALLEL: usize = 16;

/// The commands `VERSIONCOMMANDS` lists.
const COMMANDS: &str = "SCAN QUIT RELOAD PING CONTSCAN VERSIONCOMMANDS VERSION END SHUTDOWN \
                        MULTISCAN FILDES STATS IDSESSION INSTREAM ALLMATCHSCAN";

/// Bind the configured sockets and serve them until `stop`.
pub async fn start(
    shared: &Arc<Shared>,
    cfg: &ClamdConfig,
    stop: watch::Receiver<bool>,
) -> Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(cfg.max_connections.max(1)));
    if let Some(path) = &cfg.socket {
        let mode = u32::from_str_radix(&cfg.socket_mode, 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .with_context(|| {
                format!(
                    "[clamd] socket_mode {:?} is not an octal mode",
                    cfg.socket_mode
                )
            })?;
        let l = bind_unix(path, mode)?;
        accept_loop(l, slots.clone(), shared.clone(), stop.clone(), |stream| {
            let queue = super::fdpass::FdQueue::default();
            (
                super::fdpass::FdStream::new(stream, queue.clone()),
                Some(queue),
            )
        });
    }
    if let Some(addr) = &cfg.tcp {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding [clamd] tcp {addr}"))?;
        eprintln!("svm serve: clamd protocol on tcp {}", l.local_addr()?);
        accept_loop(l, slots, shared.clone(), stop, |stream| (stream, None));
    }
    Ok(())
}

/// Accept connections until `stop`, each holding one of `slots` while it is served; `wrap`
/// turns an accepted stream into what is served (a unix stream collects passed descriptors).
fn accept_loop<L, S>(
    mut l: L,
    slots: Arc<tokio::sync::Semaphore>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    wrap: fn(L::Io) -> (S, Option<super::fdpass::FdQueue>),
) where
    L: axum::serve::Listener,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (io, _) = tokio::select! {
                a = l.accept() => a,
                _ = stop.wait_for(|s| *s) => return,
            };
            let (stream, fds) = wrap(io);
            let shared = shared.clone();
            tokio::spawn(async move {
                serve_conn(stream, fds, shared).await;
                drop(permit);
            });
        }
    });
}

/// Bind the unix socket with `mode`, replacing a stale socket file (not a live one).
fn bind_unix(path: &Path, mode: u32) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("[clamd] socket {} is in use", path.display());
        }
        let _ = std::fs::remove_file(path);
    }
    let l = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding [clamd] socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(l)
}

/// Why a connection ends.
#[derive(Debug)]
enum End {
    /// The client closed, sent `END`/`QUIT`, or broke the protocol (a reply, if any, was
    /// sent).
    Close,
}

/// One client connection.
struct Conn<S> {
    io: S,
    buf: Vec<u8>,
    fds: Option<super::fdpass::FdQueue>,
    shared: Arc<Shared>,
    timeout: Duration,
    max_stream: u64,
    allow_shutdown: bool,
    ctx: EventCtx,
}

async fn serve_conn<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    fds: Option<super::fdpass::FdQueue>,
    shared: Arc<Shared>,
) {
    let cfg = shared.config.load().cfg.clamd.clone();
    // Frames a guest event would send go nowhere: the content is inline or a descriptor.
    let (out, _) = tokio::sync::mpsc::channel(1);
    let ctx = EventCtx {
        shared: shared.clone(),
        vm: shared.vm(&cfg.vm),
        session: 0,
        out,
    };
    let mut c = Conn {
        io,
        buf: Vec::new(),
        fds,
        shared,
        timeout: Duration::from_millis(cfg.read_timeout_ms.max(1)),
        max_stream: cfg.max_stream,
        allow_shutdown: cfg.allow_shutdown,
        ctx,
    };
    c.shared.metrics.clamd_connections.inc();
    let _ = c.run().await;
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    async fn run(&mut self) -> Result<(), End> {
        let (delim, cmd) = self.command().await?;
        if cmd == Ok(Command::IdSession) {
            return self.session(delim).await;
        }
        let replies = self.execute(cmd, delim, false).await?;
        for r in replies {
            self.reply(delim, &r).await?;
        }
        Ok(())
    }

    /// `IDSESSION`: commands until `END`, each reply prefixed with its number.
    async fn session(&mut self, delim: Delim) -> Result<(), End> {
        let mut n = 0u64;
        loop {
            // Replies keep the session's terminator, whatever each command used.
            let (_, cmd) = self.command().await?;
            n += 1;
            match cmd {
                Ok(Command::End) => return Ok(()),
                Ok(Command::IdSession | Command::Shutdown | Command::Reload | Command::Quit) => {
                    // clamd's reply, then the session ends.
                    let r = format!("{n}: Command invalid inside IDSESSION. ERROR");
                    self.reply(delim, &r).await?;
                    return Err(End::Close);
                }
                _ => {}
            }
            for r in self.execute(cmd, delim, true).await? {
                self.reply(delim, &format!("{n}: {r}")).await?;
            }
        }
    }

    /// Run one command; its reply lines.
    async fn execute(
        &mut self,
        cmd: Result<Command, ParseError>,
        delim: Delim,
        in_session: bool,
    ) -> Result<Vec<String>, End> {
        let sigs = self.shared.sigs.load_full();
        Ok(match cmd {
            Ok(Command::Ping) => vec!["PONG".into()],
            Ok(Command::Version) => vec![version(&sigs)],
            Ok(Command::VersionCommands) => {
                vec![format!("{}| COMMANDS: {COMMANDS}", version(&sigs))]
            }
            Ok(Command::Stats) => vec![self.stats()],
            Ok(Command::Reload) => {
                let shared = self.shared.clone();
                tokio::task::spawn_blocking(move || reload(&shared));
                vec!["RELOADING".into()]
            }
            Ok(Command::Shutdown) => {
                if !self.allow_shutdown {
                    vec!["COMMAND UNAVAILABLE".into()]
                } else {
                    eprintln!("svm serve: SHUTDOWN from a clamd client");
                    let _ = rustix::process::kill_process(
                        rustix::process::getpid(),
                        rustix::process::Signal::TERM,
                    );
                    return Err(End::Close);
                }
            }
            Ok(Command::Quit | Command::End) if !in_session => return Err(End::Close),
            Ok(Command::InStream) => vec![self.instream(&sigs).await?],
            Ok(Command::Fildes) => vec![self.fildes(&sigs).await?],
            Ok(Command::Scan { mode, path }) => self.scan_path(mode, &path, &sigs).await,
            _ => {
                let _ = self.reply(delim, "UNKNOWN COMMAND").await;
                return Err(End::Close);
            }
        })
    }

    /// Read the next command: `z…\0`, `n…\n`, or `…\n` (or the end of the input).
    async fn command(&mut self) -> Result<(Delim, Result<Command, ParseError>), End> {
        loop {
            match split_command(&self.buf) {
                Ok(Some((line, used))) => {
                    let cmd = (line.delim, parse_command(line.body));
                    self.buf.drain(..used);
                    return Ok(cmd);
                }
                Ok(None) => {}
                Err(_) => return Err(End::Close),
            }
            // An unprefixed command may come without its newline (old clients): what
            // arrived is the command once the client pauses.
            if legacy_command(&self.buf).is_some() {
                match tokio::time::timeout(LEGACY_PAUSE, self.fill()).await {
                    Ok(r) => {
                        if r? > 0 {
                            continue;
                        }
                    }
                    Err(_) => return Ok(self.take_legacy()),
                }
            }
            if self.fill().await? == 0 {
                // The end of the input ends an unprefixed command (`PING` then EOF).
                if legacy_command(&self.buf).is_some() {
                    return Ok(self.take_legacy());
                }
                return Err(End::Close);
            }
        }
    }

    /// The whole buffer, an unprefixed command without its newline.
    fn take_legacy(&mut self) -> (Delim, Result<Command, ParseError>) {
        let body = std::mem::take(&mut self.buf);
        (Delim::Newline, parse_command(&body))
    }

    /// Read more input within the timeout; 0 at the end of the input.
    async fn fill(&mut self) -> Result<usize, End> {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(self.timeout, self.io.read(&mut chunk)).await {
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
                Ok(n)
            }
            _ => Err(End::Close),
        }
    }

    async fn reply(&mut self, delim: Delim, text: &str) -> Result<(), End> {
        let mut out = Vec::with_capacity(text.len() + 1);
        out.extend_from_slice(text.as_bytes());
        out.push(delim.byte());
        // A client that stops reading its replies must not hold its connection for ever:
        // the reply goes through within the read timeout, or the connection ends.
        let limit = self.timeout;
        let write = async {
            self.io.write_all(&out).await?;
            self.io.flush().await
        };
        match tokio::time::timeout(limit, write).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(End::Close),
        }
    }

    /// `INSTREAM`: length-prefixed chunks up to a zero length, capped at `max_stream`.
    async fn instream(&mut self, sigs: &Arc<SigState>) -> Result<String, End> {
        let mut data = Vec::new();
        // Streams being received count against the clamd VM's spool cap, like guest content,
        // so many connections cannot hold `max_connections × max_stream` in memory.
        let cap = self.shared.config.load().cfg.server.per_vm_spool_cap;
        let mut held = Vec::new();
        let mut dec = ChunkDecoder::new(self.max_stream);
        loop {
            match dec.step(&self.buf) {
                Ok((Step::Data(d), used)) => {
                    data.extend_from_slice(d);
                    self.buf.drain(..used);
                }
                Ok((Step::Chunk(n), used)) => {
                    self.buf.drain(..used);
                    let Some(g) = SpoolGuard::reserve(&self.ctx.vm, u64::from(n), cap) else {
                        self.shared.metrics.clamd_refused.inc();
                        return Ok(format!(
                            "INSTREAM: the spool cap of {cap} bytes for clamd clients is in \
                             use. ERROR"
                        ));
                    };
                    held.push(g);
                }
                Ok((Step::End, used)) => {
                    self.buf.drain(..used);
                    break;
                }
                Ok((Step::NeedMore, used)) => {
                    self.buf.drain(..used);
                    if self.fill().await? == 0 {
                        return Err(End::Close);
                    }
                }
                Err(_) => {
                    self.shared.metrics.clamd_refused.inc();
                    return Ok("INSTREAM size limit exceeded. ERROR".into());
                }
            }
        }
        // The pipeline reserves the content again when it takes it.
        drop(held);
        let size = data.len() as u64;
        let outcome = scan(
            &self.ctx,
            b"stream".to_vec(),
            size,
            Content::Inline(data),
            None,
            FileIdentity::None,
            sigs,
        )
        .await;
        Ok(first_line("stream", &outcome))
    }

    /// `FILDES`: a descriptor passed with `SCM_RIGHTS` along with at least one byte.
    async fn fildes(&mut self, sigs: &Arc<SigState>) -> Result<String, End> {
        let Some(queue) = self.fds.clone() else {
            return Ok("FILDES: file descriptor passing needs the unix socket. ERROR".into());
        };
        let fd = loop {
            match super::fdpass::take(&queue) {
                Ok(Some(fd)) => break fd,
                Ok(None) => {
                    if self.fill().await? == 0 {
                        return Err(End::Close);
                    }
                }
                Err(_) => return Err(End::Close),
            }
        };
        // The byte the descriptor came with is not part of the next command.
        if self.buf.first() == Some(&0) {
            self.buf.remove(0);
        }
        let label = format!("fd[{}]", std::os::fd::AsRawFd::as_raw_fd(&fd));
        let file = std::fs::File::from(fd);
        let meta = match file.metadata() {
            Ok(m) if m.is_file() => m,
            Ok(_) => return Ok(format!("{label}: Not a regular file. ERROR")),
            Err(e) => return Ok(format!("{label}: {e}. ERROR")),
        };
        let outcome = scan(
            &self.ctx,
            label.clone().into_bytes(),
            meta.len(),
            Content::Fd,
            Some(file),
            FileIdentity::posix(&meta),
            sigs,
        )
        .await;
        Ok(first_line(&label, &outcome))
    }

    /// `SCAN`, `CONTSCAN`, `MULTISCAN`, `ALLMATCHSCAN` of a file or a directory tree.
    async fn scan_path(&mut self, mode: ScanMode, path: &str, sigs: &Arc<SigState>) -> Vec<String> {
        let root = PathBuf::from(path);
        let meta = match std::fs::symlink_metadata(&root) {
            Ok(m) => m,
            Err(e) => {
                return vec![format!(
                    "{path}: File path check failure: {}. ERROR",
                    os_error_text(&e)
                )]
            }
        };
        let files = if meta.is_dir() {
            let r = root.clone();
            tokio::task::spawn_blocking(move || walk(&r))
                .await
                .unwrap_or_default()
        } else {
            vec![root.clone()]
        };
        // ALLMATCHSCAN reports every match of the first infected file, like clamd.
        let stop_at_first = matches!(mode, ScanMode::Scan | ScanMode::AllMatchScan);
        let all = mode == ScanMode::AllMatchScan;
        let parallel = if mode == ScanMode::MultiScan {
            MULTISCAN_PARALLEL
        } else {
            1
        };
        let mut lines = Vec::new();
        let mut found = false;
        let mut errors = false;
        for batch in files.chunks(parallel) {
            let mut tasks = tokio::task::JoinSet::new();
            for (i, f) in batch.iter().enumerate() {
                let (ctx, f, sigs) = (self.ctx.clone(), f.clone(), sigs.clone());
                tasks.spawn(async move { (i, scan_file(&ctx, &f, &sigs).await) });
            }
            let mut results: Vec<Option<Arc<Outcome>>> = vec![None; batch.len()];
            while let Some(r) = tasks.join_next().await {
                if let Ok((i, o)) = r {
                    if let Some(slot) = results.get_mut(i) {
                        *slot = Some(o);
                    }
                }
            }
            for (f, outcome) in batch.iter().zip(results) {
                let label = f.display().to_string();
                let outcome = outcome
                    .unwrap_or_else(|| Arc::new(Outcome::Error("the scan task failed".into())));
                match &*outcome {
                    Outcome::Clean => {}
                    Outcome::Infected(names) => {
                        found = true;
                        let shown = if all { names.len() } else { 1 };
                        lines.extend(
                            names
                                .iter()
                                .take(shown)
                                .map(|n| format!("{label}: {n} FOUND")),
                        );
                    }
                    Outcome::Unscanned(r) | Outcome::Error(r) => {
                        errors = true;
                        lines.push(format!("{label}: {r}. ERROR"));
                    }
                }
            }
            if found && stop_at_first {
                break;
            }
        }
        if !found && !errors {
            lines.push(format!("{path}: OK"));
        }
        lines
    }

    fn stats(&self) -> String {
        let s = &self.shared;
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        format!(
            "POOLS: 1\n\nSTATE: VALID PRIMARY\nTHREADS: live {workers}  idle 0 max {workers} idle-timeout 30\n\
             QUEUE: {} items\n\nMEMSTATS: heap N/A mmap N/A used N/A free N/A releasable N/A pools 1 \
             pools_used N/A pools_total N/A\nEND",
            s.sched.depth()
        )
    }
}

/// Scan one file of a `SCAN`-like command.
async fn scan_file(ctx: &EventCtx, f: &Path, sigs: &Arc<SigState>) -> Arc<Outcome> {
    let opened = std::fs::File::open(f).and_then(|file| {
        let m = file.metadata()?;
        Ok((file, m))
    });
    let (file, meta) = match opened {
        Ok(x) => x,
        Err(e) => {
            return Arc::new(Outcome::Error(format!(
                "Can't open file or directory: {}",
                os_error_text(&e)
            )))
        }
    };
    let path = f.as_os_str().as_encoded_bytes().to_vec();
    let id = FileIdentity::posix(&meta);
    scan(ctx, path, meta.len(), Content::Fd, Some(file), id, sigs).await
}

/// One object through the pipeline, as an open event of the clamd VM.
async fn scan(
    ctx: &EventCtx,
    path: Vec<u8>,
    size: u64,
    content: Content,
    fd: Option<std::fs::File>,
    identity: FileIdentity,
    sigs: &Arc<SigState>,
) -> Arc<Outcome> {
    ctx.shared.metrics.clamd_requests.inc();
    let ev = FileEvent {
        request_id: NEXT_REQUEST.fetch_add(1, Ordering::Relaxed),
        op: FileOp::Open,
        deadline_ms: 0,
        identity,
        size,
        path,
        content,
    };
    let group = ctx.shared.config.load().group_of(&ctx.vm.name);
    scan_request(ctx, ev, fd, &group, sigs).await
}

/// Request ids of clamd scans (they only label audit records and metrics).
static NEXT_REQUEST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// `SCAN`-style one-line reply for a single object.
fn first_line(label: &str, o: &Outcome) -> String {
    match o {
        Outcome::Clean => format!("{label}: OK"),
        Outcome::Infected(names) => format!(
            "{label}: {} FOUND",
            names.first().map_or("Unknown", String::as_str)
        ),
        Outcome::Unscanned(r) | Outcome::Error(r) => format!("{label}: {r}. ERROR"),
    }
}

/// `svm <version>/<set version>/<loaded at>`.
fn version(sigs: &SigState) -> String {
    format!(
        "svm {}/{}/{}",
        env!("CARGO_PKG_VERSION"),
        sigs.version,
        sigs.loaded_at
    )
}

/// clamd's wording of an OS error: the `strerror` text without Rust's " (os error N)".
fn os_error_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s.get(..i).unwrap_or(&s).to_owned(),
        None => s,
    }
}

/// The regular files under `dir`, sorted, not following symbolic links (clamd's defaults),
/// at most [`MAX_WALK`].
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut entries: Vec<_> = rd.flatten().collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.file_name()));
        for e in entries {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() && out.len() < MAX_WALK {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// `RELOAD`: the persisted bundle, verified again, through the update path (a bundle of the
/// version in use is a replay and changes nothing).
fn reload(shared: &Shared) {
    let cfg = shared.config.load().cfg.update.clone();
    let Some(dir) = &cfg.state_dir else {
        eprintln!("svm serve: RELOAD: no [update] state_dir, nothing to reload");
        return;
    };
    let path = dir.join(super::update::CURRENT);
    match std::fs::read(&path) {
        Ok(bytes) => {
            // The bundle in use already: nothing to do (not an audited replay).
            let current = shared.sigs.load().version;
            if signatures::bundle::inspect(&bytes).is_ok_and(|(m, _)| m.set_version == current) {
                return;
            }
            let _ = super::update::accept(shared, &bytes, false, "clamd-reload");
        }
        Err(e) => eprintln!("svm serve: RELOAD: {}: {e}", path.display()),
    }
}
