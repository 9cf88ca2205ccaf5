//! The fused layer as a Burn backend extension for flex, with its backward pass for autodiff.
//!
//! Forward: the product (gemm straight into the output, or inside the element-wise pass for an
//! input of a few columns), then one pass over the output (bias, shift or table row, and the
//! activation; rows split across rayon's pool). Backward: one pass for `g act'(y)` from the
//! saved output `y` (in the gradient's buffer when it is not shared), then the two products,
//! the bias's column sums and the shift's (or the table rows' scatter). Burn's own composition
//! takes five element-wise passes forward and as many backward, each writing a tensor that the
//! graph keeps.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::{Flex, FlexTensor};
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{AutodiffBackend, Backend, TensorMetadata, backend_extension};
use burn::tensor::{DType, Shape, TensorData};
use rayon::prelude::*;

use crate::Activation;
use crate::math::{self, AdamScalars, GaussianGrads, GaussianRows, Isa, Rows, SMALL_K, Small};

/// Elements per rayon task, and the size below which one thread does everything.
const TASK: usize = 8 * 1024;
const PARALLEL_MIN: usize = 32 * 1024;

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

/// The diagonal Gaussian KL per row as one operation (see [`crate::kl_diag_gaussian`]), with
/// its backward on autodiff.
#[backend_extension(Autodiff, Flex)]
pub trait FusedGaussianKl: Backend {
    /// `[n]`: KL(N(mu_q, diag var_q) || N(mu_p, diag exp(logvar_p))) per row in nats; `mu_q`,
    /// `mu_p`, `logvar_p` `[n, d]`, `var_q` and `logvar_q` `[n, 1]` or `[n, d]`.
    fn gaussian_kl(
        mu_q: FloatTensor<Self>,
        var_q: FloatTensor<Self>,
        logvar_q: FloatTensor<Self>,
        mu_p: FloatTensor<Self>,
        logvar_p: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// [`FusedGaussianKl`]'s backward pass on the inner backend: the five inputs' gradients from
/// the rows' output gradient `grad` (`[n]`), each computed when `wanted`.
pub trait GaussianKlBackward: FusedGaussianKl {
    /// `[mu_q's, var_q's, logvar_q's, mu_p's, logvar_p's]`, each of its input's shape.
    fn gaussian_kl_backward(
        grad: FloatTensor<Self>,
        inputs: [FloatTensor<Self>; 5],
        wanted: [bool; 5],
    ) -> [Option<FloatTensor<Self>>; 5];
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

/// Below this many multiply-adds a product runs on one thread (flex's own threshold).
const PARALLEL_PRODUCT: usize = 192 * 192 * 192;

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

/// `a b` for 2-D f32 flex tensors of any strides, by `gemm` straight into a fresh vector (flex's
/// own product allocates its output as bytes and copies it into an aligned buffer).
fn gemm_product(a: &FlexTensor, b: &FlexTensor) -> FlexTensor {
    let [m, k] = a.shape().dims::<2>();
    let [kb, n] = b.shape().dims::<2>();
    assert_eq!(k, kb, "product: inner dimensions differ");
    if k == 0 || m * n == 0 {
        return FlexTensor::from_data(TensorData::new(vec![0.0f32; m * n], [m, n]));
    }
    // gemm writes every element of the output (`read_dst` false): no need to zero it first
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    let (la, lb) = (a.layout(), b.layout());
    let (sa, sb) = (la.strides(), lb.strides());
    let parallelism = if m.saturating_mul(n).saturating_mul(k) >= PARALLEL_PRODUCT {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    let (pa, pb) = (
        a.storage::<f32>()[la.start_offset()..].as_ptr(),
        b.storage::<f32>()[lb.start_offset()..].as_ptr(),
    );
    // SAFETY: the pointers address element (0, 0) of each operand, and every (i, j)
    // reached through the strides lies in its storage (flex's layout invariant); `out` has
    // room for m x n, row-major; without accumulating and with k > 0 gemm writes every
    // element without reading any, so the length can then be set.
    unsafe {
        gemm_into(
            [m, n, k],
            out.as_mut_ptr(),
            n as isize,
            (pa, sa[1], sa[0]),
            (pb, sb[1], sb[0]),
            false,
            parallelism,
        );
        out.set_len(m * n);
    }
    FlexTensor::from_data(TensorData::new(out, [m, n]))
}

/// `t` with its values in one contiguous run (a copy only when `t` is a strided view).
pub(crate) fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.layout().contiguous_offsets().is_some() {
        t
    } else {
        t.to_contiguous()
    }
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

/// `act(x w + bias + shift)` with `shift` dense or, with `index`, a table of rows.
fn forward(
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

/// The sums a task of the fused backward pass gathers over its rows.
struct Partial {
    /// `[k, h]`, when the weights' gradient is wanted.
    w: Vec<f32>,
    /// `[h]`.
    bias: Vec<f32>,
    /// `[rows, h]`, when the shift is a table.
    table: Vec<f32>,
}

impl Partial {
    fn add(mut self, other: Partial) -> Partial {
        for (a, b) in [
            (&mut self.w, &other.w),
            (&mut self.bias, &other.bias),
            (&mut self.table, &other.table),
        ] {
            a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
        }
        self
    }
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

    fn activate(x: FlexTensor, activation: Activation) -> FlexTensor {
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

    fn readout_rows(
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

    fn product(a: FlexTensor, b: FlexTensor) -> FlexTensor {
        if a.dtype() == DType::F32 && b.dtype() == DType::F32 {
            let [m, k] = a.shape().dims::<2>();
            let n = b.shape().dims::<2>()[1];
            let few = |d: usize| (1..=SMALL_K).contains(&d);
            let long = k >= PARALLEL_MIN / 128;
            if few(k) {
                // the product in the element-wise pass (as the fused layer's first layer)
                let zeros = FlexTensor::from_data(TensorData::new(vec![0.0f32; n], [n]));
                return forward(&a, &b, zeros.clone(), zeros, None, Activation::Identity);
            }
            if few(m) && long {
                return few_rows_product(&a, &b);
            }
            if few(n) && long {
                // (bᵀ aᵀ)ᵀ, as a view
                let t = few_rows_product(&b.transpose(0, 1), &a.transpose(0, 1));
                return t.transpose(0, 1);
            }
            gemm_product(&a, &b)
        } else {
            Flex::float_matmul(a, b)
        }
    }
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
    let mut start = vec![0usize; rows + 1];
    for &i in index {
        start[i + 1] += 1;
    }
    for i in 0..rows {
        start[i + 1] += start[i];
    }
    let mut order = vec![0usize; n];
    let mut next = start.clone();
    for (r, &i) in index.iter().enumerate() {
        order[next[i]] = r;
        next[i] += 1;
    }
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

impl FusedLinearBackward for Flex {
    fn linear_activation_backward(
        grad: FlexTensor,
        output: FlexTensor,
        x: Option<FlexTensor>,
        w: Option<FlexTensor>,
        index: Option<FlexTensor>,
        shift_rows: usize,
        activation: Activation,
    ) -> (
        Option<FlexTensor>,
        Option<FlexTensor>,
        FlexTensor,
        FlexTensor,
    ) {
        let mut grad = contiguous(grad);
        let output = contiguous(output);
        let [n, h] = grad.shape().dims::<2>();
        assert!(h > 0, "a layer of no units");
        let index = index.map(|i| indices(&i, shift_rows));
        if let Some(index) = &index {
            assert_eq!(index.len(), n, "one table row per batch row");
        }
        let x = x.map(contiguous);
        let k = match (&x, &w) {
            (Some(x), _) => x.shape().dims::<2>()[1],
            (None, Some(w)) => w.shape().dims::<2>()[0],
            (None, None) => 0,
        };
        assert!(
            k > 0 || (x.is_none() && w.is_none()),
            "a layer of no inputs"
        );
        let isa = Isa::detect();
        let ys = output.as_slice::<f32>().expect("contiguous");
        assert_eq!(ys.len(), n * h, "gradient and output differ in size");
        let xs = x.as_ref().map(|x| x.as_slice::<f32>().expect("contiguous"));
        let ws = w.as_ref().map(|w| {
            let l = w.layout();
            let s = l.strides();
            (&w.storage::<f32>()[l.start_offset()..], s[0], s[1])
        });
        let table_len = if index.is_some() { shift_rows * h } else { 0 };
        let mut gx: Vec<f32> = Vec::with_capacity(if ws.is_some() { n * k } else { 0 });
        // rows r0.. of the pre-activation gradient (made from `g` in place), the gradient of
        // x in those rows, and the task's sums for w, the bias and the table
        let task = |r0: usize, g: &mut [f32], gx: Option<&mut [std::mem::MaybeUninit<f32>]>| {
            let len = g.len() / h;
            let mut p = Partial {
                w: vec![0.0; if xs.is_some() { k * h } else { 0 }],
                bias: vec![0.0; h],
                table: vec![0.0; table_len],
            };
            math::backward_kernel(isa, &ys[r0 * h..(r0 + len) * h], g, activation);
            // with a table, the bias's gradient is the sum of the table's, formed at the end
            match &index {
                Some(index) => {
                    math::sum_rows_kernel(isa, g, Some(&index[r0..r0 + len]), &mut p.table, h)
                }
                None => math::sum_rows_kernel(isa, g, None, &mut p.bias, h),
            }
            if let Some(xs) = xs {
                let xb = &xs[r0 * k..(r0 + len) * k];
                if k <= SMALL_K {
                    math::accumulate_kernel(isa, xb, g, &mut p.w, k);
                } else if h <= SMALL_K {
                    // few output columns (a readout): summed as its transpose gᵀ x, [h, k],
                    // so that the inner loop runs along k
                    math::accumulate_kernel(isa, g, xb, &mut p.w, h);
                } else {
                    // SAFETY: xᵀ is [k, len] (columns k apart), g [len, h], p.w [k, h]
                    unsafe {
                        gemm_into(
                            [k, h, len],
                            p.w.as_mut_ptr(),
                            h as isize,
                            (xb.as_ptr(), k as isize, 1),
                            (g.as_ptr(), 1, h as isize),
                            true,
                            gemm::Parallelism::None,
                        )
                    }
                }
            }
            if let (Some((ws, s0, s1)), Some(gx)) = (ws, gx) {
                // SAFETY: g is [len, h], wᵀ [h, k] through w's strides (flex's layout
                // invariant), gx has room for [len, k] and gemm writes all of it (h > 0)
                unsafe {
                    gemm_into(
                        [len, k, h],
                        gx.as_mut_ptr().cast(),
                        k as isize,
                        (g.as_ptr(), 1, h as isize),
                        (ws.as_ptr(), s0, s1),
                        false,
                        gemm::Parallelism::None,
                    )
                }
            }
            p
        };
        let gs = grad.storage_mut::<f32>();
        // a row's work and footprint go with the wider of its input and output (a readout's
        // rows are 4 wide out and 128 in)
        let wide = h.max(k);
        let mut partial = if n * wide < PARALLEL_MIN {
            let gxc = ws.map(|_| &mut gx.spare_capacity_mut()[..n * k]);
            task(0, gs, gxc)
        } else {
            let per = block_rows(n, wide);
            let chunks: Vec<&mut [f32]> = gs.chunks_mut(per * h).collect();
            let gx_chunks: Vec<Option<&mut [std::mem::MaybeUninit<f32>]>> = if ws.is_some() {
                gx.spare_capacity_mut()[..n * k]
                    .chunks_mut(per * k)
                    .map(Some)
                    .collect()
            } else {
                chunks.iter().map(|_| None).collect()
            };
            chunks
                .into_par_iter()
                .zip(gx_chunks)
                .enumerate()
                .map(|(i, (g, gx))| task(i * per, g, gx))
                .reduce_with(Partial::add)
                .expect("at least one row")
        };
        if index.is_some() {
            math::sum_rows_kernel(isa, &partial.table, None, &mut partial.bias, h);
        }
        let gx = ws.map(|_| {
            // SAFETY: every task wrote its rows of gx
            unsafe { gx.set_len(n * k) };
            FlexTensor::from_data(TensorData::new(gx, [n, k]))
        });
        let gw = xs.map(|_| {
            if k > SMALL_K && h <= SMALL_K {
                // summed as [h, k]: handed back as its transposed view
                FlexTensor::from_data(TensorData::new(partial.w, [h, k])).transpose(0, 1)
            } else {
                FlexTensor::from_data(TensorData::new(partial.w, [k, h]))
            }
        });
        let shift = match &index {
            Some(_) => FlexTensor::from_data(TensorData::new(partial.table, [shift_rows, h])),
            None if shift_rows == n => grad,
            None => FlexTensor::from_data(TensorData::new(partial.bias.clone(), [1, h])),
        };
        let bias = FlexTensor::from_data(TensorData::new(partial.bias, [h]));
        (gx, gw, bias, shift)
    }

    fn readout_rows_backward(
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
}

/// `a b` for `a` of a few rows (`[m, k]`, any strides) and a long `k`, such as the first
/// layer's weight gradient `xᵀ g`: each task sums its own range of k into an `[m, n]` partial,
/// the partials are then added (gemm packs for this shape and runs it on one thread).
fn few_rows_product(a: &FlexTensor, b: &FlexTensor) -> FlexTensor {
    let [m, k] = a.shape().dims::<2>();
    let n = b.shape().dims::<2>()[1];
    let b = contiguous(b.clone());
    let bs = b.as_slice::<f32>().expect("contiguous");
    let (la, store) = (a.layout(), a.storage::<f32>());
    let (sa, off) = (la.strides(), la.start_offset() as isize);
    let isa = Isa::detect();
    let per = rows_per_task(n).max(k.div_ceil(2 * rayon::current_num_threads().max(1)));
    let partial = |r0: usize, br: &[f32]| {
        let len = br.len() / n;
        // a's columns r0..r0 + len as rows [len, m]
        let at: Vec<f32> = (r0..r0 + len)
            .flat_map(|r| {
                (0..m).map(move |i| store[(off + i as isize * sa[0] + r as isize * sa[1]) as usize])
            })
            .collect();
        let mut out = vec![0.0f32; m * n];
        math::accumulate_kernel(isa, &at, br, &mut out, m);
        out
    };
    let partials = bs
        .par_chunks(per * n)
        .enumerate()
        .map(|(i, br)| partial(i * per, br));
    let out = sum_partials(partials, m * n);
    FlexTensor::from_data(TensorData::new(out, [m, n]))
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

/// The five KL inputs as contiguous flex tensors, checked: f32, `[n, d]` and `[n, qd]` with
/// qd 1 or d.
fn gaussian_inputs(inputs: [FlexTensor; 5]) -> ([FlexTensor; 5], [usize; 3]) {
    let inputs = inputs.map(contiguous);
    for t in &inputs {
        assert_eq!(t.dtype(), DType::F32, "the fused Gaussian KL is f32 only");
    }
    let [n, d] = inputs[0].shape().dims::<2>();
    let qd = inputs[1].shape().dims::<2>()[1];
    assert!(qd == 1 || qd == d, "var_q must be [n, 1] or [n, d]");
    for (t, width) in inputs.iter().zip([d, qd, qd, d, d]) {
        assert_eq!(
            t.shape().dims::<2>(),
            [n, width],
            "the KL's inputs differ in shape"
        );
    }
    (inputs, [n, d, qd])
}

fn gaussian_rows(inputs: &[FlexTensor; 5], d: usize, qd: usize) -> GaussianRows<'_> {
    let v = |i: usize| inputs[i].as_slice::<f32>().expect("contiguous");
    GaussianRows {
        mu_q: v(0),
        var_q: v(1),
        logvar_q: v(2),
        mu_p: v(3),
        logvar_p: v(4),
        d,
        qd,
    }
}

impl FusedGaussianKl for Flex {
    fn gaussian_kl(
        mu_q: FlexTensor,
        var_q: FlexTensor,
        logvar_q: FlexTensor,
        mu_p: FlexTensor,
        logvar_p: FlexTensor,
    ) -> FlexTensor {
        let (inputs, [n, d, qd]) = gaussian_inputs([mu_q, var_q, logvar_q, mu_p, logvar_p]);
        let rows = gaussian_rows(&inputs, d, qd);
        let isa = Isa::detect();
        let mut out = vec![0.0f32; n];
        if n * d < PARALLEL_MIN {
            math::gaussian_kl_kernel(isa, rows, &mut out);
        } else {
            let per = rows_per_task(d);
            out.par_chunks_mut(per)
                .enumerate()
                .for_each(|(i, o)| math::gaussian_kl_kernel(isa, rows.rows(i * per, o.len()), o));
        }
        FlexTensor::from_data(TensorData::new(out, [n]))
    }
}

impl GaussianKlBackward for Flex {
    fn gaussian_kl_backward(
        grad: FlexTensor,
        inputs: [FlexTensor; 5],
        wanted: [bool; 5],
    ) -> [Option<FlexTensor>; 5] {
        let (inputs, [n, d, qd]) = gaussian_inputs(inputs);
        let grad = contiguous(grad);
        let g = grad.as_slice::<f32>().expect("contiguous");
        assert_eq!(g.len(), n, "one gradient per row");
        let rows = gaussian_rows(&inputs, d, qd);
        let widths = [d, qd, qd, d, d];
        let mut bufs: [Option<Vec<f32>>; 5] =
            // zeroed: the posterior variances' gradients are sums over the row
            std::array::from_fn(|i| wanted[i].then(|| vec![0.0f32; n * widths[i]]));
        let isa = Isa::detect();
        let per = if n * d < PARALLEL_MIN {
            n.max(1)
        } else {
            rows_per_task(d)
        };
        // each buffer cut into the same blocks of rows, one task a block
        let mut blocks: [Vec<Option<&mut [f32]>>; 5] = Default::default();
        for ((b, buf), w) in blocks.iter_mut().zip(bufs.iter_mut()).zip(widths) {
            *b = match buf {
                Some(v) => v.chunks_mut(per * w).map(Some).collect(),
                None => (0..n.div_ceil(per)).map(|_| None).collect(),
            };
        }
        let [b0, b1, b2, b3, b4] = blocks;
        let tasks: Vec<_> = b0
            .into_iter()
            .zip(b1)
            .zip(b2)
            .zip(b3)
            .zip(b4)
            .enumerate()
            .collect();
        let run = |(i, ((((mu_q, var_q), logvar_q), mu_p), logvar_p)): (usize, _)| {
            let r0 = i * per;
            let len = per.min(n - r0);
            let out = GaussianGrads {
                mu_q,
                var_q,
                logvar_q,
                mu_p,
                logvar_p,
            };
            math::gaussian_kl_grad_kernel(isa, rows.rows(r0, len), &g[r0..r0 + len], out);
        };
        if tasks.len() > 1 {
            tasks.into_par_iter().for_each(run);
        } else {
            tasks.into_iter().for_each(run);
        }
        let shapes = inputs.each_ref().map(|t| t.shape());
        let mut i = 0;
        bufs.map(|b| {
            let shape = shapes[i].clone();
            i += 1;
            b.map(|v| FlexTensor::from_data(TensorData::new(v, shape)))
        })
    }
}

/// The Gaussian KL's backward pass: parents mu_q, var_q, logvar_q, mu_p, logvar_p.
#[derive(Debug)]
struct GaussianKlBackwardOp;

impl<B: Backend + GaussianKlBackward> Backward<B, 5> for GaussianKlBackwardOp {
    type State = [FloatTensor<B>; 5];

    fn backward(
        self,
        ops: Ops<Self::State, 5>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad = grads.consume::<B>(&ops.node);
        let wanted = ops.parents.each_ref().map(|p| p.is_some());
        let gs = B::gaussian_kl_backward(grad, ops.state, wanted);
        for (parent, g) in ops.parents.into_iter().zip(gs) {
            if let (Some(node), Some(g)) = (parent, g) {
                grads.register::<B>(node.id, g);
            }
        }
    }
}

impl<B: Backend + GaussianKlBackward, C: CheckpointStrategy> FusedGaussianKl for Autodiff<B, C> {
    fn gaussian_kl(
        mu_q: FloatTensor<Self>,
        var_q: FloatTensor<Self>,
        logvar_q: FloatTensor<Self>,
        mu_p: FloatTensor<Self>,
        logvar_p: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let inputs = [mu_q, var_q, logvar_q, mu_p, logvar_p];
        let nodes = inputs.each_ref().map(|t| t.node());
        match GaussianKlBackwardOp
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let inner = inputs.map(|t| t.into_primitive());
                let [a, b, c, d, e] = inner.clone();
                prep.finish(inner, B::gaussian_kl(a, b, c, d, e))
            }
            OpsKind::UnTracked(prep) => {
                let [a, b, c, d, e] = inputs.map(|t| t.into_primitive());
                prep.finish(B::gaussian_kl(a, b, c, d, e))
            }
        }
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

    fn readout_rows(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        index: IntTensor<Self>,
    ) -> FloatTensor<Self> {
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
