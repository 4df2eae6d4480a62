//! The load bench's Redis set-up and check: grants the bench customer its credits before
//! the run, and prints the customer's balance afterwards so the bench can check that every
//! request was reserved and settled.
//!
//! It goes through the same [`RedisStore`] and Lua scripts as the gateway, so the grant
//! lands exactly where the gateway looks for it. It is a bench tool, not an admin tool:
//! production grants come from the sidecar.
//!
//! ```text
//! cargo run --release -p creditgate-benches --bin seed-grant -- \
//!     grant --redis redis://127.0.0.1:6379/ --customer bench --amount 1000000000000
//! cargo run --release -p creditgate-benches --bin seed-grant -- \
//!     balance --redis redis://127.0.0.1:6379/ --customer bench
//! ```

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use creditgate_protocol::{
    CreditStore, GrantOutcome, GrantRequest, GrantSource, Keyspace, RedisStore, RedisTarget,
};

/// Timeout of each Redis call, in milliseconds: generous, the tool runs outside the timed
/// part of the bench.
const REDIS_TIMEOUT_MS: u64 = 5_000;

/// Command line of `seed-grant`.
#[derive(Debug, Parser)]
#[command(
    name = "seed-grant",
    about = "Grants and reads the load bench customer's credits in Redis."
)]
struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Grants credits; a repeated grant id applies nothing twice.
    Grant {
        /// Where the store is.
        #[command(flatten)]
        store: StoreArgs,
        /// Amount granted, in the credit type's smallest unit.
        #[arg(long)]
        amount: u64,
        /// Id of the grant.
        #[arg(long, default_value = "load-bench")]
        grant_id: String,
    },
    /// Prints `available held debt` of the credit type, space separated.
    Balance {
        /// Where the store is.
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// The store and the customer, as the gateway arm is configured.
#[derive(Debug, Args)]
struct StoreArgs {
    /// Redis URL, the one the gateway arm uses.
    #[arg(long)]
    redis: String,
    /// Prefix of every Redis key; the gateway's default unless it was given another.
    #[arg(long, default_value = creditgate_protocol::keys::DEFAULT_PREFIX)]
    redis_prefix: String,
    /// Number of shards; the gateway's default unless it was given another.
    #[arg(long, default_value_t = creditgate_protocol::keys::DEFAULT_SHARDS)]
    shards: u32,
    /// The customer.
    #[arg(long, default_value = "bench")]
    customer: String,
    /// The credit type.
    #[arg(long, default_value = "api")]
    credit_type: String,
}

async fn connect(args: &StoreArgs) -> anyhow::Result<RedisStore> {
    let target = RedisTarget::Single(args.redis.clone());
    RedisStore::connect(
        &target,
        Keyspace::new(&args.redis_prefix, args.shards),
        REDIS_TIMEOUT_MS,
    )
    .await
    .with_context(|| format!("connecting to {}", args.redis))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Grant {
            store,
            amount,
            grant_id,
        } => {
            let redis = connect(&store).await?;
            let request = GrantRequest {
                customer: store.customer.clone(),
                grant_id,
                credit_type: store.credit_type.clone(),
                amount,
                priority: 100,
                expires_at_ms: None,
                cost_basis: 0,
                source: GrantSource::Adjustment,
                actor: "creditgate-benches".into(),
                reason: "load bench".into(),
            };
            match redis.grant(&request).await? {
                GrantOutcome::Granted { .. } => {
                    println!(
                        "granted {amount} {} to {}",
                        store.credit_type, store.customer
                    )
                }
                other => bail!("grant not applied: {other:?}"),
            }
        }
        Command::Balance { store } => {
            let redis = connect(&store).await?;
            let balance = redis.balance(&store.customer).await?;
            let Some(of_type) = balance.of(&store.credit_type) else {
                bail!("{} has no {} credits", store.customer, store.credit_type);
            };
            println!("{} {} {}", of_type.available, of_type.held, of_type.debt);
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(run(cli))
}
