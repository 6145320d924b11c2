//! The `Sec-WebSocket-Extensions` header grammar (RFC 6455 §9.1).
//!
//! ```text
//! Sec-WebSocket-Extensions = 1#extension
//! extension       = extension-token *( ";" extension-param )
//! extension-param = token [ "=" ( token / quoted-string ) ]
//! ```
//!
//! [`parse`] turns one header value into a list of [`ExtensionOffer`]s; a
//! request may carry several such headers, whose lists are concatenated in
//! order. The `Display` impl of [`ExtensionOffer`] writes the canonical form
//! back (`name; flag; key=value`).
//!
//! This module only knows the grammar. What the parameters of
//! `permessage-deflate` mean is the business of [`crate::deflate`].

use std::fmt;

use crate::handshake::{is_tchar, is_token};

/// One extension in a Sec-WebSocket-Extensions list: a name and its parameters, in order.
///
/// Parsed values have their quotes removed and backslash escapes resolved, so
/// `client_max_window_bits="10"` and `client_max_window_bits=10` give the same
/// `("client_max_window_bits", Some("10"))`. A parameter without `=` (a flag)
/// has the value `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionOffer {
    /// The extension token, e.g. `permessage-deflate`.
    pub name: String,
    /// The parameters in the order they were written: name, then the value if
    /// there was an `=`.
    pub params: Vec<(String, Option<String>)>,
}

impl ExtensionOffer {
    /// An extension with this name and no parameters.
    pub fn new(name: impl Into<String>) -> ExtensionOffer {
        ExtensionOffer {
            name: name.into(),
            params: Vec::new(),
        }
    }

    /// Appends a parameter (by value, for chaining).
    #[must_use]
    pub fn param(mut self, name: impl Into<String>, value: Option<&str>) -> ExtensionOffer {
        self.params.push((name.into(), value.map(str::to_owned)));
        self
    }
}

impl fmt::Display for ExtensionOffer {
    /// Writes the canonical form `name; p1; p2=v`. A value that is not a
    /// token (only possible for a hand-built offer) is written as a
    /// quoted-string, which is valid header syntax; [`parse`], following
    /// RFC 6455 §9.1, accepts a quoted value only if it is a token unquoted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        for (key, value) in &self.params {
            f.write_str("; ")?;
            f.write_str(key)?;
            if let Some(value) = value {
                f.write_str("=")?;
                if is_token(value) {
                    f.write_str(value)?;
                } else {
                    f.write_str("\"")?;
                    for c in value.chars() {
                        if c == '"' || c == '\\' {
                            f.write_str("\\")?;
                        }
                        write!(f, "{c}")?;
                    }
                    f.write_str("\"")?;
                }
            }
        }
        Ok(())
    }
}

/// Why a `Sec-WebSocket-Extensions` value did not parse.
///
/// Display gives a short human reason with the byte offset of the problem,
/// e.g. `invalid Sec-WebSocket-Extensions header: expected a token at byte 19`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionParseError {
    reason: &'static str,
    offset: usize,
}

impl ExtensionParseError {
    /// The byte offset in the header value at which parsing failed.
    pub fn offset(&self) -> usize {
        self.offset
    }
}

impl fmt::Display for ExtensionParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid Sec-WebSocket-Extensions header: {} at byte {}",
            self.reason, self.offset
        )
    }
}

impl std::error::Error for ExtensionParseError {}

/// Parses one header value (a comma-separated list).
///
/// Parameter values may be tokens or quoted-strings (quotes removed,
/// backslash escapes resolved; as RFC 6455 §9.1 requires, the unescaped value
/// of a quoted-string must itself be a token). Names are tokens (RFC 7230
/// `tchar`); whitespace (SP/HTAB) around `,` `;` `=` and at both ends is
/// allowed. Empty list elements (`a,,b`) are skipped as the RFC 7230 `#rule`
/// allows.
///
/// # Errors
///
/// [`ExtensionParseError`] for anything else: a missing or invalid token, a
/// dangling `;` or `=`, an unterminated quoted-string, a stray character, or a
/// list with no element at all (the grammar is `1#extension`).
pub fn parse(header_value: &str) -> Result<Vec<ExtensionOffer>, ExtensionParseError> {
    let mut cur = Cursor {
        bytes: header_value.as_bytes(),
        pos: 0,
    };
    let mut out = Vec::new();
    loop {
        cur.skip_ows();
        match cur.peek() {
            None => break,
            Some(b',') => {
                // An empty list element.
                cur.pos += 1;
                continue;
            }
            Some(_) => {}
        }
        let name = cur.token("expected an extension name")?;
        let mut params = Vec::new();
        loop {
            cur.skip_ows();
            match cur.peek() {
                None => break,
                Some(b',') => {
                    cur.pos += 1;
                    break;
                }
                Some(b';') => {
                    cur.pos += 1;
                    cur.skip_ows();
                    let key = cur.token("expected a parameter name")?;
                    cur.skip_ows();
                    let value = if cur.peek() == Some(b'=') {
                        cur.pos += 1;
                        cur.skip_ows();
                        Some(if cur.peek() == Some(b'"') {
                            cur.quoted_token()?
                        } else {
                            cur.token("expected a parameter value")?
                        })
                    } else {
                        None
                    };
                    params.push((key, value));
                }
                Some(_) => return Err(cur.error("expected ';' or ','")),
            }
        }
        out.push(ExtensionOffer { name, params });
    }
    if out.is_empty() {
        return Err(cur.error("empty extension list"));
    }
    Ok(out)
}

/// A position in the header value.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn error(&self, reason: &'static str) -> ExtensionParseError {
        ExtensionParseError {
            reason,
            offset: self.pos,
        }
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    /// The token at the cursor (non-empty), advancing past it.
    fn token(&mut self, missing: &'static str) -> Result<String, ExtensionParseError> {
        let start = self.pos;
        while self.peek().is_some_and(is_tchar) {
            self.pos += 1;
        }
        match self.bytes.get(start..self.pos) {
            // tchar is ASCII, so this slice is valid UTF-8.
            Some(tok) if !tok.is_empty() => Ok(String::from_utf8_lossy(tok).into_owned()),
            _ => Err(self.error(missing)),
        }
    }

    /// A quoted-string at the cursor (which is on the opening quote),
    /// unescaped; the content must be a token (RFC 6455 §9.1).
    fn quoted_token(&mut self) -> Result<String, ExtensionParseError> {
        let open = self.pos;
        self.pos += 1;
        let mut value = Vec::new();
        loop {
            match self.peek() {
                None => {
                    return Err(ExtensionParseError {
                        reason: "unterminated quoted-string",
                        offset: open,
                    });
                }
                Some(b'"') => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(b) if b == b'\t' || b >= 0x20 && b != 0x7f => {
                            value.push(b);
                            self.pos += 1;
                        }
                        _ => return Err(self.error("invalid escape in quoted-string")),
                    }
                }
                Some(b) if b == b'\t' || b >= 0x20 && b != 0x7f => {
                    value.push(b);
                    self.pos += 1;
                }
                Some(_) => return Err(self.error("invalid character in quoted-string")),
            }
        }
        match String::from_utf8(value) {
            Ok(s) if is_token(&s) => Ok(s),
            _ => Err(ExtensionParseError {
                reason: "quoted value is not a token",
                offset: open,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;

    fn ext(name: &str, params: &[(&str, Option<&str>)]) -> ExtensionOffer {
        ExtensionOffer {
            name: name.to_owned(),
            params: params
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.map(str::to_owned)))
                .collect(),
        }
    }

    #[test]
    fn single_extension_without_params() {
        assert_eq!(
            parse("permessage-deflate").unwrap(),
            vec![ext("permessage-deflate", &[])]
        );
    }

    #[test]
    fn browser_offer() {
        // What Chrome and Firefox send.
        assert_eq!(
            parse("permessage-deflate; client_max_window_bits").unwrap(),
            vec![ext(
                "permessage-deflate",
                &[("client_max_window_bits", None)]
            )]
        );
    }

    #[test]
    fn quoted_value_is_unquoted() {
        assert_eq!(
            parse("permessage-deflate; client_max_window_bits=\"10\"").unwrap(),
            vec![ext(
                "permessage-deflate",
                &[("client_max_window_bits", Some("10"))]
            )]
        );
        // Escapes are resolved: "\1\0" is "10".
        assert_eq!(
            parse(r#"x; a="\1\0""#).unwrap(),
            vec![ext("x", &[("a", Some("10"))])]
        );
    }

    #[test]
    fn whitespace_everywhere_allowed() {
        let want = vec![
            ext("a", &[("p", None), ("q", Some("1"))]),
            ext("b", &[("r", Some("x"))]),
        ];
        for s in [
            "a;p;q=1,b;r=x",
            "a; p; q=1, b; r=x",
            " \ta \t; \tp\t ;q = 1\t,  b ;r= \"x\" \t",
            "a ;p ;q= 1 ,b; r =x",
        ] {
            assert_eq!(parse(s).unwrap(), want, "{s:?}");
        }
    }

    #[test]
    fn multiple_extensions_and_repeated_names() {
        // The Autobahn 13.7 style list: several offers of the same extension.
        let got = parse(
            "permessage-deflate; client_no_context_takeover; client_max_window_bits, \
             permessage-deflate; client_max_window_bits, permessage-deflate",
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                ext(
                    "permessage-deflate",
                    &[
                        ("client_no_context_takeover", None),
                        ("client_max_window_bits", None)
                    ]
                ),
                ext("permessage-deflate", &[("client_max_window_bits", None)]),
                ext("permessage-deflate", &[]),
            ]
        );
    }

    #[test]
    fn empty_elements_are_skipped() {
        assert_eq!(
            parse(",a, ,,b,").unwrap(),
            vec![ext("a", &[]), ext("b", &[])]
        );
    }

    #[test]
    fn malformed_inputs_are_rejected() {
        for s in [
            "",
            "   ",
            ",",
            " , ,",
            ";a",
            "a;",
            "a; ",
            "a;;b",
            "a; =1",
            "a; p=",
            "a; p= ,b",
            "a; p=\"1",
            "a; p=\"\"",
            "a; p=\"1 2\"",
            "a; p=\"a,b\"",
            "a; p=\"\\",
            "a b",
            "a; p q",
            "a; p=1 2",
            "a=1",
            "a/b",
            "a; p=1;",
            "a; p=\"1\"x",
            "a; p=@",
            "é",
            "a; p=\"é\"",
            "a\u{0}",
        ] {
            assert!(parse(s).is_err(), "{s:?} should be rejected");
        }
    }

    #[test]
    fn error_display_says_where() {
        let err = parse("permessage-deflate; ;").unwrap_err();
        assert_eq!(err.offset(), 20);
        assert_eq!(
            err.to_string(),
            "invalid Sec-WebSocket-Extensions header: expected a parameter name at byte 20"
        );
        let err = parse("a; p=\"1").unwrap_err();
        assert_eq!(err.offset(), 5);
        assert!(err.to_string().contains("unterminated"));
    }

    #[test]
    fn display_is_canonical() {
        let offers =
            parse("permessage-deflate ;server_no_context_takeover; client_max_window_bits=\"12\"")
                .unwrap();
        assert_eq!(
            offers[0].to_string(),
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=12"
        );
        assert_eq!(ExtensionOffer::new("x").to_string(), "x");
    }

    #[test]
    fn display_quotes_non_token_values() {
        let e = ExtensionOffer::new("x")
            .param("a", Some("b c"))
            .param("d", Some("q\"\\"))
            .param("e", Some(""));
        assert_eq!(e.to_string(), r#"x; a="b c"; d="q\"\\"; e="""#);
    }

    #[test]
    fn builder_helpers() {
        let e = ExtensionOffer::new("permessage-deflate")
            .param("client_max_window_bits", None)
            .param("server_max_window_bits", Some("10"));
        assert_eq!(
            parse(&e.to_string()).unwrap(),
            vec![e],
            "display output parses back"
        );
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        fn token() -> impl Strategy<Value = String> {
            "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}"
        }

        fn offer() -> impl Strategy<Value = ExtensionOffer> {
            (
                token(),
                proptest::collection::vec((token(), proptest::option::of(token())), 0..5),
            )
                .prop_map(|(name, params)| ExtensionOffer { name, params })
        }

        proptest! {
            #[test]
            fn never_panics(s in "\\PC*") {
                let _ = parse(&s);
            }

            #[test]
            fn never_panics_on_header_like_input(s in "[a-z_;,=\" \t\\\\0-9]{0,40}") {
                let _ = parse(&s);
            }

            #[test]
            fn display_round_trips(offers in proptest::collection::vec(offer(), 1..4)) {
                let joined = offers.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
                prop_assert_eq!(parse(&joined).unwrap(), offers);
            }
        }
    }
}
