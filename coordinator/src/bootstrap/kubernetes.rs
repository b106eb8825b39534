//! The trainer stage as a Kubernetes `batch/v1` Job (the way KubeRay's RayJob or an Argo
//! resource template runs a batch step): the runner creates the job's Job from a template with
//! the job's arguments and labels (run, round, task), watches it until `status.succeeded` or a
//! `Failed` condition, streams its Pod's log lines into the coordinator's log, adopts the Job
//! a previous coordinator created for the same job instead of creating a second one (a failed
//! one is deleted and created anew), and deletes the Job when the stage is cancelled.
//!
//! ```text
//! get Job --(absent)--> create --+--> watch --(succeeded)--> Ok (ttlSecondsAfterFinished cleans up)
//!         --(running)--> adopt --+          --(Failed condition / deleted)--> Err (with the last log lines)
//!         --(failed)--> delete, create      (future dropped: the Job is deleted)
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::batch::v1::JobSpec;
use k8s_openapi::api::core::v1::{Pod, PodTemplate};
use kube::api::{
    Api, DeleteParams, ListParams, LogParams, PostParams, PropagationPolicy, WatchEvent,
    WatchParams,
};

use super::trainer::{TrainerError, TrainerJob, TrainerRunner};

/// Label keys the runner sets on every Job.
pub const RUN_LABEL: &str = "capfilt.io/run";
/// The round a Job trains after.
pub const ROUND_LABEL: &str = "capfilt.io/round";
/// The task (`train`, `eval`).
pub const TASK_LABEL: &str = "capfilt.io/task";

/// Errors setting up the Kubernetes runner.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesSetupError {
    /// No cluster credentials.
    #[error(
        "[trainer] runner = \"kubernetes\" needs cluster credentials, and none were found (no in-cluster service account, no KUBECONFIG or ~/.kube/config): run the coordinator in the cluster with its ServiceAccount, or set KUBECONFIG; {0}"
    )]
    NoCredentials(String),
    /// The Job template is unusable.
    #[error("trainer Job template {path}: {message}")]
    Template {
        /// Where.
        path: String,
        /// Why.
        message: String,
    },
}

/// The trainer stage as Kubernetes Jobs.
#[derive(Clone)]
pub struct KubernetesTrainer {
    client: kube::Client,
    namespace: String,
    template: Job,
    run_id: String,
    ttl_seconds_after_finished: i32,
    timeout: Duration,
    poll: Duration,
}

impl std::fmt::Debug for KubernetesTrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesTrainer")
            .field("namespace", &self.namespace)
            .field("run_id", &self.run_id)
            .finish()
    }
}

/// Parses a Job template (YAML or JSON) and checks that it has a container to run the trainer.
pub fn parse_template(path: &str, text: &str) -> Result<Job, KubernetesSetupError> {
    let bad = |message: String| KubernetesSetupError::Template {
        path: path.to_string(),
        message,
    };
    let job: Job = serde_saphyr::from_str(text).map_err(|e| bad(e.to_string()))?;
    let containers = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| p.containers.len())
        .unwrap_or(0);
    if containers == 0 {
        return Err(bad(
            "no spec.template.spec.containers: the first container runs the trainer".into(),
        ));
    }
    Ok(job)
}

/// Where the trainer's Job template comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateSource {
    /// A `core/v1 PodTemplate` object of that name in the namespace (what `k8s/` deploys, so
    /// kustomize's `images:` sets the trainer image like every other image).
    PodTemplate(String),
    /// A `batch/v1 Job` YAML file.
    JobFile(String),
}

/// A Job around the pod template `pt` (two tries per job; the stage resumes its own work).
pub fn job_from_pod_template(pt: &PodTemplate) -> Result<Job, KubernetesSetupError> {
    let name = pt.metadata.name.clone().unwrap_or_default();
    let template = pt
        .template
        .clone()
        .ok_or_else(|| KubernetesSetupError::Template {
            path: format!("podtemplate/{name}"),
            message: "no template".into(),
        })?;
    let job = Job {
        metadata: kube::api::ObjectMeta {
            labels: pt.metadata.labels.clone(),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(1),
            template,
            ..Default::default()
        }),
        status: None,
    };
    let yaml = serde_json::to_string(&job).unwrap_or_default();
    parse_template(&format!("podtemplate/{name}"), &yaml)
}

impl KubernetesTrainer {
    /// A runner whose Jobs wrap the PodTemplate `name` read from the API server.
    pub async fn with_pod_template(
        client: kube::Client,
        namespace: &str,
        name: &str,
        run_id: &str,
    ) -> Result<Self, KubernetesSetupError> {
        let api: Api<PodTemplate> = Api::namespaced(client.clone(), namespace);
        let pt = api
            .get(name)
            .await
            .map_err(|e| KubernetesSetupError::Template {
                path: format!("podtemplate/{name} in namespace {namespace}"),
                message: e.to_string(),
            })?;
        let template = job_from_pod_template(&pt)?;
        Ok(Self::new(client, namespace, template, run_id))
    }

    /// A runner over `client` in `namespace`, making Jobs from `template` for the run `run_id`.
    pub fn new(client: kube::Client, namespace: &str, template: Job, run_id: &str) -> Self {
        Self {
            client,
            namespace: namespace.to_string(),
            template,
            run_id: run_id.to_string(),
            ttl_seconds_after_finished: 86_400,
            timeout: Duration::from_secs(86_400),
            poll: Duration::from_secs(2),
        }
    }

    /// Reads the cluster credentials (in-cluster service account, or KUBECONFIG) and the Job
    /// template; refuses with [`KubernetesSetupError::NoCredentials`] when there are none.
    pub async fn from_environment(
        source: &TemplateSource,
        namespace: Option<&str>,
        run_id: &str,
    ) -> Result<Self, KubernetesSetupError> {
        let file_template = match source {
            TemplateSource::JobFile(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|e| KubernetesSetupError::Template {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                Some(parse_template(path, &text)?)
            }
            TemplateSource::PodTemplate(_) => None,
        };
        let config = kube::Config::infer()
            .await
            .map_err(|e| KubernetesSetupError::NoCredentials(e.to_string()))?;
        let ns = namespace
            .map(str::to_string)
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = kube::Client::try_from(config)
            .map_err(|e| KubernetesSetupError::NoCredentials(e.to_string()))?;
        match (source, file_template) {
            (_, Some(t)) => Ok(Self::new(client, &ns, t, run_id)),
            (TemplateSource::PodTemplate(name), None) => {
                Self::with_pod_template(client, &ns, name, run_id).await
            }
            (TemplateSource::JobFile(path), None) => Err(KubernetesSetupError::Template {
                path: path.clone(),
                message: "unreadable".into(),
            }),
        }
    }

    /// Sets `ttlSecondsAfterFinished` of new Jobs.
    pub fn with_ttl_after_finished(mut self, seconds: i32) -> Self {
        self.ttl_seconds_after_finished = seconds;
        self
    }

    /// Sets `activeDeadlineSeconds` of new Jobs (the stage's timeout).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets how often the Pods are looked up for log streaming.
    pub fn with_poll(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// The Kubernetes name of `job`'s Job: unique per run (`capfilt-r0001-train-1a2b3c4d`).
    pub fn job_name(&self, job: &TrainerJob) -> String {
        let suffix: String = self.run_id.chars().take(8).collect();
        let mut name = format!("{}-{suffix}", job.name);
        name.truncate(63);
        name
    }

    /// The Job object for `job`, made from the template.
    pub fn job_object(&self, job: &TrainerJob) -> Job {
        let mut j = self.template.clone();
        let name = self.job_name(job);
        j.metadata.name = Some(name);
        j.metadata.namespace = Some(self.namespace.clone());
        let labels: BTreeMap<String, String> = [
            ("app.kubernetes.io/name", "capfilt".to_string()),
            ("app.kubernetes.io/component", "trainer".to_string()),
            (RUN_LABEL, self.run_id.chars().take(63).collect()),
            (ROUND_LABEL, job.round.to_string()),
            (TASK_LABEL, job.task.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        j.metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .extend(labels.clone());
        let spec = j.spec.get_or_insert_with(Default::default);
        spec.ttl_seconds_after_finished = Some(self.ttl_seconds_after_finished);
        if spec.active_deadline_seconds.is_none() {
            spec.active_deadline_seconds = Some(self.timeout.as_secs() as i64);
        }
        spec.template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(BTreeMap::new)
            .extend(labels);
        if let Some(pod) = spec.template.spec.as_mut()
            && let Some(c) = pod.containers.first_mut()
        {
            let mut args = vec!["-m".to_string(), "capfilt_trainer".to_string()];
            args.extend(job.args.iter().cloned());
            c.args = Some(args);
        }
        j
    }

    fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn run_job(
        &self,
        job: &TrainerJob,
        tail: Arc<Mutex<VecDeque<String>>>,
    ) -> Result<(), TrainerError> {
        let api = self.jobs();
        let name = self.job_name(job);
        let k8s = |e: kube::Error| TrainerError::Failed {
            job: name.clone(),
            status: format!("Kubernetes API: {e}"),
            tail: String::new(),
        };
        match api.get_opt(&name).await.map_err(k8s)? {
            Some(existing) if job_failed(&existing).is_some() => {
                tracing::info!(job = %name, "a failed trainer Job of this stage exists: deleting it and creating it again");
                delete_job(&api, &name).await;
                for _ in 0..120 {
                    if api.get_opt(&name).await.map_err(k8s)?.is_none() {
                        break;
                    }
                    tokio::time::sleep(self.poll).await;
                }
                api.create(&PostParams::default(), &self.job_object(job))
                    .await
                    .map_err(k8s)?;
            }
            Some(_) => {
                tracing::info!(job = %name, namespace = %self.namespace, "adopting the trainer Job a previous coordinator created");
            }
            None => {
                api.create(&PostParams::default(), &self.job_object(job))
                    .await
                    .map_err(k8s)?;
                tracing::info!(job = %name, namespace = %self.namespace, "trainer Job created");
            }
        }
        let mut guard = DeleteOnDrop {
            api: Some(api.clone()),
            name: name.clone(),
        };
        let logs = tokio::spawn(stream_logs(
            Api::namespaced(self.client.clone(), &self.namespace),
            name.clone(),
            self.poll,
            tail.clone(),
        ));
        let tail_text = || {
            let t = tail.lock().unwrap_or_else(|p| p.into_inner());
            t.iter().cloned().collect::<Vec<_>>().join(" | ")
        };
        let outcome = loop {
            let current = api.get(&name).await.map_err(k8s)?;
            if let Some(o) = outcome_of(&current) {
                break o;
            }
            let rv = current
                .metadata
                .resource_version
                .clone()
                .unwrap_or_default();
            let wp = WatchParams::default()
                .fields(&format!("metadata.name={name}"))
                .timeout(60);
            let mut events = api.watch(&wp, &rv).await.map_err(k8s)?.boxed();
            let mut decided = None;
            while let Some(event) = events.try_next().await.map_err(k8s)? {
                match event {
                    WatchEvent::Added(j) | WatchEvent::Modified(j) => {
                        if let Some(o) = outcome_of(&j) {
                            decided = Some(o);
                            break;
                        }
                    }
                    WatchEvent::Deleted(_) => {
                        decided = Some(Err("the Job was deleted".to_string()));
                        break;
                    }
                    WatchEvent::Bookmark(_) => {}
                    // e.g. 410 Gone: the resource version is too old; get and watch again.
                    WatchEvent::Error(e) => {
                        tracing::debug!(job = %name, error = %e.message, "watch ended; watching again");
                        break;
                    }
                }
            }
            if let Some(o) = decided {
                break o;
            }
        };
        guard.api = None;
        // Let the log stream deliver the last lines of a finished Pod, then stop following.
        tokio::time::sleep(self.poll.min(Duration::from_secs(1))).await;
        logs.abort();
        match outcome {
            Ok(()) => {
                tracing::info!(job = %name, "trainer Job succeeded");
                Ok(())
            }
            Err(status) => Err(TrainerError::Failed {
                job: name,
                status,
                tail: tail_text(),
            }),
        }
    }
}

/// `Some(Ok)` once the Job succeeded, `Some(Err(why))` once it failed.
fn outcome_of(job: &Job) -> Option<Result<(), String>> {
    if job
        .status
        .as_ref()
        .and_then(|s| s.succeeded)
        .is_some_and(|n| n >= 1)
    {
        return Some(Ok(()));
    }
    job_failed(job).map(Err)
}

fn job_failed(job: &Job) -> Option<String> {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.type_ == "Failed" && c.status == "True")
        })
        .map(|c| {
            format!(
                "Job failed: {} {}",
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default()
            )
            .trim()
            .to_string()
        })
}

async fn delete_job(api: &Api<Job>, name: &str) {
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    if let Err(e) = api.delete(name, &dp).await {
        tracing::warn!(job = %name, error = %e, "could not delete the trainer Job");
    }
}

/// Deletes the Job when the stage's future is dropped before the Job finished.
struct DeleteOnDrop {
    api: Option<Api<Job>>,
    name: String,
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        if let Some(api) = self.api.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let name = std::mem::take(&mut self.name);
            tracing::info!(job = %name, "trainer stage cancelled: deleting its Job");
            rt.spawn(async move { delete_job(&api, &name).await });
        }
    }
}

/// Follows the logs of the Job's Pods into the coordinator's log, keeping the last lines.
async fn stream_logs(
    pods: Api<Pod>,
    job: String,
    poll: Duration,
    tail: Arc<Mutex<VecDeque<String>>>,
) {
    let mut followed = BTreeSet::new();
    loop {
        let lp = ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}"));
        if let Ok(list) = pods.list(&lp).await {
            for pod in list.items {
                let Some(name) = pod.metadata.name.clone() else {
                    continue;
                };
                let phase = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_default();
                if followed.contains(&name)
                    || !matches!(phase.as_str(), "Running" | "Succeeded" | "Failed")
                {
                    continue;
                }
                followed.insert(name.clone());
                let params = LogParams {
                    follow: true,
                    ..LogParams::default()
                };
                match pods.log_stream(&name, &params).await {
                    Ok(stream) => {
                        let mut lines = stream.lines();
                        while let Some(Ok(line)) = lines.next().await {
                            let line = line.trim_end();
                            if line.is_empty() {
                                continue;
                            }
                            tracing::info!(target: "capfilt::trainer", job = %job, pod = %name, "{line}");
                            let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                            t.push_back(line.to_string());
                            if t.len() > 5 {
                                t.pop_front();
                            }
                        }
                    }
                    Err(e) => {
                        tracing::debug!(pod = %name, error = %e, "cannot follow the trainer Pod's log yet")
                    }
                }
            }
        }
        tokio::time::sleep(poll).await;
    }
}

impl TrainerRunner for KubernetesTrainer {
    fn run<'a>(&'a self, job: &'a TrainerJob) -> BoxFuture<'a, Result<(), TrainerError>> {
        Box::pin(async move {
            let tail = Arc::new(Mutex::new(VecDeque::new()));
            self.run_job(job, tail).await
        })
    }

    fn describe(&self) -> String {
        format!("kubernetes: Jobs in namespace {}", self.namespace)
    }
}
