// Generates the pail and Merkle clock interop fixtures from the pinned JS implementations.
//
// Regenerate (from the repository root):
//
//   cd tests/js && npm ci && node gen-pail-clock-fixtures.mjs
//
// Writes tests/fixtures/pail/pail.json and tests/fixtures/clock/clock.json. The output is
// deterministic: all keys, values and event payloads are fixed, so running the script again gives
// byte-identical files. The Rust tests proto/tests/pail_interop.rs and
// proto/tests/clock_interop.rs read them; they do not need Node.
//
// Packages used (versions pinned in package.json / package-lock.json):
//   @web3-storage/pail 0.6.2 (shards, put/get/del/entries, clock advance, event encoding),
//   @web3-storage/pail 0.5.0 as nested under @web3-storage/clock 0.4.1 (legacy events whose
//     parents are not sorted), @ipld/dag-cbor, @ipld/dag-json, multiformats.
//
// Byte strings are standard base64 (with padding); CIDs are their default string form.

import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

import * as dagCbor from '@ipld/dag-cbor'
import * as dagJson from '@ipld/dag-json'
import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { sha256 } from 'multiformats/hashes/sha2'
import * as Block from 'multiformats/block'

import { put, get, del, entries } from '@web3-storage/pail'
import { ShardBlock } from '@web3-storage/pail/shard'
import { MemoryBlockstore } from '@web3-storage/pail/block'
import { advance, EventBlock } from '@web3-storage/pail/clock'

const here = dirname(fileURLToPath(import.meta.url))
const fixtures = join(here, '..', 'fixtures')
const packageVersion = dir => JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')).version

const pailVersion = packageVersion(join(here, 'node_modules/@web3-storage/pail'))
if (pailVersion !== '0.6.2') throw new Error(`expected @web3-storage/pail 0.6.2, found ${pailVersion}`)

// pail 0.5.0 (what @web3-storage/clock 0.4.1 depends on) encodes event parents in the order given.
const legacyClockPath = join(here, 'node_modules/@web3-storage/clock/node_modules/@web3-storage/pail')
const legacyVersion = packageVersion(legacyClockPath)
if (legacyVersion !== '0.5.0') throw new Error(`expected nested @web3-storage/pail 0.5.0, found ${legacyVersion}`)
const LegacyClock = await import(join(legacyClockPath, 'src/clock/index.js'))

const utf8 = s => new TextEncoder().encode(s)
const b64 = bytes => Buffer.from(bytes).toString('base64')
const str = cid => cid.toString()

/** A deterministic raw CID standing in for a stored value. */
const valueCID = async n => CID.create(1, raw.code, await sha256.digest(utf8(`value-${n}`)))

const writeJSON = (dir, name, value) => {
  mkdirSync(join(fixtures, dir), { recursive: true })
  const path = join(fixtures, dir, name)
  writeFileSync(path, JSON.stringify(value, null, 2) + '\n')
  console.log(`wrote ${path}`)
}

/** Collects an async iterator of pail entries as [key, cidString] pairs. */
const collect = async iter => {
  const out = []
  for await (const [k, v] of iter) out.push([k, str(v)])
  return out
}

// ---------------------------------------------------------------------------------------------
// pail
// ---------------------------------------------------------------------------------------------

const genPail = async () => {
  const empty = await ShardBlock.create()
  const blocks = new MemoryBlockstore()
  blocks.putSync(empty.cid, empty.bytes)

  const dagCborValue = await Block.encode({ value: { hello: 'world' }, codec: dagCbor, hasher: sha256 })
  const v = async n => (n === 'cbor' ? dagCborValue.cid : valueCID(n))

  const longKey = 'x'.repeat(60)
  // [op, key, value number]
  const script = [
    ['put', '2025-03-12T15:13:59.958Z', 1],
    ['put', '2025-03-12T15:13:59.959Z', 2], // shares 22 characters: a chain of one-character shards
    ['put', '2025-03-12T15:14:00.001Z', 3],
    ['put', '2025-03-12T16:00:00.000Z', 4],
    ['put', '2024-12-31T23:59:59.999Z', 5],
    ['put', '2025-03-12T15:13:59.95', 6], // equals the path of an existing shard: value on the link
    ['put', 'did:plc:ewvi7nxzyoun6zhxrhs64oiz', 7],
    ['put', 'did:plc:z72i7hdynmk6r22z27h6tvur', 8],
    ['put', 'did:plc:ewvi7nxzyoun6zhxrhs64oiz', 9], // overwrite
    ['put', 'did:plc:ewvi7nxzyoun6zhxrhs64oiz', 9], // same value again: no change
    ['put', 'did:web:example.com', 'cbor'],
    ['put', 'did', 11], // equals a shard path
    ['put', 'did:plc:ewvi7nxzyoun6zhxrhs64oiz/app.bsky.feed.post', 12], // existing key is the common prefix
    ['put', '2025-03-12T15:13:59.95', 13], // overwrite a value that sits on a link
    ['put', 'a', 14],
    ['put', 'b', 15],
    ['put', '', 16], // the empty key
    ['put', ' !"#$%&\'()*+,-./09:;<=>?@AZ[\\]^_`az{|}~', 17], // printable ASCII edges
    ['put', longKey, 18],
    ['put', longKey.slice(0, -1), 19], // one shorter: 59 one-character shards
    ['put', 'bz', 22], // the existing key "b" is the (one-character) common prefix
    ['put', 'q1', 23],
    ['put', 'q', 24], // the new key is the (one-character) common prefix
    ['put', 'did:plc:ewvi', 25], // the new key is a longer common prefix
    ['del', '2025-03-12T15:13:59.959Z'],
    ['del', '2025-03-12T15:13:59.95'], // link + value -> link only
    ['del', 'did:web:example.com'],
    ['del', '2025-03-12T15:13:59.958Z'], // empties a chain of shards
    ['put', '2025-03-12T15:13:59.958Z', 20], // put back: lands in a different place than before
    ['del', 'nonexistent'], // no change
    ['del', 'did'],
    ['del', '2025'], // names only a shard: no change
    ['put', 'b', 21]
  ]

  const steps = []
  let root = empty.cid
  const rootsByStep = []
  for (const [op, key, n] of script) {
    const before = root
    let res
    let value = null
    if (op === 'put') {
      value = await v(n)
      res = await put(blocks, root, key, value)
    } else {
      res = await del(blocks, root, key)
    }
    for (const b of res.additions) blocks.putSync(b.cid, b.bytes)
    root = res.root
    rootsByStep.push(root)
    steps.push({
      op,
      key,
      value: value ? str(value) : null,
      root_before: str(before),
      root: str(root),
      additions: res.additions.map(b => ({ cid: str(b.cid), bytes: b64(b.bytes) })),
      removals: res.removals.map(b => str(b.cid))
    })
  }

  // Reads at the fullest point (after the last put before the deletes) and at the end.
  const fullest = rootsByStep[script.findIndex(([op]) => op === 'del') - 1]
  const final = root
  const allKeys = [...new Set(script.map(([, k]) => k))]
  const probeKeys = [
    ...allKeys,
    '2025', '2025-03-12T15:13:59.9', '2025-03-12T15:13:59.958', '2025-03-12T15:13:59.958Z0',
    'did:', 'did:plc:', 'x', 'z', 'é'
  ]
  const gets = []
  for (const r of [fullest, final]) {
    for (const key of probeKeys) {
      const value = await get(blocks, r, key)
      gets.push({ root: str(r), key, value: value ? str(value) : null })
    }
  }

  const queries = [
    {},
    { prefix: '2025-03-12T15:13:59.95' },
    { prefix: '2025-03-12T15:13:59.958Z' },
    { prefix: '2025' },
    { prefix: 'did:plc:' },
    { prefix: 'did' },
    { prefix: 'x' },
    { prefix: 'zzz' },
    { prefix: '' },
    { gt: '2025-03-12T15:13:59.958Z' },
    { gte: '2025-03-12T15:13:59.958Z' },
    { lt: '2025-03-12T16' },
    { lte: '2025-03-12T15:14:00.001Z' },
    { gt: '2025-03-12', lt: '2025-03-13' },
    { gte: '2025-03-12T15:13:59.95', lte: '2025-03-12T15:14:00.001Z' },
    { gt: 'c', lt: 'did:z' },
    { gt: 'a', lt: 'b' },
    { gte: 'did', lt: 'did:plc:ewvi7nxzyoun6zhxrhs64oiz/' },
    { gt: 'did:plc:ewvi7nxzyoun6zhxrhs64oiz', lte: 'did:plc:z' },
    { gt: '~' },
    { lt: ' ' }
  ]
  const inRange = (key, o) =>
    (!o.prefix || key.startsWith(o.prefix)) &&
    (!o.gt || key > o.gt) && (!o.gte || key >= o.gte) &&
    (!o.lt || key < o.lt) && (!o.lte || key <= o.lte)
  const entryQueries = []
  for (const r of [fullest, final]) {
    const all = await collect(entries(blocks, r))
    for (const options of queries) {
      const result = await collect(entries(blocks, r, options))
      const expected = all.filter(([k]) => inRange(k, options))
      entryQueries.push({
        root: str(r),
        options,
        result,
        // pail or-s two range bounds for a value that sits on a link entry; we and-them.
        js_matches_expected: JSON.stringify(result) === JSON.stringify(expected),
        expected
      })
    }
  }

  // A larger, pseudo-random but deterministic workload: only the roots are recorded (equal
  // roots mean equal blocks).
  let seed = 0x2545f491
  const rand = () => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0
    return seed
  }
  const bulkBlocks = new MemoryBlockstore()
  bulkBlocks.putSync(empty.cid, empty.bytes)
  let bulkRoot = empty.cid
  const bulk = []
  let t = Date.UTC(2025, 0, 1)
  for (let i = 0; i < 300; i++) {
    let key
    const r = rand() % 10
    if (r < 7) {
      t += (rand() % 5000000)
      key = new Date(t).toISOString()
    } else if (r < 9) {
      key = `did:plc:${(rand() % 100000).toString(36).padStart(4, '0')}`
    } else {
      key = bulk.length ? bulk[rand() % bulk.length].key : 'first' // overwrite an earlier key
    }
    const value = await valueCID(1000 + i)
    const res = await put(bulkBlocks, bulkRoot, key, value)
    for (const b of res.additions) bulkBlocks.putSync(b.cid, b.bytes)
    bulkRoot = res.root
    bulk.push({ key, value: str(value), root: str(bulkRoot) })
  }
  const bulkEntries = await collect(entries(bulkBlocks, bulkRoot))

  // Behaviour of pail 0.6.2 that we deliberately do not copy.
  const quirkBlocks = new MemoryBlockstore()
  quirkBlocks.putSync(empty.cid, empty.bytes)
  let q = empty.cid
  for (const [k, n] of [['a', 1], ['ab', 2]]) {
    const res = await put(quirkBlocks, q, k, await valueCID(n))
    for (const b of res.additions) quirkBlocks.putSync(b.cid, b.bytes)
    q = res.root
  }
  const delRes = await del(quirkBlocks, q, 'ab')
  for (const b of delRes.additions) quirkBlocks.putSync(b.cid, b.bytes)
  const onlyA = await put(blocks, empty.cid, 'a', await valueCID(1))
  const delQuirk = {
    description: 'pail 0.6.2 del: deleting "ab" empties the shard under "a", and pail drops the parent entry [shard, value] whole, losing the value of "a"',
    puts: [['a', str(await valueCID(1))], ['ab', str(await valueCID(2))]],
    root_before: str(q),
    del: 'ab',
    js_root: str(delRes.root),
    js_additions: delRes.additions.map(b => ({ cid: str(b.cid), bytes: b64(b.bytes) })),
    js_get_a: (await get(quirkBlocks, delRes.root, 'a')) ? 'present' : null,
    js_entries: await collect(entries(quirkBlocks, delRes.root)),
    root_with_only_a: str(onlyA.root)
  }

  writeJSON('pail', 'pail.json', {
    generator: 'tests/js/gen-pail-clock-fixtures.mjs',
    pail_version: pailVersion,
    empty: { cid: str(empty.cid), bytes: b64(empty.bytes) },
    steps,
    gets,
    entries: entryQueries,
    bulk: { steps: bulk, entries: bulkEntries },
    quirks: { del_drops_value: delQuirk }
  })
}

// ---------------------------------------------------------------------------------------------
// clock
// ---------------------------------------------------------------------------------------------

const genClock = async () => {
  const v1 = await valueCID(1)
  const root1 = await valueCID('root-1')

  /** @type {Map<string, import('multiformats').Block<any, any, any, any>>} */
  const named = new Map()
  const byCid = new Map()
  const events = []

  /** Creates (with pail 0.6.2 unless legacy), records and names an event. */
  const make = async (name, data, parentNames = [], { legacy = false } = {}) => {
    const parents = parentNames.map(p => named.get(p).cid)
    const block = legacy
      ? await LegacyClock.EventBlock.create(data, parents)
      : await EventBlock.create(data, parents)
    named.set(name, block)
    byCid.set(str(block.cid), name)
    events.push({
      name,
      legacy_unsorted: legacy,
      data_dag_json: new TextDecoder().decode(dagJson.encode(data)),
      parents: parents.map(str),
      cid: str(block.cid),
      bytes: b64(block.bytes)
    })
    return block
  }

  // Encoding variety.
  await make('empty', {})
  await make('link-data', root1)
  await make('null-data', null)
  await make('string-data', 'just a string')
  await make('rich-data', {
    n: -42,
    big: Number.MAX_SAFE_INTEGER,
    neg: -Number.MAX_SAFE_INTEGER,
    f: 1.5,
    s: 'héllo ✓',
    b: new Uint8Array([0, 1, 2, 255]),
    nul: null,
    t: true,
    list: [1, 'two', [3]],
    link: v1
  })

  // The clock history the advance trace runs over.
  const op = (key, n) => ({ type: 'put', key, value: v1, root: root1, n })
  await make('genesis', op('2025-03-12T15:13:59.958Z', 0))
  await make('a', op('a', 1), ['genesis'])
  await make('b', op('b', 2), ['genesis'])
  await make('c', op('c', 3), ['genesis'])
  await make('m', op('m', 4), ['c', 'a', 'b']) // three parents, given unsorted
  await make('d', op('d', 5), ['a'])
  await make('e0', op('e0', 6), ['c'])
  await make('e', op('e', 7), ['e0'])
  await make('legacy', op('legacy', 8), ['m', 'e', 'd'], { legacy: true })
  await make('legacy-sorted', op('legacy', 8), ['m', 'e', 'd'])
  await make('f', op('f', 9), ['legacy'])
  await make('old', op('old', 10), ['genesis'])
  await make('g1', op('g1', 11), ['f', 'old'])
  await make('g2', op('g2', 12), ['f', 'old'])
  await make('h', op('h', 13), ['g2', 'g1'])
  await make('x0', op('x0', 14), ['h'])
  await make('x1', op('x1', 15), ['x0'])
  await make('x2', op('x2', 16), ['x1'])
  await make('y', op('y', 17), ['x0'])
  await make('orphan', op('orphan', 18), [])

  const store = new MemoryBlockstore()
  for (const b of named.values()) store.putSync(b.cid, b.bytes)

  /** advance with fetch recording, over the store minus `missing`. */
  const run = async (headNames, eventName, missing = []) => {
    const skip = new Set(missing.map(m => str(named.get(m).cid)))
    const fetched = []
    const getter = {
      get: async cid => {
        fetched.push(byCid.get(str(cid)) ?? str(cid))
        if (skip.has(str(cid))) return undefined
        return store.get(cid)
      }
    }
    const head = headNames.map(n => named.get(n).cid)
    const event = named.get(eventName).cid
    try {
      const next = await advance(getter, head, event)
      return { head_after: next.map(c => byCid.get(str(c))), error: null, fetched }
    } catch (err) {
      return { head_after: null, error: err.message, fetched }
    }
  }

  const trace = []
  let head = []
  for (const eventName of [
    'genesis', 'a', 'a', 'b', 'c', 'm', 'genesis', 'b', 'd', 'e', 'legacy', 'f', 'old', 'g1',
    'g2', 'h', 'x2', 'y', 'x1', 'orphan', 'empty'
  ]) {
    const res = await run(head, eventName)
    if (res.error) throw new Error(`unexpected error advancing ${eventName}: ${res.error}`)
    trace.push({ head_before: head, event: eventName, head_after: res.head_after, fetched: res.fetched })
    head = res.head_after
  }

  // Single calls with blocks withheld: which block pail reports missing, and what it fetched.
  const cases = [
    { head: ['genesis'], event: 'a', missing: ['a'] },
    { head: ['genesis'], event: 'e', missing: ['e0'] },
    { head: ['genesis'], event: 'e', missing: ['genesis'] },
    { head: ['genesis'], event: 'e', missing: ['e', 'genesis'] },
    { head: ['c'], event: 'e', missing: ['genesis'] },
    { head: ['a', 'b'], event: 'm', missing: ['c'] },
    { head: ['m'], event: 'genesis', missing: ['c'] },
    { head: ['h'], event: 'old', missing: ['legacy'] },
    { head: ['e'], event: 'e', missing: ['e'] },
    // Empty head: pail never reads the event (we do; see clock_interop.rs).
    { head: [], event: 'a', missing: ['a'] }
  ]
  const missing = []
  for (const c of cases) {
    const res = await run(c.head, c.event, c.missing)
    missing.push({ head_before: c.head, event: c.event, missing: c.missing, ...res })
  }

  writeJSON('clock', 'clock.json', {
    generator: 'tests/js/gen-pail-clock-fixtures.mjs',
    pail_version: pailVersion,
    legacy_pail_version: legacyVersion,
    events,
    trace,
    missing
  })
}

await genPail()
await genClock()
