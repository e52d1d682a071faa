//! `svm serve`'s configuration: a TOML file with `deny_unknown_fields` everywhere.
//!
//! ```toml
//! [server]
//! listen = "/run/svm/svm.sock"     # same-host agents (SO_PEERCRED → VM)
//! vm_socket_dir = "/run/svm/vms"   # QEMU virtio-serial sockets, one per VM: NAME.sock
//! vsock_port = 5310                # AF_VSOCK listener (peer CID → VM)
//! metrics = "127.0.0.1:9310"       # Prometheus /metrics and /healthz ("" = off)
//! audit_log = "/var/log/svm/audit.jsonl"
//! workers = 2                      # scanner threads (default: one per core)
//! cache_size = "256M"              # shared verdict cache, in bytes
//! unknown_peers = "allow"          # unix peers with no [[vm]] entry: "allow" or "reject"
//!
//! [groups.default]
//! on_infected = "deny"             # or "allow_and_log"
//! on_timeout = "allow"             # fail-open; "deny" = fail-closed
//! on_error = "allow"
//! on_unscanned = "allow"
//! deadline_ms = 2000
//! max_file_size = "100M"
//! exclude = ["/proc/**"]
//!
//! [[vm]]
//! name = "ward3-17"
//! group = "icu"
//! uid = 1017                       # optional: a same-host agent running as this uid
//! cid = 17                         # optional: a guest agent on vsock from this CID
//! ```

use crate::size::parse_size;
use anyhow::{bail, Context, Result};
use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A size given as a number of bytes or a string like "256M".
fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u64),
        S(String),
    }
    match Raw::deserialize(d)? {
        Raw::N(n) => Ok(n),
        Raw::S(s) => parse_size(&s).map_err(serde::de::Error::custom),
    }
}

/// What happens to an infected file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnInfected {
    /// Refuse the access.
    Deny,
    /// Let it through, but audit it.
    AllowAndLog,
}

/// A fallback: fail-open or fail-closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// Fail-open.
    Allow,
    /// Fail-closed.
    Deny,
}

/// Unix-socket peers whose uid has no `[[vm]]` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownPeers {
    /// Accept them as VM `uid-N` in group `default`.
    Allow,
    /// Refuse the connection.
    Reject,
}

/// Policies of one VM group.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupConfig {
    /// Infected content.
    pub on_infected: OnInfected,
    /// No verdict before the deadline.
    pub on_timeout: Fallback,
    /// The content could not be read, spooled or scanned.
    pub on_error: Fallback,
    /// Over a size or scan-time limit.
    pub on_unscanned: Fallback,
    /// The longest a guest waits, in ms; event deadlines are capped by it.
    pub deadline_ms: u32,
    /// Larger files are not scanned (`on_unscanned`).
    #[serde(deserialize_with = "de_size")]
    pub max_file_size: u64,
    /// Path globs that are allowed without a scan (counted as `excluded`).
    pub exclude: Vec<String>,
    /// What a detection in a VM's memory does (always audited and counted).
    pub on_memory_detect: MemoryAction,
    /// Where `on_memory_detect = "dump"` writes the VM's memory.
    pub forensics_dir: Option<PathBuf>,
}

/// The action on a detection in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryAction {
    /// Audit log and metrics only.
    Alert,
    /// Also pause the VM (QMP `stop`).
    Pause,
    /// Also pause the VM and write its memory to `forensics_dir`.
    Dump,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            on_infected: OnInfected::Deny,
            on_timeout: Fallback::Allow,
            on_error: Fallback::Allow,
            on_unscanned: Fallback::Allow,
            deadline_ms: 2000,
            max_file_size: 100 << 20,
            exclude: Vec::new(),
            on_memory_detect: MemoryAction::Alert,
            forensics_dir: None,
        }
    }
}

/// One configured VM.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// The VM id (also its socket's name in `vm_socket_dir`).
    pub name: String,
    /// Its group; must exist in `[groups]`.
    #[serde(default = "default_group")]
    pub group: String,
    /// A same-host agent connecting with this uid is this VM.
    pub uid: Option<u32>,
    /// A guest connecting over vsock from this context id is this VM.
    pub cid: Option<u32>,
    /// Its RAM file (QEMU `memory-backend-file,share=on`): swept for memory detections.
    pub qemu_ram: Option<PathBuf>,
    /// Its QMP socket, for the pause and dump actions.
    pub qmp: Option<PathBuf>,
}

fn default_group() -> String {
    "default".into()
}

/// Only for tests of deadlines: a scan whose content holds `marker` sleeps `ms` first.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StallConfig {
    /// Bytes that trigger the stall.
    pub marker: String,
    /// How long.
    pub ms: u64,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The unix socket for same-host agents and `svm check`.
    pub listen: PathBuf,
    /// Drop to this user once the sockets are bound and the files opened (the daemon must
    /// start as root for this); none = keep running as the starting user.
    pub user: Option<String>,
    /// Confine each scanner thread with a seccomp filter before it touches guest data.
    pub seccomp: bool,
    /// Confine the whole daemon with Landlock to the paths this file names (see
    /// `svm::serve::confine`).
    pub landlock: bool,
    /// A directory of QEMU virtio-serial sockets, one per VM (`NAME.sock`).
    pub vm_socket_dir: Option<PathBuf>,
    /// An AF_VSOCK port for guest agents (`svm-agent --connect vsock:2:PORT`); the peer's
    /// CID names the VM (`[[vm]] cid`).
    pub vsock_port: Option<u32>,
    /// `host:port` for `/metrics` and `/healthz`; empty = off.
    pub metrics: String,
    /// The audit log (JSON lines); empty = standard error.
    pub audit_log: Option<PathBuf>,
    /// Scanner threads; 0 = one per core.
    pub workers: usize,
    /// Async I/O threads (protocol, caches); 0 = one per core.
    pub io_threads: usize,
    /// The shared verdict cache, in bytes.
    #[serde(deserialize_with = "de_size")]
    pub cache_size: u64,
    /// Identity-cache entries per VM.
    pub identity_cache_entries: usize,
    /// Content up to this size stays in memory; larger content is spooled to a sealed memfd.
    #[serde(deserialize_with = "de_size")]
    pub memory_threshold: u64,
    /// The most bytes one VM may have buffered or spooled at once.
    #[serde(deserialize_with = "de_size")]
    pub per_vm_spool_cap: u64,
    /// The most scans one VM may have queued, over all its connections; more get the
    /// group's `on_error` verdict at once.
    pub max_queued_per_vm: usize,
    /// The most connections one VM may hold open at once.
    pub max_connections_per_vm: usize,
    /// Largest frame payload accepted.
    #[serde(deserialize_with = "de_size")]
    pub max_payload: u64,
    /// Largest inline content.
    #[serde(deserialize_with = "de_size")]
    pub max_inline: u64,
    /// Largest `READ_REQ` range.
    #[serde(deserialize_with = "de_size")]
    pub max_read_chunk: u64,
    /// A frame must complete within this many ms once it has started (slowloris).
    pub frame_timeout_ms: u64,
    /// An agent must answer a `READ_REQ` within this many ms.
    pub read_timeout_ms: u64,
    /// `HELLO` must arrive within this many ms of the connection.
    pub hello_timeout_ms: u64,
    /// Pending events per connection.
    pub max_pending: usize,
    /// Simultaneous guest connections.
    pub max_connections: usize,
    /// Distinct VMs named in per-VM metrics; the rest are counted as `other`.
    pub metrics_max_vms: usize,
    /// Unix peers without a `[[vm]]` entry.
    pub unknown_peers: UnknownPeers,
    /// Longest scan of one content, in ms (then `on_unscanned`).
    pub max_scan_time_ms: u64,
    /// Testing aid only (see [`StallConfig`]).
    pub test_stall: Option<StallConfig>,
    /// A memory sweep round starts at most this often, per VM.
    pub sweep_interval_ms: u64,
    /// The share of one CPU a VM's sweeper may use (it sleeps longer after a long round).
    pub sweep_max_cpu: f64,
    /// Bytes scanned into the unchanged neighbours of changed pages (the longest signature
    /// found across a page boundary).
    #[serde(deserialize_with = "de_size")]
    pub memory_window: u64,
    /// Page hashes remembered host-wide: a page whose content was scanned with the current
    /// signature set is not scanned again, in any VM.
    pub page_dedup_entries: usize,
    /// Containers nested deeper than this are not opened (0: containers are not opened).
    pub max_recursion: u32,
    /// Members unpacked from one object, at every depth.
    pub max_files: u32,
    /// Bytes unpacked from one object in all.
    #[serde(deserialize_with = "de_size")]
    pub max_scan_size: u64,
    /// Bytes of one member of a container.
    #[serde(deserialize_with = "de_size")]
    pub max_member_size: u64,
    /// A container may unpack at most this many times its own size (above 1 MiB); 0 = no
    /// ratio limit.
    pub max_ratio: u32,
    /// A limit hit is the detection `Heuristics.Limits.Exceeded` (ClamAV's AlertExceedsMax)
    /// instead of unscanned (which the group's `on_unscanned` decides).
    pub alert_exceeds_max: bool,
}

/// The default socket path: `/run/svm/svm.sock`.
pub const DEFAULT_SOCKET: &str = "/run/svm/svm.sock";

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: PathBuf::from(DEFAULT_SOCKET),
            user: None,
            seccomp: true,
            landlock: true,
            vm_socket_dir: None,
            vsock_port: None,
            metrics: "127.0.0.1:9310".into(),
            audit_log: None,
            workers: 0,
            io_threads: 0,
            cache_size: 256 << 20,
            identity_cache_entries: 100_000,
            memory_threshold: 1 << 20,
            per_vm_spool_cap: 2 << 30,
            max_queued_per_vm: 256,
            max_connections_per_vm: 16,
            max_payload: u64::from(hypervisor_api::proto::DEFAULT_MAX_PAYLOAD),
            max_inline: 512 << 10,
            max_read_chunk: 512 << 10,
            frame_timeout_ms: 10_000,
            read_timeout_ms: 30_000,
            hello_timeout_ms: 10_000,
            max_pending: 64,
            max_connections: 4096,
            metrics_max_vms: 1024,
            unknown_peers: UnknownPeers::Allow,
            max_scan_time_ms: 60_000,
            test_stall: None,
            sweep_interval_ms: 1000,
            sweep_max_cpu: 0.25,
            memory_window: 4096,
            page_dedup_entries: 1 << 20,
            max_recursion: 17,
            max_files: 10_000,
            max_scan_size: 400 << 20,
            max_member_size: 100 << 20,
            max_ratio: 1000,
            alert_exceeds_max: false,
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`.
    pub server: ServerConfig,
    /// `[groups.NAME]`.
    pub groups: BTreeMap<String, GroupConfig>,
    /// `[[vm]]`.
    pub vm: Vec<VmConfig>,
    /// `[update]`.
    pub update: UpdateConfig,
    /// `[clamd]`.
    pub clamd: ClamdConfig,
}

/// `[clamd]`: a listener that speaks clamd's protocol, for the tools that already do.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClamdConfig {
    /// Its unix socket (clamd's `LocalSocket`); none = off.
    pub socket: Option<PathBuf>,
    /// The socket's mode (clamd's `LocalSocketMode`), octal digits.
    pub socket_mode: String,
    /// A TCP address too (clamd's `TCPSocket`/`TCPAddr`): unencrypted and unauthenticated,
    /// as with clamd, so keep it on loopback or a management network.
    pub tcp: Option<String>,
    /// The largest `INSTREAM` (clamd's `StreamMaxLength`).
    #[serde(deserialize_with = "de_size")]
    pub max_stream: u64,
    /// Whether `SHUTDOWN` stops the daemon (off: `COMMAND UNAVAILABLE`).
    pub allow_shutdown: bool,
    /// How long a client may take to send a command or a stream chunk, in milliseconds
    /// (clamd's `CommandReadTimeout`/`ReadTimeout`).
    pub read_timeout_ms: u64,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// The VM name its scans are accounted under (policies of its group, audit, metrics).
    pub vm: String,
    /// What `SCAN`, `CONTSCAN`, `MULTISCAN` and `ALLMATCHSCAN` may read when Landlock
    /// confines the daemon (`[server] landlock`); other paths get "Permission denied".
    pub scan_paths: Vec<PathBuf>,
}

impl Default for ClamdConfig {
    fn default() -> Self {
        ClamdConfig {
            socket: None,
            socket_mode: "660".into(),
            tcp: None,
            max_stream: 25 << 20,
            allow_shutdown: false,
            read_timeout_ms: 30_000,
            max_connections: 64,
            vm: "clamd".into(),
            scan_paths: vec![PathBuf::from("/")],
        }
    }
}

/// `[update]`: signed signature bundles.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateConfig {
    /// Trusted publisher public keys: 64 hex digits each, or the path of a `.pub` file.
    /// Without any, no bundle is accepted.
    pub trusted_keys: Vec<String>,
    /// The admin HTTP API's unix socket (`POST`/`GET /v1/signatures`); none = no admin API.
    pub admin_socket: Option<PathBuf>,
    /// Where the last accepted bundle is kept (`current.svmb`); a restart loads it.
    pub state_dir: Option<PathBuf>,
    /// The largest bundle accepted, in bytes.
    #[serde(deserialize_with = "de_size")]
    pub max_bundle: u64,
    /// Pull mode: the URL of the current bundle on a mirror (`http://` only for now).
    pub mirror: Option<String>,
    /// Seconds between two fetches from the mirror.
    pub mirror_interval_s: u64,
    /// The admin API on TCP as well, `ADDR:PORT`: always TLS, always with a bearer token
    /// (`admin_tls_cert`, `admin_tls_key` and `admin_token_file` are then required).
    pub admin_listen: Option<String>,
    /// The TLS certificate chain of `admin_listen`, PEM.
    pub admin_tls_cert: Option<PathBuf>,
    /// The TLS private key of `admin_listen`, PEM.
    pub admin_tls_key: Option<PathBuf>,
    /// A file holding the bearer token that `admin_listen` clients must send
    /// (`Authorization: Bearer TOKEN`), one word of at least 16 characters.
    pub admin_token_file: Option<PathBuf>,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            trusted_keys: Vec::new(),
            admin_socket: None,
            state_dir: None,
            max_bundle: signatures::bundle::Limits::default().max_bundle,
            mirror: None,
            mirror_interval_s: 3600,
            admin_listen: None,
            admin_tls_cert: None,
            admin_tls_key: None,
            admin_token_file: None,
        }
    }
}

/// A group with its exclusion globs compiled.
#[derive(Debug, Clone)]
pub struct Group {
    /// Its name.
    pub name: String,
    /// Its policies.
    pub cfg: GroupConfig,
    /// Compiled `exclude`.
    pub exclude: GlobSet,
}

/// The configuration in the form the daemon uses; swapped whole on SIGHUP.
#[derive(Debug)]
pub struct Resolved {
    /// The parsed file.
    pub cfg: Config,
    /// Groups by name (always holds `default`).
    pub groups: BTreeMap<String, std::sync::Arc<Group>>,
    /// The group of each configured VM (looked up on every event).
    vm_groups: std::collections::HashMap<String, std::sync::Arc<Group>>,
    /// The default group.
    default: std::sync::Arc<Group>,
}

impl Resolved {
    /// The group of a VM: its `[[vm]]` entry's, else `default`.
    pub fn group_of(&self, vm: &str) -> std::sync::Arc<Group> {
        self.vm_groups.get(vm).unwrap_or(&self.default).clone()
    }

    /// The VM a same-host uid maps to.
    pub fn vm_for_uid(&self, uid: u32) -> Option<&str> {
        self.cfg
            .vm
            .iter()
            .find(|v| v.uid == Some(uid))
            .map(|v| v.name.as_str())
    }

    /// The VM a vsock context id maps to.
    pub fn vm_for_cid(&self, cid: u32) -> Option<&str> {
        self.cfg
            .vm
            .iter()
            .find(|v| v.cid == Some(cid))
            .map(|v| v.name.as_str())
    }
}

impl Config {
    /// Read and check a file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in config {}", path.display()))
    }

    /// Parse and check TOML text.
    pub fn parse(text: &str) -> Result<Config> {
        let cfg: Config = toml::from_str(text)?;
        Ok(cfg)
    }

    /// Check cross-references and compile globs.
    pub fn resolve(self) -> Result<Resolved> {
        let mut groups = BTreeMap::new();
        let mut all = self.groups.clone();
        all.entry("default".into()).or_default();
        for (name, g) in all {
            if g.deadline_ms == 0 {
                bail!("group {name:?}: deadline_ms must be at least 1");
            }
            let mut b = GlobSetBuilder::new();
            for pat in &g.exclude {
                b.add(Glob::new(pat).with_context(|| format!("group {name:?}: exclude {pat:?}"))?);
            }
            let exclude = b.build()?;
            groups.insert(
                name.clone(),
                std::sync::Arc::new(Group {
                    name,
                    cfg: g,
                    exclude,
                }),
            );
        }
        if let Some(m) = &self.update.mirror {
            if !m.starts_with("http://") {
                bail!("update.mirror {m:?}: only http:// mirrors are supported yet (bundles are signed; TLS is not built in)");
            }
        }
        let mut seen = std::collections::HashSet::new();
        for v in &self.vm {
            if !groups.contains_key(&v.group) {
                bail!("vm {:?}: unknown group {:?}", v.name, v.group);
            }
            if !valid_vm_name(&v.name) {
                bail!(
                    "vm {:?}: a VM name is 1-64 letters, digits, '.', '_' or '-'",
                    v.name
                );
            }
            if !seen.insert(v.name.as_str()) {
                bail!("vm {:?} is listed twice", v.name);
            }
            if let (Some(_), Some(g)) = (&v.qemu_ram, groups.get(&v.group)) {
                let action = g.cfg.on_memory_detect;
                if action != MemoryAction::Alert && v.qmp.is_none() {
                    bail!(
                        "vm {:?}: on_memory_detect = {action:?} needs qmp = SOCKET",
                        v.name
                    );
                }
                if action == MemoryAction::Dump && g.cfg.forensics_dir.is_none() {
                    bail!(
                        "vm {:?}: group {:?} dumps memory but has no forensics_dir",
                        v.name,
                        v.group
                    );
                }
            }
            if v.cid.is_some_and(|c| c < 3) {
                bail!(
                    "vm {:?}: vsock CIDs 0-2 are reserved; a guest's CID is 3 or more",
                    v.name
                );
            }
            for (kind, id) in [("uid", v.uid), ("cid", v.cid)] {
                let Some(id) = id else { continue };
                let again = self.vm.iter().find(|w| {
                    w.name != v.name && (if kind == "uid" { w.uid } else { w.cid }) == Some(id)
                });
                if let Some(w) = again {
                    bail!("vm {:?} and vm {:?} both claim {kind} {id}", v.name, w.name);
                }
            }
        }
        let s = &self.server;
        let max = u64::from(hypervisor_api::proto::HARD_MAX_PAYLOAD);
        if s.max_payload > max || s.max_payload < 4096 {
            bail!("server.max_payload must be between 4K and {max}");
        }
        if s.max_inline + 8192 > s.max_payload || s.max_read_chunk + 64 > s.max_payload {
            bail!("server.max_inline and max_read_chunk must fit in max_payload with room for headers");
        }
        if !(s.sweep_max_cpu > 0.0 && s.sweep_max_cpu <= 1.0) {
            bail!("server.sweep_max_cpu is a share of one CPU: more than 0, at most 1");
        }
        if s.max_read_chunk == 0 || s.max_pending == 0 || s.max_connections == 0 {
            bail!("server.max_read_chunk, max_pending and max_connections must be positive");
        }
        let Some(default) = groups.get("default").cloned() else {
            bail!("no default group");
        };
        let vm_groups = self
            .vm
            .iter()
            .filter_map(|v| Some((v.name.clone(), groups.get(&v.group)?.clone())))
            .collect();
        Ok(Resolved {
            cfg: self,
            groups,
            vm_groups,
            default,
        })
    }
}

/// A VM id usable as a socket name, a label and a log field.
pub fn valid_vm_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !s.starts_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_groups() {
        let c = Config::parse(
            r#"
            [server]
            cache_size = "64M"
            [groups.icu]
            on_timeout = "deny"
            deadline_ms = 500
            exclude = ["/proc/**"]
            [[vm]]
            name = "ward3-17"
            group = "icu"
            uid = 1017
            cid = 17
            "#,
        )
        .unwrap()
        .resolve()
        .unwrap();
        assert_eq!(c.cfg.server.cache_size, 64 << 20);
        let g = c.group_of("ward3-17");
        assert_eq!(g.name, "icu");
        assert_eq!(g.cfg.on_timeout, Fallback::Deny);
        assert_eq!(g.cfg.on_infected, OnInfected::Deny);
        assert!(g.exclude.is_match("/proc/1/maps"));
        assert_eq!(c.group_of("other").name, "default");
        assert_eq!(c.vm_for_uid(1017), Some("ward3-17"));
        assert_eq!(c.vm_for_cid(17), Some("ward3-17"));
        assert_eq!(c.vm_for_cid(18), None);
    }

    #[test]
    fn unknown_fields_and_bad_refs_are_errors() {
        assert!(Config::parse("[server]\nlisen = \"/x\"").is_err());
        assert!(Config::parse("[groups.a]\non_timeout = \"maybe\"").is_err());
        let bad_group = Config::parse("[[vm]]\nname = \"a\"\ngroup = \"nope\"").unwrap();
        assert!(bad_group.resolve().is_err());
        for bad in [
            "[[vm]]\nname = \"a\"\ncid = 2",
            "[[vm]]\nname = \"a\"\ncid = 5\n[[vm]]\nname = \"b\"\ncid = 5",
            "[[vm]]\nname = \"a\"\nuid = 5\n[[vm]]\nname = \"b\"\nuid = 5",
        ] {
            assert!(Config::parse(bad).unwrap().resolve().is_err(), "{bad}");
        }
        let bad_name = Config::parse("[[vm]]\nname = \"../x\"").unwrap();
        assert!(bad_name.resolve().is_err());
    }
}
