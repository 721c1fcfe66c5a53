//! The checkpoint image of Debian's runsc (`checkpoint.img`), taken apart for storage and put
//! back together for restore.
//!
//! runsc writes one file: a header — the magic `gVisorSF`, the length of a JSON metadata
//! object (u64, big-endian), the metadata, a 32-byte HMAC of all that — then the piece size
//! (u32, big-endian), then the state itself cut into pieces of at most that size, each
//! compressed on its own with raw DEFLATE and preceded by its compressed length (u32,
//! big-endian). Compressed pieces defeat deduplication: the kernel state at the front of the
//! stream changes length between two checkpoints of the same workload, shifting every later
//! byte, and DEFLATE output differs wherever its input differs. So podsnap stores the header
//! as it is and the state *decompressed* ([`StateDecoder`]), where content-defined chunks
//! find the unchanged memory again, and rebuilds a valid image on restore
//! ([`ImageEncoder`]) with *stored* (uncompressed) DEFLATE blocks: no compression work, and
//! runsc reads them exactly as it reads its own.
//!
//! The format has no end marker: an image cut exactly between two pieces reads as a shorter
//! state. The repository's checksums guard stored streams; runsc rejects a short state on
//! restore.

use std::io::{self, Read, Write};

/// The first eight bytes of every runsc checkpoint image.
pub const MAGIC: &[u8; 8] = b"gVisorSF";
/// Length of the header's HMAC (SHA-256).
const HMAC_LEN: usize = 32;
/// Largest metadata object accepted (runsc writes a few hundred bytes).
const MAX_METADATA_LEN: u64 = 1 << 20;
/// Largest piece size accepted (runsc uses 1 MiB).
const MAX_PIECE_SIZE: u32 = 64 << 20;
/// Largest stored DEFLATE block.
const MAX_STORED_BLOCK: usize = 0xffff;

/// Why a checkpoint image cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ImageFormatError {
    /// The file does not start like a runsc checkpoint image.
    #[error(
        "not a runsc checkpoint image (it does not start with `gVisorSF`); was it written by another runsc version or damaged?"
    )]
    NotAnImage,
    /// A length field is out of range.
    #[error("the checkpoint image is damaged: {0}")]
    Damaged(String),
    /// The image ends in the middle of a header or piece.
    #[error("the checkpoint image is truncated {0}")]
    Truncated(&'static str),
    /// Reading or writing failed.
    #[error("reading the checkpoint image failed: {0}")]
    Io(#[from] io::Error),
}

impl From<ImageFormatError> for io::Error {
    fn from(e: ImageFormatError) -> Self {
        match e {
            ImageFormatError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

/// The header of a checkpoint image, kept byte for byte (its HMAC covers it), and the piece
/// size that follows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageHeader {
    raw: Vec<u8>,
    metadata: std::ops::Range<usize>,
    piece_size: u32,
}

impl ImageHeader {
    /// Reads the header (through the piece size) from the start of an image.
    pub fn read_from(r: &mut impl Read) -> Result<Self, ImageFormatError> {
        let mut raw = vec![0; MAGIC.len() + 8];
        read_exact_or(r, &mut raw, "in its header")?;
        if &raw[..MAGIC.len()] != MAGIC {
            return Err(ImageFormatError::NotAnImage);
        }
        let len = u64::from_be_bytes(raw[MAGIC.len()..].try_into().expect("8 bytes"));
        if len > MAX_METADATA_LEN {
            return Err(ImageFormatError::Damaged(format!(
                "its metadata claims {len} bytes (at most {MAX_METADATA_LEN} expected)"
            )));
        }
        let start = raw.len();
        raw.resize(start + len as usize + HMAC_LEN + 4, 0);
        read_exact_or(r, &mut raw[start..], "in its header")?;
        let piece_size = u32::from_be_bytes(raw[raw.len() - 4..].try_into().expect("4 bytes"));
        if piece_size == 0 || piece_size > MAX_PIECE_SIZE {
            return Err(ImageFormatError::Damaged(format!(
                "its piece size is {piece_size} (1..={MAX_PIECE_SIZE} expected)"
            )));
        }
        Ok(Self {
            metadata: start..start + len as usize,
            raw,
            piece_size,
        })
    }

    /// Parses a header stored on its own; fails unless `bytes` is exactly one header.
    pub fn parse(bytes: &[u8]) -> Result<Self, ImageFormatError> {
        let mut reader = bytes;
        let header = Self::read_from(&mut reader)?;
        if !reader.is_empty() {
            return Err(ImageFormatError::Damaged(format!(
                "{} bytes follow the stored header",
                reader.len()
            )));
        }
        Ok(header)
    }

    /// The header's bytes, as runsc wrote them.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// runsc's JSON metadata (timestamps, CPU usage).
    pub fn metadata(&self) -> &[u8] {
        &self.raw[self.metadata.clone()]
    }

    /// The largest decompressed piece.
    pub fn piece_size(&self) -> u32 {
        self.piece_size
    }
}

fn read_exact_or(
    r: &mut impl Read,
    buf: &mut [u8],
    what: &'static str,
) -> Result<(), ImageFormatError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => ImageFormatError::Truncated(what),
        _ => ImageFormatError::Io(e),
    })
}

/// Reads the decompressed state of a checkpoint image whose header has been read.
pub struct StateDecoder<R> {
    inner: R,
    piece_size: usize,
    compressed: Vec<u8>,
    piece: Vec<u8>,
    position: usize,
    inflater: flate2::Decompress,
    pieces: u64,
}

impl<R: Read> StateDecoder<R> {
    /// Decodes the state that follows `header` in `inner`.
    pub fn new(inner: R, header: &ImageHeader) -> Self {
        Self {
            inner,
            piece_size: header.piece_size as usize,
            compressed: Vec::new(),
            piece: Vec::with_capacity(header.piece_size as usize),
            position: 0,
            inflater: flate2::Decompress::new(false),
            pieces: 0,
        }
    }

    /// Opens an image: reads its header and returns it with a decoder of its state.
    pub fn open(mut inner: R) -> Result<(ImageHeader, Self), ImageFormatError> {
        let header = ImageHeader::read_from(&mut inner)?;
        let decoder = Self::new(inner, &header);
        Ok((header, decoder))
    }

    /// Reads and inflates the next piece; `false` at the end of the image.
    fn next_piece(&mut self) -> Result<bool, ImageFormatError> {
        let mut len = [0u8; 4];
        let mut got = 0;
        while got < len.len() {
            match self.inner.read(&mut len[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => return Err(ImageFormatError::Truncated("in a piece's length")),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        let len = u32::from_be_bytes(len);
        // Stored blocks add 5 bytes per 64 KiB; anything far beyond the piece size is damage.
        let limit = self.piece_size + self.piece_size / 1024 + 1024;
        if len as usize > limit {
            return Err(ImageFormatError::Damaged(format!(
                "piece {} claims {len} compressed bytes for at most {} decompressed",
                self.pieces, self.piece_size
            )));
        }
        self.compressed.resize(len as usize, 0);
        read_exact_or(&mut self.inner, &mut self.compressed, "inside a piece")?;
        self.piece.clear();
        self.inflater.reset(false);
        let status = self
            .inflater
            .decompress_vec(
                &self.compressed,
                &mut self.piece,
                flate2::FlushDecompress::Finish,
            )
            .map_err(|e| {
                ImageFormatError::Damaged(format!("piece {} does not inflate: {e}", self.pieces))
            })?;
        let consumed = self.inflater.total_in() as usize;
        if status != flate2::Status::StreamEnd || consumed != self.compressed.len() {
            return Err(ImageFormatError::Damaged(format!(
                "piece {} does not inflate to at most {} bytes ending where its length says",
                self.pieces, self.piece_size
            )));
        }
        self.position = 0;
        self.pieces += 1;
        Ok(true)
    }
}

impl<R: Read> Read for StateDecoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.position == self.piece.len() {
            if !self.next_piece()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.piece.len() - self.position);
        buf[..n].copy_from_slice(&self.piece[self.position..self.position + n]);
        self.position += n;
        Ok(n)
    }
}

/// Writes a checkpoint image runsc restores from: the header as stored, then the state
/// written to it, cut into pieces of the header's size, each in stored DEFLATE blocks.
pub struct ImageEncoder<W: Write> {
    out: W,
    piece_size: usize,
    buffer: Vec<u8>,
}

impl<W: Write> ImageEncoder<W> {
    /// Starts an image on `out` with `header`.
    pub fn new(mut out: W, header: &ImageHeader) -> io::Result<Self> {
        out.write_all(header.as_bytes())?;
        Ok(Self {
            out,
            piece_size: header.piece_size as usize,
            buffer: Vec::with_capacity(header.piece_size as usize),
        })
    }

    /// Writes the last piece, flushes and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        if !self.buffer.is_empty() {
            write_stored_piece(&mut self.out, &self.buffer)?;
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for ImageEncoder<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(self.piece_size - self.buffer.len());
        self.buffer.extend_from_slice(&data[..n]);
        if self.buffer.len() == self.piece_size {
            write_stored_piece(&mut self.out, &self.buffer)?;
            self.buffer.clear();
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// One piece: its length, then `data` as a DEFLATE stream of stored blocks.
fn write_stored_piece(out: &mut impl Write, data: &[u8]) -> io::Result<()> {
    let blocks = data.len().div_ceil(MAX_STORED_BLOCK).max(1);
    let len = u32::try_from(data.len() + 5 * blocks)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "piece too large"))?;
    out.write_all(&len.to_be_bytes())?;
    let mut rest = data;
    for block in 0..blocks {
        let n = rest.len().min(MAX_STORED_BLOCK);
        let last = u8::from(block + 1 == blocks);
        let n16 = n as u16;
        out.write_all(&[last])?;
        out.write_all(&n16.to_le_bytes())?;
        out.write_all(&(!n16).to_le_bytes())?;
        out.write_all(&rest[..n])?;
        rest = &rest[n..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compression, write::DeflateEncoder};

    fn header_bytes(piece_size: u32) -> Vec<u8> {
        let metadata = br#"{"_timestamp":"2026-11-29 09:50:39 +0000 UTC"}"#;
        let mut h = MAGIC.to_vec();
        h.extend_from_slice(&(metadata.len() as u64).to_be_bytes());
        h.extend_from_slice(metadata);
        h.extend_from_slice(&[7u8; HMAC_LEN]);
        h.extend_from_slice(&piece_size.to_be_bytes());
        h
    }

    /// An image as runsc writes it: compressed pieces.
    fn runsc_image(state: &[u8], piece_size: u32) -> Vec<u8> {
        let mut image = header_bytes(piece_size);
        for piece in state.chunks(piece_size as usize) {
            let mut e = DeflateEncoder::new(Vec::new(), Compression::new(6));
            e.write_all(piece).unwrap();
            let compressed = e.finish().unwrap();
            image.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
            image.extend_from_slice(&compressed);
        }
        image
    }

    fn state(len: usize) -> Vec<u8> {
        // Compressible runs mixed with noise, so DEFLATE uses several block kinds.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        (0..len)
            .map(|i| {
                if (i / 3000) % 2 == 0 {
                    (i % 251) as u8
                } else {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                }
            })
            .collect()
    }

    fn decode(image: &[u8]) -> Result<(ImageHeader, Vec<u8>), io::Error> {
        let (header, mut decoder) = StateDecoder::open(image)?;
        let mut out = Vec::new();
        decoder.read_to_end(&mut out)?;
        Ok((header, out))
    }

    fn encode(header: &ImageHeader, state: &[u8], write_size: usize) -> Vec<u8> {
        let mut encoder = ImageEncoder::new(Vec::new(), header).unwrap();
        for part in state.chunks(write_size) {
            encoder.write_all(part).unwrap();
        }
        encoder.finish().unwrap()
    }

    #[test]
    fn a_runsc_image_decodes_to_its_state_and_header() {
        let original = state(300_000);
        let image = runsc_image(&original, 65536);
        let (header, decoded) = decode(&image).unwrap();
        assert_eq!(decoded, original);
        assert_eq!(header.as_bytes(), &header_bytes(65536)[..]);
        assert_eq!(header.piece_size(), 65536);
        assert!(header.metadata().starts_with(b"{\"_timestamp\""));
        assert_eq!(ImageHeader::parse(header.as_bytes()).unwrap(), header);
    }

    #[test]
    fn a_rebuilt_image_decodes_to_the_same_state_and_is_uncompressed() {
        for (len, piece, write_size) in [
            (300_000, 65536, 1000),
            (0, 65536, 1),
            (65536 * 3, 65536, 65536 * 3),
            (200_001, 100_000, 4096),
            (70_000, 1 << 20, 333),
        ] {
            let original = state(len);
            let (header, _) = decode(&runsc_image(&original, piece)).unwrap();
            let rebuilt = encode(&header, &original, write_size);
            let (header2, decoded) = decode(&rebuilt).unwrap();
            assert_eq!(header2, header, "len {len}");
            assert_eq!(decoded, original, "len {len}");
            let pieces = len.div_ceil(piece as usize);
            let blocks: usize = original
                .chunks(piece as usize)
                .map(|p| p.len().div_ceil(MAX_STORED_BLOCK).max(1))
                .sum();
            assert_eq!(
                rebuilt.len(),
                header.as_bytes().len() + len + 4 * pieces + 5 * blocks,
                "len {len}: stored blocks only"
            );
        }
    }

    #[test]
    fn damaged_images_are_refused_with_the_reason() {
        let image = runsc_image(&state(200_000), 65536);
        let header_len = header_bytes(65536).len();
        let message = |bytes: &[u8]| decode(bytes).unwrap_err().to_string();

        assert!(
            message(b"PK\x03\x04 not an image at all").contains("not a runsc checkpoint image")
        );
        assert!(message(&image[..10]).contains("truncated in its header"));
        assert!(message(&image[..header_len + 2]).contains("truncated in a piece's length"));
        assert!(message(&image[..header_len + 100]).contains("truncated inside a piece"));
        assert!(message(&image[..image.len() - 1]).contains("truncated inside a piece"));

        let mut huge_metadata = image.clone();
        huge_metadata[8..16].copy_from_slice(&(1u64 << 40).to_be_bytes());
        assert!(message(&huge_metadata).contains("metadata claims"));

        let mut zero_pieces = image.clone();
        zero_pieces[header_len - 4..header_len].copy_from_slice(&0u32.to_be_bytes());
        assert!(message(&zero_pieces).contains("piece size is 0"));

        let mut huge_piece = image.clone();
        huge_piece[header_len..header_len + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(message(&huge_piece).contains("claims"));

        let mut garbage = image.clone();
        for b in &mut garbage[header_len + 4..header_len + 40] {
            *b = 0xff;
        }
        assert!(message(&garbage).contains("does not inflate"));

        // A piece that inflates to more than the piece size.
        let big = runsc_image(&state(100_000), 100_000);
        let mut lying = big.clone();
        let h = header_bytes(100_000).len();
        lying[h - 4..h].copy_from_slice(&65536u32.to_be_bytes());
        assert!(message(&lying).contains("piece 0"));

        assert!(
            ImageHeader::parse(&image[..header_len + 1])
                .unwrap_err()
                .to_string()
                .contains("follow the stored header")
        );
    }
}
