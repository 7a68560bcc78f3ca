//! Reading typed values out of YAML nodes, reporting what does not fit, and the name and typo
//! helpers the other parts share.

use std::time::Duration;

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode, MarkedSequenceNode};
use marked_yaml::{Node, Span};
use serde_json::Value as Json;

use super::Parser;

impl Parser<'_> {
    /// Reports keys of `map` that are not in `allowed`.
    pub(super) fn check_fields(&mut self, map: &MarkedMappingNode, allowed: &[&str], what: &str) {
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                let hint = closest(key.as_str(), allowed)
                    .map(|c| format!("; did you mean `{c}`?"))
                    .unwrap_or_else(|| format!(" (expected one of: {})", allowed.join(", ")));
                self.err(
                    key.span(),
                    format!("unknown field `{}` in {what}{hint}", key.as_str()),
                );
            }
        }
    }

    fn scalar<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n MarkedScalarNode> {
        let s = node.as_scalar();
        if s.is_none() {
            self.err(node.span(), format!("{what} must be a single value"));
        }
        s
    }

    pub(super) fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        self.scalar(node, what).map(|s| s.as_str().to_owned())
    }

    pub(super) fn mapping<'n>(
        &mut self,
        node: &'n Node,
        what: &str,
    ) -> Option<&'n MarkedMappingNode> {
        let m = node.as_mapping();
        if m.is_none() {
            self.err(node.span(), format!("{what} must be a mapping"));
        }
        m
    }

    pub(super) fn sequence<'n>(
        &mut self,
        node: &'n Node,
        what: &str,
    ) -> Option<&'n MarkedSequenceNode> {
        let s = node.as_sequence();
        if s.is_none() {
            self.err(node.span(), format!("{what} must be a list"));
        }
        s
    }

    pub(super) fn uint(&mut self, node: &Node, what: &str, min: u32) -> Option<u32> {
        let s = self.scalar(node, what)?;
        match s.as_str().parse::<u32>() {
            Ok(v) if v >= min => Some(v),
            _ => {
                self.err(
                    node.span(),
                    format!(
                        "{what} must be a whole number of at least {min}, got `{}`",
                        s.as_str()
                    ),
                );
                None
            }
        }
    }

    pub(super) fn duration(&mut self, node: &Node, what: &str) -> Option<Duration> {
        let s = self.scalar(node, what)?;
        match humantime::parse_duration(s.as_str().trim()) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                self.err(node.span(), format!("{what} must be longer than zero"));
                None
            }
            Err(e) => {
                self.err(
                    node.span(),
                    format!("bad duration `{}` for {what}: {e} (write e.g. `500ms`, `30s`, `5m`, `1h 30m`)", s.as_str()),
                );
                None
            }
        }
    }

    pub(super) fn string_list(&mut self, node: &Node, what: &str) -> Vec<(String, Span)> {
        if let Some(s) = node.as_scalar() {
            return vec![(s.as_str().to_owned(), *s.span())];
        }
        let Some(seq) = self.sequence(node, what) else {
            return Vec::new();
        };
        seq.iter()
            .filter_map(|item| self.string(item, what).map(|s| (s, *item.span())))
            .collect()
    }
}

/// Converts a YAML node to JSON: plain scalars become null, booleans and numbers where they read
/// as such; quoted scalars stay strings.
pub(super) fn to_json(node: &Node) -> Json {
    match node {
        Node::Scalar(s) => scalar_to_json(s),
        Node::Sequence(seq) => Json::Array(seq.iter().map(to_json).collect()),
        Node::Mapping(map) => Json::Object(
            map.iter()
                .map(|(k, v)| (k.as_str().to_owned(), to_json(v)))
                .collect(),
        ),
    }
}

fn scalar_to_json(s: &MarkedScalarNode) -> Json {
    if s.may_coerce() {
        match s.as_str() {
            "" | "~" | "null" | "Null" | "NULL" => return Json::Null,
            _ => {}
        }
        if let Some(b) = s.as_bool() {
            return Json::Bool(b);
        }
        if let Some(i) = s.as_i64() {
            return Json::from(i);
        }
        if let Some(u) = s.as_u64() {
            return Json::from(u);
        }
        if let Some(f) = s.as_f64().filter(|f| f.is_finite()) {
            let text = s.as_str();
            if text
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
                && let Some(n) = serde_json::Number::from_f64(f)
            {
                return Json::Number(n);
            }
        }
    }
    Json::String(s.as_str().to_owned())
}

pub(super) fn valid_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub(super) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The candidate closest to `word`, when it is close enough to be a likely typo.
pub(super) fn closest<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4) && *d < c.len())
        .min()
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}
