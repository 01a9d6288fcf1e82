//! Apps' SQL, run so that it cannot change the database.
//!
//! A query is one statement, prepared under an authorizer that allows
//! reading and nothing else (no writes, no schema changes, no `ATTACH`, no
//! transactions, only informational pragmas), checked with
//! `sqlite3_stmt_readonly`, and run on a connection in `query_only` mode.
//! A file database gets a connection of its own opened with
//! `SQLITE_OPEN_READ_ONLY` ([`QueryConn`]); an in-memory one, which no
//! second connection can see, runs the query on its only connection with
//! the authorizer and `query_only` switched on for the one statement
//! ([`Store::query_guarded`]). Any one of these layers refuses writes on
//! its own; the authorizer is there to name the problem.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::fallible_iterator::FallibleIterator;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::{ffi, Batch, Connection, OpenFlags};

use super::value::{QueryRows, SqlValue};
use super::Store;
use crate::error::{QueryError, StoreError};

/// Where the authorizer leaves what it refused, for the error message.
type Denied = Arc<Mutex<Option<String>>>;

/// A connection that only reads: opened read-only, `query_only`, and with
/// the read-only authorizer installed for good.
#[derive(Debug)]
pub struct QueryConn {
    /// The read-only connection.
    conn: Connection,
    /// What the authorizer refused during the last prepare.
    denied: Denied,
}

impl QueryConn {
    /// Opens a read-only query connection to a database file.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(path, flags)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.execute_batch("PRAGMA query_only = 1;")?;
        let denied = Denied::default();
        install(&mut conn, &denied)?;
        Ok(QueryConn { conn, denied })
    }

    /// Runs one read-only statement with positional parameters.
    pub fn run(&self, sql: &str, params: &[SqlValue]) -> Result<QueryRows, QueryError> {
        run(&self.conn, &self.denied, sql, params)
    }
}

impl Store {
    /// Runs one read-only statement on this (in-memory) store's own
    /// connection, with the authorizer and `query_only` on for its length.
    pub fn query_guarded(
        &mut self,
        sql: &str,
        params: &[SqlValue],
    ) -> Result<QueryRows, QueryError> {
        let denied = Denied::default();
        let failed = |e: rusqlite::Error| QueryError::Failed {
            message: e.to_string(),
        };
        self.conn
            .execute_batch("PRAGMA query_only = 1;")
            .map_err(failed)?;
        let result = match install(&mut self.conn, &denied) {
            Ok(()) => run(&self.conn, &denied, sql, params),
            Err(e) => Err(failed(e)),
        };
        let restored = self
            .conn
            .authorizer(None::<fn(AuthContext<'_>) -> Authorization>)
            .and_then(|()| self.conn.execute_batch("PRAGMA query_only = 0;"));
        match (result, restored) {
            (Ok(_), Err(e)) => Err(failed(e)),
            (result, _) => result,
        }
    }
}

fn install(conn: &mut Connection, denied: &Denied) -> Result<(), rusqlite::Error> {
    let denied = Arc::clone(denied);
    conn.authorizer(Some(move |ctx: AuthContext<'_>| {
        match refusal(&ctx.action) {
            None => Authorization::Allow,
            Some(what) => {
                let mut slot = denied
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                slot.get_or_insert(what);
                Authorization::Deny
            }
        }
    }))
}

/// Why an action is not allowed in a query, or `None` if it is.
fn refusal(action: &AuthAction<'_>) -> Option<String> {
    let what = match action {
        AuthAction::Select
        | AuthAction::Read { .. }
        | AuthAction::Function { .. }
        | AuthAction::Recursive => return None,
        AuthAction::Unknown { code, .. }
            if matches!(
                *code,
                ffi::SQLITE_READ
                    | ffi::SQLITE_SELECT
                    | ffi::SQLITE_FUNCTION
                    | ffi::SQLITE_RECURSIVE
            ) =>
        {
            return None
        }
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => {
            if pragma_reads(pragma_name, *pragma_value) {
                return None;
            }
            match pragma_value {
                Some(v) => format!("PRAGMA {pragma_name} = {v}"),
                None => format!("PRAGMA {pragma_name}"),
            }
        }
        // DROP asks about deleting from the schema table before anything else.
        AuthAction::Insert { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::Delete { table_name }
            if is_schema_table(table_name) =>
        {
            "changing the schema".to_owned()
        }
        AuthAction::Insert { table_name } => format!("INSERT into {table_name}"),
        AuthAction::Update { table_name, .. } => format!("UPDATE of {table_name}"),
        AuthAction::Delete { table_name } => format!("DELETE from {table_name}"),
        AuthAction::Attach { .. } => "ATTACH".to_owned(),
        AuthAction::Detach { .. } => "DETACH".to_owned(),
        AuthAction::Transaction { operation } => format!("transaction control ({operation:?})"),
        AuthAction::Savepoint { .. } => "SAVEPOINT".to_owned(),
        other => schema_change(other),
    };
    Some(what)
}

fn is_schema_table(name: &str) -> bool {
    [
        "sqlite_master",
        "sqlite_schema",
        "sqlite_temp_master",
        "sqlite_temp_schema",
    ]
    .iter()
    .any(|t| name.eq_ignore_ascii_case(t))
}

/// A name for a refused action that changes the schema (or is unknown).
fn schema_change(action: &AuthAction<'_>) -> String {
    match action {
        AuthAction::CreateIndex { .. } | AuthAction::CreateTempIndex { .. } => "CREATE INDEX",
        AuthAction::CreateTable { .. } | AuthAction::CreateTempTable { .. } => "CREATE TABLE",
        AuthAction::CreateView { .. } | AuthAction::CreateTempView { .. } => "CREATE VIEW",
        AuthAction::CreateTrigger { .. } | AuthAction::CreateTempTrigger { .. } => "CREATE TRIGGER",
        AuthAction::DropIndex { .. } | AuthAction::DropTempIndex { .. } => "DROP INDEX",
        AuthAction::DropTable { .. } | AuthAction::DropTempTable { .. } => "DROP TABLE",
        AuthAction::DropView { .. } | AuthAction::DropTempView { .. } => "DROP VIEW",
        AuthAction::DropTrigger { .. } | AuthAction::DropTempTrigger { .. } => "DROP TRIGGER",
        AuthAction::AlterTable { .. } => "ALTER TABLE",
        AuthAction::Reindex { .. } => "REINDEX",
        AuthAction::Analyze { .. } => "ANALYZE",
        AuthAction::CreateVtable { .. } => "CREATE VIRTUAL TABLE",
        AuthAction::DropVtable { .. } => "DROP of a virtual table",
        _ => "this statement",
    }
    .to_owned()
}

/// Pragmas that only report: without an argument, or with the name of a
/// table or index to describe.
fn pragma_reads(name: &str, value: Option<&str>) -> bool {
    const DESCRIBE: &[&str] = &[
        "table_info",
        "table_xinfo",
        "index_list",
        "index_info",
        "index_xinfo",
        "foreign_key_list",
    ];
    const REPORT: &[&str] = &[
        "table_list",
        "collation_list",
        "function_list",
        "pragma_list",
        "compile_options",
        "user_version",
        "application_id",
        "schema_version",
        "data_version",
        "page_count",
        "page_size",
        "freelist_count",
        "encoding",
    ];
    let name = name.to_ascii_lowercase();
    DESCRIBE.contains(&name.as_str()) || (value.is_none() && REPORT.contains(&name.as_str()))
}

/// Prepares exactly one statement, refuses it unless it reads only, binds
/// the parameters and collects every row.
fn run(
    conn: &Connection,
    denied: &Denied,
    sql: &str,
    params: &[SqlValue],
) -> Result<QueryRows, QueryError> {
    *denied
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    let mut batch = Batch::new(conn, sql);
    let mut stmt = match batch.next() {
        Ok(Some(stmt)) => stmt,
        Ok(None) => return Err(QueryError::Empty),
        Err(e) => return Err(prepare_error(e, denied)),
    };
    // Anything but whitespace and comments after the first statement.
    if !matches!(batch.next(), Ok(None)) {
        return Err(QueryError::MultipleStatements);
    }
    if !stmt.readonly() {
        return Err(QueryError::ReadOnly {
            what: "a statement that writes".to_owned(),
        });
    }
    let expected = stmt.parameter_count();
    if expected != params.len() {
        return Err(QueryError::Params {
            expected,
            given: params.len(),
        });
    }
    let columns: Vec<String> = stmt.column_names().map(str::to_owned).collect();
    let failed = |e: rusqlite::Error| QueryError::Failed {
        message: e.to_string(),
    };
    let mut rows = stmt
        .query(rusqlite::params_from_iter(params))
        .map_err(failed)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(failed)? {
        let values = (0..columns.len())
            .map(|i| row.get_ref(i).map(SqlValue::from_ref))
            .collect::<Result<Vec<_>, _>>()
            .map_err(failed)?;
        out.push(values);
    }
    Ok(QueryRows { columns, rows: out })
}

/// The error of a statement that did not prepare.
fn prepare_error(e: rusqlite::Error, denied: &Denied) -> QueryError {
    let refused = denied
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    match (e.sqlite_error_code(), refused) {
        (Some(rusqlite::ErrorCode::AuthorizationForStatementDenied), Some(what)) => {
            QueryError::ReadOnly { what }
        }
        _ => QueryError::Invalid {
            message: match e {
                rusqlite::Error::SqlInputError { msg, offset, .. } => {
                    format!("{msg} (at byte {offset})")
                }
                rusqlite::Error::SqliteFailure(_, Some(message)) => message,
                other => other.to_string(),
            },
        },
    }
}
