//! The column-matrix path: im2col of a tile of output rows, col2im of a column gradient, and
//! the matrix products (gemm) that take them.

use std::ops::Range;

use super::Dims;

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
pub(super) fn tile_rows(d: &Dims) -> usize {
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
pub(super) fn tiles(d: &Dims) -> impl Iterator<Item = Range<usize>> {
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
pub(super) fn columns<'a>(
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
pub(super) fn col2im(d: &Dims, col: &[f32], image: &mut [f32]) {
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
pub(crate) unsafe fn product(
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
