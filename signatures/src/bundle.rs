//! Signed signature bundles: the signature files of one set version, a manifest, and an
//! ed25519 signature, in one file that is safe to fetch from a hostile network or mirror.
//!
//! Layout (all integers little-endian; `docs/bundle.md` has the details):
//!
//! ```text
//! 0        8   magic "SVMBNDL1"
//! 8        4   manifest length M (at most MAX_MANIFEST)
//! 12       M   manifest, JSON (format version, set version, creation time, publisher key
//!              id, payload size and BLAKE3 digest, and per file: name, size, packed size,
//!              SHA-256; counts per signature kind)
//! 12+M    64   ed25519 signature over bytes 0..12+M (all zero: not signed yet)
//! 76+M     …   payload: each file raw-deflated, in manifest order, nothing after
//! ```
//!
//! [`verify`] checks, in this order, before any signature file is parsed: the sizes against
//! the caps, the signature against the trusted keys (on the raw manifest bytes, before the
//! JSON is parsed), the manifest, the payload's size and digest (before any byte is
//! inflated), then each file while it is inflated, with its declared size as a hard limit
//! (a decompression bomb stops at that limit) and its SHA-256.
//!
//! ```
//! use signatures::bundle::{self, Keypair};
//! let key = Keypair::from_seed([7; 32]);
//! let files = vec![("local.ndb".to_string(), b"Demo.Body:0:*:68656c6c6f\n".to_vec())];
//! let unsigned = bundle::build(&files, 42, bundle::Counts::default(), 1_800_000_000).unwrap();
//! let signed = bundle::sign(&unsigned, &key).unwrap();
//! let ok = bundle::verify(&signed, &[key.public()], &bundle::Limits::default()).unwrap();
//! assert_eq!(ok.manifest.set_version, 42);
//! assert_eq!(ok.files[0].1, files[0].1);
//! ```
//!
//! # Current limitations
//! - One signature per bundle (one publisher key); no key expiry or revocation list: the
//!   trusted keys are whatever the configuration lists.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::Digest;
use std::collections::BTreeMap;
use std::io::Read;

/// The file's first bytes.
pub const MAGIC: &[u8; 8] = b"SVMBNDL1";
/// The manifest format this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The largest manifest accepted.
pub const MAX_MANIFEST: usize = 1 << 20;
/// The most files in a bundle.
pub const MAX_FILES: usize = 4096;
const HEADER: usize = 12;
const SIG_LEN: usize = 64;

/// Signatures per kind, as counted when the bundle was built.
pub type Counts = BTreeMap<String, u64>;

/// Size caps, checked before anything is inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest bundle file.
    pub max_bundle: u64,
    /// The largest total of the files once inflated.
    pub max_unpacked: u64,
    /// The largest ratio of inflated to packed size, per file.
    pub max_ratio: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bundle: 512 << 20,
            max_unpacked: 2 << 30,
            max_ratio: 1000,
        }
    }
}

/// One file of the bundle.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Its name: a signature file name (`daily.hsb`, `rules.yar`), no directories.
    pub name: String,
    /// Bytes once inflated.
    pub size: u64,
    /// Bytes in the payload.
    pub packed_size: u64,
    /// SHA-256 of the inflated bytes, hex.
    pub sha256: String,
}

/// What a bundle says about itself. Trust it only once [`verify`] returned it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The signature set version: increases with every bundle a publisher releases.
    pub set_version: u64,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// The publisher key's id ([`key_id`]); empty until signed.
    pub key_id: String,
    /// Payload bytes.
    pub payload_size: u64,
    /// BLAKE3 of the payload, hex.
    pub payload_blake3: String,
    /// The files, in payload order.
    pub files: Vec<FileEntry>,
    /// Signatures per kind.
    pub counts: Counts,
}

/// Why a bundle was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum BundleError {
    /// Not a bundle, or cut short.
    #[error("not a signature bundle: {0}")]
    Format(String),
    /// Larger than a cap.
    #[error("bundle too large: {0}")]
    TooLarge(String),
    /// The bundle carries no signature.
    #[error("the bundle is not signed")]
    Unsigned,
    /// No trusted key verifies the signature.
    #[error("the signature does not verify with any trusted key ({0} tried)")]
    BadSignature(usize),
    /// Signed, but its content does not match the manifest.
    #[error("bundle content does not match its signed manifest: {0}")]
    Corrupt(String),
}

/// An ed25519 key pair of a publisher.
#[derive(Debug)]
pub struct Keypair(SigningKey);

impl Keypair {
    /// From a 32-byte secret seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Keypair(SigningKey::from_bytes(&seed))
    }
    /// The 32-byte secret seed (keep it private).
    pub fn seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }
    /// The public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }
}

/// A publisher's public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// From 32 bytes.
    pub fn from_bytes(b: &[u8; 32]) -> Result<Self, BundleError> {
        VerifyingKey::from_bytes(b)
            .map(PublicKey)
            .map_err(|e| BundleError::Format(format!("not an ed25519 public key: {e}")))
    }
    /// From 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Self, BundleError> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut b)
            .map_err(|e| BundleError::Format(format!("public key: {e}")))?;
        Self::from_bytes(&b)
    }
    /// 64 hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }
    /// The key id written in manifests.
    pub fn id(&self) -> String {
        key_id(self)
    }
}

/// A key's id: the first 8 bytes of the BLAKE3 of the public key, hex.
pub fn key_id(k: &PublicKey) -> String {
    hex::encode(
        blake3::hash(k.0.as_bytes())
            .as_bytes()
            .get(..8)
            .unwrap_or(&[]),
    )
}

/// A verified bundle: its manifest, the key that signed it, and its files.
#[derive(Debug)]
pub struct Verified {
    /// The manifest.
    pub manifest: Manifest,
    /// The publisher key that verified.
    pub key: PublicKey,
    /// (name, bytes) in manifest order.
    pub files: Vec<(String, Vec<u8>)>,
}

/// A file name a bundle may carry: one path component of `[A-Za-z0-9._-]`, not starting
/// with a dot.
fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 255
        && !n.starts_with('.')
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Build an unsigned bundle of `files` for set version `set_version`.
pub fn build(
    files: &[(String, Vec<u8>)],
    set_version: u64,
    counts: Counts,
    created: u64,
) -> Result<Vec<u8>, BundleError> {
    if files.len() > MAX_FILES {
        return Err(BundleError::TooLarge(format!(
            "{} files (at most {MAX_FILES})",
            files.len()
        )));
    }
    let mut payload = Vec::new();
    let mut entries = Vec::new();
    for (name, data) in files {
        if !valid_name(name) {
            return Err(BundleError::Format(format!("bad file name {name:?}")));
        }
        if entries.iter().any(|e: &FileEntry| &e.name == name) {
            return Err(BundleError::Format(format!("file {name:?} twice")));
        }
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut z, data).map_err(|e| BundleError::Format(e.to_string()))?;
        let packed = z.finish().map_err(|e| BundleError::Format(e.to_string()))?;
        entries.push(FileEntry {
            name: name.clone(),
            size: data.len() as u64,
            packed_size: packed.len() as u64,
            sha256: hex::encode(sha2::Sha256::digest(data)),
        });
        payload.extend_from_slice(&packed);
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        set_version,
        created,
        key_id: String::new(),
        payload_size: payload.len() as u64,
        payload_blake3: blake3::hash(&payload).to_hex().to_string(),
        files: entries,
        counts,
    };
    assemble(&manifest, &[0; SIG_LEN], &payload)
}

/// The signed part of a bundle: magic, manifest length, manifest.
fn head(m: &Manifest) -> Result<Vec<u8>, BundleError> {
    let json = serde_json::to_vec(m).map_err(|e| BundleError::Format(e.to_string()))?;
    if json.len() > MAX_MANIFEST {
        return Err(BundleError::TooLarge(format!(
            "manifest of {} bytes",
            json.len()
        )));
    }
    let mut out = Vec::with_capacity(HEADER + json.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

fn assemble(m: &Manifest, sig: &[u8; SIG_LEN], payload: &[u8]) -> Result<Vec<u8>, BundleError> {
    let mut out = head(m)?;
    out.extend_from_slice(sig);
    out.extend_from_slice(payload);
    Ok(out)
}

/// The parts of a bundle file: (signed bytes, manifest bytes, signature, payload).
struct Parts<'a> {
    signed: &'a [u8],
    manifest: &'a [u8],
    sig: [u8; SIG_LEN],
    payload: &'a [u8],
}

/// Cut a bundle into its parts; a file over `max_bundle` bytes is refused first.
fn split(data: &[u8], max_bundle: u64) -> Result<Parts<'_>, BundleError> {
    let short = || BundleError::Format(format!("{} bytes: cut short", data.len()));
    if data.len() as u64 > max_bundle {
        return Err(BundleError::TooLarge(format!(
            "{} bytes (at most {max_bundle})",
            data.len(),
        )));
    }
    if data.get(..8).ok_or_else(short)? != MAGIC {
        return Err(BundleError::Format("no SVMBNDL1 magic".into()));
    }
    let len_bytes: [u8; 4] = data
        .get(8..12)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(short)?;
    let m = u32::from_le_bytes(len_bytes) as usize;
    if m > MAX_MANIFEST {
        return Err(BundleError::TooLarge(format!(
            "manifest of {m} bytes (at most {MAX_MANIFEST})"
        )));
    }
    let signed = data.get(..HEADER + m).ok_or_else(short)?;
    let manifest = data.get(HEADER..HEADER + m).ok_or_else(short)?;
    let sig: [u8; SIG_LEN] = data
        .get(HEADER + m..HEADER + m + SIG_LEN)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(short)?;
    let payload = data.get(HEADER + m + SIG_LEN..).ok_or_else(short)?;
    Ok(Parts {
        signed,
        manifest,
        sig,
        payload,
    })
}

fn parse_manifest(bytes: &[u8]) -> Result<Manifest, BundleError> {
    let m: Manifest =
        serde_json::from_slice(bytes).map_err(|e| BundleError::Format(format!("manifest: {e}")))?;
    if m.format_version != FORMAT_VERSION {
        return Err(BundleError::Format(format!(
            "manifest format {} (this svm reads {FORMAT_VERSION})",
            m.format_version
        )));
    }
    Ok(m)
}

/// Sign an unsigned (or re-sign a signed) bundle: the manifest gets the key's id, then the
/// header and manifest are signed.
pub fn sign(bundle: &[u8], key: &Keypair) -> Result<Vec<u8>, BundleError> {
    let p = split(bundle, u64::MAX)?;
    let mut m = parse_manifest(p.manifest)?;
    check_payload(&m, p.payload)?;
    m.key_id = key_id(&key.public());
    let sig = key.0.sign(&head(&m)?);
    assemble(&m, &sig.to_bytes(), p.payload)
}

fn check_payload(m: &Manifest, payload: &[u8]) -> Result<(), BundleError> {
    if payload.len() as u64 != m.payload_size {
        return Err(BundleError::Corrupt(format!(
            "payload of {} bytes, the manifest says {}",
            payload.len(),
            m.payload_size
        )));
    }
    if blake3::hash(payload).to_hex().as_str() != m.payload_blake3 {
        return Err(BundleError::Corrupt("payload digest mismatch".into()));
    }
    Ok(())
}

/// The manifest of a bundle, unverified (for `svm sigs inspect`), and whether it is signed.
pub fn inspect(data: &[u8]) -> Result<(Manifest, bool), BundleError> {
    let p = split(data, u64::MAX)?;
    Ok((parse_manifest(p.manifest)?, p.sig != [0; SIG_LEN]))
}

/// Verify a bundle against the trusted keys and unpack its files (see the module docs for
/// the order of the checks).
pub fn verify(
    data: &[u8],
    trusted: &[PublicKey],
    limits: &Limits,
) -> Result<Verified, BundleError> {
    let opened = open(data, trusted, limits)?;
    let mut files = Vec::with_capacity(opened.manifest.files.len());
    for (i, f) in opened.manifest.files.iter().enumerate() {
        let mut r = opened.file(i)?;
        let mut out = Vec::new();
        r.read_to_end(&mut out)
            .map_err(|e| BundleError::Corrupt(e.to_string()))?;
        r.finish()?;
        files.push((f.name.clone(), out));
    }
    Ok(Verified {
        manifest: opened.manifest,
        key: opened.key,
        files,
    })
}

/// A bundle whose signature, manifest and payload digest are verified, with its files not
/// inflated yet: each is read in turn through [`Opened::file`], so a consumer keeps only the
/// files it needs in memory (and those only as long as it parses them).
#[derive(Debug)]
pub struct Opened<'a> {
    /// The manifest.
    pub manifest: Manifest,
    /// The publisher key that verified.
    pub key: PublicKey,
    /// Each file's packed bytes, in manifest order.
    packed: Vec<&'a [u8]>,
}

/// Verify everything but the files' inflated bytes: the caps, the signature, the manifest,
/// the payload's size and digest. Nothing is inflated.
pub fn open<'a>(
    data: &'a [u8],
    trusted: &[PublicKey],
    limits: &Limits,
) -> Result<Opened<'a>, BundleError> {
    let p = split(data, limits.max_bundle)?;
    if p.sig == [0; SIG_LEN] {
        return Err(BundleError::Unsigned);
    }
    let sig = Signature::from_bytes(&p.sig);
    let key = *trusted
        .iter()
        .find(|k| k.0.verify_strict(p.signed, &sig).is_ok())
        .ok_or(BundleError::BadSignature(trusted.len()))?;
    // Signed by a trusted key from here on; still checked, never assumed.
    let m = parse_manifest(p.manifest)?;
    if m.key_id != key_id(&key) {
        return Err(BundleError::Corrupt(format!(
            "manifest names key {}, signed by {}",
            m.key_id,
            key_id(&key)
        )));
    }
    if m.files.len() > MAX_FILES {
        return Err(BundleError::TooLarge(format!("{} files", m.files.len())));
    }
    let mut total = 0u64;
    let mut packed_total = 0u64;
    for f in &m.files {
        if !valid_name(&f.name) {
            return Err(BundleError::Corrupt(format!("bad file name {:?}", f.name)));
        }
        total = total.saturating_add(f.size);
        packed_total = packed_total.saturating_add(f.packed_size);
        if f.size > f.packed_size.saturating_mul(limits.max_ratio).max(1024) {
            return Err(BundleError::TooLarge(format!(
                "{}: {} bytes from {} packed exceeds the ratio limit {}",
                f.name, f.size, f.packed_size, limits.max_ratio
            )));
        }
    }
    if total > limits.max_unpacked {
        return Err(BundleError::TooLarge(format!(
            "{total} bytes unpacked (at most {})",
            limits.max_unpacked
        )));
    }
    if packed_total != m.payload_size {
        return Err(BundleError::Corrupt(
            "file sizes do not add up to the payload".into(),
        ));
    }
    check_payload(&m, p.payload)?;
    let mut packed = Vec::with_capacity(m.files.len());
    let mut at = 0usize;
    for f in &m.files {
        let n =
            usize::try_from(f.packed_size).map_err(|_| BundleError::TooLarge(f.name.clone()))?;
        packed.push(
            p.payload
                .get(at..at.saturating_add(n))
                .ok_or_else(|| BundleError::Corrupt(format!("{}: outside the payload", f.name)))?,
        );
        at += n;
    }
    Ok(Opened {
        manifest: m,
        key,
        packed,
    })
}

impl<'a> Opened<'a> {
    /// A reader over file `i`'s inflated bytes.
    pub fn file(&self, i: usize) -> Result<FileReader<'a>, BundleError> {
        let (Some(entry), Some(packed)) = (self.manifest.files.get(i), self.packed.get(i)) else {
            return Err(BundleError::Format(format!("no file {i}")));
        };
        let expected = hex::decode(&entry.sha256)
            .ok()
            .and_then(|d| <[u8; 32]>::try_from(d).ok())
            .ok_or_else(|| BundleError::Corrupt(format!("{}: bad SHA-256", entry.name)))?;
        Ok(FileReader {
            name: entry.name.clone(),
            inner: flate2::read::DeflateDecoder::new(*packed).take(entry.size.saturating_add(1)),
            sha: sha2::Sha256::new(),
            read: 0,
            size: entry.size,
            expected,
        })
    }
}

/// The inflated bytes of one bundle file, hashed and counted as they are read; the size is a
/// hard limit (a read beyond it fails), and [`FileReader::finish`] checks size and SHA-256.
pub struct FileReader<'a> {
    name: String,
    inner: std::io::Take<flate2::read::DeflateDecoder<&'a [u8]>>,
    sha: sha2::Sha256,
    read: u64,
    size: u64,
    expected: [u8; 32],
}

impl std::fmt::Debug for FileReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileReader")
            .field("name", &self.name)
            .field("read", &self.read)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Read for FileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.size {
            return Err(std::io::Error::other(format!(
                "{}: inflates to more than the {} bytes the manifest says",
                self.name, self.size
            )));
        }
        self.sha.update(buf.get(..n).unwrap_or(&[]));
        Ok(n)
    }
}

impl FileReader<'_> {
    /// Read what is left, then check the size and the SHA-256 against the manifest.
    pub fn finish(mut self) -> Result<(), BundleError> {
        std::io::copy(&mut self, &mut std::io::sink())
            .map_err(|e| BundleError::Corrupt(e.to_string()))?;
        if self.read != self.size {
            return Err(BundleError::Corrupt(format!(
                "{}: inflates to {} bytes, the manifest says {}",
                self.name, self.read, self.size
            )));
        }
        if <[u8; 32]>::from(self.sha.finalize()) != self.expected {
            return Err(BundleError::Corrupt(format!(
                "{}: SHA-256 mismatch",
                self.name
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn files() -> Vec<(String, Vec<u8>)> {
        vec![
            ("a.ndb".into(), b"Demo.A:0:*:68656c6c6f\n".to_vec()),
            ("b.hsb".into(), vec![b'x'; 5000]),
        ]
    }

    fn signed(version: u64, key: &Keypair) -> Vec<u8> {
        sign(&build(&files(), version, Counts::new(), 1).unwrap(), key).unwrap()
    }

    #[test]
    fn a_signed_bundle_round_trips() {
        let k = Keypair::from_seed([1; 32]);
        let b = signed(5, &k);
        let v = verify(&b, &[k.public()], &Limits::default()).unwrap();
        assert_eq!(v.manifest.set_version, 5);
        assert_eq!(v.manifest.key_id, k.public().id());
        assert_eq!(v.files, files());
        let (m, is_signed) = inspect(&b).unwrap();
        assert!(is_signed);
        assert_eq!(m.files.len(), 2);
        // Any trusted key that verifies is accepted; others are tried first.
        let other = Keypair::from_seed([2; 32]);
        verify(&b, &[other.public(), k.public()], &Limits::default()).unwrap();
        assert_eq!(
            PublicKey::from_hex(&k.public().to_hex()).unwrap(),
            k.public()
        );
    }

    #[test]
    fn every_tampered_byte_is_refused() {
        let k = Keypair::from_seed([1; 32]);
        let b = signed(5, &k);
        for i in 0..b.len() {
            let mut t = b.clone();
            t[i] ^= 0x01;
            assert!(
                verify(&t, &[k.public()], &Limits::default()).is_err(),
                "byte {i} flipped was accepted"
            );
        }
    }

    #[test]
    fn wrong_keys_unsigned_truncated_and_oversized_bundles_are_refused() {
        let k = Keypair::from_seed([1; 32]);
        let b = signed(5, &k);
        let other = Keypair::from_seed([2; 32]);
        assert_eq!(
            verify(&b, &[other.public()], &Limits::default()).unwrap_err(),
            BundleError::BadSignature(1)
        );
        let unsigned = build(&files(), 5, Counts::new(), 1).unwrap();
        assert_eq!(
            verify(&unsigned, &[k.public()], &Limits::default()).unwrap_err(),
            BundleError::Unsigned
        );
        for cut in [0, 5, 11, 40, b.len() - 1] {
            assert!(verify(&b[..cut], &[k.public()], &Limits::default()).is_err());
        }
        let small = Limits {
            max_bundle: 100,
            ..Limits::default()
        };
        assert!(matches!(
            verify(&b, &[k.public()], &small),
            Err(BundleError::TooLarge(_))
        ));
        // A manifest length beyond the cap is refused before anything is read.
        let mut huge = b.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            verify(&huge, &[k.public()], &Limits::default()),
            Err(BundleError::TooLarge(_))
        ));
    }

    #[test]
    fn a_decompression_bomb_is_refused_before_it_is_inflated() {
        let k = Keypair::from_seed([1; 32]);
        // 64 MiB of zeros packs to a few KiB: a ratio far beyond the limit.
        let bomb = vec![("bomb.ndb".to_string(), vec![0u8; 64 << 20])];
        let b = sign(&build(&bomb, 1, Counts::new(), 1).unwrap(), &k).unwrap();
        let e = verify(&b, &[k.public()], &Limits::default()).unwrap_err();
        assert!(matches!(e, BundleError::TooLarge(_)), "{e}");
        // The total cap applies too.
        let tight = Limits {
            max_unpacked: 1000,
            max_ratio: u64::MAX,
            ..Limits::default()
        };
        let e = verify(&signed(2, &k), &[k.public()], &tight).unwrap_err();
        assert!(matches!(e, BundleError::TooLarge(_)), "{e}");
    }

    #[test]
    fn bad_names_are_refused_at_build() {
        for n in ["../x.ndb", "a/b.ndb", ".hidden", "", "x y.ndb"] {
            assert!(
                build(&[(n.to_string(), vec![])], 1, Counts::new(), 1).is_err(),
                "{n}"
            );
        }
        let dup = vec![("a.ndb".to_string(), vec![]), ("a.ndb".to_string(), vec![])];
        assert!(build(&dup, 1, Counts::new(), 1).is_err());
    }
}
