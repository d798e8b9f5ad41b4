//! UnixFS files exactly as Storacha's upload-client encodes them, and a streaming reader.
//!
//! # Encoding
//!
//! Storacha's upload-client configures `@ipld/unixfs` 3.0.0 with
//! `{fileChunkEncoder: raw, smallFileEncoder: raw, chunker: withMaxChunkSize(1 MiB),
//! fileLayout: withWidth(1024)}`, sha2-256 and CIDv1. [`FileEncoder`] produces the same blocks
//! and the same root CID (proven by `proto/tests/unixfs_interop.rs` against the JS package):
//!
//! - The content is cut into fixed chunks of [`CHUNK_SIZE`] bytes (the last one shorter). Every
//!   chunk is a **raw** block (codec `0x55`).
//! - A file of at most one chunk is that one raw block, so a blob of ≤ 1 MiB has the same CID as
//!   its ATProto blob CID. The empty file is the empty raw block
//!   (`bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku`), as `@ipld/unixfs` makes it.
//! - Larger files use the balanced layout of width [`WIDTH`]: the leaves, left to right, are
//!   grouped into inner nodes of up to `WIDTH` links; those nodes are grouped the same way, level
//!   after level, until one node remains, which is the root. Only the last group of a level can
//!   be short (it may hold a single link), so every leaf is at the same depth.
//! - An inner node is DAG-PB (codec `0x70`): its links come first, each
//!   `{Hash: child CID, Name: "", Tsize: child's DAG byte length}` (the child block's length plus
//!   its descendants'), then `Data`, the UnixFS protobuf `{Type: File, filesize: Σ content,
//!   blocksizes: [content length of each child]}`. Field order and presence are those of
//!   `@ipld/unixfs` and `@ipld/dag-pb`: `Type` (1), `filesize` (3), then one unpacked
//!   `blocksizes` (4) entry per child; no `Data` bytes, no `mode`, no `mtime`; the link `Name` is
//!   written even though it is empty.
//!
//! The encoder is streaming: it holds at most one partial chunk plus, per tree level, the links
//! not yet grouped (fewer than the width), and hands back each block as soon as it is final.
//! Smaller chunk sizes and widths ([`FileEncoder::with_params`]) give the same layout with other
//! parameters; the interop test uses them to reach deep trees without gigabytes of input.
//!
//! # Reading
//!
//! [`FileReader`] walks a file from its root over a [`BlockGetter`] and yields its content leaf
//! by leaf, holding one block at a time plus the links still to visit. It reads raw leaves and
//! DAG-PB `File` (and `Raw`) nodes with or without inline data, as other UnixFS writers produce
//! them, and checks every size it can: each node's `filesize` against the sum of its data and
//! `blocksizes`, each child's actual content length against the `blocksizes` entry that names
//! it. Directories, symlinks and HAMT shards are not files and are rejected with
//! [`UnixFsError::NotAFile`].

use bytes::Bytes;
use cid::Cid;

use crate::clock::{BlockGetter, FetchError, StoreError, fetch};
use crate::ipld::{Block, DAG_PB, IpldError, RAW, cid_from_bytes};

/// Storacha's chunk size: 1 MiB.
pub const CHUNK_SIZE: usize = 1024 * 1024;
/// Storacha's balanced-layout width: at most 1024 links per inner node.
pub const WIDTH: usize = 1024;

/// UnixFS `Data.DataType` values.
const TYPE_RAW: u64 = 0;
const TYPE_DIRECTORY: u64 = 1;
const TYPE_FILE: u64 = 2;
const TYPE_METADATA: u64 = 3;
const TYPE_SYMLINK: u64 = 4;
const TYPE_HAMT_SHARD: u64 = 5;

/// Why a file could not be encoded or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnixFsError {
    /// Encoder parameters that cannot build a tree.
    #[error("invalid UnixFS parameters: {reason}")]
    InvalidParams {
        /// What is wrong with them.
        reason: String,
    },
    /// The getter does not have a block of the file.
    #[error("missing block: {cid}")]
    MissingBlock {
        /// The missing block.
        cid: Cid,
    },
    /// The getter failed while fetching a block.
    #[error("block store failed fetching {cid}: {source}")]
    Store {
        /// The block being fetched.
        cid: Cid,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// The getter returned bytes that are not the block it was asked for.
    #[error("block store returned wrong bytes for {cid}: {source}")]
    BlockMismatch {
        /// The block asked for.
        cid: Cid,
        /// Why the bytes do not match.
        #[source]
        source: Box<IpldError>,
    },
    /// A block of the file uses a codec that is neither raw nor DAG-PB.
    #[error("block {cid}: codec 0x{codec:x} is neither raw nor dag-pb")]
    UnsupportedCodec {
        /// The block.
        cid: Cid,
        /// Its codec.
        codec: u64,
    },
    /// A DAG-PB block does not decode.
    #[error("invalid dag-pb block {cid}: {reason}")]
    InvalidDagPb {
        /// The block.
        cid: Cid,
        /// What is wrong with it.
        reason: String,
    },
    /// A DAG-PB block's `Data` is not a valid UnixFS file node.
    #[error("invalid UnixFS node {cid}: {reason}")]
    InvalidUnixFs {
        /// The block.
        cid: Cid,
        /// What is wrong with it.
        reason: String,
    },
    /// The DAG is a UnixFS directory, symlink or other non-file.
    #[error("{cid} is a UnixFS {kind}, not a file")]
    NotAFile {
        /// The node.
        cid: Cid,
        /// What it is instead.
        kind: &'static str,
    },
    /// A node's content length differs from the size its parent records for it.
    #[error("{cid}: content is {actual} bytes but its parent records {expected}")]
    SizeMismatch {
        /// The node.
        cid: Cid,
        /// The size in the parent's `blocksizes`.
        expected: u64,
        /// The node's own size.
        actual: u64,
    },
}

/// A link to a file or a part of one, as a parent node records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileLink {
    /// The node's CID.
    pub cid: Cid,
    /// Bytes of file content below the node (its `blocksizes` entry in the parent).
    pub content_size: u64,
    /// Bytes of the node's block plus all blocks below it (its `Tsize` in the parent).
    pub dag_size: u64,
}

/// Streaming UnixFS file encoder; see the module documentation.
///
/// Feed content with [`push`](Self::push), which returns the blocks completed so far, then call
/// [`finish`](Self::finish) for the root and the remaining blocks. Every block is returned once,
/// in an order where children come before their parents; identical chunks give identical blocks
/// and are returned each time (deduplicate when storing).
#[derive(Debug, Clone)]
pub struct FileEncoder {
    chunk_size: usize,
    width: usize,
    /// The current partial chunk, shorter than `chunk_size`.
    buf: Vec<u8>,
    /// Per level (0 = leaves), the links not yet grouped into a parent; fewer than `width` each.
    levels: Vec<Vec<FileLink>>,
    /// Content bytes pushed so far.
    size: u64,
}

impl Default for FileEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FileEncoder {
    /// An encoder with Storacha's settings: 1 MiB chunks, width 1024.
    pub fn new() -> Self {
        Self {
            chunk_size: CHUNK_SIZE,
            width: WIDTH,
            buf: Vec::new(),
            levels: Vec::new(),
            size: 0,
        }
    }

    /// An encoder with another chunk size and width (the same layout rules). `chunk_size` must be
    /// at least 1 and `width` at least 2.
    pub fn with_params(chunk_size: usize, width: usize) -> Result<Self, UnixFsError> {
        if chunk_size == 0 {
            return Err(UnixFsError::InvalidParams {
                reason: "chunk size must be at least 1 byte".to_owned(),
            });
        }
        if width < 2 {
            return Err(UnixFsError::InvalidParams {
                reason: format!("width must be at least 2, got {width}"),
            });
        }
        Ok(Self {
            chunk_size,
            width,
            ..Self::new()
        })
    }

    /// The chunk size in bytes.
    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// The maximum number of links per inner node.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Content bytes pushed so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Adds content; returns the blocks (leaves and inner nodes) this completed.
    pub fn push(&mut self, mut data: &[u8]) -> Vec<Block> {
        let mut out = Vec::new();
        self.size += data.len() as u64;
        while !data.is_empty() {
            if self.buf.is_empty() && data.len() >= self.chunk_size {
                let (chunk, rest) = data.split_at(self.chunk_size);
                self.add_leaf(Bytes::copy_from_slice(chunk), &mut out);
                data = rest;
            } else {
                let take = (self.chunk_size - self.buf.len()).min(data.len());
                self.buf.extend_from_slice(&data[..take]);
                data = &data[take..];
                if self.buf.len() == self.chunk_size {
                    let chunk = Bytes::copy_from_slice(&self.buf);
                    self.buf.clear();
                    self.add_leaf(chunk, &mut out);
                }
            }
        }
        out
    }

    /// Ends the file: returns the root CID, the blocks not yet returned (the root last) and the
    /// file's size in bytes.
    pub fn finish(self) -> (Cid, Vec<Block>, u64) {
        let (link, blocks) = self.finish_link();
        (link.cid, blocks, link.content_size)
    }

    /// Like [`finish`](Self::finish), with the root's DAG size too (what a directory entry or
    /// parent would record as its `Tsize`).
    pub fn finish_link(mut self) -> (FileLink, Vec<Block>) {
        let mut out = Vec::new();
        if !self.buf.is_empty() {
            let chunk = Bytes::from(std::mem::take(&mut self.buf));
            self.add_leaf(chunk, &mut out);
        }
        if self.levels.iter().all(Vec::is_empty) {
            // No content: @ipld/unixfs encodes an empty leaf with the raw chunk encoder.
            let block = Block::from_codec(RAW, Bytes::new());
            let link = FileLink {
                cid: *block.cid(),
                content_size: 0,
                dag_size: 0,
            };
            out.push(block);
            return (link, out);
        }
        // Close every level bottom-up: a level's remaining links become one more node, unless
        // they are the single topmost link, which is the root.
        let mut level = 0;
        loop {
            let top = self
                .levels
                .iter()
                .rposition(|l| !l.is_empty())
                .unwrap_or_default();
            if level == top && self.levels[level].len() == 1 {
                let root = self.levels[level][0];
                return (root, out);
            }
            if !self.levels[level].is_empty() {
                let links = std::mem::take(&mut self.levels[level]);
                let (block, link) = encode_branch(&links);
                out.push(block);
                self.push_link(level + 1, link, &mut out);
            }
            level += 1;
        }
    }

    fn add_leaf(&mut self, chunk: Bytes, out: &mut Vec<Block>) {
        let len = chunk.len() as u64;
        let block = Block::from_codec(RAW, chunk);
        let link = FileLink {
            cid: *block.cid(),
            content_size: len,
            dag_size: len,
        };
        out.push(block);
        self.push_link(0, link, out);
    }

    /// Adds a link at `level`; a full level becomes a node one level up. Grouping a full level
    /// at once gives the same tree as `@ipld/unixfs`, which waits for one more link first.
    fn push_link(&mut self, mut level: usize, mut link: FileLink, out: &mut Vec<Block>) {
        loop {
            if self.levels.len() <= level {
                self.levels.resize_with(level + 1, Vec::new);
            }
            let row = &mut self.levels[level];
            row.push(link);
            if row.len() < self.width {
                return;
            }
            let links = std::mem::take(row);
            let (block, parent) = encode_branch(&links);
            out.push(block);
            link = parent;
            level += 1;
        }
    }
}

/// Encodes `bytes` as a file with Storacha's settings: the root CID and every block (children
/// before parents, the root last).
pub fn encode_file(bytes: &[u8]) -> (Cid, Vec<Block>) {
    let mut encoder = FileEncoder::new();
    let mut blocks = encoder.push(bytes);
    let (root, rest, _) = encoder.finish();
    blocks.extend(rest);
    (root, blocks)
}

/// Encodes `bytes` with the given chunk size and width (see [`FileEncoder::with_params`]).
pub fn encode_file_with(
    bytes: &[u8],
    chunk_size: usize,
    width: usize,
) -> Result<(Cid, Vec<Block>), UnixFsError> {
    let mut encoder = FileEncoder::with_params(chunk_size, width)?;
    let mut blocks = encoder.push(bytes);
    let (root, rest, _) = encoder.finish();
    blocks.extend(rest);
    Ok((root, blocks))
}

/// The DAG-PB block of an inner file node over `links`, and the link to it.
fn encode_branch(links: &[FileLink]) -> (Block, FileLink) {
    let filesize: u64 = links.iter().map(|l| l.content_size).sum();
    // UnixFS Data, in protobufjs's field order: Type, filesize, blocksizes (unpacked).
    let mut data = Vec::with_capacity(4 + 10 + links.len() * 6);
    data.extend_from_slice(&[0x08, TYPE_FILE as u8, 0x18]);
    put_varint(&mut data, filesize);
    for link in links {
        data.push(0x20);
        put_varint(&mut data, link.content_size);
    }
    // PBNode: Links (field 2) first, then Data (field 1), as @ipld/dag-pb writes them.
    let mut node = Vec::with_capacity(links.len() * 56 + data.len() + 4);
    let mut pblink = Vec::with_capacity(64);
    for link in links {
        pblink.clear();
        let hash = link.cid.to_bytes();
        pblink.push(0x0a);
        put_varint(&mut pblink, hash.len() as u64);
        pblink.extend_from_slice(&hash);
        pblink.extend_from_slice(&[0x12, 0x00]); // Name: ""
        pblink.push(0x18);
        put_varint(&mut pblink, link.dag_size);
        node.push(0x12);
        put_varint(&mut node, pblink.len() as u64);
        node.extend_from_slice(&pblink);
    }
    node.push(0x0a);
    put_varint(&mut node, data.len() as u64);
    node.extend_from_slice(&data);

    let dag_size = node.len() as u64 + links.iter().map(|l| l.dag_size).sum::<u64>();
    let block = Block::from_codec(DAG_PB, node);
    let link = FileLink {
        cid: *block.cid(),
        content_size: filesize,
        dag_size,
    };
    (block, link)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a protobuf varint at `*pos`, advancing it.
fn get_varint(bytes: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let Some(&b) = bytes.get(*pos) else {
            return Err("unexpected end of data in a varint".to_owned());
        };
        *pos += 1;
        if shift == 63 && b > 1 {
            return Err("varint overflows 64 bits".to_owned());
        }
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(v);
        }
    }
    Err("varint overflows 64 bits".to_owned())
}

/// Reads a length-delimited field's range at `*pos`, advancing past it.
fn get_len(bytes: &[u8], pos: &mut usize) -> Result<std::ops::Range<usize>, String> {
    let len = get_varint(bytes, pos)?;
    let start = *pos;
    let end = usize::try_from(len)
        .ok()
        .and_then(|l| start.checked_add(l))
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| "length-delimited field runs past the end".to_owned())?;
    *pos = end;
    Ok(start..end)
}

/// One link of a DAG-PB node (only what a file reader needs).
struct PbLink {
    hash: Cid,
}

/// A decoded DAG-PB node: its links and its `Data` bytes (a slice of the block).
struct PbNode {
    links: Vec<PbLink>,
    data: Option<Bytes>,
}

/// Decodes DAG-PB with the rules of `@ipld/dag-pb`'s decoder: fields 1 (`Data`, at most once)
/// and 2 (`Links`, not after `Data` once links came first), both length-delimited; in a link,
/// `Hash` (required here), `Name`, `Tsize`, each at most once and in that order.
fn decode_pb(bytes: &Bytes) -> Result<PbNode, String> {
    let mut pos = 0;
    let mut links: Option<Vec<PbLink>> = None;
    let mut data = None;
    let mut links_before_data = false;
    while pos < bytes.len() {
        let key = get_varint(bytes, &mut pos)?;
        let (field, wire) = (key >> 3, key & 7);
        if wire != 2 {
            return Err(format!(
                "PBNode field {field} has wire type {wire}, expected 2"
            ));
        }
        let range = get_len(bytes, &mut pos)?;
        match field {
            1 => {
                if data.is_some() {
                    return Err("duplicate Data section".to_owned());
                }
                data = Some(bytes.slice(range));
                links_before_data = links.is_some();
            }
            2 => {
                if links_before_data {
                    return Err("Links after Data".to_owned());
                }
                let link = decode_pb_link(&bytes[range])?;
                links.get_or_insert_with(Vec::new).push(link);
            }
            other => return Err(format!("invalid PBNode field number {other}")),
        }
    }
    Ok(PbNode {
        links: links.unwrap_or_default(),
        data,
    })
}

fn decode_pb_link(bytes: &[u8]) -> Result<PbLink, String> {
    let mut pos = 0;
    let mut hash = None;
    let mut seen = 0u8; // highest field seen, for order and duplicates
    while pos < bytes.len() {
        let key = get_varint(bytes, &mut pos)?;
        let (field, wire) = (key >> 3, key & 7);
        if !(1..=3).contains(&field) {
            return Err(format!("invalid PBLink field number {field}"));
        }
        let field = field as u8;
        if field <= seen {
            return Err(format!("PBLink field {field} duplicated or out of order"));
        }
        seen = field;
        let want = if field == 3 { 0 } else { 2 };
        if wire != want {
            return Err(format!("PBLink field {field} has wire type {wire}"));
        }
        match field {
            1 => {
                let range = get_len(bytes, &mut pos)?;
                hash = Some(cid_from_bytes(&bytes[range]).map_err(|e| e.to_string())?);
            }
            2 => {
                let range = get_len(bytes, &mut pos)?;
                std::str::from_utf8(&bytes[range]).map_err(|_| "link Name is not UTF-8")?;
            }
            _ => {
                get_varint(bytes, &mut pos)?;
            }
        }
    }
    Ok(PbLink {
        hash: hash.ok_or("link without a Hash")?,
    })
}

/// The fields of a UnixFS `Data` message that a file reader uses.
struct UnixFsData {
    kind: u64,
    data: Option<std::ops::Range<usize>>,
    filesize: Option<u64>,
    blocksizes: Vec<u64>,
}

/// Decodes a UnixFS `Data` message as protobufjs does: known fields by number, unknown fields
/// skipped, `Type` required, `blocksizes` packed or not.
fn decode_unixfs(bytes: &[u8]) -> Result<UnixFsData, String> {
    let mut pos = 0;
    let mut kind = None;
    let mut data = None;
    let mut filesize = None;
    let mut blocksizes = Vec::new();
    while pos < bytes.len() {
        let key = get_varint(bytes, &mut pos)?;
        let (field, wire) = (key >> 3, key & 7);
        let expect = |w: u64| {
            if wire == w {
                Ok(())
            } else {
                Err(format!("field {field} has wire type {wire}, expected {w}"))
            }
        };
        match field {
            1 => {
                expect(0)?;
                kind = Some(get_varint(bytes, &mut pos)?);
            }
            2 => {
                expect(2)?;
                data = Some(get_len(bytes, &mut pos)?);
            }
            3 => {
                expect(0)?;
                filesize = Some(get_varint(bytes, &mut pos)?);
            }
            4 if wire == 2 => {
                let range = get_len(bytes, &mut pos)?;
                let mut p = range.start;
                while p < range.end {
                    blocksizes.push(get_varint(&bytes[..range.end], &mut p)?);
                }
            }
            4 => {
                expect(0)?;
                blocksizes.push(get_varint(bytes, &mut pos)?);
            }
            _ => skip_field(bytes, &mut pos, wire)?,
        }
    }
    Ok(UnixFsData {
        kind: kind.ok_or("missing required Type")?,
        data,
        filesize,
        blocksizes,
    })
}

fn skip_field(bytes: &[u8], pos: &mut usize, wire: u64) -> Result<(), String> {
    let skip = |pos: &mut usize, n: usize| {
        if *pos + n > bytes.len() {
            Err("unexpected end of data".to_owned())
        } else {
            *pos += n;
            Ok(())
        }
    };
    match wire {
        0 => get_varint(bytes, pos).map(drop),
        1 => skip(pos, 8),
        2 => get_len(bytes, pos).map(drop),
        5 => skip(pos, 4),
        other => Err(format!("unsupported wire type {other}")),
    }
}

/// Reads a file's content from its root, leaf by leaf; see the module documentation.
///
/// An iterator of content pieces (one per leaf or inline `Data`, never empty) in file order. The
/// first error ends the iteration.
pub struct FileReader<'g, G: ?Sized> {
    getter: &'g G,
    /// Nodes still to read, the next one last, each with the content size its parent records.
    stack: Vec<(Cid, Option<u64>)>,
    done: bool,
}

impl<G: ?Sized> std::fmt::Debug for FileReader<'_, G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileReader")
            .field("pending", &self.stack.len())
            .field("done", &self.done)
            .finish()
    }
}

impl<'g, G: BlockGetter + ?Sized> FileReader<'g, G> {
    /// A reader of the file whose root is `root`. Nothing is fetched until the first `next`.
    pub fn new(getter: &'g G, root: &Cid) -> Self {
        Self {
            getter,
            stack: vec![(*root, None)],
            done: false,
        }
    }

    fn step(&mut self) -> Result<Option<Bytes>, UnixFsError> {
        while let Some((cid, expected)) = self.stack.pop() {
            let block = fetch(self.getter, &cid).map_err(|e| match e {
                FetchError::Missing => UnixFsError::MissingBlock { cid },
                FetchError::Store(source) => UnixFsError::Store { cid, source },
                FetchError::Mismatch(source) => UnixFsError::BlockMismatch {
                    cid,
                    source: Box::new(source),
                },
            })?;
            let check = |actual: u64| match expected {
                Some(expected) if expected != actual => Err(UnixFsError::SizeMismatch {
                    cid,
                    expected,
                    actual,
                }),
                _ => Ok(()),
            };
            match cid.codec() {
                RAW => {
                    let bytes = block.bytes().clone();
                    check(bytes.len() as u64)?;
                    if !bytes.is_empty() {
                        return Ok(Some(bytes));
                    }
                }
                DAG_PB => {
                    let data = self.expand(&cid, block.bytes(), check)?;
                    if !data.is_empty() {
                        return Ok(Some(data));
                    }
                }
                codec => return Err(UnixFsError::UnsupportedCodec { cid, codec }),
            }
        }
        Ok(None)
    }

    /// Decodes a DAG-PB file node, queues its children and returns its inline data.
    fn expand(
        &mut self,
        cid: &Cid,
        bytes: &Bytes,
        check: impl Fn(u64) -> Result<(), UnixFsError>,
    ) -> Result<Bytes, UnixFsError> {
        let cid = *cid;
        let node = decode_pb(bytes).map_err(|reason| UnixFsError::InvalidDagPb { cid, reason })?;
        let invalid = |reason: String| UnixFsError::InvalidUnixFs { cid, reason };
        let pb_data = node
            .data
            .ok_or_else(|| invalid("no Data section".to_owned()))?;
        let fs = decode_unixfs(&pb_data).map_err(invalid)?;
        let kind = match fs.kind {
            TYPE_FILE | TYPE_RAW => None,
            TYPE_DIRECTORY => Some("directory"),
            TYPE_METADATA => Some("metadata node"),
            TYPE_SYMLINK => Some("symlink"),
            TYPE_HAMT_SHARD => Some("HAMT shard"),
            _ => Some("node of unknown type"),
        };
        if let Some(kind) = kind {
            return Err(UnixFsError::NotAFile { cid, kind });
        }
        let data = fs.data.map(|r| pb_data.slice(r)).unwrap_or_else(Bytes::new);
        if fs.blocksizes.len() != node.links.len() {
            return Err(invalid(format!(
                "{} links but {} blocksizes",
                node.links.len(),
                fs.blocksizes.len()
            )));
        }
        if fs.kind == TYPE_RAW && !node.links.is_empty() {
            return Err(invalid("a Raw node with links".to_owned()));
        }
        let total = fs
            .blocksizes
            .iter()
            .try_fold(data.len() as u64, |acc, &s| acc.checked_add(s))
            .ok_or_else(|| invalid("blocksizes overflow".to_owned()))?;
        if let Some(filesize) = fs.filesize
            && filesize != total
        {
            return Err(invalid(format!(
                "filesize {filesize} but data and blocksizes add up to {total}"
            )));
        }
        check(total)?;
        for (link, size) in node.links.iter().zip(&fs.blocksizes).rev() {
            self.stack.push((link.hash, Some(*size)));
        }
        Ok(data)
    }
}

impl<G: BlockGetter + ?Sized> Iterator for FileReader<'_, G> {
    type Item = Result<Bytes, UnixFsError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.step() {
            Ok(Some(bytes)) => Some(Ok(bytes)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                self.stack.clear();
                Some(Err(e))
            }
        }
    }
}

impl<G: BlockGetter + ?Sized> std::iter::FusedIterator for FileReader<'_, G> {}

/// Reads a whole file into memory (for small files and tests; stream large ones with
/// [`FileReader`]).
pub fn read_file<G: BlockGetter + ?Sized>(getter: &G, root: &Cid) -> Result<Vec<u8>, UnixFsError> {
    let mut out = Vec::new();
    for piece in FileReader::new(getter, root) {
        out.extend_from_slice(&piece?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use proptest::prelude::*;

    fn store(blocks: &[Block]) -> HashMap<Cid, Block> {
        blocks.iter().map(|b| (*b.cid(), b.clone())).collect()
    }

    /// Inner-node links per level, read back from the blocks: the tree's shape.
    fn shape(blocks: &HashMap<Cid, Block>, root: &Cid) -> Vec<Vec<usize>> {
        let mut levels = Vec::new();
        let mut row = vec![*root];
        while row.iter().any(|c| c.codec() == DAG_PB) {
            let mut next = Vec::new();
            let mut counts = Vec::new();
            for cid in &row {
                let node = decode_pb(blocks[cid].bytes()).unwrap();
                counts.push(node.links.len());
                next.extend(node.links.iter().map(|l| l.hash));
            }
            levels.push(counts);
            row = next;
        }
        levels
    }

    fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn empty_file_is_the_empty_raw_block() {
        let (root, blocks) = encode_file(b"");
        assert_eq!(
            root.to_string(),
            "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
        );
        assert_eq!(blocks.len(), 1);
        assert_eq!(read_file(&store(&blocks), &root).unwrap(), b"");
    }

    #[test]
    fn one_chunk_is_one_raw_block_with_the_blob_cid() {
        for len in [1, 1000, CHUNK_SIZE] {
            let bytes = content(len);
            let (root, blocks) = encode_file(&bytes);
            assert_eq!(root, crate::ipld::cid_sha256(RAW, &bytes));
            assert_eq!(blocks.len(), 1);
        }
    }

    #[test]
    fn hand_checked_inner_node_bytes() {
        // "hello world" in 4-byte chunks, width 4: three raw leaves under one dag-pb node.
        let (root, blocks) = encode_file_with(b"hello world", 4, 4).unwrap();
        let node = blocks.last().unwrap();
        assert_eq!(node.cid(), &root);
        let mut expected = Vec::new();
        for chunk in [&b"hell"[..], b"o wo", b"rld"] {
            let cid = crate::ipld::cid_sha256(RAW, chunk).to_bytes();
            expected.extend_from_slice(&[0x12, 6 + 36, 0x0a, 36]);
            expected.extend_from_slice(&cid);
            expected.extend_from_slice(&[0x12, 0x00, 0x18, chunk.len() as u8]);
        }
        expected.extend_from_slice(&[0x0a, 10, 0x08, 0x02, 0x18, 11, 0x20, 4, 0x20, 4, 0x20, 3]);
        assert_eq!(node.bytes().as_ref(), expected.as_slice());
    }

    #[test]
    fn balanced_layout_matches_the_js_illustration() {
        // @ipld/unixfs's balanced.js: width 3, 10 leaves → root(r4(r1, r2, r3), r6(r5(leaf10))).
        let (root, blocks) = encode_file_with(&content(10), 1, 3).unwrap();
        let blocks = store(&blocks);
        assert_eq!(
            shape(&blocks, &root),
            vec![vec![2], vec![3, 1], vec![3, 3, 3, 1]]
        );
        // Exactly width^2 leaves: a full two-level tree, no extra root.
        let (root, blocks) = encode_file_with(&content(9), 1, 3).unwrap();
        assert_eq!(shape(&store(&blocks), &root), vec![vec![3], vec![3, 3, 3]]);
        // width + 1 leaves.
        let (root, blocks) = encode_file_with(&content(4), 1, 3).unwrap();
        assert_eq!(shape(&store(&blocks), &root), vec![vec![2], vec![3, 1]]);
    }

    #[test]
    fn tsize_and_blocksizes_add_up() {
        let bytes = content(100);
        let mut enc = FileEncoder::with_params(7, 3).unwrap();
        let mut blocks = enc.push(&bytes);
        let (link, rest) = enc.finish_link();
        blocks.extend(rest);
        assert_eq!(link.content_size, 100);
        let total: u64 = blocks.iter().map(|b| b.bytes().len() as u64).sum();
        assert_eq!(link.dag_size, total);
    }

    #[test]
    fn params_are_checked() {
        assert!(matches!(
            FileEncoder::with_params(0, 3),
            Err(UnixFsError::InvalidParams { .. })
        ));
        assert!(matches!(
            FileEncoder::with_params(4, 1),
            Err(UnixFsError::InvalidParams { .. })
        ));
    }

    #[test]
    fn reader_reports_missing_blocks_and_bad_sizes() {
        let (root, blocks) = encode_file_with(&content(20), 4, 2).unwrap();
        let mut map = store(&blocks);
        let leaf = *blocks[0].cid();
        map.remove(&leaf);
        let err = read_file(&map, &root).unwrap_err();
        assert!(matches!(err, UnixFsError::MissingBlock { cid } if cid == leaf));

        // A parent that records the wrong size for a child.
        let a = Block::from_codec(RAW, b"abcd".to_vec());
        let bad = encode_branch(&[FileLink {
            cid: *a.cid(),
            content_size: 5,
            dag_size: 4,
        }])
        .0;
        let map = store(&[a, bad.clone()]);
        let err = read_file(&map, bad.cid()).unwrap_err();
        assert!(matches!(
            err,
            UnixFsError::SizeMismatch {
                expected: 5,
                actual: 4,
                ..
            }
        ));
    }

    #[test]
    fn reader_rejects_directories_and_other_codecs() {
        // A UnixFS directory: PBNode { Data: {Type: Directory} }.
        let dir = Block::from_codec(DAG_PB, vec![0x0a, 0x02, 0x08, 0x01]);
        let map = store(std::slice::from_ref(&dir));
        assert!(matches!(
            read_file(&map, dir.cid()),
            Err(UnixFsError::NotAFile {
                kind: "directory",
                ..
            })
        ));
        let cbor = Block::encode(&crate::Ipld::Integer(1)).unwrap();
        let map = store(std::slice::from_ref(&cbor));
        assert!(matches!(
            read_file(&map, cbor.cid()),
            Err(UnixFsError::UnsupportedCodec { codec: 0x71, .. })
        ));
        // Garbage dag-pb.
        let junk = Block::from_codec(DAG_PB, vec![0x08, 0x01]);
        let map = store(std::slice::from_ref(&junk));
        assert!(matches!(
            read_file(&map, junk.cid()),
            Err(UnixFsError::InvalidDagPb { .. })
        ));
    }

    #[test]
    fn reader_reads_dag_pb_leaves_with_inline_data() {
        // A kubo-style file: a dag-pb leaf {Type: File, Data: "hi", filesize: 2} under a node
        // that also carries inline data "> " (a "complex" file).
        let leaf = Block::from_codec(
            DAG_PB,
            vec![0x0a, 0x08, 0x08, 0x02, 0x12, 0x02, b'h', b'i', 0x18, 0x02],
        );
        let mut link = Vec::new();
        let hash = leaf.cid().to_bytes();
        link.extend_from_slice(&[0x0a, hash.len() as u8]);
        link.extend_from_slice(&hash);
        link.extend_from_slice(&[0x18, 10]);
        let mut node = vec![0x12, link.len() as u8];
        node.extend_from_slice(&link);
        node.extend_from_slice(&[
            0x0a, 0x0a, 0x08, 0x02, 0x12, 0x02, b'>', b' ', 0x18, 0x04, 0x20, 0x02,
        ]);
        let root = Block::from_codec(DAG_PB, node);
        let map = store(&[leaf, root.clone()]);
        assert_eq!(read_file(&map, root.cid()).unwrap(), b"> hi");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn encode_then_read_gives_the_input(
            len in 0usize..3000,
            chunk in 1usize..64,
            width in 2usize..6,
            splits in proptest::collection::vec(1usize..200, 1..20),
            seed in any::<u8>(),
        ) {
            let bytes: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
            // Push in arbitrary pieces; the result must not depend on them.
            let mut enc = FileEncoder::with_params(chunk, width).unwrap();
            let mut blocks = Vec::new();
            let mut rest = &bytes[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = splits[i % splits.len()].min(rest.len());
                blocks.extend(enc.push(&rest[..n]));
                rest = &rest[n..];
                i += 1;
            }
            let (root, tail, size) = enc.finish();
            blocks.extend(tail);
            prop_assert_eq!(size, len as u64);
            let (root2, blocks2) = encode_file_with(&bytes, chunk, width).unwrap();
            prop_assert_eq!(root, root2);
            prop_assert_eq!(blocks.len(), blocks2.len());
            prop_assert_eq!(blocks.last().map(|b| *b.cid()), Some(root));
            let map = store(&blocks);
            prop_assert_eq!(read_file(&map, &root).unwrap(), bytes);
            // Every inner node has at most `width` links and all leaves are at the same depth.
            let shape = shape(&map, &root);
            for row in &shape {
                prop_assert!(row.iter().all(|&n| (1..=width).contains(&n)));
            }
            let leaves = if len == 0 { 1 } else { len.div_ceil(chunk) };
            let bottom: usize = shape.last().map_or(1, |r| r.iter().sum());
            prop_assert_eq!(bottom, leaves);
        }
    }
}
