//! [`Masker`]: finds secret values in what a step gives back, as written and in the forms a
//! program commonly derives from them, and puts [`super::MASK`] in their place.
//!
//! Caught, for every value: the value in any letter case, reversed, in hexadecimal, percent-
//! encoded, and in base64 (standard and URL-safe, with or without padding, at any of the three
//! byte offsets it can have inside a longer encoded text, as in `Basic base64(user:password)`).
//! Derived forms are sought only for values of at least [`MIN_DERIVED_LEN`] characters: a short
//! value's derived forms would mask ordinary text. Not caught: any other transformation (a
//! value split into pieces, encrypted, hashed...); executors that could make such
//! transformations (`transform`, `log`, `echo`) never see the values (see `conceal`).

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use serde_json::Value as Json;

use super::MASK;

/// Values shorter than this are masked as written (in any letter case), without derived forms.
pub const MIN_DERIVED_LEN: usize = 6;

/// The patterns of some secret values, searched in one pass.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    matcher: Option<AhoCorasick>,
}

impl Masker {
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut patterns: Vec<String> = Vec::new();
        for value in values.into_iter().filter(|v| !v.is_empty()) {
            patterns.push(value.to_owned());
            if value.chars().count() >= MIN_DERIVED_LEN {
                patterns.extend(derived(value));
            }
        }
        patterns.sort();
        patterns.dedup();
        if patterns.is_empty() {
            return Self::default();
        }
        // Leftmost-longest: a value that contains another is masked whole.
        let matcher = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)
            .ok();
        Self { matcher }
    }

    /// `text` with every value and derived form masked.
    pub fn mask_str(&self, text: &str) -> String {
        match &self.matcher {
            Some(m) if m.is_match(text) => m.replace_all(text, &vec![MASK; m.patterns_len()]),
            _ => text.to_owned(),
        }
    }

    /// Masks every string and key of `value`.
    pub fn mask(&self, value: &mut Json) {
        if self.matcher.is_some() {
            super::map_strings(value, &|s| self.mask_str(s));
        }
    }
}

/// The forms of `value` that [`Masker`] also looks for (letter case is handled by the search).
fn derived(value: &str) -> Vec<String> {
    let mut out = vec![value.chars().rev().collect::<String>()];
    out.push(hex::encode(value));
    out.push(percent_encode(value));
    let bytes = value.as_bytes();
    for engine in [&STANDARD, &URL_SAFE] {
        out.push(engine.encode(bytes));
    }
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        out.push(engine.encode(bytes));
        // Inside a longer text the value starts at byte offset 0, 1 or 2 of a 3-byte group:
        // encode it behind 1 or 2 filler bytes and keep the characters that depend on the
        // value alone (neither the filler nor what follows).
        for offset in 1..=2 {
            let mut shifted = vec![0u8; offset];
            shifted.extend_from_slice(bytes);
            let encoded = engine.encode(&shifted);
            let skip = (offset * 8).div_ceil(6);
            let whole = (shifted.len() / 3) * 4;
            if whole > skip + 1 {
                out.push(encoded[skip..whole].to_owned());
            }
        }
        // And the value alone, without its last partial group.
        let whole = (bytes.len() / 3) * 4;
        if whole >= 4 {
            out.push(engine.encode(bytes)[..whole].to_owned());
        }
    }
    out
}

/// Percent-encoding of everything but unreserved characters (RFC 3986).
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "s3cr3t-Zq81/do+not=leak";

    fn masker() -> Masker {
        Masker::new([SECRET, "ab"])
    }

    #[test]
    fn the_value_and_its_derived_forms_are_masked() {
        let m = masker();
        let b64 = STANDARD.encode(SECRET);
        let cases = [
            format!("got {SECRET}!"),
            format!("got {}!", SECRET.to_uppercase()),
            format!("got {}!", SECRET.to_lowercase()),
            format!("got {}!", SECRET.chars().rev().collect::<String>()),
            format!("got {}!", hex::encode(SECRET)),
            format!("got {}!", hex::encode(SECRET).to_uppercase()),
            format!("got {}!", percent_encode(SECRET)),
            format!("got {b64}!"),
            format!("got {}!", URL_SAFE_NO_PAD.encode(SECRET)),
        ];
        for text in cases {
            let masked = m.mask_str(&text);
            assert!(
                masked.starts_with("got ") && masked.contains("***"),
                "{text} -> {masked}"
            );
            assert!(!masked.contains(&SECRET[..10]), "{masked}");
        }
        // Embedded in longer base64 at every offset, as `Basic user:password` is.
        for user in ["u", "us", "use"] {
            let basic = STANDARD.encode(format!("{user}:{SECRET}"));
            let masked = m.mask_str(&format!("Authorization: Basic {basic}"));
            assert!(masked.contains("***"), "{user}: {basic} -> {masked}");
            assert!(!masked.contains(&basic[8..20]), "{masked}");
        }
    }

    #[test]
    fn short_values_are_masked_without_derived_forms_and_other_text_is_kept() {
        let m = masker();
        assert_eq!(m.mask_str("crab AB ba"), "cr*** *** ba");
        assert_eq!(m.mask_str("nothing here"), "nothing here");
        let mut value = json!({"k": [SECRET, {"nested": SECRET.to_uppercase()}], SECRET: 1});
        m.mask(&mut value);
        assert_eq!(value, json!({"k": ["***", {"nested": "***"}], "***": 1}));
        let none = Masker::new([""; 0]);
        assert_eq!(none.mask_str(SECRET), SECRET);
    }
}
