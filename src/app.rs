//! The composition root: builds the pool, the broker handle and the listeners,
//! and runs the chosen roles under one cancellation token.

use crate::broker::{Broker, Names};
use crate::config::Config;
use crate::ingress::{self, IngressState, auth::Verifier};
use crate::ops::{self, OpsState};
use crate::worker::{self, WorkerContext};
use crate::{db, metrics};
use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Which parts this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Ingress,
    Worker,
    All,
}

impl Role {
    fn ingress(self) -> bool {
        matches!(self, Self::Ingress | Self::All)
    }
    fn worker(self) -> bool {
        matches!(self, Self::Worker | Self::All)
    }
}

/// A running process.
pub struct App {
    pub ingress_addr: Option<SocketAddr>,
    pub ops_addr: SocketAddr,
    pub pool: PgPool,
    pub broker: Broker,
    shutdown: CancellationToken,
    tasks: JoinSet<(&'static str, anyhow::Result<()>)>,
}

/// Builds the ingress verifier from the configured secret references.
pub fn verifier_from_env(config: &Config) -> anyhow::Result<Verifier> {
    let hmac_secret = config.ingress.hmac_secret().map(|r| r.resolve()).transpose().context("ingress.hmac_secret")?;
    let bearer_token =
        config.ingress.bearer_token().map(|r| r.resolve()).transpose().context("ingress.bearer_token")?;
    anyhow::ensure!(
        hmac_secret.is_some() || bearer_token.is_some(),
        "ingress has no authentication method: set [ingress] hmac_secret_env and/or bearer_token_env"
    );
    Ok(Verifier { hmac_secret, bearer_token })
}

/// The admin API token (`[ops] admin_token_env` / `admin_token_file`). `None`
/// when neither is set: the admin API is then off. Set but unreadable is an
/// error: the ops listener does not start with `/admin` enabled and no token.
pub fn admin_token_from_config(config: &Config) -> anyhow::Result<Option<SecretString>> {
    let Some(reference) = config.ops_admin_token() else { return Ok(None) };
    let token = reference.resolve().with_context(|| {
        format!(
            "the admin API is enabled ([ops] names its token: {}) but the token cannot be read; \
             provide it, or remove admin_token_env/admin_token_file to turn /admin off",
            reference.describe()
        )
    })?;
    if token.expose_secret().len() < 16 {
        tracing::warn!("the admin API token is shorter than 16 characters; use a long random value");
    }
    Ok(Some(token))
}

impl App {
    /// Starts the roles. Listeners bind the configured addresses (port 0 works).
    pub async fn start(
        config: Arc<Config>,
        role: Role,
        verifier: Option<Verifier>,
        connectors: crate::connectors::Connectors,
        migrate: bool,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        if let Some((name, _)) = config.applications.iter().find(|(n, a)| !a.dry_run && !connectors.contains_key(*n)) {
            anyhow::bail!("application {name:?} is live (dry_run = false) but has no connector");
        }
        let admin_token = admin_token_from_config(&config)?;
        let console = ops::console::Console::from_config(&config)?;
        if migrate {
            // As the owner ([database] migrate_url); the services below connect with `url`.
            let prepared = db::prepare(&config.database).await?;
            tracing::info!(
                applied = prepared.applied.len(),
                runtime_password_set = prepared.password_set,
                "migrations up to date"
            );
        }
        let pool = db::pool(&config.database.url, config.database.max_connections, &config.database.timeouts())?;
        let broker = Broker::new(&config.broker.url, Names::new(&config.broker.prefix, &config.broker.retry_delays));
        let mut tasks = JoinSet::new();

        let ops_listener = TcpListener::bind(config.ops.listen)
            .await
            .with_context(|| format!("cannot listen on ops.listen {}", config.ops.listen))?;
        let ops_addr = ops_listener.local_addr()?;
        let ops_state = OpsState {
            broker: broker.clone(),
            pool: pool.clone(),
            metrics: metrics::handle(),
            config: config.clone(),
            admin_token: admin_token.map(Arc::new),
            auth_failures: Default::default(),
            backlog: role.worker().then(Default::default),
            console: console.map(Arc::new),
        };
        let token = shutdown.clone();
        tasks.spawn(async move { ("ops", ops::serve(ops_listener, ops_state, token).await.map_err(Into::into)) });

        let mut ingress_addr = None;
        if role.ingress() {
            let verifier = verifier.context("the ingress needs its webhook secret or bearer token")?;
            let listener = TcpListener::bind(config.ingress.listen)
                .await
                .with_context(|| format!("cannot listen on ingress.listen {}", config.ingress.listen))?;
            ingress_addr = Some(listener.local_addr()?);
            // Connect (and declare the topology) now when we can; if the broker is
            // down we still start, answer 503 and report not-ready until it is back.
            if let Err(e) = broker.publish_channel().await {
                tracing::warn!(error = %e, "broker not reachable at start; webhooks get 503 until it is");
            }
            let state = IngressState::new(config.clone(), verifier, broker.clone(), pool.clone());
            let token = shutdown.clone();
            tasks.spawn(async move { ("ingress", ingress::serve(listener, state, token).await.map_err(Into::into)) });
        }
        if role.worker() {
            let ctx = Arc::new(WorkerContext::new(config.clone(), pool.clone(), broker.clone(), connectors));
            if ctx.jsm.is_none() {
                let groups = config.rules.iter().any(|r| r.approvers.iter().any(|a| a.starts_with("group:")));
                let wb = &config.jsm.write_back;
                if groups || wb.comment || wb.transition_on_success.is_some() || wb.transition_on_failure.is_some() {
                    tracing::warn!(
                        "no JSM credentials ([jsm] email_env + api_token_env): group: approvers match nobody and \
                         nothing is written back to tickets"
                    );
                }
            }
            let token = shutdown.clone();
            tasks.spawn(async move {
                worker::run(ctx, token).await;
                ("worker", Ok(()))
            });
        }
        Ok(Self { ingress_addr, ops_addr, pool, broker, shutdown, tasks })
    }

    /// Waits until every role has stopped. A role that stops with an error
    /// stops the others.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        while let Some(joined) = self.tasks.join_next().await {
            let (name, result) = joined.unwrap_or(("task", Err(anyhow::anyhow!("a task panicked"))));
            if let Err(e) = result {
                tracing::error!(role = name, error = %e, "role stopped with an error; stopping the others");
                self.shutdown.cancel();
                first_error.get_or_insert(e.context(format!("{name} failed")));
            }
        }
        self.broker.close().await;
        self.pool.close().await;
        first_error.map_or(Ok(()), Err)
    }

    /// Asks every role to stop.
    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}
