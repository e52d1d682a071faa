//! Errors raised while loading signatures.
//!
//! Every malformed line becomes one [`ParseError`] naming its source, line, column, a stable
//! [`ErrorCode`] and the reason. A load collects all of them before it fails, so a signature
//! writer sees every problem in one run.

use std::fmt;
use std::path::PathBuf;

/// A stable identifier for each kind of signature error.
///
/// The codes (`SIG001` …) never change meaning between releases; scripts may match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The line has too few or too many `:`-separated fields.
    FieldCount,
    /// A hash is not hexadecimal, or its length fits no supported algorithm.
    BadHash,
    /// A file size field is not a number, or is out of range.
    BadSize,
    /// The signature name is empty or holds forbidden characters.
    BadName,
    /// The target type is not a number ClamAV defines.
    BadTargetType,
    /// The offset field cannot be parsed.
    BadOffset,
    /// A hex signature holds a character that is not hex or wildcard syntax.
    BadHex,
    /// An unbalanced `(`, `)`, `{`, `}`, `[` or `]`.
    Unbalanced,
    /// A jump `{n-m}` with inverted or absurd bounds.
    BadJump,
    /// A pattern that is empty, starts or ends with a jump, or has no literal to anchor on.
    BadPattern,
    /// A functionality-level field is not a number.
    BadFlevel,
    /// Text that is not valid UTF-8 where ClamAV requires ASCII.
    NotUtf8,
    /// A `.cvd`/`.cld` container is malformed.
    BadContainer,
    /// A YARA rule failed to compile.
    Yara,
    /// A pattern whose alternatives expand beyond the supported limit.
    TooComplex,
    /// A line longer than the supported maximum.
    LineTooLong,
}

impl ErrorCode {
    /// The stable code, e.g. `SIG007`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::FieldCount => "SIG001",
            ErrorCode::BadHash => "SIG002",
            ErrorCode::BadSize => "SIG003",
            ErrorCode::BadName => "SIG004",
            ErrorCode::BadTargetType => "SIG005",
            ErrorCode::BadOffset => "SIG006",
            ErrorCode::BadHex => "SIG007",
            ErrorCode::Unbalanced => "SIG008",
            ErrorCode::BadJump => "SIG009",
            ErrorCode::BadPattern => "SIG010",
            ErrorCode::BadFlevel => "SIG011",
            ErrorCode::NotUtf8 => "SIG012",
            ErrorCode::BadContainer => "SIG013",
            ErrorCode::Yara => "SIG014",
            ErrorCode::TooComplex => "SIG015",
            ErrorCode::LineTooLong => "SIG016",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One malformed signature line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The file, or `container:member` for a file inside a `.cvd`.
    pub source: String,
    /// 1-based line number.
    pub line: u64,
    /// 1-based byte column where the problem starts.
    pub column: u32,
    /// The stable error code.
    pub code: ErrorCode,
    /// What is wrong, in words.
    pub reason: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: error[{}]: {}",
            self.source, self.line, self.column, self.code, self.reason
        )
    }
}

/// An error local to one line: column (0-based within the line) and reason.
///
/// Parsers return this; the loader adds the source and line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LineError {
    pub(crate) column: usize,
    pub(crate) code: ErrorCode,
    pub(crate) reason: String,
}

impl LineError {
    pub(crate) fn new(column: usize, code: ErrorCode, reason: impl Into<String>) -> Self {
        Self {
            column,
            code,
            reason: reason.into(),
        }
    }

    /// Shift the column by `delta` bytes (for errors found inside a field).
    pub(crate) fn shifted(mut self, delta: usize) -> Self {
        self.column = self.column.saturating_add(delta);
        self
    }

    pub(crate) fn at(self, source: &str, line: u64) -> ParseError {
        ParseError {
            source: source.to_owned(),
            line,
            column: u32::try_from(self.column.saturating_add(1)).unwrap_or(u32::MAX),
            code: self.code,
            reason: self.reason,
        }
    }
}

/// Why a signature load failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// A file or directory could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// One or more lines are malformed (and `skip_invalid` is off).
    #[error("{} malformed signature line(s); the set was refused (use --skip-invalid to load the rest):\n{}", errors.len(), render(errors))]
    Invalid {
        /// Every malformed line, in load order.
        errors: Vec<ParseError>,
    },
    /// Nothing loadable was found.
    #[error("no signatures were loaded from {0}")]
    Empty(String),
    /// The YARA rules could not be built.
    #[error("YARA rules could not be compiled: {0}")]
    Yara(String),
}

fn render(errors: &[ParseError]) -> String {
    let mut s = String::new();
    for e in errors {
        s.push_str("  ");
        s.push_str(&e.to_string());
        s.push('\n');
    }
    s
}
