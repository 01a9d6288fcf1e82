use super::*;
use proptest::prelude::*;

fn doc() -> DocId {
    "2p8WbaN6yponHrAUsdb8Xkytq5rq".parse().expect("id")
}

/// Writes one value.
type Value<'a> = &'a dyn Fn(&mut Encoder<Vec<u8>>);

/// Bytes built key by key, as another encoder (the JavaScript one) might
/// write them.
fn map(entries: &[(&str, Value<'_>)]) -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    e.map(entries.len() as u64).expect("map");
    for (key, value) in entries {
        e.str(key).expect("key");
        value(&mut e);
    }
    e.into_writer()
}

fn text(s: &'static str) -> impl Fn(&mut Encoder<Vec<u8>>) {
    move |e| {
        e.str(s).expect("str");
    }
}

#[test]
fn a_javascript_join_with_float_counts_undefined_and_metadata_decodes() {
    let join = map(&[
        ("type", &text("join")),
        ("senderId", &text("peer-abc")),
        ("supportedProtocolVersions", &|e| {
            e.array(1).expect("a").str("1").expect("s");
        }),
        ("metadata", &|e| {
            e.map(2).expect("m");
            e.str("storageId").expect("k").str("store-1").expect("v");
            e.str("isEphemeral").expect("k").bool(false).expect("v");
        }),
        ("unknownKey", &|e| {
            e.array(2)
                .expect("a")
                .u8(1)
                .expect("1")
                .str("x")
                .expect("x");
        }),
    ]);
    assert_eq!(
        RepoMessage::decode(&join).expect("join"),
        RepoMessage::Join {
            sender: "peer-abc".into(),
            versions: vec!["1".into()],
            metadata: Some(PeerMetadata {
                storage_id: Some("store-1".into()),
                is_ephemeral: false,
                token: None,
            }),
        }
    );
    let ephemeral = map(&[
        ("type", &text("ephemeral")),
        ("senderId", &text("a")),
        ("targetId", &text("b")),
        ("count", &|e| {
            e.f64(7.0).expect("f64");
        }),
        ("sessionId", &text("s")),
        ("documentId", &|e| {
            e.str("2p8WbaN6yponHrAUsdb8Xkytq5rq").expect("id");
        }),
        ("data", &|e| {
            e.bytes(b"hi").expect("bytes");
        }),
        ("remove", &|e| {
            e.undefined().expect("undefined");
        }),
    ]);
    assert_eq!(
        RepoMessage::decode(&ephemeral).expect("ephemeral"),
        RepoMessage::Ephemeral {
            sender: "a".into(),
            target: "b".into(),
            count: 7,
            session: "s".into(),
            doc: doc(),
            data: b"hi".to_vec(),
        }
    );
    // `remove: undefined` in a subscription change means none.
    let change = map(&[
        ("type", &text("remote-subscription-change")),
        ("senderId", &text("a")),
        ("targetId", &text("b")),
        ("add", &|e| {
            e.array(1).expect("a").str("store-2").expect("s");
        }),
        ("remove", &|e| {
            e.undefined().expect("undefined");
        }),
    ]);
    assert_eq!(
        RepoMessage::decode(&change).expect("change"),
        RepoMessage::RemoteSubscriptionChange {
            sender: "a".into(),
            target: "b".into(),
            add: vec!["store-2".into()],
            remove: vec![],
        }
    );
}

#[test]
fn bad_messages_are_refused_naming_what_is_wrong() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![], "not CBOR"),
        (vec![0xff], "not CBOR"),
        (map(&[("senderId", &text("a"))]), "no 'type'"),
        (
            map(&[("type", &text("dance"))]),
            "unknown message type 'dance'",
        ),
        (
            map(&[("type", &text("sync")), ("senderId", &text("a"))]),
            "no 'targetId'",
        ),
        (
            map(&[
                ("type", &text("sync")),
                ("senderId", &text("a")),
                ("targetId", &text("b")),
                ("documentId", &text("notanid")),
                ("data", &|e| {
                    e.bytes(b"").expect("b");
                }),
            ]),
            "documentId: 'notanid' is not a valid record id",
        ),
        (
            map(&[
                ("type", &text("ephemeral")),
                ("count", &|e| {
                    e.f64(1.5).expect("f");
                }),
            ]),
            "'count' is 1.5, not a whole number",
        ),
        (
            map(&[("type", &|e| {
                e.u8(3).expect("u8");
            })]),
            "'type' is u8, not text",
        ),
    ];
    for (bytes, said) in cases {
        let err = RepoMessage::decode(&bytes).expect_err("refused");
        assert!(err.to_string().contains(said), "{err} (wanted: {said})");
    }
}

#[test]
fn declared_sizes_are_bounded_before_anything_is_kept() {
    // A map that claims 2^40 entries, a list that claims 2^40 items, text
    // longer than the cap, trailing bytes: each refused, cheaply.
    let mut huge_map = vec![0xbb];
    huge_map.extend_from_slice(&(1u64 << 40).to_be_bytes());
    let err = RepoMessage::decode(&huge_map).expect_err("huge map");
    assert!(err.to_string().contains("more than 64"), "{err}");
    let mut e = Encoder::new(Vec::new());
    e.map(2)
        .expect("m")
        .str("type")
        .expect("k")
        .str("join")
        .expect("v");
    e.str("supportedProtocolVersions").expect("k");
    let mut bytes = e.into_writer();
    bytes.push(0x9b);
    bytes.extend_from_slice(&(1u64 << 40).to_be_bytes());
    let err = RepoMessage::decode(&bytes).expect_err("huge list");
    assert!(err.to_string().contains("more than 64"), "{err}");
    let long = "x".repeat(MAX_TEXT + 1);
    let mut e = Encoder::new(Vec::new());
    e.map(1)
        .expect("m")
        .str("senderId")
        .expect("k")
        .str(&long)
        .expect("v");
    let err = RepoMessage::decode(&e.into_writer()).expect_err("long");
    assert!(err.to_string().contains("more than 256"), "{err}");
    let mut ok = RepoMessage::Leave { sender: "a".into() }.encode();
    ok.push(0);
    let err = RepoMessage::decode(&ok).expect_err("trailing");
    assert!(
        err.to_string().contains("1 bytes after the message"),
        "{err}"
    );
}

fn short_text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9+/=-]{0,24}"
}

fn texts() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(short_text(), 0..4)
}

fn doc_ids() -> impl Strategy<Value = DocId> {
    any::<[u8; 16]>().prop_map(DocId::from_bytes)
}

fn metadata() -> impl Strategy<Value = Option<PeerMetadata>> {
    let parts = (
        prop::option::of(short_text()),
        any::<bool>(),
        prop::option::of(short_text()),
    );
    prop::option::of(
        parts.prop_map(|(storage_id, is_ephemeral, token)| PeerMetadata {
            storage_id,
            is_ephemeral,
            token,
        }),
    )
}

fn messages() -> impl Strategy<Value = RepoMessage> {
    let bytes = || prop::collection::vec(any::<u8>(), 0..64);
    prop_oneof![
        (short_text(), texts(), metadata()).prop_map(|(sender, versions, metadata)| {
            RepoMessage::Join {
                sender,
                versions,
                metadata,
            }
        }),
        (short_text(), short_text(), short_text(), metadata()).prop_map(
            |(sender, target, version, metadata)| RepoMessage::Peer {
                sender,
                target,
                version,
                metadata,
            }
        ),
        short_text().prop_map(|sender| RepoMessage::Leave { sender }),
        (
            short_text(),
            short_text(),
            doc_ids(),
            bytes(),
            any::<bool>()
        )
            .prop_map(|(sender, target, doc, data, request)| {
                RepoMessage::about_doc(request, sender, target, doc, data)
            }),
        (short_text(), short_text(), doc_ids()).prop_map(|(sender, target, doc)| {
            RepoMessage::DocUnavailable {
                sender,
                target,
                doc,
            }
        }),
        (
            short_text(),
            short_text(),
            any::<u64>(),
            short_text(),
            doc_ids(),
            bytes()
        )
            .prop_map(|(sender, target, count, session, doc, data)| {
                RepoMessage::Ephemeral {
                    sender,
                    target,
                    count,
                    session,
                    doc,
                    data,
                }
            }),
        short_text().prop_map(|message| RepoMessage::Error { message }),
        (short_text(), short_text(), texts(), texts()).prop_map(|(sender, target, add, remove)| {
            RepoMessage::RemoteSubscriptionChange {
                sender,
                target,
                add,
                remove,
            }
        }),
        (
            short_text(),
            short_text(),
            doc_ids(),
            prop::collection::btree_map(short_text(), (texts(), any::<u64>()), 0..3)
        )
            .prop_map(|(sender, target, doc, heads)| {
                RepoMessage::RemoteHeadsChanged {
                    sender,
                    target,
                    doc,
                    new_heads: heads
                        .into_iter()
                        .map(|(k, (heads, timestamp))| (k, HeadsAt { heads, timestamp }))
                        .collect(),
                }
            }),
    ]
}

proptest! {
    #[test]
    fn every_message_round_trips(message in messages()) {
        let bytes = message.encode();
        prop_assert_eq!(RepoMessage::decode(&bytes).expect("decodes"), message);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = RepoMessage::decode(&bytes);
    }
}
