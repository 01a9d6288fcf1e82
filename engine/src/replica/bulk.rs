//! Many new records in one SQLite transaction: [`Replica::create_many`].
//!
//! Creating records one by one commits (and, with `Durability::Full`,
//! syncs the file) once per record; an import of thousands of rows wants
//! one commit per batch. The records are built in memory first, so content
//! that cannot be a record (a JSON value that is not an object) fails the
//! call before anything is written.

use automerge::transaction::Transactable;
use automerge::Automerge;

use super::{ChangeKind, Origin, Replica};
use crate::error::{Error, Result};
use crate::id::{Collection, DocId, Heads};
use crate::json::Path as JsonPath;
use crate::store::{ChunkKind, WriteOp};

impl Replica {
    /// Creates one record in `collection` per JSON object in `contents`,
    /// all committed in one SQLite transaction, and returns their ids in
    /// the order of `contents`. Either every record is committed or none
    /// is: a content that cannot be a record (not a JSON object) fails the
    /// call with [`Error::Aborted`] naming its position, and a failed
    /// commit leaves nothing behind. Subscribers hear one `Created` event
    /// per record once the transaction committed. The new documents are
    /// not kept in the document cache (a bulk import would only push the
    /// working set out); they load on first use.
    ///
    /// ```
    /// use accord_engine::Replica;
    /// use serde_json::json;
    /// let replica = Replica::open_in_memory()?;
    /// let rows = [json!({"name": "Ada"}), json!({"name": "Grace"})];
    /// let ids = replica.create_many("contacts", &rows)?;
    /// assert_eq!(replica.get(&ids[1])?.value, json!({"name": "Grace"}));
    ///
    /// // One bad row and nothing is written.
    /// let err = replica.create_many("contacts", &[json!({"ok": 1}), json!(42)]);
    /// assert!(err.unwrap_err().to_string().contains("record 2 of 2"));
    /// assert_eq!(replica.list("contacts")?.len(), 2);
    /// # Ok::<(), accord_engine::Error>(())
    /// ```
    pub fn create_many(
        &self,
        collection: &str,
        contents: &[serde_json::Value],
    ) -> Result<Vec<DocId>> {
        let collection: Collection = collection.parse()?;
        let mut ops = Vec::with_capacity(contents.len());
        let mut created = Vec::with_capacity(contents.len());
        for (i, content) in contents.iter().enumerate() {
            let id = self.new_id();
            let doc = self.first_change(id, content).map_err(|e| match e {
                Error::Aborted { doc, source } => Error::Aborted {
                    doc,
                    source: format!("record {} of {}: {source}", i + 1, contents.len()).into(),
                },
                other => other,
            })?;
            let heads = Heads::new(doc.get_heads());
            ops.push(WriteOp::Append {
                doc: id,
                collection: collection.clone(),
                kind: ChunkKind::Snapshot,
                data: doc.save(),
                heads: heads.clone(),
                new_changes: 1,
                base: Heads::empty(),
                content: self.projection_of(&doc),
            });
            created.push((id, heads));
        }
        self.inner.committer.submit(ops)?;
        for (id, heads) in &created {
            self.emit(
                *id,
                &collection,
                ChangeKind::Created,
                Origin::Local,
                heads.clone(),
            );
        }
        Ok(created.into_iter().map(|(id, _)| id).collect())
    }

    /// A new document whose one change sets its content, as `create` makes it.
    fn first_change(&self, id: DocId, content: &serde_json::Value) -> Result<Automerge> {
        let mut doc = Automerge::new().with_actor(self.inner.actor.clone());
        let mut tx = doc.transaction();
        if let Err(e) = JsonPath::root().set(&mut tx, content) {
            return Err(Error::Aborted {
                doc: id,
                source: e.into(),
            });
        }
        if tx.pending_ops() == 0 {
            tx.rollback();
            doc.empty_commit(self.commit_options(None));
        } else {
            tx.commit_with(self.commit_options(None));
        }
        Ok(doc)
    }
}
