//! Secret values sealed when they leave the machine: with `--config-store
//! nats`, every Secret record is encrypted (ChaCha20-Poly1305, ring) with the
//! key from `--secret-key-file` before it is written to the shared bucket, and
//! opened when read back. Without a key file a Secret cannot be stored there.
//! The file store keeps Secret values in owner-only local files instead.
//!
//! Sealed value: `SPSEAL1` | 12-byte random nonce | ciphertext and tag. The
//! record's key is the associated data, so a sealed value moved to another
//! key does not open.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use spate_log::{BoxFuture, Change, ConfigError, ConfigStore, Versioned};
use thiserror::Error;
use tokio::sync::mpsc;

const MAGIC: &[u8] = b"SPSEAL1";

#[derive(Debug, Error)]
pub enum KeyFileError {
    #[error("reading the secret key file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error(
        "the secret key file {0} must hold 32 random bytes as 64 hex digits (make one with `openssl rand -hex 32`)"
    )]
    Format(String),
}

/// The key that seals Secrets.
pub struct SecretKey(LessSafeKey);

impl SecretKey {
    pub fn from_file(path: &Path) -> Result<SecretKey, KeyFileError> {
        let shown = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|source| KeyFileError::Read { path: shown.clone(), source })?;
        let hex = text.trim();
        let bytes: Option<Vec<u8>> = (hex.len() == 64)
            .then(|| (0..32).map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()).collect())
            .flatten();
        let bytes = bytes.ok_or_else(|| KeyFileError::Format(shown.clone()))?;
        let key = UnboundKey::new(&CHACHA20_POLY1305, &bytes).map_err(|_| KeyFileError::Format(shown))?;
        Ok(SecretKey(LessSafeKey::new(key)))
    }

    fn seal(&self, key: &str, plain: &[u8]) -> Result<Bytes, ConfigError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| ConfigError::Refused("no system randomness".into()))?;
        let mut buf = plain.to_vec();
        self.0
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(key.as_bytes()), &mut buf)
            .map_err(|_| ConfigError::Refused("sealing a Secret failed".into()))?;
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + buf.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(Bytes::from(out))
    }

    fn open(&self, key: &str, sealed: &[u8]) -> Option<Bytes> {
        let rest = sealed.strip_prefix(MAGIC)?;
        let nonce = Nonce::try_assume_unique_for_key(rest.get(..NONCE_LEN)?).ok()?;
        let mut buf = rest[NONCE_LEN..].to_vec();
        let plain = self.0.open_in_place(nonce, Aad::from(key.as_bytes()), &mut buf).ok()?;
        Some(Bytes::copy_from_slice(plain))
    }
}

fn is_secret(key: &str) -> bool {
    key.starts_with("Secret.")
}

/// A `ConfigStore` that seals Secret records on their way in and opens them on the way out.
pub struct SealedSecrets {
    inner: Arc<dyn ConfigStore>,
    key: Option<Arc<SecretKey>>,
}

impl SealedSecrets {
    pub fn new(inner: Arc<dyn ConfigStore>, key: Option<SecretKey>) -> Self {
        SealedSecrets { inner, key: key.map(Arc::new) }
    }
}

/// Opens a Secret record read from the shared store; `None` (logged) when it
/// cannot be opened here: no key, another key, or a plaintext record.
fn opened(key: Option<&SecretKey>, v: Versioned) -> Option<Versioned> {
    if !is_secret(&v.key) {
        return Some(v);
    }
    let value = key.and_then(|k| k.open(&v.key, &v.value));
    if value.is_none() {
        tracing::error!(key = %v.key, "a shared Secret cannot be opened with this instance's --secret-key-file; skipped");
    }
    value.map(|value| Versioned { value, ..v })
}

impl ConfigStore for SealedSecrets {
    fn list(&self) -> BoxFuture<'_, Result<Vec<Versioned>, ConfigError>> {
        Box::pin(async move {
            let all = self.inner.list().await?;
            Ok(all.into_iter().filter_map(|v| opened(self.key.as_deref(), v)).collect())
        })
    }

    fn put(&self, key: &str, value: Bytes, expected: u64) -> BoxFuture<'_, Result<u64, ConfigError>> {
        let key = key.to_string();
        Box::pin(async move {
            let value = match (is_secret(&key), &self.key) {
                (false, _) => value,
                (true, Some(k)) => k.seal(&key, &value)?,
                (true, None) => {
                    return Err(ConfigError::Refused(
                        "Secrets are not stored in the shared NATS store unencrypted: start every instance with \
                         --secret-key-file FILE (the same 32-byte key, `openssl rand -hex 32`)"
                            .into(),
                    ));
                }
            };
            self.inner.put(&key, value, expected).await
        })
    }

    fn delete(&self, key: &str) -> BoxFuture<'_, Result<(), ConfigError>> {
        self.inner.delete(key)
    }

    fn watch(&self) -> BoxFuture<'_, Result<mpsc::UnboundedReceiver<Change>, ConfigError>> {
        Box::pin(async move {
            let mut rx = self.inner.watch().await?;
            let (tx, out) = mpsc::unbounded_channel();
            let key = self.key.clone();
            tokio::spawn(async move {
                while let Some(change) = rx.recv().await {
                    let change = match change {
                        Change::Put(v) => match opened(key.as_deref(), v) {
                            Some(v) => Change::Put(v),
                            None => continue,
                        },
                        other => other,
                    };
                    if tx.send(change).is_err() {
                        return;
                    }
                }
            });
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(hex: &str) -> SecretKey {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, format!("{hex}\n")).unwrap();
        SecretKey::from_file(&p).unwrap()
    }

    #[test]
    fn sealed_records_open_only_with_their_key_and_under_their_name() {
        let k = key(&"ab".repeat(32));
        let sealed = k.seal("Secret.default.gh", b"{\"token\":\"hunter2\"}").unwrap();
        assert!(sealed.starts_with(MAGIC));
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"), "no plaintext");
        assert_eq!(k.open("Secret.default.gh", &sealed).unwrap(), &b"{\"token\":\"hunter2\"}"[..]);
        assert!(k.open("Secret.default.other", &sealed).is_none(), "moved to another key");
        assert!(key(&"cd".repeat(32)).open("Secret.default.gh", &sealed).is_none(), "another key");
        let mut torn = sealed.to_vec();
        *torn.last_mut().unwrap() ^= 1;
        assert!(k.open("Secret.default.gh", &torn).is_none(), "tampered");
        assert_ne!(
            k.seal("Secret.default.gh", b"x").unwrap(),
            k.seal("Secret.default.gh", b"x").unwrap(),
            "fresh nonces"
        );
    }

    #[test]
    fn key_files_must_hold_32_hex_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, "too short").unwrap();
        let e = SecretKey::from_file(&p).err().unwrap().to_string();
        assert!(e.contains("openssl rand -hex 32"), "{e}");
        std::fs::write(&p, "zz".repeat(32)).unwrap();
        assert!(SecretKey::from_file(&p).is_err());
    }
}
