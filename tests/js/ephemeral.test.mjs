// Ephemeral messages (presence, cursors): a broadcast from one JS client
// reaches another JS client that has the document open, and is never stored.
//
// Presence between automerge-repo clients and Accord replicas (both
// directions) is tested in Rust against the same relay:
// tests/tests/automerge_repo.rs, presence_passes_between_both_protocols_...

import assert from "node:assert/strict"
import { test } from "node:test"

import { Scope, startServer, openRepo, connected, nextEvent, serverHolds, hexHeads, withTimeout } from "./support/harness.mjs"

test("a broadcast reaches the other JS client that has the document open", async t => {
  const scope = new Scope(t)
  const server = await startServer(scope)
  const token = await server.token("notes")
  const alice = openRepo(scope, server.doorUrl(token))
  const bob = openRepo(scope, server.doorUrl(token))
  await Promise.all([connected(alice.adapter), connected(bob.adapter)])

  const a = alice.repo.create({ text: "hello" })
  await serverHolds(alice.adapter, a.documentId, hexHeads(a))
  const b = await withTimeout(bob.repo.find(a.url), 10_000, "bob to find the document")

  const atBob = nextEvent(b, "ephemeral-message", () => true, 10_000, "alice's broadcast to reach bob")
  a.broadcast({ cursor: 3, user: "alice", at: [1, 2, 3] })
  const got = await atBob.catch(e => {
    throw new Error(
      `${e.message}; alice sent: ${alice.adapter.sent.map(m => m.type).join(", ")}; ` +
        `bob received: ${bob.adapter.trace()}; alice received: ${alice.adapter.trace()}`,
    )
  })
  assert.deepEqual(got.message, { cursor: 3, user: "alice", at: [1, 2, 3] })
  assert.equal(got.senderId, alice.repo.peerId, "the sender is alice's peer id")

  // And the other way.
  const atAlice = nextEvent(a, "ephemeral-message", () => true, 10_000, "bob's broadcast to reach alice")
  b.broadcast({ cursor: 5, user: "bob" })
  const back = await atAlice
  assert.deepEqual(back.message, { cursor: 5, user: "bob" })
  assert.equal(back.senderId, bob.repo.peerId)

  // Nothing was stored: the document is unchanged on both sides.
  assert.deepEqual(a.doc(), { text: "hello" })
  assert.deepEqual(b.doc(), { text: "hello" })
})
