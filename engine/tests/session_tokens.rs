//! Tokens in the sans-IO sessions, on a fake clock: a relay connection
//! ends at its grant's expiry whether or not the peer speaks, `Reauth`
//! replaces the grant on the open connection, and a replica's session
//! sends fresh tokens and knows when retrying after `token_expired` helps.

use accord_engine::sync::{
    Access, ClientConfig, ClientOutput, ClientSession, ErrorCode, Frame, Grant, RelayOutput,
    RelaySession, Right, SessionEvent, PROTOCOL_VERSION,
};
use accord_engine::{Collection, PeerId, Replica};

fn collection(name: &str) -> Collection {
    Collection::new(name).expect("a valid name")
}

/// Tokens by name: `both` reads and writes `notes` and `tasks` until
/// 10 s, `notes-read` reads `notes` until 20 s, `open` does everything for
/// ever; anything else is refused.
#[derive(Debug)]
struct FakeAccess;

impl Access for FakeAccess {
    fn check(&self, token: &str, _now_ms: u64) -> Result<Grant, String> {
        let rw = Right::ReadWrite;
        match token {
            "both" => Ok(Grant::collections(
                [(collection("notes"), rw), (collection("tasks"), rw)].into(),
                Some(10_000),
            )),
            "notes-read" => Ok(Grant::collections(
                [(collection("notes"), Right::Read)].into(),
                Some(20_000),
            )),
            "open" => Ok(Grant::everything()),
            _ => Err("bad token signature".into()),
        }
    }
}

/// A relay session welcomed at time 0 with `token`, and its store.
fn welcomed(token: &str) -> (RelaySession, Replica, Vec<RelayOutput>) {
    let store = Replica::open_in_memory().expect("store");
    let mut session = RelaySession::new("relay");
    let hello = Frame::Hello {
        version: PROTOCOL_VERSION,
        peer_id: "peer".into(),
        token: token.into(),
    };
    let out = session.handle_frame(hello, 0, &FakeAccess, &store);
    (session, store, out)
}

fn subscribe(session: &mut RelaySession, store: &Replica, names: &[&str], now: u64) {
    let frame = Frame::Subscribe {
        collections: names.iter().map(|n| (*n).to_owned()).collect(),
    };
    let out = session.handle_frame(frame, now, &FakeAccess, store);
    assert!(
        out.iter()
            .all(|o| !matches!(o, RelayOutput::Send(Frame::Error { .. }))),
        "{out:?}"
    );
}

/// The code of the error frame among `out`, and whether a close follows.
fn refusal(out: &[RelayOutput]) -> Option<(ErrorCode, bool)> {
    let code = out.iter().find_map(|o| match o {
        RelayOutput::Send(Frame::Error { code, .. }) => Some(*code),
        _ => None,
    })?;
    let closes = out.iter().any(|o| matches!(o, RelayOutput::Close { .. }));
    Some((code, closes))
}

#[test]
fn welcome_tells_the_expiry_and_a_silent_connection_closes_at_it() {
    let (mut session, _store, out) = welcomed("both");
    assert!(matches!(
        out.as_slice(),
        [RelayOutput::Send(Frame::Welcome {
            expires_at_ms: Some(10_000),
            ..
        })]
    ));
    assert_eq!(session.deadline(), Some(10_000));
    assert!(session.tick(9_999).is_empty(), "not yet");
    let out = session.tick(10_000);
    assert_eq!(refusal(&out), Some((ErrorCode::TOKEN_EXPIRED, true)));
    assert_eq!(session.deadline(), None, "closed: nothing more to wake for");
    assert!(session.tick(20_000).is_empty(), "closed once");
}

#[test]
fn a_frame_at_or_after_expiry_is_refused_and_closes() {
    let (mut session, store, _) = welcomed("both");
    subscribe(&mut session, &store, &["notes"], 9_999);
    let late = Frame::Subscribe {
        collections: vec!["tasks".into()],
    };
    let out = session.handle_frame(late, 10_000, &FakeAccess, &store);
    assert_eq!(refusal(&out), Some((ErrorCode::TOKEN_EXPIRED, true)));
    assert!(
        !out.iter()
            .any(|o| matches!(o, RelayOutput::Subscribed { .. })),
        "the frame was not applied: {out:?}"
    );
    assert!(!session.is_subscribed("tasks"));
    let bytes = Frame::Subscribe {
        collections: vec!["tasks".into()],
    }
    .encode();
    let (mut session, store, _) = welcomed("both");
    let out = session.handle_bytes(&bytes, 12_000, &FakeAccess, &store);
    assert_eq!(refusal(&out), Some((ErrorCode::TOKEN_EXPIRED, true)));
}

#[test]
fn reauth_replaces_the_grant_and_drops_what_it_cannot_read() {
    let (mut session, store, _) = welcomed("both");
    subscribe(&mut session, &store, &["notes", "tasks"], 1_000);
    assert!(session.can_write("notes"));
    let reauth = Frame::Reauth {
        token: "notes-read".into(),
    };
    let out = session.handle_frame(reauth, 5_000, &FakeAccess, &store);
    assert_eq!(out.len(), 5, "{out:?}");
    assert_eq!(out[0], RelayOutput::Unsubscribed(collection("tasks")));
    match &out[1] {
        RelayOutput::Send(Frame::SubscribeRefused {
            collection,
            code,
            message,
        }) => {
            assert_eq!(*code, ErrorCode::FORBIDDEN);
            assert_eq!(collection, "tasks", "{message}");
        }
        other => panic!("expected tasks refused, got {other:?}"),
    }
    assert_eq!(
        out[2],
        RelayOutput::Subscribed {
            collection: collection("notes"),
            write: false
        },
        "the registry learns the new right"
    );
    assert_eq!(
        out[3],
        RelayOutput::Send(Frame::Subscribed {
            collection: "notes".into(),
            write: false
        })
    );
    assert_eq!(
        out[4],
        RelayOutput::Send(Frame::Reauthorized {
            expires_at_ms: Some(20_000)
        })
    );
    assert!(session.is_subscribed("notes") && !session.is_subscribed("tasks"));
    assert!(
        !session.can_write("notes"),
        "write rights follow the new grant"
    );
    assert_eq!(session.deadline(), Some(20_000));
    assert!(
        session.tick(15_000).is_empty(),
        "the old expiry no longer holds"
    );
    let out = session.tick(20_000);
    assert_eq!(refusal(&out), Some((ErrorCode::TOKEN_EXPIRED, true)));
}

#[test]
fn a_refused_reauth_closes_with_unauthorized() {
    let (mut session, store, _) = welcomed("both");
    let reauth = Frame::Reauth {
        token: "forged".into(),
    };
    let out = session.handle_frame(reauth, 1_000, &FakeAccess, &store);
    assert_eq!(refusal(&out), Some((ErrorCode::UNAUTHORIZED, true)));
    let before_hello = Frame::Reauth {
        token: "both".into(),
    };
    let mut fresh = RelaySession::new("relay");
    let out = fresh.handle_frame(before_hello, 0, &FakeAccess, &store);
    assert_eq!(refusal(&out), Some((ErrorCode::NOT_HANDSHAKEN, true)));
}

#[test]
fn an_open_grant_never_expires() {
    let (mut session, _store, out) = welcomed("open");
    assert!(matches!(
        out.as_slice(),
        [RelayOutput::Send(Frame::Welcome {
            expires_at_ms: None,
            ..
        })]
    ));
    assert_eq!(session.deadline(), None);
    assert!(session.tick(u64::MAX).is_empty());
}

fn client(token: &str) -> ClientSession {
    ClientSession::new(ClientConfig {
        peer_id: PeerId::new("replica").expect("peer id"),
        token: token.into(),
        collections: [collection("notes")].into(),
        max_in_flight: 4,
        max_frame_bytes: usize::MAX,
    })
}

fn sent(out: &[ClientOutput]) -> Vec<&Frame> {
    out.iter()
        .filter_map(|o| match o {
            ClientOutput::Send(f) => Some(f),
            _ => None,
        })
        .collect()
}

fn expiries(out: &[ClientOutput]) -> Vec<Option<u64>> {
    out.iter()
        .filter_map(|o| match o {
            ClientOutput::Event(SessionEvent::Authorized { expires_at_ms }) => Some(*expires_at_ms),
            _ => None,
        })
        .collect()
}

#[test]
fn a_client_uses_the_newest_token_and_learns_its_expiry() {
    let store = Replica::open_in_memory().expect("store");
    let mut session = client("first");
    assert!(session.reauth("second".into()).is_empty(), "not connected");
    let out = session.connected(0, &store);
    assert!(matches!(sent(&out)[0], Frame::Hello { token, .. } if token == "second"));
    let welcome = Frame::Welcome {
        version: PROTOCOL_VERSION,
        relay_id: "relay".into(),
        expires_at_ms: Some(5_000),
    };
    let out = session.handle_frame(0, welcome, &store);
    assert_eq!(expiries(&out), vec![Some(5_000)]);
    let authorized = out
        .iter()
        .position(|o| matches!(o, ClientOutput::Event(SessionEvent::Authorized { .. })));
    let welcomed = out
        .iter()
        .position(|o| matches!(o, ClientOutput::Event(SessionEvent::Welcomed { .. })));
    assert!(authorized < welcomed, "the expiry is known when welcomed");
    assert!(
        !session.retries_after(ErrorCode::TOKEN_EXPIRED),
        "no newer token"
    );

    let out = session.reauth("third".into());
    assert_eq!(
        sent(&out),
        vec![&Frame::Reauth {
            token: "third".into()
        }]
    );
    assert!(
        session.retries_after(ErrorCode::TOKEN_EXPIRED),
        "the relay may have expired us before reading the newer token"
    );
    let out = session.handle_frame(
        1_000,
        Frame::Reauthorized {
            expires_at_ms: Some(9_000),
        },
        &store,
    );
    assert_eq!(expiries(&out), vec![Some(9_000)]);
    assert!(
        !session.retries_after(ErrorCode::TOKEN_EXPIRED),
        "it expired"
    );
    assert!(!session.retries_after(ErrorCode::UNAUTHORIZED));
    assert!(session.retries_after(ErrorCode::TOO_SLOW));
}

#[test]
fn a_client_refuses_reauth_frames_from_a_relay() {
    let store = Replica::open_in_memory().expect("store");
    let mut session = client("t");
    session.connected(0, &store);
    let out = session.handle_frame(0, Frame::Reauth { token: "x".into() }, &store);
    assert!(out.iter().any(|o| matches!(
        o,
        ClientOutput::Close {
            code: ErrorCode::MALFORMED,
            ..
        }
    )));
}

/// A replica's presence frame is passed on with the relay's idea of who
/// sent it, only for a subscribed collection, within the size limit.
#[test]
fn presence_is_passed_on_with_its_sender_for_subscribed_collections_only() {
    let (mut session, store, _) = welcomed("notes-read");
    subscribe(&mut session, &store, &["notes"], 0);
    let doc = store.create("notes", &serde_json::json!({})).expect("doc");
    let frame = |collection: &str, data: Vec<u8>| Frame::Ephemeral {
        doc,
        collection: collection.into(),
        sender: "a lie".into(),
        session: "s".into(),
        count: 1,
        data,
    };
    let out = session.handle_frame(frame("notes", b"hi".to_vec()), 1, &FakeAccess, &store);
    match out.as_slice() {
        [RelayOutput::Ephemeral {
            frame: Frame::Ephemeral { sender, data, .. },
            ..
        }] => {
            assert_eq!((sender.as_str(), data.as_slice()), ("peer", &b"hi"[..]));
        }
        other => panic!("{other:?}"),
    }
    let out = session.handle_frame(frame("tasks", b"hi".to_vec()), 2, &FakeAccess, &store);
    assert!(matches!(
        out.as_slice(),
        [RelayOutput::Send(Frame::Error {
            code: ErrorCode::NOT_SUBSCRIBED,
            ..
        })]
    ));
    let big = vec![0; accord_engine::sync::Limits::default().max_ephemeral_bytes + 1];
    let mut limited = RelaySession::with_limits("relay", accord_engine::sync::Limits::default());
    let hello = Frame::Hello {
        version: PROTOCOL_VERSION,
        peer_id: "peer".into(),
        token: "open".into(),
    };
    limited.handle_frame(hello, 0, &FakeAccess, &store);
    subscribe(&mut limited, &store, &["notes"], 0);
    let out = limited.handle_frame(frame("notes", big), 1, &FakeAccess, &store);
    assert!(matches!(
        out.as_slice(),
        [RelayOutput::Send(Frame::Error {
            code: ErrorCode::TOO_LARGE,
            ..
        })]
    ));
}

/// The session id travels to every listener too, so it is bounded like
/// the payload: a long one is refused with `too_large`, nothing passed on.
#[test]
fn a_presence_frame_with_a_long_session_id_is_refused() {
    let (mut session, store, _) = welcomed("notes-read");
    subscribe(&mut session, &store, &["notes"], 0);
    let doc = store.create("notes", &serde_json::json!({})).expect("doc");
    let frame = Frame::Ephemeral {
        doc,
        collection: "notes".into(),
        sender: String::new(),
        session: "s".repeat(accord_engine::sync::limits::MAX_EPHEMERAL_SESSION + 1),
        count: 1,
        data: b"hi".to_vec(),
    };
    let out = session.handle_frame(frame, 1, &FakeAccess, &store);
    assert!(matches!(
        out.as_slice(),
        [RelayOutput::Send(Frame::Error {
            code: ErrorCode::TOO_LARGE,
            ..
        })]
    ));
}
