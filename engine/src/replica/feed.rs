//! A collection's change feed: which records changed after a point in the
//! collection's sequence.
//!
//! Every commit and tombstone in a collection takes the next number of that
//! collection's sequence, in the writing transaction (see
//! `store::schema`, version 4), so numbers follow commit order and survive
//! restarts. A record is reported once, at the number of its latest write,
//! with its content after it: a reader that resumes from any number it was
//! given sees every record changed after it, once, in order, with several
//! changes to one record between two reads folded into one entry.

use super::{ChangeKind, Replica};
use crate::error::Result;
use crate::id::{DocId, Heads};
use crate::store::{DeadLetter, WriteOp};

/// One record in a collection's change feed.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedEntry {
    /// The number of the record's latest write in its collection's
    /// sequence: resume after it to see only later changes.
    pub seq: u64,
    /// The record.
    pub id: DocId,
    /// What happened since the number the feed was read from: `Created`
    /// if the record was first stored after it, `Deleted` if it carries a
    /// tombstone now, `Changed` otherwise.
    pub kind: ChangeKind,
    /// Its heads after the change.
    pub heads: Heads,
    /// When this database wrote it (ms since the epoch).
    pub updated_at: i64,
    /// Its content after the change (for a deleted record, its last
    /// content); `None` if its stored data is damaged.
    pub value: Option<serde_json::Value>,
}

impl Replica {
    /// The records of `collection` changed after number `since` of its
    /// sequence (0: from the start), in sequence order, at most `limit`.
    ///
    /// ```
    /// # use accord_engine::{Replica, ChangeKind};
    /// let replica = Replica::open_in_memory()?;
    /// let ada = replica.create("contacts", &serde_json::json!({"name": "Ada"}))?;
    /// let feed = replica.changes_since("contacts", 0, 100)?;
    /// assert_eq!((feed[0].id, feed[0].kind), (ada, ChangeKind::Created));
    /// let cursor = feed[0].seq;
    /// replica.put(&ada, "name", &"Ada Lovelace".into(), None)?;
    /// let later = replica.changes_since("contacts", cursor, 100)?;
    /// assert_eq!(later[0].kind, ChangeKind::Changed);
    /// assert_eq!(later[0].value.as_ref().unwrap()["name"], "Ada Lovelace");
    /// # Ok::<(), accord_engine::Error>(())
    /// ```
    pub fn changes_since(
        &self,
        collection: &str,
        since: u64,
        limit: usize,
    ) -> Result<Vec<FeedEntry>> {
        let rows = self.read_store(|s| s.changed_since(collection, since, limit))?;
        Ok(rows
            .into_iter()
            .map(|row| FeedEntry {
                seq: row.seq,
                id: row.id,
                kind: if row.deleted {
                    ChangeKind::Deleted
                } else if row.created_seq > since {
                    ChangeKind::Created
                } else {
                    ChangeKind::Changed
                },
                heads: row.heads,
                updated_at: row.updated_at,
                value: row.json.and_then(|text| serde_json::from_str(&text).ok()),
            })
            .collect())
    }

    /// The last number `collection`'s sequence gave out (0 if it has none).
    pub fn collection_seq(&self, collection: &str) -> Result<u64> {
        Ok(self.read_store(|s| s.collection_seq(collection))?)
    }

    /// Where the named consumer `consumer` (a relay's webhook) stands in
    /// `collection`'s feed: the last number it dealt with (0: none).
    pub fn feed_cursor(&self, consumer: &str, collection: &str) -> Result<u64> {
        Ok(self.read_store(|s| s.feed_cursor(consumer, collection))?)
    }

    /// Durably moves `consumer`'s cursor in `collection`'s feed.
    pub fn set_feed_cursor(&self, consumer: &str, collection: &str, cursor: u64) -> Result<()> {
        let op = WriteOp::FeedCursor {
            consumer: consumer.to_owned(),
            collection: collection.to_owned(),
            cursor,
        };
        Ok(self.inner.committer.submit(vec![op])?)
    }

    /// Keeps a batch its consumer gave up on and moves the consumer past
    /// it, in one commit: the batch is never lost and never holds up what
    /// comes after it.
    pub fn give_up(&self, letter: DeadLetter) -> Result<()> {
        let op = WriteOp::FeedCursor {
            consumer: letter.consumer.clone(),
            collection: letter.collection.clone(),
            cursor: letter.last_seq,
        };
        Ok(self
            .inner
            .committer
            .submit(vec![WriteOp::DeadLetter(letter), op])?)
    }

    /// The dead letters of `consumer` (of every consumer with `None`),
    /// oldest first.
    pub fn dead_letters(&self, consumer: Option<&str>) -> Result<Vec<DeadLetter>> {
        Ok(self.read_store(|s| s.dead_letters(consumer, None))?)
    }

    /// The dead letter `id`, if it exists.
    pub fn dead_letter(&self, id: i64) -> Result<Option<DeadLetter>> {
        Ok(self.read_store(|s| s.dead_letters(None, Some(id)))?.pop())
    }

    /// Forgets dead letter `id` (delivered on replay, or dropped).
    pub fn drop_dead_letter(&self, id: i64) -> Result<()> {
        Ok(self
            .inner
            .committer
            .submit(vec![WriteOp::DropDeadLetter { id }])?)
    }
}
