//! The shard state machine (DESIGN.md §4): one enum, one transition function.
//!
//! ```text
//! Pending --lease--> Leased(attempt) --commit--> Committed
//!    ^                  |  (expiry, release, failure)
//!    +------------------+
//!                       +--(failures reach the limit, or a non-retryable failure)--> Quarantined
//! ```
//!
//! `attempt` numbers every lease of a shard (1, 2, ...). Expired leases and counted failures
//! add to `failures`; when they reach `max_failures`, or a failure is not retryable, the shard
//! is quarantined (recorded in the manifest, never blocking the round). A worker that releases
//! its lease (shutting down) costs no failure. A commit of any attempt wins, even from a lease
//! that already expired: the output store is the source of truth and the first commit there is
//! the shard's output.

use std::time::{Duration, Instant};

/// Where a shard is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardState {
    /// Waiting for a worker.
    Pending {
        /// Leases granted so far.
        attempts: u32,
        /// Counted failures so far.
        failures: u32,
        /// The last failure, if any.
        last_error: Option<String>,
    },
    /// A worker is on it.
    Leased {
        /// This lease's attempt number.
        attempt: u32,
        /// Counted failures so far.
        failures: u32,
        /// The worker holding the lease.
        worker: String,
        /// When the lease expires unless the worker heartbeats.
        deadline: Instant,
        /// Rows the worker reports done.
        rows_done: u64,
        /// The last failure, if any.
        last_error: Option<String>,
    },
    /// Its commit record exists.
    Committed {
        /// The attempt whose output is the shard's.
        attempt: u32,
        /// Leases granted in all.
        attempts: u32,
    },
    /// Given up on.
    Quarantined {
        /// Leases granted in all.
        attempts: u32,
        /// Why.
        last_error: String,
    },
}

impl Default for ShardState {
    fn default() -> Self {
        ShardState::Pending {
            attempts: 0,
            failures: 0,
            last_error: None,
        }
    }
}

/// Something that happens to a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The scheduler leases it to `worker` until `deadline`.
    Lease {
        /// The worker.
        worker: String,
        /// Lease deadline.
        deadline: Instant,
    },
    /// The lease holder reports progress: the lease is extended to `deadline`.
    Heartbeat {
        /// The reporting worker.
        worker: String,
        /// The attempt it reports.
        attempt: u32,
        /// Rows done.
        rows_done: u64,
        /// New deadline.
        deadline: Instant,
    },
    /// A commit record for `attempt` exists in the output store.
    Committed {
        /// The committed attempt.
        attempt: u32,
    },
    /// The lease holder reports a failure.
    Failed {
        /// The attempt that failed.
        attempt: u32,
        /// Whether another attempt may succeed.
        retryable: bool,
        /// Whether it counts towards quarantine.
        counted: bool,
        /// What happened.
        error: String,
    },
    /// The lease holder gives the shard back unfinished (shutting down): no failure.
    Released {
        /// The released attempt.
        attempt: u32,
    },
    /// Time passed: a lease past its deadline is lost (counts as a failure).
    Tick {
        /// Now.
        now: Instant,
    },
}

/// An event that does not apply to the shard's current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{event} does not apply to a {state} shard")]
pub struct Rejected {
    /// The event, described.
    pub event: String,
    /// The state, named.
    pub state: &'static str,
}

impl ShardState {
    /// The state's name.
    pub fn name(&self) -> &'static str {
        match self {
            ShardState::Pending { .. } => "pending",
            ShardState::Leased { .. } => "leased",
            ShardState::Committed { .. } => "committed",
            ShardState::Quarantined { .. } => "quarantined",
        }
    }

    /// Committed or quarantined: nothing more will happen.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            ShardState::Committed { .. } | ShardState::Quarantined { .. }
        )
    }

    /// Leases granted so far.
    pub fn attempts(&self) -> u32 {
        match self {
            ShardState::Pending { attempts, .. }
            | ShardState::Committed { attempts, .. }
            | ShardState::Quarantined { attempts, .. } => *attempts,
            ShardState::Leased { attempt, .. } => *attempt,
        }
    }

    /// The last recorded failure.
    pub fn last_error(&self) -> Option<&str> {
        match self {
            ShardState::Pending { last_error, .. } | ShardState::Leased { last_error, .. } => {
                last_error.as_deref()
            }
            ShardState::Quarantined { last_error, .. } => Some(last_error),
            ShardState::Committed { .. } => None,
        }
    }
}

fn after_failure(
    attempts: u32,
    failures: u32,
    max_failures: u32,
    quarantine: bool,
    error: String,
) -> ShardState {
    if quarantine || failures >= max_failures {
        ShardState::Quarantined {
            attempts,
            last_error: error,
        }
    } else {
        ShardState::Pending {
            attempts,
            failures,
            last_error: Some(error),
        }
    }
}

/// The one transition function. `max_failures` (at least 1) is the quarantine limit. Returns
/// the new state, or why the event does not apply (the state is then unchanged).
pub fn transition(
    state: &ShardState,
    event: &Event,
    max_failures: u32,
) -> Result<ShardState, Rejected> {
    let max_failures = max_failures.max(1);
    let reject = || Rejected {
        event: format!("{event:?}"),
        state: state.name(),
    };
    match (state, event) {
        // A commit record wins from any non-final state, whichever attempt wrote it.
        (ShardState::Pending { attempts, .. }, Event::Committed { attempt }) => {
            Ok(ShardState::Committed {
                attempt: *attempt,
                attempts: (*attempts).max(*attempt),
            })
        }
        (
            ShardState::Leased {
                attempt: current, ..
            },
            Event::Committed { attempt },
        ) => Ok(ShardState::Committed {
            attempt: *attempt,
            attempts: (*current).max(*attempt),
        }),
        // The same commit seen twice (worker report and store rebuild) changes nothing.
        (ShardState::Committed { attempt: a, .. }, Event::Committed { attempt })
            if a == attempt =>
        {
            Ok(state.clone())
        }
        // A commit of a shard given up on: the store has its output after all.
        (ShardState::Quarantined { attempts, .. }, Event::Committed { attempt }) => {
            Ok(ShardState::Committed {
                attempt: *attempt,
                attempts: (*attempts).max(*attempt),
            })
        }

        (
            ShardState::Pending {
                attempts,
                failures,
                last_error,
            },
            Event::Lease { worker, deadline },
        ) => Ok(ShardState::Leased {
            attempt: attempts + 1,
            failures: *failures,
            worker: worker.clone(),
            deadline: *deadline,
            rows_done: 0,
            last_error: last_error.clone(),
        }),

        (
            ShardState::Leased {
                attempt,
                failures,
                worker,
                last_error,
                ..
            },
            Event::Heartbeat {
                worker: w,
                attempt: a,
                rows_done,
                deadline,
            },
        ) if a == attempt && w == worker => Ok(ShardState::Leased {
            attempt: *attempt,
            failures: *failures,
            worker: worker.clone(),
            deadline: *deadline,
            rows_done: *rows_done,
            last_error: last_error.clone(),
        }),

        (
            ShardState::Leased {
                attempt, failures, ..
            },
            Event::Failed {
                attempt: a,
                retryable,
                counted,
                error,
            },
        ) if a == attempt => Ok(after_failure(
            *attempt,
            failures + u32::from(*counted),
            max_failures,
            !retryable,
            error.clone(),
        )),

        (
            ShardState::Leased {
                attempt,
                failures,
                last_error,
                ..
            },
            Event::Released { attempt: a },
        ) if a == attempt => Ok(ShardState::Pending {
            attempts: *attempt,
            failures: *failures,
            last_error: last_error.clone(),
        }),

        (
            ShardState::Leased {
                attempt,
                failures,
                deadline,
                worker,
                ..
            },
            Event::Tick { now },
        ) => {
            if now >= deadline {
                Ok(after_failure(
                    *attempt,
                    failures + 1,
                    max_failures,
                    false,
                    format!("lease of attempt {attempt} held by worker {worker} expired"),
                ))
            } else {
                Ok(state.clone())
            }
        }
        (_, Event::Tick { .. }) => Ok(state.clone()),
        _ => Err(reject()),
    }
}

/// A lease's deadline from now.
pub fn deadline(now: Instant, timeout: Duration) -> Instant {
    now + timeout
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    fn states(now: Instant) -> Vec<ShardState> {
        vec![
            ShardState::default(),
            ShardState::Pending {
                attempts: 2,
                failures: 1,
                last_error: Some("boom".into()),
            },
            ShardState::Leased {
                attempt: 1,
                failures: 0,
                worker: "w1".into(),
                deadline: now + Duration::from_secs(10),
                rows_done: 5,
                last_error: None,
            },
            ShardState::Leased {
                attempt: 3,
                failures: 2,
                worker: "w2".into(),
                deadline: now,
                rows_done: 0,
                last_error: Some("x".into()),
            },
            ShardState::Committed {
                attempt: 1,
                attempts: 1,
            },
            ShardState::Quarantined {
                attempts: 3,
                last_error: "poison".into(),
            },
        ]
    }

    fn events(now: Instant) -> Vec<Event> {
        let mut out = Vec::new();
        for w in ["w1", "w2"] {
            out.push(Event::Lease {
                worker: w.into(),
                deadline: now + Duration::from_secs(5),
            });
            for attempt in 1..=3 {
                out.push(Event::Heartbeat {
                    worker: w.into(),
                    attempt,
                    rows_done: 7,
                    deadline: now + Duration::from_secs(20),
                });
            }
        }
        for attempt in 1..=3 {
            out.push(Event::Committed { attempt });
            out.push(Event::Released { attempt });
            for (retryable, counted) in [(true, true), (true, false), (false, true)] {
                out.push(Event::Failed {
                    attempt,
                    retryable,
                    counted,
                    error: "e".into(),
                });
            }
        }
        out.push(Event::Tick { now });
        out.push(Event::Tick {
            now: now + Duration::from_secs(60),
        });
        out
    }

    /// Every (state, event) pair: the invariants of DESIGN.md §4 hold whatever happens.
    #[test]
    fn every_state_and_event_keeps_the_invariants() {
        let now = t0();
        for max in [1, 3] {
            for s in states(now) {
                // Only states that are valid under this limit.
                if let ShardState::Pending { failures, .. } | ShardState::Leased { failures, .. } =
                    s
                    && failures >= max
                {
                    continue;
                }
                for e in events(now) {
                    let Ok(next) = transition(&s, &e, max) else {
                        // Rejected events are those of another attempt or worker, or that make no
                        // sense in a final state.
                        assert!(!matches!(e, Event::Tick { .. }), "ticks always apply");
                        continue;
                    };
                    // Final states stay final; only a commit moves a quarantined shard.
                    if let ShardState::Committed { .. } = s {
                        assert_eq!(next, s, "{e:?}");
                    }
                    if let ShardState::Quarantined { .. } = s {
                        assert!(matches!(
                            next,
                            ShardState::Quarantined { .. } | ShardState::Committed { .. }
                        ));
                    }
                    // Attempt numbers never go down.
                    assert!(next.attempts() >= s.attempts(), "{s:?} --{e:?}--> {next:?}");
                    // A commit always ends in Committed with that attempt.
                    if let Event::Committed { attempt } = e {
                        assert!(
                            matches!(next, ShardState::Committed { attempt: a, .. } if a == attempt || matches!(s, ShardState::Committed { .. }))
                        );
                    }
                    // A lease only comes out of Pending, with the next attempt number.
                    if let Event::Lease { .. } = e {
                        assert!(matches!(s, ShardState::Pending { .. }));
                        assert_eq!(next.attempts(), s.attempts() + 1);
                    }
                    // Failures never exceed the limit outside quarantine.
                    if let ShardState::Pending { failures, .. }
                    | ShardState::Leased { failures, .. } = next
                    {
                        assert!(failures < max, "{s:?} --{e:?}--> {next:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_lease_lives_by_heartbeats_and_dies_without_them() {
        let now = t0();
        let s = transition(
            &ShardState::default(),
            &Event::Lease {
                worker: "w".into(),
                deadline: now + Duration::from_secs(1),
            },
            3,
        )
        .expect("lease");
        let s = transition(
            &s,
            &Event::Heartbeat {
                worker: "w".into(),
                attempt: 1,
                rows_done: 3,
                deadline: now + Duration::from_secs(10),
            },
            3,
        )
        .expect("heartbeat");
        let still = transition(
            &s,
            &Event::Tick {
                now: now + Duration::from_secs(5),
            },
            3,
        )
        .expect("tick");
        assert!(matches!(still, ShardState::Leased { rows_done: 3, .. }));
        let lost = transition(
            &s,
            &Event::Tick {
                now: now + Duration::from_secs(11),
            },
            3,
        )
        .expect("tick");
        assert!(
            matches!(
                lost,
                ShardState::Pending {
                    attempts: 1,
                    failures: 1,
                    ..
                }
            ),
            "{lost:?}"
        );
        // Another worker's heartbeat for the same attempt is not accepted.
        assert!(
            transition(
                &s,
                &Event::Heartbeat {
                    worker: "intruder".into(),
                    attempt: 1,
                    rows_done: 9,
                    deadline: now
                },
                3
            )
            .is_err()
        );
    }

    #[test]
    fn counted_failures_quarantine_at_the_limit_and_releases_cost_nothing() {
        let now = t0();
        let mut s = ShardState::default();
        for round in 1..=3u32 {
            s = transition(
                &s,
                &Event::Lease {
                    worker: "w".into(),
                    deadline: now + Duration::from_secs(9),
                },
                3,
            )
            .expect("lease");
            // A release first: no failure, the attempt number still moves on.
            s = transition(
                &s,
                &Event::Released {
                    attempt: 2 * round - 1,
                },
                3,
            )
            .expect("release");
            s = transition(
                &s,
                &Event::Lease {
                    worker: "w".into(),
                    deadline: now + Duration::from_secs(9),
                },
                3,
            )
            .expect("lease");
            s = transition(
                &s,
                &Event::Failed {
                    attempt: 2 * round,
                    retryable: true,
                    counted: true,
                    error: format!("bad {round}"),
                },
                3,
            )
            .expect("fail");
        }
        assert_eq!(
            s,
            ShardState::Quarantined {
                attempts: 6,
                last_error: "bad 3".into()
            }
        );
    }

    #[test]
    fn a_non_retryable_failure_quarantines_at_once_and_a_late_commit_still_wins() {
        let now = t0();
        let s = transition(
            &ShardState::default(),
            &Event::Lease {
                worker: "w".into(),
                deadline: now,
            },
            5,
        )
        .expect("lease");
        let q = transition(
            &s,
            &Event::Failed {
                attempt: 1,
                retryable: false,
                counted: true,
                error: "schema".into(),
            },
            5,
        )
        .expect("fail");
        assert!(matches!(q, ShardState::Quarantined { .. }));
        let c = transition(&q, &Event::Committed { attempt: 1 }, 5).expect("commit");
        assert_eq!(
            c,
            ShardState::Committed {
                attempt: 1,
                attempts: 1
            }
        );
    }

    #[test]
    fn an_expired_attempt_that_commits_first_wins_over_the_new_lease() {
        let now = t0();
        let s = transition(
            &ShardState::default(),
            &Event::Lease {
                worker: "slow".into(),
                deadline: now,
            },
            3,
        )
        .expect("lease");
        let s = transition(
            &s,
            &Event::Tick {
                now: now + Duration::from_secs(1),
            },
            3,
        )
        .expect("expire");
        let s = transition(
            &s,
            &Event::Lease {
                worker: "fast".into(),
                deadline: now + Duration::from_secs(60),
            },
            3,
        )
        .expect("lease 2");
        let s = transition(&s, &Event::Committed { attempt: 1 }, 3).expect("late commit");
        assert_eq!(
            s,
            ShardState::Committed {
                attempt: 1,
                attempts: 2
            }
        );
        // The second attempt's own commit attempt then loses in the store; reporting it is refused.
        assert!(transition(&s, &Event::Committed { attempt: 2 }, 3).is_err());
    }
}
