//! Nearest-neighbour upsampling by 2 (each value over a 2x2 block) as a Burn backend extension
//! for flex, with its backward pass (each 2x2 block of the gradient summed), the images'
//! planes in parallel. Burn's composition (a reshape, an expand and a reshape back) copies
//! through a strided iteration on one thread, and its backward reduces twice.

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

/// The upsampling's operation. Any backend can implement it; this crate does for [`Flex`]
/// and, with a backward pass, for [`Autodiff`] over any backend that does.
#[backend_extension(Autodiff, Flex)]
pub trait FusedUpsample: Backend {
    /// `x` `[n, c, h, w]`: `[n, c, 2h, 2w]`, each value repeated over a 2x2 block.
    fn upsample2_fused(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// [`FusedUpsample`]'s backward pass on the inner backend.
pub trait UpsampleBackward: FusedUpsample {
    /// The input's gradient from the output's `grad` (`[n, c, 2h, 2w]`): each 2x2 block
    /// summed, `[n, c, h, w]`.
    fn upsample2_backward(grad: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// Planes per rayon task, at least.
const PLANES: usize = 8;

impl FusedUpsample for Flex {
    fn upsample2_fused(x: FlexTensor) -> FlexTensor {
        let x = contiguous(x);
        let [n, c, h, w] = x.shape().dims::<4>();
        let xs = x.as_slice::<f32>().expect("contiguous f32");
        let total = 4 * xs.len();
        let mut out: Vec<f32> = Vec::with_capacity(total);
        if !xs.is_empty() {
            out.spare_capacity_mut()[..total]
                .par_chunks_mut(4 * h * w)
                .zip(xs.par_chunks(h * w))
                .with_min_len(PLANES)
                .for_each(|(o, p)| {
                    for (rows, line) in o.chunks_exact_mut(4 * w).zip(p.chunks_exact(w)) {
                        let (top, bottom) = rows.split_at_mut(2 * w);
                        for (pair, &v) in top.chunks_exact_mut(2).zip(line) {
                            pair[0].write(v);
                            pair[1].write(v);
                        }
                        bottom.copy_from_slice(top);
                    }
                });
        }
        // SAFETY: every plane's rows were written above (none when the input is empty)
        unsafe { out.set_len(total) };
        FlexTensor::from_data(TensorData::new(out, [n, c, 2 * h, 2 * w]))
    }
}

impl UpsampleBackward for Flex {
    fn upsample2_backward(grad: FlexTensor) -> FlexTensor {
        let grad = contiguous(grad);
        let [n, c, h2, w2] = grad.shape().dims::<4>();
        let (h, w) = (h2 / 2, w2 / 2);
        let gs = grad.as_slice::<f32>().expect("contiguous f32");
        let total = n * c * h * w;
        let mut out: Vec<f32> = Vec::with_capacity(total);
        if total > 0 {
            out.spare_capacity_mut()[..total]
                .par_chunks_mut(h * w)
                .zip(gs.par_chunks(h2 * w2))
                .with_min_len(PLANES)
                .for_each(|(o, p)| {
                    for (line, rows) in o.chunks_exact_mut(w).zip(p.chunks_exact(2 * w2)) {
                        let (top, bottom) = rows.split_at(w2);
                        let blocks = top.chunks_exact(2).zip(bottom.chunks_exact(2));
                        for (v, (a, b)) in line.iter_mut().zip(blocks) {
                            v.write((a[0] + a[1]) + (b[0] + b[1]));
                        }
                    }
                });
        }
        // SAFETY: every plane's values were written above
        unsafe { out.set_len(total) };
        FlexTensor::from_data(TensorData::new(out, [n, c, h, w]))
    }
}

/// The upsampling's backward pass: one parent.
#[derive(Debug)]
struct UpsampleBackwardOp;

impl<B: Backend + UpsampleBackward> Backward<B, 1> for UpsampleBackwardOp {
    type State = ();

    fn backward(self, ops: Ops<(), 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        register_gradients::<B, _, 1>(ops, grads, |grad, (), _| {
            [Some(B::upsample2_backward(grad))]
        });
    }
}

impl<B: Backend + UpsampleBackward, C: CheckpointStrategy> FusedUpsample for Autodiff<B, C> {
    fn upsample2_fused(x: FloatTensor<Self>) -> FloatTensor<Self> {
        record_op::<B, C, _, 1>(UpsampleBackwardOp, [x], |_| (), |[x]| B::upsample2_fused(x))
    }
}
