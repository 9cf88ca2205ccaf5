//! A run's process as one value: [`Diffusion`] is the Gaussian or binomial [`Process`] a config
//! describes, with each operation dispatched once to the generic functions of
//! [`crate::process`].

use burn::tensor::Device;
use diffusion_data::Rng;

use crate::condition::{ConditionError, Conditioning, Variable};
use crate::network::ReverseNetwork;
use crate::process::{self, BinomialBound, GaussianBound, Process};

/// A diffusion process with its reverse parametrization, whichever the process.
#[derive(Debug, Clone)]
pub enum Diffusion {
    /// Continuous data.
    Gaussian(GaussianBound),
    /// Binary data.
    Binomial(BinomialBound),
}

/// Calls `$body` with `$p` bound to the process, whichever it is.
macro_rules! each {
    ($self:expr, $p:ident => $body:expr) => {
        match $self {
            Diffusion::Gaussian($p) => $body,
            Diffusion::Binomial($p) => $body,
        }
    };
}

impl Diffusion {
    /// The chain on the kept steps of `r` as a process of its own
    /// ([`GaussianBound::respaced`], [`BinomialBound::respaced`]).
    pub fn respaced(
        &self,
        r: &diffusion_core::Respacing,
    ) -> Result<Self, diffusion_core::ScheduleError> {
        Ok(match self {
            Diffusion::Gaussian(g) => Diffusion::Gaussian(g.respaced(r)?),
            Diffusion::Binomial(b) => Diffusion::Binomial(b.respaced(r)?),
        })
    }

    /// Trajectory length T.
    pub fn steps(&self) -> usize {
        each!(self, p => p.steps())
    }

    /// The first step of the bound's terms ([`Process::first_step`]): 1 where the chain ends in
    /// the discretised decoder, else 2.
    pub fn first_step(&self) -> usize {
        each!(self, p => p.first_step())
    }

    /// Whether the chain ends in the discretised decoder, so that K is a log-probability of the
    /// integer data itself (no change of units).
    pub fn decodes(&self) -> bool {
        matches!(self, Diffusion::Gaussian(g) if g.decoder.is_some())
    }

    /// How many terms the bound sums over t ([`Process::terms`]).
    pub fn terms(&self) -> usize {
        each!(self, p => p.terms())
    }

    /// Data dimension d.
    pub fn dim(&self) -> usize {
        each!(self, p => p.dim())
    }

    /// Network outputs per row: 2d (mean and log-variance) or d (one logit per bit).
    pub fn output_dim(&self) -> usize {
        each!(self, p => p.output_dim())
    }

    /// The constant part of K (entropy terms) for one point, in bits.
    pub fn bound_constant_bits(&self, x0: &[f32]) -> f64 {
        each!(self, p => p.bound_constant_bits(x0))
    }

    /// L_null for one point, in bits.
    pub fn l_null_bits(&self, x0: &[f32]) -> f64 {
        each!(self, p => p.l_null_bits(x0))
    }

    /// The full-sum bound K in bits for each point ([`process::bound_bits_per_point`]).
    pub fn bound_bits_per_point<N: ReverseNetwork>(
        &self,
        network: &N,
        points: &[f32],
        rng: &mut Rng,
        device: &Device,
        chunk_rows: usize,
    ) -> Vec<f64> {
        each!(self, p => process::bound_bits_per_point(p, network, points, rng, device, chunk_rows))
    }

    /// The stratified estimate of K in bits for each point ([`process::bound_bits_stratified`]).
    pub fn bound_bits_stratified<N: ReverseNetwork>(
        &self,
        network: &N,
        points: &[f32],
        draws: usize,
        rng: &mut Rng,
        device: &Device,
        chunk_rows: usize,
    ) -> Vec<f64> {
        each!(self, p => process::bound_bits_stratified(p, network, points, draws, rng, device, chunk_rows))
    }

    /// The KL terms in bits at each of `steps` for each point ([`process::kl_terms_bits`]).
    pub fn kl_terms_bits<N: ReverseNetwork>(
        &self,
        network: &N,
        points: &[f32],
        steps: &[usize],
        rng: &mut Rng,
        device: &Device,
        chunk_rows: usize,
    ) -> Vec<Vec<f64>> {
        each!(self, p => process::kl_terms_bits(p, network, points, steps, rng, device, chunk_rows))
    }

    /// x_t of the reverse chain for each t in `keep`, from T down to 0, for `n` rows.
    pub fn trajectory<N: ReverseNetwork>(
        &self,
        network: &N,
        n: usize,
        keep: &[usize],
        rng: &mut Rng,
        device: &Device,
    ) -> Vec<(usize, Vec<f32>)> {
        each!(self, p => p.trajectory(network, n, keep, rng, device))
    }

    /// Draws `n` samples, row-major `[n, d]`, `chunk_rows` chains at a time.
    pub fn sample<N: ReverseNetwork>(
        &self,
        network: &N,
        n: usize,
        rng: &mut Rng,
        device: &Device,
        chunk_rows: usize,
    ) -> Vec<f32> {
        each!(self, p => process::sample(p, network, n, rng, device, chunk_rows))
    }

    /// [`Diffusion::trajectory`] multiplied by a condition at every step
    /// ([`Process::trajectory_given`]).
    pub fn trajectory_given<N: ReverseNetwork>(
        &self,
        network: &N,
        n: usize,
        keep: &[usize],
        given: &Conditioning,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<Vec<(usize, Vec<f32>)>, ConditionError> {
        each!(self, p => {
            given.check(p.dim(), p.variable(), n)?;
            Ok(p.trajectory_given(network, n, keep, Some(given), rng, device))
        })
    }

    /// Draws `n` samples of the model multiplied by a condition ([`process::sample_given`]).
    pub fn sample_given<N: ReverseNetwork>(
        &self,
        network: &N,
        n: usize,
        given: &Conditioning,
        rng: &mut Rng,
        device: &Device,
        chunk_rows: usize,
    ) -> Result<Vec<f32>, ConditionError> {
        each!(self, p => process::sample_given(p, network, n, given, rng, device, chunk_rows))
    }

    /// The kind of values the process diffuses.
    pub fn variable(&self) -> Variable {
        each!(self, p => p.variable())
    }

    /// Draws x_t ~ q(x_t | x_0) for every row of `x0` at step `t` (t = 0 returns `x0`).
    pub fn forward_sample(&self, x0: &[f32], t: usize, rng: &mut Rng) -> Vec<f32> {
        each!(self, p => p.forward_sample(x0, t, rng))
    }
}
