//! Times the fused layer's pieces at the Swiss-roll model's sizes on flex: the first layer
//! (`[n, 2]` input, the product in the element-wise pass), a hidden layer (`[n, 128]` ·
//! `[128, 128]`, gemm then the pass), the activation alone, the product alone, and each
//! layer's forward and backward under autodiff.
//!
//! `cargo run --release -p diffusion-kernels --example layers -- [N] [REPEATS]`
//! (defaults 4096 and 400), on a worker of rayon's pool as the command line runs.

mod common;

use common::time;

use burn::tensor::{Device, Distribution, Int, Tensor};
use diffusion_kernels::{Activation, Shift, activate, linear_activation, product};

/// What is timed, and the call.
type Case<'a> = (&'static str, Box<dyn Fn() + 'a>);

fn run(n: usize, repeats: usize) {
    let h = 128;
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let normal = Distribution::Normal(0.0, 1.0);
    // the same values on the plain device and, tracked, on the autodiff one
    let both = |shape: [usize; 2], scale: f64| {
        let t = Tensor::<2>::random(shape, normal, &device) * scale;
        let tracked = Tensor::<2>::from_data(t.to_data(), &ad).require_grad();
        (t, tracked)
    };
    let (x2, x2a) = both([n, 2], 1.0);
    let (x, xa) = both([n, h], 1.0);
    let (w1, w1a) = both([2, h], 1.0);
    let (w, wa) = both([h, h], 1.0 / (h as f64).sqrt());
    let (table, ta) = both([101, h], 1.0);
    let b = Tensor::<1>::random([h], normal, &device);
    let ba = Tensor::<1>::from_data(b.to_data(), &ad).require_grad();
    let steps: Vec<i64> = (0..n as i64).map(|i| i % 101).collect();
    let (index, ia) = (
        Tensor::<1, Int>::from_ints(steps.as_slice(), &device),
        Tensor::<1, Int>::from_ints(steps.as_slice(), &ad),
    );
    let g = Tensor::<2>::random([n, h], normal, &ad);
    let sp = Activation::Softplus;
    // act(x w + b + table[index])
    let layer = |x: &Tensor<2>, w: &Tensor<2>, b: &Tensor<1>, t: &Tensor<2>, i: &Tensor<1, Int>| {
        let shift = Shift::Rows {
            table: t.clone(),
            index: i.clone(),
        };
        linear_activation(x.clone(), w.clone(), Some(b.clone()), shift, sp)
    };
    let cases: Vec<Case<'_>> = vec![
        (
            "first layer forward, [n,2]·[2,128] + softplus",
            Box::new(|| drop(layer(&x2, &w1, &b, &table, &index))),
        ),
        (
            "hidden layer forward, [n,128]·[128,128] + softplus",
            Box::new(|| drop(layer(&x, &w, &b, &table, &index))),
        ),
        (
            "product alone, [n,128]·[128,128]",
            Box::new(|| drop(product(x.clone(), w.clone()))),
        ),
        (
            "softplus alone, [n,128]",
            Box::new(|| drop(activate(x.clone(), sp))),
        ),
        (
            "(y g).sum() and its backward alone",
            Box::new(|| drop(((xa.clone() * 1.0) * g.clone()).sum().backward())),
        ),
        (
            "first layer forward + backward (autodiff)",
            Box::new(|| {
                drop(
                    (layer(&x2a.clone().detach(), &w1a, &ba, &ta, &ia) * g.clone())
                        .sum()
                        .backward(),
                )
            }),
        ),
        (
            "hidden layer forward + backward (autodiff)",
            Box::new(|| {
                drop(
                    (layer(&xa, &wa, &ba, &ta, &ia) * g.clone())
                        .sum()
                        .backward(),
                )
            }),
        ),
    ];
    for (what, case) in &cases {
        let us = time(repeats, case);
        println!("{what:<52} {us:>9.1} us");
    }
}

fn main() {
    common::main_with(4096, 400, run);
}
