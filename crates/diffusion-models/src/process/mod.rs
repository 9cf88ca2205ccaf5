//! The bound K of a diffusion with a reverse network, for either process.
//!
//! A [`Process`] (Gaussian: [`GaussianBound`], binomial: [`BinomialBound`]) prepares the rows
//! (x_0, t) of a batch on the host, computes their KL terms with any [`ReverseNetwork`], and
//! runs the reverse chain. On top of it, for any process and any network:
//! - training draws t ~ U{first..T} per row ([`training_batch`]; first = 2, or 1 where a decoder
//!   makes the last step a term of its own: [`Process::first_step`]) and minimises minus the
//!   Monte-Carlo K, each row's term weighted by the number of terms ([`Process::step_loss`]);
//! - evaluation sums the terms over every t = first..T ([`bound_bits_per_point`]), or estimates
//!   that sum without bias from a few steps drawn in strata ([`bound_bits_stratified`]);
//! - sampling runs the reverse chain ([`sample`], [`Process::trajectory`]).
//!
//! Both use one function for the KL terms, [`Process::kl_rows`], so the training estimate and
//! the evaluated bound cannot drift apart.

pub(crate) mod binomial;
pub(crate) mod chain;
mod decoder;
mod gaussian;
mod gaussian_tables;
mod learned;
mod respaced;

use burn::tensor::{Device, Int, Tensor, TensorData};
use diffusion_core::LN_2;
use diffusion_data::Rng;
use rand::Rng as _;

pub use binomial::{BinomialBatch, BinomialBound, BinomialRows};
pub use decoder::{Decoder, DecoderRows};
pub(crate) use gaussian::GaussianKernel;
pub use gaussian::{ClipRange, GaussianBatch, GaussianBound, GaussianRows};
pub use gaussian_tables::{GaussianTables, Posterior};
pub use respaced::{BinomialTables, Respaced, affine_map};

use crate::condition::{ConditionError, Conditioning, Variable};
use crate::config::LossKind;
use crate::network::{ReverseModel, ReverseNetwork};
pub(crate) use crate::tensors::host;
pub use crate::tensors::tensor2;

/// A diffusion process with its reverse parametrization: what the bound, training and sampling
/// need of it.
pub trait Process: Clone + Send + Sync {
    /// The host values of a set of (x_0, t) rows, built on any thread.
    type Rows: SplitRows + Send;
    /// The per-step coefficients of a run on a device, uploaded once.
    type Tables: Sync;

    /// Trajectory length T.
    fn steps(&self) -> usize;
    /// Data dimension d.
    fn dim(&self) -> usize;
    /// The first step whose term the network's bound sums: 2 where the last reverse step is the
    /// paper's fixed edge step (its cost is in K's constant part), 1 where the network decodes
    /// it ([`GaussianBound::decoder`]). The bound's terms are those of t = first..=T.
    fn first_step(&self) -> usize {
        2
    }
    /// How many terms the bound sums over t: T - first + 1.
    fn terms(&self) -> usize {
        self.steps() + 1 - self.first_step()
    }
    /// Network outputs per row: 2d (Gaussian) or d (binomial).
    fn output_dim(&self) -> usize;
    /// The kind of values the process diffuses: real coordinates or bits.
    fn variable(&self) -> Variable;
    /// The per-step tables on `device`.
    fn tables(&self, device: &Device) -> Self::Tables;
    /// Draws x_t ~ q(x_t | x_0) for each row (`x0` row-major `[ts.len(), d]`) and builds the
    /// posteriors, on the host.
    fn prepare_rows(&self, x0: &[f32], ts: &[usize], rng: &mut Rng) -> Self::Rows;
    /// KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) of each prepared row, in nats, `[n]`.
    fn kl_rows<N: ReverseNetwork>(
        &self,
        tables: &Self::Tables,
        network: &N,
        rows: Self::Rows,
        device: &Device,
    ) -> Tensor<1>;
    /// The loss of one training step (see [`Objective`]).
    fn step_loss<N: ReverseNetwork>(
        &self,
        tables: &Self::Tables,
        model: &ReverseModel<N>,
        batch: TrainingBatch<Self::Rows>,
        objective: Objective,
        device: &Device,
    ) -> StepLoss;
    /// The constant part of K (entropy terms) for one point, in bits.
    fn bound_constant_bits(&self, x0: &[f32]) -> f64;
    /// The mean of [`Process::bound_constant_bits`] over the points of `x0` (row-major
    /// `[n, d]`, n > 0).
    fn mean_bound_constant_bits(&self, x0: &[f32]) -> f64 {
        let d = self.dim();
        let rows = x0.chunks_exact(d);
        let n = rows.len();
        rows.map(|row| self.bound_constant_bits(row)).sum::<f64>() / n as f64
    }
    /// L_null for one point, in bits.
    fn l_null_bits(&self, x0: &[f32]) -> f64;
    /// Runs the reverse chain for `n` rows; returns x_t (row-major `[n, d]`) for each t in
    /// `keep`, in the order the chain reaches them (from T down to 0).
    fn trajectory<N: ReverseNetwork>(
        &self,
        network: &N,
        n: usize,
        keep: &[usize],
        rng: &mut Rng,
        device: &Device,
    ) -> Vec<(usize, Vec<f32>)> {
        self.trajectory_given(network, n, keep, None, rng, device)
    }
    /// [`Process::trajectory`] multiplied by a condition at every step (paper section 2.5; see
    /// [`crate::condition`]); `given` holds one condition for all `n` rows or one per row, of
    /// this process's kind and dimension (see [`Conditioning::check`]). Without one it is the
    /// unconditioned chain, draw for draw.
    fn trajectory_given<N: ReverseNetwork>(
        &self,
        network: &N,
        n: usize,
        keep: &[usize],
        given: Option<&Conditioning>,
        rng: &mut Rng,
        device: &Device,
    ) -> Vec<(usize, Vec<f32>)>;
    /// Draws x_t ~ q(x_t | x_0) for every row of `x0` at step `t` (t = 0 returns `x0`).
    fn forward_sample(&self, x0: &[f32], t: usize, rng: &mut Rng) -> Vec<f32>;
}

/// What a training step minimises:
/// - `bound`: minus the Monte-Carlo K in bits per point, each row's term weighted by the
///   number of terms, T - first + 1 (uniform t) or by 1 / p(t) (importance-sampled t): an unbiased estimate of the sum over
///   t = first..T. With the `learned` schedule it is differentiable in the betas too.
/// - `mse`: the mean squared noise-prediction error (Gaussian, `epsilon-fixed`).
/// - `hybrid`: that error plus `hybrid_weight` times the bound loss with the mean held fixed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Objective {
    /// Which loss.
    pub loss: LossKind,
    /// The bound's weight in the hybrid loss.
    pub hybrid_weight: f64,
}

impl Objective {
    /// Minus the Monte-Carlo bound.
    pub const BOUND: Self = Self {
        loss: LossKind::Bound,
        hybrid_weight: 0.0,
    };
}

/// One training step's host data: the rows, their steps, the batch mean of K's constant part
/// (bits) and, for importance-sampled steps, each row's weight 1 / (K p(t)) for the K terms.
#[derive(Debug, Clone)]
pub struct TrainingBatch<R> {
    rows: R,
    ts: Vec<usize>,
    constant_bits: f64,
    weights: Option<Vec<f32>>,
}

impl<R> TrainingBatch<R> {
    /// The rows' steps t.
    pub fn steps(&self) -> &[usize] {
        &self.ts
    }

    /// How many rows the batch holds.
    pub fn len(&self) -> usize {
        self.ts.len()
    }

    /// Whether the batch holds no rows.
    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }

    /// Keeps the first `at` rows and returns the others, each with its importance weight; the
    /// bound's constant part stays the whole batch's mean in both.
    pub fn split_off(&mut self, at: usize) -> Self
    where
        R: SplitRows,
    {
        TrainingBatch {
            rows: self.rows.split_off(at),
            ts: self.ts.split_off(at),
            constant_bits: self.constant_bits,
            weights: self.weights.as_mut().map(|w| w.split_off(at)),
        }
    }

    /// The rows, and how the `terms` terms of their steps make the bound loss.
    fn into_parts(self, terms: usize, device: &Device) -> (R, BoundWeights) {
        let n = self.ts.len();
        let weights = self
            .weights
            .map(|w| Tensor::<1>::from_data(TensorData::new(w, [n]), device));
        let weights = BoundWeights {
            t_weight: terms as f64 / LN_2,
            weights,
            constant_bits: self.constant_bits,
        };
        (self.rows, weights)
    }
}

/// Host rows that can be cut in two, as a batch is cut to train on several threads.
pub trait SplitRows: Sized {
    /// Keeps the first `at` rows and returns the others.
    fn split_off(&mut self, at: usize) -> Self;
}

/// How a batch's KL terms become minus the Monte-Carlo K in bits.
struct BoundWeights {
    /// (T - first + 1) / ln 2: the sum over the steps from one t per row, in bits.
    t_weight: f64,
    /// Importance weights, when t was not uniform.
    weights: Option<Tensor<1>>,
    /// The batch mean of K's constant part, bits.
    constant_bits: f64,
}

impl BoundWeights {
    /// The Monte-Carlo sum of the KL terms over t, bits per point.
    fn kl_bits(&self, kl: &Tensor<1>) -> Tensor<1> {
        match &self.weights {
            Some(w) => (kl.clone() * w.clone()).mean() * self.t_weight,
            None => kl.clone().mean() * self.t_weight,
        }
    }

    /// Minus the Monte-Carlo K, bits per point.
    fn bound_loss(&self, kl: &Tensor<1>) -> Tensor<1> {
        self.kl_bits(kl) - self.constant_bits
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

/// The host part of a training step: each row of `x0` draws t ~ U{first..T} and x_t. Independent
/// of the network, so it can be built ahead on another thread.
pub fn training_batch<P: Process>(
    process: &P,
    x0: &[f32],
    rng: &mut Rng,
) -> TrainingBatch<P::Rows> {
    let n = x0.len() / process.dim();
    let steps = process.steps();
    let first = process.first_step();
    let ts: Vec<usize> = (0..n).map(|_| rng.random_range(first..=steps)).collect();
    training_batch_at(process, x0, ts, None, rng)
}

/// [`training_batch`] with given steps and, for importance sampling, each row's weight
/// 1 / (K p(t)) for the K terms.
pub fn training_batch_at<P: Process>(
    process: &P,
    x0: &[f32],
    ts: Vec<usize>,
    weights: Option<Vec<f32>>,
    rng: &mut Rng,
) -> TrainingBatch<P::Rows> {
    let constant_bits = process.mean_bound_constant_bits(x0);
    TrainingBatch {
        rows: process.prepare_rows(x0, &ts, rng),
        ts,
        constant_bits,
        weights,
    }
}

/// Minus the Monte-Carlo K in bits per point for the points `x0` (row-major `[n, d]`): one
/// training loss, drawing t and x_t from `rng`.
pub fn training_loss<P: Process, N: ReverseNetwork>(
    process: &P,
    model: &ReverseModel<N>,
    x0: &[f32],
    rng: &mut Rng,
    device: &Device,
) -> Tensor<1> {
    let tables = process.tables(device);
    let batch = training_batch(process, x0, rng);
    process
        .step_loss(&tables, model, batch, Objective::BOUND, device)
        .loss
}

/// The full-sum bound K in bits for each point (`points` row-major `[n, d]`): every
/// t = first..T with one draw of x_t per (point, t), evaluated `chunk_rows` rows at a time.
pub fn bound_bits_per_point<P: Process, N: ReverseNetwork>(
    process: &P,
    network: &N,
    points: &[f32],
    rng: &mut Rng,
    device: &Device,
    chunk_rows: usize,
) -> Vec<f64> {
    let (per_point, first) = (process.terms(), process.first_step());
    let terms = |r: usize, _: &mut Rng| (r / per_point, first + r % per_point, 1.0);
    bound_bits_of_terms(
        process, network, points, per_point, terms, rng, device, chunk_rows,
    )
}

/// An unbiased estimate of the bound K in bits for each point, for chains too long to sum: the
/// steps t = first..T are cut into `draws` strata growing geometrically from both ends of the chain
/// ([`stratify`]: the first and last steps one by one), one t is drawn uniformly in each, with
/// a fresh x_t, and its KL term is weighted by the stratum's size. Each point's estimate is unbiased, so the mean over points has the usual standard
/// error (the spread over points includes the draws').
#[allow(clippy::too_many_arguments)]
pub fn bound_bits_stratified<P: Process, N: ReverseNetwork>(
    process: &P,
    network: &N,
    points: &[f32],
    draws: usize,
    rng: &mut Rng,
    device: &Device,
    chunk_rows: usize,
) -> Vec<f64> {
    let strata = stratify(process.terms(), draws);
    let (k, first) = (strata.len(), process.first_step());
    let terms = |r: usize, rng: &mut Rng| {
        let (start, size) = strata[r % k];
        (
            r / k,
            first + start + rng.random_range(0..size),
            size as f64,
        )
    };
    bound_bits_of_terms(process, network, points, k, terms, rng, device, chunk_rows)
}

/// `count` items cut into at most `parts` contiguous strata (at least 1) whose sizes grow
/// geometrically from both ends towards the middle, so the chain's first steps and its last
/// (where the KL terms are largest and change fastest: the data's finest scale, and the
/// steps of large b_t whose kernels scale the network's errors most) are strata of one, summed
/// exactly, and the middle is sampled. (first item, size) each.
pub fn stratify(count: usize, parts: usize) -> Vec<(usize, usize)> {
    let parts = parts.clamp(1, count.max(1));
    let (left_parts, right_parts) = (parts.div_ceil(2), parts / 2);
    let left_count = if right_parts == 0 {
        count
    } else {
        count.div_ceil(2)
    };
    let mut strata = geometric_strata(left_count, left_parts);
    let right_count = count - left_count;
    // the right half mirrored: its strata grow from the chain's end backwards
    for (start, size) in geometric_strata(right_count, right_parts).into_iter().rev() {
        strata.push((count - start - size, size));
    }
    strata
}

/// `count` items in at most `parts` contiguous strata, stratum s ending at about
/// count^((s + 1) / parts).
fn geometric_strata(count: usize, parts: usize) -> Vec<(usize, usize)> {
    let parts = parts.min(count);
    let mut strata = Vec::with_capacity(parts);
    let mut start = 0;
    for s in 0..parts {
        let left = parts - s;
        // geometric end, but at least one item each and room for the strata after it
        let geometric = (count as f64).powf((s + 1) as f64 / parts as f64).floor() as usize;
        let end = geometric.max(start + 1).min(count - (left - 1));
        strata.push((start, end - start));
        start = end;
    }
    strata
}

/// K in bits for each point from `per_point` weighted KL terms: `term(r, rng)` gives the
/// global row r's (point, t, weight).
#[allow(clippy::too_many_arguments)]
fn bound_bits_of_terms<P: Process, N: ReverseNetwork>(
    process: &P,
    network: &N,
    points: &[f32],
    per_point: usize,
    term: impl FnMut(usize, &mut Rng) -> (usize, usize, f64),
    rng: &mut Rng,
    device: &Device,
    chunk_rows: usize,
) -> Vec<f64> {
    let d = process.dim();
    let n = points.len() / d;
    let mut kl_sums = vec![0.0f64; n];
    let sink = |_, (i, _, w): (usize, usize, f64), kl: f32| kl_sums[i] += w * kl as f64;
    let total = n * per_point;
    for_each_kl(
        process, network, points, total, term, sink, rng, device, chunk_rows,
    );
    points
        .chunks_exact(d)
        .zip(kl_sums)
        .map(|(row, s)| process.bound_constant_bits(row) - s / LN_2)
        .collect()
}

/// The bound's term in bits (the KL term, or at t = 1 the decoder's) at each step of `steps`
/// (each in first..=T), one draw of x_t per point and step: `[steps.len()][n]`. Where in the
/// chain a model loses its bound: K = the constant part minus these summed over t = first..T.
pub fn kl_terms_bits<P: Process, N: ReverseNetwork>(
    process: &P,
    network: &N,
    points: &[f32],
    steps: &[usize],
    rng: &mut Rng,
    device: &Device,
    chunk_rows: usize,
) -> Vec<Vec<f64>> {
    let n = points.len() / process.dim();
    let mut terms = vec![vec![0.0f64; n]; steps.len()];
    // step-major rows: a chunk holds few distinct steps
    let term = |r: usize, _: &mut Rng| (r % n, steps[r / n], 1.0);
    let sink = |r: usize, _, kl: f32| terms[r / n][r % n] = kl as f64 / LN_2;
    let total = n * steps.len();
    for_each_kl(
        process, network, points, total, term, sink, rng, device, chunk_rows,
    );
    terms
}

/// Computes the KL terms of `total` rows, `chunk_rows` at a time: `term(r, rng)` gives row r's
/// (point, t, weight) and `sink(r, that, kl)` takes its KL in nats.
#[allow(clippy::too_many_arguments)]
fn for_each_kl<P: Process, N: ReverseNetwork>(
    process: &P,
    network: &N,
    points: &[f32],
    total: usize,
    mut term: impl FnMut(usize, &mut Rng) -> (usize, usize, f64),
    mut sink: impl FnMut(usize, (usize, usize, f64), f32),
    rng: &mut Rng,
    device: &Device,
    chunk_rows: usize,
) {
    let d = process.dim();
    let tables = process.tables(device);
    let mut start = 0;
    while start < total {
        let end = (start + chunk_rows.max(1)).min(total);
        let rows: Vec<(usize, usize, f64)> = (start..end).map(|r| term(r, rng)).collect();
        let ts: Vec<usize> = rows.iter().map(|&(_, t, _)| t).collect();
        let mut x0 = Vec::with_capacity(rows.len() * d);
        for &(i, _, _) in &rows {
            x0.extend_from_slice(&points[i * d..(i + 1) * d]);
        }
        let prepared = process.prepare_rows(&x0, &ts, rng);
        let kl = host(process.kl_rows(&tables, network, prepared, device));
        for (r, (&row, &v)) in (start..end).zip(rows.iter().zip(&kl)) {
            sink(r, row, v);
        }
        start = end;
    }
}

/// Draws `n` samples (x_0 of the reverse chain), row-major `[n, d]`, `chunk_rows` chains
/// at a time.
pub fn sample<P: Process, N: ReverseNetwork>(
    process: &P,
    network: &N,
    n: usize,
    rng: &mut Rng,
    device: &Device,
    chunk_rows: usize,
) -> Vec<f32> {
    run_chains(process, network, n, None, rng, device, chunk_rows)
}

/// [`sample`] from the product of the model with a condition (see [`crate::condition`]): one
/// condition for all `n` samples or one per sample, for data of this process's kind and
/// dimension.
pub fn sample_given<P: Process, N: ReverseNetwork>(
    process: &P,
    network: &N,
    n: usize,
    given: &Conditioning,
    rng: &mut Rng,
    device: &Device,
    chunk_rows: usize,
) -> Result<Vec<f32>, ConditionError> {
    given.check(process.dim(), process.variable(), n)?;
    Ok(run_chains(
        process,
        network,
        n,
        Some(given),
        rng,
        device,
        chunk_rows,
    ))
}

fn run_chains<P: Process, N: ReverseNetwork>(
    process: &P,
    network: &N,
    n: usize,
    given: Option<&Conditioning>,
    rng: &mut Rng,
    device: &Device,
    chunk_rows: usize,
) -> Vec<f32> {
    in_chunks(process.dim(), n, given, chunk_rows, rng, |m, chunk, rng| {
        let drawn = process.trajectory_given(network, m, &[0], chunk, rng, device);
        drawn.into_iter().flat_map(|(_, x)| x).collect()
    })
}

/// x_0 of `n` chains (row-major, `dim` coordinates), `draw(m, condition, rng)` running `m` of
/// them at a time, at most `chunk_rows`, with the conditions of the chains it runs; particle
/// systems in groups are never cut by a chunk.
pub(crate) fn in_chunks(
    dim: usize,
    n: usize,
    given: Option<&Conditioning>,
    chunk_rows: usize,
    rng: &mut Rng,
    mut draw: impl FnMut(usize, Option<&Conditioning>, &mut Rng) -> Vec<f32>,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(n * dim);
    let chunk_rows = match given.and_then(Conditioning::particle_group) {
        Some(group) => (chunk_rows / group).max(1) * group,
        None => chunk_rows,
    };
    let mut done = 0;
    while done < n {
        let m = chunk_rows.max(1).min(n - done);
        let chunk = given.map(|c| c.chunk(done, m));
        // on the CPU, rayon's workers kept awake between the chain's parallel kernels
        let busy = diffusion_kernels::busy_workers();
        out.extend(draw(m, chunk.as_ref(), rng));
        drop(busy);
        done += m;
    }
    out
}

fn steps_tensor(ts: &[usize], device: &Device) -> Tensor<1, Int> {
    let v: Vec<i64> = ts.iter().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(v, [ts.len()]), device)
}

#[cfg(test)]
mod condition_tests;
#[cfg(test)]
mod respaced_tests;
#[cfg(test)]
mod tests;
