//! The PostgreSQL store's schema and its migrations, run at start.
//!
//! Every table lives in one schema (`--store-schema`, default `accord`),
//! reached through each pooled connection's `search_path`, so several
//! clusters (or tests) share one database without meeting. The version is
//! kept in `accord_meta`; a store written by a newer Accord is refused.
//! Migrations run in one transaction under an advisory lock, so nodes
//! starting together migrate once.

use tokio_postgres::Client;

/// The newest schema version this build knows.
pub const VERSION: i64 = 2;

/// Version 1: documents as idempotent change rows plus an optional
/// snapshot, the `docs` row carrying metadata and the JSON projection,
/// collection sequences and per-peer sync states.
const V1: &str = "
CREATE TABLE accord_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
-- One row per document: what a listing needs, the projection, and the
-- counters that order its change rows. Every append and tombstone takes
-- the document's advisory lock first (pg_advisory_xact_lock).
CREATE TABLE docs (
    id            bytea PRIMARY KEY,
    id_text       text NOT NULL,
    collection    text NOT NULL,
    heads         bytea NOT NULL,
    deleted       boolean NOT NULL DEFAULT false,
    seq           bigint NOT NULL,
    created_seq   bigint NOT NULL,
    changes       bigint NOT NULL DEFAULT 0,
    snapshot_upto bigint NOT NULL DEFAULT 0,
    bytes         bigint NOT NULL DEFAULT 0,
    created_at    bigint NOT NULL,
    updated_at    bigint NOT NULL,
    json          jsonb,
    conflicts     integer NOT NULL DEFAULT 0
);
CREATE INDEX docs_by_collection_seq ON docs (collection, seq);
CREATE INDEX docs_by_collection_id ON docs (collection, id);
-- Changes numbered per document (no) under the document's lock; a change is
-- stored once whatever node appends it (unique hash).
CREATE TABLE changes (
    doc  bytea NOT NULL,
    no   bigint NOT NULL,
    hash bytea NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (doc, no),
    UNIQUE (doc, hash)
);
-- A document saved whole, standing for its changes numbered up to `upto`
-- (which compaction deleted in the same transaction).
CREATE TABLE snapshots (
    doc  bytea PRIMARY KEY,
    upto bigint NOT NULL,
    data bytea NOT NULL
);
-- The last number each collection's sequence gave out. Taking the next
-- one locks the row until commit, so numbers become visible in order.
CREATE TABLE collection_seqs (
    collection text PRIMARY KEY,
    seq        bigint NOT NULL
);
CREATE TABLE sync_states (
    peer       text NOT NULL,
    doc        bytea NOT NULL,
    state      bytea NOT NULL,
    updated_at bigint NOT NULL,
    PRIMARY KEY (peer, doc)
);
-- The same view a SQLite relay's `records` is (ids as printed).
CREATE VIEW records AS
    SELECT id_text AS id, collection, deleted, created_at, updated_at, json, conflicts
    FROM docs;
";

/// Version 2: webhooks on cluster nodes. Where each webhook stands in
/// each collection's feed, and the batches it gave up on.
const V2: &str = "
CREATE TABLE feed_cursors (
    consumer   text NOT NULL,
    collection text NOT NULL,
    cursor     bigint NOT NULL,
    PRIMARY KEY (consumer, collection)
);
CREATE TABLE feed_dead_letters (
    id         bigserial PRIMARY KEY,
    consumer   text NOT NULL,
    collection text NOT NULL,
    first_seq  bigint NOT NULL,
    last_seq   bigint NOT NULL,
    body       text NOT NULL,
    attempts   integer NOT NULL,
    error      text NOT NULL,
    failed_at  bigint NOT NULL
);
";

/// Creates the schema if needed and brings it to [`VERSION`]; returns the
/// cluster's id (made at the first migration, the same for every node).
pub async fn migrate(client: &mut Client, schema: &str) -> anyhow::Result<String> {
    let tx = client.transaction().await?;
    // One migrator at a time, whichever node starts first.
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&schema])
        .await?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}; SET LOCAL search_path TO {schema}"
    ))
    .await?;
    let exists: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM information_schema.tables
               WHERE table_schema = $1 AND table_name = 'accord_meta')",
            &[&schema],
        )
        .await?
        .get(0);
    let found = if exists {
        let row = tx
            .query_opt(
                "SELECT value FROM accord_meta WHERE key = 'schema_version'",
                &[],
            )
            .await?;
        row.map(|r| r.get::<_, String>(0).parse::<i64>())
            .transpose()?
            .unwrap_or(0)
    } else {
        0
    };
    if found > VERSION {
        anyhow::bail!(
            "the PostgreSQL store (schema {schema}) has version {found}, newer than this build supports ({VERSION}); upgrade accord-relay"
        );
    }
    if found < 1 {
        tx.batch_execute(V1).await?;
        let cluster = accord_engine::DocId::random().to_string();
        tx.execute(
            "INSERT INTO accord_meta (key, value) VALUES ('cluster_id', $1)",
            &[&format!("cluster-{cluster}")],
        )
        .await?;
    }
    if found < 2 {
        tx.batch_execute(V2).await?;
    }
    tx.execute(
        "INSERT INTO accord_meta (key, value) VALUES ('schema_version', $1)
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        &[&VERSION.to_string()],
    )
    .await?;
    let cluster: String = tx
        .query_one(
            "SELECT value FROM accord_meta WHERE key = 'cluster_id'",
            &[],
        )
        .await?
        .get(0);
    tx.commit().await?;
    Ok(cluster)
}

/// Whether `name` may be used as a schema name as given (it is written
/// into SQL unquoted).
pub fn valid_schema_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
}
