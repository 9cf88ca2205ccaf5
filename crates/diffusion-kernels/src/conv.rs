//! A 2-D convolution (square kernel, one stride and padding for both sides, no dilation, one
//! group) as a Burn backend extension for flex, with its backward pass for autodiff.
//!
//! Each image is a few matrix products, one per tile of output rows: im2col of the tile into
//! `[c_in k k, tile's pixels]` (about 128 KiB, so that it stays in L2 for the product; one
//! shifted copy per row when the convolution keeps the size at stride 1), then the product with
//! the weights added straight into the image's `[c_out, h_out w_out]` output (gemm's
//! column-major view of it, the pixels the long, contiguous side), which starts at the bias
//! plus a per-image shift or a residual ([`FusedConv::conv2d_shifted`],
//! [`FusedConv::conv2d_residual`]). Backward: the weights' gradient as products `dY col^T` per
//! tile, summed over the images each thread takes; the input's, for a convolution that keeps
//! the size, as the transposed convolution (the kernel flipped, the channels swapped) through
//! the same forward pass, else as the product `W^T dY` into a column buffer and its col2im sum;
//! the bias's and the shift's as the output gradient's sums. A 3x3 convolution that keeps the
//! size skips the column matrix and the products on a CPU with AVX2 or AVX-512: the direct
//! kernels of [`crate::direct`] compute it and its weight gradient in registers (and its input
//! gradient, the same kind of convolution). Images run in parallel on rayon's
//! pool; column buffers are kept per thread between calls. A 1x1 convolution of stride 1
//! reads its input as the column matrix (no copy). Burn's flex convolution instead tiles each
//! image, transposes the input to NHWC and allocates per tile, and runs the input gradient as a
//! scatter-based transposed convolution.

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
use std::ops::Range;

use crate::ConvSpec;
use crate::direct::{self, Flat};
use crate::flex::{contiguous, record_op, register_gradients};
use crate::math::Isa;

/// The fused convolution's operation. Any backend can implement it; this crate does for
/// [`Flex`] and, with a backward pass, for [`Autodiff`] over any backend that does.
#[backend_extension(Autodiff, Flex)]
pub trait FusedConv: Backend {
    /// `x` `[n, c_in, h, w]`, `weight` `[c_out, c_in, k, k]`, `bias` `[c_out]`: the output
    /// `[n, c_out, h_out, w_out]`.
    fn conv2d_fused(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        spec: ConvSpec,
    ) -> FloatTensor<Self>;

    /// [`FusedConv::conv2d_fused`] plus `shift` `[n, c_out]` (or `[1, c_out]` for every
    /// image): each image's own value per output channel (a U-Net's embedding of t).
    fn conv2d_shifted(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        spec: ConvSpec,
    ) -> FloatTensor<Self>;

    /// [`FusedConv::conv2d_fused`] plus `residual`, of the output's shape (a residual
    /// connection).
    fn conv2d_residual(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        spec: ConvSpec,
    ) -> FloatTensor<Self>;
}

/// [`FusedConv`]'s backward pass on the inner backend.
pub trait ConvBackward: FusedConv {
    /// The gradients of `x`, `weight` and `bias` from the output's gradient `grad`, each
    /// computed when `wanted`.
    fn conv2d_backward(
        grad: FloatTensor<Self>,
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        spec: ConvSpec,
        wanted: [bool; 3],
    ) -> [Option<FloatTensor<Self>>; 3];

    /// The gradient of [`FusedConv::conv2d_shifted`]'s shift from the output's: each image's
    /// sums over each channel's pixels, `[n, c_out]`, summed over the images for a shift of
    /// one row (`rows` = 1).
    fn conv2d_shift_grad(grad: FloatTensor<Self>, rows: usize) -> FloatTensor<Self>;
}

/// The sizes of one convolution.
#[derive(Clone, Copy, Debug)]
struct Dims {
    n: usize,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    k: usize,
    h_out: usize,
    w_out: usize,
    spec: ConvSpec,
}

impl Dims {
    fn of(x: &FlexTensor, weight: &FlexTensor, spec: ConvSpec) -> Self {
        let xs = x.shape();
        let ws = weight.shape();
        let (n, c_in, h, w) = (xs[0], xs[1], xs[2], xs[3]);
        let (c_out, k) = (ws[0], ws[2]);
        assert_eq!(ws[1], c_in, "the weights' input channels are the input's");
        assert_eq!(ws[3], k, "a square kernel");
        Self {
            n,
            c_in,
            h,
            w,
            c_out,
            k,
            h_out: spec.output_side(h, k),
            w_out: spec.output_side(w, k),
            spec,
        }
    }

    /// Pixels of an output image.
    fn pixels(&self) -> usize {
        self.h_out * self.w_out
    }

    /// Rows of the column matrix.
    fn col_rows(&self) -> usize {
        self.c_in * self.k * self.k
    }

    /// Whether the input image is the column matrix itself (a 1x1 kernel of stride 1).
    fn direct(&self) -> bool {
        self.k == 1 && self.spec.stride == 1 && self.spec.padding == 0
    }

    /// Whether the convolution keeps the image's size at stride 1 (an odd kernel, padding
    /// `(k - 1) / 2`): then its input gradient is the same kind of convolution of the output
    /// gradient with the kernel flipped and its channels swapped.
    fn same(&self) -> bool {
        self.spec.stride == 1 && 2 * self.spec.padding + 1 == self.k
    }

    /// Whether the direct 3x3 kernels of [`crate::direct`] run it (a 3x3 convolution that keeps
    /// the size, on a CPU with AVX2 or AVX-512).
    fn flat(&self) -> bool {
        self.same() && self.k == direct::K && direct::available(Isa::detect())
    }

    /// Its flat geometry for [`crate::direct`], `images` side by side.
    fn flat_geometry(&self, images: usize) -> Flat {
        Flat::new(self.c_in, self.c_out, self.h, self.w, images)
    }

    /// The sizes of the input gradient's convolution when [`Dims::same`].
    fn transposed(&self) -> Dims {
        Dims {
            c_in: self.c_out,
            c_out: self.c_in,
            ..*self
        }
    }
}

/// The weights of the transposed convolution: `[c_in, c_out, k, k]`, each kernel flipped.
fn transposed_weights(d: &Dims, ws: &[f32]) -> Vec<f32> {
    let kk = d.k * d.k;
    let mut t = Vec::with_capacity(ws.len());
    for ci in 0..d.c_in {
        for co in 0..d.c_out {
            let kernel = &ws[(co * d.c_in + ci) * kk..][..kk];
            t.extend(kernel.iter().rev());
        }
    }
    t
}

/// The output columns `lo..hi` whose input column `ox s + kx - p` lies in `0..w`.
fn valid_columns(d: &Dims, kx: usize) -> (usize, usize) {
    let (s, p) = (d.spec.stride, d.spec.padding);
    let lo = if kx >= p { 0 } else { (p - kx).div_ceil(s) };
    let hi = if d.w + p > kx {
        (d.w + p - kx).div_ceil(s).min(d.w_out)
    } else {
        0
    };
    (lo.min(hi), hi)
}

/// Output rows per tile: enough that a tile's column matrix fills about [`TILE_VALUES`]
/// (staying in the core's L2 cache between im2col and the product), at least
/// [`TILE_PIXELS`] pixels for the product's sake.
fn tile_rows(d: &Dims) -> usize {
    if d.direct() {
        // the image is its own column matrix: one tile
        return d.h_out.max(1);
    }
    let line = (d.col_rows() * d.w_out).max(1);
    (TILE_VALUES / line)
        .max(TILE_PIXELS.div_ceil(d.w_out.max(1)))
        .clamp(1, d.h_out.max(1))
}

/// The column matrix's values per tile, about.
const TILE_VALUES: usize = 32 * 1024;
/// The fewest output pixels a tile holds.
const TILE_PIXELS: usize = 128;

/// The tiles of output rows.
fn tiles(d: &Dims) -> impl Iterator<Item = Range<usize>> {
    let (per, h) = (tile_rows(d), d.h_out);
    (0..h).step_by(per).map(move |a| a..(a + per).min(h))
}

/// im2col of the output rows `tile` of one image `[c_in, h, w]` into `col`
/// `[c_in k k, tile's pixels]`.
fn im2col(d: &Dims, image: &[f32], col: &mut [f32], tile: Range<usize>) {
    if d.same() {
        return im2col_same(d, image, col, tile);
    }
    let (k, s, p) = (d.k, d.spec.stride, d.spec.padding);
    let pixels = tile.len() * d.w_out;
    for c in 0..d.c_in {
        let plane = &image[c * d.h * d.w..(c + 1) * d.h * d.w];
        for ky in 0..k {
            for kx in 0..k {
                let row = &mut col[((c * k + ky) * k + kx) * pixels..][..pixels];
                let (lo, hi) = valid_columns(d, kx);
                for oy in tile.clone() {
                    let local = oy - tile.start;
                    let out = &mut row[local * d.w_out..(local + 1) * d.w_out];
                    let iy = oy * s + ky;
                    if iy < p || iy - p >= d.h || lo == hi {
                        out.fill(0.0);
                        continue;
                    }
                    let line = &plane[(iy - p) * d.w..(iy - p + 1) * d.w];
                    out[..lo].fill(0.0);
                    out[hi..].fill(0.0);
                    // input column of output column ox: ox s + kx - p
                    let first = lo * s + kx - p;
                    if s == 1 {
                        out[lo..hi].copy_from_slice(&line[first..first + hi - lo]);
                    } else {
                        for (o, i) in out[lo..hi].iter_mut().zip((first..).step_by(s)) {
                            *o = line[i];
                        }
                    }
                }
            }
        }
    }
}

/// im2col for a stride-1 convolution that keeps the size, output rows `tile`: each row of the
/// column matrix is the input plane shifted by `(ky - p) w + (kx - p)` values, one long copy,
/// with the pixels whose source lies outside the plane (whole rows at the top or bottom, the
/// columns at the left or right edge) set to zero.
fn im2col_same(d: &Dims, image: &[f32], col: &mut [f32], tile: Range<usize>) {
    let (k, p, h, w) = (d.k, d.spec.padding as isize, d.h, d.w);
    let (a, b) = (tile.start, tile.end);
    let (pixels, len) = (h * w, (b - a) * w);
    for c in 0..d.c_in {
        let plane = &image[c * pixels..(c + 1) * pixels];
        for ky in 0..k {
            for kx in 0..k {
                let row = &mut col[((c * k + ky) * k + kx) * len..][..len];
                let (dy, dx) = (ky as isize - p, kx as isize - p);
                // the tile's output rows whose source row lies inside: oy + dy in 0..h
                let top = (-dy).max(a as isize).min(b as isize) as usize;
                let bottom = (h as isize - dy).min(b as isize).max(top as isize) as usize;
                let shift = dy * w as isize + dx;
                // the flat range copied (image-wide indices), clipped to the plane (the
                // clipped ends are edge columns, zeroed below)
                let lo = ((top * w) as isize).max(-shift).min((b * w) as isize);
                let hi = ((bottom * w) as isize).min(pixels as isize - shift).max(lo);
                let (lo, hi) = (lo as usize - a * w, hi as usize - a * w);
                row[..lo].fill(0.0);
                if hi > lo {
                    let from = ((lo + a * w) as isize + shift) as usize;
                    row[lo..hi].copy_from_slice(&plane[from..from + (hi - lo)]);
                }
                row[hi..].fill(0.0);
                let edge = dx.unsigned_abs().min(w);
                if edge > 0 {
                    for line in row[(top - a) * w..(bottom - a) * w].chunks_exact_mut(w) {
                        if dx < 0 {
                            line[..edge].fill(0.0);
                        } else {
                            line[w - edge..].fill(0.0);
                        }
                    }
                }
            }
        }
    }
}

/// The column matrix of one image's output rows `tile`, `[c_in k k, tile's pixels]` with
/// rows `stride` apart: the image itself for a 1x1 kernel of stride 1, else its im2col in
/// `buffer`.
fn columns<'a>(
    d: &Dims,
    image: &'a [f32],
    buffer: &'a mut [f32],
    tile: Range<usize>,
) -> (&'a [f32], usize) {
    if d.direct() {
        (&image[tile.start * d.w_out..], d.pixels())
    } else {
        let len = tile.len() * d.w_out;
        im2col(d, image, buffer, tile);
        (buffer, len)
    }
}

/// col2im: the column matrix's gradient `[c_in k k, h_out w_out]` summed into the image's
/// `[c_in, h, w]` (which it overwrites).
fn col2im(d: &Dims, col: &[f32], image: &mut [f32]) {
    let (k, s, p) = (d.k, d.spec.stride, d.spec.padding);
    let pixels = d.pixels();
    image.fill(0.0);
    for c in 0..d.c_in {
        let plane = &mut image[c * d.h * d.w..(c + 1) * d.h * d.w];
        for ky in 0..k {
            for kx in 0..k {
                let row = &col[((c * k + ky) * k + kx) * pixels..][..pixels];
                let (lo, hi) = valid_columns(d, kx);
                if lo == hi {
                    continue;
                }
                let first = lo * s + kx - p;
                for oy in 0..d.h_out {
                    let iy = oy * s + ky;
                    if iy < p || iy - p >= d.h {
                        continue;
                    }
                    let line = &mut plane[(iy - p) * d.w..(iy - p + 1) * d.w];
                    let g = &row[oy * d.w_out + lo..oy * d.w_out + hi];
                    if s == 1 {
                        for (l, v) in line[first..first + hi - lo].iter_mut().zip(g) {
                            *l += v;
                        }
                    } else {
                        for (i, v) in (first..).step_by(s).zip(g) {
                            line[i] += v;
                        }
                    }
                }
            }
        }
    }
}

/// `dst = lhs rhs` (or `+=` with `accumulate`) with every operand given as (pointer, row
/// stride, column stride), gemm's column-major convention.
///
/// # Safety
/// Every element reached through the pointers and strides lies in its buffer.
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    [m, n, k]: [usize; 3],
    dst: (*mut f32, isize, isize),
    lhs: (*const f32, isize, isize),
    rhs: (*const f32, isize, isize),
    accumulate: bool,
) {
    // SAFETY: the caller's
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            dst.2,
            dst.1,
            accumulate,
            lhs.0,
            lhs.2,
            lhs.1,
            rhs.0,
            rhs.2,
            rhs.1,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Images per rayon task: the batch in a few tasks per thread.
fn images_per_task(n: usize) -> usize {
    n.div_ceil(4 * rayon::current_num_threads()).max(1)
}

fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32")
}

thread_local! {
    /// Each thread's column buffers, kept between calls.
    static SCRATCH: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A column buffer of `len` values (their contents left from earlier use), from this thread's
/// store, going back to it when dropped: the buffers of a training step are allocated once and
/// never zeroed.
fn scratch(len: usize) -> Scratch {
    let mut buffer = SCRATCH.with(|s| s.borrow_mut().pop()).unwrap_or_default();
    buffer.resize(len, 0.0);
    Scratch(buffer)
}

/// A buffer from [`scratch`].
struct Scratch(Vec<f32>);

impl std::ops::Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl std::ops::DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let buffer = std::mem::take(&mut self.0);
        SCRATCH.with(|s| s.borrow_mut().push(buffer));
    }
}

/// What an output starts at before the product is added to it.
#[derive(Clone, Copy)]
enum Start<'a> {
    /// Nothing: the product is written straight into fresh memory (never zeroed first).
    Nothing,
    /// The channel's bias.
    Bias(&'a [f32]),
    /// The channel's bias plus the image's shift (`[n, c_out]`, or one row for all).
    Shifted(&'a [f32], &'a [f32]),
    /// The channel's bias plus the residual (of the output's shape).
    Residual(&'a [f32], &'a [f32]),
}

impl Start<'_> {
    /// Writes image `i`'s starting values into its output `o` (`[c_out, pixels]`); false
    /// when there are none.
    fn write(self, i: usize, o: &mut [std::mem::MaybeUninit<f32>], pixels: usize) -> bool {
        let c_out = o.len() / pixels.max(1);
        match self {
            // gemm's matrix-vector path (one output channel) forms a slice over its
            // destination: give it initialised values, which it overwrites
            Start::Nothing if c_out <= 1 => {
                o.iter_mut().for_each(|v| {
                    v.write(0.0);
                });
                return false;
            }
            Start::Nothing => return false,
            Start::Bias(bias) => {
                for (plane, &b) in o.chunks_mut(pixels).zip(bias) {
                    plane.iter_mut().for_each(|v| {
                        v.write(b);
                    });
                }
            }
            Start::Shifted(bias, shift) => {
                let row = if shift.len() == c_out { 0 } else { i };
                let shift = &shift[row * c_out..][..c_out];
                for ((plane, &b), &t) in o.chunks_mut(pixels).zip(bias).zip(shift) {
                    plane.iter_mut().for_each(|v| {
                        v.write(b + t);
                    });
                }
            }
            Start::Residual(bias, residual) => {
                let residual = &residual[i * o.len()..][..o.len()];
                let planes = o.chunks_mut(pixels).zip(residual.chunks(pixels));
                for ((plane, r), &b) in planes.zip(bias) {
                    for (v, &r) in plane.iter_mut().zip(r) {
                        v.write(r + b);
                    }
                }
            }
        }
        true
    }
}

/// The convolution of every image of `xs` with `ws` (sizes `d`), added to what `start` says
/// each output starts at.
fn convolve(d: &Dims, xs: &[f32], ws: &[f32], start: Start<'_>) -> Vec<f32> {
    let (pixels, rows) = (d.pixels(), d.col_rows());
    // every output value is written before it is read: a start covers every channel
    match start {
        Start::Nothing => {}
        Start::Bias(b) | Start::Shifted(b, _) | Start::Residual(b, _) => {
            assert_eq!(b.len(), d.c_out, "one bias per output channel")
        }
    }
    let (in_len, out_len) = (d.c_in * d.h * d.w, d.c_out * pixels);
    let total = d.n * out_len;
    let mut out: Vec<f32> = Vec::with_capacity(total);
    let per = images_per_task(d.n);
    if d.flat() {
        let (isa, f) = (Isa::detect(), d.flat_geometry(1));
        let wt = direct::block_weights(&f, ws);
        out.spare_capacity_mut()[..total]
            .par_chunks_mut(per * out_len)
            .enumerate()
            .for_each(|(task, outs)| {
                let mut planes = scratch(d.c_in * f.plane);
                let mut flat = scratch(f.c_out_padded(direct::CO) * f.run);
                for (j, o) in outs.chunks_mut(out_len).enumerate() {
                    let i = task * per + j;
                    direct::pad_image(&f, &xs[i * in_len..][..in_len], 0, &mut planes);
                    direct::forward(isa, &f, &planes, &wt, &mut flat);
                    finish(&f, start, i, &flat, o);
                }
            });
        // SAFETY: every image's output was written by `finish`
        unsafe { out.set_len(total) };
        return out;
    }
    out.spare_capacity_mut()[..total]
        .par_chunks_mut(per * out_len)
        .enumerate()
        .for_each(|(task, outs)| {
            let tile_len = tile_rows(d) * d.w_out;
            let mut col = scratch(if d.direct() { 0 } else { rows * tile_len });
            for (j, o) in outs.chunks_mut(out_len).enumerate() {
                let i = task * per + j;
                let image = &xs[i * in_len..][..in_len];
                let accumulate = start.write(i, o, pixels);
                for tile in tiles(d) {
                    let first = tile.start * d.w_out;
                    let len = tile.len() * d.w_out;
                    let (col, stride) = columns(d, image, &mut col, tile);
                    // o^T [tile, c_out] (+)= col^T [tile, rows] W^T [rows, c_out]
                    // SAFETY: o is c_out x pixels (written before it is read: by its start,
                    // or by the product, which does not read it without `accumulate`), the
                    // tile's columns `first..first + len` of it; col rows x len with rows
                    // `stride` apart, W c_out x rows, all row-major
                    unsafe {
                        product(
                            [len, d.c_out, rows],
                            (o.as_mut_ptr().cast::<f32>().add(first), 1, pixels as isize),
                            (col.as_ptr(), 1, stride as isize),
                            (ws.as_ptr(), 1, rows as isize),
                            accumulate,
                        );
                    }
                }
            }
        });
    // SAFETY: every image's output was written above
    unsafe { out.set_len(total) };
    out
}

/// Writes image `i`'s output `o` (`[c_out, h, w]`) from its flat convolution `flat`
/// ([`direct::forward`]'s) plus what `start` says it starts at.
fn finish(
    f: &Flat,
    start: Start<'_>,
    i: usize,
    flat: &[f32],
    o: &mut [std::mem::MaybeUninit<f32>],
) {
    let (h, w, wp, pixels) = (f.h, f.w, f.wp, f.h * f.w);
    for (co, plane) in o.chunks_mut(pixels).enumerate() {
        let run = &flat[co * f.run..][..h * wp];
        let (base, residual) = match start {
            Start::Nothing => (0.0, None),
            Start::Bias(bias) => (bias[co], None),
            Start::Shifted(bias, shift) => {
                let row = if shift.len() == f.c_out { 0 } else { i };
                (bias[co] + shift[row * f.c_out + co], None)
            }
            Start::Residual(bias, residual) => {
                let at = (i * f.c_out + co) * pixels;
                (bias[co], Some(&residual[at..at + pixels]))
            }
        };
        let rows = plane.chunks_exact_mut(w).zip(run.chunks_exact(wp));
        match residual {
            None => {
                for (d, s) in rows {
                    for (d, &s) in d.iter_mut().zip(s) {
                        d.write(base + s);
                    }
                }
            }
            Some(residual) => {
                for ((d, s), r) in rows.zip(residual.chunks_exact(w)) {
                    for ((d, &s), &r) in d.iter_mut().zip(s).zip(r) {
                        d.write((r + base) + s);
                    }
                }
            }
        }
    }
}

/// [`convolve`] as a tensor `[n, c_out, h_out, w_out]`.
fn convolved(d: &Dims, x: &FlexTensor, weight: &FlexTensor, start: Start<'_>) -> FlexTensor {
    let out = convolve(d, values(x), values(weight), start);
    FlexTensor::from_data(TensorData::new(out, [d.n, d.c_out, d.h_out, d.w_out]))
}

impl FusedConv for Flex {
    fn conv2d_fused(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        spec: ConvSpec,
    ) -> FlexTensor {
        let (x, weight, bias) = (contiguous(x), contiguous(weight), contiguous(bias));
        let d = Dims::of(&x, &weight, spec);
        convolved(&d, &x, &weight, Start::Bias(values(&bias)))
    }

    fn conv2d_shifted(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        shift: FlexTensor,
        spec: ConvSpec,
    ) -> FlexTensor {
        let (x, weight) = (contiguous(x), contiguous(weight));
        let (bias, shift) = (contiguous(bias), contiguous(shift));
        let d = Dims::of(&x, &weight, spec);
        let rows = shift.shape()[0];
        assert!(
            shift.shape().num_elements() == rows * d.c_out && (rows == 1 || rows == d.n),
            "a shift of [1 or n, c_out]"
        );
        convolved(
            &d,
            &x,
            &weight,
            Start::Shifted(values(&bias), values(&shift)),
        )
    }

    fn conv2d_residual(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        residual: FlexTensor,
        spec: ConvSpec,
    ) -> FlexTensor {
        let (x, weight) = (contiguous(x), contiguous(weight));
        let (bias, residual) = (contiguous(bias), contiguous(residual));
        let d = Dims::of(&x, &weight, spec);
        assert_eq!(
            residual.shape().dims::<4>(),
            [d.n, d.c_out, d.h_out, d.w_out],
            "a residual of the output's shape"
        );
        convolved(
            &d,
            &x,
            &weight,
            Start::Residual(values(&bias), values(&residual)),
        )
    }
}

impl ConvBackward for Flex {
    fn conv2d_backward(
        grad: FlexTensor,
        x: FlexTensor,
        weight: FlexTensor,
        spec: ConvSpec,
        [want_x, want_w, want_b]: [bool; 3],
    ) -> [Option<FlexTensor>; 3] {
        let (grad, x, weight) = (contiguous(grad), contiguous(x), contiguous(weight));
        let d = Dims::of(&x, &weight, spec);
        let (gs, xs, ws) = (values(&grad), values(&x), values(&weight));
        let (pixels, rows) = (d.pixels(), d.col_rows());
        let (in_len, out_len) = (d.c_in * d.h * d.w, d.c_out * pixels);
        let per = images_per_task(d.n);
        let tasks = d.n.div_ceil(per);
        // a convolution that keeps the size takes its input gradient as the transposed
        // convolution, a forward pass of its own; the others scatter each image's column
        // gradient back below
        let scatter = want_x && !d.same();
        let mut dx = if scatter {
            vec![0.0f32; d.n * in_len]
        } else {
            Vec::new()
        };
        // each task's weight and bias gradients, summed after
        let partial: Vec<(Vec<f32>, Vec<f32>)> = {
            let mut dx_chunks: Vec<Option<&mut [f32]>> = if scatter {
                dx.chunks_mut(per * in_len).map(Some).collect()
            } else {
                (0..tasks).map(|_| None).collect()
            };
            dx_chunks
                .par_iter_mut()
                .enumerate()
                .map(|(task, dx_chunk)| {
                    let mut dw = if want_w {
                        vec![0.0f32; d.c_out * rows]
                    } else {
                        Vec::new()
                    };
                    let mut db = vec![0.0f32; if want_b { d.c_out } else { 0 }];
                    let flat = want_w && d.flat();
                    let needs_col = want_w && !d.direct() && !flat;
                    let tile_len = tile_rows(&d) * d.w_out;
                    let mut col = scratch(if needs_col { rows * tile_len } else { 0 });
                    let mut dcol = scratch(if scatter { rows * pixels } else { 0 });
                    let first = task * per;
                    let count = per.min(d.n - first);
                    // the direct kernels take the task's images side by side
                    let f = d.flat_geometry(count);
                    let (plane_len, grad_len) = (
                        d.c_in * count * f.plane,
                        f.c_out_padded(direct::CG) * count * f.run,
                    );
                    let mut planes = scratch(if flat { plane_len } else { 0 });
                    let mut gflat = scratch(if flat { grad_len } else { 0 });
                    for j in 0..count {
                        let i = first + j;
                        let g = &gs[i * out_len..][..out_len];
                        let image = &xs[i * in_len..][..in_len];
                        if want_b {
                            add_bias_grad(&mut db, g, pixels);
                        }
                        if flat {
                            direct::pad_image(&f, image, j, &mut planes);
                            direct::flatten_grad(&f, g, j, &mut gflat);
                        } else if want_w {
                            add_weight_grad(&d, image, g, &mut col, &mut dw, j > 0);
                        }
                        if let Some(dx_chunk) = dx_chunk.as_deref_mut() {
                            let dx_image = &mut dx_chunk[j * in_len..][..in_len];
                            input_grad(&d, g, ws, &mut dcol, dx_image);
                        }
                    }
                    if flat {
                        direct::weight_grad(Isa::detect(), &f, &planes, &gflat, &mut dw);
                    }
                    (dw, db)
                })
                .collect()
        };
        if want_x && d.same() {
            let t = d.transposed();
            dx = convolve(&t, gs, &transposed_weights(&d, ws), Start::Nothing);
        }
        let sum = |which: usize, len: usize| sum_partials(&partial, which, len);
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

    fn conv2d_shift_grad(grad: FlexTensor, rows: usize) -> FlexTensor {
        let grad = contiguous(grad);
        let shape = grad.shape();
        let (n, c) = (shape[0], shape[1]);
        let pixels = shape.num_elements() / (n * c).max(1);
        let gs = values(&grad);
        let sums: Vec<f32> = gs
            .par_chunks(pixels.max(1))
            .map(|p| p.iter().sum())
            .collect();
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

/// Adds one image's bias gradient, its output gradient `g` summed over each channel's
/// `pixels`, to `db`.
fn add_bias_grad(db: &mut [f32], g: &[f32], pixels: usize) {
    for (c, plane) in g.chunks(pixels).enumerate() {
        db[c] += plane.iter().sum::<f32>();
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
fn sum_partials(partial: &[(Vec<f32>, Vec<f32>)], which: usize, len: usize) -> Vec<f32> {
    let mut total = vec![0.0f32; len];
    for (dw, db) in partial {
        let part = if which == 0 { dw } else { db };
        for (t, v) in total.iter_mut().zip(part) {
            *t += v;
        }
    }
    total
}

/// The convolution's backward pass: parents x, weight, bias.
#[derive(Debug)]
struct ConvBackwardOp;

impl<B: Backend + ConvBackward> Backward<B, 3> for ConvBackwardOp {
    type State = (FloatTensor<B>, FloatTensor<B>, ConvSpec);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        register_gradients::<B, _, 3>(ops, grads, |grad, (x, weight, spec), wanted| {
            B::conv2d_backward(grad, x, weight, spec, wanted)
        });
    }
}

/// What a [`ConvPlusBackwardOp`]'s fourth parent was.
#[derive(Debug, Clone, Copy)]
enum Added {
    /// A shift of this many rows (1, or one per image).
    Shift(usize),
    /// A residual (whose gradient is the output's).
    Residual,
}

/// The backward pass of a convolution plus a shift or a residual: parents x, weight, bias,
/// and the shift or the residual.
#[derive(Debug)]
struct ConvPlusBackwardOp;

impl<B: Backend + ConvBackward> Backward<B, 4> for ConvPlusBackwardOp {
    type State = (FloatTensor<B>, FloatTensor<B>, ConvSpec, Added);

    fn backward(
        self,
        ops: Ops<Self::State, 4>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        register_gradients::<B, _, 4>(ops, grads, |grad, (x, weight, spec, added), wanted| {
            let [x_, w_, b_, a_] = wanted;
            let added = a_.then(|| match added {
                Added::Shift(rows) => B::conv2d_shift_grad(grad.clone(), rows),
                Added::Residual => grad.clone(),
            });
            let [dx, dw, db] = B::conv2d_backward(grad, x, weight, spec, [x_, w_, b_]);
            [dx, dw, db, added]
        });
    }
}

impl<B: Backend + ConvBackward, C: CheckpointStrategy> FusedConv for Autodiff<B, C> {
    fn conv2d_fused(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        spec: ConvSpec,
    ) -> FloatTensor<Self> {
        record_op::<B, C, _, 3>(
            ConvBackwardOp,
            [x, weight, bias],
            |[x, weight, _]| (x.clone(), weight.clone(), spec),
            |[x, weight, bias]| B::conv2d_fused(x, weight, bias, spec),
        )
    }

    fn conv2d_shifted(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        spec: ConvSpec,
    ) -> FloatTensor<Self> {
        let rows = shift.shape()[0];
        record_op::<B, C, _, 4>(
            ConvPlusBackwardOp,
            [x, weight, bias, shift],
            |[x, weight, _, _]| (x.clone(), weight.clone(), spec, Added::Shift(rows)),
            |[x, weight, bias, shift]| B::conv2d_shifted(x, weight, bias, shift, spec),
        )
    }

    fn conv2d_residual(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        spec: ConvSpec,
    ) -> FloatTensor<Self> {
        record_op::<B, C, _, 4>(
            ConvPlusBackwardOp,
            [x, weight, bias, residual],
            |[x, weight, _, _]| (x.clone(), weight.clone(), spec, Added::Residual),
            |[x, weight, bias, residual]| B::conv2d_residual(x, weight, bias, residual, spec),
        )
    }
}
