//! Checkpoints: everything a run needs to continue exactly where it stopped.
//!
//! A checkpoint is a folder `checkpoints/step-NNNNNNNNN/` in the run folder holding
//! - `model.bpk`: the network (Burn's burnpack record, parameter ids included);
//! - `optimizer.bpk`: the optimizer state (Adam's moments, momentum buffers), keyed by those ids;
//! - `model_ema.bpk`: the moving average of the weights, with `train.ema_decay`;
//! - `state.json`: the step, the positions of the run's two random streams (training data, and
//!   the t and noise draws), the wall time and the loss interval so far, the configuration it
//!   belongs to, and the length and SHA-256 digest of each `.bpk` file.
//!
//! The learning rate needs no state: it is a function of the step. A checkpoint is written into
//! a fresh `checkpoints/.partial*` folder file by file (each `fsync`ed; what a killed process
//! left there is removed first), then renamed to its final name and the
//! parent folder `fsync`ed, so a crash at any moment leaves either the old set of checkpoints or
//! the new one, never a half-written one under a final name. The two newest are kept.

use std::fs;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::ModuleOptimizer;
use burn::store::ModuleRecord;
use burn::tensor::{Bytes, Tensor};
use serde::{Deserialize, Serialize};

use crate::config::{RunConfig, TSampling};
use crate::network::{ReverseModel, ReverseNetwork};
use crate::run::{RunDir, RunError};
use crate::trainer::{ResumeState, TrainProgress, optimizer};

/// The `format` of a checkpoint's `state.json`.
pub const CHECKPOINT_FORMAT: &str = "diffusion-checkpoint/2";

/// How many checkpoints a run keeps (the newest ones).
pub const KEEP: usize = 2;

const PARTIAL: &str = ".partial";

pub use crate::run::EMA_FILE;

/// What `state.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointState {
    /// [`CHECKPOINT_FORMAT`].
    pub format: String,
    /// Steps done.
    pub step: usize,
    /// Word position of the training-data stream (a u128 in decimal).
    pub data_rng_word_pos: String,
    /// Word position of the t and noise stream (a u128 in decimal).
    pub noise_rng_word_pos: String,
    /// Training wall time so far, seconds.
    pub wall_time_s: f64,
    /// Sum of the losses since the last metrics row.
    pub interval_loss_sum: f64,
    /// Steps since the last metrics row.
    pub interval_steps: usize,
    /// The mean loss of the last metrics row.
    pub last_loss_bits: Option<f64>,
    /// The importance sampler of the steps t (`t_sampling = "importance"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_sampler: Option<crate::importance::StepSampler>,
    /// The run configuration the checkpoint belongs to.
    pub config: RunConfig,
    /// Length and SHA-256 of `model.bpk`.
    pub model_file: FileDigest,
    /// Length and SHA-256 of `optimizer.bpk`.
    pub optimizer_file: FileDigest,
    /// Length and SHA-256 of `model_ema.bpk`, the moving average of the weights
    /// (`train.ema_decay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema_file: Option<FileDigest>,
}

pub use crate::source::FileDigest;

/// A checkpoint found in a run folder.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Its folder.
    pub path: PathBuf,
    /// Its `state.json`.
    pub state: CheckpointState,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |source| RunError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn corrupt(path: &Path, message: impl Into<String>) -> RunError {
    RunError::Corrupt {
        path: path.display().to_string(),
        message: message.into(),
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), RunError> {
    use std::io::Write;
    let mut f = fs::File::create(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

fn sync_dir(path: &Path) -> Result<(), RunError> {
    fs::File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io_err(path))
}

/// The checkpoints folder of a run.
pub fn folder(run: &RunDir) -> PathBuf {
    run.file("checkpoints")
}

fn step_of(name: &str) -> Option<usize> {
    name.strip_prefix("step-")?.parse().ok()
}

/// The checkpoint folders of a run, oldest first.
pub fn list(run: &RunDir) -> Result<Vec<(usize, PathBuf)>, RunError> {
    let dir = folder(run);
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
        let entry = entry.map_err(io_err(&dir))?;
        if let Some(step) = entry.file_name().to_str().and_then(step_of) {
            found.push((step, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// A non-finite parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a network parameter is not finite (entry {entry})")]
pub struct NonFiniteParameter {
    /// Its index within its parameter tensor.
    pub entry: usize,
}

/// Raises an error naming the first non-finite parameter, if any.
pub fn check_finite<M: Module>(model: &M) -> Result<(), NonFiniteParameter> {
    struct Finite(Option<usize>);
    impl ModuleVisitor for Finite {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if self.0.is_none() {
                let data = param.val().into_data().convert::<f32>();
                if let Ok(values) = data.as_slice::<f32>() {
                    self.0 = values.iter().position(|v| !v.is_finite());
                }
            }
        }
    }
    let mut visitor = Finite(None);
    model.visit(&mut visitor);
    match visitor.0 {
        None => Ok(()),
        Some(entry) => Err(NonFiniteParameter { entry }),
    }
}

/// Writes a checkpoint of `model` and `optim` at `state.step` atomically, then removes all but
/// the [`KEEP`] newest.
pub fn save<M: Module>(
    run: &RunDir,
    model: &M,
    optim: &ModuleOptimizer,
    ema: Option<&M>,
    mut state: CheckpointState,
) -> Result<PathBuf, RunError> {
    let dir = folder(run);
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    // What a killed process left half-written.
    for entry in fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
        if entry.file_name().to_string_lossy().starts_with(PARTIAL) {
            let p = entry.path();
            fs::remove_dir_all(&p).map_err(io_err(&p))?;
        }
    }
    // Removed on any error below; kept (and renamed) once whole.
    let partial_dir = tempfile::Builder::new()
        .prefix(PARTIAL)
        .tempdir_in(&dir)
        .map_err(io_err(&dir))?;
    let partial = partial_dir.path().to_path_buf();

    let model_bytes = model
        .clone()
        .into_record()
        .into_bytes()
        .map_err(|e| corrupt(&partial, format!("cannot serialise the model: {e}")))?;
    let optim_bytes = optim
        .into_bytes()
        .map_err(|e| corrupt(&partial, format!("cannot serialise the optimizer: {e}")))?;
    state.format = CHECKPOINT_FORMAT.into();
    state.model_file = FileDigest::of(&model_bytes);
    state.optimizer_file = FileDigest::of(&optim_bytes);
    write_synced(&partial.join("model.bpk"), &model_bytes)?;
    write_synced(&partial.join("optimizer.bpk"), &optim_bytes)?;
    state.ema_file = None;
    if let Some(ema) = ema {
        let bytes = ema.clone().into_record().into_bytes().map_err(|e| {
            corrupt(
                &partial,
                format!("cannot serialise the averaged weights: {e}"),
            )
        })?;
        state.ema_file = Some(FileDigest::of(&bytes));
        write_synced(&partial.join(EMA_FILE), &bytes)?;
    }
    let json = serde_json::to_string_pretty(&state).expect("serialisable");
    write_synced(&partial.join("state.json"), format!("{json}\n").as_bytes())?;
    sync_dir(&partial)?;

    let final_path = dir.join(format!("step-{:09}", state.step));
    if final_path.exists() {
        fs::remove_dir_all(&final_path).map_err(io_err(&final_path))?;
    }
    fs::rename(partial_dir.keep(), &final_path).map_err(io_err(&final_path))?;
    sync_dir(&dir)?;

    let all = list(run)?;
    for (_, old) in all.iter().take(all.len().saturating_sub(KEEP)) {
        fs::remove_dir_all(old).map_err(io_err(old))?;
    }
    Ok(final_path)
}

/// The newest checkpoint of a run, its `state.json` read and checked against `config` and its
/// files against their recorded lengths and hashes; `None` when the run has none.
pub fn latest(run: &RunDir, config: &RunConfig) -> Result<Option<Checkpoint>, RunError> {
    let Some((step, path)) = list(run)?.pop() else {
        return Ok(None);
    };
    let state_path = path.join("state.json");
    let text = fs::read_to_string(&state_path).map_err(io_err(&state_path))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| corrupt(&state_path, format!("not a checkpoint state ({e})")))?;
    let format = value.get("format").and_then(|f| f.as_str()).unwrap_or("");
    if format != CHECKPOINT_FORMAT {
        return Err(corrupt(
            &state_path,
            format!("format {format:?} is not {CHECKPOINT_FORMAT:?}"),
        ));
    }
    let state: CheckpointState = serde_json::from_value(value)
        .map_err(|e| corrupt(&state_path, format!("not a checkpoint state ({e})")))?;
    if state.step != step {
        return Err(corrupt(
            &state_path,
            format!("holds step {} but its folder says {step}", state.step),
        ));
    }
    if &state.config != config {
        return Err(corrupt(
            &state_path,
            "belongs to another configuration than the run's config.json",
        ));
    }
    // Both files whole: a resumed run must not start before finding out it cannot.
    read_checked(&path.join("model.bpk"), &state.model_file)?;
    read_checked(&path.join("optimizer.bpk"), &state.optimizer_file)?;
    if let Some(digest) = &state.ema_file {
        read_checked(&path.join(EMA_FILE), digest)?;
    }
    Ok(Some(Checkpoint { path, state }))
}

fn read_checked(path: &Path, digest: &FileDigest) -> Result<Vec<u8>, RunError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    if bytes.len() as u64 != digest.len {
        return Err(corrupt(
            path,
            format!(
                "truncated or altered: {} bytes where the checkpoint recorded {}",
                bytes.len(),
                digest.len
            ),
        ));
    }
    if FileDigest::of(&bytes) != *digest {
        return Err(corrupt(
            path,
            "altered: its hash does not match the checkpoint",
        ));
    }
    Ok(bytes)
}

impl Checkpoint {
    /// Loads the network and the optimizer state into `model` (a network of the run's shape)
    /// and `optim`.
    pub fn restore<M: Module>(
        &self,
        model: M,
        optim: ModuleOptimizer,
    ) -> Result<(M, ModuleOptimizer), RunError> {
        let model_path = self.path.join("model.bpk");
        let bytes = read_checked(&model_path, &self.state.model_file)?;
        let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes))
            .map_err(|e| corrupt(&model_path, format!("not a model record ({e})")))?;
        let model = model
            .try_load_record(record)
            .map_err(|e| corrupt(&model_path, format!("does not match the run's model ({e})")))?;
        let optim_path = self.path.join("optimizer.bpk");
        let bytes = read_checked(&optim_path, &self.state.optimizer_file)?;
        let optim = optim
            .from_bytes(Bytes::from_bytes_vec(bytes))
            .map_err(|e| corrupt(&optim_path, format!("not an optimizer record ({e})")))?;
        Ok((model, optim))
    }

    /// Loads the moving average of the weights, when the checkpoint has one, into `template`
    /// (a network of the run's shape on the plain device).
    pub fn restore_ema<M: Module>(&self, template: M) -> Result<Option<M>, RunError> {
        let Some(digest) = &self.state.ema_file else {
            return Ok(None);
        };
        let path = self.path.join(EMA_FILE);
        let bytes = read_checked(&path, digest)?;
        let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes))
            .map_err(|e| corrupt(&path, format!("not a model record ({e})")))?;
        template
            .try_load_record(record)
            .map(Some)
            .map_err(|e| corrupt(&path, format!("does not match the run's model ({e})")))
    }

    /// The saved position of the training-data stream.
    pub fn data_word_pos(&self) -> Result<u128, RunError> {
        self.parse_pos(&self.state.data_rng_word_pos)
    }

    /// The saved position of the t and noise stream.
    pub fn noise_word_pos(&self) -> Result<u128, RunError> {
        self.parse_pos(&self.state.noise_rng_word_pos)
    }

    /// What [`crate::Trainer::resume`] continues from: the checkpoint's weights loaded into
    /// `model` (a model of the run's shape), its optimizer state into the optimizer the run's
    /// config describes, its moving average, streams, loss averages and importance sampler.
    pub fn resume_state<N: ReverseNetwork>(
        &self,
        model: ReverseModel<N>,
    ) -> Result<ResumeState<N>, RunError> {
        let s = &self.state;
        let (model, optimizer) = self.restore(model, optimizer(&s.config.train.optimizer))?;
        let ema = self.restore_ema(model.valid())?;
        let state_file = || self.path.join("state.json").display().to_string();
        if s.config.train.ema_decay.is_some() != ema.is_some() && s.step > 0 {
            return Err(RunError::Corrupt {
                path: state_file(),
                message: "the averaged weights do not match train.ema_decay".into(),
            });
        }
        if s.config.train.t_sampling == TSampling::Importance && s.step_sampler.is_none() {
            return Err(RunError::Corrupt {
                path: state_file(),
                message: "no importance-sampler state".into(),
            });
        }
        Ok(ResumeState {
            model,
            optimizer,
            ema,
            progress: TrainProgress {
                step: s.step,
                wall_before_s: s.wall_time_s,
                interval_loss_sum: s.interval_loss_sum,
                interval_steps: s.interval_steps,
                last_loss_bits: s.last_loss_bits,
                data_word_pos: self.data_word_pos()?,
                noise_word_pos: self.noise_word_pos()?,
            },
            step_sampler: s.step_sampler.clone(),
        })
    }

    fn parse_pos(&self, text: &str) -> Result<u128, RunError> {
        text.parse().map_err(|_| {
            corrupt(
                &self.path.join("state.json"),
                "a stream position is not a number",
            )
        })
    }
}
