//! A deterministic, seeded generator of benign files and planted positives, with ground truth.
//!
//! [`generate`] writes, under `OUT/`:
//! - `sigs/`: `corpus.hdb`, `corpus.hsb`, `corpus.ndb`, `corpus.yar`, `corpus.fp`,
//!   `corpus.ign2`: one signature per hash kind and per wildcard, jump, alternative, offset and
//!   target-type form, a YARA rule, an allow-list entry and an ignored signature;
//! - `files/benign/`: random files (binary, text, zeros, fake executables, sizes that collide
//!   with hash signatures);
//! - `files/planted/`: one positive per signature, and negative controls (near misses,
//!   wrong file type, wrong offset, allow-listed, ignored) that must stay clean;
//! - `ground_truth.json`: for every file, the signature names expected (empty = clean).
//!
//! EICAR is assembled at run time from two halves, never stored as a file in the repository.
//!
//! ```no_run
//! let truth = corpus::generate(std::path::Path::new("/tmp/corpus"), 7, 200).unwrap();
//! assert!(truth.entries.iter().any(|e| !e.expected.is_empty()));
//! ```
//!
//! # Current limitations
//! - Content is synthetic; real-world benign data comes from `../shared/bench/make_corpus.py`.

#![forbid(unsafe_code)]
// A generator of our own test data, never of hostile input.
#![allow(clippy::indexing_slicing)]

use anyhow::{Context, Result};
use md5::Digest;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::Path;

/// One file of the corpus and what a correct scanner reports for it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to `OUT/files`.
    pub path: String,
    /// Signature names expected; empty for a clean file.
    pub expected: Vec<String>,
    /// Which form the file exercises (`benign`, `md5`, `body-star`, `control-wrong-type`, …).
    pub form: String,
}

/// The ground truth of a generated corpus.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroundTruth {
    /// The seed used.
    pub seed: u64,
    /// Every file.
    pub entries: Vec<Entry>,
}

/// The EICAR test string, assembled from two halves.
pub fn eicar() -> Vec<u8> {
    [
        &b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$"[..],
        b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*",
    ]
    .concat()
}

struct Gen {
    rng: ChaCha8Rng,
    hdb: String,
    hsb: String,
    ndb: String,
    yar: String,
    fp: String,
    ign2: String,
    entries: Vec<Entry>,
    files: std::path::PathBuf,
}

impl Gen {
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.rng.fill_bytes(&mut v);
        v
    }

    /// Random literal bytes that never contain 0x00 (so planted patterns stay distinct from
    /// the zero-filled benign files).
    fn lit(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.rng.random_range(1..=255u8)).collect()
    }

    fn filler(&mut self) -> Vec<u8> {
        let n = self.rng.random_range(64..4096);
        self.bytes(n)
    }

    fn write(&mut self, rel: &str, data: &[u8], expected: &[&str], form: &str) -> Result<()> {
        let p = self.files.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&p, data).with_context(|| format!("writing {}", p.display()))?;
        self.entries.push(Entry {
            path: rel.to_owned(),
            expected: expected.iter().map(|s| (*s).to_owned()).collect(),
            form: form.to_owned(),
        });
        Ok(())
    }

    /// Plant `body` inside random filler.
    fn plant(&mut self, form: &str, name: &str, body: &[u8]) -> Result<()> {
        let mut data = self.filler();
        data.extend_from_slice(body);
        let tail = self.filler();
        data.extend_from_slice(&tail);
        self.write(&format!("planted/{form}.bin"), &data, &[name], form)
    }

    fn control(&mut self, form: &str, data: &[u8]) -> Result<()> {
        self.write(&format!("planted/{form}.bin"), data, &[], form)
    }
}

fn h(b: &[u8]) -> String {
    hex::encode(b)
}

/// A minimal PE image: `MZ`, `e_lfanew` = 0x80, `PE\0\0`.
fn pe_header() -> Vec<u8> {
    let mut v = vec![0u8; 0x100];
    v[0] = b'M';
    v[1] = b'Z';
    v[0x3c] = 0x80;
    v[0x80..0x84].copy_from_slice(b"PE\0\0");
    v
}

/// Generate the corpus under `out` (created if needed). Same seed, same bytes.
pub fn generate(out: &Path, seed: u64, benign_files: usize) -> Result<GroundTruth> {
    let sigs = out.join("sigs");
    let files = out.join("files");
    fs::create_dir_all(&sigs)?;
    fs::create_dir_all(files.join("benign"))?;
    fs::create_dir_all(files.join("planted"))?;
    let mut g = Gen {
        rng: ChaCha8Rng::seed_from_u64(seed),
        hdb: String::new(),
        hsb: String::new(),
        ndb: String::new(),
        yar: String::new(),
        fp: String::new(),
        ign2: String::new(),
        entries: Vec::new(),
        files: files.clone(),
    };

    // ------------------------------------------------------------ hash signatures
    let mut hash_sizes = Vec::new();
    for (form, star) in [
        ("md5", false),
        ("md5-anysize", true),
        ("sha1", false),
        ("sha256", false),
        ("sha256-anysize", true),
    ] {
        let data = g.filler();
        let name = format!("Corpus.Hash.{form}");
        let size = if star {
            "*".to_owned()
        } else {
            data.len().to_string()
        };
        match form {
            "md5" | "md5-anysize" => g
                .hdb
                .push_str(&format!("{}:{size}:{name}\n", h(&md5::Md5::digest(&data)))),
            "sha1" => g.hsb.push_str(&format!(
                "{}:{size}:{name}\n",
                h(&sha1::Sha1::digest(&data))
            )),
            _ => g.hsb.push_str(&format!(
                "{}:{size}:{name}:73\n",
                h(&sha2::Sha256::digest(&data))
            )),
        }
        hash_sizes.push(data.len());
        g.write(&format!("planted/{form}.bin"), &data, &[&name], form)?;
    }

    // ------------------------------------------------------------ body signatures
    // Each form: (form, hex signature, bytes that match it).
    let mut forms: Vec<(String, String, Vec<u8>)> = Vec::new();
    let a = g.lit(10);
    forms.push(("body-literal".into(), h(&a), a.clone()));
    let (a, b) = (g.lit(6), g.lit(6));
    forms.push((
        "body-anybyte".into(),
        format!("{}??{}", h(&a), h(&b)),
        [&a[..], &[0x5a], &b[..]].concat(),
    ));
    let (a, b) = (g.lit(6), g.lit(6));
    forms.push((
        "body-high-nibble".into(),
        format!("{}c?{}", h(&a), h(&b)),
        [&a[..], &[0xc7], &b[..]].concat(),
    ));
    let (a, b) = (g.lit(6), g.lit(6));
    forms.push((
        "body-low-nibble".into(),
        format!("{}?3{}", h(&a), h(&b)),
        [&a[..], &[0xe3], &b[..]].concat(),
    ));
    let (a, b, f) = (g.lit(8), g.lit(8), g.bytes(3000));
    forms.push((
        "body-star".into(),
        format!("{}*{}", h(&a), h(&b)),
        [&a[..], &f, &b[..]].concat(),
    ));
    let (a, b, f) = (g.lit(8), g.lit(8), g.bytes(7));
    forms.push((
        "body-jump-fixed".into(),
        format!("{}{{7}}{}", h(&a), h(&b)),
        [&a[..], &f, &b[..]].concat(),
    ));
    let (a, b, f) = (g.lit(8), g.lit(8), g.bytes(5));
    forms.push((
        "body-jump-upto".into(),
        format!("{}{{-5}}{}", h(&a), h(&b)),
        [&a[..], &f, &b[..]].concat(),
    ));
    let (a, b, f) = (g.lit(8), g.lit(8), g.bytes(400));
    forms.push((
        "body-jump-atleast".into(),
        format!("{}{{300-}}{}", h(&a), h(&b)),
        [&a[..], &f, &b[..]].concat(),
    ));
    let (a, b, f) = (g.lit(8), g.lit(8), g.bytes(12));
    forms.push((
        "body-jump-range".into(),
        format!("{}{{4-12}}{}", h(&a), h(&b)),
        [&a[..], &f, &b[..]].concat(),
    ));
    let (a, b, f) = (g.lit(8), [0x99u8], g.bytes(2));
    forms.push((
        "body-jump-bracket".into(),
        format!("{}[1-3]{}", h(&a), h(&b)),
        [&a[..], &f, &b[..]].concat(),
    ));
    let (a, b) = (g.lit(6), g.lit(6));
    forms.push((
        "body-alt".into(),
        format!("{}(11|22|33){}", h(&a), h(&b)),
        [&a[..], &[0x22], &b[..]].concat(),
    ));
    let (a, b) = (g.lit(6), g.lit(6));
    forms.push((
        "body-negated-alt".into(),
        format!("{}!(11|22){}", h(&a), h(&b)),
        [&a[..], &[0x44], &b[..]].concat(),
    ));
    let (a, b) = (g.lit(6), g.lit(6));
    forms.push((
        "body-multibyte-alt".into(),
        format!("{}(1122|3344){}", h(&a), h(&b)),
        [&a[..], &[0x33, 0x44], &b[..]].concat(),
    ));
    let (a, b) = (g.lit(6), g.lit(6));
    forms.push((
        "body-varlen-alt".into(),
        format!("{}(11|223344){}", h(&a), h(&b)),
        [&a[..], &[0x22, 0x33, 0x44], &b[..]].concat(),
    ));
    for (form, hex, body) in &forms {
        let name = format!("Corpus.Body.{form}");
        g.ndb.push_str(&format!("{name}:0:*:{hex}\n"));
        g.plant(form, &name, body)?;
    }

    // Offsets.
    let lit = g.lit(12);
    g.ndb
        .push_str(&format!("Corpus.Offset.absolute:0:1000:{}\n", h(&lit)));
    let mut data = g.bytes(3000);
    data[1000..1012].copy_from_slice(&lit);
    g.write(
        "planted/offset-absolute.bin",
        &data,
        &["Corpus.Offset.absolute"],
        "offset-absolute",
    )?;
    data.copy_within(1000..1012, 1500); // control: same bytes at the wrong offset only
    let wrong = g.bytes(12);
    data[1000..1012].copy_from_slice(&wrong);
    g.control("control-wrong-offset", &data)?;

    let lit = g.lit(12);
    g.ndb
        .push_str(&format!("Corpus.Offset.shift:0:500,2000:{}\n", h(&lit)));
    let mut data = g.bytes(4000);
    data[1700..1712].copy_from_slice(&lit);
    g.write(
        "planted/offset-shift.bin",
        &data,
        &["Corpus.Offset.shift"],
        "offset-shift",
    )?;

    let lit = g.lit(12);
    g.ndb
        .push_str(&format!("Corpus.Offset.eof:0:EOF-40:{}\n", h(&lit)));
    let mut data = g.bytes(2000);
    let n = data.len();
    data[n - 40..n - 28].copy_from_slice(&lit);
    g.write(
        "planted/offset-eof.bin",
        &data,
        &["Corpus.Offset.eof"],
        "offset-eof",
    )?;

    // Target types.
    let lit = g.lit(12);
    g.ndb
        .push_str(&format!("Corpus.Target.pe:1:*:{}\n", h(&lit)));
    let mut pe = pe_header();
    pe.extend_from_slice(&g.filler());
    pe.extend_from_slice(&lit);
    g.write(
        "planted/target-pe.exe",
        &pe,
        &["Corpus.Target.pe"],
        "target-pe",
    )?;
    let mut not_pe = g.filler();
    not_pe.extend_from_slice(&lit);
    g.control("control-wrong-type", &not_pe)?;

    let lit = g.lit(12);
    g.ndb
        .push_str(&format!("Corpus.Target.elf:6:*:{}\n", h(&lit)));
    let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
    elf.extend_from_slice(&g.filler());
    elf.extend_from_slice(&lit);
    g.write(
        "planted/target-elf",
        &elf,
        &["Corpus.Target.elf"],
        "target-elf",
    )?;

    let lit = g.lit(12);
    g.ndb
        .push_str(&format!("Corpus.Target.macho:9:*:{}\n", h(&lit)));
    let mut macho = vec![0xcf, 0xfa, 0xed, 0xfe];
    macho.extend_from_slice(&g.filler());
    macho.extend_from_slice(&lit);
    g.write(
        "planted/target-macho",
        &macho,
        &["Corpus.Target.macho"],
        "target-macho",
    )?;

    // Near miss: a jump one byte longer than allowed.
    let (a, b, f) = (g.lit(8), g.lit(8), g.bytes(13));
    g.ndb.push_str(&format!(
        "Corpus.Body.nearmiss:0:*:{}{{4-12}}{}\n",
        h(&a),
        h(&b)
    ));
    g.control("control-jump-too-long", &[&a[..], &f, &b[..]].concat())?;

    // Allow-listed: matches a body signature, but its MD5 is in the .fp.
    let lit = g.lit(12);
    g.ndb
        .push_str(&format!("Corpus.Body.allowlisted:0:*:{}\n", h(&lit)));
    let mut data = g.filler();
    data.extend_from_slice(&lit);
    g.fp.push_str(&format!(
        "{}:{}:Corpus.KnownGood\n",
        h(&md5::Md5::digest(&data)),
        data.len()
    ));
    g.control("control-allowlisted", &data)?;

    // Ignored by name.
    let lit = g.lit(12);
    g.ndb
        .push_str(&format!("Corpus.Body.ignored:0:*:{}\n", h(&lit)));
    g.ign2.push_str("Corpus.Body.ignored\n");
    let mut data = g.filler();
    data.extend_from_slice(&lit);
    g.control("control-ignored", &data)?;

    // YARA.
    let lit = g.lit(12);
    g.yar.push_str(&format!(
        "rule Corpus_Yara_hex {{\n  strings:\n    $a = {{ {} }}\n  condition:\n    $a\n}}\n",
        lit.iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    g.plant("yara-hex", "Corpus_Yara_hex", &lit)?;

    // EICAR, made at run time.
    g.ndb.push_str(signatures_eicar_line());
    let mut e = eicar();
    e.extend_from_slice(b"\r\n");
    g.write("planted/eicar.com", &e, &["Eicar-Test-Signature"], "eicar")?;

    // ------------------------------------------------------------ benign files
    g.write("benign/empty", &[], &[], "benign")?;
    for i in 0..benign_files {
        let kind = i % 6;
        let size = match g.rng.random_range(0..10) {
            0 => g.rng.random_range(1..64),
            1..=6 => g.rng.random_range(64..16 << 10),
            7 | 8 => g.rng.random_range(16 << 10..300 << 10),
            _ => g.rng.random_range(300 << 10..1 << 20),
        };
        let data = match kind {
            0 | 1 => g.bytes(size),
            2 => {
                let words = [
                    "the ", "scan ", "guest ", "ward ", "page ", "file ", "\n", "data ",
                ];
                let mut s = Vec::with_capacity(size);
                while s.len() < size {
                    s.extend_from_slice(words[g.rng.random_range(0..words.len())].as_bytes());
                }
                s
            }
            3 => vec![0u8; size],
            4 => {
                let mut v = pe_header();
                v.extend(g.bytes(size));
                v
            }
            _ => {
                let mut v = b"\x7fELF\x02\x01\x01".to_vec();
                v.extend(g.bytes(size));
                v
            }
        };
        g.write(&format!("benign/{i:05}.bin"), &data, &[], "benign")?;
    }
    // Files whose size equals a hash signature's size, with other content.
    for (i, size) in hash_sizes.clone().into_iter().enumerate() {
        let data = g.bytes(size);
        g.write(
            &format!("benign/same-size-{i}.bin"),
            &data,
            &[],
            "benign-hash-size",
        )?;
    }

    fs::write(sigs.join("corpus.hdb"), &g.hdb)?;
    fs::write(sigs.join("corpus.hsb"), &g.hsb)?;
    fs::write(sigs.join("corpus.ndb"), &g.ndb)?;
    fs::write(sigs.join("corpus.yar"), &g.yar)?;
    fs::write(sigs.join("corpus.fp"), &g.fp)?;
    fs::write(sigs.join("corpus.ign2"), &g.ign2)?;
    let truth = GroundTruth {
        seed,
        entries: g.entries,
    };
    fs::write(
        out.join("ground_truth.json"),
        serde_json::to_vec_pretty(&truth)?,
    )?;
    Ok(truth)
}

/// The EICAR body signature, the same line as svm's default set.
fn signatures_eicar_line() -> &'static str {
    "Eicar-Test-Signature:0:0:58354f2150254041505b345c505a58353428505e2937434329377d2445494341522d5354414e444152442d414e544956495255532d544553542d46494c452124482b482a\n"
}
