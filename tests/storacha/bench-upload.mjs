// The JS side of scripts/bench-storacha: the real @storacha/client uploads a CAR file (the same
// blocks our Rust client uploads) to the local service, with the same shard size.
//
//   node bench-upload.mjs <service url> <car file> <shard size> [piece]
//
// The client logs in (auto-confirmed), creates and provisions a Space, then `uploadCAR`: it
// re-shards the CAR, stores each shard (blob/add, PUT, conclude, accept), the index and the
// upload. With `piece` it also computes each shard's Filecoin piece CID and sends
// `filecoin/offer`, as it does by default; without, that step (which our client does not do) is
// off. Prints one JSON line: wall ms, CPU ms (user, system), peak RSS bytes, root.
import * as fs from 'node:fs'
import * as Client from '@storacha/client'
import { StoreMemory } from '@storacha/client/stores/memory'
import * as DID from '@ipld/dag-ucan/did'
import { CAR, HTTP } from '@ucanto/transport'
import { connect } from '@ucanto/client'

const [serviceURL, carPath, shardSize, piece] = process.argv.slice(2)
const url = new URL(serviceURL)
const { id } = await (await fetch(url)).json()
const conn = connect({ id: DID.parse(id), codec: CAR.outbound, channel: HTTP.open({ url, method: 'POST' }) })
const client = await Client.create({
  store: new StoreMemory(),
  serviceConf: { access: conn, upload: conn, filecoin: conn, gateway: conn },
  receiptsEndpoint: new URL('/receipt/', url),
})
const account = await client.login(`bench-${Date.now()}@example.com`)
const space = await client.createSpace('bench', { account, skipGatewayAuthorization: true })
await client.setCurrentSpace(space.did())

const car = await fs.openAsBlob(carPath)
const cpu0 = process.cpuUsage()
const t0 = performance.now()
const root = await client.uploadCAR(car, {
  shardSize: Number(shardSize),
  ...(piece === 'piece' ? {} : { pieceHasher: null }),
})
const ms = performance.now() - t0
const cpu = process.cpuUsage(cpu0)
console.log(JSON.stringify({
  ms, userMs: cpu.user / 1000, systemMs: cpu.system / 1000,
  maxRssBytes: process.resourceUsage().maxRSS * 1024, root: root.toString(),
}))
process.exit(0)
