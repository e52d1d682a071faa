//! `svm serve`: the security VM daemon.
//!
//! Guests connect over the v1 protocol (`hypervisor_api::proto`) through a unix socket
//! (identity from `SO_PEERCRED`) or through QEMU virtio-serial sockets in a directory (identity
//! from the socket's name). Each file event goes through [`pipeline`]; scans run on
//! dedicated threads fed by a fair priority [`sched::Scheduler`]; verdicts come back before
//! each event's deadline or the group's fallback policy answers.

pub mod admin_tls;
pub mod audit;
pub mod clamd;
pub mod confine;
mod conn;
pub mod fdpass;
pub mod memwatch;
pub mod metrics;
pub mod mirror;
pub mod pipeline;
pub mod privs;
pub mod sandbox;
pub mod sched;
pub mod update;

use crate::config::{Config, Resolved, UnknownPeers};
use anyhow::{bail, Context, Result};
use arc_swap::ArcSwap;
use pipeline::{CountCleanEvictions, Flights, Job, RecordWeight, SigState, VerdictCache, VmState};
use signatures::SignatureSet;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Daemon state shared by every connection and scanner thread.
#[derive(Debug)]
pub struct Shared {
    /// The configuration (swapped on SIGHUP).
    pub config: ArcSwap<Resolved>,
    /// The signature set in use.
    pub sigs: ArcSwap<SigState>,
    /// The verdict cache, shared by all VMs.
    pub cache: VerdictCache,
    /// Scans in flight.
    pub flights: Flights,
    /// Per-VM state.
    vms: Mutex<HashMap<Arc<str>, Arc<VmState>>>,
    /// The scan queue.
    pub sched: sched::Scheduler<Job>,
    /// Metrics.
    pub metrics: metrics::Metrics,
    /// The audit log.
    pub audit: audit::Audit,
    next_session: AtomicU64,
    /// Rate limit for guest-triggered warnings.
    pub guest_log: audit::LogLimiter,
    /// Held while a signature update is checked and swapped in.
    pub update_lock: Mutex<()>,
    /// Connections open per VM (`max_connections_per_vm`).
    vm_conns: Arc<Mutex<HashMap<String, usize>>>,
}

/// One VM's place among its open connections, given back when dropped.
struct VmConn {
    conns: Arc<Mutex<HashMap<String, usize>>>,
    vm: String,
}

impl VmConn {
    /// Take a place for `vm`, unless it holds `max` connections already.
    fn take(conns: &Arc<Mutex<HashMap<String, usize>>>, vm: &str, max: usize) -> Option<Self> {
        let mut m = conns.lock().unwrap_or_else(PoisonError::into_inner);
        let n = m.entry(vm.to_owned()).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(VmConn {
            conns: conns.clone(),
            vm: vm.to_owned(),
        })
    }
}

impl Drop for VmConn {
    fn drop(&mut self) {
        let mut m = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = m.get_mut(&self.vm) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.vm);
            }
        }
    }
}

impl Shared {
    /// The state of a VM, created on first use.
    pub fn vm(&self, name: &str) -> Arc<VmState> {
        let mut vms = self.vms.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(v) = vms.get(name) {
            return v.clone();
        }
        let cfg = self.config.load();
        let idx = vms.len() as u32;
        let name: Arc<str> = Arc::from(name);
        let label = if (idx as usize) < cfg.cfg.server.metrics_max_vms {
            name.to_string()
        } else {
            "other".to_string()
        };
        let v = Arc::new(VmState {
            name: name.clone(),
            idx,
            label: metrics::VmLabels { vm: label },
            identity: Mutex::new(quick_cache::unsync::Cache::new(
                cfg.cfg.server.identity_cache_entries.max(16),
            )),
            spooled: AtomicU64::new(0),
        });
        vms.insert(name, v.clone());
        v
    }

    fn session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// Options of `svm serve` from the command line (each overrides the config file).
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// The config file.
    pub config: Option<PathBuf>,
    /// Signature files or directories; empty = the embedded default set.
    pub databases: Vec<PathBuf>,
    /// `--listen`.
    pub listen: Option<PathBuf>,
    /// `--vm-socket-dir`.
    pub vm_socket_dir: Option<PathBuf>,
    /// `--vsock-port`.
    pub vsock_port: Option<u32>,
    /// `--metrics`.
    pub metrics: Option<String>,
    /// `--audit-log`.
    pub audit_log: Option<PathBuf>,
    /// `--workers`.
    pub workers: Option<usize>,
}

fn load_config(opts: &ServeOptions) -> Result<Resolved> {
    let mut cfg = match &opts.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let s = &mut cfg.server;
    if let Some(l) = &opts.listen {
        s.listen = l.clone();
    }
    if let Some(d) = &opts.vm_socket_dir {
        s.vm_socket_dir = Some(d.clone());
    }
    if let Some(p) = opts.vsock_port {
        s.vsock_port = Some(p);
    }
    if let Some(m) = &opts.metrics {
        s.metrics = m.clone();
    }
    if let Some(a) = &opts.audit_log {
        s.audit_log = Some(a.clone());
    }
    if let Some(w) = opts.workers {
        s.workers = w;
    }
    cfg.resolve()
}

/// The cache epoch of a set: derived from its digest, so it is the same across restarts with
/// the same signatures and changes whenever they change.
pub(crate) fn epoch_of(set: &SignatureSet) -> u64 {
    let d = set.digest();
    let mut b = [0u8; 8];
    b.copy_from_slice(d.get(..8).unwrap_or(&[0; 8]));
    u64::from_le_bytes(b).max(1)
}

/// Run the daemon until SIGTERM/SIGINT; then drain in-flight events and return.
pub fn run(opts: ServeOptions) -> Result<()> {
    let resolved = load_config(&opts)?;
    // Before any thread exists, so that every thread inherits the ruleset.
    confine::restrict(&opts, &resolved)?;
    let server = resolved.cfg.server.clone();
    let workers = match server.workers {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let started = std::time::Instant::now();
    // The last accepted bundle, verified again, wins over the -d set.
    let persisted = match update::load_persisted(&resolved.cfg.update) {
        Some(Ok(l)) => Some(l),
        Some(Err(e)) => {
            eprintln!("svm serve: the persisted signature bundle is not used: {e}");
            None
        }
        None => None,
    };
    let sigs = match persisted {
        Some(l) => update::state_of(l, Vec::new(), None),
        None => {
            let (set, _) = crate::scan::load_set(&opts.databases, false)?;
            SigState {
                epoch: epoch_of(&set),
                set: Arc::new(set),
                version: 1,
                publisher: None,
                loaded_at: audit::now_rfc3339(),
                revalidate: Vec::new(),
                epoch_evictions: 0,
            }
        }
    };
    let load = started.elapsed();
    let metrics = metrics::Metrics::new();
    let (audit, audit_thread) =
        audit::start(server.audit_log.as_deref(), metrics.audit_dropped.clone())?;
    let shared = Arc::new(Shared {
        config: ArcSwap::from_pointee(resolved),
        sigs: ArcSwap::from_pointee(sigs),
        cache: quick_cache::sync::Cache::with(
            (server.cache_size / 256).max(64) as usize,
            server.cache_size,
            RecordWeight,
            quick_cache::DefaultHashBuilder::default(),
            CountCleanEvictions(metrics.cache_clean_evictions.clone()),
        ),
        flights: Mutex::new(HashMap::new()),
        vms: Mutex::new(HashMap::new()),
        sched: sched::Scheduler::default(),
        metrics,
        audit,
        next_session: AtomicU64::new(0),
        guest_log: audit::LogLimiter::new(20),
        update_lock: Mutex::new(()),
        vm_conns: Arc::default(),
    });
    // Scanner threads start once the sockets are bound and privileges dropped (`serve`):
    // each confines itself with seccomp at start, and a confined thread could not follow a
    // later change of user.
    let threads = Arc::new(Mutex::new(Vec::new()));
    let sweep_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut sweepers = memwatch::start(&shared, &sweep_stop);
    sweepers.extend(mirror::start(&shared, &sweep_stop));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(match server.io_threads {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        })
        .thread_name("svm-io")
        .enable_all()
        .build()?;
    let res = rt.block_on(serve(
        shared.clone(),
        opts,
        load,
        (workers, threads.clone()),
    ));
    let threads = std::mem::take(&mut *threads.lock().unwrap_or_else(PoisonError::into_inner));
    shared.sched.close();
    sweep_stop.store(true, Ordering::Relaxed);
    for t in threads.into_iter().chain(sweepers) {
        let _ = t.join();
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    // The audit writer ends when the last handle is gone; wait for it so no record is lost.
    if Arc::strong_count(&shared) == 1 {
        drop(shared);
        let _ = audit_thread.join();
    }
    res
}

/// Bind the unix socket, removing a stale one (nobody listening) but never a live one.
fn bind_unix(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating socket directory {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("{} is in use by a running daemon", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let l = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    // Identity comes from SO_PEERCRED, so any local user may connect.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(l)
}

/// Scanner threads to start, and where their handles go.
type Workers = (usize, Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>);

async fn serve(
    shared: Arc<Shared>,
    opts: ServeOptions,
    load: Duration,
    workers: Workers,
) -> Result<()> {
    let server = shared.config.load().cfg.server.clone();
    let listener = bind_unix(&server.listen)?;
    let vsock = match server.vsock_port {
        Some(port) => Some(
            tokio_vsock::VsockListener::bind(tokio_vsock::VsockAddr::new(
                tokio_vsock::VMADDR_CID_ANY,
                port,
            ))
            .with_context(|| format!("binding vsock port {port}"))?,
        ),
        None => None,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let metrics_addr = if server.metrics.is_empty() {
        None
    } else {
        let l = tokio::net::TcpListener::bind(&server.metrics)
            .await
            .with_context(|| format!("binding metrics address {}", server.metrics))?;
        let addr = l.local_addr()?;
        let app = {
            let s1 = shared.clone();
            let s2 = shared.clone();
            axum::Router::new()
                .route(
                    "/metrics",
                    axum::routing::get(move || {
                        let s = s1.clone();
                        async move {
                            (
                                [(
                                    axum::http::header::CONTENT_TYPE,
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                )],
                                s.metrics.encode(),
                            )
                        }
                    }),
                )
                .route(
                    "/healthz",
                    axum::routing::get(move || {
                        let s = s2.clone();
                        async move {
                            let sigs = s.sigs.load();
                            format!(
                                "ok sigset_version={} cache_epoch={} queue_depth={}\n",
                                sigs.version,
                                sigs.epoch,
                                s.sched.depth()
                            )
                        }
                    }),
                )
        };
        spawn_http(l, app, stop_rx.clone());
        Some(addr)
    };
    let admin = shared.config.load().cfg.update.clone();
    if let Some(path) = &admin.admin_socket {
        let l = update::bind_admin(path)?;
        spawn_http(l, update::router(shared.clone()), stop_rx.clone());
    }
    let clamd_cfg = shared.config.load().cfg.clamd.clone();
    clamd::start(&shared, &clamd_cfg, stop_rx.clone()).await?;
    if let Some(tcp) = admin_tls::settings(&admin)? {
        let l = admin_tls::bind(&tcp).await?;
        eprintln!(
            "svm serve: admin API on https://{} (bearer token required)",
            axum::serve::Listener::local_addr(&l)?
        );
        let app = admin_tls::with_token(update::router(shared.clone()), &tcp, shared.clone());
        spawn_http(l, app, stop_rx.clone());
    }
    // Every socket is bound and every file opened: drop to the configured user.
    if let Some(user) = &server.user {
        privs::drop_to(user)?;
    }
    let started = pipeline::start_workers(&shared, workers.0)?;
    workers
        .1
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .extend(started);
    // Signal handlers before "ready": a SIGHUP sent as soon as the daemon says it is ready
    // must reload, not kill it (SIGHUP's default action).
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let sigs = shared.sigs.load_full();
    eprintln!(
        "svm serve: ready: listen={} metrics={} vm_socket_dir={} vsock={} signatures={} version={} epoch={} load={:.2}s",
        server.listen.display(),
        metrics_addr.map_or("off".to_string(), |a| a.to_string()),
        server
            .vm_socket_dir
            .as_ref()
            .map_or("off".to_string(), |d| d.display().to_string()),
        server.vsock_port.map_or("off".to_string(), |p| p.to_string()),
        sigs.set.counts().detection_total(),
        sigs.version,
        sigs.epoch,
        load.as_secs_f64()
    );
    let conns = Arc::new(tokio::sync::Semaphore::new(server.max_connections));
    let mut tasks: JoinSet<()> = JoinSet::new();
    // VM sockets: rescanned every second.
    let (vm_done_tx, mut vm_done_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut vm_connected: HashSet<String> = HashSet::new();
    let mut rescan = tokio::time::interval(Duration::from_secs(1));
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = sighup.recv() => reload(&shared, &opts),
            Some(name) = vm_done_rx.recv() => { vm_connected.remove(&name); }
            _ = rescan.tick() => {
                let dir = shared.config.load().cfg.server.vm_socket_dir.clone();
                if let Some(dir) = dir {
                    for (name, path) in vm_sockets(&dir) {
                        if vm_connected.contains(&name) {
                            continue;
                        }
                        let Ok(permit) = conns.clone().try_acquire_owned() else { break };
                        vm_connected.insert(name.clone());
                        let (shared, stop, done) = (shared.clone(), stop_rx.clone(), vm_done_tx.clone());
                        tasks.spawn(async move {
                            match UnixStream::connect(&path).await {
                                Ok(s) => conn::serve_conn(shared, s, name.clone(), "vm-socket", None, stop, None).await,
                                Err(e) => {
                                    if shared.guest_log.allow().is_some() {
                                        tracing::warn!(vm = %name, "connecting to {}: {e}", path.display());
                                    }
                                }
                            }
                            drop(permit);
                            let _ = done.send(name);
                        });
                    }
                }
            }
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(x) => x,
                    Err(e) => { tracing::warn!("accept: {e}"); continue; }
                };
                let vm = peer_vm(&shared, &stream);
                let admit = Admit { shared: &shared, conns: &conns, stop: &stop_rx, max: server.max_connections };
                admit.session(&mut tasks, stream, vm, "unix", |stream| {
                    // Same-host agents may pass file descriptors (SCM_RIGHTS).
                    let fds = fdpass::FdQueue::default();
                    (fdpass::FdStream::new(stream, fds.clone()), Some(fds))
                });
            }
            accepted = accept_vsock(vsock.as_ref()) => {
                let (stream, addr) = match accepted {
                    Ok(x) => x,
                    Err(e) => { tracing::warn!("vsock accept: {e}"); continue; }
                };
                let vm = vm_for_cid(&shared, addr.cid());
                let admit = Admit { shared: &shared, conns: &conns, stop: &stop_rx, max: server.max_connections };
                admit.session(&mut tasks, stream, vm, "vsock", |s| (s, None));
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    eprintln!("svm serve: stopping: draining in-flight events");
    let _ = stop_tx.send(true);
    drop(listener);
    let _ = std::fs::remove_file(&server.listen);
    while tasks.join_next().await.is_some() {}
    eprintln!("svm serve: stopped");
    Ok(())
}

/// Serve `app` on `l` until the daemon stops.
fn spawn_http<L>(l: L, app: axum::Router, mut stop: watch::Receiver<bool>)
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    tokio::spawn(async move {
        let _ = axum::serve(l, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
    });
}

/// `NAME.sock` entries of the VM socket directory with valid VM names.
fn vm_sockets(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| {
            let p = e.path();
            let name = p.file_name()?.to_str()?.strip_suffix(".sock")?.to_owned();
            crate::config::valid_vm_name(&name).then_some((name, p))
        })
        .collect()
}

/// What admitting an accepted connection needs.
struct Admit<'a> {
    shared: &'a Arc<Shared>,
    conns: &'a Arc<tokio::sync::Semaphore>,
    stop: &'a watch::Receiver<bool>,
    max: usize,
}

impl Admit<'_> {
    /// Take a connection slot, refuse a peer that is no configured VM, and serve the rest.
    fn session<S, T>(
        &self,
        tasks: &mut JoinSet<()>,
        stream: S,
        vm: Result<String, String>,
        via: &'static str,
        wrap: impl FnOnce(S) -> (T, Option<fdpass::FdQueue>) + Send + 'static,
    ) where
        S: tokio::io::AsyncWrite + Unpin + Send + 'static,
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Ok(permit) = self.conns.clone().try_acquire_owned() else {
            tracing::warn!("{via} connection refused: {} connections open", self.max);
            return;
        };
        let per_vm = self.shared.config.load().cfg.server.max_connections_per_vm;
        let place = vm.and_then(|vm| {
            let place = VmConn::take(&self.shared.vm_conns, &vm, per_vm).ok_or_else(|| {
                format!("VM {vm:?} has {per_vm} connections open (max_connections_per_vm)")
            })?;
            Ok((vm, place))
        });
        let (vm, place) = match place {
            Ok(x) => x,
            Err(why) => {
                self.shared
                    .metrics
                    .protocol_errors
                    .get_or_create(&metrics::KindLabels { kind: "refused" })
                    .inc();
                tasks.spawn(conn::refuse(stream, why));
                return;
            }
        };
        let (shared, stop) = (self.shared.clone(), self.stop.clone());
        // A peer that connected to us must say HELLO in time (slowloris).
        let hello = Duration::from_millis(shared.config.load().cfg.server.hello_timeout_ms);
        tasks.spawn(async move {
            let (stream, fds) = wrap(stream);
            conn::serve_conn(shared, stream, vm, via, Some(hello), stop, fds).await;
            drop(place);
            drop(permit);
        });
    }
}

/// The next vsock connection; never, without a vsock listener.
async fn accept_vsock(
    l: Option<&tokio_vsock::VsockListener>,
) -> std::io::Result<(tokio_vsock::VsockStream, tokio_vsock::VsockAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// The VM a vsock peer is, from its context id (assigned by the hypervisor, so it cannot be
/// claimed by the guest).
fn vm_for_cid(shared: &Shared, cid: u32) -> Result<String, String> {
    let cfg = shared.config.load();
    if let Some(vm) = cfg.vm_for_cid(cid) {
        return Ok(vm.to_owned());
    }
    match cfg.cfg.server.unknown_peers {
        UnknownPeers::Allow => Ok(format!("cid-{cid}")),
        UnknownPeers::Reject => Err(format!("vsock CID {cid} is not a configured VM")),
    }
}

/// The VM a unix peer is, from `SO_PEERCRED`.
fn peer_vm(shared: &Shared, s: &UnixStream) -> Result<String, String> {
    let cred = s
        .peer_cred()
        .map_err(|e| format!("no peer credentials: {e}"))?;
    let cfg = shared.config.load();
    if let Some(vm) = cfg.vm_for_uid(cred.uid()) {
        return Ok(vm.to_owned());
    }
    match cfg.cfg.server.unknown_peers {
        UnknownPeers::Allow => Ok(format!("uid-{}", cred.uid())),
        UnknownPeers::Reject => Err(format!("uid {} is not a configured VM", cred.uid())),
    }
}

fn reload(shared: &Shared, opts: &ServeOptions) {
    match load_config(opts) {
        Ok(new) => {
            let old = shared.config.load();
            if new.cfg.server.listen != old.cfg.server.listen {
                tracing::warn!(
                    "config reload: a new listen path needs a restart; keeping the old socket"
                );
            }
            if old.cfg.server.landlock {
                let added = confine::added_paths(opts, &old, &new);
                if !added.is_empty() {
                    tracing::warn!(
                        "config reload: Landlock confines the daemon to the paths it started \
                         with; these new ones are unreachable until a restart: {}",
                        added.join(", ")
                    );
                }
            }
            shared.config.store(Arc::new(new));
            eprintln!("svm serve: configuration reloaded");
        }
        Err(e) => eprintln!("svm serve: configuration NOT reloaded: {e:#}"),
    }
}
