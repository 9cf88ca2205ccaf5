//! The fused convolution against Burn's own `conv2d` on flex: the output and the gradients of
//! the input, the weights and the bias, for 3x3 kernels of stride 1 and 2, a 1x1 kernel, odd
//! and non-square images, one image and a batch split across threads; and the fused group norm
//! (with and without SiLU) and the upsampling against Burn's operations.

use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor};
use diffusion_kernels::{conv2d, fused_here};

mod common;

/// The same values on every call, uniform on [-1, 1].
fn values(len: usize, seed: u64) -> Vec<f32> {
    common::uniform(len, seed, 1.0)
}

fn tensor<const D: usize>(shape: [usize; D], seed: u64, device: &Device) -> Tensor<D> {
    constant(shape, seed, device).require_grad()
}

/// [`tensor`]'s values, untracked.
fn constant<const D: usize>(shape: [usize; D], seed: u64, device: &Device) -> Tensor<D> {
    let len = shape.iter().product();
    Tensor::<1>::from_floats(values(len, seed).as_slice(), device).reshape(shape)
}

/// Each of `names`' results from the two computations agrees within `tolerance` of the largest
/// magnitude (at least 1).
fn assert_close(
    names: &[&str],
    ours: &[Vec<f32>],
    theirs: &[Vec<f32>],
    tolerance: f32,
    case: &str,
) {
    for (name, (a, b)) in names.iter().zip(ours.iter().zip(theirs)) {
        assert_eq!(a.len(), b.len(), "{case} {name}");
        let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        let diff = a
            .iter()
            .zip(b)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            diff <= tolerance * scale,
            "{case} {name}: {diff} at scale {scale}"
        );
    }
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// Output, and the gradients of sum(output * r) for x, w and b.
fn run(fused: bool, [n, ci, h, w, co, k, stride, padding]: [usize; 8]) -> Vec<Vec<f32>> {
    let device = Device::flex().autodiff();
    let x = tensor([n, ci, h, w], 1, &device);
    let weight = tensor([co, ci, k, k], 2, &device);
    let bias = tensor([co], 3, &device);
    let y = if fused {
        assert!(fused_here(&x));
        conv2d(
            x.clone(),
            weight.clone(),
            Some(bias.clone()),
            stride,
            padding,
        )
    } else {
        burn::tensor::module::conv2d(
            x.clone(),
            weight.clone(),
            Some(bias.clone()),
            ConvOptions::new([stride, stride], [padding, padding], [1, 1], 1),
        )
    };
    let r = tensor(y.dims(), 4, &device).detach();
    let grads = (y.clone() * r).sum().backward();
    vec![
        host(y),
        host(x.grad(&grads).unwrap()),
        host(weight.grad(&grads).unwrap()),
        host(bias.grad(&grads).unwrap()),
    ]
}

#[test]
fn fused_convolution_matches_burns_values_and_gradients() {
    let cases = [
        // n, c_in, h, w, c_out, k, stride, padding
        [1, 1, 5, 5, 3, 3, 1, 1],
        [6, 4, 9, 7, 8, 3, 1, 1],
        [5, 8, 8, 8, 8, 3, 2, 1],
        [3, 6, 7, 7, 5, 3, 2, 1],
        [4, 12, 6, 5, 7, 1, 1, 0],
        // 1x1 kernels in registers (the last vector of pixels overlapping the one before),
        // and one whose images are narrower than a vector (the matrix product)
        [5, 33, 7, 7, 17, 1, 1, 0],
        [3, 6, 28, 28, 16, 1, 1, 0],
        [2, 3, 3, 3, 4, 1, 1, 0],
        [17, 3, 6, 6, 4, 3, 1, 0],
        [2, 2, 4, 4, 3, 3, 1, 2],
        [3, 2, 9, 8, 4, 3, 2, 0],
        [2, 3, 5, 6, 2, 1, 2, 0],
        // kernels wider than 3 that keep the size, and planes narrower than the kernel
        [2, 3, 7, 6, 4, 5, 1, 2],
        [3, 2, 1, 3, 2, 3, 1, 1],
        [2, 2, 2, 1, 3, 5, 1, 2],
        // images whose column matrices split into tiles of output rows (the last one short)
        [2, 16, 28, 28, 4, 3, 1, 1],
        [2, 40, 28, 28, 3, 3, 2, 1],
        [2, 40, 20, 20, 3, 3, 1, 0],
        // an input gradient (the transposed convolution) over several tiles, one channel in
        [2, 4, 28, 28, 64, 3, 1, 1],
        [2, 1, 12, 12, 64, 3, 1, 1],
        // batches whose tasks hold several images side by side for the direct kernels' weight
        // gradient, the last task fewer (on 1 to 4 threads)
        [37, 5, 9, 9, 7, 3, 1, 1],
        [17, 3, 6, 6, 4, 3, 1, 1],
        // and the stride-2 kernels' tasks (the input gradient through the output gradient's
        // rows of each image of a task), odd sides among them
        [37, 5, 9, 9, 7, 3, 2, 1],
        [17, 3, 7, 5, 4, 3, 2, 1],
    ];
    for case in cases {
        let (ours, burns) = (run(true, case), run(false, case));
        let names = ["output", "x", "weight", "bias"];
        assert_close(&names, &ours, &burns, 2e-5, &format!("{case:?}"));
    }
}

/// The fused convolution's gradients when only some of its inputs are tracked (a frozen
/// input or frozen weights): each the same as when all are, on the direct kernels' path and the
/// column matrix's.
#[test]
fn gradients_of_some_inputs_alone_match_the_full_pass() {
    for case in [
        [6, 4, 9, 7, 8, 3, 1, 1],
        [5, 8, 8, 8, 8, 3, 2, 1],
        [17, 3, 7, 5, 4, 3, 2, 1],
    ] {
        let [n, ci, h, w, co, k, stride, padding] = case;
        let full = run(true, case);
        let device = Device::flex().autodiff();
        for tracked in [[true, false], [false, true]] {
            let input = |shape: [usize; 4], seed, tracked| match tracked {
                true => tensor(shape, seed, &device),
                false => constant(shape, seed, &device),
            };
            let x = input([n, ci, h, w], 1, tracked[0]);
            let weight = input([co, ci, k, k], 2, tracked[1]);
            let bias = tensor([co], 3, &device);
            let y = conv2d(
                x.clone(),
                weight.clone(),
                Some(bias.clone()),
                stride,
                padding,
            );
            let r = tensor(y.dims(), 4, &device).detach();
            let grads = (y * r).sum().backward();
            assert_eq!(x.grad(&grads).is_some(), tracked[0], "{case:?}");
            assert_eq!(weight.grad(&grads).is_some(), tracked[1], "{case:?}");
            let (name, got, want) = match x.grad(&grads) {
                Some(dx) => ("x", host(dx), &full[1]),
                None => ("weight", host(weight.grad(&grads).unwrap()), &full[2]),
            };
            let bias_grad = host(bias.grad(&grads).unwrap());
            assert_close(
                &[name, "bias"],
                &[got, bias_grad],
                &[want.clone(), full[3].clone()],
                0.0,
                &format!("{case:?}, tracked {tracked:?}"),
            );
        }
    }
}

/// GroupNorm as `burn::nn::GroupNorm` computes it (biased variance, epsilon inside the root),
/// written out with Burn's operations, then the affine map and SiLU.
fn group_norm_reference(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    groups: usize,
    silu: bool,
) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    let g = x.reshape([n, groups, c / groups * h * w]);
    let mean = g.clone().mean_dim(2);
    let centred = g - mean;
    let var = centred.clone().powf_scalar(2.0).mean_dim(2);
    let y = (centred / (var + 1e-5).sqrt()).reshape([n, c, h, w]) * gamma.reshape([1, c, 1, 1])
        + beta.reshape([1, c, 1, 1]);
    if silu {
        burn::tensor::activation::silu(y)
    } else {
        y
    }
}

#[test]
fn fused_group_norm_matches_burns_values_and_gradients() {
    use diffusion_kernels::{NormSpec, group_norm};
    for (shape, groups, silu) in [
        ([2, 8, 5, 5], 4, true),
        ([3, 6, 4, 7], 2, false),
        ([9, 16, 6, 6], 8, true),
        ([1, 4, 3, 3], 1, true),
    ] {
        let results: Vec<Vec<Vec<f32>>> = [true, false]
            .iter()
            .map(|&fused| {
                let device = Device::flex().autodiff();
                let x = tensor(shape, 11, &device) * 3.0 + 0.5;
                let x = x.detach().require_grad();
                let gamma = tensor([shape[1]], 12, &device);
                let beta = tensor([shape[1]], 13, &device);
                let y = if fused {
                    group_norm(
                        x.clone(),
                        gamma.clone(),
                        beta.clone(),
                        NormSpec {
                            groups,
                            epsilon: 1e-5,
                            silu,
                        },
                    )
                } else {
                    group_norm_reference(x.clone(), gamma.clone(), beta.clone(), groups, silu)
                };
                let r = tensor(shape, 14, &device).detach();
                let grads = (y.clone() * r).sum().backward();
                vec![
                    host(y),
                    host(x.grad(&grads).unwrap()),
                    host(gamma.grad(&grads).unwrap()),
                    host(beta.grad(&grads).unwrap()),
                ]
            })
            .collect();
        let names = ["output", "x", "gamma", "beta"];
        let case = format!("{shape:?}");
        assert_close(&names, &results[0], &results[1], 1e-4, &case);
    }
}

/// The convolution plus a shift per image (`[n, c_out]` and `[1, c_out]`) or a residual against
/// Burn's `conv2d` and an addition: the output and the gradients of x, the weights, the bias,
/// and the shift or the residual.
#[test]
fn convolution_plus_a_shift_or_a_residual_matches_burns_values_and_gradients() {
    use diffusion_kernels::{ConvPlus, ConvSpec, conv2d_plus};
    for (case, shift_rows) in [
        ([4, 3, 6, 5, 5, 3, 1, 1], Some(4)),
        ([4, 3, 6, 5, 5, 3, 1, 1], Some(1)),
        ([3, 4, 7, 7, 6, 3, 2, 1], Some(3)),
        ([4, 3, 6, 5, 5, 3, 1, 1], None),
        ([2, 6, 5, 5, 6, 1, 1, 0], None),
        ([3, 5, 7, 7, 9, 1, 1, 0], Some(3)),
        ([3, 5, 7, 7, 9, 1, 1, 0], Some(1)),
    ] {
        let [n, ci, h, w, co, k, stride, padding] = case;
        let results: Vec<Vec<Vec<f32>>> = [true, false]
            .iter()
            .map(|&fused| {
                let device = Device::flex().autodiff();
                let x = tensor([n, ci, h, w], 21, &device);
                let weight = tensor([co, ci, k, k], 22, &device);
                let bias = tensor([co], 23, &device);
                let side = (h + 2 * padding - k) / stride + 1;
                let shift = shift_rows.map(|rows| tensor([rows, co], 24, &device));
                let residual = tensor(
                    [n, co, side, (w + 2 * padding - k) / stride + 1],
                    25,
                    &device,
                );
                let y = if fused {
                    let plus = match &shift {
                        Some(s) => ConvPlus::Shift(s.clone()),
                        None => ConvPlus::Residual(residual.clone()),
                    };
                    let spec = ConvSpec { stride, padding };
                    conv2d_plus(x.clone(), weight.clone(), Some(bias.clone()), spec, plus)
                } else {
                    let options = ConvOptions::new([stride, stride], [padding, padding], [1, 1], 1);
                    let y = burn::tensor::module::conv2d(
                        x.clone(),
                        weight.clone(),
                        Some(bias.clone()),
                        options,
                    );
                    match &shift {
                        Some(s) => y + s.clone().reshape([s.dims()[0], co, 1, 1]),
                        None => y + residual.clone(),
                    }
                };
                let r = tensor(y.dims(), 26, &device).detach();
                let grads = (y.clone() * r).sum().backward();
                let added = match &shift {
                    Some(s) => host(s.grad(&grads).unwrap()),
                    None => host(residual.grad(&grads).unwrap()),
                };
                vec![
                    host(y),
                    host(x.grad(&grads).unwrap()),
                    host(weight.grad(&grads).unwrap()),
                    host(bias.grad(&grads).unwrap()),
                    added,
                ]
            })
            .collect();
        let names = ["output", "x", "weight", "bias", "shift or residual"];
        let label = format!("{case:?} shift rows {shift_rows:?}");
        assert_close(&names, &results[0], &results[1], 2e-5, &label);
    }
}

/// The upsampling by 2 on flex against Burn's composition (a reshape, an expand and a reshape
/// back): the same values, and the same gradient (each 2x2 block summed).
#[test]
fn upsampling_matches_burns_values_and_gradient() {
    for shape in [[2, 3, 7, 5], [1, 1, 1, 1], [9, 16, 14, 14], [3, 2, 4, 1]] {
        let [n, c, h, w] = shape;
        let results: Vec<Vec<Vec<f32>>> = [true, false]
            .into_iter()
            .map(|fused| {
                let device = Device::flex().autodiff();
                let x = tensor(shape, 31, &device).require_grad();
                let y = if fused {
                    assert!(fused_here(&x));
                    diffusion_kernels::upsample2(x.clone())
                } else {
                    x.clone()
                        .reshape([n, c, h, 1, w, 1])
                        .expand([n, c, h, 2, w, 2])
                        .reshape([n, c, 2 * h, 2 * w])
                };
                assert_eq!(y.dims(), [n, c, 2 * h, 2 * w]);
                let g = tensor([n, c, 2 * h, 2 * w], 32, &device);
                let grads = (y.clone() * g).sum().backward();
                vec![host(y), host(x.grad(&grads).unwrap())]
            })
            .collect();
        // 2.5e-7 of the largest magnitude (at most 4, the gradient's 2x2 sums): within 1e-6
        assert_close(
            &["output", "x"],
            &results[0],
            &results[1],
            2.5e-7,
            &format!("{shape:?}"),
        );
    }
}

/// Two tensors' channels side by side on flex against Burn's `cat` along the channels: the
/// same values and the same gradients, bit for bit (copies only); with a part of one channel,
/// one image, and the batch split across threads.
#[test]
fn concatenation_matches_burns_values_and_gradients() {
    for ([n, ca, cb, h, w], seed) in [
        ([3, 2, 5, 7, 6], 41),
        ([1, 1, 1, 1, 1], 42),
        ([64, 32, 16, 14, 14], 43),
        ([2, 3, 1, 4, 9], 44),
    ] {
        let results: Vec<Vec<Vec<f32>>> = [true, false]
            .into_iter()
            .map(|fused| {
                let device = Device::flex().autodiff();
                let a = tensor([n, ca, h, w], seed, &device);
                let b = tensor([n, cb, h, w], seed + 100, &device);
                let y = if fused {
                    diffusion_kernels::concat_channels(a.clone(), b.clone())
                } else {
                    Tensor::cat(vec![a.clone(), b.clone()], 1)
                };
                assert_eq!(y.dims(), [n, ca + cb, h, w]);
                let g = tensor([n, ca + cb, h, w], seed + 200, &device);
                let grads = (y.clone() * g).sum().backward();
                let grad = |t: &Tensor<4>| t.grad(&grads).map(host).unwrap_or_default();
                vec![host(y), grad(&a), grad(&b)]
            })
            .collect();
        assert_eq!(results[0], results[1], "{:?}", [n, ca, cb, h, w]);
    }
}

/// The group norm and the convolution after it as one operation ([`norm_conv2d`]) against the
/// two ([`group_norm`], then [`conv2d_plus`]), under autodiff and without: the output and the
/// gradients of x, gamma, beta, the weights, the bias and the shift or residual, bit for bit.
/// Images wide enough for the norm to write the convolution's planes and narrower ones, 3x3
/// kernels of stride 1 and 2 and a 1x1 one, with and without SiLU, every parent tracked or only
/// the weights and bias.
#[test]
fn norm_then_convolution_as_one_operation_is_the_two_bit_for_bit() {
    use diffusion_kernels::{ConvPlus, ConvSpec, NormSpec, conv2d_plus, group_norm, norm_conv2d};
    // n, c_in, h, w, c_out, k, stride, padding; groups; SiLU; what is added
    let cases = [
        ([3, 8, 28, 28, 6, 3, 1, 1], 4, true, "shift"),
        ([2, 6, 13, 12, 5, 3, 1, 1], 3, false, "residual"),
        ([1, 4, 14, 17, 4, 3, 1, 1], 1, true, "nothing"),
        ([4, 4, 7, 7, 3, 3, 1, 1], 2, true, "shift of one row"),
        ([2, 6, 9, 12, 4, 3, 2, 1], 2, true, "residual"),
        ([2, 6, 12, 12, 4, 1, 1, 0], 3, true, "nothing"),
    ];
    for (case, groups, silu, added) in cases {
        let [n, ci, h, w, co, k, stride, padding] = case;
        let (side, width) = (
            (h + 2 * padding - k) / stride + 1,
            (w + 2 * padding - k) / stride + 1,
        );
        for all_tracked in [true, false] {
            let results: Vec<Vec<Vec<f32>>> = [true, false]
                .iter()
                .map(|&one| {
                    let device = Device::flex().autodiff();
                    let x = (constant([n, ci, h, w], 31, &device) * 2.0 + 0.3).detach();
                    let x = if all_tracked { x.require_grad() } else { x };
                    let gamma = tensor([ci], 32, &device);
                    let beta = tensor([ci], 33, &device);
                    let (gamma, beta) = if all_tracked {
                        (gamma, beta)
                    } else {
                        (gamma.detach(), beta.detach())
                    };
                    let weight = tensor([co, ci, k, k], 34, &device);
                    let bias = tensor([co], 35, &device);
                    let shift_rows = if added == "shift" { n } else { 1 };
                    let shift = tensor([shift_rows, co], 36, &device);
                    let residual = tensor([n, co, side, width], 37, &device);
                    let plus = match added {
                        "nothing" => ConvPlus::Nothing,
                        "residual" => ConvPlus::Residual(residual.clone()),
                        _ => ConvPlus::Shift(shift.clone()),
                    };
                    let norm = NormSpec {
                        groups,
                        epsilon: 1e-5,
                        silu,
                    };
                    let spec = ConvSpec { stride, padding };
                    let forward = |x: Tensor<4>, gamma, beta, weight, bias, plus| {
                        if one {
                            norm_conv2d(x, (gamma, beta), norm, weight, Some(bias), spec, plus)
                        } else {
                            let z = group_norm(x, gamma, beta, norm);
                            conv2d_plus(z, weight, Some(bias), spec, plus)
                        }
                    };
                    let y = forward(
                        x.clone(),
                        gamma.clone(),
                        beta.clone(),
                        weight.clone(),
                        bias.clone(),
                        plus.clone(),
                    );
                    // the same without autodiff
                    let plain = Device::flex();
                    let untracked = |t: &Tensor<4>| Tensor::<4>::from_data(t.to_data(), &plain);
                    let untracked1 = |t: &Tensor<1>| Tensor::<1>::from_data(t.to_data(), &plain);
                    let plus_plain = match &plus {
                        ConvPlus::Nothing => ConvPlus::Nothing,
                        ConvPlus::Residual(r) => ConvPlus::Residual(untracked(r)),
                        ConvPlus::Shift(s) => {
                            ConvPlus::Shift(Tensor::<2>::from_data(s.to_data(), &plain))
                        }
                    };
                    let y_plain = forward(
                        untracked(&x),
                        untracked1(&gamma),
                        untracked1(&beta),
                        untracked(&weight),
                        untracked1(&bias),
                        plus_plain,
                    );
                    let r = tensor(y.dims(), 38, &device).detach();
                    let grads = (y.clone() * r).sum().backward();
                    let grad = |t: Option<Vec<f32>>| t.unwrap_or_default();
                    let added_grad = match added {
                        "nothing" => Vec::new(),
                        "residual" => host(residual.grad(&grads).unwrap()),
                        _ => host(shift.grad(&grads).unwrap()),
                    };
                    vec![
                        host(y),
                        host(y_plain),
                        grad(x.grad(&grads).map(host)),
                        grad(gamma.grad(&grads).map(host)),
                        grad(beta.grad(&grads).map(host)),
                        host(weight.grad(&grads).unwrap()),
                        host(bias.grad(&grads).unwrap()),
                        added_grad,
                    ]
                })
                .collect();
            let names = [
                "output",
                "untracked output",
                "x",
                "gamma",
                "beta",
                "weight",
                "bias",
                "shift or residual",
            ];
            for (name, (a, b)) in names.iter().zip(results[0].iter().zip(&results[1])) {
                let label = format!("{case:?} {added}, all tracked {all_tracked}: {name}");
                assert_eq!(a.len(), b.len(), "{label}");
                assert!(
                    !all_tracked
                        || *name == "shift or residual" && added == "nothing"
                        || !a.is_empty(),
                    "{label}: no values"
                );
                let (a, b): (Vec<u32>, Vec<u32>) = (
                    a.iter().map(|v| v.to_bits()).collect(),
                    b.iter().map(|v| v.to_bits()).collect(),
                );
                assert!(a == b, "{label}: not bit for bit");
            }
        }
    }
}
