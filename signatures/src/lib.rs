//! Signature loading for svm: ClamAV hash and body signatures, ClamAV `.cvd`/`.cld`
//! containers and YARA rules, compiled into one immutable [`SignatureSet`].
//!
//! The set is built once per host and shared by every scanner thread through an `Arc`.
//!
//! ```
//! use signatures::{Loader, LoadOptions};
//!
//! let mut loader = Loader::new(LoadOptions::strict());
//! loader.add_bytes("local.ndb", b"Demo.Body:0:*:6869{2-4}7468657265\n").unwrap();
//! loader.add_bytes("local.hsb", b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855:0:Demo.Empty\n").unwrap();
//! let set = loader.build().unwrap();
//! assert_eq!(set.counts().body, 1);
//! assert_eq!(set.counts().sha256, 1);
//!
//! // A malformed line names file, line, column and a stable code.
//! let mut loader = Loader::new(LoadOptions::strict());
//! loader.add_bytes("bad.ndb", b"Bad.Sig:0:*:41{5-2}42\n").unwrap();
//! let err = loader.build().unwrap_err().to_string();
//! assert!(err.contains("bad.ndb:1:"), "{err}");
//! assert!(err.contains("SIG009"), "{err}");
//! ```
//!
//! # Supported
//! - `.hdb` (MD5), `.hsb` (SHA-1/SHA-256), sizes or `*`; `.fp`/`.sfp` allow-lists; `.ign2`.
//! - `.ndb` with `??`, `a?`, `?a`, `*`, `{n}`, `{-n}`, `{n-}`, `{n-m}`, `[n-m]`, `(aa|bb)`,
//!   multi-byte and variable-length alternatives, `!(aa|bb)`; offsets `*`, `n`, `n,shift`,
//!   `EOF-n[,shift]`; target types 0 (any), 1 (PE), 6 (ELF), 9 (Mach-O).
//! - `.cvd`/`.cld` containers (512-byte header, then tar or tar.gz; the header MD5 is checked).
//! - YARA (`.yar`, `.yara`) through `yara-x`.
//!
//! # Current limitations
//! - Valid lines of kinds not supported yet (`.ldb`, `.mdb`, `.cdb`, `.ftm`, `.pdb`, `.wdb`,
//!   PUA `.hdu`/`.ndu`, …), `.ndb` target types other than 0/1/6/9, EP/section-relative
//!   offsets and `(B)`/`(L)` anchors are counted in [`SignatureSet::skipped`], not loaded.
//! - The RSA digital signature of a `.cvd` header is not verified; svm's own bundles are signed.

#![forbid(unsafe_code)]

mod body;
pub mod bundle;
mod error;
mod hash;
mod lines;
mod loader;
mod set;

pub use body::{
    parse_pattern, BodySig, ByteSet, Gap, Offset, Pattern, Segment, Target, Tok, MAX_ATOM, MAX_JUMP,
};
pub use error::{ErrorCode, LoadError, ParseError};
pub use hash::{HashIndex, HashKind, HashLayer, HashTable, HashTables, FLEVEL};
pub use loader::{LoadOptions, Loader, MAX_CONTAINER_BYTES};
pub use set::{AtomFilter, AtomRef, AtomTable, BodyDb, Counts, Revalidation, SignatureSet};

/// The default set compiled into the binary: EICAR and the ClamAV test file `clam.exe`.
pub const DEFAULT_NDB: &str = include_str!("../data/svm-default.ndb");

/// Load the embedded default set.
pub fn default_set() -> Result<SignatureSet, LoadError> {
    let mut l = Loader::new(LoadOptions::strict());
    l.add_default()?;
    l.build()
}

#[cfg(test)]
mod tests;
