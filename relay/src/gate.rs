//! Small message limits until a connection is welcomed.
//!
//! tungstenite fixes a WebSocket's limits (`max_message_size`,
//! `max_frame_size`) when the socket is created: `tokio-tungstenite` 0.30's
//! `WebSocketStream` has `get_config` but no way to change the limits, and
//! it does not hand out the tungstenite socket that has `set_config`.
//! Checking the size of finished messages ourselves would come too late:
//! tungstenite reserves a frame's whole declared length as soon as it has
//! read the frame's header, so any peer could make the relay allocate
//! `max_frame_bytes` before saying who it is.
//!
//! So a connection starts on a WebSocket created with the small handshake
//! limit, and moves to a new WebSocket with the full limit once welcomed.
//! For the move to lose no byte, a [`Gate`] sits between the TCP stream and
//! tungstenite and, until then, hands tungstenite the bytes of at most one
//! frame per read, never a byte past the end of the current frame
//! (nor, before the first frame, past the end of the HTTP upgrade
//! request). tungstenite reads only when its buffer lacks part of the
//! frame it is decoding, so when it returns a message its buffer is empty
//! and every later byte is still in the gate or the socket:
//! [`Gate::take`] moves them, unread, under the new WebSocket, behind an
//! open gate that lets every byte through.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How many bytes the gate reads from the socket at once while closed.
const CHUNK: usize = 4096;

/// A byte stream that ends every read at a frame boundary, until
/// [`Gate::take`] moves its socket behind an open gate.
pub(crate) struct Gate<S> {
    /// The socket; `None` once [`Gate::take`] moved it on.
    inner: Option<S>,
    /// Bytes read from the socket and not handed on yet (at most a
    /// [`CHUNK`]; handed on before anything else is read).
    held: Vec<u8>,
    /// Where in the byte stream the next byte handed on is.
    at: Boundary,
}

impl<S> std::fmt::Debug for Gate<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("held", &self.held.len())
            .field("at", &self.at)
            .finish()
    }
}

/// A position in the stream, as far as frame boundaries go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Boundary {
    /// In the HTTP upgrade request; how much of its end (`\r\n\r\n`) was
    /// seen.
    Request { matched: u8 },
    /// In a frame header: its bytes so far (a header has at most 14).
    Header { bytes: [u8; 14], len: usize },
    /// In a frame's payload, with this many bytes left.
    Payload { left: u64 },
    /// Opened: no boundary is kept.
    Open,
}

impl Boundary {
    /// The start of a frame.
    fn frame() -> Self {
        Boundary::Header {
            bytes: [0; 14],
            len: 0,
        }
    }

    /// How many of `bytes` (the next ones in the stream) may be handed on
    /// now: all of them once open, else up to the end of the current frame
    /// or request. Moves past them. At least one if `bytes` is not empty.
    fn advance(&mut self, bytes: &[u8]) -> usize {
        let mut used = 0;
        while used < bytes.len() {
            match self {
                Boundary::Open => return bytes.len(),
                Boundary::Request { matched } => {
                    *matched = request_end(*matched, bytes[used]);
                    used += 1;
                    if *matched == 4 {
                        *self = Boundary::frame();
                        return used;
                    }
                }
                Boundary::Header { bytes: header, len } => {
                    header[*len] = bytes[used];
                    *len += 1;
                    used += 1;
                    match payload_len(&header[..*len]) {
                        Some(0) => {
                            *self = Boundary::frame();
                            return used;
                        }
                        Some(left) => *self = Boundary::Payload { left },
                        None => {}
                    }
                }
                Boundary::Payload { left } => {
                    let rest = (bytes.len() - used) as u64;
                    let take = rest.min(*left);
                    used += take as usize;
                    *left -= take;
                    if *left == 0 {
                        *self = Boundary::frame();
                        return used;
                    }
                }
            }
        }
        used
    }
}

/// The progress of matching `\r\n\r\n` after one more byte.
fn request_end(matched: u8, byte: u8) -> u8 {
    match (matched, byte) {
        (0 | 2, b'\r') | (1 | 3, b'\n') => matched + 1,
        (_, b'\r') => 1,
        _ => 0,
    }
}

/// The payload length a complete frame header declares (RFC 6455, 5.2),
/// or `None` while `header` is not complete yet.
fn payload_len(header: &[u8]) -> Option<u64> {
    let second = *header.get(1)?;
    let short = u64::from(second & 0x7f);
    let extended = match short {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    if header.len() < 2 + extended + mask {
        return None;
    }
    let mut len = [0u8; 8];
    len[8 - extended..].copy_from_slice(&header[2..2 + extended]);
    Some(if extended == 0 {
        short
    } else {
        u64::from_be_bytes(len)
    })
}

impl<S> Gate<S> {
    /// A gate in front of a socket that has not sent its upgrade request.
    pub(crate) fn new(inner: S) -> Self {
        Gate {
            inner: Some(inner),
            held: Vec::new(),
            at: Boundary::Request { matched: 0 },
        }
    }

    /// Moves the socket and every byte not handed on yet into a new, open
    /// gate; this one is left empty (reading it fails). Call it only when
    /// whoever read through this gate holds no unread bytes: right after
    /// it returned a message.
    pub(crate) fn take(&mut self) -> Gate<S> {
        Gate {
            inner: self.inner.take(),
            held: std::mem::take(&mut self.held),
            at: Boundary::Open,
        }
    }
}

fn moved() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the socket moved to a new gate",
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for Gate<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Err(moved()));
        };
        if this.held.is_empty() {
            if this.at == Boundary::Open {
                return Pin::new(inner).poll_read(cx, buf);
            }
            let mut chunk = [0u8; CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(inner).poll_read(cx, &mut read))?;
            this.held.extend_from_slice(read.filled());
        }
        let room = buf.remaining().min(this.held.len());
        let n = this.at.advance(&this.held[..room]);
        buf.put_slice(&this.held[..n]);
        this.held.drain(..n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Gate<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_write(cx, buf),
            None => Poll::Ready(Err(moved())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_flush(cx),
            None => Poll::Ready(Err(moved())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_shutdown(cx),
            None => Poll::Ready(Err(moved())),
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
    use tokio_tungstenite::tungstenite::{Error as WsError, Message};
    use tokio_tungstenite::WebSocketStream;

    use super::*;

    fn limited(bytes: usize) -> WebSocketConfig {
        WebSocketConfig::default()
            .max_message_size(Some(bytes))
            .max_frame_size(Some(bytes))
    }

    #[test]
    fn reads_stop_at_each_frame_end() {
        let mut at = Boundary::Request { matched: 0 };
        let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut stream = request.to_vec();
        stream.extend_from_slice(&[0x82, 0x83, 1, 2, 3, 4, 9, 9, 9]); // masked, 3 bytes
        stream.extend_from_slice(&[0x82, 0x7e, 0x01, 0x00]); // 256 bytes, unmasked
        stream.extend_from_slice(&[7; 256]);
        stream.extend_from_slice(&[0x89, 0x00]); // an empty ping
        stream.extend_from_slice(&[0x82, 0x7f, 0, 0, 0, 0, 0, 0x10, 0, 0]); // 1 MiB
        let mut cuts = Vec::new();
        let mut pos = 0;
        while pos < stream.len() {
            pos += at.advance(&stream[pos..]);
            cuts.push(pos);
        }
        let request_end = request.len();
        assert_eq!(
            cuts,
            vec![
                request_end,
                request_end + 9,
                request_end + 9 + 4 + 256,
                request_end + 9 + 4 + 256 + 2,
                stream.len(),
            ]
        );
        assert_eq!(at, Boundary::Payload { left: 1 << 20 });
    }

    #[test]
    fn a_request_end_split_anywhere_is_found() {
        let request = b"GET / HTTP/1.1\r\n\r\r\nX: y\r\n\r\n";
        let mut at = Boundary::Request { matched: 0 };
        for (i, byte) in request.iter().enumerate() {
            assert_eq!(at.advance(&[*byte]), 1);
            let done = matches!(at, Boundary::Header { .. });
            assert_eq!(done, i == request.len() - 1, "byte {i}");
        }
    }

    /// The server side of a WebSocket behind a gate, created with `limit`,
    /// and its client.
    async fn pair(
        limit: usize,
    ) -> (
        WebSocketStream<Gate<tokio::io::DuplexStream>>,
        WebSocketStream<tokio::io::DuplexStream>,
    ) {
        let (server, client) = tokio::io::duplex(1 << 22);
        let accept =
            tokio_tungstenite::accept_async_with_config(Gate::new(server), Some(limited(limit)));
        let connect = tokio_tungstenite::client_async("ws://relay/", client);
        let (server, client) = tokio::join!(accept, connect);
        (server.expect("accepted"), client.expect("connected").0)
    }

    #[tokio::test]
    async fn a_pipelined_large_message_survives_the_move_to_full_limits() {
        let (mut server, mut client) = pair(1024).await;
        let big = vec![5u8; 300_000];
        for message in [vec![1u8; 100], vec![2u8; 200], big.clone()] {
            client
                .feed(Message::Binary(message.into()))
                .await
                .expect("feed");
        }
        client.flush().await.expect("sent, all at once");
        let first = server.next().await.expect("a message").expect("small");
        assert_eq!(first.into_data().len(), 100);
        // Welcomed: the same bytes go on under a WebSocket with full limits.
        let gate = server.get_mut().take();
        let mut server =
            WebSocketStream::from_raw_socket(gate, Role::Server, Some(limited(1 << 20))).await;
        let second = server.next().await.expect("a message").expect("intact");
        assert_eq!(second.into_data().to_vec(), vec![2u8; 200]);
        let third = server.next().await.expect("a message").expect("intact");
        assert_eq!(third.into_data().to_vec(), big);
    }

    #[tokio::test]
    async fn a_large_frame_before_the_move_is_refused_by_its_header() {
        let (mut server, mut client) = pair(1024).await;
        client
            .send(Message::Binary(vec![0u8; 1 << 20].into()))
            .await
            .expect("sent");
        match server.next().await {
            Some(Err(WsError::Capacity(e))) => assert!(e.to_string().contains("1048576"), "{e}"),
            other => panic!("expected a capacity error, got {other:?}"),
        }
        let taken = server.get_mut().take();
        assert!(taken.held.len() <= CHUNK, "the gate holds at most a chunk");
    }
}
