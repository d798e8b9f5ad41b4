// gen-ucan-fixtures.mjs: deterministic generator of the UCAN / ucanto interop fixtures.
//
// The Rust crate `proto` (dag-ucan 0.9.1, ucanto messages and receipts, ucanto's validator)
// is tested against these files. Every byte here comes from the pinned JS packages in
// package.json (@ucanto/*, @ipld/dag-ucan, @web3-storage/clock 0.4.1 and the @ucanto/server 10 +
// @ucanto/validator 9 nested under it, i.e. what w3clock really runs; @storacha/capabilities).
//
// What it writes into ../fixtures/ucan/ (relative to this script):
//   principals.json        fixed-seed keys: did:key, ucanto private key text and bytes, varsig
//                          signature of "hello", multidid bytes (did:key, did:web, did:mailto)
//   clock/<case>.car       ucanto request CARs (Message.build + CAR.outbound.encode, exactly what
//                          the w3clock client sends)
//   clock/<case>.resp.car  the response CARs of w3clock's own server code run in-process
//                          (createServer + provide from @web3-storage/clock/server, pail advance,
//                          in-memory state)
//   access/<case>.archive.car  invocations as delegation archives, checked with @ucanto/validator
//                          10 `access()` against @storacha/capabilities parsers
//   cli-delegation*.car / .txt  delegation archives as `storacha delegation create --output` writes
//                          them, and the `--base64` text form (multibase base64 CIDv1, codec CAR
//                          0x0202, identity multihash over the archive), which `proof parse` reads
//   signing-payloads.json  the JWT-form signing input of selected UCANs (+ the block bytes)
//   manifest.json          array of every case with its expected outcome; Rust tests iterate it
//   README.md              what the files are (generated)
//
// Regenerate:  cd tests/js && npm ci && node gen-ucan-fixtures.mjs
// The outputs are committed. The script is deterministic: fixed 32-byte seeds
// (ed25519.derive), fixed expirations (2000000000 valid, 1000000000 expired), fixed nonces and
// notBefore, Ed25519 signatures are deterministic. Two non-deterministic inputs are pinned:
//   * error `stack`: ucanto serialises Error.stack (host file paths) into error receipts. This
//     script installs Error.prepareStackTrace returning undefined, so `stack` is absent from
//     every error object it produces (CBOR encoding drops undefined fields). A real deployment's
//     error receipts carry a host-specific `stack` string; compare `name`/`message` only.
//   * Date formatting: Expired / NotValidBefore messages embed `new Date(..).toString()`, which
//     depends on TZ and the ICU default locale. The script re-executes itself with TZ=UTC,
//     LC_ALL=C, LANG=C so those messages read "... GMT+0000 (Coordinated Universal Time)".
// Validity windows: all "valid" cases expire at 2000000000 (2033-05-18); the not-yet-valid
// cases use notBefore 1990000000 (2033-01-23). Regenerate before then if still needed.
// Nothing here touches the network.

import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'

// ---- 0. pin the process environment (see header) ----------------------------------------
const PINNED_ENV = { TZ: 'UTC', LC_ALL: 'C', LANG: 'C' }
if (Object.entries(PINNED_ENV).some(([k, v]) => process.env[k] !== v)) {
  const env = { ...process.env, ...PINNED_ENV }
  delete env.LANGUAGE
  const r = spawnSync(process.execPath, [fileURLToPath(import.meta.url), ...process.argv.slice(2)], {
    env,
    stdio: 'inherit'
  })
  process.exit(r.status ?? 1)
}
// No stack traces anywhere: `stack` becomes undefined and is dropped from encoded errors.
Error.prepareStackTrace = () => undefined

const { mkdirSync, writeFileSync, readdirSync, rmSync, statSync } = await import('node:fs')
const { createHash } = await import('node:crypto')
const ed25519 = await import('@ucanto/principal/ed25519')
const { Verifier } = await import('@ucanto/principal')
const Absentee = await import('@ucanto/principal/absentee')
const { Message, Delegation, Receipt, delegate, invoke } = await import('@ucanto/core')
const CAR = await import('@ucanto/transport/car')
const Validator = await import('@ucanto/validator')
const UCAN = await import('@ipld/dag-ucan')
const DID = await import('@ipld/dag-ucan/did')
const dagCBOR = await import('@ipld/dag-cbor')
const dagJSON = await import('@ipld/dag-json')
const { CarBufferReader } = await import('@ipld/car/buffer-reader')
const { CID } = await import('multiformats/cid')
const { sha256 } = await import('multiformats/hashes/sha2')
const { identity } = await import('multiformats/hashes/identity')
const { base64 } = await import('multiformats/bases/base64')
const { createServer, provide } = await import('@web3-storage/clock/server')
const ClockCaps = await import('@web3-storage/clock/capabilities')
const { SpaceBlob, Upload, SpaceIndex, Space } = await import('@storacha/capabilities')

// w3clock 0.4.1 runs @ucanto/server 10 and @web3-storage/pail 0.5.0 from its own nested
// node_modules; resolve those the way Node would from inside the clock package.
const clockServerURL = new URL(import.meta.resolve('@web3-storage/clock/server'))
const resolveFromClock = async (pkg, entry) => {
  let dir = new URL('./', clockServerURL)
  for (;;) {
    const candidate = new URL(`node_modules/${pkg}/package.json`, dir)
    try {
      statSync(candidate)
      return import(new URL(entry, candidate).href)
    } catch {}
    const parent = new URL('../', dir)
    if (parent.href === dir.href) throw new Error(`cannot resolve ${pkg} from @web3-storage/clock`)
    dir = parent
  }
}
const ClockServer = await resolveFromClock('@ucanto/server', './src/lib.js')
const PailClock = await resolveFromClock('@web3-storage/pail', './src/clock/index.js')

const OUT = new URL('../fixtures/ucan/', import.meta.url)
const EXP = 2000000000
const EXPIRED = 1000000000
const NBF_FUTURE = 1990000000
const hex = bytes => Buffer.from(bytes).toString('hex')
const utf8 = s => new TextEncoder().encode(s)
/** IPLD value -> plain JSON in DAG-JSON form (links {"/": cid}, bytes {"/": {"bytes": b64}}) */
const toJSONValue = v => JSON.parse(new TextDecoder().decode(dagJSON.encode(v)))

// ---- 1. principals ------------------------------------------------------------------------
const seed = n => new Uint8Array(32).fill(n)
const ROLES = [
  [0x01, 'clock', 'clock / agent key of the self-issued cases (same as the interop kit golden vectors)'],
  [0x02, 'service', 'w3clock service key (did:key service id of every clock server here)'],
  [0x03, 'alice', 'chain member A'],
  [0x04, 'bob', 'chain member B'],
  [0x05, 'carol', 'chain member C'],
  [0x06, 'mallory', 'unrelated key: unauthorized issuer, wrong audience, foreign root'],
  [0x07, 'space', 'Storacha space key (did:key space DID); also the clock of the did:mailto clock cases'],
  [0x08, 'agent', 'session agent of the did:mailto account chains'],
  [0x09, 'authority', 'key behind did:web:up.storacha.test (ucan/attest authority we hold)'],
  [0x0a, 'forger', 'wrong key used to sign attestations that claim an authority did:web'],
  [0x0b, 'clock2', 'a second clock DID (proof `with` points at another resource)']
]
const K = {}
for (const [n, role] of ROLES) K[role] = await ed25519.derive(seed(n))

const AUTHORITY_DID = 'did:web:up.storacha.test'
const W3S_AUTHORITY_DID = 'did:web:web3.storage'
const W3S_AUTHORITY_KEY = 'did:key:z6MkqdncRZ1wj8zxCTDUQ8CRT8NQWd63T7mZRvZUX8B7XDFi'
const ACCOUNT_DID = 'did:mailto:example.com:alice'
const authoritySigner = K.authority.withDID(AUTHORITY_DID)
const authorityVerifier = Verifier.parse(K.authority.did()).withDID(AUTHORITY_DID)
const account = Absentee.from({ id: ACCOUNT_DID })

const principals = {
  notes:
    'ed25519.derive(seed) from @ucanto/principal 9.0.3; seed = 32 bytes all equal to the given byte. ' +
    'private_key_bytes = varint(0x1300) ‖ secret ‖ varint(0xed) ‖ pubkey (68 B); private_key_text = ed25519.format() (multibase base64pad "M…"); ' +
    'sign_hello_varsig = signer.sign(utf8("hello")) as varsig bytes (varint(0xd0ed) ‖ varint(64) ‖ sig); ' +
    'did_multidid = @ipld/dag-ucan DID.encode bytes as used in UCAN iss/aud; did_web_example = signer.withDID("did:web:example.com").did(), which signs with the same key.',
  keys: [],
  multidid: []
}
for (const [n, role, notes] of ROLES) {
  const s = K[role]
  const sig = await s.sign(utf8('hello'))
  const web = s.withDID('did:web:example.com')
  const webSig = await web.sign(utf8('hello'))
  principals.keys.push({
    role,
    notes,
    seed_hex: hex(seed(n)),
    did: s.did(),
    private_key_text: ed25519.format(s),
    private_key_bytes_hex: hex(s.encode()),
    public_key_hex: hex(s.verifier.publicKey),
    did_multidid_hex: hex(DID.encode(s)),
    did_web_example: web.did(),
    did_web_example_to_did_key: web.toDIDKey(),
    sign_hello_varsig_hex: hex(sig),
    sign_hello_with_did_web_varsig_hex: hex(webSig)
  })
}
for (const did of [K.clock.did(), 'did:web:example.com', AUTHORITY_DID, W3S_AUTHORITY_DID, ACCOUNT_DID, 'did:mailto:web.mail:alice']) {
  principals.multidid.push({ did, bytes_hex: hex(DID.encode({ did: () => did })) })
}
principals.absentee = {
  did: ACCOUNT_DID,
  signature_algorithm: account.signatureAlgorithm,
  sign_hello_varsig_hex: hex(await account.sign(utf8('hello'))),
  notes: 'Absentee.from({id}) from @ucanto/principal: NON_STANDARD varsig (0xd000) with empty raw signature and algorithm ""'
}

// ---- helpers ------------------------------------------------------------------------------
/** Re-encode a delegation with one signature byte flipped: new block, new CID, same blocks. */
const flipSignature = async dlg => {
  const model = dagCBOR.decode(dlg.root.bytes)
  const s = new Uint8Array(model.s)
  s[s.length - 1] ^= 0x01 // last byte of the raw ed25519 signature
  model.s = s
  const bytes = dagCBOR.encode(model)
  const cid = CID.create(1, dagCBOR.code, await sha256.digest(bytes))
  return Delegation.create({ root: { cid, bytes }, blocks: dlg.blocks })
}
const FIXED = { expiration: EXP, nonce: 'n' }
const dlg = (issuer, audience, can, withDID, extra = {}) =>
  delegate({
    issuer,
    audience,
    capabilities: [{ with: withDID, can, ...(extra.nb ? { nb: extra.nb } : {}) }],
    expiration: extra.expiration ?? EXP,
    ...(extra.notBefore ? { notBefore: extra.notBefore } : {}),
    proofs: extra.proofs ?? []
  })
const sha256hex = bytes => createHash('sha256').update(bytes).digest('hex')

mkdirSync(new URL('clock/', OUT), { recursive: true })
mkdirSync(new URL('access/', OUT), { recursive: true })
// The directory is owned by this script: drop stale outputs of renamed/removed cases.
for (const sub of ['', 'clock/', 'access/']) {
  for (const f of readdirSync(new URL(sub, OUT))) {
    if (/\.(car|json|txt|md)$/.test(f)) rmSync(new URL(sub + f, OUT))
  }
}
const write = (rel, data) => writeFileSync(new URL(rel, OUT), data)

const manifest = []
const signingPayloads = []
/** remember UCAN blocks for signing-payloads.json: name -> {cid, bytes, file} */
const payloadPicks = []
const pickPayload = (name, block, file, notes) => payloadPicks.push({ name, block, file, notes })

// ---- 2. clock requests against w3clock's server code -------------------------------------
/** In-memory clock service: ref-server.mjs of the interop kit, with pail 0.5.0 (w3clock's). */
const makeService = () => {
  const clocks = new Map()
  const state = did => {
    let s = clocks.get(did)
    if (!s) clocks.set(did, (s = { head: [], blocks: new Map() }))
    return s
  }
  return {
    clock: {
      head: provide(ClockCaps.head, async ({ capability }) => ({ ok: { head: state(capability.with).head } })),
      advance: provide(ClockCaps.advance, async ({ capability, invocation }) => {
        const s = state(capability.with)
        for (const b of invocation.export()) s.blocks.set(b.cid.toString(), { cid: b.cid, bytes: b.bytes })
        const fetcher = { get: async cid => s.blocks.get(cid.toString()) }
        try {
          s.head = await PailClock.advance(fetcher, s.head, capability.nb.event)
          return { ok: { head: s.head } }
        } catch (err) {
          return { error: { name: 'AdvanceFailure', message: String(err?.message ?? err) } }
        }
      })
    }
  }
}
const SERVICE_DID = K.service.did()
/** w3clock's createServer as published (authority did:web:web3.storage = z6MkqdncRZ1w…). */
const w3clockServer = () => createServer(K.service, makeService())
/**
 * Same as createServer (identical options, same nested @ucanto/server 10), but the extra
 * authority is did:web:up.storacha.test backed by a key we hold (seed 0x09), mirroring how
 * w3clock configures did:web:web3.storage. createServer() hard-codes its authorities.
 */
const attestingServer = () =>
  ClockServer.create({
    id: K.service,
    codec: CAR.inbound,
    service: makeService(),
    catch: err => console.error(err),
    validateAuthorization: () => ({ ok: {} }),
    authorities: [authorityVerifier]
  })

const event1 = await PailClock.EventBlock.create({ hello: 'world' }, [])
const event2 = await PailClock.EventBlock.create({ n: 2 }, [event1.cid])

const headInv = (issuer, withDID, extra = {}) =>
  ClockCaps.head.invoke({ issuer, audience: extra.audience ?? K.service, with: withDID, proofs: extra.proofs ?? [], ...FIXED, ...extra.opts })
/** As @web3-storage/clock/client advance(): one fact mapping every attached block's CID to itself. */
const advanceInv = (issuer, withDID, event, extra = {}) => {
  const blocks = extra.blocks ?? [event]
  const inv = ClockCaps.advance.invoke({
    issuer,
    audience: extra.audience ?? K.service,
    with: withDID,
    nb: { event: event.cid },
    facts: [Object.fromEntries(blocks.map(b => [b.cid.toString(), b.cid]))],
    proofs: extra.proofs ?? [],
    ...FIXED,
    ...extra.opts
  })
  for (const b of blocks) inv.attach(b)
  return inv
}

/**
 * Encode invocations as the client does, post them to `server`, save both CARs, record the case.
 * @param {object} c
 */
const clockCase = async ({ name, server, invocations, serviceDid = SERVICE_DID, serviceKeyDid, capability, depth, tamper, notes, sequence, step, authority }) => {
  const message = await Message.build({ invocations })
  const request = await CAR.outbound.encode(message)
  const response = await server.request({ headers: request.headers, body: request.body })
  if (response.status && response.status !== 200) throw new Error(`${name}: HTTP ${response.status}`)
  const reply = await CAR.outbound.decode(response)
  const file = `clock/${name}.car`
  const respFile = `clock/${name}.resp.car`
  write(file, request.body)
  write(respFile, response.body)
  const receipts = []
  for (const inv of message.invocations) {
    const receipt = reply.get(inv.cid)
    const out = toJSONValue(receipt.out)
    if (out.error && 'stack' in out.error) throw new Error(`${name}: stack leaked into receipt`)
    const expected = out.ok !== undefined ? { ok: out.ok } : { error: { name: out.error.name, message: out.error.message } }
    receipts.push({ invocation: inv.cid.toString(), receipt: receipt.root.cid.toString(), expected, out })
  }
  manifest.push({
    name,
    kind: 'clock-request',
    file,
    response: respFile,
    capability,
    ...(authority ? { authority } : {}),
    serviceDid,
    ...(serviceKeyDid ? { serviceKeyDid } : {}),
    receiptIssuer: serviceDid,
    ...(depth !== undefined ? { depth } : {}),
    ...(tamper ? { tamper } : {}),
    ...(sequence ? { sequence, step } : {}),
    request_sha256: sha256hex(request.body),
    response_sha256: sha256hex(response.body),
    invocation: receipts[0].invocation,
    receipt: receipts[0].receipt,
    expected: receipts[0].expected,
    ...(receipts.length > 1 ? { receipts } : { out: receipts[0].out }),
    notes
  })
  return { message, reply }
}

const clock = K.clock
const CLK = clock.did()

// 2a. self-issued: a three-step sequence on one server (same bytes as the interop kit vectors)
{
  const server = w3clockServer()
  const head = headInv(clock, CLK)
  const adv = advanceInv(clock, CLK, event1)
  const seqNote = 'sequence "self": replay steps 1..3 in order against ONE fresh server (state carries over); every other case starts from a fresh server.'
  const h1 = await clockCase({ name: 'self-head-empty', server, invocations: [head], capability: 'clock/head', depth: 0, sequence: 'self', step: 1, notes: `clock key = issuer = with, prf []. ${seqNote} Byte-identical to the interop kit vector head.car / head-empty.resp.car.` })
  const a = await clockCase({ name: 'self-advance', server, invocations: [adv], capability: 'clock/advance', depth: 0, sequence: 'self', step: 2, notes: `advance with event {data:{hello:"world"},parents:[]} attached and referenced by nb.event and a fact. ${seqNote}` })
  await clockCase({ name: 'self-head-after', server, invocations: [head], capability: 'clock/head', depth: 0, sequence: 'self', step: 3, notes: `same request bytes as self-head-empty; the head now holds the event. ${seqNote}` })
  pickPayload('clock-head-invocation', h1.message.invocations[0].root, 'clock/self-head-empty.car', 'self-issued clock/head, nnc "n", prf []')
  pickPayload('clock-advance-invocation', a.message.invocations[0].root, 'clock/self-advance.car', 'clock/advance: nb.event link + fct [{cid: link}]')
}

// 2b. delegated chains (fresh server per case)
{
  const A = K.alice, B = K.bob, C = K.carol
  // depth 1
  const d1h = await dlg(clock, A, 'clock/head', CLK)
  await clockCase({ name: 'delegated-d1-head', server: w3clockServer(), invocations: [headInv(A, CLK, { proofs: [d1h] })], capability: 'clock/head', depth: 1, notes: 'clock → A (clock/head); A invokes' })
  const d1a = await dlg(clock, A, 'clock/advance', CLK)
  await clockCase({ name: 'delegated-d1-advance', server: w3clockServer(), invocations: [advanceInv(A, CLK, event1, { proofs: [d1a] })], capability: 'clock/advance', depth: 1, notes: 'clock → A (clock/advance); A invokes' })
  const d1s = await dlg(clock, A, '*', CLK)
  await clockCase({ name: 'delegated-d1-star-advance', server: w3clockServer(), invocations: [advanceInv(A, CLK, event1, { proofs: [d1s] })], capability: 'clock/advance', depth: 1, notes: 'clock → A (can "*"); A invokes clock/advance' })
  // depth 2
  const d2a1 = await dlg(clock, A, 'clock/*', CLK)
  const d2h2 = await dlg(A, B, 'clock/head', CLK, { proofs: [d2a1] })
  await clockCase({ name: 'delegated-d2-head', server: w3clockServer(), invocations: [headInv(B, CLK, { proofs: [d2h2] })], capability: 'clock/head', depth: 2, notes: 'clock → A (clock/*) → B (clock/head); B invokes' })
  const d2s1 = await dlg(clock, A, '*', CLK)
  const d2a2 = await dlg(A, B, 'clock/*', CLK, { proofs: [d2s1] })
  await clockCase({ name: 'delegated-d2-advance', server: w3clockServer(), invocations: [advanceInv(B, CLK, event1, { proofs: [d2a2] })], capability: 'clock/advance', depth: 2, notes: 'clock → A (*) → B (clock/*); B invokes clock/advance' })
  const d2u2 = await dlg(A, B, 'clock/*', 'ucan:*', { proofs: [d2a1] })
  await clockCase({ name: 'delegated-d2-ucan-star-head', server: w3clockServer(), invocations: [headInv(B, CLK, { proofs: [d2u2] })], capability: 'clock/head', depth: 2, notes: 'clock → A (clock/* with clock) → B (clock/* with "ucan:*", i.e. everything A holds); B invokes clock/head' })
  // depth 3
  const d3s1 = await dlg(clock, A, '*', CLK)
  const d3c2 = await dlg(A, B, 'clock/*', CLK, { proofs: [d3s1] })
  const d3h3 = await dlg(B, C, 'clock/head', CLK, { proofs: [d3c2] })
  await clockCase({ name: 'delegated-d3-head', server: w3clockServer(), invocations: [headInv(C, CLK, { proofs: [d3h3] })], capability: 'clock/head', depth: 3, notes: 'clock → A (*) → B (clock/*) → C (clock/head); C invokes' })
  const d3c1 = await dlg(clock, A, 'clock/*', CLK)
  const d3c2b = await dlg(A, B, 'clock/*', CLK, { proofs: [d3c1] })
  const d3a3 = await dlg(B, C, 'clock/advance', CLK, { proofs: [d3c2b] })
  await clockCase({ name: 'delegated-d3-advance', server: w3clockServer(), invocations: [advanceInv(C, CLK, event1, { proofs: [d3a3] })], capability: 'clock/advance', depth: 3, notes: 'clock → A (clock/*) → B (clock/*) → C (clock/advance); C invokes' })
  pickPayload('delegation-clock-star', d3c1.root, 'clock/delegated-d3-advance.car', 'delegation clock → A, can clock/*, no nnc, prf []')
  pickPayload('delegation-with-proof', d3a3.root, 'clock/delegated-d3-advance.car', 'delegation B → C with prf [CID]')

  // a two-step sequence with a parent event: advance e1 then e2 (parents [e1]) by a delegate
  const server = w3clockServer()
  const seqNote = 'sequence "delegated-chain": replay steps in order against ONE fresh server.'
  await clockCase({ name: 'delegated-seq-advance-e1', server, invocations: [advanceInv(A, CLK, event1, { proofs: [d1a] })], capability: 'clock/advance', depth: 1, sequence: 'delegated-chain', step: 1, notes: seqNote })
  const adv2 = advanceInv(A, CLK, event2, { proofs: [d1a], blocks: [event2, event1] })
  await clockCase({ name: 'delegated-seq-advance-e2', server, invocations: [adv2], capability: 'clock/advance', depth: 1, sequence: 'delegated-chain', step: 2, notes: `event {data:{n:2},parents:[e1]}; both event blocks attached and listed in one fact {e2: e2, e1: e1}, as the w3clock client does for options.blocks. ${seqNote}` })
  await clockCase({ name: 'delegated-seq-head', server, invocations: [headInv(A, CLK, { proofs: [d1h] })], capability: 'clock/head', depth: 1, sequence: 'delegated-chain', step: 3, notes: seqNote })
}

// 2c. tampered / invalid
{
  const A = K.alice, B = K.bob, M = K.mallory
  const ok1 = await dlg(clock, A, 'clock/head', CLK)

  const selfHead = await headInv(clock, CLK).delegate()
  await clockCase({ name: 'tamper-invocation-signature', server: w3clockServer(), invocations: [await flipSignature(selfHead)], capability: 'clock/head', depth: 0, tamper: 'invocation-signature', notes: 'self-issued head with the last signature byte flipped (CID recomputed)' })

  const d1Head = await headInv(A, CLK, { proofs: [ok1] }).delegate()
  await clockCase({ name: 'tamper-invocation-signature-d1', server: w3clockServer(), invocations: [await flipSignature(d1Head)], capability: 'clock/head', depth: 1, tamper: 'invocation-signature', notes: 'delegated head (clock → A) with the invocation signature flipped; proof intact' })

  const badProof = await flipSignature(ok1)
  await clockCase({ name: 'tamper-proof-signature', server: w3clockServer(), invocations: [headInv(A, CLK, { proofs: [badProof] })], capability: 'clock/head', depth: 1, tamper: 'proof-signature', notes: 'proof clock → A with a flipped signature byte; the invocation is signed over the tampered proof CID, so only the proof signature is bad' })

  const mid = await dlg(clock, A, 'clock/*', CLK)
  const midBad = await flipSignature(mid)
  const leaf = await dlg(A, B, 'clock/head', CLK, { proofs: [midBad] })
  await clockCase({ name: 'tamper-proof-signature-d2', server: w3clockServer(), invocations: [headInv(B, CLK, { proofs: [leaf] })], capability: 'clock/head', depth: 2, tamper: 'proof-signature', notes: 'clock → A (signature flipped) → B (valid, signed over the tampered CID); B invokes' })

  const expired1 = await dlg(clock, A, 'clock/*', CLK)
  const expired2 = await dlg(A, B, 'clock/head', CLK, { proofs: [expired1], expiration: EXPIRED })
  await clockCase({ name: 'expired-proof', server: w3clockServer(), invocations: [headInv(B, CLK, { proofs: [expired2] })], capability: 'clock/head', depth: 2, tamper: 'expired-proof', notes: `clock → A (valid) → B (exp ${EXPIRED}); B invokes` })

  const expiredRoot = await dlg(clock, A, 'clock/head', CLK, { expiration: EXPIRED })
  await clockCase({ name: 'expired-proof-root', server: w3clockServer(), invocations: [headInv(A, CLK, { proofs: [expiredRoot] })], capability: 'clock/head', depth: 1, tamper: 'expired-proof', notes: `clock → A with exp ${EXPIRED}; A invokes` })

  await clockCase({ name: 'expired-invocation', server: w3clockServer(), invocations: [headInv(clock, CLK, { opts: { expiration: EXPIRED } })], capability: 'clock/head', depth: 0, tamper: 'expired-invocation', notes: `self-issued head with exp ${EXPIRED}` })

  const nbfInv = ClockCaps.head.invoke({ issuer: clock, audience: K.service, with: CLK, expiration: EXP, notBefore: NBF_FUTURE })
  const nbfCase = await clockCase({ name: 'not-yet-valid-invocation', server: w3clockServer(), invocations: [nbfInv], capability: 'clock/head', depth: 0, tamper: 'not-before', notes: `self-issued head with nbf ${NBF_FUTURE} (future) and no nonce` })
  pickPayload('invocation-nbf-no-nnc', nbfCase.message.invocations[0].root, 'clock/not-yet-valid-invocation.car', 'nbf present, nnc absent')

  const nbfProof = await dlg(clock, A, 'clock/head', CLK, { notBefore: NBF_FUTURE })
  await clockCase({ name: 'not-yet-valid-proof', server: w3clockServer(), invocations: [headInv(A, CLK, { proofs: [nbfProof] })], capability: 'clock/head', depth: 1, tamper: 'not-before', notes: `clock → A with nbf ${NBF_FUTURE}; A invokes` })

  await clockCase({ name: 'widened-capability', server: w3clockServer(), invocations: [advanceInv(A, CLK, event1, { proofs: [ok1] })], capability: 'clock/advance', depth: 1, tamper: 'widened-capability', notes: 'proof grants clock/head, invocation asks clock/advance' })

  const foreignRoot = await dlg(M, A, 'clock/head', CLK)
  await clockCase({ name: 'foreign-root', server: w3clockServer(), invocations: [headInv(A, CLK, { proofs: [foreignRoot] })], capability: 'clock/head', depth: 1, tamper: 'not-rooted', notes: 'mallory (not the clock) delegates {with: clock, can: clock/head} to A; chain not rooted at the clock' })

  const otherWith = await dlg(clock, A, 'clock/head', K.clock2.did())
  await clockCase({ name: 'proof-with-other-did', server: w3clockServer(), invocations: [headInv(A, CLK, { proofs: [otherWith] })], capability: 'clock/head', depth: 1, tamper: 'proof-with-mismatch', notes: 'clock → A but the proof\'s `with` is another clock DID (clock2); A invokes on clock' })

  const selfOther = await dlg(K.clock2, A, 'clock/head', K.clock2.did())
  await clockCase({ name: 'proof-for-other-clock', server: w3clockServer(), invocations: [headInv(A, CLK, { proofs: [selfOther] })], capability: 'clock/head', depth: 1, tamper: 'proof-with-mismatch', notes: 'clock2 → A (with clock2, properly self-issued) used to invoke on clock' })

  await clockCase({ name: 'wrong-audience', server: w3clockServer(), invocations: [headInv(clock, CLK, { audience: M })], capability: 'clock/head', depth: 0, tamper: 'wrong-audience', notes: 'self-issued head addressed to mallory, not the service: w3clock provide() rejects before validation' })

  const toB = await dlg(clock, B, 'clock/head', CLK)
  await clockCase({ name: 'misaligned-chain', server: w3clockServer(), invocations: [headInv(A, CLK, { proofs: [toB] })], capability: 'clock/head', depth: 1, tamper: 'misaligned', notes: 'proof audience is B but A invokes with it' })

  await clockCase({ name: 'missing-proof', server: w3clockServer(), invocations: [headInv(A, CLK, { proofs: [ok1.cid] })], capability: 'clock/head', depth: 1, tamper: 'missing-proof', notes: `prf keeps the CID ${ok1.cid} but the proof block is not in the CAR` })

  await clockCase({ name: 'unauthorized-issuer', server: w3clockServer(), invocations: [headInv(M, CLK)], capability: 'clock/head', depth: 0, tamper: 'unauthorized', notes: 'mallory invokes clock/head on clock with no proof' })

  await clockCase({ name: 'unknown-ability-clock-follow', server: w3clockServer(), invocations: [ClockCaps.follow.invoke({ issuer: clock, audience: K.service, with: CLK, nb: {}, ...FIXED })], capability: 'clock/follow', depth: 0, tamper: 'unknown-ability', notes: 'clock/follow is defined in w3clock capabilities but not served' })

  await clockCase({ name: 'unknown-ability-store-add', server: w3clockServer(), invocations: [invoke({ issuer: clock, audience: K.service, capability: { can: 'store/add', with: CLK, nb: { link: event1.cid, size: 28 } }, ...FIXED })], capability: 'store/add', depth: 0, tamper: 'unknown-ability', notes: 'an ability the clock service has no handler namespace for' })

  const two = await delegate({ issuer: clock, audience: K.service, capabilities: [{ can: 'clock/head', with: CLK }, { can: 'clock/head', with: K.clock2.did() }], ...FIXED })
  await clockCase({ name: 'two-capabilities', server: w3clockServer(), invocations: [two], capability: 'clock/head', depth: 0, tamper: 'two-capabilities', notes: 'one UCAN with two att entries sent as an invocation (built with core delegate())' })

  // several invocations in one message (report map with two entries). They touch different
  // clocks: the server runs a message's invocations concurrently (Promise.all), so two
  // invocations on one clock could observe each other in either order.
  await clockCase({ name: 'batch-advance-head', server: w3clockServer(), invocations: [advanceInv(clock, CLK, event1), headInv(K.clock2, K.clock2.did())], capability: 'clock/advance', depth: 0, notes: 'two invocations in one message: clock/advance on clock (self-issued) and clock/head on clock2 (self-issued by clock2); `receipts` lists both, top-level expected/invocation/receipt are the first' })
}

// 2d. did:mailto account chain: clock(space) → account → agent (absentee) + ucan/attest
{
  const SPACE = K.space.did()
  const agent = K.agent
  const toAccount = await dlg(K.space, account, 'clock/*', SPACE)
  const toAgent = await dlg(account, agent, 'clock/*', SPACE, { proofs: [toAccount] })
  const attest = async (issuer, withDID, proof) =>
    delegate({ issuer, audience: agent, capabilities: [{ with: withDID, can: 'ucan/attest', nb: { proof: proof.cid } }], expiration: EXP })
  const goodAttest = await attest(authoritySigner, AUTHORITY_DID, toAgent)
  const forgedAttest = await attest(K.forger.withDID(AUTHORITY_DID), AUTHORITY_DID, toAgent)
  const forgedW3s = await attest(K.forger.withDID(W3S_AUTHORITY_DID), W3S_AUTHORITY_DID, toAgent)
  const common = { serviceDid: SERVICE_DID, depth: 2 }
  const srvNote = `attesting server: w3clock createServer options + provide(), but authorities [${AUTHORITY_DID} = ${K.authority.did()}] (seed 0x09) instead of ${W3S_AUTHORITY_DID}`

  await clockCase({ name: 'mailto-attested-head', server: attestingServer(), invocations: [headInv(agent, SPACE, { proofs: [toAgent, goodAttest] })], capability: 'clock/head', authority: AUTHORITY_DID, ...common, notes: `space → ${ACCOUNT_DID} (clock/*) → agent (absentee signature) + ucan/attest by ${AUTHORITY_DID}; invocation prf [account→agent, attestation]. ${srvNote}` })
  await clockCase({ name: 'mailto-attested-advance', server: attestingServer(), invocations: [advanceInv(agent, SPACE, event1, { proofs: [toAgent, goodAttest] })], capability: 'clock/advance', authority: AUTHORITY_DID, ...common, notes: `as mailto-attested-head, clock/advance. ${srvNote}` })
  await clockCase({ name: 'mailto-missing-attestation', server: attestingServer(), invocations: [headInv(agent, SPACE, { proofs: [toAgent] })], capability: 'clock/head', authority: AUTHORITY_DID, tamper: 'missing-attestation', ...common, notes: `no ucan/attest for the absentee-signed account → agent link. ${srvNote}. The error is the one of the LAST access() attempt, with authority = the service id (provide() tries each authority, then the service id).` })
  await clockCase({ name: 'mailto-attestation-wrong-key', server: attestingServer(), invocations: [headInv(agent, SPACE, { proofs: [toAgent, forgedAttest] })], capability: 'clock/head', authority: AUTHORITY_DID, tamper: 'attestation-wrong-key', ...common, notes: `attestation claims iss ${AUTHORITY_DID} but is signed by seed 0x0a. ${srvNote}` })
  await clockCase({ name: 'mailto-builtin-authority-forged', server: w3clockServer(), invocations: [headInv(agent, SPACE, { proofs: [toAgent, forgedW3s] })], capability: 'clock/head', authority: W3S_AUTHORITY_DID, tamper: 'attestation-wrong-key', ...common, notes: `real createServer (authority ${W3S_AUTHORITY_DID} = ${W3S_AUTHORITY_KEY}); the attestation claims ${W3S_AUTHORITY_DID} but is signed by seed 0x0a (nobody here holds the real key, so a valid case is impossible)` })
  await clockCase({ name: 'mailto-attested-other-authority', server: w3clockServer(), invocations: [headInv(agent, SPACE, { proofs: [toAgent, goodAttest] })], capability: 'clock/head', authority: W3S_AUTHORITY_DID, tamper: 'untrusted-authority', ...common, notes: `real createServer: the (validly signed) attestation is by ${AUTHORITY_DID}, which that server does not trust` })
  pickPayload('delegation-absentee-account', toAgent.root, 'clock/mailto-attested-head.car', `issued by ${ACCOUNT_DID} with an absentee signature (alg "")`)
  pickPayload('attestation-did-web', goodAttest.root, 'clock/mailto-attested-head.car', `ucan/attest issued by ${AUTHORITY_DID} (did:web iss, ed25519 signature)`)
}

// did:web service identity: the receipt iss is the did:web
{
  const webService = K.service.withDID('did:web:clock.web3.storage')
  const server = createServer(webService, makeService())
  await clockCase({ name: 'did-web-service-head', server, invocations: [headInv(clock, CLK, { audience: webService })], capability: 'clock/head', depth: 0, serviceDid: 'did:web:clock.web3.storage', serviceKeyDid: K.service.did(), notes: 'service signer = seed 0x02 .withDID("did:web:clock.web3.storage"), as the deployed worker (DID env); invocation aud is the did:web; receipt iss is the did:web, signed by the did:key' })
}

// ---- 3. Storacha capability chains via @ucanto/validator 10 access() ----------------------
const digestA = (await sha256.digest(utf8('blob A'))).bytes
const digestB = (await sha256.digest(utf8('blob B'))).bytes
const rootA = CID.create(1, 0x55, await sha256.digest(utf8('root A')))
const rootB = CID.create(1, 0x55, await sha256.digest(utf8('root B')))
const carA = CID.create(1, 0x0202, await sha256.digest(utf8('shard A')))
const idxA = CID.create(1, 0x0202, await sha256.digest(utf8('index A')))
const idxB = CID.create(1, 0x0202, await sha256.digest(utf8('index B')))
const PARSERS = {
  'space/blob/add': ['SpaceBlob.add', SpaceBlob.add],
  'upload/add': ['Upload.add', Upload.add],
  'space/index/add': ['SpaceIndex.add', SpaceIndex.add],
  'space/info': ['Space.info', Space.info]
}
const accessOptions = parser => ({
  capability: parser,
  authority: authorityVerifier,
  principal: Verifier,
  validateAuthorization: () => ({ ok: {} })
})
const accessCase = async ({ name, invocation, can, depth, tamper, notes }) => {
  const [parserName, parser] = PARSERS[can]
  const view = 'cid' in invocation && 'root' in invocation ? invocation : await invocation.delegate()
  const result = await Validator.access(view, accessOptions(parser))
  const archived = await Delegation.archive(view)
  if (archived.error) throw archived.error
  const file = `access/${name}.archive.car`
  write(file, archived.ok)
  const expected = result.ok ? { ok: true } : { error: { name: result.error.name, message: result.error.message } }
  manifest.push({
    name,
    kind: 'access',
    file,
    capability: can,
    parser: parserName,
    authority: AUTHORITY_DID,
    authorityKey: K.authority.did(),
    serviceDid: AUTHORITY_DID,
    ...(depth !== undefined ? { depth } : {}),
    ...(tamper ? { tamper } : {}),
    invocation: view.cid.toString(),
    expected,
    ...(result.ok ? { capabilityMatched: toJSONValue({ can: result.ok.capability.can, with: result.ok.capability.with, nb: result.ok.capability.nb }) } : {}),
    notes
  })
  return view
}
{
  const S = K.space, SP = S.did(), A = K.alice, B = K.bob, C = K.carol, M = K.mallory
  const aud = authoritySigner // invocations are addressed to the service did:web
  const blobNb = (digest, size) => ({ blob: { digest, size } })
  const blobInv = (issuer, proofs, extra = {}) =>
    SpaceBlob.add.invoke({ issuer, audience: extra.audience ?? aud, with: SP, nb: extra.nb ?? blobNb(digestA, 100), proofs, ...FIXED, ...extra.opts })

  const self = await accessCase({ name: 'blob-add-self', invocation: blobInv(S, []), can: 'space/blob/add', depth: 0, notes: 'space key invokes space/blob/add on itself' })
  pickPayload('invocation-nb-bytes', self.root, 'access/blob-add-self.archive.car', 'space/blob/add with nb.blob.digest bytes and nb.blob.size')
  const b1 = await dlg(S, A, 'space/blob/add', SP)
  await accessCase({ name: 'blob-add-d1', invocation: blobInv(A, [b1]), can: 'space/blob/add', depth: 1, notes: 'space → A (space/blob/add); A invokes' })
  const b2a = await dlg(S, A, 'space/blob/*', SP)
  const b2b = await dlg(A, B, 'space/blob/add', SP, { proofs: [b2a] })
  await accessCase({ name: 'blob-add-d2', invocation: blobInv(B, [b2b]), can: 'space/blob/add', depth: 2, notes: 'space → A (space/blob/*) → B (space/blob/add); B invokes' })
  const b3a = await dlg(S, A, '*', SP)
  const b3b = await dlg(A, B, 'space/*', SP, { proofs: [b3a] })
  const b3c = await dlg(B, C, 'space/blob/add', SP, { proofs: [b3b] })
  await accessCase({ name: 'blob-add-d3', invocation: blobInv(C, [b3c]), can: 'space/blob/add', depth: 3, notes: 'space → A (*) → B (space/*) → C (space/blob/add); C invokes' })
  const nbProof = await dlg(S, A, 'space/blob/add', SP, { nb: blobNb(digestA, 100) })
  await accessCase({ name: 'blob-add-d1-nb-within', invocation: blobInv(A, [nbProof], { nb: blobNb(digestA, 50) }), can: 'space/blob/add', depth: 1, notes: 'proof nb {blob:{digest A, size 100}}, invocation size 50 (equalBlob: size ≤ delegated, same digest)' })
  pickPayload('delegation-nb-bytes', nbProof.root, 'access/blob-add-d1-nb-within.archive.car', 'delegation whose nb holds bytes (blob.digest)')

  // upload/add, space/index/add, space/info
  const upInv = (issuer, proofs, root = rootA) => Upload.add.invoke({ issuer, audience: aud, with: SP, nb: { root, shards: [carA] }, proofs, ...FIXED })
  const u1 = await dlg(S, A, 'upload/add', SP)
  await accessCase({ name: 'upload-add-d1', invocation: upInv(A, [u1]), can: 'upload/add', depth: 1, notes: 'space → A (upload/add)' })
  const u2a = await dlg(S, A, 'upload/*', SP)
  const u2b = await dlg(A, B, 'upload/add', SP, { proofs: [u2a], nb: { root: rootA } })
  await accessCase({ name: 'upload-add-d2-root-constraint', invocation: upInv(B, [u2b]), can: 'upload/add', depth: 2, notes: 'space → A (upload/*) → B (upload/add, nb {root: A}); B adds root A' })
  await accessCase({ name: 'upload-add-d2-root-widened', invocation: upInv(B, [u2b], rootB), can: 'upload/add', depth: 2, tamper: 'widened-nb', notes: 'as upload-add-d2-root-constraint but B adds root B' })
  const idxInv = (issuer, proofs, index = idxA) => SpaceIndex.add.invoke({ issuer, audience: aud, with: SP, nb: { index }, proofs, ...FIXED })
  const i1 = await dlg(S, A, 'space/index/*', SP)
  const i2 = await dlg(A, B, 'space/index/add', SP, { proofs: [i1] })
  await accessCase({ name: 'index-add-d2', invocation: idxInv(B, [i2]), can: 'space/index/add', depth: 2, notes: 'space → A (space/index/*) → B (space/index/add)' })
  const i1c = await dlg(S, A, 'space/index/add', SP, { nb: { index: idxA } })
  await accessCase({ name: 'index-add-d1-index-widened', invocation: idxInv(A, [i1c], idxB), can: 'space/index/add', depth: 1, tamper: 'widened-nb', notes: 'proof nb {index: A}, invocation index B' })
  const infoInv = (issuer, proofs) => Space.info.invoke({ issuer, audience: aud, with: SP, proofs, ...FIXED })
  const s1 = await dlg(S, A, 'space/info', SP)
  await accessCase({ name: 'space-info-d1', invocation: infoInv(A, [s1]), can: 'space/info', depth: 1, notes: 'space → A (space/info)' })
  const s2 = await dlg(S, A, 'upload/list', SP)
  await accessCase({ name: 'space-info-derived-from-upload-list', invocation: infoInv(A, [s2]), can: 'space/info', depth: 1, notes: 'space → A (upload/list); space/info is derivable from upload/list (Space.info = Store.list.or(…).or(Upload.list)…derive)' })
  const s3 = await dlg(S, A, 'space/blob/add', SP)
  await accessCase({ name: 'space-info-not-derivable-from-blob-add', invocation: infoInv(A, [s3]), can: 'space/info', depth: 1, tamper: 'widened-capability', notes: 'space → A (space/blob/add) does not derive space/info' })

  // tampered
  await accessCase({ name: 'blob-add-self-flipped-signature', invocation: await flipSignature(self), can: 'space/blob/add', depth: 0, tamper: 'invocation-signature', notes: 'blob-add-self with the last signature byte flipped' })
  await accessCase({ name: 'blob-add-d2-flipped-proof-signature', invocation: blobInv(B, [await dlg(A, B, 'space/blob/add', SP, { proofs: [await flipSignature(b2a)] })]), can: 'space/blob/add', depth: 2, tamper: 'proof-signature', notes: 'space → A (signature flipped) → B; B invokes' })
  const e1 = await dlg(S, A, 'space/blob/*', SP)
  const e2 = await dlg(A, B, 'space/blob/add', SP, { proofs: [e1], expiration: EXPIRED })
  await accessCase({ name: 'blob-add-d2-expired-link', invocation: blobInv(B, [e2]), can: 'space/blob/add', depth: 2, tamper: 'expired-proof', notes: `space → A → B (exp ${EXPIRED})` })
  await accessCase({ name: 'blob-add-expired-invocation', invocation: blobInv(A, [b1], { opts: { expiration: EXPIRED } }), can: 'space/blob/add', depth: 1, tamper: 'expired-invocation', notes: `invocation exp ${EXPIRED}` })
  await accessCase({ name: 'blob-add-not-yet-valid', invocation: blobInv(A, [b1], { opts: { notBefore: NBF_FUTURE } }), can: 'space/blob/add', depth: 1, tamper: 'not-before', notes: `invocation nbf ${NBF_FUTURE}` })
  await accessCase({ name: 'blob-add-widened-can', invocation: blobInv(A, [u1]), can: 'space/blob/add', depth: 1, tamper: 'widened-capability', notes: 'proof grants upload/add, invocation asks space/blob/add' })
  await accessCase({ name: 'blob-add-widened-size', invocation: blobInv(A, [nbProof], { nb: blobNb(digestA, 200) }), can: 'space/blob/add', depth: 1, tamper: 'widened-nb', notes: 'proof nb {blob:{digest A, size 100}}, invocation size 200' })
  await accessCase({ name: 'blob-add-widened-digest', invocation: blobInv(A, [nbProof], { nb: blobNb(digestB, 100) }), can: 'space/blob/add', depth: 1, tamper: 'widened-nb', notes: 'proof nb {blob:{digest A, size 100}}, invocation digest B' })
  await accessCase({ name: 'blob-add-wrong-audience', invocation: blobInv(A, [b1], { audience: M }), can: 'space/blob/add', depth: 1, tamper: 'wrong-audience', notes: 'invocation aud = mallory: access() does NOT check the invocation audience (servers do that before calling it), so this is ok' })
  const toB = await dlg(S, B, 'space/blob/add', SP)
  await accessCase({ name: 'blob-add-misaligned', invocation: blobInv(A, [toB]), can: 'space/blob/add', depth: 1, tamper: 'misaligned', notes: 'proof audience B, invoker A' })
  await accessCase({ name: 'blob-add-missing-proof', invocation: blobInv(A, [b1.cid]), can: 'space/blob/add', depth: 1, tamper: 'missing-proof', notes: `prf keeps ${b1.cid}, block absent from the archive` })
  await accessCase({ name: 'blob-add-unauthorized', invocation: blobInv(M, []), can: 'space/blob/add', depth: 0, tamper: 'unauthorized', notes: 'mallory, no proof' })
  const foreign = await dlg(M, A, 'space/blob/add', SP)
  await accessCase({ name: 'blob-add-foreign-root', invocation: blobInv(A, [foreign]), can: 'space/blob/add', depth: 1, tamper: 'not-rooted', notes: 'mallory delegates {with: space} to A' })

  // did:mailto account (how Storacha logins work): space → account (*) → agent (absentee) + attestation
  const agent = K.agent
  const toAccount = await dlg(S, account, '*', SP)
  const toAgent = await dlg(account, agent, 'space/blob/add', SP, { proofs: [toAccount] })
  const att = (issuer, withDID) => delegate({ issuer, audience: agent, capabilities: [{ with: withDID, can: 'ucan/attest', nb: { proof: toAgent.cid } }], expiration: EXP })
  await accessCase({ name: 'mailto-blob-add-attested', invocation: blobInv(agent, [toAgent, await att(authoritySigner, AUTHORITY_DID)]), can: 'space/blob/add', depth: 2, notes: `space → ${ACCOUNT_DID} (*) → agent (absentee) + ucan/attest by ${AUTHORITY_DID}` })
  await accessCase({ name: 'mailto-blob-add-no-attestation', invocation: blobInv(agent, [toAgent]), can: 'space/blob/add', depth: 2, tamper: 'missing-attestation', notes: 'no attestation for the absentee-signed link' })
  await accessCase({ name: 'mailto-blob-add-attestation-wrong-key', invocation: blobInv(agent, [toAgent, await att(K.forger.withDID(AUTHORITY_DID), AUTHORITY_DID)]), can: 'space/blob/add', depth: 2, tamper: 'attestation-wrong-key', notes: `attestation iss ${AUTHORITY_DID} signed by seed 0x0a` })
  await accessCase({ name: 'mailto-blob-add-attestation-other-authority', invocation: blobInv(agent, [toAgent, await att(K.forger.withDID('did:web:evil.test'), 'did:web:evil.test')]), can: 'space/blob/add', depth: 2, tamper: 'untrusted-authority', notes: 'attestation by did:web:evil.test (self-consistent, but not the authority)' })
}

// ---- 4. delegation archives as `storacha delegation create` writes them -------------------
const archiveCase = async ({ name, delegation, notes }) => {
  const archived = await Delegation.archive(delegation)
  if (archived.error) throw archived.error
  const bytes = archived.ok
  const text = CID.create(1, 0x0202, identity.digest(bytes)).toString(base64)
  write(`${name}.car`, bytes)
  write(`${name}.txt`, text) // `--base64 --output FILE` writes no trailing newline
  // round trip through extract(), as `proof parse` does after unwrapping the identity CID
  const back = await Delegation.extract(CID.parse(text, base64).multihash.digest)
  if (back.error || back.ok.cid.toString() !== delegation.cid.toString()) throw new Error(`${name}: archive round trip failed`)
  const reader = CarBufferReader.fromBytes(bytes)
  const variant = dagCBOR.decode(reader.get(reader.getRoots()[0]).bytes)
  manifest.push({
    name,
    kind: 'archive',
    file: `${name}.car`,
    text: `${name}.txt`,
    serviceDid: AUTHORITY_DID,
    root: delegation.cid.toString(),
    variant: toJSONValue(variant),
    issuer: delegation.issuer.did(),
    audience: delegation.audience.did(),
    capabilities: toJSONValue(delegation.capabilities),
    expiration: delegation.expiration === Infinity ? null : delegation.expiration,
    proofs: delegation.proofs.map(p => ('cid' in p && 'root' in p ? p.cid : p).toString()),
    expected: { ok: true },
    notes
  })
  return delegation
}
{
  const S = K.space, SP = S.did()
  const abilities = ['space/blob/add', 'space/index/add', 'upload/add', 'upload/list', 'filecoin/offer']
  const audience = K.alice
  const cli = await delegate({ issuer: S, audience, capabilities: abilities.map(can => ({ with: SP, can })), expiration: Infinity })
  await archiveCase({ name: 'cli-delegation', delegation: cli, notes: `space key → alice, ${abilities.join(', ')}, expiration Infinity (exp null), as \`storacha delegation create <alice> -c … --output cli-delegation.car\`; .txt = multibase base64 ("m") of CIDv1(codec 0x0202 CAR, identity multihash of the archive bytes)` })
  pickPayload('delegation-exp-null', cli.root, 'cli-delegation.car', 'expiration Infinity → exp null; five capabilities')
  // What the CLI really produces: @storacha/client createDelegation → agent.delegate() issues
  // from the agent key with facts [{space: <space meta>}] and prf = the agent's proofs, here the
  // space → agent authorization made at `space create` (caps = access-client spaceAccess,
  // facts [{space: {name, access}}]; its real expiration is now + 1 year, fixed here).
  const spaceMeta = { name: 'bluesky-backups', access: { type: 'public' } }
  const spaceAccess = ['assert/*', 'space/*', 'blob/*', 'index/*', 'store/*', 'upload/*', 'access/*', 'filecoin/*', 'usage/*']
  const spaceToAgent = await delegate({ issuer: S, audience: K.agent, capabilities: spaceAccess.map(can => ({ with: SP, can })), expiration: EXP, facts: [{ space: spaceMeta }] })
  const chained = await delegate({ issuer: K.agent, audience, capabilities: abilities.map(can => ({ with: SP, can })), expiration: Infinity, facts: [{ space: spaceMeta }], proofs: [spaceToAgent] })
  await archiveCase({ name: 'cli-delegation-chained', delegation: chained, notes: 'as @storacha/client createDelegation issues it: agent → alice, fct [{space: {name, access}}], exp null, prf [space → agent (spaceAccess caps, same fact)]; both UCAN blocks in the archive' })
  await accessCase({ name: 'blob-add-via-cli-delegation', invocation: SpaceBlob.add.invoke({ issuer: audience, audience: authoritySigner, with: SP, nb: { blob: { digest: digestA, size: 100 } }, proofs: [chained], ...FIXED }), can: 'space/blob/add', depth: 2, notes: 'alice invokes space/blob/add with the cli-delegation-chained delegation as proof (space → agent (space/*) → alice (space/blob/add))' })
}

// ---- 5/6. signing payloads and manifest ----------------------------------------------------
for (const { name, block, file, notes } of payloadPicks) {
  const view = UCAN.decode(block.bytes)
  const jwt = UCAN.format(view)
  const payload = jwt.split('.').slice(0, 2).join('.')
  const [h, p] = payload.split('.').map(part => Buffer.from(part, 'base64url').toString())
  signingPayloads.push({
    name,
    cid: block.cid.toString(),
    file,
    issuer: view.issuer.did(),
    signature_algorithm: view.signature.algorithm,
    signature_code: view.signature.code,
    payload,
    payload_header_json: h,
    payload_json: p,
    jwt,
    block_hex: hex(block.bytes),
    notes
  })
}

const json = v => JSON.stringify(v, null, 2) + '\n'
write('principals.json', json(principals))
write('signing-payloads.json', json(signingPayloads))
write('manifest.json', json(manifest))
write('README.md', [
  '# UCAN / ucanto interop fixtures',
  '',
  'Generated by `tests/js/gen-ucan-fixtures.mjs`; do not edit by hand. Regenerate with',
  '`cd tests/js && npm ci && node gen-ucan-fixtures.mjs` (deterministic: same bytes every run).',
  '',
  '* All paths in the JSON files are relative to this directory.',
  '* `manifest.json` is an array of cases `{name, kind, file, response?, capability?, authority?, serviceDid, depth?, tamper?, expected, notes, …}`.',
  '* kind `clock-request`: `file` is the request CAR (`Message.build` + `CAR.outbound.encode`, what the w3clock client sends); ' +
    '`response` is the response CAR produced in-process by w3clock 0.4.1 server code (`createServer` + `provide`, @ucanto/server 10.2.0, ' +
    '@ucanto/validator 9.1.0, pail 0.5.0 advance, in-memory state). `expected` is the receipt `out` of the first invocation: ' +
    '`{ok: <DAG-JSON value>}` or `{error: {name, message}}`; `out` is the complete `out` in DAG-JSON form (`receipts` when a message ' +
    'holds several invocations). Check a response with `node tests/js/verify-receipts.mjs REQ RESP serviceDid [serviceKeyDid]`.',
  '* Every clock case runs against a fresh server (empty clock state) except cases that share a `sequence`; replay those in `step` order against one server.',
  '* Error receipts were produced with stack traces disabled, so their error objects have no `stack` field. A deployed ucanto server adds a host-specific `stack` string.',
  '* kind `access`: `file` is a delegation archive (`Delegation.archive`) of the invocation, checked with @ucanto/validator 10.0.1 ' +
    '`access(invocation, {capability: <parser from @storacha/capabilities 2.3.1>, authority: Verifier.parse(authorityKey).withDID(authority), ' +
    'principal: Verifier, validateAuthorization: () => ({ok: {}})})`. `expected` is `{ok: true}` or `{error: {name, message}}`. ' +
    '`access()` does not look at the invocation audience (servers check it first), see `blob-add-wrong-audience`.',
  '* kind `archive`: delegation archives as `storacha delegation create … --output` writes them, and the text form in `text` ' +
    '(multibase base64 of a CIDv1 with codec 0x0202 and an identity multihash over the archive bytes).',
  '* `principals.json`: the fixed-seed keys. `signing-payloads.json`: the JWT-form signing input (`payload`) and `UCAN.format()` output (`jwt`) of selected UCAN blocks (`block_hex`, also inside `file`).',
  `* Times: valid \`exp\` ${EXP} (2033-05-18); expired \`exp\` ${EXPIRED}; not-yet-valid \`nbf\` ${NBF_FUTURE}. Messages that embed dates were rendered with TZ=UTC and LC_ALL=C.`,
  ''
].join('\n'))
console.log(`wrote ${manifest.length} cases, ${signingPayloads.length} signing payloads to ${fileURLToPath(OUT)}`)
