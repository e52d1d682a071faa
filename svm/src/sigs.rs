//! `svm sigs keygen | build | sign | verify | inspect`: the publisher's side of signed
//! signature bundles ([`signatures::bundle`]).
//!
//! - `keygen -o PREFIX` writes `PREFIX.key` (the secret seed, hex, mode 0600, never
//!   overwritten) and `PREFIX.pub` (the public key, hex).
//! - `build DIR --set-version N -o FILE` packs the signature files of DIR into an unsigned
//!   bundle, after loading them: a set that does not load is never packed.
//! - `sign FILE --key PREFIX.key [-o OUT]` signs it (on the signing machine).
//! - `verify FILE --trust KEY...` checks it as `svm serve` would: signature, sizes, digests,
//!   then loads the set. Exit 0 when it would be accepted, 2 with the reason when not.
//! - `inspect FILE` prints the manifest without trusting it.

use anyhow::{bail, Context, Result};
use signatures::bundle::{self, Keypair, Limits, PublicKey};
use signatures::{LoadOptions, Loader, SignatureSet};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Write `bytes` to `path` atomically: a temporary file in the same directory, fsync,
/// rename, fsync of the directory. A crash leaves the old file or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = write_temp(path, bytes, mode)?;
    commit_temp(&tmp, path)
}

/// The temporary files [`write_temp`] makes for `path` start with this.
pub fn temp_prefix(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".{name}.tmp-")
}

fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The first half of [`write_atomic`]: `bytes` in a new, fsynced temporary file next to
/// `path`. Returns the temporary file.
pub fn write_temp(path: &Path, bytes: &[u8], mode: u32) -> Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    if path.file_name().is_none() {
        bail!("{}: the output path has no file name", path.display());
    }
    let tmp = dir_of(path).join(format!("{}{}", temp_prefix(path), std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let res = (|| -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("create {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        Ok(())
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

/// The second half of [`write_atomic`]: rename `tmp` over `path`, then fsync the directory.
pub fn commit_temp(tmp: &Path, path: &Path) -> Result<()> {
    if let Err(e) = std::fs::rename(tmp, path) {
        let _ = std::fs::remove_file(tmp);
        return Err(e).with_context(|| format!("rename to {}", path.display()));
    }
    std::fs::File::open(dir_of(path))?.sync_all()?;
    Ok(())
}

/// `keygen`: a new publisher key pair.
pub fn keygen(prefix: &Path) -> Result<()> {
    use rand::TryRngCore;
    let mut seed = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut seed)
        .context("the OS random source")?;
    let key = Keypair::from_seed(seed);
    let secret = prefix.with_extension("key");
    let public = prefix.with_extension("pub");
    for p in [&secret, &public] {
        if p.exists() {
            bail!("{} exists; refusing to overwrite a key", p.display());
        }
    }
    write_atomic(
        &secret,
        format!("{}\n", hex::encode(seed)).as_bytes(),
        0o600,
    )?;
    write_atomic(
        &public,
        format!("{}\n", key.public().to_hex()).as_bytes(),
        0o644,
    )?;
    println!(
        "key id {}: secret {} (keep it offline), public {}",
        key.public().id(),
        secret.display(),
        public.display()
    );
    Ok(())
}

/// A public key given as 64 hex digits or as a file holding them.
pub fn read_public_key(s: &str) -> Result<PublicKey> {
    let text = if Path::new(s).is_file() {
        std::fs::read_to_string(s).with_context(|| format!("read {s}"))?
    } else {
        s.to_owned()
    };
    PublicKey::from_hex(&text).with_context(|| format!("public key {s}"))
}

fn read_secret_key(path: &Path) -> Result<Keypair> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut seed)
        .with_context(|| format!("{}: not a 64-hex-digit secret key", path.display()))?;
    Ok(Keypair::from_seed(seed))
}

/// Load bundle files into a set (strict: a bundle that does not load is refused).
/// Compile a verified bundle's files, sharing with `prev` (the set in use) the compiled
/// parts of the files this version did not change. Files are inflated one at a time, and
/// only the ones to parse are kept while they are parsed; every file's size and SHA-256 are
/// checked against the manifest, shared or not.
pub fn load_opened(b: &bundle::Opened<'_>, prev: Option<&SignatureSet>) -> Result<SignatureSet> {
    let mut loader = Loader::new(LoadOptions::strict());
    let keys = b
        .manifest
        .files
        .iter()
        .map(|f| {
            let key = hex::decode(&f.sha256)
                .ok()
                .and_then(|d| <[u8; 32]>::try_from(d).ok())
                .with_context(|| format!("{}: bad SHA-256 in the manifest", f.name))?;
            Ok((f.name.clone(), key))
        })
        .collect::<Result<Vec<_>>>()?;
    if let Some(prev) = prev {
        loader.share_with(prev, &keys);
    }
    for (i, ((name, key), entry)) in keys.iter().zip(&b.manifest.files).enumerate() {
        let mut r = b.file(i)?;
        let data: Option<&mut (dyn std::io::Read + Send)> =
            loader.needs_bytes(name, key).then_some(&mut r);
        loader
            .add_keyed(name, *key, data, entry.size)
            .with_context(|| format!("loading {name}"))?;
        r.finish()?;
    }
    Ok(loader.build()?)
}

/// Compile signature files held in memory.
pub fn load_files(files: &[(String, Vec<u8>)]) -> Result<SignatureSet> {
    let mut loader = Loader::new(LoadOptions::strict());
    for (name, data) in files {
        loader
            .add_bytes(name, data)
            .with_context(|| format!("loading {name}"))?;
    }
    Ok(loader.build()?)
}

/// The set's counts per kind, for the manifest.
fn counts_of(set: &SignatureSet) -> bundle::Counts {
    let mut out = bundle::Counts::new();
    if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(set.counts()) {
        for (k, v) in m {
            if let Some(n) = v.as_u64() {
                out.insert(k, n);
            }
        }
    }
    out
}

/// The regular files of `dir` (not recursive), sorted by name: (name, bytes).
fn dir_files(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let e = e?;
        if !e.file_type()?.is_file() {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        files.push((name, std::fs::read(e.path())?));
    }
    files.sort();
    Ok(files)
}

/// `build`: the regular files of `dir` (not recursive) into an unsigned bundle.
pub fn build(dir: &Path, set_version: u64, out: &Path) -> Result<()> {
    let files = dir_files(dir)?;
    if files.is_empty() {
        bail!("{} holds no signature files", dir.display());
    }
    let set = load_files(&files)?;
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let b = bundle::build(&files, set_version, counts_of(&set), created)?;
    write_atomic(out, &b, 0o644)?;
    println!(
        "{}: set version {set_version}, {} files, {} bytes, unsigned",
        out.display(),
        files.len(),
        b.len()
    );
    Ok(())
}

/// `sign`.
pub fn sign(input: &Path, key: &Path, out: &Path) -> Result<()> {
    let key = read_secret_key(key)?;
    let data = std::fs::read(input).with_context(|| format!("read {}", input.display()))?;
    let signed = bundle::sign(&data, &key)?;
    write_atomic(out, &signed, 0o644)?;
    println!("{}: signed with key {}", out.display(), key.public().id());
    Ok(())
}

/// `verify`: 0 when `svm serve` would accept it (given a lower current version).
pub fn verify(input: &Path, trust: &[String], json: bool) -> Result<()> {
    let keys = trust
        .iter()
        .map(|s| read_public_key(s))
        .collect::<Result<Vec<_>>>()?;
    if keys.is_empty() {
        bail!("no trusted key given (--trust HEX|FILE)");
    }
    let data = std::fs::read(input).with_context(|| format!("read {}", input.display()))?;
    let v = bundle::open(&data, &keys, &Limits::default())
        .with_context(|| format!("{}: refused", input.display()))?;
    let set = load_opened(&v, None).with_context(|| format!("{}: refused", input.display()))?;
    if json {
        println!(
            "{}",
            serde_json::json!({"bundle": input, "ok": true, "set_version": v.manifest.set_version,
                "key_id": v.manifest.key_id, "counts": set.counts(), "digest": set.digest_hex()})
        );
    } else {
        println!(
            "{}: OK: set version {}, signed by key {}, {} detection signatures",
            input.display(),
            v.manifest.set_version,
            v.manifest.key_id,
            set.counts().detection_total()
        );
    }
    Ok(())
}

/// `inspect`: the manifest, unverified.
pub fn inspect(input: &Path) -> Result<()> {
    let data = std::fs::read(input).with_context(|| format!("read {}", input.display()))?;
    let (m, signed) = bundle::inspect(&data)?;
    let v = serde_json::json!({"signed": signed, "verified": false, "manifest": m});
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}
