//! `[plans.NAME]` and `[customers.ID]`: who pays what, with their overdrafts and cost
//! overrides.

use std::collections::BTreeMap;

use toml::Spanned;

use super::values::Positive;
use super::{Checker, Declared, key, unknown};
use crate::limits::DEFAULT_OVERDRAFT;
use crate::model::{Customer, Overdraft, Plan};
use crate::schema::{CustomerFile, Name, OverdraftFile, PlanFile};

impl Checker<'_> {
    pub(super) fn plans(
        &mut self,
        plans: BTreeMap<Name, PlanFile>,
        declared: &Declared,
    ) -> BTreeMap<String, Plan> {
        let mut valid = BTreeMap::new();
        for (name, plan) in plans {
            let path = format!("plans.{}", key(name.get_ref()));
            let PlanFile {
                description,
                overdraft,
                costs,
            } = plan;
            let mut ok = self.identifier(&path, &name, "plan name");
            let overdraft = match overdraft {
                None => Some(Overdraft::default()),
                Some(overdraft) => {
                    self.overdraft(&format!("{path}.overdraft"), &overdraft, declared)
                }
            };
            let costs = self.cost_overrides(&format!("{path}.costs"), costs, declared);
            ok &= overdraft.is_some() && costs.is_some();
            if let (true, Some(overdraft), Some(costs)) = (ok, overdraft, costs) {
                let name = name.into_inner();
                let plan = Plan {
                    name: name.clone(),
                    description,
                    overdraft,
                    costs,
                };
                valid.insert(name, plan);
            }
        }
        valid
    }

    pub(super) fn customers(
        &mut self,
        customers: BTreeMap<Name, CustomerFile>,
        declared: &Declared,
    ) -> BTreeMap<String, Customer> {
        let mut valid = BTreeMap::new();
        for (id, customer) in customers {
            let path = format!("customers.{}", key(id.get_ref()));
            let CustomerFile {
                plan,
                overdraft,
                costs,
            } = customer;
            let mut ok = self.identifier(&path, &id, "customer id");
            ok &= self.reference(&format!("{path}.plan"), &plan, "plan", &declared.plans);
            let overdraft = match overdraft {
                None => Some(None),
                Some(overdraft) => self
                    .overdraft(&format!("{path}.overdraft"), &overdraft, declared)
                    .map(Some),
            };
            let costs = self.cost_overrides(&format!("{path}.costs"), costs, declared);
            if let (true, Some(overdraft), Some(costs)) = (ok, overdraft, costs) {
                let id = id.into_inner();
                let customer = Customer {
                    id: id.clone(),
                    plan: plan.into_inner(),
                    overdraft,
                    costs,
                };
                valid.insert(id, customer);
            }
        }
        valid
    }

    pub(super) fn overdraft(
        &mut self,
        path: &str,
        overdraft: &Spanned<OverdraftFile>,
        declared: &Declared,
    ) -> Option<Overdraft> {
        match overdraft.get_ref() {
            OverdraftFile::All(number) => {
                let value = Spanned::new(overdraft.span(), *number);
                self.checked_amount(path, &value, Positive::No)
                    .map(|default| Overdraft {
                        default,
                        per_credit_type: BTreeMap::new(),
                    })
            }
            OverdraftFile::PerCreditType(amounts) => {
                let mut per_credit_type = BTreeMap::new();
                let mut ok = true;
                for (credit_type, amount) in amounts {
                    let field = format!("{path}.{}", key(credit_type.get_ref()));
                    if !declared.credit_types.contains(credit_type.get_ref()) {
                        ok = false;
                        let message =
                            unknown("credit type", credit_type.get_ref(), &declared.credit_types);
                        self.report(field.clone(), Some(credit_type.span()), message);
                    }
                    match self.checked_amount(&field, amount, Positive::No) {
                        Some(amount) => {
                            per_credit_type.insert(credit_type.get_ref().clone(), amount);
                        }
                        None => ok = false,
                    }
                }
                ok.then_some(Overdraft {
                    default: DEFAULT_OVERDRAFT,
                    per_credit_type,
                })
            }
        }
    }
}
