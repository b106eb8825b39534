//! Exactly-once commits: the first create-only commit record wins; a later attempt of the same
//! shard sees the conflict and deletes its own data files.

use capfilt_schemas::records::{ShardRef, ShardStats};
use capfilt_worker::output::ShardTables;
use capfilt_worker::shard_loop::{LeaseResult, commit_shard};
use capfilt_worker::store;

fn files(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for table in ["scored", "cleaned", "rejects"] {
        for e in std::fs::read_dir(dir.join(table))
            .into_iter()
            .flatten()
            .flatten()
        {
            out.push(format!("{table}/{}", e.file_name().to_string_lossy()));
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn the_first_commit_wins_and_a_late_attempt_cleans_up_after_itself() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = store::resolve(&tmp.path().display().to_string(), &[]).expect("local");
    let shard = ShardRef {
        shard_id: "f00000-g00000".into(),
        file: "web/part-00000.parquet".into(),
        first_row_group: 0,
        num_row_groups: 1,
        first_row: 0,
        num_rows: 0,
    };
    let commit = |attempt: u32, worker: &'static str| {
        let out = out.clone();
        let shard = shard.clone();
        async move {
            let tables = ShardTables::new(1, false).finish().expect("tables");
            commit_shard(
                &out,
                1,
                &shard,
                attempt,
                worker,
                tables,
                ShardStats::default(),
                "{}",
                "a",
                "b",
            )
            .await
            .expect("store")
        }
    };
    // The late attempt (2) commits first; the earlier attempt (1) comes back afterwards.
    assert!(matches!(commit(2, "fast").await, LeaseResult::Committed(_)));
    let winner = std::fs::read(tmp.path().join("_commits/f00000-g00000.json")).expect("commit");
    let winner_files = files(tmp.path());
    assert_eq!(winner_files.len(), 3);
    assert!(matches!(commit(1, "slow").await, LeaseResult::Conflict));
    assert_eq!(
        std::fs::read(tmp.path().join("_commits/f00000-g00000.json")).expect("commit"),
        winner
    );
    assert_eq!(
        files(tmp.path()),
        winner_files,
        "the loser's files are gone, the winner's intact"
    );
}
