//! The training loop: data, forward noising, the network, the bound, the optimizer — in that
//! order, one step at a time.
//!
//! A lean loop of our own rather than burn-train's `Learner`: the data are generated on the fly
//! (no dataset or dataloader), one step is a handful of small matrix products, and the run folder,
//! metrics, checkpoints and progress are this project's own. Like the `Learner`'s data loader, it
//! builds the host side of each step (data, t, x_t, posteriors) on a second thread, a couple of
//! batches ahead, while the network runs.
//!
//! A run with the `learned` schedule also writes its trained betas as `betas.csv` (`t,beta`).
//!
//! Every `checkpoint_every` steps (and at the end) it writes a checkpoint ([`crate::checkpoint`]);
//! [`train`] given one continues from it and ends with the same weights, bit for bit, as a run
//! that was never interrupted (on the CPU backends).

use std::sync::mpsc;
use std::time::Instant;

use burn::module::Module;
use burn::optim::{
    AdamConfig, GradientsParams, ModuleOptimizer, SgdConfig, grad_clipping::GradientClippingConfig,
    momentum::MomentumConfig,
};
use burn::tensor::Device;
use diffusion_data::{
    Array2, DataError, Heartbeat, HeartbeatStream, Rng, SwissRoll, SwissRollStream,
};
use rand::Rng as _;
use serde::{Deserialize, Serialize};

use crate::bound::TrainingBatch;
use crate::checkpoint::{self, Checkpoint, CheckpointState, FileDigest};
use crate::config::{DataConfig, OptimizerConfig, OptimizerKind, TSampling, TrainConfig};
use crate::importance::StepSampler;
use crate::metrics::{MetricsRow, MetricsWriter};
use crate::model::ReverseMlp;
use crate::run::{RunDir, RunError, RunManifest};

/// Why training stopped early.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The loss or a parameter became NaN or infinite.
    #[error("training diverged: {what} at step {step}; {kept}")]
    NonFinite {
        /// What was not finite.
        what: String,
        /// The step (1-based).
        step: usize,
        /// Which checkpoint is kept.
        kept: String,
    },
    /// The run folder refused a write.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The configuration is inconsistent.
    #[error("{0}")]
    Config(String),
}

/// Where training batches come from.
#[derive(Debug, Clone)]
pub enum TrainingData {
    /// Fresh Swiss-roll points every batch.
    SwissRoll(SwissRollStream),
    /// Fresh heartbeat sequences every batch.
    Heartbeat(HeartbeatStream),
    /// Rows drawn uniformly (with replacement) from a fixed set.
    Points {
        /// The training rows.
        points: Array2,
        /// The row sampler.
        rng: Rng,
    },
}

impl TrainingData {
    /// The generator stream of a data config, drawing from `rng`, with the data dimension;
    /// `None` for file data (its rows come from the file).
    pub fn generator(data: &DataConfig, rng: Rng) -> Result<Option<(Self, usize)>, DataError> {
        Ok(match data {
            DataConfig::SwissRoll { noise } => {
                Some((Self::SwissRoll(SwissRoll::new(*noise)?.stream_with(rng)), 2))
            }
            DataConfig::Heartbeat { length, period } => Some((
                Self::Heartbeat(Heartbeat::new(*length, *period)?.stream_with(rng)),
                *length,
            )),
            DataConfig::File { .. } => None,
        })
    }

    /// The Swiss-roll stream of a run seed.
    pub fn swiss_roll(roll: SwissRoll, seed: u64) -> Self {
        Self::SwissRoll(roll.stream_with(diffusion_data::rng(seed, streams::TRAIN_DATA)))
    }

    /// The heartbeat stream of a run seed.
    pub fn heartbeat(beat: Heartbeat, seed: u64) -> Self {
        Self::Heartbeat(beat.stream_with(diffusion_data::rng(seed, streams::TRAIN_DATA)))
    }

    /// Row sampling from `points` under a run seed.
    pub fn points(points: Array2, seed: u64) -> Self {
        Self::Points {
            points,
            rng: diffusion_data::rng(seed, streams::TRAIN_DATA),
        }
    }

    /// The generator that draws the batches (its position is the stream's state).
    pub fn rng_mut(&mut self) -> &mut Rng {
        match self {
            Self::SwissRoll(s) => s.rng_mut(),
            Self::Heartbeat(s) => s.rng_mut(),
            Self::Points { rng, .. } => rng,
        }
    }

    /// The next `n` points, row-major.
    pub fn next_batch(&mut self, n: usize) -> Vec<f32> {
        match self {
            Self::SwissRoll(s) => s.next_batch(n),
            Self::Heartbeat(s) => s.next_batch(n),
            Self::Points { points, rng } => {
                let mut out = Vec::with_capacity(n * points.cols);
                for _ in 0..n {
                    let i = rng.random_range(0..points.rows);
                    out.extend_from_slice(points.row(i));
                }
                out
            }
        }
    }
}

/// The independent random streams of one seed.
pub mod streams {
    /// Training batches.
    pub const TRAIN_DATA: u64 = 0;
    /// Held-out points (generator data) and the held-out split (file data).
    pub const HELDOUT: u64 = 1;
    /// Steps t and noise during training.
    pub const TRAIN_NOISE: u64 = 2;
    /// Noise of the full-sum evaluation.
    pub const EVAL_NOISE: u64 = 3;
    /// The reverse chain when sampling.
    pub const SAMPLE: u64 = 4;
    /// Fresh data for the sample metrics, and a second set for their noise floor.
    pub const METRIC_A: u64 = 6;
    /// See [`METRIC_A`].
    pub const METRIC_B: u64 = 7;
}

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

fn optimizer(config: &OptimizerConfig) -> ModuleOptimizer {
    let clip = config
        .grad_clip_norm
        .map(|c| GradientClippingConfig::Norm(c as f32));
    match config.kind {
        OptimizerKind::Adam => AdamConfig::new()
            .with_beta_1(config.beta1 as f32)
            .with_beta_2(config.beta2 as f32)
            .with_epsilon(config.epsilon as f32)
            .with_grad_clipping(clip)
            .init(),
        OptimizerKind::Sgd => {
            let momentum = (config.momentum > 0.0).then(|| {
                MomentumConfig::new()
                    .with_momentum(config.momentum)
                    .with_dampening(0.0)
                    .with_nesterov(config.nesterov)
            });
            SgdConfig::new()
                .with_momentum(momentum)
                .with_gradient_clipping(clip)
                .init()
        }
    }
}

/// Batches built ahead of the step that uses them.
const PREFETCH: usize = 2;

/// Below this many data values per batch, batches are built on the training thread (measured
/// on 2 cores at batch 128 x 2: a second thread cost 15-20 % of the steps/s).
const PREFETCH_MIN_VALUES: usize = 1024;

/// One step's host data, with the positions of both streams after drawing it.
struct Prepared {
    batch: TrainingBatch,
    data_pos: u128,
    noise_pos: u128,
}

/// Gives the next step's host data (drawing its steps t from the sampler, when there is one).
type NextBatch<'a> = dyn FnMut(Option<&StepSampler>) -> Prepared + 'a;

/// Trains the network of `manifest` on `data`, writing `metrics.csv`, checkpoints, `model.bpk`
/// and `summary.json` into `run`. `device` is the plain device; autodiff is added here. With
/// `resume`, the network, optimizer, streams and metrics continue from that checkpoint (`data`
/// must be the stream the run was started with; its position is restored here).
pub fn train(
    manifest: &RunManifest,
    mut data: TrainingData,
    device: &Device,
    run: &RunDir,
    resume: Option<&Checkpoint>,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<(ReverseMlp, TrainSummary), TrainError> {
    let config: &TrainConfig = &manifest.config.train;
    let bound = manifest.bound().map_err(TrainError::Config)?;
    let ad_device = device.clone().autodiff();
    ad_device.seed(config.seed);
    let mut model = manifest
        .init_model(&ad_device)
        .map_err(TrainError::Config)?;
    let mut optim = optimizer(&config.optimizer);
    let mut rng = diffusion_data::rng(config.seed, streams::TRAIN_NOISE);

    let mut first_step = 0;
    let mut wall_before = 0.0;
    let (mut interval_sum, mut interval_count) = (0.0f64, 0usize);
    let mut last_loss = None;
    let mut kept: Option<(usize, std::path::PathBuf)> = None;
    let mut sampler = (config.t_sampling == TSampling::Importance)
        .then(|| StepSampler::new(manifest.config.diffusion.steps));
    if let Some(ck) = resume {
        (model, optim) = ck.restore(model, optim)?;
        data.rng_mut().set_word_pos(ck.data_word_pos()?);
        rng.set_word_pos(ck.noise_word_pos()?);
        let s = &ck.state;
        first_step = s.step;
        wall_before = s.wall_time_s;
        (interval_sum, interval_count) = (s.interval_loss_sum, s.interval_steps);
        last_loss = s.last_loss_bits;
        kept = Some((s.step, ck.path.clone()));
        if sampler.is_some() {
            sampler = Some(s.step_sampler.clone().ok_or_else(|| {
                TrainError::Config(format!(
                    "the checkpoint in {} has no importance-sampler state",
                    ck.path.display()
                ))
            })?);
        }
    }
    let mut metrics = MetricsWriter::open(run, resume.map(|ck| ck.state.step))?;

    let kept_note = |kept: &Option<(usize, std::path::PathBuf)>| match kept {
        Some((step, path)) => format!(
            "the checkpoint of step {step} is kept in {}",
            path.display()
        ),
        None => "no checkpoint had been written yet".to_string(),
    };
    let steps = config.steps;
    let bound_ref = &bound;
    let batch_size = config.batch_size;
    let mut draw = move |sampler: Option<&StepSampler>| {
        let x0 = data.next_batch(batch_size);
        let batch = match sampler {
            Some(s) => {
                let (ts, weights) = s.draw(batch_size, &mut rng);
                bound_ref.training_batch_at(&x0, ts, weights, &mut rng)
            }
            None => bound_ref.training_batch(&x0, &mut rng),
        };
        Prepared {
            batch,
            data_pos: data.rng_mut().get_word_pos(),
            noise_pos: rng.get_word_pos(),
        }
    };
    // Small batches are cheaper to build in line than to hand over between threads; importance
    // sampling draws each batch's steps from the previous step's terms, so in line too.
    let threaded = batch_size * manifest.data_dim >= PREFETCH_MIN_VALUES && sampler.is_none();
    let start = Instant::now();
    let result = std::thread::scope(|scope| -> Result<ReverseMlp, TrainError> {
        let mut model = model;
        let (tx, rx) = mpsc::sync_channel::<Prepared>(PREFETCH);
        let mut next: Box<NextBatch> = if threaded {
            scope.spawn(move || {
                for _ in first_step..steps {
                    if tx.send(draw(None)).is_err() {
                        break;
                    }
                }
            });
            Box::new(move |_| {
                rx.recv()
                    .expect("the batch thread runs until the last step")
            })
        } else {
            Box::new(draw)
        };
        for step in first_step..steps {
            let lr = config.lr_schedule.rate(config.optimizer.lr, step, steps);
            let prepared = next(sampler.as_ref());
            let ts = sampler.as_ref().map(|_| prepared.batch.steps().to_vec());
            let step_loss = bound.step_loss(
                &model,
                prepared.batch,
                config.loss,
                config.hybrid_weight,
                &ad_device,
            );
            let loss = step_loss.loss;
            let value = loss.clone().into_scalar::<f32>() as f64;
            if let (Some(s), Some(ts), Some(kl)) = (sampler.as_mut(), ts, step_loss.kl) {
                let kl = kl.into_data().convert::<f32>();
                s.update(&ts, kl.as_slice::<f32>().expect("f32 data"));
            }
            let done = step + 1;
            if !value.is_finite() {
                return Err(TrainError::NonFinite {
                    what: format!("the loss is {value}"),
                    step: done,
                    kept: kept_note(&kept),
                });
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(lr, model, grads);
            interval_sum += value;
            interval_count += 1;
            let elapsed = wall_before + start.elapsed().as_secs_f64();
            if done % config.log_every == 0 || done == steps {
                let mean = interval_sum / interval_count as f64;
                metrics.append(MetricsRow {
                    step: done,
                    loss_bits: mean,
                    lr,
                    wall_time_s: elapsed,
                })?;
                on_progress(&Progress {
                    step: done,
                    total: steps,
                    loss_bits: mean,
                    lr,
                    elapsed_s: elapsed,
                });
                last_loss = Some(mean);
                (interval_sum, interval_count) = (0.0, 0);
            }
            let every = config.checkpoint_every;
            if done == steps || (every > 0 && done % every == 0) {
                if let Err(what) = checkpoint::check_finite(&model) {
                    return Err(TrainError::NonFinite {
                        what,
                        step: done,
                        kept: kept_note(&kept),
                    });
                }
                metrics.sync()?;
                let state = CheckpointState {
                    format: checkpoint::CHECKPOINT_FORMAT.into(),
                    step: done,
                    data_rng_word_pos: prepared.data_pos.to_string(),
                    noise_rng_word_pos: prepared.noise_pos.to_string(),
                    wall_time_s: elapsed,
                    interval_loss_sum: interval_sum,
                    interval_steps: interval_count,
                    last_loss_bits: last_loss,
                    step_sampler: sampler.clone(),
                    config: manifest.config.clone(),
                    model_file: FileDigest::of(&[]),
                    optimizer_file: FileDigest::of(&[]),
                };
                let path = checkpoint::save(run, &model, &optim, state)?;
                kept = Some((done, path));
            }
        }
        Ok(model)
    });
    let model = result?;
    let wall = wall_before + start.elapsed().as_secs_f64();
    run.save_model(&model)?;
    if let Some(schedule) = model.learned_schedule() {
        let mut text = String::from("t,beta\n");
        for (t, b) in schedule.host_betas().iter().enumerate() {
            text.push_str(&format!("{},{b:e}\n", t + 1));
        }
        run.write("betas.csv", text.as_bytes())?;
    }
    let summary = TrainSummary {
        steps,
        batch_size: config.batch_size,
        wall_time_s: wall,
        steps_per_s: if wall > 0.0 { steps as f64 / wall } else { 0.0 },
        final_loss_bits: last_loss,
        backend: manifest.backend.clone(),
    };
    run.write_json("summary.json", &summary)?;
    Ok((model.valid(), summary))
}
