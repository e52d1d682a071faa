//! The agent's channel to the SVM: a unix socket, a QEMU virtio-serial port or vsock.
//!
//! All three are byte streams carrying the same frames. The descriptor is non-blocking and
//! every wait goes through `poll(2)` with a deadline, so a dead or absent SVM can never hold
//! a guest process longer than its deadline. A virtio-serial port whose host side is not
//! connected reports `POLLHUP` and reads EOF; that is treated as "no SVM".

use anyhow::{bail, Context, Result};
use hypervisor_api::proto::{self, Message};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where the SVM is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A unix stream socket (same host, container).
    Unix(PathBuf),
    /// A virtio-serial port, e.g. `/dev/virtio-ports/org.svm.agent` (QEMU guests).
    VirtioPort(PathBuf),
    /// AF_VSOCK: the host is CID 2.
    Vsock {
        /// The SVM's context id.
        cid: u32,
        /// Its port.
        port: u32,
    },
}

impl std::str::FromStr for Endpoint {
    type Err = String;

    /// `unix:PATH`, `virtio:PATH`, `vsock:CID:PORT`, or a bare path (a unix socket).
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            Ok(Endpoint::Unix(p.into()))
        } else if let Some(p) = s.strip_prefix("virtio:") {
            Ok(Endpoint::VirtioPort(p.into()))
        } else if let Some(rest) = s.strip_prefix("vsock:") {
            let (cid, port) = rest
                .split_once(':')
                .ok_or_else(|| format!("expected vsock:CID:PORT, got {s:?}"))?;
            let num = |v: &str| {
                v.parse::<u32>()
                    .map_err(|e| format!("bad number {v:?} in {s:?}: {e}"))
            };
            Ok(Endpoint::Vsock {
                cid: num(cid)?,
                port: num(port)?,
            })
        } else if s.is_empty() {
            Err("empty endpoint".into())
        } else {
            Ok(Endpoint::Unix(s.into()))
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::VirtioPort(p) => write!(f, "virtio:{}", p.display()),
            Endpoint::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
        }
    }
}

/// A framed, non-blocking connection.
pub(crate) struct Conn {
    io: std::fs::File,
    buf: Vec<u8>,
    max_payload: u32,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").finish_non_exhaustive()
    }
}

/// Milliseconds left until `deadline`, as a poll timeout.
fn left(deadline: Instant) -> PollTimeout {
    let ms = deadline
        .saturating_duration_since(Instant::now())
        .as_millis()
        .saturating_add(1);
    PollTimeout::try_from(ms.min(60_000) as u32).unwrap_or(PollTimeout::MAX)
}

/// Wait until `fd` is ready for `what` or `deadline` passes.
fn wait(fd: BorrowedFd<'_>, what: PollFlags, deadline: Instant) -> Result<PollFlags> {
    loop {
        if Instant::now() >= deadline {
            bail!("deadline");
        }
        let mut p = [PollFd::new(fd, what)];
        match poll(&mut p, left(deadline)) {
            Ok(0) => continue,
            Ok(_) => return Ok(p[0].revents().unwrap_or(PollFlags::empty())),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => bail!("poll: {e}"),
        }
    }
}

impl Conn {
    /// Connect, bounded by `deadline`.
    pub(crate) fn open(ep: &Endpoint, deadline: Instant) -> Result<Conn> {
        let fd: OwnedFd = match ep {
            Endpoint::Unix(p) => {
                let s = std::os::unix::net::UnixStream::connect(p)
                    .with_context(|| format!("connecting to {}", p.display()))?;
                s.set_nonblocking(true)?;
                s.into()
            }
            Endpoint::VirtioPort(p) => {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
                    .open(p)
                    .with_context(|| format!("opening {}", p.display()))?
                    .into()
            }
            Endpoint::Vsock { cid, port } => vsock_connect(*cid, *port, deadline)?,
        };
        Ok(Conn {
            io: std::fs::File::from(fd),
            buf: Vec::new(),
            max_payload: proto::DEFAULT_MAX_PAYLOAD,
        })
    }

    /// Raise the frame limit to what the SVM announced.
    pub(crate) fn set_max_payload(&mut self, n: u32) {
        self.max_payload = n.max(proto::DEFAULT_MAX_PAYLOAD);
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.io.as_fd()
    }

    /// Write a whole frame before `deadline`. A partial frame leaves the stream unusable, so
    /// an error here means: drop the connection.
    pub(crate) fn send(&mut self, m: &Message, deadline: Instant) -> Result<()> {
        let frame = m.to_frame();
        let mut done = 0;
        while let Some(rest) = frame.get(done..).filter(|r| !r.is_empty()) {
            match self.io.write(rest) {
                Ok(0) => bail!("the SVM closed the channel"),
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    let r = wait(self.io.as_fd(), PollFlags::POLLOUT, deadline)?;
                    if !r.contains(PollFlags::POLLOUT)
                        && r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)
                    {
                        bail!("the SVM is not connected");
                    }
                }
                Err(e) => bail!("writing to the SVM: {e}"),
            }
        }
        Ok(())
    }

    /// Read what is available without blocking. Errors on EOF.
    pub(crate) fn fill(&mut self) -> Result<()> {
        let mut chunk = [0u8; 65536];
        loop {
            match self.io.read(&mut chunk) {
                Ok(0) => bail!("the SVM closed the channel"),
                Ok(n) => {
                    self.buf
                        .extend_from_slice(chunk.get(..n).unwrap_or_default());
                    if n < chunk.len() {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) => bail!("reading from the SVM: {e}"),
            }
        }
    }

    /// The next complete message in the buffer, if any.
    pub(crate) fn next(&mut self) -> Result<Option<Message>> {
        match proto::decode_frame(&self.buf, self.max_payload)? {
            Some((m, n)) => {
                self.buf.drain(..n);
                Ok(Some(m))
            }
            None => Ok(None),
        }
    }

    /// The next message before `deadline` (used for the handshake).
    pub(crate) fn recv(&mut self, deadline: Instant) -> Result<Message> {
        loop {
            if let Some(m) = self.next()? {
                return Ok(m);
            }
            let r = wait(self.io.as_fd(), PollFlags::POLLIN, deadline)?;
            if r.is_empty() {
                continue;
            }
            self.fill()?;
        }
    }
}

fn vsock_connect(cid: u32, port: u32, deadline: Instant) -> Result<OwnedFd> {
    use nix::sys::socket::{
        connect, getsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, VsockAddr,
    };
    use std::os::fd::AsRawFd;
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("socket(AF_VSOCK)")?;
    match connect(fd.as_raw_fd(), &VsockAddr::new(cid, port)) {
        Ok(()) => {}
        Err(nix::errno::Errno::EINPROGRESS) => {
            wait(fd.as_fd(), PollFlags::POLLOUT, deadline)
                .with_context(|| format!("connecting to vsock {cid}:{port}"))?;
            let err = getsockopt(&fd, sockopt::SocketError)?;
            if err != 0 {
                bail!(
                    "connecting to vsock {cid}:{port}: {}",
                    std::io::Error::from_raw_os_error(err)
                );
            }
        }
        Err(e) => bail!("connecting to vsock {cid}:{port}: {e}"),
    }
    Ok(fd)
}

/// Backoff between reconnection attempts: 100 ms doubling to 5 s, reset on success.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Option<Instant>,
    step: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff {
            next: None,
            step: Duration::from_millis(100),
        }
    }

    /// May we try now?
    pub(crate) fn due(&self) -> bool {
        self.next.is_none_or(|t| Instant::now() >= t)
    }

    /// When the next try is due, if one is scheduled.
    pub(crate) fn at(&self) -> Option<Instant> {
        self.next
    }

    pub(crate) fn failed(&mut self) {
        self.next = Some(Instant::now() + self.step);
        self.step = (self.step * 2).min(Duration::from_secs(5));
    }

    pub(crate) fn reset(&mut self) {
        self.next = None;
        self.step = Duration::from_millis(100);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            "vsock:2:5000".parse::<Endpoint>(),
            Ok(Endpoint::Vsock { cid: 2, port: 5000 })
        );
        assert_eq!(
            "virtio:/dev/virtio-ports/x".parse::<Endpoint>(),
            Ok(Endpoint::VirtioPort("/dev/virtio-ports/x".into()))
        );
        assert_eq!(
            "/run/svm/svm.sock".parse::<Endpoint>(),
            Ok(Endpoint::Unix("/run/svm/svm.sock".into()))
        );
        assert!("vsock:2".parse::<Endpoint>().is_err());
        assert!("vsock:x:1".parse::<Endpoint>().is_err());
        assert!("".parse::<Endpoint>().is_err());
    }

    #[test]
    fn backoff_grows_and_resets() {
        let mut b = Backoff::new();
        assert!(b.due());
        b.failed();
        assert!(!b.due());
        for _ in 0..10 {
            b.failed();
        }
        assert_eq!(b.step, Duration::from_secs(5));
        b.reset();
        assert!(b.due());
    }

    #[test]
    fn a_missing_unix_socket_is_an_error() {
        let dir = std::env::temp_dir().join(format!("svm-agent-t-{}", std::process::id()));
        let r = Conn::open(
            &Endpoint::Unix(dir.join("none.sock")),
            Instant::now() + Duration::from_secs(5),
        );
        assert!(r.is_err());
    }
}
