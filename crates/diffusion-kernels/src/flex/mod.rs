//! The fused layer as a Burn backend extension for flex, with its backward pass for autodiff.
//!
//! Forward: the product (gemm straight into the output, or inside the element-wise pass for an
//! input of a few columns), then one pass over the output (bias, shift or table row, and the
//! activation; rows split across rayon's pool). Backward: one pass for `g act'(y)` from the
//! saved output `y` (in the gradient's buffer when it is not shared), then the two products,
//! the bias's column sums and the shift's (or the table rows' scatter). Burn's own composition
//! takes five element-wise passes forward and as many backward, each writing a tensor that the
//! graph keeps.
//!
//! One file per extension: `linear` (the layer's traits, its forward pass and its autodiff),
//! `linear_backward` (flex's backward pass of the layer), `activate` (the activation alone),
//! `readout` (the per-row readout), `product` (the matrix product), `adam_step` (Adam's step)
//! and `gaussian_kl` (the diagonal Gaussian KL). This file holds what they share: the sizes at
//! which work is split, gemm's call, the blocks of rows, the row indices, and the autodiff
//! plumbing of an operation whose backward pass forms every parent's gradient at once (which
//! the convolution and the group norm use too).

use burn::backend::Backend;
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::tensor::{DType, TensorData};
use rayon::prelude::*;

use crate::math;

mod activate;
mod adam_step;
mod gaussian_kl;
mod linear;
mod linear_backward;
mod product;
mod readout;

pub use adam_step::FusedAdamStep;
pub use gaussian_kl::{FusedGaussianKl, GaussianKlBackward};
pub use linear::{FusedLinear, FusedLinearBackward};

/// Elements per rayon task, and the size below which one thread does everything.
const TASK: usize = 8 * 1024;
const PARALLEL_MIN: usize = 32 * 1024;

/// `dst = lhs rhs` (or `dst += lhs rhs` with `accumulate`): `dst` `[m, n]` row-major with rows
/// `dst_rs` apart, `lhs` `[m, k]` and `rhs` `[k, n]` as (pointer to element (0, 0), column
/// stride, row stride).
///
/// # Safety
/// Every element reached through the pointers and strides lies in its buffer; without
/// `accumulate`, `dst` may be uninitialised (gemm writes every element when k > 0).
unsafe fn gemm_into(
    [m, n, k]: [usize; 3],
    dst: *mut f32,
    dst_rs: isize,
    lhs: (*const f32, isize, isize),
    rhs: (*const f32, isize, isize),
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    // SAFETY: the caller's
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs,
            accumulate,
            lhs.0,
            lhs.1,
            lhs.2,
            rhs.0,
            rhs.1,
            rhs.2,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Rows per task of a pass over `n` rows `h` wide that runs a product and an element-wise
/// pass on each block: a few blocks per thread, each small enough to stay in L2 between the two.
fn block_rows(n: usize, h: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    n.div_ceil(2 * threads)
        .min((64 * 1024 / h.max(1)).max(1))
        .max(1)
}

/// `t` as the whole of its own buffer, in one contiguous run from offset 0: a copy when `t` is
/// a strided view or a view of part of a buffer (a gradient that a concatenation's backward
/// cut out of a larger one), since the kernels read and write `storage()` whole.
pub(crate) fn contiguous(t: FlexTensor) -> FlexTensor {
    t.to_contiguous()
}

/// Rows per rayon task for rows `h` wide.
fn rows_per_task(h: usize) -> usize {
    (TASK / h.max(1)).max(1)
}

/// The indices of a 1-D flex int tensor, each checked below `rows`.
fn indices(index: &FlexTensor, rows: usize) -> Vec<usize> {
    let index = contiguous(index.clone());
    let checked = |i: i64| {
        assert!(
            i >= 0 && (i as usize) < rows,
            "row index {i} outside 0..{rows}"
        );
        i as usize
    };
    match index.dtype() {
        DType::I64 => index
            .as_slice::<i64>()
            .expect("contiguous")
            .iter()
            .map(|&i| checked(i))
            .collect(),
        DType::I32 => index
            .as_slice::<i32>()
            .expect("contiguous")
            .iter()
            .map(|&i| checked(i as i64))
            .collect(),
        other => panic!("row indices must be i64 or i32, not {other:?}"),
    }
}

/// The element-wise sum of per-task partial results (`len` values each), or zeros if no task
/// ran.
fn sum_partials(partials: impl ParallelIterator<Item = Vec<f32>>, len: usize) -> Vec<f32> {
    partials
        .reduce_with(|mut a, b| {
            a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
            a
        })
        .unwrap_or_else(|| vec![0.0f32; len])
}

/// A fresh `[n, h]` tensor whose values `write(first row, block)` assigns, block by block of
/// `per` rows, across the pool unless it is small: the output is never zeroed first.
///
/// # Safety
/// `write` assigns every value of each block it is handed (an f32 has no invalid bit
/// patterns, so they are then initialised).
unsafe fn written_by_blocks(
    [n, h]: [usize; 2],
    per: usize,
    write: impl Fn(usize, &mut [std::mem::MaybeUninit<f32>]) + Sync,
) -> FlexTensor {
    let per = per.max(1);
    let mut out: Vec<f32> = Vec::with_capacity(n * h);
    let spare = &mut out.spare_capacity_mut()[..n * h];
    if n * h < PARALLEL_MIN {
        write(0, spare);
    } else {
        spare
            .par_chunks_mut(per * h)
            .enumerate()
            .for_each(|(i, c)| write(i * per, c));
    }
    // SAFETY: `write` assigned every value (the caller's guarantee)
    unsafe { out.set_len(n * h) };
    FlexTensor::from_data(TensorData::new(out, [n, h]))
}

/// `[rows, h]`: row i the sum of the rows r of `gs` (`[n, h]`) with `index[r] = i`.
fn scatter_table(gs: &[f32], index: &[usize], rows: usize, h: usize) -> Vec<f32> {
    let n = index.len();
    if n * h < PARALLEL_MIN {
        let mut table = vec![0.0f32; rows * h];
        math::scatter_rows(gs, index, &mut table, h);
        table
    } else {
        // each task sums its rows into a table of its own; the tables are then added
        let per = rows_per_task(h).max(n.div_ceil(rayon::current_num_threads().max(1)));
        let partials = gs
            .par_chunks(per * h)
            .zip(index.par_chunks(per))
            .map(|(g, ix)| {
                let mut table = vec![0.0f32; rows * h];
                math::scatter_rows(g, ix, &mut table, h);
                table
            });
        sum_partials(partials, rows * h)
    }
}

/// An operation on autodiff whose backward pass needs only what `state` keeps of its inputs:
/// `forward` on the inputs' inner tensors, with `op` recorded when any input is tracked.
pub(crate) fn record_op<B, C, O, const N: usize>(
    op: O,
    inputs: [FloatTensor<Autodiff<B, C>>; N],
    state: impl FnOnce(&[FloatTensor<B>; N]) -> O::State,
    forward: impl FnOnce([FloatTensor<B>; N]) -> FloatTensor<B>,
) -> FloatTensor<Autodiff<B, C>>
where
    B: Backend,
    C: CheckpointStrategy,
    O: Backward<B, N>,
{
    record_op_saving::<B, C, O, N>(op, inputs, |inner, tracked| {
        let kept = tracked.then(|| state(&inner));
        (forward(inner), kept)
    })
}

/// [`record_op`] for an operation whose backward pass keeps something its forward pass
/// computes: `forward` takes the inputs and whether they are tracked, and returns the output
/// and, when tracked, the state.
pub(crate) fn record_op_saving<B, C, O, const N: usize>(
    op: O,
    inputs: [FloatTensor<Autodiff<B, C>>; N],
    forward: impl FnOnce([FloatTensor<B>; N], bool) -> (FloatTensor<B>, Option<O::State>),
) -> FloatTensor<Autodiff<B, C>>
where
    B: Backend,
    C: CheckpointStrategy,
    O: Backward<B, N>,
{
    let nodes = inputs.each_ref().map(|t| t.node());
    match op.prepare::<C>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let (out, state) = forward(inputs.map(|t| t.into_primitive()), true);
            prep.finish(state.expect("a tracked operation's state"), out)
        }
        OpsKind::UnTracked(prep) => {
            prep.finish(forward(inputs.map(|t| t.into_primitive()), false).0)
        }
    }
}

/// The backward pass of an operation that forms its parents' gradients at once: `gradients`
/// from the output's gradient, the state and which parents are tracked, each gradient then
/// registered for its parent (where both are there).
pub(crate) fn register_gradients<B: Backend, S, const N: usize>(
    ops: Ops<S, N>,
    grads: &mut Gradients,
    gradients: impl FnOnce(FloatTensor<B>, S, [bool; N]) -> [Option<FloatTensor<B>>; N],
) {
    let grad = grads.consume::<B>(&ops.node);
    let wanted = ops.parents.each_ref().map(|p| p.is_some());
    let gs = gradients(grad, ops.state, wanted);
    for (parent, g) in ops.parents.into_iter().zip(gs) {
        if let (Some(node), Some(g)) = (parent, g) {
            grads.register::<B>(node.id, g);
        }
    }
}
