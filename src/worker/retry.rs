//! Where a failed attempt goes next: the retry ladder, pure and unit-tested.

use std::time::Duration;

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

/// "Equal jitter" of a backoff step: half of `base` always, plus a random share
/// of the other half, i.e. a delay in `[base / 2, base]`. `unit` is the random
/// draw, uniform in `[0, 1]` (values outside are clamped, NaN counts as 0), so
/// this is pure and testable; [`jitter`] draws it. Replicas that lost the same
/// broker or database at the same moment spread their retries instead of
/// reconnecting in lockstep, and no retry comes sooner than half the step.
pub fn jittered(base: Duration, unit: f64) -> Duration {
    let unit = if unit.is_nan() { 0.0 } else { unit.clamp(0.0, 1.0) };
    let floor = base / 2;
    // (Capped at `base`: the float product may round up past the exact span.)
    floor.saturating_add((base - floor).mul_f64(unit)).min(base)
}

/// [`jittered`] with a fresh random draw (from a v4 UUID's random bits: no RNG
/// crate). Use as `tokio::time::sleep(retry::jitter(backoff))`.
pub fn jitter(base: Duration) -> Duration {
    jittered(base, random_unit())
}

/// A uniform draw from `[0, 1)`: 53 random bits of a v4 UUID (the low word
/// minus its two variant bits).
fn random_unit() -> f64 {
    let (_, low) = uuid::Uuid::new_v4().as_u64_pair();
    ((low << 2) >> 11) as f64 / (1u64 << 53) as f64
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

    #[test]
    fn jittered_stays_between_half_the_step_and_the_step() {
        let base = Duration::from_secs(10);
        assert_eq!(jittered(base, 0.0), Duration::from_secs(5));
        assert_eq!(jittered(base, 0.5), Duration::from_millis(7500));
        assert_eq!(jittered(base, 1.0), base);
        // Out-of-range draws are clamped, never panic.
        assert_eq!(jittered(base, -3.0), Duration::from_secs(5));
        assert_eq!(jittered(base, 7.0), base);
        assert_eq!(jittered(base, f64::NAN), Duration::from_secs(5));
        assert_eq!(jittered(base, f64::INFINITY), base);
        assert_eq!(jittered(Duration::ZERO, 0.7), Duration::ZERO);
        // Odd nanoseconds and the largest duration stay in bounds without overflow.
        let odd = Duration::from_nanos(3);
        assert!((Duration::from_nanos(1)..=odd).contains(&jittered(odd, 0.99)));
        assert!(jittered(Duration::MAX, 1.0) <= Duration::MAX);
        assert!(jittered(Duration::MAX, 0.0) >= Duration::MAX / 2);
        // Monotonic in the draw.
        let steps: Vec<Duration> = (0..=10).map(|i| jittered(base, f64::from(i) / 10.0)).collect();
        assert!(steps.windows(2).all(|w| w[0] <= w[1]), "{steps:?}");
    }

    #[test]
    fn jitter_spreads_its_draws_over_the_whole_range() {
        let base = Duration::from_millis(1000);
        let draws: Vec<Duration> = (0..1000).map(|_| jitter(base)).collect();
        assert!(draws.iter().all(|d| (base / 2..=base).contains(d)), "out of [base/2, base]");
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
        for _ in 0..1000 {
            let u = random_unit();
            assert!((0.0..1.0).contains(&u), "{u}");
        }
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
