//! Self-attention over the positions of each entry (an image and a head) as a Burn backend
//! extension for flex, with its backward pass: per entry the logits, their softmax over the
//! keys and the weighted values in one task, the entries across the pool; backward from the
//! softmax's weights kept by the forward pass. Burn's composition takes a narrow, two scalings
//! (strided copies), two transposes, two batched products and a softmax (five element-wise
//! operations) each way, most of them on one thread at a U-Net's sizes.
//!
//! The weights are kept transposed, `[keys, queries]`, so that the softmax's passes run along
//! the queries with a contiguous row (each query's column); the six products (two forward, four
//! backward) are gemm's, each operand read in place through its strides.

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

use crate::conv::product;
use crate::flex::{contiguous, record_op_saving, register_gradients};
use crate::math::{Isa, exp_core, madd};

/// The attention's operation. Any backend can implement it; this crate does for [`Flex`] and,
/// with a backward pass, for [`Autodiff`] over any backend that does.
#[backend_extension(Autodiff, Flex)]
pub trait FusedAttention: Backend {
    /// `qkv` `[b, 3d, p]` (each entry's d query, d key and d value channels over p
    /// positions): `[b, d, p]`, `a[c, i] = sum_j softmax_j(q_i . k_j / sqrt(d)) v[c, j]`.
    fn attention_fused(qkv: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// [`FusedAttention`]'s backward pass on the inner backend.
pub trait AttentionBackward: FusedAttention {
    /// [`FusedAttention::attention_fused`]'s output and its softmax weights, transposed:
    /// `[b, p (keys), p (queries)]`.
    fn attention_saving(qkv: FloatTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// The gradient of `qkv` from the output's `grad` and the weights
    /// [`AttentionBackward::attention_saving`] returned.
    fn attention_backward(
        grad: FloatTensor<Self>,
        qkv: FloatTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// Entries per rayon task, at least.
const ENTRIES: usize = 2;
/// Below this the softmax's terms are taken as 0 (e^-87 is the smallest normal f32's order).
const EXP_FLOOR: f32 = -87.0;

/// `[b, 3d, p]`'s (b, d, p).
fn sizes(qkv: &FlexTensor) -> (usize, usize, usize) {
    let [b, three_d, p] = qkv.shape().dims::<3>();
    assert!(
        three_d % 3 == 0 && three_d > 0,
        "queries, keys and values of d channels each: 3d channels, not {three_d}"
    );
    (b, three_d / 3, p)
}

fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32")
}

/// The output and, when `keep`, the transposed weights, every entry a task (without `keep`
/// each task's weights are scratch of its own).
fn forward_flex(qkv: FlexTensor, keep: bool) -> (FlexTensor, Option<FlexTensor>) {
    let qkv = contiguous(qkv);
    let (b, d, p) = sizes(&qkv);
    let xs = values(&qkv);
    let isa = Isa::detect();
    let mut out = vec![0.0f32; b * d * p];
    let mut weights = vec![0.0f32; if keep { b * p * p } else { 0 }];
    if p > 0 {
        let entries = out.par_chunks_mut(d * p).zip(xs.par_chunks(3 * d * p));
        if keep {
            entries
                .zip(weights.par_chunks_mut(p * p))
                .with_min_len(ENTRIES)
                .for_each_init(
                    || vec![0.0f32; 2 * p],
                    |columns, ((a, x), w)| forward_kernel(isa, d, x, a, w, columns),
                );
        } else {
            entries.with_min_len(ENTRIES).for_each_init(
                || vec![0.0f32; p * p + 2 * p],
                |scratch, (a, x)| {
                    let (w, columns) = scratch.split_at_mut(p * p);
                    forward_kernel(isa, d, x, a, w, columns)
                },
            );
        }
    }
    (
        FlexTensor::from_data(TensorData::new(out, [b, d, p])),
        keep.then(|| FlexTensor::from_data(TensorData::new(weights, [b, p, p]))),
    )
}

impl FusedAttention for Flex {
    fn attention_fused(qkv: FlexTensor) -> FlexTensor {
        forward_flex(qkv, false).0
    }
}

impl AttentionBackward for Flex {
    fn attention_saving(qkv: FlexTensor) -> (FlexTensor, FlexTensor) {
        let (out, weights) = forward_flex(qkv, true);
        (out, weights.expect("kept"))
    }

    fn attention_backward(grad: FlexTensor, qkv: FlexTensor, weights: FlexTensor) -> FlexTensor {
        let (grad, qkv, weights) = (contiguous(grad), contiguous(qkv), contiguous(weights));
        let (b, d, p) = sizes(&qkv);
        let (gs, xs, ws) = (values(&grad), values(&qkv), values(&weights));
        assert!(
            gs.len() == b * d * p && ws.len() == b * p * p,
            "sizes of the saved operands"
        );
        let isa = Isa::detect();
        let mut dx = vec![0.0f32; xs.len()];
        if p > 0 {
            dx.par_chunks_mut(3 * d * p)
                .zip(xs.par_chunks(3 * d * p))
                .zip(ws.par_chunks(p * p).zip(gs.par_chunks(d * p)))
                .with_min_len(ENTRIES)
                .for_each_init(
                    || vec![0.0f32; p * p + p],
                    |scratch, ((dx, x), (w, g))| {
                        let operands = Entry { x, w, g };
                        backward_kernel(isa, d, operands, dx, scratch)
                    },
                );
        }
        FlexTensor::from_data(TensorData::new(dx, qkv.shape()))
    }
}

/// `dst` (`[m, n]`, row-major) = `lhs` `rhs` through gemm, each operand a row-major matrix
/// read where it lies: as stored (`false`: `[m, k]` and `[k, n]`) or transposed (`true`:
/// stored `[k, m]` and `[n, k]`).
fn multiply(
    dst: &mut [f32],
    [m, n, k]: [usize; 3],
    (lhs, lhs_t): (&[f32], bool),
    (rhs, rhs_t): (&[f32], bool),
) {
    assert!(dst.len() >= m * n && lhs.len() >= m * k && rhs.len() >= k * n);
    // (row stride, column stride) of a matrix of `cols` columns, or of the transpose of one
    // stored with `rows` columns
    let strides = |transposed: bool, cols: usize, rows: usize| match transposed {
        false => (cols as isize, 1),
        true => (1, rows as isize),
    };
    let (lr, lc) = strides(lhs_t, k, m);
    let (rr, rc) = strides(rhs_t, n, k);
    // SAFETY: the three matrices lie inside the slices, checked above
    unsafe {
        product(
            [m, n, k],
            (dst.as_mut_ptr(), n as isize, 1),
            (lhs.as_ptr(), lr, lc),
            (rhs.as_ptr(), rr, rc),
            false,
        );
    }
}

/// One entry's operands in the backward pass: `qkv` `[3d, p]`, the transposed weights
/// `[p, p]`, the output's gradient `[d, p]`.
#[derive(Clone, Copy)]
pub(crate) struct Entry<'a> {
    x: &'a [f32],
    w: &'a [f32],
    g: &'a [f32],
}

/// One entry forward: `wt` `[p, p]` the transposed softmax weights, `a` `[d, p]` the output,
/// from `qkv` `[3d, p]`; `columns` holds 2p values of scratch.
#[inline(always)]
fn forward_entry<const F: bool>(
    d: usize,
    qkv: &[f32],
    a: &mut [f32],
    wt: &mut [f32],
    columns: &mut [f32],
) {
    let p = a.len() / d;
    let (q, kv) = qkv.split_at(d * p);
    let (k, v) = kv.split_at(d * p);
    let scale = 1.0 / (d as f32).sqrt();
    // the logits, transposed: wt[j, i] = q_i . k_j / sqrt(d), the product k^T q then scaled
    multiply(wt, [p, p, d], (k, true), (q, false));
    wt.iter_mut().for_each(|l| *l *= scale);
    // each query's softmax over the keys (a column of wt)
    let (max, sum) = columns.split_at_mut(p);
    max.fill(f32::NEG_INFINITY);
    for row in wt.chunks_exact(p) {
        for (m, &l) in max.iter_mut().zip(row) {
            if l > *m {
                *m = l;
            }
        }
    }
    sum.fill(0.0);
    for row in wt.chunks_exact_mut(p) {
        for ((l, &m), s) in row.iter_mut().zip(&*max).zip(sum.iter_mut()) {
            let z = *l - m;
            // NaN passes through; below the floor the term is 0
            let e = exp_core::<F>(if z < EXP_FLOOR { EXP_FLOOR } else { z });
            let e = if z < EXP_FLOOR { 0.0 } else { e };
            *l = e;
            *s += e;
        }
    }
    sum.iter_mut().for_each(|s| *s = 1.0 / *s);
    for row in wt.chunks_exact_mut(p) {
        for (l, &r) in row.iter_mut().zip(&*sum) {
            *l *= r;
        }
    }
    // a[c, i] = sum_j v[c, j] wt[j, i]
    multiply(a, [d, p, p], (v, false), (wt, false));
}

/// One entry backward: `dqkv` `[3d, p]` from its [`Entry`]; `scratch` holds p^2 + p values.
#[inline(always)]
fn backward_entry<const F: bool>(d: usize, e: Entry<'_>, dqkv: &mut [f32], scratch: &mut [f32]) {
    let p = e.g.len() / d;
    let (q, kv) = e.x.split_at(d * p);
    let (k, v) = kv.split_at(d * p);
    let (dq, dkv) = dqkv.split_at_mut(d * p);
    let (dk, dv) = dkv.split_at_mut(d * p);
    let (dl, r) = scratch.split_at_mut(p * p);
    let scale = 1.0 / (d as f32).sqrt();
    // dv = g wt^T; the weights' gradient, transposed: dl = v^T g
    multiply(dv, [d, p, p], (e.g, false), (e.w, true));
    multiply(dl, [p, p, d], (v, true), (e.g, false));
    // through the softmax: dl[j, i] = wt[j, i] (dl[j, i] - sum_j' wt[j', i] dl[j', i]), and the
    // logits' scale
    r.fill(0.0);
    for (wrow, drow) in e.w.chunks_exact(p).zip(dl.chunks_exact(p)) {
        for ((r, &w), &g) in r.iter_mut().zip(wrow).zip(drow) {
            *r = madd::<F>(w, g, *r);
        }
    }
    for (wrow, drow) in e.w.chunks_exact(p).zip(dl.chunks_exact_mut(p)) {
        for ((g, &w), &r) in drow.iter_mut().zip(wrow).zip(&*r) {
            *g = w * (*g - r) * scale;
        }
    }
    // dq = k dl; dk = q dl^T
    multiply(dq, [d, p, p], (k, false), (dl, false));
    multiply(dk, [d, p, p], (q, false), (dl, true));
}

dispatched!(forward_kernel, forward_entry, (d: usize, qkv: &[f32], a: &mut [f32], wt: &mut [f32], columns: &mut [f32]));
dispatched!(backward_kernel, backward_entry, (d: usize, e: Entry<'_>, dqkv: &mut [f32], scratch: &mut [f32]));

/// The attention's backward pass: one parent.
#[derive(Debug)]
struct AttentionBackwardOp;

impl<B: Backend + AttentionBackward> Backward<B, 1> for AttentionBackwardOp {
    /// qkv and the transposed weights.
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        register_gradients::<B, _, 1>(ops, grads, |grad, (qkv, weights), _| {
            [Some(B::attention_backward(grad, qkv, weights))]
        });
    }
}

impl<B: Backend + AttentionBackward, C: CheckpointStrategy> FusedAttention for Autodiff<B, C> {
    fn attention_fused(qkv: FloatTensor<Self>) -> FloatTensor<Self> {
        record_op_saving::<B, C, _, 1>(AttentionBackwardOp, [qkv], |[qkv], tracked| {
            if !tracked {
                return (B::attention_fused(qkv), None);
            }
            let (out, weights) = B::attention_saving(qkv.clone());
            (out, Some((qkv, weights)))
        })
    }
}
