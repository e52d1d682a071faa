//! The immutable, compiled [`SignatureSet`].

use crate::body::{BodySig, Target};
use crate::hash::HashIndex;
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// Where an atom sits in a body signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AtomRef {
    /// Index into [`BodyDb::sigs`].
    pub sig: u32,
    /// Which segment of the pattern holds the atom.
    pub seg: u32,
    /// The atom's offset inside that segment.
    pub off: u32,
}

/// Multiplier of the atom-prefix hash (a Fibonacci hash).
const HASH_MUL: u32 = 0x9e37_79b1;

/// A bitmap over the first bytes of every atom: the cheap test run at each byte position
/// before the exact [`AtomTable`] confirms which atoms really start there.
///
/// Atoms of four bytes or more are keyed by a hash of their first four bytes; shorter atoms
/// (two or three bytes) by their first two bytes in a second, exact map.
#[derive(Debug, Clone, Default)]
pub struct AtomFilter {
    bits: Vec<u64>,
    shift: u32,
    short: Vec<u64>,
}

impl AtomFilter {
    fn build(atoms: &[&[u8]]) -> Self {
        let long = atoms.iter().filter(|a| a.len() >= 4).count();
        // About 256 bits per atom keeps false candidates well under 1% while the map stays in
        // the L2 cache for sets of thousands of atoms.
        let log2 = (long.max(1) * 256)
            .next_power_of_two()
            .trailing_zeros()
            .clamp(16, 27);
        let mut f = AtomFilter {
            bits: vec![0; 1 << (log2 - 6)],
            shift: 32 - log2,
            short: Vec::new(),
        };
        for a in atoms {
            match a {
                [b0, b1, b2, b3, ..] => {
                    let h = f.slot(u32::from_le_bytes([*b0, *b1, *b2, *b3]));
                    if let Some(w) = f.bits.get_mut(h >> 6) {
                        *w |= 1 << (h & 63);
                    }
                }
                [b0, b1, ..] => {
                    if f.short.is_empty() {
                        f.short = vec![0; 1 << 10];
                    }
                    let k = usize::from(u16::from_le_bytes([*b0, *b1]));
                    if let Some(w) = f.short.get_mut(k >> 6) {
                        *w |= 1 << (k & 63);
                    }
                }
                _ => {}
            }
        }
        f
    }

    #[inline]
    fn slot(&self, key: u32) -> usize {
        (key.wrapping_mul(HASH_MUL) >> self.shift) as usize
    }

    /// Whether an atom of four or more bytes may start with these four bytes.
    #[inline]
    pub fn may_start(&self, first4: u32) -> bool {
        let h = self.slot(first4);
        self.bits
            .get(h >> 6)
            .is_some_and(|w| w >> (h & 63) & 1 == 1)
    }

    /// Append to `out` every position `p` in `start..end` whose four bytes `data[p..p+4]` may
    /// begin an atom of four or more bytes. Eight positions are tested per step with one
    /// branch, which keeps the loop near memory speed.
    pub fn candidates(&self, data: &[u8], start: usize, end: usize, out: &mut Vec<usize>) {
        let end = end.min(data.len().saturating_sub(3));
        let mut p = start;
        // Eight positions per step: their bits are OR-ed into one word and tested once; only
        // a step with a hit (rare) looks at the positions one by one.
        while p + 8 <= end {
            let Some(chunk) = data
                .get(p..p + 11)
                .and_then(|c| <&[u8; 11]>::try_from(c).ok())
            else {
                break;
            };
            let mut any = 0u64;
            for w in chunk.windows(4) {
                let &[a, b, c, d] = w else { continue };
                let key = u32::from_le_bytes([a, b, c, d]);
                let h = self.slot(key);
                any |= self.bits.get(h >> 6).map_or(0, |x| x >> (h & 63));
            }
            if any & 1 == 1 {
                for (j, w) in chunk.windows(4).enumerate() {
                    let &[a, b, c, d] = w else { continue };
                    if self.may_start(u32::from_le_bytes([a, b, c, d])) {
                        out.push(p + j);
                    }
                }
            }
            p += 8;
        }
        while p < end {
            if let Some(w) = data.get(p..p + 4).and_then(|b| <[u8; 4]>::try_from(b).ok()) {
                if self.may_start(u32::from_le_bytes(w)) {
                    out.push(p);
                }
            }
            p += 1;
        }
    }

    /// Whether some atom is shorter than four bytes.
    #[inline]
    pub fn has_short(&self) -> bool {
        !self.short.is_empty()
    }

    /// Whether a two- or three-byte atom may start with these two bytes.
    #[inline]
    pub fn short_may_start(&self, first2: u16) -> bool {
        let k = usize::from(first2);
        self.short
            .get(k >> 6)
            .is_some_and(|w| w >> (k & 63) & 1 == 1)
    }

    /// Heap bytes used.
    pub fn heap_bytes(&self) -> usize {
        (self.bits.capacity() + self.short.capacity()) * 8
    }
}

/// The distinct atoms, indexed by their first four bytes (or two, for shorter atoms), so a
/// filter candidate is confirmed with one binary search and a byte comparison.
#[derive(Debug, Default)]
pub struct AtomTable {
    bytes: Vec<u8>,
    spans: Vec<(u32, u32)>,
    long: Vec<(u32, u32)>,
    short: Vec<(u16, u32)>,
}

impl AtomTable {
    fn build(atoms: &[&[u8]]) -> Self {
        let mut t = AtomTable::default();
        for (id, a) in atoms.iter().enumerate() {
            let id = u32::try_from(id).unwrap_or(u32::MAX);
            let off = u32::try_from(t.bytes.len()).unwrap_or(u32::MAX);
            t.bytes.extend_from_slice(a);
            t.spans.push((off, u32::try_from(a.len()).unwrap_or(0)));
            match a {
                [b0, b1, b2, b3, ..] => t.long.push((u32::from_le_bytes([*b0, *b1, *b2, *b3]), id)),
                [b0, b1, ..] => t.short.push((u16::from_le_bytes([*b0, *b1]), id)),
                _ => {}
            }
        }
        t.long.sort_unstable();
        t.short.sort_unstable();
        t
    }

    fn atom(&self, id: u32) -> &[u8] {
        let (off, len) = self.spans.get(id as usize).copied().unwrap_or((0, 0));
        self.bytes
            .get(off as usize..(off as usize + len as usize))
            .unwrap_or(&[])
    }

    /// Call `f(atom id)` for every atom that occurs in `data` at `pos`.
    #[inline]
    pub fn atoms_at(&self, data: &[u8], pos: usize, mut f: impl FnMut(usize)) {
        let tail = data.get(pos..).unwrap_or(&[]);
        let mut check = |id: u32| {
            if tail.starts_with(self.atom(id)) {
                f(id as usize);
            }
        };
        if let [b0, b1, b2, b3, ..] = tail {
            with_key(&self.long, u32::from_le_bytes([*b0, *b1, *b2, *b3])).for_each(&mut check);
        }
        if let (false, [b0, b1, ..]) = (self.short.is_empty(), tail) {
            with_key(&self.short, u16::from_le_bytes([*b0, *b1])).for_each(&mut check);
        }
    }

    /// Number of distinct atoms.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    fn heap_bytes(&self) -> usize {
        self.bytes.capacity()
            + self.spans.capacity() * 8
            + self.long.capacity() * 8
            + self.short.capacity() * 8
    }
}

/// The ids stored under `key` in a table sorted by key.
fn with_key<K: Ord + Copy>(index: &[(K, u32)], key: K) -> impl Iterator<Item = u32> + '_ {
    let start = index.partition_point(|e| e.0 < key);
    index
        .get(start..)
        .unwrap_or(&[])
        .iter()
        .take_while(move |e| e.0 == key)
        .map(|e| e.1)
}

/// Compiled body signatures: the patterns, a prefilter over their atoms' first bytes, and an
/// exact table of the atoms.
#[derive(Debug, Default)]
pub struct BodyDb {
    sigs: Vec<BodySig>,
    atoms: AtomTable,
    filter: AtomFilter,
    refs_start: Vec<u32>,
    refs: Vec<AtomRef>,
    anchored: Vec<u32>,
    max_atom: usize,
    has_typed: bool,
}

impl BodyDb {
    pub(crate) fn build(sigs: Vec<BodySig>) -> Self {
        let mut atom_ids: HashMap<&[u8], u32> = HashMap::new();
        let mut atoms: Vec<&[u8]> = Vec::new();
        let mut per_atom: Vec<Vec<AtomRef>> = Vec::new();
        let mut anchored = Vec::new();
        let mut max_atom = 0;
        // Choosing atoms is the costly part of a large set: do it in parallel.
        let choices: Vec<Option<(usize, usize, &[u8])>> = sigs
            .par_iter()
            .map(|s| {
                if s.offset.is_anchored() {
                    None
                } else {
                    s.pattern.best_atom()
                }
            })
            .collect();
        for (i, choice) in choices.into_iter().enumerate() {
            let sig = u32::try_from(i).unwrap_or(u32::MAX);
            // Parsing guarantees an atom for every floating signature.
            let Some((seg, off, atom)) = choice else {
                anchored.push(sig);
                continue;
            };
            max_atom = max_atom.max(atom.len());
            let id = *atom_ids.entry(atom).or_insert_with(|| {
                atoms.push(atom);
                per_atom.push(Vec::new());
                u32::try_from(atoms.len() - 1).unwrap_or(u32::MAX)
            });
            if let Some(v) = per_atom.get_mut(id as usize) {
                v.push(AtomRef {
                    sig,
                    seg: u32::try_from(seg).unwrap_or(u32::MAX),
                    off: u32::try_from(off).unwrap_or(u32::MAX),
                });
            }
        }
        let filter = AtomFilter::build(&atoms);
        let table = AtomTable::build(&atoms);
        let mut refs_start = Vec::with_capacity(per_atom.len() + 1);
        let mut refs = Vec::new();
        for v in per_atom {
            refs_start.push(u32::try_from(refs.len()).unwrap_or(u32::MAX));
            refs.extend(v);
        }
        refs_start.push(u32::try_from(refs.len()).unwrap_or(u32::MAX));
        let has_typed = sigs.iter().any(|s| s.target != Target::Any);
        BodyDb {
            sigs,
            atoms: table,
            filter,
            refs_start,
            refs,
            anchored,
            max_atom,
            has_typed,
        }
    }

    /// All body signatures.
    pub fn sigs(&self) -> &[BodySig] {
        &self.sigs
    }
    /// The prefilter over atom prefixes.
    pub fn filter(&self) -> &AtomFilter {
        &self.filter
    }
    /// The exact table of atoms.
    pub fn atoms(&self) -> &AtomTable {
        &self.atoms
    }
    /// The signatures using atom `pattern` (an [`AtomTable`] id).
    #[inline]
    pub fn refs(&self, pattern: usize) -> &[AtomRef] {
        let s = self.refs_start.get(pattern).copied().unwrap_or(0) as usize;
        let e = self.refs_start.get(pattern + 1).copied().unwrap_or(0) as usize;
        self.refs.get(s..e).unwrap_or(&[])
    }
    /// Signatures checked directly at their fixed offsets.
    pub fn anchored(&self) -> &[u32] {
        &self.anchored
    }
    /// Longest atom (so chunked searches know how much to overlap).
    pub fn max_atom_len(&self) -> usize {
        self.max_atom
    }
    /// Whether any signature is restricted to PE, ELF or Mach-O.
    pub fn has_typed_targets(&self) -> bool {
        self.has_typed
    }
    /// Number of body signatures.
    pub fn len(&self) -> usize {
        self.sigs.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.sigs.is_empty()
    }
    /// Heap bytes of the atom filter and table.
    pub fn index_bytes(&self) -> usize {
        self.atoms.heap_bytes() + self.filter.heap_bytes()
    }
}

/// Signatures per kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// MD5 hash signatures.
    pub md5: u64,
    /// SHA-1 hash signatures.
    pub sha1: u64,
    /// SHA-256 hash signatures.
    pub sha256: u64,
    /// Body (`.ndb`) signatures, after expansion of alternatives.
    pub body: u64,
    /// YARA rules.
    pub yara: u64,
    /// Allow-list hashes (`.fp`, `.sfp`).
    pub allow: u64,
    /// Names on the ignore list (`.ign2`).
    pub ignored_names: u64,
    /// Signatures removed because their name is ignored.
    pub ignored_sigs: u64,
}

impl Counts {
    /// Detection signatures (hash, body and YARA).
    pub fn detection_total(&self) -> u64 {
        self.md5 + self.sha1 + self.sha256 + self.body + self.yara
    }
}

/// A source's name and content key (the SHA-256 a bundle's manifest gives it).
pub(crate) type SourceKey = (String, [u8; 32]);

/// The compiled body signatures with what loading them counted, shared between set versions
/// whose body sources (`.ndb`, containers) and ignore lists are the same.
#[derive(Debug, Default)]
pub(crate) struct BodyPart {
    pub(crate) db: BodyDb,
    pub(crate) ignored: u64,
    pub(crate) skipped: BTreeMap<&'static str, u64>,
}

/// Compiled YARA rules, shared like [`BodyPart`].
#[cfg(feature = "yara")]
#[derive(Debug)]
pub(crate) struct YaraPart {
    pub(crate) rules: yara_x::Rules,
}

/// How a clean verdict made under an earlier set version carries over to a new one
/// ([`SignatureSet::revalidation_since`]).
#[derive(Debug)]
pub enum Revalidation {
    /// Only hash signatures may have been added: a hash lookup of the content's digests in
    /// the new set decides, without reading the content.
    Lookup,
    /// A hash lookup, and a scan of the content against this set alone: the body signatures
    /// that were added, and the YARA rules when they changed (all of them: rules are not
    /// diffed one by one).
    Delta(Box<SignatureSet>),
    /// The verdict must be made again with the whole set: an allow-list entry went away, or
    /// the added body signatures are over a quarter of the set.
    Rescan,
}

/// An immutable, compiled signature set. `Send + Sync`: share it with `Arc` across workers.
///
/// Its parts (the hash tables of each file, the body signatures, the YARA rules) are held by
/// `Arc`: a set built with [`Loader::share_with`](crate::Loader::share_with) shares the parts
/// whose files did not change with the previous version, so an update costs the memory of
/// what changed, not of a second set.
#[derive(Debug)]
pub struct SignatureSet {
    pub(crate) hashes: HashIndex,
    pub(crate) allow: HashIndex,
    pub(crate) bodies: Arc<BodyPart>,
    #[cfg(feature = "yara")]
    pub(crate) yara: Option<Arc<YaraPart>>,
    pub(crate) ignored: HashSet<String>,
    pub(crate) counts: Counts,
    pub(crate) skipped: BTreeMap<&'static str, u64>,
    pub(crate) invalid_skipped: u64,
    pub(crate) digest: [u8; 32],
    pub(crate) sources: Vec<String>,
    /// Every source with a content key, in load order (`None`: added without one).
    pub(crate) keys: Vec<(String, Option<[u8; 32]>)>,
}

impl SignatureSet {
    /// The hash signatures.
    pub fn hashes(&self) -> &HashIndex {
        &self.hashes
    }
    /// The allow-list (`.fp`/`.sfp`): a listed file is clean whatever else matches.
    pub fn allow_list(&self) -> &HashIndex {
        &self.allow
    }
    /// The body signatures.
    pub fn bodies(&self) -> &BodyDb {
        &self.bodies.db
    }
    /// The compiled YARA rules, if any were loaded.
    #[cfg(feature = "yara")]
    pub fn yara_rules(&self) -> Option<&yara_x::Rules> {
        self.yara.as_deref().map(|y| &y.rules)
    }
    /// How many of this set's parts (hash layers, body signatures, YARA rules) are the same
    /// objects as `other`'s: shared in memory, not copies.
    pub fn shared_parts_with(&self, other: &SignatureSet) -> usize {
        let layers = |s: &SignatureSet| {
            s.hashes
                .layers
                .iter()
                .chain(&s.allow.layers)
                .map(Arc::as_ptr)
                .collect::<Vec<_>>()
        };
        let theirs = layers(other);
        let mut n = layers(self).iter().filter(|p| theirs.contains(p)).count();
        n += usize::from(Arc::ptr_eq(&self.bodies, &other.bodies) && !self.bodies.db.is_empty());
        #[cfg(feature = "yara")]
        if let (Some(a), Some(b)) = (&self.yara, &other.yara) {
            n += usize::from(Arc::ptr_eq(a, b));
        }
        n
    }
    /// Whether `.ign2` ignores this name (used for YARA rule names).
    pub fn is_ignored(&self, name: &str) -> bool {
        !self.ignored.is_empty() && self.ignored.contains(name)
    }
    /// Signatures per kind.
    pub fn counts(&self) -> Counts {
        self.counts
    }
    /// Valid lines of kinds not supported yet, per kind, and how many there were.
    pub fn skipped(&self) -> &BTreeMap<&'static str, u64> {
        &self.skipped
    }
    /// Malformed lines left out under `skip_invalid`.
    pub fn invalid_skipped(&self) -> u64 {
        self.invalid_skipped
    }
    /// BLAKE3 digest over every source's name and bytes, in load order.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }
    /// The digest as hex.
    pub fn digest_hex(&self) -> String {
        hex::encode(self.digest)
    }
    /// The sources loaded, in order.
    pub fn sources(&self) -> &[String] {
        &self.sources
    }
    /// How a verdict of "clean" made under `prev` carries over to this set (see
    /// [`Revalidation`]). Cheap when the parts are shared; otherwise one pass over `prev`'s
    /// body signatures.
    pub fn revalidation_since(&self, prev: &SignatureSet) -> Revalidation {
        // An allow-list entry that is gone may turn a clean verdict infected by a signature
        // both sets hold: such a set must rescan in full.
        let kept = prev
            .allow
            .layers
            .iter()
            .all(|p| self.allow.layers.iter().any(|l| Arc::ptr_eq(l, p)));
        if !kept {
            return Revalidation::Rescan;
        }
        let bodies: Vec<BodySig> = if Arc::ptr_eq(&self.bodies, &prev.bodies) {
            Vec::new()
        } else {
            let old: HashSet<&BodySig> = prev.bodies.db.sigs.iter().collect();
            self.bodies
                .db
                .sigs
                .iter()
                .filter(|s| !old.contains(s))
                .cloned()
                .collect()
        };
        // A delta that is a large part of the set saves little over a full rescan, and would
        // hold a second copy of those signatures for as long as it is kept.
        if bodies.len() > 64 && bodies.len() * 4 > self.bodies.db.len() {
            return Revalidation::Rescan;
        }
        #[cfg(feature = "yara")]
        let yara = match (&self.yara, &prev.yara) {
            // Un-ignoring a rule name brings a rule back without changing the rules.
            (Some(a), Some(b)) if Arc::ptr_eq(a, b) && self.ignored == prev.ignored => None,
            (None, _) => None,
            (Some(a), _) => Some(a.clone()),
        };
        #[cfg(not(feature = "yara"))]
        let yara: Option<()> = None;
        if bodies.is_empty() && yara.is_none() {
            return Revalidation::Lookup;
        }
        let counts = Counts {
            body: bodies.len() as u64,
            #[cfg(feature = "yara")]
            yara: yara.as_ref().map_or(0, |y| y.rules.iter().count() as u64),
            ..Counts::default()
        };
        let mut digest = blake3::Hasher::new();
        digest.update(b"added since ");
        digest.update(&prev.digest);
        digest.update(&self.digest);
        Revalidation::Delta(Box::new(SignatureSet {
            hashes: HashIndex::default(),
            allow: HashIndex::default(),
            bodies: Arc::new(BodyPart {
                db: BodyDb::build(bodies),
                ..BodyPart::default()
            }),
            #[cfg(feature = "yara")]
            yara,
            ignored: self.ignored.clone(),
            counts,
            skipped: BTreeMap::new(),
            invalid_skipped: 0,
            digest: *digest.finalize().as_bytes(),
            sources: vec![format!(
                "<added since {}>",
                hex::encode(prev.digest.get(..8).unwrap_or(&[]))
            )],
            keys: Vec::new(),
        }))
    }

    /// Approximate heap bytes held by the set (tables, names, atom index; not YARA).
    pub fn heap_bytes(&self) -> usize {
        self.hashes.heap_bytes() + self.allow.heap_bytes() + self.bodies.db.index_bytes()
    }
}
