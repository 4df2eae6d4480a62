//! The support console's sessions: a login with an admin-API token opens one, kept in this
//! sidecar's memory under a random id carried by an `HttpOnly`, `SameSite=Strict` cookie
//! (`Secure` unless the page was asked for by a loopback host name), with a per-session
//! CSRF token that every change form carries and [`ConsoleSessions::check_csrf`] compares
//! in constant time.
//!
//! A session stores the token's name, never the token; each request looks the name up in
//! the token table again, so revoking the token ends its console sessions at once. It
//! decides who is calling, never what they may change: that is the admin API's.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use rand::RngCore;
use subtle::ConstantTimeEq;

use crate::api::admin::auth::{Caller, Role};
use crate::ledger::AdminDb;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "creditgate_console";

/// How long a console session lasts after login: a working day, so a forgotten laptop does
/// not stay logged in overnight.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

/// Most sessions kept at once; past it the oldest are dropped, so logins cannot grow memory
/// without bound.
pub const SESSIONS_MAX: usize = 10_000;

/// One logged-in console user.
#[derive(Clone, Debug)]
pub struct Session {
    /// The admin token's name (the actor of every change).
    pub token_name: String,
    /// The CSRF token every change form of this session carries.
    pub csrf: String,
    opened: Instant,
}

/// The sessions of this sidecar's console.
#[derive(Debug, Default)]
pub struct ConsoleSessions {
    sessions: Mutex<HashMap<String, Session>>,
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

impl ConsoleSessions {
    /// Opens a session for the token named `token_name`; returns its id (the cookie value).
    pub fn open(&self, token_name: &str) -> String {
        let id = random_hex();
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, s| s.opened.elapsed() < SESSION_TTL);
        if sessions.len() >= SESSIONS_MAX {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.opened)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            id.clone(),
            Session {
                token_name: token_name.to_string(),
                csrf: random_hex(),
                opened: Instant::now(),
            },
        );
        id
    }

    /// The live session of a request's cookie, if any.
    pub fn get(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie(headers, SESSION_COOKIE)?;
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions
            .get(&id)
            .filter(|s| s.opened.elapsed() < SESSION_TTL)
            .cloned()
    }

    /// Ends the session of a request's cookie.
    pub fn close(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, SESSION_COOKIE) {
            let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            sessions.remove(&id);
        }
    }

    /// Whether `presented` is the session's CSRF token (constant time).
    pub fn check_csrf(session: &Session, presented: Option<&str>) -> bool {
        presented.is_some_and(|p| p.as_bytes().ct_eq(session.csrf.as_bytes()).into())
    }
}

/// The caller behind a session: its token's name and current role, `None` once the token
/// was revoked.
pub async fn caller_of(db: &AdminDb, session: &Session) -> anyhow::Result<Option<Caller>> {
    let roles = db
        .fetch(
            "SELECT role FROM admin_tokens WHERE name = $1 AND revoked_at_ms IS NULL",
            &[session.token_name.as_str().into()],
            |row| row.try_get::<String, _>("role"),
        )
        .await?;
    Ok(roles
        .first()
        .and_then(|r| Role::parse(r))
        .map(|role| Caller {
            name: session.token_name.clone(),
            role,
        }))
}

/// The value of cookie `name` in a request's `Cookie` headers.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Whether the request's `Host` names this machine (`localhost`, `127.x.x.x`, `[::1]`):
/// only then may the session cookie go without `Secure`, since browsers send it over plain
/// HTTP there and nowhere else should the console be reached without TLS.
pub fn is_loopback_host(headers: &HeaderMap) -> bool {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let name = if host.starts_with('[') {
        host.split(']')
            .next()
            .map(|h| format!("{h}]"))
            .unwrap_or_default()
    } else {
        host.split(':').next().unwrap_or_default().to_string()
    };
    name == "localhost"
        || name == "[::1]"
        || name
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The `Set-Cookie` value opening a session with id `id`.
pub fn session_cookie(id: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{SESSION_COOKIE}={id}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        SESSION_TTL.as_secs()
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn cleared_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{SESSION_COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_cookie_is_http_only_strict_and_secure_outside_loopback() {
        let c = session_cookie("abc", true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Secure"));
        assert!(!session_cookie("abc", false).contains("Secure"));
        let mut h = HeaderMap::new();
        for (host, loopback) in [
            ("127.0.0.1:9000", true),
            ("localhost", true),
            ("[::1]:80", true),
            ("console.example.com", false),
            ("127.example.com", false),
        ] {
            h.insert(header::HOST, host.parse().unwrap());
            assert_eq!(is_loopback_host(&h), loopback, "{host}");
        }
    }

    #[test]
    fn the_csrf_token_must_match_the_sessions() {
        let sessions = ConsoleSessions::default();
        let id = sessions.open("support");
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            format!("x=1; {SESSION_COOKIE}={id}").parse().unwrap(),
        );
        let s = sessions.get(&h).expect("the session");
        assert!(ConsoleSessions::check_csrf(&s, Some(&s.csrf.clone())));
        assert!(!ConsoleSessions::check_csrf(&s, Some("forged")));
        assert!(!ConsoleSessions::check_csrf(&s, None));
        sessions.close(&h);
        assert!(sessions.get(&h).is_none());
    }
}
