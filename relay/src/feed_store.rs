//! Where the change feed and webhooks read and keep their state: a single
//! relay's [`Replica`] on its SQLite file, or a cluster node's PostgreSQL
//! store ([`PgStore`], `cluster::feed`). Both keep the same things under
//! the same numbers (the collections' sequences, the webhooks' cursors and
//! dead letters), so the HTTP feed, `/v1/webhooks` and webhook delivery
//! are written once, against [`FeedStore`].

use std::sync::Arc;
use std::time::Duration;

use accord_engine::replica::{Filter, RecvError, Subscription};
use accord_engine::{Collection, DeadLetter, FeedEntry, Replica, Result};
use tokio::sync::broadcast;

use crate::cluster::feed::Lease;
use crate::cluster::store::PgStore;

/// How often a node that does not hold a webhook's lease tries to take
/// it, and a holder checks it still holds it while idle.
pub const LEASE_CHECK: Duration = Duration::from_secs(1);

/// The store the feed and webhooks use.
#[derive(Debug, Clone)]
pub enum FeedStore {
    /// A single relay's replica.
    Replica(Replica),
    /// A cluster node's PostgreSQL store.
    Cluster(Arc<PgStore>),
}

/// Runs `work` on `replica` on the blocking pool.
async fn blocking<T: Send + 'static>(
    replica: &Replica,
    work: impl FnOnce(&Replica) -> Result<T> + Send + 'static,
) -> Result<T> {
    let replica = replica.clone();
    tokio::task::spawn_blocking(move || work(&replica))
        .await
        .map_err(|e| {
            accord_engine::Error::Store(accord_engine::error::StoreError::Backend(format!(
                "the feed's read failed: {e}"
            )))
        })?
}

impl FeedStore {
    /// The records of `collection` changed after number `since` of its
    /// sequence, in sequence order, at most `limit`.
    pub async fn changes_since(
        &self,
        collection: &str,
        since: u64,
        limit: usize,
    ) -> Result<Vec<FeedEntry>> {
        match self {
            FeedStore::Replica(replica) => {
                let collection = collection.to_owned();
                blocking(replica, move |r| r.changes_since(&collection, since, limit)).await
            }
            FeedStore::Cluster(store) => store.changes_since(collection, since, limit).await,
        }
    }

    /// The last number `collection`'s sequence gave out (0: none).
    pub async fn last_seq(&self, collection: &str) -> Result<u64> {
        match self {
            FeedStore::Replica(replica) => {
                let collection = collection.to_owned();
                blocking(replica, move |r| r.collection_seq(&collection)).await
            }
            FeedStore::Cluster(store) => store.last_seq(collection).await,
        }
    }

    /// Where `consumer` (a webhook) stands in `collection`'s feed.
    pub async fn feed_cursor(&self, consumer: &str, collection: &str) -> Result<u64> {
        match self {
            FeedStore::Replica(replica) => {
                let (consumer, collection) = (consumer.to_owned(), collection.to_owned());
                blocking(replica, move |r| r.feed_cursor(&consumer, &collection)).await
            }
            FeedStore::Cluster(store) => store.feed_cursor(consumer, collection).await,
        }
    }

    /// Durably moves `consumer`'s cursor in `collection`'s feed.
    pub async fn set_feed_cursor(
        &self,
        consumer: &str,
        collection: &str,
        cursor: u64,
    ) -> Result<()> {
        match self {
            FeedStore::Replica(replica) => {
                let (consumer, collection) = (consumer.to_owned(), collection.to_owned());
                blocking(replica, move |r| {
                    r.set_feed_cursor(&consumer, &collection, cursor)
                })
                .await
            }
            FeedStore::Cluster(store) => store.set_feed_cursor(consumer, collection, cursor).await,
        }
    }

    /// Keeps a batch its consumer gave up on and moves the consumer past
    /// it, together.
    pub async fn give_up(&self, letter: DeadLetter) -> Result<()> {
        match self {
            FeedStore::Replica(replica) => blocking(replica, move |r| r.give_up(letter)).await,
            FeedStore::Cluster(store) => store.give_up(&letter).await,
        }
    }

    /// The dead letters of `consumer` (every consumer's with `None`),
    /// oldest first.
    pub async fn dead_letters(&self, consumer: Option<&str>) -> Result<Vec<DeadLetter>> {
        match self {
            FeedStore::Replica(replica) => {
                let consumer = consumer.map(str::to_owned);
                blocking(replica, move |r| r.dead_letters(consumer.as_deref())).await
            }
            FeedStore::Cluster(store) => store.dead_letters(consumer, None).await,
        }
    }

    /// The dead letter `id`, if it exists.
    pub async fn dead_letter(&self, id: i64) -> Result<Option<DeadLetter>> {
        match self {
            FeedStore::Replica(replica) => blocking(replica, move |r| r.dead_letter(id)).await,
            FeedStore::Cluster(store) => Ok(store.dead_letters(None, Some(id)).await?.pop()),
        }
    }

    /// Forgets dead letter `id`.
    pub async fn drop_dead_letter(&self, id: i64) -> Result<()> {
        match self {
            FeedStore::Replica(replica) => blocking(replica, move |r| r.drop_dead_letter(id)).await,
            FeedStore::Cluster(store) => store.drop_dead_letter(id).await,
        }
    }

    /// Starts listening for changes of `collections`: a change from now
    /// on wakes [`Wake::changed`].
    pub fn watch(&self, collections: &[String]) -> Wake {
        let source = match self {
            FeedStore::Replica(replica) => Source::Replica(replica.subscribe(match collections {
                [one] => Filter::Collection(one.clone()),
                _ => Filter::All,
            })),
            FeedStore::Cluster(store) => Source::Cluster(store.subscribe_changes()),
        };
        Wake {
            source,
            collections: collections.to_vec(),
        }
    }

    /// Waits until this node may deliver webhook `name`, and returns the
    /// right to; `None` if `stop` ends first. A single relay always may;
    /// on a cluster, one node at a time may (see `cluster::feed`).
    pub async fn lease(
        &self,
        name: &str,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Option<Delivering> {
        let FeedStore::Cluster(store) = self else {
            return Some(Delivering(None));
        };
        // Tried again on the same connection while it stays open.
        let mut lease: Option<Lease> = None;
        loop {
            if lease.as_ref().is_none_or(|l| !l.usable()) {
                lease = match store.lease(name).await {
                    Ok(lease) => Some(lease),
                    Err(e) => {
                        tracing::debug!(webhook = name, error = %e, "no connection for the webhook's lease");
                        None
                    }
                };
            }
            if let Some(candidate) = lease.as_mut() {
                match candidate.try_take().await {
                    Ok(true) => {
                        tracing::info!(webhook = name, "this node delivers the webhook");
                        return Some(Delivering(lease));
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::debug!(webhook = name, error = %e, "cannot try the webhook's lease")
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => return None,
                () = tokio::time::sleep(LEASE_CHECK) => {}
            }
        }
    }
}

/// The right to deliver a webhook (see [`FeedStore::lease`]).
#[derive(Debug)]
pub struct Delivering(Option<Lease>);

impl Delivering {
    /// Whether it still holds.
    pub fn held(&self) -> bool {
        self.0.as_ref().is_none_or(Lease::held)
    }
}

/// What wakes a reader waiting for collections to change.
pub struct Wake {
    /// Where changes are heard.
    source: Source,
    /// The collections waited for.
    collections: Vec<String>,
}

impl std::fmt::Debug for Wake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wake")
            .field("collections", &self.collections)
            .finish_non_exhaustive()
    }
}

/// Where a [`Wake`] hears of changes.
enum Source {
    /// A replica's change notifications.
    Replica(Subscription),
    /// Every collection a cluster node's store commits to or learns of.
    Cluster(broadcast::Receiver<Collection>),
}

impl Wake {
    /// Waits until one of the collections may have changed (a reader that
    /// fell behind is woken too); `false` once no change can come any
    /// more.
    pub async fn changed(&mut self) -> bool {
        let ours = |name: &str| self.collections.iter().any(|c| c == name);
        loop {
            match &mut self.source {
                Source::Replica(subscription) => match subscription.recv_async().await {
                    Ok(change) if !ours(&change.collection) => {}
                    Err(RecvError::Closed) => return false,
                    _ => return true,
                },
                Source::Cluster(changes) => match changes.recv().await {
                    Ok(changed) if !ours(&changed) => {}
                    Err(broadcast::error::RecvError::Closed) => return false,
                    _ => return true,
                },
            }
        }
    }

    /// Forgets what was heard so far (a read follows, which covers it).
    pub fn clear(&mut self) {
        match &mut self.source {
            Source::Replica(subscription) => while subscription.try_recv().is_some() {},
            Source::Cluster(changes) => *changes = changes.resubscribe(),
        }
    }
}
