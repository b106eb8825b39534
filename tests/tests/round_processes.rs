//! Fault tests with real processes: a coordinator and worker processes of the `capfilt` binary.
//! A worker is killed with SIGKILL in the middle of a shard, another is frozen (SIGSTOP) until
//! its lease is lost and the shard committed by someone else, then thawed; the coordinator is
//! killed with SIGKILL mid-round and restarted; a soak kills short-lived workers at random
//! (at least 20 kills) and the coordinator twice. Every round still ends with each input row
//! exactly once in the output. Waits are on conditions (status polled every 50 ms) with
//! generous deadlines, never on sleeps tuned to a machine.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use capfilt_proto::v1::coordinator_client::CoordinatorClient;
use capfilt_proto::{PROTOCOL_VERSION, v1};
use capfilt_schemas::records::{CommitRecord, RoundManifest};
use capfilt_tests::round::*;

fn capfilt_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    // target/debug/deps/round_processes-HASH -> target/debug/capfilt
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("capfilt");
    assert!(
        bin.is_file(),
        "{} missing: build it with `cargo build -p capfilt`",
        bin.display()
    );
    bin
}

struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill {sig} {}", self.name);
    }
    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Cluster {
    port: u16,
    data: Dataset,
    out: PathBuf,
    cache: PathBuf,
    logs: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    fn new(files: usize, rows: usize, group: usize) -> Self {
        let tmp = tempfile::tempdir().expect("tmp");
        let data = write_dataset(&tmp.path().join("web"), files, rows, group);
        let logs = tmp.path().join("logs");
        std::fs::create_dir_all(&logs).expect("logs");
        Self {
            port: free_port(),
            data,
            out: tmp.path().join("out"),
            cache: tmp.path().join("cache"),
            logs,
            _tmp: tmp,
        }
    }

    fn round_dir(&self) -> PathBuf {
        self.out.join("round-0001")
    }

    fn log(&self, name: &str) -> Stdio {
        Stdio::from(std::fs::File::create(self.logs.join(format!("{name}.log"))).expect("log file"))
    }

    fn coordinator(&self, name: &str, target_rows: u64) -> Proc {
        self.coordinator_on(name, target_rows, self.port)
    }

    fn coordinator_on(&self, name: &str, target_rows: u64, port: u16) -> Proc {
        self.coordinator_with(name, target_rows, port, &[])
    }

    fn coordinator_with(&self, name: &str, target_rows: u64, port: u16, extra: &[&str]) -> Proc {
        let child = Command::new(capfilt_bin())
            .args([
                "coordinator",
                "--insecure",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .args(extra)
            .args(["--poll-interval-ms", "50", "--lease-timeout-ms", "1500"])
            .args(["--output-lease-s", "2"])
            .arg("--input")
            .arg(&self.data.dir)
            .arg("--output")
            .arg(&self.out)
            .arg("--captioner")
            .arg(seed_bundle("captioner"))
            .arg("--filter")
            .arg(seed_bundle("filter"))
            .args([
                "--target-shard-rows",
                &target_rows.to_string(),
                "--batch-size",
                "8",
                "--exit-when-done",
            ])
            .arg("--cache-dir")
            .arg(&self.cache)
            .stdout(self.log(name))
            .stderr(self.log(&format!("{name}.err")))
            .spawn()
            .expect("coordinator process");
        Proc {
            name: name.into(),
            child,
        }
    }

    fn worker(&self, id: &str) -> Proc {
        let child = Command::new(capfilt_bin())
            .args([
                "worker",
                "--coordinator",
                &format!("http://127.0.0.1:{}", self.port),
            ])
            .args([
                "--worker-id",
                id,
                "--intra-threads",
                "1",
                "--drain-timeout-s",
                "5",
            ])
            .arg("--cache-dir")
            .arg(&self.cache)
            .stdout(self.log(id))
            .stderr(self.log(&format!("{id}.err")))
            .spawn()
            .expect("worker process");
        Proc {
            name: id.into(),
            child,
        }
    }

    fn logs_text(&self) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(&self.logs)
            .into_iter()
            .flatten()
            .flatten()
        {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out += &format!(
                "--- {}\n{}\n",
                e.path().display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        out
    }
}

async fn status(port: u16) -> Option<v1::GetStatusResponse> {
    let mut client = CoordinatorClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .ok()?;
    client
        .get_status(v1::GetStatusRequest {
            protocol_version: PROTOCOL_VERSION,
            include_shards: true,
        })
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// Polls the coordinator every 50 ms until `pred` holds; panics after `secs` with the logs.
async fn wait_status(
    c: &Cluster,
    secs: u64,
    what: &str,
    pred: impl Fn(&v1::GetStatusResponse) -> bool,
) -> v1::GetStatusResponse {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(s) = status(c.port).await
            && pred(&s)
        {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            c.logs_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts coordinator `name` until it takes the output over: a successor is refused (exit 2)
/// while the previous holder's lease lives, and takes over once it lapses, or at once when the
/// holder's process on this machine is gone.
async fn take_over(c: &Cluster, name: &str, target_rows: u64, extra: &[&str]) -> Proc {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut p = c.coordinator_with(name, target_rows, c.port, extra);
        tokio::time::sleep(Duration::from_millis(300)).await;
        if !p.exited() || p.child.wait().ok().and_then(|s| s.code()) != Some(2) {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "never took over\n{}",
            c.logs_text()
        );
    }
}

async fn wait_exit(c: &Cluster, p: &mut Proc, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !p.exited() {
        assert!(
            Instant::now() < deadline,
            "{} did not finish\n{}",
            p.name,
            c.logs_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn manifest(c: &Cluster) -> RoundManifest {
    serde_json::from_slice(&std::fs::read(c.round_dir().join("_manifest.json")).expect("manifest"))
        .expect("json")
}

fn commits(c: &Cluster) -> BTreeMap<String, CommitRecord> {
    keys_by_commits(&c.round_dir())
        .2
        .into_iter()
        .map(|r| (r.shard.shard_id.clone(), r))
        .collect()
}

fn data_files(c: &Cluster, shard: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for table in ["scored", "cleaned", "rejects"] {
        for e in std::fs::read_dir(c.round_dir().join(table))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with(&format!("part-{shard}-")) {
                out.insert(format!("{table}/{name}"));
            }
        }
    }
    out
}

fn leased_with_progress(s: &v1::GetStatusResponse) -> Vec<v1::ShardStatus> {
    s.shard_list
        .iter()
        .filter(|x| {
            x.state() == v1::ShardState::Leased && x.rows_done > 0 && x.rows_done < x.rows_total
        })
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_frozen_workers_lose_no_rows_and_cannot_commit_over_the_winner() {
    let c = Cluster::new(4, 96, 16);
    let mut coordinator = c.coordinator("coordinator", 96);
    let workers: Vec<Proc> = (0..3).map(|i| c.worker(&format!("w{i}"))).collect();

    // Two shards in the middle of their work, on different workers.
    let s = wait_status(&c, 120, "two shards in progress on two workers", |s| {
        let busy = leased_with_progress(s);
        busy.iter()
            .map(|x| &x.worker_id)
            .collect::<BTreeSet<_>>()
            .len()
            >= 2
    })
    .await;
    let busy = leased_with_progress(&s);
    let killed = busy[0].clone();
    let frozen = busy
        .iter()
        .find(|x| x.worker_id != killed.worker_id)
        .cloned()
        .expect("second");
    let proc_of = |id: &str| {
        workers
            .iter()
            .find(|w| w.name == id)
            .expect("worker process")
    };
    proc_of(&killed.worker_id).signal("-KILL");
    proc_of(&frozen.worker_id).signal("-STOP");

    // The frozen worker's lease expires and another worker commits its shard (the commit record
    // in the store says so; the coordinator may already have finished the round).
    let commit_file = c
        .round_dir()
        .join(format!("_commits/{}.json", frozen.shard_id));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !commit_file.is_file() {
        assert!(
            Instant::now() < deadline,
            "the frozen worker's shard was not committed by another attempt\n{}",
            c.logs_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proc_of(&frozen.worker_id).signal("-CONT");

    wait_exit(&c, &mut coordinator, 180).await;
    let m = manifest(&c);
    assert!(m.quarantined().next().is_none(), "{:?}", m.shards);
    assert_exactly_once(&c.data, &c.round_dir(), &m, &BTreeSet::new());
    let records = commits(&c);
    let killed_shard = &records[&killed.shard_id];
    assert_ne!(
        killed_shard.worker_id, killed.worker_id,
        "the killed worker never committed"
    );
    let frozen_shard = &records[&frozen.shard_id];
    assert_ne!(
        frozen_shard.worker_id, frozen.worker_id,
        "the late worker did not commit over the winner"
    );
    assert!(frozen_shard.attempt > frozen.attempt);
    // Whatever the thawed worker wrote for its lost attempt, it deletes again (or never wrote).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stray: Vec<String> = data_files(&c, &frozen.shard_id)
            .into_iter()
            .filter(|f| f.contains(&format!("-{}-{}-", frozen.attempt, frozen.worker_id)))
            .collect();
        if stray.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "losing attempt's files left behind: {stray:?}\n{}",
            c.logs_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_mid_round_restarts_without_redoing_committed_shards() {
    let c = Cluster::new(4, 96, 16);
    let mut coordinator = c.coordinator("coordinator-1", 48);
    let _workers: Vec<Proc> = (0..2).map(|i| c.worker(&format!("w{i}"))).collect();
    wait_status(&c, 120, "some shards committed, others not yet", |s| {
        let n = s.shards.unwrap_or_default();
        n.committed >= 2
            && n.committed + n.quarantined < (n.pending + n.leased + n.committed + n.quarantined)
    })
    .await;
    // While the first coordinator lives, a second one on the same output is refused (exit 2).
    let mut second = c.coordinator_on("coordinator-dup", 48, free_port());
    wait_exit(&c, &mut second, 60).await;
    assert_eq!(second.child.wait().expect("status").code(), Some(2));
    let said = std::fs::read_to_string(c.logs.join("coordinator-dup.err.log")).expect("log");
    assert!(said.contains("is held by coordinator"), "{said}");

    coordinator.signal("-KILL");
    wait_exit(&c, &mut coordinator, 30).await;
    let before = commits(&c);
    assert!(before.len() >= 2);
    let files_before: BTreeMap<String, BTreeSet<String>> = before
        .keys()
        .map(|id| (id.clone(), data_files(&c, id)))
        .collect();

    // The dead coordinator's lease on the output lapses (2 s); until then a successor is
    // refused, after it the successor takes over and finishes the round.
    let mut restarted = take_over(&c, "coordinator-2", 48, &[]).await;
    wait_exit(&c, &mut restarted, 180).await;
    assert!(
        restarted.child.wait().expect("status").success(),
        "{}",
        c.logs_text()
    );
    let took = std::fs::read_to_string(c.logs.join("coordinator-2.err.log")).expect("log");
    assert!(took.contains("took over the output"), "{took}");
    let m = manifest(&c);
    assert_exactly_once(&c.data, &c.round_dir(), &m, &BTreeSet::new());
    let after = commits(&c);
    for (id, record) in &before {
        assert_eq!(&after[id], record, "commit of {id} unchanged");
        assert_eq!(
            data_files(&c, id),
            files_before[id],
            "shard {id} was not processed again"
        );
    }
    assert!(
        after.len() > before.len(),
        "the restarted coordinator finished the rest"
    );
}

/// xorshift64*: the soak's kill schedule, the same on every run.
struct Schedule(u64);

impl Schedule {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A lifetime between `lo` and `hi` milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo))
    }
}

/// Item 11 of the exactly-once issue: workers live 0.3 to 1.5 s each and are SIGKILLed, 24
/// times in all, three at a time; the coordinator is SIGKILLed and restarted twice during
/// that. Afterwards two workers finish the round, and every input key is in the committed
/// outputs exactly once, with no shard quarantined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_soak_of_workers_and_coordinators_keeps_every_key_exactly_once() {
    const KILLS: usize = 24;
    const COORDINATOR_KILLS_AT: [usize; 2] = [8, 16];
    let c = Cluster::new(5, 400, 20);
    // Lost leases are the point of the soak: they must never quarantine a shard.
    let extra = ["--max-failures", "1000"];
    let mut coordinator = c.coordinator_with("coordinator-0", 40, c.port, &extra);
    let mut schedule = Schedule(0x5EED_CAFE_F00D_0001);
    let mut live: Vec<(Proc, Instant)> = Vec::new();
    let mut spawned = 0;
    let mut kills = 0;
    let mut restarts = 0;
    let started = Instant::now();
    while kills < KILLS {
        assert!(
            !coordinator.exited(),
            "the round ended after {kills} kills: make the soak's dataset larger\n{}",
            c.logs_text()
        );
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "soak too slow\n{}",
            c.logs_text()
        );
        while live.len() < 3 {
            let w = c.worker(&format!("soak-{spawned}"));
            spawned += 1;
            let at = Instant::now() + schedule.millis(300, 1500);
            live.push((w, at));
        }
        let now = Instant::now();
        if let Some(i) = live.iter().position(|(_, at)| *at <= now) {
            let (mut w, _) = live.swap_remove(i);
            w.signal("-KILL");
            wait_exit(&c, &mut w, 30).await;
            kills += 1;
            if COORDINATOR_KILLS_AT.contains(&kills) {
                coordinator.signal("-KILL");
                wait_exit(&c, &mut coordinator, 30).await;
                restarts += 1;
                // A holder on this machine whose process is gone is taken over at once; retry
                // only if the new one started before the old one's exit was visible.
                coordinator = take_over(&c, &format!("coordinator-{restarts}"), 40, &extra).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(restarts, 2);
    // The three workers alive now are not killed any more; two more help them finish.
    let _survivors = live;
    let _finishers: Vec<Proc> = (0..2).map(|i| c.worker(&format!("finisher-{i}"))).collect();
    wait_exit(&c, &mut coordinator, 240).await;
    let m = manifest(&c);
    assert!(
        m.quarantined().next().is_none(),
        "{:?}",
        m.quarantined().collect::<Vec<_>>()
    );
    assert_exactly_once(&c.data, &c.round_dir(), &m, &BTreeSet::new());
    let workers_that_committed: BTreeSet<String> =
        commits(&c).values().map(|r| r.worker_id.clone()).collect();
    eprintln!(
        "soak: {kills} worker kills, {restarts} coordinator restarts, {} shards committed by {} workers in {:.0} s",
        m.shards.len(),
        workers_that_committed.len(),
        started.elapsed().as_secs_f64()
    );
}
