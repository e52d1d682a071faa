//! `svm-corpus OUT [--seed N] [--files N]`: write a deterministic test corpus.

use anyhow::Result;
use clap::Parser;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(about = "Generate benign files, planted positives, signatures and ground truth")]
struct Args {
    /// Output directory.
    out: PathBuf,
    /// Random seed (same seed, same corpus).
    #[arg(long, default_value_t = 2026)]
    seed: u64,
    /// Number of benign files.
    #[arg(long, default_value_t = 500)]
    files: usize,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let truth = corpus::generate(&a.out, a.seed, a.files)?;
    let planted = truth
        .entries
        .iter()
        .filter(|e| !e.expected.is_empty())
        .count();
    println!(
        "{} files ({planted} planted positives) in {}",
        truth.entries.len(),
        a.out.display()
    );
    Ok(())
}
