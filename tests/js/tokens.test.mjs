// Tokens at the automerge-repo door (?token=...): connections without a
// valid token are refused with an automerge-repo `error` message and closed;
// a token for another collection does not reach this one's documents; a
// read-only token reads but its changes go nowhere.

import assert from "node:assert/strict"
import { randomBytes } from "node:crypto"
import { writeFile } from "node:fs/promises"
import path from "node:path"
import { test } from "node:test"

import * as A from "@automerge/automerge"
import { cbor } from "@automerge/automerge-repo"
import WebSocket from "ws"

import {
  RELAY_ONLY,
  Scope,
  startServer,
  openRepo,
  connected,
  docSatisfies,
  hexHeads,
  changesSent,
  plain,
  serverHolds,
  accordGet,
  mintToken,
  withTimeout,
} from "./support/harness.mjs"

const CONTENT = { title: "secret plans", steps: ["one", "two"] }

/** A relay with one document D in `notes`, written by a client with a read-write token. */
async function relayWithDocument(t) {
  const scope = new Scope(t)
  const server = await startServer(scope)
  const token = await server.token("notes")
  const owner = openRepo(scope, server.doorUrl(token))
  await connected(owner.adapter)
  const handle = owner.repo.create(structuredClone(CONTENT))
  await serverHolds(owner.adapter, handle.documentId, hexHeads(handle))
  return { scope, server, token, owner, handle }
}

/**
 * Opens a raw WebSocket to `url`, sends an automerge-repo `join`, and
 * collects every message until the server closes the connection.
 */
function rawJoin(url, ms = 10_000) {
  return withTimeout(
    new Promise(resolve => {
      const result = { messages: [], opened: false, closed: false, httpStatus: undefined, error: undefined }
      const ws = new WebSocket(url)
      ws.binaryType = "nodebuffer"
      ws.on("unexpected-response", (_req, res) => {
        result.httpStatus = res.statusCode
        res.resume()
        resolve(result)
      })
      ws.on("error", e => {
        result.error = e.message
      })
      ws.on("open", () => {
        result.opened = true
        ws.send(
          cbor.encode({
            type: "join",
            senderId: `raw-${randomBytes(4).toString("hex")}`,
            peerMetadata: { isEphemeral: true },
            supportedProtocolVersions: ["1"],
          }),
        )
      })
      ws.on("message", data => {
        result.messages.push(cbor.decode(new Uint8Array(data)))
      })
      ws.on("close", (code, reason) => {
        result.closed = true
        result.code = code
        result.reason = reason.toString()
        resolve(result)
      })
    }),
    ms,
    `the relay to answer and close a refused connection to ${url}`,
  )
}

/**
 * Joins `url` over a raw WebSocket and sends one sync message for
 * `documentId` carrying every change of `fork` that `base` lacks, whatever
 * the relay advertised. Resolves with the relay's answer about that
 * document (its message type), or "closed" if it closed the connection.
 */
function pushChanges(url, documentId, fork, base, ms = 10_000) {
  const changes = A.getChanges(base, fork)
  assert.ok(changes.length > 0, "nothing to push")
  const data = A.encodeSyncMessage({
    heads: A.getHeads(fork),
    need: [],
    have: [{ lastSync: [], bloom: new Uint8Array() }],
    changes,
  })
  const senderId = `raw-${randomBytes(4).toString("hex")}`
  return withTimeout(
    new Promise((resolve, reject) => {
      const ws = new WebSocket(url)
      let pushed = false
      ws.on("error", reject)
      ws.on("open", () => {
        ws.send(cbor.encode({ type: "join", senderId, peerMetadata: { isEphemeral: true }, supportedProtocolVersions: ["1"] }))
      })
      ws.on("message", bytes => {
        const m = cbor.decode(new Uint8Array(bytes))
        if (m.type === "peer" && !pushed) {
          pushed = true
          ws.send(cbor.encode({ type: "sync", senderId, targetId: m.senderId, documentId, data }))
        } else if (pushed && m.documentId === documentId) {
          ws.close()
          resolve(m.type)
        } else if (m.type === "error") {
          reject(new Error(`the relay refused the raw client: ${m.message}`))
        }
      })
      ws.on("close", () => resolve("closed"))
    }),
    ms,
    `the relay to answer changes pushed to ${documentId}`,
  )
}

/** Asserts the raw protocol of a refusal: an `error` message, no `peer`, then close. */
function assertRefusedRaw(raw, what) {
  const shown = JSON.stringify({ ...raw, messages: raw.messages.map(m => ({ ...m, data: undefined })) })
  assert.equal(raw.httpStatus, undefined, `${what}: refused at the HTTP upgrade instead of by an automerge-repo error message: ${shown}`)
  assert.ok(raw.opened, `${what}: the WebSocket never opened: ${shown}`)
  assert.ok(!raw.messages.some(m => m.type === "peer"), `${what}: the relay accepted the join: ${shown}`)
  const errors = raw.messages.filter(m => m.type === "error")
  assert.equal(errors.length, 1, `${what}: expected one automerge-repo error message: ${shown}`)
  assert.equal(typeof errors[0].message, "string", `${what}: the error message has no text: ${shown}`)
  assert.ok(raw.closed, `${what}: the relay did not close the connection: ${shown}`)
  return errors[0].message
}

/** A stock JS client with `token` gets no peer, sees the socket close, and cannot find D. */
async function assertRefusedClient(scope, server, token, handle, what) {
  const intruder = openRepo(scope, server.doorUrl(token))
  const closedAfterError = new Promise(resolve => intruder.adapter.once("observed-close", resolve))
  let candidate = false
  intruder.adapter.on("peer-candidate", () => {
    candidate = true
  })
  await assert.rejects(
    withTimeout(intruder.repo.find(handle.url), 8_000, `${what}: find to settle`),
    e => {
      assert.match(e.message, /unavailable/, `${what}: find failed otherwise: ${e.message}`)
      return true
    },
    `${what}: find returned the document`,
  )
  await withTimeout(closedAfterError, 8_000, `${what}: the relay to close the stock client's socket (received: ${intruder.adapter.trace()})`)
  assert.equal(candidate, false, `${what}: the adapter was accepted as a peer`)
  assert.ok(intruder.adapter.received.some(m => m.type === "error"), `${what}: no error message (received: ${intruder.adapter.trace()})`)
  assert.ok(!intruder.adapter.received.some(m => m.documentId === handle.documentId), `${what}: received something of D`)
  await intruder.stop()
}

test("no token: refused with an error message, find gets nothing", { skip: RELAY_ONLY }, async t => {
  const { scope, server, handle } = await relayWithDocument(t)
  const reason = assertRefusedRaw(await rawJoin(server.doorUrl()), "no token")
  t.diagnostic(`relay's error: ${reason}`)
  await assertRefusedClient(scope, server, undefined, handle, "no token")
})

test("forged tokens: refused with an error message, find gets nothing", { skip: RELAY_ONLY }, async t => {
  const { scope, server, handle } = await relayWithDocument(t)
  const otherSecret = path.join(server.dir, "other-secret")
  await writeFile(otherSecret, randomBytes(32).toString("hex"))
  const forged = await mintToken(otherSecret, "notes")
  const valid = await server.token("notes")
  // Flip one character of the signature, keeping the alphabet.
  const last = valid.at(-2)
  const tampered = valid.slice(0, -2) + (last === "A" ? "B" : "A") + valid.at(-1)
  // Claims rewritten to grant `notes`, keeping a genuine token's signature.
  const [prefix, , signature] = (await server.token("elsewhere")).split(".")
  const claims = Buffer.from(JSON.stringify({ exp: Math.floor(Date.now() / 1000) + 3600, c: { notes: "rw" } })).toString("base64url")
  const widened = [prefix, claims, signature].join(".")
  for (const [what, token] of [
    ["signed with another secret", forged],
    ["tampered signature", tampered],
    ["claims rewritten to grant notes", widened],
    ["not a token", "not-a-token"],
  ]) {
    const reason = assertRefusedRaw(await rawJoin(server.doorUrl(token)), what)
    t.diagnostic(`${what}: relay's error: ${reason}`)
  }
  await assertRefusedClient(scope, server, forged, handle, "signed with another secret")
})

test("an expired token: refused with an error message, find gets nothing", { skip: RELAY_ONLY }, async t => {
  const { scope, server, handle } = await relayWithDocument(t)
  const token = await server.token("notes", { ttl: "1s" })
  const mintedBy = Date.now()
  // The token's expiry is in whole seconds (minting second + TTL), so it has
  // passed at the next whole second after minting. Time itself is the
  // subject here, so wait for it.
  const expiresBy = (Math.floor(mintedBy / 1000) + 1) * 1000
  await new Promise(resolve => setTimeout(resolve, expiresBy - Date.now() + 50))
  assert.ok(Date.now() > expiresBy)
  const reason = assertRefusedRaw(await rawJoin(server.doorUrl(token)), "expired token")
  t.diagnostic(`relay's error: ${reason}`)
  assert.match(reason, /expired/i, "the error names the expiry")
  await assertRefusedClient(scope, server, token, handle, "expired token")
})

test("a token for another collection: D is neither readable nor writable", { skip: RELAY_ONLY }, async t => {
  const { scope, server, token, handle } = await relayWithDocument(t)
  const elsewhere = await server.token("elsewhere")
  const intruder = openRepo(scope, server.doorUrl(elsewhere))
  const refusedAtJoin = await withTimeout(
    new Promise(resolve => {
      intruder.adapter.on("observed-message", m => {
        if (m.type === "peer") resolve(false)
        if (m.type === "error") resolve(true)
      })
    }),
    10_000,
    "the relay to accept or refuse a token for another collection",
  )
  t.diagnostic(`token for 'elsewhere': ${refusedAtJoin ? "refused at join" : "accepted at join"}`)

  // It cannot read D.
  await assert.rejects(withTimeout(intruder.repo.find(handle.url), 8_000, "find with a token for another collection to settle"), /unavailable/)
  assert.ok(
    !intruder.adapter.received.some(m => m.type === "sync" && m.documentId === handle.documentId && A.decodeSyncMessage(m.data).changes.length > 0),
    `D's changes reached a client whose token is for another collection (received: ${intruder.adapter.trace()})`,
  )

  // It cannot write D either, even pushing changes the stock client would
  // never send (it got doc-unavailable): a fork of D's history under D's id.
  const fork = A.change(A.clone(handle.doc()), d => {
    d.hijacked = true
  })
  const answer = await pushChanges(server.doorUrl(elsewhere), handle.documentId, fork, handle.doc())
  t.diagnostic(`relay's answer to the pushed changes: ${answer}`)
  await assertUnchanged(scope, server, token, handle, "hijacked", "a token for another collection")
})

test("a read-only token reads D, and its changes reach nobody", { skip: RELAY_ONLY }, async t => {
  const { scope, server, token, owner, handle } = await relayWithDocument(t)
  const readOnly = await server.token("notes", { readOnly: true })
  const reader = openRepo(scope, server.doorUrl(readOnly))
  const r = await withTimeout(reader.repo.find(handle.url), 10_000, "the read-only client to find D")
  assert.deepEqual(plain(r.doc()), CONTENT)

  // Live pull works under a read-only token.
  const pulled = docSatisfies(r, d => d.steps.length === 3, 10_000, "the owner's change to reach the read-only client")
  handle.change(d => {
    d.steps.push("three")
  })
  await pulled
  const expected = { ...CONTENT, steps: ["one", "two", "three"] }
  await serverHolds(owner.adapter, handle.documentId, hexHeads(handle))

  // The read-only client's change goes nowhere.
  r.change(d => {
    d.hacked = true
    d.steps.push("by the reader")
  })
  await barrierThroughRelay(scope, server, token, reader)
  t.diagnostic(`the stock read-only client sent ${changesSent(reader.adapter, handle.documentId)} changes of D`)
  await assertUnchanged(scope, server, token, handle, "hacked", "a read-only token")

  // Changes pushed anyway, as a client that ignores what the relay
  // advertises would, are not taken either.
  const fork = A.change(A.clone(handle.doc()), d => {
    d.forced = true
  })
  const answer = await pushChanges(server.doorUrl(readOnly), handle.documentId, fork, handle.doc())
  t.diagnostic(`relay's answer to the pushed changes: ${answer}`)
  await assertUnchanged(scope, server, token, handle, "forced", "a read-only token pushing changes")
  assert.deepEqual(plain(handle.doc()), expected, "the owner's copy changed")
  assert.deepEqual(await accordGet(server.db, handle.documentId), expected, "the relay's database changed")
})

/**
 * Returns once the relay has handled everything `client` sent so far: the
 * client then finds a document created after its sends, with `token` (one
 * the client's token can read; the relay answers one connection's messages
 * in order), or the relay closed its connection.
 */
async function barrierThroughRelay(scope, server, token, client) {
  const maker = openRepo(scope, server.doorUrl(token))
  await connected(maker.adapter)
  const marker = maker.repo.create({ marker: true })
  await serverHolds(maker.adapter, marker.documentId, hexHeads(marker))
  const closed = new Promise(resolve => client.adapter.once("observed-close", () => resolve("closed")))
  const found = client.repo.find(marker.url).then(h => h.doc())
  const outcome = await withTimeout(Promise.race([closed, found]), 10_000, "the barrier document to be found")
  if (outcome !== "closed") assert.deepEqual(outcome, { marker: true })
  await maker.stop()
}

/** D holds no `key` for a fresh reader, nor in the relay's database. */
async function assertUnchanged(scope, server, token, handle, key, what) {
  const fresh = openRepo(scope, server.doorUrl(token))
  const f = await withTimeout(fresh.repo.find(handle.url), 10_000, "a fresh reader to find D")
  assert.ok(!(key in f.doc()), `${what}: a fresh reader sees '${key}': ${JSON.stringify(f.doc())}`)
  assert.deepEqual(plain(f.doc()), plain(handle.doc()), `${what}: a fresh reader's D differs from the owner's`)
  const stored = await accordGet(server.db, handle.documentId)
  assert.ok(!(key in stored), `${what}: the relay's database has '${key}': ${JSON.stringify(stored)}`)
  assert.deepEqual(stored, plain(handle.doc()), `${what}: the relay's database differs from the owner's copy`)
  assert.ok(!(key in handle.doc()), `${what}: the owner received '${key}'`)
  await fresh.stop()
}
