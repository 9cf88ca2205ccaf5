//! The bound K for a Gaussian diffusion with a reverse network: one function, [`GaussianBound::kl_rows`],
//! computes the KL terms for any set of (x_0, t) rows, and serves training (the Monte-Carlo
//! estimate, t ~ U{2..T} weighted by T - 1), evaluation (the full sum over every t) alike.
//! Sampling runs the reverse chain.
//!
//! Everything that does not depend on the network (x_t, the posterior, the step coefficients) is
//! computed on the host in f64 from seeded generators, so a run is reproducible and identical
//! across backends up to the network's own arithmetic.

use burn::tensor::{Device, Int, Tensor, TensorData};
use diffusion_core::{GaussianDiffusion, LN_2, ReverseParametrization, StepCoefficients};
use diffusion_data::Rng;
use rand::Rng as _;
use rand_distr::StandardNormal;

use crate::model::ReverseMlp;

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
}

/// A row-major `[rows, cols]` f32 tensor from host values.
pub fn tensor2(values: Vec<f32>, rows: usize, cols: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, [rows, cols]), device)
}

fn steps_tensor(ts: &[usize], device: &Device) -> Tensor<1, Int> {
    let v: Vec<i64> = ts.iter().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(v, [ts.len()]), device)
}

fn coefficients(diffusion: &GaussianDiffusion, ts: &[usize], device: &Device) -> StepCoefficients {
    let n = ts.len();
    let mut cols = [
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    ];
    for &t in ts {
        for (col, v) in cols
            .iter_mut()
            .zip(StepCoefficients::host_values(diffusion, t))
        {
            col.push(v);
        }
    }
    let [a, b, c] = cols;
    StepCoefficients {
        sqrt_alpha: tensor2(a, n, 1, device),
        sqrt_beta: tensor2(b, n, 1, device),
        logit_beta: tensor2(c, n, 1, device),
    }
}

impl GaussianBound {
    /// Trajectory length T.
    pub fn steps(&self) -> usize {
        self.diffusion.steps()
    }

    /// Draws x_t ~ q(x_t | x_0) for each row and builds the posterior; `x0` is row-major
    /// `[ts.len(), d]`.
    pub fn prepare(&self, x0: &[f32], ts: &[usize], rng: &mut Rng, device: &Device) -> BoundBatch {
        let d = self.diffusion.dim();
        let n = ts.len();
        debug_assert_eq!(x0.len(), n * d);
        let mut x_t = Vec::with_capacity(n * d);
        let mut mean = Vec::with_capacity(n * d);
        let mut var = Vec::with_capacity(n);
        let mut log_var = Vec::with_capacity(n);
        for (row, &t) in x0.chunks_exact(d).zip(ts) {
            let (s, sd) = self.diffusion.q_sample_coefficients(t);
            let (c0, ct, v) = self.diffusion.posterior_coefficients(t);
            for &x in row {
                let eps: f64 = rng.sample(StandardNormal);
                let xt = s * x as f64 + sd * eps;
                x_t.push(xt as f32);
                mean.push((c0 * x as f64 + ct * xt) as f32);
            }
            var.push(v as f32);
            log_var.push(v.ln() as f32);
        }
        BoundBatch {
            x_t: tensor2(x_t, n, d, device),
            t: steps_tensor(ts, device),
            posterior_mean: tensor2(mean, n, d, device),
            posterior_variance: tensor2(var, n, 1, device),
            posterior_log_variance: tensor2(log_var, n, 1, device),
            coefficients: coefficients(&self.diffusion, ts, device),
        }
    }

    /// KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) per row, in nats, `[n]`.
    pub fn kl_rows(&self, model: &ReverseMlp, batch: BoundBatch) -> Tensor<1> {
        let z = model.forward(batch.x_t.clone(), batch.t);
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

    /// The training loss: minus the Monte-Carlo estimate of K in bits per point, averaged over the
    /// batch. Each row draws t ~ U{2..T} and its KL is weighted by T - 1 (an unbiased estimate of
    /// the sum over t = 2..T).
    pub fn training_loss(
        &self,
        model: &ReverseMlp,
        x0: &[f32],
        rng: &mut Rng,
        device: &Device,
    ) -> Tensor<1> {
        let n = x0.len() / self.diffusion.dim();
        let steps = self.steps();
        let ts: Vec<usize> = (0..n).map(|_| rng.random_range(2..=steps)).collect();
        let batch = self.prepare(x0, &ts, rng, device);
        let weight = (steps - 1) as f64 / LN_2;
        let constant = self.diffusion.bound_constants().sum_bits();
        self.kl_rows(model, batch).mean() * weight - constant
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
        let d = self.diffusion.dim();
        let n = points.len() / d;
        let steps = self.steps();
        let per_point = steps - 1;
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
            let batch = self.prepare(&x0, &ts, rng, device);
            let kl = self.kl_rows(model, batch).into_data();
            let kl = kl.convert::<f32>();
            let kl = kl.as_slice::<f32>().expect("f32 data");
            for (&(i, _), &v) in rows.iter().zip(kl) {
                kl_sums[i] += v as f64;
            }
            start = end;
        }
        kl_sums
            .into_iter()
            .map(|s| self.diffusion.bound_bits_from_kls(s))
            .collect()
    }

    /// Draws `n` samples by running the reverse chain from x_T ~ N(0, I): the network's kernel
    /// for t = T..2, then the paper's fixed edge step p(x_0 | x_1) = N(sqrt(1 - b_1) x_1, b_1 I).
    /// Returns row-major `[n, d]`.
    pub fn sample(
        &self,
        model: &ReverseMlp,
        n: usize,
        rng: &mut Rng,
        device: &Device,
        chunk_rows: usize,
    ) -> Vec<f32> {
        let d = self.diffusion.dim();
        let mut out = Vec::with_capacity(n * d);
        let mut done = 0;
        while done < n {
            let m = chunk_rows.max(1).min(n - done);
            let normal = |rng: &mut Rng| -> Vec<f32> {
                (0..m * d)
                    .map(|_| rng.sample::<f64, _>(StandardNormal) as f32)
                    .collect()
            };
            let mut x = tensor2(normal(rng), m, d, device);
            for t in (2..=self.steps()).rev() {
                let ts = vec![t; m];
                let z = model.forward(x.clone(), steps_tensor(&ts, device));
                let coefficients = coefficients(&self.diffusion, &ts, device);
                let (mean, log_var) = self.parametrization.mean_log_variance(z, x, &coefficients);
                let eps = tensor2(normal(rng), m, d, device);
                x = mean + (log_var * 0.5).exp() * eps;
            }
            let b1 = self.diffusion.beta(1);
            let eps = tensor2(normal(rng), m, d, device);
            x = x * (1.0 - b1).sqrt() + eps * b1.sqrt();
            let data = x.into_data().convert::<f32>();
            out.extend_from_slice(data.as_slice::<f32>().expect("f32 data"));
            done += m;
        }
        out
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
            let bound = GaussianBound {
                diffusion: GaussianDiffusion::new(schedule.betas(steps).unwrap(), 2).unwrap(),
                parametrization: ReverseParametrization::Paper,
            };
            let model = ModelConfig::default().init(2, steps, &device);
            let points = standard_normal_points(4000, 2, 1);
            let mut rng = diffusion_data::rng(2, 0);
            let k = bound.bound_bits_per_point(&model, &points, &mut rng, &device, 8192);
            let k = MeanStderr::of(&k).unwrap();
            let l_null = bound.diffusion.l_null_bits();
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

    /// The Monte-Carlo training estimate is unbiased for the full sum: on the same model, the
    /// mean of many training losses equals minus the full-sum K.
    #[test]
    fn monte_carlo_estimate_agrees_with_the_full_sum() {
        let device = Device::flex();
        let steps = 30;
        let bound = GaussianBound {
            diffusion: GaussianDiffusion::new(
                BetaSchedule::linear(1e-3, 0.2).betas(steps).unwrap(),
                2,
            )
            .unwrap(),
            parametrization: ReverseParametrization::Paper,
        };
        let model = ModelConfig::default().init(2, steps, &device);
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
}
