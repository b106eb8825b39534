//! `capfilt status`: asks a coordinator for its status and prints it.

use std::time::Duration;

use anyhow::Context;
use capfilt_proto::v1::coordinator_client::CoordinatorClient;
use capfilt_proto::{PROTOCOL_VERSION, v1};
use clap::Args;

use crate::exit::{CliError, CliResult};

/// Arguments of `capfilt status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Coordinator URL, e.g. http://127.0.0.1:50051
    #[arg(long, value_name = "URL", env = "CAPFILT_COORDINATOR")]
    coordinator: String,
    /// Print the status as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Refresh every N seconds until interrupted.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
    watch: Option<u64>,
    /// Include one line per shard.
    #[arg(long)]
    shards: bool,
    /// TOML config file: its worker.tls and auth tables reach a secured coordinator.
    #[arg(long, env = "CAPFILT_CONFIG")]
    config: Option<std::path::PathBuf>,
}

/// Runs `capfilt status`.
pub fn run(args: StatusArgs) -> CliResult {
    let file = crate::config::FileConfig::load(args.config.as_deref()).map_err(CliError::Usage)?;
    let security = file.client_security().map_err(CliError::Usage)?;
    let endpoint = security
        .endpoint(&args.coordinator)
        .with_context(|| {
            format!(
                "'{}' is not a usable coordinator URL (e.g. http://127.0.0.1:50051)",
                args.coordinator
            )
        })
        .map_err(CliError::Usage)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10));
    let runtime = tokio::runtime::Runtime::new()
        .context("starting the async runtime")
        .map_err(CliError::Failed)?;
    runtime.block_on(async move {
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot reach the coordinator at {}", args.coordinator))
            .map_err(CliError::Failed)?;
        let mut client = CoordinatorClient::with_interceptor(channel, security.interceptor());
        loop {
            let status = client
                .get_status(v1::GetStatusRequest {
                    protocol_version: PROTOCOL_VERSION,
                    include_shards: args.shards,
                })
                .await
                .map_err(|s| {
                    CliError::Failed(anyhow::anyhow!(
                        "coordinator refused GetStatus: {}",
                        s.message()
                    ))
                })?
                .into_inner();
            if args.json {
                println!("{}", to_json(&status));
            } else {
                print!("{}", render(&status));
            }
            match args.watch {
                Some(secs) => tokio::time::sleep(Duration::from_secs(secs.max(1))).await,
                None => return Ok(()),
            }
        }
    })
}

fn device_name(d: Option<&v1::Device>) -> String {
    match d {
        Some(d) if d.kind() == v1::DeviceKind::Cuda => format!("cuda:{}", d.index),
        Some(d) if d.kind() == v1::DeviceKind::Cpu => "cpu".into(),
        _ => "?".into(),
    }
}

/// The status as a table for a terminal.
pub fn render(s: &v1::GetStatusResponse) -> String {
    use std::fmt::Write;
    let shards = s.shards.unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "coordinator {} up {:.0} s, round {}",
        s.coordinator_instance,
        s.uptime_ms as f64 / 1000.0,
        if s.round == 0 {
            "none".to_string()
        } else {
            s.round.to_string()
        }
    );
    let _ = writeln!(
        out,
        "shards: {} pending, {} leased, {} committed, {} quarantined; rows {}/{}",
        shards.pending,
        shards.leased,
        shards.committed,
        shards.quarantined,
        s.rows_done,
        s.rows_total
    );
    if let Some(run) = &s.run {
        let _ = writeln!(
            out,
            "run: {} (round {} of {}, {}){}; trainer {}",
            run.phase,
            run.round,
            run.rounds_requested,
            run.status,
            if run.error.is_empty() {
                String::new()
            } else {
                format!(": {}", run.error)
            },
            run.trainer
        );
        let rounds: Vec<serde_json::Value> =
            serde_json::from_str(&run.rounds_json).unwrap_or_default();
        if !rounds.is_empty() {
            let _ = writeln!(
                out,
                "  {:>5} {:>8} {:>9} {:>9} {:>8}  promotion (exact match, ROC-AUC: before -> after)",
                "round", "rows", "web kept", "syn kept", "img/s"
            );
        }
        for r in &rounds {
            let f =
                |v: &serde_json::Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.1}"));
            let promo = match r.get("promotion") {
                Some(p) if p.is_object() => format!(
                    "{} ({:.3} -> {:.3}, {:.3} -> {:.3})",
                    if p["promoted"].as_bool() == Some(true) {
                        "promoted"
                    } else {
                        "refused"
                    },
                    p["captioner_exact_match"][0].as_f64().unwrap_or(f64::NAN),
                    p["captioner_exact_match"][1].as_f64().unwrap_or(f64::NAN),
                    p["filter_auc"][0].as_f64().unwrap_or(f64::NAN),
                    p["filter_auc"][1].as_f64().unwrap_or(f64::NAN),
                ),
                _ => "-".into(),
            };
            let _ = writeln!(
                out,
                "  {:>5} {:>8} {:>9} {:>9} {:>8}  {promo}",
                r["round"],
                r["totals"]["rows_in"],
                r["totals"]["web_kept"],
                r["totals"]["synthetic_kept"],
                f(&r["images_per_second"]),
            );
        }
    }
    let _ = writeln!(out, "workers: {}", s.workers.len());
    if !s.workers.is_empty() {
        let _ = writeln!(
            out,
            "  {:<24} {:<8} {:>5} {:>6} {:>10} {:>9}  state",
            "worker", "device", "slots", "leases", "rows", "rows/s"
        );
        for w in &s.workers {
            let _ = writeln!(
                out,
                "  {:<24} {:<8} {:>5} {:>6} {:>10} {:>9.1}  {}",
                w.worker_id,
                device_name(w.device.as_ref()),
                w.slots,
                w.leases,
                w.rows_done,
                w.rows_per_s,
                w.state
            );
        }
    }
    for sh in &s.shard_list {
        let _ = writeln!(
            out,
            "  shard {} {:?} attempt {} {} {}/{} {}",
            sh.shard_id,
            sh.state(),
            sh.attempt,
            sh.worker_id,
            sh.rows_done,
            sh.rows_total,
            sh.last_error
        );
    }
    out
}

/// The status as JSON (stable field names, for scripts).
pub fn to_json(s: &v1::GetStatusResponse) -> String {
    let shards = s.shards.unwrap_or_default();
    let workers: Vec<serde_json::Value> = s
        .workers
        .iter()
        .map(|w| {
            serde_json::json!({
                "worker_id": w.worker_id,
                "device": device_name(w.device.as_ref()),
                "slots": w.slots,
                "leases": w.leases,
                "rows_done": w.rows_done,
                "rows_per_s": w.rows_per_s,
                "hostname": w.hostname,
                "build_version": w.build_version,
                "last_seen_unix_ms": w.last_seen_unix_ms,
                "state": w.state,
            })
        })
        .collect();
    let shard_list: Vec<serde_json::Value> = s
        .shard_list
        .iter()
        .map(|sh| {
            serde_json::json!({
                "shard_id": sh.shard_id,
                "state": sh.state().as_str_name(),
                "attempt": sh.attempt,
                "worker_id": sh.worker_id,
                "rows_done": sh.rows_done,
                "rows_total": sh.rows_total,
                "last_error": sh.last_error,
            })
        })
        .collect();
    serde_json::json!({
        "coordinator_instance": s.coordinator_instance,
        "uptime_ms": s.uptime_ms,
        "round": s.round,
        "shards": {
            "pending": shards.pending,
            "leased": shards.leased,
            "committed": shards.committed,
            "quarantined": shards.quarantined,
        },
        "rows_done": s.rows_done,
        "rows_total": s.rows_total,
        "workers": workers,
        "shard_list": shard_list,
        "run": s.run.as_ref().map(|r| serde_json::json!({
            "phase": r.phase,
            "round": r.round,
            "rounds_requested": r.rounds_requested,
            "status": r.status,
            "error": r.error,
            "trainer": r.trainer,
            "rounds": serde_json::from_str::<serde_json::Value>(&r.rounds_json).unwrap_or_default(),
        })),
    })
    .to_string()
}
