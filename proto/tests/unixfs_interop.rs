//! UnixFS file roots against `@ipld/unixfs` 3.0.0 configured as Storacha's upload-client does.
//!
//! Runs `node tests/js/unixfs-cids.mjs`, which encodes deterministic pseudo-random files of many
//! sizes (0 B to 64 MiB with Storacha's 1 MiB chunks and width 1024, plus smaller chunk sizes and
//! widths that reach trees of several levels) and prints each root CID, block count and DAG
//! size. We regenerate the same bytes from each case's seed, encode them with
//! [`proto::unixfs::FileEncoder`] and require the same root, block count and DAG size, then read
//! the file back from our blocks.
//!
//! Needs Node.js and the pinned packages in `tests/js/node_modules`; `scripts/test` installs
//! both. Without them this test fails (it does not skip).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use proto::unixfs::{CHUNK_SIZE, FileEncoder, FileReader, WIDTH};
use proto::{Block, Cid};
use serde::Deserialize;

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct Case {
    size: usize,
    chunk: usize,
    width: usize,
    seed: u32,
    root: String,
    block_count: usize,
    dag_size: u64,
}

/// The script's content generator: xorshift32 words, little-endian, truncated to `size`.
fn content(size: usize, seed: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 3);
    let mut x = seed;
    while out.len() < size {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(size);
    out
}

fn js_cases() -> Vec<Case> {
    let js = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/js");
    let script = js.join("unixfs-cids.mjs");
    assert!(
        js.join("node_modules/@ipld/unixfs/package.json").is_file(),
        "tests/js/node_modules/@ipld/unixfs is missing: run scripts/test (or `cd tests/js && npm ci`)"
    );
    let output = Command::new("node")
        .arg(&script)
        .current_dir(&js)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run node ({e}): Node.js is required, run scripts/test to install it")
        });
    assert!(
        output.status.success(),
        "node {} failed ({}):\n{}",
        script.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the script prints a JSON array of cases")
}

#[test]
fn roots_match_ipld_unixfs() {
    let cases = js_cases();

    // The script must cover what we rely on: Storacha's settings from 0 B to 64 MiB around the
    // one-chunk boundary, and trees with more than one level of inner nodes.
    let storacha: Vec<usize> = cases
        .iter()
        .filter(|c| c.chunk == CHUNK_SIZE && c.width == WIDTH)
        .map(|c| c.size)
        .collect();
    for size in [
        0,
        1,
        CHUNK_SIZE - 1,
        CHUNK_SIZE,
        CHUNK_SIZE + 1,
        64 * CHUNK_SIZE,
    ] {
        assert!(
            storacha.contains(&size),
            "no case of {size} bytes with Storacha's settings"
        );
    }
    assert!(
        cases
            .iter()
            .any(|c| c.width == WIDTH && c.size.div_ceil(c.chunk) > WIDTH),
        "no case with more than 1024 leaves at width 1024"
    );

    let mut failures = Vec::new();
    for case in &cases {
        let bytes = content(case.size, case.seed);
        let mut encoder = FileEncoder::with_params(case.chunk, case.width).unwrap();
        // Push in uneven pieces, as a download stream would deliver them.
        let mut blocks: Vec<Block> = Vec::new();
        for piece in bytes.chunks(65_537) {
            blocks.extend(encoder.push(piece));
        }
        let (link, rest) = encoder.finish_link();
        blocks.extend(rest);

        let got = (link.cid.to_string(), blocks.len(), link.dag_size);
        let want = (case.root.clone(), case.block_count, case.dag_size);
        if got != want {
            failures.push(format!(
                "size {} chunk {} width {}: ours (root, blocks, dagSize) = {got:?}, JS = {want:?}",
                case.size, case.chunk, case.width
            ));
            continue;
        }
        assert_eq!(link.content_size, case.size as u64);

        // And the reader gives the content back.
        let store: HashMap<Cid, Block> = blocks.into_iter().map(|b| (*b.cid(), b)).collect();
        let mut offset = 0;
        for piece in FileReader::new(&store, &link.cid) {
            let piece = piece.unwrap();
            assert_eq!(&bytes[offset..offset + piece.len()], &piece[..]);
            offset += piece.len();
        }
        assert_eq!(offset, bytes.len(), "size {}: read back short", case.size);
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from @ipld/unixfs:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
