//! Accounts: argon2id password hashes in SQL, registration, and the login decision.
//!
//! An account and its character share a name (one character per account for now). A login
//! proves itself one of four ways ([`Proof`]); refusals are typed [`Refusal`]s that the
//! gateway turns into the client's error code, never backend errors.
//!
//! Hashing is deliberately expensive (that is its job), so it runs on blocking threads behind
//! a semaphore with one permit per two cores ([`hashing_permits`]): a burst of logins queues
//! instead of taking every core from the flusher and the gRPC handlers — and, where
//! persistence shares a machine with zones (`worldmesh local`, small deployments), from the
//! world's tick — and memory stays at `permits × memory_kib`.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use crate::store::{Character, Store};
use crate::{Error, sql::AccountRow};

pub use worldmesh_protocol::{MAX_PASSWORD_LEN, MIN_PASSWORD_LEN};

/// OWASP's first recommended argon2id setting (19 MiB, 2 passes, 1 lane): about 25 ms per
/// hash on one core of the 2-core machine this was measured on.
pub const DEFAULT_MEMORY_KIB: u32 = 19 * 1024;
pub const DEFAULT_ITERATIONS: u32 = 2;

/// How a login proves who it is.
#[derive(Clone, PartialEq)]
pub enum Proof {
    Password(String),
    Register(String),
    /// A token the gateway verified (signature, expiry); its generation is checked here.
    Token {
        account_id: u64,
        generation: u64,
    },
    /// No account: a guest character, refused if the name belongs to an account.
    Guest,
}

impl std::fmt::Debug for Proof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Proof::Password(_) => f.write_str("Password(..)"),
            Proof::Register(_) => f.write_str("Register(..)"),
            Proof::Token {
                account_id,
                generation,
            } => write!(f, "Token(account {account_id}, generation {generation})"),
            Proof::Guest => f.write_str("Guest"),
        }
    }
}

/// Why a login was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no account with this name")]
    UnknownAccount,
    #[error("wrong password")]
    WrongPassword,
    #[error("name already taken")]
    NameTaken,
    #[error("token revoked")]
    TokenRevoked,
    #[error("this character belongs to an account")]
    AccountRequired,
    #[error("password must be {MIN_PASSWORD_LEN}-{MAX_PASSWORD_LEN} bytes")]
    InvalidPassword,
}

/// A successful login.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedIn {
    pub character: Character,
    /// 0 for a guest.
    pub account_id: u64,
    pub token_generation: u64,
    pub created: bool,
}

/// How many passwords are hashed at once on `cores` cores: half of them, at least one. With
/// one permit per core, 1,000 bots logging in at 50/s on 2 cores spent 28 % of the process's
/// CPU in argon2 and starved the zones' ticks until joins timed out and the bots retried,
/// hashing again.
pub fn hashing_permits(cores: usize) -> usize {
    (cores / 2).max(1)
}

/// argon2id hashing on blocking threads, a bounded number at a time.
#[derive(Clone)]
pub struct Hasher {
    params: Params,
    permits: Arc<Semaphore>,
}

impl Hasher {
    pub fn new(memory_kib: u32, iterations: u32) -> Result<Self, Error> {
        let params = Params::new(memory_kib, iterations, 1, None)
            .map_err(|e| Error::PasswordHash(e.to_string()))?;
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Ok(Self {
            params,
            permits: Arc::new(Semaphore::new(hashing_permits(cores))),
        })
    }

    /// A PHC string (`$argon2id$v=19$m=…,t=…,p=1$salt$hash`) for a new password.
    pub async fn hash(&self, password: String) -> Result<String, Error> {
        let params = self.params.clone();
        self.blocking(move || {
            let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
                .map_err(|e| Error::PasswordHash(e.to_string()))?;
            Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| Error::PasswordHash(e.to_string()))
        })
        .await
    }

    /// Checks a password against a stored PHC string, with the parameters stored in it (so
    /// changing the defaults keeps old accounts working).
    pub async fn verify(&self, password: String, phc: String) -> Result<bool, Error> {
        self.blocking(move || {
            let parsed = PasswordHash::new(&phc).map_err(|e| Error::PasswordHash(e.to_string()))?;
            match Argon2::default().verify_password(password.as_bytes(), &parsed) {
                Ok(()) => Ok(true),
                Err(argon2::password_hash::Error::Password) => Ok(false),
                Err(e) => Err(Error::PasswordHash(e.to_string())),
            }
        })
        .await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| Error::PasswordHash("hasher closed".into()))?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| Error::PasswordHash(e.to_string()))?
    }
}

fn password_ok(p: &str) -> bool {
    (MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&p.len())
}

impl Store {
    /// Logs in and loads the character (hot tier first when it is newer). `spawn` places a new
    /// character.
    pub async fn login(
        &self,
        name: &str,
        proof: Proof,
        spawn: (f32, f32),
    ) -> Result<Result<LoggedIn, Refusal>, Error> {
        let sql = self.sql();
        let (account, character, created) = match proof {
            Proof::Guest => {
                return Ok(
                    match sql.load_or_create_guest(name, spawn.0, spawn.1).await? {
                        None => Err(Refusal::AccountRequired),
                        Some((character, created)) => Ok(LoggedIn {
                            character: self.fresher(character).await?,
                            account_id: 0,
                            token_generation: 0,
                            created,
                        }),
                    },
                );
            }
            Proof::Register(password) => {
                if !password_ok(&password) {
                    return Ok(Err(Refusal::InvalidPassword));
                }
                // Cheap pre-check so a taken name does not cost a hash.
                if sql.account_by_name(name).await?.is_some() {
                    return Ok(Err(Refusal::NameTaken));
                }
                let hash = self.hasher().hash(password).await?;
                match sql.create_account(name, &hash, spawn.0, spawn.1).await? {
                    None => return Ok(Err(Refusal::NameTaken)),
                    Some((account, character)) => (account, character, true),
                }
            }
            Proof::Password(password) => {
                if password.len() > MAX_PASSWORD_LEN {
                    return Ok(Err(Refusal::WrongPassword));
                }
                let Some(account) = sql.account_by_name(name).await? else {
                    return Ok(Err(Refusal::UnknownAccount));
                };
                if !self
                    .hasher()
                    .verify(password, account.password_hash.clone())
                    .await?
                {
                    return Ok(Err(Refusal::WrongPassword));
                }
                let character = self.account_character(&account).await?;
                (account, character, false)
            }
            Proof::Token {
                account_id,
                generation,
            } => {
                let Some(account) = sql.account_by_id(account_id).await? else {
                    return Ok(Err(Refusal::UnknownAccount));
                };
                if account.name != name {
                    return Ok(Err(Refusal::UnknownAccount));
                }
                if account.token_generation != generation {
                    return Ok(Err(Refusal::TokenRevoked));
                }
                let character = self.account_character(&account).await?;
                (account, character, false)
            }
        };
        Ok(Ok(LoggedIn {
            character: self.fresher(character).await?,
            account_id: account.id,
            token_generation: account.token_generation,
            created,
        }))
    }

    /// Revokes every token of the account issued so far; `None` for an unknown account.
    pub async fn revoke_tokens(&self, name: &str) -> Result<Option<u64>, Error> {
        let generation = self.sql().revoke_tokens(name).await?;
        if let Some(g) = generation {
            tracing::info!(account = name, generation = g, "tokens revoked");
        }
        Ok(generation)
    }

    async fn account_character(&self, account: &AccountRow) -> Result<Character, Error> {
        self.sql()
            .character_of(account.id)
            .await?
            .ok_or_else(|| Error::Inconsistent(format!("account {} has no character", account.id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_carry_their_parameters() {
        // Small parameters: this checks the plumbing, not the cost.
        let hasher = Hasher::new(256, 1).unwrap();
        let phc = hasher.hash("correct horse".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=256,t=1,p=1$"), "{phc}");
        assert!(
            hasher
                .verify("correct horse".into(), phc.clone())
                .await
                .unwrap()
        );
        assert!(
            !hasher
                .verify("wrong horse".into(), phc.clone())
                .await
                .unwrap()
        );
        // A hasher with other defaults still verifies the old hash.
        let other = Hasher::new(512, 2).unwrap();
        assert!(other.verify("correct horse".into(), phc).await.unwrap());
        assert!(other.verify("x".into(), "not a hash".into()).await.is_err());
    }
}
