//! # diffusion-models
//!
//! The reverse process of a diffusion probabilistic model on any Burn device (the caller picks
//! the backend): the bound K it is trained on and evaluated with, sampling, and training, for
//! this crate's networks ([`model`]) or any Burn module that implements [`ReverseNetwork`].
//!
//! A training step, top to bottom ([`Trainer::step`]): [`TrainingData::next_batch`] draws x_0;
//! [`process::training_batch`] draws t ~ U{first..T} (first = 2, or 1 with a decoder) and x_t ~ q(x_t | x_0); [`Process::step_loss`]
//! runs the network and returns minus the Monte-Carlo bound in bits; the optimizer steps. The
//! full-sum bound of a trained network is [`process::bound_bits_per_point`].
//!
//! ```
//! use burn::tensor::Device;
//! use diffusion_core::{BetaSchedule, GaussianDiffusion, MeanStderr, ReverseParametrization};
//! use diffusion_models::config::TrainConfig;
//! use diffusion_models::{GaussianBound, ModelConfig, ReverseModel, Trainer, TrainingData, process};
//!
//! let steps = 20;
//! let bound = GaussianBound::new(
//!     GaussianDiffusion::new(BetaSchedule::paper().betas(steps)?, 2)?,
//!     ReverseParametrization::Paper,
//! );
//! let device = Device::flex().autodiff();
//! let network = ModelConfig { hidden: vec![32], ..ModelConfig::default() }.init(2, 4, steps, &device);
//! let config = TrainConfig { steps: 200, batch_size: 128, ..TrainConfig::default() };
//! let roll = diffusion_data::SwissRoll::new(0.5)?;
//! let data = TrainingData::swiss_roll(roll, 0);
//! let trained = Trainer::new(bound.clone(), ReverseModel::new(network), &config, data, &device)
//!     .fit(&mut [])?
//!     .model;
//!
//! let points = roll.stream(1).next_batch(500);
//! let mut rng = diffusion_data::rng(0, 3);
//! let k = process::bound_bits_per_point(&bound, &trained.network, &points, &mut rng, &Device::flex(), 16_384);
//! let k = MeanStderr::of(&k).unwrap();
//! // better than the null model N(0, I), below the data's own -H = -1.97 bits
//! assert!(k.mean > bound.diffusion.l_null_bits() && k.mean < -1.9);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A run folder as `diffusion train` makes it: [`resolve`], [`Run::create`], [`Run::train`]
//! ([`setup`]); burn-train's `Learner`: the `learner` module (cargo feature `burn-train`).

#![warn(missing_docs)]

pub mod baselines;
pub mod bound;
pub mod checkpoint;
pub mod completion;
pub mod condition;
pub mod conditional;
pub mod config;
pub mod data;
pub mod ema;
pub mod evaluate;
pub mod gradient_variance;
pub mod image;
pub mod importance;
#[cfg(feature = "burn-train")]
pub mod learner;
pub mod metrics;
pub mod model;
pub mod network;
pub mod process;
pub mod run;
pub mod sampling;
pub mod setup;
pub mod source;
pub mod tensors;
pub mod trainer;
pub mod training;

pub use bound::Diffusion;
pub use checkpoint::Checkpoint;
pub use condition::{Condition, ConditionMode, Conditioning, Factor};
pub use config::{ConfigError, DataConfig, RunConfig};
pub use data::TrainingData;
pub use evaluate::{Evaluation, evaluate};
pub use model::{ModelConfig, Network};
pub use network::{ReverseModel, ReverseNetwork, forward_at_rows};
pub use process::{BinomialBound, GaussianBound, Process};
pub use run::{RunDir, RunError, RunManifest, Weights};
pub use setup::{ResolvedData, Run, resolve};
pub use trainer::{Observer, ResumeState, StepReport, TrainError, TrainProgress, Trainer};
pub use training::{Progress, TrainSummary, train};
