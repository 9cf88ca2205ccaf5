//! The convolution's backward pass on flex: the weights' and the bias's gradients per task of
//! images, summed after; the input's as the transposed convolution (a convolution that keeps
//! the size), by the direct kernels over the output gradient's rows into each input pixel's
//! phase (a 3x3 convolution of stride 2, [`direct::unhalving`]), or as a product into a column
//! buffer and its col2im (the others). A 3x3 convolution that keeps the size reads the padded
//! input planes its forward pass kept ([`ConvBackward::conv2d_saving`]) instead of padding the
//! input again.

use std::mem::MaybeUninit;

use burn::backend::TensorMetadata;
use burn::backend::flex::{Flex, FlexTensor};
use burn::tensor::TensorData;
use rayon::prelude::*;

use super::columns::{col2im, columns, product, tile_rows, tiles};
use super::{
    ConvAdd, ConvBackward, Dims, Start, convolve, convolve_flat, flex_forward, images_per_task,
    scratch, transposed_weights, values,
};
use super::{direct, pointwise};
use crate::ConvSpec;
use crate::flex::contiguous;
use crate::math::Isa;

/// One task's weight and bias gradients (summed over its images).
type Partial = (Vec<f32>, Vec<f32>);

/// What one backward pass computes, and its operands.
struct Pass<'a> {
    d: Dims,
    /// The output's gradient, the input (or its padded planes, when `kept`), the weights.
    gs: &'a [f32],
    xs: &'a [f32],
    ws: &'a [f32],
    /// Whether `xs` holds the forward pass's padded planes `[n, c_in, plane]`
    /// ([`ConvBackward::conv2d_saving`]) rather than the input.
    kept: bool,
    /// The gradients wanted: the input's, the weights', the bias's.
    want: [bool; 3],
    /// Whether the input's gradient is formed per task here (a convolution that changes the
    /// size): by the direct kernels for a halving one ([`direct::unhalving`]), else scattered
    /// from column gradients.
    scatter: bool,
    /// Images per task.
    per: usize,
    /// The weights of a halving convolution's input gradient ([`direct::unhalving_weights`]),
    /// when it is scattered by the direct kernels; empty otherwise.
    unhalving: Vec<f32>,
}

impl Pass<'_> {
    /// Task `task`'s images' weight and bias gradients (summed over them), and their input
    /// gradients into `dx_chunk` when it forms them (`scatter`: the halving kernels or the
    /// column-matrix path).
    fn task(&self, task: usize, dx_chunk: Option<&mut [f32]>) -> Partial {
        let (d, [_, want_w, want_b]) = (&self.d, self.want);
        let (pixels, rows) = (d.pixels(), d.col_rows());
        let (in_len, out_len) = (d.c_in * d.h * d.w, d.c_out * pixels);
        let mut dw = vec![0.0f32; if want_w { d.c_out * rows } else { 0 }];
        let mut db = vec![0.0f32; if want_b { d.c_out } else { 0 }];
        let first = task * self.per;
        let count = self.per.min(d.n - first);
        // a 1x1 kernel's weight gradient over the task's images at once, in registers
        let isa = Isa::detect();
        let pointwise = d.pointwise();
        // a halving 3x3 kernel's weight gradient by the direct kernels, over the task's
        // images' phase planes
        let halving = d.halving();
        // a halving kernel's input gradient by the direct kernels too, from the same rows of
        // the output gradient
        let unhalve = self.scatter && halving;
        let needs_col = want_w && !d.direct() && !halving;
        let mut col = scratch(if needs_col {
            rows * tile_rows(d) * d.w_out
        } else {
            0
        });
        let mut dcol = scratch(if self.scatter && !unhalve {
            rows * pixels
        } else {
            0
        });
        let mut dx_chunk = dx_chunk;
        for j in 0..count {
            let i = first + j;
            let g = &self.gs[i * out_len..][..out_len];
            let image = &self.xs[i * in_len..][..in_len];
            if want_b {
                add_bias_grad(&mut db, g, pixels);
            }
            if want_w && !pointwise && !halving {
                add_weight_grad(d, image, g, &mut col, &mut dw, j > 0);
            }
            if let Some(dx_chunk) = dx_chunk.as_deref_mut().filter(|_| !unhalve) {
                let dx_image = &mut dx_chunk[j * in_len..][..in_len];
                input_grad(d, g, self.ws, &mut dcol, dx_image);
            }
        }
        if (want_w || unhalve) && halving {
            let f = d.flat_geometry(count);
            let mut planes = scratch(if want_w { d.c_in * count * f.plane } else { 0 });
            let mut gplanes = scratch(f.c_out_padded(direct::CG) * count * f.plane);
            for j in 0..count {
                let i = first + j;
                if want_w {
                    // SAFETY: `pad` writes only f32 values
                    let into = unsafe { direct::as_uninit(&mut planes) };
                    d.pad(&f, &self.xs[i * in_len..][..in_len], j, into);
                }
                direct::flat_rows(&f, &self.gs[i * out_len..][..out_len], j, &mut gplanes);
            }
            direct::zero_planes(&f, d.c_out, &mut gplanes);
            if want_w {
                direct::weight_grad(isa, &f, &planes, &gplanes, &mut dw);
            }
            if let Some(dx_chunk) = dx_chunk.filter(|_| unhalve) {
                let u = f.unhalving();
                let mut rows = scratch(u.c_out_padded(direct::CO) * u.run);
                // the rows from each plane's first pixel on
                let grows = &gplanes[f.wp + 1..];
                for (j, dx_image) in dx_chunk.chunks_exact_mut(in_len).enumerate() {
                    direct::unhalving(isa, &u, &grows[j * f.plane..], &self.unhalving, &mut rows);
                    direct::interleave_phases(&u, &rows, (d.h, d.w), dx_image);
                }
            }
        }
        if want_w && pointwise {
            let plane = pointwise::Plane {
                c_in: d.c_in,
                c_out: d.c_out,
                pixels,
            };
            let xs = &self.xs[first * in_len..][..count * in_len];
            let gs = &self.gs[first * out_len..][..count * out_len];
            pointwise::weight_grad(isa, plane, count, xs, gs, &mut dw);
        }
        (dw, db)
    }

    /// [`Pass::task`] for a convolution the direct kernels run: the task's images' output
    /// gradients padded once into planes side by side, which the weight gradient reads (with
    /// the padded inputs) and the input gradient convolves (the transposed convolution, with
    /// `wt` the blocked transposed weights) into `dx_chunk`.
    fn flat_task(
        &self,
        task: usize,
        dx_chunk: Option<&mut [MaybeUninit<f32>]>,
        wt: &[f32],
    ) -> Partial {
        let (d, [_, want_w, want_b]) = (&self.d, self.want);
        let pixels = d.pixels();
        let (in_len, out_len) = (d.c_in * d.h * d.w, d.c_out * pixels);
        let mut dw = vec![0.0f32; if want_w { d.c_out * d.col_rows() } else { 0 }];
        let mut db = vec![0.0f32; if want_b { d.c_out } else { 0 }];
        let first = task * self.per;
        let count = self.per.min(d.n - first);
        let f = d.flat_geometry(count);
        // the weight gradient reads the output gradient's channels in blocks of CG
        let g_channels = if want_w {
            f.c_out_padded(direct::CG)
        } else {
            d.c_out
        };
        // the weight gradient reads the output gradient from each plane's first pixel on:
        // aligned to a cache line, its loads are about a tenth faster
        let g_len = g_channels * count * f.plane;
        let mut g_buffer = scratch(g_len + direct::LINE);
        let lead = direct::aligning(g_buffer.as_ptr(), f.wp + 1);
        let gplanes = &mut g_buffer[lead..lead + g_len];
        // the input's planes: those the forward pass kept, or padded here
        let pad_x = want_w && !self.kept;
        let mut planes = scratch(if pad_x { d.c_in * count * f.plane } else { 0 });
        for j in 0..count {
            let i = first + j;
            let g = &self.gs[i * out_len..][..out_len];
            if want_b {
                add_bias_grad(&mut db, g, pixels);
            }
            direct::pad_image(&f, g, j, gplanes);
            if pad_x {
                direct::pad_image(&f, &self.xs[i * in_len..][..in_len], j, &mut planes);
            }
        }
        let isa = Isa::detect();
        if want_w {
            direct::zero_planes(&f, d.c_out, gplanes);
            if self.kept {
                let image = d.c_in * f.plane;
                let kept = &self.xs[first * image..][..count * image];
                direct::weight_grad(isa, &f.image_major(), kept, gplanes, &mut dw);
            } else {
                direct::weight_grad(isa, &f, &planes, gplanes, &mut dw);
            }
        }
        if let Some(dx_chunk) = dx_chunk {
            let ft = d.transposed().flat_geometry(count);
            let layout = direct::Layout::new(&ft);
            let zeros = vec![0.0f32; d.c_in];
            for (j, dx_image) in dx_chunk.chunks_mut(in_len).enumerate() {
                let planes = &gplanes[j * f.plane..];
                let into = (&layout, zeros.as_slice(), None);
                convolve_flat(
                    isa,
                    &ft,
                    (planes, wt),
                    into,
                    (Start::Nothing, first + j),
                    dx_image,
                );
            }
        }
        (dw, db)
    }

    /// Every task of [`Pass::flat_task`] across the pool: the input gradient (empty unless
    /// wanted) and each task's weight and bias gradients.
    fn flat(&self, tasks: usize) -> (Vec<f32>, Vec<Partial>) {
        let d = &self.d;
        let in_len = d.c_in * d.h * d.w;
        if !self.want[0] {
            let partial = (0..tasks)
                .into_par_iter()
                .with_max_len(1)
                .map(|task| self.flat_task(task, None, &[]))
                .collect();
            return (Vec::new(), partial);
        }
        let t = d.transposed();
        let wt = direct::block_weights(&t.flat_geometry(1), &transposed_weights(d, self.ws));
        let total = d.n * in_len;
        let mut dx: Vec<f32> = Vec::with_capacity(total);
        let partial = dx.spare_capacity_mut()[..total]
            .par_chunks_mut(self.per * in_len)
            .with_max_len(1)
            .enumerate()
            .map(|(task, chunk)| self.flat_task(task, Some(chunk), &wt))
            .collect();
        // SAFETY: every image's input gradient was written by `convolve_flat`
        unsafe { dx.set_len(total) };
        (dx, partial)
    }
}

impl ConvBackward for Flex {
    fn conv2d_backward(
        grad: FlexTensor,
        x: FlexTensor,
        weight: FlexTensor,
        spec: ConvSpec,
        want: [bool; 3],
    ) -> [Option<FlexTensor>; 3] {
        let (grad, x, weight) = (contiguous(grad), contiguous(x), contiguous(weight));
        // the input, or its padded planes as the forward pass kept them
        let kept = x.shape().num_dims() == 3;
        let d = if kept {
            Dims::of_kept(&x, &grad, &weight, spec)
        } else {
            Dims::of(&x, &weight, spec)
        };
        let [want_x, want_w, want_b] = want;
        let in_len = d.c_in * d.h * d.w;
        let per = images_per_task(d.n);
        // a convolution that keeps the size takes its input gradient as the transposed
        // convolution, a forward pass of its own; the others scatter each image's column
        // gradient back in their tasks
        let scatter = want_x && !d.same();
        let pass = Pass {
            d,
            gs: values(&grad),
            xs: values(&x),
            ws: values(&weight),
            kept,
            want,
            scatter,
            per,
            unhalving: if scatter && d.halving() {
                let u = d.flat_geometry(1).unhalving();
                direct::unhalving_weights(&u, values(&weight))
            } else {
                Vec::new()
            },
        };
        let tasks = d.n.div_ceil(per);
        let (dx, partial) = if d.flat() {
            pass.flat(tasks)
        } else {
            let mut dx = vec![0.0f32; if scatter { d.n * in_len } else { 0 }];
            // each task's weight and bias gradients, summed after
            let partial: Vec<Partial> = if scatter {
                dx.par_chunks_mut(per * in_len)
                    .with_max_len(1)
                    .enumerate()
                    .map(|(task, chunk)| pass.task(task, Some(chunk)))
                    .collect()
            } else {
                (0..tasks)
                    .into_par_iter()
                    .with_max_len(1)
                    .map(|task| pass.task(task, None))
                    .collect()
            };
            if want_x && d.same() {
                let ws = transposed_weights(&d, pass.ws);
                dx = convolve(&d.transposed(), pass.gs, &ws, Start::Nothing);
            }
            (dx, partial)
        };
        let sum = |which: usize, len: usize| sum_partials(&partial, which, len);
        let rows = d.col_rows();
        [
            want_x.then(|| FlexTensor::from_data(TensorData::new(dx, [d.n, d.c_in, d.h, d.w]))),
            want_w.then(|| {
                FlexTensor::from_data(TensorData::new(
                    sum(0, d.c_out * rows),
                    [d.c_out, d.c_in, d.k, d.k],
                ))
            }),
            want_b.then(|| FlexTensor::from_data(TensorData::new(sum(1, d.c_out), [d.c_out]))),
        ]
    }

    fn conv2d_saving(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        add: ConvAdd<FlexTensor>,
        spec: ConvSpec,
    ) -> (FlexTensor, FlexTensor) {
        let (out, kept) = flex_forward(x, weight, bias, add, spec, true);
        (out, kept.expect("kept when asked"))
    }

    fn conv2d_shift_grad(grad: FlexTensor, rows: usize) -> FlexTensor {
        let grad = contiguous(grad);
        let shape = grad.shape();
        let (n, c) = (shape[0], shape[1]);
        let pixels = shape.num_elements() / (n * c).max(1);
        let gs = values(&grad);
        let sums: Vec<f32> = gs.par_chunks(pixels.max(1)).map(lane_sum).collect();
        if rows == n {
            FlexTensor::from_data(TensorData::new(sums, [n, c]))
        } else {
            let mut total = vec![0.0f32; c];
            for image in sums.chunks(c) {
                total.iter_mut().zip(image).for_each(|(t, v)| *t += v);
            }
            FlexTensor::from_data(TensorData::new(total, [1, c]))
        }
    }
}

/// The sum of `values` in 16 lanes (a plain sum of f32 is one dependent add per value).
fn lane_sum(values: &[f32]) -> f32 {
    let chunks = values.chunks_exact(16);
    let rest: f32 = chunks.remainder().iter().sum();
    let mut lanes = [0.0f32; 16];
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
    }
    lanes.iter().sum::<f32>() + rest
}

/// Adds one image's bias gradient, its output gradient `g` summed over each channel's
/// `pixels`, to `db`.
fn add_bias_grad(db: &mut [f32], g: &[f32], pixels: usize) {
    for (c, plane) in g.chunks(pixels).enumerate() {
        db[c] += lane_sum(plane);
    }
}

/// Sets (or, when `accumulate`, adds to) `dw` one image's weight gradient from its values
/// `image` and output gradient `g`; `col` is the im2col buffer.
fn add_weight_grad(
    d: &Dims,
    image: &[f32],
    g: &[f32],
    col: &mut [f32],
    dw: &mut [f32],
    accumulate: bool,
) {
    let (pixels, rows) = (d.pixels(), d.col_rows());
    debug_assert!(dw.len() == d.c_out * rows && g.len() == d.c_out * pixels);
    for (t, tile) in tiles(d).enumerate() {
        let first = tile.start * d.w_out;
        let len = tile.len() * d.w_out;
        let (col, stride) = columns(d, image, col, tile);
        // dW [c_out, rows] += g [c_out, tile] col^T [tile, rows]: the small output gradient is
        // the operand gemm repacks, the column matrix is read as it lies
        // SAFETY: dW is c_out x rows, g c_out x pixels (its columns first..first + len),
        // col rows x len with rows `stride` apart, all row-major
        unsafe {
            product(
                [d.c_out, rows, len],
                (dw.as_mut_ptr(), rows as isize, 1),
                (g.as_ptr().add(first), pixels as isize, 1),
                (col.as_ptr(), 1, stride as isize),
                accumulate || t > 0,
            );
        }
    }
}

/// Writes one image's input gradient into `dx_image` from its output gradient `g` and the
/// weights `ws` by a product into the column-matrix buffer `dcol` and its col2im.
fn input_grad(d: &Dims, g: &[f32], ws: &[f32], dcol: &mut [f32], dx_image: &mut [f32]) {
    // only convolutions that change the size come here (a 1x1 kernel of stride 1 keeps it and
    // takes the transposed convolution), so there is always a column matrix to scatter
    let (pixels, rows) = (d.pixels(), d.col_rows());
    debug_assert!(!d.same() && ws.len() == d.c_out * rows && g.len() == d.c_out * pixels);
    // dcol^T [pixels, rows] = g^T [pixels, c_out] W [c_out, rows]
    // SAFETY: g is c_out x pixels, W c_out x rows, dcol rows x pixels (the caller's buffer),
    // all row-major
    unsafe {
        product(
            [pixels, rows, d.c_out],
            (dcol.as_mut_ptr(), 1, pixels as isize),
            (g.as_ptr(), 1, pixels as isize),
            (ws.as_ptr(), rows as isize, 1),
            false,
        );
    }
    col2im(d, dcol, dx_image);
}

/// The tasks' partial sums of the weights' (`which` = 0) or the bias's (1) gradient, `len`
/// values, added up in task order.
fn sum_partials(partial: &[Partial], which: usize, len: usize) -> Vec<f32> {
    let mut total = vec![0.0f32; len];
    for (dw, db) in partial {
        let part = if which == 0 { dw } else { db };
        for (t, v) in total.iter_mut().zip(part) {
            *t += v;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::FusedConv;
    use crate::conv::direct::tests::values as uniform;

    /// A 3x3 convolution's backward pass from the padded planes its forward pass kept is the
    /// pass from the input itself (which pads it again), bit for bit: every gradient, with and
    /// without the input's, for several images a task.
    #[test]
    fn the_kept_planes_give_the_inputs_gradients_bit_for_bit() {
        if !direct::available(Isa::detect()) {
            return;
        }
        let tensor =
            |v: Vec<f32>, shape: Vec<usize>| FlexTensor::from_data(TensorData::new(v, shape));
        let bits = |t: &Option<FlexTensor>| {
            t.as_ref()
                .map(|t| values(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>())
        };
        let spec = ConvSpec {
            stride: 1,
            padding: 1,
        };
        for [n, c_in, h, w, c_out] in [[13, 3, 7, 9, 5], [2, 16, 28, 28, 16], [5, 1, 1, 4, 2]] {
            let x = tensor(uniform(n * c_in * h * w, 21), vec![n, c_in, h, w]);
            let weight = tensor(uniform(c_out * c_in * 9, 22), vec![c_out, c_in, 3, 3]);
            let bias = tensor(uniform(c_out, 23), vec![c_out]);
            let grad = tensor(uniform(n * c_out * h * w, 24), vec![n, c_out, h, w]);
            let (out, kept) = Flex::conv2d_saving(
                x.clone(),
                weight.clone(),
                bias.clone(),
                ConvAdd::Nothing,
                spec,
            );
            assert_eq!(kept.shape().num_dims(), 3, "planes kept");
            let plain = Flex::conv2d_fused(x.clone(), weight.clone(), bias, spec);
            assert_eq!(values(&out), values(&plain));
            for want in [[true, true, true], [false, true, false]] {
                let a = Flex::conv2d_backward(grad.clone(), x.clone(), weight.clone(), spec, want);
                let b =
                    Flex::conv2d_backward(grad.clone(), kept.clone(), weight.clone(), spec, want);
                for (k, (a, b)) in a.iter().zip(&b).enumerate() {
                    assert_eq!(bits(a), bits(b), "{n} {c_in} {h} {w} {c_out}: gradient {k}");
                }
            }
        }
    }
}
