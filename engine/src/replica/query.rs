//! SQL over the records' current content.
//!
//! Every commit also writes the record's content as JSON into the
//! projection (see `store::projection`), in the same transaction, so apps
//! can query the `records` view with SQLite's JSON functions:
//!
//! ```
//! use accord_engine::{Replica, SqlValue};
//! use serde_json::json;
//!
//! let replica = Replica::open_in_memory()?;
//! replica.create("contacts", &json!({"name": "Ada", "city": "London"}))?;
//! replica.create_index("contacts", "$.name")?;
//! let rows = replica.query(
//!     "SELECT json_extract(json, '$.city') AS city FROM records
//!      WHERE collection = 'contacts' AND json_extract(json, '$.name') = ?1",
//!     &["Ada".into()],
//! )?;
//! assert_eq!(rows.rows, vec![vec![SqlValue::Text("London".into())]]);
//! # Ok::<(), accord_engine::Error>(())
//! ```
//!
//! Queries run on a connection that cannot write (`store::query`). This
//! module is the API; `projection` keeps the rows right on open and on
//! request, and `live` re-runs queries as changes commit.

use std::ops::ControlFlow;
use std::time::Duration;

use automerge::Automerge;

use super::live::LiveQuery;
use super::{Filter, Replica};
use crate::error::Result;
use crate::json;
use crate::store::{IndexTarget, Projected, QueryIndex, QueryRows, SqlValue, Store, WriteOp};

/// What the projection stores of a document: its content as JSON text
/// (the mapping `get` uses, `docs/storage-format.md`, section 8) and how
/// many of its fields hold concurrent values.
pub(crate) fn project_content(doc: &Automerge) -> Projected {
    Projected {
        json: json::to_json(&doc.hydrate(None)).to_string(),
        conflicts: super::conflicts::count(doc) as i64,
    }
}

impl Replica {
    /// What to store in the projection with a write of `doc`, or `None`
    /// when this replica keeps no projection.
    pub(super) fn projection_of(&self, doc: &Automerge) -> Option<Projected> {
        self.inner.options.projection.then(|| project_content(doc))
    }

    /// Runs one read-only SQL statement with positional parameters (`?`,
    /// `?1`, ...) and returns every row.
    ///
    /// Read the `records` view (columns `id`, `collection`, `deleted`,
    /// `created_at`, `updated_at`, `json`; see `docs/queries.md`). The
    /// statement runs on a read-only connection: SQL that would write,
    /// change the schema, attach a file or set a pragma is refused with
    /// [`QueryError::ReadOnly`](crate::QueryError::ReadOnly), several
    /// statements with `MultipleStatements`, bad SQL with `Invalid`; nothing
    /// is changed in any case.
    ///
    /// Every row is kept in memory until the statement ends; for a result
    /// whose size is not known (SQL typed by a person, a recursive CTE),
    /// use [`Replica::query_each`] or [`Replica::query_each_within`].
    pub fn query(&self, sql: &str, params: &[SqlValue]) -> Result<QueryRows> {
        QueryRows::collect(|on_row| self.stream(sql, params, None, on_row))
    }

    /// Runs one read-only SQL statement, refused and checked exactly as
    /// [`Replica::query`] does, and hands each row to `on_row` as SQLite
    /// produces it, with the result's column names; returning
    /// `ControlFlow::Break(())` stops the statement there. Only the row in
    /// hand is in memory, so a result of any size (an endless recursive
    /// CTE included) can be read, printed or cut short. Returns the column
    /// names, also when there were no rows.
    ///
    /// `on_row` runs on the calling thread while the statement is open:
    /// on a file replica nothing of the replica is locked meanwhile (the
    /// statement has a read-only connection of its own, and commits go on),
    /// but the statement's read snapshot keeps the WAL from being
    /// checkpointed past it, so do not keep it open for ever. An in-memory
    /// replica runs the statement on its only connection, so `on_row` must
    /// not call that replica (it would wait for itself).
    pub fn query_each<F>(&self, sql: &str, params: &[SqlValue], on_row: F) -> Result<Vec<String>>
    where
        F: FnMut(&[String], Vec<SqlValue>) -> ControlFlow<()>,
    {
        self.stream(sql, params, None, on_row)
    }

    /// [`Replica::query_each`] with a time limit: once the statement has
    /// spent `time_limit` inside SQLite it is interrupted and the call
    /// returns [`QueryError::TimedOut`](crate::QueryError::TimedOut) (rows
    /// handed out before stay handed out). Only SQLite's own time counts,
    /// not the time `on_row` takes, so a slow reader is not cut off.
    pub fn query_each_within<F>(
        &self,
        time_limit: Duration,
        sql: &str,
        params: &[SqlValue],
        on_row: F,
    ) -> Result<Vec<String>>
    where
        F: FnMut(&[String], Vec<SqlValue>) -> ControlFlow<()>,
    {
        self.stream(sql, params, Some(time_limit), on_row)
    }

    fn stream<F>(
        &self,
        sql: &str,
        params: &[SqlValue],
        time_limit: Option<Duration>,
        on_row: F,
    ) -> Result<Vec<String>>
    where
        F: FnMut(&[String], Vec<SqlValue>) -> ControlFlow<()>,
    {
        let Some(path) = &self.inner.path else {
            // In memory: no second connection can see the database, so the
            // query runs on the writer, switched to read-only for its length.
            let columns = self
                .inner
                .committer
                .with_store_mut(|s| s.query_guarded(sql, params, time_limit, on_row))?;
            return Ok(columns);
        };
        // The query connection leaves its place for the statement's length,
        // so `on_row` holds no lock: a query started from it (or from
        // another thread meanwhile) opens a connection of its own.
        let idle = self.inner.queries.lock().take();
        let mut conn = match idle {
            Some(conn) => conn,
            None => Store::open_query(path)?,
        };
        let result = conn.each(sql, params, time_limit, on_row);
        let mut idle = self.inner.queries.lock();
        if idle.is_none() {
            *idle = Some(conn);
        }
        Ok(result?)
    }

    /// Creates an index on a JSON path (such as `$.name`) of the records of
    /// one collection, so that queries saying `collection = '<collection>'`
    /// and comparing `json_extract(json, '<path>')`, written exactly so, look
    /// records up instead of scanning them. Creating an existing index does
    /// nothing. Returns the index (its name is derived from both).
    pub fn create_index(&self, collection: &str, path: &str) -> Result<QueryIndex> {
        let target = IndexTarget::new(collection, path)?;
        let index = describe(&target);
        self.inner
            .committer
            .submit(vec![WriteOp::CreateIndex(target)])?;
        Ok(index)
    }

    /// Drops the index on `path` of `collection`; returns whether it existed.
    pub fn drop_index(&self, collection: &str, path: &str) -> Result<bool> {
        let target = IndexTarget::new(collection, path)?;
        let name = target.name();
        let existed = self.indexes()?.iter().any(|i| i.name == name);
        self.inner
            .committer
            .submit(vec![WriteOp::DropIndex(target)])?;
        Ok(existed)
    }

    /// The JSON-path indexes, ordered by collection and path.
    pub fn indexes(&self) -> Result<Vec<QueryIndex>> {
        Ok(self.read_store(Store::query_indexes)?)
    }

    /// Subscribes to a query: the [`LiveQuery`] holds its current result and
    /// hands out a new one whenever a change committed through this replica
    /// (local, or arriving from a peer) changes it.
    pub fn watch_query(&self, sql: &str, params: &[SqlValue]) -> Result<LiveQuery> {
        self.watch_query_with(Filter::All, sql, params)
    }

    /// Like [`Replica::watch_query`], re-running the query only after
    /// changes that match `filter` (say, the one collection it reads).
    pub fn watch_query_with(
        &self,
        filter: Filter,
        sql: &str,
        params: &[SqlValue],
    ) -> Result<LiveQuery> {
        // Subscribe first, so no change can slip in before the first run.
        let events = self.subscribe(filter);
        let current = self.query(sql, params)?;
        Ok(LiveQuery::new(self.clone(), sql, params, events, current))
    }
}

fn describe(target: &IndexTarget) -> QueryIndex {
    QueryIndex {
        name: target.name(),
        collection: target.collection().to_owned(),
        path: target.path().to_string(),
    }
}
