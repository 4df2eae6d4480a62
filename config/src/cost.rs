//! Cost rules and the pure arithmetic of how much to reserve before a request goes upstream.
//!
//! Nothing here does I/O or reads a clock: the gateway hands in a [`RequestValues`] view of
//! the request, and settling from the response is the gateway's job.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use crate::limits::MAX_AMOUNT;
use crate::request_target::query_values;
use crate::usage::{RequestEstimate, ResponseUsage};

/// How a feature is priced. Every amount is an integer in the smallest unit of the feature's
/// credit type and at most [`MAX_AMOUNT`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CostRule {
    /// Costs nothing (`kind = "free"`): a known, routed endpoint that burns no credits.
    /// A `fixed` rule must cost more than zero, so a free route is always explicit.
    Free,
    /// The same `amount` (> 0) for every request (`kind = "fixed"`).
    Fixed {
        /// Charged per request, in the smallest unit.
        amount: u64,
    },
    /// `units × rate`, capped at `max` (`kind = "per_unit"`), with the units read from a
    /// request header or query parameter.
    PerUnit {
        /// Where the unit count comes from.
        source: UnitSource,
        /// Amount per unit, in the smallest unit (> 0, ≤ `max`).
        rate: u64,
        /// The most one request is ever charged, in the smallest unit (> 0).
        max: u64,
        /// Units assumed when the value is missing; `None` means "charge `max`", so a
        /// request that does not say how much it uses never pays less than the most it could
        /// use. A value that is not a whole number, or given twice with different values, is
        /// refused by the gateway ([`CostRule::checked_reserve_amount`]).
        default_units: Option<u64>,
    },
    /// Priced from the response (`kind = "from_response"`): `estimate` is reserved up front
    /// and the actual cost, read from the response as `usage` says, is settled and capped at
    /// `max`. A rule without a header or usage fields settles at its fallback.
    FromResponse {
        /// Reserved before the request goes upstream, in the smallest unit (> 0).
        estimate: u64,
        /// The most one request is ever charged, in the smallest unit (≥ `estimate`).
        max: u64,
        /// Where the actual usage is read and what is charged when it cannot be; shared, so
        /// the gateway hands it to each response's inspector without copying it.
        usage: Arc<ResponseUsage>,
        /// Where the request body says how much to reserve instead of `estimate`
        /// (`estimate_from`); `None` always reserves `estimate`.
        estimate_from: Option<Arc<RequestEstimate>>,
    },
}

impl CostRule {
    /// The rule's `kind` as written in the file.
    pub fn kind(&self) -> &'static str {
        match self {
            CostRule::Free => "free",
            CostRule::Fixed { .. } => "fixed",
            CostRule::PerUnit { .. } => "per_unit",
            CostRule::FromResponse { .. } => "from_response",
        }
    }

    /// The amount to reserve before forwarding `request`, in the smallest unit.
    ///
    /// - `free`: 0; `fixed`: the amount.
    /// - `per_unit`: `units × rate` capped at `max` (the product saturates, so it never
    ///   overflows); a missing, unparseable or conflicting value counts as `default_units`,
    ///   or as `max` when the rule has no `default_units`.
    /// - `from_response`: the fixed estimate. A rule with `estimate_from` reserves from the
    ///   request body instead, which the gateway reads itself (see [`RequestEstimate`]),
    ///   and reserves `max` when the body cannot be used.
    ///
    /// The result is never above [`MAX_AMOUNT`] for a validated rule.
    pub fn reserve_amount<R: RequestValues + ?Sized>(&self, request: &R) -> u64 {
        match self {
            CostRule::Free => 0,
            CostRule::Fixed { amount } => *amount,
            CostRule::PerUnit {
                source,
                rate,
                max,
                default_units,
            } => match (source.read(request), *default_units) {
                // Total on purpose: the gateway refuses unparseable and conflicting values
                // first (`checked_reserve_amount`); this is the reading of tools that price
                // without a client to answer.
                (UnitsValue::Present(units), _) | (_, Some(units)) => {
                    units.saturating_mul(*rate).min(*max)
                }
                (_, None) => *max,
            },
            CostRule::FromResponse { estimate, .. } => *estimate,
        }
    }

    /// As [`Self::reserve_amount`], but a `per_unit` value that is not a whole number, or
    /// is given more than once with different values, is an error naming where it was read,
    /// for the gateway to answer 400: the upstream would read some unit count the gateway
    /// cannot know. A missing value is not an error (it is `default_units`).
    pub fn checked_reserve_amount<R: RequestValues + ?Sized>(
        &self,
        request: &R,
    ) -> Result<u64, UnitsError> {
        if let CostRule::PerUnit { source, .. } = self {
            let problem = match source.read(request) {
                UnitsValue::Unparseable => Some(UnitsProblem::NotAWholeNumber),
                UnitsValue::Conflicting => Some(UnitsProblem::Conflicting),
                UnitsValue::Present(_) | UnitsValue::Missing => None,
            };
            if let Some(problem) = problem {
                return Err(UnitsError {
                    source: source.clone(),
                    problem,
                });
            }
        }
        Ok(self.reserve_amount(request))
    }

    /// The most a single request can be charged under this rule, in the smallest unit.
    pub fn max_amount(&self) -> u64 {
        match self {
            CostRule::Free => 0,
            CostRule::Fixed { amount } => *amount,
            CostRule::PerUnit { max, .. } | CostRule::FromResponse { max, .. } => *max,
        }
        .min(MAX_AMOUNT)
    }
}

/// Where a `per_unit` rule reads its unit count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitSource {
    /// A request header; the name is stored in lower case.
    Header(String),
    /// A query-string parameter, found by its decoded name, ignoring ASCII case (see
    /// [`query_values`]).
    Query(String),
}

impl fmt::Display for UnitSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnitSource::Header(name) => write!(f, "header {name}"),
            UnitSource::Query(name) => write!(f, "query parameter {name}"),
        }
    }
}

/// What is wrong with a request's unit count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitsProblem {
    /// Not a decimal integer that fits in `u64` (negative, fractional, signed, empty, …).
    NotAWholeNumber,
    /// Given more than once, with different values.
    Conflicting,
}

/// A unit count the gateway refuses (400), and where it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitsError {
    /// The header or query parameter.
    pub source: UnitSource,
    /// What is wrong with it.
    pub problem: UnitsProblem,
}

impl fmt::Display for UnitsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problem {
            UnitsProblem::NotAWholeNumber => write!(f, "{} is not a whole number", self.source),
            UnitsProblem::Conflicting => write!(
                f,
                "{} is given more than once with different values",
                self.source
            ),
        }
    }
}

impl std::error::Error for UnitsError {}

impl UnitSource {
    /// Reads and parses the unit count from `request`, looking at every occurrence.
    ///
    /// A value is a decimal integer, optionally surrounded by white space (so `?n=+10`,
    /// which forms decode to `" 10"`, is 10); anything else (negative, signed, fractional,
    /// too large for `u64`, empty, not text) is [`UnitsValue::Unparseable`]. Occurrences
    /// that all spell the same number are that number; different numbers are
    /// [`UnitsValue::Conflicting`].
    pub fn read<R: RequestValues + ?Sized>(&self, request: &R) -> UnitsValue {
        let values: Vec<Option<Cow<'_, str>>> = match self {
            UnitSource::Header(name) => request
                .header_values(name)
                .into_iter()
                .map(|value| value.map(Cow::Borrowed))
                .collect(),
            UnitSource::Query(name) => request
                .raw_query()
                .map(|query| query_values(query, name).into_iter().map(Some).collect())
                .unwrap_or_default(),
        };
        let mut units = UnitsValue::Missing;
        for value in values {
            let Some(parsed) = value.as_deref().and_then(parse_units) else {
                return UnitsValue::Unparseable;
            };
            units = match units {
                UnitsValue::Present(first) if first != parsed => UnitsValue::Conflicting,
                UnitsValue::Conflicting => UnitsValue::Conflicting,
                _ => UnitsValue::Present(parsed),
            };
        }
        units
    }
}

/// A unit count: ASCII digits, optionally surrounded by white space, that fit in `u64`.
fn parse_units(raw: &str) -> Option<u64> {
    let digits = raw.trim();
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The unit count found in a request, so the gateway can tell "absent" from "garbage" (and,
/// say, answer 400 to garbage) while [`CostRule::reserve_amount`] stays total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitsValue {
    /// A valid count.
    Present(u64),
    /// The header or parameter is not in the request.
    Missing,
    /// It is there but not a non-negative decimal integer that fits in `u64`.
    Unparseable,
    /// It is there more than once, with different numbers.
    Conflicting,
}

/// A read-only view of the request values cost rules may read. The gateway implements it over
/// its request header; tests implement it over a map.
pub trait RequestValues {
    /// Every value of header `name` (given in lower case; look it up case-insensitively), in
    /// the order received; a value that is not text is `None`. Empty when absent.
    fn header_values(&self, name: &str) -> Vec<Option<&str>>;
    /// The query string as received (not decoded), without the `?`; `None` without one.
    fn raw_query(&self) -> Option<&str>;
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Request {
        headers: Vec<(&'static str, &'static str)>,
        query: &'static str,
    }

    impl RequestValues for Request {
        fn header_values(&self, name: &str) -> Vec<Option<&str>> {
            self.headers
                .iter()
                .filter(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| Some(*value))
                .collect()
        }

        fn raw_query(&self) -> Option<&str> {
            Some(self.query)
        }
    }

    fn request(headers: Vec<(&'static str, &'static str)>, query: &'static str) -> Request {
        Request { headers, query }
    }

    fn per_unit(source: UnitSource, default_units: Option<u64>) -> CostRule {
        CostRule::PerUnit {
            source,
            rate: 10,
            max: 1_000,
            default_units,
        }
    }

    #[test]
    fn fixed_free_and_from_response_ignore_the_request() {
        let empty = request(vec![], "");
        assert_eq!(CostRule::Free.reserve_amount(&empty), 0);
        assert_eq!(CostRule::Fixed { amount: 7 }.reserve_amount(&empty), 7);
        let rule = CostRule::FromResponse {
            estimate: 5,
            max: 50,
            usage: Arc::new(ResponseUsage {
                header: None,
                fields: Vec::new(),
                fallback: 5,
                per_event: None,
                inspect_max_bytes: crate::usage::DEFAULT_INSPECT_MAX_BYTES,
            }),
            estimate_from: None,
        };
        assert_eq!(rule.reserve_amount(&empty), 5);
        assert_eq!(rule.max_amount(), 50);
    }

    #[test]
    fn per_unit_multiplies_and_caps() {
        let rule = per_unit(UnitSource::Header("x-units".into()), Some(1));
        assert_eq!(
            rule.reserve_amount(&request(vec![("X-Units", "3")], "")),
            30
        );
        assert_eq!(
            rule.reserve_amount(&request(vec![("x-units", " 0 ")], "")),
            0
        );
        assert_eq!(
            rule.reserve_amount(&request(vec![("x-units", "100")], "")),
            1_000
        );
        let huge = request(vec![("x-units", "18446744073709551615")], "");
        assert_eq!(rule.reserve_amount(&huge), 1_000);
    }

    #[test]
    fn per_unit_missing_or_garbage_uses_default_units_or_max() {
        let with_default = per_unit(UnitSource::Query("rows".into()), Some(2));
        let without_default = per_unit(UnitSource::Query("rows".into()), None);
        for query in [
            "",
            "rows=-1",
            "rows=1.5",
            "rows=",
            "rows",
            "rows=99999999999999999999",
        ] {
            let req = request(vec![], query);
            assert_eq!(with_default.reserve_amount(&req), 20, "{query}");
            assert_eq!(without_default.reserve_amount(&req), 1_000, "{query}");
        }
        let req = request(vec![], "format=csv&rows=4&rows=4");
        assert_eq!(with_default.reserve_amount(&req), 40);
    }

    #[test]
    fn checked_amounts_refuse_garbage_and_conflicts_naming_the_source() {
        let rule = per_unit(UnitSource::Query("pages".into()), Some(1));
        for query in [
            "pages=%31%30",
            "%70ages=10",
            "pages=+10",
            "PAGES=10&pages=010",
            "x=1;pages=10",
        ] {
            assert_eq!(
                rule.checked_reserve_amount(&request(vec![], query)),
                Ok(100),
                "{query}"
            );
        }
        assert_eq!(
            rule.checked_reserve_amount(&request(vec![], "other=10")),
            Ok(10)
        );
        for (query, problem) in [
            ("pages=1&pages=10", UnitsProblem::Conflicting),
            ("pages=1&%70ages=10", UnitsProblem::Conflicting),
            ("pages=%2B10", UnitsProblem::NotAWholeNumber),
            ("pages=1.5", UnitsProblem::NotAWholeNumber),
            ("pages=", UnitsProblem::NotAWholeNumber),
            ("pages=10&pages=x", UnitsProblem::NotAWholeNumber),
        ] {
            let error = rule
                .checked_reserve_amount(&request(vec![], query))
                .expect_err(query);
            assert_eq!(error.problem, problem, "{query}");
        }
        let error = rule
            .checked_reserve_amount(&request(vec![], "pages=1&pages=2"))
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "query parameter pages is given more than once with different values"
        );
        let rule = per_unit(UnitSource::Header("x-units".into()), None);
        let twice = request(vec![("x-units", "1"), ("X-Units", "10")], "");
        assert_eq!(
            rule.checked_reserve_amount(&twice).unwrap_err().to_string(),
            "header x-units is given more than once with different values"
        );
        let same = request(vec![("x-units", "3"), ("X-Units", "3")], "");
        assert_eq!(rule.checked_reserve_amount(&same), Ok(30));
        assert_eq!(rule.checked_reserve_amount(&request(vec![], "")), Ok(1_000));
    }

    #[test]
    fn unit_source_tells_missing_from_unparseable() {
        let source = UnitSource::Query("n".into());
        assert_eq!(source.read(&request(vec![], "m=1")), UnitsValue::Missing);
        assert_eq!(
            source.read(&request(vec![], "n=x")),
            UnitsValue::Unparseable
        );
        assert_eq!(
            source.read(&request(vec![], "n=%2B1")),
            UnitsValue::Unparseable
        );
        assert_eq!(
            source.read(&request(vec![], "n=1&n=2")),
            UnitsValue::Conflicting
        );
        assert_eq!(
            source.read(&request(vec![], "n=12")),
            UnitsValue::Present(12)
        );
    }
}
