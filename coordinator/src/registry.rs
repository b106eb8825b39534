//! The coordinator's view of its workers: who registered, with what device and slots, when each
//! was last heard from, the progress of the leases each reported, and which are excluded.
//!
//! Exclusion follows Spark's `excludeOnFailure`: a failure that blames the worker's own
//! environment (a stale bundle cache, a store it cannot use) excludes it at once; failures of
//! [`MAX_FAILED_SHARDS`] different shards within the exclusion period exclude it too. An
//! excluded worker gets no new leases for the period, unless every live worker is excluded
//! (then the round would stall, so the shards' own failure counts decide).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use capfilt_proto::v1;

/// A registered worker.
#[derive(Debug, Clone)]
pub struct WorkerEntry {
    /// What the worker said when it registered.
    pub info: v1::RegisterWorkerRequest,
    /// Unix milliseconds of registration.
    pub registered_unix_ms: u64,
    /// When the last request from the worker arrived.
    pub last_seen: Instant,
    /// Unix milliseconds of the last request.
    pub last_seen_unix_ms: u64,
    /// Leases the worker reported in its last poll.
    pub leases: Vec<v1::LeaseProgress>,
    /// Free slots in the last poll.
    pub free_slots: u32,
    /// False once the worker drains (SIGTERM).
    pub accepting: bool,
    /// When it registered.
    pub registered: Instant,
    /// Rows of the shards it committed.
    pub rows_committed: u64,
    /// Whether a poll answer told it that the run is finished.
    pub told_finished: bool,
    /// Shards whose attempts failed on this worker, with when.
    pub failed_shards: Vec<(String, Instant)>,
    /// Set while the worker is excluded from new leases.
    pub excluded: Option<Exclusion>,
}

/// Why and until when a worker gets no new leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exclusion {
    /// Until when.
    pub until: Instant,
    /// Why.
    pub reason: String,
}

/// Failures of this many different shards within the exclusion period exclude a worker.
pub const MAX_FAILED_SHARDS: usize = 3;

/// Registered workers by id.
#[derive(Debug, Default)]
pub struct Registry {
    workers: BTreeMap<String, WorkerEntry>,
}

/// Unix milliseconds now.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Registry {
    /// Records a registration; a worker that registers again (e.g. after a coordinator restart
    /// or its own reconnect) replaces its old entry. Returns whether it was known before.
    pub fn register(&mut self, info: v1::RegisterWorkerRequest, now: Instant) -> bool {
        let now_ms = unix_ms();
        let entry = WorkerEntry {
            free_slots: info.slots,
            info,
            registered_unix_ms: now_ms,
            last_seen: now,
            last_seen_unix_ms: now_ms,
            leases: Vec::new(),
            accepting: true,
            registered: now,
            rows_committed: 0,
            told_finished: false,
            failed_shards: Vec::new(),
            excluded: None,
        };
        // Re-registering (a restart of the worker process keeps its id only by accident) does
        // not lift an exclusion: the environment that caused it is likely the same.
        let excluded = self
            .workers
            .get(&entry.info.worker_id)
            .and_then(|w| w.excluded.clone());
        let entry = WorkerEntry { excluded, ..entry };
        self.workers
            .insert(entry.info.worker_id.clone(), entry)
            .is_some()
    }

    /// Records a heartbeat. `None` when the worker is not registered.
    pub fn heartbeat(&mut self, poll: &v1::PollWorkRequest, now: Instant) -> Option<&WorkerEntry> {
        let entry = self.workers.get_mut(&poll.worker_id)?;
        entry.last_seen = now;
        entry.last_seen_unix_ms = unix_ms();
        entry.leases.clone_from(&poll.leases);
        entry.free_slots = poll.free_slots;
        entry.accepting = poll.accepting;
        Some(entry)
    }

    /// Notes that `worker_id` was told the run is finished.
    pub fn mark_told_finished(&mut self, worker_id: &str) {
        if let Some(w) = self.workers.get_mut(worker_id) {
            w.told_finished = true;
        }
    }

    /// Adds `rows` to what `worker_id` has committed.
    pub fn add_committed(&mut self, worker_id: &str, rows: u64) {
        if let Some(w) = self.workers.get_mut(worker_id) {
            w.rows_committed += rows;
        }
    }

    /// Records a counted failure of `shard` on `worker_id`; `blames_worker` for faults of the
    /// worker's own environment. Returns the reason when this excludes the worker.
    pub fn record_failure(
        &mut self,
        worker_id: &str,
        shard: &str,
        blames_worker: bool,
        error: &str,
        now: Instant,
        period: Duration,
    ) -> Option<String> {
        let w = self.workers.get_mut(worker_id)?;
        w.failed_shards
            .retain(|(s, at)| s != shard && now.saturating_duration_since(*at) < period);
        w.failed_shards.push((shard.to_string(), now));
        let reason = if blames_worker {
            Some(format!("its environment failed shard {shard}: {error}"))
        } else if w.failed_shards.len() >= MAX_FAILED_SHARDS {
            Some(format!(
                "attempts of {} different shards failed on it within {} s (last: {shard}: {error})",
                w.failed_shards.len(),
                period.as_secs()
            ))
        } else {
            None
        }?;
        let newly = w.excluded.as_ref().is_none_or(|e| e.until <= now);
        w.excluded = Some(Exclusion {
            until: now + period,
            reason: reason.clone(),
        });
        w.failed_shards.clear();
        newly.then_some(reason)
    }

    /// Why `worker_id` is excluded from new leases at `now`, if it is.
    pub fn exclusion(&self, worker_id: &str, now: Instant) -> Option<&Exclusion> {
        self.workers
            .get(worker_id)?
            .excluded
            .as_ref()
            .filter(|e| e.until > now)
    }

    fn schedulable_entries(
        &self,
        now: Instant,
        horizon: Duration,
    ) -> impl Iterator<Item = &WorkerEntry> {
        self.workers
            .values()
            .filter(move |w| now.saturating_duration_since(w.last_seen) <= horizon && w.accepting)
            .filter(move |w| w.excluded.as_ref().is_none_or(|e| e.until <= now))
    }

    /// Workers that take new leases: heard from within `horizon`, accepting, not excluded.
    pub fn schedulable(&self, now: Instant, horizon: Duration) -> Vec<String> {
        self.schedulable_entries(now, horizon)
            .map(|w| w.info.worker_id.clone())
            .collect()
    }

    /// Whether any worker takes new leases.
    pub fn any_schedulable(&self, now: Instant, horizon: Duration) -> bool {
        self.schedulable_entries(now, horizon).next().is_some()
    }

    /// Whether a worker that takes new leases is not among `failed_on`.
    pub fn schedulable_outside(
        &self,
        failed_on: &[String],
        now: Instant,
        horizon: Duration,
    ) -> bool {
        self.schedulable_entries(now, horizon)
            .any(|w| !failed_on.contains(&w.info.worker_id))
    }

    /// Whether `worker_id` is registered.
    pub fn contains(&self, worker_id: &str) -> bool {
        self.workers.contains_key(worker_id)
    }

    /// Workers not heard from within `timeout` of `now`.
    pub fn silent_since(&self, now: Instant, timeout: Duration) -> Vec<String> {
        self.workers
            .values()
            .filter(|w| now.saturating_duration_since(w.last_seen) > timeout)
            .map(|w| w.info.worker_id.clone())
            .collect()
    }

    /// Forgets the workers not heard from within `timeout` of `now`; returns their ids.
    pub fn evict_silent(&mut self, now: Instant, timeout: Duration) -> Vec<String> {
        let silent = self.silent_since(now, timeout);
        for id in &silent {
            self.workers.remove(id);
        }
        silent
    }

    /// Forgets a worker.
    pub fn remove(&mut self, worker_id: &str) -> Option<WorkerEntry> {
        self.workers.remove(worker_id)
    }

    /// Every worker, by id.
    pub fn iter(&self) -> impl Iterator<Item = &WorkerEntry> {
        self.workers.values()
    }

    /// Number of registered workers.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Whether no worker is registered.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(id: &str) -> v1::RegisterWorkerRequest {
        v1::RegisterWorkerRequest {
            protocol_version: capfilt_proto::PROTOCOL_VERSION,
            worker_id: id.into(),
            slots: 2,
            ..Default::default()
        }
    }

    #[test]
    fn heartbeats_update_known_workers_only() {
        let mut r = Registry::default();
        let t0 = Instant::now();
        assert!(!r.register(reg("a"), t0));
        assert!(r.register(reg("a"), t0), "re-registration replaces");
        let poll = v1::PollWorkRequest {
            worker_id: "a".into(),
            free_slots: 1,
            accepting: true,
            ..Default::default()
        };
        assert_eq!(r.heartbeat(&poll, t0).map(|w| w.free_slots), Some(1));
        let stranger = v1::PollWorkRequest {
            worker_id: "b".into(),
            ..Default::default()
        };
        assert!(r.heartbeat(&stranger, t0).is_none());
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn a_worker_is_excluded_for_its_own_fault_or_for_failing_three_shards() {
        let mut r = Registry::default();
        let t0 = Instant::now();
        let period = Duration::from_secs(60);
        r.register(reg("a"), t0);
        r.register(reg("b"), t0);
        // Two shards failing is not enough; the same shard twice counts once.
        assert!(
            r.record_failure("a", "s1", false, "e", t0, period)
                .is_none()
        );
        assert!(
            r.record_failure("a", "s1", false, "e", t0, period)
                .is_none()
        );
        assert!(
            r.record_failure("a", "s2", false, "e", t0, period)
                .is_none()
        );
        let why = r
            .record_failure("a", "s3", false, "e", t0, period)
            .expect("third shard");
        assert!(why.contains("3 different shards"), "{why}");
        assert!(r.exclusion("a", t0).is_some());
        assert_eq!(r.schedulable(t0, period), vec!["b".to_string()]);
        // It ends with the period.
        assert!(r.exclusion("a", t0 + period).is_none());
        // A fault of the worker's own environment excludes at once.
        let why = r
            .record_failure("b", "s1", true, "bundle sha256 differs", t0, period)
            .expect("own fault");
        assert!(why.contains("bundle sha256 differs"), "{why}");
        assert!(r.schedulable(t0, period).is_empty());
        // Failures older than the period are forgotten.
        let later = t0 + period * 3;
        assert!(
            r.record_failure("a", "s4", false, "e", later, period)
                .is_none()
        );
        assert!(
            r.record_failure("a", "s5", false, "e", later, period)
                .is_none()
        );
    }

    #[test]
    fn silent_workers_are_found_by_timeout() {
        let mut r = Registry::default();
        let t0 = Instant::now();
        r.register(reg("a"), t0);
        r.register(reg("b"), t0);
        let later = t0 + Duration::from_secs(10);
        let poll = v1::PollWorkRequest {
            worker_id: "b".into(),
            ..Default::default()
        };
        r.heartbeat(&poll, later);
        assert_eq!(
            r.silent_since(later + Duration::from_secs(1), Duration::from_secs(5)),
            vec!["a".to_string()]
        );
        let gone = r.evict_silent(later + Duration::from_secs(1), Duration::from_secs(5));
        assert_eq!(gone, vec!["a".to_string()]);
        assert!(!r.contains("a") && r.contains("b"));
    }
}
