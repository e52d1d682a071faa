//! File descriptors passed with `SCM_RIGHTS` on the same-host unix socket: a stream wrapper
//! that reads with `recvmsg` and queues the descriptors that arrive with the bytes. The
//! kernel attaches them to the first byte of the agent's `sendmsg`, so by the time a
//! `FILE_EVENT` in fd mode is complete its descriptor is in the queue, in order.

use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};
use std::collections::VecDeque;
use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::UnixStream;

/// Descriptors held for one connection at most; more is a protocol violation.
pub const MAX_QUEUED_FDS: usize = 64;

/// Descriptors received and not yet claimed by an event.
#[derive(Debug, Default)]
pub struct FdState {
    /// In arrival order.
    pub fds: VecDeque<OwnedFd>,
    /// Too many came, or the kernel truncated the control data.
    pub overflow: bool,
}

/// Shared between the stream and the connection's event handling.
pub type FdQueue = Arc<Mutex<FdState>>;

/// The agent passed more descriptors than events claim, or the kernel truncated them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("more than {MAX_QUEUED_FDS} file descriptors passed, or control data truncated")]
pub struct Overflow;

/// Take the next descriptor.
pub fn take(q: &FdQueue) -> Result<Option<OwnedFd>, Overflow> {
    let mut s = q.lock().unwrap_or_else(PoisonError::into_inner);
    if s.overflow {
        return Err(Overflow);
    }
    Ok(s.fds.pop_front())
}

/// A unix stream that collects `SCM_RIGHTS` descriptors while reading.
#[derive(Debug)]
pub struct FdStream {
    inner: UnixStream,
    queue: FdQueue,
}

impl FdStream {
    /// Wrap a stream; descriptors go to `queue`.
    pub fn new(inner: UnixStream, queue: FdQueue) -> Self {
        FdStream { inner, queue }
    }
}

impl AsyncRead for FdStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            ready!(this.inner.poll_read_ready(cx))?;
            let want = buf.remaining().min(64 << 10);
            let dst = buf.initialize_unfilled_to(want);
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
            let mut anc = RecvAncillaryBuffer::new(&mut space);
            let inner = &this.inner;
            let res = inner.try_io(Interest::READABLE, || {
                recvmsg(
                    inner,
                    &mut [IoSliceMut::new(dst)],
                    &mut anc,
                    RecvFlags::CMSG_CLOEXEC,
                )
                .map_err(io::Error::from)
            });
            match res {
                Ok(msg) => {
                    let mut q = this.queue.lock().unwrap_or_else(PoisonError::into_inner);
                    for m in anc.drain() {
                        if let RecvAncillaryMessage::ScmRights(fds) = m {
                            for fd in fds {
                                if q.fds.len() < MAX_QUEUED_FDS {
                                    q.fds.push_back(fd);
                                } else {
                                    q.overflow = true; // the extra descriptor is closed here
                                }
                            }
                        }
                    }
                    if msg.flags.contains(ReturnFlags::CTRUNC) {
                        q.overflow = true;
                    }
                    buf.advance(msg.bytes.min(want));
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
