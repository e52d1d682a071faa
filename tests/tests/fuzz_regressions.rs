//! Every input in `fuzz/regressions/<target>/` (crash inputs the fuzz targets found, and
//! hand-made hostile ones: lying lengths, truncations, deep nesting, huge counts) replayed
//! through the very checks the fuzz target runs (`fuzz/fuzz_targets/harness*.rs`), in the
//! normal test run: no panic, no broken invariant, and each input within a time bound. The
//! `yara_rules` target, whose yara-x build is too long for CI's fuzz smoke run, is covered
//! only here, through the YARA-enabled scanner of the workspace.

#[path = "../../fuzz/fuzz_targets/harness.rs"]
mod harness;
#[path = "../../fuzz/fuzz_targets/harness_yara.rs"]
mod harness_yara;

use scanner::containers::Kind;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The longest one input may take (a release build takes milliseconds for most; the YARA
/// ones stop at the scanner's one-second time limit).
const BOUND: Duration = Duration::from_secs(20);

/// What a fuzz target runs on one input.
type Check = fn(&[u8]);

/// Every fuzz target and the check it runs.
const TARGETS: &[(&str, Check)] = &[
    ("archive_bzip2", |d| harness::archive(Kind::Bzip2, d)),
    ("archive_gzip", |d| harness::archive(Kind::Gzip, d)),
    ("archive_tar", |d| harness::archive(Kind::Tar, d)),
    ("archive_xz", |d| harness::archive(Kind::Xz, d)),
    ("archive_zip", |d| harness::archive(Kind::Zip, d)),
    ("bundle", harness::bundle),
    ("clamav_parsers", harness::clamav_parsers),
    ("clamd_protocol", harness::clamd_protocol),
    ("elf_core", harness::elf_core),
    ("frame_decoder", harness::frame_decoder),
    ("hex_pattern", harness::hex_pattern),
    ("mtree", harness::mtree),
    ("qmp_reply", harness::qmp_reply),
    ("yara_rules", harness_yara::yara_rules),
];

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Replay every input of `target`'s regression directory; how many there were.
fn replay(target: &str) -> usize {
    let check = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, check)| *check);
    let Some(check) = check else {
        panic!("no check for {target}");
    };
    let dir = fuzz_dir().join("regressions").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    for f in &files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(|| check(&data));
        let took = started.elapsed();
        assert!(outcome.is_ok(), "{target}: {} panicked", f.display());
        assert!(took < BOUND, "{target}: {} took {took:?}", f.display());
    }
    files.len()
}

/// The names of `fuzz/regressions/`'s directories, or of `fuzz/Cargo.toml`'s targets.
fn names(from: &str) -> Vec<String> {
    let mut out: Vec<String> = if from == "regressions" {
        std::fs::read_dir(fuzz_dir().join("regressions"))
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    } else {
        let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap_or_default();
        manifest
            .lines()
            .filter_map(|l| l.strip_prefix("name = \""))
            .filter_map(|l| l.strip_suffix('"'))
            .filter(|n| *n != "svm-fuzz")
            .map(str::to_owned)
            .collect()
    };
    out.sort();
    out
}

#[test]
fn every_fuzz_target_has_regression_inputs_and_a_check_here() {
    let mut checked: Vec<String> = TARGETS.iter().map(|(n, _)| (*n).to_owned()).collect();
    checked.sort();
    assert_eq!(names("Cargo.toml"), checked, "fuzz/Cargo.toml's targets");
    assert_eq!(
        names("regressions"),
        checked,
        "fuzz/regressions/'s directories"
    );
}

#[test]
fn archives() {
    for t in [
        "archive_bzip2",
        "archive_gzip",
        "archive_tar",
        "archive_xz",
        "archive_zip",
    ] {
        assert!(replay(t) > 0, "{t}");
    }
}

#[test]
fn signature_files() {
    for t in ["bundle", "clamav_parsers", "hex_pattern"] {
        assert!(replay(t) > 0, "{t}");
    }
}

#[test]
fn protocols() {
    for t in ["clamd_protocol", "frame_decoder", "qmp_reply"] {
        assert!(replay(t) > 0, "{t}");
    }
}

#[test]
fn memory_layouts() {
    for t in ["elf_core", "mtree"] {
        assert!(replay(t) > 0, "{t}");
    }
}

#[test]
fn yara_rules() {
    assert!(replay("yara_rules") > 0);
}
