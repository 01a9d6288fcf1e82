// Shared machinery of the suite: a server per test (the real accord-relay, or
// the stock JS sync server with ACCORD_JS_TARGET=js-server), tokens, the
// `accord` CLI, JS repos whose WebSocket traffic is observed, and waits on
// events with clear time-outs.

import { spawn, execFile } from "node:child_process"
import { randomBytes } from "node:crypto"
import { mkdtemp, rm, writeFile } from "node:fs/promises"
import os from "node:os"
import path from "node:path"
import { createInterface } from "node:readline"
import { fileURLToPath } from "node:url"

import * as A from "@automerge/automerge"
import { Repo, cbor } from "@automerge/automerge-repo"
import { BrowserWebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket"
import { NodeFSStorageAdapter } from "@automerge/automerge-repo-storage-nodefs"

const here = path.dirname(fileURLToPath(import.meta.url))

/** `relay` (default): the accord-relay binary; `js-server`: the stock JS sync server. */
export const TARGET = process.env.ACCORD_JS_TARGET ?? "relay"
if (TARGET !== "relay" && TARGET !== "js-server") {
  throw new Error(`ACCORD_JS_TARGET must be "relay" or "js-server", not ${JSON.stringify(TARGET)}`)
}
export const ON_RELAY = TARGET === "relay"
/** For `test(name, { skip: RELAY_ONLY }, ...)`: tests of Accord specifics. */
export const RELAY_ONLY = ON_RELAY ? false : "needs accord-relay (ACCORD_JS_TARGET=js-server)"

/** The WebSocket path of the relay's automerge-repo door. */
export const DOOR_PATH = "/automerge-repo"

function requiredEnv(name, hint) {
  const value = process.env[name]
  if (!value) throw new Error(`${name} is not set: ${hint}`)
  return value
}

const relayBin = () =>
  requiredEnv("ACCORD_RELAY_BIN", "the path of the accord-relay binary (cargo build -p accord-relay)")
const accordBin = () =>
  requiredEnv("ACCORD_BIN", "the path of the accord CLI binary (cargo build -p accord-cli)")

// ---------------------------------------------------------------- waiting

/** Rejects with `Timed out after N ms: what` unless `promise` settles first. */
export function withTimeout(promise, ms, what) {
  let timer
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new TimeoutError(`timed out after ${ms} ms: ${what}`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

export class TimeoutError extends Error {
  name = "TimeoutError"
}

/**
 * Resolves with the first `event` of `emitter` whose payload passes `pred`.
 * For events only; state that has no event is polled with `until`.
 */
export function nextEvent(emitter, event, pred = () => true, ms = 10_000, what = event) {
  let listener
  const p = new Promise(resolve => {
    listener = payload => {
      if (pred(payload)) resolve(payload)
    }
    emitter.on(event, listener)
  })
  return withTimeout(p, ms, what).finally(() => emitter.off(event, listener))
}

/**
 * Resolves with the handle's document once `pred(doc)` holds: now, or at one
 * of the handle's `change` events (no polling).
 */
export function docSatisfies(handle, pred, ms = 10_000, what = "document to change") {
  if (pred(handle.doc())) return Promise.resolve(handle.doc())
  return nextEvent(handle, "change", ({ doc }) => pred(doc), ms, what).then(({ doc }) => doc)
}

/**
 * Polls `check` (sync or async; truthy = done) until it holds or `ms` pass,
 * for state that no event announces (a file another process writes). Rejects
 * with `what` and the last value or error seen.
 */
export async function until(check, { ms = 10_000, every = 50, what = "condition" } = {}) {
  const deadline = Date.now() + ms
  let last
  for (;;) {
    try {
      last = await check()
      if (last) return last
    } catch (e) {
      last = e
    }
    if (Date.now() >= deadline) {
      const seen = last instanceof Error ? last.message : JSON.stringify(last)
      throw new TimeoutError(`timed out after ${ms} ms waiting for ${what} (last seen: ${seen})`)
    }
    await new Promise(resolve => setTimeout(resolve, every))
  }
}

// ---------------------------------------------------------------- servers

/** Reads `child`'s stdout until a line matches `re`; rejects if it exits first. */
function awaitLine(child, re, ms, what, stderr) {
  return withTimeout(
    new Promise((resolve, reject) => {
      const lines = createInterface({ input: child.stdout })
      lines.on("line", line => {
        const m = re.exec(line)
        if (m) resolve(m)
      })
      child.once("exit", (code, signal) =>
        reject(new Error(`${what} exited (code ${code}, signal ${signal}) before printing its address; stderr:\n${stderr()}`)),
      )
      child.once("error", reject)
    }),
    ms,
    `${what} to print its address`,
  ).catch(e => {
    child.kill("SIGKILL")
    throw new Error(`${e.message}\nstderr:\n${stderr()}`)
  })
}

/** The last 64 KiB of a child's stderr, for failure messages. */
function captureStderr(child) {
  let text = ""
  child.stderr.setEncoding("utf8")
  child.stderr.on("data", chunk => {
    text = (text + chunk).slice(-65536)
  })
  return () => text
}

async function stopChild(child, what) {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise(resolve => child.once("exit", resolve))
  child.kill("SIGTERM")
  try {
    await withTimeout(exited, 10_000, `${what} to exit after SIGTERM`)
  } catch {
    child.kill("SIGKILL")
    await exited
  }
}

/**
 * Starts this test's server in a fresh temporary directory and registers its
 * shutdown with `t.after`, after every JS repo of the test has stopped (see
 * `Scope`). Options (relay only): `open` (no secret), `args` (extra flags).
 *
 * The returned object has `port`, `dir`, `db` (the relay's database file),
 * `doorUrl(token)`, `nativeUrl`, `token(collections, opts)`, `stderr()`.
 */
export async function startServer(scope, { open = false, args = [] } = {}) {
  const dir = await mkdtemp(path.join(os.tmpdir(), "accord-js-"))
  scope.deferLast(() => (process.env.ACCORD_JS_KEEP ? undefined : rm(dir, { recursive: true, force: true })))
  let child
  let stderr
  let match
  if (ON_RELAY) {
    const secretFile = path.join(dir, "secret")
    await writeFile(secretFile, randomBytes(32).toString("hex"), { mode: 0o600 })
    const db = path.join(dir, "relay.db")
    const auth = open ? ["--open"] : ["--secret-file", secretFile]
    child = spawn(
      relayBin(),
      ["--listen", "127.0.0.1:0", "--metrics-listen", "off", "--db", db, ...auth, ...args],
      { stdio: ["ignore", "pipe", "pipe"], env: scrubbedEnv() },
    )
    stderr = captureStderr(child)
    match = await awaitLine(child, /^accord-relay listening on 127\.0\.0\.1:(\d+)$/, 30_000, "accord-relay", stderr)
    scope.deferServer(() => stopChild(child, "accord-relay"))
    const port = Number(match[1])
    return {
      kind: "relay",
      port,
      dir,
      db,
      secretFile,
      stderr,
      nativeUrl: `ws://127.0.0.1:${port}`,
      doorUrl: token =>
        `ws://127.0.0.1:${port}${DOOR_PATH}` + (token === undefined ? "" : `?token=${encodeURIComponent(token)}`),
      token: (collections, opts = {}) => mintToken(secretFile, collections, opts),
    }
  }
  child = spawn(
    process.execPath,
    [path.join(here, "js-sync-server.mjs"), "--port", "0", "--dir", path.join(dir, "server-data")],
    { stdio: ["ignore", "pipe", "pipe"] },
  )
  stderr = captureStderr(child)
  match = await awaitLine(child, /^listening on 127\.0\.0\.1:(\d+)$/, 30_000, "js-sync-server", stderr)
  scope.deferServer(() => stopChild(child, "js-sync-server"))
  const port = Number(match[1])
  return {
    kind: "js-server",
    port,
    dir,
    stderr,
    // The JS server accepts any path and ignores the token.
    doorUrl: token =>
      `ws://127.0.0.1:${port}${DOOR_PATH}` + (token === undefined ? "" : `?token=${encodeURIComponent(token)}`),
    token: async () => "unused-by-the-js-server",
  }
}

/** The environment without ACCORD_* variables that would change a binary's defaults. */
function scrubbedEnv() {
  const env = { ...process.env }
  for (const key of Object.keys(env)) {
    if (key.startsWith("ACCORD_")) delete env[key]
  }
  return env
}

function run(bin, args, what) {
  return new Promise((resolve, reject) => {
    execFile(bin, args, { env: scrubbedEnv(), maxBuffer: 64 << 20 }, (error, stdout, stderr) => {
      if (error) {
        const e = new Error(`${what} failed (${error.code ?? error.signal}): ${[bin, ...args].join(" ")}\nstdout: ${stdout}\nstderr: ${stderr}`)
        e.code = error.code
        e.stdout = stdout
        e.stderr = stderr
        reject(e)
      } else {
        resolve({ stdout, stderr })
      }
    })
  })
}

/** `accord-relay token`: a token for `collections` signed with `secretFile`. */
export async function mintToken(secretFile, collections, { readOnly = false, ttl } = {}) {
  const args = ["token", "--secret-file", secretFile]
  for (const c of [collections].flat()) args.push("--collection", c)
  if (readOnly) args.push("--read-only")
  if (ttl) args.push("--ttl", ttl)
  const { stdout } = await run(relayBin(), args, "accord-relay token")
  const token = stdout.trim()
  if (!token || /\s/.test(token)) throw new Error(`accord-relay token printed ${JSON.stringify(stdout)}`)
  return token
}

/** Runs `accord --db DB ARGS...`; resolves with stdout, rejects with stdout and stderr. */
export async function accord(db, ...args) {
  const { stdout } = await run(accordBin(), ["--db", db, ...args], "accord")
  return stdout
}

/** `accord --db DB get ID` parsed. */
export async function accordGet(db, id) {
  return JSON.parse(await accord(db, "get", id))
}

// ---------------------------------------------------------------- clients

/**
 * The stock WebSocket client adapter, observed: counts the bytes each way,
 * decodes every inbound message into `received` (including `peer` and
 * `error`, which the adapter itself only logs), records socket closes and
 * errors, and never reconnects once `disconnect`ed (so a test's process
 * does not linger on retry timers).
 */
export class ObservedAdapter extends BrowserWebSocketClientAdapter {
  bytesIn = 0
  bytesOut = 0
  /** Every inbound message, decoded, with `at` (ms) and its byte length. */
  received = []
  /** Every outbound message (type and document), in order. */
  sent = []
  closes = []
  socketErrors = []
  #stopped = false

  constructor(url, retryInterval = 1000) {
    super(url, retryInterval)
    // The stock handler rethrows any Node socket error but ECONNREFUSED,
    // which would crash the test process instead of failing the test.
    this.onError = event => {
      this.socketErrors.push(event?.error ?? event)
      this.emit("observed-error", event?.error ?? event)
    }
  }

  connect(peerId, peerMetadata) {
    if (this.#stopped) return
    super.connect(peerId, peerMetadata)
    const socket = this.socket
    const send = socket.send.bind(socket)
    socket.send = (data, ...rest) => {
      this.bytesOut += data.byteLength ?? data.length
      return send(data, ...rest)
    }
    socket.addEventListener("close", event => {
      this.closes.push({ code: event.code, reason: event.reason, at: Date.now() })
      this.emit("observed-close", event)
    })
  }

  send(message) {
    this.sent.push({ type: message.type, documentId: message.documentId, data: message.data, at: Date.now() })
    super.send(message)
  }

  receiveMessage(messageBytes) {
    const bytes = new Uint8Array(messageBytes)
    this.bytesIn += bytes.byteLength
    let message
    try {
      message = cbor.decode(bytes)
    } catch (e) {
      message = { type: "<undecodable>", error: String(e) }
    }
    const entry = { ...message, byteLength: bytes.byteLength, at: Date.now() }
    this.received.push(entry)
    this.emit("observed-message", entry)
    super.receiveMessage(messageBytes)
  }

  disconnect() {
    this.#stopped = true
    if (!this.socket) return
    // Closing a `ws` socket that is still connecting emits an `error`; with
    // the adapter's listeners gone, an unheard `error` would crash the process.
    this.socket.on?.("error", () => {})
    super.disconnect()
  }

  /** Inbound message types, in order, for failure messages. */
  trace() {
    return this.received.map(m => m.type + (m.message ? `(${m.message})` : "")).join(", ")
  }
}

/**
 * A JS repo connected to `url` through an ObservedAdapter, shut down at the
 * end of the test (before the server stops). `storageDir` gives it NodeFS
 * storage (default: none).
 */
export function openRepo(scope, url, { storageDir, peerId, retryInterval } = {}) {
  const adapter = new ObservedAdapter(url, retryInterval)
  const repo = new Repo({
    network: [adapter],
    storage: storageDir ? new NodeFSStorageAdapter(storageDir) : undefined,
    peerId,
    // Like a browser client of a sync server: share everything with it.
    sharePolicy: async () => true,
  })
  const client = { repo, adapter, stopped: false }
  client.stop = async () => {
    if (client.stopped) return
    client.stopped = true
    await repo.shutdown()
    adapter.disconnect()
  }
  scope.defer(client.stop)
  return client
}

/** Resolves once the adapter has been accepted by the server (a `peer` message). */
export function connected(adapter, ms = 10_000) {
  if (adapter.received.some(m => m.type === "peer")) return Promise.resolve()
  return nextEvent(adapter, "observed-message", m => m.type === "peer", ms, `the server to accept the join (received: ${adapter.trace()})`)
}

/**
 * A document as plain JSON values. Accord writes JSON strings as Automerge
 * str scalars (docs/storage-format.md), which the JS library reads as
 * `ImmutableString` objects, and text written in JS as text objects; both
 * are strings here, as `accord get` shows them.
 */
export function plain(doc) {
  return JSON.parse(JSON.stringify(doc))
}

/** How many changes `adapter` sent of `documentId` in sync and request messages. */
export function changesSent(adapter, documentId) {
  return adapter.sent
    .filter(m => (m.type === "sync" || m.type === "request") && m.documentId === documentId && m.data)
    .reduce((n, m) => n + A.decodeSyncMessage(m.data).changes.length, 0)
}

/** Hex change hashes of the handle's current document. */
export function hexHeads(handle) {
  return A.getHeads(handle.doc())
}

/**
 * Resolves once the server has shown, in a sync message to this adapter,
 * that it holds `heads` of `documentId` (its heads include each of them).
 * Only inbound messages at or after `since` (ms) count.
 */
export function serverHolds(adapter, documentId, heads, { ms = 10_000, since = 0 } = {}) {
  const holds = m => {
    if (m.at < since || m.documentId !== documentId || m.type !== "sync") return false
    const theirs = A.decodeSyncMessage(m.data).heads
    return heads.every(h => theirs.includes(h))
  }
  if (adapter.received.some(holds)) return Promise.resolve()
  return nextEvent(
    adapter,
    "observed-message",
    holds,
    ms,
    `the server to acknowledge heads ${heads.map(h => h.slice(0, 8)).join(",")} of ${documentId} (received: ${adapter.trace()})`,
  )
}

// ---------------------------------------------------------------- scope

/**
 * Clean-up of one test, in order: JS repos (last opened first), then
 * servers, then directories; registered with the test's `t.after`.
 */
export class Scope {
  #clients = []
  #servers = []
  #rest = []

  constructor(t) {
    t.after(() => this.close())
  }

  defer(fn) {
    this.#clients.push(fn)
  }

  deferServer(fn) {
    this.#servers.push(fn)
  }

  deferLast(fn) {
    this.#rest.push(fn)
  }

  async close() {
    const errors = []
    for (const list of [this.#clients, this.#servers, this.#rest]) {
      while (list.length) {
        try {
          await list.pop()()
        } catch (e) {
          errors.push(e)
        }
      }
    }
    if (errors.length) throw errors[0]
  }
}

/** A temporary directory removed when the test ends. */
export async function tempDir(scope, prefix = "accord-js-") {
  const dir = await mkdtemp(path.join(os.tmpdir(), prefix))
  scope.deferLast(() => (process.env.ACCORD_JS_KEEP ? undefined : rm(dir, { recursive: true, force: true })))
  return dir
}
