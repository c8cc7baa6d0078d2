//! Secrets: values that must never reach a log line, an error, a metric, an audit record or
//! `Debug` output (client secrets, private keys, access tokens, session ids).
//!
//! [`Secret`] redacts itself in `Debug` and `Display`; the only way to the bytes is the
//! explicit [`Secret::expose`]. It does not defend against a core dump or a process reading
//! our memory, and it does not zero the heap on drop.

use std::fmt;

/// A string that redacts itself. Equality is constant time ([`Secret::ct_eq`]).
#[derive(Clone, Default)]
pub struct Secret(String);

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        self.ct_eq(other)
    }
}

impl Eq for Secret {}

impl Secret {
    /// Wrap a value that must stay out of logs.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself: call this only where it is sent to its one legitimate destination.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Length in bytes (safe to print: operators use it to see a token arrived).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Constant-time equality, for comparing a presented value with a configured one.
    pub fn ct_eq(&self, other: &Secret) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("hunter2-very-secret");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2-very-secret");
    }

    #[test]
    fn constant_time_equality_matches_value_equality() {
        assert!(Secret::new("a").ct_eq(&Secret::new("a")));
        assert!(!Secret::new("a").ct_eq(&Secret::new("b")));
        assert!(!Secret::new("a").ct_eq(&Secret::new("ab")));
    }
}
