//! Property tests of the response usage readers (JSON body, SSE stream, gzip): random and
//! mutated bodies never panic, and the settlement does not depend on where the body's chunk
//! boundaries fall, since the upstream and the network choose them, not the rule.

use std::io::Write;
use std::sync::Arc;

use creditgate_config::{ResponseUsage, UsageField, UsageHeader, UsagePath};
use flate2::Compression;
use flate2::write::GzEncoder;
use http::HeaderMap;
use proptest::prelude::*;

use super::{ResponseInspector, Settlement};

/// The most any test request is charged.
const MAX: u64 = 100_000;

fn usage(inspect_max_bytes: u64) -> ResponseUsage {
    ResponseUsage {
        header: Some(UsageHeader {
            name: "x-usage-units".into(),
            rate: 7,
        }),
        fields: ["usage.prompt_tokens", "usage.completion_tokens"]
            .iter()
            .zip([2, 6])
            .map(|(path, rate)| UsageField {
                path: UsagePath::parse(path).expect("valid"),
                rate,
            })
            .collect(),
        fallback: 500,
        per_event: Some(10),
        inspect_max_bytes,
    }
}

fn headers(stream: bool, gzip: bool) -> HeaderMap {
    let mut map = HeaderMap::new();
    let content_type = if stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    map.insert("content-type", content_type.parse().expect("value"));
    if gzip {
        map.insert("content-encoding", "gzip".parse().expect("value"));
    }
    map
}

/// Feeds `body` cut at `cuts` (positions modulo its length; repeats make empty chunks) and
/// settles; `complete` marks the last chunk as the end of the stream.
fn settle(limit: u64, map: &HeaderMap, body: &[u8], cuts: &[usize], complete: bool) -> Settlement {
    let mut inspector = ResponseInspector::new(Arc::new(usage(limit)), MAX, map);
    let mut at: Vec<usize> = cuts.iter().map(|cut| cut % (body.len() + 1)).collect();
    at.sort_unstable();
    let mut start = 0;
    for cut in at {
        inspector.feed(&body[start..cut], false);
        start = cut;
    }
    inspector.feed(&body[start..], complete);
    inspector.settle()
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(body).expect("in memory");
    encoder.finish().expect("in memory")
}

/// Applies `mutations` (position, byte, kind) to `body`: overwrite, insert or delete.
fn mutate(mut body: Vec<u8>, mutations: &[(usize, u8, u8)]) -> Vec<u8> {
    for &(at, byte, kind) in mutations {
        let at = at % (body.len() + 1);
        match (kind % 3, at < body.len()) {
            (0, true) => body[at] = byte,
            (1, true) => {
                body.remove(at);
            }
            _ => body.insert(at, byte),
        }
    }
    body
}

fn usage_json(prompt: u64, completion: u64, pad: &str) -> String {
    format!(
        r#"{{"pad":"{pad}","usage":{{"prompt_tokens":{prompt},"completion_tokens":{completion}}}}}"#
    )
}

/// JSON bodies: usage documents, ones with garbage in the fields, and random bytes.
fn json_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (0u64..5_000, 0u64..5_000, "[a-z]{0,120}")
            .prop_map(|(p, c, pad)| usage_json(p, c, &pad).into_bytes()),
        "\\{\"usage\":\\{\"prompt_tokens\":(-1|1\\.5|\"x\"|null|[0-9]{1,25})\\}\\}"
            .prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..200),
    ]
}

/// One SSE line: content, a usage event, a comment, a blank line or noise.
fn sse_line() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z ]{0,20}".prop_map(|text| format!(
            r#"data: {{"choices":[{{"delta":{{"content":"{text}"}}}}]}}"#
        )),
        (0u64..1_000, 0u64..1_000, "[a-z]{0,80}")
            .prop_map(|(p, c, pad)| format!("data: {}", usage_json(p, c, &pad))),
        Just(String::new()),
        Just(": keep-alive".to_string()),
        Just("data: [DONE]".to_string()),
        "data: \\{\"usage\":\\{\"prompt_tokens\":[-x0-9.]{0,4}\\}".prop_map(|line| line),
        "[ -~]{0,30}",
    ]
}

fn sse_body() -> impl Strategy<Value = Vec<u8>> {
    (prop::collection::vec((sse_line(), any::<bool>()), 0..12)).prop_map(|lines| {
        let mut body = String::new();
        for (line, crlf) in lines {
            body.push_str(&line);
            body.push_str(if crlf { "\r\n" } else { "\n" });
        }
        body.into_bytes()
    })
}

fn cuts() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(any::<usize>(), 0..8)
}

fn mutations() -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
    prop::collection::vec(any::<(usize, u8, u8)>(), 0..4)
}

proptest! {
    #[test]
    fn json_bodies_settle_the_same_whatever_the_chunks(
        body in json_body(),
        mutations in mutations(),
        cuts in cuts(),
        limit in 16u64..400,
        complete in any::<bool>(),
    ) {
        let body = mutate(body, &mutations);
        let map = headers(false, false);
        let whole = settle(limit, &map, &body, &[], complete);
        prop_assert!(whole.amount <= MAX);
        prop_assert_eq!(settle(limit, &map, &body, &cuts, complete), whole);
    }

    #[test]
    fn streams_settle_the_same_whatever_the_chunks(
        body in sse_body(),
        mutations in mutations(),
        cuts in cuts(),
        limit in 16u64..400,
        complete in any::<bool>(),
    ) {
        let body = mutate(body, &mutations);
        let map = headers(true, false);
        let whole = settle(limit, &map, &body, &[], complete);
        prop_assert!(whole.amount <= MAX);
        prop_assert_eq!(settle(limit, &map, &body, &cuts, complete), whole);
    }

    #[test]
    fn gzip_bodies_settle_as_the_plain_body_whatever_the_chunks(
        body in prop_oneof![json_body(), sse_body()],
        stream in any::<bool>(),
        cuts in cuts(),
        limit in 16u64..400,
    ) {
        let compressed = gzip(&body);
        let plain = settle(limit, &headers(stream, false), &body, &[], true);
        let map = headers(stream, true);
        prop_assert_eq!(settle(limit, &map, &compressed, &[], true), plain.clone());
        prop_assert_eq!(settle(limit, &map, &compressed, &cuts, true), plain);
    }

    #[test]
    fn mutated_gzip_never_panics_and_charges_the_same_whatever_the_chunks(
        body in prop_oneof![json_body(), sse_body()],
        stream in any::<bool>(),
        mutations in mutations(),
        cuts in cuts(),
        limit in 16u64..400,
    ) {
        let compressed = mutate(gzip(&body), &mutations);
        let map = headers(stream, true);
        let whole = settle(limit, &map, &compressed, &[], true);
        prop_assert!(whole.amount <= MAX);
        // Where a corrupt stream also crosses the limit, which is noticed first may depend
        // on the chunks (the label), never the amount: both settle the fallback.
        prop_assert_eq!(settle(limit, &map, &compressed, &cuts, true).amount, whole.amount);
    }
}
