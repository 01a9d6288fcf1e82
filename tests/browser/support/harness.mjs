// Shared machinery of the inspector's browser suite: a real accord-relay per
// test (a fresh database and secret in a temporary directory), tokens it
// mints, Accord replicas driven with the `accord` CLI (changes reach the
// relay by sync, never through the HTTP API), headless Chromium through
// playwright-core, waits on conditions with time-outs, and screenshots.

import { execFile, spawn } from "node:child_process"
import { randomBytes } from "node:crypto"
import { existsSync } from "node:fs"
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises"
import os from "node:os"
import path from "node:path"
import { createInterface } from "node:readline"
import { fileURLToPath } from "node:url"

import { chromium } from "playwright-core"

const here = path.dirname(fileURLToPath(import.meta.url))

/** Where screenshots go: ACCORD_ARTIFACTS, or tests/browser/artifacts. */
export const ARTIFACTS = process.env.ACCORD_ARTIFACTS ?? path.join(here, "..", "artifacts")

/** How long a wait on the page may take before the test fails. */
export const WAIT_MS = 15_000

function requiredEnv(name, hint) {
  const value = process.env[name]
  if (!value) throw new Error(`${name} is not set: ${hint}`)
  return value
}

const relayBin = () => requiredEnv("ACCORD_RELAY_BIN", "the path of the accord-relay binary (cargo build -p accord-relay)")
const accordBin = () => requiredEnv("ACCORD_BIN", "the path of the accord CLI binary (cargo build -p accord-cli)")

/** The system Chromium (Debian's `chromium` package); CHROMIUM overrides. */
export function chromiumPath() {
  const p = process.env.CHROMIUM || "/usr/bin/chromium"
  if (!existsSync(p)) {
    throw new Error(`no Chromium at ${p}: install Debian's chromium package (apt-get install chromium) or set CHROMIUM`)
  }
  return p
}

// ---------------------------------------------------------------- waiting

export class TimeoutError extends Error {
  name = "TimeoutError"
}

/**
 * Polls `check` (sync or async; truthy = done) until it holds or `ms`
 * pass; rejects naming `what` and the last value or error seen.
 */
export async function until(check, { ms = WAIT_MS, every = 50, what = "condition" } = {}) {
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

/** Waits until the locator's text (all matches, joined) passes `pred`. */
export async function textSatisfies(locator, pred, what) {
  let seen
  try {
    await until(async () => {
      seen = (await locator.allTextContents()).join(" | ")
      return pred(seen)
    }, { what })
  } catch (e) {
    e.message += `; the text was ${JSON.stringify(seen)}`
    throw e
  }
  return seen
}

/** Waits until the locator matches exactly `n` elements. */
export async function countIs(locator, n, what) {
  let seen
  try {
    await until(async () => {
      seen = await locator.count()
      return seen === n
    }, { what: `${what}: ${n}` })
  } catch (e) {
    e.message += `; the count was ${seen}`
    throw e
  }
}

// ---------------------------------------------------------------- processes

/** The environment without ACCORD_* variables that would change a binary's defaults. */
function scrubbedEnv(extra = {}) {
  const env = { ...process.env }
  for (const key of Object.keys(env)) if (key.startsWith("ACCORD_")) delete env[key]
  return { ...env, ...extra }
}

function run(bin, args, { env, input } = {}) {
  return new Promise((resolve, reject) => {
    const child = execFile(bin, args, { env: env ?? scrubbedEnv(), maxBuffer: 64 << 20 }, (error, stdout, stderr) => {
      if (error) {
        reject(new Error(`${[bin, ...args].join(" ")} failed (${error.code ?? error.signal})\nstdout: ${stdout}\nstderr: ${stderr}`))
      } else {
        resolve(stdout)
      }
    })
    if (input !== undefined) child.stdin.end(input)
  })
}

/** Reads `child`'s stdout until a line matches `re`; rejects if it exits first. */
function awaitLine(child, re, what, stderr, ms = 30_000) {
  let timer
  return new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new TimeoutError(`${what} printed no address within ${ms} ms; stderr:\n${stderr()}`)), ms)
    const lines = createInterface({ input: child.stdout })
    lines.on("line", line => {
      const m = re.exec(line)
      if (m) resolve(m)
    })
    child.once("exit", (code, signal) =>
      reject(new Error(`${what} exited (code ${code}, signal ${signal}) before printing its address; stderr:\n${stderr()}`)),
    )
    child.once("error", reject)
  }).finally(() => clearTimeout(timer))
}

function captureStderr(child) {
  let text = ""
  child.stderr.setEncoding("utf8")
  child.stderr.on("data", chunk => {
    text = (text + chunk).slice(-65536)
  })
  return () => text
}

async function stopChild(child) {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise(resolve => child.once("exit", resolve))
  child.kill("SIGTERM")
  const timer = setTimeout(() => child.kill("SIGKILL"), 10_000)
  await exited
  clearTimeout(timer)
}

/** A fresh temporary directory, removed after the test (unless ACCORD_BROWSER_KEEP). */
export async function tempDir(t) {
  const dir = await mkdtemp(path.join(os.tmpdir(), "accord-browser-"))
  t.after(() => (process.env.ACCORD_BROWSER_KEEP ? undefined : rm(dir, { recursive: true, force: true })))
  return dir
}

/**
 * Starts the real relay on 127.0.0.1:0 with a fresh database and secret
 * (ACCORD_RELAY_SECRET), or `open: true` for --open. Stops it after the test.
 * Returns `url` (http://ADDR/), `ws` (ws://ADDR), `token(collections, opts)`,
 * and `restart()` (stop, then start on the same address, database and secret).
 */
export async function startRelay(t, { open = false } = {}) {
  const dir = await tempDir(t)
  const secret = randomBytes(24).toString("hex")
  const env = scrubbedEnv(open ? {} : { ACCORD_RELAY_SECRET: secret })
  let child
  let stderr
  const launch = async listen => {
    const args = ["--listen", listen, "--metrics-listen", "off", "--db", path.join(dir, "relay.db")]
    if (open) args.push("--open")
    child = spawn(relayBin(), args, { stdio: ["ignore", "pipe", "pipe"], env })
    stderr = captureStderr(child)
    const [, addr] = await awaitLine(child, /^accord-relay listening on (127\.0\.0\.1:\d+)$/, "accord-relay", stderr)
    return addr
  }
  t.after(() => stopChild(child))
  const addr = await launch("127.0.0.1:0")
  return {
    url: `http://${addr}/`,
    ws: `ws://${addr}`,
    stderr: () => stderr(),
    restart: async () => {
      await stopChild(child)
      await launch(addr)
    },
    /** `accord-relay token` for `collections` (and `readOnly`), signed with this relay's secret. */
    token: async (collections, { readOnly = false, secretOverride } = {}) => {
      const targs = ["token"]
      for (const c of [collections].flat()) targs.push("--collection", c)
      if (readOnly) targs.push("--read-only")
      const out = await run(relayBin(), targs, { env: scrubbedEnv({ ACCORD_RELAY_SECRET: secretOverride ?? secret }) })
      const token = out.trim()
      if (!token || /\s/.test(token)) throw new Error(`accord-relay token printed ${JSON.stringify(out)}`)
      return token
    },
  }
}

/**
 * Starts `accord inspect --db DB --listen 127.0.0.1:0` and returns the URL
 * it prints (the first http:// URL on its stdout).
 */
export async function startInspect(t, db) {
  const child = spawn(accordBin(), ["--db", db, "inspect", "--listen", "127.0.0.1:0"], {
    stdio: ["ignore", "pipe", "pipe"],
    env: scrubbedEnv(),
  })
  const stderr = captureStderr(child)
  t.after(() => stopChild(child))
  const [url] = await awaitLine(child, /http:\/\/127\.0\.0\.1:\d+\/?/, "accord inspect", stderr)
  return url.endsWith("/") ? url : `${url}/`
}

/** An Accord replica in its own database file, driven with the `accord` CLI. */
export class Replica {
  constructor(db) {
    this.db = db
  }

  static async create(t, name = "replica") {
    return new Replica(path.join(await tempDir(t), `${name}.db`))
  }

  cli(...args) {
    return run(accordBin(), ["--db", this.db, ...args])
  }

  /** `accord new`: returns the new record's id. */
  async create(collection, data, message) {
    const args = ["new", collection, "--data", JSON.stringify(data)]
    if (message) args.push("-m", message)
    return (await this.cli(...args)).trim()
  }

  /** `accord put ID PATH JSON`. */
  put(id, dotPath, value, message) {
    const args = ["put", id, dotPath, JSON.stringify(value)]
    if (message) args.push("-m", message)
    return this.cli(...args)
  }

  rm(id) {
    return this.cli("rm", id)
  }

  /** `accord import --jsonl -`: one record per object; returns their ids. */
  async importMany(collection, objects) {
    const out = await run(accordBin(), ["--db", this.db, "--json", "import", "--jsonl", "-", "-c", collection], {
      input: objects.map(o => JSON.stringify(o)).join("\n") + "\n",
    })
    return JSON.parse(out).ids
  }

  /** `accord sync` with the relay's native door until in sync; returns the JSON summary. */
  async sync(relay, token, collections = ["contacts"], { timeoutSecs = 60 } = {}) {
    const args = ["--json", "sync", "--relay", relay.ws, "--timeout", String(timeoutSecs)]
    if (token) args.push("--token", token)
    for (const c of collections) args.push("--collection", c)
    return JSON.parse(await this.cli(...args))
  }
}

// ---------------------------------------------------------------- browser

/** Headless system Chromium, for a whole test file (which closes it). */
export async function launchBrowser() {
  return chromium.launch({
    executablePath: chromiumPath(),
    headless: true,
    // Root in a container has no user namespaces for Chromium's sandbox.
    args: process.getuid?.() === 0 ? ["--no-sandbox"] : [],
  })
}

/**
 * A fresh page (its own context, so its own sessionStorage) closed after
 * the test; page errors and failed console messages fail the test at its end.
 */
export async function openPage(t, browser) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, colorScheme: "light" })
  const page = await context.newPage()
  const problems = []
  page.on("pageerror", e => problems.push(`page error: ${e.message}`))
  page.on("console", m => {
    if (m.type() === "error" && !/status of 401/.test(m.text())) problems.push(`console error: ${m.text()}`)
  })
  page.problems = problems
  t.after(() => context.close())
  return page
}

/** Opens `url`, enters `token` in the token form and waits for the side list. */
export async function signIn(page, url, token) {
  await page.goto(url)
  await page.getByTestId("token-input").fill(token)
  await page.getByTestId("token-submit").click()
  await page.getByTestId("app").waitFor({ state: "visible", timeout: WAIT_MS })
}

/** Saves a screenshot of the page as ARTIFACTS/NAME.png. */
export async function screenshot(page, name) {
  await mkdir(ARTIFACTS, { recursive: true })
  const file = path.join(ARTIFACTS, `${name}.png`)
  await page.screenshot({ path: file })
  return file
}

/** Writes a file into the artifacts directory (a measurement, a page dump). */
export async function artifact(name, text) {
  await mkdir(ARTIFACTS, { recursive: true })
  await writeFile(path.join(ARTIFACTS, name), text)
}
