//! The canonical Lua scripts as sent to Redis: the shared prelude followed by each body.

use std::sync::LazyLock;

const PRELUDE: &str = include_str!("../lua/prelude.lua");

/// One script: its full source and the SHA-1 that `EVALSHA` names it by.
#[derive(Debug)]
pub struct Script {
    /// Operation name, for errors and metrics.
    pub name: &'static str,
    /// Prelude plus body, exactly as loaded.
    pub source: String,
    /// Hex SHA-1 of `source`.
    pub sha: String,
}

impl Script {
    fn new(name: &'static str, body: &str) -> Self {
        let source = format!("{PRELUDE}\n{body}");
        let sha = sha1_smol::Sha1::from(source.as_bytes())
            .digest()
            .to_string();
        Self { name, source, sha }
    }
}

/// Every script of the protocol.
#[derive(Debug)]
pub struct Scripts {
    /// Adds a grant.
    pub grant: Script,
    /// Places a hold.
    pub reserve: Script,
    /// Posts a hold.
    pub settle: Script,
    /// Voids a hold.
    pub void: Script,
    /// Moves a pending hold's deadline.
    pub extend: Script,
    /// Expires a hold past its deadline.
    pub expire_hold: Script,
    /// Expires a grant past its expiry.
    pub expire_grant: Script,
    /// Reads a balance.
    pub balance: Script,
    /// Replaces a customer's state with one rebuilt from the ledger.
    pub restore: Script,
}

impl Scripts {
    /// All scripts, for loading.
    pub fn all(&self) -> [&Script; 9] {
        [
            &self.grant,
            &self.reserve,
            &self.settle,
            &self.void,
            &self.extend,
            &self.expire_hold,
            &self.expire_grant,
            &self.balance,
            &self.restore,
        ]
    }
}

/// The scripts, built once per process.
pub static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    grant: Script::new("grant", include_str!("../lua/grant.lua")),
    reserve: Script::new("reserve", include_str!("../lua/reserve.lua")),
    settle: Script::new("settle", include_str!("../lua/settle.lua")),
    void: Script::new("void", include_str!("../lua/void.lua")),
    extend: Script::new("extend", include_str!("../lua/extend.lua")),
    expire_hold: Script::new("expire_hold", include_str!("../lua/expire_hold.lua")),
    expire_grant: Script::new("expire_grant", include_str!("../lua/expire_grant.lua")),
    balance: Script::new("balance", include_str!("../lua/balance.lua")),
    restore: Script::new("restore", include_str!("../lua/restore.lua")),
});
