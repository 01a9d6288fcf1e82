// The inspector follows changes live (GET /v1/events, read with fetch): an
// Accord replica changes or deletes a record and syncs, and the open page
// shows it without a reload. Also: a large collection's first page (its
// first paint measured, not judged).

import assert from "node:assert/strict"
import { after, before, test } from "node:test"

import {
  Replica,
  WAIT_MS,
  artifact,
  countIs,
  launchBrowser,
  openPage,
  screenshot,
  signIn,
  startRelay,
  textSatisfies,
} from "./support/harness.mjs"
import { openPresence } from "./support/presence.mjs"
import { seedContacts } from "./support/seed.mjs"

let browser
before(async () => {
  browser = await launchBrowser()
})
after(() => browser?.close())

/** Marks the page's window so that a reload (which would lose it) is detected. */
async function markWindow(page) {
  await page.evaluate(() => {
    window.__accordNoReload = true
  })
  return async () => assert.equal(await page.evaluate(() => window.__accordNoReload), true, "the page was not reloaded")
}

test("a change synced from a replica reaches the open record and the table without a reload", async t => {
  const relay = await startRelay(t)
  const { token, replica, ada } = await seedContacts(t, relay)
  const page = await openPage(t, browser)
  await signIn(page, relay.url, token)
  await page.goto(`${relay.url}#c=contacts&r=${ada}`)
  await countIs(page.getByTestId("history-entry"), 2, "history entries")
  await textSatisfies(page.getByTestId("live"), s => s.includes("live"), "the stream to open")
  const notReloaded = await markWindow(page)

  await replica.put(ada, "phone", "+44 20 7946 0000", "add phone")
  await replica.sync(relay, token)

  const json = page.getByTestId("record-json")
  await textSatisfies(json.locator('[data-path="phone"]'), s => s.includes("+44 20 7946 0000"), "the new value")
  await countIs(page.getByTestId("history-entry"), 3, "history entries after the change")
  assert.equal(await page.getByTestId("history-message").first().textContent(), "add phone")
  await notReloaded()

  // The table follows its collection: a record created on the replica appears.
  await page.getByTestId("back").click()
  await page.getByTestId("search").fill("hopper")
  await textSatisfies(page.getByTestId("records-empty"), s => s.includes("No records"), "no Hopper yet")
  await textSatisfies(page.getByTestId("live"), s => s.includes("live"), "the table's stream to open")
  const grace = await replica.create("contacts", { name: "Grace Hopper" }, "add Grace")
  await replica.sync(relay, token)
  await page.locator(`[data-testid="record-row"][data-id="${grace}"]`).waitFor({ state: "visible", timeout: WAIT_MS })
  await textSatisfies(page.getByTestId("collection-contacts"), s => s.includes("62"), "the side list's count")
  await notReloaded()
  assert.deepEqual(page.problems, [])
})

test("a record deleted on a replica is marked deleted and keeps showing its last content", async t => {
  const relay = await startRelay(t)
  const { token, replica, ada } = await seedContacts(t, relay)
  const page = await openPage(t, browser)
  await signIn(page, relay.url, token)
  await page.getByTestId("collection-contacts").click()
  await page.getByTestId("search").fill("lovelace")
  const row = page.locator(`[data-testid="record-row"][data-id="${ada}"]`)
  await row.waitFor({ state: "visible", timeout: WAIT_MS })
  await textSatisfies(page.getByTestId("live"), s => s.includes("live"), "the stream to open")
  const notReloaded = await markWindow(page)

  await replica.rm(ada)
  await replica.sync(relay, token)

  // Gone from the table of live records, back with the deleted toggle.
  await row.waitFor({ state: "detached", timeout: WAIT_MS })
  await page.getByTestId("deleted-toggle").check()
  await row.waitFor({ state: "visible", timeout: WAIT_MS })
  await row.getByTestId("row-deleted-badge").waitFor({ state: "visible", timeout: WAIT_MS })
  await notReloaded()

  await row.getByTestId("record-link").click()
  await page.getByTestId("deleted-badge").waitFor({ state: "visible", timeout: WAIT_MS })
  await textSatisfies(page.getByTestId("record-json"), s => s.includes("Ada Lovelace") && s.includes("Paris"), "the last content")
  await page.getByTestId("history-tombstone").waitFor({ state: "visible", timeout: WAIT_MS })
  await countIs(page.getByTestId("history-entry"), 2, "the changes before the deletion")
  await screenshot(page, "inspector-deleted")
  assert.deepEqual(page.problems, [])
})

test("when the relay restarts, the page reconnects its stream and shows what changed meanwhile", async t => {
  const relay = await startRelay(t)
  const { token, replica, ada } = await seedContacts(t, relay)
  const page = await openPage(t, browser)
  await signIn(page, relay.url, token)
  await page.goto(`${relay.url}#c=contacts&r=${ada}`)
  await countIs(page.getByTestId("history-entry"), 2, "history entries")
  const live = page.getByTestId("live")
  await textSatisfies(live, s => s === "live", "the stream to open")
  const notReloaded = await markWindow(page)

  // The relay stops: the stream ends and the page says so. Meanwhile
  // (while the page cannot hear about it) the replica changes Ada; the
  // change reaches the restarted relay by sync before or after the page
  // reconnects, and the page shows it either way.
  await relay.restart()
  await replica.put(ada, "address.city", "Lyon", "moved to Lyon")
  await replica.sync(relay, token)
  await textSatisfies(live, s => s === "live", "the stream to reopen")
  await textSatisfies(page.getByTestId("record-json").locator('[data-path="address.city"]'), s => s.includes('"Lyon"'), "the change made while away")
  await countIs(page.getByTestId("history-entry"), 3, "history entries after the restart")
  await notReloaded()
  // The page's requests fail while the relay is down (refused, reset); nothing else may.
  assert.deepEqual(page.problems.filter(p => !/Failed to load resource: net::ERR_/.test(p)), [])
})

// The first paint's time is measured and saved (artifacts/first-paint-10000.txt,
// docs/inspector.md), never asserted: timings are the benchmark's business.
test("a 10,000-record collection shows its first page and total; its first paint is measured", async t => {
  const relay = await startRelay(t)
  const token = await relay.token("contacts")
  const replica = await Replica.create(t)
  const people = Array.from({ length: 10_000 }, (_, i) => ({
    name: `Person ${i}`,
    email: `person${i}@example.com`,
    address: { city: ["Paris", "London", "Lagos", "Lima"][i % 4] },
  }))
  await replica.importMany("contacts", people)
  // 10,000 documents take a debug build 15 s or more to sync.
  await replica.sync(relay, token, ["contacts"], { timeoutSecs: 150 })

  const page = await openPage(t, browser)
  await signIn(page, relay.url, token)
  // Warm the browser's cache of the page's own files, as a second visit would be.
  await page.getByTestId("collection-contacts").waitFor({ state: "visible", timeout: WAIT_MS })

  const started = Date.now()
  await page.goto(`${relay.url}#c=contacts`)
  await page.getByTestId("record-row").first().waitFor({ state: "visible", timeout: WAIT_MS })
  const firstPaint = Date.now() - started
  await countIs(page.getByTestId("record-row"), 50, "one page of rows")
  await textSatisfies(page.getByTestId("table-total"), s => s.includes("10,000 records"), "the total")
  await artifact("first-paint-10000.txt", `first paint of a 10,000-record collection: ${firstPaint} ms\n`)
  t.diagnostic(`first paint of a 10,000-record collection: ${firstPaint} ms`)
  assert.deepEqual(page.problems, [])
})

test("a peer with the record open is listed as present, and leaves the list when it disconnects", async t => {
  const relay = await startRelay(t)
  const { token, ada } = await seedContacts(t, relay)
  const page = await openPage(t, browser)
  await signIn(page, relay.url, token)
  await page.goto(`${relay.url}#c=contacts&r=${ada}`)
  const presence = page.getByTestId("presence")
  await textSatisfies(presence, s => s.includes("nobody"), "nobody else at first")
  await textSatisfies(page.getByTestId("live"), s => s === "live", "the stream to open")

  const peer = await openPresence(t, browser, relay, { token, collection: "contacts", id: ada, peer: "presence-peer-1" })
  await textSatisfies(presence.getByTestId("presence-peer"), s => s === "presence-peer-1", "the peer in 'open now by'")
  await peer.close()
  await textSatisfies(presence, s => s.includes("nobody"), "the peer gone after it disconnected")
  assert.deepEqual(page.problems, [])
})
