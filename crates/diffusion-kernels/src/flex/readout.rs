//! The per-row readout ([`FusedLinear::readout_rows`](super::FusedLinear::readout_rows)): row
//! r of the output is `x[r] W_i + bias[i]` for i = `index[r]`, the matrices read in place from
//! their table on flex and their gradients summed straight into the tables' rows; with its
//! autodiff.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, TensorMetadata};
use burn::tensor::TensorData;
use rayon::prelude::*;

use super::linear::FusedLinearBackward;
use super::{PARALLEL_MIN, TASK, contiguous, indices, scatter_table, written_by_blocks};
use crate::math::{self, Isa};

/// Flex's [`FusedLinear::readout_rows`](super::FusedLinear::readout_rows): each row's bias
/// row, then `x[r] W_i` added as a sum of W_i's rows.
pub(super) fn readout_rows_flex(
    x: FlexTensor,
    weight: FlexTensor,
    bias: FlexTensor,
    index: FlexTensor,
) -> FlexTensor {
    let (x, weight, bias) = (contiguous(x), contiguous(weight), contiguous(bias));
    let [n, k] = x.shape().dims::<2>();
    let [rows, m] = bias.shape().dims::<2>();
    assert_eq!(
        weight.shape().dims::<2>(),
        [rows, k * m],
        "readout weights must be [rows, k m]"
    );
    let index = indices(&index, rows);
    assert_eq!(index.len(), n, "one readout per batch row");
    let (xs, ws, bs) = (
        x.as_slice::<f32>().expect("contiguous"),
        weight.as_slice::<f32>().expect("contiguous"),
        bias.as_slice::<f32>().expect("contiguous"),
    );
    let isa = Isa::detect();
    let km = k * m;
    // rows r0.. into `out`: the bias row, then x[r] W_i as a sum of W_i's rows
    let run = |r0: usize, out: &mut [f32]| {
        for (j, o) in out.chunks_exact_mut(m).enumerate() {
            let (r, i) = (r0 + j, index[r0 + j]);
            o.copy_from_slice(&bs[i * m..(i + 1) * m]);
            math::accumulate_kernel(
                isa,
                &xs[r * k..(r + 1) * k],
                &ws[i * km..(i + 1) * km],
                o,
                1,
            );
        }
    };
    let mut out = vec![0.0f32; n * m];
    if m > 0 {
        if n * km < PARALLEL_MIN * 4 {
            run(0, &mut out);
        } else {
            let per = (4 * TASK / km.max(1)).max(1);
            out.par_chunks_mut(per * m)
                .enumerate()
                .for_each(|(c, chunk)| run(c * per, chunk));
        }
    }
    FlexTensor::from_data(TensorData::new(out, [n, m]))
}

/// Flex's [`FusedLinearBackward::readout_rows_backward`]: the indices read and checked once
/// for all three gradients.
pub(super) fn readout_rows_backward_flex(
    grad: FlexTensor,
    x: Option<FlexTensor>,
    weight: Option<FlexTensor>,
    index: FlexTensor,
    rows: usize,
) -> (Option<FlexTensor>, Option<FlexTensor>, FlexTensor) {
    let grad = contiguous(grad);
    let [n, m] = grad.shape().dims::<2>();
    // the indices read and checked once for all three gradients
    let index = indices(&index, rows);
    assert_eq!(index.len(), n, "one readout per gradient row");
    let gs = grad.as_slice::<f32>().expect("contiguous");
    let gx = weight.map(|w| readout_grad_x(gs, &w, &index, m));
    let gw = x.map(|x| readout_grad_weight(&x, gs, &index, rows, m));
    let bias = scatter_table(gs, &index, rows, m);
    (
        gx,
        gw,
        FlexTensor::from_data(TensorData::new(bias, [rows, m])),
    )
}

/// `[n, k]`: row r is `gs[r] W_iᵀ` for i = `index[r]`, W_i row i of `weight` as `[k, m]`.
fn readout_grad_x(gs: &[f32], weight: &FlexTensor, index: &[usize], m: usize) -> FlexTensor {
    let weight = contiguous(weight.clone());
    let km = weight.shape().dims::<2>()[1];
    let k = km / m.max(1);
    let ws = weight.as_slice::<f32>().expect("contiguous");
    let mut out = vec![0.0f32; index.len() * k];
    for ((o, g), &i) in out
        .chunks_exact_mut(k.max(1))
        .zip(gs.chunks_exact(m.max(1)))
        .zip(index)
    {
        for (o, w) in o.iter_mut().zip(ws[i * km..(i + 1) * km].chunks_exact(m)) {
            *o = w.iter().zip(g).map(|(w, g)| w * g).sum();
        }
    }
    FlexTensor::from_data(TensorData::new(out, [index.len(), k]))
}

/// The batch rows of each readout, in order (a counting sort of the indices): readout i's are
/// `order[start[i]..start[i + 1]]`; returns `(start, order)`.
fn rows_by_readout(index: &[usize], rows: usize) -> (Vec<usize>, Vec<usize>) {
    let mut start = vec![0usize; rows + 1];
    for &i in index {
        start[i + 1] += 1;
    }
    for i in 0..rows {
        start[i + 1] += start[i];
    }
    let mut order = vec![0usize; index.len()];
    let mut next = start.clone();
    for (r, &i) in index.iter().enumerate() {
        order[next[i]] = r;
        next[i] += 1;
    }
    (start, order)
}

/// `[rows, k m]`: row i the sum of `x[r]ᵀ gs[r]` over the rows r with `index[r] = i`.
fn readout_grad_weight(
    x: &FlexTensor,
    gs: &[f32],
    index: &[usize],
    rows: usize,
    m: usize,
) -> FlexTensor {
    let x = contiguous(x.clone());
    let [n, k] = x.shape().dims::<2>();
    assert_eq!(index.len(), n, "one readout per batch row");
    let xs = x.as_slice::<f32>().expect("contiguous");
    // the batch rows of each readout, in order (a counting sort of the indices)
    let (start, order) = rows_by_readout(index, rows);
    let isa = Isa::detect();
    let km = k * m;
    if km == 0 {
        return FlexTensor::from_data(TensorData::new(Vec::<f32>::new(), [rows, 0]));
    }
    // each readout's rows summed into its own row of the table (no two tasks share one), each
    // row zeroed by its task, not the whole table first on one thread (the heartbeat model's
    // is 8 MB, of which a batch writes a few hundred rows)
    // SAFETY: every row of every block is filled with zeros before anything else
    unsafe {
        written_by_blocks([rows, km], 1, |i0, block| {
            block.fill(std::mem::MaybeUninit::new(0.0));
            let block: &mut [f32] =
                std::slice::from_raw_parts_mut(block.as_mut_ptr().cast(), block.len());
            for (i, out) in (i0..).zip(block.chunks_exact_mut(km)) {
                let batch = &order[start[i]..start[i + 1]];
                if batch.is_empty() {
                    continue;
                }
                let a: Vec<f32> = batch
                    .iter()
                    .flat_map(|&r| &xs[r * k..(r + 1) * k])
                    .copied()
                    .collect();
                let b: Vec<f32> = batch
                    .iter()
                    .flat_map(|&r| &gs[r * m..(r + 1) * m])
                    .copied()
                    .collect();
                math::accumulate_kernel(isa, &a, &b, out, k);
            }
        })
    }
}

/// The per-step readout's backward pass: parents x, the weight table and the bias table.
#[derive(Debug)]
struct ReadoutRowsBackward;

/// x and the weights (when the other's gradient is needed), the indices, the tables' rows.
type ReadoutState<B> = (Option<NodeId>, Option<NodeId>, IntTensor<B>, usize);

impl<B: Backend + FusedLinearBackward> Backward<B, 3> for ReadoutRowsBackward {
    type State = ReadoutState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_weight, node_bias] = ops.parents;
        let (x, weight, index, rows) = ops.state;
        let grad = grads.consume::<B>(&ops.node);
        // x is kept when the weights are tracked (for their gradient), the weights when x is
        let x: Option<FloatTensor<B>> = node_weight
            .is_some()
            .then(|| checkpointer.retrieve_node_output(x.expect("x kept")));
        let w: Option<FloatTensor<B>> = node_x
            .is_some()
            .then(|| checkpointer.retrieve_node_output(weight.expect("w kept")));
        let (gx, gw, gb) = B::readout_rows_backward(grad, x, w, index, rows);
        if let Some(node) = node_bias {
            grads.register::<B>(node.id, gb);
        }
        if let (Some(node), Some(g)) = (node_x, gx) {
            grads.register::<B>(node.id, g);
        }
        if let (Some(node), Some(g)) = (node_weight, gw) {
            grads.register::<B>(node.id, g);
        }
    }
}

/// Autodiff's [`FusedLinear::readout_rows`](super::FusedLinear::readout_rows): the inner
/// backend's, with x and the weights checkpointed for each other's gradient when tracked.
pub(super) fn readout_rows_autodiff<B, C>(
    x: FloatTensor<Autodiff<B, C>>,
    weight: FloatTensor<Autodiff<B, C>>,
    bias: FloatTensor<Autodiff<B, C>>,
    index: IntTensor<Autodiff<B, C>>,
) -> FloatTensor<Autodiff<B, C>>
where
    B: Backend + FusedLinearBackward,
    C: CheckpointStrategy,
{
    let rows = bias.primitive().shape().dims::<2>()[0];
    let (x_tracked, w_tracked) = (x.is_tracked(), weight.is_tracked());
    match ReadoutRowsBackward
        .prepare::<C>([x.node(), weight.node(), bias.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let x_state = w_tracked.then(|| prep.checkpoint(&x));
            let w_state = x_tracked.then(|| prep.checkpoint(&weight));
            let output = B::readout_rows(
                x.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
                index.clone(),
            );
            prep.finish((x_state, w_state, index, rows), output)
        }
        OpsKind::UnTracked(prep) => prep.finish(B::readout_rows(
            x.into_primitive(),
            weight.into_primitive(),
            bias.into_primitive(),
            index,
        )),
    }
}
