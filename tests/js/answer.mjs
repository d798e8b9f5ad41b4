// answer.mjs: answer ucanto request CARs with the real w3clock server code, in-process.
//
// Usage: node answer.mjs SERVICE_KEY [--did SERVICE_DID] REQ.car RESP.car [REQ.car RESP.car]...
//
//   SERVICE_KEY  the service's private key in ucanto's text format (`ed25519.format`, "M…"; what
//                `Ed25519Signer::format` in the Rust crate `proto` writes)
//   --did DID    act as DID (e.g. did:web:clock.web3.storage), signing with SERVICE_KEY
//   REQ RESP     a request CAR to answer and the file to write the response CAR to
//
// The server is w3clock 0.4.1's own: `createServer` + `provide` from @web3-storage/clock/server
// (with the @ucanto/server 10 / @ucanto/validator 9 nested under it), the in-memory clock of
// gen-ucan-fixtures.mjs (a head and a block map per clock DID, pail 0.5.0 `advance`). All
// requests go to ONE server in the order given, so state carries over (advance, then head).
// Stack traces are disabled, so error receipts carry no host-specific `stack`.
// Prints one JSON line per request: {"request": REQ, "response": RESP, "status": <HTTP status>}.
// Exit status: 0 when every request got a 200 answer, 1 otherwise, 2 on usage errors.
// Only reads and writes the given files; nothing touches the network.
// Setup: cd tests/js && npm ci   (pinned versions in package.json).

import { readFileSync, writeFileSync, statSync } from 'node:fs'
import * as ed25519 from '@ucanto/principal/ed25519'
import * as CAR from '@ucanto/transport/car'
import { createServer, provide } from '@web3-storage/clock/server'
import * as ClockCaps from '@web3-storage/clock/capabilities'

Error.prepareStackTrace = () => undefined

const usage = msg => {
  console.error(`${msg}\nusage: node answer.mjs SERVICE_KEY [--did SERVICE_DID] REQ.car RESP.car [REQ.car RESP.car]...`)
  process.exit(2)
}

const args = process.argv.slice(2)
const keyText = args.shift()
if (!keyText) usage('missing SERVICE_KEY')
let did
if (args[0] === '--did') {
  args.shift()
  did = args.shift()
  if (!did) usage('--did needs a DID')
}
if (args.length === 0 || args.length % 2 !== 0) usage('expected REQ RESP pairs')

let signer
try {
  signer = ed25519.parse(keyText)
  if (did) signer = signer.withDID(did)
} catch (err) {
  usage(`invalid SERVICE_KEY: ${err.message}`)
}

// w3clock runs pail 0.5.0 from its own nested node_modules; resolve it the way Node would from
// inside the clock package (as gen-ucan-fixtures.mjs does).
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
const PailClock = await resolveFromClock('@web3-storage/pail', './src/clock/index.js')

const clocks = new Map()
const state = id => {
  let s = clocks.get(id)
  if (!s) clocks.set(id, (s = { head: [], blocks: new Map() }))
  return s
}
const service = {
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
const server = createServer(signer, service)

let failed = false
for (let i = 0; i < args.length; i += 2) {
  const [request, response] = [args[i], args[i + 1]]
  let body
  try {
    body = new Uint8Array(readFileSync(request))
  } catch (err) {
    usage(`cannot read ${request}: ${err.message}`)
  }
  const headers = { 'content-type': CAR.contentType, accept: CAR.contentType }
  const reply = await server.request({ headers, body })
  const status = reply.status ?? 200
  if (status !== 200) failed = true
  writeFileSync(response, reply.body)
  console.log(JSON.stringify({ request, response, status }))
}
process.exit(failed ? 1 : 0)
