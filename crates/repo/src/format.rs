//! The on-storage formats: chunk objects and snapshot manifests (see
//! `docs/repository-format.md`). Both are versioned and verified on read.

use std::collections::BTreeMap;
use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use podsnap_api::{EngineInfo, NodeFingerprint};
use serde::{Deserialize, Serialize};

use crate::key::EncryptionKey;

/// Magic bytes at the start of every chunk object.
pub const CHUNK_MAGIC: &[u8; 4] = b"PSNC";
/// Version of the chunk object format.
pub const CHUNK_VERSION: u8 = 1;
/// Length of the chunk header.
pub const CHUNK_HEADER_LEN: usize = 12;
/// The `format` field of every manifest.
pub const MANIFEST_FORMAT: &str = "podsnap.snapshot";
/// Version of the manifest format.
pub const MANIFEST_VERSION: u32 = 1;
/// The largest manifest a reader accepts (bounds what a corrupt object can make us allocate).
pub const MAX_MANIFEST_BYTES: u64 = 256 << 20;
/// The largest chunk a reader accepts.
pub const MAX_CHUNK_BYTES: usize = 64 << 20;

const CODEC_RAW: u8 = 0;
const CODEC_ZSTD: u8 = 1;
const FLAG_ENCRYPTED: u8 = 1;
const NONCE_LEN: usize = 24;

/// A chunk's id: the BLAKE3 hash of its plain content (keyed with the repository's id key
/// when the repository is encrypted).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId([u8; 32]);

impl ChunkId {
    /// The id of `plain` content, for a plain or an encrypted repository.
    pub fn of(plain: &[u8], key: Option<&EncryptionKey>) -> Self {
        match key {
            Some(key) => Self(*blake3::keyed_hash(key.id_key(), plain).as_bytes()),
            None => Self(*blake3::hash(plain).as_bytes()),
        }
    }

    /// Parses 64 lower-case hex digits.
    pub fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 64 || text.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        let bytes = hex::decode(text).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }

    /// The id as 64 hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

impl Serialize for ChunkId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ChunkId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::from_hex(&text).ok_or_else(|| {
            serde::de::Error::custom(format!("`{text}` is not a chunk id (64 hex digits)"))
        })
    }
}

/// Encodes plain chunk content into a chunk object: header, then the payload compressed with
/// zstd at `level` (kept raw when that does not save at least 1/32), then encrypted when a key
/// is given.
pub fn encode_chunk(
    id: &ChunkId,
    plain: &[u8],
    level: i32,
    key: Option<&EncryptionKey>,
) -> Vec<u8> {
    let compressed = zstd::bulk::compress(plain, level)
        .ok()
        .filter(|c| c.len() < plain.len() - plain.len() / 32);
    let (codec, payload): (u8, &[u8]) = match &compressed {
        Some(c) => (CODEC_ZSTD, c),
        None => (CODEC_RAW, plain),
    };
    let mut header = [0u8; CHUNK_HEADER_LEN];
    header[..4].copy_from_slice(CHUNK_MAGIC);
    header[4] = CHUNK_VERSION;
    header[5] = codec;
    header[6] = if key.is_some() { FLAG_ENCRYPTED } else { 0 };
    header[8..12].copy_from_slice(&(plain.len() as u32).to_le_bytes());
    let mut out = Vec::with_capacity(CHUNK_HEADER_LEN + NONCE_LEN + payload.len() + 16);
    out.extend_from_slice(&header);
    match key {
        None => out.extend_from_slice(payload),
        Some(key) => {
            let nonce: [u8; NONCE_LEN] = rand::random();
            let cipher = XChaCha20Poly1305::new(key.cipher_key().into());
            let aad = chunk_aad(&header, id);
            let sealed = cipher
                .encrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: payload,
                        aad: &aad,
                    },
                )
                .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
            out.extend_from_slice(&nonce);
            out.extend_from_slice(&sealed);
        }
    }
    out
}

fn chunk_aad(header: &[u8; CHUNK_HEADER_LEN], id: &ChunkId) -> Vec<u8> {
    let mut aad = header.to_vec();
    aad.extend_from_slice(id.as_bytes());
    aad
}

/// Why a chunk object did not decode; the caller adds the snapshot and object names.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChunkDecodeError {
    /// Not a chunk object at all, or cut short.
    #[error("{0}")]
    Malformed(String),
    /// A newer chunk format.
    #[error("chunk format version {0} is not supported (this podsnap reads version 1)")]
    Version(u8),
    /// Encrypted, but no key was given, or the other way round.
    #[error("{0}")]
    KeyMismatch(String),
    /// Authentication failed: wrong key or damaged ciphertext.
    #[error("decryption failed: the key is wrong or the object was damaged")]
    Decrypt,
    /// The content does not hash to its id.
    #[error("content does not match its id (hash mismatch)")]
    HashMismatch,
}

/// Decodes and verifies a chunk object: the result is exactly the plain content whose id is
/// `id`, or an error.
pub fn decode_chunk(
    id: &ChunkId,
    object: &[u8],
    key: Option<&EncryptionKey>,
) -> Result<Vec<u8>, ChunkDecodeError> {
    if object.len() < CHUNK_HEADER_LEN {
        return Err(ChunkDecodeError::Malformed(format!(
            "it is {} bytes long, shorter than a chunk header (truncated)",
            object.len()
        )));
    }
    let header: [u8; CHUNK_HEADER_LEN] = object[..CHUNK_HEADER_LEN]
        .try_into()
        .expect("length checked");
    if &header[..4] != CHUNK_MAGIC {
        return Err(ChunkDecodeError::Malformed(
            "it does not start with a chunk header".into(),
        ));
    }
    if header[4] != CHUNK_VERSION {
        return Err(ChunkDecodeError::Version(header[4]));
    }
    let plain_len = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes")) as usize;
    if plain_len > MAX_CHUNK_BYTES {
        return Err(ChunkDecodeError::Malformed(format!(
            "it claims {plain_len} bytes, more than a chunk may hold"
        )));
    }
    let encrypted = header[6] & FLAG_ENCRYPTED != 0;
    let body = &object[CHUNK_HEADER_LEN..];
    let opened;
    let payload: &[u8] = match (encrypted, key) {
        (false, None) => body,
        (true, Some(key)) => {
            if body.len() < NONCE_LEN + 16 {
                return Err(ChunkDecodeError::Malformed(
                    "the encrypted payload is truncated".into(),
                ));
            }
            let (nonce, sealed) = body.split_at(NONCE_LEN);
            let cipher = XChaCha20Poly1305::new(key.cipher_key().into());
            let aad = chunk_aad(&header, id);
            opened = cipher
                .decrypt(
                    XNonce::from_slice(nonce),
                    Payload {
                        msg: sealed,
                        aad: &aad,
                    },
                )
                .map_err(|_| ChunkDecodeError::Decrypt)?;
            &opened
        }
        (true, None) => {
            return Err(ChunkDecodeError::KeyMismatch(
                "the chunk is encrypted and no key was given; pass the repository's key (--key-file)".into(),
            ));
        }
        (false, Some(_)) => {
            return Err(ChunkDecodeError::KeyMismatch(
                "the chunk is not encrypted but a key was given".into(),
            ));
        }
    };
    let plain = match header[5] {
        CODEC_RAW => payload.to_vec(),
        CODEC_ZSTD => zstd::bulk::decompress(payload, plain_len).map_err(|e| {
            ChunkDecodeError::Malformed(format!("zstd data does not decompress: {e}"))
        })?,
        other => {
            return Err(ChunkDecodeError::Malformed(format!(
                "unknown codec {other}"
            )));
        }
    };
    if plain.len() != plain_len {
        return Err(ChunkDecodeError::Malformed(format!(
            "it holds {} bytes, its header says {plain_len} (truncated)",
            plain.len()
        )));
    }
    if ChunkId::of(&plain, key) != *id {
        return Err(ChunkDecodeError::HashMismatch);
    }
    Ok(plain)
}

/// How a stream was cut into chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Chunking {
    /// Fixed-size chunks (memory images): byte `o` is in chunk `o / size`.
    Fixed {
        /// Chunk size in bytes, a multiple of 4096.
        size: u32,
    },
    /// Content-defined chunks (FastCDC 2020), for files.
    Cdc {
        /// Smallest chunk.
        min: u32,
        /// Average chunk.
        avg: u32,
        /// Largest chunk.
        max: u32,
    },
    /// Page-aligned content-defined chunks, for page files (a header, then whole pages): the
    /// header is a chunk of its own, later cuts fall only between pages, chosen by a hash of
    /// each page (see [`crate::pagecdc`]), so memory dedups even when pages shift.
    PageCdc {
        /// Length of the header before the first page (0 for none).
        header: u32,
        /// Page size.
        page: u32,
        /// Smallest chunk (a multiple of `page`).
        min: u32,
        /// Average chunk (a multiple of `page`).
        avg: u32,
        /// Largest chunk (a multiple of `page`).
        max: u32,
    },
}

impl Chunking {
    /// Fixed 1 MiB chunks: the default for memory images.
    pub const MEMORY: Self = Self::Fixed { size: 1 << 20 };
    /// Content-defined chunks averaging 1 MiB: the default for files.
    pub const FILES: Self = Self::Cdc {
        min: 256 << 10,
        avg: 1 << 20,
        max: 4 << 20,
    };

    /// Page-aligned content-defined chunks of 4 KiB pages after a `header`-byte header,
    /// 128 KiB to 2 MiB, averaging 512 KiB: the default for page files (the native benchmark's
    /// trade between dedup of shifted memory and per-chunk cost).
    pub const fn pages(header: u32) -> Self {
        Self::PageCdc {
            header,
            page: 4096,
            min: 128 << 10,
            avg: 512 << 10,
            max: 2 << 20,
        }
    }

    /// The parameters of page-aligned CDC, for [`Chunking::PageCdc`].
    pub fn page_cdc_params(&self) -> Option<crate::pagecdc::PageCdcParams> {
        match *self {
            Self::PageCdc {
                header,
                page,
                min,
                avg,
                max,
            } => Some(crate::pagecdc::PageCdcParams {
                header,
                page,
                min,
                avg,
                max,
            }),
            _ => None,
        }
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            Self::Fixed { size } => {
                if size == 0 || size % 4096 != 0 || size as usize > MAX_CHUNK_BYTES {
                    return Err(format!(
                        "fixed chunk size {size} must be a non-zero multiple of 4096 of at most 64 MiB"
                    ));
                }
            }
            Self::Cdc { min, avg, max } => {
                if !(64..=avg).contains(&min) || avg > max || max as usize > MAX_CHUNK_BYTES {
                    return Err(format!(
                        "CDC sizes {min}/{avg}/{max} must satisfy 64 <= min <= avg <= max <= 64 MiB"
                    ));
                }
            }
            Self::PageCdc { .. } => {
                if let Some(params) = self.page_cdc_params() {
                    params.validate(MAX_CHUNK_BYTES)?;
                }
            }
        }
        Ok(())
    }
}

/// One chunk of a stream, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkRef {
    /// The chunk's id; absent for an all-zero chunk, which is not stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<ChunkId>,
    /// Plain length in bytes.
    pub len: u32,
}

/// A named byte stream of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stream {
    /// Name, e.g. `memory/pages` or `gvisor/checkpoint.img`.
    pub name: String,
    /// How it was chunked.
    pub chunking: Chunking,
    /// Total length in bytes.
    pub size: u64,
    /// The chunks, in order.
    pub chunks: Vec<ChunkRef>,
}

impl Stream {
    /// The chunk holding byte `offset`: for fixed chunking a division (the page-fault path), for
    /// content-defined chunking a binary search. `None` past the end.
    pub fn chunk_index_of(&self, offset: u64) -> Option<usize> {
        if offset >= self.size {
            return None;
        }
        match self.chunking {
            Chunking::Fixed { size } => Some((offset / u64::from(size)) as usize),
            Chunking::Cdc { .. } | Chunking::PageCdc { .. } => {
                Some(self.offsets().partition_point(|&start| start <= offset) - 1)
            }
        }
    }

    /// The byte offset where each chunk starts.
    pub fn offsets(&self) -> Vec<u64> {
        let mut at = 0u64;
        self.chunks
            .iter()
            .map(|c| {
                let start = at;
                at += u64::from(c.len);
                start
            })
            .collect()
    }
}

/// Facts recorded with a snapshot, for selection and for people.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotMetadata {
    /// The governing policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The source Pod's distilled-spec hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distilled_spec_hash: Option<String>,
    /// The source node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeFingerprint>,
    /// The engine that wrote the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineInfo>,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A snapshot's manifest: everything needed to read it back. Written last, never changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// Format version, [`MANIFEST_VERSION`].
    pub version: u32,
    /// The snapshot's id.
    pub snapshot_id: String,
    /// When it was written (RFC 3339).
    pub created_at: String,
    /// Facts about the snapshot.
    #[serde(default)]
    pub metadata: SnapshotMetadata,
    /// The id of the encryption key, when encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The streams.
    pub streams: Vec<Stream>,
    /// BLAKE3 of this manifest's JSON with `digest` empty.
    #[serde(default)]
    pub digest: String,
}

impl Manifest {
    /// Computes the digest over the manifest with an empty digest field.
    pub fn compute_digest(&self) -> String {
        let mut copy = self.clone();
        copy.digest.clear();
        let bytes = serde_json::to_vec(&copy).expect("a manifest always serialises");
        blake3::hash(&bytes).to_hex().to_string()
    }

    /// Serialises the manifest with its digest set.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut sealed = self.clone();
        sealed.digest = self.compute_digest();
        serde_json::to_vec_pretty(&sealed).expect("a manifest always serialises")
    }

    /// Parses and verifies a manifest read from `object`.
    pub fn from_bytes(object: &str, bytes: &[u8]) -> Result<Self, crate::RepoError> {
        let corrupt = |problem: String| crate::RepoError::Corrupt {
            object: object.to_owned(),
            problem,
        };
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| corrupt(format!("not JSON ({e}); the object may be truncated")))?;
        if value.get("format").and_then(|f| f.as_str()) != Some(MANIFEST_FORMAT) {
            return Err(corrupt(format!(
                "it is not a podsnap manifest (`format` is not `{MANIFEST_FORMAT}`)"
            )));
        }
        let version = value
            .get("version")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0) as u32;
        if version != MANIFEST_VERSION {
            return Err(crate::RepoError::UnsupportedVersion {
                object: object.to_owned(),
                found: version,
                supported: MANIFEST_VERSION,
            });
        }
        let manifest: Self =
            serde_json::from_value(value).map_err(|e| corrupt(format!("invalid field: {e}")))?;
        if manifest.digest != manifest.compute_digest() {
            return Err(corrupt("its digest does not match its content".into()));
        }
        for stream in &manifest.streams {
            stream
                .chunking
                .validate()
                .map_err(|e| corrupt(format!("stream {}: {e}", stream.name)))?;
            let total: u64 = stream.chunks.iter().map(|c| u64::from(c.len)).sum();
            if total != stream.size {
                return Err(corrupt(format!(
                    "stream {} lists {total} bytes of chunks but claims {}",
                    stream.name, stream.size
                )));
            }
        }
        Ok(manifest)
    }

    /// The stream called `name`.
    pub fn stream(&self, name: &str) -> Option<&Stream> {
        self.streams.iter().find(|s| s.name == name)
    }

    /// Total plain bytes of all streams.
    pub fn total_size(&self) -> u64 {
        self.streams.iter().map(|s| s.size).sum()
    }
}

/// Checks a snapshot id: 1 to 128 characters of `[A-Za-z0-9._-]`, not starting with `.`.
pub fn validate_snapshot_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{id}` is not a valid snapshot id: use 1 to 128 letters, digits, `.`, `_` or `-`, not starting with `.`"
        ))
    }
}

/// Checks a stream name: path-like segments of `[a-z0-9._-]`, without `..`.
pub fn validate_stream_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid stream name: use lower-case segments like `memory/pages`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn chunks_round_trip_plain_and_encrypted() {
        let key = EncryptionKey::from_bytes(&[9; 32]);
        for data in [sample(100_000), vec![0xAB; 10], rand_bytes(50_000)] {
            for key in [None, Some(&key)] {
                let id = ChunkId::of(&data, key);
                let object = encode_chunk(&id, &data, 3, key);
                assert_eq!(decode_chunk(&id, &object, key).unwrap(), data);
            }
        }
    }

    fn rand_bytes(n: usize) -> Vec<u8> {
        (0..n).map(|_| rand::random::<u8>()).collect()
    }

    #[test]
    fn incompressible_chunks_are_stored_raw() {
        let data = rand_bytes(64 << 10);
        let id = ChunkId::of(&data, None);
        let object = encode_chunk(&id, &data, 3, None);
        assert_eq!(object[5], CODEC_RAW);
        assert_eq!(object.len(), CHUNK_HEADER_LEN + data.len());
        let compressible = sample(64 << 10);
        let object = encode_chunk(&ChunkId::of(&compressible, None), &compressible, 3, None);
        assert_eq!(object[5], CODEC_ZSTD);
        assert!(object.len() < compressible.len() / 4);
    }

    #[test]
    fn every_kind_of_damage_is_detected() {
        let key = EncryptionKey::from_bytes(&[1; 32]);
        let other = EncryptionKey::from_bytes(&[2; 32]);
        let data = sample(20_000);
        let id = ChunkId::of(&data, None);
        let object = encode_chunk(&id, &data, 3, None);
        let mut flipped = object.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(decode_chunk(&id, &flipped, None).is_err());
        assert!(matches!(
            decode_chunk(&id, &object[..object.len() / 2], None),
            Err(ChunkDecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode_chunk(&id, &object[..5], None),
            Err(ChunkDecodeError::Malformed(_))
        ));
        let mut newer = object.clone();
        newer[4] = 9;
        assert_eq!(
            decode_chunk(&id, &newer, None),
            Err(ChunkDecodeError::Version(9))
        );
        let other_id = ChunkId::of(b"else", None);
        assert_eq!(
            decode_chunk(&other_id, &object, None),
            Err(ChunkDecodeError::HashMismatch)
        );
        let sealed_id = ChunkId::of(&data, Some(&key));
        let sealed = encode_chunk(&sealed_id, &data, 3, Some(&key));
        assert_eq!(
            decode_chunk(&sealed_id, &sealed, Some(&other)),
            Err(ChunkDecodeError::Decrypt)
        );
        assert!(matches!(
            decode_chunk(&sealed_id, &sealed, None),
            Err(ChunkDecodeError::KeyMismatch(_))
        ));
        assert!(matches!(
            decode_chunk(&id, &object, Some(&key)),
            Err(ChunkDecodeError::KeyMismatch(_))
        ));
        // An encrypted object moved to another id's place fails authentication.
        assert_eq!(
            decode_chunk(&other_id, &sealed, Some(&key)),
            Err(ChunkDecodeError::Decrypt)
        );
    }

    #[test]
    fn keyed_ids_differ_from_plain_ids() {
        let key = EncryptionKey::from_bytes(&[3; 32]);
        assert_ne!(ChunkId::of(b"x", None), ChunkId::of(b"x", Some(&key)));
        let id = ChunkId::of(b"x", None);
        assert_eq!(ChunkId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(ChunkId::from_hex("zz"), None);
        assert_eq!(ChunkId::from_hex(&id.to_hex().to_uppercase()), None);
    }

    #[test]
    fn manifests_verify_their_digest_and_version() {
        let manifest = Manifest {
            format: MANIFEST_FORMAT.into(),
            version: MANIFEST_VERSION,
            snapshot_id: "s1".into(),
            created_at: "2026-11-29T00:00:00Z".into(),
            metadata: SnapshotMetadata::default(),
            key_id: None,
            streams: vec![Stream {
                name: "memory/pages".into(),
                chunking: Chunking::MEMORY,
                size: 8192,
                chunks: vec![
                    ChunkRef {
                        id: None,
                        len: 4096,
                    },
                    ChunkRef {
                        id: Some(ChunkId::of(b"a", None)),
                        len: 4096,
                    },
                ],
            }],
            digest: String::new(),
        };
        let bytes = manifest.to_bytes();
        let back = Manifest::from_bytes("m", &bytes).unwrap();
        assert_eq!(back.streams, manifest.streams);
        let tampered = String::from_utf8(bytes.clone())
            .unwrap()
            .replace("8192", "8193");
        assert!(Manifest::from_bytes("m", tampered.as_bytes()).is_err());
        let newer = String::from_utf8(bytes.clone())
            .unwrap()
            .replace("\"version\": 1", "\"version\": 2");
        assert!(matches!(
            Manifest::from_bytes("m", newer.as_bytes()),
            Err(crate::RepoError::UnsupportedVersion { found: 2, .. })
        ));
        assert!(Manifest::from_bytes("m", &bytes[..bytes.len() / 2]).is_err());
        assert!(Manifest::from_bytes("m", b"{\"format\": \"other\"}").is_err());
    }

    #[test]
    fn offsets_map_to_chunks() {
        let id = Some(ChunkId::of(b"a", None));
        let fixed = Stream {
            name: "m".into(),
            chunking: Chunking::Fixed { size: 8192 },
            size: 8192 * 2 + 100,
            chunks: vec![
                ChunkRef { id, len: 8192 },
                ChunkRef {
                    id: None,
                    len: 8192,
                },
                ChunkRef { id, len: 100 },
            ],
        };
        let at = |o| fixed.chunk_index_of(o);
        assert_eq!(
            (at(0), at(8191), at(8192), at(16_483), at(16_484)),
            (Some(0), Some(0), Some(1), Some(2), None)
        );
        let cdc = Stream {
            name: "f".into(),
            chunking: Chunking::FILES,
            size: 30,
            chunks: vec![
                ChunkRef { id, len: 10 },
                ChunkRef { id, len: 15 },
                ChunkRef { id, len: 5 },
            ],
        };
        let at = |o| cdc.chunk_index_of(o);
        assert_eq!(
            (at(0), at(9), at(10), at(24), at(25), at(29), at(30)),
            (Some(0), Some(0), Some(1), Some(1), Some(2), Some(2), None)
        );
    }

    #[test]
    fn page_cdc_chunking_is_named_checked_and_searched() {
        let pages = Chunking::pages(16);
        assert!(pages.validate().is_ok());
        let json = serde_json::to_value(pages).unwrap();
        assert_eq!(json["kind"], "pageCdc");
        assert_eq!(json["header"], 16);
        assert_eq!(json["page"], 4096);
        assert_eq!(serde_json::from_value::<Chunking>(json).unwrap(), pages);
        assert!(
            Chunking::PageCdc {
                header: 16,
                page: 4096,
                min: 4096,
                avg: 6000,
                max: 1 << 20
            }
            .validate()
            .is_err()
        );
        assert_eq!(Chunking::FILES.page_cdc_params(), None);
        let id = Some(ChunkId::of(b"a", None));
        let stream = Stream {
            name: "native/pages.img".into(),
            chunking: pages,
            size: 16 + 3 * 4096,
            chunks: vec![
                ChunkRef { id, len: 16 },
                ChunkRef { id, len: 2 * 4096 },
                ChunkRef { id, len: 4096 },
            ],
        };
        let at = |o| stream.chunk_index_of(o);
        assert_eq!(
            (
                at(0),
                at(15),
                at(16),
                at(16 + 8191),
                at(16 + 8192),
                at(16 + 12288)
            ),
            (Some(0), Some(0), Some(1), Some(1), Some(2), None)
        );
    }

    #[test]
    fn names_and_chunking_are_checked() {
        assert!(validate_snapshot_id("de334898-1e7a-4cdb-9f2e-7cc2181c29e4").is_ok());
        assert!(validate_snapshot_id("../x").is_err());
        assert!(validate_snapshot_id("").is_err());
        assert!(validate_stream_name("memory/pages").is_ok());
        assert!(validate_stream_name("memory/../x").is_err());
        assert!(validate_stream_name("Memory").is_err());
        assert!(Chunking::MEMORY.validate().is_ok());
        assert!(Chunking::FILES.validate().is_ok());
        assert!(Chunking::Fixed { size: 1000 }.validate().is_err());
        assert!(
            Chunking::Cdc {
                min: 10,
                avg: 5,
                max: 1
            }
            .validate()
            .is_err()
        );
    }
}
