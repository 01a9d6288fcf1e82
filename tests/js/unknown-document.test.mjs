// `find` of a document nobody has settles quickly as unavailable: the server
// answers doc-unavailable instead of leaving the client waiting (the handle's
// own give-up timer is 60 s).

import assert from "node:assert/strict"
import { test } from "node:test"

import { generateAutomergeUrl, parseAutomergeUrl } from "@automerge/automerge-repo"
import { Scope, startServer, openRepo, connected, serverHolds, hexHeads, withTimeout } from "./support/harness.mjs"

test("find of an unknown document rejects as unavailable within seconds", async t => {
  const scope = new Scope(t)
  const server = await startServer(scope)
  const client = openRepo(scope, server.doorUrl(await server.token("notes")))
  await connected(client.adapter)

  const url = generateAutomergeUrl()
  const { documentId } = parseAutomergeUrl(url)
  const started = Date.now()
  await assert.rejects(
    withTimeout(client.repo.find(url), 5_000, "find of an unknown document to settle"),
    e => {
      assert.match(e.message, /unavailable/, `find settled, but not as unavailable: ${e.message}`)
      return true
    },
  )
  const elapsed = Date.now() - started
  assert.ok(elapsed < 5_000, `settled after ${elapsed} ms`)
  // The server said so: doc-unavailable for that document.
  assert.ok(
    client.adapter.received.some(m => m.type === "doc-unavailable" && m.documentId === documentId),
    `no doc-unavailable for ${documentId}; received: ${client.adapter.trace()}`,
  )
  // The connection stays usable: a document created now syncs.
  const h = client.repo.create({ after: "unavailable" })
  const other = openRepo(scope, server.doorUrl(await server.token("notes")))
  await connected(other.adapter)
  const found = await withTimeout(findWhenHeld(client, other, h), 10_000, "the new document to be found")
  assert.deepEqual(found.doc(), { after: "unavailable" })
})

/** `finder` finds `handle`'s document once the server holds what `creator` made. */
async function findWhenHeld(creator, finder, handle) {
  await serverHolds(creator.adapter, handle.documentId, hexHeads(handle))
  return finder.repo.find(handle.url)
}
