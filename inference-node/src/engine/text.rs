//! Turning generated tokens into text as they come: incremental decoding that never splits a
//! multi-byte UTF-8 character, and stop sequences (text that could still become one is held back).

use tokenizers::Tokenizer;

use crate::error::{Error, Result};

/// What a new token did to the text.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// Text that became final.
    pub text: String,
    /// The text reached a stop sequence (it ends before it).
    pub stopped: bool,
}

/// The text of one sequence's generated tokens.
#[derive(Debug, Default)]
pub struct TextStream {
    stop: Vec<String>,
    /// Token offsets of the incremental decoder (as in text-generation-inference).
    prefix_offset: usize,
    read_offset: usize,
    /// All the text decoded so far, and how much of it was handed out.
    text: String,
    emitted: usize,
}

impl TextStream {
    pub fn new(stop: Vec<String>) -> Self {
        Self {
            stop,
            ..Self::default()
        }
    }

    /// Takes the generated tokens so far (the last one new) and returns the text that became final.
    pub fn push(&mut self, tokenizer: &Tokenizer, tokens: &[u32]) -> Result<Delta> {
        let prefix = decode(tokenizer, &tokens[self.prefix_offset..self.read_offset])?;
        let full = decode(tokenizer, &tokens[self.prefix_offset..])?;
        if full.len() <= prefix.len() || full.ends_with('\u{FFFD}') {
            // An incomplete character (or nothing new yet): wait for the next token.
            return Ok(Delta::default());
        }
        let Some(new) = full.get(prefix.len()..) else {
            return Ok(Delta::default());
        };
        self.prefix_offset = self.read_offset;
        self.read_offset = tokens.len();
        let searched_from = self.text.len().saturating_sub(self.longest_stop());
        self.text.push_str(new);
        if let Some(at) = self.find_stop(searched_from) {
            self.text.truncate(at);
            let text = self.take(at);
            return Ok(Delta {
                text,
                stopped: true,
            });
        }
        let safe = self.text.len() - self.held_back();
        Ok(Delta {
            text: self.take(safe),
            stopped: false,
        })
    }

    /// The generation ended (length or end-of-sequence): everything not yet handed out, with an
    /// incomplete trailing character as U+FFFD.
    pub fn finish(&mut self, tokenizer: &Tokenizer, tokens: &[u32]) -> Result<String> {
        let prefix = decode(tokenizer, &tokens[self.prefix_offset..self.read_offset])?;
        let full = decode(tokenizer, &tokens[self.prefix_offset..])?;
        if let Some(rest) = full.get(prefix.len()..) {
            self.text.push_str(rest);
        }
        self.prefix_offset = tokens.len();
        self.read_offset = tokens.len();
        Ok(self.take(self.text.len()))
    }

    fn take(&mut self, upto: usize) -> String {
        let out = self.text[self.emitted..upto].to_string();
        self.emitted = upto;
        out
    }

    fn longest_stop(&self) -> usize {
        self.stop.iter().map(String::len).max().unwrap_or(0)
    }

    /// The earliest stop sequence that starts at or after `from`.
    fn find_stop(&self, from: usize) -> Option<usize> {
        let from = (0..=from).rev().find(|&i| self.text.is_char_boundary(i))?;
        self.stop
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min()
    }

    /// The length of the longest end of the text that a stop sequence starts with.
    fn held_back(&self) -> usize {
        let tail_start = self
            .emitted
            .max(self.text.len().saturating_sub(self.longest_stop()));
        (tail_start..self.text.len())
            .filter(|&i| self.text.is_char_boundary(i))
            .find(|&i| self.stop.iter().any(|s| s.starts_with(&self.text[i..])))
            .map_or(0, |i| self.text.len() - i)
    }
}

fn decode(tokenizer: &Tokenizer, tokens: &[u32]) -> Result<String> {
    if tokens.is_empty() {
        return Ok(String::new());
    }
    tokenizer.decode(tokens, true).map_err(|e| Error::Tokenize {
        operation: "decode",
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-level BPE tokenizer with a vocabulary of the 256 bytes only: every token is one
    /// byte, so multi-byte characters always span several tokens.
    fn byte_tokenizer() -> Tokenizer {
        let chars = gpt2_byte_chars();
        let vocab: serde_json::Map<String, serde_json::Value> = chars
            .iter()
            .enumerate()
            .map(|(i, c)| (c.to_string(), serde_json::Value::from(i)))
            .collect();
        let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": byte_level, "post_processor": null, "decoder": byte_level,
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                      "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
                      "vocab": vocab, "merges": []}
        });
        match Tokenizer::from_bytes(json.to_string()) {
            Ok(t) => t,
            Err(e) => panic!("test tokenizer: {e}"),
        }
    }

    /// GPT-2's mapping of bytes to printable characters, indexed by byte.
    fn gpt2_byte_chars() -> Vec<char> {
        let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
            .chain(0xA1..=0xAC)
            .chain(0xAE..=0xFF)
            .collect();
        let mut chars = vec!['\0'; 256];
        for &b in &printable {
            chars[b as usize] = char::from_u32(b).unwrap_or('?');
        }
        let mut n = 0;
        for b in 0..256u32 {
            if !printable.contains(&b) {
                chars[b as usize] = char::from_u32(256 + n).unwrap_or('?');
                n += 1;
            }
        }
        printable.clear();
        chars
    }

    fn ids(text: &str) -> Vec<u32> {
        text.bytes().map(u32::from).collect()
    }

    fn stream(text: &str, stop: &[&str]) -> (Vec<String>, bool) {
        let tok = byte_tokenizer();
        let tokens = ids(text);
        let mut s = TextStream::new(stop.iter().map(|s| s.to_string()).collect());
        let mut chunks = Vec::new();
        for n in 1..=tokens.len() {
            let d = s.push(&tok, &tokens[..n]).unwrap_or_default();
            chunks.push(d.text);
            if d.stopped {
                return (chunks, true);
            }
        }
        chunks.push(s.finish(&tok, &tokens).unwrap_or_default());
        (chunks, false)
    }

    #[test]
    fn multibyte_characters_are_never_split() {
        let (chunks, stopped) = stream("héllo 日本語 ok", &[]);
        assert!(!stopped);
        assert!(chunks.iter().all(|c| !c.contains('\u{FFFD}')));
        assert_eq!(chunks.concat(), "héllo 日本語 ok");
        // "日" is three tokens: the first two give nothing, the third the whole character.
        let first = chunks.iter().position(|c| c == "日");
        assert!(first.is_some_and(|i| chunks[i - 1].is_empty() && chunks[i - 2].is_empty()));
    }

    #[test]
    fn stop_sequences_end_the_text_before_them() {
        let (chunks, stopped) = stream("one two\nthree", &["\n", "END"]);
        assert!(stopped);
        assert_eq!(chunks.concat(), "one two");
    }

    #[test]
    fn a_possible_stop_is_held_back_then_released() {
        let (chunks, stopped) = stream("an ENough", &["END"]);
        assert!(!stopped);
        assert_eq!(chunks.concat(), "an ENough");
        // "E" and "EN" were held until "o" showed they do not start "END".
        assert_eq!(chunks[3], "");
        assert_eq!(chunks[4], "");
        assert_eq!(chunks[5], "ENo");
    }

    #[test]
    fn a_stop_spanning_tokens_and_characters() {
        let (chunks, stopped) = stream("ab 日本語 cd", &["本語"]);
        assert!(stopped);
        assert_eq!(chunks.concat(), "ab 日");
    }

    #[test]
    fn an_incomplete_character_at_the_end_is_replaced() {
        let tok = byte_tokenizer();
        let mut tokens = ids("a");
        tokens.extend(
            &"日".as_bytes()[..2]
                .iter()
                .map(|&b| u32::from(b))
                .collect::<Vec<_>>(),
        );
        let mut s = TextStream::new(Vec::new());
        let mut text = String::new();
        for n in 1..=tokens.len() {
            text += &s.push(&tok, &tokens[..n]).unwrap_or_default().text;
        }
        text += &s.finish(&tok, &tokens).unwrap_or_default();
        assert_eq!(text, "a\u{FFFD}");
    }
}
