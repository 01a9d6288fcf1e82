// Two stock JS repos edit one document through the server, concurrently, and
// converge; a live change reaches the other repo as a `change` event.

import assert from "node:assert/strict"
import { test } from "node:test"

import { Scope, startServer, openRepo, connected, docSatisfies, hexHeads, serverHolds, withTimeout } from "./support/harness.mjs"

test("two JS repos converge on concurrent edits; live changes arrive as change events", async t => {
  const scope = new Scope(t)
  const server = await startServer(scope)
  const token = await server.token("notes")
  const alice = openRepo(scope, server.doorUrl(token))
  const bob = openRepo(scope, server.doorUrl(token))
  await Promise.all([connected(alice.adapter), connected(bob.adapter)])

  const a = alice.repo.create({ title: "shopping", items: [], counts: {} })
  await serverHolds(alice.adapter, a.documentId, hexHeads(a))

  const b = await withTimeout(bob.repo.find(a.url), 10_000, "bob to find alice's document")
  assert.equal(b.documentId, a.documentId)
  assert.deepEqual(b.doc(), { title: "shopping", items: [], counts: {} })

  // A live change: bob hears it through a change event.
  const bobSeesMilk = docSatisfies(b, d => d.items.includes("milk"), 10_000, "alice's 'milk' to reach bob")
  a.change(d => {
    d.items.push("milk")
  })
  await bobSeesMilk

  // Concurrent edits: neither has seen the other's before making its own,
  // including a conflict on the same field.
  const aHeads = hexHeads(a)
  assert.deepEqual(hexHeads(b), aHeads)
  for (let i = 0; i < 20; i++) {
    a.change(d => {
      d.items.push(`a${i}`)
      d.counts.alice = i
    })
    b.change(d => {
      d.items.push(`b${i}`)
      d.counts.bob = i
    })
  }
  a.change(d => {
    d.title = "alice's title"
  })
  b.change(d => {
    d.title = "bob's title"
  })
  // Each side made its changes on top of the same heads, unseen by the other.
  assert.notDeepEqual(hexHeads(a), hexHeads(b))

  const both = d => d.counts.alice === 19 && d.counts.bob === 19 && d.items.length === 41
  await Promise.all([
    docSatisfies(a, both, 10_000, "bob's concurrent edits to reach alice"),
    docSatisfies(b, both, 10_000, "alice's concurrent edits to reach bob"),
  ])
  // Converged: the same heads, the same document, one title chosen on both.
  await docSatisfies(a, () => hexHeads(a).length === 2, 10_000, "alice to hold both branches")
  await docSatisfies(b, () => hexHeads(b).join() === hexHeads(a).join(), 10_000, "bob's heads to equal alice's")
  assert.deepEqual(b.doc(), a.doc())
  assert.ok(["alice's title", "bob's title"].includes(a.doc().title))
  for (let i = 0; i < 20; i++) {
    assert.ok(a.doc().items.includes(`a${i}`) && a.doc().items.includes(`b${i}`), `item ${i} of both sides`)
  }

  // And after merging, a further edit on one side again arrives live.
  const aliceSeesDone = docSatisfies(a, d => d.done === true, 10_000, "bob's 'done' to reach alice")
  b.change(d => {
    d.done = true
  })
  assert.equal((await aliceSeesDone).done, true)
})
