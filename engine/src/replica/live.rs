//! Live queries: a query's result, kept current.
//!
//! A [`LiveQuery`] is a query plus a subscription to the replica's change
//! events (`events`). Waiting on it waits for events; when some arrive, it
//! takes every event already queued (so a burst of changes costs one
//! re-run), runs the query again, and hands out the new result only if it
//! differs from the last one. So the app is told exactly when its result
//! changed, whatever the SQL reads, without the engine having to work out
//! which records a query depends on. The cost is one query per batch of
//! changes, on the waiting thread (or the blocking pool, for
//! [`LiveQuery::recv_async`]), and only while the app is waiting.
//!
//! Changes reach the events whether they were made through this replica's
//! API or arrived from a peer (the sync layer commits through the same
//! write path). Changes another process writes to the same file do not
//! produce events here.

use std::time::{Duration, Instant};

use super::events::{RecvError, Subscription};
use super::Replica;
use crate::error::{Error, Result};
use crate::store::{QueryRows, SqlValue};

/// A query whose result is re-checked as changes commit. Made by
/// [`Replica::watch_query`]; drop it to stop watching.
#[derive(Debug)]
pub struct LiveQuery {
    /// The replica the query runs on (kept open while watched).
    replica: Replica,
    /// The statement.
    sql: String,
    /// Its parameters.
    params: Vec<SqlValue>,
    /// The change events that make a re-run worthwhile.
    events: Subscription,
    /// The last result handed out (or the first one).
    current: QueryRows,
}

impl LiveQuery {
    pub(super) fn new(
        replica: Replica,
        sql: &str,
        params: &[SqlValue],
        events: Subscription,
        current: QueryRows,
    ) -> Self {
        LiveQuery {
            replica,
            sql: sql.to_owned(),
            params: params.to_vec(),
            events,
            current,
        }
    }

    /// The latest result.
    pub fn current(&self) -> &QueryRows {
        &self.current
    }

    /// Blocks until the result differs from [`LiveQuery::current`], and
    /// returns the new one.
    pub fn recv(&mut self) -> Result<QueryRows> {
        loop {
            match self.events.recv() {
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(_) => return Err(Error::Closed),
            }
            if let Some(rows) = self.rerun()? {
                return Ok(rows);
            }
        }
    }

    /// Like [`LiveQuery::recv`], giving up after `timeout` with `Ok(None)`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<QueryRows>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Timeout) => return Ok(None),
                Err(RecvError::Closed) => return Err(Error::Closed),
            }
            if let Some(rows) = self.rerun()? {
                return Ok(Some(rows));
            }
        }
    }

    /// Without blocking: if changes committed since the last look, runs the
    /// query and returns the new result if it differs.
    pub fn try_recv(&mut self) -> Result<Option<QueryRows>> {
        if self.events.is_empty() {
            return Ok(None);
        }
        self.rerun()
    }

    /// Waits without blocking the async runtime; the query runs on tokio's
    /// blocking pool. Must be called inside a tokio runtime.
    pub async fn recv_async(&mut self) -> Result<QueryRows> {
        loop {
            match self.events.recv_async().await {
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(_) => return Err(Error::Closed),
            }
            self.drain();
            let (replica, sql, params) =
                (self.replica.clone(), self.sql.clone(), self.params.clone());
            let rows = tokio::task::spawn_blocking(move || replica.query(&sql, &params))
                .await
                .map_err(|_| Error::Closed)??;
            if let Some(rows) = self.keep_if_new(rows) {
                return Ok(rows);
            }
        }
    }

    /// Drops every queued event: one re-run answers for all of them.
    fn drain(&self) {
        while self.events.try_recv().is_some() {}
    }

    /// Re-runs the query after draining; `Some` if the result changed.
    fn rerun(&mut self) -> Result<Option<QueryRows>> {
        self.drain();
        let rows = self.replica.query(&self.sql, &self.params)?;
        Ok(self.keep_if_new(rows))
    }

    fn keep_if_new(&mut self, rows: QueryRows) -> Option<QueryRows> {
        if rows == self.current {
            return None;
        }
        self.current = rows.clone();
        Some(rows)
    }
}
