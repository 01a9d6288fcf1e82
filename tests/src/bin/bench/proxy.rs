//! A counting TCP proxy on loopback, so both systems' traffic is measured
//! the same way: bytes on the wire (WebSocket upgrade and framing
//! included), WebSocket data messages, and round trips.
//!
//! A round trip is counted each time the traffic of one connection turns
//! from client→server messages to a server→client message: the number of
//! times a client had to wait for an answer.
//!
//! With `ACCORD_BENCH_TRACE=1` in the environment the proxy also prints
//! every data message to stderr: connection, direction, payload length and
//! the payload's first byte (the native protocol's frame tag), to see what
//! a workload's messages are.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Which way bytes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Up,
    Down,
}

/// Counters of one proxied connection.
#[derive(Debug, Default)]
pub struct ConnStats {
    /// Client → server bytes.
    pub up_bytes: AtomicU64,
    /// Server → client bytes.
    pub down_bytes: AtomicU64,
    /// Data messages in both directions.
    pub messages: AtomicU64,
    /// The direction of the last message, and the round trips so far.
    turns: Mutex<(Option<Dir>, u64)>,
}

impl ConnStats {
    fn message(&self, dir: Dir) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
        if dir == Dir::Down && turns.0 == Some(Dir::Up) {
            turns.1 += 1;
        }
        turns.0 = Some(dir);
    }

    /// Round trips so far.
    pub fn round_trips(&self) -> u64 {
        self.turns.lock().unwrap_or_else(|e| e.into_inner()).1
    }

    /// Bytes both ways.
    pub fn bytes(&self) -> u64 {
        self.up_bytes.load(Ordering::Relaxed) + self.down_bytes.load(Ordering::Relaxed)
    }
}

/// A running proxy; dropping it stops accepting.
#[derive(Debug)]
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// One entry per accepted connection.
    conns: Arc<Mutex<Vec<Arc<ConnStats>>>>,
    /// The accept loop.
    task: tokio::task::JoinHandle<()>,
}

/// Totals over a proxy's connections.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    /// Bytes both ways, all connections.
    pub bytes: u64,
    /// Data messages, all connections.
    pub messages: u64,
    /// Round trips of the connection that needed most.
    pub max_round_trips: u64,
}

impl Proxy {
    /// Starts a proxy to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let conns: Arc<Mutex<Vec<Arc<ConnStats>>>> = Arc::default();
        let task = tokio::spawn(accept_loop(listener, target, Arc::clone(&conns)));
        Ok(Proxy { addr, conns, task })
    }

    /// `ws://ADDR`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Totals so far.
    pub fn totals(&self) -> Totals {
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.iter().fold(Totals::default(), |t, c| Totals {
            bytes: t.bytes + c.bytes(),
            messages: t.messages + c.messages.load(Ordering::Relaxed),
            max_round_trips: t.max_round_trips.max(c.round_trips()),
        })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    conns: Arc<Mutex<Vec<Arc<ConnStats>>>>,
) {
    while let Ok((inbound, _)) = listener.accept().await {
        let Ok(outbound) = TcpStream::connect(target).await else {
            continue;
        };
        let _ = inbound.set_nodelay(true);
        let _ = outbound.set_nodelay(true);
        let stats = Arc::new(ConnStats::default());
        let index = {
            let mut conns = conns.lock().unwrap_or_else(|e| e.into_inner());
            conns.push(Arc::clone(&stats));
            conns.len()
        };
        let (ir, iw) = inbound.into_split();
        let (or, ow) = outbound.into_split();
        tokio::spawn(pump(ir, ow, Dir::Up, Arc::clone(&stats), index));
        tokio::spawn(pump(or, iw, Dir::Down, stats, index));
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    dir: Dir,
    stats: Arc<ConnStats>,
    index: usize,
) {
    let trace = std::env::var_os("ACCORD_BENCH_TRACE").is_some_and(|v| v == "1");
    let mut buf = vec![0u8; 64 * 1024];
    let mut frames = FrameCounter::default();
    let counter = match dir {
        Dir::Up => &stats.up_bytes,
        Dir::Down => &stats.down_bytes,
    };
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        counter.fetch_add(n as u64, Ordering::Relaxed);
        frames.feed(&buf[..n], |m| {
            stats.message(dir);
            if trace {
                eprintln!(
                    "proxy conn {index} {dir:?} {} bytes, first byte {:?}",
                    m.len, m.first
                );
            }
        });
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Finds WebSocket message boundaries in one direction of a connection:
/// first the HTTP upgrade (up to an empty line), then frames.
#[derive(Debug, Default)]
struct FrameCounter {
    /// Past the HTTP upgrade.
    in_frames: bool,
    /// The last bytes of the HTTP part, to find `\r\n\r\n`.
    http_tail: u32,
    /// The current frame's header so far.
    header: Vec<u8>,
    /// Payload bytes still to skip.
    remaining: u64,
    /// The data message whose first payload byte is still to come.
    pending: Option<Message>,
}

/// A final data frame seen by [`FrameCounter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Message {
    /// Payload length.
    len: u64,
    /// The first payload byte, unmasked (`None` for an empty payload).
    first: Option<u8>,
    /// The masking key (client → server frames).
    mask: Option<[u8; 4]>,
}

impl FrameCounter {
    /// Feeds bytes; calls `on_message` for each final data frame once its
    /// first payload byte is in.
    fn feed(&mut self, mut data: &[u8], mut on_message: impl FnMut(Message)) {
        while let Some((&byte, rest)) = data.split_first() {
            if !self.in_frames {
                self.http_tail = (self.http_tail << 8) | u32::from(byte);
                self.in_frames = self.http_tail == 0x0d0a_0d0a;
                data = rest;
            } else if self.remaining > 0 {
                if let Some(mut m) = self.pending.take() {
                    m.first = Some(byte ^ m.mask.map_or(0, |k| k[0]));
                    on_message(m);
                }
                let n = self.remaining.min(data.len() as u64) as usize;
                self.remaining -= n as u64;
                data = &data[n..];
            } else {
                self.header.push(byte);
                data = rest;
                if let Some((len, opcode, fin, mask)) = parse_header(&self.header) {
                    self.header.clear();
                    self.remaining = len;
                    if fin && opcode < 8 {
                        let m = Message {
                            len,
                            first: None,
                            mask,
                        };
                        if len == 0 {
                            on_message(m);
                        } else {
                            self.pending = Some(m);
                        }
                    }
                }
            }
        }
    }
}

/// `(payload length, opcode, fin, masking key)` once `h` holds a whole
/// frame header.
fn parse_header(h: &[u8]) -> Option<(u64, u8, bool, Option<[u8; 4]>)> {
    let (&b0, &b1) = (h.first()?, h.get(1)?);
    let masked = b1 & 0x80 != 0;
    let short = u64::from(b1 & 0x7f);
    let ext = match short {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let need = 2 + ext + if masked { 4 } else { 0 };
    if h.len() < need {
        return None;
    }
    let len = if ext == 0 {
        short
    } else {
        h[2..2 + ext]
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
    };
    let mask = masked.then(|| {
        let k = &h[2 + ext..2 + ext + 4];
        [k[0], k[1], k[2], k[3]]
    });
    Some((len, b0 & 0x0f, b0 & 0x80 != 0, mask))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_messages_after_the_upgrade_across_split_reads() {
        let mut bytes = b"HTTP/1.1 101 Switching\r\nUpgrade: websocket\r\n\r\n".to_vec();
        bytes.extend([0x82, 3, 1, 2, 3]); // binary, 3 bytes
        bytes.extend([0x82, 126, 0, 200]);
        bytes.extend([0u8; 200]); // binary, 200 bytes (16-bit length)
        bytes.extend([0x82, 0x80 | 1, 9, 9, 9, 9, 7]); // masked, 1 byte
        bytes.extend([0x82, 0]); // binary, empty
        let mut counter = FrameCounter::default();
        let mut seen = Vec::new();
        for chunk in bytes.chunks(7) {
            counter.feed(chunk, |m| seen.push((m.len, m.first)));
        }
        assert_eq!(
            seen,
            [(3, Some(1)), (200, Some(0)), (1, Some(7 ^ 9)), (0, None)]
        );
    }
}
