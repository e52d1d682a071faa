//! Exact verification of a body signature around an atom hit.
//!
//! A hit fixes where one segment starts. From there the segments after it are searched forward
//! and the ones before it backward, each inside the range its gap allows. Ranges are kept as
//! merged intervals, so a chain of jumps costs at most one pass over the bytes it spans.

use signatures::{BodySig, Gap, Segment, Tok};

/// Why [`verify`] found no match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Miss {
    /// The segments after `seg_k` cannot be placed after it. When the gap right after
    /// `seg_k` is unbounded (`*`), they cannot be placed after any later position of it
    /// either: the positions left for them only shrink.
    Forward,
    /// Anything else.
    Other,
}

/// Find where a match of `sig` starts, given that segment `seg_k` of its pattern is at
/// `pos_k`. A miss if no placement of the other segments (and the offset rule) fits.
pub(crate) fn verify(
    sig: &BodySig,
    data: &[u8],
    seg_k: usize,
    pos_k: usize,
) -> Result<usize, Miss> {
    let segs = sig.pattern.segments();
    let gaps = sig.pattern.gaps();
    let seg = segs.get(seg_k).ok_or(Miss::Other)?;
    if !seg.matches_at(data, pos_k) {
        return Err(Miss::Other);
    }
    if !forward(segs, gaps, data, seg_k, pos_k + seg.len()) {
        return Err(Miss::Forward);
    }
    let (lo, hi) = sig.offset.start_range(data.len()).ok_or(Miss::Other)?;
    backward(segs, gaps, data, seg_k, pos_k, lo, hi).ok_or(Miss::Other)
}

/// Whether every gap of `sig` is open-ended (`*`, `{n-}`) and it may start anywhere: then
/// [`verify_open`] decides it for a whole object in one pass.
pub(crate) fn is_open(sig: &BodySig) -> bool {
    sig.offset == signatures::Offset::Any && sig.pattern.gaps().iter().all(|g| g.max.is_none())
}

/// Where the first match of an [`is_open`] signature in `data` starts. Each segment is placed
/// at its first occurrence after the previous one's end (plus the gap's minimum): an earlier
/// end leaves every later choice open, so this finds a match whenever there is one, and
/// starts it at the first occurrence of the first segment, the earliest any match can start.
pub(crate) fn verify_open(sig: &BodySig, data: &[u8]) -> Option<usize> {
    let segs = sig.pattern.segments();
    let gaps = sig.pattern.gaps();
    let first = find_seg(segs.first()?, data, 0, data.len())?;
    let mut end = first + segs.first()?.len();
    for (i, seg) in segs.iter().enumerate().skip(1) {
        let gap = gaps.get(i - 1)?;
        let from = end.checked_add(gap.min as usize)?;
        let at = find_seg(seg, data, from, data.len())?;
        end = at + seg.len();
    }
    Some(first)
}

/// Check a signature whose start is pinned to `lo..=hi` (anchored offsets).
pub(crate) fn verify_anchored(sig: &BodySig, data: &[u8]) -> Option<usize> {
    let (lo, hi) = sig.offset.start_range(data.len())?;
    let segs = sig.pattern.segments();
    let first = segs.first()?;
    let hi = hi.min(data.len().saturating_sub(first.len()));
    (lo..=hi).find(|&p| {
        first.matches_at(data, p) && forward(segs, sig.pattern.gaps(), data, 0, p + first.len())
    })
}

/// Starting positions allowed for the next segment after a segment ending at `end`.
fn after(gap: Gap, end: usize, len: usize) -> Option<(usize, usize)> {
    let lo = end.checked_add(gap.min as usize)?;
    let hi = match gap.max {
        Some(m) => end.saturating_add(m as usize),
        None => len,
    };
    (lo <= len).then_some((lo, hi.min(len)))
}

fn push_merged(v: &mut Vec<(usize, usize)>, iv: (usize, usize)) {
    if let Some(last) = v.last_mut() {
        if iv.0 <= last.1.saturating_add(1) {
            last.1 = last.1.max(iv.1);
            last.0 = last.0.min(iv.0);
            return;
        }
    }
    v.push(iv);
}

/// Whether segments `k+1..` can be placed after a segment `k` ending at `end`.
fn forward(segs: &[Segment], gaps: &[Gap], data: &[u8], k: usize, end: usize) -> bool {
    let mut frontier: Vec<(usize, usize)> = Vec::new();
    let Some(first_gap) = gaps.get(k) else {
        return true; // k is the last segment
    };
    match after(*first_gap, end, data.len()) {
        Some(iv) => frontier.push(iv),
        None => return false,
    }
    for i in k + 1..segs.len() {
        let Some(seg) = segs.get(i) else { return false };
        let next_gap = gaps.get(i).copied();
        let mut next: Vec<(usize, usize)> = Vec::new();
        for &(lo, hi) in &frontier {
            let mut p = lo;
            while let Some(found) = find_seg(seg, data, p, hi) {
                let seg_end = found + seg.len();
                match next_gap {
                    None => return true,
                    Some(g) => {
                        if let Some(iv) = after(g, seg_end, data.len()) {
                            push_merged(&mut next, iv);
                        }
                        // With an unbounded next gap, later hits only give subsets.
                        if g.max.is_none() {
                            break;
                        }
                    }
                }
                p = found + 1;
            }
            if next_gap.is_some_and(|g| g.max.is_none()) && !next.is_empty() {
                break;
            }
        }
        if next.is_empty() {
            return false;
        }
        frontier = next;
    }
    false
}

/// Place segments `0..k` before segment `k` at `pos_k`; return a start of segment 0 in
/// `lo..=hi`.
fn backward(
    segs: &[Segment],
    gaps: &[Gap],
    data: &[u8],
    k: usize,
    pos_k: usize,
    lo: usize,
    hi: usize,
) -> Option<usize> {
    if k == 0 {
        return (pos_k >= lo && pos_k <= hi).then_some(pos_k);
    }
    // Candidate start intervals for segment i, computed from the starts of segment i+1.
    let mut starts: Vec<(usize, usize)> = vec![(pos_k, pos_k)];
    for i in (0..k).rev() {
        let seg = segs.get(i)?;
        let gap = *gaps.get(i)?;
        let mut cand: Vec<(usize, usize)> = Vec::new();
        for &(s_lo, s_hi) in &starts {
            // seg i ends in [s - max, s - min], so it starts in [s - max - len, s - min - len].
            let c_hi = s_hi
                .checked_sub(gap.min as usize)
                .and_then(|v| v.checked_sub(seg.len()));
            let Some(c_hi) = c_hi else { continue };
            let c_lo = match gap.max {
                Some(m) => s_lo.saturating_sub(m as usize).saturating_sub(seg.len()),
                None => 0,
            };
            push_merged(&mut cand, (c_lo, c_hi));
        }
        cand.sort_unstable();
        let mut merged = Vec::with_capacity(cand.len());
        for iv in cand {
            push_merged(&mut merged, iv);
        }
        let mut found: Vec<(usize, usize)> = Vec::new();
        for &(c_lo, c_hi) in &merged {
            let (mut c_lo, mut c_hi) = (c_lo, c_hi);
            if i == 0 {
                c_lo = c_lo.max(lo);
                c_hi = c_hi.min(hi);
                if c_lo > c_hi {
                    continue;
                }
                if let Some(p) = find_seg(seg, data, c_lo, c_hi) {
                    return Some(p);
                }
                continue;
            }
            let mut p = c_lo;
            while let Some(f) = find_seg(seg, data, p, c_hi) {
                push_merged(&mut found, (f, f));
                p = f + 1;
            }
        }
        if i == 0 || found.is_empty() {
            return None;
        }
        starts = found;
    }
    None
}

/// The first position `p` in `lo..=hi` where `seg` matches.
#[inline]
fn find_seg(seg: &Segment, data: &[u8], lo: usize, hi: usize) -> Option<usize> {
    let last_start = data.len().checked_sub(seg.len())?;
    let hi = hi.min(last_start);
    if lo > hi {
        return None;
    }
    if let Some(Tok::Lit(lit)) = seg.toks().first() {
        // Jump between occurrences of the leading literal.
        let window = data.get(lo..hi + lit.len())?;
        let finder = memchr::memmem::Finder::new(&lit[..]);
        let mut from = 0;
        while let Some(off) = finder.find(window.get(from..)?) {
            let p = lo + from + off;
            if seg.matches_at(data, p) {
                return Some(p);
            }
            from += off + 1;
        }
        return None;
    }
    (lo..=hi).find(|&p| seg.matches_at(data, p))
}
