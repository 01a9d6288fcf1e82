//! `accord query`, `index`, `reindex` and the projection part of `check`
//! (a module of the one CLI test binary, `tests.rs`).

use accord_engine::DocId;
use serde_json::json;

use crate::util::Env;

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
        ("SELECT ?1", "the query uses 1 parameters but 0 were given"),
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
    assert!(run.stderr.contains("check found 2 problems"), "{run:?}");
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
