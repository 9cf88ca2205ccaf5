//! The bound K of a diffusion with a reverse network. For each process one function
//! ([`GaussianBound::kl_rows`], [`BinomialBound::kl_rows`]) computes the KL terms of any set of
//! (x_0, t) rows; [`Diffusion`] uses it for training (the Monte-Carlo estimate, t ~ U{2..T}
//! weighted by T - 1) and evaluation (the full sum over every t) alike. Sampling runs the reverse
//! chain.
//!
//! Everything that does not depend on the network (x_t, the posterior, the step coefficients) is
//! computed on the host in f64 from seeded generators, so a run is reproducible and identical
//! across backends up to the network's own arithmetic.

use burn::tensor::{Device, Int, Tensor, TensorData};
use diffusion_core::parametrization::COEFFICIENTS;
use diffusion_core::{
    BinomialDiffusion, GaussianDiffusion, LN_2, ReverseParametrization, StepCoefficients,
};
use diffusion_data::Rng;
use rand::Rng as _;
use rand_distr::StandardNormal;

use crate::config::LossKind;
use crate::model::{LearnedBetas, ReverseMlp, Steps};

/// A Gaussian diffusion with its reverse parametrization.
#[derive(Debug, Clone)]
pub struct GaussianBound {
    /// The forward process.
    pub diffusion: GaussianDiffusion,
    /// The reverse parametrization.
    pub parametrization: ReverseParametrization,
}

/// The device tensors of a set of (x_0, t) rows.
#[derive(Debug, Clone)]
pub struct BoundBatch {
    /// x_t ~ q(x_t | x_0), `[n, d]`.
    pub x_t: Tensor<2>,
    /// The steps, `[n]`.
    pub t: Tensor<1, Int>,
    /// The posterior mean mu~_t, `[n, d]`.
    pub posterior_mean: Tensor<2>,
    /// The posterior variance b~_t, `[n, 1]`.
    pub posterior_variance: Tensor<2>,
    /// Its logarithm, `[n, 1]`.
    pub posterior_log_variance: Tensor<2>,
    /// Step coefficients for the parametrization.
    pub coefficients: StepCoefficients,
    /// The noise eps that made x_t from x_0, `[n, d]`.
    pub noise: Tensor<2>,
}

/// A row-major `[rows, cols]` f32 tensor from host values.
pub fn tensor2(values: Vec<f32>, rows: usize, cols: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, [rows, cols]), device)
}

fn steps_tensor(ts: &[usize], device: &Device) -> Tensor<1, Int> {
    let v: Vec<i64> = ts.iter().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(v, [ts.len()]), device)
}

/// The step coefficients of each row as host columns, in [`StepCoefficients`]' field order.
fn coefficient_columns(diffusion: &GaussianDiffusion, ts: &[usize]) -> [Vec<f32>; COEFFICIENTS] {
    let n = ts.len();
    let mut cols: [Vec<f32>; COEFFICIENTS] = std::array::from_fn(|_| Vec::with_capacity(n));
    for &t in ts {
        for (col, v) in cols
            .iter_mut()
            .zip(StepCoefficients::host_values(diffusion, t))
        {
            col.push(v);
        }
    }
    cols
}

fn upload_coefficients(cols: [Vec<f32>; COEFFICIENTS], device: &Device) -> StepCoefficients {
    let [a, b, c, e, v, lb] = cols;
    let n = a.len();
    StepCoefficients {
        sqrt_alpha: tensor2(a, n, 1, device),
        sqrt_beta: tensor2(b, n, 1, device),
        logit_beta: tensor2(c, n, 1, device),
        eps_weight: tensor2(e, n, 1, device),
        log_posterior_variance: tensor2(v, n, 1, device),
        log_beta: tensor2(lb, n, 1, device),
    }
}

fn coefficients(diffusion: &GaussianDiffusion, ts: &[usize], device: &Device) -> StepCoefficients {
    upload_coefficients(coefficient_columns(diffusion, ts), device)
}

/// The host values of a set of Gaussian (x_0, t) rows: everything [`BoundBatch`] holds, before
/// it is uploaded. Built on any thread ([`GaussianBound::prepare_rows`]), uploaded on the one
/// that runs the network ([`GaussianRows::upload`]).
#[derive(Debug, Clone)]
pub struct GaussianRows {
    d: usize,
    ts: Vec<usize>,
    x0: Vec<f32>,
    x_t: Vec<f32>,
    mean: Vec<f32>,
    var: Vec<f32>,
    log_var: Vec<f32>,
    coefficients: [Vec<f32>; COEFFICIENTS],
    noise: Vec<f32>,
}

impl GaussianRows {
    /// The device tensors of these rows.
    pub fn upload(self, device: &Device) -> BoundBatch {
        let n = self.ts.len();
        BoundBatch {
            x_t: tensor2(self.x_t, n, self.d, device),
            t: steps_tensor(&self.ts, device),
            posterior_mean: tensor2(self.mean, n, self.d, device),
            posterior_variance: tensor2(self.var, n, 1, device),
            posterior_log_variance: tensor2(self.log_var, n, 1, device),
            coefficients: upload_coefficients(self.coefficients, device),
            noise: tensor2(self.noise, n, self.d, device),
        }
    }
}

impl GaussianBound {
    /// Trajectory length T.
    pub fn steps(&self) -> usize {
        self.diffusion.steps()
    }

    /// Draws x_t ~ q(x_t | x_0) for each row and builds the posterior on the host; `x0` is
    /// row-major `[ts.len(), d]`.
    pub fn prepare_rows(&self, x0: &[f32], ts: &[usize], rng: &mut Rng) -> GaussianRows {
        let d = self.diffusion.dim();
        let n = ts.len();
        debug_assert_eq!(x0.len(), n * d);
        let mut x_t = Vec::with_capacity(n * d);
        let mut mean = Vec::with_capacity(n * d);
        let mut var = Vec::with_capacity(n);
        let mut log_var = Vec::with_capacity(n);
        let mut noise = Vec::with_capacity(n * d);
        for (row, &t) in x0.chunks_exact(d).zip(ts) {
            let (s, sd) = self.diffusion.q_sample_coefficients(t);
            let (c0, ct, v) = self.diffusion.posterior_coefficients(t);
            for &x in row {
                let eps: f64 = rng.sample(StandardNormal);
                noise.push(eps as f32);
                let xt = s * x as f64 + sd * eps;
                x_t.push(xt as f32);
                mean.push((c0 * x as f64 + ct * xt) as f32);
            }
            var.push(v as f32);
            log_var.push(v.ln() as f32);
        }
        GaussianRows {
            d,
            ts: ts.to_vec(),
            x0: x0.to_vec(),
            x_t,
            mean,
            var,
            log_var,
            coefficients: coefficient_columns(&self.diffusion, ts),
            noise,
        }
    }

    /// [`prepare_rows`](Self::prepare_rows), uploaded to `device`.
    pub fn prepare(&self, x0: &[f32], ts: &[usize], rng: &mut Rng, device: &Device) -> BoundBatch {
        self.prepare_rows(x0, ts, rng).upload(device)
    }

    /// The noise-prediction loss of Ho et al. (2020) per row: ||eps - z_mu||^2 summed over
    /// the d coordinates, `[n]` (the `epsilon` parametrization's first d outputs).
    pub fn noise_error_rows(&self, model: &ReverseMlp, batch: BoundBatch) -> Tensor<1> {
        let z = model.forward(batch.x_t, batch.t);
        let [n, _] = z.dims();
        let d = self.diffusion.dim();
        let diff = z.slice([0..n, 0..d]) - batch.noise;
        (diff.clone() * diff).sum_dim(1).reshape([n])
    }

    /// The KL terms (nats, `[n]`) of rows under the network's own trainable betas (the
    /// `learned` schedule), differentiable in them, and the constant part of K in bits (`[1]`,
    /// differentiable through H_q(X_T | X_0)). x_t is recomputed on the device from the rows'
    /// x_0 and noise (the reparametrisation x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps), so
    /// the gradient reaches the betas through x_t and the posterior alike. 1 - abar_t is summed
    /// as sum_{s <= t} b_s abar_{s-1} rather than subtracted, which keeps it accurate in f32
    /// where it is small.
    pub fn learned_kl_rows(
        &self,
        model: &ReverseMlp,
        schedule: &LearnedBetas,
        rows: GaussianRows,
        device: &Device,
    ) -> (Tensor<1>, Tensor<1>) {
        let n = rows.ts.len();
        let d = rows.d;
        let steps = self.steps();
        let t = steps_tensor(&rows.ts, device);
        let index: Vec<usize> = rows.ts.iter().map(|&t| t - 1).collect();
        let index = steps_tensor(&index, device);
        let x0 = tensor2(rows.x0, n, d, device);
        let eps = tensor2(rows.noise, n, d, device);
        let betas = schedule.betas();
        let log_one_minus = schedule.log_one_minus_betas();
        let log_abar = log_one_minus.clone().cumsum(0); // ln abar_t, t = 1..T
        let zero = Tensor::<1>::zeros([1], device);
        let log_abar_prev =
            Tensor::cat(vec![zero.clone(), log_abar.clone().slice(0..steps - 1)], 0);
        let one_minus_abar = (betas.clone() * log_abar_prev.clone().exp()).cumsum(0);
        let one_minus_abar_prev =
            Tensor::cat(vec![zero, one_minus_abar.clone().slice(0..steps - 1)], 0);
        let at =
            |v: &Tensor<1>| -> Tensor<2> { v.clone().select(0, index.clone()).reshape([n, 1]) };
        let b = at(&betas);
        let log_b = b.clone().log();
        let la = at(&log_abar);
        let la_prev = at(&log_abar_prev);
        let om = at(&one_minus_abar);
        let om_prev = at(&one_minus_abar_prev);
        let sqrt_alpha = (at(&log_one_minus) * 0.5).exp();
        let sqrt_om = om.clone().sqrt();
        let x_t = x0.clone() * (la * 0.5).exp() + eps * sqrt_om.clone();
        let c0 = (la_prev * 0.5).exp() * b.clone() / om.clone();
        let ct = sqrt_alpha.clone() * om_prev.clone() / om.clone();
        let log_var = om_prev.log() - om.log() + log_b.clone();
        let mean_q = x0 * c0 + x_t.clone() * ct;
        let coefficients = StepCoefficients {
            sqrt_alpha,
            sqrt_beta: b.clone().sqrt(),
            logit_beta: at(&schedule.logit_betas()),
            eps_weight: b / sqrt_om,
            log_posterior_variance: log_var.clone(),
            log_beta: log_b,
        };
        let z = model.forward(x_t.clone(), t);
        let (mean_p, log_var_p) = self
            .parametrization
            .mean_log_variance(z, x_t, &coefficients);
        let kl = diffusion_core::kl_diag_gaussian(
            mean_q,
            log_var.clone().exp(),
            log_var,
            mean_p,
            log_var_p,
        );
        // H_q(X_T|X_0) - H_q(X_1|X_0) - H_p(X_T), the first through 1 - abar_T
        let fixed = self.diffusion.bound_constants();
        let half_d = d as f64 / 2.0;
        let h_xt = (one_minus_abar.slice(steps - 1..steps).log() * half_d
            + half_d * (1.0 + (2.0 * std::f64::consts::PI).ln()))
            / LN_2;
        let constant = h_xt - fixed.h_q_x1_given_x0 - fixed.h_p_xt;
        (kl, constant)
    }

    /// KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) per row, in nats, `[n]`.
    pub fn kl_rows(&self, model: &ReverseMlp, batch: BoundBatch) -> Tensor<1> {
        let z = model.forward(batch.x_t.clone(), batch.t.clone());
        self.kl_of_output(z, batch)
    }

    /// The KL terms of a batch given the network's output `z` for it.
    fn kl_of_output(&self, z: Tensor<2>, batch: BoundBatch) -> Tensor<1> {
        let (mean, log_var) =
            self.parametrization
                .mean_log_variance(z, batch.x_t, &batch.coefficients);
        diffusion_core::kl_diag_gaussian(
            batch.posterior_mean,
            batch.posterior_variance,
            batch.posterior_log_variance,
            mean,
            log_var,
        )
    }

    /// The hybrid loss's two parts per row, `[n]` each: the noise error ||eps - z_mu||^2 and
    /// the KL term (nats) with the mean held fixed, so that its gradient reaches only the
    /// variance (Nichol and Dhariwal 2021, section 3.1).
    pub fn hybrid_rows(&self, model: &ReverseMlp, batch: BoundBatch) -> (Tensor<1>, Tensor<1>) {
        let z = model.forward(batch.x_t.clone(), batch.t.clone());
        let [n, two_d] = z.dims();
        let d = two_d / 2;
        let z_mu = z.clone().slice([0..n, 0..d]);
        let diff = z_mu.clone() - batch.noise.clone();
        let mse = (diff.clone() * diff).sum_dim(1).reshape([n]);
        let held = Tensor::cat(vec![z_mu.detach(), z.slice([0..n, d..two_d])], 1);
        (mse, self.kl_of_output(held, batch))
    }

    /// Runs the reverse chain for `n` points from x_T ~ N(0, I): the network's kernel for
    /// t = T..2, then the paper's fixed edge step p(x_0 | x_1) = N(sqrt(1 - b_1) x_1, b_1 I).
    /// Returns x_t (row-major `[n, d]`) for each t in `keep`, in the order the chain reaches them
    /// (from T down to 0).
    pub fn trajectory(
        &self,
        model: &ReverseMlp,
        n: usize,
        keep: &[usize],
        rng: &mut Rng,
        device: &Device,
    ) -> Vec<(usize, Vec<f32>)> {
        let d = self.diffusion.dim();
        let normal = |rng: &mut Rng| -> Vec<f32> {
            (0..n * d)
                .map(|_| rng.sample::<f64, _>(StandardNormal) as f32)
                .collect()
        };
        let mut out = Vec::new();
        let mut x = tensor2(normal(rng), n, d, device);
        let mut snapshot = |t: usize, x: &Tensor<2>| {
            if keep.contains(&t) {
                out.push((t, host(x.clone())));
            }
        };
        snapshot(self.steps(), &x);
        for t in (2..=self.steps()).rev() {
            let (mean, log_var) = self.mean_log_variance(model, x.clone(), t);
            let eps = tensor2(normal(rng), n, d, device);
            x = mean + (log_var * 0.5).exp() * eps;
            snapshot(t - 1, &x);
        }
        let b1 = self.diffusion.beta(1);
        let eps = tensor2(normal(rng), n, d, device);
        x = x * (1.0 - b1).sqrt() + eps * b1.sqrt();
        snapshot(0, &x);
        out
    }

    /// The reverse kernel's mean and log-variance at step `t` for the rows `x` (`[n, d]`).
    pub fn mean_log_variance(
        &self,
        model: &ReverseMlp,
        x: Tensor<2>,
        t: usize,
    ) -> (Tensor<2>, Tensor<2>) {
        let device = x.device();
        let z = model.forward_at(x.clone(), t);
        // one row of coefficients, broadcast over the rows
        let coefficients = coefficients(&self.diffusion, &[t], &device);
        self.parametrization.mean_log_variance(z, x, &coefficients)
    }
}

/// A tensor's values on the host.
fn host<const D: usize>(x: Tensor<D>) -> Vec<f32> {
    x.into_data()
        .convert::<f32>()
        .as_slice::<f32>()
        .expect("f32 data")
        .to_vec()
}

/// A binomial diffusion with its reverse parametrization: `direct` is the paper's heartbeat
/// model, f_b = sigmoid(z); `paper` adds the forward kernel's logit, f_b =
/// sigmoid(z + logit(x_t (1 - b_t) + pi b_t)), so that, as with the Gaussian `paper`
/// parametrization, the untrained network (z = 0) is the forward kernel.
#[derive(Debug, Clone)]
pub struct BinomialBound {
    /// The forward process.
    pub diffusion: BinomialDiffusion,
    /// The reverse parametrization.
    pub parametrization: ReverseParametrization,
}

/// The device tensors of a set of binary (x_0, t) rows.
#[derive(Debug, Clone)]
pub struct BinomialBatch {
    /// x_t ~ q(x_t | x_0), `[n, d]` of 0/1.
    pub x_t: Tensor<2>,
    /// The steps, `[n]`.
    pub t: Tensor<1, Int>,
    /// The posterior q(x_{t-1} = 1 | x_t, x_0), `[n, d]`.
    pub posterior: Tensor<2>,
    /// The posterior's entropy in nats, summed over bits, `[n]`.
    pub posterior_entropy: Tensor<1>,
    /// logit of the forward kernel q(x_{t-1} = 1 | x_t) as if stationary, `[n, d]` (used by the
    /// `paper` parametrization).
    pub kernel_logit: Tensor<2>,
}

/// The host values of a set of binary (x_0, t) rows, before upload (see [`GaussianRows`]).
#[derive(Debug, Clone)]
pub struct BinomialRows {
    d: usize,
    ts: Vec<usize>,
    x_t: Vec<f32>,
    posterior: Vec<f32>,
    entropy: Vec<f32>,
    kernel_logit: Vec<f32>,
}

impl BinomialRows {
    /// The device tensors of these rows.
    pub fn upload(self, device: &Device) -> BinomialBatch {
        let n = self.ts.len();
        BinomialBatch {
            x_t: tensor2(self.x_t, n, self.d, device),
            t: steps_tensor(&self.ts, device),
            posterior: tensor2(self.posterior, n, self.d, device),
            posterior_entropy: Tensor::from_data(TensorData::new(self.entropy, [n]), device),
            kernel_logit: tensor2(self.kernel_logit, n, self.d, device),
        }
    }
}

fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

impl BinomialBound {
    /// Trajectory length T.
    pub fn steps(&self) -> usize {
        self.diffusion.steps()
    }

    /// Draws x_t ~ q(x_t | x_0) for each row and builds the posterior on the host.
    pub fn prepare_rows(&self, x0: &[f32], ts: &[usize], rng: &mut Rng) -> BinomialRows {
        let d = self.diffusion.dim();
        let n = ts.len();
        let mut x_t = Vec::with_capacity(n * d);
        let mut post = Vec::with_capacity(n * d);
        let mut kernel = Vec::with_capacity(n * d);
        let mut entropy = Vec::with_capacity(n);
        for (row, &t) in x0.chunks_exact(d).zip(ts) {
            let mut h = 0.0f64;
            for &x in row {
                let x = x as f64;
                let u: f64 = rng.random();
                let xt = if u < self.diffusion.q_one(t, x) {
                    1.0
                } else {
                    0.0
                };
                let q = self.diffusion.posterior_one(t, x, xt);
                if q > 0.0 && q < 1.0 {
                    h -= q * q.ln() + (1.0 - q) * (1.0 - q).ln();
                }
                x_t.push(xt as f32);
                post.push(q as f32);
                kernel.push(logit(self.diffusion.forward_kernel(t, xt)) as f32);
            }
            entropy.push(h as f32);
        }
        BinomialRows {
            d,
            ts: ts.to_vec(),
            x_t,
            posterior: post,
            entropy,
            kernel_logit: kernel,
        }
    }

    /// [`prepare_rows`](Self::prepare_rows), uploaded to `device`.
    pub fn prepare(
        &self,
        x0: &[f32],
        ts: &[usize],
        rng: &mut Rng,
        device: &Device,
    ) -> BinomialBatch {
        self.prepare_rows(x0, ts, rng).upload(device)
    }

    fn logits(
        &self,
        model: &ReverseMlp,
        x_t: Tensor<2>,
        steps: Steps,
        kernel_logit: impl FnOnce() -> Tensor<2>,
    ) -> Tensor<2> {
        let z = model.forward_steps(x_t, steps);
        match self.parametrization {
            ReverseParametrization::Paper => z + kernel_logit(),
            // `epsilon` is refused for binary data by config validation.
            _ => z,
        }
    }

    /// KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) per row, in nats, `[n]`.
    pub fn kl_rows(&self, model: &ReverseMlp, batch: BinomialBatch) -> Tensor<1> {
        let kernel_logit = batch.kernel_logit;
        let logits = self.logits(model, batch.x_t, Steps::PerRow(&batch.t), || kernel_logit);
        diffusion_core::kl_bernoulli_logits(batch.posterior, batch.posterior_entropy, logits)
    }

    /// Runs the reverse chain for `n` sequences: x_T ~ Bernoulli(pi), the network's kernel for
    /// t = T..2, then the fixed edge step p(x_0 = 1 | x_1) = x_1 (1 - b_1) + pi b_1. Returns x_t
    /// (row-major `[n, d]` of 0/1) for each t in `keep`, from T down to 0.
    pub fn trajectory(
        &self,
        model: &ReverseMlp,
        n: usize,
        keep: &[usize],
        rng: &mut Rng,
        device: &Device,
    ) -> Vec<(usize, Vec<f32>)> {
        let d = self.diffusion.dim();
        let pi = self.diffusion.pi();
        let uniform =
            |rng: &mut Rng| -> Vec<f32> { (0..n * d).map(|_| rng.random::<f32>()).collect() };
        let mut out = Vec::new();
        let mut snapshot = |t: usize, x: &[f32]| {
            if keep.contains(&t) {
                out.push((t, x.to_vec()));
            }
        };
        let x0: Vec<f32> = uniform(rng)
            .into_iter()
            .map(|u| if (u as f64) < pi { 1.0 } else { 0.0 })
            .collect();
        snapshot(self.steps(), &x0);
        // the chain stays on the device; only the uniforms go up each step
        let mut x = tensor2(x0, n, d, device);
        for t in (2..=self.steps()).rev() {
            // logit(x (1 - b_t) + pi b_t) for x in {0, 1}, selected exactly per bit
            let kernel = || {
                let [k0, k1] =
                    [0.0, 1.0].map(|v| logit(self.diffusion.forward_kernel(t, v)) as f32);
                x.clone() * k1 + (x.clone().neg() + 1.0) * k0
            };
            let logits = self.logits(model, x.clone(), Steps::All(t), kernel);
            let u = tensor2(uniform(rng), n, d, device);
            x = u.lower(burn::tensor::activation::sigmoid(logits)).float();
            if keep.contains(&(t - 1)) {
                snapshot(t - 1, &host(x.clone()));
            }
        }
        let mut x = host(x);
        for v in x.iter_mut() {
            let p = self.diffusion.forward_kernel(1, *v as f64);
            *v = if (rng.random::<f32>() as f64) < p {
                1.0
            } else {
                0.0
            };
        }
        snapshot(0, &x);
        out
    }
}

/// Host rows of either process.
#[derive(Debug, Clone)]
pub enum Rows {
    /// Gaussian rows.
    Gaussian(GaussianRows),
    /// Binary rows.
    Binomial(BinomialRows),
}

/// One training step's host data: the rows, their steps, the batch mean of K's constant part
/// (bits) and, for importance-sampled steps, each row's weight 1 / ((T - 1) p(t)).
#[derive(Debug, Clone)]
pub struct TrainingBatch {
    rows: Rows,
    ts: Vec<usize>,
    constant_bits: f64,
    weights: Option<Vec<f32>>,
}

impl TrainingBatch {
    /// The rows' steps t.
    pub fn steps(&self) -> &[usize] {
        &self.ts
    }
}

/// One training step's loss and, when it has them, the rows' KL terms.
#[derive(Debug, Clone)]
pub struct StepLoss {
    /// The scalar to minimise, `[1]`.
    pub loss: Tensor<1>,
    /// Each row's KL term in nats, `[n]` (not for the MSE loss).
    pub kl: Option<Tensor<1>>,
}

/// A diffusion process with its reverse parametrization: what training, evaluation and sampling
/// need, whichever the process.
#[derive(Debug, Clone)]
pub enum Diffusion {
    /// Continuous data.
    Gaussian(GaussianBound),
    /// Binary data.
    Binomial(BinomialBound),
}

impl Diffusion {
    /// Trajectory length T.
    pub fn steps(&self) -> usize {
        match self {
            Self::Gaussian(g) => g.steps(),
            Self::Binomial(b) => b.steps(),
        }
    }

    /// Data dimension d.
    pub fn dim(&self) -> usize {
        match self {
            Self::Gaussian(g) => g.diffusion.dim(),
            Self::Binomial(b) => b.diffusion.dim(),
        }
    }

    /// Network outputs per row: 2d (mean and log-variance) or d (one logit per bit).
    pub fn output_dim(&self) -> usize {
        match self {
            Self::Gaussian(g) => 2 * g.diffusion.dim(),
            Self::Binomial(b) => b.diffusion.dim(),
        }
    }

    /// Draws x_t for the rows (x_0, t) and builds their posteriors, on the host.
    pub fn prepare_rows(&self, x0: &[f32], ts: &[usize], rng: &mut Rng) -> Rows {
        match self {
            Self::Gaussian(g) => Rows::Gaussian(g.prepare_rows(x0, ts, rng)),
            Self::Binomial(b) => Rows::Binomial(b.prepare_rows(x0, ts, rng)),
        }
    }

    /// KL terms (nats) of prepared rows, `[n]`.
    pub fn kl_of(&self, model: &ReverseMlp, rows: Rows, device: &Device) -> Tensor<1> {
        match (self, rows) {
            (Self::Gaussian(g), Rows::Gaussian(r)) => g.kl_rows(model, r.upload(device)),
            (Self::Binomial(b), Rows::Binomial(r)) => b.kl_rows(model, r.upload(device)),
            _ => panic!("rows prepared by another kind of diffusion"),
        }
    }

    /// KL terms (nats) of the rows (x_0, t), drawing x_t from `rng`.
    pub fn kl_rows(
        &self,
        model: &ReverseMlp,
        x0: &[f32],
        ts: &[usize],
        rng: &mut Rng,
        device: &Device,
    ) -> Tensor<1> {
        self.kl_of(model, self.prepare_rows(x0, ts, rng), device)
    }

    /// The constant part of K (entropy terms) for one point, in bits.
    pub fn bound_constant_bits(&self, x0: &[f32]) -> f64 {
        match self {
            Self::Gaussian(g) => g.diffusion.bound_constants().sum_bits(),
            Self::Binomial(b) => b.diffusion.bound_constant_bits(x0),
        }
    }

    /// L_null for one point, in bits.
    pub fn l_null_bits(&self, x0: &[f32]) -> f64 {
        match self {
            Self::Gaussian(g) => g.diffusion.l_null_bits(),
            Self::Binomial(b) => b.diffusion.l_null_bits(x0),
        }
    }

    /// The host part of a training step: each row of `x0` draws t ~ U{2..T} and x_t, and the
    /// constant part of K is averaged. Independent of the network, so it can be built ahead on
    /// another thread.
    pub fn training_batch(&self, x0: &[f32], rng: &mut Rng) -> TrainingBatch {
        let n = x0.len() / self.dim();
        let steps = self.steps();
        let ts: Vec<usize> = (0..n).map(|_| rng.random_range(2..=steps)).collect();
        self.training_batch_at(x0, ts, None, rng)
    }

    /// [`training_batch`](Self::training_batch) with given steps and, for importance sampling,
    /// each row's weight 1 / ((T - 1) p(t)).
    pub fn training_batch_at(
        &self,
        x0: &[f32],
        ts: Vec<usize>,
        weights: Option<Vec<f32>>,
        rng: &mut Rng,
    ) -> TrainingBatch {
        let d = self.dim();
        let n = x0.len() / d;
        let constant_bits = x0
            .chunks_exact(d)
            .map(|row| self.bound_constant_bits(row))
            .sum::<f64>()
            / n as f64;
        TrainingBatch {
            rows: self.prepare_rows(x0, &ts, rng),
            ts,
            constant_bits,
            weights,
        }
    }

    /// The training loss of a prepared batch: minus the Monte-Carlo estimate of K in bits per
    /// point, averaged over the batch, each row's KL weighted by T - 1 (an unbiased estimate of
    /// the sum over t = 2..T).
    pub fn training_loss_of(
        &self,
        model: &ReverseMlp,
        batch: TrainingBatch,
        device: &Device,
    ) -> Tensor<1> {
        self.step_loss(model, batch, LossKind::Bound, 0.0, device)
            .loss
    }

    /// The loss of one training step on a prepared batch:
    /// - `bound`: minus the Monte-Carlo K in bits per point, each row's KL weighted by T - 1
    ///   (uniform t) or by 1 / p(t) (importance-sampled t): an unbiased estimate of the sum over
    ///   t = 2..T. With the `learned` schedule it is differentiable in the betas too.
    /// - `mse`: the mean squared noise-prediction error (Gaussian, `epsilon-fixed`).
    /// - `hybrid`: that error plus `hybrid_weight` times the bound loss with the mean held fixed.
    pub fn step_loss(
        &self,
        model: &ReverseMlp,
        batch: TrainingBatch,
        loss: LossKind,
        hybrid_weight: f64,
        device: &Device,
    ) -> StepLoss {
        let t_weight = (self.steps() - 1) as f64 / LN_2;
        let weights = batch
            .weights
            .map(|w| Tensor::<1>::from_data(TensorData::new(w, [batch.ts.len()]), device));
        // minus the Monte-Carlo K (bits) from the rows' KL terms, before the constant part
        let weighted_sum = |kl: Tensor<1>| match &weights {
            Some(w) => (kl * w.clone()).mean() * t_weight,
            None => kl.mean() * t_weight,
        };
        let constant_bits = batch.constant_bits;
        let bound = |kl: &Tensor<1>| weighted_sum(kl.clone()) - constant_bits;
        match (self, batch.rows, loss) {
            (Self::Gaussian(g), Rows::Gaussian(rows), LossKind::Bound) => {
                if let Some(schedule) = model.learned_schedule() {
                    let (kl, constant) = g.learned_kl_rows(model, schedule, rows, device);
                    let loss = weighted_sum(kl.clone()) - constant;
                    return StepLoss { loss, kl: Some(kl) };
                }
                let kl = g.kl_rows(model, rows.upload(device));
                StepLoss {
                    loss: bound(&kl),
                    kl: Some(kl),
                }
            }
            (Self::Gaussian(g), Rows::Gaussian(rows), LossKind::Mse) => StepLoss {
                loss: g.noise_error_rows(model, rows.upload(device)).mean(),
                kl: None,
            },
            (Self::Gaussian(g), Rows::Gaussian(rows), LossKind::Hybrid) => {
                let (mse, kl) = g.hybrid_rows(model, rows.upload(device));
                StepLoss {
                    loss: mse.mean() + bound(&kl) * hybrid_weight,
                    kl: Some(kl),
                }
            }
            (Self::Binomial(b), Rows::Binomial(rows), _) => {
                // config validation allows only the bound for binary data
                let kl = b.kl_rows(model, rows.upload(device));
                StepLoss {
                    loss: bound(&kl),
                    kl: Some(kl),
                }
            }
            _ => panic!("rows prepared by another kind of diffusion"),
        }
    }

    /// [`training_batch`](Self::training_batch) then
    /// [`training_loss_of`](Self::training_loss_of).
    pub fn training_loss(
        &self,
        model: &ReverseMlp,
        x0: &[f32],
        rng: &mut Rng,
        device: &Device,
    ) -> Tensor<1> {
        self.training_loss_of(model, self.training_batch(x0, rng), device)
    }

    /// The full-sum bound K in bits for each point (`points` row-major `[n, d]`): every
    /// t = 2..T with one draw of x_t per (point, t), evaluated `chunk_rows` rows at a time.
    pub fn bound_bits_per_point(
        &self,
        model: &ReverseMlp,
        points: &[f32],
        rng: &mut Rng,
        device: &Device,
        chunk_rows: usize,
    ) -> Vec<f64> {
        let d = self.dim();
        let n = points.len() / d;
        let per_point = self.steps() - 1;
        let total = n * per_point;
        let mut kl_sums = vec![0.0f64; n];
        let mut start = 0;
        while start < total {
            let end = (start + chunk_rows.max(1)).min(total);
            let rows: Vec<(usize, usize)> = (start..end)
                .map(|r| (r / per_point, 2 + r % per_point))
                .collect();
            let ts: Vec<usize> = rows.iter().map(|&(_, t)| t).collect();
            let mut x0 = Vec::with_capacity(rows.len() * d);
            for &(i, _) in &rows {
                x0.extend_from_slice(&points[i * d..(i + 1) * d]);
            }
            let kl = self.kl_rows(model, &x0, &ts, rng, device).into_data();
            let kl = kl.convert::<f32>();
            let kl = kl.as_slice::<f32>().expect("f32 data");
            for (&(i, _), &v) in rows.iter().zip(kl) {
                kl_sums[i] += v as f64;
            }
            start = end;
        }
        points
            .chunks_exact(d)
            .zip(kl_sums)
            .map(|(row, s)| self.bound_constant_bits(row) - s / LN_2)
            .collect()
    }

    /// x_t of the reverse chain for each t in `keep`, from T down to 0, for `n` rows.
    pub fn trajectory(
        &self,
        model: &ReverseMlp,
        n: usize,
        keep: &[usize],
        rng: &mut Rng,
        device: &Device,
    ) -> Vec<(usize, Vec<f32>)> {
        match self {
            Self::Gaussian(g) => g.trajectory(model, n, keep, rng, device),
            Self::Binomial(b) => b.trajectory(model, n, keep, rng, device),
        }
    }

    /// Draws `n` samples (x_0 of the reverse chain), row-major `[n, d]`, `chunk_rows` chains
    /// at a time.
    pub fn sample(
        &self,
        model: &ReverseMlp,
        n: usize,
        rng: &mut Rng,
        device: &Device,
        chunk_rows: usize,
    ) -> Vec<f32> {
        let mut out = Vec::with_capacity(n * self.dim());
        let mut done = 0;
        while done < n {
            let m = chunk_rows.max(1).min(n - done);
            for (_, x) in self.trajectory(model, m, &[0], rng, device) {
                out.extend_from_slice(&x);
            }
            done += m;
        }
        out
    }

    /// Draws x_t ~ q(x_t | x_0) for every row of `x0` at step `t` (t = 0 returns `x0`).
    pub fn forward_sample(&self, x0: &[f32], t: usize, rng: &mut Rng) -> Vec<f32> {
        if t == 0 {
            return x0.to_vec();
        }
        match self {
            Self::Gaussian(g) => {
                let (s, sd) = g.diffusion.q_sample_coefficients(t);
                x0.iter()
                    .map(|&x| (s * x as f64 + sd * rng.sample::<f64, _>(StandardNormal)) as f32)
                    .collect()
            }
            Self::Binomial(b) => x0
                .iter()
                .map(|&x| {
                    if rng.random::<f64>() < b.diffusion.q_one(t, x as f64) {
                        1.0
                    } else {
                        0.0
                    }
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;
    use diffusion_core::{BetaSchedule, MeanStderr};

    fn standard_normal_points(n: usize, d: usize, seed: u64) -> Vec<f32> {
        let mut rng = diffusion_data::rng(seed, 9);
        (0..n * d)
            .map(|_| rng.sample::<f64, _>(StandardNormal) as f32)
            .collect()
    }

    /// SPEC section 1: for x_0 ~ N(0, I) the forward process is stationary and its exact reversal
    /// is the forward kernel, which is the `paper` parametrization with z = 0 (the untrained
    /// network, whose readout starts at zero). Then the full-sum K equals L_null in expectation.
    #[test]
    fn forward_kernel_on_standard_normal_data_has_k_equal_to_l_null() {
        let device = Device::flex();
        for (schedule, steps) in [
            (BetaSchedule::linear(1e-4, 0.1), 100),
            (BetaSchedule::paper(), 40),
        ] {
            let bound = Diffusion::Gaussian(GaussianBound {
                diffusion: GaussianDiffusion::new(schedule.betas(steps).unwrap(), 2).unwrap(),
                parametrization: ReverseParametrization::Paper,
            });
            let model = ModelConfig::default().init(2, 4, steps, &device);
            let points = standard_normal_points(4000, 2, 1);
            let mut rng = diffusion_data::rng(2, 0);
            let k = bound.bound_bits_per_point(&model, &points, &mut rng, &device, 8192);
            let k = MeanStderr::of(&k).unwrap();
            let l_null = bound.l_null_bits(&[0.0, 0.0]);
            assert!(
                (k.mean - l_null).abs() < 3.0 * k.stderr,
                "T = {steps}: K = {} ± {}, L_null = {l_null}",
                k.mean,
                k.stderr
            );
            // and the estimate is informative: the standard error is small
            assert!(k.stderr < 0.05, "{}", k.stderr);
        }
    }

    /// The `epsilon-fixed` parametrization given the true noise is the exact posterior: its mean
    /// is mu~_t(x_t, x_0) and its variance b~_t, at every step.
    #[test]
    fn epsilon_with_the_true_noise_is_the_posterior() {
        let device = Device::flex();
        let steps = 50;
        let bound = GaussianBound {
            diffusion: GaussianDiffusion::new(
                BetaSchedule::linear(1e-3, 0.2).betas(steps).unwrap(),
                2,
            )
            .unwrap(),
            parametrization: ReverseParametrization::EpsilonFixed,
        };
        let n = 200;
        let x0 = standard_normal_points(n, 2, 11);
        let ts: Vec<usize> = (0..n).map(|i| 2 + i % (steps - 1)).collect();
        let mut rng = diffusion_data::rng(12, 0);
        let batch = bound.prepare(&x0, &ts, &mut rng, &device);
        let z = Tensor::cat(vec![batch.noise.clone(), batch.noise.clone() * 0.0], 1);
        let (mean, log_var) =
            bound
                .parametrization
                .mean_log_variance(z, batch.x_t.clone(), &batch.coefficients);
        let max_diff =
            |a: Tensor<2>, b: Tensor<2>| -> f32 { (a - b).abs().max().into_scalar::<f32>() };
        assert!(max_diff(mean, batch.posterior_mean.clone()) < 2e-5);
        let expected = batch.posterior_log_variance.clone().expand([n, 2]);
        assert!(max_diff(log_var, expected) < 1e-6);
    }

    /// The `epsilon` parametrization's variance runs over [b~_t, b_t]: ln b~_t as z_sigma goes
    /// to -inf, ln b_t as it goes to +inf, their mean at 0; its mean is `epsilon-fixed`'s.
    #[test]
    fn epsilon_variance_spans_the_posterior_to_the_forward_variance() {
        let device = Device::flex();
        let steps = 50;
        let diffusion =
            GaussianDiffusion::new(BetaSchedule::linear(1e-3, 0.2).betas(steps).unwrap(), 2)
                .unwrap();
        let n = 98;
        let x0 = standard_normal_points(n, 2, 13);
        let ts: Vec<usize> = (0..n).map(|i| 2 + i % (steps - 1)).collect();
        let mut rng = diffusion_data::rng(14, 0);
        let bound = GaussianBound {
            diffusion: diffusion.clone(),
            parametrization: ReverseParametrization::Epsilon,
        };
        let batch = bound.prepare(&x0, &ts, &mut rng, &device);
        let host_log = |t: usize, end: f64| -> f64 {
            let (_, _, post) = diffusion.posterior_coefficients(t);
            let (lo, hi) = (post.ln(), diffusion.beta(t).ln());
            lo + end * (hi - lo)
        };
        for (z_sigma, end) in [(-40.0f32, 0.0), (0.0, 0.5), (40.0, 1.0)] {
            let z = Tensor::cat(
                vec![batch.noise.clone(), batch.noise.clone() * 0.0 + z_sigma],
                1,
            );
            let (mean, log_var) =
                bound
                    .parametrization
                    .mean_log_variance(z, batch.x_t.clone(), &batch.coefficients);
            let diff = (mean - batch.posterior_mean.clone())
                .abs()
                .max()
                .into_scalar::<f32>();
            assert!(diff < 2e-5, "{diff}");
            let log_var = host(log_var);
            for (i, &t) in ts.iter().enumerate() {
                let want = host_log(t, end);
                assert!(
                    (log_var[2 * i] as f64 - want).abs() < 2e-5 * want.abs().max(1.0),
                    "t = {t}, z_sigma = {z_sigma}: {} vs {want}",
                    log_var[2 * i]
                );
            }
        }
    }

    /// The `learned` schedule's device-side bound, at its starting betas, is the fixed schedule's
    /// host-side one: the same KL terms for the same x_0, noise and t, and the same constant;
    /// and it has a gradient for the betas.
    #[test]
    fn learned_schedule_bound_equals_the_fixed_one_at_its_start() {
        let steps = 40;
        let betas = BetaSchedule::paper().betas(steps).unwrap();
        let bound = GaussianBound {
            diffusion: GaussianDiffusion::new(betas.clone(), 2).unwrap(),
            parametrization: ReverseParametrization::Paper,
        };
        let device = Device::flex().autodiff();
        let model = ModelConfig::default()
            .init(2, 4, steps, &device)
            .with_learned_schedule(&betas, &device);
        let n = 390;
        let x0: Vec<f32> = standard_normal_points(n, 2, 21)
            .into_iter()
            .map(|v| 0.5 * v + 0.3)
            .collect();
        let ts: Vec<usize> = (0..n).map(|i| 2 + i % (steps - 1)).collect();
        let mut rng = diffusion_data::rng(22, 0);
        let rows = bound.prepare_rows(&x0, &ts, &mut rng);
        let fixed = host(bound.kl_rows(&model, rows.clone().upload(&device)));
        let schedule = model.learned_schedule().unwrap();
        let (kl, constant) = bound.learned_kl_rows(&model, schedule, rows, &device);
        let learned = host(kl.clone());
        for (i, (a, b)) in fixed.iter().zip(&learned).enumerate() {
            assert!(
                (a - b).abs() < 2e-3 * a.abs().max(1.0),
                "row {i}, t = {}: {a} vs {b}",
                ts[i]
            );
        }
        let c = constant.clone().into_scalar::<f32>() as f64;
        let want = bound.diffusion.bound_constants().sum_bits();
        assert!((c - want).abs() < 1e-4, "{c} vs {want}");
        let grads = (kl.mean() - constant).backward();
        let g = host(schedule.logits_grad(&grads).unwrap());
        assert_eq!(g.len(), steps - 1);
        assert!(g.iter().all(|v| v.is_finite()) && g.iter().any(|&v| v != 0.0));
        let host_betas = schedule.host_betas();
        for (a, b) in host_betas.iter().zip(&betas) {
            assert!((a - b).abs() < 1e-6 * b.max(1e-3), "{a} vs {b}");
        }
    }

    /// The hybrid loss's KL terms are the bound's, and its noise error is `noise_error_rows`'.
    #[test]
    fn hybrid_parts_are_the_noise_error_and_the_kl() {
        let device = Device::flex();
        let steps = 30;
        let bound = GaussianBound {
            diffusion: GaussianDiffusion::new(
                BetaSchedule::linear(1e-3, 0.2).betas(steps).unwrap(),
                2,
            )
            .unwrap(),
            parametrization: ReverseParametrization::Epsilon,
        };
        let model = ModelConfig::default().init(2, 4, steps, &device);
        let n = 100;
        let x0 = standard_normal_points(n, 2, 31);
        let ts: Vec<usize> = (0..n).map(|i| 2 + i % (steps - 1)).collect();
        let mut rng = diffusion_data::rng(32, 0);
        let batch = bound.prepare(&x0, &ts, &mut rng, &device);
        let (mse, kl) = bound.hybrid_rows(&model, batch.clone());
        let want_mse = host(bound.noise_error_rows(&model, batch.clone()));
        let want_kl = host(bound.kl_rows(&model, batch));
        assert_eq!(host(mse), want_mse);
        assert_eq!(host(kl), want_kl);
    }

    /// The Monte-Carlo training estimate is unbiased for the full sum: on the same model, the
    /// mean of many training losses equals minus the full-sum K.
    #[test]
    fn monte_carlo_estimate_agrees_with_the_full_sum() {
        let device = Device::flex();
        let steps = 30;
        let bound = Diffusion::Gaussian(GaussianBound {
            diffusion: GaussianDiffusion::new(
                BetaSchedule::linear(1e-3, 0.2).betas(steps).unwrap(),
                2,
            )
            .unwrap(),
            parametrization: ReverseParametrization::Paper,
        });
        let model = ModelConfig::default().init(2, 4, steps, &device);
        // Points far from N(0, I) so the KL terms are large and vary with t.
        let points: Vec<f32> = standard_normal_points(2000, 2, 3)
            .into_iter()
            .map(|v| 0.3 * v + 1.0)
            .collect();
        let mut rng = diffusion_data::rng(4, 0);
        let full = bound.bound_bits_per_point(&model, &points, &mut rng, &device, 8192);
        let full = MeanStderr::of(&full).unwrap();
        let losses: Vec<f64> = (0..50)
            .map(|_| {
                bound
                    .training_loss(&model, &points, &mut rng, &device)
                    .into_scalar::<f32>() as f64
            })
            .collect();
        let mc = MeanStderr::of(&losses).unwrap();
        let tol = 3.0 * (full.stderr.powi(2) + mc.stderr.powi(2)).sqrt();
        assert!(
            (-mc.mean - full.mean).abs() < tol,
            "MC {} ± {}, full {} ± {}",
            -mc.mean,
            mc.stderr,
            full.mean,
            full.stderr
        );
    }

    /// SPEC section 2: for i.i.d. Bernoulli(pi) bits the chain is stationary and reversible, so
    /// the forward kernel is the exact reversal (the `paper` parametrization at z = 0), and the
    /// full-sum K equals L_null in expectation. Checked with both ways of conditioning on t.
    #[test]
    fn forward_kernel_on_bernoulli_data_has_k_equal_to_l_null() {
        use crate::model::TimeConditioning;
        let device = Device::flex();
        let (steps, pi, d) = (60, 0.3, 8);
        let bound = Diffusion::Binomial(BinomialBound {
            diffusion: BinomialDiffusion::new(
                BetaSchedule::Reciprocal.raw_betas(steps).unwrap(),
                pi,
                d,
            )
            .unwrap(),
            parametrization: ReverseParametrization::Paper,
        });
        let mut rng = diffusion_data::rng(5, 0);
        let points: Vec<f32> = (0..3000 * d)
            .map(|_| if rng.random::<f64>() < pi { 1.0 } else { 0.0 })
            .collect();
        for time in [TimeConditioning::Embedding, TimeConditioning::Readout] {
            let config = ModelConfig {
                hidden: vec![16],
                time,
                ..ModelConfig::default()
            };
            let model = config.init(d, d, steps, &device);
            let k = bound.bound_bits_per_point(&model, &points, &mut rng, &device, 8192);
            // K - L_null per point has expectation 0; compare the means of the paired values.
            let diffs: Vec<f64> = k
                .iter()
                .zip(points.chunks(d))
                .map(|(k, r)| k - bound.l_null_bits(r))
                .collect();
            let diff = MeanStderr::of(&diffs).unwrap();
            assert!(
                diff.mean.abs() < 3.0 * diff.stderr,
                "{time:?}: K - L_null = {} ± {} (K = {})",
                diff.mean,
                diff.stderr,
                MeanStderr::of(&k).unwrap().mean,
            );
            assert!(diff.stderr < 0.1, "{}", diff.stderr);
        }
    }

    /// Sampling from the forward kernel on Bernoulli(pi) bits returns Bernoulli(pi) bits.
    #[test]
    fn binomial_sampling_from_the_forward_kernel_keeps_the_rate() {
        let device = Device::flex();
        let (steps, pi, d) = (30, 0.2, 10);
        let bound = Diffusion::Binomial(BinomialBound {
            diffusion: BinomialDiffusion::new(
                BetaSchedule::Reciprocal.raw_betas(steps).unwrap(),
                pi,
                d,
            )
            .unwrap(),
            parametrization: ReverseParametrization::Paper,
        });
        let model = ModelConfig::default().init(d, d, steps, &device);
        let mut rng = diffusion_data::rng(6, 0);
        let s = bound.sample(&model, 4000, &mut rng, &device, 1000);
        assert!(s.iter().all(|&v| v == 0.0 || v == 1.0));
        let rate = s.iter().map(|&v| v as f64).sum::<f64>() / s.len() as f64;
        // s.e. of the rate over 40,000 bits is 0.002
        assert!((rate - pi).abs() < 0.01, "{rate}");
    }
}
