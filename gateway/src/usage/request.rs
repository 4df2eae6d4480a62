//! The up-front estimate of a `from_response` rule with `estimate_from`: one JSON field of
//! the request body (e.g. `max_tokens`) times a rate, plus a base, capped at the rule's `max`.
//!
//! Pure: the gateway reads at most `max_body_bytes` of the body (`crate::request_body`) and
//! hands them here. A body without a usable field reserves the rule's `max`, and one it could
//! not read in time or within the bound reserves `max` too, or is refused where the rule says
//! `estimate_unreadable = "refuse"`: how a client sends its body never shrinks what is
//! reserved. Every outcome is counted in `creditgate_request_estimates_total`.

use std::slice;

use creditgate_config::{RequestEstimate, UnreadableEstimate, UsageField};

use super::json::{FieldsRead, read_fields};
use crate::responses::Refusal;

/// How the reserved amount of a request was found: the `outcome` label of
/// `creditgate_request_estimates_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EstimateOutcome {
    /// From the field in the request body (possibly capped at `max`).
    Body,
    /// The body is JSON without the field (or empty): `max`.
    Missing,
    /// The body is not JSON, or the field is not a non-negative integer: `max`.
    Unparseable,
    /// The body is larger than `max_body_bytes` (by its `content-length`, or read that far
    /// without one): `max`, or refused.
    OverLimit,
    /// The body did not end within the read timeout: `max`, or refused.
    Timeout,
}

impl EstimateOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Body => "body",
            Self::Missing => "missing",
            Self::Unparseable => "unparseable",
            Self::OverLimit => "over_limit",
            Self::Timeout => "timeout",
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

/// Why a body could not be read for the estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unread {
    /// Larger than `max_body_bytes`: `length` is its `content-length` when it has one.
    TooLarge {
        /// The announced length in bytes, if any.
        length: Option<u64>,
    },
    /// Not complete within the read timeout; `length_known`: it has a `content-length`.
    TimedOut {
        /// Whether the body announced its length.
        length_known: bool,
    },
}

/// The estimate for a request whose whole body is `body`; `max` is the rule's `max` (in the
/// smallest unit), reserved when the body has no usable field.
pub fn estimate_from_body(body: &[u8], rule: &RequestEstimate, max: u64) -> Estimate {
    let fallback = |outcome, problem| Estimate {
        amount: max,
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

/// The estimate for a body the gateway could not read (`why`): the rule's `max`, or the
/// refusal its `estimate_unreadable = "refuse"` asks for (413 too large, 411 no length and
/// not ended in time, 408 an announced length not arrived in time).
pub fn estimate_unread(rule: &RequestEstimate, max: u64, why: Unread) -> Result<Estimate, Refusal> {
    let bound = rule.max_body_bytes;
    let (outcome, problem) = match why {
        Unread::TooLarge {
            length: Some(length),
        } => (
            EstimateOutcome::OverLimit,
            format!(
                "the request body has {length} bytes, more than the {bound} read to estimate its cost"
            ),
        ),
        Unread::TooLarge { length: None } => (
            EstimateOutcome::OverLimit,
            format!(
                "the request body, sent without content-length, is longer than the {bound} bytes read to estimate its cost"
            ),
        ),
        Unread::TimedOut { .. } => (
            EstimateOutcome::Timeout,
            "the request body did not arrive in time to estimate its cost".to_owned(),
        ),
    };
    if rule.unreadable == UnreadableEstimate::Refuse {
        return Err(match why {
            Unread::TooLarge { .. } => Refusal::body_too_large(&problem),
            Unread::TimedOut {
                length_known: false,
            } => Refusal::length_required(&format!("{problem}; send it with a content-length")),
            Unread::TimedOut { length_known: true } => Refusal::body_timeout(&problem),
        });
    }
    Ok(Estimate {
        amount: max,
        outcome,
        problem: Some(problem),
    })
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
            unreadable: UnreadableEstimate::ReserveMax,
        }
    }

    #[test]
    fn the_field_times_the_rate_plus_the_base_capped_at_max() {
        let read = estimate_from_body(br#"{"model":"m","max_tokens":500}"#, &rule(), 10_000);
        assert_eq!((read.amount, read.outcome), (4_600, EstimateOutcome::Body));
        let capped = estimate_from_body(br#"{"max_tokens":5000}"#, &rule(), 10_000);
        assert_eq!(
            (capped.amount, capped.outcome),
            (10_000, EstimateOutcome::Body)
        );
        let huge = estimate_from_body(br#"{"max_tokens":18446744073709551615}"#, &rule(), 10);
        assert_eq!(huge.amount, 10, "saturates, then caps");
    }

    #[test]
    fn an_unusable_body_reserves_max() {
        for (body, outcome) in [
            (&b""[..], EstimateOutcome::Missing),
            (br#"{"model":"m"}"#, EstimateOutcome::Missing),
            (br#"{"max_tokens":null}"#, EstimateOutcome::Missing),
            (b"max_tokens=500", EstimateOutcome::Unparseable),
            (br#"{"max_tokens":-1}"#, EstimateOutcome::Unparseable),
            (br#"{"max_tokens":"500"}"#, EstimateOutcome::Unparseable),
            (br#"{"max_tokens":1.5}"#, EstimateOutcome::Unparseable),
        ] {
            let read = estimate_from_body(body, &rule(), 10_000);
            assert_eq!((read.amount, read.outcome), (10_000, outcome), "{body:?}");
        }
    }

    #[test]
    fn an_unread_body_reserves_max_or_is_refused_as_the_rule_says() {
        let cases = [
            (
                Unread::TooLarge {
                    length: Some(5_000),
                },
                EstimateOutcome::OverLimit,
                413,
            ),
            (
                Unread::TooLarge { length: None },
                EstimateOutcome::OverLimit,
                413,
            ),
            (
                Unread::TimedOut {
                    length_known: false,
                },
                EstimateOutcome::Timeout,
                411,
            ),
            (
                Unread::TimedOut { length_known: true },
                EstimateOutcome::Timeout,
                408,
            ),
        ];
        for (why, outcome, status) in cases {
            let read = estimate_unread(&rule(), 10_000, why).expect("reserve_max");
            assert_eq!((read.amount, read.outcome), (10_000, outcome), "{why:?}");
            let refusing = RequestEstimate {
                unreadable: UnreadableEstimate::Refuse,
                ..rule()
            };
            let refusal = estimate_unread(&refusing, 10_000, why).expect_err("refuse");
            assert_eq!(refusal.status, status, "{why:?}");
        }
    }
}
