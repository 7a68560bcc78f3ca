//! The webhook signature rpaflow sends (`notify` steps) and checks (webhook triggers):
//! `X-Rpaflow-Signature: sha256=<hex HMAC-SHA256 of the raw body keyed by a secret>`.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// The header that carries the signature.
pub const HEADER: &str = "x-rpaflow-signature";

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length, so this cannot fail.
    <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("hmac accepts keys of any length"))
}

/// `sha256=<hex HMAC-SHA256 of body under secret>`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = mac(secret);
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether `given` (`sha256=<hex>`) signs `body` under `secret`, checked in constant time.
pub fn verify(secret: &[u8], body: &[u8], given: &[u8]) -> bool {
    let Some(hex_part) = given.strip_prefix(b"sha256=") else {
        return false;
    };
    let Ok(tag) = hex::decode(hex_part.trim_ascii()) else {
        return false;
    };
    let mut mac = mac(secret);
    mac.update(body);
    mac.verify_slice(&tag).is_ok()
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

    #[test]
    fn signatures_are_checked_over_the_raw_body() {
        let body = br#"{"a": 1}"#;
        let good = sign(b"k", body);
        assert!(verify(b"k", body, good.as_bytes()));
        assert!(!verify(b"other", body, good.as_bytes()));
        assert!(!verify(b"k", br#"{"a":1}"#, good.as_bytes()));
        assert!(!verify(
            b"k",
            body,
            good.trim_start_matches("sha256=").as_bytes()
        ));
        assert!(!verify(b"k", body, b"sha256=zz"));
        assert!(!verify(b"k", body, b"sha256="));
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"ab", b"abc"));
        assert!(!same_secret(b"", b"abc"));
    }
}
