//! Training as a library call that touches no file.
//!
//! [`Trainer::step`] is one optimizer step, top to bottom: data ([`TrainingData::next_batch`]),
//! forward noising and posteriors ([`training_batch`]), the network and the bound
//! ([`Process::step_loss`]), the optimizer. [`Trainer::fit`] runs the steps left, building the
//! host side of each step on a second thread a couple of batches ahead (as burn-train's data
//! loader does), and hands every step's [`StepReport`] to the [`Observer`]s attached: the run
//! folder, `metrics.csv`, checkpoints and progress are observers ([`crate::training`]).
//!
//! The state a checkpoint needs to continue bit for bit is all here: the model, the optimizer,
//! both random streams' positions, the loss averages and the importance sampler
//! ([`Trainer::resume`] takes them as a [`ResumeState`]).
//!
//! ```
//! use burn::tensor::Device;
//! use diffusion_models::config::TrainConfig;
//! use diffusion_models::{ModelConfig, ReverseModel, Trainer, TrainingData, process};
//! use diffusion_core::{BetaSchedule, GaussianDiffusion, ReverseParametrization};
//!
//! let steps = 20;
//! let process = process::GaussianBound::new(
//!     GaussianDiffusion::new(BetaSchedule::paper().betas(steps)?, 2)?,
//!     ReverseParametrization::Paper,
//! );
//! let device = Device::flex().autodiff();
//! let network = ModelConfig { hidden: vec![16], ..ModelConfig::default() }.init(2, 4, steps, &device);
//! let config = TrainConfig { steps: 400, batch_size: 128, ..TrainConfig::default() };
//! let data = TrainingData::swiss_roll(diffusion_data::SwissRoll::new(0.5)?, 0);
//! let mut trainer = Trainer::new(process, ReverseModel::new(network), &config, data, &device);
//! let first = trainer.step()?; // one step by hand
//! assert_eq!((first.step, first.total), (1, 400));
//! let fitted = trainer.fit(&mut [])?; // the other 399
//! // minus the Monte-Carlo K, bits per point, averaged over the last 100 steps
//! assert!(fitted.final_loss_bits.unwrap().is_finite());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Instant;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::{
    GradientsParams, ModuleOptimizer, SgdConfig, grad_clipping::GradientClippingConfig,
    momentum::MomentumConfig,
};
use burn::tensor::{Device, Tensor};
use diffusion_data::Rng;
use diffusion_kernels::{FusedAdam, busy_workers, map_parallel};

use crate::config::ConfigError;
use crate::config::{OptimizerConfig, OptimizerKind, TSampling, TrainConfig};
use crate::data::{TrainingData, streams};
use crate::importance::StepSampler;
use crate::network::{ReverseModel, ReverseNetwork, row_parts};
use crate::process::{
    Objective, Process, StepLoss, TrainingBatch, training_batch, training_batch_at,
};
use crate::run::RunError;

/// Why training stopped early.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The loss or a parameter became NaN or infinite.
    #[error("training diverged: {what} at step {step}; {}", kept_note(.kept))]
    NonFinite {
        /// What was not finite.
        what: String,
        /// The step (1-based).
        step: usize,
        /// The newest checkpoint, which survives: its step and folder.
        kept: Option<(usize, PathBuf)>,
    },
    /// The run folder refused a write.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The configuration is inconsistent.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

fn kept_note(kept: &Option<(usize, PathBuf)>) -> String {
    match kept {
        Some((step, path)) => format!(
            "the checkpoint of step {step} is kept in {}",
            path.display()
        ),
        None => "no checkpoint had been written yet".to_string(),
    }
}

/// One step's report to the observers.
#[derive(Debug, Clone, Copy)]
pub struct StepReport {
    /// Steps done (1-based: this step's number).
    pub step: usize,
    /// Steps in the run.
    pub total: usize,
    /// This step's loss (minus the Monte-Carlo K, bits per point, for the bound).
    pub loss_bits: f64,
    /// The learning rate it used.
    pub lr: f64,
    /// Training seconds so far (including those before a resume).
    pub elapsed_s: f64,
    /// The mean loss since the last logged step, when this step closes a `log_every` interval.
    pub logged_loss_bits: Option<f64>,
    /// Whether a checkpoint is due after this step (`checkpoint_every`, and the last step).
    pub checkpoint_due: bool,
}

/// What a [`Trainer`] tells its observers; an error stops training.
pub trait Observer<P: Process, N: ReverseNetwork> {
    /// After each step.
    fn on_step(&mut self, trainer: &Trainer<P, N>, report: &StepReport) -> Result<(), TrainError>;

    /// When training diverged: may say which saved state survives (see [`TrainError::NonFinite`]).
    fn on_divergence(&mut self, _error: &mut TrainError) {}
}

/// Where the losses and the random streams stand: what a checkpoint records.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainProgress {
    /// Steps done.
    pub step: usize,
    /// Training seconds before this process started.
    pub wall_before_s: f64,
    /// Sum of the losses since the last logged step.
    pub interval_loss_sum: f64,
    /// Steps since the last logged step.
    pub interval_steps: usize,
    /// The mean loss of the last logged interval.
    pub last_loss_bits: Option<f64>,
    /// Word position of the data stream after the last step's batch.
    pub data_word_pos: u128,
    /// Word position of the t and noise stream after the last step's batch.
    pub noise_word_pos: u128,
}

/// Everything [`Trainer::resume`] continues from, in memory: the weights, the optimizer and
/// its state, the moving average of the weights, where the losses and the random streams
/// stand, and the importance sampler. A run folder builds one from its checkpoint
/// ([`crate::checkpoint::Checkpoint::resume_state`]); a program can keep one of its own.
pub struct ResumeState<N: ReverseNetwork> {
    /// The weights.
    pub model: ReverseModel<N>,
    /// The optimizer with its state.
    pub optimizer: ModuleOptimizer,
    /// The moving average of the weights (`train.ema_decay`).
    pub ema: Option<ReverseModel<N>>,
    /// Steps done, the loss averages and the streams' positions.
    pub progress: TrainProgress,
    /// The importance sampler of the steps t (`t_sampling = "importance"`).
    pub step_sampler: Option<StepSampler>,
}

/// The result of [`Trainer::fit`].
#[derive(Debug, Clone)]
pub struct Fitted<N: ReverseNetwork> {
    /// The trained model, on the plain (inference) device.
    pub model: ReverseModel<N>,
    /// The moving average of its weights, when `train.ema_decay` asks for one.
    pub ema: Option<ReverseModel<N>>,
    /// Training seconds, including those before a resume.
    pub wall_time_s: f64,
    /// The mean loss of the last logged interval.
    pub final_loss_bits: Option<f64>,
}

/// One step's host data, with the positions of both streams after drawing it.
struct Prepared<R> {
    batch: TrainingBatch<R>,
    data_pos: u128,
    noise_pos: u128,
}

/// The training data and the t and noise stream.
struct BatchSource {
    data: TrainingData,
    noise: Rng,
    batch_size: usize,
}

impl BatchSource {
    /// Draws x_0, then t (from the importance sampler, when there is one) and x_t.
    fn draw<P: Process>(
        &mut self,
        process: &P,
        sampler: Option<&StepSampler>,
    ) -> Prepared<P::Rows> {
        let x0 = self.data.next_batch(self.batch_size);
        let batch = match sampler {
            Some(s) => {
                let (ts, weights) = s.draw(self.batch_size, &mut self.noise);
                training_batch_at(process, &x0, ts, weights, &mut self.noise)
            }
            None => training_batch(process, &x0, &mut self.noise),
        };
        Prepared {
            batch,
            data_pos: self.data.rng_mut().get_word_pos(),
            noise_pos: self.noise.get_word_pos(),
        }
    }
}

/// Batches built ahead of the step that uses them.
const PREFETCH: usize = 2;

/// Below this many data values per batch, batches are built on the training thread (measured
/// on 2 cores at batch 128 x 2: a second thread cost 15-20 % of the steps/s).
const PREFETCH_MIN_VALUES: usize = 1024;

/// Trains a [`ReverseModel`] of any [`ReverseNetwork`] on a [`Process`].
pub struct Trainer<P: Process, N: ReverseNetwork> {
    process: P,
    tables: P::Tables,
    objective: Objective,
    config: TrainConfig,
    device: Device,
    model: Option<ReverseModel<N>>,
    /// The moving average of the weights (`train.ema_decay`), on the plain device.
    ema: Option<ReverseModel<N>>,
    optim: ModuleOptimizer,
    sampler: Option<StepSampler>,
    progress: TrainProgress,
    source: BatchSource,
    started: Instant,
}

/// A batch's loss (its value, in bits), its rows' KL terms and the loss's gradients, the batch
/// cut into `parts` contiguous parts of sizes within one of each other, each part's forward and
/// backward pass a task of its own ([`map_parallel`]: on a thread of its own while there are
/// threads) through leaves of its own of the same weights, its loss weighted by its share of the
/// rows. The parts' values and gradients added are the batch's, to rounding; one part is the
/// plain step.
pub(crate) fn batch_loss_and_grads<P: Process, N: ReverseNetwork>(
    (process, tables, objective): (&P, &P::Tables, Objective),
    model: &ReverseModel<N>,
    mut batch: TrainingBatch<P::Rows>,
    device: &Device,
    parts: usize,
) -> (f64, Option<Tensor<1>>, GradientsParams) {
    let (n, parts) = (batch.len(), parts.clamp(1, batch.len().max(1)));
    if parts == 1 {
        let StepLoss { loss, kl } = process.step_loss(tables, model, batch, objective, device);
        let value = loss.clone().into_scalar::<f32>() as f64;
        let grads = GradientsParams::from_grads(loss.backward(), model);
        return (value, kl, grads);
    }
    let mut pieces: Vec<_> = (1..parts)
        .rev()
        .map(|k| batch.split_off(n * k / parts))
        .collect();
    pieces.push(batch);
    pieces.reverse();
    let jobs: Vec<_> = pieces.into_iter().map(|b| (fork(model), b)).collect();
    let results = map_parallel(jobs, |(fork, part)| {
        let share = part.len() as f64 / n as f64;
        let StepLoss { loss, kl } = process.step_loss(tables, &fork, part, objective, device);
        let loss = loss * share;
        let value = loss.clone().into_scalar::<f32>() as f64;
        (
            value,
            kl,
            GradientsParams::from_grads(loss.backward(), &fork),
        )
    });
    let mut value = 0.0;
    let mut kls = Vec::with_capacity(parts);
    let mut grads = GradientsParams::new();
    for (v, kl, mut g) in results {
        value += v;
        // the parts' backward passes are done: their terms join no graph
        kls.extend(kl.map(Tensor::detach));
        model.visit(&mut AddGrads {
            into: &mut grads,
            from: &mut g,
        });
    }
    let kl = (kls.len() == parts).then(|| Tensor::cat(kls, 0));
    (value, kl, grads)
}

/// `model` with leaves of its own for its trainable weights (the same values, not copied): a
/// backward pass through it stays in a graph of its own, apart from the other parts'.
fn fork<M: Module>(model: &M) -> M {
    struct Fork;
    impl ModuleMapper for Fork {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.map(|t| {
                if t.is_require_grad() {
                    t.detach().require_grad()
                } else {
                    t
                }
            })
        }
    }
    model.clone().map(&mut Fork)
}

/// Adds the gradients of `from` to those of `into`, parameter by parameter (a module's
/// visit): the parts' gradients of a batch cut across threads.
struct AddGrads<'a> {
    into: &'a mut GradientsParams,
    from: &'a mut GradientsParams,
}

impl ModuleVisitor for AddGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.from.remove::<D>(param.id) {
            let sum = match self.into.remove::<D>(param.id) {
                Some(total) => total + g,
                None => g,
            };
            self.into.register(param.id, sum);
        }
    }
}

/// The optimizer a config describes.
pub fn optimizer(config: &OptimizerConfig) -> ModuleOptimizer {
    let clip = config
        .grad_clip_norm
        .map(|c| GradientClippingConfig::Norm(c as f32));
    match config.kind {
        // Burn's Adam to the bit, one pass per parameter on flex (diffusion_kernels::FusedAdam)
        OptimizerKind::Adam => {
            let optim = FusedAdam::new(
                config.beta1 as f32,
                config.beta2 as f32,
                config.epsilon as f32,
            )
            .init();
            match clip {
                Some(clip) => optim.with_grad_clipping(clip.init()),
                None => optim,
            }
        }
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

impl<P: Process, N: ReverseNetwork> Trainer<P, N> {
    /// A trainer for `model`, which lives on `device` (an autodiff device: `Device::autodiff`).
    /// The loss, optimizer, schedule and seed come from `config`; `data` gives the x_0.
    pub fn new(
        process: P,
        model: ReverseModel<N>,
        config: &TrainConfig,
        data: TrainingData,
        device: &Device,
    ) -> Self {
        let sampler = (config.t_sampling == TSampling::Importance)
            .then(|| StepSampler::starting_at(process.first_step(), process.steps()));
        Self {
            tables: process.tables(device),
            process,
            objective: Objective {
                loss: config.loss,
                hybrid_weight: config.hybrid_weight,
            },
            config: config.clone(),
            device: device.clone(),
            model: Some(model),
            ema: None,
            optim: optimizer(&config.optimizer),
            sampler,
            progress: TrainProgress::default(),
            source: BatchSource {
                data,
                noise: diffusion_data::rng(config.seed, streams::TRAIN_NOISE),
                batch_size: config.batch_size,
            },
            started: Instant::now(),
        }
    }

    /// Continues from `state`: the model, the optimizer, the moving average, both streams, the
    /// loss averages and the importance sampler. Nothing is read from a file here: a run folder
    /// builds the state from its checkpoint ([`crate::checkpoint::Checkpoint::resume_state`]).
    pub fn resume(&mut self, state: ResumeState<N>) -> Result<(), TrainError> {
        let invalid = |m: &str| Err(TrainError::Config(ConfigError::Invalid(m.to_string())));
        if self.config.ema_decay.is_some() != state.ema.is_some() && state.progress.step > 0 {
            return invalid("the averaged weights to resume from do not match train.ema_decay");
        }
        if state.progress.step > self.config.steps {
            return invalid("the state to resume from is past the run's last step");
        }
        if let Some(ours) = &self.sampler {
            match &state.step_sampler {
                None => return invalid("no importance-sampler state to resume from"),
                Some(s) if (s.first(), s.steps()) != (ours.first(), ours.steps()) => {
                    return invalid("the importance sampler to resume from has other steps t");
                }
                Some(_) => {}
            }
        }
        self.model = Some(state.model);
        self.optim = state.optimizer;
        self.ema = state.ema;
        self.progress = state.progress;
        self.source
            .data
            .rng_mut()
            .set_word_pos(self.progress.data_word_pos);
        self.source.noise.set_word_pos(self.progress.noise_word_pos);
        if self.sampler.is_some() {
            self.sampler = state.step_sampler;
        }
        self.started = Instant::now();
        Ok(())
    }

    /// Where this trainer stands, to continue later with [`Trainer::resume`] (on a new trainer
    /// of the same config, process and data): the model, the optimizer and the rest.
    pub fn into_resume_state(mut self) -> ResumeState<N> {
        // the seconds of this trainer count as time before the next one's
        self.progress.wall_before_s += self.started.elapsed().as_secs_f64();
        ResumeState {
            model: self.take_model(),
            optimizer: self.optim,
            ema: self.ema,
            progress: self.progress,
            step_sampler: self.sampler,
        }
    }

    /// The model being trained.
    pub fn model(&self) -> &ReverseModel<N> {
        self.model
            .as_ref()
            .expect("the trainer holds its model between steps")
    }

    fn take_model(&mut self) -> ReverseModel<N> {
        self.model
            .take()
            .expect("the trainer holds its model between steps")
    }

    /// The moving average of the weights, when `train.ema_decay` asks for one (from the first
    /// step on).
    pub fn ema(&self) -> Option<&ReverseModel<N>> {
        self.ema.as_ref()
    }

    /// The optimizer and its state.
    pub fn optimizer(&self) -> &ModuleOptimizer {
        &self.optim
    }

    /// The importance sampler of t, when the config asks for one.
    pub fn step_sampler(&self) -> Option<&StepSampler> {
        self.sampler.as_ref()
    }

    /// Where training stands.
    pub fn progress(&self) -> &TrainProgress {
        &self.progress
    }

    /// The training configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The process trained on.
    pub fn process(&self) -> &P {
        &self.process
    }

    /// One optimizer step, its batch drawn on this thread.
    pub fn step(&mut self) -> Result<StepReport, TrainError> {
        let prepared = self.source.draw(&self.process, self.sampler.as_ref());
        self.apply(prepared)
    }

    /// The network, the bound and the optimizer on a prepared batch.
    fn apply(&mut self, prepared: Prepared<P::Rows>) -> Result<StepReport, TrainError> {
        let (step, total) = (self.progress.step, self.config.steps);
        let lr = self
            .config
            .lr_schedule
            .rate(self.config.optimizer.lr, step, total);
        let ts = self
            .sampler
            .as_ref()
            .map(|_| prepared.batch.steps().to_vec());
        let model = self.take_model();
        // on the CPU, rayon's workers kept awake between the step's parallel kernels
        let busy = busy_workers();
        let (value, kl, grads) = self.loss_and_grads(&model, prepared.batch);
        if let (Some(s), Some(ts), Some(kl)) = (self.sampler.as_mut(), ts, kl) {
            let kl = kl.into_data().convert::<f32>();
            s.update(&ts, kl.as_slice::<f32>().expect("f32 data"));
        }
        let done = step + 1;
        if !value.is_finite() {
            self.model = Some(model);
            return Err(TrainError::NonFinite {
                what: format!("the loss is {value}"),
                step: done,
                kept: None,
            });
        }
        let model = self.optim.step(lr, model, grads);
        if let Some(decay) = self.config.ema_decay {
            let current = model.valid();
            self.ema = Some(match self.ema.take() {
                None => current,
                Some(ema) => crate::ema::update(ema, &current, decay),
            });
        }
        drop(busy);
        self.model = Some(model);
        let p = &mut self.progress;
        p.step = done;
        (p.data_word_pos, p.noise_word_pos) = (prepared.data_pos, prepared.noise_pos);
        p.interval_loss_sum += value;
        p.interval_steps += 1;
        let logged = (done % self.config.log_every == 0 || done == total).then(|| {
            let mean = p.interval_loss_sum / p.interval_steps as f64;
            (p.interval_loss_sum, p.interval_steps) = (0.0, 0);
            p.last_loss_bits = Some(mean);
            mean
        });
        let every = self.config.checkpoint_every;
        Ok(StepReport {
            step: done,
            total,
            loss_bits: value,
            lr,
            elapsed_s: p.wall_before_s + self.started.elapsed().as_secs_f64(),
            logged_loss_bits: logged,
            checkpoint_due: done == total || (every > 0 && done % every == 0),
        })
    }

    /// The batch's loss (its value, in bits), its rows' KL terms and the loss's gradients: with
    /// an image network on flex and several threads, the batch cut into a part a thread
    /// ([`ReverseNetwork::splits_batches`], [`batch_loss_and_grads`]).
    fn loss_and_grads(
        &self,
        model: &ReverseModel<N>,
        batch: TrainingBatch<P::Rows>,
    ) -> (f64, Option<Tensor<1>>, GradientsParams) {
        let parts = row_parts(&model.network, &self.device, batch.len());
        let process = (&self.process, &self.tables, self.objective);
        batch_loss_and_grads(process, model, batch, &self.device, parts)
    }

    /// Runs the steps left, telling `observers` after each; returns the trained model.
    pub fn fit(mut self, observers: &mut [&mut dyn Observer<P, N>]) -> Result<Fitted<N>, TrainError>
    where
        P::Rows: 'static,
    {
        let result = self.run_steps(observers);
        if let Err(mut error) = result {
            for o in observers.iter_mut() {
                o.on_divergence(&mut error);
            }
            return Err(error);
        }
        Ok(Fitted {
            wall_time_s: self.progress.wall_before_s + self.started.elapsed().as_secs_f64(),
            final_loss_bits: self.progress.last_loss_bits,
            ema: self.ema.take(),
            model: self.take_model().valid(),
        })
    }

    fn run_steps(&mut self, observers: &mut [&mut dyn Observer<P, N>]) -> Result<(), TrainError> {
        let left = self.config.steps.saturating_sub(self.progress.step);
        // Small batches are cheaper to build in line than to hand over between threads;
        // importance sampling draws each batch's steps from the previous step's terms, so in
        // line too.
        let values = self.config.batch_size * self.process.dim();
        if values < PREFETCH_MIN_VALUES || self.sampler.is_some() {
            for _ in 0..left {
                let report = self.step()?;
                self.tell(observers, &report)?;
            }
            return Ok(());
        }
        let process = self.process.clone();
        let mut source = BatchSource {
            data: self.source.data.clone(),
            noise: self.source.noise.clone(),
            batch_size: self.source.batch_size,
        };
        std::thread::scope(|scope| {
            let (tx, rx) = mpsc::sync_channel(PREFETCH);
            let source = &mut source;
            scope.spawn(move || {
                for _ in 0..left {
                    if tx.send(source.draw(&process, None)).is_err() {
                        break;
                    }
                }
            });
            for _ in 0..left {
                let prepared = rx
                    .recv()
                    .expect("the batch thread runs until the last step");
                let report = self.apply(prepared)?;
                self.tell(observers, &report)?;
            }
            Ok::<(), TrainError>(())
        })?;
        self.source = source;
        Ok(())
    }

    fn tell(
        &self,
        observers: &mut [&mut dyn Observer<P, N>],
        report: &StepReport,
    ) -> Result<(), TrainError> {
        observers
            .iter_mut()
            .try_for_each(|o| o.on_step(self, report))
    }
}

#[cfg(test)]
mod tests {
    use burn::module::{ModuleVisitor, Param};
    use burn::tensor::Tensor;
    use diffusion_core::{BetaSchedule, GaussianDiffusion, ReverseParametrization};

    use super::*;
    use crate::model::{ModelConfig, ModelKind, TimeConditioning};
    use crate::process::GaussianBound;

    /// Every parameter's values, in visiting order.
    fn parameters<M: Module>(model: &M) -> Vec<Vec<f32>> {
        struct Collect(Vec<Vec<f32>>);
        impl ModuleVisitor for Collect {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let data = param.val().into_data().convert::<f32>();
                self.0.push(data.as_slice::<f32>().unwrap().to_vec());
            }
        }
        let mut c = Collect(Vec::new());
        model.visit(&mut c);
        c.0
    }

    /// Two steps, the trainer handed over as a [`ResumeState`] to a new one (with other initial
    /// weights), two more: the same weights, bit for bit, as four steps in one trainer, with
    /// importance-sampled steps t and the moving average; a state without the sampler or the
    /// average is refused.
    #[test]
    fn a_run_continued_in_memory_is_the_run_trained_straight_through() {
        let steps = 10;
        let process = GaussianBound::new(
            GaussianDiffusion::new(BetaSchedule::paper().betas(steps).unwrap(), 2).unwrap(),
            ReverseParametrization::Paper,
        );
        let device = Device::flex().autodiff();
        let model = |seed: u64| {
            device.seed(seed);
            let config = ModelConfig {
                hidden: vec![8],
                ..ModelConfig::default()
            };
            ReverseModel::new(config.init(2, 4, steps, &device))
        };
        let train = TrainConfig {
            steps: 4,
            batch_size: 64,
            ema_decay: Some(0.9),
            t_sampling: TSampling::Importance,
            ..TrainConfig::default()
        };
        let data = || TrainingData::swiss_roll(diffusion_data::SwissRoll::new(0.5).unwrap(), 3);
        // one set of initial weights, cloned: the device's random stream is shared with the
        // tests running beside this one, so two seeded draws need not agree
        let start = model(1);
        let mut whole = Trainer::new(process.clone(), start.clone(), &train, data(), &device);
        for _ in 0..4 {
            whole.step().unwrap();
        }
        let mut first = Trainer::new(process.clone(), start.clone(), &train, data(), &device);
        first.step().unwrap();
        first.step().unwrap();
        let state = first.into_resume_state();
        let mut second = Trainer::new(process.clone(), model(2), &train, data(), &device);
        second.resume(state).unwrap();
        let third = second.step().unwrap();
        assert_eq!((third.step, third.total), (3, 4));
        second.step().unwrap();
        assert_eq!(parameters(whole.model()), parameters(second.model()));
        assert_eq!(
            parameters(whole.ema().unwrap()),
            parameters(second.ema().unwrap())
        );
        assert_eq!(whole.sampler, second.sampler);

        let mut partial = Trainer::new(process.clone(), start.clone(), &train, data(), &device);
        partial.step().unwrap();
        let mut state = partial.into_resume_state();
        state.step_sampler = None;
        let mut other = Trainer::new(process.clone(), model(2), &train, data(), &device);
        assert!(matches!(other.resume(state), Err(TrainError::Config(_))));
        let mut partial = Trainer::new(process.clone(), start.clone(), &train, data(), &device);
        partial.step().unwrap();
        let mut state = partial.into_resume_state();
        state.ema = None;
        let mut other = Trainer::new(process, model(2), &train, data(), &device);
        assert!(matches!(other.resume(state), Err(TrainError::Config(_))));
    }

    /// A batch cut into parts, each part's loss and gradients on a task of its own, gives the
    /// batch's loss, KL terms and gradients (to rounding) for the U-Net, with Gaussian diffusion
    /// (noise prediction and a learned variance) and binomial diffusion (one logit a pixel),
    /// importance weights included, parts of equal and of unequal size; the uncut batch is the
    /// plain step to the bit.
    #[test]
    fn a_batch_cut_into_parts_gives_the_whole_batchs_loss_and_gradients() {
        use diffusion_core::BinomialDiffusion;

        let steps = 20;
        let d = 64;
        let gaussian = GaussianBound::new(
            GaussianDiffusion::new(BetaSchedule::paper().betas(steps).unwrap(), d).unwrap(),
            ReverseParametrization::Epsilon,
        );
        let binomial = crate::process::BinomialBound {
            diffusion: BinomialDiffusion::new(
                BetaSchedule::Reciprocal.raw_betas(steps).unwrap(),
                0.5,
                d,
            )
            .unwrap(),
            parametrization: ReverseParametrization::Paper,
            respaced: None,
        };
        // two threads, so that the parts' graphs run at the same time
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(|| {
            check_cut(&gaussian, 2 * d, |i| ((i * 37) % 11) as f32 / 5.0 - 1.0);
            check_cut(&binomial, d, |i| ((i * 37) % 11 > 5) as u8 as f32);
        });
    }

    /// [`batch_loss_and_grads`] with 1, 2 and 3 parts of a batch of 10 rows of 8x8 images
    /// (`pixel(i)` the batch's i-th value) through a small U-Net with `outputs` outputs.
    fn check_cut<P: Process>(process: &P, outputs: usize, pixel: impl Fn(usize) -> f32) {
        use crate::process::training_batch_at;
        use burn::module::ModuleMapper;
        use burn::tensor::Distribution;
        use rand::SeedableRng;

        // a U-Net of two levels with attention at 4x4, on 8x8 images
        let (config, shape) = crate::image::tests::unet_configs().remove(0);
        let (d, steps) = (shape.len(), process.steps());
        assert_eq!(d, 64, "the 8x8 images of the batch");
        let device = Device::flex().autodiff();
        device.seed(5);
        // every weight moved off its initial value, so that the zero-initialised output
        // convolution passes gradients down to every layer
        struct Jitter<'a>(&'a Device);
        impl ModuleMapper for Jitter<'_> {
            fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
                param.map(|t| {
                    let noise = Tensor::random(t.shape(), Distribution::Normal(0.0, 0.1), self.0);
                    (t + noise).detach().require_grad()
                })
            }
        }
        let net = config
            .init(shape, outputs, &device)
            .map(&mut Jitter(&device));
        let model = ReverseModel::new(net);
        let tables = process.tables(&device);
        let n = 10;
        let x0: Vec<f32> = (0..n * d).map(pixel).collect();
        let ts: Vec<usize> = (0..n)
            .map(|i| process.first_step() + (i * 7) % (steps + 1 - process.first_step()))
            .collect();
        let weights: Vec<f32> = (0..n).map(|i| 0.5 + 0.1 * i as f32).collect();
        // the same rows (x_t drawn from the same stream) on every call
        let batch = || {
            let mut rng = Rng::seed_from_u64(9);
            training_batch_at(process, &x0, ts.clone(), Some(weights.clone()), &mut rng)
        };
        let run = |parts: usize| {
            let parts_of = (process, &tables, Objective::BOUND);
            let (value, kl, mut grads) =
                batch_loss_and_grads(parts_of, &model, batch(), &device, parts);
            // every parameter's gradient, in the model's order
            struct Take<'a>(&'a mut GradientsParams, Vec<Vec<f32>>);
            impl ModuleVisitor for Take<'_> {
                fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                    let g = self.0.remove::<D>(param.id).expect("a gradient");
                    self.1.push(crate::tensors::host(g));
                }
            }
            let mut take = Take(&mut grads, Vec::new());
            model.visit(&mut take);
            (value, crate::tensors::host(kl.unwrap()), take.1)
        };
        let StepLoss { loss, kl } =
            process.step_loss(&tables, &model, batch(), Objective::BOUND, &device);
        let plain = (
            loss.into_scalar::<f32>() as f64,
            crate::tensors::host(kl.unwrap()),
        );
        let whole = run(1);
        assert_eq!((whole.0, &whole.1), (plain.0, &plain.1));
        let close = |a: &[f32], b: &[f32], what: &str| {
            let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(scale > 0.0, "{what}: all zero");
            for (x, y) in a.iter().zip(b) {
                assert!(
                    (x - y).abs() <= 2e-5 * scale,
                    "{what}: {x} vs {y} (scale {scale})"
                );
            }
        };
        for parts in [2, 3] {
            let cut = run(parts);
            assert!(
                (cut.0 - whole.0).abs() <= 1e-5 * whole.0.abs(),
                "{parts} parts: loss {} vs {}",
                cut.0,
                whole.0
            );
            close(&cut.1, &whole.1, &format!("{parts} parts: KL terms"));
            assert_eq!(cut.2.len(), whole.2.len());
            for (i, (a, b)) in cut.2.iter().zip(&whole.2).enumerate() {
                close(a, b, &format!("{parts} parts: gradient {i}"));
            }
        }
    }

    /// One Adam step moves every parameter of every kind of network (none is hidden from the
    /// optimizer by the module structure).
    #[test]
    fn one_step_moves_every_parameter() {
        let steps = 10;
        let process = GaussianBound::new(
            GaussianDiffusion::new(BetaSchedule::paper().betas(steps).unwrap(), 2).unwrap(),
            ReverseParametrization::Paper,
        );
        let device = Device::flex().autodiff();
        for (time, kind, hidden) in [
            (TimeConditioning::Embedding, ModelKind::Mlp, vec![8, 8]),
            (TimeConditioning::Sinusoidal, ModelKind::Mlp, vec![8]),
            (TimeConditioning::Readout, ModelKind::Mlp, vec![8]),
            (TimeConditioning::Readout, ModelKind::Rbf, vec![8]),
        ] {
            let config = ModelConfig {
                hidden,
                time,
                kind,
                ..ModelConfig::default()
            };
            let model = ReverseModel::new(config.init(2, 4, steps, &device));
            let before = parameters(&model);
            let train = TrainConfig {
                steps: 2,
                batch_size: 256,
                ..TrainConfig::default()
            };
            let data = TrainingData::swiss_roll(diffusion_data::SwissRoll::new(0.5).unwrap(), 0);
            let mut trainer = Trainer::new(process.clone(), model, &train, data, &device);
            // the first step moves the readout off zero; the second reaches the layers below
            trainer.step().unwrap();
            trainer.step().unwrap();
            let after = parameters(trainer.model());
            assert_eq!(before.len(), after.len());
            for (i, (a, b)) in before.iter().zip(&after).enumerate() {
                assert!(a != b, "{time:?} {kind:?}: parameter {i} did not move");
            }
        }
    }

    /// With `ema_decay`, the average after k steps is w_1 after the first, then d e + (1 - d) w_k,
    /// over the raw weights w_k after each step; without it there is none.
    #[test]
    fn the_moving_average_follows_the_raw_weights() {
        let steps = 10;
        let process = GaussianBound::new(
            GaussianDiffusion::new(BetaSchedule::paper().betas(steps).unwrap(), 2).unwrap(),
            ReverseParametrization::Paper,
        );
        let device = Device::flex().autodiff();
        let d = 0.8;
        let config = ModelConfig {
            hidden: vec![8],
            ..ModelConfig::default()
        };
        let train = TrainConfig {
            steps: 4,
            batch_size: 64,
            ema_decay: Some(d),
            ..TrainConfig::default()
        };
        let data = || TrainingData::swiss_roll(diffusion_data::SwissRoll::new(0.5).unwrap(), 0);
        let start = ReverseModel::new(config.init(2, 4, steps, &device));
        // reading the weights initialises them, so both trainers start from the same ones
        parameters(&start);
        let mut trainer = Trainer::new(process.clone(), start.clone(), &train, data(), &device);
        assert!(trainer.ema().is_none());
        let mut want: Option<Vec<Vec<f32>>> = None;
        for _ in 0..4 {
            trainer.step().unwrap();
            let raw = parameters(trainer.model());
            want = Some(match want {
                None => raw,
                Some(e) => e
                    .iter()
                    .zip(&raw)
                    .map(|(e, w)| {
                        e.iter()
                            .zip(w)
                            .map(|(&e, &w)| (d * e as f64 + (1.0 - d) * w as f64) as f32)
                            .collect()
                    })
                    .collect(),
            });
            let got = parameters(trainer.ema().unwrap());
            for (g, w) in got.iter().flatten().zip(want.iter().flatten().flatten()) {
                assert!((g - w).abs() < 1e-6, "{g} vs {w}");
            }
        }
        // the average is not the raw weights, and training itself does not depend on it
        assert_ne!(
            parameters(trainer.ema().unwrap()),
            parameters(trainer.model())
        );
        let plain = TrainConfig {
            ema_decay: None,
            ..train
        };
        let mut other = Trainer::new(process, start, &plain, data(), &device);
        for _ in 0..4 {
            other.step().unwrap();
        }
        assert!(other.ema().is_none());
        assert_eq!(parameters(other.model()), parameters(trainer.model()));
    }
}
