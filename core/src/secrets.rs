//! Secrets in step inputs: markers, revealing and masking.
//!
//! A flow reads a secret as `{{ secrets.NAME }}` in a step's `with`. The orchestrator renders that
//! to a marker, `⟦secret:NAME⟧`, so the value is never part of a run's events, records or API
//! answers. The task carries the values of the markers its input holds; the worker puts them in
//! place just before the executor runs ([`reveal`]) and masks them in the output and errors it
//! sends back ([`redact`], [`redact_str`]).

use std::collections::{BTreeSet, HashMap};

use serde_json::Value as Json;

const OPEN: &str = "⟦secret:";
const CLOSE: char = '⟧';

/// What masks a secret's value.
pub const MASK: &str = "***";

/// The marker standing for a secret in rendered inputs.
pub fn marker(name: &str) -> String {
    format!("{OPEN}{name}{CLOSE}")
}

/// True for names a secret may have: letters, digits and `_`, starting with a letter or `_`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The names of the secrets whose markers appear in `value`.
pub fn referenced(value: &Json) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    visit(value, &mut |s| {
        let mut rest = s;
        while let Some(start) = rest.find(OPEN) {
            let after = &rest[start + OPEN.len()..];
            match after.find(CLOSE) {
                Some(end) => {
                    names.insert(after[..end].to_owned());
                    rest = &after[end + CLOSE.len_utf8()..];
                }
                None => break,
            }
        }
    });
    names
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

/// Puts the secrets' values in place of their markers. Fails with the name of the first secret
/// that has no value.
pub fn reveal(value: &mut Json, secrets: &HashMap<String, String>) -> Result<(), String> {
    if let Some(missing) = referenced(value)
        .into_iter()
        .find(|name| !secrets.contains_key(name))
    {
        return Err(missing);
    }
    map_strings(value, &|s| {
        let mut out = s.to_owned();
        for (name, secret) in secrets {
            out = out.replace(&marker(name), secret);
        }
        out
    });
    Ok(())
}

/// Masks every secret value found in `value`'s strings (and keys).
pub fn redact(value: &mut Json, secrets: &HashMap<String, String>) {
    if secrets.values().any(|v| !v.is_empty()) {
        map_strings(value, &|s| redact_str(s, secrets));
    }
}

/// `text` with every secret value masked.
pub fn redact_str(text: &str, secrets: &HashMap<String, String>) -> String {
    let mut out = text.to_owned();
    // Longer values first, so a value that contains another is masked whole.
    let mut values: Vec<&String> = secrets.values().filter(|v| !v.is_empty()).collect();
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    for value in values {
        out = out.replace(value.as_str(), MASK);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secrets() -> HashMap<String, String> {
        HashMap::from([("TOKEN".to_owned(), "s3cr3t".to_owned())])
    }

    #[test]
    fn markers_are_found_revealed_and_masked_again() {
        let mut input =
            json!({"headers": {"Authorization": format!("Bearer {}", marker("TOKEN"))}, "n": 1});
        assert_eq!(referenced(&input), BTreeSet::from(["TOKEN".to_owned()]));
        reveal(&mut input, &secrets()).unwrap();
        assert_eq!(input["headers"]["Authorization"], json!("Bearer s3cr3t"));
        let mut output = json!({"echo": "got s3cr3t", "list": ["s3cr3t"]});
        redact(&mut output, &secrets());
        assert_eq!(output, json!({"echo": "got ***", "list": ["***"]}));
    }

    #[test]
    fn a_missing_secret_is_named() {
        let mut input = json!({"a": marker("NOPE")});
        assert_eq!(reveal(&mut input, &secrets()), Err("NOPE".to_owned()));
    }

    #[test]
    fn deep_values_are_walked_without_recursion() {
        let mut deep = json!({ "k": marker("TOKEN") });
        for _ in 0..100_000 {
            deep = Json::Array(vec![deep]);
        }
        assert_eq!(referenced(&deep), BTreeSet::from(["TOKEN".to_owned()]));
        reveal(&mut deep, &secrets()).unwrap();
        redact(&mut deep, &secrets());
        // Dropping it would recurse; this test leaks it instead.
        std::mem::forget(deep);
    }
}
