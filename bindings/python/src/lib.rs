//! `accord._accord`: the native half of the `accord` Python package.
//!
//! The package's public API is Python (`python/accord/__init__.py`): it
//! wraps these classes in Python's idiom (keyword arguments, dataclasses,
//! `datetime`, context managers, iterators). This half does the work,
//! always with Python's GIL released while it touches the disk or waits on
//! the network, and hands back plain `dict`/`list`/`str`/`int` values.
//!
//! - `lib.rs`: `Replica`, the records, history and query calls.
//! - `convert`: Python values ⇄ JSON and SQL values.
//! - `errors`: the engine's errors as the package's exceptions.
//! - `events`: `Subscription`, change events as an iterator or callbacks.
//! - `sync`: `Sync`, the engine's driver on a background runtime.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Weak};

use accord_engine::json::Path as JsonPath;
use accord_engine::replica::check_collection;
use accord_engine::{patch_json, ConnectOptions, DocId, Filter, Heads, ListOptions, Replica};
use parking_lot::{Mutex, RwLock};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

mod convert;
mod errors;
mod events;
mod sync;

use convert::{from_json, from_serde, from_sql, hashes, to_json, to_sql};

/// A replica on one SQLite file (or in memory): the native half of
/// `accord.Replica`.
#[pyclass(module = "accord._accord", name = "Replica", frozen)]
struct PyReplica {
    /// `None` once closed.
    replica: RwLock<Option<Replica>>,
    /// The connections started from it, closed with it.
    syncs: Mutex<Vec<Weak<sync::Shared>>>,
}

impl PyReplica {
    fn live(&self) -> PyResult<Replica> {
        self.replica.read().clone().ok_or_else(errors::closed)
    }
}

fn parse_id(text: &str) -> PyResult<DocId> {
    DocId::from_str(text).map_err(|e| errors::bad_id(text, e))
}

/// Resolves full or short change hashes of a record.
fn resolve(replica: &Replica, id: &DocId, at: &[String]) -> PyResult<Heads> {
    replica
        .resolve_heads(id, &at.join(","))
        .map_err(errors::engine)
}

/// A read of the record now, or, given change hashes (`at`), as of them.
fn now_or_at<T>(
    replica: &Replica,
    id: &DocId,
    at: Option<Vec<String>>,
    now: impl FnOnce() -> accord_engine::Result<T>,
    then: impl FnOnce(&[accord_engine::automerge::ChangeHash]) -> accord_engine::Result<T>,
) -> PyResult<T> {
    match at {
        Some(at) => then(resolve(replica, id, &at)?.as_slice()),
        None => now(),
    }
    .map_err(errors::engine)
}

#[pymethods]
impl PyReplica {
    /// Opens (creating if missing) the replica at `path`, or an in-memory
    /// one for `None`.
    #[new]
    #[pyo3(signature = (path=None))]
    fn new(py: Python<'_>, path: Option<PathBuf>) -> PyResult<Self> {
        let replica = py
            .detach(|| match path {
                Some(path) => Replica::open(path),
                None => Replica::open_in_memory(),
            })
            .map_err(errors::engine)?;
        Ok(PyReplica {
            replica: RwLock::new(Some(replica)),
            syncs: Mutex::new(Vec::new()),
        })
    }

    /// The database file, or `None` in memory.
    fn path(&self) -> PyResult<Option<PathBuf>> {
        Ok(self.live()?.path().map(|p| p.to_path_buf()))
    }

    /// This replica's peer id.
    fn peer_id(&self) -> PyResult<String> {
        Ok(self.live()?.peer_id().to_string())
    }

    /// This database file's device id (16 hex digits).
    fn device(&self) -> PyResult<String> {
        Ok(self.live()?.device())
    }

    /// Whether `close` was called.
    fn is_closed(&self) -> bool {
        self.replica.read().is_none()
    }

    /// Stops every connection started from this replica, then closes it.
    fn close(&self, py: Python<'_>) {
        let syncs: Vec<_> = std::mem::take(&mut *self.syncs.lock());
        for shared in syncs.iter().filter_map(Weak::upgrade) {
            shared.close(py);
        }
        let replica = self.replica.write().take();
        py.detach(move || drop(replica));
    }

    /// Creates a record; returns its id.
    #[pyo3(signature = (collection, data, message=None))]
    fn create(
        &self,
        py: Python<'_>,
        collection: &str,
        data: &Bound<'_, PyAny>,
        message: Option<&str>,
    ) -> PyResult<String> {
        let replica = self.live()?;
        if !data.is_instance_of::<PyDict>() {
            return Err(errors::InvalidValue::new_err(format!(
                "a record's content is a dict, not a {}",
                data.get_type().name()?
            )));
        }
        let value = to_json(data, "")?;
        let id = py
            .detach(|| {
                replica.create_with(collection, message, |tx| JsonPath::root().set(tx, &value))
            })
            .map_err(errors::engine)?;
        Ok(id.to_string())
    }

    /// The record as `{id, collection, heads, value}`, now or at `at`;
    /// `value` is the whole content, or what is at the dot `path` (left
    /// out if `missing_ok` and the path leads nowhere).
    #[pyo3(signature = (id, at=None, path=None, missing_ok=false))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        id: &str,
        at: Option<Vec<String>>,
        path: Option<&str>,
        missing_ok: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let replica = self.live()?;
        let id = parse_id(id)?;
        let record = py.detach(|| {
            now_or_at(
                &replica,
                &id,
                at,
                || replica.get(&id),
                |heads| replica.get_at(&id, heads),
            )
        })?;
        let dict = PyDict::new(py);
        dict.set_item("id", record.id.to_string())?;
        dict.set_item("collection", record.collection.as_str())?;
        dict.set_item("heads", hashes(record.heads.as_slice()))?;
        let value = match path.map(|path| record.get(path)) {
            None => &record.value,
            Some(Ok(value)) => value,
            // A well-formed path that leads nowhere: no "value", for the
            // caller's default.
            Some(Err(accord_engine::Error::Path(e)))
                if missing_ok && !matches!(e, accord_engine::PathError::Syntax { .. }) =>
            {
                return Ok(dict);
            }
            Some(Err(e)) => return Err(errors::engine(e)),
        };
        dict.set_item("value", from_json(py, value)?)?;
        Ok(dict)
    }

    /// Sets the value at a dot path (`email`, `address.city`, `tags.0`).
    #[pyo3(signature = (id, path, value, message=None))]
    fn put(
        &self,
        py: Python<'_>,
        id: &str,
        path: &str,
        value: &Bound<'_, PyAny>,
        message: Option<&str>,
    ) -> PyResult<()> {
        let replica = self.live()?;
        let id = parse_id(id)?;
        let value = to_json(value, path)?;
        py.detach(|| replica.put(&id, path, &value, message))
            .map_err(errors::engine)
    }

    /// Deletes a record (a replicated tombstone).
    fn delete(&self, py: Python<'_>, id: &str) -> PyResult<()> {
        let replica = self.live()?;
        let id = parse_id(id)?;
        py.detach(|| replica.delete(&id)).map_err(errors::engine)
    }

    /// Records' metadata, as dicts.
    #[pyo3(signature = (collection=None, include_deleted=false))]
    fn list<'py>(
        &self,
        py: Python<'py>,
        collection: Option<String>,
        include_deleted: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        let replica = self.live()?;
        if let Some(c) = &collection {
            check_collection(c).map_err(errors::engine)?;
        }
        let options = ListOptions {
            collection,
            include_deleted,
        };
        let metas = py
            .detach(|| replica.list_with(&options))
            .map_err(errors::engine)?;
        let list = PyList::empty(py);
        for m in metas {
            let d = PyDict::new(py);
            d.set_item("id", m.id.to_string())?;
            d.set_item("collection", m.collection.as_str())?;
            d.set_item("deleted", m.deleted)?;
            d.set_item("deleted_at", m.deleted_at)?;
            d.set_item("heads", hashes(m.heads.as_slice()))?;
            d.set_item("change_count", m.change_count)?;
            d.set_item("size_bytes", m.size_bytes)?;
            d.set_item("created_at", m.created_at)?;
            d.set_item("updated_at", m.updated_at)?;
            list.append(d)?;
        }
        Ok(list)
    }

    /// Collections and how many live records each holds.
    fn collections(&self, py: Python<'_>) -> PyResult<Vec<(String, u64)>> {
        let replica = self.live()?;
        py.detach(|| replica.collections()).map_err(errors::engine)
    }

    /// The record's current heads.
    fn heads(&self, py: Python<'_>, id: &str) -> PyResult<Vec<String>> {
        let replica = self.live()?;
        let id = parse_id(id)?;
        let heads = py.detach(|| replica.heads(&id)).map_err(errors::engine)?;
        Ok(hashes(heads.as_slice()))
    }

    /// Every change of a record, oldest first, as dicts.
    fn log<'py>(&self, py: Python<'py>, id: &str) -> PyResult<Bound<'py, PyAny>> {
        let replica = self.live()?;
        let id = parse_id(id)?;
        let changes = py.detach(|| replica.history(&id)).map_err(errors::engine)?;
        // The engine's serde form (`accord log --json` prints the same).
        from_serde(py, &changes)
    }

    /// The patches from `before` to `after` (now if `None`), as dicts.
    #[pyo3(signature = (id, before, after=None))]
    fn diff<'py>(
        &self,
        py: Python<'py>,
        id: &str,
        before: Vec<String>,
        after: Option<Vec<String>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let replica = self.live()?;
        let id = parse_id(id)?;
        let patches = py.detach(|| {
            let before = if before.is_empty() {
                Heads::empty()
            } else {
                resolve(&replica, &id, &before)?
            };
            let after = match after {
                Some(after) => resolve(&replica, &id, &after)?,
                None => replica.heads(&id).map_err(errors::engine)?,
            };
            replica
                .diff(&id, before.as_slice(), after.as_slice())
                .map(|ps| ps.iter().map(patch_json).collect::<Vec<_>>())
                .map_err(errors::engine)
        })?;
        let list = PyList::empty(py);
        for p in &patches {
            list.append(from_json(py, p)?)?;
        }
        Ok(list)
    }

    /// Fields holding concurrent values, now or at `at`, as dicts.
    #[pyo3(signature = (id, at=None))]
    fn conflicts<'py>(
        &self,
        py: Python<'py>,
        id: &str,
        at: Option<Vec<String>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let replica = self.live()?;
        let id = parse_id(id)?;
        let conflicts = py.detach(|| {
            now_or_at(
                &replica,
                &id,
                at,
                || replica.conflicts(&id),
                |heads| replica.conflicts_at(&id, heads),
            )
        })?;
        from_serde(py, &conflicts)
    }

    /// One read-only SQL statement; every row as a dict keyed by column.
    #[pyo3(signature = (sql, params=Vec::new()))]
    fn query<'py>(
        &self,
        py: Python<'py>,
        sql: &str,
        params: Vec<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let replica = self.live()?;
        let params = params
            .iter()
            .enumerate()
            .map(|(i, p)| to_sql(p, i))
            .collect::<PyResult<Vec<_>>>()?;
        let rows = py
            .detach(|| replica.query(sql, &params))
            .map_err(errors::engine)?;
        let list = PyList::empty(py);
        for row in &rows.rows {
            let d = PyDict::new(py);
            for (column, value) in rows.columns.iter().zip(row) {
                d.set_item(column, from_sql(py, value)?)?;
            }
            list.append(d)?;
        }
        Ok(list)
    }

    /// Creates (if missing) an index on a JSON path of a collection's
    /// records; returns `(name, collection, path)`.
    fn create_index(
        &self,
        py: Python<'_>,
        collection: &str,
        path: &str,
    ) -> PyResult<(String, String, String)> {
        let replica = self.live()?;
        let index = py
            .detach(|| replica.create_index(collection, path))
            .map_err(errors::engine)?;
        Ok((index.name, index.collection, index.path))
    }

    /// Drops an index; whether it existed.
    fn drop_index(&self, py: Python<'_>, collection: &str, path: &str) -> PyResult<bool> {
        let replica = self.live()?;
        py.detach(|| replica.drop_index(collection, path))
            .map_err(errors::engine)
    }

    /// Every index, as `(name, collection, path)`.
    fn indexes(&self, py: Python<'_>) -> PyResult<Vec<(String, String, String)>> {
        let replica = self.live()?;
        let indexes = py.detach(|| replica.indexes()).map_err(errors::engine)?;
        Ok(indexes
            .into_iter()
            .map(|i| (i.name, i.collection, i.path))
            .collect())
    }

    /// Change events from now on: of one collection, one record, or all.
    #[pyo3(signature = (collection=None, id=None))]
    fn subscribe(
        &self,
        collection: Option<String>,
        id: Option<String>,
    ) -> PyResult<events::PySubscription> {
        let replica = self.live()?;
        let filter = match (collection, id) {
            (Some(_), Some(_)) => {
                return Err(pyo3::exceptions::PyValueError::new_err(
                    "subscribe to a collection or to a record, not both",
                ))
            }
            (Some(c), None) => {
                check_collection(&c).map_err(errors::engine)?;
                Filter::Collection(c)
            }
            (None, Some(id)) => Filter::Doc(parse_id(&id)?),
            (None, None) => Filter::All,
        };
        Ok(events::PySubscription::new(replica.subscribe(filter)))
    }

    /// Starts syncing with a relay in the background; `fallback_urls` are
    /// more nodes of the same relay cluster, tried in turn after `url`.
    #[pyo3(signature = (url, token, collections, reconnect=true, fallback_urls=Vec::new()))]
    fn connect(
        &self,
        url: &str,
        token: String,
        collections: Vec<String>,
        reconnect: bool,
        fallback_urls: Vec<String>,
    ) -> PyResult<sync::PySync> {
        let replica = self.live()?;
        let py_sync = sync::PySync::start(
            &replica,
            url,
            ConnectOptions {
                token,
                collections,
                reconnect,
                fallback_urls,
                ..ConnectOptions::default()
            },
        );
        let mut syncs = self.syncs.lock();
        syncs.retain(|w| w.strong_count() > 0);
        syncs.push(Arc::downgrade(&py_sync.shared));
        Ok(py_sync)
    }
}

/// The native module.
#[pymodule]
fn _accord(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyReplica>()?;
    m.add_class::<events::PySubscription>()?;
    m.add_class::<sync::PySync>()?;
    // Whether the engine was built without optimisations (`maturin
    // develop` without `--release`): several times slower.
    m.add("debug_build", cfg!(debug_assertions))?;
    Ok(())
}
