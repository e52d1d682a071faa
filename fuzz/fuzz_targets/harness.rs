//! What each fuzz target checks, one function per target, without libFuzzer: the targets
//! call these, and `tests/tests/fuzz_regressions.rs` replays `fuzz/regressions/<target>/`
//! through the same functions in the normal test run. A function returns quietly or panics
//! (an assertion names the broken invariant); none may hang or allocate without bound.
//! (`harness_yara.rs` holds the target that needs YARA.)

// Each target binary uses one of these functions.
#![allow(dead_code)]

use hypervisor_api::clamd::{
    legacy_command, parse_command, split_command, ChunkDecoder, Command, Step, MAX_COMMAND,
};
use hypervisor_api::mem::{check_layout, elf_core_regions, Region};
use hypervisor_api::proto::{decode_frame, DEFAULT_MAX_PAYLOAD, HEADER_LEN};
use hypervisor_api::qmp::{parse_mtree, Qmp};
use scanner::containers::{for_each_member, ArchiveLimits, Budget, Flow, Kind};
use signatures::bundle::{inspect, verify, Keypair, Limits};
use signatures::{LoadOptions, Loader};

/// The ClamAV database kinds `clamav_parsers` picks from with its first byte.
const KINDS: &[&str] = &[
    "x.hdb", "x.hsb", "x.fp", "x.sfp", "x.ign2", "x.ndb", "x.cvd", "x.cld", "x.ldb",
];

/// `clamav_parsers`: every ClamAV database parser, strict and `--skip-invalid`; the first
/// byte picks the file kind.
pub fn clamav_parsers(data: &[u8]) {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let Some(name) = KINDS.get(usize::from(k) % KINDS.len()) else {
        return;
    };
    for skip in [false, true] {
        let mut l = Loader::new(LoadOptions::strict().skip_invalid(skip));
        if l.add_bytes(name, rest).is_err() {
            continue;
        }
        if let Ok(set) = l.build() {
            // Touch what a scanner would use.
            let _ = set.hashes().wanted(rest.len() as u64);
            for s in set.bodies().sigs() {
                let _ = s.pattern.best_atom();
                let _ = s.offset.start_range(rest.len());
            }
        }
    }
}

/// `hex_pattern`: the `.ndb` hex-signature syntax alone, then matching the result on the
/// input itself.
pub fn hex_pattern(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(patterns) = signatures::parse_pattern(text) else {
        return;
    };
    for p in patterns {
        let _ = p.min_len();
        let _ = p.best_atom();
        if let Some(seg) = p.segments().first() {
            let _ = seg.matches_at(data, 0);
        }
    }
}

/// `frame_decoder`: frames are split off the front of the stream with `decode_frame` until
/// it is incomplete or invalid (both end the stream, as in the daemon); every decoded
/// message must survive `to_frame` → `decode_frame` and re-encode to its own bytes.
pub fn frame_decoder(data: &[u8]) {
    let max = DEFAULT_MAX_PAYLOAD;
    let mut buf = data;
    while let Ok(Some((msg, n))) = decode_frame(buf, max) {
        assert!(
            n >= HEADER_LEN && n <= buf.len(),
            "frame length {n} of {}",
            buf.len()
        );
        let frame = msg.to_frame();
        let again = decode_frame(&frame, max);
        assert_eq!(
            again,
            Ok(Some((msg.clone(), frame.len()))),
            "round trip of {msg:?}"
        );
        let (own, rest) = buf.split_at(n);
        // The encoding is canonical: a strictly decoded frame re-encodes to its own bytes.
        assert_eq!(&frame[..], own, "re-encoding of {msg:?}");
        buf = rest;
    }
}

/// `elf_core`: the regions of an ELF core lie inside the input, are not empty and do not
/// overlap.
pub fn elf_core(data: &[u8]) {
    let Ok(regions) = elf_core_regions(data) else {
        return;
    };
    let mut last_end = 0u64;
    for (i, r) in regions.iter().enumerate() {
        assert!(r.len > 0, "region {i} is empty");
        let end = r.file_offset.checked_add(r.len);
        assert!(
            end.is_some_and(|e| e <= data.len() as u64),
            "region {i} outside the input"
        );
        assert!(i == 0 || r.gpa >= last_end, "region {i} overlaps");
        match r.gpa.checked_add(r.len) {
            Some(e) => last_end = e,
            None => panic!("region {i} wraps"),
        }
    }
}

/// Ranges from QEMU are not empty and do not wrap; `check_layout` accepts or refuses them.
fn check_ranges(regions: Vec<Region>) {
    for r in &regions {
        assert!(r.len > 0, "an empty range");
        assert!(r.gpa.checked_add(r.len - 1).is_some(), "a range wraps");
    }
    let _ = check_layout(regions, 1 << 40);
}

/// `mtree`: the parser of QEMU's `info mtree -f` text, then `check_layout`.
pub fn mtree(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(regions) = parse_mtree(&text, "mem") {
        check_ranges(regions);
    }
}

/// `bundle`: `inspect` and `verify` (with the fixed test key of `seeds/bundle/` and tight
/// caps) return a result or an error, and what verifies stays within its caps.
pub fn bundle(data: &[u8]) {
    let key = Keypair::from_seed([7; 32]).public();
    let _ = inspect(data);
    let limits = Limits {
        max_bundle: 1 << 20,
        max_unpacked: 4 << 20,
        max_ratio: 1000,
    };
    if let Ok(v) = verify(data, &[key], &limits) {
        let total: usize = v.files.iter().map(|(_, b)| b.len()).sum();
        assert!(
            total as u64 <= limits.max_unpacked,
            "{total} bytes unpacked"
        );
    }
}

/// `archive_*`: a container reader's members stay within the limits, the total within its
/// cap.
pub fn archive(kind: Kind, data: &[u8]) {
    let limits = ArchiveLimits {
        max_member: 1 << 20,
        max_total: 4 << 20,
        max_files: 64,
        ..ArchiveLimits::default()
    };
    let mut budget = Budget::new(&limits);
    let mut seen = 0u64;
    let _ = for_each_member(kind, data, &mut budget, &mut |_, bytes, _| {
        assert!(
            bytes.len() as u64 <= limits.max_member,
            "a member over the cap"
        );
        seen += bytes.len() as u64;
        Flow::Continue
    });
    assert!(seen <= limits.max_total, "{seen} bytes in all");
}

/// How a chunk stream decoded: its data, the input bytes taken (0 once refused: the
/// connection is done with), and how it ended (`None`: incomplete, `Some(true)`: the
/// zero-length chunk, `Some(false)`: refused).
type Decoded = (Vec<u8>, usize, Option<bool>);

/// Decode `stream` given to the decoder in pieces of the sizes in `pieces` (cycled).
fn decode_in_pieces(stream: &[u8], cap: u64, pieces: &[usize]) -> Decoded {
    let mut dec = ChunkDecoder::new(cap);
    let mut data = Vec::new();
    let mut taken = 0usize;
    let mut sizes = pieces.iter().cycle();
    let mut end = 0usize;
    loop {
        let piece = stream.get(taken..end).unwrap_or(&[]);
        let (step, n) = match dec.step(piece) {
            Ok(s) => s,
            Err(_) => return (data, 0, Some(false)),
        };
        assert!(n <= piece.len(), "took {n} of {} bytes", piece.len());
        taken += n;
        match step {
            Step::End => return (data, taken, Some(true)),
            Step::Chunk(len) => assert!(len > 0 && dec.announced() <= cap),
            Step::Data(d) => {
                assert!(!d.is_empty() && d.len() == n);
                data.extend_from_slice(d);
                assert!(data.len() as u64 <= dec.announced());
            }
            Step::NeedMore => {
                assert_eq!(taken, end, "more needed with input left");
                if end == stream.len() {
                    return (data, taken, None);
                }
                let size = sizes.next().copied().unwrap_or(1).max(1);
                end = end.saturating_add(size).min(stream.len());
            }
        }
    }
}

/// `clamd_protocol`: the input as a client's command lines, then as an `INSTREAM` chunk
/// stream (its first three bytes set the cap and how the stream is split): lines stay within
/// `MAX_COMMAND`, commands parse or are refused, the data never exceeds the cap, and
/// decoding in pieces gives what decoding at once does.
pub fn clamd_protocol(data: &[u8]) {
    let mut rest = data;
    while let Ok(Some((line, used))) = split_command(rest) {
        assert!(
            line.body.len() <= MAX_COMMAND,
            "a line of {}",
            line.body.len()
        );
        assert!(used > line.body.len() && used <= rest.len());
        if let Ok(Command::Scan { mode, path }) = parse_command(line.body) {
            let text = String::from_utf8_lossy(line.body);
            assert_eq!(text, format!("{} {path}", mode.name()));
        }
        rest = rest.get(used..).unwrap_or(&[]);
    }
    if let Some(body) = legacy_command(rest) {
        assert!(body.len() <= MAX_COMMAND);
        let _ = parse_command(body);
    }

    let Some((&[a, b, split], stream)) = data.split_first_chunk::<3>() else {
        return;
    };
    let cap = u64::from(u16::from_be_bytes([a, b]));
    let whole = decode_in_pieces(stream, cap, &[usize::MAX]);
    assert!(
        whole.0.len() as u64 <= cap,
        "{} bytes over a cap of {cap}",
        whole.0.len()
    );
    assert!(whole.1 <= stream.len());
    let pieces = [
        usize::from(split & 7) + 1,
        usize::from(split >> 3 & 7) + 1,
        usize::from(split >> 6) * 64 + 1,
    ];
    assert_eq!(
        decode_in_pieces(stream, cap, &pieces),
        whole,
        "pieces {pieces:?}"
    );
}

/// The most bytes of a `qmp_reply` script sent (well within a socket buffer, so the peer
/// never blocks on a client that gave up).
const QMP_SCRIPT_MAX: usize = 32 << 10;

/// `qmp_reply`: the input is everything a QEMU sends on its QMP socket (the greeting,
/// replies, events); the real client connects, asks `query-status` and the RAM layout of a
/// 2 GiB RAM file, and must get answers or errors, never panic or wait for its timeout.
pub fn qmp_reply(data: &[u8]) {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    static NEXT: AtomicU64 = AtomicU64::new(0);
    let script = data.get(..QMP_SCRIPT_MAX).unwrap_or(data).to_vec();
    let path = std::env::temp_dir().join(format!(
        "svm-fuzz-qmp-{}-{}.sock",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&path);
    let Ok(listener) = std::os::unix::net::UnixListener::bind(&path) else {
        return;
    };
    let peer = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.write_all(&script);
            let _ = s.shutdown(std::net::Shutdown::Write);
            // Take what the client sends until it hangs up.
            let _ = s.read_to_end(&mut Vec::new());
        }
    });
    let started = std::time::Instant::now();
    if let Ok(mut q) = Qmp::connect(&path, Duration::from_secs(5)) {
        let _ = q.status();
        if let Ok(regions) = q.ram_layout(2 << 30) {
            check_ranges(regions);
        }
    }
    // Should the client never have connected, this ends the peer's accept.
    let _ = std::os::unix::net::UnixStream::connect(&path);
    let _ = std::fs::remove_file(&path);
    let _ = peer.join();
    // The peer closes at the end of its script: nothing waits for the timeout.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the client waited"
    );
}
