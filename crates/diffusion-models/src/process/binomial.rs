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

use super::chain::{self, Factor, ReverseChain, StepKernel};
use super::respaced::{BinomialTables, Respaced};
use super::{Objective, Process, StepLoss, TrainingBatch, host, steps_tensor, tensor2};
use crate::condition::{Conditioning, DeviceFactor, StepFactor, Variable, pick_rows};
use crate::network::{ReverseModel, ReverseNetwork};

/// A binomial diffusion with its reverse parametrization.
#[derive(Debug, Clone)]
pub struct BinomialBound {
    /// The forward process.
    pub diffusion: BinomialDiffusion,
    /// The reverse parametrization.
    pub parametrization: ReverseParametrization,
    /// A shorter chain of a trained network ([`BinomialBound::respaced`]); `None`: the chain the
    /// network was trained on.
    pub respaced: Option<Respaced<BinomialDiffusion>>,
}

/// The device tensors of a set of binary (x_0, t) rows.
#[derive(Debug, Clone)]
pub struct BinomialBatch {
    /// x_t ~ q(x_t | x_0), `[n, d]` of 0/1.
    pub x_t: Tensor<2>,
    /// The steps the network is called at, `[n]` (the rows' own, except on a respaced chain).
    pub t: Tensor<1, Int>,
    /// The rows' steps.
    pub steps: Vec<usize>,
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
    network_ts: Vec<usize>,
    x_t: Vec<f32>,
    posterior: Vec<f32>,
    entropy: Vec<f32>,
    kernel_logit: Vec<f32>,
}

impl super::SplitRows for BinomialRows {
    fn split_off(&mut self, at: usize) -> Self {
        let d = self.d;
        BinomialRows {
            d,
            ts: self.ts.split_off(at),
            network_ts: self.network_ts.split_off(at),
            x_t: self.x_t.split_off(at * d),
            posterior: self.posterior.split_off(at * d),
            entropy: self.entropy.split_off(at),
            kernel_logit: self.kernel_logit.split_off(at * d),
        }
    }
}

impl BinomialRows {
    /// The device tensors of these rows.
    pub fn upload(self, device: &Device) -> BinomialBatch {
        let n = self.ts.len();
        BinomialBatch {
            x_t: tensor2(self.x_t, n, self.d, device),
            t: steps_tensor(&self.network_ts, device),
            steps: self.ts,
            posterior: tensor2(self.posterior, n, self.d, device),
            posterior_entropy: Tensor::from_data(TensorData::new(self.entropy, [n]), device),
            kernel_logit: tensor2(self.kernel_logit, n, self.d, device),
        }
    }
}

fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

/// [`diffusion_core::kl_bernoulli_logits`] with the log-sigmoids through
/// [`diffusion_kernels::activate`] (vectorised on flex, with its derivative from the output).
pub(crate) fn kl_bernoulli_logits(
    q: Tensor<2>,
    entropy: Tensor<1>,
    logits: Tensor<2>,
) -> Tensor<1> {
    use diffusion_kernels::{Activation, activate};
    let log_p1 = activate(logits.clone(), Activation::LogSigmoid);
    let log_p0 = activate(logits.neg(), Activation::LogSigmoid);
    diffusion_core::kl_bernoulli_log_probs(q, entropy, log_p1, log_p0)
}

/// What one bit of a row contributes, given x_0, t and its draw x_t.
#[derive(Debug, Clone, Copy)]
struct BitValues {
    x_t: f32,
    /// q(x_{t-1} = 1 | x_t, x_0).
    posterior: f32,
    /// q ln q + (1 - q) ln(1 - q) of that posterior (0 at q = 0 or 1).
    entropy_term: f64,
    /// logit q(x_{t-1} = 1 | x_t) as if stationary.
    kernel_logit: f32,
}

impl BitValues {
    /// The values of a bit x_0 = `x` at `bound`'s step `t`, x_t drawn by the uniform `u`.
    fn new(bound: &BinomialBound, t: usize, x: f64, u: f64) -> Self {
        let diffusion = &bound.diffusion;
        let xt = if u < diffusion.q_one(t, x) { 1.0 } else { 0.0 };
        let q = diffusion.posterior_one(t, x, xt);
        let entropy_term = if q > 0.0 && q < 1.0 {
            q * q.ln() + (1.0 - q) * (1.0 - q).ln()
        } else {
            0.0
        };
        Self {
            x_t: xt as f32,
            posterior: q as f32,
            entropy_term,
            kernel_logit: {
                let (chain, step) = bound.kernel_step(t);
                logit(chain.forward_kernel(step, xt)) as f32
            },
        }
    }
}

/// The [`BitValues`] of x_0 in {0, 1} at one step, for both draws of x_t: the same numbers
/// [`BitValues::new`] gives, computed once per step instead of once per bit.
#[derive(Debug, Clone, Copy)]
struct BitTable {
    /// q(x_t = 1 | x_0) for x_0 = 0, 1.
    q_one: [f64; 2],
    /// `values[x_0][x_t]`.
    values: [[BitValues; 2]; 2],
}

impl BitTable {
    fn new(bound: &BinomialBound, t: usize) -> Self {
        // a uniform of 0 draws x_t = 1 (q_one > 0), one of 1 draws x_t = 0 (q_one <= 1)
        let at = |x: f64, xt: usize| BitValues::new(bound, t, x, if xt == 1 { 0.0 } else { 1.0 });
        Self {
            q_one: [0.0, 1.0].map(|x| bound.diffusion.q_one(t, x)),
            values: [[at(0.0, 0), at(0.0, 1)], [at(1.0, 0), at(1.0, 1)]],
        }
    }
}

impl BinomialBound {
    /// The reverse kernel's logits at step `k` for bits `x` (`[n, d]` of 0/1): the network's
    /// output, offset by the forward kernel's logit(x (1 - b_t) + pi b_t) (selected exactly per
    /// bit) for the `paper` parametrization; on a respaced chain the network's kernel at s_k
    /// mapped onto it.
    pub(crate) fn logits_at<N: ReverseNetwork>(
        &self,
        network: &N,
        tables: &Option<BinomialTables>,
        x: &Tensor<2>,
        k: usize,
    ) -> Tensor<2> {
        let (chain, t) = self.kernel_step(k);
        let kernel = || {
            let [k0, k1] = [0.0, 1.0].map(|v| logit(chain.forward_kernel(t, v)) as f32);
            x.clone() * k1 + (x.clone().neg() + 1.0) * k0
        };
        let z = crate::network::forward_at_rows(network, x.clone(), t);
        let logits = self.logits(z, kernel);
        match tables {
            Some(tables) => tables.map_step(logits, x, k),
            None => logits,
        }
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
    pub fn kl_batch<N: ReverseNetwork>(
        &self,
        network: &N,
        tables: &Option<BinomialTables>,
        batch: BinomialBatch,
    ) -> Tensor<1> {
        let kernel_logit = batch.kernel_logit;
        let z = network.forward(batch.x_t.clone(), batch.t);
        let logits = self.logits(z, || kernel_logit);
        let logits = match tables {
            Some(tables) => tables.map_rows(logits, &batch.x_t, &batch.steps),
            None => logits,
        };
        kl_bernoulli_logits(batch.posterior, batch.posterior_entropy, logits)
    }
}

impl Process for BinomialBound {
    type Rows = BinomialRows;
    /// Every per-step value of a binary row depends on its bits, so it is built with the row;
    /// a respaced chain has the values that map its kernels.
    type Tables = Option<BinomialTables>;

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

    fn tables(&self, device: &Device) -> Option<BinomialTables> {
        BinomialTables::new(self, device)
    }

    fn prepare_rows(&self, x0: &[f32], ts: &[usize], rng: &mut Rng) -> BinomialRows {
        let d = self.diffusion.dim();
        let n = ts.len();
        let mut x_t = Vec::with_capacity(n * d);
        let mut post = Vec::with_capacity(n * d);
        let mut kernel = Vec::with_capacity(n * d);
        let mut entropy = Vec::with_capacity(n);
        // every value of a bit depends on (t, x_0, x_t) only: one table per step in the batch
        let mut tables: Vec<Option<BitTable>> = vec![None; self.steps() + 1];
        for (row, &t) in x0.chunks_exact(d).zip(ts) {
            let table = *tables[t].get_or_insert_with(|| BitTable::new(self, t));
            let mut h = 0.0f64;
            for &x in row {
                let u: f64 = rng.random();
                let v = if x == 0.0 || x == 1.0 {
                    let b = usize::from(x == 1.0);
                    table.values[b][usize::from(u < table.q_one[b])]
                } else {
                    BitValues::new(self, t, x as f64, u)
                };
                h -= v.entropy_term;
                x_t.push(v.x_t);
                post.push(v.posterior);
                kernel.push(v.kernel_logit);
            }
            entropy.push(h as f32);
        }
        BinomialRows {
            d,
            ts: ts.to_vec(),
            network_ts: ts.iter().map(|&k| self.kernel_step(k).1).collect(),
            x_t,
            posterior: post,
            entropy,
            kernel_logit: kernel,
        }
    }

    fn kl_rows<N: ReverseNetwork>(
        &self,
        tables: &Option<BinomialTables>,
        network: &N,
        rows: BinomialRows,
        device: &Device,
    ) -> Tensor<1> {
        self.kl_batch(network, tables, rows.upload(device))
    }

    /// Binary data are trained on the bound only (config validation refuses the others).
    fn step_loss<N: ReverseNetwork>(
        &self,
        tables: &Option<BinomialTables>,
        model: &ReverseModel<N>,
        batch: TrainingBatch<BinomialRows>,
        _objective: Objective,
        device: &Device,
    ) -> StepLoss {
        let (rows, weights) = batch.into_parts(self.terms(), device);
        let kl = self.kl_rows(tables, &model.network, rows, device);
        StepLoss {
            loss: weights.bound_loss(&kl),
            kl: Some(kl),
        }
    }

    fn bound_constant_bits(&self, x0: &[f32]) -> f64 {
        self.diffusion.bound_constant_bits(x0)
    }

    fn mean_bound_constant_bits(&self, x0: &[f32]) -> f64 {
        self.diffusion.mean_bound_constant_bits(x0)
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
        chain::run(self, network, n, keep, given, rng, device)
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

/// A binomial step's kernel: the logits of a 1 on the device (the network's steps), or the
/// probabilities of a 1 on the host in f64 (the prior and the fixed edge step). Either way the
/// chain stays on the device; only the uniforms (and factors) go up each step.
#[allow(clippy::large_enum_variant)] // one per step, moved, never stored
pub(crate) enum BinaryKernel {
    /// Logits, `[n, d]`.
    Logits(Tensor<2>),
    /// Probabilities of a 1, row-major `[n, d]`.
    Host { p: Vec<f64>, d: usize },
}

impl StepKernel for BinaryKernel {
    fn log_weight(
        &self,
        x: &Tensor<2>,
        f: &DeviceFactor,
        prev: Option<&DeviceFactor>,
    ) -> Tensor<1> {
        match self {
            Self::Logits(logits) => f.binary_log_weight(logits, x, prev),
            Self::Host { p, d } => {
                let logits = p.iter().map(|&p| logit(p) as f32).collect();
                let logits = tensor2(logits, p.len() / d, *d, &x.device());
                f.binary_log_weight(&logits, x, prev)
            }
        }
    }

    fn pick(self, picks: &[usize]) -> Self {
        match self {
            Self::Logits(logits) => Self::Logits(pick_rows(logits, picks)),
            Self::Host { p, d } => Self::Host {
                p: picks
                    .iter()
                    .flat_map(|&i| p[i * d..(i + 1) * d].iter().copied())
                    .collect(),
                d,
            },
        }
    }

    fn draw(self, f: Option<&Factor>, rng: &mut Rng, device: &Device) -> Tensor<2> {
        match self {
            Self::Logits(logits) => {
                let [n, d] = logits.dims();
                let logits = match f {
                    Some(f) => f.device.binary_logits(logits),
                    None => logits,
                };
                let u = tensor2(uniform(n * d, rng), n, d, device);
                let x = u
                    .lower(diffusion_kernels::activate(
                        logits,
                        diffusion_kernels::Activation::Sigmoid,
                    ))
                    .float();
                match f {
                    Some(f) => f.device.put_known(x),
                    None => x,
                }
            }
            Self::Host { p, d } => {
                let u = uniform(p.len(), rng);
                let x = match f {
                    None => p
                        .iter()
                        .zip(&u)
                        .map(|(&p, &u)| if (u as f64) < p { 1.0 } else { 0.0 })
                        .collect(),
                    Some(f) => {
                        let u: Vec<f64> = u.iter().map(|&v| v as f64).collect();
                        f.host.binary_draw_host(&p, &u)
                    }
                };
                tensor2(x, p.len() / d, d, device)
            }
        }
    }
}

/// `len` uniforms on [0, 1).
fn uniform(len: usize, rng: &mut Rng) -> Vec<f32> {
    (0..len).map(|_| rng.random::<f32>()).collect()
}

impl ReverseChain for BinomialBound {
    type Kernel = BinaryKernel;

    /// Bernoulli(pi) bits.
    fn prior(&self, n: usize, _: bool, _: &mut Rng, _: &Device) -> BinaryKernel {
        let d = self.diffusion.dim();
        BinaryKernel::Host {
            p: vec![self.diffusion.pi(); n * d],
            d,
        }
    }

    /// The network's logits (selected exactly per bit for `paper`), or at t = 1 the fixed edge
    /// step q(x_0 | x_1).
    fn kernel<N: ReverseNetwork>(
        &self,
        network: &N,
        tables: &Option<BinomialTables>,
        x: &Tensor<2>,
        t: usize,
        _: bool,
        _: &mut Rng,
        _: &Device,
    ) -> BinaryKernel {
        if t > 1 {
            return BinaryKernel::Logits(self.logits_at(network, tables, x, t));
        }
        BinaryKernel::Host {
            p: host(x.clone())
                .iter()
                .map(|&v| self.diffusion.forward_kernel(1, v as f64))
                .collect(),
            d: x.dims()[1],
        }
    }

    fn step_factor(&self, given: &Conditioning, n: usize, k: usize, rng: &mut Rng) -> StepFactor {
        given.binary_step(n, self.diffusion.alpha_bar(k), self.diffusion.pi(), rng)
    }

    /// Each bit kept with probability 1 − b_t, else redrawn from Bernoulli(pi).
    fn renoise(&self, x: Tensor<2>, t: usize, rng: &mut Rng, device: &Device) -> Tensor<2> {
        let [n, d] = x.dims();
        let (b, pi) = (self.diffusion.beta(t), self.diffusion.pi());
        let redraw = tensor2(uniform(n * d, rng), n, d, device).lower_elem(b);
        let bits = tensor2(uniform(n * d, rng), n, d, device)
            .lower_elem(pi)
            .float();
        x.mask_where(redraw, bits)
    }

    /// No twist (ψ = 1, which leaves the likelihood mode's weights); `Conditioning::check`
    /// refuses the twisted mode for binary runs.
    fn twist_log(&self, _: &BinaryKernel, x: &Tensor<2>, _: usize, _: &DeviceFactor) -> Tensor<1> {
        let n = x.dims()[0];
        Tensor::zeros([n], &x.device())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::Process;
    use rand_distr::StandardNormal;

    /// KL(Bernoulli(q) || Bernoulli(sigmoid(l))) of one bit in f64, with a log-sigmoid stable for
    /// saturated logits.
    fn kl_bit_f64(q: f64, l: f64) -> f64 {
        let ln_s = |x: f64| -(-x.abs()).exp().ln_1p() + x.min(0.0);
        let ent = |p: f64| if p > 0.0 { p * p.ln() } else { 0.0 };
        ent(q) + ent(1.0 - q) - q * ln_s(l) - (1.0 - q) * ln_s(-l)
    }

    /// That KL's derivative in l: sigmoid(l) - q.
    fn kl_bit_gradient_f64(q: f64, l: f64) -> f64 {
        1.0 / (1.0 + (-l).exp()) - q
    }

    /// The per-step tables give every bit the values its own computation gives, for the same
    /// uniforms; bits that are not 0 or 1 take that computation.
    #[test]
    fn step_tables_give_each_bit_its_own_values() {
        let (steps, d) = (50, 7);
        let bound = crate::process::condition_tests::binomial(steps, 0.2, d);
        let mut rng = diffusion_data::rng(3, 1);
        let n = 400;
        let mut x0: Vec<f32> = (0..n * d)
            .map(|_| f32::from(rng.random::<f64>() < 0.4))
            .collect();
        x0[5] = 0.5;
        let ts: Vec<usize> = (0..n).map(|i| 1 + (i * 7) % steps).collect();
        let mut draws = rng.clone();
        let rows = bound.prepare_rows(&x0, &ts, &mut rng);
        for (r, &t) in ts.iter().enumerate() {
            let mut h = 0.0f64;
            for j in 0..d {
                let i = r * d + j;
                let v = BitValues::new(&bound, t, x0[i] as f64, draws.random());
                assert_eq!(rows.x_t[i], v.x_t, "row {r} bit {j}");
                assert_eq!(rows.posterior[i].to_bits(), v.posterior.to_bits());
                assert_eq!(rows.kernel_logit[i].to_bits(), v.kernel_logit.to_bits());
                h -= v.entropy_term;
            }
            assert_eq!(rows.entropy[r].to_bits(), (h as f32).to_bits(), "row {r}");
        }
        // both draws of x_t occur for both values of x_0
        let count = |x: f32, xt: f32| {
            (0..n * d)
                .filter(|&i| x0[i] == x && rows.x_t[i] == xt)
                .count()
        };
        for (x, xt) in [(0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)] {
            assert!(count(x, xt) > 20, "x0 = {x}, x_t = {xt}: {}", count(x, xt));
        }
    }

    /// KL(Bernoulli(q) || Bernoulli(s(l))) summed over bits, against f64 with a stable
    /// log-sigmoid, including saturated logits; its gradient in l is s(l) - q. Both Burn's
    /// log-sigmoid (diffusion-core) and the kernels' (the bound's own rows).
    #[test]
    fn bernoulli_kl_of_logits_matches_f64_and_its_gradient() {
        let device = Device::flex().autodiff();
        let qs = [0.0f64, 1.0, 0.3, 0.9, 0.05, 0.5];
        let ls = [0.0f64, 2.5, -4.0, 30.0, -30.0, 80.0, -80.0, 1e-3];
        let (mut q, mut l) = (Vec::new(), Vec::new());
        for &a in &qs {
            for &b in &ls {
                q.push(a as f32);
                l.push(b as f32);
            }
        }
        let (n, d) = (qs.len(), ls.len());
        let entropy: Vec<f32> = qs
            .iter()
            .map(|&q| {
                let h = |p: f64| if p > 0.0 { -p * p.ln() } else { 0.0 };
                (d as f64 * (h(q) + h(1.0 - q))) as f32
            })
            .collect();
        for fused in [false, true] {
            let lt = tensor2(l.clone(), n, d, &device).require_grad();
            let kl = if fused {
                kl_bernoulli_logits
            } else {
                diffusion_core::kl_bernoulli_logits
            }(
                tensor2(q.clone(), n, d, &device),
                Tensor::from_data(TensorData::new(entropy.clone(), [n]), &device),
                lt.clone(),
            );
            let got = host(kl.clone());
            for (r, &qr) in qs.iter().enumerate() {
                let want: f64 = ls.iter().map(|&l| kl_bit_f64(qr, l)).sum();
                let tol = 1e-5 * (1.0 + want.abs());
                assert!(
                    (got[r] as f64 - want).abs() < tol,
                    "q = {qr}: KL {} against {want}",
                    got[r]
                );
            }
            let grads = kl.sum().backward();
            let g = host(lt.grad(&grads).unwrap());
            for (i, (&q, &l)) in q.iter().zip(&l).enumerate() {
                let want = kl_bit_gradient_f64(q as f64, l as f64);
                assert!(
                    (g[i] as f64 - want).abs() < 1e-6,
                    "q = {q}, l = {l}: {}",
                    g[i]
                );
            }
        }
    }

    /// The heartbeat's bound through both log-sigmoid paths (the kernels' and Burn's) against f64,
    /// at the paper's setting (T = 2000, b_t = 1 / (T - t + 1), pi = 0.2, the `paper`
    /// parametrization), on batches of every range of t: the KL rows as the Monte-Carlo K uses them
    /// and their gradient in the logits.
    #[test]
    fn heartbeat_bound_and_gradient_match_f64_on_both_log_sigmoid_paths() {
        let steps = 2000;
        // the paper's setting: b_t = 1 / (T - t + 1), pi = 0.2, the `paper` parametrization
        let bound = crate::process::condition_tests::binomial(steps, 0.2, 20);
        let d = 20;
        let device = Device::flex().autodiff();
        let beat = diffusion_data::Heartbeat::new(20, 5).unwrap();
        let n = 4096;
        let mut rng = diffusion_data::rng(11, 0);
        let x0 = beat.stream_with(diffusion_data::rng(11, 1)).next_batch(n);
        for (lo, hi) in [(2, 10), (10, 100), (100, 1000), (1000, steps + 1)] {
            let ts: Vec<usize> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
            let rows = bound.prepare_rows(&x0, &ts, &mut rng);
            // a network's output of the size a trained one gives (|logit| up to ~20)
            let z: Vec<f32> = (0..n * d)
                .map(|_| 3.0 * rng.sample::<f64, _>(StandardNormal) as f32)
                .collect();
            let logits: Vec<f32> = z
                .iter()
                .zip(&rows.kernel_logit)
                .map(|(a, b)| a + b)
                .collect();
            let q = rows.posterior.clone();
            let batch = rows.upload(&device);
            let mut kl_ref = vec![0.0f64; n];
            let mut g_ref = vec![0.0f64; n * d];
            for i in 0..n * d {
                let (qq, l) = (q[i] as f64, logits[i] as f64);
                kl_ref[i / d] += kl_bit_f64(qq, l);
                g_ref[i] = kl_bit_gradient_f64(qq, l);
            }
            let g_norm = g_ref.iter().map(|v| v * v).sum::<f64>().sqrt();
            for fused in [true, false] {
                let l = tensor2(logits.clone(), n, d, &device).require_grad();
                let (post, ent) = (batch.posterior.clone(), batch.posterior_entropy.clone());
                let kl = if fused {
                    kl_bernoulli_logits(post, ent, l.clone())
                } else {
                    diffusion_core::kl_bernoulli_logits(post, ent, l.clone())
                };
                let grads = kl.clone().sum().backward();
                let (kl, g) = (host(kl), host(l.grad(&grads).unwrap()));
                // K's Monte-Carlo sum weighs a row by (T - 1) / ln 2: the mean error of a row in
                // bits of K, against the 0.01 bits per sequence the heartbeat's figures resolve
                let bias = kl
                    .iter()
                    .zip(&kl_ref)
                    .map(|(a, b)| *a as f64 - b)
                    .sum::<f64>()
                    / n as f64
                    * (steps - 1) as f64
                    / std::f64::consts::LN_2;
                let worst = kl
                    .iter()
                    .zip(&kl_ref)
                    .map(|(a, b)| (*a as f64 - b).abs())
                    .fold(0.0, f64::max);
                let g_err = g
                    .iter()
                    .zip(&g_ref)
                    .map(|(a, b)| (*a as f64 - b).powi(2))
                    .sum::<f64>()
                    .sqrt();
                let path = if fused { "kernels" } else { "Burn" };
                assert!(
                    bias.abs() < 1e-3,
                    "t in {lo}..{hi}, {path}: K off by {bias} bits"
                );
                assert!(
                    worst < 1e-5,
                    "t in {lo}..{hi}, {path}: a row off by {worst} nats"
                );
                assert!(
                    g_err < 1e-5 * g_norm,
                    "t in {lo}..{hi}, {path}: gradient off by {} relative",
                    g_err / g_norm
                );
            }
        }
    }
}
