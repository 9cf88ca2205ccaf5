//! Times the convolution at the MNIST U-Net's sizes on flex (`configs/mnist.toml`, batch 64):
//! each 3x3 convolution that keeps the size forward alone and forward plus backward under
//! autodiff (the input's, the weights' and the bias's gradients), in microseconds per call and
//! GFLOP/s (2 multiply-adds' flop per tap, forward; three times that with the backward pass).
//!
//! `cargo run --release -p diffusion-kernels --example convolutions -- [N] [REPEATS]`
//! (defaults 64 and 20), on a worker of rayon's pool as the command line runs.

mod common;

use common::time;

use burn::tensor::{Device, Distribution, Tensor};
use diffusion_kernels::conv2d;

fn run(n: usize, repeats: usize) {
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let normal = Distribution::Normal(0.0, 1.0);
    // (input channels, output channels, side): the U-Net's levels at 28, 14 and 7 pixels, and
    // the first convolutions after the skip connections' concatenation
    for (c_in, c_out, side) in [(16, 16, 28), (32, 32, 14), (32, 32, 7), (48, 32, 14)] {
        let x = Tensor::<4>::random([n, c_in, side, side], normal, &ad).require_grad();
        let scale = 1.0 / ((9 * c_in) as f64).sqrt();
        let w = (Tensor::<4>::random([c_out, c_in, 3, 3], normal, &ad) * scale).require_grad();
        let b = Tensor::<1>::random([c_out], normal, &ad).require_grad();
        let g = Tensor::<4>::random([n, c_out, side, side], normal, &ad);
        let (xp, wp, bp) = (
            Tensor::<4>::from_data(x.to_data(), &device),
            Tensor::<4>::from_data(w.to_data(), &device),
            Tensor::<1>::from_data(b.to_data(), &device),
        );
        let forward = time(repeats, || {
            drop(conv2d(xp.clone(), wp.clone(), Some(bp.clone()), 1, 1))
        });
        let both = time(repeats, || {
            let y = conv2d(x.clone(), w.clone(), Some(b.clone()), 1, 1);
            drop((y * g.clone()).sum().backward())
        });
        let flop = 2.0 * (n * c_in * c_out * 9 * side * side) as f64;
        println!(
            "{c_in:>3} -> {c_out:<3} {side:>2}x{side:<2}  forward {forward:>8.0} us \
             ({:>5.1} GFLOP/s)   forward + backward {both:>8.0} us ({:>5.1} GFLOP/s)",
            flop / forward / 1e3,
            3.0 * flop / both / 1e3,
        );
    }
}

fn main() {
    common::main_with(64, 20, run);
}
