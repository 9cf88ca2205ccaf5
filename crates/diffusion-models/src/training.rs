//! Training a run into its folder: [`train`] builds the run's network and [`Trainer`] and
//! attaches the observers that write the folder — `metrics.csv` ([`MetricsObserver`]),
//! checkpoints ([`CheckpointObserver`]) and progress reports — then writes `model.bpk`,
//! `summary.json` and, for the `learned` schedule, the trained betas as `betas.csv` (`t,beta`).
//!
//! Every `checkpoint_every` steps (and at the end) a checkpoint is written
//! ([`crate::checkpoint`]); [`train`] given one continues from it and ends with the same
//! weights, bit for bit, as a run that was never interrupted (on the CPU backends).

use std::path::PathBuf;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::bound::Diffusion;
use crate::checkpoint::{self, Checkpoint, CheckpointState, FileDigest};
use crate::data::TrainingData;
use crate::metrics::{MetricsRow, MetricsWriter};
use crate::model::Network;
use crate::network::{ReverseModel, ReverseNetwork};
use crate::process::Process;
use crate::run::{RunDir, RunError, RunManifest, Weights};
use crate::trainer::{Observer, StepReport, TrainError, Trainer};

/// One progress report.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Steps done.
    pub step: usize,
    /// Steps in the run.
    pub total: usize,
    /// Mean loss (minus the Monte-Carlo K, bits per point) since the last report.
    pub loss_bits: f64,
    /// The current learning rate.
    pub lr: f64,
    /// Seconds since training began.
    pub elapsed_s: f64,
}

/// What `summary.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Steps run.
    pub steps: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Wall time of the loop, seconds.
    pub wall_time_s: f64,
    /// Steps per second.
    pub steps_per_s: f64,
    /// The mean loss over the last logging interval, bits per point (NaN-free).
    pub final_loss_bits: Option<f64>,
    /// The backend.
    pub backend: String,
}

/// Writes `metrics.csv`: one row per logged interval, synced before each checkpoint.
pub struct MetricsObserver {
    writer: MetricsWriter,
}

impl MetricsObserver {
    /// Opens the run's `metrics.csv`; a resumed run keeps its rows up to `resumed_at`.
    pub fn open(run: &RunDir, resumed_at: Option<usize>) -> Result<Self, RunError> {
        Ok(Self {
            writer: MetricsWriter::open(run, resumed_at)?,
        })
    }
}

impl<P: Process, N: ReverseNetwork> Observer<P, N> for MetricsObserver {
    fn on_step(&mut self, _: &Trainer<P, N>, report: &StepReport) -> Result<(), TrainError> {
        if let Some(mean) = report.logged_loss_bits {
            self.writer.append(MetricsRow {
                step: report.step,
                loss_bits: mean,
                lr: report.lr,
                wall_time_s: report.elapsed_s,
            })?;
        }
        if report.checkpoint_due {
            self.writer.sync()?;
        }
        Ok(())
    }
}

/// Writes a checkpoint whenever one is due, after checking that every parameter is finite.
pub struct CheckpointObserver<'a> {
    run: &'a RunDir,
    manifest: &'a RunManifest,
    kept: Option<(usize, PathBuf)>,
}

impl<'a> CheckpointObserver<'a> {
    /// Checkpoints into `run`; `resumed` is the checkpoint the run continues from.
    pub fn new(run: &'a RunDir, manifest: &'a RunManifest, resumed: Option<&Checkpoint>) -> Self {
        Self {
            run,
            manifest,
            kept: resumed.map(|ck| (ck.state.step, ck.path.clone())),
        }
    }
}

impl<P: Process, N: ReverseNetwork> Observer<P, N> for CheckpointObserver<'_> {
    fn on_step(&mut self, trainer: &Trainer<P, N>, report: &StepReport) -> Result<(), TrainError> {
        if !report.checkpoint_due {
            return Ok(());
        }
        checkpoint::check_finite(trainer.model()).map_err(|e| TrainError::NonFinite {
            what: e.to_string(),
            step: report.step,
            kept: None,
        })?;
        let p = trainer.progress();
        let state = CheckpointState {
            format: checkpoint::CHECKPOINT_FORMAT.into(),
            step: report.step,
            data_rng_word_pos: p.data_word_pos.to_string(),
            noise_rng_word_pos: p.noise_word_pos.to_string(),
            wall_time_s: report.elapsed_s,
            interval_loss_sum: p.interval_loss_sum,
            interval_steps: p.interval_steps,
            last_loss_bits: p.last_loss_bits,
            step_sampler: trainer.step_sampler().cloned(),
            config: self.manifest.config.clone(),
            model_file: FileDigest::of(&[]),
            optimizer_file: FileDigest::of(&[]),
            ema_file: None,
        };
        let path = checkpoint::save(
            self.run,
            trainer.model(),
            trainer.optimizer(),
            trainer.ema(),
            state,
        )?;
        self.kept = Some((report.step, path));
        Ok(())
    }

    fn on_divergence(&mut self, error: &mut TrainError) {
        if let TrainError::NonFinite { kept, .. } = error {
            *kept = self.kept.clone();
        }
    }
}

/// Calls a function with a [`Progress`] at every logged step.
pub struct ProgressObserver<'a>(pub &'a mut dyn FnMut(&Progress));

impl<P: Process, N: ReverseNetwork> Observer<P, N> for ProgressObserver<'_> {
    fn on_step(&mut self, _: &Trainer<P, N>, report: &StepReport) -> Result<(), TrainError> {
        if let Some(mean) = report.logged_loss_bits {
            (self.0)(&Progress {
                step: report.step,
                total: report.total,
                loss_bits: mean,
                lr: report.lr,
                elapsed_s: report.elapsed_s,
            });
        }
        Ok(())
    }
}

/// Trains the network of `manifest` on `data`, writing `metrics.csv`, checkpoints, `model.bpk`
/// (and `model_ema.bpk` with `train.ema_decay`) and `summary.json` into `run`. `device` is the
/// plain device; autodiff is added here. With `resume`, the network, optimizer, average, streams
/// and metrics continue from that checkpoint (`data` must be the stream the run was started
/// with; its position is restored here). Returns the weights evaluation uses by default: the
/// average when there is one.
pub fn train(
    manifest: &RunManifest,
    data: TrainingData,
    device: &Device,
    run: &RunDir,
    resume: Option<&Checkpoint>,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<(ReverseModel<Network>, TrainSummary), TrainError> {
    let ad_device = device.clone().autodiff();
    ad_device.seed(manifest.config.train.seed);
    let model = manifest.init_model(&ad_device)?;
    let files = RunFiles {
        manifest,
        run,
        resume,
        on_progress,
    };
    match manifest.bound()? {
        Diffusion::Gaussian(g) => files.train(g, model, data, &ad_device),
        Diffusion::Binomial(b) => files.train(b, model, data, &ad_device),
    }
}

/// A run folder's side of training.
struct RunFiles<'a, 'p> {
    manifest: &'a RunManifest,
    run: &'a RunDir,
    resume: Option<&'a Checkpoint>,
    on_progress: &'p mut dyn FnMut(&Progress),
}

impl RunFiles<'_, '_> {
    fn train<P: Process, N: ReverseNetwork>(
        self,
        process: P,
        model: ReverseModel<N>,
        data: TrainingData,
        device: &Device,
    ) -> Result<(ReverseModel<N>, TrainSummary), TrainError>
    where
        P::Rows: 'static,
    {
        let config = &self.manifest.config.train;
        let resume = match self.resume {
            Some(ck) => Some(ck.resume_state(model.clone())?),
            None => None,
        };
        let mut trainer = Trainer::new(process, model, config, data, device);
        if let Some(state) = resume {
            trainer.resume(state)?;
        }
        let mut metrics = MetricsObserver::open(self.run, self.resume.map(|ck| ck.state.step))?;
        let mut checkpoints = CheckpointObserver::new(self.run, self.manifest, self.resume);
        let mut progress = ProgressObserver(self.on_progress);
        let fitted = trainer.fit(&mut [&mut metrics, &mut progress, &mut checkpoints])?;
        self.run.save_model(&fitted.model)?;
        if let Some(ema) = &fitted.ema {
            self.run.save_weights(ema, Weights::Ema)?;
        }
        // the weights evaluation and sampling use by default: the average, when there is one
        let model = fitted.ema.unwrap_or(fitted.model);
        if let Some(schedule) = model.learned_schedule() {
            let mut text = String::from("t,beta\n");
            for (t, b) in schedule.host_betas().iter().enumerate() {
                text.push_str(&format!("{},{b:e}\n", t + 1));
            }
            self.run.write("betas.csv", text.as_bytes())?;
        }
        let wall = fitted.wall_time_s;
        let summary = TrainSummary {
            steps: config.steps,
            batch_size: config.batch_size,
            wall_time_s: wall,
            steps_per_s: if wall > 0.0 {
                config.steps as f64 / wall
            } else {
                0.0
            },
            final_loss_bits: fitted.final_loss_bits,
            backend: self.manifest.backend.clone(),
        };
        self.run.write_json("summary.json", &summary)?;
        Ok((model, summary))
    }
}
