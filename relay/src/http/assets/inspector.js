// The Accord inspector: a read-only view of a relay's (or `accord inspect`'s)
// records over the HTTP API (docs/http-api.md), live through the SSE stream
// at GET /v1/events. Plain DOM, no framework, no build step.
//
// Layout: the API client (token, errors), the SSE reader, routing (the URL
// fragment holds the view), then one section per view: collections, the
// records table, the record with its history, diff and presence.
//
// Every piece of data reaches the page through textContent or an attribute
// (the `h` helper), never through innerHTML.
//
// URLs are relative ("v1/...", not "/v1/..."), so the page also works
// behind a reverse proxy that serves it under a path prefix.

const PAGE_SIZE = 50
const HISTORY_PAGE = 100
const MAX_LIMIT = 1000
const TOKEN_KEY = "accord-inspector-token"
const SEARCH_DELAY_MS = 250
const BACKOFF_FIRST_MS = 500
const BACKOFF_MAX_MS = 15_000

const $ = id => document.getElementById(id)

/** What the page knows now; views re-render from it. */
const state = {
  /** GET /v1/info: server, version, read_only, auth. */
  info: null,
  /** The bearer token, kept in sessionStorage (this tab only). */
  token: sessionStorage.getItem(TOKEN_KEY),
  /** GET /v1/collections' list. */
  collections: [],
  /** The records table: rows shown, the cursor of the next page, the filters' total. */
  table: { key: null, records: [], next: null, total: 0 },
  /** The open record as it is now, and its history entries (for diffs' deps and titles). */
  history: { id: null, current: null, changes: [], next: null, total: 0 },
  /** The live streams now open, by what they follow. */
  streams: { collection: null, record: null },
}

// ------------------------------------------------------------------ DOM

/** Creates an element; string children become text nodes (never markup). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag)
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue
    if (name === "class") el.className = value
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value)
    else el.setAttribute(name, value === true ? "" : String(value))
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue
    el.append(child instanceof Node ? child : document.createTextNode(String(child)))
  }
  return el
}

function show(el, visible) {
  el.hidden = !visible
}

/** `2026-12-01T09:41:12Z` as `2026-12-01 09:41:12 UTC`; `—` for none. */
function fmtTime(t) {
  return t ? t.replace("T", " ").replace(/Z$/, " UTC") : "—"
}

function fmtCount(n, one, many = `${one}s`) {
  return `${Number(n).toLocaleString("en")} ${n === 1 ? one : many}`
}

function short(hash, n = 8) {
  return typeof hash === "string" ? hash.slice(0, n) : ""
}

function timeEl(t) {
  return t ? h("time", { datetime: t, title: t }, fmtTime(t)) : h("span", { class: "muted" }, "no time")
}

// ------------------------------------------------------------------ errors

class ApiError extends Error {
  constructor(status, code, message) {
    super(message)
    this.status = status
    this.code = code
  }
}

/** Shows an error at the top of the page (a 401 asks for a token instead). */
function showError(err) {
  if (err?.name === "AbortError" || err?.status === 401) return
  const el = $("error")
  el.textContent = err instanceof ApiError ? `${err.code}: ${err.message}` : String(err?.message ?? err)
  show(el, true)
}

function clearError() {
  show($("error"), false)
}

// ------------------------------------------------------------------ API

function authHeaders(extra = {}) {
  return state.token ? { ...extra, Authorization: `Bearer ${state.token}` } : extra
}

/** GETs `path` (relative to the page) as JSON; a 401 asks for a token. */
async function api(path, { signal } = {}) {
  let res
  try {
    res = await fetch(path, { headers: authHeaders({ Accept: "application/json" }), signal, cache: "no-store" })
  } catch (e) {
    if (e.name === "AbortError") throw e
    throw new ApiError(0, "unreachable", `the server did not answer (${e.message})`)
  }
  if (res.ok) return res.json()
  let body = null
  try {
    body = await res.json()
  } catch {
    // Not JSON (a proxy's error page): the status says enough.
  }
  const err = new ApiError(
    res.status,
    body?.error?.code ?? `http_${res.status}`,
    body?.error?.message ?? (res.statusText || `HTTP ${res.status}`),
  )
  if (res.status === 401) askForToken(`The token was refused: ${err.message}`)
  throw err
}

function query(params) {
  const q = new URLSearchParams()
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v)
  return q.toString()
}

const enc = encodeURIComponent

// ------------------------------------------------------------------ token

function askForToken(message) {
  stopStreams()
  state.token = null
  sessionStorage.removeItem(TOKEN_KEY)
  show($("app"), false)
  show($("forget-token"), false)
  const err = $("token-error")
  err.textContent = message ?? ""
  show(err, Boolean(message))
  show($("token-view"), true)
  const input = $("token-input")
  input.value = ""
  input.focus()
}

async function submitToken(event) {
  event.preventDefault()
  const token = $("token-input").value.trim()
  if (!token) return
  state.token = token
  sessionStorage.setItem(TOKEN_KEY, token)
  show($("token-error"), false)
  show($("token-view"), false)
  await enter()
}

// ------------------------------------------------------------------ SSE

/**
 * Parses the text/event-stream format (event:, data:, blank line ends an
 * event, `:` starts a comment) from chunks of text; calls `onEvent(type, data)`.
 */
class SseParser {
  #buffer = ""
  #type = ""
  #data = []

  constructor(onEvent) {
    this.onEvent = onEvent
  }

  push(chunk) {
    this.#buffer += chunk
    for (;;) {
      const m = /\r\n|\r|\n/.exec(this.#buffer)
      // A lone \r at the end may be the first half of \r\n: wait for more.
      if (!m || (m[0] === "\r" && m.index === this.#buffer.length - 1)) return
      const line = this.#buffer.slice(0, m.index)
      this.#buffer = this.#buffer.slice(m.index + m[0].length)
      this.#line(line)
    }
  }

  #line(line) {
    if (line === "") return this.#dispatch()
    if (line.startsWith(":")) return
    const colon = line.indexOf(":")
    const field = colon < 0 ? line : line.slice(0, colon)
    let value = colon < 0 ? "" : line.slice(colon + 1)
    if (value.startsWith(" ")) value = value.slice(1)
    if (field === "event") this.#type = value
    else if (field === "data") this.#data.push(value)
  }

  #dispatch() {
    const type = this.#type || "message"
    const data = this.#data.join("\n")
    const had = this.#data.length > 0
    this.#type = ""
    this.#data = []
    if (had) this.onEvent(type, data)
  }
}

function sleep(ms, signal) {
  return new Promise(resolve => {
    const timer = setTimeout(resolve, ms)
    signal.addEventListener("abort", () => {
      clearTimeout(timer)
      resolve()
    })
  })
}

/**
 * Follows GET /v1/events?QUERY with fetch (EventSource cannot send the
 * Authorization header), reconnecting with backoff when the stream ends.
 * `handlers[type](data)` gets each event's parsed JSON; `onResume()` runs
 * after a reconnect, since changes made meanwhile were not streamed.
 */
function follow(streamQuery, handlers, onResume) {
  const ctrl = new AbortController()
  const stream = { key: streamQuery, stop: () => ctrl.abort() }
  const run = async () => {
    setLive("connecting")
    let failures = 0
    let opened = false
    while (!ctrl.signal.aborted) {
      try {
        const res = await fetch(`v1/events?${streamQuery}`, {
          headers: authHeaders({ Accept: "text/event-stream" }),
          signal: ctrl.signal,
          cache: "no-store",
        })
        if (res.status === 401) return askForToken("The token was refused (it may have expired).")
        if (res.status >= 400 && res.status < 500 && res.status !== 429) {
          return showError(new ApiError(res.status, `http_${res.status}`, `the live stream was refused`))
        }
        if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`)
        setLive("live")
        failures = 0
        if (opened) onResume()
        opened = true
        const parser = new SseParser((type, data) => {
          if (!handlers[type]) return
          let parsed
          try {
            parsed = JSON.parse(data)
          } catch {
            return
          }
          handlers[type](parsed)
        })
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader()
        for (;;) {
          const { value, done } = await reader.read()
          if (done) break
          parser.push(value)
        }
      } catch (e) {
        if (ctrl.signal.aborted) return
      }
      if (ctrl.signal.aborted) return
      setLive("reconnecting")
      const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** failures)
      failures += 1
      await sleep(delay * (0.75 + Math.random() / 2), ctrl.signal)
    }
  }
  run()
  return stream
}

function setLive(status) {
  const el = $("live")
  el.dataset.status = status
  el.textContent = { live: "live", connecting: "connecting…", reconnecting: "reconnecting…" }[status] ?? ""
}

/** Keeps the stream of `kind` following `streamQuery` (null: none). */
function ensureStream(kind, streamQuery, handlers, onResume) {
  const current = state.streams[kind]
  if (current && current.key === streamQuery) return
  current?.stop()
  state.streams[kind] = streamQuery ? follow(streamQuery, handlers, onResume) : null
  if (!state.streams.collection && !state.streams.record) setLive("")
}

function stopStreams() {
  for (const kind of Object.keys(state.streams)) ensureStream(kind, null)
}

/**
 * Wraps an async refresh so that calls while one runs coalesce into a
 * single run after it (a burst of changes costs two fetches, not N).
 */
function coalesce(fn) {
  let running = null
  let again = false
  const call = async () => {
    if (running) {
      again = true
      return running
    }
    running = (async () => {
      do {
        again = false
        try {
          await fn()
        } catch (e) {
          showError(e)
        }
      } while (again)
    })()
    try {
      await running
    } finally {
      running = null
    }
  }
  return call
}

// ------------------------------------------------------------------ routing

/** The view in the URL fragment: c (collection), r (record), at, diff, q, deleted. */
function route() {
  const p = new URLSearchParams(location.hash.slice(1))
  return {
    collection: p.get("c") ?? "",
    record: p.get("r") ?? "",
    at: p.get("at") ?? "",
    diff: p.get("diff") ?? "",
    q: p.get("q") ?? "",
    deleted: p.get("deleted") === "1",
  }
}

function href(params) {
  const q = query({ c: params.collection, r: params.record, at: params.at, diff: params.diff, q: params.q, deleted: params.deleted ? "1" : "" })
  return `#${q}`
}

/** Changes the fragment without a history entry per keystroke, then re-renders. */
function replaceRoute(changes) {
  history.replaceState(null, "", href({ ...route(), ...changes }))
  render()
}

function render() {
  const r = route()
  clearError()
  markCollection(r.collection)
  show($("welcome"), !r.collection && !r.record)
  show($("table-view"), Boolean(r.collection) && !r.record)
  show($("record-view"), Boolean(r.record))
  if (r.record) {
    ensureStream("collection", null)
    ensureStream("record", `record=${enc(r.record)}`, recordHandlers, refreshRecord)
    refreshRecord()
  } else if (r.collection) {
    ensureStream("record", null)
    ensureStream("collection", `collection=${enc(r.collection)}`, tableHandlers, reloadAll)
    if (document.activeElement !== $("search")) $("search").value = r.q
    $("deleted-toggle").checked = r.deleted
    refreshTable()
  } else {
    stopStreams()
  }
  document.title = `${r.record ? short(r.record, 12) : r.collection || "Accord"} — Accord inspector`
}

function reloadAll() {
  refreshCollections()
  render()
}

// ------------------------------------------------------------------ collections

const refreshCollections = coalesce(async () => {
  const { collections } = await api("v1/collections")
  state.collections = collections
  renderCollections()
})

function renderCollections() {
  const list = $("collections")
  list.replaceChildren(
    ...state.collections.map(c =>
      h(
        "li",
        {},
        h(
          "a",
          { href: href({ collection: c.name }), "data-testid": `collection-${c.name}`, "data-name": c.name },
          h("span", { class: "name" }, c.name),
          h(
            "span",
            { class: "count", title: `${fmtCount(c.records, "record")}, ${fmtCount(c.deleted, "deleted record")}` },
            c.records.toLocaleString("en"),
            c.deleted ? h("span", { class: "muted" }, ` +${c.deleted.toLocaleString("en")} deleted`) : null,
          ),
          c.writable
            ? null
            : h("span", { class: "badge badge-muted", "data-testid": "read-only-collection", title: "this token reads but cannot write here" }, "read-only"),
        ),
      ),
    ),
  )
  show($("no-collections"), state.collections.length === 0)
  markCollection(route().collection)
}

function markCollection(name) {
  for (const a of $("collections").querySelectorAll("a")) {
    if (a.dataset.name === name) a.setAttribute("aria-current", "page")
    else a.removeAttribute("aria-current")
  }
}

// ------------------------------------------------------------------ records table

const tableHandlers = {
  change: () => {
    refreshTable()
    refreshCollections()
  },
  missed: () => reloadAll(),
}

function recordsPath(r, { limit, cursor }) {
  return `v1/collections/${enc(r.collection)}/records?${query({ limit, cursor, q: r.q, deleted: r.deleted ? "true" : "" })}`
}

/**
 * Loads the first page of the table, or as many rows as are shown when the
 * same filters are refreshed (a live change keeps the pages the user loaded).
 */
const refreshTable = coalesce(async () => {
  const r = route()
  if (!r.collection || r.record) return
  const key = JSON.stringify([r.collection, r.q, r.deleted])
  const sameView = state.table.key === key
  const limit = sameView ? Math.min(MAX_LIMIT, Math.max(PAGE_SIZE, state.table.records.length)) : PAGE_SIZE
  const page = await api(recordsPath(r, { limit }))
  if (JSON.stringify([route().collection, route().q, route().deleted]) !== key || route().record) return
  state.table = { key, records: page.records, next: page.next, total: page.total }
  renderTable(r)
})

async function moreRecords() {
  const r = route()
  const { key, next } = state.table
  if (!next) return
  const button = $("more")
  button.disabled = true
  try {
    const page = await api(recordsPath(r, { limit: PAGE_SIZE, cursor: next }))
    if (state.table.key !== key) return
    state.table.records.push(...page.records)
    state.table.next = page.next
    state.table.total = page.total
    renderTable(r)
  } catch (e) {
    showError(e)
  } finally {
    button.disabled = false
  }
}

function renderTable(r) {
  const { records, next, total } = state.table
  $("table-title").textContent = r.collection
  const shown = records.length < total ? `, ${records.length.toLocaleString("en")} shown` : ""
  $("table-total").textContent = `${fmtCount(total, r.q ? "match" : "record", r.q ? "matches" : "records")}${shown}`
  $("records").replaceChildren(...records.map(rec => recordRow(r, rec)))
  // The change count shows only when the server gives it.
  $("records-table").classList.toggle("no-changes", !records.some(rec => rec.changes !== undefined))
  show($("records-empty"), records.length === 0)
  show($("more"), Boolean(next))
}

/**
 * A one-line summary of a record's content: its plain fields first
 * (`name: "Ada"`), then its objects and lists as `{…}` and `[n]`.
 */
function preview(value) {
  let text
  if (isContainer(value) && !Array.isArray(value)) {
    const fields = Object.entries(value)
    const plain = fields.filter(([, v]) => !isContainer(v)).map(([k, v]) => `${k}: ${JSON.stringify(v)}`)
    const nested = fields.filter(([, v]) => isContainer(v)).map(([k, v]) => `${k}: ${Array.isArray(v) ? `[${v.length}]` : "{…}"}`)
    text = [...plain, ...nested].join(", ") || "{}"
  } else {
    text = JSON.stringify(value) ?? ""
  }
  return text.length > 200 ? `${text.slice(0, 199)}…` : text
}

function recordRow(r, rec) {
  const link = href({ collection: r.collection, record: rec.id })
  return h(
    "tr",
    {
      "data-testid": "record-row",
      "data-id": rec.id,
      class: rec.deleted ? "deleted" : null,
      onclick: e => {
        if (e.target.closest("a") || getSelection().toString()) return
        location.hash = link
      },
    },
    h("td", { class: "mono" }, h("a", { href: link, "data-testid": "record-link" }, rec.id)),
    h("td", { class: "preview mono" }, preview(rec.value)),
    h("td", { class: "nowrap" }, timeEl(rec.updated)),
    h("td", { class: "num changes" }, rec.changes ?? ""),
    h(
      "td",
      { class: "badges" },
      rec.deleted ? h("span", { class: "badge badge-deleted", "data-testid": "row-deleted-badge" }, "deleted") : null,
      rec.conflicts
        ? h("span", { class: "badge badge-conflict", "data-testid": "row-conflicts-badge" }, fmtCount(rec.conflicts, "conflict"))
        : null,
    ),
  )
}

function onSearchInput() {
  clearTimeout(onSearchInput.timer)
  onSearchInput.timer = setTimeout(() => replaceRoute({ q: $("search").value.trim() }), SEARCH_DELAY_MS)
}

// ------------------------------------------------------------------ record

const recordHandlers = {
  change: () => refreshRecord(),
  presence: data => renderPresence(data.peers ?? []),
  missed: () => reloadAll(),
}

/** Loads the open record (now, and as of `at`), its history, presence and diff. */
const refreshRecord = coalesce(async () => {
  const r = route()
  if (!r.record) return
  const base = `v1/records/${enc(r.record)}`
  const relay = state.info?.server === "accord-relay"
  const [current, asOf, history, presence] = await Promise.all([
    api(base),
    r.at ? api(`${base}?${query({ at: r.at })}`) : null,
    api(`${base}/history?${query({ limit: HISTORY_PAGE })}`),
    relay ? api(`${base}/presence`) : null,
  ])
  if (route().record !== r.record) return
  state.history = { id: r.record, current, changes: history.changes, next: history.next, total: history.total }
  renderRecord(r, current, asOf)
  renderHistory(r, current)
  renderPresence(presence?.peers ?? null)
  await renderDiff(r)
})

function renderRecord(r, current, asOf) {
  const shown = asOf ?? current
  $("record-id").textContent = current.id
  $("back").href = href({ collection: current.collection })
  $("back-label").textContent = current.collection
  const deleted = $("deleted-badge")
  show(deleted, current.deleted)
  const conflicts = $("conflicts-badge")
  conflicts.textContent = fmtCount(current.conflicts, "conflict")
  show(conflicts, current.conflicts > 0)
  $("record-meta").textContent = [
    current.collection,
    `created ${fmtTime(current.created)}`,
    `updated ${fmtTime(current.updated)}`,
    fmtCount(current.changes, "change"),
    `heads ${(current.heads ?? []).map(x => short(x)).join(", ") || "none"}`,
  ].join(" · ")
  const banner = $("as-of-banner")
  show(banner, Boolean(asOf))
  if (asOf) {
    const change = state.history.changes.find(c => c.hash.startsWith(r.at))
    const details = change ? [change.time && fmtTime(change.time), change.message && `“${change.message}”`].filter(Boolean) : []
    const what = `${short(change?.hash ?? r.at)}${details.length ? ` (${details.join(", ")})` : ""}`
    $("as-of-text").textContent = `Showing this record as of change ${what}, not its current version.`
    $("as-of-exit").href = href({ ...r, at: "" })
  }
  $("record-json").replaceChildren(jsonTree(shown.value))
}

function renderPresence(peers) {
  const el = $("presence")
  if (peers === null) return show(el, false)
  show(el, true)
  if (peers.length === 0) {
    el.textContent = "Open now by nobody else."
    return
  }
  el.replaceChildren(
    "Open now by: ",
    ...peers.flatMap((p, i) => [
      i ? ", " : "",
      h("span", { class: "mono peer", "data-testid": "presence-peer", title: `last seen ${fmtTime(p.seen)}` }, p.peer),
    ]),
  )
}

async function moreHistory() {
  const r = route()
  const { id, next } = state.history
  if (!next) return
  try {
    const page = await api(`v1/records/${enc(id)}/history?${query({ limit: HISTORY_PAGE, cursor: next })}`)
    if (state.history.id !== id) return
    state.history.changes.push(...page.changes)
    state.history.next = page.next
    renderHistory(r, state.history.current)
  } catch (e) {
    showError(e)
  }
}

function renderHistory(r, current) {
  const { changes, next, total } = state.history
  $("history-total").textContent = `(${fmtCount(total, "change")})`
  // A deletion is a tombstone, not a change: shown on top, with when this server stored it.
  const tombstone = current?.deleted
    ? h("li", { class: "tombstone", "data-testid": "history-tombstone" }, h("div", { class: "entry-head" }, timeEl(current.updated)), h("div", { class: "entry-message" }, "deleted"))
    : null
  $("history").replaceChildren(...[tombstone, ...changes.map((c, i) => historyEntry(r, c, i === 0))].filter(Boolean))
  show($("history-more"), Boolean(next))
}

function historyEntry(r, c, newest) {
  const isAt = r.at && c.hash.startsWith(r.at)
  const isDiff = r.diff && c.hash.startsWith(r.diff)
  return h(
    "li",
    { "data-testid": "history-entry", "data-hash": c.hash, class: isAt ? "selected" : null, "aria-current": isAt ? "true" : null },
    h(
      "div",
      { class: "entry-head" },
      timeEl(c.time),
      newest ? h("span", { class: "badge badge-muted" }, "latest") : null,
      h("span", { class: "muted", title: `${c.ops} operations` }, fmtCount(c.ops, "op")),
    ),
    h("div", { class: "entry-message" }, c.message ? h("span", { "data-testid": "history-message" }, c.message) : h("span", { class: "muted" }, "no message")),
    h(
      "div",
      { class: "entry-who muted" },
      "device ",
      h("span", { class: "mono", title: `actor ${c.actor}` }, c.device ?? short(c.actor, 16)),
      ` · seq ${c.seq} · `,
      h("span", { class: "mono", title: c.hash }, short(c.hash)),
    ),
    h(
      "div",
      { class: "entry-actions" },
      isAt
        ? h("span", { class: "muted" }, "shown above")
        : h("a", { href: href({ ...r, at: newest ? "" : c.hash }), "data-testid": "view-at" }, newest ? "view current" : "view as of this change"),
      h(
        "a",
        { href: href({ ...r, diff: isDiff ? "" : c.hash }), "data-testid": "view-diff", "aria-pressed": isDiff ? "true" : "false" },
        isDiff ? "hide diff" : "diff against the previous change",
      ),
    ),
  )
}

async function renderDiff(r) {
  const panel = $("diff")
  const change = r.diff ? state.history.changes.find(c => c.hash.startsWith(r.diff)) : null
  if (!change) return show(panel, false)
  // `from` is always given: empty means the empty record.
  const path = `v1/records/${enc(r.record)}/diff?from=${enc(change.deps.join(","))}&to=${enc(change.hash)}`
  const diff = await api(path)
  if (route().diff !== r.diff) return
  $("diff-title").textContent =
    `Change ${short(change.hash)}${change.message ? ` “${change.message}”` : ""} against ` +
    (change.deps.length ? `the previous ${change.deps.length === 1 ? "change" : "changes"} ${change.deps.map(d => short(d)).join(", ")}` : "the empty record")
  const patches = diff.patches ?? []
  $("diff-patches").replaceChildren(
    ...(patches.length
      ? patches.map(p =>
          h("li", { "data-testid": "patch", "data-action": p.action, class: `patch patch-${p.action}` }, h("span", { class: "action" }, p.action), " ", h("span", { class: "mono" }, p.description ?? JSON.stringify(p))),
        )
      : [h("li", { class: "muted" }, "No visible change.")]),
  )
  show(panel, true)
}

// ------------------------------------------------------------------ JSON tree

/** A record's value as a collapsible tree (details/summary per object and list). */
function jsonTree(value) {
  if (!isContainer(value)) return h("div", { class: "tree-root" }, leaf(value))
  return h("ul", { class: "tree", role: "tree" }, ...entries(value).map(([k, v]) => treeItem(k, v, [k])))
}

function isContainer(v) {
  return v !== null && typeof v === "object"
}

function entries(v) {
  return Array.isArray(v) ? v.map((x, i) => [i, x]) : Object.entries(v)
}

function treeItem(key, value, path) {
  const dataPath = path.join(".")
  const keyEl = h("span", { class: Array.isArray(value) || typeof key === "number" ? "key index" : "key" }, String(key))
  if (!isContainer(value) || entries(value).length === 0) {
    return h("li", { role: "treeitem", class: "leaf", "data-path": dataPath }, keyEl, h("span", { class: "punct" }, ": "), leaf(value))
  }
  const kids = entries(value)
  const summary = Array.isArray(value) ? `[${fmtCount(kids.length, "item")}]` : `{${fmtCount(kids.length, "key")}}`
  const details = h(
    "details",
    { open: path.length < 3 && kids.length <= 50 },
    h("summary", {}, keyEl, h("span", { class: "punct" }, ": "), h("span", { class: "muted" }, summary)),
    h("ul", { class: "tree", role: "group" }, ...kids.map(([k, v]) => treeItem(k, v, [...path, k]))),
  )
  return h("li", { role: "treeitem", "data-path": dataPath }, details)
}

function leaf(v) {
  if (v === null) return h("span", { class: "v v-null" }, "null")
  if (Array.isArray(v)) return h("span", { class: "v" }, "[]")
  if (typeof v === "object") return h("span", { class: "v" }, "{}")
  if (typeof v === "string") return h("span", { class: "v v-string" }, JSON.stringify(v))
  return h("span", { class: `v v-${typeof v}` }, String(v))
}

// ------------------------------------------------------------------ start

/** Shows the app with the collections this token sees, then the routed view. */
async function enter() {
  try {
    await refreshCollectionsOrThrow()
  } catch (e) {
    showError(e)
    return
  }
  show($("token-view"), false)
  show($("app"), true)
  show($("forget-token"), state.info?.auth === "token")
  render()
}

async function refreshCollectionsOrThrow() {
  const { collections } = await api("v1/collections")
  state.collections = collections
  renderCollections()
}

async function start() {
  $("token-form").addEventListener("submit", submitToken)
  $("forget-token").addEventListener("click", () => askForToken())
  $("search-form").addEventListener("submit", e => {
    e.preventDefault()
    clearTimeout(onSearchInput.timer)
    replaceRoute({ q: $("search").value.trim() })
  })
  $("search").addEventListener("input", onSearchInput)
  $("deleted-toggle").addEventListener("change", e => replaceRoute({ deleted: e.target.checked }))
  $("more").addEventListener("click", moreRecords)
  $("history-more").addEventListener("click", moreHistory)
  $("diff-close").addEventListener("click", () => replaceRoute({ diff: "" }))
  window.addEventListener("hashchange", () => {
    if (!$("app").hidden) render()
  })

  try {
    state.info = await api("v1/info")
  } catch (e) {
    showError(e)
    return
  }
  const { server, version, read_only: readOnly, auth } = state.info
  $("server").textContent = `${server} ${version}${auth === "open" ? " · no token needed" : ""}`
  show($("read-only"), Boolean(readOnly))
  if (auth === "token" && !state.token) return askForToken()
  await enter()
}

start()
