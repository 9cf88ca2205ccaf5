//! Conditioned reverse chains (paper section 2.5) against closed forms: the device product of
//! Gaussians against the host formula, and whole chains of a linear kernel (the forward kernel,
//! `paper` parametrization at z = 0) against the exact recursion of their mean and variance
//! (Gaussian) or of P(x = 1) (binomial).

use burn::tensor::Device;
use diffusion_core::condition::bernoulli_product;
use diffusion_core::{BetaSchedule, BinomialDiffusion, GaussianDiffusion, ReverseParametrization};
use rand::Rng as _;
use rand_distr::StandardNormal;

use super::*;
use crate::condition::{Condition, ConditionError, ConditionMode, Conditioning, Variable};
use crate::model::ModelConfig;

fn gaussian(steps: usize, d: usize) -> GaussianBound {
    GaussianBound {
        diffusion: GaussianDiffusion::new(BetaSchedule::paper().betas(steps).unwrap(), d).unwrap(),
        parametrization: ReverseParametrization::Paper,
        clip: None,
        decoder: None,
        respaced: None,
    }
}

/// A binomial process on the reciprocal schedule with the `paper` parametrization.
pub(super) fn binomial(steps: usize, pi: f64, d: usize) -> BinomialBound {
    BinomialBound {
        diffusion: BinomialDiffusion::new(
            BetaSchedule::Reciprocal.raw_betas(steps).unwrap(),
            pi,
            d,
        )
        .unwrap(),
        parametrization: ReverseParametrization::Paper,
        respaced: None,
    }
}

fn mean_var(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let v: Vec<f64> = values.collect();
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    (
        m,
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0),
    )
}

#[test]
fn device_product_matches_the_host_closed_form() {
    let device = Device::flex();
    let (m, d) = (3, 4);
    let rows = [
        Condition::new().known(1, 0.25).observed(2, -1.0, 0.5),
        Condition::new().observed(0, 2.0, 0.1).observed(0, 1.0, 0.2),
        Condition::new(),
    ];
    let given = Conditioning::new(&rows, d, Variable::Continuous, ConditionMode::Constant).unwrap();
    let mut rng = diffusion_data::rng(1, 0);
    let mut draw = |scale: f64| -> Vec<f64> {
        (0..m * d)
            .map(|_| scale * rng.sample::<f64, _>(StandardNormal))
            .collect()
    };
    let mean = draw(1.0);
    let var: Vec<f64> = draw(1.0).iter().map(|v| 0.05 + v * v).collect();
    let eps = draw(1.0);
    let factor = given.gaussian_step(m, 1.0, &mut rng);
    let host = factor.gaussian_draw_host(&mean, &var, &eps);
    let t = |v: &[f64]| tensor2(v.iter().map(|&x| x as f32).collect(), m, d, &device);
    let dev = super::host(
        factor
            .upload(m, d, &device)
            .gaussian_draw(t(&mean), t(&var), t(&eps)),
    );
    for j in 0..m * d {
        assert!(
            (host[j] - dev[j]).abs() < 1e-5,
            "{j}: {} vs {}",
            host[j],
            dev[j]
        );
    }
    // the known value exactly, and the free row untouched
    assert_eq!(dev[1], 0.25);
    for j in 2 * d..3 * d {
        let want = (mean[j] + var[j].sqrt() * eps[j]) as f32;
        assert!((dev[j] - want).abs() < 1e-5);
    }
    // two observations of one coordinate act as their product: precision 1/0.01 + 1/0.04
    let (y, s2) = (
        (2.0 / 0.01 + 1.0 / 0.04) / (1.0 / 0.01 + 1.0 / 0.04),
        1.0 / (1.0 / 0.01 + 1.0 / 0.04),
    );
    let (pm, pv) = diffusion_core::condition::gaussian_product(mean[d], var[d], y, s2);
    assert!((host[d] as f64 - (pm + pv.sqrt() * eps[d])).abs() < 1e-5);
}

/// The recursion of a conditioned linear Gaussian chain, x_{k} = N(a x_{k+1}, b) r_k, for one
/// coordinate observed as (y, s) (s = 0: known): the mean and variance of x_0.
fn linear_chain_moments(g: &GaussianDiffusion, y: f64, s: f64, mode: ConditionMode) -> (f64, f64) {
    renoised_chain_moments(g, y, s, mode, (1, 1))
}

/// [`linear_chain_moments`] with each block of `jump` steps drawn `passes` times, the chain
/// sent back through the forward kernels x_t = N(sqrt(1 - b_t) x_{t-1}, b_t) between draws.
fn renoised_chain_moments(
    g: &GaussianDiffusion,
    y: f64,
    s: f64,
    mode: ConditionMode,
    blocks: (usize, usize),
) -> (f64, f64) {
    let ab = |t: usize| ((1.0 - g.beta(t)).sqrt(), g.beta(t));
    let chain = LinearChain {
        steps: g.steps(),
        kernel: &ab,
        level: &|k| g.alpha_bar(k),
        renoise: &ab,
    };
    chain.moments(y, s, mode, blocks)
}

/// A chain of linear Gaussian kernels x_{t-1} = N(a_t x_t, b_t) from x_T = N(0, 1), for the
/// recursion of its conditioned moments.
struct LinearChain<'a> {
    steps: usize,
    /// (a_t, b_t) of step t's kernel.
    kernel: &'a dyn Fn(usize) -> (f64, f64),
    /// abar of x_k, the level the factor r_k of the forward and likelihood modes takes.
    level: &'a dyn Fn(usize) -> f64,
    /// (a, b) of the forward kernel x_t = N(a x_{t-1}, b) that renoises step t.
    renoise: &'a dyn Fn(usize) -> (f64, f64),
}

impl LinearChain<'_> {
    /// The mean and variance of x_0 for one coordinate observed as (y, s) (s = 0: known, s =
    /// infinity: free), each block of `jump` steps drawn `passes` times.
    fn moments(
        &self,
        y: f64,
        s: f64,
        mode: ConditionMode,
        (passes, jump): (usize, usize),
    ) -> (f64, f64) {
        let step = |(m, v): (f64, f64), a: f64, b: f64, k: usize| {
            let abar = (self.level)(k);
            // r_k = N(y_k, s_k²), with y_k = sqrt(abar) y + sqrt(1 - abar) e in forward mode
            let (y_mean, y_var, s2) = match mode {
                ConditionMode::Constant => (y, 0.0, s * s),
                ConditionMode::Forward => (abar.sqrt() * y, 1.0 - abar, abar * s * s),
                ConditionMode::Likelihood => (y / abar.sqrt(), 0.0, (1.0 - abar + s * s) / abar),
                ConditionMode::Twisted => unreachable!("a particle system, not a recursion"),
            };
            let w = if s2 == 0.0 { 1.0 } else { b / (b + s2) };
            (
                (1.0 - w) * a * m + w * y_mean,
                ((1.0 - w) * a).powi(2) * v + w * w * y_var + b * (1.0 - w),
            )
        };
        // x_T from the prior N(0, 1), then the kernels
        let mut mv = step((0.0, 0.0), 0.0, 1.0, self.steps);
        let mut top = self.steps;
        while top >= 1 {
            let low = top.saturating_sub(jump);
            for pass in 1..=passes {
                if pass > 1 {
                    for t in low + 1..=top {
                        let (a, b) = (self.renoise)(t);
                        mv = (a * mv.0, a * a * mv.1 + b);
                    }
                }
                for t in (low + 1..=top).rev() {
                    let (a, b) = (self.kernel)(t);
                    mv = step(mv, a, b, t - 1);
                }
            }
            top = low;
        }
        mv
    }
}

#[test]
fn conditioned_gaussian_chains_match_their_recursion() {
    let device = Device::flex();
    let steps = 40;
    let bound = gaussian(steps, 2);
    // z = 0: the `paper` parametrization's kernel is the forward kernel N(sqrt(1 - b) x, b)
    let model = ModelConfig::default().init(2, 4, steps, &device);
    let n = 20_000;
    for mode in [
        ConditionMode::Constant,
        ConditionMode::Forward,
        ConditionMode::Likelihood,
    ] {
        let c = Condition::new().observed(0, 1.5, 0.5).known(1, -0.3);
        let given = Conditioning::new(&[c], 2, Variable::Continuous, mode).unwrap();
        let mut rng = diffusion_data::rng(3, 0);
        let x = sample_given(&bound, &model, n, &given, &mut rng, &device, 8192).unwrap();
        if mode != ConditionMode::Forward {
            // held at its value (or, likelihood mode, a factor of variance 0 at t = 0), so
            // exactly the value at the end
            assert!(x.chunks(2).all(|p| p[1] == -0.3f32));
        } else {
            // a draw of q(x_0 | x_0 = v) is v; the bits may differ by the f32 rounding of
            // sqrt(abar_0) v + sqrt(1 - abar_0) e = 1 v + 0 e
            assert!(x.chunks(2).all(|p| (p[1] + 0.3).abs() < 1e-7));
        }
        let (m, v) = mean_var(x.chunks(2).map(|p| p[0] as f64));
        let (want_m, want_v) = linear_chain_moments(&bound.diffusion, 1.5, 0.5, mode);
        let se = (want_v / n as f64).sqrt();
        assert!(
            (m - want_m).abs() < 4.0 * se,
            "{mode:?}: mean {m} vs {want_m}"
        );
        // the variance's standard error is about v sqrt(2 / n)
        let se_v = want_v * (2.0 / n as f64).sqrt();
        assert!(
            (v - want_v).abs() < 4.0 * se_v,
            "{mode:?}: var {v} vs {want_v}"
        );
    }
    // the recursion itself: constant r pulls the mean further toward y than the forward variant
    let (c, _) = linear_chain_moments(&bound.diffusion, 1.5, 0.5, ConditionMode::Constant);
    let (f, _) = linear_chain_moments(&bound.diffusion, 1.5, 0.5, ConditionMode::Forward);
    assert!(c > f && f > 0.0, "{c} {f}");
}

/// Renoised steps (RePaint's resampling) on the linear chain: the moments of x_0 against the
/// recursion with each step, or each block of four, drawn three times and the forward kernels
/// between draws, in every mode that runs without particles; refused with resampling, and with
/// no draw at all.
#[test]
fn renoised_chains_match_their_recursion() {
    let device = Device::flex();
    let steps = 30;
    let bound = gaussian(steps, 2);
    let model = ModelConfig::default().init(2, 4, steps, &device);
    let n = 20_000;
    for (mode, jump) in [
        (ConditionMode::Constant, 1),
        (ConditionMode::Forward, 1),
        (ConditionMode::Likelihood, 1),
        (ConditionMode::Constant, 4),
        (ConditionMode::Forward, 4),
    ] {
        let c = Condition::new().observed(0, 1.5, 0.5).known(1, -0.3);
        let given = Conditioning::new(&[c], 2, Variable::Continuous, mode)
            .unwrap()
            .renoised(3, jump)
            .unwrap();
        let mut rng = diffusion_data::rng(4, 0);
        let x = sample_given(&bound, &model, n, &given, &mut rng, &device, 8192).unwrap();
        let (m, v) = mean_var(x.chunks(2).map(|p| p[0] as f64));
        let (want_m, want_v) = renoised_chain_moments(&bound.diffusion, 1.5, 0.5, mode, (3, jump));
        let se = (want_v / n as f64).sqrt();
        assert!(
            (m - want_m).abs() < 4.0 * se,
            "{mode:?}, jump {jump}: mean {m} vs {want_m}"
        );
        let se_v = want_v * (2.0 / n as f64).sqrt();
        assert!(
            (v - want_v).abs() < 4.0 * se_v,
            "{mode:?}, jump {jump}: var {v} vs {want_v}"
        );
        // the renoised chain is another chain: its moments are not the plain one's, except
        // the likelihood mode's, which is the exact posterior N(1.2, 0.2) either way
        let (plain_m, _) = linear_chain_moments(&bound.diffusion, 1.5, 0.5, mode);
        if mode == ConditionMode::Likelihood {
            assert!((want_m - 1.2).abs() < 1e-9 && (want_v - 0.2).abs() < 1e-9);
        } else {
            assert!(
                (plain_m - want_m).abs() > 5.0 * se,
                "{mode:?}: {plain_m} vs {want_m}"
            );
        }
    }
    let c = [Condition::new().known(1, 0.5)];
    let given = || Conditioning::new(&c, 2, Variable::Continuous, ConditionMode::Constant).unwrap();
    assert!(given().renoised(0, 1).is_err() && given().renoised(2, 0).is_err());
    let both = given().renoised(2, 1).unwrap().resampled().unwrap();
    assert!(both.check(2, Variable::Continuous, 10).is_err());
    // one draw a block is the plain chain, draw for draw
    let draw = |given: &Conditioning| {
        let mut rng = diffusion_data::rng(6, 0);
        sample_given(&bound, &model, 50, given, &mut rng, &device, 50).unwrap()
    };
    assert_eq!(draw(&given()), draw(&given().renoised(1, 4).unwrap()));
}

#[test]
fn an_empty_condition_is_the_unconditioned_chain() {
    let device = Device::flex();
    let empty = [Condition::new()];
    // binomial: the same draws, bit for bit
    let bound = binomial(30, 0.2, 6);
    let model = ModelConfig::default().init(6, 6, 30, &device);
    for mode in [ConditionMode::Constant, ConditionMode::Forward] {
        let given = Conditioning::new(&empty, 6, Variable::Binary, mode).unwrap();
        let plain = sample(
            &bound,
            &model,
            500,
            &mut diffusion_data::rng(4, 0),
            &device,
            200,
        );
        let cond = sample_given(
            &bound,
            &model,
            500,
            &given,
            &mut diffusion_data::rng(4, 0),
            &device,
            200,
        )
        .unwrap();
        assert_eq!(plain, cond, "{mode:?}");
    }
    // Gaussian: the same draws; the kernel's standard deviation is sqrt(var) instead of
    // exp(log_var / 2), equal to float rounding
    let bound = gaussian(20, 2);
    let model = ModelConfig::default().init(2, 4, 20, &device);
    let given = Conditioning::new(&empty, 2, Variable::Continuous, ConditionMode::Forward).unwrap();
    let plain = sample(
        &bound,
        &model,
        300,
        &mut diffusion_data::rng(4, 0),
        &device,
        100,
    );
    let cond = sample_given(
        &bound,
        &model,
        300,
        &given,
        &mut diffusion_data::rng(4, 0),
        &device,
        100,
    )
    .unwrap();
    for (a, b) in plain.iter().zip(&cond) {
        assert!((a - b).abs() < 1e-5, "{a} {b}");
    }
}

/// P(x_0 = 1) of one bit of a conditioned binomial chain whose kernel is the forward kernel,
/// by the exact recursion over the two states (constant r: an observation (y, e) at every step).
fn binary_chain_rate(b: &BinomialDiffusion, y: bool, e: f64) -> f64 {
    renoised_binary_rate(b, y, e, (1, 1))
}

/// [`binary_chain_rate`] with each block of `jump` steps drawn `passes` times, the bit sent
/// back through the forward kernels between draws.
fn renoised_binary_rate(
    b: &BinomialDiffusion,
    y: bool,
    e: f64,
    (passes, jump): (usize, usize),
) -> f64 {
    let pi = b.pi();
    let mut p = bernoulli_product(pi, y, e);
    let mut top = b.steps();
    while top >= 1 {
        let low = top.saturating_sub(jump);
        for pass in 1..=passes {
            if pass > 1 {
                for t in low + 1..=top {
                    p = p * b.forward_kernel(t, 1.0) + (1.0 - p) * b.forward_kernel(t, 0.0);
                }
            }
            for t in (low + 1..=top).rev() {
                let one = bernoulli_product(b.forward_kernel(t, 1.0), y, e);
                let zero = bernoulli_product(b.forward_kernel(t, 0.0), y, e);
                p = p * one + (1.0 - p) * zero;
            }
        }
        top = low;
    }
    p
}

/// Renoised binomial chains: P(x_0 = 1) against the recursion with blocks of four steps drawn
/// three times, for an observed bit.
#[test]
fn renoised_binomial_chains_match_their_recursion() {
    let device = Device::flex();
    let (steps, pi, d) = (30, 0.2, 2);
    let bound = binomial(steps, pi, d);
    let model = ModelConfig::default().init(d, d, steps, &device);
    let c = Condition::new().observed(0, 1.0, 0.3).known(1, 0.0);
    let given = Conditioning::new(&[c], d, Variable::Binary, ConditionMode::Constant)
        .unwrap()
        .renoised(3, 4)
        .unwrap();
    let n = 40_000;
    let mut rng = diffusion_data::rng(8, 0);
    let x = sample_given(&bound, &model, n, &given, &mut rng, &device, 8192).unwrap();
    let rate = x.iter().step_by(d).map(|&v| v as f64).sum::<f64>() / n as f64;
    let want = renoised_binary_rate(&bound.diffusion, true, 0.3, (3, 4));
    let se = (want * (1.0 - want) / n as f64).sqrt();
    assert!((rate - want).abs() < 4.0 * se, "{rate} vs {want}");
    let plain = binary_chain_rate(&bound.diffusion, true, 0.3);
    assert!((plain - want).abs() > 8.0 * se, "{plain} vs {want}");
    assert!(x.iter().skip(1).step_by(d).all(|&v| v == 0.0));
}

#[test]
fn conditioned_binomial_chains_match_their_recursion() {
    let device = Device::flex();
    let (steps, pi, d) = (30, 0.2, 4);
    let bound = binomial(steps, pi, d);
    let model = ModelConfig::default().init(d, d, steps, &device);
    let c = Condition::new()
        .observed(0, 1.0, 0.3)
        .observed(1, 0.0, 0.1)
        .known(2, 1.0);
    let given = Conditioning::new(&[c], d, Variable::Binary, ConditionMode::Constant).unwrap();
    let n = 40_000;
    let x = sample_given(
        &bound,
        &model,
        n,
        &given,
        &mut diffusion_data::rng(8, 0),
        &device,
        8192,
    )
    .unwrap();
    let rate = |i: usize| x.iter().skip(i).step_by(d).map(|&v| v as f64).sum::<f64>() / n as f64;
    for (i, want) in [
        (0, binary_chain_rate(&bound.diffusion, true, 0.3)),
        (1, binary_chain_rate(&bound.diffusion, false, 0.1)),
        (3, pi),
    ] {
        let se = (want * (1.0 - want) / n as f64).sqrt();
        assert!(
            (rate(i) - want).abs() < 4.0 * se,
            "bit {i}: {} vs {want}",
            rate(i)
        );
    }
    assert_eq!(rate(2), 1.0);
    // the forward variant holds known bits at the end too
    let c = Condition::new().known(2, 1.0).known(3, 0.0);
    let given = Conditioning::new(&[c], d, Variable::Binary, ConditionMode::Forward).unwrap();
    let x = sample_given(
        &bound,
        &model,
        2000,
        &given,
        &mut diffusion_data::rng(8, 1),
        &device,
        512,
    )
    .unwrap();
    assert!(x.chunks(d).all(|r| r[2] == 1.0 && r[3] == 0.0));
}

#[test]
fn one_condition_per_sample() {
    let device = Device::flex();
    let bound = gaussian(10, 2);
    let model = ModelConfig::default().init(2, 4, 10, &device);
    let rows: Vec<Condition> = (0..5)
        .map(|i| Condition::new().known(0, i as f32))
        .collect();
    let given = Conditioning::new(&rows, 2, Variable::Continuous, ConditionMode::Constant).unwrap();
    // chunks of 2 rows: each chain keeps its own row's value
    let x = sample_given(
        &bound,
        &model,
        5,
        &given,
        &mut diffusion_data::rng(1, 0),
        &device,
        2,
    )
    .unwrap();
    let firsts: Vec<f32> = x.chunks(2).map(|p| p[0]).collect();
    assert_eq!(firsts, [0.0, 1.0, 2.0, 3.0, 4.0]);
    // five conditions cannot drive six chains
    let err = sample_given(
        &bound,
        &model,
        6,
        &given,
        &mut diffusion_data::rng(1, 0),
        &device,
        2,
    );
    assert_eq!(
        err.unwrap_err(),
        ConditionError::Rows {
            given: 5,
            chains: 6
        }
    );
}

#[test]
fn bad_conditions_are_refused() {
    let c = |cond: Condition, variable| {
        Conditioning::new(&[cond], 3, variable, ConditionMode::Constant).map(|_| ())
    };
    use Variable::{Binary, Continuous};
    assert!(matches!(
        c(Condition::new().known(3, 0.0), Continuous),
        Err(ConditionError::Index { index: 3, dim: 3 })
    ));
    assert!(matches!(
        c(Condition::new().known(0, 1.0).known(0, 2.0), Continuous),
        Err(ConditionError::Conflict { .. })
    ));
    assert!(c(Condition::new().known(0, 1.0).known(0, 1.0), Continuous).is_ok());
    assert!(matches!(
        c(Condition::new().known(1, 0.5), Binary),
        Err(ConditionError::Value { .. })
    ));
    assert!(matches!(
        c(Condition::new().known(1, f32::NAN), Continuous),
        Err(ConditionError::Value { .. })
    ));
    assert!(matches!(
        c(Condition::new().observed(1, 0.0, -0.1), Continuous),
        Err(ConditionError::Noise { .. })
    ));
    assert!(matches!(
        c(Condition::new().observed(1, 1.0, 1.0), Binary),
        Err(ConditionError::Noise { .. })
    ));
    // a condition for other data than the run's
    let device = Device::flex();
    let bound = gaussian(10, 2);
    let model = ModelConfig::default().init(2, 4, 10, &device);
    let given = Conditioning::new(
        &[Condition::new().known(0, 1.0)],
        3,
        Continuous,
        ConditionMode::Constant,
    )
    .unwrap();
    let r = sample_given(
        &bound,
        &model,
        4,
        &given,
        &mut diffusion_data::rng(1, 0),
        &device,
        2,
    );
    assert!(matches!(r, Err(ConditionError::Process { .. })));
}

/// For N(0, I) data and their exact reversal (the forward kernel), p(x_0) = N(0, 1) per
/// coordinate, so an observation N(y, s²) has the posterior N(y / (1 + s²), s² / (1 + s²)).
/// The likelihood mode's r_t is then the exact likelihood of y given x_t (a Doob transform):
/// its chains reach that posterior, and their resampling weights are all equal. The paper's
/// constant r does not; resampling moves it toward the posterior.
#[test]
fn likelihood_chains_reach_the_exact_posterior() {
    let device = Device::flex();
    let steps = 40;
    let bound = gaussian(steps, 2);
    let model = ModelConfig::default().init(2, 4, steps, &device);
    let (y, s) = (1.5f64, 0.5f64);
    let (want_m, want_v) = (y / (1.0 + s * s), s * s / (1.0 + s * s));
    let n = 8192;
    let run = |mode, resample: bool| {
        let c = Condition::new().observed(0, y as f32, s).known(1, -0.4);
        let mut given = Conditioning::new(&[c], 2, Variable::Continuous, mode).unwrap();
        if resample {
            given = given.resampled().unwrap();
        }
        let mut rng = diffusion_data::rng(12, 0);
        let x = sample_given(&bound, &model, n, &given, &mut rng, &device, n).unwrap();
        assert!(x.chunks(2).all(|p| p[1] == -0.4f32), "{mode:?}");
        mean_var(x.chunks(2).map(|p| p[0] as f64))
    };
    let se = (want_v / n as f64).sqrt();
    for resample in [false, true] {
        let (m, v) = run(ConditionMode::Likelihood, resample);
        assert!(
            (m - want_m).abs() < 4.0 * se,
            "resample {resample}: mean {m} vs {want_m}"
        );
        assert!(
            (v - want_v).abs() < 4.0 * want_v * (2.0 / n as f64).sqrt(),
            "var {v}"
        );
    }
    let (paper, _) = run(ConditionMode::Constant, false);
    let (rec, _) = linear_chain_moments(&bound.diffusion, y, s, ConditionMode::Constant);
    assert!(
        (paper - rec).abs() < 4.0 * se && (rec - want_m).abs() > 0.1,
        "{paper} {rec}"
    );
    let (smc, _) = run(ConditionMode::Constant, true);
    // (its weights are heavy-tailed here: closer, not yet there at 8,192 chains)
    assert!(
        (smc - want_m).abs() < 0.7 * (paper - want_m).abs(),
        "{smc} vs {paper}"
    );
}

/// The same for bits: i.i.d. Bernoulli(pi) data with their exact reversal, one bit observed
/// with flip probability e: P(x = 1 | y = 1) = pi (1 - e) / (pi (1 - e) + (1 - pi) e), reached
/// by the likelihood mode with or without resampling and by the resampled constant mode; the
/// paper's constant r alone is far off.
#[test]
fn binomial_chains_reach_the_exact_posterior() {
    let device = Device::flex();
    let (steps, pi, d) = (30, 0.2, 3);
    let bound = binomial(steps, pi, d);
    let model = ModelConfig::default().init(d, d, steps, &device);
    let n = 16_384;
    let want = bernoulli_product(pi, true, 0.2);
    let run = |mode, resample: bool| {
        let c = Condition::new().observed(0, 1.0, 0.2).known(1, 1.0);
        let mut given = Conditioning::new(&[c], d, Variable::Binary, mode).unwrap();
        if resample {
            given = given.resampled().unwrap();
        }
        let x = sample_given(
            &bound,
            &model,
            n,
            &given,
            &mut diffusion_data::rng(3, 0),
            &device,
            8192,
        )
        .unwrap();
        let rate =
            |i: usize| x.iter().skip(i).step_by(d).map(|&v| v as f64).sum::<f64>() / n as f64;
        assert_eq!(rate(1), 1.0, "{mode:?}");
        let se = |p: f64| (p * (1.0 - p) / n as f64).sqrt();
        assert!((rate(2) - pi).abs() < 6.0 * se(pi), "{mode:?}: {}", rate(2));
        (rate(0), 6.0 * se(want))
    };
    for (mode, resample) in [
        (ConditionMode::Likelihood, false),
        (ConditionMode::Likelihood, true),
        (ConditionMode::Constant, true),
    ] {
        let (r, tol) = run(mode, resample);
        assert!(
            (r - want).abs() < tol,
            "{mode:?} resample {resample}: {r} vs {want}"
        );
    }
    let (paper, _) = run(ConditionMode::Constant, false);
    assert!((paper - want).abs() > 0.1, "{paper} vs {want}");
}

#[test]
fn resampling_needs_the_constant_mode_and_one_condition() {
    let c = Condition::new().known(0, 1.0);
    let forward = Conditioning::new(
        std::slice::from_ref(&c),
        2,
        Variable::Continuous,
        ConditionMode::Forward,
    );
    let likelihood = Conditioning::new(
        std::slice::from_ref(&c),
        2,
        Variable::Continuous,
        ConditionMode::Likelihood,
    );
    assert!(likelihood.unwrap().resampled().is_ok());
    assert!(matches!(
        forward.unwrap().resampled(),
        Err(ConditionError::Resampling(_))
    ));
    let rows = Conditioning::new(
        &[c.clone(), c],
        2,
        Variable::Continuous,
        ConditionMode::Constant,
    );
    assert!(matches!(
        rows.unwrap().resampled(),
        Err(ConditionError::Resampling(_))
    ));
}

/// Particle systems in groups: each group of consecutive chains needs one condition, and is
/// weighed and resampled within itself: a chain is only ever replaced by one of its own group,
/// and the group whose weights are even is left alone.
#[test]
fn grouped_particle_systems_resample_within_their_groups() {
    let (a, b) = (
        Condition::new().known(0, 1.0),
        Condition::new().known(0, -1.0),
    );
    let grouped = |conditions: &[Condition], size| {
        Conditioning::new(conditions, 2, Variable::Continuous, ConditionMode::Constant)
            .unwrap()
            .resampled_in_groups(size)
    };
    let given = grouped(
        &[
            a.clone(),
            a.clone(),
            a.clone(),
            b.clone(),
            b.clone(),
            b.clone(),
        ],
        3,
    )
    .unwrap();
    assert_eq!(given.particle_group(), Some(3));
    assert!(matches!(
        grouped(&[a.clone(), b.clone(), a.clone(), b.clone()], 2),
        Err(ConditionError::Resampling(_))
    ));
    assert!(matches!(
        grouped(&[a.clone(), a, b], 2),
        Err(ConditionError::Resampling(_))
    ));
    let mut particles = crate::condition::Particles::of(&given, 6);
    let mut rng = diffusion_data::rng(3, 0);
    // group 0: chain 1 carries all the weight; group 1: even weights
    let picks = particles
        .reweigh(&[-50.0, 0.0, -50.0, 0.0, 0.0, 0.0], false, &mut rng)
        .unwrap();
    assert_eq!(picks, vec![1, 1, 1, 3, 4, 5]);
    // one system (no groups): the same weights move chains across the whole set
    let one = Conditioning::new(
        &[Condition::new().known(0, 1.0)],
        2,
        Variable::Continuous,
        ConditionMode::Constant,
    )
    .unwrap()
    .resampled()
    .unwrap();
    let mut particles = crate::condition::Particles::of(&one, 6);
    let picks = particles
        .reweigh(&[-50.0, 0.0, -50.0, -50.0, -50.0, -50.0], false, &mut rng)
        .unwrap();
    assert_eq!(picks, vec![1; 6]);
}

/// A linear reverse kernel that mixes the coordinates, N(M x_t, σ² I) with M = [[0.97, 0.05],
/// [0.05, 0.97]] at every step (the `direct` parametrization), so that the model's p(x_0) is a
/// Gaussian whose coordinates are strongly correlated, with a covariance computed exactly.
#[derive(burn::module::Module, Debug)]
struct Mixing {
    m: burn::module::Param<Tensor<2>>,
}

const MIXING_LOG_VAR: f32 = -4.0;

impl crate::network::ReverseNetwork for Mixing {
    fn forward(&self, x_t: Tensor<2>, _t: Tensor<1, burn::tensor::Int>) -> Tensor<2> {
        let mean = x_t.matmul(self.m.val());
        let log_var = mean.ones_like() * MIXING_LOG_VAR;
        Tensor::cat(vec![mean, log_var], 1)
    }
}

/// The twisted particle system targets the model's own conditional: on the mixing model, whose
/// p(x_0) is N(0, Σ) with Σ from the exact recursion (Σ_T = I, Σ ← M Σ M + σ² I per learned
/// step, then the edge step), x_0[0] given x_0[1] = v is N(Σ01 v / Σ11, Σ00 − Σ01² / Σ11), and
/// given an observation y of x_0[1] with noise s, N(Σ01 y / (Σ11 + s²), Σ00 − Σ01² / (Σ11 + s²)).
/// The resampled constant mode, which holds the value at every step, misses it.
#[test]
fn twisted_chains_reach_the_models_own_conditional() {
    let device = Device::flex();
    let steps = 40;
    let bound = GaussianBound {
        parametrization: ReverseParametrization::Direct,
        ..gaussian(steps, 2)
    };
    let (a, c) = (0.97f64, 0.05f64);
    let model = Mixing {
        m: burn::module::Param::from_tensor(tensor2(
            vec![a as f32, c as f32, c as f32, a as f32],
            2,
            2,
            &device,
        )),
    };
    // Σ = [[p, q], [q, p]]
    let var = (MIXING_LOG_VAR as f64).exp();
    let (mut p, mut q) = (1.0f64, 0.0f64);
    for _ in 2..=steps {
        let (pp, qq) = (
            a * a * p + 2.0 * a * c * q + c * c * p,
            2.0 * a * c * p + (a * a + c * c) * q,
        );
        (p, q) = (pp + var, qq);
    }
    let b1 = bound.diffusion.beta(1);
    (p, q) = ((1.0 - b1) * p + b1, (1.0 - b1) * q);
    let n = 8192;
    let run = |c: Condition, mode| {
        let given = Conditioning::new(&[c], 2, Variable::Continuous, mode)
            .unwrap()
            .resampled()
            .unwrap();
        let mut rng = diffusion_data::rng(21, 0);
        sample_given(&bound, &model, n, &given, &mut rng, &device, n).unwrap()
    };
    // x_0[0]'s mean and variance in `x` against (want_m, want_v); resampled chains are
    // dependent: tolerances of an effective 1/8 of the chains
    let close = |x: &[f32], (want_m, want_v): (f64, f64)| {
        let (m, s2) = mean_var(x.chunks(2).map(|r| r[0] as f64));
        let se = (want_v * 8.0 / n as f64).sqrt();
        (
            (m - want_m).abs() < 4.0 * se && (s2 / want_v - 1.0).abs() < 0.15,
            m,
            s2,
        )
    };
    let v = 1.2f64;
    let want = (q * v / p, p - q * q / p);
    let x = run(Condition::new().known(1, v as f32), ConditionMode::Twisted);
    assert!(x.chunks(2).all(|r| r[1] == v as f32));
    let (ok, m, s2) = close(&x, want);
    assert!(ok, "twisted: {m} {s2} vs {want:?}");
    let held = run(Condition::new().known(1, v as f32), ConditionMode::Constant);
    let (ok, m, s2) = close(&held, want);
    assert!(!ok, "the constant mode's {m} {s2} vs {want:?}");
    // an observation
    let (y, s) = (-0.8f64, 0.3f64);
    let want = (q * y / (p + s * s), p - q * q / (p + s * s));
    let x = run(
        Condition::new().observed(1, y as f32, s),
        ConditionMode::Twisted,
    );
    let (ok, m, s2) = close(&x, want);
    assert!(ok, "twisted: {m} {s2} vs {want:?}");
}

/// DDIM's chain of the linear model (x̂_0 = g_t x_t, so each step is x_prev = L_t x + σ_t z,
/// the coefficients from `Ddim::coefficients`) multiplied by a condition: the moments of x_0
/// against the recursion, at eta 1 and 0.5 in every mode without particles, renoised, and at
/// eta 0 with a known value alone (then x_0 is L x_T, the known coordinate held); the
/// conditions a DDIM step cannot take are refused.
#[test]
fn conditioned_ddim_chains_match_their_recursion() {
    use diffusion_core::{Ddim, PredictionType, TimestepSpacing};
    let device = Device::flex();
    let steps = 40;
    let bound = gaussian(steps, 2);
    let model = ModelConfig::default().init(2, 4, steps, &device);
    let g = &bound.diffusion;
    let ddim = |eta: f64, (spacing, steps, last_to_one): (TimestepSpacing, usize, bool)| {
        bound.ddim(Ddim {
            alphas_cumprod: Vec::new(),
            steps,
            eta,
            timestep_spacing: spacing,
            clip_sample: false,
            clip_sample_range: 1.0,
            set_alpha_to_one: last_to_one,
            prediction_type: PredictionType::Epsilon,
        })
    };
    let n = 20_000;
    // leading spacing, 8 steps; linspace, 7 steps, where the level a step lands on
    // (timestep - T / K) is not the next step's timestep; the last step to abar_1
    let leading = (TimestepSpacing::Leading, 8, true);
    let linspace = (TimestepSpacing::Linspace, 7, true);
    let short = (TimestepSpacing::Leading, 8, false);
    let cases = [
        (1.0, ConditionMode::Constant, (1, 1), 0.5, leading),
        (1.0, ConditionMode::Forward, (1, 1), 0.5, leading),
        (1.0, ConditionMode::Likelihood, (1, 1), 0.5, leading),
        (0.5, ConditionMode::Constant, (1, 1), 0.5, leading),
        (0.5, ConditionMode::Constant, (3, 2), 0.5, leading),
        (0.5, ConditionMode::Forward, (3, 2), 0.5, leading),
        (0.0, ConditionMode::Constant, (1, 1), f64::INFINITY, leading),
        (0.0, ConditionMode::Forward, (3, 2), f64::INFINITY, leading),
        (1.0, ConditionMode::Forward, (1, 1), 0.5, linspace),
        (0.5, ConditionMode::Likelihood, (3, 2), 0.5, linspace),
        (1.0, ConditionMode::Forward, (3, 2), 0.5, short),
    ];
    for (eta, mode, (passes, jump), s, chain_kind) in cases {
        let dd = ddim(eta, chain_kind);
        // chain step k = 1..=8 runs from timestep ts[k - 1] (0-based; step t = ts + 1)
        let mut ts = dd.timesteps();
        ts.reverse();
        let kernel = |k: usize| {
            let i = ts[k - 1];
            let t = i + 1;
            // the zero network's kernel is N(sqrt(1 - b_t) x, b_t): x̂_0 = g x
            let gain = if t == 1 {
                (1.0 - g.beta(1)).sqrt()
            } else {
                let (c0, ct, _) = g.posterior_coefficients(t);
                ((1.0 - g.beta(t)).sqrt() - ct) / c0
            };
            let (a, b, sigma, abar) = dd.coefficients(i);
            let l = a * gain + b * (1.0 - abar.sqrt() * gain) / (1.0 - abar).sqrt();
            (l, sigma * sigma)
        };
        // abar of x_k: where step k + 1 lands (its coefficient a = sqrt(abar_prev)), x_K at
        // the noisiest timestep, x_0 at 1
        let level = |k: usize| match ts.get(k) {
            _ if k == 0 => 1.0,
            Some(&i) => dd.coefficients(i).0.powi(2),
            None => dd.coefficients(ts[ts.len() - 1]).3,
        };
        let renoise = |k: usize| {
            let r = level(k) / level(k - 1);
            (r.sqrt(), 1.0 - r)
        };
        let chain = LinearChain {
            steps: ts.len(),
            kernel: &kernel,
            level: &level,
            renoise: &renoise,
        };
        let c = if s.is_finite() {
            Condition::new().observed(0, 1.5, s).known(1, -0.3)
        } else {
            Condition::new().known(1, -0.3)
        };
        let mut given = Conditioning::new(&[c], 2, Variable::Continuous, mode).unwrap();
        if passes > 1 {
            given = given.renoised(passes, jump).unwrap();
        }
        let mut rng = diffusion_data::rng(5, 0);
        let x = bound
            .sample_ddim_given(&model, &dd, n, &given, &mut rng, &device, 8192)
            .unwrap();
        let case = format!("eta {eta}, {mode:?}, {passes}x{jump}, {chain_kind:?}");
        // the known coordinate held (forward mode: q(x_0 | x_0 = v) at abar = 1 is v)
        assert!(x.chunks(2).all(|p| (p[1] + 0.3).abs() < 1e-7), "{case}");
        let (m, v) = mean_var(x.chunks(2).map(|p| p[0] as f64));
        let (want_m, want_v) = chain.moments(1.5, s, mode, (passes, jump));
        let se = (want_v / n as f64).sqrt();
        assert!(
            (m - want_m).abs() < 4.0 * se,
            "{case}: mean {m} vs {want_m}"
        );
        let se_v = want_v * (2.0 / n as f64).sqrt();
        assert!(
            (v - want_v).abs() < 4.0 * se_v,
            "{case}: var {v} vs {want_v}"
        );
        if s.is_finite() {
            // the observation moved the free coordinate: its mean is not the prior's 0
            assert!(want_m > 20.0 * se, "{case}: {want_m}");
        }
    }
    // what a DDIM step cannot take: an observation or the likelihood mode at eta = 0, and
    // resampling at any eta
    let refused = |c: Condition, mode, resample: bool, eta: f64| {
        let mut given = Conditioning::new(&[c], 2, Variable::Continuous, mode).unwrap();
        if resample {
            given = given.resampled().unwrap();
        }
        let mut rng = diffusion_data::rng(5, 0);
        let dd = ddim(eta, (TimestepSpacing::Leading, 8, true));
        let r = bound.sample_ddim_given(&model, &dd, 10, &given, &mut rng, &device, 10);
        matches!(r, Err(ConditionError::Chain(_)))
    };
    let known = || Condition::new().known(1, 0.2);
    assert!(refused(
        Condition::new().observed(0, 1.0, 0.3),
        ConditionMode::Constant,
        false,
        0.0
    ));
    assert!(refused(known(), ConditionMode::Likelihood, false, 0.0));
    assert!(refused(known(), ConditionMode::Constant, true, 1.0));
    assert!(!refused(known(), ConditionMode::Constant, false, 0.0));
}
