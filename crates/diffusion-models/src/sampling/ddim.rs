//! DDIM (Song, Meng and Ermon 2021) for Gaussian runs: the sampler, its deterministic fast path
//! and its inversion.

use burn::tensor::{Device, Tensor};
use diffusion_core::{Ddim, PredictionType};
use diffusion_data::Rng;

use super::normal;
use crate::condition::{
    ConditionError, ConditionMode, Conditioning, DeviceFactor, StepFactor, Variable,
};
use crate::network::ReverseNetwork;
use crate::process::chain::{self, ChainShape, ReverseChain};
use crate::process::{GaussianBound, GaussianKernel, GaussianTables, Process, host, in_chunks};

impl GaussianBound {
    /// The model's prediction of x_0 at the original step `t` for rows `x` (the edge kernel's
    /// mean at t = 1).
    pub fn predict_x0<N: ReverseNetwork>(
        &self,
        network: &N,
        tables: &<Self as Process>::Tables,
        x: Tensor<2>,
        t: usize,
    ) -> Tensor<2> {
        if t == 1 && self.decoder.is_none() {
            return x * (1.0 - self.diffusion.beta(1)).sqrt();
        }
        let (mean, _) = self.mean_log_variance(network, tables, x.clone(), t);
        let (c0, ct, _) = self.diffusion.posterior_coefficients(t);
        (mean - x * ct) / c0
    }

    /// The DDIM sampler of this chain with the given options (its `alphas_cumprod` filled in).
    pub fn ddim(&self, mut options: Ddim) -> Ddim {
        options.alphas_cumprod = (1..=self.diffusion.steps())
            .map(|t| self.diffusion.alpha_bar(t))
            .collect();
        options
    }

    /// The network as a DDIM model: its output at 0-based `timestep` (step t = timestep + 1),
    /// as ε̂ or x̂_0 by `prediction`.
    pub fn ddim_output<N: ReverseNetwork>(
        &self,
        network: &N,
        tables: &<Self as Process>::Tables,
        x: &Tensor<2>,
        timestep: usize,
        prediction: PredictionType,
    ) -> Tensor<2> {
        let t = timestep + 1;
        let x0 = self.predict_x0(network, tables, x.clone(), t);
        match prediction {
            PredictionType::Sample => x0,
            PredictionType::Epsilon => {
                let abar = self.diffusion.alpha_bar(t);
                (x.clone() - x0 * abar.sqrt()) / (1.0 - abar).sqrt()
            }
        }
    }

    /// Draws `n` samples by DDIM (`ddim` from [`GaussianBound::ddim`]).
    pub fn sample_ddim<N: ReverseNetwork>(
        &self,
        network: &N,
        ddim: &Ddim,
        n: usize,
        rng: &mut Rng,
        device: &Device,
    ) -> Vec<f32> {
        let d = self.diffusion.dim();
        let tables = self.tables(device);
        let x = normal(rng, n, d, device);
        if ddim.eta == 0.0 && !ddim.clip_sample {
            return host(self.ddim_deterministic(network, &tables, ddim, x));
        }
        let x = ddim_loop(
            ddim,
            x,
            |x, i| self.ddim_output(network, &tables, x, i, ddim.prediction_type),
            |rng: &mut Rng| normal(rng, n, d, device),
            rng,
        );
        host(x)
    }

    /// DDIM with eta = 0 and no clipping, where each step is affine in the kernel's mean μ and
    /// x: with x̂_0 = (μ − c_t x) / c_0, x_prev = a x̂_0 + b ε̂ = G x̂_0 + H x for
    /// G = a − b sqrt(abar / (1 − abar)), H = b / sqrt(1 − abar): two scalings per step (the same
    /// values as [`ddim_loop`] up to rounding, whatever the prediction type).
    pub fn ddim_deterministic<N: ReverseNetwork>(
        &self,
        network: &N,
        tables: &<Self as Process>::Tables,
        ddim: &Ddim,
        mut x: Tensor<2>,
    ) -> Tensor<2> {
        for i in ddim.timesteps() {
            let t = i + 1;
            let (a, b, _, abar) = ddim.coefficients(i);
            let g = a - b * (abar / (1.0 - abar)).sqrt();
            let h = b / (1.0 - abar).sqrt();
            x = if t == 1 && self.decoder.is_none() {
                x * (g * (1.0 - self.diffusion.beta(1)).sqrt() + h)
            } else {
                let (mean, _) = self.mean_log_variance(network, tables, x.clone(), t);
                let (c0, ct, _) = self.diffusion.posterior_coefficients(t);
                mean * (g / c0) + x * (h - g * ct / c0)
            };
        }
        x
    }

    /// DDIM with eta = 0 run backwards: from x_0 (rows `x`) up to x at the noisiest timestep,
    /// each step solved for the x whose deterministic step lands on the current one (fixed-point
    /// iteration, to `tolerance` or 50 iterations).
    pub fn ddim_encode<N: ReverseNetwork>(
        &self,
        network: &N,
        ddim: &Ddim,
        mut x: Tensor<2>,
        device: &Device,
        tolerance: f32,
    ) -> Tensor<2> {
        let tables = self.tables(device);
        for &i in ddim.timesteps().iter().rev() {
            let target = x.clone();
            let mut guess = x.clone();
            for _ in 0..50 {
                let out = self.ddim_output(network, &tables, &guess, i, ddim.prediction_type);
                let next = ddim_step(ddim, &guess, i, out, None);
                // x_prev = a x̂_0(x) + b ε̂(x) is solved for x through the x̂_0 term, whose
                // coefficient in x is a / sqrt(abar_t)
                let (a, _, _, abar) = ddim.coefficients(i);
                let scale = a / abar.sqrt();
                let moved = (target.clone() - next) / scale;
                let change = moved.clone().abs().max().into_scalar::<f32>();
                guess = guess + moved;
                if change < tolerance {
                    break;
                }
            }
            x = guess;
        }
        x
    }
}

/// One DDIM step on a device: x at 0-based `timestep`, the model's `output` there, standard
/// normals `noise` (used when eta > 0). The arithmetic of [`Ddim::step`].
pub fn ddim_step(
    ddim: &Ddim,
    x: &Tensor<2>,
    timestep: usize,
    output: Tensor<2>,
    noise: Option<Tensor<2>>,
) -> Tensor<2> {
    let next = ddim_mean(ddim, x, timestep, output);
    match noise {
        Some(z) if ddim.eta > 0.0 => next + z * ddim.coefficients(timestep).2,
        _ => next,
    }
}

/// The mean a x̂_0 + b ε̂ of a DDIM step (see [`ddim_step`]).
fn ddim_mean(ddim: &Ddim, x: &Tensor<2>, timestep: usize, output: Tensor<2>) -> Tensor<2> {
    let (a, b, _, abar) = ddim.coefficients(timestep);
    let (x0, eps) = match ddim.prediction_type {
        PredictionType::Epsilon => (
            (x.clone() - output.clone() * (1.0 - abar).sqrt()) / abar.sqrt(),
            output,
        ),
        PredictionType::Sample => (
            output.clone(),
            (x.clone() - output * abar.sqrt()) / (1.0 - abar).sqrt(),
        ),
    };
    let x0 = if ddim.clip_sample {
        x0.clamp(-ddim.clip_sample_range, ddim.clip_sample_range)
    } else {
        x0
    };
    x0 * a + eps * b
}

/// The DDIM chain on a device from x_T: `model(x, timestep)` gives the model's output,
/// `noise(rng)` standard normals for eta > 0.
pub fn ddim_loop(
    ddim: &Ddim,
    mut x: Tensor<2>,
    mut model: impl FnMut(&Tensor<2>, usize) -> Tensor<2>,
    mut noise: impl FnMut(&mut Rng) -> Tensor<2>,
    rng: &mut Rng,
) -> Tensor<2> {
    for i in ddim.timesteps() {
        let out = model(&x, i);
        let z = (ddim.eta > 0.0).then(|| noise(rng));
        x = ddim_step(ddim, &x, i, out, z);
    }
    x
}

/// DDIM's chain as a reverse chain of the chain driver, so that a condition multiplies its
/// steps as it does a process's (paper section 2.5; [`crate::condition`]): chain step k of K
/// runs from the k-th of DDIM's timesteps (counted from the least noisy) to the level DDIM's
/// step lands on, its kernel N(a x̂_0 + b ε̂, σ²), a point mass at eta = 0 (where a known value
/// is simply held). The factors of the forward and likelihood modes take abar of the level
/// they multiply; renoised blocks go back up through q between those levels.
pub(crate) struct DdimChain<'a> {
    bound: &'a GaussianBound,
    ddim: Ddim,
    /// The 0-based timestep of chain step k = 1..=K at index k − 1 (ascending).
    timesteps: Vec<usize>,
}

impl<'a> DdimChain<'a> {
    /// The chain of `ddim` (from [`GaussianBound::ddim`]) on `bound`'s network.
    pub(crate) fn new(bound: &'a GaussianBound, ddim: Ddim) -> Self {
        let mut timesteps = ddim.timesteps();
        timesteps.reverse();
        Self {
            bound,
            ddim,
            timesteps,
        }
    }

    /// abar of the chains' x_k: x_K at the noisiest timestep, x_k below it where step k + 1
    /// lands, and 1 for x_0, the sample (also where `set_alpha_to_one` is off and the last step
    /// lands on abar_1: the factor there is r itself, so known values come out as given).
    fn level(&self, k: usize) -> f64 {
        match self.timesteps.get(k) {
            _ if k == 0 => 1.0,
            Some(&i) => self.ddim.alpha_prev(i),
            None => self.ddim.alphas_cumprod[self.timesteps[self.timesteps.len() - 1]],
        }
    }
}

impl ChainShape for DdimChain<'_> {
    type ChainTables = GaussianTables;

    fn chain_dim(&self) -> usize {
        self.bound.diffusion.dim()
    }

    fn chain_steps(&self) -> usize {
        self.timesteps.len()
    }

    fn chain_tables(&self, device: &Device) -> GaussianTables {
        self.bound.tables(device)
    }
}

impl ReverseChain for DdimChain<'_> {
    type Kernel = GaussianKernel;

    fn prior(&self, n: usize, conditioned: bool, rng: &mut Rng, device: &Device) -> GaussianKernel {
        ReverseChain::prior(self.bound, n, conditioned, rng, device)
    }

    /// N(a x̂_0 + b ε̂, σ²) at DDIM's timestep of step `t`; its noise drawn when eta > 0.
    fn kernel<N: ReverseNetwork>(
        &self,
        network: &N,
        tables: &GaussianTables,
        x: &Tensor<2>,
        t: usize,
        conditioned: bool,
        rng: &mut Rng,
        device: &Device,
    ) -> GaussianKernel {
        let i = self.timesteps[t - 1];
        let output = self
            .bound
            .ddim_output(network, tables, x, i, self.ddim.prediction_type);
        let mean = ddim_mean(&self.ddim, x, i, output);
        let sigma = self.ddim.coefficients(i).2;
        let [n, d] = x.dims();
        let noise = (self.ddim.eta > 0.0).then(|| normal(rng, n, d, device));
        match (conditioned, noise) {
            (false, Some(z)) => GaussianKernel::Drawn(mean + z * sigma),
            (false, None) => GaussianKernel::Drawn(mean),
            (true, noise) => GaussianKernel::Moments {
                var: mean.ones_like() * (sigma * sigma),
                eps: noise.unwrap_or_else(|| mean.zeros_like()),
                mean,
            },
        }
    }

    fn step_factor(&self, given: &Conditioning, n: usize, k: usize, rng: &mut Rng) -> StepFactor {
        given.gaussian_step(n, self.level(k), rng)
    }

    /// q from the level of x_{t−1} up to x_t's: N(sqrt(r) x, 1 − r), r the ratio of the two
    /// abar.
    fn renoise(&self, x: Tensor<2>, t: usize, rng: &mut Rng, device: &Device) -> Tensor<2> {
        let [n, d] = x.dims();
        let r = (self.level(t) / self.level(t - 1)).min(1.0);
        x * r.sqrt() + normal(rng, n, d, device) * (1.0 - r).sqrt()
    }

    fn twist_log(
        &self,
        _: &GaussianKernel,
        _: &Tensor<2>,
        _: usize,
        _: &DeviceFactor,
    ) -> Tensor<1> {
        unreachable!("DDIM chains are not resampled (GaussianBound::sample_ddim_given refuses)")
    }
}

impl GaussianBound {
    /// Draws `n` samples by DDIM (`ddim` from [`GaussianBound::ddim`]) multiplied by a
    /// condition at every step, `chunk_rows` chains at a time: known values held (constant
    /// mode) or replaced by draws of the forward process (forward mode) at any eta; noisy
    /// observations and the likelihood mode need a step that draws noise (eta > 0); renoised
    /// blocks as on the other chains; no resampling.
    #[allow(clippy::too_many_arguments)]
    pub fn sample_ddim_given<N: ReverseNetwork>(
        &self,
        network: &N,
        ddim: &Ddim,
        n: usize,
        given: &Conditioning,
        rng: &mut Rng,
        device: &Device,
        chunk_rows: usize,
    ) -> Result<Vec<f32>, ConditionError> {
        given.check(self.dim(), Variable::Continuous, n)?;
        if given.resamples() {
            return Err(ConditionError::Chain(
                "resampling runs the full chain or a respaced one (--sampler respaced), not DDIM",
            ));
        }
        if ddim.eta == 0.0 && (given.observes() || given.mode() == ConditionMode::Likelihood) {
            return Err(ConditionError::Chain(
                "a DDIM step at eta = 0 draws no noise, so only known values (constant or forward mode) can multiply it: give --eta > 0 for observations or the likelihood mode",
            ));
        }
        let chain = DdimChain::new(self, ddim.clone());
        Ok(in_chunks(
            self.dim(),
            n,
            Some(given),
            chunk_rows,
            rng,
            |m, chunk, rng| {
                let drawn = chain::run(&chain, network, m, &[0], chunk, rng, device);
                drawn.into_iter().flat_map(|(_, x)| x).collect()
            },
        ))
    }
}
