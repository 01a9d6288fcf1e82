//! The replica: the app-facing API over the store.
//!
//! A [`Replica`] is cheap to clone (an `Arc`), `Send + Sync`, and fully
//! synchronous: every write returns after its SQLite transaction committed.
//! From async code use [`Replica::asynchronous`], which runs the same calls
//! on tokio's blocking pool so the runtime's workers never wait on SQLite.
//!
//! Layout: `commit` is group commit, `cache` the bounded set of loaded
//! documents, `access` reaching one of them (loaded and current), `write`
//! the write path every change and tombstone takes, `bulk` many new
//! records in one transaction, `repair` damaged documents fetched again
//! through sync, `remote` the
//! [`crate::sync::SyncDocs`] implementation, `events` subscriptions,
//! `history` the history API, `typed` the autosurgeon bridge, `asynch` the
//! async wrapper, `query` SQL over the records' content and indexes,
//! `projection` its backfill, rebuild and check, `live` live queries.

mod access;
mod asynch;
mod batches;
mod bulk;
mod cache;
mod commit;
mod conflicts;
mod events;
mod feed;
mod history;
mod live;
pub mod parts;
mod patch;
mod projection;
mod query;
mod remote;
mod repair;
mod together;
mod typed;
mod write;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use automerge::transaction::{CommitOptions, Transactable, Transaction};
use automerge::{ActorId, Automerge};

use crate::error::{Error, Result};
use crate::id::{Collection, DocId, Heads, PeerId};
use crate::json::{self, Path as JsonPath};
use crate::store::{now_ms, DocMeta, Durability, Store};
use cache::{Cache, DocState};
use commit::Committer;
use write::IfUnknown;

pub use asynch::AsyncReplica;
pub use conflicts::{Conflict, ConflictValue};
pub use events::{
    ChangeEvent, ChangeKind, Filter, Origin, RecvError, Subscription, SUBSCRIPTION_CAPACITY,
};
pub use feed::FeedEntry;
pub use history::{describe_patch, ChangeInfo};
pub use live::LiveQuery;
pub use patch::patch_json;
pub use projection::{ProjectionIssue, ProjectionProblem, ReindexReport};

/// How many leading bytes of an actor id name the device (the database
/// file) that wrote with it; the rest is fresh per open.
pub const DEVICE_BYTES: usize = 8;

/// The device prefix of every actor id a database writes with: a digest of
/// its stable peer id (not the id itself, which also names it to relays).
fn device_prefix(peer: &PeerId) -> [u8; DEVICE_BYTES] {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(b"accord device\0")
        .chain_update(peer.as_str().as_bytes())
        .finalize();
    let mut prefix = [0; DEVICE_BYTES];
    prefix.copy_from_slice(&digest[..DEVICE_BYTES]);
    prefix
}

/// The default of [`ReplicaOptions::max_sync_message_bytes`]: 4 MiB.
pub const DEFAULT_SYNC_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The default of [`ReplicaOptions::max_sync_message_ops`].
pub const DEFAULT_SYNC_MESSAGE_OPS: usize = 100_000;

/// How a replica is opened.
#[derive(Debug, Clone)]
pub struct ReplicaOptions {
    /// `synchronous` mode of SQLite; see [`Durability`].
    pub durability: Durability,
    /// How hard a commit of changes received from a peer (the relay)
    /// works; never harder than `durability`. The default, `Normal`,
    /// skips the fsync for them: a crash of the app, the process or its
    /// sync task loses nothing, and a power loss or OS crash can only drop
    /// the received changes committed since the last fsync (the next local
    /// write's, or a checkpoint's) together with the sync cursor and sync
    /// states saved with them, so the relay sends them again on the next
    /// connection. Local writes keep `durability`. A relay sets `Full`:
    /// what it answers acknowledges a peer's changes as stored.
    pub received_durability: Durability,
    /// Compact a document once this many incremental chunks accumulated.
    pub compact_after_chunks: u64,
    /// How many documents to keep loaded in memory.
    pub cache_capacity: usize,
    /// Fail instead of creating the database when the file is missing.
    pub must_exist: bool,
    /// Keep the `records` projection that queries read (default `true`).
    /// A replica that never queries (a relay, say) may save the work of
    /// writing it; its writes then drop the rows they touch and flag the
    /// projection, and the next replica opened with it on fills them in.
    pub projection: bool,
    /// Largest batch of changes one sync message to a peer carries, in
    /// bytes: a longer history goes in several rounds (a single change
    /// larger than this still goes alone). Keep it well under the frame
    /// limit of the peers (the relay's default is 16 MiB).
    pub max_sync_message_bytes: usize,
    /// Largest number of ops one sync message to a peer carries (peers
    /// refuse messages that would cost them too much memory to apply; see
    /// [`crate::guard`]).
    pub max_sync_message_ops: usize,
    /// Largest document, in stored bytes, this replica accepts from peers
    /// (`None`: no limit). Changes that would take a document past it are
    /// refused with [`Error::TooLarge`] and nothing is applied. The relay
    /// sets it (`--max-document-bytes`); apps usually leave it unset.
    pub max_document_bytes: Option<u64>,
    /// What one batch of Automerge bytes from outside (a peer's sync
    /// message, `merge_bytes`, `import`) may expand to before Automerge
    /// sees it; more is refused with [`Error::Guard`] ([`crate::guard`]).
    pub message_budget: crate::guard::Budget,
    /// Fetch a record whose stored data fails to load again from peers
    /// (default `true`): sync then treats it as holding only what was
    /// fetched so far, so the peer sends everything, and the damaged rows
    /// are replaced once the fetched copy holds every change they recorded
    /// (see [`Replica::damaged`]). A relay turns it off: the copy being
    /// fetched is not stored yet, and the relay's answers acknowledge
    /// what they contain as stored, so a damaged document there stays an
    /// error (`storage_unavailable` to peers) for the operator to repair.
    pub refetch_damaged: bool,
    /// For simulations: draw ids from a generator seeded with this value
    /// and record every change at time 0, so a run can be replayed exactly.
    #[doc(hidden)]
    pub deterministic: Option<u64>,
}

impl Default for ReplicaOptions {
    fn default() -> Self {
        ReplicaOptions {
            durability: Durability::default(),
            received_durability: Durability::Normal,
            compact_after_chunks: 64,
            cache_capacity: 1024,
            must_exist: false,
            projection: true,
            max_sync_message_bytes: DEFAULT_SYNC_MESSAGE_BYTES,
            max_sync_message_ops: DEFAULT_SYNC_MESSAGE_OPS,
            max_document_bytes: None,
            message_budget: crate::guard::Budget::default(),
            refetch_damaged: true,
            deterministic: None,
        }
    }
}

/// A record's content as of some heads.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The record.
    pub id: DocId,
    /// Its collection.
    pub collection: Collection,
    /// The heads this content is at.
    pub heads: Heads,
    /// The content as JSON (mapping in [`crate::json`]).
    pub value: serde_json::Value,
}

impl Record {
    /// The value at a dot-separated path such as `address.lines.0`.
    pub fn get(&self, path: &str) -> Result<&serde_json::Value> {
        let path: JsonPath = path.parse()?;
        Ok(path.lookup(&self.value)?)
    }
}

/// Which records a listing includes.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Only this collection (all collections if `None`).
    pub collection: Option<String>,
    /// Include records that carry a tombstone.
    pub include_deleted: bool,
}

impl ListOptions {
    /// Every record of every collection, deleted ones too.
    pub fn everything() -> Self {
        ListOptions {
            collection: None,
            include_deleted: true,
        }
    }
}

/// Cheap metadata of a record, as listings return it.
pub type RecordMeta = DocMeta;

/// A local-first database of Automerge records on one SQLite file.
#[derive(Debug, Clone)]
pub struct Replica {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The read-only connection apps' queries run on (file replicas only),
    /// opened on first use. Closes before the writer, like `reader`.
    queries: parking_lot::Mutex<Option<crate::store::QueryConn>>,
    /// A read-only connection beside the writer (file replicas only), so
    /// reads do not queue behind commits. Declared before the writer so it
    /// closes first: the writer, closing last, checkpoints the WAL into the
    /// main file.
    reader: Option<parking_lot::Mutex<Store>>,
    /// Writes, and reads too for in-memory replicas.
    committer: Committer,
    /// Loaded documents.
    cache: Cache,
    /// Documents whose stored data failed to load, with the copy sync is
    /// fetching again.
    repairs: repair::Repairs,
    /// Subscribers to committed changes.
    listeners: events::Listeners,
    /// The actor id of this replica's changes; fresh per open, so two
    /// processes on one file never reuse (actor, seq) pairs.
    actor: ActorId,
    /// The database's stable identity towards peers (sync states are kept
    /// under it on the other side).
    peer_id: PeerId,
    /// Where the file is (`None` in memory).
    path: Option<PathBuf>,
    /// The options it was opened with.
    options: ReplicaOptions,
    /// The seeded generator of a deterministic replica.
    rng: Option<parking_lot::Mutex<rand::rngs::StdRng>>,
}

impl Replica {
    /// Opens (or creates) a replica on a SQLite file with default options.
    /// The schema is created or migrated on open; a file written by an
    /// older Accord keeps opening.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use accord_engine::Replica;
    /// let replica = Replica::open(dir.path().join("contacts.db"))?;
    /// assert!(replica.list("contacts")?.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, ReplicaOptions::default())
    }

    /// Opens a replica on a SQLite file.
    pub fn open_with(path: impl AsRef<Path>, options: ReplicaOptions) -> Result<Self> {
        let path = path.as_ref();
        let store = if options.must_exist {
            Store::open_existing(path, options.durability)?
        } else {
            Store::open(path, options.durability)?
        };
        let reader = Store::open_reader(path)?;
        let replica = Self::build(store, Some(reader), Some(path.to_owned()), options)?;
        replica.backfill_projection()?;
        Ok(replica)
    }

    /// A replica that lives in memory only, for tests and scratch work.
    pub fn open_in_memory() -> Result<Self> {
        let store = Store::open_in_memory()?;
        Self::build(store, None, None, ReplicaOptions::default())
    }

    fn build(
        store: Store,
        reader: Option<Store>,
        path: Option<PathBuf>,
        options: ReplicaOptions,
    ) -> Result<Self> {
        let peer_id = store.peer_id()?;
        let peer_id = PeerId::new(peer_id)
            .map_err(|e| crate::error::StoreError::BadRow(format!("meta peer_id: {e}")))?;
        let mut rng: Option<rand::rngs::StdRng> =
            options.deterministic.map(rand::SeedableRng::seed_from_u64);
        // The actor: this file's device prefix, then a suffix fresh per
        // open, so that `log` can tell devices apart while no two
        // processes ever share an actor.
        let suffix: [u8; 8] = match rng.as_mut() {
            Some(rng) => rand::Rng::random(rng),
            None => rand::random(),
        };
        let mut actor = device_prefix(&peer_id).to_vec();
        actor.extend_from_slice(&suffix);
        let actor = ActorId::from(actor);
        Ok(Replica {
            inner: Arc::new(Inner {
                queries: parking_lot::Mutex::new(None),
                committer: Committer::new(store),
                reader: reader.map(parking_lot::Mutex::new),
                cache: Cache::new(options.cache_capacity),
                repairs: repair::Repairs::default(),
                listeners: events::Listeners::default(),
                actor,
                peer_id,
                path,
                options,
                rng: rng.map(parking_lot::Mutex::new),
            }),
        })
    }

    /// This database's stable peer id.
    pub fn peer_id(&self) -> &PeerId {
        &self.inner.peer_id
    }

    /// The file this replica lives in (`None` in memory).
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// This database's device id as `log` shows it: the first
    /// [`DEVICE_BYTES`] bytes (in hex) of every actor id this file's
    /// replicas write with, stable across processes and opens.
    /// [`ChangeInfo::device`] is the same for each change, so changes made
    /// here are those whose `device` equals this.
    pub fn device(&self) -> String {
        ActorId::from(&device_prefix(&self.inner.peer_id)[..]).to_hex_string()
    }

    /// The actor id that signs this replica's changes.
    pub fn actor(&self) -> &ActorId {
        &self.inner.actor
    }

    /// An async handle on the same replica.
    pub fn asynchronous(&self) -> AsyncReplica {
        AsyncReplica::new(self.clone())
    }

    /// Creates a record in `collection` whose content is the given JSON
    /// object, and returns its id once it is committed.
    ///
    /// ```
    /// use accord_engine::Replica;
    /// use serde_json::json;
    /// let replica = Replica::open_in_memory()?;
    /// let id = replica.create("contacts", &json!({"name": "Ada"}))?;
    /// assert_eq!(replica.get(&id)?.collection, "contacts");
    /// assert!(replica.create("no spaces allowed", &json!({})).is_err());
    /// # Ok::<(), accord_engine::Error>(())
    /// ```
    pub fn create(&self, collection: &str, content: &serde_json::Value) -> Result<DocId> {
        self.create_with(collection, None, |tx| JsonPath::root().set(tx, content))
    }

    /// Creates a record whose first change is made by `f`.
    pub fn create_with<F, E>(&self, collection: &str, message: Option<&str>, f: F) -> Result<DocId>
    where
        F: FnOnce(&mut Transaction<'_>) -> Result<(), E>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let collection: Collection = collection.parse()?;
        let id = self.new_id();
        let mut doc = Automerge::new().with_actor(self.inner.actor.clone());
        let mut tx = doc.transaction();
        if let Err(e) = f(&mut tx) {
            return Err(Error::Aborted {
                doc: id,
                source: e.into(),
            });
        }
        if tx.pending_ops() == 0 {
            // An empty record still gets a first change, so it has heads,
            // keeps its message and can sync like any other.
            tx.rollback();
            doc.empty_commit(self.commit_options(message));
        } else {
            tx.commit_with(self.commit_options(message));
        }
        self.insert_new(id, &collection, doc, Origin::Local)?;
        Ok(id)
    }

    /// Stores a document that no store has seen under `id`.
    fn insert_new(
        &self,
        id: DocId,
        collection: &Collection,
        doc: Automerge,
        origin: Origin,
    ) -> Result<()> {
        let entry = self.inner.cache.entry(&id);
        let mut cached = entry.lock();
        self.insert_into(id, collection, doc, origin, &mut cached)
    }

    /// Changes a record: `f` edits it inside an Automerge transaction, and
    /// the change is committed to SQLite before this returns. If `f` fails,
    /// nothing is written. A change that edits nothing writes nothing.
    pub fn change<F, T, E>(&self, id: &DocId, message: Option<&str>, f: F) -> Result<T>
    where
        F: FnOnce(&mut Transaction<'_>) -> Result<T, E>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let entry = self.entry(id)?;
        let mut cached = entry.lock();
        let state = self.stored(id, &mut cached)?;
        if state.deleted {
            return Err(Error::Deleted(*id));
        }
        let before = state.doc.get_heads();
        let mut tx = state.doc.transaction();
        let out = match f(&mut tx) {
            Ok(out) => out,
            Err(e) => {
                tx.rollback();
                return Err(Error::Aborted {
                    doc: *id,
                    source: e.into(),
                });
            }
        };
        if tx.pending_ops() == 0 {
            tx.rollback();
            return Ok(out);
        }
        tx.commit_with(self.commit_options(message));
        self.persist_since(id, &mut cached, &before, Origin::Local)?;
        Ok(out)
    }

    /// Sets the value at a dot-separated path (see [`crate::json::Path`]).
    pub fn put(
        &self,
        id: &DocId,
        path: &str,
        value: &serde_json::Value,
        message: Option<&str>,
    ) -> Result<()> {
        let path: JsonPath = path.parse()?;
        self.change(id, message, |tx| path.set(tx, value))
    }

    /// Compacts one record now, whatever its chunk count.
    pub fn compact(&self, id: &DocId) -> Result<()> {
        let entry = self.entry(id)?;
        let mut cached = entry.lock();
        let state = self.stored(id, &mut cached)?;
        Ok(self.compact_state(id, state)?)
    }

    /// Compacts every record that is stored as more than one chunk; returns
    /// how many were compacted. Records that fail (damaged ones) are logged
    /// and skipped.
    pub fn compact_all(&self) -> Result<usize> {
        let metas = self.list_with(&ListOptions::everything())?;
        let mut done = 0;
        for meta in metas.iter().filter(|m| m.chunk_count > 1) {
            // A damaged record is skipped (and logged), not a reason to
            // leave the others uncompacted.
            match self.compact(&meta.id) {
                Ok(()) => done += 1,
                Err(e) => tracing::warn!(doc = %meta.id, error = %e, "not compacted"),
            }
        }
        Ok(done)
    }

    /// Deletes a record: sets a tombstone that replicates to every peer.
    /// The history stays readable; the record leaves listings and `get`.
    pub fn delete(&self, id: &DocId) -> Result<()> {
        self.tombstone(id, None, Origin::Local, IfUnknown::Refuse)?;
        Ok(())
    }

    /// The record's current content.
    ///
    /// ```
    /// use accord_engine::{Error, Replica};
    /// use serde_json::json;
    /// let replica = Replica::open_in_memory()?;
    /// let id = replica.create("contacts", &json!({"name": "Ada"}))?;
    /// let record = replica.get(&id)?;
    /// assert_eq!(record.get("name")?, &json!("Ada"));
    /// replica.delete(&id)?;
    /// assert!(matches!(replica.get(&id), Err(Error::Deleted(_))));
    /// # Ok::<(), accord_engine::Error>(())
    /// ```
    pub fn get(&self, id: &DocId) -> Result<Record> {
        self.read(id, |doc, collection| Record {
            id: *id,
            collection: collection.clone(),
            heads: Heads::new(doc.get_heads()),
            value: json::to_json(&doc.hydrate(None)),
        })
    }

    /// Runs `f` on the record's Automerge document (read-only access to
    /// everything Automerge offers: text, counters, conflicts, cursors).
    pub fn read<T>(&self, id: &DocId, f: impl FnOnce(&Automerge, &Collection) -> T) -> Result<T> {
        self.read_any(id, |state| {
            if state.deleted {
                Err(Error::Deleted(*id))
            } else {
                Ok(f(&state.doc, &state.collection))
            }
        })?
    }

    /// Like [`Replica::read`] but also for deleted records (history stays
    /// readable after a delete).
    pub(crate) fn read_any<T>(&self, id: &DocId, f: impl FnOnce(&DocState) -> T) -> Result<T> {
        let entry = self.entry(id)?;
        let mut cached = entry.lock();
        Ok(f(self.stored(id, &mut cached)?))
    }

    /// The record's metadata row (also for deleted records).
    pub fn meta(&self, id: &DocId) -> Result<RecordMeta> {
        self.read_store(|s| s.meta(id))?.ok_or(Error::NotFound(*id))
    }

    /// The live records of one collection, from metadata only.
    pub fn list(&self, collection: &str) -> Result<Vec<RecordMeta>> {
        self.list_with(&ListOptions {
            collection: Some(collection.to_owned()),
            include_deleted: false,
        })
    }

    /// Records matching `options`, from metadata only.
    pub fn list_with(&self, options: &ListOptions) -> Result<Vec<RecordMeta>> {
        Ok(self.read_store(|s| s.list(options.collection.as_deref(), options.include_deleted))?)
    }

    /// Every collection with its number of live records.
    pub fn collections(&self) -> Result<Vec<(String, u64)>> {
        Ok(self.read_store(Store::collections)?)
    }

    /// Subscribes to committed changes matching `filter`.
    pub fn subscribe(&self, filter: Filter) -> Subscription {
        self.inner.listeners.subscribe(filter)
    }

    /// The whole document in Automerge's binary format, which any Automerge
    /// implementation can load.
    pub fn save(&self, id: &DocId) -> Result<Vec<u8>> {
        self.read_any(id, |s| s.doc.save())
    }

    /// Imports an Automerge document (as written by `save` or any Automerge
    /// implementation) as a new record and returns its id. Bytes Automerge
    /// refuses, or panics on (automerge 0.12 does on some forged
    /// documents the guard cannot tell from valid ones), are
    /// [`Error::NotAutomerge`].
    pub fn import(&self, collection: &str, bytes: &[u8]) -> Result<DocId> {
        let collection: Collection = collection.parse()?;
        crate::guard::inspect(bytes, &self.inner.options.message_budget)?;
        let not_automerge = |e| Error::NotAutomerge(Box::new(e));
        let doc = std::panic::catch_unwind(|| Automerge::load(bytes))
            .map_err(|panic| {
                not_automerge(automerge::AutomergeError::EncodingError(format!(
                    "Automerge failed on these bytes: {}",
                    panic_message(panic.as_ref())
                )))
            })?
            .map_err(not_automerge)?;
        let id = self.new_id();
        self.insert_new(id, &collection, doc, Origin::Local)?;
        Ok(id)
    }

    /// Merges Automerge bytes (a saved document or changes) into record
    /// `id`, creating it in `collection` if this replica does not have it.
    /// This is how content from files and other tools arrives. Returns
    /// whether the record changed; a record of another collection is
    /// refused with [`Error::WrongCollection`].
    pub fn merge_bytes(
        &self,
        id: &DocId,
        collection: &str,
        bytes: &[u8],
        origin: Origin,
    ) -> Result<bool> {
        let collection: Collection = collection.parse()?;
        crate::guard::inspect(bytes, &self.inner.options.message_budget)?;
        self.absorb(id, &collection, origin, bytes.len() as u64, |doc| {
            doc.load_incremental(bytes).map(|_| ())
        })
    }

    fn emit(
        &self,
        doc: DocId,
        collection: &Collection,
        kind: ChangeKind,
        origin: Origin,
        heads: Heads,
    ) {
        self.deliver(ChangeEvent {
            doc,
            collection: collection.clone(),
            kind,
            origin,
            heads,
        });
    }

    /// A fresh document id.
    fn new_id(&self) -> DocId {
        match &self.inner.rng {
            Some(rng) => DocId::from_bytes(rand::Rng::random(&mut *rng.lock())),
            None => DocId::random(),
        }
    }

    /// Commit options with this moment's time, in seconds since the Unix
    /// epoch as automerge-js records it, and the message if any.
    fn commit_options(&self, message: Option<&str>) -> CommitOptions {
        let time = if self.inner.rng.is_some() {
            0
        } else {
            now_ms() / 1000
        };
        let opts = CommitOptions::default().with_time(time);
        match message {
            Some(m) => opts.with_message(m),
            None => opts,
        }
    }

    /// Writes a consistent copy of the whole database to `dest` (SQLite's
    /// online backup; writers keep working meanwhile). The copy is a
    /// complete replica or relay database, without this one's peer id:
    /// opened, it takes a new one, so peers that synced with the original
    /// after the copy was made compare everything with it once instead of
    /// trusting cursors it can no longer honour.
    pub fn backup_to(&self, dest: &Path) -> Result<()> {
        Ok(self.read_store(|s| s.backup_to(dest))?)
    }

    /// How many documents are loaded in memory now.
    pub fn loaded_documents(&self) -> usize {
        self.inner.cache.len()
    }
}

/// Loads a document from its stored chunks, checked against its metadata
/// (for the fuzzing entry points).
pub(crate) fn load_stored(stored: crate::store::StoredDoc, actor: &ActorId) -> Result<()> {
    DocState::load(stored, actor)
        .map(|_| ())
        .map_err(Error::from)
}

/// The message a caught panic carried, for an error that reports it.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_owned())
}

/// Checks a collection name (see [`Collection`]).
pub fn check_collection(name: &str) -> Result<()> {
    Collection::new(name)?;
    Ok(())
}

#[cfg(test)]
mod tests;
