//! Two images' channels side by side (a U-Net's skip connection: `cat([h, skip], 1)`) as a Burn
//! backend extension for flex, with its backward pass (the gradient split back into the two
//! parts), the images in parallel. Burn's concatenation copies on one thread, and its backward
//! pass hands on strided views of the gradient that the next operations copy again, also on
//! one thread.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::{Flex, FlexTensor};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, TensorMetadata, backend_extension};
use burn::tensor::TensorData;
use rayon::prelude::*;

use crate::flex::{contiguous, record_op, register_gradients};

/// The concatenation's operation. Any backend can implement it; this crate does for [`Flex`]
/// and, with a backward pass, for [`Autodiff`] over any backend that does.
#[backend_extension(Autodiff, Flex)]
pub trait FusedConcat: Backend {
    /// `a` `[n, ca, h, w]` and `b` `[n, cb, h, w]`: `[n, ca + cb, h, w]`, each image's channels
    /// of `a` then of `b`.
    fn concat_channels_fused(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// [`FusedConcat`]'s backward pass on the inner backend.
pub trait ConcatBackward: FusedConcat {
    /// The parts' gradients from the output's `grad` (`[n, ca + cb, h, w]`): its first `ca`
    /// channels and the rest, each contiguous.
    fn concat_channels_backward(
        grad: FloatTensor<Self>,
        ca: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// Values per rayon task, at least (a few planes of a small image).
const TASK: usize = 16 * 1024;

impl FusedConcat for Flex {
    fn concat_channels_fused(a: FlexTensor, b: FlexTensor) -> FlexTensor {
        let (a, b) = (contiguous(a), contiguous(b));
        let [n, ca, h, w] = a.shape().dims::<4>();
        let [nb, cb, hb, wb] = b.shape().dims::<4>();
        assert!(
            (nb, hb, wb) == (n, h, w),
            "images of the same number and size side by side"
        );
        let (xa, xb) = (values(&a), values(&b));
        let (la, lb) = (ca * h * w, cb * h * w);
        let total = n * (la + lb);
        let mut out: Vec<f32> = Vec::with_capacity(total);
        if total > 0 {
            out.spare_capacity_mut()[..total]
                .par_chunks_mut(la + lb)
                .enumerate()
                .with_min_len(TASK.div_ceil(la + lb))
                .for_each(|(i, o)| {
                    let (oa, ob) = o.split_at_mut(la);
                    oa.write_copy_of_slice(&xa[i * la..][..la]);
                    ob.write_copy_of_slice(&xb[i * lb..][..lb]);
                });
        }
        // SAFETY: every image's channels were written above
        unsafe { out.set_len(total) };
        FlexTensor::from_data(TensorData::new(out, [n, ca + cb, h, w]))
    }
}

impl ConcatBackward for Flex {
    fn concat_channels_backward(grad: FlexTensor, ca: usize) -> (FlexTensor, FlexTensor) {
        let grad = contiguous(grad);
        let [n, c, h, w] = grad.shape().dims::<4>();
        assert!(ca <= c, "the first part's channels within the whole");
        let cb = c - ca;
        let (la, lb) = (ca * h * w, cb * h * w);
        let gs = values(&grad);
        let (mut ga, mut gb): (Vec<f32>, Vec<f32>) =
            (Vec::with_capacity(n * la), Vec::with_capacity(n * lb));
        if n * (la + lb) > 0 {
            let (sa, sb) = (
                &mut ga.spare_capacity_mut()[..n * la],
                &mut gb.spare_capacity_mut()[..n * lb],
            );
            sa.par_chunks_mut(la.max(1))
                .zip(sb.par_chunks_mut(lb.max(1)))
                .enumerate()
                .with_min_len(TASK.div_ceil(la + lb))
                .for_each(|(i, (da, db))| {
                    let g = &gs[i * (la + lb)..][..la + lb];
                    da.write_copy_of_slice(&g[..la]);
                    db.write_copy_of_slice(&g[la..]);
                });
        }
        // SAFETY: every image's parts were written above
        unsafe {
            ga.set_len(n * la);
            gb.set_len(n * lb);
        }
        (
            FlexTensor::from_data(TensorData::new(ga, [n, ca, h, w])),
            FlexTensor::from_data(TensorData::new(gb, [n, cb, h, w])),
        )
    }
}

fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32")
}

/// The concatenation's backward pass: two parents; the state is the first one's channels.
#[derive(Debug)]
struct ConcatBackwardOp;

impl<B: Backend + ConcatBackward> Backward<B, 2> for ConcatBackwardOp {
    type State = usize;

    fn backward(self, ops: Ops<usize, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        register_gradients::<B, _, 2>(ops, grads, |grad, ca, _| {
            let (ga, gb) = B::concat_channels_backward(grad, ca);
            [Some(ga), Some(gb)]
        });
    }
}

impl<B: Backend + ConcatBackward, C: CheckpointStrategy> FusedConcat for Autodiff<B, C> {
    fn concat_channels_fused(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        record_op::<B, C, _, 2>(
            ConcatBackwardOp,
            [a, b],
            |[a, _]| a.shape()[1],
            |[a, b]| B::concat_channels_fused(a, b),
        )
    }
}
