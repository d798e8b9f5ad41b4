// The JS side of `scripts/bench-proto`: the same three operations as `cargo bench -p proto`,
// done by the real JS implementation (@ucanto/core, @ucanto/transport, @ucanto/principal).
//   advance_request/decode_verify  decode the golden clock/advance request CAR, verify the UCAN
//   chain3/decode_verify           decode a request resting on a 3-link chain, verify every link
//   chain3/decode_validate         the same through @ucanto/validator access() (clock/head)
//   receipt/encode_sign            issue + sign a receipt, encode the response CAR
// Usage: node bench-proto.mjs [seconds-per-benchmark=3]
import { readFileSync } from 'node:fs'
import * as ed25519 from '@ucanto/principal/ed25519'
import { Verifier } from '@ucanto/principal'
import { Message, Receipt, delegate, invoke } from '@ucanto/core'
import * as CAR from '@ucanto/transport/car'
import * as UCAN from '@ipld/dag-ucan'
import { access } from '@ucanto/validator'
import * as ClockCaps from '@web3-storage/clock/capabilities'

const seconds = Number(process.argv[2] ?? 3)
const headers = { 'content-type': 'application/vnd.ipld.car' }
const advance = new Uint8Array(readFileSync(new URL('../../proto/tests/fixtures/golden/advance.car', import.meta.url)))

const verifyChain = async delegation => {
  const ok = await UCAN.verifySignature(delegation.data, Verifier.parse(delegation.issuer.did()))
  if (!ok) throw new Error('bad signature')
  for (const p of delegation.proofs) await verifyChain(p)
}

const decodeVerify = async body => {
  const msg = await CAR.request.decode({ headers, body })
  for (const inv of msg.invocations) await verifyChain(inv)
}

const bench = async (name, fn) => {
  const warm = performance.now()
  while (performance.now() - warm < 500) await fn()
  let n = 0
  const t0 = performance.now()
  while (performance.now() - t0 < seconds * 1000) { await fn(); n++ }
  const us = ((performance.now() - t0) * 1000) / n
  console.log(`js ${name}: ${us.toFixed(1)} µs/op (${n} iterations)`)
}

const seed = b => ed25519.derive(new Uint8Array(32).fill(b))
const [space, service, a, b, c] = await Promise.all([1, 2, 3, 4, 5].map(seed))
const link = (issuer, audience, can, proofs) =>
  delegate({ issuer, audience, capabilities: [{ can, with: space.did() }], expiration: 2000000000, proofs })
const d1 = await link(space, a, 'clock/*', [])
const d2 = await link(a, b, 'clock/*', [d1])
const d3 = await link(b, c, 'clock/head', [d2])
const inv = invoke({ issuer: c, audience: service, capability: { can: 'clock/head', with: space.did() }, expiration: 2000000000, proofs: [d3] })
const chain = CAR.request.encode(await Message.build({ invocations: [inv] })).body

const golden = await CAR.request.decode({ headers, body: advance })
const ran = golden.invocations[0]
const event = ran.capabilities[0].nb.event

await bench('advance_request/decode_verify', () => decodeVerify(advance))
await bench('chain3/decode_verify', () => decodeVerify(chain))
await bench('chain3/decode_validate', async () => {
  const msg = await CAR.request.decode({ headers, body: chain })
  const result = await access(msg.invocations[0], { capability: ClockCaps.head, authority: service.verifier ?? Verifier.parse(service.did()), principal: Verifier, validateAuthorization: () => ({ ok: {} }) })
  if (result.error) throw result.error
})
await bench('receipt/encode_sign', async () => {
  const receipt = await Receipt.issue({ issuer: service, ran, result: { ok: { head: [event] } } })
  CAR.response.encode(await Message.build({ receipts: [receipt] }))
})
