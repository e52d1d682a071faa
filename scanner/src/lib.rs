//! The svm matching engine.
//!
//! A [`Scanner`] borrows one shared [`SignatureSet`] and owns its scratch space, so each
//! worker thread has its own. It scans byte slices or files and returns a [`ScanResult`]:
//! `Clean`, `Infected` with every match, or `Unscanned` with the reason. A scan that did not
//! happen is never reported clean.
//!
//! ```
//! use scanner::{Scanner, ScanResult};
//!
//! let set = signatures::default_set().unwrap();
//! let mut scanner = Scanner::new(&set);
//! let eicar = [&b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$"[..], b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"].concat();
//! match scanner.scan_bytes(&eicar) {
//!     ScanResult::Infected { matches } => assert_eq!(matches[0].name, "Eicar-Test-Signature"),
//!     other => panic!("{other:?}"),
//! }
//! assert_eq!(scanner.scan_bytes(b"hello"), ScanResult::Clean);
//! ```
//!
//! # How it is fast
//! - Hash signatures are indexed by file size: a file is hashed only when a signature of its
//!   size (or of any size) exists, and only with the algorithms such signatures use.
//! - Body signatures: each signature's best literal atom (up to 8 rare bytes) is indexed. At
//!   every position a bitmap over a hash of the next four bytes (about 256 bits per atom, so
//!   it stays in the L2 cache) rules out almost all positions, eight per step; the few left are
//!   confirmed against an exact, sorted atom table, and each atom hit is verified exactly
//!   (wildcards, jumps in both directions, alternatives, offsets). Signatures pinned to an
//!   offset are checked there directly.
//!   The `aho-corasick` crate was tried first: its DFA in overlapping mode ran at 120 MB/s per
//!   core on the benchmark corpus (the transition table of 5,000 random atoms misses the
//!   cache), and its NFA took over a second and ~250 MB to build for 200,000 atoms.
//! - YARA rules run through one shared `yara_x::Rules`, with a `yara_x::Scanner` per worker,
//!   only when the set holds YARA rules.
//! - Containers (gzip, bzip2, xz, zip, tar; [`containers`]) are opened in memory, nested,
//!   within ClamAV-style [`ArchiveLimits`]; matches name their member, and a
//!   [`MemberCache`] lets a caller remember members' verdicts by content.
//!
//! # Current limitations
//! - Other containers (7z, rar, cab, OLE2, mail, PDF, …) and packed executables are scanned
//!   as raw bytes only.
//! - A file mapped with mmap and truncated by another process while being scanned can raise
//!   SIGBUS; files under 256 KiB are read instead of mapped.

#![deny(unsafe_code)]

pub mod containers;
mod engine;
pub mod reference;
mod verify;

pub use containers::ArchiveLimits;
pub use engine::{
    allow_listed, file_type_name, hash_lookup, io_error_text, FileScan, Limits, Match, MatchKind,
    MemberCache, ScanResult, Scanner, UnscannedReason, BLOCK, LIMITS_EXCEEDED,
};
pub use signatures::SignatureSet;
