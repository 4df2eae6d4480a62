//! Read-only inspection of the credit store for ops: a customer's balance, and the newest
//! events of a shard's stream.
//!
//! Nothing here writes credits or acknowledges stream entries: balances come from the
//! protocol's `balance` script and events from `XREVRANGE`, which consumer groups do not
//! notice. Every Redis call has a timeout. Formatting is [`crate::cli::render`]'s job.

use creditgate_protocol::keys::validate_id;
use creditgate_protocol::{Balance, CreditStore, Event, Keyspace, RedisStore, Shard, StoreError};

use crate::cli::args::{RedisArgs, StreamSelector};

/// Stream entries read per `XREVRANGE` while looking for one customer's events. Large
/// enough that a busy shard needs few round trips, small enough that one reply stays a few
/// hundred kilobytes.
pub const EVENTS_PAGE_LEN: usize = 500;

/// The most stream entries read while looking for one customer's events, so that a quiet
/// customer on a busy shard cannot make the command read the whole stream.
pub const EVENTS_SCAN_MAX: usize = 20_000;

/// Why an inspection failed. Every variant names the Redis it talked to, with any password
/// in the URL masked.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// Redis could not be reached, did not answer in time, or refused the scripts.
    #[error("cannot connect to Redis at {url}: {message}")]
    Connect {
        /// The Redis URL, password masked.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// Connected, but a read failed or returned something this tool cannot parse.
    #[error("reading from Redis at {url} failed: {message}")]
    Read {
        /// The Redis URL, password masked.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// A bad argument, caught before or by the store; nothing was read.
    #[error("{0}")]
    InvalidArgument(String),
}

/// A customer's balance, with where it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalanceReport {
    /// The customer.
    pub customer: String,
    /// The customer's shard.
    pub shard: Shard,
    /// The balance as the store returned it.
    pub balance: Balance,
}

/// One entry of a shard's event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEvent {
    /// The stream entry id, `<ms>-<seq>`.
    pub stream_id: String,
    /// The parsed event.
    pub event: Event,
}

/// The newest events of one shard's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsReport {
    /// The shard read.
    pub shard: Shard,
    /// The customer whose events were kept, when filtering by customer.
    pub customer: Option<String>,
    /// The events, oldest first, at most the count asked for.
    pub events: Vec<StreamEvent>,
    /// True when the search for the customer's events stopped at [`EVENTS_SCAN_MAX`]
    /// entries before finding as many as asked for; older ones may exist.
    pub scan_limited: bool,
}

/// Reads `customer`'s balance per credit type and per grant.
pub async fn read_balance(
    redis: &RedisArgs,
    customer: &str,
) -> Result<BalanceReport, InspectError> {
    validate_id("customer", customer).map_err(InspectError::InvalidArgument)?;
    let keyspace = keyspace(redis);
    let shard = keyspace.shard_of(customer);
    let store = connect(redis, keyspace).await?;
    let balance = store
        .balance(customer)
        .await
        .map_err(|error| read_error(redis, error))?;
    Ok(BalanceReport {
        customer: customer.to_owned(),
        shard,
        balance,
    })
}

/// Reads the newest `count` events of the selected shard's stream; with a customer, the
/// newest `count` events of that customer, searching at most [`EVENTS_SCAN_MAX`] entries.
pub async fn read_events(
    redis: &RedisArgs,
    selector: &StreamSelector,
    count: usize,
) -> Result<EventsReport, InspectError> {
    let keyspace = keyspace(redis);
    let StreamSelector { shard, customer } = selector;
    let shard = match (shard, customer) {
        (Some(shard), _) if *shard >= keyspace.shards() => {
            return Err(InspectError::InvalidArgument(format!(
                "shard {shard} does not exist: with {} shards they are 0 to {}",
                keyspace.shards(),
                keyspace.shards() - 1
            )));
        }
        (Some(shard), _) => Shard(*shard),
        (None, Some(customer)) => {
            validate_id("customer", customer).map_err(InspectError::InvalidArgument)?;
            keyspace.shard_of(customer)
        }
        (None, None) => {
            return Err(InspectError::InvalidArgument(
                "say which stream to read with --shard or --customer".to_owned(),
            ));
        }
    };
    let store = connect(redis, keyspace).await?;
    let mut events = Vec::new();
    let mut scanned = 0;
    let mut before: Option<String> = None;
    let scan_limited = loop {
        let page_len = match customer {
            Some(_) => EVENTS_PAGE_LEN.min(EVENTS_SCAN_MAX - scanned),
            None => count,
        };
        let page: Vec<StreamEvent> = store
            .newest_events(shard, before.as_deref(), page_len)
            .await
            .map_err(|error| read_error(redis, error))?
            .into_iter()
            .map(|(stream_id, event)| StreamEvent { stream_id, event })
            .collect();
        let page_was_full = page.len() == page_len;
        scanned += page.len();
        before = page.last().map(|entry| entry.stream_id.clone());
        events.extend(page.into_iter().filter(|entry| {
            customer
                .as_ref()
                .is_none_or(|customer| entry.event.customer == *customer)
        }));
        if events.len() >= count || !page_was_full || customer.is_none() {
            break false;
        }
        if scanned >= EVENTS_SCAN_MAX {
            break true;
        }
    };
    events.truncate(count);
    events.reverse();
    Ok(EventsReport {
        shard,
        customer: customer.clone(),
        events,
        scan_limited,
    })
}

fn keyspace(redis: &RedisArgs) -> Keyspace {
    Keyspace::new(&redis.prefix, redis.shards)
}

async fn connect(redis: &RedisArgs, keyspace: Keyspace) -> Result<RedisStore, InspectError> {
    RedisStore::connect(&redis.target(), keyspace, redis.timeout_ms)
        .await
        .map_err(|error| InspectError::Connect {
            url: redis.describe(),
            message: error.to_string(),
        })
}

fn read_error(redis: &RedisArgs, error: StoreError) -> InspectError {
    match error {
        StoreError::InvalidArgument(invalid) => InspectError::InvalidArgument(invalid.to_string()),
        other => InspectError::Read {
            url: redis.describe(),
            message: other.to_string(),
        },
    }
}
