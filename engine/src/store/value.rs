//! The values queries take and return, and their serde form.
//!
//! [`SqlValue`] is SQLite's five storage classes. It serializes as the
//! plain JSON value (`null`, a number, a string), bytes as a standard
//! base64 string (the mapping `docs/storage-format.md` section 8 uses for
//! Automerge bytes), and a non-finite real as `null`. [`QueryRows`]
//! serializes as a list of objects, one per row, keyed by column name in
//! column order.

use std::ops::ControlFlow;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::ToSql;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::Value as Json;

/// One SQL value: what a column of a result row holds, or a parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    /// SQL `NULL`.
    Null,
    /// A 64-bit integer (SQLite has no booleans: JSON `true` reads as 1).
    Integer(i64),
    /// A floating-point number.
    Real(f64),
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

/// The rows a query returned: column names and, per row, one value per
/// column. Serializes as a list of objects keyed by column name, in column
/// order (a later column of the same name wins).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QueryRows {
    /// The result's column names, as SQLite names them.
    pub columns: Vec<String>,
    /// The rows, each as long as `columns`.
    pub rows: Vec<Vec<SqlValue>>,
}

impl SqlValue {
    pub(super) fn from_ref(value: ValueRef<'_>) -> Self {
        match value {
            ValueRef::Null => SqlValue::Null,
            ValueRef::Integer(i) => SqlValue::Integer(i),
            ValueRef::Real(f) => SqlValue::Real(f),
            ValueRef::Text(t) => SqlValue::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => SqlValue::Blob(b.to_vec()),
        }
    }

    /// The value as JSON (see the module doc).
    pub fn to_json(&self) -> Json {
        match self {
            SqlValue::Null => Json::Null,
            SqlValue::Integer(i) => Json::from(*i),
            SqlValue::Real(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
            SqlValue::Text(t) => Json::String(t.clone()),
            SqlValue::Blob(b) => {
                crate::json::scalar_to_json(&automerge::ScalarValue::Bytes(b.clone()))
            }
        }
    }

    /// The integer, if this is one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            SqlValue::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// The number, if this is an integer or a real.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            SqlValue::Integer(i) => Some(*i as f64),
            SqlValue::Real(f) => Some(*f),
            _ => None,
        }
    }

    /// The text, if this is text.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            SqlValue::Text(t) => Some(t),
            _ => None,
        }
    }

    /// Whether this is `NULL`.
    pub fn is_null(&self) -> bool {
        matches!(self, SqlValue::Null)
    }
}

impl QueryRows {
    /// Runs a streaming query (`each` hands its callback to the query) and
    /// keeps every row: what `Replica::query` returns.
    pub(crate) fn collect<E>(
        each: impl FnOnce(
            &mut dyn FnMut(&[String], Vec<SqlValue>) -> ControlFlow<()>,
        ) -> Result<Vec<String>, E>,
    ) -> Result<QueryRows, E> {
        let mut rows = Vec::new();
        let columns = each(&mut |_, row| {
            rows.push(row);
            ControlFlow::Continue(())
        })?;
        Ok(QueryRows { columns, rows })
    }

    /// How many rows there are.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The position of the first column with this name.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    /// The values of one column, by name, top to bottom.
    pub fn values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a SqlValue> + 'a {
        let index = self.column(name);
        self.rows.iter().filter_map(move |row| row.get(index?))
    }

    /// The rows as a JSON array of objects (the serde form).
    pub fn to_json(&self) -> Json {
        let rows = self.rows.iter().map(|row| {
            let object = self
                .columns
                .iter()
                .zip(row)
                .map(|(c, v)| (c.clone(), v.to_json()));
            Json::Object(object.collect())
        });
        Json::Array(rows.collect())
    }
}

impl Serialize for SqlValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            SqlValue::Null => serializer.serialize_unit(),
            SqlValue::Integer(i) => serializer.serialize_i64(*i),
            SqlValue::Real(f) if f.is_finite() => serializer.serialize_f64(*f),
            SqlValue::Real(_) => serializer.serialize_unit(),
            SqlValue::Text(t) => serializer.serialize_str(t),
            blob @ SqlValue::Blob(_) => blob.to_json().serialize(serializer),
        }
    }
}

/// One row as a map, for [`QueryRows`]' serde form.
struct RowMap<'a>(&'a [String], &'a [SqlValue]);

impl Serialize for RowMap<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (column, value) in self.0.iter().zip(self.1) {
            map.serialize_entry(column, value)?;
        }
        map.end()
    }
}

impl Serialize for QueryRows {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.rows.len()))?;
        for row in &self.rows {
            seq.serialize_element(&RowMap(&self.columns, row))?;
        }
        seq.end()
    }
}

impl ToSql for SqlValue {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            SqlValue::Null => ValueRef::Null,
            SqlValue::Integer(i) => ValueRef::Integer(*i),
            SqlValue::Real(f) => ValueRef::Real(*f),
            SqlValue::Text(t) => ValueRef::Text(t.as_bytes()),
            SqlValue::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

macro_rules! from_integer {
    ($($t:ty),*) => {$(
        impl From<$t> for SqlValue {
            fn from(v: $t) -> Self {
                SqlValue::Integer(i64::from(v))
            }
        }
    )*};
}
from_integer!(i8, i16, i32, i64, u8, u16, u32, bool);

impl From<f64> for SqlValue {
    fn from(v: f64) -> Self {
        SqlValue::Real(v)
    }
}

impl From<&str> for SqlValue {
    fn from(v: &str) -> Self {
        SqlValue::Text(v.to_owned())
    }
}

impl From<String> for SqlValue {
    fn from(v: String) -> Self {
        SqlValue::Text(v)
    }
}

impl From<Vec<u8>> for SqlValue {
    fn from(v: Vec<u8>) -> Self {
        SqlValue::Blob(v)
    }
}

impl<T: Into<SqlValue>> From<Option<T>> for SqlValue {
    fn from(v: Option<T>) -> Self {
        v.map_or(SqlValue::Null, Into::into)
    }
}

/// JSON scalars become the SQL value SQLite's JSON functions would return
/// for them (`true` is 1); objects and arrays become their JSON text.
impl From<&Json> for SqlValue {
    fn from(v: &Json) -> Self {
        match v {
            Json::Null => SqlValue::Null,
            Json::Bool(b) => SqlValue::Integer(i64::from(*b)),
            Json::Number(n) => match n.as_i64() {
                Some(i) => SqlValue::Integer(i),
                None => SqlValue::Real(n.as_f64().unwrap_or(f64::NAN)),
            },
            Json::String(s) => SqlValue::Text(s.clone()),
            other => SqlValue::Text(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rows_serialize_as_objects_in_column_order() {
        let rows = QueryRows {
            columns: vec!["z".into(), "a".into(), "b".into(), "r".into(), "n".into()],
            rows: vec![vec![
                SqlValue::Integer(1),
                SqlValue::Text("x".into()),
                SqlValue::Blob(vec![1, 2, 3]),
                SqlValue::Real(0.5),
                SqlValue::Null,
            ]],
        };
        let text = serde_json::to_string(&rows).expect("serialize");
        assert_eq!(text, r#"[{"z":1,"a":"x","b":"AQID","r":0.5,"n":null}]"#);
        assert_eq!(
            rows.to_json(),
            json!([{"z": 1, "a": "x", "b": "AQID", "r": 0.5, "n": null}])
        );
        assert_eq!(
            rows.values("a").collect::<Vec<_>>(),
            [&SqlValue::Text("x".into())]
        );
        assert_eq!(
            serde_json::to_string(&SqlValue::Real(f64::NAN))
                .ok()
                .as_deref(),
            Some("null")
        );
    }

    #[test]
    fn json_and_rust_values_convert() {
        assert_eq!(SqlValue::from(&json!(true)), SqlValue::Integer(1));
        assert_eq!(SqlValue::from(&json!(2.5)), SqlValue::Real(2.5));
        assert_eq!(SqlValue::from(&json!("42")), SqlValue::Text("42".into()));
        assert_eq!(SqlValue::from(&json!([1])), SqlValue::Text("[1]".into()));
        assert_eq!(SqlValue::from(None::<i64>), SqlValue::Null);
        assert_eq!(SqlValue::from("a"), SqlValue::Text("a".into()));
        assert_eq!(SqlValue::from(7u32).as_i64(), Some(7));
    }
}
