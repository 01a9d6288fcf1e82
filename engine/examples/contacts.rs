//! A small contacts book: the whole offline-first loop in one program.
//!
//! It starts a relay in this process (on a free loopback port, with its
//! own SQLite file), then two replicas, "phone" and "laptop":
//!
//! 1. the phone adds contacts while offline;
//! 2. both connect; the laptop receives them through the collection;
//! 3. the laptop edits a contact while the phone is connected, and the
//!    phone sees it live;
//! 4. presence: the laptop says which contact it is looking at, and the
//!    phone hears it (passed on by the relay, never stored);
//! 5. both edit the same contact offline and converge after reconnecting.
//!
//! Run it with `cargo run -p accord-engine --example contacts`.

use std::time::Duration;

use accord_engine::{ConnectOptions, Filter, Replica};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, autosurgeon::Reconcile, autosurgeon::Hydrate)]
struct Contact {
    name: String,
    phone: String,
}

fn options() -> ConnectOptions {
    ConnectOptions {
        collections: vec!["contacts".into()],
        ..ConnectOptions::default()
    }
}

fn print_book(who: &str, replica: &Replica) -> Result<(), Box<dyn std::error::Error>> {
    println!("{who}'s contacts:");
    for meta in replica.list("contacts")? {
        let c: Contact = replica.get_typed(&meta.id)?;
        println!("  {:<10} {}", c.name, c.phone);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let url = relay::start(&dir.path().join("relay.db")).await?;
    let phone = Replica::open(dir.path().join("phone.db"))?;
    let laptop = Replica::open(dir.path().join("laptop.db"))?;

    println!("1. offline, the phone adds two contacts");
    let ada = phone.create_typed(
        "contacts",
        &Contact {
            name: "Ada".into(),
            phone: "555-0101".into(),
        },
    )?;
    phone.create_typed(
        "contacts",
        &Contact {
            name: "Grace".into(),
            phone: "555-0102".into(),
        },
    )?;

    println!("2. both connect to {url}");
    let mut phone_sync = phone.connect(&url, options());
    let mut laptop_sync = laptop.connect(&url, options());
    phone_sync.wait_synced(WAIT).await?;
    laptop_sync.wait_synced(WAIT).await?;
    while laptop.list("contacts")?.len() < 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    print_book("laptop", &laptop)?;

    println!("3. the laptop edits Ada; the phone sees it live");
    let events = phone.subscribe(Filter::Doc(ada));
    laptop.put(&ada, "phone", &json!("555-0199"), Some("new number"))?;
    let event = tokio::task::spawn_blocking(move || events.recv_timeout(WAIT)).await??;
    println!(
        "   phone got a {:?} change (remote: {})",
        event.kind,
        event.is_remote()
    );
    print_book("phone", &phone)?;

    println!("4. the laptop opens Ada's card; the phone hears who is looking");
    let mut looking = phone_sync.presence();
    laptop_sync.broadcast(&ada, b"viewing".to_vec()).await?;
    let seen = tokio::time::timeout(WAIT, looking.recv()).await??;
    let c: Contact = phone.get_typed(&seen.doc)?;
    println!(
        "   {} is {} {}",
        if seen.sender == laptop.peer_id().as_str() {
            "the laptop"
        } else {
            "someone"
        },
        String::from_utf8_lossy(&seen.data),
        c.name
    );

    println!("5. both edit Ada offline, then reconnect");
    phone_sync.close().await;
    laptop_sync.close().await;
    phone.put(&ada, "name", &json!("Ada Lovelace"), None)?;
    laptop.put(&ada, "phone", &json!("555-0100"), None)?;
    let mut phone_sync = phone.connect(&url, options());
    let mut laptop_sync = laptop.connect(&url, options());
    phone_sync.wait_synced(WAIT).await?;
    laptop_sync.wait_synced(WAIT).await?;
    while phone.heads(&ada)? != laptop.heads(&ada)? {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    print_book("phone", &phone)?;
    print_book("laptop", &laptop)?;
    Ok(())
}

/// The relay, run in-process for the example.
mod relay {
    use std::path::Path;

    pub async fn start(db: &Path) -> Result<String, Box<dyn std::error::Error>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("ws://{}", listener.local_addr()?);
        let config = accord_relay::Config {
            db: db.to_owned(),
            ..accord_relay::Config::default()
        };
        let shutdown = tokio_util::sync::CancellationToken::new();
        let relay = accord_relay::server::start(config, shutdown.clone()).await?;
        tokio::spawn(accord_relay::server::serve(listener, relay, shutdown));
        Ok(url)
    }
}
