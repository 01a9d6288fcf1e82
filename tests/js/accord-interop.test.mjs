// Stock JS clients and Accord replicas share documents through one relay:
// the JS client speaks automerge-repo at /automerge-repo, the `accord` CLI
// the native protocol at /.

import assert from "node:assert/strict"
import path from "node:path"
import { test } from "node:test"

import {
  RELAY_ONLY,
  Scope,
  startServer,
  openRepo,
  connected,
  docSatisfies,
  hexHeads,
  plain,
  serverHolds,
  accord,
  accordGet,
  until,
  withTimeout,
} from "./support/harness.mjs"

/** `accord sync` of `db` with the relay's native door; returns the JSON summary. */
async function sync(server, db, token, collections) {
  const args = ["--json", "sync", "--relay", server.nativeUrl, "--timeout", "20"]
  if (token !== undefined) args.push("--token", token)
  for (const c of collections) args.push("--collection", c)
  return JSON.parse(await accord(db, ...args))
}

/** Resolves once `accord get` of the relay's own database shows what `pred` wants. */
function relayDbShows(server, id, pred, what) {
  return until(
    async () => {
      const doc = await accordGet(server.db, id)
      return pred(doc) ? doc : false
    },
    { ms: 10_000, what: `the relay's database to show ${what}` },
  )
}

test("a JS document reaches an Accord replica, and the replica's edit reaches JS live", { skip: RELAY_ONLY }, async t => {
  const scope = new Scope(t)
  const server = await startServer(scope)
  const token = await server.token("notes")
  const js = openRepo(scope, server.doorUrl(token))
  await connected(js.adapter)

  const h = js.repo.create({ title: "from js", tags: ["a", "b"], nested: { n: 1 } })
  await serverHolds(js.adapter, h.documentId, hexHeads(h))
  const id = h.documentId

  // The Accord replica fetches the token's collection and sees the JS content
  // under the same id (and under its automerge: URL).
  const replica = path.join(server.dir, "replica.db")
  const summary = await sync(server, replica, token, ["notes"])
  assert.equal(summary.records_discovered, 1, `sync summary: ${JSON.stringify(summary)}`)
  assert.deepEqual(await accordGet(replica, id), { title: "from js", tags: ["a", "b"], nested: { n: 1 } })
  assert.deepEqual(await accordGet(replica, h.url), await accordGet(replica, id))
  const info = JSON.parse(await accord(replica, "--json", "info", id))
  assert.equal(info.collection, "notes", "the JS document landed in the token's write collection")
  assert.deepEqual(info.heads, hexHeads(h), "the replica holds exactly the JS client's heads")

  // The replica edits and syncs; the JS client hears it as a change event.
  const jsSeesEdit = docSatisfies(h, d => plain(d).edited === "by accord", 15_000, "the Accord replica's edit to reach the JS client")
  await accord(replica, "put", id, "edited", '"by accord"', "-m", "edit from accord")
  await accord(replica, "put", id, "nested.m", "2")
  await sync(server, replica, token, ["notes"])
  const seen = await jsSeesEdit
  await docSatisfies(h, d => d.nested.m === 2, 10_000, "the replica's second edit to reach the JS client")
  assert.equal(plain(seen).title, "from js")

  // The JS client edits again, concurrently with another replica edit.
  h.change(d => {
    d.tags.push("c")
  })
  await accord(replica, "put", id, "more", "true")
  await serverHolds(js.adapter, id, hexHeads(h))
  await sync(server, replica, token, ["notes"])
  const merged = { title: "from js", tags: ["a", "b", "c"], nested: { n: 1, m: 2 }, edited: "by accord", more: true }
  await docSatisfies(h, d => d.more === true, 10_000, "the replica's concurrent edit to reach the JS client")
  assert.deepEqual(plain(h.doc()), merged)
  assert.deepEqual(await accordGet(replica, id), merged)

  // The relay's own database holds the merged record.
  assert.deepEqual(await relayDbShows(server, id, d => d.more === true && d.tags.length === 3, "the merged record"), merged)
})

test("a JS client finds a record an Accord replica created", { skip: RELAY_ONLY }, async t => {
  const scope = new Scope(t)
  const server = await startServer(scope)
  const token = await server.token("contacts")

  const replica = path.join(server.dir, "replica.db")
  const data = { name: "Ada", born: 1815, langs: ["en", "fr"], address: { city: "London" }, retired: false, note: null }
  const id = (await accord(replica, "new", "contacts", "--data", JSON.stringify(data), "-m", "add Ada")).trim()
  const summary = await sync(server, replica, token, ["contacts"])
  assert.equal(summary.docs_sent, 1, `sync summary: ${JSON.stringify(summary)}`)

  const js = openRepo(scope, server.doorUrl(token))
  const h = await withTimeout(js.repo.find(`automerge:${id}`), 10_000, "the JS client to find the Accord record")
  assert.equal(h.documentId, id)
  // Accord's JSON strings are str scalars: ImmutableString in JS.
  assert.deepEqual(plain(h.doc()), data)
  assert.equal(String(h.doc().name), "Ada")
  const heads = (await accord(replica, "heads", id)).trim().split(",")
  assert.deepEqual(hexHeads(h), heads, "the JS client holds exactly the replica's heads")

  // The bare id works too, and the record stays live: a later replica edit arrives.
  const other = openRepo(scope, server.doorUrl(token))
  const h2 = await withTimeout(other.repo.find(id), 10_000, "a second JS client to find the record by bare id")
  assert.deepEqual(plain(h2.doc()), data)
  const arrives = docSatisfies(h, d => plain(d).address.city === "Paris", 15_000, "the replica's later edit to reach the JS client")
  await accord(replica, "put", id, "address.city", '"Paris"')
  await sync(server, replica, token, ["contacts"])
  await arrives
})

test("open mode: JS documents land in --automerge-repo-collection", { skip: RELAY_ONLY }, async t => {
  const scope = new Scope(t)
  const server = await startServer(scope, { open: true, args: ["--automerge-repo-collection", "shared"] })
  const js = openRepo(scope, server.doorUrl())
  await connected(js.adapter)
  const h = js.repo.create({ kind: "open mode" })
  await serverHolds(js.adapter, h.documentId, hexHeads(h))

  const info = await until(
    async () => JSON.parse(await accord(server.db, "--json", "info", h.documentId)),
    { what: "the relay's database to list the JS document" },
  )
  assert.equal(info.collection, "shared")
  const replica = path.join(server.dir, "replica.db")
  await sync(server, replica, undefined, ["shared"])
  assert.deepEqual(await accordGet(replica, h.documentId), { kind: "open mode" })
})

test("open mode without the flag: JS documents land in 'documents'", { skip: RELAY_ONLY }, async t => {
  const scope = new Scope(t)
  const server = await startServer(scope, { open: true })
  const js = openRepo(scope, server.doorUrl())
  await connected(js.adapter)
  const h = js.repo.create({ kind: "default collection" })
  await serverHolds(js.adapter, h.documentId, hexHeads(h))
  const info = await until(
    async () => JSON.parse(await accord(server.db, "--json", "info", h.documentId)),
    { what: "the relay's database to list the JS document" },
  )
  assert.equal(info.collection, "documents")
})
