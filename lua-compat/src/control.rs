//! Fleet control in Redis: the published pricing config, the mode overrides with their
//! audit log, and gateway heartbeats. The sidecar writes them, gateways read them; nothing
//! here touches credits, and every key shares the `{control}` hash tag so the scripts below
//! stay on one Redis Cluster slot.
//!
//! Keys (`P` = the deployment's prefix):
//! - `P:{control}:config` hash: `version`, `hash`, `text`, `file`, `published_at_ms`
//! - `P:{control}:state` hash: `version`, `global`, `rollout_percent`, `route:<name>`,
//!   `customer:<id>` (mode names `off`, `shadow`, `enforce`)
//! - `P:{control}:audit` stream: one entry per change (`at_ms`, `actor`, `reason`, `change`,
//!   `version`)
//! - `P:{control}:gateways` set of gateway ids; `P:{control}:gateway:<id>` hash, the
//!   gateway's last heartbeat, expiring unless renewed
//! - channel `P:{control}:notify`: `config:<version>` or `state:<version>` after a change

use std::collections::{BTreeMap, HashMap};

use redis::Value;

use crate::keys::Keyspace;
use crate::redis_store::RedisStore;
use crate::store::StoreError;

/// Most audit entries kept in Redis (approximately, `MAXLEN ~`): years of changes at the
/// pace people flip modes, while a runaway script cannot grow the stream without bound.
pub const AUDIT_MAX_LEN: u64 = 100_000;

/// Most audit entries one listing returns.
pub const AUDIT_LIST_MAX: usize = 1_000;

/// Largest published config text, in bytes: a config is a human-edited file; this bounds
/// what every gateway downloads and parses.
pub const CONFIG_TEXT_MAX_BYTES: usize = 4 * 1024 * 1024;

/// Longest actor or reason of a change, in bytes.
pub const AUDIT_TEXT_MAX_BYTES: usize = 1_024;

/// A mode as stored in the control state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ControlMode {
    /// Pass everything through, no store calls.
    Off,
    /// Meter, never block.
    Shadow,
    /// Meter and block when credits are insufficient.
    Enforce,
}

impl ControlMode {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Shadow => "shadow",
            Self::Enforce => "enforce",
        }
    }
}

impl std::str::FromStr for ControlMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(Self::Off),
            "shadow" => Ok(Self::Shadow),
            "enforce" => Ok(Self::Enforce),
            other => Err(format!(
                "unknown mode {other:?} (known: off, shadow, enforce)"
            )),
        }
    }
}

/// The runtime overrides every gateway applies on top of its pricing config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ControlState {
    /// Increases by one with every change; 0 when nothing was ever set.
    pub version: u64,
    /// The fleet-wide mode; `Off` is the kill switch.
    pub global: Option<ControlMode>,
    /// Per-route modes, by route name.
    pub routes: BTreeMap<String, ControlMode>,
    /// Per-customer modes, by customer id.
    pub customers: BTreeMap<String, ControlMode>,
    /// Enforce for this percentage of customers (0 to 100, by a stable hash of the customer
    /// id) and shadow for the rest, where the mode would otherwise be enforce.
    pub rollout_percent: Option<u8>,
}

impl ControlState {
    /// Parses the state hash; a field that does not parse is an error naming it.
    pub fn from_fields(fields: &HashMap<String, String>) -> Result<Self, String> {
        let mut state = ControlState::default();
        let mode = |field: &str, value: &str| {
            value
                .parse::<ControlMode>()
                .map_err(|e| format!("control state field {field:?}: {e}"))
        };
        for (field, value) in fields {
            if field == "version" {
                state.version = value
                    .parse()
                    .map_err(|_| format!("control state field \"version\": {value:?}"))?;
            } else if field == "global" {
                state.global = Some(mode(field, value)?);
            } else if field == "rollout_percent" {
                state.rollout_percent = Some(
                    parse_percent(value)
                        .map_err(|e| format!("control state field \"rollout_percent\": {e}"))?,
                );
            } else if let Some(route) = field.strip_prefix("route:") {
                state.routes.insert(route.to_string(), mode(field, value)?);
            } else if let Some(customer) = field.strip_prefix("customer:") {
                state
                    .customers
                    .insert(customer.to_string(), mode(field, value)?);
            }
            // Unknown fields are left for newer gateways.
        }
        Ok(state)
    }
}

/// Parses a rollout percentage: a whole number from 0 to 100.
pub fn parse_percent(raw: &str) -> Result<u8, String> {
    match raw.trim().parse::<u8>() {
        Ok(p) if p <= 100 => Ok(p),
        _ => Err(format!("{raw:?} is not a whole percentage from 0 to 100")),
    }
}

/// One change of the control state; `None` clears an override.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlChange {
    /// The fleet-wide mode (`Off` is the kill switch).
    Global(Option<ControlMode>),
    /// One route's mode, by route name.
    Route(String, Option<ControlMode>),
    /// One customer's mode, by customer id.
    Customer(String, Option<ControlMode>),
    /// The enforced percentage of customers.
    Rollout(Option<u8>),
}

impl ControlChange {
    fn field_and_value(&self) -> (String, Option<String>) {
        let mode = |m: &Option<ControlMode>| m.map(|m| m.as_str().to_string());
        match self {
            Self::Global(m) => ("global".into(), mode(m)),
            Self::Route(name, m) => (format!("route:{name}"), mode(m)),
            Self::Customer(id, m) => (format!("customer:{id}"), mode(m)),
            Self::Rollout(p) => ("rollout_percent".into(), p.map(|p| p.to_string())),
        }
    }

    /// How the audit log shows the change: `global=off`, `route:GET /x=shadow`,
    /// `rollout_percent=10`, `customer:acme=(cleared)`.
    pub fn describe(&self) -> String {
        let (field, value) = self.field_and_value();
        format!("{field}={}", value.as_deref().unwrap_or("(cleared)"))
    }
}

/// A change with who made it and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditedChange {
    /// The change.
    pub change: ControlChange,
    /// Who made it (a person or a system), 1 to [`AUDIT_TEXT_MAX_BYTES`] bytes.
    pub actor: String,
    /// Why, 1 to [`AUDIT_TEXT_MAX_BYTES`] bytes.
    pub reason: String,
}

impl AuditedChange {
    /// Checks the change's texts; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        for (field, value) in [("actor", &self.actor), ("reason", &self.reason)] {
            if value.trim().is_empty() {
                return Err(format!("{field} is required and must not be empty"));
            }
            if value.len() > AUDIT_TEXT_MAX_BYTES {
                return Err(format!(
                    "{field} is longer than {AUDIT_TEXT_MAX_BYTES} bytes"
                ));
            }
        }
        let name = match &self.change {
            ControlChange::Route(name, _) => Some(("route", name)),
            ControlChange::Customer(id, _) => Some(("customer", id)),
            _ => None,
        };
        if let Some((field, value)) = name
            && (value.is_empty() || value.len() > AUDIT_TEXT_MAX_BYTES)
        {
            return Err(format!("{field} must be 1 to {AUDIT_TEXT_MAX_BYTES} bytes"));
        }
        Ok(())
    }
}

/// One entry of the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// The stream entry id (orders entries).
    pub id: String,
    /// When the change was made (Redis time), ms since the Unix epoch.
    pub at_ms: u64,
    /// Who made it.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// What changed ([`ControlChange::describe`]).
    pub change: String,
    /// The control state version the change produced.
    pub version: u64,
}

/// The pricing config as published for the fleet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedConfig {
    /// Monotonic version number, from 1.
    pub version: u64,
    /// SHA-1 of the text (the config crate's content hash).
    pub hash: String,
    /// The TOML text, validated by the publisher.
    pub text: String,
    /// The file it came from, for messages.
    pub file: String,
    /// When it was published (Redis time), ms since the Unix epoch.
    pub published_at_ms: u64,
}

/// What publishing a config did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishOutcome {
    /// A new version was published.
    Published {
        /// Its number.
        version: u64,
    },
    /// The same text is already the published version; nothing changed.
    Unchanged {
        /// The published version's number.
        version: u64,
    },
}

/// One gateway's last heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Heartbeat {
    /// The gateway's id (unique per process in the fleet).
    pub gateway_id: String,
    /// The pricing config version it runs (0: its own file, never published).
    pub config_version: u64,
    /// The content hash of the config it runs.
    pub config_hash: String,
    /// The control state version it applies.
    pub control_version: u64,
    /// Its fleet-wide mode as it applies it: `off`, `shadow`, `enforce` or `file` (no
    /// global override: each route's mode from the config).
    pub mode: String,
    /// Whether its local kill switch (file or env flag) forces `off`.
    pub forced_off: bool,
    /// When it sent the heartbeat (its clock), ms since the Unix epoch.
    pub at_ms: u64,
}

impl Heartbeat {
    fn to_fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("gateway_id", self.gateway_id.clone()),
            ("config_version", self.config_version.to_string()),
            ("config_hash", self.config_hash.clone()),
            ("control_version", self.control_version.to_string()),
            ("mode", self.mode.clone()),
            ("forced_off", u8::from(self.forced_off).to_string()),
            ("at_ms", self.at_ms.to_string()),
        ]
    }

    fn from_fields(f: &HashMap<String, String>) -> Self {
        let text = |name: &str| f.get(name).cloned().unwrap_or_default();
        let num = |name: &str| f.get(name).and_then(|v| v.parse().ok()).unwrap_or(0);
        Heartbeat {
            gateway_id: text("gateway_id"),
            config_version: num("config_version"),
            config_hash: text("config_hash"),
            control_version: num("control_version"),
            mode: text("mode"),
            forced_off: text("forced_off") == "1",
            at_ms: num("at_ms"),
        }
    }
}

/// The control keys of a deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlKeys {
    /// The published config hash.
    pub config: String,
    /// The control state hash.
    pub state: String,
    /// The audit stream.
    pub audit: String,
    /// The set of gateway ids that sent heartbeats.
    pub gateways: String,
    /// The pub/sub channel announcing changes.
    pub notify: String,
    gateway_prefix: String,
}

impl ControlKeys {
    /// The control keys under the keyspace's prefix.
    pub fn new(keyspace: &Keyspace) -> Self {
        let p = keyspace.prefix();
        Self {
            config: format!("{p}:{{control}}:config"),
            state: format!("{p}:{{control}}:state"),
            audit: format!("{p}:{{control}}:audit"),
            gateways: format!("{p}:{{control}}:gateways"),
            notify: format!("{p}:{{control}}:notify"),
            gateway_prefix: format!("{p}:{{control}}:gateway:"),
        }
    }

    /// One gateway's heartbeat hash.
    pub fn gateway(&self, id: &str) -> String {
        format!("{}{id}", self.gateway_prefix)
    }
}

/// Publishes a config text unless it is already the published one: numbers it with the
/// next version (above both the stored one and the caller's floor, so numbers keep
/// increasing even after Redis lost the hash), stores it and announces `config:<version>`
/// on the channel, atomically. KEYS: 1 config. ARGV: 1 hash, 2 text, 3 file, 4 channel,
/// 5 floor (the newest version the caller knows of).
const PUBLISH_CONFIG_LUA: &str = r"
local cur = redis.call('HGET', KEYS[1], 'hash')
if cur == ARGV[1] then
  return {0, tonumber(redis.call('HGET', KEYS[1], 'version'))}
end
local v = math.max(tonumber(redis.call('HGET', KEYS[1], 'version') or '0'), tonumber(ARGV[5])) + 1
redis.call('HSET', KEYS[1], 'version', v)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'hash', ARGV[1], 'text', ARGV[2], 'file', ARGV[3],
  'published_at_ms', now)
redis.call('PUBLISH', ARGV[4], 'config:' .. v)
return {1, v}
";

/// Applies one control change, appends it to the audit stream and announces
/// `state:<version>`, atomically. KEYS: 1 state, 2 audit. ARGV: 1 field, 2 value ('' to
/// clear), 3 actor, 4 reason, 5 change text, 6 channel, 7 audit max length.
const CHANGE_CONTROL_LUA: &str = r"
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
local v = redis.call('HINCRBY', KEYS[1], 'version', 1)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', 'at_ms', now, 'actor', ARGV[3],
  'reason', ARGV[4], 'change', ARGV[5], 'version', v)
redis.call('PUBLISH', ARGV[6], 'state:' .. v)
return v
";

fn fields_of(value: Value) -> HashMap<String, String> {
    redis::from_redis_value(value).unwrap_or_default()
}

impl RedisStore {
    /// The control keys of this store's keyspace.
    pub fn control_keys(&self) -> ControlKeys {
        ControlKeys::new(self.keyspace())
    }

    /// Publishes `text` (already validated by the caller) as the fleet's pricing config,
    /// numbered above `floor` (the newest version the caller published or saw).
    pub async fn publish_config(
        &self,
        hash: &str,
        text: &str,
        file: &str,
        floor: u64,
    ) -> Result<PublishOutcome, StoreError> {
        if text.len() > CONFIG_TEXT_MAX_BYTES {
            return Err(StoreError::Protocol {
                op: "publish_config",
                message: format!("config text is larger than {CONFIG_TEXT_MAX_BYTES} bytes"),
            });
        }
        let k = self.control_keys();
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(PUBLISH_CONFIG_LUA)
            .arg(1)
            .arg(&k.config)
            .arg(hash)
            .arg(text)
            .arg(file)
            .arg(&k.notify)
            .arg(floor);
        let mut conn = self.conn.clone();
        let (published, version): (u8, u64) = self
            .with_timeout("publish_config", async { conn.query(&cmd).await })
            .await?;
        Ok(if published == 1 {
            PublishOutcome::Published { version }
        } else {
            PublishOutcome::Unchanged { version }
        })
    }

    /// The published config's version and hash, without its text (cheap to poll).
    pub async fn published_version(&self) -> Result<Option<(u64, String)>, StoreError> {
        let k = self.control_keys();
        let mut conn = self.conn.clone();
        let (version, hash): (Option<u64>, Option<String>) = self
            .with_timeout("published_version", async {
                conn.query(
                    redis::cmd("HMGET")
                        .arg(&k.config)
                        .arg("version")
                        .arg("hash"),
                )
                .await
            })
            .await?;
        Ok(version.zip(hash))
    }

    /// The published config with its text, if any was published.
    pub async fn published_config(&self) -> Result<Option<PublishedConfig>, StoreError> {
        let k = self.control_keys();
        let mut conn = self.conn.clone();
        let value: Value = self
            .with_timeout("published_config", async {
                conn.query(redis::cmd("HGETALL").arg(&k.config)).await
            })
            .await?;
        let f = fields_of(value);
        let (Some(version), Some(hash), Some(text)) = (
            f.get("version").and_then(|v| v.parse().ok()),
            f.get("hash"),
            f.get("text"),
        ) else {
            return Ok(None);
        };
        Ok(Some(PublishedConfig {
            version,
            hash: hash.clone(),
            text: text.clone(),
            file: f.get("file").cloned().unwrap_or_default(),
            published_at_ms: f
                .get("published_at_ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        }))
    }

    /// The control state (the default state when nothing was ever set).
    pub async fn control_state(&self) -> Result<ControlState, StoreError> {
        let k = self.control_keys();
        let mut conn = self.conn.clone();
        let value: Value = self
            .with_timeout("control_state", async {
                conn.query(redis::cmd("HGETALL").arg(&k.state)).await
            })
            .await?;
        ControlState::from_fields(&fields_of(value)).map_err(|message| StoreError::Protocol {
            op: "control_state",
            message,
        })
    }

    /// Applies an audited change; returns the new control state version.
    pub async fn change_control(&self, change: &AuditedChange) -> Result<u64, StoreError> {
        change.validate().map_err(|message| StoreError::Protocol {
            op: "change_control",
            message,
        })?;
        let k = self.control_keys();
        let (field, value) = change.change.field_and_value();
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(CHANGE_CONTROL_LUA)
            .arg(2)
            .arg(&k.state)
            .arg(&k.audit)
            .arg(field)
            .arg(value.unwrap_or_default())
            .arg(&change.actor)
            .arg(&change.reason)
            .arg(change.change.describe())
            .arg(&k.notify)
            .arg(AUDIT_MAX_LEN);
        let mut conn = self.conn.clone();
        self.with_timeout("change_control", async { conn.query(&cmd).await })
            .await
    }

    /// The newest audit entries, newest first, at most `limit` (capped at
    /// [`AUDIT_LIST_MAX`]).
    pub async fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let k = self.control_keys();
        let mut conn = self.conn.clone();
        let rows: Vec<(String, HashMap<String, String>)> = self
            .with_timeout("audit_log", async {
                conn.query(
                    redis::cmd("XREVRANGE")
                        .arg(&k.audit)
                        .arg("+")
                        .arg("-")
                        .arg("COUNT")
                        .arg(limit.clamp(1, AUDIT_LIST_MAX)),
                )
                .await
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, f)| {
                let text = |name: &str| f.get(name).cloned().unwrap_or_default();
                let num = |name: &str| f.get(name).and_then(|v| v.parse().ok()).unwrap_or(0);
                AuditEntry {
                    at_ms: num("at_ms"),
                    actor: text("actor"),
                    reason: text("reason"),
                    change: text("change"),
                    version: num("version"),
                    id,
                }
            })
            .collect())
    }

    /// Records a gateway's heartbeat, kept for `ttl_ms` unless renewed.
    pub async fn heartbeat(&self, beat: &Heartbeat, ttl_ms: u64) -> Result<(), StoreError> {
        let k = self.control_keys();
        let key = k.gateway(&beat.gateway_id);
        let mut hset = redis::cmd("HSET");
        hset.arg(&key);
        for (field, value) in beat.to_fields() {
            hset.arg(field).arg(value);
        }
        let mut pipe = redis::pipe();
        pipe.atomic()
            .add_command(hset)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(ttl_ms)
            .ignore()
            .cmd("SADD")
            .arg(&k.gateways)
            .arg(&beat.gateway_id)
            .ignore();
        let mut conn = self.conn.clone();
        self.with_timeout("heartbeat", async { conn.query_pipe::<()>(&pipe).await })
            .await
    }

    /// Every gateway with a live heartbeat; ids whose heartbeat expired are dropped from
    /// the set.
    pub async fn gateways(&self) -> Result<Vec<Heartbeat>, StoreError> {
        let k = self.control_keys();
        let mut conn = self.conn.clone();
        let ids: Vec<String> = self
            .with_timeout("gateways", async {
                conn.query(redis::cmd("SMEMBERS").arg(&k.gateways)).await
            })
            .await?;
        let mut live = Vec::new();
        for id in ids {
            let value: Value = self
                .with_timeout("gateways", async {
                    conn.query(redis::cmd("HGETALL").arg(k.gateway(&id))).await
                })
                .await?;
            let fields = fields_of(value);
            if fields.is_empty() {
                let _: Result<i64, _> = self
                    .with_timeout("gateways", async {
                        conn.query(redis::cmd("SREM").arg(&k.gateways).arg(&id))
                            .await
                    })
                    .await;
                continue;
            }
            live.push(Heartbeat::from_fields(&fields));
        }
        live.sort_by(|a, b| a.gateway_id.cmp(&b.gateway_id));
        Ok(live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_parses_every_override() {
        let fields: HashMap<String, String> = [
            ("version", "4"),
            ("global", "shadow"),
            ("rollout_percent", "10"),
            ("route:GET /v1/search", "off"),
            ("customer:acme", "enforce"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let state = ControlState::from_fields(&fields).unwrap();
        assert_eq!(state.version, 4);
        assert_eq!(state.global, Some(ControlMode::Shadow));
        assert_eq!(state.rollout_percent, Some(10));
        assert_eq!(state.routes["GET /v1/search"], ControlMode::Off);
        assert_eq!(state.customers["acme"], ControlMode::Enforce);
        let bad: HashMap<String, String> = [("global".to_string(), "enforced".to_string())].into();
        assert_eq!(
            ControlState::from_fields(&bad).unwrap_err(),
            "control state field \"global\": unknown mode \"enforced\" (known: off, shadow, enforce)"
        );
    }

    #[test]
    fn changes_describe_themselves_and_need_actor_and_reason() {
        let change = AuditedChange {
            change: ControlChange::Route("GET /x".into(), Some(ControlMode::Shadow)),
            actor: "sre@example.com".into(),
            reason: " ".into(),
        };
        assert_eq!(change.change.describe(), "route:GET /x=shadow");
        assert_eq!(
            change.validate().unwrap_err(),
            "reason is required and must not be empty"
        );
        assert_eq!(
            ControlChange::Rollout(None).describe(),
            "rollout_percent=(cleared)"
        );
        assert_eq!(
            parse_percent("101").unwrap_err(),
            "\"101\" is not a whole percentage from 0 to 100"
        );
    }
}
