//! Automerge patches as JSON: what `accord diff --json` prints and what
//! the Python package's `diff` returns.
//!
//! Every patch becomes an object with an `action` (`put`, `insert`,
//! `splice`, `increment`, `conflict`, `delete`, `mark`), the `path` to what
//! it touches (keys as strings, list indices as numbers, the touched key or
//! index last), the fields of that action, and the engine's one-line
//! `description`.

use automerge::marks::Mark;
use automerge::{ObjType, Patch, PatchAction, Prop, Value as AmValue};

use super::describe_patch;
use crate::json::scalar_to_json;
use serde_json::{json, Map, Value};

/// One patch as a JSON object (see the module doc for its fields).
pub fn patch_json(patch: &Patch) -> Value {
    let (action, leaf, mut fields) = parts(&patch.action);
    let mut path: Vec<Value> = patch.path.iter().map(|(_, p)| prop_json(p)).collect();
    path.extend(leaf);
    fields.insert("action".into(), action.into());
    fields.insert("path".into(), path.into());
    fields.insert("description".into(), describe_patch(patch).into());
    Value::Object(fields)
}

/// An action's name, the key or index it touches (last in the path), and
/// its own fields.
fn parts(action: &PatchAction) -> (&'static str, Option<Value>, Map<String, Value>) {
    use PatchAction as A;
    match action {
        A::PutMap {
            key,
            value,
            conflict,
        } => (
            "put",
            Some(key.as_str().into()),
            put_fields(&value.0, *conflict),
        ),
        A::PutSeq {
            index,
            value,
            conflict,
        } => (
            "put",
            Some((*index).into()),
            put_fields(&value.0, *conflict),
        ),
        A::Insert { index, values } => {
            let values: Vec<Value> = values.iter().map(|(v, _, _)| value_json(v)).collect();
            (
                "insert",
                Some((*index).into()),
                one("values", values.into()),
            )
        }
        A::SpliceText { index, value, .. } => (
            "splice",
            Some((*index).into()),
            one("text", value.make_string().into()),
        ),
        A::Increment { prop, value } => (
            "increment",
            Some(prop_json(prop)),
            one("by", (*value).into()),
        ),
        A::Conflict { prop } => ("conflict", Some(prop_json(prop)), Map::new()),
        A::DeleteMap { key } => ("delete", Some(key.as_str().into()), Map::new()),
        A::DeleteSeq { index, length } => (
            "delete",
            Some((*index).into()),
            one("length", (*length).into()),
        ),
        A::Mark { marks } => ("mark", None, one("marks", marks_json(marks))),
    }
}

fn one(key: &str, value: Value) -> Map<String, Value> {
    Map::from_iter([(key.to_owned(), value)])
}

fn put_fields(value: &AmValue<'_>, conflict: bool) -> Map<String, Value> {
    Map::from_iter([
        ("value".to_owned(), value_json(value)),
        ("conflict".to_owned(), conflict.into()),
    ])
}

fn marks_json(marks: &[Mark]) -> Value {
    marks
        .iter()
        .map(|m| json!({"name": m.name(), "value": scalar_to_json(m.value()), "start": m.start, "end": m.end}))
        .collect::<Vec<_>>()
        .into()
}

fn prop_json(prop: &Prop) -> Value {
    match prop {
        Prop::Map(key) => key.as_str().into(),
        Prop::Seq(index) => (*index).into(),
    }
}

/// A patch's value: scalars as `accord get` shows them, new objects empty.
fn value_json(value: &AmValue<'_>) -> Value {
    match value {
        AmValue::Object(ObjType::Map | ObjType::Table) => json!({}),
        AmValue::Object(ObjType::List) => json!([]),
        AmValue::Object(ObjType::Text) => json!(""),
        AmValue::Scalar(s) => scalar_to_json(s),
    }
}
