//! The admin listener, apart from the proxy listener: `/metrics` (Prometheus text),
//! `/healthz` (the process is up) and `/readyz` (a valid config and a store that takes
//! writes with its circuit closed, or forced off locally: then no request needs the store).

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::control::FleetControl;
use crate::metrics::Metrics;
use crate::store_client::StoreClient;

/// How long `/readyz` waits for the store to answer, in milliseconds.
pub const READY_TIMEOUT_MS: u64 = 500;

/// The admin HTTP app.
pub struct AdminApp {
    metrics: Arc<Metrics>,
    store: Arc<StoreClient>,
    control: Arc<FleetControl>,
}

impl AdminApp {
    /// An admin app over these metrics, this store and this control.
    pub fn new(metrics: Arc<Metrics>, store: Arc<StoreClient>, control: Arc<FleetControl>) -> Self {
        Self {
            metrics,
            store,
            control,
        }
    }
}

fn response(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/metrics" => response(200, "text/plain; version=0.0.4", self.metrics.render()),
            "/healthz" => response(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                // Forced off, every request passes through without a store call, so a
                // gateway started (or left) under the kill switch while Redis is down
                // still takes traffic.
                if self.control.forced_off() || self.store.ready(READY_TIMEOUT_MS).await {
                    response(200, "text/plain", b"ready\n".to_vec())
                } else {
                    response(
                        503,
                        "text/plain",
                        b"credit store unreachable, refusing writes, or circuit open\n".to_vec(),
                    )
                }
            }
            _ => response(
                404,
                "text/plain",
                b"not found: try /metrics, /healthz, /readyz\n".to_vec(),
            ),
        }
    }
}
