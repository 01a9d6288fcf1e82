// A peer that has a record open: a native Accord connection (docs/protocol.md)
// that sends presence (an Ephemeral frame) about it. It runs in a page of
// its own, with the browser's WebSocket, and speaks just enough of the
// protocol: Hello, Subscribe, then Ephemeral.

/**
 * Connects to `relay` as `peer` with `token`, subscribes to `collection`
 * and sends presence about the record `id`. Resolves once the frame is
 * sent; `close()` ends the connection.
 */
export async function openPresence(t, browser, relay, { token, collection, id, peer }) {
  const context = await browser.newContext()
  t.after(() => context.close())
  const page = await context.newPage()
  await page.evaluate(nativePresence, { url: relay.ws, token: token ?? "", collection, id, peer })
  return { close: () => page.evaluate(() => window.__presence.close()) }
}

/** Runs in the page: the protocol's bincode framing, by hand (section 3). */
async function nativePresence({ url, token, collection, id, peer }) {
  const utf8 = new TextEncoder()
  const varint = n => (n <= 250 ? [n] : n <= 0xffff ? [0xfb, n & 0xff, n >> 8] : [0xfc, n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff, n >>> 24])
  const bytes = b => [...varint(b.length), ...b]
  const str = s => bytes([...utf8.encode(s)])
  // A record id is base58 of its 16 bytes and a 4-byte checksum.
  const alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
  let n = 0n
  for (const c of id) n = n * 58n + BigInt(alphabet.indexOf(c))
  const decoded = []
  for (; n > 0n; n /= 256n) decoded.unshift(Number(n % 256n))
  while (decoded.length < 20) decoded.unshift(0)
  const doc = decoded.slice(0, 16)

  const ws = new WebSocket(url)
  ws.binaryType = "arraybuffer"
  const frames = []
  let wake = () => {}
  ws.onmessage = e => {
    frames.push(new Uint8Array(e.data))
    wake()
  }
  const closed = new Promise((_, reject) => {
    ws.onclose = e => reject(new Error(`the relay closed the connection (${e.code} ${e.reason})`))
  })
  const frame = async tag => {
    for (;;) {
      const i = frames.findIndex(f => f[0] === 7 || f[0] === tag)
      if (i >= 0) {
        const f = frames.splice(i, 1)[0]
        if (f[0] === 7) throw new Error(`the relay sent an error frame: ${new TextDecoder().decode(f)}`)
        return f
      }
      await Promise.race([new Promise(resolve => (wake = resolve)), closed])
    }
  }
  await Promise.race([new Promise(resolve => (ws.onopen = resolve)), closed])
  ws.send(new Uint8Array([0, ...varint(2), ...str(peer), ...str(token)]))
  await frame(1) // Welcome
  ws.send(new Uint8Array([2, ...varint(1), ...str(collection)]))
  await frame(11) // Subscribed
  ws.send(new Uint8Array([13, ...bytes(doc), ...str(collection), ...str(""), ...str("session-1"), ...varint(1), ...bytes([1])]))
  window.__presence = { close: () => ws.close() }
}
