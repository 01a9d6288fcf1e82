//! Python values ⇄ the engine's JSON and SQL values.
//!
//! Records hold JSON, so a value from Python must be `dict` (string keys),
//! `list` or `tuple`, `str`, `int` (64-bit), finite `float`, `bool` or
//! `None`; anything else (a `set`, `bytes`, a `datetime`, NaN, an object)
//! is refused with `accord.InvalidValue` naming where it was, before
//! anything is written.

use accord_engine::automerge::ChangeHash;
use accord_engine::SqlValue;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use pyo3::IntoPyObjectExt;
use serde_json::{Map, Number, Value};

use crate::errors::InvalidValue;

/// How deeply values may nest (Automerge itself has no limit; Python's
/// recursion and the record's readers do).
const MAX_DEPTH: usize = 128;

/// A Python value as JSON, or `InvalidValue` naming the offending place;
/// `base` is the dot path the value is written at (`""` for a record's
/// whole content).
pub fn to_json(value: &Bound<'_, PyAny>, base: &str) -> PyResult<Value> {
    let mut at: Vec<String> = base
        .split('.')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let depth = at.len();
    json_at(value, &mut at, depth)
}

fn json_at(value: &Bound<'_, PyAny>, at: &mut Vec<String>, base: usize) -> PyResult<Value> {
    if at.len() - base > MAX_DEPTH {
        return Err(invalid(at, "nests deeper than 128 levels"));
    }
    if value.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(b) = value.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if value.is_instance_of::<PyInt>() {
        if let Ok(i) = value.extract::<i64>() {
            return Ok(Value::from(i));
        }
        if let Ok(u) = value.extract::<u64>() {
            return Ok(Value::from(u));
        }
        return Err(invalid(at, "is an integer outside the 64-bit range"));
    }
    if let Ok(f) = value.cast::<PyFloat>() {
        return Number::from_f64(f.value())
            .map(Value::Number)
            .ok_or_else(|| invalid(at, "is a float that JSON cannot hold (NaN or infinite)"));
    }
    if let Ok(s) = value.cast::<PyString>() {
        return Ok(Value::String(s.to_cow()?.into_owned()));
    }
    if let Ok(d) = value.cast::<PyDict>() {
        let mut map = Map::new();
        for (k, v) in d.iter() {
            let Ok(key) = k.cast::<PyString>() else {
                return Err(invalid(
                    at,
                    &format!(
                        "has a key of type {} (record keys are strings)",
                        type_name(&k)
                    ),
                ));
            };
            let key = key.to_cow()?.into_owned();
            at.push(key.clone());
            let v = json_at(&v, at, base)?;
            at.pop();
            map.insert(key, v);
        }
        return Ok(Value::Object(map));
    }
    if value.is_instance_of::<PyList>() || value.is_instance_of::<PyTuple>() {
        let mut items = Vec::new();
        for (i, item) in value.try_iter()?.enumerate() {
            at.push(i.to_string());
            items.push(json_at(&item?, at, base)?);
            at.pop();
        }
        return Ok(Value::Array(items));
    }
    Err(invalid(
        at,
        &format!(
            "is a {}; records hold JSON values: dict, list, tuple, str, int, float, bool, None",
            type_name(value)
        ),
    ))
}

fn type_name(value: &Bound<'_, PyAny>) -> String {
    value
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "value of unknown type".into())
}

fn invalid(at: &[String], what: &str) -> PyErr {
    if at.is_empty() {
        InvalidValue::new_err(format!("the value {what}"))
    } else {
        InvalidValue::new_err(format!("the value at '{}' {what}", at.join(".")))
    }
}

/// JSON as the Python value it maps to (`dict`, `list`, `str`, `int`,
/// `float`, `bool`, `None`).
pub fn from_json<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    match value {
        Value::Null => Ok(py.None().into_bound(py)),
        Value::Bool(b) => b.into_bound_py_any(py),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_bound_py_any(py)
            } else if let Some(u) = n.as_u64() {
                u.into_bound_py_any(py)
            } else {
                n.as_f64().unwrap_or(f64::NAN).into_bound_py_any(py)
            }
        }
        Value::String(s) => s.into_bound_py_any(py),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(from_json(py, item)?)?;
            }
            Ok(list.into_any())
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (k, v) in map {
                dict.set_item(k, from_json(py, v)?)?;
            }
            Ok(dict.into_any())
        }
    }
}

/// An engine value with a serde form (history, conflicts) as Python, the
/// same shape as the CLI's `--json` output.
pub fn from_serde<'py>(
    py: Python<'py>,
    value: &impl serde::Serialize,
) -> PyResult<Bound<'py, PyAny>> {
    let json = serde_json::to_value(value)
        .map_err(|e| crate::errors::AccordError::new_err(e.to_string()))?;
    from_json(py, &json)
}

/// A timeout in seconds from Python, refused unless finite and not
/// negative.
pub fn seconds(timeout: f64) -> PyResult<std::time::Duration> {
    if timeout >= 0.0 && timeout.is_finite() {
        Ok(std::time::Duration::from_secs_f64(timeout))
    } else {
        Err(pyo3::exceptions::PyValueError::new_err(format!(
            "timeout must be a non-negative number of seconds, not {timeout}"
        )))
    }
}

/// A query parameter: `None`, `bool`/`int`, `float`, `str` or `bytes`.
pub fn to_sql(value: &Bound<'_, PyAny>, index: usize) -> PyResult<SqlValue> {
    if value.is_none() {
        return Ok(SqlValue::Null);
    }
    if let Ok(b) = value.cast::<PyBool>() {
        return Ok(SqlValue::Integer(b.is_true().into()));
    }
    if value.is_instance_of::<PyInt>() {
        return value.extract::<i64>().map(SqlValue::Integer).map_err(|_| {
            InvalidValue::new_err(format!(
                "query parameter {} is an integer outside SQLite's 64-bit range",
                index + 1
            ))
        });
    }
    if let Ok(f) = value.cast::<PyFloat>() {
        return Ok(SqlValue::Real(f.value()));
    }
    if let Ok(s) = value.cast::<PyString>() {
        return Ok(SqlValue::Text(s.to_cow()?.into_owned()));
    }
    if let Ok(b) = value.cast::<PyBytes>() {
        return Ok(SqlValue::Blob(b.as_bytes().to_vec()));
    }
    Err(InvalidValue::new_err(format!(
        "query parameter {} is a {}; parameters are None, bool, int, float, str or bytes",
        index + 1,
        type_name(value)
    )))
}

/// A result column's value as Python.
pub fn from_sql<'py>(py: Python<'py>, value: &SqlValue) -> PyResult<Bound<'py, PyAny>> {
    match value {
        SqlValue::Null => Ok(py.None().into_bound(py)),
        SqlValue::Integer(i) => i.into_bound_py_any(py),
        SqlValue::Real(f) => f.into_bound_py_any(py),
        SqlValue::Text(s) => s.into_bound_py_any(py),
        SqlValue::Blob(b) => PyBytes::new(py, b).into_bound_py_any(py),
    }
}

/// Change hashes as the hex strings Python sees.
pub fn hashes(hashes: &[ChangeHash]) -> Vec<String> {
    hashes.iter().map(ToString::to_string).collect()
}
