//! The admin API on TCP (`[update] admin_listen`): TLS with rustls, and a bearer token.
//!
//! Over TCP the admin API is never plain: `admin_tls_cert` and `admin_tls_key` (PEM) are
//! required, and so is `admin_token_file`, whose token every request must carry
//! (`Authorization: Bearer TOKEN`, compared in constant time). The unix socket stays the
//! default and needs no token: its 0600 mode is the access control.
//!
//! Handshakes run in their own tasks with a timeout and a bound on how many run at once, so
//! a client that connects and stays silent delays nobody.

use super::Shared;
use crate::config::UpdateConfig;
use anyhow::{bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once.
const MAX_HANDSHAKES: usize = 64;
/// The shortest bearer token accepted.
const MIN_TOKEN: usize = 16;

/// Accepted TLS connections, for `axum::serve`.
#[derive(Debug)]
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The acceptor is gone (shutdown): accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// The admin TCP endpoint's settings, checked: the address, TLS configuration and token.
pub struct AdminTcp {
    addr: String,
    tls: Arc<rustls::ServerConfig>,
    token: Arc<str>,
}

impl std::fmt::Debug for AdminTcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminTcp")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Read and check the TCP admin settings; `None` when `admin_listen` is not set.
pub fn settings(cfg: &UpdateConfig) -> Result<Option<AdminTcp>> {
    let Some(addr) = &cfg.admin_listen else {
        return Ok(None);
    };
    let (Some(cert), Some(key), Some(token)) = (
        &cfg.admin_tls_cert,
        &cfg.admin_tls_key,
        &cfg.admin_token_file,
    ) else {
        bail!(
            "[update] admin_listen needs admin_tls_cert, admin_tls_key and admin_token_file: \
             the admin API is never served on TCP without TLS and a token"
        );
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("admin_tls_cert {}", cert.display()))?;
    if certs.is_empty() {
        bail!("admin_tls_cert {}: no certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("admin_tls_key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("admin_tls_cert and admin_tls_key do not make a TLS identity")?;
    let text = std::fs::read_to_string(token)
        .with_context(|| format!("admin_token_file {}", token.display()))?;
    let text = text.trim();
    if text.len() < MIN_TOKEN || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!(
            "admin_token_file {}: the token must be one word of at least {MIN_TOKEN} characters",
            token.display()
        );
    }
    Ok(Some(AdminTcp {
        addr: addr.clone(),
        tls: Arc::new(tls),
        token: Arc::from(text),
    }))
}

/// Bind the TCP endpoint and start accepting TLS connections; returns the listener for
/// `axum::serve` and the address it is bound to.
pub async fn bind(tcp: &AdminTcp) -> Result<TlsListener> {
    let l = tokio::net::TcpListener::bind(&tcp.addr)
        .await
        .with_context(|| format!("binding admin_listen {}", tcp.addr))?;
    let addr = l.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tcp.tls.clone());
    let (tx, rx) = mpsc::channel(MAX_HANDSHAKES);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (sock, peer) = match l.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("admin_listen: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send((tls, peer)).await;
                    }
                    Ok(Err(e)) => tracing::info!("admin_listen: TLS handshake with {peer}: {e}"),
                    Err(_) => tracing::info!("admin_listen: TLS handshake with {peer} timed out"),
                }
            });
        }
    });
    Ok(TlsListener { rx, addr })
}

/// The admin routes behind the bearer token. A refused `POST` is audited as a refused update.
pub fn with_token(router: axum::Router, tcp: &AdminTcp, shared: Arc<Shared>) -> axum::Router {
    use axum::http::{Method, StatusCode};
    use axum::response::IntoResponse;
    let token = tcp.token.clone();
    router.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let (token, shared) = (token.clone(), shared.clone());
            async move {
                if authorized(req.headers(), &token) {
                    return next.run(req).await;
                }
                if req.method() == Method::POST {
                    let version = shared.sigs.load().version;
                    super::update::record(
                        &shared,
                        "admin-tcp",
                        None,
                        "refuse",
                        "refused",
                        version,
                        Some("no valid bearer token".into()),
                    );
                }
                (
                    StatusCode::UNAUTHORIZED,
                    [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
                    axum::Json(serde_json::json!({"error": "a valid bearer token is required"})),
                )
                    .into_response()
            }
        },
    ))
}

/// Whether the request carries `Authorization: Bearer TOKEN` with the right token.
fn authorized(headers: &axum::http::HeaderMap, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| bool::from(given.trim().as_bytes().ct_eq(token.as_bytes())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_authorized() {
        let mut h = axum::http::HeaderMap::new();
        let token = "0123456789abcdef-token";
        assert!(!authorized(&h, token));
        for (value, ok) in [
            ("Bearer 0123456789abcdef-token", true),
            ("Bearer 0123456789abcdef-toke", false),
            ("Bearer 0123456789abcdef-tokenX", false),
            ("Basic 0123456789abcdef-token", false),
            ("0123456789abcdef-token", false),
            ("Bearer ", false),
        ] {
            h.insert(axum::http::header::AUTHORIZATION, value.parse().unwrap());
            assert_eq!(authorized(&h, token), ok, "{value}");
        }
    }

    #[test]
    fn tcp_without_tls_or_token_is_refused() {
        let cfg = UpdateConfig {
            admin_listen: Some("127.0.0.1:0".into()),
            ..UpdateConfig::default()
        };
        let e = settings(&cfg).unwrap_err().to_string();
        assert!(e.contains("never served on TCP without TLS"), "{e}");
        assert!(settings(&UpdateConfig::default()).unwrap().is_none());
    }
}
