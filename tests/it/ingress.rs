//! The public listener's answers, against the real broker.

use crate::helpers::{BEARER_TOKEN, fixture, spawn_app, spawn_app_with};

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
