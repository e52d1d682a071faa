//! The [`Loader`]: reads files, directories and containers, collects every error, and builds a
//! [`SignatureSet`].

use crate::body::{parse_ndb_line, BodySig};
use crate::error::{ErrorCode, LineError, LoadError, ParseError};
use crate::hash::{parse_hash_line, HashIndex, HashKind, HashLayer, FLEVEL};
use crate::lines::{parse_lines, Input, Parsed};
use crate::set::{BodyDb, BodyPart, Counts, SignatureSet, SourceKey};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;
use std::sync::Arc;

/// How a load treats problems.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct LoadOptions {
    /// Load the valid lines and report how many malformed ones were left out, instead of
    /// refusing the whole set.
    pub skip_invalid: bool,
}

impl LoadOptions {
    /// Options that refuse any malformed line.
    pub fn strict() -> Self {
        Self::default()
    }
    /// Set [`LoadOptions::skip_invalid`].
    pub fn skip_invalid(mut self, yes: bool) -> Self {
        self.skip_invalid = yes;
        self
    }
}

/// What kind of database a file name denotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DbKind {
    /// `.hdb` (MD5 only) or `.hsb`.
    Hash {
        md5_only: bool,
    },
    /// `.fp` (MD5 only) or `.sfp`.
    Allow {
        md5_only: bool,
    },
    Ign2,
    Ndb,
    Yara,
    /// `.cvd`, `.cld`, `.cud`.
    Container,
    /// A valid kind not supported yet; lines are counted under this description.
    Unsupported(&'static str),
    /// Metadata with no signatures (`.info`, `COPYING`, …).
    Metadata,
}

fn kind_of(name: &str) -> Option<DbKind> {
    let lower = name.to_ascii_lowercase();
    let ext = lower.rsplit_once('.').map(|(_, e)| e);
    if lower == "copying" {
        return Some(DbKind::Metadata);
    }
    Some(match ext? {
        "hdb" => DbKind::Hash { md5_only: true },
        "hsb" => DbKind::Hash { md5_only: false },
        "fp" => DbKind::Allow { md5_only: true },
        "sfp" => DbKind::Allow { md5_only: false },
        "ign2" => DbKind::Ign2,
        "ndb" => DbKind::Ndb,
        "yar" | "yara" => DbKind::Yara,
        "cvd" | "cld" | "cud" => DbKind::Container,
        "ldb" | "ldu" => DbKind::Unsupported(".ldb/.ldu logical signatures"),
        "mdb" | "mdu" | "msb" | "msu" => DbKind::Unsupported(".mdb/.msb PE section hashes"),
        "imp" => DbKind::Unsupported(".imp PE import table hashes"),
        "hdu" | "hsu" | "ndu" => DbKind::Unsupported(".hdu/.hsu/.ndu PUA signatures"),
        "cdb" => DbKind::Unsupported(".cdb container metadata"),
        "ftm" => DbKind::Unsupported(".ftm file type magic"),
        "pdb" | "gdb" | "wdb" => DbKind::Unsupported(".pdb/.gdb/.wdb phishing URL lists"),
        "idb" => DbKind::Unsupported(".idb icon signatures"),
        "crb" | "cat" => DbKind::Unsupported(".crb/.cat certificate rules"),
        "cbc" => DbKind::Unsupported(".cbc bytecode signatures"),
        "ign" => DbKind::Unsupported(".ign old-style ignore lists"),
        "db" => DbKind::Unsupported(".db old-format signatures"),
        "pwdb" => DbKind::Unsupported(".pwdb archive passwords"),
        "cfg" => DbKind::Unsupported(".cfg engine configuration"),
        "info" | "sign" => DbKind::Metadata,
        _ => return None,
    })
}

/// Largest decompressed size accepted from one `.cvd`/`.cld` container.
pub const MAX_CONTAINER_BYTES: u64 = 4 << 30;

/// Collects signatures from many sources, then [`build`](Loader::build)s a [`SignatureSet`].
///
/// Every malformed line is recorded with its source, line and column; loading goes on so all
/// problems are reported at once.
#[derive(Debug)]
pub struct Loader {
    opts: LoadOptions,
    /// Hash layers in load order, with whether each is an allow-list.
    layers: Vec<(Layer, bool)>,
    bodies: Vec<BodySig>,
    /// Parts of a previous set that this one may share ([`Loader::share_with`]).
    shared: Shared,
    keys: Vec<(String, Option<[u8; 32]>)>,
    /// Set while a keyed source is parsed: the layer it fills gets this key.
    current_key: Option<SourceKey>,
    #[cfg(feature = "yara")]
    yara: Option<yara_x::Compiler<'static>>,
    ignored: HashSet<String>,
    errors: Vec<ParseError>,
    skipped: BTreeMap<&'static str, u64>,
    body_skipped: BTreeMap<&'static str, u64>,
    counts: Counts,
    digest: blake3::Hasher,
    sources: Vec<String>,
}

impl Loader {
    /// A loader with the given options.
    pub fn new(opts: LoadOptions) -> Self {
        Loader {
            opts,
            layers: Vec::new(),
            bodies: Vec::new(),
            shared: Shared::default(),
            keys: Vec::new(),
            current_key: None,
            #[cfg(feature = "yara")]
            yara: None,
            ignored: HashSet::new(),
            errors: Vec::new(),
            skipped: BTreeMap::new(),
            body_skipped: BTreeMap::new(),
            counts: Counts::default(),
            digest: blake3::Hasher::new(),
            sources: Vec::new(),
        }
    }

    /// Add the small default set compiled into the binary (EICAR and the ClamAV test file).
    pub fn add_default(&mut self) -> Result<(), LoadError> {
        self.add_bytes("<default>/svm-default.ndb", crate::DEFAULT_NDB.as_bytes())
    }

    /// Add a file, or every database file in a directory (not recursive, like ClamAV).
    pub fn add_path(&mut self, path: &Path) -> Result<(), LoadError> {
        let io_err = |source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io_err)?;
        if meta.is_dir() {
            let mut entries: Vec<_> = std::fs::read_dir(path)
                .map_err(io_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(io_err)?;
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let p = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                if kind_of(&name).is_none() || !p.is_file() {
                    tracing::debug!(path = %p.display(), "not a signature file, ignored");
                    continue;
                }
                self.add_file(&p)?;
            }
            Ok(())
        } else {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if kind_of(&name).is_none() {
                self.errors.push(LineError::new(0, ErrorCode::BadContainer, "not a supported signature file type (.hdb .hsb .fp .sfp .ign2 .ndb .yar .cvd .cld …)").at(&path.display().to_string(), 0));
                return Ok(());
            }
            self.add_file(path)
        }
    }

    fn add_file(&mut self, path: &Path) -> Result<(), LoadError> {
        let file = File::open(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let name = path.display().to_string();
        let hint = file.metadata().map(|m| m.len()).unwrap_or(0);
        self.add_reader(
            &name,
            Input::Shared(&mut BufReader::with_capacity(1 << 16, file)),
            hint,
        )
        .map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Add signatures from memory; `name`'s extension selects the format.
    pub fn add_bytes(&mut self, name: &str, data: &[u8]) -> Result<(), LoadError> {
        self.add_reader(name, Input::Shared(&mut { data }), data.len() as u64)
            .map_err(|source| LoadError::Io {
                path: name.into(),
                source,
            })
    }

    fn add_reader(&mut self, name: &str, mut reader: Input<'_>, size_hint: u64) -> io::Result<()> {
        let Some(kind) = kind_of(base_name(name)) else {
            self.errors.push(
                LineError::new(
                    0,
                    ErrorCode::BadContainer,
                    "not a supported signature file type",
                )
                .at(name, 0),
            );
            return Ok(());
        };
        self.sources.push(name.to_owned());
        self.digest.update(name.as_bytes());
        self.digest.update(&[0]);
        if self.current_key.is_none() {
            self.keys.push((name.to_owned(), None));
        }
        match kind {
            DbKind::Hash { md5_only } | DbKind::Allow { md5_only } => {
                let allow = matches!(kind, DbKind::Allow { .. });
                self.load_hashes(name, reader, md5_only, allow, size_hint)
            }
            DbKind::Ign2 => self.load_ign2(name, reader),
            DbKind::Ndb => self.load_ndb(name, reader, size_hint),
            #[cfg(feature = "yara")]
            DbKind::Yara => self.load_yara(name, reader.as_read()),
            #[cfg(not(feature = "yara"))]
            DbKind::Yara => {
                let _ = &mut reader;
                self.errors.push(
                    LineError::new(0, ErrorCode::Yara, "this build of svm has no YARA support")
                        .at(name, 0),
                );
                Ok(())
            }
            DbKind::Container => self.load_container(name, reader.as_read()),
            DbKind::Unsupported(what) => {
                let n = self.count_lines(reader.as_read())?;
                *self.skipped.entry(what).or_default() += n;
                Ok(())
            }
            DbKind::Metadata => {
                self.count_lines(reader.as_read())?;
                Ok(())
            }
        }
    }

    fn count_lines(&mut self, mut reader: impl Read) -> io::Result<u64> {
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0u64;
        let mut last = b'\n';
        loop {
            let k = reader.read(&mut buf)?;
            if k == 0 {
                break;
            }
            let chunk = buf.get(..k).unwrap_or(&[]);
            self.digest.update(chunk);
            n += memchr::memchr_iter(b'\n', chunk).count() as u64;
            last = chunk.last().copied().unwrap_or(last);
        }
        if last != b'\n' {
            n += 1;
        }
        Ok(n)
    }

    fn load_hashes(
        &mut self,
        source: &str,
        reader: Input<'_>,
        md5_only: bool,
        allow: bool,
        size_hint: u64,
    ) -> io::Result<()> {
        // One layer per file. Reserve once from the file size (a SHA-256 line is at least ~70
        // bytes) so that millions of entries never go through doubling reallocations.
        let mut layer = HashLayer {
            key: self.current_key.clone(),
            ..HashLayer::default()
        };
        if size_hint > 1 << 20 && !allow {
            let est = usize::try_from(size_hint / 72).unwrap_or(0);
            layer.tables.reserve(
                if md5_only {
                    HashKind::Md5
                } else {
                    HashKind::Sha256
                },
                est,
            );
            layer
                .names
                .reserve(usize::try_from(size_hint / 5).unwrap_or(0));
        }
        let Self {
            errors,
            counts,
            digest,
            ..
        } = self;
        let HashLayer {
            names,
            tables: table,
            skipped,
            ..
        } = &mut layer;
        let mut arena_full = false;
        parse_lines(
            reader,
            |line| parse_hash_line(line, md5_only),
            |line, no, outcome| match outcome {
                Ok(Parsed::Sig(h)) => {
                    let name = line.get(h.name.0..h.name.1).unwrap_or(&[]);
                    let Some(id) = names.push(name) else {
                        arena_full = true;
                        return;
                    };
                    table.push(h.kind, &h.digest, h.size, id);
                    let c = match (allow, h.kind) {
                        (true, _) => &mut counts.allow,
                        (false, HashKind::Md5) => &mut counts.md5,
                        (false, HashKind::Sha1) => &mut counts.sha1,
                        (false, HashKind::Sha256) => &mut counts.sha256,
                    };
                    *c += 1;
                }
                Ok(Parsed::Skip(why)) => *skipped.entry(why).or_default() += 1,
                Err(e) => errors.push(e.at(source, no)),
            },
            |block| {
                if block.len() > 1 << 20 {
                    digest.update_rayon(block);
                } else {
                    digest.update(block);
                }
            },
        )?;
        if arena_full {
            return Err(io::Error::other("more than 4 GiB of signature names"));
        }
        self.layers.push((Layer::Fresh(Box::new(layer)), allow));
        Ok(())
    }

    fn load_ndb(&mut self, source: &str, reader: Input<'_>, size_hint: u64) -> io::Result<()> {
        if size_hint > 1 << 20 {
            // About 75 bytes a line: reserve once rather than double a large vector.
            self.bodies
                .reserve(usize::try_from(size_hint / 64).unwrap_or(0));
        }
        let Self {
            bodies,
            errors,
            body_skipped: skipped,
            counts,
            digest,
            ..
        } = self;
        parse_lines(
            reader,
            |line| parse_ndb_line(line, FLEVEL),
            |_, no, outcome| match outcome {
                Ok(Parsed::Sig(sigs)) => {
                    counts.body += sigs.len() as u64;
                    bodies.extend(sigs);
                }
                Ok(Parsed::Skip(why)) => *skipped.entry(why).or_default() += 1,
                Err(e) => errors.push(e.at(source, no)),
            },
            |block| {
                digest.update(block);
            },
        )
    }

    fn load_ign2(&mut self, source: &str, reader: Input<'_>) -> io::Result<()> {
        let Self {
            ignored,
            errors,
            counts,
            digest,
            ..
        } = self;
        parse_lines(
            reader,
            |line| {
                let text = std::str::from_utf8(line).map_err(|e| {
                    LineError::new(
                        e.valid_up_to(),
                        ErrorCode::NotUtf8,
                        "ignore entry is not ASCII",
                    )
                })?;
                // `Name` or `Name:md5-of-the-signature-line`; the name decides.
                let name = text.split(':').next().unwrap_or("").trim();
                crate::hash::check_name(name)?;
                Ok(Parsed::Sig(name.to_owned()))
            },
            |_, no, outcome| match outcome {
                Ok(Parsed::Sig(name)) => {
                    if ignored.insert(name) {
                        counts.ignored_names += 1;
                    }
                }
                Ok(Parsed::Skip(_)) => {}
                Err(e) => errors.push(e.at(source, no)),
            },
            |block| {
                digest.update(block);
            },
        )
    }

    #[cfg(feature = "yara")]
    fn load_yara(&mut self, source: &str, mut reader: impl Read) -> io::Result<()> {
        let mut text = Vec::new();
        reader
            .by_ref()
            .take(crate::lines::MAX_LINE as u64 * 64)
            .read_to_end(&mut text)?;
        if reader.read(&mut [0u8; 1])? != 0 {
            self.errors.push(
                LineError::new(0, ErrorCode::LineTooLong, "YARA source larger than 64 MiB")
                    .at(source, 0),
            );
            return Ok(());
        }
        self.digest.update(&text);
        let compiler = self.yara.get_or_insert_with(|| {
            let mut c = yara_x::Compiler::new();
            // Rules are hostile input (bundles, mirrors): an `include` would read any file
            // the daemon can, at compile time. Every rule file must stand alone.
            c.enable_includes(false);
            c
        });
        let before = compiler.errors().len();
        let src = yara_x::SourceCode::from(text.as_slice()).with_origin(source);
        let _ = compiler.add_source(src);
        let new_errors: Vec<ParseError> = compiler
            .errors()
            .get(before..)
            .unwrap_or(&[])
            .iter()
            .map(|e| {
                let start = e.labels().next().map_or(0, |l| l.span().start());
                let (line, column) = line_col(&text, start);
                ParseError {
                    source: source.to_owned(),
                    line,
                    column,
                    code: ErrorCode::Yara,
                    reason: format!("{} [yara-x {}]", e.title(), e.code()),
                }
            })
            .collect();
        self.errors.extend(new_errors);
        Ok(())
    }

    fn load_container(&mut self, source: &str, reader: &mut dyn Read) -> io::Result<()> {
        let mut header = [0u8; 512];
        if let Err(e) = reader.read_exact(&mut header) {
            self.errors.push(
                LineError::new(
                    0,
                    ErrorCode::BadContainer,
                    format!("truncated container header: {e}"),
                )
                .at(source, 1),
            );
            return Ok(());
        }
        self.digest.update(&header);
        if !header.starts_with(b"ClamAV-VDB:") {
            self.errors.push(
                LineError::new(
                    0,
                    ErrorCode::BadContainer,
                    "not a ClamAV container: the header does not start with \"ClamAV-VDB:\"",
                )
                .at(source, 1),
            );
            return Ok(());
        }
        let text = String::from_utf8_lossy(&header);
        let fields: Vec<&str> = text.trim_end_matches([' ', '\0']).split(':').collect();
        // ClamAV-VDB:time:version:sigs:flevel:md5:dsig:builder:stime
        let expected_md5 = fields
            .get(5)
            .filter(|m| m.len() == 32)
            .map(|m| m.to_ascii_lowercase());
        if let Some(fl) = fields.get(4).and_then(|f| f.parse::<u32>().ok()) {
            if fl > FLEVEL {
                tracing::info!(
                    source,
                    flevel = fl,
                    "container built for a newer engine; loading the kinds this engine supports"
                );
            }
        }
        // Read the body through a byte cap (decompression bombs) while digesting it.
        let mut counting = CapReader {
            inner: reader,
            left: MAX_CONTAINER_BYTES,
            md5: md5_ctx(),
        };
        let mut magic = [0u8; 2];
        let got = read_full(&mut counting, &mut magic)?;
        let head = magic.get(..got).unwrap_or(&[]).to_vec();
        let chained = io::Cursor::new(head.clone()).chain(&mut counting);
        let gz = head == [0x1f, 0x8b];
        let result = if gz {
            let dec = flate2::read::GzDecoder::new(chained);
            let capped = Capped {
                inner: dec,
                left: MAX_CONTAINER_BYTES,
            };
            self.load_tar(source, capped)
        } else {
            self.load_tar(
                source,
                Capped {
                    inner: chained,
                    left: MAX_CONTAINER_BYTES,
                },
            )
        };
        if let Err(e) = result {
            self.errors.push(
                LineError::new(
                    0,
                    ErrorCode::BadContainer,
                    format!("corrupt container body: {e}"),
                )
                .at(source, 1),
            );
            return Ok(());
        }
        // Drain the rest so the MD5 covers the whole body.
        io::copy(&mut counting, &mut io::sink())?;
        if let Some(expected) = expected_md5 {
            let got = md5_hex(&counting.md5);
            if got != expected && source.to_ascii_lowercase().ends_with(".cvd") {
                self.errors.push(
                    LineError::new(
                        0,
                        ErrorCode::BadContainer,
                        format!("container MD5 mismatch: header says {expected}, body is {got}"),
                    )
                    .at(source, 1),
                );
            }
        }
        Ok(())
    }

    fn load_tar(&mut self, source: &str, mut reader: impl Read) -> io::Result<()> {
        let reader: &mut dyn Read = &mut reader;
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries()? {
            let mut entry = entry?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let path = entry.path()?.to_string_lossy().into_owned();
            let member = path.rsplit('/').next().unwrap_or(&path).to_owned();
            if member.is_empty() || kind_of(&member).is_none() {
                continue;
            }
            if matches!(kind_of(&member), Some(DbKind::Container)) {
                // Containers do not nest.
                continue;
            }
            let inner = format!("{source}:{member}");
            let hint = entry.header().size().unwrap_or(0).min(MAX_CONTAINER_BYTES);
            self.add_reader(&inner, Input::Local(&mut entry), hint)?;
        }
        Ok(())
    }

    /// Malformed lines seen so far.
    pub fn errors(&self) -> &[ParseError] {
        &self.errors
    }

    /// Share the compiled parts of `prev` (a previous version of the set) for the sources
    /// about to be added with [`Loader::add_keyed`]: `sources` lists all of them, in order,
    /// with their content keys (a bundle manifest's SHA-256). A hash file whose name and key
    /// match one of `prev`'s is not parsed again, nor are the body signatures or YARA rules
    /// when all of their files match; [`Loader::needs_bytes`] then answers `false` for them.
    /// Nothing is shared when an ignore list (`.ign2`) differs, or a container is involved.
    pub fn share_with(&mut self, prev: &SignatureSet, sources: &[(String, [u8; 32])]) {
        let keyed: Option<Vec<SourceKey>> = prev
            .keys
            .iter()
            .map(|(n, k)| k.map(|k| (n.clone(), k)))
            .collect();
        let Some(old) = keyed else {
            return;
        };
        let of = |list: &[SourceKey], want: fn(DbKind) -> bool| -> Vec<SourceKey> {
            list.iter()
                .filter(|(n, _)| kind_of(base_name(n)).is_some_and(want))
                .cloned()
                .collect()
        };
        let is_ign = |k: DbKind| k == DbKind::Ign2;
        let is_container = |k: DbKind| k == DbKind::Container;
        let is_body = |k: DbKind| k == DbKind::Ndb;
        let is_yara = |k: DbKind| k == DbKind::Yara;
        if of(&old, is_ign) != of(sources, is_ign)
            || !of(&old, is_container).is_empty()
            || !of(sources, is_container).is_empty()
        {
            return;
        }
        self.shared = Shared {
            layers: prev
                .hashes
                .layers
                .iter()
                .map(|l| (l, false))
                .chain(prev.allow.layers.iter().map(|l| (l, true)))
                .filter_map(|(l, allow)| Some((l.key.clone()?, (l.clone(), allow))))
                .collect(),
            bodies: (of(&old, is_body) == of(sources, is_body)).then(|| prev.bodies.clone()),
            #[cfg(feature = "yara")]
            yara: (of(&old, is_yara) == of(sources, is_yara)).then(|| prev.yara.clone()),
        };
        #[cfg(not(feature = "yara"))]
        let _ = is_yara;
    }

    /// Whether a source announced to [`Loader::share_with`] must be read: `false` when its
    /// compiled form is shared with the previous set.
    pub fn needs_bytes(&self, name: &str, key: &[u8; 32]) -> bool {
        match kind_of(base_name(name)) {
            Some(DbKind::Hash { .. } | DbKind::Allow { .. }) => {
                !self.shared.layers.contains_key(&(name.to_owned(), *key))
            }
            Some(DbKind::Ndb) => self.shared.bodies.is_none(),
            #[cfg(feature = "yara")]
            Some(DbKind::Yara) => self.shared.yara.is_none(),
            _ => true,
        }
    }

    /// Add a source known by a content key (its SHA-256): `data` is read unless
    /// [`Loader::needs_bytes`] said it is shared, in which case it may be `None`.
    pub fn add_keyed(
        &mut self,
        name: &str,
        key: [u8; 32],
        data: Option<&mut (dyn Read + Send)>,
        size_hint: u64,
    ) -> Result<(), LoadError> {
        self.keys.push((name.to_owned(), Some(key)));
        let io_err = |e: io::Error| LoadError::Io {
            path: name.into(),
            source: e,
        };
        if !self.needs_bytes(name, &key) {
            self.sources.push(name.to_owned());
            self.digest_key(name, &key);
            if let Some((layer, allow)) = self.shared.layers.get(&(name.to_owned(), key)) {
                self.layers.push((Layer::Shared(layer.clone()), *allow));
            }
            return Ok(());
        }
        let Some(data) = data else {
            return Err(io_err(io::Error::other("its bytes are needed")));
        };
        let outer = std::mem::take(&mut self.digest);
        self.current_key = Some((name.to_owned(), key));
        let r = self.add_reader(
            name,
            Input::Shared(&mut BufReader::with_capacity(1 << 16, data)),
            size_hint,
        );
        self.current_key = None;
        self.digest = outer;
        self.digest_key(name, &key);
        r.map_err(io_err)
    }

    /// The set digest covers a keyed source by its name and key.
    fn digest_key(&mut self, name: &str, key: &[u8; 32]) {
        self.digest.update(name.as_bytes());
        self.digest.update(&[0]);
        self.digest.update(key);
    }

    /// Compile everything added into an immutable set.
    pub fn build(mut self) -> Result<SignatureSet, LoadError> {
        let invalid = self.errors.len() as u64;
        if invalid > 0 && !self.opts.skip_invalid {
            return Err(LoadError::Invalid {
                errors: self.errors,
            });
        }
        for e in &self.errors {
            tracing::warn!("skipped: {e}");
        }
        let ignored = &self.ignored;
        let (mut hashes, mut allow) = (HashIndex::default(), HashIndex::default());
        for (layer, is_allow) in std::mem::take(&mut self.layers) {
            let layer = match layer {
                Layer::Shared(l) => l,
                Layer::Fresh(mut l) => {
                    if !is_allow && !ignored.is_empty() {
                        let before = l.tables.len();
                        let names = &l.names;
                        l.tables.retain(|id| !ignored.contains(names.get(id)));
                        l.ignored = (before - l.tables.len()) as u64;
                    }
                    l.tables.finish();
                    l.names.shrink();
                    Arc::from(l)
                }
            };
            if is_allow {
                allow.layers.push(layer);
            } else {
                hashes.layers.push(layer);
            }
        }
        let bodies = match self.shared.bodies.take() {
            Some(b) if self.bodies.is_empty() => b,
            _ => {
                let mut sigs = std::mem::take(&mut self.bodies);
                let before = sigs.len();
                if !ignored.is_empty() {
                    sigs.retain(|b| !ignored.contains(&b.name));
                }
                Arc::new(BodyPart {
                    ignored: (before - sigs.len()) as u64,
                    db: BodyDb::build(sigs),
                    skipped: std::mem::take(&mut self.body_skipped),
                })
            }
        };
        #[cfg(feature = "yara")]
        let yara = match (self.shared.yara.take(), self.yara.take()) {
            (Some(shared), None) => shared,
            (_, compiler) => compiler.map(|c| Arc::new(crate::set::YaraPart { rules: c.build() })),
        };
        // Counts over the parts, shared or not.
        let c = &mut self.counts;
        let sum = |ix: &HashIndex, f: fn(&crate::hash::HashTables) -> usize| {
            ix.layers.iter().map(|l| f(&l.tables) as u64).sum::<u64>()
        };
        c.md5 = sum(&hashes, |t| t.md5.len());
        c.sha1 = sum(&hashes, |t| t.sha1.len());
        c.sha256 = sum(&hashes, |t| t.sha256.len());
        c.allow = sum(&allow, |t| t.len());
        c.body = bodies.db.len() as u64;
        c.ignored_sigs = bodies.ignored + hashes.layers.iter().map(|l| l.ignored).sum::<u64>();
        #[cfg(feature = "yara")]
        {
            c.yara = yara.as_ref().map_or(0, |y| y.rules.iter().count() as u64);
        }
        for (k, n) in hashes
            .layers
            .iter()
            .chain(&allow.layers)
            .flat_map(|l| l.skipped.iter())
            .chain(bodies.skipped.iter())
        {
            *self.skipped.entry(k).or_default() += n;
        }
        if self.counts.detection_total() == 0 {
            let mut what = if self.sources.is_empty() {
                "no sources".to_owned()
            } else {
                self.sources.join(", ")
            };
            if !self.skipped.is_empty() {
                let parts: Vec<String> = self
                    .skipped
                    .iter()
                    .map(|(k, n)| format!("{k}: {n}"))
                    .collect();
                what.push_str(&format!(
                    " (only lines of kinds not supported yet: {})",
                    parts.join("; ")
                ));
            }
            return Err(LoadError::Empty(what));
        }
        Ok(SignatureSet {
            hashes,
            allow,
            bodies,
            #[cfg(feature = "yara")]
            yara,
            ignored: self.ignored,
            counts: self.counts,
            skipped: self.skipped,
            invalid_skipped: invalid,
            digest: *self.digest.finalize().as_bytes(),
            sources: self.sources,
            keys: self.keys,
        })
    }
}

/// A hash layer of the set being built: parsed now, or shared with the previous set.
#[derive(Debug)]
enum Layer {
    Fresh(Box<HashLayer>),
    Shared(Arc<HashLayer>),
}

/// What [`Loader::share_with`] found reusable in the previous set.
#[derive(Debug, Default)]
struct Shared {
    layers: HashMap<SourceKey, (Arc<HashLayer>, bool)>,
    bodies: Option<Arc<BodyPart>>,
    #[cfg(feature = "yara")]
    yara: Option<Option<Arc<crate::set::YaraPart>>>,
}

/// The file name at the end of a source name (`dir/x.hsb`, `a.cvd:x.hsb`).
fn base_name(name: &str) -> &str {
    name.rsplit(['/', '\\', ':']).next().unwrap_or(name)
}

#[cfg(feature = "yara")]
fn line_col(text: &[u8], offset: usize) -> (u64, u32) {
    let before = text.get(..offset.min(text.len())).unwrap_or(&[]);
    let line = memchr::memchr_iter(b'\n', before).count() as u64 + 1;
    let col = before.len() - memchr::memrchr(b'\n', before).map_or(0, |p| p + 1) + 1;
    (line, u32::try_from(col).unwrap_or(u32::MAX))
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let k = r.read(buf.get_mut(n..).unwrap_or(&mut []))?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}

/// A reader that fails once more than `left` bytes have been read (decompression bombs).
struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            io::Error::other(format!(
                "container expands beyond {MAX_CONTAINER_BYTES} bytes"
            ))
        })?;
        Ok(n)
    }
}

/// Caps the raw container body and computes its MD5 (checked against the header).
struct CapReader<R> {
    inner: R,
    left: u64,
    md5: Md5State,
}

impl<R: Read> Read for CapReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self
            .left
            .checked_sub(n as u64)
            .ok_or_else(|| io::Error::other("container larger than the supported maximum"))?;
        let chunk = buf.get(..n).unwrap_or(&[]);
        md5_update(&mut self.md5, chunk);
        Ok(n)
    }
}

type Md5State = md5::Md5;

fn md5_ctx() -> Md5State {
    use md5::Digest;
    md5::Md5::new()
}

fn md5_update(s: &mut Md5State, data: &[u8]) {
    use md5::Digest;
    s.update(data);
}

fn md5_hex(s: &Md5State) -> String {
    use md5::Digest;
    hex::encode(s.clone().finalize())
}
