//! The clamd protocol's pure parts, without I/O: splitting command lines off a byte buffer
//! ([`split_command`], [`legacy_command`]), naming the command ([`parse_command`]), and the
//! `INSTREAM` chunk framing ([`ChunkDecoder`]). `svm serve`'s clamd listener feeds them the
//! bytes it reads; the fuzz target `clamd_protocol` feeds them arbitrary bytes.
//!
//! A client is untrusted: nothing here panics, a command line is at most [`MAX_COMMAND`]
//! bytes, and a length field is only a promise: the decoder never allocates, and refuses a
//! chunk that would take the stream over its cap before any of its bytes arrive.
//!
//! ```
//! use hypervisor_api::clamd::{parse_command, split_command, ChunkDecoder, Command, Delim, Step};
//!
//! let buf = b"zINSTREAM\0\0\0\0\x03abc\0\0\0\0";
//! let (line, used) = split_command(buf).unwrap().unwrap();
//! assert_eq!(line.delim, Delim::Nul);
//! assert_eq!(parse_command(line.body), Ok(Command::InStream));
//!
//! let mut rest = &buf[used..];
//! let mut dec = ChunkDecoder::new(1024);
//! let mut data = Vec::new();
//! loop {
//!     let (step, n) = dec.step(rest).unwrap();
//!     rest = &rest[n..];
//!     match step {
//!         Step::Data(d) => data.extend_from_slice(d),
//!         Step::End => break,
//!         Step::Chunk(_) | Step::NeedMore => {}
//!     }
//! }
//! assert_eq!(data, b"abc");
//! ```

/// The longest command line accepted, without its prefix and terminator (clamd: a path of up
/// to `PATH_MAX` and the command).
pub const MAX_COMMAND: usize = 8192;

/// How a command (and its reply) ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delim {
    /// Prefix `z`: NUL.
    Nul,
    /// Prefix `n`, or no prefix: newline.
    Newline,
}

impl Delim {
    /// The terminating byte.
    pub fn byte(self) -> u8 {
        match self {
            Delim::Nul => 0,
            Delim::Newline => b'\n',
        }
    }
}

/// One command line split off the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line<'a> {
    /// How it (and its reply) ends.
    pub delim: Delim,
    /// The command without prefix and terminator.
    pub body: &'a [u8],
}

/// Why no command line could be split off the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// No terminator within [`MAX_COMMAND`] bytes.
    #[error("a clamd command longer than {MAX_COMMAND} bytes")]
    TooLong,
}

/// The prefix of a buffer starting with `first`: its terminator and its length.
fn prefix(first: u8) -> (Delim, usize) {
    match first {
        b'z' => (Delim::Nul, 1),
        b'n' => (Delim::Newline, 1),
        _ => (Delim::Newline, 0),
    }
}

/// The next command line at the front of `buf` (`z…\0`, `n…\n` or `…\n`) and how many bytes
/// it took; `Ok(None)` while it is incomplete.
pub fn split_command(buf: &[u8]) -> Result<Option<(Line<'_>, usize)>, FrameError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let (delim, skip) = prefix(first);
    let rest = buf.get(skip..).unwrap_or(&[]);
    // Only the first MAX_COMMAND + 1 bytes can hold the terminator of a command in bounds.
    let window = rest.get(..MAX_COMMAND + 1).unwrap_or(rest);
    match window.iter().position(|&b| b == delim.byte()) {
        Some(end) => {
            let body = rest.get(..end).unwrap_or(&[]);
            Ok(Some((Line { delim, body }, skip + end + 1)))
        }
        None if rest.len() > MAX_COMMAND => Err(FrameError::TooLong),
        None => Ok(None),
    }
}

/// An unprefixed command may come without its newline (old clients): at a pause or at the
/// end of the input, what arrived is the command. `Some` when `buf` is such a command.
pub fn legacy_command(buf: &[u8]) -> Option<&[u8]> {
    let first = *buf.first()?;
    (prefix(first).1 == 0 && buf.len() <= MAX_COMMAND).then_some(buf)
}

/// The `SCAN`-like commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanMode {
    /// `SCAN`: stop at the first infected file.
    Scan,
    /// `CONTSCAN`: every file.
    ContScan,
    /// `MULTISCAN`: every file, several at once.
    MultiScan,
    /// `ALLMATCHSCAN`: every match of the first infected file.
    AllMatchScan,
}

impl ScanMode {
    /// The command's name.
    pub fn name(self) -> &'static str {
        match self {
            ScanMode::Scan => "SCAN",
            ScanMode::ContScan => "CONTSCAN",
            ScanMode::MultiScan => "MULTISCAN",
            ScanMode::AllMatchScan => "ALLMATCHSCAN",
        }
    }
}

/// A clamd command.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// `PING`.
    Ping,
    /// `VERSION`.
    Version,
    /// `VERSIONCOMMANDS`.
    VersionCommands,
    /// `STATS`.
    Stats,
    /// `RELOAD`.
    Reload,
    /// `SHUTDOWN`.
    Shutdown,
    /// `QUIT`.
    Quit,
    /// `END` (of a session).
    End,
    /// `IDSESSION`.
    IdSession,
    /// `INSTREAM`: chunks follow ([`ChunkDecoder`]).
    InStream,
    /// `FILDES`: a descriptor follows.
    Fildes,
    /// `SCAN`, `CONTSCAN`, `MULTISCAN` or `ALLMATCHSCAN` of a path (everything after the
    /// first space, as UTF-8 with invalid bytes replaced).
    Scan {
        /// Which one.
        mode: ScanMode,
        /// The path.
        path: String,
    },
}

/// Why a command line is not a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// An unknown command, or a known one with a missing or unexpected argument.
    #[error("UNKNOWN COMMAND")]
    Unknown,
}

/// The command of a line's body (without prefix and terminator).
pub fn parse_command(body: &[u8]) -> Result<Command, ParseError> {
    let text = String::from_utf8_lossy(body);
    let (verb, arg) = match text.split_once(' ') {
        Some((v, a)) => (v, Some(a)),
        None => (&*text, None),
    };
    let mode = match verb {
        "SCAN" => Some(ScanMode::Scan),
        "CONTSCAN" => Some(ScanMode::ContScan),
        "MULTISCAN" => Some(ScanMode::MultiScan),
        "ALLMATCHSCAN" => Some(ScanMode::AllMatchScan),
        _ => None,
    };
    if let Some(mode) = mode {
        let path = arg.ok_or(ParseError::Unknown)?;
        return Ok(Command::Scan {
            mode,
            path: path.to_owned(),
        });
    }
    if arg.is_some() {
        return Err(ParseError::Unknown);
    }
    Ok(match verb {
        "PING" => Command::Ping,
        "VERSION" => Command::Version,
        "VERSIONCOMMANDS" => Command::VersionCommands,
        "STATS" => Command::Stats,
        "RELOAD" => Command::Reload,
        "SHUTDOWN" => Command::Shutdown,
        "QUIT" => Command::Quit,
        "END" => Command::End,
        "IDSESSION" => Command::IdSession,
        "INSTREAM" => Command::InStream,
        "FILDES" => Command::Fildes,
        _ => return Err(ParseError::Unknown),
    })
}

/// Why an `INSTREAM` stream was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkError {
    /// A chunk would take the stream over its cap.
    #[error("INSTREAM size limit exceeded")]
    TooLarge,
}

/// What [`ChunkDecoder::step`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step<'a> {
    /// Everything given was taken; more input is needed.
    NeedMore,
    /// A chunk of this many bytes (more than 0, within the cap) begins.
    Chunk(u32),
    /// Bytes of the current chunk.
    Data(&'a [u8]),
    /// The zero-length chunk: the stream is complete.
    End,
}

/// Where the decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a length: the bytes so far and how many.
    Length([u8; 4], usize),
    /// Inside a chunk, with this many bytes left.
    Data(u32),
    /// The stream ended; nothing more is taken.
    Done,
    /// The stream was refused; nothing more is taken.
    Refused,
}

/// An incremental decoder of `INSTREAM` chunks (a 4-byte big-endian length, then that many
/// bytes; a zero length ends the stream), capped at `max` bytes of data in all. Input can be
/// given in pieces of any size: the steps yield the same bytes whatever the split.
#[derive(Debug, Clone)]
pub struct ChunkDecoder {
    max: u64,
    received: u64,
    state: State,
}

impl ChunkDecoder {
    /// A decoder of a stream of at most `max` bytes of data.
    pub fn new(max: u64) -> Self {
        ChunkDecoder {
            max,
            received: 0,
            state: State::Length([0; 4], 0),
        }
    }

    /// The data bytes announced so far (every chunk begun counts in full).
    pub fn announced(&self) -> u64 {
        self.received
    }

    /// Whether the stream has ended or was refused.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done | State::Refused)
    }

    /// Take what comes next from `input`; the step and how many bytes of `input` it took.
    /// After [`Step::End`] or an error nothing more is taken (the same answer again).
    pub fn step<'a>(&mut self, input: &'a [u8]) -> Result<(Step<'a>, usize), ChunkError> {
        match self.state {
            State::Done => Ok((Step::End, 0)),
            State::Refused => Err(ChunkError::TooLarge),
            State::Length(mut have, got) => {
                let want = 4usize.saturating_sub(got);
                let take = want.min(input.len());
                for (slot, &b) in have.iter_mut().skip(got).zip(input.iter().take(take)) {
                    *slot = b;
                }
                if take < want {
                    self.state = State::Length(have, got + take);
                    return Ok((Step::NeedMore, take));
                }
                let n = u32::from_be_bytes(have);
                if n == 0 {
                    self.state = State::Done;
                    return Ok((Step::End, take));
                }
                let total = self.received.saturating_add(u64::from(n));
                if total > self.max {
                    self.state = State::Refused;
                    return Err(ChunkError::TooLarge);
                }
                self.received = total;
                self.state = State::Data(n);
                Ok((Step::Chunk(n), take))
            }
            State::Data(left) => {
                let take = usize::try_from(left).map_or(input.len(), |l| l.min(input.len()));
                let Some(bytes) = input.get(..take).filter(|b| !b.is_empty()) else {
                    return Ok((Step::NeedMore, 0));
                };
                // `take` <= `left`, so it fits in a u32.
                let left = left.saturating_sub(u32::try_from(take).unwrap_or(u32::MAX));
                self.state = if left == 0 {
                    State::Length([0; 4], 0)
                } else {
                    State::Data(left)
                };
                Ok((Step::Data(bytes), take))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    /// Decode `input` fed in pieces of the given sizes (cycled); the data, the bytes taken
    /// and how it ended (None: incomplete).
    fn decode(input: &[u8], max: u64, pieces: &[usize]) -> (Vec<u8>, usize, Option<bool>) {
        let mut dec = ChunkDecoder::new(max);
        let (mut data, mut used, mut fed) = (Vec::new(), 0usize, 0usize);
        for &p in pieces.iter().cycle() {
            fed = (fed + p.max(1)).min(input.len());
            loop {
                match dec.step(&input[used..fed]) {
                    Ok((Step::End, n)) => return (data, used + n, Some(true)),
                    Err(_) => return (data, used, Some(false)),
                    Ok((Step::NeedMore, n)) => {
                        used += n;
                        break;
                    }
                    Ok((Step::Data(d), n)) => {
                        data.extend_from_slice(d);
                        used += n;
                    }
                    Ok((Step::Chunk(_), n)) => used += n,
                }
            }
            if fed == input.len() {
                return (data, used, None);
            }
        }
        unreachable!()
    }

    fn chunked(chunks: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&(c.len() as u32).to_be_bytes());
            out.extend_from_slice(c);
        }
        out.extend_from_slice(&[0; 4]);
        out
    }

    #[test]
    fn prefixes_pick_the_terminator() {
        let (l, n) = split_command(b"zPING\0rest").unwrap().unwrap();
        assert_eq!((l.delim, l.body, n), (Delim::Nul, &b"PING"[..], 6));
        let (l, n) = split_command(b"nVERSION\n").unwrap().unwrap();
        assert_eq!((l.delim, l.body, n), (Delim::Newline, &b"VERSION"[..], 9));
        let (l, n) = split_command(b"PING\nPING\n").unwrap().unwrap();
        assert_eq!((l.delim, l.body, n), (Delim::Newline, &b"PING"[..], 5));
        // A newline does not end a z-command, nor NUL an n-command.
        assert_eq!(split_command(b"zPING\n"), Ok(None));
        assert_eq!(split_command(b"nPING\0"), Ok(None));
        assert_eq!(split_command(b""), Ok(None));
        let (l, _) = split_command(b"z\0").unwrap().unwrap();
        assert_eq!(l.body, b"");
    }

    #[test]
    fn commands_are_bounded() {
        let mut long = vec![b'z'];
        long.extend(std::iter::repeat_n(b'A', MAX_COMMAND));
        assert_eq!(split_command(&long), Ok(None));
        long.push(0);
        let (l, n) = split_command(&long).unwrap().unwrap();
        assert_eq!((l.body.len(), n), (MAX_COMMAND, MAX_COMMAND + 2));
        long.insert(1, b'A');
        assert_eq!(split_command(&long), Err(FrameError::TooLong));
        let unprefixed = vec![b'A'; MAX_COMMAND + 1];
        assert_eq!(split_command(&unprefixed), Err(FrameError::TooLong));
        assert_eq!(legacy_command(&unprefixed), None);
        assert_eq!(
            legacy_command(&unprefixed[1..]).map(<[u8]>::len),
            Some(MAX_COMMAND)
        );
    }

    #[test]
    fn only_unprefixed_commands_are_legacy() {
        assert_eq!(legacy_command(b"PING"), Some(&b"PING"[..]));
        assert_eq!(legacy_command(b"zPING"), None);
        assert_eq!(legacy_command(b"nPING"), None);
        assert_eq!(legacy_command(b""), None);
    }

    #[test]
    fn command_names_and_arguments() {
        assert_eq!(parse_command(b"PING"), Ok(Command::Ping));
        assert_eq!(
            parse_command(b"VERSIONCOMMANDS"),
            Ok(Command::VersionCommands)
        );
        assert_eq!(parse_command(b"IDSESSION"), Ok(Command::IdSession));
        assert_eq!(parse_command(b"INSTREAM"), Ok(Command::InStream));
        assert_eq!(
            parse_command(b"MULTISCAN /tmp/a b"),
            Ok(Command::Scan {
                mode: ScanMode::MultiScan,
                path: "/tmp/a b".into()
            })
        );
        assert_eq!(
            parse_command(b"SCAN \xff"),
            Ok(Command::Scan {
                mode: ScanMode::Scan,
                path: "\u{fffd}".into()
            })
        );
        for bad in [
            &b"SCAN"[..],
            b"PING x",
            b"PING ",
            b"ping",
            b"",
            b" PING",
            b"IDSESSION 1",
        ] {
            assert_eq!(parse_command(bad), Err(ParseError::Unknown), "{bad:?}");
        }
    }

    #[test]
    fn chunks_decode_whatever_the_split() {
        let input = chunked(&[b"hello ", b"w", b"orld"]);
        let whole = decode(&input, 100, &[usize::MAX]);
        assert_eq!(whole, (b"hello world".to_vec(), input.len(), Some(true)));
        for pieces in [&[1][..], &[2, 3], &[5], &[7, 1, 1]] {
            assert_eq!(decode(&input, 100, pieces), whole, "{pieces:?}");
        }
    }

    #[test]
    fn the_cap_is_checked_before_the_data() {
        // Exactly at the cap: accepted.
        let input = chunked(&[b"abc", b"de"]);
        assert_eq!(decode(&input, 5, &[usize::MAX]).2, Some(true));
        // One byte over: refused once the second length is read, its data untouched.
        let (data, used, end) = decode(&input, 4, &[usize::MAX]);
        assert_eq!((data, used, end), (b"abc".to_vec(), 7, Some(false)));
        // A lying length: refused at once, nothing allocated.
        let (data, _, end) = decode(&[0xff, 0xff, 0xff, 0xff, 1, 2], 1 << 20, &[1]);
        assert_eq!((data.len(), end), (0, Some(false)));
    }

    #[test]
    fn truncated_streams_are_incomplete() {
        let input = chunked(&[b"abcdef"]);
        for cut in 0..input.len() {
            let (data, used, end) = decode(&input[..cut], 100, &[3]);
            assert_eq!(end, None, "cut {cut}");
            assert_eq!(used, cut);
            assert!(data.len() <= 6);
        }
    }

    #[test]
    fn nothing_is_taken_after_the_end() {
        let mut dec = ChunkDecoder::new(10);
        assert_eq!(dec.step(&[0, 0, 0, 0, 9]), Ok((Step::End, 4)));
        assert!(dec.is_done());
        assert_eq!(dec.step(&[9]), Ok((Step::End, 0)));
        let mut dec = ChunkDecoder::new(0);
        assert_eq!(dec.step(&[0, 0, 0, 1]), Err(ChunkError::TooLarge));
        assert!(dec.is_done());
        assert_eq!(dec.step(&[0, 0, 0, 0]), Err(ChunkError::TooLarge));
    }
}
