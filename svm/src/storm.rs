//! `svm bench-storm`: N simulated guests against a fresh `svm serve`, over the real protocol.
//!
//! The guests are the host side of VM sockets: like QEMU's virtio-serial chardevs, the
//! generator listens on `DIR/gNNN.sock` and the daemon (started with `--vm-socket-dir DIR`)
//! connects to each, so every guest is its own VM by transport. Each repetition starts a new
//! daemon, so cold numbers never see a cache left over from an earlier run.
//!
//! - **boot 1** (cold): every guest opens every file of its set; files up to `--inline-max`
//!   (default 4 KiB) go inline, larger ones are pulled by the SVM with `READ_REQ`, as a thin
//!   agent does so that an identity-cache hit costs no transfer;
//! - **boot 2** (warm): the same opens again; the per-VM identity caches are warm, so no
//!   content moves and the verdicts come from the shared cache;
//! - optionally paced warm phases (`--rate N[,N...]`): open loop at a fixed total rate (guests send
//!   on their own timers, whatever is outstanding), latency measured from each write.

use crate::client::{handshake, FrameReader};
use anyhow::{bail, Context, Result};
use hypervisor_api::proto::{
    Content, FileEvent, FileIdentity, FileOp, Message, ReadData, ReadStatus,
};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;

/// Options of `svm bench-storm`.
#[derive(Debug, Clone)]
pub struct StormOptions {
    /// Simulated guests.
    pub guests: usize,
    /// Files per guest.
    pub files: usize,
    /// Where the files are sampled from.
    pub from: PathBuf,
    /// Skip files larger than this.
    pub max_file_size: u64,
    /// Every guest has the same files (`true`), or its own (`false`).
    pub linked: bool,
    /// Events in flight per guest.
    pub window: usize,
    /// Files up to this size are sent inline; larger ones on request.
    pub inline_max: u64,
    /// Fresh daemons (repetitions).
    pub reps: usize,
    /// Also run a paced warm phase at each of these total rates (events per second).
    pub rates: Vec<u64>,
    /// Sampling seed.
    pub seed: u64,
    /// The load generator's own async threads.
    pub client_threads: usize,
    /// The `svm` binary to start.
    pub svm: PathBuf,
    /// Extra arguments for `svm serve`.
    pub serve_args: Vec<String>,
    /// Print one JSON object at the end.
    pub json: bool,
    /// Signature bundles to push to the daemon's admin API during the boots (swap under load).
    pub push: Vec<PathBuf>,
    /// The daemon's admin socket (from its `[update] admin_socket`).
    pub admin_socket: Option<PathBuf>,
    /// Delay before each push.
    pub push_every: Duration,
    /// Push between boot 1 and boot 2 instead of during the boots (boot 2 is then "the next
    /// storm" after the update).
    pub push_between: bool,
}

/// Signature versions the guests saw in their verdicts.
#[derive(Debug, Default)]
struct VersionStats {
    /// Events that got an older set version than an event sent before them on the same
    /// connection (in the order the guest sent them: pipelined verdicts may arrive out of
    /// order, so arrival order is not the measure).
    regressions: AtomicU64,
    /// The highest version seen.
    max: AtomicU64,
}

/// What the pushes during a storm did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SwapReport {
    /// HTTP status of each push (200 = accepted).
    pub statuses: Vec<u16>,
    /// Milliseconds each push took (verify, compile, swap).
    pub push_ms: Vec<f64>,
    /// Verdicts older than an earlier verdict on their connection (must be 0).
    pub version_regressions: u64,
    /// The highest set version in a verdict.
    pub max_version_seen: u64,
}

struct Sample {
    data: Vec<Arc<Vec<u8>>>,
    paths: Vec<Vec<u8>>,
    total: u64,
    /// Distinct contents among `data` (BLAKE3).
    unique: usize,
}

fn sample_files(o: &StormOptions) -> Result<Sample> {
    let mut all = Vec::new();
    let mut stack = vec![o.from.clone()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                all.push(e.path());
            }
        }
    }
    all.sort();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(o.seed);
    all.shuffle(&mut rng);
    let mut s = Sample {
        data: Vec::new(),
        paths: Vec::new(),
        total: 0,
        unique: 0,
    };
    for p in all {
        if s.data.len() == o.files {
            break;
        }
        let Ok(m) = std::fs::metadata(&p) else {
            continue;
        };
        if m.len() > o.max_file_size {
            continue;
        }
        let Ok(d) = std::fs::read(&p) else { continue };
        s.total += d.len() as u64;
        s.paths.push(p.as_os_str().as_encoded_bytes().to_vec());
        s.data.push(Arc::new(d));
    }
    s.unique = s
        .data
        .iter()
        .map(|d| *blake3::hash(d).as_bytes())
        .collect::<std::collections::HashSet<_>>()
        .len();
    if s.data.len() < o.files {
        bail!(
            "only {} readable files of at most {} bytes under {}",
            s.data.len(),
            o.max_file_size,
            o.from.display()
        );
    }
    Ok(s)
}

/// A daemon started for one repetition.
struct Daemon {
    child: std::process::Child,
    metrics: String,
}

impl Daemon {
    fn start(o: &StormOptions, dir: &Path) -> Result<Daemon> {
        let mut child = std::process::Command::new(&o.svm)
            .arg("serve")
            .arg("--listen")
            .arg(dir.join("svm.sock"))
            .arg("--vm-socket-dir")
            .arg(dir.join("vms"))
            .args(["--metrics", "127.0.0.1:0"])
            .args(if o.serve_args.iter().any(|a| a == "--audit-log") {
                Vec::new()
            } else {
                vec!["--audit-log".into(), dir.join("audit.jsonl")]
            })
            .args(&o.serve_args)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", o.svm.display()))?;
        let Some(err) = child.stderr.take() else {
            bail!("no stderr");
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                if line.contains("ready:") {
                    let m = line
                        .split(" metrics=")
                        .nth(1)
                        .and_then(|r| r.split_whitespace().next())
                        .unwrap_or("")
                        .to_owned();
                    let _ = tx.send(m);
                } else if !line.contains("svm serve:") {
                    eprintln!("[svm serve] {line}");
                }
            }
        });
        let metrics = rx
            .recv_timeout(Duration::from_secs(120))
            .context("svm serve did not become ready")?;
        Ok(Daemon { child, metrics })
    }

    fn rss_kib(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(field))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    }

    fn metric(&self, series: &str) -> f64 {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(&self.metrics) else {
            return f64::NAN;
        };
        let _ = write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.lines()
            .find_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                (k == series).then(|| v.parse().ok()).flatten()
            })
            .unwrap_or(0.0)
    }

    /// Wait until no scan is queued or running (the scan counter stops moving).
    fn settle(&self) {
        let mut last = -1.0;
        for _ in 0..600 {
            let now = self.metric("svm_scans_total");
            if now == last && self.metric("svm_scans_in_flight") == 0.0 {
                return;
            }
            last = now;
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// Latency summary of one phase.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Phase {
    /// Verdicts received.
    pub verdicts: u64,
    /// Wall time.
    pub seconds: f64,
    /// Verdicts per second.
    pub per_second: f64,
    /// Content bytes sent by the guests.
    pub content_bytes: u64,
    /// Content MB/s (10^6).
    pub mb_per_second: f64,
    /// Latency percentiles in ms.
    pub p50_ms: f64,
    /// p99.
    pub p99_ms: f64,
    /// p99.9.
    pub p999_ms: f64,
    /// Max.
    pub max_ms: f64,
}

fn phase(mut lat_us: Vec<u32>, secs: f64, bytes: u64) -> Phase {
    lat_us.sort_unstable();
    let pct = |p: f64| {
        if lat_us.is_empty() {
            return 0.0;
        }
        let i = ((lat_us.len() as f64 * p).ceil() as usize).clamp(1, lat_us.len()) - 1;
        f64::from(lat_us.get(i).copied().unwrap_or(0)) / 1000.0
    };
    let n = lat_us.len() as u64;
    Phase {
        verdicts: n,
        seconds: secs,
        per_second: n as f64 / secs,
        content_bytes: bytes,
        mb_per_second: bytes as f64 / secs / 1e6,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        p999_ms: pct(0.999),
        max_ms: pct(1.0),
    }
}

/// One repetition's results.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rep {
    /// Daemon RSS before guests connect (KiB).
    pub rss_idle_kib: u64,
    /// After every guest's HELLO/WELCOME (KiB).
    pub rss_connected_kib: u64,
    /// RSS per connected guest with empty identity caches (bytes).
    pub rss_per_guest_bytes: f64,
    /// First boot.
    pub boot1: Phase,
    /// Scans the daemon ran in boot 1.
    pub boot1_scans: f64,
    /// Boot-1 events answered by the timeout policy.
    pub boot1_timeouts: f64,
    /// RSS after boot 1 (KiB).
    pub rss_after_boot1_kib: u64,
    /// RSS growth per identity-cache entry (bytes; an upper bound: includes allocator slack).
    pub rss_per_identity_entry_bytes: f64,
    /// Second boot.
    pub boot2: Phase,
    /// Scans in boot 2 (should be 0).
    pub boot2_scans: f64,
    /// Verdict-cache hits / (hits + misses) during boot 2.
    pub boot2_cache_hit_ratio: f64,
    /// Paced warm phase.
    pub paced: Vec<Phase>,
    /// Peak RSS (KiB).
    pub rss_peak_kib: u64,
    /// Signature swaps during the boots (with --push).
    pub swap: Option<SwapReport>,
}

struct GuestConn {
    rd: FrameReader<tokio::net::unix::OwnedReadHalf>,
    wr: tokio::net::unix::OwnedWriteHalf,
    max_inline: u64,
    /// The set version of the last event sent on this connection (previous passes).
    last_version: u64,
}

/// Run these guests through one pass over their files; returns latencies (µs) and bytes sent.
async fn pass(
    guests: Vec<(u64, GuestConn)>,
    files: Arc<Sample>,
    linked: bool,
    window: usize,
    pace: Option<Duration>,
    pass_no: u64,
    stats: &Arc<VersionStats>,
) -> Result<(Vec<(u64, GuestConn)>, Vec<u32>, u64)> {
    let mut tasks = Vec::new();
    for (gi, g) in guests {
        let (files, stats) = (files.clone(), stats.clone());
        tasks.push((
            gi,
            tokio::spawn(guest_pass(
                g, gi, files, linked, window, pace, pass_no, stats,
            )),
        ));
    }
    let mut lat = Vec::new();
    let mut bytes = 0;
    let mut back = Vec::new();
    for (gi, t) in tasks {
        let (g, l, b) = t.await??;
        lat.extend(l);
        bytes += b;
        back.push((gi, g));
    }
    Ok((back, lat, bytes))
}

/// What the coordinator tells a shard.
enum Cmd {
    Pass { no: u64, pace: Option<Duration> },
}

/// One load-generator thread with its own single-threaded runtime and its share of the
/// guests (no cross-thread wake-ups on the measured path).
#[allow(clippy::too_many_arguments)]
fn shard(
    listeners: Vec<(u64, std::os::unix::net::UnixListener)>,
    files: Arc<Sample>,
    linked: bool,
    window: usize,
    inline_max: u64,
    cmds: std::sync::mpsc::Receiver<Cmd>,
    results: std::sync::mpsc::Sender<Result<(Vec<u32>, u64)>>,
    stats: Arc<VersionStats>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = results.send(Err(e.into()));
            return;
        }
    };
    rt.block_on(async move {
        let mut hs = Vec::new();
        for (gi, l) in listeners {
            hs.push(tokio::spawn(async move {
                l.set_nonblocking(true)?;
                let l = UnixListener::from_std(l)?;
                let (s, _) = tokio::time::timeout(Duration::from_secs(60), l.accept()).await??;
                let (rd, mut wr) = s.into_split();
                let mut rd = FrameReader::new(rd);
                let w = handshake(&mut rd, &mut wr, &format!("g{gi:04}")).await?;
                Ok::<_, anyhow::Error>((
                    gi,
                    GuestConn {
                        rd,
                        wr,
                        max_inline: u64::from(w.max_inline).min(inline_max),
                        last_version: w.sigset_version,
                    },
                ))
            }));
        }
        let mut guests = Vec::new();
        for h in hs {
            match h.await.map_err(anyhow::Error::from).and_then(|r| r) {
                Ok(g) => guests.push(g),
                Err(e) => {
                    let _ = results.send(Err(e));
                    return;
                }
            }
        }
        let _ = results.send(Ok((Vec::new(), 0)));
        // Between passes nothing runs, so waiting here blocks no task.
        while let Ok(Cmd::Pass { no, pace }) = cmds.recv() {
            match pass(guests, files.clone(), linked, window, pace, no, &stats).await {
                Ok((g, lat, bytes)) => {
                    guests = g;
                    let _ = results.send(Ok((lat, bytes)));
                }
                Err(e) => {
                    let _ = results.send(Err(e));
                    return;
                }
            }
        }
    });
}

/// The content guest `gi` has for file `i`: the shared file, or (unique mode) the file with a
/// guest-specific suffix.
fn content(files: &Sample, i: usize, gi: u64, linked: bool) -> Arc<Vec<u8>> {
    let d = files.data.get(i).cloned().unwrap_or_default();
    if linked {
        return d;
    }
    let mut v = Vec::with_capacity(d.len() + 24);
    v.extend_from_slice(&d);
    v.extend_from_slice(format!("\nguest-{gi:06}\n").as_bytes());
    Arc::new(v)
}

#[allow(clippy::too_many_arguments)]
async fn guest_pass(
    g: GuestConn,
    gi: u64,
    files: Arc<Sample>,
    linked: bool,
    window: usize,
    pace: Option<Duration>,
    pass_no: u64,
    stats: Arc<VersionStats>,
) -> Result<(GuestConn, Vec<u32>, u64)> {
    let GuestConn {
        mut rd,
        mut wr,
        max_inline,
        mut last_version,
    } = g;
    let n = files.data.len();
    // Each guest opens its files in its own order.
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
        gi * 7919 + pass_no,
    ));
    let base = Instant::now();
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    // The position of each file's event in this guest's send order.
    let seq: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let permits = Arc::new(tokio::sync::Semaphore::new(window));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let id_base = pass_no << 32;
    // Reader: READ_REQ → READ_DATA; VERDICT → latency.
    let reader = {
        let (files, sent, permits) = (files.clone(), sent.clone(), permits.clone());
        let seq = seq.clone();
        tokio::spawn(async move {
            let mut lat = Vec::with_capacity(n);
            let mut versions: Vec<(u64, u64)> = Vec::with_capacity(n);
            while lat.len() < n {
                match rd.next().await? {
                    Some(Message::Verdict(v)) if v.request_id >> 32 == pass_no => {
                        let i = (v.request_id & 0xFFFF_FFFF) as usize;
                        let at = seq.get(i).map_or(0, |a| a.load(Ordering::Relaxed));
                        versions.push((at, v.sigset_version));
                        stats.max.fetch_max(v.sigset_version, Ordering::Relaxed);
                        let t0 = sent.get(i).map_or(0, |a| a.load(Ordering::Relaxed));
                        let now = base.elapsed().as_nanos() as u64;
                        lat.push(((now.saturating_sub(t0)) / 1000).min(u64::from(u32::MAX)) as u32);
                        permits.add_permits(1);
                    }
                    Some(Message::ReadReq(r)) => {
                        // Also from an earlier pass: after a deadline verdict the SVM goes
                        // on reading to fill its caches, and an agent must keep answering.
                        let i = (r.request_id & 0xFFFF_FFFF) as usize;
                        let d = content(&files, i, gi, linked);
                        let s = (r.offset as usize).min(d.len());
                        let e = (s + r.len as usize).min(d.len());
                        let m = Message::ReadData(ReadData {
                            request_id: r.request_id,
                            offset: r.offset,
                            status: if e - s == r.len as usize {
                                ReadStatus::Ok
                            } else {
                                ReadStatus::Eof
                            },
                            data: d.get(s..e).unwrap_or_default().to_vec(),
                        });
                        let _ = tx.send(m.to_frame());
                    }
                    Some(Message::Error(e)) => {
                        bail!("guest {gi}: ERROR {:?}: {}", e.code, e.message)
                    }
                    Some(_) => {}
                    None => bail!("guest {gi}: the SVM closed the connection"),
                }
            }
            // Versions only move forward in send order (swaps are atomic, and each event's
            // set is chosen when the SVM reads it).
            versions.sort_unstable();
            for &(_, v) in &versions {
                if v < last_version {
                    stats.regressions.fetch_add(1, Ordering::Relaxed);
                }
                last_version = last_version.max(v);
            }
            Ok::<_, anyhow::Error>((rd, lat, last_version))
        })
    };
    let mut next = 0usize;
    let mut out = Vec::with_capacity(64 << 10);
    let mut bytes = 0u64;
    // Guests are not in phase: each starts at its own offset within the period, or every
    // period would begin with a burst of one event per guest.
    let mut tick = pace.map(|p| {
        let offset = p.mul_f64((gi as f64 * 0.618_033_988_75).fract());
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + offset, p);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    let event = |i: usize, bytes: &mut u64, out: &mut Vec<u8>, sched_ns: u64| {
        let fi = order.get(i).copied().unwrap_or(0);
        let d = content(&files, fi, gi, linked);
        let size = d.len() as u64;
        let inline = size <= max_inline;
        if inline {
            *bytes += size;
        }
        if let Some(a) = sent.get(fi) {
            a.store(sched_ns, Ordering::Relaxed);
        }
        if let Some(a) = seq.get(fi) {
            a.store(i as u64, Ordering::Relaxed);
        }
        Message::FileEvent(FileEvent {
            request_id: id_base + fi as u64,
            op: FileOp::Open,
            deadline_ms: 0,
            identity: FileIdentity::Posix {
                dev: 2049,
                ino: 100_000 + fi as u64 + if linked { 0 } else { gi << 20 },
                size,
                mtime_ns: 1_700_000_000_000_000_000,
                ctime_ns: 1_700_000_000_000_000_000,
            },
            size,
            path: files.paths.get(fi).cloned().unwrap_or_default(),
            content: if inline {
                Content::Inline(d.to_vec())
            } else {
                Content::Read
            },
        })
        .encode(out);
    };
    loop {
        while let Ok(f) = rx.try_recv() {
            bytes += f.len() as u64;
            out.extend_from_slice(&f);
        }
        if tick.is_none() {
            while next < n {
                match permits.clone().try_acquire_owned() {
                    Ok(p) => {
                        p.forget();
                        event(next, &mut bytes, &mut out, base.elapsed().as_nanos() as u64);
                        next += 1;
                    }
                    Err(_) => break,
                }
            }
        }
        if !out.is_empty() {
            wr.write_all(&out).await?;
            out.clear();
            continue;
        }
        if next >= n && reader.is_finished() {
            break;
        }
        tokio::select! {
            f = rx.recv() => match f {
                Some(f) => { bytes += f.len() as u64; out.extend_from_slice(&f); }
                None => break,
            },
            p = permits.clone().acquire_owned(), if next < n && tick.is_none() => {
                if let Ok(p) = p {
                    p.forget();
                    event(next, &mut bytes, &mut out, base.elapsed().as_nanos() as u64);
                    next += 1;
                }
            },
            t = async { match tick.as_mut() { Some(t) => t.tick().await, None => std::future::pending().await } }, if next < n => {
                // Paced (open loop: no window, so the SVM cannot slow the sender down);
                // latency from the moment the event is written, so tokio's 1 ms timer
                // granularity is not counted against the SVM.
                let _ = t;
                event(next, &mut bytes, &mut out, base.elapsed().as_nanos() as u64);
                next += 1;
            },
            _ = tokio::time::sleep(Duration::from_millis(20)), if next >= n => {}
        }
    }
    let (rd, lat, last_version) = reader.await??;
    Ok((
        GuestConn {
            rd,
            wr,
            max_inline,
            last_version,
        },
        lat,
        bytes,
    ))
}

/// Run the storm and print the results.
pub fn run(o: &StormOptions) -> Result<()> {
    let t = Instant::now();
    let files = Arc::new(sample_files(o)?);
    eprintln!(
        "bench-storm: {} files from {} ({:.1} MB in all, largest {} bytes) sampled in {:.1}s",
        files.data.len(),
        o.from.display(),
        files.total as f64 / 1e6,
        files.data.iter().map(|d| d.len()).max().unwrap_or(0),
        t.elapsed().as_secs_f64()
    );
    let mut reps = Vec::new();
    for rep in 0..o.reps {
        let r = one_rep(o, files.clone())?;
        eprintln!(
            "rep {}: boot1 {:.0} verdicts/s p99 {:.2} ms ({} scans); boot2 {:.0} verdicts/s p50 {:.3} p99 {:.3} p999 {:.3} ms; {:.0} B/guest",
            rep + 1,
            r.boot1.per_second,
            r.boot1.p99_ms,
            r.boot1_scans,
            r.boot2.per_second,
            r.boot2.p50_ms,
            r.boot2.p99_ms,
            r.boot2.p999_ms,
            r.rss_per_guest_bytes
        );
        if let Some(sw) = &r.swap {
            eprintln!(
                "rep {}: swaps: HTTP {:?} in {:?} ms; highest version in a verdict {}; version regressions {}; boot1 deadline fallbacks {}; boot2 scans {} cache hit ratio {:.3}",
                rep + 1,
                sw.statuses,
                sw.push_ms.iter().map(|m| (m * 10.0).round() / 10.0).collect::<Vec<_>>(),
                sw.max_version_seen,
                sw.version_regressions,
                r.boot1_timeouts,
                r.boot2_scans,
                r.boot2_cache_hit_ratio
            );
        }
        reps.push(r);
    }
    let summary = serde_json::json!({
        "guests": o.guests,
        "files_per_guest": files.data.len(),
        "file_set_bytes": files.total,
        "mode": if o.linked { "linked" } else { "unique" },
        "window": o.window,
        "events_per_boot": o.guests * files.data.len(),
        "unique_contents": if o.linked { files.unique } else { files.unique * o.guests },
        "reps": reps,
    });
    if o.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_table(o, &files, &reps);
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v.get(n / 2).copied().unwrap_or(0.0),
        n => {
            (v.get(n / 2 - 1).copied().unwrap_or(0.0) + v.get(n / 2).copied().unwrap_or(0.0)) / 2.0
        }
    }
}

fn print_table(o: &StormOptions, files: &Sample, reps: &[Rep]) {
    let med = |f: &dyn Fn(&Rep) -> f64| median(reps.iter().map(f).collect());
    let events = (o.guests * files.data.len()) as f64;
    println!(
        "svm bench-storm: {} guests x {} files ({} mode, {:.1} MB per guest), window {}, {} fresh daemon(s); medians:",
        o.guests,
        files.data.len(),
        if o.linked { "linked-clone" } else { "unique" },
        files.total as f64 / 1e6,
        o.window,
        reps.len()
    );
    let scans = med(&|r| r.boot1_scans);
    // In unique mode each guest's files carry its own suffix; duplicates inside one guest's
    // set stay duplicates.
    let unique = if o.linked {
        files.unique
    } else {
        files.unique * o.guests
    };
    println!(
        "  boot 1 (cold):  {:>10.0} verdicts/s  {:>8.1} MB/s content  p50 {:.2} ms  p99 {:.2} ms  p999 {:.2} ms  scans {} for {} unique contents ({:.0}x dedup), {} deadline fallbacks",
        med(&|r| r.boot1.per_second),
        med(&|r| r.boot1.mb_per_second),
        med(&|r| r.boot1.p50_ms),
        med(&|r| r.boot1.p99_ms),
        med(&|r| r.boot1.p999_ms),
        scans,
        unique,
        events / scans.max(1.0),
        med(&|r| r.boot1_timeouts)
    );
    println!(
        "  boot 2 (warm):  {:>10.0} verdicts/s  p50 {:.3} ms  p99 {:.3} ms  p999 {:.3} ms  scans {}",
        med(&|r| r.boot2.per_second),
        med(&|r| r.boot2.p50_ms),
        med(&|r| r.boot2.p99_ms),
        med(&|r| r.boot2.p999_ms),
        med(&|r| r.boot2_scans)
    );
    for (i, rate) in o.rates.iter().enumerate() {
        let p = |f: &dyn Fn(&Phase) -> f64| {
            median(reps.iter().filter_map(|r| r.paced.get(i)).map(f).collect())
        };
        println!(
            "  paced {:>7}/s: {:>10.0} verdicts/s  p50 {:.3} ms  p99 {:.3} ms  p999 {:.3} ms",
            rate,
            p(&|x| x.per_second),
            p(&|x| x.p50_ms),
            p(&|x| x.p99_ms),
            p(&|x| x.p999_ms)
        );
    }
    println!(
        "  memory: idle {:.1} MiB, {} guests connected {:.1} MiB ({:.1} KiB per guest), after boot 1 {:.1} MiB ({:.0} B per identity entry), peak {:.1} MiB",
        med(&|r| r.rss_idle_kib as f64) / 1024.0,
        o.guests,
        med(&|r| r.rss_connected_kib as f64) / 1024.0,
        med(&|r| r.rss_per_guest_bytes) / 1024.0,
        med(&|r| r.rss_after_boot1_kib as f64) / 1024.0,
        med(&|r| r.rss_per_identity_entry_bytes),
        med(&|r| r.rss_peak_kib as f64) / 1024.0
    );
}

fn one_rep(o: &StormOptions, files: Arc<Sample>) -> Result<Rep> {
    let dir = tempfile::Builder::new().prefix("svm-storm").tempdir()?;
    let vms = dir.path().join("vms");
    std::fs::create_dir_all(&vms)?;
    let daemon = Daemon::start(o, dir.path())?;
    std::thread::sleep(Duration::from_millis(300));
    let rss_idle = daemon.rss_kib("VmRSS:");
    // The guests' sockets appear; the daemon connects to each. Guests are spread over the
    // generator's threads.
    let k = o.client_threads.max(1);
    let mut parts: Vec<Vec<(u64, std::os::unix::net::UnixListener)>> =
        (0..k).map(|_| Vec::new()).collect();
    for i in 0..o.guests {
        let l = std::os::unix::net::UnixListener::bind(vms.join(format!("g{i:04}.sock")))?;
        if let Some(p) = parts.get_mut(i % k) {
            p.push((i as u64, l));
        }
    }
    let (res_tx, res_rx) = std::sync::mpsc::channel();
    let stats = Arc::new(VersionStats::default());
    let mut cmd_txs = Vec::new();
    let mut threads = Vec::new();
    for part in parts {
        let (tx, rx) = std::sync::mpsc::channel();
        cmd_txs.push(tx);
        let (files, res_tx, stats) = (files.clone(), res_tx.clone(), stats.clone());
        let (linked, window, inline_max) = (o.linked, o.window, o.inline_max);
        threads.push(std::thread::spawn(move || {
            shard(part, files, linked, window, inline_max, rx, res_tx, stats)
        }));
    }
    let collect = |n: usize| -> Result<(Vec<u32>, u64)> {
        let mut lat = Vec::new();
        let mut bytes = 0;
        for _ in 0..n {
            let (l, b) = res_rx.recv()??;
            lat.extend(l);
            bytes += b;
        }
        Ok((lat, bytes))
    };
    collect(k)?;
    std::thread::sleep(Duration::from_millis(300));
    let rss_connected = daemon.rss_kib("VmRSS:");
    let run = |no: u64, pace: Option<Duration>| -> Result<Phase> {
        let t = Instant::now();
        for c in &cmd_txs {
            c.send(Cmd::Pass { no, pace })?;
        }
        let (lat, bytes) = collect(k)?;
        Ok(phase(lat, t.elapsed().as_secs_f64(), bytes))
    };
    // Swaps under load: bundles pushed to the admin API while the boots run.
    let pusher = match (&o.admin_socket, o.push.is_empty()) {
        (Some(sock), false) if !o.push_between => {
            let (sock, bundles, every) = (sock.clone(), o.push.clone(), o.push_every);
            Some(std::thread::spawn(move || push_all(&sock, &bundles, every)))
        }
        _ => None,
    };
    let boot1 = run(1, None)?;
    // Events answered by a fallback at their deadline leave scans running: let them finish
    // so they are counted in boot 1, not boot 2.
    daemon.settle();
    let boot1_scans = daemon.metric("svm_scans_total");
    let boot1_timeouts = daemon.metric("svm_events_total{op=\"open\",result=\"timeout\"}");
    let rss_after_boot1 = daemon.rss_kib("VmRSS:");
    let entries = (o.guests * files.data.len()) as f64;
    let between = match (&o.admin_socket, o.push_between) {
        (Some(sock), true) => Some(push_all(sock, &o.push, Duration::ZERO)?),
        _ => None,
    };
    let (hits0, misses0) = (
        daemon.metric("svm_cache_hits_total"),
        daemon.metric("svm_cache_misses_total"),
    );
    let scans0 = daemon.metric("svm_scans_total");
    let boot2 = run(2, None)?;
    let boot2_scans = daemon.metric("svm_scans_total") - scans0;
    let hits = daemon.metric("svm_cache_hits_total") - hits0;
    let misses = daemon.metric("svm_cache_misses_total") - misses0;
    let boot2_cache_hit_ratio = hits / (hits + misses).max(1.0);
    let mut paced = Vec::new();
    for (i, rate) in o.rates.iter().enumerate() {
        let per_guest = Duration::from_secs_f64(o.guests as f64 / (*rate).max(1) as f64);
        paced.push(run(3 + i as u64, Some(per_guest))?);
    }
    let rss_peak = daemon.rss_kib("VmHWM:");
    let pushes = match (pusher, between) {
        (Some(h), _) => Some(
            h.join()
                .map_err(|_| anyhow::anyhow!("the push thread panicked"))??,
        ),
        (None, b) => b,
    };
    let swap = pushes.map(|pushes| SwapReport {
        statuses: pushes.iter().map(|p| p.0).collect(),
        push_ms: pushes.iter().map(|p| p.1).collect(),
        version_regressions: stats.regressions.load(Ordering::Relaxed),
        max_version_seen: stats.max.load(Ordering::Relaxed),
    });
    drop(cmd_txs);
    for t in threads {
        let _ = t.join();
    }
    daemon.stop();
    Ok(Rep {
        rss_idle_kib: rss_idle,
        rss_connected_kib: rss_connected,
        rss_per_guest_bytes: (rss_connected.saturating_sub(rss_idle) * 1024) as f64
            / o.guests as f64,
        boot1,
        boot1_scans,
        boot1_timeouts,
        rss_after_boot1_kib: rss_after_boot1,
        rss_per_identity_entry_bytes: (rss_after_boot1.saturating_sub(rss_connected) * 1024) as f64
            / entries,
        boot2,
        boot2_scans,
        boot2_cache_hit_ratio,
        paced,
        rss_peak_kib: rss_peak,
        swap,
    })
}

/// POST each bundle to the admin socket, `every` apart: (HTTP status, milliseconds).
fn push_all(sock: &Path, bundles: &[PathBuf], every: Duration) -> Result<Vec<(u16, f64)>> {
    use std::io::{Read, Write};
    let mut out = Vec::new();
    for b in bundles {
        std::thread::sleep(every);
        let body = std::fs::read(b).with_context(|| format!("read {}", b.display()))?;
        let t = Instant::now();
        let mut s = std::os::unix::net::UnixStream::connect(sock)
            .with_context(|| format!("admin socket {}", sock.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(300)))?;
        write!(
            s,
            "POST /v1/signatures HTTP/1.1\r\nHost: svm\r\nConnection: close\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )?;
        s.write_all(&body)?;
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        let status = String::from_utf8_lossy(&resp)
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        out.push((status, t.elapsed().as_secs_f64() * 1e3));
    }
    Ok(out)
}
