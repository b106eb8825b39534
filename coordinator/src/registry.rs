//! The coordinator's view of its workers: who registered, with what device and slots, when each
//! was last heard from, and the progress of the leases each reported.

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
}

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
        };
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
    }
}
