//! Salesforce record ids (organization, action, record ids): the 15-character case-sensitive
//! form and the 18-character form whose 3-character suffix encodes the letter case of the 15.
//!
//! [`SfId`] stores the canonical 15-character form, so the two spellings of one id compare
//! equal and hash alike (an allow-list of org ids matches either form). Parsing checks the
//! suffix of an 18-character id, so a mistyped or forged suffix is refused rather than quietly
//! matched. This module does not know which key prefix (`00D`, `04k`, ...) names which object.

use std::fmt;

/// The alphabet that the 18-character suffix draws from: index = 5-bit case mask of a chunk.
const SUFFIX_ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";

/// A Salesforce id, held in its canonical 15-character case-sensitive form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SfId([u8; 15]);

/// Why a string is not a Salesforce id. The messages quote the input: ids are not secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SfIdError {
    /// Neither 15 nor 18 characters long.
    #[error("{shown:?} is not a Salesforce id: it has {len} characters, an id has 15 or 18")]
    Length {
        /// The input, cut to 40 characters.
        shown: String,
        /// Its length in characters.
        len: usize,
    },
    /// A character outside `[0-9A-Za-z]`.
    #[error("{shown:?} is not a Salesforce id: only the characters 0-9, A-Z and a-z are allowed")]
    Character {
        /// The input.
        shown: String,
    },
    /// An 18-character id whose suffix does not match the letter case of its first 15.
    #[error("{given} has a wrong checksum: the 18-character form of {id15} ends {expected}; check the id was copied exactly, letter case included")]
    Checksum {
        /// The input.
        given: String,
        /// Its first 15 characters.
        id15: String,
        /// The suffix those 15 characters call for.
        expected: String,
    },
}

impl SfId {
    /// Parse a 15-character id, or an 18-character id whose suffix (compared without regard
    /// to case) matches the letter case of the first 15 (compared exactly).
    pub fn parse(s: &str) -> Result<SfId, SfIdError> {
        let bytes = s.as_bytes();
        if bytes.len() != 15 && bytes.len() != 18 {
            return Err(SfIdError::Length {
                shown: s.chars().take(40).collect(),
                len: s.chars().count(),
            });
        }
        // Without an early exit, so the check runs as one vector loop.
        if bytes
            .iter()
            .fold(false, |bad, b| bad | !b.is_ascii_alphanumeric())
        {
            return Err(SfIdError::Character {
                shown: s.to_owned(),
            });
        }
        let mut id = [0u8; 15];
        id.copy_from_slice(&bytes[..15]);
        let id = SfId(id);
        if let Some(given) = bytes.get(15..) {
            if !given.is_empty() && !given.eq_ignore_ascii_case(&id.suffix()) {
                return Err(SfIdError::Checksum {
                    given: s.to_owned(),
                    id15: id.as_15().to_owned(),
                    expected: String::from_utf8_lossy(&id.suffix()).into_owned(),
                });
            }
        }
        Ok(id)
    }

    /// The canonical, case-sensitive 15-character form.
    pub fn as_15(&self) -> &str {
        // Only ASCII alphanumerics are ever stored, so this cannot fail.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The 18-character form, with the upper-case suffix Salesforce emits.
    pub fn to_18(&self) -> String {
        let mut s = String::with_capacity(18);
        s.push_str(self.as_15());
        s.extend(self.suffix().iter().map(|&b| char::from(b)));
        s
    }

    fn suffix(&self) -> [u8; 3] {
        let mut out = [0u8; 3];
        for (slot, chunk) in out.iter_mut().zip(self.0.chunks_exact(5)) {
            let mask = chunk.iter().enumerate().fold(0usize, |m, (i, b)| {
                m | usize::from(b.is_ascii_uppercase()) << i
            });
            *slot = SUFFIX_ALPHABET[mask & 31];
        }
        out
    }
}

impl fmt::Display for SfId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_18())
    }
}

impl fmt::Debug for SfId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SfId({})", self.to_18())
    }
}

impl std::str::FromStr for SfId {
    type Err = SfIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SfId::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn computes_the_suffix_of_the_protocol_example() {
        let id = SfId::parse("00D5e000000AbCd").unwrap();
        assert_eq!(id.to_18(), "00D5e000000AbCdEAK");
        assert_eq!(id.to_string(), "00D5e000000AbCdEAK");
    }

    #[test]
    fn accepts_the_valid_18_character_form_and_equals_the_15() {
        let a = SfId::parse("00D5e000000AbCdEAK").unwrap();
        let b = SfId::parse("00D5e000000AbCd").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_15(), "00D5e000000AbCd");
        let set: HashSet<SfId> = [a].into_iter().collect();
        assert!(set.contains(&b));
    }

    #[test]
    fn accepts_a_lower_case_suffix() {
        assert_eq!(
            SfId::parse("00D5e000000AbCdeak").unwrap(),
            SfId::parse("00D5e000000AbCd").unwrap()
        );
    }

    #[test]
    fn rejects_the_illustrative_id_with_a_wrong_checksum() {
        let err = SfId::parse("00D5e000000AbCdEAF").unwrap_err();
        assert_eq!(
            err.to_string(),
            "00D5e000000AbCdEAF has a wrong checksum: the 18-character form of 00D5e000000AbCd \
             ends EAK; check the id was copied exactly, letter case included"
        );
    }

    #[test]
    fn compares_the_first_15_characters_case_sensitively() {
        // Same letters, other case: a different record, and the suffix no longer fits.
        assert_ne!(
            SfId::parse("00d5e000000abcd").unwrap(),
            SfId::parse("00D5e000000AbCd").unwrap()
        );
        assert!(matches!(
            SfId::parse("00d5e000000abcdEAK"),
            Err(SfIdError::Checksum { .. })
        ));
    }

    #[test]
    fn all_lower_and_all_upper_chunks_use_the_ends_of_the_alphabet() {
        assert_eq!(
            SfId::parse("aaaaabbbbbccccc").unwrap().to_18(),
            "aaaaabbbbbcccccAAA"
        );
        assert_eq!(
            SfId::parse("AAAAABBBBBCCCCC").unwrap().to_18(),
            "AAAAABBBBBCCCCC555"
        );
    }

    #[test]
    fn rejects_wrong_lengths_and_characters() {
        assert!(matches!(
            SfId::parse(""),
            Err(SfIdError::Length { len: 0, .. })
        ));
        assert!(matches!(
            SfId::parse("00D5e000000AbC"),
            Err(SfIdError::Length { len: 14, .. })
        ));
        assert!(matches!(
            SfId::parse("00D5e000000AbCdEA"),
            Err(SfIdError::Length { len: 17, .. })
        ));
        assert!(matches!(
            SfId::parse("00D5e000000AbC!"),
            Err(SfIdError::Character { .. })
        ));
        // Multi-byte characters: 15 bytes but not 15 ASCII characters.
        assert!(SfId::parse("00D5e000000Ab\u{e9}").is_err());
    }
}
