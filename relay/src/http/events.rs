//! `GET /v1/events`: a live stream of one collection's or one record's
//! changes, as server-sent events, fed by the replica's own change
//! notifications (every commit, a peer's or the API's). A record's stream
//! also carries who has the record open (presence), when that changes.
//!
//! Bounded: at most [`super::MAX_STREAMS`] streams at once, each with the
//! replica's bounded subscription queue; a stream that falls behind is
//! told how many events it missed (`missed`) instead of being buffered
//! for. A stream ends when the server stops or the token expires.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use accord_engine::replica::{ChangeEvent, ChangeKind, Filter, Origin, RecvError, Subscription};
use accord_engine::DocId;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::{json, Value};
use tokio::sync::{broadcast, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

use super::records::{doc_id, present, readable_collection, visible};
use super::{Api, ApiError, ApiResult};

/// How often a record stream looks whether presence expired.
const PRESENCE_CHECK: Duration = Duration::from_secs(5);

/// How often a comment keeps proxies from closing an idle stream.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// A place among the live streams, or `503 too_many_streams`.
pub fn stream_permit(api: &Api) -> ApiResult<OwnedSemaphorePermit> {
    std::sync::Arc::clone(&api.inner.streams)
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_streams",
                format!(
                    "{} live streams are open; try again later",
                    super::MAX_STREAMS
                ),
            )
        })
}

/// How long until a token expiring at `expires_at_ms` expires.
pub fn until_expiry(expires_at_ms: Option<u64>) -> Option<Duration> {
    expires_at_ms.map(|at| {
        let now = accord_engine::store::now_ms().max(0) as u64;
        Duration::from_millis(at.saturating_sub(now))
    })
}

/// `GET /v1/events?collection=NAME` or `?record=ID`.
pub async fn stream(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let grant = api.grant(&headers)?;
    let (filter, doc) = match (params.get("collection"), params.get("record")) {
        (Some(name), None) => {
            let collection = readable_collection(&grant, name)?;
            (Filter::Collection(collection.to_string()), None)
        }
        (None, Some(id)) => {
            let id = doc_id(id)?;
            let check = grant.clone();
            api.blocking(move |replica| visible(replica, &check, id))
                .await?;
            (Filter::Doc(id), Some(id))
        }
        _ => {
            return Err(ApiError::bad(
                "invalid_parameter",
                "give exactly one of collection=NAME or record=ID",
            ))
        }
    };
    let permit = stream_permit(&api)?;
    let presence = match (&api.inner.relay, doc) {
        (Some(links), Some(_)) => Some(links.presence.changes()),
        _ => None,
    };
    let live = Live {
        subscription: api.inner.replica.subscribe(filter),
        presence,
        shown: None,
        doc,
        expires_at_ms: grant.expires_at_ms(),
        shutdown: api.inner.shutdown.clone(),
        api,
        _permit: permit,
    };
    let events = futures_util::stream::unfold(live, |mut live| async move {
        live.next().await.map(|event| (Ok(event), live))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// One open stream.
struct Live {
    /// The replica's changes this stream shows.
    subscription: Subscription,
    /// Documents whose presence changed (record streams on a relay).
    presence: Option<broadcast::Receiver<DocId>>,
    /// The presence last sent, to send only changes.
    shown: Option<Vec<Value>>,
    /// The record, for a record stream.
    doc: Option<DocId>,
    /// When the caller's token expires (ms since the epoch).
    expires_at_ms: Option<u64>,
    /// The server stops.
    shutdown: CancellationToken,
    /// For presence.
    api: Api,
    /// A place among the live streams, held while the stream is open.
    _permit: OwnedSemaphorePermit,
}

impl Live {
    /// The next event to send, `None` when the stream ends.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.presence_changed() {
                return Some(event);
            }
            let expiry = until_expiry(self.expires_at_ms);
            tokio::select! {
                () = self.shutdown.cancelled() => return None,
                () = sleep(expiry) => return None,
                received = self.subscription.recv_async() => match received {
                    Ok(change) => return Some(change_event(&change)),
                    Err(RecvError::Lagged(count)) => {
                        return Some(Event::default().event("missed").data(json!({"count": count}).to_string()))
                    }
                    Err(_) => return None,
                },
                () = presence_moved(&mut self.presence, self.doc) => {}
            }
        }
    }

    /// Presence, if it differs from what was sent last.
    fn presence_changed(&mut self) -> Option<Event> {
        let (Some(doc), Some(_)) = (self.doc, &self.presence) else {
            return None;
        };
        let peers = present(&self.api, doc);
        if self.shown.as_ref() == Some(&peers) {
            return None;
        }
        let data = json!({ "id": doc.to_string(), "peers": peers });
        self.shown = Some(peers);
        Some(Event::default().event("presence").data(data.to_string()))
    }
}

/// Waits until presence may have changed for `doc`: a presence message
/// about it, or time passing (entries expire).
async fn presence_moved(presence: &mut Option<broadcast::Receiver<DocId>>, doc: Option<DocId>) {
    let Some(rx) = presence else {
        return std::future::pending().await;
    };
    let until = tokio::time::sleep(PRESENCE_CHECK);
    tokio::pin!(until);
    loop {
        tokio::select! {
            () = &mut until => return,
            seen = rx.recv() => match seen {
                Ok(d) if Some(d) == doc => return,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => return,
                Err(broadcast::error::RecvError::Closed) => return std::future::pending().await,
            },
        }
    }
}

async fn sleep(duration: Option<Duration>) {
    match duration {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// A change as an SSE event.
fn change_event(change: &ChangeEvent) -> Event {
    let kind = match change.kind {
        ChangeKind::Created => "created",
        ChangeKind::Changed => "changed",
        ChangeKind::Deleted => "deleted",
    };
    let origin = match change.origin {
        Origin::Local => "local",
        Origin::Remote(_) => "remote",
    };
    let data = json!({
        "id": change.doc.to_string(),
        "collection": change.collection.to_string(),
        "kind": kind,
        "origin": origin,
        "heads": change.heads.iter().map(ToString::to_string).collect::<Vec<_>>(),
    });
    Event::default().event("change").data(data.to_string())
}
