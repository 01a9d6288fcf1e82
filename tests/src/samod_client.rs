//! samod (the Rust automerge-repo) as a client of a relay: the dialer the
//! benchmark and the `/automerge-repo` tests share.

use std::convert::Infallible;

use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use samod::{DialError, Transport};
use tokio_tungstenite_samod::tungstenite::{Error as WsError, Message};

/// samod's tungstenite dialer with `TCP_NODELAY` set (so a comparison
/// never hinges on a socket option).
#[derive(Debug)]
pub struct NoDelayDialer {
    /// The WebSocket URL.
    url: samod::Url,
}

impl NoDelayDialer {
    /// A dialer of `url` (`ws://ADDR/PATH`).
    pub fn new(url: &str) -> anyhow::Result<Self> {
        Ok(NoDelayDialer {
            url: samod::Url::parse(url)?,
        })
    }
}

impl samod::Dialer for NoDelayDialer {
    type Error = Infallible;

    fn url(&self) -> samod::Url {
        self.url.clone()
    }

    fn connect(&self) -> BoxFuture<'static, Result<Transport, DialError<Infallible>>> {
        let url = self.url.clone();
        Box::pin(async move {
            let (ws, _) =
                tokio_tungstenite_samod::connect_async_with_config(url.as_str(), None, true)
                    .await
                    .map_err(DialError::transient)?;
            let (sink, stream) = ws.split();
            let stream = stream
                .filter_map(|m| async move {
                    match m {
                        Ok(Message::Binary(b)) => Some(Ok(b.to_vec())),
                        Ok(_) => None,
                        Err(e) => Some(Err(e)),
                    }
                })
                .boxed();
            let sink = sink.with(|b: Vec<u8>| async move { Ok::<_, WsError>(Message::binary(b)) });
            Ok(Transport::new(stream, Box::pin(sink)))
        })
    }
}
