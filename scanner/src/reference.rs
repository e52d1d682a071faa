//! A naive reference matcher for body signatures, for tests.
//!
//! It tries every allowed start and every jump length by plain recursion. It is slow and
//! obviously correct; the fast engine must agree with it.

use signatures::{BodySig, Segment};

/// The first start at which `sig` matches `data`, by brute force.
pub fn find(sig: &BodySig, data: &[u8]) -> Option<usize> {
    let (lo, hi) = sig.offset.start_range(data.len())?;
    (lo..=hi.min(data.len())).find(|&start| {
        sig.target.accepts(data)
            && place(sig.pattern.segments(), sig.pattern.gaps(), data, 0, start)
    })
}

/// Whether any match starts exactly at `start` (target and offset rules included).
pub fn matches_at(sig: &BodySig, data: &[u8], start: usize) -> bool {
    sig.target.accepts(data)
        && sig.offset.allows(start, data.len())
        && place(sig.pattern.segments(), sig.pattern.gaps(), data, 0, start)
}

fn seg_at(seg: &Segment, data: &[u8], pos: usize) -> bool {
    let mut p = pos;
    for t in seg.toks() {
        let Some(w) = data.get(p..p + t.len()) else {
            return false;
        };
        if !t.matches(w) {
            return false;
        }
        p += t.len();
    }
    true
}

fn place(segs: &[Segment], gaps: &[signatures::Gap], data: &[u8], i: usize, pos: usize) -> bool {
    let Some(seg) = segs.get(i) else { return true };
    if !seg_at(seg, data, pos) {
        return false;
    }
    let end = pos + seg.len();
    let Some(g) = gaps.get(i) else { return true };
    let max = g
        .max
        .map_or(data.len(), |m| end + m as usize)
        .min(data.len());
    (end + g.min as usize..=max).any(|p| place(segs, gaps, data, i + 1, p))
}
