//! Who may use the console: the two role tokens, the sessions they open, the
//! CSRF tokens, and the limits on logging in.
//!
//! - A login exchanges a role token (`viewer` or `operator`) and an operator
//!   name for a session: a random id (256 bits from the OS) in an HttpOnly,
//!   SameSite=Strict cookie. The store keeps only its SHA-256, so neither a
//!   timing difference of the lookup nor a dump of the map yields a cookie.
//! - A session remembers the SHA-256 of the token it was opened with and
//!   compares it, in constant time, with the role's token *as it is now* on
//!   every request: a `_file` token is read again each time, so replacing the
//!   file revokes every session opened with the old one. Sessions end after
//!   `[ops] console_session_idle` without a request, and after
//!   [`MAX_SESSION_AGE`] in any case. They live in this process only: a restart
//!   logs everyone out, and with several replicas a proxy must keep a browser
//!   on one of them.
//! - Each session has its own CSRF token (synchronizer token), which every
//!   state-changing form carries; the login form, which has no session yet,
//!   carries one that must match a short-lived cookie (double submit).
//! - Failed logins are limited per client address and in total
//!   ([`LoginLimiter`]); the refused ones are counted in a metric and audited
//!   at a bounded rate (the admin API's [`AuthFailureAudit`]).

use crate::config::Config;
use crate::config::secret::SecretRef;
use crate::operator::Operator;
use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// A session ends this long after login, however active.
pub const MAX_SESSION_AGE: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; the oldest are dropped beyond (a login flood cannot grow memory).
const MAX_SESSIONS: usize = 10_000;
/// Failed logins one client address may make in a burst, then one per [`PER_CLIENT_REFILL`].
pub const PER_CLIENT_BURST: u32 = 5;
pub const PER_CLIENT_REFILL: Duration = Duration::from_secs(12);
/// Failed logins all clients together may make in a burst, then one per [`GLOBAL_REFILL`].
pub const GLOBAL_BURST: u32 = 50;
pub const GLOBAL_REFILL: Duration = Duration::from_secs(1);
/// Client addresses the limiter remembers at most (full buckets are forgotten first).
const MAX_TRACKED_CLIENTS: usize = 10_000;

/// What a session may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Every page, no change.
    Viewer,
    /// Every page, plus replay, discard and "Test connection".
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
        }
    }
}

/// SHA-256 of a secret: what sessions keep and compare.
fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// `uuids` v4 uuids as one lowercase hex string: 122 bits from the OS
/// generator (getrandom) per uuid.
pub fn random_hex(uuids: usize) -> String {
    (0..uuids).map(|_| uuid::Uuid::new_v4().simple().to_string()).collect()
}

/// One role's token, as configured.
#[derive(Debug)]
struct RoleToken {
    role: Role,
    reference: SecretRef,
    /// An `_env` token, read once at start (a process's environment does not change).
    fixed: Option<SecretString>,
}

impl RoleToken {
    /// The token now: a file is read again (a failure means no valid token).
    fn current(&self) -> Option<SecretString> {
        match &self.fixed {
            Some(t) => Some(t.clone()),
            None => self.reference.resolve().ok(),
        }
    }
}

/// The configured role tokens.
#[derive(Debug)]
pub struct Tokens {
    tokens: Vec<RoleToken>,
}

impl Tokens {
    /// The console's tokens, `None` when none is configured (the console is then
    /// off). A token that is configured but cannot be read is an error, as the
    /// admin token's is: the process does not start with a console no one can use.
    pub fn from_config(config: &Config) -> anyhow::Result<Option<Self>> {
        let mut tokens = Vec::new();
        for (role, key, reference) in [
            (Role::Operator, "console_operator_token", config.console_operator_token()),
            (Role::Viewer, "console_viewer_token", config.console_viewer_token()),
        ] {
            let Some(reference) = reference else { continue };
            let token = reference.resolve().with_context(|| {
                format!(
                    "the console is enabled ([ops] {key}: {}) but the token cannot be read; provide it, \
                     or remove {key}_env/{key}_file",
                    reference.describe()
                )
            })?;
            if token.expose_secret().len() < 16 {
                tracing::warn!(
                    role = role.as_str(),
                    "a console token is shorter than 16 characters; use a long random value"
                );
            }
            let fixed = matches!(reference, SecretRef::Env(_)).then_some(token);
            tokens.push(RoleToken { role, reference, fixed });
        }
        if tokens.len() == 2
            && let (Some(a), Some(b)) = (tokens[0].current(), tokens[1].current())
            && a.expose_secret() == b.expose_secret()
        {
            anyhow::bail!(
                "[ops] console_viewer_token and console_operator_token are the same token: a viewer could act \
                 as an operator; give each role its own"
            );
        }
        Ok((!tokens.is_empty()).then_some(Self { tokens }))
    }

    /// Tokens from values (tests).
    pub fn fixed(viewer: Option<&str>, operator: Option<&str>) -> Self {
        let mut tokens = Vec::new();
        for (role, value) in [(Role::Operator, operator), (Role::Viewer, viewer)] {
            if let Some(v) = value {
                tokens.push(RoleToken {
                    role,
                    reference: SecretRef::Env("TEST".into()),
                    fixed: Some(SecretString::from(v.to_owned())),
                });
            }
        }
        Self { tokens }
    }

    /// The role `presented` opens, and the digest of the token it matched. Every
    /// configured token is compared (in constant time), whichever matches.
    pub fn authenticate(&self, presented: &str) -> Option<(Role, [u8; 32])> {
        let presented = digest(presented);
        let mut found = None;
        for t in &self.tokens {
            if let Some(current) = t.current() {
                let expected = digest(current.expose_secret());
                if bool::from(presented.ct_eq(&expected)) && found.is_none() {
                    found = Some((t.role, expected));
                }
            }
        }
        found
    }

    /// Whether `role`'s token now is still the one whose digest a session keeps.
    pub fn still_valid(&self, role: Role, token_digest: &[u8; 32]) -> bool {
        self.tokens
            .iter()
            .filter(|t| t.role == role)
            .filter_map(RoleToken::current)
            .any(|current| bool::from(digest(current.expose_secret()).ct_eq(token_digest)))
    }

    /// The roles that can log in (a configured token each).
    pub fn roles(&self) -> Vec<Role> {
        self.tokens.iter().map(|t| t.role).collect()
    }
}

/// A logged-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    pub operator: Operator,
    pub role: Role,
    /// The per-session CSRF token every form of this session carries.
    pub csrf: String,
    token_digest: [u8; 32],
    created: Instant,
    last_seen: Instant,
}

/// Why a session cookie no longer opens a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// No such session (never was, logged out, or a restart).
    Unknown,
    /// Unused for longer than `console_session_idle`.
    Idle,
    /// Older than [`MAX_SESSION_AGE`].
    TooOld,
    /// The role's token changed since login.
    TokenRotated,
}

impl Ended {
    pub fn message(self) -> &'static str {
        match self {
            Self::Unknown => "Please log in.",
            Self::Idle => "Your session ended after a period without activity. Please log in again.",
            Self::TooOld => "Your session reached its maximum age. Please log in again.",
            Self::TokenRotated => "Your session ended because the console token was changed. Please log in again.",
        }
    }
    pub fn code(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Idle => "idle",
            Self::TooOld => "too_old",
            Self::TokenRotated => "token_rotated",
        }
    }
}

/// The sessions of this process.
#[derive(Debug)]
pub struct Sessions {
    idle: Duration,
    /// Keyed by the SHA-256 of the cookie value.
    map: Mutex<HashMap<[u8; 32], Session>>,
}

impl Sessions {
    pub fn new(idle: Duration) -> Self {
        Self { idle, map: Mutex::new(HashMap::new()) }
    }

    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// Opens a session; returns the cookie value.
    pub fn open(&self, operator: Operator, role: Role, token_digest: [u8; 32], now: Instant) -> (String, Session) {
        let cookie = random_hex(3);
        let session = Session { operator, role, csrf: random_hex(2), token_digest, created: now, last_seen: now };
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_SESSIONS {
            let idle = self.idle;
            map.retain(|_, s| now.saturating_duration_since(s.last_seen) < idle);
            while map.len() >= MAX_SESSIONS {
                let Some(oldest) = map.iter().min_by_key(|(_, s)| s.last_seen).map(|(k, _)| *k) else { break };
                map.remove(&oldest);
            }
        }
        map.insert(digest(&cookie), session.clone());
        (cookie, session)
    }

    /// The session of `cookie`, if it is still valid at `now` (and then it is
    /// marked used); an ended session is removed.
    pub fn check(&self, cookie: &str, tokens: &Tokens, now: Instant) -> Result<Session, Ended> {
        let key = digest(cookie);
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let s = map.get_mut(&key).ok_or(Ended::Unknown)?;
        let ended = if now.saturating_duration_since(s.last_seen) >= self.idle {
            Some(Ended::Idle)
        } else if now.saturating_duration_since(s.created) >= MAX_SESSION_AGE {
            Some(Ended::TooOld)
        } else if !tokens.still_valid(s.role, &s.token_digest) {
            Some(Ended::TokenRotated)
        } else {
            None
        };
        if let Some(why) = ended {
            map.remove(&key);
            return Err(why);
        }
        s.last_seen = now;
        Ok(s.clone())
    }

    /// Ends the session of `cookie` (logout).
    pub fn close(&self, cookie: &str) -> Option<Session> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner).remove(&digest(cookie))
    }
}

/// Whether a presented CSRF token is the expected one (constant time).
pub fn csrf_matches(presented: &str, expected: &str) -> bool {
    let (p, e) = (digest(presented), digest(expected));
    !expected.is_empty() && bool::from(p.ct_eq(&e))
}

/// Why a login was refused (the metric label and the audit row's `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoginFailure {
    /// No token given.
    MissingToken,
    /// A token that is no role's.
    WrongToken,
    /// Too many failed logins from this client (or from all).
    RateLimited,
}

impl LoginFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::WrongToken => "wrong_token",
            Self::RateLimited => "rate_limited",
        }
    }
}

/// A token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: u32, now: Instant) -> Self {
        Self { tokens: f64::from(burst), at: now }
    }
    fn refill(&mut self, burst: u32, every: Duration, now: Instant) {
        let gained = now.saturating_duration_since(self.at).as_secs_f64() / every.as_secs_f64();
        self.tokens = (self.tokens + gained).min(f64::from(burst));
        self.at = now;
    }
}

/// Limits failed logins: [`PER_CLIENT_BURST`] per client address, then one per
/// [`PER_CLIENT_REFILL`]; and [`GLOBAL_BURST`] for all clients together, then
/// one per [`GLOBAL_REFILL`] (a guesser spread over many addresses). Only
/// failures spend; a client whose budget is spent is refused before its token
/// is even compared. Behind a reverse proxy every client has the proxy's
/// address, and the per-client limit is a second global one.
#[derive(Debug)]
pub struct LoginLimiter {
    state: Mutex<(Bucket, HashMap<IpAddr, Bucket>)>,
}

impl LoginLimiter {
    pub fn new(now: Instant) -> Self {
        Self { state: Mutex::new((Bucket::full(GLOBAL_BURST, now), HashMap::new())) }
    }

    /// Whether `client` may try to log in at `now`.
    pub fn allows(&self, client: Option<IpAddr>, now: Instant) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (global, clients) = &mut *state;
        global.refill(GLOBAL_BURST, GLOBAL_REFILL, now);
        if global.tokens < 1.0 {
            return false;
        }
        match client.and_then(|c| clients.get_mut(&c)) {
            Some(b) => {
                b.refill(PER_CLIENT_BURST, PER_CLIENT_REFILL, now);
                b.tokens >= 1.0
            }
            None => true,
        }
    }

    /// Spends one failure of `client`'s budget (and the global one).
    pub fn failed(&self, client: Option<IpAddr>, now: Instant) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (global, clients) = &mut *state;
        global.refill(GLOBAL_BURST, GLOBAL_REFILL, now);
        global.tokens = (global.tokens - 1.0).max(0.0);
        let Some(client) = client else { return };
        if clients.len() >= MAX_TRACKED_CLIENTS && !clients.contains_key(&client) {
            for b in clients.values_mut() {
                b.refill(PER_CLIENT_BURST, PER_CLIENT_REFILL, now);
            }
            clients.retain(|_, b| b.tokens < f64::from(PER_CLIENT_BURST));
            if clients.len() >= MAX_TRACKED_CLIENTS {
                return;
            }
        }
        let b = clients.entry(client).or_insert_with(|| Bucket::full(PER_CLIENT_BURST, now));
        b.refill(PER_CLIENT_BURST, PER_CLIENT_REFILL, now);
        b.tokens = (b.tokens - 1.0).max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::Via;

    fn op() -> Operator {
        Operator::new("alice", Via::Console).unwrap()
    }

    #[test]
    fn each_token_opens_its_role_and_nothing_else_does() {
        let t = Tokens::fixed(Some("viewer-token-0123456789"), Some("operator-token-0123456789"));
        assert_eq!(t.authenticate("viewer-token-0123456789").map(|x| x.0), Some(Role::Viewer));
        assert_eq!(t.authenticate("operator-token-0123456789").map(|x| x.0), Some(Role::Operator));
        assert_eq!(t.authenticate("operator-token-012345678"), None);
        assert_eq!(t.authenticate(""), None);
        let only_viewer = Tokens::fixed(Some("viewer-token-0123456789"), None);
        assert_eq!(only_viewer.authenticate("operator-token-0123456789"), None);
        assert_eq!(only_viewer.roles(), vec![Role::Viewer]);
    }

    #[test]
    fn a_session_ends_when_idle_when_too_old_and_when_its_token_changes() {
        let t = Tokens::fixed(Some("viewer-token-0123456789"), None);
        let sessions = Sessions::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let (role, d) = t.authenticate("viewer-token-0123456789").unwrap();
        let (cookie, s) = sessions.open(op(), role, d, t0);
        assert_eq!(cookie.len(), 96);
        assert_ne!(s.csrf, cookie);
        // Used within the idle time: valid, and the clock restarts.
        assert!(sessions.check(&cookie, &t, t0 + Duration::from_secs(59)).is_ok());
        assert!(sessions.check(&cookie, &t, t0 + Duration::from_secs(118)).is_ok());
        assert_eq!(sessions.check(&cookie, &t, t0 + Duration::from_secs(178)).unwrap_err(), Ended::Idle);
        // Ended sessions are gone.
        assert_eq!(sessions.check(&cookie, &t, t0 + Duration::from_secs(179)).unwrap_err(), Ended::Unknown);
        assert_eq!(sessions.check("nope", &t, t0).unwrap_err(), Ended::Unknown);

        let (cookie, _) = sessions.open(op(), role, d, t0);
        let rotated = Tokens::fixed(Some("another-viewer-token-0123"), None);
        assert_eq!(sessions.check(&cookie, &rotated, t0).unwrap_err(), Ended::TokenRotated);

        let (cookie, _) = sessions.open(op(), role, d, t0);
        let mut now = t0;
        while now < t0 + MAX_SESSION_AGE - Duration::from_secs(30) {
            now += Duration::from_secs(30);
            sessions.check(&cookie, &t, now).unwrap();
        }
        now += Duration::from_secs(30);
        assert_eq!(sessions.check(&cookie, &t, now).unwrap_err(), Ended::TooOld);
    }

    #[test]
    fn a_session_of_one_role_is_not_valid_for_the_other_roles_token() {
        let t = Tokens::fixed(Some("viewer-token-0123456789"), Some("operator-token-0123456789"));
        let sessions = Sessions::new(Duration::from_secs(60));
        let t0 = Instant::now();
        // A digest of the operator's token claimed for the viewer role does not pass.
        let (_, d) = t.authenticate("operator-token-0123456789").unwrap();
        let (cookie, _) = sessions.open(op(), Role::Viewer, d, t0);
        assert_eq!(sessions.check(&cookie, &t, t0).unwrap_err(), Ended::TokenRotated);
    }

    fn config(viewer_file: Option<&std::path::Path>, operator_file: Option<&std::path::Path>) -> Config {
        let mut c = Config::parse(include_str!("../../../accessgov.example.toml")).unwrap();
        c.ops.console_viewer_token_file = viewer_file.map(|p| p.display().to_string());
        c.ops.console_operator_token_file = operator_file.map(|p| p.display().to_string());
        c
    }

    #[test]
    fn the_console_is_on_exactly_when_a_token_is_configured_and_refuses_unreadable_or_shared_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (v, o, same) = (dir.path().join("v"), dir.path().join("o"), dir.path().join("same"));
        std::fs::write(&v, "viewer-token-0123456789\n").unwrap();
        std::fs::write(&o, "operator-token-0123456789").unwrap();
        std::fs::write(&same, "viewer-token-0123456789").unwrap();
        assert!(Tokens::from_config(&config(None, None)).unwrap().is_none());
        let only_viewer = Tokens::from_config(&config(Some(&v), None)).unwrap().unwrap();
        assert_eq!(only_viewer.roles(), vec![Role::Viewer]);
        let both = Tokens::from_config(&config(Some(&v), Some(&o))).unwrap().unwrap();
        assert_eq!(both.authenticate("viewer-token-0123456789").unwrap().0, Role::Viewer);
        let missing = dir.path().join("missing");
        let err = Tokens::from_config(&config(Some(&v), Some(&missing))).unwrap_err().to_string();
        assert!(err.contains("console_operator_token") && err.contains("missing"), "{err}");
        let err = Tokens::from_config(&config(Some(&v), Some(&same))).unwrap_err().to_string();
        assert!(err.contains("the same token"), "{err}");
        // A file token is read again: a new content is the token from then on, a removed file none.
        std::fs::write(&v, "viewer-token-rotated-0123").unwrap();
        assert_eq!(both.authenticate("viewer-token-0123456789"), None);
        assert!(both.authenticate("viewer-token-rotated-0123").is_some());
        std::fs::remove_file(&v).unwrap();
        assert_eq!(both.authenticate("viewer-token-rotated-0123"), None);
    }

    #[test]
    fn console_keys_are_validated_and_their_secrets_checked() {
        let mut c = config(None, None);
        c.ops.console_viewer_token_env = Some("ACCESSGOV_TEST_CONSOLE_VIEWER_UNSET".into());
        c.ops.console_viewer_token_file = Some("/nonexistent".into());
        c.ops.console_session_idle = Duration::ZERO;
        let keys: Vec<String> = c.validate().into_iter().map(|p| p.key).collect();
        assert!(keys.contains(&"ops.console_viewer_token_file".to_owned()), "{keys:?}");
        assert!(keys.contains(&"ops.console_session_idle".to_owned()), "{keys:?}");
        let secrets: Vec<String> = c.check_secrets(&|_| None).into_iter().map(|p| p.key).collect();
        assert!(secrets.contains(&"ops.console_viewer_token".to_owned()), "{secrets:?}");
        let parsed = Config::parse(&format!(
            "{}\n",
            include_str!("../../../accessgov.example.toml")
                .replace("[ops]\n", "[ops]\nconsole_operator_token_env = \"X\"\nconsole_session_idle = \"5m\"\n")
        ))
        .unwrap();
        assert_eq!(parsed.ops.console_session_idle, Duration::from_secs(300));
        assert!(parsed.summary().contains("console /console, operator token from env X, idle logout 5m"));
        assert_eq!(config(None, None).ops.console_session_idle, Duration::from_secs(1800));
    }

    #[test]
    fn csrf_tokens_compare_exactly() {
        assert!(csrf_matches("abc", "abc"));
        assert!(!csrf_matches("abd", "abc"));
        assert!(!csrf_matches("", ""));
    }

    #[test]
    fn failed_logins_are_limited_per_client_and_in_total() {
        let t0 = Instant::now();
        let l = LoginLimiter::new(t0);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..PER_CLIENT_BURST {
            assert!(l.allows(Some(a), t0));
            l.failed(Some(a), t0);
        }
        assert!(!l.allows(Some(a), t0), "the burst is spent");
        assert!(l.allows(Some(b), t0), "another client is not affected");
        assert!(l.allows(Some(a), t0 + PER_CLIENT_REFILL), "one more after the refill time");
        // Many clients: the global budget binds.
        let l = LoginLimiter::new(t0);
        for i in 0..GLOBAL_BURST {
            let c: IpAddr = format!("10.1.{}.{}", i / 200, i % 200).parse().unwrap();
            assert!(l.allows(Some(c), t0));
            l.failed(Some(c), t0);
        }
        assert!(!l.allows(Some("10.9.9.9".parse().unwrap()), t0));
        assert!(l.allows(Some("10.9.9.9".parse().unwrap()), t0 + GLOBAL_REFILL));
    }
}
