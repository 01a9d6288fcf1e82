//! Schema creation and migrations.
//!
//! The schema version lives in SQLite's `user_version`; `application_id`
//! marks the file as Accord's. [`migrate`] brings any older file up to
//! [`SCHEMA_VERSION`] inside one transaction, and refuses files from a newer
//! build instead of guessing. Each migration is a step from version N-1 to N;
//! never edit a step that has shipped, add the next one.
//!
//! Version 2 adds the query projection (`projection`, the `records` view,
//! `query_indexes`). SQL cannot decode Automerge, so the step only creates
//! the tables and, if the file already holds documents, sets the meta key
//! `projection_stale`; the replica fills the rows in on open.
//!
//! Version 3 adds the projection's `conflicts` column (fields holding
//! concurrent values), readable RFC 3339 times (`created`, `updated`) to
//! `records`, and the `live_records` view (records not deleted). Existing
//! rows are dropped and the projection flagged, so the replica recomputes
//! every row (and its conflict count) on open.
//!
//! Version 4 adds each collection's sequence: `collection_seqs` holds the
//! last number given out per collection, and `docs.seq` the number of a
//! document's latest commit or tombstone (`docs.created_seq`: its first).
//! Triggers on `docs` give the next number to every insert or update that
//! changes a document's heads or tombstone, in the writing transaction, so
//! no write path can forget it and commit order is number order. Existing
//! documents are numbered in order of their last write. It also adds the
//! bookkeeping of the feed's named consumers (the relay's webhooks):
//! `feed_cursors` and `feed_dead_letters`.

use rusqlite::{Connection, TransactionBehavior};

use crate::error::StoreError;

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 4;

/// `application_id` of an Accord database: ASCII "ACRD".
pub const APPLICATION_ID: i64 = 0x4143_5244;

/// The migration steps; entry `i` upgrades version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1: the initial schema.
    r#"
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE docs (
        id           BLOB PRIMARY KEY CHECK (length(id) = 16),
        collection   TEXT NOT NULL,
        deleted      INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1)),
        deleted_at   INTEGER,
        heads        BLOB NOT NULL,
        change_count INTEGER NOT NULL,
        size_bytes   INTEGER NOT NULL,
        chunk_count  INTEGER NOT NULL,
        created_at   INTEGER NOT NULL,
        updated_at   INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX docs_by_collection ON docs (collection, id);

    CREATE TABLE chunks (
        doc  BLOB NOT NULL,
        seq  INTEGER NOT NULL,
        kind INTEGER NOT NULL CHECK (kind IN (0, 1)),
        data BLOB NOT NULL,
        PRIMARY KEY (doc, seq)
    );

    CREATE TABLE sync_states (
        peer       TEXT NOT NULL,
        doc        BLOB NOT NULL,
        state      BLOB NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (peer, doc)
    ) WITHOUT ROWID;
    "#,
    // 1 -> 2: the query projection: each document's current content as
    // JSON, the `records` view apps query, and the registry of JSON-path
    // indexes. Rows are written by the replica (it alone decodes Automerge);
    // a file that already holds documents is flagged for a backfill.
    r#"
    CREATE TABLE projection (
        doc        BLOB NOT NULL UNIQUE CHECK (length(doc) = 16),
        id         TEXT NOT NULL UNIQUE,
        collection TEXT NOT NULL,
        deleted    INTEGER NOT NULL CHECK (deleted IN (0, 1)),
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        heads      BLOB NOT NULL,
        json       TEXT
    );
    CREATE INDEX projection_by_collection ON projection (collection);

    CREATE VIEW records AS
        SELECT id, collection, deleted, created_at, updated_at, json FROM projection;

    CREATE TABLE query_indexes (
        name       TEXT PRIMARY KEY,
        collection TEXT NOT NULL,
        path       TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        UNIQUE (collection, path)
    ) WITHOUT ROWID;

    INSERT INTO meta (key, value)
        SELECT 'projection_stale', '1' WHERE EXISTS (SELECT 1 FROM docs);
    "#,
    // 2 -> 3: conflicts and readable times in the views. The projection is
    // rebuilt (its rows lack the conflict count), as on a first backfill.
    r#"
    ALTER TABLE projection ADD COLUMN conflicts INTEGER NOT NULL DEFAULT 0;
    DELETE FROM projection;
    INSERT INTO meta (key, value)
        SELECT 'projection_stale', '1' WHERE EXISTS (SELECT 1 FROM docs)
        ON CONFLICT (key) DO UPDATE SET value = '1';

    DROP VIEW records;
    CREATE VIEW records AS
        SELECT id, collection, deleted, created_at, updated_at, json, conflicts,
               strftime('%Y-%m-%dT%H:%M:%SZ', created_at / 1000, 'unixepoch') AS created,
               strftime('%Y-%m-%dT%H:%M:%SZ', updated_at / 1000, 'unixepoch') AS updated
        FROM projection;
    CREATE VIEW live_records AS
        SELECT id, collection, created_at, updated_at, json, conflicts, created, updated
        FROM records WHERE deleted = 0;
    "#,
    // 3 -> 4: each collection's sequence (the change feed's cursor, and
    // what a reconnecting replica asks from).
    r#"
    CREATE TABLE collection_seqs (
        collection TEXT PRIMARY KEY,
        last       INTEGER NOT NULL
    ) WITHOUT ROWID;
    ALTER TABLE docs ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE docs ADD COLUMN created_seq INTEGER NOT NULL DEFAULT 0;

    UPDATE docs SET seq = numbered.n, created_seq = numbered.n
        FROM (SELECT id, row_number() OVER (PARTITION BY collection ORDER BY updated_at, id) AS n
              FROM docs) AS numbered
        WHERE docs.id = numbered.id;
    INSERT INTO collection_seqs (collection, last)
        SELECT collection, max(seq) FROM docs GROUP BY collection;
    CREATE INDEX docs_by_seq ON docs (collection, seq);

    CREATE TRIGGER docs_numbered_on_insert AFTER INSERT ON docs
        WHEN NEW.heads != x'' OR NEW.deleted = 1
    BEGIN
        INSERT INTO collection_seqs (collection, last) VALUES (NEW.collection, 1)
            ON CONFLICT (collection) DO UPDATE SET last = last + 1;
        UPDATE docs SET
            seq = (SELECT last FROM collection_seqs WHERE collection = NEW.collection),
            created_seq = (SELECT last FROM collection_seqs WHERE collection = NEW.collection)
            WHERE id = NEW.id;
    END;
    CREATE TRIGGER docs_numbered_on_update AFTER UPDATE OF heads, deleted ON docs
        WHEN NEW.heads IS NOT OLD.heads OR NEW.deleted IS NOT OLD.deleted
    BEGIN
        INSERT INTO collection_seqs (collection, last) VALUES (NEW.collection, 1)
            ON CONFLICT (collection) DO UPDATE SET last = last + 1;
        UPDATE docs SET
            seq = (SELECT last FROM collection_seqs WHERE collection = NEW.collection),
            created_seq = CASE WHEN created_seq = 0
                THEN (SELECT last FROM collection_seqs WHERE collection = NEW.collection)
                ELSE created_seq END
            WHERE id = NEW.id;
    END;

    -- Named consumers of the change feed (the relay's webhooks): how far
    -- each has delivered per collection, and the batches it gave up on.
    CREATE TABLE feed_cursors (
        consumer   TEXT NOT NULL,
        collection TEXT NOT NULL,
        cursor     INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (consumer, collection)
    ) WITHOUT ROWID;
    CREATE TABLE feed_dead_letters (
        id         INTEGER PRIMARY KEY,
        consumer   TEXT NOT NULL,
        collection TEXT NOT NULL,
        first_seq  INTEGER NOT NULL,
        last_seq   INTEGER NOT NULL,
        body       TEXT NOT NULL,
        attempts   INTEGER NOT NULL,
        error      TEXT NOT NULL,
        failed_at  INTEGER NOT NULL
    );
    CREATE INDEX feed_dead_letters_by_consumer ON feed_dead_letters (consumer, id);
    "#,
];

/// Creates or upgrades the schema. Safe to call on every open.
pub fn migrate(conn: &mut Connection, path: &str) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let app_id: i64 = tx.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if app_id != APPLICATION_ID && !(app_id == 0 && version == 0 && is_empty(&tx)?) {
        return Err(StoreError::NotAccord(path.to_owned()));
    }
    for (from, step) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(step)?;
        tracing::info!(from, to = from + 1, "migrated database schema");
    }
    tx.execute_batch(&format!(
        "PRAGMA user_version = {SCHEMA_VERSION}; PRAGMA application_id = {APPLICATION_ID};"
    ))?;
    tx.commit()?;
    Ok(())
}

fn is_empty(conn: &Connection) -> Result<bool, StoreError> {
    let n: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
    Ok(n == 0)
}
