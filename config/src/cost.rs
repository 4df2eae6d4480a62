//! Cost rules and the pure arithmetic of how much to reserve before a request goes upstream.
//!
//! Nothing here does I/O or reads a clock: the gateway hands in a [`RequestValues`] view of
//! the request, and settling from the response is the gateway's job.

use std::sync::Arc;

use crate::limits::MAX_AMOUNT;
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
        /// Units assumed when the value is missing or not a number; `None` means "charge
        /// `max`", so a request that does not say how much it uses never pays less than the
        /// most it could use.
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
    ///   overflows); a missing or unparseable value counts as `default_units`, or as `max`
    ///   when the rule has no `default_units`.
    /// - `from_response`: the fixed estimate. A rule with `estimate_from` reserves from the
    ///   request body instead, which the gateway reads itself (see [`RequestEstimate`]);
    ///   this is what it reserves when the body cannot be read.
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
                (UnitsValue::Present(units), _) | (_, Some(units)) => {
                    units.saturating_mul(*rate).min(*max)
                }
                (_, None) => *max,
            },
            CostRule::FromResponse { estimate, .. } => *estimate,
        }
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
    /// A query-string parameter, matched exactly (case-sensitive).
    Query(String),
}

impl UnitSource {
    /// Reads and parses the unit count from `request`.
    ///
    /// A value is a decimal integer, optionally surrounded by spaces; anything else
    /// (negative, fractional, too large for `u64`, empty) is [`UnitsValue::Unparseable`].
    pub fn read<R: RequestValues + ?Sized>(&self, request: &R) -> UnitsValue {
        let raw = match self {
            UnitSource::Header(name) => request.header(name),
            UnitSource::Query(name) => request.query(name),
        };
        match raw {
            None => UnitsValue::Missing,
            Some(raw) => {
                let digits = raw.trim();
                if !digits.is_empty() && digits.bytes().all(|byte| byte.is_ascii_digit()) {
                    digits
                        .parse()
                        .map_or(UnitsValue::Unparseable, UnitsValue::Present)
                } else {
                    UnitsValue::Unparseable
                }
            }
        }
    }
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
}

/// A read-only view of the request values cost rules may read. The gateway implements it over
/// its request header; tests implement it over a map.
pub trait RequestValues {
    /// The value of header `name` (given in lower case; look it up case-insensitively), if
    /// present; with several values, the first.
    fn header(&self, name: &str) -> Option<&str>;
    /// The raw (not percent-decoded) value of query parameter `name`, if present; with
    /// several, the first. [`query_param`] does this over a raw query string.
    fn query(&self, name: &str) -> Option<&str>;
}

/// Finds parameter `name` in a raw query string (`a=1&b=2`, without the `?`) and returns
/// its raw value: the first occurrence wins, a parameter without `=` has the value `""`.
/// Does not allocate or percent-decode.
pub fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Request {
        headers: Vec<(&'static str, &'static str)>,
        query: &'static str,
    }

    impl RequestValues for Request {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| *value)
        }

        fn query(&self, name: &str) -> Option<&str> {
            query_param(self.query, name)
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
        let req = request(vec![], "format=csv&rows=4&rows=9");
        assert_eq!(with_default.reserve_amount(&req), 40);
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
            source.read(&request(vec![], "n=+1")),
            UnitsValue::Unparseable
        );
        assert_eq!(
            source.read(&request(vec![], "n=12")),
            UnitsValue::Present(12)
        );
    }

    #[test]
    fn query_param_finds_the_first_exact_key() {
        assert_eq!(query_param("a=1&b=2&a=3", "a"), Some("1"));
        assert_eq!(query_param("ab=1", "a"), None);
        assert_eq!(query_param("flag&x=1", "flag"), Some(""));
        assert_eq!(query_param("", "a"), None);
    }
}
