//! The bootstrap run's state machine: one enum, one transition function.
//!
//! ```text
//!            +--------------------------------------------------------------+
//!            v                                                              |
//! Planning(r) --planned--> Serving(r) --manifest--> ManifestWritten(r) --next--+--(r = N)--> Done(r)
//!                                                          |                     ^
//!                                                          | (r < N)             | more rounds asked
//!                                                          v                     |  (Done -> Training)
//!                                                     Training(r) --trained--> Evaluating(r)
//!                                                                                 |
//!                                                                  evaluated      v
//!            Planning(r+1) <--next-- Promoted(r) <--gate(yes)-- Gating(r) --gate(no)--> Stopped(r)
//!
//! any non-final phase --error--> Failed(r, at) --resume--> at
//! ```
//!
//! Every phase change is recorded in `{output}/_run.json` before the next phase's work starts,
//! so a coordinator started again after a crash enters the recorded phase and redoes only that
//! phase's idempotent work (a re-opened round rebuilds its state from the commit records; the
//! trainer stage reuses finished checkpoints and bundles; a recorded gate decision is read back,
//! never taken twice).

use serde::{Deserialize, Serialize};

/// Where a bootstrap run is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum RunPhase {
    /// Round `round` is being planned (input footers read, plan recorded).
    Planning {
        /// Round number.
        round: u32,
    },
    /// Round `round`'s shards are leased to whatever workers are connected.
    Serving {
        /// Round number.
        round: u32,
    },
    /// Round `round`'s manifest is in the store.
    ManifestWritten {
        /// Round number.
        round: u32,
    },
    /// The trainer stage builds new bundles from the seed set and round `round`'s cleaned set.
    Training {
        /// Round number.
        round: u32,
    },
    /// The current and the new bundles are evaluated on the held-out split.
    Evaluating {
        /// Round number.
        round: u32,
    },
    /// The promotion gate compares the new bundles with the current ones.
    Gating {
        /// Round number.
        round: u32,
    },
    /// Round `round`'s retrained bundles were promoted; round `round + 1` uses them.
    Promoted {
        /// Round number.
        round: u32,
    },
    /// Every requested round is finished.
    Done {
        /// The last round.
        round: u32,
    },
    /// The gate refused round `round`'s retrained bundles: the run stops here.
    Stopped {
        /// Round number.
        round: u32,
    },
    /// A phase failed (trainer error, store error); starting the coordinator again resumes at
    /// the phase that failed.
    Failed {
        /// Round number.
        round: u32,
        /// What went wrong.
        error: String,
        /// The phase that failed.
        at: Box<RunPhase>,
    },
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEvent {
    /// The round's plan is recorded and its state rebuilt; leases can be served.
    Planned,
    /// The round's manifest is written.
    ManifestWritten,
    /// Move on after a finished round or a promotion.
    Next,
    /// The trainer stage produced and verified the new bundles.
    Trained,
    /// Figures of both bundle pairs are known.
    Evaluated,
    /// The gate's decision.
    Gate {
        /// Whether the new bundles were promoted.
        promoted: bool,
    },
    /// The phase's work failed.
    Error(String),
    /// Retry the failed phase (a new coordinator process).
    Resume,
}

/// A transition the state machine does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("run phase {from}: event {event} is not allowed")]
pub struct InvalidTransition {
    /// Phase name.
    pub from: &'static str,
    /// Event name.
    pub event: &'static str,
}

/// Every phase name [`RunPhase::name`] returns, in the order a run passes them.
pub const PHASE_NAMES: &[&str] = &[
    "planning",
    "serving",
    "manifest_written",
    "training",
    "evaluating",
    "gating",
    "promoted",
    "done",
    "stopped",
    "failed",
];

impl RunPhase {
    /// The phase's name as `_run.json`, status and logs show it.
    pub fn name(&self) -> &'static str {
        match self {
            RunPhase::Planning { .. } => "planning",
            RunPhase::Serving { .. } => "serving",
            RunPhase::ManifestWritten { .. } => "manifest_written",
            RunPhase::Training { .. } => "training",
            RunPhase::Evaluating { .. } => "evaluating",
            RunPhase::Gating { .. } => "gating",
            RunPhase::Promoted { .. } => "promoted",
            RunPhase::Done { .. } => "done",
            RunPhase::Stopped { .. } => "stopped",
            RunPhase::Failed { .. } => "failed",
        }
    }

    /// The round the phase is about.
    pub fn round(&self) -> u32 {
        match self {
            RunPhase::Planning { round }
            | RunPhase::Serving { round }
            | RunPhase::ManifestWritten { round }
            | RunPhase::Training { round }
            | RunPhase::Evaluating { round }
            | RunPhase::Gating { round }
            | RunPhase::Promoted { round }
            | RunPhase::Done { round }
            | RunPhase::Stopped { round }
            | RunPhase::Failed { round, .. } => *round,
        }
    }

    /// Done or stopped by the gate: nothing more happens in this run.
    pub fn is_final(&self) -> bool {
        matches!(self, RunPhase::Done { .. } | RunPhase::Stopped { .. })
    }
}

impl RunEvent {
    fn name(&self) -> &'static str {
        match self {
            RunEvent::Planned => "planned",
            RunEvent::ManifestWritten => "manifest_written",
            RunEvent::Next => "next",
            RunEvent::Trained => "trained",
            RunEvent::Evaluated => "evaluated",
            RunEvent::Gate { .. } => "gate",
            RunEvent::Error(_) => "error",
            RunEvent::Resume => "resume",
        }
    }
}

/// The phase after `event` in `phase`, for a run of `rounds` rounds.
///
/// `Done` takes `Next` when more rounds are asked for than it finished (the same output run
/// again with a larger `--rounds`): the run goes on with the trainer stage after its last round.
pub fn transition(
    phase: &RunPhase,
    event: &RunEvent,
    rounds: u32,
) -> Result<RunPhase, InvalidTransition> {
    use RunEvent as E;
    use RunPhase as P;
    let next = match (phase, event) {
        (P::Planning { round }, E::Planned) => P::Serving { round: *round },
        (P::Serving { round }, E::ManifestWritten) => P::ManifestWritten { round: *round },
        (P::ManifestWritten { round }, E::Next) if *round >= rounds => P::Done { round: *round },
        (P::ManifestWritten { round }, E::Next) => P::Training { round: *round },
        (P::Training { round }, E::Trained) => P::Evaluating { round: *round },
        (P::Evaluating { round }, E::Evaluated) => P::Gating { round: *round },
        (P::Gating { round }, E::Gate { promoted: true }) => P::Promoted { round: *round },
        (P::Gating { round }, E::Gate { promoted: false }) => P::Stopped { round: *round },
        (P::Promoted { round }, E::Next) => P::Planning { round: round + 1 },
        (P::Done { round }, E::Next) if *round < rounds => P::Training { round: *round },
        (P::Failed { at, .. }, E::Resume) => (**at).clone(),
        (p, E::Error(error)) if !p.is_final() && !matches!(p, P::Failed { .. }) => P::Failed {
            round: p.round(),
            error: error.clone(),
            at: Box::new(p.clone()),
        },
        (p, e) => {
            return Err(InvalidTransition {
                from: p.name(),
                event: e.name(),
            });
        }
    };
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phases() -> Vec<RunPhase> {
        let r = 1;
        vec![
            RunPhase::Planning { round: r },
            RunPhase::Serving { round: r },
            RunPhase::ManifestWritten { round: r },
            RunPhase::ManifestWritten { round: 2 },
            RunPhase::Training { round: r },
            RunPhase::Evaluating { round: r },
            RunPhase::Gating { round: r },
            RunPhase::Promoted { round: r },
            RunPhase::Done { round: r },
            RunPhase::Done { round: 2 },
            RunPhase::Stopped { round: r },
            RunPhase::Failed {
                round: r,
                error: "x".into(),
                at: Box::new(RunPhase::Training { round: r }),
            },
        ]
    }

    #[test]
    fn phase_names_lists_every_phase_once() {
        let mut names: Vec<&str> = phases().iter().map(RunPhase::name).collect();
        names.dedup();
        assert_eq!(names, PHASE_NAMES);
    }

    fn events() -> Vec<RunEvent> {
        vec![
            RunEvent::Planned,
            RunEvent::ManifestWritten,
            RunEvent::Next,
            RunEvent::Trained,
            RunEvent::Evaluated,
            RunEvent::Gate { promoted: true },
            RunEvent::Gate { promoted: false },
            RunEvent::Error("boom".into()),
            RunEvent::Resume,
        ]
    }

    /// The expected outcome of every (phase, event) pair in a 2-round run.
    fn expected(p: &RunPhase, e: &RunEvent) -> Option<RunPhase> {
        use RunEvent as E;
        use RunPhase as P;
        match (p, e) {
            (P::Planning { round: 1 }, E::Planned) => Some(P::Serving { round: 1 }),
            (P::Serving { round: 1 }, E::ManifestWritten) => Some(P::ManifestWritten { round: 1 }),
            (P::ManifestWritten { round: 1 }, E::Next) => Some(P::Training { round: 1 }),
            (P::ManifestWritten { round: 2 }, E::Next) => Some(P::Done { round: 2 }),
            (P::Training { round: 1 }, E::Trained) => Some(P::Evaluating { round: 1 }),
            (P::Evaluating { round: 1 }, E::Evaluated) => Some(P::Gating { round: 1 }),
            (P::Gating { round: 1 }, E::Gate { promoted: true }) => Some(P::Promoted { round: 1 }),
            (P::Gating { round: 1 }, E::Gate { promoted: false }) => Some(P::Stopped { round: 1 }),
            (P::Promoted { round: 1 }, E::Next) => Some(P::Planning { round: 2 }),
            (P::Done { round: 1 }, E::Next) => Some(P::Training { round: 1 }),
            (P::Failed { .. }, E::Resume) => Some(P::Training { round: 1 }),
            (
                P::Planning { .. }
                | P::Serving { .. }
                | P::ManifestWritten { .. }
                | P::Training { .. }
                | P::Evaluating { .. }
                | P::Gating { .. }
                | P::Promoted { .. },
                E::Error(msg),
            ) => Some(P::Failed {
                round: p.round(),
                error: msg.clone(),
                at: Box::new(p.clone()),
            }),
            _ => None,
        }
    }

    #[test]
    fn every_phase_and_event_pair() {
        let mut checked = 0;
        for p in phases() {
            for e in events() {
                let got = transition(&p, &e, 2).ok();
                assert_eq!(got, expected(&p, &e), "{p:?} + {e:?}");
                checked += 1;
            }
        }
        assert_eq!(checked, 12 * 9);
    }

    #[test]
    fn a_two_round_run_walks_every_phase_in_order() {
        let mut p = RunPhase::Planning { round: 1 };
        let mut names = vec![p.name()];
        for e in [
            RunEvent::Planned,
            RunEvent::ManifestWritten,
            RunEvent::Next,
            RunEvent::Trained,
            RunEvent::Evaluated,
            RunEvent::Gate { promoted: true },
            RunEvent::Next,
            RunEvent::Planned,
            RunEvent::ManifestWritten,
            RunEvent::Next,
        ] {
            p = transition(&p, &e, 2).expect("allowed");
            names.push(p.name());
        }
        assert_eq!(p, RunPhase::Done { round: 2 });
        assert_eq!(
            names,
            [
                "planning",
                "serving",
                "manifest_written",
                "training",
                "evaluating",
                "gating",
                "promoted",
                "planning",
                "serving",
                "manifest_written",
                "done"
            ]
        );
    }

    #[test]
    fn phases_round_trip_through_json() {
        for p in phases() {
            let json = serde_json::to_string(&p).expect("serialises");
            assert!(
                json.contains(&format!("\"phase\":\"{}\"", p.name())),
                "{json}"
            );
            let back: RunPhase = serde_json::from_str(&json).expect("parses");
            assert_eq!(back, p);
        }
    }
}
