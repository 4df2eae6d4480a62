//! A demo upstream for the quickstart: answers every request with a small JSON echo of what
//! the gateway forwarded (method, path, the customer header and the request id), so a
//! newcomer can see the gateway work with nothing else running. Not for production.

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

/// The demo upstream app.
pub struct DemoUpstream {
    customer_header: String,
}

impl DemoUpstream {
    /// A demo upstream that reports the customer from `customer_header`.
    pub fn new(customer_header: &str) -> Self {
        Self {
            customer_header: customer_header.to_string(),
        }
    }
}

#[async_trait]
impl ServeHttp for DemoUpstream {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let header = |name: &str| {
            req.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let body = json!({
            "demo_upstream": true,
            "method": req.method.as_str(),
            "path": req.uri.path(),
            "customer": header(&self.customer_header),
            "request_id": header("x-request-id"),
        });
        let bytes = serde_json::to_vec_pretty(&body).unwrap_or_default();
        Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .header("content-length", bytes.len() + 1)
            .body([bytes, b"\n".to_vec()].concat())
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}
