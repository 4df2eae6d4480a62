//! Costs: the `cost` of a feature and the `costs` overrides of plans, customers and cohorts,
//! one function per cost kind (`free`, `fixed`, `per_unit`, `from_response`; the parts of
//! `from_response` are in `from_response`).
//!
//! Each kind accepts only its own fields, so a field of another kind is named as such
//! instead of being silently ignored.

use std::collections::BTreeMap;
use std::ops::Range;

use toml::Spanned;

use super::values::Positive;
use super::{Checker, Declared, key, unknown};
use crate::cost::{CostRule, UnitSource};
use crate::schema::{CostFile, Name};

/// The fields each cost kind accepts besides `kind`; `None` for an unknown kind.
fn kind_fields(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "free" => Some(&[]),
        "fixed" => Some(&["amount"]),
        "per_unit" => Some(&["header", "query", "rate", "max", "default_units"]),
        "from_response" => Some(&[
            "estimate",
            "max",
            "header",
            "rate",
            "usage",
            "fallback",
            "per_event",
            "inspect_max_bytes",
            "estimate_from",
            "estimate_rate",
            "estimate_base",
            "estimate_max_body_bytes",
        ]),
        _ => None,
    }
}

/// Every field of a cost table with where it is written, `None` when it is not.
fn written_fields(cost: &CostFile) -> [(&'static str, Option<Range<usize>>); 15] {
    fn span<T>(value: &Option<Spanned<T>>) -> Option<Range<usize>> {
        value.as_ref().map(Spanned::span)
    }
    [
        ("amount", span(&cost.amount)),
        ("header", span(&cost.header)),
        ("query", span(&cost.query)),
        ("rate", span(&cost.rate)),
        ("max", span(&cost.max)),
        ("default_units", span(&cost.default_units)),
        ("estimate", span(&cost.estimate)),
        ("usage", span(&cost.usage)),
        ("fallback", span(&cost.fallback)),
        ("per_event", span(&cost.per_event)),
        ("inspect_max_bytes", span(&cost.inspect_max_bytes)),
        ("estimate_from", span(&cost.estimate_from)),
        ("estimate_rate", span(&cost.estimate_rate)),
        ("estimate_base", span(&cost.estimate_base)),
        (
            "estimate_max_body_bytes",
            span(&cost.estimate_max_body_bytes),
        ),
    ]
}

impl Checker<'_> {
    pub(super) fn cost_overrides(
        &mut self,
        path: &str,
        costs: BTreeMap<Name, Spanned<CostFile>>,
        declared: &Declared,
    ) -> Option<BTreeMap<String, CostRule>> {
        let mut valid = BTreeMap::new();
        let mut ok = true;
        for (feature, cost) in costs {
            let field = format!("{path}.{}", key(feature.get_ref()));
            if !declared.features.contains(feature.get_ref()) {
                ok = false;
                let message = unknown("feature", feature.get_ref(), &declared.features);
                self.report(field.clone(), Some(feature.span()), message);
            }
            match self.cost_rule(&field, &cost) {
                Some(rule) => {
                    valid.insert(feature.into_inner(), rule);
                }
                None => ok = false,
            }
        }
        ok.then_some(valid)
    }

    /// A cost table: its kind, no field of another kind, then the kind's own checks.
    pub(super) fn cost_rule(&mut self, path: &str, cost: &Spanned<CostFile>) -> Option<CostRule> {
        let kind = &cost.get_ref().kind;
        let Some(allowed) = kind_fields(kind.get_ref()) else {
            self.report(
                format!("{path}.kind"),
                Some(kind.span()),
                format!(
                    "unknown cost kind {:?} (known: free, fixed, per_unit, from_response)",
                    kind.get_ref()
                ),
            );
            return None;
        };
        let fields_ok = self.only_fields_of_kind(path, cost.get_ref(), allowed);
        let rule = match kind.get_ref().as_str() {
            "free" => Some(CostRule::Free),
            "fixed" => self.fixed_cost(path, cost),
            "per_unit" => self.per_unit_cost(path, cost),
            "from_response" => self.cost_from_response(path, cost),
            _ => None,
        };
        rule.filter(|_| fields_ok)
    }

    /// Reports every written field that `kind` does not take; false when there is one.
    fn only_fields_of_kind(&mut self, path: &str, cost: &CostFile, allowed: &[&str]) -> bool {
        let mut ok = true;
        for (field, span) in written_fields(cost) {
            if let Some(span) = span
                && !allowed.contains(&field)
            {
                ok = false;
                let fields = if allowed.is_empty() {
                    "none".to_owned()
                } else {
                    allowed.join(", ")
                };
                self.report(
                    format!("{path}.{field}"),
                    Some(span),
                    format!(
                        "not a field of kind {:?} (its fields: {fields})",
                        cost.kind.get_ref()
                    ),
                );
            }
        }
        ok
    }

    /// `kind = "fixed"`: one positive `amount` per request.
    fn fixed_cost(&mut self, path: &str, cost: &Spanned<CostFile>) -> Option<CostRule> {
        let amount = cost.get_ref().amount.as_ref();
        self.amount(path, "amount", amount, &cost.span(), Positive::FixedAmount)
            .map(|amount| CostRule::Fixed { amount })
    }

    /// `kind = "per_unit"`: units read from a request header or query parameter, times
    /// `rate`, capped at `max`.
    fn per_unit_cost(&mut self, path: &str, cost: &Spanned<CostFile>) -> Option<CostRule> {
        let file = cost.get_ref();
        let table_span = cost.span();
        let source = self.unit_source(path, file, &table_span);
        let rate = self.amount(path, "rate", file.rate.as_ref(), &table_span, Positive::Yes);
        let max = self.amount(path, "max", file.max.as_ref(), &table_span, Positive::Yes);
        let default_units = match &file.default_units {
            None => Some(None),
            Some(units) => {
                let value = *units.get_ref();
                let units = u64::try_from(value).map_err(|_| {
                    self.report(
                        format!("{path}.default_units"),
                        Some(units.span()),
                        format!("must not be negative, got {value}"),
                    );
                });
                units.ok().map(Some)
            }
        };
        if let (Some(rate), Some(max)) = (rate, max)
            && rate > max
        {
            self.report(
                format!("{path}.rate"),
                file.rate.as_ref().map(Spanned::span),
                format!("{rate} is above max ({max}): every request would be charged max"),
            );
            return None;
        }
        Some(CostRule::PerUnit {
            source: source?,
            rate: rate?,
            max: max?,
            default_units: default_units?,
        })
    }

    /// Where a `per_unit` rule reads its units: exactly one of `header` and `query`.
    fn unit_source(
        &mut self,
        path: &str,
        file: &CostFile,
        table_span: &Range<usize>,
    ) -> Option<UnitSource> {
        match (&file.header, &file.query) {
            (Some(header), None) => self.header_name(path, header).map(UnitSource::Header),
            (None, Some(query)) => self.query_name(path, query).map(UnitSource::Query),
            (Some(_), Some(query)) => {
                self.report(
                    format!("{path}.query"),
                    Some(query.span()),
                    "set either header or query, not both".to_owned(),
                );
                None
            }
            (None, None) => {
                self.report(
                    path,
                    Some(table_span.clone()),
                    "kind \"per_unit\" needs header = \"...\" or query = \"...\" to \
                     read the units from"
                        .to_owned(),
                );
                None
            }
        }
    }
}
