//! One Redis connection per thread that calls the store, opened on that thread's own
//! runtime, so a reserve or settle never crosses to another thread and back.
//!
//! Pingora runs each worker thread's requests on the thread's own runtime. A connection
//! opened there has its driver task (the one that writes commands to the socket and reads
//! the replies) on the same thread: a store call is a wake-up within the thread instead of
//! a wake-up of the separate store runtime's thread, and the calls of every request on the
//! thread that wait at the same moment go out in one write and come back in one read (the
//! connection pipelines them). The first call on a thread opens its connection in the
//! background and meanwhile uses the shared one, so no request waits for a connection.
//!
//! This module only picks a connection; timeouts, the breaker and metrics stay in
//! [`crate::store_client`]. A Redis Cluster target keeps the shared connection (a
//! per-thread cluster client would open a connection per node and thread).

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use creditgate_protocol::{Keyspace, RedisStore, RedisTarget};
use tracing::debug;

use crate::store_connect::RECONNECT_TIMEOUT_MS;

/// Pause before a thread tries again to open its own connection after a failed attempt, in
/// milliseconds. Its calls go over the shared connection meanwhile, so there is no hurry;
/// during a Redis outage each worker thread tries about once a second, not more.
pub const THREAD_RETRY_MS: u64 = 1_000;

/// How often a thread's own connection is pinged, in milliseconds. Nothing else uses it
/// between requests, so without the ping the first request after Redis restarted would be
/// the one to find the dead socket (and fail); the ping finds it instead, the connection
/// reconnects, and meanwhile the thread's calls go over the shared connection, which the
/// fleet's control poll keeps alive at the same pace.
pub const THREAD_PING_MS: u64 = 500;

/// Distinguishes the thread connections of several clients in one process (tests).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Where a thread's own connection stands.
#[derive(Debug)]
enum Opening {
    /// No attempt yet.
    NotStarted,
    /// A background task is opening it.
    InProgress,
    /// The last attempt failed at this instant; the next call after [`THREAD_RETRY_MS`]
    /// tries again.
    FailedAt(Instant),
}

/// One thread's connection: empty until opened.
struct Slot {
    store: OnceLock<Arc<RedisStore>>,
    opening: Mutex<Opening>,
    /// False while the last ping of the open connection failed: calls use the shared one.
    healthy: AtomicBool,
}

thread_local! {
    /// This thread's connections, by the id of the [`ThreadConnections`] that opened them.
    static SLOTS: RefCell<Vec<(u64, Arc<Slot>)>> = const { RefCell::new(Vec::new()) };
}

/// Opens and hands out the per-thread connections to one Redis server.
#[derive(Debug)]
pub struct ThreadConnections {
    id: u64,
    target: RedisTarget,
    keyspace: Keyspace,
    call_timeout_ms: u64,
    opened: Arc<AtomicU64>,
}

impl ThreadConnections {
    /// Per-thread connections to `target`; `None` for a cluster (see the module doc).
    pub fn new(target: &RedisTarget, keyspace: Keyspace, call_timeout_ms: u64) -> Option<Self> {
        match target {
            RedisTarget::Single(_) => Some(Self {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                target: target.clone(),
                keyspace,
                call_timeout_ms,
                opened: Arc::new(AtomicU64::new(0)),
            }),
            RedisTarget::Cluster(_) => None,
        }
    }

    /// How many per-thread connections have been opened so far.
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// The store for a call made on this thread: its own connection once open, else
    /// `shared`. The first call on a thread (and, after a failed attempt, the first call
    /// [`THREAD_RETRY_MS`] later) starts opening one on the thread's runtime.
    pub fn pick(&self, shared: &Arc<RedisStore>) -> Arc<RedisStore> {
        let slot = SLOTS.with_borrow_mut(|slots| {
            if let Some((_, slot)) = slots.iter().find(|(id, _)| *id == self.id) {
                return slot.clone();
            }
            let slot = Arc::new(Slot {
                store: OnceLock::new(),
                opening: Mutex::new(Opening::NotStarted),
                healthy: AtomicBool::new(true),
            });
            slots.push((self.id, slot.clone()));
            slot
        });
        if let Some(store) = slot.store.get() {
            if slot.healthy.load(Ordering::Relaxed) {
                return store.clone();
            }
            return shared.clone();
        }
        self.open_if_due(&slot);
        shared.clone()
    }

    /// Starts opening `slot`'s connection unless it is being opened or failed a moment ago.
    fn open_if_due(&self, slot: &Arc<Slot>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        {
            let mut opening = slot.opening.lock().unwrap_or_else(|p| p.into_inner());
            match *opening {
                Opening::InProgress => return,
                Opening::FailedAt(at) if at.elapsed() < retry_after() => return,
                Opening::NotStarted | Opening::FailedAt(_) => *opening = Opening::InProgress,
            }
        }
        let (slot, target, keyspace) = (slot.clone(), self.target.clone(), self.keyspace.clone());
        let (call_timeout_ms, opened) = (self.call_timeout_ms, self.opened.clone());
        runtime.spawn(async move {
            let attempt = tokio::time::timeout(
                Duration::from_millis(RECONNECT_TIMEOUT_MS),
                RedisStore::connect(&target, keyspace, call_timeout_ms),
            )
            .await;
            let mut opening = slot.opening.lock().unwrap_or_else(|p| p.into_inner());
            match attempt {
                Ok(Ok(store)) => {
                    let store = Arc::new(store);
                    let _ = slot.store.set(store.clone());
                    opened.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(keep_alive(Arc::downgrade(&slot), store));
                    debug!(thread = ?std::thread::current().id(), "opened this thread's own Redis connection");
                }
                Ok(Err(e)) => {
                    debug!(error = %e, "opening a thread's own Redis connection failed; it uses the shared one meanwhile");
                    *opening = Opening::FailedAt(Instant::now());
                }
                Err(_) => {
                    debug!(
                        timeout_ms = RECONNECT_TIMEOUT_MS,
                        "opening a thread's own Redis connection timed out; it uses the shared one meanwhile"
                    );
                    *opening = Opening::FailedAt(Instant::now());
                }
            }
        });
    }
}

/// Pings `store` every [`THREAD_PING_MS`] and records in `slot` whether it answered,
/// until the slot is gone.
async fn keep_alive(slot: std::sync::Weak<Slot>, store: Arc<RedisStore>) {
    let every = Duration::from_millis(THREAD_PING_MS);
    loop {
        tokio::time::sleep(every).await;
        let Some(slot) = slot.upgrade() else { return };
        let answered = matches!(tokio::time::timeout(every, store.ping()).await, Ok(Ok(())));
        if slot.healthy.swap(answered, Ordering::Relaxed) != answered {
            debug!(
                answered,
                "this thread's own Redis connection changed health"
            );
        }
    }
}

fn retry_after() -> Duration {
    Duration::from_millis(THREAD_RETRY_MS)
}

#[cfg(test)]
mod tests {
    use creditgate_protocol::CreditStore;
    use creditgate_testkit::RedisServer;

    use super::*;

    /// Waits up to 2 s for `threads` to have opened `n` connections.
    async fn opened(threads: &ThreadConnections, n: u64) -> u64 {
        for _ in 0..200 {
            if threads.opened() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        threads.opened()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_thread_calls_over_its_own_connection_once_it_is_open() {
        let redis = RedisServer::start().expect("redis-server");
        let target = RedisTarget::Single(redis.url());
        let keyspace = Keyspace::new("cgthread", 4);
        let shared = RedisStore::connect(&target, keyspace.clone(), 1_000)
            .await
            .expect("shared connection");
        let shared = Arc::new(shared);
        let threads = Arc::new(ThreadConnections::new(&target, keyspace, 1_000).expect("single"));
        // The first call goes over the shared connection and starts opening this thread's.
        assert!(Arc::ptr_eq(&threads.pick(&shared), &shared));
        assert_eq!(opened(&threads, 1).await, 1);
        let own = threads.pick(&shared);
        assert!(!Arc::ptr_eq(&own, &shared), "this thread's own connection");
        assert!(
            Arc::ptr_eq(&threads.pick(&shared), &own),
            "the same one every call"
        );
        own.balance("acme").await.expect("a call over it");
        // Another thread with its own runtime gets a connection of its own.
        let (other_threads, other_shared) = (threads.clone(), shared.clone());
        let other = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                other_threads.pick(&other_shared);
                opened(&other_threads, 2).await;
                other_threads.pick(&other_shared)
            })
        })
        .join()
        .expect("other thread");
        assert_eq!(threads.opened(), 2);
        assert!(!Arc::ptr_eq(&other, &own) && !Arc::ptr_eq(&other, &shared));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_that_fails_to_open_leaves_calls_on_the_shared_one() {
        let redis = RedisServer::start().expect("redis-server");
        let target = RedisTarget::Single(redis.url());
        let keyspace = Keyspace::new("cgthread", 4);
        let shared = Arc::new(
            RedisStore::connect(&target, keyspace.clone(), 1_000)
                .await
                .expect("shared connection"),
        );
        // Nothing listens there: every attempt fails, and calls keep the shared connection.
        let nowhere = RedisTarget::Single("redis://127.0.0.1:1/".into());
        let threads = ThreadConnections::new(&nowhere, keyspace, 1_000).expect("single");
        for _ in 0..5 {
            assert!(Arc::ptr_eq(&threads.pick(&shared), &shared));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(threads.opened(), 0);
        shared.balance("acme").await.expect("the shared one works");
    }

    #[test]
    fn a_cluster_keeps_the_shared_connection() {
        let cluster = RedisTarget::Cluster(vec!["redis://127.0.0.1:7000/".into()]);
        assert!(ThreadConnections::new(&cluster, Keyspace::new("cg", 4), 1_000).is_none());
    }
}
