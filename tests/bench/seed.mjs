// Seeds one account on a local PDS (tests/pds/server.cjs) for scripts/bench-backup.
//
//   node tests/bench/seed.mjs --pds http://127.0.0.1:PORT --handle bench10k.test \
//     --records 10000 --blobs 200 --blob-bytes 100000000
//
// Creates the account (password-less set-up with a legacy session token), uploads the blobs
// (a few in flight) and writes the records with com.atproto.repo.applyWrites in batches of
// 200 (the PDS's maximum per call), the PDS choosing TID record keys as for real posts.
// Only Node built-ins; no packages.
//
// The account, for --records R and --blobs B (B ≥ 2):
//   - B - L image posts (app.bsky.feed.post with one app.bsky.embed.images image): real PNGs
//     (random RGB pixels, stored deflate, so incompressible), 100 KB up to at most 950 KB
//     (app.bsky embeds take images ≤ 1,000,000 bytes);
//   - L = round(B / 10) large files (com.example.file records, application/octet-stream),
//     1.1 MB to 1.5 MB, so above 1 MiB (more than one UnixFS chunk);
//   - image sizes spread evenly so that all the blobs add up to about --blob-bytes;
//   - the other R - B records: 40 % text posts, 40 % likes, 20 % follows.
// Random bytes come from a seeded generator (AES-CTR), so a run's data is the same every time except
// for the keys and timestamps the PDS assigns.
//
// Prints one JSON line: {did, handle, password, records, blobs, blobBytes, largest, over1MiB,
// seconds: {account, blobs, records, total}}; progress goes to stderr.
import { createCipheriv } from 'node:crypto'
import * as zlib from 'node:zlib'

const AES_KEY = Buffer.from('bluesky-backups!', 'ascii')

function arg(name, dflt) {
  const i = process.argv.indexOf(`--${name}`)
  if (i < 0) {
    if (dflt === undefined) throw new Error(`--${name} is required`)
    return dflt
  }
  return process.argv[i + 1]
}

const PDS = arg('pds').replace(/\/$/, '')
const HANDLE = arg('handle')
const RECORDS = parseInt(arg('records', '10000'), 10)
const BLOBS = parseInt(arg('blobs', '200'), 10)
const BLOB_BYTES = parseInt(arg('blob-bytes', '100000000'), 10)
const UPLOADS_IN_FLIGHT = parseInt(arg('upload-concurrency', '4'), 10)
const BATCH = 200 // com.atproto.repo.applyWrites refuses more ("Too many writes. Max: 200")
const CREATED_AT = '2026-01-01T00:00:00.000Z'

const t0 = performance.now()
const log = (msg) => process.stderr.write(`seed ${HANDLE}: ${msg} (${((performance.now() - t0) / 1000).toFixed(1)}s)\n`)

// xorshift128+ seeded from a fixed value: fast, deterministic random bytes.
let s0 = 0x9e3779b97f4a7c15n
let s1 = 0xbf58476d1ce4e5b9n
const MASK = (1n << 64n) - 1n
function nextU64() {
  let x = s0
  const y = s1
  s0 = y
  x = (x ^ (x << 23n)) & MASK
  s1 = x ^ y ^ (x >> 17n) ^ (y >> 26n)
  return (s1 + y) & MASK
}
// Incompressible, deterministic bytes: an AES-128-CTR keystream under a fixed key, the counter
// block taken from the generator so every call differs.
function randomBytes(n) {
  const iv = Buffer.alloc(16)
  iv.writeBigUInt64LE(nextU64(), 0)
  iv.writeBigUInt64LE(nextU64(), 8)
  return createCipheriv('aes-128-ctr', AES_KEY, iv).update(Buffer.alloc(n))
}

const CRC_TABLE = (() => {
  const t = new Uint32Array(256)
  for (let n = 0; n < 256; n++) {
    let c = n
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
    t[n] = c >>> 0
  }
  return t
})()
function crc32(buf) {
  if (typeof zlib.crc32 === 'function') return zlib.crc32(buf) >>> 0
  let c = 0xffffffff
  for (let i = 0; i < buf.length; i++) c = CRC_TABLE[(c ^ buf[i]) & 0xff] ^ (c >>> 8)
  return (c ^ 0xffffffff) >>> 0
}
function pngChunk(type, data) {
  const len = Buffer.alloc(4)
  len.writeUInt32BE(data.length)
  const td = Buffer.concat([Buffer.from(type, 'ascii'), data])
  const crc = Buffer.alloc(4)
  crc.writeUInt32BE(crc32(td))
  return Buffer.concat([len, td, crc])
}
// A valid RGB PNG of about `target` bytes: width 512, random pixels, deflate level 0.
function png(target) {
  const width = 512
  const row = 1 + width * 3
  const height = Math.max(1, Math.round((target - 100) / row))
  const raw = randomBytes(row * height)
  for (let y = 0; y < height; y++) raw[y * row] = 0 // filter type None
  const ihdr = Buffer.alloc(13)
  ihdr.writeUInt32BE(width, 0)
  ihdr.writeUInt32BE(height, 4)
  ihdr[8] = 8 // bit depth
  ihdr[9] = 2 // truecolour
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    pngChunk('IHDR', ihdr),
    pngChunk('IDAT', zlib.deflateSync(raw, { level: 0 })),
    pngChunk('IEND', Buffer.alloc(0)),
  ])
}
// Octet-stream file: an ASCII prefix (so the PDS's MIME sniffing never mistakes random
// bytes for a known format) and random bytes.
function file(size, i) {
  const prefix = Buffer.from(`bench-backup file ${i}\n`, 'ascii')
  return Buffer.concat([prefix, randomBytes(Math.max(0, size - prefix.length))])
}

async function xrpc(nsid, { body, token, contentType, raw } = {}) {
  for (let attempt = 1; ; attempt++) {
    const headers = {}
    if (token) headers.authorization = `Bearer ${token}`
    headers['content-type'] = contentType || 'application/json'
    const res = await fetch(`${PDS}/xrpc/${nsid}`, {
      method: 'POST',
      headers,
      body: raw ? body : JSON.stringify(body),
    })
    const text = await res.text()
    if (res.ok) return text ? JSON.parse(text) : null
    // The PDS is local and its rate limits are off; retry only transient server errors.
    if (res.status >= 500 && attempt < 3) {
      log(`${nsid}: HTTP ${res.status} ${text.slice(0, 200)}; retrying`)
      await new Promise((r) => setTimeout(r, 500 * attempt))
      continue
    }
    throw new Error(`${nsid}: HTTP ${res.status}: ${text.slice(0, 500)}`)
  }
}

// Blob plan.
const large = BLOBS >= 2 ? Math.max(1, Math.round(BLOBS / 10)) : 0
const images = BLOBS - large
const plan = []
let largeTotal = 0
for (let j = 0; j < large; j++) {
  const size = 1_100_000 + Math.floor((j * 400_000) / Math.max(1, large - 1))
  plan.push({ kind: 'file', size })
  largeTotal += size
}
if (images > 0) {
  const lo = 100_000
  const mean = Math.max(lo, (BLOB_BYTES - largeTotal) / images)
  const hi = Math.min(950_000, 2 * mean - lo)
  for (let j = 0; j < images; j++) {
    plan.push({ kind: 'image', size: Math.round(images === 1 ? mean : lo + ((hi - lo) * j) / (images - 1)) })
  }
}
if (RECORDS < plan.length) throw new Error(`--records (${RECORDS}) must be at least --blobs (${plan.length})`)
// Interleave kinds so large and small uploads mix.
plan.sort((a, b) => ((a.size * 7919) % 1000) - ((b.size * 7919) % 1000))

// 1. The account.
const name = HANDLE.split('.')[0]
const password = `${name}-bench-password`
const account = await xrpc('com.atproto.server.createAccount', {
  body: { email: `${name}@example.com`, handle: HANDLE, password },
})
const did = account.did
const token = account.accessJwt
const tAccount = performance.now()
log(`account ${did}`)

// 2. Blobs, a few in flight.
const blobRefs = new Array(plan.length)
let blobBytes = 0
let largest = 0
let over1MiB = 0
let next = 0
async function uploader() {
  for (;;) {
    const i = next++
    if (i >= plan.length) return
    const p = plan[i]
    const bytes = p.kind === 'image' ? png(p.size) : file(p.size, i)
    if (p.kind === 'image' && bytes.length > 1_000_000) throw new Error(`image ${i} is ${bytes.length} bytes, over the embed limit`)
    const out = await xrpc('com.atproto.repo.uploadBlob', {
      body: bytes,
      raw: true,
      token,
      contentType: p.kind === 'image' ? 'image/png' : 'application/octet-stream',
    })
    blobRefs[i] = { kind: p.kind, ref: out.blob }
    blobBytes += bytes.length
    largest = Math.max(largest, bytes.length)
    if (bytes.length > 1024 * 1024) over1MiB++
    if ((i + 1) % 50 === 0) log(`uploaded ${i + 1}/${plan.length} blobs`)
  }
}
await Promise.all(Array.from({ length: Math.min(UPLOADS_IN_FLIGHT, plan.length || 1) }, uploader))
const tBlobs = performance.now()
if (plan.length) log(`${plan.length} blobs, ${(blobBytes / 1e6).toFixed(1)} MB`)

// 3. Records, in applyWrites batches of 200. Blob records are spread through the repo.
function* writes() {
  const every = blobRefs.length ? Math.max(1, Math.floor(RECORDS / blobRefs.length)) : Infinity
  let b = 0
  let k = 0
  for (let i = 0; i < RECORDS; i++) {
    if (b < blobRefs.length && (i % every === 0 || RECORDS - i <= blobRefs.length - b)) {
      const { kind, ref } = blobRefs[b++]
      if (kind === 'image') {
        yield {
          collection: 'app.bsky.feed.post',
          value: {
            $type: 'app.bsky.feed.post',
            text: `bench image post ${b}`,
            createdAt: CREATED_AT,
            embed: { $type: 'app.bsky.embed.images', images: [{ alt: `image ${b}`, image: ref }] },
          },
        }
      } else {
        yield {
          collection: 'com.example.file',
          value: { $type: 'com.example.file', name: `file-${b}.bin`, file: ref, createdAt: CREATED_AT },
        }
      }
      continue
    }
    const n = k++
    const r = n % 5
    if (r < 2) {
      yield {
        collection: 'app.bsky.feed.post',
        value: {
          $type: 'app.bsky.feed.post',
          text: `bench post ${n}: the quick brown fox jumps over the lazy dog, again and again, ${nextU64().toString(36)}`,
          langs: ['en'],
          createdAt: CREATED_AT,
        },
      }
    } else if (r < 4) {
      yield {
        collection: 'app.bsky.feed.like',
        value: {
          $type: 'app.bsky.feed.like',
          subject: {
            uri: `at://did:plc:bench${(n % 997).toString().padStart(20, '0')}/app.bsky.feed.post/3k${nextU64().toString(36).slice(0, 11)}`,
            cid: 'bafyreidfayvfuwqa7qlnopdjiqrxzs6blmoeu4rujcjtnci5beludirz2a',
          },
          createdAt: CREATED_AT,
        },
      }
    } else {
      yield {
        collection: 'app.bsky.graph.follow',
        value: {
          $type: 'app.bsky.graph.follow',
          subject: `did:plc:${nextU64().toString(32).padStart(13, 'a').slice(0, 12)}${nextU64().toString(32).padStart(12, 'b').slice(0, 12)}`,
          createdAt: CREATED_AT,
        },
      }
    }
  }
}
let written = 0
let batch = []
const flush = async () => {
  if (!batch.length) return
  await xrpc('com.atproto.repo.applyWrites', {
    token,
    body: {
      repo: did,
      writes: batch.map((w) => ({ $type: 'com.atproto.repo.applyWrites#create', collection: w.collection, value: w.value })),
    },
  })
  written += batch.length
  batch = []
  if (written % 10_000 === 0 || written === RECORDS) log(`${written}/${RECORDS} records`)
}
for (const w of writes()) {
  batch.push(w)
  if (batch.length === BATCH) await flush()
}
await flush()
const tRecords = performance.now()

console.log(
  JSON.stringify({
    did,
    handle: HANDLE,
    password,
    records: written,
    blobs: blobRefs.length,
    blobBytes,
    largest,
    over1MiB,
    seconds: {
      account: +((tAccount - t0) / 1000).toFixed(2),
      blobs: +((tBlobs - tAccount) / 1000).toFixed(2),
      records: +((tRecords - tBlobs) / 1000).toFixed(2),
      total: +((tRecords - t0) / 1000).toFixed(2),
    },
  }),
)
