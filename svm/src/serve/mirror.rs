//! Pull mode, like freshclam: `[update] mirror = "http://…/current.svmb"` is fetched every
//! `mirror_interval_s` seconds with a conditional GET (`If-None-Match` / `If-Modified-Since`),
//! and a new bundle goes through the same path as a pushed one ([`super::update::accept`]):
//! verified, version-checked, compiled, persisted, swapped.
//!
//! The mirror is untrusted: the body is capped at `max_bundle` while it is read, and nothing
//! it serves is used without a trusted signature. A bundle whose manifest (read before
//! verification, only to skip it) says it is not newer is skipped quietly: a mirror that has
//! not moved on is normal, and a lying manifest can only make the daemon skip a bundle, which
//! a hostile mirror could do anyway by serving nothing. After a failure (network, HTTP
//! status, refused bundle) the next attempt backs off exponentially, with jitter, up to the
//! interval.

use super::memwatch::nap;
use super::Shared;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The first retry delay after a failure.
const FIRST_RETRY: Duration = Duration::from_secs(5);

/// Start the puller. It follows configuration reloads: it fetches while `[update] mirror`
/// is set and idles otherwise.
pub fn start(shared: &Arc<Shared>, stop: &Arc<AtomicBool>) -> Option<std::thread::JoinHandle<()>> {
    let (shared, stop) = (shared.clone(), stop.clone());
    std::thread::Builder::new()
        .name("svm-mirror".into())
        .spawn(move || pull_loop(&shared, &stop))
        .map_err(|e| tracing::error!("cannot start the mirror puller: {e}"))
        .ok()
}

/// What the last successful fetch said, for the next conditional GET.
#[derive(Debug, Default)]
struct Validators {
    etag: Option<String>,
    last_modified: Option<String>,
}

fn pull_loop(shared: &Shared, stop: &AtomicBool) {
    let mut validators = Validators::default();
    let mut failures = 0u32;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(300)))
        .http_status_as_error(false)
        .build()
        .into();
    while !stop.load(Ordering::Relaxed) {
        let up = shared.config.load().cfg.update.clone();
        let Some(url) = up.mirror.clone() else {
            nap(stop, Duration::from_secs(1));
            continue;
        };
        let interval = Duration::from_secs(up.mirror_interval_s.max(1));
        let wait = match fetch_once(shared, &agent, &url, up.max_bundle, &mut validators) {
            Ok(()) => {
                failures = 0;
                interval
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                shared.metrics.mirror_errors.inc();
                let d = backoff(failures, interval);
                tracing::warn!("mirror {url}: {e}; next attempt in {d:?}");
                d
            }
        };
        nap(stop, wait);
    }
}

/// Exponential back-off from [`FIRST_RETRY`], capped at `max`, with up to 50% random jitter
/// so a fleet of SVMs does not retry in step.
fn backoff(failures: u32, max: Duration) -> Duration {
    let base = FIRST_RETRY
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(max);
    let jitter = rand::random::<f64>() * 0.5;
    base.mul_f64(1.0 - jitter).max(Duration::from_millis(100))
}

fn fetch_once(
    shared: &Shared,
    agent: &ureq::Agent,
    url: &str,
    max_bundle: u64,
    v: &mut Validators,
) -> Result<(), String> {
    let mut req = agent.get(url);
    if let Some(e) = &v.etag {
        req = req.header("If-None-Match", e);
    }
    if let Some(m) = &v.last_modified {
        req = req.header("If-Modified-Since", m);
    }
    let started = Instant::now();
    let mut resp = req.call().map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    if status == 304 {
        tracing::debug!("mirror {url}: not modified");
        return Ok(());
    }
    if status != 200 {
        return Err(format!("HTTP {status}"));
    }
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
    };
    let (etag, last_modified) = (header("etag"), header("last-modified"));
    let bytes = resp
        .body_mut()
        .with_config()
        .limit(max_bundle)
        .read_to_vec()
        .map_err(|e| format!("download: {e}"))?;
    // Quietly skip a bundle that is not newer (see the module docs).
    let current = shared.sigs.load().version;
    let skip = signatures::bundle::inspect(&bytes).is_ok_and(|(m, _)| m.set_version <= current);
    if !skip {
        let took = started.elapsed();
        super::update::accept(shared, &bytes, false, url).map_err(|r| r.message)?;
        tracing::info!("mirror {url}: updated in {took:?}");
    }
    *v = Validators {
        etag,
        last_modified,
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let max = Duration::from_secs(60);
        for _ in 0..50 {
            let first = backoff(1, max);
            assert!(
                first <= FIRST_RETRY && first >= FIRST_RETRY / 2,
                "{first:?}"
            );
            let third = backoff(3, max);
            assert!(
                third <= FIRST_RETRY * 4 && third >= FIRST_RETRY * 2,
                "{third:?}"
            );
            assert!(backoff(40, max) <= max);
        }
    }
}
