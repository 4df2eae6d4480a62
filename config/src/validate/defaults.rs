//! `[defaults]` and `[billing]`: the file-wide settings, and the checks that compare the
//! defaults with the upstreams they must fit.
//!
//! Only checks and converts; the default values themselves live in `limits` and `model`.

use std::ops::Range;

use toml::Spanned;

use super::syntax::check_url;
use super::{Checker, DEFAULT_UPSTREAM, Declared};
use crate::limits::{
    DEFAULT_HOLD_TTL_MS, DEFAULT_STORE_TIMEOUT_MS, HOLD_TTL_STORE_TIMEOUTS, MAX_HOLD_TTL_MS,
    MAX_STORE_TIMEOUT_MS, MIN_HOLD_TTL_MS,
};
use crate::model::{
    Billing, DEFAULT_FAILURE_POLICY, DEFAULT_MODE, DEFAULT_UNMATCHED, Defaults, Unmatched,
};
use crate::schema::{BillingFile, DefaultsFile};

/// Where `[defaults]` and the keys other sections are checked against are written, kept
/// for the errors of those later checks.
pub(super) struct DefaultsSpans {
    table: Option<Range<usize>>,
    unmatched: Option<Range<usize>>,
    hold_ttl_ms: Option<Range<usize>>,
}

impl Checker<'_> {
    pub(super) fn defaults(
        &mut self,
        defaults: Option<Spanned<DefaultsFile>>,
    ) -> (Defaults, DefaultsSpans) {
        let table = defaults.as_ref().map(Spanned::span);
        let DefaultsFile {
            mode,
            failure_policy,
            store_timeout_ms,
            unmatched,
            hold_ttl_ms,
        } = defaults.map(Spanned::into_inner).unwrap_or_default();
        let spans = DefaultsSpans {
            table,
            unmatched: unmatched.as_ref().map(Spanned::span),
            hold_ttl_ms: hold_ttl_ms.as_ref().map(Spanned::span),
        };
        let defaults = Defaults {
            mode: mode.unwrap_or(DEFAULT_MODE),
            failure_policy: failure_policy.unwrap_or(DEFAULT_FAILURE_POLICY),
            store_timeout_ms: self.duration_ms(
                "defaults.store_timeout_ms",
                store_timeout_ms.as_ref(),
                1,
                MAX_STORE_TIMEOUT_MS,
                DEFAULT_STORE_TIMEOUT_MS,
            ),
            unmatched: unmatched.map_or(DEFAULT_UNMATCHED, Spanned::into_inner),
            hold_ttl_ms: self.duration_ms(
                "defaults.hold_ttl_ms",
                hold_ttl_ms.as_ref(),
                MIN_HOLD_TTL_MS,
                MAX_HOLD_TTL_MS,
                DEFAULT_HOLD_TTL_MS,
            ),
        };
        (defaults, spans)
    }

    /// `pass_through` needs the upstream it forwards to, and the hold TTL must leave room
    /// for the gateway's renewals of in-flight holds.
    pub(super) fn defaults_against_upstreams(
        &mut self,
        defaults: &Defaults,
        spans: &DefaultsSpans,
        declared: &Declared,
    ) {
        if defaults.unmatched == Unmatched::PassThrough
            && !declared.upstreams.contains(DEFAULT_UPSTREAM)
        {
            self.report(
                "defaults.unmatched",
                spans.unmatched.clone().or(spans.table.clone()),
                format!(
                    "\"pass_through\" forwards unmatched requests to the upstream named \
                     \"{DEFAULT_UPSTREAM}\", which is not defined"
                ),
            );
        }
        // A request may last longer than the hold TTL (a long stream, a slow reader): the
        // gateway renews its hold while it is in flight, so the TTL need not outlast the
        // upstreams' timeouts. It only bounds what a crashed gateway leaves behind, and it
        // must leave room for the renewals: each may take a store timeout.
        let room_ms = HOLD_TTL_STORE_TIMEOUTS * defaults.store_timeout_ms;
        if defaults.hold_ttl_ms < room_ms {
            self.report(
                "defaults.hold_ttl_ms",
                spans.hold_ttl_ms.clone().or(spans.table.clone()),
                format!(
                    "{} ms is shorter than {HOLD_TTL_STORE_TIMEOUTS} x defaults.store_timeout_ms \
                     ({room_ms} ms): the gateway renews in-flight holds every third of the \
                     TTL, and a renewal may take a store timeout",
                    defaults.hold_ttl_ms,
                ),
            );
        }
    }

    pub(super) fn billing(&mut self, billing: BillingFile) -> Billing {
        let BillingFile { top_up_url } = billing;
        let top_up_url = top_up_url.and_then(|url| match check_url(url.get_ref()) {
            Ok(()) => Some(url.into_inner()),
            Err(message) => {
                self.report("billing.top_up_url", Some(url.span()), message);
                None
            }
        });
        Billing { top_up_url }
    }
}
