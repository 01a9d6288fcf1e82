//! The engine's errors as the package's exceptions.
//!
//! The exception classes are Python's, defined in `accord/_errors.py` (so
//! they carry docstrings and plain Python bases such as `ValueError`);
//! this module maps each engine error onto one, keeping the engine's
//! message.

use accord_engine::sync::ErrorCode;
use accord_engine::{Error, PathError, SyncError as EngineSyncError};
use pyo3::PyErr;

pyo3::import_exception!(accord._errors, AccordError);
pyo3::import_exception!(accord._errors, NotFound);
pyo3::import_exception!(accord._errors, Deleted);
pyo3::import_exception!(accord._errors, InvalidId);
pyo3::import_exception!(accord._errors, InvalidPath);
pyo3::import_exception!(accord._errors, InvalidValue);
pyo3::import_exception!(accord._errors, InvalidCollection);
pyo3::import_exception!(accord._errors, UnknownChange);
pyo3::import_exception!(accord._errors, QueryError);
pyo3::import_exception!(accord._errors, StorageError);
pyo3::import_exception!(accord._errors, Closed);
pyo3::import_exception!(accord._errors, SyncError);
pyo3::import_exception!(accord._errors, Unreachable);
pyo3::import_exception!(accord._errors, Forbidden);
pyo3::import_exception!(accord._errors, Timeout);

/// An engine error as the matching exception.
pub fn engine(error: Error) -> PyErr {
    let message = error.to_string();
    match error {
        Error::NotFound(_) => NotFound::new_err(message),
        Error::Deleted(_) => Deleted::new_err(message),
        Error::Store(_) => StorageError::new_err(message),
        Error::Path(_) => InvalidPath::new_err(message),
        // A path that cannot be written fails inside the change.
        Error::Aborted { source, .. } if source.downcast_ref::<PathError>().is_some() => {
            InvalidPath::new_err(source.to_string())
        }
        Error::BadCollection(_) => InvalidCollection::new_err(message),
        Error::UnknownHead { .. } | Error::AmbiguousHead { .. } => UnknownChange::new_err(message),
        Error::Query(_) => QueryError::new_err(message),
        Error::Closed => Closed::new_err(message),
        _ => AccordError::new_err(message),
    }
}

/// A sync error as the matching exception.
pub fn sync(error: EngineSyncError) -> PyErr {
    let message = error.to_string();
    match error {
        EngineSyncError::Unreachable { .. } => Unreachable::new_err(message),
        EngineSyncError::Refused { code, .. }
            if code == ErrorCode::FORBIDDEN
                || code == ErrorCode::UNAUTHORIZED
                || code == ErrorCode::TOKEN_EXPIRED =>
        {
            Forbidden::new_err(message)
        }
        EngineSyncError::Timeout(_) => Timeout::new_err(message),
        EngineSyncError::BadCollection(_) => InvalidCollection::new_err(message),
        _ => SyncError::new_err(message),
    }
}

/// A record id that does not parse.
pub fn bad_id(text: &str, error: impl std::fmt::Display) -> PyErr {
    InvalidId::new_err(format!("'{text}' is not a record id: {error}"))
}

/// The replica was closed by the app.
pub fn closed() -> PyErr {
    Closed::new_err("the replica is closed")
}
