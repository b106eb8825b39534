//! serde types of the records a round leaves in the object store: the per-shard commit record
//! (`_commits/{shard}.json`) and the round manifest (`_manifest.json`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::mapping::ColumnMapping;
use crate::outputs::RejectReason;

/// Format version of commit records and manifests written by this build.
pub const RECORD_FORMAT_VERSION: u32 = 1;

/// Row and text counts of a shard (or, summed, of a round).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardCounts {
    /// Input rows; `rows_in == rows_scored + rows_rejected`.
    pub rows_in: u64,
    /// Rows whose image was decoded and scored.
    pub rows_scored: u64,
    /// Rows written to `rejects/`.
    pub rows_rejected: u64,
    /// Web texts judged by the filter.
    pub web_texts: u64,
    /// Web texts kept.
    pub web_kept: u64,
    /// Synthetic texts judged by the filter.
    pub synthetic_texts: u64,
    /// Synthetic texts kept.
    pub synthetic_kept: u64,
    /// Rejected rows by reason.
    #[serde(default)]
    pub rejects_by_reason: BTreeMap<RejectReason, u64>,
    /// Scored rows without a web text (null, empty or blank caption):
    /// `rows_scored == web_texts + web_missing`.
    #[serde(default)]
    pub web_missing: u64,
    /// Rows whose caption was cut at the worker's `max_caption_chars`.
    #[serde(default)]
    pub captions_truncated: u64,
    /// Rows with a null or empty key, given the key `{file stem}:{row}`.
    #[serde(default)]
    pub keys_derived: u64,
    /// Rows whose key an earlier row of the same shard had (both are processed; readers
    /// that join on keys should know).
    #[serde(default)]
    pub keys_duplicated: u64,
}

impl ShardCounts {
    /// Adds `other` into `self` (for round totals).
    pub fn add(&mut self, other: &ShardCounts) {
        self.rows_in += other.rows_in;
        self.rows_scored += other.rows_scored;
        self.rows_rejected += other.rows_rejected;
        self.web_texts += other.web_texts;
        self.web_kept += other.web_kept;
        self.synthetic_texts += other.synthetic_texts;
        self.synthetic_kept += other.synthetic_kept;
        self.web_missing += other.web_missing;
        self.captions_truncated += other.captions_truncated;
        self.keys_derived += other.keys_derived;
        self.keys_duplicated += other.keys_duplicated;
        for (reason, n) in &other.rejects_by_reason {
            *self.rejects_by_reason.entry(*reason).or_default() += n;
        }
    }

    /// Whether every input row is accounted for and the reasons add up to the rejects.
    pub fn is_consistent(&self) -> bool {
        self.rows_in == self.rows_scored + self.rows_rejected
            && self.rows_rejected == self.rejects_by_reason.values().sum::<u64>()
            && self.rows_scored == self.web_texts + self.web_missing
            && self.web_kept <= self.web_texts
            && self.synthetic_kept <= self.synthetic_texts
    }

    /// Share of web texts kept, or `None` when there were none.
    pub fn web_keep_rate(&self) -> Option<f64> {
        ratio(self.web_kept, self.web_texts)
    }

    /// Share of synthetic texts kept, or `None` when there were none.
    pub fn synthetic_keep_rate(&self) -> Option<f64> {
        ratio(self.synthetic_kept, self.synthetic_texts)
    }
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

/// Time spent on a shard, by stage, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardStats {
    /// From lease to commit.
    pub wall_ms: u64,
    /// Reading the input row groups.
    pub read_ms: u64,
    /// Decoding and preprocessing images.
    pub decode_ms: u64,
    /// Captioner inference.
    pub caption_ms: u64,
    /// Filter inference.
    pub filter_ms: u64,
    /// Writing the output files.
    pub write_ms: u64,
}

/// One input shard: a contiguous range of row groups of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRef {
    /// Stable shard id.
    pub shard_id: String,
    /// URL of the input file.
    pub file: String,
    /// First row group of the shard.
    pub first_row_group: u32,
    /// Number of row groups.
    pub num_row_groups: u32,
    /// Index within the file of the shard's first row.
    pub first_row: u64,
    /// Rows in the shard.
    pub num_rows: u64,
}

/// One output data file of a shard, relative to the round prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFileRef {
    /// e.g. `scored/part-{shard}-{attempt}.parquet`
    pub path: String,
    /// Rows in the file.
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
}

/// The data files of a committed shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardFiles {
    /// `scored/` file.
    pub scored: DataFileRef,
    /// `cleaned/` file.
    pub cleaned: DataFileRef,
    /// `rejects/` file.
    pub rejects: DataFileRef,
}

/// `_attempts/{shard}.json`: the coordinator's scheduling history of a shard that is not
/// committed (attempts granted, failures counted, the workers it failed on, quarantine),
/// rewritten on every change so a restarted coordinator keeps numbering attempts and keeps
/// quarantined shards quarantined. Delete it to give a quarantined shard another chance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptsRecord {
    /// [`RECORD_FORMAT_VERSION`].
    pub format_version: u32,
    /// Round.
    pub round: u32,
    /// Shard id.
    pub shard_id: String,
    /// Leases granted so far.
    pub attempts: u32,
    /// Failures counted towards quarantine.
    pub failures: u32,
    /// The last failure.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Distinct workers it failed on.
    #[serde(default)]
    pub failed_on: Vec<String>,
    /// Leases that expired before their work started.
    #[serde(default)]
    pub unstarted_expiries: u32,
    /// Whether it is quarantined.
    pub quarantined: bool,
}

/// `_commits/{shard}.json`: written last and create-only; the first attempt to write it wins and
/// readers follow it (never raw listings) to find a shard's data files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitRecord {
    /// [`RECORD_FORMAT_VERSION`].
    pub format_version: u32,
    /// Bootstrap round.
    pub round: u32,
    /// The input shard.
    pub shard: ShardRef,
    /// The attempt that won.
    pub attempt: u32,
    /// Worker that wrote it.
    pub worker_id: String,
    /// Unix milliseconds of the commit.
    pub committed_unix_ms: u64,
    /// sha256 of the captioner's bundle.json.
    pub captioner_sha256: String,
    /// sha256 of the filter's bundle.json.
    pub filter_sha256: String,
    /// The shard's output files.
    pub files: ShardFiles,
    /// Counts.
    pub counts: ShardCounts,
    /// Timings.
    pub stats: ShardStats,
}

/// A model bundle as used by a round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleUse {
    /// Where the bundle was loaded from.
    pub url: String,
    /// sha256 of its bundle.json (which holds the sha256 of every other file).
    pub bundle_json_sha256: String,
}

/// Decoding and filtering parameters of a round (DESIGN.md §3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapfiltParams {
    /// `nucleus`, `greedy` or `beam`.
    pub decoding: String,
    /// Nucleus sampling top-p.
    pub top_p: f32,
    /// Sampling temperature.
    pub temperature: f32,
    /// Beams for beam search.
    pub num_beams: u32,
    /// Repetition penalty.
    pub repetition_penalty: f32,
    /// Minimum caption length in tokens.
    pub min_length: u32,
    /// Maximum caption length in tokens.
    pub max_length: u32,
    /// Synthetic captions per image.
    pub candidates: u32,
    /// ITM probability at or above which a text is kept.
    pub threshold: f32,
    /// Captioner prompt, stripped from outputs.
    pub prompt: String,
}

impl Default for CapfiltParams {
    fn default() -> Self {
        Self {
            decoding: "nucleus".into(),
            top_p: 0.9,
            temperature: 1.0,
            num_beams: 3,
            repetition_penalty: 1.1,
            min_length: 10,
            max_length: 30,
            candidates: 1,
            threshold: 0.5,
            prompt: "a picture of ".into(),
        }
    }
}

/// One input file of a round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    /// URL of the file.
    pub url: String,
    /// Size in bytes.
    pub size: u64,
    /// Rows.
    pub rows: u64,
    /// Row groups.
    pub row_groups: u32,
}

/// Final state of a shard in a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalShardState {
    /// Committed by a worker.
    Committed,
    /// Failed every allowed attempt.
    Quarantined,
}

/// A shard's line in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardOutcome {
    /// The shard.
    pub shard: ShardRef,
    /// Committed or quarantined.
    pub state: FinalShardState,
    /// Attempts made.
    pub attempts: u32,
    /// Path of the commit record (committed shards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Counts (committed shards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<ShardCounts>,
    /// Last error (quarantined shards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// `_manifest.json`: a round's summary, written once every shard is committed or quarantined.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundManifest {
    /// [`RECORD_FORMAT_VERSION`].
    pub format_version: u32,
    /// Bootstrap round.
    pub round: u32,
    /// Unix milliseconds when the manifest was written.
    pub created_unix_ms: u64,
    /// Input prefix.
    pub input_url: String,
    /// Input files.
    pub inputs: Vec<InputFile>,
    /// Column mapping in force.
    pub mapping: ColumnMapping,
    /// Target rows per shard of the plan.
    pub target_shard_rows: u64,
    /// Captioner used.
    pub captioner: BundleUse,
    /// Filter used.
    pub filter: BundleUse,
    /// Parameters.
    pub params: CapfiltParams,
    /// Every shard, committed or quarantined.
    pub shards: Vec<ShardOutcome>,
    /// Sum over committed shards.
    pub totals: ShardCounts,
    /// Share of web texts kept.
    pub web_keep_rate: Option<f64>,
    /// Share of synthetic texts kept.
    pub synthetic_keep_rate: Option<f64>,
}

impl RoundManifest {
    /// Quarantined shards.
    pub fn quarantined(&self) -> impl Iterator<Item = &ShardOutcome> {
        self.shards
            .iter()
            .filter(|s| s.state == FinalShardState::Quarantined)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(rows_in: u64, rejected: u64) -> ShardCounts {
        let mut c = ShardCounts {
            rows_in,
            rows_scored: rows_in - rejected,
            rows_rejected: rejected,
            web_texts: rows_in - rejected,
            web_kept: (rows_in - rejected) / 2,
            synthetic_texts: rows_in - rejected,
            synthetic_kept: rows_in - rejected,
            ..Default::default()
        };
        if rejected > 0 {
            c.rejects_by_reason
                .insert(RejectReason::DecodeError, rejected);
        }
        c
    }

    #[test]
    fn counts_add_up_and_stay_consistent() {
        let mut total = ShardCounts::default();
        total.add(&counts(100, 3));
        total.add(&counts(50, 0));
        assert_eq!(total.rows_in, 150);
        assert_eq!(total.rows_rejected, 3);
        assert_eq!(total.rejects_by_reason[&RejectReason::DecodeError], 3);
        assert!(total.is_consistent());
        total.rows_scored += 1;
        assert!(!total.is_consistent());
        assert_eq!(ShardCounts::default().web_keep_rate(), None);
    }

    #[test]
    fn commit_record_round_trips_through_json() {
        let file = |p: &str| DataFileRef {
            path: p.into(),
            rows: 1,
            bytes: 10,
        };
        let record = CommitRecord {
            format_version: RECORD_FORMAT_VERSION,
            round: 1,
            shard: ShardRef {
                shard_id: "s-0001".into(),
                file: "file:///data/web/part-00000.parquet".into(),
                first_row_group: 0,
                num_row_groups: 2,
                first_row: 0,
                num_rows: 2,
            },
            attempt: 2,
            worker_id: "w1".into(),
            committed_unix_ms: 1,
            captioner_sha256: "a".repeat(64),
            filter_sha256: "b".repeat(64),
            files: ShardFiles {
                scored: file("scored/part-s-0001-2.parquet"),
                cleaned: file("cleaned/part-s-0001-2.parquet"),
                rejects: file("rejects/part-s-0001-2.parquet"),
            },
            counts: counts(2, 1),
            stats: ShardStats::default(),
        };
        let json = serde_json::to_string_pretty(&record).expect("json");
        assert!(json.contains("\"decode_error\": 1"), "{json}");
        let back: CommitRecord = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, record);
    }
}
