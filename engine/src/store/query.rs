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
//!
//! Rows are handed to a callback one at a time as SQLite produces them
//! ([`QueryConn::each`]), so a result of any size passes through a bounded
//! amount of memory, and the callback can stop the statement early. With a
//! time limit, a progress handler interrupts the statement once it has
//! spent that long inside SQLite ([`StepClock`]).

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

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

    /// Runs one read-only statement with positional parameters and
    /// returns every row.
    pub fn run(&mut self, sql: &str, params: &[SqlValue]) -> Result<QueryRows, QueryError> {
        QueryRows::collect(|on_row| self.each(sql, params, None, on_row))
    }

    /// Runs one read-only statement and hands each row to `on_row` as it
    /// comes; `Break` stops the statement. With a `time_limit`, the
    /// statement is interrupted with [`QueryError::TimedOut`] once it has
    /// spent that long inside SQLite. Returns the result's column names.
    pub fn each<F>(
        &mut self,
        sql: &str,
        params: &[SqlValue],
        time_limit: Option<Duration>,
        on_row: F,
    ) -> Result<Vec<String>, QueryError>
    where
        F: FnMut(&[String], Vec<SqlValue>) -> ControlFlow<()>,
    {
        timed(&mut self.conn, time_limit, |conn, clock| {
            stream(conn, &self.denied, sql, params, clock, on_row)
        })
    }
}

impl Store {
    /// Runs one read-only statement on this (in-memory) store's own
    /// connection, with the authorizer and `query_only` on for its length,
    /// handing each row to `on_row` as [`QueryConn::each`] does.
    pub fn query_guarded<F>(
        &mut self,
        sql: &str,
        params: &[SqlValue],
        time_limit: Option<Duration>,
        on_row: F,
    ) -> Result<Vec<String>, QueryError>
    where
        F: FnMut(&[String], Vec<SqlValue>) -> ControlFlow<()>,
    {
        let denied = Denied::default();
        self.conn
            .execute_batch("PRAGMA query_only = 1;")
            .map_err(failed)?;
        let result = match install(&mut self.conn, &denied) {
            Ok(()) => timed(&mut self.conn, time_limit, |conn, clock| {
                stream(conn, &denied, sql, params, clock, on_row)
            }),
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

fn failed(e: rusqlite::Error) -> QueryError {
    QueryError::Failed {
        message: e.to_string(),
    }
}

/// How many SQLite virtual-machine instructions pass between two looks at
/// the clock: often enough to stop within a millisecond or so, rarely
/// enough to cost nothing measurable.
const PROGRESS_OPS: std::os::raw::c_int = 1000;

/// Runs `f` with a progress handler that interrupts the statement once it
/// has spent `time_limit` inside SQLite, and removes the handler after.
fn timed<T>(
    conn: &mut Connection,
    time_limit: Option<Duration>,
    f: impl FnOnce(&Connection, Option<&mut StepClock>) -> Result<T, QueryError>,
) -> Result<T, QueryError> {
    let Some(limit) = time_limit else {
        return f(conn, None);
    };
    let mut clock = StepClock::new(limit);
    conn.progress_handler(PROGRESS_OPS, Some(clock.handler()))
        .map_err(failed)?;
    let result = f(conn, Some(&mut clock));
    let removed = conn.progress_handler(0, None::<fn() -> bool>);
    match (result, removed) {
        (Ok(_), Err(e)) => Err(failed(e)),
        (result, _) => result,
    }
}

/// The time a statement may spend inside SQLite. The clock runs only
/// while SQLite works on the next row, not while the caller handles one
/// (writes it to a slow pipe, say), so a slow reader is never mistaken
/// for a slow query.
#[derive(Debug)]
struct StepClock {
    /// The limit the caller gave.
    limit: Duration,
    /// Time spent inside SQLite by the steps that finished.
    spent: Duration,
    /// Shared with the progress handler, which runs inside SQLite.
    watch: Arc<Mutex<Watch>>,
}

/// What the progress handler looks at and leaves behind.
#[derive(Debug, Default)]
struct Watch {
    /// When the current step must end; `None` between steps.
    deadline: Option<Instant>,
    /// Whether the handler interrupted the statement.
    expired: bool,
}

impl StepClock {
    fn new(limit: Duration) -> Self {
        StepClock {
            limit,
            spent: Duration::ZERO,
            watch: Arc::default(),
        }
    }

    /// The progress handler: interrupts (returns true) past the deadline.
    fn handler(&self) -> impl FnMut() -> bool + Send + 'static {
        let watch = Arc::clone(&self.watch);
        move || {
            let mut watch = watch.lock();
            let late = watch.deadline.is_some_and(|d| Instant::now() >= d);
            watch.expired |= late;
            late
        }
    }

    /// Runs one step of the statement on the clock.
    fn step<T>(&mut self, step: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        self.set_deadline(Some(start + self.limit.saturating_sub(self.spent)));
        let out = step();
        self.set_deadline(None);
        self.spent += start.elapsed();
        out
    }

    fn set_deadline(&self, deadline: Option<Instant>) {
        self.watch.lock().deadline = deadline;
    }

    /// The error for a failed step: `TimedOut` if the handler stopped it.
    fn error(&self, e: rusqlite::Error) -> QueryError {
        let expired = self.watch.lock().expired;
        if expired {
            QueryError::TimedOut { limit: self.limit }
        } else {
            failed(e)
        }
    }
}

fn install(conn: &mut Connection, denied: &Denied) -> Result<(), rusqlite::Error> {
    let denied = Arc::clone(denied);
    conn.authorizer(Some(move |ctx: AuthContext<'_>| {
        match refusal(&ctx.action) {
            None => Authorization::Allow,
            Some(what) => {
                denied.lock().get_or_insert(what);
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
/// the parameters and hands the rows to `on_row` one at a time.
fn stream<F>(
    conn: &Connection,
    denied: &Denied,
    sql: &str,
    params: &[SqlValue],
    mut clock: Option<&mut StepClock>,
    mut on_row: F,
) -> Result<Vec<String>, QueryError>
where
    F: FnMut(&[String], Vec<SqlValue>) -> ControlFlow<()>,
{
    *denied.lock() = None;
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
    let mut rows = stmt
        .query(rusqlite::params_from_iter(params))
        .map_err(failed)?;
    loop {
        let next = match clock.as_deref_mut() {
            Some(clock) => {
                clock.step(|| rows.next().map(|row| row.map(|r| values(r, columns.len()))))
            }
            None => rows.next().map(|row| row.map(|r| values(r, columns.len()))),
        };
        let row = match next {
            Ok(Some(row)) => row.map_err(failed)?,
            Ok(None) => break,
            Err(e) => {
                return Err(match clock {
                    Some(clock) => clock.error(e),
                    None => failed(e),
                })
            }
        };
        if on_row(&columns, row).is_break() {
            break;
        }
    }
    Ok(columns)
}

/// One row's values, column by column.
fn values(row: &rusqlite::Row<'_>, columns: usize) -> Result<Vec<SqlValue>, rusqlite::Error> {
    (0..columns)
        .map(|i| row.get_ref(i).map(SqlValue::from_ref))
        .collect()
}

/// The error of a statement that did not prepare.
fn prepare_error(e: rusqlite::Error, denied: &Denied) -> QueryError {
    let refused = denied.lock().take();
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
