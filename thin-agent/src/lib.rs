//! `svm-agent`: the Linux thin agent. It carries no engine and no signatures. It takes
//! fanotify permission events on the marked mounts, asks the security VM over the svm
//! protocol (`hypervisor_api::proto`), serves the SVM's `READ_REQ`s from the event's file
//! descriptor, and answers the kernel `FAN_ALLOW` or `FAN_DENY` before its deadline.
//!
//! ```no_run
//! use thin_agent::{Agent, AgentConfig, Endpoint, Fallback};
//! let cfg = AgentConfig {
//!     endpoint: "virtio:/dev/virtio-ports/org.svm.agent".parse().unwrap(),
//!     mounts: vec!["/srv/share".into()],
//!     open_perm: true,
//!     deadline_ms: 2000,
//!     fallback: Fallback::Allow,
//!     notify_close_write: true,
//! };
//! Agent::new(cfg).run().unwrap();
//! ```
//!
//! One thread runs one `poll(2)` loop over the fanotify descriptor, the SVM channel and a
//! signalfd. Events are pipelined: up to [`MAX_IN_FLIGHT`] wait for verdicts at once, each
//! against its own deadline, counted from the moment the agent read it from the kernel.
//!
//! # Current limitations
//! - vsock is implemented but untested here (this machine has no vhost-vsock or
//!   vsock loopback).
//! - Logs go to stderr (journald picks them up under systemd); there is no syslog socket
//!   writer.
//! - The configuration is the command line; there is no config file.

#![forbid(unsafe_code)]

mod transport;

pub use transport::Endpoint;

use anyhow::{bail, Context, Result};
use hypervisor_api::proto::{
    self, caps, Content, FileEvent, FileIdentity, FileOp, Hello, Message, OsKind, PolicyAction,
    ReadData, ReadStatus, Welcome, WireAction, WireStatus,
};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::fanotify::{
    EventFFlags, Fanotify, FanotifyEvent, FanotifyResponse, InitFlags, MarkFlags, MaskFlags,
    Response,
};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use transport::{Backoff, Conn};

/// Events waiting for a verdict at once (the SVM's default per-connection limit).
pub const MAX_IN_FLIGHT: usize = 64;
/// Events held by the agent at once (in flight or queued); the rest wait in the kernel.
const MAX_HELD: usize = 512;
/// Clean verdicts remembered: 7/8 of 32,768 buckets, so the table never grows past them
/// (about 1.9 MB; see the test `the_clean_cache_fits_the_rss_budget`). When full it is
/// cleared; the SVM's own identity cache answers the next opens in one round trip.
const CLEAN_CACHE_ENTRIES: usize = 32_768 / 8 * 7;
/// How long a file stays readable for the SVM after its verdict or notification.
const LINGER: Duration = Duration::from_secs(30);
/// Files kept readable for late `READ_REQ`s at once.
const MAX_LINGER: usize = 256;
/// The longest a (re)connection may take.
const CONNECT_BOUND: Duration = Duration::from_secs(1);

/// What to do when no verdict comes and no SVM has said otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Fail open.
    Allow,
    /// Fail closed.
    Deny,
}

/// The agent's configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Where the SVM is.
    pub endpoint: Endpoint,
    /// Mounts to mark (never `/`).
    pub mounts: Vec<PathBuf>,
    /// Also ask on plain opens, not only on exec.
    pub open_perm: bool,
    /// The longest a guest process waits, in ms.
    pub deadline_ms: u32,
    /// The policy before any SVM was seen.
    pub fallback: Fallback,
    /// Send `close_write` notifications so the SVM scans written files in the background.
    pub notify_close_write: bool,
}

/// Counters, printed on SIGUSR1 and at exit.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Permission events answered.
    pub events: u64,
    /// Answered allow.
    pub allowed: u64,
    /// Answered deny.
    pub denied: u64,
    /// Answered from the local clean cache.
    pub cache_hits: u64,
    /// Answered by a fallback policy (no SVM, timeout, error).
    pub fallbacks: u64,
    /// `close_write` notifications sent.
    pub close_writes: u64,
    /// Sessions opened.
    pub connects: u64,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "events={} allowed={} denied={} cache_hits={} fallbacks={} close_writes={} connects={}",
            self.events,
            self.allowed,
            self.denied,
            self.cache_hits,
            self.fallbacks,
            self.close_writes,
            self.connects
        )
    }
}

/// A session with the SVM.
#[derive(Debug)]
struct Session {
    conn: Conn,
    welcome: Welcome,
    /// The current cache epoch (from WELCOME, then from VERDICTs and INVALIDATEs).
    epoch: u64,
}

/// A permission event the agent holds.
#[derive(Debug)]
struct Held {
    ev: FanotifyEvent,
    file: std::fs::File,
    identity: FileIdentity,
    size: u64,
    op: FileOp,
    deadline: Instant,
}

/// The agent.
#[derive(Debug)]
pub struct Agent {
    cfg: AgentConfig,
    /// identity → the cache epoch its clean verdict belongs to.
    clean: HashMap<FileIdentity, u64>,
    /// The last policy the SVM announced: (on_timeout, on_error).
    announced: Option<(PolicyAction, PolicyAction)>,
    next_id: u64,
    session: Option<Session>,
    backoff: Backoff,
    /// Read from the kernel, not yet sent.
    queue: VecDeque<Held>,
    /// Sent, waiting for a verdict.
    in_flight: HashMap<u64, Held>,
    /// Answered (or notifications), still readable for the SVM until the instant.
    linger: HashMap<u64, (std::fs::File, Instant)>,
    stats: Stats,
    /// When the last fallback log line was written, and the fallback count then.
    logged: Option<(Instant, u64)>,
}

/// The event's file as a `File` (a duplicate of the event's descriptor).
fn file_of(fd: BorrowedFd<'_>) -> Option<std::fs::File> {
    fd.try_clone_to_owned().ok().map(std::fs::File::from)
}

/// The identity and size of a regular file; `Ok(None)` for anything else.
fn identity_of(f: &std::fs::File) -> std::io::Result<Option<(FileIdentity, u64)>> {
    let m = f.metadata()?;
    Ok(m.is_file().then(|| (FileIdentity::posix(&m), m.len())))
}

fn path_of(fd: BorrowedFd<'_>) -> Vec<u8> {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|p| p.into_os_string().into_encoded_bytes())
        .unwrap_or_default()
}

/// Why a fallback policy answered an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// No SVM session.
    NoSvm,
    /// The deadline passed.
    Timeout,
    /// The SVM or the file failed.
    Error,
}

fn is_root_mount(p: &std::path::Path) -> bool {
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf()) == std::path::Path::new("/")
}

impl Agent {
    /// An agent.
    pub fn new(cfg: AgentConfig) -> Self {
        Agent {
            cfg,
            clean: HashMap::new(),
            announced: None,
            next_id: 1,
            session: None,
            backoff: Backoff::new(),
            queue: VecDeque::new(),
            in_flight: HashMap::new(),
            linger: HashMap::new(),
            stats: Stats::default(),
            logged: None,
        }
    }

    /// Mark the mounts and serve events until SIGTERM or SIGINT.
    pub fn run(mut self) -> Result<()> {
        for m in &self.cfg.mounts {
            if is_root_mount(m) {
                bail!("refusing to mark /: mark a dedicated mount");
            }
            // Its own channel must never sit on a mount it marks.
            if let Endpoint::Unix(s) = &self.cfg.endpoint {
                let m = m.canonicalize().unwrap_or_else(|_| m.clone());
                let s = s
                    .parent()
                    .and_then(|d| d.canonicalize().ok())
                    .unwrap_or_else(|| s.clone());
                if s.starts_with(&m) {
                    bail!(
                        "the SVM socket {} is inside the marked mount {}: put it elsewhere",
                        s.display(),
                        m.display()
                    );
                }
            }
        }
        raise_nofile();
        let mut sigs = SigSet::empty();
        for s in [Signal::SIGUSR1, Signal::SIGTERM, Signal::SIGINT] {
            sigs.add(s);
        }
        sigs.thread_block().context("blocking signals")?;
        let sfd = SignalFd::with_flags(&sigs, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .context("signalfd")?;
        let fan = Fanotify::init(
            InitFlags::FAN_CLASS_CONTENT | InitFlags::FAN_CLOEXEC | InitFlags::FAN_NONBLOCK,
            EventFFlags::O_RDONLY | EventFFlags::O_LARGEFILE | EventFFlags::O_CLOEXEC,
        )
        .context("fanotify_init (needs root)")?;
        let mut mask = MaskFlags::FAN_OPEN_EXEC_PERM | MaskFlags::FAN_CLOSE_WRITE;
        if self.cfg.open_perm {
            mask |= MaskFlags::FAN_OPEN_PERM;
        }
        for m in &self.cfg.mounts {
            fan.mark(
                MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_MOUNT,
                mask,
                None,
                Some(m.as_path()),
            )
            .with_context(|| format!("fanotify_mark {}", m.display()))?;
        }
        self.reconnect(Instant::now() + CONNECT_BOUND);
        eprintln!(
            "svm-agent: ready: marks={:?} svm={} ({})",
            self.cfg.mounts,
            self.cfg.endpoint,
            if self.session.is_some() {
                "connected"
            } else {
                "not connected"
            }
        );
        let me = i32::try_from(std::process::id()).unwrap_or(-1);
        loop {
            self.expire(&fan);
            if self.session.is_none() && self.backoff.due() {
                self.reconnect(Instant::now() + CONNECT_BOUND);
            }
            self.pump(&fan);
            let held = self.queue.len() + self.in_flight.len();
            let wake = self.next_wake();
            let timeout = wake.map_or(PollTimeout::from(1000u16), |t| {
                let ms = t.saturating_duration_since(Instant::now()).as_millis() + 1;
                PollTimeout::from(u16::try_from(ms.min(1000)).unwrap_or(1000))
            });
            let (fan_ready, sig_ready, conn_ready) = {
                let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
                if held < MAX_HELD {
                    fds.push(PollFd::new(fan.as_fd(), PollFlags::POLLIN));
                }
                let conn_at = fds.len();
                if let Some(s) = &self.session {
                    fds.push(PollFd::new(s.conn.fd(), PollFlags::POLLIN));
                }
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => bail!("poll: {e}"),
                }
                let ready = |i: usize| {
                    fds.get(i)
                        .and_then(|p| p.revents())
                        .is_some_and(|r| !r.is_empty())
                };
                (
                    held < MAX_HELD && ready(1),
                    ready(0),
                    self.session.is_some() && ready(conn_at),
                )
            };
            if sig_ready {
                while let Ok(Some(si)) = sfd.read_signal() {
                    if si.ssi_signo == Signal::SIGUSR1 as u32 {
                        eprintln!("svm-agent: stats: {}", self.stats);
                    } else {
                        eprintln!("svm-agent: stopping: {}", self.stats);
                        return Ok(());
                    }
                }
            }
            if conn_ready {
                self.on_channel(&fan);
            }
            if fan_ready {
                match fan.read_events() {
                    Ok(events) => {
                        for ev in events {
                            self.on_event(&fan, ev, me);
                        }
                    }
                    Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                    Err(e) => bail!("reading fanotify events: {e}"),
                }
            }
        }
    }

    /// The earliest instant the loop must act without I/O.
    fn next_wake(&self) -> Option<Instant> {
        let held = self.queue.iter().chain(self.in_flight.values());
        let lingering = self.linger.values().map(|(_, t)| *t);
        let retry = self.session.is_none().then(|| self.backoff.at()).flatten();
        held.map(|h| h.deadline).chain(lingering).chain(retry).min()
    }

    /// Open a session, bounded by `deadline`.
    fn reconnect(&mut self, deadline: Instant) {
        match self.handshake(deadline) {
            Ok(s) => {
                self.announced = Some((s.welcome.on_timeout, s.welcome.on_error));
                if self.stats.connects > 0 {
                    eprintln!("svm-agent: reconnected to {}", self.cfg.endpoint);
                }
                self.stats.connects += 1;
                self.session = Some(s);
                self.backoff.reset();
            }
            Err(_) => self.backoff.failed(),
        }
    }

    fn handshake(&self, deadline: Instant) -> Result<Session> {
        let mut conn = Conn::open(&self.cfg.endpoint, deadline)?;
        conn.send(
            &Message::Hello(Hello {
                proto_version: u16::from(proto::VERSION),
                os: OsKind::Linux,
                os_detail: "linux".into(),
                agent_version: concat!("svm-agent/", env!("CARGO_PKG_VERSION")).into(),
                capabilities: caps::READ | caps::INLINE | caps::INVALIDATE,
                vm_name: String::new(),
            }),
            deadline,
        )?;
        loop {
            match conn.recv(deadline)? {
                Message::Welcome(w) => {
                    conn.set_max_payload(w.max_payload);
                    let epoch = w.cache_epoch;
                    return Ok(Session {
                        conn,
                        welcome: w,
                        epoch,
                    });
                }
                Message::Error(e) => bail!("the SVM refused: {:?}: {}", e.code, e.message),
                // Left over from an earlier session on a virtio port: skip.
                _ => continue,
            }
        }
    }

    /// Drop the session; everything waiting on it gets the error policy.
    fn drop_session(&mut self, fan: &Fanotify, why: &anyhow::Error) {
        if self.session.take().is_none() {
            return;
        }
        eprintln!("svm-agent: lost the SVM: {why:#}");
        self.backoff.failed();
        let held: Vec<Held> = self
            .in_flight
            .drain()
            .map(|(_, h)| h)
            .chain(self.queue.drain(..))
            .collect();
        for h in held {
            self.fall_back(fan, &h.ev, Why::Error, why);
        }
        self.linger.clear();
    }

    fn allowed_by(&self, why: Why) -> bool {
        match (self.announced, why) {
            (Some((t, _)), Why::Timeout) => t == PolicyAction::Allow,
            (Some((_, e)), Why::Error | Why::NoSvm) => e == PolicyAction::Allow,
            (None, _) => self.cfg.fallback == Fallback::Allow,
        }
    }

    /// Answer by policy, count it, and log at most one line a second about it.
    fn fall_back(
        &mut self,
        fan: &Fanotify,
        ev: &FanotifyEvent,
        why: Why,
        detail: &dyn std::fmt::Display,
    ) {
        self.stats.fallbacks += 1;
        let allow = self.allowed_by(why);
        self.answer(fan, ev, allow);
        let due = self
            .logged
            .is_none_or(|(t, _)| t.elapsed() >= Duration::from_secs(1));
        if due {
            let since = self.stats.fallbacks - self.logged.map_or(0, |(_, n)| n);
            eprintln!(
                "svm-agent: no verdict ({why:?}: {detail:#}); fallback {} ({since} since the last line, {} in all)",
                if allow { "allow" } else { "deny" },
                self.stats.fallbacks
            );
            self.logged = Some((Instant::now(), self.stats.fallbacks));
        }
    }

    fn answer(&mut self, fan: &Fanotify, ev: &FanotifyEvent, allow: bool) {
        let Some(fd) = ev.fd() else { return };
        self.stats.events += 1;
        let r = if allow {
            self.stats.allowed += 1;
            Response::FAN_ALLOW
        } else {
            self.stats.denied += 1;
            Response::FAN_DENY
        };
        if let Err(e) = fan.write_response(FanotifyResponse::new(fd, r)) {
            eprintln!("svm-agent: answering the kernel failed: {e}");
        }
    }

    fn on_event(&mut self, fan: &Fanotify, ev: FanotifyEvent, me: i32) {
        let Some(fd) = ev.fd() else {
            eprintln!("svm-agent: the kernel's event queue overflowed");
            return;
        };
        let m = ev.mask();
        let perm = m.intersects(MaskFlags::FAN_OPEN_PERM | MaskFlags::FAN_OPEN_EXEC_PERM);
        if ev.pid() == me {
            if perm {
                self.answer(fan, &ev, true);
            }
            return;
        }
        let file = file_of(fd);
        let id = file.as_ref().map(identity_of);
        if m.contains(MaskFlags::FAN_CLOSE_WRITE) {
            if let (Some(f), Some(Ok(Some((identity, size))))) = (&file, &id) {
                self.clean.remove(identity);
                if let Ok(f) = f.try_clone() {
                    self.notify_close_write(fan, f, *identity, *size, path_of(fd));
                }
            }
        }
        if !perm {
            return;
        }
        let (file, identity, size) = match (file, id) {
            (Some(f), Some(Ok(Some((i, s))))) => (f, i, s),
            (Some(_), Some(Ok(None))) => return self.answer(fan, &ev, true), // not a regular file
            (_, Some(Err(e))) => return self.fall_back(fan, &ev, Why::Error, &e),
            _ => return self.fall_back(fan, &ev, Why::Error, &"cannot use the event's fd"),
        };
        if self.session.is_none() && self.backoff.due() {
            self.reconnect(Instant::now() + CONNECT_BOUND);
        }
        let Some(s) = &self.session else {
            return self.fall_back(fan, &ev, Why::NoSvm, &self.cfg.endpoint.clone());
        };
        if self.clean.get(&identity) == Some(&s.epoch) {
            self.stats.cache_hits += 1;
            return self.answer(fan, &ev, true);
        }
        let ms = match s.welcome.deadline_ms {
            0 => self.cfg.deadline_ms,
            d => d.min(self.cfg.deadline_ms),
        };
        let op = if m.contains(MaskFlags::FAN_OPEN_EXEC_PERM) {
            FileOp::Exec
        } else {
            FileOp::Open
        };
        self.queue.push_back(Held {
            ev,
            file,
            identity,
            size,
            op,
            deadline: Instant::now() + Duration::from_millis(u64::from(ms)),
        });
    }

    /// Tell the SVM a file was written; it scans it in the background. No answer is awaited.
    fn notify_close_write(
        &mut self,
        fan: &Fanotify,
        file: std::fs::File,
        identity: FileIdentity,
        size: u64,
        path: Vec<u8>,
    ) {
        if !self.cfg.notify_close_write || self.in_flight.len() >= MAX_IN_FLIGHT {
            return;
        }
        let Some(s) = &mut self.session else { return };
        let Ok((content, size)) = proto::file_content(&file, size, s.welcome.max_inline) else {
            return;
        };
        let pulled = content == Content::Read;
        if pulled && self.linger.len() >= MAX_LINGER {
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let r = s.conn.send(
            &Message::FileEvent(FileEvent {
                request_id: id,
                op: FileOp::CloseWrite,
                deadline_ms: 0,
                identity,
                size,
                path,
                content,
            }),
            Instant::now() + CONNECT_BOUND,
        );
        match r {
            Ok(()) => {
                self.stats.close_writes += 1;
                if pulled {
                    self.linger.insert(id, (file, Instant::now() + LINGER));
                }
            }
            Err(e) => self.drop_session(fan, &e),
        }
    }

    /// Send queued events while there is room.
    fn pump(&mut self, fan: &Fanotify) {
        while self.in_flight.len() < MAX_IN_FLIGHT {
            let Some(h) = self.queue.pop_front() else {
                return;
            };
            let Some(s) = &mut self.session else {
                self.fall_back(fan, &h.ev, Why::NoSvm, &"no session");
                continue;
            };
            let now = Instant::now();
            if h.deadline <= now {
                self.fall_back(fan, &h.ev, Why::Timeout, &"queued past the deadline");
                continue;
            }
            let (content, size) = match proto::file_content(&h.file, h.size, s.welcome.max_inline) {
                Ok(c) => c,
                Err(e) => {
                    self.fall_back(fan, &h.ev, Why::Error, &e);
                    continue;
                }
            };
            let id = self.next_id;
            self.next_id += 1;
            let left = h.deadline.saturating_duration_since(now).as_millis();
            let msg = Message::FileEvent(FileEvent {
                request_id: id,
                op: h.op,
                deadline_ms: u32::try_from(left).unwrap_or(u32::MAX).max(1),
                identity: h.identity,
                size,
                path: h.ev.fd().map(path_of).unwrap_or_default(),
                content,
            });
            let deadline = h.deadline;
            self.in_flight.insert(id, h);
            if let Err(e) = s.conn.send(&msg, deadline) {
                self.drop_session(fan, &e);
                return;
            }
        }
    }

    /// Apply the timeout policy to events past their deadline; forget old lingering files.
    fn expire(&mut self, fan: &Fanotify) {
        let now = Instant::now();
        let late: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, h)| h.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            if let Some(h) = self.in_flight.remove(&id) {
                self.fall_back(fan, &h.ev, Why::Timeout, &"the SVM did not answer in time");
                // The SVM may still be reading it.
                self.linger.insert(id, (h.file, now + LINGER));
            }
        }
        while self.queue.front().is_some_and(|h| h.deadline <= now) {
            if let Some(h) = self.queue.pop_front() {
                self.fall_back(fan, &h.ev, Why::Timeout, &"queued past the deadline");
            }
        }
        self.linger.retain(|_, (_, t)| *t > now);
        while self.linger.len() > MAX_LINGER {
            let oldest = self
                .linger
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(id, _)| *id);
            match oldest {
                Some(id) => self.linger.remove(&id),
                None => break,
            };
        }
    }

    /// Read and handle everything the SVM sent.
    fn on_channel(&mut self, fan: &Fanotify) {
        let Some(s) = &mut self.session else { return };
        if let Err(e) = s.conn.fill() {
            return self.drop_session(fan, &e);
        }
        loop {
            let Some(s) = &mut self.session else { return };
            let m = match s.conn.next() {
                Ok(Some(m)) => m,
                Ok(None) => return,
                Err(e) => return self.drop_session(fan, &e),
            };
            if let Err(e) = self.on_message(fan, m) {
                return self.drop_session(fan, &e);
            }
        }
    }

    fn on_message(&mut self, fan: &Fanotify, m: Message) -> Result<()> {
        let reply_by = Instant::now() + CONNECT_BOUND;
        match m {
            Message::Verdict(v) => {
                let Some(h) = self.in_flight.remove(&v.request_id) else {
                    return Ok(()); // answered by the deadline policy already
                };
                if let Some(s) = &mut self.session {
                    s.epoch = v.cache_epoch;
                }
                self.answer(fan, &h.ev, v.action == WireAction::Allow);
                match &v.status {
                    WireStatus::Clean => {
                        if self.clean.len() >= CLEAN_CACHE_ENTRIES {
                            self.clean.clear();
                        }
                        self.clean.insert(h.identity, v.cache_epoch);
                    }
                    // Answered at the SVM's deadline: it may go on reading.
                    WireStatus::Unscanned(_) => {
                        self.linger
                            .insert(v.request_id, (h.file, Instant::now() + LINGER));
                    }
                    WireStatus::Infected(_) => {}
                }
            }
            Message::ReadReq(r) => {
                let file = self
                    .in_flight
                    .get(&r.request_id)
                    .map(|h| &h.file)
                    .or_else(|| self.linger.get(&r.request_id).map(|(f, _)| f));
                let d = match (file, &self.session) {
                    (Some(f), Some(s)) => proto::read_data_from(f, &r, s.welcome.max_read_chunk),
                    _ => ReadData {
                        request_id: r.request_id,
                        offset: r.offset,
                        status: ReadStatus::Error,
                        data: b"the agent no longer holds this file".to_vec(),
                    },
                };
                if let Some(s) = &mut self.session {
                    s.conn.send(&Message::ReadData(d), reply_by)?;
                }
            }
            Message::Invalidate(i) => {
                self.clean.remove(&i.identity);
                if let Some(s) = &mut self.session {
                    s.epoch = i.cache_epoch;
                }
            }
            Message::Ping(n) => {
                if let Some(s) = &mut self.session {
                    s.conn.send(&Message::Pong(n), reply_by)?;
                }
            }
            Message::Error(e) if e.request_id != 0 => {
                self.linger.remove(&e.request_id);
                if let Some(h) = self.in_flight.remove(&e.request_id) {
                    let msg = format!("{:?}: {}", e.code, e.message);
                    self.fall_back(fan, &h.ev, Why::Error, &msg);
                }
            }
            Message::Error(e) => bail!("ERROR {:?}: {}", e.code, e.message),
            _ => {}
        }
        Ok(())
    }
}

/// Each held event carries an open descriptor: allow as many as the hard limit permits.
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent's RSS budget is 10 MiB; about 3 MiB is the binary and libc. The clean
    /// cache (a hashbrown table: one control byte per bucket, buckets a power of two at
    /// most 8/7 of the entries) must stay well under the rest.
    #[test]
    fn the_clean_cache_fits_the_rss_budget() {
        let buckets = (CLEAN_CACHE_ENTRIES * 8 / 7).next_power_of_two();
        let bytes = buckets * (std::mem::size_of::<(FileIdentity, u64)>() + 1);
        assert!(bytes <= 2 << 20, "{buckets} buckets, {bytes} bytes");
        let mut m: HashMap<FileIdentity, u64> = HashMap::new();
        for i in 0..CLEAN_CACHE_ENTRIES as u64 {
            m.insert(
                FileIdentity::Posix {
                    dev: 1,
                    ino: i,
                    size: 0,
                    mtime_ns: 0,
                    ctime_ns: 0,
                },
                0,
            );
        }
        assert!(
            m.capacity() < buckets,
            "the table grew past {buckets} buckets"
        );
    }
}
