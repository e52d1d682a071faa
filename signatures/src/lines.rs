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

/// A reader that may move to another thread (so reading overlaps parsing), or one that may not
/// (members of a tar archive), read in turn with parsing.
pub(crate) enum Input<'a> {
    /// Read on a worker thread while the previous block is parsed.
    Shared(&'a mut (dyn Read + Send)),
    /// Read on the calling thread.
    Local(&'a mut dyn Read),
}

impl Input<'_> {
    pub(crate) fn as_read(&mut self) -> &mut dyn Read {
        match self {
            Input::Shared(r) => *r,
            Input::Local(r) => *r,
        }
    }
}

/// Read up to one block more into `buf`, show the new bytes to `on_block`, and return whether
/// the input ended.
fn fill(
    reader: &mut dyn Read,
    buf: &mut Vec<u8>,
    on_block: &mut dyn FnMut(&[u8]),
) -> io::Result<bool> {
    let start = buf.len();
    let mut eof = false;
    while buf.len() - start < BLOCK {
        let want = (BLOCK - (buf.len() - start)) as u64;
        if reader.take(want).read_to_end(buf)? == 0 {
            eof = true;
            break;
        }
    }
    on_block(buf.get(start..).unwrap_or(&[]));
    Ok(eof)
}

/// Parse every non-empty, non-comment line of `reader` with `parse`, in parallel, and feed the
/// results to `sink(line_bytes, line_number, outcome)` in order. `on_block` sees every raw block
/// (for digests). Reading the next block overlaps with parsing the current one.
pub(crate) fn parse_lines<T, P, S, B>(
    mut input: Input<'_>,
    parse: P,
    mut sink: S,
    mut on_block: B,
) -> io::Result<()>
where
    T: Send,
    P: Fn(&[u8]) -> Outcome<T> + Sync,
    S: FnMut(&[u8], u64, Outcome<T>),
    B: FnMut(&[u8]) + Send,
{
    let mut cur: Vec<u8> = Vec::new();
    let mut next: Vec<u8> = Vec::new();
    let mut line_no: u64 = 0;
    let mut skipping_long = false;
    let mut pool: Vec<(u64, PieceLines<T>)> = Vec::new();
    let mut eof = fill(input.as_read(), &mut cur, &mut on_block)?;
    loop {
        let cut = if eof {
            cur.len()
        } else {
            match memchr::memrchr(b'\n', &cur) {
                Some(p) => p + 1,
                None => {
                    // No complete line yet: an overlong line is reported once and skipped.
                    if cur.len() >= MAX_LINE {
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
                        cur.clear();
                    }
                    eof = fill(input.as_read(), &mut cur, &mut on_block)?;
                    continue;
                }
            }
        };
        // The partial last line starts the next buffer.
        next.clear();
        next.extend_from_slice(cur.get(cut..).unwrap_or(&[]));
        cur.truncate(cut);
        let mut start = 0;
        if skipping_long {
            start = memchr::memchr(b'\n', &cur).map_or(cur.len(), |p| p + 1);
            skipping_long = false;
        }
        let body = cur.get(start..).unwrap_or(&[]);
        let pieces = match (&mut input, eof) {
            (_, true) => parse_block(body, &parse, &mut pool),
            (Input::Shared(reader), false) => {
                let reader: &mut (dyn Read + Send) = &mut **reader;
                let (pieces, read) = rayon::join(
                    || parse_block(body, &parse, &mut pool),
                    || fill(reader, &mut next, &mut on_block),
                );
                eof = read?;
                pieces
            }
            (Input::Local(reader), false) => {
                let pieces = parse_block(body, &parse, &mut pool);
                eof = fill(&mut **reader, &mut next, &mut on_block)?;
                pieces
            }
        };
        sink_block(body, &mut sink, &mut line_no, &mut pool, pieces);
        if eof && next.is_empty() {
            break;
        }
        std::mem::swap(&mut cur, &mut next);
    }
    Ok(())
}

fn parse_block<T, P>(body: &[u8], parse: &P, pool: &mut Vec<(u64, PieceLines<T>)>) -> usize
where
    T: Send,
    P: Fn(&[u8]) -> Outcome<T> + Sync,
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
        return 0;
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
    pieces.len()
}

fn sink_block<T, S>(
    body: &[u8],
    sink: &mut S,
    line_no: &mut u64,
    pool: &mut [(u64, PieceLines<T>)],
    pieces: usize,
) where
    S: FnMut(&[u8], u64, Outcome<T>),
{
    for (count, items) in pool.iter_mut().take(pieces) {
        for (n, s, e, outcome) in items.drain(..) {
            sink(body.get(s..e).unwrap_or(&[]), *line_no + n, outcome);
        }
        *line_no += *count;
    }
}
