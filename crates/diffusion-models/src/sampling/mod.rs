//! Shorter reverse chains for a trained model: respaced chains (Nichol and Dhariwal 2021,
//! section 4) for both processes and DDIM (Song, Meng and Ermon 2021) for Gaussian ones
//! (`diffusion_core::respace` has the schedules and the DDIM step's arithmetic).
//!
//! A respaced chain is a process of its own ([`crate::process::GaussianBound::respaced`],
//! [`crate::process::BinomialBound::respaced`]; how the network's kernel maps onto it is
//! documented there), so its samples, bound and conditioning are the generic ones. This module
//! has [`Sampler`], [`SamplerError`] and the dispatch on a run's process
//! ([`Diffusion::sample_with`](crate::bound::Diffusion::sample_with),
//! [`Diffusion::bound_bits_with`](crate::bound::Diffusion::bound_bits_with)); `ddim.rs` DDIM
//! ([`GaussianBound::ddim`](crate::GaussianBound::ddim), [`ddim_step`], [`ddim_loop`]);
//! `tests.rs` its tests.

use burn::tensor::Device;
use diffusion_core::{Ddim, Respacing, ScheduleError};
use diffusion_data::Rng;

use crate::condition::{ConditionError, Conditioning};
use crate::network::ReverseNetwork;
use crate::process::in_chunks;
use crate::tensors::normal;

mod ddim;
#[cfg(test)]
pub(crate) mod tests;

pub use ddim::{ddim_loop, ddim_step};

/// How to run the reverse chain.
#[derive(Debug, Clone, PartialEq)]
pub enum Sampler {
    /// Every step, as trained.
    Ancestral,
    /// The respaced chain on this many steps spread evenly ([`Respacing::even`]).
    Respaced(usize),
    /// DDIM (Gaussian runs) with these options; `alphas_cumprod` is filled in from the run.
    Ddim(Ddim),
}

/// Why a sampler cannot run on a run.
#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    /// DDIM needs a Gaussian process.
    #[error("DDIM is for Gaussian runs; use --sampler respaced for binary data")]
    DdimNeedsGaussian,
    /// A step count or schedule the shorter chain cannot have.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// DDIM options out of range.
    #[error("{0}")]
    Invalid(String),
    /// A condition the chain cannot take.
    #[error(transparent)]
    Condition(#[from] ConditionError),
}

impl Sampler {
    /// The respacing of a [`Sampler::Respaced`] chain of T = `steps`, `None` otherwise.
    pub fn respacing(&self, steps: usize) -> Result<Option<Respacing>, SamplerError> {
        match self {
            Self::Respaced(k) => Ok(Some(Respacing::even(steps, *k)?)),
            _ => Ok(None),
        }
    }

    /// Checks that this sampler can run on `diffusion`: the step count and DDIM's options
    /// in range, DDIM only for Gaussian runs.
    pub fn check_for(&self, diffusion: &crate::bound::Diffusion) -> Result<(), SamplerError> {
        if matches!(self, Self::Ddim(_))
            && matches!(diffusion, crate::bound::Diffusion::Binomial(_))
        {
            return Err(SamplerError::DdimNeedsGaussian);
        }
        self.check(diffusion.steps())
    }

    fn check(&self, steps: usize) -> Result<(), SamplerError> {
        match self {
            Self::Ancestral => Ok(()),
            Self::Respaced(k) => Respacing::even(steps, *k).map(|_| ()).map_err(Into::into),
            Self::Ddim(o) => {
                if o.steps < 1 || o.steps > steps {
                    return Err(SamplerError::Invalid(format!(
                        "DDIM needs 1 <= --sample-steps <= T = {steps}, got {}",
                        o.steps
                    )));
                }
                if !(0.0..=1.0).contains(&o.eta) {
                    return Err(SamplerError::Invalid(format!(
                        "--eta {} must lie in [0, 1]",
                        o.eta
                    )));
                }
                if !(o.clip_sample_range.is_finite() && o.clip_sample_range > 0.0) {
                    return Err(SamplerError::Invalid(format!(
                        "--clip-sample-range {} must be > 0",
                        o.clip_sample_range
                    )));
                }
                Ok(())
            }
        }
    }
}

/// The chain a [`Sampler`] runs on a run: DDIM's on a Gaussian process, or a process (the full
/// chain, or the respaced one as a process of its own).
enum Chain<'a> {
    Ddim(&'a crate::GaussianBound, Ddim),
    Process(crate::bound::Diffusion),
}

impl crate::bound::Diffusion {
    /// The chain `sampler` runs on this process, its options checked.
    fn chain_of(&self, sampler: &Sampler) -> Result<Chain<'_>, SamplerError> {
        use crate::bound::Diffusion;
        sampler.check_for(self)?;
        Ok(match (sampler, self) {
            (Sampler::Ddim(o), Diffusion::Gaussian(g)) => Chain::Ddim(g, g.ddim(o.clone())),
            (Sampler::Ddim(_), Diffusion::Binomial(_)) => {
                return Err(SamplerError::DdimNeedsGaussian);
            }
            (Sampler::Respaced(_), _) => Chain::Process(self.respaced_for(sampler)?),
            (Sampler::Ancestral, _) => Chain::Process(self.clone()),
        })
    }

    /// Draws `n` samples with `sampler`, `chunk_rows` chains at a time.
    pub fn sample_with<N: ReverseNetwork>(
        &self,
        network: &N,
        sampler: &Sampler,
        n: usize,
        rng: &mut Rng,
        device: &Device,
        chunk_rows: usize,
    ) -> Result<Vec<f32>, SamplerError> {
        Ok(match self.chain_of(sampler)? {
            Chain::Ddim(g, ddim) => in_chunks(self.dim(), n, None, chunk_rows, rng, |m, _, rng| {
                g.sample_ddim(network, &ddim, m, rng, device)
            }),
            Chain::Process(chain) => chain.sample(network, n, rng, device, chunk_rows),
        })
    }

    /// Draws `n` samples with `sampler`, multiplied by a condition at every step
    /// ([`Diffusion::sample_given`](crate::bound::Diffusion::sample_given) on the full or the
    /// respaced chain, [`GaussianBound::sample_ddim_given`](crate::GaussianBound::sample_ddim_given)
    /// for DDIM), `chunk_rows` chains at a time.
    #[allow(clippy::too_many_arguments)]
    pub fn sample_given_with<N: ReverseNetwork>(
        &self,
        network: &N,
        sampler: &Sampler,
        n: usize,
        given: &Conditioning,
        rng: &mut Rng,
        device: &Device,
        chunk_rows: usize,
    ) -> Result<Vec<f32>, SamplerError> {
        Ok(match self.chain_of(sampler)? {
            Chain::Ddim(g, ddim) => {
                g.sample_ddim_given(network, &ddim, n, given, rng, device, chunk_rows)?
            }
            Chain::Process(chain) => {
                chain.sample_given(network, n, given, rng, device, chunk_rows)?
            }
        })
    }

    /// The bound K in bits per point of the chain `sampler` runs: the respaced chain's for
    /// [`Sampler::Respaced`], the full chain's otherwise (DDIM at eta = 0 has no bound of its
    /// own).
    pub fn bound_bits_with<N: ReverseNetwork>(
        &self,
        network: &N,
        sampler: &Sampler,
        points: &[f32],
        rng: &mut Rng,
        device: &Device,
        chunk_rows: usize,
    ) -> Result<Vec<f64>, SamplerError> {
        let chain = match sampler {
            Sampler::Respaced(_) => self.respaced_for(sampler)?,
            _ => self.clone(),
        };
        Ok(chain.bound_bits_per_point(network, points, rng, device, chunk_rows))
    }

    /// The respaced chain of a [`Sampler::Respaced`] as a process of its own.
    pub fn respaced_for(&self, sampler: &Sampler) -> Result<Self, SamplerError> {
        match sampler.respacing(self.steps())? {
            Some(r) => Ok(self.respaced(&r)?),
            None => Err(SamplerError::Invalid(
                "only --sampler respaced makes a respaced chain".into(),
            )),
        }
    }
}
