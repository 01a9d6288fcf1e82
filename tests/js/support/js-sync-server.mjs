#!/usr/bin/env node
// The stock automerge-repo sync server, as the `@automerge/automerge-repo-sync-server`
// package runs it: a Repo with NodeFS storage behind NodeWSServerAdapter on a
// `ws` WebSocketServer. The suite's reference target (ACCORD_JS_TARGET=js-server)
// and the benchmark's JavaScript baseline.
//
//   node js-sync-server.mjs [--port 0] [--host 127.0.0.1] [--dir DIR] [--stdin]
//
// Prints exactly one stdout line, `listening on HOST:PORT`, once it accepts
// connections; stops on SIGTERM or SIGINT after flushing its storage, and
// with --stdin also when its standard input closes (how the benchmark
// harness stops its servers).

import os from "node:os"
import { once } from "node:events"
import { parseArgs } from "node:util"
import { WebSocketServer } from "ws"
import { Repo } from "@automerge/automerge-repo"
import { NodeWSServerAdapter } from "@automerge/automerge-repo-network-websocket"
import { NodeFSStorageAdapter } from "@automerge/automerge-repo-storage-nodefs"

const { values } = parseArgs({
  options: {
    port: { type: "string", default: "0" },
    host: { type: "string", default: "127.0.0.1" },
    dir: { type: "string", default: "automerge-sync-server-data" },
    stdin: { type: "boolean", default: false },
  },
})

const port = Number(values.port)
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`js-sync-server: bad --port ${values.port}`)
  process.exit(2)
}

const wss = new WebSocketServer({ host: values.host, port })
await once(wss, "listening")

const repo = new Repo({
  network: [new NodeWSServerAdapter(wss)],
  storage: new NodeFSStorageAdapter(values.dir),
  peerId: `storage-server-${os.hostname()}`,
  // Like the sync server: don't announce every document to every client;
  // clients ask for the documents they want.
  sharePolicy: async () => false,
})

const { address, port: bound } = wss.address()
console.log(`listening on ${address}:${bound}`)

let stopping = false
async function stop() {
  if (stopping) return
  stopping = true
  for (const client of wss.clients) client.terminate()
  await new Promise(resolve => wss.close(() => resolve()))
  await repo.shutdown()
  process.exit(0)
}
process.on("SIGTERM", stop)
process.on("SIGINT", stop)
if (values.stdin) {
  process.stdin.on("end", stop)
  process.stdin.resume()
}
