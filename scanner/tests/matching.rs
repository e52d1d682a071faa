//! Match-case tables and property tests: the engine must agree with the naive reference
//! matcher on every syntax form, at every boundary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use proptest::prelude::*;
use scanner::{reference, Limits, Match, MatchKind, ScanResult, Scanner, BLOCK};
use signatures::{LoadOptions, Loader, SignatureSet};
use std::time::Duration;

fn set_of(files: &[(&str, &str)]) -> SignatureSet {
    let mut l = Loader::new(LoadOptions::strict());
    for (name, text) in files {
        l.add_bytes(name, text.as_bytes()).unwrap();
    }
    l.build().unwrap()
}

fn ndb(line: &str) -> SignatureSet {
    set_of(&[("t.ndb", &format!("{line}\n"))])
}

fn names(r: &ScanResult) -> Vec<String> {
    match r {
        ScanResult::Infected { matches } => matches.iter().map(|m| m.name.clone()).collect(),
        ScanResult::Clean => vec![],
        ScanResult::Unscanned { reason } => panic!("unscanned: {reason}"),
    }
}

fn offsets(r: &ScanResult) -> Vec<Option<u64>> {
    match r {
        ScanResult::Infected { matches } => matches.iter().map(|m| m.offset).collect(),
        _ => vec![],
    }
}

/// Does the signature line match `data`? Also checks the reference matcher agrees.
fn hit(line: &str, data: &[u8]) -> bool {
    let set = ndb(line);
    let mut s = Scanner::new(&set);
    let r = s.scan_bytes(data);
    let engine = !names(&r).is_empty();
    let reference = set
        .bodies()
        .sigs()
        .iter()
        .any(|sig| reference::find(sig, data).is_some());
    assert_eq!(
        engine, reference,
        "engine and reference disagree on {line} over {data:02x?}"
    );
    engine
}

fn pad(prefix: usize, body: &[u8], suffix: usize) -> Vec<u8> {
    let mut v = vec![0x11u8; prefix];
    v.extend_from_slice(body);
    v.extend(std::iter::repeat_n(0x22u8, suffix));
    v
}

#[test]
fn literal_at_offset_zero_and_at_eof() {
    assert!(hit("S:0:*:41424344", b"ABCD"));
    assert!(hit("S:0:*:41424344", &pad(0, b"ABCD", 10)));
    assert!(hit("S:0:*:41424344", &pad(10, b"ABCD", 0)));
    assert!(!hit("S:0:*:41424344", b"ABC"));
    assert!(!hit("S:0:*:41424344", b""));
}

#[test]
fn wildcards_and_nibbles() {
    assert!(hit("S:0:*:4142??4445", b"ABxDE"));
    assert!(!hit("S:0:*:4142??4445", b"ABDE"));
    assert!(hit("S:0:*:41424?4445", b"AB\x4fDE"));
    assert!(!hit("S:0:*:41424?4445", b"AB\x5fDE"));
    assert!(hit("S:0:*:4142?f4445", b"AB\x3fDE"));
    assert!(!hit("S:0:*:4142?f4445", b"AB\x3eDE"));
    // Wildcards at both ends of the pattern.
    assert!(hit("S:0:*:??41424344??", b"xABCDy"));
    assert!(!hit("S:0:*:??41424344??", b"ABCDy"));
    assert!(!hit("S:0:*:??41424344??", b"xABCD"));
}

#[test]
fn jumps_at_exact_minimum_and_maximum() {
    let sig = "S:0:*:41424344{2-4}45464748";
    assert!(!hit(sig, b"ABCD.EFGH"));
    assert!(hit(sig, b"ABCD..EFGH"));
    assert!(hit(sig, b"ABCD....EFGH"));
    assert!(!hit(sig, b"ABCD.....EFGH"));
    let fixed = "S:0:*:41424344{3}45464748";
    assert!(hit(fixed, b"ABCD...EFGH"));
    assert!(!hit(fixed, b"ABCD..EFGH"));
    assert!(!hit(fixed, b"ABCD....EFGH"));
    let upto = "S:0:*:41424344{-2}45464748";
    assert!(hit(upto, b"ABCDEFGH"));
    assert!(hit(upto, b"ABCD..EFGH"));
    assert!(!hit(upto, b"ABCD...EFGH"));
    let atleast = "S:0:*:41424344{2-}45464748";
    assert!(!hit(atleast, b"ABCD.EFGH"));
    assert!(hit(atleast, b"ABCD..EFGH"));
    assert!(hit(
        atleast,
        &[&b"ABCD"[..], &[0u8; 5000], b"EFGH"].concat()
    ));
    let star = "S:0:*:41424344*45464748";
    assert!(hit(star, b"ABCDEFGH"));
    assert!(hit(
        star,
        &[&b"ABCD"[..], &[7u8; 100_000], b"EFGH"].concat()
    ));
    assert!(!hit(star, b"EFGHABCD"));
    let bracket = "S:0:*:41424344[1-2]45";
    assert!(hit(bracket, b"ABCD.E"));
    assert!(hit(bracket, b"ABCD..E"));
    assert!(!hit(bracket, b"ABCD...E"));
}

#[test]
fn jumps_before_the_atom_are_checked_backwards() {
    // The best atom is the rare run after the jump; the first segment must be found before it.
    let sig = "S:0:*:0000{1-3}deadbeefcafe";
    assert!(hit(sig, &[0, 0, 9, 0xde, 0xad, 0xbe, 0xef, 0xca, 0xfe]));
    assert!(hit(
        sig,
        &[0, 0, 9, 9, 9, 0xde, 0xad, 0xbe, 0xef, 0xca, 0xfe]
    ));
    assert!(!hit(
        sig,
        &[0, 0, 9, 9, 9, 9, 0xde, 0xad, 0xbe, 0xef, 0xca, 0xfe]
    ));
    assert!(!hit(sig, &[0, 0, 0xde, 0xad, 0xbe, 0xef, 0xca, 0xfe]));
    assert!(hit(
        "S:0:*:0102*deadbeefcafe",
        &[1, 2, 3, 4, 5, 0xde, 0xad, 0xbe, 0xef, 0xca, 0xfe]
    ));
}

#[test]
fn alternatives_and_negations() {
    assert!(hit("S:0:*:4142(43|44)4546", b"ABDEF"));
    assert!(!hit("S:0:*:4142(43|44)4546", b"ABXEF"));
    assert!(hit("S:0:*:4142!(43|44)4546", b"ABXEF"));
    assert!(!hit("S:0:*:4142!(43|44)4546", b"ABCEF"));
    assert!(hit("S:0:*:4142(4344|5859)4546", b"ABXYEF"));
    assert!(!hit("S:0:*:4142(4344|5859)4546", b"ABXDEF"));
    assert!(hit("S:0:*:4142!(4344|5859)4546", b"ABXDEF"));
    assert!(!hit("S:0:*:4142!(4344|5859)4546", b"ABCDEF"));
    // Variable-length alternatives.
    assert!(hit("S:0:*:4142(43|5859)4546", b"ABCEF"));
    assert!(hit("S:0:*:4142(43|5859)4546", b"ABXYEF"));
    assert!(!hit("S:0:*:4142(43|5859)4546", b"ABXEF"));
}

#[test]
fn offsets_absolute_shift_and_eof() {
    assert!(hit("S:0:4:41424344", b"....ABCD"));
    assert!(!hit("S:0:3:41424344", b"....ABCD"));
    assert!(!hit("S:0:5:41424344", b"....ABCD"));
    assert!(hit("S:0:2,2:41424344", b"....ABCD"));
    assert!(!hit("S:0:2,1:41424344", b"....ABCD"));
    assert!(hit("S:0:EOF-4:41424344", b"....ABCD"));
    assert!(!hit("S:0:EOF-5:41424344", b"....ABCD"));
    assert!(hit("S:0:EOF-6,2:41424344", b"....ABCD"));
    assert!(!hit("S:0:EOF-100:41424344", b"....ABCD"));
    // Floating offsets too wide to anchor go through the atom index.
    assert!(hit("S:0:100,1000:41424344", &pad(600, b"ABCD", 5)));
    assert!(!hit("S:0:100,1000:41424344", &pad(1200, b"ABCD", 5)));
    assert!(!hit("S:0:100,1000:41424344", &pad(50, b"ABCD", 5)));
}

#[test]
fn target_types_follow_magic() {
    let mut pe = vec![0u8; 0x100];
    pe[0] = b'M';
    pe[1] = b'Z';
    pe[0x3c] = 0x80;
    pe[0x80..0x84].copy_from_slice(b"PE\0\0");
    pe.extend_from_slice(b"PAYLOAD!");
    let mut not_pe = pe.clone();
    not_pe[0x81] = b'X';
    let elf = [&b"\x7fELF"[..], &[0u8; 60], b"PAYLOAD!"].concat();
    let macho = [&[0xcf, 0xfa, 0xed, 0xfe][..], &[0u8; 60], b"PAYLOAD!"].concat();
    let plain = [&[0u8; 64][..], b"PAYLOAD!"].concat();
    for (t, yes) in [("1", &pe), ("6", &elf), ("9", &macho)] {
        let sig = format!("S:{t}:*:5041594c4f414421");
        assert!(hit(&sig, yes), "type {t}");
        assert!(!hit(&sig, &plain), "type {t} on plain data");
        assert!(!hit(&sig, &not_pe), "type {t} on broken PE");
    }
    assert!(hit("S:0:*:5041594c4f414421", &plain));
}

#[test]
fn overlapping_and_adjacent_matches_of_different_signatures() {
    let set = set_of(&[(
        "t.ndb",
        "A:0:*:41424344\nB:0:*:43444546\nC:0:*:47484950\nD:0:*:4142\n",
    )]);
    let mut s = Scanner::new(&set);
    // A and B overlap ("CD"), B and C are adjacent, D is inside A.
    let r = s.scan_bytes(b"..ABCDEFGHIP..");
    let mut n = names(&r);
    n.sort();
    assert_eq!(n, vec!["A", "B", "C", "D"]);
    // A signature is reported once even when it occurs many times.
    let r = s.scan_bytes(b"ABCDABCDABCD");
    assert_eq!(names(&r).iter().filter(|n| *n == "A").count(), 1);
    assert_eq!(offsets(&s.scan_bytes(b"xxABCD")), vec![Some(2), Some(2)]);
}

#[test]
fn matches_straddling_internal_block_boundaries() {
    // The atom search runs over BLOCK-sized blocks; plant every alignment across the boundary.
    let set = ndb("S:0:*:deadbeefcafebabe{2-5}0102");
    let mut s = Scanner::new(&set);
    let pattern = [
        0xde, 0xad, 0xbe, 0xef, 0xca, 0xfe, 0xba, 0xbe, 9, 9, 9, 1, 2,
    ];
    for boundary in [BLOCK, 2 * BLOCK] {
        for back in 0..=pattern.len() {
            let mut data = vec![0x55u8; 2 * BLOCK + 100];
            let at = boundary - back;
            data[at..at + pattern.len()].copy_from_slice(&pattern);
            assert_eq!(
                offsets(&s.scan_bytes(&data)),
                vec![Some(at as u64)],
                "boundary {boundary} back {back}"
            );
        }
    }
}

#[test]
fn hash_signatures_and_allow_list() {
    let data = b"hash me please";
    let md5 = "bb4b5e4c8a4a0df6b1fd4cd2f8e2ef1e"; // not this data
    let set = set_of(&[
        (
            "h.hdb",
            &format!("{md5}:14:Wrong.Md5\n{}:14:Right.Md5\n", md5_hex(data)),
        ),
        ("h.hsb", &format!("{}:*:Any.Sha256\n", sha256_hex(data))),
    ]);
    let mut s = Scanner::new(&set);
    let r = s.scan_bytes(data);
    let ScanResult::Infected { matches } = r else {
        panic!("{r:?}")
    };
    assert_eq!(
        matches,
        vec![
            Match {
                name: "Right.Md5".into(),
                kind: MatchKind::Md5,
                offset: None,
                inner: None,
            },
            Match {
                name: "Any.Sha256".into(),
                kind: MatchKind::Sha256,
                offset: None,
                inner: None,
            },
        ]
    );
    assert_eq!(s.scan_bytes(b"hash me pleasE"), ScanResult::Clean);

    // The same data listed in .fp is clean whatever matched.
    let set = set_of(&[
        ("b.ndb", "Body:0:*:68617368\n"),
        ("a.fp", &format!("{}:14:Known.Good\n", md5_hex(data))),
    ]);
    assert_eq!(Scanner::new(&set).scan_bytes(data), ScanResult::Clean);
    assert_eq!(
        names(&Scanner::new(&set).scan_bytes(b"hash it")),
        vec!["Body"]
    );
}

#[test]
fn yara_rules_match_with_offsets() {
    let set = set_of(&[(
        "r.yar",
        "rule Demo_Rule { strings: $a = \"needle\" condition: $a }\n",
    )]);
    let mut s = Scanner::new(&set);
    let r = s.scan_bytes(b"hay hay needle hay");
    let ScanResult::Infected { matches } = r else {
        panic!("{r:?}")
    };
    assert_eq!(
        matches,
        vec![Match {
            name: "Demo_Rule".into(),
            kind: MatchKind::Yara,
            offset: Some(8),
            inner: None,
        }]
    );
    assert_eq!(s.scan_bytes(b"hay"), ScanResult::Clean);
}

#[test]
fn limits_give_unscanned_never_clean() {
    let set = ndb("S:0:*:41424344");
    let mut s = Scanner::new(&set);
    s.set_limits(Limits {
        max_file_size: 10,
        max_scan_time: Duration::from_secs(5),
        ..Limits::default()
    });
    assert!(matches!(
        s.scan_bytes(&[0u8; 11]),
        ScanResult::Unscanned { .. }
    ));
    s.set_limits(Limits {
        max_file_size: 1 << 30,
        max_scan_time: Duration::ZERO,
        ..Limits::default()
    });
    let big = vec![0u8; 3 * BLOCK];
    assert!(
        matches!(s.scan_bytes(&big), ScanResult::Unscanned { .. }),
        "time limit"
    );
}

#[test]
fn files_small_large_and_special() {
    let set = ndb("S:0:*:deadbeefcafe");
    let mut s = Scanner::new(&set);
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::write(&small, [1, 2, 0xde, 0xad, 0xbe, 0xef, 0xca, 0xfe]).unwrap();
    assert_eq!(names(&s.scan_file(&small).result), vec!["S"]);
    // Large enough to be mapped, with the pattern at EOF.
    let large = dir.path().join("large");
    let mut data = vec![0u8; 3 << 20];
    let n = data.len();
    data[n - 6..].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0xca, 0xfe]);
    std::fs::write(&large, &data).unwrap();
    let scan = s.scan_file(&large);
    assert_eq!(scan.bytes, data.len() as u64);
    assert_eq!(offsets(&scan.result), vec![Some((n - 6) as u64)]);
    // Missing files and directories are unscanned with a reason.
    assert!(matches!(
        s.scan_file(&dir.path().join("missing")).result,
        ScanResult::Unscanned { .. }
    ));
    assert!(matches!(
        s.scan_file(dir.path()).result,
        ScanResult::Unscanned { .. }
    ));
}

fn md5_hex(d: &[u8]) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(d))
}

fn sha256_hex(d: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(d))
}

// ---------------------------------------------------------------- property tests

/// A random pattern element, in ClamAV hex syntax.
fn elem() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (0u8..4).prop_map(|b| format!("{:02x}", 0x61 + b)),
        1 => Just("??".to_owned()),
        1 => (0u8..16).prop_map(|n| format!("6{n:x}").replace("6", "6")).prop_map(|s| format!("{}?", &s[..1])),
        1 => (0u8..4).prop_map(|n| format!("?{:x}", n + 1)),
        1 => Just("(61|63)".to_owned()),
        1 => Just("!(61|62)".to_owned()),
        1 => Just("(6162|6364)".to_owned()),
        1 => Just("(61|6263)".to_owned()),
    ]
}

fn jump() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u32..4).prop_map(|n| format!("{{{n}}}")),
        (0u32..3, 0u32..4).prop_map(|(a, b)| format!("{{{a}-{}}}", a + b)),
        (0u32..4).prop_map(|n| format!("{{-{n}}}")),
        (0u32..3).prop_map(|n| format!("{{{n}-}}")),
        Just("*".to_owned()),
    ]
}

/// A segment that always holds a two-byte literal so the signature can float.
fn segment() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(elem(), 0..3),
        (0u8..4, 0u8..4),
        prop::collection::vec(elem(), 0..3),
    )
        .prop_map(|(a, (x, y), b)| {
            format!(
                "{}{:02x}{:02x}{}",
                a.concat(),
                0x61 + x,
                0x61 + y,
                b.concat()
            )
        })
}

fn signature() -> impl Strategy<Value = String> {
    let offset = prop_oneof![
        4 => Just("*".to_owned()),
        1 => (0u32..6).prop_map(|n| n.to_string()),
        1 => (0u32..4, 0u32..4).prop_map(|(n, s)| format!("{n},{s}")),
        1 => (0u32..12).prop_map(|n| format!("EOF-{n}")),
    ];
    (
        offset,
        segment(),
        prop::collection::vec((jump(), segment()), 0..3),
    )
        .prop_map(|(o, first, rest)| {
            let body: String = rest.into_iter().map(|(j, s)| j + &s).collect();
            format!("P:0:{o}:{first}{body}")
        })
}

#[test]
fn an_open_ended_gap_that_never_completes_is_searched_once_not_per_hit() {
    // Each of the 1M hits of `aaaaaaaa` would search the rest of 16 MiB for `cd`: minutes.
    // The first miss stands for every later hit of that segment.
    let set = ndb("Escape.Wildcard:0:*:6161616161616161*6262626262626262*6364");
    let data = b"aaaaaaaabbbbbbbb".repeat(1 << 20);
    let mut s = Scanner::new(&set);
    s.set_limits(Limits {
        max_scan_time: Duration::from_secs(30),
        ..Limits::default()
    });
    assert!(matches!(s.scan_bytes(&data), ScanResult::Clean));
    // And a match after such a miss is still found (the miss is per segment position).
    let mut hit_data = data.clone();
    hit_data.extend_from_slice(b"cd");
    assert_eq!(names(&s.scan_bytes(&hit_data)), ["Escape.Wildcard"]);
    // The mirror image searches backwards from every hit; with only open gaps it is decided
    // in one forward pass.
    let set = ndb("Escape.Mirror:0:*:6364*6161616161616161*6262626262626262");
    let mut s = Scanner::new(&set);
    s.set_limits(Limits {
        max_scan_time: Duration::from_secs(30),
        ..Limits::default()
    });
    assert!(matches!(s.scan_bytes(&data), ScanResult::Clean));
    let mut hit_data = b"cd".to_vec();
    hit_data.extend_from_slice(&data);
    let r = s.scan_bytes(&hit_data);
    assert_eq!(names(&r), ["Escape.Mirror"]);
    assert_eq!(offsets(&r), [Some(0)]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    #[test]
    fn engine_agrees_with_reference(sig in signature(), data in prop::collection::vec(0x61u8..0x66, 0..40)) {
        let set = ndb(&sig);
        let mut s = Scanner::new(&set);
        let r = s.scan_bytes(&data);
        let expected = set.bodies().sigs().iter().any(|b| reference::find(b, &data).is_some());
        let got = !names(&r).is_empty();
        prop_assert_eq!(got, expected, "sig {} data {:?}", sig, String::from_utf8_lossy(&data));
        if let Some(Some(off)) = offsets(&r).first() {
            // The reported start is a real match start for one of the expansions.
            let ok = set.bodies().sigs().iter().any(|b| reference::matches_at(b, &data, *off as usize));
            prop_assert!(ok, "offset {} is not a match start", off);
        }
    }
}

#[test]
fn memory_scanners_use_only_yara_and_untyped_floating_body_signatures() {
    // An ELF header followed by one marker, so every kind of signature below matches the data
    // when it is a file.
    let mut data = b"\x7fELF\x02\x01\x01".to_vec();
    data.resize(64, 0);
    data.extend_from_slice(b"..memory marker..");
    let set = set_of(&[
        (
            "m.ndb",
            "Floating.Any:0:*:6d656d6f7279206d61726b6572\n\
             Typed.Elf:6:*:6d656d6f7279206d61726b6572\n\
             Pinned.Start:0:0:7f454c46\n\
             Pinned.Range:0:60,20:6d656d6f7279206d61726b6572\n",
        ),
        (
            "m.hdb",
            &format!("{}:{}:File.Md5\n", md5_hex(&data), data.len()),
        ),
        (
            "m.yar",
            "rule Mem_Rule { strings: $a = \"marker\" condition: $a }\n",
        ),
    ]);
    let mut file = names(&Scanner::new(&set).scan_bytes(&data));
    file.sort();
    assert_eq!(
        file,
        vec![
            "File.Md5",
            "Floating.Any",
            "Mem_Rule",
            "Pinned.Range",
            "Pinned.Start",
            "Typed.Elf"
        ]
    );
    let mut mem = Scanner::for_memory(&set);
    let mut got = names(&mem.scan_bytes(&data));
    got.sort();
    assert_eq!(got, vec!["Floating.Any", "Mem_Rule"]);
    // No size limit for RAM ranges, and an allow-listed file hash does not hide memory hits.
    assert_eq!(mem.limits().max_file_size, u64::MAX);
}

#[test]
fn hash_lookup_by_digests_matches_what_a_scan_finds() {
    use md5::Digest;
    let data = b"content known only by its digests";
    let set = set_of(&[(
        "h.hsb",
        &format!("{}:{}:By.Sha256\n", sha256_hex(data), data.len()),
    )]);
    let md5: [u8; 16] = md5::Md5::digest(data).into();
    let sha1: [u8; 20] = sha1::Sha1::digest(data).into();
    let sha256: [u8; 32] = sha2::Sha256::digest(data).into();
    let hits = scanner::hash_lookup(&set, data.len() as u64, &md5, &sha1, &sha256);
    assert_eq!(
        names(&Scanner::new(&set).scan_bytes(data)),
        vec!["By.Sha256"]
    );
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].name, "By.Sha256");
    // Another size: no match. Allow-listed: no match.
    assert!(scanner::hash_lookup(&set, 1, &md5, &sha1, &sha256).is_empty());
    let allowed = set_of(&[
        ("h.hsb", &format!("{}:*:By.Sha256\n", sha256_hex(data))),
        (
            "a.fp",
            &format!("{}:{}:Known.Good\n", md5_hex(data), data.len()),
        ),
    ]);
    assert!(scanner::hash_lookup(&allowed, data.len() as u64, &md5, &sha1, &sha256).is_empty());
}
