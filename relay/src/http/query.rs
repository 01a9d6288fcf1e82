//! `POST /v1/query`: one read-only SQL statement over the `records` and
//! `live_records` views, with the engine's guard (the same as `accord
//! query`), a time limit and a row limit.
//!
//! SQL reads across collections, so it needs a grant that reads every
//! collection (open mode, `accord inspect`); a token scoped to some
//! collections is refused rather than trusted to write only queries that
//! stay inside them.

use std::ops::ControlFlow;
use std::time::Duration;

use accord_engine::SqlValue;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

use super::records::{json_body, Body};
use super::{Api, ApiError, ApiResult};

/// How long one statement may run inside SQLite.
pub const TIME_LIMIT: Duration = Duration::from_secs(5);

/// Rows returned when the request names no limit.
const DEFAULT_ROWS: u64 = 1000;

/// The most rows one request may ask for.
const MAX_ROWS: u64 = 10_000;

/// The most bytes of values one answer holds: rows past it are left out
/// (`truncated`), however few rows that is, so a query of large records
/// cannot make the relay build an answer of any size.
pub const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// `POST /v1/query`: `{"sql", "params"?, "limit"?}`.
pub async fn run(State(api): State<Api>, headers: HeaderMap, body: Body) -> ApiResult<Json<Value>> {
    let grant = api.grant(&headers)?;
    if !grant.reads_everything() {
        return Err(ApiError::forbidden(
            "SQL reads every collection, and this token grants only some: list and filter \
             records with GET /v1/collections/{c}/records instead",
        ));
    }
    let body = json_body(body)?;
    let Some(sql) = body.get("sql").and_then(Value::as_str).map(str::to_owned) else {
        return Err(ApiError::bad(
            "invalid_json",
            "the body is {\"sql\": \"SELECT ...\", \"params\": [...], \"limit\": 1000}",
        ));
    };
    let params: Vec<SqlValue> = match body.get("params") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items.iter().map(param).collect::<ApiResult<_>>()?,
        Some(_) => return Err(ApiError::bad("invalid_json", "'params' is a list")),
    };
    let limit = match body.get("limit") {
        None | Some(Value::Null) => DEFAULT_ROWS,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_ROWS).contains(&n) => n,
            _ => {
                return Err(ApiError::bad(
                    "invalid_parameter",
                    format!("limit must be 1 to {MAX_ROWS}, not {v}"),
                ))
            }
        },
    };
    api.blocking(move |replica| {
        let mut rows: Vec<Value> = Vec::new();
        let (mut truncated, mut bytes) = (false, 0);
        let columns = replica.query_each_within(TIME_LIMIT, &sql, &params, |_, row| {
            bytes += row.iter().map(value_bytes).sum::<usize>();
            if rows.len() as u64 == limit || bytes > MAX_ANSWER_BYTES {
                truncated = true;
                return ControlFlow::Break(());
            }
            rows.push(Value::Array(row.iter().map(SqlValue::to_json).collect()));
            ControlFlow::Continue(())
        })?;
        Ok(json!({ "columns": columns, "rows": rows, "truncated": truncated }))
    })
    .await
    .map(Json)
}

/// About how many bytes a value takes in the answer.
fn value_bytes(value: &SqlValue) -> usize {
    match value {
        SqlValue::Text(t) => t.len(),
        SqlValue::Blob(b) => b.len() * 2,
        _ => 8,
    }
}

/// One positional parameter: a string, number, boolean or null.
fn param(value: &Value) -> ApiResult<SqlValue> {
    match value {
        Value::Array(_) | Value::Object(_) => Err(ApiError::bad(
            "invalid_json",
            "query parameters are strings, numbers, booleans or null",
        )),
        other => Ok(SqlValue::from(other)),
    }
}
