//! CARv1: a header naming root CIDs, then the blocks, each with its CID.
//!
//! # Format
//!
//! ```text
//! varint(len(header)) ‖ header
//! varint(len(cid) + len(data)) ‖ cid ‖ data        (one such section per block, until the end)
//! ```
//!
//! - Every varint is an unsigned LEB128 varint, minimally encoded and at most 9 bytes (the
//!   multiformats rules).
//! - The header is the DAG-CBOR map `{"roots": [CID, ...], "version": 1}`; canonical key order
//!   puts `roots` first, and each CID is a tag-42 link. Zero or more roots are allowed (ucanto
//!   always writes one); they are returned as they are.
//! - A section's CID is binary, CIDv1 or CIDv0 (the 34-byte sha2-256 multihash `0x12 0x20 ...`);
//!   the data follows up to the end of the section. Blocks may repeat; their order is kept.
//!   A CAR has no block count: the input ends cleanly only at a section boundary.
//!
//! [`encode_car`] and [`CarWriter`] write exactly what JS `@ipld/car` writes for the same roots
//! and blocks; `tests/car.rs` checks this against CARs written by ucanto.
//!
//! # Bounds
//!
//! Reading trusts nothing in the input. Every length is checked against [`CarLimits`] *before*
//! anything is read or allocated for it, and even a length under the limit is filled as bytes
//! actually arrive, so a short input claiming a long section costs what was sent, not what was
//! claimed. Every block's bytes are hashed and compared with its CID ([`Block::new`]), so a
//! [`Block`] out of the reader is genuine. Errors name the byte offset (and block index) where
//! the problem starts.
//!
//! - [`DEFAULT_MAX_HEADER_SIZE`] (64 KiB): a header with one root is 59 bytes; 64 KiB holds over
//!   1,500 roots, far more than any producer we talk to writes.
//! - [`DEFAULT_MAX_BLOCK_SIZE`] (2 MiB + 1 KiB): see the constant.
//! - [`CarLimits::max_blocks`] (none by default): the streaming [`CarReader`] holds one block at
//!   a time, and [`decode_car`] is bounded by its input; services that decode whole request
//!   bodies should still cap the count: each decoded [`Block`] costs 128 bytes of bookkeeping on
//!   top of its data, and a section can be as small as 5 bytes.
//!
//! # Speed
//!
//! [`decode_car_bytes`] slices the blocks out of the caller's [`Bytes`] without copying them;
//! [`decode_car`] copies its input once into such a buffer. Either way the blocks share the
//! buffer, which lives as long as any of them. The streaming reader makes one allocation per
//! block (its section), and slices the data out of it. Give it a buffered reader
//! ([`std::io::BufReader`]): varints are read a byte at a time.

use std::io::{self, Read, Write};

use bytes::Bytes;
use cid::Cid;

use crate::ipld::{Block, Ipld, IpldError, decode_dag_cbor};

/// Default bound on the header's length (the DAG-CBOR map, without its varint): 64 KiB.
pub const DEFAULT_MAX_HEADER_SIZE: usize = 64 * 1024;

/// Default bound on a section's length (a block's CID and its data together): 2 MiB + 1 KiB.
///
/// 2 MiB is the de-facto ceiling on an IPFS block: the most that bitswap peers exchange and
/// the largest chunk IPFS tooling produces, so no DAG that the IPFS world (Storacha included)
/// can move contains a larger block, and ATProto records are much smaller still. The 1 KiB of
/// slack is for what shares the section with a full 2 MiB of data: its CID (at most 86 bytes)
/// and the few bytes of framing a node wrapping a full-size chunk adds, so that no block a
/// well-behaved producer writes is refused.
pub const DEFAULT_MAX_BLOCK_SIZE: usize = 2 * 1024 * 1024 + 1024;

/// The most bytes read into a fresh buffer before any of them has arrived; buffers then grow
/// with the data actually received, so a lying length cannot make us allocate its full size.
const INITIAL_READ_CAPACITY: usize = 64 * 1024;

/// The longest varint the multiformats spec allows (63 bits of value).
const MAX_VARINT_LEN: usize = 9;

/// The longest binary CID we write: version, codec and multihash code as 10-byte varints, a
/// one-byte digest length and a 64-byte digest.
const MAX_CID_LEN: usize = 1 + 10 + 10 + 1 + 64;

/// Bounds on what a CAR reader accepts. [`Default`] gives the `DEFAULT_*` constants and no
/// block-count limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CarLimits {
    /// Largest header accepted, in bytes (the DAG-CBOR map, without its varint prefix).
    pub max_header_size: usize,
    /// Largest section accepted, in bytes: a block's CID and its data together, the length the
    /// section's varint declares.
    pub max_block_size: usize,
    /// Most blocks accepted; `None` for no limit.
    pub max_blocks: Option<usize>,
}

impl CarLimits {
    /// The defaults: [`DEFAULT_MAX_HEADER_SIZE`], [`DEFAULT_MAX_BLOCK_SIZE`], no block-count
    /// limit.
    pub const DEFAULT: Self = Self {
        max_header_size: DEFAULT_MAX_HEADER_SIZE,
        max_block_size: DEFAULT_MAX_BLOCK_SIZE,
        max_blocks: None,
    };

    /// These limits with at most `max` blocks.
    #[must_use]
    pub const fn with_max_blocks(mut self, max: usize) -> Self {
        self.max_blocks = Some(max);
        self
    }
}

impl Default for CarLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why a CAR could not be read. Offsets count bytes from the start of the CAR; block indexes
/// count from 0.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CarError {
    /// The input ended inside the header (or before it).
    #[error("unexpected end of CAR at offset {offset}, inside the header")]
    TruncatedHeader {
        /// Where the input ended.
        offset: u64,
    },
    /// The input ended inside a section: in its length, its CID or its data.
    #[error("unexpected end of CAR at offset {offset}, inside block {index}")]
    Truncated {
        /// The block whose section was cut short.
        index: usize,
        /// Where the input ended.
        offset: u64,
    },
    /// The header declares more bytes than [`CarLimits::max_header_size`].
    #[error("header of {len} bytes exceeds the CAR header limit of {max} bytes")]
    HeaderTooLarge {
        /// The length the header's varint declares.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The header is not DAG-CBOR, or not a `{roots, version}` map of the right types.
    #[error("invalid CAR header: {reason}")]
    InvalidHeader {
        /// What is wrong with it.
        reason: String,
    },
    /// The header's version is not 1 (a CARv2 file starts with `{version: 2}`).
    #[error("unsupported CAR version {version}: only version 1 is read")]
    UnsupportedVersion {
        /// The version the header gives.
        version: i64,
    },
    /// A section declares more bytes than [`CarLimits::max_block_size`].
    #[error(
        "block {index} at offset {offset}: section of {len} bytes exceeds the limit of {max} bytes"
    )]
    BlockTooLarge {
        /// The block.
        index: usize,
        /// Where its section starts.
        offset: u64,
        /// The length its varint declares (CID and data).
        len: u64,
        /// The limit.
        max: usize,
    },
    /// There are more blocks than [`CarLimits::max_blocks`].
    #[error("block {index} at offset {offset} is past the limit of {max} blocks")]
    TooManyBlocks {
        /// The first block over the limit.
        index: usize,
        /// Where its section starts.
        offset: u64,
        /// The limit.
        max: usize,
    },
    /// A length varint is longer than 9 bytes or not minimally encoded.
    #[error("invalid varint at offset {offset}: {reason}")]
    BadVarint {
        /// Where the varint starts.
        offset: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A section does not start with a valid, canonically encoded CID.
    #[error("block {index} at offset {offset}: invalid CID: {reason}")]
    InvalidCid {
        /// The block.
        index: usize,
        /// Where its section starts.
        offset: u64,
        /// Why the CID did not parse.
        reason: String,
    },
    /// A block's bytes do not hash to its CID.
    #[error("block {index} at offset {offset}: bytes do not hash to {cid}")]
    HashMismatch {
        /// The block.
        index: usize,
        /// Where its section starts.
        offset: u64,
        /// The CID the section claims.
        cid: Cid,
    },
    /// A block's CID uses a hash function we cannot verify.
    #[error(
        "block {index} at offset {offset}: {cid} uses unsupported multihash code 0x{:x}",
        cid.hash().code()
    )]
    UnsupportedHash {
        /// The block.
        index: usize,
        /// Where its section starts.
        offset: u64,
        /// The CID (its multihash code is the unsupported one).
        cid: Cid,
    },
    /// The underlying reader failed.
    #[error("I/O error reading CAR at offset {offset}")]
    Io {
        /// How far reading had got (the start of the item being read).
        offset: u64,
        /// The reader's error.
        #[source]
        source: io::Error,
    },
    /// [`CarReader::next_block`] was called again after it had returned an error.
    #[error("CAR reader used again after an error")]
    Poisoned,
}

/// Where the bytes come from: a [`Read`] or an in-memory [`Bytes`].
trait Source {
    /// The next byte, or `None` at the end of the input.
    fn next_byte(&mut self) -> io::Result<Option<u8>>;
    /// The next `len` bytes; fewer only at the end of the input.
    fn take(&mut self, len: usize) -> io::Result<Bytes>;
}

/// A [`Source`] over a [`Read`].
struct IoSource<R>(R);

impl<R: Read> Source for IoSource<R> {
    fn next_byte(&mut self) -> io::Result<Option<u8>> {
        let mut byte = [0u8];
        loop {
            match self.0.read(&mut byte) {
                Ok(0) => return Ok(None),
                Ok(_) => return Ok(Some(byte[0])),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn take(&mut self, len: usize) -> io::Result<Bytes> {
        // Grows with the bytes received (read_to_end doubles), never straight to `len`.
        let mut buf = Vec::with_capacity(len.min(INITIAL_READ_CAPACITY));
        (&mut self.0).take(len as u64).read_to_end(&mut buf)?;
        Ok(Bytes::from(buf))
    }
}

/// A [`Source`] over bytes already in memory: sections are slices of it.
struct BytesSource {
    buf: Bytes,
    pos: usize,
}

impl Source for BytesSource {
    fn next_byte(&mut self) -> io::Result<Option<u8>> {
        let byte = self.buf.get(self.pos).copied();
        if byte.is_some() {
            self.pos += 1;
        }
        Ok(byte)
    }

    fn take(&mut self, len: usize) -> io::Result<Bytes> {
        let end = self.pos + len.min(self.buf.len() - self.pos);
        let out = self.buf.slice(self.pos..end);
        self.pos = end;
        Ok(out)
    }
}

/// Where a [`Parser`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Header,
    Blocks,
    Done,
    Failed,
}

/// The CARv1 grammar over any [`Source`], tracking the offset for errors.
struct Parser<S> {
    src: S,
    limits: CarLimits,
    offset: u64,
    index: usize,
    state: State,
}

impl<S: Source> Parser<S> {
    fn new(src: S, limits: CarLimits) -> Self {
        Self {
            src,
            limits,
            offset: 0,
            index: 0,
            state: State::Header,
        }
    }

    fn truncated(&self) -> CarError {
        if self.state == State::Header {
            CarError::TruncatedHeader {
                offset: self.offset,
            }
        } else {
            CarError::Truncated {
                index: self.index,
                offset: self.offset,
            }
        }
    }

    fn io_error(&self, source: io::Error) -> CarError {
        CarError::Io {
            offset: self.offset,
            source,
        }
    }

    /// A varint, or `None` if the input ends before its first byte.
    fn varint(&mut self) -> Result<Option<u64>, CarError> {
        let start = self.offset;
        let mut value = 0u64;
        for i in 0..MAX_VARINT_LEN {
            let byte = match self.src.next_byte() {
                Ok(Some(byte)) => byte,
                Ok(None) if i == 0 => return Ok(None),
                Ok(None) => return Err(self.truncated()),
                Err(e) => return Err(self.io_error(e)),
            };
            self.offset += 1;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                if byte == 0 && i > 0 {
                    return Err(CarError::BadVarint {
                        offset: start,
                        reason: "not minimally encoded",
                    });
                }
                return Ok(Some(value));
            }
        }
        Err(CarError::BadVarint {
            offset: start,
            reason: "longer than 9 bytes",
        })
    }

    /// Exactly `len` bytes (`len` already checked against a limit).
    fn exact(&mut self, len: usize) -> Result<Bytes, CarError> {
        let bytes = self.src.take(len).map_err(|e| self.io_error(e))?;
        self.offset += bytes.len() as u64;
        if bytes.len() < len {
            return Err(self.truncated());
        }
        Ok(bytes)
    }

    fn header(&mut self) -> Result<Vec<Cid>, CarError> {
        debug_assert_eq!(self.state, State::Header);
        let result = self.header_inner();
        self.state = if result.is_ok() {
            State::Blocks
        } else {
            State::Failed
        };
        result
    }

    fn header_inner(&mut self) -> Result<Vec<Cid>, CarError> {
        let len = self
            .varint()?
            .ok_or(CarError::TruncatedHeader { offset: 0 })?;
        let max = self.limits.max_header_size;
        if len > max as u64 {
            return Err(CarError::HeaderTooLarge { len, max });
        }
        if len == 0 {
            return Err(invalid_header("empty header"));
        }
        let bytes = self.exact(len as usize)?;
        parse_header(&bytes)
    }

    fn next_block(&mut self) -> Result<Option<Block>, CarError> {
        match self.state {
            State::Blocks => {}
            State::Done => return Ok(None),
            State::Failed => return Err(CarError::Poisoned),
            State::Header => unreachable!("the header is read on construction"),
        }
        let result = self.block();
        match result {
            Ok(Some(_)) => self.index += 1,
            Ok(None) => self.state = State::Done,
            Err(_) => self.state = State::Failed,
        }
        result
    }

    fn block(&mut self) -> Result<Option<Block>, CarError> {
        let index = self.index;
        let offset = self.offset;
        let Some(len) = self.varint()? else {
            return Ok(None);
        };
        if let Some(max) = self.limits.max_blocks
            && index >= max
        {
            return Err(CarError::TooManyBlocks { index, offset, max });
        }
        let max = self.limits.max_block_size;
        if len > max as u64 {
            return Err(CarError::BlockTooLarge {
                index,
                offset,
                len,
                max,
            });
        }
        let invalid_cid = |reason: String| CarError::InvalidCid {
            index,
            offset,
            reason,
        };
        if len == 0 {
            return Err(invalid_cid("empty section".into()));
        }
        let section = self.exact(len as usize)?;
        let mut rest: &[u8] = &section;
        let cid = Cid::read_bytes(&mut rest).map_err(|e| invalid_cid(e.to_string()))?;
        let cid_len = section.len() - rest.len();
        if cid.encoded_len() != cid_len {
            return Err(invalid_cid("not canonically encoded".into()));
        }
        let block = Block::new(cid, section.slice(cid_len..)).map_err(|e| match e {
            IpldError::HashMismatch { cid } => CarError::HashMismatch { index, offset, cid },
            IpldError::UnsupportedHash { cid, .. } => {
                CarError::UnsupportedHash { index, offset, cid }
            }
            other => invalid_cid(other.to_string()),
        })?;
        Ok(Some(block))
    }
}

fn invalid_header(reason: impl Into<String>) -> CarError {
    CarError::InvalidHeader {
        reason: reason.into(),
    }
}

/// Checks a decoded header: a map of exactly `roots` (a list of links) and `version` (1).
fn parse_header(bytes: &[u8]) -> Result<Vec<Cid>, CarError> {
    let header: Ipld = decode_dag_cbor(bytes).map_err(|e| invalid_header(e.to_string()))?;
    let Ipld::Map(map) = header else {
        return Err(invalid_header("not a map"));
    };
    // The version first, so that a CARv2 pragma (`{version: 2}`, no roots) says so.
    match map.get("version") {
        Some(Ipld::Integer(1)) => {}
        Some(&Ipld::Integer(version)) => {
            return Err(match i64::try_from(version) {
                Ok(version) => CarError::UnsupportedVersion { version },
                Err(_) => invalid_header(format!("version {version} is out of range")),
            });
        }
        Some(_) => return Err(invalid_header("version is not an integer")),
        None => return Err(invalid_header("no version")),
    }
    if let Some(key) = map.keys().find(|k| *k != "roots" && *k != "version") {
        return Err(invalid_header(format!("unexpected key {key:?}")));
    }
    let Some(roots) = map.get("roots") else {
        return Err(invalid_header("no roots"));
    };
    let Ipld::List(roots) = roots else {
        return Err(invalid_header("roots is not a list"));
    };
    roots
        .iter()
        .enumerate()
        .map(|(i, root)| match root {
            Ipld::Link(cid) => Ok(*cid),
            _ => Err(invalid_header(format!("root {i} is not a CID"))),
        })
        .collect()
}

/// A streaming CARv1 reader over any [`Read`]: reads the header on construction, then one
/// hash-checked block per [`next_block`](Self::next_block) (or per iteration).
///
/// After an error the reader is done: [`next_block`](Self::next_block) returns
/// [`CarError::Poisoned`] and the iterator ends.
pub struct CarReader<R> {
    parser: Parser<IoSource<R>>,
    roots: Vec<Cid>,
}

impl<R> std::fmt::Debug for CarReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CarReader")
            .field("roots", &self.roots)
            .field("offset", &self.parser.offset)
            .field("blocks_read", &self.parser.index)
            .finish_non_exhaustive()
    }
}

impl<R: Read> CarReader<R> {
    /// Reads and checks the header from `reader`.
    pub fn new(reader: R, limits: &CarLimits) -> Result<Self, CarError> {
        let mut parser = Parser::new(IoSource(reader), *limits);
        let roots = parser.header()?;
        Ok(Self { parser, roots })
    }

    /// The header's root CIDs (possibly none).
    pub fn roots(&self) -> &[Cid] {
        &self.roots
    }

    /// The next block, hash-checked; `None` once the input ends cleanly after a section.
    pub fn next_block(&mut self) -> Result<Option<Block>, CarError> {
        self.parser.next_block()
    }

    /// How many bytes have been consumed so far.
    pub fn offset(&self) -> u64 {
        self.parser.offset
    }

    /// How many blocks have been returned so far.
    pub fn blocks_read(&self) -> usize {
        self.parser.index
    }

    /// The underlying reader, positioned after the last byte consumed.
    pub fn into_inner(self) -> R {
        self.parser.src.0
    }
}

impl<R: Read> Iterator for CarReader<R> {
    type Item = Result<Block, CarError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.parser.state == State::Failed {
            return None;
        }
        self.next_block().transpose()
    }
}

impl<R: Read> std::iter::FusedIterator for CarReader<R> {}

/// Decodes a whole CAR held in memory, checking every block: its roots, and its blocks in file
/// order (repeats kept).
///
/// The input is copied once into a shared buffer that the blocks slice; use
/// [`decode_car_bytes`] to skip that copy when the input already is [`Bytes`].
pub fn decode_car(bytes: &[u8], limits: &CarLimits) -> Result<(Vec<Cid>, Vec<Block>), CarError> {
    decode_car_bytes(Bytes::copy_from_slice(bytes), limits)
}

/// Decodes a whole CAR held in a [`Bytes`], checking every block, as [`decode_car`] does; the
/// blocks are slices of `bytes`, not copies.
pub fn decode_car_bytes(
    bytes: Bytes,
    limits: &CarLimits,
) -> Result<(Vec<Cid>, Vec<Block>), CarError> {
    let mut parser = Parser::new(BytesSource { buf: bytes, pos: 0 }, *limits);
    let roots = parser.header()?;
    let mut blocks = Vec::new();
    while let Some(block) = parser.next_block()? {
        blocks.push(block);
    }
    Ok((roots, blocks))
}

/// A CARv1 writer over any [`Write`]: writes the header on construction, then one section per
/// [`write_block`](Self::write_block). Give it a buffered writer ([`std::io::BufWriter`]).
#[derive(Debug)]
pub struct CarWriter<W> {
    writer: W,
    written: u64,
}

impl<W: Write> CarWriter<W> {
    /// Writes the header naming `roots` to `writer`.
    pub fn new(mut writer: W, roots: &[Cid]) -> io::Result<Self> {
        let mut header = Vec::with_capacity(encoded_header_len(roots));
        write_header(&mut header, roots);
        writer.write_all(&header)?;
        Ok(Self {
            writer,
            written: header.len() as u64,
        })
    }

    /// Writes one block's section.
    pub fn write_block(&mut self, block: &Block) -> io::Result<()> {
        self.written += write_section(&mut self.writer, block.cid(), block.bytes())? as u64;
        Ok(())
    }

    /// How many bytes have been written so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Flushes and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.writer.flush()?;
        Ok(self.writer)
    }
}

/// Writes a CAR of `roots` and `blocks` (in order), byte-identical to JS `@ipld/car`.
pub fn encode_car<'a>(roots: &[Cid], blocks: impl IntoIterator<Item = &'a Block>) -> Vec<u8> {
    let blocks: Vec<&Block> = blocks.into_iter().collect();
    let len = encoded_car_len(roots, blocks.iter().copied());
    let mut out = Vec::with_capacity(len);
    write_header(&mut out, roots);
    for block in blocks {
        write_section(&mut out, block.cid(), block.bytes()).expect("writing to a Vec cannot fail");
    }
    debug_assert_eq!(out.len(), len);
    out
}

/// The encoded length of a CAR of `roots` and `blocks`: what [`encode_car`] would write.
pub fn encoded_car_len<'a>(roots: &[Cid], blocks: impl IntoIterator<Item = &'a Block>) -> usize {
    blocks
        .into_iter()
        .map(|b| encoded_section_len(b.cid(), b.bytes().len()))
        .sum::<usize>()
        + encoded_header_len(roots)
}

/// The encoded length of the header naming `roots`, its varint prefix included.
pub fn encoded_header_len(roots: &[Cid]) -> usize {
    let body = header_body_len(roots);
    varint_len(body as u64) + body
}

/// The encoded length of the section of a block with CID `cid` and `data_len` bytes, its varint
/// prefix included.
pub fn encoded_section_len(cid: &Cid, data_len: usize) -> usize {
    let body = cid.encoded_len() + data_len;
    varint_len(body as u64) + body
}

/// Length of a varint.
fn varint_len(n: u64) -> usize {
    (64 - n.leading_zeros() as usize).div_ceil(7).max(1)
}

fn push_varint(out: &mut Vec<u8>, n: u64) {
    let mut buf = unsigned_varint::encode::u64_buffer();
    out.extend_from_slice(unsigned_varint::encode::u64(n, &mut buf));
}

/// Length of a CBOR head (major type and argument) for the argument `n`.
fn cbor_head_len(n: u64) -> usize {
    match n {
        0..24 => 1,
        24..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

/// Writes a CBOR head in its shortest form, as DAG-CBOR requires.
fn push_cbor_head(out: &mut Vec<u8>, major: u8, n: u64) {
    let major = major << 5;
    match cbor_head_len(n) {
        1 => out.push(major | n as u8),
        2 => out.extend_from_slice(&[major | 24, n as u8]),
        3 => {
            out.push(major | 25);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        5 => {
            out.push(major | 26);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            out.push(major | 27);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

const CBOR_BYTES: u8 = 2;
const CBOR_TEXT: u8 = 3;
const CBOR_ARRAY: u8 = 4;
const CBOR_MAP: u8 = 5;
/// Tag 42 (a CID link): major type 6, one-byte argument 42.
const CBOR_TAG_42: [u8; 2] = [0xd8, 42];

/// Length of a tag-42 link to `cid`: tag, byte-string head, the 0x00 multibase prefix, the CID.
fn link_len(cid: &Cid) -> usize {
    let bytes = 1 + cid.encoded_len();
    CBOR_TAG_42.len() + cbor_head_len(bytes as u64) + bytes
}

/// Length of the DAG-CBOR header map.
fn header_body_len(roots: &[Cid]) -> usize {
    1 // map of 2
        + 1 + "roots".len()
        + cbor_head_len(roots.len() as u64)
        + roots.iter().map(link_len).sum::<usize>()
        + 1 + "version".len()
        + 1 // 1
}

/// Writes the header's varint and DAG-CBOR `{"roots": [...], "version": 1}` (canonical order:
/// the shorter key first).
fn write_header(out: &mut Vec<u8>, roots: &[Cid]) {
    push_varint(out, header_body_len(roots) as u64);
    let start = out.len();
    push_cbor_head(out, CBOR_MAP, 2);
    push_cbor_head(out, CBOR_TEXT, 5);
    out.extend_from_slice(b"roots");
    push_cbor_head(out, CBOR_ARRAY, roots.len() as u64);
    for root in roots {
        out.extend_from_slice(&CBOR_TAG_42);
        push_cbor_head(out, CBOR_BYTES, 1 + root.encoded_len() as u64);
        out.push(0x00);
        root.write_bytes(&mut *out)
            .expect("writing to a Vec cannot fail");
    }
    push_cbor_head(out, CBOR_TEXT, 7);
    out.extend_from_slice(b"version");
    push_cbor_head(out, 0, 1);
    debug_assert_eq!(out.len() - start, header_body_len(roots));
}

/// Writes one section; returns its length.
fn write_section<W: Write>(w: &mut W, cid: &Cid, data: &[u8]) -> io::Result<usize> {
    let cid_len = cid.encoded_len();
    let mut head = [0u8; 10 + MAX_CID_LEN];
    let mut varint = unsigned_varint::encode::u64_buffer();
    let varint = unsigned_varint::encode::u64((cid_len + data.len()) as u64, &mut varint);
    head[..varint.len()].copy_from_slice(varint);
    let mut cursor = &mut head[varint.len()..];
    cid.write_bytes(&mut cursor).map_err(io::Error::other)?;
    let head_len = varint.len() + cid_len;
    w.write_all(&head[..head_len])?;
    w.write_all(data)?;
    Ok(head_len + data.len())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::ipld::{DAG_CBOR, DAG_PB, RAW, cid_identity, cid_sha256, encode_dag_cbor};
    use multihash_codetable::{Code, MultihashDigest};

    /// A decoded CAR, for comparing the two decoding paths.
    #[derive(Debug, PartialEq)]
    struct Car {
        roots: Vec<Cid>,
        blocks: Vec<Block>,
    }

    impl Car {
        fn encode(&self) -> Vec<u8> {
            encode_car(&self.roots, &self.blocks)
        }
    }

    fn blocks() -> Vec<Block> {
        vec![
            Block::from_codec(RAW, b"hello".to_vec()),
            Block::encode(&Ipld::List(vec![
                Ipld::Integer(1),
                Ipld::String("two".into()),
            ]))
            .unwrap(),
            Block::from_codec(RAW, Vec::new()),
            Block::new(cid_identity(RAW, b"inline"), b"inline".to_vec()).unwrap(),
            Block::from_codec(RAW, vec![7u8; 300]),
        ]
    }

    fn sample() -> (Vec<Cid>, Vec<Block>, Vec<u8>) {
        let blocks = blocks();
        let roots = vec![*blocks[1].cid()];
        let bytes = encode_car(&roots, &blocks);
        (roots, blocks, bytes)
    }

    /// Offsets where each section starts, then the end.
    fn boundaries(roots: &[Cid], blocks: &[Block]) -> Vec<usize> {
        let mut at = encoded_header_len(roots);
        let mut out = vec![at];
        for b in blocks {
            at += encoded_section_len(b.cid(), b.bytes().len());
            out.push(at);
        }
        out
    }

    fn header_with(value: Ipld) -> Vec<u8> {
        let body = encode_dag_cbor(&value).unwrap();
        let mut out = Vec::new();
        push_varint(&mut out, body.len() as u64);
        out.extend_from_slice(&body);
        out
    }

    fn header_map(entries: Vec<(&str, Ipld)>) -> Vec<u8> {
        header_with(Ipld::Map(
            entries
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect::<BTreeMap<_, _>>(),
        ))
    }

    fn section(cid_bytes: &[u8], data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        push_varint(&mut out, (cid_bytes.len() + data.len()) as u64);
        out.extend_from_slice(cid_bytes);
        out.extend_from_slice(data);
        out
    }

    /// Decodes with both paths (in memory, and streaming a byte at a time) and checks they agree.
    fn decode_both(bytes: &[u8], limits: CarLimits) -> Result<Car, CarError> {
        let in_memory = decode_car(bytes, &limits).map(|(roots, blocks)| Car { roots, blocks });
        let streamed = stream(OneByte(bytes), limits);
        match (&in_memory, &streamed) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            _ => panic!("paths disagree: {in_memory:?} vs {streamed:?}"),
        }
        in_memory
    }

    fn stream<R: Read>(reader: R, limits: CarLimits) -> Result<Car, CarError> {
        let reader = CarReader::new(reader, &limits)?;
        let roots = reader.roots().to_vec();
        let blocks = reader.collect::<Result<Vec<_>, _>>()?;
        Ok(Car { roots, blocks })
    }

    /// A reader that hands out one byte per call, to exercise short reads.
    struct OneByte<'a>(&'a [u8]);

    impl Read for OneByte<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match (self.0.split_first(), buf.first_mut()) {
                (Some((&b, rest)), Some(slot)) => {
                    *slot = b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    /// A reader that counts what it handed out.
    struct Counting<'a> {
        inner: &'a [u8],
        read: usize,
    }

    impl Read for Counting<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read += n;
            Ok(n)
        }
    }

    #[test]
    fn round_trip() {
        let (roots, blocks, bytes) = sample();
        let car = decode_both(&bytes, CarLimits::default()).unwrap();
        assert_eq!(car.roots, roots);
        assert_eq!(car.blocks, blocks);
        assert_eq!(car.encode(), bytes);
        assert_eq!(encoded_car_len(&roots, &blocks), bytes.len());
    }

    #[test]
    fn writer_matches_encode_car() {
        let (roots, blocks, bytes) = sample();
        let mut w = CarWriter::new(Vec::new(), &roots).unwrap();
        assert_eq!(w.bytes_written(), encoded_header_len(&roots) as u64);
        for b in &blocks {
            w.write_block(b).unwrap();
        }
        assert_eq!(w.bytes_written(), bytes.len() as u64);
        assert_eq!(w.finish().unwrap(), bytes);
    }

    #[test]
    fn header_is_the_dag_cbor_map() {
        let v0 = Cid::new_v0(Code::Sha2_256.digest(b"pb")).unwrap();
        let many: Vec<Cid> = (0..30u8).map(|i| cid_sha256(DAG_CBOR, &[i])).collect();
        for roots in [vec![], vec![v0], vec![cid_sha256(RAW, b"x"), v0], many] {
            let expected = encode_dag_cbor(&Ipld::Map(BTreeMap::from([
                (
                    "roots".to_string(),
                    Ipld::List(roots.iter().copied().map(Ipld::Link).collect()),
                ),
                ("version".to_string(), Ipld::Integer(1)),
            ])))
            .unwrap();
            let mut out = Vec::new();
            write_header(&mut out, &roots);
            let mut prefix = Vec::new();
            push_varint(&mut prefix, expected.len() as u64);
            assert_eq!(out, [prefix, expected].concat());
            assert_eq!(out.len(), encoded_header_len(&roots));
            let car = decode_both(&out, CarLimits::default()).unwrap();
            assert_eq!(car.roots, roots);
            assert!(car.blocks.is_empty());
        }
    }

    #[test]
    fn zero_roots_are_allowed() {
        let blocks = blocks();
        let bytes = encode_car(&[], &blocks);
        let car = decode_both(&bytes, CarLimits::default()).unwrap();
        assert!(car.roots.is_empty());
        assert_eq!(car.blocks, blocks);
    }

    #[test]
    fn cid_v0_sections() {
        let data = b"\x0a\x02\x08\x01".to_vec();
        let cid = Cid::new_v0(Code::Sha2_256.digest(&data)).unwrap();
        assert_eq!(cid.codec(), DAG_PB);
        let block = Block::new(cid, data).unwrap();
        let bytes = encode_car(&[cid], [&block]);
        assert_eq!(&bytes[bytes.len() - 4 - 34..][..2], &[0x12, 0x20]);
        let car = decode_both(&bytes, CarLimits::default()).unwrap();
        assert_eq!(car.roots, vec![cid]);
        assert_eq!(car.blocks, vec![block]);
        assert_eq!(car.encode(), bytes);
    }

    #[test]
    fn every_prefix_is_an_error_or_a_shorter_car() {
        let (roots, blocks, bytes) = sample();
        let ends = boundaries(&roots, &blocks);
        for cut in 0..bytes.len() {
            let prefix = &bytes[..cut];
            match decode_both(prefix, CarLimits::default()) {
                Ok(car) => {
                    let n = ends.iter().position(|&e| e == cut).unwrap_or_else(|| {
                        panic!("prefix of {cut} bytes decoded though not at a boundary")
                    });
                    assert_eq!(car.roots, roots);
                    assert_eq!(car.blocks, blocks[..n]);
                }
                Err(CarError::TruncatedHeader { offset }) => {
                    assert!(cut < ends[0]);
                    assert_eq!(offset, cut as u64);
                }
                Err(CarError::Truncated { index, offset }) => {
                    assert!(cut > ends[0]);
                    assert_eq!(offset, cut as u64);
                    assert!(ends[index] < cut && cut < ends[index + 1]);
                }
                Err(e) => panic!("prefix of {cut} bytes: unexpected {e}"),
            }
        }
    }

    #[test]
    fn empty_input_is_a_truncated_header() {
        let err = decode_car(&[], &CarLimits::default()).unwrap_err();
        assert!(matches!(err, CarError::TruncatedHeader { offset: 0 }));
        assert_eq!(
            err.to_string(),
            "unexpected end of CAR at offset 0, inside the header"
        );
    }

    #[test]
    fn flipped_data_byte_is_a_hash_mismatch() {
        let (roots, blocks, bytes) = sample();
        let ends = boundaries(&roots, &blocks);
        // The last byte of block 1's data.
        let mut bad = bytes.clone();
        bad[ends[2] - 1] ^= 1;
        let err = decode_both(&bad, CarLimits::default()).unwrap_err();
        match &err {
            CarError::HashMismatch { index, offset, cid } => {
                assert_eq!(*index, 1);
                assert_eq!(*offset, ends[1] as u64);
                assert_eq!(cid, blocks[1].cid());
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains(&blocks[1].cid().to_string()));

        // Identity-hashed blocks are checked too.
        let mut bad = bytes;
        bad[ends[4] - 1] ^= 1;
        assert!(matches!(
            decode_both(&bad, CarLimits::default()),
            Err(CarError::HashMismatch { index: 3, .. })
        ));
    }

    #[test]
    fn reader_stops_after_an_error() {
        let (roots, blocks, mut bytes) = sample();
        let ends = boundaries(&roots, &blocks);
        bytes[ends[2] - 1] ^= 1;
        let mut reader = CarReader::new(bytes.as_slice(), &CarLimits::default()).unwrap();
        assert_eq!(reader.next_block().unwrap().as_ref(), Some(&blocks[0]));
        assert!(matches!(
            reader.next_block(),
            Err(CarError::HashMismatch { .. })
        ));
        assert!(matches!(reader.next_block(), Err(CarError::Poisoned)));

        let reader = CarReader::new(bytes.as_slice(), &CarLimits::default()).unwrap();
        let items: Vec<_> = reader.collect();
        assert_eq!(items.len(), 2);
        assert!(items[1].is_err());
    }

    #[test]
    fn reader_reports_progress() {
        let (roots, blocks, bytes) = sample();
        let mut reader = CarReader::new(bytes.as_slice(), &CarLimits::default()).unwrap();
        assert_eq!(reader.roots(), roots);
        assert_eq!(reader.offset(), encoded_header_len(&roots) as u64);
        reader.next_block().unwrap().unwrap();
        assert_eq!(reader.blocks_read(), 1);
        assert_eq!(reader.by_ref().count(), blocks.len() - 1);
        assert_eq!(reader.next_block().unwrap(), None);
        assert_eq!(reader.offset(), bytes.len() as u64);
        assert!(reader.into_inner().is_empty());
    }

    #[test]
    fn oversized_header_is_refused_before_reading_it() {
        let mut bytes = Vec::new();
        push_varint(&mut bytes, DEFAULT_MAX_HEADER_SIZE as u64 + 1);
        bytes.extend_from_slice(&[0xa2; 16]);
        let mut counting = Counting {
            inner: &bytes,
            read: 0,
        };
        let err = CarReader::new(&mut counting, &CarLimits::default()).unwrap_err();
        assert!(matches!(
            err,
            CarError::HeaderTooLarge { len, max: DEFAULT_MAX_HEADER_SIZE }
                if len == DEFAULT_MAX_HEADER_SIZE as u64 + 1
        ));
        assert_eq!(counting.read, 3, "only the varint was read");
        assert!(matches!(
            decode_car(&bytes, &CarLimits::default()),
            Err(CarError::HeaderTooLarge { .. })
        ));
    }

    #[test]
    fn oversized_section_is_refused_before_reading_it() {
        let (roots, _, _) = sample();
        let header_len = encoded_header_len(&roots);
        for claimed in [DEFAULT_MAX_BLOCK_SIZE as u64 + 1, (1 << 62) + 5] {
            let mut bytes = encode_car(&roots, []);
            push_varint(&mut bytes, claimed);
            let varint_end = bytes.len();
            bytes.extend_from_slice(&[0x01; 64]);
            let mut counting = Counting {
                inner: &bytes,
                read: 0,
            };
            let mut reader = CarReader::new(&mut counting, &CarLimits::default()).unwrap();
            match reader.next_block() {
                Err(CarError::BlockTooLarge {
                    index: 0,
                    offset,
                    len,
                    max: DEFAULT_MAX_BLOCK_SIZE,
                }) => {
                    assert_eq!(offset, header_len as u64);
                    assert_eq!(len, claimed);
                }
                other => panic!("{other:?}"),
            }
            drop(reader);
            assert_eq!(counting.read, varint_end, "only the varint was read");
            assert!(matches!(
                decode_car(&bytes, &CarLimits::default()),
                Err(CarError::BlockTooLarge { .. })
            ));
        }
    }

    #[test]
    fn a_lying_length_under_a_huge_limit_allocates_only_what_arrives() {
        // With no effective limit, a section claiming 2^62 bytes followed by a few must fail as
        // truncated (were the claim allocated up front, this test would abort).
        let limits = CarLimits {
            max_header_size: usize::MAX,
            max_block_size: usize::MAX,
            max_blocks: None,
        };
        let mut bytes = encode_car(&[], []);
        push_varint(&mut bytes, 1 << 62);
        bytes.extend_from_slice(&[0x01; 100]);
        assert!(matches!(
            decode_both(&bytes, limits),
            Err(CarError::Truncated { index: 0, offset }) if offset == bytes.len() as u64
        ));
        let mut bytes = Vec::new();
        push_varint(&mut bytes, 1 << 62);
        bytes.extend_from_slice(&[0xa2; 100]);
        assert!(matches!(
            decode_both(&bytes, limits),
            Err(CarError::TruncatedHeader { offset }) if offset == bytes.len() as u64
        ));
    }

    #[test]
    fn bad_varints() {
        // Ten continuation bytes.
        let err = decode_both(&[0xff; 10], CarLimits::default()).unwrap_err();
        assert!(
            matches!(err, CarError::BadVarint { offset: 0, .. }),
            "{err}"
        );
        // 0x3a written in two bytes.
        let (_, _, bytes) = sample();
        let mut long = vec![0xba, 0x00];
        long.extend_from_slice(&bytes[1..]);
        let err = decode_both(&long, CarLimits::default()).unwrap_err();
        assert!(
            matches!(err, CarError::BadVarint { offset: 0, .. }),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "invalid varint at offset 0: not minimally encoded"
        );
        // The same in a section length.
        let mut bad = encode_car(&[], []);
        let at = bad.len();
        bad.extend_from_slice(&[0x80, 0x80, 0x00]);
        assert!(matches!(
            decode_both(&bad, CarLimits::default()),
            Err(CarError::BadVarint { offset, .. }) if offset == at as u64
        ));
    }

    #[test]
    fn wrong_versions() {
        let two = header_map(vec![
            ("roots", Ipld::List(vec![])),
            ("version", Ipld::Integer(2)),
        ]);
        let err = decode_both(&two, CarLimits::default()).unwrap_err();
        assert!(matches!(err, CarError::UnsupportedVersion { version: 2 }));
        assert_eq!(
            err.to_string(),
            "unsupported CAR version 2: only version 1 is read"
        );
        // The CARv2 pragma.
        let pragma = [
            0x0a, 0xa1, 0x67, b'v', b'e', b'r', b's', b'i', b'o', b'n', 0x02,
        ];
        assert!(matches!(
            decode_both(&pragma, CarLimits::default()),
            Err(CarError::UnsupportedVersion { version: 2 })
        ));
        let negative = header_map(vec![
            ("roots", Ipld::List(vec![])),
            ("version", Ipld::Integer(-1)),
        ]);
        assert!(matches!(
            decode_both(&negative, CarLimits::default()),
            Err(CarError::UnsupportedVersion { version: -1 })
        ));
    }

    #[test]
    fn malformed_headers() {
        let root = Ipld::Link(cid_sha256(RAW, b"r"));
        let one = Ipld::Integer(1);
        let cases = [
            header_with(Ipld::List(vec![])),
            header_map(vec![("roots", Ipld::List(vec![]))]),
            header_map(vec![("version", one.clone())]),
            header_map(vec![("roots", root.clone()), ("version", one.clone())]),
            header_map(vec![
                (
                    "roots",
                    Ipld::List(vec![root.clone(), Ipld::String("x".into())]),
                ),
                ("version", one.clone()),
            ]),
            header_map(vec![
                ("roots", Ipld::List(vec![])),
                ("version", Ipld::String("1".into())),
            ]),
            header_map(vec![
                ("roots", Ipld::List(vec![])),
                ("version", one.clone()),
                ("extra", Ipld::Null),
            ]),
            // Not DAG-CBOR at all.
            vec![0x03, 0xff, 0xff, 0xff],
            // Trailing bytes inside the declared header.
            {
                let mut h = header_map(vec![("roots", Ipld::List(vec![])), ("version", one)]);
                h[0] += 1;
                h.push(0x00);
                h
            },
            // Empty header.
            vec![0x00],
        ];
        for (i, bytes) in cases.iter().enumerate() {
            match decode_both(bytes, CarLimits::default()) {
                Err(CarError::InvalidHeader { .. }) => {}
                other => panic!("case {i}: {other:?}"),
            }
        }
    }

    #[test]
    fn invalid_cids_in_sections() {
        let (roots, _, _) = sample();
        let car = encode_car(&roots, []);
        let at = car.len() as u64;
        let v1 = cid_sha256(RAW, b"d").to_bytes();
        let mut non_minimal_codec = vec![0x01, 0xd5, 0x00];
        non_minimal_codec.extend_from_slice(&v1[2..]);
        let cases = [
            section(&[], &[]),
            // Version 3.
            section(&[0x03, 0x55, 0x12, 0x20], &[0; 32]),
            // A CID longer than its section.
            section(&v1[..10], &[]),
            // Codec 0x55 written in two bytes.
            section(&non_minimal_codec, b"d"),
            // An explicit version 0.
            section(&[0x00, 0x70, 0x12, 0x20], &[0; 32]),
        ];
        for (i, s) in cases.iter().enumerate() {
            let bytes = [car.as_slice(), s].concat();
            match decode_both(&bytes, CarLimits::default()) {
                Err(CarError::InvalidCid {
                    index: 0, offset, ..
                }) if offset == at => {}
                other => panic!("case {i}: {other:?}"),
            }
        }
    }

    #[test]
    fn unsupported_hashes_are_named() {
        let cid = Cid::new_v1(RAW, Code::Sha2_512.digest(b"x"));
        let bytes = [encode_car(&[], []), section(&cid.to_bytes(), b"x")].concat();
        match decode_both(&bytes, CarLimits::default()) {
            Err(err @ CarError::UnsupportedHash { cid: c, .. }) => {
                assert_eq!(c, cid);
                assert!(err.to_string().ends_with("unsupported multihash code 0x13"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn block_count_limit() {
        let (_, blocks, bytes) = sample();
        let limits = CarLimits::default().with_max_blocks(blocks.len());
        assert_eq!(decode_both(&bytes, limits).unwrap().blocks, blocks);
        let limits = CarLimits::default().with_max_blocks(2);
        assert!(matches!(
            decode_both(&bytes, limits),
            Err(CarError::TooManyBlocks {
                index: 2,
                max: 2,
                ..
            })
        ));
    }

    #[test]
    fn io_errors_carry_their_source() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::ConnectionReset, "gone"))
            }
        }
        let err = CarReader::new(Failing, &CarLimits::default()).unwrap_err();
        let CarError::Io { offset: 0, source } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(source.kind(), io::ErrorKind::ConnectionReset);
        assert!(std::error::Error::source(&err).is_some());

        // After the header, mid-section.
        let (_, _, bytes) = sample();
        let reader = Read::chain(&bytes[..bytes.len() - 3], Failing);
        let mut reader = CarReader::new(reader, &CarLimits::default()).unwrap();
        let err = reader.by_ref().find_map(Result::err).unwrap();
        assert!(matches!(err, CarError::Io { .. }), "{err:?}");
    }

    #[test]
    fn interrupted_reads_are_retried() {
        struct Interrupting<'a> {
            inner: &'a [u8],
            flip: bool,
        }
        impl Read for Interrupting<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.flip = !self.flip;
                if self.flip {
                    return Err(io::ErrorKind::Interrupted.into());
                }
                self.inner.read(buf)
            }
        }
        let (roots, blocks, bytes) = sample();
        let car = stream(
            Interrupting {
                inner: &bytes,
                flip: false,
            },
            CarLimits::default(),
        )
        .unwrap();
        assert_eq!((car.roots, car.blocks), (roots, blocks));
    }

    #[test]
    fn decoded_blocks_share_the_input() {
        let (_, _, bytes) = sample();
        let input = Bytes::from(bytes);
        let range = input.as_ptr_range();
        let (_, blocks) = decode_car_bytes(input.clone(), &CarLimits::default()).unwrap();
        for block in blocks.iter().filter(|b| !b.bytes().is_empty()) {
            assert!(range.contains(&block.bytes().as_ptr()));
        }
    }

    #[test]
    fn duplicate_blocks_are_kept_in_order() {
        let b = Block::from_codec(RAW, b"dup".to_vec());
        let bytes = encode_car(&[*b.cid()], [&b, &b]);
        let car = decode_both(&bytes, CarLimits::default()).unwrap();
        assert_eq!(car.blocks, vec![b.clone(), b]);
        assert_eq!(car.encode(), bytes);
    }

    #[test]
    fn errors_stay_small() {
        // Under clippy's `result_large_err` threshold, so that errors embedding it need no box.
        assert!(std::mem::size_of::<CarError>() < 128);
    }

    #[test]
    fn varint_lengths() {
        for n in [
            0u64,
            1,
            127,
            128,
            16383,
            16384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            push_varint(&mut out, n);
            assert_eq!(out.len(), varint_len(n), "{n}");
        }
        for n in [0u64, 23, 24, 255, 256, 65535, 65536, 1 << 32] {
            let mut out = Vec::new();
            push_cbor_head(&mut out, CBOR_ARRAY, n);
            assert_eq!(out.len(), cbor_head_len(n), "{n}");
        }
    }
}
