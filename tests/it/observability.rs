//! Observability end to end: one trace from webhook to provider across two
//! processes (exported over OTLP/HTTP to a receiver in this test), JSON logs
//! carrying that trace's ids, and `/metrics` parsed as Prometheus parses it.

use crate::helpers::{self, WEBHOOK_SECRET, eventually, fixture, spawn_app_full, unique};
use accessgov::config::Config;
use accessgov::ingress::auth::sign;
use axum::body::Bytes;
use axum::routing::post;
use prost::Message;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const GROUP: &str = "obs-devs";
const GROUP_ID: &str = "0d9a2b1c-0000-4000-8000-0000000000b5";
const APPROVER: &str = "5f8e1b2c3d4a5b6c7d8e9f01";
const REQUESTER: &str = "712020:obs-requester";
const WAIT: Duration = Duration::from_secs(30);

/// A Jira Cloud group API (the `jira` connector's grant: find the group, check
/// membership, add), as documented.
async fn jira_mock() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/rest/api/3/group/bulk"))
        .and(query_param("groupName", GROUP))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"isLast": true, "values": [{"groupId": GROUP_ID, "name": GROUP}]})),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/rest/api/3/user/groups"))
        .and(query_param("accountId", REQUESTER))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/rest/api/3/group/user"))
        .and(query_param("groupId", GROUP_ID))
        .and(header("content-type", "application/json"))
        .and(body_json(json!({"accountId": REQUESTER})))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"groupId": GROUP_ID, "name": GROUP})))
        .expect(1)
        .mount(&server)
        .await;
    server
}

/// `app` live on the mock, with one rule for Write.
fn live_jira(c: &mut Config, app: &str, base: &str, dir: &tempfile::TempDir) {
    std::fs::write(dir.path().join("email"), "bot@example.com").unwrap();
    std::fs::write(dir.path().join("token"), "mock-token").unwrap();
    let cfg: accessgov::config::ApplicationConfig = toml::from_str(&format!(
        "kind = \"jira\"\nbase_url = \"{base}\"\nemail_file = \"{}\"\napi_token_file = \"{}\"\n",
        dir.path().join("email").display(),
        dir.path().join("token").display()
    ))
    .unwrap();
    c.applications.insert(app.into(), cfg);
    let mut rule = c.rules[0].clone();
    rule.application = app.into();
    rule.groups = vec![GROUP.into()];
    rule.max_duration = None;
    c.rules.push(rule);
}

/// The approved-Write fixture for `app`, ticket `key`.
fn approved(app: &str, key: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&fixture("webhook-approved-confluence-write.json")).unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    v["timestamp"] = json!(now);
    v["issue"]["key"] = json!(key);
    v["issue"]["id"] = json!(format!("{}", 70_000 + key.len()));
    v["issue"]["fields"]["customfield_10050"]["value"] = json!(app);
    v["issue"]["fields"]["reporter"]["accountId"] = json!(REQUESTER);
    v["issue"]["fields"]["customfield_10027"][0]["completedDate"]["epochMillis"] = json!(now - 60_000);
    serde_json::to_vec(&v).unwrap()
}

// --- /metrics -----------------------------------------------------------------------------------

/// Samples of one metric whose labels include all of `labels`.
fn samples<'a>(
    scrape: &'a prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Vec<&'a prometheus_parse::Sample> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect()
}

fn counter(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(scrape, name, labels)
        .iter()
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
            ref other => panic!("{name} is not a counter or gauge: {other:?}"),
        })
        .sum()
}

/// (count, buckets) of a histogram series.
fn histogram(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> (f64, usize) {
    let found = samples(scrape, name, labels);
    assert_eq!(found.len(), 1, "one {name} series with {labels:?}");
    match &found[0].value {
        prometheus_parse::Value::Histogram(buckets) => {
            // Cumulative buckets: the +Inf bucket holds the count.
            let count = buckets.iter().map(|b| b.count).fold(0.0, f64::max);
            (count, buckets.len())
        }
        other => panic!("{name} is not a histogram: {other:?}"),
    }
}

async fn scrape(app: &helpers::TestApp) -> prometheus_parse::Scrape {
    let resp = app.http.get(format!("http://{}/metrics", app.ops_addr)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let text = resp.text().await.unwrap();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("valid Prometheus text format")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_count_the_webhook_the_event_and_each_provider_request() {
    // A name of its own: the recorder is shared by every app of this test process.
    let app_name = unique("Obs");
    let server = jira_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let tweak = |c: &mut Config| live_jira(c, &app_name, &server.uri(), &dir);
    let connectors = {
        let mut c = helpers::test_config("unused", "unused");
        tweak(&mut c);
        accessgov::connectors::build(&c).expect("connectors build")
    };
    let app = spawn_app_full(tweak, connectors).await;

    let resp = app.post_signed(&approved(&app_name, "OBS-1"), None).await;
    assert_eq!(resp.status(), 202);
    let id: uuid::Uuid = resp.json::<Value>().await.unwrap()["event_id"].as_str().unwrap().parse().unwrap();
    eventually("the grant recorded", WAIT, || async {
        let actions: Vec<String> = app.audit_actions(id).await.into_iter().map(|r| r.0).collect();
        actions.iter().any(|a| a == "granted").then_some(())
    })
    .await;
    let app_label = app_name.as_str();
    let s = eventually("the event counted", WAIT, || async {
        let s = scrape(&app).await;
        (counter(&s, "accessgov_worker_events_total", &[("application", app_label)]) > 0.0).then_some(s)
    })
    .await;

    assert!(counter(&s, "accessgov_ingress_requests_total", &[("outcome", "accepted")]) >= 1.0);
    assert_eq!(
        counter(
            &s,
            "accessgov_worker_events_total",
            &[("action", "grant"), ("application", app_label), ("outcome", "applied")]
        ),
        1.0
    );
    // Find the group, read the user's groups, add: three requests, all 2xx.
    let grant = [("application", app_label), ("operation", "grant")];
    assert_eq!(counter(&s, "accessgov_provider_requests_total", &[grant[0], grant[1], ("status", "2xx")]), 3.0);
    assert_eq!(counter(&s, "accessgov_provider_requests_total", &grant), 3.0, "no other status class");
    let (count, buckets) = histogram(&s, "accessgov_provider_request_duration_seconds", &grant);
    assert_eq!(count, 3.0);
    assert!(buckets > 5, "the provider latency buckets, not the default summary: {buckets}");
    let (e2e, _) = histogram(&s, "accessgov_event_end_to_end_seconds", &[("action", "grant")]);
    assert!(e2e >= 1.0);
    for gauge in [
        "accessgov_dead_letters_open",
        "accessgov_dead_letter_oldest_age_seconds",
        "accessgov_intents_pending",
        "accessgov_worker_in_flight",
        "accessgov_audit_verify_ok",
        "accessgov_audit_verify_last_run_timestamp_seconds",
    ] {
        let found = samples(&s, gauge, &[]);
        assert!(!found.is_empty(), "{gauge} is exported");
        assert!(matches!(found[0].value, prometheus_parse::Value::Gauge(_)), "{gauge} is a gauge");
    }
    for queue in ["requests", "dead"] {
        assert_eq!(samples(&s, "accessgov_queue_messages", &[("queue", queue)]).len(), 1, "{queue} depth");
    }

    // The contract the dashboard and the alerts are written against names every
    // metric exposed, with its type and labels.
    let contract = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/observability/metrics.txt"))
        .expect("deploy/observability/metrics.txt");
    let listed: HashMap<&str, (&str, Vec<&str>)> = contract
        .lines()
        .filter(|l| l.starts_with("accessgov_"))
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let labels = if cols[2] == "-" { vec![] } else { cols[2].split(',').collect() };
            (cols[0], (cols[1], labels))
        })
        .collect();
    for sample in &s.samples {
        let (base, kind) = match &sample.value {
            prometheus_parse::Value::Counter(_) => (sample.metric.as_str(), "counter"),
            prometheus_parse::Value::Gauge(_) => (sample.metric.as_str(), "gauge"),
            prometheus_parse::Value::Histogram(_) => (sample.metric.as_str(), "histogram"),
            // A histogram's _sum and _count series.
            prometheus_parse::Value::Untyped(_) => {
                let base = sample.metric.strip_suffix("_sum").or_else(|| sample.metric.strip_suffix("_count"));
                (base.unwrap_or_else(|| panic!("{} has no type", sample.metric)), "histogram")
            }
            other => panic!("{}: unexpected {other:?}", sample.metric),
        };
        let (listed_kind, labels) =
            listed.get(base).unwrap_or_else(|| panic!("{base} is exposed but not in metrics.txt"));
        assert_eq!(*listed_kind, kind, "{base}");
        let mut have: Vec<&str> = sample.labels.keys().map(String::as_str).filter(|k| *k != "le").collect();
        have.sort_unstable();
        let mut want = labels.clone();
        want.sort_unstable();
        assert_eq!(have, want, "{base}'s labels");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_gauges_read_this_database_and_broker() {
    let app = helpers::spawn_app().await;
    let broker = accessgov::broker::Broker::new(&app.config.broker.url, app.names.clone());
    // Some audit rows: a dry-run request, processed.
    let resp = app.post_signed(&fixture("webhook-approved-confluence-write.json"), None).await;
    assert_eq!(resp.status(), 202);
    let id: uuid::Uuid = resp.json::<Value>().await.unwrap()["event_id"].as_str().unwrap().parse().unwrap();
    eventually("the request processed", WAIT, || async { (app.audit_actions(id).await.len() >= 3).then_some(()) })
        .await;
    // The worker verified the chain at start (an empty chain is intact).
    let b = eventually("the start-up verification", WAIT, || async {
        let b = accessgov::ops::read_backlog(&app.pool, &broker).await.unwrap();
        b.audit_verify.is_some().then_some(b)
    })
    .await;
    assert_eq!(b.dead_letters_open, 0);
    assert_eq!(b.oldest_dead_letter_age, Duration::ZERO);
    assert_eq!(b.intents_pending, 0);
    assert_eq!(b.requests_ready, Some(0));
    assert!(b.audit_verify.unwrap().0, "intact");

    // Two open dead letters, the older ten minutes old, and one pending intent.
    for (key, age) in [("k1", "10 minutes"), ("k2", "1 minute")] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO dead_letters (dead_key, message, error_class, last_error, attempts, attempt_history, died_at) \
             VALUES ('{key}', '{{}}', 'transient', 'x', 1, '[]', now() - interval '{age}')"
        )))
        .execute(&app.pool)
        .await
        .unwrap();
    }
    sqlx::query(
        "INSERT INTO intents (event_id, ticket, application, subject, identity, identity_key, target, access_level, \
                              op, state, source) \
         VALUES (gen_random_uuid(), 'ACC-1', 'Confluence', 'u', '{}', 'u', 'g', 'Write', 'grant', 'pending', 'webhook')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let b = accessgov::ops::read_backlog(&app.pool, &broker).await.unwrap();
    assert_eq!(b.dead_letters_open, 2);
    let age = b.oldest_dead_letter_age.as_secs();
    assert!((595..700).contains(&age), "the oldest open dead letter's age: {age}s");
    assert_eq!(b.intents_pending, 1);

    // A row changed behind our back: the worker's next verification finds it,
    // and the gauge says so.
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("ALTER TABLE audit_log DISABLE TRIGGER USER").execute(&mut *tx).await.unwrap();
    let changed = sqlx::query("UPDATE audit_log SET outcome = 'tampered' WHERE seq = (SELECT max(seq) FROM audit_log)")
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(changed.rows_affected(), 1);
    sqlx::query("ALTER TABLE audit_log ENABLE TRIGGER USER").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    let ctx = accessgov::worker::WorkerContext::new(
        app.config.clone(),
        app.pool.clone(),
        broker.clone(),
        accessgov::connectors::Connectors::new(),
    );
    let run = accessgov::worker::verify_once(&ctx).await.unwrap().expect("no other replica holds the lock");
    assert!(!run.ok);
    assert_eq!(run.actor, "accessgov-worker");
    let b = accessgov::ops::read_backlog(&app.pool, &broker).await.unwrap();
    assert_eq!(b.audit_verify.map(|v| v.0), Some(false));
}

// --- one trace from webhook to provider -------------------------------------------------------

/// One span as the receiver got it.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attributes: HashMap<String, String>,
}

/// An OTLP/HTTP (protobuf) trace receiver on loopback.
async fn otlp_receiver() -> (String, Arc<Mutex<Vec<Got>>>) {
    use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    let got: Arc<Mutex<Vec<Got>>> = Arc::default();
    let sink = got.clone();
    let text = |v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match v
        .as_ref()
        .and_then(|v| v.value.as_ref())
    {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    };
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |headers: axum::http::HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                assert_eq!(headers["content-type"], "application/x-protobuf", "OTLP/HTTP protobuf");
                let req = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export");
                let mut out = sink.lock().unwrap();
                for rs in req.resource_spans {
                    let service = rs
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|a| a.key == "service.name")
                        .map(|a| text(&a.value))
                        .unwrap_or_default();
                    for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                        out.push(Got {
                            service: service.clone(),
                            name: span.name,
                            trace_id: hex::encode(&span.trace_id),
                            span_id: hex::encode(&span.span_id),
                            parent: hex::encode(&span.parent_span_id),
                            attributes: span.attributes.iter().map(|a| (a.key.clone(), text(&a.value))).collect(),
                        });
                    }
                }
                (
                    [("content-type", "application/x-protobuf")],
                    ExportTraceServiceResponse { partial_success: None }.encode_to_vec(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    (format!("http://{addr}"), got)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process, killed when dropped; its stderr goes to a file.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_webhook_is_one_trace_from_the_callers_span_through_ingress_and_worker_to_the_provider() {
    let (otlp, spans) = otlp_receiver().await;
    let server = jira_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let db = crate::helpers::db::TestDb::new().await;
    let prefix = unique("agtrace");
    let app_name = "Traced";

    // One config file for both processes (listen addresses come from the environment).
    let text = helpers::EXAMPLE_CONFIG
        .replace("amqp://guest:guest@127.0.0.1:5672/%2f", &helpers::amqp_url())
        .replace("prefix = \"accessgov\"", &format!("prefix = \"{prefix}\""))
        .replace("max_event_age = \"7d\"", "max_event_age = \"3650d\"");
    std::fs::write(dir.path().join("email"), "bot@example.com").unwrap();
    std::fs::write(dir.path().join("token"), "mock-token").unwrap();
    let extra = format!(
        "\n[applications.\"{app_name}\"]\nkind = \"jira\"\nbase_url = \"{}\"\nowner = \"it@example.com\"\n\
         email_file = \"{}\"\napi_token_file = \"{}\"\n\n[[rules]]\napplication = \"{app_name}\"\n\
         access_level = \"Write\"\ngroups = [\"{GROUP}\"]\napprovers = [\"{APPROVER}\"]\n",
        server.uri(),
        dir.path().join("email").display(),
        dir.path().join("token").display()
    );
    let config = dir.path().join("accessgov.toml");
    std::fs::write(&config, text + &extra).unwrap();

    let ingress_port = free_port();
    let spawn = |role: &str, ops_port: u16| {
        let log = std::fs::File::create(dir.path().join(format!("{role}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_accessgov"))
            .args([role, "--config", config.to_str().unwrap()])
            .env("ACCESSGOV_DATABASE_URL", helpers::with_user(&db.url, accessgov::db::RUNTIME_ROLE))
            .env("ACCESSGOV_INGRESS_LISTEN", format!("127.0.0.1:{ingress_port}"))
            .env("ACCESSGOV_OPS_LISTEN", format!("127.0.0.1:{ops_port}"))
            .env("ACCESSGOV_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("JSM_WEBHOOK_SECRET", WEBHOOK_SECRET)
            .env("JSM_AUTOMATION_TOKEN", "tok")
            .env("ACCESSGOV_ADMIN_TOKEN", "an-admin-token-of-some-length")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp)
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env_remove("OTEL_SERVICE_NAME")
            .env_remove("ACCESSGOV_BROKER_PREFIX")
            .env_remove("ACCESSGOV_CONFIG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("accessgov starts");
        Proc(child)
    };
    let worker = spawn("worker", free_port());
    let ingress = spawn("ingress", free_port());

    // A caller that traces: its span is the webhook's parent.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let body = approved(app_name, "TRC-1");
    let http = reqwest::Client::new();
    let logs = |role: &str| std::fs::read_to_string(dir.path().join(format!("{role}.log"))).unwrap_or_default();
    let accepted = tokio::time::timeout(
        WAIT,
        eventually("the ingress to accept the webhook", WAIT, || async {
            let resp = http
                .post(format!("http://127.0.0.1:{ingress_port}/webhooks/jsm"))
                .header("content-type", "application/json")
                .header("X-Hub-Signature", sign(WEBHOOK_SECRET, &body))
                .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
                .body(body.clone())
                .send()
                .await
                .ok()?;
            (resp.status() == 202).then_some(resp)
        }),
    )
    .await;
    let Ok(resp) = accepted else { panic!("ingress log:\n{}\nworker log:\n{}", logs("ingress"), logs("worker")) };
    let event_id = resp.json::<Value>().await.unwrap()["event_id"].as_str().unwrap().to_owned();

    // Server and client spans are named as OpenTelemetry's HTTP conventions say.
    let wanted = ["POST /webhooks/jsm", "publish", "consume", "decide", "intent", "apply", "POST jira", "audit"];
    let complete = tokio::time::timeout(WAIT, async {
        loop {
            let all = spans.lock().unwrap().clone();
            let trace: Vec<Got> = all.into_iter().filter(|s| s.trace_id == caller_trace).collect();
            if wanted.iter().all(|w| trace.iter().any(|s| s.name == *w)) {
                return trace;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let Ok(trace) = complete else {
        let got: Vec<(String, String, String)> =
            spans.lock().unwrap().iter().map(|s| (s.service.clone(), s.name.clone(), s.trace_id.clone())).collect();
        panic!("spans received: {got:#?}\ningress log:\n{}\nworker log:\n{}", logs("ingress"), logs("worker"));
    };
    let one = |name: &str| -> Got {
        let found: Vec<&Got> = trace.iter().filter(|s| s.name == name).collect();
        assert!(!found.is_empty(), "a {name} span");
        found[0].clone()
    };
    let (webhook, publish, consume) = (one("POST /webhooks/jsm"), one("publish"), one("consume"));
    let (apply, call) = (one("apply"), one("POST jira"));
    assert_eq!(webhook.service, "accessgov-ingress");
    assert_eq!(webhook.parent, caller_span, "the caller's span is the webhook's parent");
    assert_eq!(publish.service, "accessgov-ingress");
    assert_eq!(publish.parent, webhook.span_id);
    assert_eq!(consume.service, "accessgov-worker");
    assert_eq!(consume.parent, publish.span_id, "the trace crossed RabbitMQ");
    for step in ["decide", "intent", "apply", "audit"] {
        assert!(trace.iter().any(|s| s.name == step && s.parent == consume.span_id), "{step} is a child of consume");
    }
    assert_eq!(apply.service, "accessgov-worker");
    assert_eq!(call.parent, apply.span_id, "the provider call is a child of apply");
    assert_eq!(call.attributes.get("http.response.status_code").map(String::as_str), Some("201"));
    assert_eq!(call.attributes.get("application").map(String::as_str), Some(app_name));
    assert_eq!(consume.attributes.get("event_id"), Some(&event_id));
    assert_eq!(consume.attributes.get("outcome").map(String::as_str), Some("applied"));
    assert_eq!(consume.attributes.get("ticket").map(String::as_str), Some("TRC-1"));

    // The provider got the trace too: its parent is the request's span.
    let add = server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.method.as_str() == "POST")
        .expect("the add request");
    let traceparent = add.headers["traceparent"].to_str().unwrap().to_owned();
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts[1], caller_trace);
    assert_eq!(call.span_id, parts[2], "{traceparent}");
    let reads = trace.iter().filter(|s| s.name == "GET jira" && s.parent == apply.span_id).count();
    assert_eq!(reads, 2, "the group and membership reads are children of apply too");

    // Never a secret, a token or an email in a span.
    for s in &trace {
        for (k, v) in &s.attributes {
            for secret in ["mock-token", "bot@example.com", WEBHOOK_SECRET, "@example.com"] {
                assert!(!v.contains(secret), "span {} attribute {k} = {v:?}", s.name);
            }
        }
    }

    // The worker's JSON log lines of this request carry its trace id.
    drop(ingress);
    drop(worker);
    let log = std::fs::read_to_string(dir.path().join("worker.log")).unwrap();
    let lines: Vec<Value> = log.lines().map(|l| serde_json::from_str(l).expect("a JSON log line")).collect();
    let applied = lines
        .iter()
        .find(|l| l["message"] == "event applied")
        .unwrap_or_else(|| panic!("an 'event applied' line in:\n{log}"));
    assert_eq!(applied["trace_id"], caller_trace, "{applied}");
    assert_eq!(applied["span_id"].as_str().map(str::len), Some(16), "{applied}");
    assert_eq!(applied["level"], "INFO");
}
