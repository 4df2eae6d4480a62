//! Checks of single values shared by every section: amounts, durations, identifiers,
//! references to names defined elsewhere, header and query parameter names.
//!
//! Each check reports its own error and returns `None` or `false`; none knows which section
//! it serves.

use std::collections::BTreeSet;
use std::ops::Range;

use toml::Spanned;

use super::syntax::{is_http_token, is_identifier};
use super::{Checker, unknown};
use crate::limits::{MAX_AMOUNT, MAX_IDENTIFIER_LEN};
use crate::schema::Name;

impl Checker<'_> {
    /// Checks a required amount: present, not negative, within [`MAX_AMOUNT`] and, unless
    /// `positive` allows it, above zero.
    pub(super) fn amount(
        &mut self,
        path: &str,
        field: &str,
        value: Option<&Spanned<i64>>,
        table_span: &Range<usize>,
        positive: Positive,
    ) -> Option<u64> {
        let Some(value) = value else {
            self.report(
                path,
                Some(table_span.clone()),
                format!("missing field `{field}`"),
            );
            return None;
        };
        let field = format!("{path}.{field}");
        self.checked_amount(&field, value, positive)
    }

    pub(super) fn checked_amount(
        &mut self,
        field: &str,
        value: &Spanned<i64>,
        positive: Positive,
    ) -> Option<u64> {
        let number = *value.get_ref();
        let message = if number < 0 {
            format!("must not be negative, got {number}")
        } else if number == 0 && positive == Positive::FixedAmount {
            "must be greater than 0; write kind = \"free\" for a feature that costs nothing"
                .to_owned()
        } else if number == 0 && positive == Positive::Yes {
            "must be greater than 0".to_owned()
        } else if number.unsigned_abs() > MAX_AMOUNT {
            format!(
                "{number} is above the limit {MAX_AMOUNT} (2^53 - 1: amounts must stay exact \
                 in the doubles of Redis Lua)"
            )
        } else {
            return Some(number.unsigned_abs());
        };
        self.report(field, Some(value.span()), message);
        None
    }

    pub(super) fn header_name(&mut self, path: &str, header: &Spanned<String>) -> Option<String> {
        self.http_header_name(&format!("{path}.header"), header)
    }

    /// Checks an HTTP header name (an RFC 9110 token); returns it in lower case.
    pub(super) fn http_header_name(
        &mut self,
        field: &str,
        header: &Spanned<String>,
    ) -> Option<String> {
        let name = header.get_ref();
        if is_http_token(name) {
            Some(name.to_ascii_lowercase())
        } else {
            self.report(
                field,
                Some(header.span()),
                format!("{name:?} is not a valid HTTP header name"),
            );
            None
        }
    }

    pub(super) fn query_name(&mut self, path: &str, query: &Spanned<String>) -> Option<String> {
        let name = query.get_ref();
        let valid = !name.is_empty()
            && name.len() <= MAX_IDENTIFIER_LEN
            && name
                .chars()
                .all(|c| c.is_ascii_graphic() && !"&=#?+%".contains(c));
        if valid {
            Some(name.clone())
        } else {
            self.report(
                format!("{path}.query"),
                Some(query.span()),
                format!(
                    "{name:?} is not a valid query parameter name (printable ASCII without \
                     & = # ? + % or spaces)"
                ),
            );
            None
        }
    }

    /// Checks an optional duration in milliseconds against `min..=max`; returns `default`
    /// when absent or invalid (the error is recorded).
    pub(super) fn duration_ms(
        &mut self,
        field: &str,
        value: Option<&Spanned<i64>>,
        min: u64,
        max: u64,
        default: u64,
    ) -> u64 {
        let Some(value) = value else {
            return default;
        };
        let number = *value.get_ref();
        match u64::try_from(number) {
            Ok(ms) if (min..=max).contains(&ms) => ms,
            _ => {
                self.report(
                    field,
                    Some(value.span()),
                    format!("must be between {min} and {max} ms, got {number}"),
                );
                default
            }
        }
    }

    /// Checks an identifier used in Redis keys; reports and returns false when invalid.
    pub(super) fn identifier(&mut self, path: &str, name: &Name, what: &str) -> bool {
        if is_identifier(name.get_ref()) {
            return true;
        }
        self.report(
            path,
            Some(name.span()),
            format!(
                "invalid {what} {:?}: use 1 to {MAX_IDENTIFIER_LEN} of A-Z a-z 0-9 _ . @ - \
                 (names go into Redis keys)",
                name.get_ref()
            ),
        );
        false
    }

    /// Checks that `name` is one of `known`; reports and returns false otherwise.
    pub(super) fn reference(
        &mut self,
        field: &str,
        name: &Name,
        what: &str,
        known: &BTreeSet<String>,
    ) -> bool {
        if known.contains(name.get_ref()) {
            return true;
        }
        let message = unknown(what, name.get_ref(), known);
        self.report(field, Some(name.span()), message);
        false
    }
}

/// Whether zero is a valid amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Positive {
    /// Zero is fine (overdrafts).
    No,
    /// Zero is an error.
    Yes,
    /// Zero is an error with a hint to use `kind = "free"`.
    FixedAmount,
}
