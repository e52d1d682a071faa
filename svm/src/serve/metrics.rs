//! Prometheus metrics and the `/metrics` + `/healthz` endpoint.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// `op` and `result` of a guest event.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// open, exec, close_write.
    pub op: &'static str,
    /// clean, infected, unscanned, timeout, error, excluded.
    pub result: &'static str,
}

/// A policy fallback: which policy, and the action it chose.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FallbackLabels {
    /// on_timeout, on_error, on_unscanned, on_infected.
    pub policy: &'static str,
    /// allow or deny.
    pub action: &'static str,
}

/// A VM (bounded: past `metrics_max_vms`, VMs share the label `other`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VmLabels {
    /// The VM id.
    pub vm: String,
}

/// A kind of protocol error.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// Short name.
    pub kind: &'static str,
}

/// The outcome of a signature update.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// accepted or refused.
    pub result: &'static str,
}

/// Every metric of the daemon.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Events by op and result.
    pub events: Family<EventLabels, Counter>,
    /// Verdict-cache hits.
    pub cache_hits: Counter,
    /// Verdict-cache misses.
    pub cache_misses: Counter,
    /// Per-VM identity-cache hits (content not transferred).
    pub identity_hits: Counter,
    /// Requests that joined a scan already in flight.
    pub singleflight_joins: Counter,
    /// Scans run.
    pub scans: Counter,
    /// Bytes scanned.
    pub scanned_bytes: Counter,
    /// Bytes received from guests and hashed.
    pub hashed_bytes: Counter,
    /// Jobs waiting for a scanner.
    pub queue_depth: Gauge,
    /// Scans queued or running (single-flight entries).
    pub scans_in_flight: Gauge,
    /// Guest connections open.
    pub connections: Gauge,
    /// Seconds per scan.
    pub scan_seconds: Histogram,
    /// Seconds from event to verdict.
    pub verdict_seconds: Histogram,
    /// Policy fallbacks.
    pub fallbacks: Family<FallbackLabels, Counter>,
    /// Events per VM.
    pub vm_events: Family<VmLabels, Counter>,
    /// Non-clean verdicts per VM.
    pub vm_detections: Family<VmLabels, Counter>,
    /// Protocol errors by kind (each closes one connection).
    pub protocol_errors: Family<KindLabels, Counter>,
    /// Audit records that could not be written.
    pub audit_dropped: Counter,
    /// Log lines suppressed by rate limiting.
    pub logs_suppressed: Counter,
    /// Memory sweep rounds.
    pub mem_rounds: Counter,
    /// Guest pages hashed by the sweepers.
    pub mem_pages_hashed: Counter,
    /// Guest pages scanned (changed and not seen before).
    pub mem_pages_scanned: Counter,
    /// Changed guest pages skipped because their content was scanned before (any VM).
    pub mem_pages_deduped: Counter,
    /// Detections in guest memory.
    pub mem_detections: Counter,
    /// Detections of a signature already reported for that VM (not reported again).
    pub mem_repeats: Counter,
    /// RAM files that could not be read or scanned.
    pub mem_errors: Counter,
    /// Entries in the verdict cache.
    pub cache_entries: Gauge,
    /// Bytes held by the verdict cache.
    pub cache_bytes: Gauge,
    /// Signature bundles accepted or refused.
    pub updates: Family<ResultLabels, Counter>,
    /// Failed fetches from the mirror.
    pub mirror_errors: Counter,
    /// Cached clean verdicts carried to a new set version by a hash lookup (no rescan).
    pub cache_revalidated: Counter,
    /// Cached clean contents rescanned against only the signatures added since their verdict.
    pub cache_delta_rescans: Counter,
    /// Clean verdicts evicted from the verdict cache (an agent may still hold them).
    pub cache_clean_evictions: Counter,
    /// Scans refused because their VM had `max_queued_per_vm` queued.
    pub queue_refused: Counter,
    /// Connections to the clamd-compatible listener.
    pub clamd_connections: Counter,
    /// Objects scanned for clamd clients (files, streams, descriptors).
    pub clamd_requests: Counter,
    /// Streams refused for their size.
    pub clamd_refused: Counter,
    /// Container members answered from the verdict cache.
    pub cache_member_hits: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Create and register everything.
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("svm"),
            events: Family::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            identity_hits: Counter::default(),
            singleflight_joins: Counter::default(),
            scans: Counter::default(),
            scanned_bytes: Counter::default(),
            hashed_bytes: Counter::default(),
            queue_depth: Gauge::default(),
            scans_in_flight: Gauge::default(),
            connections: Gauge::default(),
            // 10 µs .. ~80 s.
            scan_seconds: Histogram::new(exponential_buckets(1e-5, 2.5, 18)),
            verdict_seconds: Histogram::new(exponential_buckets(1e-5, 2.5, 18)),
            fallbacks: Family::default(),
            vm_events: Family::default(),
            vm_detections: Family::default(),
            protocol_errors: Family::default(),
            audit_dropped: Counter::default(),
            logs_suppressed: Counter::default(),
            mem_rounds: Counter::default(),
            mem_pages_hashed: Counter::default(),
            mem_pages_scanned: Counter::default(),
            mem_pages_deduped: Counter::default(),
            mem_detections: Counter::default(),
            mem_repeats: Counter::default(),
            updates: Family::default(),
            mirror_errors: Counter::default(),
            cache_revalidated: Counter::default(),
            cache_delta_rescans: Counter::default(),
            cache_clean_evictions: Counter::default(),
            queue_refused: Counter::default(),
            clamd_connections: Counter::default(),
            clamd_requests: Counter::default(),
            clamd_refused: Counter::default(),
            cache_member_hits: Counter::default(),
            mem_errors: Counter::default(),
            cache_entries: Gauge::default(),
            cache_bytes: Gauge::default(),
        };
        let r = &mut m.registry;
        r.register("events", "Guest events by op and result", m.events.clone());
        r.register("cache_hits", "Verdict cache hits", m.cache_hits.clone());
        r.register(
            "cache_misses",
            "Verdict cache misses",
            m.cache_misses.clone(),
        );
        r.register(
            "identity_cache_hits",
            "Per-VM identity cache hits (no content transferred)",
            m.identity_hits.clone(),
        );
        r.register(
            "singleflight_joins",
            "Requests that waited for a scan already in flight",
            m.singleflight_joins.clone(),
        );
        r.register("scans", "Scans run", m.scans.clone());
        r.register("scanned_bytes", "Bytes scanned", m.scanned_bytes.clone());
        r.register(
            "received_bytes",
            "Content bytes received from guests and hashed",
            m.hashed_bytes.clone(),
        );
        r.register("queue_depth", "Scan jobs waiting", m.queue_depth.clone());
        r.register(
            "scans_in_flight",
            "Scans queued or running",
            m.scans_in_flight.clone(),
        );
        r.register("connections", "Guest connections", m.connections.clone());
        r.register("scan_seconds", "Scan duration", m.scan_seconds.clone());
        r.register(
            "verdict_seconds",
            "Time from event to verdict",
            m.verdict_seconds.clone(),
        );
        r.register(
            "policy_fallbacks",
            "Verdicts decided by a fallback policy",
            m.fallbacks.clone(),
        );
        r.register("vm_events", "Events per VM", m.vm_events.clone());
        r.register(
            "vm_detections",
            "Non-clean verdicts per VM",
            m.vm_detections.clone(),
        );
        r.register(
            "protocol_errors",
            "Protocol errors (each closes its connection)",
            m.protocol_errors.clone(),
        );
        r.register(
            "audit_dropped",
            "Audit records lost because the writer fell behind or failed",
            m.audit_dropped.clone(),
        );
        r.register(
            "signature_updates",
            "Signature bundles accepted or refused",
            m.updates.clone(),
        );
        r.register(
            "logs_suppressed",
            "Guest-triggered log lines suppressed by rate limiting",
            m.logs_suppressed.clone(),
        );
        for (name, help, c) in [
            ("memory_sweep_rounds", "Memory sweep rounds", &m.mem_rounds),
            (
                "memory_pages_hashed",
                "Guest pages hashed by the sweepers",
                &m.mem_pages_hashed,
            ),
            (
                "memory_pages_scanned",
                "Guest pages scanned",
                &m.mem_pages_scanned,
            ),
            (
                "memory_pages_deduped",
                "Changed guest pages not scanned because their content was scanned before",
                &m.mem_pages_deduped,
            ),
            (
                "memory_detections",
                "Detections in guest memory",
                &m.mem_detections,
            ),
            (
                "memory_repeats",
                "Detections of a signature already reported for that VM, not reported again",
                &m.mem_repeats,
            ),
            (
                "memory_errors",
                "RAM files that could not be read or scanned",
                &m.mem_errors,
            ),
            (
                "cache_revalidated",
                "Cached clean verdicts carried to a new signature version by a hash lookup",
                &m.cache_revalidated,
            ),
            (
                "cache_delta_rescans",
                "Cached clean contents rescanned against only the signatures added since",
                &m.cache_delta_rescans,
            ),
            (
                "cache_clean_evictions",
                "Clean verdicts evicted from the verdict cache",
                &m.cache_clean_evictions,
            ),
            (
                "queue_refused",
                "Scans refused because their VM had max_queued_per_vm queued",
                &m.queue_refused,
            ),
            (
                "cache_member_hits",
                "Container members answered from the verdict cache",
                &m.cache_member_hits,
            ),
            (
                "clamd_connections",
                "Connections to the clamd-compatible listener",
                &m.clamd_connections,
            ),
            (
                "clamd_requests",
                "Objects scanned for clamd clients",
                &m.clamd_requests,
            ),
            (
                "clamd_stream_refusals",
                "INSTREAM requests refused for their size",
                &m.clamd_refused,
            ),
            (
                "mirror_errors",
                "Failed fetches of signature bundles from the mirror",
                &m.mirror_errors,
            ),
        ] {
            r.register(name, help, c.clone());
        }
        r.register(
            "cache_entries",
            "Verdict cache entries",
            m.cache_entries.clone(),
        );
        r.register(
            "cache_weight_bytes",
            "Verdict cache size in bytes",
            m.cache_bytes.clone(),
        );
        m
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        if prometheus_client::encoding::text::encode(&mut s, &self.registry).is_err() {
            s.clear();
        }
        s
    }
}
