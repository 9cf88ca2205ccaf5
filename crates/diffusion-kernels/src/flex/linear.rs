//! The fused layer `act(x w + bias + shift)`: its traits ([`FusedLinear`], whose other
//! operations live in their own files, and [`FusedLinearBackward`]), its forward pass on flex
//! and its autodiff (flex's backward pass is in `linear_backward`).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::{Flex, FlexTensor};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{AutodiffBackend, Backend, TensorMetadata, backend_extension};
use burn::tensor::{DType, Shape, TensorData};
use rayon::prelude::*;

use super::activate::{activate_autodiff, activate_flex, activation_backward_flex};
use super::product::product_flex;
use super::readout::{readout_rows_autodiff, readout_rows_flex};
use super::{
    PARALLEL_MIN, block_rows, contiguous, gemm_into, indices, rows_per_task, scatter_table,
    written_by_blocks,
};
use crate::Activation;
use crate::math::{self, Isa, Rows, SMALL_K, Small};

/// The fused layer's operations. Any backend can implement them; this crate does for [`Flex`]
/// and, with a backward pass, for [`Autodiff`] over any backend that does.
#[backend_extension(Autodiff, Flex)]
pub trait FusedLinear: Backend {
    /// `act(x w + bias + shift)`: `x` `[n, k]`, `w` `[k, h]`, `bias` `[h]`, `shift` `[n, h]` or
    /// `[1, h]`.
    fn linear_activation(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        activation: Activation,
    ) -> FloatTensor<Self>;

    /// `act(x w + bias + table[index])`: row r adds row `index[r]` of `table` (`[rows, h]`), as
    /// a learned per-step embedding does, without gathering a copy per row.
    fn linear_activation_rows(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        table: FloatTensor<Self>,
        index: IntTensor<Self>,
        activation: Activation,
    ) -> FloatTensor<Self>;

    /// `[rows, h]`: row i the sum of the rows r of `grad` (`[n, h]`) with `index[r] = i`.
    fn scatter_rows(
        grad: FloatTensor<Self>,
        index: IntTensor<Self>,
        rows: usize,
    ) -> FloatTensor<Self>;

    /// `grad act'` at the points where the activation's output is `output`.
    fn activation_backward(
        grad: FloatTensor<Self>,
        output: FloatTensor<Self>,
        activation: Activation,
    ) -> FloatTensor<Self>;

    /// `act(x)` element by element.
    fn activate(x: FloatTensor<Self>, activation: Activation) -> FloatTensor<Self>;

    /// `[n, m]`: row r is `x[r] W_i + bias[i]` for i = `index[r]`, where row i of `weight`
    /// (`[rows, k m]`) holds the `[k, m]` matrix W_i row-major and `bias` is `[rows, m]`: an
    /// affine readout of its own for each step, read in place (no copy of W_i per row).
    fn readout_rows(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        index: IntTensor<Self>,
    ) -> FloatTensor<Self>;

    /// The matrix product `a b` of two 2-D tensors (of any strides: the backward pass hands it
    /// transposed views).
    fn product(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_matmul(a, b)
    }
}

/// The whole backward passes of the fused layer and of the per-row readout, each as one
/// operation, called by their autodiff backward on the inner backend (so not routed through
/// Burn's dispatch). The layer's provided method composes [`FusedLinear`]'s operations; flex
/// runs it as one pass over blocks of rows, and the readout's reads its indices once for all
/// three gradients.
pub trait FusedLinearBackward: FusedLinear {
    /// The fused layer's backward pass from its output's gradient `grad` and its `output`:
    /// `(x's gradient, w's gradient, the bias's [h], the shift's)`. x's needs `w` and w's needs
    /// `x` (each `None` when not wanted). The shift's is the pre-activation gradient summed into
    /// row `index[r]` of a table of `shift_rows` rows or, without `index`, summed down to
    /// `shift_rows` rows (1, or n: itself).
    #[allow(clippy::type_complexity)]
    fn linear_activation_backward(
        grad: FloatTensor<Self>,
        output: FloatTensor<Self>,
        x: Option<FloatTensor<Self>>,
        w: Option<FloatTensor<Self>>,
        index: Option<IntTensor<Self>>,
        shift_rows: usize,
        activation: Activation,
    ) -> (
        Option<FloatTensor<Self>>,
        Option<FloatTensor<Self>>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    ) {
        let pre = Self::activation_backward(grad, output, activation);
        let [n, h] = pre.shape().dims::<2>();
        let bias = Self::float_reshape(Self::float_sum_dim(pre.clone(), 0), Shape::new([h]));
        let shift = match index {
            Some(index) => Self::scatter_rows(pre.clone(), index, shift_rows),
            None if shift_rows == n => pre.clone(),
            None => Self::float_sum_dim(pre.clone(), 0),
        };
        let gx = w.map(|w| Self::product(pre.clone(), Self::float_transpose(w)));
        let gw = x.map(|x| Self::product(Self::float_transpose(x), pre));
        (gx, gw, bias, shift)
    }

    /// [`FusedLinear::readout_rows`]' backward pass from its output's gradient `grad` (`[n, m]`):
    /// `(x's gradient [n, k], the weight table's [rows, k m], the bias table's [rows, m])`. x's
    /// needs `weight` and the weights' needs `x` (each `None` when not wanted).
    #[allow(clippy::type_complexity)]
    fn readout_rows_backward(
        grad: FloatTensor<Self>,
        x: Option<FloatTensor<Self>>,
        weight: Option<FloatTensor<Self>>,
        index: IntTensor<Self>,
        rows: usize,
    ) -> (
        Option<FloatTensor<Self>>,
        Option<FloatTensor<Self>>,
        FloatTensor<Self>,
    );
}

/// `act(x w + bias + shift)` with `shift` dense or, with `index`, a table of rows.
pub(super) fn forward(
    x: &FlexTensor,
    w: &FlexTensor,
    bias: FlexTensor,
    shift: FlexTensor,
    index: Option<&[usize]>,
    activation: Activation,
) -> FlexTensor {
    assert_eq!(x.dtype(), DType::F32, "the fused flex layer is f32 only");
    let [n, k] = x.shape().dims::<2>();
    let h = w.shape().dims::<2>()[1];
    // an input of a few columns: the product in the element-wise pass, not through gemm
    let small = (k <= SMALL_K).then(|| (contiguous(x.clone()), contiguous(w.clone())));
    let product = small.as_ref().map(|(x, w)| Small {
        x: x.as_slice::<f32>().expect("contiguous"),
        w: w.as_slice::<f32>().expect("contiguous"),
        k,
    });
    let (bias, shift) = (contiguous(bias), contiguous(shift));
    let (bias, shift) = (
        bias.as_slice::<f32>().expect("contiguous"),
        shift.as_slice::<f32>().expect("contiguous"),
    );
    assert_eq!(bias.len(), h, "bias must be [h]");
    match index {
        Some(index) => assert_eq!(index.len(), n, "one table row per batch row"),
        None => assert!(
            shift.len() == h || shift.len() == n * h,
            "shift must be [n, h] or [1, h]"
        ),
    }
    let isa = Isa::detect();
    let rows = |row0| Rows {
        bias,
        shift,
        index,
        product,
        row0,
    };
    if small.is_none() {
        return product_then_pass(x, w, h, |r0, block| {
            math::forward_kernel(isa, rows(r0), block, activation)
        });
    }
    // SAFETY: with a `Small` product the kernel assigns each value of its rows before it reads
    // it (so the output is not zeroed first, which on one thread took a tenth of the layer)
    unsafe {
        written_by_blocks([n, h], rows_per_task(h), |r0, dst| {
            let dst = std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast(), dst.len());
            math::forward_kernel(isa, rows(r0), dst, activation);
        })
    }
}

/// `x w` (`[n, k]` · `[k, h]`, any strides, k > 0) into a fresh `[n, h]` tensor, block of rows
/// by block of rows, each block handed to `pass` (with its first row) right after its product,
/// while it is in cache: one parallel region instead of gemm's and the pass's.
fn product_then_pass(
    x: &FlexTensor,
    w: &FlexTensor,
    h: usize,
    pass: impl Fn(usize, &mut [f32]) + Sync,
) -> FlexTensor {
    let [n, k] = x.shape().dims::<2>();
    if h <= SMALL_K {
        return dots_then_pass(x, w, h, pass);
    }
    let (lx, lw) = (x.layout(), w.layout());
    let (sx, sw) = (lx.strides(), lw.strides());
    let xs = &x.storage::<f32>()[lx.start_offset()..];
    let ws = &w.storage::<f32>()[lw.start_offset()..];
    // SAFETY: rows r0..r0 + len of x and all of w lie in their storage (flex's layout
    // invariant), each block has room for len x h; with k > 0 gemm writes all of it, so it can
    // then be read as initialised values (and `written_by_blocks` may take it as written).
    unsafe {
        written_by_blocks([n, h], block_rows(n, h), |r0, dst| {
            let len = dst.len() / h;
            let dst = dst.as_mut_ptr().cast::<f32>();
            gemm_into(
                [len, h, k],
                dst,
                h as isize,
                (xs.as_ptr().offset(r0 as isize * sx[0]), sx[1], sx[0]),
                (ws.as_ptr(), sw[1], sw[0]),
                false,
                gemm::Parallelism::None,
            );
            pass(r0, std::slice::from_raw_parts_mut(dst, len * h));
        })
    }
}

/// [`product_then_pass`] for a product of few output columns (`h` <= [`SMALL_K`], a readout):
/// each row's h dot products with the columns of `w`, then the pass.
fn dots_then_pass(
    x: &FlexTensor,
    w: &FlexTensor,
    h: usize,
    pass: impl Fn(usize, &mut [f32]) + Sync,
) -> FlexTensor {
    let [n, k] = x.shape().dims::<2>();
    let x = contiguous(x.clone());
    let wt = contiguous(w.clone().transpose(0, 1));
    let (xs, wt) = (
        x.as_slice::<f32>().expect("contiguous"),
        wt.as_slice::<f32>().expect("contiguous"),
    );
    let isa = Isa::detect();
    let block = |r0: usize, out: &mut [f32]| {
        let len = out.len() / h;
        math::dot_kernel(isa, &xs[r0 * k..(r0 + len) * k], wt, out, k);
        pass(r0, out);
    };
    let mut out = vec![0.0f32; n * h];
    if n * k < PARALLEL_MIN {
        block(0, &mut out);
    } else {
        let per = block_rows(n, k);
        out.par_chunks_mut(per * h)
            .enumerate()
            .for_each(|(i, c)| block(i * per, c));
    }
    FlexTensor::from_data(TensorData::new(out, [n, h]))
}

impl FusedLinear for Flex {
    fn linear_activation(
        x: FlexTensor,
        w: FlexTensor,
        bias: FlexTensor,
        shift: FlexTensor,
        activation: Activation,
    ) -> FlexTensor {
        forward(&x, &w, bias, shift, None, activation)
    }

    fn linear_activation_rows(
        x: FlexTensor,
        w: FlexTensor,
        bias: FlexTensor,
        table: FlexTensor,
        index: FlexTensor,
        activation: Activation,
    ) -> FlexTensor {
        let rows = table.shape().dims::<2>()[0];
        let index = indices(&index, rows);
        forward(&x, &w, bias, table, Some(&index), activation)
    }

    fn scatter_rows(grad: FlexTensor, index: FlexTensor, rows: usize) -> FlexTensor {
        let grad = contiguous(grad);
        let [n, h] = grad.shape().dims::<2>();
        let index = indices(&index, rows);
        assert_eq!(index.len(), n, "one index per gradient row");
        let gs = grad.as_slice::<f32>().expect("contiguous");
        let table = scatter_table(gs, &index, rows, h);
        FlexTensor::from_data(TensorData::new(table, [rows, h]))
    }

    fn activation_backward(
        grad: FlexTensor,
        output: FlexTensor,
        activation: Activation,
    ) -> FlexTensor {
        activation_backward_flex(grad, output, activation)
    }

    fn activate(x: FlexTensor, activation: Activation) -> FlexTensor {
        activate_flex(x, activation)
    }

    fn readout_rows(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        index: FlexTensor,
    ) -> FlexTensor {
        readout_rows_flex(x, weight, bias, index)
    }

    fn product(a: FlexTensor, b: FlexTensor) -> FlexTensor {
        product_flex(a, b)
    }
}

/// How the shift's gradient is formed from the pre-activation's.
#[derive(Clone, Debug)]
enum ShiftGrad<B: Backend> {
    /// Summed down to the shift's shape (`[n, h]` or `[1, h]`).
    Dense(Shape),
    /// Scattered back into the table's rows.
    Rows(IntTensor<B>, usize),
}

/// The fused layer's backward pass: parents x, w, bias and the shift (or table).
#[derive(Debug)]
struct LinearActivationBackward;

/// x and w (when the other's gradient is needed), the output, the bias's shape, the shift's
/// gradient, the activation.
type BackwardState<B> = (
    Option<NodeId>,
    Option<NodeId>,
    FloatTensor<B>,
    Shape,
    ShiftGrad<B>,
    Activation,
);

impl<B: Backend + FusedLinearBackward> Backward<B, 4> for LinearActivationBackward {
    type State = BackwardState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 4>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_w, node_bias, node_shift] = ops.parents;
        let (x, w, output, bias_shape, shift, activation) = ops.state;
        let grad = grads.consume::<B>(&ops.node);
        // x is kept when w is tracked (for w's gradient), w when x is
        let x: Option<FloatTensor<B>> = node_w
            .is_some()
            .then(|| checkpointer.retrieve_node_output(x.expect("x kept")));
        let w: Option<FloatTensor<B>> = node_x
            .is_some()
            .then(|| checkpointer.retrieve_node_output(w.expect("w kept")));
        let (index, rows, shift_shape) = match shift {
            ShiftGrad::Dense(shape) => (None, shape.dims::<2>()[0], Some(shape)),
            ShiftGrad::Rows(index, rows) => (Some(index), rows, None),
        };
        let (gx, gw, gb, gs) =
            B::linear_activation_backward(grad, output, x, w, index, rows, activation);
        if let Some(node) = node_bias {
            grads.register::<B>(node.id, B::float_reshape(gb, bias_shape));
        }
        if let Some(node) = node_shift {
            let gs = match shift_shape {
                Some(shape) => B::float_reshape(gs, shape),
                None => gs,
            };
            grads.register::<B>(node.id, gs);
        }
        if let (Some(node), Some(g)) = (node_x, gx) {
            grads.register::<B>(node.id, g);
        }
        if let (Some(node), Some(g)) = (node_w, gw) {
            grads.register::<B>(node.id, g);
        }
    }
}

/// The fused layer on autodiff: `run` the inner backend's forward on x, w, bias and the shift,
/// recording the backward pass when any of them is tracked.
fn differentiable<B, C>(
    [x, w, bias, shift]: [FloatTensor<Autodiff<B, C>>; 4],
    shift_grad: ShiftGrad<B>,
    activation: Activation,
    run: impl FnOnce([FloatTensor<B>; 4]) -> FloatTensor<B>,
) -> FloatTensor<Autodiff<B, C>>
where
    B: Backend + FusedLinearBackward,
    C: CheckpointStrategy,
{
    let (x_tracked, w_tracked) = (x.is_tracked(), w.is_tracked());
    match LinearActivationBackward
        .prepare::<C>([x.node(), w.node(), bias.node(), shift.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let x_state = w_tracked.then(|| prep.checkpoint(&x));
            let w_state = x_tracked.then(|| prep.checkpoint(&w));
            let bias_shape = bias.primitive().shape();
            let output = run([
                x.into_primitive(),
                w.into_primitive(),
                bias.into_primitive(),
                shift.into_primitive(),
            ]);
            let state = (
                x_state,
                w_state,
                output.clone(),
                bias_shape,
                shift_grad,
                activation,
            );
            prep.finish(state, output)
        }
        OpsKind::UnTracked(prep) => prep.finish(run([
            x.into_primitive(),
            w.into_primitive(),
            bias.into_primitive(),
            shift.into_primitive(),
        ])),
    }
}

impl<B: Backend + FusedLinearBackward, C: CheckpointStrategy> FusedLinear for Autodiff<B, C> {
    fn linear_activation(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        activation: Activation,
    ) -> FloatTensor<Self> {
        let shape = shift.primitive().shape();
        differentiable::<B, C>(
            [x, w, bias, shift],
            ShiftGrad::Dense(shape),
            activation,
            |[x, w, b, s]| B::linear_activation(x, w, b, s, activation),
        )
    }

    fn linear_activation_rows(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        table: FloatTensor<Self>,
        index: IntTensor<Self>,
        activation: Activation,
    ) -> FloatTensor<Self> {
        let rows = table.primitive().shape().dims::<2>()[0];
        let shift_grad = ShiftGrad::Rows(index.clone(), rows);
        differentiable::<B, C>(
            [x, w, bias, table],
            shift_grad,
            activation,
            |[x, w, b, t]| B::linear_activation_rows(x, w, b, t, index, activation),
        )
    }

    fn activate(x: FloatTensor<Self>, activation: Activation) -> FloatTensor<Self> {
        activate_autodiff::<B, C>(x, activation)
    }

    fn readout_rows(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        index: IntTensor<Self>,
    ) -> FloatTensor<Self> {
        readout_rows_autodiff::<B, C>(x, weight, bias, index)
    }

    fn scatter_rows(
        grad: FloatTensor<Self>,
        index: IntTensor<Self>,
        rows: usize,
    ) -> FloatTensor<Self> {
        // used inside backward passes only, on the inner backend; here it is not differentiated
        Self::from_inner(B::scatter_rows(grad.into_primitive(), index, rows))
    }

    fn activation_backward(
        grad: FloatTensor<Self>,
        output: FloatTensor<Self>,
        activation: Activation,
    ) -> FloatTensor<Self> {
        // used inside backward passes only, on the inner backend; here it is not differentiated
        let grad =
            B::activation_backward(grad.into_primitive(), output.into_primitive(), activation);
        Self::from_inner(grad)
    }
}
