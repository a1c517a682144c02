//! Encryption at rest for secret values, with a key kept in the data dir.

use std::io::Write;
use std::path::Path;

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

use crate::{Result, StoreError};

pub(crate) struct SecretSeal {
    cipher: ChaCha20Poly1305,
}

impl SecretSeal {
    pub(crate) fn load_or_create(path: &Path) -> Result<SecretSeal> {
        let key = match std::fs::read(path) {
            Ok(bytes) if bytes.len() == 32 => bytes,
            Ok(_) => {
                return Err(StoreError::Io(format!(
                    "{} is not a 32-byte key; restore it from a backup (secrets cannot be read without it)",
                    path.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = ChaCha20Poly1305::generate_key(&mut OsRng).to_vec();
                write_private(path, &key)?;
                key
            }
            Err(e) => return Err(StoreError::Io(format!("cannot read {}: {e}", path.display()))),
        };
        Ok(SecretSeal { cipher: ChaCha20Poly1305::new(Key::from_slice(&key)) })
    }

    pub(crate) fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let mut out = nonce.to_vec();
        out.extend(self.cipher.encrypt(&nonce, plain).expect("chacha20poly1305 encryption cannot fail"));
        out
    }

    pub(crate) fn open(&self, sealed: &[u8]) -> Result<Vec<u8>> {
        if sealed.len() < 12 {
            return Err(StoreError::Io("sealed secret is truncated".into()));
        }
        let (nonce, body) = sealed.split_at(12);
        self.cipher.decrypt(Nonce::from_slice(nonce), body).map_err(|_| {
            StoreError::Io("cannot decrypt a secret: the data dir's secret.key does not match the database".into())
        })
    }
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e: std::io::Error| StoreError::Io(format!("cannot write {}: {e}", path.display()));
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}
