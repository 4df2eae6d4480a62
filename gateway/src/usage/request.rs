//! The up-front estimate of a `from_response` rule with `estimate_from`: one JSON field of
//! the request body (e.g. `max_tokens`) times a rate, plus a base, capped at the rule's `max`.
//!
//! Pure: the gateway reads at most `max_body_bytes` of the body (`crate::request_body`) and
//! hands them here; a body it could not read, or one without a usable field, reserves the
//! rule's fixed `estimate`, and every outcome is counted in
//! `creditgate_request_estimates_total`.

use std::slice;

use creditgate_config::{RequestEstimate, UsageField};

use super::json::{FieldsRead, read_fields};

/// How the reserved amount of a request was found: the `outcome` label of
/// `creditgate_request_estimates_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EstimateOutcome {
    /// From the field in the request body (possibly capped at `max`).
    Body,
    /// The body is JSON without the field (or empty): the fixed estimate.
    Missing,
    /// The body is not JSON, or the field is not a non-negative integer: the fixed estimate.
    Unparseable,
    /// The body is larger than `max_body_bytes` (by its `content-length`), or has no length
    /// up front (chunked): not read, the fixed estimate.
    OverLimit,
}

impl EstimateOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Body => "body",
            Self::Missing => "missing",
            Self::Unparseable => "unparseable",
            Self::OverLimit => "over_limit",
        }
    }
}

/// The amount to reserve and how it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Estimate {
    /// To reserve, in the credit type's smallest unit (≤ the rule's `max`).
    pub amount: u64,
    /// How it was found.
    pub outcome: EstimateOutcome,
    /// Why the body could not be used, for a debug log.
    pub problem: Option<String>,
}

/// The estimate for a request whose whole body is `body`; `fixed` is the rule's `estimate`,
/// `max` its `max` (both in the smallest unit).
pub fn estimate_from_body(body: &[u8], rule: &RequestEstimate, fixed: u64, max: u64) -> Estimate {
    let fallback = |outcome, problem| Estimate {
        amount: fixed,
        outcome,
        problem,
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return fallback(EstimateOutcome::Missing, Some("empty body".to_owned()));
    }
    let field = UsageField {
        path: rule.path.clone(),
        rate: rule.rate,
    };
    match read_fields(body, slice::from_ref(&field)) {
        FieldsRead::Values(values) => match values.first().copied().flatten() {
            Some(units) => Estimate {
                amount: rule.amount(units, max),
                outcome: EstimateOutcome::Body,
                problem: None,
            },
            None => fallback(
                EstimateOutcome::Missing,
                Some(format!("no {} in the body", rule.path.as_str())),
            ),
        },
        FieldsRead::Garbage(problem) => fallback(EstimateOutcome::Unparseable, Some(problem)),
    }
}

/// The estimate for a body the proxy did not read (too large, or no length up front).
pub fn estimate_unread(fixed: u64, why: &str) -> Estimate {
    Estimate {
        amount: fixed,
        outcome: EstimateOutcome::OverLimit,
        problem: Some(why.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use creditgate_config::UsagePath;

    fn rule() -> RequestEstimate {
        RequestEstimate {
            path: UsagePath::parse("max_tokens").expect("valid"),
            rate: 9,
            base: 100,
            max_body_bytes: 1_024,
        }
    }

    #[test]
    fn the_field_times_the_rate_plus_the_base_capped_at_max() {
        let read = estimate_from_body(br#"{"model":"m","max_tokens":500}"#, &rule(), 7, 10_000);
        assert_eq!((read.amount, read.outcome), (4_600, EstimateOutcome::Body));
        let capped = estimate_from_body(br#"{"max_tokens":5000}"#, &rule(), 7, 10_000);
        assert_eq!(
            (capped.amount, capped.outcome),
            (10_000, EstimateOutcome::Body)
        );
        let huge = estimate_from_body(br#"{"max_tokens":18446744073709551615}"#, &rule(), 7, 10);
        assert_eq!(huge.amount, 10, "saturates, then caps");
    }

    #[test]
    fn an_unusable_body_reserves_the_fixed_estimate() {
        for (body, outcome) in [
            (&b""[..], EstimateOutcome::Missing),
            (br#"{"model":"m"}"#, EstimateOutcome::Missing),
            (br#"{"max_tokens":null}"#, EstimateOutcome::Missing),
            (b"max_tokens=500", EstimateOutcome::Unparseable),
            (br#"{"max_tokens":-1}"#, EstimateOutcome::Unparseable),
            (br#"{"max_tokens":"500"}"#, EstimateOutcome::Unparseable),
            (br#"{"max_tokens":1.5}"#, EstimateOutcome::Unparseable),
        ] {
            let read = estimate_from_body(body, &rule(), 7, 10_000);
            assert_eq!((read.amount, read.outcome), (7, outcome), "{body:?}");
        }
        assert_eq!(
            estimate_unread(7, "too large").outcome,
            EstimateOutcome::OverLimit
        );
    }
}
