//! The mapping between Automerge values and JSON.
//!
//! Reading (documented in `docs/storage-format.md` and used by the CLI's
//! `get` and by queries alike):
//!
//! | Automerge | JSON |
//! |---|---|
//! | map | object |
//! | list | array |
//! | text | string |
//! | str | string |
//! | int, uint, f64 | number (a non-finite f64 becomes `null`) |
//! | counter | number (its current value) |
//! | timestamp | number (milliseconds since the Unix epoch) |
//! | boolean | boolean |
//! | bytes | string, standard base64 with padding |
//! | null, unknown | null |
//!
//! Writing JSON into a document: objects become maps, arrays lists, strings
//! scalar strings (last writer wins; use a change closure with `Text` for
//! collaborative text), integers `int` (or `uint` above `i64::MAX`), other
//! numbers `f64`.

use automerge::hydrate;
use automerge::transaction::Transactable;
use automerge::{ObjId, ObjType, Prop, ScalarValue, Value, ROOT};
use serde_json::{Map as JsonMap, Number, Value as Json};

use crate::error::PathError;

/// Converts a hydrated Automerge value to JSON.
pub fn to_json(value: &hydrate::Value) -> Json {
    match value {
        hydrate::Value::Scalar(s) => scalar_to_json(s),
        hydrate::Value::Map(m) => Json::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), to_json(&v.value)))
                .collect::<JsonMap<_, _>>(),
        ),
        hydrate::Value::List(l) => Json::Array(l.iter().map(|v| to_json(&v.value)).collect()),
        hydrate::Value::Text(t) => Json::String(String::from(t)),
    }
}

/// Converts one Automerge scalar to JSON.
pub fn scalar_to_json(s: &ScalarValue) -> Json {
    match s {
        ScalarValue::Bytes(b) => Json::String(base64(b)),
        ScalarValue::Str(s) => Json::String(s.to_string()),
        ScalarValue::Int(i) => Json::from(*i),
        ScalarValue::Uint(u) => Json::from(*u),
        ScalarValue::F64(f) => Number::from_f64(*f).map_or(Json::Null, Json::Number),
        ScalarValue::Counter(c) => Json::from(i64::from(c)),
        ScalarValue::Timestamp(t) => Json::from(*t),
        ScalarValue::Boolean(b) => Json::Bool(*b),
        ScalarValue::Unknown { .. } | ScalarValue::Null => Json::Null,
    }
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Writes a JSON value under `prop` of `obj`, creating nested objects.
pub fn put_json<T: Transactable>(
    tx: &mut T,
    obj: &ObjId,
    prop: Prop,
    value: &Json,
) -> Result<(), automerge::AutomergeError> {
    let insert = false;
    write_json(tx, obj, prop, value, insert)
}

/// Sets every key of a JSON object at the document root.
pub fn put_root_object<T: Transactable>(
    tx: &mut T,
    object: &JsonMap<String, Json>,
) -> Result<(), automerge::AutomergeError> {
    for (k, v) in object {
        put_json(tx, &ROOT, Prop::Map(k.clone()), v)?;
    }
    Ok(())
}

fn write_json<T: Transactable>(
    tx: &mut T,
    obj: &ObjId,
    prop: Prop,
    value: &Json,
    insert: bool,
) -> Result<(), automerge::AutomergeError> {
    let kind = match value {
        Json::Object(_) => Some(ObjType::Map),
        Json::Array(_) => Some(ObjType::List),
        _ => None,
    };
    let Some(kind) = kind else {
        let scalar = json_to_scalar(value);
        return match (prop, insert) {
            (Prop::Seq(i), true) => tx.insert(obj, i, scalar),
            (prop, _) => tx.put(obj, prop, scalar),
        };
    };
    let child = match (prop, insert) {
        (Prop::Seq(i), true) => tx.insert_object(obj, i, kind)?,
        (prop, _) => tx.put_object(obj, prop, kind)?,
    };
    match value {
        Json::Object(map) => {
            for (k, v) in map {
                write_json(tx, &child, Prop::Map(k.clone()), v, false)?;
            }
        }
        Json::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                write_json(tx, &child, Prop::Seq(i), v, true)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn json_to_scalar(value: &Json) -> ScalarValue {
    match value {
        Json::Bool(b) => ScalarValue::Boolean(*b),
        Json::String(s) => ScalarValue::Str(s.as_str().into()),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                ScalarValue::Int(i)
            } else if let Some(u) = n.as_u64() {
                ScalarValue::Uint(u)
            } else {
                ScalarValue::F64(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        _ => ScalarValue::Null,
    }
}

/// One step of a path: a map key or a list index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// A key of a map (also used for digit-only keys of maps).
    Key(String),
    /// An index into a list.
    Index(usize),
}

/// A dot-separated path into a record, such as `address.lines.0`.
///
/// Segments made only of digits are list indices when the parent is a list
/// and map keys when it is a map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path(Vec<String>);

impl std::str::FromStr for Path {
    type Err = PathError;

    fn from_str(s: &str) -> Result<Self, PathError> {
        if s.is_empty() {
            return Ok(Path(Vec::new()));
        }
        let parts: Vec<String> = s.split('.').map(str::to_owned).collect();
        if parts.iter().any(String::is_empty) {
            return Err(PathError::Syntax { path: s.to_owned() });
        }
        Ok(Path(parts))
    }
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

impl Path {
    /// The empty path: the record's root.
    pub fn root() -> Self {
        Path(Vec::new())
    }

    /// The path's segments as written.
    pub fn parts(&self) -> &[String] {
        &self.0
    }

    /// Looks the path up in a JSON value.
    pub fn lookup<'a>(&self, mut value: &'a Json) -> Result<&'a Json, PathError> {
        for (depth, part) in self.0.iter().enumerate() {
            let next = match value {
                Json::Object(m) => m.get(part),
                Json::Array(a) => part.parse::<usize>().ok().and_then(|i| a.get(i)),
                _ => None,
            };
            value = next.ok_or_else(|| self.missing(depth))?;
        }
        Ok(value)
    }

    fn missing(&self, depth: usize) -> PathError {
        PathError::NotFound {
            path: self.to_string(),
            at: self.0[..=depth].join("."),
        }
    }

    /// Sets the value at this path, creating missing intermediate maps.
    /// An index equal to a list's length appends.
    pub fn set<T: Transactable>(&self, tx: &mut T, value: &Json) -> Result<(), PathError> {
        let Some((last, parents)) = self.0.split_last() else {
            let Json::Object(map) = value else {
                return Err(PathError::RootNotObject);
            };
            return put_root_object(tx, map).map_err(PathError::automerge);
        };
        let mut obj = ROOT;
        for (depth, part) in parents.iter().enumerate() {
            obj = self.step_or_create(tx, &obj, part, depth)?;
        }
        let (prop, insert) = self.final_prop(tx, &obj, last)?;
        write_json(tx, &obj, prop, value, insert).map_err(PathError::automerge)
    }

    fn step_or_create<T: Transactable>(
        &self,
        tx: &mut T,
        obj: &ObjId,
        part: &str,
        depth: usize,
    ) -> Result<ObjId, PathError> {
        let prop = self.prop_in(tx, obj, part, depth)?;
        match tx.get(obj, prop.clone()).map_err(PathError::automerge)? {
            Some((Value::Object(ObjType::Map | ObjType::List | ObjType::Table), id)) => Ok(id),
            Some(_) => Err(PathError::NotAContainer {
                path: self.to_string(),
                at: self.0[..=depth].join("."),
            }),
            None if matches!(prop, Prop::Map(_)) => tx
                .put_object(obj, prop, ObjType::Map)
                .map_err(PathError::automerge),
            None => Err(self.missing(depth)),
        }
    }

    fn prop_in<T: Transactable>(
        &self,
        tx: &T,
        obj: &ObjId,
        part: &str,
        depth: usize,
    ) -> Result<Prop, PathError> {
        match tx.object_type(obj).map_err(PathError::automerge)? {
            ObjType::List | ObjType::Text => {
                part.parse::<usize>()
                    .map(Prop::Seq)
                    .map_err(|_| PathError::NotAnIndex {
                        path: self.to_string(),
                        at: self.0[..=depth].join("."),
                    })
            }
            ObjType::Map | ObjType::Table => Ok(Prop::Map(part.to_owned())),
        }
    }

    fn final_prop<T: Transactable>(
        &self,
        tx: &T,
        obj: &ObjId,
        last: &str,
    ) -> Result<(Prop, bool), PathError> {
        let depth = self.0.len() - 1;
        let prop = self.prop_in(tx, obj, last, depth)?;
        if let Prop::Seq(i) = prop {
            let len = tx.length(obj);
            if i > len {
                return Err(PathError::IndexOutOfRange {
                    path: self.to_string(),
                    index: i,
                    len,
                });
            }
            return Ok((prop, i == len));
        }
        Ok((prop, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::Automerge;
    use serde_json::json;

    fn doc_with(value: &Json) -> Automerge {
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        Path(Vec::new()).set(&mut tx, value).expect("set root");
        tx.commit();
        doc
    }

    #[test]
    fn json_round_trips_through_a_document() {
        let value = json!({"name": "Ada", "age": 36, "big": u64::MAX, "pi": 3.5,
            "tags": ["a", {"b": [1, 2]}], "ok": true, "none": null});
        let doc = doc_with(&value);
        assert_eq!(to_json(&doc.hydrate(None)), value);
    }

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn set_path_creates_maps_appends_and_reports_errors() {
        let mut doc = doc_with(&json!({"list": [1], "n": 5}));
        let mut tx = doc.transaction();
        let set = |tx: &mut automerge::transaction::Transaction<'_>, p: &str, v: Json| {
            p.parse::<Path>().expect("path").set(tx, &v)
        };
        set(&mut tx, "a.b.c", json!("deep")).expect("create");
        set(&mut tx, "list.1", json!(2)).expect("append");
        set(&mut tx, "list.0", json!(0)).expect("replace");
        assert!(matches!(
            set(&mut tx, "list.5", json!(1)),
            Err(PathError::IndexOutOfRange { .. })
        ));
        assert!(matches!(
            set(&mut tx, "list.x", json!(1)),
            Err(PathError::NotAnIndex { .. })
        ));
        assert!(matches!(
            set(&mut tx, "n.x", json!(1)),
            Err(PathError::NotAContainer { .. })
        ));
        tx.commit();
        let value = to_json(&doc.hydrate(None));
        assert_eq!(
            value,
            json!({"list": [0, 2], "n": 5, "a": {"b": {"c": "deep"}}})
        );
        let path: Path = "a.b.c".parse().expect("path");
        assert_eq!(path.lookup(&value).ok(), Some(&json!("deep")));
        assert!("a..b".parse::<Path>().is_err());
        assert!("a.z".parse::<Path>().expect("path").lookup(&value).is_err());
    }
}
