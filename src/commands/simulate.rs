//! `accessgov simulate`: the ingress path and the decision, without the network.

use crate::cli::SimulateArgs;
use crate::config::Config;
use crate::ingress::normalize::{self, Meta, Normalized};
use crate::rules;
use anyhow::Context;
use serde_json::json;
use std::process::ExitCode;

pub fn run(config: &Config, args: &SimulateArgs) -> anyhow::Result<ExitCode> {
    let body = std::fs::read(&args.event).with_context(|| format!("cannot read --event {}", args.event.display()))?;
    let mut headers = Vec::new();
    for h in &args.headers {
        let (name, value) =
            h.split_once(':').with_context(|| format!("--header {h:?} must look like 'Name: value'"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());

    let mut authenticity = None;
    if !headers.is_empty() {
        let verifier = crate::app::verifier_from_env(config)?;
        match verifier.verify(header("x-hub-signature"), header("authorization"), &body) {
            Ok(method) => authenticity = Some(method.into()),
            Err(failure) => {
                print_json(
                    &json!({"outcome": "unauthorized", "reason": failure.as_str(), "ignore_reason": null, "event": null, "decision": null}),
                )?;
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    let value: serde_json::Value = serde_json::from_slice(&body).context("the event file is not valid JSON")?;
    let meta = Meta { delivery_id: header("x-atlassian-webhook-identifier").map(str::to_owned), authenticity };
    let out = match normalize::normalize(&value, &meta, &config.jsm, chrono::Utc::now()) {
        Normalized::Ignored(reason) => {
            json!({"outcome": "ignored", "ignore_reason": reason, "event": null, "decision": null})
        }
        // The ingress answers 400 `invalid_value` for a value PostgreSQL cannot store.
        Normalized::Accepted(event) if normalize::unstorable_value(&event).is_some() => {
            let field = normalize::unstorable_value(&event).unwrap_or_default();
            json!({"outcome": "invalid_value", "field": field, "ignore_reason": null, "event": null, "decision": null})
        }
        Normalized::Accepted(event) => {
            // Offline: no group lookups, no ledger; verify_approval as configured
            // (credentials are not resolved here, so an unset value counts as off).
            let facts = rules::Facts {
                verify_approval: config.jsm.verify_approval.unwrap_or(false),
                ..rules::Facts::default()
            };
            let decision = rules::decide(&event, config, &facts);
            // A new ticket (or an approval stage) is routed, not decided: show the routing.
            let routing = event.app_status.is_routing().then(|| crate::routing::summary(&event, config));
            json!({"outcome": "accepted", "ignore_reason": null, "event": event, "decision": decision, "routing": routing})
        }
    };
    print_json(&out)?;
    Ok(ExitCode::SUCCESS)
}

fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}
