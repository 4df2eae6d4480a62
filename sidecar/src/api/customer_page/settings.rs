//! What the customer page offers beyond the customer's own data (bundles, the checkout
//! URL, whether auto-recharge exists), read once at start-up from the operations file and
//! the pricing config. A leaf: the read listener's state holds it, the page reads it.

use crate::operations::{Bundle, Operations};

/// What the page offers beyond the customer's data, from the operations file and the
/// pricing config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageSettings {
    /// Top-up bundles (the operations file's `[[bundles]]`).
    pub bundles: Vec<Bundle>,
    /// Where "Buy" goes, with `bundle=` and `customer=` appended: the operations file's
    /// `[customer_page] checkout_url`, else the pricing config's `[billing] top_up_url`.
    pub checkout_url: Option<String>,
    /// Whether auto-recharge is configured (`[auto_recharge]`), so its status is shown.
    pub auto_recharge: bool,
    /// Per credit type, the highest auto-recharge target a customer may set on the page
    /// (`[customer_page.recharge_target_max]`, stored units); others are shown, not changed.
    pub recharge_max: std::collections::BTreeMap<String, u64>,
}

impl PageSettings {
    /// The settings from the operations file (if the sidecar has one) and the pricing
    /// config's top-up URL.
    pub fn new(ops: Option<&Operations>, top_up_url: Option<String>) -> Self {
        let Some(ops) = ops else {
            return Self {
                checkout_url: top_up_url,
                ..Self::default()
            };
        };
        Self {
            bundles: ops.bundles.values().cloned().collect(),
            checkout_url: ops.checkout_url.clone().or(top_up_url),
            auto_recharge: ops.auto_recharge.is_some(),
            recharge_max: ops.customer_recharge_max.clone(),
        }
    }
}
