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
use super::pipeline::SigState;
use super::Shared;
use crate::config::UpdateConfig;
use signatures::bundle::{self, Limits, PublicKey};
use signatures::SignatureSet;
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
    /// Its files: name → SHA-256.
    pub files: std::collections::BTreeMap<String, String>,
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
    let files = v
        .manifest
        .files
        .iter()
        .map(|f| (f.name.clone(), f.sha256.clone()))
        .collect();
    Ok(Loaded {
        set,
        version: v.manifest.set_version,
        key_id: v.manifest.key_id,
        files,
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

/// The set state for a loaded bundle; `hash_only_since` as [`hash_only_chain`] says.
pub fn state_of(l: Loaded, hash_only_since: Vec<u64>) -> SigState {
    SigState {
        epoch: super::epoch_of(&l.set),
        set: Arc::new(l.set),
        version: l.version,
        publisher: Some(l.key_id),
        loaded_at: now_rfc3339(),
        files: Some(l.files),
        hash_only_since,
    }
}

/// Whether a signature file holds only hash signatures (`.hdb`, `.hsb`): a change to it can
/// turn a clean verdict infected only through a hash lookup.
fn is_hash_file(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.ends_with(".hdb") || n.ends_with(".hsb")
}

/// The versions whose clean verdicts stay valid up to a hash lookup under `new`: `old`'s
/// version (and its own such versions, at most 8) when the two differ only in hash files
/// and the version moves forward; none otherwise.
pub fn hash_only_chain(old: &SigState, new: &Loaded) -> Vec<u64> {
    let Some(old_files) = &old.files else {
        return Vec::new();
    };
    if new.version <= old.version {
        return Vec::new();
    }
    let names: std::collections::BTreeSet<&String> =
        old_files.keys().chain(new.files.keys()).collect();
    let only_hashes = names
        .into_iter()
        .all(|n| old_files.get(n) == new.files.get(n) || is_hash_file(n));
    if !only_hashes {
        return Vec::new();
    }
    std::iter::once(old.version)
        .chain(old.hash_only_since.iter().copied())
        .take(8)
        .collect()
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
        let chain = hash_only_chain(&shared.sigs.load(), &loaded);
        shared.sigs.store(Arc::new(state_of(loaded, chain)));
        crash_point("after-swap");
        Ok(v)
    })();
    let (action, result, version, reason) = match &res {
        Ok(v) if *v < current => ("downgrade", "accepted", *v, None),
        Ok(v) => ("accept", "accepted", *v, None),
        Err(r) => ("refuse", "refused", current, Some(r.message.clone())),
    };
    match &res {
        Ok(v) => {
            eprintln!("svm serve: signatures updated from version {current} to {v} ({source})")
        }
        Err(r) => eprintln!(
            "svm serve: signature bundle refused ({source}): {}",
            r.message
        ),
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
            content_hash: Some(blake3::hash(bytes).to_hex().to_string()),
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
    res
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
        "revalidates_from": s.hash_only_since,
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

/// The admin API's routes.
pub fn router(shared: Arc<Shared>, max_bundle: u64) -> axum::Router {
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
        body: axum::body::Bytes,
    ) -> impl IntoResponse {
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
    let limit = usize::try_from(max_bundle.saturating_add(1 << 20)).unwrap_or(usize::MAX);
    axum::Router::new()
        .route("/v1/signatures", axum::routing::get(get).post(post))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(shared)
}
