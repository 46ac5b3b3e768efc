//! Where a failed attempt goes next: the retry ladder across messages (pure and
//! unit-tested), and the in-process retries with backon: the reconnect and
//! database-retry backoff, and the provider call's short inline retries.

use crate::connectors::ConnectorError;
use backon::{Backoff, BackoffBuilder, ConstantBuilder, ExponentialBuilder, Retryable};
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The next step after a transient failure of attempt number `attempt` (0 = first delivery).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Republish to the retry queue of ladder step `step` (its delay is `delay`), as attempt `attempt`.
    Retry { step: usize, delay: Duration, attempt: u32 },
    /// The ladder is used up.
    DeadLetter,
}

/// Picks the ladder step: normally step `attempt`; when the provider asked us
/// to wait longer than that step's delay (429 Retry-After), the first later
/// step that waits long enough (or the last step). Skipped steps count as used.
pub fn next(ladder: &[Duration], attempt: u32, retry_after: Option<Duration>) -> Next {
    let from = attempt as usize;
    if from >= ladder.len() {
        return Next::DeadLetter;
    }
    let step = match retry_after {
        Some(hint) if hint > ladder[from] => {
            (from..ladder.len()).find(|&i| ladder[i] >= hint).unwrap_or(ladder.len() - 1)
        }
        _ => from,
    };
    Next::Retry { step, delay: ladder[step], attempt: step as u32 + 1 }
}

/// First step of [`backoff`]: the longest wait before the first retry.
pub const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// Last step of [`backoff`]: no wait is longer.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The delays of the broker reconnect and the database retries: steps doubling
/// from [`MIN_BACKOFF`] to [`MAX_BACKOFF`], endlessly, each with "equal jitter"
/// (a wait in `[step / 2, step]`). backon's jitter adds a random share of the
/// delay to the delay, so it starts from half the step. Replicas that lost the
/// same broker or database at the same moment spread their retries instead of
/// reconnecting in lockstep, and no retry comes sooner than half the step.
pub fn backoff() -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(MIN_BACKOFF / 2)
        .with_max_delay(MAX_BACKOFF / 2)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
}

/// `[worker] inline_backoff` as backon delays: one per configured step, each
/// with equal jitter (a wait in `[step / 2, step]`), then none (the retry
/// ladder takes over).
pub fn inline_backoff(steps: &[Duration]) -> impl Backoff + '_ {
    steps.iter().flat_map(|&step| ConstantBuilder::new().with_delay(step / 2).with_jitter().with_max_times(1).build())
}

/// One provider call with short in-process retries of transient failures
/// (`[worker] inline_backoff`): a transient error is retried after the next
/// step's jittered delay or, when the provider sent a Retry-After hint, after
/// at least the hint. The error is returned for the retry ladder once the steps
/// are used up, or when the wait would be longer than `max_wait`
/// (`[worker] max_inline_wait`); any other error is returned at once. `notify`
/// hears each retry and its wait. Not cut short by shutdown: the delivery's
/// grace period bounds it.
pub async fn inline<T, F, Fut>(
    steps: &[Duration],
    max_wait: Duration,
    call: F,
    notify: impl FnMut(&ConnectorError, Duration),
) -> Result<T, ConnectorError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ConnectorError>>,
{
    call.retry(inline_backoff(steps))
        .sleep(tokio::time::sleep)
        .when(ConnectorError::is_transient)
        .adjust(move |e, step| {
            let wait = step?;
            let wait = e.retry_after().map_or(wait, |hint| hint.max(wait));
            (wait <= max_wait).then_some(wait)
        })
        .notify(notify)
        .await
}

/// Runs `f` until it succeeds, retrying every error after a [`backoff`] delay;
/// `None` once `shutdown` is cancelled. The first try always runs (a delivery
/// finishing in the shutdown grace period still records its result); a
/// shutdown during a wait ends it without another try. `notify` hears every
/// failure, with the wait before the next try, or `None` when a failed try
/// came after shutdown and is not retried.
pub async fn until_shutdown<T, E, F, Fut>(
    shutdown: &CancellationToken,
    mut f: F,
    mut notify: impl FnMut(&E, Option<Duration>),
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    enum Stop<E> {
        Failed(E),
        Shutdown,
    }
    let mut tried = false;
    let token = shutdown.clone();
    let result = (|| {
        let attempt = (!tried || !shutdown.is_cancelled()).then(&mut f);
        tried = true;
        async move {
            match attempt {
                Some(attempt) => attempt.await.map_err(Stop::Failed),
                None => Err(Stop::Shutdown),
            }
        }
    })
    .retry(backoff())
    .sleep(move |wait| {
        let token = token.clone();
        async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    })
    .when(|e| matches!(e, Stop::Failed(_)) && !shutdown.is_cancelled())
    .notify(|e, wait| {
        if let Stop::Failed(e) = e {
            notify(e, Some(wait));
        }
    })
    .await;
    match result {
        Ok(v) => Some(v),
        Err(Stop::Failed(e)) => {
            notify(&e, None);
            None
        }
        Err(Stop::Shutdown) => None,
    }
}

/// A database error caused by the message's own data, which no retry can fix:
/// SQLSTATE class 22 (data exception: a NUL in text or jsonb, an out-of-range
/// value) or 23 (integrity constraint violation), and values sqlx cannot encode
/// or decode. Such a message is dead-lettered as poison. Every other database
/// error (connection loss, timeouts, serialization failures, a missing
/// privilege an operator can fix) keeps the message for a later try.
pub fn is_data_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.code().is_some_and(|c| c.starts_with("22") || c.starts_with("23")),
        sqlx::Error::Encode(_) | sqlx::Error::Decode(_) | sqlx::Error::ColumnDecode { .. } => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ladder() -> Vec<Duration> {
        [30, 300, 1800, 7200].map(Duration::from_secs).to_vec()
    }

    #[test]
    fn each_failure_climbs_one_step_and_the_last_dead_letters() {
        assert_eq!(next(&ladder(), 0, None), Next::Retry { step: 0, delay: Duration::from_secs(30), attempt: 1 });
        assert_eq!(next(&ladder(), 3, None), Next::Retry { step: 3, delay: Duration::from_secs(7200), attempt: 4 });
        assert_eq!(next(&ladder(), 4, None), Next::DeadLetter);
    }

    /// `d` is within equal jitter of `step`: `[step / 2, step]`.
    fn within(d: Duration, step: Duration) -> bool {
        (step / 2..=step).contains(&d)
    }

    #[test]
    fn the_backoff_doubles_from_half_a_second_to_thirty_seconds_with_jitter_between_half_the_step_and_the_step() {
        for _ in 0..200 {
            let delays: Vec<Duration> = backoff().build().take(12).collect();
            assert_eq!(delays.len(), 12, "the backoff never runs out");
            for (i, d) in delays.iter().enumerate() {
                let step = (MIN_BACKOFF * 2u32.pow(i as u32)).min(MAX_BACKOFF);
                assert!(within(*d, step), "delay {i}: {d:?} is not within [{:?}, {step:?}]", step / 2);
            }
        }
        // The cap holds however long the outage lasts.
        assert!(backoff().build().take(1000).all(|d| d <= MAX_BACKOFF));
        assert!(backoff().build().skip(100).take(100).all(|d| within(d, MAX_BACKOFF)));
    }

    #[test]
    fn inline_backoff_gives_one_jittered_delay_per_configured_step_and_then_none() {
        let steps = [Duration::from_millis(10), Duration::from_millis(20), Duration::from_secs(3), Duration::ZERO];
        for _ in 0..200 {
            let delays: Vec<Duration> = inline_backoff(&steps).collect();
            assert_eq!(delays.len(), steps.len(), "{delays:?}");
            for (d, step) in delays.iter().zip(steps) {
                assert!(within(*d, step), "{d:?} is not within [{:?}, {step:?}]", step / 2);
            }
        }
        assert_eq!(inline_backoff(&[]).next(), None);
        // Odd nanoseconds stay in bounds.
        let odd = Duration::from_nanos(3);
        assert!(inline_backoff(&[odd]).all(|d| (Duration::from_nanos(1)..=odd).contains(&d)));
    }

    #[test]
    fn the_jitter_spreads_its_draws_over_the_whole_range() {
        let base = Duration::from_millis(1000);
        let draws: Vec<Duration> = (0..1000).map(|_| inline_backoff(&[base]).next().unwrap()).collect();
        assert!(draws.iter().all(|d| within(*d, base)), "out of [base/2, base]");
        let distinct: std::collections::BTreeSet<Duration> = draws.iter().copied().collect();
        assert!(distinct.len() > 900, "only {} distinct delays in 1000 draws", distinct.len());
        // Five equal buckets of [500ms, 1000ms): each expects 200 of 1000 draws; 100
        // is more than 8 standard deviations below (a false failure is not a real risk).
        let mut buckets = [0u32; 5];
        for d in &draws {
            let i = ((d.as_millis() - 500) / 100).min(4) as usize;
            buckets[i] += 1;
        }
        assert!(buckets.iter().all(|&n| n >= 100), "skewed: {buckets:?}");
        let mean = draws.iter().map(Duration::as_secs_f64).sum::<f64>() / draws.len() as f64;
        assert!((0.7..0.8).contains(&mean), "mean {mean} is not near 0.75s");
        // The same spread for the reconnect backoff's first step.
        let first: std::collections::BTreeSet<Duration> =
            (0..1000).map(|_| backoff().build().next().unwrap()).collect();
        assert!(first.len() > 900, "only {} distinct first delays in 1000 draws", first.len());
    }

    fn transient(retry_after: Option<Duration>) -> ConnectorError {
        ConnectorError::Transient { reason: "503".into(), retry_after }
    }

    /// Runs [`inline`] against a provider that answers `answers` in turn (the last
    /// one for ever): the result, the calls made, the waits notified and the time taken.
    async fn run_inline(
        steps: &[Duration],
        max_wait: Duration,
        answers: Vec<Result<u32, ConnectorError>>,
    ) -> (Result<u32, ConnectorError>, usize, Vec<Duration>, Duration) {
        let calls = std::cell::Cell::new(0usize);
        let mut waits = Vec::new();
        let start = tokio::time::Instant::now();
        let result = inline(
            steps,
            max_wait,
            || {
                let n = calls.get();
                calls.set(n + 1);
                let answer = answers[n.min(answers.len() - 1)].clone();
                async move { answer }
            },
            |_, wait| waits.push(wait),
        )
        .await;
        (result, calls.get(), waits, start.elapsed())
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn inline_retries_a_transient_failure_once_per_step_then_leaves_it_to_the_ladder() {
        let steps = [ms(200), ms(1000), ms(3000)];
        let (result, calls, waits, took) = run_inline(&steps, ms(5000), vec![Err(transient(None))]).await;
        assert!(result.is_err_and(|e| e.is_transient()));
        assert_eq!(calls, 4, "the first call and one per step");
        assert_eq!(waits.len(), 3);
        assert!(waits.iter().zip(steps).all(|(w, s)| within(*w, s)), "{waits:?}");
        assert!((ms(2100)..=ms(4200)).contains(&took), "{took:?}");

        // Success on the third call ends the retries.
        let answers = vec![Err(transient(None)), Err(transient(None)), Ok(7)];
        let (result, calls, waits, _) = run_inline(&steps, ms(5000), answers).await;
        assert_eq!((result.ok(), calls, waits.len()), (Some(7), 3, 2));

        // No steps: no in-process retry at all.
        let (result, calls, _, took) = run_inline(&[], ms(5000), vec![Err(transient(None))]).await;
        assert!(result.is_err());
        assert_eq!((calls, took), (1, Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn inline_never_retries_a_permanent_failure() {
        for e in [
            ConnectorError::Permanent { reason: "400".into() },
            ConnectorError::NotFound { what: "user".into() },
            ConnectorError::Unauthorized("401".into()),
        ] {
            let (result, calls, waits, took) = run_inline(&[ms(10), ms(20)], ms(5000), vec![Err(e)]).await;
            assert!(result.is_err_and(|e| !e.is_transient()));
            assert_eq!((calls, waits.len(), took), (1, 0, Duration::ZERO));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn inline_waits_out_a_retry_after_hint_up_to_the_maximum_and_no_longer() {
        // A hint longer than the step is waited out in full.
        let answers = vec![Err(transient(Some(ms(4000)))), Ok(1)];
        let (result, calls, waits, took) = run_inline(&[ms(200)], ms(5000), answers).await;
        assert_eq!((result.ok(), calls), (Some(1), 2));
        assert_eq!(waits, vec![ms(4000)]);
        assert!(took >= ms(4000), "{took:?}");

        // A hint shorter than the step still waits the (jittered) step.
        let answers = vec![Err(transient(Some(ms(1)))), Ok(1)];
        let (_, _, waits, _) = run_inline(&[ms(200)], ms(5000), answers).await;
        assert!(within(waits[0], ms(200)), "{waits:?}");

        // A hint beyond max_inline_wait goes to the ladder at once, steps or not.
        let answers = vec![Err(transient(Some(ms(6000)))), Ok(1)];
        let (result, calls, waits, took) = run_inline(&[ms(200), ms(1000)], ms(5000), answers).await;
        assert_eq!(result.err().and_then(|e| e.retry_after()), Some(ms(6000)));
        assert_eq!((calls, waits.len(), took), (1, 0, Duration::ZERO));

        // ...also after earlier retries: two calls, then the long hint.
        let answers = vec![Err(transient(None)), Err(transient(Some(ms(6000)))), Ok(1)];
        let (result, calls, _, _) = run_inline(&[ms(200), ms(1000)], ms(5000), answers).await;
        assert!(result.is_err());
        assert_eq!(calls, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn until_shutdown_retries_with_the_backoff_until_it_succeeds() {
        let shutdown = CancellationToken::new();
        let calls = std::cell::Cell::new(0u32);
        let mut waits = Vec::new();
        let got = until_shutdown(
            &shutdown,
            || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move { if n < 4 { Err("down") } else { Ok(n) } }
            },
            |_: &&str, wait| waits.push(wait.expect("retried")),
        )
        .await;
        assert_eq!(got, Some(4));
        assert_eq!(waits.len(), 3);
        for (i, w) in waits.iter().enumerate() {
            assert!(within(*w, MIN_BACKOFF * 2u32.pow(i as u32)), "wait {i}: {w:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn until_shutdown_gives_up_on_shutdown_during_a_wait_without_another_try() {
        let shutdown = CancellationToken::new();
        let cancel = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ms(100)).await;
            cancel.cancel();
        });
        let calls = std::cell::Cell::new(0u32);
        let start = tokio::time::Instant::now();
        let mut heard = Vec::new();
        let got: Option<()> = until_shutdown(
            &shutdown,
            || {
                calls.set(calls.get() + 1);
                async { Err("down") }
            },
            |_, wait| heard.push(wait.is_some()),
        )
        .await;
        assert_eq!((got, calls.get()), (None, 1));
        assert_eq!(heard, vec![true], "one failure, retried after a wait that shutdown cut short");
        assert!(start.elapsed() < MIN_BACKOFF / 2, "the wait was cut short: {:?}", start.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn until_shutdown_runs_the_first_try_even_after_shutdown_but_never_a_second() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let calls = std::cell::Cell::new(0u32);
        let ok = until_shutdown(&shutdown, || async { Ok::<_, &str>(5) }, |_, _| {}).await;
        assert_eq!(ok, Some(5));
        let mut heard = Vec::new();
        let failed: Option<()> = until_shutdown(
            &shutdown,
            || {
                calls.set(calls.get() + 1);
                async { Err("down") }
            },
            |e, wait| heard.push((*e, wait)),
        )
        .await;
        assert_eq!((failed, calls.get()), (None, 1));
        assert_eq!(heard, vec![("down", None)], "the failure is reported, not retried");
    }

    #[test]
    fn a_retry_after_longer_than_the_next_step_picks_a_later_step() {
        assert_eq!(
            next(&ladder(), 0, Some(Duration::from_secs(120))),
            Next::Retry { step: 1, delay: Duration::from_secs(300), attempt: 2 }
        );
        assert_eq!(
            next(&ladder(), 0, Some(Duration::from_secs(10))).clone(),
            Next::Retry { step: 0, delay: Duration::from_secs(30), attempt: 1 }
        );
        assert_eq!(
            next(&ladder(), 1, Some(Duration::from_secs(99_999))),
            Next::Retry { step: 3, delay: Duration::from_secs(7200), attempt: 4 }
        );
    }
}
