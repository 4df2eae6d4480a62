//! The Redis implementation of [`CreditStore`]: `EVALSHA` of the canonical scripts on a
//! single server or a Redis Cluster, with a per-call timeout.
//!
//! Scripts are loaded with `SCRIPT LOAD` at connect time. A `NOSCRIPT` reply (a restart, a
//! failover, `SCRIPT FLUSH`) reloads the script and retries the call once. A timeout does
//! not mean the script did not run; callers retry with the same ids, which is safe because
//! every mutation is idempotent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, FromRedisValue, RedisError, ServerErrorKind, Value};

use crate::event::Event;
use crate::keys::{Keyspace, Shard, validate_id};
use crate::scripts::{SCRIPTS, Script};
use crate::store::{CreditStore, DueEntry, StoreError};
use crate::types::{
    Balance, GrantExpiryOutcome, GrantOutcome, GrantRef, GrantRequest, GrantState, HoldRecord,
    HoldRef, HoldState, InvalidArgument, PlacedHold, ReserveOutcome, ReserveRequest,
    ResolveOutcome, RestoreOutcome, RestoreState, SettleRequest, TypeBalance, parse_draws,
};

/// Per-call timeout when the deployment does not choose one: 50 ms is far above a script's
/// sub-millisecond run time on a healthy Redis, and low enough that a failing Redis adds
/// little to a request before the failure policy decides.
pub const DEFAULT_TIMEOUT_MS: u64 = 50;

/// Where the store's Redis is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server (or a primary behind a failover proxy), by URL.
    Single(String),
    /// A Redis Cluster, by the URLs of some of its nodes.
    Cluster(Vec<String>),
}

#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    pub(crate) async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> Result<T, RedisError> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }

    pub(crate) async fn query_pipe<T: FromRedisValue>(
        &mut self,
        pipe: &redis::Pipeline,
    ) -> Result<T, RedisError> {
        match self {
            Conn::Single(c) => pipe.query_async(c).await,
            Conn::Cluster(c) => pipe.query_async(c).await,
        }
    }
}

/// The credit store on Redis.
pub struct RedisStore {
    pub(crate) conn: Conn,
    keyspace: Keyspace,
    timeout: Duration,
    reloads: AtomicU64,
}

fn unavailable(op: &'static str, e: &RedisError) -> StoreError {
    StoreError::Unavailable {
        op,
        message: e.to_string(),
    }
}

fn map_err(op: &'static str, e: RedisError) -> StoreError {
    if e.is_timeout() {
        StoreError::Timeout { op, timeout_ms: 0 }
    } else if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound | ErrorKind::Server(ServerErrorKind::ClusterDown)
        )
    {
        unavailable(op, &e)
    } else if let Some(detail) = e.code().filter(|c| *c == "CG_BADARG").and(e.detail()) {
        StoreError::Protocol {
            op,
            message: format!("script refused an argument: {detail}"),
        }
    } else {
        StoreError::Protocol {
            op,
            message: e.to_string(),
        }
    }
}

/// Reads a script's array reply by position, with errors naming the position.
struct Reply {
    op: &'static str,
    items: Vec<Value>,
}

impl Reply {
    fn new(op: &'static str, v: Value) -> Result<Self, StoreError> {
        match v {
            Value::Array(items) => Ok(Self { op, items }),
            other => Err(StoreError::Protocol {
                op,
                message: format!("expected an array reply, got {other:?}"),
            }),
        }
    }

    fn bad(&self, i: usize, what: &str) -> StoreError {
        StoreError::Protocol {
            op: self.op,
            message: format!(
                "reply item {i}: expected {what}, got {:?}",
                self.items.get(i)
            ),
        }
    }

    fn str(&self, i: usize) -> Result<String, StoreError> {
        match self.items.get(i) {
            Some(Value::BulkString(b)) => {
                String::from_utf8(b.clone()).map_err(|_| self.bad(i, "utf-8 text"))
            }
            Some(Value::SimpleString(s)) => Ok(s.clone()),
            _ => Err(self.bad(i, "a string")),
        }
    }

    fn int(&self, i: usize) -> Result<i64, StoreError> {
        match self.items.get(i) {
            Some(Value::Int(n)) => Ok(*n),
            _ => Err(self.bad(i, "an integer")),
        }
    }

    fn uint(&self, i: usize) -> Result<u64, StoreError> {
        u64::try_from(self.int(i)?).map_err(|_| self.bad(i, "a non-negative integer"))
    }

    fn draws(&self, i: usize) -> Result<Vec<crate::types::Draw>, StoreError> {
        parse_draws(&self.str(i)?).map_err(|_| self.bad(i, "draws"))
    }
}

/// Parses one stream entry into an event; the error names what is wrong.
pub(crate) fn parse_entry(entry: redis::streams::StreamId) -> Result<Event, String> {
    let fields: Vec<(String, String)> = entry
        .map
        .into_iter()
        .map(|(k, v)| Ok((k, String::from_redis_value(v)?)))
        .collect::<Result<_, redis::ParsingError>>()
        .map_err(|e| e.to_string())?;
    Event::from_fields(fields.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|e| e.to_string())
}

fn bad_id(field: &'static str, id: &str) -> Result<(), StoreError> {
    validate_id(field, id).map_err(|message| InvalidArgument { field, message }.into())
}

impl RedisStore {
    /// Connects, loads every script and checks the server answers.
    pub async fn connect(
        target: &RedisTarget,
        keyspace: Keyspace,
        timeout_ms: u64,
    ) -> Result<Self, StoreError> {
        let op = "connect";
        let conn = match target {
            RedisTarget::Single(url) => {
                let client = redis::Client::open(url.as_str()).map_err(|e| map_err(op, e))?;
                let cfg = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_millis(timeout_ms.max(1000))))
                    .set_number_of_retries(2);
                Conn::Single(
                    client
                        .get_connection_manager_with_config(cfg)
                        .await
                        .map_err(|e| unavailable(op, &e))?,
                )
            }
            RedisTarget::Cluster(urls) => {
                let client =
                    redis::cluster::ClusterClient::new(urls.clone()).map_err(|e| map_err(op, e))?;
                Conn::Cluster(
                    client
                        .get_async_connection()
                        .await
                        .map_err(|e| unavailable(op, &e))?,
                )
            }
        };
        let store = Self {
            conn,
            keyspace,
            timeout: Duration::from_millis(timeout_ms),
            reloads: AtomicU64::new(0),
        };
        store.load_scripts().await?;
        Ok(store)
    }

    /// Loads every script (on every node of a cluster).
    pub async fn load_scripts(&self) -> Result<(), StoreError> {
        for script in SCRIPTS.all() {
            let sha: String = self
                .conn
                .clone()
                .query(redis::cmd("SCRIPT").arg("LOAD").arg(&script.source))
                .await
                .map_err(|e| map_err("script_load", e))?;
            if sha != script.sha {
                return Err(StoreError::Protocol {
                    op: "script_load",
                    message: format!(
                        "{}: server sha {sha} differs from {}",
                        script.name, script.sha
                    ),
                });
            }
        }
        Ok(())
    }

    /// The customer id of an API key, by the hex SHA-256 of its plaintext; `None` for an
    /// unknown key. Keys are written by the sidecar's admin API.
    pub async fn api_key_customer(&self, sha256_hex: &str) -> Result<Option<String>, StoreError> {
        let key = self.keyspace.api_key(sha256_hex);
        let mut conn = self.conn.clone();
        self.with_timeout("api_key", async {
            conn.query(redis::cmd("GET").arg(&key)).await
        })
        .await
    }

    /// Publishes an API key for the gateways: its hex SHA-256 maps to `customer` (no
    /// expiry). Idempotent; the sidecar's admin API calls it after recording the key.
    pub async fn set_api_key(&self, sha256_hex: &str, customer: &str) -> Result<(), StoreError> {
        bad_id("customer", customer)?;
        let key = self.keyspace.api_key(sha256_hex);
        let mut conn = self.conn.clone();
        self.with_timeout("set_api_key", async {
            conn.query::<()>(redis::cmd("SET").arg(&key).arg(customer))
                .await
        })
        .await
    }

    /// Withdraws an API key from the gateways (idempotent: an absent key is fine).
    pub async fn delete_api_key(&self, sha256_hex: &str) -> Result<(), StoreError> {
        let key = self.keyspace.api_key(sha256_hex);
        let mut conn = self.conn.clone();
        self.with_timeout("delete_api_key", async {
            conn.query::<()>(redis::cmd("DEL").arg(&key)).await
        })
        .await
    }

    /// Checks that Redis answers (`PING`; every primary of a cluster).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: String = self
            .with_timeout("ping", async { conn.query(&redis::cmd("PING")).await })
            .await?;
        Ok(())
    }

    /// Replaces a customer's grants, balances and applied-grant ids with `state`, unless
    /// the customer has pending holds. For the sidecar's rebuild from the ledger.
    pub async fn restore(&self, state: &RestoreState) -> Result<RestoreOutcome, StoreError> {
        bad_id("customer", &state.customer)?;
        for g in &state.grants {
            bad_id("grant_id", &g.grant_id)?;
            bad_id("credit_type", &g.credit_type)?;
        }
        let k = self.keyspace.customer(&state.customer);
        let mut args = vec![state.customer.clone(), state.grants.len().to_string()];
        for g in &state.grants {
            args.extend([
                g.grant_id.clone(),
                g.credit_type.clone(),
                g.remaining.to_string(),
                g.priority.to_string(),
                g.expires_at_ms.unwrap_or(0).to_string(),
                g.cost_basis.to_string(),
                g.created_ms.to_string(),
            ]);
        }
        args.push(state.debts.len().to_string());
        for (t, d) in &state.debts {
            args.extend([t.clone(), d.to_string()]);
        }
        args.push(state.applied.len().to_string());
        for (id, t, amount) in &state.applied {
            args.extend([id.clone(), t.clone(), amount.to_string()]);
        }
        let keys = [
            &*k.grants,
            &*k.balance,
            &*k.applied,
            &*k.grant_expiry,
            &*k.deadlines,
        ];
        let r = self.eval(&SCRIPTS.restore, &keys, &args).await?;
        let at_ms = r.uint(1)?;
        Ok(match r.str(0)?.as_str() {
            "restored" => RestoreOutcome::Restored {
                at_ms,
                grants: r.uint(2)?,
            },
            "busy" => RestoreOutcome::Busy {
                at_ms,
                pending_holds: r.uint(2)?,
            },
            _ => return Err(r.bad(0, "a restore status")),
        })
    }

    /// How many times a `NOSCRIPT` reply made this client reload a script.
    pub fn script_reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// The key space.
    pub fn keyspace(&self) -> &Keyspace {
        &self.keyspace
    }

    pub(crate) async fn with_timeout<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r.map_err(|e| match map_err(op, e) {
                StoreError::Timeout { op, .. } => StoreError::Timeout {
                    op,
                    timeout_ms: self.timeout.as_millis() as u64,
                },
                other => other,
            }),
            Err(_) => Err(StoreError::Timeout {
                op,
                timeout_ms: self.timeout.as_millis() as u64,
            }),
        }
    }

    /// Runs a script by SHA; on `NOSCRIPT` loads it and retries once.
    async fn eval(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[String],
    ) -> Result<Reply, StoreError> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&script.sha).arg(keys.len()).arg(keys).arg(args);
        let mut conn = self.conn.clone();
        let value = self
            .with_timeout(script.name, async {
                match conn.query::<Value>(&cmd).await {
                    Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                        self.reloads.fetch_add(1, Ordering::Relaxed);
                        conn.query::<String>(redis::cmd("SCRIPT").arg("LOAD").arg(&script.source))
                            .await?;
                        conn.query::<Value>(&cmd).await
                    }
                    other => other,
                }
            })
            .await?;
        Reply::new(script.name, value)
    }

    /// The oldest events of one shard's stream with their stream entry ids, oldest first,
    /// at most `count`. The sidecar reads streams with a consumer group; this is for tools
    /// and tests.
    pub async fn stream_events(
        &self,
        shard: Shard,
        count: usize,
    ) -> Result<Vec<(String, Event)>, StoreError> {
        self.read_stream("stream_events", "XRANGE", shard, ["-", "+"], count)
            .await
    }

    /// The newest events of one shard's stream, newest first, at most `count`, strictly
    /// older than the stream entry id `before` when given (to page backwards).
    pub async fn newest_events(
        &self,
        shard: Shard,
        before: Option<&str>,
        count: usize,
    ) -> Result<Vec<(String, Event)>, StoreError> {
        let end = before.map_or_else(|| "+".to_string(), |id| format!("({id}"));
        self.read_stream(
            "newest_events",
            "XREVRANGE",
            shard,
            [end.as_str(), "-"],
            count,
        )
        .await
    }

    async fn read_stream(
        &self,
        op: &'static str,
        command: &str,
        shard: Shard,
        range: [&str; 2],
        count: usize,
    ) -> Result<Vec<(String, Event)>, StoreError> {
        let key = self.keyspace.events(shard);
        let mut cmd = redis::cmd(command);
        cmd.arg(&key)
            .arg(range[0])
            .arg(range[1])
            .arg("COUNT")
            .arg(count);
        let mut conn = self.conn.clone();
        let reply: redis::streams::StreamRangeReply = self
            .with_timeout(op, async { conn.query(&cmd).await })
            .await?;
        reply
            .ids
            .into_iter()
            .map(|entry| {
                let id = entry.id.clone();
                let event = parse_entry(entry).map_err(|message| StoreError::Protocol {
                    op,
                    message: format!("entry {id} of {key}: {message}"),
                })?;
                Ok((id, event))
            })
            .collect()
    }

    async fn due(
        &self,
        op: &'static str,
        key: String,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<DueEntry>, StoreError> {
        let mut conn = self.conn.clone();
        let rows: Vec<(String, u64)> = self
            .with_timeout(op, async {
                conn.query(
                    redis::cmd("ZRANGE")
                        .arg(&key)
                        .arg("-inf")
                        .arg(now_ms)
                        .arg("BYSCORE")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(limit)
                        .arg("WITHSCORES"),
                )
                .await
            })
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(m, due_ms)| {
                let (customer, id) = m.split_once('/')?;
                Some(DueEntry {
                    customer: customer.to_string(),
                    id: id.to_string(),
                    due_ms,
                })
            })
            .collect())
    }

    fn hold_keys(&self, customer: &str, hold_id: &str) -> [String; 6] {
        let k = self.keyspace.customer(customer);
        let hold = k.hold(hold_id);
        [
            k.grants,
            k.balance,
            hold,
            k.deadlines,
            k.grant_expiry,
            k.events,
        ]
    }

    async fn resolve(
        &self,
        script: &Script,
        hold: &HoldRef,
        extra: &[String],
    ) -> Result<ResolveOutcome, StoreError> {
        let keys = self.hold_keys(&hold.customer, &hold.hold_id);
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let mut args = vec![hold.customer.clone(), hold.hold_id.clone()];
        args.extend_from_slice(extra);
        let r = self.eval(script, &keys, &args).await?;
        let at_ms = r.uint(1)?;
        Ok(match r.str(0)?.as_str() {
            "posted" => ResolveOutcome::Posted {
                at_ms,
                posted: r.uint(2)?,
                shortfall: r.uint(3)?,
                returned: r.uint(4)?,
                available_after: r.int(5)?,
            },
            "voided" => ResolveOutcome::Voided {
                at_ms,
                returned: r.uint(2)?,
            },
            "expired" => ResolveOutcome::Expired {
                at_ms,
                returned: r.uint(2)?,
            },
            "not_due" => ResolveOutcome::NotDue {
                at_ms,
                deadline_ms: r.uint(2)?,
            },
            "already_posted" => ResolveOutcome::AlreadyPosted {
                at_ms,
                posted: r.uint(2)?,
            },
            "already_voided" => ResolveOutcome::AlreadyVoided { at_ms },
            "already_expired" => ResolveOutcome::AlreadyExpired { at_ms },
            "unknown" => ResolveOutcome::Unknown { at_ms },
            _ => return Err(r.bad(0, "a resolve status")),
        })
    }
}

#[async_trait]
impl CreditStore for RedisStore {
    async fn grant(&self, req: &GrantRequest) -> Result<GrantOutcome, StoreError> {
        req.validate()?;
        let k = self.keyspace.customer(&req.customer);
        let args = [
            req.customer.clone(),
            req.grant_id.clone(),
            req.credit_type.clone(),
            req.amount.to_string(),
            req.priority.to_string(),
            req.expires_at_ms.unwrap_or(0).to_string(),
            req.cost_basis.to_string(),
            req.source.as_str().to_string(),
            req.actor.clone(),
            req.reason.clone(),
        ];
        let keys = [
            &*k.grants,
            &*k.balance,
            &*k.applied,
            &*k.grant_expiry,
            &*k.events,
        ];
        let r = self.eval(&SCRIPTS.grant, &keys, &args).await?;
        let at_ms = r.uint(1)?;
        Ok(match r.str(0)?.as_str() {
            "granted" => GrantOutcome::Granted {
                at_ms,
                debt_repaid: r.uint(2)?,
            },
            "duplicate" => GrantOutcome::Duplicate { at_ms },
            "conflict" => GrantOutcome::Conflict {
                at_ms,
                first_credit_type: r.str(2)?,
                first_amount: r.uint(3)?,
            },
            "already_expired" => GrantOutcome::AlreadyExpired { at_ms },
            _ => return Err(r.bad(0, "a grant status")),
        })
    }

    async fn reserve(&self, req: &ReserveRequest) -> Result<ReserveOutcome, StoreError> {
        req.validate()?;
        let keys = self.hold_keys(&req.customer, &req.hold_id);
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let args = [
            req.customer.clone(),
            req.hold_id.clone(),
            req.credit_type.clone(),
            req.amount.to_string(),
            req.ttl_ms.to_string(),
            req.overdraft_limit.to_string(),
            u8::from(req.force).to_string(),
            req.request_id.clone(),
            req.route.clone(),
            req.feature.clone(),
            req.retain_ms.to_string(),
            req.pricing_version.clone(),
            req.occurred_at_ms.unwrap_or(0).to_string(),
        ];
        let r = self.eval(&SCRIPTS.reserve, &keys, &args).await?;
        let at_ms = r.uint(1)?;
        Ok(match r.str(0)?.as_str() {
            "placed" => ReserveOutcome::Placed {
                at_ms,
                hold: PlacedHold {
                    deadline_ms: r.uint(2)?,
                    draws: r.draws(3)?,
                    overdraft: r.uint(4)?,
                    over_limit: r.int(5)? == 1,
                },
                available_after: r.int(6)?,
            },
            "replay" => ReserveOutcome::Replay {
                at_ms,
                state: r.str(2)?.parse().map_err(|_| r.bad(2, "a hold state"))?,
                hold: PlacedHold {
                    deadline_ms: r.uint(3)?,
                    draws: r.draws(4)?,
                    overdraft: r.uint(5)?,
                    over_limit: r.int(6)? == 1,
                },
            },
            "conflict" => ReserveOutcome::Conflict {
                at_ms,
                first_credit_type: r.str(2)?,
                first_amount: r.uint(3)?,
            },
            "insufficient" => ReserveOutcome::Insufficient {
                at_ms,
                available: r.int(2)?,
            },
            _ => return Err(r.bad(0, "a reserve status")),
        })
    }

    async fn settle(&self, req: &SettleRequest) -> Result<ResolveOutcome, StoreError> {
        req.validate()?;
        let hold = HoldRef {
            customer: req.customer.clone(),
            hold_id: req.hold_id.clone(),
        };
        self.resolve(
            &SCRIPTS.settle,
            &hold,
            &[req.actual.to_string(), req.overdraft_limit.to_string()],
        )
        .await
    }

    async fn void(&self, hold: &HoldRef) -> Result<ResolveOutcome, StoreError> {
        hold.validate()?;
        self.resolve(&SCRIPTS.void, hold, &[]).await
    }

    async fn expire_hold(&self, hold: &HoldRef) -> Result<ResolveOutcome, StoreError> {
        hold.validate()?;
        self.resolve(&SCRIPTS.expire_hold, hold, &[]).await
    }

    async fn expire_grant(&self, grant: &GrantRef) -> Result<GrantExpiryOutcome, StoreError> {
        grant.validate()?;
        let k = self.keyspace.customer(&grant.customer);
        let keys = [&*k.grants, &*k.balance, &*k.grant_expiry, &*k.events];
        let args = [grant.customer.clone(), grant.grant_id.clone()];
        let r = self.eval(&SCRIPTS.expire_grant, &keys, &args).await?;
        let at_ms = r.uint(1)?;
        Ok(match r.str(0)?.as_str() {
            "expired" => GrantExpiryOutcome::Expired {
                at_ms,
                amount: r.uint(2)?,
            },
            "not_due" => GrantExpiryOutcome::NotDue {
                at_ms,
                expires_at_ms: r.uint(2)?,
            },
            "already_expired" => GrantExpiryOutcome::AlreadyExpired { at_ms },
            "unknown" => GrantExpiryOutcome::Unknown { at_ms },
            _ => return Err(r.bad(0, "a grant expiry status")),
        })
    }

    async fn balance(&self, customer: &str) -> Result<Balance, StoreError> {
        bad_id("customer", customer)?;
        let k = self.keyspace.customer(customer);
        let r = self
            .eval(
                &SCRIPTS.balance,
                &[&k.grants, &k.balance],
                &[customer.to_string()],
            )
            .await?;
        let at_ms = r.uint(0)?;
        let n_types = r.uint(1)? as usize;
        let mut i = 2;
        let mut types = Vec::with_capacity(n_types);
        for _ in 0..n_types {
            types.push(TypeBalance {
                credit_type: r.str(i)?,
                available: r.int(i + 1)?,
                held: r.int(i + 2)?,
                debt: r.int(i + 3)?,
                book_available: r.int(i + 4)?,
            });
            i += 5;
        }
        let n_grants = r.uint(i)? as usize;
        i += 1;
        let mut grants = Vec::with_capacity(n_grants);
        for _ in 0..n_grants {
            let expires = r.uint(i + 5)?;
            grants.push(GrantState {
                grant_id: r.str(i)?,
                credit_type: r.str(i + 1)?,
                remaining: r.uint(i + 2)?,
                held: r.uint(i + 3)?,
                priority: u32::try_from(r.uint(i + 4)?).map_err(|_| r.bad(i + 4, "a priority"))?,
                expires_at_ms: (expires != 0).then_some(expires),
                cost_basis: r.uint(i + 6)?,
                created_ms: r.uint(i + 7)?,
                expired: r.int(i + 8)? == 1,
            });
            i += 9;
        }
        Ok(Balance {
            at_ms,
            types,
            grants,
        })
    }

    async fn hold(&self, hold: &HoldRef) -> Result<Option<HoldRecord>, StoreError> {
        hold.validate()?;
        let op = "hold";
        let key = self.keyspace.customer(&hold.customer).hold(&hold.hold_id);
        let mut conn = self.conn.clone();
        let h: HashMap<String, String> = self
            .with_timeout(op, async {
                conn.query(redis::cmd("HGETALL").arg(&key)).await
            })
            .await?;
        if h.is_empty() || h.get("customer") != Some(&hold.customer) {
            return Ok(None);
        }
        let field = |name: &str| -> Result<&String, StoreError> {
            h.get(name).ok_or_else(|| StoreError::Protocol {
                op,
                message: format!("hold {key} lacks field {name:?}"),
            })
        };
        let num = |name: &str| -> Result<u64, StoreError> {
            field(name)?.parse().map_err(|_| StoreError::Protocol {
                op,
                message: format!("hold {key} field {name:?} is not an integer"),
            })
        };
        let state: HoldState = field("state")?
            .parse()
            .map_err(|message| StoreError::Protocol { op, message })?;
        Ok(Some(HoldRecord {
            state,
            customer: field("customer")?.clone(),
            credit_type: field("type")?.clone(),
            amount: num("amount")?,
            deadline_ms: num("deadline")?,
            created_ms: num("created")?,
            draws: parse_draws(field("draws")?)
                .map_err(|message| StoreError::Protocol { op, message })?,
            overdraft: num("overdraft")?,
            over_limit: num("over_limit")? == 1,
            request_id: field("request_id")?.clone(),
            route: field("route")?.clone(),
            feature: field("feature")?.clone(),
            pricing_version: h.get("pricing_version").cloned().unwrap_or_default(),
            posted: if h.contains_key("posted") {
                num("posted")?
            } else {
                0
            },
            resolved_ms: if h.contains_key("resolved") {
                Some(num("resolved")?)
            } else {
                None
            },
        }))
    }

    async fn due_holds(
        &self,
        shard: Shard,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<DueEntry>, StoreError> {
        self.due("due_holds", self.keyspace.deadlines(shard), now_ms, limit)
            .await
    }

    async fn due_grants(
        &self,
        shard: Shard,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<DueEntry>, StoreError> {
        self.due(
            "due_grants",
            self.keyspace.grant_expiry(shard),
            now_ms,
            limit,
        )
        .await
    }
}
