//! The event pipeline: per-VM identity cache → content (inline or pulled with `READ_REQ`,
//! spooled to a sealed memfd above a threshold) → BLAKE3 → shared verdict cache → single
//! flight → scheduler → scanner threads → policy → verdict.

use super::audit::{now_rfc3339, Record};
use super::metrics::{EventLabels, FallbackLabels, VmLabels};
use super::sched::{self, Prio};
use super::Shared;
use crate::config::{Fallback, Group, OnInfected};
use hypervisor_api::proto::{
    Content, ErrorCode, FileEvent, FileIdentity, FileOp, Invalidate, Message, ReadData, ReadReq,
    ReadStatus, VerdictMsg, WireAction, WireStatus,
};
use scanner::{Limits, ScanResult, Scanner};
use signatures::SignatureSet;
use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// The signature set in use, with its version and cache epoch.
#[derive(Debug)]
pub struct SigState {
    /// The set.
    pub set: Arc<SignatureSet>,
    /// Its version (names every verdict made with it).
    pub version: u64,
    /// The cache epoch announced to agents.
    pub epoch: u64,
    /// The key id of the bundle's publisher (none: signature files given with `-d`).
    pub publisher: Option<String>,
    /// When it was loaded (RFC 3339).
    pub loaded_at: String,
    /// Earlier versions (newest first) whose clean verdicts carry over: by a hash lookup in
    /// this set, and, when body signatures or YARA rules were added since, a scan against
    /// those alone.
    pub revalidate: Vec<Since>,
    /// The count of clean verdicts evicted from the cache when the epoch began (see
    /// [`Shared::clean_evictions`](super::Shared)).
    pub epoch_evictions: u64,
}

/// An earlier version whose clean verdicts this set revalidates.
#[derive(Debug, Clone)]
pub struct Since {
    /// The version.
    pub version: u64,
    /// The signatures added since it, to scan cached clean content against (empty: a hash
    /// lookup suffices).
    pub deltas: Vec<Arc<SignatureSet>>,
}

/// What the verdict cache holds for a content under the set in use.
#[derive(Debug)]
pub enum Cached {
    /// A verdict valid for this version.
    Hit(Arc<CacheRecord>),
    /// A clean verdict of an earlier version that holds if the content does not match the
    /// signatures added since (scanned against those alone).
    Delta {
        /// The earlier verdict (its digests).
        old: Arc<CacheRecord>,
        /// The added signatures.
        deltas: Vec<Arc<SignatureSet>>,
    },
}

/// Verdict-cache key: content hash and signature set version.
pub type CacheKey = ([u8; 32], u64);

/// What a scan concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing found.
    Clean,
    /// Signatures matched.
    Infected(Vec<String>),
    /// Over a size or time limit.
    Unscanned(String),
    /// Could not be read or scanned.
    Error(String),
}

/// A verdict-cache entry: the outcome, and the content's size and other digests so a later
/// hash-only update can revalidate it without the content (#6).
#[derive(Debug)]
pub struct CacheRecord {
    /// Clean or infected (other outcomes are never cached); shared with every hit.
    pub outcome: Arc<Outcome>,
    /// Content size.
    pub size: u64,
    /// MD5.
    pub md5: [u8; 16],
    /// SHA-1.
    pub sha1: [u8; 20],
    /// SHA-256.
    pub sha256: [u8; 32],
}

/// Weighs cache entries in bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordWeight;

impl quick_cache::Weighter<CacheKey, Arc<CacheRecord>> for RecordWeight {
    fn weight(&self, _k: &CacheKey, v: &Arc<CacheRecord>) -> u64 {
        let names = match &*v.outcome {
            Outcome::Infected(n) => n.iter().map(|s| s.len() + 24).sum::<usize>(),
            _ => 0,
        };
        (std::mem::size_of::<CacheKey>() + std::mem::size_of::<CacheRecord>() + 48 + names) as u64
    }
}

/// Counts the clean verdicts the cache evicts: while none is, every clean verdict an agent
/// holds is still in the cache, and an update can be checked against all of them.
#[derive(Debug, Clone)]
pub struct CountCleanEvictions(pub prometheus_client::metrics::counter::Counter);

impl quick_cache::Lifecycle<CacheKey, Arc<CacheRecord>> for CountCleanEvictions {
    type RequestState = ();
    fn begin_request(&self) {}
    fn on_evict(&self, _: &mut (), _: CacheKey, v: Arc<CacheRecord>) {
        if matches!(*v.outcome, Outcome::Clean) {
            self.0.inc();
        }
    }
}

/// The verdict cache: content hash and set version → verdict, weighed in bytes.
pub type VerdictCache = quick_cache::sync::Cache<
    CacheKey,
    Arc<CacheRecord>,
    RecordWeight,
    quick_cache::DefaultHashBuilder,
    CountCleanEvictions,
>;

/// What a per-VM identity maps to.
#[derive(Debug, Clone, Copy)]
pub struct IdEntry {
    /// BLAKE3 of the content the SVM read for it.
    pub hash: [u8; 32],
}

/// State kept per VM (across its connections).
#[derive(Debug)]
pub struct VmState {
    /// The VM id.
    pub name: Arc<str>,
    /// Scheduler queue index.
    pub idx: u32,
    /// Its metrics label (its name, or `other` past the cardinality cap).
    pub label: VmLabels,
    /// Identity → content hash; trusted only for this VM.
    pub identity: Mutex<quick_cache::unsync::Cache<FileIdentity, IdEntry>>,
    /// Bytes this VM has buffered or spooled right now.
    pub spooled: AtomicU64,
}

impl VmState {
    /// Look up an identity.
    pub fn identity_get(&self, id: &FileIdentity) -> Option<IdEntry> {
        if !id.is_some() {
            return None;
        }
        self.identity
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .copied()
    }
    fn identity_put(&self, id: FileIdentity, e: IdEntry) {
        if id.is_some() {
            self.identity
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id, e);
        }
    }
    /// Entries in the identity cache.
    pub fn identity_len(&self) -> usize {
        self.identity
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Content waiting for a scanner.
#[derive(Debug)]
pub enum Body {
    /// Small content.
    Mem(Vec<u8>),
    /// Large content, in a sealed memfd.
    File(std::fs::File),
}

/// Result of a flight: the outcome and whether it is final (cacheable).
pub type FlightResult = Option<Arc<Outcome>>;

/// A scan job.
#[derive(Debug)]
pub struct Job {
    key: CacheKey,
    sigs: Arc<SigState>,
    /// Scan against these added signatures only, a clean verdict of an earlier version
    /// holding otherwise (its digests are reused).
    delta: Option<(Vec<Arc<SignatureSet>>, Arc<CacheRecord>)>,
    body: Body,
    size: u64,
    done: watch::Sender<FlightResult>,
    _spool: SpoolGuard,
}

/// Releases a VM's spool reservation when the content is gone.
#[derive(Debug)]
pub struct SpoolGuard {
    vm: Arc<VmState>,
    bytes: u64,
}

impl SpoolGuard {
    /// Reserve `bytes` more of `vm`'s spool cap (`cap`); `None` when they do not fit.
    pub fn reserve(vm: &Arc<VmState>, bytes: u64, cap: u64) -> Option<SpoolGuard> {
        let before = vm.spooled.fetch_add(bytes, Ordering::Relaxed);
        let guard = SpoolGuard {
            vm: vm.clone(),
            bytes,
        };
        (before.saturating_add(bytes) <= cap).then_some(guard)
    }
}

impl Drop for SpoolGuard {
    fn drop(&mut self) {
        self.vm.spooled.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Single-flight table: content key → the result of the scan in flight.
pub type Flights = Mutex<HashMap<CacheKey, watch::Receiver<FlightResult>>>;

/// What a connection gets back from an event task.
#[derive(Debug)]
pub enum ConnOut {
    /// Send these bytes.
    Frame(Vec<u8>),
    /// The event is finished (remove it from the pending table).
    Done(u64),
    /// A protocol violation: send this `ERROR` and close.
    Fatal(ErrorCode, String),
}

/// Why the work for an event ended without an outcome from a scan.
#[derive(Debug)]
enum Failure {
    /// The agent did not answer a `READ_REQ` in time (closes the connection).
    ReadTimeout,
    /// The agent broke the read protocol (closes the connection).
    Protocol(String),
    /// The connection went away.
    Disconnected,
}

/// The outcome of an event and where it came from.
#[derive(Debug)]
struct Decided {
    outcome: Arc<Outcome>,
    hash: Option<[u8; 32]>,
    cached: bool,
}

/// Everything one event task needs.
#[derive(Debug, Clone)]
pub struct EventCtx {
    /// Daemon state.
    pub shared: Arc<Shared>,
    /// The VM (from the transport).
    pub vm: Arc<VmState>,
    /// Its session id.
    pub session: u64,
    /// Where frames go.
    pub out: mpsc::Sender<ConnOut>,
}

/// The verdict's action for an outcome under a group's policies, and the policy that decided
/// when it was a fallback.
fn decide(g: &Group, o: &Outcome) -> (WireAction, Option<(&'static str, Fallback)>) {
    let fb = |f: Fallback| match f {
        Fallback::Allow => WireAction::Allow,
        Fallback::Deny => WireAction::Deny,
    };
    match o {
        Outcome::Clean => (WireAction::Allow, None),
        Outcome::Infected(_) => match g.cfg.on_infected {
            OnInfected::Deny => (WireAction::Deny, None),
            OnInfected::AllowAndLog => (WireAction::Allow, Some(("on_infected", Fallback::Allow))),
        },
        Outcome::Unscanned(_) => (
            fb(g.cfg.on_unscanned),
            Some(("on_unscanned", g.cfg.on_unscanned)),
        ),
        Outcome::Error(_) => (fb(g.cfg.on_error), Some(("on_error", g.cfg.on_error))),
    }
}

fn result_name(o: &Outcome) -> &'static str {
    match o {
        Outcome::Clean => "clean",
        Outcome::Infected(_) => "infected",
        Outcome::Unscanned(_) => "unscanned",
        Outcome::Error(_) => "error",
    }
}

fn wire_status(o: &Outcome) -> WireStatus {
    match o {
        Outcome::Clean => WireStatus::Clean,
        Outcome::Infected(n) => WireStatus::Infected(n.clone()),
        Outcome::Unscanned(r) | Outcome::Error(r) => WireStatus::Unscanned(r.clone()),
    }
}

/// Try to answer from the identity cache and the verdict cache alone (no task, no content).
/// Returns the encoded verdict when it can.
pub fn fast_path(
    ctx: &EventCtx,
    ev: &FileEvent,
    group: &Group,
    sigs: &SigState,
    start: Instant,
) -> Option<Vec<u8>> {
    if !ev.op.waits() {
        return None;
    }
    let id = ctx.vm.identity_get(&ev.identity)?;
    let Cached::Hit(rec) = cached(&ctx.shared, sigs, id.hash)? else {
        // The content is needed for a scan against the added signatures.
        return None;
    };
    let m = &ctx.shared.metrics;
    m.identity_hits.inc();
    m.cache_hits.inc();
    let d = Decided {
        outcome: rec.outcome.clone(),
        hash: Some(id.hash),
        cached: true,
    };
    Some(finish(ctx, ev, group, sigs, &d, start, None))
}

/// The cached verdict for content `hash` under `sigs`: one made with this version, or a
/// clean one made with an earlier version this set revalidates ([`SigState::revalidate`]):
/// the content's digests are looked up in this set (no read, no rescan), and the verdict is
/// cached under this version; when signatures were added since, [`Cached::Delta`] asks for a
/// scan against those alone.
pub fn cached(shared: &Shared, sigs: &SigState, hash: [u8; 32]) -> Option<Cached> {
    if let Some(rec) = shared.cache.get(&(hash, sigs.version)) {
        return Some(Cached::Hit(rec));
    }
    for since in &sigs.revalidate {
        let Some(old) = shared.cache.get(&(hash, since.version)) else {
            continue;
        };
        // Infected verdicts are rare; they are rescanned rather than revalidated.
        if !matches!(*old.outcome, Outcome::Clean) {
            return None;
        }
        let hits = scanner::hash_lookup(&sigs.set, old.size, &old.md5, &old.sha1, &old.sha256);
        if hits.is_empty() && !since.deltas.is_empty() {
            return Some(Cached::Delta {
                old,
                deltas: since.deltas.clone(),
            });
        }
        let outcome = if hits.is_empty() {
            old.outcome.clone()
        } else {
            Arc::new(Outcome::Infected(
                hits.into_iter().map(|m| m.name).collect(),
            ))
        };
        let rec = Arc::new(CacheRecord {
            outcome,
            size: old.size,
            md5: old.md5,
            sha1: old.sha1,
            sha256: old.sha256,
        });
        shared.cache.insert((hash, sigs.version), rec.clone());
        shared.metrics.cache_revalidated.inc();
        return Some(Cached::Hit(rec));
    }
    None
}

/// A scan asked for outside the guest protocol (the clamd-compatible listener): the same
/// path as a guest event (exclusions, size limit, verdict cache, single flight, scheduler),
/// then metrics and audit. `ev.content` is `Inline` or `Fd` (with `fd`).
pub async fn scan_request(
    ctx: &EventCtx,
    mut ev: FileEvent,
    fd: Option<std::fs::File>,
    group: &Group,
    sigs: &Arc<SigState>,
) -> Arc<Outcome> {
    let start = Instant::now();
    let content = std::mem::replace(&mut ev.content, Content::Read);
    let d = obtain(ctx, &ev, content, fd, group, sigs, None)
        .await
        .unwrap_or_else(|f| Decided {
            outcome: Arc::new(Outcome::Error(match f {
                Failure::ReadTimeout => "read timeout".into(),
                Failure::Protocol(p) => p,
                Failure::Disconnected => "disconnected".into(),
            })),
            hash: None,
            cached: false,
        });
    let _ = finish(ctx, &ev, group, sigs, &d, start, None);
    d.outcome
}

/// Build the verdict frame for a decided outcome, with metrics and audit.
fn finish(
    ctx: &EventCtx,
    ev: &FileEvent,
    group: &Group,
    sigs: &SigState,
    d: &Decided,
    start: Instant,
    timeout_reason: Option<String>,
) -> Vec<u8> {
    let m = &ctx.shared.metrics;
    let (action, fallback, result, status) = match &timeout_reason {
        Some(r) => {
            let a = match group.cfg.on_timeout {
                Fallback::Allow => WireAction::Allow,
                Fallback::Deny => WireAction::Deny,
            };
            (
                a,
                Some(("on_timeout", group.cfg.on_timeout)),
                "timeout",
                WireStatus::Unscanned(r.clone()),
            )
        }
        None => {
            let (a, f) = decide(group, &d.outcome);
            (a, f, result_name(&d.outcome), wire_status(&d.outcome))
        }
    };
    let latency = start.elapsed();
    m.verdict_seconds.observe(latency.as_secs_f64());
    m.events
        .get_or_create(&EventLabels {
            op: ev.op.as_str(),
            result,
        })
        .inc();
    m.vm_events.get_or_create(&ctx.vm.label).inc();
    let action_name = match action {
        WireAction::Allow => "allow",
        _ => "deny",
    };
    if let Some((policy, _)) = fallback {
        m.fallbacks
            .get_or_create(&FallbackLabels {
                policy,
                action: action_name,
            })
            .inc();
    }
    if result != "clean" {
        m.vm_detections.get_or_create(&ctx.vm.label).inc();
        let reason = match (&timeout_reason, &*d.outcome) {
            (Some(r), _) => Some(r.clone()),
            (None, Outcome::Unscanned(r) | Outcome::Error(r)) => Some(r.clone()),
            _ => None,
        };
        ctx.shared.audit.log(
            Record {
                time: now_rfc3339(),
                vm: ctx.vm.name.clone(),
                group: group.name.clone(),
                op: ev.op.as_str(),
                path: String::from_utf8_lossy(&ev.path).into_owned(),
                content_hash: d.hash.map(hex::encode),
                signatures: match &*d.outcome {
                    Outcome::Infected(n) if timeout_reason.is_none() => n.clone(),
                    _ => Vec::new(),
                },
                sigset_version: sigs.version,
                action: if ev.op.waits() { action_name } else { "none" },
                result,
                policy: fallback.map(|f| f.0),
                reason,
                cached: d.cached,
                latency_ms: latency.as_secs_f64() * 1e3,
                session: ctx.session,
            },
            &m.audit_dropped,
        );
    }
    Message::Verdict(VerdictMsg {
        request_id: ev.request_id,
        action,
        status,
        sigset_version: sigs.version,
        cache_epoch: sigs.epoch,
    })
    .to_frame()
}

/// Run one event to its end: the verdict (or a fallback at the deadline), then the rest of
/// the work so the cache is filled, then `Done`. `sigs` is the set chosen when the event was
/// read (in the guest's order); a swap during the event does not change it.
#[allow(clippy::too_many_arguments)]
pub async fn run_event(
    ctx: EventCtx,
    mut ev: FileEvent,
    group: Arc<Group>,
    reads: Option<mpsc::Receiver<ReadData>>,
    fd: Option<std::fs::File>,
    start: Instant,
    deadline: Instant,
    sigs: Arc<SigState>,
) {
    // The content moves into the pipeline; `ev` keeps the metadata.
    let content = std::mem::replace(&mut ev.content, Content::Read);
    let work = obtain(&ctx, &ev, content, fd, &group, &sigs, reads);
    tokio::pin!(work);
    let mut answered = false;
    let result = if ev.op.waits() {
        tokio::select! {
            r = &mut work => r,
            _ = tokio::time::sleep_until(deadline.into()) => {
                let reason = format!("no verdict within the {} ms deadline", deadline.saturating_duration_since(start).as_millis());
                let d = Decided { outcome: Arc::new(Outcome::Clean), hash: None, cached: false };
                let f = finish(&ctx, &ev, &group, &sigs, &d, start, Some(reason));
                let _ = ctx.out.send(ConnOut::Frame(f)).await;
                answered = true;
                work.await
            }
        }
    } else {
        work.await
    };
    match result {
        Ok(d) => {
            if ev.op.waits() {
                if !answered {
                    let f = finish(&ctx, &ev, &group, &sigs, &d, start, None);
                    let _ = ctx.out.send(ConnOut::Frame(f)).await;
                }
            } else {
                // A notification: audit and metrics only; infected → tell the agent to drop
                // any clean verdict it holds for this file.
                let _ = finish(&ctx, &ev, &group, &sigs, &d, start, None);
                if matches!(&*d.outcome, Outcome::Infected(_)) {
                    let inv = Message::Invalidate(Invalidate {
                        identity: ev.identity,
                        path: ev.path.clone(),
                        cache_epoch: sigs.epoch,
                    })
                    .to_frame();
                    let _ = ctx.out.send(ConnOut::Frame(inv)).await;
                }
            }
        }
        Err(Failure::ReadTimeout) => {
            let _ = ctx
                .out
                .send(ConnOut::Fatal(
                    ErrorCode::Timeout,
                    format!("request {}: no READ_DATA in time", ev.request_id),
                ))
                .await;
        }
        Err(Failure::Protocol(msg)) => {
            let _ = ctx
                .out
                .send(ConnOut::Fatal(ErrorCode::Malformed, msg))
                .await;
        }
        Err(Failure::Disconnected) => {
            ctx.shared
                .metrics
                .events
                .get_or_create(&EventLabels {
                    op: ev.op.as_str(),
                    result: "disconnected",
                })
                .inc();
        }
    }
    let _ = ctx.out.send(ConnOut::Done(ev.request_id)).await;
}

/// The work of one event: an outcome, from the caches or a scan.
async fn obtain(
    ctx: &EventCtx,
    ev: &FileEvent,
    content: Content,
    fd: Option<std::fs::File>,
    group: &Group,
    sigs: &Arc<SigState>,
    reads: Option<mpsc::Receiver<ReadData>>,
) -> Result<Decided, Failure> {
    let shared = &ctx.shared;
    let m = &shared.metrics;
    // Excluded by policy: allowed without a scan, counted.
    if !group.exclude.is_empty() {
        let p = String::from_utf8_lossy(&ev.path);
        if group.exclude.is_match(p.as_ref()) {
            drop(reads); // nothing was asked for
            return Ok(Decided {
                outcome: Arc::new(Outcome::Unscanned("excluded by policy".into())),
                hash: None,
                cached: false,
            });
        }
    }
    if ev.size > group.cfg.max_file_size {
        drop(reads); // nothing was asked for
        return Ok(Decided {
            outcome: Arc::new(Outcome::Unscanned(format!(
                "size {} exceeds the group's limit of {} bytes",
                ev.size, group.cfg.max_file_size
            ))),
            hash: None,
            cached: false,
        });
    }
    // The identity and verdict caches were consulted by `fast_path` before this task was
    // spawned; a close_write means the content changed, and its new identity entry is filled
    // after the read below.
    // Reserve the claimed size against the VM's cap before reading anything.
    let cap = shared.config.load().cfg.server.per_vm_spool_cap;
    let reserve = ev.size;
    let Some(guard) = SpoolGuard::reserve(&ctx.vm, reserve, cap) else {
        drop(reads); // nothing was asked for
        return Ok(Decided {
            outcome: Arc::new(Outcome::Error(format!(
                "the VM's spool cap of {cap} bytes is in use"
            ))),
            hash: None,
            cached: false,
        });
    };
    let (body, hash, size) =
        match read_content(ctx, ev, content, fd, group.cfg.max_file_size, reads).await? {
            Ok(x) => x,
            Err(why) => {
                return Ok(Decided {
                    outcome: Arc::new(Outcome::Error(why)),
                    hash: None,
                    cached: false,
                })
            }
        };
    m.hashed_bytes.inc_by(size);
    ctx.vm.identity_put(ev.identity, IdEntry { hash });
    let key = (hash, sigs.version);
    // Single flight: check the cache again under the flights lock, because a scan that ends
    // inserts into the cache before it leaves the table.
    let rx = {
        let mut flights = shared
            .flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let delta = match cached(shared, sigs, hash) {
            Some(Cached::Hit(rec)) => {
                m.cache_hits.inc();
                return Ok(Decided {
                    outcome: rec.outcome.clone(),
                    hash: Some(hash),
                    cached: true,
                });
            }
            Some(Cached::Delta { old, deltas }) => Some((deltas, old)),
            None => None,
        };
        m.cache_misses.inc();
        if let Some(rx) = flights.get(&key) {
            m.singleflight_joins.inc();
            rx.clone()
        } else {
            let (tx, rx) = watch::channel(None);
            let job = Job {
                key,
                sigs: sigs.clone(),
                delta,
                body,
                size,
                done: tx,
                _spool: guard,
            };
            let prio = match ev.op {
                FileOp::Exec => Prio::Exec,
                FileOp::Open => Prio::Open,
                FileOp::CloseWrite => Prio::CloseWrite,
            };
            let per_vm = shared.config.load().cfg.server.max_queued_per_vm;
            match shared.sched.push(prio, ctx.vm.idx, job, per_vm) {
                Ok(depth) => {
                    m.queue_depth.set(depth as i64);
                    m.scans_in_flight.inc();
                    flights.insert(key, rx.clone());
                    rx
                }
                Err((_, sched::Refused::Full)) => {
                    m.queue_refused.inc();
                    return Ok(Decided {
                        outcome: Arc::new(Outcome::Error(format!(
                            "the VM has {per_vm} scans queued already"
                        ))),
                        hash: Some(hash),
                        cached: false,
                    });
                }
                Err((_, sched::Refused::Closed)) => {
                    return Ok(Decided {
                        outcome: Arc::new(Outcome::Error("the SVM is shutting down".into())),
                        hash: Some(hash),
                        cached: false,
                    })
                }
            }
        }
    };
    let outcome = wait_flight(rx).await;
    Ok(Decided {
        outcome,
        hash: Some(hash),
        cached: false,
    })
}

async fn wait_flight(mut rx: watch::Receiver<FlightResult>) -> Arc<Outcome> {
    loop {
        if let Some(o) = rx.borrow_and_update().clone() {
            return o;
        }
        if rx.changed().await.is_err() {
            // The job was dropped (shutdown) without a result.
            return match rx.borrow().clone() {
                Some(o) => o,
                None => Arc::new(Outcome::Error("the scan was abandoned".into())),
            };
        }
    }
}

/// How many `READ_REQ`s may be outstanding per event.
const READ_WINDOW: u64 = 4;

/// Get the content: inline, or pulled in ranges; hashed as it arrives; in memory up to the
/// threshold, else in a sealed memfd. The outer error ends the connection; the inner one is
/// an `on_error` outcome.
async fn read_content(
    ctx: &EventCtx,
    ev: &FileEvent,
    content: Content,
    fd: Option<std::fs::File>,
    max_size: u64,
    reads: Option<mpsc::Receiver<ReadData>>,
) -> Result<Result<(Body, [u8; 32], u64), String>, Failure> {
    let server = ctx.shared.config.load().cfg.server.clone();
    match content {
        Content::Inline(data) => {
            let hash = *blake3::hash(&data).as_bytes();
            let n = data.len() as u64;
            Ok(Ok((Body::Mem(data), hash, n)))
        }
        Content::Fd => {
            let Some(f) = fd else {
                return Err(Failure::Protocol("fd mode without a descriptor".into()));
            };
            let threshold = server.memory_threshold;
            match tokio::task::spawn_blocking(move || read_fd(&f, threshold, max_size)).await {
                Ok(r) => Ok(r),
                Err(e) => Ok(Err(format!("reading the passed file failed: {e}"))),
            }
        }
        Content::Read => {
            let Some(mut rx) = reads else {
                return Err(Failure::Protocol("no read channel".into()));
            };
            let chunk = server.max_read_chunk;
            let timeout = Duration::from_millis(server.read_timeout_ms);
            let mut hasher = blake3::Hasher::new();
            let mut sink = Sink::new(ev.size, server.memory_threshold);
            let mut next_req = 0u64; // offset of the next READ_REQ
            let mut expect = 0u64; // offset of the next READ_DATA
            let mut outstanding: std::collections::VecDeque<(u64, u32)> = Default::default();
            let mut failed: Option<String> = None;
            loop {
                while failed.is_none()
                    && next_req < ev.size
                    && (outstanding.len() as u64) < READ_WINDOW
                {
                    let len = chunk.min(ev.size - next_req) as u32;
                    let f = Message::ReadReq(ReadReq {
                        request_id: ev.request_id,
                        offset: next_req,
                        len,
                    })
                    .to_frame();
                    if ctx.out.send(ConnOut::Frame(f)).await.is_err() {
                        return Err(Failure::Disconnected);
                    }
                    outstanding.push_back((next_req, len));
                    next_req += u64::from(len);
                }
                let Some((off, len)) = outstanding.pop_front() else {
                    break;
                };
                let d = match tokio::time::timeout(timeout, rx.recv()).await {
                    Ok(Some(d)) => d,
                    Ok(None) => return Err(Failure::Disconnected),
                    Err(_) => return Err(Failure::ReadTimeout),
                };
                if d.offset != off {
                    return Err(Failure::Protocol(format!(
                        "request {}: READ_DATA for offset {} but {off} was next",
                        ev.request_id, d.offset
                    )));
                }
                if d.data.len() > len as usize {
                    return Err(Failure::Protocol(format!(
                        "request {}: READ_DATA of {} bytes for a READ_REQ of {len}",
                        ev.request_id,
                        d.data.len()
                    )));
                }
                if failed.is_some() {
                    continue; // drain what is owed after a read error
                }
                if d.offset != expect {
                    return Err(Failure::Protocol(format!(
                        "request {}: READ_DATA at {} after {expect} bytes",
                        ev.request_id, d.offset
                    )));
                }
                match d.status {
                    ReadStatus::Ok if d.data.len() == len as usize => {}
                    ReadStatus::Ok => {
                        return Err(Failure::Protocol(format!(
                            "request {}: short READ_DATA without EOF",
                            ev.request_id
                        )))
                    }
                    ReadStatus::Eof => {
                        // The file shrank: no more requests; the content is what came.
                        next_req = ev.size;
                    }
                    ReadStatus::Error => {
                        failed = Some(format!(
                            "the agent could not read the file: {}",
                            String::from_utf8_lossy(&d.data)
                        ));
                        continue;
                    }
                }
                hasher.update(&d.data);
                expect += d.data.len() as u64;
                if let Err(e) = sink.write(&d.data) {
                    failed = Some(format!("spooling failed: {e}"));
                }
                if d.status == ReadStatus::Eof {
                    // Whatever else is outstanding is owed; offsets past EOF will not match.
                    while let Some(_rest) = outstanding.pop_front() {
                        match tokio::time::timeout(timeout, rx.recv()).await {
                            Ok(Some(_)) => {}
                            Ok(None) => return Err(Failure::Disconnected),
                            Err(_) => return Err(Failure::ReadTimeout),
                        }
                    }
                    break;
                }
            }
            if let Some(why) = failed {
                return Ok(Err(why));
            }
            match sink.finish() {
                Ok(body) => Ok(Ok((body, *hasher.finalize().as_bytes(), expect))),
                Err(e) => Ok(Err(format!("spooling failed: {e}"))),
            }
        }
    }
}

/// Copy a passed file (from offset 0, whatever the agent's file position) into memory or a
/// sealed memfd, hashing it on the way: the guest cannot change what is scanned afterwards.
fn read_fd(
    f: &std::fs::File,
    threshold: u64,
    max_size: u64,
) -> Result<(Body, [u8; 32], u64), String> {
    use std::os::unix::fs::FileExt;
    let meta = f
        .metadata()
        .map_err(|e| format!("fstat on the passed descriptor: {e}"))?;
    if !meta.is_file() {
        return Err(format!(
            "the passed descriptor is not a regular file ({})",
            scanner::file_type_name(&meta.file_type())
        ));
    }
    if meta.len() > max_size {
        return Err(format!(
            "the passed file has {} bytes, over the group's limit of {max_size}",
            meta.len()
        ));
    }
    let mut sink = Sink::new(meta.len(), threshold);
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut off = 0u64;
    loop {
        let n = match f.read_at(&mut buf, off) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(format!(
                    "reading the passed file: {}",
                    scanner::io_error_text(&e)
                ))
            }
        };
        let chunk = buf.get(..n).unwrap_or_default();
        off += n as u64;
        if off > max_size {
            return Err(format!(
                "the passed file grew past the group's limit of {max_size}"
            ));
        }
        hasher.update(chunk);
        sink.write(chunk)
            .map_err(|e| format!("spooling failed: {e}"))?;
    }
    let body = sink.finish().map_err(|e| format!("spooling failed: {e}"))?;
    Ok((body, *hasher.finalize().as_bytes(), off))
}

/// Where pulled content goes: memory up to a threshold, then a memfd.
struct Sink {
    mem: Vec<u8>,
    file: Option<std::fs::File>,
}

impl Sink {
    fn new(size: u64, threshold: u64) -> Self {
        if size > threshold {
            Sink {
                mem: Vec::new(),
                file: memfd::MemfdOptions::default()
                    .allow_sealing(true)
                    .close_on_exec(true)
                    .create("svm-spool")
                    .ok()
                    .map(|m| m.into_file()),
            }
        } else {
            Sink {
                // `size` is a guest claim: reserve at most the threshold.
                mem: Vec::with_capacity(size.min(threshold) as usize),
                file: None,
            }
        }
    }
    fn write(&mut self, d: &[u8]) -> std::io::Result<()> {
        match &mut self.file {
            Some(f) => f.write_all(d),
            None => {
                self.mem.extend_from_slice(d);
                Ok(())
            }
        }
    }
    fn finish(self) -> std::io::Result<Body> {
        match self.file {
            None => Ok(Body::Mem(self.mem)),
            Some(f) => {
                let m = memfd::Memfd::try_from_file(f)
                    .map_err(|_| std::io::Error::other("not a memfd"))?;
                m.add_seals(&[
                    memfd::FileSeal::SealShrink,
                    memfd::FileSeal::SealGrow,
                    memfd::FileSeal::SealWrite,
                ])
                .map_err(|e| std::io::Error::other(e.to_string()))?;
                m.add_seal(memfd::FileSeal::SealSeal)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                Ok(Body::File(m.into_file()))
            }
        }
    }
}

/// Start `n` scanner threads.
pub fn start_workers(
    shared: &Arc<Shared>,
    n: usize,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    (0..n)
        .map(|i| {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("svm-scan-{i}"))
                .spawn(move || worker(&shared))
        })
        .collect()
}

/// The daemon's verdict cache as the scanner's cache of container members, for one set
/// version: a member is keyed like a whole file with the same content.
struct Members {
    shared: Arc<Shared>,
    version: u64,
}

impl scanner::MemberCache for Members {
    fn get(&self, blake3: &[u8; 32]) -> Option<Vec<String>> {
        let rec = self.shared.cache.get(&(*blake3, self.version))?;
        let names = match &*rec.outcome {
            Outcome::Clean => Vec::new(),
            Outcome::Infected(n) => n.clone(),
            Outcome::Unscanned(_) | Outcome::Error(_) => return None,
        };
        self.shared.metrics.cache_member_hits.inc();
        Some(names)
    }

    fn put(&self, blake3: [u8; 32], data: &[u8], names: &[String]) {
        let mut dg = Digester::new();
        dg.update(data);
        let (md5, sha1, sha256) = dg.finish();
        let outcome = if names.is_empty() {
            Outcome::Clean
        } else {
            Outcome::Infected(names.to_vec())
        };
        self.shared.cache.insert(
            (blake3, self.version),
            Arc::new(CacheRecord {
                outcome: Arc::new(outcome),
                size: data.len() as u64,
                md5,
                sha1,
                sha256,
            }),
        );
    }
}

fn worker(shared: &Arc<Shared>) {
    if shared.config.load().cfg.server.seccomp {
        if let Err(e) = super::sandbox::confine_scanner_thread() {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| {
                eprintln!("svm serve: scanner threads run WITHOUT a seccomp filter: {e}");
            });
        }
    }
    let mut pending: Option<Job> = None;
    loop {
        let job = match pending.take() {
            Some(j) => j,
            None => match shared.sched.pop() {
                Some((j, depth)) => {
                    shared.metrics.queue_depth.set(depth as i64);
                    j
                }
                None => return,
            },
        };
        // One Scanner per signature set: keep it while jobs use the same set.
        let sigs = job.sigs.clone();
        let mut scanner = Scanner::new(&sigs.set);
        scanner.set_member_cache(Arc::new(Members {
            shared: shared.clone(),
            version: sigs.version,
        }));
        let cfg = shared.config.load();
        let server = &cfg.cfg.server;
        scanner.set_limits(Limits {
            max_file_size: u64::MAX,
            max_scan_time: Duration::from_millis(server.max_scan_time_ms),
            archives: scanner::ArchiveLimits {
                max_depth: server.max_recursion,
                max_files: server.max_files,
                max_total: server.max_scan_size,
                max_member: server.max_member_size,
                max_ratio: server.max_ratio,
                alert_exceeds_max: server.alert_exceeds_max,
            },
        });
        let stall = cfg.cfg.server.test_stall.clone();
        drop(cfg);
        let mut job = Some(job);
        while let Some(j) = job.take() {
            run_job(shared, &mut scanner, j, stall.as_ref());
            match shared.sched.pop() {
                Some((next, depth)) => {
                    shared.metrics.queue_depth.set(depth as i64);
                    if Arc::ptr_eq(&next.sigs, &sigs) {
                        job = Some(next);
                    } else {
                        pending = Some(next);
                    }
                }
                None => return,
            }
        }
    }
}

type FullScan = (std::io::Result<Digests>, ScanResult);

/// Scan content with the whole set, computing its digests on the way.
fn scan_full(
    scanner: &mut Scanner<'_>,
    body: &Body,
    stall: Option<&crate::config::StallConfig>,
) -> FullScan {
    match body {
        Body::Mem(d) => {
            if let Some(s) = stall {
                if memchr::memmem::find(d, s.marker.as_bytes()).is_some() {
                    std::thread::sleep(Duration::from_millis(s.ms));
                }
            }
            let mut dg = Digester::new();
            dg.update(d);
            (Ok(dg.finish()), scanner.scan_bytes(d))
        }
        Body::File(f) => {
            let dg = digests_of_file(f);
            (dg, scanner.scan_open_file(f).result)
        }
    }
}

fn run_job(
    shared: &Shared,
    scanner: &mut Scanner<'_>,
    job: Job,
    stall: Option<&crate::config::StallConfig>,
) {
    let t = Instant::now();
    let m = &shared.metrics;
    let (digests, result) = match &job.delta {
        Some((deltas, old)) => {
            m.cache_delta_rescans.inc();
            (
                Ok((old.md5, old.sha1, old.sha256)),
                scan_deltas(&job.sigs.set, deltas, &job.body, old, scanner.limits()),
            )
        }
        None => scan_full(scanner, &job.body, stall),
    };
    m.scans.inc();
    m.scanned_bytes.inc_by(job.size);
    m.scan_seconds.observe(t.elapsed().as_secs_f64());
    let outcome = Arc::new(match (&digests, result) {
        (Err(e), _) => Outcome::Error(format!("reading the spooled content: {e}")),
        (_, ScanResult::Clean) => Outcome::Clean,
        (_, ScanResult::Infected { matches }) => {
            let mut names: Vec<String> = matches.into_iter().map(|m| m.name).collect();
            names.dedup();
            Outcome::Infected(names)
        }
        (_, ScanResult::Unscanned { reason }) => match reason {
            scanner::UnscannedReason::TooLarge { .. }
            | scanner::UnscannedReason::TimedOut { .. } => Outcome::Unscanned(reason.to_string()),
            other => Outcome::Error(other.to_string()),
        },
    });
    if let (Ok((md5, sha1, sha256)), Outcome::Clean | Outcome::Infected(_)) = (digests, &*outcome) {
        shared.cache.insert(
            job.key,
            Arc::new(CacheRecord {
                outcome: outcome.clone(),
                size: job.size,
                md5,
                sha1,
                sha256,
            }),
        );
        m.cache_entries.set(shared.cache.len() as i64);
        m.cache_bytes.set(shared.cache.weight() as i64);
    }
    shared
        .flights
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&job.key);
    m.scans_in_flight.dec();
    let _ = job.done.send(Some(outcome));
}

/// Scan content judged clean under an earlier version against only the signatures added
/// since; a match on allow-listed content (by the new set) stays clean.
fn scan_deltas(
    set: &SignatureSet,
    deltas: &[Arc<SignatureSet>],
    body: &Body,
    old: &CacheRecord,
    limits: Limits,
) -> ScanResult {
    let mut matches = Vec::new();
    for d in deltas {
        let mut scanner = Scanner::new(d);
        scanner.set_limits(limits);
        let r = match body {
            Body::Mem(b) => scanner.scan_bytes(b),
            Body::File(f) => scanner.scan_open_file(f).result,
        };
        match r {
            ScanResult::Clean => {}
            ScanResult::Infected { matches: m } => matches.extend(m),
            unscanned @ ScanResult::Unscanned { .. } => return unscanned,
        }
    }
    if matches.is_empty() || scanner::allow_listed(set, old.size, &old.md5, &old.sha1, &old.sha256)
    {
        ScanResult::Clean
    } else {
        ScanResult::Infected { matches }
    }
}

type Digests = ([u8; 16], [u8; 20], [u8; 32]);

/// MD5, SHA-1 and SHA-256 in one pass.
struct Digester {
    md5: md5::Md5,
    sha1: sha1::Sha1,
    sha256: sha2::Sha256,
}

impl Digester {
    fn new() -> Self {
        use sha1::Digest;
        Digester {
            md5: md5::Md5::new(),
            sha1: sha1::Sha1::new(),
            sha256: sha2::Sha256::new(),
        }
    }
    fn update(&mut self, b: &[u8]) {
        use sha1::Digest;
        self.md5.update(b);
        self.sha1.update(b);
        self.sha256.update(b);
    }
    fn finish(self) -> Digests {
        use sha1::Digest;
        (
            self.md5.finalize().into(),
            self.sha1.finalize().into(),
            self.sha256.finalize().into(),
        )
    }
}

fn digests_of_file(f: &std::fs::File) -> std::io::Result<Digests> {
    use std::os::unix::fs::FileExt;
    let mut dg = Digester::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut off = 0u64;
    loop {
        match f.read_at(&mut buf, off) {
            Ok(0) => return Ok(dg.finish()),
            Ok(n) => {
                dg.update(buf.get(..n).unwrap_or_default());
                off += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
