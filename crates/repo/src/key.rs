//! Client-side encryption keys.
//!
//! A repository is either plain or encrypted with one 256-bit key. Two sub-keys are derived from
//! it with BLAKE3's key derivation: one for XChaCha20-Poly1305 encryption of chunks, one for
//! keyed chunk ids — so ids reveal nothing about the content and dedup works only among
//! snapshots written with the same key. Manifests and working sets hold no content and are
//! plain JSON; a manifest records the key's id, which readers check.

use std::fmt;
use std::path::Path;

use crate::error::{RepoError, Result};

/// A repository encryption key.
#[derive(Clone)]
pub struct EncryptionKey {
    cipher_key: [u8; 32],
    id_key: [u8; 32],
    key_id: String,
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EncryptionKey({})", self.key_id)
    }
}

impl EncryptionKey {
    /// A key from 32 bytes of secret material.
    pub fn from_bytes(secret: &[u8; 32]) -> Self {
        let cipher_key = blake3::derive_key("podsnap 2026 chunk encryption v1", secret);
        let id_key = blake3::derive_key("podsnap 2026 chunk id v1", secret);
        let check = blake3::derive_key("podsnap 2026 key id v1", secret);
        Self {
            cipher_key,
            id_key,
            key_id: hex::encode(&check[..8]),
        }
    }

    /// Reads a key file: 64 hex digits (as `podsnap repo keygen` writes), or 32 raw bytes.
    pub fn from_file(path: &Path) -> Result<Self> {
        let raw = std::fs::read(path).map_err(|e| {
            RepoError::io(format!("cannot read the key file {}", path.display()), e)
        })?;
        Self::parse(&raw).ok_or_else(|| {
            RepoError::Key(format!(
                "{} is not a podsnap key: it must hold 64 hex digits or 32 raw bytes; make one with `podsnap repo keygen -o {}`",
                path.display(),
                path.display()
            ))
        })
    }

    /// Parses key material: 64 hex digits (surrounding white space allowed) or 32 raw bytes.
    pub fn parse(raw: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(raw).ok().map(str::trim);
        if let Some(text) = text
            && text.len() == 64
            && let Ok(bytes) = hex::decode(text)
        {
            let secret: [u8; 32] = bytes.try_into().ok()?;
            return Some(Self::from_bytes(&secret));
        }
        let secret: [u8; 32] = raw.try_into().ok()?;
        Some(Self::from_bytes(&secret))
    }

    /// A new random key, as 64 hex digits.
    pub fn generate_hex() -> String {
        let secret: [u8; 32] = rand::random();
        hex::encode(secret)
    }

    /// A public identifier of the key (not secret), recorded in the repository.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub(crate) fn cipher_key(&self) -> &[u8; 32] {
        &self.cipher_key
    }

    pub(crate) fn id_key(&self) -> &[u8; 32] {
        &self.id_key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_raw_forms_are_the_same_key() {
        let secret = [7u8; 32];
        let from_raw = EncryptionKey::parse(&secret).unwrap();
        let from_hex =
            EncryptionKey::parse(format!("{}\n", hex::encode(secret)).as_bytes()).unwrap();
        assert_eq!(from_raw.key_id(), from_hex.key_id());
        assert_ne!(from_raw.cipher_key(), from_raw.id_key());
        assert!(EncryptionKey::parse(b"too short").is_none());
        let generated = EncryptionKey::generate_hex();
        assert_eq!(generated.len(), 64);
        assert_ne!(
            EncryptionKey::parse(generated.as_bytes()).unwrap().key_id(),
            from_raw.key_id()
        );
    }
}
