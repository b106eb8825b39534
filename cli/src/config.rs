//! The TOML config file (`--config FILE`): one file for every option of `run`, `coordinator` and
//! `worker`. Command-line flags and `CAPFILT_*` environment variables override it; built-in
//! defaults fill the rest. See README "Configuration" for an example.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use capfilt_schemas::mapping::ColumnMapping;
use serde::Deserialize;

/// The whole file. Unknown keys are errors (a typo must not be silently ignored).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Input Parquet prefix or file URL.
    pub input: Option<String>,
    /// Output prefix URL (rounds go under `round-NNNN/`).
    pub output: Option<String>,
    /// Captioner bundle.
    pub captioner: Option<String>,
    /// Filter bundle.
    pub filter: Option<String>,
    /// Round number to run (`capfilt coordinator`, `capfilt run`).
    pub round: Option<u32>,
    /// Workers `capfilt run` starts in-process.
    pub workers: Option<usize>,
    /// CapFilt step parameters.
    #[serde(default)]
    pub capfilt: CapfiltSection,
    /// Coordinator settings.
    #[serde(default)]
    pub coordinator: CoordinatorSection,
    /// Worker settings.
    #[serde(default)]
    pub worker: WorkerSection,
    /// Bootstrap rounds and the trainer stage.
    #[serde(default)]
    pub bootstrap: BootstrapSection,
    /// Where the trainer stage runs.
    #[serde(default)]
    pub trainer: TrainerSection,
    /// Input column mapping: a preset name or explicit columns.
    pub columns: Option<ColumnsConfig>,
    /// Object-store options (`aws_endpoint`, `aws_allow_http`, `aws_region`, ...).
    #[serde(default)]
    pub store: BTreeMap<String, String>,
    /// The bearer token shared by coordinator and workers.
    #[serde(default)]
    pub auth: AuthSection,
}

/// `[auth]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// File holding the bearer token every worker call must carry.
    pub token_file: Option<PathBuf>,
}

/// `[coordinator.tls]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsSection {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA of the workers' client certificates (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// `[worker.tls]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsSection {
    /// PEM CA that signed the coordinator's certificate.
    pub ca: Option<PathBuf>,
    /// PEM client certificate (mutual TLS).
    pub cert: Option<PathBuf>,
    /// PEM client key (mutual TLS).
    pub key: Option<PathBuf>,
    /// Name expected in the coordinator's certificate.
    pub domain: Option<String>,
}

impl FileConfig {
    /// The bearer token, read from `[auth] token_file`.
    pub fn token(&self) -> anyhow::Result<Option<capfilt_proto::security::Token>> {
        self.auth
            .token_file
            .as_deref()
            .map(capfilt_proto::security::Token::from_file)
            .transpose()
            .map_err(Into::into)
    }

    /// How the coordinator secures its port (`insecure`: plaintext asked for).
    pub fn server_security(
        &self,
        insecure: bool,
    ) -> anyhow::Result<capfilt_proto::security::ServerSecurity> {
        Ok(capfilt_proto::security::ServerSecurity {
            tls: self
                .coordinator
                .tls
                .as_ref()
                .map(|t| capfilt_proto::security::ServerTls {
                    cert: t.cert.clone(),
                    key: t.key.clone(),
                    client_ca: t.client_ca.clone(),
                }),
            token: self.token()?,
            insecure: insecure || self.coordinator.insecure.unwrap_or(false),
        })
    }

    /// How a worker reaches the coordinator.
    pub fn client_security(&self) -> anyhow::Result<capfilt_proto::security::ClientSecurity> {
        Ok(capfilt_proto::security::ClientSecurity {
            tls: self
                .worker
                .tls
                .as_ref()
                .map(|t| capfilt_proto::security::ClientTls {
                    ca: t.ca.clone(),
                    cert: t.cert.clone(),
                    key: t.key.clone(),
                    domain: t.domain.clone(),
                }),
            token: self.token()?,
        })
    }
}

/// `[capfilt]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapfiltSection {
    /// nucleus, greedy or beam.
    pub decoding: Option<String>,
    /// Synthetic captions per image.
    pub candidates: Option<usize>,
    /// ITM keep threshold.
    pub threshold: Option<f32>,
    /// Keep threshold from the filter bundle's held-out figures: the lowest threshold that
    /// reached this precision there.
    pub threshold_at_precision: Option<f64>,
    /// Images per inference batch.
    pub batch_size: Option<usize>,
    /// Nucleus mass.
    pub top_p: Option<f32>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Beams.
    pub num_beams: Option<usize>,
    /// Repetition penalty.
    pub repetition_penalty: Option<f32>,
    /// Minimum caption length (tokens, prompt included).
    pub min_length: Option<usize>,
    /// Maximum caption length (tokens, prompt included).
    pub max_length: Option<usize>,
}

/// `[coordinator]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorSection {
    /// gRPC listen address.
    pub listen: Option<String>,
    /// HTTP address of /metrics, /healthz, /readyz and the status page.
    pub metrics_listen: Option<String>,
    /// Idle poll interval, ms.
    pub poll_interval_ms: Option<u64>,
    /// Lease timeout, ms.
    pub lease_timeout_ms: Option<u64>,
    /// Target rows per shard.
    pub target_shard_rows: Option<u64>,
    /// Counted failures before a shard is quarantined.
    pub max_failures: Option<u32>,
    /// How long a worker is excluded from new leases after failures that blame it, s.
    pub exclusion_s: Option<u64>,
    /// TLS of the gRPC port.
    pub tls: Option<ServerTlsSection>,
    /// Serve plaintext (allowed on a loopback address only).
    pub insecure: Option<bool>,
    /// Exit once the run is finished.
    pub exit_when_done: Option<bool>,
}

/// `[worker]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSection {
    /// Compute slots per worker.
    pub slots: Option<u32>,
    /// cpu or cuda:N.
    pub device: Option<String>,
    /// ONNX Runtime intra-op threads.
    pub intra_threads: Option<usize>,
    /// auto, fp32, fp16 or int8 (CPU only).
    pub precision: Option<String>,
    /// Most images per batch of the shared engine.
    pub max_batch_images: Option<usize>,
    /// Continuous batching in the shared engine.
    pub continuous_batching: Option<bool>,
    /// Upper bound of the CUDA provider's memory arena, MiB.
    pub gpu_memory_limit_mib: Option<usize>,
    /// exhaustive, heuristic or default.
    pub cudnn_conv_search: Option<String>,
    /// Bundle cache folder.
    pub cache_dir: Option<PathBuf>,
    /// Seconds a shutting-down worker keeps working before giving its leases back.
    pub drain_timeout_s: Option<u64>,
    /// Exit once the coordinator reports the run finished.
    pub exit_when_done: Option<bool>,
    /// HTTP address of /metrics, /healthz and /readyz.
    pub metrics_listen: Option<String>,
    /// TLS towards the coordinator.
    pub tls: Option<ClientTlsSection>,
    /// Store locations this worker may read and write (URL or path prefixes) [default: any].
    pub allowed_prefixes: Option<Vec<String>>,
}

/// `[bootstrap]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapSection {
    /// Rounds to run.
    pub rounds: Option<u32>,
    /// Clean seed set URL.
    pub seed_data: Option<String>,
    /// Held-out eval split URL.
    pub eval_data: Option<String>,
    /// Captioner training steps per round.
    pub captioner_steps: Option<u32>,
    /// Filter training steps per round.
    pub filter_steps: Option<u32>,
    /// Promotion tolerance.
    pub tolerance: Option<f64>,
    /// previous or scratch.
    pub train_init: Option<String>,
    /// Python with capfilt_trainer.
    pub python: Option<PathBuf>,
    /// A trainer job running longer is stopped (seconds).
    pub trainer_timeout_s: Option<u64>,
    /// The coordinator's lease on the output: a dead coordinator's output is free after it (seconds).
    pub output_lease_s: Option<f64>,
}

/// `[trainer]`: where the trainer stage runs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerSection {
    /// `local` (a child process of the coordinator, the default) or `kubernetes` (a Job).
    pub runner: Option<String>,
    /// For `kubernetes`: the PodTemplate object the Jobs wrap [default: capfilt-trainer].
    pub pod_template: Option<String>,
    /// For `kubernetes`: a Job template file (YAML) instead of a PodTemplate object.
    pub job_template: Option<PathBuf>,
    /// Namespace of the Jobs [default: the service account's or the kubeconfig's].
    pub namespace: Option<String>,
    /// `ttlSecondsAfterFinished` of the Jobs [default: 86400].
    pub ttl_seconds_after_finished: Option<i32>,
}

/// `columns = "laion"` or `[columns] caption = "TEXT" ...`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ColumnsConfig {
    /// A preset: img2dataset or laion.
    Preset(String),
    /// Explicit names.
    Explicit(ColumnMapping),
}

impl ColumnsConfig {
    /// The mapping.
    pub fn mapping(&self) -> anyhow::Result<ColumnMapping> {
        match self {
            ColumnsConfig::Preset(name) => ColumnMapping::preset(name).ok_or_else(|| {
                anyhow!("unknown columns preset '{name}': use img2dataset or laion")
            }),
            ColumnsConfig::Explicit(m) => Ok(m.clone()),
        }
    }
}

/// A TOML error as one line: file, line and column, and the parser's message.
fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> anyhow::Error {
    let at = e.span().map(|span| {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        let source = text.lines().nth(line - 1).unwrap_or_default().trim();
        format!(" line {line}, column {column} (`{source}`)")
    });
    let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
    anyhow!(
        "config file {}{}: {message}",
        path.display(),
        at.unwrap_or_default()
    )
}

impl FileConfig {
    /// Reads `path`, or the empty config when `None`.
    pub fn load(path: Option<&Path>) -> anyhow::Result<FileConfig> {
        let Some(path) = path else {
            return Ok(FileConfig::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        toml::from_str(&text).map_err(|e| toml_error(path, &text, &e))
    }

    /// Object-store options as (key, value) pairs.
    pub fn store_options(&self) -> Vec<(String, String)> {
        self.store
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_config_parses_and_typos_are_errors() {
        let text = r#"
input = "s3://bucket/web/"
output = "s3://bucket/capfilt/"
captioner = "models/shapes-seed/captioner"
filter = "models/shapes-seed/filter"
workers = 3
columns = "laion"

[capfilt]
decoding = "beam"
candidates = 2
threshold = 0.6

[coordinator]
listen = "0.0.0.0:50051"
metrics_listen = "0.0.0.0:9090"
lease_timeout_ms = 30000
target_shard_rows = 5000

[worker]
slots = 2
device = "cuda:0"
metrics_listen = "0.0.0.0:9091"

[store]
aws_endpoint = "http://127.0.0.1:9000"
aws_allow_http = "true"
"#;
        let c: FileConfig = toml::from_str(text).expect("parse");
        assert_eq!(c.workers, Some(3));
        assert_eq!(c.capfilt.candidates, Some(2));
        assert_eq!(c.coordinator.target_shard_rows, Some(5000));
        assert_eq!(c.worker.device.as_deref(), Some("cuda:0"));
        assert_eq!(
            c.coordinator.metrics_listen.as_deref(),
            Some("0.0.0.0:9090")
        );
        assert_eq!(c.worker.metrics_listen.as_deref(), Some("0.0.0.0:9091"));
        assert_eq!(
            c.columns
                .expect("columns")
                .mapping()
                .expect("laion")
                .caption,
            "TEXT"
        );
        assert_eq!(c.store.len(), 2);
        let typo = toml::from_str::<FileConfig>("[capfilt]\nthreshhold = 0.5\n").expect_err("typo");
        assert!(typo.to_string().contains("threshhold"), "{typo}");
    }

    #[test]
    fn a_toml_error_is_one_line_with_its_position() {
        let text = "[capfilt]\nthreshold = 0.5\n[coordinator\n";
        let e = toml::from_str::<FileConfig>(text).expect_err("unclosed table");
        let line = toml_error(Path::new("c.toml"), text, &e).to_string();
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.starts_with("config file c.toml line 3, column 13 (`[coordinator`): "),
            "{line}"
        );
    }
}
