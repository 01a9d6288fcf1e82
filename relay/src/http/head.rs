//! Telling a WebSocket upgrade from a plain HTTP request on the one port.
//!
//! [`read_head`] reads a request's head (its first line and headers, up
//! to the blank line) off the socket, bounded in size, and says whether it
//! asks for a WebSocket. The bytes it read are handed on inside
//! [`Prefixed`], which replays them before the rest of the stream, so
//! whoever serves the connection (tungstenite's handshake or hyper) reads
//! the request from its first byte, as if nobody had looked.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The longest request head read; longer ones are refused
/// (`431 Request Header Fields Too Large`).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// What the first request on a connection asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wants {
    /// A WebSocket (`Upgrade: websocket`): a sync connection.
    WebSocket,
    /// Anything else: the HTTP API, the inspector, health and metrics.
    Http,
}

/// Why no head could be read.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// The head is longer than [`MAX_HEAD_BYTES`].
    #[error("request head over {MAX_HEAD_BYTES} bytes")]
    TooLong,
    /// Not an HTTP request.
    #[error("not an HTTP request: {0}")]
    Malformed(String),
    /// The peer closed or the socket failed first.
    #[error("connection ended before a request: {0}")]
    Io(#[from] io::Error),
}

/// Reads the first request's head off `stream`; returns what it wants and
/// the stream with the bytes read put back in front, or why not and the
/// stream (to answer on).
pub async fn read_head<S>(mut stream: S) -> Result<(Wants, Prefixed<S>), (HeadError, S)>
where
    S: AsyncRead + Unpin,
{
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) => return Err((io::Error::from(io::ErrorKind::UnexpectedEof).into(), stream)),
            Ok(n) => n,
            Err(e) => return Err((e.into(), stream)),
        };
        head.extend_from_slice(&chunk[..n]);
        match parse(&head) {
            Ok(Some(wants)) => return Ok((wants, Prefixed::new(head, stream))),
            Ok(None) if head.len() > MAX_HEAD_BYTES => return Err((HeadError::TooLong, stream)),
            Ok(None) => {}
            Err(e) => return Err((e, stream)),
        }
    }
}

impl HeadError {
    /// The HTTP response that says what was wrong, if one can be sent.
    pub fn response(&self) -> Option<String> {
        let (status, text) = match self {
            HeadError::TooLong => ("431 Request Header Fields Too Large", self.to_string()),
            HeadError::Malformed(_) => ("400 Bad Request", self.to_string()),
            HeadError::Io(_) => return None,
        };
        Some(format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{text}\n",
            text.len() + 1
        ))
    }
}

/// What a complete head asks for, `None` if it is not complete yet.
fn parse(bytes: &[u8]) -> Result<Option<Wants>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(bytes) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(_)) => {
            let upgrade = request.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("upgrade")
                    && String::from_utf8_lossy(h.value)
                        .split(',')
                        .any(|v| v.trim().eq_ignore_ascii_case("websocket"))
            });
            Ok(Some(if upgrade {
                Wants::WebSocket
            } else {
                Wants::Http
            }))
        }
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLong),
        Err(e) => Err(HeadError::Malformed(e.to_string())),
    }
}

/// A stream that first yields bytes already read off it.
#[derive(Debug)]
pub struct Prefixed<S> {
    /// The bytes read before, still to be handed out.
    head: Vec<u8>,
    /// How many of them were handed out.
    read: usize,
    /// The stream itself.
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner` with `head` in front.
    pub fn new(head: Vec<u8>, inner: S) -> Self {
        Prefixed {
            head,
            read: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.read < this.head.len() {
            let rest = &this.head[this.read..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.read += n;
            if this.read == this.head.len() {
                this.head = Vec::new();
                this.read = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn an_upgrade_is_told_from_a_request_and_nothing_is_lost() {
        let upgrade =
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nrest";
        let (wants, mut stream) = read_head(&upgrade[..]).await.expect("head");
        assert_eq!(wants, Wants::WebSocket);
        let mut all = Vec::new();
        stream.read_to_end(&mut all).await.expect("read");
        assert_eq!(all, upgrade);

        let plain = b"GET /v1/collections HTTP/1.1\r\nHost: x\r\n\r\n";
        let (wants, _) = read_head(&plain[..]).await.expect("head");
        assert_eq!(wants, Wants::Http);
    }

    #[tokio::test]
    async fn garbage_and_endless_heads_are_refused() {
        let garbage = b"\x16\x03\x01 hello\r\n\r\n";
        assert!(matches!(
            read_head(&garbage[..]).await,
            Err((HeadError::Malformed(_), _))
        ));
        let mut endless = b"GET / HTTP/1.1\r\n".to_vec();
        while endless.len() <= MAX_HEAD_BYTES {
            endless.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        let Err((error, _)) = read_head(&endless[..]).await else {
            panic!("an endless head was read");
        };
        assert!(matches!(error, HeadError::TooLong));
        let response = error.response().expect("a response");
        assert!(response.starts_with("HTTP/1.1 431 "), "{response}");
    }
}
