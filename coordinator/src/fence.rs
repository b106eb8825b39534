//! One coordinator per output: a lease on the output store, made of create-only epoch objects
//! and a heartbeat object.
//!
//! ```text
//! {output}/_coordinator/epoch-00000003.json      created create-only by the holder of epoch 3
//! {output}/_coordinator/heartbeat-00000003.json  rewritten by that holder every ttl/3
//! ```
//!
//! A coordinator acquires the output by creating the next epoch object; only one create of a
//! given epoch succeeds, so two coordinators that race never both win. Before that it reads the
//! current epoch's heartbeat: when it was renewed less than its TTL ago, the output is held and
//! the newcomer refuses. A holder checks on every renewal that no later epoch exists; if one
//! does (it was paused longer than its TTL and another coordinator took over), it has lost the
//! output and must stop writing. On a clean shutdown the holder marks its heartbeat expired so
//! a successor need not wait, and a holder that ran on the same machine (same host name and
//! boot id) whose process is gone is known dead at once (a `capfilt run` killed with SIGKILL
//! and started again). Liveness otherwise compares the holder's clock with the reader's: keep
//! the nodes' clocks in sync (NTP) to well within the TTL.

use std::time::Duration;

use capfilt_schemas::store::{Location, StoreError};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use crate::registry::unix_ms;

/// Who holds an output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Epoch number.
    pub epoch: u64,
    /// The coordinator instance.
    pub instance: String,
    /// Its host.
    pub hostname: String,
    /// Its process id.
    pub pid: u32,
    /// Unix ms of the last renewal (0: released).
    pub renewed_unix_ms: u64,
    /// The lease's time to live in ms.
    pub ttl_ms: u64,
    /// The holder's boot id (Linux), so a holder on this very machine whose process is gone
    /// is known dead without waiting for its lease to lapse.
    #[serde(default)]
    pub boot_id: String,
}

/// This machine's host name.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default()
}

/// This machine's boot id (empty where unknown).
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|b| b.trim().to_string())
        .unwrap_or_default()
}

impl Holder {
    /// Whether the holder ran on this machine, in this boot, and its process is gone (or is no
    /// longer a capfilt process).
    fn is_dead_here(&self) -> bool {
        let here = boot_id();
        if here.is_empty() || self.boot_id != here || self.hostname != hostname() {
            return false;
        }
        match std::fs::read_to_string(format!("/proc/{}/cmdline", self.pid)) {
            Ok(cmdline) => !cmdline.contains("capfilt"),
            Err(_) => true,
        }
    }

    fn expires_in_ms(&self, now: u64) -> Option<u64> {
        let end = self.renewed_unix_ms.saturating_add(self.ttl_ms);
        (self.renewed_unix_ms > 0 && end > now).then(|| end - now)
    }
}

/// Fencing errors.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// A live coordinator holds the output.
    #[error(
        "output {output} is held by coordinator {instance} on {hostname} (pid {pid}), renewed {age_s:.0} s ago: stop that coordinator, or wait {expires_s:.0} s if it is dead, then start again"
    )]
    Held {
        /// The output.
        output: String,
        /// Holder instance.
        instance: String,
        /// Holder host.
        hostname: String,
        /// Holder pid.
        pid: u32,
        /// Seconds since its last renewal.
        age_s: f64,
        /// Seconds until its lease expires.
        expires_s: f64,
    },
    /// Another coordinator took the output over.
    #[error(
        "output {output} was taken over by coordinator {instance} (epoch {epoch}): this coordinator stops"
    )]
    Lost {
        /// The output.
        output: String,
        /// The new holder.
        instance: String,
        /// Its epoch.
        epoch: u64,
    },
    /// Store access failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// This coordinator's hold on an output.
#[derive(Debug, Clone)]
pub struct OutputLease {
    dir: Location,
    output: String,
    holder: Holder,
}

fn epoch_name(n: u64) -> String {
    format!("epoch-{n:08}.json")
}

fn heartbeat_name(n: u64) -> String {
    format!("heartbeat-{n:08}.json")
}

fn io(loc: &Location, operation: &'static str) -> impl Fn(object_store::Error) -> StoreError {
    let display = loc.display.clone();
    move |source| StoreError::Io {
        operation,
        location: display.clone(),
        source,
    }
}

async fn read_holder(loc: &Location) -> Result<Option<Holder>, StoreError> {
    crate::bootstrap::record::read_json(loc).await
}

/// The highest epoch under `dir`.
async fn latest_epoch(dir: &Location) -> Result<u64, StoreError> {
    let listed: Vec<object_store::ObjectMeta> = dir
        .store
        .list(Some(&dir.path))
        .try_collect()
        .await
        .map_err(io(dir, "listing"))?;
    Ok(listed
        .iter()
        .filter_map(|m| m.location.filename())
        .filter_map(|f| {
            f.strip_prefix("epoch-")?
                .strip_suffix(".json")?
                .parse()
                .ok()
        })
        .max()
        .unwrap_or(0))
}

impl OutputLease {
    /// Takes the output `output` (resolved at `root`) for coordinator `instance`, or refuses
    /// with [`FenceError::Held`] while another live coordinator holds it.
    pub async fn acquire(
        root: &Location,
        instance: &str,
        ttl: Duration,
    ) -> Result<OutputLease, FenceError> {
        let dir = root.child("_coordinator");
        let output = root.display.clone();
        for _ in 0..5 {
            let current = latest_epoch(&dir).await?;
            if current > 0 {
                let now = unix_ms();
                let beat = read_holder(&dir.child(&heartbeat_name(current))).await?;
                let holder = match beat {
                    Some(h) => Some(h),
                    None => read_holder(&dir.child(&epoch_name(current))).await?,
                };
                if let Some(h) = holder
                    && h.instance != instance
                    && let Some(left) = h.expires_in_ms(now)
                    && !h.is_dead_here()
                {
                    return Err(FenceError::Held {
                        output,
                        age_s: now.saturating_sub(h.renewed_unix_ms) as f64 / 1000.0,
                        expires_s: left as f64 / 1000.0,
                        instance: h.instance,
                        hostname: h.hostname,
                        pid: h.pid,
                    });
                }
            }
            let holder = Holder {
                epoch: current + 1,
                instance: instance.to_string(),
                hostname: hostname(),
                pid: std::process::id(),
                renewed_unix_ms: unix_ms(),
                ttl_ms: ttl.as_millis() as u64,
                boot_id: boot_id(),
            };
            let loc = dir.child(&epoch_name(holder.epoch));
            let json = serde_json::to_vec_pretty(&holder).unwrap_or_default();
            // Someone may create this epoch between our listing and our create: then look again.
            if crate::bootstrap::record::put_create(&loc, json).await? {
                let lease = OutputLease {
                    dir,
                    output,
                    holder,
                };
                lease.write_heartbeat().await?;
                if current > 0 {
                    tracing::info!(
                        epoch = lease.holder.epoch,
                        previous = current,
                        "took over the output from a coordinator that is gone (its lease lapsed or its process on this machine ended)"
                    );
                    for old in [epoch_name(current - 1), heartbeat_name(current - 1)] {
                        let l = lease.dir.child(&old);
                        let _ = l.store.delete(&l.path).await;
                    }
                }
                return Ok(lease);
            }
        }
        Err(FenceError::Store(StoreError::BadLocation {
            location: dir.display.clone(),
            message: "could not take the output after 5 tries: coordinators are racing for it"
                .into(),
        }))
    }

    /// The epoch held.
    pub fn epoch(&self) -> u64 {
        self.holder.epoch
    }

    async fn write_heartbeat(&self) -> Result<(), StoreError> {
        let loc = self.dir.child(&heartbeat_name(self.holder.epoch));
        crate::bootstrap::record::write_json(&loc, &self.holder).await
    }

    /// Renews the lease; [`FenceError::Lost`] when a later epoch exists.
    pub async fn renew(&mut self) -> Result<(), FenceError> {
        let latest = latest_epoch(&self.dir).await?;
        if latest > self.holder.epoch {
            let by = read_holder(&self.dir.child(&epoch_name(latest)))
                .await?
                .map(|h| h.instance)
                .unwrap_or_default();
            return Err(FenceError::Lost {
                output: self.output.clone(),
                instance: by,
                epoch: latest,
            });
        }
        self.holder.renewed_unix_ms = unix_ms();
        self.write_heartbeat().await?;
        Ok(())
    }

    /// Renews every ttl/3 until the lease is lost (returns the error) or the future is dropped.
    pub async fn keep_alive(mut self) -> FenceError {
        let period = Duration::from_millis((self.holder.ttl_ms / 3).max(50));
        loop {
            tokio::time::sleep(period).await;
            match self.renew().await {
                Ok(()) => {}
                Err(e @ FenceError::Lost { .. }) => return e,
                Err(e) => tracing::warn!(error = %e, "renewing the output lease failed; retrying"),
            }
        }
    }

    /// Marks the lease expired so a successor takes over at once (clean shutdown).
    pub async fn release(mut self) {
        if latest_epoch(&self.dir).await.ok() == Some(self.holder.epoch) {
            self.holder.renewed_unix_ms = 0;
            if let Err(e) = self.write_heartbeat().await {
                tracing::warn!(error = %e, "releasing the output lease failed; it expires by itself");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(dir: &std::path::Path) -> Location {
        capfilt_schemas::store::resolve(&dir.display().to_string(), &[]).expect("resolves")
    }

    #[tokio::test]
    async fn a_second_coordinator_is_refused_while_the_first_renews() {
        let d = tempfile::tempdir().expect("tempdir");
        let first = OutputLease::acquire(&root(d.path()), "a", Duration::from_secs(30))
            .await
            .expect("first takes it");
        assert_eq!(first.epoch(), 1);
        let err = OutputLease::acquire(&root(d.path()), "b", Duration::from_secs(30))
            .await
            .expect_err("held");
        assert!(
            matches!(err, FenceError::Held { ref instance, .. } if instance == "a"),
            "{err}"
        );
        assert!(err.to_string().contains("stop that coordinator"), "{err}");
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_and_the_old_holder_learns_it_lost() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut first = OutputLease::acquire(&root(d.path()), "a", Duration::from_millis(100))
            .await
            .expect("first takes it");
        tokio::time::sleep(Duration::from_millis(150)).await;
        let second = OutputLease::acquire(&root(d.path()), "b", Duration::from_secs(30))
            .await
            .expect("expired: taken over");
        assert_eq!(second.epoch(), 2);
        let err = first.renew().await.expect_err("lost");
        assert!(matches!(err, FenceError::Lost { epoch: 2, .. }), "{err}");
    }

    #[tokio::test]
    async fn a_holder_on_this_machine_whose_process_ended_is_taken_over_at_once() {
        let d = tempfile::tempdir().expect("tempdir");
        let first = OutputLease::acquire(&root(d.path()), "a", Duration::from_secs(30))
            .await
            .expect("first takes it");
        // Rewrite its heartbeat as if a process that has exited held it.
        let mut gone = std::process::Command::new("true").spawn().expect("spawn");
        let pid = gone.id();
        gone.wait().expect("exits");
        let mut holder = first.holder.clone();
        holder.pid = pid;
        let beat = first.dir.child(&heartbeat_name(1));
        crate::bootstrap::record::write_json(&beat, &holder)
            .await
            .expect("writes");
        let second = OutputLease::acquire(&root(d.path()), "b", Duration::from_secs(30))
            .await
            .expect("the holder's process is gone: taken over");
        assert_eq!(second.epoch(), 2);
    }

    #[tokio::test]
    async fn a_released_lease_is_taken_at_once() {
        let d = tempfile::tempdir().expect("tempdir");
        let first = OutputLease::acquire(&root(d.path()), "a", Duration::from_secs(30))
            .await
            .expect("first takes it");
        first.release().await;
        let second = OutputLease::acquire(&root(d.path()), "b", Duration::from_secs(30))
            .await
            .expect("released: taken");
        assert_eq!(second.epoch(), 2);
    }
}
