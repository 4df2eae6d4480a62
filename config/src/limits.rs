//! Every limit and every numeric or textual default of the pricing config, as typed constants
//! with the reason for each value. The defaults that name a model enum (mode, failure policy,
//! unmatched requests, upstream errors) live beside their enums in `model`.
//!
//! Validation and the docs read these; nothing else should hard-code a number. This module
//! imports nothing from the crate, so every other module may depend on it.

/// The largest amount (in a credit type's smallest unit) the config may hold: 2^53 - 1.
///
/// Redis runs the credit scripts in Lua, whose numbers are IEEE doubles; every integer up to
/// 2^53 - 1 is exact there, and anything above may silently round. Costs, caps, estimates
/// and overdrafts are all bounded by this. The bound belongs to the store's protocol, which
/// defines it once; the config re-exports it so that no file can hold more than a script
/// accepts.
pub use creditgate_protocol::MAX_AMOUNT;

/// The largest `scale` of a credit type: 12 decimal places (pico-credits).
///
/// With 12 places one displayed credit is 10^12 stored units, which still leaves
/// `MAX_AMOUNT / 10^12` ≈ 9 007 whole credits per amount; more places would leave too few.
pub const MAX_SCALE: u32 = 12;

/// How many times a route serves an identical request again, uncharged, under the
/// `Idempotency-Key` of one that was charged (`idempotency_replays`): 3. A client whose
/// connection dropped before it read the answer retries a few times; more than that is a
/// client reusing a key to get work for free.
pub const DEFAULT_IDEMPOTENCY_REPLAYS: u32 = 3;

/// The most uncharged replays a route may allow: 100. The replay count only serves
/// retries; a larger number is a free tier, which belongs in a plan, not here.
pub const MAX_IDEMPOTENCY_REPLAYS: u32 = 100;

/// How long after the charged request its replays are served, in milliseconds
/// (`idempotency_replay_window_ms`): 10 minutes, ample for a client's own retries with
/// backoff, short enough that a key is not a standing pass to the upstream.
pub const DEFAULT_IDEMPOTENCY_REPLAY_WINDOW_MS: u64 = 600_000;

/// The longest replay window, in milliseconds: 24 hours, how long the store keeps a
/// resolved hold (and with it the key's record); a longer window could never be used.
pub const MAX_IDEMPOTENCY_REPLAY_WINDOW_MS: u64 = 86_400_000;

/// The default store (Redis) timeout in milliseconds: 50 ms.
///
/// A reserve is one round trip of a short Lua script (well under 1 ms on a healthy Redis), so
/// 50 ms covers GC pauses and cross-zone hops while bounding what a dead Redis adds to a
/// request.
pub const DEFAULT_STORE_TIMEOUT_MS: u64 = 50;

/// The largest store timeout in milliseconds: 10 s. A store that needs longer is down, and
/// every request would wait that long before the failure policy applies.
pub const MAX_STORE_TIMEOUT_MS: u64 = 10_000;

/// How long a hold (reservation) lives before the sweeper may expire it unless it is renewed,
/// in milliseconds: 5 minutes. The gateway renews the holds of requests in flight, so this
/// bounds only what a crashed gateway leaves behind: its credits come back within 5 minutes.
pub const DEFAULT_HOLD_TTL_MS: u64 = 300_000;

/// The shortest hold TTL in milliseconds: 1 s. Shorter holds would expire under ordinary
/// requests and make every settle race the sweeper.
pub const MIN_HOLD_TTL_MS: u64 = 1_000;

/// The longest hold TTL in milliseconds: 24 h. Longer holds lock a customer's credits for
/// more than a day after a gateway crash.
pub const MAX_HOLD_TTL_MS: u64 = 86_400_000;

/// The hold TTL must be at least this many default store timeouts: the gateway renews an
/// in-flight hold a third of the TTL after its last renewal, so with two timeouts a renewal
/// that takes a whole store timeout still finishes a sixth of the TTL before the deadline.
pub const HOLD_TTL_STORE_TIMEOUTS: u64 = 2;

/// The default upstream connect timeout in milliseconds: 1 s, enough for a TLS handshake
/// across regions; a slower connect usually means the upstream is gone.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 1_000;

/// The largest upstream connect timeout in milliseconds: 60 s.
pub const MAX_CONNECT_TIMEOUT_MS: u64 = 60_000;

/// The default upstream read timeout in milliseconds: 30 s, the time between two reads, which
/// covers slow first tokens of a model while still freeing stuck connections.
pub const DEFAULT_READ_TIMEOUT_MS: u64 = 30_000;

/// The largest upstream read timeout in milliseconds: 1 h. Even batch endpoints send
/// something more often than that.
pub const MAX_READ_TIMEOUT_MS: u64 = 3_600_000;

/// The default overdraft in a credit type's smallest unit: 0, so a balance never goes below
/// zero unless a plan or customer says so.
pub const DEFAULT_OVERDRAFT: u64 = 0;

/// The longest identifier (credit type, feature, plan, customer, upstream) in bytes: 128,
/// which keeps Redis keys short and fits any customer id we have seen. It is the protocol's
/// id limit, so every name the config accepts is an id the store accepts.
pub const MAX_IDENTIFIER_LEN: usize = creditgate_protocol::keys::MAX_ID_LEN;

/// The most routes a config may hold: 10 000. Validation checks every pair for shadowing,
/// which stays well under a second at this size.
pub const MAX_ROUTES: usize = 10_000;

/// The longest route path pattern in bytes: 1 024.
pub const MAX_PATTERN_LEN: usize = 1_024;

/// The most segments in a route path pattern: 32. Real APIs use fewer than ten.
pub const MAX_PATTERN_SEGMENTS: usize = 32;

/// The longest route name in bytes: 256; names end up in logs and metric labels.
pub const MAX_ROUTE_NAME_LEN: usize = 256;

/// The longest host name in bytes: 253, the DNS limit.
pub const MAX_HOST_LEN: usize = 253;

/// The header carrying the API key: `authorization`, where HTTP clients and SDKs already put
/// credentials (and which proxies and logs already treat as secret).
pub const DEFAULT_IDENTITY_HEADER: &str = "authorization";

/// The scheme before the key when the header is [`DEFAULT_IDENTITY_HEADER`]: `Bearer`, what
/// OpenAI-style SDKs send (`Authorization: Bearer <key>`). Other headers default to no scheme,
/// since custom key headers (`x-api-key`) carry the key alone.
pub const DEFAULT_IDENTITY_SCHEME: &str = "Bearer";

/// The header the gateway sets towards the upstream with the identified customer id:
/// `x-creditgate-customer`, a name no client library sends by itself, so a copy sent by a
/// client is clearly forged (and stripped).
pub const DEFAULT_CUSTOMER_HEADER: &str = "x-creditgate-customer";

/// Client-supplied identity headers removed before proxying: `x-customer-id` (a common name
/// upstreams trust) and [`DEFAULT_CUSTOMER_HEADER`], so a client cannot pose as another
/// customer towards the upstream.
pub const DEFAULT_STRIP_HEADERS: &[&str] = &["x-customer-id", DEFAULT_CUSTOMER_HEADER];

/// The longest API key label in bytes: 128; labels end up in logs.
pub const MAX_API_KEY_NAME_LEN: usize = 128;

/// The longest `top_up_url` in bytes: 2 048, the length browsers and proxies reliably accept;
/// it is sent in every 402 body.
pub const MAX_URL_LEN: usize = 2_048;

/// The burn priority of an embedded grant that does not set one: 100, the middle of the
/// usual range, so grants written later can burn before (lower) or after (higher) it.
pub const DEFAULT_GRANT_PRIORITY: u32 = 100;

/// The highest grant priority: 1 000 000, the limit the store's grant script accepts.
pub const MAX_GRANT_PRIORITY: u32 = 1_000_000;

/// The longest `expires_in_s` of an embedded grant: 10 years. A longer life is "never" in
/// practice (leave the field out), and it keeps the expiry time in milliseconds far below
/// [`MAX_AMOUNT`], the largest number the store keeps exact.
pub const MAX_GRANT_EXPIRES_IN_S: u64 = 10 * 365 * 86_400;
