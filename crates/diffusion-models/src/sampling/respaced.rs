//! The respaced chains (Nichol and Dhariwal 2021): Gaussian and binomial, their samplers and
//! their bounds.

use burn::tensor::{Device, Tensor};
use diffusion_core::{BinomialDiffusion, GaussianDiffusion, Respacing, ScheduleError};
use diffusion_data::Rng;
use rand::Rng as _;

use super::{SamplerError, normal};
use crate::network::ReverseNetwork;
use crate::process::{BinomialBound, GaussianBound, Process, host, tensor2};

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
        Some(self.affine_map(short, t, k))
    }

    /// [`GaussianBound::respaced_affine`]'s map from the original kernel at step `t` to the
    /// respaced one at step `k`, computed even where the two are the same (then it is the
    /// identity [1, 0, 1, 0]).
    pub(crate) fn affine_map(&self, short: &GaussianDiffusion, t: usize, k: usize) -> [f64; 4] {
        let g = &self.diffusion;
        let (c0, ct, post_var) = g.posterior_coefficients(t);
        let (lo, hi) = (post_var.ln(), g.beta(t).ln());
        let (c0s, cts, post_var_s) = short.posterior_coefficients(k);
        let (los, his) = (post_var_s.ln(), short.beta(k).ln());
        let c = (his - los) / (hi - lo);
        [c0s / c0, cts - c0s * ct / c0, c, los - lo * c]
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
