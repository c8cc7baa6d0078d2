//! Configuration problems, reported all at once, each naming file, line and key and saying
//! what to change.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based; 0 when the problem is about the file as a whole.
    pub line: usize,
    /// Dotted key path with list indices, e.g. `message.organization_ids[1]`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found while loading a configuration; loading fails if there is any.
#[derive(Debug, Default)]
pub struct Problems {
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        writeln!(
            f,
            "{n} configuration error{}; nothing was started or changed:",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            writeln!(f, "  error: {e}")?;
        }
        for w in &self.warnings {
            writeln!(f, "  warning: {w}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// Collects problems for one file, turning byte spans into line numbers.
pub struct FileDiag<'a> {
    file: &'a Path,
    text: &'a str,
    out: &'a mut Problems,
}

impl<'a> FileDiag<'a> {
    pub fn new(file: &'a Path, text: &'a str, out: &'a mut Problems) -> Self {
        FileDiag { file, text, out }
    }

    pub fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn problem(&self, span: Option<std::ops::Range<usize>>, key: &str, msg: String) -> Problem {
        Problem {
            file: self.file.to_path_buf(),
            line: span.map(|s| self.line_of(s.start)).unwrap_or(0),
            key: key.to_string(),
            message: msg,
        }
    }

    /// An error at the given span (or the whole file when `None`).
    pub fn error(
        &mut self,
        span: impl Into<Option<std::ops::Range<usize>>>,
        key: &str,
        msg: impl Into<String>,
    ) {
        let p = self.problem(span.into(), key, msg.into());
        self.out.errors.push(p);
    }

    /// A warning: reported by `check` and `serve`, never fatal.
    pub fn warn(
        &mut self,
        span: impl Into<Option<std::ops::Range<usize>>>,
        key: &str,
        msg: impl Into<String>,
    ) {
        let p = self.problem(span.into(), key, msg.into());
        self.out.warnings.push(p);
    }

    pub fn error_count(&self) -> usize {
        self.out.errors.len()
    }

    pub fn file(&self) -> &Path {
        self.file
    }
}
