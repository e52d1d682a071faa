//! The svm binary's library: command implementations behind a thin `main`.
//!
//! `svm serve` ([`serve`]) is the security VM daemon; `svm check` ([`check`]) and
//! `svm bench-storm` ([`storm`]) act as guests over the real protocol; `svm scan` ([`scan`]) is
//! the offline, parallel corpus scan; `svm sigs info` loads a signature set and describes it,
//! and `svm sigs keygen|build|sign|verify|inspect` ([`sigs`]) make and check signed bundles.
//!
//! ```no_run
//! use svm::scan::{run, ScanOptions};
//! let opts = ScanOptions {
//!     databases: vec![],            // the embedded default set
//!     paths: vec!["/srv/share".into()],
//!     json: false,
//!     threads: 2,
//!     limits: scanner::Limits::default(),
//!     exclude: vec![],
//!     skip_invalid: false,
//!     follow_symlinks: false,
//!     infected_only: true,
//!     no_summary: false,
//!     all_match: false,
//! };
//! let code = run(&opts).unwrap();
//! ```
//!
//! # Current limitations
//! - Containers beyond gzip, bzip2, xz, zip and tar are scanned as raw bytes. Signed bundles
//!   come through the admin API (unix socket, or TCP with TLS and a bearer token) or an
//!   http:// mirror (no https mirrors yet).
//! - With `[server] user` the daemon drops to that user after binding its sockets, and
//!   scanner threads run under a seccomp filter; no Landlock yet.

#![forbid(unsafe_code)]

pub mod check;
pub mod client;
pub mod config;
pub mod report;
pub mod scan;
pub mod scan_memory;
pub mod serve;
pub mod sigs;
pub mod size;
pub mod storm;
