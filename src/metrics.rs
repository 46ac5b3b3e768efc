//! Prometheus metrics: one recorder per process, rendered by the ops
//! listener's `/metrics` (text format 0.0.4).
//!
//! Counters:
//! - `accessgov_ingress_requests_total{outcome}`: webhooks by outcome: accepted, ignored,
//!   unauthorized, bad_request, invalid_value, too_large, body_timeout (408), unavailable
//! - `accessgov_ingress_header_timeouts_total`: connections closed because no complete request
//!   headers arrived within `header_read_timeout` (slow senders, and idle keep-alive connections)
//! - `accessgov_ingress_auth_failures_total{reason}`, `accessgov_ingress_ignored_total{reason}`,
//!   `accessgov_ingress_publish_failures_total{reason}`
//! - `accessgov_worker_events_total{action,application,outcome}`: the final outcome per
//!   delivery (`granted`, `applied`, `denied_by_policy`, `dry_run`, ..., `duplicate`, `poison`,
//!   `retry_scheduled`, `dead_lettered`); `application` is `none` when the event names none
//! - `accessgov_worker_poison_total`: undecodable messages sent to the dead queue
//! - `accessgov_provider_requests_total{application,operation,status}`: every HTTP request to
//!   a provider; `status` is the class (`2xx`, `3xx`, `4xx`, `5xx`) or `error` (no answer:
//!   refused, timed out); `operation` is what it served (`grant`, `revoke`, `members`,
//!   `memberships`, `identity`, `user_state`, `test`)
//! - `accessgov_retries_scheduled_total{application}`, `accessgov_dead_letters_recorded_total{application}`
//! - `accessgov_admin_auth_failures_total{reason}`: refused `/admin` calls (every one,
//!   including those the audit log's rate limit does not write)
//! - `accessgov_console_login_failures_total{reason}`: refused console logins
//!   (`missing_token`, `wrong_token`, `rate_limited`; every one, as above)
//!
//! Histograms (seconds):
//! - `accessgov_provider_request_duration_seconds{application,operation}`
//! - `accessgov_event_end_to_end_seconds{action}`: from the webhook's receipt by the ingress to
//!   the event's final audit row (replays and events accessgov makes itself are not counted)
//!
//! Gauges (read from the database and the broker when `/metrics` is scraped, at most every
//! few seconds, by the worker: every worker replica reports the same values, aggregate with
//! `max`):
//! - `accessgov_dead_letters_open`, `accessgov_dead_letter_oldest_age_seconds` (0 when none)
//! - `accessgov_intents_pending`: provider calls decided and not yet done (pending or running)
//! - `accessgov_queue_messages{queue}`: messages ready in the `requests` and `dead` queues
//! - `accessgov_audit_verify_ok` (1 intact, 0 broken) and
//!   `accessgov_audit_verify_last_run_timestamp_seconds`: the last verification of the chain
//!   (the worker's scheduled check, `[audit] verify_interval`, or `accessgov audit verify`)
//! - `accessgov_worker_in_flight`: deliveries this worker is processing (per process)

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Provider latency buckets: a call is tens of milliseconds to seconds.
const PROVIDER_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// End to end: milliseconds when all goes well, minutes through the retry ladder.
const END_TO_END_BUCKETS: &[f64] =
    &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

/// Installs the global recorder once and returns its handle.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("accessgov_provider_request_duration_seconds".into()),
                    PROVIDER_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("accessgov_event_end_to_end_seconds".into()),
                        END_TO_END_BUCKETS,
                    )
                })
                .expect("static, non-empty bucket lists")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first (then ours just stays unused).
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

pub fn ingress_request(outcome: &'static str) {
    metrics::counter!("accessgov_ingress_requests_total", "outcome" => outcome).increment(1);
}

pub fn ingress_header_timeout() {
    metrics::counter!("accessgov_ingress_header_timeouts_total").increment(1);
}

/// A connection to the ops listener closed because its headers came too slowly.
pub fn ops_header_timeout() {
    metrics::counter!("accessgov_ops_header_timeouts_total").increment(1);
}

pub fn ingress_auth_failure(reason: &'static str) {
    metrics::counter!("accessgov_ingress_auth_failures_total", "reason" => reason).increment(1);
}

pub fn ingress_ignored(reason: &'static str) {
    metrics::counter!("accessgov_ingress_ignored_total", "reason" => reason).increment(1);
}

pub fn ingress_publish_failure(reason: &'static str) {
    metrics::counter!("accessgov_ingress_publish_failures_total", "reason" => reason).increment(1);
}

/// The final outcome of one delivery.
pub fn worker_event(action: &'static str, application: &str, outcome: &'static str) {
    metrics::counter!(
        "accessgov_worker_events_total",
        "action" => action,
        "application" => application.to_owned(),
        "outcome" => outcome
    )
    .increment(1);
}

pub fn worker_poison() {
    metrics::counter!("accessgov_worker_poison_total").increment(1);
}

pub fn retry_scheduled(application: &str) {
    metrics::counter!("accessgov_retries_scheduled_total", "application" => application.to_owned()).increment(1);
}

pub fn dead_letter_recorded(application: &str) {
    metrics::counter!("accessgov_dead_letters_recorded_total", "application" => application.to_owned()).increment(1);
}

/// Deliveries entering (`n > 0`) or leaving (`n < 0`) this worker.
pub fn in_flight(n: i64) {
    metrics::gauge!("accessgov_worker_in_flight").increment(n as f64);
}

pub fn admin_auth_failure(reason: &'static str) {
    metrics::counter!("accessgov_admin_auth_failures_total", "reason" => reason).increment(1);
}

/// A refused console login (`/console/login`).
pub fn console_login_failure(reason: &'static str) {
    metrics::counter!("accessgov_console_login_failures_total", "reason" => reason).increment(1);
}

/// The status class of an HTTP answer, or `error` when none came.
pub fn status_class(status: Option<u16>) -> &'static str {
    match status {
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        Some(_) | None => "error",
    }
}

/// One HTTP request to a provider.
pub fn provider_request(application: &str, operation: &'static str, status: &'static str, took: Duration) {
    metrics::counter!(
        "accessgov_provider_requests_total",
        "application" => application.to_owned(),
        "operation" => operation,
        "status" => status
    )
    .increment(1);
    metrics::histogram!(
        "accessgov_provider_request_duration_seconds",
        "application" => application.to_owned(),
        "operation" => operation
    )
    .record(took.as_secs_f64());
}

/// An event reached its final audit row `took` after the ingress received it.
pub fn end_to_end(action: &'static str, took: Duration) {
    metrics::histogram!("accessgov_event_end_to_end_seconds", "action" => action).record(took.as_secs_f64());
}

/// The gauges read from the database and the broker.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Backlog {
    pub dead_letters_open: i64,
    pub oldest_dead_letter_age: Duration,
    pub intents_pending: i64,
    pub requests_ready: Option<u32>,
    pub dead_ready: Option<u32>,
    /// The last verification of the audit chain: (intact, when).
    pub audit_verify: Option<(bool, chrono::DateTime<chrono::Utc>)>,
}

pub fn set_backlog(b: &Backlog) {
    metrics::gauge!("accessgov_dead_letters_open").set(b.dead_letters_open as f64);
    metrics::gauge!("accessgov_dead_letter_oldest_age_seconds").set(b.oldest_dead_letter_age.as_secs_f64());
    metrics::gauge!("accessgov_intents_pending").set(b.intents_pending as f64);
    if let Some(n) = b.requests_ready {
        metrics::gauge!("accessgov_queue_messages", "queue" => "requests").set(f64::from(n));
    }
    if let Some(n) = b.dead_ready {
        metrics::gauge!("accessgov_queue_messages", "queue" => "dead").set(f64::from(n));
    }
    if let Some((ok, at)) = b.audit_verify {
        metrics::gauge!("accessgov_audit_verify_ok").set(if ok { 1.0 } else { 0.0 });
        metrics::gauge!("accessgov_audit_verify_last_run_timestamp_seconds").set(at.timestamp() as f64);
    }
}

tokio::task_local! {
    /// The application and operation the provider requests of the current task serve.
    static PROVIDER_CALL: (String, &'static str);
}

/// Runs `fut` with its provider requests labelled `application` / `operation`.
pub async fn provider_scope<F: std::future::Future>(application: &str, operation: &'static str, fut: F) -> F::Output {
    PROVIDER_CALL.scope((application.to_owned(), operation), fut).await
}

/// The labels of a provider request made now: the enclosing
/// [`provider_scope`], else the provider's kind and `other`.
pub fn provider_labels(provider: &'static str) -> (String, &'static str) {
    PROVIDER_CALL.try_with(|(a, o)| (a.clone(), *o)).unwrap_or_else(|_| (provider.to_owned(), "other"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        assert_eq!(status_class(Some(204)), "2xx");
        assert_eq!(status_class(Some(302)), "3xx");
        assert_eq!(status_class(Some(429)), "4xx");
        assert_eq!(status_class(Some(503)), "5xx");
        assert_eq!(status_class(None), "error");
        assert_eq!(status_class(Some(99)), "error");
    }

    #[tokio::test]
    async fn a_provider_scope_labels_the_requests_inside_it_and_nothing_outside() {
        assert_eq!(provider_labels("okta"), ("okta".to_owned(), "other"));
        let inside = provider_scope("okta-prod", "grant", async { provider_labels("okta") }).await;
        assert_eq!(inside, ("okta-prod".to_owned(), "grant"));
        assert_eq!(provider_labels("okta"), ("okta".to_owned(), "other"));
    }
}
