//! The guest side of the protocol, for `svm check` and `svm bench-storm`: a frame reader over
//! any async stream and a simple sequential guest.

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, BytesMut};
use hypervisor_api::proto::{
    self, caps, FileEvent, FileIdentity, FileOp, Hello, Message, OsKind, VerdictMsg, Welcome,
};
use std::path::Path;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Reads whole messages from a stream.
#[derive(Debug)]
pub struct FrameReader<R> {
    rd: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wrap a stream.
    pub fn new(rd: R) -> Self {
        FrameReader {
            rd,
            buf: BytesMut::with_capacity(8192),
        }
    }

    /// The next message; `Ok(None)` at a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<Message>> {
        loop {
            if let Some((m, n)) = proto::decode_frame(&self.buf, proto::HARD_MAX_PAYLOAD)? {
                self.buf.advance(n);
                return Ok(Some(m));
            }
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                bail!("the SVM closed the connection inside a frame");
            }
        }
    }
}

/// A sequential guest: one event at a time.
#[derive(Debug)]
pub struct Guest<S> {
    rd: FrameReader<tokio::io::ReadHalf<S>>,
    wr: tokio::io::WriteHalf<S>,
    /// What the SVM said in `WELCOME`.
    pub welcome: Welcome,
    next_id: u64,
}

/// The `HELLO` this program sends.
pub fn hello(vm_name: &str) -> Message {
    Message::Hello(Hello {
        proto_version: u16::from(proto::VERSION),
        os: OsKind::Linux,
        os_detail: std::env::consts::OS.into(),
        agent_version: concat!("svm-client/", env!("CARGO_PKG_VERSION")).into(),
        capabilities: caps::READ | caps::INLINE,
        vm_name: vm_name.into(),
    })
}

/// Send `HELLO` and wait for `WELCOME`.
pub async fn handshake<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    rd: &mut FrameReader<R>,
    wr: &mut W,
    vm_name: &str,
) -> Result<Welcome> {
    wr.write_all(&hello(vm_name).to_frame()).await?;
    match rd.next().await? {
        Some(Message::Welcome(w)) => Ok(w),
        Some(Message::Error(e)) => Err(anyhow!("the SVM refused: {:?}: {}", e.code, e.message)),
        Some(other) => Err(anyhow!("expected WELCOME, got type 0x{:02x}", other.ty())),
        None => Err(anyhow!("the SVM closed the connection")),
    }
}

impl Guest<tokio::net::UnixStream> {
    /// Connect to a unix socket.
    pub async fn connect(path: &Path) -> Result<Self> {
        let s = tokio::net::UnixStream::connect(path)
            .await
            .with_context(|| format!("connecting to {}", path.display()))?;
        Guest::start(s, "").await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Guest<S> {
    /// Run the handshake on a stream.
    pub async fn start(s: S, vm_name: &str) -> Result<Self> {
        let (rd, mut wr) = tokio::io::split(s);
        let mut rd = FrameReader::new(rd);
        let welcome = handshake(&mut rd, &mut wr, vm_name).await?;
        Ok(Guest {
            rd,
            wr,
            welcome,
            next_id: 1,
        })
    }

    /// Send one file as an `open` event and serve the SVM's reads until its verdict.
    pub async fn check_file(&mut self, path: &Path) -> Result<VerdictMsg> {
        let file = std::fs::File::open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            bail!("not a regular file");
        }
        let identity = FileIdentity::posix(&meta);
        let (content, size) = proto::file_content(&file, meta.len(), self.welcome.max_inline)?;
        let id = self.next_id;
        self.next_id += 1;
        let ev = Message::FileEvent(FileEvent {
            request_id: id,
            op: FileOp::Open,
            deadline_ms: 0,
            identity,
            size,
            path: path.as_os_str().as_encoded_bytes().to_vec(),
            content,
        });
        self.wr.write_all(&ev.to_frame()).await?;
        loop {
            match self.rd.next().await? {
                Some(Message::ReadReq(r)) if r.request_id == id => {
                    let d = proto::read_data_from(&file, &r, self.welcome.max_read_chunk);
                    self.wr.write_all(&Message::ReadData(d).to_frame()).await?;
                }
                Some(Message::Verdict(v)) if v.request_id == id => return Ok(v),
                Some(Message::Error(e)) => bail!("{:?}: {}", e.code, e.message),
                Some(Message::Ping(n)) => self.wr.write_all(&Message::Pong(n).to_frame()).await?,
                Some(_) => {}
                None => bail!("the SVM closed the connection"),
            }
        }
    }
}
