//! The trainer stage behind [`TrainerRunner`]: a job is one `python -m capfilt_trainer stage
//! --spec URL` whose spec (written by the controller into the output store) names every input
//! and output by object-store URL, so the coordinator and the trainer share no filesystem.
//!
//! [`LocalTrainer`] runs it as a child process of the coordinator (tokio::process; stderr
//! streamed into the coordinator's log; killed when the stage is cancelled, e.g. on shutdown,
//! or when it runs past its timeout). A Kubernetes runner creates a `batch/v1` Job with the same
//! command and waits for it; both implement the same trait.

use std::fmt::Debug;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};

/// One trainer stage job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainerJob {
    /// A name unique in the run, usable as a Kubernetes object name (`capfilt-r0001-train`).
    pub name: String,
    /// The round the job runs after.
    pub round: u32,
    /// `train` or `eval`.
    pub task: String,
    /// URL of the job's spec (JSON) in the output store.
    pub spec_url: String,
    /// Arguments after `python -m capfilt_trainer`.
    pub args: Vec<String>,
}

impl TrainerJob {
    /// The `stage` job of `task` after round `round`, for the spec at `spec_url`.
    pub fn stage(round: u32, task: &str, spec_url: impl Into<String>) -> Self {
        let spec_url = spec_url.into();
        Self {
            name: format!("capfilt-r{round:04}-{task}"),
            round,
            task: task.to_string(),
            args: vec!["stage".into(), "--spec".into(), spec_url.clone()],
            spec_url,
        }
    }
}

/// Why a trainer job did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum TrainerError {
    /// The trainer could not be started at all.
    #[error("cannot start the trainer ({command}): {message}")]
    Spawn {
        /// The command.
        command: String,
        /// Why.
        message: String,
    },
    /// The trainer ran and failed.
    #[error("trainer job {job} failed ({status}); last lines: {tail}")]
    Failed {
        /// Job name.
        job: String,
        /// Exit status or Job condition.
        status: String,
        /// The last lines it wrote.
        tail: String,
    },
    /// It ran past the timeout and was stopped.
    #[error("trainer job {job} ran past its timeout of {timeout_s} s and was stopped")]
    TimedOut {
        /// Job name.
        job: String,
        /// The timeout.
        timeout_s: u64,
    },
}

/// Runs trainer jobs: locally as a child process, or as a Kubernetes Job.
///
/// Dropping the returned future cancels the job (the child is killed; a Kubernetes runner
/// deletes its Job).
pub trait TrainerRunner: Send + Sync + Debug {
    /// Runs `job` to completion.
    fn run<'a>(&'a self, job: &'a TrainerJob) -> BoxFuture<'a, Result<(), TrainerError>>;
    /// A short description for logs and status (`local: .venv/bin/python`).
    fn describe(&self) -> String;
}

/// The trainer as a child process of the coordinator.
#[derive(Debug, Clone)]
pub struct LocalTrainer {
    /// Python with `capfilt_trainer` installed.
    pub python: PathBuf,
    /// Work folder for checkpoints and exports before they are uploaded.
    pub work_dir: PathBuf,
    /// A job running longer is killed.
    pub timeout: Duration,
    /// Extra environment for the child (store credentials come from the coordinator's own).
    pub env: Vec<(String, String)>,
}

/// Trainer log lines that carry nothing for an operator.
fn noise(line: &str) -> bool {
    line.is_empty() || line.contains("Loading weights") || line.contains("Writing model shards")
}

impl TrainerRunner for LocalTrainer {
    fn run<'a>(&'a self, job: &'a TrainerJob) -> BoxFuture<'a, Result<(), TrainerError>> {
        Box::pin(async move {
            let command = format!(
                "{} -m capfilt_trainer {}",
                self.python.display(),
                job.args.join(" ")
            );
            tracing::info!(job = %job.name, %command, "trainer job started");
            let mut child = tokio::process::Command::new(&self.python)
                .args(["-m", "capfilt_trainer"])
                .args(&job.args)
                .arg("--work")
                .arg(self.work_dir.join(&job.name))
                .env("PYTHONUNBUFFERED", "1")
                // The stage exits when its parent (this coordinator) dies, so a coordinator
                // killed with SIGKILL leaves no trainer behind to race its successor's.
                .env("CAPFILT_TRAINER_WATCH_PARENT", "1")
                .envs(self.env.iter().cloned())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| TrainerError::Spawn {
                    command: command.clone(),
                    message: format!(
                        "{e} (set --python or CAPFILT_PYTHON to a Python with capfilt_trainer installed)"
                    ),
                })?;
            let tail =
                std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
            let mut streams = Vec::new();
            if let Some(err) = child.stderr.take() {
                let tail = tail.clone();
                let name = job.name.clone();
                streams.push(tokio::spawn(async move {
                    let mut lines = BufReader::new(err).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let line = line.trim_end();
                        if noise(line) {
                            continue;
                        }
                        tracing::info!(target: "capfilt::trainer", job = %name, "{line}");
                        let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                        t.push_back(line.to_string());
                        if t.len() > 5 {
                            t.pop_front();
                        }
                    }
                }));
            }
            if let Some(out) = child.stdout.take() {
                let name = job.name.clone();
                streams.push(tokio::spawn(async move {
                    let mut lines = BufReader::new(out).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        tracing::debug!(target: "capfilt::trainer", job = %name, "{line}");
                    }
                }));
            }
            let status = match tokio::time::timeout(self.timeout, child.wait()).await {
                Ok(status) => status.map_err(|e| TrainerError::Failed {
                    job: job.name.clone(),
                    status: e.to_string(),
                    tail: String::new(),
                })?,
                Err(_) => {
                    let _ = child.kill().await;
                    return Err(TrainerError::TimedOut {
                        job: job.name.clone(),
                        timeout_s: self.timeout.as_secs(),
                    });
                }
            };
            for s in streams {
                let _ = s.await;
            }
            if !status.success() {
                let tail = tail.lock().unwrap_or_else(|p| p.into_inner());
                return Err(TrainerError::Failed {
                    job: job.name.clone(),
                    status: status.to_string(),
                    tail: tail.iter().cloned().collect::<Vec<_>>().join(" | "),
                });
            }
            tracing::info!(job = %job.name, "trainer job finished");
            Ok(())
        })
    }

    fn describe(&self) -> String {
        format!("local: {}", self.python.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell_trainer(script: &str, timeout: Duration) -> (LocalTrainer, tempfile::TempDir) {
        // A stand-in "python" that ignores `-m capfilt_trainer` and runs `script`.
        let dir = tempfile::tempdir().expect("tempdir");
        let exe = dir.path().join("fake-python");
        std::fs::write(&exe, format!("#!/bin/sh\n{script}\n")).expect("writes");
        let mut perms = std::fs::metadata(&exe).expect("meta").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&exe, perms).expect("chmod");
        (
            LocalTrainer {
                python: exe,
                work_dir: dir.path().join("work"),
                timeout,
                env: vec![],
            },
            dir,
        )
    }

    #[tokio::test]
    async fn a_failing_job_reports_its_status_and_last_lines() {
        let (t, _d) = shell_trainer("echo 'error: no data' >&2; exit 3", Duration::from_secs(30));
        let job = TrainerJob::stage(1, "train", "file:///x.json");
        let err = t.run(&job).await.expect_err("fails");
        let msg = err.to_string();
        assert!(
            msg.contains("capfilt-r0001-train") && msg.contains("error: no data"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn a_job_sees_its_arguments_and_succeeds() {
        let (t, d) = shell_trainer(
            &format!("echo \"$@\" > {}/args", "$(dirname $0)"),
            Duration::from_secs(30),
        );
        let job = TrainerJob::stage(1, "eval", "s3://b/run/round-0001/trainer/eval.json");
        t.run(&job).await.expect("succeeds");
        let args = std::fs::read_to_string(d.path().join("args")).expect("args written");
        assert!(
            args.starts_with(
                "-m capfilt_trainer stage --spec s3://b/run/round-0001/trainer/eval.json --work"
            ),
            "{args}"
        );
    }

    #[tokio::test]
    async fn a_job_past_its_timeout_is_stopped() {
        let (t, _d) = shell_trainer("sleep 30", Duration::from_millis(300));
        let job = TrainerJob::stage(1, "train", "file:///x.json");
        let err = t.run(&job).await.expect_err("times out");
        assert!(matches!(err, TrainerError::TimedOut { .. }), "{err}");
    }
}
