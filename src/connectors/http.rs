//! The HTTP layer every REST connector shares: one reqwest client per
//! application (timeouts, user agent), a per-application request-rate limit
//! (so a replay of thousands of dead letters cannot hammer a provider), error
//! classification with the providers' rate-limit hints, and a token cache for
//! OAuth/JWT-derived tokens (cached until shortly before expiry, refreshed once
//! on 401 by the caller through [`TokenCache::invalidate`]).

use super::ConnectorError;
use crate::config::ApplicationConfig;
use crate::config::secret::SecretRef;
use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, Response, StatusCode};
use secrecy::SecretString;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex;

/// Longest server-requested wait we honour; longer hints are capped.
pub const MAX_HINT: Duration = Duration::from_secs(3600);
/// Default per-request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest error body kept for a message.
const MAX_ERROR_BODY: usize = 600;

/// Settings every application kind accepts.
#[derive(Debug, Clone)]
pub struct Common {
    /// Endpoint override (tests, proxies, sovereign clouds).
    pub base_url: Option<String>,
    /// Ticket field holding the provider's user name (e.g. a GitHub login).
    pub subject_field: Option<String>,
    /// Requests per second to this provider (none = unlimited).
    pub rate_limit_per_second: Option<f64>,
    /// Requests in flight to this provider at once (each holds a connection
    /// and its buffers); more wait their turn.
    pub max_concurrent_calls: usize,
    pub timeout: Duration,
}

/// Default of `max_concurrent_calls`.
pub const DEFAULT_MAX_CONCURRENT_CALLS: usize = 32;

impl Common {
    pub fn from_app(app: &ApplicationConfig) -> Result<Self, String> {
        let timeout = match setting(app, "timeout") {
            Some(t) => crate::config::duration::parse(&t)?,
            None => DEFAULT_TIMEOUT,
        };
        let rate = match app.settings.get("rate_limit_per_second") {
            None => None,
            Some(v) => match v.as_float().or_else(|| v.as_integer().map(|i| i as f64)) {
                Some(r) if quota(r).is_some() => Some(r),
                _ => return Err("rate_limit_per_second must be a positive number".into()),
            },
        };
        let max_concurrent_calls = match app.settings.get("max_concurrent_calls") {
            None => DEFAULT_MAX_CONCURRENT_CALLS,
            Some(v) => match v.as_integer() {
                Some(n) if (1..=10_000).contains(&n) => n as usize,
                _ => return Err("max_concurrent_calls must be a whole number from 1 to 10000".into()),
            },
        };
        Ok(Self {
            base_url: setting(app, "base_url"),
            subject_field: setting(app, "subject_field"),
            rate_limit_per_second: rate,
            max_concurrent_calls,
            timeout,
        })
    }
}

/// A string setting of an application.
pub fn setting(app: &ApplicationConfig, key: &str) -> Option<String> {
    app.settings.get(key).and_then(|v| v.as_str()).map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned)
}

/// A boolean setting of an application.
pub fn flag(app: &ApplicationConfig, key: &str) -> Option<bool> {
    app.settings.get(key).and_then(|v| v.as_bool())
}

/// The secret `<name>_env` / `<name>_file`, resolved now. `Ok(None)` when neither is set.
pub fn secret(app: &ApplicationConfig, name: &str) -> Result<Option<SecretString>, String> {
    let env = setting(app, &format!("{name}_env"));
    let file = setting(app, &format!("{name}_file"));
    match SecretRef::from_pair(env.as_deref(), file.as_deref()) {
        None => Ok(None),
        Some(r) => r.resolve().map(Some).map_err(|e| format!("{name}: {e}")),
    }
}

/// Spaces requests to at most `rate` per second: a governor (GCRA) limiter
/// with a burst of one, so calls are evenly spaced and never more than `rate`
/// of them fall into any one-second window (`Quota::per_second(n)` would let a
/// burst of `n` through at once, up to `2n` in a window).
#[derive(Debug)]
pub struct RateLimiter {
    inner: governor::DefaultDirectRateLimiter,
}

/// How much wider than `1 / rate` the limiter spaces calls: requests spaced
/// exactly `1 / rate` apart put `rate + 1` of them in a closed one-second
/// window, and the network's jitter (a few ms) does the same at the provider.
const RATE_MARGIN: f64 = 1.05;

/// The quota for `per_second` requests a second: one request per
/// `RATE_MARGIN / per_second`, no burst. `None` for a rate that is not a
/// positive number or so small that the interval overflows.
pub fn quota(per_second: f64) -> Option<governor::Quota> {
    if !(per_second.is_finite() && per_second > 0.0) {
        return None;
    }
    let interval = Duration::try_from_secs_f64(RATE_MARGIN / per_second).ok()?;
    // governor counts time in u64 nanoseconds (about 584 years).
    u64::try_from(interval.as_nanos()).ok()?;
    // (`with_period` refuses a zero interval; a quota's burst is set to one explicitly.)
    governor::Quota::with_period(interval).map(|q| q.allow_burst(std::num::NonZeroU32::MIN))
}

impl RateLimiter {
    /// A limiter for `per_second`; `None` for a rate [`quota`] refuses (which
    /// [`Common::from_app`] never lets through).
    pub fn new(per_second: f64) -> Option<Self> {
        quota(per_second).map(|quota| Self { inner: governor::RateLimiter::direct(quota) })
    }

    /// Waits for this caller's turn.
    pub async fn acquire(&self) {
        self.inner.until_ready().await;
    }
}

/// One application's HTTP client.
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
    provider: &'static str,
    limiter: Option<Arc<RateLimiter>>,
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl Http {
    pub fn new(provider: &'static str, common: &Common) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(common.timeout)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("accessgov/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(common.max_concurrent_calls)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            client,
            provider,
            limiter: common.rate_limit_per_second.and_then(RateLimiter::new).map(Arc::new),
            in_flight: Arc::new(tokio::sync::Semaphore::new(common.max_concurrent_calls.max(1))),
        })
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn provider(&self) -> &'static str {
        self.provider
    }

    /// Sends after the rate limiter allows it; transport failures are transient.
    pub async fn send(&self, req: RequestBuilder) -> Result<Response, ConnectorError> {
        // (The semaphore is never closed; `ok()` only keeps this free of panics.)
        let _slot = self.in_flight.acquire().await.ok();
        if let Some(l) = &self.limiter {
            l.acquire().await;
        }
        let mut request = req.build().map_err(|e| transport_error(self.provider, &e))?;
        let (application, operation) = crate::metrics::provider_labels(self.provider);
        // Method and host only: paths and queries may name a user (an email, a login).
        let span = tracing::info_span!(
            "provider.request",
            otel.kind = "client",
            otel.name = %format!("{} {}", request.method(), self.provider),
            http.request.method = %request.method(),
            server.address = request.url().host_str().unwrap_or_default(),
            application = %application,
            operation,
            http.response.status_code = tracing::field::Empty,
        );
        for (name, value) in crate::telemetry::inject(&span) {
            if let Ok(value) = reqwest::header::HeaderValue::from_str(&value) {
                request.headers_mut().insert(name, value);
            }
        }
        let started = std::time::Instant::now();
        let result = tracing::Instrument::instrument(self.client.execute(request), span.clone()).await;
        finished(&span, &application, operation, result.as_ref().ok().map(|r| r.status().as_u16()), started);
        result.map_err(|e| transport_error(self.provider, &e))
    }

    /// The classified error for a non-success response.
    pub async fn error_for(&self, resp: Response) -> ConnectorError {
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.text().await.unwrap_or_default();
        classify(self.provider, status, &headers, &body)
    }
}

/// Ends a provider request: its status on its span, and its count and
/// latency (`status` is the HTTP status, `None` when no answer came).
pub(crate) fn finished(
    span: &tracing::Span,
    application: &str,
    operation: &'static str,
    status: Option<u16>,
    started: std::time::Instant,
) {
    if let Some(code) = status {
        span.record("http.response.status_code", code);
    }
    crate::metrics::provider_request(application, operation, crate::metrics::status_class(status), started.elapsed());
}

/// An answer that was not a success: status, headers and body, read once, so a
/// connector can look at the provider's error body before classifying it.
pub struct Failure {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Failure {
    pub async fn read(resp: Response) -> Self {
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.text().await.unwrap_or_default();
        Self { status, headers, body }
    }
}

/// A transport error (no HTTP answer): always transient, message without URL secrets.
pub fn transport_error(provider: &str, e: &reqwest::Error) -> ConnectorError {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    ConnectorError::Transient { reason: format!("{provider}: {kind}"), retry_after: None }
}

/// Maps a provider answer to an error class: 429 and 5xx are transient (with
/// the server's hint), 401/403 unauthorized, 404 not found, other 4xx permanent.
/// Provider-specific exceptions (Google's 403 rate limits, GitHub's secondary
/// limits) are checked by the connectors before falling back to this.
pub fn classify(provider: &str, status: StatusCode, headers: &HeaderMap, body: &str) -> ConnectorError {
    let detail = snippet(body);
    let reason = format!(
        "{provider} answered {}{}",
        status.as_u16(),
        if detail.is_empty() { String::new() } else { format!(": {detail}") }
    );
    match status {
        StatusCode::TOO_MANY_REQUESTS => ConnectorError::Transient {
            reason,
            retry_after: Some(retry_hint(headers).unwrap_or(Duration::from_secs(1))),
        },
        s if s.is_server_error() => ConnectorError::Transient { reason, retry_after: retry_hint(headers) },
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ConnectorError::Unauthorized(reason),
        StatusCode::NOT_FOUND => ConnectorError::NotFound { what: reason },
        _ => ConnectorError::Permanent { reason },
    }
}

/// The first part of an error body, on one line.
pub fn snippet(body: &str) -> String {
    let one_line: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut end = one_line.len().min(MAX_ERROR_BODY);
    while !one_line.is_char_boundary(end) {
        end -= 1;
    }
    one_line[..end].to_owned()
}

/// Sets `url`'s query from `pairs`, percent-encoding everything but RFC 3986
/// unreserved characters (so a space is `%20`, as vendor docs write filters,
/// never `+`). Keys are written as given (`$filter`, `$select`).
pub fn set_query(url: &mut reqwest::Url, pairs: &[(&str, &str)]) {
    let mut q = String::new();
    for (k, v) in pairs {
        if !q.is_empty() {
            q.push('&');
        }
        q.push_str(k);
        q.push('=');
        for b in v.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                q.push(b as char);
            } else {
                q.push_str(&format!("%{b:02X}"));
            }
        }
    }
    url.set_query(if q.is_empty() { None } else { Some(&q) });
}

/// The wait a provider asked for: `Retry-After` (seconds or HTTP date) first,
/// then a reset header (`X-Rate-Limit-Reset` Okta and `x-ratelimit-reset`
/// GitHub in epoch seconds, Jira's `X-RateLimit-Reset` in ISO-8601), capped at [`MAX_HINT`].
pub fn retry_hint(headers: &HeaderMap) -> Option<Duration> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    retry_hint_at(headers, now)
}

/// [`retry_hint`] at a given time since the epoch (pure, for tests).
pub fn retry_hint_at(headers: &HeaderMap, now: Duration) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let hint = if let Some(v) = get("retry-after") {
        match v.parse::<u64>() {
            Ok(secs) => Some(Duration::from_secs(secs)),
            Err(_) => chrono::DateTime::parse_from_rfc2822(v)
                .ok()
                .map(|at| Duration::from_secs(u64::try_from(at.timestamp()).unwrap_or(0)).saturating_sub(now)),
        }
    } else {
        get("x-rate-limit-reset")
            .or_else(|| get("x-ratelimit-reset"))
            .and_then(|v| v.parse::<u64>().ok().or_else(|| iso8601_epoch(v)))
            .map(|reset| Duration::from_secs(reset).saturating_sub(now))
    };
    hint.map(|h| h.min(MAX_HINT))
}

/// Epoch seconds of an ISO-8601 reset time (Jira's `X-RateLimit-Reset`,
/// `2026-11-25T10:15Z`, i.e. without seconds, or full RFC 3339).
fn iso8601_epoch(v: &str) -> Option<u64> {
    let at = chrono::DateTime::parse_from_rfc3339(v).map(|t| t.timestamp()).ok().or_else(|| {
        let naive = v.strip_suffix('Z').or_else(|| v.strip_suffix('z'))?;
        chrono::NaiveDateTime::parse_from_str(naive, "%Y-%m-%dT%H:%M").ok().map(|t| t.and_utc().timestamp())
    })?;
    u64::try_from(at).ok()
}

/// A cached bearer token.
#[derive(Debug, Default)]
pub struct TokenCache {
    slot: Mutex<Option<(SecretString, Instant)>>,
}

/// Tokens are refreshed this long before they expire.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);

impl TokenCache {
    /// The cached token, or a fresh one from `fetch` (which returns the token and its lifetime).
    pub async fn get<F, Fut>(&self, fetch: F) -> Result<SecretString, ConnectorError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(SecretString, Duration), ConnectorError>>,
    {
        let mut slot = self.slot.lock().await;
        if let Some((token, until)) = slot.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let (token, lifetime) = fetch().await?;
        let until = Instant::now() + lifetime.saturating_sub(TOKEN_MARGIN);
        *slot = Some((token.clone(), until));
        Ok(token)
    }

    /// Forgets the token (after a 401), so the next call fetches a new one.
    pub async fn invalidate(&self) {
        *self.slot.lock().await = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn retry_after_seconds_win_over_reset_headers() {
        let now = Duration::from_secs(1_000_000);
        assert_eq!(
            retry_hint_at(&headers(&[("retry-after", "7"), ("x-rate-limit-reset", "1000100")]), now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(retry_hint_at(&headers(&[("x-rate-limit-reset", "1000030")]), now), Some(Duration::from_secs(30)));
        assert_eq!(retry_hint_at(&headers(&[("x-ratelimit-reset", "999999")]), now), Some(Duration::ZERO));
        assert_eq!(retry_hint_at(&headers(&[("retry-after", "999999")]), now), Some(MAX_HINT));
        assert_eq!(retry_hint_at(&headers(&[]), now), None);
    }

    #[test]
    fn an_iso8601_reset_header_counts_from_now() {
        let now = Duration::from_secs(1_764_065_700); // 2025-11-25T10:15:00Z
        assert_eq!(
            retry_hint_at(&headers(&[("x-ratelimit-reset", "2025-11-25T10:17Z")]), now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            retry_hint_at(&headers(&[("x-ratelimit-reset", "2025-11-25T10:15:30Z")]), now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(retry_hint_at(&headers(&[("x-ratelimit-reset", "soon")]), now), None);
    }

    #[test]
    fn an_http_date_retry_after_counts_from_now() {
        let now = Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        let h = headers(&[("retry-after", "Sun, 06 Nov 1994 08:50:37 GMT")]);
        assert_eq!(retry_hint_at(&h, now), Some(Duration::from_secs(60)));
    }

    #[test]
    fn statuses_map_to_error_classes() {
        let h = headers(&[("retry-after", "3")]);
        assert_eq!(classify("okta", StatusCode::TOO_MANY_REQUESTS, &h, "").retry_after(), Some(Duration::from_secs(3)));
        assert!(classify("okta", StatusCode::BAD_GATEWAY, &HeaderMap::new(), "").is_transient());
        assert_eq!(classify("okta", StatusCode::UNAUTHORIZED, &HeaderMap::new(), "").class(), "unauthorized");
        assert_eq!(classify("okta", StatusCode::NOT_FOUND, &HeaderMap::new(), "").class(), "not_found");
        let e = classify("okta", StatusCode::BAD_REQUEST, &HeaderMap::new(), "{\"errorSummary\":\n \"bad\"}");
        assert_eq!(e.class(), "permanent");
        assert!(e.to_string().contains("{\"errorSummary\": \"bad\"}"), "{e}");
    }

    #[tokio::test]
    async fn the_rate_limiter_spaces_requests() {
        let l = RateLimiter::new(50.0).unwrap();
        let start = Instant::now();
        for _ in 0..5 {
            l.acquire().await;
        }
        assert!(start.elapsed() >= Duration::from_millis(80), "{:?}", start.elapsed());
    }

    #[tokio::test]
    async fn tokens_are_cached_until_invalidated() {
        let cache = TokenCache::default();
        let calls = std::sync::atomic::AtomicU32::new(0);
        let fetch = || async {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok((SecretString::from("t"), Duration::from_secs(3600)))
        };
        cache.get(fetch).await.unwrap();
        cache.get(fetch).await.unwrap();
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        cache.invalidate().await;
        cache.get(fetch).await.unwrap();
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    /// When each of `n` greedy callers gets through `quota`, on governor's fake clock.
    fn admitted(quota: governor::Quota, calls: usize, pause_after: Option<(usize, Duration)>) -> Vec<Duration> {
        use governor::clock::{Clock, FakeRelativeClock};
        let clock = FakeRelativeClock::default();
        let limiter = governor::RateLimiter::direct_with_clock(quota, clock.clone());
        let mut now = Duration::ZERO;
        let mut at = Vec::new();
        for i in 0..calls {
            if let Some((after, pause)) = pause_after
                && i == after
            {
                clock.advance(pause);
                now += pause;
            }
            while let Err(not_until) = limiter.check() {
                let wait = not_until.wait_time_from(clock.now());
                assert!(wait > Duration::ZERO, "refused without a wait");
                clock.advance(wait);
                now += wait;
            }
            at.push(now);
        }
        at
    }

    /// Asserts that no `rate + 1` admissions fall into one second (and a little, for jitter).
    fn assert_at_most_rate_per_second(at: &[Duration], rate: usize) {
        for (i, w) in at.windows(rate + 1).enumerate() {
            let span = w[rate] - w[0];
            assert!(span > Duration::from_millis(1020), "calls {i}..{} within {span:?}", i + rate);
        }
    }

    #[test]
    fn the_rate_limiter_never_lets_more_than_the_rate_into_any_one_second_window() {
        let at = admitted(quota(10.0).unwrap(), 31, None);
        assert_at_most_rate_per_second(&at, 10);
        // ...and no slower than the margin: 30 intervals of 105 ms.
        assert!(at[30] - at[0] <= Duration::from_millis(3160), "{:?}", at[30] - at[0]);
        // An idle spell banks no burst: after 5 s of quiet, calls are spaced as before.
        let at = admitted(quota(10.0).unwrap(), 31, Some((15, Duration::from_secs(5))));
        assert_at_most_rate_per_second(&at, 10);
        // The check itself can fail: governor's per-second quota lets a burst of 10 through.
        let bursty = admitted(governor::Quota::per_second(std::num::NonZeroU32::new(10).unwrap()), 31, None);
        assert!(bursty[10] - bursty[0] < Duration::from_millis(1020), "{bursty:?}");
    }

    #[test]
    fn only_positive_finite_rates_with_a_representable_interval_make_a_quota() {
        assert!(quota(10.0).is_some());
        assert!(quota(0.001).is_some());
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e-300] {
            assert!(quota(bad).is_none(), "{bad}");
        }
        for bad in ["0", "-2", "inf", "nan", "1e-300"] {
            let e = Common::from_app(&app(&format!("rate_limit_per_second = {bad}"))).err().unwrap();
            assert!(e.contains("rate_limit_per_second"), "{bad}: {e}");
        }
        assert_eq!(Common::from_app(&app("rate_limit_per_second = 2")).unwrap().rate_limit_per_second, Some(2.0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_wait_their_turn_on_the_real_clock() {
        // 9 callers at once at 40/s: the last is let through 8 intervals of
        // 26.25 ms after the first, however the tasks are scheduled.
        let limiter = Arc::new(RateLimiter::new(40.0).unwrap());
        let start = Instant::now();
        let calls = (0..9).map(|_| {
            let l = limiter.clone();
            tokio::spawn(async move {
                l.acquire().await;
                Instant::now()
            })
        });
        let at: Vec<Instant> = futures_util::future::join_all(calls).await.into_iter().map(Result::unwrap).collect();
        let last = at.iter().max().unwrap().duration_since(start);
        assert!(last >= Duration::from_millis(210), "{last:?}");
        assert!(last < Duration::from_secs(2), "{last:?}");
    }

    fn app(extra: &str) -> ApplicationConfig {
        toml::from_str(&format!("kind = \"jira\"\n{extra}")).unwrap()
    }

    #[test]
    fn max_concurrent_calls_defaults_to_32_and_refuses_nonsense() {
        assert_eq!(Common::from_app(&app("")).unwrap().max_concurrent_calls, DEFAULT_MAX_CONCURRENT_CALLS);
        assert_eq!(Common::from_app(&app("max_concurrent_calls = 4")).unwrap().max_concurrent_calls, 4);
        for bad in ["0", "-1", "1.5", "\"8\"", "20000"] {
            let e = Common::from_app(&app(&format!("max_concurrent_calls = {bad}"))).err().unwrap();
            assert!(e.contains("max_concurrent_calls"), "{bad}: {e}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_than_max_concurrent_calls_are_in_flight_at_the_provider() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (n, p) = (now.clone(), peak.clone());
        tokio::spawn(async move {
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                let (n, p) = (n.clone(), p.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => got.extend_from_slice(&buf[..k]),
                        }
                    }
                    let in_flight = n.fetch_add(1, Ordering::SeqCst) + 1;
                    p.fetch_max(in_flight, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    n.fetch_sub(1, Ordering::SeqCst);
                    let _ = sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
                });
            }
        });
        let http = Http::new("test", &Common::from_app(&app("max_concurrent_calls = 2")).unwrap()).unwrap();
        let url = format!("http://{addr}/");
        let calls = (0..6).map(|_| {
            let (http, url) = (http.clone(), url.clone());
            async move { http.send(http.client().get(&url)).await.map(|r| r.status()) }
        });
        let statuses = futures_util::future::join_all(calls).await;
        assert!(statuses.iter().all(|s| s.as_ref().is_ok_and(|s| *s == StatusCode::OK)), "{statuses:?}");
        assert_eq!(peak.load(Ordering::SeqCst), 2, "two at a time, never more");
    }
}
