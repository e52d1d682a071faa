//! The guest↔SVM wire protocol, version 1. The byte layouts are documented in
//! `docs/protocol.md`; this module is their one implementation.
//!
//! Three layers, as in mini-redis:
//! - **frame**: [`check_frame`] looks at a buffer and says "complete (n bytes)", "incomplete",
//!   or "invalid" — and refuses a declared length above the limit *before* anything is
//!   allocated for it;
//! - **message**: [`Message::decode`] turns one complete frame into a typed message, never
//!   panicking and never allocating more than the frame holds; [`Message::encode`] appends one
//!   frame to a buffer;
//! - **connection**: lives in the daemon and the agents (state machine, timeouts).

use std::fmt;

/// The first byte of every frame (`'S'`).
pub const MAGIC: u8 = 0x53;
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 8;
/// The largest payload any peer may ever send, whatever was negotiated (16 MiB).
pub const HARD_MAX_PAYLOAD: u32 = 16 << 20;
/// The payload limit an SVM announces by default in `WELCOME` (1 MiB).
pub const DEFAULT_MAX_PAYLOAD: u32 = 1 << 20;
/// The longest path a `FILE_EVENT` may carry, in bytes.
pub const MAX_PATH: usize = 4096;
/// The longest short string (names, reasons, messages), in bytes.
pub const MAX_STR: usize = 1024;
/// The most signature names a `VERDICT` may carry.
pub const MAX_NAMES: usize = 64;

/// Message type codes (the third header byte).
pub mod ty {
    /// Guest → SVM: open a session.
    pub const HELLO: u8 = 0x01;
    /// SVM → guest: session accepted.
    pub const WELCOME: u8 = 0x02;
    /// Guest → SVM: a file was opened, executed or written.
    pub const FILE_EVENT: u8 = 0x10;
    /// SVM → guest: send me this byte range of a pending event's file.
    pub const READ_REQ: u8 = 0x11;
    /// Guest → SVM: the bytes of a `READ_REQ`.
    pub const READ_DATA: u8 = 0x12;
    /// SVM → guest: the answer to a `FILE_EVENT`.
    pub const VERDICT: u8 = 0x13;
    /// SVM → guest: forget any local clean verdict for this file.
    pub const INVALIDATE: u8 = 0x14;
    /// SVM → guest: scan this path on demand (reserved in v1; agents may answer `ERROR`).
    pub const SCAN_REQ: u8 = 0x20;
    /// Either way: liveness probe.
    pub const PING: u8 = 0x30;
    /// Either way: the answer to `PING`.
    pub const PONG: u8 = 0x31;
    /// Either way: a problem; connection-level errors are followed by a close.
    pub const ERROR: u8 = 0x3F;
}

/// Capability bits a guest announces in `HELLO`.
pub mod caps {
    /// The agent answers `READ_REQ`.
    pub const READ: u32 = 1;
    /// The agent may send small files inline.
    pub const INLINE: u32 = 1 << 1;
    /// The agent may pass file descriptors (same-host unix sockets only).
    pub const FD_PASS: u32 = 1 << 2;
    /// The agent understands `INVALIDATE`.
    pub const INVALIDATE: u32 = 1 << 3;
}

/// Why a frame cannot be used. Every variant ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The first byte is not [`MAGIC`].
    #[error("bad magic byte 0x{0:02x}")]
    BadMagic(u8),
    /// A protocol version this side does not speak.
    #[error("unsupported protocol version {0}")]
    Version(u8),
    /// Reserved flag bits were set.
    #[error("reserved flags 0x{0:02x} set")]
    Flags(u8),
    /// The declared payload is over the limit.
    #[error("frame payload of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Declared length.
        len: u32,
        /// The limit.
        max: u32,
    },
}

/// Why a complete frame's payload is not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// A type code no message has.
    #[error("unknown message type 0x{0:02x}")]
    UnknownType(u8),
    /// The payload ended inside a field.
    #[error("{msg}: payload truncated at byte {at}")]
    Truncated {
        /// Message name.
        msg: &'static str,
        /// Offset where more bytes were needed.
        at: usize,
    },
    /// Bytes left over after the last field.
    #[error("{msg}: {extra} unexpected trailing bytes")]
    Trailing {
        /// Message name.
        msg: &'static str,
        /// How many.
        extra: usize,
    },
    /// A field holds a value it may not.
    #[error("{msg}: invalid {field}: {why}")]
    Invalid {
        /// Message name.
        msg: &'static str,
        /// Field name.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
}

/// A frame header: `[magic, version, type, flags, len: u32 LE]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Message type code.
    pub ty: u8,
    /// Payload length.
    pub len: u32,
}

/// Look at the start of `buf`: `Ok(Some((header, total)))` when a whole frame of `total` bytes
/// is there, `Ok(None)` when more bytes are needed, `Err` when the bytes can never become a
/// valid frame. The length is checked against `max_payload` (capped by
/// [`HARD_MAX_PAYLOAD`]) before the caller reserves anything for it.
pub fn check_frame(buf: &[u8], max_payload: u32) -> Result<Option<(Header, usize)>, FrameError> {
    // Validate what is there even before the header is complete, so garbage is refused early.
    if let Some(&m) = buf.first() {
        if m != MAGIC {
            return Err(FrameError::BadMagic(m));
        }
    }
    if let Some(&v) = buf.get(1) {
        if v != VERSION {
            return Err(FrameError::Version(v));
        }
    }
    let Some(h) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let &[_, _, ty, flags, l0, l1, l2, l3] = h else {
        return Ok(None);
    };
    let len = u32::from_le_bytes([l0, l1, l2, l3]);
    if flags != 0 {
        return Err(FrameError::Flags(flags));
    }
    let max = max_payload.min(HARD_MAX_PAYLOAD);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let total = HEADER_LEN + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((Header { ty, len }, total)))
}

/// The guest's operating system family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OsKind {
    /// Not said.
    Unknown,
    /// Linux.
    Linux,
    /// Windows.
    Windows,
}

/// What the guest did to a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileOp {
    /// Open for reading; waits for a verdict.
    Open,
    /// Execute; waits for a verdict.
    Exec,
    /// Closed after writing; a notification that waits for nothing.
    CloseWrite,
}

impl FileOp {
    /// The op's name in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FileOp::Open => "open",
            FileOp::Exec => "exec",
            FileOp::CloseWrite => "close_write",
        }
    }
    /// Whether the guest waits for a `VERDICT`.
    pub fn waits(self) -> bool {
        !matches!(self, FileOp::CloseWrite)
    }
}

/// A file's identity as the guest reports it. Untrusted: used only as a per-VM shortcut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileIdentity {
    /// The agent gave none.
    None,
    /// POSIX: device, inode, size, modification and change times in ns.
    Posix {
        /// `st_dev`.
        dev: u64,
        /// `st_ino`.
        ino: u64,
        /// `st_size`.
        size: u64,
        /// `st_mtime` in ns.
        mtime_ns: i64,
        /// `st_ctime` in ns.
        ctime_ns: i64,
    },
    /// Windows: volume serial number, 128-bit file id, USN journal number, size.
    Windows {
        /// Volume serial number.
        volume_serial: u32,
        /// `FILE_ID_128`.
        file_id: [u8; 16],
        /// Update sequence number.
        usn: i64,
        /// Size.
        size: u64,
    },
}

impl FileIdentity {
    /// Whether the identity can key a cache.
    pub fn is_some(&self) -> bool {
        !matches!(self, FileIdentity::None)
    }

    /// Guest side: the POSIX identity of a file from its metadata.
    pub fn posix(m: &std::fs::Metadata) -> FileIdentity {
        use std::os::unix::fs::MetadataExt;
        FileIdentity::Posix {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        }
    }
}

/// Where a `FILE_EVENT`'s content comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// The SVM pulls it with `READ_REQ`.
    Read,
    /// It is in the frame.
    Inline(Vec<u8>),
    /// A file descriptor came with the frame (SCM_RIGHTS).
    Fd,
}

/// `HELLO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The protocol version the agent speaks.
    pub proto_version: u16,
    /// OS family.
    pub os: OsKind,
    /// Free text, e.g. "Debian 12, Linux 6.1".
    pub os_detail: String,
    /// The agent's version.
    pub agent_version: String,
    /// [`caps`] bits.
    pub capabilities: u32,
    /// The VM name the guest believes it has; empty if it does not know. Checked, not trusted.
    pub vm_name: String,
}

/// A failure policy action sent in `WELCOME` so the agent can apply the same policy when it
/// loses the SVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyAction {
    /// Fail open.
    Allow,
    /// Fail closed.
    Deny,
}

/// `WELCOME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// Session id (for logs).
    pub session_id: u64,
    /// The VM this connection is bound to (from the transport).
    pub vm: String,
    /// The VM's group (from the SVM's config).
    pub group: String,
    /// The largest payload the SVM accepts.
    pub max_payload: u32,
    /// The largest inline content.
    pub max_inline: u32,
    /// The largest range one `READ_REQ` asks for.
    pub max_read_chunk: u32,
    /// The group's deadline; a `FILE_EVENT`'s deadline is capped by it.
    pub deadline_ms: u32,
    /// What to do when no verdict comes in time.
    pub on_timeout: PolicyAction,
    /// What to do on errors.
    pub on_error: PolicyAction,
    /// The cache epoch: the agent keys its local clean cache on it.
    pub cache_epoch: u64,
    /// The signature set version.
    pub sigset_version: u64,
}

/// `FILE_EVENT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEvent {
    /// Chosen by the agent; unique among its pending events.
    pub request_id: u64,
    /// What happened.
    pub op: FileOp,
    /// Milliseconds the agent will wait; capped by the group's deadline. 0 = the group's.
    pub deadline_ms: u32,
    /// The file's identity.
    pub identity: FileIdentity,
    /// The content length the agent will serve.
    pub size: u64,
    /// The path, as bytes (not necessarily UTF-8).
    pub path: Vec<u8>,
    /// Where the bytes come from.
    pub content: Content,
}

/// `READ_REQ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadReq {
    /// The pending event.
    pub request_id: u64,
    /// Byte offset.
    pub offset: u64,
    /// Bytes wanted.
    pub len: u32,
}

/// The status of a `READ_DATA`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStatus {
    /// All requested bytes follow.
    Ok,
    /// The file ended: fewer bytes follow (maybe none), and there are no more.
    Eof,
    /// The agent could not read; `data` holds UTF-8 text saying why.
    Error,
}

/// `READ_DATA`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadData {
    /// The pending event.
    pub request_id: u64,
    /// Byte offset (must equal the request's).
    pub offset: u64,
    /// Ok, EOF or error.
    pub status: ReadStatus,
    /// The bytes.
    pub data: Vec<u8>,
}

/// The wire form of an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireAction {
    /// Allow.
    Allow,
    /// Deny.
    Deny,
    /// Reserved.
    Quarantine,
    /// Reserved.
    Delete,
}

/// The wire form of a verdict's detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireStatus {
    /// Clean.
    Clean,
    /// Infected, with signature names.
    Infected(Vec<String>),
    /// Not scanned, with the reason.
    Unscanned(String),
}

/// `VERDICT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerdictMsg {
    /// The event answered.
    pub request_id: u64,
    /// What the guest must do.
    pub action: WireAction,
    /// Why.
    pub status: WireStatus,
    /// The signature set version used.
    pub sigset_version: u64,
    /// The cache epoch the verdict belongs to.
    pub cache_epoch: u64,
}

/// `INVALIDATE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalidate {
    /// The file.
    pub identity: FileIdentity,
    /// Its path.
    pub path: Vec<u8>,
    /// The current epoch.
    pub cache_epoch: u64,
}

/// `ERROR` codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
#[non_exhaustive]
pub enum ErrorCode {
    /// Bad magic, version or flags.
    BadFrame = 1,
    /// Declared length over the limit.
    FrameTooLarge = 2,
    /// Unknown message type.
    UnknownType = 3,
    /// The payload does not decode.
    Malformed = 4,
    /// A message not allowed now (e.g. anything before `HELLO`).
    Unexpected = 5,
    /// `HELLO` claimed another VM.
    IdentityMismatch = 6,
    /// Protocol version not supported.
    VersionUnsupported = 7,
    /// A frame or a read did not complete in time.
    Timeout = 8,
    /// Too many pending events.
    TooManyRequests = 9,
    /// A request id already pending.
    DuplicateRequest = 10,
    /// The SVM is shutting down.
    ShuttingDown = 11,
    /// Not supported by this peer.
    Unsupported = 12,
    /// An internal error.
    Internal = 13,
    /// The peer is not allowed to connect.
    Refused = 14,
}

impl ErrorCode {
    fn from_u16(v: u16) -> Option<Self> {
        use ErrorCode::*;
        Some(match v {
            1 => BadFrame,
            2 => FrameTooLarge,
            3 => UnknownType,
            4 => Malformed,
            5 => Unexpected,
            6 => IdentityMismatch,
            7 => VersionUnsupported,
            8 => Timeout,
            9 => TooManyRequests,
            10 => DuplicateRequest,
            11 => ShuttingDown,
            12 => Unsupported,
            13 => Internal,
            14 => Refused,
            _ => return None,
        })
    }
}

/// `ERROR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorMsg {
    /// What went wrong.
    pub code: ErrorCode,
    /// The request concerned; 0 for the connection.
    pub request_id: u64,
    /// Human-readable detail.
    pub message: String,
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// `HELLO`.
    Hello(Hello),
    /// `WELCOME`.
    Welcome(Welcome),
    /// `FILE_EVENT`.
    FileEvent(FileEvent),
    /// `READ_REQ`.
    ReadReq(ReadReq),
    /// `READ_DATA`.
    ReadData(ReadData),
    /// `VERDICT`.
    Verdict(VerdictMsg),
    /// `INVALIDATE`.
    Invalidate(Invalidate),
    /// `SCAN_REQ` (reserved): request id and path.
    ScanReq {
        /// Request id.
        request_id: u64,
        /// Path.
        path: Vec<u8>,
    },
    /// `PING`.
    Ping(u64),
    /// `PONG`.
    Pong(u64),
    /// `ERROR`.
    Error(ErrorMsg),
}

/// A bounds-checked little-endian reader over one payload.
struct Reader<'a> {
    msg: &'static str,
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(msg: &'static str, buf: &'a [u8]) -> Self {
        Reader { msg, buf, at: 0 }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.at.checked_add(n);
        match end.and_then(|e| self.buf.get(self.at..e)) {
            Some(s) => {
                self.at += n;
                Ok(s)
            }
            None => Err(DecodeError::Truncated {
                msg: self.msg,
                at: self.buf.len(),
            }),
        }
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    fn invalid(&self, field: &'static str, why: impl Into<String>) -> DecodeError {
        DecodeError::Invalid {
            msg: self.msg,
            field,
            why: why.into(),
        }
    }
    /// `u16` length + bytes, at most `max`.
    fn bytes16(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let n = self.u16()? as usize;
        if n > max {
            return Err(self.invalid(field, format!("{n} bytes, limit {max}")));
        }
        self.take(n)
    }
    fn str16(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let b = self.bytes16(field, MAX_STR)?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(self.invalid(field, "not UTF-8")),
        }
    }
    /// `u32` length + bytes; the length can never exceed the frame, so it is bounded.
    fn bytes32(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn identity(&mut self) -> Result<FileIdentity, DecodeError> {
        Ok(match self.u8()? {
            0 => FileIdentity::None,
            1 => FileIdentity::Posix {
                dev: self.u64()?,
                ino: self.u64()?,
                size: self.u64()?,
                mtime_ns: self.i64()?,
                ctime_ns: self.i64()?,
            },
            2 => FileIdentity::Windows {
                volume_serial: self.u32()?,
                file_id: self.array()?,
                usn: self.i64()?,
                size: self.u64()?,
            },
            k => return Err(self.invalid("identity kind", format!("{k}"))),
        })
    }
    fn policy(&mut self, field: &'static str) -> Result<PolicyAction, DecodeError> {
        match self.u8()? {
            0 => Ok(PolicyAction::Allow),
            1 => Ok(PolicyAction::Deny),
            v => Err(self.invalid(field, format!("{v}"))),
        }
    }
    fn finish(self) -> Result<(), DecodeError> {
        let extra = self.buf.len() - self.at.min(self.buf.len());
        if extra != 0 {
            return Err(DecodeError::Trailing {
                msg: self.msg,
                extra,
            });
        }
        Ok(())
    }
}

/// A little-endian writer that appends to a buffer.
struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// Truncates to `max` (senders are expected to respect the limits; this keeps the frame
    /// decodable if they do not).
    fn bytes16(&mut self, b: &[u8], max: usize) {
        let b = b.get(..max.min(b.len())).unwrap_or(b);
        self.u16(b.len() as u16);
        self.0.extend_from_slice(b);
    }
    fn str16(&mut self, s: &str) {
        let mut end = s.len().min(MAX_STR);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.bytes16(s.as_bytes().get(..end).unwrap_or_default(), MAX_STR);
    }
    fn bytes32(&mut self, b: &[u8]) {
        self.u32(u32::try_from(b.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(b);
    }
    fn identity(&mut self, id: &FileIdentity) {
        match *id {
            FileIdentity::None => self.u8(0),
            FileIdentity::Posix {
                dev,
                ino,
                size,
                mtime_ns,
                ctime_ns,
            } => {
                self.u8(1);
                self.u64(dev);
                self.u64(ino);
                self.u64(size);
                self.i64(mtime_ns);
                self.i64(ctime_ns);
            }
            FileIdentity::Windows {
                volume_serial,
                file_id,
                usn,
                size,
            } => {
                self.u8(2);
                self.u32(volume_serial);
                self.0.extend_from_slice(&file_id);
                self.i64(usn);
                self.u64(size);
            }
        }
    }
    fn policy(&mut self, p: PolicyAction) {
        self.u8(match p {
            PolicyAction::Allow => 0,
            PolicyAction::Deny => 1,
        })
    }
}

impl Message {
    /// The type code.
    pub fn ty(&self) -> u8 {
        match self {
            Message::Hello(_) => ty::HELLO,
            Message::Welcome(_) => ty::WELCOME,
            Message::FileEvent(_) => ty::FILE_EVENT,
            Message::ReadReq(_) => ty::READ_REQ,
            Message::ReadData(_) => ty::READ_DATA,
            Message::Verdict(_) => ty::VERDICT,
            Message::Invalidate(_) => ty::INVALIDATE,
            Message::ScanReq { .. } => ty::SCAN_REQ,
            Message::Ping(_) => ty::PING,
            Message::Pong(_) => ty::PONG,
            Message::Error(_) => ty::ERROR,
        }
    }

    /// Append this message as one frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[MAGIC, VERSION, self.ty(), 0, 0, 0, 0, 0]);
        let mut w = Writer(out);
        match self {
            Message::Hello(h) => {
                w.u16(h.proto_version);
                w.u8(match h.os {
                    OsKind::Unknown => 0,
                    OsKind::Linux => 1,
                    OsKind::Windows => 2,
                });
                w.str16(&h.os_detail);
                w.str16(&h.agent_version);
                w.u32(h.capabilities);
                w.str16(&h.vm_name);
            }
            Message::Welcome(m) => {
                w.u64(m.session_id);
                w.str16(&m.vm);
                w.str16(&m.group);
                w.u32(m.max_payload);
                w.u32(m.max_inline);
                w.u32(m.max_read_chunk);
                w.u32(m.deadline_ms);
                w.policy(m.on_timeout);
                w.policy(m.on_error);
                w.u64(m.cache_epoch);
                w.u64(m.sigset_version);
            }
            Message::FileEvent(e) => {
                w.u64(e.request_id);
                w.u8(match e.op {
                    FileOp::Open => 1,
                    FileOp::Exec => 2,
                    FileOp::CloseWrite => 3,
                });
                w.u32(e.deadline_ms);
                w.identity(&e.identity);
                w.u64(e.size);
                w.bytes16(&e.path, MAX_PATH);
                match &e.content {
                    Content::Read => w.u8(0),
                    Content::Inline(d) => {
                        w.u8(1);
                        w.bytes32(d);
                    }
                    Content::Fd => w.u8(2),
                }
            }
            Message::ReadReq(r) => {
                w.u64(r.request_id);
                w.u64(r.offset);
                w.u32(r.len);
            }
            Message::ReadData(d) => {
                w.u64(d.request_id);
                w.u64(d.offset);
                w.u8(match d.status {
                    ReadStatus::Ok => 0,
                    ReadStatus::Eof => 1,
                    ReadStatus::Error => 2,
                });
                w.bytes32(&d.data);
            }
            Message::Verdict(v) => {
                w.u64(v.request_id);
                w.u8(match v.action {
                    WireAction::Allow => 0,
                    WireAction::Deny => 1,
                    WireAction::Quarantine => 2,
                    WireAction::Delete => 3,
                });
                w.u64(v.sigset_version);
                w.u64(v.cache_epoch);
                match &v.status {
                    WireStatus::Clean => w.u8(0),
                    WireStatus::Infected(names) => {
                        w.u8(1);
                        let names = names.get(..MAX_NAMES.min(names.len())).unwrap_or(names);
                        w.u16(names.len() as u16);
                        for n in names {
                            w.str16(n);
                        }
                    }
                    WireStatus::Unscanned(reason) => {
                        w.u8(2);
                        w.str16(reason);
                    }
                }
            }
            Message::Invalidate(i) => {
                w.identity(&i.identity);
                w.bytes16(&i.path, MAX_PATH);
                w.u64(i.cache_epoch);
            }
            Message::ScanReq { request_id, path } => {
                w.u64(*request_id);
                w.bytes16(path, MAX_PATH);
            }
            Message::Ping(n) | Message::Pong(n) => w.u64(*n),
            Message::Error(e) => {
                w.u16(e.code as u16);
                w.u64(e.request_id);
                w.str16(&e.message);
            }
        }
        let len = u32::try_from(out.len() - start - HEADER_LEN).unwrap_or(u32::MAX);
        if let Some(l) = out.get_mut(start + 4..start + 8) {
            l.copy_from_slice(&len.to_le_bytes());
        }
    }

    /// Encode into a new buffer.
    pub fn to_frame(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    /// Decode one payload of type `ty`. Never panics; allocates at most the payload's size.
    pub fn decode(ty: u8, payload: &[u8]) -> Result<Message, DecodeError> {
        let name = match ty {
            ty::HELLO => "HELLO",
            ty::WELCOME => "WELCOME",
            ty::FILE_EVENT => "FILE_EVENT",
            ty::READ_REQ => "READ_REQ",
            ty::READ_DATA => "READ_DATA",
            ty::VERDICT => "VERDICT",
            ty::INVALIDATE => "INVALIDATE",
            ty::SCAN_REQ => "SCAN_REQ",
            ty::PING => "PING",
            ty::PONG => "PONG",
            ty::ERROR => "ERROR",
            other => return Err(DecodeError::UnknownType(other)),
        };
        let mut r = Reader::new(name, payload);
        let m = match ty {
            ty::HELLO => Message::Hello(Hello {
                proto_version: r.u16()?,
                os: match r.u8()? {
                    0 => OsKind::Unknown,
                    1 => OsKind::Linux,
                    2 => OsKind::Windows,
                    v => return Err(r.invalid("os", format!("{v}"))),
                },
                os_detail: r.str16("os_detail")?,
                agent_version: r.str16("agent_version")?,
                capabilities: r.u32()?,
                vm_name: r.str16("vm_name")?,
            }),
            ty::WELCOME => Message::Welcome(Welcome {
                session_id: r.u64()?,
                vm: r.str16("vm")?,
                group: r.str16("group")?,
                max_payload: r.u32()?,
                max_inline: r.u32()?,
                max_read_chunk: r.u32()?,
                deadline_ms: r.u32()?,
                on_timeout: r.policy("on_timeout")?,
                on_error: r.policy("on_error")?,
                cache_epoch: r.u64()?,
                sigset_version: r.u64()?,
            }),
            ty::FILE_EVENT => {
                let request_id = r.u64()?;
                let op = match r.u8()? {
                    1 => FileOp::Open,
                    2 => FileOp::Exec,
                    3 => FileOp::CloseWrite,
                    v => return Err(r.invalid("op", format!("{v}"))),
                };
                let deadline_ms = r.u32()?;
                let identity = r.identity()?;
                let size = r.u64()?;
                let path = r.bytes16("path", MAX_PATH)?.to_vec();
                let content = match r.u8()? {
                    0 => Content::Read,
                    1 => {
                        let d = r.bytes32()?;
                        if d.len() as u64 != size {
                            return Err(r.invalid(
                                "inline data",
                                format!("{} bytes but size says {size}", d.len()),
                            ));
                        }
                        Content::Inline(d.to_vec())
                    }
                    2 => Content::Fd,
                    v => return Err(r.invalid("content mode", format!("{v}"))),
                };
                Message::FileEvent(FileEvent {
                    request_id,
                    op,
                    deadline_ms,
                    identity,
                    size,
                    path,
                    content,
                })
            }
            ty::READ_REQ => Message::ReadReq(ReadReq {
                request_id: r.u64()?,
                offset: r.u64()?,
                len: r.u32()?,
            }),
            ty::READ_DATA => Message::ReadData(ReadData {
                request_id: r.u64()?,
                offset: r.u64()?,
                status: match r.u8()? {
                    0 => ReadStatus::Ok,
                    1 => ReadStatus::Eof,
                    2 => ReadStatus::Error,
                    v => return Err(r.invalid("status", format!("{v}"))),
                },
                data: r.bytes32()?.to_vec(),
            }),
            ty::VERDICT => {
                let request_id = r.u64()?;
                let action = match r.u8()? {
                    0 => WireAction::Allow,
                    1 => WireAction::Deny,
                    2 => WireAction::Quarantine,
                    3 => WireAction::Delete,
                    v => return Err(r.invalid("action", format!("{v}"))),
                };
                let sigset_version = r.u64()?;
                let cache_epoch = r.u64()?;
                let status = match r.u8()? {
                    0 => WireStatus::Clean,
                    1 => {
                        let n = r.u16()? as usize;
                        if n > MAX_NAMES {
                            return Err(r.invalid("names", format!("{n} names")));
                        }
                        let mut names = Vec::with_capacity(n);
                        for _ in 0..n {
                            names.push(r.str16("name")?);
                        }
                        WireStatus::Infected(names)
                    }
                    2 => WireStatus::Unscanned(r.str16("reason")?),
                    v => return Err(r.invalid("status", format!("{v}"))),
                };
                Message::Verdict(VerdictMsg {
                    request_id,
                    action,
                    status,
                    sigset_version,
                    cache_epoch,
                })
            }
            ty::INVALIDATE => Message::Invalidate(Invalidate {
                identity: r.identity()?,
                path: r.bytes16("path", MAX_PATH)?.to_vec(),
                cache_epoch: r.u64()?,
            }),
            ty::SCAN_REQ => Message::ScanReq {
                request_id: r.u64()?,
                path: r.bytes16("path", MAX_PATH)?.to_vec(),
            },
            ty::PING => Message::Ping(r.u64()?),
            ty::PONG => Message::Pong(r.u64()?),
            _ => {
                let raw = r.u16()?;
                let code =
                    ErrorCode::from_u16(raw).ok_or_else(|| r.invalid("code", format!("{raw}")))?;
                Message::Error(ErrorMsg {
                    code,
                    request_id: r.u64()?,
                    message: r.str16("message")?,
                })
            }
        };
        r.finish()?;
        Ok(m)
    }
}

/// Split one frame off the front of `buf` and decode it: `Ok(None)` when incomplete.
/// Returns the message and the frame's length.
pub fn decode_frame(buf: &[u8], max_payload: u32) -> Result<Option<(Message, usize)>, ProtoError> {
    let Some((h, total)) = check_frame(buf, max_payload)? else {
        return Ok(None);
    };
    let payload = buf.get(HEADER_LEN..total).unwrap_or_default();
    Ok(Some((Message::decode(h.ty, payload)?, total)))
}

/// Fill `buf` from `offset` whatever the file's position; fewer bytes only at the end of the
/// file.
fn pread_full(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut done = 0;
    while let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
        match file.read_at(rest, offset.saturating_add(done as u64)) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Guest side: answer a `READ_REQ` from a file, reading from the requested offset whatever the
/// file's position, at most `max_chunk` bytes: status `Ok` with all the bytes asked for, `Eof`
/// with fewer (the file ended), or `Error` with the reason as text.
pub fn read_data_from(file: &std::fs::File, req: &ReadReq, max_chunk: u32) -> ReadData {
    let want = req.len.min(max_chunk.max(1)) as usize;
    let mut data = vec![0u8; want];
    let status = match pread_full(file, &mut data, req.offset) {
        Ok(n) => {
            data.truncate(n);
            if n == want {
                ReadStatus::Ok
            } else {
                ReadStatus::Eof
            }
        }
        Err(e) => {
            data = e.to_string().into_bytes();
            ReadStatus::Error
        }
    };
    ReadData {
        request_id: req.request_id,
        offset: req.offset,
        status,
        data,
    }
}

/// Guest side: the content of a `FILE_EVENT` for a file of `size` bytes, and the size to
/// declare with it. Up to `max_inline` bytes the file is read from offset 0 and sent inline
/// (declaring what was read: a file that shrank meanwhile sends fewer bytes); larger files are
/// left to the SVM's `READ_REQ`s.
pub fn file_content(
    file: &std::fs::File,
    size: u64,
    max_inline: u32,
) -> std::io::Result<(Content, u64)> {
    if size > u64::from(max_inline) {
        return Ok((Content::Read, size));
    }
    let mut data = vec![0u8; usize::try_from(size).unwrap_or(0)];
    let n = pread_full(file, &mut data, 0)?;
    data.truncate(n);
    Ok((Content::Inline(data), n as u64))
}

/// Any reason a byte stream is not valid protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// The frame layer.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The message layer.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

impl ProtoError {
    /// The `ERROR` code that reports this.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtoError::Frame(FrameError::TooLarge { .. }) => ErrorCode::FrameTooLarge,
            ProtoError::Frame(FrameError::Version(_)) => ErrorCode::VersionUnsupported,
            ProtoError::Frame(_) => ErrorCode::BadFrame,
            ProtoError::Decode(DecodeError::UnknownType(_)) => ErrorCode::UnknownType,
            ProtoError::Decode(_) => ErrorCode::Malformed,
        }
    }
}

impl fmt::Display for OsKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OsKind::Unknown => "unknown",
            OsKind::Linux => "linux",
            OsKind::Windows => "windows",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(m: Message) {
        let f = m.to_frame();
        let (back, n) = decode_frame(&f, HARD_MAX_PAYLOAD).unwrap().unwrap();
        assert_eq!(n, f.len());
        assert_eq!(back, m);
        // Every strict prefix is incomplete, never an error.
        for cut in 0..f.len() {
            assert_eq!(
                decode_frame(&f[..cut], HARD_MAX_PAYLOAD),
                Ok(None),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn every_message_roundtrips() {
        let id = FileIdentity::Posix {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns: -4,
            ctime_ns: 5,
        };
        roundtrip(Message::Hello(Hello {
            proto_version: 1,
            os: OsKind::Linux,
            os_detail: "Debian 12".into(),
            agent_version: "0.1".into(),
            capabilities: caps::READ | caps::INLINE,
            vm_name: "ward-3".into(),
        }));
        roundtrip(Message::Welcome(Welcome {
            session_id: 9,
            vm: "ward-3".into(),
            group: "icu".into(),
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_inline: 1000,
            max_read_chunk: 2000,
            deadline_ms: 3000,
            on_timeout: PolicyAction::Allow,
            on_error: PolicyAction::Deny,
            cache_epoch: 77,
            sigset_version: 2,
        }));
        for content in [Content::Read, Content::Inline(b"abc".to_vec()), Content::Fd] {
            roundtrip(Message::FileEvent(FileEvent {
                request_id: 7,
                op: FileOp::Exec,
                deadline_ms: 100,
                identity: id,
                size: 3,
                path: b"/bin/\xffls".to_vec(),
                content,
            }));
        }
        roundtrip(Message::ReadReq(ReadReq {
            request_id: 1,
            offset: 2,
            len: 3,
        }));
        roundtrip(Message::ReadData(ReadData {
            request_id: 1,
            offset: 2,
            status: ReadStatus::Eof,
            data: vec![1, 2],
        }));
        for status in [
            WireStatus::Clean,
            WireStatus::Infected(vec!["A".into(), "B".into()]),
            WireStatus::Unscanned("too big".into()),
        ] {
            roundtrip(Message::Verdict(VerdictMsg {
                request_id: 5,
                action: WireAction::Deny,
                status,
                sigset_version: 1,
                cache_epoch: 2,
            }));
        }
        roundtrip(Message::Invalidate(Invalidate {
            identity: FileIdentity::Windows {
                volume_serial: 1,
                file_id: [7; 16],
                usn: 3,
                size: 4,
            },
            path: b"C:\\x".to_vec(),
            cache_epoch: 3,
        }));
        roundtrip(Message::ScanReq {
            request_id: 3,
            path: b"/tmp".to_vec(),
        });
        roundtrip(Message::Ping(1));
        roundtrip(Message::Pong(2));
        roundtrip(Message::Error(ErrorMsg {
            code: ErrorCode::Timeout,
            request_id: 0,
            message: "slow".into(),
        }));
    }

    #[test]
    fn read_data_from_a_file_says_ok_or_eof() {
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, b"0123456789").unwrap();
        let req = |offset, len| ReadReq {
            request_id: 4,
            offset,
            len,
        };
        let d = read_data_from(&f, &req(2, 3), 100);
        assert_eq!(
            (d.status, &d.data[..], d.request_id),
            (ReadStatus::Ok, &b"234"[..], 4)
        );
        let d = read_data_from(&f, &req(8, 5), 100);
        assert_eq!((d.status, &d.data[..]), (ReadStatus::Eof, &b"89"[..]));
        let d = read_data_from(&f, &req(0, 8), 4);
        assert_eq!((d.status, &d.data[..]), (ReadStatus::Ok, &b"0123"[..]));
    }

    #[test]
    fn oversized_length_is_refused_before_the_payload_arrives() {
        let mut f = vec![MAGIC, VERSION, ty::PING, 0];
        f.extend_from_slice(&(64u32 << 20).to_le_bytes());
        assert!(matches!(
            check_frame(&f, DEFAULT_MAX_PAYLOAD),
            Err(FrameError::TooLarge { .. })
        ));
        // Within the hard cap but over the negotiated limit.
        let mut g = vec![MAGIC, VERSION, ty::PING, 0];
        g.extend_from_slice(&(DEFAULT_MAX_PAYLOAD + 1).to_le_bytes());
        assert!(check_frame(&g, DEFAULT_MAX_PAYLOAD).is_err());
    }

    #[test]
    fn garbage_is_refused_at_the_first_byte() {
        assert_eq!(check_frame(b"G", 100), Err(FrameError::BadMagic(b'G')));
        assert_eq!(check_frame(&[MAGIC, 9], 100), Err(FrameError::Version(9)));
        assert_eq!(
            check_frame(&[MAGIC, VERSION, 1, 4, 0, 0, 0, 0], 100),
            Err(FrameError::Flags(4))
        );
    }

    #[test]
    fn bad_payloads_are_errors_not_panics() {
        let unknown = [MAGIC, VERSION, 0x7E, 0, 0, 0, 0, 0];
        assert_eq!(
            decode_frame(&unknown, 100).unwrap_err().code(),
            ErrorCode::UnknownType
        );
        // A PING with a short payload.
        let short = [MAGIC, VERSION, ty::PING, 0, 2, 0, 0, 0, 1, 2];
        assert_eq!(
            decode_frame(&short, 100).unwrap_err().code(),
            ErrorCode::Malformed
        );
        // Trailing bytes.
        let mut f = Message::Ping(1).to_frame();
        f.push(0);
        f[4] += 1;
        assert!(matches!(
            decode_frame(&f, 100),
            Err(ProtoError::Decode(DecodeError::Trailing { .. }))
        ));
        // An inline length that disagrees with the size.
        let mut e = Message::FileEvent(FileEvent {
            request_id: 1,
            op: FileOp::Open,
            deadline_ms: 0,
            identity: FileIdentity::None,
            size: 3,
            path: vec![],
            content: Content::Inline(b"abc".to_vec()),
        })
        .to_frame();
        let size_at = HEADER_LEN + 8 + 1 + 4 + 1;
        e[size_at] = 4;
        assert!(decode_frame(&e, 100).is_err());
        // A 32-bit length larger than the frame is truncation, not an allocation.
        let mut d = Message::ReadData(ReadData {
            request_id: 1,
            offset: 0,
            status: ReadStatus::Ok,
            data: vec![],
        })
        .to_frame();
        let n = d.len();
        d[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_frame(&d, 100),
            Err(ProtoError::Decode(DecodeError::Truncated { .. }))
        ));
    }
}
