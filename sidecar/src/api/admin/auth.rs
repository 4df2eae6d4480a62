//! Who is calling: bearer tokens (kept as SHA-256 hashes), their roles, a constant-time
//! check against every active token, and a limit on failed attempts per address and token
//! name.
//!
//! [`Caller`] is an axum extractor, so any router with an [`AuthState`] behind its state
//! can require a token (and a role, with [`Caller::require`]); the admin routes use it and
//! other modules' routes can too. It decides who is calling, never what they may change.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::ledger::AdminDb;

/// Failed token checks one address may make per window, per token name, before that name
/// is refused from it (429); tokens that match no active token share one name, so
/// guessing from one address is capped while the admins behind the same proxy (valid
/// tokens, their own names) are not locked out. Far above what a misconfigured client
/// makes, far below what guessing needs.
pub const AUTH_FAILURES_MAX: u32 = 20;

/// The window of [`AUTH_FAILURES_MAX`]: one minute.
pub const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// (address, token name) pairs tracked at most; past it the oldest windows are dropped, so a scan from many
/// addresses cannot grow memory without bound.
pub const AUTH_TRACKED_ADDRESSES_MAX: usize = 10_000;

/// Prefix of every admin token, so a leaked one is recognisable in logs and scanners.
pub const TOKEN_PREFIX: &str = "cgt_";

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Everything.
    Admin,
    /// The product's own backend: customers, API keys, purchases and plan allotments.
    Billing,
    /// Goodwill grants (within limits), voids, reads.
    Support,
    /// Promotions (within limits), reads.
    Sales,
    /// Reads only.
    Readonly,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Billing,
        Role::Support,
        Role::Sales,
        Role::Readonly,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Billing => "billing",
            Role::Support => "support",
            Role::Sales => "sales",
            Role::Readonly => "readonly",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// The authenticated caller: the token's name (recorded as the actor of every change) and
/// role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's name: the actor.
    pub name: String,
    /// The token's role.
    pub role: Role,
}

impl Caller {
    /// A 403 unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                Some("Authorization"),
                format!(
                    "role {} may not call this; it needs one of {:?}",
                    self.role.as_str(),
                    roles.iter().map(|r| r.as_str()).collect::<Vec<_>>()
                ),
            ))
        }
    }
}

/// What the [`Caller`] extractor needs: the token table and the failure counter.
#[derive(Clone, Debug)]
pub struct AuthState {
    db: AdminDb,
    failures: Arc<Mutex<HashMap<FailureKey, (Instant, u32)>>>,
}

/// What failed checks are counted by: the peer address and the name of the token
/// presented (`None`: a token matching no active token).
type FailureKey = (IpAddr, Option<String>);

impl AuthState {
    /// Checks tokens against the `admin_tokens` table of `db`.
    pub fn new(db: AdminDb) -> Self {
        Self {
            db,
            failures: Arc::default(),
        }
    }

    fn locked_out(&self, key: &FailureKey) -> bool {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        matches!(failures.get(key), Some((start, n))
            if start.elapsed() < AUTH_FAILURE_WINDOW && *n >= AUTH_FAILURES_MAX)
    }

    fn count_failure(&self, key: FailureKey) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() >= AUTH_TRACKED_ADDRESSES_MAX {
            failures.retain(|_, (start, _)| start.elapsed() < AUTH_FAILURE_WINDOW);
            if failures.len() >= AUTH_TRACKED_ADDRESSES_MAX {
                failures.clear();
            }
        }
        let entry = failures.entry(key).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= AUTH_FAILURE_WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
    }

    /// The caller a presented token belongs to. Every active token's hash is compared in
    /// constant time, and all of them are compared, so timing tells nothing about which
    /// bytes matched. The lockout is looked up after the comparison, by address and the
    /// name of the token presented, so a locked-out address still reads the token table.
    pub async fn authenticate(&self, ip: IpAddr, header: Option<&str>) -> Result<Caller, ApiError> {
        let unauthorized = |message: &str| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                Some("Authorization"),
                message,
            )
        };
        let Some(token) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
            return Err(unauthorized("send Authorization: Bearer <admin token>"));
        };
        let presented = Sha256::digest(token.trim().as_bytes());
        let tokens = self
            .db
            .fetch(
                "SELECT name, role, token_hash FROM admin_tokens WHERE revoked_at_ms IS NULL",
                &[],
                |row| {
                    Ok((
                        row.try_get::<String, _>("name")?,
                        row.try_get::<String, _>("role")?,
                        row.try_get::<String, _>("token_hash")?,
                    ))
                },
            )
            .await
            .map_err(|e| ApiError::unavailable("reading admin tokens", e))?;
        let mut found: Option<Caller> = None;
        for (name, role, hash) in tokens {
            let stored = hex::decode(&hash).unwrap_or_default();
            let equal: bool = stored.ct_eq(presented.as_slice()).into();
            if equal && let Some(role) = Role::parse(&role) {
                found = Some(Caller { name, role });
            }
        }
        let key = (ip, found.as_ref().map(|c| c.name.clone()));
        if self.locked_out(&key) {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_failures",
                Some("Authorization"),
                format!(
                    "more than {AUTH_FAILURES_MAX} failed checks of this token from this address; wait {} s",
                    AUTH_FAILURE_WINDOW.as_secs()
                ),
            ));
        }
        match found {
            Some(caller) => Ok(caller),
            None => {
                self.count_failure(key);
                Err(unauthorized("unknown or revoked admin token"))
            }
        }
    }
}

impl<S> FromRequestParts<S> for Caller
where
    S: Send + Sync,
    AuthState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // A role gate in front of the handler has authenticated this request already;
        // checking the token again would count one bad token twice towards the lockout.
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        let auth = AuthState::from_ref(state);
        let caller = authenticate_request(&auth, &parts.extensions, &parts.headers).await?;
        parts.extensions.insert(caller.clone());
        Ok(caller)
    }
}

/// Authenticates a request by its `Authorization` header, rate-limited by the peer address
/// (unspecified when the listener did not record it).
async fn authenticate_request(
    auth: &AuthState,
    extensions: &axum::http::Extensions,
    headers: &axum::http::HeaderMap,
) -> Result<Caller, ApiError> {
    let ip = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    auth.authenticate(ip, header).await
}

/// Puts every route of `router` behind a token with one of `roles`: the same check, rate
/// limit and 401/403/429 answers as the admin routes. For routes served by other modules
/// (say, mode switches behind [`Role::Admin`]); the caller is put in the request's
/// extensions, so handlers can read it with `Extension<Caller>` to record the actor.
pub fn require_role<S>(
    router: axum::Router<S>,
    auth: AuthState,
    roles: &'static [Role],
) -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    router.layer(axum::middleware::from_fn_with_state(
        (auth, roles),
        role_gate,
    ))
}

/// Puts one route's handler behind a token with one of `roles`, like [`require_role`]:
/// the admin router does this for every route of its table. The gate runs only for the
/// route's own method, so another method is still a 405.
pub fn require_roles<S>(
    route: axum::routing::MethodRouter<S>,
    auth: AuthState,
    roles: &'static [Role],
) -> axum::routing::MethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    route.route_layer(axum::middleware::from_fn_with_state(
        (auth, roles),
        role_gate,
    ))
}

async fn role_gate(
    axum::extract::State((auth, roles)): axum::extract::State<(AuthState, &'static [Role])>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    // A caller already in the extensions was authenticated in this process (the support
    // console calls the admin router for its logged-in user); nothing from the network can
    // put one there. The role check below still applies to it.
    let known = request.extensions().get::<Caller>().cloned();
    let caller = match known {
        Some(c) => c,
        None => match authenticate_request(&auth, request.extensions(), request.headers()).await {
            Ok(c) => c,
            Err(e) => return e.into_response(),
        },
    };
    if let Err(e) = caller.require(roles) {
        return e.into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// The SHA-256 hex of a secret (admin token or customer API key), as stored.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A fresh random secret: `prefix` and 32 random bytes in hex.
pub fn new_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// Creates a token named `name` with `role` and returns its plaintext (shown once; only
/// the hash is kept). Fails when the name is taken.
pub async fn create_token(
    db: &AdminDb,
    name: &str,
    role: Role,
    now_ms: u64,
) -> anyhow::Result<String> {
    creditgate_protocol::keys::validate_id("token name", name).map_err(anyhow::Error::msg)?;
    let token = new_secret(TOKEN_PREFIX);
    let inserted = db
        .execute(
            "INSERT INTO admin_tokens (name, role, token_hash, created_at_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
            &[
                name.into(),
                role.as_str().into(),
                secret_hash(&token).into(),
                (now_ms as i64).into(),
            ],
        )
        .await?;
    if inserted == 0 {
        anyhow::bail!("a token named {name:?} exists; revoke it or pick another name");
    }
    Ok(token)
}

/// Revokes the token named `name`; false when there is no active one.
pub async fn revoke_token(db: &AdminDb, name: &str, now_ms: u64) -> anyhow::Result<bool> {
    let changed = db
        .execute(
            "UPDATE admin_tokens SET revoked_at_ms = $1 WHERE name = $2 AND revoked_at_ms IS NULL",
            &[(now_ms as i64).into(), name.into()],
        )
        .await?;
    Ok(changed > 0)
}

/// Every token: name, role, created, revoked (ms since epoch).
pub async fn list_tokens(db: &AdminDb) -> anyhow::Result<Vec<(String, String, i64, Option<i64>)>> {
    Ok(db
        .fetch(
            "SELECT name, role, created_at_ms, revoked_at_ms FROM admin_tokens ORDER BY name",
            &[],
            |row| {
                Ok((
                    row.try_get::<String, _>("name")?,
                    row.try_get::<String, _>("role")?,
                    row.try_get::<i64, _>("created_at_ms")?,
                    row.try_get::<Option<i64>, _>("revoked_at_ms")?,
                ))
            },
        )
        .await?)
}
