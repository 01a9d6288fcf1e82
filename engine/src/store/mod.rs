//! The SQLite store: the only module that knows SQL.
//!
//! A database holds, per document, one metadata row (`docs`) and an ordered
//! list of chunks (`chunks`): Automerge's own binary formats, a snapshot from
//! `save()` or incremental changes from `save_after()`. Loading a document
//! concatenates its chunks in order. Compaction replaces all of a document's
//! chunks by one snapshot inside one transaction. `sync_states` keeps each
//! peer's encoded `automerge::sync::State` per document.
//!
//! The store is synchronous. [`Store::apply`] runs a batch of writes in one
//! transaction, each in its own savepoint, so one failing write does not
//! undo its neighbours; that is what group commit stands on.
//! `docs/storage-format.md` is the byte-level specification.
//!
//! Queries: `projection` keeps each document's content as JSON for the
//! `records` view, written in the same savepoint as the chunk or tombstone
//! it reflects; `index` makes JSON-path indexes on it; `query` runs apps'
//! SQL so that it cannot write; `value` is the values queries exchange.

mod index;
mod projection;
mod query;
mod schema;
mod value;

use std::path::Path;
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior};

use crate::error::StoreError;
use crate::id::{Collection, DocId, Heads};

pub use index::{index_name, IndexPath, IndexTarget, QueryIndex};
pub use projection::{Projected, ProjectionRow, STALE_KEY};
pub use query::QueryConn;
pub use schema::{APPLICATION_ID, SCHEMA_VERSION};
pub use value::{QueryRows, SqlValue};

/// How hard each commit works to survive a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous = FULL`: a committed write survives power loss and OS
    /// crashes. The default, because an acknowledged write is a promise;
    /// group commit amortises the fsync across concurrent writers.
    #[default]
    Full,
    /// `synchronous = NORMAL`: a committed write survives the process
    /// crashing or being killed, but the last commits may be lost on power
    /// loss. Much faster for a single writer.
    Normal,
}

/// The two kinds of chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkKind {
    /// A whole document, from `Automerge::save`.
    Snapshot = 0,
    /// Changes, from `Automerge::save_after`.
    Incremental = 1,
}

impl ChunkKind {
    /// The kind stored as `code` in the `kind` column.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(ChunkKind::Snapshot),
            1 => Some(ChunkKind::Incremental),
            _ => None,
        }
    }
}

/// A batch a named consumer of the change feed gave up delivering.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    /// Its id (0 until stored).
    pub id: i64,
    /// The consumer.
    pub consumer: String,
    /// The collection.
    pub collection: String,
    /// The first and last sequence numbers the batch reported.
    pub first_seq: u64,
    /// See `first_seq`.
    pub last_seq: u64,
    /// What would have been delivered.
    pub body: String,
    /// How many times delivery was tried.
    pub attempts: u32,
    /// Why the last try failed.
    pub error: String,
    /// When it was given up (ms since the epoch; set when stored).
    pub failed_at: i64,
}

/// A document as a collection's change feed reports it: its place in the
/// collection's sequence and its state after its latest write.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangedDoc {
    /// The document.
    pub id: DocId,
    /// The number of its latest commit or tombstone.
    pub seq: u64,
    /// The number of its first (when this store first stored it).
    pub created_seq: u64,
    /// Whether it carries a tombstone.
    pub deleted: bool,
    /// Its heads.
    pub heads: Heads,
    /// When this store last wrote it (ms since the epoch).
    pub updated_at: i64,
    /// Its projected JSON (`None` if the projection has no row yet).
    pub json: Option<String>,
}

/// What the `docs` table knows about a document, without loading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocMeta {
    /// The document.
    pub id: DocId,
    /// Its collection.
    pub collection: Collection,
    /// Whether it carries a tombstone.
    pub deleted: bool,
    /// When it was deleted (ms since the epoch), if it was.
    pub deleted_at: Option<i64>,
    /// Its current heads.
    pub heads: Heads,
    /// How many changes its history holds.
    pub change_count: u64,
    /// The bytes its chunks take.
    pub size_bytes: u64,
    /// How many chunks it is stored as.
    pub chunk_count: u64,
    /// When this store first saw it (ms since the epoch).
    pub created_at: i64,
    /// When this store last wrote it (ms since the epoch).
    pub updated_at: i64,
}

/// One write, applied by [`Store::apply`].
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Appends a chunk; creates the document's row if it has none.
    Append {
        /// The document.
        doc: DocId,
        /// Its collection (used only when the row is created).
        collection: Collection,
        /// Snapshot or incremental.
        kind: ChunkKind,
        /// Automerge bytes.
        data: Vec<u8>,
        /// The document's heads after this chunk.
        heads: Heads,
        /// The heads the writer based the chunk on: the write is refused
        /// with [`StoreError::Stale`] unless the stored heads are these (so a
        /// second process writing the same file is noticed, not overwritten).
        base: Heads,
        /// How many changes the chunk adds.
        new_changes: u64,
        /// The document's content after this chunk, for the projection.
        /// `None` if the writer keeps no projection: the row is removed and
        /// the projection flagged for a backfill.
        content: Option<Projected>,
    },
    /// Replaces every chunk of a document by one snapshot.
    Compact {
        /// The document.
        doc: DocId,
        /// `Automerge::save()` of the whole document.
        snapshot: Vec<u8>,
        /// The snapshot's heads; refused with [`StoreError::Stale`] unless
        /// they are the stored heads.
        heads: Heads,
    },
    /// Sets the tombstone. Creates a row if the document is unknown, so a
    /// deletion can arrive before the document does.
    Delete {
        /// The document.
        doc: DocId,
        /// Its collection.
        collection: Collection,
        /// When it was deleted (ms since the epoch).
        at: i64,
        /// The document's content (`{}` for a document not stored yet), for
        /// the projection; `None` as for `Append`.
        content: Option<Projected>,
    },
    /// Writes a projection row computed at `heads`, only if those are still
    /// the document's stored heads (a backfill or rebuild).
    Project {
        /// The document.
        doc: DocId,
        /// The heads the content was computed at.
        heads: Heads,
        /// Its content; `None` for a document that does not load (the row
        /// then holds `NULL`).
        content: Option<Projected>,
    },
    /// Clears the `projection_stale` flag if no row is missing or stale.
    SettleProjection,
    /// Deletes projection rows of documents that have no `docs` row.
    PruneProjection,
    /// Creates a JSON-path index (if absent) and registers it.
    CreateIndex(IndexTarget),
    /// Drops a JSON-path index (if present) and its registration.
    DropIndex(IndexTarget),
    /// Drops the sync states of the peers whose keys start with `prefix`,
    /// all but the `keep` most recently updated ones and `current`.
    RetireSyncStates {
        /// The key prefix (one token subject's).
        prefix: String,
        /// How many peers to keep.
        keep: usize,
        /// A peer never dropped (the one connecting).
        current: String,
    },
    /// Moves a named consumer of a collection's change feed to `cursor`.
    FeedCursor {
        /// The consumer (a webhook's name).
        consumer: String,
        /// The collection.
        collection: String,
        /// The last number it has dealt with.
        cursor: u64,
    },
    /// Keeps a batch a consumer gave up delivering.
    DeadLetter(DeadLetter),
    /// Forgets a dead letter (delivered on replay, or dropped).
    DropDeadLetter {
        /// Its id.
        id: i64,
    },
    /// Replaces the sync cursor of a collection (the meta key
    /// `sync_cursor:<collection>`, see [`Store::sync_cursor`]).
    SyncCursor {
        /// The collection.
        collection: String,
        /// The cursor, as stored.
        cursor: StoredCursor,
    },
    /// Stores a peer's sync state for a document.
    SyncState {
        /// The peer's id.
        peer: String,
        /// The document.
        doc: DocId,
        /// `automerge::sync::State::encode()`.
        state: Vec<u8>,
    },
}

impl WriteOp {
    /// Whether this write is sync bookkeeping (a peer's sync state, their
    /// retirement, a sync cursor): losing the last ones to a power cut
    /// costs a peer a fuller exchange, never data, and they are written
    /// after every exchange, so a batch of nothing else skips the fsync.
    pub fn is_bookkeeping(&self) -> bool {
        matches!(
            self,
            WriteOp::SyncState { .. }
                | WriteOp::RetireSyncStates { .. }
                | WriteOp::SyncCursor { .. }
        )
    }
}

/// A replica's sync cursor of one collection, as stored: see
/// `sync::SyncCursor` and docs/storage-format.md.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredCursor {
    /// The relay's id.
    pub relay: String,
    /// A number of the relay's sequence of the collection.
    pub relay_seq: u64,
    /// A number of this database's sequence of the collection.
    pub local_seq: u64,
    /// Whether the relay let this replica write the collection when the
    /// cursor was saved (absent from cursors saved before it was kept:
    /// read as no).
    #[serde(default)]
    pub write: bool,
}

/// The meta key of a collection's sync cursor.
fn cursor_key(collection: &str) -> String {
    format!("sync_cursor:{collection}")
}

/// A document's stored chunks, in order.
#[derive(Debug, Clone)]
pub struct StoredDoc {
    /// Its metadata row.
    pub meta: DocMeta,
    /// Its chunks in ascending `seq`.
    pub chunks: Vec<StoredChunk>,
}

/// One row of the `chunks` table.
#[derive(Debug, Clone)]
pub struct StoredChunk {
    /// Its position in the document's chunk list.
    pub seq: i64,
    /// What it holds; `None` for a kind code this build does not know (a
    /// damaged row, reported when the document loads).
    pub kind: Option<ChunkKind>,
    /// Automerge bytes.
    pub data: Vec<u8>,
}

/// A connection to an Accord database.
#[derive(Debug)]
pub struct Store {
    /// The SQLite connection; every method goes through it.
    conn: Connection,
    /// Whether commits fsync (`synchronous = FULL`).
    full: bool,
    /// Whether the connection is set to `synchronous = NORMAL` though
    /// `full`: left so after a recoverable commit until a durable one
    /// needs `FULL` again (see [`Store::apply_with`]).
    relaxed: bool,
    /// Commits made with `synchronous = FULL` through [`Store::apply`].
    fsynced: u64,
}

/// Settings every connection of a store gets.
///
/// The query planner stability guarantee is on because of how the
/// statement cache works: rusqlite clears a statement's bindings when it
/// returns it to the cache, and SQLite expires a statement whose plan may
/// depend on a bound value (an `x = ?` term the index does not use, a
/// `LIMIT ?`) whenever its bindings are cleared. Every such cached
/// statement was compiled again on each use: on a replica receiving
/// changes, the chunk insert on every commit, a tenth of the client's
/// instructions in W1. With the guarantee, plans never depend on bound
/// values, and the store's statements are simple keyed lookups whose plan
/// the values would not change.
fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    Ok(())
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

const META_COLUMNS: &str = "id, collection, deleted, deleted_at, heads, change_count, size_bytes, chunk_count, created_at, updated_at";

/// A document's next chunk (the statement every append runs).
const CHUNK_INSERT: &str = "INSERT INTO chunks (doc, seq, kind, data)
     VALUES (?1, (SELECT coalesce(max(seq), 0) + 1 FROM chunks WHERE doc = ?1), ?2, ?3)";

/// One metadata row by id (a constant, so the statement cache keeps it).
const META_BY_ID: &str = "SELECT id, collection, deleted, deleted_at, heads, change_count, size_bytes, chunk_count, created_at, updated_at FROM docs WHERE id = ?1";

impl Store {
    /// Opens (creating if needed) a database file and migrates it.
    pub fn open(path: &Path, durability: Durability) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        Self::init(conn, &path.display().to_string(), durability)
    }

    /// Opens an existing database file; fails with [`StoreError::Missing`]
    /// instead of creating one.
    pub fn open_existing(path: &Path, durability: Durability) -> Result<Self, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing(path.display().to_string()));
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(path, flags)?;
        Self::init(conn, &path.display().to_string(), durability)
    }

    /// A private in-memory database.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::init(
            Connection::open_in_memory()?,
            ":memory:",
            Durability::Normal,
        )
    }

    fn init(mut conn: Connection, name: &str, durability: Durability) -> Result<Self, StoreError> {
        configure(&conn)?;
        let sync = match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        tracing::debug!(db = name, journal = mode, "opened database");
        conn.execute_batch(&format!(
            "PRAGMA synchronous = {sync}; PRAGMA foreign_keys = ON;"
        ))?;
        schema::migrate(&mut conn, name)?;
        Ok(Store {
            conn,
            full: durability == Durability::Full,
            relaxed: false,
            fsynced: 0,
        })
    }

    /// A read-only connection for apps' queries (see [`QueryConn`]).
    pub fn open_query(path: &Path) -> Result<QueryConn, StoreError> {
        QueryConn::open(path)
    }

    /// A second connection to the same file, for reads beside the writer.
    pub fn open_reader(path: &Path) -> Result<Self, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)?;
        configure(&conn)?;
        Ok(Store {
            conn,
            full: false,
            relaxed: false,
            fsynced: 0,
        })
    }

    /// Applies a batch of write groups in one transaction. Each group runs in
    /// its own savepoint and is all-or-nothing; the result vector says which
    /// groups succeeded. If the commit itself fails, the error covers all.
    ///
    /// A batch of nothing but sync states commits without fsync even in
    /// `Full` mode: losing the last ones on power loss costs a peer a fuller
    /// resync, never data, and they are written after every exchange.
    pub fn apply(
        &mut self,
        groups: &[&[WriteOp]],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let recoverable = groups
            .iter()
            .all(|ops| ops.iter().all(WriteOp::is_bookkeeping));
        self.apply_with(groups, recoverable)
    }

    /// Like [`Store::apply`]; `recoverable` says every group holds only
    /// what costs nothing but a fuller exchange if a power loss drops it
    /// (sync bookkeeping, see [`WriteOp::is_bookkeeping`], and changes
    /// received from the relay on a replica that does not fsync those): such
    /// a batch commits without fsync in `Full` mode too. SQLite's WAL keeps
    /// the commits in order, so a power loss can only lose a suffix of
    /// them, and the next commit that does fsync makes them durable too.
    pub fn apply_with(
        &mut self,
        groups: &[&[WriteOp]],
        recoverable: bool,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let relaxed = self.full && recoverable;
        // The level changes only when it must, not around every
        // recoverable commit: a replica receiving a run of changes stays
        // at NORMAL through it (two statements fewer per commit), and its
        // next durable write goes back to FULL before it begins.
        if relaxed != self.relaxed {
            let level = if relaxed { "NORMAL" } else { "FULL" };
            self.conn.pragma_update(None, "synchronous", level)?;
            self.relaxed = relaxed;
        }
        let result = self.apply_in_transaction(groups);
        if self.full && !relaxed && result.is_ok() {
            self.fsynced += 1;
        }
        result
    }

    /// How many commits [`Store::apply`] made with an fsync (in `Full`
    /// mode; always 0 in `Normal`).
    pub fn fsynced_commits(&self) -> u64 {
        self.fsynced
    }

    fn apply_in_transaction(
        &mut self,
        groups: &[&[WriteOp]],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_ms();
        let mut results = Vec::with_capacity(groups.len());
        // Savepoints by cached statements: rusqlite's `savepoint()` parses
        // its SQL on every call, a measurable share of a small write.
        let run = |sql: &str| -> Result<(), StoreError> {
            tx.prepare_cached(sql)?.execute([])?;
            Ok(())
        };
        for group in groups {
            run("SAVEPOINT accord_group")?;
            let outcome = group.iter().try_for_each(|op| apply_one(&tx, op, now));
            if outcome.is_err() {
                run("ROLLBACK TO accord_group")?;
            }
            run("RELEASE accord_group")?;
            results.push(outcome);
        }
        tx.commit()?;
        Ok(results)
    }

    /// The metadata row of one document.
    pub fn meta(&self, doc: &DocId) -> Result<Option<DocMeta>, StoreError> {
        let mut stmt = self.conn.prepare_cached(META_BY_ID)?;
        let row = stmt
            .query_row([doc.as_bytes().as_slice()], |r| Ok(read_meta(r)))
            .optional()?;
        row.transpose()
    }

    /// A document's metadata and chunks, or `None` if it is unknown.
    pub fn load(&self, doc: &DocId) -> Result<Option<StoredDoc>, StoreError> {
        let Some(meta) = self.meta(doc)? else {
            return Ok(None);
        };
        let chunks = self.chunks(doc)?;
        Ok(Some(StoredDoc { meta, chunks }))
    }

    /// A document's chunks in ascending `seq` (none if it is unknown).
    pub fn chunks(&self, doc: &DocId) -> Result<Vec<StoredChunk>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT seq, kind, data FROM chunks WHERE doc = ?1 ORDER BY seq")?;
        let chunks = stmt
            .query_map([doc.as_bytes().as_slice()], |r| {
                Ok(StoredChunk {
                    seq: r.get(0)?,
                    // Read loosely: a damaged row's kind (out of range,
                    // or not even a number) is reported by the load as
                    // an unknown kind naming the document, not as a
                    // conversion error naming nothing.
                    kind: match r.get::<_, rusqlite::types::Value>(1)? {
                        rusqlite::types::Value::Integer(code) => {
                            u8::try_from(code).ok().and_then(ChunkKind::from_code)
                        }
                        _ => None,
                    },
                    data: r.get(2)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(chunks)
    }

    /// Metadata of the documents of one collection (or of all), ordered by
    /// collection and id. Reads only the `docs` table.
    pub fn list(
        &self,
        collection: Option<&str>,
        include_deleted: bool,
    ) -> Result<Vec<DocMeta>, StoreError> {
        let sql = format!(
            "SELECT {META_COLUMNS} FROM docs WHERE (?1 IS NULL OR collection = ?1) AND (?2 OR deleted = 0) ORDER BY collection, id"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![collection, include_deleted], |r| Ok(read_meta(r)))?;
        rows.map(|r| r.map_err(StoreError::from).and_then(|m| m))
            .collect()
    }

    /// One page of a collection's documents (deleted ones included), in
    /// id order, starting after `after`: at most `limit` rows, read through
    /// the `(collection, id)` index, so a listing of any size costs one
    /// page of memory at a time.
    pub fn list_page(
        &self,
        collection: &str,
        after: Option<&DocId>,
        limit: usize,
    ) -> Result<Vec<DocMeta>, StoreError> {
        let sql = format!(
            "SELECT {META_COLUMNS} FROM docs WHERE collection = ?1 AND (?2 IS NULL OR id > ?2) ORDER BY id LIMIT ?3"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let after = after.map(|d| d.as_bytes().to_vec());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![collection, after, limit], |r| Ok(read_meta(r)))?;
        rows.map(|r| r.map_err(StoreError::from).and_then(|m| m))
            .collect()
    }

    /// Every document's id and collection, read from the `(collection,
    /// id)` index alone, never from the `docs` table's rows: how `accord
    /// check` still names the documents of a file whose table pages are
    /// damaged. An index entry whose id does not parse is an error naming
    /// it.
    pub fn ids_from_index(&self) -> Result<Vec<(DocId, String)>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, collection FROM docs INDEXED BY docs_by_collection ORDER BY collection, id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?))
        })?;
        rows.map(|row| {
            let (id, collection) = row?;
            let bytes: [u8; 16] = id.as_slice().try_into().map_err(|_| {
                StoreError::BadRow(format!(
                    "an id of {} bytes in the index of {collection}",
                    id.len()
                ))
            })?;
            Ok((DocId::from_bytes(bytes), collection))
        })
        .collect()
    }

    /// The documents of `collection` whose latest commit or tombstone has
    /// a number above `since` in the collection's sequence, in that order,
    /// at most `limit`, each with its projected content.
    pub fn changed_since(
        &self,
        collection: &str,
        since: u64,
        limit: usize,
    ) -> Result<Vec<ChangedDoc>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT d.id, d.seq, d.created_seq, d.deleted, d.heads, d.updated_at, p.json
             FROM docs d LEFT JOIN projection p ON p.doc = d.id
             WHERE d.collection = ?1 AND d.seq > ?2 ORDER BY d.seq LIMIT ?3",
        )?;
        let since = i64::try_from(since).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![collection, since, limit], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Vec<u8>>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, Option<String>>(6)?,
            ))
        })?;
        rows.map(|row| {
            let (id, seq, created_seq, deleted, heads, updated_at, json) = row?;
            let id = DocId::from_slice(&id)
                .ok_or_else(|| StoreError::BadRow(format!("document id of {} bytes", id.len())))?;
            let heads = Heads::from_bytes(&heads)
                .ok_or_else(|| StoreError::BadRow(format!("heads of {id}")))?;
            Ok(ChangedDoc {
                id,
                seq: seq as u64,
                created_seq: created_seq as u64,
                deleted: deleted != 0,
                heads,
                updated_at,
                json,
            })
        })
        .collect()
    }

    /// The documents of `collection` (deleted ones included) whose latest
    /// write is numbered above `since` (`since` 0: every document, also one
    /// never numbered), in number order, at most `limit`, each with its
    /// number: read from the `docs` table alone, through `docs_by_seq`.
    pub fn metas_since(
        &self,
        collection: &str,
        since: u64,
        limit: usize,
    ) -> Result<Vec<(u64, DocMeta)>, StoreError> {
        let sql = format!(
            "SELECT {META_COLUMNS}, seq FROM docs WHERE collection = ?1 AND seq > ?2 ORDER BY seq, id LIMIT ?3"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        // From the start: `seq > -1` also takes rows no write numbered.
        let since = if since == 0 {
            -1
        } else {
            i64::try_from(since).unwrap_or(i64::MAX)
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![collection, since, limit], |r| {
            Ok((r.get::<_, i64>(10)?, read_meta(r)))
        })?;
        rows.map(|row| {
            let (seq, meta) = row?;
            Ok((seq.max(0) as u64, meta?))
        })
        .collect()
    }

    /// The sync cursor kept for `collection` (meta key
    /// `sync_cursor:<collection>`, a JSON object), if any. A value that
    /// does not parse reads as none: it only costs a full listing.
    pub fn sync_cursor(&self, collection: &str) -> Result<Option<StoredCursor>, StoreError> {
        let value: Option<String> = self
            .conn
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row([cursor_key(collection)], |r| r.get(0))
            .optional()?;
        Ok(value.and_then(|v| serde_json::from_str(&v).ok()))
    }

    /// The last number `collection`'s sequence gave out (0: none yet).
    pub fn collection_seq(&self, collection: &str) -> Result<u64, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT last FROM collection_seqs WHERE collection = ?1")?;
        let last: Option<i64> = stmt.query_row([collection], |r| r.get(0)).optional()?;
        Ok(last.unwrap_or(0) as u64)
    }

    /// Where a named consumer of `collection`'s feed stands (0: nowhere).
    pub fn feed_cursor(&self, consumer: &str, collection: &str) -> Result<u64, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT cursor FROM feed_cursors WHERE consumer = ?1 AND collection = ?2",
        )?;
        let cursor: Option<i64> = stmt
            .query_row([consumer, collection], |r| r.get(0))
            .optional()?;
        Ok(cursor.unwrap_or(0) as u64)
    }

    /// A consumer's dead letters, oldest first (every consumer's with
    /// `None`); or the one with `id`.
    pub fn dead_letters(
        &self,
        consumer: Option<&str>,
        id: Option<i64>,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, consumer, collection, first_seq, last_seq, body, attempts, error, failed_at
             FROM feed_dead_letters WHERE (?1 IS NULL OR consumer = ?1) AND (?2 IS NULL OR id = ?2)
             ORDER BY id",
        )?;
        let rows = stmt.query_map(params![consumer, id], |r| {
            Ok(DeadLetter {
                id: r.get(0)?,
                consumer: r.get(1)?,
                collection: r.get(2)?,
                first_seq: r.get::<_, i64>(3)? as u64,
                last_seq: r.get::<_, i64>(4)? as u64,
                body: r.get(5)?,
                attempts: r.get(6)?,
                error: r.get(7)?,
                failed_at: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The collections and how many live documents each holds.
    pub fn collections(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT collection, sum(deleted = 0) FROM docs GROUP BY collection ORDER BY collection",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The stored sync state of `peer` for `doc`.
    pub fn sync_state(&self, peer: &str, doc: &DocId) -> Result<Option<Vec<u8>>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT state FROM sync_states WHERE peer = ?1 AND doc = ?2")?;
        Ok(stmt
            .query_row(params![peer, doc.as_bytes().as_slice()], |r| r.get(0))
            .optional()?)
    }

    /// This database's stable peer id, created on first use.
    pub fn peer_id(&self) -> Result<String, StoreError> {
        let existing: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'peer_id'", [], |r| {
                r.get(0)
            })
            .optional()?;
        if let Some(id) = existing {
            return Ok(id);
        }
        let id = format!("{}", crate::id::DocId::random());
        self.conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('peer_id', ?1)",
            [&id],
        )?;
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'peer_id'", [], |r| {
                r.get(0)
            })?)
    }

    /// Copies a consistent snapshot of the whole database to `dest` with
    /// SQLite's online backup, while writers keep working. `dest` must not
    /// exist.
    ///
    /// The copy has no `peer_id`: whoever opens it next makes a new one.
    /// A copy is an earlier state of this database, and peers that knew
    /// the original by its id hold cursors and sync states describing
    /// what came after; under a new id they compare everything once
    /// instead (a relay restored from it would otherwise honour cursors
    /// numbered past what it lost, and never be offered it again).
    pub fn backup_to(&self, dest: &Path) -> Result<(), StoreError> {
        if dest.exists() {
            return Err(StoreError::Exists(dest.display().to_string()));
        }
        let mut target = Connection::open(dest)?;
        let backup = rusqlite::backup::Backup::new(&self.conn, &mut target)?;
        backup.run_to_completion(256, Duration::from_millis(5), None)?;
        drop(backup);
        target.execute("DELETE FROM meta WHERE key = 'peer_id'", [])?;
        target.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
        Ok(())
    }

    /// SQLite's `data_version`: it changes when another connection commits
    /// to the file, never for this connection's own commits.
    pub fn data_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |r| r.get(0))?)
    }

    /// Runs `PRAGMA integrity_check` and returns its complaints, one line
    /// each (empty if the file is sound). SQLite stops the whole check
    /// with an error on some damage (a table's root page); then each table
    /// is checked on its own (`PRAGMA integrity_check(table)`), so the
    /// damage is pinned to tables, and a table that cannot be checked is
    /// a line saying so. Fails only if not even the list of tables reads.
    pub fn integrity_check(&self) -> Result<Vec<String>, StoreError> {
        match self.integrity_lines("PRAGMA integrity_check") {
            Ok(lines) => Ok(lines),
            Err(whole) => {
                let mut stmt = self
                    .conn
                    .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")?;
                let tables: Vec<String> = stmt
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                let mut lines = vec![format!("the whole-file check stopped: {whole}")];
                for table in tables {
                    let sql = format!("PRAGMA integrity_check(\"{}\")", table.replace('"', "\"\""));
                    match self.integrity_lines(&sql) {
                        Ok(found) => lines.extend(found),
                        Err(e) => lines.push(format!("table {table}: cannot be checked: {e}")),
                    }
                }
                Ok(lines)
            }
        }
    }

    /// The complaint lines of one integrity-check pragma.
    fn integrity_lines(&self, sql: &str) -> Result<Vec<String>, rusqlite::Error> {
        let mut stmt = self.conn.prepare(sql)?;
        let rows: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(rows
            .iter()
            .flat_map(|row| row.lines())
            .filter(|line| *line != "ok" && !line.starts_with("*** in database"))
            .map(str::to_owned)
            .collect())
    }

    /// Direct access for the store's own tests and for fixtures.
    #[doc(hidden)]
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

fn apply_one(conn: &Connection, op: &WriteOp, now: i64) -> Result<(), StoreError> {
    match op {
        WriteOp::Append {
            doc,
            collection,
            kind,
            data,
            heads,
            new_changes,
            base,
            content,
        } => {
            let id = doc.as_bytes().as_slice();
            check_base(conn, doc, base)?;
            // One statement for a new document's row and a known one's:
            // the numbering triggers fire for either (insert or update of
            // `heads`), as they did for the insert-then-update before.
            conn.prepare_cached(
                "INSERT INTO docs (id, collection, heads, change_count, size_bytes, chunk_count, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, ?6)
                 ON CONFLICT (id) DO UPDATE SET heads = excluded.heads,
                     change_count = change_count + excluded.change_count,
                     size_bytes = size_bytes + excluded.size_bytes,
                     chunk_count = chunk_count + 1, updated_at = excluded.updated_at",
            )?
            .execute(params![
                id,
                collection.as_str(),
                heads.to_bytes(),
                *new_changes as i64,
                data.len() as i64,
                now
            ])?;
            conn.prepare_cached(CHUNK_INSERT)?
                .execute(params![id, *kind as u8, data])?;
            projection::write(conn, doc, content.as_ref())?;
        }
        WriteOp::Compact {
            doc,
            snapshot,
            heads,
        } => {
            let id = doc.as_bytes().as_slice();
            check_base(conn, doc, heads)?;
            let top: i64 = conn
                .prepare_cached("SELECT coalesce(max(seq), 0) FROM chunks WHERE doc = ?1")?
                .query_row([id], |r| r.get(0))?;
            conn.prepare_cached("DELETE FROM chunks WHERE doc = ?1 AND seq <= ?2")?
                .execute(params![id, top])?;
            conn.prepare_cached(
                "INSERT INTO chunks (doc, seq, kind, data) VALUES (?1, ?2, 0, ?3)",
            )?
            .execute(params![id, top.max(1), snapshot])?;
            conn.prepare_cached("UPDATE docs SET size_bytes = ?2, chunk_count = 1 WHERE id = ?1")?
                .execute(params![id, snapshot.len() as i64])?;
        }
        WriteOp::Delete {
            doc,
            collection,
            at,
            content,
        } => {
            conn.prepare_cached(
                "INSERT INTO docs (id, collection, deleted, deleted_at, heads, change_count, size_bytes, chunk_count, created_at, updated_at)
                 VALUES (?1, ?2, 1, ?3, x'', 0, 0, 0, ?4, ?4)
                 ON CONFLICT (id) DO UPDATE SET deleted = 1, deleted_at = coalesce(deleted_at, ?3), updated_at = ?4",
            )?
            .execute(params![doc.as_bytes().as_slice(), collection.as_str(), at, now])?;
            projection::write(conn, doc, content.as_ref())?;
        }
        WriteOp::FeedCursor {
            consumer,
            collection,
            cursor,
        } => {
            conn.prepare_cached(
                "INSERT INTO feed_cursors (consumer, collection, cursor, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (consumer, collection) DO UPDATE SET cursor = ?3, updated_at = ?4",
            )?
            .execute(params![consumer, collection, *cursor as i64, now])?;
        }
        WriteOp::DeadLetter(letter) => {
            conn.prepare_cached(
                "INSERT INTO feed_dead_letters
                   (consumer, collection, first_seq, last_seq, body, attempts, error, failed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                letter.consumer,
                letter.collection,
                letter.first_seq as i64,
                letter.last_seq as i64,
                letter.body,
                letter.attempts,
                letter.error,
                now
            ])?;
        }
        WriteOp::DropDeadLetter { id } => {
            conn.prepare_cached("DELETE FROM feed_dead_letters WHERE id = ?1")?
                .execute([id])?;
        }
        WriteOp::SyncState { peer, doc, state } => {
            conn.prepare_cached(
                "INSERT INTO sync_states (peer, doc, state, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (peer, doc) DO UPDATE SET state = ?3, updated_at = ?4",
            )?
            .execute(params![peer, doc.as_bytes().as_slice(), state, now])?;
        }
        WriteOp::SyncCursor { collection, cursor } => {
            let value = serde_json::to_string(cursor)
                .map_err(|e| StoreError::BadRow(format!("sync cursor: {e}")))?;
            conn.prepare_cached(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = ?2",
            )?
            .execute(params![cursor_key(collection), value])?;
        }
        WriteOp::RetireSyncStates {
            prefix,
            keep,
            current,
        } => {
            // Keys of one prefix sort together: a range scan of the key.
            let upper = format!("{prefix}\u{10FFFF}");
            conn.prepare_cached(
                "DELETE FROM sync_states WHERE peer IN (
                   SELECT peer FROM sync_states WHERE peer >= ?1 AND peer < ?2 AND peer != ?3
                   GROUP BY peer ORDER BY max(updated_at) DESC LIMIT -1 OFFSET ?4)",
            )?
            .execute(params![
                prefix,
                upper,
                current,
                i64::try_from(*keep).unwrap_or(i64::MAX)
            ])?;
        }
        WriteOp::Project {
            doc,
            heads,
            content,
        } => {
            projection::write_if_current(conn, doc, heads, content.as_ref())?;
        }
        WriteOp::SettleProjection => projection::settle(conn)?,
        WriteOp::PruneProjection => projection::prune(conn)?,
        WriteOp::CreateIndex(target) => index::create(conn, target)?,
        WriteOp::DropIndex(target) => index::remove(conn, target)?,
    }
    Ok(())
}

/// Refuses a write based on heads other than the stored ones (a document
/// not stored yet counts as having empty heads).
fn check_base(conn: &Connection, doc: &DocId, base: &Heads) -> Result<(), StoreError> {
    let stored: Option<Vec<u8>> = conn
        .prepare_cached("SELECT heads FROM docs WHERE id = ?1")?
        .query_row([doc.as_bytes().as_slice()], |r| r.get(0))
        .optional()?;
    if stored.unwrap_or_default() == base.to_bytes() {
        Ok(())
    } else {
        Err(StoreError::Stale { doc: *doc })
    }
}

fn read_meta(r: &Row<'_>) -> Result<DocMeta, StoreError> {
    let id: Vec<u8> = r.get(0)?;
    let id = DocId::from_slice(&id)
        .ok_or_else(|| StoreError::BadRow(format!("document id of {} bytes", id.len())))?;
    let heads: Vec<u8> = r.get(4)?;
    let collection: String = r.get(1)?;
    Ok(DocMeta {
        id,
        collection: Collection::new(collection)
            .map_err(|e| StoreError::BadRow(format!("collection of {id}: {e}")))?,
        deleted: r.get::<_, i64>(2)? != 0,
        deleted_at: r.get(3)?,
        heads: Heads::from_bytes(&heads).ok_or_else(|| {
            StoreError::BadRow(format!(
                "heads of {id} are {} bytes, not a multiple of 32",
                heads.len()
            ))
        })?,
        change_count: r.get::<_, i64>(5)? as u64,
        size_bytes: r.get::<_, i64>(6)? as u64,
        chunk_count: r.get::<_, i64>(7)? as u64,
        created_at: r.get(8)?,
        updated_at: r.get(9)?,
    })
}

#[cfg(test)]
mod tests;
