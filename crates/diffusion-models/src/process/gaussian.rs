//! Gaussian diffusion with a reverse network: batch preparation, the KL rows of the bound
//! (with the `learned` schedule's differentiable variant), the noise-prediction losses, and the
//! reverse chain.
//!
//! What does not depend on the network (x_t, the posterior mean) is computed on the host in f64
//! from seeded generators; the per-step coefficients live on the device in one table per run
//! ([`GaussianTables`]) and are gathered by t there.

use burn::tensor::{Device, Int, Tensor, TensorData};
use diffusion_core::{GaussianDiffusion, ReverseParametrization, StepCoefficients};
use diffusion_data::Rng;
use rand::Rng as _;
use rand_distr::StandardNormal;

use super::chain::{self, Factor, ReverseChain, StepKernel};
use super::respaced::Respaced;
use super::{
    Decoder, DecoderRows, GaussianTables, Objective, Posterior, Process, StepLoss, TrainingBatch,
    steps_tensor, tensor2,
};
use crate::condition::{Conditioning, DeviceFactor, StepFactor, Variable, pick_rows};
use crate::config::LossKind;
use crate::network::{ReverseModel, ReverseNetwork};
use crate::tensors::normal;

/// A Gaussian diffusion with its reverse parametrization.
#[derive(Debug, Clone)]
pub struct GaussianBound {
    /// The forward process.
    pub diffusion: GaussianDiffusion,
    /// The reverse parametrization.
    pub parametrization: ReverseParametrization,
    /// Noise-predicting parametrizations: the data's range, which the implied x_0 is clipped
    /// to before it forms the reverse kernel's mean (`clip_denoised`).
    pub clip: Option<ClipRange>,
    /// Integer data: the last reverse step is the network's kernel at t = 1 discretised to the
    /// data's bins (DDPM's decoder), and the bound's terms run over t = 1..T; `None`: the
    /// paper's fixed edge step.
    pub decoder: Option<Decoder>,
    /// A shorter chain of a trained network ([`GaussianBound::respaced`]): the steps the
    /// network is called at and how its kernel maps onto this chain; `None`: the chain the
    /// network was trained on.
    pub respaced: Option<Respaced<GaussianDiffusion>>,
}

/// The range of the data in the space the process diffuses, one interval per coordinate: the
/// reverse kernel's mean is the posterior mean c_0 x̂_0 + c_t x_t of the network's x̂_0 =
/// (x_t - sqrt(1 - abar_t) ε̂) / sqrt(abar_t) clipped to it. Where abar_t is small (the last
/// steps of a cosine schedule, b_T = 0.999) an error δ in ε̂ moves the unclipped mean by
/// δ b_t / sqrt(a_t (1 - abar_t)), some 30 δ; clipped, by at most c_0 times the range.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipRange {
    /// The lower ends, one per coordinate.
    pub low: Vec<f32>,
    /// The upper ends.
    pub high: Vec<f32>,
}

/// The device tensors of a set of (x_0, t) rows.
#[derive(Debug, Clone)]
pub struct GaussianBatch {
    /// x_t ~ q(x_t | x_0), `[n, d]`.
    pub x_t: Tensor<2>,
    /// The steps the network is called at, `[n]` (the rows' own, except on a respaced chain).
    pub t: Tensor<1, Int>,
    /// The posterior mean mu~_t, `[n, d]`.
    pub posterior_mean: Tensor<2>,
    /// The posterior variance b~_t, `[n, 1]`.
    pub posterior_variance: Tensor<2>,
    /// Its logarithm, `[n, 1]`.
    pub posterior_log_variance: Tensor<2>,
    /// Step coefficients for the parametrization.
    pub coefficients: StepCoefficients,
    /// The posterior mean's weights (for a clipped x̂_0).
    pub posterior: Posterior,
    /// The noise eps that made x_t from x_0, `[n, d]`.
    pub noise: Tensor<2>,
    /// With a decoder, when some rows are at step 1: those rows and their bins.
    pub decoder: Option<DecoderRows>,
    /// A mapped respaced chain's [A, B, C, D] per row, `[n, 1]` each
    /// ([`Respaced::mapped_from`]).
    pub map: Option<[Tensor<2>; 4]>,
}

/// The host values of a set of Gaussian (x_0, t) rows, before upload: built on any thread
/// ([`Process::prepare_rows`]), uploaded on the one that runs the network
/// ([`GaussianRows::upload`]).
#[derive(Debug, Clone)]
pub struct GaussianRows {
    pub(super) d: usize,
    pub(super) ts: Vec<usize>,
    pub(super) x0: Vec<f32>,
    x_t: Vec<f32>,
    mean: Vec<f32>,
    pub(super) noise: Vec<f32>,
}

impl super::SplitRows for GaussianRows {
    fn split_off(&mut self, at: usize) -> Self {
        let d = self.d;
        GaussianRows {
            d,
            ts: self.ts.split_off(at),
            x0: self.x0.split_off(at * d),
            x_t: self.x_t.split_off(at * d),
            mean: self.mean.split_off(at * d),
            noise: self.noise.split_off(at * d),
        }
    }
}

impl GaussianRows {
    /// The device tensors of these rows, their step coefficients gathered from `tables`.
    pub fn upload(self, tables: &GaussianTables, device: &Device) -> GaussianBatch {
        let n = self.ts.len();
        let decoder = tables
            .decoder
            .as_ref()
            .filter(|_| self.ts.contains(&1))
            .map(|decoder| {
                let (lower, upper) = decoder.bins(&self.x0);
                let first: Vec<bool> = self.ts.iter().map(|&t| t == 1).collect();
                DecoderRows {
                    first: Tensor::from_data(TensorData::new(first, [n]), device),
                    lower: tensor2(lower, n, self.d, device),
                    upper: tensor2(upper, n, self.d, device),
                }
            });
        let t = steps_tensor(&self.ts, device);
        let rows = tables.table.clone().select(0, t.clone());
        let map = tables.map_columns(&rows);
        let (coefficients, posterior_variance, posterior_log_variance, posterior) =
            GaussianTables::columns(rows);
        let t = match &tables.network_steps {
            Some(_) => {
                let mapped: Vec<usize> = self.ts.iter().map(|&t| tables.network_step(t)).collect();
                steps_tensor(&mapped, device)
            }
            None => t,
        };
        GaussianBatch {
            x_t: tensor2(self.x_t, n, self.d, device),
            t,
            posterior_mean: tensor2(self.mean, n, self.d, device),
            posterior_variance,
            posterior_log_variance,
            coefficients,
            posterior,
            noise: tensor2(self.noise, n, self.d, device),
            decoder,
            map,
        }
    }
}

impl GaussianBound {
    /// The terms of a batch given the network's output `z` for it: the KL term, or at step 1
    /// with a decoder minus the log-probability of x_0's bins (nats, `[n]`).
    fn kl_of_output(
        &self,
        tables: &GaussianTables,
        z: Tensor<2>,
        batch: GaussianBatch,
    ) -> Tensor<1> {
        let (mean, log_var) = tables.kernel(
            self.parametrization,
            z,
            batch.x_t.clone(),
            &batch.coefficients,
            &batch.posterior,
        );
        let (mean, log_var) = match batch.map {
            Some([a, b, c, d]) => (mean * a + batch.x_t * b, log_var * c + d),
            None => (mean, log_var),
        };
        let Some(decoder) = batch.decoder else {
            return diffusion_kernels::kl_diag_gaussian(
                batch.posterior_mean,
                batch.posterior_variance,
                batch.posterior_log_variance,
                mean,
                log_var,
            );
        };
        let kl = diffusion_kernels::kl_diag_gaussian(
            batch.posterior_mean,
            batch.posterior_variance,
            batch.posterior_log_variance,
            mean.clone(),
            log_var.clone(),
        );
        let n = kl.dims()[0];
        let log_p = diffusion_core::decoder::discretized_gaussian_log_prob(
            decoder.lower,
            decoder.upper,
            mean,
            log_var,
        );
        kl.mask_where(decoder.first, log_p.sum_dim(1).reshape([n]).neg())
    }

    /// KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) per row, in nats, `[n]`.
    pub fn kl_batch<N: ReverseNetwork>(
        &self,
        network: &N,
        tables: &GaussianTables,
        batch: GaussianBatch,
    ) -> Tensor<1> {
        let z = network.forward(batch.x_t.clone(), batch.t.clone());
        self.kl_of_output(tables, z, batch)
    }

    /// The noise-prediction loss of Ho et al. (2020) per row: ||eps - z_mu||^2 summed over
    /// the d coordinates, `[n]` (the `epsilon` parametrization's first d outputs).
    pub fn noise_error_rows<N: ReverseNetwork>(
        &self,
        network: &N,
        batch: GaussianBatch,
    ) -> Tensor<1> {
        let z = network.forward(batch.x_t, batch.t);
        let [n, _] = z.dims();
        let d = self.diffusion.dim();
        let diff = z.slice([0..n, 0..d]) - batch.noise;
        (diff.clone() * diff).sum_dim(1).reshape([n])
    }

    /// The hybrid loss's two parts per row, `[n]` each: the noise error ||eps - z_mu||^2 and
    /// the KL term (nats) with the mean held fixed, so that its gradient reaches only the
    /// variance (Nichol and Dhariwal 2021, section 3.1).
    pub fn hybrid_rows<N: ReverseNetwork>(
        &self,
        network: &N,
        tables: &GaussianTables,
        batch: GaussianBatch,
    ) -> (Tensor<1>, Tensor<1>) {
        let z = network.forward(batch.x_t.clone(), batch.t.clone());
        let [n, two_d] = z.dims();
        let d = two_d / 2;
        let z_mu = z.clone().slice([0..n, 0..d]);
        let diff = z_mu.clone() - batch.noise.clone();
        let mse = (diff.clone() * diff).sum_dim(1).reshape([n]);
        let held = Tensor::cat(vec![z_mu.detach(), z.slice([0..n, d..two_d])], 1);
        (mse, self.kl_of_output(tables, held, batch))
    }

    /// The reverse kernel's mean and log-variance at step `t` for the rows `x` (`[n, d]`).
    pub fn mean_log_variance<N: ReverseNetwork>(
        &self,
        network: &N,
        tables: &GaussianTables,
        x: Tensor<2>,
        t: usize,
    ) -> (Tensor<2>, Tensor<2>) {
        let z = crate::network::forward_at_rows(network, x.clone(), tables.network_step(t));
        let (coefficients, _, _, posterior) =
            GaussianTables::columns(tables.table.clone().narrow(0, t, 1));
        let (mean, log_var) = tables.kernel(
            self.parametrization,
            z,
            x.clone(),
            &coefficients,
            &posterior,
        );
        match tables.map(t) {
            Some([a, b, c, d]) => (mean * a + x * b, log_var * c + d),
            None => (mean, log_var),
        }
    }
}

impl GaussianBound {
    /// `diffusion` with the reverse `parametrization`, no clip range, the paper's edge step, the
    /// network called at the chain's own steps.
    pub fn new(diffusion: GaussianDiffusion, parametrization: ReverseParametrization) -> Self {
        Self {
            diffusion,
            parametrization,
            clip: None,
            decoder: None,
            respaced: None,
        }
    }
}

impl Process for GaussianBound {
    type Rows = GaussianRows;
    type Tables = GaussianTables;

    fn steps(&self) -> usize {
        self.diffusion.steps()
    }

    fn dim(&self) -> usize {
        self.diffusion.dim()
    }

    fn first_step(&self) -> usize {
        if self.decoder.is_some() { 1 } else { 2 }
    }

    fn variable(&self) -> Variable {
        Variable::Continuous
    }

    fn output_dim(&self) -> usize {
        2 * self.diffusion.dim()
    }

    fn tables(&self, device: &Device) -> GaussianTables {
        GaussianTables::new(self, device)
    }

    fn prepare_rows(&self, x0: &[f32], ts: &[usize], rng: &mut Rng) -> GaussianRows {
        let d = self.diffusion.dim();
        debug_assert_eq!(x0.len(), ts.len() * d);
        let mut x_t = Vec::with_capacity(x0.len());
        let mut mean = Vec::with_capacity(x0.len());
        let mut noise = Vec::with_capacity(x0.len());
        for (row, &t) in x0.chunks_exact(d).zip(ts) {
            let (s, sd) = self.diffusion.q_sample_coefficients(t);
            let (c0, ct, _) = self.diffusion.posterior_coefficients(t);
            for &x in row {
                let eps: f64 = rng.sample(StandardNormal);
                noise.push(eps as f32);
                let xt = s * x as f64 + sd * eps;
                x_t.push(xt as f32);
                mean.push((c0 * x as f64 + ct * xt) as f32);
            }
        }
        GaussianRows {
            d,
            ts: ts.to_vec(),
            x0: x0.to_vec(),
            x_t,
            mean,
            noise,
        }
    }

    fn kl_rows<N: ReverseNetwork>(
        &self,
        tables: &GaussianTables,
        network: &N,
        rows: GaussianRows,
        device: &Device,
    ) -> Tensor<1> {
        self.kl_batch(network, tables, rows.upload(tables, device))
    }

    fn step_loss<N: ReverseNetwork>(
        &self,
        tables: &GaussianTables,
        model: &ReverseModel<N>,
        batch: TrainingBatch<GaussianRows>,
        objective: Objective,
        device: &Device,
    ) -> StepLoss {
        let (rows, weights) = batch.into_parts(self.terms(), device);
        let net = &model.network;
        match (objective.loss, model.learned_schedule()) {
            (LossKind::Bound, Some(schedule)) => {
                let (kl, constant) = self.learned_kl_rows(net, schedule, rows, device);
                let loss = weights.kl_bits(&kl) - constant;
                StepLoss { loss, kl: Some(kl) }
            }
            (LossKind::Bound, None) => {
                let kl = self.kl_rows(tables, net, rows, device);
                StepLoss {
                    loss: weights.bound_loss(&kl),
                    kl: Some(kl),
                }
            }
            (LossKind::Mse, _) => StepLoss {
                loss: self
                    .noise_error_rows(net, rows.upload(tables, device))
                    .mean(),
                kl: None,
            },
            (LossKind::Hybrid, _) => {
                let (mse, kl) = self.hybrid_rows(net, tables, rows.upload(tables, device));
                StepLoss {
                    loss: mse.mean() + weights.bound_loss(&kl) * objective.hybrid_weight,
                    kl: Some(kl),
                }
            }
        }
    }

    fn bound_constant_bits(&self, x0: &[f32]) -> f64 {
        self.mean_bound_constant_bits(x0)
    }

    fn mean_bound_constant_bits(&self, x0: &[f32]) -> f64 {
        match self.decoder {
            Some(_) => self.diffusion.mean_decoder_constant_bits(x0),
            None => self.diffusion.mean_bound_constant_bits(x0),
        }
    }

    fn l_null_bits(&self, _x0: &[f32]) -> f64 {
        self.diffusion.l_null_bits()
    }

    /// x_T ~ N(0, I), the network's kernel for t = T..2, then the paper's fixed edge step
    /// p(x_0 | x_1) = N(sqrt(1 - b_1) x_1, b_1 I), or with a decoder the network's kernel at
    /// t = 1 (a draw of it, which the data's bins make a draw of the discretised decoder).
    fn trajectory_given<N: ReverseNetwork>(
        &self,
        network: &N,
        n: usize,
        keep: &[usize],
        given: Option<&Conditioning>,
        rng: &mut Rng,
        device: &Device,
    ) -> Vec<(usize, Vec<f32>)> {
        chain::run(self, network, n, keep, given, rng, device)
    }

    fn forward_sample(&self, x0: &[f32], t: usize, rng: &mut Rng) -> Vec<f32> {
        if t == 0 {
            return x0.to_vec();
        }
        let (s, sd) = self.diffusion.q_sample_coefficients(t);
        x0.iter()
            .map(|&x| (s * x as f64 + sd * rng.sample::<f64, _>(StandardNormal)) as f32)
            .collect()
    }
}

/// A Gaussian step's kernel: without a condition its draw, made when the kernel is; with one,
/// N(mean, var) and the standard normals of its draw.
#[allow(clippy::large_enum_variant)] // one per step, moved, never stored
pub(crate) enum GaussianKernel {
    /// The chain's next x.
    Drawn(Tensor<2>),
    /// The kernel's moments and noise, for the factor to multiply.
    Moments {
        mean: Tensor<2>,
        var: Tensor<2>,
        eps: Tensor<2>,
    },
}

impl StepKernel for GaussianKernel {
    fn log_weight(
        &self,
        x: &Tensor<2>,
        f: &DeviceFactor,
        prev: Option<&DeviceFactor>,
    ) -> Tensor<1> {
        match self {
            Self::Moments { mean, var, .. } => f.gaussian_log_weight(mean, var, x, prev),
            Self::Drawn(_) => unreachable!("only conditioned chains are weighed"),
        }
    }

    fn pick(self, picks: &[usize]) -> Self {
        match self {
            Self::Moments { mean, var, eps } => Self::Moments {
                mean: pick_rows(mean, picks),
                var: pick_rows(var, picks),
                eps,
            },
            drawn => drawn,
        }
    }

    fn draw(self, f: Option<&Factor>, _rng: &mut Rng, _device: &Device) -> Tensor<2> {
        match (self, f) {
            (Self::Drawn(x), _) => x,
            (Self::Moments { mean, var, eps }, Some(f)) => f.device.gaussian_draw(mean, var, eps),
            (Self::Moments { mean, var, eps }, None) => mean + var.sqrt() * eps,
        }
    }
}

impl ReverseChain for GaussianBound {
    type Kernel = GaussianKernel;

    fn prior(&self, n: usize, conditioned: bool, rng: &mut Rng, device: &Device) -> GaussianKernel {
        let eps = normal(rng, n, self.diffusion.dim(), device);
        if conditioned {
            GaussianKernel::Moments {
                mean: eps.zeros_like(),
                var: eps.ones_like(),
                eps,
            }
        } else {
            GaussianKernel::Drawn(eps)
        }
    }

    /// The network's kernel, or at t = 1 without a decoder the paper's fixed edge step
    /// N(sqrt(1 - b_1) x_1, b_1).
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
        let [n, d] = x.dims();
        if t == 1 && self.decoder.is_none() {
            let b1 = self.diffusion.beta(1);
            let eps = normal(rng, n, d, device);
            return if conditioned {
                GaussianKernel::Moments {
                    var: x.ones_like() * b1,
                    mean: x.clone() * (1.0 - b1).sqrt(),
                    eps,
                }
            } else {
                GaussianKernel::Drawn(x.clone() * (1.0 - b1).sqrt() + eps * b1.sqrt())
            };
        }
        let (mean, log_var) = self.mean_log_variance(network, tables, x.clone(), t);
        let eps = normal(rng, n, d, device);
        if conditioned {
            GaussianKernel::Moments {
                mean,
                var: log_var.exp(),
                eps,
            }
        } else {
            GaussianKernel::Drawn(mean + (log_var * 0.5).exp() * eps)
        }
    }

    fn step_factor(&self, given: &Conditioning, n: usize, k: usize, rng: &mut Rng) -> StepFactor {
        given.gaussian_step(n, self.diffusion.alpha_bar(k), rng)
    }

    /// N(sqrt(1 - b_t) x_{t-1}, b_t).
    fn renoise(&self, x: Tensor<2>, t: usize, rng: &mut Rng, device: &Device) -> Tensor<2> {
        let [n, d] = x.dims();
        let b = self.diffusion.beta(t);
        x * (1.0 - b).sqrt() + normal(rng, n, d, device) * b.sqrt()
    }

    /// ln N(y; x̂_0, s² + 1 - abar_t) summed over the factor's coordinates, x̂_0 = (μ - c_t x_t)
    /// / c_0 the kernel's implied x_0.
    fn twist_log(
        &self,
        kernel: &GaussianKernel,
        x: &Tensor<2>,
        t: usize,
        r: &DeviceFactor,
    ) -> Tensor<1> {
        let GaussianKernel::Moments { mean, .. } = kernel else {
            unreachable!("conditioned chains have their kernels' moments")
        };
        let (c0, ct, _) = self.diffusion.posterior_coefficients(t);
        let x0_hat = (mean.clone() - x.clone() * ct) / c0;
        // r's integral against N(x̂_0, 1 - abar_t): its ln Z alone
        let spread = x0_hat.ones_like() * (1.0 - self.diffusion.alpha_bar(t));
        r.gaussian_log_weight(&x0_hat, &spread, x, None)
    }
}
