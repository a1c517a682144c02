//! Router credentials: an HS256 JWT that names one sandbox and its task, signed with a key
//! kept in the data dir (so tokens survive a restart of the server until they expire).

use std::path::Path;

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::{Result, SandboxError};

/// How long a router token lives; the client refreshes it (from the control plane) when the
/// router answers UNAUTHENTICATED.
pub const TOKEN_TTL_SECS: u64 = 3600;

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq)]
pub struct Claims {
    /// What the token is for: `router` (one sandbox's exec service) or `client` (the
    /// control plane's `x-modal-auth-token`).
    pub aud: String,
    /// The sandbox (router tokens) or the API token id (client tokens).
    pub sub: String,
    /// The sandbox's task id (router tokens only).
    #[serde(default)]
    pub task: String,
    pub exp: u64,
    pub iat: u64,
}

pub struct TokenKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl TokenKey {
    /// Loads `DATA_DIR/sandbox-jwt.key`, creating it (mode 0600) on first use.
    pub fn load_or_create(data_dir: &Path) -> Result<TokenKey> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = data_dir.join("sandbox-jwt.key");
        let key = match std::fs::read(&path) {
            Ok(k) if k.len() >= 32 => k,
            _ => {
                let key: [u8; 32] = rand::random();
                let tmp = data_dir.join(format!("sandbox-jwt.key.{}", std::process::id()));
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(|e| SandboxError::Internal(format!("cannot write {}: {e}", tmp.display())))?;
                f.write_all(&key).and_then(|_| f.sync_all()).map_err(|e| SandboxError::Internal(e.to_string()))?;
                std::fs::rename(&tmp, &path).map_err(|e| SandboxError::Internal(e.to_string()))?;
                key.to_vec()
            }
        };
        Ok(TokenKey { encoding: EncodingKey::from_secret(&key), decoding: DecodingKey::from_secret(&key) })
    }

    pub fn issue(&self, aud: &str, sub: &str, task: &str) -> String {
        let now = now_secs();
        let claims = Claims { aud: aud.into(), sub: sub.into(), task: task.into(), iat: now, exp: now + TOKEN_TTL_SECS };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).expect("HS256 signing cannot fail")
    }

    /// Checks signature, expiry and audience.
    pub fn verify(&self, token: &str, aud: &str) -> Result<Claims> {
        let mut v = Validation::new(Algorithm::HS256);
        v.set_audience(&[aud]);
        v.leeway = 5;
        decode::<Claims>(token, &self.decoding, &v)
            .map(|d| d.claims)
            .map_err(|e| SandboxError::Unauthenticated(format!("invalid sandbox token: {e}")))
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_sandbox_and_audience() {
        let dir = tempfile::tempdir().unwrap();
        let key = TokenKey::load_or_create(dir.path()).unwrap();
        let t = key.issue("router", "sb-1", "ta-1V");
        let c = key.verify(&t, "router").unwrap();
        assert_eq!((c.sub.as_str(), c.task.as_str()), ("sb-1", "ta-1V"));
        assert!(key.verify(&t, "client").is_err(), "audience is checked");
        let again = TokenKey::load_or_create(dir.path()).unwrap();
        assert!(again.verify(&t, "router").is_ok(), "the key persists");
        let other = TokenKey::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        assert!(other.verify(&t, "router").is_err(), "another key refuses it");
    }
}
