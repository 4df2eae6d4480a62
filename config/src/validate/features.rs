//! `[credit_types.NAME]` and `[features.NAME]`: what is priced, and in which credit.

use std::collections::BTreeMap;

use super::{Checker, Declared, key};
use crate::limits::MAX_SCALE;
use crate::model::{CreditType, Feature};
use crate::schema::{CreditTypeFile, FeatureFile, Name};

impl Checker<'_> {
    pub(super) fn credit_types(
        &mut self,
        credit_types: BTreeMap<Name, CreditTypeFile>,
    ) -> BTreeMap<String, CreditType> {
        let mut valid = BTreeMap::new();
        for (name, credit_type) in credit_types {
            let path = format!("credit_types.{}", key(name.get_ref()));
            let CreditTypeFile {
                display_name,
                scale,
            } = credit_type;
            let mut ok = self.identifier(&path, &name, "credit type name");
            let display_name = match display_name {
                None => name.get_ref().clone(),
                Some(display_name) => {
                    if display_name.get_ref().trim().is_empty() {
                        ok = false;
                        self.report(
                            format!("{path}.display_name"),
                            Some(display_name.span()),
                            "must not be empty".to_owned(),
                        );
                    }
                    display_name.into_inner()
                }
            };
            let scale_value = *scale.get_ref();
            let scale = match u32::try_from(scale_value) {
                Ok(scale) if scale <= MAX_SCALE => scale,
                _ => {
                    self.report(
                        format!("{path}.scale"),
                        Some(scale.span()),
                        format!("must be between 0 and {MAX_SCALE}, got {scale_value}"),
                    );
                    continue;
                }
            };
            if ok {
                let name = name.into_inner();
                let credit_type = CreditType {
                    name: name.clone(),
                    display_name,
                    scale,
                };
                valid.insert(name, credit_type);
            }
        }
        valid
    }

    pub(super) fn features(
        &mut self,
        features: BTreeMap<Name, FeatureFile>,
        declared: &Declared,
        credit_types: &BTreeMap<String, CreditType>,
    ) -> BTreeMap<String, Feature> {
        let mut valid = BTreeMap::new();
        for (name, feature) in features {
            let path = format!("features.{}", key(name.get_ref()));
            let FeatureFile {
                credit_type,
                cost,
                description,
            } = feature;
            let mut ok = self.identifier(&path, &name, "feature name");
            ok &= self.reference(
                &format!("{path}.credit_type"),
                &credit_type,
                "credit type",
                &declared.credit_types,
            );
            ok &= credit_types.contains_key(credit_type.get_ref());
            let cost = self.cost_rule(&format!("{path}.cost"), &cost);
            if let (true, Some(cost)) = (ok, cost) {
                let name = name.into_inner();
                let feature = Feature {
                    name: name.clone(),
                    credit_type: credit_type.into_inner(),
                    cost,
                    description,
                };
                valid.insert(name, feature);
            }
        }
        valid
    }
}
