//! Conditioning the reverse chain by multiplying distributions (paper section 2.5, eq. 16–21;
//! SPEC section 6): samples of p̃(x_0) ∝ p(x_0) r(x_0), drawn with p̃(x_{t-1} | x_t) ∝
//! p(x_{t-1} | x_t) r_{t-1}(x_{t-1}) at every step, x_T included.
//!
//! A [`Condition`] is a product of factors on one sample's coordinates: a known value (a delta,
//! inpainting) or a noisy observation (denoising: a Gaussian N(y, s²) for continuous data, a bit
//! flipped with probability e for binary data). [`Conditioning`] resolves conditions for a set of
//! chains, one shared by all or one per chain, and says how r_t follows the step
//! ([`ConditionMode`]):
//! - [`ConditionMode::Constant`], the paper's choice: r_t = r at every step, known values held
//!   fixed;
//! - [`ConditionMode::Forward`]: the observation passed through the forward process, as if it
//!   shared x_t's noise. At step t a known value v becomes a draw of q(x_t | x_0 = v); a Gaussian
//!   observation (y, s²) becomes (sqrt(abar_t) y + sqrt(1 - abar_t) ε, abar_t s²); an observed bit
//!   (y, e) becomes a draw y_t of q(y_t | y_0 = y) with flip probability abar_t e;
//! - [`ConditionMode::Likelihood`]: r_t(x_t) is the observation's likelihood given x_t for
//!   standard-normal (or i.i.d. Bernoulli(pi)) data, N(y; sqrt(abar_t) x_t, 1 - abar_t + s²):
//!   weak where x_t is mostly noise.
//!
//! - [`ConditionMode::Twisted`] (resampled, Gaussian runs): the likelihood mode's factors as the
//!   proposal, the particles weighed toward twisting functions ψ_t(x_t) = N(y; x̂_0(x_t),
//!   s² + 1 − abar_t) built from the network's own x̂_0.
//!
//! At t = 0 every mode is r itself. [`Conditioning::resampled`] adds sequential Monte Carlo on
//! top of the constant, likelihood or twisted mode: the chains are weighted and resampled so
//! that their draws tend to the model's own p(x_0) r(x_0) (for the constant mode, to p(x_0)
//! with r at every step: its known values held from x_T on).
//!
//! Several factors on one coordinate are multiplied into one (`diffusion_core::condition`); a
//! known value absorbs any observation of its coordinate.
//!
//! ```
//! use burn::tensor::Device;
//! use diffusion_core::{BetaSchedule, GaussianDiffusion, ReverseParametrization};
//! use diffusion_models::condition::Variable;
//! use diffusion_models::{Condition, ConditionMode, Conditioning, GaussianBound, ModelConfig, process};
//!
//! // N(0, I) data and their exact reversal, the forward kernel (the untrained `paper` network)
//! let bound = GaussianBound::new(
//!     GaussianDiffusion::new(BetaSchedule::paper().betas(40)?, 2)?,
//!     ReverseParametrization::Paper,
//! );
//! let device = Device::flex();
//! let network = ModelConfig::default().init(2, 4, 40, &device);
//! // x_1 known to be 0.3, x_0 seen as 1.5 through noise of s = 0.5
//! let r = Condition::new().known(1, 0.3).observed(0, 1.5, 0.5);
//! let given = Conditioning::new(&[r], 2, Variable::Continuous, ConditionMode::Likelihood)?;
//! let mut rng = diffusion_data::rng(0, 1);
//! let x = process::sample_given(&bound, &network, 4000, &given, &mut rng, &device, 4096)?;
//! assert!(x.chunks(2).all(|p| p[1] == 0.3));
//! // the exact posterior of x_0 is N(1.5 / 1.25, 0.25 / 1.25): mean 1.2, s.e. 0.007 here
//! let mean = x.chunks(2).map(|p| p[0] as f64).sum::<f64>() / 4000.0;
//! assert!((mean - 1.2).abs() < 0.03, "{mean}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The module is in three layers, one file each:
//! - `spec.rs`, the condition as the user states it: [`Factor`], [`Condition`],
//!   [`ConditionMode`], [`Variable`], [`ConditionError`], and [`Conditioning`] with its resolved
//!   [`Cell`]s;
//! - `factors.rs`, the factor r_t of one step: built on the host from a [`Conditioning`]
//!   (`StepFactor`) and multiplied into a Gaussian or Bernoulli kernel on a device
//!   (`DeviceFactor`), with the weights of sequential Monte Carlo;
//! - `particles.rs`, the particle systems of [`Conditioning::resampled`]: their weights and
//!   resampling (`Particles`, `pick_rows`).

mod factors;
mod particles;
mod spec;

pub(crate) use factors::{DeviceFactor, StepFactor};
pub(crate) use particles::{Particles, pick_rows};
pub use spec::{Cell, Condition, ConditionError, ConditionMode, Conditioning, Factor, Variable};
