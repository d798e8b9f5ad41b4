// ed25519-verdicts.mjs: the JS verdict on Ed25519 signature checks, through ucanto's own
// ed25519 verifier (@ucanto/principal, which calls @noble/ed25519 1.7's verify).
//
// Usage: node ed25519-verdicts.mjs CASES.json
// CASES.json: [{"name", "key": hex(32), "message": hex, "signature": hex(64)}, ...]
// Prints one JSON array of booleans, in order: does the JS verifier accept the signature?
// A check that throws (a key or R that is not a curve point) counts as rejected, as a ucanto
// server treats it.

import { readFileSync } from 'node:fs'
import { Verifier } from '@ucanto/principal/ed25519'

const EDDSA = 0xd0ed
const hex = (s) => Uint8Array.from(Buffer.from(s, 'hex'))
const cases = JSON.parse(readFileSync(process.argv[2], 'utf8'))
const verdicts = []
for (const c of cases) {
  try {
    const verifier = Verifier.decode(new Uint8Array([0xed, 0x01, ...hex(c.key)]))
    verdicts.push(Boolean(await verifier.verify(hex(c.message), { code: EDDSA, raw: hex(c.signature) })))
  } catch {
    verdicts.push(false)
  }
}
console.log(JSON.stringify(verdicts))
