//! A webhook receiver on a free loopback port: records every POST it gets (headers and
//! body) and answers 200, or 500 for the first N requests, so a test can check what the
//! sidecar sent, how it signed it, and that it retried. It knows nothing about credits.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use tokio::sync::oneshot;

/// One request the receiver got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedWebhook {
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
    /// The status the receiver answered.
    pub answered: u16,
}

impl ReceivedWebhook {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Shared {
    received: Mutex<Vec<ReceivedWebhook>>,
    fail_first: AtomicU64,
}

/// The receiver; stops when dropped.
pub struct WebhookReceiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

async fn receive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let fail = shared
        .fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let status = if fail {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    let headers = headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    shared
        .received
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(ReceivedWebhook {
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            answered: status.as_u16(),
        });
    status
}

impl WebhookReceiver {
    /// Starts the receiver; the first `fail_first` requests get a 500.
    pub fn start(fail_first: u64) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared::default());
        shared.fail_first.store(fail_first, Ordering::SeqCst);
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("binding the webhook receiver")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let app = Router::new()
            .fallback(axum::routing::post(receive))
            .with_state(shared.clone());
        let thread = thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    })
                    .await;
            });
        });
        Ok(Self {
            addr,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The URL to configure, e.g. `http://127.0.0.1:PORT/hooks`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request received so far, in order.
    pub fn received(&self) -> Vec<ReceivedWebhook> {
        self.shared
            .received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
