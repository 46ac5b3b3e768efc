//! Prometheus metrics: one recorder per process, rendered by the ops listener.
//!
//! Names (all counters unless noted):
//! - `accessgov_ingress_requests_total{outcome}`: accepted, ignored, unauthorized, bad_request,
//!   invalid_value, too_large, body_timeout (408), unavailable
//! - `accessgov_ingress_header_timeouts_total`: connections closed because no complete request
//!   headers arrived within `header_read_timeout` (slow senders, and idle keep-alive connections)
//! - `accessgov_ingress_auth_failures_total{reason}`
//! - `accessgov_ingress_ignored_total{reason}`
//! - `accessgov_ingress_publish_failures_total{reason}`
//! - `accessgov_worker_events_total{outcome}`: the final outcome per delivery
//! - `accessgov_worker_poison_total`: undecodable messages sent to the dead queue
//! - `accessgov_admin_auth_failures_total{reason}`: refused `/admin` calls (every one,
//!   including those the audit log's rate limit does not write)

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder once and returns its handle.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
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

pub fn worker_event(outcome: &'static str) {
    metrics::counter!("accessgov_worker_events_total", "outcome" => outcome).increment(1);
}

pub fn worker_poison() {
    metrics::counter!("accessgov_worker_poison_total").increment(1);
}

pub fn admin_auth_failure(reason: &'static str) {
    metrics::counter!("accessgov_admin_auth_failures_total", "reason" => reason).increment(1);
}
