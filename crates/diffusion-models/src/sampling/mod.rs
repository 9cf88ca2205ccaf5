//! Shorter reverse chains for a trained model: respaced chains (Nichol and Dhariwal 2021,
//! section 4) for both processes and DDIM (Song, Meng and Ermon 2021) for Gaussian ones
//! (`diffusion_core::respace` has the schedules and the DDIM step's arithmetic).
//!
//! **How the model's output maps onto a shorter chain.** The network is called at the original
//! step t = s_k. Its kernel for t → t − 1 implies an x_0: for Gaussian runs, inverting the
//! posterior mean μ = c_0 x̂_0 + c_t x_t of the original chain, x̂_0 = (μ − c_t x_t) / c_0 (for
//! the noise-predicting parametrizations this is the usual x̂_0 of ε̂); its log-variance sits at
//! a fraction v of the way from ln b~_t to ln b_t. The respaced kernel for s_k → s_{k−1} is the
//! respaced chain's posterior mean at x̂_0 with the log-variance at the same fraction v of its own
//! [ln b~'_k, ln b'_k]. For binomial runs the kernel's probability f of a 1 is a mixture
//! f = p̂ q(1 | x_t, x_0 = 1) + (1 − p̂) q(1 | x_t, x_0 = 0); the implied p̂ = P(x_0 = 1 | x_t)
//! (clamped to [0, 1]) mixes the respaced chain's posteriors instead. A kept step whose
//! predecessor is kept too is the original step, unchanged, so keeping every step is the
//! ancestral sampler draw for draw.
//!
//! The files: this one has [`Sampler`], [`SamplerError`] and the dispatch on a run's process
//! ([`Diffusion::sample_with`](crate::bound::Diffusion::sample_with),
//! [`Diffusion::bound_bits_with`](crate::bound::Diffusion::bound_bits_with)); `respaced.rs` the
//! respaced Gaussian and binomial chains and their bounds ([`respaced_gaussian`],
//! [`respaced_binomial`], [`respaced_bound_bits_gaussian`], [`respaced_bound_bits_binomial`]);
//! `ddim.rs` DDIM ([`GaussianBound::ddim`](crate::GaussianBound::ddim), [`ddim_step`],
//! [`ddim_loop`]); `tests.rs` the tests of all three.

use burn::tensor::{Device, Tensor};
use diffusion_core::{Ddim, Respacing, ScheduleError};
use diffusion_data::Rng;
use rand::Rng as _;
use rand_distr::StandardNormal;

use crate::network::ReverseNetwork;
use crate::tensors::tensor2;

mod ddim;
mod respaced;
#[cfg(test)]
mod tests;

pub use ddim::{ddim_loop, ddim_step};
pub use respaced::{
    respaced_binomial, respaced_bound_bits_binomial, respaced_bound_bits_gaussian,
    respaced_gaussian,
};

fn normal(rng: &mut Rng, n: usize, d: usize, device: &Device) -> Tensor<2> {
    let v: Vec<f32> = (0..n * d)
        .map(|_| rng.sample::<f64, _>(StandardNormal) as f32)
        .collect();
    tensor2(v, n, d, device)
}

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
        if let (Self::Respaced(k), crate::bound::Diffusion::Gaussian(g)) = (self, diffusion)
            && g.decoder.is_some()
        {
            g.decoded_respaced(&Respacing::even(diffusion.steps(), *k)?)?;
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

impl crate::bound::Diffusion {
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
        use crate::bound::Diffusion;
        sampler.check_for(self)?;
        if *sampler == Sampler::Ancestral {
            return Ok(self.sample(network, n, rng, device, chunk_rows));
        }
        let respacing = sampler.respacing(self.steps())?;
        let mut out = Vec::with_capacity(n * self.dim());
        let mut done = 0;
        while done < n {
            let m = chunk_rows.max(1).min(n - done);
            let chunk = match (self, sampler, &respacing) {
                (Diffusion::Gaussian(g), _, Some(r)) if g.decoder.is_some() => {
                    crate::process::sample(&g.decoded_respaced(r)?, network, m, rng, device, m)
                }
                (Diffusion::Gaussian(g), _, Some(r)) => {
                    g.sample_respaced(network, r, m, rng, device)?
                }
                (Diffusion::Binomial(b), _, Some(r)) => {
                    b.sample_respaced(network, r, m, rng, device)?
                }
                (Diffusion::Gaussian(g), Sampler::Ddim(o), None) => {
                    g.sample_ddim(network, &g.ddim(o.clone()), m, rng, device)
                }
                (Diffusion::Binomial(_), Sampler::Ddim(_), None) => {
                    return Err(SamplerError::DdimNeedsGaussian);
                }
                (_, _, None) => unreachable!("ancestral returned above; respaced has a respacing"),
            };
            out.extend(chunk);
            done += m;
        }
        Ok(out)
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
        use crate::bound::Diffusion;
        let Some(r) = sampler.respacing(self.steps())? else {
            return Ok(self.bound_bits_per_point(network, points, rng, device, chunk_rows));
        };
        // chunks of points, each over every kept step
        let d = self.dim();
        let per = (chunk_rows / r.kept().len().max(1)).max(1);
        let mut out = Vec::with_capacity(points.len() / d);
        for chunk in points.chunks(per * d) {
            out.extend(match self {
                Diffusion::Gaussian(g) if g.decoder.is_some() => {
                    let short = g.decoded_respaced(&r)?;
                    crate::process::bound_bits_per_point(
                        &short, network, chunk, rng, device, chunk_rows,
                    )
                }
                Diffusion::Gaussian(g) => {
                    respaced_bound_bits_gaussian(g, network, &r, chunk, rng, device)?
                }
                Diffusion::Binomial(b) => {
                    respaced_bound_bits_binomial(b, network, &r, chunk, rng, device)?
                }
            });
        }
        Ok(out)
    }
}
