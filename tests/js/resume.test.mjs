// A JS client with NodeFS storage syncs a document of many changes, stops,
// restarts on the same storage directory and reconnects: it resumes from what
// it stored, and the second sync costs far fewer bytes than the first.

import assert from "node:assert/strict"
import { test } from "node:test"

import * as A from "@automerge/automerge"
import { Scope, startServer, openRepo, connected, serverHolds, hexHeads, tempDir, withTimeout } from "./support/harness.mjs"

const CHANGES = 400

test("a restarted client with NodeFS storage resumes, sending and receiving far less", async t => {
  const scope = new Scope(t)
  const server = await startServer(scope)
  const token = await server.token("notes")
  const storageDir = await tempDir(scope, "accord-js-client-")

  // First run: create the document, make many changes, sync them all.
  const first = openRepo(scope, server.doorUrl(token), { storageDir })
  await connected(first.adapter)
  const h = first.repo.create({ log: [] })
  for (let i = 0; i < CHANGES; i++) {
    h.change(d => {
      d.log.push({ i, note: `change number ${i} of the first run, with some text to make it weigh: ${"x".repeat(64)}` })
    })
  }
  await serverHolds(first.adapter, h.documentId, hexHeads(h), { ms: 60_000 })
  const firstBytes = first.adapter.bytesIn + first.adapter.bytesOut
  const url = h.url
  await first.stop()

  // Second run: same storage directory, a new process-lifetime peer id.
  const second = openRepo(scope, server.doorUrl(token), { storageDir })
  const h2 = await withTimeout(second.repo.find(url), 10_000, "the restarted client to load the document")
  assert.equal(h2.doc().log.length, CHANGES, "the restarted client loaded every change from its storage")
  await connected(second.adapter)
  h2.change(d => {
    d.log.push({ i: CHANGES, note: "after the restart" })
  })
  await serverHolds(second.adapter, h2.documentId, hexHeads(h2), { ms: 30_000 })
  const secondBytes = second.adapter.bytesIn + second.adapter.bytesOut
  t.diagnostic(
    `first run: ${firstBytes} B (${first.adapter.bytesOut} out, ${first.adapter.bytesIn} in); ` +
      `second run: ${secondBytes} B (${second.adapter.bytesOut} out, ${second.adapter.bytesIn} in)`,
  )

  // The server sent none of the first run's changes back.
  const resent = second.adapter.received
    .filter(m => m.type === "sync" && m.documentId === h2.documentId)
    .reduce((n, m) => n + A.decodeSyncMessage(m.data).changes.length, 0)
  assert.equal(resent, 0, "the server resent changes the client already had")
  assert.ok(
    secondBytes < firstBytes / 4,
    `the second sync cost ${secondBytes} B, not far less than the first's ${firstBytes} B`,
  )

  // It really resumed: a fresh client gets every change, the new one included.
  const fresh = openRepo(scope, server.doorUrl(token))
  const h3 = await withTimeout(fresh.repo.find(url), 10_000, "a fresh client to find the document")
  assert.equal(h3.doc().log.length, CHANGES + 1)
  assert.equal(h3.doc().log[CHANGES].note, "after the restart")
})
