//! ClamAV hash signatures (`.hdb`, `.hsb`, `.fp`, `.sfp`) and their packed, size-indexed tables.
//!
//! Line format: `Hash:Size:Name[:MinFL[:MaxFL]]`, where `Size` may be `*` (any size).
//! The tables are flat sorted arrays of fixed-size entries, so millions of signatures cost
//! about 40 bytes each and a lookup is two binary searches.

use crate::error::{ErrorCode, LineError};
use crate::lines::Parsed;
use rayon::slice::ParallelSliceMut;

/// The functionality level this engine implements (ClamAV 1.4's), for `MinFL`/`MaxFL` fields.
pub type Flevel = u32;
/// ClamAV 1.4's functionality level.
pub const FLEVEL: Flevel = 212;

/// A file hash algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum HashKind {
    /// MD5 (`.hdb`, `.fp`).
    Md5,
    /// SHA-1 (`.hsb`, `.sfp`).
    Sha1,
    /// SHA-256 (`.hsb`, `.sfp`).
    Sha256,
}

impl HashKind {
    /// Digest length in bytes.
    pub fn len(self) -> usize {
        match self {
            HashKind::Md5 => 16,
            HashKind::Sha1 => 20,
            HashKind::Sha256 => 32,
        }
    }
    /// Always false: a digest has bytes.
    pub fn is_empty(self) -> bool {
        false
    }
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            HashKind::Md5 => "md5",
            HashKind::Sha1 => "sha1",
            HashKind::Sha256 => "sha256",
        }
    }
}

/// A parsed hash line. The name is a byte range of the line (so parsing allocates nothing).
#[derive(Debug, Clone, Copy)]
pub(crate) struct HashLine {
    pub(crate) kind: HashKind,
    pub(crate) digest: [u8; 32],
    pub(crate) size: Option<u32>,
    pub(crate) name: (usize, usize),
}

/// Check a signature name: non-empty, printable ASCII, no `:`.
pub(crate) fn check_name(name: &str) -> Result<(), LineError> {
    check_name_bytes(name.as_bytes())
}

/// [`check_name`] on bytes: non-ASCII bytes are reported as such.
pub(crate) fn check_name_bytes(name: &[u8]) -> Result<(), LineError> {
    if name.is_empty() {
        return Err(LineError::new(
            0,
            ErrorCode::BadName,
            "empty signature name",
        ));
    }
    if let Some(p) = name.iter().position(|b| !(0x21..0x7f).contains(b)) {
        if name.get(p).is_some_and(|b| *b >= 0x80) {
            return Err(LineError::new(
                p,
                ErrorCode::NotUtf8,
                "signature name is not ASCII",
            ));
        }
        return Err(LineError::new(
            p,
            ErrorCode::BadName,
            "signature names are printable ASCII without spaces",
        ));
    }
    Ok(())
}

/// Parse optional `MinFL`/`MaxFL` fields starting at field index `first`.
/// `Ok(Some(reason))` when this engine's level is outside the range (a valid line, skipped).
pub(crate) fn parse_flevel(
    fields: &[(usize, &str)],
    first: usize,
    ours: Flevel,
) -> Result<Option<&'static str>, LineError> {
    let mut bounds = [None, None];
    for (k, slot) in bounds.iter_mut().enumerate() {
        if let Some(&(col, t)) = fields.get(first + k) {
            if t.is_empty() {
                continue;
            }
            let v = t.parse::<u32>().map_err(|_| {
                LineError::new(
                    col,
                    ErrorCode::BadFlevel,
                    format!("functionality level {t:?} is not a number"),
                )
            })?;
            *slot = Some(v);
        }
    }
    if bounds[0].is_some_and(|min| min > ours) {
        return Ok(Some(
            "signatures that need a newer engine (MinFL above 212)",
        ));
    }
    if bounds[1].is_some_and(|max| max < ours) {
        return Ok(Some("signatures for older engines only (MaxFL below 212)"));
    }
    Ok(None)
}

/// Hex digit values; 0xff marks a byte that is not a hex digit.
// A const initialiser: the index is bounded by the loop and checked at compile time.
#[allow(clippy::indexing_slicing)]
static HEX: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => 0xff,
        };
        i += 1;
    }
    t
};

/// The value of one hex digit.
#[inline]
pub(crate) fn hex_digit(c: u8) -> Option<u8> {
    HEX.get(usize::from(c)).copied().filter(|v| *v != 0xff)
}

/// Decode hex without a branch per character (digests are random, so branches on digit vs
/// letter mispredict half the time). False if `s` is not exactly `out.len()` hex pairs.
fn decode_hex(s: &[u8], out: &mut [u8]) -> bool {
    if s.len() != out.len() * 2 {
        return false;
    }
    let mut bad = 0u8;
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let &[a, b] = pair else { return false };
        let hi = HEX.get(usize::from(a)).copied().unwrap_or(0xff);
        let lo = HEX.get(usize::from(b)).copied().unwrap_or(0xff);
        bad |= hi | lo;
        *o = (hi << 4) | (lo & 0x0f);
    }
    bad & 0xf0 == 0
}

/// Parse one hash line. `md5_only` is true for `.hdb`/`.fp`.
pub(crate) fn parse_hash_line(line: &[u8], md5_only: bool) -> Result<Parsed<HashLine>, LineError> {
    // Fast split on ':' without allocating.
    let mut cols = [0usize; 6];
    let mut n = 1;
    for i in memchr::memchr_iter(b':', line) {
        let Some(slot) = cols.get_mut(n) else {
            return Err(LineError::new(
                i,
                ErrorCode::FieldCount,
                "too many ':'-separated fields (expected Hash:Size:Name[:MinFL[:MaxFL]])",
            ));
        };
        *slot = i + 1;
        n += 1;
    }
    if n < 3 {
        return Err(LineError::new(
            0,
            ErrorCode::FieldCount,
            format!("expected Hash:Size:Name, found {n} field(s)"),
        ));
    }
    let field = |k: usize| -> &[u8] {
        let start = cols.get(k).copied().unwrap_or(line.len());
        let end = if k + 1 < n {
            cols.get(k + 1).map_or(line.len(), |c| c - 1)
        } else {
            line.len()
        };
        line.get(start..end).unwrap_or(&[])
    };
    let hash = field(0);
    let kind = match hash.len() {
        32 => HashKind::Md5,
        40 if !md5_only => HashKind::Sha1,
        64 if !md5_only => HashKind::Sha256,
        l => {
            let expect = if md5_only {
                "32 hex digits (MD5)"
            } else {
                "32, 40 or 64 hex digits (MD5, SHA-1, SHA-256)"
            };
            return Err(LineError::new(
                0,
                ErrorCode::BadHash,
                format!("hash has {l} characters, expected {expect}"),
            ));
        }
    };
    let mut digest = [0u8; 32];
    if !decode_hex(hash, digest.get_mut(..kind.len()).unwrap_or(&mut [])) {
        // Find the first bad character for the column.
        let p = hash
            .iter()
            .position(|c| !c.is_ascii_hexdigit())
            .unwrap_or(0);
        return Err(LineError::new(
            p,
            ErrorCode::BadHash,
            "hash is not hexadecimal",
        ));
    }
    let size_f = field(1);
    let size = if size_f == b"*" {
        None
    } else {
        let ok = !size_f.is_empty() && size_f.len() <= 20 && size_f.iter().all(u8::is_ascii_digit);
        let v = std::str::from_utf8(size_f)
            .ok()
            .filter(|_| ok)
            .and_then(|s| s.parse::<u64>().ok());
        match v.map(u32::try_from) {
            Some(Ok(v)) => Some(v),
            Some(Err(_)) => {
                return Err(LineError::new(
                    cols[1],
                    ErrorCode::BadSize,
                    "file size is above 4 GiB, the largest file this engine hashes",
                ));
            }
            None => {
                return Err(LineError::new(
                    cols[1],
                    ErrorCode::BadSize,
                    "file size is not a decimal number or '*'",
                ));
            }
        }
    };
    let name_b = field(2);
    check_name_bytes(name_b).map_err(|e| e.shifted(cols[2]))?;
    if n > 3 {
        let text = std::str::from_utf8(line).map_err(|e| {
            LineError::new(e.valid_up_to(), ErrorCode::NotUtf8, "line is not ASCII")
        })?;
        let fields: Vec<(usize, &str)> = crate::body::split_fields(text);
        if let Some(skip) = parse_flevel(&fields, 3, FLEVEL)? {
            return Ok(Parsed::Skip(skip));
        }
    }
    let name_end = cols[2] + name_b.len();
    Ok(Parsed::Sig(HashLine {
        kind,
        digest,
        size,
        name: (cols[2], name_end),
    }))
}

/// All signature names, stored once, NUL-separated.
#[derive(Debug, Default, Clone)]
pub struct NameArena {
    bytes: Vec<u8>,
}

impl NameArena {
    /// Store a name and return its handle. `None` when the arena would exceed 4 GiB.
    pub fn push(&mut self, name: &[u8]) -> Option<u32> {
        let off = u32::try_from(self.bytes.len()).ok()?;
        self.bytes.extend_from_slice(name);
        self.bytes.push(0);
        Some(off)
    }
    /// The name behind a handle (names are checked ASCII when loaded).
    pub fn get(&self, id: u32) -> &str {
        let tail = self.bytes.get(id as usize..).unwrap_or(&[]);
        let end = memchr::memchr(0, tail).unwrap_or(tail.len());
        std::str::from_utf8(tail.get(..end).unwrap_or(&[])).unwrap_or("")
    }
    /// Bytes used.
    pub fn heap_bytes(&self) -> usize {
        self.bytes.capacity()
    }
    pub(crate) fn reserve(&mut self, n: usize) {
        self.bytes.reserve(n);
    }
    pub(crate) fn shrink(&mut self) {
        self.bytes.shrink_to_fit();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(C)]
struct Entry<const N: usize> {
    size: u32,
    hash: [u8; N],
    name: u32,
}

/// Hash signatures of one algorithm, sorted by (size, hash) for lookup.
#[derive(Debug, Clone, Default)]
pub struct HashTable<const N: usize> {
    sized: Vec<Entry<N>>,
    any_size: Vec<Entry<N>>,
}

impl<const N: usize> HashTable<N> {
    fn push(&mut self, digest: &[u8], size: Option<u32>, name: u32) {
        let mut hash = [0u8; N];
        hash.copy_from_slice(digest.get(..N).unwrap_or(&[0; N][..]));
        match size {
            Some(size) => self.sized.push(Entry { size, hash, name }),
            None => self.any_size.push(Entry {
                size: 0,
                hash,
                name,
            }),
        }
    }
    fn finish(&mut self) {
        self.sized.par_sort_unstable();
        self.any_size.par_sort_unstable();
        self.sized.shrink_to_fit();
        self.any_size.shrink_to_fit();
    }
    fn reserve(&mut self, n: usize) {
        self.sized.reserve_exact(n);
    }
    fn retain(&mut self, keep: impl Fn(u32) -> bool) {
        self.sized.retain(|e| keep(e.name));
        self.any_size.retain(|e| keep(e.name));
    }
    /// Number of signatures.
    pub fn len(&self) -> usize {
        self.sized.len() + self.any_size.len()
    }
    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether a file of `size` bytes could match: only then is it worth hashing.
    #[inline]
    pub fn wants_size(&self, size: u64) -> bool {
        if !self.any_size.is_empty() {
            return true;
        }
        let Ok(size) = u32::try_from(size) else {
            return false;
        };
        let i = self.sized.partition_point(|e| e.size < size);
        self.sized.get(i).is_some_and(|e| e.size == size)
    }
    /// Names (handles) of the signatures matching a file of `size` bytes with `digest`.
    pub fn lookup(&self, size: u64, digest: &[u8; N]) -> Vec<u32> {
        let mut out = Vec::new();
        if let Ok(size) = u32::try_from(size) {
            let key = (size, digest);
            let i = self.sized.partition_point(|e| (e.size, &e.hash) < key);
            out.extend(
                self.sized
                    .get(i..)
                    .unwrap_or(&[])
                    .iter()
                    .take_while(|e| e.size == size && &e.hash == digest)
                    .map(|e| e.name),
            );
        }
        let i = self.any_size.partition_point(|e| &e.hash < digest);
        out.extend(
            self.any_size
                .get(i..)
                .unwrap_or(&[])
                .iter()
                .take_while(|e| &e.hash == digest)
                .map(|e| e.name),
        );
        out
    }
    /// Heap bytes used.
    pub fn heap_bytes(&self) -> usize {
        (self.sized.capacity() + self.any_size.capacity()) * std::mem::size_of::<Entry<N>>()
    }
}

/// One table per algorithm.
#[derive(Debug, Clone, Default)]
pub struct HashTables {
    /// MD5 signatures.
    pub md5: HashTable<16>,
    /// SHA-1 signatures.
    pub sha1: HashTable<20>,
    /// SHA-256 signatures.
    pub sha256: HashTable<32>,
}

impl HashTables {
    pub(crate) fn push(&mut self, kind: HashKind, digest: &[u8; 32], size: Option<u32>, name: u32) {
        match kind {
            HashKind::Md5 => self.md5.push(digest, size, name),
            HashKind::Sha1 => self.sha1.push(digest, size, name),
            HashKind::Sha256 => self.sha256.push(digest, size, name),
        }
    }
    pub(crate) fn reserve(&mut self, kind: HashKind, n: usize) {
        match kind {
            HashKind::Md5 => self.md5.reserve(n),
            HashKind::Sha1 => self.sha1.reserve(n),
            HashKind::Sha256 => self.sha256.reserve(n),
        }
    }
    pub(crate) fn finish(&mut self) {
        self.md5.finish();
        self.sha1.finish();
        self.sha256.finish();
    }
    pub(crate) fn retain(&mut self, keep: impl Fn(u32) -> bool + Copy) {
        self.md5.retain(keep);
        self.sha1.retain(keep);
        self.sha256.retain(keep);
    }
    /// Total signatures.
    pub fn len(&self) -> usize {
        self.md5.len() + self.sha1.len() + self.sha256.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Which algorithms a file of `size` bytes must be hashed with.
    pub fn wanted(&self, size: u64) -> [bool; 3] {
        [
            self.md5.wants_size(size),
            self.sha1.wants_size(size),
            self.sha256.wants_size(size),
        ]
    }
    /// Heap bytes used.
    pub fn heap_bytes(&self) -> usize {
        self.md5.heap_bytes() + self.sha1.heap_bytes() + self.sha256.heap_bytes()
    }
}

/// The hash signatures of one source file: its names and tables. Immutable once built, and
/// shared (`Arc`) by every set version that holds the same file.
#[derive(Debug, Default)]
pub struct HashLayer {
    pub(crate) names: NameArena,
    pub(crate) tables: HashTables,
    /// Signatures removed from this layer by the ignore list.
    pub(crate) ignored: u64,
    /// Lines of kinds not supported yet, per kind.
    pub(crate) skipped: std::collections::BTreeMap<&'static str, u64>,
    /// The source's name and content key, when it was added with one.
    pub(crate) key: Option<(String, [u8; 32])>,
}

impl HashLayer {
    /// The tables.
    pub fn tables(&self) -> &HashTables {
        &self.tables
    }
    /// The name behind a handle of this layer's tables.
    pub fn name(&self, id: u32) -> &str {
        self.names.get(id)
    }
    fn heap_bytes(&self) -> usize {
        self.names.heap_bytes() + self.tables.heap_bytes()
    }
}

/// Hash signatures of every source, one [`HashLayer`] per file, so that a new set version
/// shares the layers of the files it did not change. A lookup asks each layer (a handful of
/// binary searches), and returns signature names.
#[derive(Debug, Default, Clone)]
pub struct HashIndex {
    pub(crate) layers: Vec<std::sync::Arc<HashLayer>>,
}

impl HashIndex {
    /// The layers, in load order.
    pub fn layers(&self) -> &[std::sync::Arc<HashLayer>] {
        &self.layers
    }
    /// Total signatures.
    pub fn len(&self) -> usize {
        self.layers.iter().map(|l| l.tables.len()).sum()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.layers.iter().all(|l| l.tables.is_empty())
    }
    /// Which algorithms a file of `size` bytes must be hashed with.
    pub fn wanted(&self, size: u64) -> [bool; 3] {
        self.layers.iter().fold([false; 3], |acc, l| {
            let w = l.tables.wanted(size);
            [acc[0] || w[0], acc[1] || w[1], acc[2] || w[2]]
        })
    }
    /// Names of the signatures of `kind` matching content of `size` bytes with `digest`
    /// (`digest` holds at least [`HashKind::len`] bytes).
    pub fn lookup(&self, kind: HashKind, size: u64, digest: &[u8]) -> Vec<&str> {
        let mut out = Vec::new();
        for l in &self.layers {
            let ids = match kind {
                HashKind::Md5 => fixed(digest).map(|d| l.tables.md5.lookup(size, &d)),
                HashKind::Sha1 => fixed(digest).map(|d| l.tables.sha1.lookup(size, &d)),
                HashKind::Sha256 => fixed(digest).map(|d| l.tables.sha256.lookup(size, &d)),
            };
            out.extend(
                ids.unwrap_or_default()
                    .into_iter()
                    .map(|id| l.names.get(id)),
            );
        }
        out
    }
    /// Heap bytes of the layers (shared layers counted once per index).
    pub fn heap_bytes(&self) -> usize {
        self.layers.iter().map(|l| l.heap_bytes()).sum()
    }
}

/// The first `N` bytes of a digest.
fn fixed<const N: usize>(d: &[u8]) -> Option<[u8; N]> {
    d.get(..N).and_then(|b| b.try_into().ok())
}
