//! Integration tests of the `accord` binary: each test runs the built
//! binary against a database in a temporary directory and checks its
//! stdout, stderr and exit status.

mod queries;
mod util;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use accord_engine::{DocId, Origin};
use serde_json::json;
use util::{keys, Env};

// ---- creating, reading, writing ----

#[test]
fn new_prints_the_id_alone_and_creates_the_database() {
    let env = Env::new();
    let out = env.ok(&["new", "contacts", "--data", r#"{"name": "Ada"}"#]);
    assert!(out.ends_with('\n') && out.lines().count() == 1, "{out:?}");
    let id: DocId = out.trim().parse().expect("an id");
    assert!(env.db.exists());
    let url = format!("automerge:{id}");
    assert_eq!(env.json(&["get", &url]), json!({"name": "Ada"}));
}

#[test]
fn new_with_json_prints_an_object() {
    let env = Env::new();
    let shown = env.json(&["--json", "new", "contacts", "-m", "first"]);
    assert_eq!(keys(&shown), ["collection", "id", "url"]);
    assert_eq!(shown["collection"], "contacts");
}

#[test]
fn the_readme_installs_and_runs_the_cli_as_it_says() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    // The install line names this package's directory and binary.
    assert!(readme.contains("cargo install --path cli"), "install line");
    assert_eq!(env!("CARGO_PKG_NAME"), "accord-cli");
    assert!(env!("CARGO_BIN_EXE_accord").ends_with("/accord"));
    // Its walk-through runs as written, against a real relay.
    let env = Env::new();
    let relay = Relay::start(env.path().join("relay.db"));
    let lines: Vec<&str> = readme
        .lines()
        .filter(|l| l.starts_with("accord "))
        .map(|l| l.split(" # ").next().unwrap_or(l).trim())
        .collect();
    assert!(lines.len() >= 4, "{lines:?}");
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_accord"))
        .parent()
        .expect("bin dir");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for line in &lines {
        let line = line.replace("ws://127.0.0.1:7420", &relay.url);
        let out = std::process::Command::new("sh")
            .args(["-c", &line])
            .current_dir(env.path())
            .env("PATH", &path)
            .env_remove("ACCORD_DB")
            .output()
            .expect("sh");
        assert!(out.status.success(), "README line `{line}` failed: {out:?}");
    }
    // The laptop fetched the phone's record.
    let phone = env.path().join("phone.db");
    let laptop = env.path().join("laptop.db");
    let on = |db: &std::path::Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_accord"))
            .arg("--db")
            .arg(db)
            .args(["--json", "ls"])
            .output()
            .expect("ls");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")
    };
    assert_eq!(on(&laptop)[0]["id"], on(&phone)[0]["id"]);
    assert_eq!(on(&laptop)[0]["preview"], "Ada");
}

#[test]
fn put_on_the_whole_record_merges_top_level_keys() {
    let env = Env::new();
    let id = env.new_record("c", r#"{"a": 1, "b": {"x": 1}}"#);
    env.ok(&["put", &id, "", r#"{"b": {"y": 2}, "c": 3}"#]);
    assert_eq!(
        env.json(&["get", &id]),
        json!({"a": 1, "b": {"y": 2}, "c": 3})
    );
    let err = env.fails(1, &["put", &id, "", "5"]);
    assert!(err.contains("must be a JSON object"), "{err}");
    let help = env.ok(&["put", "--help"]);
    assert!(help.contains("keys it does not name stay"), "{help}");
    assert!(help.contains("<ID> <FIELD> <JSON>"), "{help}");
    let top = env.ok(&["--help"]);
    assert!(top.contains("--db <FILE>"), "{top}");
}

#[test]
fn put_and_get_follow_paths() {
    let env = Env::new();
    let id = env.new_record("contacts", r#"{"name": "Ada", "tags": ["a"]}"#);
    env.ok(&[
        "put",
        &id,
        "email",
        r#""ada@example.org""#,
        "-m",
        "add email",
    ]);
    env.ok(&["put", &id, "tags.1", r#""b""#]);
    env.ok(&["put", &id, "address.city", r#""London""#]);
    assert_eq!(env.ok(&["get", &id, "tags.1"]), "\"b\"\n");
    assert_eq!(
        env.json(&["get", &id, "address"]),
        json!({"city": "London"})
    );
    let all = env.json(&["--json", "get", &id]);
    assert_eq!(
        all,
        json!({"name": "Ada", "email": "ada@example.org", "tags": ["a", "b"], "address": {"city": "London"}})
    );
}

#[test]
fn unset_removes_keys_and_list_elements() {
    let env = Env::new();
    let id = env.new_record(
        "contacts",
        r#"{"name": "Ada", "tags": ["a", "b"], "address": {"city": "London"}}"#,
    );
    let before = env.ok(&["heads", &id]).trim().to_owned();
    env.ok(&["unset", &id, "tags.0", "-m", "drop a tag"]);
    env.ok(&["unset", &id, "address.city"]);
    assert_eq!(
        env.json(&["get", &id]),
        json!({"name": "Ada", "tags": ["b"], "address": {}})
    );
    let diff = env.ok(&["diff", &id, &before]);
    assert!(
        diff.lines().any(|l| l == "delete tags[0] (1 items)"),
        "{diff}"
    );
    assert!(diff.lines().any(|l| l == "delete address.city"), "{diff}");
    let patches = env.json(&["--json", "diff", &id, &before]);
    let actions: Vec<_> = patches
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| (p["action"].clone(), p["path"].clone()))
        .collect();
    assert!(
        actions.contains(&(json!("delete"), json!(["tags", 0]))),
        "{patches}"
    );
    assert!(env
        .fails(1, &["unset", &id, "nope"])
        .contains("nothing at path 'nope'"));
    assert!(env
        .fails(1, &["unset", &id, "tags.x"])
        .contains("not a number"));
    assert!(env
        .fails(1, &["unset", &id, "tags.7"])
        .contains("nothing at path"));
    assert!(env
        .fails(1, &["unset", &id, "name.first"])
        .contains("not an object or list"));
    assert!(env.fails(1, &["unset", &id, ""]).contains("accord rm"));
}

#[test]
fn get_at_past_heads_with_full_and_short_hashes() {
    let env = Env::new();
    let id = env.new_record("contacts", r#"{"name": "Ada"}"#);
    let first = env.ok(&["heads", &id]).trim().to_owned();
    assert_eq!(first.len(), 64);
    env.ok(&["put", &id, "name", r#""Grace""#]);
    assert_eq!(
        env.json(&["get", &id, "--at", &first]),
        json!({"name": "Ada"})
    );
    assert_eq!(
        env.json(&["get", &id, "name", "--at", &first[..7]]),
        json!("Ada")
    );
    assert_eq!(env.json(&["get", &id, "--at", ""]), json!({}));
    assert_eq!(
        env.json(&["--json", "heads", &id]).as_array().map(Vec::len),
        Some(1)
    );
}

#[test]
fn rm_hides_the_record_but_keeps_its_history() {
    let env = Env::new();
    let id = env.new_record("contacts", r#"{"name": "Ada"}"#);
    let keep = env.new_record("contacts", r#"{"name": "Grace"}"#);
    env.ok(&["rm", &id]);
    let err = env.fails(1, &["get", &id]);
    assert!(err.contains(&format!("record {id} was deleted")), "{err}");
    assert!(!env.ok(&["ls"]).contains(&id));
    assert!(env.ok(&["ls", "--deleted"]).contains(&id));
    assert_eq!(
        env.json(&["--json", "ls"]).as_array().map(Vec::len),
        Some(1)
    );
    let all = env.json(&["--json", "ls", "--deleted"]);
    let gone: Vec<_> = all
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["deleted"] == true)
        .collect();
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0]["id"], id.as_str());
    assert_eq!(
        env.ok(&["log", &id]).lines().count(),
        2,
        "header and one change"
    );
    let heads = env.ok(&["heads", &id]);
    assert_eq!(
        env.json(&["get", &id, "--at", heads.trim()]),
        json!({"name": "Ada"})
    );
    assert!(env.ok(&["get", &keep]).contains("Grace"));
}

// ---- listing ----

#[test]
fn ls_shows_aligned_columns_and_filters_by_collection() {
    let env = Env::new();
    let ada = env.new_record("contacts", r#"{"name": "Ada"}"#);
    let note = env.new_record("notes", r#"{"text": "hi"}"#);
    env.ok(&["put", &ada, "age", "36"]);
    let out = env.ok(&["ls"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["ID", "COLLECTION", "CHANGES", "UPDATED", "SIZE", "PREVIEW"]
    );
    let row = lines.iter().find(|l| l.contains(&ada)).expect("ada's row");
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[..3], [ada.as_str(), "contacts", "2"]);
    // UPDATED is a local time with its offset (TZ=UTC here).
    assert_eq!(cells[5], "+00:00", "{row}");
    assert!(cells[7] == "B" || cells[7].ends_with("iB"), "{row}");
    assert_eq!(cells[8..], ["Ada"], "{row}");
    let row = lines
        .iter()
        .find(|l| l.contains(&note))
        .expect("note's row");
    assert!(row.ends_with(" hi"), "{row}");
    let col = lines[0].find("COLLECTION").expect("column");
    assert!(
        lines[1..].iter().all(|l| l[col..].starts_with(['c', 'n'])),
        "{out}"
    );
    let only = env.ok(&["ls", "notes"]);
    assert!(only.contains(&note) && !only.contains(&ada), "{only}");
}

#[test]
fn ls_json_is_an_array_of_records() {
    let env = Env::new();
    let id = env.new_record("contacts", r#"{"name": "Ada"}"#);
    let rows = env.json(&["ls", "--json"]);
    let row = &rows[0];
    for key in [
        "id",
        "collection",
        "changes",
        "updated_at",
        "size",
        "deleted",
    ] {
        assert!(row.get(key).is_some(), "{key} missing in {row}");
    }
    assert_eq!(row["id"], id.as_str());
    assert_eq!(row["changes"], 1);
    assert!(row["size"].as_u64().is_some_and(|s| s > 0));
    assert!(row["updated_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(env.json(&["ls", "--json", "nothing-here"]), json!([]));
    assert_eq!(env.ok(&["ls", "nothing-here"]), "");
}

#[test]
fn collections_info_and_heads() {
    let env = Env::new();
    let id = env.new_record("contacts", r#"{"name": "Ada"}"#);
    env.new_record("contacts", r#"{"name": "Grace"}"#);
    env.new_record("notes", "{}");
    env.ok(&["rm", &id]);
    let rows = env.json(&["--json", "collections"]);
    assert_eq!(rows[0]["collection"], "contacts");
    assert_eq!(
        (rows[0]["records"].clone(), rows[0]["deleted"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(rows[1]["records"], 1);
    let table = env.ok(&["collections"]);
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().take(3).eq(["contacts", "1", "1"])),
        "{table}"
    );
    let info = env.ok(&["info", &id]);
    assert!(
        info.contains(&format!("url:        automerge:{id}")),
        "{info}"
    );
    assert!(info.contains("deleted:    yes"), "{info}");
    assert_eq!(env.json(&["--json", "info", &id])["deleted"], true);
}

// ---- history ----

#[test]
fn log_lists_changes_newest_first() {
    let env = Env::new();
    let id = env.new_record("contacts", r#"{"name": "Ada"}"#);
    env.ok(&["put", &id, "name", r#""Grace""#, "-m", "rename"]);
    env.ok(&["put", &id, "age", "36", "-m", "add age"]);
    let out = env.ok(&["log", &id]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["HASH", "DEVICE", "SEQ", "TIME", "OPS", "MESSAGE"]
    );
    assert!(
        lines[1].ends_with("add age") && lines[2].ends_with("rename"),
        "{out}"
    );
    let cells: Vec<&str> = lines[1].split_whitespace().collect();
    assert!(cells[0].len() == 8 && cells[0].bytes().all(|b| b.is_ascii_hexdigit()));
    // Every change was made here: one device, marked `*`, although each
    // `accord` process wrote with its own actor.
    assert_eq!(cells[1].len(), 9, "{out}");
    assert!(cells[1].ends_with('*'), "{out}");
    assert!(lines[1..].iter().all(|l| l.contains(cells[1])), "{out}");
    assert_eq!(cells[2], "1");
    assert_eq!(env.ok(&["log", &id, "-n", "1"]).lines().count(), 2);
}

#[test]
fn log_json_has_the_change_fields() {
    let env = Env::new();
    let id = env.new_record("contacts", r#"{"name": "Ada"}"#);
    env.ok(&["put", &id, "name", r#""Grace""#, "-m", "rename"]);
    let log = env.json(&["--json", "log", &id]);
    let changes = log.as_array().expect("array");
    assert_eq!(changes.len(), 2);
    assert_eq!(
        keys(&changes[0]),
        [
            "actor",
            "deps",
            "device",
            "hash",
            "message",
            "ops",
            "seq",
            "this_device",
            "time"
        ]
    );
    assert_ne!(changes[0]["actor"], changes[1]["actor"]);
    assert_eq!(changes[0]["device"], changes[1]["device"]);
    let device = changes[0]["device"].as_str().expect("device");
    assert!(changes[0]["actor"]
        .as_str()
        .expect("actor")
        .starts_with(device));
    assert_eq!(device.len(), 16);
    assert_eq!(changes[0]["this_device"], true);
    assert_eq!(changes[0]["message"], "rename");
    assert_eq!(changes[0]["deps"], json!([changes[1]["hash"]]));
    assert_eq!(changes[1]["deps"], json!([]));
    assert_eq!(changes[1]["message"], serde_json::Value::Null);
    assert_eq!(
        env.json(&["--json", "log", &id, "-n", "1"])
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

/// A record edited on two replicas at once and then merged: one root, two
/// changes on each side, and a change on top of the merge.
fn branched_record(env: &Env) -> DocId {
    let here = env.replica();
    let id = here
        .create("notes", &json!({"title": "plan"}))
        .expect("create");
    let there = accord_engine::Replica::open_in_memory().expect("replica");
    let remote = || Origin::Remote("peer".parse().expect("valid peer id"));
    there
        .merge_bytes(&id, "notes", &here.save(&id).expect("save"), remote())
        .expect("merge");
    for i in 0..2 {
        here.put(&id, "here", &json!(i), Some("edit here"))
            .expect("put");
        there
            .put(&id, "there", &json!(i), Some("edit there"))
            .expect("put");
    }
    here.merge_bytes(&id, "notes", &there.save(&id).expect("save"), remote())
        .expect("merge");
    here.put(&id, "done", &json!(true), Some("after merge"))
        .expect("put");
    id
}

#[test]
fn log_graph_draws_branches_and_merges() {
    let env = Env::new();
    let id = branched_record(&env).to_string();
    let out = env.ok(&["log", "--graph", &id]);
    let lines: Vec<&str> = out.lines().collect();
    let stars: Vec<&&str> = lines.iter().filter(|l| l.contains('*')).collect();
    assert_eq!(stars.len(), 6, "{out}");
    assert!(
        lines[0].starts_with("*  ") && lines[0].ends_with("after merge"),
        "{out}"
    );
    assert_eq!(lines[1], "|\\", "the merge opens a second column:\n{out}");
    assert!(
        lines.iter().any(|l| l.starts_with("| * ")),
        "a change on the second column:\n{out}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("* | ")),
        "a change beside it:\n{out}"
    );
    assert!(
        lines.contains(&"|/"),
        "the branches join at their fork:\n{out}"
    );
    assert!(lines.last().is_some_and(|l| l.starts_with("*  ")), "{out}");
    let hash_col = lines[0]
        .find(|c: char| c.is_ascii_hexdigit())
        .expect("hash");
    assert!(
        stars
            .iter()
            .all(|l| l[hash_col..].chars().take(8).all(|c| c.is_ascii_hexdigit())),
        "aligned:\n{out}"
    );
    assert_eq!(
        env.ok(&["log", "--graph", "-n", "2", &id])
            .lines()
            .filter(|l| l.contains('*'))
            .count(),
        2
    );
}

#[test]
fn log_graph_shows_unmerged_heads_side_by_side() {
    let env = Env::new();
    let replica = env.replica();
    let id = replica.create("notes", &json!({"a": 1})).expect("create");
    let other = accord_engine::Replica::open_in_memory().expect("replica");
    other
        .merge_bytes(
            &id,
            "notes",
            &replica.save(&id).expect("save"),
            Origin::Local,
        )
        .expect("merge");
    other.put(&id, "b", &json!(2), None).expect("put");
    replica.put(&id, "c", &json!(3), None).expect("put");
    replica
        .merge_bytes(&id, "notes", &other.save(&id).expect("save"), Origin::Local)
        .expect("merge");
    drop(replica);
    let out = env.ok(&["log", "--graph", &id.to_string()]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("*  ") && lines[1].starts_with("| * ") && lines[2] == "|/",
        "{out}"
    );
    assert_eq!(
        env.ok(&["heads", &id.to_string()])
            .trim()
            .split(',')
            .count(),
        2
    );
}

#[test]
fn log_tells_devices_apart_and_draws_the_same_graph_everywhere() {
    let (phone, laptop) = (Env::new(), Env::new());
    let (p, l) = (phone.replica(), laptop.replica());
    let id = p.create("notes", &json!({"a": 1})).expect("create");
    l.merge_bytes(&id, "notes", &p.save(&id).expect("save"), Origin::Local)
        .expect("merge");
    // Concurrent changes within the same second, merged in opposite orders.
    p.put(&id, "b", &json!(2), Some("on the phone"))
        .expect("put");
    l.put(&id, "c", &json!(3), Some("on the laptop"))
        .expect("put");
    let (from_phone, from_laptop) = (p.save(&id).expect("save"), l.save(&id).expect("save"));
    p.merge_bytes(&id, "notes", &from_laptop, Origin::Local)
        .expect("merge");
    l.merge_bytes(&id, "notes", &from_phone, Origin::Local)
        .expect("merge");
    let (phone_device, laptop_device) = (p.device(), l.device());
    assert_ne!(phone_device, laptop_device);
    drop((p, l));
    let id = id.to_string();

    let unmarked = |out: String| out.replace('*', " ");
    let graph = phone.ok(&["log", "--graph", &id]);
    assert_eq!(
        unmarked(graph.clone()),
        unmarked(laptop.ok(&["log", "--graph", &id]))
    );
    // The phone's own changes carry its device, marked; the laptop's not.
    let line = |text: &str| graph.lines().find(|l| l.ends_with(text)).map(str::to_owned);
    let mine = line("on the phone").expect("phone's change");
    let theirs = line("on the laptop").expect("laptop's change");
    assert!(
        mine.contains(&format!("{}*", &phone_device[..8])),
        "{graph}"
    );
    assert!(
        theirs.contains(&format!("{} ", &laptop_device[..8])),
        "{graph}"
    );
    let changes = phone.json(&["--json", "log", &id]);
    let devices: Vec<(&str, bool)> = changes
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| {
            (
                c["device"].as_str().expect("device"),
                c["this_device"] == true,
            )
        })
        .collect();
    assert!(
        devices.contains(&(laptop_device.as_str(), false)),
        "{changes}"
    );
    assert!(
        devices.contains(&(phone_device.as_str(), true)),
        "{changes}"
    );
}

#[test]
fn ls_previews_the_content_or_the_field_asked_for() {
    let env = Env::new();
    let ada = env.new_record(
        "contacts",
        r#"{"email": "ada@example.org", "name": "Ada Lovelace", "age": 36}"#,
    );
    let bob = env.new_record("contacts", r#"{"age": 40, "city": "Paris"}"#);
    let long = env.new_record("notes", &json!({"text": "x".repeat(100)}).to_string());
    let out = env.ok(&["ls"]);
    let row = |id: &str| {
        out.lines()
            .find(|l| l.contains(id))
            .expect("row")
            .to_owned()
    };
    assert!(row(&ada).ends_with("Ada Lovelace"), "{out}");
    assert!(row(&bob).ends_with("Paris"), "{out}");
    assert!(
        row(&long).ends_with(&format!("{}…", "x".repeat(39))),
        "{out}"
    );
    let by_age = env.ok(&["ls", "contacts", "--show", "age"]);
    assert!(
        by_age
            .lines()
            .any(|l| l.contains(&ada) && l.ends_with(" 36")),
        "{by_age}"
    );
    assert!(
        by_age
            .lines()
            .any(|l| l.contains(&bob) && l.ends_with(" 40")),
        "{by_age}"
    );
    let rows = env.json(&["--json", "ls", "contacts", "--show", "email"]);
    let preview = |id: &str| {
        rows.as_array()
            .expect("rows")
            .iter()
            .find(|r| r["id"] == id)
            .map(|r| r["preview"].clone())
    };
    assert_eq!(preview(&ada), Some(json!("ada@example.org")));
    assert_eq!(preview(&bob), Some(json!("")));
    let err = env.fails(2, &["ls", "--show", "a..b"]);
    assert!(err.contains("--show"), "{err}");
}

#[test]
fn diff_prints_readable_patches() {
    let env = Env::new();
    let id = env.new_record("contacts", r#"{"name": "Ada", "tags": ["a"]}"#);
    let before = env.ok(&["heads", &id]).trim().to_owned();
    env.ok(&["put", &id, "name", r#""Grace""#]);
    env.ok(&["put", &id, "tags.1", r#""b""#]);
    let middle = env.ok(&["heads", &id]).trim().to_owned();
    env.ok(&["put", &id, "age", "36"]);
    let out = env.ok(&["diff", &id, &before[..10], &middle]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.contains(&"set name = \"Grace\""), "{out}");
    assert!(lines.contains(&"insert tags[1] = \"b\""), "{out}");
    assert!(!out.contains("age"), "{out}");
    assert_eq!(env.ok(&["diff", &id, &middle]), "set age = 36\n");
    let patches = env.json(&["--json", "diff", &id, &middle]);
    assert_eq!(
        patches,
        json!([{"action": "put", "path": ["age"], "value": 36, "conflict": false, "description": "set age = 36"}])
    );
    assert_eq!(env.ok(&["diff", &id, &middle, &middle]), "");
}

#[test]
fn get_conflicts_and_diff_show_every_concurrent_value() {
    let env = Env::new();
    let replica = env.replica();
    let id = replica
        .create("contacts", &json!({"email": "ada@old.org", "name": "Ada"}))
        .expect("create");
    let before = replica.heads(&id).expect("heads");
    let laptop = accord_engine::Replica::open_in_memory().expect("replica");
    let saved = replica.save(&id).expect("save");
    laptop
        .merge_bytes(&id, "contacts", &saved, Origin::Local)
        .expect("merge");
    replica
        .put(&id, "email", &json!("ada@phone.org"), None)
        .expect("put");
    laptop
        .put(&id, "email", &json!("ada@laptop.org"), None)
        .expect("put");
    let theirs = laptop.save(&id).expect("save");
    replica
        .merge_bytes(&id, "contacts", &theirs, Origin::Local)
        .expect("merge");
    let shown = replica.get(&id).expect("get").value["email"].clone();
    drop(replica);
    let id = id.to_string();

    let listed = env.json(&["--json", "get", &id, "--conflicts"]);
    let conflicts = listed.as_array().expect("a list");
    assert_eq!(conflicts.len(), 1, "{listed}");
    assert_eq!(conflicts[0]["path"], "email");
    let values = conflicts[0]["values"].as_array().expect("values");
    let mut seen: Vec<&str> = values.iter().filter_map(|v| v["value"].as_str()).collect();
    seen.sort_unstable();
    assert_eq!(seen, ["ada@laptop.org", "ada@phone.org"]);
    let winner: Vec<&serde_json::Value> = values.iter().filter(|v| v["shown"] == true).collect();
    assert_eq!(winner.len(), 1);
    assert_eq!(winner[0]["value"], shown);
    assert!(values
        .iter()
        .all(|v| v["change"].as_str().is_some_and(|h| h.len() == 64)));

    let text = env.ok(&["get", &id, "--conflicts"]);
    assert!(text.starts_with("email\n"), "{text}");
    assert!(
        text.contains("\"ada@laptop.org\"") && text.contains("\"ada@phone.org\""),
        "{text}"
    );
    assert_eq!(text.matches("(shown)").count(), 1, "{text}");

    // diff names both values, in text and JSON.
    let before = before[0].to_string();
    let out = env.ok(&["diff", &id, &before]);
    assert!(
        out.contains("ada@laptop.org") && out.contains("ada@phone.org"),
        "{out}"
    );
    let rows = env.json(&["--json", "diff", &id, &before]);
    let row = rows
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["values"].is_array())
        .unwrap_or_else(|| panic!("no row carries the values: {rows}"));
    assert_eq!(row["values"].as_array().map(Vec::len), Some(2));

    // Writing the field again resolves it.
    env.ok(&["put", &id, "email", r#""ada@example.org""#]);
    assert_eq!(env.ok(&["get", &id, "--conflicts"]), "no conflicts\n");
    assert_eq!(env.json(&["--json", "get", &id, "--conflicts"]), json!([]));
}

// ---- export, import, maintenance ----

#[test]
fn export_then_import_round_trips() {
    let env = Env::new();
    let id = env.new_record("contacts", r#"{"name": "Ada", "tags": [1, 2]}"#);
    env.ok(&["put", &id, "name", r#""Grace""#, "-m", "rename"]);
    let file = env.path().join("ada.automerge");
    let file = file.to_str().expect("utf-8 path");
    env.ok(&["export", &id, "-o", file]);
    let piped = env.run(&["export", &id]);
    assert_eq!(piped.code, Some(0));
    assert_eq!(std::fs::read(file).expect("read export"), piped.raw);
    assert!(accord_engine::automerge::Automerge::load(&piped.raw).is_ok());
    let copy = env
        .ok(&["import", file, "--collection", "archive"])
        .trim()
        .to_owned();
    assert_ne!(copy, id);
    assert_eq!(env.json(&["get", &copy]), env.json(&["get", &id]));
    assert_eq!(
        env.json(&["--json", "log", &copy]),
        env.json(&["--json", "log", &id])
    );
    assert!(env.ok(&["ls", "archive"]).contains(&copy));
}

#[test]
fn import_rejects_what_is_not_automerge() {
    let env = Env::new();
    let junk = env.path().join("junk.bin");
    std::fs::write(&junk, b"definitely not automerge").expect("write");
    let junk = junk.to_str().expect("utf-8 path");
    let err = env.fails(1, &["import", junk, "-c", "archive"]);
    assert!(err.contains("is not an Automerge document"), "{err}");
    let err = env.fails(1, &["import", "missing.bin", "-c", "archive"]);
    assert!(err.contains("cannot read missing.bin"), "{err}");
    let err = env.fails(1, &["import", junk, "-c", "bad name"]);
    assert!(err.contains("bad collection name"), "{err}");
    // A file that inflates to 4 GiB is measured, not loaded.
    let bomb = env.path().join("bomb.automerge");
    std::fs::write(&bomb, accord_engine::fuzzing::bomb_chunk(4 << 30)).expect("write");
    let bomb = bomb.to_str().expect("utf-8 path");
    let err = env.fails(1, &["import", bomb, "-c", "archive"]);
    assert!(err.contains("too large to import"), "{err}");
}

#[test]
fn import_jsonl_creates_one_record_per_line_in_batches() {
    let env = Env::new();
    let mut text: String = (0..2500)
        .map(|i| format!("{{\"n\": {i}, \"name\": \"row {i}\"}}\n"))
        .collect();
    text.insert_str(0, "\n   \n"); // blank lines are skipped
    let file = env.path().join("rows.jsonl");
    std::fs::write(&file, &text).expect("write");
    let file = file.to_str().expect("utf-8 path");
    let out = env.ok(&["import", "--jsonl", file, "-c", "rows"]);
    assert_eq!(out, "imported 2500 records into rows\n");
    let listed = env.json(&["--json", "ls", "rows"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(2500));
    let counted = env.json(&[
        "--json",
        "query",
        "SELECT count(*) AS n, sum(json_extract(json, '$.n')) AS total FROM records WHERE collection = 'rows'",
    ]);
    assert_eq!(counted, json!([{"n": 2500, "total": 2500 * 2499 / 2}]));

    // --json lists the ids in line order; stdin works with `-`.
    let mut cmd = env.cmd(&[
        "--json", "import", "--jsonl", "-", "-c", "more", "--batch", "2",
    ]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(b"{\"a\": 1}\r\n{\"a\": 2}\n{\"a\": {\"deep\": [true]}}\n")
            .expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{out:?}");
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(keys(&shown), ["collection", "ids", "imported"]);
    assert_eq!(shown["imported"], 3);
    let ids: Vec<String> = shown["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_str().expect("id").to_owned())
        .collect();
    assert_eq!(env.json(&["get", &ids[0]]), json!({"a": 1}));
    assert_eq!(env.json(&["get", &ids[2]]), json!({"a": {"deep": [true]}}));

    // The Automerge import is unchanged beside it.
    let exported = env.path().join("one.automerge");
    env.ok(&["export", &ids[1], "-o", exported.to_str().expect("path")]);
    let copy = env.ok(&["import", exported.to_str().expect("path"), "-c", "more"]);
    assert_eq!(env.json(&["get", copy.trim()]), json!({"a": 2}));
}

#[test]
fn import_jsonl_names_the_bad_line_and_writes_nothing() {
    let env = Env::new();
    let file = env.path().join("rows.jsonl");
    let file_arg = file.to_str().expect("utf-8 path");
    std::fs::write(
        &file,
        "{\"ok\": 1}\n{\"ok\": 2}\n{\"broken\": \n{\"ok\": 4}\n",
    )
    .expect("write");
    let err = env.fails(1, &["import", "--jsonl", file_arg, "-c", "rows"]);
    assert!(
        err.starts_with(&format!("error: {file_arg} line 3: not valid JSON")),
        "{err}"
    );
    assert!(!env.db.exists(), "nothing written, not even a database");

    env.new_record("rows", "{}");
    std::fs::write(&file, "{\"ok\": 1}\n\n[1, 2]\n").expect("write");
    let err = env.fails(1, &["import", "--jsonl", file_arg, "-c", "rows"]);
    assert!(
        err.contains("line 3: a record must be a JSON object, found an array"),
        "{err}"
    );
    assert_eq!(
        env.json(&["--json", "ls", "rows"]).as_array().map(Vec::len),
        Some(1)
    );
    let err = env.fails(1, &["import", "--jsonl", file_arg, "-c", "bad name"]);
    assert!(err.contains("bad collection name"), "{err}");
    let err = env.fails(
        2,
        &["import", "--jsonl", file_arg, "-c", "rows", "--batch", "0"],
    );
    assert!(err.contains("--batch"), "{err}");
}

#[test]
fn compact_keeps_content_and_history() {
    let env = Env::new();
    let id = env.new_record("contacts", r#"{"n": 0}"#);
    for i in 1..8 {
        env.ok(&["put", &id, "n", &i.to_string()]);
    }
    let before = (env.json(&["get", &id]), env.json(&["--json", "log", &id]));
    assert_eq!(env.json(&["--json", "ls"])[0]["chunks"], 8);
    let report = env.json(&["--json", "compact"]);
    assert_eq!(
        (report["compacted"].clone(), report["records"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(env.json(&["--json", "ls"])[0]["chunks"], 1);
    assert_eq!(
        (env.json(&["get", &id]), env.json(&["--json", "log", &id])),
        before
    );
    assert!(env.ok(&["compact"]).starts_with("compacted 0 of 1 record:"));
}

#[test]
fn check_reports_a_damaged_record_and_fails() {
    let env = Env::new();
    let good = env.new_record("contacts", r#"{"name": "Ada"}"#);
    let bad = env.new_record("contacts", r#"{"name": "Grace"}"#);
    env.ok(&["put", &bad, "age", "36"]);
    assert!(env.ok(&["check"]).contains("checked 2 records in "));
    let bad_id: DocId = bad.parse().expect("id");
    let conn = rusqlite::Connection::open(&env.db).expect("sqlite");
    let changed = conn
        .execute(
            "UPDATE chunks SET data = x'00ff00ff' WHERE doc = ?1 AND seq = 2",
            [bad_id.as_bytes().as_slice()],
        )
        .expect("damage");
    assert_eq!(changed, 1);
    drop(conn);
    let run = env.run(&["check"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with("damaged") && l.contains(&bad)),
        "{run:?}"
    );
    assert!(!run.stdout.contains(&good), "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("check of {} found 1 problem", env.db.display())),
        "{run:?}"
    );
    let report = util::run(&mut env.cmd(&["--json", "check"]));
    assert_eq!(report.code, Some(1));
    let report: serde_json::Value = serde_json::from_str(&report.stdout).expect("json");
    assert_eq!(report["ok"], false);
    assert_eq!(report["damaged"][0]["id"], bad.as_str());
    let err = env.fails(1, &["get", &bad]);
    assert!(err.contains("damaged"), "{err}");
    assert!(
        env.ok(&["get", &good]).contains("Ada"),
        "other records still load"
    );
}

/// Overwrites the body of one page of an SQLite file, the way a bad disk
/// or a torn copy would, and returns the page's number. `table` names the
/// table (or index) a leaf of which is hit; "sqlite_schema" hits page 1.
fn damage_page(db: &std::path::Path, table: &str) -> i64 {
    let conn = rusqlite::Connection::open(db).expect("sqlite");
    let (page_size, page): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT page_size FROM pragma_page_size), max(pageno) FROM dbstat WHERE name = ?1",
            [table],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("dbstat");
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .expect("checkpoint");
    drop(conn);
    let mut bytes = std::fs::read(db).expect("read db");
    let start = ((page - 1) * page_size) as usize + if page == 1 { 100 } else { 8 };
    for (i, b) in bytes[start..start + 800].iter_mut().enumerate() {
        *b = [0xde, 0xad, 0xbe, 0xef][i % 4];
    }
    std::fs::write(db, bytes).expect("write db");
    page
}

#[test]
fn check_describes_a_damaged_sqlite_file_instead_of_one_malformed_line() {
    let env = Env::new();
    let rows: String = (0..300)
        .map(|i| format!("{{\"n\": {i}, \"text\": \"{}\"}}\n", "x".repeat(300)))
        .collect();
    let file = env.path().join("rows.jsonl");
    std::fs::write(&file, rows).expect("write");
    env.ok(&[
        "import",
        "--jsonl",
        file.to_str().expect("path"),
        "-c",
        "rows",
    ]);
    let pristine = env.path().join("pristine.db");
    std::fs::copy(&env.db, &pristine).expect("copy");
    let db = env.db.display().to_string();

    // A leaf of the chunks table: the records on it are named.
    damage_page(&env.db, "chunks");
    let run = env.run(&["check"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stdout.lines().any(|l| l.starts_with("sqlite: ")),
        "{run:?}"
    );
    assert!(run.stdout.contains("database file NOT sound"), "{run:?}");
    assert!(
        run.stdout.contains(&format!("checked 300 records in {db}")),
        "{run:?}"
    );
    let damaged: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("damaged "))
        .collect();
    assert!(
        !damaged.is_empty(),
        "records on the page are named: {run:?}"
    );
    assert!(damaged.len() < 300, "the others still load: {run:?}");
    assert!(
        run.stderr.contains(&format!("check of {db} found"))
            && run.stderr.contains("Repairing a damaged database"),
        "{run:?}"
    );
    let report = util::run(&mut env.cmd(&["--json", "check"]));
    let report: serde_json::Value = serde_json::from_str(&report.stdout).expect("json");
    assert_eq!(report["file"], db.as_str());
    assert_eq!(report["ok"], false);
    assert!(!report["integrity"]
        .as_array()
        .expect("integrity")
        .is_empty());

    // The schema page: nothing opens, but SQLite's own check still speaks.
    std::fs::copy(&pristine, &env.db).expect("restore");
    damage_page(&env.db, "sqlite_schema");
    let run = env.run(&["check"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with("failed: ") && l.contains(&db)),
        "{run:?}"
    );
    assert!(
        run.stdout.lines().any(|l| l.starts_with("sqlite: ")),
        "{run:?}"
    );
    assert!(
        run.stderr.contains(&format!("check of {db} found")),
        "{run:?}"
    );
}

#[test]
fn sync_fetches_a_damaged_record_again_from_the_relay() {
    let env = Env::new();
    let relay = Relay::start(env.path().join("relay.db"));
    let good = env.new_record("contacts", r#"{"name": "Ada"}"#);
    let bad = env.new_record("contacts", r#"{"name": "Grace"}"#);
    env.ok(&["put", &bad, "age", "36"]);
    let lonely = env.new_record("contacts", r#"{"name": "Alan"}"#);
    env.ok(&["sync", "--relay", &relay.url]);
    // A change the relay never got.
    env.ok(&["put", &lonely, "age", "41"]);

    let conn = rusqlite::Connection::open(&env.db).expect("sqlite");
    for (id, seq) in [(&bad, 2), (&lonely, 1)] {
        let id: DocId = id.parse().expect("id");
        let changed = conn
            .execute(
                "UPDATE chunks SET data = x'00ff00ff' WHERE doc = ?1 AND seq = ?2",
                rusqlite::params![id.as_bytes().as_slice(), seq],
            )
            .expect("damage");
        assert_eq!(changed, 1);
    }
    drop(conn);
    let run = env.run(&["check"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    for id in [&bad, &lonely] {
        assert!(
            run.stdout
                .lines()
                .any(|l| l.starts_with("damaged") && l.contains(id.as_str())),
            "{run:?}"
        );
    }

    // The relay's copy of `bad` holds everything: fetched and stored. `lonely`
    // has a change only this file had: kept damaged, and sync says so.
    let run = env.run(&["sync", "--relay", &relay.url]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stdout.contains(&format!(
            "repaired 1 record damaged here with the relay's copy: {bad}"
        )),
        "{run:?}"
    );
    assert!(
        run.stderr.contains("1 record still damaged")
            && run.stderr.contains(&lonely)
            && run.stderr.contains("Repairing a damaged database"),
        "{run:?}"
    );
    assert_eq!(
        env.json(&["get", &bad]),
        json!({"name": "Grace", "age": 36})
    );
    assert!(env.ok(&["get", &good]).contains("Ada"));
    let run = env.run(&["check"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        !run.stdout.contains(&bad) && run.stdout.contains(&lonely),
        "{run:?}"
    );

    // The documented repair: re-sync into a fresh file.
    let fresh = Env::new();
    fresh.ok(&["sync", "--relay", &relay.url, "--collection", "contacts"]);
    assert_eq!(
        fresh.json(&["get", &bad]),
        json!({"name": "Grace", "age": 36})
    );
    assert!(fresh.ok(&["check"]).contains("0 damaged"));
}

// ---- errors ----

#[test]
fn read_commands_never_create_a_database() {
    let env = Env::new();
    let id = DocId::random().to_string();
    let reads: [&[&str]; 9] = [
        &["ls"],
        &["get", &id],
        &["log", &id],
        &["diff", &id, ""],
        &["export", &id, "-o", "x"],
        &["collections"],
        &["compact"],
        &["check"],
        &["rm", &id],
    ];
    for args in reads {
        let err = env.fails(1, args);
        assert!(err.contains("does not exist"), "{args:?}: {err}");
    }
    assert!(!env.db.exists());
}

#[test]
fn a_file_that_is_not_a_database_is_an_error() {
    let env = Env::new();
    std::fs::write(&env.db, "plain text, not SQLite ".repeat(100)).expect("write");
    let err = env.fails(1, &["ls"]);
    assert!(
        err.starts_with("error: cannot open") && err.contains("not a database"),
        "{err}"
    );
    assert_eq!(err.matches("not a database").count(), 1, "said once: {err}");
    let err = env.fails(1, &["new", "contacts"]);
    assert!(err.contains("not a database"), "{err}");
}

#[test]
fn unknown_and_malformed_ids_are_errors() {
    let env = Env::new();
    env.new_record("contacts", "{}");
    let unknown = DocId::random().to_string();
    for args in [
        ["get", &unknown],
        ["log", &unknown],
        ["rm", &unknown],
        ["heads", &unknown],
    ] {
        let err = env.fails(1, &args);
        assert!(
            err.contains(&format!("no record with id {unknown}")),
            "{err}"
        );
    }
    let err = env.fails(2, &["get", "not-an-id"]);
    assert!(
        err.contains("'not-an-id' is not a valid record id"),
        "{err}"
    );
    let err = env.fails(2, &["get", "notanid"]);
    assert!(
        err.contains("'notanid' is not a valid record id: its checksum does not match"),
        "{err}"
    );
    assert!(!err.contains('['), "no raw checksum bytes: {err}");
    let mut broken = unknown.clone();
    broken.push('x');
    assert!(env
        .fails(2, &["log", &broken])
        .contains("is not a valid record id"));
}

#[test]
fn an_ambiguous_short_hash_is_an_error() {
    let env = Env::new();
    let id = env.long_history(40).to_string();
    let log = env.json(&["--json", "log", &id]);
    let hashes: Vec<&str> = log
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["hash"].as_str())
        .collect();
    // 40 hashes over 16 first digits: some digit is shared.
    let shared = hashes
        .iter()
        .map(|h| &h[..1])
        .find(|p| hashes.iter().filter(|h| h.starts_with(p)).count() > 1)
        .expect("a shared first digit");
    let err = env.fails(1, &["get", &id, "--at", shared]);
    assert!(err.contains("is ambiguous"), "{err}");
    let err = env.fails(1, &["diff", &id, "0123456789abcdef"]);
    assert!(err.contains("has no change"), "{err}");
}

#[test]
fn bad_json_and_bad_paths_are_errors() {
    let env = Env::new();
    let id = env.new_record("contacts", r#"{"name": "Ada", "tags": ["a"]}"#);
    let err = env.fails(2, &["put", &id, "name", "Grace"]);
    assert!(
        err.contains("not valid JSON") && err.contains("quotes"),
        "{err}"
    );
    assert!(env
        .fails(2, &["new", "contacts", "--data", "{oops"])
        .contains("not valid JSON"));
    assert!(env
        .fails(1, &["new", "contacts", "--data", "[1]"])
        .contains("must be a JSON object"));
    assert!(env
        .fails(2, &["put", &id, "a..b", "1"])
        .contains("bad path"));
    assert!(env
        .fails(1, &["put", &id, "tags.x", "1"])
        .contains("not a number"));
    assert!(env
        .fails(1, &["put", &id, "tags.5", "1"])
        .contains("past the end"));
    assert!(env
        .fails(1, &["put", &id, "name.first", "1"])
        .contains("not an object or list"));
    assert!(env
        .fails(1, &["get", &id, "nope"])
        .contains("nothing at path 'nope'"));
    assert!(env
        .fails(1, &["put", &id, "", "1"])
        .contains("must be a JSON object"));
    assert_eq!(
        env.json(&["get", &id]),
        json!({"name": "Ada", "tags": ["a"]})
    );
}

// ---- output behaviour ----

#[test]
fn a_broken_pipe_ends_quietly() {
    let env = Env::new();
    let id = env.long_history(3000).to_string();
    for graph in [false, true] {
        let mut cmd = env.cmd(&["log", &id]);
        if graph {
            cmd.arg("--graph");
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
        let mut first = String::new();
        reader.read_line(&mut first).expect("read a line");
        assert!(!first.is_empty());
        drop(reader);
        let out = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert!(stderr.is_empty(), "{stderr}");
    }
}

#[test]
fn times_are_local_unless_utc_is_asked_for() {
    let env = Env::new();
    let id = env.new_record("contacts", r#"{"name": "Ada"}"#);
    let log = env.json(&["--json", "log", &id]);
    // "2024-05-01T12:00:00Z" as the table shows it: "2024-05-01 12:00:00".
    let rfc3339 = log[0]["time"].as_str().expect("a time").to_owned();
    let shown = rfc3339.trim_end_matches('Z').replace('T', " ");
    let log_in = |tz: &str, extra: &[&str]| {
        let mut cmd = env.cmd(&["log", &id]);
        cmd.args(extra).env("TZ", tz);
        util::run(&mut cmd).stdout
    };
    assert!(log_in("XXX-3", &["--utc"]).contains(&format!("{shown} UTC")));
    assert!(log_in("UTC", &[]).contains(&shown));
    let east = log_in("XXX-3", &[]);
    assert!(
        !east.contains(&shown) && !east.contains("UTC"),
        "{east} vs {shown}"
    );
}

#[test]
fn colour_only_when_asked_or_on_a_terminal() {
    let env = Env::new();
    let id = env.new_record("contacts", "{}");
    env.ok(&["put", &id, "a", "1"]);
    assert!(!env.ok(&["ls"]).contains('\x1b'));
    assert!(!env.ok(&["log", "--graph", &id]).contains('\x1b'));
    assert!(env.ok(&["--color", "always", "ls"]).contains("\x1b["));
    assert!(env
        .ok(&["--color", "always", "log", "--graph", &id])
        .contains("\x1b["));
}

#[test]
fn the_database_comes_from_accord_db_by_default() {
    let env = Env::new();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_accord"));
    cmd.args(["new", "contacts"])
        .current_dir(env.path())
        .env("ACCORD_DB", &env.db);
    let run = util::run(&mut cmd);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(env.db.exists());
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_accord"));
    cmd.arg("ls")
        .current_dir(env.path())
        .env_remove("ACCORD_DB");
    let run = util::run(&mut cmd);
    assert_eq!(run.code, Some(0), "./accord.db is the default: {run:?}");
    assert!(run.stdout.contains("contacts"));
}

#[test]
fn export_to_a_bad_path_is_an_error() {
    let env = Env::new();
    let id = env.new_record("contacts", r#"{"name": "Ada"}"#);
    let err = env.fails(1, &["export", &id, "-o", "no/such/dir/x.am"]);
    assert!(err.contains("cannot write no/such/dir/x.am"), "{err}");
}

// ---- sync against a real relay ----

/// A relay in this process on a free loopback port, on its own runtime
/// thread so the blocking test can run the binary meanwhile.
struct Relay {
    url: String,
    shutdown: tokio_util::sync::CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    fn start(db: std::path::PathBuf) -> Relay {
        Self::start_with(accord_relay::Config {
            db,
            ..accord_relay::Config::default()
        })
    }

    fn start_with(config: accord_relay::Config) -> Relay {
        let (tx, rx) = std::sync::mpsc::channel();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let token = shutdown.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                let url = format!("ws://{}", listener.local_addr().expect("addr"));
                let relay = accord_relay::server::start(config, token.clone())
                    .await
                    .expect("relay");
                tx.send(url).expect("send url");
                accord_relay::server::serve(listener, relay, token)
                    .await
                    .expect("serve");
            });
        });
        let url = rx.recv().expect("relay url");
        Relay {
            url,
            shutdown,
            thread: Some(thread),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn sync_moves_records_between_databases_through_a_relay() {
    let a = Env::new();
    let b = Env::new();
    let relay = Relay::start(a.path().join("relay.db"));
    let id = a.ok(&["new", "contacts", "--data", r#"{"name": "Ada"}"#]);
    let id = id.trim();
    a.ok(&["put", id, "email", r#""ada@example.org""#]);
    let out = a.ok(&["sync", "--relay", &relay.url]);
    assert!(
        out.starts_with(&format!("in sync with {} (contacts)", relay.url)),
        "{out}"
    );
    assert!(out.contains("sent 1 document ("), "{out}");

    // B has no database yet: sync creates it and pulls the collection.
    let summary = b.json(&[
        "--json",
        "sync",
        "--relay",
        &relay.url,
        "--collection",
        "contacts",
    ]);
    assert_eq!(summary["docs_received"], json!(1), "{summary}");
    assert!(summary["bytes_received"].as_u64().unwrap_or(0) > 0);
    assert_eq!(
        b.json(&["get", id]),
        json!({"name": "Ada", "email": "ada@example.org"})
    );

    // An edit on B flows back to A.
    b.ok(&["put", id, "name", r#""Ada L.""#]);
    b.ok(&["sync", "--relay", &relay.url]);
    a.ok(&["sync", "--relay", &relay.url]);
    assert_eq!(a.json(&["get", id, "name"]), json!("Ada L."));
}

#[test]
fn sync_fails_clearly_when_the_relay_is_unreachable_or_silent() {
    let env = Env::new();
    env.ok(&["new", "c"]);
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let err = env.fails(1, &["sync", "--relay", &format!("ws://127.0.0.1:{port}")]);
    assert!(err.contains("cannot reach relay"), "{err}");
    // A listener that accepts but never answers: the timeout applies.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("ws://{}", silent.local_addr().expect("addr"));
    let err = env.fails(1, &["sync", "--relay", &url, "--timeout", "1"]);
    assert!(err.contains("after 1 s"), "{err}");
    drop(silent);
    // Not a WebSocket URL.
    let err = env.fails(1, &["sync", "--relay", "http://example.org"]);
    assert!(err.contains("bad relay URL"), "{err}");
}

/// A URL nothing listens on: a port bound, then released.
fn dead_relay_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    format!("ws://{}", listener.local_addr().expect("addr"))
}

#[test]
fn sync_moves_on_to_the_next_relay_when_one_is_unreachable() {
    let env = Env::new();
    let relay = Relay::start(env.path().join("relay.db"));
    let id = env.new_record("contacts", r#"{"name": "Ada"}"#);
    let dead = dead_relay_url();
    let out = env.ok(&["sync", "--relay", &dead, "--relay", &relay.url]);
    assert!(
        out.starts_with(&format!("in sync with {} (contacts)", relay.url)),
        "{out}"
    );
    assert!(out.contains("sent 1 document ("), "{out}");
    // The record is on the live relay: a new database fetches it from there.
    let fresh = Env::new();
    fresh.ok(&["sync", "--relay", &relay.url, "--collection", "contacts"]);
    assert_eq!(fresh.json(&["get", &id]), json!({"name": "Ada"}));

    // ACCORD_RELAY may hold the list, comma-separated.
    let listed = format!("{dead},{}", relay.url);
    let run = util::run(env.cmd(&["--json", "sync"]).env("ACCORD_RELAY", &listed));
    assert_eq!(run.code, Some(0), "{run:?}");
    let summary: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(summary["relay"], json!(relay.url), "{summary}");

    // None reachable: the error names the last one tried, and all given.
    let other = dead_relay_url();
    let err = env.fails(1, &["sync", "--relay", &dead, "--relay", &other]);
    assert!(
        err.contains(&format!("relays given: {dead}, {other}"))
            && err.contains(&format!("cannot reach relay {other}")),
        "{err}"
    );
    // No URL at all: clap's error.
    let run = util::run(env.cmd(&["sync"]).env_remove("ACCORD_RELAY"));
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("--relay <URL>"), "{run:?}");
}

#[test]
fn sync_with_nothing_to_sync_says_so() {
    let env = Env::new();
    let relay = Relay::start(env.path().join("relay.db"));
    // A mistyped --db: no file is created, and the error names it.
    let err = env.fails(1, &["sync", "--relay", &relay.url]);
    assert!(
        err.contains(&format!("database {} does not exist", env.db.display()))
            && err.contains("--collection"),
        "{err}"
    );
    assert!(
        !env.db.exists(),
        "a sync with nothing to fetch created a file"
    );
    // An existing database without records has nothing to sync.
    drop(env.replica());
    let err = env.fails(1, &["sync", "--relay", &relay.url]);
    assert!(err.contains("nothing to sync"), "{err}");
    // Naming a collection may create a new file to fetch into.
    let fresh = Env::new();
    let out = fresh.ok(&["sync", "--relay", &relay.url, "--collection", "contacts"]);
    assert!(out.contains("in sync") || out.contains("sent"), "{out}");
    assert!(fresh.db.exists());
}

#[test]
fn sync_reports_a_refused_token_and_missing_rights() {
    let env = Env::new();
    let tokens = accord_relay::auth::Tokens::new(b"cli test secret, long enough").expect("secret");
    let relay = Relay::start_with(accord_relay::Config {
        db: env.path().join("relay.db"),
        access: std::sync::Arc::new(tokens.clone()),
        ..accord_relay::Config::default()
    });
    env.ok(&["new", "contacts", "--data", r#"{"name": "Ada"}"#]);
    let err = env.fails(1, &["sync", "--relay", &relay.url]);
    assert!(
        err.contains("token is required") && err.contains("unauthorized"),
        "{err}"
    );
    let err = env.fails(
        1,
        &["sync", "--relay", &relay.url, "--token", "acc1.bogus.token"],
    );
    assert!(
        err.contains("bad token signature") || err.contains("malformed token"),
        "{err}"
    );
    let read_only = tokens.mint(
        [("contacts".to_owned(), accord_relay::auth::Right::Read)].into(),
        std::time::Duration::from_secs(60),
    );
    let out = env.ok(&["sync", "--relay", &relay.url, "--token", &read_only]);
    assert!(out.contains("read-only access: 1 record"), "{out}");
    let rw = tokens.mint(
        [("contacts".to_owned(), accord_relay::auth::Right::ReadWrite)].into(),
        std::time::Duration::from_secs(60),
    );
    let err = env.fails(
        1,
        &[
            "sync",
            "--relay",
            &relay.url,
            "--token",
            &rw,
            "--collection",
            "notes",
        ],
    );
    assert!(err.contains("no right to read collection 'notes'"), "{err}");
    // With the right token it syncs (the refused `notes` attempt may
    // already have carried the contact over, so check the relay's side:
    // a second database receives it).
    let out = env.ok(&["sync", "--relay", &relay.url, "--token", &rw]);
    assert!(out.starts_with("in sync with"), "{out}");
    let other = Env::new();
    let out = other.ok(&[
        "sync",
        "--relay",
        &relay.url,
        "--token",
        &rw,
        "--collection",
        "contacts",
    ]);
    assert!(out.contains("received 1 document ("), "{out}");
}

#[test]
fn backup_copies_a_database_that_is_open_and_being_written() {
    let env = Env::new();
    let id = env.new_record("contacts", r#"{"name": "Ada"}"#);
    let app = accord_engine::Replica::open(&env.db).expect("the app keeps it open");
    app.put(
        &id.parse().expect("id"),
        "email",
        &json!("ada@example.org"),
        None,
    )
    .expect("app write");
    let dest = env.path().join("backup.db");
    let out = env.ok(&["backup", dest.to_str().expect("utf8")]);
    assert!(out.contains("backed up to"), "{out}");
    app.put(&id.parse().expect("id"), "after", &json!(true), None)
        .expect("writes go on");
    let on_copy = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_accord"))
            .arg("--db")
            .arg(&dest)
            .args(args)
            .output()
            .expect("run accord")
    };
    let copy = on_copy(&["get", &id]);
    assert!(copy.status.success(), "{copy:?}");
    let copy: serde_json::Value = serde_json::from_slice(&copy.stdout).expect("json");
    assert_eq!(copy, json!({"name": "Ada", "email": "ada@example.org"}));
    assert!(on_copy(&["check"]).status.success());
    let err = env.fails(1, &["backup", dest.to_str().expect("utf8")]);
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    // --force replaces it with a copy of now.
    let out = env.ok(&["backup", dest.to_str().expect("utf8"), "--force"]);
    assert!(out.contains("backed up to"), "{out}");
    let copy = on_copy(&["get", &id]);
    let copy: serde_json::Value = serde_json::from_slice(&copy.stdout).expect("json");
    assert_eq!(copy["after"], true);
    assert!(on_copy(&["check"]).status.success());
    let own = env.db.to_str().expect("utf8");
    let err = env.fails(1, &["backup", own, "--force"]);
    assert!(err.contains("is the database itself"), "{err}");
}

#[test]
fn export_refuses_to_overwrite_unless_forced() {
    let env = Env::new();
    let id = env.new_record("contacts", r#"{"name": "Ada"}"#);
    let file = env.path().join("ada.automerge");
    std::fs::write(&file, b"keep me").expect("write");
    let path = file.to_str().expect("utf8");
    let err = env.fails(1, &["export", &id, "-o", path]);
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read(&file).expect("read"), b"keep me");
    env.ok(&["export", &id, "-o", path, "--force"]);
    let bytes = std::fs::read(&file).expect("read");
    assert!(
        bytes.starts_with(&[0x85, 0x6f, 0x4a, 0x83]),
        "an Automerge file"
    );
}

/// A relay that requires tokens signed with this secret.
fn secured_relay(env: &Env) -> (Relay, accord_relay::auth::Tokens) {
    let tokens =
        accord_relay::auth::Tokens::new(b"a cli test secret that is long enough").expect("secret");
    let relay = Relay::start_with(accord_relay::Config {
        db: env.path().join("relay.db"),
        access: std::sync::Arc::new(tokens.clone()),
        ..accord_relay::Config::default()
    });
    (relay, tokens)
}

fn mint(
    tokens: &accord_relay::auth::Tokens,
    rights: &[(&str, accord_relay::auth::Right)],
) -> String {
    let rights = rights.iter().map(|(c, r)| ((*c).to_owned(), *r)).collect();
    tokens.mint(rights, std::time::Duration::from_secs(3600))
}

#[test]
fn sync_skips_collections_the_token_does_not_cover_and_strict_says_so() {
    use accord_relay::auth::Right;
    let env = Env::new();
    let (relay, tokens) = secured_relay(&env);
    env.new_record("contacts", r#"{"name": "Ada"}"#);
    env.new_record("archive", r#"{"old": true}"#);
    let contacts = mint(&tokens, &[("contacts", Right::ReadWrite)]);
    let out = env.ok(&["sync", "--relay", &relay.url, "--token", &contacts]);
    assert!(
        out.contains("in sync with") && out.contains("(contacts)"),
        "{out}"
    );
    assert!(
        out.contains("skipped archive: no right to read collection 'archive'"),
        "{out}"
    );
    let err = env.run(&[
        "sync", "--relay", &relay.url, "--token", &contacts, "--strict",
    ]);
    assert_eq!(
        err.code,
        Some(4),
        "--strict fails a partial sync: {}",
        err.stdout
    );
    // Naming the collections restricts the sync to them.
    let out = env.ok(&[
        "sync",
        "--relay",
        &relay.url,
        "--token",
        &contacts,
        "--collection",
        "contacts",
        "--strict",
    ]);
    assert!(!out.contains("skipped"), "{out}");
    let json = env.json(&[
        "--json", "sync", "--relay", &relay.url, "--token", &contacts,
    ]);
    assert_eq!(json["collections"], json!(["contacts"]));
    assert!(json["skipped"]["archive"].is_string(), "{json}");
}

#[test]
fn a_read_only_device_keeps_pulling_and_reports_what_it_cannot_push() {
    use accord_relay::auth::Right;
    let writer = Env::new();
    let reader = Env::new();
    let (relay, tokens) = secured_relay(&writer);
    let rw = mint(&tokens, &[("contacts", Right::ReadWrite)]);
    let ro = mint(&tokens, &[("contacts", Right::Read)]);
    let id = writer.new_record("contacts", r#"{"name": "Ada"}"#);
    writer.ok(&["sync", "--relay", &relay.url, "--token", &rw]);
    reader.ok(&[
        "sync",
        "--relay",
        &relay.url,
        "--token",
        &ro,
        "--collection",
        "contacts",
    ]);
    assert_eq!(reader.json(&["get", &id, "name"]), json!("Ada"));

    // A local change on the read-only device: accepted locally, not pushed.
    reader.ok(&["put", &id, "note", r#""mine""#]);
    writer.ok(&["put", &id, "email", r#""ada@example.org""#]);
    writer.ok(&["sync", "--relay", &relay.url, "--token", &rw]);
    let out = reader.ok(&["sync", "--relay", &relay.url, "--token", &ro]);
    assert!(
        out.contains("read-only access: 1 record with local changes not pushed")
            && out.contains(&id),
        "{out}"
    );
    assert_eq!(
        reader.json(&["get", &id, "email"]),
        json!("ada@example.org"),
        "it still pulls"
    );
    assert_eq!(
        reader.json(&["get", &id, "note"]),
        json!("mine"),
        "its change stays"
    );
    let strict = reader.run(&["sync", "--relay", &relay.url, "--token", &ro, "--strict"]);
    assert_eq!(strict.code, Some(4), "{}", strict.stdout);
    writer.ok(&["sync", "--relay", &relay.url, "--token", &rw]);
    assert!(
        writer.fails(1, &["get", &id, "note"]).contains("note"),
        "never reached the writer"
    );
}

#[test]
fn the_sync_summary_counts_deletions_and_new_records() {
    let a = Env::new();
    let b = Env::new();
    let relay = Relay::start(a.path().join("relay.db"));
    let id = a.new_record("contacts", r#"{"name": "Ada"}"#);
    a.ok(&["sync", "--relay", &relay.url]);
    let out = b.ok(&["sync", "--relay", &relay.url, "--collection", "contacts"]);
    assert!(out.contains("1 record new here"), "{out}");
    a.ok(&["rm", &id]);
    let out = a.ok(&["sync", "--relay", &relay.url]);
    assert!(out.contains("deletions: 1 sent, 0 received"), "{out}");
    let json = b.json(&["--json", "sync", "--relay", &relay.url]);
    assert_eq!(json["deletions_received"], json!(1), "{json}");
}

// ---- inspect ----

/// `GET path` over HTTP; the status code and the body as JSON.
fn http_json(addr: &str, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .expect("timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, serde_json::from_str(body).unwrap_or_default())
}

#[test]
fn inspect_serves_the_page_and_a_read_only_api_over_the_file_and_prints_its_url() {
    let env = Env::new();
    let id = env.new_record("contacts", r#"{"name": "Ada"}"#);
    env.ok(&["put", &id, "name", r#""Ada Lovelace""#]);
    let mut child = env
        .cmd(&["inspect", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn accord inspect");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the URL line");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("a URL in {line:?}"));
    assert!(line.contains("read-only"), "{line}");
    let addr = url.trim_start_matches("http://").trim_end_matches('/');

    let (status, info) = http_json(addr, "GET", "/v1/info", "");
    assert_eq!(status, 200);
    assert_eq!(info["server"], "accord inspect");
    assert_eq!(info["read_only"], true);
    assert_eq!(info["auth"], "open");
    let (_, collections) = http_json(addr, "GET", "/v1/collections", "");
    assert_eq!(collections["collections"][0]["name"], "contacts");
    assert_eq!(collections["collections"][0]["writable"], false);
    let (_, record) = http_json(addr, "GET", &format!("/v1/records/{id}"), "");
    assert_eq!(record["value"]["name"], "Ada Lovelace");
    let (_, history) = http_json(addr, "GET", &format!("/v1/records/{id}/history"), "");
    assert_eq!(history["total"], 2);
    let (status, refused) = http_json(addr, "POST", "/v1/collections/contacts/records", "{}");
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (403, Some("read_only"))
    );
    let (status, refused) = http_json(addr, "DELETE", &format!("/v1/records/{id}"), "");
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (403, Some("read_only"))
    );
    child.kill().expect("kill");
    child.wait().expect("reap");
    // Nothing was written.
    assert_eq!(env.json(&["get", &id])["name"], "Ada Lovelace");
}

#[test]
fn inspect_refuses_a_missing_file_and_a_bad_address() {
    let env = Env::new();
    let err = env.fails(1, &["inspect"]);
    assert!(err.contains("does not exist"), "{err}");
    assert!(!env.db.exists(), "inspect creates no database");
    let err = env.fails(2, &["inspect", "--listen", "nowhere"]);
    assert!(err.contains("--listen"), "{err}");
}

#[test]
fn feed_prints_every_change_after_a_cursor_and_the_cursor_to_resume_from() {
    let env = Env::new();
    let relay = Relay::start(env.path().join("relay.db"));
    let ada = env.new_record("contacts", r#"{"name": "Ada"}"#);
    let grace = env.new_record("contacts", r#"{"name": "Grace"}"#);
    env.ok(&["sync", "--relay", &relay.url]);

    let run = env.run(&[
        "--json",
        "feed",
        "--relay",
        &relay.url,
        "--collection",
        "contacts",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let events: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let ids: Vec<&str> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ids.len(), 2, "{events:?}");
    assert!(ids.contains(&ada.as_str()) && ids.contains(&grace.as_str()));
    assert!(events.iter().all(|e| e["event"] == "created"));
    let cursor = events[1]["cursor"].as_str().expect("cursor").to_owned();
    assert!(
        run.stderr.contains(&format!("cursor: {cursor}")),
        "{}",
        run.stderr
    );

    // After the cursor: only what changed since, as a table line.
    env.ok(&["put", &ada, "name", r#""Ada Lovelace""#]);
    env.ok(&["sync", "--relay", &relay.url]);
    let run = env.run(&[
        "feed",
        "--relay",
        &relay.url,
        "--collection",
        "contacts",
        "--since",
        &cursor,
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let out = run.stdout;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(
        lines[0].contains("changed") && lines[0].contains("Ada Lovelace"),
        "{out}"
    );

    // Given several relays (a cluster's nodes), one that cannot be reached
    // is passed over, for pages and for the event stream.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", listener.local_addr().expect("addr"))
        // dropped: nothing listens there any more
    };
    let run = env.run(&[
        "--json",
        "feed",
        "--relay",
        &dead,
        "--relay",
        &relay.url,
        "--collection",
        "contacts",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 2, "{}", run.stdout);
    let (mut follow, events) = follow_feed(&env, &format!("{dead},{}", relay.url));
    let streamed = [next_id(&events), next_id(&events)];
    follow.kill().expect("kill");
    follow.wait().expect("reap");
    assert!(
        streamed.contains(&ada) && streamed.contains(&grace),
        "{streamed:?}"
    );
    // None answering: each one's failure is named, and the cursor to
    // resume from is printed all the same.
    let err = env.fails(
        1,
        &[
            "feed",
            "--relay",
            &dead,
            "--relay",
            &dead.replace("http", "ws"),
            "--collection",
            "contacts",
            "--since",
            "7",
        ],
    );
    assert!(err.contains("no relay answered"), "{err}");
    assert!(err.contains("cannot reach"), "{err}");
    assert!(err.contains("cursor: 7"), "{err}");

    // Bad input is named.
    let err = env.fails(
        1,
        &["feed", "--relay", "ftp://x", "--collection", "contacts"],
    );
    assert!(err.contains("bad relay URL"), "{err}");
    let err = env.fails(
        2,
        &[
            "feed",
            "--relay",
            &relay.url,
            "--collection",
            "c",
            "--since",
            "x",
        ],
    );
    assert!(err.contains("--since"), "{err}");
}

/// Starts `accord --json feed --follow` on `contacts` from `relays`; the
/// process, and its lines as they come.
fn follow_feed(
    env: &Env,
    relays: &str,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut follow = env
        .cmd(&[
            "--json",
            "feed",
            "--relay",
            relays,
            "--collection",
            "contacts",
            "--follow",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = follow.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            if tx.send(line.expect("read")).is_err() {
                return;
            }
        }
    });
    (follow, rx)
}

/// The id of the next event `feed --json` printed (within 30 s).
fn next_id(events: &std::sync::mpsc::Receiver<String>) -> String {
    let line = events
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("an event within 30 s");
    let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    event["id"].as_str().expect("id").to_owned()
}

/// Runs `sql` on the test PostgreSQL (`ACCORD_TEST_POSTGRES`, default
/// `postgres://postgres@127.0.0.1:5432/test`, as the relay's cluster
/// suite).
fn postgres(sql: &str) {
    let url = std::env::var("ACCORD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("this test needs PostgreSQL at {url}: {e}"));
        tokio::spawn(connection);
        client.batch_execute(sql).await.expect("sql");
    });
}

/// Following a cluster's feed through several nodes: when the node it
/// reads from stops, `feed --follow` goes on at the next one after the
/// last event it printed, printing nothing twice.
#[test]
fn feed_follows_a_cluster_from_node_to_node() {
    let env = Env::new();
    let schema = format!(
        "accord_cli_{}",
        accord_engine::DocId::random().to_string().to_lowercase()
    );
    let store = std::env::var("ACCORD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let node = || {
        let mut cluster = accord_relay::cluster::ClusterConfig::new(store.clone());
        cluster.schema = schema.clone();
        cluster.catch_up_interval = std::time::Duration::from_millis(200);
        Relay::start_with(accord_relay::Config {
            db: env.path().join("unused.db"),
            cluster: Some(cluster),
            ..accord_relay::Config::default()
        })
    };
    let first = node();
    let second = node();
    let (mut follow, events) = follow_feed(&env, &format!("{},{}", first.url, second.url));
    let next_id = || next_id(&events);

    let ada = env.new_record("contacts", r#"{"name": "Ada"}"#);
    env.ok(&["sync", "--relay", &first.url]);
    assert_eq!(next_id(), ada);
    drop(first); // its event stream ends
    let grace = env.new_record("contacts", r#"{"name": "Grace"}"#);
    env.ok(&["sync", "--relay", &second.url]);
    assert_eq!(next_id(), grace, "the next event, from the other node");
    follow.kill().expect("kill");
    follow.wait().expect("reap");
    drop(second);
    postgres(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
}

#[test]
fn webhooks_shows_dead_letters_and_replays_and_drops_them() {
    use std::sync::atomic::{AtomicU16, Ordering};
    use std::sync::Arc;
    let env = Env::new();
    // A receiver that refuses until told otherwise.
    let answer = Arc::new(AtomicU16::new(400));
    let (tx, rx) = std::sync::mpsc::channel();
    let status = Arc::clone(&answer);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(listener.local_addr().expect("addr")).expect("send");
            let app = axum::Router::new().route(
                "/hook",
                axum::routing::post(move || {
                    let status = Arc::clone(&status);
                    async move {
                        axum::http::StatusCode::from_u16(status.load(Ordering::SeqCst))
                            .expect("status")
                    }
                }),
            );
            axum::serve(listener, app).await.expect("serve");
        });
    });
    let hook_addr = rx.recv().expect("receiver address");
    let hooks = env.path().join("hooks.toml");
    std::fs::write(
        &hooks,
        format!(
            "[[webhook]]\nname = \"search\"\nurl = \"http://{hook_addr}/hook\"\n\
             collections = [\"contacts\"]\nsecret = \"a secret long enough here\"\n"
        ),
    )
    .expect("hooks");
    let relay = Relay::start_with(accord_relay::Config {
        db: env.path().join("relay.db"),
        webhooks: accord_relay::webhooks::load(&hooks).expect("load"),
        ..accord_relay::Config::default()
    });
    env.new_record("contacts", r#"{"name": "Ada"}"#);
    env.ok(&["sync", "--relay", &relay.url]);

    // The 400 made a dead letter; wait for it to show.
    let listing = (0..600)
        .map(|_| {
            let out = env.ok(&["--json", "webhooks", "--relay", &relay.url]);
            let value: serde_json::Value = serde_json::from_str(&out).expect("json");
            if value["webhooks"][0]["dead_letters"]
                .as_array()
                .is_some_and(|l| !l.is_empty())
            {
                Some(value)
            } else {
                std::thread::park_timeout(std::time::Duration::from_millis(50));
                None
            }
        })
        .find_map(|v| v)
        .expect("a dead letter within 30 s");
    let letter = &listing["webhooks"][0]["dead_letters"][0];
    assert_eq!(letter["error"], "HTTP 400 Bad Request");
    let name = format!("search/{}", letter["id"]);
    // Several relays (a cluster's nodes): one that cannot be reached is
    // passed over.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", listener.local_addr().expect("addr"))
    };
    let both = format!("{dead},{}", relay.url);
    let table = env.ok(&["webhooks", "--relay", &both]);
    assert!(table.contains(&format!("dead letter {name}")), "{table}");
    assert!(table.contains("HTTP 400"), "{table}");

    // Replay while the receiver still refuses: an error, the letter stays;
    // the relay that answered is the last one asked (a replay is never
    // sent twice).
    let err = env.fails(1, &["webhooks", "--relay", &both, "--replay", &name]);
    assert!(err.contains("HTTP 400"), "{err}");
    assert!(!err.contains("no relay answered"), "{err}");
    answer.store(200, Ordering::SeqCst);
    let out = env.ok(&["webhooks", "--relay", &relay.url, "--replay", &name]);
    assert_eq!(out.trim(), format!("delivered {name}"));
    let table = env.ok(&["webhooks", "--relay", &relay.url]);
    assert!(table.contains("no dead letters"), "{table}");
    let err = env.fails(1, &["webhooks", "--relay", &relay.url, "--drop", &name]);
    assert!(err.contains("no dead letter"), "{err}");
    let err = env.fails(
        1,
        &["webhooks", "--relay", &relay.url, "--drop", "nonsense"],
    );
    assert!(err.contains("WEBHOOK/ID"), "{err}");
}
