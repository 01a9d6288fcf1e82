//! A fault-injecting TCP proxy for tests: it sits between replicas and the
//! relay on loopback and, on command, delays, throttles, stalls, resets
//! connections or cuts them in the middle of a frame.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to the bytes it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything at once.
    None,
    /// Hold every chunk this long before forwarding it.
    Delay(Duration),
    /// Forward at most this many bytes per second in each direction.
    Throttle(usize),
    /// Forward nothing (connections stay open) until the fault changes.
    Stall,
    /// Reset every open connection (TCP RST), then behave like `None`.
    Reset,
    /// Forward half of the next chunk, then close the connection: the peer
    /// sees a WebSocket frame cut in the middle. Then behave like `None`.
    CutMidFrame,
    /// The service is gone: reset every open connection and close new ones
    /// as soon as they are accepted, until the fault changes.
    Down,
}

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    /// Where replicas connect.
    pub addr: SocketAddr,
    /// The fault in force.
    fault: watch::Sender<(Fault, u64)>,
    /// Bytes forwarded so far (both directions).
    forwarded: Arc<Mutex<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// Starts a proxy on 127.0.0.1:0 forwarding to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (fault, rx) = watch::channel((Fault::None, 0));
        let forwarded = Arc::new(Mutex::new(0));
        let counter = Arc::clone(&forwarded);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if rx.borrow().0 == Fault::Down {
                    #[allow(deprecated)] // linger 0: an immediate RST
                    let _ = client.set_linger(Some(Duration::ZERO));
                    continue;
                }
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                tokio::spawn(pipe_pair(client, server, rx.clone(), Arc::clone(&counter)));
            }
        });
        Ok(FaultProxy {
            addr,
            fault,
            forwarded,
            task,
        })
    }

    /// `ws://` URL of the proxy.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Puts a fault in force (one-shot faults act on current connections).
    pub fn set(&self, fault: Fault) {
        self.fault.send_modify(|(f, generation)| {
            *f = fault;
            *generation += 1;
        });
    }

    /// Bytes forwarded so far.
    pub fn forwarded(&self) -> u64 {
        *self
            .forwarded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

async fn pipe_pair(
    client: TcpStream,
    server: TcpStream,
    fault: watch::Receiver<(Fault, u64)>,
    counter: Arc<Mutex<u64>>,
) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let start = fault.borrow().1;
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = pipe(cr, sw, fault.clone(), start, Arc::clone(&counter));
    let down = pipe(sr, cw, fault, start, counter);
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// Forwards one direction until either side closes or a fault ends it.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut fault: watch::Receiver<(Fault, u64)>,
    born: u64,
    counter: Arc<Mutex<u64>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // An idle connection is reset as soon as a reset is asked for, not
        // at its next byte.
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            changed = fault.changed() => {
                if changed.is_err() {
                    return;
                }
                let (current, generation) = *fault.borrow();
                if generation > born && matches!(current, Fault::Reset | Fault::Down) {
                    #[allow(deprecated)] // linger 0: an immediate RST
                    let _ = to.as_ref().set_linger(Some(Duration::ZERO));
                    return;
                }
                continue;
            }
        };
        let mut data = &buf[..n];
        loop {
            let (current, generation) = *fault.borrow();
            let fresh = generation > born;
            match current {
                Fault::Stall => {
                    if fault.changed().await.is_err() {
                        return;
                    }
                    continue;
                }
                Fault::Reset | Fault::Down if fresh => {
                    // Linger 0 makes the close send RST at once, so the
                    // blocking-close concern of the deprecation does not arise.
                    #[allow(deprecated)]
                    let _ = to.as_ref().set_linger(Some(Duration::ZERO));
                    return;
                }
                Fault::CutMidFrame if fresh => {
                    let half = data.len().div_ceil(2);
                    let _ = to.write_all(&data[..half]).await;
                    return;
                }
                Fault::Delay(d) => tokio::time::sleep(d).await,
                Fault::Throttle(rate) => {
                    let take = data.len().min((rate / 10).max(1));
                    if to.write_all(&data[..take]).await.is_err() {
                        return;
                    }
                    count(&counter, take);
                    data = &data[take..];
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if data.is_empty() {
                        break;
                    }
                    continue;
                }
                _ => {}
            }
            if to.write_all(data).await.is_err() {
                return;
            }
            count(&counter, data.len());
            break;
        }
    }
}

fn count(counter: &Mutex<u64>, n: usize) {
    *counter
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) += n as u64;
}
