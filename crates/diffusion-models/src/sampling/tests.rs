use diffusion_core::{
    BetaSchedule, GaussianDiffusion, PredictionType, ReverseParametrization, TimestepSpacing,
};

use super::*;
use crate::config::TrainConfig;
use crate::data::TrainingData;
use crate::model::{ModelConfig, Network};
use crate::network::ReverseModel;
use crate::process;
use crate::process::{GaussianBound, Process, host};
use crate::trainer::Trainer;
use burn::tensor::Tensor;

/// A network trained briefly (300 steps) on the Swiss roll or the heartbeat, so that its
/// outputs depend on x and t as a real model's do.
pub(crate) fn trained<P: Process>(process: P, d: usize, steps: usize) -> Network
where
    P::Rows: 'static,
{
    let device = Device::flex().autodiff();
    device.seed(7);
    let out = process.output_dim();
    let config = ModelConfig {
        hidden: vec![32, 32],
        ..ModelConfig::default()
    };
    let model = ReverseModel::new(config.init(d, out, steps, &device));
    let train = TrainConfig {
        steps: 300,
        batch_size: 256,
        ..TrainConfig::default()
    };
    let data = if d == 2 {
        TrainingData::swiss_roll(diffusion_data::SwissRoll::new(0.5).unwrap(), 0)
    } else {
        TrainingData::heartbeat(diffusion_data::Heartbeat::new(d, 5).unwrap(), 0)
    };
    Trainer::new(process, model, &train, data, &device)
        .fit(&mut [])
        .unwrap()
        .model
        .network
}

pub(crate) fn gaussian(steps: usize, parametrization: ReverseParametrization) -> GaussianBound {
    GaussianBound {
        diffusion: GaussianDiffusion::new(
            BetaSchedule::linear(1e-4, 0.05).betas(steps).unwrap(),
            2,
        )
        .unwrap(),
        parametrization,
        clip: None,
        decoder: None,
        respaced: None,
    }
}

fn ddim(g: &GaussianBound, steps: usize, eta: f64) -> Ddim {
    g.ddim(Ddim {
        alphas_cumprod: Vec::new(),
        steps,
        eta,
        timestep_spacing: TimestepSpacing::Leading,
        clip_sample: false,
        clip_sample_range: 1.0,
        set_alpha_to_one: true,
        prediction_type: PredictionType::Epsilon,
    })
}

#[test]
fn ddim_with_eta_one_is_the_ancestral_kernel() {
    // epsilon-fixed: the ancestral kernel is the posterior at x̂_0 with variance b~_t,
    // which DDIM at eta = 1 over every step reproduces (Song et al. 2021, section 4.1)
    let device = Device::flex();
    let steps = 50;
    let g = gaussian(steps, ReverseParametrization::EpsilonFixed);
    let net = trained(g.clone(), 2, steps);
    let tables = g.tables(&device);
    let dd = ddim(&g, steps, 1.0);
    let x = normal(&mut diffusion_data::rng(3, 0), 64, 2, &device);
    for t in [2, 3, 10, 49, 50] {
        let (mean, log_var) = g.mean_log_variance(&net, &tables, x.clone(), t);
        let i = t - 1;
        let eps = g.ddim_output(&net, &tables, &x, i, PredictionType::Epsilon);
        let (a, b, sigma, abar) = dd.coefficients(i);
        let x0 = (x.clone() - eps.clone() * (1.0 - abar).sqrt()) / abar.sqrt();
        let ddim_mean = host(x0 * a + eps * b);
        for (m, w) in ddim_mean.iter().zip(host(mean)) {
            assert!((m - w).abs() < 1e-4, "t = {t}: {m} vs {w}");
        }
        for lv in host(log_var) {
            let var = (lv as f64).exp();
            assert!(
                (sigma * sigma / var - 1.0).abs() < 1e-4,
                "t = {t}: {} vs {var}",
                sigma * sigma
            );
        }
    }
}

/// With a clip range the kernel's mean is c_0 clamp(x̂_0) + c_t x_t, x̂_0 = (x_t - sqrt(1 -
/// abar_t) ε̂) / sqrt(abar_t), computed here in f64 from the network's ε̂.
#[test]
fn a_clip_range_clamps_the_implied_x0() {
    let device = Device::flex();
    let steps = 40;
    let g = gaussian(steps, ReverseParametrization::Epsilon);
    let net = trained(g.clone(), 2, steps);
    let clipped = GaussianBound {
        clip: Some(process::ClipRange {
            low: vec![-0.3, -2.0],
            high: vec![0.2, 0.5],
        }),
        ..g.clone()
    };
    let tables = clipped.tables(&device);
    let n = 50;
    let x = normal(&mut diffusion_data::rng(5, 0), n, 2, &device);
    let xs = host(x.clone());
    let mut clamped = 0;
    for t in [2, 20, 40] {
        let (mean, _) = clipped.mean_log_variance(&net, &tables, x.clone(), t);
        let z = host(net.forward_at(x.clone(), t));
        let abar = g.diffusion.alpha_bar(t);
        let (c0, ct, _) = g.diffusion.posterior_coefficients(t);
        for (i, &m) in host(mean).iter().enumerate() {
            let (row, col) = (i / 2, i % 2);
            let eps = z[row * 4 + col] as f64;
            let xt = xs[i] as f64;
            let x0 = (xt - (1.0 - abar).sqrt() * eps) / abar.sqrt();
            let (lo, hi) = ([-0.3, -2.0][col], [0.2, 0.5][col]);
            clamped += usize::from(x0 < lo || x0 > hi);
            let want = c0 * x0.clamp(lo, hi) + ct * xt;
            assert!(
                (m as f64 - want).abs() < 1e-4 * (1.0 + want.abs()),
                "t = {t}: {m} vs {want}"
            );
        }
    }
    assert!(
        clamped > 20 && clamped < 3 * n * 2 - 20,
        "{clamped} clamped"
    );
}

#[test]
fn ddim_with_eta_zero_is_deterministic_and_invertible() {
    let device = Device::flex();
    let steps = 100;
    let g = gaussian(steps, ReverseParametrization::Epsilon);
    let net = trained(g.clone(), 2, steps);
    let tables = g.tables(&device);
    let dd = ddim(&g, 20, 0.0);
    let x_t = normal(&mut diffusion_data::rng(4, 0), 128, 2, &device);
    let run = |x: Tensor<2>, seed: u64| {
        ddim_loop(
            &dd,
            x,
            |x, i| g.ddim_output(&net, &tables, x, i, PredictionType::Epsilon),
            |rng: &mut Rng| normal(rng, 128, 2, &device),
            &mut diffusion_data::rng(seed, 9),
        )
    };
    let x0 = run(x_t.clone(), 1);
    // no randomness: another generator gives the same x_0
    assert_eq!(host(x0.clone()), host(run(x_t.clone(), 2)));
    // the affine fast path is the same chain
    let fast = host(g.ddim_deterministic(&net, &tables, &dd, x_t.clone()));
    for (f, w) in fast.iter().zip(host(x0.clone())) {
        assert!((f - w).abs() < 1e-4 * (1.0 + w.abs()), "{f} vs {w}");
    }
    // and x_0 encodes back to x_T
    let back = g.ddim_encode(&net, &dd, x0, &device, 1e-6);
    let err = host((back - x_t.clone()).abs().max());
    let scale = host(x_t.abs().max());
    assert!(
        err[0] < 1e-4 * scale[0],
        "{} (|x_T| up to {})",
        err[0],
        scale[0]
    );
}

/// DDIM under an empty condition is DDIM: the same draws from the same seed, at eta 0 (against
/// the affine fast path, equal to rounding) and at eta 0.5 (the chain's kernel drawn as the
/// product's N(mean, σ²) instead of mean + σ z).
#[test]
fn an_empty_condition_on_ddim_is_ddim() {
    use crate::condition::{Condition, ConditionMode, Conditioning, Variable};
    let device = Device::flex();
    let steps = 60;
    let g = gaussian(steps, ReverseParametrization::Epsilon);
    let net = trained(g.clone(), 2, steps);
    let given = Conditioning::new(
        &[Condition::new()],
        2,
        Variable::Continuous,
        ConditionMode::Constant,
    )
    .unwrap();
    for eta in [0.0, 0.5] {
        let dd = ddim(&g, 12, eta);
        let n = 300;
        let plain = g.sample_ddim(&net, &dd, n, &mut diffusion_data::rng(8, 0), &device);
        let cond = g
            .sample_ddim_given(
                &net,
                &dd,
                n,
                &given,
                &mut diffusion_data::rng(8, 0),
                &device,
                n,
            )
            .unwrap();
        for (a, b) in plain.iter().zip(&cond) {
            assert!(
                (a - b).abs() < 1e-4 * (1.0 + a.abs()),
                "eta {eta}: {a} vs {b}"
            );
        }
    }
}
