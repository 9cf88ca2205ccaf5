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
//! At t = 0 every mode is r itself. [`Conditioning::resampled`] adds sequential Monte Carlo on
//! top of the constant or likelihood mode: the chains are weighted and resampled so that their
//! draws tend to the model's own p(x_0) r(x_0).
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

use burn::tensor::{Device, Tensor};
use diffusion_core::condition::{bit_log_ratio, combine_bits, combine_gaussian};
use diffusion_data::Rng;
use rand::Rng as _;
use rand_distr::StandardNormal;

use crate::process::tensor2;

/// One factor of r(x_0) on one coordinate (0-based `index`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Factor {
    /// The coordinate is known to be `value` (a delta: inpainting).
    Known {
        /// The coordinate.
        index: usize,
        /// Its value (0 or 1 for binary data).
        value: f32,
    },
    /// The coordinate was observed as `value` with noise: the standard deviation s of a Gaussian
    /// N(value, s²) for continuous data, the flip probability e of the observed bit for binary
    /// data. A noise of 0 is a known value.
    Observed {
        /// The coordinate.
        index: usize,
        /// The observation (0 or 1 for binary data).
        value: f32,
        /// s (continuous) or e (binary).
        noise: f64,
    },
}

impl Factor {
    /// The coordinate the factor is on.
    pub fn index(&self) -> usize {
        match self {
            Self::Known { index, .. } | Self::Observed { index, .. } => *index,
        }
    }

    /// The factor in the space a run's model diffuses, for one given in the data's own units:
    /// a value v becomes (v - m_i) / s_i and a Gaussian noise s becomes s / s_i (the
    /// standardisation's m and s; see [`diffusion_data::Standardization`]). On dequantised data
    /// an integer v stands for its bin [v, v + 1), whose centre v + 1/2 is used: the value a
    /// sample's pixel comes back as, whatever the rounding on the way.
    pub fn standardized(self, units: &diffusion_data::Standardization) -> Self {
        let centre = if units.dequantize { 0.5 } else { 0.0 };
        let map = |index: usize, value: f32| units.value(index, value as f64 + centre) as f32;
        match self {
            Self::Known { index, value } => Self::Known {
                index,
                value: map(index, value),
            },
            Self::Observed {
                index,
                value,
                noise,
            } => Self::Observed {
                index,
                value: map(index, value),
                noise: noise / units.scale[index],
            },
        }
    }
}

/// r(x_0) for one sample: the product of its factors (none: no condition).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Condition {
    factors: Vec<Factor>,
}

impl Condition {
    /// No factor.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a known value of coordinate `index`.
    pub fn known(mut self, index: usize, value: f32) -> Self {
        self.factors.push(Factor::Known { index, value });
        self
    }

    /// Adds a noisy observation of coordinate `index` (see [`Factor::Observed`]).
    pub fn observed(mut self, index: usize, value: f32, noise: f64) -> Self {
        self.factors.push(Factor::Observed {
            index,
            value,
            noise,
        });
        self
    }

    /// Adds a factor.
    pub fn with(mut self, factor: Factor) -> Self {
        self.factors.push(factor);
        self
    }

    /// The factors, in the order given.
    pub fn factors(&self) -> &[Factor] {
        &self.factors
    }
}

/// How the factor at step t follows from r (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConditionMode {
    /// r_t = r: the paper's product, known values held fixed.
    #[default]
    Constant,
    /// r_t is r passed through the forward process to step t.
    Forward,
    /// r_t(x_t) is the likelihood of the observation given x_t if the data were N(0, I)
    /// (Gaussian) or i.i.d. Bernoulli(pi) bits (binomial): N(y; sqrt(abar_t) x_t,
    /// 1 - abar_t + s²), exact for such data and r itself at t = 0. It tempers r where x_t
    /// says little about x_0; a known value is a factor of variance 1 - abar_t.
    Likelihood,
}

impl ConditionMode {
    /// The mode's name on the command line: `constant`, `forward` or `likelihood`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Constant => "constant",
            Self::Forward => "forward",
            Self::Likelihood => "likelihood",
        }
    }
}

/// The kind of values a condition is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variable {
    /// Real coordinates (Gaussian diffusion).
    Continuous,
    /// Bits (binomial diffusion).
    Binary,
}

/// Why a condition cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConditionError {
    /// A coordinate past the data's dimension.
    #[error("condition on coordinate {index}, but the data have {dim} (coordinates count from 0)")]
    Index {
        /// The coordinate asked for.
        index: usize,
        /// The data dimension.
        dim: usize,
    },
    /// A value that is not finite, or not a bit for binary data.
    #[error("condition value {value} on coordinate {index}: {why}")]
    Value {
        /// The coordinate.
        index: usize,
        /// The value.
        value: f32,
        /// What it must be.
        why: &'static str,
    },
    /// A noise level out of range.
    #[error("observation noise {noise} on coordinate {index}: {why}")]
    Noise {
        /// The coordinate.
        index: usize,
        /// The noise given.
        noise: f64,
        /// The range it must be in.
        why: &'static str,
    },
    /// Two different known values of one coordinate: r is zero everywhere.
    #[error("coordinate {index} is known to be both {a} and {b}")]
    Conflict {
        /// The coordinate.
        index: usize,
        /// One value.
        a: f32,
        /// The other.
        b: f32,
    },
    /// Conditions resolved for other data than the process's.
    #[error(
        "the condition is for {dim} {variable:?} coordinates, the run's data have {process_dim} {process_variable:?}"
    )]
    Process {
        /// The condition's dimension.
        dim: usize,
        /// The condition's kind of values.
        variable: Variable,
        /// The process's dimension.
        process_dim: usize,
        /// The process's kind of values.
        process_variable: Variable,
    },
    /// Resampling asked for where it does not apply.
    #[error("{0}")]
    Resampling(&'static str),
    /// Neither one condition for all chains nor one per chain.
    #[error("{given} conditions for {chains} samples: give one for all, or one per sample")]
    Rows {
        /// Conditions given.
        given: usize,
        /// Chains to run.
        chains: usize,
    },
}

/// One coordinate of one resolved condition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cell {
    /// No factor.
    Free,
    /// A known value.
    Known(f32),
    /// One (combined) observation: value and noise (s or e, > 0).
    Observed(f32, f64),
}

/// Conditions resolved for a set of reverse chains: each coordinate's factors multiplied into one
/// [`Cell`], for one condition shared by every chain or one per chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Conditioning {
    dim: usize,
    rows: usize,
    variable: Variable,
    mode: ConditionMode,
    resample: bool,
    /// With resampling: chains per particle system (0: all the chains of a chunk are one).
    group: usize,
    cells: Vec<Cell>,
}

impl Conditioning {
    /// Resolves `conditions` (one, shared by every chain, or one per chain) for data of `dim`
    /// coordinates.
    pub fn new(
        conditions: &[Condition],
        dim: usize,
        variable: Variable,
        mode: ConditionMode,
    ) -> Result<Self, ConditionError> {
        let mut cells = Vec::with_capacity(conditions.len() * dim);
        for condition in conditions {
            cells.extend(resolve_one(condition, dim, variable)?);
        }
        Ok(Self {
            dim,
            rows: conditions.len(),
            variable,
            mode,
            resample: false,
            group: 0,
            cells,
        })
    }

    /// Turns the chains into a particle system (sequential Monte Carlo): before each step every
    /// chain is weighted by Z_t(x_t) / r(x_t), where Z_t(x_t) = ∫ p(x_{t-1} | x_t) r(x_{t-1}) is
    /// how well the model's kernel agrees with the factor (a twisted proposal, as in Wu et al.
    /// 2023, "Practical and asymptotically exact conditional sampling in diffusion models"), and the chains are resampled when the
    /// effective sample size falls under half (and always before the last step). The constant-r
    /// chain is then the proposal of a sampler whose draws tend to p(x_0) r(x_0) of the model
    /// itself as the number of chains grows (samples within one chunk of chains are dependent).
    /// With [`ConditionMode::Likelihood`] the weights are Z_t(x_t) / r_t(x_t), Z_t the integral
    /// of the kernel against r_{t-1}. Needs the constant or likelihood mode and one condition
    /// shared by every chain.
    pub fn resampled(mut self) -> Result<Self, ConditionError> {
        if self.mode == ConditionMode::Forward {
            return Err(ConditionError::Resampling(
                "resampling needs the constant or likelihood mode (the forward mode's r_t is random)",
            ));
        }
        if self.rows != 1 {
            return Err(ConditionError::Resampling(
                "resampling needs one condition shared by every sample",
            ));
        }
        self.resample = true;
        Ok(self)
    }

    /// [`Conditioning::resampled`] with one condition per group of `size` consecutive chains
    /// (one condition per chain, the same within each group): each group is a particle system
    /// of its own, weighted and resampled within itself, so that every condition (an image to
    /// complete, say) gets `size` particles. Chunks of chains are cut at group boundaries.
    pub fn resampled_in_groups(mut self, size: usize) -> Result<Self, ConditionError> {
        if self.mode == ConditionMode::Forward {
            return Err(ConditionError::Resampling(
                "resampling needs the constant or likelihood mode (the forward mode's r_t is random)",
            ));
        }
        let d = self.dim;
        let uniform = size > 0
            && self.rows.is_multiple_of(size)
            && self.cells.chunks(size * d).all(|g| {
                let first = &g[..d];
                g.chunks(d).all(|row| row == first)
            });
        if !uniform {
            return Err(ConditionError::Resampling(
                "resampling in groups needs the same condition for every chain of a group",
            ));
        }
        self.resample = true;
        self.group = size;
        Ok(self)
    }

    /// Whether the chains are resampled ([`Conditioning::resampled`]).
    pub fn resamples(&self) -> bool {
        self.resample
    }

    /// Chains per particle system when resampling in groups
    /// ([`Conditioning::resampled_in_groups`]).
    pub fn particle_group(&self) -> Option<usize> {
        (self.resample && self.group > 0).then_some(self.group)
    }

    /// Data dimension d.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// How many conditions: 1 (shared by every chain) or one per chain.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The mode.
    pub fn mode(&self) -> ConditionMode {
        self.mode
    }

    /// The kind of values.
    pub fn variable(&self) -> Variable {
        self.variable
    }

    /// Coordinate `i` of chain `chain`'s condition.
    pub fn cell(&self, chain: usize, i: usize) -> Cell {
        let row = if self.rows == 1 { 0 } else { chain };
        self.cells[row * self.dim + i]
    }

    /// Checks that these conditions fit a process on `dim` coordinates of kind `variable`, and
    /// can drive `chains` chains (one shared condition, or one per chain).
    pub fn check(
        &self,
        dim: usize,
        variable: Variable,
        chains: usize,
    ) -> Result<(), ConditionError> {
        if dim != self.dim || variable != self.variable {
            return Err(ConditionError::Process {
                dim: self.dim,
                variable: self.variable,
                process_dim: dim,
                process_variable: variable,
            });
        }
        if self.rows == 1 || self.rows == chains {
            Ok(())
        } else {
            Err(ConditionError::Rows {
                given: self.rows,
                chains,
            })
        }
    }

    /// The conditions of chains `start..start + m` (all of them when shared).
    pub fn chunk(&self, start: usize, m: usize) -> Conditioning {
        if self.rows == 1 {
            return self.clone();
        }
        Conditioning {
            cells: self.cells[start * self.dim..(start + m) * self.dim].to_vec(),
            rows: m,
            ..self.clone()
        }
    }

    /// The factor r_k for `m` chains at step `k` of a Gaussian chain whose abar_k is `abar`
    /// (drawing the forward-process noise in [`ConditionMode::Forward`]).
    pub(crate) fn gaussian_step(&self, m: usize, abar: f64, rng: &mut Rng) -> StepFactor {
        let mut f = StepFactor::empty(m * self.dim, 1.0);
        let (a, b) = (abar.sqrt(), (1.0 - abar).max(0.0).sqrt());
        for j in 0..m * self.dim {
            // (value, variance) of the factor on this coordinate; variance 0 is a known value
            let (y, s2) = match self.cell(j / self.dim, j % self.dim) {
                Cell::Free => continue,
                Cell::Known(v) => (v as f64, 0.0),
                Cell::Observed(y, s) => (y as f64, s * s),
            };
            let (value, var) = match self.mode {
                ConditionMode::Constant => (y, s2),
                ConditionMode::Forward => {
                    let e: f64 = rng.sample(StandardNormal);
                    (a * y + b * e, abar * s2)
                }
                // N(y; a x, 1 - abar + s²) as a factor in x: N(x; y / a, (1 - abar + s²) / abar)
                ConditionMode::Likelihood => (y / a, ((1.0 - abar) + s2) / abar),
            };
            if var > 0.0 {
                f.set_soft(j, value as f32, var as f32);
            } else {
                f.set_known(j, value as f32);
            }
        }
        f
    }

    /// The factor r_k for `m` chains at step `k` of a binomial chain with abar_k = `abar` and
    /// stationary rate `pi`: the soft part as log-likelihood ratios.
    pub(crate) fn binary_step(&self, m: usize, abar: f64, pi: f64, rng: &mut Rng) -> StepFactor {
        let mut f = StepFactor::empty(m * self.dim, 0.0);
        for j in 0..m * self.dim {
            // (bit, flip probability) of the factor on this coordinate; 0 is a known bit
            let (y, e) = match self.cell(j / self.dim, j % self.dim) {
                Cell::Free => continue,
                Cell::Known(v) => (v >= 0.5, 0.0),
                Cell::Observed(y, e) => (y >= 0.5, e),
            };
            match self.mode {
                ConditionMode::Constant => f.set_bit(j, y, e),
                ConditionMode::Forward => {
                    // y_t ~ q(y_t | y_0 = y): kept with probability abar, else redrawn
                    let y = if rng.random::<f64>() >= abar {
                        rng.random::<f64>() < pi
                    } else {
                        y
                    };
                    f.set_bit(j, y, abar * e)
                }
                ConditionMode::Likelihood if abar >= 1.0 => f.set_bit(j, y, e),
                ConditionMode::Likelihood => {
                    // P(x_0 = 1 | x_t) for i.i.d. Bernoulli(pi) bits, then P(y | x_t)
                    let p1 = abar + pi * (1.0 - abar);
                    let p0 = pi * (1.0 - abar);
                    let r1 = if y { 1.0 - e } else { e };
                    let h = |p: f64| p * r1 + (1.0 - p) * (1.0 - r1);
                    f.set_soft(j, 0.0, (h(p1) / h(p0)).ln() as f32);
                }
            }
        }
        f
    }
}

fn resolve_one(
    condition: &Condition,
    dim: usize,
    variable: Variable,
) -> Result<Vec<Cell>, ConditionError> {
    let mut known: Vec<Option<f32>> = vec![None; dim];
    let mut observed: Vec<Vec<(f64, f64)>> = vec![Vec::new(); dim];
    for factor in condition.factors() {
        let (index, value, noise) = match *factor {
            Factor::Known { index, value } => (index, value, 0.0),
            Factor::Observed {
                index,
                value,
                noise,
            } => (index, value, noise),
        };
        if index >= dim {
            return Err(ConditionError::Index { index, dim });
        }
        check_value(index, value, variable)?;
        check_noise(index, noise, variable)?;
        if noise == 0.0 {
            match known[index] {
                Some(a) if a != value => {
                    return Err(ConditionError::Conflict { index, a, b: value });
                }
                _ => known[index] = Some(value),
            }
        } else {
            observed[index].push((value as f64, noise));
        }
    }
    Ok((0..dim)
        .map(|i| match known[i] {
            Some(v) => Cell::Known(v),
            // one observation as given (combining one would round its noise)
            None if observed[i].len() == 1 => {
                let (y, noise) = observed[i][0];
                Cell::Observed(y as f32, noise)
            }
            None => match variable {
                Variable::Continuous => {
                    let factors: Vec<(f64, f64)> =
                        observed[i].iter().map(|&(y, s)| (y, s * s)).collect();
                    combine_gaussian(&factors)
                        .map_or(Cell::Free, |(y, s2)| Cell::Observed(y as f32, s2.sqrt()))
                }
                Variable::Binary => {
                    let factors: Vec<(bool, f64)> =
                        observed[i].iter().map(|&(y, e)| (y >= 0.5, e)).collect();
                    combine_bits(&factors)
                        .map_or(Cell::Free, |(y, e)| Cell::Observed(y as u8 as f32, e))
                }
            },
        })
        .collect())
}

fn check_value(index: usize, value: f32, variable: Variable) -> Result<(), ConditionError> {
    let why = match variable {
        Variable::Continuous if !value.is_finite() => "it must be finite",
        Variable::Binary if value != 0.0 && value != 1.0 => "a bit must be 0 or 1",
        _ => return Ok(()),
    };
    Err(ConditionError::Value { index, value, why })
}

fn check_noise(index: usize, noise: f64, variable: Variable) -> Result<(), ConditionError> {
    let why = match variable {
        Variable::Continuous if !(noise.is_finite() && noise >= 0.0) => {
            "a standard deviation must be finite and >= 0"
        }
        Variable::Binary if !(0.0..1.0).contains(&noise) => "a flip probability must be in [0, 1)",
        _ => return Ok(()),
    };
    Err(ConditionError::Noise { index, noise, why })
}

/// One step's factor on the host, per (chain, coordinate): a known value, or a soft factor
/// (Gaussian: mean and variance; binary: the log-likelihood ratio), or none.
#[derive(Debug, Clone)]
pub(crate) struct StepFactor {
    /// 1 where the value is known.
    known: Vec<f32>,
    /// The known value, 0 elsewhere.
    known_value: Vec<f32>,
    /// 1 where a soft factor applies.
    soft: Vec<f32>,
    /// The soft factor's mean (Gaussian), 0 elsewhere.
    soft_value: Vec<f32>,
    /// The soft factor's variance (Gaussian; 1 elsewhere, so that var + s² is never 0) or
    /// log-likelihood ratio (binary; 0 elsewhere).
    soft_param: Vec<f32>,
}

impl StepFactor {
    /// No factor anywhere; `fill` is the soft parameter where none applies.
    fn empty(len: usize, fill: f32) -> Self {
        Self {
            known: vec![0.0; len],
            known_value: vec![0.0; len],
            soft: vec![0.0; len],
            soft_value: vec![0.0; len],
            soft_param: vec![fill; len],
        }
    }

    fn set_known(&mut self, j: usize, v: f32) {
        self.known[j] = 1.0;
        self.known_value[j] = v;
    }

    /// A bit `y` seen with flip probability `e` (0: known).
    fn set_bit(&mut self, j: usize, y: bool, e: f64) {
        let v = if y { 1.0 } else { 0.0 };
        if e > 0.0 {
            self.set_soft(j, v, bit_log_ratio(y, e) as f32);
        } else {
            self.set_known(j, v);
        }
    }

    fn set_soft(&mut self, j: usize, y: f32, param: f32) {
        self.soft[j] = 1.0;
        self.soft_value[j] = y;
        self.soft_param[j] = param;
    }

    /// The Gaussian product N(mean, var) r and a draw from it with standard normals `eps`
    /// (host, row-major, as long as the factor): the reference the device version is tested
    /// against.
    #[cfg(test)]
    pub(crate) fn gaussian_draw_host(&self, mean: &[f64], var: &[f64], eps: &[f64]) -> Vec<f32> {
        (0..self.known.len())
            .map(|j| {
                if self.known[j] == 1.0 {
                    return self.known_value[j];
                }
                let (m, v) = if self.soft[j] == 1.0 {
                    diffusion_core::condition::gaussian_product(
                        mean[j],
                        var[j],
                        self.soft_value[j] as f64,
                        self.soft_param[j] as f64,
                    )
                } else {
                    (mean[j], var[j])
                };
                (m + v.sqrt() * eps[j]) as f32
            })
            .collect()
    }

    /// A draw of bits whose kernel probabilities of a 1 are `p` (host), multiplied by the
    /// factor, with uniforms `u`.
    pub(crate) fn binary_draw_host(&self, p: &[f64], u: &[f64]) -> Vec<f32> {
        (0..self.known.len())
            .map(|j| {
                if self.known[j] == 1.0 {
                    return self.known_value[j];
                }
                let l = (p[j] / (1.0 - p[j])).ln() + self.soft_param[j] as f64;
                let q = 1.0 / (1.0 + (-l).exp());
                if u[j] < q { 1.0 } else { 0.0 }
            })
            .collect()
    }

    /// The factor on `device` as `[m, d]` tensors.
    pub(crate) fn upload(self, m: usize, d: usize, device: &Device) -> DeviceFactor {
        DeviceFactor {
            keep: tensor2(self.known.iter().map(|k| 1.0 - k).collect(), m, d, device),
            known_value: tensor2(self.known_value, m, d, device),
            soft: tensor2(self.soft, m, d, device),
            soft_value: tensor2(self.soft_value, m, d, device),
            soft_param: tensor2(self.soft_param, m, d, device),
        }
    }
}

/// A step's factor on a device (see [`StepFactor`]).
#[derive(Debug, Clone)]
pub(crate) struct DeviceFactor {
    /// 1 where the chain's own draw is kept (not known).
    keep: Tensor<2>,
    known_value: Tensor<2>,
    soft: Tensor<2>,
    soft_value: Tensor<2>,
    /// Gaussian: the factor's variance where soft (1 elsewhere); binary: the log-likelihood
    /// ratio (0 elsewhere).
    soft_param: Tensor<2>,
}

impl DeviceFactor {
    /// A draw of N(mean, var) r with standard normals `eps`: per coordinate
    /// mean' = mean (1 - w) + y w, var' = var (1 - w), w = var / (var + s²) where a soft factor
    /// applies, then the known values put in.
    pub(crate) fn gaussian_draw(
        &self,
        mean: Tensor<2>,
        var: Tensor<2>,
        eps: Tensor<2>,
    ) -> Tensor<2> {
        // where no factor applies soft = 0 (so w = 0) and soft_param = 1 (no division by 0)
        let w = self.soft.clone() * var.clone() / (var.clone() + self.soft_param.clone());
        let one_minus_w = w.clone().neg() + 1.0;
        let mean = mean * one_minus_w.clone() + self.soft_value.clone() * w;
        let x = mean + (var * one_minus_w).sqrt() * eps;
        self.put_known(x)
    }

    /// ln Z_t(x_t) − ln r_t(x_t) per chain for a Gaussian kernel N(mean, var) at x_t, where this
    /// factor is r_{t-1} and `prev` is r_t (the one x_t was drawn with; see
    /// [`Conditioning::resampled`]): N(v; mean, var) for a known value (held at v, r = 1 there),
    /// N(y; mean, var + s²) for a soft factor, over N(y_t; x_t, s_t²) of `prev`'s soft factor.
    pub(crate) fn gaussian_log_weight(
        &self,
        mean: &Tensor<2>,
        var: &Tensor<2>,
        x_t: &Tensor<2>,
        prev: &DeviceFactor,
    ) -> Tensor<1> {
        let log_normal = |x: Tensor<2>, m: Tensor<2>, v: Tensor<2>| {
            ((x - m).powi_scalar(2) / v.clone() + (v * (2.0 * std::f64::consts::PI)).log()) * -0.5
        };
        let known = self.keep.clone().neg() + 1.0;
        let known_term = log_normal(self.known_value.clone(), mean.clone(), var.clone()) * known;
        let z_term = log_normal(
            self.soft_value.clone(),
            mean.clone(),
            var.clone() + self.soft_param.clone(),
        ) * self.soft.clone();
        let h_term = log_normal(
            prev.soft_value.clone(),
            x_t.clone(),
            prev.soft_param.clone(),
        ) * prev.soft.clone();
        (known_term + z_term - h_term).sum_dim(1).squeeze_dim(1)
    }

    /// ln Z_t(x_t) − ln r_t(x_t) per chain for a Bernoulli kernel with `logits` at x_t (this
    /// factor r_{t-1}, `prev` r_t): f or 1 − f for a known bit, f r(1) + (1 − f) r(0) for a soft
    /// one, over `prev`'s r(x_t); each soft r normalised, L its log-ratio: ln Z = softplus(l + L)
    /// − softplus(l) − softplus(L) and ln r(x) = −softplus(∓L).
    pub(crate) fn binary_log_weight(
        &self,
        logits: &Tensor<2>,
        x_t: &Tensor<2>,
        prev: &DeviceFactor,
    ) -> Tensor<1> {
        use burn::tensor::activation::softplus;
        let sp = |x: Tensor<2>| softplus(x, 1.0);
        let known = self.keep.clone().neg() + 1.0;
        let v = self.known_value.clone();
        let known_term =
            (v.clone() * sp(logits.clone().neg()) + (v.neg() + 1.0) * sp(logits.clone())).neg()
                * known;
        let l = self.soft_param.clone();
        let z_term =
            (sp(logits.clone() + l.clone()) - sp(logits.clone()) - sp(l)) * self.soft.clone();
        let lp = prev.soft_param.clone();
        let h_term = (x_t.clone() * sp(lp.clone().neg()) + (x_t.clone().neg() + 1.0) * sp(lp))
            .neg()
            * prev.soft.clone();
        (known_term + z_term - h_term).sum_dim(1).squeeze_dim(1)
    }

    /// The logits of the kernel times the binary factor.
    pub(crate) fn binary_logits(&self, logits: Tensor<2>) -> Tensor<2> {
        logits + self.soft_param.clone()
    }

    /// `x` with the known values put in.
    pub(crate) fn put_known(&self, x: Tensor<2>) -> Tensor<2> {
        x * self.keep.clone() + self.known_value.clone()
    }
}

/// The weights of particle systems of chains ([`Conditioning::resampled`]): all the chains one
/// system, or consecutive groups of them each a system of its own.
#[derive(Debug, Clone)]
pub(crate) struct Particles {
    log_w: Vec<f64>,
    group: usize,
}

impl Particles {
    /// `m` chains of equal weight, in systems of `group` chains (0: one system).
    pub(crate) fn new(m: usize, group: usize) -> Self {
        Self {
            log_w: vec![0.0; m],
            group: if group == 0 { m.max(1) } else { group },
        }
    }

    /// The systems of `given`'s chunk of `m` chains.
    pub(crate) fn of(given: &Conditioning, m: usize) -> Self {
        Self::new(m, given.group)
    }

    /// Multiplies the weights by a step's (`log_weight`, per chain); returns the chains to carry
    /// on with, by systematic resampling within each system whose effective sample size is
    /// under half its chains, or within every system when `last` is set (then its weights are
    /// equal again). `None` when no chain moves.
    pub(crate) fn reweigh(
        &mut self,
        log_weight: &[f32],
        last: bool,
        rng: &mut Rng,
    ) -> Option<Vec<usize>> {
        let m = self.log_w.len();
        let mut picks: Vec<usize> = (0..m).collect();
        let mut moved = false;
        let group = self.group;
        for (g, (w, l)) in self
            .log_w
            .chunks_mut(group)
            .zip(log_weight.chunks(group))
            .enumerate()
        {
            if let Some(p) = reweigh_system(w, l, last, rng) {
                for (k, i) in p.into_iter().enumerate() {
                    picks[g * group + k] = g * group + i;
                }
                moved = true;
            }
        }
        moved.then_some(picks)
    }
}

/// [`Particles::reweigh`] for one system's log-weights `log_w` (indices within it).
fn reweigh_system(
    log_w: &mut [f64],
    log_weight: &[f32],
    last: bool,
    rng: &mut Rng,
) -> Option<Vec<usize>> {
    for (w, &l) in log_w.iter_mut().zip(log_weight) {
        // a NaN weight (a kernel that broke) counts as zero
        *w += if l.is_nan() {
            f64::NEG_INFINITY
        } else {
            l as f64
        };
    }
    let top = log_w.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if !top.is_finite() {
        // every chain at weight zero: nothing to prefer, carry on as we are
        log_w.iter_mut().for_each(|w| *w = 0.0);
        return None;
    }
    let w: Vec<f64> = log_w.iter().map(|l| (l - top).exp()).collect();
    let (sum, sum2) = w.iter().fold((0.0, 0.0), |(a, b), v| (a + v, b + v * v));
    let m = w.len();
    if !last && sum * sum / sum2 >= 0.5 * m as f64 {
        return None;
    }
    let u: f64 = rng.random();
    let mut picks = Vec::with_capacity(m);
    let mut acc = w[0] / sum;
    let mut i = 0;
    for k in 0..m {
        let target = (k as f64 + u) / m as f64;
        while acc < target && i + 1 < m {
            i += 1;
            acc += w[i] / sum;
        }
        picks.push(i);
    }
    log_w.iter_mut().for_each(|w| *w = 0.0);
    Some(picks)
}

/// The rows `picks` of `x`.
pub(crate) fn pick_rows(x: Tensor<2>, picks: &[usize]) -> Tensor<2> {
    let device = x.device();
    let idx: Vec<i64> = picks.iter().map(|&i| i as i64).collect();
    let idx = Tensor::<1, burn::tensor::Int>::from_data(
        burn::tensor::TensorData::new(idx, [picks.len()]),
        &device,
    );
    x.select(0, idx)
}
