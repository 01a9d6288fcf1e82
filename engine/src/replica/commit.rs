//! Group commit.
//!
//! Writers never open transactions themselves: they queue their write group
//! and then take the store lock. Whoever holds the lock is the leader: it
//! drains the whole queue into one SQLite transaction, commits once, and
//! leaves each queued writer's result in its outcome cell. A writer that finds its
//! result already there when it gets the lock returns at once. Under
//! contention, N concurrent writers share about one fsync instead of N; with
//! one writer it degenerates to a plain transaction per write.
//!
//! The committer also notices other writers of the file: SQLite's
//! `data_version` of the write connection changes only when *another*
//! connection commits, so each time it moves the foreign-write epoch goes
//! up, and cached documents checked in an older epoch are checked against
//! the file again before use (see `access`). Reading it costs one pragma
//! on an idle writer, nothing while a commit is in flight (the leader reads
//! it), and the epoch never moves while this process is the only writer.
//!
//! A thread may also hold its writes for one commit
//! ([`Committer::hold`]/[`Committer::release`]): while it holds, its groups
//! are queued and `submit` returns at once, and the change events of those
//! writes wait with them; `release` commits whatever is still queued (often
//! everything, in one transaction) and hands the events back, or reports
//! the first group that failed, with every document the held groups
//! touched.
//! The sync driver holds while it applies a run of received frames, so a
//! cold sync commits once per run instead of once per document; nothing
//! it generated from those writes leaves before `release` succeeds.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::events::ChangeEvent;
use crate::error::StoreError;
use crate::id::DocId;
use crate::store::{Store, WriteOp};

/// Where a leader leaves one queued group's result.
type Outcome = Arc<Mutex<Option<Result<(), StoreError>>>>;

/// What a group's commit owes the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keep {
    /// As the replica's [`crate::Durability`] says (local writes).
    Durable,
    /// Nothing beyond the WAL's order: the group holds only what a peer
    /// sends again if a power loss drops it (see
    /// `ReplicaOptions::received_durability`). A batch fsyncs unless every
    /// group in it is recoverable.
    Recoverable,
}

/// A queued group: its writes, how it must be kept, and its outcome.
type Queued = (Vec<WriteOp>, Keep, Outcome);

/// The groups a thread holds for one commit.
#[derive(Debug)]
struct Held {
    /// Which committer they were submitted to (its address).
    committer: usize,
    /// Their outcomes, filled when they are committed, and the documents
    /// each writes.
    groups: Vec<(Outcome, Vec<DocId>)>,
    /// Every document they write.
    docs: HashSet<DocId>,
    /// Whether any of them writes a document's content or tombstone, which
    /// takes the next number of its collection's sequence at the commit.
    numbered: bool,
    /// The change events of those writes, delivered after the commit.
    events: Vec<ChangeEvent>,
}

thread_local! {
    /// What this thread holds, if it holds.
    static HELD: RefCell<Option<Held>> = const { RefCell::new(None) };
}

/// Why held writes were not committed.
#[derive(Debug)]
pub(crate) struct NotCommitted {
    /// The first failure.
    pub error: StoreError,
    /// Every document the held writes touched: their cached state may be
    /// ahead of the store.
    pub docs: BTreeSet<DocId>,
    /// The documents of the groups that failed (the others committed).
    pub failed: BTreeSet<DocId>,
    /// The held change events.
    pub events: Vec<ChangeEvent>,
}

/// The documents a group writes.
fn docs_of(ops: &[WriteOp]) -> impl Iterator<Item = DocId> + '_ {
    ops.iter().filter_map(|op| match op {
        WriteOp::Append { doc, .. }
        | WriteOp::Compact { doc, .. }
        | WriteOp::Delete { doc, .. }
        | WriteOp::Project { doc, .. }
        | WriteOp::SyncState { doc, .. } => Some(*doc),
        _ => None,
    })
}

/// The write path of a replica.
#[derive(Debug)]
pub(crate) struct Committer {
    /// Groups waiting for the next leader.
    queue: Mutex<Vec<Queued>>,
    /// The write connection; holding it makes a thread the leader.
    store: Mutex<Writer>,
    /// Goes up whenever another connection committed to the file.
    foreign_epoch: AtomicU64,
}

/// The write connection and the last `data_version` it reported.
#[derive(Debug)]
struct Writer {
    /// The connection.
    store: Store,
    /// `PRAGMA data_version` when last read.
    data_version: Option<i64>,
}

impl Committer {
    pub(crate) fn new(store: Store) -> Self {
        let committer = Committer {
            queue: Mutex::new(Vec::new()),
            store: Mutex::new(Writer {
                store,
                data_version: None,
            }),
            foreign_epoch: AtomicU64::new(0),
        };
        committer.note_foreign_commits(&mut committer.store.lock());
        committer
    }

    /// The foreign-write epoch, brought up to date if the write connection
    /// is free (a busy one is read by the leader before its commit).
    pub(crate) fn foreign_epoch(&self) -> u64 {
        if let Some(mut writer) = self.store.try_lock() {
            self.note_foreign_commits(&mut writer);
        }
        self.foreign_epoch.load(Ordering::Acquire)
    }

    /// Moves the epoch if another connection committed since last asked
    /// (or if asking failed: then nothing cached can be trusted).
    fn note_foreign_commits(&self, writer: &mut Writer) {
        let now = writer.store.data_version().ok();
        if now.is_none() || (writer.data_version.is_some() && writer.data_version != now) {
            self.foreign_epoch.fetch_add(1, Ordering::AcqRel);
        }
        writer.data_version = now;
    }

    fn address(&self) -> usize {
        self as *const Committer as usize
    }

    /// Writes one group atomically; returns once it is committed, or at
    /// once if this thread holds its writes (see [`Committer::hold`]).
    pub(crate) fn submit(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        self.submit_kept(ops, Keep::Durable)
    }

    /// [`Committer::submit`], kept as `keep` says.
    pub(crate) fn submit_kept(&self, ops: Vec<WriteOp>, keep: Keep) -> Result<(), StoreError> {
        let outcome: Outcome = Arc::default();
        let held = HELD.with_borrow_mut(|held| match held {
            Some(h) if h.committer == self.address() => {
                let docs: Vec<DocId> = docs_of(&ops).collect();
                h.docs.extend(docs.iter().copied());
                h.numbered |= ops
                    .iter()
                    .any(|op| matches!(op, WriteOp::Append { .. } | WriteOp::Delete { .. }));
                h.groups.push((Arc::clone(&outcome), docs));
                true
            }
            _ => false,
        });
        self.queue.lock().push((ops, keep, Arc::clone(&outcome)));
        if held {
            return Ok(());
        }
        self.lead_unless_done(&outcome);
        let result = outcome.lock().take();
        // Our group was queued before we took the lock, so this leader's
        // batch contained it and filled the outcome.
        result.unwrap_or_else(|| Err(StoreError::Batch("write was not committed".into())))
    }

    /// Takes the write connection and commits the whole queue, unless
    /// `outcome` was filled meanwhile by another leader.
    fn lead_unless_done(&self, outcome: &Outcome) {
        let mut writer = self.store.lock();
        if outcome.lock().is_some() {
            return;
        }
        self.note_foreign_commits(&mut writer);
        let batch = std::mem::take(&mut *self.queue.lock());
        let groups: Vec<&[WriteOp]> = batch.iter().map(|(ops, _, _)| ops.as_slice()).collect();
        // Sync bookkeeping is recoverable wherever it comes from, so a run
        // of received changes commits with its sync states unflushed.
        let recoverable = batch.iter().all(|(ops, keep, _)| {
            *keep == Keep::Recoverable || ops.iter().all(WriteOp::is_bookkeeping)
        });
        match writer.store.apply_with(&groups, recoverable) {
            Ok(results) => {
                for ((_, _, s), r) in batch.iter().zip(results) {
                    *s.lock() = Some(r);
                }
            }
            Err(e) => {
                let text = e.to_string();
                for (_, _, s) in &batch {
                    *s.lock() = Some(Err(StoreError::Batch(text.clone())));
                }
            }
        }
    }

    /// Starts holding this thread's writes to this committer; `false` if
    /// the thread already holds (its writes then join that commit).
    pub(crate) fn hold(&self) -> bool {
        HELD.with_borrow_mut(|held| {
            if held.is_some() {
                return false;
            }
            *held = Some(Held {
                committer: self.address(),
                groups: Vec::new(),
                docs: HashSet::new(),
                numbered: false,
                events: Vec::new(),
            });
            true
        })
    }

    /// Keeps `event` until the commit if this thread holds its writes to
    /// this committer; gives it back to be delivered now otherwise.
    pub(crate) fn hold_event(&self, event: ChangeEvent) -> Option<ChangeEvent> {
        HELD.with_borrow_mut(|held| match held {
            Some(h) if h.committer == self.address() => {
                h.events.push(event);
                None
            }
            _ => Some(event),
        })
    }

    /// Stops holding and commits what this thread held and is not
    /// committed yet (another leader may have taken some of it already);
    /// returns once all of it is, with the held events.
    pub(crate) fn release(&self) -> Result<Vec<ChangeEvent>, Box<NotCommitted>> {
        let Some(held) = HELD.take() else {
            return Ok(Vec::new());
        };
        debug_assert_eq!(held.committer, self.address());
        let mut first = None;
        let mut failed = BTreeSet::new();
        for (outcome, written) in &held.groups {
            self.lead_unless_done(outcome);
            let result = outcome.lock().take();
            let result =
                result.unwrap_or_else(|| Err(StoreError::Batch("write was not committed".into())));
            if let Err(e) = result {
                failed.extend(written.iter().copied());
                first.get_or_insert(e);
            }
        }
        match first {
            None => Ok(held.events),
            Some(error) => Err(Box::new(NotCommitted {
                error,
                docs: held.docs.into_iter().collect(),
                failed,
                events: held.events,
            })),
        }
    }

    /// Whether this thread holds a write of `doc` to this committer.
    pub(crate) fn holds(&self, doc: &DocId) -> bool {
        HELD.with_borrow(|held| {
            held.as_ref()
                .is_some_and(|h| h.committer == self.address() && h.docs.contains(doc))
        })
    }

    /// Whether this thread holds writes to this committer that will take
    /// numbers of a collection's sequence when they commit.
    pub(crate) fn holds_numbered(&self) -> bool {
        HELD.with_borrow(|held| {
            held.as_ref()
                .is_some_and(|h| h.committer == self.address() && h.numbered)
        })
    }

    /// Runs a read on the write connection (for in-memory replicas, which
    /// have no separate reader).
    pub(crate) fn with_store<T>(&self, f: impl FnOnce(&Store) -> T) -> T {
        f(&self.store.lock().store)
    }

    /// Runs `f` with the write connection to itself (the queries of an
    /// in-memory replica, which switch it to read-only for their length).
    pub(crate) fn with_store_mut<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        f(&mut self.store.lock().store)
    }
}
