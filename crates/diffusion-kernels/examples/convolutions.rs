//! Times the convolution at the MNIST U-Net's sizes on flex (`configs/mnist.toml`, batch 64):
//! its 3x3 convolutions that keep the size, its 1x1 and its stride-2 ones (kernel/stride, input
//! and output channels, input side), each forward alone and forward plus backward under
//! autodiff (the input's, the weights' and the bias's gradients), in microseconds per call and
//! GFLOP/s (2 multiply-adds' flop per tap, forward; three times that with the backward pass).
//!
//! `cargo run --release -p diffusion-kernels --example convolutions -- [N] [REPEATS]`
//! (defaults 64 and 20), on a worker of rayon's pool as the command line runs.

mod common;

use common::{time, time_pair};

use burn::tensor::{Device, Distribution, Tensor};
use diffusion_kernels::{ConvPlus, ConvSpec, NormSpec, conv2d, group_norm, norm_conv2d};

fn run(n: usize, repeats: usize) {
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let normal = Distribution::Normal(0.0, 1.0);
    // (input channels, output channels, side): the U-Net's levels at 28, 14 and 7 pixels, and
    // the first convolutions after the skip connections' concatenation
    // then its 1x1 convolutions (the residual blocks' skips where the width changes,
    // attention's projections) and its two stride-2 downsamplings
    for (c_in, c_out, side, k, stride) in [
        (16, 16, 28, 3, 1),
        (32, 32, 14, 3, 1),
        (32, 32, 7, 3, 1),
        (48, 32, 14, 3, 1),
        (48, 16, 28, 1, 1),
        (64, 32, 14, 1, 1),
        (32, 96, 7, 1, 1),
        (16, 16, 28, 3, 2),
        (32, 32, 14, 3, 2),
    ] {
        let x = Tensor::<4>::random([n, c_in, side, side], normal, &ad).require_grad();
        let scale = 1.0 / ((k * k * c_in) as f64).sqrt();
        let w = (Tensor::<4>::random([c_out, c_in, k, k], normal, &ad) * scale).require_grad();
        let b = Tensor::<1>::random([c_out], normal, &ad).require_grad();
        let (padding, out) = (k / 2, (side + 2 * (k / 2) - k) / stride + 1);
        let g = Tensor::<4>::random([n, c_out, out, out], normal, &ad);
        let (xp, wp, bp) = (
            Tensor::<4>::from_data(x.to_data(), &device),
            Tensor::<4>::from_data(w.to_data(), &device),
            Tensor::<1>::from_data(b.to_data(), &device),
        );
        let forward = time(repeats, || {
            drop(conv2d(
                xp.clone(),
                wp.clone(),
                Some(bp.clone()),
                stride,
                padding,
            ))
        });
        let both = time(repeats, || {
            let y = conv2d(x.clone(), w.clone(), Some(b.clone()), stride, padding);
            drop((y * g.clone()).sum().backward())
        });
        let flop = 2.0 * (n * c_in * c_out * k * k * out * out) as f64;
        println!(
            "{k}x{k}/{stride} {c_in:>3} -> {c_out:<3} {side:>2}x{side:<2}  forward {forward:>8.0} us \
             ({:>5.1} GFLOP/s)   forward + backward {both:>8.0} us ({:>5.1} GFLOP/s)",
            flop / forward / 1e3,
            3.0 * flop / both / 1e3,
        );
    }
    // the group norm with SiLU that feeds each residual block's convolutions (8 groups)
    for (c, side) in [(16, 28), (32, 14), (32, 7)] {
        let spec = NormSpec {
            groups: 8,
            epsilon: 1e-5,
            silu: true,
        };
        let x = Tensor::<4>::random([n, c, side, side], normal, &ad).require_grad();
        let gamma = Tensor::<1>::random([c], normal, &ad).require_grad();
        let beta = Tensor::<1>::random([c], normal, &ad).require_grad();
        let (xp, gp, bp) = (
            Tensor::<4>::from_data(x.to_data(), &device),
            Tensor::<1>::from_data(gamma.to_data(), &device),
            Tensor::<1>::from_data(beta.to_data(), &device),
        );
        let forward = time(repeats, || {
            drop(group_norm(xp.clone(), gp.clone(), bp.clone(), spec))
        });
        let both = time(repeats, || {
            let y = group_norm(x.clone(), gamma.clone(), beta.clone(), spec);
            drop(y.sum().backward())
        });
        println!(
            "group norm + SiLU {c:>3} {side:>2}x{side:<2}  forward {forward:>8.0} us   \
             forward + backward {both:>8.0} us"
        );
    }
    norm_then_conv(n, repeats);
}

/// The group norm with SiLU and the 3x3 convolution after it, as two operations
/// ([`group_norm`], then [`conv2d`]) and as one ([`norm_conv2d`]), forward and forward plus
/// backward, in turn.
fn norm_then_conv(n: usize, repeats: usize) {
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let normal = Distribution::Normal(0.0, 1.0);
    let spec = NormSpec {
        groups: 8,
        epsilon: 1e-5,
        silu: true,
    };
    for (c_in, c_out, side) in [(16, 16, 28), (32, 32, 14), (32, 32, 7), (48, 32, 14)] {
        let x = Tensor::<4>::random([n, c_in, side, side], normal, &ad).require_grad();
        let gamma = Tensor::<1>::random([c_in], normal, &ad).require_grad();
        let beta = Tensor::<1>::random([c_in], normal, &ad).require_grad();
        let scale = 1.0 / ((9 * c_in) as f64).sqrt();
        let w = (Tensor::<4>::random([c_out, c_in, 3, 3], normal, &ad) * scale).require_grad();
        let b = Tensor::<1>::random([c_out], normal, &ad).require_grad();
        let g = Tensor::<4>::random([n, c_out, side, side], normal, &ad);
        let conv = ConvSpec {
            stride: 1,
            padding: 1,
        };
        let two = |x: Tensor<4>, gamma, beta, w, b| {
            let z = group_norm(x, gamma, beta, spec);
            conv2d(z, w, Some(b), 1, 1)
        };
        let one = |x, gamma, beta, w, b| {
            norm_conv2d(x, (gamma, beta), spec, w, Some(b), conv, ConvPlus::Nothing)
        };
        let plain = |t: &Tensor<4>| Tensor::<4>::from_data(t.to_data(), &device);
        let plain1 = |t: &Tensor<1>| Tensor::<1>::from_data(t.to_data(), &device);
        let (xp, gp, bp, wp, biasp) = (
            plain(&x),
            plain1(&gamma),
            plain1(&beta),
            plain(&w),
            plain1(&b),
        );
        let forward = |f: &dyn Fn(_, _, _, _, _) -> Tensor<4>| {
            drop(f(
                xp.clone(),
                gp.clone(),
                bp.clone(),
                wp.clone(),
                biasp.clone(),
            ))
        };
        let both = |f: &dyn Fn(_, _, _, _, _) -> Tensor<4>| {
            let y = f(x.clone(), gamma.clone(), beta.clone(), w.clone(), b.clone());
            drop((y * g.clone()).sum().backward())
        };
        let rounds = 15;
        let f = time_pair(rounds, repeats, || forward(&two), || forward(&one));
        let fb = time_pair(rounds, repeats, || both(&two), || both(&one));
        println!(
            "norm + SiLU + 3x3 {c_in:>3} -> {c_out:<3} {side:>2}x{side:<2}  forward {:>6.0} -> {:>6.0} us   \
             forward + backward {:>6.0} -> {:>6.0} us (two operations -> one, medians of {rounds} rounds in turn)",
            f.0, f.1, fb.0, fb.1
        );
    }
}

fn main() {
    common::main_with(64, 20, run);
}
