//! The relay binary and server against real sockets: startup line, bad
//! input, kill -9 and restart, graceful shutdown.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use accord_engine::sync::{ErrorCode, Frame, MAX_FRAMES_PER_MESSAGE, PROTOCOL_VERSION};
use accord_engine::{ConnectOptions, Replica};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

mod support;
use support::wire::{expect_error, next_frame, raw, send, subscribed};
use support::{spawn_relay, RelayProcess};

const T: Duration = Duration::from_secs(20);

fn hello(version: u32) -> Frame {
    Frame::Hello {
        version,
        peer_id: "tester".into(),
        token: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_its_code_and_others_keep_syncing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = spawn_relay(&dir.path().join("relay.db"));
    let good = Replica::open(dir.path().join("good.db")).expect("replica");
    let id = good.create("c", &json!({"v": 1})).expect("create");
    let opts = ConnectOptions {
        collections: vec!["c".into()],
        ..ConnectOptions::default()
    };
    let mut handle = good.connect(&relay.url, opts);
    handle.wait_synced(T).await.expect("synced");

    // Garbage bytes.
    let mut ws = raw(&relay.url).await;
    ws.send(Message::Binary(vec![0xde, 0xad, 0xbe, 0xef].into()))
        .await
        .expect("send");
    expect_error(&mut ws, ErrorCode::MALFORMED).await;
    assert!(
        next_frame(&mut ws).await.is_none(),
        "closed after a fatal error"
    );
    // A frame before the handshake.
    let mut ws = raw(&relay.url).await;
    send(
        &mut ws,
        &Frame::Subscribe {
            collections: vec!["c".into()],
        },
    )
    .await;
    expect_error(&mut ws, ErrorCode::NOT_HANDSHAKEN).await;
    // A wrong protocol version.
    let mut ws = raw(&relay.url).await;
    send(&mut ws, &hello(PROTOCOL_VERSION + 1)).await;
    expect_error(&mut ws, ErrorCode::VERSION).await;
    // A Hello from a future version whose other fields this relay cannot
    // even decode: still answered with the version error.
    let mut ws = raw(&relay.url).await;
    let mut future = hello(PROTOCOL_VERSION + 5).encode();
    future.extend_from_slice(&[0xff, 0xfe, 0xfd]);
    ws.send(Message::Binary(future.into())).await.expect("send");
    expect_error(&mut ws, ErrorCode::VERSION).await;
    // Text instead of binary.
    let mut ws = raw(&relay.url).await;
    ws.send(Message::Text("hello".into())).await.expect("send");
    expect_error(&mut ws, ErrorCode::MALFORMED).await;
    // Invalid Automerge bytes in a valid frame: refused, connection stays.
    let mut ws = raw(&relay.url).await;
    send(&mut ws, &hello(PROTOCOL_VERSION)).await;
    assert!(matches!(
        next_frame(&mut ws).await,
        Some(Frame::Welcome { .. })
    ));
    subscribed(&mut ws, &["c"]).await;
    let bogus = Frame::Sync {
        doc: id,
        collection: "c".into(),
        message: vec![0x42, 1, 2, 3],
        want_reply: true,
    };
    send(&mut ws, &bogus).await;
    expect_error(&mut ws, ErrorCode::BAD_DOCUMENT).await;
    // Sync for a collection it did not subscribe to.
    let other = Frame::Sync {
        doc: id,
        collection: "other".into(),
        message: vec![],
        want_reply: true,
    };
    send(&mut ws, &other).await;
    expect_error(&mut ws, ErrorCode::NOT_SUBSCRIBED).await;

    // The well-behaved replica is untouched and keeps syncing.
    let before = good.heads(&id).expect("heads");
    good.put(&id, "v", &json!(2), None).expect("put");
    handle.wait_synced(T).await.expect("still syncing");
    assert_ne!(good.heads(&id).expect("heads"), before);
    handle.close().await;
}

/// The next binary message's bytes, read from the socket itself.
async fn next_message(ws: &mut support::wire::Ws) -> Vec<u8> {
    loop {
        let message = tokio::time::timeout(T, ws.next())
            .await
            .expect("a message in time")
            .expect("open")
            .expect("readable");
        if let Message::Binary(bytes) = message {
            return bytes.to_vec();
        }
    }
}

/// Version 5 packs frames: a replica's first message carries its `Hello`
/// and what follows it, handled in order, and the relay answers with as
/// few messages; at most `MAX_FRAMES_PER_MESSAGE` frames per message. An
/// older connection still carries exactly one frame per message, both
/// ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_packed_in_one_message_are_handled_in_order_from_version_5_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = spawn_relay(&dir.path().join("relay.db"));
    let owner = Replica::open(dir.path().join("owner.db")).expect("replica");
    let id = owner.create("c", &json!({"v": 1})).expect("create");
    let opts = ConnectOptions {
        collections: vec!["c".into()],
        ..ConnectOptions::default()
    };
    let mut handle = owner.connect(&relay.url, opts);
    handle.wait_synced(T).await.expect("synced");
    handle.close().await;
    let subscribe = Frame::Subscribe {
        collections: vec!["c".into()],
    };

    // Hello and Subscribe in one message: Welcome and the confirmation
    // come back in one message too (nothing is flushed between them).
    let mut ws = raw(&relay.url).await;
    let first = [hello(PROTOCOL_VERSION).encode(), subscribe.encode()].concat();
    ws.send(Message::Binary(first.into())).await.expect("send");
    let answer = Frame::decode_message(&next_message(&mut ws).await).expect("frames");
    assert!(
        matches!(answer[..], [Frame::Welcome { version, .. }, Frame::Subscribed { .. }, ..] if version == PROTOCOL_VERSION),
        "{answer:?}"
    );
    let mut listed = answer.into_iter().any(|f| {
        matches!(&f, Frame::Announce { docs, complete: true, .. } if docs.iter().any(|d| d.doc == id))
    });
    while !listed {
        let frames = Frame::decode_message(&next_message(&mut ws).await).expect("frames");
        listed = frames.iter().any(|f| {
            matches!(f, Frame::Announce { docs, complete: true, .. } if docs.iter().any(|d| d.doc == id))
        });
    }
    // Too many frames in one message: refused whole (none of them is
    // answered), naming the limit.
    let reauth = Frame::Reauth {
        token: String::new(),
    }
    .encode();
    let message = reauth.repeat(MAX_FRAMES_PER_MESSAGE + 1);
    ws.send(Message::Binary(message.into()))
        .await
        .expect("send");
    let Some(Frame::Error {
        code,
        message: text,
        ..
    }) = next_frame(&mut ws).await
    else {
        panic!("expected the refusal first");
    };
    assert_eq!(code, ErrorCode::MALFORMED);
    assert!(
        text.contains(&format!("more than {MAX_FRAMES_PER_MESSAGE} frames")),
        "{text}"
    );

    // Version 4: two frames in one message are trailing bytes.
    let mut ws = raw(&relay.url).await;
    let first = [hello(4).encode(), subscribe.encode()].concat();
    ws.send(Message::Binary(first.into())).await.expect("send");
    let (code, text) = support::wire::next_error(&mut ws).await;
    assert_eq!(code, ErrorCode::MALFORMED);
    assert!(text.contains("trailing bytes"), "{text}");
    // And every message the relay sends a version-4 replica is one frame.
    let mut ws = raw(&relay.url).await;
    send(&mut ws, &hello(4)).await;
    send(&mut ws, &subscribe).await;
    loop {
        let frame = Frame::decode(&next_message(&mut ws).await).expect("exactly one frame");
        if matches!(frame, Frame::Announce { complete: true, .. }) {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_path_is_answered_with_404_naming_it_and_the_root_still_serves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = spawn_relay(&dir.path().join("r.db"));
    for path in ["/nope", "/automerge-repo/x", "//"] {
        let url = format!("{}{path}", relay.url);
        let refused = tokio::time::timeout(T, tokio_tungstenite::connect_async(&url))
            .await
            .expect("an answer, not a hang");
        match refused {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 404, "{url}");
                let body =
                    String::from_utf8_lossy(response.body().as_deref().unwrap_or(&[])).into_owned();
                assert!(
                    body.contains(&format!("no WebSocket endpoint at '{path}'")),
                    "{body}"
                );
            }
            other => panic!("{url}: expected 404, got {other:?}"),
        }
    }
    // The native protocol at `/`, with or without a query string.
    for url in [relay.url.clone(), format!("{}/?x=1", relay.url)] {
        let mut ws = raw(&url).await;
        send(&mut ws, &hello(PROTOCOL_VERSION)).await;
        assert!(
            matches!(next_frame(&mut ws).await, Some(Frame::Welcome { .. })),
            "{url}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_accord-relay"))
        .args([
            "--open",
            "--listen",
            "127.0.0.1:0",
            "--max-frame-bytes",
            "65536",
            "--db",
        ])
        .arg(dir.path().join("relay.db"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("line");
    let relay = RelayProcess {
        url: format!(
            "ws://{}",
            line.split("listening on ").nth(1).expect("addr").trim()
        ),
        child,
    };
    let mut ws = raw(&relay.url).await;
    send(&mut ws, &hello(PROTOCOL_VERSION)).await;
    assert!(matches!(
        next_frame(&mut ws).await,
        Some(Frame::Welcome { .. })
    ));
    ws.send(Message::Binary(vec![0u8; 65537].into()))
        .await
        .expect("send");
    expect_error(&mut ws, ErrorCode::FRAME_TOO_LARGE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_and_restarted_mid_session_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("relay.db");
    let mut relay = spawn_relay(&db);
    let a = Replica::open(dir.path().join("a.db")).expect("a");
    let b = Replica::open(dir.path().join("b.db")).expect("b");
    let opts = || ConnectOptions {
        collections: vec!["c".into()],
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..ConnectOptions::default()
    };
    let ids: Vec<_> = (0..10)
        .map(|i| a.create("c", &json!({"i": i})).expect("create"))
        .collect();
    let mut ha = a.connect(&relay.url, opts());
    ha.wait_synced(T).await.expect("a synced");

    // SIGKILL: everything acknowledged by the relay must survive.
    relay.child.kill().expect("kill -9");
    relay.child.wait().expect("reaped");
    drop(ha);
    let mut restarted = spawn_relay(&db);
    for id in &ids[..5] {
        a.put(id, "after", &json!(true), None)
            .expect("offline edit");
    }
    let mut ha = a.connect(&restarted.url, opts());
    let mut hb = b.connect(&restarted.url, opts());
    ha.wait_synced(T).await.expect("a resynced");
    hb.wait_synced(T).await.expect("b synced");
    for id in &ids {
        let deadline = tokio::time::Instant::now() + T;
        while b.heads(id).ok() != a.heads(id).ok() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "B did not converge on {id}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(b.get(id).expect("b").value, a.get(id).expect("a").value);
    }
    // Graceful shutdown on SIGTERM exits 0.
    let pid = restarted.child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let exit = restarted.child.wait().expect("exit");
    assert!(exit.success(), "graceful exit: {exit:?}");
    hb.close().await;
    ha.close().await;
}

#[test]
fn token_subcommand_mints_verifiable_tokens_with_the_relays_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "a secret in a file, long enough\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_accord-relay"))
        .args([
            "token",
            "--collection",
            "contacts",
            "--collection",
            "notes",
            "--read-only",
            "--ttl",
            "2h",
        ])
        .arg("--secret-file")
        .arg(&secret_file)
        .env_remove("ACCORD_RELAY_SECRET")
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).expect("utf8");
    assert_eq!(stdout.lines().count(), 1, "the token alone: {stdout:?}");
    let tokens =
        accord_relay::auth::Tokens::new(b"a secret in a file, long enough").expect("secret");
    let claims = tokens
        .verify(stdout.trim(), accord_relay::auth::unix_now())
        .expect("valid token");
    assert_eq!(claims.c.len(), 2);
    assert!(claims
        .c
        .values()
        .all(|r| *r == accord_relay::auth::Right::Read));
    let ttl = claims.exp - accord_relay::auth::unix_now();
    assert!((7000..=7200).contains(&ttl), "ttl {ttl}");

    // From the environment, and refusals.
    let out = Command::new(env!("CARGO_BIN_EXE_accord-relay"))
        .args(["token", "--collection", "c"])
        .env("ACCORD_RELAY_SECRET", "another secret, long enough")
        .output()
        .expect("run");
    assert!(
        out.status.success() && out.stdout.starts_with(b"acc1."),
        "{out:?}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_accord-relay"))
        .args(["token", "--collection", "c"])
        .env_remove("ACCORD_RELAY_SECRET")
        .env_remove("ACCORD_RELAY_SECRET_FILE")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no secret"),
        "{out:?}"
    );
    for ttl in ["0s", "500ms"] {
        let out = Command::new(env!("CARGO_BIN_EXE_accord-relay"))
            .args(["token", "--collection", "c", "--ttl", ttl])
            .env("ACCORD_RELAY_SECRET", "another secret, long enough")
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(out.stdout.is_empty(), "no token printed: {out:?}");
        assert!(
            stderr.contains("would be expired") && stderr.contains("at least 1s"),
            "{stderr}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_accord-relay"))
        .args(["token", "--collection", "c"])
        .env("ACCORD_RELAY_SECRET", "short")
        .output()
        .expect("run");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("at least 16 bytes"),
        "{out:?}"
    );
}

/// `accord-relay ARGS` in `dir` with no secret (current or previous) and
/// no open mode from the environment, so only the arguments decide.
fn relay_without_secret(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_accord-relay"));
    cmd.args(["--metrics-listen", "off", "--db"])
        .arg(dir.join("r.db"))
        .args(args)
        .current_dir(dir)
        .env_remove("ACCORD_RELAY_SECRET")
        .env_remove("ACCORD_RELAY_SECRET_FILE")
        .env_remove("ACCORD_RELAY_OPEN")
        .env_remove("ACCORD_RELAY_PREVIOUS_SECRET")
        .stdin(Stdio::null());
    cmd
}

#[test]
fn without_a_secret_the_relay_refuses_to_start_unless_open_is_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Loopback too: behind a TLS proxy a loopback relay is public.
    for listen in ["127.0.0.1:0", "0.0.0.0:0"] {
        let out = relay_without_secret(dir.path(), &["--listen", listen])
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(1), "{listen}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("refusing to start without a secret")
                && stderr.contains("ACCORD_RELAY_SECRET")
                && stderr.contains("--secret-file")
                && stderr.contains("--open")
                && stderr.contains("ACCORD_RELAY_OPEN=1"),
            "{listen}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{listen}: it never listened");
        assert!(!dir.path().join("r.db").exists(), "{listen}: no database");
    }
    let out = relay_without_secret(dir.path(), &["--listen", "127.0.0.1:0"])
        .env("ACCORD_RELAY_OPEN", "0")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "ACCORD_RELAY_OPEN=0: {out:?}");

    // A secret and --open contradict each other.
    let out = relay_without_secret(dir.path(), &["--open", "--listen", "127.0.0.1:0"])
        .env("ACCORD_RELAY_SECRET", "a secret that is long enough")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("both a secret and --open"), "{stderr}");
}

/// What a relay that started said, and its open-file limit then.
#[derive(Debug)]
struct Started {
    /// The startup line (`accord-relay listening on ...`), or "" if it
    /// exited without one.
    line: String,
    /// What it logged up to that line.
    logged: String,
    /// Its soft open-file limit while it ran (Linux: `/proc/PID/limits`).
    open_files: Option<u64>,
}

/// Starts the relay, reads its startup line, and kills it.
fn starts(mut cmd: Command) -> Started {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("startup line");
    let open_files = std::fs::read_to_string(format!("/proc/{}/limits", child.id()))
        .ok()
        .and_then(|limits| soft_open_files(&limits));
    let mut stderr = child.stderr.take().expect("stderr");
    child.kill().expect("kill the relay");
    child.wait().expect("reap the relay");
    let mut logged = String::new();
    stderr.read_to_string(&mut logged).expect("its log");
    Started {
        line,
        logged,
        open_files,
    }
}

/// The soft limit in `/proc/PID/limits`' "Max open files" line.
fn soft_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[test]
fn open_mode_starts_with_a_loud_warning_from_the_flag_or_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let started = starts(relay_without_secret(
        dir.path(),
        &["--open", "--listen", "127.0.0.1:0"],
    ));
    assert!(
        started
            .line
            .starts_with("accord-relay listening on 127.0.0.1:"),
        "{started:?}"
    );
    assert!(started.logged.contains("OPEN MODE"), "{started:?}");
    let mut cmd = relay_without_secret(dir.path(), &["--listen", "127.0.0.1:0"]);
    cmd.env("ACCORD_RELAY_OPEN", "1");
    let started = starts(cmd);
    assert!(
        started
            .line
            .starts_with("accord-relay listening on 127.0.0.1:"),
        "{started:?}"
    );
    assert!(started.logged.contains("OPEN MODE"), "{started:?}");
}

#[test]
fn the_relay_prints_one_line_on_stdout_and_exits_cleanly_on_sigint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_accord-relay"))
        .args(["--open", "--listen", "127.0.0.1:0"])
        .args(["--metrics-listen", "127.0.0.1:0", "--db"])
        .arg(dir.path().join("r.db"))
        .env_remove("ACCORD_RELAY_SECRET")
        .env_remove("ACCORD_RELAY_SECRET_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("startup line");
    assert!(
        line.starts_with("accord-relay listening on 127.0.0.1:"),
        "{line}"
    );
    let interrupted = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(interrupted.success());
    let status = child.wait().expect("the relay exits");
    let mut rest = String::new();
    stdout
        .read_to_string(&mut rest)
        .expect("the rest of stdout");
    let mut logged = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut logged)
        .expect("log");
    assert!(status.success(), "{status:?}: {logged}");
    assert_eq!(rest, "", "one line on stdout, nothing after it");
    assert!(logged.contains("serving /health and /metrics"), "{logged}");
    assert!(logged.contains("shutdown complete"), "{logged}");
}

/// `accord-relay --open ... ARGS` started by `sh` with an open-file limit of
/// `soft`, which the process may raise up to `hard`.
fn relay_under_file_limit(dir: &Path, soft: u64, hard: u64, args: &[&str]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "ulimit -Sn {soft} && ulimit -Hn {hard} && exec \"$0\" \"$@\""
        ))
        .arg(env!("CARGO_BIN_EXE_accord-relay"))
        .args([
            "--open",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--db",
        ])
        .arg(dir.join("r.db"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null());
    cmd
}

#[test]
fn the_open_file_limit_is_raised_at_start_and_must_fit_max_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A hard limit of 512 cannot hold the default 10,000 connections.
    let out = relay_under_file_limit(dir.path(), 128, 512, &[])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for part in [
        "--max-connections 10000 needs 10064 open files",
        "may open only 512 (hard limit 512)",
        "ulimit -n 10064",
        "--max-connections 448 or fewer",
    ] {
        assert!(stderr.contains(part), "{part}: {stderr}");
    }
    assert!(out.stdout.is_empty(), "it never listened");
    assert!(!dir.path().join("r.db").exists(), "no database");

    // 448 connections and the margin need 512: they fit only once the soft
    // limit of 128 is raised to the hard limit, which it is.
    let started = starts(relay_under_file_limit(
        dir.path(),
        128,
        512,
        &["--max-connections", "448"],
    ));
    assert!(
        started
            .line
            .starts_with("accord-relay listening on 127.0.0.1:"),
        "{started:?}"
    );
    if cfg!(target_os = "linux") {
        assert_eq!(started.open_files, Some(512), "{started:?}");
    }
}

#[test]
fn bad_settings_are_refused_by_name_before_anything_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (flag, value) in [
        ("--cache-docs", "0"),
        ("--rate", "0"),
        ("--max-handshake-frame-bytes", "100"),
        ("--max-frame-bytes", "65535"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_accord-relay"))
            .args([
                "--open",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "off",
                "--db",
            ])
            .arg(dir.path().join("relay.db"))
            .args([flag, value])
            .stdin(Stdio::null())
            .output()
            .expect("run accord-relay");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {value} was accepted");
        assert!(stderr.contains(flag), "{flag}: {stderr}");
        assert!(
            !dir.path().join("relay.db").exists(),
            "{flag} {value}: the database was created anyway"
        );
    }
}

/// `accord-relay` on a free loopback port with `secret` as its current
/// secret and `args`, in `dir`; killed when dropped.
fn relay_with_secret(dir: &Path, secret: &str, args: &[&str]) -> RelayProcess {
    let mut child = relay_without_secret(dir, &["--listen", "127.0.0.1:0"])
        .args(args)
        .env("ACCORD_RELAY_SECRET", secret)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn accord-relay");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("startup line");
    let addr = line
        .split("listening on ")
        .nth(1)
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .trim()
        .to_owned();
    RelayProcess {
        child,
        url: format!("ws://{addr}"),
    }
}

/// The relay's answer to a `Hello` carrying `token`.
async fn answer_to(url: &str, token: &str) -> Option<Frame> {
    let mut ws = raw(url).await;
    let hello = Frame::Hello {
        version: PROTOCOL_VERSION,
        peer_id: "rotation".into(),
        token: token.into(),
    };
    send(&mut ws, &hello).await;
    next_frame(&mut ws).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_previous_secret_verifies_tokens_only_while_it_is_configured() {
    use accord_relay::auth::{Right, Tokens};
    let dir = tempfile::tempdir().expect("tempdir");
    let old_secret = "the secret before the rotation, long";
    let new_secret = "the secret after the rotation, long";
    let old_file = dir.path().join("old-secret");
    std::fs::write(&old_file, format!("{old_secret}\n")).expect("write");
    let old_file = old_file.to_str().expect("utf-8 path");
    let rights = || [("c".to_owned(), Right::ReadWrite)].into();
    let ttl = Duration::from_secs(600);
    let old_token = Tokens::new(old_secret.as_bytes())
        .expect("secret")
        .mint(rights(), ttl);
    let new_token = Tokens::new(new_secret.as_bytes())
        .expect("secret")
        .mint(rights(), ttl);
    let welcomed = |answer: Option<Frame>| matches!(answer, Some(Frame::Welcome { .. }));

    // The overlap: both generations of tokens are accepted.
    let overlap = relay_with_secret(
        dir.path(),
        new_secret,
        &["--previous-secret-file", old_file],
    );
    assert!(
        welcomed(answer_to(&overlap.url, &old_token).await),
        "old token"
    );
    assert!(
        welcomed(answer_to(&overlap.url, &new_token).await),
        "new token"
    );
    drop(overlap);

    // The previous secret from the environment works the same.
    let mut cmd = relay_without_secret(dir.path(), &["--listen", "127.0.0.1:0"]);
    cmd.env("ACCORD_RELAY_SECRET", new_secret)
        .env("ACCORD_RELAY_PREVIOUS_SECRET", old_secret);
    let started = starts(cmd);
    assert!(
        started.line.starts_with("accord-relay listening on"),
        "{started:?}"
    );
    assert!(
        started
            .logged
            .contains("previous secrets are still accepted"),
        "{started:?}"
    );

    // After the overlap: old tokens are refused, new ones still welcome.
    let rotated = relay_with_secret(dir.path(), new_secret, &[]);
    match answer_to(&rotated.url, &old_token).await {
        Some(Frame::Error { code, message, .. }) => {
            assert_eq!(code, ErrorCode::UNAUTHORIZED, "{message}");
            assert!(message.contains("bad token signature"), "{message}");
        }
        other => panic!("expected the old token refused, got {other:?}"),
    }
    assert!(welcomed(answer_to(&rotated.url, &new_token).await));
    drop(rotated);

    // A previous secret without a current one is refused by name.
    let out = relay_without_secret(
        dir.path(),
        &[
            "--open",
            "--listen",
            "127.0.0.1:0",
            "--previous-secret-file",
            old_file,
        ],
    )
    .output()
    .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("only extend a current secret"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_relay_on_the_same_database_is_refused_and_the_first_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("relay.db");
    let first = spawn_relay(&db);
    let pid = first.child.id();

    let out = Command::new(env!("CARGO_BIN_EXE_accord-relay"))
        .args([
            "--open",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
        ])
        .arg("--db")
        .arg(&db)
        .stdin(Stdio::null())
        .output()
        .expect("run a second relay");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty(), "it never listened: {out:?}");
    assert!(
        stderr.contains(&db.display().to_string())
            && stderr.contains(&format!("pid {pid}"))
            && stderr.contains("already in use"),
        "{stderr}"
    );

    // The CLI's way in (a replica on the file) is not locked out.
    let local = Replica::open(&db).expect("open beside the relay");
    drop(local);

    // The first relay still serves.
    let a = Replica::open(dir.path().join("a.db")).expect("a");
    let id = a.create("c", &json!({"still": "served"})).expect("create");
    let options = ConnectOptions {
        collections: vec!["c".into()],
        ..ConnectOptions::default()
    };
    let mut handle = a.connect(&first.url, options);
    handle.wait_synced(T).await.expect("the first relay syncs");
    handle.close().await;
    let relay_side = Replica::open(&db).expect("relay db");
    assert_eq!(
        relay_side
            .get(&id)
            .expect("stored by the first relay")
            .value,
        json!({"still": "served"})
    );
}

/// `GET path` over plain HTTP on the relay's main port; the status line
/// and the body.
fn http_get(addr: &str, path: &str) -> (String, String) {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, body.to_owned())
}

#[test]
fn two_relays_with_default_settings_start_side_by_side_and_serve_http_on_their_port() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spawn = |name: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_accord-relay"))
            .args(["--open", "--listen", "127.0.0.1:0", "--db"])
            .arg(dir.path().join(name))
            .env_remove("ACCORD_RELAY_METRICS_LISTEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("startup line");
        (child, line)
    };
    let (mut first, first_line) = spawn("a.db");
    let (mut second, second_line) = spawn("b.db");
    let addrs: Vec<String> = [&first_line, &second_line]
        .iter()
        .map(|line| {
            line.split("listening on ")
                .nth(1)
                .unwrap_or_else(|| panic!("both relays start: {line:?}"))
                .trim()
                .to_owned()
        })
        .collect();
    for addr in &addrs {
        let (status, body) = http_get(addr, "/health");
        assert!(status.contains(" 200 "), "{addr}: {status}");
        assert!(body.contains("\"status\":\"ok\""), "{addr}: {body}");
        let (status, body) = http_get(addr, "/metrics");
        assert!(status.contains(" 200 "), "{addr}: {status}");
        assert!(body.contains("accord_relay_"), "{addr}: {body}");
        let (status, body) = http_get(addr, "/");
        assert!(status.contains(" 200 "), "{addr}: {status}");
        assert!(body.contains("<html"), "{addr}: the inspector page");
    }
    for child in [&mut first, &mut second] {
        child.kill().expect("kill");
        child.wait().expect("reap");
    }
}
