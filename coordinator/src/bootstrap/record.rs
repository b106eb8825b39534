//! What a bootstrap run records in the output store: `{output}/_run.json` (the run's phase,
//! its bundles and one line per round), and per round `promotion.json` (the gate's decision,
//! written create-only so it is never taken twice) and `eval.json` (the round's bundles'
//! figures on the held-out split).

use std::collections::BTreeMap;

use capfilt_schemas::records::ShardCounts;
use capfilt_schemas::store::{Location, StoreError};
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::phase::RunPhase;

/// `_run.json`'s format version.
pub const RUN_FORMAT_VERSION: u32 = 2;

/// Figures of a bundle on the eval split (`exact_match`, `shape_acc`, `auc`, ...).
pub type Metrics = BTreeMap<String, f64>;

/// A captioner and filter pair by URL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundlePair {
    /// Captioner bundle URL.
    pub captioner: String,
    /// Filter bundle URL.
    pub filter: String,
}

/// One round in `_run.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RoundRecord {
    /// Round number.
    pub round: u32,
    /// Captioner bundle URL and sha256 of its bundle.json.
    pub captioner: (String, String),
    /// Filter bundle URL and sha256.
    pub filter: (String, String),
    /// Rows in, scored, rejected; texts kept.
    pub totals: ShardCounts,
    /// Web keep rate.
    pub web_keep_rate: Option<f64>,
    /// Synthetic keep rate.
    pub synthetic_keep_rate: Option<f64>,
    /// Shards quarantined.
    #[serde(default)]
    pub quarantined: u64,
    /// Seconds the round's serving took (the run that finished it).
    pub seconds: f64,
    /// Images per second of the rows that run processed (unknown when an earlier, unrecorded
    /// run had done them all).
    pub images_per_second: Option<f64>,
    /// Captioner figures on the eval split.
    pub captioner_eval: Metrics,
    /// Filter figures on the eval split.
    pub filter_eval: Metrics,
    /// The trainer stage after this round, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<Promotion>,
}

/// The promotion gate's record (`round-NNNN/promotion.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Promotion {
    /// Whether the new bundles were promoted.
    pub promoted: bool,
    /// Tolerance used.
    pub tolerance: f64,
    /// New captioner URL.
    pub captioner: String,
    /// New filter URL.
    pub filter: String,
    /// Old and new captioner exact match.
    pub captioner_exact_match: (f64, f64),
    /// Old and new filter ROC-AUC.
    pub filter_auc: (f64, f64),
    /// New bundles' full figures.
    pub captioner_eval: Metrics,
    /// New filter figures.
    pub filter_eval: Metrics,
    /// Seconds spent in the trainer stage (training, export, evaluation).
    pub training_seconds: f64,
}

/// `_run.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunRecord {
    /// [`RUN_FORMAT_VERSION`].
    #[serde(default)]
    pub format_version: u32,
    /// Rounds asked for.
    pub rounds_requested: u32,
    /// `running`, `done`, `stopped` (refused by the gate) or `failed`.
    pub status: String,
    /// Where the run is.
    pub phase: RunPhase,
    /// The bundles of the round the phase is about.
    pub bundles: BundlePair,
    /// Finished rounds.
    pub rounds: Vec<RoundRecord>,
    /// The coordinator instance that wrote this record.
    #[serde(default)]
    pub coordinator: String,
    /// Unix milliseconds of the last change.
    #[serde(default)]
    pub updated_unix_ms: u64,
}

impl RunRecord {
    /// A new run starting at round `first` with `bundles`.
    pub fn new(rounds: u32, bundles: BundlePair, first: u32) -> Self {
        Self {
            format_version: RUN_FORMAT_VERSION,
            rounds_requested: rounds,
            status: "running".into(),
            phase: RunPhase::Planning {
                round: first.max(1),
            },
            bundles,
            rounds: Vec::new(),
            coordinator: String::new(),
            updated_unix_ms: 0,
        }
    }

    /// The record of round `round`, created when missing.
    pub fn round_mut(&mut self, round: u32) -> &mut RoundRecord {
        let i = match self.rounds.iter().position(|r| r.round == round) {
            Some(i) => i,
            None => {
                self.rounds.push(RoundRecord {
                    round,
                    ..RoundRecord::default()
                });
                self.rounds.sort_by_key(|r| r.round);
                self.rounds
                    .iter()
                    .position(|r| r.round == round)
                    .unwrap_or_default()
            }
        };
        &mut self.rounds[i]
    }

    /// The record of round `round`.
    pub fn round(&self, round: u32) -> Option<&RoundRecord> {
        self.rounds.iter().find(|r| r.round == round)
    }

    /// `status` as the phase implies it.
    pub fn status_of(phase: &RunPhase) -> &'static str {
        match phase {
            RunPhase::Done { .. } => "done",
            RunPhase::Stopped { .. } => "stopped",
            RunPhase::Failed { .. } => "failed",
            _ => "running",
        }
    }
}

/// Reads a JSON object; `None` when it does not exist.
pub async fn read_json<T: DeserializeOwned>(loc: &Location) -> Result<Option<T>, StoreError> {
    match loc.store.get(&loc.path).await {
        Ok(got) => {
            let bytes = got.bytes().await.map_err(|source| StoreError::Io {
                operation: "reading",
                location: loc.display.clone(),
                source,
            })?;
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::BadLocation {
                    location: loc.display.clone(),
                    message: format!("unreadable JSON: {e}"),
                })
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(source) => Err(StoreError::Io {
            operation: "reading",
            location: loc.display.clone(),
            source,
        }),
    }
}

/// Writes a JSON object (overwriting).
pub async fn write_json<T: Serialize>(loc: &Location, value: &T) -> Result<(), StoreError> {
    let json = serde_json::to_vec_pretty(value).map_err(|e| StoreError::BadLocation {
        location: loc.display.clone(),
        message: e.to_string(),
    })?;
    loc.put_bytes(json).await
}

/// Creates the object at `loc` only if it does not exist (`PutMode::Create`); `Ok(false)` when
/// it does.
pub async fn put_create(loc: &Location, bytes: Vec<u8>) -> Result<bool, StoreError> {
    let opts = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    match loc
        .store
        .put_opts(&loc.path, PutPayload::from(bytes), opts)
        .await
    {
        Ok(_) => Ok(true),
        Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
        Err(source) => Err(StoreError::Io {
            operation: "creating",
            location: loc.display.clone(),
            source,
        }),
    }
}

/// Creates a JSON object only if it does not exist; returns the object that is there afterwards
/// (ours, or the one an earlier writer created).
pub async fn create_json<T: Serialize + DeserializeOwned>(
    loc: &Location,
    value: T,
) -> Result<(T, bool), StoreError> {
    let json = serde_json::to_vec_pretty(&value).map_err(|e| StoreError::BadLocation {
        location: loc.display.clone(),
        message: e.to_string(),
    })?;
    if put_create(loc, json).await? {
        return Ok((value, true));
    }
    let existing = read_json(loc)
        .await?
        .ok_or_else(|| StoreError::BadLocation {
            location: loc.display.clone(),
            message: "exists but cannot be read back".into(),
        })?;
    Ok((existing, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_mut_keeps_rounds_sorted_and_unique() {
        let mut r = RunRecord::new(3, BundlePair::default(), 1);
        r.round_mut(2).seconds = 2.0;
        r.round_mut(1).seconds = 1.0;
        r.round_mut(2).seconds = 3.0;
        let got: Vec<(u32, f64)> = r.rounds.iter().map(|x| (x.round, x.seconds)).collect();
        assert_eq!(got, [(1, 1.0), (2, 3.0)]);
    }

    #[tokio::test]
    async fn create_json_keeps_the_first_writers_value() {
        let dir = tempfile::tempdir().expect("tempdir");
        let loc =
            capfilt_schemas::store::resolve(&dir.path().join("p.json").display().to_string(), &[])
                .expect("resolves");
        let (v, created) = create_json(&loc, 1u32).await.expect("creates");
        assert_eq!((v, created), (1, true));
        let (v, created) = create_json(&loc, 2u32).await.expect("reads back");
        assert_eq!((v, created), (1, false));
        assert_eq!(read_json::<u32>(&loc).await.expect("reads"), Some(1));
        let missing = capfilt_schemas::store::resolve(
            &dir.path().join("nope.json").display().to_string(),
            &[],
        )
        .expect("resolves");
        assert_eq!(read_json::<u32>(&missing).await.expect("reads"), None);
    }
}
