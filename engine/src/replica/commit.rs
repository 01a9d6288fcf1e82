//! Group commit.
//!
//! Writers never open transactions themselves: they queue their write group
//! and then take the store lock. Whoever holds the lock is the leader: it
//! drains the whole queue into one SQLite transaction, commits once, and
//! leaves each queued writer's result in its slot. A writer that finds its
//! result already there when it gets the lock returns at once. Under
//! contention, N concurrent writers share about one fsync instead of N; with
//! one writer it degenerates to a plain transaction per write.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::StoreError;
use crate::store::{Store, WriteOp};

/// Where a leader leaves one queued group's result.
type Slot = Arc<Mutex<Option<Result<(), StoreError>>>>;

/// The write path of a replica.
#[derive(Debug)]
pub(crate) struct Committer {
    /// Groups waiting for the next leader.
    queue: Mutex<Vec<(Vec<WriteOp>, Slot)>>,
    /// The write connection; holding it makes a thread the leader.
    store: Mutex<Store>,
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it:
/// every structure guarded here stays consistent between statements.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Committer {
    pub(crate) fn new(store: Store) -> Self {
        Committer {
            queue: Mutex::new(Vec::new()),
            store: Mutex::new(store),
        }
    }

    /// Writes one group atomically; returns once it is committed.
    pub(crate) fn submit(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        let slot: Slot = Arc::default();
        lock(&self.queue).push((ops, Arc::clone(&slot)));
        let mut store = lock(&self.store);
        if let Some(done) = lock(&slot).take() {
            return done;
        }
        let batch = std::mem::take(&mut *lock(&self.queue));
        let groups: Vec<&[WriteOp]> = batch.iter().map(|(ops, _)| ops.as_slice()).collect();
        match store.apply(&groups) {
            Ok(results) => {
                for ((_, s), r) in batch.iter().zip(results) {
                    *lock(s) = Some(r);
                }
            }
            Err(e) => {
                let text = e.to_string();
                for (_, s) in &batch {
                    *lock(s) = Some(Err(StoreError::Batch(text.clone())));
                }
            }
        }
        drop(store);
        let result = lock(&slot).take();
        // Our group was queued before we took the lock, so this leader's
        // batch contained it and filled the slot.
        result.unwrap_or_else(|| Err(StoreError::Batch("write was not committed".into())))
    }

    /// Runs a read on the write connection (for in-memory replicas, which
    /// have no separate reader).
    pub(crate) fn with_store<T>(&self, f: impl FnOnce(&Store) -> T) -> T {
        f(&lock(&self.store))
    }

    /// Runs `f` with the write connection to itself (the queries of an
    /// in-memory replica, which switch it to read-only for their length).
    pub(crate) fn with_store_mut<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        f(&mut lock(&self.store))
    }
}
