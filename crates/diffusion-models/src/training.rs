//! The training loop: data, forward noising, the network, the bound, the optimizer — in that
//! order, one step at a time.
//!
//! A lean loop of our own rather than burn-train's `Learner`: the data are generated on the fly
//! (no dataset or dataloader), one step is a handful of small matrix products, and the run folder,
//! metrics and progress are this project's own.

use std::fs;
use std::io::Write;
use std::time::Instant;

use burn::module::Module;
use burn::optim::{
    AdamConfig, GradientsParams, ModuleOptimizer, SgdConfig, grad_clipping::GradientClippingConfig,
    momentum::MomentumConfig,
};
use burn::tensor::Device;
use diffusion_data::{Array2, Heartbeat, HeartbeatStream, Rng, SwissRoll, SwissRollStream};
use rand::Rng as _;
use serde::{Deserialize, Serialize};

use crate::config::{OptimizerConfig, OptimizerKind, TrainConfig};
use crate::model::ReverseMlp;
use crate::run::{RunDir, RunError, RunManifest};

/// Why training stopped early.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The loss became NaN or infinite.
    #[error("training diverged: the loss is {value} at step {step}; the model was not saved")]
    NonFinite {
        /// The step (1-based).
        step: usize,
        /// The loss value.
        value: f64,
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

/// Trains the network of `manifest` on `data`, writing `metrics.csv`, `model.bpk` and
/// `summary.json` into `run`. `device` is the plain device; autodiff is added here.
pub fn train(
    manifest: &RunManifest,
    mut data: TrainingData,
    device: &Device,
    run: &RunDir,
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

    let metrics_path = run.file("metrics.csv");
    let io = |source| RunError::Io {
        path: metrics_path.display().to_string(),
        source,
    };
    let mut metrics = fs::File::create(&metrics_path).map_err(io)?;
    writeln!(metrics, "step,loss_bits,lr,wall_time_s").map_err(io)?;

    let start = Instant::now();
    let (mut interval_sum, mut interval_count) = (0.0f64, 0usize);
    let mut last_loss = None;
    for step in 0..config.steps {
        let lr = config
            .lr_schedule
            .rate(config.optimizer.lr, step, config.steps);
        let x0 = data.next_batch(config.batch_size);
        let loss = bound.training_loss(&model, &x0, &mut rng, &ad_device);
        let value = loss.clone().into_scalar::<f32>() as f64;
        if !value.is_finite() {
            return Err(TrainError::NonFinite {
                step: step + 1,
                value,
            });
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(lr, model, grads);
        interval_sum += value;
        interval_count += 1;
        let done = step + 1;
        if done % config.log_every == 0 || done == config.steps {
            let mean = interval_sum / interval_count as f64;
            let elapsed = start.elapsed().as_secs_f64();
            writeln!(metrics, "{done},{mean},{lr},{elapsed:.3}").map_err(io)?;
            metrics.flush().map_err(io)?;
            on_progress(&Progress {
                step: done,
                total: config.steps,
                loss_bits: mean,
                lr,
                elapsed_s: elapsed,
            });
            last_loss = Some(mean);
            (interval_sum, interval_count) = (0.0, 0);
        }
    }
    let wall = start.elapsed().as_secs_f64();
    metrics.sync_all().map_err(io)?;
    run.save_model(&model)?;
    let summary = TrainSummary {
        steps: config.steps,
        batch_size: config.batch_size,
        wall_time_s: wall,
        steps_per_s: if wall > 0.0 {
            config.steps as f64 / wall
        } else {
            0.0
        },
        final_loss_bits: last_loss,
        backend: manifest.backend.clone(),
    };
    run.write_json("summary.json", &summary)?;
    Ok((model.valid(), summary))
}
