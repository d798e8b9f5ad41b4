// Local Storacha upload service for tests: the real @storacha/upload-api handlers wired to the
// package's own in-memory test context (stores, mock storage nodes, indexing service), served
// over HTTP on 127.0.0.1. Adapted from the project's research notes (local-storacha.md §3).
//
// Environment:
//   PORT=<n>                          listen port (default 0: a free one; the ready line says which)
//   STORACHA_LOCAL_EXIT_ON_STDIN_EOF=1 shut down when standard input closes (the Rust harness)
//   STORACHA_LOCAL_REMOVE_ON_EXIT=<dir> delete this directory on shutdown (the harness's log dir)
//   RECEIPT_FORM=conclude             serve /receipt/ in production's ucan/conclude form
//
// Ready signal: one JSON line on stdout, {"url","did","key","storageNodes"}.
//
// Routes besides the ucanto endpoint (POST /): GET / (service identity), GET /receipt/<task>
// (a stored receipt, 404 until it exists), GET /receipt-conclude/<task> (the same receipt in
// production's other form: a ucan/conclude invocation with the receipt attached),
// GET /receipt-never/<task> (always 404: a receipt that never comes), and test-only
// POST /test/provision, POST /test/fail-put, GET /blob/<cid>, GET /ipfs/<cid>.
import * as fs from 'node:fs'
import * as http from 'node:http'
import { createContext } from '@storacha/upload-api/test/context'
import { confirmConfirmationUrl, provisionProvider } from '@storacha/upload-api/test/utils'
import { DigestMap } from '@storacha/blob-index'
import * as UCAN from '@storacha/capabilities/ucan'
import * as DidMailto from '@storacha/did-mailto'
import { ed25519, Absentee } from '@ucanto/principal'
import { Delegation, Message } from '@ucanto/core'
import { CAR } from '@ucanto/transport'
import { parseLink } from '@ucanto/server'
import * as Digest from 'multiformats/hashes/digest'
import { base58btc } from 'multiformats/bases/base58'
import { CID } from 'multiformats/cid'

let PORT = Number(process.env.PORT ?? 0)
const HOST = '127.0.0.1'

// PUT failures a test asked for: base58btc multihash -> { status, count }. The storage nodes'
// PUT URLs name the blob's multihash, so a test can make one blob's PUT fail without touching
// anyone else's.
const failPuts = new Map()

// createContext starts internal HTTP servers with listen(cb) = all interfaces,
// random port. Give it an `http` shim whose servers bind to 127.0.0.1 only, and whose
// handlers honour the PUT failures above (only the storage nodes take PUTs).
const loopbackHttp = {
  ...http,
  createServer: (...args) => {
    const handler = args.find((a) => typeof a === 'function')
    const rest = args.filter((a) => typeof a !== 'function')
    const srv = http.createServer(...rest, (req, res) => {
      // The mock storage node calls response.destroy() right after end(), which cuts off a
      // body larger than the socket buffer (a 64 MiB GET arrives truncated). Destroy only once
      // the response is flushed.
      const destroy = res.destroy.bind(res)
      res.destroy = (...a) => (res.writableFinished ? destroy(...a) : (res.once('finish', () => destroy(...a)), res))
      if (req.method === 'PUT') {
        for (const [digest, rule] of failPuts) {
          if (rule.count > 0 && (req.url ?? '').includes(digest)) {
            rule.count--
            req.resume()
            res.writeHead(rule.status)
            return res.end('injected PUT failure')
          }
        }
      }
      return handler?.(req, res)
    })
    const listen = srv.listen.bind(srv)
    srv.listen = (...a) => (typeof a[0] === 'function' ? listen(0, HOST, a[0]) : listen(...a))
    return srv
  },
}
const ctx = await createContext({
  http: loopbackHttp, // with `http`, the 3 mock storage nodes are real HTTP servers
  requirePaymentPlan: false,
  assert: { fail: (e) => console.error('[service error]', e) },
})

// The in-memory indexing and claims services are reached with a delegation the test context
// signs at start-up with ucanto's default lifetime (30 s): after that, every space/index/add
// fails with `Unauthorized: … has expired`. Re-sign those delegations without expiry.
for (const svc of [ctx.indexingService, ctx.claimsService]) {
  const cfg = svc?.invocationConfig
  const signer = svc?.connection?.id
  if (!cfg || !signer?.sign) continue
  const renewed = await Promise.all(cfg.proofs.map((p) =>
    Delegation.delegate({ issuer: signer, audience: p.audience, capabilities: p.capabilities, expiration: Infinity })))
  cfg.proofs.splice(0, cfg.proofs.length, ...renewed)
}

// access/authorize sends a "validation email": click it automatically, and
// give the account a plan (some clients wait for plan/get before provisioning).
ctx.email.sendValidation = async (opts) => {
  console.log('[email] auto-confirming login for', opts.to)
  await ctx.plansStorage.initialize(DidMailto.fromEmail(opts.to), 'test:billing', 'did:web:starter.storacha.network')
  setTimeout(() => confirmConfirmationUrl(ctx.connection, opts).catch((e) => console.error('[email] confirm failed', e)), 10)
}

// gateway-lite bookkeeping: block multihash -> { shard, offset, length }, fed
// from every index that space/index/add publishes.
const blockLocations = new DigestMap()
const origPublish = ctx.ipniService.publish.bind(ctx.ipniService)
ctx.ipniService.publish = async (space, providers, index) => {
  for (const [shard, slices] of index.shards)
    for (const [digest, [offset, length]] of slices) blockLocations.set(digest, { shard, offset, length })
  return origPublish(space, providers, index)
}
// read a whole blob: location claim (from blob/accept) -> storage node GET
const readBlob = async (digest) => {
  const r = await ctx.blobRetriever.stream(digest)
  return r.ok ? new Uint8Array(await new Response(r.ok).arrayBuffer()) : undefined
}

const agent = ctx.connection.channel // the upload-api ucanto server
const readBody = async (req) => {
  const chunks = []
  for await (const c of req) chunks.push(c)
  return new Uint8Array(Buffer.concat(chunks))
}
const send = (res, status, body = '', headers = {}) => { res.writeHead(status, headers); res.end(body) }

const server = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url ?? '/', `http://${HOST}:${PORT}`)
    const p = url.pathname
    // ucanto endpoint (CAR in, CAR out)
    if (req.method === 'POST' && p === '/') {
      const headers = Object.fromEntries(Object.entries(req.headers).map(([k, v]) => [k, String(v)]))
      const out = await agent.request({ headers, body: await readBody(req) })
      return send(res, out.status ?? 200, out.body, out.headers)
    }
    // service identity (did:web + the random did:key behind it)
    if (req.method === 'GET' && p === '/')
      return send(res, 200, JSON.stringify({ id: ctx.id.did(), key: ctx.id.toDIDKey() }), { 'content-type': 'application/json' })
    // receipts endpoint used by clients to poll blob/accept: GET /receipt/<task cid>
    // (/receipt-conclude/ always serves the conclude form; /receipt-never/ never finds one)
    const receiptRoute = ['/receipt/', '/receipt-conclude/', '/receipt-never/'].find((r) => p.startsWith(r))
    if (req.method === 'GET' && receiptRoute) {
      if (receiptRoute === '/receipt-never/') return send(res, 404)
      const r = await ctx.agentStore.receipts.get(parseLink(p.slice(receiptRoute.length)))
      if (r.error) return send(res, 404)
      // Production returns the stored agent message that carried the receipt;
      // that can be a message whose *invocation* is a ucan/conclude with the
      // receipt attached. ?form=conclude (or RECEIPT_FORM=conclude) emulates it.
      let msg
      const form = receiptRoute === '/receipt-conclude/' ? 'conclude' : (url.searchParams.get('form') ?? process.env.RECEIPT_FORM)
      if (form === 'conclude') {
        const blocks = [...r.ok.iterateIPLDBlocks()]
        // attached blocks must be referenced from facts (as upload-client does)
        const facts = [{ ...blocks.map((b) => b.cid) }]
        const inv = UCAN.conclude.invoke({ issuer: ctx.id, audience: ctx.id, with: ctx.id.did(), nb: { receipt: r.ok.link() }, expiration: Infinity, facts })
        for (const b of blocks) inv.attach(b)
        msg = await Message.build({ invocations: [await inv.delegate()] })
      } else msg = await Message.build({ receipts: [r.ok] })
      const enc = CAR.request.encode(msg)
      return send(res, 200, enc.body, enc.headers)
    }
    // test-only: make the next `count` PUTs of one blob (z-multihash) answer `status`
    if (req.method === 'POST' && p === '/test/fail-put') {
      const { digest, status = 500, count = 1 } = JSON.parse(new TextDecoder().decode(await readBody(req)))
      failPuts.set(digest, { status, count })
      return send(res, 200, '{}', { 'content-type': 'application/json' })
    }
    // test-only: provision a space through the real provider/add handler
    if (req.method === 'POST' && p === '/test/provision') {
      const { space, email = 'test@example.com' } = JSON.parse(new TextDecoder().decode(await readBody(req)))
      const account = Absentee.from({ id: DidMailto.fromEmail(email) })
      await ctx.plansStorage.initialize(account.did(), 'test:billing', 'did:web:starter.storacha.network')
      const r = await provisionProvider({
        service: ctx.id, agent: await ed25519.generate(), space: { did: () => space }, account, connection: ctx.connection,
      })
      return send(res, r.out.ok ? 200 : 400, JSON.stringify(r.out), { 'content-type': 'application/json' })
    }
    // test-only read-back: whole blob (e.g. a CAR shard) by CID or z-multihash
    if (req.method === 'GET' && p.startsWith('/blob/')) {
      const key = p.slice(6)
      const digest = key.startsWith('z') ? Digest.decode(base58btc.decode(key)) : CID.parse(key).multihash
      const bytes = await readBlob(digest)
      return bytes ? send(res, 200, bytes, { 'content-type': 'application/octet-stream' }) : send(res, 404)
    }
    // test-only read-back: one block by CID (like a trustless gateway ?format=raw)
    if (req.method === 'GET' && p.startsWith('/ipfs/')) {
      const cid = CID.parse(p.slice(6))
      const loc = blockLocations.get(cid.multihash)
      const shard = loc && (await readBlob(loc.shard))
      if (!shard) return send(res, 404)
      return send(res, 200, shard.subarray(loc.offset, loc.offset + loc.length), { 'content-type': 'application/vnd.ipld.raw' })
    }
    send(res, 404)
  } catch (e) {
    console.error(e)
    send(res, 500, String(e))
  }
})

// Node closes idle keep-alive sockets after 5 s; a client whose event loop is
// busy (e.g. the JS client piece-hashing a big shard) then reuses a dead socket
// ("other side closed"). Keep idle sockets much longer.
server.keepAliveTimeout = 120_000
server.headersTimeout = 125_000
server.listen(PORT, HOST, () => {
  PORT = server.address().port
  console.log(JSON.stringify({
    url: `http://${HOST}:${PORT}`, did: ctx.id.did(), key: ctx.id.toDIDKey(),
    storageNodes: ctx.storageProviders.map((n) => ({ did: n.id.did(), port: n.server.address().port })),
  }))
})
const stop = () => {
  server.close()
  // The harness's scratch directory (its log): gone with the service, even when the harness
  // itself never gets to clean up (a shared service outlives every test).
  if (process.env.STORACHA_LOCAL_REMOVE_ON_EXIT) fs.rmSync(process.env.STORACHA_LOCAL_REMOVE_ON_EXIT, { recursive: true, force: true })
  process.exit(0)
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
if (process.env.STORACHA_LOCAL_EXIT_ON_STDIN_EOF === '1') {
  process.stdin.on('end', stop)
  process.stdin.on('error', stop)
  process.stdin.resume()
}
