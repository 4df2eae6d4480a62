//! The Redis implementation of [`CreditStore`]: `EVALSHA` of the canonical scripts on a
//! single server or a Redis Cluster, with a per-call timeout.
//!
//! Scripts are loaded with `SCRIPT LOAD` at connect time. A `NOSCRIPT` reply (a restart, a
//! failover, `SCRIPT FLUSH`) runs the call once more with `EVAL` and the script's source. A timeout does
//! not mean the script did not run; callers retry with the same ids, which is safe because
//! every mutation is idempotent.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, FromRedisValue, RedisError, ServerErrorKind, Value};

mod lease;

pub use lease::{LEASE_TRANSFER_BURNS_MAX, LeaseBurn, LeaseTransfer, LeaseTransferOutcome};

use crate::event::Event;
use crate::idempotency::{IdempotencyClaim, KeyedReserveOutcome, decode_keyed_reserve};
use crate::keys::{Keyspace, Shard, validate_id};
use crate::redact::redact_secrets;
use crate::replies::{
    EntryError, decode_balance, decode_entry, decode_expire_hold, decode_extend, decode_grant,
    decode_grant_expiry, decode_hold, decode_reserve, decode_restore, decode_settle, decode_void,
};
use crate::scripts::{SCRIPTS, Script};
use crate::store::{CreditStore, DueEntry, StoreError};
use crate::types::{
    Balance, ExtendOutcome, ExtendRequest, GrantExpiryOutcome, GrantOutcome, GrantRef,
    GrantRequest, HoldRecord, HoldRef, InvalidArgument, ReserveOutcome, ReserveRequest,
    ResolveOutcome, RestoreOutcome, RestoreState, SettleRequest,
};

/// Per-call timeout when the deployment does not choose one: 50 ms is far above a script's
/// sub-millisecond run time on a healthy Redis, and low enough that a failing Redis adds
/// little to a request before the failure policy decides.
pub const DEFAULT_TIMEOUT_MS: u64 = 50;

/// Where the store's Redis is. Its `Debug` output hides the URLs' passwords.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server (or a primary behind a failover proxy), by URL.
    Single(String),
    /// A Redis Cluster, by the URLs of some of its nodes.
    Cluster(Vec<String>),
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |url: &String| redact_secrets(url);
        match self {
            Self::Single(url) => f.debug_tuple("Single").field(&redacted(url)).finish(),
            Self::Cluster(urls) => f
                .debug_tuple("Cluster")
                .field(&urls.iter().map(redacted).collect::<Vec<_>>())
                .finish(),
        }
    }
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
        message: redact_secrets(&e.to_string()),
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
            message: redact_secrets(&e.to_string()),
        }
    }
}

fn bad_id(field: &'static str, id: &str) -> Result<(), StoreError> {
    validate_id(field, id).map_err(|message| InvalidArgument { field, message }.into())
}

/// Whether `id` reads as a stream entry id `<ms>-<seq>`.
fn is_stream_id(id: &str) -> bool {
    id.split_once('-')
        .is_some_and(|(ms, seq)| ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok())
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

    /// Checks that Redis takes writes: `SET` of the readiness key with a short expiry. A
    /// Redis that answers `PING` may still refuse every script (OOM, READONLY, LOADING,
    /// MASTERDOWN, BUSY), so readiness asks for a write like the scripts' own.
    pub async fn check_writable(&self) -> Result<(), StoreError> {
        let key = self.keyspace.readiness();
        let mut conn = self.conn.clone();
        self.with_timeout("check_writable", async {
            conn.query::<()>(redis::cmd("SET").arg(&key).arg(1).arg("PX").arg(10_000))
                .await
        })
        .await
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
        let ledger_position = state.ledger_position.as_deref().unwrap_or("0-0");
        if !is_stream_id(ledger_position) {
            return Err(InvalidArgument {
                field: "ledger_position",
                message: format!("must be a stream id <ms>-<seq>, got {ledger_position:?}"),
            }
            .into());
        }
        let mut args = vec![
            state.customer.clone(),
            ledger_position.to_string(),
            state.grants.len().to_string(),
        ];
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
        args.push(state.resolved_holds.len().to_string());
        let positions = self.keyspace.positions(k.shard);
        let mut keys = vec![
            k.grants.as_str(),
            &k.balance,
            &k.applied,
            &k.grant_expiry,
            &k.deadlines,
            &positions,
        ];
        let hold_keys: Vec<String> = state
            .resolved_holds
            .iter()
            .map(|(id, _, _)| k.hold(id))
            .collect();
        for ((id, resolution, posted), key) in state.resolved_holds.iter().zip(&hold_keys) {
            bad_id("hold_id", id)?;
            args.extend([id.clone(), resolution.clone(), posted.to_string()]);
            keys.push(key);
        }
        decode_restore(self.eval(&SCRIPTS.restore, &keys, &args).await?)
    }

    /// The stream id of `customer`'s newest event in Redis (the positions hash), if any.
    pub async fn position(&self, customer: &str) -> Result<Option<String>, StoreError> {
        bad_id("customer", customer)?;
        let key = self.keyspace.positions(self.keyspace.shard_of(customer));
        let mut conn = self.conn.clone();
        self.with_timeout("position", async move {
            conn.query(redis::cmd("HGET").arg(&key).arg(customer)).await
        })
        .await
    }

    /// The ids of `customer`'s holds pending in Redis (the deadlines index).
    pub async fn pending_hold_ids(&self, customer: &str) -> Result<Vec<String>, StoreError> {
        bad_id("customer", customer)?;
        let key = self.keyspace.deadlines(self.keyspace.shard_of(customer));
        let mut conn = self.conn.clone();
        let members: Vec<String> = self
            .with_timeout("pending_hold_ids", async move {
                conn.query(redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1))
                    .await
            })
            .await?;
        let prefix = format!("{customer}/");
        Ok(members
            .into_iter()
            .filter_map(|m| m.strip_prefix(&prefix).map(str::to_string))
            .collect())
    }

    /// A shard's event sequence (`#seq` of its positions hash): the sequence part of its
    /// newest event's stream id; `None` when no event was written since Redis was empty.
    pub async fn shard_sequence(&self, shard: Shard) -> Result<Option<u64>, StoreError> {
        let key = self.keyspace.positions(shard);
        let mut conn = self.conn.clone();
        self.with_timeout("shard_sequence", async move {
            conn.query(redis::cmd("HGET").arg(&key).arg("#seq")).await
        })
        .await
    }

    /// Raises a shard's event sequence to at least `seq` (atomically with the scripts that
    /// advance it), so events after a rebuild continue the ledger's sequence.
    pub async fn raise_sequence(&self, shard: Shard, seq: u64) -> Result<(), StoreError> {
        const RAISE: &str = "local c = tonumber(redis.call('HGET', KEYS[1], '#seq') or '0') \
            if c < tonumber(ARGV[1]) then redis.call('HSET', KEYS[1], '#seq', ARGV[1]) end";
        let key = self.keyspace.positions(shard);
        let mut conn = self.conn.clone();
        self.with_timeout("raise_sequence", async move {
            conn.query::<()>(redis::cmd("EVAL").arg(RAISE).arg(1).arg(&key).arg(seq))
                .await
        })
        .await
    }

    /// The customers of `shard` that the rebuild with `token` has restored.
    pub async fn rebuilt_customers(
        &self,
        shard: Shard,
        token: &str,
    ) -> Result<Vec<String>, StoreError> {
        let key = self.keyspace.rebuilt(shard);
        let mut conn = self.conn.clone();
        let done: Vec<(String, String)> = self
            .with_timeout("rebuilt_customers", async move {
                conn.query(redis::cmd("HGETALL").arg(&key)).await
            })
            .await?;
        Ok(done
            .into_iter()
            .filter(|(_, t)| t == token)
            .map(|(c, _)| c)
            .collect())
    }

    /// Records that the rebuild with `token` restored `customer`; `None` as the customer
    /// clears the shard's record (the rebuild is complete).
    pub async fn mark_rebuilt(
        &self,
        shard: Shard,
        customer: Option<&str>,
        token: &str,
    ) -> Result<(), StoreError> {
        let key = self.keyspace.rebuilt(shard);
        let cmd = match customer {
            Some(c) => redis::cmd("HSET").arg(&key).arg(c).arg(token).clone(),
            None => redis::cmd("DEL").arg(&key).clone(),
        };
        let mut conn = self.conn.clone();
        self.with_timeout("mark_rebuilt", async move { conn.query::<()>(&cmd).await })
            .await
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

    /// Runs a script by SHA; on `NOSCRIPT` runs it once more by its source (`EVAL`), which
    /// also caches it on the node that answered.
    ///
    /// `EVAL` goes to the node owning the call's keys, so it reaches a replica promoted
    /// after the scripts were loaded even while another node of a cluster is down; a
    /// `SCRIPT LOAD` goes to every node and fails then.
    async fn eval(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[String],
    ) -> Result<Value, StoreError> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&script.sha).arg(keys.len()).arg(keys).arg(args);
        let mut conn = self.conn.clone();
        self.with_timeout(script.name, async {
            match conn.query::<Value>(&cmd).await {
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    self.reloads.fetch_add(1, Ordering::Relaxed);
                    let mut by_source = redis::cmd("EVAL");
                    by_source
                        .arg(&script.source)
                        .arg(keys.len())
                        .arg(keys)
                        .arg(args);
                    conn.query::<Value>(&by_source).await
                }
                other => other,
            }
        })
        .await
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
                let event = decode_entry(entry).map_err(|e| match e {
                    EntryError::Invariant(violation) => StoreError::invariant(op, violation),
                    EntryError::Unreadable(message) => StoreError::Protocol {
                        op,
                        message: format!("entry {id} of {key}: {message}"),
                    },
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

    /// Runs settle, void or expire_hold on a hold, with the script's extra arguments.
    async fn resolve(
        &self,
        script: &Script,
        hold: &HoldRef,
        extra: &[String],
    ) -> Result<Value, StoreError> {
        let keys = self.hold_keys(&hold.customer, &hold.hold_id);
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let mut args = vec![hold.customer.clone(), hold.hold_id.clone()];
        args.extend_from_slice(extra);
        self.eval(script, &keys, &args).await
    }
}

/// The `reserve` script's arguments 1 to 13.
fn reserve_args(req: &ReserveRequest) -> [String; 13] {
    [
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
    ]
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
        decode_grant(req, self.eval(&SCRIPTS.grant, &keys, &args).await?)
    }

    async fn reserve(&self, req: &ReserveRequest) -> Result<ReserveOutcome, StoreError> {
        req.validate()?;
        let keys = self.hold_keys(&req.customer, &req.hold_id);
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let args = reserve_args(req);
        decode_reserve(req, self.eval(&SCRIPTS.reserve, &keys, &args).await?)
    }

    async fn reserve_keyed(
        &self,
        req: &ReserveRequest,
        claim: &IdempotencyClaim,
    ) -> Result<KeyedReserveOutcome, StoreError> {
        req.validate()?;
        claim.validate()?;
        let [grants, balance, hold, deadlines, expiry, events] =
            self.hold_keys(&req.customer, &req.hold_id);
        let record = self
            .keyspace
            .idempotency_record(&req.customer, &claim.record_id);
        let keys = [
            &*grants,
            &*balance,
            &*hold,
            &*deadlines,
            &*expiry,
            &*events,
            &*record,
        ];
        let mut args = reserve_args(req).to_vec();
        args.extend(claim.args());
        decode_keyed_reserve(req, self.eval(&SCRIPTS.reserve, &keys, &args).await?)
    }

    async fn settle(&self, req: &SettleRequest) -> Result<ResolveOutcome, StoreError> {
        req.validate()?;
        let hold = HoldRef {
            customer: req.customer.clone(),
            hold_id: req.hold_id.clone(),
        };
        let extra = [req.actual.to_string(), req.overdraft_limit.to_string()];
        decode_settle(req, self.resolve(&SCRIPTS.settle, &hold, &extra).await?)
    }

    async fn void(&self, hold: &HoldRef) -> Result<ResolveOutcome, StoreError> {
        hold.validate()?;
        decode_void(hold, self.resolve(&SCRIPTS.void, hold, &[]).await?)
    }

    async fn extend(&self, req: &ExtendRequest) -> Result<ExtendOutcome, StoreError> {
        req.validate()?;
        let k = self.keyspace.customer(&req.customer);
        let hold = k.hold(&req.hold_id);
        let args = [
            req.customer.clone(),
            req.hold_id.clone(),
            req.ttl_ms.to_string(),
        ];
        let reply = self
            .eval(&SCRIPTS.extend, &[&hold, &k.deadlines], &args)
            .await?;
        decode_extend(req, reply)
    }

    async fn expire_hold(&self, hold: &HoldRef) -> Result<ResolveOutcome, StoreError> {
        hold.validate()?;
        decode_expire_hold(hold, self.resolve(&SCRIPTS.expire_hold, hold, &[]).await?)
    }

    async fn expire_grant(&self, grant: &GrantRef) -> Result<GrantExpiryOutcome, StoreError> {
        grant.validate()?;
        let k = self.keyspace.customer(&grant.customer);
        let keys = [&*k.grants, &*k.balance, &*k.grant_expiry, &*k.events];
        let args = [grant.customer.clone(), grant.grant_id.clone()];
        decode_grant_expiry(grant, self.eval(&SCRIPTS.expire_grant, &keys, &args).await?)
    }

    async fn balance(&self, customer: &str) -> Result<Balance, StoreError> {
        bad_id("customer", customer)?;
        let k = self.keyspace.customer(customer);
        let reply = self
            .eval(
                &SCRIPTS.balance,
                &[&k.grants, &k.balance],
                &[customer.to_string()],
            )
            .await?;
        decode_balance(customer, reply)
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
        decode_hold(hold, &key, &h)
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
