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

use burn::tensor::{Device, Tensor};
use diffusion_core::{
    BinomialDiffusion, Ddim, GaussianDiffusion, PredictionType, Respacing, ScheduleError,
};
use diffusion_data::Rng;
use rand::Rng as _;
use rand_distr::StandardNormal;

use crate::network::ReverseNetwork;
use crate::process::{BinomialBound, GaussianBound, Process, host, tensor2};

fn normal(rng: &mut Rng, n: usize, d: usize, device: &Device) -> Tensor<2> {
    let v: Vec<f32> = (0..n * d)
        .map(|_| rng.sample::<f64, _>(StandardNormal) as f32)
        .collect();
    tensor2(v, n, d, device)
}

/// The respaced Gaussian chain of `g` on the kept steps of `r`.
pub fn respaced_gaussian(
    g: &GaussianDiffusion,
    r: &Respacing,
) -> Result<GaussianDiffusion, ScheduleError> {
    GaussianDiffusion::new(r.betas(|t| g.alpha_bar(t)), g.dim())
}

/// The respaced binomial chain of `b` on the kept steps of `r`.
pub fn respaced_binomial(
    b: &BinomialDiffusion,
    r: &Respacing,
) -> Result<BinomialDiffusion, ScheduleError> {
    BinomialDiffusion::new(r.betas(|t| b.alpha_bar(t)), b.pi(), b.dim())
}

impl GaussianBound {
    /// The respaced kernel's mean and log-variance for s_k → s_{k−1} (`k` ≥ 2, 1-based in the
    /// respaced chain `short`) from the network at the original step s_k, for rows `x`.
    pub fn respaced_kernel<N: ReverseNetwork>(
        &self,
        network: &N,
        tables: &<Self as Process>::Tables,
        short: &GaussianDiffusion,
        r: &Respacing,
        k: usize,
        x: Tensor<2>,
    ) -> (Tensor<2>, Tensor<2>) {
        let t = r.kept()[k - 1];
        let (mean, log_var) = self.mean_log_variance(network, tables, x.clone(), t);
        match self.respaced_affine(short, r, k) {
            None => (mean, log_var),
            Some([a, b, c, d]) => (mean * a + x * b, log_var * c + d),
        }
    }

    /// The map from the original kernel at s_k to the respaced one, when s_{k−1} < s_k − 1 (else
    /// `None`: the kernel is the original one): with x̂_0 = (μ − c_t x) / c_0 and the log-variance
    /// at the fraction v = (ln σ² − ln b~_t) / (ln b_t − ln b~_t), the respaced mean
    /// c'_0 x̂_0 + c'_t x and log-variance ln b~'_k + v (ln b'_k − ln b~'_k) are
    /// μ' = A μ + B x and ln σ'² = C ln σ² + D; returns [A, B, C, D].
    pub fn respaced_affine(
        &self,
        short: &GaussianDiffusion,
        r: &Respacing,
        k: usize,
    ) -> Option<[f64; 4]> {
        let (t, prev) = (r.kept()[k - 1], r.kept()[k - 2]);
        if prev + 1 == t {
            return None;
        }
        let g = &self.diffusion;
        let (c0, ct, post_var) = g.posterior_coefficients(t);
        let (lo, hi) = (post_var.ln(), g.beta(t).ln());
        let (c0s, cts, post_var_s) = short.posterior_coefficients(k);
        let (los, his) = (post_var_s.ln(), short.beta(k).ln());
        let c = (his - los) / (hi - lo);
        Some([c0s / c0, cts - c0s * ct / c0, c, los - lo * c])
    }

    /// Draws `n` samples through the respaced chain on the kept steps of `r`.
    pub fn sample_respaced<N: ReverseNetwork>(
        &self,
        network: &N,
        r: &Respacing,
        n: usize,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<Vec<f32>, ScheduleError> {
        let short = respaced_gaussian(&self.diffusion, r)?;
        let d = self.diffusion.dim();
        let tables = self.tables(device);
        let mut x = normal(rng, n, d, device);
        for k in (2..=r.kept().len()).rev() {
            let (mean, log_var) = self.respaced_kernel(network, &tables, &short, r, k, x.clone());
            x = mean + (log_var * 0.5).exp() * normal(rng, n, d, device);
        }
        // the fixed edge step from s_1 to 0 (the original one when s_1 = 1)
        let b1 = if r.kept()[0] == 1 {
            self.diffusion.beta(1)
        } else {
            short.beta(1)
        };
        let eps = normal(rng, n, d, device);
        Ok(host(x * (1.0 - b1).sqrt() + eps * b1.sqrt()))
    }

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

    /// With a decoder, the respaced chain as a process of its own ([`GaussianBound::respaced`]):
    /// its last step is the decoder at the first kept step.
    pub fn decoded_respaced(&self, r: &Respacing) -> Result<Self, SamplerError> {
        self.respaced(r)?.ok_or_else(|| {
            SamplerError::Invalid(
                "the respaced sampler with diffusion.decoder = \"discretized\" needs a \
                 noise-predicting parametrization (\"epsilon\", \"epsilon-fixed\")"
                    .into(),
            )
        })
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
    let (a, b, sigma, abar) = ddim.coefficients(timestep);
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
    let next = x0 * a + eps * b;
    match noise {
        Some(z) if ddim.eta > 0.0 => next + z * sigma,
        _ => next,
    }
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

impl BinomialBound {
    /// The logits of the respaced kernel for s_k → s_{k−1} (`k` ≥ 2, in the respaced chain
    /// `short`) from the network at the original step s_k, for bits `x`.
    pub fn respaced_logits<N: ReverseNetwork>(
        &self,
        network: &N,
        short: &BinomialDiffusion,
        r: &Respacing,
        k: usize,
        x: &Tensor<2>,
    ) -> Tensor<2> {
        let (t, prev) = (r.kept()[k - 1], r.kept()[k - 2]);
        // a per-bit value chosen by x in {0, 1}: v1 where x = 1, v0 where x = 0
        let by_bit = |v0: f64, v1: f64| x.clone() * v1 as f32 + (x.clone().neg() + 1.0) * v0 as f32;
        let logits = self.logits_at(network, x, t);
        if prev + 1 == t {
            return logits;
        }
        // P(x_0 = 1 | x_t) implied by the kernel, then the respaced posteriors
        let f = diffusion_kernels::activate(logits, diffusion_kernels::Activation::Sigmoid);
        let q = |x0: f64, chain: &BinomialDiffusion, step: usize| {
            by_bit(
                chain.posterior_one(step, x0, 0.0),
                chain.posterior_one(step, x0, 1.0),
            )
        };
        let (q1, q0) = (q(1.0, &self.diffusion, t), q(0.0, &self.diffusion, t));
        let p_hat = ((f - q0.clone()) / (q1 - q0)).clamp(0.0, 1.0);
        let p = p_hat.clone() * q(1.0, short, k) + (p_hat.neg() + 1.0) * q(0.0, short, k);
        let p = p.clamp(1e-7, 1.0 - 1e-7);
        (p.clone() / (p.neg() + 1.0)).log()
    }

    /// Draws `n` samples through the respaced chain on the kept steps of `r`.
    pub fn sample_respaced<N: ReverseNetwork>(
        &self,
        network: &N,
        r: &Respacing,
        n: usize,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<Vec<f32>, ScheduleError> {
        let short = respaced_binomial(&self.diffusion, r)?;
        let d = self.diffusion.dim();
        let pi = self.diffusion.pi();
        let uniform = |rng: &mut Rng| -> Tensor<2> {
            let v: Vec<f32> = (0..n * d).map(|_| rng.random::<f32>()).collect();
            tensor2(v, n, d, device)
        };
        let top: Vec<f32> = (0..n * d)
            .map(|_| {
                if (rng.random::<f32>() as f64) < pi {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        let mut x = tensor2(top, n, d, device);
        for k in (2..=r.kept().len()).rev() {
            let logits = self.respaced_logits(network, &short, r, k, &x);
            x = uniform(rng)
                .lower(diffusion_kernels::activate(
                    logits,
                    diffusion_kernels::Activation::Sigmoid,
                ))
                .float();
        }
        // the fixed edge step from s_1 to 0
        let chain = if r.kept()[0] == 1 {
            &self.diffusion
        } else {
            &short
        };
        let x1 = host(x);
        Ok(x1
            .iter()
            .map(|&v| {
                let p = chain.forward_kernel(1, v as f64);
                if (rng.random::<f32>() as f64) < p {
                    1.0
                } else {
                    0.0
                }
            })
            .collect())
    }
}

/// The full-sum bound K of the respaced chain on the kept steps of `r`, in bits, for each point
/// of `points` (row-major `[n, d]`): every kept step k = 2..K with one draw of x_{s_k} per
/// point, the network mapped onto the shorter chain as [`GaussianBound::respaced_kernel`]
/// does, and the shorter chain's own entropy terms (its edge step b'_1 = 1 − abar_{s_1}).
pub fn respaced_bound_bits_gaussian<N: ReverseNetwork>(
    g: &GaussianBound,
    network: &N,
    r: &Respacing,
    points: &[f32],
    rng: &mut Rng,
    device: &Device,
) -> Result<Vec<f64>, ScheduleError> {
    let short = respaced_gaussian(&g.diffusion, r)?;
    let d = g.diffusion.dim();
    let n = points.len() / d;
    let tables = g.tables(device);
    let x0 = tensor2(points.to_vec(), n, d, device);
    let mut kl = vec![0.0f64; n];
    for k in 2..=r.kept().len() {
        let t = r.kept()[k - 1];
        let xt = tensor2(g.forward_sample(points, t, rng), n, d, device);
        let (c0, ct, var) = short.posterior_coefficients(k);
        let mean_q = x0.clone() * c0 + xt.clone() * ct;
        let var_q = Tensor::<2>::ones([n, 1], device) * var;
        let (mean_p, log_var_p) = g.respaced_kernel(network, &tables, &short, r, k, xt);
        let rows = diffusion_kernels::kl_diag_gaussian(
            mean_q,
            var_q.clone(),
            var_q.log(),
            mean_p,
            log_var_p,
        );
        for (s, v) in kl.iter_mut().zip(host(rows)) {
            *s += v as f64;
        }
    }
    Ok(points
        .chunks_exact(d)
        .zip(kl)
        .map(|(row, s)| short.bound_constant_bits(row) - s / diffusion_core::LN_2)
        .collect())
}

/// [`respaced_bound_bits_gaussian`] for a binomial run: the respaced chain's Bernoulli
/// posteriors against the kernel mapped as [`BinomialBound::sample_respaced`] does.
pub fn respaced_bound_bits_binomial<N: ReverseNetwork>(
    b: &BinomialBound,
    network: &N,
    r: &Respacing,
    points: &[f32],
    rng: &mut Rng,
    device: &Device,
) -> Result<Vec<f64>, ScheduleError> {
    let short = respaced_binomial(&b.diffusion, r)?;
    let d = b.diffusion.dim();
    let n = points.len() / d;
    let mut kl = vec![0.0f64; n];
    for k in 2..=r.kept().len() {
        let t = r.kept()[k - 1];
        let xt_host = b.forward_sample(points, t, rng);
        let xt = tensor2(xt_host.clone(), n, d, device);
        let logits = b.respaced_logits(network, &short, r, k, &xt);
        // the respaced posterior q(x_{s_{k-1}} = 1 | x_{s_k}, x_0) and its entropy
        let mut q = Vec::with_capacity(n * d);
        let mut entropy = vec![0.0f32; n];
        for (j, (&x0, &x)) in points.iter().zip(&xt_host).enumerate() {
            let p = short.posterior_one(k, x0 as f64, x as f64);
            q.push(p as f32);
            let h = |v: f64| if v <= 0.0 { 0.0 } else { -v * v.ln() };
            entropy[j / d] += (h(p) + h(1.0 - p)) as f32;
        }
        let rows = crate::process::binomial::kl_bernoulli_logits(
            tensor2(q, n, d, device),
            Tensor::from_data(burn::tensor::TensorData::new(entropy, [n]), device),
            logits,
        );
        for (s, v) in kl.iter_mut().zip(host(rows)) {
            *s += v as f64;
        }
    }
    Ok(points
        .chunks_exact(d)
        .zip(kl)
        .map(|(row, s)| short.bound_constant_bits(row) - s / diffusion_core::LN_2)
        .collect())
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

#[cfg(test)]
mod tests {
    use diffusion_core::{BetaSchedule, MeanStderr, ReverseParametrization, TimestepSpacing};

    use super::*;
    use crate::config::TrainConfig;
    use crate::data::TrainingData;
    use crate::model::{ModelConfig, Network};
    use crate::network::ReverseModel;
    use crate::process;
    use crate::trainer::Trainer;

    /// A network trained briefly (300 steps) on the Swiss roll or the heartbeat, so that its
    /// outputs depend on x and t as a real model's do.
    fn trained<P: Process>(process: P, d: usize, steps: usize) -> Network
    where
        P::Rows: 'static,
    {
        let device = Device::flex().autodiff();
        device.seed(7);
        let out = process.output_dim();
        let config = ModelConfig {
            hidden: vec![32, 32],
            ..ModelConfig::default()
        };
        let model = ReverseModel::new(config.init(d, out, steps, &device));
        let train = TrainConfig {
            steps: 300,
            batch_size: 256,
            ..TrainConfig::default()
        };
        let data = if d == 2 {
            TrainingData::swiss_roll(diffusion_data::SwissRoll::new(0.5).unwrap(), 0)
        } else {
            TrainingData::heartbeat(diffusion_data::Heartbeat::new(d, 5).unwrap(), 0)
        };
        Trainer::new(process, model, &train, data, &device)
            .fit(&mut [])
            .unwrap()
            .model
            .network
    }

    fn gaussian(steps: usize, parametrization: ReverseParametrization) -> GaussianBound {
        GaussianBound {
            diffusion: GaussianDiffusion::new(
                BetaSchedule::linear(1e-4, 0.05).betas(steps).unwrap(),
                2,
            )
            .unwrap(),
            parametrization,
            clip: None,
            decoder: None,
            network_steps: None,
        }
    }

    fn ddim(g: &GaussianBound, steps: usize, eta: f64) -> Ddim {
        g.ddim(Ddim {
            alphas_cumprod: Vec::new(),
            steps,
            eta,
            timestep_spacing: TimestepSpacing::Leading,
            clip_sample: false,
            clip_sample_range: 1.0,
            set_alpha_to_one: true,
            prediction_type: PredictionType::Epsilon,
        })
    }

    #[test]
    fn keeping_every_step_is_the_ancestral_sampler() {
        let device = Device::flex();
        for parametrization in [
            ReverseParametrization::Direct,
            ReverseParametrization::Paper,
            ReverseParametrization::Epsilon,
        ] {
            let g = gaussian(30, parametrization);
            let net = trained(g.clone(), 2, 30);
            let all = Respacing::even(30, 30).unwrap();
            let plain =
                process::sample(&g, &net, 200, &mut diffusion_data::rng(1, 0), &device, 200);
            let respaced = g
                .sample_respaced(&net, &all, 200, &mut diffusion_data::rng(1, 0), &device)
                .unwrap();
            assert_eq!(plain, respaced, "{parametrization:?}");
        }
        let b = BinomialBound {
            diffusion: BinomialDiffusion::new(
                BetaSchedule::Reciprocal.raw_betas(40).unwrap(),
                0.2,
                10,
            )
            .unwrap(),
            parametrization: ReverseParametrization::Paper,
        };
        let net = trained(b.clone(), 10, 40);
        let all = Respacing::even(40, 40).unwrap();
        let plain = process::sample(&b, &net, 300, &mut diffusion_data::rng(2, 0), &device, 300);
        let respaced = b
            .sample_respaced(&net, &all, 300, &mut diffusion_data::rng(2, 0), &device)
            .unwrap();
        assert_eq!(plain, respaced);
    }

    #[test]
    fn ddim_with_eta_one_is_the_ancestral_kernel() {
        // epsilon-fixed: the ancestral kernel is the posterior at x̂_0 with variance b~_t,
        // which DDIM at eta = 1 over every step reproduces (Song et al. 2021, section 4.1)
        let device = Device::flex();
        let steps = 50;
        let g = gaussian(steps, ReverseParametrization::EpsilonFixed);
        let net = trained(g.clone(), 2, steps);
        let tables = g.tables(&device);
        let dd = ddim(&g, steps, 1.0);
        let x = normal(&mut diffusion_data::rng(3, 0), 64, 2, &device);
        for t in [2, 3, 10, 49, 50] {
            let (mean, log_var) = g.mean_log_variance(&net, &tables, x.clone(), t);
            let i = t - 1;
            let eps = g.ddim_output(&net, &tables, &x, i, PredictionType::Epsilon);
            let (a, b, sigma, abar) = dd.coefficients(i);
            let x0 = (x.clone() - eps.clone() * (1.0 - abar).sqrt()) / abar.sqrt();
            let ddim_mean = host(x0 * a + eps * b);
            for (m, w) in ddim_mean.iter().zip(host(mean)) {
                assert!((m - w).abs() < 1e-4, "t = {t}: {m} vs {w}");
            }
            for lv in host(log_var) {
                let var = (lv as f64).exp();
                assert!(
                    (sigma * sigma / var - 1.0).abs() < 1e-4,
                    "t = {t}: {} vs {var}",
                    sigma * sigma
                );
            }
        }
    }

    /// For the noise-predicting parametrizations the respaced chain as a process of its own
    /// (GaussianBound::respaced) has the respaced kernel's mean and variance at every kept step,
    /// with and without a clip range; the `paper` parametrization has no such process.
    #[test]
    fn the_respaced_process_has_the_respaced_kernel() {
        let device = Device::flex();
        let steps = 60;
        for parametrization in [
            ReverseParametrization::Epsilon,
            ReverseParametrization::EpsilonFixed,
        ] {
            let g = gaussian(steps, parametrization);
            let net = trained(g.clone(), 2, steps);
            let r = Respacing::new(steps, vec![1, 4, 5, 17, 30, 60]).unwrap();
            let short = respaced_gaussian(&g.diffusion, &r).unwrap();
            let process = g.respaced(&r).unwrap().unwrap();
            let x = normal(&mut diffusion_data::rng(4, 0), 40, 2, &device);
            let (tables, process_tables) = (g.tables(&device), process.tables(&device));
            for k in 2..=r.kept().len() {
                let (mean, log_var) = g.respaced_kernel(&net, &tables, &short, &r, k, x.clone());
                let (m2, lv2) = process.mean_log_variance(&net, &process_tables, x.clone(), k);
                for (a, b) in host(mean).iter().zip(host(m2)) {
                    assert!(
                        (a - b).abs() < 2e-4 * (1.0 + a.abs()),
                        "{parametrization:?} k = {k}: {a} vs {b}"
                    );
                }
                for (a, b) in host(log_var).iter().zip(host(lv2)) {
                    assert!(
                        (a - b).abs() < 1e-4,
                        "{parametrization:?} k = {k}: {a} vs {b}"
                    );
                }
            }
            // a clip range wider than any x̂_0 changes nothing
            let wide = GaussianBound {
                clip: Some(process::ClipRange {
                    low: vec![-1e6; 2],
                    high: vec![1e6; 2],
                }),
                ..process.clone()
            };
            let wide_tables = wide.tables(&device);
            for k in [2, 6] {
                let (m1, _) = process.mean_log_variance(&net, &process_tables, x.clone(), k);
                let (m2, _) = wide.mean_log_variance(&net, &wide_tables, x.clone(), k);
                for (a, b) in host(m1).iter().zip(host(m2)) {
                    assert!(
                        (a - b).abs() < 1e-4 * (1.0 + a.abs()),
                        "k = {k}: {a} vs {b}"
                    );
                }
            }
        }
        let paper = gaussian(steps, ReverseParametrization::Paper);
        let r = Respacing::even(steps, 10).unwrap();
        assert!(paper.respaced(&r).unwrap().is_none());
    }

    /// With a clip range the kernel's mean is c_0 clamp(x̂_0) + c_t x_t, x̂_0 = (x_t - sqrt(1 -
    /// abar_t) ε̂) / sqrt(abar_t), computed here in f64 from the network's ε̂.
    #[test]
    fn a_clip_range_clamps_the_implied_x0() {
        let device = Device::flex();
        let steps = 40;
        let g = gaussian(steps, ReverseParametrization::Epsilon);
        let net = trained(g.clone(), 2, steps);
        let clipped = GaussianBound {
            clip: Some(process::ClipRange {
                low: vec![-0.3, -2.0],
                high: vec![0.2, 0.5],
            }),
            ..g.clone()
        };
        let tables = clipped.tables(&device);
        let n = 50;
        let x = normal(&mut diffusion_data::rng(5, 0), n, 2, &device);
        let xs = host(x.clone());
        let mut clamped = 0;
        for t in [2, 20, 40] {
            let (mean, _) = clipped.mean_log_variance(&net, &tables, x.clone(), t);
            let z = host(net.forward_at(x.clone(), t));
            let abar = g.diffusion.alpha_bar(t);
            let (c0, ct, _) = g.diffusion.posterior_coefficients(t);
            for (i, &m) in host(mean).iter().enumerate() {
                let (row, col) = (i / 2, i % 2);
                let eps = z[row * 4 + col] as f64;
                let xt = xs[i] as f64;
                let x0 = (xt - (1.0 - abar).sqrt() * eps) / abar.sqrt();
                let (lo, hi) = ([-0.3, -2.0][col], [0.2, 0.5][col]);
                clamped += usize::from(x0 < lo || x0 > hi);
                let want = c0 * x0.clamp(lo, hi) + ct * xt;
                assert!(
                    (m as f64 - want).abs() < 1e-4 * (1.0 + want.abs()),
                    "t = {t}: {m} vs {want}"
                );
            }
        }
        assert!(
            clamped > 20 && clamped < 3 * n * 2 - 20,
            "{clamped} clamped"
        );
    }

    #[test]
    fn ddim_with_eta_zero_is_deterministic_and_invertible() {
        let device = Device::flex();
        let steps = 100;
        let g = gaussian(steps, ReverseParametrization::Epsilon);
        let net = trained(g.clone(), 2, steps);
        let tables = g.tables(&device);
        let dd = ddim(&g, 20, 0.0);
        let x_t = normal(&mut diffusion_data::rng(4, 0), 128, 2, &device);
        let run = |x: Tensor<2>, seed: u64| {
            ddim_loop(
                &dd,
                x,
                |x, i| g.ddim_output(&net, &tables, x, i, PredictionType::Epsilon),
                |rng: &mut Rng| normal(rng, 128, 2, &device),
                &mut diffusion_data::rng(seed, 9),
            )
        };
        let x0 = run(x_t.clone(), 1);
        // no randomness: another generator gives the same x_0
        assert_eq!(host(x0.clone()), host(run(x_t.clone(), 2)));
        // the affine fast path is the same chain
        let fast = host(g.ddim_deterministic(&net, &tables, &dd, x_t.clone()));
        for (f, w) in fast.iter().zip(host(x0.clone())) {
            assert!((f - w).abs() < 1e-4 * (1.0 + w.abs()), "{f} vs {w}");
        }
        // and x_0 encodes back to x_T
        let back = g.ddim_encode(&net, &dd, x0, &device, 1e-6);
        let err = host((back - x_t.clone()).abs().max());
        let scale = host(x_t.abs().max());
        assert!(
            err[0] < 1e-4 * scale[0],
            "{} (|x_T| up to {})",
            err[0],
            scale[0]
        );
    }

    #[test]
    fn the_respaced_bound_with_every_step_kept_is_the_bound() {
        let device = Device::flex();
        let steps = 40;
        let g = gaussian(steps, ReverseParametrization::Paper);
        let net = trained(g.clone(), 2, steps);
        let roll = diffusion_data::SwissRoll::new(0.5).unwrap();
        let points = roll.stream(3).next_batch(3000);
        let full = process::bound_bits_per_point(
            &g,
            &net,
            &points,
            &mut diffusion_data::rng(5, 0),
            &device,
            16384,
        );
        let all = Respacing::even(steps, steps).unwrap();
        let respaced = respaced_bound_bits_gaussian(
            &g,
            &net,
            &all,
            &points,
            &mut diffusion_data::rng(6, 0),
            &device,
        )
        .unwrap();
        let (a, b) = (
            MeanStderr::of(&full).unwrap(),
            MeanStderr::of(&respaced).unwrap(),
        );
        assert!(
            (a.mean - b.mean).abs() < 4.0 * (a.stderr.powi(2) + b.stderr.powi(2)).sqrt(),
            "{a:?} {b:?}"
        );
        // a shorter chain has its own, different bound
        let short = Respacing::even(steps, 8).unwrap();
        let k8 = respaced_bound_bits_gaussian(
            &g,
            &net,
            &short,
            &points,
            &mut diffusion_data::rng(6, 0),
            &device,
        )
        .unwrap();
        assert!(MeanStderr::of(&k8).unwrap().mean.is_finite());
        // the binomial one too
        let bb = BinomialBound {
            diffusion: BinomialDiffusion::new(
                BetaSchedule::Reciprocal.raw_betas(30).unwrap(),
                0.2,
                10,
            )
            .unwrap(),
            parametrization: ReverseParametrization::Paper,
        };
        let bnet = trained(bb.clone(), 10, 30);
        let beat = diffusion_data::Heartbeat::new(10, 5).unwrap();
        let seqs = beat.stream_with(diffusion_data::rng(1, 0)).next_batch(2000);
        let full = process::bound_bits_per_point(
            &bb,
            &bnet,
            &seqs,
            &mut diffusion_data::rng(5, 0),
            &device,
            16384,
        );
        let respaced = respaced_bound_bits_binomial(
            &bb,
            &bnet,
            &Respacing::even(30, 30).unwrap(),
            &seqs,
            &mut diffusion_data::rng(6, 0),
            &device,
        )
        .unwrap();
        let (a, b) = (
            MeanStderr::of(&full).unwrap(),
            MeanStderr::of(&respaced).unwrap(),
        );
        assert!(
            (a.mean - b.mean).abs() < 4.0 * (a.stderr.powi(2) + b.stderr.powi(2)).sqrt(),
            "{a:?} {b:?}"
        );
    }
}
