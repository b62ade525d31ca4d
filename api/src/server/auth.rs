//! Bearer tokens: one admin token, and account tokens minted by the admin.
//!
//! Account tokens are stored only as SHA-256 hashes, one JSON line per token in
//! `DIR/tokens.jsonl` (mode 0600, fsynced before the token is handed out), so a restart keeps
//! them. The admin token is compared by hash in constant time (`subtle`); account tokens are
//! found by the hash of the presented token, so timing can tell nothing about a stored token
//! that an attacker does not already know the preimage of.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::problem::ApiError;
use super::AppState;

pub const ADMIN_TOKEN_ENV: &str = "DCU_ADMIN_TOKEN";
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
pub const TOKENS_FILE: &str = "tokens.jsonl";
/// Most account tokens kept; minting more is refused (a bound on memory and file size).
pub const MAX_TOKENS: usize = 1_000_000;
/// Longest Authorization header value looked at.
const MAX_TOKEN_LEN: usize = 512;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Account(String),
}

impl Principal {
    /// Admin-only calls: an account token gets 403.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Account(_) => Err(ApiError::forbidden(
                "this call needs the admin token; account tokens may only read their own account",
            )),
        }
    }

    /// Reads of one account: the admin, or that account's own token. Another account's data
    /// answers as if it did not exist.
    pub fn require_reader(&self, account: &str) -> Result<(), ApiError> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Account(own) if own == account => Ok(()),
            Principal::Account(_) => Err(ApiError::unknown_account(account)),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredToken {
    account: String,
    sha256: String,
}

pub struct TokenStore {
    admin_hash: [u8; 32],
    path: PathBuf,
    accounts: Mutex<HashMap<[u8; 32], String>>,
}

fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (index, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(text.get(index * 2..index * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A new random token: `dcu_` and 64 hex digits (256 bits from the OS).
pub fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|error| anyhow::anyhow!("no randomness from the OS: {error}"))?;
    Ok(format!("dcu_{}", hex(&bytes)))
}

fn create_private(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// The admin token: `DCU_ADMIN_TOKEN` if set, else the one in `DIR/admin.token`, created
/// (random, mode 0600) on first use. Logs where it came from, never the token.
pub fn admin_token(dir: &Path, from_env: Option<String>) -> anyhow::Result<String> {
    if let Some(token) = from_env.filter(|token| !token.trim().is_empty()) {
        tracing::info!("admin token taken from {ADMIN_TOKEN_ENV}");
        return Ok(token.trim().to_string());
    }
    let path = dir.join(ADMIN_TOKEN_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        if !text.trim().is_empty() {
            tracing::info!(path = %path.display(), "admin token read from file");
            return Ok(text.trim().to_string());
        }
    }
    let token = random_token()?;
    let mut file = create_private(&path)?;
    file.set_len(0)?;
    file.write_all(token.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    tracing::warn!(path = %path.display(), "{ADMIN_TOKEN_ENV} is not set: created a random admin token in this file (mode 0600)");
    Ok(token)
}

impl TokenStore {
    /// Loads the account tokens kept in `DIR/tokens.jsonl`.
    pub fn load(dir: &Path, admin_token: &str) -> anyhow::Result<TokenStore> {
        let path = dir.join(TOKENS_FILE);
        let mut accounts = HashMap::new();
        if path.exists() {
            let reader = BufReader::new(File::open(&path)?);
            for (number, line) in reader.lines().enumerate() {
                let line = line?;
                if line.trim().is_empty() {
                    continue;
                }
                let stored: StoredToken = serde_json::from_str(&line).map_err(|error| {
                    anyhow::anyhow!("{} line {}: {error}", path.display(), number + 1)
                })?;
                let hash = unhex(&stored.sha256).ok_or_else(|| {
                    anyhow::anyhow!("{} line {}: bad sha256", path.display(), number + 1)
                })?;
                accounts.insert(hash, stored.account);
            }
        }
        Ok(TokenStore {
            admin_hash: sha256(admin_token),
            path,
            accounts: Mutex::new(accounts),
        })
    }

    /// Who a bearer token belongs to.
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        let hash = sha256(token);
        if bool::from(hash.ct_eq(&self.admin_hash)) {
            return Some(Principal::Admin);
        }
        let accounts = self.accounts.lock().ok()?;
        accounts.get(&hash).cloned().map(Principal::Account)
    }

    /// Mints a token for `account`; it is durable (fsynced) before it is returned.
    pub fn mint(&self, account: &str) -> Result<String, ApiError> {
        let token = random_token().map_err(|error| ApiError::internal(error.to_string()))?;
        let hash = sha256(&token);
        let line = serde_json::to_string(&StoredToken {
            account: account.to_string(),
            sha256: hex(&hash),
        })
        .map_err(|error| ApiError::internal(error.to_string()))?;
        let mut accounts = self
            .accounts
            .lock()
            .map_err(|_| ApiError::internal("the token store lock is poisoned"))?;
        if accounts.len() >= MAX_TOKENS {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "invalid_request",
                format!("at most {MAX_TOKENS} account tokens"),
            ));
        }
        let write = || -> std::io::Result<()> {
            let mut file = create_private(&self.path)?;
            file.write_all(line.as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()
        };
        write().map_err(|error| {
            tracing::error!(%error, path = %self.path.display(), "cannot store a token");
            ApiError::internal("cannot store the token")
        })?;
        accounts.insert(hash, account.to_string());
        Ok(token)
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Principal, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("send Authorization: Bearer <token>"))?;
        let token = header
            .to_str()
            .ok()
            .filter(|value| value.len() <= MAX_TOKEN_LEN)
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be `Bearer <token>`")
            })?;
        state
            .tokens
            .authenticate(token)
            .ok_or_else(|| ApiError::unauthorized("unknown or revoked token"))
    }
}
