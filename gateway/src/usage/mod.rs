//! Settling a `from_response` cost rule: reads the actual usage of a response as it passes
//! through the gateway (a header, a JSON body, an SSE stream; gzip or not) and decides the
//! amount to settle, with the fallback when usage cannot be read.
//!
//! Pure and synchronous: the proxy feeds body chunks in from `response_body_filter` and asks
//! for the [`Settlement`] in `logging`; tests feed chunks without a socket. Memory is bounded
//! by the rule's `inspect_max_bytes`.

pub mod gzip;
pub mod json;
pub mod request;
pub mod sse;

#[cfg(test)]
mod proptests;

use std::sync::Arc;

use creditgate_config::{ResponseUsage, UnitSource, UnitsValue};
use http::HeaderMap;

use self::gzip::Gunzip;
use self::json::{FieldsRead, read_fields};
use self::sse::SseReader;

/// How the amount of a response-priced request was found: the `outcome` label of
/// `creditgate_response_costs_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CostOutcome {
    /// From the usage header.
    Header,
    /// From the usage fields of a JSON body.
    Json,
    /// From the (final) usage event of a complete SSE stream.
    Sse,
    /// A stream that ended early: the usage seen so far or the per-event rule.
    StreamCut,
    /// No usage in the response: the fallback.
    Missing,
    /// Usage that does not parse (or an encoding the gateway cannot read): the fallback.
    Unparseable,
    /// More to inspect than `inspect_max_bytes`: the fallback.
    OverLimit,
}

impl CostOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::Json => "json",
            Self::Sse => "sse",
            Self::StreamCut => "stream_cut",
            Self::Missing => "missing",
            Self::Unparseable => "unparseable",
            Self::OverLimit => "over_limit",
        }
    }
}

/// The amount to settle and how it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// To settle, in the credit type's smallest unit (≤ the rule's `max`).
    pub amount: u64,
    /// How it was found.
    pub outcome: CostOutcome,
    /// Why usage could not be read, for the warn log of an `Unparseable` settlement.
    pub problem: Option<String>,
}

/// What the body is, as far as inspection goes.
#[derive(Debug)]
enum Body {
    /// Not inspected: the header settled it, or the rule reads no body fields.
    Ignored,
    /// A JSON document, buffered up to the limit and parsed at its end.
    Json { buffer: Vec<u8>, over_limit: bool },
    /// An SSE stream, read line by line.
    Sse(SseReader),
    /// An encoding the gateway does not decode.
    Undecodable(String),
}

/// Inspects one response for a `from_response` rule.
#[derive(Debug)]
pub struct ResponseInspector {
    usage: Arc<ResponseUsage>,
    max: u64,
    header_units: Option<UnitsValue>,
    body: Body,
    gunzip: Option<Gunzip>,
    complete: bool,
}

impl ResponseInspector {
    /// Starts inspecting a response with these headers under `usage`, capping at `max`.
    pub fn new(usage: Arc<ResponseUsage>, max: u64, headers: &HeaderMap) -> Self {
        let header_units = usage.header.as_ref().and_then(|header| {
            let source = UnitSource::Header(header.name.clone());
            match source.read(&HeaderValues(headers)) {
                UnitsValue::Missing => None,
                value => Some(value),
            }
        });
        let text = |name: http::HeaderName| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_ascii_lowercase())
                .unwrap_or_default()
        };
        let encoding = text(http::header::CONTENT_ENCODING);
        let stream = text(http::header::CONTENT_TYPE).starts_with("text/event-stream");
        let limit = usize::try_from(usage.inspect_max_bytes).unwrap_or(usize::MAX);
        let (body, gunzip) = if header_units.is_some() || !usage.reads_body() {
            (Body::Ignored, None)
        } else {
            let body = if stream {
                Body::Sse(SseReader::new(&usage.fields, limit))
            } else {
                Body::Json {
                    buffer: Vec::new(),
                    over_limit: false,
                }
            };
            match encoding.as_str() {
                "" | "identity" => (body, None),
                "gzip" | "x-gzip" => (body, Some(Gunzip::new())),
                other => (
                    Body::Undecodable(format!("content-encoding {other:?} is not inspected")),
                    None,
                ),
            }
        };
        Self {
            usage,
            max,
            header_units,
            body,
            gunzip,
            complete: false,
        }
    }

    /// This inspector without reading the body: for an upgraded connection (`101`), whose
    /// bytes are a tunnel's, not a response to read usage from. It settles from the usage
    /// header, else at the fallback.
    pub fn without_body(mut self) -> Self {
        self.body = Body::Ignored;
        self.gunzip = None;
        self
    }

    /// The amount, when the headers alone settle it (the usage header was there).
    pub fn known_from_headers(&self) -> Option<u64> {
        match (&self.header_units, &self.usage.header) {
            (Some(UnitsValue::Present(units)), Some(header)) => {
                Some(units.saturating_mul(header.rate).min(self.max))
            }
            _ => None,
        }
    }

    /// Reads the next body chunk as it is forwarded; `end_of_stream` marks the whole body
    /// as seen.
    pub fn feed(&mut self, chunk: &[u8], end_of_stream: bool) {
        if end_of_stream {
            self.complete = true;
        }
        if chunk.is_empty() || matches!(self.body, Body::Ignored | Body::Undecodable(_)) {
            return;
        }
        let limit = usize::try_from(self.usage.inspect_max_bytes).unwrap_or(usize::MAX);
        let fields = &self.usage.fields;
        let body = &mut self.body;
        let mut read = |bytes: &[u8]| -> bool {
            match body {
                Body::Json { buffer, over_limit } => {
                    if buffer.len() + bytes.len() > limit {
                        *over_limit = true;
                        *buffer = Vec::new();
                        false
                    } else {
                        buffer.extend_from_slice(bytes);
                        true
                    }
                }
                Body::Sse(reader) => {
                    reader.feed(bytes, fields);
                    true
                }
                Body::Ignored | Body::Undecodable(_) => false,
            }
        };
        match &mut self.gunzip {
            None => {
                read(chunk);
            }
            Some(gunzip) => {
                if let Err(e) = gunzip.feed(chunk, read) {
                    self.body = Body::Undecodable(format!("gzip body does not decode: {e}"));
                }
            }
        }
        if let Body::Json {
            over_limit: true, ..
        } = self.body
        {
            // Nothing more will be read: stop decompressing too.
            self.gunzip = None;
        }
    }

    /// The amount to settle. `complete` is false when the response ended early (the client
    /// went away, the upstream broke off or timed out) and the body filter never saw its end.
    pub fn settle(self) -> Settlement {
        let fallback = |outcome, problem| Settlement {
            amount: self.usage.fallback.min(self.max),
            outcome,
            problem,
        };
        match self.header_units {
            Some(UnitsValue::Present(_)) => {
                return Settlement {
                    amount: self.known_from_headers().unwrap_or(self.usage.fallback),
                    outcome: CostOutcome::Header,
                    problem: None,
                };
            }
            Some(_) => {
                let name = self.usage.header.as_ref().map_or("", |h| h.name.as_str());
                return fallback(
                    CostOutcome::Unparseable,
                    Some(format!("header {name} is not a unit count")),
                );
            }
            None => {}
        }
        match self.body {
            Body::Ignored => fallback(CostOutcome::Missing, None),
            Body::Undecodable(why) => fallback(CostOutcome::Unparseable, Some(why)),
            Body::Json {
                over_limit: true, ..
            } => fallback(CostOutcome::OverLimit, None),
            Body::Json { .. } if !self.complete => fallback(CostOutcome::StreamCut, None),
            Body::Json { buffer, .. } if buffer.is_empty() => fallback(CostOutcome::Missing, None),
            Body::Json { buffer, .. } => match read_fields(&buffer, &self.usage.fields) {
                FieldsRead::Garbage(why) => fallback(CostOutcome::Unparseable, Some(why)),
                FieldsRead::Values(values) => match self.usage.amount_of_fields(&values) {
                    Some(amount) => Settlement {
                        amount: amount.min(self.max),
                        outcome: CostOutcome::Json,
                        problem: None,
                    },
                    None => fallback(CostOutcome::Missing, None),
                },
            },
            Body::Sse(reader) => settle_stream(&self.usage, self.max, self.complete, reader),
        }
    }
}

/// The amount of an SSE stream: its last usage when it ended properly; when it was cut,
/// the larger of the usage seen so far and the per-event rule (with neither, the fallback).
fn settle_stream(usage: &ResponseUsage, max: u64, complete: bool, reader: SseReader) -> Settlement {
    let seen = reader.finish(&usage.fields);
    let from_fields = usage.amount_of_fields(&seen.values);
    let fallback = usage.fallback.min(max);
    if !complete {
        // Settle for what was produced: the larger of the usage seen so far and the
        // per-event rule; with neither, the fallback.
        let per_event = usage.per_event.map(|rate| seen.events.saturating_mul(rate));
        let amount = match (from_fields, per_event) {
            (None, None) => fallback,
            (a, b) => a.unwrap_or(0).max(b.unwrap_or(0)).min(max),
        };
        return Settlement {
            amount,
            outcome: CostOutcome::StreamCut,
            problem: None,
        };
    }
    match (from_fields, seen.garbage, seen.over_limit) {
        (Some(amount), _, _) => Settlement {
            amount: amount.min(max),
            outcome: CostOutcome::Sse,
            problem: None,
        },
        (None, Some(why), _) => Settlement {
            amount: fallback,
            outcome: CostOutcome::Unparseable,
            problem: Some(why),
        },
        (None, None, true) => Settlement {
            amount: fallback,
            outcome: CostOutcome::OverLimit,
            problem: None,
        },
        (None, None, false) => Settlement {
            amount: fallback,
            outcome: CostOutcome::Missing,
            problem: None,
        },
    }
}

/// Response headers as cost rules read them.
struct HeaderValues<'h>(&'h HeaderMap);

impl creditgate_config::RequestValues for HeaderValues<'_> {
    fn header_values(&self, name: &str) -> Vec<Option<&str>> {
        self.0
            .get_all(name)
            .iter()
            .map(|value| value.to_str().ok())
            .collect()
    }

    fn raw_query(&self) -> Option<&str> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use creditgate_config::{UsageField, UsageHeader, UsagePath};
    use std::io::Write;

    fn usage() -> ResponseUsage {
        ResponseUsage {
            header: Some(UsageHeader {
                name: "x-usage-units".into(),
                rate: 7,
            }),
            fields: ["usage.prompt_tokens", "usage.completion_tokens"]
                .iter()
                .zip([2, 6])
                .map(|(p, rate)| UsageField {
                    path: UsagePath::parse(p).expect("valid"),
                    rate,
                })
                .collect(),
            fallback: 500,
            per_event: Some(10),
            inspect_max_bytes: 256,
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().expect("header value"));
        }
        map
    }

    fn run(pairs: &[(&'static str, &str)], body: &[u8], complete: bool) -> Settlement {
        let mut inspector = ResponseInspector::new(Arc::new(usage()), 100_000, &headers(pairs));
        let chunks: Vec<&[u8]> = body.chunks(9).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            inspector.feed(chunk, complete && i + 1 == chunks.len());
        }
        if chunks.is_empty() {
            inspector.feed(b"", complete);
        }
        inspector.settle()
    }

    const JSON: &[u8] = br#"{"usage":{"prompt_tokens":1200,"completion_tokens":300}}"#;

    #[test]
    fn json_body_is_priced_per_field_and_the_header_wins() {
        let s = run(&[("content-type", "application/json")], JSON, true);
        assert_eq!((s.amount, s.outcome), (4_200, CostOutcome::Json));
        let s = run(&[("x-usage-units", "3")], JSON, true);
        assert_eq!((s.amount, s.outcome), (21, CostOutcome::Header));
        let s = run(&[("x-usage-units", "lots")], JSON, true);
        assert_eq!((s.amount, s.outcome), (500, CostOutcome::Unparseable));
    }

    #[test]
    fn fallbacks_for_missing_garbage_over_limit_and_unknown_encoding() {
        let s = run(&[], br#"{"id":"no usage"}"#, true);
        assert_eq!((s.amount, s.outcome), (500, CostOutcome::Missing));
        let s = run(&[], br#"{"usage":{"prompt_tokens":"x"}}"#, true);
        assert_eq!((s.amount, s.outcome), (500, CostOutcome::Unparseable));
        let big = format!(
            r#"{{"pad":"{}","usage":{{"prompt_tokens":1}}}}"#,
            "x".repeat(300)
        );
        let s = run(&[], big.as_bytes(), true);
        assert_eq!((s.amount, s.outcome), (500, CostOutcome::OverLimit));
        let s = run(&[("content-encoding", "br")], JSON, true);
        assert_eq!((s.amount, s.outcome), (500, CostOutcome::Unparseable));
    }

    #[test]
    fn an_upgraded_connection_settles_by_its_header_or_the_fallback() {
        let upgraded = |pairs: &[(&'static str, &str)]| {
            let mut inspector =
                ResponseInspector::new(Arc::new(usage()), 100_000, &headers(pairs)).without_body();
            // Tunnel bytes that happen to look like usage are not read.
            inspector.feed(JSON, false);
            inspector.feed(b"", true);
            inspector.settle()
        };
        let s = upgraded(&[]);
        assert_eq!((s.amount, s.outcome), (500, CostOutcome::Missing));
        let s = upgraded(&[("x-usage-units", "3")]);
        assert_eq!((s.amount, s.outcome), (21, CostOutcome::Header));
    }

    #[test]
    fn gzip_bodies_are_inspected_decompressed() {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(JSON).unwrap();
        let body = encoder.finish().unwrap();
        let s = run(&[("content-encoding", "gzip")], &body, true);
        assert_eq!((s.amount, s.outcome), (4_200, CostOutcome::Json));
    }

    #[test]
    fn streams_settle_from_the_final_usage_or_the_cut_rule() {
        let sse = [("content-type", "text/event-stream; charset=utf-8")];
        let mut stream = String::new();
        for _ in 0..6 {
            stream.push_str("data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n");
        }
        let full = format!(
            "{stream}data: {{\"usage\":{{\"prompt_tokens\":10,\"completion_tokens\":6}}}}\n\n"
        );
        let s = run(&sse, full.as_bytes(), true);
        assert_eq!((s.amount, s.outcome), (56, CostOutcome::Sse));
        let s = run(&sse, stream.as_bytes(), false);
        assert_eq!((s.amount, s.outcome), (60, CostOutcome::StreamCut));
        let s = run(&sse, stream.as_bytes(), true);
        assert_eq!((s.amount, s.outcome), (500, CostOutcome::Missing));
    }
}
