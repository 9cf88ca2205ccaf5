//! `FusedAdam` against Burn's `Adam`: the same parameters and moments to the bit over several
//! steps (the first step, which creates the moments, included), below and above the size at
//! which the step splits across threads, directly and through a module optimizer with
//! gradient clipping; and their records load into each other.

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::{Adam, AdamConfig, AdamState, GradientsParams, Optimizer};
use burn::tensor::{Device, Distribution, Tensor};
use diffusion_kernels::FusedAdam;

fn bits<const D: usize>(t: &Tensor<D>) -> Vec<u32> {
    t.to_data()
        .try_to_vec::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// Bit patterns, with -0 read as +0 (the fused first step adds its first moment to a zero).
fn values<const D: usize>(t: &Tensor<D>) -> Vec<u32> {
    t.to_data()
        .try_to_vec::<f32>()
        .unwrap()
        .iter()
        .map(|&v| if v == 0.0 { 0 } else { v.to_bits() })
        .collect()
}

fn burn_adam() -> Adam {
    AdamConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.99)
        .with_epsilon(1e-8)
        .build()
}

fn steps<const D: usize>(shape: [usize; D]) {
    let device = Device::flex();
    let fused = FusedAdam::new(0.9, 0.99, 1e-8);
    let burn = burn_adam();
    let start = Tensor::<D>::random(shape, Distribution::Normal(0.0, 1.0), &device);
    let (mut p_fused, mut p_burn) = (start.clone(), start);
    let (mut s_fused, mut s_burn): (Option<AdamState<D>>, Option<AdamState<D>>) = (None, None);
    for step in 0..5 {
        // gradients of every magnitude, zeros among them
        let grad = Tensor::<D>::random(shape, Distribution::Normal(0.0, 1.0), &device)
            .mul_scalar(10f32.powi(step - 2))
            .mask_fill(
                Tensor::<D>::random(shape, Distribution::Uniform(0.0, 1.0), &device)
                    .lower_elem(0.1),
                0.0,
            );
        let lr = 1e-3 * (step + 1) as f64;
        (p_fused, s_fused) = fused.step(lr, p_fused, grad.clone(), s_fused);
        (p_burn, s_burn) = burn.step(lr, p_burn, grad, s_burn);
        assert_eq!(
            bits(&p_fused),
            bits(&p_burn),
            "{shape:?} parameters at step {step}"
        );
        let (f, b) = (
            &s_fused.as_ref().unwrap().momentum,
            &s_burn.as_ref().unwrap().momentum,
        );
        assert_eq!(f.time, b.time);
        assert_eq!(
            values(&f.moment_1),
            values(&b.moment_1),
            "{shape:?} m at {step}"
        );
        assert_eq!(
            values(&f.moment_2),
            values(&b.moment_2),
            "{shape:?} v at {step}"
        );
    }
}

#[test]
fn the_fused_step_is_burns_adam_to_the_bit() {
    steps([7]);
    steps([33, 5]);
    // past the threaded split (32k values), a chunk boundary inside
    steps([2001, 50]);
}

/// A parameter, gradient and moments that are views into larger tensors (an offset, a
/// transpose): the step reads and writes the views' values only.
#[test]
fn views_take_the_same_step() {
    let device = Device::flex();
    let fused = FusedAdam::new(0.9, 0.99, 1e-8);
    let burn = burn_adam();
    let big = Tensor::<2>::random([40, 30], Distribution::Normal(0.0, 1.0), &device);
    let before = bits(&big);
    let view = |t: &Tensor<2>| t.clone().slice([5..25, 3..13]).transpose();
    let (param, grad) = (view(&big), view(&(big.clone() * 0.5 - 0.1)));
    let state = burn
        .step(1e-2, param.clone(), grad.clone(), None)
        .1
        .map(|mut s| {
            s.momentum.moment_1 = view(&(big.clone() * 0.01)) + s.momentum.moment_1 * 0.0;
            s
        });
    let (p_fused, s_fused) = fused.step(1e-2, param.clone(), grad.clone(), state.clone());
    let (p_burn, s_burn) = burn.step(1e-2, param, grad, state);
    assert_eq!(bits(&p_fused), bits(&p_burn));
    assert_eq!(
        values(&s_fused.unwrap().momentum.moment_1),
        values(&s_burn.unwrap().momentum.moment_1)
    );
    // the tensor the views came from is unchanged (its storage copied before being written)
    assert_eq!(bits(&big), before);

    // contiguous views at an offset, read and written in place of their storage's copy
    let line = Tensor::<1>::random([100], Distribution::Normal(0.0, 1.0), &device);
    let before = bits(&line);
    let (param, grad) = (line.clone().slice(10..60), line.clone().slice(40..90));
    let (p_fused, _) = fused.step(1e-2, param.clone(), grad.clone(), None);
    let (p_burn, _) = burn.step(1e-2, param, grad, None);
    assert_eq!(bits(&p_fused), bits(&p_burn));
    assert_eq!(bits(&line), before);
}

#[test]
fn through_a_module_optimizer_with_clipping_and_a_record_round_trip() {
    let device = Device::flex().autodiff();
    let model: Linear = LinearConfig::new(6, 300).init(&device);
    let x = Tensor::<2>::random([40, 6], Distribution::Normal(0.0, 1.0), &device);
    let clip = || GradientClippingConfig::Norm(0.5).init();
    let mut fused = FusedAdam::new(0.9, 0.999, 1e-5)
        .init()
        .with_grad_clipping(clip());
    let mut burn = AdamConfig::new().init().with_grad_clipping(clip());
    let (mut a, mut b) = (model.clone(), model);
    for step in 0..4 {
        let grads_a =
            GradientsParams::from_grads(a.forward(x.clone()).powi_scalar(2).sum().backward(), &a);
        let grads_b =
            GradientsParams::from_grads(b.forward(x.clone()).powi_scalar(2).sum().backward(), &b);
        a = fused.step(1e-2, a, grads_a);
        b = burn.step(1e-2, b, grads_b);
        let (wa, wb): (&Param<Tensor<2>>, &Param<Tensor<2>>) = (&a.weight, &b.weight);
        assert_eq!(
            bits(&wa.val()),
            bits(&wb.val()),
            "weights after step {step}"
        );
        if step == 1 {
            // each optimizer continues from the other's record
            let (ra, rb) = (fused.to_record(), burn.to_record());
            fused = FusedAdam::new(0.9, 0.999, 1e-5)
                .init()
                .with_grad_clipping(clip())
                .load_record(rb);
            burn = AdamConfig::new()
                .init()
                .with_grad_clipping(clip())
                .load_record(ra);
        }
    }
    let _ = a.valid().num_params();
}
