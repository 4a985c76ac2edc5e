//! Session tokens: what lets a player come back, on any gateway, without its password.
//!
//! A token is `claims ‖ HMAC-SHA256(key, claims)`, where the claims are
//!
//! | bytes | field |
//! |---|---|
//! | 1 | format, `1` |
//! | 8 | account id, u64 LE |
//! | 8 | token generation, u64 LE (revocation: see below) |
//! | 8 | expiry, seconds since the Unix epoch, u64 LE |
//! | 1 + n | account name: length, then n bytes |
//!
//! and the key is derived from the cluster secret (`HMAC(secret, "worldmesh session token
//! v1")`, so a token can never double as anything else signed with the secret). Every gateway
//! of a cluster shares the secret, so any of them verifies a token with no database call:
//! format, signature (constant time) and expiry. Revocation needs state, so it rides on the
//! character load every login makes anyway: persistence refuses a token whose generation is
//! older than the account's (`RevokeTokens` bumps it).
//!
//! The client treats the token as opaque bytes; only gateways read it.

use ring::hmac;
use worldmesh_protocol::{ErrorCode, MAX_NAME_LEN};

const FORMAT: u8 = 1;
const CLAIMS_FIXED: usize = 1 + 8 + 8 + 8 + 1;
const TAG_LEN: usize = 32;

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub account_id: u64,
    pub generation: u64,
    pub expires_unix_s: u64,
    pub name: String,
}

/// Why a token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is not in a known format")]
    Malformed,
    #[error("token signature does not verify")]
    Forged,
    #[error("token expired")]
    Expired,
}

impl TokenError {
    pub fn code(self) -> ErrorCode {
        match self {
            TokenError::Malformed | TokenError::Forged => ErrorCode::InvalidToken,
            TokenError::Expired => ErrorCode::TokenExpired,
        }
    }
}

/// Signs and verifies tokens with one key.
pub struct TokenKey {
    key: hmac::Key,
}

impl TokenKey {
    /// The key of a cluster with this secret.
    pub fn from_secret(secret: &[u8]) -> Self {
        let root = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let derived = hmac::sign(&root, b"worldmesh session token v1");
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
        }
    }

    /// A key nobody else has: tokens are valid on this process only.
    pub fn random() -> Self {
        Self::from_secret(&rand::random::<[u8; 32]>())
    }

    pub fn sign(&self, claims: &Claims) -> Vec<u8> {
        let name = claims.name.as_bytes();
        let name_len = name.len().min(MAX_NAME_LEN);
        let mut out = Vec::with_capacity(CLAIMS_FIXED + name_len + TAG_LEN);
        out.push(FORMAT);
        out.extend_from_slice(&claims.account_id.to_le_bytes());
        out.extend_from_slice(&claims.generation.to_le_bytes());
        out.extend_from_slice(&claims.expires_unix_s.to_le_bytes());
        out.push(name_len as u8);
        out.extend_from_slice(&name[..name_len]);
        let tag = hmac::sign(&self.key, &out);
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Checks format, signature and expiry (`now_unix_s`); the signature before anything
    /// else is trusted.
    pub fn verify(&self, token: &[u8], now_unix_s: u64) -> Result<Claims, TokenError> {
        if token.len() < CLAIMS_FIXED + TAG_LEN {
            return Err(TokenError::Malformed);
        }
        let (claims, tag) = token.split_at(token.len() - TAG_LEN);
        hmac::verify(&self.key, claims, tag).map_err(|_| TokenError::Forged)?;
        if claims[0] != FORMAT {
            return Err(TokenError::Malformed);
        }
        let u64_at = |i: usize| u64::from_le_bytes(claims[i..i + 8].try_into().expect("8 bytes"));
        let name_len = claims[25] as usize;
        if claims.len() != CLAIMS_FIXED + name_len {
            return Err(TokenError::Malformed);
        }
        let name = std::str::from_utf8(&claims[CLAIMS_FIXED..])
            .map_err(|_| TokenError::Malformed)?
            .to_owned();
        let parsed = Claims {
            account_id: u64_at(1),
            generation: u64_at(9),
            expires_unix_s: u64_at(17),
            name,
        };
        if parsed.expires_unix_s <= now_unix_s {
            return Err(TokenError::Expired);
        }
        Ok(parsed)
    }
}

/// Seconds since the Unix epoch.
pub fn now_unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            account_id: 42,
            generation: 3,
            expires_unix_s: 2_000,
            name: "ann".into(),
        }
    }

    #[test]
    fn round_trip_and_expiry() {
        let key = TokenKey::from_secret(b"cluster secret");
        let token = key.sign(&claims());
        assert_eq!(token.len(), CLAIMS_FIXED + 3 + TAG_LEN);
        assert_eq!(key.verify(&token, 1_999), Ok(claims()));
        assert_eq!(key.verify(&token, 2_000), Err(TokenError::Expired));
        // Another gateway of the same cluster accepts it.
        assert_eq!(
            TokenKey::from_secret(b"cluster secret").verify(&token, 0),
            Ok(claims())
        );
    }

    #[test]
    fn forgeries_are_refused() {
        let key = TokenKey::from_secret(b"cluster secret");
        let token = key.sign(&claims());
        // Another cluster's key.
        assert_eq!(
            TokenKey::from_secret(b"other").verify(&token, 0),
            Err(TokenError::Forged)
        );
        // Any flipped bit: a longer expiry, another account, a broken tag.
        for i in 0..token.len() {
            let mut t = token.clone();
            t[i] ^= 1;
            assert_eq!(key.verify(&t, 0), Err(TokenError::Forged), "byte {i}");
        }
        assert_eq!(key.verify(&token[..10], 0), Err(TokenError::Malformed));
        assert_eq!(key.verify(&[], 0), Err(TokenError::Malformed));
        // Correctly signed but not our format.
        let mut claims_only = token[..token.len() - TAG_LEN].to_vec();
        claims_only[0] = 9;
        let tag = hmac::sign(&key.key, &claims_only);
        claims_only.extend_from_slice(tag.as_ref());
        assert_eq!(key.verify(&claims_only, 0), Err(TokenError::Malformed));
    }
}
