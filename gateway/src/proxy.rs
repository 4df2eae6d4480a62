//! The gateway's one Pingora `ProxyHttp` implementation: one callback per request phase,
//! each calling into the modules that do the work. `request_filter` admits the request and
//! reserves its credits ([`CreditGate::admit`]: `crate::admission` decides,
//! `crate::hold::Holds::reserve_for_request` reserves) and may answer early; `logging`,
//! which runs for every request, errors included, hands the hold to a background settle or
//! void (`crate::hold::Holds::settle_or_void`), so the connection is free for its next
//! request while the store call runs.
//!
//! Routes that estimate from the request (`estimate_from`) read a bounded request body in
//! `request_filter` before reserving; Pingora's retry buffer forwards it unchanged, or,
//! for a chunked body that outgrew it, `request_body_filter` puts the bytes read back in
//! front of the rest (`crate::request_body`).
//! Routes priced from the response hand each body chunk to a response inspector
//! (`crate::usage`) in `response_body_filter`; `logging` settles what it read.
//!
//! Nothing here but the callbacks: no pricing, no store calls.
//!
//! ```text
//! curl -s localhost:8000/search -H 'authorization: Bearer demo-key' -i
//! ```

use std::time::Duration;

use async_trait::async_trait;
use creditgate_config::DEFAULT_UPSTREAM;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::{HttpPeer, ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};

use crate::gate::{CreditGate, RequestCtx};
use crate::request_body::put_back;
use crate::responses::{HEADER_PRICING_VERSION, HEADER_REPLAY, HEADER_REQUEST_ID};

#[async_trait]
impl ProxyHttp for CreditGate {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        self.in_flight.enter();
        ctx.counted = true;
        let config = self.config.load_full();
        ctx.config = Some(config.clone());
        match self.admit(session, ctx, &config).await {
            Ok(()) => Ok(false),
            Err(refusal) => {
                refusal.send(session, &ctx.request_id).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let config = ctx
            .config
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no config for request"))?;
        let name = ctx.upstream.as_deref().unwrap_or(DEFAULT_UPSTREAM);
        let upstream = config.upstreams().get(name).ok_or_else(|| {
            Error::explain(
                ErrorType::InternalError,
                format!("route names upstream {name:?}, which is not configured"),
            )
        })?;
        let mut peer = HttpPeer::new(
            upstream.address.as_str(),
            upstream.tls,
            upstream.sni.clone().unwrap_or_default(),
        );
        peer.options.connection_timeout = Some(Duration::from_millis(upstream.connect_timeout_ms));
        peer.options.read_timeout = Some(Duration::from_millis(upstream.read_timeout_ms));
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(config) = &ctx.config {
            let identity = config.identity();
            for name in &identity.strip_headers {
                upstream_request.remove_header(name.as_str());
            }
            upstream_request.remove_header(identity.customer_header.as_str());
            if let Some(customer) = &ctx.customer {
                upstream_request
                    .insert_header(identity.customer_header.clone(), customer.as_str())?;
            }
        }
        if ctx.body_read {
            // Already answered with 100 Continue, and the body is sent right behind.
            upstream_request.remove_header(&http::header::EXPECT);
        }
        upstream_request.insert_header(HEADER_REQUEST_ID, ctx.request_id.as_str())?;
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(read) = ctx.body_put_back.take() {
            put_back(read, body);
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Every status, interim ones too: `101` ends in a tunnel the customer pays for.
        ctx.upstream_answered(
            upstream_response.status.as_u16(),
            &upstream_response.headers,
        );
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        ctx.response_body(body.as_deref().unwrap_or_default(), end_of_stream);
        Ok(None)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(charge) = &ctx.charge {
            charge.insert_headers(response)?;
        }
        if let Some(version) = &ctx.pricing_version {
            response.insert_header(HEADER_PRICING_VERSION, version.as_str())?;
        }
        response.insert_header(HEADER_REQUEST_ID, ctx.request_id.as_str())?;
        if let Some(replay) = ctx.replay {
            response.insert_header(HEADER_REPLAY, replay.to_string())?;
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut RequestCtx) {
        self.finish(session, error, ctx);
        if ctx.counted {
            self.in_flight.leave();
        }
    }
}
