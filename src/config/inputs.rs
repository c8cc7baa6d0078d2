//! Where configuration comes from: files and environment variables, behind one small trait so
//! that validation can be tested on strings. [`System`] is the real process; `load` uses it.

use std::io;
use std::path::{Path, PathBuf};

/// Everything configuration loading reads from outside the process.
pub trait Inputs {
    /// The whole contents of a file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// An environment variable of this process, when set to valid UTF-8.
    fn env(&self, name: &str) -> Option<String>;
    /// Whether `path` is a directory.
    fn is_dir(&self, path: &Path) -> bool;
    /// Whether `path` is a regular file (following links).
    fn is_file(&self, path: &Path) -> bool;
    /// The entries directly inside a directory, in any order.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>>;
    /// How many threads the process may run at once (the default of `server.threads`).
    fn cpus(&self) -> usize;

    /// A file as UTF-8 text.
    fn read_text(&self, path: &Path) -> io::Result<String> {
        String::from_utf8(self.read(path)?)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
    }
}

/// The real file system and environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct System;

impl Inputs for System {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }

    fn is_file(&self, path: &Path) -> bool {
        path.is_file()
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.path()))
            .collect()
    }

    fn cpus(&self) -> usize {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    }
}

/// Files and variables held in memory, for tests.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct Fake {
    pub files: std::collections::BTreeMap<PathBuf, Vec<u8>>,
    pub env: std::collections::BTreeMap<String, String>,
}

#[cfg(test)]
impl Fake {
    /// Add a file (its directories exist implicitly).
    pub fn file(mut self, path: impl Into<PathBuf>, contents: impl Into<Vec<u8>>) -> Self {
        self.files.insert(path.into(), contents.into());
        self
    }

    /// Set an environment variable.
    pub fn var(mut self, name: &str, value: &str) -> Self {
        self.env.insert(name.into(), value.into());
        self
    }
}

/// `a/b/../c` -> `a/c`, as the file system would resolve it (the fake has no links).
#[cfg(test)]
fn lexical(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
impl Inputs for Fake {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.files
            .get(&lexical(path))
            .cloned()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn env(&self, name: &str) -> Option<String> {
        self.env.get(name).cloned()
    }

    fn is_dir(&self, path: &Path) -> bool {
        let path = lexical(path);
        self.files
            .keys()
            .any(|f| f.starts_with(&path) && *f != path)
    }

    fn is_file(&self, path: &Path) -> bool {
        self.files.contains_key(&lexical(path))
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        let path = &lexical(path);
        if !self.is_dir(path) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        let mut out: Vec<PathBuf> = self
            .files
            .keys()
            .filter_map(|f| {
                let rest = f.strip_prefix(path).ok()?;
                rest.components().next().map(|c| path.join(c))
            })
            .collect();
        out.dedup();
        Ok(out)
    }

    fn cpus(&self) -> usize {
        4
    }
}
