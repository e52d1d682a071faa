//! Kernel benchmarks: body matching, hash lookup and signature loading.
//!
//! `cargo bench -p scanner --bench engine`. Whole-program comparisons against other scanners
//! live in `bench/`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use scanner::Scanner;
use signatures::{LoadOptions, Loader};
use std::hint::black_box;

fn body_sigs(n: usize, rng: &mut ChaCha8Rng) -> String {
    let mut s = String::new();
    for i in 0..n {
        let len = rng.random_range(12..40);
        let hex: String = (0..len)
            .map(|_| format!("{:02x}", rng.random::<u8>()))
            .collect();
        let (a, b) = hex.split_at(16);
        match i % 4 {
            0 => s.push_str(&format!("B.{i}:0:*:{hex}\n")),
            1 => s.push_str(&format!("B.{i}:0:*:{a}??{}\n", &b[2..])),
            2 => s.push_str(&format!("B.{i}:0:*:{a}{{2-30}}{b}\n")),
            _ => s.push_str(&format!("B.{i}:0:*:{a}*{b}\n")),
        }
    }
    s
}

fn hash_sigs(n: usize, rng: &mut ChaCha8Rng) -> String {
    let mut s = String::new();
    for i in 0..n {
        let mut h = [0u8; 32];
        rng.fill_bytes(&mut h);
        s.push_str(&format!(
            "{}:{}:H.{i}\n",
            hex::encode(h),
            rng.random_range(64..4 << 20)
        ));
    }
    s
}

fn haystacks(rng: &mut ChaCha8Rng) -> Vec<(&'static str, Vec<u8>)> {
    let mut random = vec![0u8; 8 << 20];
    rng.fill_bytes(&mut random);
    let text: Vec<u8> = b"the quick brown fox jumps over the lazy dog\n"
        .iter()
        .copied()
        .cycle()
        .take(8 << 20)
        .collect();
    let zeros = vec![0u8; 8 << 20];
    let elf = std::fs::read("/usr/bin/bash").unwrap_or_else(|_| random.clone());
    vec![
        ("random", random),
        ("text", text),
        ("zeros", zeros),
        ("elf", elf),
    ]
}

fn bench_body(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let hay = haystacks(&mut rng);
    let mut g = c.benchmark_group("body");
    for n in [1_000usize, 5_000, 50_000] {
        let mut l = Loader::new(LoadOptions::strict());
        l.add_bytes("b.ndb", body_sigs(n, &mut rng).as_bytes())
            .unwrap();
        let set = l.build().unwrap();
        let mut scanner = Scanner::new(&set);
        for (name, data) in &hay {
            g.throughput(Throughput::Bytes(data.len() as u64));
            g.bench_with_input(BenchmarkId::new(format!("{n}-sigs"), name), data, |b, d| {
                b.iter(|| black_box(scanner.scan_bytes(d)))
            });
        }
    }
    g.finish();
}

fn bench_hash(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut l = Loader::new(LoadOptions::strict());
    l.add_bytes("h.hsb", hash_sigs(200_000, &mut rng).as_bytes())
        .unwrap();
    let set = l.build().unwrap();
    let mut g = c.benchmark_group("hash");
    let mut small = vec![0u8; 4096];
    rng.fill_bytes(&mut small);
    g.throughput(Throughput::Bytes(small.len() as u64));
    g.bench_function("lookup-4KiB", |b| {
        let mut s = Scanner::new(&set);
        b.iter(|| black_box(s.scan_bytes(&small)))
    });
    g.finish();
}

fn bench_load(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let hsb = hash_sigs(200_000, &mut rng);
    let ndb = body_sigs(5_000, &mut rng);
    let mut g = c.benchmark_group("load");
    g.sample_size(10);
    g.bench_function("200k-sha256+5k-body", |b| {
        b.iter(|| {
            let mut l = Loader::new(LoadOptions::strict());
            l.add_bytes("h.hsb", hsb.as_bytes()).unwrap();
            l.add_bytes("b.ndb", ndb.as_bytes()).unwrap();
            black_box(l.build().unwrap())
        })
    });
    g.finish();
}

criterion_group!(benches, bench_body, bench_hash, bench_load);
criterion_main!(benches);
