//! Indexes on a JSON path of one collection's records.
//!
//! `CREATE INDEX` cannot take its expression as a bound parameter, so the
//! collection and the path are written into the SQL text. Both are checked
//! first: the collection is a [`Collection`] (letters,
//! digits, `_ - . /`), the path by [`IndexPath`]'s strict grammar, neither
//! of which admits a quote. An index is a partial expression index on the
//! projection table:
//!
//! ```sql
//! CREATE INDEX "<name>" ON projection (collection, json_extract(json, '<path>'))
//!     WHERE collection = '<collection>'
//! ```
//!
//! which SQLite uses for queries on the `records` view that say
//! `collection = '<collection>'` and compare or sort by
//! `json_extract(json, '<path>')` written exactly so. The leading
//! `collection` column holds one value, but it makes the index an
//! equality-plus-range match for the planner, so it wins over the index on
//! `collection` alone for ranges and `ORDER BY` too, not only for `=`.
//! Names are derived from the collection and path
//! alone, so creating the same index twice is a no-op, and the registry
//! table `query_indexes` maps each name back to them.

use std::fmt;
use std::str::FromStr;

use rusqlite::{params, Connection};

use super::{now_ms, Store};
use crate::error::{Error, QueryError, StoreError};
use crate::id::Collection;

/// Most steps a path may have.
const MAX_STEPS: usize = 16;
/// Most characters in one key.
const MAX_KEY: usize = 64;

/// A validated SQLite JSON path such as `$.name`, `$.address.city`,
/// `$.tags[0]` or `$."first name"`.
///
/// Grammar: `$` followed by 1 to 16 steps, each `.key` (1 to 64 letters,
/// digits or `_`), `."quoted key"` (1 to 64 characters, none of them `"`,
/// `'`, `\` or a control character) or `[index]` (1 to 9 digits).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IndexPath(String);

impl IndexPath {
    /// The path as SQLite's JSON functions take it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IndexPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for IndexPath {
    type Err = QueryError;

    fn from_str(text: &str) -> Result<Self, QueryError> {
        let bad = |reason: &str| QueryError::BadPath {
            path: text.to_owned(),
            reason: reason.to_owned(),
        };
        let mut rest = text
            .strip_prefix('$')
            .ok_or_else(|| bad("it must start with '$'"))?;
        let mut steps = 0;
        while !rest.is_empty() {
            rest = step(rest).map_err(bad)?;
            steps += 1;
        }
        match steps {
            0 => Err(bad(
                "it names the whole record; give a key, such as '$.name'",
            )),
            n if n > MAX_STEPS => Err(bad("it has more than 16 steps")),
            _ => Ok(IndexPath(text.to_owned())),
        }
    }
}

/// Parses one step off the front of `rest` and returns what follows.
fn step(rest: &str) -> Result<&str, &'static str> {
    if let Some(quoted) = rest.strip_prefix(".\"") {
        let end = quoted.find('"').ok_or("a quoted key has no closing '\"'")?;
        let key = &quoted[..end];
        let allowed = |c: char| !c.is_control() && !matches!(c, '\'' | '\\');
        if key.is_empty() || key.chars().count() > MAX_KEY || !key.chars().all(allowed) {
            return Err(
                "a quoted key must be 1 to 64 characters without ', \\ or control characters",
            );
        }
        return Ok(&quoted[end + 1..]);
    }
    if let Some(key) = rest.strip_prefix('.') {
        let len = key
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(key.len());
        if len == 0 || len > MAX_KEY {
            return Err(
                "a key must be 1 to 64 letters, digits or '_' (quote others: $.\"my key\")",
            );
        }
        return Ok(&key[len..]);
    }
    if let Some(index) = rest.strip_prefix('[') {
        let end = index.find(']').ok_or("a '[' has no closing ']'")?;
        let digits = &index[..end];
        if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err("a list index must be 1 to 9 digits, such as [0]");
        }
        return Ok(&index[end + 1..]);
    }
    Err("each step must be .key, .\"quoted key\" or [index]")
}

/// A collection and a path, both checked: what an index is made on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexTarget {
    /// A valid collection name (no quote can occur in it).
    collection: Collection,
    /// A valid path.
    path: IndexPath,
}

impl IndexTarget {
    /// Checks the collection name and parses the path.
    pub fn new(collection: &str, path: &str) -> Result<Self, Error> {
        Ok(IndexTarget {
            collection: collection.parse()?,
            path: path.parse()?,
        })
    }

    /// The index's deterministic SQLite name.
    pub fn name(&self) -> String {
        index_name(&self.collection, &self.path)
    }

    /// The collection.
    pub fn collection(&self) -> &str {
        &self.collection
    }

    /// The path.
    pub fn path(&self) -> &IndexPath {
        &self.path
    }
}

/// An index on a JSON path of one collection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QueryIndex {
    /// Its SQLite name (derived from the collection and path).
    pub name: String,
    /// The collection whose records it covers.
    pub collection: String,
    /// The JSON path it indexes.
    pub path: String,
}

/// The deterministic name of the index on `path` in `collection`: a
/// readable prefix and a hash of both, so names differ whenever the pair
/// does (`a-b` and `a_b` read the same in the prefix).
pub fn index_name(collection: &str, path: &IndexPath) -> String {
    let readable = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(40)
            .collect()
    };
    let hash = fnv1a(format!("{collection}\0{path}").as_bytes());
    format!(
        "records_{}_{}_{hash:016x}",
        readable(collection),
        readable(path.as_str().trim_start_matches(['$', '.']))
    )
}

/// FNV-1a, 64 bits: small and stable across builds (names are stored).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Creates the index and registers it; nothing happens if it exists.
pub(super) fn create(conn: &Connection, target: &IndexTarget) -> Result<(), StoreError> {
    let name = target.name();
    let (collection, path) = (&target.collection, &target.path);
    // Both were validated and contain no quote (see the module doc).
    conn.execute_batch(&format!(
        "CREATE INDEX IF NOT EXISTS \"{name}\" \
         ON projection (collection, json_extract(json, '{path}')) WHERE collection = '{collection}'"
    ))?;
    conn.prepare_cached(
        "INSERT INTO query_indexes (name, collection, path, created_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (name) DO NOTHING",
    )?
    .execute(params![name, collection.as_str(), path.as_str(), now_ms()])?;
    Ok(())
}

/// Drops the index and its registration; nothing happens if it is absent.
pub(super) fn remove(conn: &Connection, target: &IndexTarget) -> Result<(), StoreError> {
    let name = target.name();
    conn.execute_batch(&format!("DROP INDEX IF EXISTS \"{name}\""))?;
    conn.prepare_cached("DELETE FROM query_indexes WHERE name = ?1")?
        .execute([name])?;
    Ok(())
}

impl Store {
    /// The JSON-path indexes, ordered by collection and path.
    pub fn query_indexes(&self) -> Result<Vec<QueryIndex>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT name, collection, path FROM query_indexes ORDER BY collection, path",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(QueryIndex {
                name: r.get(0)?,
                collection: r.get(1)?,
                path: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(path: &str) -> bool {
        path.parse::<IndexPath>().is_ok()
    }

    #[test]
    fn paths_follow_the_strict_grammar() {
        for good in [
            "$.name",
            "$.address.city",
            "$.tags[0]",
            "$.a_b.C9[12].x",
            "$.\"first name\"",
            "$.\"é\"",
        ] {
            assert!(ok(good), "{good}");
        }
        for bad in [
            "",
            "$",
            "name",
            "$name",
            "$.",
            "$..a",
            "$.a-b",
            "$.a'",
            "$.\"a'b\"",
            "$.\"a",
            "$[x]",
            "$[]",
            "$[1",
            "$.a b",
            "$.\"\"",
            "$.a;DROP TABLE docs",
            "$.\"a\\\"\"",
            "$[1234567890]",
        ] {
            assert!(!ok(bad), "{bad}");
        }
        let deep = format!("${}", ".a".repeat(17));
        assert!(!ok(&deep));
        assert!(ok(&format!("${}", ".a".repeat(16))));
        assert!(!ok(&format!("$.{}", "k".repeat(65))));
    }

    #[test]
    fn names_are_deterministic_readable_and_distinct() {
        let path: IndexPath = "$.name".parse().expect("path");
        let a = index_name("contacts", &path);
        assert_eq!(a, index_name("contacts", &path));
        assert!(a.starts_with("records_contacts_name_"), "{a}");
        assert_ne!(index_name("a-b", &path), index_name("a_b", &path));
        let other: IndexPath = "$.\"name\"".parse().expect("path");
        assert_ne!(a, index_name("contacts", &other));
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    }

    #[test]
    fn targets_refuse_bad_collections() {
        assert!(IndexTarget::new("contacts", "$.name").is_ok());
        assert!(matches!(
            IndexTarget::new("it's", "$.name"),
            Err(Error::BadCollection(_))
        ));
        assert!(matches!(
            IndexTarget::new("contacts", "$.a'"),
            Err(Error::Query(QueryError::BadPath { .. }))
        ));
    }
}
