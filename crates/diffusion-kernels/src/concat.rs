//! Two tensors side by side along the channels (a U-Net's skip connection) as a Burn backend
//! extension for flex, with its backward pass (the gradient cut back into its two parts), one
//! copy per image each way, the images in parallel. Burn's concatenation copies on one thread,
//! and its backward hands each part a strided view of the gradient, which each consumer then
//! copies on one thread again.

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
    /// `a` `[n, c1, ...]` and `b` `[n, c2, ...]` (the same sizes after the channels, at least
    /// one value per image and part): `[n, c1 + c2, ...]`, each image's `a` channels first.
    fn concat_channels_fused(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// [`FusedConcat`]'s backward pass on the inner backend.
pub trait ConcatBackward: FusedConcat {
    /// The two parts' gradients from the output's `grad`, whose first `c1` channels are the
    /// first part's.
    fn concat_channels_backward(
        grad: FloatTensor<Self>,
        c1: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// Images per rayon task, at least.
const IMAGES: usize = 4;

/// Each image of `out` (chunks of `la + lb`) from its `la` values of `a` and `lb` of `b`.
fn join(out: &mut [std::mem::MaybeUninit<f32>], a: &[f32], b: &[f32], la: usize, lb: usize) {
    out.par_chunks_mut(la + lb)
        .zip(a.par_chunks(la).zip(b.par_chunks(lb)))
        .with_min_len(IMAGES)
        .for_each(|(o, (a, b))| {
            let (oa, ob) = o.split_at_mut(la);
            for (d, &s) in oa.iter_mut().zip(a).chain(ob.iter_mut().zip(b)) {
                d.write(s);
            }
        });
}

impl FusedConcat for Flex {
    fn concat_channels_fused(a: FlexTensor, b: FlexTensor) -> FlexTensor {
        let (a, b) = (contiguous(a), contiguous(b));
        let (sa, sb) = (a.shape(), b.shape());
        let n = sa[0];
        let (la, lb) = (sa.num_elements() / n.max(1), sb.num_elements() / n.max(1));
        assert!(
            la > 0 && lb > 0 && sb[0] == n && sa.len() == sb.len(),
            "two parts of the same images, each with values"
        );
        let (xa, xb) = (
            a.as_slice::<f32>().expect("contiguous f32"),
            b.as_slice::<f32>().expect("contiguous f32"),
        );
        let total = xa.len() + xb.len();
        let mut out: Vec<f32> = Vec::with_capacity(total);
        join(&mut out.spare_capacity_mut()[..total], xa, xb, la, lb);
        // SAFETY: `join` wrote every image's values of both parts
        unsafe { out.set_len(total) };
        let mut shape = sa.clone();
        shape[1] += sb[1];
        FlexTensor::from_data(TensorData::new(out, shape))
    }
}

impl ConcatBackward for Flex {
    fn concat_channels_backward(grad: FlexTensor, c1: usize) -> (FlexTensor, FlexTensor) {
        let grad = contiguous(grad);
        let shape = grad.shape();
        let (n, c) = (shape[0], shape[1]);
        let spatial = shape.num_elements() / (n * c).max(1);
        let (la, lb) = (c1 * spatial, (c - c1) * spatial);
        let gs = grad.as_slice::<f32>().expect("contiguous f32");
        let (mut ga, mut gb): (Vec<f32>, Vec<f32>) =
            (Vec::with_capacity(n * la), Vec::with_capacity(n * lb));
        ga.spare_capacity_mut()[..n * la]
            .par_chunks_mut(la)
            .zip(gb.spare_capacity_mut()[..n * lb].par_chunks_mut(lb))
            .zip(gs.par_chunks(la + lb))
            .with_min_len(IMAGES)
            .for_each(|((da, db), g)| {
                let (a, b) = g.split_at(la);
                for (d, &s) in da.iter_mut().zip(a).chain(db.iter_mut().zip(b)) {
                    d.write(s);
                }
            });
        // SAFETY: every image's values of both parts were written above
        unsafe {
            ga.set_len(n * la);
            gb.set_len(n * lb);
        }
        let (mut sa, mut sb) = (shape.clone(), shape);
        sa[1] = c1;
        sb[1] = c - c1;
        (
            FlexTensor::from_data(TensorData::new(ga, sa)),
            FlexTensor::from_data(TensorData::new(gb, sb)),
        )
    }
}

/// The concatenation's backward pass: two parents; the state is the first part's channels.
#[derive(Debug)]
struct ConcatBackwardOp;

impl<B: Backend + ConcatBackward> Backward<B, 2> for ConcatBackwardOp {
    type State = usize;

    fn backward(self, ops: Ops<usize, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        register_gradients::<B, _, 2>(ops, grads, |grad, c1, _| {
            let (ga, gb) = B::concat_channels_backward(grad, c1);
            [Some(ga), Some(gb)]
        });
    }
}

impl<B: Backend + ConcatBackward, C: CheckpointStrategy> FusedConcat for Autodiff<B, C> {
    fn concat_channels_fused(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        let c1 = a.shape()[1];
        record_op::<B, C, _, 2>(
            ConcatBackwardOp,
            [a, b],
            |_| c1,
            |[a, b]| B::concat_channels_fused(a, b),
        )
    }
}
