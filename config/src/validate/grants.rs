//! `[[embedded_grants]]`: credits the config itself grants, each applied once by its id.

use std::collections::{BTreeMap, HashMap};

use toml::Spanned;

use super::values::Positive;
use super::{Checker, Declared};
use crate::limits::{DEFAULT_GRANT_PRIORITY, MAX_GRANT_EXPIRES_IN_S, MAX_GRANT_PRIORITY};
use crate::model::{CreditType, EmbeddedGrant};
use crate::schema::EmbeddedGrantFile;

/// Grant id -> (index, line) of its first appearance.
type SeenGrantIds = HashMap<String, (usize, u32)>;

impl Checker<'_> {
    pub(super) fn embedded_grants(
        &mut self,
        grants: Vec<Spanned<EmbeddedGrantFile>>,
        declared: &Declared,
        credit_types: &BTreeMap<String, CreditType>,
    ) -> Vec<EmbeddedGrant> {
        let mut seen = SeenGrantIds::new();
        grants
            .into_iter()
            .enumerate()
            .filter_map(|(index, grant)| {
                self.embedded_grant(index, grant.into_inner(), &mut seen, declared, credit_types)
            })
            .collect()
    }

    fn embedded_grant(
        &mut self,
        index: usize,
        grant: EmbeddedGrantFile,
        seen: &mut SeenGrantIds,
        declared: &Declared,
        credit_types: &BTreeMap<String, CreditType>,
    ) -> Option<EmbeddedGrant> {
        let path = format!("embedded_grants[{index}]");
        let EmbeddedGrantFile {
            grant_id,
            customer,
            credit_type,
            amount,
            priority,
            expires_in_s,
        } = grant;
        let mut ok = self.identifier(&format!("{path}.grant_id"), &grant_id, "grant id");
        if let Some(&(first, first_line)) = seen.get(grant_id.get_ref()) {
            ok = false;
            self.report(
                format!("{path}.grant_id"),
                Some(grant_id.span()),
                format!(
                    "grant id {:?} is already used by embedded_grants[{first}] (line \
                     {first_line}); a grant id is applied once, so this grant would be \
                     skipped",
                    grant_id.get_ref()
                ),
            );
        } else {
            let line = self.line_of(grant_id.span().start);
            seen.insert(grant_id.get_ref().clone(), (index, line));
        }
        ok &= self.identifier(&format!("{path}.customer"), &customer, "customer id");
        ok &= self.reference(
            &format!("{path}.credit_type"),
            &credit_type,
            "credit type",
            &declared.credit_types,
        );
        ok &= credit_types.contains_key(credit_type.get_ref());
        let amount = self.checked_amount(&format!("{path}.amount"), &amount, Positive::Yes);
        let priority = self.grant_priority(&path, priority);
        let expires_in_s = self.grant_expiry(&path, expires_in_s);
        let (true, Some(amount), Some(priority), Some(expires_in_s)) =
            (ok, amount, priority, expires_in_s)
        else {
            return None;
        };
        Some(EmbeddedGrant {
            grant_id: grant_id.into_inner(),
            customer: customer.into_inner(),
            credit_type: credit_type.into_inner(),
            amount,
            priority,
            expires_in_s,
        })
    }

    /// The burn priority, [`DEFAULT_GRANT_PRIORITY`] when not written.
    fn grant_priority(&mut self, path: &str, priority: Option<Spanned<i64>>) -> Option<u32> {
        let Some(priority) = priority else {
            return Some(DEFAULT_GRANT_PRIORITY);
        };
        let number = *priority.get_ref();
        let checked = u32::try_from(number)
            .ok()
            .filter(|value| *value <= MAX_GRANT_PRIORITY);
        if checked.is_none() {
            self.report(
                format!("{path}.priority"),
                Some(priority.span()),
                format!("must be between 0 and {MAX_GRANT_PRIORITY}, got {number}"),
            );
        }
        checked
    }

    /// The life of the grant in seconds: `Some(None)` for never expiring, `None` when wrong.
    fn grant_expiry(
        &mut self,
        path: &str,
        expires_in_s: Option<Spanned<i64>>,
    ) -> Option<Option<u64>> {
        let Some(seconds) = expires_in_s else {
            return Some(None);
        };
        let number = *seconds.get_ref();
        let checked = u64::try_from(number)
            .ok()
            .filter(|value| (1..=MAX_GRANT_EXPIRES_IN_S).contains(value));
        if checked.is_none() {
            self.report(
                format!("{path}.expires_in_s"),
                Some(seconds.span()),
                format!(
                    "must be between 1 and {MAX_GRANT_EXPIRES_IN_S} s (leave it out \
                     for credits that never expire), got {number}"
                ),
            );
        }
        checked.map(Some)
    }
}
