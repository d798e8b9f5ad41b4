// What the real @storacha/client sees in a Space: `upload/list` and `space/blob/list`, every
// page. The Rust tests run it to check that what our client uploaded is there.
//
//   node list.mjs <service url> <agent key (ucanto text, M…)> <delegation (proof text)>
//
// The agent key and the delegation (Space → agent, granting upload/list and space/blob/list)
// are what `@storacha/client` calls "bring your own agent": `principal` plus `Proof.parse`.
// Prints one JSON line: {"space", "uploads": [{"root", "shards"}], "blobs": [{"digest", "size"}]}
// (digests as base58btc multihash strings, CIDs as strings).
import * as Client from '@storacha/client'
import { StoreMemory } from '@storacha/client/stores/memory'
import * as Proof from '@storacha/client/proof'
import { Signer } from '@storacha/client/principal/ed25519'
import * as DID from '@ipld/dag-ucan/did'
import { CAR, HTTP } from '@ucanto/transport'
import { connect } from '@ucanto/client'
import { base58btc } from 'multiformats/bases/base58'

const [serviceURL, agentKey, proofText] = process.argv.slice(2)
// The service caches receipts by invocation CID, and two listings in the same second are
// otherwise the same invocation (same issuer, capability and expiry): each gets a nonce, so the
// second listing is not the first one's cached answer.
const nonce = () => crypto.randomUUID()
const url = new URL(serviceURL)
const { id } = await (await fetch(url)).json()
const conn = connect({ id: DID.parse(id), codec: CAR.outbound, channel: HTTP.open({ url, method: 'POST' }) })
const client = await Client.create({
  principal: Signer.parse(agentKey),
  store: new StoreMemory(),
  serviceConf: { access: conn, upload: conn, filecoin: conn, gateway: conn },
  receiptsEndpoint: new URL('/receipt/', url),
})
const space = await client.addSpace(await Proof.parse(proofText))
await client.setCurrentSpace(space.did())

const uploads = []
let cursor
do {
  const page = await client.capability.upload.list({ cursor, size: 100, nonce: nonce() })
  for (const u of page.results) uploads.push({ root: u.root.toString(), shards: (u.shards ?? []).map(String) })
  cursor = page.results.length === 100 ? page.cursor : undefined
} while (cursor)

const blobs = []
cursor = undefined
do {
  const page = await client.capability.blob.list({ cursor, size: 100, nonce: nonce() })
  for (const b of page.results) blobs.push({ digest: base58btc.encode(b.blob.digest), size: b.blob.size })
  cursor = page.results.length === 100 ? page.cursor : undefined
} while (cursor)

console.log(JSON.stringify({ space: space.did(), uploads, blobs }))
process.exit(0)
