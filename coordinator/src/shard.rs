//! The shard state machine (DESIGN.md §4): one enum, one transition function.
//!
//! ```text
//! Pending --lease--> Leased(attempt) --commit--> Committed
//!    ^                  |  (expiry, release, failure)
//!    +------------------+
//!                       +--(counted failures reach the limit, or a non-retryable failure
//!                           confirmed on a second worker)--> Quarantined
//! ```
//!
//! `attempt` numbers every lease of a shard (1, 2, ...). A commit of any attempt wins, even
//! from a lease that already expired: the output store is the source of truth and the first
//! commit there is the shard's output. What a failure costs the shard depends on whom it
//! blames (Spark's excludeOnFailure reasoning: one bad machine must not quarantine healthy
//! shards):
//!
//! | what happened | counted against the shard |
//! |---|---|
//! | a failure that blames the shard (its input, its rows) | always |
//! | a failure that blames the worker (its bundle cache, its store access) | only after the shard failed on some worker before |
//! | a started lease expired (the worker died or was preempted) | only after the shard failed on some worker before |
//! | a lease expired before its work started (a dead worker's read-ahead) | not for the first [`FREE_UNSTARTED_EXPIRIES`] (then as a started one: a shard whose input fetch kills workers) |
//! | the worker gave the lease back (shutdown) | never |
//!
//! Every failure and started expiry records the worker in `failed_on`, so the scheduler
//! leases the shard elsewhere while another worker can take it (and, in the coordinator's
//! first moments, while workers are still registering: `Timing::registration_grace`). A
//! non-retryable failure that blames the shard quarantines at once only when the shard failed on another worker as well;
//! otherwise (on the first worker, or blaming the worker) it counts like a retryable one.

use std::time::{Duration, Instant};

/// A shard's failures so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// Failures counted towards quarantine.
    pub failures: u32,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// Distinct workers on which an attempt failed or a started lease expired.
    pub failed_on: Vec<String>,
    /// Leases that expired before their work started (free up to
    /// [`FREE_UNSTARTED_EXPIRIES`]).
    pub unstarted_expiries: u32,
}

/// Leases of a shard that may expire before their work started without a charge: beyond them
/// the shard itself is suspect (its input fetch kills workers), and expiries count as started.
pub const FREE_UNSTARTED_EXPIRIES: u32 = 3;

impl History {
    /// Records a failure on `worker`; returns whether the shard had failed on any worker
    /// before, and whether on a different one.
    fn record(&mut self, worker: &str, error: String) -> (bool, bool) {
        let before = !self.failed_on.is_empty();
        let elsewhere = self.failed_on.iter().any(|w| w != worker);
        if !self.failed_on.iter().any(|w| w == worker) {
            self.failed_on.push(worker.to_string());
        }
        self.last_error = Some(error);
        (before, elsewhere)
    }

    /// Whether the shard failed on `worker` before.
    pub fn failed_on(&self, worker: &str) -> bool {
        self.failed_on.iter().any(|w| w == worker)
    }
}

/// Where a shard is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardState {
    /// Waiting for a worker.
    Pending {
        /// Leases granted so far.
        attempts: u32,
        /// Failures so far.
        history: History,
    },
    /// A worker is on it.
    Leased {
        /// This lease's attempt number.
        attempt: u32,
        /// The worker holding the lease.
        worker: String,
        /// When the lease expires unless the worker heartbeats.
        deadline: Instant,
        /// Rows the worker reports done.
        rows_done: u64,
        /// Whether the worker reported that the work started (it holds a compute slot).
        started: bool,
        /// Failures so far.
        history: History,
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
        /// Workers it failed on.
        failed_on: Vec<String>,
    },
}

impl Default for ShardState {
    fn default() -> Self {
        ShardState::Pending {
            attempts: 0,
            history: History::default(),
        }
    }
}

/// Whom a failure blames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The shard: its input or its rows.
    Shard,
    /// The worker's own environment.
    Worker,
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
        /// Whether its work started.
        started: bool,
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
        /// Whether it counts at all (false: an attempt that lost to another commit).
        counted: bool,
        /// Whom it blames.
        blame: Blame,
        /// What happened.
        error: String,
    },
    /// The lease holder gives the shard back unfinished (shutting down): no failure.
    Released {
        /// The released attempt.
        attempt: u32,
    },
    /// Time passed: a lease past its deadline is lost.
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

    /// Failures counted so far (0 once final).
    pub fn failures(&self) -> u32 {
        self.history().map_or(0, |h| h.failures)
    }

    /// The failure history of a pending or leased shard.
    pub fn history(&self) -> Option<&History> {
        match self {
            ShardState::Pending { history, .. } | ShardState::Leased { history, .. } => {
                Some(history)
            }
            _ => None,
        }
    }

    /// The last recorded failure.
    pub fn last_error(&self) -> Option<&str> {
        match self {
            ShardState::Pending { history, .. } | ShardState::Leased { history, .. } => {
                history.last_error.as_deref()
            }
            ShardState::Quarantined { last_error, .. } => Some(last_error),
            ShardState::Committed { .. } => None,
        }
    }
}

fn after_failure(
    attempts: u32,
    history: History,
    max_failures: u32,
    quarantine: bool,
) -> ShardState {
    if quarantine || history.failures >= max_failures {
        ShardState::Quarantined {
            attempts,
            last_error: history.last_error.clone().unwrap_or_default(),
            failed_on: history.failed_on,
        }
    } else {
        ShardState::Pending { attempts, history }
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

        (ShardState::Pending { attempts, history }, Event::Lease { worker, deadline }) => {
            Ok(ShardState::Leased {
                attempt: attempts + 1,
                worker: worker.clone(),
                deadline: *deadline,
                rows_done: 0,
                started: false,
                history: history.clone(),
            })
        }

        (
            ShardState::Leased {
                attempt,
                worker,
                started,
                history,
                ..
            },
            Event::Heartbeat {
                worker: w,
                attempt: a,
                rows_done,
                started: s,
                deadline,
            },
        ) if a == attempt && w == worker => Ok(ShardState::Leased {
            attempt: *attempt,
            worker: worker.clone(),
            deadline: *deadline,
            rows_done: *rows_done,
            started: *started || *s || *rows_done > 0,
            history: history.clone(),
        }),

        (
            ShardState::Leased {
                attempt,
                worker,
                history,
                ..
            },
            Event::Failed {
                attempt: a,
                retryable,
                counted,
                blame,
                error,
            },
        ) if a == attempt => {
            let mut history = history.clone();
            if !*counted {
                history.last_error = Some(error.clone());
                return Ok(ShardState::Pending {
                    attempts: *attempt,
                    history,
                });
            }
            let (before, elsewhere) = history.record(worker, error.clone());
            if *blame == Blame::Shard || before {
                history.failures += 1;
            }
            // A failure that blames the worker says nothing about the shard: it only counts.
            Ok(after_failure(
                *attempt,
                history,
                max_failures,
                !retryable && elsewhere && *blame == Blame::Shard,
            ))
        }

        (
            ShardState::Leased {
                attempt, history, ..
            },
            Event::Released { attempt: a },
        ) if a == attempt => Ok(ShardState::Pending {
            attempts: *attempt,
            history: history.clone(),
        }),

        (
            ShardState::Leased {
                attempt,
                deadline,
                worker,
                started,
                history,
                ..
            },
            Event::Tick { now },
        ) => {
            if now < deadline {
                return Ok(state.clone());
            }
            let mut history = history.clone();
            if !started && history.unstarted_expiries < FREE_UNSTARTED_EXPIRIES {
                history.unstarted_expiries += 1;
                history.last_error = Some(format!(
                    "lease of attempt {attempt} on worker {worker} expired before its work started"
                ));
                return Ok(ShardState::Pending {
                    attempts: *attempt,
                    history,
                });
            }
            let error = format!("lease of attempt {attempt} held by worker {worker} expired");
            let (before, _) = history.record(worker, error);
            if before {
                history.failures += 1;
            }
            Ok(after_failure(*attempt, history, max_failures, false))
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

    fn history(failures: u32, failed_on: &[&str]) -> History {
        History {
            failures,
            last_error: (failures > 0).then(|| "boom".into()),
            failed_on: failed_on.iter().map(|w| w.to_string()).collect(),
            unstarted_expiries: 0,
        }
    }

    fn leased(
        attempt: u32,
        worker: &str,
        deadline: Instant,
        started: bool,
        h: History,
    ) -> ShardState {
        ShardState::Leased {
            attempt,
            worker: worker.into(),
            deadline,
            rows_done: 0,
            started,
            history: h,
        }
    }

    fn states(now: Instant) -> Vec<ShardState> {
        vec![
            ShardState::default(),
            ShardState::Pending {
                attempts: 2,
                history: history(1, &["w1"]),
            },
            leased(
                1,
                "w1",
                now + Duration::from_secs(10),
                false,
                History::default(),
            ),
            leased(3, "w2", now, true, history(2, &["w1"])),
            leased(2, "w1", now, true, history(0, &["w2"])),
            leased(
                2,
                "w1",
                now,
                false,
                History {
                    unstarted_expiries: FREE_UNSTARTED_EXPIRIES,
                    ..history(1, &["w2"])
                },
            ),
            ShardState::Committed {
                attempt: 1,
                attempts: 1,
            },
            ShardState::Quarantined {
                attempts: 3,
                last_error: "poison".into(),
                failed_on: vec!["w1".into(), "w2".into()],
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
                for started in [false, true] {
                    out.push(Event::Heartbeat {
                        worker: w.into(),
                        attempt,
                        rows_done: 7 * u64::from(started),
                        started,
                        deadline: now + Duration::from_secs(20),
                    });
                }
            }
        }
        for attempt in 1..=3 {
            out.push(Event::Committed { attempt });
            out.push(Event::Released { attempt });
            for (retryable, counted) in [(true, true), (true, false), (false, true)] {
                for blame in [Blame::Shard, Blame::Worker] {
                    out.push(Event::Failed {
                        attempt,
                        retryable,
                        counted,
                        blame,
                        error: "e".into(),
                    });
                }
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
                if s.history().is_some_and(|h| h.failures >= max) {
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
                    // Failures never exceed the limit outside quarantine, and only go up by one.
                    if let Some(h) = next.history() {
                        assert!(h.failures < max, "{s:?} --{e:?}--> {next:?}");
                        assert!(h.failures <= s.failures() + 1);
                    }
                    let fresh = s.history().is_some_and(|h| h.failed_on.is_empty());
                    let counted_now = next.failures() > s.failures()
                        || (matches!(next, ShardState::Quarantined { .. })
                            && !matches!(s, ShardState::Quarantined { .. }));
                    match &e {
                        // One bad machine never costs a shard that never failed before.
                        Event::Failed {
                            blame: Blame::Worker,
                            ..
                        } if fresh => assert!(!counted_now, "{s:?} --{e:?}--> {next:?}"),
                        Event::Tick { .. } if fresh => {
                            assert!(!counted_now, "{s:?} --{e:?}--> {next:?}")
                        }
                        // Nor a read-ahead lease whose work never started, nor a release.
                        Event::Tick { .. } | Event::Released { .. }
                            if matches!(s, ShardState::Leased { started: false, .. })
                                && s.history().is_some_and(|h| {
                                    h.unstarted_expiries < FREE_UNSTARTED_EXPIRIES
                                }) =>
                        {
                            assert!(!counted_now, "{s:?} --{e:?}--> {next:?}")
                        }
                        Event::Failed { counted: false, .. } => {
                            assert!(!counted_now, "{s:?} --{e:?}--> {next:?}")
                        }
                        _ => {}
                    }
                    // A non-retryable failure of the shard quarantines at once only when
                    // confirmed elsewhere; one that blames the worker never does by itself.
                    if let (
                        Event::Failed {
                            retryable: false,
                            counted: true,
                            blame,
                            ..
                        },
                        ShardState::Leased {
                            worker, history, ..
                        },
                    ) = (&e, &s)
                        && next.name() != "committed"
                        && history.failures + 1 < max
                    {
                        let elsewhere = history.failed_on.iter().any(|w| w != worker);
                        assert_eq!(
                            matches!(next, ShardState::Quarantined { .. }),
                            elsewhere && *blame == Blame::Shard,
                            "{s:?} --{e:?}--> {next:?}"
                        );
                    }
                }
            }
        }
    }

    fn lease(s: &ShardState, worker: &str, deadline: Instant) -> ShardState {
        transition(
            s,
            &Event::Lease {
                worker: worker.into(),
                deadline,
            },
            3,
        )
        .expect("lease")
    }

    fn beat(s: &ShardState, worker: &str, started: bool, deadline: Instant) -> ShardState {
        transition(
            s,
            &Event::Heartbeat {
                worker: worker.into(),
                attempt: s.attempts(),
                rows_done: 0,
                started,
                deadline,
            },
            3,
        )
        .expect("heartbeat")
    }

    fn tick(s: &ShardState, now: Instant) -> ShardState {
        transition(s, &Event::Tick { now }, 3).expect("tick")
    }

    fn fail(s: &ShardState, retryable: bool, blame: Blame) -> ShardState {
        transition(
            s,
            &Event::Failed {
                attempt: s.attempts(),
                retryable,
                counted: true,
                blame,
                error: "e".into(),
            },
            3,
        )
        .expect("fail")
    }

    #[test]
    fn a_lease_lives_by_heartbeats_and_dies_without_them() {
        let now = t0();
        let s = lease(&ShardState::default(), "w", now + Duration::from_secs(1));
        let s = beat(&s, "w", true, now + Duration::from_secs(10));
        let still = tick(&s, now + Duration::from_secs(5));
        assert!(matches!(still, ShardState::Leased { started: true, .. }));
        let lost = tick(&s, now + Duration::from_secs(11));
        // The first expiry is the worker's (preempted, killed): the shard is not charged.
        assert_eq!(lost.failures(), 0, "{lost:?}");
        assert_eq!(
            lost.history().map(|h| h.failed_on.clone()),
            Some(vec!["w".to_string()])
        );
        // Another worker's heartbeat for the same attempt is not accepted.
        assert!(
            transition(
                &s,
                &Event::Heartbeat {
                    worker: "intruder".into(),
                    attempt: 1,
                    rows_done: 9,
                    started: true,
                    deadline: now
                },
                3
            )
            .is_err()
        );
    }

    /// Hole 8: a worker leases one shard beyond its slots as read-ahead; when the worker dies,
    /// that shard's work never started and it is not charged, however often it happens.
    #[test]
    fn a_read_ahead_lease_of_a_dead_worker_costs_the_shard_nothing() {
        let now = t0();
        let mut s = ShardState::default();
        for w in ["w1", "w2", "w3"] {
            s = lease(&s, w, now);
            s = beat(&s, w, false, now);
            s = tick(&s, now + Duration::from_secs(1));
            assert!(matches!(s, ShardState::Pending { .. }), "{s:?}");
        }
        assert_eq!(s.failures(), 0);
        assert!(s.history().is_some_and(|h| h.failed_on.is_empty()));
        assert!(
            s.last_error()
                .is_some_and(|e| e.contains("before its work started"))
        );
        // Beyond three, the shard itself is suspect (its fetch kills workers): expiries count
        // as started ones, from the second on.
        let mut suspect = s.clone();
        for w in ["w4", "w5"] {
            suspect = lease(&suspect, w, now);
            suspect = tick(&suspect, now + Duration::from_secs(1));
        }
        assert_eq!(suspect.failures(), 1, "{suspect:?}");
        // Once started (a heartbeat said so, or rows were done), expiries do count: from the
        // second one on.
        s = lease(&s, "w1", now);
        s = beat(&s, "w1", true, now);
        s = tick(&s, now + Duration::from_secs(1));
        assert_eq!(s.failures(), 0);
        s = lease(&s, "w2", now);
        s = transition(
            &s,
            &Event::Heartbeat {
                worker: "w2".into(),
                attempt: s.attempts(),
                rows_done: 3,
                started: false,
                deadline: now,
            },
            3,
        )
        .expect("beat");
        s = tick(&s, now + Duration::from_secs(1));
        assert_eq!(s.failures(), 1, "{s:?}");
    }

    /// Hole 3: faults of one worker (a stale bundle cache, a store it cannot use) never
    /// quarantine healthy shards; the same fault on a second worker does count.
    #[test]
    fn one_bad_worker_never_quarantines_a_shard() {
        let now = t0();
        let mut s = ShardState::default();
        s = lease(&s, "bad", now + Duration::from_secs(9));
        s = fail(&s, false, Blame::Worker);
        assert!(matches!(s, ShardState::Pending { .. }), "{s:?}");
        assert_eq!(s.failures(), 0);
        // The next worker commits.
        s = lease(&s, "good", now + Duration::from_secs(9));
        let c = transition(&s, &Event::Committed { attempt: 2 }, 3).expect("commit");
        assert!(matches!(c, ShardState::Committed { attempt: 2, .. }));
        // A second bad machine (also blamed on the worker) only counts: no quarantine.
        s = fail(&s, false, Blame::Worker);
        assert!(matches!(s, ShardState::Pending { .. }), "{s:?}");
        assert_eq!(s.failures(), 1);
    }

    #[test]
    fn counted_failures_quarantine_at_the_limit_and_releases_cost_nothing() {
        let now = t0();
        let mut s = ShardState::default();
        for round in 1..=3u32 {
            s = lease(&s, "w", now + Duration::from_secs(9));
            // A release first: no failure, the attempt number still moves on.
            s = transition(
                &s,
                &Event::Released {
                    attempt: 2 * round - 1,
                },
                3,
            )
            .expect("release");
            s = lease(&s, "w", now + Duration::from_secs(9));
            s = transition(
                &s,
                &Event::Failed {
                    attempt: 2 * round,
                    retryable: true,
                    counted: true,
                    blame: Blame::Shard,
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
                last_error: "bad 3".into(),
                failed_on: vec!["w".into()],
            }
        );
    }

    #[test]
    fn a_non_retryable_failure_on_one_worker_retries_and_a_late_commit_still_wins() {
        let now = t0();
        let s = lease(&ShardState::default(), "w", now);
        let q = fail(&s, false, Blame::Shard);
        assert!(matches!(q, ShardState::Pending { .. }), "{q:?}");
        assert_eq!(q.failures(), 1);
        let q = fail(&lease(&q, "v", now), false, Blame::Shard);
        assert!(matches!(q, ShardState::Quarantined { .. }), "{q:?}");
        let c = transition(&q, &Event::Committed { attempt: 1 }, 5).expect("commit");
        assert_eq!(
            c,
            ShardState::Committed {
                attempt: 1,
                attempts: 2
            }
        );
    }

    #[test]
    fn an_expired_attempt_that_commits_first_wins_over_the_new_lease() {
        let now = t0();
        let s = lease(&ShardState::default(), "slow", now);
        let s = tick(&s, now + Duration::from_secs(1));
        let s = lease(&s, "fast", now + Duration::from_secs(60));
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
