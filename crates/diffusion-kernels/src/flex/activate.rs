//! An activation alone, element by element ([`FusedLinear::activate`]), and its derivative
//! from the output ([`FusedLinear::activation_backward`], the fused layer's too): on flex one
//! vectorised pass, in place where the tensor is not shared; on autodiff with its backward pass.

use burn::backend::Backend;
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::tensor::DType;
use rayon::prelude::*;

use super::linear::FusedLinear;
use super::{PARALLEL_MIN, TASK, contiguous};
use crate::Activation;
use crate::math::{self, Isa};

/// Flex's [`FusedLinear::activation_backward`]: `grad act'` from the output, in the gradient's
/// buffer.
pub(super) fn activation_backward_flex(
    grad: FlexTensor,
    output: FlexTensor,
    activation: Activation,
) -> FlexTensor {
    if activation == Activation::Identity {
        return grad;
    }
    let mut grad = contiguous(grad);
    let output = contiguous(output);
    let ys = output.as_slice::<f32>().expect("contiguous");
    let isa = Isa::detect();
    // copy-on-write: in place when the gradient is not shared
    let gs = grad.storage_mut::<f32>();
    assert_eq!(gs.len(), ys.len(), "gradient and output differ in size");
    if gs.len() < PARALLEL_MIN {
        math::backward_kernel(isa, ys, gs, activation);
    } else {
        gs.par_chunks_mut(TASK)
            .zip(ys.par_chunks(TASK))
            .for_each(|(g, y)| math::backward_kernel(isa, y, g, activation));
    }
    grad
}

/// Flex's [`FusedLinear::activate`]: `act(x)` in `x`'s buffer.
pub(super) fn activate_flex(x: FlexTensor, activation: Activation) -> FlexTensor {
    assert_eq!(x.dtype(), DType::F32, "the fused flex kernels are f32 only");
    let mut x = contiguous(x);
    let isa = Isa::detect();
    // copy-on-write: in place when the input is not shared
    let xs = x.storage_mut::<f32>();
    if xs.len() < PARALLEL_MIN {
        math::activate_kernel(isa, xs, activation);
    } else {
        xs.par_chunks_mut(TASK)
            .for_each(|c| math::activate_kernel(isa, c, activation));
    }
    x
}

/// An element-wise activation's backward pass, from its output.
#[derive(Debug)]
struct ActivateBackward;

impl<B: Backend + FusedLinear> Backward<B, 1> for ActivateBackward {
    type State = (FloatTensor<B>, Activation);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node] = ops.parents;
        let (output, activation) = ops.state;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = node {
            grads.register::<B>(node.id, B::activation_backward(grad, output, activation));
        }
    }
}

/// Autodiff's [`FusedLinear::activate`]: the inner backend's, its output kept for the backward
/// pass when `x` is tracked.
pub(super) fn activate_autodiff<B: Backend + FusedLinear, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    activation: Activation,
) -> FloatTensor<Autodiff<B, C>> {
    match ActivateBackward
        .prepare::<C>([x.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let output = B::activate(x.into_primitive(), activation);
            prep.finish((output.clone(), activation), output)
        }
        OpsKind::UnTracked(prep) => prep.finish(B::activate(x.into_primitive(), activation)),
    }
}
