//! The run configuration: everything a training run needs, read from TOML (`configs/*.toml`) and
//! saved, resolved, as `config.json` in the run folder. Unknown keys are errors.

use std::path::PathBuf;

use diffusion_core::{BetaSchedule, ReverseParametrization};
use diffusion_data::Scaling;
use serde::{Deserialize, Serialize};

use crate::model::{ModelConfig, ModelKind, TimeConditioning};

mod last_step;
pub use last_step::LastStep;

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not TOML, or not the configuration's shape (unknown key, wrong type): where and what.
    #[error("{0}")]
    Syntax(String),
    /// A value out of range or inconsistent with another.
    #[error("{0}")]
    Invalid(String),
    /// The beta schedule cannot be built.
    #[error(transparent)]
    Schedule(#[from] diffusion_core::ScheduleError),
    /// A binomial run's pi has not been set or estimated from the data yet.
    #[error("diffusion.pi is not resolved")]
    UnresolvedPi,
    /// The learned schedule's trained betas are not a valid schedule.
    #[error("the learned schedule: {0}")]
    LearnedSchedule(diffusion_core::ScheduleError),
    /// The network would be too large to train here.
    #[error(
        "the network would have {parameters} parameters (more than {max}); reduce model.hidden or diffusion.steps"
    )]
    TooLarge {
        /// Its parameter count.
        parameters: u128,
        /// The limit.
        max: u128,
    },
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The forward process and the reverse parametrization.
    pub diffusion: DiffusionConfig,
    /// Where the data comes from.
    pub data: DataConfig,
    /// The reverse network.
    #[serde(default)]
    pub model: ModelConfig,
    /// The optimisation.
    #[serde(default)]
    pub train: TrainConfig,
}

/// Which forward process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ProcessKind {
    /// Gaussian diffusion, for continuous data.
    #[default]
    Gaussian,
    /// Binomial diffusion, for binary data.
    Binomial,
}

/// The forward process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffusionConfig {
    /// Gaussian or binomial.
    #[serde(default)]
    pub process: ProcessKind,
    /// Trajectory length T.
    pub steps: usize,
    /// The beta schedule (`reciprocal`, b_t = 1/(T - t + 1), is the binomial default).
    pub schedule: BetaSchedule,
    /// How the network's outputs become the reverse kernel.
    #[serde(default)]
    pub parametrization: ReverseParametrization,
    /// Binomial only: the stationary bit rate; omitted, the data's mean activity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pi: Option<f64>,
    /// Noise-predicting parametrizations on file data: clip the network's implied x_0 to the
    /// training data's range before it forms the reverse kernel's mean, in the bound, training
    /// and every sampler (improved diffusion's `clip_denoised`; a different model, whose bound
    /// is still a bound). Keeps the last steps of a cosine schedule, where an error in the
    /// predicted noise is magnified some thirty times, from costing bits or wrecking samples.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clip_denoised: bool,
    /// Gaussian runs: the last reverse step, p(x_0 | x_1). `edge` (the default) is the paper's
    /// fixed step, the forward kernel's reverse; `discretized` is DDPM's decoder: the network's
    /// kernel at t = 1 integrated over each value's bin, for integer data from a file in
    /// 0..=255 that is not dequantised, so the bound is one on the integers directly.
    #[serde(default, skip_serializing_if = "LastStep::is_edge")]
    pub decoder: LastStep,
}

/// The training data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DataConfig {
    /// The seeded Swiss-roll generator (fresh points every batch; held-out points from an
    /// independent stream).
    SwissRoll {
        /// Noise standard deviation in the spiral's raw units.
        #[serde(default = "default_noise")]
        noise: f64,
    },
    /// The binary heartbeat: `length` bits, a 1 every `period`-th bin, uniform phase.
    Heartbeat {
        /// Bits per sequence.
        #[serde(default = "default_length")]
        length: usize,
        /// Bins between pulses.
        #[serde(default = "default_period")]
        period: usize,
    },
    /// Points from a .csv or .npy file; a seeded share is held out for evaluation.
    File {
        /// The file.
        path: PathBuf,
        /// The share of rows held out (saved as `heldout.npy` in the run folder); unused with
        /// `test_path`.
        #[serde(default = "default_heldout")]
        heldout_fraction: f64,
        /// A separate file of held-out rows (e.g. MNIST's test digits): every row of `path`
        /// trains, and these are evaluated. Same columns (and image shape) as `path`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        test_path: Option<PathBuf>,
        /// Gaussian runs: how the rows are standardised before training (`none`, `global`,
        /// `per-coordinate`; per-coordinate when absent). The bound is reported in the data's
        /// own units with the Jacobian added. Binomial runs take none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        standardize: Option<Scaling>,
        /// Gaussian runs on integer data: add U[0, 1) noise to every value (each batch, and to
        /// the held-out rows when evaluating), so the bound is one on the discrete data.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        dequantize: bool,
        /// Gaussian runs on dequantised integers 0..=max: map each value x through
        /// logit(alpha + (1 - 2 alpha) x / (max + 1)) before standardising (as flows do for
        /// images), so bounded data become unbounded; the Jacobian is added to K point by
        /// point. Off when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        logit_alpha: Option<f64>,
        /// Binomial runs on grey values: each value becomes 1 where it is at least this
        /// threshold and 0 below (binarised MNIST: pixel >= 128), in the training and test rows
        /// alike. Off when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        binarize: Option<f64>,
    },
}

fn default_length() -> usize {
    20
}
fn default_period() -> usize {
    5
}
fn default_noise() -> f64 {
    0.5
}
fn default_heldout() -> f64 {
    0.1
}

/// The optimisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimizer steps.
    #[serde(default = "default_steps")]
    pub steps: usize,
    /// Examples per step.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Seeds the weights, the data stream, the steps t and the noise.
    #[serde(default)]
    pub seed: u64,
    /// Write a `metrics.csv` row (and a progress line) every this many steps.
    #[serde(default = "default_log_every")]
    pub log_every: usize,
    /// Write a checkpoint (model, optimizer, random streams) every this many steps, and one at
    /// the end; 0 writes only the one at the end. `diffusion train --resume` continues from the
    /// newest.
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: usize,
    /// What training minimises.
    #[serde(default)]
    pub loss: LossKind,
    /// The weight of the bound in the `hybrid` loss (Nichol and Dhariwal 2021 use 0.001).
    #[serde(default = "default_hybrid_weight")]
    pub hybrid_weight: f64,
    /// How each example's step t is drawn for the Monte-Carlo bound.
    #[serde(default)]
    pub t_sampling: TSampling,
    /// The optimizer.
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// The learning-rate schedule.
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// Keep an exponential moving average of the weights with this decay (e.g. 0.999; in
    /// (0, 1)): ema ← d ema + (1 − d) θ after every step, from the weights after the first.
    /// Saved beside the raw weights (`model_ema.bpk`) and in checkpoints; `evaluate`, `sample`
    /// and `plot` use it when present (`--weights raw` for the others). Off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema_decay: Option<f64>,
}

fn default_steps() -> usize {
    20_000
}
fn default_batch() -> usize {
    1024
}
fn default_log_every() -> usize {
    100
}
fn default_checkpoint_every() -> usize {
    1000
}
fn default_hybrid_weight() -> f64 {
    0.001
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: default_steps(),
            batch_size: default_batch(),
            seed: 0,
            log_every: default_log_every(),
            checkpoint_every: default_checkpoint_every(),
            loss: LossKind::default(),
            hybrid_weight: default_hybrid_weight(),
            t_sampling: TSampling::default(),
            optimizer: OptimizerConfig::default(),
            lr_schedule: LrSchedule::default(),
            ema_decay: None,
        }
    }
}

/// The training objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LossKind {
    /// Minus the bound K, estimated by Monte Carlo over t (bits per point).
    #[default]
    Bound,
    /// The noise-prediction mean squared error of Ho et al. (2020), ||eps - eps_theta||^2 summed
    /// over coordinates (Gaussian diffusion with the `epsilon-fixed` parametrization). Its
    /// `metrics.csv` loss column is that error, not bits.
    Mse,
    /// Nichol and Dhariwal (2021)'s hybrid: the noise MSE plus `hybrid_weight` times minus the
    /// Monte-Carlo K (bits), the bound's gradient reaching only the variance (the mean is
    /// held fixed in it). For the `epsilon` parametrization, whose variance the MSE cannot train.
    /// Its `metrics.csv` loss column is that sum, not bits.
    Hybrid,
}

/// How the Monte-Carlo bound draws each example's step t.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TSampling {
    /// t ~ U{first..T} (first = 2, or 1 with a decoder), each term weighted by their number.
    #[default]
    Uniform,
    /// t drawn in proportion to the running root mean square of each step's KL term (an
    /// exponential average, decay 0.99, after 10 draws of every step; mixed with 0.1 % of the
    /// uniform distribution so no step is starved), each term weighted by 1 / p(t) so the
    /// estimate of K stays unbiased. Lowers the variance of the estimate and of its gradient
    /// where a few steps carry most of the bound (long trajectories).
    Importance,
}

/// Which update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    /// Adam (Kingma and Ba 2015).
    #[default]
    Adam,
    /// Stochastic gradient descent, with momentum when `momentum > 0`.
    Sgd,
}

/// The optimizer and its constants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    /// Adam or SGD.
    #[serde(default)]
    pub kind: OptimizerKind,
    /// The base learning rate.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// SGD momentum (0 = plain SGD).
    #[serde(default)]
    pub momentum: f64,
    /// Nesterov momentum for SGD.
    #[serde(default)]
    pub nesterov: bool,
    /// Adam's beta_1.
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    /// Adam's beta_2.
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    /// Adam's epsilon.
    #[serde(default = "default_eps")]
    pub epsilon: f64,
    /// Clip the global gradient norm to this value.
    #[serde(default)]
    pub grad_clip_norm: Option<f64>,
}

fn default_lr() -> f64 {
    1e-3
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::Adam,
            lr: default_lr(),
            momentum: 0.0,
            nesterov: false,
            beta1: default_beta1(),
            beta2: default_beta2(),
            epsilon: default_eps(),
            grad_clip_norm: None,
        }
    }
}

/// The learning rate as a function of the step; stateless, so a resumed run continues exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum LrSchedule {
    /// The base rate throughout.
    #[default]
    Constant,
    /// `lr * gamma^step`.
    Exponential {
        /// Decay per step, in (0, 1].
        gamma: f64,
    },
    /// Cosine annealing from `lr` to `min_lr` over the run (Loshchilov and Hutter 2017).
    Cosine {
        /// The final rate.
        #[serde(default)]
        min_lr: f64,
    },
}

impl LrSchedule {
    /// The rate at `step` (0-based) of `total` steps, from base rate `lr`.
    pub fn rate(&self, lr: f64, step: usize, total: usize) -> f64 {
        match *self {
            Self::Constant => lr,
            Self::Exponential { gamma } => lr * gamma.powf(step as f64),
            Self::Cosine { min_lr } => {
                let frac = step as f64 / total.max(1) as f64;
                min_lr + 0.5 * (lr - min_lr) * (1.0 + (std::f64::consts::PI * frac).cos())
            }
        }
    }
}

/// The longest trajectory a config may ask for.
pub const MAX_STEPS: usize = 1_000_000;
/// The largest batch.
pub const MAX_BATCH: usize = 1 << 24;
/// The most hidden layers.
pub const MAX_DEPTH: usize = 64;
/// The widest hidden layer (and the longest heartbeat sequence).
pub const MAX_WIDTH: usize = 1 << 16;

impl RunConfig {
    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| {
            // toml's messages span several lines; keep the first and the explanation.
            let msg = e.message().trim().to_string();
            match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].lines().count().max(1);
                    ConfigError::Syntax(format!("line {line}: {msg}"))
                }
                None => ConfigError::Syntax(msg),
            }
        })?;
        Ok(config)
    }

    /// Checks the values that serde cannot: returns the first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.first_problem().map_err(ConfigError::Invalid)
    }

    fn first_problem(&self) -> Result<(), String> {
        self.check_diffusion()?;
        self.check_loss()?;
        self.check_optimizer()?;
        self.check_model()?;
        self.check_data()
    }

    /// The process, its schedule and what the data need of it.
    fn check_diffusion(&self) -> Result<(), String> {
        let diffusion = &self.diffusion;
        if diffusion.steps > MAX_STEPS {
            return Err(format!(
                "diffusion.steps = {} is more than the limit of {MAX_STEPS}",
                diffusion.steps
            ));
        }
        match diffusion.process {
            ProcessKind::Gaussian => {
                if matches!(self.data, DataConfig::Heartbeat { .. }) {
                    return Err("heartbeat data needs diffusion.process = \"binomial\"".into());
                }
                if diffusion.pi.is_some() {
                    return Err("diffusion.pi is for process = \"binomial\" only".into());
                }
                diffusion
                    .schedule
                    .betas(diffusion.steps)
                    .map_err(|e| format!("diffusion: {e}"))?;
                if diffusion.clip_denoised {
                    if !diffusion.parametrization.predicts_noise() {
                        return Err("diffusion.clip_denoised is for the noise-predicting \
                                    parametrizations (\"epsilon\", \"epsilon-fixed\")"
                            .into());
                    }
                    if matches!(diffusion.schedule, BetaSchedule::Learned { .. }) {
                        return Err(
                            "diffusion.clip_denoised does not combine with the learned schedule"
                                .into(),
                        );
                    }
                    if !matches!(self.data, DataConfig::File { .. }) {
                        return Err(
                            "diffusion.clip_denoised needs data from a file (it clips to \
                                    the training rows' range)"
                                .into(),
                        );
                    }
                }
                if diffusion.decoder == LastStep::Discretized {
                    self.check_decoder()?;
                }
            }
            ProcessKind::Binomial => {
                if diffusion.decoder != LastStep::Edge {
                    return Err("diffusion.decoder is for process = \"gaussian\" only".into());
                }
                if diffusion.clip_denoised {
                    return Err("diffusion.clip_denoised is for process = \"gaussian\" only".into());
                }
                if diffusion.parametrization.predicts_noise() {
                    return Err(
                        "diffusion.parametrization = \"epsilon\" is for process = \"gaussian\" only"
                            .into(),
                    );
                }
                if matches!(diffusion.schedule, BetaSchedule::Learned { .. }) {
                    return Err(
                        "diffusion.schedule = \"learned\" is for process = \"gaussian\" only"
                            .into(),
                    );
                }
                if matches!(self.data, DataConfig::SwissRoll { .. }) {
                    return Err("Swiss-roll data needs diffusion.process = \"gaussian\"".into());
                }
                let betas = diffusion
                    .schedule
                    .raw_betas(diffusion.steps)
                    .map_err(|e| format!("diffusion: {e}"))?;
                diffusion_core::BinomialDiffusion::new(betas, diffusion.pi.unwrap_or(0.5), 1)
                    .map_err(|e| format!("diffusion: {e}"))?;
            }
        }
        Ok(())
    }

    /// The loss, how t is drawn, and the batch and logging sizes.
    fn check_loss(&self) -> Result<(), String> {
        let diffusion = &self.diffusion;
        let t = &self.train;
        if t.loss == LossKind::Mse
            && (diffusion.process != ProcessKind::Gaussian
                || diffusion.parametrization != ReverseParametrization::EpsilonFixed)
        {
            return Err("train.loss = \"mse\" needs process = \"gaussian\" and parametrization = \"epsilon-fixed\" (the learned variance of \"epsilon\" needs loss = \"hybrid\")".into());
        }
        if t.loss == LossKind::Hybrid
            && (diffusion.process != ProcessKind::Gaussian
                || diffusion.parametrization != ReverseParametrization::Epsilon)
        {
            return Err("train.loss = \"hybrid\" needs process = \"gaussian\" and parametrization = \"epsilon\"".into());
        }
        if !(t.hybrid_weight.is_finite() && t.hybrid_weight >= 0.0) {
            return Err(format!(
                "train.hybrid_weight = {} must be >= 0",
                t.hybrid_weight
            ));
        }
        if t.loss != LossKind::Bound && t.t_sampling == TSampling::Importance {
            return Err("train.t_sampling = \"importance\" needs train.loss = \"bound\"".into());
        }
        if matches!(diffusion.schedule, BetaSchedule::Learned { .. }) && t.loss != LossKind::Bound {
            return Err("diffusion.schedule = \"learned\" is trained on the bound: it needs train.loss = \"bound\"".into());
        }
        if t.batch_size == 0 {
            return Err("train.batch_size must be at least 1".into());
        }
        if t.log_every == 0 {
            return Err("train.log_every must be at least 1".into());
        }
        if let Some(d) = t.ema_decay
            && !(d > 0.0 && d < 1.0)
        {
            return Err(format!("train.ema_decay = {d} must lie in (0, 1)"));
        }
        Ok(())
    }

    /// The optimizer, its learning-rate schedule and the batch limit.
    fn check_optimizer(&self) -> Result<(), String> {
        let t = &self.train;
        let o = &t.optimizer;
        if !(o.lr.is_finite() && o.lr > 0.0) {
            return Err(format!("train.optimizer.lr = {} must be > 0", o.lr));
        }
        if !(0.0..1.0).contains(&o.momentum) {
            return Err(format!(
                "train.optimizer.momentum = {} must lie in [0, 1)",
                o.momentum
            ));
        }
        if !(0.0..1.0).contains(&o.beta1) || !(0.0..1.0).contains(&o.beta2) {
            return Err("train.optimizer.beta1 and beta2 must lie in [0, 1)".into());
        }
        if !(o.epsilon.is_finite() && o.epsilon > 0.0) {
            return Err("train.optimizer.epsilon must be > 0".into());
        }
        if let Some(c) = o.grad_clip_norm
            && !(c.is_finite() && c > 0.0)
        {
            return Err(format!("train.optimizer.grad_clip_norm = {c} must be > 0"));
        }
        match t.lr_schedule {
            LrSchedule::Exponential { gamma } if !(gamma > 0.0 && gamma <= 1.0) => {
                return Err(format!(
                    "train.lr_schedule.gamma = {gamma} must lie in (0, 1]"
                ));
            }
            LrSchedule::Cosine { min_lr } if !(min_lr >= 0.0 && min_lr <= o.lr) => {
                return Err(format!(
                    "train.lr_schedule.min_lr = {min_lr} must lie in [0, lr]"
                ));
            }
            _ => {}
        }
        if t.batch_size > MAX_BATCH {
            return Err(format!(
                "train.batch_size = {} is more than the limit of {MAX_BATCH}",
                t.batch_size
            ));
        }
        Ok(())
    }

    /// The network's shape.
    fn check_model(&self) -> Result<(), String> {
        if self.model.hidden.is_empty() || self.model.hidden.contains(&0) {
            return Err("model.hidden must list at least one positive width".into());
        }
        if self.model.hidden.len() > MAX_DEPTH || self.model.hidden.iter().any(|&h| h > MAX_WIDTH) {
            return Err(format!(
                "model.hidden must list at most {MAX_DEPTH} widths of at most {MAX_WIDTH}"
            ));
        }
        if self.model.kind == ModelKind::Rbf
            && (self.model.hidden.len() != 1 || self.model.time != TimeConditioning::Readout)
        {
            return Err(
                "model.kind = \"rbf\" needs one hidden width (hidden = [16]) and time = \"readout\""
                    .into(),
            );
        }
        if self.model.kind.is_image() && !matches!(self.data, DataConfig::File { .. }) {
            return Err(format!(
                "model.kind = \"{}\" is an image network: it needs image data from a file \
                 (an IDX file, a 3-D or 4-D .npy, or a folder of PNG files)",
                if self.model.kind == ModelKind::Unet {
                    "unet"
                } else {
                    "paper-conv"
                }
            ));
        }
        // the tables' own fields are checked against the image shape once the data is read
        self.model.check_tables().map_err(|e| e.0)
    }

    /// `diffusion.decoder = "discretized"`: integer data from a file, as they are.
    fn check_decoder(&self) -> Result<(), String> {
        if matches!(self.diffusion.schedule, BetaSchedule::Learned { .. }) {
            return Err(
                "diffusion.decoder = \"discretized\" does not combine with the learned \
                        schedule"
                    .into(),
            );
        }
        match &self.data {
            DataConfig::File {
                dequantize: false,
                logit_alpha: None,
                ..
            } => Ok(()),
            DataConfig::File { .. } => Err("diffusion.decoder = \"discretized\" models the \
                                             integers themselves: set data.dequantize = false \
                                             and no data.logit_alpha"
                .into()),
            _ => Err(
                "diffusion.decoder = \"discretized\" needs integer data from a file \
                      (data.kind = \"file\")"
                    .into(),
            ),
        }
    }

    /// The data's parameters.
    fn check_data(&self) -> Result<(), String> {
        match &self.data {
            DataConfig::SwissRoll { noise } if !(noise.is_finite() && *noise > 0.0) => {
                Err(format!("data.noise = {noise} must be > 0"))
            }
            DataConfig::Heartbeat { length, .. } if *length > MAX_WIDTH => Err(format!(
                "data.length = {length} is more than the limit of {MAX_WIDTH}"
            )),
            DataConfig::Heartbeat { length, period } => {
                diffusion_data::Heartbeat::new(*length, *period)
                    .map(|_| ())
                    .map_err(|e| format!("data: {e}"))
            }
            DataConfig::File {
                heldout_fraction, ..
            } if !(*heldout_fraction > 0.0 && *heldout_fraction < 1.0) => Err(format!(
                "data.heldout_fraction = {heldout_fraction} must lie in (0, 1)"
            )),
            DataConfig::File {
                logit_alpha: Some(a),
                dequantize,
                ..
            } if !(*dequantize && *a > 0.0 && *a < 0.5) => Err(format!(
                "data.logit_alpha = {a} must lie in (0, 0.5), with dequantize = true \
                 (the logit map is for integer data)"
            )),
            DataConfig::File {
                standardize,
                dequantize,
                ..
            } if self.diffusion.process == ProcessKind::Binomial
                && (*dequantize || standardize.is_some_and(|s| s != Scaling::None)) =>
            {
                Err(
                    "data.standardize and data.dequantize are for Gaussian runs; \
                     a binomial run takes its 0/1 values as they are"
                        .into(),
                )
            }
            DataConfig::File {
                binarize: Some(b), ..
            } if self.diffusion.process != ProcessKind::Binomial || !b.is_finite() => Err(format!(
                "data.binarize = {b} is a finite threshold for binomial runs (process = \"binomial\")"
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[diffusion]
steps = 40
schedule = { kind = "paper" }
[data]
kind = "swiss-roll"
"#;

    #[test]
    fn minimal_config_takes_defaults() {
        let c = RunConfig::from_toml(MINIMAL).unwrap();
        c.validate().unwrap();
        assert_eq!(c.diffusion.parametrization, ReverseParametrization::Paper);
        assert_eq!(c.data, DataConfig::SwissRoll { noise: 0.5 });
        assert_eq!(c.train.batch_size, 1024);
        assert_eq!(c.model.hidden, vec![128, 128]);
    }

    #[test]
    fn broken_configs_are_refused_with_a_line() {
        let unknown = format!("{MINIMAL}\n[train]\nstepz = 3\n");
        let e = RunConfig::from_toml(&unknown).unwrap_err().to_string();
        assert!(e.contains("unknown field `stepz`"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let wrong_type = MINIMAL.replace("steps = 40", "steps = \"forty\"");
        assert!(RunConfig::from_toml(&wrong_type).is_err());
        let zero = RunConfig::from_toml(&MINIMAL.replace("steps = 40", "steps = 0")).unwrap();
        assert!(zero.validate().unwrap_err().to_string().contains("T = 0"));
        let bad_beta = MINIMAL.replace(
            "{ kind = \"paper\" }",
            "{ kind = \"linear\", start = 0.0001, end = 1.5 }",
        );
        let e = RunConfig::from_toml(&bad_beta)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("end = 1.5"), "{e}");
    }

    /// The error line of a config that parses but does not validate.
    fn refused(text: &str) -> String {
        RunConfig::from_toml(text)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn clip_denoised_needs_noise_prediction_and_file_data() {
        let clip = MINIMAL.replace("steps = 40", "steps = 40\nclip_denoised = true");
        assert!(refused(&clip).contains("noise-predicting"));
        let eps = clip.replace("[data]", "parametrization = \"epsilon\"\n[data]");
        assert!(refused(&eps).contains("needs data from a file"));
        let file = eps.replace("kind = \"swiss-roll\"", "kind = \"file\"\npath = \"x.npy\"");
        RunConfig::from_toml(&file).unwrap().validate().unwrap();
        let learned = file.replace("{ kind = \"paper\" }", "{ kind = \"learned\" }");
        assert!(refused(&learned).contains("learned schedule"));
    }

    #[test]
    fn the_discretized_decoder_needs_integer_file_data_as_it_is() {
        let decoder = MINIMAL.replace("steps = 40", "steps = 40\ndecoder = \"discretized\"");
        assert!(refused(&decoder).contains("needs integer data from a file"));
        let file = decoder.replace("kind = \"swiss-roll\"", "kind = \"file\"\npath = \"x.npy\"");
        let c = RunConfig::from_toml(&file).unwrap();
        c.validate().unwrap();
        assert_eq!(c.diffusion.decoder, LastStep::Discretized);
        let dequantized = format!("{file}dequantize = true\n");
        assert!(refused(&dequantized).contains("data.dequantize = false"));
        let learned = file.replace("{ kind = \"paper\" }", "{ kind = \"learned\" }");
        assert!(refused(&learned).contains("learned schedule"));
        let binomial = file.replace("steps = 40", "steps = 40\nprocess = \"binomial\"");
        assert!(refused(&binomial).contains("gaussian\" only"));
        let unknown = decoder.replace("\"discretized\"", "\"binned\"");
        assert!(RunConfig::from_toml(&unknown).is_err());
        // the default is the paper's edge step, and configs without the key keep their text
        let edge = RunConfig::from_toml(MINIMAL).unwrap();
        assert_eq!(edge.diffusion.decoder, LastStep::Edge);
        assert!(!toml::to_string(&edge).unwrap().contains("decoder"));
    }

    #[test]
    fn learning_rate_schedules() {
        assert_eq!(LrSchedule::Constant.rate(0.1, 500, 1000), 0.1);
        let e = LrSchedule::Exponential { gamma: 0.99 };
        assert!((e.rate(0.1, 2, 10) - 0.1 * 0.9801).abs() < 1e-15);
        let c = LrSchedule::Cosine { min_lr: 0.01 };
        assert!((c.rate(0.1, 0, 100) - 0.1).abs() < 1e-15);
        assert!((c.rate(0.1, 50, 100) - 0.055).abs() < 1e-15);
        assert!((c.rate(0.1, 100, 100) - 0.01).abs() < 1e-15);
    }
}
