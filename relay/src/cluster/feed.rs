//! The change feed and webhooks on the PostgreSQL store: the records
//! changed after a cursor (the `docs` rows by collection sequence, what a
//! single relay reads from its SQLite file), webhook cursors and dead
//! letters (`feed_cursors`, `feed_dead_letters`), the wake-ups of waiting
//! readers, and the lease that lets one node at a time deliver a webhook.
//!
//! Every node reads the same rows, so every node serves the same events
//! under the same cursors. A webhook is delivered by the node holding its
//! lease: a session-level advisory lock, held on a connection of its own
//! (taken out of the pool), so it ends when that node dies or loses
//! PostgreSQL, and another node's next try takes it over from the stored
//! cursor.

use std::time::Instant;

use accord_engine::{ChangeKind, Collection, DeadLetter, FeedEntry, Result};

use super::store::{backend, exec, q, q_opt, summary, to_i64, PgStore};

/// Collection changes a waiting reader may fall behind by before it is
/// told it lagged (and reads again).
pub(super) const FEED_WAKES: usize = 256;

/// Moves a consumer's cursor forward, never back (a node that lost a
/// webhook's lease unawares cannot undo its successor's progress).
const MOVE_CURSOR: &str =
    "INSERT INTO feed_cursors (consumer, collection, cursor) VALUES ($1, $2, $3)
     ON CONFLICT (consumer, collection)
     DO UPDATE SET cursor = GREATEST(feed_cursors.cursor, EXCLUDED.cursor)";

/// A sequence number as PostgreSQL stores it.
fn seq_param(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// A stored sequence number.
fn seq_of(row: &tokio_postgres::Row, column: &str) -> u64 {
    row.get::<_, i64>(column).max(0) as u64
}

/// One webhook's lease (see the module documentation) on a connection of
/// its own: taken or not yet. Dropping it closes the connection, which
/// gives the lease up.
pub struct Lease {
    /// The session the lock is (to be) held by, out of the pool.
    client: deadpool_postgres::ClientWrapper,
    /// The webhook.
    name: String,
    /// Whether the lock was taken.
    taken: bool,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("name", &self.name)
            .field("held", &self.held())
            .finish()
    }
}

impl Lease {
    /// Tries to take the lock, unless taken already: whether it is held
    /// now (`false` while another node holds it).
    pub async fn try_take(&mut self) -> Result<bool> {
        if !self.taken {
            // The two-key form: a key space of its own, apart from the
            // documents' one-key locks.
            self.taken = self
                .client
                .query_one(
                    "SELECT pg_try_advisory_lock(hashtext(current_schema()), hashtext($1))",
                    &[&format!("webhook:{}", self.name)],
                )
                .await
                .map_err(backend)?
                .get(0);
        }
        Ok(self.held())
    }

    /// Whether the lock is held: taken, and its session still open
    /// (PostgreSQL drops the lock with the session).
    pub fn held(&self) -> bool {
        self.taken && self.usable()
    }

    /// Whether its connection is still open, to try again on.
    pub fn usable(&self) -> bool {
        !self.client.is_closed()
    }
}

impl PgStore {
    /// Runs `work` on a pooled connection, timing the round trip.
    async fn timed<T>(
        &self,
        work: impl AsyncFnOnce(deadpool_postgres::Object) -> Result<T>,
    ) -> Result<T> {
        let started = Instant::now();
        let out = async {
            let client = self.pool.get().await.map_err(backend)?;
            work(client).await
        }
        .await;
        (self.latency)(started.elapsed());
        out
    }

    /// Hears of every collection that changes from now on (see
    /// [`PgStore::note_changed`]); a receiver that falls behind is told it
    /// lagged, and should read again.
    pub fn subscribe_changes(&self) -> tokio::sync::broadcast::Receiver<Collection> {
        self.feed_wakes.subscribe()
    }

    /// `collection` changed in the store (a commit of this node, or one
    /// another node made that this one learned of): wakes the change
    /// feed's readers. Never waits.
    pub fn note_changed(&self, collection: &Collection) {
        if self.feed_wakes.receiver_count() > 0 {
            let _ = self.feed_wakes.send(collection.clone());
        }
    }

    /// The change feed of `collection`: its records whose latest write is
    /// numbered after `since` in its sequence, in number order, at most
    /// `limit`. Numbers become visible in order (taking one locks the
    /// sequence's row until commit), so a reader resuming after the last
    /// number it saw never skips a record.
    pub async fn changes_since(
        &self,
        collection: &str,
        since: u64,
        limit: usize,
    ) -> Result<Vec<FeedEntry>> {
        let rows = self
            .timed(async |client| {
                q(
                    &client,
                    "SELECT id, heads, deleted, seq, created_seq, updated_at, json FROM docs
                       WHERE collection = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                    &[&collection, &seq_param(since), &to_i64(limit)],
                )
                .await
            })
            .await?;
        rows.iter()
            .map(|row| {
                let summary = summary(row)?;
                Ok(FeedEntry {
                    seq: seq_of(row, "seq"),
                    id: summary.doc,
                    kind: if summary.deleted {
                        ChangeKind::Deleted
                    } else if seq_of(row, "created_seq") > since {
                        ChangeKind::Created
                    } else {
                        ChangeKind::Changed
                    },
                    heads: summary.heads,
                    updated_at: row.get("updated_at"),
                    value: row.get("json"),
                })
            })
            .collect()
    }

    /// The last number `collection`'s sequence gave out (0: none).
    pub async fn last_seq(&self, collection: &str) -> Result<u64> {
        let row = self
            .timed(async |client| {
                q_opt(
                    &client,
                    "SELECT seq FROM collection_seqs WHERE collection = $1",
                    &[&collection],
                )
                .await
            })
            .await?;
        Ok(row.map_or(0, |row| seq_of(&row, "seq")))
    }

    /// Where `consumer` (a webhook) stands in `collection`'s feed.
    pub async fn feed_cursor(&self, consumer: &str, collection: &str) -> Result<u64> {
        let row = self
            .timed(async |client| {
                q_opt(
                    &client,
                    "SELECT cursor FROM feed_cursors WHERE consumer = $1 AND collection = $2",
                    &[&consumer, &collection],
                )
                .await
            })
            .await?;
        Ok(row.map_or(0, |row| seq_of(&row, "cursor")))
    }

    /// Moves `consumer`'s cursor in `collection`'s feed forward to
    /// `cursor` (never back: a node that lost its lease unawares cannot
    /// undo its successor's progress).
    pub async fn set_feed_cursor(
        &self,
        consumer: &str,
        collection: &str,
        cursor: u64,
    ) -> Result<()> {
        self.timed(async |client| {
            exec(
                &client,
                MOVE_CURSOR,
                &[&consumer, &collection, &seq_param(cursor)],
            )
            .await
        })
        .await?;
        Ok(())
    }

    /// Keeps a batch its consumer gave up on and moves the consumer past
    /// it, in one transaction.
    pub async fn give_up(&self, letter: &DeadLetter) -> Result<()> {
        self.timed(async |mut client| {
            let tx = client.transaction().await.map_err(backend)?;
            exec(
                &tx,
                "INSERT INTO feed_dead_letters
                   (consumer, collection, first_seq, last_seq, body, attempts, error, failed_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &letter.consumer,
                    &letter.collection,
                    &seq_param(letter.first_seq),
                    &seq_param(letter.last_seq),
                    &letter.body,
                    &i32::try_from(letter.attempts).unwrap_or(i32::MAX),
                    &letter.error,
                    &accord_engine::store::now_ms(),
                ],
            )
            .await?;
            exec(
                &tx,
                MOVE_CURSOR,
                &[
                    &letter.consumer,
                    &letter.collection,
                    &seq_param(letter.last_seq),
                ],
            )
            .await?;
            tx.commit().await.map_err(backend)
        })
        .await
    }

    /// The dead letters of `consumer` (every consumer's with `None`), or
    /// only letter `id`, oldest first.
    pub async fn dead_letters(
        &self,
        consumer: Option<&str>,
        id: Option<i64>,
    ) -> Result<Vec<DeadLetter>> {
        let rows = self
            .timed(async |client| {
                q(
                    &client,
                    "SELECT id, consumer, collection, first_seq, last_seq, body, attempts, error,
                            failed_at
                       FROM feed_dead_letters
                       WHERE ($1::text IS NULL OR consumer = $1) AND ($2::bigint IS NULL OR id = $2)
                       ORDER BY id",
                    &[&consumer, &id],
                )
                .await
            })
            .await?;
        Ok(rows
            .iter()
            .map(|row| DeadLetter {
                id: row.get("id"),
                consumer: row.get("consumer"),
                collection: row.get("collection"),
                first_seq: seq_of(row, "first_seq"),
                last_seq: seq_of(row, "last_seq"),
                body: row.get("body"),
                attempts: row.get::<_, i32>("attempts").max(0) as u32,
                error: row.get("error"),
                failed_at: row.get("failed_at"),
            })
            .collect())
    }

    /// Forgets dead letter `id`.
    pub async fn drop_dead_letter(&self, id: i64) -> Result<()> {
        self.timed(async |client| {
            exec(
                &client,
                "DELETE FROM feed_dead_letters WHERE id = $1",
                &[&id],
            )
            .await
        })
        .await?;
        Ok(())
    }

    /// A connection of its own (out of the pool, so no other use of the
    /// pool inherits the lock) on which to take webhook `name`'s lease.
    pub async fn lease(&self, name: &str) -> Result<Lease> {
        let object = self.pool.get().await.map_err(backend)?;
        Ok(Lease {
            client: deadpool_postgres::Object::take(object),
            name: name.to_owned(),
            taken: false,
        })
    }
}
