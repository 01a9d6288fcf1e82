#!/usr/bin/env node
// One benchmark workload (W1, W2 or W3 of `tests/src/bin/bench/`) run with
// the stock JavaScript automerge-repo client against one server URL: the
// same workloads `samod_side.rs` runs with samod clients, so the harness can
// put the JS client next to the Rust one. See README.md here.
//
//   node load.mjs w1        --url URL --k K --n N [--cap-secs S] --dir DIR
//   node load.mjs w2-upload --url URL --d D       [--cap-secs S] --dir DIR
//   node load.mjs w2-sync   --url URL --ids-file FILE [--cap-secs S] --dir DIR
//   node load.mjs w3        --url URL --m M       [--cap-secs S] --dir DIR
//
// stdout carries exactly one JSON line: the figures, or `{"over_cap": PHASE}`
// (exit 0) when a phase ran past the cap. Everything else goes to stderr; any
// other failure exits non-zero.

import { mkdir, mkdtemp, readFile } from "node:fs/promises"
import path from "node:path"
import { performance } from "node:perf_hooks"
import { parseArgs } from "node:util"

import * as A from "@automerge/automerge"
import { Repo } from "@automerge/automerge-repo"
import { BrowserWebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket"
import { NodeFSStorageAdapter } from "@automerge/automerge-repo-storage-nodefs"

// stdout is the result line alone: the library logs some errors with
// console.log, so every console method writes to stderr.
const writeStdout = process.stdout.write.bind(process.stdout)
console.log = console.info = console.debug = console.warn = (...args) => console.error(...args)

const USAGE = `usage:
  node load.mjs w1        --url URL --k K --n N [--cap-secs S] --dir DIR
  node load.mjs w2-upload --url URL --d D       [--cap-secs S] --dir DIR
  node load.mjs w2-sync   --url URL --ids-file FILE [--cap-secs S] --dir DIR
  node load.mjs w3        --url URL --m M       [--cap-secs S] --dir DIR`

// ---------------------------------------------------------------- failures

/** A phase ran past the cap; reported as `{"over_cap": phase}`, exit 0. */
class OverCap extends Error {
  constructor(phase) {
    super(`${phase} ran past the time cap`)
    this.phase = phase
  }
}

class UsageError extends Error {}

/**
 * Rejects when a connection that was open closes without us closing it
 * (the stock adapter would silently redial, and the figures would be of a
 * different run): every phase races against it.
 */
let fail
const failed = new Promise((_, reject) => {
  fail = reject
})
failed.catch(() => {})

let capMs = 120_000

/**
 * Runs `phase` (a promise), failing with OverCap(`name`) after the cap, or
 * if it took longer than the cap all the same (a busy event loop can settle
 * the phase before it runs the cap's timer).
 */
async function capped(name, phase) {
  let timer
  const overCap = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new OverCap(name)), capMs)
  })
  const started = now()
  try {
    const result = await Promise.race([phase, overCap, failed])
    if (now() - started > capMs) throw new OverCap(name)
    return result
  } finally {
    clearTimeout(timer)
  }
}

// ---------------------------------------------------------------- clients

/**
 * The stock WebSocket client adapter, counting WebSocket messages and their
 * payload bytes each way (framing not included), failing the run if an open
 * connection closes under it, and never redialling once disconnected.
 */
class CountingAdapter extends BrowserWebSocketClientAdapter {
  messagesIn = 0
  messagesOut = 0
  bytesIn = 0
  bytesOut = 0
  #stopped = false

  constructor(url) {
    super(url)
    // The stock handler throws (uncaught) on any socket error but
    // ECONNREFUSED; report it instead: a close follows, which fails the run
    // if the socket was open, and the adapter redials if it was not.
    this.onError = event => {
      const error = event?.error ?? event
      if (error?.code !== "ECONNREFUSED") console.error(`load.mjs: socket error on ${this.url}: ${error?.message ?? error}`)
    }
  }

  connect(peerId, peerMetadata) {
    if (this.#stopped) return
    super.connect(peerId, peerMetadata)
    const socket = this.socket
    const send = socket.send.bind(socket)
    socket.send = (data, ...rest) => {
      this.messagesOut += 1
      this.bytesOut += data.byteLength ?? data.length
      return send(data, ...rest)
    }
    let opened = false
    socket.addEventListener("open", () => {
      opened = true
    })
    socket.addEventListener("close", event => {
      if (opened && !this.#stopped && socket === this.socket) {
        fail(new Error(`the connection to ${this.url} closed unexpectedly (code ${event.code}${event.reason ? `, ${event.reason}` : ""})`))
      }
    })
  }

  receiveMessage(messageBytes) {
    this.messagesIn += 1
    this.bytesIn += messageBytes.byteLength
    super.receiveMessage(messageBytes)
  }

  disconnect() {
    this.#stopped = true
    if (!this.socket) return
    // Closing a `ws` socket that is still connecting emits `error`; with the
    // adapter's listeners gone, an unheard `error` would crash the process.
    this.socket.on?.("error", () => {})
    super.disconnect()
  }

  get messages() {
    return this.messagesIn + this.messagesOut
  }

  get bytes() {
    return this.bytesIn + this.bytesOut
  }
}

/** Resolves with the server's peer id once it accepts `adapter`'s join. */
function accepted(adapter) {
  return new Promise(resolve => adapter.once("peer-candidate", ({ peerId }) => resolve(peerId)))
}

/**
 * A client repo with NodeFS storage in `dir`, connected to `url` through a
 * CountingAdapter. `client.connected` resolves with the server as this repo
 * knows it (`peerId`, and `storageId` if it announced one).
 */
function openClient(url, dir) {
  const adapter = new CountingAdapter(url)
  const repo = new Repo({
    network: [adapter],
    storage: new NodeFSStorageAdapter(dir),
    // Like a browser client of a sync server: share everything with it.
    sharePolicy: async () => true,
  })
  const client = { repo, adapter, theirHeads: trackTheirHeads(repo) }
  client.connected = connectedThrough(client, adapter)
  return client
}

/** Resolves with the server as `client` knows it once `adapter` is accepted. */
async function connectedThrough(client, adapter) {
  const peerId = await accepted(adapter)
  return { peerId, storageId: client.repo.getStorageIdOfPeer(peerId) }
}

/**
 * The latest heads (hex) each peer has shown in its sync messages, per
 * document, kept from the repo's `sync-state` events: how to tell what a
 * server without a storage id holds.
 */
function trackTheirHeads(repo) {
  const heads = new Map()
  const waiters = new Set()
  repo.synchronizer.on("sync-state", ({ peerId, documentId, syncState }) => {
    if (!syncState.theirHeads) return
    heads.set(`${peerId} ${documentId}`, syncState.theirHeads)
    for (const w of waiters) w()
  })
  return {
    get: (peerId, documentId) => heads.get(`${peerId} ${documentId}`),
    /** Resolves once `pred()` holds, checked now and at each sync-state event. */
    until(pred) {
      if (pred()) return Promise.resolve()
      return new Promise(resolve => {
        const w = () => {
          if (pred()) {
            waiters.delete(w)
            resolve()
          }
        }
        waiters.add(w)
      })
    },
  }
}

/**
 * Resolves once `server` holds every change of `handle` (its heads include
 * ours): by the handle's sync info for the server's storage id (the
 * `remote-heads` event) when it announced one, else by the heads in its
 * sync messages.
 */
function serverHolds(client, handle, server) {
  if (server.storageId) {
    const mine = handle.heads()
    const holds = heads => !!heads && mine.every(h => heads.includes(h))
    if (holds(handle.getSyncInfo(server.storageId)?.lastHeads)) return Promise.resolve()
    return new Promise(resolve => {
      const listener = ({ storageId, heads }) => {
        if (storageId === server.storageId && holds(heads)) {
          handle.off("remote-heads", listener)
          resolve()
        }
      }
      handle.on("remote-heads", listener)
    })
  }
  const mine = A.getHeads(handle.doc())
  return client.theirHeads.until(() => {
    const theirs = client.theirHeads.get(server.peerId, handle.documentId)
    return !!theirs && mine.every(h => theirs.includes(h))
  })
}

/** Shuts the repos down (flushing their storage), within a few seconds. */
async function shutdown(clients) {
  let timer
  const limit = new Promise(resolve => {
    timer = setTimeout(() => {
      console.error("load.mjs: repo shutdown took over 10 s; exiting anyway")
      resolve()
    }, 10_000)
  })
  const all = Promise.all(
    clients.map(c =>
      c.repo.shutdown().catch(e => {
        console.error(`load.mjs: repo shutdown failed: ${e?.stack ?? e}`)
      }),
    ),
  )
  await Promise.race([all, limit])
  clearTimeout(timer)
}

const now = () => performance.now()
const sameHeads = (a, b) => a.length === b.length && a.every(h => b.includes(h))

// ---------------------------------------------------------------- W1

/**
 * W1, fan-out: K repos; client 0 creates `{k: -1}`, and once the server
 * holds it the others find it; client 0 then makes N changes `k = i` as fast
 * as it can, and every reader watches its `change` events until it sees
 * `k == N - 1`.
 */
async function w1({ url, k, n, dir }) {
  if (k < 1 || n < 1) throw new UsageError("w1 needs --k >= 1 and --n >= 1")
  const clients = []
  for (let i = 0; i < k; i++) clients.push(openClient(url, path.join(dir, `c${i}`)))
  try {
    const servers = await capped("JS connect", Promise.all(clients.map(c => c.connected)))
    const writer = clients[0].repo.create({ k: -1 })
    await capped("JS upload", serverHolds(clients[0], writer, servers[0]))
    const readers = await capped("W1 open", Promise.all(clients.slice(1).map(c => c.repo.find(writer.url))))
    const target = n - 1
    const watchers = readers.map(
      handle =>
        new Promise(resolve => {
          if (handle.doc()?.k === target) return resolve(now())
          const listener = ({ doc }) => {
            if (doc.k === target) {
              const at = now()
              handle.off("change", listener)
              resolve(at)
            }
          }
          handle.on("change", listener)
        }),
    )
    const started = now()
    for (let i = 0; i < n; i++) {
      writer.change(d => {
        d.k = i
      })
    }
    const last = now()
    const seen = (await capped("W1 fan-out", Promise.all(watchers))).reduce((a, b) => Math.max(a, b), last)
    return {
      total_s: (seen - started) / 1e3,
      last_latency_ms: Math.max(0, seen - last),
    }
  } finally {
    await shutdown(clients)
  }
}

// ---------------------------------------------------------------- W2

/** Document `i` of W2: ten changes, each setting `field{j}` to a (scalar) string. */
function tenChangeDoc(i) {
  let doc = A.init()
  for (let j = 0; j < 10; j++) {
    doc = A.change(doc, d => {
      d[`field${j}`] = new A.ImmutableString(`document ${i}, value ${j}`)
    })
  }
  return doc
}

/**
 * W2, upload: a source repo creates the D documents and waits until the
 * server holds them all; prints their ids and the sum of their saved sizes.
 */
async function w2Upload({ url, d, dir }) {
  if (d < 1) throw new UsageError("w2-upload needs --d >= 1")
  const source = openClient(url, path.join(dir, "source"))
  try {
    const server = await capped("JS connect", source.connected)
    const handles = []
    let savedBytes = 0
    for (let i = 0; i < d; i++) {
      const doc = tenChangeDoc(i)
      const bytes = A.save(doc)
      savedBytes += bytes.length
      // `import` without an id is `create` with this document as its
      // content: the document keeps exactly its ten changes.
      handles.push(source.repo.import(bytes))
    }
    await capped("W2 upload", Promise.all(handles.map(h => serverHolds(source, h, server))))
    return { ids: handles.map(h => h.documentId), saved_bytes: savedBytes }
  } finally {
    await shutdown([source])
  }
}

/** Document ids from a file: w2-upload's output, a JSON array, or one per line. */
async function readIds(file) {
  const text = (await readFile(file, "utf8")).trim()
  let ids
  if (text.startsWith("{") || text.startsWith("[")) {
    const parsed = JSON.parse(text)
    ids = Array.isArray(parsed) ? parsed : parsed.ids
  } else {
    ids = text.split(/\s+/).filter(Boolean)
  }
  if (!Array.isArray(ids) || ids.length === 0 || !ids.every(id => typeof id === "string")) {
    throw new UsageError(`${file} holds no document ids (want w2-upload's JSON, a JSON array, or one id per line)`)
  }
  return ids
}

/**
 * W2, cold sync: a fresh repo with empty storage finds every document
 * through the URL; `cold_s` from dialling until all are found.
 */
async function w2Sync({ url, idsFile, dir }) {
  if (!idsFile) throw new UsageError("w2-sync needs --ids-file")
  const ids = await readIds(idsFile)
  // A fresh directory each run, so storage is empty even if --dir is reused.
  const storage = await mkdtemp(path.join(dir, "sync-"))
  const started = now()
  const fresh = openClient(url, storage)
  try {
    await capped("JS connect", fresh.connected)
    const handles = await capped("W2 cold sync", Promise.all(ids.map(id => fresh.repo.find(id))))
    const coldMs = now() - started
    const empty = handles.filter(h => h.doc()?.field9 === undefined).length
    if (empty) throw new Error(`${empty} of ${ids.length} documents were found without their content`)
    return { cold_s: coldMs / 1e3, bytes: fresh.adapter.bytes }
  } finally {
    await shutdown([fresh])
  }
}

// ---------------------------------------------------------------- W3

/** Resolves with the instant `a` and `b` have identical heads. */
function converged(a, b) {
  return new Promise(resolve => {
    const check = () => {
      if (sameHeads(a.heads(), b.heads())) {
        const at = now()
        a.off("heads-changed", check)
        b.off("heads-changed", check)
        resolve(at)
        return true
      }
      return false
    }
    if (check()) return
    a.on("heads-changed", check)
    b.on("heads-changed", check)
  })
}

/**
 * W3, offline divergence then merge: repos a and b share `{k: -1}` through
 * the server, drop their connections, make M changes each (`a = i`,
 * `b = i`), then reconnect (new adapters, as an app coming back online
 * would) until both have identical heads.
 */
async function w3({ url, m, dir }) {
  if (m < 1) throw new UsageError("w3 needs --m >= 1")
  const a = openClient(url, path.join(dir, "a"))
  const b = openClient(url, path.join(dir, "b"))
  try {
    const [serverA] = await capped("JS connect", Promise.all([a.connected, b.connected]))
    const ha = a.repo.create({ k: -1 })
    await capped("JS upload", serverHolds(a, ha, serverA))
    const hb = await capped("W3 share", b.repo.find(ha.url))
    // Offline: the repos drop their adapters (closing the sockets).
    a.repo.networkSubsystem.removeNetworkAdapter(a.adapter)
    b.repo.networkSubsystem.removeNetworkAdapter(b.adapter)
    const base = A.getHeads(ha.doc())
    for (let i = 0; i < m; i++) {
      ha.change(d => {
        d.a = i
      })
      hb.change(d => {
        d.b = i
      })
    }
    const missing = A.saveSince(ha.doc(), base).length + A.saveSince(hb.doc(), base).length
    // Online again: a new adapter each, counted from its first message.
    const started = now()
    const a2 = new CountingAdapter(url)
    const b2 = new CountingAdapter(url)
    a.repo.networkSubsystem.addNetworkAdapter(a2)
    b.repo.networkSubsystem.addNetworkAdapter(b2)
    const done = await capped("W3 merge", converged(ha, hb))
    const messages = a2.messages + b2.messages
    const bytes = a2.bytes + b2.bytes
    for (const [name, h] of [["a", ha], ["b", hb]]) {
      const doc = h.doc()
      if (doc.a !== m - 1 || doc.b !== m - 1) throw new Error(`${name} converged to a=${doc.a}, b=${doc.b}; want both ${m - 1}`)
    }
    return { time_s: (done - started) / 1e3, messages, bytes, missing_bytes: missing }
  } finally {
    await shutdown([a, b])
  }
}

// ---------------------------------------------------------------- main

const WORKLOADS = { w1, "w2-upload": w2Upload, "w2-sync": w2Sync, w3 }

function count(values, name, required) {
  const text = values[name]
  if (text === undefined) {
    if (required) throw new UsageError(`--${name} is required`)
    return undefined
  }
  const value = Number(text)
  if (!Number.isInteger(value) || value < 0) throw new UsageError(`--${name} must be a non-negative integer, not ${JSON.stringify(text)}`)
  return value
}

function parse(argv) {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      url: { type: "string" },
      dir: { type: "string" },
      "cap-secs": { type: "string", default: "120" },
      k: { type: "string" },
      n: { type: "string" },
      d: { type: "string" },
      m: { type: "string" },
      "ids-file": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  })
  if (values.help) {
    console.error(USAGE)
    process.exit(0)
  }
  if (positionals.length !== 1 || !WORKLOADS[positionals[0]]) {
    throw new UsageError(`want one workload of ${Object.keys(WORKLOADS).join(", ")}; got ${JSON.stringify(positionals)}`)
  }
  const workload = positionals[0]
  if (!values.url) throw new UsageError("--url is required")
  if (!/^wss?:\/\//.test(values.url)) throw new UsageError(`--url must be a ws:// or wss:// URL, not ${values.url}`)
  if (!values.dir) throw new UsageError("--dir is required")
  const capSecs = Number(values["cap-secs"])
  if (!(capSecs > 0)) throw new UsageError(`--cap-secs must be positive, not ${values["cap-secs"]}`)
  return {
    workload,
    capSecs,
    opts: {
      url: values.url,
      dir: path.resolve(values.dir),
      k: count(values, "k", workload === "w1"),
      n: count(values, "n", workload === "w1"),
      d: count(values, "d", workload === "w2-upload"),
      m: count(values, "m", workload === "w3"),
      idsFile: values["ids-file"],
    },
  }
}

function finish(result, code) {
  writeStdout(JSON.stringify(result) + "\n", () => process.exit(code))
}

async function main() {
  let parsed
  try {
    parsed = parse(process.argv.slice(2))
  } catch (e) {
    console.error(`load.mjs: ${e.message}\n${USAGE}`)
    process.exit(2)
  }
  const { workload, capSecs, opts } = parsed
  capMs = capSecs * 1e3
  await mkdir(opts.dir, { recursive: true })
  try {
    finish(await WORKLOADS[workload](opts), 0)
  } catch (e) {
    if (e instanceof OverCap) {
      console.error(`load.mjs: ${workload}: ${e.message}`)
      finish({ over_cap: e.phase }, 0)
    } else if (e instanceof UsageError) {
      console.error(`load.mjs: ${e.message}\n${USAGE}`)
      process.exit(2)
    } else {
      console.error(`load.mjs: ${workload} failed: ${e?.stack ?? e}`)
      process.exit(1)
    }
  }
}

process.on("unhandledRejection", e => {
  console.error(`load.mjs: unhandled rejection: ${e?.stack ?? e}`)
  process.exit(1)
})
process.on("uncaughtException", e => {
  console.error(`load.mjs: uncaught exception: ${e?.stack ?? e}`)
  process.exit(1)
})

await main()
