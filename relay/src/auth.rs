//! Tokens: who may read and write which collections, until when.
//!
//! A token is `acc1.<claims>.<signature>`: the claims are JSON
//! (`{"exp": <unix seconds>, "c": {"<collection>": "r" | "rw"}}`) in
//! unpadded base64url, and the signature is HMAC-SHA256 with the relay's
//! secret over `acc1.<claims>`, also base64url. Verification recomputes the
//! MAC and compares in constant time (the `hmac` crate's `verify_slice`)
//! before reading the claims, then checks the expiry. The relay mints
//! tokens with the same secret (`accord-relay token`).
//!
//! Secrets rotate: [`Tokens`] holds the current secret, which alone signs,
//! and any number of previous ones that still verify during an overlap
//! window (`--previous-secret-file`). A token is checked against every
//! secret, always all of them, each comparison in constant time, so
//! neither the result nor the time taken says which secret signed it.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use accord_engine::sync::Right;
use accord_engine::sync::{Access, Grant};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The prefix (and format version) of every token.
const PREFIX: &str = "acc1";

/// The shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

/// The signed content of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Expiry, in seconds since the Unix epoch.
    pub exp: u64,
    /// Rights per collection.
    pub c: BTreeMap<String, Right>,
}

/// Why a token was refused. The text is what the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token was presented to a relay that requires one.
    #[error("a token is required")]
    Missing,
    /// Not three dot-separated base64url parts, or unreadable claims.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The signature does not match: another secret, or a tampered token.
    #[error("bad token signature")]
    BadSignature,
    /// The token's time is over.
    #[error("token expired {0} s ago")]
    Expired(u64),
}

impl TokenError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            TokenError::Missing => "missing",
            TokenError::Malformed(_) => "malformed",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired(_) => "expired",
        }
    }
}

/// Why a secret cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("the relay secret must be at least {MIN_SECRET_BYTES} bytes (got {0})")]
pub struct WeakSecret(usize);

/// Signs tokens with the current secret; verifies them with it and with
/// the previous secrets still accepted.
#[derive(Clone)]
pub struct Tokens {
    /// The HMAC key that signs new tokens (and verifies).
    key: Vec<u8>,
    /// Keys of earlier secrets: they verify tokens minted before a
    /// rotation, and sign nothing.
    previous: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tokens {{ key: <redacted>, previous: {} <redacted> }}",
            self.previous.len()
        )
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Tokens {
    /// A signer for this secret (surrounding whitespace is ignored, so a
    /// secret file may end with a newline).
    pub fn new(secret: &[u8]) -> Result<Self, WeakSecret> {
        Ok(Tokens {
            key: key_of(secret)?,
            previous: Vec::new(),
        })
    }

    /// Also accepts tokens signed with `secret`, an earlier secret, until
    /// it is dropped from the configuration (it never signs).
    pub fn with_previous(mut self, secret: &[u8]) -> Result<Self, WeakSecret> {
        self.previous.push(key_of(secret)?);
        Ok(self)
    }

    /// How many previous secrets still verify.
    pub fn previous_secrets(&self) -> usize {
        self.previous.len()
    }

    /// Whether `signature` is the MAC of `body` under any accepted secret.
    /// Every secret is tried, each in constant time, whatever matched.
    fn genuine(&self, body: &str, signature: &[u8]) -> bool {
        std::iter::once(&self.key)
            .chain(&self.previous)
            .fold(false, |found, key| {
                let mut mac = mac(key);
                mac.update(body.as_bytes());
                found | mac.verify_slice(signature).is_ok()
            })
    }

    /// A token granting `rights` for `ttl` from now.
    pub fn mint(&self, rights: BTreeMap<String, Right>, ttl: Duration) -> String {
        let claims = Claims {
            exp: unix_now().saturating_add(ttl.as_secs()),
            c: rights,
        };
        self.sign(&claims)
    }

    /// The token for exactly these claims.
    pub fn sign(&self, claims: &Claims) -> String {
        let json = serde_json::to_vec(claims).unwrap_or_default();
        let body = format!("{PREFIX}.{}", URL_SAFE_NO_PAD.encode(json));
        let mut mac = mac(&self.key);
        mac.update(body.as_bytes());
        format!(
            "{body}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    /// The claims of a genuine, unexpired token.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        let (body, signature) = token
            .rsplit_once('.')
            .ok_or(TokenError::Malformed("expected acc1.<claims>.<signature>"))?;
        let (prefix, claims) = body
            .split_once('.')
            .ok_or(TokenError::Malformed("expected acc1.<claims>.<signature>"))?;
        if prefix != PREFIX {
            return Err(TokenError::Malformed("unknown token format; expected acc1"));
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        if !self.genuine(body, &signature) {
            return Err(TokenError::BadSignature);
        }
        let json = URL_SAFE_NO_PAD
            .decode(claims)
            .map_err(|_| TokenError::Malformed("claims are not base64url"))?;
        let claims: Claims = serde_json::from_slice(&json)
            .map_err(|_| TokenError::Malformed("claims are not valid JSON"))?;
        if claims.exp <= now {
            return Err(TokenError::Expired(now - claims.exp));
        }
        Ok(claims)
    }
}

/// The HMAC key of a secret: surrounding whitespace is ignored, so a
/// secret file may end with a newline.
fn key_of(secret: &[u8]) -> Result<Vec<u8>, WeakSecret> {
    let key = secret.trim_ascii().to_vec();
    if key.len() < MIN_SECRET_BYTES {
        return Err(WeakSecret(key.len()));
    }
    Ok(key)
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length; this cannot fail.
    <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
}

impl Access for Tokens {
    fn check(&self, token: &str, now_ms: u64) -> Result<Grant, String> {
        let claims = self
            .verify(token, now_ms / 1000)
            .map_err(|e| e.to_string())?;
        let rights = claims
            .c
            .into_iter()
            .map(|(c, r)| Ok((c.parse()?, r)))
            .collect::<Result<_, accord_engine::id::ParseCollectionError>>()
            .map_err(|e| format!("malformed token: {e}"))?;
        // The subject: a digest of the token's signature, unique per
        // minted token and useless without the token.
        let signature = token.trim().rsplit('.').next().unwrap_or_default();
        let subject = accord_engine::id::digest_hex(signature.as_bytes(), 16);
        Ok(Grant::collections(rights, Some(claims.exp.saturating_mul(1000))).with_subject(subject))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::new(b"correct horse battery staple").expect("secret")
    }

    fn rights(pairs: &[(&str, Right)]) -> BTreeMap<String, Right> {
        pairs.iter().map(|(c, r)| ((*c).to_owned(), *r)).collect()
    }

    #[test]
    fn minted_tokens_verify_and_grant_their_rights() {
        let t = tokens();
        let token = t.mint(
            rights(&[("contacts", Right::ReadWrite), ("notes", Right::Read)]),
            Duration::from_secs(60),
        );
        let grant = t.check(&token, unix_now() * 1000).expect("valid");
        assert!(grant.can_write("contacts") && grant.can_read("notes"));
        assert!(!grant.can_write("notes") && !grant.can_read("other"));
    }

    #[test]
    fn bad_tokens_are_refused_with_their_reason() {
        let t = tokens();
        let now = unix_now();
        let good = t.mint(rights(&[("c", Right::Read)]), Duration::from_secs(60));
        assert_eq!(t.verify("", now), Err(TokenError::Missing));
        assert!(matches!(
            t.verify("garbage", now),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            t.verify("acc2.e30.AAAA", now),
            Err(TokenError::Malformed(_))
        ));
        let other = Tokens::new(b"another secret of enough length").expect("secret");
        assert_eq!(other.verify(&good, now), Err(TokenError::BadSignature));
        // Tampered claims: give ourselves write access.
        let forged_claims = URL_SAFE_NO_PAD.encode(br#"{"exp":99999999999,"c":{"c":"rw"}}"#);
        let signature = good.rsplit_once('.').expect("parts").1;
        assert_eq!(
            t.verify(&format!("acc1.{forged_claims}.{signature}"), now),
            Err(TokenError::BadSignature)
        );
        let expired = t.sign(&Claims {
            exp: now - 10,
            c: rights(&[("c", Right::Read)]),
        });
        assert_eq!(t.verify(&expired, now), Err(TokenError::Expired(10)));
    }

    #[test]
    fn previous_secrets_verify_but_never_sign() {
        let old = Tokens::new(b"the secret of last quarter, long").expect("secret");
        let new = Tokens::new(b"the secret of this quarter, long").expect("secret");
        let rotating = new
            .clone()
            .with_previous(b"the secret of last quarter, long")
            .expect("secret");
        assert_eq!(rotating.previous_secrets(), 1);
        let now = unix_now();
        let c = rights(&[("c", Right::Read)]);
        let minted_before = old.mint(c.clone(), Duration::from_secs(60));
        let minted_after = rotating.mint(c, Duration::from_secs(60));
        assert!(rotating.verify(&minted_before, now).is_ok());
        assert!(rotating.verify(&minted_after, now).is_ok());
        assert_eq!(
            new.verify(&minted_before, now),
            Err(TokenError::BadSignature),
            "without the previous secret, old tokens are refused"
        );
        assert!(
            new.verify(&minted_after, now).is_ok(),
            "minted with the new one"
        );
        assert_eq!(
            old.verify(&minted_after, now),
            Err(TokenError::BadSignature)
        );
        assert!(rotating.clone().with_previous(b"short").is_err());
        assert!(!format!("{rotating:?}").contains("quarter"), "redacted");
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(Tokens::new(b"short").is_err());
        assert!(Tokens::new(b"   too short   \n").is_err());
    }
}
