//! How noisy the training gradient is under uniform and importance-sampled steps t
//! (`diffusion gradient-variance`): many independent Monte-Carlo bound losses of a trained
//! network, each differentiated, and the total variance of the gradient (the trace of its
//! covariance, summed over every parameter) and of the loss for each way of drawing t. The
//! importance sampler's p(t) comes from each step's root mean square KL term, measured first on
//! held-out points for every t.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Gradients, Tensor};
use rand::Rng as _;
use serde::{Deserialize, Serialize};

use crate::bound::Diffusion;
use crate::data::streams;
use crate::evaluate::heldout_points;
use crate::importance::StepSampler;
use crate::network::{ReverseModel, ReverseNetwork};
use crate::process::{Objective, Process, training_batch_at};
use crate::run::{RunDir, RunError, RunManifest};

/// The spread of one estimator over the batches.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spread {
    /// Sum over parameters of the variance of the gradient across batches.
    pub gradient_variance: f64,
    /// Mean of the loss (minus the Monte-Carlo K, bits per point).
    pub loss_mean: f64,
    /// Variance of the loss across batches.
    pub loss_variance: f64,
}

/// Uniform against importance-sampled t on one trained run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GradientVariance {
    /// Independent batches per estimator.
    pub batches: usize,
    /// Examples per batch.
    pub batch_size: usize,
    /// t uniform over the bound's steps.
    pub uniform: Spread,
    /// t ~ p(t), proportional to each step's root mean square KL term.
    pub importance: Spread,
    /// uniform.gradient_variance / importance.gradient_variance.
    pub gradient_variance_ratio: f64,
}

/// Running sums of the flattened gradients.
struct Moments {
    sum: Vec<f64>,
    sum_sq: Vec<f64>,
    losses: Vec<f64>,
}

impl Moments {
    fn new() -> Self {
        Self {
            sum: Vec::new(),
            sum_sq: Vec::new(),
            losses: Vec::new(),
        }
    }

    fn add(&mut self, gradient: &[f32], loss: f64) {
        if self.sum.is_empty() {
            self.sum = vec![0.0; gradient.len()];
            self.sum_sq = vec![0.0; gradient.len()];
        }
        for ((s, q), &g) in self.sum.iter_mut().zip(&mut self.sum_sq).zip(gradient) {
            let g = g as f64;
            *s += g;
            *q += g * g;
        }
        self.losses.push(loss);
    }

    fn spread(&self) -> Spread {
        let n = self.losses.len() as f64;
        let var = |sum: f64, sum_sq: f64| ((sum_sq - sum * sum / n) / (n - 1.0)).max(0.0);
        let gradient_variance = self
            .sum
            .iter()
            .zip(&self.sum_sq)
            .map(|(&s, &q)| var(s, q))
            .sum();
        let loss_sum: f64 = self.losses.iter().sum();
        let loss_sq: f64 = self.losses.iter().map(|l| l * l).sum();
        Spread {
            gradient_variance,
            loss_mean: loss_sum / n,
            loss_variance: var(loss_sum, loss_sq),
        }
    }
}

/// Every parameter's gradient, flattened in the module's visiting order.
fn flat_gradient(model: &impl Module, grads: &Gradients) -> Vec<f32> {
    struct Collect<'a>(&'a Gradients, Vec<f32>);
    impl ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let value = param.val();
            let n = value.shape().num_elements();
            match value.grad(self.0) {
                Some(g) => {
                    let data = g.into_data().convert::<f32>();
                    self.1
                        .extend_from_slice(data.as_slice::<f32>().expect("f32 data"));
                }
                None => self.1.extend(std::iter::repeat_n(0.0, n)),
            }
        }
    }
    let mut visitor = Collect(grads, Vec::new());
    model.visit(&mut visitor);
    visitor.1
}

/// Held-out points whose every step's KL term sets the importance sampler's p(t).
pub const PROFILE_POINTS: usize = 256;

/// Measures both estimators on `batches` batches of `batch_size` held-out rows each, for a
/// trained run.
pub fn gradient_variance(
    manifest: &RunManifest,
    run: &RunDir,
    device: &Device,
    batches: usize,
    batch_size: usize,
    seed: u64,
) -> Result<GradientVariance, RunError> {
    let model = run.load_model(manifest, &device.clone().autodiff())?;
    let bound = manifest.bound_of(&model).map_err(|e| RunError::Corrupt {
        path: run.file("config.json").display().to_string(),
        message: e.to_string(),
    })?;
    let points = heldout_points(manifest, run, 10_000)?;
    let probe = Probe {
        points: &points,
        device,
        batches,
        batch_size,
        seed,
    };
    Ok(match bound {
        Diffusion::Gaussian(g) => probe.measure(&g, &model),
        Diffusion::Binomial(b) => probe.measure(&b, &model),
    })
}

/// The batches a gradient-variance measurement draws from.
#[derive(Debug, Clone, Copy)]
pub struct Probe<'a> {
    /// The data rows, row-major `[n, d]`.
    pub points: &'a [f32],
    /// The plain device (the model lives on its autodiff twin).
    pub device: &'a Device,
    /// Independent batches per estimator (at least 2).
    pub batches: usize,
    /// Rows per batch.
    pub batch_size: usize,
    /// Seed of the batches, steps and noise.
    pub seed: u64,
}

impl Probe<'_> {
    /// Both estimators' spread for `model` (on `device.autodiff()`) of `process`.
    pub fn measure<P: Process, N: ReverseNetwork>(
        &self,
        process: &P,
        model: &ReverseModel<N>,
    ) -> GradientVariance {
        let (d, steps, device) = (process.dim(), process.steps(), self.device);
        let ad = device.clone().autodiff();
        let (points, batch_size) = (self.points, self.batch_size);
        let rows = points.len() / d;
        let mut rng = diffusion_data::rng(self.seed, streams::EVAL_NOISE);

        // each step's mean squared KL term over the first PROFILE_POINTS points
        let profile = rows.min(PROFILE_POINTS);
        let plain = model.network.valid();
        let tables = process.tables(device);
        let first = process.first_step();
        let mut second_moment = vec![0.0f64; process.terms()];
        let ts: Vec<usize> = (first..=steps).collect();
        for i in 0..profile {
            let x0: Vec<f32> = ts
                .iter()
                .flat_map(|_| points[i * d..(i + 1) * d].iter().copied())
                .collect();
            let prepared = process.prepare_rows(&x0, &ts, &mut rng);
            let kl = process
                .kl_rows(&tables, &plain, prepared, device)
                .into_data()
                .convert::<f32>();
            for (m, &l) in second_moment
                .iter_mut()
                .zip(kl.as_slice::<f32>().expect("f32 data"))
            {
                *m += (l as f64) * (l as f64) / profile as f64;
            }
        }
        let samplers = [
            StepSampler::starting_at(first, steps),
            StepSampler::from_second_moments(first, second_moment),
        ];
        let ad_tables = process.tables(&ad);
        let mut moments = [Moments::new(), Moments::new()];
        for _ in 0..self.batches {
            let mut x0 = Vec::with_capacity(batch_size * d);
            for _ in 0..batch_size {
                let i = rng.random_range(0..rows);
                x0.extend_from_slice(&points[i * d..(i + 1) * d]);
            }
            for (sampler, m) in samplers.iter().zip(&mut moments) {
                let (ts, weights) = sampler.draw(batch_size, &mut rng);
                let batch = training_batch_at(process, &x0, ts, weights, &mut rng);
                let loss = process
                    .step_loss(&ad_tables, model, batch, Objective::BOUND, &ad)
                    .loss;
                let value = loss.clone().into_scalar::<f32>() as f64;
                let grads = loss.backward();
                m.add(&flat_gradient(model, &grads), value);
            }
        }
        let [uniform, importance] = moments.map(|m| m.spread());
        GradientVariance {
            batches: self.batches,
            batch_size,
            gradient_variance_ratio: uniform.gradient_variance / importance.gradient_variance,
            uniform,
            importance,
        }
    }
}
