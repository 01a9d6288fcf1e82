//! `/v1/webhooks`: the relay's webhooks, how far each has delivered, and
//! their dead letters, which can be replayed or dropped. A caller sees a
//! webhook only if its token reads every collection the webhook receives.

use accord_engine::sync::Grant;
use accord_engine::DeadLetter;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use super::records::rfc3339;
use super::{Api, ApiError, ApiResult};
use crate::webhooks::{batch_key, post, Webhook};

/// The webhook `name`, if the caller may see it.
fn visible<'a>(api: &'a Api, grant: &Grant, name: &str) -> ApiResult<&'a Webhook> {
    api.webhooks()
        .iter()
        .find(|h| h.name == name && sees(grant, h))
        .ok_or_else(|| ApiError::not_found(format!("no webhook '{name}'")))
}

fn sees(grant: &Grant, hook: &Webhook) -> bool {
    hook.collections.iter().all(|c| grant.can_read(c))
}

fn letter_json(letter: &DeadLetter) -> Value {
    let events = serde_json::from_str::<Value>(&letter.body)
        .ok()
        .and_then(|b| b["events"].as_array().map(Vec::len))
        .unwrap_or(0);
    json!({
        "id": letter.id,
        "webhook": letter.consumer,
        "collection": letter.collection,
        "first_cursor": letter.first_seq.to_string(),
        "last_cursor": letter.last_seq.to_string(),
        "events": events,
        "attempts": letter.attempts,
        "error": letter.error,
        "failed": rfc3339(letter.failed_at),
    })
}

/// `GET /v1/webhooks`.
pub async fn list(State(api): State<Api>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let grant = api.grant(&headers)?;
    let hooks: Vec<Webhook> = api
        .webhooks()
        .iter()
        .filter(|h| sees(&grant, h))
        .cloned()
        .collect();
    let store = &api.inner.feed;
    let mut listed = Vec::new();
    for hook in hooks {
        let mut collections = Vec::new();
        for c in &hook.collections {
            let cursor = store.feed_cursor(&hook.name, c).await?;
            let last = store.last_seq(c).await?;
            collections.push(json!({
                "collection": c,
                "cursor": cursor.to_string(),
                "behind": last.saturating_sub(cursor),
            }));
        }
        let dead = store.dead_letters(Some(&hook.name)).await?.len();
        listed.push(json!({
            "name": hook.name,
            "url": hook.url,
            "collections": collections,
            "dead_letters": dead,
        }));
    }
    Ok(Json(json!({ "webhooks": listed })))
}

/// `GET /v1/webhooks/{name}/dead-letters`.
pub async fn dead_letters(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let grant = api.grant(&headers)?;
    let hook = visible(&api, &grant, &name)?.name.clone();
    let letters = api.inner.feed.dead_letters(Some(&hook)).await?;
    let letters: Vec<Value> = letters.iter().map(letter_json).collect();
    Ok(Json(json!({ "dead_letters": letters })))
}

/// The webhook `name`, if the caller may see it, and its dead letter `id`.
async fn hook_letter(
    api: &Api,
    headers: &HeaderMap,
    name: &str,
    id: &str,
) -> ApiResult<(Webhook, DeadLetter)> {
    let grant = api.grant(headers)?;
    let hook = visible(api, &grant, name)?.clone();
    let letter = letter(api, &hook, id).await?;
    Ok((hook, letter))
}

/// Forgets dead letter `id`.
async fn forget(api: &Api, id: i64) -> ApiResult<()> {
    Ok(api.inner.feed.drop_dead_letter(id).await?)
}

/// The dead letter `id` of webhook `name`.
async fn letter(api: &Api, hook: &Webhook, id: &str) -> ApiResult<DeadLetter> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::bad("invalid_id", format!("'{id}' is not a dead letter's id")))?;
    let name = &hook.name;
    api.inner
        .feed
        .dead_letter(id)
        .await?
        .filter(|l| l.consumer == *name)
        .ok_or_else(|| ApiError::not_found(format!("no dead letter {id} of webhook '{name}'")))
}

/// `POST /v1/webhooks/{name}/dead-letters/{id}/replay`: one delivery try
/// now; on success the letter is gone.
pub async fn replay(
    State(api): State<Api>,
    headers: HeaderMap,
    Path((name, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let (hook, letter) = hook_letter(&api, &headers, &name, &id).await?;
    let key = batch_key(
        &hook.name,
        &letter.collection,
        letter.first_seq,
        letter.last_seq,
    );
    match post(&hook, &letter.body, &key).await {
        Ok(status) if status.is_success() => {
            forget(&api, letter.id).await?;
            Ok(Json(
                json!({ "delivered": true, "status": status.as_u16() }),
            ))
        }
        Ok(status) => Err(failed(format!("the endpoint answered HTTP {status}"))),
        Err(e) => Err(failed(format!("{e:#}"))),
    }
}

fn failed(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_GATEWAY, "delivery_failed", message)
}

/// `DELETE /v1/webhooks/{name}/dead-letters/{id}`.
pub async fn drop_letter(
    State(api): State<Api>,
    headers: HeaderMap,
    Path((name, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let (_, letter) = hook_letter(&api, &headers, &name, &id).await?;
    forget(&api, letter.id).await?;
    Ok(Json(json!({ "dropped": true })))
}
