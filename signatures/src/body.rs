//! ClamAV extended body signatures (`.ndb`): parsing and the compiled pattern form.
//!
//! Line format: `Name:TargetType:Offset:HexSig[:MinFL[:MaxFL]]`.
//!
//! A hex signature compiles to a [`Pattern`]: fixed-length [`Segment`]s separated by
//! variable [`Gap`]s. Inside a segment, each position is an exact byte, a masked byte (`??`,
//! `a?`, `?a`), a byte set (`(aa|bb)`, `!(aa|bb)`) or a multi-byte alternative of fixed width.
//! Alternatives whose members differ in length are expanded into several patterns.

use crate::error::{ErrorCode, LineError};
use crate::hash::{parse_flevel, Flevel};
use crate::lines::Parsed;

/// Largest jump (`{n}`, `{n-m}`) or offset shift accepted; beyond this a bound is absurd.
pub const MAX_JUMP: u32 = 16 << 20;
/// Largest number of patterns one signature may expand to through variable-length alternatives.
pub const MAX_EXPANSION: usize = 64;
/// Longest literal atom chosen per signature (the unit the prefilter and atom table index).
pub const MAX_ATOM: usize = 8;
/// Offset shifts up to this many positions are verified directly instead of through atoms.
pub const MAX_ANCHORED_SHIFT: u32 = 256;

/// Which files a body signature applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Target {
    /// Target type 0: any file.
    Any,
    /// Target type 1: PE (`MZ` with a `PE\0\0` header).
    Pe,
    /// Target type 6: ELF.
    Elf,
    /// Target type 9: Mach-O (thin or fat).
    MachO,
}

impl Target {
    /// Whether `data` is a file of this type. Cheap: it looks only at magic numbers.
    pub fn accepts(self, data: &[u8]) -> bool {
        match self {
            Target::Any => true,
            Target::Pe => is_pe(data),
            Target::Elf => data.starts_with(b"\x7fELF"),
            Target::MachO => is_macho(data),
        }
    }
}

fn is_pe(data: &[u8]) -> bool {
    if !data.starts_with(b"MZ") {
        return false;
    }
    let Some(lfanew) = data
        .get(0x3c..0x40)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
    else {
        return false;
    };
    let lfanew = u32::from_le_bytes(lfanew) as usize;
    lfanew
        .checked_add(4)
        .and_then(|end| data.get(lfanew..end))
        .is_some_and(|m| m == b"PE\0\0")
}

fn is_macho(data: &[u8]) -> bool {
    let Some(m) = data.get(0..4) else {
        return false;
    };
    match m {
        [0xfe, 0xed, 0xfa, 0xce | 0xcf] | [0xce | 0xcf, 0xfa, 0xed, 0xfe] => true,
        // Fat binaries share their magic with Java class files; a fat header holds a small
        // architecture count where a class file holds its version (45 or more).
        [0xca, 0xfe, 0xba, 0xbe] => data
            .get(4..8)
            .and_then(|n| <[u8; 4]>::try_from(n).ok())
            .map(u32::from_be_bytes)
            .is_some_and(|n| (1..=20).contains(&n)),
        _ => false,
    }
}

/// Where a match must start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Offset {
    /// `*`: anywhere.
    Any,
    /// `n` or `n,shift`: the match starts in `start..=start+shift`.
    Absolute {
        /// First allowed start.
        start: u64,
        /// How far past `start` the match may float.
        shift: u32,
    },
    /// `EOF-n` or `EOF-n,shift`: the match starts in `len-back..=len-back+shift`.
    FromEof {
        /// Bytes before the end of the file.
        back: u64,
        /// How far past that the match may float.
        shift: u32,
    },
}

impl Offset {
    /// The inclusive range of allowed start positions in data of length `len`, if any.
    pub fn start_range(self, len: usize) -> Option<(usize, usize)> {
        let len64 = len as u64;
        let (lo, shift) = match self {
            Offset::Any => return Some((0, len)),
            Offset::Absolute { start, shift } => (start, shift),
            Offset::FromEof { back, shift } => (len64.checked_sub(back)?, shift),
        };
        if lo > len64 {
            return None;
        }
        let hi = lo.saturating_add(u64::from(shift)).min(len64);
        Some((usize::try_from(lo).ok()?, usize::try_from(hi).ok()?))
    }

    /// Whether a match may start at `pos` in data of length `len`.
    pub fn allows(self, pos: usize, len: usize) -> bool {
        self.start_range(len)
            .is_some_and(|(lo, hi)| pos >= lo && pos <= hi)
    }

    /// Whether this offset pins the start to few enough positions to check them directly.
    pub fn is_anchored(self) -> bool {
        match self {
            Offset::Any => false,
            Offset::Absolute { shift, .. } | Offset::FromEof { shift, .. } => {
                shift <= MAX_ANCHORED_SHIFT
            }
        }
    }
}

/// A set of byte values, as a 256-bit map.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ByteSet([u64; 4]);

impl ByteSet {
    fn empty() -> Self {
        ByteSet([0; 4])
    }
    fn insert_masked(&mut self, value: u8, mask: u8) {
        for b in 0..=255u8 {
            if b & mask == value & mask {
                if let Some(w) = self.0.get_mut(usize::from(b >> 6)) {
                    *w |= 1 << (b & 63);
                }
            }
        }
    }
    fn complement(&mut self) {
        for w in &mut self.0 {
            *w = !*w;
        }
    }
    /// Whether `b` is in the set.
    #[inline]
    pub fn contains(&self, b: u8) -> bool {
        // The index is at most 3 because b >> 6 < 4.
        self.0
            .get(usize::from(b >> 6))
            .is_some_and(|w| w >> (b & 63) & 1 == 1)
    }
}

/// One member of a multi-byte alternative: `(value, mask)` per byte.
pub type Member = Box<[(u8, u8)]>;

/// One item of a segment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Tok {
    /// Exact bytes.
    Lit(Box<[u8]>),
    /// One byte compared under a mask (`??` has mask 0, `a?` mask 0xf0, `?a` mask 0x0f).
    Masked {
        /// The expected value (bits outside the mask are zero).
        value: u8,
        /// Which bits are compared.
        mask: u8,
    },
    /// One byte from a set (single-byte alternatives, negated or not).
    Set(Box<ByteSet>),
    /// A fixed-width alternative of several bytes: one of `members` matches (or, when
    /// negated, none does).
    Alt {
        /// Each member: `(value, mask)` per byte, all of the same length.
        members: Box<[Member]>,
        /// `!(…)`.
        negated: bool,
    },
}

impl Tok {
    /// How many bytes this item covers.
    pub fn len(&self) -> usize {
        match self {
            Tok::Lit(b) => b.len(),
            Tok::Masked { .. } | Tok::Set(_) => 1,
            Tok::Alt { members, .. } => members.first().map_or(0, |m| m.len()),
        }
    }

    /// Whether the item covers no bytes (never true for a parsed signature).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `window` (exactly `self.len()` bytes) matches this item.
    #[inline]
    pub fn matches(&self, window: &[u8]) -> bool {
        match self {
            Tok::Lit(b) => window == &b[..],
            Tok::Masked { value, mask } => window.first().is_some_and(|c| c & mask == *value),
            Tok::Set(set) => window.first().is_some_and(|c| set.contains(*c)),
            Tok::Alt { members, negated } => {
                let any = members.iter().any(|m| {
                    m.len() == window.len()
                        && m.iter().zip(window).all(|(&(v, mk), &c)| c & mk == v)
                });
                any != *negated
            }
        }
    }
}

/// A fixed-length run of items.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Segment {
    toks: Box<[Tok]>,
    len: usize,
}

impl Segment {
    fn new(toks: Vec<Tok>) -> Self {
        let len = toks.iter().map(Tok::len).sum();
        Segment {
            toks: toks.into_boxed_slice(),
            len,
        }
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the segment is empty (never true for a parsed signature).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The items.
    pub fn toks(&self) -> &[Tok] {
        &self.toks
    }
    /// Whether the segment matches `data` starting at `pos`.
    #[inline]
    pub fn matches_at(&self, data: &[u8], pos: usize) -> bool {
        let Some(end) = pos.checked_add(self.len) else {
            return false;
        };
        let Some(mut window) = data.get(pos..end) else {
            return false;
        };
        for t in &self.toks {
            let (head, rest) = window.split_at(t.len().min(window.len()));
            if !t.matches(head) {
                return false;
            }
            window = rest;
        }
        true
    }
}

/// A variable jump between two segments: `min..=max` bytes (`max` `None` = unbounded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Gap {
    /// Fewest bytes skipped.
    pub min: u32,
    /// Most bytes skipped; `None` for `*` and `{n-}`.
    pub max: Option<u32>,
}

/// A compiled hex signature: segments separated by gaps.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    segs: Box<[Segment]>,
    gaps: Box<[Gap]>,
}

impl Pattern {
    /// The segments, in order (never empty).
    pub fn segments(&self) -> &[Segment] {
        &self.segs
    }
    /// `gaps()[i]` separates segment `i` from segment `i + 1`.
    pub fn gaps(&self) -> &[Gap] {
        &self.gaps
    }
    /// Fewest bytes a match covers.
    pub fn min_len(&self) -> usize {
        self.segs.iter().map(Segment::len).sum::<usize>()
            + self.gaps.iter().map(|g| g.min as usize).sum::<usize>()
    }

    /// Whether some segment holds two fixed bytes in a row (an atom to anchor on).
    pub fn has_literal_run(&self) -> bool {
        self.segs.iter().any(|s| {
            s.toks
                .iter()
                .any(|t| matches!(t, Tok::Lit(b) if b.len() >= 2))
        })
    }

    /// The best literal atom: `(segment, offset in segment, bytes)`, preferring long runs of
    /// rare bytes. `None` when no segment holds two fixed bytes in a row.
    pub fn best_atom(&self) -> Option<(usize, usize, &[u8])> {
        let mut best: Option<(u32, usize, usize, &[u8])> = None;
        for (si, seg) in self.segs.iter().enumerate() {
            let mut off = 0;
            for t in &seg.toks {
                if let Tok::Lit(bytes) = t {
                    if bytes.len() >= 2 {
                        let w = bytes.len().min(MAX_ATOM);
                        // Sliding sum of byte weights over windows of w bytes.
                        let mut score: u32 = bytes.iter().take(w).map(|&b| byte_weight(b)).sum();
                        for start in 0..=bytes.len() - w {
                            if start > 0 {
                                let out = bytes.get(start - 1).map_or(0, |&b| byte_weight(b));
                                let inn = bytes.get(start + w - 1).map_or(0, |&b| byte_weight(b));
                                score = score - out + inn;
                            }
                            if best.as_ref().is_none_or(|b| score > b.0) {
                                if let Some(cand) = bytes.get(start..start + w) {
                                    best = Some((score, si, off + start, cand));
                                }
                            }
                        }
                    }
                }
                off += t.len();
            }
        }
        best.map(|(_, si, off, b)| (si, off, b))
    }
}

/// How rare a byte is likely to be in files: 0x00 and padding bytes score low.
fn byte_weight(b: u8) -> u32 {
    match b {
        0x00 => 1,
        0xff | 0xcc | 0x90 => 3,
        0x20 | 0x0a | 0x0d | 0x09 => 4,
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => 6,
        _ => 8,
    }
}

/// One parsed body signature (possibly one of several expansions of the same line).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BodySig {
    /// Signature name.
    pub name: String,
    /// Which files it applies to.
    pub target: Target,
    /// Where it must start.
    pub offset: Offset,
    /// The compiled hex pattern.
    pub pattern: Pattern,
}

/// Parse one `.ndb` line. `Parsed::Skip` is a valid line of a form not supported yet.
pub(crate) fn parse_ndb_line(
    line: &[u8],
    flevel: Flevel,
) -> Result<Parsed<Vec<BodySig>>, LineError> {
    let text = std::str::from_utf8(line).map_err(|e| {
        LineError::new(
            e.valid_up_to(),
            ErrorCode::NotUtf8,
            "body signature is not ASCII",
        )
    })?;
    let fields: Vec<(usize, &str)> = split_fields(text);
    if fields.len() < 4 || fields.len() > 6 {
        return Err(LineError::new(
            0,
            ErrorCode::FieldCount,
            format!(
                "expected Name:TargetType:Offset:HexSig[:MinFL[:MaxFL]], found {} field(s)",
                fields.len()
            ),
        ));
    }
    let field = |i: usize| fields.get(i).copied().unwrap_or((text.len(), ""));
    let (_, name) = field(0);
    crate::hash::check_name(name)?;
    if let Some(skip) = parse_flevel(&fields, 4, flevel)? {
        return Ok(Parsed::Skip(skip));
    }
    let (tcol, ttext) = field(1);
    let target = match ttext.parse::<u32>() {
        Ok(0) => Target::Any,
        Ok(1) => Target::Pe,
        Ok(6) => Target::Elf,
        Ok(9) => Target::MachO,
        Ok(2..=14) => {
            return Ok(Parsed::Skip(
                "body signatures for target types other than 0, 1, 6, 9",
            ))
        }
        _ => {
            return Err(LineError::new(
                tcol,
                ErrorCode::BadTargetType,
                format!("target type {ttext:?} is not a number from 0 to 14"),
            ))
        }
    };
    let (ocol, otext) = field(2);
    let offset = match parse_offset(otext) {
        Ok(Some(o)) => o,
        Ok(None) => {
            return Ok(Parsed::Skip(
                "body signatures with EP/section-relative offsets",
            ))
        }
        Err(e) => return Err(e.shifted(ocol)),
    };
    let (hcol, hex) = field(3);
    let patterns = match parse_hex(hex) {
        Ok(HexOutcome::Patterns(p)) => p,
        Ok(HexOutcome::Unsupported(why)) => return Ok(Parsed::Skip(why)),
        Err(e) => return Err(e.shifted(hcol)),
    };
    let mut sigs = Vec::with_capacity(patterns.len());
    for pattern in patterns {
        if !offset.is_anchored() && !pattern.has_literal_run() {
            return Err(LineError::new(
                hcol,
                ErrorCode::BadPattern,
                "a floating signature needs at least two fixed bytes in a row to anchor on",
            ));
        }
        sigs.push(BodySig {
            name: name.to_owned(),
            target,
            offset,
            pattern,
        });
    }
    Ok(Parsed::Sig(sigs))
}

/// Split on `:` and keep each field's starting column.
pub(crate) fn split_fields(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if c == ':' {
            out.push((start, &text[start..i]));
            start = i + 1;
        }
    }
    out.push((start, &text[start..]));
    out
}

fn parse_u64(s: &str, col: usize, code: ErrorCode, what: &str) -> Result<u64, LineError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(LineError::new(
            col,
            code,
            format!("{what} {s:?} is not a decimal number"),
        ));
    }
    s.parse::<u64>()
        .map_err(|_| LineError::new(col, code, format!("{what} {s:?} is out of range")))
}

/// `Ok(None)` for valid offsets of forms not supported yet (EP+n, Sx+n, SEx, SL+n, VI, $n).
fn parse_offset(s: &str) -> Result<Option<Offset>, LineError> {
    if s == "*" {
        return Ok(Some(Offset::Any));
    }
    let (base, shift_col, shift) = match s.split_once(',') {
        Some((b, sh)) => {
            let v = parse_u64(sh, b.len() + 1, ErrorCode::BadOffset, "offset shift")?;
            let v = u32::try_from(v)
                .ok()
                .filter(|v| *v <= MAX_JUMP)
                .ok_or_else(|| {
                    LineError::new(
                        b.len() + 1,
                        ErrorCode::BadOffset,
                        format!("offset shift {v} exceeds {MAX_JUMP}"),
                    )
                })?;
            (b, b.len() + 1, v)
        }
        None => (s, 0, 0),
    };
    let _ = shift_col;
    if let Some(n) = base.strip_prefix("EOF-") {
        let back = parse_u64(n, 4, ErrorCode::BadOffset, "EOF offset")?;
        return Ok(Some(Offset::FromEof { back, shift }));
    }
    let pe_like = base.starts_with("EP+")
        || base.starts_with("EP-")
        || base.starts_with("SL+")
        || base.starts_with("SE")
        || base == "VI"
        || (base.starts_with('S') && base[1..].contains('+'))
        || base.starts_with('$');
    if pe_like {
        // Validate the numeric parts loosely: the form is recognised, its semantics are not
        // implemented yet.
        return Ok(None);
    }
    let start = parse_u64(base, 0, ErrorCode::BadOffset, "offset")?;
    Ok(Some(Offset::Absolute { start, shift }))
}

/// What a hex signature parses to.
enum HexOutcome {
    Patterns(Vec<Pattern>),
    Unsupported(&'static str),
}

/// One parsed element before segmentation.
#[derive(Debug, Clone)]
enum Item {
    Byte(u8, u8),
    Gap(Gap),
    /// Alternatives: each member is `(value, mask)` bytes.
    Alt(Vec<Vec<(u8, u8)>>, bool),
}

/// Parse a byte position (two characters) at `i`: hex byte, `??`, `a?` or `?a`.
fn parse_pair(s: &[u8], i: usize) -> Result<(u8, u8), LineError> {
    let (Some(&a), Some(&b)) = (s.get(i), s.get(i + 1)) else {
        return Err(LineError::new(
            i,
            ErrorCode::BadHex,
            "incomplete byte: hex digits come in pairs",
        ));
    };
    match (a, b, crate::hash::hex_digit(a), crate::hash::hex_digit(b)) {
        (_, _, Some(h), Some(l)) => Ok(((h << 4) | l, 0xff)),
        (b'?', b'?', _, _) => Ok((0, 0)),
        (_, b'?', Some(h), _) => Ok((h << 4, 0xf0)),
        (b'?', _, _, Some(l)) => Ok((l, 0x0f)),
        _ => {
            let bad = if crate::hash::hex_digit(a).is_none() && a != b'?' {
                i
            } else {
                i + 1
            };
            Err(LineError::new(
                bad,
                ErrorCode::BadHex,
                format!(
                    "{:?} is not a hex digit or '?'",
                    char::from(*s.get(bad).unwrap_or(&b'?'))
                ),
            ))
        }
    }
}

fn parse_jump(body: &str, col: usize) -> Result<Gap, LineError> {
    let num = |t: &str, c: usize| -> Result<u32, LineError> {
        let v = parse_u64(t, c, ErrorCode::BadJump, "jump bound")?;
        u32::try_from(v)
            .ok()
            .filter(|v| *v <= MAX_JUMP)
            .ok_or_else(|| {
                LineError::new(
                    c,
                    ErrorCode::BadJump,
                    format!("jump bound {v} exceeds {MAX_JUMP}"),
                )
            })
    };
    let gap = match body.split_once('-') {
        None => {
            let n = num(body, col)?;
            Gap {
                min: n,
                max: Some(n),
            }
        }
        Some(("", m)) => Gap {
            min: 0,
            max: Some(num(m, col + 1)?),
        },
        Some((n, "")) => Gap {
            min: num(n, col)?,
            max: None,
        },
        Some((n, m)) => {
            let lo = num(n, col)?;
            let hi = num(m, col + n.len() + 1)?;
            if lo > hi {
                return Err(LineError::new(
                    col,
                    ErrorCode::BadJump,
                    format!("jump {{{lo}-{hi}}} has min above max"),
                ));
            }
            Gap {
                min: lo,
                max: Some(hi),
            }
        }
    };
    Ok(gap)
}

fn parse_hex(hex: &str) -> Result<HexOutcome, LineError> {
    let s = hex.as_bytes();
    if s.is_empty() {
        return Err(LineError::new(
            0,
            ErrorCode::BadPattern,
            "empty hex signature",
        ));
    }
    let mut items: Vec<Item> = Vec::new();
    let mut i = 0;
    while let Some(&c) = s.get(i) {
        match c {
            b'*' => {
                items.push(Item::Gap(Gap { min: 0, max: None }));
                i += 1;
            }
            b'{' | b'[' => {
                let close = if c == b'{' { b'}' } else { b']' };
                let Some(end) = s
                    .iter()
                    .skip(i + 1)
                    .position(|&x| x == close)
                    .map(|p| p + i + 1)
                else {
                    return Err(LineError::new(
                        i,
                        ErrorCode::Unbalanced,
                        format!("'{}' is never closed", char::from(c)),
                    ));
                };
                let body = &hex[i + 1..end];
                if body.contains(['{', '[', '(', ')', '*']) {
                    return Err(LineError::new(
                        i,
                        ErrorCode::Unbalanced,
                        "nested or unclosed jump",
                    ));
                }
                if c == b'[' && !body.contains('-') {
                    return Err(LineError::new(i, ErrorCode::BadJump, "[x-y] needs a range"));
                }
                items.push(Item::Gap(parse_jump(body, i + 1)?));
                i = end + 1;
            }
            b'}' | b']' | b')' | b'|' => {
                return Err(LineError::new(
                    i,
                    ErrorCode::Unbalanced,
                    format!("unexpected '{}'", char::from(c)),
                ));
            }
            b'!' | b'(' => {
                let negated = c == b'!';
                let open = if negated { i + 1 } else { i };
                if s.get(open) != Some(&b'(') {
                    return Err(LineError::new(
                        i,
                        ErrorCode::BadHex,
                        "'!' must be followed by '('",
                    ));
                }
                let Some(end) = s
                    .iter()
                    .skip(open + 1)
                    .position(|&x| x == b')')
                    .map(|p| p + open + 1)
                else {
                    return Err(LineError::new(
                        open,
                        ErrorCode::Unbalanced,
                        "'(' is never closed",
                    ));
                };
                let body = s.get(open + 1..end).unwrap_or(&[]);
                if matches!(body, b"B" | b"L" | b"W") {
                    return Ok(HexOutcome::Unsupported(
                        "body signatures with (B)/(L)/(W) anchors",
                    ));
                }
                if body.contains(&b'(') {
                    return Err(LineError::new(
                        open,
                        ErrorCode::Unbalanced,
                        "nested '(' in alternatives",
                    ));
                }
                let mut members = Vec::new();
                let mut start = open + 1;
                for part in body.split(|&x| x == b'|') {
                    if part.is_empty() {
                        return Err(LineError::new(
                            start,
                            ErrorCode::BadPattern,
                            "empty alternative",
                        ));
                    }
                    if part.iter().any(|&x| matches!(x, b'*' | b'{' | b'[')) {
                        return Ok(HexOutcome::Unsupported(
                            "body signatures with jumps inside alternatives",
                        ));
                    }
                    let mut m = Vec::with_capacity(part.len() / 2);
                    let mut j = 0;
                    while j < part.len() {
                        m.push(parse_pair(s, start + j)?);
                        j += 2;
                    }
                    members.push(m);
                    start += part.len() + 1;
                }
                if negated
                    && members
                        .iter()
                        .any(|m| m.len() != members.first().map_or(0, Vec::len))
                {
                    return Err(LineError::new(
                        i,
                        ErrorCode::BadPattern,
                        "negated alternatives must all have the same length",
                    ));
                }
                items.push(Item::Alt(members, negated));
                i = end + 1;
            }
            _ => {
                let (v, m) = parse_pair(s, i)?;
                items.push(Item::Byte(v, m));
                i += 2;
            }
        }
    }
    let varlen = |i: &Item| matches!(i, Item::Alt(m, false) if m.iter().any(|x| x.len() != m.first().map_or(0, Vec::len)));
    if !items.iter().any(varlen) {
        return Ok(HexOutcome::Patterns(vec![segment(items)?]));
    }
    // Expand variable-length alternatives into several item lists.
    let mut lists: Vec<Vec<Item>> = vec![Vec::new()];
    for item in items {
        match item {
            Item::Alt(members, negated)
                if !negated
                    && members
                        .iter()
                        .any(|m| m.len() != members.first().map_or(0, Vec::len)) =>
            {
                if lists.len().saturating_mul(members.len()) > MAX_EXPANSION {
                    return Ok(HexOutcome::Unsupported(
                        "body signatures whose alternatives expand to more than 64 patterns",
                    ));
                }
                let mut next = Vec::with_capacity(lists.len() * members.len());
                for l in &lists {
                    for m in &members {
                        let mut l2 = l.clone();
                        l2.extend(m.iter().map(|&(v, mk)| Item::Byte(v, mk)));
                        next.push(l2);
                    }
                }
                lists = next;
            }
            other => lists.iter_mut().for_each(|l| l.push(other.clone())),
        }
    }
    let mut out = Vec::with_capacity(lists.len());
    for l in lists {
        out.push(segment(l)?);
    }
    Ok(HexOutcome::Patterns(out))
}

/// Group items into segments and gaps.
fn segment(items: Vec<Item>) -> Result<Pattern, LineError> {
    let mut segs = Vec::new();
    let mut gaps: Vec<Gap> = Vec::new();
    let mut toks: Vec<Tok> = Vec::new();
    let mut lit: Vec<u8> = Vec::new();
    let mut pending_gap: Option<Gap> = None;
    let flush_lit = |toks: &mut Vec<Tok>, lit: &mut Vec<u8>| {
        if !lit.is_empty() {
            toks.push(Tok::Lit(std::mem::take(lit).into_boxed_slice()));
        }
    };
    for item in items {
        if !matches!(item, Item::Gap(_)) {
            if let Some(g) = pending_gap.take() {
                if toks.is_empty() && lit.is_empty() && segs.is_empty() {
                    return Err(LineError::new(
                        0,
                        ErrorCode::BadPattern,
                        "a signature cannot start with a jump",
                    ));
                }
                flush_lit(&mut toks, &mut lit);
                segs.push(Segment::new(std::mem::take(&mut toks)));
                gaps.push(g);
            }
        }
        match item {
            Item::Byte(v, 0xff) => lit.push(v),
            Item::Byte(v, m) => {
                flush_lit(&mut toks, &mut lit);
                toks.push(Tok::Masked {
                    value: v & m,
                    mask: m,
                });
            }
            Item::Alt(members, negated) => {
                flush_lit(&mut toks, &mut lit);
                if members.first().map_or(0, Vec::len) == 1 {
                    let mut set = ByteSet::empty();
                    for m in &members {
                        for &(v, mk) in m {
                            set.insert_masked(v, mk);
                        }
                    }
                    if negated {
                        set.complement();
                    }
                    toks.push(Tok::Set(Box::new(set)));
                } else {
                    let members = members
                        .into_iter()
                        .map(|m| {
                            m.into_iter()
                                .map(|(v, mk)| (v & mk, mk))
                                .collect::<Box<[_]>>()
                        })
                        .collect();
                    toks.push(Tok::Alt { members, negated });
                }
            }
            Item::Gap(g) => {
                pending_gap = Some(match pending_gap {
                    None => g,
                    Some(p) => Gap {
                        min: p.min.saturating_add(g.min).min(MAX_JUMP),
                        max: p
                            .max
                            .zip(g.max)
                            .map(|(a, b)| a.saturating_add(b).min(MAX_JUMP)),
                    },
                });
            }
        }
    }
    if pending_gap.is_some() {
        return Err(LineError::new(
            0,
            ErrorCode::BadPattern,
            "a signature cannot end with a jump",
        ));
    }
    flush_lit(&mut toks, &mut lit);
    if toks.is_empty() {
        return Err(LineError::new(
            0,
            ErrorCode::BadPattern,
            "empty hex signature",
        ));
    }
    segs.push(Segment::new(toks));
    Ok(Pattern {
        segs: segs.into_boxed_slice(),
        gaps: gaps.into_boxed_slice(),
    })
}

/// Parse a bare hex signature (no name, target or offset). For tests and tools.
pub fn parse_pattern(hex: &str) -> Result<Vec<Pattern>, crate::ParseError> {
    match parse_hex(hex) {
        Ok(HexOutcome::Patterns(p)) => Ok(p),
        Ok(HexOutcome::Unsupported(why)) => {
            Err(
                LineError::new(0, ErrorCode::BadPattern, format!("unsupported: {why}"))
                    .at("<pattern>", 1),
            )
        }
        Err(e) => Err(e.at("<pattern>", 1)),
    }
}
