//! Training checkpoints under `RUN_DIR/checkpoints/step-NNNNNNN/`: the model as a Hugging Face
//! directory (config.json, safetensors, generation_config.json; weights in the master dtype, so a
//! resume is exact), the optimizer state one file per rank (`optim-RRRRR-of-WWWWW.safetensors`:
//! fp32 master weights and Adam moments of each rank's slice, readable on any world size) and
//! `trainer_state.json` (step, global data cursor, optimizer step count, skipped steps, seed),
//! written last.
//!
//! A save writes everything into `.tmp-step-NNNNNNN/` (rank 0 the model and the state, every rank
//! its optimizer shard; barriers between), syncs it, renames it into place and then rewrites the
//! `latest` pointer: a crash at any point leaves the previous checkpoint complete, and the newest
//! directory holding `trainer_state.json` is what a restart resumes from. With several nodes the
//! run directory must be on a shared file system.

use crate::optim::Optimizer;
use openseek_common::{AtomicOutputs, Failure};
use openseek_mix::store::SampleStore;
use sha2::{Digest, Sha256};
use openseek_dist::Comm;
use openseek_model::DeepseekV3;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Who is training: recorded in the run directory and in checkpoints.
pub struct RunInfo {
    pub tool: String,
    pub version: String,
    pub git_commit: String,
}
pub const STATE: &str = "trainer_state.json";
/// Largest model shard written (bytes).
const SHARD_BYTES: usize = 4 << 30;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    pub format: String,
    /// Optimizer steps (iterations) done, skipped ones included.
    pub step: u64,
    /// The data cursor: samples consumed by all ranks together.
    pub consumed_samples: u64,
    /// Updates the optimizer took (its bias-correction count).
    pub optimizer_steps: u64,
    pub skipped_steps: u64,
    /// Samples of the steps whose update was taken: what the learning-rate schedule has counted
    /// (as Megatron's scheduler, it does not advance on a skipped step). Absent in states written
    /// before it existed, whose schedule counted every consumed sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_samples: Option<u64>,
    /// The sample store the run trains on (absent in older states).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataIdentity>,
    /// Whether the model's multi-token-prediction layers were trained (`mtp_loss_coeff` > 0: in
    /// the optimizer, whose saved state then holds theirs). Absent for a model without MTP layers
    /// and in states written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtp_trained: Option<bool>,
    /// The seed of the initial weights. Training itself draws no random numbers (no dropout,
    /// deterministic routing), so the seed and the cursor are the whole random state.
    pub seed: u64,
    pub tool: String,
    pub version: String,
    pub git_commit: String,
}

/// What identifies a sample store's order: a resume on another store would read other samples
/// at the same cursor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DataIdentity {
    pub store: PathBuf,
    /// sha256 of the store's manifest (its datasets, blend, seed, sizes) without its provenance.
    pub manifest_sha256: String,
    pub samples: u64,
    pub seq_len: u32,
}

impl DataIdentity {
    pub fn of(store: &SampleStore) -> Result<DataIdentity, Failure> {
        let path = store.dir().join(openseek_mix::store::MANIFEST);
        let bytes = std::fs::read(&path).map_err(|e| Failure::io_at(&path, "cannot read", &e))?;
        // Not its provenance (when, where and by which process it was built): a store rebuilt
        // the same way is the same store.
        let mut manifest: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| Failure::data(format!("{}: {e}", path.display())))?;
        if let Some(m) = manifest.as_object_mut() {
            m.remove("provenance");
        }
        let canonical = serde_json::to_vec(&manifest).unwrap();
        Ok(DataIdentity { store: store.dir().to_path_buf(), manifest_sha256: hex::encode(Sha256::digest(&canonical)), samples: store.len(), seq_len: store.seq_len() })
    }
}

impl TrainerState {
    /// The state of a run that has not taken a step.
    pub fn new(seed: u64, info: &RunInfo, data: DataIdentity) -> TrainerState {
        TrainerState {
            format: "openseek-trainer-state".into(),
            step: 0,
            consumed_samples: 0,
            optimizer_steps: 0,
            skipped_steps: 0,
            schedule_samples: Some(0),
            data: Some(data),
            mtp_trained: None,
            seed,
            tool: info.tool.clone(),
            version: info.version.clone(),
            git_commit: info.git_commit.clone(),
        }
    }

    /// The samples the learning-rate schedule has counted.
    pub fn schedule_samples(&self) -> u64 {
        self.schedule_samples.unwrap_or(self.consumed_samples)
    }

    /// Refuse to resume the checkpoint `dir` on another sample store than the one it was trained
    /// on, unless `allow` (then say what changed).
    pub fn check_data(&self, now: &DataIdentity, dir: &Path, allow: bool) -> Result<(), Failure> {
        let Some(was) = &self.data else { return Ok(()) };
        if was.manifest_sha256 == now.manifest_sha256 && was.samples == now.samples && was.seq_len == now.seq_len {
            return Ok(());
        }
        let what = format!(
            "{} was trained on the store {} ({} samples of {} tokens, manifest sha256 {}), the data now is {} ({} samples of {} tokens, manifest sha256 {})",
            dir.display(),
            was.store.display(),
            was.samples,
            was.seq_len,
            &was.manifest_sha256[..12.min(was.manifest_sha256.len())],
            now.store.display(),
            now.samples,
            now.seq_len,
            &now.manifest_sha256[..12]
        );
        if allow {
            eprintln!("os-train: warning: {what}; resuming at sample {} of the new store (--allow-data-change)", self.consumed_samples);
            return Ok(());
        }
        Err(Failure::data(format!(
            "{what}: resuming would read other samples than the run's order; rebuild the original store, or pass --allow-data-change to continue on this one"
        )))
    }
}

impl TrainerState {
    /// Refuse to resume the checkpoint `dir` with its MTP layers trained when they were not (or
    /// the other way round): its optimizer state holds exactly the parameters that were trained.
    pub fn check_mtp(&self, mtp_loss_coeff: f64, dir: &Path) -> Result<(), Failure> {
        let now = mtp_loss_coeff > 0.0;
        match self.mtp_trained {
            Some(was) if was != now => {
                let (was, had) = match was {
                    true => ("trained (mtp_loss_coeff > 0)", "holds theirs"),
                    false => ("not trained (mtp_loss_coeff = 0)", "has none for them"),
                };
                Err(Failure::config(format!(
                    "{}: its multi-token-prediction layers were {was}, so its optimizer state {had}; it cannot resume with mtp_loss_coeff = {mtp_loss_coeff}. \
                     Resume with the run's mtp_loss_coeff, or start a new run from these weights (init_from = \"{}\")",
                    dir.display(),
                    dir.display()
                )))
            }
            _ => Ok(()),
        }
    }
}

pub fn root(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

pub fn name(step: u64) -> String {
    format!("step-{step:07}")
}

/// Complete checkpoints (those holding trainer_state.json), oldest first.
pub fn complete(run_dir: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(root(run_dir)) else { return vec![] };
    let mut out: Vec<(u64, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            e.path().join(STATE).is_file().then(|| (step, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// The newest complete checkpoint, if any.
pub fn newest(run_dir: &Path) -> Option<(u64, PathBuf)> {
    complete(run_dir).pop()
}

/// Remove what interrupted saves left behind.
pub fn clean_temporaries(run_dir: &Path) -> Result<(), Failure> {
    let Ok(entries) = std::fs::read_dir(root(run_dir)) else { return Ok(()) };
    for e in entries.filter_map(|e| e.ok()) {
        if e.file_name().to_string_lossy().starts_with(".tmp-step-") {
            eprintln!("os-train: removing {} (left by an interrupted save)", e.path().display());
            std::fs::remove_dir_all(e.path()).map_err(|err| Failure::io_at(&e.path(), "cannot remove", &err))?;
        }
    }
    Ok(())
}

pub fn read_state(dir: &Path) -> Result<TrainerState, Failure> {
    let path = dir.join(STATE);
    let text = std::fs::read_to_string(&path).map_err(|e| Failure::io_at(&path, "cannot read", &e))?;
    serde_json::from_str(&text).map_err(|e| Failure::data(format!("{}: not a trainer state: {e}", path.display())))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// A test fault (`crate::fault`): `kill-during-save:STEP` kills the process (SIGKILL) after the
/// model files of that step's checkpoint are written and before the checkpoint is complete.
fn fault_during_save(step: u64) {
    if crate::fault::at("kill-during-save", step) {
        // SAFETY: kill(2) on our own pid; no memory is touched.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// The files of a tokenizer directory that a Hugging Face model directory carries.
fn is_tokenizer_file(name: &str) -> bool {
    matches!(
        name,
        "tokenizer.json"
            | "tokenizer_config.json"
            | "special_tokens_map.json"
            | "tokenizer.model"
            | "vocab.json"
            | "merges.txt"
            | "added_tokens.json"
            | "chat_template.jinja"
    ) || name.ends_with(".tiktoken")
}

/// Copy the tokenizer files of `from` (when it is a directory) into the checkpoint directory `to`.
pub fn copy_tokenizer(from: &Path, to: &Path) -> Result<usize, Failure> {
    let Ok(entries) = std::fs::read_dir(from) else { return Ok(0) };
    let mut copied = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if entry.path().is_file() && is_tokenizer_file(name) {
            let dst = to.join(name);
            std::fs::copy(entry.path(), &dst).map_err(|e| Failure::io_at(&dst, "cannot copy the tokenizer file to", &e))?;
            copied += 1;
        }
    }
    Ok(copied)
}

/// Save step `state.step` (every rank calls it); returns its directory. Older checkpoints beyond
/// `keep_last` are removed. Returns once every rank's part is written and the checkpoint is complete.
pub fn save(
    run_dir: &Path,
    model: &DeepseekV3,
    tokenizer: Option<&Path>,
    opt: &Optimizer,
    state: &TrainerState,
    keep_last: Option<usize>,
    comm: &mut Comm,
) -> Result<PathBuf, Failure> {
    let root = root(run_dir);
    let name = name(state.step);
    let tmp = root.join(format!(".tmp-{name}"));
    let dest = root.join(&name);
    let lead = comm.rank() == 0;
    // Where the model computes from bf16 copies, the checkpoint holds the fp32 masters.
    let masters = opt.masters(comm)?;
    if lead {
        std::fs::create_dir_all(&root).map_err(|e| Failure::io_at(&root, "cannot create", &e))?;
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Failure::io_at(&tmp, "cannot remove", &e))?;
        }
        let with_masters = (!masters.is_empty()).then(|| {
            let mut w: openseek_model::weights::Weights = model.named_tensors().into_iter().collect();
            w.extend(masters);
            DeepseekV3::from_weights(model.config.clone(), w)
        });
        openseek_model::save(with_masters.as_ref().unwrap_or(model), &tmp, model.kind(), SHARD_BYTES)?;
        if let Some(dir) = tokenizer {
            copy_tokenizer(dir, &tmp)?;
        }
        fault_during_save(state.step);
    }
    comm.store().barrier(&format!("save {name}: model written"))?;
    opt.save(&tmp)?;
    comm.store().barrier(&format!("save {name}: optimizer shards written"))?;
    if lead {
        finish(run_dir, &tmp, &dest, state, keep_last)?;
    }
    comm.store().barrier(&format!("save {name}: complete"))?;
    Ok(dest)
}

/// Rank 0, after every rank wrote its part: the trainer state, the rename, `latest`, pruning.
fn finish(run_dir: &Path, tmp: &Path, dest: &Path, state: &TrainerState, keep_last: Option<usize>) -> Result<(), Failure> {
    let root = root(run_dir);
    let name = name(state.step);
    openseek_common::write_json_file(&tmp.join(STATE), state)?;
    sync_dir(tmp);
    if dest.exists() {
        std::fs::remove_dir_all(dest).map_err(|e| Failure::io_at(dest, "cannot replace", &e))?;
    }
    std::fs::rename(tmp, dest).map_err(|e| Failure::io_at(dest, "cannot rename the checkpoint into place", &e))?;
    sync_dir(&root);
    let mut out = AtomicOutputs::new();
    let latest = root.join("latest");
    let mut f = out.create(&latest)?;
    f.write_all(format!("{name}\n").as_bytes()).map_err(|e| Failure::io_at(&latest, "cannot write", &e))?;
    drop(f);
    out.commit()?;
    if let Some(k) = keep_last {
        let all = complete(run_dir);
        for (_, old) in all.iter().take(all.len().saturating_sub(k)) {
            std::fs::remove_dir_all(old).map_err(|e| Failure::io_at(old, "cannot remove an old checkpoint", &e))?;
        }
    }
    Ok(())
}
