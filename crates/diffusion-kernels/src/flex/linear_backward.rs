//! Flex's [`FusedLinearBackward`]: the fused layer's backward pass as one pass over blocks of
//! rows (in each, the activation's derivative from the saved output in the gradient's buffer,
//! the bias's or the table's sums, the weights' partial product and x's gradient, while the
//! block is in cache; the blocks' sums then added), and the readout's.

use std::mem::MaybeUninit;

use burn::backend::TensorMetadata;
use burn::backend::flex::{Flex, FlexTensor};
use burn::tensor::TensorData;
use rayon::prelude::*;

use super::linear::FusedLinearBackward;
use super::readout::readout_rows_backward_flex;
use super::{PARALLEL_MIN, block_rows, contiguous, gemm_into, indices};
use crate::Activation;
use crate::math::{self, Isa, SMALL_K};

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
    /// The two tasks' sums added, element by element.
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

/// What every block of rows of the fused backward pass reads, and the layer's sizes.
struct BackwardPass<'a> {
    isa: Isa,
    activation: Activation,
    /// The saved output, `[n, h]`.
    ys: &'a [f32],
    /// x, `[n, k]`, when the weights' gradient is wanted.
    xs: Option<&'a [f32]>,
    /// w's values from element (0, 0), with its row and column strides, when x's gradient is
    /// wanted.
    ws: Option<(&'a [f32], isize, isize)>,
    /// The table row of each batch row, when the shift is a table.
    index: Option<&'a [usize]>,
    /// x's columns (w's rows), 0 when neither is kept.
    k: usize,
    /// The layer's units.
    h: usize,
    /// The table's values (`shift_rows h`), or 0 without a table.
    table_len: usize,
}

impl BackwardPass<'_> {
    /// Rows `r0..` of the pre-activation gradient (made from `g` in place), the gradient of x
    /// in those rows (into `gx`), and the block's sums for w, the bias and the table.
    fn block(&self, r0: usize, g: &mut [f32], gx: Option<&mut [MaybeUninit<f32>]>) -> Partial {
        let (k, h, isa) = (self.k, self.h, self.isa);
        let len = g.len() / h;
        let mut p = Partial {
            w: vec![0.0; if self.xs.is_some() { k * h } else { 0 }],
            bias: vec![0.0; h],
            table: vec![0.0; self.table_len],
        };
        math::backward_kernel(isa, &self.ys[r0 * h..(r0 + len) * h], g, self.activation);
        // with a table, the bias's gradient is the sum of the table's, formed at the end
        match self.index {
            Some(index) => {
                math::sum_rows_kernel(isa, g, Some(&index[r0..r0 + len]), &mut p.table, h)
            }
            None => math::sum_rows_kernel(isa, g, None, &mut p.bias, h),
        }
        if let Some(xs) = self.xs {
            self.add_weight_sums(&xs[r0 * k..(r0 + len) * k], g, &mut p.w);
        }
        if let (Some(ws), Some(gx)) = (self.ws, gx) {
            self.input_gradient(ws, g, gx);
        }
        p
    }

    /// `xbᵀ g` added into `w` for a block's rows `xb` of x and `g` of the pre-activation
    /// gradient: `[k, h]`, or its transpose `[h, k]` for few output columns.
    fn add_weight_sums(&self, xb: &[f32], g: &[f32], w: &mut [f32]) {
        let (k, h, isa) = (self.k, self.h, self.isa);
        let len = g.len() / h;
        if k <= SMALL_K {
            math::accumulate_kernel(isa, xb, g, w, k);
        } else if h <= SMALL_K {
            // few output columns (a readout): summed as its transpose gᵀ x, [h, k],
            // so that the inner loop runs along k
            math::accumulate_kernel(isa, g, xb, w, h);
        } else {
            // SAFETY: xᵀ is [k, len] (columns k apart), g [len, h], w [k, h]
            unsafe {
                gemm_into(
                    [k, h, len],
                    w.as_mut_ptr(),
                    h as isize,
                    (xb.as_ptr(), k as isize, 1),
                    (g.as_ptr(), 1, h as isize),
                    true,
                    gemm::Parallelism::None,
                )
            }
        }
    }

    /// x's gradient `g wᵀ` in a block's rows, into `gx` (`[len, k]`), from `ws` (w's values
    /// and its strides).
    fn input_gradient(
        &self,
        (ws, s0, s1): (&[f32], isize, isize),
        g: &[f32],
        gx: &mut [MaybeUninit<f32>],
    ) {
        let (k, h) = (self.k, self.h);
        let len = g.len() / h;
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

    /// Every block of `gs` (the gradient's values, `n` rows), on one thread when the work is
    /// small, else across the pool, x's gradient into `gx`'s spare room (`[n, k]`) when wanted:
    /// the blocks' sums added.
    fn run(&self, n: usize, gs: &mut [f32], gx: &mut Vec<f32>) -> Partial {
        let (k, h) = (self.k, self.h);
        // a row's work and footprint go with the wider of its input and output (a readout's
        // rows are 4 wide out and 128 in)
        let wide = h.max(k);
        if n * wide < PARALLEL_MIN {
            let gxc = self.ws.map(|_| &mut gx.spare_capacity_mut()[..n * k]);
            return self.block(0, gs, gxc);
        }
        let per = block_rows(n, wide);
        let chunks: Vec<&mut [f32]> = gs.chunks_mut(per * h).collect();
        let gx_chunks: Vec<Option<&mut [MaybeUninit<f32>]>> = if self.ws.is_some() {
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
            .map(|(i, (g, gx))| self.block(i * per, g, gx))
            .reduce_with(Partial::add)
            .expect("at least one row")
    }

    /// The layer's gradients from the blocks' summed `partial`: x's (its `n` rows written in
    /// `gx`), w's, the bias's and the shift's (the table's, `grad` itself, or its one row).
    fn gradients(
        &self,
        partial: Partial,
        grad: FlexTensor,
        mut gx: Vec<f32>,
        [n, shift_rows]: [usize; 2],
    ) -> (
        Option<FlexTensor>,
        Option<FlexTensor>,
        FlexTensor,
        FlexTensor,
    ) {
        let (k, h) = (self.k, self.h);
        let gx = self.ws.map(|_| {
            // SAFETY: every task wrote its rows of gx
            unsafe { gx.set_len(n * k) };
            FlexTensor::from_data(TensorData::new(gx, [n, k]))
        });
        let gw = self.xs.map(|_| {
            if k > SMALL_K && h <= SMALL_K {
                // summed as [h, k]: handed back as its transposed view
                FlexTensor::from_data(TensorData::new(partial.w, [h, k])).transpose(0, 1)
            } else {
                FlexTensor::from_data(TensorData::new(partial.w, [k, h]))
            }
        });
        let shift = match self.index {
            Some(_) => FlexTensor::from_data(TensorData::new(partial.table, [shift_rows, h])),
            None if shift_rows == n => grad,
            None => FlexTensor::from_data(TensorData::new(partial.bias.clone(), [1, h])),
        };
        let bias = FlexTensor::from_data(TensorData::new(partial.bias, [h]));
        (gx, gw, bias, shift)
    }
}

/// x's columns from `x` or else `w`'s rows (0 without either), checked above 0 with either.
fn input_width(x: Option<&FlexTensor>, w: Option<&FlexTensor>) -> usize {
    let k = match (x, w) {
        (Some(x), _) => x.shape().dims::<2>()[1],
        (None, Some(w)) => w.shape().dims::<2>()[0],
        (None, None) => 0,
    };
    assert!(
        k > 0 || (x.is_none() && w.is_none()),
        "a layer of no inputs"
    );
    k
}

/// `w`'s values from its element (0, 0), with its row and column strides.
fn strided_values(w: &FlexTensor) -> (&[f32], isize, isize) {
    let l = w.layout();
    let s = l.strides();
    (&w.storage::<f32>()[l.start_offset()..], s[0], s[1])
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
        let k = input_width(x.as_ref(), w.as_ref());
        let isa = Isa::detect();
        let ys = output.as_slice::<f32>().expect("contiguous");
        assert_eq!(ys.len(), n * h, "gradient and output differ in size");
        let pass = BackwardPass {
            isa,
            activation,
            ys,
            xs: x.as_ref().map(|x| x.as_slice::<f32>().expect("contiguous")),
            ws: w.as_ref().map(strided_values),
            index: index.as_deref(),
            k,
            h,
            table_len: if index.is_some() { shift_rows * h } else { 0 },
        };
        let mut gx: Vec<f32> = Vec::with_capacity(if pass.ws.is_some() { n * k } else { 0 });
        let mut partial = pass.run(n, grad.storage_mut::<f32>(), &mut gx);
        if index.is_some() {
            math::sum_rows_kernel(isa, &partial.table, None, &mut partial.bias, h);
        }
        pass.gradients(partial, grad, gx, [n, shift_rows])
    }

    fn readout_rows_backward(
        grad: FlexTensor,
        x: Option<FlexTensor>,
        weight: Option<FlexTensor>,
        index: FlexTensor,
        rows: usize,
    ) -> (Option<FlexTensor>, Option<FlexTensor>, FlexTensor) {
        readout_rows_backward_flex(grad, x, weight, index, rows)
    }
}
