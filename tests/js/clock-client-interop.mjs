// clock-client-interop.mjs: drive a clock service with the REAL w3clock client
// (`@web3-storage/clock/client` connect/head/advance, @web3-storage/clock 0.4.1) and check every
// answer, the way a browser or CLI would use the service.
//
// Usage: node clock-client-interop.mjs URL SERVICE_DID [SERVICE_KEY_DID]
//
// URL is the service endpoint (POST /). SERVICE_DID is the identity invocations are addressed to
// (the connection's `id`, so the client uses it as `aud`). Every receipt is verified with
// `receipt.verifySignature(Verifier.parse(SERVICE_DID))`; for a did:web service pass the did:key
// of its signing key as SERVICE_KEY_DID and the verifier is
// `Verifier.parse(SERVICE_KEY_DID).withDID(SERVICE_DID)`.
//
// Cases, in order, against one clock that must be new (deterministic keys: clock = seed 0x11,
// alice 0x12, bob 0x13, mallory 0x14, a wrong audience 0x15; so run it against a fresh store):
//   head-empty          head on a new clock                         → {ok: {head: []}}
//   advance-e1          advance e1 (no parents, block attached)     → {ok: {head: [e1]}}
//   advance-e2          advance e2 (parent e1; e2 + e1 attached)    → {ok: {head: [e2]}}
//   head-after          head                                        → {ok: {head: [e2]}}
//   unauthorized-issuer mallory invokes clock/head with no proof    → Unauthorized (exact message)
//   wrong-audience      the clock invokes clock/head addressed to another DID → InvalidAudience
//   delegated-head      clock → bob (clock/head); bob invokes       → {ok: {head: [e2]}}
//   delegated-advance   clock → alice (clock/*) → bob (clock/advance, no nb.event pin: ucanto's
//                       default derive refuses a pinned link); bob advances e3 (parent e2)
//                                                                   → {ok: {head: [e3]}}
//   head-final          head                                        → {ok: {head: [e3]}}
// and every receipt must carry a valid service signature and `iss` = SERVICE_DID.
//
// Prints one JSON line per case:
//   {"case", "pass", "out" (receipt.out, CIDs as strings), "expected", "signature": "ok" | error,
//    "issuer", "clock" (the clock DID), "why" (on failure)}
// Exit status: 0 if every case passed, 1 on a mismatch, 2 on usage errors or a crash.
// Only talks to URL. Setup: cd tests/js && npm ci (pinned versions; nothing fetched at run time).

import * as ed25519 from '@ucanto/principal/ed25519'
import { Verifier } from '@ucanto/principal'
import { delegate } from '@ucanto/core'
import * as DID from '@ipld/dag-ucan/did'
import * as Clock from '@web3-storage/clock/client'
import * as ClockCaps from '@web3-storage/clock/capabilities'
import { EventBlock } from '@web3-storage/pail/clock'

const [url, serviceDID, serviceKeyDID] = process.argv.slice(2)
if (!url || !serviceDID) {
  console.error('usage: node clock-client-interop.mjs URL SERVICE_DID [SERVICE_KEY_DID]')
  process.exit(2)
}

const seed = n => new Uint8Array(32).fill(n)
// receipt.out as plain JSON with links as CID strings (a CID's toJSON gives {"/": "…"}).
const plain = value =>
  JSON.parse(JSON.stringify(value ?? null, (k, v) =>
    (v && typeof v === 'object' && typeof v['/'] === 'string' && Object.keys(v).length === 1) ? v['/'] : v))

let failures = 0

/** Checks one receipt: the service signature, the issuer, and `check(out)` (null = ok, else why). */
async function report (name, receipt, expected, check, verifier, clock) {
  const out = plain(receipt.out)
  const sig = await receipt.verifySignature(verifier)
  const signature = sig.ok ? 'ok' : { name: sig.error?.name, message: String(sig.error?.message ?? sig.error) }
  const issuer = receipt.issuer?.did()
  let why = check(receipt.out)
  if (!why && signature !== 'ok') why = `receipt signature does not verify with ${verifier.did()}`
  if (!why && issuer !== serviceDID) why = `receipt iss is ${issuer}, expected ${serviceDID}`
  const pass = !why
  if (!pass) failures++
  console.log(JSON.stringify({ case: name, pass, out, expected, signature, issuer, clock, ...(why ? { why } : {}) }))
}

const headIs = cids => out => {
  if (out.error) return `expected ok, got error ${out.error.name}: ${out.error.message}`
  const got = (out.ok?.head ?? []).map(String)
  const want = cids.map(String)
  return JSON.stringify(got) === JSON.stringify(want) ? null : `head ${JSON.stringify(got)} != ${JSON.stringify(want)}`
}

const errorIs = (name, message) => out => {
  if (!out.error) return `expected error ${name}, got ok ${JSON.stringify(plain(out.ok))}`
  if (out.error.name !== name) return `error name ${out.error.name}, expected ${name} (${out.error.message})`
  if (message !== undefined && out.error.message !== message) {
    return `error message ${JSON.stringify(out.error.message)}, expected ${JSON.stringify(message)}`
  }
  return null
}

try {
  const verifier = serviceKeyDID
    ? Verifier.parse(serviceKeyDID).withDID(serviceDID)
    : Verifier.parse(serviceDID)
  // The real client's own connect(): its `id` is the audience of every invocation it builds.
  const connection = Clock.connect({ servicePrincipal: DID.parse(serviceDID), serviceURL: new URL(url) })

  const clock = await ed25519.derive(seed(0x11))
  const alice = await ed25519.derive(seed(0x12))
  const bob = await ed25519.derive(seed(0x13))
  const mallory = await ed25519.derive(seed(0x14))
  const elsewhere = await ed25519.derive(seed(0x15))
  const owner = { issuer: clock, with: clock.did() }
  const on = (name, r, expected, check) => report(name, r, expected, check, verifier, clock.did())

  await on('head-empty', await Clock.head(owner, { connection }), { head: [] }, headIs([]))

  const e1 = await EventBlock.create({ n: 1 }, [])
  await on('advance-e1', await Clock.advance(owner, e1.cid, { connection, blocks: [e1] }),
    { head: [e1.cid.toString()] }, headIs([e1.cid]))

  const e2 = await EventBlock.create({ n: 2 }, [e1.cid])
  await on('advance-e2', await Clock.advance(owner, e2.cid, { connection, blocks: [e2, e1] }),
    { head: [e2.cid.toString()] }, headIs([e2.cid]))

  await on('head-after', await Clock.head(owner, { connection }), { head: [e2.cid.toString()] }, headIs([e2.cid]))

  const unauthorized =
    'Claim {"can":"clock/head"} is not authorized\n' +
    `  - Capability {"can":"clock/head","with":"${clock.did()}"} is not authorized because:\n` +
    `    - Capability can not be (self) issued by '${mallory.did()}'\n` +
    '    - Delegated capability not found'
  await on('unauthorized-issuer', await Clock.head({ issuer: mallory, with: clock.did() }, { connection }),
    { error: 'Unauthorized' }, errorIs('Unauthorized', unauthorized))

  const wrongAudience = await ClockCaps.head
    .invoke({ issuer: clock, audience: elsewhere, with: clock.did() })
    .execute(connection)
  await on('wrong-audience', wrongAudience, { error: 'InvalidAudience' },
    errorIs('InvalidAudience', `Expected literal "${serviceDID}" instead got "${elsewhere.did()}"`))

  const headProof = await ClockCaps.head.delegate({ issuer: clock, audience: bob, with: clock.did() })
  await on('delegated-head', await Clock.head({ issuer: bob, with: clock.did(), proofs: [headProof] }, { connection }),
    { head: [e2.cid.toString()] }, headIs([e2.cid]))

  // clock → alice (clock/*) → bob (clock/advance with no nb: any event), bob invokes.
  const toAlice = await delegate({
    issuer: clock,
    audience: alice,
    capabilities: [{ can: 'clock/*', with: clock.did() }]
  })
  const toBob = await ClockCaps.advance.delegate({ issuer: alice, audience: bob, with: clock.did(), proofs: [toAlice] })
  const e3 = await EventBlock.create({ n: 3 }, [e2.cid])
  await on('delegated-advance',
    await Clock.advance({ issuer: bob, with: clock.did(), proofs: [toBob] }, e3.cid, { connection, blocks: [e3] }),
    { head: [e3.cid.toString()] }, headIs([e3.cid]))

  await on('head-final', await Clock.head(owner, { connection }), { head: [e3.cid.toString()] }, headIs([e3.cid]))
} catch (err) {
  console.error(`clock-client-interop crashed: ${err?.stack ?? err}`)
  process.exit(2)
}
process.exit(failures === 0 ? 0 : 1)
