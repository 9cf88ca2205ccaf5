//! The fused attention on flex against an f64 reference and against the crate's composition of
//! Burn's own operations (`attention_composed`, what runs off flex): the output and the
//! gradient of qkv, for one position and one channel, position counts off the vector width,
//! many entries split across threads, and logits large enough that an unshifted softmax would
//! overflow.

use burn::tensor::{Device, Tensor};
use diffusion_kernels::{attention, attention_composed, fused_here};

mod common;

/// The same values on every call, uniform on [-1, 1].
fn values(len: usize, seed: u64) -> Vec<f32> {
    common::uniform(len, seed, 1.0)
}

/// qkv's values for a case.
fn inputs([b, d, p]: [usize; 3], gain: f32) -> Vec<f32> {
    values(b * 3 * d * p, 1).iter().map(|v| v * gain).collect()
}

/// The output and qkv's gradient under the loss sum(y r) in f64, from the definitions.
fn exact([b, d, p]: [usize; 3], xs: &[f32], r: &[f32]) -> [Vec<f64>; 2] {
    let (mut y, mut dx) = (vec![0.0f64; b * d * p], vec![0.0f64; xs.len()]);
    let scale = 1.0 / (d as f64).sqrt();
    for e in 0..b {
        let x = |part: usize, c: usize, i: usize| xs[((e * 3 + part) * d + c) * p + i] as f64;
        let g = |c: usize, i: usize| r[(e * d + c) * p + i] as f64;
        // w[i][j]: query i's weight of key j
        let mut w = vec![vec![0.0f64; p]; p];
        for (i, row) in w.iter_mut().enumerate() {
            for (j, l) in row.iter_mut().enumerate() {
                *l = (0..d).map(|c| x(0, c, i) * x(1, c, j)).sum::<f64>() * scale;
            }
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = row.iter().map(|l| (l - m).exp()).sum();
            row.iter_mut().for_each(|l| *l = (*l - m).exp() / total);
        }
        for c in 0..d {
            for i in 0..p {
                y[(e * d + c) * p + i] = (0..p).map(|j| w[i][j] * x(2, c, j)).sum();
            }
        }
        let at = |part: usize, c: usize, i: usize| ((e * 3 + part) * d + c) * p + i;
        for i in 0..p {
            // dw[j] = sum_c g[c, i] v[c, j]; through the softmax; then the logits' operands
            let dw: Vec<f64> = (0..p)
                .map(|j| (0..d).map(|c| g(c, i) * x(2, c, j)).sum())
                .collect();
            let mean: f64 = (0..p).map(|j| w[i][j] * dw[j]).sum();
            for j in 0..p {
                let dl = w[i][j] * (dw[j] - mean) * scale;
                for c in 0..d {
                    dx[at(0, c, i)] += dl * x(1, c, j);
                    dx[at(1, c, j)] += dl * x(0, c, i);
                    dx[at(2, c, j)] += g(c, i) * w[i][j];
                }
            }
        }
    }
    [y, dx]
}

/// The output and qkv's gradient under the loss sum(y r).
fn run(fused: bool, case: [usize; 3], gain: f32) -> [Vec<f32>; 2] {
    let [b, d, p] = case;
    let device = Device::flex().autodiff();
    let xs = inputs(case, gain);
    let qkv = Tensor::<1>::from_floats(xs.as_slice(), &device)
        .reshape([b, 3 * d, p])
        .require_grad();
    let y = if fused {
        assert!(fused_here(&qkv));
        attention(qkv.clone())
    } else {
        attention_composed(qkv.clone())
    };
    let r = Tensor::<1>::from_floats(values(b * d * p, 2).as_slice(), &device).reshape([b, d, p]);
    let grads = (y.clone() * r).sum().backward();
    let host = |t: Tensor<3>| t.into_data().try_to_vec::<f32>().unwrap();
    [host(y), host(qkv.grad(&grads).unwrap())]
}

#[test]
fn fused_attention_matches_burns_values_and_gradient() {
    for (case, gain) in [
        ([1, 1, 1], 1.0),
        ([2, 1, 5], 1.0),
        ([3, 4, 49], 1.0),
        ([2, 32, 49], 1.0),
        ([5, 3, 17], 1.0),
        ([4, 8, 100], 1.0),
        ([64, 2, 16], 1.0),
        // logits in the hundreds: the softmax must shift by each query's largest
        ([3, 4, 20], 40.0),
    ] {
        let (ours, burns) = (run(true, case, gain), run(false, case, gain));
        let [b, d, p] = case;
        let want = exact(case, &inputs(case, gain), &values(b * d * p, 2));
        let names = ["output", "qkv gradient"];
        for (name, ((a, b), x)) in names.iter().zip(ours.iter().zip(&burns).zip(&want)) {
            assert_eq!(a.len(), x.len(), "{case:?} {name}");
            let scale = x.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            let error = |v: &[f32]| {
                v.iter()
                    .zip(x)
                    .fold(0.0f64, |m, (&a, &b)| m.max((a as f64 - b).abs()))
            };
            // within f32 rounding of the exact values, and never much farther than Burn's
            let (ours, burns) = (error(a), error(b));
            assert!(
                ours <= (2.0 * burns).max(2e-6 * scale),
                "{case:?} gain {gain} {name}: off by {ours} (Burn's {burns}) at scale {scale}"
            );
        }
    }
}

/// A NaN in an entry's queries makes that entry's output NaN and leaves the other entries as
/// they were.
#[test]
fn a_nan_stays_in_its_entry() {
    let device = Device::flex();
    let (b, d, p) = (2, 2, 6);
    let mut xs = values(b * 3 * d * p, 3);
    let clean = attention(Tensor::<1>::from_floats(xs.as_slice(), &device).reshape([b, 3 * d, p]));
    xs[0] = f32::NAN;
    let dirty = attention(Tensor::<1>::from_floats(xs.as_slice(), &device).reshape([b, 3 * d, p]));
    let (clean, dirty) = (
        clean.into_data().try_to_vec::<f32>().unwrap(),
        dirty.into_data().try_to_vec::<f32>().unwrap(),
    );
    // query 0 of entry 0 is NaN: its column of outputs is NaN
    assert!((0..d).all(|c| dirty[c * p].is_nan()), "{dirty:?}");
    assert_eq!(&clean[d * p..], &dirty[d * p..], "entry 1 untouched");
}
