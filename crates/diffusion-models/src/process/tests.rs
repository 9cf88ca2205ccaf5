//! The bound's identities: exact reversals give K = L_null, the parametrizations reach the
//! posterior, the learned schedule's device-side bound equals the fixed one, and the Monte-Carlo
//! training estimate is unbiased for the full sum.

use std::f64::consts::PI;

use burn::tensor::{Device, Tensor};
use diffusion_core::{BetaSchedule, GaussianDiffusion, MeanStderr, ReverseParametrization};
use rand::Rng as _;
use rand_distr::StandardNormal;

use super::*;
use crate::bound::Diffusion;
use crate::model::ModelConfig;
use crate::network::ReverseModel;

/// The device batch of Gaussian rows (x_0, t), x_t drawn from `rng`.
fn prepare(
    bound: &GaussianBound,
    x0: &[f32],
    ts: &[usize],
    rng: &mut diffusion_data::Rng,
    device: &Device,
) -> GaussianBatch {
    bound
        .prepare_rows(x0, ts, rng)
        .upload(&bound.tables(device), device)
}

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
            clip: None,
            decoder: None,
            respaced: None,
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
        diffusion: GaussianDiffusion::new(BetaSchedule::linear(1e-3, 0.2).betas(steps).unwrap(), 2)
            .unwrap(),
        parametrization: ReverseParametrization::EpsilonFixed,
        clip: None,
        decoder: None,
        respaced: None,
    };
    let n = 200;
    let x0 = standard_normal_points(n, 2, 11);
    let ts: Vec<usize> = (0..n).map(|i| 2 + i % (steps - 1)).collect();
    let mut rng = diffusion_data::rng(12, 0);
    let batch = prepare(&bound, &x0, &ts, &mut rng, &device);
    let z = Tensor::cat(vec![batch.noise.clone(), batch.noise.clone() * 0.0], 1);
    let (mean, log_var) =
        bound
            .parametrization
            .mean_log_variance(z, batch.x_t.clone(), &batch.coefficients);
    let max_diff = |a: Tensor<2>, b: Tensor<2>| -> f32 { (a - b).abs().max().into_scalar::<f32>() };
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
        GaussianDiffusion::new(BetaSchedule::linear(1e-3, 0.2).betas(steps).unwrap(), 2).unwrap();
    let n = 98;
    let x0 = standard_normal_points(n, 2, 13);
    let ts: Vec<usize> = (0..n).map(|i| 2 + i % (steps - 1)).collect();
    let mut rng = diffusion_data::rng(14, 0);
    let bound = GaussianBound {
        diffusion: diffusion.clone(),
        parametrization: ReverseParametrization::Epsilon,
        clip: None,
        decoder: None,
        respaced: None,
    };
    let batch = prepare(&bound, &x0, &ts, &mut rng, &device);
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
        clip: None,
        decoder: None,
        respaced: None,
    };
    let device = Device::flex().autodiff();
    let model = ReverseModel::new(ModelConfig::default().init(2, 4, steps, &device))
        .with_learned_schedule(&betas, &device);
    let n = 390;
    let x0: Vec<f32> = standard_normal_points(n, 2, 21)
        .into_iter()
        .map(|v| 0.5 * v + 0.3)
        .collect();
    let ts: Vec<usize> = (0..n).map(|i| 2 + i % (steps - 1)).collect();
    let mut rng = diffusion_data::rng(22, 0);
    let rows = bound.prepare_rows(&x0, &ts, &mut rng);
    let tables = bound.tables(&device);
    let fixed = host(bound.kl_batch(
        &model.network,
        &tables,
        rows.clone().upload(&tables, &device),
    ));
    let schedule = model.learned_schedule().unwrap();
    let (kl, constant) = bound.learned_kl_rows(&model.network, schedule, rows.clone(), &device);
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
    // the gradient of w_t = logit(b_t) against central differences of the same loss (the same
    // network, rows and noise) at the largest component and at a middle step
    let loss_at = |w_shift: (usize, f64)| -> f64 {
        let mut shifted = betas.clone();
        let b = shifted[w_shift.0 + 1];
        let w = (b / (1.0 - b)).ln() + w_shift.1;
        shifted[w_shift.0 + 1] = 1.0 / (1.0 + (-w).exp());
        let m = ReverseModel::new(model.network.clone()).with_learned_schedule(&shifted, &device);
        let s = m.learned_schedule().unwrap();
        let (kl, c) = bound.learned_kl_rows(&m.network, s, rows.clone(), &device);
        kl.mean().into_scalar::<f32>() as f64 - c.into_scalar::<f32>() as f64
    };
    let largest = (0..g.len())
        .max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()))
        .unwrap();
    for j in [largest, steps / 2] {
        let h = 0.05;
        let numeric = (loss_at((j, h)) - loss_at((j, -h))) / (2.0 * h);
        let analytic = g[j] as f64;
        assert!(
            (numeric - analytic).abs() < 0.05 * analytic.abs() + 2e-4,
            "w_{}: {analytic} against central differences {numeric}",
            j + 2
        );
    }
    assert!(g[largest].abs() > 1e-3, "{g:?}");
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
        diffusion: GaussianDiffusion::new(BetaSchedule::linear(1e-3, 0.2).betas(steps).unwrap(), 2)
            .unwrap(),
        parametrization: ReverseParametrization::Epsilon,
        clip: None,
        decoder: None,
        respaced: None,
    };
    let model = ModelConfig::default().init(2, 4, steps, &device);
    let n = 100;
    let x0 = standard_normal_points(n, 2, 31);
    let ts: Vec<usize> = (0..n).map(|i| 2 + i % (steps - 1)).collect();
    let mut rng = diffusion_data::rng(32, 0);
    let batch = prepare(&bound, &x0, &ts, &mut rng, &device);
    let tables = bound.tables(&device);
    let (mse, kl) = bound.hybrid_rows(&model, &tables, batch.clone());
    let want_mse = host(bound.noise_error_rows(&model, batch.clone()));
    let want_kl = host(bound.kl_batch(&model, &tables, batch));
    assert_eq!(host(mse), want_mse);
    assert_eq!(host(kl), want_kl);
}

/// A "network" whose output is one trainable table, so that a loss's gradient in the network's
/// output can be read off directly.
#[derive(burn::module::Module, Debug)]
struct Outputs {
    z: burn::module::Param<Tensor<2>>,
}

impl crate::network::ReverseNetwork for Outputs {
    fn forward(&self, _x_t: Tensor<2>, _t: Tensor<1, burn::tensor::Int>) -> Tensor<2> {
        self.z.val()
    }
}

/// What makes the hybrid loss hybrid (Nichol and Dhariwal 2021, section 3.1): the KL part's
/// gradient reaches only the variance outputs (the mean is held), the noise error's only the
/// mean outputs; the bound itself reaches both.
#[test]
fn hybrid_kl_reaches_only_the_variance_and_the_noise_error_only_the_mean() {
    let device = Device::flex().autodiff();
    let steps = 30;
    let bound = GaussianBound {
        diffusion: GaussianDiffusion::new(BetaSchedule::linear(1e-3, 0.2).betas(steps).unwrap(), 2)
            .unwrap(),
        parametrization: ReverseParametrization::Epsilon,
        clip: None,
        decoder: None,
        respaced: None,
    };
    let n = 64;
    let x0 = standard_normal_points(n, 2, 41);
    let ts: Vec<usize> = (0..n).map(|i| 2 + i % (steps - 1)).collect();
    let mut rng = diffusion_data::rng(42, 0);
    let batch = prepare(&bound, &x0, &ts, &mut rng, &device);
    let z: Vec<f32> = standard_normal_points(n, 4, 43)
        .iter()
        .map(|v| 0.5 * v)
        .collect();
    let net = Outputs {
        z: burn::module::Param::from_tensor(tensor2(z, n, 4, &device)),
    };
    // the gradient's largest magnitude in the mean columns (0, 1) and the variance columns (2, 3)
    let reach = |loss: Tensor<1>| -> [f32; 2] {
        let grads = loss.sum().backward();
        let g = host(net.z.grad(&grads).unwrap());
        let mut m = [0.0f32; 2];
        for (i, v) in g.iter().enumerate() {
            let c = usize::from(i % 4 >= 2);
            m[c] = m[c].max(v.abs());
        }
        m
    };
    let tables = bound.tables(&device);
    let (mse, kl) = bound.hybrid_rows(&net, &tables, batch.clone());
    let [mean, var] = reach(kl);
    assert!(
        mean == 0.0 && var > 1e-3,
        "KL part: mean {mean}, variance {var}"
    );
    let [mean, var] = reach(mse);
    assert!(
        mean > 1e-3 && var == 0.0,
        "noise error: mean {mean}, variance {var}"
    );
    let [mean, var] = reach(bound.kl_batch(&net, &tables, batch));
    assert!(
        mean > 1e-3 && var > 1e-3,
        "bound: mean {mean}, variance {var}"
    );
}

/// A decoder over four levels 0.02 apart, -0.03..=0.03, in each of `d` coordinates.
fn four_levels(d: usize) -> Decoder {
    Decoder {
        lowest: vec![-0.03; d],
        highest: vec![0.03; d],
        half: vec![0.01; d],
    }
}

/// `n` rows of `d` values on [`four_levels`]' levels.
fn level_points(n: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut rng = diffusion_data::rng(seed, 9);
    (0..n * d)
        .map(|_| -0.03 + 0.02 * rng.random_range(0..4) as f32)
        .collect()
}

/// ∫ N(x; mean, sd²) over [lower, upper] by Simpson's rule in f64, the ends cut at 12 sd.
fn bin_probability(lower: f64, upper: f64, mean: f64, sd: f64) -> f64 {
    let (a, b) = (lower.max(mean - 12.0 * sd), upper.min(mean + 12.0 * sd));
    if a >= b {
        return 0.0;
    }
    let m = 2000;
    let h = (b - a) / m as f64;
    let pdf = |x: f64| (-0.5 * ((x - mean) / sd).powi(2)).exp() / (sd * (2.0 * PI).sqrt());
    let inner: f64 = (1..m)
        .map(|i| pdf(a + h * i as f64) * if i % 2 == 1 { 4.0 } else { 2.0 })
        .sum();
    h / 3.0 * (pdf(a) + inner + pdf(b))
}

/// With a decoder, a row at t = 1 contributes minus the log-probability of x_0's bins under the
/// network's kernel at t = 1 (the open bins of the lowest and highest levels included), checked
/// against Simpson's rule in f64; rows at other steps keep their KL terms in the same batch;
/// and its gradient in the network's outputs matches central differences.
#[test]
fn decoder_term_is_minus_the_log_probability_of_the_bins() {
    let device = Device::flex().autodiff();
    let (steps, d, n) = (30, 3, 40);
    let diffusion =
        GaussianDiffusion::new(BetaSchedule::linear(1e-3, 0.2).betas(steps).unwrap(), d).unwrap();
    let edge = GaussianBound::new(diffusion, ReverseParametrization::Epsilon);
    let bound = GaussianBound {
        decoder: Some(four_levels(d)),
        ..edge.clone()
    };
    assert_eq!((bound.first_step(), bound.terms()), (1, steps));
    let x0 = level_points(n, d, 5);
    let z: Vec<f32> = standard_normal_points(n, 2 * d, 6)
        .iter()
        .map(|v| 0.5 * v)
        .collect();
    let net = Outputs {
        z: burn::module::Param::from_tensor(tensor2(z, n, 2 * d, &device)),
    };
    let tables = bound.tables(&device);
    let batch = prepare(
        &bound,
        &x0,
        &vec![1; n],
        &mut diffusion_data::rng(7, 0),
        &device,
    );
    let x1 = batch.x_t.clone();
    let first = bound.kl_batch(&net, &tables, batch.clone());
    let grads = first.clone().sum().backward();
    let grad = host(net.z.grad(&grads).unwrap());
    // the gradient in a mean output and a variance output of three rows against central
    // differences of the same terms, in f64 sums of the f32 terms
    let z0 = host(net.z.val());
    let term_sum = |j: usize, h: f32| {
        let mut z = z0.clone();
        z[j] += h;
        let shifted = Outputs {
            z: burn::module::Param::from_tensor(tensor2(z, n, 2 * d, &device)),
        };
        let terms = host(bound.kl_batch(&shifted, &tables, batch.clone()));
        terms.iter().map(|&v| v as f64).sum::<f64>()
    };
    for row in [0, 7, 23] {
        for j in [row * 2 * d, row * 2 * d + d + 1] {
            let h = 1e-2f32;
            let fd = (term_sum(j, h) - term_sum(j, -h)) / (2.0 * h as f64);
            assert!(
                (grad[j] as f64 - fd).abs() < 2e-2 * (1.0 + fd.abs()),
                "output {j}: {} vs {fd}",
                grad[j]
            );
        }
    }
    let first = host(first);
    let (mean, log_var) = bound.mean_log_variance(&net, &tables, x1, 1);
    let (mean, var) = (host(mean), host(log_var.exp()));
    let (lower, upper) = four_levels(d).bins(&x0);
    let mut open = 0;
    for (i, &got) in first.iter().enumerate() {
        let want: f64 = -(i * d..(i + 1) * d)
            .map(|k| {
                open += usize::from(lower[k] < -1.0 || upper[k] > 1.0);
                let sd = (var[k] as f64).sqrt();
                bin_probability(lower[k] as f64, upper[k] as f64, mean[k] as f64, sd).ln()
            })
            .sum::<f64>();
        let got = got as f64;
        assert!(
            (got - want).abs() < 1e-4 * want.abs().max(1.0),
            "row {i}: {got} vs {want}"
        );
        assert!(want > 0.1, "row {i}: a term that says something ({want})");
    }
    assert!(open > n / 2, "the open bins are exercised ({open})");
    // a batch of steps 1 and 5: the decoder's terms at t = 1, the KL terms at t = 5
    let ts: Vec<usize> = (0..n).map(|i| if i % 2 == 0 { 1 } else { 5 }).collect();
    let mixed = |b: &GaussianBound| {
        let batch = prepare(b, &x0, &ts, &mut diffusion_data::rng(7, 0), &device);
        host(b.kl_batch(&net, &b.tables(&device), batch))
    };
    let (with, without) = (mixed(&bound), mixed(&edge));
    for i in 0..n {
        let want = if ts[i] == 1 { first[i] } else { without[i] };
        assert!(
            (with[i] - want).abs() <= 1e-5 * want.abs().max(1.0),
            "row {i}"
        );
    }
}

/// The Monte-Carlo training estimate is unbiased for the full sum: on the same model, the
/// mean of many training losses equals minus the full-sum K; with a decoder too, whose terms
/// run over t = 1..T.
#[test]
fn monte_carlo_estimate_agrees_with_the_full_sum() {
    let device = Device::flex();
    let steps = 30;
    let edge = GaussianBound {
        diffusion: GaussianDiffusion::new(BetaSchedule::linear(1e-3, 0.2).betas(steps).unwrap(), 2)
            .unwrap(),
        parametrization: ReverseParametrization::Paper,
        clip: None,
        decoder: None,
        respaced: None,
    };
    let decoded = GaussianBound {
        decoder: Some(four_levels(2)),
        ..edge.clone()
    };
    for bound in [edge, decoded] {
        monte_carlo_agrees_with_the_full_sum(&bound, &device);
    }
}

fn monte_carlo_agrees_with_the_full_sum(bound: &GaussianBound, device: &Device) {
    let steps = bound.steps();
    let model = ReverseModel::new(ModelConfig::default().init(2, 4, steps, device));
    // Points far from N(0, I) so the KL terms are large and vary with t.
    let points: Vec<f32> = standard_normal_points(2000, 2, 3)
        .into_iter()
        .map(|v| 0.3 * v + 1.0)
        .collect();
    let mut rng = diffusion_data::rng(4, 0);
    let full = bound_bits_per_point(bound, &model.network, &points, &mut rng, device, 8192);
    let full = MeanStderr::of(&full).unwrap();
    let losses: Vec<f64> = (0..50)
        .map(|_| {
            training_loss(bound, &model, &points, &mut rng, device).into_scalar::<f32>() as f64
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
    let bound = Diffusion::Binomial(super::condition_tests::binomial(steps, pi, d));
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
    let bound = Diffusion::Binomial(super::condition_tests::binomial(steps, pi, d));
    let model = ModelConfig::default().init(d, d, steps, &device);
    let mut rng = diffusion_data::rng(6, 0);
    let s = bound.sample(&model, 4000, &mut rng, &device, 1000);
    assert!(s.iter().all(|&v| v == 0.0 || v == 1.0));
    let rate = s.iter().map(|&v| v as f64).sum::<f64>() / s.len() as f64;
    // s.e. of the rate over 40,000 bits is 0.002
    assert!((rate - pi).abs() < 0.01, "{rate}");
}

/// The strata cover every step once, contiguous, never more than the steps; they grow from both
/// ends of the chain, the first and last steps one by one.
#[test]
fn strata_partition_the_steps() {
    for (count, parts) in [(999, 16), (99, 4), (5, 10), (7, 1), (40, 39)] {
        let strata = stratify(count, parts);
        assert_eq!(strata.len(), parts.min(count));
        let mut next = 0;
        for &(start, size) in &strata {
            assert_eq!(start, next);
            assert!(size >= 1);
            next += size;
        }
        assert_eq!(next, count);
    }
    // 999 steps in 32: the first four and the last four alone, the widest in the middle
    let strata = stratify(999, 32);
    assert_eq!(&strata[..4], &[(0, 1), (1, 1), (2, 1), (3, 1)]);
    assert_eq!(&strata[28..], &[(995, 1), (996, 1), (997, 1), (998, 1)]);
    let widest = strata.iter().max_by_key(|s| s.1).unwrap();
    assert!(widest.0 <= 500 && widest.0 + widest.1 >= 500, "{strata:?}");
}

/// The stratified estimate of K agrees with the full sum (within the two standard errors) on
/// data where the untrained network's KL terms vary over t, for few strata and for one per
/// step.
#[test]
fn stratified_bound_is_unbiased_for_the_full_sum() {
    let device = Device::flex();
    let steps = 60;
    let bound = Diffusion::Gaussian(GaussianBound {
        diffusion: GaussianDiffusion::new(BetaSchedule::linear(1e-3, 0.2).betas(steps).unwrap(), 2)
            .unwrap(),
        parametrization: ReverseParametrization::Paper,
        clip: None,
        decoder: None,
        respaced: None,
    });
    let model = ModelConfig::default().init(2, 4, steps, &device);
    // x_0 ~ N(0, 0.3^2 I): the forward kernel is not the reversal
    let points: Vec<f32> = standard_normal_points(3000, 2, 5)
        .iter()
        .map(|v| 0.3 * v)
        .collect();
    let mut rng = diffusion_data::rng(6, 0);
    let full =
        MeanStderr::of(&bound.bound_bits_per_point(&model, &points, &mut rng, &device, 8192))
            .unwrap();
    for draws in [3, 10, steps - 1] {
        let mut rng = diffusion_data::rng(7, draws as u64);
        let est = bound.bound_bits_stratified(&model, &points, draws, &mut rng, &device, 4096);
        let est = MeanStderr::of(&est).unwrap();
        let tolerance = 4.0 * (full.stderr.powi(2) + est.stderr.powi(2)).sqrt();
        assert!(
            (est.mean - full.mean).abs() < tolerance,
            "{draws} draws: {} ± {} vs the full sum {} ± {}",
            est.mean,
            est.stderr,
            full.mean,
            full.stderr
        );
    }
    // the KL terms matter: K is far from the null model's figure
    let l_null = bound.l_null_bits(&[0.0, 0.0]);
    assert!(
        (full.mean - l_null).abs() > 1.0,
        "{} vs {l_null}",
        full.mean
    );
}

/// The per-step terms: at one step they are the KL rows of the same draws (in bits), and
/// summed over every step they give the full-sum bound: K = constant - sum_t terms, point by
/// point, when the draws are the same rows in the same order (one point).
#[test]
fn kl_terms_are_the_bounds_summands() {
    let device = Device::flex();
    let steps = 30;
    let g = GaussianBound::new(
        GaussianDiffusion::new(BetaSchedule::linear(1e-3, 0.2).betas(steps).unwrap(), 2).unwrap(),
        ReverseParametrization::Paper,
    );
    let model = ModelConfig::default().init(2, 4, steps, &device);
    let points: Vec<f32> = standard_normal_points(40, 2, 8)
        .iter()
        .map(|v| 0.4 * v + 0.1)
        .collect();
    let t = 17;
    let terms = kl_terms_bits(
        &g,
        &model,
        &points,
        &[t],
        &mut diffusion_data::rng(9, 0),
        &device,
        7,
    );
    let rows = g.prepare_rows(&points, &[t; 40], &mut diffusion_data::rng(9, 0));
    let want = host(g.kl_rows(&g.tables(&device), &model, rows, &device));
    assert_eq!(terms.len(), 1);
    for (got, want) in terms[0].iter().zip(&want) {
        assert!((got - *want as f64 / LN_2).abs() < 1e-9, "{got} vs {want}");
    }
    // one point: bound_bits_per_point's rows are its steps 2..T in order, as the terms' are
    let one = &points[..2];
    let all: Vec<usize> = (2..=steps).collect();
    let terms = kl_terms_bits(
        &g,
        &model,
        one,
        &all,
        &mut diffusion_data::rng(10, 0),
        &device,
        64,
    );
    let k = bound_bits_per_point(
        &g,
        &model,
        one,
        &mut diffusion_data::rng(10, 0),
        &device,
        64,
    );
    let sum: f64 = terms.iter().map(|v| v[0]).sum();
    assert!(
        (g.bound_constant_bits(one) - sum - k[0]).abs() < 1e-9,
        "{} vs {}",
        g.bound_constant_bits(one) - sum,
        k[0]
    );
}

/// With a decoder the clip range is open at t = 1 (the decoder's mean must be free to leave it
/// for the open bins of the lowest and highest levels) and closed at every other step.
#[test]
fn a_decoder_leaves_the_first_step_unclipped() {
    let device = Device::flex();
    let (steps, d, n) = (20, 2, 3);
    let diffusion =
        GaussianDiffusion::new(BetaSchedule::linear(1e-3, 0.2).betas(steps).unwrap(), d).unwrap();
    let bound = GaussianBound {
        clip: Some(ClipRange {
            low: vec![-0.03; d],
            high: vec![0.03; d],
        }),
        decoder: Some(four_levels(d)),
        ..GaussianBound::new(diffusion.clone(), ReverseParametrization::Epsilon)
    };
    // noise predictions that put x̂_0 far outside the range
    let z: Vec<f32> = (0..n * 2 * d)
        .map(|i| if i % 4 < 2 { 3.0 } else { 0.0 })
        .collect();
    let net = Outputs {
        z: burn::module::Param::from_tensor(tensor2(z, n, 2 * d, &device)),
    };
    let x = tensor2(vec![0.01; n * d], n, d, &device);
    let tables = bound.tables(&device);
    for t in [1, 2, 7] {
        let (mean, _) = bound.mean_log_variance(&net, &tables, x.clone(), t);
        let (s, sd) = diffusion.q_sample_coefficients(t);
        let x0 = (0.01 - sd * 3.0) / s;
        let (c0, ct, _) = diffusion.posterior_coefficients(t);
        let want = match t {
            1 => x0,
            _ => c0 * x0.max(-0.03) + ct * 0.01,
        };
        for m in host(mean) {
            assert!(
                (m as f64 - want).abs() < 1e-5 * want.abs().max(1e-3),
                "t = {t}: {m} vs {want}"
            );
        }
    }
}
