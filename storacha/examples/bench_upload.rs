//! Upload benchmark (run by `scripts/bench-storacha`; results in BENCHMARKS.md): the same blocks
//! uploaded to Storacha's real upload service, running locally, by our client and by the JS
//! `@storacha/client`, in one run.
//!
//! The blocks (1 MiB raw blocks, like UnixFS leaves, plus 4 KiB ones, like repo records, and a
//! DAG-CBOR root linking them all) are written once to a CAR file. Our client streams that CAR
//! (every block hash-checked as it is read), packs shards as blocks arrive (each block copied
//! into the shard's CAR at once, so memory holds about one shard), stores each shard with the
//! blob flow, then the index and the upload. The JS client `uploadCAR`s the same file with the
//! same shard size.
//!
//! `cargo run --release -p storacha --example bench_upload -- [MiB] [shard MiB]`

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use proto::car::{CarLimits, CarReader, CarWriter};
use proto::ipld::RAW;
use proto::principal::Ed25519Signer;
use proto::{Block, Ipld};
use storacha::shard::ShardBuilder;
use storacha::{Agent, Client, Config};
use tests::storacha::{LocalStoracha, storacha_dir};

const LARGE: usize = 1024 * 1024;
const SMALL: usize = 4096;

/// Process CPU seconds (user + system) from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, s)| s).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat (11 and 12 after the state); 100 ticks/s.
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident set (VmHWM) in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// xorshift64*: fast deterministic filler, so generating data costs little.
fn fill(state: &mut u64, buf: &mut [u8]) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        let v = state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

/// Writes the benchmark's blocks to `path`; returns (bytes of block data, blocks).
fn write_car(path: &std::path::Path, mib: usize) -> Result<(u64, usize)> {
    let total = mib * 1024 * 1024;
    let small_bytes = total / 16;
    let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ std::process::id() as u64;
    let mut cids = Vec::new();
    let mut make = |size: usize| {
        let mut buf = vec![0u8; size];
        fill(&mut seed, &mut buf);
        Block::from_codec(RAW, buf)
    };
    // The root (first in the CAR) links every block: write the blocks to a side file first,
    // then the header and the root, then copy the blocks after them.
    let body_path = path.with_extension("body");
    let mut body = BufWriter::new(File::create(&body_path)?);
    let mut written = 0usize;
    while written < total - small_bytes {
        let b = make(LARGE);
        cids.push(*b.cid());
        write_section(&mut body, &b)?;
        written += LARGE;
    }
    while written < total {
        let b = make(SMALL);
        cids.push(*b.cid());
        write_section(&mut body, &b)?;
        written += SMALL;
    }
    body.flush()?;
    drop(body);
    let root = Block::encode(&Ipld::List(cids.iter().map(|c| Ipld::Link(*c)).collect()))?;
    let mut out = CarWriter::new(BufWriter::new(File::create(path)?), &[*root.cid()])?;
    out.write_block(&root)?;
    let mut w = out.finish()?;
    std::io::copy(&mut File::open(&body_path)?, &mut w)?;
    w.flush()?;
    std::fs::remove_file(&body_path)?;
    Ok((written as u64 + root.bytes().len() as u64, cids.len() + 1))
}

fn write_section(w: &mut impl Write, b: &Block) -> Result<()> {
    let cid = b.cid().to_bytes();
    let mut len = unsigned_varint_encode((cid.len() + b.bytes().len()) as u64);
    len.extend_from_slice(&cid);
    w.write_all(&len)?;
    w.write_all(b.bytes())?;
    Ok(())
}

fn unsigned_varint_encode(mut n: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

struct RustRun {
    wall: Duration,
    cpu: f64,
    read_verify: Duration,
    encode_hash: Duration,
    shards: usize,
    peak_rss_mib: f64,
}

async fn upload_rust(
    service: &LocalStoracha,
    car: &std::path::Path,
    shard_size: usize,
) -> Result<RustRun> {
    let space = Ed25519Signer::generate()?;
    service.provision(space.did()).await;
    let client = Client::new(
        Config::for_service(&service.url, &service.did),
        Agent::space_owner(space),
    )?;
    // Peak RSS from here on (writing "5" resets VmHWM).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let limits = CarLimits::default();
    let mut reader = CarReader::new(BufReader::with_capacity(1 << 20, File::open(car)?), &limits)?;
    let root = *reader.roots().first().context("the CAR has a root")?;
    let mut read_verify = Duration::ZERO;
    let mut encode_hash = Duration::ZERO;
    let mut summaries = Vec::new();
    let mut builder = ShardBuilder::new(None, shard_size);
    loop {
        let t = Instant::now();
        let next = reader.next_block()?;
        read_verify += t.elapsed();
        let full = match &next {
            Some(b) => !builder.is_empty() && builder.len_with(b) > shard_size as u64,
            None => !builder.is_empty(),
        };
        if full {
            let t = Instant::now();
            let shard = std::mem::replace(&mut builder, ShardBuilder::new(None, 0)).finish();
            encode_hash += t.elapsed();
            client.add_blob(shard.blob()).await?;
            summaries.push(shard.summary());
            // The next shard reuses this one's buffer (no fresh 127 MiB to fault in).
            let buffer = shard
                .into_buffer()
                .unwrap_or_else(|| Vec::with_capacity(shard_size));
            builder = ShardBuilder::with_buffer(None, buffer);
        }
        let Some(block) = next else { break };
        let t = Instant::now();
        builder.push(&block);
        encode_hash += t.elapsed();
    }
    client.register_upload(root, &summaries).await?;
    Ok(RustRun {
        wall: t0.elapsed(),
        cpu: cpu_seconds() - cpu0,
        read_verify,
        encode_hash,
        shards: summaries.len(),
        peak_rss_mib: peak_rss_mib(),
    })
}

fn upload_js(
    service: &LocalStoracha,
    car: &std::path::Path,
    shard_size: usize,
    piece: bool,
) -> Result<serde_json::Value> {
    let mut cmd = Command::new("node");
    cmd.arg("bench-upload.mjs")
        .arg(&service.url)
        .arg(car)
        .arg(shard_size.to_string())
        .current_dir(storacha_dir());
    if piece {
        cmd.arg("piece");
    }
    let out = cmd.output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "bench-upload.mjs failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("no JSON from node")?;
    Ok(serde_json::from_str(line)?)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mib: usize = args.first().map_or(Ok(256), |a| a.parse())?;
    let shard_mib: usize = args.get(1).map_or(Ok(127), |a| a.parse())?;
    let shard_size = if shard_mib == 127 {
        storacha::shard::DEFAULT_SHARD_SIZE
    } else {
        shard_mib * 1024 * 1024
    };
    let dir = tempfile::tempdir()?;
    let car = dir.path().join("bench.car");
    let (bytes, blocks) = write_car(&car, mib)?;
    let car_len = std::fs::metadata(&car)?.len();
    println!(
        "data: {blocks} blocks, {bytes} bytes of block data, CAR {car_len} bytes; shard size {shard_size}"
    );
    let service = LocalStoracha::start();

    let rust = upload_rust(&service, &car, shard_size).await?;
    let mib_s = |secs: f64| car_len as f64 / (1024.0 * 1024.0) / secs;
    println!(
        "rust: {:.2} s wall, {:.1} MiB/s, {} shards; CPU {:.2} s ({:.0}% of wall); hashing+encoding shards {:.2} s ({:.1}% of wall); reading+verifying the input CAR {:.2} s ({:.1}%); peak RSS {:.0} MiB",
        rust.wall.as_secs_f64(),
        mib_s(rust.wall.as_secs_f64()),
        rust.shards,
        rust.cpu,
        100.0 * rust.cpu / rust.wall.as_secs_f64(),
        rust.encode_hash.as_secs_f64(),
        100.0 * rust.encode_hash.as_secs_f64() / rust.wall.as_secs_f64(),
        rust.read_verify.as_secs_f64(),
        100.0 * rust.read_verify.as_secs_f64() / rust.wall.as_secs_f64(),
        rust.peak_rss_mib,
    );
    for piece in [false, true] {
        let js = upload_js(&service, &car, shard_size, piece)?;
        let secs = js["ms"].as_f64().unwrap_or(0.0) / 1000.0;
        let cpu = (js["userMs"].as_f64().unwrap_or(0.0) + js["systemMs"].as_f64().unwrap_or(0.0))
            / 1000.0;
        println!(
            "js{}: {:.2} s wall, {:.1} MiB/s; CPU {:.2} s ({:.0}% of wall); peak RSS {:.0} MiB; rust is {:.2}x faster",
            if piece {
                " (default, with filecoin piece hashing)"
            } else {
                " (pieceHasher off)"
            },
            secs,
            mib_s(secs),
            cpu,
            100.0 * cpu / secs,
            js["maxRssBytes"].as_f64().unwrap_or(0.0) / (1024.0 * 1024.0),
            secs / rust.wall.as_secs_f64(),
        );
    }
    Ok(())
}
