//! The replica from async code.
//!
//! Every call runs the synchronous replica on tokio's blocking thread pool,
//! so SQLite reads, commits and fsyncs never occupy an async worker thread.

use automerge::transaction::Transaction;

use super::{ChangeInfo, Record, RecordMeta, Replica};
use crate::error::{Error, Result};
use crate::id::DocId;

/// An async handle on a [`Replica`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct AsyncReplica {
    /// The replica every call runs against.
    replica: Replica,
}

impl AsyncReplica {
    pub(super) fn new(replica: Replica) -> Self {
        AsyncReplica { replica }
    }

    /// The synchronous replica behind this handle.
    pub fn sync(&self) -> &Replica {
        &self.replica
    }

    /// Runs `f` with the replica on the blocking pool.
    pub async fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&Replica) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let replica = self.replica.clone();
        tokio::task::spawn_blocking(move || f(&replica))
            .await
            .map_err(|_| Error::Closed)?
    }

    /// See [`Replica::create`].
    pub async fn create(&self, collection: &str, content: serde_json::Value) -> Result<DocId> {
        let collection = collection.to_owned();
        self.run(move |r| r.create(&collection, &content)).await
    }

    /// See [`Replica::change`].
    pub async fn change<F, T, E>(&self, id: DocId, message: Option<String>, f: F) -> Result<T>
    where
        F: FnOnce(&mut Transaction<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.run(move |r| r.change(&id, message.as_deref(), f))
            .await
    }

    /// See [`Replica::put`].
    pub async fn put(&self, id: DocId, path: String, value: serde_json::Value) -> Result<()> {
        self.run(move |r| r.put(&id, &path, &value, None)).await
    }

    /// See [`Replica::get`].
    pub async fn get(&self, id: DocId) -> Result<Record> {
        self.run(move |r| r.get(&id)).await
    }

    /// See [`Replica::delete`].
    pub async fn delete(&self, id: DocId) -> Result<()> {
        self.run(move |r| r.delete(&id)).await
    }

    /// See [`Replica::list`].
    pub async fn list(&self, collection: &str) -> Result<Vec<RecordMeta>> {
        let collection = collection.to_owned();
        self.run(move |r| r.list(&collection)).await
    }

    /// See [`Replica::history`].
    pub async fn history(&self, id: DocId) -> Result<Vec<ChangeInfo>> {
        self.run(move |r| r.history(&id)).await
    }

    /// See [`Replica::heads`].
    pub async fn heads(&self, id: DocId) -> Result<crate::id::Heads> {
        self.run(move |r| r.heads(&id)).await
    }
}
