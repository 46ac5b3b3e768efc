//! The public listener's answers, against the real broker.

use crate::helpers::chaos_proxy::{ChaosProxy, redirect_url, target_of};
use crate::helpers::{BEARER_TOKEN, TestApp, amqp_url, eventually, fixture, spawn_app, spawn_app_with};
use accessgov::broker::topology::REQUEST_BINDING;
use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const APPROVED: &str = "webhook-approved-confluence-write.json";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_credentials_get_401_json_and_are_counted() {
    let app = spawn_app().await;
    let body = fixture(APPROVED);
    let unsigned = app.http.post(app.url("/webhooks/jsm")).body(body.clone()).send().await.unwrap();
    assert_eq!(unsigned.status(), 401);
    assert_eq!(unsigned.json::<serde_json::Value>().await.unwrap()["error"], "unauthorized");
    let wrong = app
        .http
        .post(app.url("/webhooks/jsm"))
        .header("x-hub-signature", accessgov::ingress::auth::sign("not-the-secret", &body))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let token = app.http.post(app.url("/webhooks/jsm")).bearer_auth("nope").body(body).send().await.unwrap();
    assert_eq!(token.status(), 401);
    let metrics = app.http.get(format!("http://{}/metrics", app.ops_addr)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("accessgov_ingress_auth_failures_total{reason=\"missing_credentials\"}"), "{metrics}");
    assert!(metrics.contains("accessgov_ingress_auth_failures_total{reason=\"bad_signature\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_automation_bearer_token_is_accepted() {
    let app = spawn_app().await;
    let resp =
        app.http.post(app.url("/webhooks/jsm")).bearer_auth(BEARER_TOKEN).body(fixture(APPROVED)).send().await.unwrap();
    assert_eq!(resp.status(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_gets_413() {
    let app = spawn_app_with(|c| c.ingress.max_body_bytes = 1024).await;
    let resp = app.post_signed(&fixture(APPROVED), None).await;
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.json::<serde_json::Value>().await.unwrap()["limit_bytes"], 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_garbage_gets_400_and_a_comment_event_is_ignored_with_200() {
    let app = spawn_app().await;
    let resp = app.post_signed(b"{\"webhookEvent\": ", None).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.json::<serde_json::Value>().await.unwrap()["error"], "invalid_json");

    let mut v: serde_json::Value = serde_json::from_slice(&fixture(APPROVED)).unwrap();
    v.as_object_mut().unwrap().remove("changelog");
    v["issue_event_type_name"] = "issue_commented".into();
    let resp = app.post_signed(&serde_json::to_vec(&v).unwrap(), None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<serde_json::Value>().await.unwrap(), serde_json::json!({"ignored": "no_status_change"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_broker_unreachable_webhooks_get_503_with_retry_after_and_readyz_is_false() {
    let app = spawn_app_with(|c| c.broker.url = "amqp://guest:guest@127.0.0.1:1/%2f".into()).await;
    let resp = app.post_signed(&fixture(APPROVED), None).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().get("retry-after").is_some());
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(
        ready.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"broker": false, "database": true})
    );
    assert_eq!(app.http.get(app.url("/healthz")).send().await.unwrap().status(), 200);
}

fn event_id(v: &serde_json::Value) -> uuid::Uuid {
    v["event_id"].as_str().expect("event_id in the answer").parse().expect("a uuid")
}

/// The approval fixture as another JSM change (its own changelog id, so its own event).
fn approval_with_changelog(id: &str) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(&fixture(APPROVED)).unwrap();
    v["changelog"]["id"] = id.into();
    serde_json::to_vec(&v).unwrap()
}

async fn metrics(app: &TestApp) -> String {
    app.http.get(format!("http://{}/metrics", app.ops_addr)).send().await.unwrap().text().await.unwrap()
}

/// Waits until the worker recorded one event: received, decided, then its effect
/// (`dry_run`, or `already_held` for a second grant of the same access).
async fn wait_until_processed(app: &TestApp, id: uuid::Uuid) {
    let rows = eventually("the event's three audit rows", Duration::from_secs(30), || async {
        let rows = app.audit_actions(id).await;
        (rows.len() >= 3).then_some(rows)
    })
    .await;
    let actions: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(actions[..2], ["received", "decided"], "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_automation_body_with_a_bearer_token_is_accepted_and_processed() {
    let app = spawn_app().await;
    let resp = app
        .http
        .post(app.url("/webhooks/jsm"))
        .bearer_auth(BEARER_TOKEN)
        .header("content-type", "application/json")
        .body(fixture("automation-custom-approved-transition.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    wait_until_processed(&app, event_id(&resp.json().await.unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_publish_is_never_a_202_but_a_503_with_retry_after_and_a_metric() {
    let app = spawn_app().await;
    assert_eq!(app.post_signed(&approval_with_changelog("unroutable-0"), None).await.status(), 202);

    // Unbind the requests queue: the events exchange now routes `access.*` nowhere, so
    // the mandatory publish comes back as returned (then confirmed) instead of stored.
    // (Unbinding, not deleting: the worker's reconnect would re-declare a deleted queue.)
    let conn = lapin::Connection::connect(&amqp_url(), Default::default()).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    let (queue, exchange) = (app.names.requests.as_str(), app.names.events.as_str());
    channel.queue_unbind(queue.into(), exchange.into(), REQUEST_BINDING.into(), FieldTable::default()).await.unwrap();

    let resp = app.post_signed(&approval_with_changelog("unroutable-1"), None).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().get("retry-after").is_some());
    assert_eq!(resp.json::<serde_json::Value>().await.unwrap()["error"], "unavailable");
    let text = metrics(&app).await;
    assert!(text.contains("accessgov_ingress_publish_failures_total{reason=\"unroutable\"}"), "{text}");

    // Routable again: the very same delivery is accepted (Jira's retry succeeds).
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            REQUEST_BINDING.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let resp = app.post_signed(&approval_with_changelog("unroutable-1"), None).await;
    assert_eq!(resp.status(), 202);
    wait_until_processed(&app, event_id(&resp.json().await.unwrap())).await;
    let _ = conn.close(200, "test done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_broker_cut_webhooks_get_503_and_once_restored_202_again_and_the_worker_resumes() {
    let proxy = ChaosProxy::start(target_of(&amqp_url()).await).await;
    let proxied = redirect_url(&amqp_url(), proxy.addr());
    let app = spawn_app_with(|c| c.broker.url = proxied).await;

    // Through the proxy, everything works.
    let resp = app.post_signed(&approval_with_changelog("cut-0"), None).await;
    assert_eq!(resp.status(), 202);
    wait_until_processed(&app, event_id(&resp.json().await.unwrap())).await;

    // Cut: readiness reports the broker, webhooks are refused as retryable.
    proxy.cut();
    let ready = eventually("readyz to report the broker down", Duration::from_secs(20), || async {
        let resp = app.http.get(app.url("/readyz")).send().await.unwrap();
        (resp.status() == 503).then_some(resp)
    })
    .await;
    assert_eq!(
        ready.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"broker": false, "database": true})
    );
    let resp = app.post_signed(&approval_with_changelog("cut-1"), None).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().get("retry-after").is_some());

    // Restore: the same delivery (as Jira retries it) is accepted, and the worker's
    // consumer, which also goes through the proxy, reconnects and processes it.
    proxy.restore();
    let resp = eventually("a webhook to be accepted again", Duration::from_secs(30), || async {
        let resp = app.post_signed(&approval_with_changelog("cut-1"), None).await;
        (resp.status() == 202).then_some(resp)
    })
    .await;
    wait_until_processed(&app, event_id(&resp.json().await.unwrap())).await;
    assert_eq!(app.http.get(app.url("/readyz")).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_long_broker_outage_the_worker_recovers_from_the_next_short_one_at_once() {
    let proxy = ChaosProxy::start(target_of(&amqp_url()).await).await;
    let proxied = redirect_url(&amqp_url(), proxy.addr());
    let app = spawn_app_with(|c| c.broker.url = proxied).await;
    let resp = app.post_signed(&approval_with_changelog("outage-0"), None).await;
    assert_eq!(resp.status(), 202);
    wait_until_processed(&app, event_id(&resp.json().await.unwrap())).await;

    // A long outage: both worker lanes (requests, dead) fail to reconnect three times
    // each (after 0.5 s, 1 s and 2 s), so their next wait has grown to 4 s, then 8 s.
    proxy.cut();
    eventually("the worker to retry three times per lane", Duration::from_secs(20), || async {
        (proxy.refused() >= 6).then_some(())
    })
    .await;
    proxy.restore();
    let resp = app.post_signed(&approval_with_changelog("outage-1"), None).await;
    assert_eq!(resp.status(), 202);
    wait_until_processed(&app, event_id(&resp.json().await.unwrap())).await;

    // A blip: the worker was consuming again, so it retries after the minimum wait,
    // not after the 8 s it had grown to (which would miss this bound).
    proxy.cut();
    assert_eq!(app.post_signed(&approval_with_changelog("outage-2"), None).await.status(), 503);
    proxy.restore();
    let resp = app.post_signed(&approval_with_changelog("outage-2"), None).await;
    assert_eq!(resp.status(), 202);
    let id = event_id(&resp.json().await.unwrap());
    eventually("the event published after the blip to be processed", Duration::from_secs(6), || async {
        (app.audit_actions(id).await.len() >= 3).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_body_replayed_with_a_new_delivery_identifier_is_the_same_event() {
    let app = spawn_app().await;
    // A signed body without a changelog id: only the unsigned identifier header differs.
    let mut v: serde_json::Value = serde_json::from_slice(&fixture(APPROVED)).unwrap();
    v["changelog"].as_object_mut().unwrap().remove("id");
    let body = serde_json::to_vec(&v).unwrap();
    let first = app.post_signed(&body, Some("captured-delivery")).await;
    assert_eq!(first.status(), 202);
    let replay = app.post_signed(&body, Some("attacker-chosen-delivery")).await;
    assert_eq!(replay.status(), 202);
    let id = event_id(&first.json().await.unwrap());
    assert_eq!(event_id(&replay.json().await.unwrap()), id);
    // The worker sees one event and a duplicate, never a second grant.
    eventually("the replay to be recorded as a duplicate", Duration::from_secs(30), || async {
        let actions: Vec<String> = app.audit_actions(id).await.into_iter().map(|r| r.0).collect();
        actions.iter().any(|a| a == "duplicate").then_some(())
    })
    .await;
    let received: Vec<_> = app.audit_actions(id).await.into_iter().filter(|r| r.0 == "received").collect();
    assert_eq!(received.len(), 1, "{received:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_older_than_max_event_age_is_ignored_as_stale_and_counted() {
    let app = spawn_app_with(|c| c.jsm.max_event_age = Duration::from_secs(7 * 86_400)).await;
    // The fixture's body time is 2025-11-25: stale by now.
    let resp = app.post_signed(&fixture(APPROVED), None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<serde_json::Value>().await.unwrap(), serde_json::json!({"ignored": "stale"}));
    let text = metrics(&app).await;
    assert!(text.contains("accessgov_ingress_ignored_total{reason=\"stale\"}"), "{text}");

    // The same change sent with a fresh time is accepted.
    let mut v: serde_json::Value = serde_json::from_slice(&fixture(APPROVED)).unwrap();
    v["timestamp"] = chrono::Utc::now().timestamp_millis().into();
    assert_eq!(app.post_signed(&serde_json::to_vec(&v).unwrap(), None).await.status(), 202);
}

/// A queue of the test's own on the events exchange: what the ingress published, in order.
async fn tap(app: &TestApp) -> (lapin::Connection, lapin::Channel, lapin::types::ShortString) {
    let conn = lapin::Connection::connect(&amqp_url(), Default::default()).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    let options = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
    let queue = channel.queue_declare("".into(), options, FieldTable::default()).await.unwrap().name().clone();
    channel
        .queue_bind(
            queue.clone(),
            app.names.events.as_str().into(),
            REQUEST_BINDING.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    (conn, channel, queue)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_postgresql_refuses_are_400_naming_the_field_and_nothing_is_published() {
    let app = spawn_app().await;
    let (conn, channel, tap) = tap(&app).await;
    let base: serde_json::Value = serde_json::from_slice(&fixture(APPROVED)).unwrap();

    // A NUL (JSON "\u0000") that would travel in the event: PostgreSQL text and jsonb refuse it.
    for (pointer, value, field) in [
        ("/issue/fields/customfield_10050/value", "Conf\u{0}luence", "application"),
        ("/issue/fields/reporter/displayName", "Dana\u{0} Requester", "requester.display_name"),
        ("/issue/fields/customfield_10027/0/name", "Manager\u{0}approval", "raw_fields.customfield_10027[0].name"),
    ] {
        let mut v = base.clone();
        *v.pointer_mut(pointer).unwrap_or_else(|| panic!("{pointer} in the fixture")) = value.into();
        let body = serde_json::to_vec(&v).unwrap();
        assert!(body.windows(6).any(|w| w == br"\u0000"), "the body carries the escape");
        let resp = app.post_signed(&body, None).await;
        assert_eq!(resp.status(), 400, "{pointer}");
        let answer: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(
            (answer["error"].as_str(), answer["field"].as_str()),
            (Some("invalid_value"), Some(field)),
            "{answer}"
        );
    }
    // A NUL where nothing is carried into the event (the description) does no harm.
    let mut v = base.clone();
    v["issue"]["fields"]["description"] = "a\u{0}b".into();
    v["changelog"]["id"] = "nul-in-description".into();
    let harmless = app.post_signed(&serde_json::to_vec(&v).unwrap(), None).await;
    assert_eq!(harmless.status(), 202);
    let harmless = event_id(&harmless.json().await.unwrap());

    // Lone UTF-16 surrogate escapes are no Unicode scalar values: invalid JSON text, 400.
    let text = String::from_utf8(fixture(APPROVED)).unwrap();
    for escape in [r"\ud800", r"\udc00", r"\ud800\u0041"] {
        let body = text.replacen("\"Dana Requester\"", &format!("\"Dana{escape}\""), 1);
        assert_ne!(body, text);
        let resp = app.post_signed(body.as_bytes(), None).await;
        assert_eq!(resp.status(), 400, "{escape}");
        assert_eq!(resp.json::<serde_json::Value>().await.unwrap()["error"], "invalid_json", "{escape}");
    }

    // Nothing but the harmless event was published.
    let get = || channel.basic_get(tap.clone(), BasicGetOptions { no_ack: true });
    let only = get().await.unwrap().expect("the harmless event was published");
    assert_eq!(accessgov::event::AccessEvent::decode(&only.delivery.data).unwrap().event_id, harmless);
    assert!(get().await.unwrap().is_none(), "nothing else was published");
    let text = metrics(&app).await;
    assert!(text.contains("accessgov_ingress_requests_total{outcome=\"invalid_value\"}"), "{text}");
    let _ = conn.close(200, "test done".into()).await;
}

/// Opens a connection that sends complete headers announcing `content_length`
/// bytes, then only the first bytes of the body, and stalls.
async fn stalled_sender(app: &TestApp, content_length: usize) -> TcpStream {
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /webhooks/jsm HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {content_length}\r\n\r\n{{\"webhookEvent\": ",
        app.addr
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_senders_hold_no_slot_so_a_signed_webhook_is_answered_within_a_second() {
    let app = spawn_app_with(|c| c.ingress.max_concurrent_requests = 4).await;
    // Warm up the publish path, so that only the slow senders can delay what follows.
    assert_eq!(app.post_signed(&approval_with_changelog("slow-0"), None).await.status(), 202);

    // 64 unauthenticated senders, 16 times the slots, each stalled inside its body.
    let mut stalled = Vec::new();
    for _ in 0..64 {
        stalled.push(stalled_sender(&app, 100_000).await);
    }
    // Let the server read their headers and start on their bodies (more time only makes
    // the test stricter: each of them is then waiting on its body).
    tokio::time::sleep(Duration::from_millis(500)).await;

    let start = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(1), app.post_signed(&approval_with_changelog("slow-1"), None))
        .await
        .expect("a signed webhook is answered within 1 s while 64 senders stall");
    let elapsed = start.elapsed();
    assert_eq!(resp.status(), 202);
    assert!(elapsed < Duration::from_secs(1), "answered after {elapsed:?}");
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_not_received_within_body_read_timeout_is_answered_408() {
    let app = spawn_app_with(|c| c.ingress.body_read_timeout = Duration::from_millis(300)).await;
    let mut stream = stalled_sender(&app, 1000).await;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        // Read until the JSON body of the answer is complete (or the server closes).
        loop {
            let n = stream.read(&mut buf).await.unwrap_or(0);
            answer.extend_from_slice(&buf[..n]);
            if n == 0 || answer.ends_with(b"}") {
                break;
            }
        }
    })
    .await
    .expect("an answer within the timeout");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"error\":\"body_timeout\""), "{text}");
    let metrics = metrics(&app).await;
    assert!(metrics.contains("accessgov_ingress_requests_total{outcome=\"body_timeout\"}"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_that_never_finishes_its_headers_is_disconnected_after_header_read_timeout() {
    let app = spawn_app_with(|c| c.ingress.header_read_timeout = Duration::from_millis(300)).await;
    assert_cut_off_mid_headers(app.addr, b"POST /webhooks/jsm HTTP/1.1\r\nHost: accessgov\r\nContent-Le").await;
    let metrics = metrics(&app).await;
    assert!(metrics.contains("accessgov_ingress_header_timeouts_total"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ops_listener_also_disconnects_a_sender_that_never_finishes_its_headers() {
    let app = spawn_app_with(|c| c.ingress.header_read_timeout = Duration::from_millis(300)).await;
    assert_cut_off_mid_headers(app.ops_addr, b"GET /admin/dead-letters HTTP/1.1\r\nHost: accessgov\r\nAuthoriza").await;
    // ...and still answers a normal request.
    let health = app.http.get(format!("http://{}/healthz", app.ops_addr)).send().await.unwrap();
    assert!(health.status().is_success());
    let metrics = metrics(&app).await;
    assert!(metrics.contains("accessgov_ops_header_timeouts_total"), "{metrics}");
}

/// Sends the start of a request's headers and never the rest: the listener must
/// close the connection (EOF or reset) without answering, well within 10 s.
async fn assert_cut_off_mid_headers(addr: std::net::SocketAddr, partial: &[u8]) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(partial).await.unwrap();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("the listener closes the connection instead of waiting for the headers forever");
    assert!(read.map_or(true, |n| n == 0), "{:?}", String::from_utf8_lossy(&buf));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_of_another_project_is_ignored_as_other_project_and_counted() {
    let app = spawn_app().await;
    assert_eq!(app.config.jsm.projects, vec!["ACC".to_owned()]);
    // The same approval, in a project with the same request type names that accessgov does not serve.
    let mut v: serde_json::Value = serde_json::from_slice(&fixture(APPROVED)).unwrap();
    v["issue"]["fields"]["project"]["key"] = "HR".into();
    let resp = app.post_signed(&serde_json::to_vec(&v).unwrap(), None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<serde_json::Value>().await.unwrap(), serde_json::json!({"ignored": "other_project"}));
    let text = metrics(&app).await;
    assert!(text.contains("accessgov_ingress_ignored_total{reason=\"other_project\"} 1"), "{text}");
    assert_eq!(app.post_signed(&fixture(APPROVED), None).await.status(), 202, "the ACC ticket is accepted");
}
