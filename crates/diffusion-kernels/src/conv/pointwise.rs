//! A 1x1 convolution (stride 1, no padding) and its weight gradient in AVX-512 or AVX2
//! registers, without gemm's packing: an image's `[c_in, pixels]` planes are read as they lie.
//!
//! Forward, a block of output channels ([`block`]) times a few vectors of pixels is held in
//! registers while the loop runs over the input channels: per channel one broadcast weight per
//! output channel and one load per vector, a fused multiply-add per pair (the direct 3x3
//! kernel's walk with one tap). The pixels are covered by whole vectors, the last one moved
//! back to end at the plane's end: it overlaps the one before it and computes the same sums
//! for the shared pixels, so no load or store passes the plane and no mask is needed. The
//! input gradient is the same kernel with the weights transposed. The weight gradient sums
//! `g[co, p] x[ci, p]` over the pixels of every image of a task for a block of output times
//! input channels in registers, the last, overlapping vector's shared lanes zeroed.
//!
//! Sums run in another order than the matrix product's, so results agree with it to rounding.

use std::mem::MaybeUninit;

use super::direct::Vector;
use crate::math::Isa;

/// Output channels a forward block holds in registers: eight with AVX-512 (times three
/// vectors; each input plane read half as often), four with AVX2 (times two).
const CO_AVX512: usize = 8;
const CO_AVX2: usize = 4;

/// The forward block's output channels on this instruction set ([`block_weights`]'s layout).
pub(crate) fn block(isa: Isa) -> usize {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && super::direct::has_vl() {
        return CO_AVX512;
    }
    let _ = isa;
    CO_AVX2
}
/// The widest vector, in lanes: an image needs at least this many pixels.
const MAX_LANES: usize = 16;

/// Whether this CPU runs the 1x1 kernels on images of `pixels` pixels (at least a vector).
pub(crate) fn available(isa: Isa, pixels: usize) -> bool {
    cfg!(target_arch = "x86_64") && isa != Isa::Base && pixels >= MAX_LANES
}

/// The weights `[c_out, c_in]` (a 1x1 kernel's `[c_out, c_in, 1, 1]`) as the forward kernel
/// reads them on `isa`: `[c_out / CO, c_in, CO]` with CO = [`block`], the channels past
/// `c_out` zero.
pub(crate) fn block_weights(isa: Isa, c_out: usize, c_in: usize, ws: &[f32]) -> Vec<f32> {
    let co_block = block(isa);
    let blocks = c_out.div_ceil(co_block);
    let mut out = vec![0.0f32; blocks * c_in * co_block];
    for co in 0..c_out {
        for ci in 0..c_in {
            out[((co / co_block) * c_in + ci) * co_block + co % co_block] = ws[co * c_in + ci];
        }
    }
    out
}

/// The sizes of one image's 1x1 convolution.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plane {
    pub c_in: usize,
    pub c_out: usize,
    pub pixels: usize,
}

/// One image's convolution `x` (`[c_in, pixels]`) with the blocked weights `wt`
/// ([`block_weights`] for the same `isa`) into `out`
/// (`[c_out, pixels]`): each channel `c` starts at `base[c]` plus, where there is one,
/// `residual`'s value at the same place (`(residual + base) + sums`).
pub(crate) fn forward(
    isa: Isa,
    p: Plane,
    (x, wt): (&[f32], &[f32]),
    (base, residual): (&[f32], Option<&[f32]>),
    out: &mut [MaybeUninit<f32>],
) {
    assert!(
        p.pixels >= MAX_LANES,
        "an image of at least a vector's pixels"
    );
    assert!(x.len() == p.c_in * p.pixels && out.len() == p.c_out * p.pixels);
    let co_block = block(isa);
    assert!(wt.len() >= p.c_out.div_ceil(co_block) * co_block * p.c_in && base.len() == p.c_out);
    assert!(residual.is_none_or(|r| r.len() == out.len()));
    let (xp, wp) = (x.as_ptr(), wt.as_ptr());
    let (rp, op) = (residual.map(|r| r.as_ptr()), out.as_mut_ptr().cast::<f32>());
    #[cfg(target_arch = "x86_64")]
    {
        use super::direct::x86;
        #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
        fn avx512(
            p: Plane,
            xw: (*const f32, *const f32),
            br: (&[f32], Option<*const f32>),
            op: *mut f32,
        ) {
            // SAFETY: the sizes were checked above; the CPU has AVX-512F
            unsafe { forward_image::<x86::Avx512, CO_AVX512, 3>(p, xw, br, op) }
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2(
            p: Plane,
            xw: (*const f32, *const f32),
            br: (&[f32], Option<*const f32>),
            op: *mut f32,
        ) {
            // SAFETY: the sizes were checked above; the CPU has AVX2 and FMA
            unsafe { forward_image::<x86::Avx2, CO_AVX2, 2>(p, xw, br, op) }
        }
        match isa {
            // SAFETY (both): `isa` is at most what `Isa::detect` found on this CPU, AVX-512 with
            // VL checked
            Isa::Avx512 if co_block == CO_AVX512 => {
                return unsafe { avx512(p, (xp, wp), (base, rp), op) };
            }
            Isa::Avx512 | Isa::Avx2 => return unsafe { avx2(p, (xp, wp), (base, rp), op) },
            Isa::Base => {}
        }
    }
    let _ = (xp, wp, rp, op);
    unreachable!("the 1x1 kernels run on AVX2 or AVX-512 only (`available`)")
}

/// Where vector `k` of an image's pixels starts: whole vectors, the last one moved back to end
/// at the plane's end.
#[inline(always)]
fn vector_start(k: usize, lanes: usize, pixels: usize) -> usize {
    (k * lanes).min(pixels - lanes)
}

/// [`forward`]'s work: each block of `CO` output channels over the pixels in tiles of `NV`
/// vectors, the last tile shorter.
///
/// # Safety
/// The pointers hold what [`forward`] checks; the CPU runs `V`.
#[inline(always)]
unsafe fn forward_image<V: Vector, const CO: usize, const NV: usize>(
    p: Plane,
    (xp, wp): (*const f32, *const f32),
    (base, rp): (&[f32], Option<*const f32>),
    op: *mut f32,
) {
    let vectors = p.pixels.div_ceil(V::LANES);
    for b in 0..p.c_out.div_ceil(CO) {
        // SAFETY (all): block b's weights and channels lie inside the checked lengths
        let wb = unsafe { wp.add(b * p.c_in * CO) };
        let mut k = 0;
        while k + NV <= vectors {
            unsafe { forward_tile::<V, CO, NV>(p, xp, wb, (b, k), (base, rp), op) };
            k += NV;
        }
        unsafe {
            match vectors - k {
                0 => {}
                1 => forward_tile::<V, CO, 1>(p, xp, wb, (b, k), (base, rp), op),
                2 => forward_tile::<V, CO, 2>(p, xp, wb, (b, k), (base, rp), op),
                3 => forward_tile::<V, CO, 3>(p, xp, wb, (b, k), (base, rp), op),
                4 => forward_tile::<V, CO, 4>(p, xp, wb, (b, k), (base, rp), op),
                5 => forward_tile::<V, CO, 5>(p, xp, wb, (b, k), (base, rp), op),
                _ => unreachable!("the last tile is shorter than a whole one"),
            }
        }
    }
}

/// Block `b`'s `CO` output channels times `NV` vectors of pixels from vector `k0`, summed
/// over every input channel in registers, then stored after their start values.
///
/// # Safety
/// As [`forward_image`]; the vectors `k0 .. k0 + NV` lie in the image.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // registers indexed [channel][vector]
unsafe fn forward_tile<V: Vector, const CO: usize, const NV: usize>(
    p: Plane,
    xp: *const f32,
    wb: *const f32,
    (b, k0): (usize, usize),
    (base, rp): (&[f32], Option<*const f32>),
    op: *mut f32,
) {
    let starts: [usize; NV] = std::array::from_fn(|v| vector_start(k0 + v, V::LANES, p.pixels));
    unsafe {
        let mut acc = [[V::zero(); NV]; CO];
        for ci in 0..p.c_in {
            let x = xp.add(ci * p.pixels);
            let w = wb.add(ci * CO);
            let mut ws = [V::zero(); CO];
            for (c, wc) in ws.iter_mut().enumerate() {
                *wc = V::splat(*w.add(c));
            }
            for v in 0..NV {
                let xv = V::load(x.add(starts[v]));
                for c in 0..CO {
                    acc[c][v] = acc[c][v].fma(ws[c], xv);
                }
            }
        }
        for c in 0..CO {
            let co = b * CO + c;
            if co >= p.c_out {
                break;
            }
            let start = V::splat(base[co]);
            for v in 0..NV {
                let at = co * p.pixels + starts[v];
                let first = match rp {
                    Some(r) => V::load(r.add(at)).add(start),
                    None => start,
                };
                first.add(acc[c][v]).store(op.add(at));
            }
        }
    }
}

/// Lanes `16 - k ..` of it read as a vector: the first `k` lanes zero, the rest one.
static TAIL: [f32; 2 * MAX_LANES] = {
    let mut t = [0.0f32; 2 * MAX_LANES];
    let mut i = MAX_LANES;
    while i < 2 * MAX_LANES {
        t[i] = 1.0;
        i += 1;
    }
    t
};

/// Adds to `dw` (`[c_out, c_in]`) the weight gradient of `images` images: their inputs `xs`
/// (`[images, c_in, pixels]`) times their output gradients `gs` (`[images, c_out, pixels]`),
/// summed over the pixels.
pub(crate) fn weight_grad(
    isa: Isa,
    p: Plane,
    images: usize,
    xs: &[f32],
    gs: &[f32],
    dw: &mut [f32],
) {
    assert!(
        p.pixels >= MAX_LANES,
        "an image of at least a vector's pixels"
    );
    assert!(xs.len() == images * p.c_in * p.pixels && gs.len() == images * p.c_out * p.pixels);
    assert!(dw.len() == p.c_out * p.c_in);
    let (xp, gp) = (xs.as_ptr(), gs.as_ptr());
    #[cfg(target_arch = "x86_64")]
    {
        use super::direct::x86;
        #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
        fn avx512(p: Plane, images: usize, xg: (*const f32, *const f32), dw: &mut [f32]) {
            // SAFETY: the sizes were checked above; the CPU has AVX-512F
            unsafe { weight_grad_blocks::<x86::Avx512, 4, 6>(p, images, xg, dw) }
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2(p: Plane, images: usize, xg: (*const f32, *const f32), dw: &mut [f32]) {
            // SAFETY: the sizes were checked above; the CPU has AVX2 and FMA
            unsafe { weight_grad_blocks::<x86::Avx2, 2, 5>(p, images, xg, dw) }
        }
        match isa {
            // SAFETY (both): `isa` is at most what `Isa::detect` found on this CPU, AVX-512 with
            // VL checked
            Isa::Avx512 if super::direct::has_vl() => {
                return unsafe { avx512(p, images, (xp, gp), dw) };
            }
            Isa::Avx512 | Isa::Avx2 => return unsafe { avx2(p, images, (xp, gp), dw) },
            Isa::Base => {}
        }
    }
    let _ = (xp, gp, images, dw);
    unreachable!("the 1x1 kernels run on AVX2 or AVX-512 only (`available`)")
}

/// [`weight_grad`]'s work: blocks of `G` output times `H` input channels, each summed in
/// registers over every image's pixels, then across lanes. A block past the channels' end
/// reads its last channel again and drops those sums.
///
/// # Safety
/// The pointers hold what [`weight_grad`] checks; the CPU runs `V`.
#[inline(always)]
unsafe fn weight_grad_blocks<V: Vector, const G: usize, const H: usize>(
    p: Plane,
    images: usize,
    (xp, gp): (*const f32, *const f32),
    dw: &mut [f32],
) {
    let vectors = p.pixels.div_ceil(V::LANES);
    // the last vector's lanes that the one before it already summed
    let shared = vectors * V::LANES - p.pixels;
    // SAFETY: `TAIL` holds 2 * MAX_LANES values, shared < V::LANES <= MAX_LANES
    let tail = unsafe { V::load(TAIL.as_ptr().add(MAX_LANES - shared)) };
    for co0 in (0..p.c_out).step_by(G) {
        for ci0 in (0..p.c_in).step_by(H) {
            let gc: [usize; G] = std::array::from_fn(|c| (co0 + c).min(p.c_out - 1));
            let hc: [usize; H] = std::array::from_fn(|h| (ci0 + h).min(p.c_in - 1));
            // SAFETY: the CPU runs `V`
            let mut acc = unsafe { [[V::zero(); H]; G] };
            for j in 0..images {
                // SAFETY (all): image j's channels lie inside the checked lengths, every
                // vector inside its plane
                let (x, g) = unsafe {
                    (
                        xp.add(j * p.c_in * p.pixels),
                        gp.add(j * p.c_out * p.pixels),
                    )
                };
                for k in 0..vectors {
                    let at = vector_start(k, V::LANES, p.pixels);
                    unsafe {
                        let mut gs = [V::zero(); G];
                        for (c, gv) in gs.iter_mut().enumerate() {
                            *gv = V::load(g.add(gc[c] * p.pixels + at));
                            if k + 1 == vectors {
                                *gv = gv.mul(tail);
                            }
                        }
                        for h in 0..H {
                            let xv = V::load(x.add(hc[h] * p.pixels + at));
                            for c in 0..G {
                                acc[c][h] = acc[c][h].fma(gs[c], xv);
                            }
                        }
                    }
                }
            }
            for (c, row) in acc.iter().enumerate() {
                let co = co0 + c;
                if co >= p.c_out {
                    break;
                }
                for (h, a) in row.iter().enumerate() {
                    let ci = ci0 + h;
                    if ci < p.c_in {
                        // SAFETY: the CPU runs `V`
                        dw[co * p.c_in + ci] += unsafe { a.sum() };
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::direct::tests::values;
    use super::*;

    /// Every compiled variant this CPU runs, against f64 by the definition: channel counts off
    /// the blocks, pixel counts that are and are not a multiple of the vector (the last vector
    /// overlapping), one vector exactly, with and without a residual.
    #[test]
    fn pointwise_convolution_and_weight_gradient_match_their_definitions() {
        let isas: Vec<Isa> = Isa::supported()
            .into_iter()
            .filter(|&i| available(i, MAX_LANES))
            .collect();
        for isa in isas {
            for (c_in, c_out, pixels) in [
                (1, 1, 16),
                (3, 5, 49),
                (16, 32, 196),
                (48, 16, 784),
                (7, 9, 17),
                (13, 3, 40),
            ] {
                let n = 3;
                let p = Plane {
                    c_in,
                    c_out,
                    pixels,
                };
                let x = values(n * c_in * pixels, 1);
                let ws = values(c_out * c_in, 2);
                let g = values(n * c_out * pixels, 3);
                let base = values(c_out, 4);
                let residual = values(c_out * pixels, 5);
                let wt = block_weights(isa, c_out, c_in, &ws);
                let mut want_dw = vec![0.0f64; c_out * c_in];
                for j in 0..n {
                    let x = &x[j * c_in * pixels..][..c_in * pixels];
                    for residual in [None, Some(residual.as_slice())] {
                        let mut out = vec![MaybeUninit::new(f32::NAN); c_out * pixels];
                        forward(isa, p, (x, &wt), (&base, residual), &mut out);
                        for co in 0..c_out {
                            for q in 0..pixels {
                                let mut want = residual.map_or(0.0, |r| r[co * pixels + q] as f64)
                                    + base[co] as f64;
                                for ci in 0..c_in {
                                    want += ws[co * c_in + ci] as f64 * x[ci * pixels + q] as f64;
                                }
                                // SAFETY: written by `forward` (NaN if not, failing the check)
                                let got = unsafe { out[co * pixels + q].assume_init() } as f64;
                                assert!(
                                    (got - want).abs()
                                        <= 4.0 * (c_in + 2) as f64 * f32::EPSILON as f64,
                                    "{isa:?} {c_in} {c_out} {pixels}: ({co}, {q}) {got} against {want}"
                                );
                            }
                        }
                    }
                    for co in 0..c_out {
                        for ci in 0..c_in {
                            for q in 0..pixels {
                                want_dw[co * c_in + ci] += g[(j * c_out + co) * pixels + q] as f64
                                    * x[ci * pixels + q] as f64;
                            }
                        }
                    }
                }
                let mut dw = vec![0.5f32; c_out * c_in];
                weight_grad(isa, p, n, &x, &g, &mut dw);
                for (t, (&got, &want)) in dw.iter().zip(&want_dw).enumerate() {
                    let got = got as f64 - 0.5;
                    assert!(
                        (got - want).abs() <= 4.0 * (n * pixels) as f64 * f32::EPSILON as f64,
                        "{isa:?} {c_in} {c_out} {pixels}: weight gradient {t} {got} against {want}"
                    );
                }
            }
        }
    }
}
