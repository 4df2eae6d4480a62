//! Customer session tokens: short-lived, HMAC-SHA256-signed bearer tokens that let one
//! customer read its own data (balance, usage, ledger, request trails) and see its credit
//! page. The product's backend mints them through the admin API
//! (`POST /v1/admin/customers/{customer}/sessions`) and hands them to its signed-in user.
//!
//! A token is `cgs_v1.<customer hex>.<issued ms>.<expires ms>.<signature hex>`, the
//! signature being HMAC-SHA256 under the operator's signing key over everything before
//! it. Nothing is stored: rotating the key revokes every session at once. This module
//! signs and checks; it never decides what a session may read (the read listener does).

use std::path::Path;

use anyhow::{Context, bail};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Prefix of every customer session token, so a leaked one is recognisable (admin tokens
/// start with `cgt_`).
pub const SESSION_PREFIX: &str = "cgs_v1.";

/// Shortest signing key, bytes: 256 bits, the HMAC-SHA256 block's security level.
pub const SESSION_KEY_MIN_BYTES: usize = 32;

/// A session's lifetime when the mint call does not say, seconds: 15 minutes, long
/// enough for a visit to the credit page, short enough that a leaked URL soon stops working.
pub const SESSION_TTL_DEFAULT_SECS: u64 = 900;

/// Longest session a mint call may ask for, seconds: 12 hours (a working day); the
/// product mints a new one per page view anyway.
pub const SESSION_TTL_MAX_SECS: u64 = 43_200;

/// Longest customer id a token carries, bytes (the protocol's id limit is far below).
const CUSTOMER_MAX_BYTES: usize = 256;

/// The operator's signing key. `Debug` never prints it.
#[derive(Clone)]
pub struct SessionKey(Vec<u8>);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(<redacted>)")
    }
}

/// A checked session: whose data it may read and until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomerSession {
    /// The one customer whose data the session reads.
    pub customer: String,
    /// When it was minted, ms since the Unix epoch.
    pub issued_at_ms: u64,
    /// When it stops working, ms since the Unix epoch.
    pub expires_at_ms: u64,
}

/// Why a presented session token is refused; each is a 401 with its own error code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionError {
    /// Not a session token at all, or damaged.
    Malformed,
    /// The signature does not match: forged, or signed with a key since rotated.
    BadSignature,
    /// Past its expiry.
    Expired {
        /// When it expired, ms since the Unix epoch.
        expired_at_ms: u64,
    },
}

impl SessionError {
    /// The machine-readable error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed => "session_malformed",
            Self::BadSignature => "session_invalid",
            Self::Expired { .. } => "session_expired",
        }
    }

    /// What went wrong, for people.
    pub fn message(&self) -> String {
        match self {
            Self::Malformed => "not a customer session token (cgs_v1.…)".into(),
            Self::BadSignature => {
                "the session token's signature does not match: forged, or signed with a key \
                 that has since been rotated; ask the product for a new session"
                    .into()
            }
            Self::Expired { expired_at_ms } => format!(
                "the session expired at {expired_at_ms} ms since the epoch; ask the product for a new session"
            ),
        }
    }
}

impl SessionKey {
    /// A key from its bytes; at least [`SESSION_KEY_MIN_BYTES`].
    pub fn new(bytes: impl Into<Vec<u8>>) -> anyhow::Result<Self> {
        let bytes = bytes.into();
        if bytes.len() < SESSION_KEY_MIN_BYTES {
            bail!(
                "the session signing key is {} bytes; it must be at least {SESSION_KEY_MIN_BYTES} \
                 (for example 64 hex characters from `openssl rand -hex 32`)",
                bytes.len()
            );
        }
        Ok(Self(bytes))
    }

    /// The key from `--session-key-file` (its contents, surrounding whitespace trimmed) or,
    /// without a file, from the value of `CREDITGATE_SESSION_KEY`; `None` when neither is
    /// given (customer sessions off).
    pub fn load(file: Option<&Path>, value: Option<&str>) -> anyhow::Result<Option<Self>> {
        let text = match (file, value) {
            (Some(path), _) => std::fs::read_to_string(path)
                .with_context(|| format!("--session-key-file: reading {}", path.display()))?,
            (None, Some(v)) => v.to_string(),
            (None, None) => return Ok(None),
        };
        Self::new(text.trim().as_bytes().to_vec())
            .context("--session-key-file / CREDITGATE_SESSION_KEY")
            .map(Some)
    }

    fn sign(&self, body: &str) -> Vec<u8> {
        // HMAC accepts keys of any length; `new` checked the minimum.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(body.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// A token for `customer`, valid from `now_ms` for `ttl_secs` seconds.
    pub fn mint(&self, customer: &str, now_ms: u64, ttl_secs: u64) -> String {
        let expires = now_ms.saturating_add(ttl_secs.saturating_mul(1000));
        let body = format!(
            "{SESSION_PREFIX}{}.{now_ms}.{expires}",
            hex::encode(customer.as_bytes())
        );
        let signature = hex::encode(self.sign(&body));
        format!("{body}.{signature}")
    }

    /// Checks `token`'s shape, signature (in constant time) and expiry at `now_ms`.
    pub fn verify(&self, token: &str, now_ms: u64) -> Result<CustomerSession, SessionError> {
        let token = token.trim();
        let (body, signature) = token.rsplit_once('.').ok_or(SessionError::Malformed)?;
        let fields = body
            .strip_prefix(SESSION_PREFIX)
            .ok_or(SessionError::Malformed)?;
        let presented = hex::decode(signature).map_err(|_| SessionError::Malformed)?;
        let expected = self.sign(body);
        if !bool::from(expected.ct_eq(&presented)) {
            return Err(SessionError::BadSignature);
        }
        let mut parts = fields.split('.');
        let (Some(customer), Some(issued), Some(expires), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SessionError::Malformed);
        };
        let customer = hex::decode(customer)
            .ok()
            .filter(|c| c.len() <= CUSTOMER_MAX_BYTES)
            .and_then(|c| String::from_utf8(c).ok())
            .ok_or(SessionError::Malformed)?;
        let issued_at_ms: u64 = issued.parse().map_err(|_| SessionError::Malformed)?;
        let expires_at_ms: u64 = expires.parse().map_err(|_| SessionError::Malformed)?;
        if now_ms >= expires_at_ms {
            return Err(SessionError::Expired {
                expired_at_ms: expires_at_ms,
            });
        }
        Ok(CustomerSession {
            customer,
            issued_at_ms,
            expires_at_ms,
        })
    }
}

/// Whether `token` looks like a customer session token (rather than an admin token).
pub fn is_session_token(token: &str) -> bool {
    token.trim().starts_with(SESSION_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SessionKey {
        SessionKey::new(vec![byte; 32]).unwrap()
    }

    #[test]
    fn a_minted_token_verifies_until_it_expires() {
        let k = key(7);
        let t = k.mint("acme <b>&co", 1_000, 60);
        assert!(is_session_token(&t));
        let s = k.verify(&t, 60_999).unwrap();
        assert_eq!(s.customer, "acme <b>&co");
        assert_eq!((s.issued_at_ms, s.expires_at_ms), (1_000, 61_000));
        assert_eq!(
            k.verify(&t, 61_000),
            Err(SessionError::Expired {
                expired_at_ms: 61_000
            })
        );
    }

    #[test]
    fn forged_rotated_and_damaged_tokens_are_refused() {
        let k = key(7);
        let t = k.mint("alice", 0, 60);
        // Another key (a rotation) refuses every old token.
        assert_eq!(key(8).verify(&t, 1), Err(SessionError::BadSignature));
        // Changing the customer (or the expiry) breaks the signature.
        let forged = t.replace(&hex::encode("alice"), &hex::encode("bobby"));
        assert_eq!(k.verify(&forged, 1), Err(SessionError::BadSignature));
        assert_eq!(k.verify("cgt_admin", 1), Err(SessionError::Malformed));
        assert_eq!(k.verify(&t[..t.len() - 3], 1), Err(SessionError::Malformed));
        assert_eq!(k.verify("", 1), Err(SessionError::Malformed));
    }

    #[test]
    fn short_keys_are_refused() {
        let e = SessionKey::new(vec![1; 31]).unwrap_err().to_string();
        assert!(e.contains("at least 32"), "{e}");
        assert!(SessionKey::load(None, None).unwrap().is_none());
        let k = SessionKey::load(None, Some(&format!(" {} \n", "k".repeat(32)))).unwrap();
        assert!(k.is_some());
    }
}
