'use strict'
// Runs an in-memory PLC (@did-plc/server, mock DB) and a real @atproto/pds in
// one Node process, both bound to 127.0.0.1 only. Started by start.sh (stopped by
// stop.sh, SIGTERM to this process's PID) or by the Rust test helper `tests::pds`.
//
// Env (all optional except the data dir):
//   PDS_LOCAL_PLC_PORT (2582), PDS_LOCAL_PDS_PORT (2583), PDS_LOCAL_DATA_DIR (required,
//   start.sh makes a fresh temp dir), PDS_LOCAL_ADMIN_PASSWORD, PDS_LOCAL_STATE_FILE
//   (JSON written once healthy), LOG_ENABLED=true for PDS logs.
//   PDS_LOCAL_EXIT_ON_STDIN_EOF=1: shut down when standard input closes, so a test
//     process that dies (or never drops its handle) cannot leave the server behind.
//   PDS_LOCAL_REMOVE_DATA_ON_EXIT=1: delete the data dir after shutting down.
//   PDS_LOCAL_RATE_LIMIT=<points>/<ms>: turn the PDS's rate limits on and replace its
//     global per-IP limit (3000 per 5 min in @atproto/pds) with this one, so that tests
//     can reach a real 429 in a few requests. Responses then carry RateLimit-* headers.
// Once both servers listen, one line `pds-local-ready <state JSON>` goes to stdout.
const fs = require('node:fs')
const path = require('node:path')
const plc = require('@did-plc/server')
const { PDS, readEnv, envToCfg, envToSecrets } = require('@atproto/pds')
const { Secp256k1Keypair } = require('@atproto/crypto')
const ui8 = require('uint8arrays')

const HOST = '127.0.0.1'

// PDS_LOCAL_RATE_LIMIT: patch @atproto/xrpc-server's createServer (the module the PDS
// itself loads) so that the global limit is ours. Only the numbers change; the PDS's own
// rate limiter code still answers (429 RateLimitExceeded, RateLimit-* headers).
function overrideGlobalRateLimit(spec) {
  const m = /^(\d+)\/(\d+)$/.exec(spec)
  if (!m) throw new Error(`PDS_LOCAL_RATE_LIMIT must be <points>/<ms>, got ${spec}`)
  const points = parseInt(m[1], 10)
  const durationMs = parseInt(m[2], 10)
  const pdsDir = path.dirname(require.resolve('@atproto/pds/package.json'))
  const serverModule = require(require.resolve('@atproto/xrpc-server/dist/server.js', { paths: [pdsDir] }))
  const create = serverModule.createServer
  serverModule.createServer = (lexicons, opts) => {
    if (opts && opts.rateLimits) {
      opts.rateLimits.global = [{ name: 'global-ip', durationMs, points }]
    }
    return create(lexicons, opts)
  }
  process.env.PDS_RATE_LIMITS_ENABLED = 'true'
}

// Express's app.listen(port) binds every interface; pin it to loopback.
function bindLoopback(app) {
  const listen = app.listen.bind(app)
  app.listen = (port, ...rest) => listen(port, HOST, ...rest)
}

async function main() {
  const plcPort = parseInt(process.env.PDS_LOCAL_PLC_PORT || '2582', 10)
  const pdsPort = parseInt(process.env.PDS_LOCAL_PDS_PORT || '2583', 10)
  const dataDir = process.env.PDS_LOCAL_DATA_DIR
  if (!dataDir) throw new Error('PDS_LOCAL_DATA_DIR is required')
  fs.mkdirSync(path.join(dataDir, 'blobs'), { recursive: true })
  fs.mkdirSync(path.join(dataDir, 'blobs-tmp'), { recursive: true })
  const adminPassword = process.env.PDS_LOCAL_ADMIN_PASSWORD || 'pds-local-admin'
  const plcUrl = `http://${HOST}:${plcPort}`

  if (process.env.PDS_LOCAL_RATE_LIMIT) overrideGlobalRateLimit(process.env.PDS_LOCAL_RATE_LIMIT)

  const plcServer = plc.PlcServer.create({ db: plc.Database.mock(), port: plcPort })
  bindLoopback(plcServer.app)
  await plcServer.start()

  const rotation = await Secp256k1Keypair.create({ exportable: true })
  // Everything points at loopback; nothing here may reach the internet.
  const env = {
    PDS_HOSTNAME: 'localhost', // public URL becomes http://localhost:<port>
    PDS_PORT: String(pdsPort),
    PDS_DEV_MODE: 'true',
    PDS_DATA_DIRECTORY: dataDir,
    PDS_BLOBSTORE_DISK_LOCATION: path.join(dataDir, 'blobs'),
    PDS_BLOBSTORE_DISK_TMP_LOCATION: path.join(dataDir, 'blobs-tmp'),
    PDS_JWT_SECRET: 'pds-local-jwt-secret',
    PDS_ADMIN_PASSWORD: adminPassword,
    PDS_PLC_ROTATION_KEY_K256_PRIVATE_KEY_HEX: ui8.toString(await rotation.export(), 'hex'),
    PDS_DID_PLC_URL: plcUrl,
    PDS_SERVICE_HANDLE_DOMAINS: '.test',
    PDS_INVITE_REQUIRED: 'false',
    PDS_RATE_LIMITS_ENABLED: 'false',
    PDS_DISABLE_SSRF_PROTECTION: 'true',
    PDS_CRAWLERS: '',
    // putPreferences/getPreferences only exist when an app view is configured.
    // It is never contacted by these scripts; the URL is a closed loopback port.
    PDS_BSKY_APP_VIEW_URL: `http://${HOST}:9`,
    PDS_BSKY_APP_VIEW_DID: 'did:web:appview.invalid',
    PDS_BLOB_UPLOAD_LIMIT: String(10 * 1024 * 1024),
  }
  // Anything the caller set explicitly (PDS_*) wins.
  for (const [k, v] of Object.entries(env)) {
    if (process.env[k] === undefined) process.env[k] = v
  }
  const cfgEnv = readEnv()
  const pds = await PDS.create(envToCfg(cfgEnv), envToSecrets(cfgEnv))
  bindLoopback(pds.app)
  await pds.start()

  const state = {
    pid: process.pid,
    plcUrl,
    pdsUrl: `http://${HOST}:${pdsPort}`,
    pdsPublicUrl: `http://localhost:${pdsPort}`,
    pdsServiceDid: pds.ctx.cfg.service.did,
    handleDomain: '.test',
    adminUser: 'admin',
    adminPassword,
    dataDir,
    pdsVersion: require('@atproto/pds/package.json').version,
    startedAt: new Date().toISOString(),
  }
  if (process.env.PDS_LOCAL_STATE_FILE) {
    const tmp = process.env.PDS_LOCAL_STATE_FILE + '.tmp'
    fs.writeFileSync(tmp, JSON.stringify(state, null, 2) + '\n')
    fs.renameSync(tmp, process.env.PDS_LOCAL_STATE_FILE)
  }
  console.log(`pds-local-ready ${JSON.stringify(state)}`)
  console.log(`pds-local: PLC ${plcUrl}  PDS ${state.pdsUrl} (public ${state.pdsPublicUrl})  pid ${process.pid}`)

  let stopping = false
  const stop = async (sig) => {
    if (stopping) return
    stopping = true
    console.log(`pds-local: ${sig}, shutting down`)
    try {
      await pds.destroy()
      await plcServer.destroy()
    } catch (e) {
      console.error('pds-local: shutdown error', e)
    }
    if (process.env.PDS_LOCAL_REMOVE_DATA_ON_EXIT === '1') {
      fs.rmSync(dataDir, { recursive: true, force: true })
    }
    process.exit(0)
  }
  process.on('SIGTERM', () => stop('SIGTERM'))
  process.on('SIGINT', () => stop('SIGINT'))
  if (process.env.PDS_LOCAL_EXIT_ON_STDIN_EOF === '1') {
    process.stdin.on('end', () => stop('stdin closed'))
    process.stdin.on('error', () => stop('stdin error'))
    process.stdin.resume()
  }
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
