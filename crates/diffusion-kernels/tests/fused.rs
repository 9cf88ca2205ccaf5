//! The fused layer against Burn's own operations: values and every gradient, for each
//! activation, with a per-row, a shared, a table-row or no shift, with and without a bias, at
//! sizes below and above the multi-threaded split, with the product in the element-wise pass
//! and through gemm.

mod common;

use burn::tensor::{Device, Int, Tensor};
use diffusion_kernels::{Activation, Shift, fused_here, linear_activation};

fn max_abs_diff(a: &Tensor<2>, b: &Tensor<2>) -> (f32, f32) {
    let a = a.to_data().try_to_vec::<f32>().unwrap();
    let b = b.to_data().try_to_vec::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .zip(&b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    (diff, scale)
}

#[derive(Clone, Copy, Debug)]
enum Term {
    PerRow,
    Shared,
    Table,
    None,
}

/// The layer's output and the gradients of sum(output * weights) for x, w, b and the shift.
fn run(
    fused: bool,
    device: &Device,
    [n, k, h]: [usize; 3],
    act: Activation,
    term: Term,
    bias: bool,
) -> Vec<Tensor<2>> {
    // the same values on every call, uniform on [-3, 3]
    let normal = |shape: [usize; 2], seed: u64| -> Tensor<2> {
        let values = common::uniform(shape[0] * shape[1], seed, 3.0);
        Tensor::<1>::from_floats(values.as_slice(), device)
            .reshape(shape)
            .require_grad()
    };
    let x = normal([n, k], 1);
    let w = normal([k, h], 2);
    let b = normal([1, h], 3);
    let s = match term {
        Term::PerRow => Some(normal([n, h], 4)),
        Term::Shared => Some(normal([1, h], 5)),
        Term::Table => Some(normal([7, h], 7)),
        Term::None => None,
    };
    // rows of the table, every one used at n = 2000, some unused at n = 5
    let index: Vec<i64> = (0..n).map(|r| ((r * 5 + r / 3) % 7) as i64).collect();
    let index = Tensor::<1, Int>::from_ints(index.as_slice(), device);
    let shift = match (term, s.clone()) {
        (Term::Table, Some(table)) => Shift::Rows {
            table,
            index: index.clone(),
        },
        (_, Some(s)) => Shift::Dense(s),
        (_, None) => Shift::None,
    };
    let weights = normal([n, h], 6).detach();
    let b1 = bias.then(|| b.clone().reshape([h]));
    let y = if fused {
        assert!(fused_here(&x), "expected the fused path on {device:?}");
        linear_activation(x.clone(), w.clone(), b1, shift, act)
    } else {
        let mut pre = x.clone().matmul(w.clone());
        if let Some(b) = b1 {
            pre = pre + b.unsqueeze_dim(0);
        }
        pre = match shift {
            Shift::Rows { table, index } => pre + table.select(0, index),
            Shift::Dense(s) => pre + s,
            Shift::None => pre,
        };
        act.apply(pre)
    };
    let grads = (y.clone() * weights).sum().backward();
    let mut out = vec![y.detach(), x.grad(&grads).unwrap(), w.grad(&grads).unwrap()];
    if bias {
        out.push(b.grad(&grads).unwrap());
    }
    if let Some(s) = s {
        out.push(s.grad(&grads).unwrap());
    }
    out
}

#[test]
fn fused_layer_matches_burns_operations_in_value_and_every_gradient() {
    let device = Device::flex().autodiff();
    // k = 2: the product in the element-wise pass; k = 13: through gemm, or with h = 4 (a
    // readout) as dot products; n = 2000 in blocks of rows on several threads
    for [n, k, h] in [
        [5, 13, 37],
        [2000, 13, 37],
        [5, 2, 37],
        [2000, 2, 37],
        [5, 13, 4],
        [2000, 13, 4],
        [9000, 13, 4],
        [2000, 2, 4],
    ] {
        for act in Activation::ALL {
            for term in [Term::PerRow, Term::Shared, Term::Table, Term::None] {
                for bias in [true, false] {
                    let got = run(true, &device, [n, k, h], act, term, bias);
                    let want = run(false, &device, [n, k, h], act, term, bias);
                    assert_eq!(got.len(), want.len());
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(g.dims(), w.dims());
                        let (diff, scale) = max_abs_diff(g, w);
                        assert!(
                            diff <= 2e-5 * scale.max(1.0),
                            "n {n} k {k} h {h} {act:?} {term:?} bias {bias}: output {i} differs by {diff} \
                             (scale {scale})"
                        );
                    }
                }
            }
        }
    }
}

/// Products of every shape class (few columns, few rows and a long inner dimension, few
/// output columns, gemm's), plain and through transposed views, against Burn's `matmul`.
#[test]
fn products_of_every_shape_equal_burns_matmul() {
    let device = Device::flex();
    let value = |i: usize| ((i as f32) * 0.618).sin();
    let tensor = |m: usize, n: usize, seed: usize| {
        let v: Vec<f32> = (0..m * n).map(|i| value(i + 7 * seed)).collect();
        Tensor::<1>::from_floats(v.as_slice(), &device).reshape([m, n])
    };
    for (m, k, n) in [
        (600, 3, 50),
        (3, 900, 40),
        (40, 900, 3),
        (70, 130, 90),
        (1, 1, 1),
    ] {
        let (a, b) = (tensor(m, k, 1), tensor(k, n, 2));
        let want = a.clone().matmul(b.clone());
        let got = diffusion_kernels::product(a.clone(), b.clone());
        let (diff, scale) = max_abs_diff(&got, &want);
        assert!(
            diff <= 1e-5 * scale.max(1.0),
            "[{m}, {k}] x [{k}, {n}]: {diff}"
        );
        // the same product from transposed storage
        let (at, bt) = (tensor(k, m, 1).transpose(), tensor(n, k, 2).transpose());
        let want = at.clone().matmul(bt.clone());
        let (diff, scale) = max_abs_diff(&diffusion_kernels::product(at, bt), &want);
        assert!(
            diff <= 1e-5 * scale.max(1.0),
            "transposed [{m}, {k}] x [{k}, {n}]: {diff}"
        );
    }
}

/// Without autodiff the fused forward gives the same values.
#[test]
fn fused_forward_without_autodiff() {
    let device = Device::flex();
    let x = Tensor::<2>::from_floats([[1.0, -2.0], [0.5, 3.0]], &device);
    let w = Tensor::<2>::from_floats([[0.5, -1.0], [0.25, 2.0]], &device);
    let b = Tensor::<1>::from_floats([0.1, -0.2], &device);
    let s = Tensor::<2>::from_floats([[1.0, 0.0]], &device);
    let y = linear_activation(x, w, Some(b), Shift::Dense(s), Activation::Softplus);
    // x w = [[0.5 - 0.5, -1 - 4], [0.25 + 0.75, -0.5 + 6]], then + b + s
    let pre = [[0.0 + 0.1 + 1.0, -5.0 - 0.2], [1.0 + 0.1 + 1.0, 5.5 - 0.2]];
    let want: Vec<f32> = pre
        .iter()
        .flatten()
        .map(|&v: &f64| (v.max(0.0) + (-v.abs()).exp().ln_1p()) as f32)
        .collect();
    let got = y.to_data().try_to_vec::<f32>().unwrap();
    for (g, w) in got.iter().zip(&want) {
        assert!(
            (g - w).abs() <= 2e-7 * w.abs().max(1.0),
            "{got:?} vs {want:?}"
        );
    }
}

/// f64 tensors take Burn's operations (the kernels are f32).
#[test]
fn other_dtypes_take_burns_operations() {
    let device = Device::flex();
    let x = Tensor::<2>::from_floats([[1.0, 2.0]], &device).cast(burn::tensor::DType::F64);
    assert!(!fused_here(&x));
    let w = Tensor::<2>::from_floats([[1.0], [1.0]], &device).cast(burn::tensor::DType::F64);
    let y = linear_activation(x, w, None, Shift::None, Activation::Tanh);
    let got = y.to_data().try_to_vec::<f64>().unwrap();
    assert!((got[0] - 3f64.tanh()).abs() < 1e-12, "{got:?}");
}

/// The per-row readout against Burn's composition (the rows' matrices gathered, a batched
/// product): value and the gradients of x, the weight table and the bias table, with readouts
/// used by many rows, by one and by none, below and above the multi-threaded split.
#[test]
fn readout_rows_match_burns_operations_in_value_and_every_gradient() {
    let device = Device::flex().autodiff();
    let value = |i: usize, seed: usize| (((i * 31 + seed * 17) as f32) * 0.618).sin() * 2.0;
    let tensor = |m: usize, n: usize, seed: usize| {
        let v: Vec<f32> = (0..m * n).map(|i| value(i, seed)).collect();
        Tensor::<1>::from_floats(v.as_slice(), &device)
            .reshape([m, n])
            .require_grad()
    };
    let (k, m) = (13, 5);
    // the last: a weight table past the threaded split (600 x 65 values), rows 10.. unused
    for (rows, n) in [(11, 6), (11, 3000), (600, 3000)] {
        let run = |fused: bool| {
            let (x, w, b) = (tensor(n, k, 1), tensor(rows, k * m, 2), tensor(rows, m, 3));
            // row 10 never used; row 0 by many
            let index: Vec<i64> = (0..n).map(|r| ((r * 7 + r / 5) % 10) as i64).collect();
            let index = Tensor::<1, Int>::from_ints(index.as_slice(), &device);
            let y = if fused {
                assert!(fused_here(&x));
                diffusion_kernels::readout_rows(x.clone(), w.clone(), b.clone(), index)
            } else {
                let wr: Tensor<3> = w.clone().select(0, index.clone()).reshape([n, k, m]);
                let z: Tensor<3> = x.clone().unsqueeze_dim::<3>(1).matmul(wr);
                z.reshape([n, m]) + b.clone().select(0, index)
            };
            let weights = tensor(n, m, 4).detach();
            let grads = (y.clone() * weights).sum().backward();
            [
                y.detach(),
                x.grad(&grads).unwrap(),
                w.grad(&grads).unwrap(),
                b.grad(&grads).unwrap(),
            ]
        };
        let (got, want) = (run(true), run(false));
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.dims(), w.dims());
            let (diff, scale) = max_abs_diff(g, w);
            assert!(scale > 0.0, "n {n}: output {i} is all zero");
            assert!(
                diff <= 2e-5 * scale.max(1.0),
                "n {n}: output {i} differs by {diff} (scale {scale})"
            );
        }
        // the unused readout's gradients are zero
        let gw = got[2].to_data().try_to_vec::<f32>().unwrap();
        assert!(gw[10 * k * m..].iter().all(|&v| v == 0.0));
    }
}

/// `activate` against Burn's operations for every activation: value and gradient, below and
/// above the multi-threaded split, through saturated inputs.
#[test]
fn activate_matches_burns_operations_in_value_and_gradient() {
    let device = Device::flex().autodiff();
    for n in [3, 4000] {
        let values: Vec<f32> = (0..n * 9)
            .map(|i| ((i as f32) * 0.618).sin() * if i % 7 == 0 { 120.0 } else { 9.0 })
            .collect();
        for act in Activation::ALL {
            let run = |fused: bool| {
                let x = Tensor::<1>::from_floats(values.as_slice(), &device)
                    .reshape([n, 9])
                    .require_grad();
                let y = if fused {
                    diffusion_kernels::activate(x.clone(), act)
                } else {
                    act.apply(x.clone())
                };
                let weights = Tensor::<1>::from_floats(values.as_slice(), &device)
                    .reshape([n, 9])
                    .cos();
                let grads = (y.clone() * weights).sum().backward();
                [y.detach(), x.grad(&grads).unwrap()]
            };
            let (got, want) = (run(true), run(false));
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let (diff, scale) = max_abs_diff(g, w);
                assert!(
                    diff <= 2e-6 * scale.max(1.0),
                    "n {n} {act:?}: output {i} differs by {diff} (scale {scale})"
                );
            }
        }
    }
}

/// Gradients that reach the kernels as views of part of a buffer (a concatenation's backward
/// cuts each part's gradient out of the whole): two fused layers and two activations joined
/// row-wise, below and above the multi-threaded split, against Burn's operations.
#[test]
fn gradients_that_are_views_of_a_larger_buffer() {
    let device = Device::flex().autodiff();
    for n in [5, 2000] {
        let values = |seed: usize, len: usize| -> Vec<f32> {
            (0..len)
                .map(|i| ((i * 7 + seed * 13) as f32 * 0.37).sin() * 2.0)
                .collect()
        };
        let leaf = |seed: usize, shape: [usize; 2]| {
            Tensor::<1>::from_floats(values(seed, shape[0] * shape[1]).as_slice(), &device)
                .reshape(shape)
                .require_grad()
        };
        let run = |fused: bool| {
            let (x1, x2, w) = (leaf(1, [n, 6]), leaf(2, [n, 6]), leaf(3, [6, 37]));
            let layer = |x: Tensor<2>| {
                if fused {
                    linear_activation(x, w.clone(), None, Shift::None, Activation::Tanh)
                } else {
                    Activation::Tanh.apply(x.matmul(w.clone()))
                }
            };
            let act = |x: Tensor<2>| {
                if fused {
                    diffusion_kernels::activate(x, Activation::Sigmoid)
                } else {
                    Activation::Sigmoid.apply(x)
                }
            };
            let y = Tensor::cat(vec![layer(x1.clone()), layer(x2.clone())], 0);
            let y = Tensor::cat(vec![act(y.clone()), act(y)], 0);
            let weights = leaf(4, [4 * n, 37]).detach();
            let grads = (y * weights).sum().backward();
            [
                x1.grad(&grads).unwrap(),
                x2.grad(&grads).unwrap(),
                w.grad(&grads).unwrap(),
            ]
        };
        let (got, want) = (run(true), run(false));
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let (diff, scale) = max_abs_diff(g, w);
            // the weights' gradient sums 4n rows in f32, in another order than Burn's; the
            // baseline kernels (DIFFUSION_KERNELS_ISA=base) round without fused multiply-adds
            // and come within 2e-5 of it
            assert!(
                diff <= 3e-5 * scale.max(1.0),
                "n {n}: gradient {i} differs by {diff} (scale {scale})"
            );
        }
    }
}
