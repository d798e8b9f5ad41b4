// check-access.mjs: ask the real ucanto validator whether an invocation is authorized.
//
// Usage: node check-access.mjs ARCHIVE ABILITY AUTHORITY_DID AUTHORITY_KEY_DID [ARCHIVE ABILITY AUTHORITY_DID AUTHORITY_KEY_DID]...
//
//   ARCHIVE            a delegation archive (`Delegation.archive`, what `Delegation::archive` in
//                      the Rust crate `proto` writes) holding the invocation and its proofs
//   ABILITY            which capability parser to check it against: space/blob/add, upload/add,
//                      space/index/add, space/info (@storacha/capabilities 2.3.1), clock/head,
//                      clock/advance (@web3-storage/clock 0.4.1 capabilities)
//   AUTHORITY_DID      the service the invocation is checked for (`access()`'s `authority`,
//                      trusted for `ucan/attest`), e.g. did:web:up.storacha.test
//   AUTHORITY_KEY_DID  the did:key that signs for AUTHORITY_DID (the same DID for a did:key
//                      authority); the verifier is Verifier.parse(KEY).withDID(AUTHORITY_DID)
//
// Several cases may be given in one run, four arguments each. For each it runs
// `access(invocation, {capability, authority, principal: Verifier,
//  validateAuthorization: () => ({ok: {}})})` from @ucanto/validator 10.0.1, exactly as
// gen-ucan-fixtures.mjs does for the `access` fixtures, and prints one JSON line:
//   {"archive": ARCHIVE, "ability": ABILITY, "ok": true}
//   {"archive": ARCHIVE, "ability": ABILITY, "error": {"name": …, "message": …}}
// Like `access()` itself it does not check the invocation's audience (servers do that first).
// Exit status: 0 when every case was checked (whatever the verdicts), 2 on usage errors or an
// archive that does not extract.
//
// Error messages embed dates (`has expired on …`): run with TZ=UTC LC_ALL=C to get the text the
// fixtures hold (the Rust tests do). Only reads the given files; nothing touches the network.
// Setup: cd tests/js && npm ci   (pinned versions in package.json).

import { readFileSync } from 'node:fs'
import { Delegation } from '@ucanto/core'
import { Verifier } from '@ucanto/principal'
import { access } from '@ucanto/validator'
import { SpaceBlob, Upload, SpaceIndex, Space } from '@storacha/capabilities'
import * as ClockCaps from '@web3-storage/clock/capabilities'

const PARSERS = {
  'space/blob/add': SpaceBlob.add,
  'upload/add': Upload.add,
  'space/index/add': SpaceIndex.add,
  'space/info': Space.info,
  'clock/head': ClockCaps.head,
  'clock/advance': ClockCaps.advance
}

const usage = msg => {
  console.error(`${msg}\nusage: node check-access.mjs ARCHIVE ABILITY AUTHORITY_DID AUTHORITY_KEY_DID [ARCHIVE ABILITY AUTHORITY_DID AUTHORITY_KEY_DID]...`)
  process.exit(2)
}

const args = process.argv.slice(2)
if (args.length === 0 || args.length % 4 !== 0) usage('expected groups of four arguments')

for (let i = 0; i < args.length; i += 4) {
  const [archive, ability, authorityDID, authorityKey] = args.slice(i, i + 4)
  const capability = PARSERS[ability]
  if (!capability) usage(`unknown ability ${ability}; known: ${Object.keys(PARSERS).join(', ')}`)
  let authority
  try {
    authority = authorityKey === authorityDID
      ? Verifier.parse(authorityKey)
      : Verifier.parse(authorityKey).withDID(authorityDID)
  } catch (err) {
    usage(`cannot make a verifier for ${authorityDID} (key ${authorityKey}): ${err.message}`)
  }
  let bytes
  try {
    bytes = new Uint8Array(readFileSync(archive))
  } catch (err) {
    usage(`cannot read ${archive}: ${err.message}`)
  }
  const extracted = await Delegation.extract(bytes)
  if (extracted.error) usage(`${archive}: not a delegation archive: ${extracted.error.message}`)
  const result = await access(extracted.ok, {
    capability,
    authority,
    principal: Verifier,
    validateAuthorization: () => ({ ok: {} })
  })
  const line = { archive, ability }
  if (result.ok) line.ok = true
  else line.error = { name: result.error.name, message: result.error.message }
  console.log(JSON.stringify(line))
}
