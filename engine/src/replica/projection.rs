//! Keeping the projection whole: the backfill on open, `reindex`, and the
//! check that every row matches its document.
//!
//! Ordinary writes keep their rows right by themselves (the JSON goes into
//! the same savepoint as the chunk). What is left is a file where rows are
//! missing: one migrated from schema version 1, or written by a replica
//! that keeps no projection. Such a file carries the meta flag
//! `projection_stale`; opening it with the projection on computes the
//! missing and stale rows from the stored documents, in batches of
//! [`BATCH`] per transaction, each row written only if its document still
//! has the heads it was computed at, and clears the flag once nothing is
//! stale. Documents are read from the store, not through the cache, so a
//! backfill of many records does not evict the working set; concurrent
//! writers are safe because every row is conditional on its heads.

use std::fmt;

use super::cache::DocState;
use super::query::project_content;
use super::{ListOptions, Replica};
use crate::error::Result;
use crate::id::DocId;
use crate::store::{DocMeta, Projected, ProjectionRow, Store, WriteOp};

/// Rows written per transaction by a backfill or a rebuild.
const BATCH: usize = 256;

/// What [`Replica::reindex`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReindexReport {
    /// Records (deleted ones included) whose row was rebuilt.
    pub records: usize,
    /// How many of those rows were missing or wrong before.
    pub repaired: usize,
    /// Rows of documents that do not exist, removed.
    pub removed: usize,
    /// Records that do not load (damaged), with the error; their rows hold
    /// `NULL` as content.
    pub unreadable: Vec<(DocId, String)>,
}

/// One way a projection row disagrees with its document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProjectionProblem {
    /// The record has no row.
    Missing,
    /// A column copied from the record's metadata differs (named).
    Metadata(&'static str),
    /// The JSON is not the record's content.
    Content,
    /// A row whose record does not exist.
    Orphan,
}

impl fmt::Display for ProjectionProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProjectionProblem::Missing => f.write_str("no projection row"),
            ProjectionProblem::Metadata(column) => {
                write!(f, "projection column '{column}' differs from the record")
            }
            ProjectionProblem::Content => {
                f.write_str("projection json differs from the record's content")
            }
            ProjectionProblem::Orphan => {
                f.write_str("projection row of a record that does not exist")
            }
        }
    }
}

/// A record whose projection row is wrong, found by
/// [`Replica::check_projection`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionIssue {
    /// The record.
    pub id: DocId,
    /// Its collection.
    pub collection: String,
    /// What is wrong.
    pub problem: ProjectionProblem,
}

impl Replica {
    /// On open: fills in missing and stale rows if the file is flagged.
    pub(super) fn backfill_projection(&self) -> Result<()> {
        if !self.inner.options.projection || !self.read_store(Store::projection_pending)? {
            return Ok(());
        }
        let stale = self.read_store(Store::stale_projections)?;
        tracing::info!(records = stale.len(), "filling in the query projection");
        let (_, unreadable) = self.project(&stale)?;
        for (id, error) in &unreadable {
            tracing::warn!(doc = %id, %error, "record does not load; its projection holds NULL");
        }
        self.inner
            .committer
            .submit(vec![WriteOp::SettleProjection])?;
        Ok(())
    }

    /// Rebuilds every projection row from the stored documents, removes
    /// rows of documents that do not exist, and clears the stale flag.
    /// Content and history are not touched.
    pub fn reindex(&self) -> Result<ReindexReport> {
        let ids: Vec<DocId> = self
            .list_with(&ListOptions::everything())?
            .into_iter()
            .map(|m| m.id)
            .collect();
        let removed = self.read_store(Store::orphan_projections)?.len();
        let (repaired, unreadable) = self.project(&ids)?;
        self.inner
            .committer
            .submit(vec![WriteOp::PruneProjection, WriteOp::SettleProjection])?;
        Ok(ReindexReport {
            records: ids.len(),
            repaired,
            removed,
            unreadable,
        })
    }

    /// Compares every record's projection row with the record: metadata
    /// columns with its `docs` row, `json` with its content. Records that
    /// do not load are left to the caller (they are damaged, not the
    /// projection); rows without a record are reported too.
    pub fn check_projection(&self) -> Result<Vec<ProjectionIssue>> {
        let metas = self.list_with(&ListOptions::everything())?;
        let mut issues = Vec::new();
        for meta in metas {
            let (stored, row) = self.read_store(|s| s.load_with_projection(&meta.id))?;
            let Some(stored) = stored else { continue };
            let meta = stored.meta.clone();
            let Ok(state) = DocState::load(stored, &self.inner.actor) else {
                continue;
            };
            if let Some(problem) = compare(&meta, &project_content(&state.doc), row.as_ref()) {
                issues.push(ProjectionIssue {
                    id: meta.id,
                    collection: meta.collection.to_string(),
                    problem,
                });
            }
        }
        for row in self.read_store(Store::orphan_projections)? {
            issues.push(ProjectionIssue {
                id: row.doc,
                collection: row.collection,
                problem: ProjectionProblem::Orphan,
            });
        }
        Ok(issues)
    }

    /// Writes the rows of `ids` from the stored documents, in batches.
    /// Returns how many rows were wrong before, and the documents that did
    /// not load.
    fn project(&self, ids: &[DocId]) -> Result<(usize, Vec<(DocId, String)>)> {
        let (mut repaired, mut unreadable) = (0, Vec::new());
        for batch in ids.chunks(BATCH) {
            let mut ops = Vec::with_capacity(batch.len());
            for id in batch {
                let (stored, row) = self.read_store(|s| s.load_with_projection(id))?;
                let Some(stored) = stored else {
                    continue; // `docs` rows are never removed; nothing to project
                };
                let meta = stored.meta.clone();
                let content = match DocState::load(stored, &self.inner.actor) {
                    Ok(state) => Some(project_content(&state.doc)),
                    Err(e) => {
                        unreadable.push((*id, e.to_string()));
                        None
                    }
                };
                let wrong = match &content {
                    Some(content) => compare(&meta, content, row.as_ref()).is_some(),
                    None => row.is_none_or(|r| r.json.is_some() || r.heads != meta.heads),
                };
                repaired += usize::from(wrong);
                ops.push(WriteOp::Project {
                    doc: *id,
                    heads: meta.heads,
                    content,
                });
            }
            self.inner.committer.submit(ops)?;
        }
        Ok((repaired, unreadable))
    }
}

/// What is wrong with `row` as the projection of the document described
/// by `meta` whose content is `content`, if anything.
fn compare(
    meta: &DocMeta,
    content: &Projected,
    row: Option<&ProjectionRow>,
) -> Option<ProjectionProblem> {
    let Some(row) = row else {
        return Some(ProjectionProblem::Missing);
    };
    let columns = [
        ("id", row.id == meta.id.to_string()),
        ("collection", meta.collection == row.collection),
        ("deleted", row.deleted == meta.deleted),
        ("created_at", row.created_at == meta.created_at),
        ("updated_at", row.updated_at == meta.updated_at),
        ("heads", row.heads == meta.heads),
        ("conflicts", row.conflicts == content.conflicts),
    ];
    if let Some((column, _)) = columns.iter().find(|(_, same)| !same) {
        return Some(ProjectionProblem::Metadata(column));
    }
    let parse = |text: &str| serde_json::from_str::<serde_json::Value>(text).ok();
    let stored = row.json.as_deref().and_then(parse);
    (stored.is_none() || stored != parse(&content.json)).then_some(ProjectionProblem::Content)
}
