//! Error types of the engine.
//!
//! [`StoreError`] is everything the SQLite layer can report; [`Error`] is what
//! the replica API returns and wraps a `StoreError` when storage is at fault.
//! Every variant that concerns one record names it.

use crate::id::DocId;

/// A failure of the SQLite store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite itself failed (I/O, locking, a full disk, ...).
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// A document's stored chunks do not load.
    #[error("document {doc} is damaged: {reason}")]
    Corrupt {
        /// The damaged document.
        doc: DocId,
        /// What was wrong with its chunks.
        reason: String,
    },
    /// The document changed in the file since this process loaded it
    /// (another process wrote it); the write was not applied.
    #[error("document {doc} was changed by another writer; reload and retry")]
    Stale {
        /// The document.
        doc: DocId,
    },
    /// A row of the `docs` table does not parse (bad id length, bad heads).
    #[error("corrupt metadata row: {0}")]
    BadRow(String),
    /// The database was written by a newer Accord.
    #[error("database schema version {found} is newer than this build supports ({supported}); upgrade accord")]
    SchemaTooNew {
        /// The version in the file.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// The file is not an Accord database.
    #[error("{0} is not an Accord database")]
    NotAccord(String),
    /// The shared transaction of a group commit failed; this is the first
    /// error's text, reported to every write in the group.
    #[error("commit failed: {0}")]
    Batch(String),
    /// A file that must not exist does (a backup's destination).
    #[error("{0} already exists; not overwriting it")]
    Exists(String),
    /// A database that must exist does not.
    #[error("database {0} does not exist")]
    Missing(String),
    /// A store other than SQLite (the relay's PostgreSQL store) failed:
    /// unreachable, a failed statement or commit.
    #[error("store failed: {0}")]
    Backend(String),
}

/// Why a path could not be followed or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path has an empty segment.
    #[error("bad path '{path}': segments are dot-separated and may not be empty")]
    Syntax {
        /// The path as given.
        path: String,
    },
    /// Nothing is at the path.
    #[error("nothing at path '{path}' (no '{at}')")]
    NotFound {
        /// The whole path.
        path: String,
        /// The prefix that does not exist.
        at: String,
    },
    /// A segment tries to descend into a scalar value.
    #[error("bad path '{path}': '{at}' is not an object or list")]
    NotAContainer {
        /// The whole path.
        path: String,
        /// The prefix that is a scalar.
        at: String,
    },
    /// A non-numeric segment names an element of a list.
    #[error("bad path '{path}': '{at}' indexes a list but is not a number")]
    NotAnIndex {
        /// The whole path.
        path: String,
        /// The offending prefix.
        at: String,
    },
    /// A list index past the end (the length itself appends).
    #[error("bad path '{path}': index {index} is past the end of a list of {len}")]
    IndexOutOfRange {
        /// The whole path.
        path: String,
        /// The index given.
        index: usize,
        /// The list's length.
        len: usize,
    },
    /// The whole record can only be set to a JSON object.
    #[error("a record's content must be a JSON object")]
    RootNotObject,
    /// Automerge refused the write.
    #[error("{0}")]
    Automerge(String),
}

impl PathError {
    pub(crate) fn automerge(e: automerge::AutomergeError) -> Self {
        PathError::Automerge(e.to_string())
    }
}

/// Why a query, or an index on a JSON path, was refused or failed.
/// Nothing was changed in any case.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueryError {
    /// The SQL holds no statement.
    #[error("the query is empty")]
    Empty,
    /// The SQL holds more than one statement.
    #[error("a query is one statement; more follow the first")]
    MultipleStatements,
    /// The statement would change the database (or the connection).
    #[error("queries are read-only: {what} is not allowed")]
    ReadOnly {
        /// What it tried, such as `INSERT into docs` or `ATTACH`.
        what: String,
    },
    /// SQLite could not prepare the statement: a syntax error, an unknown
    /// table, column or function.
    #[error("bad SQL: {message}")]
    Invalid {
        /// SQLite's explanation.
        message: String,
    },
    /// The number of parameters given is not the number the SQL uses.
    #[error(
        "the query uses {expected} parameter{} but {given} {} given",
        if *expected == 1 { "" } else { "s" },
        if *given == 1 { "was" } else { "were" }
    )]
    Params {
        /// Parameters the statement uses (the highest `?N`).
        expected: usize,
        /// Parameters given.
        given: usize,
    },
    /// The statement failed while running (bad JSON path, ...).
    #[error("query failed: {message}")]
    Failed {
        /// SQLite's explanation.
        message: String,
    },
    /// The statement ran inside SQLite for longer than the time limit it
    /// was given (`Replica::query_each_within`); rows handed out before
    /// stay handed out.
    #[error("query stopped: it ran for longer than its time limit of {limit:?}")]
    TimedOut {
        /// The limit it was given.
        limit: std::time::Duration,
    },
    /// A JSON path given for an index does not follow the grammar.
    #[error("bad index path '{path}': {reason}")]
    BadPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A failure of a replica operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No record has this id.
    #[error("no record with id {0}")]
    NotFound(DocId),
    /// The record was deleted; its tombstone is kept.
    #[error("record {0} was deleted")]
    Deleted(DocId),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Automerge refused an operation or bytes.
    #[error("automerge error on {doc}: {source}")]
    Automerge {
        /// The record concerned.
        doc: DocId,
        /// Automerge's own error.
        source: Box<automerge::AutomergeError>,
    },
    /// Bytes given to `import` are not an Automerge document.
    #[error("not an Automerge document: {0}")]
    NotAutomerge(Box<automerge::AutomergeError>),
    /// The closure passed to `change` returned an error; nothing was written.
    #[error("change to {doc} aborted: {source}")]
    Aborted {
        /// The record concerned.
        doc: DocId,
        /// The closure's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A path was wrong.
    #[error(transparent)]
    Path(#[from] PathError),
    /// A collection name is not allowed.
    #[error(transparent)]
    BadCollection(#[from] crate::id::ParseCollectionError),
    /// Heads that this record does not contain.
    #[error("record {doc} has no change {hash}")]
    UnknownHead {
        /// The record concerned.
        doc: DocId,
        /// The hash that is not in its history.
        hash: String,
    },
    /// Reading a record into a Rust type failed.
    #[error("record {doc} does not fit the requested type: {reason}")]
    Hydrate {
        /// The record concerned.
        doc: DocId,
        /// autosurgeon's explanation.
        reason: String,
    },
    /// A short hash matches several changes.
    #[error(
        "'{prefix}' is ambiguous in record {doc}: it matches {count} changes; give more characters"
    )]
    AmbiguousHead {
        /// The record concerned.
        doc: DocId,
        /// The short hash given.
        prefix: String,
        /// How many changes it matches.
        count: usize,
    },
    /// The document exists, but in another collection.
    #[error("document {doc} belongs to collection '{actual}', not '{given}'")]
    WrongCollection {
        /// The document.
        doc: DocId,
        /// Its real collection.
        actual: crate::id::Collection,
        /// The collection that was claimed.
        given: crate::id::Collection,
    },
    /// Bytes from a peer are not a valid sync message or sync state.
    #[error("invalid sync data for {doc}: {reason}")]
    BadSyncData {
        /// The document.
        doc: DocId,
        /// What was wrong.
        reason: String,
    },
    /// Content from a peer would take a record past the replica's size
    /// limit ([`crate::ReplicaOptions::max_document_bytes`]); nothing was
    /// applied.
    #[error("record {doc} would grow to {size} bytes, more than the {limit} this replica accepts")]
    TooLarge {
        /// The record.
        doc: DocId,
        /// Its stored size plus what the peer sent.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Bytes from outside would cost more to load than the replica allows,
    /// or are not Automerge data the guard can measure; nothing was loaded
    /// ([`crate::guard`]).
    #[error("refused before loading: {0}")]
    Guard(#[from] crate::guard::GuardError),
    /// The record id is taken (on import).
    #[error("a record with id {0} already exists")]
    Exists(DocId),
    /// A query or an index request was refused or failed.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// The write path shut down (a writer panicked or the store was closed).
    #[error("the replica's writer is no longer running")]
    Closed,
}

/// The result type of replica operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
