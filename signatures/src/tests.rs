//! Parser and loader tests: every syntax form, and every kind of bad input.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
use std::io::Write;

fn load(name: &str, text: &[u8]) -> Result<SignatureSet, LoadError> {
    let mut l = Loader::new(LoadOptions::strict());
    l.add_bytes(name, text)?;
    l.build()
}

fn errors(name: &str, text: &[u8]) -> Vec<ParseError> {
    match load(name, text) {
        Err(LoadError::Invalid { errors }) => errors,
        other => panic!("expected parse errors, got {other:?}"),
    }
}

fn one_error(name: &str, text: &[u8]) -> ParseError {
    let e = errors(name, text);
    assert_eq!(e.len(), 1, "{e:?}");
    e.into_iter().next().unwrap()
}

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn shared_types_are_send_sync() {
    assert_send_sync::<SignatureSet>();
    assert_send_sync::<BodyDb>();
    assert_send_sync::<LoadError>();
}

#[test]
fn default_set_loads() {
    let set = default_set().unwrap();
    assert_eq!(set.counts().body, 2);
    assert_eq!(set.counts().detection_total(), 2);
}

// ---------------------------------------------------------------- hash signatures

#[test]
fn hdb_hsb_sizes_and_star() {
    let set = {
        let mut l = Loader::new(LoadOptions::strict());
        l.add_bytes("a.hdb", b"44d88612fea8a8f36de82e1278abb02f:68:Md5.Sig\n")
            .unwrap();
        l.add_bytes(
            "b.hsb",
            b"3395856ce81f2b7382dee72602f798b642f14140:68:Sha1.Sig\n\
              275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f:*:Sha256.Any:73\n",
        )
        .unwrap();
        l.build().unwrap()
    };
    let c = set.counts();
    assert_eq!((c.md5, c.sha1, c.sha256), (1, 1, 1));
    assert!(set.hashes().wanted(68)[0]);
    assert!(!set.hashes().wanted(69)[0]);
    // `*` sizes make every size worth hashing.
    assert!(set.hashes().wanted(12345)[2]);
}

#[test]
fn hash_errors_name_line_column_and_code() {
    let e = one_error(
        "x.hdb",
        b"\n44d88612fea8a8f36de82e1278abb02f:68:Ok\nzz:1:Bad\n",
    );
    assert_eq!((e.line, e.column, e.code), (3, 1, ErrorCode::BadHash));
    assert!(e.to_string().starts_with("x.hdb:3:1: error[SIG002]"), "{e}");

    let e = one_error("x.hdb", b"44d88612fea8a8f36de82e1278abb02g:68:Bad\n");
    assert_eq!((e.column, e.code), (32, ErrorCode::BadHash));

    let e = one_error("x.hdb", b"44d88612fea8a8f36de82e1278abb02f:6x8:Bad\n");
    assert_eq!((e.column, e.code), (34, ErrorCode::BadSize));

    let e = one_error("x.hdb", b"44d88612fea8a8f36de82e1278abb02f:68:\n");
    assert_eq!(e.code, ErrorCode::BadName);

    // Truncated line.
    let e = one_error("x.hdb", b"44d88612fea8a8f36de82e1278abb02f:68\n");
    assert_eq!(e.code, ErrorCode::FieldCount);

    // SHA-256 in an MD5-only file.
    let e = one_error(
        "x.hdb",
        b"275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f:1:X\n",
    );
    assert_eq!(e.code, ErrorCode::BadHash);
}

#[test]
fn huge_size_fields() {
    // 2 GiB is a valid file size; above 4 GiB is refused with a clear error.
    let set = load(
        "a.hsb",
        b"275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f:2147483648:Big\n",
    )
    .unwrap();
    assert!(set.hashes().wanted(2 << 30)[2]);
    let e = one_error(
        "a.hsb",
        b"275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f:99999999999:Huge\n",
    );
    assert_eq!(e.code, ErrorCode::BadSize);
    let e = one_error("a.hsb", b"275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f:999999999999999999999999999:Huge\n");
    assert_eq!(e.code, ErrorCode::BadSize);
}

#[test]
fn all_errors_reported_at_once_and_skip_invalid() {
    let text = b"bad1\n44d88612fea8a8f36de82e1278abb02f:68:Good\nbad2:x:y\n";
    let errs = errors("m.hdb", text);
    assert_eq!(errs.iter().map(|e| e.line).collect::<Vec<_>>(), vec![1, 3]);
    let mut l = Loader::new(LoadOptions::strict().skip_invalid(true));
    l.add_bytes("m.hdb", text).unwrap();
    let set = l.build().unwrap();
    assert_eq!(set.counts().md5, 1);
    assert_eq!(set.invalid_skipped(), 2);
}

#[test]
fn flevel_ranges_skip_not_fail() {
    let set = load(
        "f.hdb",
        b"44d88612fea8a8f36de82e1278abb02f:68:Now:0:999\n44d88612fea8a8f36de82e1278abb02f:68:Future:999\n44d88612fea8a8f36de82e1278abb02f:68:Past:1:20\n",
    )
    .unwrap();
    assert_eq!(set.counts().md5, 1);
    assert_eq!(set.skipped().values().sum::<u64>(), 2);
    let e = one_error("f.hdb", b"44d88612fea8a8f36de82e1278abb02f:68:X:abc\n");
    assert_eq!(e.code, ErrorCode::BadFlevel);
}

#[test]
fn non_utf8_and_empty_input() {
    let e = one_error("n.hdb", b"44d88612fea8a8f36de82e1278abb02f:68:Na\xffme\n");
    assert_eq!(e.code, ErrorCode::NotUtf8);
    let e = one_error("n.ndb", b"Name:0:*:41\xff42\n");
    assert_eq!(e.code, ErrorCode::NotUtf8);
    // An empty file loads nothing: a clear error, not a panic.
    assert!(matches!(load("empty.hdb", b""), Err(LoadError::Empty(_))));
    assert!(matches!(
        load("empty.ndb", b"\n\n# comment only\n"),
        Err(LoadError::Empty(_))
    ));
}

#[test]
fn overlong_line_is_an_error() {
    let mut text = vec![b'a'; lines::MAX_LINE + 10];
    text.push(b'\n');
    text.extend_from_slice(b"44d88612fea8a8f36de82e1278abb02f:68:After\n");
    let mut l = Loader::new(LoadOptions::strict().skip_invalid(true));
    l.add_bytes("long.hdb", &text).unwrap();
    assert_eq!(l.errors()[0].code, ErrorCode::LineTooLong);
    let set = l.build().unwrap();
    assert_eq!(set.counts().md5, 1);
}

// ---------------------------------------------------------------- body signatures

fn pattern(hex: &str) -> Pattern {
    let mut p = parse_pattern(hex).unwrap();
    assert_eq!(p.len(), 1);
    p.pop().unwrap()
}

#[test]
fn hex_syntax_forms() {
    let p = pattern("4142??43a??b");
    assert_eq!(p.segments().len(), 1);
    assert_eq!(p.segments()[0].len(), 6);
    let toks = p.segments()[0].toks();
    assert_eq!(toks[0], Tok::Lit(Box::from(&b"AB"[..])));
    assert_eq!(toks[1], Tok::Masked { value: 0, mask: 0 });
    assert_eq!(
        toks[3],
        Tok::Masked {
            value: 0xa0,
            mask: 0xf0
        }
    );
    assert_eq!(
        toks[4],
        Tok::Masked {
            value: 0x0b,
            mask: 0x0f
        }
    );

    let p = pattern("4142*4344{3}4546{-4}4748{5-}494a{2-6}4b4c[1-3]4d4e");
    let gaps: Vec<(u32, Option<u32>)> = p.gaps().iter().map(|g| (g.min, g.max)).collect();
    assert_eq!(
        gaps,
        vec![
            (0, None),
            (3, Some(3)),
            (0, Some(4)),
            (5, None),
            (2, Some(6)),
            (1, Some(3))
        ]
    );

    let p = pattern("4142(43|44|4?)");
    let Tok::Set(set) = &p.segments()[0].toks()[1] else {
        panic!()
    };
    assert!(set.contains(0x43) && set.contains(0x44) && set.contains(0x4f) && !set.contains(0x50));

    let p = pattern("4142!(43|44)");
    let Tok::Set(set) = &p.segments()[0].toks()[1] else {
        panic!()
    };
    assert!(!set.contains(0x43) && !set.contains(0x44) && set.contains(0x45));

    let p = pattern("4142(4344|4546)");
    assert!(matches!(
        &p.segments()[0].toks()[1],
        Tok::Alt { negated: false, .. }
    ));
    assert_eq!(p.segments()[0].len(), 4);

    // Variable-length alternatives expand.
    let ps = parse_pattern("4142(43|4445)4647").unwrap();
    assert_eq!(ps.len(), 2);
    assert_eq!(ps[0].segments()[0].len(), 5);
    assert_eq!(ps[1].segments()[0].len(), 6);

    // Adjacent jumps merge.
    let p = pattern("4142{2}{3-4}4344");
    assert_eq!((p.gaps()[0].min, p.gaps()[0].max), (5, Some(6)));
}

#[test]
fn offsets_and_targets() {
    let set = load(
        "o.ndb",
        b"A:0:*:41424344\nB:0:10:41424344\nC:0:10,5:41424344\nD:0:EOF-4:41424344\nE:1:*:41424344\nF:6:*:41424344\nG:9:*:41424344\n",
    )
    .unwrap();
    let sigs = set.bodies().sigs();
    assert_eq!(sigs[0].offset, Offset::Any);
    assert_eq!(
        sigs[1].offset,
        Offset::Absolute {
            start: 10,
            shift: 0
        }
    );
    assert_eq!(
        sigs[2].offset,
        Offset::Absolute {
            start: 10,
            shift: 5
        }
    );
    assert_eq!(sigs[3].offset, Offset::FromEof { back: 4, shift: 0 });
    assert_eq!(
        sigs[4..].iter().map(|s| s.target).collect::<Vec<_>>(),
        vec![Target::Pe, Target::Elf, Target::MachO]
    );
    assert_eq!(
        Offset::FromEof { back: 4, shift: 0 }.start_range(10),
        Some((6, 6))
    );
    assert_eq!(Offset::FromEof { back: 11, shift: 0 }.start_range(10), None);
}

#[test]
fn unsupported_valid_forms_are_counted_not_fatal() {
    let set = load(
        "u.ndb",
        b"Ok:0:*:41424344\nHtml:3:*:41424344\nEp:1:EP+10:41424344\nSect:1:S2+4:41424344\nWord:0:*:4142(B)4344\n",
    )
    .unwrap();
    assert_eq!(set.counts().body, 1);
    assert_eq!(set.skipped().values().sum::<u64>(), 4);
}

#[test]
fn body_errors() {
    let cases: &[(&[u8], ErrorCode, u32)] = &[
        (b"N:0:*:41424", ErrorCode::BadHex, 11),
        (b"N:0:*:4142zz", ErrorCode::BadHex, 11),
        (b"N:0:*:4142{3-1}4344", ErrorCode::BadJump, 12),
        (b"N:0:*:4142{99999999999}4344", ErrorCode::BadJump, 12),
        (b"N:0:*:4142{20000000}4344", ErrorCode::BadJump, 12),
        (b"N:0:*:4142{3-4344", ErrorCode::Unbalanced, 11),
        (b"N:0:*:41423-4}4344", ErrorCode::BadHex, 12),
        (b"N:0:*:4142(43|44", ErrorCode::Unbalanced, 11),
        (b"N:0:*:414243|44)", ErrorCode::Unbalanced, 13),
        (b"N:0:*:4142(|44)", ErrorCode::BadPattern, 12),
        (b"N:0:*:*4142", ErrorCode::BadPattern, 7),
        (b"N:0:*:4142*", ErrorCode::BadPattern, 7),
        (b"N:0:*:", ErrorCode::BadPattern, 7),
        (b"N:0:*:41??42", ErrorCode::BadPattern, 7),
        (b"N:15:*:41424344", ErrorCode::BadTargetType, 3),
        (b"N:x:*:41424344", ErrorCode::BadTargetType, 3),
        (b"N:0:abc:41424344", ErrorCode::BadOffset, 5),
        (b"N:0:EOF-x:41424344", ErrorCode::BadOffset, 9),
        (b"N:0:*", ErrorCode::FieldCount, 1),
        (b":0:*:41424344", ErrorCode::BadName, 1),
        (b"N:0:*:41424344:x", ErrorCode::BadFlevel, 16),
    ];
    for (line, code, col) in cases {
        let e = one_error("b.ndb", line);
        assert_eq!(
            (e.code, e.column),
            (*code, *col),
            "{}: {e}",
            String::from_utf8_lossy(line)
        );
    }
}

#[test]
fn anchored_signatures_need_no_atom() {
    // Pinned to offset 0, a pattern of wildcards and single bytes is fine.
    let set = load("a.ndb", b"Anch:0:0:4d??5a\n").unwrap();
    assert_eq!(set.bodies().anchored().len(), 1);
    assert!(set.bodies().atoms().is_empty());
}

#[test]
fn best_atom_prefers_rare_bytes() {
    let p = pattern(
        "00000000000000000000{2}de ad be ef"
            .replace(' ', "")
            .as_str(),
    );
    let (seg, _, atom) = p.best_atom().unwrap();
    assert_eq!(seg, 1);
    assert_eq!(atom, &[0xde, 0xad, 0xbe, 0xef]);
}

// ---------------------------------------------------------------- ign2, fp, unsupported kinds

#[test]
fn ign2_removes_signatures() {
    let mut l = Loader::new(LoadOptions::strict());
    l.add_bytes("a.ndb", b"Keep:0:*:41424344\nDrop:0:*:45464748\n")
        .unwrap();
    l.add_bytes("a.hdb", b"44d88612fea8a8f36de82e1278abb02f:68:Drop\n")
        .unwrap();
    l.add_bytes("local.ign2", b"Drop\nOther:0123\n").unwrap();
    let set = l.build().unwrap();
    assert_eq!(set.counts().body, 1);
    assert_eq!(set.counts().md5, 0);
    assert_eq!(set.counts().ignored_sigs, 2);
    assert!(set.is_ignored("Other"));
}

#[test]
fn unsupported_kinds_counted_per_kind() {
    let mut l = Loader::new(LoadOptions::strict());
    l.add_bytes("a.ndb", b"Keep:0:*:41424344\n").unwrap();
    l.add_bytes(
        "x.ldb",
        b"Sig;Engine:51-255,Target:1;0;4142\nSig2;Target:0;0;4344\n",
    )
    .unwrap();
    l.add_bytes("x.mdb", b"1234:44d88612fea8a8f36de82e1278abb02f:Sec\n")
        .unwrap();
    let set = l.build().unwrap();
    let sk = set.skipped();
    assert_eq!(sk.get(".ldb/.ldu logical signatures"), Some(&2));
    assert_eq!(sk.get(".mdb/.msb PE section hashes"), Some(&1));
}

// ---------------------------------------------------------------- containers

fn make_tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, *data).unwrap();
    }
    let tar = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

fn make_cvd(body: &[u8], md5_ok: bool) -> Vec<u8> {
    use md5::Digest;
    let mut md5 = hex::encode(md5::Md5::digest(body));
    if !md5_ok {
        md5 = "0".repeat(32);
    }
    let mut header =
        format!("ClamAV-VDB:28 Nov 2026 00-00 +0000:1:3:212:{md5}:sig:svm-tests:1795000000")
            .into_bytes();
    header.resize(512, b' ');
    header.extend_from_slice(body);
    header
}

#[test]
fn cvd_container_loads_supported_kinds() {
    let body = make_tar_gz(&[
        ("test.info", b"test.hdb:1:abc\n"),
        ("test.hdb", b"44d88612fea8a8f36de82e1278abb02f:68:Cvd.Md5\n"),
        ("test.ndb", b"Cvd.Body:0:*:41424344\n"),
        ("test.ldb", b"Sig;Target:0;0;4142\n"),
        ("COPYING", b"licence text\n"),
    ]);
    let set = load("test.cvd", &make_cvd(&body, true)).unwrap();
    assert_eq!(set.counts().md5, 1);
    assert_eq!(set.counts().body, 1);
    assert_eq!(set.skipped().values().sum::<u64>(), 1);
    assert!(set.sources().iter().any(|s| s == "test.cvd:test.ndb"));
}

#[test]
fn cvd_errors_are_clear() {
    let body = make_tar_gz(&[("test.ndb", b"Cvd.Body:0:*:41424344\n")]);
    // Bad MD5.
    let e = one_error("bad.cvd", &make_cvd(&body, false));
    assert_eq!(e.code, ErrorCode::BadContainer);
    assert!(e.reason.contains("MD5"), "{e}");
    // Truncated header.
    assert_eq!(
        one_error("t.cvd", b"ClamAV-VDB:short").code,
        ErrorCode::BadContainer
    );
    // Wrong magic.
    assert_eq!(
        one_error("w.cvd", &vec![b'x'; 600]).code,
        ErrorCode::BadContainer
    );
    // Truncated body.
    let cvd = make_cvd(&body, true);
    assert_eq!(
        one_error("c.cvd", &cvd[..cvd.len() - 20]).code,
        ErrorCode::BadContainer
    );
    // Errors inside members name the member.
    let body = make_tar_gz(&[("m.ndb", b"Bad:0:*:zz\n")]);
    let e = one_error("m.cvd", &make_cvd(&body, true));
    assert_eq!(e.source, "m.cvd:m.ndb");
    assert_eq!(e.line, 1);
}

#[test]
fn cvd_tar_entry_claiming_2gib_is_an_error_not_an_allocation() {
    // A plain-tar body (as in .cld) whose only entry claims 2 GiB but holds 10 bytes.
    let mut h = tar::Header::new_gnu();
    h.set_path("huge.ndb").unwrap();
    h.set_size(2 << 30);
    h.set_mode(0o644);
    h.set_cksum();
    let mut body = h.as_bytes().to_vec();
    body.extend_from_slice(b"A:0:*:4142");
    let e = one_error("h.cld", &make_cvd(&body, true));
    assert_eq!(e.code, ErrorCode::BadContainer);
}

// ---------------------------------------------------------------- YARA

#[cfg(feature = "yara")]
#[test]
fn yara_rules_load_and_errors_have_positions() {
    let set = load(
        "r.yar",
        b"rule Demo { strings: $a = \"hello\" condition: $a }\n",
    )
    .unwrap();
    assert_eq!(set.counts().yara, 1);
    let e = one_error(
        "r.yar",
        b"rule Ok { condition: true }\n\nrule Bad { condition: $nope }\n",
    );
    assert_eq!(e.code, ErrorCode::Yara);
    assert_eq!(e.line, 3);
    assert!(e.column > 1);
}

#[test]
fn a_yara_include_is_refused_not_followed() {
    // A rule file from a bundle must not make the daemon read other files.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.yar");
    std::fs::write(&other, "rule Other { condition: true }\n").unwrap();
    let e = one_error(
        "r.yar",
        format!(
            "include \"{}\"\nrule A {{ condition: true }}\n",
            other.display()
        )
        .as_bytes(),
    );
    assert_eq!(e.code, ErrorCode::Yara);
    assert!(e.reason.contains("include"), "{}", e.reason);
}

// ---------------------------------------------------------------- files and directories

#[test]
fn directories_load_known_extensions_only() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.ndb"), "D.Body:0:*:41424344\n").unwrap();
    std::fs::write(
        dir.path().join("b.hsb"),
        "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f:68:D.Sha\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a database").unwrap();
    let mut l = Loader::new(LoadOptions::strict());
    l.add_path(dir.path()).unwrap();
    let set = l.build().unwrap();
    assert_eq!((set.counts().body, set.counts().sha256), (1, 1));
    // Digest depends on content.
    std::fs::write(dir.path().join("a.ndb"), "D.Body:0:*:41424345\n").unwrap();
    let mut l = Loader::new(LoadOptions::strict());
    l.add_path(dir.path()).unwrap();
    assert_ne!(l.build().unwrap().digest(), set.digest());
    // Missing path: an I/O error naming it.
    let mut l = Loader::new(LoadOptions::strict());
    let err = l
        .add_path(&dir.path().join("missing"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing"), "{err}");
}

#[test]
fn large_hash_file_parses_in_parallel_blocks_with_right_line_numbers() {
    // Enough lines to span several parallel pieces and a block boundary.
    let mut text = String::new();
    let n = 200_000;
    for i in 0..n {
        text.push_str(&format!("{:064x}:{}:Gen.{}\n", i, 100 + i % 7, i));
    }
    text.push_str("bad line\n");
    let errs = errors("g.hsb", text.as_bytes());
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].line, n + 1);
    let mut l = Loader::new(LoadOptions::strict().skip_invalid(true));
    l.add_bytes("g.hsb", text.as_bytes()).unwrap();
    let set = l.build().unwrap();
    assert_eq!(set.counts().sha256, n);
    let mut d = [0u8; 32];
    d[31] = 0x2a; // 42
    let names = set.hashes().lookup(HashKind::Sha256, 100, &d); // 100 + 42 % 7
    assert_eq!(names, vec!["Gen.42"]);
}

#[test]
fn a_set_of_only_unsupported_kinds_says_so() {
    let err = load("only.ldb", b"Sig;Target:0;0;4142\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains(".ldb/.ldu logical signatures: 1"), "{err}");
}

#[test]
fn comments_and_blank_lines_are_not_signatures() {
    // Real ClamAV containers ship lines like this one in otherwise empty files.
    let set = load(
        "c.ndb",
        b"# There must always be one line in the file\n\r\n  \nA:0:*:41424344\r\n",
    )
    .unwrap();
    assert_eq!(set.counts().body, 1);
}

#[test]
fn large_container_member_spans_blocks_with_right_line_numbers() {
    // A member larger than one read block is parsed block by block on the calling thread.
    let mut hsb = String::new();
    let n = 150_000u64;
    for i in 0..n {
        hsb.push_str(&format!("{:064x}:{}:Big.{}\n", i, 1000 + i % 3, i));
    }
    hsb.push_str("not a hash line\n");
    assert!(hsb.len() > 8 << 20);
    let body = make_tar_gz(&[("big.hsb", hsb.as_bytes())]);
    let cvd = make_cvd(&body, true);
    let e = one_error("big.cvd", &cvd);
    assert_eq!((e.source.as_str(), e.line), ("big.cvd:big.hsb", n + 1));
    let mut l = Loader::new(LoadOptions::strict().skip_invalid(true));
    l.add_bytes("big.cvd", &cvd).unwrap();
    let set = l.build().unwrap();
    assert_eq!(set.counts().sha256, n);
}

fn sha(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

/// Build a set from keyed files, sharing with `prev` when given; returns the set and which
/// files were read.
fn keyed(
    files: &[(&str, &[u8])],
    prev: Option<&SignatureSet>,
) -> Result<(SignatureSet, Vec<String>), LoadError> {
    let mut l = Loader::new(LoadOptions::strict());
    let list: Vec<(String, [u8; 32])> =
        files.iter().map(|(n, d)| (n.to_string(), sha(d))).collect();
    if let Some(p) = prev {
        l.share_with(p, &list);
    }
    let mut read = Vec::new();
    for (n, d) in files {
        let key = sha(d);
        if l.needs_bytes(n, &key) {
            read.push(n.to_string());
            l.add_keyed(n, key, Some(&mut &d[..]), d.len() as u64)?;
        } else {
            l.add_keyed(n, key, None, d.len() as u64)?;
        }
    }
    Ok((l.build()?, read))
}

const MAIN_HSB: &[u8] =
    b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855:0:Main.Empty\n";
const NDB: &[u8] = b"Main.Body:0:*:68656c6c6f20776f726c64\n";

#[test]
fn a_new_version_shares_the_parts_of_unchanged_files() {
    let daily1: &[u8] =
        b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa:5:Daily.One\n";
    let daily2: &[u8] = b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa:5:Daily.One\nbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb:7:Daily.Two\n";
    let (v1, read1) = keyed(
        &[
            ("main.hsb", MAIN_HSB),
            ("daily.hsb", daily1),
            ("main.ndb", NDB),
        ],
        None,
    )
    .unwrap();
    assert_eq!(read1.len(), 3);
    let files2: [(&str, &[u8]); 3] = [
        ("main.hsb", MAIN_HSB),
        ("daily.hsb", daily2),
        ("main.ndb", NDB),
    ];
    let (v2, read2) = keyed(&files2, Some(&v1)).unwrap();
    assert_eq!(read2, vec!["daily.hsb"], "only the changed file is read");
    // main.hsb's layer and the body signatures are the very same objects.
    assert_eq!(v2.shared_parts_with(&v1), 2);
    assert_eq!(v2.counts().sha256, 3);
    assert_eq!(v2.counts().body, 1);
    let empty = sha(b"");
    assert_eq!(
        v2.hashes().lookup(HashKind::Sha256, 0, &empty),
        vec!["Main.Empty"]
    );
    assert_eq!(
        v2.hashes().lookup(HashKind::Sha256, 7, &[0xbb; 32]),
        vec!["Daily.Two"]
    );
    // Sharing changes nothing a scan sees: the digest is the one of a set read in full.
    let (full, _) = keyed(&files2, None).unwrap();
    assert_eq!(v2.digest(), full.digest());
    assert_eq!(v2.counts(), full.counts());
    assert_eq!(full.shared_parts_with(&v1), 0);
}

#[test]
fn a_changed_body_file_or_ignore_list_rebuilds_what_it_affects() {
    let ndb2: &[u8] = b"Main.Body:0:*:68656c6c6f20776f726c64\nNew.Body:0:*:6e657720626f6479\n";
    let (v1, _) = keyed(&[("main.hsb", MAIN_HSB), ("main.ndb", NDB)], None).unwrap();
    let (v2, read) = keyed(&[("main.hsb", MAIN_HSB), ("main.ndb", ndb2)], Some(&v1)).unwrap();
    assert_eq!(read, vec!["main.ndb"]);
    assert_eq!(v2.shared_parts_with(&v1), 1);
    assert_eq!(v2.counts().body, 2);
    // A new ignore list may drop signatures from any file: nothing is shared.
    let ign: &[u8] = b"Main.Empty\n";
    let (v3, read) = keyed(
        &[
            ("main.hsb", MAIN_HSB),
            ("main.ndb", ndb2),
            ("local.ign2", ign),
        ],
        Some(&v2),
    )
    .unwrap();
    assert_eq!(read.len(), 3);
    assert_eq!(v3.shared_parts_with(&v2), 0);
    assert_eq!((v3.counts().sha256, v3.counts().ignored_sigs), (0, 1));
    // With that ignore list unchanged, the next version shares again, ignore applied.
    let (v4, read) = keyed(
        &[
            ("main.hsb", MAIN_HSB),
            ("main.ndb", NDB),
            ("local.ign2", ign),
        ],
        Some(&v3),
    )
    .unwrap();
    assert_eq!(
        read,
        vec!["main.ndb", "local.ign2"],
        "ignore lists are always read"
    );
    assert_eq!((v4.counts().sha256, v4.counts().ignored_sigs), (0, 1));
    assert!(v4
        .hashes()
        .lookup(HashKind::Sha256, 0, &sha(b""))
        .is_empty());
}

#[test]
fn a_shared_source_without_its_bytes_is_refused_when_they_are_needed() {
    let mut l = Loader::new(LoadOptions::strict());
    let err = l.add_keyed("main.hsb", sha(MAIN_HSB), None, 0).unwrap_err();
    assert!(err.to_string().contains("main.hsb"), "{err}");
    // Sets loaded from paths (no keys) share nothing.
    let plain = load("main.hsb", MAIN_HSB).unwrap();
    let (v, read) = keyed(&[("main.hsb", MAIN_HSB)], Some(&plain)).unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(v.shared_parts_with(&plain), 0);
}

#[test]
fn revalidation_tells_what_a_clean_verdict_needs_after_an_update() {
    let ndb2: &[u8] = b"Main.Body:0:*:68656c6c6f20776f726c64\nNew.Body:0:*:6e657720626f6479\n";
    let daily: &[u8] =
        b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa:5:Daily.One\n";
    let (v1, _) = keyed(&[("main.hsb", MAIN_HSB), ("main.ndb", NDB)], None).unwrap();
    // Hashes only: a lookup decides.
    let (v2, _) = keyed(
        &[
            ("main.hsb", MAIN_HSB),
            ("daily.hsb", daily),
            ("main.ndb", NDB),
        ],
        Some(&v1),
    )
    .unwrap();
    assert!(matches!(v2.revalidation_since(&v1), Revalidation::Lookup));
    // A body signature added: the delta holds it alone.
    let (v3, _) = keyed(&[("main.hsb", MAIN_HSB), ("main.ndb", ndb2)], Some(&v1)).unwrap();
    match v3.revalidation_since(&v1) {
        Revalidation::Delta(d) => {
            assert_eq!(d.counts().body, 1);
            assert_eq!(d.bodies().sigs()[0].name, "New.Body");
            assert_eq!(d.counts().sha256, 0);
        }
        other => panic!("{other:?}"),
    }
    // The same holds for sets read from paths (nothing shared): the diff is by content.
    let plain1 = load("main.ndb", NDB).unwrap();
    let plain2 = load("main.ndb", ndb2).unwrap();
    assert!(matches!(
        plain2.revalidation_since(&plain1),
        Revalidation::Delta(_)
    ));
    assert!(
        matches!(plain1.revalidation_since(&plain2), Revalidation::Lookup),
        "removals need nothing"
    );
    // An allow-list entry gone: rescan in full.
    let fp: &[u8] = b"44d88612fea8a8f36de82e1278abb02f:68:Allowed\n";
    let (a1, _) = keyed(&[("main.ndb", NDB), ("local.fp", fp)], None).unwrap();
    let (a2, _) = keyed(&[("main.ndb", NDB)], Some(&a1)).unwrap();
    assert!(matches!(a2.revalidation_since(&a1), Revalidation::Rescan));
    assert!(
        matches!(a1.revalidation_since(&a2), Revalidation::Lookup),
        "an added entry only cleans"
    );
    // Most of the body signatures new: a full rescan, not a delta as large as the set.
    let many: String = (0..100)
        .map(|i| format!("Many.{i}:0:*:6d616e792d{i:08x}\n"))
        .collect();
    let big = load("many.ndb", many.as_bytes()).unwrap();
    assert!(matches!(
        big.revalidation_since(&plain1),
        Revalidation::Rescan
    ));
}
