//! Where a `from_response` cost rule reads the actual usage of a response (a header, JSON
//! usage fields, the usage events of an SSE stream) and the pure arithmetic that turns what
//! was read into an amount. Reading bytes off the wire is the gateway's job, not this one's.

use crate::limits::MAX_AMOUNT;

/// A dot-separated path of JSON object keys, e.g. `usage.prompt_tokens`, with its segments
/// split once at load time so the gateway walks a parsed body without allocating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsagePath {
    text: String,
    segments: Vec<String>,
}

impl UsagePath {
    /// Parses `a.b.c`: 1 to [`MAX_USAGE_PATH_SEGMENTS`] keys of `A-Z a-z 0-9 _ -`. Returns
    /// `None` for anything else (empty keys, spaces, array indices).
    pub fn parse(text: &str) -> Option<UsagePath> {
        let segments: Vec<String> = text.split('.').map(str::to_owned).collect();
        let valid = !text.is_empty()
            && segments.len() <= MAX_USAGE_PATH_SEGMENTS
            && segments.iter().all(|segment| {
                !segment.is_empty()
                    && segment
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            });
        valid.then(|| UsagePath {
            text: text.to_owned(),
            segments,
        })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The object keys, outermost first.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// The innermost key: a line of a stream that does not contain it cannot carry this
    /// field, so the gateway parses only lines that do.
    pub fn leaf(&self) -> &str {
        self.segments.last().map_or("", String::as_str)
    }
}

/// The most keys in a usage field path: 8. Usage objects of the APIs we know nest two or
/// three deep (`message.usage.input_tokens`).
pub const MAX_USAGE_PATH_SEGMENTS: usize = 8;

/// The most usage fields one rule may price: 16 (prompt, completion, cached, reasoning,
/// audio ... tokens, with room to spare); each is looked up in every inspected event.
pub const MAX_USAGE_FIELDS: usize = 16;

/// One priced usage field: its value (a non-negative integer in the response) times `rate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageField {
    /// Where the count is in the JSON body or in an SSE event's JSON data.
    pub path: UsagePath,
    /// Amount per counted unit, in the credit type's smallest unit (> 0).
    pub rate: u64,
}

/// A response header carrying a unit count (e.g. `x-usage-units`), priced at `rate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageHeader {
    /// The header name, in lower case.
    pub name: String,
    /// Amount per unit, in the credit type's smallest unit (> 0).
    pub rate: u64,
}

/// How a `from_response` rule reads the actual cost from the response.
///
/// The header wins when the response has it; otherwise the body is inspected for `fields`
/// (a JSON body, or the JSON `data:` of a `text/event-stream`, where the last value seen of
/// each field counts). A response without usage, with usage that does not parse, or with
/// more than `inspect_max_bytes` to inspect settles at `fallback`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseUsage {
    /// The unit-count header, if any.
    pub header: Option<UsageHeader>,
    /// Priced usage fields of the body, in file order (may be empty).
    pub fields: Vec<UsageField>,
    /// Charged when no usage could be read, in the smallest unit (≤ the rule's `max`);
    /// the rule's `estimate` unless the file says otherwise.
    pub fallback: u64,
    /// Charged per SSE event forwarded when a stream ends early (the client went away or
    /// the upstream broke off) before its final usage, in the smallest unit; `None`: such a
    /// stream settles at the usage seen so far, or at `fallback` when none was seen.
    pub per_event: Option<u64>,
    /// The most body bytes inspected per response: a JSON body larger than this (after
    /// decompression) settles at `fallback`, as does an SSE line longer than this.
    pub inspect_max_bytes: u64,
}

impl ResponseUsage {
    /// Whether the response body needs inspecting at all.
    pub fn reads_body(&self) -> bool {
        !self.fields.is_empty()
    }

    /// The amount for the last value seen of each field (`None`: not seen), or `None` when
    /// no field was seen. Products saturate; the caller caps at the rule's `max`.
    pub fn amount_of_fields(&self, values: &[Option<u64>]) -> Option<u64> {
        let mut seen = false;
        let mut total = 0u64;
        for (field, value) in self.fields.iter().zip(values) {
            if let Some(value) = value {
                seen = true;
                total = total.saturating_add(value.saturating_mul(field.rate));
            }
        }
        seen.then_some(total.min(MAX_AMOUNT))
    }
}

/// Where a `from_response` rule reads its up-front estimate in the request body:
/// `base + value × rate` of one JSON field (e.g. `max_tokens`), capped at the rule's `max`.
///
/// The body is read whether it comes with a `content-length` or chunked. A body the
/// gateway cannot use (larger than `max_body_bytes`, not read within
/// [`ESTIMATE_READ_TIMEOUT_MS`], not JSON, without the field, or with a field that is not a
/// non-negative integer) reserves the rule's `max`, so a client cannot shrink its
/// reservation by how it sends the body; `unreadable = Refuse` answers the size and
/// timeout cases with an error instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestEstimate {
    /// The JSON field of the request body with a unit count (e.g. `max_tokens`).
    pub path: UsagePath,
    /// Amount per unit of the field, in the credit type's smallest unit (> 0).
    pub rate: u64,
    /// Added to `value × rate`, in the smallest unit (≥ 0): an allowance for what the
    /// field does not count, such as the prompt.
    pub base: u64,
    /// The most request-body bytes read before reserving (1 to
    /// [`MAX_ESTIMATE_BODY_BYTES`]); a larger body reserves `max` or is refused, as
    /// `unreadable` says.
    pub max_body_bytes: u64,
    /// What a body that cannot be read within the bounds gets (`estimate_unreadable`).
    pub unreadable: UnreadableEstimate,
}

/// What the gateway does with a request whose body it cannot read for the estimate: larger
/// than `estimate_max_body_bytes`, or not complete within [`ESTIMATE_READ_TIMEOUT_MS`]
/// (`estimate_unreadable`). A body it did read but cannot use (not JSON, no field) always
/// reserves `max`: the request is well-formed, the upstream decides what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnreadableEstimate {
    /// Reserve the rule's `max` and forward the request.
    ReserveMax,
    /// Refuse it before the upstream sees it: `413` for a body larger than the bound,
    /// `411` for one without a `content-length` that does not end in time, `408` for one
    /// with a `content-length` that does not arrive in time.
    Refuse,
}

impl UnreadableEstimate {
    /// The name used in the file, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            UnreadableEstimate::ReserveMax => "reserve_max",
            UnreadableEstimate::Refuse => "refuse",
        }
    }
}

/// What an unreadable estimate body gets by default: `reserve_max`, which never refuses a
/// request that worked before and still never reserves less than the request may cost;
/// routes that would rather tell clients to send a smaller body say `refuse`.
pub const DEFAULT_UNREADABLE_ESTIMATE: UnreadableEstimate = UnreadableEstimate::ReserveMax;

/// How long the gateway waits for the request body it reads for an estimate, in
/// milliseconds: 5 s from the first read, ample for 64 KiB on any link a paying client
/// uses, short enough that a client trickling its body cannot hold a connection and a
/// decision open. Past it, the body counts as unreadable.
pub const ESTIMATE_READ_TIMEOUT_MS: u64 = 5_000;

impl RequestEstimate {
    /// The amount to reserve for `units` of the field: `base + units × rate`, saturating,
    /// capped at `max`, in the smallest unit.
    pub fn amount(&self, units: u64, max: u64) -> u64 {
        self.base
            .saturating_add(units.saturating_mul(self.rate))
            .min(max)
            .min(MAX_AMOUNT)
    }
}

/// The largest (and default) `estimate_max_body_bytes`: 64 KiB, the size of the request-body
/// buffer Pingora replays to the upstream. The gateway reads the body before reserving and
/// forwards what it read unchanged, then streams the rest; keeping the bound within the
/// buffer lets a body with a `content-length` replay from it.
pub const MAX_ESTIMATE_BODY_BYTES: u64 = 64 << 10;

/// The default `inspect_max_bytes`: 1 MiB. A chat completion's JSON body is a few KiB to a
/// few hundred KiB even for long answers; this keeps one in-flight request's inspection
/// buffer bounded while covering them.
pub const DEFAULT_INSPECT_MAX_BYTES: u64 = 1 << 20;

/// The largest `inspect_max_bytes`: 64 MiB. Buffering more per request would let a few
/// concurrent large responses exhaust the gateway's memory.
pub const MAX_INSPECT_MAX_BYTES: u64 = 64 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_dotted_keys_only() {
        let path = UsagePath::parse("message.usage.input_tokens").expect("valid");
        assert_eq!(path.segments(), ["message", "usage", "input_tokens"]);
        assert_eq!(path.leaf(), "input_tokens");
        for bad in [
            "",
            ".",
            "usage.",
            "usage..x",
            "usage.tokens[0]",
            "a b",
            "a.b.c.d.e.f.g.h.i",
        ] {
            assert_eq!(UsagePath::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn fields_are_priced_separately_and_saturate() {
        let usage = ResponseUsage {
            header: None,
            fields: vec![
                UsageField {
                    path: UsagePath::parse("usage.prompt_tokens").expect("valid"),
                    rate: 2,
                },
                UsageField {
                    path: UsagePath::parse("usage.completion_tokens").expect("valid"),
                    rate: 6,
                },
            ],
            fallback: 1,
            per_event: None,
            inspect_max_bytes: DEFAULT_INSPECT_MAX_BYTES,
        };
        assert_eq!(
            usage.amount_of_fields(&[Some(1_200), Some(300)]),
            Some(4_200)
        );
        assert_eq!(usage.amount_of_fields(&[None, Some(300)]), Some(1_800));
        assert_eq!(usage.amount_of_fields(&[None, None]), None);
        assert_eq!(
            usage.amount_of_fields(&[Some(u64::MAX), Some(1)]),
            Some(MAX_AMOUNT)
        );
    }
}
