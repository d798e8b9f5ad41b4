// UnixFS file roots from `@ipld/unixfs` 3.0.0 configured as Storacha's upload-client does, for
// the Rust interop test proto/tests/unixfs_interop.rs (which runs this script; nothing is
// written to disk).
//
//   cd tests/js && npm ci && node unixfs-cids.mjs
//
// Storacha's upload-client (`src/unixfs.js`) encodes files with
//
//   UnixFS.configure({ fileChunkEncoder: raw, smallFileEncoder: raw,
//                      chunker: withMaxChunkSize(1024 * 1024), fileLayout: withWidth(1024) })
//
// (sha2-256, CIDv1 by default). The cases below use exactly that, and, to reach layouts with more
// than one level of inner nodes without encoding a gigabyte, the same settings with smaller
// chunk sizes and widths.
//
// Content is deterministic: xorshift32 (x ^= x << 13; x ^= x >>> 17; x ^= x << 5, on unsigned
// 32-bit words) from the case's seed, each step's word written little-endian, the last word
// truncated to the size. The Rust test regenerates the same bytes from `seed`.
//
// Prints one JSON array: [{size, chunk, width, seed, root, blockCount, dagSize}], where
// `blockCount` counts every block the writer emitted and `dagSize` is the root link's
// `dagByteLength` (the Tsize a parent would record).

import { readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

import * as UnixFS from '@ipld/unixfs'
import { withMaxChunkSize } from '@ipld/unixfs/file/chunker/fixed'
import { withWidth } from '@ipld/unixfs/file/layout/balanced'
import * as raw from 'multiformats/codecs/raw'

const here = dirname(fileURLToPath(import.meta.url))
const version = JSON.parse(
  readFileSync(join(here, 'node_modules/@ipld/unixfs/package.json'), 'utf8')
).version
if (version !== '3.0.0') throw new Error(`expected @ipld/unixfs 3.0.0, found ${version}`)

const KiB = 1024
const MiB = 1024 * 1024

/** @type {{size: number, chunk: number, width: number}[]} */
const cases = []
const add = (size, chunk, width) => cases.push({ size, chunk, width })

// Storacha's settings.
for (const size of [0, 1, MiB - 1, MiB, MiB + 1, 2 * MiB, 5 * MiB + 123, 64 * MiB]) {
  add(size, MiB, 1024)
}
// Width 1024 with 1 KiB chunks: exactly 1024 leaves (one inner node), then more than 1024
// leaves, which need a second level of inner nodes.
for (const size of [1024 * KiB, 1024 * KiB + 1, 1025 * KiB, 2048 * KiB, 2048 * KiB + 1000]) {
  add(size, KiB, 1024)
}
// Width 3, 16-byte chunks: every leaf count up to 30 (full and partial last chunks), and
// the boundaries around 3^3, 3^4 and 3^5 leaves.
for (let n = 1; n <= 30; n++) add(16 * n - (n % 3 === 0 ? 0 : 5), 16, 3)
for (const n of [80, 81, 82, 242, 243, 244]) add(16 * n, 16, 3)
// Width 2, 1-byte chunks: deep, thin trees.
for (let n = 0; n <= 17; n++) add(n, 1, 2)
// Kubo's and js-unixfs's default width, 256-byte chunks.
add(256 * 174, 256, 174)
add(256 * 175 + 3, 256, 174)
add(256 * 174 * 174 + 256 * 3, 256, 174)

/** The case's seed: distinct per case, never zero. */
const seedOf = index => (Math.imul(index + 1, 0x9e3779b1) >>> 0) || 1

/**
 * @param {number} size
 * @param {number} seed
 */
const content = (size, seed) => {
  const bytes = new Uint8Array(size)
  let x = seed >>> 0
  for (let i = 0; i < size; i += 4) {
    x ^= x << 13
    x >>>= 0
    x ^= x >>> 17
    x ^= x << 5
    x >>>= 0
    bytes[i] = x & 0xff
    if (i + 1 < size) bytes[i + 1] = (x >>> 8) & 0xff
    if (i + 2 < size) bytes[i + 2] = (x >>> 16) & 0xff
    if (i + 3 < size) bytes[i + 3] = (x >>> 24) & 0xff
  }
  return bytes
}

/**
 * @param {Uint8Array} bytes
 * @param {number} chunk
 * @param {number} width
 */
const encode = async (bytes, chunk, width) => {
  const settings = UnixFS.configure({
    fileChunkEncoder: raw,
    smallFileEncoder: raw,
    chunker: withMaxChunkSize(chunk),
    fileLayout: withWidth(width),
  })
  const { readable, writable } = new TransformStream({}, UnixFS.withCapacity(32 * MiB))
  const writer = UnixFS.createWriter({ writable, settings })
  let blockCount = 0
  const drained = (async () => {
    const reader = readable.getReader()
    for (;;) {
      const { done } = await reader.read()
      if (done) return
      blockCount++
    }
  })()
  const file = UnixFS.createFileWriter(writer)
  // Write in pieces that do not line up with chunks, like a stream would.
  const piece = chunk < 64 ? 7 : 65537
  for (let offset = 0; offset < bytes.length; offset += piece) {
    await file.write(bytes.subarray(offset, offset + piece))
  }
  const link = await file.close()
  await writer.close()
  await drained
  if (link.contentByteLength !== bytes.length) {
    throw new Error(`content length ${link.contentByteLength} != ${bytes.length}`)
  }
  return { root: link.cid.toString(), blockCount, dagSize: link.dagByteLength }
}

const results = []
for (const [index, { size, chunk, width }] of cases.entries()) {
  const seed = seedOf(index)
  const { root, blockCount, dagSize } = await encode(content(size, seed), chunk, width)
  results.push({ size, chunk, width, seed, root, blockCount, dagSize })
}
process.stdout.write(JSON.stringify(results, null, 1) + '\n')
