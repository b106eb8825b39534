//! One bootstrap round's scheduling state: the plan, each shard's [`ShardState`], the commit
//! records seen, and the manifest written when every shard is committed or quarantined.
//!
//! The state lives in memory; the output store is the source of truth. [`Round::open`] plans
//! the input (deterministic ids) and marks every shard that has `_commits/{shard}.json` as
//! committed, so a restarted coordinator redoes no committed shard.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use capfilt_schemas::mapping::ColumnMapping;
use capfilt_schemas::records::{
    AttemptsRecord, BundleUse, CapfiltParams, CommitRecord, FinalShardState, RECORD_FORMAT_VERSION,
    RoundManifest, ShardCounts, ShardOutcome, ShardRef,
};
use capfilt_schemas::store::{self, Location, StoreError};
use futures::TryStreamExt;

use crate::planner::{self, Plan, PlanError};
use crate::registry::unix_ms;
use crate::shard::{Blame, Event, History, ShardState, transition};

/// What a round runs on and with.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundSpec {
    /// Round number (1-based).
    pub round: u32,
    /// Input prefix or file URL.
    pub input: String,
    /// The round's output prefix (`{output}/round-{r:04}`).
    pub output: String,
    /// Input column mapping.
    pub mapping: ColumnMapping,
    /// Target rows per shard.
    pub target_shard_rows: u64,
    /// Captioner bundle.
    pub captioner: BundleUse,
    /// Filter bundle.
    pub filter: BundleUse,
    /// CapFilt parameters.
    pub params: CapfiltParams,
    /// Images per inference batch on workers.
    pub batch_size: u32,
    /// Counted failures (including lost leases) before a shard is quarantined.
    pub max_failures: u32,
    /// Extra object-store options.
    pub store_options: Vec<(String, String)>,
}

/// Round errors.
#[derive(Debug, thiserror::Error)]
pub enum RoundError {
    /// Planning failed.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// Store access failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The round was opened before with another plan.
    #[error(
        "{path} records round {round}'s plan as {recorded}, but this run plans {now} ({field} differs): resume with the recorded settings, or write to a new --output"
    )]
    PlanChanged {
        /// The plan record.
        path: String,
        /// Round.
        round: u32,
        /// The setting that differs first.
        field: &'static str,
        /// The recorded plan, summarised.
        recorded: String,
        /// This run's plan, summarised.
        now: String,
    },
    /// A commit record does not belong to the recorded plan or the round's bundles.
    #[error(
        "commit record {path} does not match round {round}: {message}; refusing to count it (move it away if it came from another run)"
    )]
    CommitMismatch {
        /// Where.
        path: String,
        /// Round.
        round: u32,
        /// What differs.
        message: String,
    },
    /// A commit record is unreadable.
    #[error("commit record {path}: {message}")]
    BadCommit {
        /// Where.
        path: String,
        /// Why.
        message: String,
    },
}

/// A shard granted to a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Granted {
    /// The shard.
    pub shard: ShardRef,
    /// Attempt number.
    pub attempt: u32,
    /// Deadline, Unix ms.
    pub deadline_unix_ms: u64,
}

/// Why a worker must drop a lease it reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    /// The lease expired (or belongs to another attempt now).
    Expired,
    /// The shard is committed already.
    Committed,
    /// Not a shard of this round.
    Unknown,
}

/// A round being scheduled.
#[derive(Debug)]
pub struct Round {
    spec: RoundSpec,
    out: Location,
    plan: Plan,
    states: Vec<ShardState>,
    index: HashMap<String, usize>,
    /// Counts of each committed shard, by plan index (all the manifest needs of a commit
    /// record: a round of 100,000 shards does not keep 100,000 records in memory).
    commits: HashMap<usize, ShardCounts>,
    manifest_written: bool,
    /// Shards whose scheduling history changed since the last [`Round::take_attempts`].
    dirty: std::collections::BTreeSet<usize>,
    /// Indexes kept beside `states` so that no call scans the whole plan: pending shards (in
    /// plan order), leased shards, shards per state, and rows of committed shards.
    pending: std::collections::BTreeSet<usize>,
    leased: std::collections::BTreeSet<usize>,
    per_state: [usize; 4],
    committed_rows: u64,
    planned_rows: u64,
    /// Commits applied so far: a manifest built before the latest one is stale.
    commits_applied: u64,
}

fn state_slot(s: &ShardState) -> usize {
    match s {
        ShardState::Pending { .. } => 0,
        ShardState::Leased { .. } => 1,
        ShardState::Committed { .. } => 2,
        ShardState::Quarantined { .. } => 3,
    }
}

/// `{round}/_plan.json`: the plan a round was opened with, created once (create-only) and
/// compared on every later open, so a resumed round never maps commit records onto a
/// different plan.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PlanRecord {
    /// [`RECORD_FORMAT_VERSION`].
    pub format_version: u32,
    /// Round.
    pub round: u32,
    /// Input prefix.
    pub input_url: String,
    /// Target rows per shard.
    pub target_shard_rows: u64,
    /// Column mapping.
    pub mapping: ColumnMapping,
    /// sha256 of the captioner's bundle.json.
    pub captioner_sha256: String,
    /// sha256 of the filter's bundle.json.
    pub filter_sha256: String,
    /// CapFilt parameters.
    pub params: CapfiltParams,
    /// The shards.
    pub shards: Vec<ShardRef>,
}

impl PlanRecord {
    fn of(spec: &RoundSpec, plan: &Plan) -> Self {
        Self {
            format_version: RECORD_FORMAT_VERSION,
            round: spec.round,
            input_url: spec.input.clone(),
            target_shard_rows: spec.target_shard_rows,
            mapping: spec.mapping.clone(),
            captioner_sha256: spec.captioner.bundle_json_sha256.clone(),
            filter_sha256: spec.filter.bundle_json_sha256.clone(),
            params: spec.params.clone(),
            shards: plan.shards.clone(),
        }
    }

    fn summary(&self) -> String {
        format!(
            "input {}, target_shard_rows {}, {} shards, captioner {:.12}, filter {:.12}",
            self.input_url,
            self.target_shard_rows,
            self.shards.len(),
            self.captioner_sha256,
            self.filter_sha256
        )
    }

    /// The first field that differs from `other`.
    fn first_difference(&self, other: &PlanRecord) -> Option<&'static str> {
        if self.input_url != other.input_url {
            Some("input")
        } else if self.target_shard_rows != other.target_shard_rows {
            Some("target_shard_rows")
        } else if self.mapping != other.mapping {
            Some("column mapping")
        } else if self.captioner_sha256 != other.captioner_sha256 {
            Some("captioner bundle")
        } else if self.filter_sha256 != other.filter_sha256 {
            Some("filter bundle")
        } else if self.params != other.params {
            Some("capfilt parameters")
        } else if self.shards != other.shards {
            Some("input files (the listing changed)")
        } else if self.round != other.round {
            Some("round")
        } else {
            None
        }
    }
}

/// Every object under `dir`.
async fn list(dir: &Location) -> Result<Vec<object_store::ObjectMeta>, StoreError> {
    dir.store
        .list(Some(&dir.path))
        .try_collect()
        .await
        .map_err(|source| StoreError::Io {
            operation: "listing",
            location: dir.display.clone(),
            source,
        })
}

/// Path of a shard's scheduling history under the round prefix.
pub fn attempts_path(shard_id: &str) -> String {
    format!("_attempts/{shard_id}.json")
}

/// Writes `_attempts/` records from [`Round::take_attempts`]; returns the shards whose record
/// could not be written (hand them to [`Round::retry_attempts`]).
pub async fn write_attempts(records: Vec<(usize, Location, Vec<u8>)>) -> Vec<usize> {
    let mut failed = Vec::new();
    for (i, loc, json) in records {
        if let Err(e) = loc.put_bytes(json).await {
            tracing::warn!(record = %loc.display, error = %e, "writing a shard's attempts record failed; retrying at the next sweep");
            failed.push(i);
        }
    }
    failed
}

/// Path of a shard's commit record under the round prefix.
pub fn commit_path(shard_id: &str) -> String {
    format!("_commits/{shard_id}.json")
}

impl Round {
    /// Plans the round and rebuilds its state from the commit records already in the store.
    pub async fn open(spec: RoundSpec) -> Result<Round, RoundError> {
        let input = store::resolve(&spec.input, &spec.store_options)?;
        let plan = planner::plan(&input, &spec.mapping, spec.target_shard_rows).await?;
        let out = store::resolve(&spec.output, &spec.store_options)?;
        store::verify_create_only(&out).await?;
        let wanted = PlanRecord::of(&spec, &plan);
        let plan_loc = out.child("_plan.json");
        let (recorded, _) =
            crate::bootstrap::record::create_json(&plan_loc, wanted.clone()).await?;
        if let Some(field) = recorded.first_difference(&wanted) {
            return Err(RoundError::PlanChanged {
                path: plan_loc.display.clone(),
                round: spec.round,
                field,
                recorded: recorded.summary(),
                now: wanted.summary(),
            });
        }
        let index = plan
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| (s.shard_id.clone(), i))
            .collect();
        let mut round = Round {
            states: vec![ShardState::default(); plan.shards.len()],
            spec,
            out,
            plan,
            index,
            commits: HashMap::new(),
            manifest_written: false,
            dirty: Default::default(),
            pending: Default::default(),
            leased: Default::default(),
            per_state: [0; 4],
            committed_rows: 0,
            planned_rows: 0,
            commits_applied: 0,
        };
        round.planned_rows = round.plan.rows();
        round.pending = (0..round.states.len()).collect();
        round.per_state[0] = round.states.len();
        for meta in list(&round.out.child("_commits")).await? {
            let Some(name) = meta.location.filename() else {
                continue;
            };
            let Some(shard_id) = name.strip_suffix(".json") else {
                continue;
            };
            if let Some(&i) = round.index.get(shard_id) {
                let record = round.read_commit(shard_id).await?;
                let short = record.counts.rows_in != round.plan.shards[i].num_rows;
                match round.check_commit(&record, i) {
                    Ok(()) => {
                        round.record_commit(record, false);
                    }
                    // A record of this plan and these bundles that leaves rows out (an older
                    // worker's): the shard is given up with the reason, as when it arrives live;
                    // moving the record away redoes the shard.
                    Err(e) if short && round.check_origin(&record, i).is_none() => {
                        tracing::error!(error = %e, "a commit record that leaves rows out");
                        round.set_state(
                            i,
                            ShardState::Quarantined {
                                attempts: record.attempt,
                                last_error: format!("{e}; move it away to redo the shard"),
                                failed_on: Vec::new(),
                            },
                        );
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        for meta in list(&round.out.child("_attempts")).await? {
            let Some(shard_id) = meta
                .location
                .filename()
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            let loc = round.out.child(&attempts_path(shard_id));
            let bytes = loc.get_bytes().await?;
            let record: AttemptsRecord =
                serde_json::from_slice(&bytes).map_err(|e| RoundError::BadCommit {
                    path: loc.display.clone(),
                    message: format!("{e} (delete it to reset the shard's attempts)"),
                })?;
            round.restore_attempts(record);
        }
        let committed = round.count("committed");
        tracing::info!(
            round = round.spec.round,
            shards = round.states.len(),
            committed,
            "round state rebuilt from the output store"
        );
        Ok(round)
    }

    /// Refuses a commit record that belongs to another plan or other bundles, or that does not
    /// account for every planned row.
    fn check_commit(&self, record: &CommitRecord, i: usize) -> Result<(), RoundError> {
        let planned = &self.plan.shards[i];
        let message = self.check_origin(record, i).or_else(|| {
            (record.counts.rows_in != planned.num_rows).then(|| {
                format!(
                    "it accounts for {} of the shard's {} rows",
                    record.counts.rows_in, planned.num_rows
                )
            })
        });
        match message {
            Some(message) => Err(RoundError::CommitMismatch {
                path: self.out.child(&commit_path(&planned.shard_id)).display,
                round: self.spec.round,
                message,
            }),
            None => Ok(()),
        }
    }

    /// Why a commit record belongs to another plan, other bundles or another round, if it does.
    fn check_origin(&self, record: &CommitRecord, i: usize) -> Option<String> {
        let planned = &self.plan.shards[i];
        let spec = &self.spec;
        if record.shard != *planned {
            Some(format!(
                "it covers {} row groups {}+{} ({} rows), the recorded plan has {} row groups {}+{} ({} rows)",
                record.shard.file,
                record.shard.first_row_group,
                record.shard.num_row_groups,
                record.shard.num_rows,
                planned.file,
                planned.first_row_group,
                planned.num_row_groups,
                planned.num_rows
            ))
        } else if record.captioner_sha256 != spec.captioner.bundle_json_sha256
            || record.filter_sha256 != spec.filter.bundle_json_sha256
        {
            Some(format!(
                "it was made with captioner {:.12} / filter {:.12}, the round runs {:.12} / {:.12}",
                record.captioner_sha256,
                record.filter_sha256,
                spec.captioner.bundle_json_sha256,
                spec.filter.bundle_json_sha256
            ))
        } else if record.round != spec.round {
            Some(format!("it is a round {} record", record.round))
        } else {
            None
        }
    }

    /// The spec.
    pub fn spec(&self) -> &RoundSpec {
        &self.spec
    }

    /// The plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Shards and their states.
    pub fn shards(&self) -> impl Iterator<Item = (&ShardRef, &ShardState)> {
        self.plan.shards.iter().zip(&self.states)
    }

    /// Shards in state `name`.
    pub fn count(&self, name: &str) -> usize {
        match name {
            "pending" => self.per_state[0],
            "leased" => self.per_state[1],
            "committed" => self.per_state[2],
            "quarantined" => self.per_state[3],
            _ => 0,
        }
    }

    /// Rows of the plan.
    pub fn planned_rows(&self) -> u64 {
        self.planned_rows
    }

    /// Rows of committed shards.
    pub fn rows_committed(&self) -> u64 {
        self.committed_rows
    }

    /// Rows reported done by the workers holding leases.
    pub fn rows_in_progress(&self) -> u64 {
        self.leased
            .iter()
            .map(|&i| match &self.states[i] {
                ShardState::Leased { rows_done, .. } => *rows_done,
                _ => 0,
            })
            .sum()
    }

    /// Every shard committed or quarantined.
    pub fn is_done(&self) -> bool {
        self.per_state[0] + self.per_state[1] == 0
    }

    /// Puts shard `i` in state `next`, keeping the indexes in step.
    fn set_state(&mut self, i: usize, next: ShardState) {
        let (from, to) = (state_slot(&self.states[i]), state_slot(&next));
        if from != to {
            self.per_state[from] -= 1;
            self.per_state[to] += 1;
            let rows = self.plan.shards[i].num_rows;
            match from {
                0 => {
                    self.pending.remove(&i);
                }
                1 => {
                    self.leased.remove(&i);
                }
                2 => self.committed_rows -= rows,
                _ => {}
            }
            match to {
                0 => {
                    self.pending.insert(i);
                }
                1 => {
                    self.leased.insert(i);
                }
                2 => self.committed_rows += rows,
                _ => {}
            }
        }
        self.states[i] = next;
    }

    /// Whether the manifest is written.
    pub fn manifest_written(&self) -> bool {
        self.manifest_written
    }

    fn apply(&mut self, i: usize, event: &Event) -> bool {
        match transition(&self.states[i], event, self.spec.max_failures) {
            Ok(next) => {
                let from = self.states[i].name();
                match event {
                    Event::Lease { .. } => {
                        metrics::counter!(crate::metrics::LEASES_GRANTED).increment(1)
                    }
                    Event::Tick { .. } if from == "leased" && next.name() != from => {
                        metrics::counter!(crate::metrics::LEASES_EXPIRED).increment(1)
                    }
                    _ => {}
                }
                if next.name() != self.states[i].name() {
                    tracing::debug!(shard = %self.plan.shards[i].shard_id, from = self.states[i].name(), to = next.name(), "shard state");
                }
                if let ShardState::Quarantined { last_error, .. } = &next
                    && !matches!(self.states[i], ShardState::Quarantined { .. })
                {
                    tracing::warn!(shard = %self.plan.shards[i].shard_id, error = %last_error, "shard quarantined");
                    metrics::counter!(crate::metrics::SHARDS_QUARANTINED).increment(1);
                }
                // Failures and quarantine are persisted (not every lease: attempt numbers need
                // not survive a restart, file names are unique per attempt anyway).
                let persist = next.history() != self.states[i].history()
                    && !matches!(next, ShardState::Committed { .. })
                    && !matches!(next, ShardState::Leased { .. });
                if persist {
                    self.dirty.insert(i);
                }
                self.set_state(i, next);
                true
            }
            Err(_) => false,
        }
    }

    /// The `_attempts/{shard}.json` records of shards whose history changed since the last
    /// call, to be written by the caller (outside any lock): where, and the JSON.
    pub fn take_attempts(&mut self) -> Vec<(usize, Location, Vec<u8>)> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .filter_map(|i| {
                let shard_id = &self.plan.shards[i].shard_id;
                let record = match &self.states[i] {
                    ShardState::Pending { attempts, history }
                    | ShardState::Leased {
                        attempt: attempts,
                        history,
                        ..
                    } => AttemptsRecord {
                        format_version: RECORD_FORMAT_VERSION,
                        round: self.spec.round,
                        shard_id: shard_id.clone(),
                        attempts: *attempts,
                        failures: history.failures,
                        last_error: history.last_error.clone(),
                        failed_on: history.failed_on.clone(),
                        unstarted_expiries: history.unstarted_expiries,
                        quarantined: false,
                    },
                    ShardState::Quarantined {
                        attempts,
                        last_error,
                        failed_on,
                    } => AttemptsRecord {
                        format_version: RECORD_FORMAT_VERSION,
                        round: self.spec.round,
                        shard_id: shard_id.clone(),
                        attempts: *attempts,
                        failures: 0,
                        last_error: Some(last_error.clone()),
                        failed_on: failed_on.clone(),
                        unstarted_expiries: 0,
                        quarantined: true,
                    },
                    // The commit record speaks for a committed shard.
                    ShardState::Committed { .. } => return None,
                };
                let json = serde_json::to_vec_pretty(&record).ok()?;
                Some((i, self.out.child(&attempts_path(shard_id)), json))
            })
            .collect()
    }

    /// Restores a shard's history from its `_attempts/` record (a shard with a commit record
    /// is committed whatever the record says).
    fn restore_attempts(&mut self, record: AttemptsRecord) {
        let Some(&i) = self.index.get(&record.shard_id) else {
            return;
        };
        if !matches!(self.states[i], ShardState::Pending { .. }) {
            return;
        }
        let next = if record.quarantined {
            ShardState::Quarantined {
                attempts: record.attempts,
                last_error: record.last_error.unwrap_or_default(),
                failed_on: record.failed_on,
            }
        } else {
            ShardState::Pending {
                attempts: record.attempts,
                history: History {
                    failures: record.failures,
                    last_error: record.last_error,
                    failed_on: record.failed_on,
                    unstarted_expiries: record.unstarted_expiries,
                },
            }
        };
        self.set_state(i, next);
    }

    /// Leases up to `n` pending shards to `worker`, in plan order. A shard that failed on
    /// `worker` before is left alone while `elsewhere` says another worker can take it.
    pub fn lease(
        &mut self,
        worker: &str,
        n: usize,
        now: Instant,
        timeout: Duration,
        elsewhere: &dyn Fn(&History) -> bool,
    ) -> Vec<Granted> {
        let mut out = Vec::new();
        let mut skipped = Vec::new();
        while out.len() < n {
            // The first pending shard not skipped yet (the set changes as shards are leased).
            let next = match skipped.last() {
                None => self.pending.first().copied(),
                Some(&after) => self.pending.range(after + 1..).next().copied(),
            };
            let Some(i) = next else { break };
            if let ShardState::Pending { history, .. } = &self.states[i]
                && history.failed_on(worker)
                && elsewhere(history)
            {
                skipped.push(i);
                continue;
            }
            let event = Event::Lease {
                worker: worker.to_string(),
                deadline: now + timeout,
            };
            if self.apply(i, &event) {
                out.push(Granted {
                    shard: self.plan.shards[i].clone(),
                    attempt: self.states[i].attempts(),
                    deadline_unix_ms: unix_ms() + timeout.as_millis() as u64,
                });
            } else {
                skipped.push(i);
            }
        }
        out
    }

    /// A worker's heartbeat for its lease of `shard_id` attempt `attempt`: extended, or the
    /// reason the worker must drop it.
    #[allow(clippy::too_many_arguments)]
    pub fn heartbeat(
        &mut self,
        worker: &str,
        shard_id: &str,
        attempt: u32,
        rows_done: u64,
        started: bool,
        now: Instant,
        timeout: Duration,
    ) -> Option<Cancel> {
        let Some(&i) = self.index.get(shard_id) else {
            return Some(Cancel::Unknown);
        };
        let event = Event::Heartbeat {
            worker: worker.to_string(),
            attempt,
            rows_done,
            started,
            deadline: now + timeout,
        };
        if self.apply(i, &event) {
            return None;
        }
        match self.states[i] {
            ShardState::Committed { .. } => Some(Cancel::Committed),
            _ => Some(Cancel::Expired),
        }
    }

    /// A failure report; false if it is not about the shard's current lease.
    pub fn fail(
        &mut self,
        shard_id: &str,
        attempt: u32,
        retryable: bool,
        counted: bool,
        blame: Blame,
        error: &str,
    ) -> bool {
        let Some(&i) = self.index.get(shard_id) else {
            return false;
        };
        self.apply(
            i,
            &Event::Failed {
                attempt,
                retryable,
                counted,
                blame,
                error: error.to_string(),
            },
        )
    }

    /// A lease given back unfinished.
    pub fn release(&mut self, shard_id: &str, attempt: u32) -> bool {
        let Some(&i) = self.index.get(shard_id) else {
            return false;
        };
        self.apply(i, &Event::Released { attempt })
    }

    /// Expires leases past their deadline.
    pub fn tick(&mut self, now: Instant) {
        let leased: Vec<usize> = self.leased.iter().copied().collect();
        for i in leased {
            self.apply(i, &Event::Tick { now });
        }
    }

    /// Whether `shard_id` belongs to this round.
    pub fn has_shard(&self, shard_id: &str) -> bool {
        self.index.contains_key(shard_id)
    }

    /// The round's output location.
    pub fn output(&self) -> &Location {
        &self.out
    }

    /// Reads `_commits/{shard}.json`.
    pub async fn read_commit(&self, shard_id: &str) -> Result<CommitRecord, RoundError> {
        read_commit(&self.out, shard_id).await
    }

    /// Records a commit read from the store.
    pub fn apply_commit(&mut self, record: CommitRecord) -> bool {
        self.record_commit(record, true)
    }

    /// Applies a commit record; `live` commits (reported now, not found on a rebuild) are
    /// counted in the metrics.
    fn record_commit(&mut self, record: CommitRecord, live: bool) -> bool {
        let Some(&i) = self.index.get(&record.shard.shard_id) else {
            return false;
        };
        if live && let Err(e) = self.check_commit(&record, i) {
            // No later attempt can commit over it: give the shard up, saying why.
            tracing::error!(error = %e, "a commit record that does not belong to this round");
            let attempts = self.states[i].attempts();
            self.set_state(
                i,
                ShardState::Quarantined {
                    attempts,
                    last_error: e.to_string(),
                    failed_on: Vec::new(),
                },
            );
            self.dirty.insert(i);
            return false;
        }
        let was_committed = matches!(self.states[i], ShardState::Committed { .. });
        let applied = self.apply(
            i,
            &Event::Committed {
                attempt: record.attempt,
            },
        );
        if applied && !was_committed {
            self.commits_applied += 1;
            if self.manifest_written {
                // A late commit of a shard the manifest gave up on: written again.
                tracing::info!(shard = %record.shard.shard_id, "late commit after the manifest; rewriting it");
                self.manifest_written = false;
            }
        }
        if applied {
            if live {
                crate::metrics::commit_counted(&record.counts);
            }
            self.commits.insert(i, record.counts);
        }
        applied
    }

    /// The manifest of the finished round.
    pub fn manifest(&self) -> RoundManifest {
        let mut totals = ShardCounts::default();
        let mut shards = Vec::with_capacity(self.states.len());
        for (i, (shard, state)) in self.shards().enumerate() {
            let commit = self.commits.get(&i);
            if let Some(c) = commit {
                totals.add(c);
            }
            shards.push(ShardOutcome {
                shard: shard.clone(),
                state: if matches!(state, ShardState::Committed { .. }) {
                    FinalShardState::Committed
                } else {
                    FinalShardState::Quarantined
                },
                attempts: state.attempts(),
                commit: commit.map(|_| commit_path(&shard.shard_id)),
                counts: commit.cloned(),
                last_error: state.last_error().map(str::to_string),
            });
        }
        RoundManifest {
            format_version: RECORD_FORMAT_VERSION,
            round: self.spec.round,
            created_unix_ms: unix_ms(),
            input_url: self.spec.input.clone(),
            inputs: self.plan.inputs.clone(),
            mapping: self.spec.mapping.clone(),
            target_shard_rows: self.spec.target_shard_rows,
            captioner: self.spec.captioner.clone(),
            filter: self.spec.filter.clone(),
            params: self.spec.params.clone(),
            shards,
            web_keep_rate: totals.web_keep_rate(),
            synthetic_keep_rate: totals.synthetic_keep_rate(),
            totals,
        }
    }

    /// Notes that the manifest is in the store.
    pub fn mark_manifest_written(&mut self) {
        self.manifest_written = true;
    }

    /// Commits applied so far (take it with [`Round::manifest`]).
    pub fn commits_applied(&self) -> u64 {
        self.commits_applied
    }

    /// Notes that the manifest built when `commits_applied` commits had been applied is in the
    /// store; false (and nothing noted) when a commit landed since, so it is built again.
    pub fn mark_manifest_written_as_of(&mut self, commits_applied: u64) -> bool {
        let current = self.commits_applied == commits_applied;
        if current {
            self.manifest_written = true;
        }
        current
    }

    /// Shards whose `_attempts/` record could not be written: written again at the next sweep.
    pub fn retry_attempts(&mut self, shards: impl IntoIterator<Item = usize>) {
        self.dirty.extend(shards);
    }
}

/// Writes `{round}/_manifest.json`.
pub async fn write_manifest(out: &Location, manifest: &RoundManifest) -> Result<(), RoundError> {
    let loc = out.child("_manifest.json");
    let json = serde_json::to_vec_pretty(manifest).map_err(|e| RoundError::BadCommit {
        path: loc.display.clone(),
        message: e.to_string(),
    })?;
    loc.put_bytes(json).await?;
    tracing::info!(round = manifest.round, manifest = %loc.display, rows = manifest.totals.rows_in, "round manifest written");
    Ok(())
}

/// Reads and parses `{round}/_commits/{shard}.json`.
pub async fn read_commit(out: &Location, shard_id: &str) -> Result<CommitRecord, RoundError> {
    let loc = out.child(&commit_path(shard_id));
    let bytes = loc.get_bytes().await?;
    serde_json::from_slice(&bytes).map_err(|e| RoundError::BadCommit {
        path: loc.display.clone(),
        message: e.to_string(),
    })
}
