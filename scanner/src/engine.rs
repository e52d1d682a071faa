//! The per-thread [`Scanner`].

use crate::containers::{self, ArchiveLimits, Budget, Flow};
use crate::verify::{is_open, verify, verify_anchored, verify_open, Miss};
use md5::Digest;
use signatures::{HashIndex, HashKind, Offset, SignatureSet, Target};
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

/// The atom search runs over blocks of this many bytes (atoms may run past a block's end), so
/// the time limit is checked between blocks.
pub const BLOCK: usize = 1 << 20;
/// Files smaller than this are read into a reused buffer instead of mapped.
const SMALL_FILE: u64 = 256 << 10;

/// Per-object limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Objects larger than this are `Unscanned`.
    pub max_file_size: u64,
    /// Scans running longer than this stop and report `Unscanned`.
    pub max_scan_time: Duration,
    /// What may be unpacked from containers (`max_depth` 0: containers are not opened).
    pub archives: ArchiveLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_size: 1 << 30,
            max_scan_time: Duration::from_secs(120),
            archives: ArchiveLimits::default(),
        }
    }
}

/// Which kind of signature matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchKind {
    /// An MD5 file hash (`.hdb`).
    Md5,
    /// A SHA-1 file hash (`.hsb`).
    Sha1,
    /// A SHA-256 file hash (`.hsb`).
    Sha256,
    /// A body signature (`.ndb`).
    Body,
    /// A YARA rule.
    Yara,
    /// A heuristic of the engine itself ([`LIMITS_EXCEEDED`]).
    Heuristic,
    /// A verdict remembered for this content by a [`MemberCache`].
    Cached,
}

/// A verdict cache for the members of containers, keyed by their content's BLAKE3: a member
/// met again, in another container or another file, is not scanned again. `svm serve` backs it
/// with its verdict cache.
pub trait MemberCache: Send + Sync {
    /// The signature names known for this content (empty: clean), if any.
    fn get(&self, blake3: &[u8; 32]) -> Option<Vec<String>>;
    /// Remember the names found in `data` (empty: clean).
    fn put(&self, blake3: [u8; 32], data: &[u8], names: &[String]);
}

/// The detection reported for an object a limit stopped, under
/// [`ArchiveLimits::alert_exceeds_max`] (ClamAV's name).
pub const LIMITS_EXCEEDED: &str = "Heuristics.Limits.Exceeded";

/// One detection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Match {
    /// Signature name.
    pub name: String,
    /// Signature kind.
    pub kind: MatchKind,
    /// Where the match starts, for body and YARA signatures.
    pub offset: Option<u64>,
    /// The member it was found in, inside containers: `dir/x.exe`, or `a.zip/x.exe` when
    /// nested; none for the object itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inner: Option<String>,
}

/// Why an object was not scanned.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum UnscannedReason {
    /// Larger than [`Limits::max_file_size`].
    TooLarge {
        /// Object size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Took longer than [`Limits::max_scan_time`].
    TimedOut {
        /// The limit in milliseconds.
        limit_ms: u64,
    },
    /// The object could not be read.
    Io {
        /// The OS error.
        error: String,
    },
    /// Not a regular file (FIFO, socket, device).
    NotRegularFile {
        /// What it is.
        file_type: String,
    },
    /// The YARA engine failed.
    Engine {
        /// Its message.
        error: String,
    },
    /// A container limit stopped unpacking (ClamAV: `Heuristics.Limits.Exceeded`), and
    /// nothing was found in what was unpacked.
    LimitsExceeded {
        /// Which limit.
        what: String,
    },
}

impl std::fmt::Display for UnscannedReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnscannedReason::TooLarge { size, limit } => {
                write!(f, "size {size} exceeds the limit of {limit} bytes")
            }
            UnscannedReason::TimedOut { limit_ms } => {
                write!(f, "scan time exceeded the limit of {limit_ms} ms")
            }
            UnscannedReason::Io { error } => write!(f, "{error}"),
            UnscannedReason::NotRegularFile { file_type } => {
                write!(f, "not a regular file ({file_type})")
            }
            UnscannedReason::Engine { error } => write!(f, "engine error: {error}"),
            UnscannedReason::LimitsExceeded { what } => {
                write!(f, "archive limits exceeded: {what}")
            }
        }
    }
}

/// The outcome of one scan.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum ScanResult {
    /// Nothing matched (or an allow-list entry covers the object).
    Clean,
    /// At least one signature matched.
    Infected {
        /// Every match, hash matches first.
        matches: Vec<Match>,
    },
    /// The object was not (fully) scanned; it is not known to be clean.
    Unscanned {
        /// Why.
        reason: UnscannedReason,
    },
}

/// A file scan: the result and how many bytes were scanned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileScan {
    /// The verdict.
    pub result: ScanResult,
    /// Bytes scanned (0 when unscanned).
    pub bytes: u64,
}

/// A scanner for one thread. Create one per worker; they all share the set.
pub struct Scanner<'s> {
    set: &'s SignatureSet,
    #[cfg(feature = "yara")]
    yara: Option<yara_x::Scanner<'s>>,
    limits: Limits,
    found: Vec<u64>,
    touched: Vec<u32>,
    hits: Vec<usize>,
    atom_buf: Vec<usize>,
    /// Per (signature, segment) whose next gap is `*`: the first position from which the
    /// rest of the signature could not be placed. Later hits of that segment are skipped,
    /// so `a*b*c` over `ab` repeated costs one pass, not one per hit. `(signature,
    /// usize::MAX)`: an open signature already decided for this object.
    forward_miss: std::collections::HashMap<(u32, usize), usize>,
    buf: Vec<u8>,
    memory: bool,
    members: Option<std::sync::Arc<dyn MemberCache>>,
}

impl std::fmt::Debug for Scanner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scanner")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

enum Stop {
    Timeout,
}

impl<'s> Scanner<'s> {
    /// A scanner over `set` with default limits.
    pub fn new(set: &'s SignatureSet) -> Self {
        let n = set.bodies().len().div_ceil(64);
        Scanner {
            set,
            #[cfg(feature = "yara")]
            yara: set.yara_rules().map(yara_x::Scanner::new),
            limits: Limits::default(),
            found: vec![0; n],
            touched: Vec::new(),
            hits: Vec::new(),
            atom_buf: Vec::new(),
            forward_miss: std::collections::HashMap::new(),
            buf: Vec::new(),
            memory: false,
            members: None,
        }
    }

    /// A scanner for guest memory: only the signatures that mean something in RAM are used,
    /// YARA rules and ClamAV body signatures for any target type (0) at any offset (`*`).
    /// File hashes, typed targets (PE, ELF, Mach-O headers) and offsets counted from a file's
    /// start or end describe files, not a window of RAM, so they are skipped. RAM is scanned in
    /// large ranges: no size limit, and a long time limit.
    pub fn for_memory(set: &'s SignatureSet) -> Self {
        let mut s = Scanner::new(set);
        s.memory = true;
        s.limits = Limits {
            max_file_size: u64::MAX,
            max_scan_time: Duration::from_secs(600),
            archives: ArchiveLimits {
                max_depth: 0,
                ..ArchiveLimits::default()
            },
        };
        s
    }

    /// Consult and fill `cache` for the members of containers.
    pub fn set_member_cache(&mut self, cache: std::sync::Arc<dyn MemberCache>) -> &mut Self {
        self.members = Some(cache);
        self
    }

    /// Change the limits.
    pub fn set_limits(&mut self, limits: Limits) -> &mut Self {
        self.limits = limits;
        self
    }

    /// The current limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Scan bytes in memory.
    pub fn scan_bytes(&mut self, data: &[u8]) -> ScanResult {
        if data.len() as u64 > self.limits.max_file_size {
            return ScanResult::Unscanned {
                reason: UnscannedReason::TooLarge {
                    size: data.len() as u64,
                    limit: self.limits.max_file_size,
                },
            };
        }
        let deadline = Instant::now() + self.limits.max_scan_time;
        let mut budget = Budget::new(&self.limits.archives).with_deadline(deadline);
        let r = self.scan_object(data, None, 0, deadline, &mut budget);
        match (r, budget.exceeded) {
            // Something was not unpacked, and nothing was found: not known to be clean.
            (ScanResult::Clean, Some(_)) if self.limits.archives.alert_exceeds_max => {
                ScanResult::Infected {
                    matches: vec![Match {
                        name: LIMITS_EXCEEDED.to_owned(),
                        kind: MatchKind::Heuristic,
                        offset: None,
                        inner: None,
                    }],
                }
            }
            (ScanResult::Clean, Some(what)) => ScanResult::Unscanned {
                reason: UnscannedReason::LimitsExceeded { what },
            },
            (r, _) => r,
        }
    }

    /// Scan one object, then the members of a container, recursively: matches inside carry
    /// the member's path.
    fn scan_object(
        &mut self,
        data: &[u8],
        inner: Option<&str>,
        depth: u32,
        deadline: Instant,
        budget: &mut Budget,
    ) -> ScanResult {
        let mut matches = Vec::new();
        if !self.memory {
            hash_matches(self.set.hashes(), data, &mut matches);
        }
        if self.body_matches(data, deadline, &mut matches).is_err() {
            return self.timed_out();
        }
        if let Err(reason) = self.yara_matches(data, deadline, &mut matches) {
            return ScanResult::Unscanned { reason };
        }
        // The allow-list is consulted only for detections, and covers the object as a whole.
        if !matches.is_empty() && !self.memory && self.allow_listed_bytes(data) {
            return ScanResult::Clean;
        }
        for m in &mut matches {
            m.inner = inner.map(str::to_owned);
        }
        if let Some(kind) = containers::detect(data) {
            if depth >= self.limits.archives.max_depth {
                if self.limits.archives.max_depth > 0 {
                    budget.exceeded.get_or_insert_with(|| {
                        format!("{} nested deeper than {}", kind.name(), depth)
                    });
                }
            } else {
                let mut stopped: Option<ScanResult> = None;
                let r =
                    containers::for_each_member(kind, data, budget, &mut |name, bytes, budget| {
                        let path = match inner {
                            Some(outer) => format!("{outer}/{name}"),
                            None => name.to_owned(),
                        };
                        match self.scan_member(bytes, &path, depth + 1, deadline, budget) {
                            ScanResult::Clean => Flow::Continue,
                            ScanResult::Infected { matches: m } => {
                                matches.extend(m);
                                Flow::Continue
                            }
                            // A timeout ends the whole scan.
                            unscanned @ ScanResult::Unscanned { .. } => {
                                stopped = Some(unscanned);
                                Flow::Stop
                            }
                        }
                    });
                if let Some(u) = stopped {
                    return u;
                }
                if budget.timed_out {
                    return self.timed_out();
                }
                if let Err(e) = r {
                    // A damaged container: its members before the damage were scanned, and
                    // the object itself was scanned as bytes.
                    tracing::debug!("{}: {e}", kind.name());
                }
            }
        }
        if matches.is_empty() {
            ScanResult::Clean
        } else {
            ScanResult::Infected { matches }
        }
    }

    /// A member: from the member cache when it knows the content, else scanned (and its
    /// verdict remembered unless a limit cut its own unpacking short).
    fn scan_member(
        &mut self,
        data: &[u8],
        path: &str,
        depth: u32,
        deadline: Instant,
        budget: &mut Budget,
    ) -> ScanResult {
        let Some(cache) = self.members.clone() else {
            return self.scan_object(data, Some(path), depth, deadline, budget);
        };
        let key = *blake3::hash(data).as_bytes();
        if let Some(names) = cache.get(&key) {
            if names.is_empty() {
                return ScanResult::Clean;
            }
            let matches = names
                .into_iter()
                .map(|name| Match {
                    name,
                    kind: MatchKind::Cached,
                    offset: None,
                    inner: Some(path.to_owned()),
                })
                .collect();
            return ScanResult::Infected { matches };
        }
        let before = budget.exceeded.is_some();
        let r = self.scan_object(data, Some(path), depth, deadline, budget);
        if budget.exceeded.is_some() == before {
            match &r {
                ScanResult::Clean => cache.put(key, data, &[]),
                ScanResult::Infected { matches } => {
                    let mut names: Vec<String> = matches.iter().map(|m| m.name.clone()).collect();
                    names.dedup();
                    cache.put(key, data, &names);
                }
                ScanResult::Unscanned { .. } => {}
            }
        }
        r
    }

    fn allow_listed_bytes(&self, data: &[u8]) -> bool {
        let allow = self.set.allow_list();
        if allow.is_empty() {
            return false;
        }
        let mut listed = Vec::new();
        hash_matches(allow, data, &mut listed);
        !listed.is_empty()
    }

    fn timed_out(&self) -> ScanResult {
        ScanResult::Unscanned {
            reason: UnscannedReason::TimedOut {
                limit_ms: u64::try_from(self.limits.max_scan_time.as_millis()).unwrap_or(u64::MAX),
            },
        }
    }

    /// Scan a file: small files are read, larger ones mapped (with a read fallback).
    pub fn scan_file(&mut self, path: &Path) -> FileScan {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) => {
                return unscanned(UnscannedReason::Io {
                    error: io_error_text(&e),
                })
            }
        };
        self.scan_open_file(&file)
    }

    /// Scan an already open file.
    pub fn scan_open_file(&mut self, file: &File) -> FileScan {
        let meta = match file.metadata() {
            Ok(m) => m,
            Err(e) => {
                return unscanned(UnscannedReason::Io {
                    error: io_error_text(&e),
                })
            }
        };
        if !meta.is_file() {
            return unscanned(UnscannedReason::NotRegularFile {
                file_type: file_type_name(&meta.file_type()).to_owned(),
            });
        }
        let size = meta.len();
        let limit = self.limits.max_file_size;
        if size > limit {
            return unscanned(UnscannedReason::TooLarge { size, limit });
        }
        if size >= SMALL_FILE {
            if let Some(map) = map_file(file) {
                let result = self.scan_bytes(&map);
                return FileScan {
                    bytes: map.len() as u64,
                    result,
                };
            }
        }
        // Read, with a cap one byte past the limit so a growing file is noticed.
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let read = (&mut &*file)
            .take(limit.saturating_add(1))
            .read_to_end(&mut buf);
        let out = match read {
            Err(e) => unscanned(UnscannedReason::Io {
                error: io_error_text(&e),
            }),
            Ok(_) if buf.len() as u64 > limit => unscanned(UnscannedReason::TooLarge {
                size: buf.len() as u64,
                limit,
            }),
            Ok(_) => FileScan {
                bytes: buf.len() as u64,
                result: self.scan_bytes(&buf),
            },
        };
        if buf.capacity() <= 4 << 20 {
            self.buf = buf;
        }
        out
    }

    fn body_matches(
        &mut self,
        data: &[u8],
        deadline: Instant,
        out: &mut Vec<Match>,
    ) -> Result<(), Stop> {
        let bodies = self.set.bodies();
        if bodies.is_empty() {
            return Ok(());
        }
        let memory = self.memory;
        let targets = if bodies.has_typed_targets() && !memory {
            [
                Target::Pe.accepts(data),
                Target::Elf.accepts(data),
                Target::MachO.accepts(data),
            ]
        } else {
            [false; 3]
        };
        let target_ok = |t: Target| match t {
            Target::Any => true,
            Target::Pe => targets[0],
            Target::Elf => targets[1],
            Target::MachO => targets[2],
        };
        let sigs = bodies.sigs();
        // Anchored signatures are pinned to offsets from a file's start or end.
        let anchored: &[u32] = if memory { &[] } else { bodies.anchored() };
        for &id in anchored {
            if Instant::now() > deadline {
                self.reset_found();
                return Err(Stop::Timeout);
            }
            let Some(sig) = sigs.get(id as usize) else {
                continue;
            };
            if target_ok(sig.target) {
                if let Some(start) = verify_anchored(sig, data) {
                    self.record(id, sig.name.as_str(), start, out);
                }
            }
        }
        if bodies.atoms().is_empty() {
            self.reset_found();
            return Ok(());
        }
        let filter = bodies.filter();
        let mut result = Ok(());
        let mut block_start = 0;
        while block_start < data.len() {
            let block_end = (block_start + BLOCK).min(data.len());
            let block = data.get(block_start..block_end).unwrap_or(&[]);
            // Positions whose next four bytes may begin an atom, then (for atoms shorter than
            // four bytes) positions whose next two bytes may.
            let mut hits = std::mem::take(&mut self.hits);
            hits.clear();
            filter.candidates(data, block_start, block_end, &mut hits);
            if filter.has_short() {
                let full2 = data
                    .get(block_start..(block_end + 1).min(data.len()))
                    .unwrap_or(&[]);
                for (i, w) in full2.windows(2).enumerate().take(block.len()) {
                    if let Ok(w) = <[u8; 2]>::try_from(w) {
                        if filter.short_may_start(u16::from_le_bytes(w)) {
                            hits.push(block_start + i);
                        }
                    }
                }
                hits.sort_unstable();
                hits.dedup();
            }
            for (n, &pos) in hits.iter().enumerate() {
                // Verifying one hit may take a pass over the rest of the object (a `*` gap),
                // so the time limit is checked between hits too, not only between blocks.
                if n % 64 == 63 && Instant::now() > deadline {
                    result = Err(Stop::Timeout);
                    break;
                }
                let mut found = std::mem::take(&mut self.atom_buf);
                found.clear();
                bodies.atoms().atoms_at(data, pos, |atom| found.push(atom));
                for &atom in &found {
                    self.confirm_atom(atom, pos, data, &target_ok, out);
                }
                self.atom_buf = found;
            }
            self.hits = hits;
            if result.is_err() {
                break;
            }
            block_start = block_end;
            if block_start < data.len() && Instant::now() > deadline {
                result = Err(Stop::Timeout);
                break;
            }
        }
        self.reset_found();
        result
    }

    /// An atom occurs at `at`: verify every signature that uses it.
    fn confirm_atom(
        &mut self,
        atom: usize,
        at: usize,
        data: &[u8],
        target_ok: &impl Fn(Target) -> bool,
        out: &mut Vec<Match>,
    ) {
        let bodies = self.set.bodies();
        let sigs = bodies.sigs();
        for r in bodies.refs(atom) {
            if self.is_found(r.sig) {
                continue;
            }
            let Some(sig) = sigs.get(r.sig as usize) else {
                continue;
            };
            if !target_ok(sig.target) || (self.memory && sig.offset != Offset::Any) {
                continue;
            }
            if is_open(sig) {
                // Decided for the whole object at its first hit: found, or never.
                if self.forward_miss.insert((r.sig, usize::MAX), 0).is_none() {
                    if let Some(start) = verify_open(sig, data) {
                        self.record(r.sig, sig.name.as_str(), start, out);
                    }
                }
                continue;
            }
            let Some(pos) = at.checked_sub(r.off as usize) else {
                continue;
            };
            let seg = r.seg as usize;
            let open_ended = sig.pattern.gaps().get(seg).is_some_and(|g| g.max.is_none());
            if open_ended
                && self
                    .forward_miss
                    .get(&(r.sig, seg))
                    .is_some_and(|&p| p <= pos)
            {
                continue;
            }
            match verify(sig, data, seg, pos) {
                Ok(start) => self.record(r.sig, sig.name.as_str(), start, out),
                Err(Miss::Forward) if open_ended => {
                    self.forward_miss
                        .entry((r.sig, seg))
                        .and_modify(|p| *p = (*p).min(pos))
                        .or_insert(pos);
                }
                Err(_) => {}
            }
        }
    }

    #[inline]
    fn is_found(&self, sig: u32) -> bool {
        self.found
            .get((sig / 64) as usize)
            .is_some_and(|w| w >> (sig % 64) & 1 == 1)
    }

    fn record(&mut self, sig: u32, name: &str, start: usize, out: &mut Vec<Match>) {
        if let Some(w) = self.found.get_mut((sig / 64) as usize) {
            *w |= 1 << (sig % 64);
            self.touched.push(sig);
        }
        // Expanded alternatives share a name: report each name once.
        if !out
            .iter()
            .any(|m| m.kind == MatchKind::Body && m.name == name)
        {
            out.push(Match {
                name: name.to_owned(),
                kind: MatchKind::Body,
                offset: Some(start as u64),
                inner: None,
            });
        }
    }

    fn reset_found(&mut self) {
        self.forward_miss.clear();
        for sig in self.touched.drain(..) {
            if let Some(w) = self.found.get_mut((sig / 64) as usize) {
                *w = 0;
            }
        }
    }

    #[cfg(not(feature = "yara"))]
    fn yara_matches(
        &mut self,
        _: &[u8],
        _: Instant,
        _: &mut [Match],
    ) -> Result<(), UnscannedReason> {
        Ok(())
    }

    #[cfg(feature = "yara")]
    fn yara_matches(
        &mut self,
        data: &[u8],
        deadline: Instant,
        out: &mut Vec<Match>,
    ) -> Result<(), UnscannedReason> {
        let Some(yara) = self.yara.as_mut() else {
            return Ok(());
        };
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        yara.set_timeout(left);
        let results = yara.scan(data).map_err(|e| match e {
            yara_x::errors::ScanError::Timeout => UnscannedReason::TimedOut {
                limit_ms: u64::try_from(self.limits.max_scan_time.as_millis()).unwrap_or(u64::MAX),
            },
            other => UnscannedReason::Engine {
                error: other.to_string(),
            },
        })?;
        for rule in results.matching_rules() {
            let name = rule.identifier();
            if self.set.is_ignored(name) {
                continue;
            }
            let offset = rule
                .patterns()
                .filter_map(|p| p.matches().map(|m| m.range().start).min())
                .min()
                .map(|o| o as u64);
            out.push(Match {
                name: name.to_owned(),
                kind: MatchKind::Yara,
                offset,
                inner: None,
            });
        }
        Ok(())
    }
}

/// Look `data` up in hash tables, hashing only with the algorithms that have a signature of
/// this size.
fn hash_matches(tables: &HashIndex, data: &[u8], out: &mut Vec<Match>) {
    if tables.is_empty() {
        return;
    }
    let size = data.len() as u64;
    let [md5_w, sha1_w, sha256_w] = tables.wanted(size);
    if md5_w {
        let d: [u8; 16] = md5::Md5::digest(data).into();
        push_names(tables.lookup(HashKind::Md5, size, &d), MatchKind::Md5, out);
    }
    if sha1_w {
        let d: [u8; 20] = sha1::Sha1::digest(data).into();
        push_names(
            tables.lookup(HashKind::Sha1, size, &d),
            MatchKind::Sha1,
            out,
        );
    }
    if sha256_w {
        let d: [u8; 32] = sha2::Sha256::digest(data).into();
        push_names(
            tables.lookup(HashKind::Sha256, size, &d),
            MatchKind::Sha256,
            out,
        );
    }
}

/// The hash signatures of `set` that match content known only by its size and digests (a
/// cached verdict revalidated after an update that changed only hash signatures), after the
/// allow-list: empty when nothing matches or the content is allow-listed.
pub fn hash_lookup(
    set: &SignatureSet,
    size: u64,
    md5: &[u8; 16],
    sha1: &[u8; 20],
    sha256: &[u8; 32],
) -> Vec<Match> {
    let t = set.hashes();
    let mut out = Vec::new();
    push_names(t.lookup(HashKind::Md5, size, md5), MatchKind::Md5, &mut out);
    push_names(
        t.lookup(HashKind::Sha1, size, sha1),
        MatchKind::Sha1,
        &mut out,
    );
    push_names(
        t.lookup(HashKind::Sha256, size, sha256),
        MatchKind::Sha256,
        &mut out,
    );
    if !out.is_empty() && allow_listed(set, size, md5, sha1, sha256) {
        out.clear();
    }
    out
}

/// Whether content known by its size and digests is on `set`'s allow-list.
pub fn allow_listed(
    set: &SignatureSet,
    size: u64,
    md5: &[u8; 16],
    sha1: &[u8; 20],
    sha256: &[u8; 32],
) -> bool {
    let a = set.allow_list();
    !a.is_empty()
        && [
            a.lookup(HashKind::Md5, size, md5),
            a.lookup(HashKind::Sha1, size, sha1),
            a.lookup(HashKind::Sha256, size, sha256),
        ]
        .iter()
        .any(|names| !names.is_empty())
}

fn push_names(names: Vec<&str>, kind: MatchKind, out: &mut Vec<Match>) {
    for name in names {
        if !out.iter().any(|m| m.name == name) {
            out.push(Match {
                name: name.to_owned(),
                kind,
                offset: None,
                inner: None,
            });
        }
    }
}

fn unscanned(reason: UnscannedReason) -> FileScan {
    FileScan {
        result: ScanResult::Unscanned { reason },
        bytes: 0,
    }
}

/// How svm words an I/O error on a file (clamscan's wording for the common two).
pub fn io_error_text(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => "Access denied".to_owned(),
        std::io::ErrorKind::NotFound => "No such file or directory".to_owned(),
        _ => e.to_string(),
    }
}

/// A short name for a file type (`FIFO`, `socket`, `directory`, …).
pub fn file_type_name(ft: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "directory"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_symlink() {
        "symbolic link"
    } else {
        "special file"
    }
}

#[allow(unsafe_code)]
fn map_file(file: &File) -> Option<memmap2::Mmap> {
    // SAFETY: the map is read-only and private to this scan. Another process truncating the
    // file while it is mapped would raise SIGBUS; that is the documented limitation of mapped
    // scanning (ClamAV has the same), and small files are read instead.
    let map = unsafe { memmap2::MmapOptions::new().map(file) }.ok()?;
    let _ = map.advise(memmap2::Advice::Sequential);
    Some(map)
}
