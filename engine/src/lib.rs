//! Accord's engine: an offline-first replica of Automerge records on SQLite.
//!
//! An app opens a [`Replica`] on a SQLite file and creates, changes, reads,
//! deletes and lists records. Each record is one Automerge document with a
//! [`DocId`] and a collection name; concurrent edits from other replicas
//! merge automatically. Every write returns only after its SQLite
//! transaction has committed.
//!
//! ```
//! use accord_engine::Replica;
//! use serde_json::json;
//!
//! let replica = Replica::open_in_memory()?;
//! let id = replica.create("contacts", &json!({"name": "Ada"}))?;
//! replica.put(&id, "email", &json!("ada@example.org"), Some("add email"))?;
//! assert_eq!(replica.get(&id)?.value, json!({"name": "Ada", "email": "ada@example.org"}));
//! assert_eq!(replica.history(&id)?.len(), 2);
//! # Ok::<(), accord_engine::Error>(())
//! ```
//!
//! # Layout
//!
//! - [`id`]: `DocId`, bs58check-printed like the Automerge ecosystem's ids.
//! - [`replica`]: the app-facing API (records, history, subscriptions,
//!   typed records, the async wrapper, SQL queries over the `records`
//!   view and live queries) and group commit.
//! - [`store`]: SQLite; the only module that knows SQL.
//! - [`json`]: the Automerge ⇄ JSON mapping and paths.
//! - [`guard`]: bounds what peer-supplied Automerge bytes expand to (sans-IO).
//! - [`sync`]: the sans-IO sync core and the wire protocol.
//! - [`driver`]: the client driver (tokio, WebSocket, reconnect); with the
//!   relay, the only code that knows about sockets.
//! - [`codec`]: bincode; the only module that knows it.
//! - [`error`]: typed errors.

pub mod codec;
pub mod driver;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod guard;
pub mod id;
pub mod json;
pub mod replica;
pub mod store;
pub mod sync;
#[doc(hidden)]
pub mod testing;

pub use automerge;
pub use autosurgeon;
pub use driver::{ConnectOptions, ConnectionState, Presence, SyncError, SyncHandle, SyncStatus};
pub use error::{Error, PathError, QueryError, Result, StoreError};
pub use id::{Collection, DocId, Heads, ParseDocIdError, PeerId};
pub use replica::{
    describe_patch, patch_json, AsyncReplica, ChangeEvent, ChangeInfo, ChangeKind, Conflict,
    ConflictValue, FeedEntry, Filter, ListOptions, LiveQuery, Origin, ProjectionIssue,
    ProjectionProblem, Record, RecordMeta, RecvError, ReindexReport, Replica, ReplicaOptions,
    Subscription,
};
pub use store::{DeadLetter, Durability, QueryIndex, QueryRows, SqlValue};
