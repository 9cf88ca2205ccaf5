//! # diffusion-core
//!
//! The mathematics of diffusion probabilistic models (Sohl-Dickstein, Weiss, Maheswaranathan and
//! Ganguli, "Deep Unsupervised Learning using Nonequilibrium Thermodynamics", ICML 2015): beta
//! schedules, the forward closed forms, the posteriors `q(x_{t-1} | x_t, x_0)`, KL and entropy
//! terms, and the variational bound `K` (paper eq. 14) in bits — for Gaussian diffusion
//! ([`GaussianDiffusion`]) and binomial diffusion on bits ([`BinomialDiffusion`]).
//!
//! Every schedule and every derived array is computed in `f64` and only cast at the edge. The
//! scalar functions here need no backend; the few tensor functions (the KL of diagonal Gaussians
//! and the reverse parametrizations) take Burn tensors on whatever device they live on, and sit
//! behind the default `burn` feature: with `default-features = false` the crate builds without
//! Burn.
//!
//! ```
//! use diffusion_core::{BetaSchedule, GaussianDiffusion};
//!
//! // The paper's Swiss-roll schedule at T = 40.
//! let betas = BetaSchedule::paper().betas(40).unwrap();
//! assert!((betas[0] - 0.025976).abs() < 1e-6);
//!
//! let diffusion = GaussianDiffusion::new(betas, 2).unwrap();
//! let (mean, var) = diffusion.posterior_mean_variance(10, 0.7, -0.3);
//! assert!(var > 0.0 && var < diffusion.beta(10));
//! // The bound of the null model N(0, I): -d/2 log2(2 pi e).
//! assert!((diffusion.l_null_bits() + 4.094191).abs() < 1e-6);
//! # let _ = mean;
//! ```

#![warn(missing_docs)]

pub mod binomial;
pub mod condition;
pub mod decoder;
pub mod gaussian;
pub mod parametrization;
pub mod respace;
pub mod schedule;
pub mod stats;

pub use binomial::{BinomialDiffusion, binary_entropy_bits, kl_bernoulli_scalar};
#[cfg(feature = "burn")]
pub use binomial::{kl_bernoulli_log_probs, kl_bernoulli_logits};
#[cfg(feature = "burn")]
pub use gaussian::kl_diag_gaussian;
pub use gaussian::{BoundConstants, GaussianDiffusion, kl_diag_gaussian_scalar};
pub use parametrization::ReverseParametrization;
#[cfg(feature = "burn")]
pub use parametrization::StepCoefficients;
pub use respace::{Ddim, PredictionType, Respacing, TimestepSpacing};
pub use schedule::{BetaSchedule, ScheduleError};
pub use stats::{MeanStderr, energy_distance};

/// Nats per bit: divide a value in nats by this to get bits.
pub const LN_2: f64 = std::f64::consts::LN_2;
