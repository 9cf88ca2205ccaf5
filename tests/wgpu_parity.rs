//! The wgpu backend against flex (needs `--features wgpu` and a Vulkan, Metal or DX12 adapter;
//! CI uses Mesa's software Vulkan driver, lavapipe). Kept tiny: lavapipe is slow.

use burn::tensor::Device;
use diffusion_core::{BetaSchedule, GaussianDiffusion, ReverseParametrization};
use diffusion_models::process::{self, GaussianBound, Process};
use diffusion_models::{
    Network, ReverseModel, RunConfig, RunDir, RunManifest, TrainingData, evaluate, train,
};

/// The largest relative difference between two vectors, with an absolute floor of 1e-3.
fn max_rel_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / x.abs().max(y.abs()).max(1e-3))
        .fold(0.0, f64::max)
}

fn roll_points(n: usize) -> Vec<f32> {
    diffusion_data::SwissRoll::new(0.5)
        .unwrap()
        .stream(11)
        .next_batch(n)
}

#[test]
fn same_weights_and_inputs_give_the_same_bound_on_wgpu_and_flex() {
    let flex = Device::flex();
    let wgpu = Device::wgpu(Default::default());
    let steps = 20;
    let bound = GaussianBound {
        diffusion: GaussianDiffusion::new(BetaSchedule::linear(1e-3, 0.3).betas(steps).unwrap(), 2)
            .unwrap(),
        parametrization: ReverseParametrization::Paper,
        clip: None,
        decoder: None,
        respaced: None,
    };
    // A model trained briefly on flex, so its outputs are not the forward kernel's, then loaded
    // from the same file onto both devices.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let toml = r#"
[diffusion]
steps = 20
schedule = { kind = "linear", start = 1e-3, end = 0.3 }
[data]
kind = "swiss-roll"
[train]
steps = 30
batch_size = 64
optimizer = { kind = "adam", lr = 1e-2 }
"#;
    let manifest = RunManifest::new(RunConfig::from_toml(toml).unwrap(), 2, "flex");
    let run = RunDir::create(&dir, false).unwrap();
    run.write_json("config.json", &manifest).unwrap();
    let roll = diffusion_data::SwissRoll::new(0.5).unwrap();
    let (_, _) = train(
        &manifest,
        TrainingData::swiss_roll(roll, 0),
        &flex,
        &run,
        None,
        &mut |_| {},
    )
    .unwrap();
    let on_flex = run.load_model(&manifest, &flex).unwrap();
    let on_wgpu = run.load_model(&manifest, &wgpu).unwrap();

    // The network's outputs on identical inputs.
    let points = roll_points(256);
    let ts: Vec<usize> = (0..256).map(|i| 2 + i % (steps - 1)).collect();
    let kl = |model: &ReverseModel<Network>, device: &Device| -> Vec<f64> {
        let mut rng = diffusion_data::rng(5, 0);
        let rows = bound.prepare_rows(&points, &ts, &mut rng);
        let out = bound
            .kl_rows(&bound.tables(device), &model.network, rows, device)
            .into_data();
        out.convert::<f32>()
            .as_slice::<f32>()
            .unwrap()
            .iter()
            .map(|&v| v as f64)
            .collect()
    };
    let (a, b) = (kl(&on_flex, &flex), kl(&on_wgpu, &wgpu));
    let kl_err = max_rel_diff(&a, &b);
    // The full-sum bound per point.
    let per_point = |model: &ReverseModel<Network>, device: &Device| {
        let mut rng = diffusion_data::rng(6, 0);
        process::bound_bits_per_point(&bound, &model.network, &points, &mut rng, device, 4096)
    };
    let (ka, kb) = (per_point(&on_flex, &flex), per_point(&on_wgpu, &wgpu));
    let k_err = ka
        .iter()
        .zip(&kb)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    eprintln!(
        "parity: max relative KL difference {kl_err:.2e}, max |K difference| {k_err:.2e} bits"
    );
    assert!(kl_err < 1e-3, "KL rows differ by {kl_err}");
    assert!(k_err < 1e-3, "bounds differ by {k_err} bits");
}

/// With the `direct` parametrization the untrained network (mean 0, log-variance 0) is far from
/// the reverse process, so 30 Adam steps raise K by many bits (on flex: -22.7 to -5.9).
#[test]
fn a_short_run_on_wgpu_lowers_the_bound() {
    let wgpu = Device::wgpu(Default::default());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let toml = r#"
[diffusion]
steps = 10
schedule = { kind = "linear", start = 1e-2, end = 0.5 }
parametrization = "direct"
[data]
kind = "swiss-roll"
[model]
hidden = [32]
[train]
steps = 30
batch_size = 128
log_every = 30
optimizer = { kind = "adam", lr = 1e-2 }
"#;
    let manifest = RunManifest::new(RunConfig::from_toml(toml).unwrap(), 2, "wgpu");
    let run = RunDir::create(&dir, false).unwrap();
    run.write_json("config.json", &manifest).unwrap();
    let untrained = manifest.init_model(&wgpu).unwrap();
    let before = evaluate(&manifest, &run, &untrained, &wgpu, 500, 0, 0).unwrap();
    let roll = diffusion_data::SwissRoll::new(0.5).unwrap();
    let (model, summary) = train(
        &manifest,
        TrainingData::swiss_roll(roll, 0),
        &wgpu,
        &run,
        None,
        &mut |_| {},
    )
    .unwrap();
    let after = evaluate(&manifest, &run, &model, &wgpu, 500, 0, 0).unwrap();
    eprintln!(
        "wgpu: {} steps in {:.1} s; K {:.3} -> {:.3} bits",
        summary.steps, summary.wall_time_s, before.k_bits, after.k_bits
    );
    let se = (before.k_stderr_bits.powi(2) + after.k_stderr_bits.powi(2)).sqrt();
    assert!(
        after.k_bits > before.k_bits + 3.0 * se,
        "{before:?} -> {after:?}"
    );
}

/// The image networks (a tiny U-Net with attention and the paper's multi-scale network) give
/// the same outputs on wgpu as on flex for the same weights and inputs, at per-row steps and at
/// one step for every row.
#[test]
fn image_networks_agree_on_wgpu_and_flex() {
    use burn::module::Module;
    use burn::tensor::{Distribution, Int, Tensor, TensorData};
    use diffusion_data::ImageShape;
    use diffusion_models::ReverseNetwork;
    use diffusion_models::image::{PaperConvConfig, UnetConfig};

    let flex = Device::flex();
    let wgpu = Device::wgpu(Default::default());
    flex.seed(9);
    let shape = ImageShape {
        channels: 1,
        height: 8,
        width: 8,
    };
    let d = shape.len();
    let n = 4;
    let x: Vec<f32> = Tensor::<2>::random([n, d], Distribution::Normal(0.0, 1.0), &flex)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap();
    let outputs = |net: &dyn Fn(Tensor<2>, Tensor<1, Int>) -> Tensor<2>, device: &Device| {
        let x = Tensor::<2>::from_data(TensorData::new(x.clone(), [n, d]), device);
        let t = Tensor::<1, Int>::from_data(TensorData::new(vec![3i64, 9, 17, 30], [n]), device);
        net(x, t)
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect::<Vec<f64>>()
    };
    // trained a few Adam-free steps away from the zero readout: perturb every weight on flex,
    // then copy the record to wgpu
    let unet = UnetConfig {
        channels: 8,
        channel_mult: vec![1, 2],
        attention_resolutions: vec![4],
        groups: 4,
        ..UnetConfig::default()
    }
    .init(shape, 2 * d, &flex);
    let unet = jitter(unet, &flex);
    let unet_wgpu = unet.clone().to_device(&wgpu);
    let a = outputs(&|x, t| unet.forward(x, t), &flex);
    let b = outputs(&|x, t| unet_wgpu.forward(x, t), &wgpu);
    assert!(
        max_rel_diff(&a, &b) < 1e-3,
        "U-Net: {}",
        max_rel_diff(&a, &b)
    );

    let paper = PaperConvConfig {
        n_layers_conv: 2,
        n_hidden_conv: 8,
        n_scales: 2,
        n_hidden_dense_lower: 16,
        n_temporal_basis: 4,
        ..PaperConvConfig::default()
    }
    .init(shape, 2 * d, 40, true, &flex);
    let paper = jitter(paper, &flex);
    let paper_wgpu = paper.clone().to_device(&wgpu);
    let a = outputs(&|x, t| paper.forward(x, t), &flex);
    let b = outputs(&|x, t| paper_wgpu.forward(x, t), &wgpu);
    assert!(
        max_rel_diff(&a, &b) < 1e-3,
        "paper: {}",
        max_rel_diff(&a, &b)
    );
    let scale = a.iter().map(|v| v.abs()).fold(0.0, f64::max);
    assert!(scale > 1e-2, "outputs away from zero: {scale}");
}

/// Every parameter moved by N(0, 0.1^2), so zero-initialised layers pass something through.
fn jitter<M: burn::module::Module>(module: M, device: &Device) -> M {
    use burn::module::{ModuleMapper, Param};
    use burn::tensor::{Distribution, Tensor};
    struct Jitter<'a>(&'a Device);
    impl ModuleMapper for Jitter<'_> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.map(|t| {
                let noise = Tensor::random(t.shape(), Distribution::Normal(0.0, 0.1), self.0);
                t + noise
            })
        }
    }
    module.map(&mut Jitter(device))
}
