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
//!   (y, e) becomes a draw y_t of q(y_t | y_0 = y) with flip probability abar_t e. At t = 0 both
//!   modes are r itself.
//!
//! Several factors on one coordinate are multiplied into one (`diffusion_core::condition`); a
//! known value absorbs any observation of its coordinate.

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
            cells,
        })
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
        let forward = self.mode == ConditionMode::Forward;
        let (a, b) = (abar.sqrt(), (1.0 - abar).max(0.0).sqrt());
        for j in 0..m * self.dim {
            let cell = self.cell(j / self.dim, j % self.dim);
            let mut transported = |v: f32| {
                if forward {
                    let e: f64 = rng.sample(StandardNormal);
                    (a * v as f64 + b * e) as f32
                } else {
                    v
                }
            };
            match cell {
                Cell::Free => {}
                Cell::Known(v) => f.set_known(j, transported(v)),
                Cell::Observed(y, s) => {
                    let y = transported(y);
                    let s2 = if forward { abar * s * s } else { s * s };
                    if s2 > 0.0 {
                        f.set_soft(j, y, s2 as f32);
                    } else {
                        f.set_known(j, y);
                    }
                }
            }
        }
        f
    }

    /// The factor r_k for `m` chains at step `k` of a binomial chain with abar_k = `abar` and
    /// stationary rate `pi`: the soft part as log-likelihood ratios.
    pub(crate) fn binary_step(&self, m: usize, abar: f64, pi: f64, rng: &mut Rng) -> StepFactor {
        let mut f = StepFactor::empty(m * self.dim, 0.0);
        let forward = self.mode == ConditionMode::Forward;
        for j in 0..m * self.dim {
            let cell = self.cell(j / self.dim, j % self.dim);
            let mut transported = |v: f32| {
                if forward && rng.random::<f64>() >= abar {
                    // redrawn from Bernoulli(pi) by the forward process
                    if rng.random::<f64>() < pi { 1.0 } else { 0.0 }
                } else {
                    v
                }
            };
            match cell {
                Cell::Free => {}
                Cell::Known(v) => f.set_known(j, transported(v)),
                Cell::Observed(y, e) => {
                    let y = transported(y);
                    let e = if forward { abar * e } else { e };
                    if e > 0.0 {
                        f.set_soft(j, 0.0, bit_log_ratio(y >= 0.5, e) as f32);
                    } else {
                        f.set_known(j, y);
                    }
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

    /// The logits of the kernel times the binary factor.
    pub(crate) fn binary_logits(&self, logits: Tensor<2>) -> Tensor<2> {
        logits + self.soft_param.clone()
    }

    /// `x` with the known values put in.
    pub(crate) fn put_known(&self, x: Tensor<2>) -> Tensor<2> {
        x * self.keep.clone() + self.known_value.clone()
    }
}
