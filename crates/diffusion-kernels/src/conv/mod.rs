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
//! kernels of [`direct`] compute it and its weight gradient in registers (and its input
//! gradient, the same kind of convolution), the weight gradient from the padded input planes
//! the forward pass kept ([`ConvBackward::conv2d_saving`]); a 3x3 convolution of stride 2 runs
//! on the direct kernels too, over phase planes, its input gradient included (the others' input
//! gradient is the column product and col2im above). A group norm before such a 3x3
//! convolution writes those padded planes itself when the two run as one operation
//! ([`normed`]). Images run in parallel on rayon's
//! pool; column buffers are kept per thread between calls. A 1x1 convolution of stride 1
//! reads its input as the column matrix (no copy). Burn's flex convolution instead tiles each
//! image, transposes the input to NHWC and allocates per tile, and runs the input gradient as a
//! scatter-based transposed convolution.

use std::mem::MaybeUninit;

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

mod backward;
mod columns;
mod direct;
mod normed;
mod pointwise;

use crate::flex::{contiguous, record_op_saving, register_gradients};
use crate::math::Isa;
use crate::{ConvSpec, NormSpec};
pub(crate) use columns::product;
use columns::{columns, tile_rows, tiles};
use direct::Flat;
pub use normed::{FusedNormConv, NormConvBackward};

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
    /// computed when `wanted`; `x` is what [`ConvBackward::conv2d_saving`] kept of the input.
    fn conv2d_backward(
        grad: FloatTensor<Self>,
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        spec: ConvSpec,
        wanted: [bool; 3],
    ) -> [Option<FloatTensor<Self>>; 3];

    /// The forward pass ([`FusedConv::conv2d_fused`] plus what `add` says) and what the
    /// backward pass reads in place of `x`: `x` itself, unless the backend keeps a form of it
    /// its [`ConvBackward::conv2d_backward`] reads faster (flex keeps a 3x3 convolution's
    /// zero-bordered input planes, which the weights' gradient would otherwise copy again).
    fn conv2d_saving(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        add: ConvAdd<FloatTensor<Self>>,
        spec: ConvSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        (forward_plus::<Self>(x.clone(), weight, bias, add, spec), x)
    }

    /// The gradient of [`FusedConv::conv2d_shifted`]'s shift from the output's: each image's
    /// sums over each channel's pixels, `[n, c_out]`, summed over the images for a shift of
    /// one row (`rows` = 1).
    fn conv2d_shift_grad(grad: FloatTensor<Self>, rows: usize) -> FloatTensor<Self>;
}

/// What a convolution adds to its product and bias ([`ConvBackward::conv2d_saving`]).
#[derive(Clone, Debug)]
pub enum ConvAdd<T> {
    /// Nothing ([`FusedConv::conv2d_fused`]).
    Nothing,
    /// A shift per image and channel ([`FusedConv::conv2d_shifted`]).
    Shift(T),
    /// A residual of the output's shape ([`FusedConv::conv2d_residual`]).
    Residual(T),
}

/// The forward pass of [`FusedConv`] that `add` names.
fn forward_plus<B: FusedConv>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: FloatTensor<B>,
    add: ConvAdd<FloatTensor<B>>,
    spec: ConvSpec,
) -> FloatTensor<B> {
    match add {
        ConvAdd::Nothing => B::conv2d_fused(x, weight, bias, spec),
        ConvAdd::Shift(shift) => B::conv2d_shifted(x, weight, bias, shift, spec),
        ConvAdd::Residual(residual) => B::conv2d_residual(x, weight, bias, residual, spec),
    }
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

    /// The sizes of a convolution whose input is kept as its padded planes (`[n, c_in,
    /// plane]`, [`ConvBackward::conv2d_saving`]): a 3x3 one that keeps the size, so the
    /// input's sides are the output gradient's.
    fn of_kept(
        planes: &FlexTensor,
        grad: &FlexTensor,
        weight: &FlexTensor,
        spec: ConvSpec,
    ) -> Self {
        let (ps, gs, ws) = (planes.shape(), grad.shape(), weight.shape());
        let (n, c_in, h, w) = (ps[0], ps[1], gs[2], gs[3]);
        let d = Self {
            n,
            c_in,
            h,
            w,
            c_out: ws[0],
            k: ws[2],
            h_out: h,
            w_out: w,
            spec,
        };
        assert!(
            d.flat(),
            "kept planes come from a 3x3 convolution that keeps the size"
        );
        assert_eq!(ws[1], c_in, "the weights' input channels are the input's");
        assert_eq!(ws[3], ws[2], "a square kernel");
        assert_eq!(
            [gs[0], gs[1]],
            [n, ws[0]],
            "the output gradient of these planes"
        );
        assert_eq!(
            ps[2],
            d.flat_geometry(1).plane,
            "one padded plane per channel"
        );
        d
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

    /// Whether the direct 3x3 kernels of [`direct`] run it (a 3x3 convolution that keeps
    /// the size, on a CPU with AVX2 or AVX-512).
    fn flat(&self) -> bool {
        self.same() && self.k == direct::K && direct::available(Isa::detect())
    }

    /// Whether the 1x1 kernels of [`pointwise`] run it (a 1x1 kernel of stride 1, images of at
    /// least a vector's pixels, on a CPU with AVX2 or AVX-512).
    fn pointwise(&self) -> bool {
        self.direct() && pointwise::available(Isa::detect(), self.pixels())
    }

    /// Whether the direct kernels run it as a 3x3 convolution of stride 2 and padding 1 (the
    /// U-Net's downsampling) over the input's phase planes: forward, the weights' gradient and
    /// the input's.
    fn halving(&self) -> bool {
        self.k == direct::K
            && self.spec.stride == 2
            && self.spec.padding == 1
            && direct::available(Isa::detect())
    }

    /// Its flat geometry for [`direct`], `images` side by side.
    fn flat_geometry(&self, images: usize) -> Flat {
        if self.halving() {
            return Flat::halving(self.c_in, self.c_out, self.h, self.w, images);
        }
        Flat::new(self.c_in, self.c_out, self.h, self.w, images)
    }

    /// Copies image `image` into its place `j` of the planes the direct kernels read: padded
    /// ([`direct::pad_image`]) or, halving, split into phase planes ([`direct::pad_phases`]).
    fn pad(&self, f: &Flat, image: &[f32], j: usize, planes: &mut [MaybeUninit<f32>]) {
        if f.stride == 2 {
            direct::pad_phases(f, image, (self.h, self.w), j, planes);
        } else {
            direct::pad_image_into(f, image, j, planes);
        }
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

impl<'a> Start<'a> {
    /// What image `i`'s output channel `co` (of `c_out`, `pixels` each) starts at: a value
    /// for every pixel, plus the residual's plane where there is one.
    fn channel(self, i: usize, co: usize, c_out: usize, pixels: usize) -> (f32, Option<&'a [f32]>) {
        match self {
            Start::Nothing => (0.0, None),
            Start::Bias(bias) => (bias[co], None),
            Start::Shifted(bias, shift) => {
                let row = if shift.len() == c_out { 0 } else { i };
                (bias[co] + shift[row * c_out + co], None)
            }
            Start::Residual(bias, residual) => {
                let at = (i * c_out + co) * pixels;
                (bias[co], Some(&residual[at..at + pixels]))
            }
        }
    }

    /// Image `i`'s start value for each of its `c_out` channels into `bases`, and its residual
    /// (`[c_out, pixels]`) where there is one.
    fn image(
        self,
        i: usize,
        c_out: usize,
        pixels: usize,
        bases: &mut Vec<f32>,
    ) -> Option<&'a [f32]> {
        bases.clear();
        bases.extend((0..c_out).map(|co| self.channel(i, co, c_out, pixels).0));
        match self {
            Start::Residual(_, residual) => Some(&residual[i * c_out * pixels..][..c_out * pixels]),
            _ => None,
        }
    }

    /// Writes image `i`'s starting values into its output `o` (`[c_out, pixels]`); false
    /// when there are none.
    fn write(self, i: usize, o: &mut [MaybeUninit<f32>], pixels: usize) -> bool {
        let c_out = o.len() / pixels.max(1);
        if let Start::Nothing = self {
            // gemm's matrix-vector path (one output channel) forms a slice over its
            // destination: give it initialised values, which it overwrites
            if c_out <= 1 {
                o.iter_mut().for_each(|v| {
                    v.write(0.0);
                });
            }
            return false;
        }
        for (co, plane) in o.chunks_mut(pixels).enumerate() {
            match self.channel(i, co, c_out, pixels) {
                (b, None) => plane.iter_mut().for_each(|v| {
                    v.write(b);
                }),
                (b, Some(residual)) => {
                    for (v, &r) in plane.iter_mut().zip(residual) {
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
    convolve_keeping(d, xs, ws, start, false).0
}

/// [`convolve`], and with `keep`, for a convolution the direct kernels run at stride 1
/// ([`Dims::flat`]), every image's padded planes as it read them: `[n, c_in, plane]`, what the
/// weights' gradient reads ([`direct::Flat::image_major`]).
fn convolve_keeping(
    d: &Dims,
    xs: &[f32],
    ws: &[f32],
    start: Start<'_>,
    keep: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let (pixels, rows) = (d.pixels(), d.col_rows());
    // every output value is written before it is read: a start covers every channel
    match start {
        Start::Nothing => {}
        Start::Bias(b) | Start::Shifted(b, _) | Start::Residual(b, _) => {
            assert_eq!(b.len(), d.c_out, "one bias per output channel")
        }
    }
    let (in_len, out_len) = (d.c_in * d.h * d.w, d.c_out * pixels);
    if d.flat() || d.halving() {
        let f = d.flat_geometry(1);
        let pad = |i: usize, planes: &mut [MaybeUninit<f32>]| {
            d.pad(&f, &xs[i * in_len..][..in_len], 0, planes)
        };
        // SAFETY: `pad` writes every value of an image's planes (`pad_image_into`,
        // `pad_phases`)
        let (out, kept, _) = unsafe { convolve_direct(d, pad, ws, start, keep) };
        return (out, kept);
    }
    let total = d.n * out_len;
    let mut out: Vec<f32> = Vec::with_capacity(total);
    if d.pointwise() {
        let isa = Isa::detect();
        let plane = pointwise::Plane {
            c_in: d.c_in,
            c_out: d.c_out,
            pixels,
        };
        let wt = pointwise::block_weights(isa, d.c_out, d.c_in, ws);
        out.spare_capacity_mut()[..total]
            .par_chunks_mut(out_len)
            .with_max_len(1)
            .enumerate()
            .for_each(|(i, o)| {
                let mut bases = Vec::with_capacity(d.c_out);
                // every channel's start value (zero for `Start::Nothing`) and residual
                let residual = start.image(i, d.c_out, pixels, &mut bases);
                let image = &xs[i * in_len..][..in_len];
                pointwise::forward(isa, plane, (image, &wt), (&bases, residual), o);
            });
        // SAFETY: every image's output was written by `pointwise::forward`
        unsafe { out.set_len(total) };
        return (out, None);
    }
    out.spare_capacity_mut()[..total]
        .par_chunks_mut(out_len)
        .with_max_len(1)
        .enumerate()
        .for_each(|(i, o)| {
            let tile_len = tile_rows(d) * d.w_out;
            let mut col = scratch(if d.direct() { 0 } else { rows * tile_len });
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
        });
    // SAFETY: every image's output was written above
    unsafe { out.set_len(total) };
    (out, None)
}

/// The forward pass of a convolution the direct kernels run ([`Dims::flat`] or
/// [`Dims::halving`]), one image a task: `fill(i, planes)` writes every value of image `i`'s
/// planes (its place 0 of a one-image geometry: padded, or split into phases) and returns
/// what it computed beside them, collected in the images' order. With `keep`, at stride 1, the
/// planes as the kernels read them: `[n, c_in, plane]`, what the weights' gradient reads
/// ([`direct::Flat::image_major`]).
///
/// # Safety
/// `fill` writes every value of the planes it is given (they are read as f32 after).
unsafe fn convolve_direct<R: Send>(
    d: &Dims,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) -> R + Sync,
    ws: &[f32],
    start: Start<'_>,
    keep: bool,
) -> (Vec<f32>, Option<Vec<f32>>, Vec<R>) {
    let out_len = d.c_out * d.pixels();
    let total = d.n * out_len;
    let mut out: Vec<f32> = Vec::with_capacity(total);
    let (isa, f) = (Isa::detect(), d.flat_geometry(1));
    let wt = direct::block_weights(&f, ws);
    let layout = direct::Layout::new(&f);
    let image = |i: usize, o: &mut [MaybeUninit<f32>], planes: &[f32]| {
        let mut bases = Vec::with_capacity(d.c_out);
        let residual = start.image(i, d.c_out, d.pixels(), &mut bases);
        let into = (&layout, bases.as_slice(), residual);
        convolve_flat(isa, &f, (planes, &wt), into, (start, i), o);
    };
    // one image a task: the forward pass has no partial sums to add up across tasks, and the
    // thread done first takes the other's last images instead of waiting for them
    let outputs = out.spare_capacity_mut()[..total].par_chunks_mut(out_len);
    let planes_len = d.c_in * f.plane;
    let mut kept = None;
    let computed = if keep && d.flat() && planes_len > 0 {
        let mut planes: Vec<f32> = Vec::with_capacity(d.n * planes_len);
        let computed = outputs
            .zip(planes.spare_capacity_mut()[..d.n * planes_len].par_chunks_mut(planes_len))
            .with_max_len(1)
            .enumerate()
            .map(|(i, (o, p))| {
                let r = fill(i, p);
                // SAFETY: `fill` wrote every value of the image's planes
                let p = unsafe { &*(p as *const [MaybeUninit<f32>] as *const [f32]) };
                image(i, o, p);
                r
            })
            .collect();
        // SAFETY: every image's planes were written above
        unsafe { planes.set_len(d.n * planes_len) };
        kept = Some(planes);
        computed
    } else {
        outputs
            .with_max_len(1)
            .enumerate()
            .map(|(i, o)| {
                let mut planes = scratch(planes_len);
                // SAFETY: `fill` writes only initialised values (the caller's promise)
                let r = fill(i, unsafe { direct::as_uninit(&mut planes) });
                image(i, o, &planes);
                r
            })
            .collect()
    };
    // SAFETY: every image's output was written by `convolve_flat`
    unsafe { out.set_len(total) };
    (out, kept, computed)
}

/// One image's direct convolution into its output `o`: straight in with AVX-512
/// ([`direct::forward_into`], `into` its layout, start values and residual), else through
/// the flat rows and [`finish`] (`start` and the image's index for it).
fn convolve_flat(
    isa: Isa,
    f: &Flat,
    (planes, wt): (&[f32], &[f32]),
    (layout, bases, residual): (&direct::Layout, &[f32], Option<&[f32]>),
    (start, i): (Start<'_>, usize),
    o: &mut [MaybeUninit<f32>],
) {
    if !direct::forward_into(isa, f, planes, wt, layout, bases, residual, o) {
        let mut flat = scratch(f.c_out_padded(direct::CO) * f.run);
        direct::forward(isa, f, planes, wt, &mut flat);
        finish(f, start, i, &flat, o);
    }
}

/// Writes image `i`'s output `o` (`[c_out, h, w]`) from its flat convolution `flat`
/// ([`direct::forward`]'s) plus what `start` says it starts at.
fn finish(f: &Flat, start: Start<'_>, i: usize, flat: &[f32], o: &mut [MaybeUninit<f32>]) {
    let (h, w, wp, pixels) = (f.h, f.w, f.wp, f.h * f.w);
    for (co, plane) in o.chunks_mut(pixels).enumerate() {
        let run = &flat[co * f.run..][..h * wp];
        let (base, residual) = start.channel(i, co, f.c_out, pixels);
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

impl FusedConv for Flex {
    fn conv2d_fused(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        spec: ConvSpec,
    ) -> FlexTensor {
        flex_forward(x, weight, bias, ConvAdd::Nothing, spec, false).0
    }

    fn conv2d_shifted(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        shift: FlexTensor,
        spec: ConvSpec,
    ) -> FlexTensor {
        flex_forward(x, weight, bias, ConvAdd::Shift(shift), spec, false).0
    }

    fn conv2d_residual(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        residual: FlexTensor,
        spec: ConvSpec,
    ) -> FlexTensor {
        flex_forward(x, weight, bias, ConvAdd::Residual(residual), spec, false).0
    }
}

/// Flex's forward pass of every [`FusedConv`] operation, and with `keep` the input as the
/// backward pass is to read it ([`ConvBackward::conv2d_saving`]): the padded planes `[n,
/// c_in, plane]` of a convolution the direct kernels run at stride 1, else `x`.
fn flex_forward(
    x: FlexTensor,
    weight: FlexTensor,
    bias: FlexTensor,
    add: ConvAdd<FlexTensor>,
    spec: ConvSpec,
    keep: bool,
) -> (FlexTensor, Option<FlexTensor>) {
    let (out, kept, _) = flex_forward_normed(x, None, weight, bias, add, spec, keep);
    (out, kept)
}

/// A group norm's affine map and constants, applied to a convolution's input first
/// ([`normed`]).
type Norm = (FlexTensor, FlexTensor, NormSpec);

/// [`flex_forward`] of the group norm of `x` when there is a `norm` (then SiLU where its spec
/// says; [`normed`]), and then also its groups' moments: on the direct kernels at stride 1 each
/// image normalised straight into the padded planes the convolution reads (and keeps), else
/// the group norm's output formed first (and kept in place of `x`).
fn flex_forward_normed(
    x: FlexTensor,
    norm: Option<Norm>,
    weight: FlexTensor,
    bias: FlexTensor,
    add: ConvAdd<FlexTensor>,
    spec: ConvSpec,
    keep: bool,
) -> (FlexTensor, Option<FlexTensor>, Option<FlexTensor>) {
    let (x, weight, bias) = (contiguous(x), contiguous(weight), contiguous(bias));
    let d = Dims::of(&x, &weight, spec);
    let add = match add {
        ConvAdd::Nothing => ConvAdd::Nothing,
        ConvAdd::Shift(shift) => {
            let shift = contiguous(shift);
            let rows = shift.shape()[0];
            assert!(
                shift.shape().num_elements() == rows * d.c_out && (rows == 1 || rows == d.n),
                "a shift of [1 or n, c_out]"
            );
            ConvAdd::Shift(shift)
        }
        ConvAdd::Residual(residual) => {
            let residual = contiguous(residual);
            assert_eq!(
                residual.shape().dims::<4>(),
                [d.n, d.c_out, d.h_out, d.w_out],
                "a residual of the output's shape"
            );
            ConvAdd::Residual(residual)
        }
    };
    let bias_values = values(&bias);
    let start = match &add {
        ConvAdd::Nothing => Start::Bias(bias_values),
        ConvAdd::Shift(shift) => Start::Shifted(bias_values, values(shift)),
        ConvAdd::Residual(residual) => Start::Residual(bias_values, values(residual)),
    };
    if let Some((gamma, beta, _)) = &norm {
        let (g, b) = (gamma.shape().num_elements(), beta.shape().num_elements());
        assert!(
            g == d.c_in && b == d.c_in,
            "a gamma and a beta per input channel: {g} and {b} for {} channels",
            d.c_in
        );
    }
    let ws = values(&weight);
    let (out, planes, input, moments) = match norm {
        None => {
            let (out, planes) = convolve_keeping(&d, values(&x), ws, start, keep);
            (out, planes, x, None)
        }
        Some((gamma, beta, norm)) if normed::fused(&d) => {
            let (gamma, beta) = (contiguous(gamma), contiguous(beta));
            let (out, planes, moments) =
                normed::convolve(&d, &x, (&gamma, &beta, norm), ws, start, keep);
            // the normalised input exists only as the planes
            assert!(
                !keep || planes.is_some(),
                "a normalised input's planes kept"
            );
            (out, planes, x, Some(moments))
        }
        Some((gamma, beta, norm)) => {
            let (gamma, beta) = (contiguous(gamma), contiguous(beta));
            let (z, moments) = crate::norm::forward_flex(&x, &gamma, &beta, norm);
            let (out, planes) = convolve_keeping(&d, values(&z), ws, start, keep);
            (out, planes, z, Some(moments))
        }
    };
    let out = FlexTensor::from_data(TensorData::new(out, [d.n, d.c_out, d.h_out, d.w_out]));
    let kept = keep.then(|| match planes {
        Some(planes) => {
            let plane = d.flat_geometry(1).plane;
            FlexTensor::from_data(TensorData::new(planes, [d.n, d.c_in, plane]))
        }
        // x, or the group norm's output where it was formed
        None => input,
    });
    (out, kept, moments)
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

/// The inner backend's forward pass that `add` names and, when the operation is `tracked`, its
/// state for the backward pass: `state` of what [`ConvBackward::conv2d_saving`] kept of the
/// input and the weights.
fn forward_recorded<B: ConvBackward, S>(
    [x, weight, bias]: [FloatTensor<B>; 3],
    add: ConvAdd<FloatTensor<B>>,
    spec: ConvSpec,
    tracked: bool,
    state: impl FnOnce(FloatTensor<B>, FloatTensor<B>) -> S,
) -> (FloatTensor<B>, Option<S>) {
    if !tracked {
        return (forward_plus::<B>(x, weight, bias, add, spec), None);
    }
    let (out, kept) = B::conv2d_saving(x, weight.clone(), bias, add, spec);
    (out, Some(state(kept, weight)))
}

impl<B: Backend + ConvBackward, C: CheckpointStrategy> FusedConv for Autodiff<B, C> {
    fn conv2d_fused(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        spec: ConvSpec,
    ) -> FloatTensor<Self> {
        record_op_saving::<B, C, _, 3>(
            ConvBackwardOp,
            [x, weight, bias],
            |[x, weight, bias], tracked| {
                let add = ConvAdd::Nothing;
                forward_recorded::<B, _>([x, weight, bias], add, spec, tracked, |kept, weight| {
                    (kept, weight, spec)
                })
            },
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
        record_op_saving::<B, C, _, 4>(
            ConvPlusBackwardOp,
            [x, weight, bias, shift],
            |[x, weight, bias, shift], tracked| {
                let add = ConvAdd::Shift(shift);
                forward_recorded::<B, _>([x, weight, bias], add, spec, tracked, |kept, weight| {
                    (kept, weight, spec, Added::Shift(rows))
                })
            },
        )
    }

    fn conv2d_residual(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        spec: ConvSpec,
    ) -> FloatTensor<Self> {
        record_op_saving::<B, C, _, 4>(
            ConvPlusBackwardOp,
            [x, weight, bias, residual],
            |[x, weight, bias, residual], tracked| {
                let add = ConvAdd::Residual(residual);
                forward_recorded::<B, _>([x, weight, bias], add, spec, tracked, |kept, weight| {
                    (kept, weight, spec, Added::Residual)
                })
            },
        )
    }
}
