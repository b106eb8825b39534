//! A CapFilt round in one process: a coordinator and 3 workers over real gRPC on 127.0.0.1:0,
//! on the local filesystem and on a real S3-compatible server (moto) on loopback; a poison
//! shard is quarantined; a store that ignores create-only PUTs is refused.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use capfilt_coordinator::{CoordinatorService, Round, RoundError, RoundSpec, Timing};
use capfilt_schemas::records::{FinalShardState, RoundManifest};
use capfilt_schemas::store;
use capfilt_tests::round::*;
use capfilt_worker::shard_loop::run_worker;
use futures_free::collect_objects;
use tokio::sync::watch;

/// Runs `spec` with `workers` in-process workers until the manifest is written.
async fn run_round(spec: RoundSpec, workers: usize, cache: &Path) -> RoundManifest {
    let options = spec.store_options.clone();
    run_round_with(spec, workers, cache, &|_| options.clone()).await
}

/// [`run_round`] with each worker's configuration changed by `tune`.
async fn run_round_tuned(
    spec: RoundSpec,
    workers: usize,
    cache: &Path,
    tune: &(dyn Fn(&mut capfilt_worker::shard_loop::WorkerConfig) + Sync),
) -> RoundManifest {
    let options = spec.store_options.clone();
    run_round_inner(spec, workers, cache, &|_| options.clone(), tune).await
}

/// [`run_round`] with each worker's store options from `worker_options(i)`.
async fn run_round_with(
    spec: RoundSpec,
    workers: usize,
    cache: &Path,
    worker_options: &dyn Fn(usize) -> Vec<(String, String)>,
) -> RoundManifest {
    run_round_inner(spec, workers, cache, worker_options, &|_| {}).await
}

async fn run_round_inner(
    spec: RoundSpec,
    workers: usize,
    cache: &Path,
    worker_options: &dyn Fn(usize) -> Vec<(String, String)>,
    tune: &(dyn Fn(&mut capfilt_worker::shard_loop::WorkerConfig) + Sync),
) -> RoundManifest {
    let round = Round::open(spec).await.expect("open round");
    let service = CoordinatorService::with_round(
        Timing {
            poll_interval: Duration::from_millis(50),
            lease_timeout: Duration::from_secs(5),
            exclusion: Duration::from_secs(600),
        },
        round,
    );
    let mut done = service.subscribe_done();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stop_rx) = watch::channel(false);
    let wait = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let coordinator = tokio::spawn(capfilt_coordinator::run(
        service,
        listener,
        wait(stop_rx.clone()),
    ));
    let handles: Vec<_> = (0..workers)
        .map(|i| {
            let mut config = worker_config(&url, &format!("w{i}"), cache, worker_options(i));
            tune(&mut config);
            tokio::spawn(run_worker(config, wait(stop_rx.clone())))
        })
        .collect();
    let manifest = tokio::time::timeout(Duration::from_secs(300), done.wait_for(Option::is_some))
        .await
        .ok()
        .and_then(|r| r.ok().and_then(|m| m.clone()));
    let finished = manifest.is_some();
    let _ = stop.send(true);
    let mut committed = 0;
    for h in handles {
        let summary = h.await.expect("worker task").expect("worker");
        committed += summary.committed;
    }
    coordinator
        .await
        .expect("coordinator task")
        .expect("coordinator");
    assert!(finished, "the round did not finish within 300 s");
    let manifest = manifest.expect("manifest");
    assert_eq!(
        committed as usize,
        manifest
            .shards
            .iter()
            .filter(|s| s.state == FinalShardState::Committed)
            .count(),
        "each committed shard was committed by exactly one worker"
    );
    manifest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_process_every_row_exactly_once() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = write_dataset(&tmp.path().join("web"), 3, 90, 30);
    let out = tmp.path().join("out/round-0001");
    let spec = round_spec(
        &data.dir.display().to_string(),
        &out.display().to_string(),
        60,
        Vec::new(),
    );
    let manifest = run_round(spec, 3, &tmp.path().join("cache")).await;
    assert_eq!(manifest.shards.len(), 6, "3 files x (60 + 30 rows)");
    assert!(manifest.quarantined().next().is_none());
    assert_exactly_once(&data, &out, &manifest, &BTreeSet::new());
    assert_eq!(manifest.totals.rows_rejected as usize, data.corrupt.len());
    let on_disk: RoundManifest =
        serde_json::from_slice(&std::fs::read(out.join("_manifest.json")).expect("manifest"))
            .expect("json");
    assert_eq!(on_disk.totals, manifest.totals);
    assert!(manifest.web_keep_rate.is_some() && manifest.synthetic_keep_rate.is_some());

    // Re-opening the finished round finds every shard committed: nothing to redo.
    let again = Round::open(round_spec(
        &data.dir.display().to_string(),
        &out.display().to_string(),
        60,
        Vec::new(),
    ))
    .await
    .expect("reopen");
    assert!(again.is_done());
    assert_eq!(again.count("committed"), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slots_sharing_one_continuously_batching_engine_process_every_row_exactly_once() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = write_dataset(&tmp.path().join("web"), 3, 90, 30);
    let out = tmp.path().join("out/round-0001");
    let spec = round_spec(
        &data.dir.display().to_string(),
        &out.display().to_string(),
        60,
        Vec::new(),
    );
    // One worker, 3 slots (3 shards in flight), one engine whose batch of 8 images' rows takes
    // images of all three shards as captions finish.
    let manifest = run_round_tuned(spec, 1, &tmp.path().join("cache"), &|c| {
        c.slots = 3;
        c.max_batch = Some(8);
        c.continuous_batching = Some(true);
    })
    .await;
    assert_eq!(manifest.shards.len(), 6);
    assert!(manifest.quarantined().next().is_none());
    assert_exactly_once(&data, &out, &manifest, &BTreeSet::new());
    assert_eq!(manifest.totals.rows_rejected as usize, data.corrupt.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shard_that_fails_every_attempt_is_quarantined_and_the_round_completes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = write_dataset(&tmp.path().join("web"), 2, 60, 30);
    let poisoned = data.dir.join("part-00001.parquet");
    corrupt_row_group(&poisoned, 1);
    let out = tmp.path().join("out/round-0001");
    let spec = round_spec(
        &data.dir.display().to_string(),
        &out.display().to_string(),
        30,
        Vec::new(),
    );
    let manifest = run_round(spec, 2, &tmp.path().join("cache")).await;
    let q: Vec<_> = manifest.quarantined().collect();
    assert_eq!(q.len(), 1, "{:?}", manifest.shards);
    assert_eq!(q[0].shard.shard_id, "f00001-g00001");
    assert_eq!(q[0].attempts, 3, "quarantined after max_failures attempts");
    assert!(q[0].last_error.as_deref().is_some_and(|e| !e.is_empty()));
    let lost: BTreeSet<String> = data
        .keys
        .iter()
        .filter(|k| k.starts_with("01-"))
        .skip(30)
        .cloned()
        .collect();
    assert_eq!(lost.len(), 30);
    assert_exactly_once(&data, &out, &manifest, &lost);
}

/// Every store request of the coordinator and the workers fails at a 10% rate (refused,
/// ambiguous writes, partial reads, and a share of slow responses): the round completes with
/// every input key present exactly once and nothing quarantined.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_round_over_a_store_failing_one_request_in_ten_loses_and_doubles_nothing() {
    use capfilt_schemas::store::faults::{FaultKind, injected};
    let tmp = tempfile::tempdir().expect("tmp");
    let data = write_dataset(&tmp.path().join("web"), 4, 60, 10);
    let out = tmp.path().join("out/round-0001");
    let faults: Vec<(String, String)> = [
        ("capfilt_fault_rate", "0.1"),
        ("capfilt_fault_slow_rate", "0.05"),
        ("capfilt_fault_delay_ms", "20"),
        ("capfilt_fault_seed", "1234"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let before = [
        FaultKind::Failed,
        FaultKind::Ambiguous,
        FaultKind::PartialRead,
    ]
    .map(injected);
    let spec = round_spec(
        &data.dir.display().to_string(),
        &out.display().to_string(),
        10,
        faults,
    );
    let manifest = run_round(spec, 3, &tmp.path().join("cache")).await;
    assert_eq!(manifest.shards.len(), 24);
    assert!(
        manifest.quarantined().next().is_none(),
        "{:?}",
        manifest.quarantined().collect::<Vec<_>>()
    );
    assert_exactly_once(&data, &out, &manifest, &BTreeSet::new());
    let after = [
        FaultKind::Failed,
        FaultKind::Ambiguous,
        FaultKind::PartialRead,
    ]
    .map(injected);
    let [failed, ambiguous, partial] = [0, 1, 2].map(|i| after[i] - before[i]);
    eprintln!("faults injected: {failed} refused, {ambiguous} ambiguous, {partial} partial reads");
    // Some 170 requests, so about 17 faults (three runs: 8-10 refused, 2-6 ambiguous writes,
    // 3-6 partial reads).
    assert!(
        failed > 0 && ambiguous + partial > 0,
        "too few faults injected ({failed} refused, {ambiguous} ambiguous, {partial} partial): the test proves nothing"
    );
    let (_, _, commits) = keys_by_commits(&out);
    assert_eq!(commits.len(), 24);
}

/// One worker whose store access is broken (every request fails) fails every shard it
/// touches; it is excluded and its failures quarantine no healthy shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_broken_worker_is_excluded_and_quarantines_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = write_dataset(&tmp.path().join("web"), 2, 60, 20);
    let out = tmp.path().join("out/round-0001");
    let spec = round_spec(
        &data.dir.display().to_string(),
        &out.display().to_string(),
        20,
        Vec::new(),
    );
    let broken: Vec<(String, String)> =
        [("capfilt_fault_rate", "1"), ("capfilt_store_retries", "0")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    let manifest = run_round_with(spec, 3, &tmp.path().join("cache"), &|i| {
        if i == 0 { broken.clone() } else { Vec::new() }
    })
    .await;
    assert!(
        manifest.quarantined().next().is_none(),
        "{:?}",
        manifest.quarantined().collect::<Vec<_>>()
    );
    assert_exactly_once(&data, &out, &manifest, &BTreeSet::new());
    let (_, _, commits) = keys_by_commits(&out);
    assert!(
        commits.iter().all(|c| c.worker_id != "w0"),
        "w0 committed nothing"
    );
}

#[tokio::test]
async fn a_schema_that_does_not_fit_the_mapping_stops_the_plan() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = write_dataset(&tmp.path().join("web"), 1, 10, 10);
    let mut spec = round_spec(
        &data.dir.display().to_string(),
        &tmp.path().join("out").display().to_string(),
        10,
        Vec::new(),
    );
    spec.mapping = capfilt_schemas::mapping::ColumnMapping::laion();
    let err = Round::open(spec)
        .await
        .expect_err("laion columns are not in the file");
    let msg = err.to_string();
    assert!(matches!(err, RoundError::Plan(_)), "{msg}");
    assert!(
        msg.contains("part-00000.parquet") && msg.contains("TEXT"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_round_whose_plan_changed_is_refused_naming_the_recorded_plan() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = write_dataset(&tmp.path().join("web"), 2, 40, 10);
    let out = tmp.path().join("out").display().to_string();
    let input = data.dir.display().to_string();
    let first = Round::open(round_spec(&input, &out, 20, Vec::new()))
        .await
        .expect("first open records the plan");
    assert_eq!(first.plan().shards.len(), 4);
    drop(first);
    // The same settings open again...
    Round::open(round_spec(&input, &out, 20, Vec::new()))
        .await
        .expect("same plan");
    // ...another target does not.
    let err = Round::open(round_spec(&input, &out, 10, Vec::new()))
        .await
        .expect_err("plan changed");
    let msg = err.to_string();
    assert!(matches!(err, RoundError::PlanChanged { .. }), "{msg}");
    assert!(
        msg.contains("_plan.json")
            && msg.contains("target_shard_rows 20, 4 shards")
            && msg.contains("target_shard_rows 10, 8 shards")
            && msg.contains("(target_shard_rows differs)"),
        "{msg}"
    );
    // Other parameters count too: a different threshold would mix two rounds in one output.
    let mut spec = round_spec(&input, &out, 20, Vec::new());
    spec.params.threshold = 0.9;
    let err = Round::open(spec).await.expect_err("params changed");
    assert!(
        err.to_string().contains("capfilt parameters differs"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commit_records_of_other_bundles_or_another_plan_are_refused_on_restart() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = write_dataset(&tmp.path().join("web"), 1, 40, 10);
    let out_dir = tmp.path().join("out");
    let out = out_dir.display().to_string();
    let input = data.dir.display().to_string();
    let m = run_round(
        round_spec(&input, &out, 20, Vec::new()),
        2,
        &tmp.path().join("cache"),
    )
    .await;
    let shard = m.shards[0].shard.shard_id.clone();
    let commit = out_dir.join(format!("_commits/{shard}.json"));
    let original = std::fs::read(&commit).expect("commit record");
    // A record made with another captioner.
    let mut record: serde_json::Value = serde_json::from_slice(&original).expect("json");
    record["captioner_sha256"] = serde_json::json!("0".repeat(64));
    std::fs::write(&commit, serde_json::to_vec(&record).expect("json")).expect("write");
    let err = Round::open(round_spec(&input, &out, 20, Vec::new()))
        .await
        .expect_err("other bundles");
    assert!(matches!(err, RoundError::CommitMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains("made with captioner 000000000000"),
        "{err}"
    );
    // A record covering other rows than the recorded plan's shard of that id.
    let mut record: serde_json::Value = serde_json::from_slice(&original).expect("json");
    record["shard"]["num_rows"] = serde_json::json!(7);
    std::fs::write(&commit, serde_json::to_vec(&record).expect("json")).expect("write");
    let err = Round::open(round_spec(&input, &out, 20, Vec::new()))
        .await
        .expect_err("other rows");
    assert!(err.to_string().contains("(7 rows)"), "{err}");
    std::fs::write(&commit, original).expect("restore");
    let reopened = Round::open(round_spec(&input, &out, 20, Vec::new()))
        .await
        .expect("the genuine record is accepted");
    assert!(reopened.is_done());
}

// --- S3 (moto on loopback) ---------------------------------------------------------------

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_port(port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("server on port {port} exited: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "server on port {port} did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn moto() -> (Server, u16) {
    let bin = repo().join(".venv/bin/moto_server");
    assert!(
        bin.exists(),
        "{} missing: run scripts/setup.sh (installs moto[server])",
        bin.display()
    );
    let port = free_port();
    let mut child = Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server");
    wait_for_port(port, &mut child);
    (Server(child), port)
}

fn create_bucket(port: u16, bucket: &str) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(s, "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").expect("write");
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 200"), "create bucket: {resp}");
}

fn s3_options(port: u16) -> Vec<(String, String)> {
    [
        ("aws_endpoint", format!("http://127.0.0.1:{port}")),
        ("aws_allow_http", "true".into()),
        ("aws_access_key_id", "test".into()),
        ("aws_secret_access_key", "test".into()),
        ("aws_region", "us-east-1".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

mod futures_free {
    use super::*;
    use object_store::ObjectStoreExt;

    /// Copies every object under `prefix` into `dest`.
    pub async fn collect_objects(prefix: &store::Location, dest: &Path) {
        use futures::TryStreamExt;
        let listed: Vec<object_store::ObjectMeta> = prefix
            .store
            .list(Some(&prefix.path))
            .try_collect()
            .await
            .expect("list");
        for meta in listed {
            let rel = meta
                .location
                .as_ref()
                .strip_prefix(prefix.path.as_ref())
                .unwrap_or(meta.location.as_ref());
            let path = dest.join(rel.trim_start_matches('/'));
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            let bytes = prefix
                .store
                .get(&meta.location)
                .await
                .expect("get")
                .bytes()
                .await
                .expect("bytes");
            std::fs::write(path, bytes).expect("write");
        }
    }

    /// Uploads a bundle folder's bundle.json and the files it lists under `prefix`.
    pub async fn upload_bundle(dir: &Path, prefix: &store::Location) {
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("bundle.json")).expect("bundle.json"))
                .expect("json");
        let files = manifest["files"].as_object().expect("files");
        for name in files.keys().map(String::as_str).chain(["bundle.json"]) {
            let loc = prefix.child(name);
            let bytes = std::fs::read(dir.join(name)).expect("read");
            loc.store
                .put(&loc.path, object_store::PutPayload::from(bytes))
                .await
                .expect("put");
        }
    }

    /// Uploads every file of `dir` under `prefix`.
    pub async fn upload(dir: &Path, prefix: &store::Location) {
        for entry in std::fs::read_dir(dir).expect("dir").flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let loc = prefix.child(&name);
            let bytes = std::fs::read(entry.path()).expect("read");
            loc.store
                .put(&loc.path, object_store::PutPayload::from(bytes))
                .await
                .expect("put");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_round_runs_against_an_s3_compatible_server() {
    let (_moto, port) = moto();
    create_bucket(port, "capfilt");
    let options = s3_options(port);
    let tmp = tempfile::tempdir().expect("tmp");
    let data = write_dataset(&tmp.path().join("web"), 2, 60, 30);
    let input = store::resolve("s3://capfilt/web", &options).expect("input");
    futures_free::upload(&data.dir, &input).await;
    let mut spec = round_spec(
        "s3://capfilt/web",
        "s3://capfilt/out/round-0001",
        30,
        options.clone(),
    );
    // The bundles come from the store too: workers stream them into their caches.
    for (kind, bundle) in [
        ("captioner", &mut spec.captioner),
        ("filter", &mut spec.filter),
    ] {
        let url = format!("s3://capfilt/models/{kind}");
        let prefix = store::resolve(&url, &options).expect("bundle prefix");
        futures_free::upload_bundle(&seed_bundle(kind), &prefix).await;
        bundle.url = url;
    }
    let manifest = run_round(spec, 3, &tmp.path().join("cache")).await;
    let local: PathBuf = tmp.path().join("downloaded");
    let out = store::resolve("s3://capfilt/out/round-0001", &options).expect("output");
    collect_objects(&out, &local).await;
    assert!(local.join("_manifest.json").is_file());
    assert_exactly_once(&data, &local, &manifest, &BTreeSet::new());
    assert!(
        manifest
            .shards
            .iter()
            .all(|s| s.shard.file.starts_with("s3://capfilt/web/"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_ignores_create_only_puts_is_refused_at_start_up() {
    let (_moto, port) = moto();
    create_bucket(port, "capfilt");
    let proxy_port = free_port();
    let mut child = Command::new(repo().join(".venv/bin/python"))
        .arg(repo().join("tests/support/strip_conditional_proxy.py"))
        .args([proxy_port.to_string(), port.to_string()])
        .spawn()
        .expect("proxy");
    wait_for_port(proxy_port, &mut child);
    let _proxy = Server(child);
    let tmp = tempfile::tempdir().expect("tmp");
    let data = write_dataset(&tmp.path().join("web"), 1, 10, 10);
    // Through moto itself, create-only works.
    let direct = store::resolve("s3://capfilt/out", &s3_options(port)).expect("direct");
    store::verify_create_only(&direct)
        .await
        .expect("moto honours If-None-Match");
    // Through the proxy, the coordinator refuses the output store with a clear message.
    let spec = round_spec(
        &data.dir.display().to_string(),
        "s3://capfilt/out/round-0001",
        10,
        s3_options(proxy_port),
    );
    let err = Round::open(spec).await.expect_err("must refuse");
    let msg = err.to_string();
    assert!(msg.contains("create-only"), "{msg}");
    // And so does the worker's check (the same function guards its first commit).
    let proxied = store::resolve("s3://capfilt/out", &s3_options(proxy_port)).expect("proxied");
    assert!(store::verify_create_only(&proxied).await.is_err());
}

/// A commit record for `shard` as a worker of `spec` would write it (no data files: the
/// scheduling state only reads the record).
fn record_for(
    spec: &RoundSpec,
    shard: &capfilt_schemas::records::ShardRef,
    rows: u64,
) -> capfilt_schemas::records::CommitRecord {
    use capfilt_schemas::records::*;
    let file = |t: &str| DataFileRef {
        path: format!("{t}/part-{}-1-w-0.parquet", shard.shard_id),
        rows: 0,
        bytes: 0,
    };
    CommitRecord {
        format_version: RECORD_FORMAT_VERSION,
        round: spec.round,
        shard: shard.clone(),
        attempt: 1,
        worker_id: "w".into(),
        committed_unix_ms: 0,
        captioner_sha256: spec.captioner.bundle_json_sha256.clone(),
        filter_sha256: spec.filter.bundle_json_sha256.clone(),
        files: ShardFiles {
            scored: file("scored"),
            cleaned: file("cleaned"),
            rejects: file("rejects"),
        },
        counts: ShardCounts {
            rows_in: rows,
            rows_rejected: rows,
            ..ShardCounts::default()
        },
        stats: ShardStats::default(),
    }
}

/// Hole 5: failures and quarantine live in `_attempts/` and survive a restarted coordinator; a late commit after the manifest makes the manifest be written again; a
/// record that does not account for every planned row is refused.
#[tokio::test]
async fn quarantine_and_attempts_survive_a_restart_and_a_late_commit_rewrites_the_manifest() {
    use capfilt_coordinator::round::write_attempts;
    use capfilt_coordinator::shard::{Blame, ShardState};
    let tmp = tempfile::tempdir().expect("tmp");
    let data = write_dataset(&tmp.path().join("web"), 1, 20, 10);
    let out = tmp.path().join("out/round-0001");
    let spec = round_spec(
        &data.dir.display().to_string(),
        &out.display().to_string(),
        10,
        Vec::new(),
    );
    let timeout = Duration::from_secs(60);
    let mut round = Round::open(spec.clone()).await.expect("open");
    let shards: Vec<_> = round.plan().shards.clone();
    assert_eq!(shards.len(), 2);
    // Shard 0 fails three times (two workers), shard 1 is leased once.
    for worker in ["w1", "w2", "w1"] {
        let g = round.lease(worker, 1, Instant::now(), timeout, &|_| false);
        assert_eq!(g[0].shard.shard_id, shards[0].shard_id, "{worker}");
        assert!(round.fail(
            &shards[0].shard_id,
            g[0].attempt,
            true,
            true,
            Blame::Shard,
            "bad rows"
        ));
    }
    let g = round.lease("w3", 1, Instant::now(), timeout, &|_| false);
    assert_eq!(
        (g[0].shard.shard_id.as_str(), g[0].attempt),
        (shards[1].shard_id.as_str(), 1)
    );
    write_attempts(round.take_attempts()).await;
    assert!(
        out.join("_attempts")
            .join(format!("{}.json", shards[0].shard_id))
            .is_file()
    );

    // A restarted coordinator: shard 0 stays quarantined with its attempts; shard 1, which
    // never failed, has no record (its next attempt's files are unique by their nonce anyway).
    let mut round = Round::open(spec.clone()).await.expect("reopen");
    let states: Vec<ShardState> = round.shards().map(|(_, s)| s.clone()).collect();
    assert!(
        matches!(&states[0], ShardState::Quarantined { attempts: 3, last_error, .. } if last_error == "bad rows"),
        "{:?}",
        states[0]
    );
    let g = round.lease("w3", 1, Instant::now(), timeout, &|_| false);
    assert_eq!(g[0].shard.shard_id, shards[1].shard_id);
    assert!(
        !out.join("_attempts")
            .join(format!("{}.json", shards[1].shard_id))
            .exists()
    );

    // A record that leaves rows out is refused: the shard is given up with the reason.
    assert!(!round.apply_commit(record_for(&spec, &shards[1], 3)));
    assert!(
        round
            .shards()
            .nth(1)
            .and_then(|(_, s)| s.last_error())
            .is_some_and(|e| e.contains("3 of the shard's 10 rows")),
        "{:?}",
        round.shards().nth(1)
    );
    // The genuine record wins; the manifest is written; a late commit of the quarantined
    // shard then asks for it again, and the new manifest has every shard committed.
    assert!(round.apply_commit(record_for(&spec, &shards[1], 10)));
    assert!(round.is_done());
    round.mark_manifest_written();
    assert!(round.apply_commit(record_for(&spec, &shards[0], 10)));
    assert!(
        !round.manifest_written(),
        "a late commit asks for the manifest again"
    );
    assert!(round.manifest().quarantined().next().is_none());
    // A restarted coordinator that finds a record leaving rows out gives its shard up with the
    // reason, as the live path does, instead of refusing the whole round.
    let short = record_for(&spec, &shards[1], 3);
    std::fs::write(
        out.join(format!("_commits/{}.json", shards[1].shard_id)),
        serde_json::to_vec(&short).expect("json"),
    )
    .expect("write");
    let reopened = Round::open(spec.clone()).await.expect("opens");
    let (_, s1) = reopened.shards().nth(1).expect("shard 1");
    assert!(
        matches!(s1, ShardState::Quarantined { last_error, .. } if last_error.contains("3 of the shard's 10 rows") && last_error.contains("move it away")),
        "{s1:?}"
    );
    // The round's indexes (counts per state, committed rows) agree with its shards.
    for name in ["pending", "leased", "committed", "quarantined"] {
        let scanned = round.shards().filter(|(_, s)| s.name() == name).count();
        assert_eq!(round.count(name), scanned, "{name}");
    }
    assert_eq!(round.rows_committed(), 20);
}
