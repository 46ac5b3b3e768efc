//! # accessgov
//!
//! Access governance for Jira Service Management. Data flows one way:
//!
//! ```text
//! JSM webhook / Automation --> ingress --> RabbitMQ --> worker --> provider API
//!                              (verify,     (events,     (dedupe, decide,   + audit_log
//!                               normalize,   retry,       apply, audit,     + access_grants
//!                               confirm)     dead)        ack)              (PostgreSQL)
//! ```
//!
//! - [`config`]: the TOML file, env overrides, validation, secret references.
//! - [`ingress`]: `POST /webhooks/jsm`; [`ingress::auth`] and the pure [`ingress::normalize`].
//! - [`event`]: `AccessEvent` v1, the message between ingress and workers.
//! - [`broker`]: RabbitMQ topology and confirmed publishing.
//! - [`worker`]: the consume loop and [`worker::process`], one delivery end to end.
//! - [`rules`]: the pure decision (rule match, approver policy).
//! - [`pipeline`]: the pure plan of an event (worker and replay preview share it).
//! - [`intents`]: committed provider calls, claimed under a lease and run with no transaction open.
//! - [`progress`]: processed events (dedupe) and ticket progress; holds live in [`grants`].
//! - [`audit`]: the append-only, hash-chained trail and its verification.
//! - [`db`]: pool and embedded migrations.
//! - [`ops`]: `/metrics`, health and the admin API ([`ops::admin`]) on the operator listener.
//! - [`dead_letters`]: the operator's inbox (list, replay, discard); [`operator`]: who acts.
//! - [`ops::console`]: the operator web console on the ops listener; [`connection_tests`]: recorded "Test connection" results.
//! - [`app`]: the composition root; [`commands`]: one function per CLI command.
//!
//! Errors: `thiserror` enums at module boundaries (`ConfigError`, `BrokerError`,
//! `PublishError`, `DbError`); `anyhow` only in [`app`], [`commands`] and `main`.

pub mod app;
pub mod audit;
pub mod broker;
pub mod cli;
pub mod commands;
pub mod config;
pub mod connection_tests;
pub mod connectors;
pub mod db;
pub mod dead_letters;
pub mod event;
pub mod grants;
pub mod ingress;
pub mod intents;
pub mod jsm;
pub mod metrics;
pub mod operator;
pub mod ops;
pub mod pipeline;
pub mod progress;
pub mod reconcile;
pub mod routing;
pub mod rules;
pub mod shutdown;
pub mod telemetry;
pub mod worker;
