//! Collections, records, their history and diffs, and writes: the
//! handlers behind `docs/http-api.md`'s record endpoints.
//!
//! Every handler checks the caller's grant first; a record of a
//! collection the caller may not read answers `404` as if it did not
//! exist, so ids never reveal what a token does not cover.

use std::collections::HashMap;

use accord_engine::{Collection, DocId, Heads, Replica, SqlValue};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use super::{Api, ApiError, ApiResult};

/// Query parameters, read by hand so each bad one is named.
type Params = Query<HashMap<String, String>>;

/// Most records per page.
const MAX_PAGE: u64 = 1000;

/// `GET /v1/info`.
pub async fn info(State(api): State<Api>) -> Json<Value> {
    Json(json!({
        "server": api.inner.server,
        "version": env!("CARGO_PKG_VERSION"),
        "read_only": api.inner.read_only,
        "auth": if api.open() { "open" } else { "token" },
    }))
}

/// A known path with a method it does not take.
pub async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{method} is not served at {} (see docs/http-api.md)",
            uri.path().chars().take(200).collect::<String>()
        ),
    )
}

/// Any other path.
pub async fn no_route(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no such endpoint: {} (see docs/http-api.md)",
        uri.path().chars().take(200).collect::<String>()
    ))
}

/// `GET /v1/collections`.
pub async fn collections(State(api): State<Api>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let grant = api.grant(&headers)?;
    let rows = api
        .blocking(|replica| {
            Ok(replica.query(
                "SELECT collection, sum(deleted = 0), sum(deleted) FROM records \
                 GROUP BY collection ORDER BY collection",
                &[],
            )?)
        })
        .await?;
    let list: Vec<Value> = rows
        .rows
        .iter()
        .filter_map(|row| {
            let name = row[0].as_str()?;
            grant.can_read(name).then(|| {
                json!({
                    "name": name,
                    "records": row[1].as_i64().unwrap_or(0),
                    "deleted": row[2].as_i64().unwrap_or(0),
                    "writable": grant.can_write(name) && !api.inner.read_only,
                })
            })
        })
        .collect();
    Ok(Json(json!({ "collections": list })))
}

/// `GET /v1/collections/{collection}/records`.
pub async fn list(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(collection): Path<String>,
    Query(params): Params,
) -> ApiResult<Json<Value>> {
    let grant = api.grant(&headers)?;
    let collection = readable_collection(&grant, &collection)?;
    let filter = ListFilter::parse(&collection, &params)?;
    let limit = limit(&params, 50)?;
    let cursor = params.get("cursor").map(|c| Cursor::parse(c)).transpose()?;
    api.blocking(move |replica| filter.page(replica, limit, cursor))
        .await
        .map(Json)
}

/// `POST /v1/collections/{collection}/records`.
pub async fn create(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(collection): Path<String>,
    body: Body,
) -> ApiResult<impl IntoResponse> {
    let grant = api.grant(&headers)?;
    let collection = collection_name(&collection)?;
    api.writable(&grant, &collection)?;
    let content = json_body(body)?;
    if !content.is_object() {
        return Err(ApiError::bad(
            "invalid_value",
            "a record's content is a JSON object",
        ));
    }
    let name = collection.clone();
    let id = api
        .blocking(move |replica| Ok(replica.create(&name, &content)?))
        .await?;
    api.changed(collection, id).await;
    let record = api.blocking(move |r| record(r, id, None)).await?;
    let location = format!("/v1/records/{id}");
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(record),
    ))
}

/// `GET /v1/records/{id}`, `?at=HEADS` for a past version.
pub async fn get(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(params): Params,
) -> ApiResult<Json<Value>> {
    let grant = api.grant(&headers)?;
    let id = doc_id(&id)?;
    let at = params.get("at").cloned();
    api.blocking(move |replica| {
        visible(replica, &grant, id)?;
        let at = at.map(|text| heads(replica, id, "at", &text)).transpose()?;
        record(replica, id, at)
    })
    .await
    .map(Json)
}

/// `PATCH /v1/records/{id}`: `{"path", "value", "message"?}`.
pub async fn set(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Json<Value>> {
    let grant = api.grant(&headers)?;
    let id = doc_id(&id)?;
    let body = json_body(body)?;
    let (Some(path), Some(value)) = (body.get("path").and_then(Value::as_str), body.get("value"))
    else {
        return Err(ApiError::bad(
            "invalid_json",
            "the body is {\"path\": \"a.b\", \"value\": ..., \"message\": optional}",
        ));
    };
    let message = match body.get("message") {
        None | Some(Value::Null) => None,
        Some(Value::String(m)) => Some(m.clone()),
        Some(_) => return Err(ApiError::bad("invalid_json", "'message' is a string")),
    };
    let (path, value, writer) = (path.to_owned(), value.clone(), api.clone());
    let (collection, changed) = api
        .blocking(move |replica| {
            let collection = visible(replica, &grant, id)?;
            writer.writable(&grant, &collection)?;
            replica.put(&id, &path, &value, message.as_deref())?;
            Ok((collection, record(replica, id, None)?))
        })
        .await?;
    api.changed(collection, id).await;
    Ok(Json(changed))
}

/// `DELETE /v1/records/{id}`.
pub async fn delete(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let grant = api.grant(&headers)?;
    let id = doc_id(&id)?;
    let writer = api.clone();
    let (collection, deleted) = api
        .blocking(move |replica| {
            let collection = visible(replica, &grant, id)?;
            writer.writable(&grant, &collection)?;
            match replica.delete(&id) {
                Ok(()) | Err(accord_engine::Error::Deleted(_)) => {}
                Err(e) => return Err(e.into()),
            }
            Ok((collection, record(replica, id, None)?))
        })
        .await?;
    api.deleted(&collection, id);
    Ok(Json(deleted))
}

/// `GET /v1/records/{id}/history`: newest first, paged.
pub async fn history(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(params): Params,
) -> ApiResult<Json<Value>> {
    let grant = api.grant(&headers)?;
    let id = doc_id(&id)?;
    let limit = limit(&params, 100)? as usize;
    let from: usize = match params.get("cursor") {
        None => 0,
        Some(c) => c
            .parse()
            .map_err(|_| ApiError::bad("invalid_parameter", format!("bad cursor '{c}'")))?,
    };
    api.blocking(move |replica| {
        visible(replica, &grant, id)?;
        let mut changes = replica.history(&id)?;
        changes.reverse();
        let total = changes.len();
        let page: Vec<Value> = changes
            .iter()
            .skip(from)
            .take(limit)
            .map(|c| {
                json!({
                    "hash": c.hash.to_string(),
                    "actor": c.actor,
                    "device": c.device,
                    "seq": c.seq,
                    "time": (c.time > 0).then(|| rfc3339(c.time * 1000)),
                    "message": c.message,
                    "deps": c.deps.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "ops": c.ops,
                })
            })
            .collect();
        let next = (from + limit < total).then(|| (from + limit).to_string());
        Ok(json!({ "changes": page, "total": total, "next": next }))
    })
    .await
    .map(Json)
}

/// `GET /v1/records/{id}/diff?from=HEADS&to=HEADS`.
pub async fn diff(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(params): Params,
) -> ApiResult<Json<Value>> {
    let grant = api.grant(&headers)?;
    let id = doc_id(&id)?;
    let Some(from) = params.get("from").cloned() else {
        return Err(ApiError::bad(
            "invalid_parameter",
            "give from=HEADS (empty for the empty record)",
        ));
    };
    let to = params.get("to").cloned();
    api.blocking(move |replica| {
        visible(replica, &grant, id)?;
        let from = heads(replica, id, "from", &from)?;
        let to = match to {
            Some(text) => heads(replica, id, "to", &text)?,
            None => replica.heads(&id)?,
        };
        let patches: Vec<Value> = replica
            .diff(&id, &from, &to)?
            .iter()
            .map(accord_engine::replica::patch_json)
            .collect();
        Ok(json!({ "from": hex(&from), "to": hex(&to), "patches": patches }))
    })
    .await
    .map(Json)
}

/// `GET /v1/records/{id}/presence`.
pub async fn presence(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let grant = api.grant(&headers)?;
    let id = doc_id(&id)?;
    api.blocking(move |replica| visible(replica, &grant, id))
        .await?;
    Ok(Json(json!({ "peers": present(&api, id) })))
}

/// Who has `id` open, as JSON.
pub fn present(api: &Api, id: DocId) -> Vec<Value> {
    let Some(links) = &api.inner.relay else {
        return Vec::new();
    };
    links
        .presence
        .of(id)
        .into_iter()
        .map(|p| {
            let ms = p
                .seen
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            json!({ "peer": p.peer, "seen": rfc3339(ms) })
        })
        .collect()
}

/// A record as JSON, now or at `at`.
fn record(replica: &Replica, id: DocId, at: Option<Heads>) -> ApiResult<Value> {
    let meta = replica.meta(&id)?;
    let rows = replica.query(
        "SELECT created, updated, conflicts FROM records WHERE id = ?1",
        &[SqlValue::from(id.to_string())],
    )?;
    let row = rows.rows.first();
    let column = |i: usize| row.map_or(Value::Null, |r| r[i].to_json());
    let heads = at.unwrap_or(meta.heads);
    let value = replica.get_at(&id, &heads)?.value;
    Ok(json!({
        "id": id.to_string(),
        "collection": meta.collection.to_string(),
        "deleted": meta.deleted,
        "created": column(0),
        "updated": column(1),
        "conflicts": column(2),
        "changes": meta.change_count,
        "heads": hex(&heads),
        "value": value,
    }))
}

/// The record's collection, if the caller may read it; `404` otherwise.
pub fn visible(
    replica: &Replica,
    grant: &accord_engine::sync::Grant,
    id: DocId,
) -> ApiResult<Collection> {
    match replica.meta(&id) {
        Ok(meta) if grant.can_read(&meta.collection) => Ok(meta.collection),
        Ok(_) | Err(accord_engine::Error::NotFound(_)) => {
            Err(ApiError::not_found(format!("no record {id}")))
        }
        Err(e) => Err(e.into()),
    }
}

/// A collection named in a URL, which the caller may read.
pub fn readable_collection(
    grant: &accord_engine::sync::Grant,
    name: &str,
) -> ApiResult<Collection> {
    let collection = collection_name(name)?;
    if !grant.can_read(&collection) {
        return Err(ApiError::forbidden(format!(
            "the token does not grant reading collection '{collection}'"
        )));
    }
    Ok(collection)
}

fn collection_name(name: &str) -> ApiResult<Collection> {
    Collection::new(name).map_err(|e| ApiError::bad("invalid_collection", e.to_string()))
}

/// A record id from a URL or parameter.
pub fn doc_id(text: &str) -> ApiResult<DocId> {
    text.parse()
        .map_err(|e: accord_engine::ParseDocIdError| ApiError::bad("invalid_id", e.to_string()))
}

/// Heads given as comma-separated (prefixes of) hashes; empty is none.
fn heads(replica: &Replica, id: DocId, name: &str, text: &str) -> ApiResult<Heads> {
    replica.resolve_heads(&id, text).map_err(|e| {
        let e = ApiError::from(e);
        ApiError::bad("invalid_heads", format!("{name}: {}", e.message))
    })
}

fn hex(heads: &Heads) -> Vec<String> {
    heads.iter().map(ToString::to_string).collect()
}

/// A request body, or why it could not be read (over the size limit).
pub type Body = Result<Bytes, BytesRejection>;

/// A request body as JSON.
pub fn json_body(body: Body) -> ApiResult<Value> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the body is over {} bytes", super::MAX_BODY_BYTES),
            )
        } else {
            ApiError::bad("invalid_json", format!("the body could not be read: {e}"))
        }
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad("invalid_json", format!("the body is not JSON: {e}")))
}

/// The `limit` parameter, 1 to [`MAX_PAGE`].
fn limit(params: &HashMap<String, String>, default: u64) -> ApiResult<u64> {
    match params.get("limit") {
        None => Ok(default),
        Some(text) => match text.parse::<u64>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
            _ => Err(ApiError::bad(
                "invalid_parameter",
                format!("limit must be 1 to {MAX_PAGE}, not '{text}'"),
            )),
        },
    }
}

/// Milliseconds since the epoch as RFC 3339 UTC to the second.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Where the previous page ended: its last record's update time and id.
#[derive(Debug, Clone)]
struct Cursor {
    updated_at: i64,
    id: String,
}

impl Cursor {
    fn parse(text: &str) -> ApiResult<Self> {
        let bad = || ApiError::bad("invalid_parameter", format!("bad cursor '{text}'"));
        let (at, id) = text.split_once(':').ok_or_else(bad)?;
        let updated_at = at.parse().map_err(|_| bad())?;
        doc_id(id).map_err(|_| bad())?;
        Ok(Cursor {
            updated_at,
            id: id.to_owned(),
        })
    }
}

/// Which records a listing shows.
#[derive(Debug, Clone)]
struct ListFilter {
    collection: Collection,
    deleted: bool,
    text: Option<String>,
    /// A JSON path (`$.a.b[0]`) and the JSON value it must hold.
    equals: Option<(String, String)>,
}

impl ListFilter {
    fn parse(collection: &Collection, params: &HashMap<String, String>) -> ApiResult<Self> {
        let deleted = match params.get("deleted").map(String::as_str) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(ApiError::bad(
                    "invalid_parameter",
                    format!("deleted must be true or false, not '{other}'"),
                ))
            }
        };
        let equals = match (params.get("path"), params.get("equals")) {
            (None, None) => None,
            (Some(path), Some(value)) => {
                serde_json::from_str::<Value>(value).map_err(|e| {
                    ApiError::bad(
                        "invalid_parameter",
                        format!("equals must be a JSON value ('\"Paris\"', 36, true): {e}"),
                    )
                })?;
                Some((json_path(path)?, value.clone()))
            }
            _ => {
                return Err(ApiError::bad(
                    "invalid_parameter",
                    "path and equals go together",
                ))
            }
        };
        Ok(ListFilter {
            collection: collection.clone(),
            deleted,
            text: params.get("q").filter(|q| !q.is_empty()).cloned(),
            equals,
        })
    }

    /// The WHERE clause and its parameters (`?1`…).
    fn clause(&self) -> (String, Vec<SqlValue>) {
        let mut sql = String::from("collection = ?1");
        let mut params = vec![SqlValue::from(self.collection.to_string())];
        if !self.deleted {
            sql.push_str(" AND deleted = 0");
        }
        if let Some(text) = &self.text {
            params.push(SqlValue::from(text.to_lowercase()));
            sql.push_str(&format!(" AND instr(lower(json), ?{}) > 0", params.len()));
        }
        if let Some((path, value)) = &self.equals {
            params.push(SqlValue::from(path.clone()));
            params.push(SqlValue::from(value.clone()));
            let (p, v) = (params.len() - 1, params.len());
            sql.push_str(&format!(
                " AND json_type(json, ?{p}) IS NOT NULL \
                 AND json_extract(json, ?{p}) IS json_extract(?{v}, '$')"
            ));
        }
        (sql, params)
    }

    fn page(&self, replica: &Replica, limit: u64, cursor: Option<Cursor>) -> ApiResult<Value> {
        let (clause, mut params) = self.clause();
        let total = replica.query(
            &format!("SELECT count(*) FROM records WHERE {clause}"),
            &params,
        )?;
        let total = total.rows.first().and_then(|r| r[0].as_i64()).unwrap_or(0);
        let mut sql = format!(
            "SELECT id, collection, deleted, created, updated, conflicts, json, updated_at \
             FROM records WHERE {clause}"
        );
        if let Some(c) = cursor {
            params.push(SqlValue::from(c.updated_at));
            params.push(SqlValue::from(c.id));
            let (a, i) = (params.len() - 1, params.len());
            sql.push_str(&format!(
                " AND (updated_at < ?{a} OR (updated_at = ?{a} AND id < ?{i}))"
            ));
        }
        sql.push_str(&format!(
            " ORDER BY updated_at DESC, id DESC LIMIT {}",
            limit + 1
        ));
        let rows = replica.query(&sql, &params)?;
        let more = rows.rows.len() as u64 > limit;
        let shown = &rows.rows[..rows.rows.len().min(limit as usize)];
        let records: Vec<Value> = shown.iter().map(|r| listed(r)).collect();
        let next = shown.last().filter(|_| more).map(|r| {
            format!(
                "{}:{}",
                r[7].as_i64().unwrap_or(0),
                r[0].as_str().unwrap_or("")
            )
        });
        Ok(json!({ "records": records, "total": total, "next": next }))
    }
}

/// A listing row as JSON.
fn listed(row: &[SqlValue]) -> Value {
    let value = row[6]
        .as_str()
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or(Value::Null);
    json!({
        "id": row[0].to_json(),
        "collection": row[1].to_json(),
        "deleted": row[2].as_i64() == Some(1),
        "created": row[3].to_json(),
        "updated": row[4].to_json(),
        "conflicts": row[5].to_json(),
        "value": value,
    })
}

/// A dot path (`address.city`, `tags.0`) as a SQLite JSON path.
fn json_path(path: &str) -> ApiResult<String> {
    path.parse::<accord_engine::json::Path>()
        .map_err(|e| ApiError::bad("invalid_path", e.to_string()))?;
    let mut out = String::from("$");
    for part in path.split('.') {
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{part}]"));
        } else {
            out.push_str(&format!(".\"{}\"", part.replace('"', "\\\"")));
        }
    }
    Ok(out)
}
