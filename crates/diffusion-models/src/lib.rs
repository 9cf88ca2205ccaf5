//! # diffusion-models
//!
//! The reverse process of a diffusion probabilistic model as a Burn module, the bound it is
//! trained on, and the training loop, over any Burn device (the caller picks the backend).
//!
//! A training step, top to bottom: [`training::TrainingData::next_batch`] draws x_0;
//! [`bound::Diffusion::training_loss`] draws t ~ U{2..T} and x_t ~ q(x_t | x_0), runs the
//! [`model::ReverseMlp`], and returns minus the Monte-Carlo bound in bits; the optimizer steps.
//!
//! ```no_run
//! use burn::tensor::Device;
//! use diffusion_models::{RunConfig, RunDir, RunManifest, TrainingData, train};
//!
//! let config = RunConfig::from_toml(&std::fs::read_to_string("configs/swiss_roll.toml")?)?;
//! let manifest = RunManifest::new(config, 2, "flex");
//! let run = RunDir::create("runs/example".as_ref(), false)?;
//! let roll = diffusion_data::SwissRoll::new(0.5)?;
//! let data = TrainingData::swiss_roll(roll, manifest.config.train.seed);
//! let (model, summary) = train(&manifest, data, &Device::flex(), &run, None, &mut |_| {})?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod bound;
pub mod checkpoint;
pub mod config;
pub mod evaluate;
pub mod gradient_variance;
pub mod importance;
pub mod metrics;
pub mod model;
pub mod network;
pub mod process;
pub mod run;
pub mod setup;
pub mod trainer;
pub mod training;

pub use bound::Diffusion;
pub use checkpoint::Checkpoint;
pub use config::{ConfigError, DataConfig, RunConfig};
pub use evaluate::{Evaluation, evaluate};
pub use model::{ModelConfig, Network};
pub use network::{ReverseModel, ReverseNetwork};
pub use process::{BinomialBound, GaussianBound, Process};
pub use run::{RunDir, RunError, RunManifest};
pub use setup::{ResolvedData, Run, resolve};
pub use trainer::{Observer, StepReport, Trainer};
pub use training::{Progress, TrainError, TrainSummary, TrainingData, train};
