//! A relay cluster on real services: `accord-relay` processes on one
//! PostgreSQL store and one NATS bus, replicas connected to different
//! nodes, and two nodes' stores appending to one document at once.
//!
//! The services come from `ACCORD_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432/test`) and `ACCORD_TEST_NATS`
//! (default `nats://127.0.0.1:4222`). Each test works in its own
//! PostgreSQL schema, dropped at the end, and the cluster id made in that
//! schema names its bus subjects, so tests run in parallel and twice in a
//! row. Without the services the tests fail, saying what to start.

#[path = "../../tests/src/proxy.rs"]
#[allow(dead_code)] // not every fault is used here
mod proxy;
mod support;

use std::net::ToSocketAddrs;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use accord_engine::automerge::sync::{State, SyncDoc};
use accord_engine::automerge::transaction::Transactable;
use accord_engine::automerge::{AutoCommit, Automerge, ROOT};
use accord_engine::sync::SyncDocs;
use accord_engine::{ConnectOptions, DocId, Heads, PeerId, Replica, SyncHandle};
use accord_relay::cluster::store::{PgStore, StoreLimits};
use accord_relay::cluster::ClusterConfig;
use proxy::{Fault, FaultProxy};
use serde_json::json;
use support::receiver::{Delivery, Receiver};
use support::{spawn_relay_at, spawn_relay_secured, spawn_relay_with, RelayProcess};

const T: Duration = Duration::from_secs(30);

/// Where the services are, checked to answer.
struct Services {
    postgres: String,
    nats: String,
}

fn reachable(url: &str, default_port: u16) -> bool {
    host_port(url, default_port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
        })
}

fn services() -> Services {
    let postgres = std::env::var("ACCORD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let nats = std::env::var("ACCORD_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    assert!(
        reachable(&postgres, 5432),
        "the cluster tests need PostgreSQL at {postgres}: start it (Debian: apt-get install postgresql; \
         service postgresql start) or point ACCORD_TEST_POSTGRES at one"
    );
    assert!(
        reachable(&nats, 4222),
        "the cluster tests need NATS at {nats}: start it (Debian: apt-get install nats-server; \
         nats-server -a 127.0.0.1 -p 4222 &) or point ACCORD_TEST_NATS at one"
    );
    Services { postgres, nats }
}

/// A schema of the test's own, dropped when done.
struct Schema {
    name: String,
    postgres: String,
}

impl Schema {
    fn new(postgres: &str) -> Schema {
        let name = format!("accord_test_{}", DocId::random().to_string().to_lowercase());
        let name: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        Schema {
            name,
            postgres: postgres.to_owned(),
        }
    }

    /// Runs SQL in the schema on a connection of its own.
    fn query(&self, sql: &str) -> Vec<tokio_postgres::Row> {
        let (url, schema, sql) = (self.postgres.clone(), self.name.clone(), sql.to_owned());
        // A thread of its own: callers may be inside a runtime.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .expect("connect to PostgreSQL");
                tokio::spawn(connection);
                client
                    .batch_execute(&format!("SET search_path TO {schema}"))
                    .await
                    .expect("search_path");
                client.query(&sql, &[]).await.expect("query")
            })
        })
        .join()
        .expect("query thread")
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = self.query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
    }
}

/// Starts a node of the cluster in `schema`.
fn node(dir: &Path, services: &Services, schema: &Schema, bus: bool) -> RelayProcess {
    let bus = bus.then_some(services.nats.as_str());
    node_on(dir, &services.postgres, bus, schema)
}

/// Starts a node on the given store and bus URLs.
fn node_on(dir: &Path, store: &str, bus: Option<&str>, schema: &Schema) -> RelayProcess {
    node_with(dir, store, bus, schema, &[])
}

/// [`node_on`] with more arguments.
fn node_with(
    dir: &Path,
    store: &str,
    bus: Option<&str>,
    schema: &Schema,
    more: &[&str],
) -> RelayProcess {
    let mut args = vec![
        "--store",
        store,
        "--store-schema",
        schema.name.as_str(),
        "--catch-up-secs",
        "1",
    ];
    if let Some(bus) = bus {
        args.extend(["--bus", bus]);
    }
    args.extend(more);
    // The --db file is not used by a cluster node.
    spawn_relay_with(&dir.join("unused.db"), &args)
}

/// Two nodes with a bus that check tokens signed with `secret`.
fn secured_nodes(
    dir: &Path,
    services: &Services,
    schema: &Schema,
    secret: &str,
) -> Vec<RelayProcess> {
    let args = [
        "--store",
        services.postgres.as_str(),
        "--store-schema",
        schema.name.as_str(),
        "--bus",
        services.nats.as_str(),
    ];
    (0..2)
        .map(|_| spawn_relay_secured(&dir.join("unused.db"), &args, secret))
        .collect()
}

/// The `host:port` of a service URL.
fn host_port(url: &str, default_port: u16) -> String {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let host_port = rest.rsplit('@').next().unwrap_or(rest);
    let host_port = host_port.split(['/', '?']).next().unwrap_or(host_port);
    if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:{default_port}")
    }
}

/// A proxy in front of a service, and the service's URL through it.
async fn proxied(url: &str, default_port: u16) -> (FaultProxy, String) {
    let target = host_port(url, default_port)
        .to_socket_addrs()
        .expect("address")
        .next()
        .expect("an address");
    let proxy = FaultProxy::start(target).await.expect("proxy");
    let through = url.replacen(&host_port(url, default_port), &proxy.addr.to_string(), 1);
    // A URL without a port gets the proxy's in place of its host.
    let through = if through == url {
        url.replacen(
            host_port(url, default_port)
                .split(':')
                .next()
                .unwrap_or_default(),
            &proxy.addr.to_string(),
            1,
        )
    } else {
        through
    };
    (proxy, through)
}

/// `GET path` on a node's main port: the status and the body.
fn http_get(node: &RelayProcess, path: &str) -> (u16, String) {
    http_call(&node.url, "GET", path, "")
}

fn health(node: &RelayProcess) -> (u16, serde_json::Value) {
    let (status, body) = http_get(node, "/health");
    (status, serde_json::from_str(&body).unwrap_or_default())
}

fn options() -> ConnectOptions {
    ConnectOptions {
        collections: vec!["notes".into()],
        ..ConnectOptions::default()
    }
}

async fn connected(dir: &Path, name: &str, url: &str) -> (Replica, SyncHandle) {
    let replica = Replica::open(dir.join(format!("{name}.db"))).expect("open replica");
    let mut handle = replica.connect(url, options());
    handle.wait_synced(T).await.expect("synced");
    (replica, handle)
}

/// Whether `check` comes true within [`T`].
async fn within(mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + T;
    while !check() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + T;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_three_nodes_discover_edit_concurrently_delete_and_converge() {
    let services = services();
    let schema = Schema::new(&services.postgres);
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes: Vec<RelayProcess> = (0..3)
        .map(|_| node(dir.path(), &services, &schema, true))
        .collect();
    let (a, mut ha) = connected(dir.path(), "a", &nodes[0].url).await;
    let (b, _hb) = connected(dir.path(), "b", &nodes[1].url).await;
    let (c, _hc) = connected(dir.path(), "c", &nodes[2].url).await;

    // Created through node A, discovered by replicas on B and C live.
    let id = a
        .create("notes", &json!({"title": "from A"}))
        .expect("create");
    ha.wait_synced(T).await.expect("A synced");
    wait_for("the record on B and C", || {
        b.get(&id).is_ok() && c.get(&id).is_ok()
    })
    .await;

    // Concurrent edits through three nodes merge everywhere.
    a.put(&id, "a", &json!(1), None).expect("put a");
    b.put(&id, "b", &json!(2), None).expect("put b");
    c.put(&id, "c", &json!(3), None).expect("put c");
    let expected = json!({"title": "from A", "a": 1, "b": 2, "c": 3});
    let values = || -> Vec<serde_json::Value> {
        [&a, &b, &c]
            .iter()
            .map(|r| r.get(&id).map(|rec| rec.value).unwrap_or_default())
            .collect()
    };
    let all_merged = || values().iter().all(|v| *v == expected);
    if !within(all_merged).await {
        panic!(
            "the three edits did not reach every replica: {:?}",
            values()
        );
    }
    let heads = |r: &Replica| r.meta(&id).expect("meta").heads;
    wait_for("equal heads", || {
        heads(&a) == heads(&b) && heads(&b) == heads(&c)
    })
    .await;
    // PostgreSQL holds the same document, with each change stored once.
    let rows = schema.query(&format!(
        "SELECT (SELECT count(*) FROM changes c WHERE c.doc = d.id)
              + (SELECT count(*) FROM snapshots s WHERE s.doc = d.id),
                json::text, id_text
         FROM docs d WHERE id_text = '{id}'"
    ));
    assert_eq!(rows.len(), 1, "one docs row");
    let stored: serde_json::Value = serde_json::from_str(rows[0].get::<_, &str>(1)).expect("json");
    assert_eq!(stored, expected, "the records projection in PostgreSQL");

    // A deletion through node B reaches replicas on A and C.
    b.delete(&id).expect("delete");
    wait_for("the deletion on A and C", || {
        [&a, &c]
            .iter()
            .all(|r| r.meta(&id).map(|m| m.deleted).unwrap_or(false))
    })
    .await;
    let deleted = schema.query(&format!("SELECT deleted FROM records WHERE id = '{id}'"));
    assert!(deleted[0].get::<_, bool>(0), "the tombstone in PostgreSQL");

    // The relay side's sync states reach PostgreSQL (written in batches,
    // off each message's path), so a replica resumes on any node.
    let peer = a.peer_id().to_string();
    wait_for("A's sync states in PostgreSQL", || {
        let rows = schema.query(&format!(
            "SELECT count(*) FROM sync_states WHERE strpos(peer, '{peer}') > 0"
        ));
        rows[0].get::<_, i64>(0) > 0
    })
    .await;

    // What a node reports of itself; of the HTTP API it serves the
    // change feed (tested below) and /v1/info, not the rest yet.
    let (status, body) = health(&nodes[2]);
    assert_eq!(status, 200);
    assert_eq!((&body["store"], &body["bus"]), (&json!("up"), &json!("up")));
    let (status, body) = http_get(&nodes[2], "/v1/info");
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_get(&nodes[2], "/v1/collections/notes/records");
    assert_eq!(status, 501, "{body}");
    assert!(body.contains("not_on_cluster"), "{body}");
}

/// `GET path` with an `Authorization: Bearer` token on the main port of
/// the node at `url`: the status and the body.
fn http_get_as(url: &str, path: &str, token: &str) -> (u16, String) {
    http_call(
        url,
        "GET",
        path,
        &format!("Authorization: Bearer {token}\r\n"),
    )
}

/// `METHOD path` with `headers` (each ending in CRLF) on the main port of
/// the node at `url`: the status and the body.
fn http_call(url: &str, method: &str, path: &str, headers: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("ws://");
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(T)).expect("timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

/// A page of the change feed of the node at `url`: its events (cursor, id, event and
/// value of each) and its `next` cursor.
fn feed_page(url: &str, query: &str, token: &str) -> (Vec<serde_json::Value>, String) {
    let path = format!("/v1/collections/notes/changes?{query}");
    let (status, body) = http_get_as(url, &path, token);
    assert_eq!(status, 200, "{path}: {body}");
    let page: serde_json::Value = serde_json::from_str(&body).expect("a JSON page");
    let events = page["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|e| json!([e["cursor"], e["id"], e["event"], e["value"]]))
        .collect();
    (events, page["next"].as_str().expect("next").to_owned())
}

/// Every node serves a collection's change feed from the store, with the
/// same events and cursors, under the same tokens; a long poll and an
/// event stream on one node wake for a change made through another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_serves_the_same_change_feed_and_wakes_for_other_nodes_changes() {
    use accord_relay::auth::{Right, Tokens};
    use std::collections::BTreeMap;

    let services = services();
    let schema = Schema::new(&services.postgres);
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = "a cluster-wide secret of enough bytes";
    let nodes = secured_nodes(dir.path(), &services, &schema, secret);
    let tokens = Tokens::new(secret.as_bytes()).expect("secret");
    let mint = |collection: &str, right: Right| {
        tokens.mint(
            BTreeMap::from([(collection.to_owned(), right)]),
            Duration::from_secs(3600),
        )
    };
    let reader = mint("notes", Right::Read);

    // Written through node 0: three records, one edited, one deleted.
    let a = Replica::open(dir.path().join("a.db")).expect("open");
    let mut ha = a.connect(
        &nodes[0].url,
        ConnectOptions {
            token: mint("notes", Right::ReadWrite),
            ..options()
        },
    );
    let ids: Vec<DocId> = (0..3)
        .map(|i| a.create("notes", &json!({"n": i})).expect("create"))
        .collect();
    ha.wait_synced(T).await.expect("synced");
    a.put(&ids[1], "n", &json!(10), None).expect("edit");
    ha.wait_synced(T).await.expect("synced");
    a.delete(&ids[2]).expect("delete");
    ha.wait_synced(T).await.expect("synced");

    let (first, next) = feed_page(&nodes[1].url, "since=0", &reader);
    let summary: Vec<_> = first.iter().map(|e| (e[1].clone(), e[2].clone())).collect();
    assert_eq!(
        summary,
        [
            (json!(ids[0].to_string()), json!("created")),
            (json!(ids[1].to_string()), json!("created")),
            (json!(ids[2].to_string()), json!("deleted")),
        ],
        "each record once, in commit order: {first:?}"
    );
    assert_eq!(
        first[1][3],
        json!({"n": 10}),
        "a record's value after its latest change"
    );
    assert_eq!(
        first,
        feed_page(&nodes[0].url, "since=0", &reader).0,
        "the same feed on every node"
    );
    // Resuming after the page: only what came later, told as a change.
    a.put(&ids[0], "n", &json!(5), None).expect("edit");
    ha.wait_synced(T).await.expect("synced");
    let (later, next) = feed_page(&nodes[1].url, &format!("since={next}"), &reader);
    assert_eq!(
        later,
        [json!([later[0][0], ids[0].to_string(), "changed", {"n": 5}])],
        "{later:?}"
    );

    // Rights are checked as on a single relay.
    let (status, body) = http_get_as(
        &nodes[1].url,
        "/v1/collections/notes/changes",
        &mint("other", Right::Read),
    );
    assert_eq!(status, 403, "{body}");
    let (status, body) = http_get(&nodes[1], "/v1/collections/notes/changes");
    assert_eq!(status, 401, "{body}");

    // A long poll on node 1 ends with a record created through node 0.
    let poll = {
        let (url, reader, next) = (nodes[1].url.clone(), reader.clone(), next.clone());
        std::thread::spawn(move || feed_page(&url, &format!("since={next}&wait=30"), &reader))
    };
    // And so does an event stream opened there.
    let stream = {
        let (url, reader, next) = (nodes[1].url.clone(), reader.clone(), next.clone());
        std::thread::spawn(move || first_streamed_event(&url, &next, &reader))
    };
    // The waits are registered before this write or not: either way the
    // change is read (a waiter reads first, then waits).
    let created = a.create("notes", &json!({"n": 3})).expect("create");
    ha.wait_synced(T).await.expect("synced");
    let (polled, _) = poll.join().expect("long poll");
    assert_eq!(polled.len(), 1, "{polled:?}");
    assert_eq!(
        (&polled[0][1], &polled[0][2]),
        (&json!(created.to_string()), &json!("created"))
    );
    let streamed = stream.join().expect("event stream");
    assert_eq!(streamed["id"], json!(created.to_string()), "{streamed}");
    assert_eq!(streamed["value"], json!({"n": 3}), "{streamed}");
}

/// Opens `GET /v1/collections/notes/changes` as an event stream after
/// `since` on the node at `url`, and returns its first change event.
fn first_streamed_event(url: &str, since: &str, token: &str) -> serde_json::Value {
    use std::io::{BufRead, BufReader, Write};
    let addr = url.trim_start_matches("ws://");
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(T)).expect("timeout");
    write!(
        stream,
        "GET /v1/collections/notes/changes?since={since} HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .expect("send");
    let mut lines = BufReader::new(stream).lines();
    let mut event = String::new();
    loop {
        let line = lines.next().expect("the stream goes on").expect("read");
        if let Some(name) = line.strip_prefix("event:") {
            event = name.trim().to_owned();
        } else if let Some(data) = line.strip_prefix("data:") {
            if event == "change" {
                return serde_json::from_str(data.trim()).expect("an event's JSON");
            }
            panic!("a {event} event: {data}");
        }
    }
}

#[test]
fn a_node_that_cannot_use_its_store_says_why_and_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_accord-relay"))
            .args(["--open", "--listen", "127.0.0.1:0", "--db"])
            .arg(dir.path().join("unused.db"))
            .args(args)
            .output()
            .expect("run accord-relay");
        assert!(!out.status.success(), "{args:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // Port 1 on loopback: nothing listens there.
    let unreachable = run(&["--store", "postgres://app:s3cret@127.0.0.1:1/test"]);
    assert!(
        unreachable
            .contains("cannot reach the PostgreSQL store at postgres://app:***@127.0.0.1:1/test"),
        "{unreachable}"
    );
    assert!(
        !unreachable.contains("s3cret"),
        "the password stays out of the log"
    );
    let bad_schema = run(&[
        "--store",
        "postgres://postgres@127.0.0.1:1/test",
        "--store-schema",
        "Robert'); DROP",
    ]);
    assert!(bad_schema.contains("bad store schema name"), "{bad_schema}");
    let bad_url = run(&["--store", "mysql://nope"]);
    assert!(bad_url.contains("bad --store URL"), "{bad_url}");
    let bus_alone = run(&["--bus", "nats://127.0.0.1:4222"]);
    assert!(bus_alone.contains("--store"), "{bus_alone}");
}

/// A store of schema version 1 (before webhooks ran on clusters) is
/// migrated at start, its documents kept; a store newer than the build is
/// refused, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_store_is_migrated_and_a_newer_one_refused() {
    let services = services();
    let schema = Schema::new(&services.postgres);
    let dir = tempfile::tempdir().expect("tempdir");
    let first = node(dir.path(), &services, &schema, false);
    let (a, mut ha) = connected(dir.path(), "a", &first.url).await;
    let id = a.create("notes", &json!({"kept": true})).expect("create");
    ha.wait_synced(T).await.expect("synced");
    drop(ha);
    drop(first);
    // Back to what version 1 had.
    schema.query("DROP TABLE feed_cursors, feed_dead_letters");
    schema.query("UPDATE accord_meta SET value = '1' WHERE key = 'schema_version'");
    let again = node(dir.path(), &services, &schema, false);
    let version = schema.query("SELECT value FROM accord_meta WHERE key = 'schema_version'");
    assert_eq!(version[0].get::<_, &str>(0), "2");
    let tables = schema.query(&format!(
        "SELECT count(*) FROM information_schema.tables
           WHERE table_schema = '{}' AND table_name IN ('feed_cursors', 'feed_dead_letters')",
        schema.name
    ));
    assert_eq!(tables[0].get::<_, i64>(0), 2, "the version 2 tables");
    let (status, body) = http_get(&again, "/v1/collections/notes/changes");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&id.to_string()), "the documents kept: {body}");
    drop(again);

    schema.query("UPDATE accord_meta SET value = '3' WHERE key = 'schema_version'");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_accord-relay"))
        .args(["--open", "--listen", "127.0.0.1:0", "--db"])
        .arg(dir.path().join("unused.db"))
        .args([
            "--store",
            &services.postgres,
            "--store-schema",
            &schema.name,
        ])
        .output()
        .expect("run accord-relay");
    assert!(!out.status.success(), "started on a newer store");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("has version 3, newer than this build supports (2)"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_without_a_bus_still_converge_by_catching_up_from_the_store() {
    let services = services();
    let schema = Schema::new(&services.postgres);
    let dir = tempfile::tempdir().expect("tempdir");
    let one = node(dir.path(), &services, &schema, false);
    let two = node(dir.path(), &services, &schema, false);
    let (a, _ha) = connected(dir.path(), "a", &one.url).await;
    let (b, _hb) = connected(dir.path(), "b", &two.url).await;
    let ids: Vec<DocId> = (0..5)
        .map(|i| a.create("notes", &json!({ "n": i })).expect("create"))
        .collect();
    wait_for("every record on B, by catch-up", || {
        ids.iter().all(|id| b.get(id).is_ok())
    })
    .await;
    b.put(&ids[0], "from", &json!("B"), None).expect("put");
    wait_for("B's change on A", || {
        a.get(&ids[0])
            .map(|r| r.value == json!({"n": 0, "from": "B"}))
            .unwrap_or(false)
    })
    .await;
}

/// Two nodes' stores, one schema: the same document appended to from two
/// threads at the same instant, many times over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_appending_to_one_document_at_once_lose_nothing_and_store_nothing_twice() {
    let services = services();
    let schema = Schema::new(&services.postgres);
    let mut config = ClusterConfig::new(services.postgres.clone());
    config.schema = schema.name.clone();
    let store = |pool| {
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let limits = StoreLimits {
            max_document_bytes: 64 << 20,
            max_sync_message_bytes: 4 << 20,
            max_sync_message_ops: 100_000,
            message_budget: Default::default(),
            cache_docs: 16,
            // Compact often, so compactions race appends too.
            compact_after: 7,
        };
        Arc::new(PgStore::new(
            pool,
            tokio::runtime::Handle::current(),
            limits,
            tx,
            Arc::new(|_| {}),
        ))
    };
    let (pool_one, cluster) = accord_relay::cluster::open_store(&config)
        .await
        .expect("store");
    let (pool_two, same) = accord_relay::cluster::open_store(&config)
        .await
        .expect("store");
    assert_eq!(cluster, same, "one cluster id for every node");
    let nodes = [store(pool_one), store(pool_two)];
    let doc = DocId::random();
    let notes: accord_engine::Collection = "notes".parse().expect("valid");
    const ROUNDS: usize = 40;
    let barrier = Arc::new(Barrier::new(2));
    let writers: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(w, node)| {
            let (node, barrier, notes) = (Arc::clone(node), Arc::clone(&barrier), notes.clone());
            tokio::task::spawn_blocking(move || {
                // Each writer is a peer with its own document copy that
                // makes one change per round and syncs it with its node;
                // the states persist, so after the first round the change
                // goes in the first message, at the same instant as the
                // other writer's.
                let mut mine = AutoCommit::new();
                let peer = PeerId::new(format!("writer-{w}")).expect("peer");
                let (mut ours, mut theirs) = (State::new(), State::new());
                for round in 0..ROUNDS {
                    mine.put(ROOT, format!("w{w}-{round}"), round as i64)
                        .expect("put");
                    let made = mine.get_heads();
                    barrier.wait();
                    for _ in 0..20 {
                        let Some(message) = mine.sync().generate_sync_message(&mut ours) else {
                            break;
                        };
                        if let Err(e) = node.receive(&doc, &notes, &mut theirs, message, &peer) {
                            // A storage failure is what a peer retries.
                            assert_eq!(
                                accord_engine::sync::error_code(&e),
                                accord_engine::sync::ErrorCode::STORAGE_UNAVAILABLE,
                                "{e}"
                            );
                            (ours, theirs) = (State::new(), State::new());
                            continue;
                        }
                        if let Some(reply) =
                            node.generate(&doc, &notes, &mut theirs).expect("answer")
                        {
                            mine.sync()
                                .receive_sync_message(&mut ours, reply)
                                .expect("apply the answer");
                        }
                    }
                    let held = node
                        .covers(
                            &doc,
                            &Heads::new(made.clone()),
                            &node.heads(&doc).expect("heads"),
                        )
                        .expect("covers");
                    assert_eq!(
                        held,
                        Some(true),
                        "round {round}: writer {w}'s change is stored"
                    );
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
    // Every change of both writers is in the store once, and both nodes
    // (and a fresh load) agree on the heads.
    let loaded_heads: Vec<Heads> = tokio::task::spawn_blocking({
        let nodes = nodes.clone();
        move || {
            nodes
                .iter()
                .map(|n| {
                    n.mark_changed(&doc);
                    n.heads(&doc).expect("heads")
                })
                .collect()
        }
    })
    .await
    .expect("heads");
    assert_eq!(loaded_heads[0], loaded_heads[1]);
    let hex = |h: &Heads| h.to_bytes();
    let row = schema.query(&format!(
        "SELECT heads, (SELECT count(*) FROM changes), (SELECT count(DISTINCT hash) FROM changes),
                json::text
         FROM docs WHERE id_text = '{doc}'"
    ));
    assert_eq!(row[0].get::<_, Vec<u8>>(0), hex(&loaded_heads[0]));
    let (rows, distinct): (i64, i64) = (row[0].get(1), row[0].get(2));
    assert_eq!(rows, distinct, "no change stored twice");
    let json: serde_json::Value = serde_json::from_str(row[0].get::<_, &str>(3)).expect("json");
    let keys = json.as_object().expect("object").len();
    assert_eq!(keys, 2 * ROUNDS, "every change of both writers: {json}");
    // The whole document reloads from snapshot + rows with every change.
    let fresh = tokio::task::spawn_blocking(move || {
        let node = &nodes[0];
        let peer = PeerId::new("reader").expect("peer");
        let (mut theirs, mut ours) = (State::new(), State::new());
        let mut copy = Automerge::new();
        for _ in 0..20 {
            let to_copy = node.generate(&doc, &notes, &mut theirs).expect("generate");
            let had = to_copy.is_some();
            if let Some(m) = to_copy {
                copy.receive_sync_message(&mut ours, m).expect("apply");
            }
            let to_node = copy.generate_sync_message(&mut ours);
            let sent = to_node.is_some();
            if let Some(m) = to_node {
                node.receive(&doc, &notes, &mut theirs, m, &peer)
                    .expect("receive");
            }
            if !had && !sent {
                break;
            }
        }
        copy
    })
    .await
    .expect("load");
    assert_eq!(Heads::new(fresh.get_heads()), loaded_heads[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_stops_acknowledgements_says_not_ready_and_loses_nothing() {
    let services = services();
    let schema = Schema::new(&services.postgres);
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, through) = proxied(&services.postgres, 5432).await;
    let cut = node_on(dir.path(), &through, Some(&services.nats), &schema);
    let whole = node(dir.path(), &services, &schema, true);
    let (a, mut ha) = connected(dir.path(), "a", &cut.url).await;
    let (b, _hb) = connected(dir.path(), "b", &whole.url).await;
    let before = a.create("notes", &json!({"n": "before"})).expect("create");
    ha.wait_synced(T).await.expect("acknowledged");
    wait_for("the first record on B", || b.get(&before).is_ok()).await;
    assert_eq!(health(&cut).0, 200);

    store.set(Fault::Down);
    wait_for("the cut node to say it is not ready", || {
        let (status, body) = health(&cut);
        status == 503 && body["status"] == "not_ready" && body["store"] == "down"
    })
    .await;
    assert_eq!(health(&whole).0, 200, "the other node is fine");
    let during = a
        .create("notes", &json!({"n": "during"}))
        .expect("create offline-safe");
    // Nothing is acknowledged while the store cannot commit it: the
    // replica keeps the change and offers it again.
    assert!(
        ha.wait_synced(Duration::from_secs(2)).await.is_err(),
        "a change was acknowledged while PostgreSQL was cut off"
    );
    assert!(b.get(&during).is_err(), "never stored, so never forwarded");

    store.set(Fault::None);
    ha.wait_synced(T)
        .await
        .expect("acknowledged once the store is back");
    wait_for("the record written during the outage on B", || {
        b.get(&during).is_ok()
    })
    .await;
    wait_for("the node to be ready again", || health(&cut).0 == 200).await;
    for id in [before, during] {
        let rows = schema.query(&format!("SELECT 1 FROM records WHERE id = '{id}'"));
        assert_eq!(rows.len(), 1, "{id} is in PostgreSQL");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_outage_is_bridged_from_the_store_and_healed_when_it_returns() {
    let services = services();
    let schema = Schema::new(&services.postgres);
    let dir = tempfile::tempdir().expect("tempdir");
    let (bus, through) = proxied(&services.nats, 4222).await;
    let one = node_on(dir.path(), &services.postgres, Some(&through), &schema);
    let two = node_on(dir.path(), &services.postgres, Some(&through), &schema);
    let (a, _ha) = connected(dir.path(), "a", &one.url).await;
    let (a2, _ha2) = connected(dir.path(), "a2", &one.url).await;
    let (b, _hb) = connected(dir.path(), "b", &two.url).await;
    wait_for("both nodes on the bus", || {
        [&one, &two].iter().all(|n| health(n).1["bus"] == "up")
    })
    .await;

    bus.set(Fault::Down);
    wait_for(
        "the nodes to warn that the bus is down, still ready",
        || {
            [&one, &two].iter().all(|n| {
                let (status, body) = health(n);
                status == 200 && body["bus"] == "down" && body["warnings"][0].is_string()
            })
        },
    )
    .await;
    let id = a.create("notes", &json!({"n": 1})).expect("create");
    // Replicas on the same node still see each other live; the other
    // node learns of it from the store.
    wait_for("the record on the same node", || a2.get(&id).is_ok()).await;
    wait_for("the record on the other node, by catch-up", || {
        b.get(&id).is_ok()
    })
    .await;
    let (_, metrics) = http_get(&two, "/metrics");
    let caught_up: f64 = metrics
        .lines()
        .find(|l| l.starts_with("accord_relay_caught_up_total"))
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|v| v.parse().ok())
        .expect("caught_up metric");
    assert!(
        caught_up >= 1.0,
        "node two caught up from the store: {caught_up}"
    );

    bus.set(Fault::None);
    wait_for("both nodes back on the bus", || {
        [&one, &two].iter().all(|n| health(n).1["bus"] == "up")
    })
    .await;
    b.put(&id, "from", &json!("two"), None).expect("put");
    wait_for(
        "the change from node two on both replicas of node one",
        || {
            [&a, &a2].iter().all(|r| {
                r.get(&id)
                    .map(|rec| rec.value == json!({"n": 1, "from": "two"}))
                    .unwrap_or(false)
            })
        },
    )
    .await;
}

/// SIGKILL nodes under a write load: writers fail over to the other nodes,
/// and every change any node acknowledged is on every replica and in
/// PostgreSQL at the end. `ACCORD_CLUSTER_KILL_TRIALS` (default 3) sets
/// how many kills; `ACCORD_CLUSTER_KILL_SEED` replays a run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_nodes_under_load_loses_no_acknowledged_change() {
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    let trials: usize = std::env::var("ACCORD_CLUSTER_KILL_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let seed: u64 = std::env::var("ACCORD_CLUSTER_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("ACCORD_CLUSTER_KILL_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let services = services();
    let schema = Schema::new(&services.postgres);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nodes: Vec<RelayProcess> = (0..3)
        .map(|_| node(dir.path(), &services, &schema, true))
        .collect();
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<BTreeSet<DocId>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..3 {
        let replica = Replica::open(dir.path().join(format!("w{w}.db"))).expect("open");
        let mut order = urls.clone();
        order.rotate_left(w);
        let first = order.remove(0);
        let options = ConnectOptions {
            fallback_urls: order,
            backoff_max: Duration::from_millis(500),
            ..options()
        };
        let mut handle = replica.connect(&first, options);
        let (stop, acked) = (Arc::clone(&stop), Arc::clone(&acked));
        writers.push(tokio::spawn(async move {
            let mut pending = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..5 {
                    let id = replica
                        .create("notes", &json!({ "writer": w, "n": n }))
                        .expect("create");
                    pending.push(id);
                    n += 1;
                }
                // Acknowledged: the relay holds every change made before.
                if handle.wait_synced(T).await.is_ok() {
                    acked.lock().expect("acked").extend(pending.drain(..));
                }
            }
            handle
                .wait_synced(T)
                .await
                .expect("the last writes acknowledged");
            acked.lock().expect("acked").extend(pending.drain(..));
            (replica, handle)
        }));
    }
    let count = || acked.lock().expect("acked").len();
    for trial in 0..trials {
        let goal = count() + 15;
        wait_for("writes acknowledged before the kill", || count() >= goal).await;
        let victim = rng.random_range(0..nodes.len());
        let listen = nodes[victim].url.trim_start_matches("ws://").to_owned();
        nodes[victim].child.kill().expect("SIGKILL");
        nodes[victim].child.wait().expect("reaped");
        eprintln!("trial {trial}: killed node {victim} ({listen}) at {goal} acknowledged");
        let goal = count() + 15;
        wait_for("writes acknowledged with a node dead", || count() >= goal).await;
        let args = [
            "--store",
            services.postgres.as_str(),
            "--store-schema",
            schema.name.as_str(),
            "--catch-up-secs",
            "1",
            "--bus",
            services.nats.as_str(),
        ];
        nodes[victim] = spawn_relay_at(&dir.path().join("unused.db"), &listen, &args);
    }
    stop.store(true, Ordering::Relaxed);
    let mut replicas = Vec::new();
    for writer in writers {
        replicas.push(writer.await.expect("writer"));
    }
    let acked = acked.lock().expect("acked").clone();
    assert!(acked.len() >= 15 * 2 * trials, "load ran: {}", acked.len());
    for (i, (replica, _)) in replicas.iter().enumerate() {
        if !within(|| acked.iter().all(|id| replica.get(id).is_ok())).await {
            let missing: Vec<&DocId> = acked.iter().filter(|id| replica.get(id).is_err()).collect();
            let rows: Vec<String> = missing
                .iter()
                .map(|id| {
                    let states = schema.query(&format!(
                        "SELECT peer, length(state) FROM sync_states s JOIN docs d ON d.id = s.doc WHERE d.id_text = '{id}'"
                    ));
                    eprintln!("{id}: relay-side sync states {:?} (replica peer {})", states.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i32>(1))).collect::<Vec<_>>(), replica.peer_id());
                    let row = schema.query(&format!(
                        "SELECT seq, created_seq, changes FROM docs WHERE id_text = '{id}'"
                    ));
                    row.first().map_or("not in PostgreSQL".into(), |r| {
                        format!(
                            "seq {} created {} changes {}",
                            r.get::<_, i64>(0),
                            r.get::<_, i64>(1),
                            r.get::<_, i64>(2)
                        )
                    })
                })
                .collect();
            panic!(
                "replica {i} lacks {} of {} acknowledged records: {rows:?}; its status: {:?}",
                missing.len(),
                acked.len(),
                replicas[i].1.status()
            );
        }
    }
    let stored = schema.query("SELECT id FROM records");
    let stored: BTreeSet<String> = stored.iter().map(|r| r.get::<_, String>(0)).collect();
    let lost: Vec<&DocId> = acked
        .iter()
        .filter(|id| !stored.contains(&id.to_string()))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged but not in PostgreSQL: {lost:?}"
    );
}

/// Every node verifies the same tokens: a token works on any node, a
/// read-only one cannot write through any node, and one signed with
/// another secret is refused by all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_verifies_the_same_tokens() {
    use accord_relay::auth::{Right, Tokens};
    use std::collections::BTreeMap;

    let services = services();
    let schema = Schema::new(&services.postgres);
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = "a cluster-wide secret of enough bytes";
    let nodes = secured_nodes(dir.path(), &services, &schema, secret);
    let mint = |secret: &str, right: Right| {
        let tokens = Tokens::new(secret.as_bytes()).expect("secret");
        tokens.mint(
            BTreeMap::from([("notes".to_owned(), right)]),
            Duration::from_secs(3600),
        )
    };
    let with_token = |token: String| ConnectOptions { token, ..options() };
    let writer = mint(secret, Right::ReadWrite);
    let a = Replica::open(dir.path().join("a.db")).expect("open");
    let mut ha = a.connect(&nodes[0].url, with_token(writer.clone()));
    let b = Replica::open(dir.path().join("b.db")).expect("open");
    let mut hb = b.connect(&nodes[1].url, with_token(writer));
    let id = a.create("notes", &json!({"by": "a"})).expect("create");
    ha.wait_synced(T)
        .await
        .expect("A's token accepted by node 0");
    wait_for("the record through node 1 with the same token", || {
        b.get(&id).is_ok()
    })
    .await;
    hb.wait_synced(T)
        .await
        .expect("B's token accepted by node 1");

    // Read-only on node 1: it reads, and its change is never stored.
    let reader = Replica::open(dir.path().join("r.db")).expect("open");
    let mut hr = reader.connect(&nodes[1].url, with_token(mint(secret, Right::Read)));
    wait_for("the record at the read-only replica", || {
        reader.get(&id).is_ok()
    })
    .await;
    reader
        .put(&id, "by", &json!("reader"), None)
        .expect("local write");
    // The relay tells it the collection is read-only; nothing it sends
    // is stored.
    wait_for("the replica to learn it is read-only", || {
        !hr.status().read_only.is_empty()
    })
    .await;
    hr.wait_synced(T).await.expect("nothing of its own is owed");
    let stored = schema.query(&format!("SELECT json::text FROM records WHERE id = '{id}'"));
    let stored: serde_json::Value =
        serde_json::from_str(stored[0].get::<_, &str>(0)).expect("json");
    assert_eq!(
        stored,
        json!({"by": "a"}),
        "the store kept the writer's value"
    );

    // Signed with another secret: refused by every node.
    for node in &nodes {
        let port = node.url.rsplit(':').next().unwrap_or_default();
        let outsider = Replica::open(dir.path().join(format!("outsider-{port}.db"))).expect("open");
        let h = outsider.connect(
            &node.url,
            with_token(mint("another secret of enough bytes", Right::ReadWrite)),
        );
        wait_for("the forged token's refusal", || {
            matches!(
                h.status().last_error,
                Some(accord_engine::SyncError::Refused { code, .. })
                    if code == accord_engine::sync::ErrorCode::UNAUTHORIZED
            )
        })
        .await;
    }
}

/// Presence sent through one node reaches a replica on another, and is
/// never stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_crosses_nodes_and_is_never_stored() {
    let services = services();
    let schema = Schema::new(&services.postgres);
    let dir = tempfile::tempdir().expect("tempdir");
    let one = node(dir.path(), &services, &schema, true);
    let two = node(dir.path(), &services, &schema, true);
    let (a, mut ha) = connected(dir.path(), "a", &one.url).await;
    let (b, hb) = connected(dir.path(), "b", &two.url).await;
    let id = a
        .create("notes", &json!({"title": "shared"}))
        .expect("create");
    ha.wait_synced(T).await.expect("synced");
    wait_for("the record on B", || b.get(&id).is_ok()).await;
    let heads_before = schema.query(&format!("SELECT heads FROM docs WHERE id_text = '{id}'"));
    let mut arriving = hb.presence();
    // Sent until one arrives: B's node may still be joining the bus.
    let deadline = tokio::time::Instant::now() + T;
    let seen = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no presence arrived through the other node"
        );
        assert!(ha
            .broadcast(&id, b"cursor at 7".to_vec())
            .await
            .expect("sent"));
        match tokio::time::timeout(Duration::from_millis(200), arriving.recv()).await {
            Ok(Ok(presence)) => break presence,
            Ok(Err(e)) => panic!("presence channel: {e}"),
            Err(_) => continue,
        }
    };
    assert_eq!(seen.doc, id);
    assert_eq!(seen.data, b"cursor at 7");
    assert_eq!(
        seen.sender,
        a.peer_id().to_string(),
        "the relay names the sender"
    );
    let heads_after = schema.query(&format!("SELECT heads FROM docs WHERE id_text = '{id}'"));
    assert_eq!(
        heads_before[0].get::<_, Vec<u8>>(0),
        heads_after[0].get::<_, Vec<u8>>(0),
        "presence changed nothing stored"
    );
}

/// Webhooks on a cluster: the node holding a webhook's lease delivers it;
/// cursors and dead letters are in the store, shared by every node; when
/// that node stops, another takes the lease over and goes on from the
/// stored cursor, and a node whose lease session PostgreSQL ends takes it
/// again. Every record is delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_at_a_time_delivers_a_webhook_and_another_takes_over_when_it_stops() {
    let services = services();
    let schema = Schema::new(&services.postgres);
    let dir = tempfile::tempdir().expect("tempdir");
    let receiver = Receiver::start("127.0.0.1:0").await;
    let hooks = dir.path().join("hooks.toml");
    std::fs::write(
        &hooks,
        format!(
            "[[webhook]]\nname = \"search\"\nurl = \"{}\"\ncollections = [\"notes\"]\n\
             secret = \"a webhook secret long enough\"\nmax_attempts = 3\nretry_base = \"10ms\"\n\
             retry_max = \"100ms\"\nbatch = 50\n",
            receiver.url()
        ),
    )
    .expect("hooks file");
    let hooks = hooks.to_str().expect("path").to_owned();
    let start = || {
        node_with(
            dir.path(),
            &services.postgres,
            Some(&services.nats),
            &schema,
            &["--webhooks", hooks.as_str()],
        )
    };
    let delivered = |deliveries: &[Delivery], id: &DocId| {
        deliveries
            .iter()
            .filter(|d| d.status < 300)
            .flat_map(Delivery::events)
            .filter(|e| e["id"] == json!(id.to_string()))
            .count()
    };

    // Alone, the first node holds the lease and delivers.
    let first = start();
    let (a, mut ha) = connected(dir.path(), "a", &first.url).await;
    let early: Vec<DocId> = (0..3)
        .map(|i| a.create("notes", &json!({"n": i})).expect("create"))
        .collect();
    ha.wait_synced(T).await.expect("synced");
    receiver
        .wait_for(T, "the first three records", |d| {
            early.iter().all(|id| delivered(d, id) > 0)
        })
        .await;

    // A second node joins; a 4xx makes the next batch a dead letter,
    // which every node lists.
    let second = start();
    receiver.answer_next(&[400]);
    let lost = a.create("notes", &json!({"n": "lost"})).expect("create");
    ha.wait_synced(T).await.expect("synced");
    receiver
        .wait_for(T, "the refused batch", |d| {
            d.iter().any(|d| {
                d.status == 400
                    && d.events()
                        .iter()
                        .any(|e| e["id"] == json!(lost.to_string()))
            })
        })
        .await;
    let letters = || {
        let (status, body) = http_call(&second.url, "GET", "/v1/webhooks/search/dead-letters", "");
        assert_eq!(status, 200, "{body}");
        let body: serde_json::Value = serde_json::from_str(&body).expect("json");
        body["dead_letters"].as_array().cloned().unwrap_or_default()
    };
    wait_for("the dead letter, listed by the second node", || {
        letters().len() == 1
    })
    .await;
    let letter = letters()[0]["id"].clone();

    // The first node stops: the second takes the lease over and delivers
    // what comes next, from the stored cursor.
    drop(ha);
    drop(first);
    let (b, mut hb) = connected(dir.path(), "b", &second.url).await;
    let late = b.create("notes", &json!({"n": "late"})).expect("create");
    hb.wait_synced(T).await.expect("synced");
    receiver
        .wait_for(T, "the record written after the first node stopped", |d| {
            delivered(d, &late) > 0
        })
        .await;
    // The cursor is stored once the endpoint answered.
    let listed = || {
        let (status, body) = http_call(&second.url, "GET", "/v1/webhooks", "");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).expect("json")
    };
    wait_for("the second node's cursor at the end", || {
        listed()["webhooks"][0]["collections"][0]["behind"] == json!(0)
    })
    .await;
    assert_eq!(listed()["webhooks"][0]["dead_letters"], json!(1));

    // The dead letter is replayed through the node that did not write it.
    let (status, body) = http_call(
        &second.url,
        "POST",
        &format!("/v1/webhooks/search/dead-letters/{letter}/replay"),
        "",
    );
    assert_eq!(status, 200, "{body}");
    assert!(letters().is_empty(), "replayed, so gone");

    // PostgreSQL ends the lease's session (an outage, an operator): the
    // node notices, takes the lease again and goes on.
    let terminated = schema.query(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_locks
           WHERE locktype = 'advisory' AND objsubid = 2 AND granted
             AND classid::bigint = (hashtext('{}')::bigint + 4294967296) % 4294967296",
        schema.name
    ));
    assert_eq!(terminated.len(), 1, "one lease held, by the second node");
    let after = b.create("notes", &json!({"n": "after"})).expect("create");
    hb.wait_synced(T).await.expect("synced");
    receiver
        .wait_for(T, "a record written after the lease's session ended", |d| {
            delivered(d, &after) > 0
        })
        .await;

    let deliveries = receiver.deliveries();
    for id in early.iter().chain([&lost, &late, &after]) {
        assert_eq!(delivered(&deliveries, id), 1, "{id}: delivered once");
    }
    receiver.stop();
}
