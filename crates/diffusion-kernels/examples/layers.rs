//! Times the fused layer's pieces at the Swiss-roll model's sizes on flex: the first layer
//! (`[n, 2]` input, the product in the element-wise pass), a hidden layer (`[n, 128]` ·
//! `[128, 128]`, gemm then the pass), the activation alone, the product alone, and each
//! layer's forward and backward under autodiff.
//!
//! `cargo run --release -p diffusion-kernels --example layers -- [N] [REPEATS]`
//! (defaults 4096 and 400), on a worker of rayon's pool as the command line runs.

use std::time::Instant;

use burn::tensor::{Device, Distribution, Int, Tensor};
use diffusion_kernels::{Activation, Shift, activate, linear_activation, product};

/// Best of five rounds of `repeats` calls, in microseconds per call.
fn time(repeats: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..repeats {
                f();
            }
            start.elapsed().as_secs_f64() / repeats as f64 * 1e6
        })
        .fold(f64::INFINITY, f64::min)
}

fn run(n: usize, repeats: usize) {
    let h = 128;
    let device = Device::flex();
    let normal = Distribution::Normal(0.0, 1.0);
    let x2 = Tensor::<2>::random([n, 2], normal, &device);
    let x = Tensor::<2>::random([n, h], normal, &device);
    let w1 = Tensor::<2>::random([2, h], normal, &device);
    let w = Tensor::<2>::random([h, h], normal, &device) / (h as f64).sqrt();
    let b = Tensor::<1>::random([h], normal, &device);
    let table = Tensor::<2>::random([101, h], normal, &device);
    let steps: Vec<i64> = (0..n as i64).map(|i| i % 101).collect();
    let index = Tensor::<1, Int>::from_ints(steps.as_slice(), &device);
    let rows = |table: &Tensor<2>, index: &Tensor<1, Int>| Shift::Rows {
        table: table.clone(),
        index: index.clone(),
    };
    let sp = Activation::Softplus;
    let report = |what: &str, us: f64| println!("{what:<44} {us:>9.1} us");
    report(
        "first layer forward, [n,2]·[2,128] + softplus",
        time(repeats, || {
            let _ = linear_activation(
                x2.clone(),
                w1.clone(),
                Some(b.clone()),
                rows(&table, &index),
                sp,
            );
        }),
    );
    report(
        "hidden layer forward, [n,128]·[128,128] + softplus",
        time(repeats, || {
            let _ = linear_activation(
                x.clone(),
                w.clone(),
                Some(b.clone()),
                rows(&table, &index),
                sp,
            );
        }),
    );
    report(
        "product alone, [n,128]·[128,128]",
        time(repeats, || {
            let _ = product(x.clone(), w.clone());
        }),
    );
    report(
        "softplus alone, [n,128]",
        time(repeats, || {
            let _ = activate(x.clone(), sp);
        }),
    );
    let ad = device.autodiff();
    let (xa, x2a) = (
        Tensor::<2>::from_data(x.to_data(), &ad).require_grad(),
        Tensor::<2>::from_data(x2.to_data(), &ad),
    );
    let (wa, w1a, ba, ta) = (
        Tensor::<2>::from_data(w.to_data(), &ad).require_grad(),
        Tensor::<2>::from_data(w1.to_data(), &ad).require_grad(),
        Tensor::<1>::from_data(b.to_data(), &ad).require_grad(),
        Tensor::<2>::from_data(table.to_data(), &ad).require_grad(),
    );
    let ia = Tensor::<1, Int>::from_ints(steps.as_slice(), &ad);
    let g = Tensor::<2>::random([n, h], normal, &ad);
    report(
        "first layer forward + backward (autodiff)",
        time(repeats, || {
            let y = linear_activation(
                x2a.clone(),
                w1a.clone(),
                Some(ba.clone()),
                rows(&ta, &ia),
                sp,
            );
            let _ = (y * g.clone()).sum().backward();
        }),
    );
    let xc = Tensor::<2>::from_data(x.to_data(), &ad);
    report(
        "(y g).sum() backward alone",
        time(repeats, || {
            let y = xa.clone() * 1.0;
            let _ = (y * g.clone()).sum().backward();
        }),
    );
    report(
        "hidden layer fwd + bwd, x without gradient",
        time(repeats, || {
            let y = linear_activation(xc.clone(), wa.clone(), Some(ba.clone()), rows(&ta, &ia), sp);
            let _ = (y * g.clone()).sum().backward();
        }),
    );
    report(
        "hidden layer forward + backward (autodiff)",
        time(repeats, || {
            let y = linear_activation(xa.clone(), wa.clone(), Some(ba.clone()), rows(&ta, &ia), sp);
            let _ = (y * g.clone()).sum().backward();
        }),
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n = args
        .next()
        .map_or(4096, |a| a.parse().expect("N: a number of rows"));
    let repeats = args
        .next()
        .map_or(400, |a| a.parse().expect("REPEATS: a number"));
    println!(
        "n = {n}, {} threads, kernels {:?}",
        rayon::current_num_threads(),
        diffusion_kernels::Isa::detect()
    );
    rayon::ThreadPoolBuilder::new()
        .build()
        .expect("a thread pool")
        .install(|| run(n, repeats));
}
