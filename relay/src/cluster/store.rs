//! [`PgStore`]: the relay's storage seam ([`SyncDocs`]) on PostgreSQL, the
//! shared store and source of truth of a cluster.
//!
//! A document is a `docs` row plus its changes, one row each, numbered
//! per document (`changes.no`) and unique by hash, and at most one
//! snapshot standing for the changes it replaced. Every append and
//! tombstone first takes the document's lock (a transaction-scoped
//! advisory lock keyed by its id), reads the changes other nodes appended since this node last
//! looked, applies the peer's message to that up-to-date document, and
//! inserts only the changes that are new, in the same transaction as the
//! `docs` row, the projection and the collection's next sequence number.
//! Two nodes appending to one document at the same instant therefore
//! serialise on that lock: both appends survive, heads are exact, and a
//! change is never stored twice. Compaction (a snapshot replacing the
//! change rows it covers) runs under the same lock, so it cannot lose a
//! concurrent append. A change is acknowledged (the answer generated)
//! only after PostgreSQL committed it.
//!
//! Loaded documents are kept in a bounded in-memory cache. Another node's
//! commit marks a cached document stale ([`PgStore::mark_changed`], from
//! the bus or catch-up); a stale or uncached document is brought up to
//! date from PostgreSQL before it answers a peer. Bus messages that carry
//! the change bytes are applied directly when they complete the cached
//! copy ([`PgStore::apply_committed`]).
//!
//! The seam is synchronous (the sync core is sans-IO): its methods run on
//! the blocking pool and wait there for `tokio-postgres` futures on the
//! relay's runtime.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use accord_engine::automerge::sync::{Message, State, SyncDoc};
use accord_engine::automerge::{Automerge, Change};
use accord_engine::error::StoreError;
use accord_engine::guard::Budget;
use accord_engine::replica::parts;
use accord_engine::sync::{
    DocSummary, EncodedState, LocalState, NumberedSummary, Received, SyncCursor, SyncDocs,
};
use accord_engine::{Collection, DocId, Error, Heads, PeerId, Result};
use deadpool_postgres::{GenericClient, Pool};
use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::Committed;

/// What a document may hold and how answers are cut, as for the SQLite
/// relay's replica.
#[derive(Debug, Clone)]
pub struct StoreLimits {
    /// Largest stored size of one document.
    pub max_document_bytes: u64,
    /// Most bytes of changes in one sync message.
    pub max_sync_message_bytes: usize,
    /// Most ops of changes in one sync message.
    pub max_sync_message_ops: usize,
    /// What one received message may expand to.
    pub message_budget: Budget,
    /// Documents kept loaded in memory.
    pub cache_docs: usize,
    /// Change rows after which a document is compacted into a snapshot.
    pub compact_after: i64,
}

/// Change bytes up to this size travel on the bus with their commit.
pub const BUS_CHANGE_BYTES: usize = 8 * 1024;

/// A document as loaded from PostgreSQL.
#[derive(Debug)]
struct Loaded {
    collection: Collection,
    doc: Automerge,
    /// The highest change number applied to `doc`.
    upto: i64,
    /// The change number its stored snapshot stands for (0: none).
    snapshot_upto: i64,
    /// Its stored size.
    bytes: u64,
    deleted: bool,
}

/// A cache slot. `stale` lives outside the lock: the node task marks
/// documents from an async worker, which must never wait for a slot held
/// by a blocking thread that waits for PostgreSQL (whose replies that
/// worker may be the one to read).
#[derive(Debug, Default)]
struct Slot {
    /// Another node committed to the document since it was loaded.
    stale: AtomicBool,
    loaded: Mutex<Option<Loaded>>,
}

type Entry = Arc<Slot>;

/// The PostgreSQL store (see the module documentation).
pub struct PgStore {
    pub(super) pool: Pool,
    runtime: Handle,
    limits: StoreLimits,
    cache: Mutex<lru::LruCache<DocId, Entry>>,
    /// Where commits go to be published on the bus (dropped when full:
    /// the bus carries latency, catch-up from the store carries truth).
    committed: mpsc::Sender<Committed>,
    /// Store round-trip times, for `/metrics`.
    pub(super) latency: Arc<dyn Fn(std::time::Duration) + Send + Sync>,
    /// Sync states saved but not written yet, by (peer, document): written
    /// together every [`STATES_FLUSH`] by [`PgStore::flush_sync_states`]
    /// (a lost state only costs a fuller exchange, never data, so they
    /// stay off each message's path).
    pending_states: Mutex<std::collections::HashMap<(String, DocId), Vec<u8>>>,
    /// Each collection that changed, this node's commits and those it
    /// learned of alike: wakes the change feed's waiting readers.
    pub(super) feed_wakes: tokio::sync::broadcast::Sender<Collection>,
}

/// How often saved sync states are written.
pub const STATES_FLUSH: std::time::Duration = std::time::Duration::from_millis(100);

/// Past this many unwritten sync states, a save writes them at once.
const MAX_PENDING_STATES: usize = 10_000;

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// A PostgreSQL failure as the engine reports storage failures (the peer
/// is told `storage_unavailable` and retries).
pub(super) fn backend(e: impl std::error::Error) -> Error {
    // tokio-postgres says "db error" and keeps PostgreSQL's words in its
    // source: both go in the message.
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        text = format!("{text}: {inner}");
        source = inner.source();
    }
    Error::Store(StoreError::Backend(text))
}

fn corrupt(doc: DocId, reason: impl std::fmt::Display) -> Error {
    Error::Store(StoreError::Corrupt {
        doc,
        reason: reason.to_string(),
    })
}

fn heads_of(doc: DocId, bytes: &[u8]) -> Result<Heads> {
    Heads::from_bytes(bytes)
        .ok_or_else(|| Error::Store(StoreError::BadRow(format!("bad heads of document {doc}"))))
}

pub(super) fn summary(row: &tokio_postgres::Row) -> Result<DocSummary> {
    let id: Vec<u8> = row.get("id");
    let doc = DocId::from_slice(&id)
        .ok_or_else(|| Error::Store(StoreError::BadRow("a document id is not 16 bytes".into())))?;
    Ok(DocSummary {
        heads: heads_of(doc, row.get("heads"))?,
        doc,
        deleted: row.get("deleted"),
    })
}

pub(super) fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn wrong_collection(doc: DocId, actual: Collection, given: &Collection) -> Error {
    Error::WrongCollection {
        doc,
        actual,
        given: given.clone(),
    }
}

/// Runs `f` catching a panic inside Automerge as a document error.
fn contained<T>(doc: DocId, f: impl FnOnce() -> T) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|_| Error::Automerge {
        doc,
        source: Box::new(accord_engine::automerge::AutomergeError::Fail),
    })
}

impl PgStore {
    /// A store on `pool` (already migrated). `committed` receives every
    /// commit, for the bus; `latency` each round trip's duration.
    pub fn new(
        pool: Pool,
        runtime: Handle,
        limits: StoreLimits,
        committed: mpsc::Sender<Committed>,
        latency: Arc<dyn Fn(std::time::Duration) + Send + Sync>,
    ) -> Self {
        let capacity = NonZeroUsize::new(limits.cache_docs.max(1)).unwrap_or(NonZeroUsize::MIN);
        PgStore {
            pool,
            runtime,
            limits,
            cache: Mutex::new(lru::LruCache::new(capacity)),
            pending_states: Mutex::default(),
            committed,
            latency,
            feed_wakes: tokio::sync::broadcast::channel(super::feed::FEED_WAKES).0,
        }
    }

    /// Runs a future on the relay's runtime from the blocking pool.
    fn wait<T>(&self, work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let started = Instant::now();
        let out = self.runtime.block_on(work);
        (self.latency)(started.elapsed());
        out
    }

    fn entry(&self, doc: &DocId) -> Entry {
        let mut cache = self.cache.lock();
        if let Some(entry) = cache.get(doc) {
            return Arc::clone(entry);
        }
        let entry: Entry = Arc::default();
        cache.put(*doc, Arc::clone(&entry));
        entry
    }

    /// Another node committed to `doc`: the next use reloads what it
    /// added. Never waits.
    pub fn mark_changed(&self, doc: &DocId) {
        let entry = self.cache.lock().peek(doc).cloned();
        if let Some(entry) = entry {
            entry.stale.store(true, Ordering::Release);
        }
    }

    /// Another node's commit with its change bytes: applied to the cached
    /// copy if it is exactly one commit behind and free this instant,
    /// else the copy is marked stale. Never waits for a slot in use.
    pub fn apply_committed(&self, commit: &Committed) {
        let entry = self.cache.lock().peek(&commit.doc).cloned();
        let Some(entry) = entry else { return };
        let Some(mut guard) = entry.loaded.try_lock() else {
            entry.stale.store(true, Ordering::Release);
            return;
        };
        let Some(loaded) = guard.as_mut() else { return };
        let follows = commit.first_no == loaded.upto + 1 && !commit.changes.is_empty();
        if !follows || entry.stale.load(Ordering::Acquire) || commit.deleted {
            entry.stale.store(true, Ordering::Release);
            return;
        }
        let applied = commit
            .changes
            .iter()
            .map(|bytes| Change::from_bytes(bytes.clone()))
            .collect::<std::result::Result<Vec<_>, _>>()
            .ok()
            .and_then(|changes| {
                contained(commit.doc, || loaded.doc.apply_changes(changes))
                    .ok()?
                    .ok()
            });
        let complete = applied.is_some() && Heads::new(loaded.doc.get_heads()) == commit.heads;
        if complete {
            loaded.upto = commit.changes_upto;
            loaded.bytes = commit.bytes;
        } else {
            // Whatever was half-applied is dropped; reloaded on next use.
            *guard = None;
        }
    }

    /// The cached document brought up to date with what PostgreSQL holds
    /// (loading it if needed); `None` if the store does not know it.
    /// `locked`: the caller holds the document's write lock, so the row is
    /// read even for a copy not known to be stale.
    fn current<'a>(
        &self,
        doc: &DocId,
        entry: &Slot,
        slot: &'a mut Option<Loaded>,
        client: &impl GenericClient,
        locked: bool,
    ) -> Result<Option<&'a mut Loaded>> {
        // Cleared before reading: a mark after this point stays for the
        // next use.
        let stale = entry.stale.swap(false, Ordering::AcqRel);
        if slot.is_some() && !stale && !locked {
            return Ok(slot.as_mut());
        }
        let id = doc.as_bytes().as_slice();
        // One round trip: the row, the snapshot if the cached copy (if
        // any) is older than it, and the change rows the copy lacks.
        let cached_upto: i64 = slot.as_ref().map_or(-1, |l| l.upto);
        let row = self.wait(async {
            q_opt(
                client,
                "SELECT d.collection, d.deleted, d.changes, d.snapshot_upto, d.bytes,
                       CASE WHEN $2 < d.snapshot_upto OR $2 < 0 OR $2 > d.changes
                            THEN (SELECT data FROM snapshots s WHERE s.doc = d.id) END AS snapshot,
                       ARRAY(SELECT data FROM changes c
                             WHERE c.doc = d.id
                               AND c.no > CASE WHEN $2 < d.snapshot_upto OR $2 < 0 OR $2 > d.changes
                                               THEN d.snapshot_upto ELSE $2 END
                             ORDER BY c.no) AS rows
                     FROM docs d WHERE d.id = $1",
                &[&id, &cached_upto],
            )
            .await
        })?;
        let Some(row) = row else {
            *slot = None;
            return Ok(None);
        };
        let collection: String = row.get("collection");
        let collection: Collection = collection
            .parse()
            .map_err(|_| Error::Store(StoreError::BadRow(format!("bad collection of {doc}"))))?;
        let (changes, snapshot_upto): (i64, i64) = (row.get("changes"), row.get("snapshot_upto"));
        let bytes = row.get::<_, i64>("bytes").max(0) as u64;
        let deleted: bool = row.get("deleted");
        // Keep the cached copy if nothing was compacted away under it
        // (the same test as the query's).
        let reuse = cached_upto >= snapshot_upto && cached_upto >= 0 && cached_upto <= changes;
        if !reuse {
            let snapshot: Option<&[u8]> = row.get("snapshot");
            let automerge = match snapshot {
                Some(data) => {
                    contained(*doc, || Automerge::load(data))?.map_err(|e| corrupt(*doc, e))?
                }
                None => Automerge::new(),
            };
            *slot = Some(Loaded {
                collection: collection.clone(),
                doc: automerge,
                upto: snapshot_upto,
                snapshot_upto,
                bytes,
                deleted,
            });
        }
        let Some(loaded) = slot.as_mut() else {
            return Ok(None);
        };
        let rows: Vec<Vec<u8>> = row.get("rows");
        if !rows.is_empty() {
            let mut parsed = Vec::with_capacity(rows.len());
            for data in rows {
                parsed.push(Change::from_bytes(data).map_err(|e| corrupt(*doc, e))?);
            }
            let applied = contained(*doc, || loaded.doc.apply_changes(parsed))?;
            if let Err(e) = applied {
                *slot = None;
                return Err(corrupt(*doc, e));
            }
        }
        let Some(loaded) = slot.as_mut() else {
            return Ok(None);
        };
        loaded.upto = changes;
        loaded.snapshot_upto = snapshot_upto;
        loaded.bytes = bytes;
        loaded.deleted = deleted;
        loaded.collection = collection;
        Ok(Some(loaded))
    }

    /// The cached document, loaded or brought up to date only if it is
    /// missing or stale (no pooled connection is taken otherwise).
    fn loaded<'a>(
        &self,
        doc: &DocId,
        entry: &Slot,
        slot: &'a mut Option<Loaded>,
    ) -> Result<Option<&'a mut Loaded>> {
        if slot.is_some() && !entry.stale.load(Ordering::Acquire) {
            return Ok(slot.as_mut());
        }
        let client = self.client()?;
        self.current(doc, entry, slot, &client, false)
    }

    /// Takes the collection's next sequence number (locking its row
    /// until the transaction ends).
    async fn next_seq(client: &impl GenericClient, collection: &Collection) -> Result<i64> {
        let row = q_one(
            client,
            "INSERT INTO collection_seqs (collection, seq) VALUES ($1, 1)
                 ON CONFLICT (collection) DO UPDATE SET seq = collection_seqs.seq + 1
                 RETURNING seq",
            &[&collection.as_str()],
        )
        .await?;
        Ok(row.get(0))
    }

    /// Every collection's sequence as the store holds it now.
    pub fn collection_seqs(&self) -> Result<Vec<(Collection, u64)>> {
        let rows = self.wait(async {
            let client = self.pool.get().await.map_err(backend)?;
            q(&client, "SELECT collection, seq FROM collection_seqs", &[]).await
        })?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let name: String = r.get(0);
                let seq = r.get::<_, i64>(1).max(0) as u64;
                name.parse().ok().map(|c| (c, seq))
            })
            .collect())
    }

    /// Whether PostgreSQL answers.
    pub fn ping(&self) -> Result<()> {
        let client = self.client()?;
        self.wait(async { client.simple_query("SELECT 1").await.map_err(backend) })?;
        Ok(())
    }

    /// Writes the sync states saved since the last flush, in one
    /// statement. On failure they are kept (unless saved again since) for
    /// the next flush, up to `MAX_PENDING_STATES` (10,000): while PostgreSQL is
    /// down, the states beyond are dropped (each costs a fuller exchange
    /// later), so an outage does not grow the node's memory with every
    /// message its peers send.
    pub fn flush_sync_states(&self) -> Result<()> {
        let taken = std::mem::take(&mut *self.pending_states.lock());
        if taken.is_empty() {
            return Ok(());
        }
        let mut peers = Vec::with_capacity(taken.len());
        let mut docs = Vec::with_capacity(taken.len());
        let mut states = Vec::with_capacity(taken.len());
        for ((peer, doc), state) in &taken {
            peers.push(peer.as_str());
            docs.push(doc.as_bytes().as_slice());
            states.push(state.as_slice());
        }
        let now = accord_engine::store::now_ms();
        let written = self.wait(async {
            let client = self.pool.get().await.map_err(backend)?;
            exec(
                &client,
                "INSERT INTO sync_states (peer, doc, state, updated_at)
                 SELECT p, d, s, $4 FROM unnest($1::text[], $2::bytea[], $3::bytea[]) AS t(p, d, s)
                 ON CONFLICT (peer, doc) DO UPDATE
                   SET state = EXCLUDED.state, updated_at = EXCLUDED.updated_at",
                &[&peers, &docs, &states, &now],
            )
            .await
        });
        if let Err(e) = written {
            let mut pending = self.pending_states.lock();
            for (key, state) in taken {
                if pending.len() >= MAX_PENDING_STATES {
                    break;
                }
                pending.entry(key).or_insert(state);
            }
            return Err(e);
        }
        Ok(())
    }

    /// How many saved sync states await their write (for `/metrics`-like
    /// reports and tests).
    pub fn pending_sync_states(&self) -> usize {
        self.pending_states.lock().len()
    }

    /// Takes the document's write lock until the transaction ends: every
    /// append, creation, tombstone and compaction of one document, on any
    /// node, runs under it one at a time (a row lock cannot cover a
    /// document that has no row yet; this can).
    async fn lock_doc(client: &impl GenericClient, doc: &DocId) -> Result<()> {
        let mut key = [0u8; 8];
        key.copy_from_slice(&doc.as_bytes()[..8]);
        exec(
            client,
            "SELECT pg_advisory_xact_lock($1)",
            &[&i64::from_be_bytes(key)],
        )
        .await?;
        Ok(())
    }

    fn publish(&self, commit: Committed) {
        self.note_changed(&commit.collection);
        // A full queue only delays other nodes until their catch-up.
        let _ = self.committed.try_send(commit);
    }

    fn client(&self) -> Result<deadpool_postgres::Object> {
        self.wait(async { self.pool.get().await.map_err(backend) })
    }
}

/// Runs `sql` with `params` as a statement prepared once per pooled
/// connection (one round trip instead of two: parse and execute).
pub(super) async fn q(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>> {
    let statement = client.prepare_cached(sql).await.map_err(backend)?;
    client.query(&statement, params).await.map_err(backend)
}

/// [`q`] for at most one row.
pub(super) async fn q_opt(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<Row>> {
    Ok(q(client, sql, params).await?.into_iter().next())
}

/// [`q`] for exactly one row.
async fn q_one(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Row> {
    q_opt(client, sql, params)
        .await?
        .ok_or_else(|| Error::Store(StoreError::Backend(format!("no row from {sql}"))))
}

/// [`q`] for a statement without rows; returns how many it touched.
pub(super) async fn exec(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64> {
    let statement = client.prepare_cached(sql).await.map_err(backend)?;
    client.execute(&statement, params).await.map_err(backend)
}

/// What one append changed, to write and publish.
struct Append {
    first_no: i64,
    changes: Vec<Change>,
}

impl SyncDocs for PgStore {
    fn summaries(&self, collection: &Collection) -> Result<Vec<DocSummary>> {
        let rows = self.wait(async {
            let client = self.pool.get().await.map_err(backend)?;
            q(
                &client,
                "SELECT id, heads, deleted FROM docs WHERE collection = $1 ORDER BY id",
                &[&collection.as_str()],
            )
            .await
        })?;
        rows.iter().map(summary).collect()
    }

    fn summaries_page(
        &self,
        collection: &Collection,
        after: Option<&DocId>,
        limit: usize,
    ) -> Result<Vec<DocSummary>> {
        let after: Vec<u8> = after.map(|d| d.as_bytes().to_vec()).unwrap_or_default();
        let rows = self.wait(async {
            let client = self.pool.get().await.map_err(backend)?;
            q(
                &client,
                "SELECT id, heads, deleted FROM docs WHERE collection = $1 AND id > $2
                     ORDER BY id LIMIT $3",
                &[&collection.as_str(), &after, &to_i64(limit)],
            )
            .await
        })?;
        rows.iter().map(summary).collect()
    }

    fn collection_seq(&self, collection: &Collection) -> Result<u64> {
        let row = self.wait(async {
            let client = self.pool.get().await.map_err(backend)?;
            q_opt(
                &client,
                "SELECT seq FROM collection_seqs WHERE collection = $1",
                &[&collection.as_str()],
            )
            .await
        })?;
        Ok(row.map_or(0, |r| r.get::<_, i64>(0).max(0) as u64))
    }

    fn summaries_since(
        &self,
        collection: &Collection,
        since: u64,
        limit: usize,
    ) -> Result<Vec<NumberedSummary>> {
        let since = i64::try_from(since).unwrap_or(i64::MAX);
        let rows = self.wait(async {
            let client = self.pool.get().await.map_err(backend)?;
            q(
                &client,
                "SELECT id, heads, deleted, seq FROM docs WHERE collection = $1 AND seq > $2
                     ORDER BY seq LIMIT $3",
                &[&collection.as_str(), &since, &to_i64(limit)],
            )
            .await
        })?;
        rows.iter()
            .map(|row| {
                Ok(NumberedSummary {
                    seq: row.get::<_, i64>("seq").max(0) as u64,
                    summary: summary(row)?,
                })
            })
            .collect()
    }

    fn sync_cursor(&self, _collection: &Collection) -> Result<Option<SyncCursor>> {
        // Cursors are a replica's; a relay keeps none.
        Ok(None)
    }

    fn save_sync_cursor(&self, _collection: &Collection, _cursor: &SyncCursor) -> Result<()> {
        Ok(())
    }

    fn local_state(&self, doc: &DocId) -> Result<Option<LocalState>> {
        let id = doc.as_bytes().as_slice();
        let row = self.wait(async {
            let client = self.pool.get().await.map_err(backend)?;
            q_opt(
                &client,
                "SELECT collection, heads, deleted FROM docs WHERE id = $1",
                &[&id],
            )
            .await
        })?;
        let Some(row) = row else { return Ok(None) };
        let collection: String = row.get(0);
        Ok(Some(LocalState {
            collection: collection.parse().map_err(|_| {
                Error::Store(StoreError::BadRow(format!("bad collection of {doc}")))
            })?,
            heads: heads_of(*doc, row.get(1))?,
            deleted: row.get(2),
        }))
    }

    fn heads(&self, doc: &DocId) -> Result<Heads> {
        let entry = self.entry(doc);
        let mut slot = entry.loaded.lock();
        Ok(self
            .loaded(doc, &entry, &mut slot)?
            .map(|l| Heads::new(l.doc.get_heads()))
            .unwrap_or_default())
    }

    fn covers(&self, doc: &DocId, heads: &Heads, of: &Heads) -> Result<Option<bool>> {
        let entry = self.entry(doc);
        let mut slot = entry.loaded.lock();
        Ok(self
            .loaded(doc, &entry, &mut slot)?
            .and_then(|l| parts::covers(&l.doc, heads, of)))
    }

    fn generate(
        &self,
        doc: &DocId,
        collection: &Collection,
        state: &mut State,
    ) -> Result<Option<Message>> {
        let entry = self.entry(doc);
        let mut slot = entry.loaded.lock();
        match self.loaded(doc, &entry, &mut slot)? {
            Some(loaded) => {
                if loaded.collection != *collection {
                    return Err(wrong_collection(
                        *doc,
                        loaded.collection.clone(),
                        collection,
                    ));
                }
                Ok(parts::generate_within(
                    &loaded.doc,
                    state,
                    loaded.bytes,
                    self.limits.max_sync_message_bytes,
                    self.limits.max_sync_message_ops,
                ))
            }
            None => Ok(Automerge::new().generate_sync_message(state)),
        }
    }

    fn receive(
        &self,
        doc: &DocId,
        collection: &Collection,
        state: &mut State,
        message: Message,
        _from: &PeerId,
    ) -> Result<bool> {
        // Measured before Automerge inflates anything, as on SQLite.
        accord_engine::guard::inspect_message(&message, &self.limits.message_budget)?;
        let incoming: u64 = message.changes.iter().map(|c| c.len() as u64).sum();
        let entry = self.entry(doc);
        let mut slot = entry.loaded.lock();
        if incoming == 0 {
            // Nothing to store (heads, haves and needs only): no lock, no
            // transaction; only the peer's sync state moves.
            let mut empty = Automerge::new();
            let target = match self.loaded(doc, &entry, &mut slot)? {
                Some(loaded) if loaded.collection != *collection => {
                    return Err(wrong_collection(
                        *doc,
                        loaded.collection.clone(),
                        collection,
                    ));
                }
                Some(loaded) => &mut loaded.doc,
                None => &mut empty,
            };
            let before = target.get_heads();
            contained(*doc, || target.receive_sync_message(state, message))?.map_err(|e| {
                Error::Automerge {
                    doc: *doc,
                    source: Box::new(e),
                }
            })?;
            if target.get_heads() != before {
                // Cannot happen without changes; never keep such a copy.
                *slot = None;
            }
            return Ok(false);
        }
        let mut client = self.client()?;
        let tx = self.wait(async {
            let tx = client.transaction().await.map_err(backend)?;
            Self::lock_doc(&tx, doc).await?;
            Ok(tx)
        })?;
        let known = self.current(doc, &entry, &mut slot, &tx, true)?.is_some();
        if let Some(loaded) = slot.as_ref() {
            if loaded.collection != *collection {
                return Err(wrong_collection(
                    *doc,
                    loaded.collection.clone(),
                    collection,
                ));
            }
        }
        let stored = slot.as_ref().map_or(0, |l| l.bytes);
        if incoming > 0 && stored.saturating_add(incoming) > self.limits.max_document_bytes {
            return Err(Error::TooLarge {
                doc: *doc,
                size: stored.saturating_add(incoming),
                limit: self.limits.max_document_bytes,
            });
        }
        let loaded = slot.get_or_insert_with(|| Loaded {
            collection: collection.clone(),
            doc: Automerge::new(),
            upto: 0,
            snapshot_upto: 0,
            bytes: 0,
            deleted: false,
        });
        let before = loaded.doc.get_heads();
        let applied =
            contained(*doc, || loaded.doc.receive_sync_message(state, message)).and_then(|r| {
                r.map_err(|e| Error::Automerge {
                    doc: *doc,
                    source: Box::new(e),
                })
            });
        if let Err(e) = applied {
            *slot = None; // half-applied: reload from the store next time
            return Err(e);
        }
        let after = loaded.doc.get_heads();
        if after == before {
            if !known {
                *slot = None; // nothing stored: the store still does not know it
            }
            return Ok(false);
        }
        let append = Append {
            first_no: loaded.upto + 1,
            changes: loaded.doc.get_changes(&before),
        };
        let changes_upto = loaded.upto + append.changes.len() as i64;
        let (json, conflicts) = parts::projection(&loaded.doc);
        let heads = Heads::new(after);
        let new_bytes: u64 = append
            .changes
            .iter()
            .map(|c| c.raw_bytes().len() as u64)
            .sum();
        let snapshot = (changes_upto - loaded.snapshot_upto > self.limits.compact_after)
            .then(|| loaded.doc.save());
        let written = self.wait(async {
            let written = write_append(
                &tx,
                doc,
                collection,
                &append,
                &heads,
                (&json, conflicts),
                snapshot.as_deref(),
                stored + new_bytes,
            )
            .await?;
            tx.commit().await.map_err(backend)?;
            Ok(written)
        });
        let (seq, size) = match written {
            Ok(ok) => ok,
            Err(e) => {
                // The copy holds changes PostgreSQL does not: drop it.
                *slot = None;
                return Err(e);
            }
        };
        loaded.upto = changes_upto;
        loaded.bytes = size;
        if snapshot.is_some() {
            loaded.snapshot_upto = changes_upto;
        }
        let small = new_bytes as usize <= BUS_CHANGE_BYTES;
        self.publish(Committed {
            doc: *doc,
            collection: collection.clone(),
            heads,
            deleted: false,
            seq: seq.max(0) as u64,
            first_no: append.first_no,
            changes_upto,
            bytes: size,
            changes: if small {
                append
                    .changes
                    .iter()
                    .map(|c| c.raw_bytes().to_vec())
                    .collect()
            } else {
                Vec::new()
            },
        });
        Ok(true)
    }

    fn saved_form(&self, doc: &DocId, max_bytes: usize) -> Result<Option<Vec<u8>>> {
        let entry = self.entry(doc);
        let mut slot = entry.loaded.lock();
        let loaded = self.loaded(doc, &entry, &mut slot)?;
        // A document stored in more than `max_bytes` is not saved only to
        // be announced after all (the session checks the saved length too).
        let fits = |l: &&mut Loaded| !l.deleted && l.bytes <= max_bytes as u64;
        Ok(loaded.filter(fits).map(|l| l.doc.save()))
    }

    fn receive_whole(
        &self,
        _doc: &DocId,
        _collection: &Collection,
        _data: &[u8],
        _from: &PeerId,
    ) -> Result<Received> {
        // Only replicas ask for documents whole; a relay never receives any.
        Err(Error::Store(StoreError::Backend(
            "a relay's store does not take documents sent whole".into(),
        )))
    }

    fn delete(&self, doc: &DocId, collection: &Collection, _from: &PeerId) -> Result<bool> {
        let entry = self.entry(doc);
        let mut slot = entry.loaded.lock();
        let mut client = self.client()?;
        let tx = self.wait(async {
            let tx = client.transaction().await.map_err(backend)?;
            Self::lock_doc(&tx, doc).await?;
            Ok(tx)
        })?;
        let known = self.current(doc, &entry, &mut slot, &tx, true)?;
        let now = accord_engine::store::now_ms();
        let (heads, changes, bytes) = match known {
            Some(loaded) => {
                if loaded.collection != *collection {
                    return Err(wrong_collection(
                        *doc,
                        loaded.collection.clone(),
                        collection,
                    ));
                }
                if loaded.deleted {
                    return Ok(false);
                }
                (
                    Heads::new(loaded.doc.get_heads()),
                    loaded.upto,
                    loaded.bytes,
                )
            }
            None => (Heads::empty(), 0, 0),
        };
        let id = doc.as_bytes().as_slice();
        let seq = self.wait(async {
            let seq = Self::next_seq(&tx, collection).await?;
            exec(
                &tx,
                "INSERT INTO docs (id, id_text, collection, heads, deleted, seq, created_seq,
                                   created_at, updated_at, json)
                 VALUES ($1, $2, $3, $4, true, $5, $5, $6, $6, '{}'::jsonb)
                 ON CONFLICT (id) DO UPDATE SET deleted = true, seq = $5, updated_at = $6",
                &[
                    &id,
                    &doc.to_string(),
                    &collection.as_str(),
                    &heads.to_bytes(),
                    &seq,
                    &now,
                ],
            )
            .await?;
            tx.commit().await.map_err(backend)?;
            Ok(seq)
        });
        let seq = match seq {
            Ok(seq) => seq,
            Err(e) => {
                *slot = None;
                return Err(e);
            }
        };
        if let Some(loaded) = slot.as_mut() {
            loaded.deleted = true;
        }
        self.publish(Committed {
            doc: *doc,
            collection: collection.clone(),
            heads,
            deleted: true,
            seq: seq.max(0) as u64,
            first_no: changes + 1,
            changes_upto: changes,
            bytes,
            changes: Vec::new(),
        });
        Ok(true)
    }

    fn load_sync_state(&self, peer: &PeerId, doc: &DocId) -> Result<Option<State>> {
        let pending = self
            .pending_states
            .lock()
            .get(&(peer.to_string(), *doc))
            .cloned();
        if let Some(bytes) = pending {
            return Ok(State::decode(&bytes).ok());
        }
        let id = doc.as_bytes().as_slice();
        let row = self.wait(async {
            let client = self.pool.get().await.map_err(backend)?;
            q_opt(
                &client,
                "SELECT state FROM sync_states WHERE peer = $1 AND doc = $2",
                &[&peer.as_str(), &id],
            )
            .await
        })?;
        // A damaged stored state only costs a fuller resync.
        Ok(row.and_then(|r| State::decode(r.get::<_, &[u8]>(0)).ok()))
    }

    fn save_sync_states(&self, peer: &PeerId, states: Vec<EncodedState>) -> Result<()> {
        let full = {
            let mut pending = self.pending_states.lock();
            for state in states {
                let key = (peer.to_string(), state.doc);
                if pending.len() < 2 * MAX_PENDING_STATES || pending.contains_key(&key) {
                    pending.insert(key, state.bytes);
                }
            }
            pending.len() >= MAX_PENDING_STATES
        };
        if full {
            self.flush_sync_states()?;
        }
        Ok(())
    }

    fn retire_sync_states(&self, prefix: &str, keep: usize, current: &PeerId) -> Result<()> {
        // What is retired must not come back with a later flush.
        self.flush_sync_states()?;
        self.wait(async {
            let client = self.pool.get().await.map_err(backend)?;
            exec(
                &client,
                "DELETE FROM sync_states WHERE peer IN (
                       SELECT peer FROM sync_states
                       WHERE starts_with(peer, $1) AND peer <> $2
                       GROUP BY peer ORDER BY max(updated_at) DESC OFFSET $3)",
                &[&prefix, &current.as_str(), &to_i64(keep)],
            )
            .await
        })?;
        Ok(())
    }
}

/// Writes one append in `tx`: the new change rows, the `docs` row with
/// its projection and next sequence number, and a snapshot replacing the
/// change rows if one is given. Returns the number and the stored size.
#[allow(clippy::too_many_arguments)]
async fn write_append(
    tx: &deadpool_postgres::Transaction<'_>,
    doc: &DocId,
    collection: &Collection,
    append: &Append,
    heads: &Heads,
    (json, conflicts): (&str, i64),
    snapshot: Option<&[u8]>,
    size: u64,
) -> Result<(i64, u64)> {
    let id = doc.as_bytes().as_slice();
    let nos: Vec<i64> = (0..append.changes.len() as i64)
        .map(|i| append.first_no + i)
        .collect();
    let hashes: Vec<Vec<u8>> = append.changes.iter().map(|c| c.hash().0.to_vec()).collect();
    let datas: Vec<&[u8]> = append.changes.iter().map(|c| c.raw_bytes()).collect();
    exec(
        tx,
        "INSERT INTO changes (doc, no, hash, data)
         SELECT $1, n, h, d FROM unnest($2::bigint[], $3::bytea[], $4::bytea[]) AS t(n, h, d)
         ON CONFLICT DO NOTHING",
        &[&id, &nos, &hashes, &datas],
    )
    .await?;
    let upto = append.first_no + append.changes.len() as i64 - 1;
    let mut size = size;
    let mut snapshot_upto = None;
    if let Some(data) = snapshot {
        exec(
            tx,
            "INSERT INTO snapshots (doc, upto, data) VALUES ($1, $2, $3)
             ON CONFLICT (doc) DO UPDATE SET upto = EXCLUDED.upto, data = EXCLUDED.data",
            &[&id, &upto, &data],
        )
        .await?;
        exec(
            tx,
            "DELETE FROM changes WHERE doc = $1 AND no <= $2",
            &[&id, &upto],
        )
        .await?;
        size = data.len() as u64;
        snapshot_upto = Some(upto);
    }
    let seq = PgStore::next_seq(tx, collection).await?;
    let now = accord_engine::store::now_ms();
    let size_i = i64::try_from(size).unwrap_or(i64::MAX);
    let conflicts = i32::try_from(conflicts).unwrap_or(i32::MAX);
    // One statement for a new document and a known one; the projection's
    // text goes to PostgreSQL as it is (it parses it into jsonb).
    exec(
        tx,
        "INSERT INTO docs (id, id_text, collection, heads, seq, created_seq, changes, bytes,
                           created_at, updated_at, json, conflicts, snapshot_upto)
         VALUES ($1, $2, $3, $4, $5, $5, $6, $7, $8, $8, $9::text::jsonb, $10,
                 coalesce($11::bigint, 0))
         ON CONFLICT (id) DO UPDATE SET
             heads = EXCLUDED.heads, seq = EXCLUDED.seq, changes = EXCLUDED.changes,
             bytes = EXCLUDED.bytes, updated_at = EXCLUDED.updated_at, json = EXCLUDED.json,
             conflicts = EXCLUDED.conflicts,
             snapshot_upto = coalesce($11::bigint, docs.snapshot_upto)",
        &[
            &id,
            &doc.to_string(),
            &collection.as_str(),
            &heads.to_bytes(),
            &seq,
            &upto,
            &size_i,
            &now,
            &json,
            &conflicts,
            &snapshot_upto,
        ],
    )
    .await?;
    Ok((seq, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// While PostgreSQL cannot be reached, the states a node's peers keep
    /// saving stay bounded in memory (the rest cost a fuller exchange).
    #[test]
    fn unwritten_sync_states_stay_bounded_while_the_store_is_down() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        // Nothing listens on port 1: every connection is refused at once.
        let mut pg = tokio_postgres::Config::new();
        pg.host("127.0.0.1").port(1).user("nobody");
        let manager = deadpool_postgres::Manager::new(pg, tokio_postgres::NoTls);
        let pool = Pool::builder(manager)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .expect("pool");
        let (committed, _rx) = mpsc::channel(1);
        let limits = StoreLimits {
            max_document_bytes: 1 << 20,
            max_sync_message_bytes: 1 << 20,
            max_sync_message_ops: 1_000,
            message_budget: Budget::default(),
            cache_docs: 1,
            compact_after: 256,
        };
        let store = PgStore::new(
            pool,
            runtime.handle().clone(),
            limits,
            committed,
            Arc::new(|_| {}),
        );
        let peer = PeerId::new("peer").expect("peer id");
        let mut failed = 0;
        for _ in 0..6 {
            let states = (0..MAX_PENDING_STATES / 2)
                .map(|_| EncodedState {
                    doc: DocId::random(),
                    bytes: vec![0x43, 0],
                })
                .collect();
            failed += usize::from(store.save_sync_states(&peer, states).is_err());
        }
        assert!(failed > 0, "the flushes failed: the store is down");
        let pending = store.pending_sync_states();
        assert!(
            pending <= 2 * MAX_PENDING_STATES,
            "{pending} states held for a store that is down"
        );
    }
}
