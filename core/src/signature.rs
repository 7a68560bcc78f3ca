//! The webhook signature rpaflow sends (`notify` steps) and checks (webhook triggers).
//!
//! A signed delivery carries two headers:
//!
//! ```text
//! X-Rpaflow-Delivery: 5f0c2d6e-8d1b-4a53-9d6b-3c0f6e1f2a77
//! X-Rpaflow-Signature: t=1767225600,v1=<hex HMAC-SHA256>[,v1=<hex>...]
//! ```
//!
//! Each `v1` is the HMAC-SHA256, keyed by a shared secret, of `"{t}.{delivery}.{body}"`: the
//! timestamp (Unix seconds, decimal), a dot, the delivery id, a dot, and the raw body bytes. The
//! timestamp bounds how long a captured delivery stays usable (see [`verify`]); the delivery id
//! is the receiver's idempotency key, so signing it means a captured delivery can be replayed
//! only as itself, never as a new delivery. A sender rotating its secret sends one `v1` per
//! secret; a receiver accepts the delivery when any of them matches. Other keys (`v0`, a future
//! `v2`) are ignored, so the scheme can grow without breaking receivers.
//!
//! A delivery id is 1 to [`MAX_DELIVERY_ID`] visible ASCII characters without `.`, which keeps
//! the signed text unambiguous (`t` is digits; neither it nor the id holds the separator).

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// The header that carries the signature.
pub const HEADER: &str = "x-rpaflow-signature";
/// The header that carries the delivery id.
pub const DELIVERY_HEADER: &str = "x-rpaflow-delivery";
/// The longest delivery id accepted.
pub const MAX_DELIVERY_ID: usize = 200;
/// How far a signature's timestamp may be from the receiver's clock, either way, by default.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);
/// The most `v1` values one header may carry (a sender rotating secrets needs two).
const MAX_SIGNATURES: usize = 8;

/// Why a delivery's signature was refused. For logs only: a receiver answers every one the same.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("the delivery id must be 1 to {MAX_DELIVERY_ID} visible ASCII characters without `.`")]
    BadDeliveryId,
    #[error("the signature header is malformed: {0}")]
    Malformed(&'static str),
    #[error("the signature is {age_s} s old, past the tolerance of {tolerance_s} s")]
    Expired { age_s: u64, tolerance_s: u64 },
    #[error(
        "the signature is dated {ahead_s} s ahead of this clock, past the tolerance of {tolerance_s} s"
    )]
    FromTheFuture { ahead_s: u64, tolerance_s: u64 },
    #[error("no signature matches the timestamp, delivery id and body under the secret")]
    Mismatch,
}

/// Whether `id` may be a delivery id: 1 to [`MAX_DELIVERY_ID`] visible ASCII characters
/// (`!` to `~`) other than `.`.
pub fn is_delivery_id(id: &str) -> bool {
    (1..=MAX_DELIVERY_ID).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_graphic() && b != b'.')
}

fn mac(secret: &[u8], timestamp: u64, delivery: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("hmac accepts keys of any length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(delivery.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `X-Rpaflow-Signature` value for `body`, sent as delivery `delivery` at `timestamp` (Unix
/// seconds), signed with `secret`: `t=<timestamp>,v1=<hex>`. `delivery` must pass
/// [`is_delivery_id`], or no receiver will accept it.
pub fn sign(secret: &[u8], timestamp: u64, delivery: &str, body: &[u8]) -> String {
    sign_with_each(&[secret], timestamp, delivery, body)
}

/// Like [`sign`], with one `v1` per secret: what a sender sends while it rotates its secret, so
/// that receivers holding either the old or the new one accept the delivery.
pub fn sign_with_each(secrets: &[&[u8]], timestamp: u64, delivery: &str, body: &[u8]) -> String {
    let mut header = format!("t={timestamp}");
    for secret in secrets {
        let tag = mac(secret, timestamp, delivery, body)
            .finalize()
            .into_bytes();
        header.push_str(",v1=");
        header.push_str(&hex::encode(tag));
    }
    header
}

/// A parsed `X-Rpaflow-Signature`: its timestamp and its `v1` tags.
#[derive(Debug)]
struct Parsed {
    timestamp: u64,
    tags: Vec<Vec<u8>>,
}

fn parse(header: &[u8]) -> Result<Parsed, Error> {
    let header = std::str::from_utf8(header).map_err(|_| Error::Malformed("not text"))?;
    let mut timestamp = None;
    let mut tags = Vec::new();
    for item in header.split(',') {
        let (key, value) = item
            .trim()
            .split_once('=')
            .ok_or(Error::Malformed("an item is not `key=value`"))?;
        match key {
            "t" => {
                if timestamp.is_some() {
                    return Err(Error::Malformed("`t` is given twice"));
                }
                // Digits only: `u64::from_str` would also take a leading `+`.
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(Error::Malformed("`t` is not Unix seconds"));
                }
                timestamp = Some(
                    value
                        .parse()
                        .map_err(|_| Error::Malformed("`t` is not Unix seconds"))?,
                );
            }
            "v1" => {
                if tags.len() == MAX_SIGNATURES {
                    return Err(Error::Malformed("too many `v1` values"));
                }
                tags.push(hex::decode(value).map_err(|_| Error::Malformed("a `v1` is not hex"))?);
            }
            // Other schemes, for receivers that know them.
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(Error::Malformed("no `t`"))?;
    if tags.is_empty() {
        return Err(Error::Malformed("no `v1`"));
    }
    Ok(Parsed { timestamp, tags })
}

/// Checks `header` (an `X-Rpaflow-Signature` value) for delivery `delivery` of `body` under
/// `secret`, at `now` (Unix seconds, the receiver's clock): the delivery id must be well formed,
/// the timestamp no further than `tolerance` from `now` in either direction, and one of the `v1`
/// tags must match, each compared in constant time. Answers the signed timestamp.
pub fn verify(
    secret: &[u8],
    header: &[u8],
    delivery: &str,
    body: &[u8],
    now: u64,
    tolerance: Duration,
) -> Result<u64, Error> {
    if !is_delivery_id(delivery) {
        return Err(Error::BadDeliveryId);
    }
    let Parsed { timestamp, tags } = parse(header)?;
    let tolerance_s = tolerance.as_secs();
    if now > timestamp && now - timestamp > tolerance_s {
        return Err(Error::Expired {
            age_s: now - timestamp,
            tolerance_s,
        });
    }
    if timestamp > now && timestamp - now > tolerance_s {
        return Err(Error::FromTheFuture {
            ahead_s: timestamp - now,
            tolerance_s,
        });
    }
    let mac = mac(secret, timestamp, delivery, body);
    // Every tag is checked (`verify_slice` compares in constant time), matched or not, so the
    // time taken does not say which one matched.
    let matched = tags.iter().fold(false, |any, tag| {
        mac.clone().verify_slice(tag).is_ok() | any
    });
    if matched {
        Ok(timestamp)
    } else {
        Err(Error::Mismatch)
    }
}

/// Whether two secrets are equal, in time that does not depend on where they differ (their
/// digests are compared, so lengths do not leak either).
pub fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let (a, b) = (Sha256::digest(given), Sha256::digest(expected));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_767_225_600;
    const TOLERANCE: Duration = DEFAULT_TOLERANCE;

    fn check(secret: &[u8], header: &str, delivery: &str, body: &[u8]) -> Result<u64, Error> {
        verify(secret, header.as_bytes(), delivery, body, NOW, TOLERANCE)
    }

    #[test]
    fn signs_timestamp_delivery_and_body() {
        // A test vector computed independently:
        // printf '1767225600.d-1.{"a": 1}' | openssl dgst -sha256 -hmac k
        let header = sign(b"k", NOW, "d-1", br#"{"a": 1}"#);
        assert_eq!(
            header,
            "t=1767225600,v1=2b830121cc6e79ca5095149ed38950d675e21c67ba9dd49b1f583140ab34c5a5"
        );
        assert_eq!(check(b"k", &header, "d-1", br#"{"a": 1}"#), Ok(NOW));
    }

    #[test]
    fn any_change_breaks_the_signature() {
        let body = br#"{"a": 1}"#;
        let header = sign(b"k", NOW, "d-1", body);
        assert_eq!(check(b"other", &header, "d-1", body), Err(Error::Mismatch));
        assert_eq!(check(b"k", &header, "d-2", body), Err(Error::Mismatch));
        assert_eq!(
            check(b"k", &header, "d-1", br#"{"a": 2}"#),
            Err(Error::Mismatch)
        );
        // Another timestamp with the same tag.
        let moved = header.replacen(&NOW.to_string(), &(NOW - 1).to_string(), 1);
        assert_eq!(check(b"k", &moved, "d-1", body), Err(Error::Mismatch));
    }

    #[test]
    fn the_timestamp_must_be_within_the_tolerance_either_way() {
        let body = b"{}";
        let at = |t: u64| check(b"k", &sign(b"k", t, "d", body), "d", body);
        assert_eq!(at(NOW - 300), Ok(NOW - 300));
        assert_eq!(at(NOW + 300), Ok(NOW + 300));
        assert_eq!(
            at(NOW - 301),
            Err(Error::Expired {
                age_s: 301,
                tolerance_s: 300
            })
        );
        assert_eq!(
            at(NOW + 301),
            Err(Error::FromTheFuture {
                ahead_s: 301,
                tolerance_s: 300
            })
        );
        assert!(matches!(at(0), Err(Error::Expired { .. })));
        assert!(matches!(at(u64::MAX), Err(Error::FromTheFuture { .. })));
    }

    #[test]
    fn rotation_sends_one_tag_per_secret() {
        let body = b"{}";
        let header = sign_with_each(&[b"old", b"new"], NOW, "d", body);
        assert_eq!(header.matches(",v1=").count(), 2);
        assert_eq!(check(b"old", &header, "d", body), Ok(NOW));
        assert_eq!(check(b"new", &header, "d", body), Ok(NOW));
        assert_eq!(check(b"third", &header, "d", body), Err(Error::Mismatch));
    }

    #[test]
    fn unknown_schemes_are_skipped_and_malformed_headers_refused() {
        let body = b"{}";
        let good = sign(b"k", NOW, "d", body);
        let tag = good.split_once(",v1=").unwrap().1;
        for header in [
            format!("t={NOW},v0=abc,v1={tag}"),
            format!("v1={tag}, t={NOW}"),
            format!("t={NOW},v1=00,v1={tag},v2=zz"),
        ] {
            assert_eq!(check(b"k", &header, "d", body), Ok(NOW), "{header}");
        }
        for (header, why) in [
            (format!("v1={tag}"), "no `t`"),
            (format!("t={NOW}"), "no `v1`"),
            (format!("t={NOW},v0={tag}"), "no `v1`"),
            (format!("t=+{NOW},v1={tag}"), "`t` is not Unix seconds"),
            (format!("t=,v1={tag}"), "`t` is not Unix seconds"),
            (format!("t={NOW},t={NOW},v1={tag}"), "`t` is given twice"),
            (format!("t={NOW},v1=xyz"), "a `v1` is not hex"),
            (format!("t={NOW};v1={tag}"), "`t` is not Unix seconds"),
            (format!("t={NOW},{tag}"), "an item is not `key=value`"),
            (format!("t=1{NOW}{NOW},v1={tag}"), "`t` is not Unix seconds"),
            (format!("sha256={tag}"), "no `t`"),
            (
                format!("t={NOW}{}", ",v1=00".repeat(9)),
                "too many `v1` values",
            ),
        ] {
            assert_eq!(
                check(b"k", &header, "d", body),
                Err(Error::Malformed(why)),
                "{header}"
            );
        }
        assert_eq!(
            verify(b"k", b"t=\xff", "d", body, NOW, TOLERANCE),
            Err(Error::Malformed("not text"))
        );
    }

    #[test]
    fn delivery_ids_keep_the_signed_text_unambiguous() {
        assert!(is_delivery_id("5f0c2d6e-8d1b-4a53-9d6b-3c0f6e1f2a77"));
        assert!(is_delivery_id("run-9/tell/2"));
        assert!(is_delivery_id(&"x".repeat(MAX_DELIVERY_ID)));
        for bad in [
            "",
            "a.b",
            "with space",
            "tab\t",
            "é",
            &"x".repeat(MAX_DELIVERY_ID + 1),
        ] {
            assert!(!is_delivery_id(bad), "{bad:?}");
        }
        // "a" with body "b.{}" and "a.b" with body "{}" would sign the same text.
        let header = sign(b"k", NOW, "a", b"b.{}");
        assert_eq!(
            check(b"k", &header, "a.b", b"{}"),
            Err(Error::BadDeliveryId)
        );
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"ab", b"abc"));
        assert!(!same_secret(b"", b"abc"));
    }
}
