//! `GET /v1/collections/{collection}/changes`: a collection's change feed,
//! at the record level, read from the collection's sequence
//! (`Replica::changes_since`): each record changed after the cursor, once,
//! in commit order, with its JSON after its latest change. Plain JSON
//! pages (`since`, `limit`), long-polled with `wait=SECONDS`, or, with
//! `Accept: text/event-stream`, an endless stream of the same events,
//! resumable with `Last-Event-ID`.
//!
//! Cursors are the sequence's numbers, stored with the records, so they
//! stay valid across restarts. Waiting uses the replica's change
//! notifications to know when to read again; what is sent is always read
//! from the store. On a cluster node the same handler reads the
//! PostgreSQL store's `docs` rows through the same [`FeedStore`](crate::feed_store::FeedStore), woken by
//! every change the node commits or learns of, so any node serves the
//! same feed with the same cursors.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::time::Duration;

use accord_engine::replica::ChangeKind;
use accord_engine::{Collection, FeedEntry};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::OwnedSemaphorePermit;

use super::events::{stream_permit, until_expiry, KEEP_ALIVE};
use super::records::{readable_collection, rfc3339};
use super::{Api, ApiError, ApiResult};
use crate::feed_store::Wake;

/// Events per page when the request names no limit.
const DEFAULT_LIMIT: usize = 100;
/// The most events per page.
const MAX_LIMIT: usize = 1000;
/// The longest long-poll.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// The handler.
pub async fn changes(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(collection): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let grant = api.grant(&headers)?;
    let collection = readable_collection(&grant, &collection)?;
    let limit = match params.get("limit") {
        None => DEFAULT_LIMIT,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => return Err(bad(format!("limit must be 1 to {MAX_LIMIT}, not '{text}'"))),
        },
    };
    let streaming = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let since = match (resume.filter(|_| streaming), params.get("since")) {
        (Some(id), _) => cursor(&id)?,
        (None, Some(text)) => cursor(text)?,
        (None, None) => 0,
    };
    let expires_at_ms = grant.expires_at_ms();
    if streaming {
        let permit = stream_permit(&api)?;
        let feed = Feed {
            wake: api.inner.feed.watch(&[collection.to_string()]),
            api,
            collection,
            cursor: since,
            ready: VecDeque::new(),
            expires_at_ms,
            _permit: permit,
        };
        let events = futures_util::stream::unfold(feed, |mut feed| async move {
            feed.next()
                .await
                .map(|event| (Ok::<_, Infallible>(event), feed))
        });
        return Ok(Sse::new(events)
            .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
            .into_response());
    }
    let wait = match params.get("wait") {
        None => Duration::ZERO,
        Some(text) => match text.parse::<u64>() {
            Ok(s) if Duration::from_secs(s) <= MAX_WAIT => Duration::from_secs(s),
            _ => {
                return Err(bad(format!(
                    "wait must be 0 to {} seconds, not '{text}'",
                    MAX_WAIT.as_secs()
                )))
            }
        },
    };
    // Subscribed before reading, so a change committed between the read
    // and the wait still wakes the wait.
    let wake = (!wait.is_zero()).then(|| api.inner.feed.watch(&[collection.to_string()]));
    let mut entries = read(&api, &collection, since, limit).await?;
    if let Some(mut wake) = wake.filter(|_| entries.is_empty()) {
        let expiry = until_expiry(expires_at_ms).unwrap_or(wait).min(wait);
        let woke = tokio::select! {
            changed = wake.changed() => changed,
            () = tokio::time::sleep(expiry) => false,
            () = api.inner.shutdown.cancelled() => false,
        };
        if woke {
            entries = read(&api, &collection, since, limit).await?;
        }
    }
    let next = entries.last().map_or(since, |e| e.seq);
    let changes: Vec<Value> = entries.iter().map(|e| entry_json(&collection, e)).collect();
    Ok(Json(json!({ "changes": changes, "next": next.to_string() })).into_response())
}

fn bad(message: String) -> ApiError {
    ApiError::bad("invalid_parameter", message)
}

/// A cursor: a number of the collection's sequence.
fn cursor(text: &str) -> ApiResult<u64> {
    text.trim().parse().map_err(|_| {
        bad(format!(
            "a cursor is a number from an earlier event or page, not '{text}'"
        ))
    })
}

async fn read(
    api: &Api,
    collection: &Collection,
    since: u64,
    limit: usize,
) -> ApiResult<Vec<FeedEntry>> {
    Ok(api
        .inner
        .feed
        .changes_since(collection, since, limit)
        .await?)
}

/// One event as JSON: what the feed and webhooks send.
pub fn entry_json(collection: &str, entry: &FeedEntry) -> Value {
    let event = match entry.kind {
        ChangeKind::Created => "created",
        ChangeKind::Changed => "changed",
        ChangeKind::Deleted => "deleted",
    };
    json!({
        "cursor": entry.seq.to_string(),
        "id": entry.id.to_string(),
        "collection": collection,
        "event": event,
        "heads": entry.heads.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "time": rfc3339(entry.updated_at),
        "value": entry.value,
    })
}

/// An open feed stream.
struct Feed {
    /// Where to read.
    api: Api,
    /// Which collection.
    collection: Collection,
    /// The last number sent.
    cursor: u64,
    /// Read but not sent yet.
    ready: VecDeque<FeedEntry>,
    /// Wakes the stream when the collection changes.
    wake: Wake,
    /// When the caller's token expires.
    expires_at_ms: Option<u64>,
    /// A place among the live streams.
    _permit: OwnedSemaphorePermit,
}

impl Feed {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(entry) = self.ready.pop_front() {
                self.cursor = entry.seq;
                let data = entry_json(&self.collection, &entry).to_string();
                return Some(
                    Event::default()
                        .event("change")
                        .id(entry.seq.to_string())
                        .data(data),
                );
            }
            // What was heard so far is covered by the read below.
            self.wake.clear();
            match read(&self.api, &self.collection, self.cursor, DEFAULT_LIMIT).await {
                Ok(entries) if !entries.is_empty() => {
                    self.ready = entries.into();
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    let data = json!({"code": e.code, "message": e.message}).to_string();
                    return Some(Event::default().event("error").data(data));
                }
            }
            let expiry = until_expiry(self.expires_at_ms);
            tokio::select! {
                () = self.api.inner.shutdown.cancelled() => return None,
                () = sleep(expiry) => return None,
                changed = self.wake.changed() => {
                    if !changed {
                        return None;
                    }
                }
            }
        }
    }
}

async fn sleep(duration: Option<Duration>) {
    match duration {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
