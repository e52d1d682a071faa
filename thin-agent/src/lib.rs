//! `svm-agent`: the Linux thin agent. It carries no engine and no signatures. It takes
//! fanotify permission events on the marked mounts, asks the security VM over the svm
//! protocol (`hypervisor_api::proto`), serves the SVM's `READ_REQ`s from the event's file
//! descriptor, and answers the kernel `FAN_ALLOW` or `FAN_DENY` before its deadline.
//!
//! ```no_run
//! use thin_agent::{Agent, AgentConfig, Fallback};
//! let cfg = AgentConfig {
//!     socket: "/run/svm/svm.sock".into(),
//!     mounts: vec!["/srv/share".into()],
//!     open_perm: true,
//!     deadline_ms: 2000,
//!     fallback: Fallback::Allow,
//! };
//! Agent::new(cfg).run().unwrap();
//! ```
//!
//! # Current limitations
//! - Unix-socket transport only (virtio-serial and vsock come next).
//! - Events are handled one at a time; `close_write` only drops the local cache entry (no
//!   notification is sent to the SVM yet); `INVALIDATE` is honoured when it arrives while
//!   the agent waits for a verdict.

#![forbid(unsafe_code)]

use anyhow::{bail, Context, Result};
use hypervisor_api::proto::{
    self, caps, Content, FileEvent, FileIdentity, FileOp, Hello, Message, OsKind, PolicyAction,
    Welcome, WireAction,
};
use nix::sys::fanotify::{
    EventFFlags, Fanotify, FanotifyResponse, InitFlags, MarkFlags, MaskFlags, Response,
};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

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
    /// The SVM's unix socket.
    pub socket: PathBuf,
    /// Mounts to mark (never `/`).
    pub mounts: Vec<PathBuf>,
    /// Also ask on plain opens, not only on exec.
    pub open_perm: bool,
    /// The longest a guest process waits, in ms.
    pub deadline_ms: u32,
    /// The policy before any SVM was seen.
    pub fallback: Fallback,
}

/// A session with the SVM.
struct Session {
    s: UnixStream,
    buf: Vec<u8>,
    welcome: Welcome,
}

/// The agent.
#[derive(Debug)]
pub struct Agent {
    cfg: AgentConfig,
    /// identity → the cache epoch its clean verdict belongs to.
    clean: HashMap<FileIdentity, u64>,
    /// The last policy the SVM announced.
    announced: Option<(PolicyAction, PolicyAction)>,
    next_id: u64,
    /// Fallback verdicts applied, and when the last log line about them was written.
    fallbacks: u64,
    logged: Option<(Instant, u64)>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

/// The event's file as a `File` (a duplicate of the event's descriptor).
fn file_of(fd: BorrowedFd<'_>) -> Option<std::fs::File> {
    fd.try_clone_to_owned().ok().map(std::fs::File::from)
}

fn identity_of(f: &std::fs::File) -> Option<(FileIdentity, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = f.metadata().ok()?;
    if !m.is_file() {
        return None;
    }
    Some((
        FileIdentity::Posix {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        },
        m.size(),
    ))
}

fn pread(f: &std::fs::File, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut done = 0;
    while done < buf.len() {
        let Some(rest) = buf.get_mut(done..) else {
            break;
        };
        match f.read_at(rest, off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

impl Session {
    fn connect(path: &std::path::Path) -> Result<Session> {
        let s = UnixStream::connect(path)
            .with_context(|| format!("connecting to {}", path.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut se = Session {
            s,
            buf: Vec::new(),
            welcome: Welcome {
                session_id: 0,
                vm: String::new(),
                group: String::new(),
                max_payload: proto::DEFAULT_MAX_PAYLOAD,
                max_inline: 0,
                max_read_chunk: 0,
                deadline_ms: 0,
                on_timeout: PolicyAction::Allow,
                on_error: PolicyAction::Allow,
                cache_epoch: 0,
                sigset_version: 0,
            },
        };
        se.send(&Message::Hello(Hello {
            proto_version: u16::from(proto::VERSION),
            os: OsKind::Linux,
            os_detail: "linux".into(),
            agent_version: concat!("svm-agent/", env!("CARGO_PKG_VERSION")).into(),
            capabilities: caps::READ | caps::INLINE | caps::INVALIDATE,
            vm_name: String::new(),
        }))?;
        match se.recv(Instant::now() + Duration::from_secs(5))? {
            Message::Welcome(w) => se.welcome = w,
            Message::Error(e) => bail!("the SVM refused: {:?}: {}", e.code, e.message),
            m => bail!("expected WELCOME, got type 0x{:02x}", m.ty()),
        }
        Ok(se)
    }

    fn send(&mut self, m: &Message) -> Result<()> {
        self.s.write_all(&m.to_frame())?;
        Ok(())
    }

    /// The next message before `deadline`.
    fn recv(&mut self, deadline: Instant) -> Result<Message> {
        loop {
            if let Some((m, n)) =
                proto::decode_frame(&self.buf, self.welcome.max_payload.max(4096))?
            {
                self.buf.drain(..n);
                return Ok(m);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("deadline");
            }
            self.s.set_read_timeout(Some(left))?;
            let mut chunk = [0u8; 65536];
            let n = self.s.read(&mut chunk)?;
            if n == 0 {
                bail!("the SVM closed the connection");
            }
            self.buf
                .extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
    }
}

impl Agent {
    /// An agent.
    pub fn new(cfg: AgentConfig) -> Self {
        Agent {
            cfg,
            clean: HashMap::new(),
            announced: None,
            next_id: 1,
            fallbacks: 0,
            logged: None,
        }
    }

    /// Mark the mounts and serve events forever.
    pub fn run(mut self) -> Result<()> {
        for m in &self.cfg.mounts {
            if m == std::path::Path::new("/") {
                bail!("refusing to mark /: mark a dedicated mount");
            }
        }
        let fan = Fanotify::init(
            InitFlags::FAN_CLASS_CONTENT | InitFlags::FAN_CLOEXEC,
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
        let me = i32::try_from(std::process::id()).unwrap_or(-1);
        let mut session: Option<Session> = Session::connect(&self.cfg.socket).ok();
        if let Some(s) = &session {
            self.announced = Some((s.welcome.on_timeout, s.welcome.on_error));
        }
        eprintln!(
            "svm-agent: ready: marks={:?} svm={}",
            self.cfg.mounts,
            if session.is_some() {
                "connected"
            } else {
                "not connected"
            }
        );
        loop {
            let events = match fan.read_events() {
                Ok(e) => e,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => bail!("reading fanotify events: {e}"),
            };
            for ev in events {
                let Some(fd) = ev.fd() else { continue };
                let m = ev.mask();
                let perm = m.intersects(MaskFlags::FAN_OPEN_PERM | MaskFlags::FAN_OPEN_EXEC_PERM);
                if m.contains(MaskFlags::FAN_CLOSE_WRITE) {
                    if let Some((id, _)) = file_of(fd).as_ref().and_then(identity_of) {
                        self.clean.remove(&id);
                    }
                    // Times changed on write, so a stale entry can no longer match anyway.
                }
                if !perm {
                    continue;
                }
                let allow = if ev.pid() == me {
                    true
                } else {
                    let op = if m.contains(MaskFlags::FAN_OPEN_EXEC_PERM) {
                        FileOp::Exec
                    } else {
                        FileOp::Open
                    };
                    self.decide(&mut session, fd, op)
                };
                let r = if allow {
                    Response::FAN_ALLOW
                } else {
                    Response::FAN_DENY
                };
                if let Err(e) = fan.write_response(FanotifyResponse::new(fd, r)) {
                    eprintln!("svm-agent: answering the kernel failed: {e}");
                }
            }
        }
    }

    fn fallback(&self, on_error: bool) -> bool {
        match self.announced {
            Some((t, e)) => (if on_error { e } else { t }) == PolicyAction::Allow,
            None => self.cfg.fallback == Fallback::Allow,
        }
    }

    /// Allow or deny one access, within the deadline whatever happens.
    fn decide(&mut self, session: &mut Option<Session>, fd: BorrowedFd<'_>, op: FileOp) -> bool {
        let Some(file) = file_of(fd) else {
            return self.fallback(true);
        };
        let Some((identity, size)) = identity_of(&file) else {
            return true; // not a regular file
        };
        let start = Instant::now();
        if session.is_none() {
            *session = Session::connect(&self.cfg.socket).ok();
        }
        let Some(s) = session.as_mut() else {
            return self.fallback(false);
        };
        self.announced = Some((s.welcome.on_timeout, s.welcome.on_error));
        let epoch = s.welcome.cache_epoch;
        if self.clean.get(&identity) == Some(&epoch) {
            return true;
        }
        let ms = match s.welcome.deadline_ms {
            0 => self.cfg.deadline_ms,
            d => d.min(self.cfg.deadline_ms),
        };
        let deadline = start + Duration::from_millis(u64::from(ms));
        let id = self.next_id;
        self.next_id += 1;
        let path = std::fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&fd)
        ))
        .map(|p| p.into_os_string().into_encoded_bytes())
        .unwrap_or_default();
        match ask(
            s,
            &mut self.clean,
            &file,
            id,
            op,
            identity,
            size,
            path,
            ms,
            deadline,
        ) {
            Ok((action, clean, verdict_epoch)) => {
                if clean && verdict_epoch == epoch {
                    self.clean.insert(identity, epoch);
                }
                action == WireAction::Allow
            }
            Err(e) => {
                // The session may hold a half-answered request: start a new one next time.
                *session = None;
                let timed_out = Instant::now() >= deadline;
                self.fallbacks += 1;
                // A flood of events against a dead SVM logs one line per second at most.
                let due = self
                    .logged
                    .is_none_or(|(t, _)| t.elapsed() >= Duration::from_secs(1));
                if due {
                    let since = self.fallbacks - self.logged.map_or(0, |(_, n)| n);
                    eprintln!(
                        "svm-agent: no verdict ({e:#}); fallback policy applied ({since} since the last line, {} in all)",
                        self.fallbacks
                    );
                    self.logged = Some((Instant::now(), self.fallbacks));
                }
                self.fallback(!timed_out)
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn ask(
    s: &mut Session,
    clean: &mut HashMap<FileIdentity, u64>,
    fd: &std::fs::File,
    id: u64,
    op: FileOp,
    identity: FileIdentity,
    size: u64,
    path: Vec<u8>,
    ms: u32,
    deadline: Instant,
) -> Result<(WireAction, bool, u64)> {
    let content = if size <= u64::from(s.welcome.max_inline) {
        let mut data = vec![0u8; size as usize];
        let n = pread(fd, &mut data, 0)?;
        data.truncate(n);
        Content::Inline(data)
    } else {
        Content::Read
    };
    let size = match &content {
        Content::Inline(d) => d.len() as u64,
        _ => size,
    };
    s.send(&Message::FileEvent(FileEvent {
        request_id: id,
        op,
        deadline_ms: ms,
        identity,
        size,
        path,
        content,
    }))?;
    loop {
        match s.recv(deadline)? {
            Message::ReadReq(r) if r.request_id == id => {
                let d = proto::read_data_from(fd, &r, s.welcome.max_read_chunk);
                s.send(&Message::ReadData(d))?;
            }
            Message::Verdict(v) if v.request_id == id => {
                let clean = matches!(v.status, proto::WireStatus::Clean);
                return Ok((v.action, clean, v.cache_epoch));
            }
            Message::Ping(n) => s.send(&Message::Pong(n))?,
            // The SVM found this file infected after a write: forget its clean verdict.
            Message::Invalidate(i) => {
                clean.remove(&i.identity);
            }
            Message::Error(e) => bail!("ERROR {:?}: {}", e.code, e.message),
            _ => {}
        }
    }
}
