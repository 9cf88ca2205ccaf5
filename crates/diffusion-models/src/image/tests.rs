use burn::module::Module;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use diffusion_data::ImageShape;

use super::paper::temporal_basis;
use super::*;
use crate::network::ReverseNetwork;

fn shape(channels: usize, height: usize, width: usize) -> ImageShape {
    ImageShape {
        channels,
        height,
        width,
    }
}

fn values(x: Tensor<2>) -> Vec<f32> {
    crate::process::host(x)
}

/// Mean pooling and repetition, value by value on a 1 x 1 x 4 x 4 image; repeating then pooling
/// is the identity.
#[test]
fn pooling_and_repetition_move_the_right_pixels() {
    let device = Device::flex();
    let x: Vec<f32> = (0..16).map(|v| v as f32).collect();
    let image = Tensor::<2>::from_data(TensorData::new(x, [1, 16]), &device);
    let image = to_images(image, shape(1, 4, 4));
    let pooled = mean_pool2(image.clone());
    // blocks {0,1,4,5}, {2,3,6,7}, {8,9,12,13}, {10,11,14,15}
    assert_eq!(values(to_rows(pooled.clone())), vec![2.5, 4.5, 10.5, 12.5]);
    let up = values(to_rows(repeat2(pooled.clone())));
    assert_eq!(&up[..8], &[2.5, 2.5, 4.5, 4.5, 2.5, 2.5, 4.5, 4.5]);
    assert_eq!(&up[8..], &[10.5, 10.5, 12.5, 12.5, 10.5, 10.5, 12.5, 12.5]);
    let back = values(to_rows(mean_pool2(repeat2(image.clone()))));
    assert_eq!(back, values(to_rows(image)));
}

/// The readout's bumps: every step's weights sum to 1; with J = 2 and T = 3 they are the closed
/// forms (centres -1 and 1, width 1, steps at -1, 0, 1).
#[test]
fn temporal_basis_is_normalised_gaussian_bumps() {
    let b = temporal_basis(3, 2);
    let e = (-2.0f64).exp();
    let near = 1.0 / (1.0 + e);
    let want = [0.0, 0.0, near, 1.0 - near, 0.5, 0.5, 1.0 - near, near];
    for (got, want) in b.iter().zip(want) {
        assert!((*got as f64 - want).abs() < 1e-6, "{b:?}");
    }
    let b = temporal_basis(1000, 10);
    for t in 1..=1000 {
        let row = &b[t * 10..(t + 1) * 10];
        let sum: f32 = row.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5, "t = {t}: {sum}");
    }
    // the first step leans on the first bump, the last on the last
    let argmax = |row: &[f32]| {
        (0..row.len())
            .max_by(|&i, &j| row[i].total_cmp(&row[j]))
            .unwrap()
    };
    assert_eq!(argmax(&b[10..20]), 0);
    assert_eq!(argmax(&b[10_000..10_010]), 9);
}

pub(crate) fn unet_configs() -> Vec<(UnetConfig, ImageShape)> {
    vec![
        (
            UnetConfig {
                channels: 8,
                channel_mult: vec![1, 2],
                res_blocks: 1,
                attention_resolutions: vec![4],
                groups: 4,
                heads: 2,
            },
            shape(1, 8, 8),
        ),
        (
            UnetConfig {
                channels: 4,
                channel_mult: vec![1, 1, 2],
                res_blocks: 2,
                attention_resolutions: vec![],
                groups: 2,
                heads: 1,
            },
            shape(3, 8, 4),
        ),
        (UnetConfig::default(), shape(1, 28, 28)),
    ]
}

/// The parameter counts computed without building the networks are the built networks'.
#[test]
fn parameter_counts_match_the_built_networks() {
    let device = Device::flex();
    for (config, s) in unet_configs() {
        let out = 2 * s.len();
        let net = config.init(s, out, &device);
        assert_eq!(
            net.num_params() as u128,
            config.parameter_count(s, out),
            "{config:?}"
        );
    }
    let paper = [
        (PaperConvConfig::default(), shape(1, 28, 28), 10),
        (
            PaperConvConfig {
                n_scales: 3,
                n_layers_dense_lower: 0,
                n_layers_dense_upper: 3,
                ..PaperConvConfig::default()
            },
            shape(3, 8, 8),
            40,
        ),
    ];
    for (config, s, steps) in paper {
        for out in [s.len(), 2 * s.len()] {
            let net = config.init(s, out, steps, out == 2 * s.len(), &device);
            assert_eq!(
                net.num_params() as u128,
                config.parameter_count(s, out),
                "{config:?}"
            );
        }
    }
}

/// Random images through a network at one step for every row, and with the steps as a tensor,
/// give the same outputs; different steps give different outputs (t reaches the output).
fn check_steps_paths<N: ReverseNetwork>(net: &N, d: usize, device: &Device) {
    let n = 3;
    let x = Tensor::<2>::random([n, d], Distribution::Normal(0.0, 1.0), device);
    let at = values(net.forward_at(x.clone(), 7));
    let t = Tensor::<1, Int>::from_data(TensorData::new(vec![7i64; n], [n]), device);
    let per_row = values(net.forward(x.clone(), t));
    let scale = at.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
    assert!(scale > 0.0, "the outputs are not all zero");
    for (a, b) in at.iter().zip(&per_row) {
        assert!((a - b).abs() <= 1e-5 * scale.max(1.0), "{a} vs {b}");
    }
    let other = values(net.forward_at(x, 30));
    let moved = at
        .iter()
        .zip(&other)
        .map(|(a, b)| (a - b).abs())
        .sum::<f32>();
    assert!(moved > 1e-3 * scale, "the step changes nothing");
}

/// Perturbs every parameter so that the zero-initialised output layers pass something through.
fn perturbed<M: Module>(module: M, device: &Device) -> M {
    use burn::module::{ModuleMapper, Param};
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

#[test]
fn both_networks_agree_on_both_step_paths_and_start_at_zero() {
    let device = Device::flex();
    device.seed(3);
    for (config, s) in unet_configs().into_iter().take(2) {
        let net = config.init(s, 2 * s.len(), &device);
        // the last convolution starts at zero
        let x = Tensor::<2>::random([2, s.len()], Distribution::Normal(0.0, 1.0), &device);
        assert!(values(net.forward_at(x, 5)).iter().all(|&v| v == 0.0));
        check_steps_paths(&perturbed(net, &device), s.len(), &device);
    }
    let s = shape(1, 8, 8);
    let config = PaperConvConfig {
        n_scales: 2,
        n_hidden_dense_lower: 16,
        ..PaperConvConfig::default()
    };
    let net = config.init(s, 2 * s.len(), 40, true, &device);
    let x = Tensor::<2>::random([2, s.len()], Distribution::Normal(0.0, 1.0), &device);
    assert!(values(net.forward_at(x, 5)).iter().all(|&v| v == 0.0));
    check_steps_paths(&perturbed(net, &device), s.len(), &device);
}

/// The reverse chain's call with the rows cut into a part a thread gives every row the uncut
/// call's output bit for bit, for both image networks, in a pool of two threads (so that the
/// parts run at the same time) and of one.
#[test]
fn rows_cut_across_threads_give_the_uncut_outputs_bit_for_bit() {
    let device = Device::flex();
    device.seed(4);
    let (config, s) = unet_configs().remove(0);
    let unet = perturbed(config.init(s, 2 * s.len(), &device), &device);
    let paper = PaperConvConfig {
        n_scales: 2,
        n_hidden_dense_lower: 16,
        ..PaperConvConfig::default()
    };
    let paper = perturbed(paper.init(s, 2 * s.len(), 40, true, &device), &device);
    // 21 rows: parts of 10 and 11
    let x = Tensor::<2>::random([21, s.len()], Distribution::Normal(0.0, 1.0), &device);
    for threads in [2, 1] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            // with two threads the rows are cut (10 and 11 of them), with one they are not
            assert!(unet.splits_batches() && paper.splits_batches());
            assert!(diffusion_kernels::fused_device(&device));
            assert_eq!(diffusion_kernels::worker_threads(), threads);
            const { assert!(21 / crate::network::MIN_PART_ROWS >= 2) };
            let cut = values(crate::network::forward_at_rows(&unet, x.clone(), 9));
            assert_eq!(
                cut,
                values(unet.forward_at(x.clone(), 9)),
                "{threads} threads"
            );
            let cut = values(crate::network::forward_at_rows(&paper, x.clone(), 9));
            assert_eq!(
                cut,
                values(paper.forward_at(x.clone(), 9)),
                "{threads} threads"
            );
        });
    }
}

/// Bad shapes are refused with the reason.
#[test]
fn configs_are_checked_against_the_image() {
    let s = shape(1, 28, 28);
    let too_deep = UnetConfig {
        channel_mult: vec![1, 2, 2, 2],
        ..UnetConfig::default()
    };
    assert!(
        too_deep
            .check(s)
            .unwrap_err()
            .0
            .contains("do not divide by 8")
    );
    let attention = UnetConfig {
        attention_resolutions: vec![5],
        ..UnetConfig::default()
    };
    assert!(attention.check(s).unwrap_err().0.contains("[28, 14, 7]"));
    let groups = UnetConfig {
        groups: 5,
        ..UnetConfig::default()
    };
    assert!(groups.check(s).unwrap_err().0.contains("groups"));
    assert!(UnetConfig::default().check(s).is_ok());
    let scales = PaperConvConfig {
        n_scales: 4,
        ..PaperConvConfig::default()
    };
    assert!(scales.check(s).unwrap_err().0.contains("divide"));
    assert!(PaperConvConfig::default().check(s).is_ok());
}
