//! Streaming, parallel line parsing for large signature files.
//!
//! The input is read in blocks of a few MiB (never the whole file), each block is cut at line
//! boundaries into pieces parsed in parallel with rayon, and the results are handed to a sink in
//! line order. Memory stays at one block whatever the file size.

use crate::error::{ErrorCode, LineError};
use rayon::prelude::*;
use std::io::{self, Read};

/// What a line parser found.
#[derive(Debug)]
pub(crate) enum Parsed<T> {
    /// A signature.
    Sig(T),
    /// A valid line of a form this engine does not support yet; the reason names the form.
    Skip(&'static str),
}

/// Longest accepted line.
pub(crate) const MAX_LINE: usize = 1 << 20;
const BLOCK: usize = 8 << 20;
const PIECE: usize = 256 << 10;

type Outcome<T> = Result<Parsed<T>, LineError>;
/// Parsed lines of one piece: (line number in piece, line start, line end, outcome).
type PieceLines<T> = Vec<(u64, usize, usize, Outcome<T>)>;

/// Parse every non-empty, non-comment line of `reader` with `parse`, in parallel, and feed the
/// results to `sink(line_bytes, line_number, outcome)` in order. `on_block` sees every raw block
/// (for digests).
pub(crate) fn parse_lines<T, P, S, B>(
    mut reader: impl Read,
    parse: P,
    mut sink: S,
    mut on_block: B,
) -> io::Result<()>
where
    T: Send,
    P: Fn(&[u8]) -> Outcome<T> + Sync,
    S: FnMut(&[u8], u64, Outcome<T>),
    B: FnMut(&[u8]),
{
    let mut buf: Vec<u8> = Vec::with_capacity(BLOCK.min(1 << 16));
    let mut line_no: u64 = 0;
    let mut skipping_long = false;
    let mut pool: Vec<(u64, PieceLines<T>)> = Vec::new();
    let mut eof = false;
    while !eof {
        // Fill the buffer up to BLOCK bytes.
        let start_len = buf.len();
        let want = BLOCK.saturating_sub(buf.len()).max(1 << 16);
        let mut filled = 0;
        while filled < want {
            let old = buf.len();
            let n = (&mut reader)
                .take((want - filled) as u64)
                .read_to_end(&mut buf)?;
            debug_assert_eq!(buf.len(), old + n);
            if n == 0 {
                eof = true;
                break;
            }
            filled += n;
        }
        on_block(buf.get(start_len..).unwrap_or(&[]));
        let cut = if eof {
            buf.len()
        } else {
            match memchr::memrchr(b'\n', &buf) {
                Some(p) => p + 1,
                None => {
                    if buf.len() >= MAX_LINE {
                        if !skipping_long {
                            line_no += 1;
                            sink(
                                &[],
                                line_no,
                                Err(LineError::new(
                                    0,
                                    ErrorCode::LineTooLong,
                                    format!("line longer than {MAX_LINE} bytes"),
                                )),
                            );
                            skipping_long = true;
                        }
                        buf.clear();
                    }
                    continue;
                }
            }
        };
        let (body, _) = buf.split_at(cut);
        let mut body = body;
        if skipping_long {
            // Drop the rest of the overlong line.
            let nl = memchr::memchr(b'\n', body).map_or(body.len(), |p| p + 1);
            body = body.get(nl..).unwrap_or(&[]);
            skipping_long = false;
        }
        process_block(body, &parse, &mut sink, &mut line_no, &mut pool);
        buf.drain(..cut);
    }
    Ok(())
}

fn process_block<T, P, S>(
    body: &[u8],
    parse: &P,
    sink: &mut S,
    line_no: &mut u64,
    pool: &mut Vec<(u64, PieceLines<T>)>,
) where
    T: Send,
    P: Fn(&[u8]) -> Outcome<T> + Sync,
    S: FnMut(&[u8], u64, Outcome<T>),
{
    // Cut into pieces at newlines.
    let mut pieces = Vec::new();
    let mut start = 0;
    while start < body.len() {
        let tentative = (start + PIECE).min(body.len());
        let end = if tentative == body.len() {
            tentative
        } else {
            memchr::memchr(b'\n', body.get(tentative..).unwrap_or(&[]))
                .map_or(body.len(), |p| tentative + p + 1)
        };
        pieces.push((start, end));
        start = end;
    }
    // Result buffers are reused from block to block, so their pages are faulted in once.
    if pool.len() < pieces.len() {
        pool.resize_with(pieces.len(), || (0, Vec::new()));
    }
    let Some(slots) = pool.get_mut(..pieces.len()) else {
        return;
    };
    let run = |slot: &mut (u64, PieceLines<T>), &(s, e): &(usize, usize)| {
        let piece = body.get(s..e).unwrap_or(&[]);
        let out = &mut slot.1;
        out.clear();
        let mut n: u64 = 0;
        let mut pos = 0;
        while pos < piece.len() {
            let end = memchr::memchr(b'\n', piece.get(pos..).unwrap_or(&[]))
                .map_or(piece.len(), |p| pos + p);
            n += 1;
            let mut line = piece.get(pos..end).unwrap_or(&[]);
            if let [rest @ .., b'\r'] = line {
                line = rest;
            }
            let trimmed = line.trim_ascii();
            if !trimmed.is_empty() && !trimmed.starts_with(b"#") {
                if line.len() > MAX_LINE {
                    out.push((
                        n,
                        s + pos,
                        s + pos,
                        Err(LineError::new(
                            0,
                            ErrorCode::LineTooLong,
                            format!("line longer than {MAX_LINE} bytes"),
                        )),
                    ));
                } else {
                    out.push((n, s + pos, s + pos + line.len(), parse(line)));
                }
            }
            pos = end + 1;
        }
        slot.0 = n;
    };
    if pieces.len() > 1 {
        slots
            .par_iter_mut()
            .zip(pieces.par_iter())
            .for_each(|(slot, piece)| run(slot, piece));
    } else {
        slots
            .iter_mut()
            .zip(pieces.iter())
            .for_each(|(slot, piece)| run(slot, piece));
    }
    for (count, items) in slots.iter_mut() {
        for (n, s, e, outcome) in items.drain(..) {
            sink(body.get(s..e).unwrap_or(&[]), *line_no + n, outcome);
        }
        *line_no += *count;
    }
}
