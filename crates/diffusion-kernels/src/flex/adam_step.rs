//! One step of Adam as one operation ([`FusedAdamStep`]): on flex one pass over the parameter,
//! its gradient and the two moments, in place where they are not shared; on autodiff the inner
//! backend's, untracked.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::flex::{Flex, FlexTensor};
use burn::backend::tensor::FloatTensor;
use burn::backend::{AutodiffBackend, Backend, TensorMetadata, backend_extension};
use burn::tensor::DType;
use rayon::prelude::*;

use super::{PARALLEL_MIN, TASK, contiguous};
use crate::math::{self, AdamScalars, Isa};

/// One step of Adam as one operation (see [`crate::FusedAdam`]): on flex a single pass over the
/// parameter, its gradient and the two moments, updated in place where they are not shared.
#[backend_extension(Autodiff, Flex)]
pub trait FusedAdamStep: Backend {
    /// `(param, moment_1, moment_2)` after one Adam step with gradient `grad` and the step's
    /// scalars; the four tensors have one shape.
    fn adam_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        scalars: AdamScalars,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// The values of a contiguous f32 flex tensor, to write (copied first when shared).
fn values_mut(t: &mut FlexTensor) -> &mut [f32] {
    let (start, end) = t
        .layout()
        .contiguous_offsets()
        .expect("a contiguous tensor");
    &mut t.storage_mut::<f32>()[start..end]
}

impl FusedAdamStep for Flex {
    fn adam_step(
        param: FlexTensor,
        grad: FlexTensor,
        moment_1: FlexTensor,
        moment_2: FlexTensor,
        scalars: AdamScalars,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let shape = param.shape();
        for t in [&param, &grad, &moment_1, &moment_2] {
            assert_eq!(t.dtype(), DType::F32, "the fused Adam step is f32 only");
            assert_eq!(
                t.shape(),
                shape,
                "parameter, gradient and moments differ in shape"
            );
        }
        let (mut p, grad) = (contiguous(param), contiguous(grad));
        let (mut m, mut v) = (contiguous(moment_1), contiguous(moment_2));
        let g = grad.as_slice::<f32>().expect("contiguous");
        let isa = Isa::detect();
        let (ps, ms, vs) = (values_mut(&mut p), values_mut(&mut m), values_mut(&mut v));
        if g.len() < PARALLEL_MIN {
            math::adam_kernel(isa, ps, g, ms, vs, scalars);
        } else {
            ps.par_chunks_mut(TASK)
                .zip(g.par_chunks(TASK))
                .zip(ms.par_chunks_mut(TASK))
                .zip(vs.par_chunks_mut(TASK))
                .for_each(|(((p, g), m), v)| math::adam_kernel(isa, p, g, m, v, scalars));
        }
        (p, m, v)
    }
}

impl<B: Backend + FusedAdamStep, C: CheckpointStrategy> FusedAdamStep for Autodiff<B, C> {
    fn adam_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        scalars: AdamScalars,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        // an optimizer's step, outside any graph: the inner backend's values, not tracked
        let (p, m, v) = B::adam_step(
            param.into_primitive(),
            grad.into_primitive(),
            moment_1.into_primitive(),
            moment_2.into_primitive(),
            scalars,
        );
        (
            Self::from_inner(p),
            Self::from_inner(m),
            Self::from_inner(v),
        )
    }
}
