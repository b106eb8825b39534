//! `capfilt-coordinator-bench`: the coordinator under the load of a large cluster. A real
//! coordinator process (this binary, re-executed) schedules a round of N shards planned from
//! real Parquet footers; 1,000 simulated workers in this process register, poll for leases,
//! heartbeat them, write commit records into the output folder and report them over loopback
//! gRPC, as `capfilt worker` does, with no inference. It prints lease operations per second,
//! the p50/p99 latency of each call, GetStatus latency and the coordinator's peak memory, for
//! a plan of 10,000 shards beside one of 100,000: a scheduler whose cost grows with the plan
//! shows it in the second column.
//!
//! ```text
//! cargo run --release -p capfilt-tests --bin capfilt-coordinator-bench -- [--workers 1000] [--seconds 20]
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow_array::{ArrayRef, BinaryArray, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use capfilt_coordinator::{CoordinatorService, Round, Timing};
use capfilt_proto::v1::coordinator_client::CoordinatorClient;
use capfilt_proto::{PROTOCOL_VERSION, v1};
use capfilt_schemas::records::{
    CommitRecord, DataFileRef, RECORD_FORMAT_VERSION, ShardCounts, ShardFiles, ShardRef, ShardStats,
};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use tonic::transport::Channel;

const ROLE: &str = "CAPFILT_BENCH_COORDINATOR";

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `files` Parquet files of `groups` one-row row groups each: one shard per row group.
fn write_input(dir: &Path, files: usize, groups: usize) {
    std::fs::create_dir_all(dir).expect("input dir");
    let schema = Arc::new(Schema::new(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("url", DataType::Utf8, true),
        Field::new("caption", DataType::Utf8, true),
        Field::new("jpg", DataType::Binary, true),
    ]));
    for f in 0..files {
        let keys: Vec<String> = (0..groups).map(|g| format!("{f:05}-{g:05}")).collect();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(keys)),
            Arc::new(StringArray::from(vec![None::<&str>; groups])),
            Arc::new(StringArray::from(vec![Some("a caption"); groups])),
            Arc::new(BinaryArray::from(vec![Some(&b"x"[..]); groups])),
        ];
        let batch = RecordBatch::try_new(schema.clone(), cols).expect("batch");
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(1))
            .build();
        let file = std::fs::File::create(dir.join(format!("part-{f:05}.parquet"))).expect("create");
        let mut w = ArrowWriter::try_new(file, schema.clone(), Some(props)).expect("writer");
        w.write(&batch).expect("write");
        w.close().expect("close");
    }
}

/// The coordinator process: opens the round and serves it until killed.
fn coordinator(input: &str, output: &str) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let t = Instant::now();
        let spec = capfilt_tests::round::round_spec(input, output, 1, Vec::new());
        let round = Round::open(spec).await.expect("open round");
        let opened_ms = t.elapsed().as_millis();
        let service = CoordinatorService::with_round(
            Timing {
                poll_interval: Duration::from_millis(200),
                lease_timeout: Duration::from_secs(60),
                exclusion: Duration::from_secs(600),
            },
            round,
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        println!("ready {port} {opened_ms}");
        capfilt_coordinator::run(service, listener, std::future::pending())
            .await
            .expect("serve");
    });
}

#[derive(Default)]
struct Counters {
    polls: AtomicU64,
    leases: AtomicU64,
    completes: AtomicU64,
}

fn commit_record(lease: &v1::ShardLease, worker: &str) -> CommitRecord {
    let s = lease.shard.clone().unwrap_or_default();
    let cap = lease.captioner.clone().unwrap_or_default();
    let fil = lease.filter.clone().unwrap_or_default();
    let file = |t: &str| DataFileRef {
        path: format!(
            "{t}/part-{}-{}-{worker}-0.parquet",
            s.shard_id, lease.attempt
        ),
        rows: 0,
        bytes: 0,
    };
    CommitRecord {
        format_version: RECORD_FORMAT_VERSION,
        round: lease.round,
        shard: ShardRef {
            shard_id: s.shard_id.clone(),
            file: s.file_url.clone(),
            first_row_group: s.first_row_group,
            num_row_groups: s.num_row_groups,
            first_row: s.first_row,
            num_rows: s.num_rows,
        },
        attempt: lease.attempt,
        worker_id: worker.to_string(),
        committed_unix_ms: 0,
        captioner_sha256: cap.bundle_json_sha256,
        filter_sha256: fil.bundle_json_sha256,
        files: ShardFiles {
            scored: file("scored"),
            cleaned: file("cleaned"),
            rejects: file("rejects"),
        },
        counts: ShardCounts {
            rows_in: s.num_rows,
            rows_rejected: s.num_rows,
            ..ShardCounts::default()
        },
        stats: ShardStats::default(),
    }
}

/// One simulated worker: lease, one heartbeat, commit, report; until `stop`.
async fn worker(
    mut client: CoordinatorClient<Channel>,
    id: String,
    output: PathBuf,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
) -> (Vec<u32>, Vec<u32>) {
    let (mut poll_us, mut complete_us) = (Vec::new(), Vec::new());
    let reg = v1::RegisterWorkerRequest {
        protocol_version: PROTOCOL_VERSION,
        worker_id: id.clone(),
        slots: 1,
        ..Default::default()
    };
    if client.register_worker(reg).await.is_err() {
        return (poll_us, complete_us);
    }
    let poll = |leases: Vec<v1::LeaseProgress>, free: u32| v1::PollWorkRequest {
        protocol_version: PROTOCOL_VERSION,
        worker_id: id.clone(),
        free_slots: free,
        leases,
        accepting: true,
    };
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let Ok(r) = client.poll_work(poll(Vec::new(), 1)).await else {
            break;
        };
        poll_us.push(t.elapsed().as_micros() as u32);
        counters.polls.fetch_add(1, Ordering::Relaxed);
        let r = r.into_inner();
        let active = r.run_state() == v1::RunState::Active;
        let Some(lease) = r.new_leases.into_iter().next() else {
            if !active {
                break;
            }
            tokio::time::sleep(Duration::from_millis(r.next_poll_ms)).await;
            continue;
        };
        counters.leases.fetch_add(1, Ordering::Relaxed);
        let shard = lease.shard.clone().unwrap_or_default();
        // One heartbeat with the lease's progress, as a worker sends while it computes.
        let progress = v1::LeaseProgress {
            shard_id: shard.shard_id.clone(),
            attempt: lease.attempt,
            rows_done: 0,
            rows_total: shard.num_rows,
            round: lease.round,
            started: true,
        };
        let t = Instant::now();
        if client.poll_work(poll(vec![progress], 0)).await.is_err() {
            break;
        }
        poll_us.push(t.elapsed().as_micros() as u32);
        counters.polls.fetch_add(1, Ordering::Relaxed);
        let record = commit_record(&lease, &id);
        let path = output.join(format!("_commits/{}.json", shard.shard_id));
        let json = serde_json::to_vec(&record).expect("json");
        if tokio::fs::write(&path, json).await.is_err() {
            break;
        }
        let t = Instant::now();
        let done = client
            .complete_shard(v1::CompleteShardRequest {
                protocol_version: PROTOCOL_VERSION,
                round: lease.round,
                worker_id: id.clone(),
                commit: Some(v1::CommitRecord {
                    shard_id: shard.shard_id.clone(),
                    attempt: lease.attempt,
                    worker_id: id.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await;
        if done.is_err() {
            break;
        }
        complete_us.push(t.elapsed().as_micros() as u32);
        counters.completes.fetch_add(1, Ordering::Relaxed);
    }
    (poll_us, complete_us)
}

/// Median latency of `n` GetStatus calls, ms.
async fn status_latency(
    mut client: CoordinatorClient<Channel>,
    include_shards: bool,
    n: usize,
) -> f64 {
    let mut v = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        client
            .get_status(v1::GetStatusRequest {
                protocol_version: PROTOCOL_VERSION,
                include_shards,
            })
            .await
            .expect("status");
        v.push(t.elapsed().as_micros() as u32);
    }
    percentile(&mut v, 0.5)
}

fn percentile(v: &mut [u32], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    f64::from(v[i]) / 1000.0
}

/// Peak and current resident memory of process `pid`, MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

struct Figures {
    shards: usize,
    opened_s: f64,
    window_s: f64,
    polls: f64,
    leases: f64,
    completes: f64,
    poll_p50: f64,
    poll_p99: f64,
    complete_p50: f64,
    complete_p99: f64,
    status_p50: f64,
    status_full_p50: f64,
    peak_mib: f64,
}

async fn run_one(shards: usize, workers: usize, seconds: u64, tmp: &Path) -> Figures {
    let files = shards.div_ceil(1000);
    let input = tmp.join(format!("input-{shards}"));
    let output = tmp.join(format!("out-{shards}/round-0001"));
    write_input(&input, files, shards / files);
    std::fs::create_dir_all(output.join("_commits")).expect("output");
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .env(ROLE, "1")
        .env("RUST_LOG", "error")
        .arg(&input)
        .arg(&output)
        .stdout(Stdio::piped())
        .spawn()
        .expect("coordinator process");
    let pid = child.id();
    let mut line = String::new();
    {
        use std::io::BufRead;
        let stdout = child.stdout.take().expect("stdout");
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("ready line");
    }
    let parts: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(parts.first(), Some(&"ready"), "coordinator said: {line}");
    let port: u16 = parts[1].parse().expect("port");
    let opened_s = parts[2].parse::<f64>().expect("ms") / 1000.0;
    let url = format!("http://127.0.0.1:{port}");
    // 1,000 workers over 25 HTTP/2 connections, as many workers share a node's connection pool.
    let mut channels = Vec::new();
    for _ in 0..25 {
        channels.push(
            tonic::transport::Endpoint::from_shared(url.clone())
                .expect("url")
                .connect()
                .await
                .expect("connect"),
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|i| {
            let client = CoordinatorClient::new(channels[i % channels.len()].clone());
            tokio::spawn(worker(
                client,
                format!("sim-{i:04}"),
                output.clone(),
                stop.clone(),
                counters.clone(),
            ))
        })
        .collect();
    let deadline = started + Duration::from_secs(seconds);
    while Instant::now() < deadline && counters.completes.load(Ordering::Relaxed) < shards as u64 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let window_s = started.elapsed().as_secs_f64();
    let (polls, leases, completes) = (
        counters.polls.load(Ordering::Relaxed),
        counters.leases.load(Ordering::Relaxed),
        counters.completes.load(Ordering::Relaxed),
    );
    stop.store(true, Ordering::Relaxed);
    let mut poll_us = Vec::new();
    let mut complete_us = Vec::new();
    for t in tasks {
        if let Ok((p, c)) = t.await {
            poll_us.extend(p);
            complete_us.extend(c);
        }
    }
    let client = CoordinatorClient::new(channels[0].clone());
    let status_p50 = status_latency(client.clone(), false, 20).await;
    let status_full_p50 = status_latency(client, true, 3).await;
    let (peak_mib, _) = memory_mib(pid);
    let _ = child.kill();
    let _ = child.wait();
    Figures {
        shards,
        opened_s,
        window_s,
        polls: polls as f64 / window_s,
        leases: leases as f64 / window_s,
        completes: completes as f64 / window_s,
        poll_p50: percentile(&mut poll_us, 0.5),
        poll_p99: percentile(&mut poll_us, 0.99),
        complete_p50: percentile(&mut complete_us, 0.5),
        complete_p99: percentile(&mut complete_us, 0.99),
        status_p50,
        status_full_p50,
        peak_mib,
    }
}

fn main() {
    if std::env::var_os(ROLE).is_some() {
        let args: Vec<String> = std::env::args().collect();
        coordinator(&args[1], &args[2]);
        return;
    }
    let workers = arg("--workers", 1000) as usize;
    let seconds = arg("--seconds", 20);
    let tmp =
        std::env::temp_dir().join(format!("capfilt-coordinator-bench-{}", std::process::id()));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let figures: Vec<Figures> = [10_000usize, 100_000]
        .into_iter()
        .map(|shards| runtime.block_on(run_one(shards, workers, seconds, &tmp)))
        .collect();
    let _ = std::fs::remove_dir_all(&tmp);
    println!(
        "coordinator under {workers} simulated workers over loopback gRPC (lease, heartbeat, commit, report), window {seconds} s or until the round is done"
    );
    let row = |name: &str, f: &dyn Fn(&Figures) -> String| {
        print!("{name:<34}");
        for fig in &figures {
            print!("{:>16}", f(fig));
        }
        println!();
    };
    row("plan (shards)", &|f| f.shards.to_string());
    row("round opened (plan + rebuild), s", &|f| {
        format!("{:.2}", f.opened_s)
    });
    row("measured over, s", &|f| format!("{:.1}", f.window_s));
    row("polls / s", &|f| format!("{:.0}", f.polls));
    row("leases granted / s", &|f| format!("{:.0}", f.leases));
    row("commits reported / s", &|f| format!("{:.0}", f.completes));
    row("PollWork p50 / p99, ms", &|f| {
        format!("{:.2} / {:.2}", f.poll_p50, f.poll_p99)
    });
    row("CompleteShard p50 / p99, ms", &|f| {
        format!("{:.2} / {:.2}", f.complete_p50, f.complete_p99)
    });
    row("GetStatus p50, ms", &|f| format!("{:.2}", f.status_p50));
    row("GetStatus with shard list p50, ms", &|f| {
        format!("{:.1}", f.status_full_p50)
    });
    row("coordinator peak RSS, MiB", &|f| {
        format!("{:.0}", f.peak_mib)
    });
}
