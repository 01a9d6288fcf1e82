// "Saved on the server": the relay announces a stable storage id, and its
// answers carry its heads, so an app can tell when the relay holds its
// changes the way automerge-repo apps do (the `remote-heads` event and
// `handle.getSyncInfo(storageId)`), after every change.

import assert from "node:assert/strict"
import { test } from "node:test"

import { Scope, startServer, openRepo, connected, nextEvent, hexHeads, withTimeout, ON_RELAY } from "./support/harness.mjs"

const same = (a, b) => JSON.stringify([...a].sort()) === JSON.stringify([...b].sort())

test("remote-heads and getSyncInfo say when the server holds each change", { skip: !ON_RELAY && "relay only" }, async t => {
  const scope = new Scope(t)
  const server = await startServer(scope)
  const token = await server.token("notes")
  const alice = openRepo(scope, server.doorUrl(token))
  await connected(alice.adapter)
  const relayPeer = alice.adapter.remotePeerId
  const storageId = alice.repo.getStorageIdOfPeer(relayPeer)
  assert.ok(storageId, "the relay announces a storage id")
  assert.equal(storageId, relayPeer, "accord-relay's storage id is its peer id")

  const handle = alice.repo.create({ n: 0 })
  for (let i = 1; i <= 5; i++) {
    handle.change(d => {
      d.n = i
    })
    const mine = handle.heads()
    const saved = nextEvent(handle, "remote-heads", e => e.storageId === storageId && same(e.heads, mine), 10_000, `change ${i} saved`)
    if (!same(handle.getSyncInfo(storageId)?.lastHeads ?? [], mine)) await saved
    assert.ok(same(handle.getSyncInfo(storageId).lastHeads, mine), "getSyncInfo has the relay holding every change")
  }

  // A second client sees the same storage id: it is the relay's, not the connection's.
  const bob = openRepo(scope, server.doorUrl(token))
  await connected(bob.adapter)
  assert.equal(bob.repo.getStorageIdOfPeer(bob.adapter.remotePeerId), storageId)
  const found = await withTimeout(bob.repo.find(handle.url), 10_000, "bob finds it")
  assert.equal(found.doc().n, 5)
})
