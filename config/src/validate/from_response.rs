//! `kind = "from_response"`: an estimate reserved up front, then the price read from the
//! response (a usage header, usage fields of the JSON body, a fallback, a per-event price)
//! and, optionally, the estimate read from the request body.
//!
//! The helpers that return `Option<Option<T>>` use `Some(None)` for "not written" (valid)
//! and `None` for "written but wrong" (reported).

use std::ops::Range;
use std::sync::Arc;

use toml::Spanned;

use super::values::Positive;
use super::{Checker, key};
use crate::cost::CostRule;
use crate::schema::CostFile;
use crate::usage::{
    DEFAULT_INSPECT_MAX_BYTES, DEFAULT_UNREADABLE_ESTIMATE, MAX_ESTIMATE_BODY_BYTES,
    MAX_INSPECT_MAX_BYTES, MAX_USAGE_FIELDS, MAX_USAGE_PATH_SEGMENTS, RequestEstimate,
    ResponseUsage, UsageField, UsageHeader, UsagePath,
};

/// The body fields of `usage = { "path" = rate, ... }` as written.
type UsageTable = Spanned<std::collections::BTreeMap<Spanned<String>, Spanned<i64>>>;

impl Checker<'_> {
    /// The whole rule: `estimate` within `max`, then the response and request parts.
    pub(super) fn cost_from_response(
        &mut self,
        path: &str,
        cost: &Spanned<CostFile>,
    ) -> Option<CostRule> {
        let file = cost.get_ref();
        let table_span = cost.span();
        let estimate = self.amount(
            path,
            "estimate",
            file.estimate.as_ref(),
            &table_span,
            Positive::Yes,
        );
        let max = self.amount(path, "max", file.max.as_ref(), &table_span, Positive::Yes);
        let mut ok = true;
        if let (Some(estimate), Some(max)) = (estimate, max)
            && estimate > max
        {
            ok = false;
            self.report(
                format!("{path}.estimate"),
                file.estimate.as_ref().map(Spanned::span),
                format!(
                    "{estimate} is above max ({max}); the estimate is reserved up front and may \
                     not exceed what a request can cost"
                ),
            );
        }
        let usage = self.response_usage(path, cost, estimate, max);
        let estimate_from = self.request_estimate(path, file, max);
        let (true, Some(estimate), Some(max), Some(usage), Some(estimate_from)) =
            (ok, estimate, max, usage, estimate_from)
        else {
            return None;
        };
        Some(CostRule::FromResponse {
            estimate,
            max,
            usage: Arc::new(usage),
            estimate_from: estimate_from.map(Arc::new),
        })
    }

    /// The request-estimate part: `estimate_from` names a valid field path and comes with
    /// `estimate_rate`; `estimate_base` stays within `max`; the body bound fits Pingora's
    /// replay buffer. `Some(None)`: the rule has none.
    fn request_estimate(
        &mut self,
        path: &str,
        file: &CostFile,
        max: Option<u64>,
    ) -> Option<Option<RequestEstimate>> {
        let Some(from) = &file.estimate_from else {
            return self.no_stray_estimate_fields(path, file).then_some(None);
        };
        let parsed = UsagePath::parse(from.get_ref());
        if parsed.is_none() {
            self.report(
                format!("{path}.estimate_from"),
                Some(from.span()),
                format!(
                    "{:?} is not a request field path: write JSON object keys (A-Z a-z 0-9 _ -) \
                     separated by dots, at most {MAX_USAGE_PATH_SEGMENTS} deep, e.g. \"max_tokens\"",
                    from.get_ref()
                ),
            );
        }
        let rate = match &file.estimate_rate {
            Some(value) => {
                self.checked_amount(&format!("{path}.estimate_rate"), value, Positive::Yes)
            }
            None => {
                self.report(
                    format!("{path}.estimate_from"),
                    Some(from.span()),
                    "needs estimate_rate = <amount per unit> to price the field's unit count"
                        .to_owned(),
                );
                None
            }
        };
        let base = self.estimate_base(path, file, max);
        let max_body_bytes = self.estimate_max_body_bytes(path, file);
        Some(Some(RequestEstimate {
            path: parsed?,
            rate: rate?,
            base: base?,
            max_body_bytes: max_body_bytes?,
            unreadable: file
                .estimate_unreadable
                .as_ref()
                .map_or(DEFAULT_UNREADABLE_ESTIMATE, |v| *v.get_ref()),
        }))
    }

    /// Without `estimate_from`, the fields that refine it are mistakes; false when one is
    /// written.
    fn no_stray_estimate_fields(&mut self, path: &str, file: &CostFile) -> bool {
        fn span<T>(value: &Option<Spanned<T>>) -> Option<Range<usize>> {
            value.as_ref().map(Spanned::span)
        }
        let strays = [
            ("estimate_rate", span(&file.estimate_rate)),
            ("estimate_base", span(&file.estimate_base)),
            (
                "estimate_max_body_bytes",
                span(&file.estimate_max_body_bytes),
            ),
            ("estimate_unreadable", span(&file.estimate_unreadable)),
        ];
        let mut ok = true;
        for (field, span) in strays {
            if let Some(span) = span {
                ok = false;
                self.report(
                    format!("{path}.{field}"),
                    Some(span),
                    "belongs to an estimate read from the request body: set \
                     estimate_from = \"<JSON field>\" too, or leave it out"
                        .to_owned(),
                );
            }
        }
        ok
    }

    /// `estimate_base`: 0 when not written, never above `max`.
    fn estimate_base(&mut self, path: &str, file: &CostFile, max: Option<u64>) -> Option<u64> {
        let Some(value) = &file.estimate_base else {
            return Some(0);
        };
        let field = format!("{path}.estimate_base");
        let base = self.checked_amount(&field, value, Positive::No)?;
        if let Some(max) = max
            && base > max
        {
            self.report(
                field,
                Some(value.span()),
                format!(
                    "{base} is above max ({max}); every request would reserve max \
                     whatever the field says"
                ),
            );
            return None;
        }
        Some(base)
    }

    /// `estimate_max_body_bytes`: at most what the gateway can replay to the upstream.
    fn estimate_max_body_bytes(&mut self, path: &str, file: &CostFile) -> Option<u64> {
        let Some(value) = &file.estimate_max_body_bytes else {
            return Some(MAX_ESTIMATE_BODY_BYTES);
        };
        let number = *value.get_ref();
        match u64::try_from(number) {
            Ok(bytes) if (1..=MAX_ESTIMATE_BODY_BYTES).contains(&bytes) => Some(bytes),
            _ => {
                self.report(
                    format!("{path}.estimate_max_body_bytes"),
                    Some(value.span()),
                    format!(
                        "must be between 1 and {MAX_ESTIMATE_BODY_BYTES} bytes (the \
                         request body the gateway can replay to the upstream), got \
                         {number}"
                    ),
                );
                None
            }
        }
    }

    /// The response-usage part: header and rate together, valid field paths with positive
    /// rates, a fallback within `max`, a bounded inspection size.
    fn response_usage(
        &mut self,
        path: &str,
        cost: &Spanned<CostFile>,
        estimate: Option<u64>,
        max: Option<u64>,
    ) -> Option<ResponseUsage> {
        let file = cost.get_ref();
        let header = self.usage_header(path, cost);
        let fields = match &file.usage {
            Some(usage) => self.usage_fields(path, usage),
            None => Some(Vec::new()),
        };
        let fallback = self.usage_fallback(path, file, estimate, max);
        let per_event = match &file.per_event {
            Some(value) => self
                .checked_amount(&format!("{path}.per_event"), value, Positive::Yes)
                .map(Some),
            None => Some(None),
        };
        let inspect_max_bytes = self.inspect_max_bytes(path, file);
        Some(ResponseUsage {
            header: header?,
            fields: fields?,
            fallback: fallback?,
            per_event: per_event?,
            inspect_max_bytes: inspect_max_bytes?,
        })
    }

    /// A usage header (units in a response header) and its rate, written together or not
    /// at all.
    fn usage_header(
        &mut self,
        path: &str,
        cost: &Spanned<CostFile>,
    ) -> Option<Option<UsageHeader>> {
        let file = cost.get_ref();
        match (&file.header, &file.rate) {
            (Some(header), Some(_)) => {
                let name = self.header_name(path, header);
                let rate = self.amount(
                    path,
                    "rate",
                    file.rate.as_ref(),
                    &cost.span(),
                    Positive::Yes,
                );
                Some(Some(UsageHeader {
                    name: name?,
                    rate: rate?,
                }))
            }
            (None, None) => Some(None),
            (Some(header), None) => {
                self.report(
                    format!("{path}.header"),
                    Some(header.span()),
                    "needs rate = <amount per unit> to price the header's unit count".to_owned(),
                );
                None
            }
            (None, Some(rate)) => {
                self.report(
                    format!("{path}.rate"),
                    Some(rate.span()),
                    "prices the units of a response header: set header = \"...\" too, or \
                     price body fields under usage"
                        .to_owned(),
                );
                None
            }
        }
    }

    /// `usage = { "usage.prompt_tokens" = 1, ... }`: at most [`MAX_USAGE_FIELDS`] valid
    /// field paths, each with a positive rate; every bad one is reported.
    fn usage_fields(&mut self, path: &str, usage: &UsageTable) -> Option<Vec<UsageField>> {
        let mut ok = true;
        if usage.get_ref().len() > MAX_USAGE_FIELDS {
            ok = false;
            self.report(
                format!("{path}.usage"),
                Some(usage.span()),
                format!(
                    "{} fields, more than the limit {MAX_USAGE_FIELDS}",
                    usage.get_ref().len()
                ),
            );
        }
        let mut fields = Vec::new();
        for (field_path, rate) in usage.get_ref() {
            let field = format!("{path}.usage.{}", key(field_path.get_ref()));
            let parsed = UsagePath::parse(field_path.get_ref());
            if parsed.is_none() {
                self.report(
                    field.clone(),
                    Some(field_path.span()),
                    format!(
                        "{:?} is not a usage field path: write JSON object keys \
                         (A-Z a-z 0-9 _ -) separated by dots, at most \
                         {MAX_USAGE_PATH_SEGMENTS} deep, e.g. \"usage.prompt_tokens\"",
                        field_path.get_ref()
                    ),
                );
            }
            let rate = self.checked_amount(&field, rate, Positive::Yes);
            match (parsed, rate) {
                (Some(path), Some(rate)) => fields.push(UsageField { path, rate }),
                _ => ok = false,
            }
        }
        ok.then_some(fields)
    }

    /// What a response without usage costs: `fallback`, else the estimate; never above
    /// `max`.
    fn usage_fallback(
        &mut self,
        path: &str,
        file: &CostFile,
        estimate: Option<u64>,
        max: Option<u64>,
    ) -> Option<u64> {
        let Some(value) = &file.fallback else {
            return estimate;
        };
        let field = format!("{path}.fallback");
        let fallback = self.checked_amount(&field, value, Positive::No)?;
        if let Some(max) = max
            && fallback > max
        {
            self.report(
                field,
                Some(value.span()),
                format!(
                    "{fallback} is above max ({max}); a response without usage may \
                     not cost more than any response can"
                ),
            );
            return None;
        }
        Some(fallback)
    }

    /// How many response bytes are read for usage: [`DEFAULT_INSPECT_MAX_BYTES`] unless
    /// written.
    fn inspect_max_bytes(&mut self, path: &str, file: &CostFile) -> Option<u64> {
        let Some(value) = &file.inspect_max_bytes else {
            return Some(DEFAULT_INSPECT_MAX_BYTES);
        };
        let number = *value.get_ref();
        match u64::try_from(number) {
            Ok(bytes) if (1..=MAX_INSPECT_MAX_BYTES).contains(&bytes) => Some(bytes),
            _ => {
                self.report(
                    format!("{path}.inspect_max_bytes"),
                    Some(value.span()),
                    format!("must be between 1 and {MAX_INSPECT_MAX_BYTES} bytes, got {number}"),
                );
                None
            }
        }
    }
}
