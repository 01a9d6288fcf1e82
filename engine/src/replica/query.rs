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

use automerge::Automerge;

use super::live::LiveQuery;
use super::{Filter, Replica};
use crate::error::Result;
use crate::json;
use crate::store::{IndexTarget, QueryIndex, QueryRows, SqlValue, Store, WriteOp};

/// A document's content as the JSON text the projection stores: the
/// mapping `get` uses (`docs/storage-format.md`, section 8).
pub(crate) fn content_json(doc: &Automerge) -> String {
    json::to_json(&doc.hydrate(None)).to_string()
}

impl Replica {
    /// The JSON text to store with a write of `doc`, or `None` when this
    /// replica keeps no projection.
    pub(super) fn projection_of(&self, doc: &Automerge) -> Option<String> {
        self.inner.options.projection.then(|| content_json(doc))
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
    pub fn query(&self, sql: &str, params: &[SqlValue]) -> Result<QueryRows> {
        let Some(path) = &self.inner.path else {
            // In memory: no second connection can see the database, so the
            // query runs on the writer, switched to read-only for its length.
            let rows = self
                .inner
                .committer
                .with_store_mut(|s| s.query_guarded(sql, params))?;
            return Ok(rows);
        };
        let mut slot = self.inner.queries.lock();
        let conn = match slot.as_mut() {
            Some(conn) => conn,
            None => slot.insert(Store::open_query(path)?),
        };
        Ok(conn.run(sql, params)?)
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
