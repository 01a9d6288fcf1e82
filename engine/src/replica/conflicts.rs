//! Conflicts: fields that hold concurrent values.
//!
//! When two replicas set the same field without seeing each other's
//! change, Automerge keeps both values and shows one of them (the same one
//! on every replica). Nothing is lost and nobody has to act, but an app or
//! a person may want to see the other value: [`Replica::conflicts`] lists
//! every field of a record that holds more than one value now, each value
//! with the change that wrote it. Writing the field again (from any
//! replica that has seen both) resolves it: the new value replaces both.
//!
//! ```
//! use accord_engine::Replica;
//! use serde_json::json;
//!
//! let phone = Replica::open_in_memory()?;
//! let laptop = Replica::open_in_memory()?;
//! let id = phone.create("contacts", &json!({"email": "ada@old.org"}))?;
//! let saved = phone.save(&id)?;
//! laptop.merge_bytes(&id, "contacts", &saved, accord_engine::Origin::Local)?;
//! // Both change the email without seeing each other.
//! phone.put(&id, "email", &json!("ada@phone.org"), None)?;
//! laptop.put(&id, "email", &json!("ada@laptop.org"), None)?;
//! phone.merge_bytes(&id, "contacts", &laptop.save(&id)?, accord_engine::Origin::Local)?;
//!
//! let conflicts = phone.conflicts(&id)?;
//! assert_eq!(conflicts.len(), 1);
//! assert_eq!(conflicts[0].path, "email");
//! assert_eq!(conflicts[0].values.len(), 2);
//! // Resolving: write the field again.
//! phone.put(&id, "email", &json!("ada@example.org"), Some("pick one"))?;
//! assert!(phone.conflicts(&id)?.is_empty());
//! # Ok::<(), accord_engine::Error>(())
//! ```

use automerge::{Automerge, ChangeHash, ObjId, ObjType, Prop, ReadDoc, Value};
use serde::Serialize;

use super::Replica;
use crate::error::Result;
use crate::id::DocId;
use crate::json;

/// A field that holds concurrent values.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Conflict {
    /// Where, as a dot path (`address.city`, `items.2`).
    pub path: String,
    /// Every value it holds, the one reads show first.
    pub values: Vec<ConflictValue>,
}

/// One of a conflicted field's values.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConflictValue {
    /// The value, as JSON (an object or list as its current content).
    pub value: serde_json::Value,
    /// The change that wrote it.
    #[serde(serialize_with = "hash_text")]
    pub change: Option<ChangeHash>,
    /// The actor that wrote it (hex).
    pub actor: String,
    /// Whether this is the value reads show.
    pub shown: bool,
}

fn hash_text<S: serde::Serializer>(hash: &Option<ChangeHash>, s: S) -> Result<S::Ok, S::Error> {
    match hash {
        Some(h) => s.collect_str(h),
        None => s.serialize_none(),
    }
}

impl Replica {
    /// Every field of the record that holds concurrent values now, with
    /// each value and the change that wrote it (also for deleted records).
    pub fn conflicts(&self, id: &DocId) -> Result<Vec<Conflict>> {
        self.read_any(id, |state| find(&state.doc, None))
    }

    /// The conflicts the record had as of `heads`.
    pub fn conflicts_at(&self, id: &DocId, heads: &[ChangeHash]) -> Result<Vec<Conflict>> {
        self.read_any(id, |state| find(&state.doc, Some(heads)))
    }
}

/// How many fields of a document hold concurrent values now (what the
/// projection's `conflicts` column stores). Walks like [`find`] but builds
/// no values.
pub(crate) fn count(doc: &Automerge) -> usize {
    let mut n = 0;
    let mut stack = vec![automerge::ROOT];
    while let Some(obj) = stack.pop() {
        for prop in props(doc, &obj, None) {
            let mut all = doc.get_all(&obj, prop.clone()).unwrap_or_default();
            let shown = if all.len() > 1 {
                n += 1;
                doc.get(&obj, prop).ok().flatten()
            } else {
                all.pop()
            };
            if let Some((Value::Object(_), id)) = shown {
                stack.push(id);
            }
        }
    }
    n
}

/// The conflicts of a whole document, now or as of `heads`.
pub(crate) fn find(doc: &Automerge, heads: Option<&[ChangeHash]>) -> Vec<Conflict> {
    let mut out = Vec::new();
    let mut walker = Walker {
        doc,
        heads,
        out: &mut out,
    };
    walker.walk(&automerge::ROOT, &mut Vec::new());
    out
}

/// A walk over a document (as of `heads`, if given).
struct Walker<'a> {
    doc: &'a Automerge,
    heads: Option<&'a [ChangeHash]>,
    out: &'a mut Vec<Conflict>,
}

impl Walker<'_> {
    /// Looks at every field of `obj` and, through the values reads show,
    /// at the objects below it.
    fn walk(&mut self, obj: &ObjId, path: &mut Vec<String>) {
        for prop in props(self.doc, obj, self.heads) {
            path.push(match &prop {
                Prop::Map(key) => key.clone(),
                Prop::Seq(i) => i.to_string(),
            });
            self.field(obj, prop, path);
            path.pop();
        }
    }

    fn field(&mut self, obj: &ObjId, prop: Prop, path: &mut Vec<String>) {
        let doc = self.doc;
        let (shown, all) = match self.heads {
            None => (doc.get(obj, prop.clone()), doc.get_all(obj, prop)),
            Some(h) => (
                doc.get_at(obj, prop.clone(), h),
                doc.get_all_at(obj, prop, h),
            ),
        };
        let shown = shown.ok().flatten().map(|(_, id)| id);
        let all = all.unwrap_or_default();
        if all.len() > 1 {
            let values = all
                .iter()
                .map(|(value, id)| ConflictValue {
                    value: self.as_json(value, id),
                    change: doc.hash_for_opid(id),
                    actor: actor_of(id),
                    shown: shown.as_ref() == Some(id),
                })
                .collect();
            self.out.push(Conflict {
                path: path.join("."),
                values,
            });
        }
        if let Some((Value::Object(_), id)) = all.iter().find(|(_, id)| shown.as_ref() == Some(id))
        {
            self.walk(id, path);
        }
    }

    fn as_json(&self, value: &Value<'_>, id: &ObjId) -> serde_json::Value {
        match value {
            Value::Scalar(s) => json::scalar_to_json(s),
            Value::Object(_) => ReadDoc::hydrate(self.doc, id, self.heads)
                .map(|v| json::to_json(&v))
                .unwrap_or(serde_json::Value::Null),
        }
    }
}

/// The keys of a map or the indices of a list (now or as of `heads`);
/// none for text, whose characters cannot conflict field by field.
fn props(doc: &Automerge, obj: &ObjId, heads: Option<&[ChangeHash]>) -> Vec<Prop> {
    match (doc.object_type(obj), heads) {
        (Ok(ObjType::Map | ObjType::Table), None) => doc.keys(obj).map(Prop::Map).collect(),
        (Ok(ObjType::Map | ObjType::Table), Some(h)) => {
            doc.keys_at(obj, h).map(Prop::Map).collect()
        }
        (Ok(ObjType::List), None) => (0..doc.length(obj)).map(Prop::Seq).collect(),
        (Ok(ObjType::List), Some(h)) => (0..doc.length_at(obj, h)).map(Prop::Seq).collect(),
        (Ok(ObjType::Text) | Err(_), _) => Vec::new(),
    }
}

fn actor_of(id: &ObjId) -> String {
    match id {
        ObjId::Id(_, actor, _) => actor.to_hex_string(),
        ObjId::Root => String::new(),
    }
}
