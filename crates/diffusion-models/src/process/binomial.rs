//! Binomial diffusion on bits with a reverse network: batch preparation, the KL rows of the
//! bound, and the reverse chain.
//!
//! Two parametrizations: `direct` is the paper's heartbeat model, f_b = sigmoid(z); `paper` adds
//! the forward kernel's logit, f_b = sigmoid(z + logit(x_t (1 - b_t) + pi b_t)), so that, as
//! with the Gaussian `paper` parametrization, the untrained network (z = 0) is the forward
//! kernel.

use burn::tensor::{Device, Int, Tensor, TensorData};
use diffusion_core::{BinomialDiffusion, ReverseParametrization};
use diffusion_data::Rng;
use rand::Rng as _;

use super::{Objective, Process, StepLoss, TrainingBatch, host, steps_tensor, tensor2};
use crate::condition::{ConditionMode, Conditioning, Particles, StepFactor, Variable, pick_rows};
use crate::network::{ReverseModel, ReverseNetwork};

/// A binomial diffusion with its reverse parametrization.
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

/// The host values of a set of binary (x_0, t) rows, before upload.
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
    /// The reverse kernel's logits at step `t` for bits `x` (`[n, d]` of 0/1): the network's
    /// output, offset by the forward kernel's logit(x (1 - b_t) + pi b_t) (selected exactly per
    /// bit) for the `paper` parametrization.
    pub(crate) fn logits_at<N: ReverseNetwork>(
        &self,
        network: &N,
        x: &Tensor<2>,
        t: usize,
    ) -> Tensor<2> {
        let kernel = || {
            let [k0, k1] = [0.0, 1.0].map(|v| logit(self.diffusion.forward_kernel(t, v)) as f32);
            x.clone() * k1 + (x.clone().neg() + 1.0) * k0
        };
        self.logits(network.forward_at(x.clone(), t), kernel)
    }

    /// The reverse kernel's logits from the network's output `z`.
    fn logits(&self, z: Tensor<2>, kernel_logit: impl FnOnce() -> Tensor<2>) -> Tensor<2> {
        match self.parametrization {
            ReverseParametrization::Paper => z + kernel_logit(),
            // the noise-predicting parametrizations are refused for binary data by
            // config validation; the network's outputs are then the logits themselves
            _ => z,
        }
    }

    /// KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) per row, in nats, `[n]`.
    pub fn kl_batch<N: ReverseNetwork>(&self, network: &N, batch: BinomialBatch) -> Tensor<1> {
        let kernel_logit = batch.kernel_logit;
        let z = network.forward(batch.x_t, batch.t);
        let logits = self.logits(z, || kernel_logit);
        diffusion_core::kl_bernoulli_logits(batch.posterior, batch.posterior_entropy, logits)
    }
}

impl Process for BinomialBound {
    type Rows = BinomialRows;
    /// Every per-step value of a binary row depends on its bits, so it is built with the row.
    type Tables = ();

    fn steps(&self) -> usize {
        self.diffusion.steps()
    }

    fn dim(&self) -> usize {
        self.diffusion.dim()
    }

    fn variable(&self) -> Variable {
        Variable::Binary
    }

    fn output_dim(&self) -> usize {
        self.diffusion.dim()
    }

    fn tables(&self, _device: &Device) {}

    fn prepare_rows(&self, x0: &[f32], ts: &[usize], rng: &mut Rng) -> BinomialRows {
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

    fn kl_rows<N: ReverseNetwork>(
        &self,
        _tables: &(),
        network: &N,
        rows: BinomialRows,
        device: &Device,
    ) -> Tensor<1> {
        self.kl_batch(network, rows.upload(device))
    }

    /// Binary data are trained on the bound only (config validation refuses the others).
    fn step_loss<N: ReverseNetwork>(
        &self,
        tables: &(),
        model: &ReverseModel<N>,
        batch: TrainingBatch<BinomialRows>,
        _objective: Objective,
        device: &Device,
    ) -> StepLoss {
        let (rows, weights) = batch.into_parts(self.steps(), device);
        let kl = self.kl_rows(tables, &model.network, rows, device);
        StepLoss {
            loss: weights.bound_loss(&kl),
            kl: Some(kl),
        }
    }

    fn bound_constant_bits(&self, x0: &[f32]) -> f64 {
        self.diffusion.bound_constant_bits(x0)
    }

    fn l_null_bits(&self, x0: &[f32]) -> f64 {
        self.diffusion.l_null_bits(x0)
    }

    /// x_T ~ Bernoulli(pi), the network's kernel for t = T..2, then the fixed edge step
    /// p(x_0 = 1 | x_1) = x_1 (1 - b_1) + pi b_1.
    fn trajectory_given<N: ReverseNetwork>(
        &self,
        network: &N,
        n: usize,
        keep: &[usize],
        given: Option<&Conditioning>,
        rng: &mut Rng,
        device: &Device,
    ) -> Vec<(usize, Vec<f32>)> {
        let d = self.diffusion.dim();
        let pi = self.diffusion.pi();
        let steps = self.steps();
        let uniform =
            |rng: &mut Rng| -> Vec<f32> { (0..n * d).map(|_| rng.random::<f32>()).collect() };
        // the factor r_k of the step that draws x_k
        let factor = |k: usize, rng: &mut Rng| {
            given.map(|c| c.binary_step(n, self.diffusion.alpha_bar(k), pi, rng))
        };
        // a draw of bits with probabilities p of a 1 on the host, times the factor
        let draw_host = |p: &dyn Fn(usize) -> f64, f: Option<&StepFactor>, rng: &mut Rng| {
            let u = uniform(rng);
            match f {
                None => (0..n * d)
                    .map(|j| if (u[j] as f64) < p(j) { 1.0 } else { 0.0 })
                    .collect(),
                Some(f) => {
                    let p: Vec<f64> = (0..n * d).map(p).collect();
                    let u: Vec<f64> = u.iter().map(|&v| v as f64).collect();
                    f.binary_draw_host(&p, &u)
                }
            }
        };
        let mut out = Vec::new();
        let mut snapshot = |t: usize, x: &[f32]| {
            if keep.contains(&t) {
                out.push((t, x.to_vec()));
            }
        };
        // x_T ~ Bernoulli(pi), times r_T
        let top = factor(steps, rng);
        let x_top = draw_host(&|_| pi, top.as_ref(), rng);
        snapshot(steps, &x_top);
        // the chain stays on the device; only the uniforms (and factors) go up each step
        let mut x = tensor2(x_top, n, d, device);
        let mut prev = top.map(|f| f.upload(n, d, device));
        let constant = given
            .filter(|c| c.mode() == ConditionMode::Constant)
            .and(prev.clone());
        // with resampling, each step first weighs the chains by Z_t(x_t) / r_t(x_t) and may
        // resample them (then the kernel's rows go with their chains)
        let mut particles = given.filter(|c| c.resamples()).map(|_| Particles::new(n));
        for t in (2..=steps).rev() {
            // logit(x (1 - b_t) + pi b_t) for x in {0, 1}, selected exactly per bit
            let mut logits = self.logits_at(network, &x, t);
            let f = match &constant {
                Some(f) => Some(f.clone()),
                None => factor(t - 1, rng).map(|f| f.upload(n, d, device)),
            };
            if let Some(f) = &f {
                if let (Some(p), Some(h)) = (particles.as_mut(), &prev) {
                    let lw = host(f.binary_log_weight(&logits, &x, h));
                    if let Some(picks) = p.reweigh(&lw, false, rng) {
                        logits = pick_rows(logits, &picks);
                    }
                }
                logits = f.binary_logits(logits);
            }
            let u = tensor2(uniform(rng), n, d, device);
            x = u.lower(burn::tensor::activation::sigmoid(logits)).float();
            if let Some(f) = f {
                x = f.put_known(x);
                prev = Some(f);
            }
            if keep.contains(&(t - 1)) {
                snapshot(t - 1, &host(x.clone()));
            }
        }
        // the fixed edge step q(x_0 | x_1), times r_0
        let bottom = factor(0, rng);
        if let (Some(p), Some(f), Some(h)) = (particles.as_mut(), &bottom, &prev) {
            let logits: Vec<f32> = host(x.clone())
                .iter()
                .map(|&v| logit(self.diffusion.forward_kernel(1, v as f64)) as f32)
                .collect();
            let f = f.clone().upload(n, d, device);
            let lw = host(f.binary_log_weight(&tensor2(logits, n, d, device), &x, h));
            if let Some(picks) = p.reweigh(&lw, true, rng) {
                x = pick_rows(x, &picks);
            }
        }
        let x1 = host(x);
        let x0 = draw_host(
            &|j| self.diffusion.forward_kernel(1, x1[j] as f64),
            bottom.as_ref(),
            rng,
        );
        snapshot(0, &x0);
        out
    }

    fn forward_sample(&self, x0: &[f32], t: usize, rng: &mut Rng) -> Vec<f32> {
        if t == 0 {
            return x0.to_vec();
        }
        x0.iter()
            .map(|&x| {
                if rng.random::<f64>() < self.diffusion.q_one(t, x as f64) {
                    1.0
                } else {
                    0.0
                }
            })
            .collect()
    }
}
