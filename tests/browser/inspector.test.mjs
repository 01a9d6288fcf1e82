// Browsing with the inspector: the token form, the side list, the records
// table with paging and search, a record's JSON and history, a version as
// of an earlier change, a change's diff, wrong tokens, open mode and
// `accord inspect`.

import assert from "node:assert/strict"
import { after, before, test } from "node:test"

import {
  Replica,
  WAIT_MS,
  countIs,
  launchBrowser,
  openPage,
  screenshot,
  signIn,
  startInspect,
  startRelay,
  textSatisfies,
} from "./support/harness.mjs"
import { FILLERS, seedContacts } from "./support/seed.mjs"

let browser
before(async () => {
  browser = await launchBrowser()
})
after(() => browser?.close())

/** Opens Ada's record from the table by searching for her. */
async function openAda(page, ada) {
  await page.getByTestId("collection-contacts").click()
  await page.getByTestId("search").fill("lovelace")
  const row = page.locator(`[data-testid="record-row"][data-id="${ada}"]`)
  await countIs(page.getByTestId("record-row"), 1, "rows matching 'lovelace'")
  await row.getByTestId("record-link").click()
  await page.getByTestId("record-view").waitFor({ state: "visible", timeout: WAIT_MS })
}

test("a token opens the collections, a paged and searchable table, and a record's JSON and history", async t => {
  const relay = await startRelay(t)
  const { token, ada } = await seedContacts(t, relay)
  const page = await openPage(t, browser)

  await page.goto(relay.url)
  await page.getByTestId("token-form").waitFor({ state: "visible", timeout: WAIT_MS })
  await screenshot(page, "inspector-token")
  await signIn(page, relay.url, token)

  const contacts = page.getByTestId("collection-contacts")
  await textSatisfies(contacts, s => s.includes(String(FILLERS + 1)), "the side list to count the contacts")
  await contacts.click()

  // One page of 50, then the rest with "More".
  const rows = page.getByTestId("record-row")
  await countIs(rows, 50, "the first page of rows")
  await textSatisfies(page.getByTestId("table-total"), s => s.includes(`${FILLERS + 1} records`), "the table's total")
  await textSatisfies(page.getByTestId("live"), s => s === "live", "the collection's stream to open")
  await screenshot(page, "inspector-records")
  await page.getByTestId("more").click()
  await countIs(rows, FILLERS + 1, "every row after More")
  assert.equal(await page.getByTestId("more").isVisible(), false, "no More button on the last page")

  // Search goes to the server's `q`.
  await page.getByTestId("search").fill("person 4")
  await textSatisfies(page.getByTestId("table-total"), s => /^\d+ match/.test(s), "the search's total")
  const matching = await page.getByTestId("record-row").allTextContents()
  assert.ok(matching.length >= 1 && matching.every(r => /Person 4/.test(r)), `rows match 'person 4': ${matching}`)

  await page.getByTestId("search").fill("")
  await openAda(page, ada)
  await textSatisfies(page.getByTestId("record-id"), s => s === ada, "the record's id in the heading")
  const json = page.getByTestId("record-json")
  await textSatisfies(json.locator('[data-path="name"]'), s => s.includes('"Ada Lovelace"'), "Ada's name in the JSON")
  await textSatisfies(json.locator('[data-path="address.city"]'), s => s.includes('"Paris"'), "Ada's city in the JSON")
  await textSatisfies(json.locator('[data-path="tags.1"]'), s => s.includes('"poetry"'), "a list element in the JSON")

  // The tree collapses: closing "address" hides the city.
  await json.locator('[data-path="address"] > details > summary').click()
  assert.equal(await json.locator('[data-path="address.city"]').isVisible(), false, "a closed object hides its keys")
  await json.locator('[data-path="address"] > details > summary').click()

  const entries = page.getByTestId("history-entry")
  await countIs(entries, 2, "history entries")
  assert.deepEqual(await entries.getByTestId("history-message").allTextContents(), ["moved to Paris", "add Ada"])
  await textSatisfies(entries.first(), s => /\d+ ops?/.test(s) && /device/.test(s), "an entry's size and device")
  assert.equal(await page.getByTestId("deleted-badge").isVisible(), false, "a live record has no deleted badge")
  await textSatisfies(page.getByTestId("presence"), s => s.includes("nobody"), "presence with nobody else")
  await screenshot(page, "inspector-record")
  assert.deepEqual(page.problems, [])
})

test("a record as of an earlier change, and a change's diff against the previous one", async t => {
  const relay = await startRelay(t)
  const { token, ada } = await seedContacts(t, relay)
  const page = await openPage(t, browser)
  await signIn(page, relay.url, token)
  await openAda(page, ada)

  const entries = page.getByTestId("history-entry")
  await countIs(entries, 2, "history entries")
  const first = entries.filter({ hasText: "add Ada" })
  const second = entries.filter({ hasText: "moved to Paris" })

  // As of "add Ada": London, with the banner saying it is not current.
  await first.getByTestId("view-at").click()
  const banner = page.getByTestId("as-of-banner")
  await banner.waitFor({ state: "visible", timeout: WAIT_MS })
  const hash = await first.getAttribute("data-hash")
  await textSatisfies(banner, s => s.includes(hash.slice(0, 8)) && s.includes("add Ada"), "the banner naming the change")
  const city = page.getByTestId("record-json").locator('[data-path="address.city"]')
  await textSatisfies(city, s => s.includes('"London"'), "the earlier city")

  // The diff of "moved to Paris" against its dependency.
  await second.getByTestId("view-diff").click()
  const diff = page.getByTestId("diff")
  await diff.waitFor({ state: "visible", timeout: WAIT_MS })
  await textSatisfies(diff.getByTestId("patch"), s => s.includes("city") && s.includes("Paris"), "the patch's description")
  await screenshot(page, "inspector-as-of-diff")

  // The first change's diff is against the empty record.
  await first.getByTestId("view-diff").click()
  await textSatisfies(page.getByTestId("diff"), s => s.includes("the empty record") && s.includes("Ada Lovelace"), "the first change's diff")

  // Back to the current version.
  await page.getByTestId("as-of-exit").click()
  await banner.waitFor({ state: "hidden", timeout: WAIT_MS })
  await textSatisfies(city, s => s.includes('"Paris"'), "the current city again")
  assert.deepEqual(page.problems, [])
})

test("a wrong token is refused and asked for again; another collection's token sees nothing", async t => {
  const relay = await startRelay(t)
  const { token } = await seedContacts(t, relay)
  const page = await openPage(t, browser)

  await page.goto(relay.url)
  await page.getByTestId("token-input").fill("not-a-token")
  await page.getByTestId("token-submit").click()
  const error = page.getByTestId("token-error")
  await error.waitFor({ state: "visible", timeout: WAIT_MS })
  await textSatisfies(error, s => /refused/i.test(s), "the refusal")
  assert.equal(await page.getByTestId("token-form").isVisible(), true, "the form is shown again")
  assert.equal(await page.getByTestId("collections").isVisible(), false, "nothing behind the form")

  // A well-formed token signed with another secret is refused too.
  const forged = await relay.token("contacts", { secretOverride: "another-secret-of-enough-bytes" })
  await page.getByTestId("token-input").fill(forged)
  await page.getByTestId("token-submit").click()
  await error.waitFor({ state: "visible", timeout: WAIT_MS })
  await textSatisfies(error, s => /refused/i.test(s) && /signature|sign|invalid|token/i.test(s), "the forged token's refusal")
  assert.equal(await page.getByTestId("token-form").isVisible(), true, "the form is shown again")

  // A token for notes sees no contacts.
  await signIn(page, relay.url, await relay.token("notes"))
  await page.getByTestId("no-collections").waitFor({ state: "visible", timeout: WAIT_MS })
  assert.equal(await page.getByTestId("collection-contacts").count(), 0)

  // A read-only token shows the collection as read-only.
  await page.getByTestId("forget-token").click()
  await signIn(page, relay.url, await relay.token("contacts", { readOnly: true }))
  await page.getByTestId("collection-contacts").getByTestId("read-only-collection").waitFor({ state: "visible", timeout: WAIT_MS })

  // Forgetting it asks again; the right token then works, and stays for a reload of this tab.
  await page.getByTestId("forget-token").click()
  await page.getByTestId("token-form").waitFor({ state: "visible", timeout: WAIT_MS })
  await signIn(page, relay.url, token)
  await page.getByTestId("collection-contacts").waitFor({ state: "visible", timeout: WAIT_MS })
  assert.equal(await page.getByTestId("read-only-collection").count(), 0, "a read-write token writes")
  await page.reload()
  await page.getByTestId("collection-contacts").waitFor({ state: "visible", timeout: WAIT_MS })
  assert.equal(await page.getByTestId("token-form").isVisible(), false, "the tab keeps its token")

  // A new tab (its own sessionStorage) asks again.
  const other = await page.context().browser().newContext()
  t.after(() => other.close())
  const fresh = await other.newPage()
  await fresh.goto(relay.url)
  await fresh.getByTestId("token-form").waitFor({ state: "visible", timeout: WAIT_MS })
})

test("concurrent edits from two replicas show a conflicts badge", async t => {
  const relay = await startRelay(t)
  const { token, replica, ada } = await seedContacts(t, relay)
  const other = await Replica.create(t, "other")
  await other.sync(relay, token)
  await replica.put(ada, "email", "ada@one.example", "email from one")
  await other.put(ada, "email", "ada@two.example", "email from two")
  await replica.sync(relay, token)
  await other.sync(relay, token)

  const page = await openPage(t, browser)
  await signIn(page, relay.url, token)
  await page.getByTestId("collection-contacts").click()
  await page.getByTestId("search").fill("lovelace")
  const row = page.locator(`[data-testid="record-row"][data-id="${ada}"]`)
  await textSatisfies(row.getByTestId("row-conflicts-badge"), s => s.includes("1 conflict"), "the row's conflicts badge")
  await row.getByTestId("record-link").click()
  await textSatisfies(page.getByTestId("conflicts-badge"), s => s.includes("1 conflict"), "the record's conflicts badge")
  // Both edits are in the history; the record has two heads.
  await countIs(page.getByTestId("history-entry"), 4, "history entries")
  await textSatisfies(page.getByTestId("record-meta"), s => /heads \w+, \w+/.test(s), "two heads")
  assert.deepEqual(page.problems, [])
})

test("an open relay needs no token", async t => {
  const relay = await startRelay(t, { open: true })
  const replica = await Replica.create(t)
  await replica.create("notes", { text: "hello" }, "first note")
  await replica.sync(relay, null, ["notes"])
  const page = await openPage(t, browser)
  await page.goto(relay.url)
  await page.getByTestId("collection-notes").click()
  await countIs(page.getByTestId("record-row"), 1, "the note's row")
  assert.equal(await page.getByTestId("token-form").isVisible(), false, "no token form")
  assert.deepEqual(page.problems, [])
})

test("accord inspect serves the page read-only over a replica file", async t => {
  const replica = await Replica.create(t)
  const id = await replica.create("notes", { text: "local only" }, "a local note")
  const url = await startInspect(t, replica.db)
  const page = await openPage(t, browser)
  await page.goto(url)
  await page.getByTestId("read-only-badge").waitFor({ state: "visible", timeout: WAIT_MS })
  await textSatisfies(page.getByTestId("server"), s => s.includes("accord inspect"), "the server's name")
  await page.getByTestId("collection-notes").click()
  await page.locator(`[data-testid="record-row"][data-id="${id}"] [data-testid="record-link"]`).click()
  await textSatisfies(page.getByTestId("record-json"), s => s.includes("local only"), "the record's JSON")
  await countIs(page.getByTestId("history-entry"), 1, "history entries")
  assert.equal(await page.getByTestId("presence").isVisible(), false, "no presence without a relay")
  assert.deepEqual(page.problems, [])
})
