//! A direct 3x3 convolution that keeps the image's size (stride 1, padding 1), and its weight
//! gradient, in AVX-512 or AVX2 registers: no column matrix, no packing.
//!
//! Each input plane is copied once into a zero-bordered plane `w + 2` wide, so that output
//! pixel `(y, x)`'s taps lie at the flat positions `q + ky (w + 2) + kx` of that plane, with
//! `q = y (w + 2) + x`: every tap is the same run of the plane, shifted. The output is computed
//! over the flat positions `q` (two columns a row of them past the image's edge, discarded
//! after), a block of output channels times a few vectors of positions held in registers
//! while the loop runs over input channels and taps: per tap one broadcast weight per channel
//! and one load per vector, a fused multiply-add per pair. The weights' gradient is the same
//! walk the other way: for a block of output channels (three with AVX-512, one with AVX2) and
//! one input channel, the output gradient (zero at the discarded positions) times the nine
//! shifted runs, summed in registers over every image of a task, then across lanes once.
//!
//! A convolution of stride 2 ([`Flat::halving`]) runs the same loops over the padded input's
//! four phase planes (its even and odd rows times its even and odd columns), where every tap is
//! again a run of one plane; its input gradient ([`Flat::unhalving`]) is a convolution of the
//! output gradient with four taps into the four phases of each input channel, interleaved
//! after ([`interleave_phases`]). The weight gradient reads the input planes either side by
//! side per channel or image by image, as the forward pass kept them ([`Flat::image_major`]).
//!
//! Sums run in another order than im2col's matrix product, so results agree with it to
//! rounding, not to the bit.

use std::mem::MaybeUninit;

use crate::math::Isa;

/// The kernel's side.
pub(crate) const K: usize = 3;
/// Taps of a kernel.
const TAPS: usize = K * K;
/// The widest vector, in lanes: flat runs are a multiple of it.
const MAX_LANES: usize = 16;
/// Output channels a forward block holds in registers (weights padded to a multiple of it).
pub(crate) const CO: usize = 4;
/// Output channels a weight-gradient block holds in registers.
pub(crate) const CG: usize = 3;

/// The flat geometry of one image.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Flat {
    pub c_in: usize,
    pub c_out: usize,
    pub h: usize,
    pub w: usize,
    /// The padded width `w + 2`.
    pub wp: usize,
    /// Flat output positions computed, `h wp` rounded up to [`MAX_LANES`].
    pub run: usize,
    /// Values per padded input plane: the run plus the farthest tap, rounded up.
    pub plane: usize,
    /// Images side by side: the planes `[c_in, images, plane]`, the flat output gradients
    /// `[c_out, images, run]`.
    pub images: usize,
    /// 1, or 2 for a convolution that halves the size: then `h`, `w` are the output's, each
    /// input channel's plane holds the padded image's four phase planes (its even and odd
    /// rows times its even and odd columns, [`pad_phases`]), `wp` wide, and tap `(ky, kx)`
    /// reads phase `(ky mod 2, kx mod 2)` at `taps[3 ky + kx]` past the output's position.
    pub stride: usize,
    /// The halving geometry's nine taps (which the kernels compute as a row's start plus a
    /// column's offset, [`tap`]), or in their first four places [`Flat::unhalving`]'s.
    pub taps: [usize; TAPS],
    /// Values per phase plane (stride 2).
    pub phase: usize,
    /// Where the weight gradient finds the input planes ([`weight_grad`]): channel `c` of
    /// image `j` at `c x_channel + j x_image`; `[c_in, images, plane]` (`images plane` and
    /// `plane`) unless [`Flat::image_major`].
    pub x_channel: usize,
    pub x_image: usize,
}

impl Flat {
    pub(crate) fn new(c_in: usize, c_out: usize, h: usize, w: usize, images: usize) -> Flat {
        let wp = w + K - 1;
        let run = (h * wp).next_multiple_of(MAX_LANES);
        let plane = (run + (K - 1) * (wp + 1)).next_multiple_of(MAX_LANES);
        Flat {
            c_in,
            c_out,
            h,
            w,
            wp,
            run,
            plane,
            images,
            stride: 1,
            taps: std::array::from_fn(|t| (t / K) * wp + t % K),
            phase: 0,
            x_channel: images * plane,
            x_image: plane,
        }
    }

    /// Its zero-bordered planes as a group norm writes them straight in
    /// ([`crate::norm_math::Padded`]), at stride 1.
    pub(crate) fn padded(&self) -> crate::norm_math::Padded {
        assert_eq!(
            self.stride, 1,
            "planes of a convolution that keeps the size"
        );
        crate::norm_math::Padded {
            h: self.h,
            w: self.w,
            wp: self.wp,
            plane: self.plane,
        }
    }

    /// The geometry of a 3x3 convolution of stride 2 and padding 1 of `h` x `w` images: the
    /// output `ceil(h / 2)` x `ceil(w / 2)` over the flat positions of the phase planes, each
    /// `ceil((w + 2) / 2)` wide (one column past the output's).
    pub(crate) fn halving(c_in: usize, c_out: usize, h: usize, w: usize, images: usize) -> Flat {
        let (h_out, w_out) = (h.div_ceil(2), w.div_ceil(2));
        let wp = (w + 2).div_ceil(2);
        let run = (h_out * wp).next_multiple_of(MAX_LANES);
        // the farthest tap is a row and a column on; the phase planes hold (h_out + 1) rows
        let phase = (run + wp + 1)
            .max((h_out + 1) * wp)
            .next_multiple_of(MAX_LANES);
        Flat {
            c_in,
            c_out,
            h: h_out,
            w: w_out,
            wp,
            run,
            plane: 4 * phase,
            images,
            stride: 2,
            taps: std::array::from_fn(|t| {
                let (ky, kx) = (t / K, t % K);
                ((ky % 2) * 2 + kx % 2) * phase + (ky / 2) * wp + kx / 2
            }),
            phase,
            x_channel: images * 4 * phase,
            x_image: 4 * phase,
        }
    }

    /// The geometry of a [`Flat::halving`] convolution's input gradient (the transposed
    /// convolution of stride 2) over the output gradient's rows as [`flat_rows`] lays them,
    /// read from each plane's first pixel on: output row `y` at `y wp`, zero past each row's
    /// end and after the last. Each input pixel `(2p + a, 2q + b)` (phase `(a, b)`) takes its
    /// gradient from the output positions `(p + di, q + dj)`, `di, dj` in 0 and 1: the four
    /// taps `0, 1, wp, wp + 1` past position `p wp + q`. So it is a convolution of the
    /// `c_out` gradient planes into `4 c_in` flat rows (channel `c`'s phase `(a, b)` at
    /// `4 c + 2 a + b`) with four taps ([`unhalving_weights`]), the halving geometry's run
    /// and planes.
    pub(crate) fn unhalving(&self) -> Flat {
        debug_assert_eq!(self.stride, 2);
        let mut taps = [0; TAPS];
        taps[..UNHALVING_TAPS].copy_from_slice(&[0, 1, self.wp, self.wp + 1]);
        Flat {
            c_in: self.c_out,
            c_out: 4 * self.c_in,
            taps,
            ..*self
        }
    }

    /// The geometry with the weight gradient's input planes `[images, c_in, plane]`: each
    /// image's padded planes as the forward pass lays them ([`pad_image`] with one image).
    pub(crate) fn image_major(self) -> Flat {
        Flat {
            x_channel: self.plane,
            x_image: self.c_in * self.plane,
            ..self
        }
    }

    /// Output channels rounded up to a multiple of `block`.
    pub(crate) fn c_out_padded(&self, block: usize) -> usize {
        self.c_out.next_multiple_of(block)
    }
}

/// f32 values in a 64-byte cache line.
pub(crate) const LINE: usize = 16;

/// How many values past `base` a buffer must start for its value at `offset` to begin a cache
/// line (fewer than [`LINE`]; `base` f32-aligned).
pub(crate) fn aligning(base: *const f32, offset: usize) -> usize {
    let at = base as usize / std::mem::size_of::<f32>() + offset;
    (LINE - at % LINE) % LINE
}

/// Whether this CPU runs the direct kernels.
pub(crate) fn available(isa: Isa) -> bool {
    cfg!(target_arch = "x86_64") && isa != Isa::Base
}

/// Whether the CPU has AVX-512VL beside AVX-512F: the AVX-512 kernels are compiled with it, so
/// that the accumulators may take all 32 vector registers (without it, the zeroing that
/// starts them is a 128-bit instruction limited to the first 16).
#[cfg(target_arch = "x86_64")]
pub(super) fn has_vl() -> bool {
    std::is_x86_feature_detected!("avx512vl")
}

/// Copies `image` (`[c_in, h, w]`) into its place `j` of `planes` (`[c_in, images, plane]`),
/// each plane zero-bordered.
pub(crate) fn pad_image(f: &Flat, image: &[f32], j: usize, planes: &mut [f32]) {
    // SAFETY: `pad_image_into` writes only f32 values
    pad_image_into(f, image, j, unsafe { as_uninit(planes) });
}

/// `values` as memory to write f32 values into.
///
/// # Safety
/// Whatever is written through the result must be an initialised value: `values` is read as
/// f32 after.
pub(crate) unsafe fn as_uninit(values: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: MaybeUninit<f32> has f32's layout; the caller writes only initialised values
    unsafe { &mut *(values as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// [`pad_image`] into memory that may hold nothing yet: every value of the image's planes is
/// written.
pub(crate) fn pad_image_into(f: &Flat, image: &[f32], j: usize, planes: &mut [MaybeUninit<f32>]) {
    let (h, w, wp) = (f.h, f.w, f.wp);
    let stride = f.images * f.plane;
    // planes one value wider on each side, a place for every channel of the image
    assert!(f.stride == 1 && wp == w + 2 && j < f.images);
    assert!(h * w > 0 && image.len().is_multiple_of(h * w));
    assert!(planes.len() >= image.len() / (h * w) * stride);
    let zero = MaybeUninit::new(0.0);
    let dsts = planes
        .chunks_exact_mut(stride)
        .map(|c| &mut c[j * f.plane..][..f.plane]);
    for (src, dst) in image.chunks_exact(h * w).zip(dsts) {
        // the top border row and the first row's left border
        dst[..wp + 1].fill(zero);
        for y in 0..h {
            let at = (y + 1) * wp + 1;
            // the row, its right border and the next row's left border
            row_and_two_zeros(&mut dst[at..at + w + 2], &src[y * w..(y + 1) * w]);
        }
        dst[(h + 1) * wp + 1..].fill(zero);
    }
}

/// Copies `image` (`[c_in, h, w]`, the input sides of a [`Flat::halving`] geometry) into its
/// place `j` of `planes` (`[c_in, images, 4 phase planes]`): padded by one, the image's even
/// and odd rows times its even and odd columns, each phase plane `wp` wide, zero elsewhere.
pub(crate) fn pad_phases(
    f: &Flat,
    image: &[f32],
    (h, w): (usize, usize),
    j: usize,
    planes: &mut [MaybeUninit<f32>],
) {
    debug_assert_eq!(f.stride, 2);
    let stride = f.images * f.plane;
    let dsts = planes
        .chunks_exact_mut(stride)
        .map(|c| &mut c[j * f.plane..][..f.plane]);
    for (src, dst) in image.chunks_exact(h * w).zip(dsts) {
        dst.fill(MaybeUninit::new(0.0));
        for (y, row) in src.chunks_exact(w).enumerate() {
            // padded row y + 1: phase row (y + 1) mod 2, at (y + 1) / 2 (= ceil(y / 2))
            let (a, i) = ((y + 1) % 2, y.div_ceil(2));
            // padded column x + 1: odd for even x (phase 2a + 1 at x / 2), even for odd x
            // (phase 2a at (x + 1) / 2)
            let (even, odd) = dst[2 * a * f.phase..].split_at_mut(f.phase);
            let (even, odd) = (&mut even[i * f.wp..][..f.wp], &mut odd[i * f.wp..][..f.wp]);
            for (k, pair) in row.chunks_exact(2).enumerate() {
                odd[k] = MaybeUninit::new(pair[0]);
                even[k + 1] = MaybeUninit::new(pair[1]);
            }
            if w % 2 == 1 {
                odd[w / 2] = MaybeUninit::new(row[w - 1]);
            }
        }
    }
}

/// Copies `g` (`[c_out, h, w]`, a [`Flat::halving`] convolution's output gradient) into its
/// place `j` of `gplanes` (`[c_out, images, plane]`) as [`weight_grad`] reads it: from
/// position `wp + 1` on, its rows `wp` apart, zero between them and after.
pub(crate) fn flat_rows(f: &Flat, g: &[f32], j: usize, gplanes: &mut [f32]) {
    let stride = f.images * f.plane;
    let dsts = gplanes
        .chunks_exact_mut(stride)
        .map(|c| &mut c[j * f.plane..][..f.plane]);
    for (src, dst) in g.chunks_exact(f.h * f.w).zip(dsts) {
        dst.fill(0.0);
        for (y, row) in src.chunks_exact(f.w).enumerate() {
            let at = f.wp + 1 + y * f.wp;
            dst[at..at + f.w].copy_from_slice(row);
        }
    }
}

/// `dst` (`src.len() + 2` values) set to `src` and two zeros, in moves of eight values: rows
/// are short (28 values or fewer here), and a call to memcpy per row costs as much as the copy.
#[inline(always)]
fn row_and_two_zeros(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    let (dst, zeros) = dst.split_at_mut(src.len());
    zeros[..2].fill(MaybeUninit::new(0.0));
    let (mut d, mut s) = (dst.chunks_exact_mut(8), src.chunks_exact(8));
    for (d, s) in (&mut d).zip(&mut s) {
        let eight: [f32; 8] = s.try_into().expect("eight values");
        d.copy_from_slice(&eight.map(MaybeUninit::new));
    }
    let (d, s) = (d.into_remainder(), s.remainder());
    // a fixed count, unrolled: no loop to turn into memcpy
    for k in 0..7 {
        if k < s.len() {
            d[k] = MaybeUninit::new(s[k]);
        }
    }
}

/// Zeroes the planes of channels `from..` of `planes` (`[channels, images, plane]`): the
/// padding channels of a weight gradient's [`weight_grad`] reads.
pub(crate) fn zero_planes(f: &Flat, from: usize, planes: &mut [f32]) {
    planes[from * f.images * f.plane..].fill(0.0);
}

/// The weights `[c_out, c_in, 3, 3]` as the forward kernel reads them: `[c_out / CO, c_in,
/// 9, CO]`, the channels past `c_out` zero.
pub(crate) fn block_weights(f: &Flat, ws: &[f32]) -> Vec<f32> {
    let blocks = f.c_out_padded(CO) / CO;
    let mut out = vec![0.0f32; blocks * f.c_in * TAPS * CO];
    for co in 0..f.c_out {
        let (b, c) = (co / CO, co % CO);
        for ci in 0..f.c_in {
            for tap in 0..TAPS {
                out[((b * f.c_in + ci) * TAPS + tap) * CO + c] =
                    ws[(co * f.c_in + ci) * TAPS + tap];
            }
        }
    }
    out
}

/// Taps of the halving convolution's input gradient ([`Flat::unhalving`]).
pub(crate) const UNHALVING_TAPS: usize = 4;

/// The 3x3 kernel's row (or column) that output offset `d` (0 or 1) reaches from an input
/// pixel of phase `a`: padded input row `2 i + ky` is pixel row `2 i + ky - 1`, so an even
/// row (`a` = 0) takes `ky` = 1 from output row `p`, an odd one `ky` = 2 from `p` and
/// `ky` = 0 from `p + 1`.
fn unhalving_tap(a: usize, d: usize) -> Option<usize> {
    match (a, d) {
        (0, 0) => Some(1),
        (1, 0) => Some(2),
        (1, 1) => Some(0),
        _ => None,
    }
}

/// The weights `[c_out, c_in, 3, 3]` of a [`Flat::halving`] convolution as its input
/// gradient's kernel reads them ([`Flat::unhalving`] `u`): `[4 c_in / CO, c_out, 4, CO]`,
/// zero where a phase takes nothing from a tap and in the padding channels.
pub(crate) fn unhalving_weights(u: &Flat, ws: &[f32]) -> Vec<f32> {
    let (c_grad, c_in) = (u.c_in, u.c_out / 4);
    let nt = UNHALVING_TAPS;
    let mut out = vec![0.0f32; u.c_out_padded(CO) * c_grad * nt];
    for k in 0..u.c_out {
        let (c, a, b) = (k / 4, (k % 4) / 2, k % 2);
        let (block, lane) = (k / CO, k % CO);
        for o in 0..c_grad {
            for t in 0..nt {
                let (di, dj) = (t / 2, t % 2);
                if let (Some(ky), Some(kx)) = (unhalving_tap(a, di), unhalving_tap(b, dj)) {
                    out[((block * c_grad + o) * nt + t) * CO + lane] =
                        ws[((o * c_in + c) * K + ky) * K + kx];
                }
            }
        }
    }
    out
}

/// One image's halving-convolution input gradient as flat rows: `out` `[4 c_in padded to CO,
/// run]` (channel `c`'s phase `(a, b)` at row `4 c + 2 a + b`) from the output gradient's
/// rows `grows` (`[c_out, images, plane]` from the image's own plane on, laid as
/// [`Flat::unhalving`] reads them) and the weights from [`unhalving_weights`]; AVX2 or AVX-512.
pub(crate) fn unhalving(isa: Isa, u: &Flat, grows: &[f32], wt: &[f32], out: &mut [f32]) {
    assert!(
        u.stride == 2 && u.taps[..UNHALVING_TAPS] == [0, 1, u.wp, u.wp + 1],
        "the geometry of `Flat::unhalving`"
    );
    // the farthest tap, a row and a column on, past the run's last position
    let reach = u.run + u.wp + 1;
    assert!(u.c_in == 0 || grows.len() >= (u.c_in - 1) * u.images * u.plane + reach);
    assert!(wt.len() >= u.c_out_padded(CO) * u.c_in * UNHALVING_TAPS);
    assert!(out.len() >= u.c_out_padded(CO) * u.run);
    #[cfg(target_arch = "x86_64")]
    {
        const NT: usize = UNHALVING_TAPS;
        #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
        fn avx512(u: &Flat, grows: &[f32], wt: &[f32], out: &mut [f32]) {
            let rows = FlatRows::blocks(out, u.run);
            // SAFETY: the sizes were checked above; the CPU has AVX-512F
            unsafe { forward_image::<x86::Avx512, 6, _, true, NT>(u, grows, wt, rows) }
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2(u: &Flat, grows: &[f32], wt: &[f32], out: &mut [f32]) {
            let rows = FlatRows::blocks(out, u.run);
            // SAFETY: the sizes were checked above; the CPU has AVX2 and FMA
            unsafe { forward_image::<x86::Avx2, 2, _, true, NT>(u, grows, wt, rows) }
        }
        match isa {
            // SAFETY (both): `isa` is at most what `Isa::detect` found on this CPU, AVX-512 with
            // VL checked
            Isa::Avx512 if has_vl() => return unsafe { avx512(u, grows, wt, out) },
            Isa::Avx512 | Isa::Avx2 => return unsafe { avx2(u, grows, wt, out) },
            Isa::Base => {}
        }
    }
    let _ = (u, grows, wt, out);
    unreachable!("the direct kernels run on AVX2 or AVX-512 only (`available`)")
}

/// Writes an `h` x `w` image's input gradient `dx` (`[c_in, h, w]`) from [`unhalving`]'s
/// flat rows: pixel `(2p + a, 2q + b)` of channel `c` from row `4 c + 2 a + b` at `p wp + q`.
pub(crate) fn interleave_phases(u: &Flat, rows: &[f32], (h, w): (usize, usize), dx: &mut [f32]) {
    for (c, plane) in dx.chunks_exact_mut(h * w).enumerate() {
        for (y, line) in plane.chunks_exact_mut(w).enumerate() {
            let (p, a) = (y / 2, y % 2);
            let half = w / 2;
            let even = &rows[(4 * c + 2 * a) * u.run + p * u.wp..][..w - half];
            let odd = &rows[(4 * c + 2 * a + 1) * u.run + p * u.wp..][..half];
            for (pair, (&e, &o)) in line.chunks_exact_mut(2).zip(even.iter().zip(odd)) {
                pair[0] = e;
                pair[1] = o;
            }
            if w % 2 == 1 {
                line[w - 1] = even[half];
            }
        }
    }
}

/// Checks that `planes` holds an image's `c_in` padded planes (`f.images` side by side) and
/// `wt` the blocked weights ([`block_weights`]), as the forward kernels read them.
fn check_operands(f: &Flat, planes: &[f32], wt: &[f32]) {
    assert!(f.c_in == 0 || planes.len() >= (f.c_in - 1) * f.images * f.plane + f.plane);
    assert!(wt.len() >= f.c_out_padded(CO) * f.c_in * TAPS);
}

/// One image's convolution over the flat positions: `out` `[c_out padded to CO, run]` from
/// the padded planes `planes` (`[c_in, images, plane]` from the image's own plane on: the
/// first of `f.images` side by side) and the blocked weights `wt`.
pub(crate) fn forward(isa: Isa, f: &Flat, planes: &[f32], wt: &[f32], out: &mut [f32]) {
    check_operands(f, planes, wt);
    assert!(out.len() >= f.c_out_padded(CO) * f.run);
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
        fn avx512(f: &Flat, planes: &[f32], wt: &[f32], out: &mut [f32]) {
            let rows = FlatRows::blocks(out, f.run);
            // SAFETY: the sizes were checked above; the CPU has AVX-512F
            unsafe {
                match f.stride {
                    1 => forward_image::<x86::Avx512, 6, _, false, TAPS>(f, planes, wt, rows),
                    _ => forward_image::<x86::Avx512, 6, _, true, TAPS>(f, planes, wt, rows),
                }
            }
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2(f: &Flat, planes: &[f32], wt: &[f32], out: &mut [f32]) {
            let rows = FlatRows::blocks(out, f.run);
            // SAFETY: the sizes were checked above; the CPU has AVX2 and FMA
            unsafe {
                match f.stride {
                    1 => forward_image::<x86::Avx2, 2, _, false, TAPS>(f, planes, wt, rows),
                    _ => forward_image::<x86::Avx2, 2, _, true, TAPS>(f, planes, wt, rows),
                }
            }
        }
        match isa {
            // SAFETY (both): `isa` is at most what `Isa::detect` found on this CPU, AVX-512 with
            // VL checked
            Isa::Avx512 if has_vl() => return unsafe { avx512(f, planes, wt, out) },
            Isa::Avx512 => return unsafe { avx2(f, planes, wt, out) },
            Isa::Avx2 => return unsafe { avx2(f, planes, wt, out) },
            Isa::Base => {}
        }
    }
    let _ = (f, planes, wt, out);
    unreachable!("the direct kernels run on AVX2 or AVX-512 only (`available`)")
}

/// Per vector of 16 flat positions: which are pixels (not the two past each row's end, nor
/// past the image), and how many pixels come before it: where [`forward_into`] puts each
/// vector of sums.
pub(crate) struct Layout {
    masks: Vec<u16>,
    offsets: Vec<usize>,
}

impl Layout {
    pub(crate) fn new(f: &Flat) -> Layout {
        let (mut masks, mut offsets, mut before) = (Vec::new(), Vec::new(), 0);
        for k in 0..f.run / MAX_LANES {
            let mut mask = 0u16;
            for lane in 0..MAX_LANES {
                let q = k * MAX_LANES + lane;
                if q / f.wp < f.h && q % f.wp < f.w {
                    mask |= 1 << lane;
                }
            }
            masks.push(mask);
            offsets.push(before);
            before += mask.count_ones() as usize;
        }
        Layout { masks, offsets }
    }
}

/// One image's convolution straight into its output `out` (`[c_out, h, w]`), each channel
/// `c` starting at `base[c]` plus, where there is one, `residual`'s value at the same place
/// (`(residual + base) + sums`, as [`forward`]'s flat rows and their copy would give), with
/// AVX-512: returns false and writes nothing on another CPU, where the caller goes through
/// [`forward`].
#[allow(clippy::too_many_arguments)] // the operands of one image's convolution
pub(crate) fn forward_into(
    isa: Isa,
    f: &Flat,
    planes: &[f32],
    wt: &[f32],
    layout: &Layout,
    base: &[f32],
    residual: Option<&[f32]>,
    out: &mut [std::mem::MaybeUninit<f32>],
) -> bool {
    let pixels = f.h * f.w;
    check_operands(f, planes, wt);
    assert!(base.len() == f.c_out && out.len() == f.c_out * pixels);
    assert!(residual.is_none_or(|r| r.len() == out.len()));
    assert_eq!(
        layout.masks.len(),
        f.run / MAX_LANES,
        "the layout of this geometry"
    );
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
        fn avx512(
            f: &Flat,
            (planes, wt): (&[f32], &[f32]),
            layout: &Layout,
            (base, residual): (&[f32], Option<&[f32]>),
            out: &mut [std::mem::MaybeUninit<f32>],
        ) {
            let pixels = f.h * f.w;
            let op = out.as_mut_ptr().cast::<f32>();
            // SAFETY (the offsets): block b's first channel lies inside the checked lengths
            let sink = |b: usize| x86::Compressed {
                out: unsafe { op.add(b * CO * pixels) },
                residual: residual.map(|r| unsafe { r.as_ptr().add(b * CO * pixels) }),
                base: &base[b * CO..((b + 1) * CO).min(f.c_out)],
                pixels,
                layout,
            };
            // SAFETY: the sizes were checked above; the CPU has AVX-512F
            unsafe {
                match f.stride {
                    1 => forward_image::<x86::Avx512, 6, _, false, TAPS>(f, planes, wt, sink),
                    _ => forward_image::<x86::Avx512, 6, _, true, TAPS>(f, planes, wt, sink),
                }
            }
        }
        if isa == Isa::Avx512 && has_vl() {
            // SAFETY: `isa` is at most what `Isa::detect` found on this CPU, VL checked
            unsafe { avx512(f, (planes, wt), layout, (base, residual), out) };
            return true;
        }
    }
    let _ = (isa, f, planes, wt, layout, base, residual, out);
    false
}

/// Adds the images' weight gradient to `dw` (`[c_out, c_in, 3, 3]`) from their padded planes
/// (laid as `f.x_channel` and `f.x_image` say) and their output gradients' padded planes
/// `gplanes` (`[c_out padded to CG, images, plane]`, zero in the padding channels; from
/// [`pad_image`] and [`zero_planes`]): read from its first pixel on, a padded plane is the
/// gradient over the flat positions, zero at the discarded ones.
pub(crate) fn weight_grad(isa: Isa, f: &Flat, planes: &[f32], gplanes: &[f32], dw: &mut [f32]) {
    assert!(planes.len() >= f.c_in * f.images * f.plane);
    assert!(gplanes.len() >= f.c_out_padded(CG) * f.images * f.plane);
    let gflat = &gplanes[f.wp + 1..];
    assert!(dw.len() >= f.c_out * f.c_in * TAPS);
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
        fn avx512(f: &Flat, planes: &[f32], gflat: &[f32], dw: &mut [f32]) {
            // blocks of three channels, the last four or two in blocks of two when the count
            // is not a multiple of three (so no block computes a padding channel, but for a
            // single channel, whose block of three reads two)
            let tail = match f.c_out % CG {
                1 if f.c_out > 1 => 4,
                2 => 2,
                _ => 0,
            };
            let split = f.c_out - tail;
            // SAFETY: the sizes were checked above; the CPU has AVX-512F
            unsafe {
                if f.stride == 1 {
                    weight_grad_image::<x86::Avx512, CG, { CG * TAPS }, false>(
                        f,
                        planes,
                        gflat,
                        dw,
                        0..split,
                    );
                    weight_grad_image::<x86::Avx512, 2, { 2 * TAPS }, false>(
                        f,
                        planes,
                        gflat,
                        dw,
                        split..f.c_out,
                    );
                } else {
                    weight_grad_image::<x86::Avx512, CG, { CG * TAPS }, true>(
                        f,
                        planes,
                        gflat,
                        dw,
                        0..split,
                    );
                    weight_grad_image::<x86::Avx512, 2, { 2 * TAPS }, true>(
                        f,
                        planes,
                        gflat,
                        dw,
                        split..f.c_out,
                    );
                }
            }
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2(f: &Flat, planes: &[f32], gflat: &[f32], dw: &mut [f32]) {
            // SAFETY: the sizes were checked above; the CPU has AVX2 and FMA
            unsafe {
                match f.stride {
                    1 => weight_grad_image::<x86::Avx2, 1, TAPS, false>(
                        f,
                        planes,
                        gflat,
                        dw,
                        0..f.c_out,
                    ),
                    _ => weight_grad_image::<x86::Avx2, 1, TAPS, true>(
                        f,
                        planes,
                        gflat,
                        dw,
                        0..f.c_out,
                    ),
                }
            }
        }
        match isa {
            // SAFETY (both): `isa` is at most what `Isa::detect` found on this CPU, AVX-512 with
            // VL checked
            Isa::Avx512 if has_vl() => return unsafe { avx512(f, planes, gflat, dw) },
            Isa::Avx512 => return unsafe { avx2(f, planes, gflat, dw) },
            Isa::Avx2 => return unsafe { avx2(f, planes, gflat, dw) },
            Isa::Base => {}
        }
    }
    let _ = (f, planes, gflat, dw);
    unreachable!("the direct kernels run on AVX2 or AVX-512 only (`available`)")
}

/// A vector of f32 lanes.
pub(in crate::conv) trait Vector: Copy {
    const LANES: usize;
    unsafe fn zero() -> Self;
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn splat(v: f32) -> Self;
    /// `a b + self`
    unsafe fn fma(self, a: Self, b: Self) -> Self;
    unsafe fn store(self, p: *mut f32);
    unsafe fn sum(self) -> f32;
    /// Each of 16 vectors' [`Vector::sum`], bit for bit.
    #[inline(always)]
    unsafe fn sums16(a: &[Self; 16]) -> [f32; 16] {
        unsafe { std::array::from_fn(|k| a[k].sum()) }
    }
    unsafe fn add(self, other: Self) -> Self;
    unsafe fn mul(self, other: Self) -> Self;
}

#[cfg(target_arch = "x86_64")]
pub(in crate::conv) mod x86 {
    use super::Vector;
    use std::arch::x86_64::*;

    #[derive(Clone, Copy)]
    pub(in crate::conv) struct Avx512(__m512);

    /// A block's channels of the output `[c_out, h, w]` itself: each vector of flat positions
    /// with its discarded positions squeezed out (AVX-512's compress) and stored at its first
    /// pixel's place, plus the channel's start value and the residual there.
    pub(super) struct Compressed<'a> {
        /// The block's first channel's plane, and the residual's.
        pub out: *mut f32,
        pub residual: Option<*const f32>,
        /// The start values of the block's channels (fewer than `CO` in the last block).
        pub base: &'a [f32],
        pub pixels: usize,
        pub layout: &'a super::Layout,
    }

    impl super::Sink<Avx512> for Compressed<'_> {
        #[inline(always)]
        unsafe fn put(&self, c: usize, q: usize, value: Avx512) {
            if c >= self.base.len() {
                return;
            }
            let k = q / 16;
            let (mask, at) = (self.layout.masks[k], self.layout.offsets[k]);
            if mask == 0 {
                return;
            }
            // SAFETY: the vector's pixels lie in channel c's plane, from `at` on
            unsafe {
                let first = ((1u32 << mask.count_ones()) - 1) as u16;
                let sums = _mm512_maskz_compress_ps(mask, value.0);
                let base = _mm512_set1_ps(self.base[c]);
                let start = match self.residual {
                    Some(r) => _mm512_add_ps(
                        _mm512_maskz_loadu_ps(first, r.add(c * self.pixels + at)),
                        base,
                    ),
                    None => base,
                };
                let dst = self.out.add(c * self.pixels + at);
                _mm512_mask_storeu_ps(dst, first, _mm512_add_ps(start, sums));
            }
        }
    }
    #[derive(Clone, Copy)]
    pub(in crate::conv) struct Avx2(__m256);

    // SAFETY (every method): called only from functions compiled with the features named
    impl Vector for Avx512 {
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> Self {
            unsafe { Avx512(_mm512_setzero_ps()) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            unsafe { Avx512(_mm512_loadu_ps(p)) }
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            unsafe { Avx512(_mm512_set1_ps(v)) }
        }
        #[inline(always)]
        unsafe fn fma(self, a: Self, b: Self) -> Self {
            unsafe { Avx512(_mm512_fmadd_ps(a.0, b.0, self.0)) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm512_storeu_ps(p, self.0) }
        }
        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            unsafe { _mm512_reduce_add_ps(self.0) }
        }
        /// The 16 sums at once, in [`Vector::sum`]'s tree (lanes `l` and `l + 8`, then `l`
        /// and `l + 4`, `l` and `l + 2`, `l` and `l + 1`), each level one add for every two
        /// vectors: two of them side by side in a vector, their halves brought together by
        /// two shuffles. Sum `k` ends in lane `4 (k mod 4) + k / 4`.
        #[inline(always)]
        unsafe fn sums16(a: &[Self; 16]) -> [f32; 16] {
            unsafe {
                let v: [__m512; 16] = std::array::from_fn(|k| a[k].0);
                // quarters 0, 1 and 2, 3 of each: lanes l and l + 8
                let mut l8 = [_mm512_setzero_ps(); 8];
                for (p, s) in l8.iter_mut().enumerate() {
                    let (x, y) = (v[2 * p], v[2 * p + 1]);
                    let lo = _mm512_shuffle_f32x4::<0b01_00_01_00>(x, y);
                    *s = _mm512_add_ps(lo, _mm512_shuffle_f32x4::<0b11_10_11_10>(x, y));
                }
                // quarters 0, 2 and 1, 3: lanes l and l + 4
                let mut l4 = [_mm512_setzero_ps(); 4];
                for (p, s) in l4.iter_mut().enumerate() {
                    let (x, y) = (l8[2 * p], l8[2 * p + 1]);
                    let lo = _mm512_shuffle_f32x4::<0b10_00_10_00>(x, y);
                    *s = _mm512_add_ps(lo, _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y));
                }
                // each quarter's low and high pair of values: lanes l and l + 2
                let mut l2 = [_mm512_setzero_ps(); 2];
                for (p, s) in l2.iter_mut().enumerate() {
                    let x = _mm512_castps_pd(l4[2 * p]);
                    let y = _mm512_castps_pd(l4[2 * p + 1]);
                    let lo = _mm512_castpd_ps(_mm512_unpacklo_pd(x, y));
                    *s = _mm512_add_ps(lo, _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
                }
                // each pair's two values: lanes l and l + 1
                let (x, y) = (l2[0], l2[1]);
                let lo = _mm512_shuffle_ps::<0b10_00_10_00>(x, y);
                let all = _mm512_add_ps(lo, _mm512_shuffle_ps::<0b11_01_11_01>(x, y));
                let mut lanes = [0.0f32; 16];
                _mm512_storeu_ps(lanes.as_mut_ptr(), all);
                std::array::from_fn(|k| lanes[4 * (k % 4) + k / 4])
            }
        }
        #[inline(always)]
        unsafe fn add(self, other: Self) -> Self {
            unsafe { Avx512(_mm512_add_ps(self.0, other.0)) }
        }
        #[inline(always)]
        unsafe fn mul(self, other: Self) -> Self {
            unsafe { Avx512(_mm512_mul_ps(self.0, other.0)) }
        }
    }

    impl Vector for Avx2 {
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> Self {
            unsafe { Avx2(_mm256_setzero_ps()) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            unsafe { Avx2(_mm256_loadu_ps(p)) }
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            unsafe { Avx2(_mm256_set1_ps(v)) }
        }
        #[inline(always)]
        unsafe fn fma(self, a: Self, b: Self) -> Self {
            unsafe { Avx2(_mm256_fmadd_ps(a.0, b.0, self.0)) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm256_storeu_ps(p, self.0) }
        }
        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            unsafe {
                let half = _mm_add_ps(
                    _mm256_castps256_ps128(self.0),
                    _mm256_extractf128_ps(self.0, 1),
                );
                let pairs = _mm_add_ps(half, _mm_movehl_ps(half, half));
                _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1)))
            }
        }
        #[inline(always)]
        unsafe fn add(self, other: Self) -> Self {
            unsafe { Avx2(_mm256_add_ps(self.0, other.0)) }
        }
        #[inline(always)]
        unsafe fn mul(self, other: Self) -> Self {
            unsafe { Avx2(_mm256_mul_ps(self.0, other.0)) }
        }
    }
}

/// Where a tile's sums go: [`FlatRows`] (the flat output, every position) or, with
/// AVX-512, [`x86::Compressed`] (the output itself, the discarded positions squeezed out).
trait Sink<V: Vector> {
    /// Stores the sums `value` of the block's channel `c` at the flat positions from `q`.
    ///
    /// # Safety
    /// `c` is under [`CO`]; the positions lie in the run.
    unsafe fn put(&self, c: usize, q: usize, value: V);
}

/// A block's `CO` rows of the flat output `[c_out padded to CO, run]`, from `ob`.
struct FlatRows {
    ob: *mut f32,
    run: usize,
}

impl FlatRows {
    /// Each block's rows of `out` (`[c_out padded to CO, run]`).
    fn blocks(out: &mut [f32], run: usize) -> impl Fn(usize) -> FlatRows {
        let ob = out.as_mut_ptr();
        move |b| FlatRows {
            ob: ob.wrapping_add(b * CO * run),
            run,
        }
    }
}

impl<V: Vector> Sink<V> for FlatRows {
    #[inline(always)]
    unsafe fn put(&self, c: usize, q: usize, value: V) {
        // SAFETY: the caller's: row c of the block, position q in the run
        unsafe { value.store(self.ob.add(c * self.run + q)) }
    }
}

/// Where tap `(ky, kx)` lies past a position: `ky wp + kx` in the padded plane (a constant
/// stride per row), or in its phase plane ([`Flat::halving`]).
#[inline(always)]
fn tap<const HALF: bool>(f: &Flat, ky: usize, kx: usize) -> usize {
    if HALF {
        // `f.taps[3 ky + kx]` as a row's start plus a column's offset: padded rows 0 and 2
        // lie in the even-row phases (row 2 a phase row on), row 1 in the odd-row ones;
        // padded columns 0 and 2 in the even-column phase (column 2 a value on), column 1 in
        // the odd one. So the nine loads need three row pointers and one stride, not nine
        // offsets held in registers.
        let row = [0, 2 * f.phase, f.wp][ky];
        let column = [0, f.phase, 1][kx];
        row + column
    } else {
        ky * f.wp + kx
    }
}

/// [`forward`]'s work: for each block of [`CO`] output channels (its sink from `sink`), the
/// flat run in tiles of `NV` vectors, the last tile shorter; `NT` taps a channel (the nine of a
/// 3x3 kernel, or [`Flat::unhalving`]'s four from `f.taps`), the weights `[c_out / CO, c_in,
/// NT, CO]`.
///
/// # Safety
/// The slices hold what [`forward`] (nine taps) or [`unhalving`] (four) checks; the CPU runs
/// `V`; each block's sink takes its `CO` channels at every position of the run.
#[inline(always)]
unsafe fn forward_image<
    V: Vector,
    const NV: usize,
    S: Sink<V>,
    const HALF: bool,
    const NT: usize,
>(
    f: &Flat,
    planes: &[f32],
    wt: &[f32],
    sink: impl Fn(usize) -> S,
) {
    let vectors = f.run / V::LANES;
    let xp = planes.as_ptr();
    for b in 0..f.c_out_padded(CO) / CO {
        // SAFETY: block b's weights lie inside the checked length
        let wb = unsafe { wt.as_ptr().add(b * f.c_in * NT * CO) };
        let sink = sink(b);
        // the run in as few tiles as `NV` vectors allow, of sizes that differ by one at most
        // (14 vectors as 5, 5, 4 rather than 6, 6, 2: a short tile has too few sums to hide
        // the multiply-adds' latency behind)
        let tiles = vectors.div_ceil(NV);
        let mut v = 0;
        for t in 0..tiles {
            let len = vectors / tiles + usize::from(t < vectors % tiles);
            let q0 = v * V::LANES;
            // SAFETY: the tile's vectors lie inside the run, its taps inside the planes
            unsafe {
                match len {
                    len if len == NV => forward_tile::<V, NV, S, HALF, NT>(f, xp, wb, &sink, q0),
                    1 => forward_tile::<V, 1, S, HALF, NT>(f, xp, wb, &sink, q0),
                    2 => forward_tile::<V, 2, S, HALF, NT>(f, xp, wb, &sink, q0),
                    3 => forward_tile::<V, 3, S, HALF, NT>(f, xp, wb, &sink, q0),
                    4 => forward_tile::<V, 4, S, HALF, NT>(f, xp, wb, &sink, q0),
                    5 => forward_tile::<V, 5, S, HALF, NT>(f, xp, wb, &sink, q0),
                    6 => forward_tile::<V, 6, S, HALF, NT>(f, xp, wb, &sink, q0),
                    7 => forward_tile::<V, 7, S, HALF, NT>(f, xp, wb, &sink, q0),
                    _ => unreachable!("a tile holds at most NV vectors"),
                }
            }
            v += len;
        }
        debug_assert_eq!(v, vectors);
    }
}

/// `CO` output channels times `NV` vectors of flat positions from `q0`, summed over every
/// input channel and each of its `NT` taps in registers, then put into the sink.
///
/// # Safety
/// `xp` holds `c_in` planes reaching every tap past the run, `wb` a block's weights; the
/// positions `q0 .. q0 + NV lanes` lie in the run.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // registers indexed [channel][vector]
unsafe fn forward_tile<
    V: Vector,
    const NV: usize,
    S: Sink<V>,
    const HALF: bool,
    const NT: usize,
>(
    f: &Flat,
    xp: *const f32,
    wb: *const f32,
    sink: &S,
    q0: usize,
) {
    unsafe {
        let mut acc = [[V::zero(); NV]; CO];
        for ci in 0..f.c_in {
            let x = xp.add(ci * f.images * f.plane + q0);
            let w = wb.add(ci * NT * CO);
            if NT == TAPS {
                for ky in 0..K {
                    for kx in 0..K {
                        let xs = x.add(tap::<HALF>(f, ky, kx));
                        add_tap(&mut acc, xs, w.add((ky * K + kx) * CO));
                    }
                }
            } else {
                // the taps of [`Flat::unhalving`], listed in `f.taps` (one loop over computed
                // offsets for both made the 3x3 kernels 3-4 % slower)
                for t in 0..NT {
                    add_tap(&mut acc, x.add(f.taps[t]), w.add(t * CO));
                }
            }
        }
        for (c, row) in acc.iter().enumerate() {
            for (v, &a) in row.iter().enumerate() {
                sink.put(c, q0 + v * V::LANES, a);
            }
        }
    }
}

/// One tap's products added to a tile's sums: the tap's `CO` weights from `wk` broadcast, each
/// of the `NV` vectors of positions from `xs` loaded once.
///
/// # Safety
/// `wk` holds `CO` weights, `xs` `NV` vectors; the CPU runs `V`.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // registers indexed [channel][vector]
unsafe fn add_tap<V: Vector, const NV: usize>(
    acc: &mut [[V; NV]; CO],
    xs: *const f32,
    wk: *const f32,
) {
    unsafe {
        let mut ws = [V::zero(); CO];
        for (c, wc) in ws.iter_mut().enumerate() {
            *wc = V::splat(*wk.add(c));
        }
        for v in 0..NV {
            let xv = V::load(xs.add(v * V::LANES));
            for c in 0..CO {
                acc[c][v] = acc[c][v].fma(ws[c], xv);
            }
        }
    }
}

/// [`weight_grad`]'s work for the output channels `channels`: for each block of `G` of them
/// and each input channel, the `G` times 9 products summed over every image's run in
/// registers, then across lanes.
///
/// # Safety
/// The slices hold what [`weight_grad`] checks; the CPU runs `V`; a block past the channels'
/// end reads padding channels of `gflat` (zero).
#[inline(always)]
unsafe fn weight_grad_image<V: Vector, const G: usize, const A: usize, const HALF: bool>(
    f: &Flat,
    planes: &[f32],
    gflat: &[f32],
    dw: &mut [f32],
    channels: std::ops::Range<usize>,
) {
    let (xp, gp) = (planes.as_ptr(), gflat.as_ptr());
    for first in channels.step_by(G) {
        for ci in 0..f.c_in {
            // SAFETY: the rows and planes read lie inside the checked lengths
            unsafe {
                let mut acc = [V::zero(); A];
                // one loop over the images' runs, side by side, `plane - run` apart in both
                let g_stride = f.images * f.plane;
                let mut x = xp.add(ci * f.x_channel);
                let mut g = gp.add(first * g_stride);
                let per_image = f.run / V::LANES;
                let mut left = per_image;
                for _ in 0..per_image * f.images {
                    let mut gs = [V::zero(); G];
                    for (c, gc) in gs.iter_mut().enumerate() {
                        *gc = V::load(g.add(c * g_stride));
                    }
                    for ky in 0..K {
                        for kx in 0..K {
                            let xv = V::load(x.add(tap::<HALF>(f, ky, kx)));
                            for c in 0..G {
                                acc[c * TAPS + ky * K + kx] =
                                    acc[c * TAPS + ky * K + kx].fma(gs[c], xv);
                            }
                        }
                    }
                    g = g.add(V::LANES);
                    x = x.add(V::LANES);
                    left -= 1;
                    if left == 0 {
                        left = per_image;
                        x = x.add(f.x_image - f.run);
                        g = g.add(f.plane - f.run);
                    }
                }
                // the first 16 sums at once, the rest one by one
                let mut sums = [0.0f32; A];
                let mut done = 0;
                if let Some(head) = acc.first_chunk::<16>() {
                    sums[..16].copy_from_slice(&V::sums16(head));
                    done = 16;
                }
                for (s, a) in sums[done..].iter_mut().zip(&acc[done..]) {
                    *s = a.sum();
                }
                for (c, taps) in sums.chunks_exact(TAPS).enumerate() {
                    let co = first + c;
                    if co < f.c_out {
                        let d = &mut dw[(co * f.c_in + ci) * TAPS..][..TAPS];
                        for (d, &s) in d.iter_mut().zip(taps) {
                            *d += s;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The same values on every call, uniform on [-1, 1] (xorshift).
    pub(in crate::conv) fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    /// AVX-512's 16 sums at once are each vector's own sum bit for bit (values of many
    /// magnitudes and both signs, where another order of additions rounds differently).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn sixteen_sums_at_once_are_each_vectors_sum_bit_for_bit() {
        if Isa::detect() != Isa::Avx512 {
            return;
        }
        for seed in 0..50 {
            let v: Vec<f32> = values(256, seed)
                .iter()
                .zip(values(256, seed + 100))
                .map(|(a, e)| a * 10f32.powf(3.0 * e))
                .collect();
            // SAFETY: the CPU has AVX-512F (checked above); each vector reads 16 of 256 values
            let (at_once, one_by_one) = unsafe {
                let a: [x86::Avx512; 16] = std::array::from_fn(|k| x86::Avx512::load(&v[16 * k]));
                (x86::Avx512::sums16(&a), a.map(|x| x.sum()))
            };
            assert_eq!(
                at_once.map(f32::to_bits),
                one_by_one.map(f32::to_bits),
                "seed {seed}"
            );
        }
    }

    /// The convolution and its weight gradient in f64, by their definitions.
    fn reference(
        [c_in, c_out, h, w]: [usize; 4],
        x: &[f32],
        ws: &[f32],
        g: &[f32],
    ) -> (Vec<f64>, Vec<f64>) {
        let at = |c: usize, y: isize, xx: isize| -> f64 {
            if y < 0 || xx < 0 || y >= h as isize || xx >= w as isize {
                0.0
            } else {
                x[(c * h + y as usize) * w + xx as usize] as f64
            }
        };
        let mut out = vec![0.0f64; c_out * h * w];
        let mut dw = vec![0.0f64; c_out * c_in * TAPS];
        for co in 0..c_out {
            for y in 0..h {
                for xx in 0..w {
                    let o = (co * h + y) * w + xx;
                    for ci in 0..c_in {
                        for ky in 0..K {
                            for kx in 0..K {
                                let v = at(
                                    ci,
                                    y as isize + ky as isize - 1,
                                    xx as isize + kx as isize - 1,
                                );
                                let t = (co * c_in + ci) * TAPS + ky * K + kx;
                                out[o] += ws[t] as f64 * v;
                                dw[t] += g[o] as f64 * v;
                            }
                        }
                    }
                }
            }
        }
        (out, dw)
    }

    /// [`weight_grad`] of the planes, added to 0.5 everywhere, against `want` (f64), each sum of
    /// `terms` products within 4 of their ulps.
    fn assert_weight_grad(
        isa: Isa,
        fs: &Flat,
        (planes, gplanes): (&[f32], &[f32]),
        want: &[f64],
        terms: usize,
        label: &str,
    ) {
        let mut dw = vec![0.5f32; want.len()];
        weight_grad(isa, fs, planes, gplanes, &mut dw);
        for (t, (&got, &want)) in dw.iter().zip(want).enumerate() {
            let got = got as f64 - 0.5;
            assert!(
                (got - want).abs() <= 4.0 * terms as f64 * f32::EPSILON as f64,
                "{label}: weight gradient {t} {got} against {want}"
            );
        }
    }

    /// Every (output channel, input channel, tap).
    fn taps_of(c_out: usize, c_in: usize) -> impl Iterator<Item = (usize, usize, usize)> {
        (0..c_out)
            .flat_map(move |co| (0..c_in).flat_map(move |ci| (0..TAPS).map(move |t| (co, ci, t))))
    }

    /// The halving convolution (3x3, stride 2, padding 1) over phase planes, its weight
    /// gradient and its input gradient, on every compiled variant this CPU runs, against f64
    /// by the definition: even and odd sides, channels off the blocks, several images side by
    /// side.
    #[test]
    fn halving_convolution_and_its_gradients_match_their_definitions() {
        let isas: Vec<Isa> = Isa::supported()
            .into_iter()
            .filter(|&i| available(i))
            .collect();
        for isa in isas {
            for (c_in, c_out, h, w) in [
                (1usize, 1usize, 2usize, 2usize),
                (3, 5, 7, 7),
                (2, 4, 28, 28),
                (5, 3, 14, 9),
                (4, 7, 1, 5),
            ] {
                let n = 3;
                let (ho, wo) = (h.div_ceil(2), w.div_ceil(2));
                let x = values(n * c_in * h * w, 11);
                let ws = values(c_out * c_in * TAPS, 12);
                let g = values(n * c_out * ho * wo, 13);
                let (f1, fs) = (
                    Flat::halving(c_in, c_out, h, w, 1),
                    Flat::halving(c_in, c_out, h, w, n),
                );
                for t in 0..TAPS {
                    assert_eq!(tap::<true>(&fs, t / K, t % K), fs.taps[t], "tap {t}");
                }
                let wt = block_weights(&f1, &ws);
                let mut planes = vec![f32::NAN; n * c_in * fs.plane];
                let mut gplanes = vec![f32::NAN; n * fs.c_out_padded(CG) * fs.plane];
                let mut want_dw = vec![0.0f64; c_out * c_in * TAPS];
                for j in 0..n {
                    let xj = &x[j * c_in * h * w..][..c_in * h * w];
                    let gj = &g[j * c_out * ho * wo..][..c_out * ho * wo];
                    let at = |c: usize, y: isize, xx: isize| -> f64 {
                        if y < 0 || xx < 0 || y >= h as isize || xx >= w as isize {
                            0.0
                        } else {
                            xj[(c * h + y as usize) * w + xx as usize] as f64
                        }
                    };
                    let mut one = vec![f32::NAN; c_in * f1.plane];
                    // SAFETY: `pad_phases` writes only f32 values
                    pad_phases(&f1, xj, (h, w), 0, unsafe { as_uninit(&mut one) });
                    let mut out = vec![f32::NAN; f1.c_out_padded(CO) * f1.run];
                    forward(isa, &f1, &one, &wt, &mut out);
                    let layout = Layout::new(&f1);
                    let base = vec![0.0f32; c_out];
                    let mut into = vec![std::mem::MaybeUninit::new(f32::NAN); c_out * ho * wo];
                    let compressed =
                        forward_into(isa, &f1, &one, &wt, &layout, &base, None, &mut into);
                    for co in 0..c_out {
                        for y in 0..ho {
                            for xx in 0..wo {
                                let mut want = 0.0;
                                for ci in 0..c_in {
                                    for t in 0..TAPS {
                                        let v = at(
                                            ci,
                                            (2 * y + t / K) as isize - 1,
                                            (2 * xx + t % K) as isize - 1,
                                        );
                                        want += ws[(co * c_in + ci) * TAPS + t] as f64 * v;
                                        want_dw[(co * c_in + ci) * TAPS + t] +=
                                            gj[(co * ho + y) * wo + xx] as f64 * v;
                                    }
                                }
                                let got = out[co * f1.run + y * f1.wp + xx] as f64;
                                let tol = 4.0 * (c_in * TAPS) as f64 * f32::EPSILON as f64;
                                assert!(
                                    (got - want).abs() <= tol,
                                    "{isa:?} {c_in} {c_out} {h} {w}: output ({co}, {y}, {xx}) {got} against {want}"
                                );
                                if compressed {
                                    // SAFETY: written by `forward_into`
                                    let got =
                                        unsafe { into[(co * ho + y) * wo + xx].assume_init() };
                                    assert_eq!(
                                        got.to_bits(),
                                        (out[co * f1.run + y * f1.wp + xx] + 0.0).to_bits()
                                    );
                                }
                            }
                        }
                    }
                    // SAFETY: as above
                    pad_phases(&fs, xj, (h, w), j, unsafe { as_uninit(&mut planes) });
                    flat_rows(&fs, gj, j, &mut gplanes);
                }
                zero_planes(&fs, c_out, &mut gplanes);
                let label = format!("{isa:?} {c_in} {c_out} {h} {w}");
                let terms = n * ho * wo;
                assert_weight_grad(isa, &fs, (&planes, &gplanes), &want_dw, terms, &label);
                // the input gradient, each image's from the same rows of the output gradient
                let u = fs.unhalving();
                let uwt = unhalving_weights(&u, &ws);
                let mut rows = vec![f32::NAN; u.c_out_padded(CO) * u.run];
                for j in 0..n {
                    let gj = &g[j * c_out * ho * wo..][..c_out * ho * wo];
                    let mut want = vec![0.0f64; c_in * h * w];
                    for (co, ci, t) in taps_of(c_out, c_in) {
                        for i in 0..ho {
                            for jj in 0..wo {
                                let (y, xx) =
                                    ((2 * i + t / K) as isize - 1, (2 * jj + t % K) as isize - 1);
                                if y >= 0 && xx >= 0 && (y as usize) < h && (xx as usize) < w {
                                    want[(ci * h + y as usize) * w + xx as usize] +=
                                        ws[(co * c_in + ci) * TAPS + t] as f64
                                            * gj[(co * ho + i) * wo + jj] as f64;
                                }
                            }
                        }
                    }
                    unhalving(
                        isa,
                        &u,
                        &gplanes[fs.wp + 1 + j * fs.plane..],
                        &uwt,
                        &mut rows,
                    );
                    let mut dx = vec![f32::NAN; c_in * h * w];
                    interleave_phases(&u, &rows, (h, w), &mut dx);
                    let tol = 4.0 * (c_out * TAPS) as f64 * f32::EPSILON as f64;
                    for (k, (&got, &want)) in dx.iter().zip(&want).enumerate() {
                        assert!(
                            (got as f64 - want).abs() <= tol,
                            "{label}: input gradient {k} of image {j}: {got} against {want}"
                        );
                    }
                }
            }
        }
    }

    /// Every compiled variant this CPU runs, on sizes around the vector widths and blocks
    /// (channels off the blocks, planes narrower than a vector, one pixel wide), against f64.
    #[test]
    fn direct_convolution_and_weight_gradient_match_their_definitions() {
        let isas: Vec<Isa> = Isa::supported()
            .into_iter()
            .filter(|&i| available(i))
            .collect();
        for isa in isas {
            for (c_in, c_out, h, w) in [
                (1, 1, 1, 1),
                (3, 5, 7, 7),
                (2, 4, 28, 28),
                (5, 3, 14, 14),
                (4, 9, 3, 17),
                (1, 2, 9, 1),
                (6, 6, 16, 30),
            ] {
                // three images: each convolved alone, their weight gradients summed side by
                // side
                let n = 3;
                let x = values(n * c_in * h * w, 1);
                let ws = values(c_out * c_in * TAPS, 2);
                let g = values(n * c_out * h * w, 3);
                let (f1, fs) = (
                    Flat::new(c_in, c_out, h, w, 1),
                    Flat::new(c_in, c_out, h, w, n),
                );
                let wt = block_weights(&f1, &ws);
                // stale values everywhere, as the scratch buffers hold
                let mut planes = vec![f32::NAN; n * c_in * fs.plane];
                let mut gplanes = vec![f32::NAN; n * fs.c_out_padded(CG) * fs.plane];
                zero_planes(&fs, c_out, &mut gplanes);
                let mut want_dw = vec![0.0f64; c_out * c_in * TAPS];
                for j in 0..n {
                    let (x, g) = (
                        &x[j * c_in * h * w..][..c_in * h * w],
                        &g[j * c_out * h * w..][..c_out * h * w],
                    );
                    let (want, dw) = reference([c_in, c_out, h, w], x, &ws, g);
                    want_dw.iter_mut().zip(dw).for_each(|(a, b)| *a += b);
                    let mut one = vec![f32::NAN; c_in * f1.plane];
                    pad_image(&f1, x, 0, &mut one);
                    let mut out = vec![f32::NAN; f1.c_out_padded(CO) * f1.run];
                    forward(isa, &f1, &one, &wt, &mut out);
                    let scale = (c_in * TAPS) as f64;
                    for co in 0..c_out {
                        for y in 0..h {
                            for xx in 0..w {
                                let got = out[co * f1.run + y * f1.wp + xx] as f64;
                                let want = want[(co * h + y) * w + xx];
                                assert!(
                                    (got - want).abs() <= 4.0 * scale * f32::EPSILON as f64,
                                    "{isa:?} {c_in} {c_out} {h} {w}: output ({co}, {y}, {xx}) {got} against {want}"
                                );
                            }
                        }
                    }
                    // straight into the output, from start values and a residual: the flat
                    // rows' sums added to them, bit for bit
                    let base = values(c_out, 4);
                    let residual = values(c_out * h * w, 5);
                    let layout = Layout::new(&f1);
                    for residual in [None, Some(residual.as_slice())] {
                        let mut into = vec![std::mem::MaybeUninit::new(f32::NAN); c_out * h * w];
                        if !forward_into(isa, &f1, &one, &wt, &layout, &base, residual, &mut into) {
                            continue;
                        }
                        for (p, v) in into.iter().enumerate() {
                            let (co, y, xx) = (p / (h * w), p / w % h, p % w);
                            let start = residual.map_or(0.0, |r| r[p]) + base[co];
                            let want = if residual.is_some() {
                                start + out[co * f1.run + y * f1.wp + xx]
                            } else {
                                base[co] + out[co * f1.run + y * f1.wp + xx]
                            };
                            // SAFETY: initialised above
                            let got = unsafe { v.assume_init() };
                            assert_eq!(
                                got.to_bits(),
                                want.to_bits(),
                                "{isa:?} {c_in} {c_out} {h} {w}: pixel {p}"
                            );
                        }
                    }
                    pad_image(&fs, x, j, &mut planes);
                    pad_image(&fs, g, j, &mut gplanes);
                    // the same image read from its place among the three: the same sums
                    let mut side = vec![f32::NAN; fs.c_out_padded(CO) * fs.run];
                    forward(isa, &fs, &planes[j * fs.plane..], &wt, &mut side);
                    assert_eq!(
                        side.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "{isa:?} {c_in} {c_out} {h} {w}: image {j} among {n}"
                    );
                }
                let label = format!("{isa:?} {c_in} {c_out} {h} {w}");
                let terms = n * h * w;
                assert_weight_grad(isa, &fs, (&planes, &gplanes), &want_dw, terms, &label);
                // the input planes image by image, as the forward pass keeps them: the same
                // sums, bit for bit
                let mut kept = vec![f32::NAN; n * c_in * fs.plane];
                for (j, x) in x.chunks_exact(c_in * h * w).enumerate() {
                    pad_image(&f1, x, 0, &mut kept[j * c_in * fs.plane..]);
                }
                let (mut a, mut b) = (vec![0.0f32; want_dw.len()], vec![0.0f32; want_dw.len()]);
                weight_grad(isa, &fs, &planes, &gplanes, &mut a);
                weight_grad(isa, &fs.image_major(), &kept, &gplanes, &mut b);
                assert_eq!(a, b, "{label}: the planes image by image");
            }
        }
    }
}
