//! Signature updates in `svm serve`: signed bundles ([`signatures::bundle`]) pushed to the
//! admin API (`POST /v1/signatures` on `[update] admin_socket`).
//!
//! A bundle is accepted only if it verifies with a key of `[update] trusted_keys` and its set
//! version is above the one in use: an older version (rollback) or the same one (replay) is
//! refused, unless the admin explicitly allows a downgrade (`?allow_downgrade=true`, logged
//! and audited). The new set is compiled off the hot path (a blocking thread), written to
//! `state_dir/current.svmb` atomically (temporary file, fsync, rename, fsync of the
//! directory), and only then swapped in (`arc-swap`): scans in flight finish on the old set,
//! every verdict names the version it was made with, the verdict cache is keyed by version,
//! and the old set is freed when its last scan drops it. Every acceptance and refusal is in
//! the audit log (`"op":"update"`).
//!
//! A restart loads `state_dir/current.svmb` (verified again) in place of the `-d` set.

use super::audit::{now_rfc3339, Record};
use super::pipeline::{Outcome, SigState, Since};
use super::Shared;
use crate::config::UpdateConfig;
use signatures::bundle::{self, Limits, PublicKey};
use signatures::{Revalidation, SignatureSet};
use std::path::Path;
use std::sync::Arc;

/// The persisted bundle's file name in `state_dir`.
pub const CURRENT: &str = "current.svmb";

/// Why a bundle was refused, with the HTTP status the admin API answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status.
    pub status: u16,
    /// What was wrong.
    pub message: String,
}

fn refuse(status: u16, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
    }
}

/// The trusted publisher keys of the configuration.
pub fn trusted_keys(cfg: &UpdateConfig) -> anyhow::Result<Vec<PublicKey>> {
    cfg.trusted_keys
        .iter()
        .map(|k| crate::sigs::read_public_key(k))
        .collect()
}

fn limits(cfg: &UpdateConfig) -> Limits {
    Limits {
        max_bundle: cfg.max_bundle,
        ..Limits::default()
    }
}

/// A verified, compiled bundle, ready to swap in.
pub struct Loaded {
    /// The set.
    pub set: SignatureSet,
    /// Its version.
    pub version: u64,
    /// The publisher's key id.
    pub key_id: String,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("version", &self.version)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// Verify and compile a bundle (no version check), sharing with `prev` (the set in use) the
/// compiled parts of the files it did not change.
pub fn load(
    bytes: &[u8],
    cfg: &UpdateConfig,
    prev: Option<&SignatureSet>,
) -> Result<Loaded, Refusal> {
    let keys = trusted_keys(cfg).map_err(|e| refuse(500, format!("trusted_keys: {e:#}")))?;
    if keys.is_empty() {
        return Err(refuse(
            403,
            "no trusted publisher keys are configured ([update] trusted_keys)",
        ));
    }
    let v = bundle::open(bytes, &keys, &limits(cfg)).map_err(|e| {
        let status = match e {
            bundle::BundleError::TooLarge(_) => 413,
            bundle::BundleError::Unsigned | bundle::BundleError::BadSignature(_) => 403,
            _ => 400,
        };
        refuse(status, e.to_string())
    })?;
    let set = crate::sigs::load_opened(&v, prev).map_err(|e| {
        refuse(
            422,
            format!("the signatures do not load: {}", cut(&format!("{e:#}"))),
        )
    })?;
    Ok(Loaded {
        set,
        version: v.manifest.set_version,
        key_id: v.manifest.key_id,
    })
}

/// At most 20 lines of a long message (a set with thousands of bad lines).
fn cut(msg: &str) -> String {
    let lines: Vec<&str> = msg.lines().collect();
    if lines.len() <= 20 {
        return msg.to_owned();
    }
    let head: Vec<&str> = lines.iter().take(20).copied().collect();
    format!("{}\n… {} more lines", head.join("\n"), lines.len() - 20)
}

/// The set state for a loaded bundle, revalidating `revalidate`'s versions, with cache
/// epoch `epoch` (and the clean-eviction count it began at), or a fresh one.
pub fn state_of(l: Loaded, revalidate: Vec<Since>, epoch: Option<(u64, u64)>) -> SigState {
    let (epoch, epoch_evictions) = epoch.unwrap_or_else(|| (super::epoch_of(&l.set), 0));
    SigState {
        epoch,
        epoch_evictions,
        set: Arc::new(l.set),
        version: l.version,
        publisher: Some(l.key_id),
        loaded_at: now_rfc3339(),
        revalidate,
    }
}

/// The earlier versions whose clean verdicts the new set revalidates: `old`'s version, and
/// the ones `old` itself revalidated (at most 8, with at most 4 sets of added signatures to
/// scan against), when the version moves forward and no allow-list entry went away.
pub fn revalidation_chain(old: &SigState, new: &SignatureSet, new_version: u64) -> Vec<Since> {
    if new_version <= old.version {
        return Vec::new();
    }
    let added: Vec<Arc<SignatureSet>> = match new.revalidation_since(&old.set) {
        Revalidation::Rescan => return Vec::new(),
        Revalidation::Lookup => Vec::new(),
        Revalidation::Delta(d) => vec![Arc::from(d)],
    };
    std::iter::once(Since {
        version: old.version,
        deltas: Vec::new(),
    })
    .chain(old.revalidate.iter().cloned())
    .map(|mut s| {
        s.deltas.extend(added.iter().cloned());
        s
    })
    .take_while(|s| s.deltas.len() <= 4)
    .take(8)
    .collect()
}

/// The cache epoch for a new set: `old`'s when no clean verdict an agent may hold can have
/// changed, a new one otherwise. It is kept when the new set revalidates `old`'s version by
/// a hash lookup alone, no clean verdict was evicted from the verdict cache since the epoch
/// began (so every clean verdict an agent holds is still in it), and none of those cached
/// clean verdicts matches a hash signature of the new set. Returns (epoch, clean evictions
/// when it began).
pub fn next_epoch(
    shared: &Shared,
    old: &SigState,
    new: &SignatureSet,
    chain: &[Since],
) -> (u64, u64) {
    let evicted = shared.metrics.cache_clean_evictions.get();
    let lookup_only = chain
        .first()
        .is_some_and(|s| s.version == old.version && s.deltas.is_empty());
    if lookup_only && evicted == old.epoch_evictions {
        let flips = shared.cache.iter().any(|(_, r)| {
            matches!(*r.outcome, Outcome::Clean)
                && !scanner::hash_lookup(new, r.size, &r.md5, &r.sha1, &r.sha256).is_empty()
        });
        if !flips {
            return (old.epoch, old.epoch_evictions);
        }
    }
    let mut epoch = super::epoch_of(new);
    if epoch == old.epoch {
        epoch = epoch.wrapping_add(1).max(1);
    }
    (epoch, evicted)
}

/// The persisted bundle, if `state_dir` holds one; `Err` says why it cannot be used.
pub fn load_persisted(cfg: &UpdateConfig) -> Option<Result<Loaded, String>> {
    let path = cfg.state_dir.as_ref()?.join(CURRENT);
    remove_stale_temps(&path);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => return Some(Err(format!("{}: {e}", path.display()))),
    };
    Some(load(&bytes, cfg, None).map_err(|r| format!("{}: {}", path.display(), r.message)))
}

/// Temporary files of an update that crashed before its rename (never read: the old file
/// is the one in force).
fn remove_stale_temps(path: &Path) {
    let (Some(dir), prefix) = (path.parent(), crate::sigs::temp_prefix(path)) else {
        return;
    };
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            match std::fs::remove_file(e.path()) {
                Ok(()) => eprintln!(
                    "svm serve: removed {} left by an interrupted update",
                    e.path().display()
                ),
                Err(err) => tracing::warn!("cannot remove {}: {err}", e.path().display()),
            }
        }
    }
}

/// Accept a pushed bundle: verify, check the version, compile, persist, swap. Blocking (call
/// from a blocking thread). Returns the new version.
pub fn accept(
    shared: &Shared,
    bytes: &[u8],
    allow_downgrade: bool,
    source: &str,
) -> Result<u64, Refusal> {
    // One update at a time, so the version check and the swap cannot interleave.
    let _one = shared
        .update_lock
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let cfg = shared.config.load().cfg.update.clone();
    let current = shared.sigs.load().version;
    let res = (|| {
        let loaded = load(bytes, &cfg, Some(&shared.sigs.load().set))?;
        let v = loaded.version;
        if v == current {
            return Err(refuse(
                409,
                format!("replay: set version {v} is the version in use"),
            ));
        }
        if v < current && !allow_downgrade {
            return Err(refuse(
                409,
                format!(
                    "rollback: set version {v} is older than {current} in use \
                     (an admin may force it with allow_downgrade=true)"
                ),
            ));
        }
        if v < current {
            tracing::warn!("signature downgrade from {current} to {v} forced by the admin");
        }
        if let Some(dir) = &cfg.state_dir {
            persist(dir, bytes).map_err(|e| refuse(500, format!("cannot persist: {e:#}")))?;
        }
        let old = shared.sigs.load_full();
        let chain = revalidation_chain(&old, &loaded.set, v);
        let epoch = next_epoch(shared, &old, &loaded.set, &chain);
        shared
            .sigs
            .store(Arc::new(state_of(loaded, chain, Some(epoch))));
        crash_point("after-swap");
        Ok(v)
    })();
    let (action, result, version, reason) = match &res {
        Ok(v) if *v < current => ("downgrade", "accepted", *v, None),
        Ok(v) => ("accept", "accepted", *v, None),
        Err(r) => ("refuse", "refused", current, Some(r.message.clone())),
    };
    if let Ok(v) = &res {
        eprintln!("svm serve: signatures updated from version {current} to {v} ({source})");
    }
    record(shared, source, Some(bytes), action, result, version, reason);
    res
}

/// Count, log (refusals) and audit the outcome of an update.
pub(crate) fn record(
    shared: &Shared,
    source: &str,
    bytes: Option<&[u8]>,
    action: &'static str,
    result: &'static str,
    version: u64,
    reason: Option<String>,
) {
    if let Some(r) = &reason {
        eprintln!("svm serve: signature bundle refused ({source}): {r}");
    }
    shared
        .metrics
        .updates
        .get_or_create(&super::metrics::ResultLabels { result })
        .inc();
    shared.audit.log(
        Record {
            time: now_rfc3339(),
            vm: Arc::from("-"),
            group: String::new(),
            op: "update",
            path: source.to_owned(),
            content_hash: bytes.map(|b| blake3::hash(b).to_hex().to_string()),
            signatures: Vec::new(),
            sigset_version: version,
            action,
            result,
            policy: None,
            reason,
            cached: false,
            latency_ms: 0.0,
            session: 0,
        },
        &shared.metrics.audit_dropped,
    );
}

/// Write the bundle as `dir/current.svmb`, atomically.
fn persist(dir: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(CURRENT);
    let tmp = crate::sigs::write_temp(&path, bytes, 0o600)?;
    crash_point("before-rename");
    crate::sigs::commit_temp(&tmp, &path)?;
    crash_point("after-rename");
    Ok(())
}

/// Tests of crash safety: `SVM_TEST_CRASH_AT=POINT` aborts the process there, as a
/// `kill -9` would (no cleanup, no unwinding).
fn crash_point(at: &str) {
    if std::env::var("SVM_TEST_CRASH_AT").is_ok_and(|v| v == at) {
        eprintln!("svm serve: SVM_TEST_CRASH_AT={at}: aborting");
        std::process::abort();
    }
}

/// The admin API's description of the set in use (`GET /v1/signatures`).
pub fn describe(shared: &Shared) -> serde_json::Value {
    let s = shared.sigs.load();
    serde_json::json!({
        "version": s.version,
        "cache_epoch": s.epoch,
        "digest": s.set.digest_hex(),
        "counts": s.set.counts(),
        "loaded_at": s.loaded_at,
        "publisher": s.publisher,
        "revalidates_from": s.revalidate.iter().map(|r| r.version).collect::<Vec<_>>(),
        "revalidation": s.revalidate.iter().map(|r| serde_json::json!({
            "version": r.version,
            "rescan_against_added": r.deltas.iter().map(|d| d.counts().detection_total()).sum::<u64>(),
        })).collect::<Vec<_>>(),
    })
}

/// Bind the admin socket with mode 0600 (the admin API changes what every guest is checked
/// against). It is bound under a temporary name, restricted, then renamed into place, so
/// it is never reachable at its path with wider permissions. A stale socket is replaced; a live
/// one is refused.
pub fn bind_admin(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use anyhow::Context;
    use std::os::unix::fs::PermissionsExt;
    let name = path
        .file_name()
        .context("admin_socket has no file name")?
        .to_string_lossy()
        .into_owned();
    let tmp = path.with_file_name(format!(".{name}.{}", std::process::id()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating socket directory {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&tmp);
    let l = tokio::net::UnixListener::bind(&tmp)
        .with_context(|| format!("binding {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    if path.exists() && std::os::unix::net::UnixStream::connect(path).is_ok() {
        let _ = std::fs::remove_file(&tmp);
        anyhow::bail!("{} is in use by a running daemon", path.display());
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("moving the admin socket to {}", path.display()))?;
    Ok(l)
}

/// A pushed bundle's bytes, read into one buffer sized from `Content-Length` (a growing
/// buffer would briefly hold the bundle twice during a swap), at most `limit` bytes.
async fn read_body(
    mut body: axum::body::Body,
    headers: &axum::http::HeaderMap,
    limit: u64,
) -> Result<Vec<u8>, (axum::http::StatusCode, String)> {
    use axum::body::HttpBody;
    use axum::http::StatusCode;
    let too_large = |n: u64| {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("bundle too large: {n} bytes (at most {limit}, [update] max_bundle)"),
        )
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|&n| n > limit) {
        return Err(too_large(n));
    }
    let mut out = Vec::with_capacity(usize::try_from(declared.unwrap_or(0)).unwrap_or(0));
    while let Some(frame) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
    {
        let frame =
            frame.map_err(|e| (StatusCode::BAD_REQUEST, format!("reading the body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            let n = out.len() as u64 + data.len() as u64;
            if n > limit {
                return Err(too_large(n));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// The admin API's routes.
pub fn router(shared: Arc<Shared>) -> axum::Router {
    use axum::extract::{Query, State};
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    #[derive(serde::Deserialize)]
    struct PostParams {
        #[serde(default)]
        allow_downgrade: bool,
    }
    async fn get(State(s): State<Arc<Shared>>) -> impl IntoResponse {
        axum::Json(describe(&s))
    }
    async fn post(
        State(s): State<Arc<Shared>>,
        Query(p): Query<PostParams>,
        headers: axum::http::HeaderMap,
        body: axum::body::Body,
    ) -> impl IntoResponse {
        let limit = s.config.load().cfg.update.max_bundle;
        let body = match read_body(body, &headers, limit).await {
            Ok(b) => b,
            Err((status, error)) => {
                let version = s.sigs.load().version;
                record(
                    &s,
                    "admin-api",
                    None,
                    "refuse",
                    "refused",
                    version,
                    Some(error.clone()),
                );
                return (
                    status,
                    axum::Json(serde_json::json!({"accepted": false, "error": error})),
                );
            }
        };
        let s2 = s.clone();
        let r =
            tokio::task::spawn_blocking(move || accept(&s2, &body, p.allow_downgrade, "admin-api"))
                .await;
        match r {
            Ok(Ok(v)) => (
                StatusCode::OK,
                axum::Json(serde_json::json!({"accepted": true, "version": v})),
            ),
            Ok(Err(r)) => (
                StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST),
                axum::Json(serde_json::json!({"accepted": false, "error": r.message})),
            ),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(serde_json::json!({"accepted": false, "error": e.to_string()})),
            ),
        }
    }
    axum::Router::new()
        .route("/v1/signatures", axum::routing::get(get).post(post))
        .with_state(shared)
}
