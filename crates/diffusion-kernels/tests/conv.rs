//! The fused convolution against Burn's own `conv2d` on flex: the output and the gradients of
//! the input, the weights and the bias, for 3x3 kernels of stride 1 and 2, a 1x1 kernel, odd
//! and non-square images, one image and a batch split across threads.

use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor};
use diffusion_kernels::{conv2d, fused_here};

/// The same values on every call (splitmix64, uniform on [-1, 1]).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (0..len)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn tensor<const D: usize>(shape: [usize; D], seed: u64, device: &Device) -> Tensor<D> {
    let len = shape.iter().product();
    Tensor::<1>::from_floats(values(len, seed).as_slice(), device)
        .reshape(shape)
        .require_grad()
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
        [17, 3, 6, 6, 4, 3, 1, 0],
        [2, 2, 4, 4, 3, 3, 1, 2],
        [3, 2, 9, 8, 4, 3, 2, 0],
        [2, 3, 5, 6, 2, 1, 2, 0],
    ];
    for case in cases {
        let (ours, burns) = (run(true, case), run(false, case));
        for (name, (a, b)) in ["output", "x", "weight", "bias"]
            .iter()
            .zip(ours.iter().zip(&burns))
        {
            assert_eq!(a.len(), b.len(), "{case:?} {name}");
            let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            let diff = a
                .iter()
                .zip(b)
                .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                diff <= 2e-5 * scale,
                "{case:?} {name}: {diff} at scale {scale}"
            );
        }
    }
}
