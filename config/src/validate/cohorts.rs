//! `[cohorts.NAME]`: prices pinned for listed customers and plans. Every cohort pins someone
//! to at least one price, and no customer or plan is pinned twice (which price would win
//! would depend on name order).

use std::collections::BTreeMap;

use toml::Spanned;

use super::{Checker, Declared, key};
use crate::model::Cohort;
use crate::schema::{CohortFile, Name};

/// Who is already pinned, by whom: cohort name by customer id, and by plan name.
#[derive(Default)]
struct Pinned {
    customers: BTreeMap<String, String>,
    plans: BTreeMap<String, String>,
}

impl Checker<'_> {
    pub(super) fn cohorts(
        &mut self,
        cohorts: BTreeMap<Name, CohortFile>,
        declared: &Declared,
    ) -> BTreeMap<String, Cohort> {
        let mut valid = BTreeMap::new();
        let mut pinned = Pinned::default();
        for (name, cohort) in cohorts {
            if let Some(cohort) = self.cohort(&name, cohort, &mut pinned, declared) {
                valid.insert(name.into_inner(), cohort);
            }
        }
        valid
    }

    fn cohort(
        &mut self,
        name: &Name,
        cohort: CohortFile,
        pinned: &mut Pinned,
        declared: &Declared,
    ) -> Option<Cohort> {
        let path = format!("cohorts.{}", key(name.get_ref()));
        let CohortFile {
            description,
            costs,
            customers,
            plans,
        } = cohort;
        let mut ok = self.identifier(&path, name, "cohort name");
        if costs.is_empty() {
            ok = false;
            self.report(
                format!("{path}.costs"),
                Some(name.span()),
                "a cohort must pin at least one feature's price (costs = { feature = \
                 { kind = .. } })"
                    .to_owned(),
            );
        }
        if customers.is_empty() && plans.is_empty() {
            ok = false;
            self.report(
                path.clone(),
                Some(name.span()),
                "a cohort must pin someone: list customers, plans or both".to_owned(),
            );
        }
        let costs = self.cost_overrides(&format!("{path}.costs"), costs, declared);
        for (i, customer) in customers.iter().enumerate() {
            let field = format!("{path}.customers[{i}]");
            ok &= self.identifier(&field, customer, "customer id");
            ok &= self.pin(field, customer, "customer", &mut pinned.customers, name);
        }
        for (i, plan) in plans.iter().enumerate() {
            let field = format!("{path}.plans[{i}]");
            ok &= self.reference(&field, plan, "plan", &declared.plans);
            ok &= self.pin(field, plan, "plan", &mut pinned.plans, name);
        }
        let (true, Some(costs)) = (ok, costs) else {
            return None;
        };
        Some(Cohort {
            name: name.get_ref().clone(),
            description,
            costs,
            customers: customers.into_iter().map(Spanned::into_inner).collect(),
            plans: plans.into_iter().map(Spanned::into_inner).collect(),
        })
    }

    /// Pins the customer or plan `who` (a `what`) to `cohort`; reports and returns false
    /// when another cohort pinned it first.
    fn pin(
        &mut self,
        field: String,
        who: &Name,
        what: &str,
        pinned: &mut BTreeMap<String, String>,
        cohort: &Name,
    ) -> bool {
        let Some(other) = pinned.insert(who.get_ref().clone(), cohort.get_ref().clone()) else {
            return true;
        };
        self.report(
            field,
            Some(who.span()),
            format!(
                "{what} {:?} is already pinned by cohorts.{}: a {what} belongs to one cohort \
                 at most",
                who.get_ref(),
                key(&other)
            ),
        );
        false
    }
}
