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
