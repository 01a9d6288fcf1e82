//! The relay's `/automerge-repo` door against a real relay on loopback,
//! spoken by a raw client that does what automerge-repo's does (one CBOR
//! message per binary WebSocket message, Automerge's sync protocol inside)
//! and by samod 0.16, whose `Repo` speaks the protocol for real: documents
//! flow between those clients and Accord replicas both ways, tokens and
//! read-only rights hold, and hostile input closes only its own connection
//! and changes no stored document.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use accord_engine::automerge::sync::{State, SyncDoc};
use accord_engine::automerge::transaction::Transactable;
use accord_engine::automerge::{AutoCommit, Automerge, ReadDoc, ScalarValue, Value, ROOT};
use accord_engine::sync::repo_wire::{PeerMetadata, RepoMessage};
use accord_engine::{ConnectOptions, DocId, Heads, Replica};
use accord_relay::auth::{unix_now, Claims, Right, Tokens};
use accord_relay::Config;
use accord_tests::samod_client::NoDelayDialer;
use accord_tests::{wait_until, TestRelay};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const T: Duration = Duration::from_secs(20);
const SECRET: &[u8] = b"the secret of the automerge-repo tests";

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn token(rights: &[(&str, Right)], ttl_secs: u64) -> String {
    let c: BTreeMap<String, Right> = rights.iter().map(|(c, r)| ((*c).to_owned(), *r)).collect();
    Tokens::new(SECRET).expect("secret").sign(&Claims {
        exp: unix_now() + ttl_secs,
        c,
    })
}

async fn secured(dir: &std::path::Path) -> TestRelay {
    let config = Config {
        db: dir.join("relay.db"),
        access: Arc::new(Tokens::new(SECRET).expect("secret")),
        ..Config::default()
    };
    TestRelay::start_with(config).await.expect("relay")
}

/// A raw automerge-repo client.
struct RepoClient {
    ws: Ws,
    me: String,
    relay: String,
}

async fn open_socket(relay: &TestRelay, query: &str) -> Ws {
    let url = format!("{}/automerge-repo{query}", relay.url);
    tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade")
        .0
}

async fn send(ws: &mut Ws, message: &RepoMessage) {
    ws.send(Message::binary(message.encode()))
        .await
        .expect("send");
}

/// The next message, or `None` once the relay closed the connection.
async fn next(ws: &mut Ws) -> Option<RepoMessage> {
    loop {
        let got = tokio::time::timeout(T, ws.next())
            .await
            .expect("no message in time");
        match got {
            Some(Ok(Message::Binary(b))) => {
                return Some(RepoMessage::decode(&b).expect("the relay sends valid messages"))
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

/// Reads until the relay closes; returns the `error` text it sent first.
async fn refusal(ws: &mut Ws) -> String {
    let mut said = None;
    while let Some(message) = next(ws).await {
        if let RepoMessage::Error { message } = message {
            said.get_or_insert(message);
        }
    }
    said.expect("an error message before the close")
}

fn join_message(me: &str, metadata: Option<PeerMetadata>) -> RepoMessage {
    RepoMessage::Join {
        sender: me.into(),
        versions: vec!["1".into()],
        metadata,
    }
}

impl RepoClient {
    async fn join(relay: &TestRelay, me: &str, token: Option<&str>) -> RepoClient {
        let query = token.map(|t| format!("?token={t}")).unwrap_or_default();
        let mut ws = open_socket(relay, &query).await;
        let storage = PeerMetadata {
            storage_id: Some(format!("storage-of-{me}")),
            is_ephemeral: false,
            token: None,
        };
        send(&mut ws, &join_message(me, Some(storage))).await;
        match next(&mut ws).await {
            Some(RepoMessage::Peer {
                sender,
                target,
                version,
                metadata,
            }) => {
                assert_eq!((target.as_str(), version.as_str()), (me, "1"));
                let storage = metadata.and_then(|m| m.storage_id);
                assert_eq!(
                    storage.as_deref(),
                    Some(sender.as_str()),
                    "a stable storage id"
                );
                RepoClient {
                    ws,
                    me: me.into(),
                    relay: sender,
                }
            }
            other => panic!("expected peer, got {other:?}"),
        }
    }

    async fn send_sync(&mut self, doc: DocId, data: Vec<u8>, request: bool) {
        let (sender, target) = (self.me.clone(), self.relay.clone());
        let message = RepoMessage::about_doc(request, sender, target, doc, data);
        send(&mut self.ws, &message).await;
    }

    /// Syncs `doc` with the relay until the relay holds exactly our heads
    /// (its answers say so), as automerge-repo does after a change.
    async fn sync(&mut self, id: DocId, doc: &mut AutoCommit, state: &mut State, request: bool) {
        let mut first = request;
        loop {
            if let Some(m) = doc.sync().generate_sync_message(state) {
                self.send_sync(id, m.encode(), first).await;
                first = false;
            }
            let heads = doc.get_heads();
            if state.their_heads.as_ref() == Some(&heads) && !state.in_flight {
                return;
            }
            match next(&mut self.ws).await {
                Some(RepoMessage::Sync { doc: d, data, .. }) if d == id => {
                    let m = accord_engine::automerge::sync::Message::decode(&data).expect("sync");
                    doc.sync().receive_sync_message(state, m).expect("receive");
                }
                // Late answers about documents synced earlier.
                Some(RepoMessage::Sync { .. }) => {}
                other => panic!("expected sync for {id}, got {other:?}"),
            }
        }
    }

    /// Waits for the relay to send changes to `doc` on its own.
    async fn hear(&mut self, id: DocId, doc: &mut AutoCommit, state: &mut State) {
        let before = doc.get_heads();
        while doc.get_heads() == before {
            match next(&mut self.ws).await {
                Some(RepoMessage::Sync { doc: d, data, .. }) if d == id => {
                    let m = accord_engine::automerge::sync::Message::decode(&data).expect("sync");
                    doc.sync().receive_sync_message(state, m).expect("receive");
                    if let Some(reply) = doc.sync().generate_sync_message(state) {
                        self.send_sync(id, reply.encode(), false).await;
                    }
                }
                other => panic!("expected sync for {id}, got {other:?}"),
            }
        }
    }
}

fn text(doc: &AutoCommit, key: &str) -> Option<String> {
    match doc.get(ROOT, key).expect("get") {
        Some((Value::Scalar(s), _)) => match s.as_ref() {
            ScalarValue::Str(t) => Some(t.to_string()),
            _ => None,
        },
        _ => None,
    }
}

fn options(collections: &[&str], token: &str) -> ConnectOptions {
    ConnectOptions {
        collections: collections.iter().map(|c| (*c).to_owned()).collect(),
        token: token.into(),
        ..ConnectOptions::default()
    }
}

#[tokio::test]
async fn a_repo_client_and_an_accord_replica_share_a_document_both_ways() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = TestRelay::start(&dir.path().join("relay.db"))
        .await
        .expect("relay");
    let mut client = RepoClient::join(&relay, "browser-1", None).await;

    // The client creates a document: it lands in the default collection.
    let id = DocId::random();
    let mut doc = AutoCommit::new();
    doc.put(ROOT, "title", "from the browser").expect("put");
    let mut state = State::new();
    client.sync(id, &mut doc, &mut state, false).await;
    let stored = relay.relay.replica().get(&id).expect("stored at the relay");
    assert_eq!(stored.collection.as_str(), "documents");
    assert_eq!(stored.value["title"], "from the browser");

    // An Accord replica subscribed to that collection gets it and edits it.
    let replica = Replica::open(dir.path().join("a.db")).expect("replica");
    let mut handle = replica.connect(&relay.url, options(&["documents"], ""));
    wait_until(T, "the replica has the document", || async {
        replica.get(&id).is_ok()
    })
    .await;
    assert_eq!(
        replica.get(&id).expect("got it").value["title"],
        "from the browser"
    );
    replica
        .put(&id, "title", &json!("edited in Accord"), None)
        .expect("edit");

    // The client hears it live, without asking.
    client.hear(id, &mut doc, &mut state).await;
    assert_eq!(text(&doc, "title").as_deref(), Some("edited in Accord"));
    handle.wait_synced(T).await.expect("synced");
    assert_eq!(
        relay.relay.replica().heads(&id).expect("heads"),
        Heads::from(doc.get_heads()),
        "the relay, the replica and the client agree"
    );

    // A record Accord created is found by id by the repo client.
    let made = replica
        .create("documents", &json!({"title": "made in Accord"}))
        .expect("create");
    handle.wait_synced(T).await.expect("synced");
    let mut found = AutoCommit::new();
    let mut found_state = State::new();
    client.sync(made, &mut found, &mut found_state, true).await;
    assert_eq!(text(&found, "title").as_deref(), Some("made in Accord"));

    // An Accord deletion makes the relay answer doc-unavailable.
    replica.delete(&made).expect("delete");
    handle.wait_synced(T).await.expect("synced");
    let probe = AutoCommit::new()
        .sync()
        .generate_sync_message(&mut State::new());
    let data = probe.expect("a first message").encode();
    let mut fresh = RepoClient::join(&relay, "browser-2", None).await;
    fresh.send_sync(made, data, true).await;
    assert!(matches!(
        next(&mut fresh.ws).await,
        Some(RepoMessage::DocUnavailable { doc, .. }) if doc == made
    ));
    relay.stop().await.expect("stop");
}

#[tokio::test]
async fn a_request_for_an_unknown_document_is_answered_with_doc_unavailable() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = TestRelay::start(&dir.path().join("relay.db"))
        .await
        .expect("relay");
    let mut client = RepoClient::join(&relay, "browser", None).await;
    let id = DocId::random();
    let first = AutoCommit::new()
        .sync()
        .generate_sync_message(&mut State::new());
    client
        .send_sync(id, first.expect("message").encode(), true)
        .await;
    match next(&mut client.ws).await {
        Some(RepoMessage::DocUnavailable {
            doc,
            sender,
            target,
        }) => {
            assert_eq!((doc, target.as_str()), (id, "browser"));
            assert_eq!(sender, client.relay);
        }
        other => panic!("expected doc-unavailable, got {other:?}"),
    }
    assert!(
        relay.relay.replica().meta(&id).is_err(),
        "nothing was created"
    );
    relay.stop().await.expect("stop");
}

#[tokio::test]
async fn tokens_decide_who_joins_where_documents_go_and_what_read_only_peers_change() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = secured(dir.path()).await;
    // No token, a forged one, an expired one: an error naming why, then a close.
    let expired = {
        let c = [("notes".to_owned(), Right::ReadWrite)].into();
        Tokens::new(SECRET).expect("secret").sign(&Claims {
            exp: unix_now() - 10,
            c,
        })
    };
    for (query, why) in [
        (String::new(), "unauthorized"),
        ("?token=forged.token".to_owned(), "unauthorized"),
        (format!("?token={expired}"), "unauthorized"),
    ] {
        let mut ws = open_socket(&relay, &query).await;
        send(&mut ws, &join_message("intruder", None)).await;
        let said = refusal(&mut ws).await;
        assert!(said.starts_with(why), "{query}: {said}");
    }

    // A writer of `notes` only creates its documents in `notes`.
    let writer = token(&[("notes", Right::ReadWrite)], 3600);
    let mut client = RepoClient::join(&relay, "writer", Some(&writer)).await;
    let id = DocId::random();
    let mut doc = AutoCommit::new();
    doc.put(ROOT, "title", "a note").expect("put");
    let mut state = State::new();
    client.sync(id, &mut doc, &mut state, false).await;
    assert_eq!(
        relay
            .relay
            .replica()
            .get(&id)
            .expect("stored")
            .collection
            .as_str(),
        "notes"
    );

    // A token for another collection does not see it.
    let other = token(&[("tasks", Right::ReadWrite)], 3600);
    let mut outsider = RepoClient::join(&relay, "outsider", Some(&other)).await;
    let first = AutoCommit::new()
        .sync()
        .generate_sync_message(&mut State::new());
    outsider
        .send_sync(id, first.expect("message").encode(), true)
        .await;
    assert!(matches!(
        next(&mut outsider.ws).await,
        Some(RepoMessage::DocUnavailable { doc, .. }) if doc == id
    ));

    // A reader reads it, and its own changes are never stored.
    let reader = token(&[("notes", Right::Read)], 3600);
    let mut reading = RepoClient::join(&relay, "reader", Some(&reader)).await;
    let mut copy = AutoCommit::new();
    let mut copy_state = State::new();
    reading.sync(id, &mut copy, &mut copy_state, true).await;
    assert_eq!(text(&copy, "title").as_deref(), Some("a note"));
    let before = relay.relay.replica().heads(&id).expect("heads");
    copy.put(ROOT, "title", "vandalised").expect("put");
    let m = copy
        .sync()
        .generate_sync_message(&mut copy_state)
        .expect("offer");
    reading.send_sync(id, m.encode(), false).await;
    // The relay answers (the connection stays open) without taking it.
    match next(&mut reading.ws).await {
        Some(RepoMessage::Sync { .. }) => {}
        other => panic!("expected the relay's answer, got {other:?}"),
    }
    assert_eq!(relay.relay.replica().heads(&id).expect("heads"), before);
    assert_eq!(
        relay.relay.replica().get(&id).expect("get").value["title"],
        "a note"
    );

    // The writer's next change still reaches the reader.
    doc.put(ROOT, "title", "a better note").expect("put");
    client.sync(id, &mut doc, &mut state, false).await;
    reading.hear(id, &mut copy, &mut copy_state).await;
    assert!(copy.get_heads().iter().any(|h| doc.get_heads().contains(h)));
    relay.stop().await.expect("stop");
}

#[tokio::test]
async fn a_token_in_peer_metadata_counts_and_an_expiring_one_closes_the_connection() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = secured(dir.path()).await;
    let mut ws = open_socket(&relay, "").await;
    let meta = PeerMetadata {
        token: Some(token(&[("notes", Right::ReadWrite)], 2)),
        ..PeerMetadata::default()
    };
    send(&mut ws, &join_message("metadata-token", Some(meta))).await;
    assert!(matches!(
        next(&mut ws).await,
        Some(RepoMessage::Peer { .. })
    ));
    // Silent from here on: the relay closes at the token's end by itself.
    let said = refusal(&mut ws).await;
    assert!(said.starts_with("token_expired"), "{said}");
    relay.stop().await.expect("stop");
}

#[tokio::test]
async fn joining_again_as_the_same_peer_replaces_the_old_connection() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = TestRelay::start(&dir.path().join("relay.db"))
        .await
        .expect("relay");
    let mut old = RepoClient::join(&relay, "tab", None).await;
    let _new = RepoClient::join(&relay, "tab", None).await;
    let said = refusal(&mut old.ws).await;
    assert!(said.starts_with("replaced"), "{said}");
    relay.stop().await.expect("stop");
}

/// Every stored document's heads.
fn all_heads(replica: &Replica) -> Vec<(DocId, Heads)> {
    let mut out = Vec::new();
    for (c, _) in replica.collections().expect("collections") {
        for meta in replica.list(&c).expect("list") {
            out.push((meta.id, replica.heads(&meta.id).expect("heads")));
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn hostile_messages_close_only_their_own_connection_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = TestRelay::start(&dir.path().join("relay.db"))
        .await
        .expect("relay");
    let mut honest = RepoClient::join(&relay, "honest", None).await;
    let id = DocId::random();
    let mut doc = AutoCommit::new();
    doc.put(ROOT, "title", "kept").expect("put");
    let mut state = State::new();
    honest.sync(id, &mut doc, &mut state, false).await;
    let before = all_heads(relay.relay.replica());

    // Each hostile input on its own connection, with what the error names.
    let truncated = {
        let mut b = join_message("x", None).encode();
        b.truncate(b.len() / 2);
        b
    };
    let huge_map = vec![0xbb, 0, 0, 1, 0, 0, 0, 0, 0]; // a map declaring 2^40 entries
    let huge_bytes = {
        // {"type": "sync", "data": bytes of declared length 2^62}
        let mut b = vec![0xa2, 0x64];
        b.extend_from_slice(b"type");
        b.extend_from_slice(&[0x64]);
        b.extend_from_slice(b"sync");
        b.extend_from_slice(&[0x64]);
        b.extend_from_slice(b"data");
        b.extend_from_slice(&[0x5b, 0x40, 0, 0, 0, 0, 0, 0, 0]);
        b
    };
    let wrong_type = {
        // {"type": 7}
        vec![0xa1, 0x64, b't', b'y', b'p', b'e', 0x07]
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("garbage", b"\xff\xfe not cbor".to_vec(), "malformed_frame"),
        ("truncated", truncated, "malformed_frame"),
        ("huge declared map", huge_map, "malformed_frame"),
        ("huge declared bytes", huge_bytes, "malformed_frame"),
        ("wrong type", wrong_type, "malformed_frame"),
    ];
    for (what, bytes, code) in cases {
        let mut ws = open_socket(&relay, "").await;
        send(&mut ws, &join_message(what, None)).await;
        assert!(
            matches!(next(&mut ws).await, Some(RepoMessage::Peer { .. })),
            "{what}"
        );
        ws.send(Message::binary(bytes)).await.expect("send");
        let said = refusal(&mut ws).await;
        assert!(said.starts_with(code), "{what}: {said}");
    }
    // Before join.
    let mut ws = open_socket(&relay, "").await;
    let early = RepoMessage::Sync {
        sender: "early".into(),
        target: "relay".into(),
        doc: id,
        data: vec![0x42],
    };
    send(&mut ws, &early).await;
    assert!(refusal(&mut ws).await.starts_with("handshake_required"));
    // Someone else's senderId.
    let mut impostor = RepoClient::join(&relay, "impostor", None).await;
    let forged = RepoMessage::Sync {
        sender: "honest".into(),
        target: impostor.relay.clone(),
        doc: id,
        data: AutoCommit::new()
            .sync()
            .generate_sync_message(&mut State::new())
            .expect("message")
            .encode(),
    };
    send(&mut impostor.ws, &forged).await;
    let said = refusal(&mut impostor.ws).await;
    assert!(said.contains("'honest'"), "{said}");
    // Sync data that is not an Automerge message: refused, connection kept.
    let mut sloppy = RepoClient::join(&relay, "sloppy", None).await;
    sloppy
        .send_sync(id, b"definitely not automerge".to_vec(), false)
        .await;
    match next(&mut sloppy.ws).await {
        Some(RepoMessage::Error { message }) => assert!(message.starts_with("bad_document")),
        other => panic!("expected an error, got {other:?}"),
    }
    // A decompression bomb in a sync message: refused before it is inflated.
    let bomb = accord_engine::fuzzing::bomb_sync_message(1 << 30);
    sloppy.send_sync(id, bomb, false).await;
    match next(&mut sloppy.ws).await {
        Some(RepoMessage::Error { message }) => {
            assert!(
                message.starts_with("too_large") || message.starts_with("bad_document"),
                "{message}"
            )
        }
        other => panic!("expected an error, got {other:?}"),
    }

    assert_eq!(
        all_heads(relay.relay.replica()),
        before,
        "no stored document changed"
    );
    // The honest connection was never disturbed.
    doc.put(ROOT, "title", "still here").expect("put");
    honest.sync(id, &mut doc, &mut state, false).await;
    assert_eq!(
        relay.relay.replica().get(&id).expect("get").value["title"],
        "still here"
    );
    relay.stop().await.expect("stop");
}

/// samod 0.16's `Repo`, unmodified, syncing with an Accord replica through
/// the relay: samod creates, Accord edits, samod hears the edit; Accord
/// creates, samod finds it by id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_samod_repo_and_an_accord_replica_sync_through_the_relay() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = TestRelay::start(&dir.path().join("relay.db"))
        .await
        .expect("relay");
    let repo = samod::Repo::build_tokio().load().await;
    let url = format!("{}/automerge-repo", relay.url);
    let dialer = Arc::new(NoDelayDialer::new(&url).expect("url"));
    let dialed = repo
        .dial(samod::BackoffConfig::default(), dialer)
        .expect("dial");
    tokio::time::timeout(T, dialed.established())
        .await
        .expect("in time")
        .expect("established");
    let conn = dialed.connection_id().expect("connected");

    let mut initial = Automerge::new();
    let mut tx = initial.transaction();
    tx.put(ROOT, "title", "from samod").expect("put");
    tx.commit();
    let handle = repo.create(initial).await.expect("create");
    tokio::time::timeout(T, handle.they_have_our_changes(conn))
        .await
        .expect("the relay acknowledged samod's document");
    let id: DocId = handle.document_id().to_string().parse().expect("same ids");
    assert_eq!(
        relay.relay.replica().get(&id).expect("stored").value["title"],
        "from samod"
    );

    let replica = Replica::open(dir.path().join("a.db")).expect("replica");
    let mut sync = replica.connect(&relay.url, options(&["documents"], ""));
    wait_until(T, "the replica has samod's document", || async {
        replica.get(&id).is_ok()
    })
    .await;
    let mut changes = handle.changes();
    replica
        .put(&id, "title", &json!("edited in Accord"), None)
        .expect("edit");
    sync.wait_synced(T).await.expect("synced");
    let heard = |d: &mut Automerge| match d.get(ROOT, "title").expect("get") {
        Some((Value::Scalar(s), _)) => s.as_str() == Some("edited in Accord"),
        _ => false,
    };
    while !handle.with_document(heard) {
        tokio::time::timeout(T, changes.next())
            .await
            .expect("samod heard the edit live")
            .expect("a change");
    }

    let made = replica
        .create("documents", &json!({"title": "made in Accord"}))
        .expect("create");
    sync.wait_synced(T).await.expect("synced");
    let samod_id: samod::DocumentId = made.to_string().parse().expect("same ids");
    let found = tokio::time::timeout(T, repo.find(samod_id))
        .await
        .expect("in time")
        .expect("running")
        .expect("samod found the Accord record");
    let title = found.with_document(|d| match d.get(ROOT, "title").expect("get") {
        Some((Value::Scalar(s), _)) => s.as_str().map(str::to_owned),
        _ => None,
    });
    assert_eq!(title.as_deref(), Some("made in Accord"));
    repo.stop().await;
    relay.stop().await.expect("stop");
}

/// Presence on both protocols: an automerge-repo client's `ephemeral`
/// message reaches another client that has the document open and an
/// Accord replica's presence subscription; an Accord replica's broadcast
/// reaches the automerge-repo client; nothing is stored, and a payload over
/// the limit goes nowhere.
#[tokio::test]
async fn presence_passes_between_both_protocols_and_is_never_stored() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = TestRelay::start(&dir.path().join("relay.db"))
        .await
        .expect("relay");
    let replica = Replica::open(dir.path().join("a.db")).expect("replica");
    let id = replica
        .create("documents", &json!({"name": "Ada"}))
        .expect("create");
    let mut sync = replica.connect(&relay.url, options(&["documents"], ""));
    let mut seen_by_accord = sync.presence();
    sync.wait_synced(T).await.expect("synced");
    let heads = relay.relay.replica().heads(&id).expect("heads");

    // Two repo clients open the document.
    let mut a = RepoClient::join(&relay, "tab-a", None).await;
    let mut b = RepoClient::join(&relay, "tab-b", None).await;
    for client in [&mut a, &mut b] {
        let (mut doc, mut state) = (AutoCommit::new(), State::new());
        client.sync(id, &mut doc, &mut state, true).await;
    }
    let ephemeral = |client: &RepoClient, count: u64, data: &[u8]| RepoMessage::Ephemeral {
        sender: client.me.clone(),
        target: client.relay.clone(),
        count,
        session: "session-a".into(),
        doc: id,
        data: data.to_vec(),
    };
    let too_big = vec![7u8; 64 * 1024];
    let (big, small) = (
        ephemeral(&a, 1, &too_big),
        ephemeral(&a, 2, b"a looks at Ada"),
    );
    send(&mut a.ws, &big).await;
    send(&mut a.ws, &small).await;

    // b hears it (with a's ids), and only the one within the limit.
    loop {
        match next(&mut b.ws).await {
            Some(RepoMessage::Ephemeral {
                sender,
                target,
                count,
                session,
                doc,
                data,
            }) => {
                assert_eq!((sender.as_str(), target.as_str()), ("tab-a", "tab-b"));
                assert_eq!((count, session.as_str(), doc), (2, "session-a", id));
                assert_eq!(data, b"a looks at Ada");
                break;
            }
            Some(RepoMessage::Sync { .. }) => {} // late sync answers
            other => panic!("expected the ephemeral message, got {other:?}"),
        }
    }
    let heard = tokio::time::timeout(T, seen_by_accord.recv())
        .await
        .expect("in time")
        .expect("a presence");
    assert_eq!((heard.doc, heard.sender.as_str()), (id, "tab-a"));
    assert_eq!(heard.data, b"a looks at Ada");

    // The Accord replica's presence reaches both tabs.
    assert!(sync
        .broadcast(&id, b"accord looks".to_vec())
        .await
        .expect("sent"));
    for client in [&mut a, &mut b] {
        loop {
            match next(&mut client.ws).await {
                Some(RepoMessage::Ephemeral { sender, data, .. }) => {
                    assert_eq!(sender, replica.peer_id().as_str());
                    assert_eq!(data, b"accord looks");
                    break;
                }
                Some(RepoMessage::Sync { .. }) => {}
                other => panic!("expected the replica's presence, got {other:?}"),
            }
        }
    }
    assert_eq!(
        relay.relay.replica().heads(&id).expect("heads"),
        heads,
        "nothing stored"
    );
    let metrics = relay.relay.metrics();
    assert_eq!(
        metrics.ephemeral_forwarded.get(),
        4,
        "a's to b and the replica, the replica's to a and b"
    );
    sync.close().await;
    relay.stop().await.expect("stop");
}

/// The native limits hold on this door: a client over its message rate is
/// closed with `rate_limited`, one over its document cap with
/// `too_many_documents`, and a message over the frame limit with
/// `frame_too_large`.
#[tokio::test]
async fn the_native_limits_hold_at_the_automerge_repo_door() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = Config {
        db: dir.path().join("relay.db"),
        max_frame_bytes: 64 * 1024,
        limits: accord_engine::sync::Limits {
            rate_per_sec: 1.0,
            burst: 5.0,
            max_docs: 2,
            ..accord_engine::sync::Limits::default()
        },
        ..Config::default()
    };
    let relay = TestRelay::start_with(config).await.expect("relay");
    let empty = || {
        AutoCommit::new()
            .sync()
            .generate_sync_message(&mut State::new())
            .expect("message")
            .encode()
    };

    let mut fast = RepoClient::join(&relay, "fast", None).await;
    for _ in 0..10 {
        let leave = RepoMessage::Leave {
            sender: "fast".into(),
        };
        if fast.ws.send(Message::binary(leave.encode())).await.is_err() {
            break;
        }
    }
    assert!(refusal(&mut fast.ws).await.starts_with("rate_limited"));

    let mut greedy = RepoClient::join(&relay, "greedy", None).await;
    for _ in 0..3 {
        greedy.send_sync(DocId::random(), empty(), false).await;
    }
    let said = refusal(&mut greedy.ws).await;
    assert!(said.starts_with("too_many_documents"), "{said}");

    let mut big = RepoClient::join(&relay, "big", None).await;
    big.send_sync(DocId::random(), vec![0x42; 100 * 1024], false)
        .await;
    let said = refusal(&mut big.ws).await;
    assert!(said.starts_with("frame_too_large"), "{said}");
    relay.stop().await.expect("stop");
}
