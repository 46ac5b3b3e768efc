//! A fake provider behind the `Connector` trait (tests only): it keeps a set of
//! memberships, records every call, and fails on a script.

use accessgov::connectors::{
    Connector, ConnectorError, GrantOutcome, Member, RevokeOutcome, Subject, Target, UserState,
};
use futures_util::future::BoxFuture;
use std::collections::{BTreeSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub op: &'static str,
    pub subject: String,
    /// The `subject_field` values the connector was given (provider logins).
    pub fields: std::collections::BTreeMap<String, String>,
    pub target: String,
    pub at: Instant,
}

#[derive(Default)]
pub struct FakeProvider {
    pub members: Mutex<BTreeSet<(String, String)>>,
    pub calls: Mutex<Vec<Call>>,
    /// Failures to return, in order, before behaving normally.
    pub script: Mutex<VecDeque<ConnectorError>>,
    /// Fail every call with this error (after the script).
    pub always: Mutex<Option<ConnectorError>>,
    /// Time each call takes.
    pub latency: Mutex<Duration>,
    /// Calls on these targets fail with the error.
    pub fail_targets: Mutex<std::collections::BTreeMap<String, ConnectorError>>,
    /// Calls in progress now, and the most ever in progress at once.
    pub in_flight: std::sync::atomic::AtomicUsize,
    pub max_in_flight: std::sync::atomic::AtomicUsize,
}

impl FakeProvider {
    pub fn fail_next(&self, errors: impl IntoIterator<Item = ConnectorError>) {
        self.script.lock().unwrap().extend(errors);
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    pub fn members(&self) -> BTreeSet<(String, String)> {
        self.members.lock().unwrap().clone()
    }

    async fn step(&self, op: &'static str, subject: &Subject, target: &Target) -> Result<bool, ConnectorError> {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.in_flight.fetch_add(1, SeqCst) + 1;
        self.max_in_flight.fetch_max(now, SeqCst);
        let latency = *self.latency.lock().unwrap();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        self.in_flight.fetch_sub(1, SeqCst);
        self.calls.lock().unwrap().push(Call {
            op,
            subject: subject.account_id.clone(),
            fields: subject.fields.clone(),
            target: target.name.clone(),
            at: Instant::now(),
        });
        if let Some(e) = self.script.lock().unwrap().pop_front() {
            return Err(e);
        }
        if let Some(e) = self.always.lock().unwrap().clone() {
            return Err(e);
        }
        if let Some(e) = self.fail_targets.lock().unwrap().get(&target.name).cloned() {
            return Err(e);
        }
        let key = (subject.account_id.clone(), target.name.clone());
        let mut m = self.members.lock().unwrap();
        Ok(if op == "grant" { m.insert(key) } else { m.remove(&key) })
    }
}

/// `Arc<FakeProvider>` as a connector.
pub struct FakeConnector(pub std::sync::Arc<FakeProvider>);

impl Connector for FakeConnector {
    fn kind(&self) -> &'static str {
        "fake"
    }

    fn grant<'a>(
        &'a self,
        subject: &'a Subject,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<GrantOutcome, ConnectorError>> {
        Box::pin(async move {
            Ok(if self.0.step("grant", subject, target).await? {
                GrantOutcome::Granted
            } else {
                GrantOutcome::AlreadyGranted
            })
        })
    }

    fn revoke<'a>(
        &'a self,
        subject: &'a Subject,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<RevokeOutcome, ConnectorError>> {
        Box::pin(async move {
            Ok(if self.0.step("revoke", subject, target).await? {
                RevokeOutcome::Revoked
            } else {
                RevokeOutcome::AlreadyAbsent
            })
        })
    }

    fn test_connection(&self) -> BoxFuture<'_, Result<(), ConnectorError>> {
        Box::pin(async { Ok(()) })
    }

    /// The fake knows users by their JSM account id.
    fn identity(&self, subject: &Subject) -> Result<String, ConnectorError> {
        Ok(subject.account_id.clone())
    }

    fn members<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Result<Vec<Member>, ConnectorError>> {
        Box::pin(async move {
            Ok(self
                .0
                .members()
                .into_iter()
                .filter(|(_, t)| t == &target.name)
                .map(|(user, _)| Member { id: user.clone(), keys: vec![user], display: None })
                .collect())
        })
    }

    fn memberships<'a>(
        &'a self,
        subject: &'a Subject,
        targets: &'a [Target],
    ) -> BoxFuture<'a, Result<Vec<String>, ConnectorError>> {
        Box::pin(async move {
            let held = self.0.members();
            Ok(targets
                .iter()
                .filter(|t| held.contains(&(subject.account_id.clone(), t.name.clone())))
                .map(|t| t.name.clone())
                .collect())
        })
    }

    fn user_state<'a>(&'a self, _subject: &'a Subject) -> BoxFuture<'a, Result<UserState, ConnectorError>> {
        Box::pin(async { Ok(UserState::Active) })
    }
}
