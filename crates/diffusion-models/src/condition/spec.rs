//! The condition as the user states it: factors of r(x_0) on single coordinates, the mode r_t
//! follows, and the conditions resolved for a set of chains ([`Conditioning`]).

use diffusion_core::condition::{combine_bits, combine_gaussian};

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
    /// Resampled chains (needs [`Conditioning::resampled`]; Gaussian runs) that target the
    /// model's own p(x_0) r(x_0): the kernels multiplied by the likelihood mode's factors (the
    /// proposal), the particles weighed so that at step t they target p(x_{t:T}) ψ_t(x_t),
    /// where the twisting function ψ_t is the model's own estimate of r's likelihood given
    /// x_t, N(y; x̂_0(x_t), s² + 1 - abar_t) on each coordinate with a factor (x̂_0 the mean
    /// the network's kernel implies, s = 0 for a known value; Wu et al. 2023). ψ is exact at
    /// t = 0, where it is r, and the draws tend to the model's conditional as the particles
    /// grow, whatever the twist.
    Twisted,
}

impl ConditionMode {
    /// The mode's name on the command line: `constant`, `forward`, `likelihood` or `twisted`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Constant => "constant",
            Self::Forward => "forward",
            Self::Likelihood => "likelihood",
            Self::Twisted => "twisted",
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
    /// A condition the chosen reverse chain cannot multiply (DDIM's).
    #[error("{0}")]
    Chain(&'static str),
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
    pub(super) dim: usize,
    rows: usize,
    variable: Variable,
    pub(super) mode: ConditionMode,
    resample: bool,
    /// With resampling: chains per particle system (0: all the chains of a chunk are one).
    pub(super) group: usize,
    /// Draws of each step: 1, or more with the redrawn steps of [`Conditioning::renoised`].
    passes: usize,
    /// Steps drawn between two returns through the forward process ([`Conditioning::renoised`]).
    jump: usize,
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
            passes: 1,
            jump: 1,
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
    /// of the kernel against r_{t-1}; [`ConditionMode::Twisted`] adds its twisting functions.
    /// Needs the constant, likelihood or twisted mode and one condition shared by every chain.
    pub fn resampled(mut self) -> Result<Self, ConditionError> {
        if self.mode == ConditionMode::Forward {
            return Err(ConditionError::Resampling(
                "resampling needs the constant, likelihood or twisted mode (the forward mode's r_t is random)",
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
                "resampling needs the constant, likelihood or twisted mode (the forward mode's r_t is random)",
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

    /// Draws each block of `jump` steps `passes` times (RePaint's resampling, Lugmayr et al.
    /// 2022): after the block's draws, x_t to x_{t-jump}, the chains go back to x_t through the
    /// forward process, q(x_t | x_{t-jump}), and the block is drawn again, `passes` draws in
    /// all, so that the free coordinates and the condition's have more steps at each noise
    /// level to agree (the network sees the condition's coordinates noised as the forward
    /// process would). A heuristic, not a sampler of p(x_0) r(x_0): refused with resampling.
    /// One pass is the plain chain; the last block is shorter when `jump` does not divide T.
    pub fn renoised(mut self, passes: usize, jump: usize) -> Result<Self, ConditionError> {
        if passes == 0 || jump == 0 {
            return Err(ConditionError::Resampling(
                "renoising draws each step at least once (1 is the plain chain), in jumps of at least one step",
            ));
        }
        self.passes = passes;
        self.jump = jump;
        Ok(self)
    }

    /// Draws of each block of steps and the block's length, `[passes, jump]`
    /// ([`Conditioning::renoised`]); `None` for the plain chain (one pass).
    pub fn renoising(&self) -> Option<[usize; 2]> {
        (self.passes > 1).then_some([self.passes, self.jump])
    }

    /// Whether any coordinate is observed through noise (not only known values).
    pub fn observes(&self) -> bool {
        self.cells.iter().any(|c| matches!(c, Cell::Observed(..)))
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
        if self.mode == ConditionMode::Twisted && !self.resample {
            return Err(ConditionError::Resampling(
                "the twisted mode weighs and resamples its chains: it needs resampling (--resample)",
            ));
        }
        if self.passes > 1 && self.resample {
            return Err(ConditionError::Resampling(
                "renoised steps and resampling do not go together (the particles' weights assume one draw a step)",
            ));
        }
        if self.mode == ConditionMode::Twisted && self.variable == Variable::Binary {
            return Err(ConditionError::Resampling(
                "the twisted mode is for Gaussian runs; binary runs resample the constant or likelihood mode",
            ));
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
