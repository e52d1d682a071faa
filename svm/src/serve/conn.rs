//! One guest connection: frames in, `HELLO` check, events dispatched, frames out. A protocol
//! violation gets one `ERROR` and the close of this connection only.

use super::metrics::KindLabels;
use super::pipeline::{fast_path, run_event, ConnOut, EventCtx};
use super::Shared;
use bytes::{Buf, BytesMut};
use hypervisor_api::proto::{
    self, ErrorCode, ErrorMsg, Message, PolicyAction, ProtoError, ReadData, Welcome,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

/// Answer a refused peer with one `ERROR` and close.
pub async fn refuse<S: AsyncWrite + Unpin>(mut s: S, why: String) {
    let f = error_frame(ErrorCode::Refused, 0, &why);
    let _ = tokio::time::timeout(Duration::from_secs(1), s.write_all(&f)).await;
}

fn error_frame(code: ErrorCode, request_id: u64, message: &str) -> Vec<u8> {
    Message::Error(ErrorMsg {
        code,
        request_id,
        message: message.to_owned(),
    })
    .to_frame()
}

fn kind(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::BadFrame => "bad_frame",
        ErrorCode::FrameTooLarge => "frame_too_large",
        ErrorCode::UnknownType => "unknown_type",
        ErrorCode::Malformed => "malformed",
        ErrorCode::Unexpected => "unexpected",
        ErrorCode::IdentityMismatch => "identity_mismatch",
        ErrorCode::VersionUnsupported => "version",
        ErrorCode::Timeout => "timeout",
        ErrorCode::DuplicateRequest => "duplicate_request",
        ErrorCode::TooManyRequests => "too_many_requests",
        _ => "other",
    }
}

/// A pending event: where its `READ_DATA` goes.
struct Pending {
    reads: Option<mpsc::Sender<ReadData>>,
}

/// Serve one connection bound to `vm` until it closes, breaks the protocol, or the daemon
/// stops (then in-flight events are finished first). `hello_timeout`: how long the peer has
/// to send `HELLO`; `None` where the SVM itself connected to a hypervisor's socket that is
/// up long before the guest's agent starts (QEMU virtio-serial ports).
pub async fn serve_conn<S>(
    shared: Arc<Shared>,
    stream: S,
    vm: String,
    via: &'static str,
    hello_timeout: Option<Duration>,
    mut stop: watch::Receiver<bool>,
    fds: Option<super::fdpass::FdQueue>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    shared.metrics.connections.inc();
    let session = shared.session_id();
    let (mut rd, mut wr) = tokio::io::split(stream);
    let server = shared.config.load().cfg.server.clone();
    let max_payload = server.max_payload as u32;
    let frame_timeout = Duration::from_millis(server.frame_timeout_ms);
    let hello_deadline = hello_timeout.map(|t| Instant::now() + t);
    let mut buf = BytesMut::with_capacity(4096);
    let mut partial_since: Option<Instant> = None;
    let (tx, mut rx) = mpsc::channel::<ConnOut>(64);
    let mut out: Vec<u8> = Vec::new();
    let mut pending: HashMap<u64, Pending> = HashMap::new();
    let mut ctx: Option<EventCtx> = None;
    let mut draining = *stop.borrow();
    let mut read_open = true;
    let mut write_stalled = false;
    let fatal: Option<(ErrorCode, String)> = 'conn: loop {
        // Handle every complete frame in the buffer.
        loop {
            match proto::decode_frame(&buf, max_payload) {
                Ok(None) => break,
                Err(e) => break 'conn Some(proto_fatal(&e)),
                Ok(Some((msg, n))) => {
                    buf.advance(n);
                    partial_since = None;
                    if let Err(f) = handle(
                        &shared,
                        &vm,
                        via,
                        session,
                        &tx,
                        &mut ctx,
                        &mut pending,
                        &mut out,
                        draining,
                        fds.as_ref(),
                        msg,
                    ) {
                        break 'conn Some(f);
                    }
                }
            }
        }
        if buf.is_empty() {
            partial_since = None;
            if buf.capacity() > 64 << 10 {
                buf = BytesMut::with_capacity(4096);
            }
        } else {
            partial_since.get_or_insert_with(Instant::now);
            // Reserve what the declared frame needs (already checked against the limit).
            if let Ok(Some(_)) | Err(_) = proto::check_frame(&buf, max_payload) {
            } else if buf.len() >= proto::HEADER_LEN {
                let want = buf
                    .get(4..8)
                    .and_then(|l| <[u8; 4]>::try_from(l).ok())
                    .map_or(0, |l| u32::from_le_bytes(l) as usize + proto::HEADER_LEN);
                if want > buf.len() {
                    buf.reserve(want - buf.len());
                }
            }
        }
        if !out.is_empty() {
            // A guest that stops reading its replies must not hold this connection (and
            // the events waiting to answer on it) forever: replies, like frames, must go
            // through within frame_timeout_ms.
            match tokio::time::timeout(frame_timeout, wr.write_all(&out)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break 'conn None,
                Err(_) => {
                    out.clear();
                    write_stalled = true;
                    break 'conn Some((
                        ErrorCode::Timeout,
                        format!(
                            "the guest did not read its replies within {} ms",
                            frame_timeout.as_millis()
                        ),
                    ));
                }
            }
            out.clear();
            if out.capacity() > 64 << 10 {
                out = Vec::new();
            }
        }
        if draining && pending.is_empty() {
            break 'conn None;
        }
        if !read_open && pending.is_empty() {
            break 'conn None;
        }
        let slow = partial_since.map(|t| t + frame_timeout);
        let hello_wait = hello_deadline.filter(|_| ctx.is_none());
        tokio::select! {
            biased;
            Some(o) = rx.recv() => {
                let mut next = Some(o);
                while let Some(o) = next.take() {
                    match o {
                        ConnOut::Frame(f) => out.extend_from_slice(&f),
                        ConnOut::Done(id) => { pending.remove(&id); }
                        ConnOut::Fatal(code, msg) => break 'conn Some((code, msg)),
                    }
                    next = rx.try_recv().ok();
                }
            }
            r = rd.read_buf(&mut buf), if read_open => match r {
                Ok(0) | Err(_) => {
                    // The guest is gone (or half-closed): drop read channels so its events
                    // end now.
                    read_open = false;
                    for p in pending.values_mut() { p.reads = None; }
                    if !buf.is_empty() {
                        break 'conn Some((ErrorCode::Malformed, format!("the connection ended inside a frame ({} bytes buffered)", buf.len())));
                    }
                    if ctx.is_none() { break 'conn None; }
                }
                Ok(_) => {}
            },
            _ = sleep_opt(slow) => {
                break 'conn Some((ErrorCode::Timeout, format!("frame not completed within {} ms", frame_timeout.as_millis())));
            }
            _ = sleep_opt(hello_wait) => {
                break 'conn Some((ErrorCode::Timeout, "no HELLO in time".into()));
            }
            _ = stop.wait_for(|s| *s), if !draining => { draining = true; }
        }
    };
    if let Some((code, msg)) = fatal {
        shared
            .metrics
            .protocol_errors
            .get_or_create(&KindLabels { kind: kind(code) })
            .inc();
        if shared.guest_log.allow().is_some() {
            tracing::warn!(vm = %vm, session, "protocol error, closing: {msg}");
        } else {
            shared.metrics.logs_suppressed.inc();
        }
        if !write_stalled {
            out.extend_from_slice(&error_frame(code, 0, &msg));
            let _ = tokio::time::timeout(Duration::from_secs(2), wr.write_all(&out)).await;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
    shared.metrics.connections.dec();
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

fn proto_fatal(e: &ProtoError) -> (ErrorCode, String) {
    (e.code(), e.to_string())
}

#[allow(clippy::too_many_arguments)]
fn handle(
    shared: &Arc<Shared>,
    vm: &str,
    via: &'static str,
    session: u64,
    tx: &mpsc::Sender<ConnOut>,
    ctx: &mut Option<EventCtx>,
    pending: &mut HashMap<u64, Pending>,
    out: &mut Vec<u8>,
    draining: bool,
    fds: Option<&super::fdpass::FdQueue>,
    msg: Message,
) -> Result<(), (ErrorCode, String)> {
    let Some(c) = ctx.as_ref() else {
        let Message::Hello(h) = msg else {
            return Err((
                ErrorCode::Unexpected,
                "the first message must be HELLO".into(),
            ));
        };
        if h.proto_version != u16::from(proto::VERSION) {
            return Err((
                ErrorCode::VersionUnsupported,
                format!(
                    "protocol version {} is not supported (1 is)",
                    h.proto_version
                ),
            ));
        }
        if !h.vm_name.is_empty() && h.vm_name != vm {
            return Err((
                ErrorCode::IdentityMismatch,
                format!(
                    "HELLO claims VM {:?}, but this {via} connection is VM {vm:?}",
                    h.vm_name
                ),
            ));
        }
        let cfg = shared.config.load();
        let group = cfg.group_of(vm);
        let sigs = shared.sigs.load();
        let s = &cfg.cfg.server;
        let pol = |f| match f {
            crate::config::Fallback::Allow => PolicyAction::Allow,
            crate::config::Fallback::Deny => PolicyAction::Deny,
        };
        Message::Welcome(Welcome {
            session_id: session,
            vm: vm.to_owned(),
            group: group.name.clone(),
            max_payload: s.max_payload as u32,
            max_inline: s.max_inline as u32,
            max_read_chunk: s.max_read_chunk as u32,
            deadline_ms: group.cfg.deadline_ms,
            on_timeout: pol(group.cfg.on_timeout),
            on_error: pol(group.cfg.on_error),
            cache_epoch: sigs.epoch,
            sigset_version: sigs.version,
        })
        .encode(out);
        tracing::info!(vm, session, via, agent = %h.agent_version, os = %h.os, "guest connected");
        *ctx = Some(EventCtx {
            shared: shared.clone(),
            vm: shared.vm(vm),
            session,
            out: tx.clone(),
        });
        return Ok(());
    };
    match msg {
        Message::FileEvent(ev) => {
            let start = Instant::now();
            let id = ev.request_id;
            // An fd-mode event claims the next passed descriptor, whatever happens next.
            let fd = if matches!(ev.content, proto::Content::Fd) {
                let got = match fds {
                    Some(q) => {
                        super::fdpass::take(q).map_err(|e| (ErrorCode::Malformed, e.to_string()))?
                    }
                    None => None,
                };
                match got {
                    Some(fd) => Some(std::fs::File::from(fd)),
                    None => {
                        return Err((
                            ErrorCode::Malformed,
                            format!("request {id}: fd mode, but no file descriptor came with it over this {via} connection"),
                        ))
                    }
                }
            } else {
                None
            };
            if pending.contains_key(&id) {
                return Err((
                    ErrorCode::DuplicateRequest,
                    format!("request {id} is already pending"),
                ));
            }
            if draining {
                error_frame_into(out, ErrorCode::ShuttingDown, id, "the SVM is shutting down");
                return Ok(());
            }
            let cfg = shared.config.load();
            if ev.size > 0
                && matches!(ev.content, proto::Content::Inline(_))
                && ev.size > cfg.cfg.server.max_inline
            {
                return Err((
                    ErrorCode::Malformed,
                    format!("inline content of {} bytes exceeds max_inline", ev.size),
                ));
            }
            let group = cfg.group_of(vm);
            // The set is chosen here, once, in the order the guest sent its events (not when
            // a task first runs): an event sent after another never gets an older set.
            let sigs = c.shared.sigs.load_full();
            if let Some(frame) = fast_path(c, &ev, &group, &sigs, start) {
                out.extend_from_slice(&frame);
                return Ok(());
            }
            if pending.len() >= cfg.cfg.server.max_pending {
                error_frame_into(
                    out,
                    ErrorCode::TooManyRequests,
                    id,
                    "too many pending events",
                );
                return Ok(());
            }
            let req_ms = if ev.deadline_ms == 0 {
                group.cfg.deadline_ms
            } else {
                ev.deadline_ms.min(group.cfg.deadline_ms)
            };
            let deadline = start + Duration::from_millis(u64::from(req_ms));
            let (reads_tx, reads_rx) = if matches!(ev.content, proto::Content::Read) {
                let (t, r) = mpsc::channel(8);
                (Some(t), Some(r))
            } else {
                (None, None)
            };
            pending.insert(id, Pending { reads: reads_tx });
            tokio::spawn(run_event(
                c.clone(),
                ev,
                group,
                reads_rx,
                fd,
                start,
                deadline,
                sigs,
            ));
            Ok(())
        }
        Message::ReadData(d) => {
            let id = d.request_id;
            let Some(p) = pending.get(&id) else {
                return Err((
                    ErrorCode::Malformed,
                    format!("READ_DATA for request {id}, which is not pending"),
                ));
            };
            match &p.reads {
                Some(t) => t.try_send(d).map_err(|_| {
                    (
                        ErrorCode::Malformed,
                        format!("READ_DATA for request {id} that was not asked for"),
                    )
                }),
                None => Err((
                    ErrorCode::Malformed,
                    format!("READ_DATA for request {id}, which reads nothing"),
                )),
            }
        }
        Message::Ping(n) => {
            Message::Pong(n).encode(out);
            Ok(())
        }
        Message::Pong(_) => Ok(()),
        Message::Error(e) => {
            if shared.guest_log.allow().is_some() {
                tracing::info!(vm, session, code = ?e.code, request = e.request_id, "agent reported: {}", e.message);
            }
            Ok(())
        }
        other => Err((
            ErrorCode::Unexpected,
            format!("message type 0x{:02x} is not sent by agents", other.ty()),
        )),
    }
}

fn error_frame_into(out: &mut Vec<u8>, code: ErrorCode, id: u64, msg: &str) {
    out.extend_from_slice(&error_frame(code, id, msg));
}
