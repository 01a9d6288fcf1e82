//! The relay's HTTP API over real HTTP on loopback, against a real relay
//! on a real SQLite file: every endpoint, paging, rights (no token,
//! read-only, another collection), bad input with its documented codes,
//! live streams fed by replicas' syncs, writes that reach connected
//! replicas, presence, and the OpenAPI description against the server.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use accord_engine::{ConnectOptions, DocId, Replica, SyncHandle};
use accord_relay::auth::{Right, Tokens};
use accord_relay::Config;
use accord_tests::http::{call, call_raw, Answer, Events};
use accord_tests::{wait_until, TestRelay};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(20);
const SECRET: &[u8] = b"the secret of the http api test, long";

fn token(rights: &[(&str, Right)]) -> String {
    let rights: BTreeMap<String, Right> =
        rights.iter().map(|(c, r)| ((*c).to_owned(), *r)).collect();
    Tokens::new(SECRET)
        .expect("secret")
        .mint(rights, Duration::from_secs(3600))
}

/// A relay that requires tokens, and a token for everything the tests use.
async fn relay(dir: &tempfile::TempDir) -> (TestRelay, String) {
    let config = Config {
        db: dir.path().join("relay.db"),
        access: Arc::new(Tokens::new(SECRET).expect("secret")),
        ..Config::default()
    };
    let relay = TestRelay::start_with(config).await.expect("relay");
    let admin = token(&[("contacts", Right::ReadWrite), ("notes", Right::ReadWrite)]);
    (relay, admin)
}

async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Answer {
    call(addr, "GET", path, token, None).await
}

fn ok(answer: Answer) -> Value {
    assert!(
        (200..300).contains(&answer.status),
        "expected success, got {} {}",
        answer.status,
        answer.body
    );
    answer.body
}

fn fails(answer: &Answer, status: u16, code: &str) {
    assert_eq!(
        (answer.status, answer.code()),
        (status, code),
        "answer: {}",
        answer.body
    );
    assert!(
        answer.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "an error names what was wrong: {}",
        answer.body
    );
}

async fn create(addr: SocketAddr, token: &str, collection: &str, content: Value) -> String {
    let path = format!("/v1/collections/{collection}/records");
    let token = Some(token).filter(|t| !t.is_empty());
    let answer = call(addr, "POST", &path, token, Some(&content)).await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    let id = answer.body["id"].as_str().expect("id").to_owned();
    assert_eq!(
        answer.headers.get("location").and_then(|l| l.to_str().ok()),
        Some(format!("/v1/records/{id}").as_str())
    );
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_history_diffs_and_writes_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (relay, admin) = relay(&dir).await;
    let addr = relay.addr;
    let tok = Some(admin.as_str());

    let info = ok(get(addr, "/v1/info", None).await);
    assert_eq!(info["server"], "accord-relay");
    assert_eq!(info["auth"], "token");
    assert_eq!(info["read_only"], false);

    let id = create(addr, &admin, "contacts", json!({"name": "Ada", "age": 36})).await;
    create(addr, &admin, "notes", json!({"text": "hi"})).await;

    let collections = ok(get(addr, "/v1/collections", tok).await);
    assert_eq!(
        collections["collections"],
        json!([
            {"name": "contacts", "records": 1, "deleted": 0, "writable": true},
            {"name": "notes", "records": 1, "deleted": 0, "writable": true},
        ])
    );

    let record = ok(get(addr, &format!("/v1/records/{id}"), tok).await);
    assert_eq!(record["value"], json!({"name": "Ada", "age": 36}));
    assert_eq!(record["collection"], "contacts");
    assert_eq!(record["deleted"], false);
    assert_eq!(record["changes"], 1);
    let first_heads = record["heads"].clone();
    assert_eq!(first_heads.as_array().map(Vec::len), Some(1));
    assert!(record["created"].as_str().is_some_and(|t| t.ends_with('Z')));

    let patch = json!({"path": "name", "value": "Ada Lovelace", "message": "full name"});
    let changed = ok(call(
        addr,
        "PATCH",
        &format!("/v1/records/{id}"),
        tok,
        Some(&patch),
    )
    .await);
    assert_eq!(changed["value"]["name"], "Ada Lovelace");
    assert_eq!(changed["changes"], 2);

    let history = ok(get(addr, &format!("/v1/records/{id}/history"), tok).await);
    assert_eq!(history["total"], 2);
    let changes = history["changes"].as_array().expect("changes");
    assert_eq!(changes[0]["message"], "full name", "newest first");
    assert_eq!(changes[1]["message"], Value::Null);
    assert_eq!(changes[0]["deps"], json!([changes[1]["hash"]]));
    assert_eq!(changes[0]["seq"], 2);
    assert!(changes[0]["ops"].as_u64().is_some_and(|n| n >= 1));
    let first = changes[1]["hash"].as_str().expect("hash").to_owned();
    let second = changes[0]["hash"].as_str().expect("hash").to_owned();

    // Paged history.
    let page = ok(get(addr, &format!("/v1/records/{id}/history?limit=1"), tok).await);
    assert_eq!(page["changes"][0]["hash"], second.as_str());
    let next = page["next"].as_str().expect("a next page");
    let page = ok(get(
        addr,
        &format!("/v1/records/{id}/history?limit=1&cursor={next}"),
        tok,
    )
    .await);
    assert_eq!(page["changes"][0]["hash"], first.as_str());
    assert_eq!(page["next"], Value::Null);

    // As of the first change, by a short prefix.
    let old = ok(get(addr, &format!("/v1/records/{id}?at={}", &first[..10]), tok).await);
    assert_eq!(old["value"]["name"], "Ada");
    assert_eq!(old["heads"], json!([first]));

    // The diff between the two changes, and from the empty record.
    let diff = ok(get(
        addr,
        &format!("/v1/records/{id}/diff?from={first}&to={second}"),
        tok,
    )
    .await);
    assert_eq!(diff["patches"].as_array().map(Vec::len), Some(1));
    assert_eq!(diff["patches"][0]["action"], "put");
    assert_eq!(diff["patches"][0]["path"], json!(["name"]));
    assert_eq!(diff["patches"][0]["value"], "Ada Lovelace");
    let whole = ok(get(addr, &format!("/v1/records/{id}/diff?from="), tok).await);
    assert_eq!(whole["from"], json!([]));
    assert_eq!(whole["to"], json!([second]));
    assert!(whole["patches"].as_array().is_some_and(|p| p.len() >= 2));

    // Delete: the record stays readable, marked, with its last content.
    let deleted = ok(call(addr, "DELETE", &format!("/v1/records/{id}"), tok, None).await);
    assert_eq!(deleted["deleted"], true);
    let record = ok(get(addr, &format!("/v1/records/{id}"), tok).await);
    assert_eq!(record["deleted"], true);
    assert_eq!(record["value"]["name"], "Ada Lovelace");
    let again = call(
        addr,
        "PATCH",
        &format!("/v1/records/{id}"),
        tok,
        Some(&patch),
    )
    .await;
    fails(&again, 409, "deleted");
    let listed = ok(get(addr, "/v1/collections/contacts/records", tok).await);
    assert_eq!(
        listed["total"], 0,
        "deleted records are left out by default"
    );
    let listed = ok(get(addr, "/v1/collections/contacts/records?deleted=true", tok).await);
    assert_eq!(listed["records"][0]["deleted"], true);
    let collections = ok(get(addr, "/v1/collections", tok).await);
    assert_eq!(collections["collections"][0]["deleted"], 1);

    relay.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_page_newest_first_and_filter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (relay, admin) = relay(&dir).await;
    let addr = relay.addr;
    let tok = Some(admin.as_str());
    let mut ids = Vec::new();
    for i in 0..7 {
        let city = if i % 2 == 0 { "Paris" } else { "London" };
        let content = json!({"name": format!("Person {i}"), "n": i, "address": {"city": city}});
        ids.push(create(addr, &admin, "contacts", content).await);
    }
    // Touch the first so it is the most recently updated.
    let touch = json!({"path": "touched", "value": true});
    ok(call(
        addr,
        "PATCH",
        &format!("/v1/records/{}", ids[0]),
        tok,
        Some(&touch),
    )
    .await);

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => "/v1/collections/contacts/records?limit=3".to_owned(),
            Some(c) => format!("/v1/collections/contacts/records?limit=3&cursor={c}"),
        };
        let page = ok(get(addr, &path, tok).await);
        assert_eq!(page["total"], 7);
        let records = page["records"].as_array().expect("records").clone();
        assert!(records.len() <= 3);
        seen.extend(
            records
                .iter()
                .map(|r| r["id"].as_str().expect("id").to_owned()),
        );
        match page["next"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7, "every record once: {seen:?}");
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), 7);
    assert_eq!(seen[0], ids[0], "the most recently updated comes first");

    let paris = ok(get(
        addr,
        "/v1/collections/contacts/records?path=address.city&equals=%22Paris%22",
        tok,
    )
    .await);
    assert_eq!(paris["total"], 4);
    let number = ok(get(
        addr,
        "/v1/collections/contacts/records?path=n&equals=5",
        tok,
    )
    .await);
    assert_eq!(number["total"], 1);
    assert_eq!(number["records"][0]["value"]["name"], "Person 5");
    let flag = ok(get(
        addr,
        "/v1/collections/contacts/records?path=touched&equals=true",
        tok,
    )
    .await);
    assert_eq!(flag["records"][0]["id"], ids[0].as_str());
    let text = ok(get(addr, "/v1/collections/contacts/records?q=person%203", tok).await);
    assert_eq!(text["total"], 1);
    assert_eq!(text["records"][0]["id"], ids[3].as_str());

    relay.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rights_are_those_of_sync_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (relay, admin) = relay(&dir).await;
    let addr = relay.addr;
    let contact = create(addr, &admin, "contacts", json!({"name": "Ada"})).await;
    let note = create(addr, &admin, "notes", json!({"text": "secret"})).await;
    let reader = token(&[("contacts", Right::Read)]);
    let reader = Some(reader.as_str());

    // No token, a malformed one, a forged one.
    fails(
        &get(addr, "/v1/collections", None).await,
        401,
        "unauthorized",
    );
    fails(
        &get(addr, "/v1/collections", Some("not-a-token")).await,
        401,
        "unauthorized",
    );
    let forged = Tokens::new(b"another secret, also long enough")
        .expect("secret")
        .mint(
            [("notes".to_owned(), Right::ReadWrite)].into(),
            Duration::from_secs(60),
        );
    fails(
        &get(addr, &format!("/v1/records/{note}"), Some(&forged)).await,
        401,
        "unauthorized",
    );

    // A read-only token for contacts: sees contacts only, cannot write.
    let collections = ok(get(addr, "/v1/collections", reader).await);
    assert_eq!(
        collections["collections"],
        json!([{"name": "contacts", "records": 1, "deleted": 0, "writable": false}])
    );
    ok(get(addr, &format!("/v1/records/{contact}"), reader).await);
    ok(get(addr, &format!("/v1/records/{contact}/history"), reader).await);
    fails(
        &get(addr, &format!("/v1/records/{note}"), reader).await,
        404,
        "not_found",
    );
    fails(
        &get(addr, &format!("/v1/records/{note}/history"), reader).await,
        404,
        "not_found",
    );
    fails(
        &get(addr, "/v1/collections/notes/records", reader).await,
        403,
        "forbidden",
    );
    fails(
        &get(addr, "/v1/events?collection=notes", reader).await,
        403,
        "forbidden",
    );
    let body = json!({"name": "Bob"});
    fails(
        &call(
            addr,
            "POST",
            "/v1/collections/contacts/records",
            reader,
            Some(&body),
        )
        .await,
        403,
        "forbidden",
    );
    let patch = json!({"path": "name", "value": "Eve"});
    fails(
        &call(
            addr,
            "PATCH",
            &format!("/v1/records/{contact}"),
            reader,
            Some(&patch),
        )
        .await,
        403,
        "forbidden",
    );
    fails(
        &call(
            addr,
            "DELETE",
            &format!("/v1/records/{contact}"),
            reader,
            None,
        )
        .await,
        403,
        "forbidden",
    );
    // SQL reads every collection: a scoped token may not run it.
    let sql = json!({"sql": "SELECT json FROM records"});
    fails(
        &call(addr, "POST", "/v1/query", reader, Some(&sql)).await,
        403,
        "forbidden",
    );
    // Nothing was written by the refused calls.
    let record = ok(get(addr, &format!("/v1/records/{contact}"), Some(&admin)).await);
    assert_eq!(record["value"], json!({"name": "Ada"}));
    assert_eq!(record["deleted"], false);

    relay.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_documented_code_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (relay, admin) = relay(&dir).await;
    let addr = relay.addr;
    let tok = Some(admin.as_str());
    let id = create(addr, &admin, "contacts", json!({"name": "Ada"})).await;
    let path = format!("/v1/records/{id}");

    fails(
        &get(addr, "/v1/records/not-an-id", tok).await,
        400,
        "invalid_id",
    );
    fails(
        &get(addr, &format!("/v1/records/{}", DocId::random()), tok).await,
        404,
        "not_found",
    );
    fails(
        &get(addr, &format!("{path}?at=zz-not-hex"), tok).await,
        400,
        "invalid_heads",
    );
    fails(
        &get(addr, &format!("{path}?at={}", "ab".repeat(32)), tok).await,
        400,
        "invalid_heads",
    );
    fails(
        &get(addr, &format!("{path}/diff?from=0123456789abcdef"), tok).await,
        400,
        "invalid_heads",
    );
    fails(
        &get(addr, &format!("{path}/diff"), tok).await,
        400,
        "invalid_parameter",
    );
    fails(
        &call_raw(addr, "PATCH", &path, tok, Some("{not json".into())).await,
        400,
        "invalid_json",
    );
    fails(
        &call(addr, "PATCH", &path, tok, Some(&json!({"value": 1}))).await,
        400,
        "invalid_json",
    );
    fails(
        &call(
            addr,
            "PATCH",
            &path,
            tok,
            Some(&json!({"path": "a..b", "value": 1})),
        )
        .await,
        400,
        "invalid_path",
    );
    fails(
        &call(
            addr,
            "POST",
            "/v1/collections/contacts/records",
            tok,
            Some(&json!([1, 2])),
        )
        .await,
        400,
        "invalid_value",
    );
    fails(
        &call(
            addr,
            "POST",
            "/v1/collections/bad%20name!/records",
            tok,
            Some(&json!({})),
        )
        .await,
        400,
        "invalid_collection",
    );
    fails(
        &get(addr, "/v1/collections/contacts/records?limit=0", tok).await,
        400,
        "invalid_parameter",
    );
    fails(
        &get(addr, "/v1/collections/contacts/records?cursor=garbage", tok).await,
        400,
        "invalid_parameter",
    );
    fails(
        &get(
            addr,
            "/v1/collections/contacts/records?path=a&equals=not%20json",
            tok,
        )
        .await,
        400,
        "invalid_parameter",
    );
    fails(
        &get(addr, "/v1/events", tok).await,
        400,
        "invalid_parameter",
    );
    fails(&get(addr, "/v1/nothing-here", tok).await, 404, "not_found");
    let huge = "x".repeat(accord_relay::http::MAX_BODY_BYTES + 10);
    let answer = call(
        addr,
        "POST",
        "/v1/collections/contacts/records",
        tok,
        Some(&json!({ "blob": huge })),
    )
    .await;
    fails(&answer, 413, "too_large");
    fails(
        &call(addr, "PUT", &path, tok, None).await,
        405,
        "method_not_allowed",
    );

    // The operator sees the refusals counted.
    let metrics = get(addr, "/metrics", None).await;
    let text = metrics.body.as_str().expect("metrics text");
    assert!(
        text.lines()
            .any(|l| l.starts_with("accord_relay_http_requests_total{kind=\"4xx\"}")),
        "{text}"
    );

    // SQL: writes, several statements and garbage are refused by name.
    let open = TestRelay::start(&dir.path().join("open.db"))
        .await
        .expect("open relay");
    let refused = [
        "DELETE FROM records",
        "DROP TABLE docs",
        "SELECT 1; SELECT 2",
        "SELEKT nothing",
    ];
    for sql in refused {
        let body = json!({ "sql": sql });
        fails(
            &call(open.addr, "POST", "/v1/query", None, Some(&body)).await,
            400,
            "invalid_query",
        );
    }
    let endless = json!({"sql": "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n"});
    fails(
        &call(open.addr, "POST", "/v1/query", None, Some(&endless)).await,
        400,
        "query_timeout",
    );
    let many = json!({"sql": "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT i FROM n", "limit": 5});
    let rows = ok(call(open.addr, "POST", "/v1/query", None, Some(&many)).await);
    assert_eq!(rows["rows"], json!([[1], [2], [3], [4], [5]]));
    assert_eq!(rows["truncated"], true);
    open.stop().await.expect("stop");

    // Nothing was changed by any of it.
    let record = ok(get(addr, &path, tok).await);
    assert_eq!(record["value"], json!({"name": "Ada"}));
    assert_eq!(record["changes"], 1);
    relay.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_runs_read_only_over_the_records_view_in_open_mode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = TestRelay::start(&dir.path().join("relay.db"))
        .await
        .expect("relay");
    let addr = relay.addr;
    assert_eq!(ok(get(addr, "/v1/info", None).await)["auth"], "open");
    create(addr, "", "contacts", json!({"name": "Ada"})).await;
    create(addr, "", "contacts", json!({"name": "Grace"})).await;
    let body = json!({
        "sql": "SELECT json ->> '$.name' AS name FROM live_records WHERE collection = ?1 ORDER BY name",
        "params": ["contacts"],
    });
    let rows = ok(call(addr, "POST", "/v1/query", None, Some(&body)).await);
    assert_eq!(rows["columns"], json!(["name"]));
    assert_eq!(rows["rows"], json!([["Ada"], ["Grace"]]));
    assert_eq!(rows["truncated"], false);

    // An answer stops at its byte budget, whatever the row limit.
    let big = json!({
        "sql": "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 40) \
                SELECT hex(zeroblob(500000)) FROM n",
    });
    let rows = ok(call(addr, "POST", "/v1/query", None, Some(&big)).await);
    let kept = rows["rows"].as_array().map_or(0, Vec::len);
    assert_eq!(rows["truncated"], true);
    assert!((1..40).contains(&kept), "{kept} rows of 1 MB kept");
    relay.stop().await.expect("stop");
}

/// The next event called `name`, skipping others (a change may be
/// reported more than once: each commit of it at the relay is one).
async fn next_named(events: &mut Events, name: &str) -> accord_tests::http::Event {
    loop {
        let event = events
            .next(T)
            .await
            .unwrap_or_else(|| panic!("no {name} event"));
        if event.name == name {
            return event;
        }
    }
}

fn connect(replica: &Replica, url: &str, token: &str) -> SyncHandle {
    replica.connect(
        url,
        ConnectOptions {
            collections: vec!["contacts".into()],
            token: token.to_owned(),
            ..ConnectOptions::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_streams_follow_replicas_and_api_writes_reach_replicas() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (relay, admin) = relay(&dir).await;
    let addr = relay.addr;
    let tok = Some(admin.as_str());
    let replica = Replica::open(dir.path().join("phone.db")).expect("replica");
    let mut phone = connect(&replica, &relay.url, &admin);
    phone.wait_connected(T).await.expect("connected");

    // A change synced by a replica appears on a collection stream.
    let mut table = Events::open(addr, "/v1/events?collection=contacts", tok).await;
    assert_eq!(table.status, 200);
    let id = replica
        .create("contacts", &json!({"name": "Ada"}))
        .expect("create");
    phone.wait_synced(T).await.expect("synced");
    let event = table.next(T).await.expect("a change event");
    assert_eq!(event.name, "change");
    assert_eq!(event.data["id"], id.to_string());
    assert_eq!(event.data["kind"], "created");
    assert_eq!(event.data["origin"], "remote");

    // A record stream: presence first, then the replica's next change.
    let mut record = Events::open(addr, &format!("/v1/events?record={id}"), tok).await;
    let first = record.next(T).await.expect("presence");
    assert_eq!(first.name, "presence");
    assert_eq!(first.data["peers"], json!([]));
    replica
        .put(&id, "name", &json!("Ada Lovelace"), Some("rename"))
        .expect("put");
    phone.wait_synced(T).await.expect("synced");
    let event = record.next(T).await.expect("a change event");
    assert_eq!(event.name, "change");
    assert_eq!(event.data["kind"], "changed");
    let history = ok(get(addr, &format!("/v1/records/{id}/history"), tok).await);
    assert_eq!(history["changes"][0]["message"], "rename");

    // Presence: the replica says it has the record open.
    assert!(phone
        .broadcast(&id, b"viewing".to_vec())
        .await
        .expect("broadcast"));
    let event = next_named(&mut record, "presence").await;
    let me = replica.peer_id().to_string();
    assert_eq!(event.data["peers"][0]["peer"], me.as_str());
    let present = ok(get(addr, &format!("/v1/records/{id}/presence"), tok).await);
    assert_eq!(present["peers"][0]["peer"], me.as_str());

    // An API write reaches the connected replica live, and a new record
    // created through the API too.
    let patch = json!({"path": "email", "value": "ada@example.com"});
    ok(call(
        addr,
        "PATCH",
        &format!("/v1/records/{id}"),
        tok,
        Some(&patch),
    )
    .await);
    wait_until(T, "the API's change on the replica", || {
        let replica = replica.clone();
        async move {
            replica
                .get(&id)
                .is_ok_and(|r| r.value["email"] == "ada@example.com")
        }
    })
    .await;
    let created = create(addr, &admin, "contacts", json!({"name": "Grace"})).await;
    let created: DocId = created.parse().expect("id");
    wait_until(T, "the API's new record on the replica", || {
        let replica = replica.clone();
        async move { replica.get(&created).is_ok() }
    })
    .await;
    ok(call(addr, "DELETE", &format!("/v1/records/{created}"), tok, None).await);
    wait_until(T, "the API's deletion on the replica", || {
        let replica = replica.clone();
        async move { matches!(replica.get(&created), Err(accord_engine::Error::Deleted(_))) }
    })
    .await;

    // Closing the replica's connection ends its presence.
    phone.close().await;
    let event = next_named(&mut record, "presence").await;
    assert_eq!(event.data["peers"], json!([]));

    // Shutting the relay down ends open streams.
    relay.shutdown.cancel();
    assert!(table.ends_within(T).await, "the stream ends on shutdown");
    relay.task.await.expect("join").expect("stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_when_its_token_expires() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (relay, _) = relay(&dir).await;
    let short = Tokens::new(SECRET).expect("secret").mint(
        [("contacts".to_owned(), Right::Read)].into(),
        Duration::from_secs(2),
    );
    let mut events = Events::open(relay.addr, "/v1/events?collection=contacts", Some(&short)).await;
    assert_eq!(events.status, 200);
    assert!(
        events.ends_within(Duration::from_secs(10)).await,
        "the stream ends at the token's expiry"
    );
    relay.stop().await.expect("stop");
}

/// Every path and method the OpenAPI description lists is served; the
/// methods it does not list on those paths are not, nor are other paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_description_matches_the_server() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/http-api.openapi.json"
    ))
    .expect("docs/http-api.openapi.json");
    let spec: Value = serde_json::from_str(&text).expect("the description is JSON");
    assert!(spec["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.")));
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = TestRelay::start(&dir.path().join("relay.db"))
        .await
        .expect("relay");
    let addr = relay.addr;
    let id = create(addr, "", "contacts", json!({"name": "Ada"})).await;
    let paths = spec["paths"].as_object().expect("paths");
    assert!(paths.len() >= 10, "every endpoint is described");
    for (template, item) in paths {
        let path = template
            .replace("{collection}", "contacts")
            .replace("{id}", &id);
        let listed: BTreeSet<String> = item
            .as_object()
            .expect("path item")
            .keys()
            .filter(|k| ["get", "post", "patch", "delete", "put"].contains(&k.as_str()))
            .cloned()
            .collect();
        assert!(!listed.is_empty(), "{template} lists no method");
        for method in ["get", "post", "patch", "delete", "put"] {
            let answer = if method == "get" && path == "/v1/events" {
                let events = Events::open(addr, "/v1/events?collection=contacts", None).await;
                Answer {
                    status: events.status,
                    headers: Default::default(),
                    body: Value::Null,
                }
            } else {
                call(addr, &method.to_uppercase(), &path, None, Some(&json!({}))).await
            };
            let no_route = answer.status == 404
                && answer.body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("no such endpoint"));
            let served = answer.code() != "method_not_allowed" && !no_route;
            assert_eq!(
                served,
                listed.contains(method),
                "{} {template}: answered {} {}",
                method.to_uppercase(),
                answer.status,
                answer.body
            );
        }
        for status in item.as_object().expect("item").values() {
            let responses = status["responses"].as_object();
            if let Some(responses) = responses {
                assert!(!responses.is_empty(), "{template} documents its responses");
            }
        }
    }
    for unlisted in ["/v1/record", "/v1/collections/contacts", "/v1/records"] {
        let answer = get(addr, unlisted, None).await;
        assert!(
            answer.status == 404 || answer.status == 405,
            "{unlisted} is not described, so not served: {}",
            answer.status
        );
    }
    relay.stop().await.expect("stop");
}
