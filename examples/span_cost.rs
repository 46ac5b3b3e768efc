//! The cost of one worker event's spans (consume with three children and one
//! `record`) and, with `LOG=1`, of its info log line, under each subscriber.
//! Count instructions, which callgrind repeats exactly whatever the load:
//!
//! ```text
//! cargo build --release --example span_cost
//! for n in 2000 4000; do valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!   target/release/examples/span_cost full $n 2>&1 | grep Collected; done
//! ```
//!
//! (instructions at 4000 - at 2000) / 2000 = the cost per event. Modes: `none`
//! (no subscriber), `full` (accessgov's JSON subscriber, as in a container),
//! `pretty`, `fmtjson` (tracing-subscriber's own JSON formatter, for comparison).
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
fn work(n: u32) {
    for i in 0..n {
        let id = uuid::Uuid::new_v4();
        let span = tracing::info_span!(
            "consume",
            otel.kind = "consumer",
            messaging.system = "rabbitmq",
            event_id = %id,
            ticket = "ACC-1",
            application = %"Confluence",
            action = "grant",
            attempt = i,
            outcome = tracing::field::Empty
        );
        for name in 0..3 {
            let c = if name == 0 {
                tracing::info_span!(parent: &span, "decide")
            } else if name == 1 {
                tracing::info_span!(parent: &span, "intent")
            } else {
                tracing::info_span!(parent: &span, "audit")
            };
            let _e = c.enter();
        }
        if std::env::var_os("LOG").is_some() {
            tracing::info!(parent: &span, event_id = %id, ticket = "ACC-1", ops = 1, "event applied");
        }
        span.record("outcome", "applied");
    }
}
fn main() {
    let mode = std::env::args().nth(1).unwrap();
    let n: u32 = std::env::args().nth(2).map_or(20000, |v| v.parse().unwrap());
    let _t;
    match mode.as_str() {
        "none" => {}
        "full" => {
            _t = accessgov::telemetry::init_with_writer(
                accessgov::telemetry::LogFormat::Json,
                "x",
                BoxMakeWriter::new(std::io::sink),
            )
        }
        "pretty" => {
            _t = accessgov::telemetry::init_with_writer(
                accessgov::telemetry::LogFormat::Pretty,
                "x",
                BoxMakeWriter::new(std::io::sink),
            )
        }
        "fmtjson" => {
            let s = tracing_subscriber::registry()
                .with(tracing_subscriber::EnvFilter::new("info"))
                .with(tracing_subscriber::fmt::layer().json().with_writer(std::io::sink));
            tracing::subscriber::set_global_default(s).unwrap();
        }
        other => panic!("mode: none | full | pretty | fmtjson, not {other:?}"),
    }
    work(n);
}
