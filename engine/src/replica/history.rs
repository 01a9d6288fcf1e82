//! The history API: changes, heads, content at past heads, and diffs.

use automerge::{ChangeHash, Patch};

use super::{Record, Replica};
use crate::error::{Error, Result};
use crate::id::{DocId, Heads};
use crate::json;

/// One change in a record's history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChangeInfo {
    /// The change hash (hex).
    #[serde(serialize_with = "hash_hex")]
    pub hash: ChangeHash,
    /// The actor that made it (hex).
    pub actor: String,
    /// The device that made it: the actor's first 8 bytes (16 hex digits),
    /// the same for every process of one database file (see
    /// [`Replica::device`]). Actors written before this existed are random
    /// throughout, so each of their processes shows as its own device.
    pub device: String,
    /// Its sequence number among that actor's changes.
    pub seq: u64,
    /// When it was made, in seconds since the Unix epoch (0 if unknown).
    pub time: i64,
    /// The commit message, if any.
    pub message: Option<String>,
    /// The changes it builds on.
    #[serde(serialize_with = "hashes_hex")]
    pub deps: Vec<ChangeHash>,
    /// How many operations it holds.
    pub ops: u64,
}

fn hash_hex<S: serde::Serializer>(h: &ChangeHash, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(h)
}

fn hashes_hex<S: serde::Serializer>(hs: &[ChangeHash], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(hs.iter().map(ToString::to_string))
}

impl Replica {
    /// Every change of a record, in causal order (each after its deps).
    /// Works for deleted records too.
    pub fn history(&self, id: &DocId) -> Result<Vec<ChangeInfo>> {
        self.read_any(id, |state| {
            state
                .doc
                .get_changes_meta(&[])
                .into_iter()
                .map(|m| ChangeInfo {
                    hash: m.hash,
                    device: device_of(&m.actor),
                    actor: m.actor.to_hex_string(),
                    seq: m.seq,
                    time: m.timestamp,
                    message: m.message.map(|c| c.into_owned()),
                    deps: m.deps,
                    ops: (m.max_op + 1).saturating_sub(m.start_op),
                })
                .collect()
        })
    }

    /// The record's current heads.
    pub fn heads(&self, id: &DocId) -> Result<Heads> {
        self.read_any(id, |state| Heads::new(state.doc.get_heads()))
    }

    /// The record's content as it was at `heads` (also for deleted records).
    pub fn get_at(&self, id: &DocId, heads: &[ChangeHash]) -> Result<Record> {
        self.read_any(id, |state| {
            check_heads(id, &state.doc, heads)?;
            Ok(Record {
                id: *id,
                collection: state.collection.clone(),
                heads: Heads::from(heads),
                value: json::to_json(&state.doc.hydrate(Some(heads))),
            })
        })?
    }

    /// The patches that turn the record at `before` into the record at
    /// `after`.
    pub fn diff(
        &self,
        id: &DocId,
        before: &[ChangeHash],
        after: &[ChangeHash],
    ) -> Result<Vec<Patch>> {
        self.read_any(id, |state| {
            check_heads(id, &state.doc, before)?;
            check_heads(id, &state.doc, after)?;
            Ok(state.doc.diff(before, after))
        })?
    }

    /// Resolves comma-separated full or short (prefix) change hashes of a
    /// record, such as a user types them.
    pub fn resolve_heads(&self, id: &DocId, text: &str) -> Result<Heads> {
        let history = self.history(id)?;
        let hashes = text
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|prefix| resolve_one(id, &history, prefix))
            .collect::<Result<Vec<_>>>()?;
        Ok(Heads::new(hashes))
    }
}

fn resolve_one(id: &DocId, history: &[ChangeInfo], prefix: &str) -> Result<ChangeHash> {
    let prefix_lc = prefix.to_ascii_lowercase();
    let unknown = || Error::UnknownHead {
        doc: *id,
        hash: prefix.to_owned(),
    };
    if prefix_lc.is_empty() || !prefix_lc.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(unknown());
    }
    let mut found = history
        .iter()
        .filter(|c| c.hash.to_string().starts_with(&prefix_lc));
    let first = found.next().ok_or_else(unknown)?;
    let others = found.count();
    if others > 0 {
        return Err(Error::AmbiguousHead {
            doc: *id,
            prefix: prefix.to_owned(),
            count: others + 1,
        });
    }
    Ok(first.hash)
}

fn check_heads(id: &DocId, doc: &automerge::Automerge, heads: &[ChangeHash]) -> Result<()> {
    match heads
        .iter()
        .find(|h| doc.get_change_meta_by_hash(h).is_none())
    {
        Some(h) => Err(Error::UnknownHead {
            doc: *id,
            hash: h.to_string(),
        }),
        None => Ok(()),
    }
}

/// A patch as one readable line, such as `set name = "Ada"` or
/// `insert tags[2] = "x"`.
pub fn describe_patch(patch: &Patch) -> String {
    let mut path = String::new();
    for (_, prop) in &patch.path {
        match prop {
            automerge::Prop::Map(k) => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
            }
            automerge::Prop::Seq(i) => path.push_str(&format!("[{i}]")),
        }
    }
    let at = |leaf: String| {
        if path.is_empty() {
            leaf
        } else if leaf.starts_with('[') {
            format!("{path}{leaf}")
        } else {
            format!("{path}.{leaf}")
        }
    };
    use automerge::PatchAction as A;
    match &patch.action {
        A::PutMap {
            key,
            value,
            conflict,
        } => format!(
            "set {} = {}{}",
            at(key.clone()),
            show(&value.0),
            if *conflict { " (conflict)" } else { "" }
        ),
        A::PutSeq {
            index,
            value,
            conflict,
        } => format!(
            "set {} = {}{}",
            at(format!("[{index}]")),
            show(&value.0),
            if *conflict { " (conflict)" } else { "" }
        ),
        A::Insert { index, values } => {
            let items: Vec<String> = values.iter().map(|(v, _, _)| show(v)).collect();
            format!("insert {} = {}", at(format!("[{index}]")), items.join(", "))
        }
        A::SpliceText { index, value, .. } => format!(
            "splice {} {:?}",
            at(format!("[{index}]")),
            value.make_string()
        ),
        A::Increment { prop, value } => format!("increment {} by {value}", at(prop_text(prop))),
        A::Conflict { prop } => format!("conflict at {}", at(prop_text(prop))),
        A::DeleteMap { key } => format!("delete {}", at(key.clone())),
        A::DeleteSeq { index, length } => {
            format!("delete {} ({length} items)", at(format!("[{index}]")))
        }
        A::Mark { marks } => format!(
            "mark {} ({} marks)",
            if path.is_empty() { "." } else { &path },
            marks.len()
        ),
    }
}

fn prop_text(prop: &automerge::Prop) -> String {
    match prop {
        automerge::Prop::Map(k) => k.clone(),
        automerge::Prop::Seq(i) => format!("[{i}]"),
    }
}

fn show(value: &automerge::Value<'_>) -> String {
    match value {
        automerge::Value::Object(t) => match t {
            automerge::ObjType::Map | automerge::ObjType::Table => "{}".into(),
            automerge::ObjType::List => "[]".into(),
            automerge::ObjType::Text => "\"\"".into(),
        },
        automerge::Value::Scalar(s) => json::scalar_to_json(s).to_string(),
    }
}

/// The device part of an actor id, as [`ChangeInfo::device`] gives it.
fn device_of(actor: &automerge::ActorId) -> String {
    let bytes = actor.to_bytes();
    automerge::ActorId::from(&bytes[..bytes.len().min(super::DEVICE_BYTES)]).to_hex_string()
}
