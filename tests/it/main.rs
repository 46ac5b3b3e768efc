//! The one integration-test binary (links once). Runs against the real
//! RabbitMQ and PostgreSQL: `ACCESSGOV_TEST_AMQP_URL` and
//! `ACCESSGOV_TEST_DATABASE_URL` (defaults: guest@127.0.0.1:5672 and
//! postgres@127.0.0.1:5432). Each test gets its own database and broker prefix.

mod audit;
mod cli;
mod console;
mod db;
mod e2e;
mod faults;
mod hardening;
mod helpers;
mod ingress;
mod jsm_flow;
mod jsm_setup;
mod observability;
mod offboard;
mod operator;
mod pipeline;
mod reconcile;
mod roles;
mod routing;
mod worker;
