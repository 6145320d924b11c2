//! Incremental, fail-fast UTF-8 validation.
//!
//! A text message may arrive in many fragments, and one fragment in many TCP
//! reads; a code point may straddle any of those boundaries. [`Utf8Validator`]
//! keeps the (at most three) bytes of an unfinished code point between calls
//! and reports an error as soon as the bytes seen so far cannot be the prefix
//! of valid UTF-8 — not at the end of the message. That is what Autobahn's
//! 6.4.* cases check ("fail fast").

use simdutf8::compat::from_utf8;

/// Invalid UTF-8 was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utf8Error;

impl std::fmt::Display for Utf8Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("invalid UTF-8")
    }
}

impl std::error::Error for Utf8Error {}

/// Validates UTF-8 fed in arbitrary pieces.
#[derive(Debug, Clone, Default)]
pub struct Utf8Validator {
    /// Bytes of an unfinished code point carried over from the last call.
    partial: [u8; 4],
    partial_len: usize,
}

impl Utf8Validator {
    /// A validator at the start of a text.
    pub const fn new() -> Utf8Validator {
        Utf8Validator {
            partial: [0; 4],
            partial_len: 0,
        }
    }

    /// Whether bytes of an unfinished code point are pending.
    pub fn is_mid_code_point(&self) -> bool {
        self.partial_len != 0
    }

    /// Forgets any pending state, ready for a new text.
    pub fn reset(&mut self) {
        self.partial_len = 0;
    }

    /// Validates the next piece of the text.
    ///
    /// Fails as soon as the input so far is not a prefix of valid UTF-8.
    pub fn feed(&mut self, mut input: &[u8]) -> Result<(), Utf8Error> {
        if self.partial_len != 0 {
            let need = sequence_len(self.partial[0]);
            let take = (need - self.partial_len).min(input.len());
            let (head, rest) = input.split_at(take);
            let end = self.partial_len + take;
            let Some(slot) = self.partial.get_mut(self.partial_len..end) else {
                return Err(Utf8Error);
            };
            slot.copy_from_slice(head);
            self.partial_len = end;
            let Some(code_point) = self.partial.get(..end) else {
                return Err(Utf8Error);
            };
            match from_utf8(code_point) {
                Ok(_) => self.partial_len = 0,
                // Still a valid but unfinished prefix: wait for more.
                Err(e) if e.error_len().is_none() && end < need => return Ok(()),
                Err(_) => return Err(Utf8Error),
            }
            input = rest;
        }
        // Most text is ASCII: a word-at-a-time check is far cheaper than a
        // full validation, notably for short messages.
        if input.is_ascii() {
            return Ok(());
        }
        match from_utf8(input) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                // An unfinished code point at the very end: keep it.
                let tail = input.get(e.valid_up_to()..).ok_or(Utf8Error)?;
                let slot = self.partial.get_mut(..tail.len()).ok_or(Utf8Error)?;
                slot.copy_from_slice(tail);
                self.partial_len = tail.len();
                Ok(())
            }
            Err(_) => Err(Utf8Error),
        }
    }

    /// Ends the text: fails if it stopped in the middle of a code point.
    pub fn finish(&mut self) -> Result<(), Utf8Error> {
        let mid = self.partial_len != 0;
        self.partial_len = 0;
        if mid { Err(Utf8Error) } else { Ok(()) }
    }
}

/// The length of the sequence a lead byte starts. Bytes that cannot start a
/// sequence return 1, and are rejected by the validator.
const fn sequence_len(lead: u8) -> usize {
    match lead {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => 1,
    }
}

/// Validates a complete text in one call.
pub fn validate(input: &[u8]) -> Result<(), Utf8Error> {
    if input.is_ascii() {
        return Ok(());
    }
    simdutf8::basic::from_utf8(input)
        .map(|_| ())
        .map_err(|_| Utf8Error)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::indexing_slicing)]
    use super::*;

    fn split_everywhere(bytes: &[u8]) -> bool {
        let whole = std::str::from_utf8(bytes).is_ok();
        for cut1 in 0..=bytes.len() {
            for cut2 in cut1..=bytes.len() {
                let mut v = Utf8Validator::new();
                let ok = v.feed(&bytes[..cut1]).is_ok()
                    && v.feed(&bytes[cut1..cut2]).is_ok()
                    && v.feed(&bytes[cut2..]).is_ok()
                    && v.finish().is_ok();
                assert_eq!(ok, whole, "{bytes:02x?} cut at {cut1},{cut2}");
            }
        }
        whole
    }

    #[test]
    fn agrees_with_std_for_any_split() {
        assert!(split_everywhere("Hello-µ@ßöäüàá-UTF-8!!".as_bytes()));
        assert!(split_everywhere("κόσμε".as_bytes()));
        assert!(split_everywhere(
            "\u{10FFFF}\u{FFFF}\u{800}\u{7FF}".as_bytes()
        ));
        assert!(!split_everywhere(&[
            0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5, 0xed, 0xa0, 0x80,
            0x65, 0x64, 0x69, 0x74, 0x65, 0x64
        ]));
        assert!(!split_everywhere(&[0xf4, 0x90, 0x80, 0x80]));
        assert!(!split_everywhere(&[0xc0, 0x80]));
        assert!(!split_everywhere(&[0xe0, 0x80, 0xaf]));
        assert!(!split_everywhere(&[0xff]));
        assert!(!split_everywhere(&[0xe2, 0x82]));
    }

    #[test]
    fn fails_fast_before_the_end() {
        // Autobahn 6.4.1: "κόσμε" + U+D800 (a surrogate, invalid) + more text.
        // The error must be seen in the piece that contains 0xED 0xA0.
        let mut v = Utf8Validator::new();
        assert!(v.feed("κόσμε".as_bytes()).is_ok());
        assert!(v.feed(&[0xED]).is_ok()); // could still be valid (U+D000..)
        assert_eq!(v.feed(&[0xA0]), Err(Utf8Error)); // surrogate: fail now
    }

    #[test]
    fn out_of_range_lead_fails_at_second_byte() {
        let mut v = Utf8Validator::new();
        assert!(v.feed(&[0xF4]).is_ok());
        assert_eq!(v.feed(&[0x90]), Err(Utf8Error));
    }

    #[test]
    fn incomplete_at_finish_fails() {
        let mut v = Utf8Validator::new();
        assert!(v.feed(&[0xE2, 0x82]).is_ok());
        assert!(v.is_mid_code_point());
        assert_eq!(v.finish(), Err(Utf8Error));
    }

    #[test]
    fn exhaustive_two_byte_prefixes_match_std() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let bytes = [a, b];
                let mut v = Utf8Validator::new();
                let ok = v.feed(&bytes[..1]).is_ok() && v.feed(&bytes[1..]).is_ok();
                // A valid-so-far result must be a real prefix of some valid
                // text; an error must mean no continuation can be valid.
                let prefix_ok = match std::str::from_utf8(&bytes) {
                    Ok(_) => true,
                    Err(e) => e.error_len().is_none(),
                };
                assert_eq!(ok, prefix_ok, "{bytes:02x?}");
            }
        }
    }
}

/// Bytes that are valid UTF-8: a text message payload, shared without copying.
///
/// Cloning is cheap (a reference count), and [`Utf8Bytes::as_str`] reads the
/// text without validating it again.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Utf8Bytes(bytes::Bytes);

impl Utf8Bytes {
    /// An empty text.
    pub const fn new() -> Utf8Bytes {
        Utf8Bytes(bytes::Bytes::new())
    }

    /// A text from a static string, without copying.
    pub const fn from_static(s: &'static str) -> Utf8Bytes {
        Utf8Bytes(bytes::Bytes::from_static(s.as_bytes()))
    }

    /// Checks that `bytes` are UTF-8.
    pub fn try_from_bytes(bytes: bytes::Bytes) -> Result<Utf8Bytes, Utf8Error> {
        validate(&bytes)?;
        Ok(Utf8Bytes(bytes))
    }

    /// Wraps bytes this crate has already validated.
    pub(crate) fn from_validated(bytes: bytes::Bytes) -> Utf8Bytes {
        debug_assert!(std::str::from_utf8(&bytes).is_ok());
        Utf8Bytes(bytes)
    }

    /// The text.
    #[allow(unsafe_code)]
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor either validates the bytes
        // (`try_from_bytes`), takes them from a `str`/`String`, or is
        // `from_validated`, which this crate calls only on bytes that passed
        // `Utf8Validator`/`validate`. `Bytes` is immutable, so the bytes
        // cannot change afterwards.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    /// The underlying bytes.
    pub fn as_bytes(&self) -> &bytes::Bytes {
        &self.0
    }

    /// Gives up the UTF-8 guarantee and returns the bytes.
    pub fn into_bytes(self) -> bytes::Bytes {
        self.0
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the text is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::ops::Deref for Utf8Bytes {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Utf8Bytes {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<[u8]> for Utf8Bytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Utf8Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for Utf8Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<String> for Utf8Bytes {
    fn from(s: String) -> Utf8Bytes {
        Utf8Bytes(bytes::Bytes::from(s))
    }
}

impl From<&str> for Utf8Bytes {
    fn from(s: &str) -> Utf8Bytes {
        Utf8Bytes(bytes::Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<&String> for Utf8Bytes {
    fn from(s: &String) -> Utf8Bytes {
        Utf8Bytes::from(s.as_str())
    }
}

impl From<Utf8Bytes> for bytes::Bytes {
    fn from(t: Utf8Bytes) -> bytes::Bytes {
        t.0
    }
}

impl PartialEq<str> for Utf8Bytes {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Utf8Bytes {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}
