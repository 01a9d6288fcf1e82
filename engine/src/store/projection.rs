//! The query projection: each document's current content as JSON, in the
//! table `projection`, which apps read through the view `records`.
//!
//! The store cannot decode Automerge, so the JSON always comes from the
//! replica, inside the same write group (and so the same savepoint) as the
//! chunk or tombstone it describes. Every other column is copied from the
//! `docs` row by the same statement, so a projection row agrees with its
//! document after every commit. Rows are written three ways:
//!
//! - with every append and tombstone ([`write()`]);
//! - by a backfill or rebuild ([`write_if_current`]), which writes only if
//!   the document still has the heads the JSON was computed at, so it can
//!   never overwrite a newer row;
//! - not at all, by a replica that keeps no projection: its writes remove
//!   the row and set the meta key `projection_stale`, and the next replica
//!   that keeps one fills the missing rows in ([`Store::stale_projections`], [`settle`]).
//!
//! `docs/storage-format.md` section 10 specifies the table.

use rusqlite::{params, Connection, OptionalExtension};

use super::Store;
use crate::error::StoreError;
use crate::id::{DocId, Heads};

/// The meta key that says some projection rows may be missing or stale.
pub const STALE_KEY: &str = "projection_stale";

/// What the projection stores of a document's content (computed by the
/// replica, which alone decodes Automerge).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Projected {
    /// The content as JSON text.
    pub json: String,
    /// How many fields hold concurrent values (the view's `conflicts`).
    pub conflicts: i64,
}

/// Copies the `docs` row into the projection with the given JSON. The
/// optional last condition (`?4`) limits it to a document whose heads are
/// still the ones the JSON was computed at.
const UPSERT: &str =
    "INSERT INTO projection (doc, id, collection, deleted, created_at, updated_at, heads, json, conflicts)
     SELECT id, ?2, collection, deleted, created_at, updated_at, heads, ?3, ?5 FROM docs
     WHERE id = ?1 AND (?4 IS NULL OR heads = ?4)
     ON CONFLICT (doc) DO UPDATE SET deleted = excluded.deleted, updated_at = excluded.updated_at,
       heads = excluded.heads, json = excluded.json, conflicts = excluded.conflicts";

/// The common case of [`write()`]: the row exists and takes the new content
/// and the `docs` columns that can change.
const UPDATE: &str = "UPDATE projection SET (deleted, updated_at, heads, json, conflicts) =
       (SELECT deleted, updated_at, heads, ?2, ?3 FROM docs WHERE id = ?1)
     WHERE doc = ?1";

/// Documents whose projection row is missing or does not match `docs`.
const STALE: &str = "SELECT d.id FROM docs d LEFT JOIN projection p ON p.doc = d.id
     WHERE p.doc IS NULL OR p.heads != d.heads OR p.deleted != d.deleted
        OR p.updated_at != d.updated_at OR p.collection != d.collection";

/// One row of the projection, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionRow {
    /// The document.
    pub doc: DocId,
    /// The printed id (the view's `id`).
    pub id: String,
    /// Its collection.
    pub collection: String,
    /// Whether it carries a tombstone.
    pub deleted: bool,
    /// Copied from `docs.created_at`.
    pub created_at: i64,
    /// Copied from `docs.updated_at`.
    pub updated_at: i64,
    /// The heads the JSON was computed at.
    pub heads: Heads,
    /// The content, or `None` for a document that could not be read.
    pub json: Option<String>,
    /// How many fields hold concurrent values.
    pub conflicts: i64,
}

/// Brings a document's projection row up to date after a write to its
/// `docs` row in the same savepoint. `None` means the writer keeps no
/// projection: the row goes, and the projection is flagged for a backfill.
pub(super) fn write(
    conn: &Connection,
    doc: &DocId,
    content: Option<&Projected>,
) -> Result<(), StoreError> {
    let Some(content) = content else {
        return forget(conn, doc);
    };
    // Updating first spares printing the id (bs58check) on every write.
    let id = doc.as_bytes().as_slice();
    let updated =
        conn.prepare_cached(UPDATE)?
            .execute(params![id, content.json, content.conflicts])?;
    if updated > 0 {
        return Ok(());
    }
    conn.prepare_cached(UPSERT)?.execute(params![
        doc.as_bytes().as_slice(),
        doc.to_string(),
        content.json,
        Option::<Vec<u8>>::None,
        content.conflicts
    ])?;
    Ok(())
}

/// Writes a row computed from a document at `heads`, only if those are
/// still its stored heads (otherwise whoever moved them wrote the row).
pub(super) fn write_if_current(
    conn: &Connection,
    doc: &DocId,
    heads: &Heads,
    content: Option<&Projected>,
) -> Result<(), StoreError> {
    conn.prepare_cached(UPSERT)?.execute(params![
        doc.as_bytes().as_slice(),
        doc.to_string(),
        content.map(|c| c.json.as_str()),
        heads.to_bytes(),
        content.map_or(0, |c| c.conflicts)
    ])?;
    Ok(())
}

/// Removes a row and flags the projection as needing a backfill.
fn forget(conn: &Connection, doc: &DocId) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM projection WHERE doc = ?1")?
        .execute([doc.as_bytes().as_slice()])?;
    conn.prepare_cached("INSERT OR IGNORE INTO meta (key, value) VALUES (?1, '1')")?
        .execute([STALE_KEY])?;
    Ok(())
}

/// Clears the stale flag if no row is missing or stale any more (a writer
/// without a projection may have flagged new work meanwhile).
pub(super) fn settle(conn: &Connection) -> Result<(), StoreError> {
    let sql = format!("DELETE FROM meta WHERE key = ?1 AND NOT EXISTS ({STALE})");
    conn.prepare_cached(&sql)?.execute([STALE_KEY])?;
    Ok(())
}

/// Deletes rows whose document has no `docs` row.
pub(super) fn prune(conn: &Connection) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM projection WHERE doc NOT IN (SELECT id FROM docs)")?
        .execute([])?;
    Ok(())
}

impl Store {
    /// Whether the projection is flagged as possibly incomplete (after a
    /// migration from version 1, or writes by a replica without one).
    pub fn projection_pending(&self) -> Result<bool, StoreError> {
        let found = self
            .conn
            .prepare_cached("SELECT 1 FROM meta WHERE key = ?1")?
            .query_row([STALE_KEY], |_| Ok(()))
            .optional()?;
        Ok(found.is_some())
    }

    /// Documents whose projection row is missing or disagrees with `docs`.
    pub fn stale_projections(&self) -> Result<Vec<DocId>, StoreError> {
        let mut stmt = self.conn.prepare_cached(STALE)?;
        let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        rows.map(|bytes| {
            let bytes = bytes?;
            DocId::from_slice(&bytes)
                .ok_or_else(|| StoreError::BadRow(format!("document id of {} bytes", bytes.len())))
        })
        .collect()
    }

    /// One document's projection row, if it has one.
    pub fn projection_row(&self, doc: &DocId) -> Result<Option<ProjectionRow>, StoreError> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT doc, id, collection, deleted, created_at, updated_at, heads, json, conflicts
                 FROM projection WHERE doc = ?1",
            )?
            .query_row([doc.as_bytes().as_slice()], |r| Ok(read_row(r)))
            .optional()?;
        row.transpose()
    }

    /// A document's chunks and its projection row, read in one transaction
    /// so that they describe the same moment (for checks).
    pub fn load_with_projection(
        &self,
        doc: &DocId,
    ) -> Result<(Option<super::StoredDoc>, Option<ProjectionRow>), StoreError> {
        let tx = self.conn.unchecked_transaction()?;
        let stored = self.load(doc)?;
        let row = self.projection_row(doc)?;
        tx.finish()?;
        Ok((stored, row))
    }

    /// Rows whose document has no `docs` row (none, unless the file was
    /// edited by hand).
    pub fn orphan_projections(&self) -> Result<Vec<ProjectionRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT doc, id, collection, deleted, created_at, updated_at, heads, json, conflicts
             FROM projection WHERE doc NOT IN (SELECT id FROM docs) ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| Ok(read_row(r)))?;
        rows.map(|r| r.map_err(StoreError::from).and_then(|row| row))
            .collect()
    }
}

fn read_row(r: &rusqlite::Row<'_>) -> Result<ProjectionRow, StoreError> {
    let doc: Vec<u8> = r.get(0)?;
    let doc = DocId::from_slice(&doc)
        .ok_or_else(|| StoreError::BadRow(format!("projection of a {}-byte id", doc.len())))?;
    let heads: Vec<u8> = r.get(6)?;
    Ok(ProjectionRow {
        doc,
        id: r.get(1)?,
        collection: r.get(2)?,
        deleted: r.get::<_, i64>(3)? != 0,
        created_at: r.get(4)?,
        updated_at: r.get(5)?,
        heads: Heads::from_bytes(&heads)
            .ok_or_else(|| StoreError::BadRow(format!("projection heads of {doc}")))?,
        json: r.get(7)?,
        conflicts: r.get(8)?,
    })
}
