//! `accord query` (its output, caps, streaming and time limit), `index`,
//! `reindex` and the projection part of `check` (a module of the one CLI
//! test binary, `tests.rs`).

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use accord_engine::DocId;
use serde_json::json;

use crate::util::{run_within, Env};

/// Counts without end: only a cap, a reader that leaves or a time limit
/// stops it (the SQL of the report that aborted the CLI).
const ENDLESS: &str =
    "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM n) SELECT x FROM n";

/// A guard against a hanging binary, not a synchronisation.
const PATIENCE: Duration = Duration::from_secs(60);

/// Three records in two collections.
fn sample(env: &Env) -> (String, String, String) {
    let ada = env.new_record(
        "contacts",
        r#"{"name": "Ada Lovelace", "age": 36, "tags": ["math", "engines"]}"#,
    );
    let grace = env.new_record(
        "contacts",
        r#"{"name": "Grace Hopper", "age": 85.5, "tags": ["navy"]}"#,
    );
    let task = env.new_record("tasks", r#"{"title": "write docs", "done": false}"#);
    (ada, grace, task)
}

#[test]
fn query_has_readable_times_and_a_view_without_deleted_records() {
    let env = Env::new();
    let (ada, grace, _task) = sample(&env);
    env.ok(&["rm", &grace]);
    let rows = env.json(&[
        "--json",
        "query",
        "SELECT id, created, updated FROM live_records WHERE collection = 'contacts'",
    ]);
    let rows = rows.as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["id"], ada.as_str());
    // The same RFC 3339 form every other --json uses for times.
    let listed = env.json(&["--json", "ls", "contacts"]);
    assert_eq!(rows[0]["created"], listed[0]["created_at"]);
    assert_eq!(rows[0]["updated"], listed[0]["updated_at"]);
    // `records` keeps deleted ones, flagged.
    let all = env.json(&[
        "--json",
        "query",
        "SELECT id, deleted FROM records WHERE collection = 'contacts' ORDER BY deleted",
    ]);
    assert_eq!(
        all,
        json!([{"id": ada, "deleted": 0}, {"id": grace, "deleted": 1}])
    );
}

#[test]
fn query_prints_an_aligned_table_with_the_result_columns() {
    let env = Env::new();
    let (ada, grace, task) = sample(&env);
    let out = env.ok(&[
        "query",
        "SELECT id, json_extract(json, '$.name') AS name, json_extract(json, '$.age') AS age
         FROM records ORDER BY name",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["id", "name", "age"]
    );
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        [task.as_str(), "NULL", "NULL"]
    );
    assert!(
        lines[2].starts_with(&ada) && lines[2].contains("Ada Lovelace"),
        "{out}"
    );
    assert!(lines[3].starts_with(&grace), "{out}");
    // Numbers are right-aligned: the ends of the age column line up.
    assert_eq!(
        lines[2].trim_end().len(),
        lines[3].trim_end().len(),
        "{out}"
    );
    // No rows: no output at all.
    assert_eq!(env.ok(&["query", "SELECT id FROM records WHERE 0"]), "");
}

#[test]
fn query_json_is_an_array_of_objects_and_params_are_typed() {
    let env = Env::new();
    let (ada, _, _) = sample(&env);
    let rows = env.json(&[
        "--json",
        "query",
        "SELECT records.id, records.json ->> '$.name' AS name, t.value AS tag
         FROM records, json_each(records.json, '$.tags') AS t
         WHERE collection = ?1 AND records.json ->> '$.age' < ?2 ORDER BY tag",
        "--param",
        "contacts",
        "-p",
        "50",
    ]);
    assert_eq!(
        rows,
        json!([
            {"id": ada, "name": "Ada Lovelace", "tag": "engines"},
            {"id": ada, "name": "Ada Lovelace", "tag": "math"}
        ])
    );
    // A quoted JSON string stays text; `true` is 1, as SQLite's JSON gives it.
    let rows = env.json(&[
        "--json",
        "query",
        "SELECT typeof(?1) AS a, ?2 AS b",
        "-p",
        "\"42\"",
        "-p",
        "true",
    ]);
    assert_eq!(rows, json!([{"a": "text", "b": 1}]));
    assert_eq!(
        env.json(&["--json", "query", "SELECT 1 WHERE 0"]),
        json!([])
    );
}

#[test]
fn query_refuses_writes_and_bad_sql_and_changes_nothing() {
    let env = Env::new();
    sample(&env);
    let before = env.ok(&[
        "--json",
        "query",
        "SELECT id, json FROM records ORDER BY id",
    ]);
    for (sql, said) in [
        (
            "DELETE FROM docs",
            "queries are read-only: DELETE from docs is not allowed",
        ),
        (
            "DROP TABLE chunks",
            "queries are read-only: changing the schema is not allowed",
        ),
        (
            "PRAGMA user_version = 9",
            "queries are read-only: PRAGMA user_version = 9",
        ),
        ("ATTACH 'x.db' AS x", "queries are read-only: ATTACH"),
        ("SELECT 1; DELETE FROM docs", "a query is one statement"),
        ("SELEC 1", "bad SQL: near \"SELEC\": syntax error"),
        ("SELECT ?1", "the query uses 1 parameter but 0 were given"),
    ] {
        let err = env.fails(1, &["query", sql]);
        assert!(
            err.starts_with("error: ") && err.contains(said),
            "{sql}: {err}"
        );
    }
    assert!(!env.path().join("x.db").exists());
    let after = env.ok(&[
        "--json",
        "query",
        "SELECT id, json FROM records ORDER BY id",
    ]);
    assert_eq!(before, after);
    assert!(env.ok(&["check"]).contains("projection matches"));
}

#[test]
fn index_commands_create_list_use_and_drop() {
    let env = Env::new();
    sample(&env);
    let name = env
        .ok(&["index", "create", "contacts", "$.name"])
        .trim()
        .to_owned();
    assert!(name.starts_with("records_contacts_name_"), "{name}");
    assert_eq!(
        env.ok(&["index", "create", "contacts", "$.name"]).trim(),
        name
    );
    let listed = env.json(&["--json", "index", "ls"]);
    assert_eq!(
        listed,
        json!([{"collection": "contacts", "path": "$.name", "name": name}])
    );
    let table = env.ok(&["index", "ls"]);
    assert!(
        table.lines().nth(1).is_some_and(|l| l.contains("$.name")),
        "{table}"
    );
    let plan = env.ok(&[
        "query",
        "EXPLAIN QUERY PLAN SELECT id FROM records
         WHERE collection = 'contacts' AND json_extract(json, '$.name') = ?",
        "-p",
        "Ada Lovelace",
    ]);
    assert!(plan.contains(&format!("USING INDEX {name}")), "{plan}");
    let err = env.fails(
        1,
        &[
            "index",
            "create",
            "contacts",
            "$.name'); DROP TABLE docs; --",
        ],
    );
    assert!(err.contains("bad index path"), "{err}");
    env.ok(&["index", "drop", "contacts", "$.name"]);
    assert_eq!(env.json(&["--json", "index", "ls"]), json!([]));
    let err = env.fails(1, &["index", "drop", "contacts", "$.name"]);
    assert!(err.contains("no index on $.name in contacts"), "{err}");
}

#[test]
fn check_finds_a_wrong_projection_and_reindex_repairs_it() {
    let env = Env::new();
    let (ada, grace, _) = sample(&env);
    let conn = rusqlite::Connection::open(&env.db).expect("sqlite");
    conn.execute("UPDATE projection SET json = '{}' WHERE id = ?1", [&ada])
        .expect("damage");
    conn.execute("DELETE FROM projection WHERE id = ?1", [&grace])
        .expect("damage");
    drop(conn);
    let run = env.run(&["check"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    let line = |id: &str| {
        run.stdout
            .lines()
            .find(|l| l.starts_with("projection") && l.contains(id))
    };
    assert!(
        line(&ada).is_some_and(|l| l.contains("json differs")),
        "{run:?}"
    );
    assert!(
        line(&grace).is_some_and(|l| l.contains("no projection row")),
        "{run:?}"
    );
    assert!(
        run.stdout
            .contains("2 projection rows wrong (run `accord reindex`)"),
        "{run:?}"
    );
    assert!(
        run.stderr.contains("found 2 problems") && !run.stderr.contains("Repairing"),
        "{run:?}"
    );
    let report = crate::util::run(&mut env.cmd(&["--json", "check"]));
    let report: serde_json::Value = serde_json::from_str(&report.stdout).expect("json");
    assert_eq!(report["ok"], false);
    assert_eq!(report["projection"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        env.ok(&["reindex"]),
        "reindexed 3 records: 2 rows repaired, 0 removed\n"
    );
    let report = env.json(&["--json", "reindex"]);
    assert_eq!(
        report,
        json!({"records": 3, "repaired": 0, "removed": 0, "unreadable": []})
    );
    assert!(env.ok(&["check"]).contains("0 damaged; projection matches"));
    let name = env.json(&[
        "--json",
        "query",
        "SELECT json ->> 'name' AS n FROM records WHERE id = ?",
        "-p",
        &ada,
    ]);
    assert_eq!(name, json!([{"n": "Ada Lovelace"}]));
    let _: DocId = ada.parse().expect("the id column is the printed id");
}

#[test]
fn an_endless_query_stops_at_the_default_cap_with_status_3_and_a_note() {
    let env = Env::new();
    sample(&env);
    let run = run_within(&mut env.cmd(&["query", ENDLESS]), PATIENCE);
    assert_eq!(run.code, Some(3), "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    // The header and exactly the first 10,000 rows, in one aligned table.
    assert_eq!(lines.len(), 10_001, "bounded output");
    assert_eq!(lines[0].trim(), "x");
    assert_eq!(lines[1].trim(), "1");
    assert_eq!(lines[10_000].trim(), "10000");
    assert_eq!(lines[1].len(), lines[10_000].len(), "one page, aligned");
    assert_eq!(
        run.stderr.trim_end(),
        "note: stopped after 10000 rows (the default cap); the query has more: \
         give --limit N to print up to N rows, or --limit 0 for every row"
    );

    // As JSON: a complete, valid array of the first 10,000 rows.
    let run = run_within(&mut env.cmd(&["--json", "query", ENDLESS]), PATIENCE);
    assert_eq!(run.code, Some(3), "{}", run.stderr);
    let rows: serde_json::Value = serde_json::from_str(&run.stdout).expect("a closed JSON array");
    let rows = rows.as_array().expect("an array");
    assert_eq!(rows.len(), 10_000);
    assert_eq!(rows[9_999], json!({"x": 10_000}));
    assert!(run.stderr.contains("the default cap"), "{}", run.stderr);
}

#[test]
fn limit_caps_the_rows_and_a_result_that_fits_says_nothing() {
    let env = Env::new();
    sample(&env);
    let run = run_within(&mut env.cmd(&["query", "--limit", "5", ENDLESS]), PATIENCE);
    assert_eq!(run.code, Some(0), "asked for 5 rows and got them: {run:?}");
    let rows: Vec<&str> = run.stdout.lines().map(str::trim).collect();
    assert_eq!(rows, ["x", "1", "2", "3", "4", "5"]);
    assert!(
        run.stderr
            .starts_with("note: stopped after 5 rows (--limit 5); the query has more"),
        "{}",
        run.stderr
    );
    let run = run_within(
        &mut env.cmd(&["query", "--json-lines", "--limit", "2", ENDLESS]),
        PATIENCE,
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stdout, "{\"x\":1}\n{\"x\":2}\n");

    // Exactly as many rows as the cap: nothing was cut, nothing is said.
    let three = "SELECT id FROM records";
    assert_eq!(env.ok(&["query", "--limit", "3", three]).lines().count(), 4);
    assert_eq!(
        env.json(&["--json", "query", "--limit", "3", three])
            .as_array()
            .map(Vec::len),
        Some(3)
    );
}

#[test]
fn rows_stream_so_a_reader_can_leave_an_endless_result_without_a_cap() {
    let env = Env::new();
    sample(&env);
    let mut child = env
        .cmd(&["query", "--json-lines", "--limit", "0", ENDLESS])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn accord");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = Vec::new();
    for _ in 0..3 {
        let mut line = String::new();
        stdout.read_line(&mut line).expect("a row arrives");
        first.push(line);
    }
    assert_eq!(first, ["{\"x\":1}\n", "{\"x\":2}\n", "{\"x\":3}\n"]);
    // The reader goes away, as `| head -3` does: accord stops, quietly.
    drop(stdout);
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    let out = finished
        .recv_timeout(PATIENCE)
        .expect("accord stopped once its reader left")
        .expect("wait");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
}

#[test]
fn a_long_table_is_printed_in_pages_under_one_header() {
    let env = Env::new();
    sample(&env);
    let sql = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM n WHERE x < 10005)
               SELECT x, 'row ' || x AS label FROM n";
    let run = run_within(&mut env.cmd(&["query", "--limit", "0", sql]), PATIENCE);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stderr.is_empty(), "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 10_006, "header and every row");
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["x", "label"]
    );
    assert_eq!(
        lines[10_001].split_whitespace().collect::<Vec<_>>(),
        ["10001", "row", "10001"],
        "the second page starts without a header"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.split_whitespace().next() == Some("x"))
            .count(),
        1
    );
}

#[test]
fn a_query_that_runs_too_long_stops_at_the_timeout_and_says_how_to_allow_more() {
    let env = Env::new();
    sample(&env);
    let count = format!("SELECT count(*) FROM ({ENDLESS})");
    let run = run_within(&mut env.cmd(&["query", "--timeout", "1", &count]), PATIENCE);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    assert_eq!(
        run.stderr.trim_end(),
        "error: query stopped: it ran for longer than its time limit of 1s \
         (give --timeout SECONDS for a longer limit, or --timeout 0 for none)"
    );
    // Rows printed before the limit stay printed; an array cut short by the
    // error stays open, so nobody takes it for the whole result. (Three
    // rows, then SQLite counts on without finding another.)
    let three_then_nothing = format!("SELECT x FROM ({ENDLESS}) WHERE x <= 3 OR x < 0");
    let run = run_within(
        &mut env.cmd(&["--json", "query", "--timeout", "1", &three_then_nothing]),
        PATIENCE,
    );
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "[\n  {\n    \"x\": 1\n  },\n  {\n    \"x\": 2\n  },\n  {\n    \"x\": 3\n  }\n"
    );
    assert!(serde_json::from_str::<serde_json::Value>(&run.stdout).is_err());
    assert!(run.stderr.contains("time limit of 1s"), "{}", run.stderr);
}
