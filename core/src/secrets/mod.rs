//! Secrets in step inputs: markers, revealing and masking.
//!
//! A flow reads a secret as `{{ secrets.NAME }}` in a step's `with`. The orchestrator renders that
//! to a marker, `⟦secret:NAME:TAG⟧`, so the value is never part of a run's events, records or API
//! answers. The tag is a MAC over the run, step, item, attempt and name under a key only the
//! orchestrator holds ([`set_marker_key`]): a marker that reaches a step's input from data (a
//! run input, another step's output, text a template glued together) has no valid tag, and the
//! orchestrator sends no secret for it. The task carries the values of the valid markers,
//! sealed under the secrets key ([`SecretsKey`]); the worker opens them and puts them in place
//! just before the executor runs ([`reveal`]), for executors that send them somewhere; others
//! see `***` ([`conceal`]). What comes back is masked, derived forms included ([`Masker`]).
//!
//! # Layout
//! - this file: markers, revealing, concealing.
//! - `key`: [`SecretsKey`], sealing values at rest and in tasks; [`SecretsConfig`].
//! - `mask`: [`Masker`], the values and the forms derived from them that outputs must not show.

mod key;
mod mask;

use std::collections::{BTreeSet, HashMap};
use std::sync::RwLock;

use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value as Json;
use sha2::Sha256;

pub use key::{KeyError, SecretsConfig, SecretsKey, generate_key_text, write_key_file};
pub use mask::Masker;

const OPEN: &str = "⟦secret:";
const CLOSE: char = '⟧';

/// What masks a secret's value.
pub const MASK: &str = "***";

/// Hex digits of a marker's tag (64 bits of the MAC).
const TAG_HEX: usize = 16;

/// The key that tags markers; random per process until an orchestrator sets its own (kept in
/// its store, so markers in stored inputs stay valid across restarts).
static MARKER_KEY: RwLock<Option<[u8; 32]>> = RwLock::new(None);

/// Sets the key markers are tagged and checked with (process-wide, like the expression limits:
/// the run state machine renders markers without a configuration at hand).
pub fn set_marker_key(key: [u8; 32]) {
    *MARKER_KEY
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(key);
}

fn marker_key() -> [u8; 32] {
    if let Some(key) = *MARKER_KEY
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
    {
        return key;
    }
    let mut slot = MARKER_KEY
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *slot.get_or_insert_with(key::random_key)
}

/// Where a marker may be used: one attempt of one unit of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt<'a> {
    pub run_id: &'a str,
    pub step: &'a str,
    pub item: Option<u32>,
    pub attempt: u32,
}

impl Attempt<'_> {
    fn tag(&self, name: &str) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&marker_key())
            .unwrap_or_else(|_| unreachable!("hmac accepts keys of any length"));
        let item = self.item.map_or(String::new(), |i| i.to_string());
        for part in [
            self.run_id,
            self.step,
            &item,
            &self.attempt.to_string(),
            name,
        ] {
            mac.update(part.as_bytes());
            mac.update(&[0]);
        }
        let mut tag = hex::encode(mac.finalize().into_bytes());
        tag.truncate(TAG_HEX);
        tag
    }

    /// The marker standing for secret `name` in this attempt's input.
    pub fn marker(&self, name: &str) -> String {
        format!("{OPEN}{name}:{}{CLOSE}", self.tag(name))
    }

    /// Whether `marker` (a whole `⟦secret:...⟧`) was made by [`Attempt::marker`] for this
    /// attempt.
    pub fn is_valid(&self, marker: &Marker) -> bool {
        let expected = self.tag(&marker.name);
        marker.tag.len() == expected.len()
            && crate::signature::same_secret(marker.tag.as_bytes(), expected.as_bytes())
    }
}

/// A marker found in a value: `⟦secret:NAME:TAG⟧` (the tag may be missing or wrong).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Marker {
    pub name: String,
    pub tag: String,
    /// The marker's whole text.
    pub text: String,
}

/// True for names a secret may have: letters, digits and `_`, starting with a letter or `_`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Every marker in `text`, valid or not.
fn markers_in(text: &str, found: &mut BTreeSet<Marker>) {
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        let after = &rest[start + OPEN.len()..];
        let Some(end) = after.find(CLOSE) else { break };
        let body = &after[..end];
        let (name, tag) = body.split_once(':').unwrap_or((body, ""));
        found.insert(Marker {
            name: name.to_owned(),
            tag: tag.to_owned(),
            text: format!("{OPEN}{body}{CLOSE}"),
        });
        rest = &after[end + CLOSE.len_utf8()..];
    }
}

impl Marker {
    /// The marker that is the whole of `text`, if it is one.
    pub fn parse(text: &str) -> Option<Marker> {
        let mut found = BTreeSet::new();
        markers_in(text, &mut found);
        found.into_iter().next().filter(|m| m.text == text)
    }
}

/// Every marker in `value`'s strings and keys, valid or not.
pub fn markers(value: &Json) -> BTreeSet<Marker> {
    let mut found = BTreeSet::new();
    visit(value, &mut |s| markers_in(s, &mut found));
    found
}

/// Calls `f` on every string and key in `value`, with an explicit stack: step inputs and
/// outputs are user data, however deep.
fn visit(value: &Json, f: &mut dyn FnMut(&str)) {
    let mut todo = vec![value];
    while let Some(value) = todo.pop() {
        match value {
            Json::String(s) => f(s),
            Json::Array(items) => todo.extend(items.iter().rev()),
            Json::Object(map) => {
                map.keys().for_each(|k| f(k));
                todo.extend(map.values().rev());
            }
            _ => {}
        }
    }
}

/// Replaces every string and key in `value` by `f` of it, with an explicit stack.
fn map_strings(value: &mut Json, f: &dyn Fn(&str) -> String) {
    let mut todo = vec![value];
    while let Some(value) = todo.pop() {
        match value {
            Json::String(s) => *s = f(s),
            Json::Array(items) => todo.extend(items.iter_mut()),
            Json::Object(map) => {
                let old = std::mem::take(map);
                for (k, v) in old {
                    map.insert(f(&k), v);
                }
                todo.extend(map.values_mut());
            }
            _ => {}
        }
    }
}

/// Puts the secrets' values in place of their markers (`values` by the markers' whole text).
/// Fails with the first marker that has no value: a secret that is not set, or a marker that did
/// not come from the step's own `with` (from data, or forged).
pub fn reveal(value: &mut Json, values: &HashMap<String, String>) -> Result<(), Marker> {
    if let Some(unknown) = markers(value)
        .into_iter()
        .find(|m| !values.contains_key(&m.text))
    {
        return Err(unknown);
    }
    if values.is_empty() {
        return Ok(());
    }
    map_strings(value, &|s| {
        if !s.contains(OPEN) {
            return s.to_owned();
        }
        let mut out = s.to_owned();
        for (marker, secret) in values {
            out = out.replace(marker.as_str(), secret);
        }
        out
    });
    Ok(())
}

/// Puts [`MASK`] in place of every marker: what executors that send nothing anywhere (`log`,
/// `transform`, `echo`, ...) see instead of secret values.
pub fn conceal(value: &mut Json) {
    let found = markers(value);
    if found.is_empty() {
        return;
    }
    map_strings(value, &|s| {
        let mut out = s.to_owned();
        for marker in &found {
            out = out.replace(marker.text.as_str(), MASK);
        }
        out
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ATTEMPT: Attempt<'static> = Attempt {
        run_id: "run-1",
        step: "call",
        item: None,
        attempt: 1,
    };

    #[test]
    fn markers_are_tagged_per_attempt_and_checked() {
        let marker = ATTEMPT.marker("TOKEN");
        let found = markers(&json!({ "h": format!("Bearer {marker}") }));
        let found = found.into_iter().next().unwrap();
        assert_eq!(found.name, "TOKEN");
        assert!(ATTEMPT.is_valid(&found));
        for other in [
            Attempt {
                attempt: 2,
                ..ATTEMPT
            },
            Attempt {
                item: Some(0),
                ..ATTEMPT
            },
            Attempt {
                step: "other",
                ..ATTEMPT
            },
            Attempt {
                run_id: "run-2",
                ..ATTEMPT
            },
        ] {
            assert!(!other.is_valid(&found), "{other:?}");
        }
        // Text that looks like a marker, as data would carry it, is not valid.
        for forged in ["⟦secret:TOKEN⟧", "⟦secret:TOKEN:0000000000000000⟧"] {
            let m = markers(&json!(forged)).into_iter().next().unwrap();
            assert!(!ATTEMPT.is_valid(&m), "{forged}");
        }
    }

    #[test]
    fn markers_are_revealed_and_unknown_ones_refused() {
        let marker = ATTEMPT.marker("TOKEN");
        let mut input = json!({"headers": {"Authorization": format!("Bearer {marker}")}, "n": 1});
        let values = HashMap::from([(marker.clone(), "s3cr3t".to_owned())]);
        reveal(&mut input, &values).unwrap();
        assert_eq!(input["headers"]["Authorization"], json!("Bearer s3cr3t"));
        let mut forged = json!({"a": "⟦secret:TOKEN⟧", "b": marker});
        let err = reveal(&mut forged, &values).unwrap_err();
        assert_eq!(err.name, "TOKEN");
        assert_eq!(err.text, "⟦secret:TOKEN⟧");
    }

    #[test]
    fn a_marker_is_parsed_only_from_its_whole_text() {
        let marker = ATTEMPT.marker("TOKEN");
        let parsed = Marker::parse(&marker).expect("a marker");
        assert_eq!(
            (parsed.name.as_str(), parsed.text.as_str()),
            ("TOKEN", marker.as_str())
        );
        assert!(ATTEMPT.is_valid(&parsed));
        assert_eq!(Marker::parse(&format!("x{marker}")), None);
        assert_eq!(Marker::parse("plain"), None);
    }

    #[test]
    fn concealing_masks_every_marker() {
        let mut input = json!({"m": format!("key {} and ⟦secret:X⟧", ATTEMPT.marker("TOKEN"))});
        conceal(&mut input);
        assert_eq!(input, json!({"m": "key *** and ***"}));
    }

    #[test]
    fn deep_values_are_walked_without_recursion() {
        let marker = ATTEMPT.marker("TOKEN");
        let mut deep = json!({ "k": marker.clone() });
        for _ in 0..100_000 {
            deep = Json::Array(vec![deep]);
        }
        assert_eq!(markers(&deep).len(), 1);
        reveal(&mut deep, &HashMap::from([(marker, "s3cr3t".to_owned())])).unwrap();
        conceal(&mut deep);
        // Dropping it would recurse; this test leaks it instead.
        std::mem::forget(deep);
    }
}
