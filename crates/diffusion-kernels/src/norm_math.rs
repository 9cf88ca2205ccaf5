//! The group norm's passes over one group (its channels' values one after the other),
//! vectorised: sums in 16 f32 lanes, added up in f64 at the end of each block of 1,024 values;
//! the affine map and SiLU with the branch-free sigmoid of [`crate::math`]. Compiled for each
//! instruction set as the other kernels are and picked at run time ([`Isa`]).

use std::mem::MaybeUninit;

use crate::math::{Isa, madd, sigmoid_core};

/// Lanes of the vectorised sums (two AVX2 vectors, one AVX-512 vector).
const LANES: usize = 16;
/// |z| beyond which SiLU's sigmoid is taken at ±87, where it is within f32's resolution of 1
/// (and of 0 relative to z sigmoid(z)'s size).
const SIGMOID_CLAMP: f32 = 87.0;

/// One group: its values (`gamma.len()` channels of `spatial` values each), its channels'
/// affine map, and the norm's constants.
#[derive(Clone, Copy)]
pub(crate) struct Group<'a> {
    pub values: &'a [f32],
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub spatial: usize,
    pub epsilon: f64,
    pub silu: bool,
}

/// Where one group's gradients go: its values' gradient (in the buffer that holds the output's
/// gradient on entry) and its channels' d gamma and d beta (overwritten).
pub(crate) struct GroupGrads<'a> {
    pub dx: &'a mut [f32],
    pub dgamma: &'a mut [f32],
    pub dbeta: &'a mut [f32],
}

/// The lanes' total, in f64.
#[inline(always)]
fn total(acc: &[f32; LANES]) -> f64 {
    acc.iter().map(|&a| a as f64).sum()
}

/// A group's mean and spread: the mean as the f32 `m` nearest it and the rest `delta` (so
/// that `(x - m) - delta` keeps the digits `x - mean` would lose to the mean's rounding when
/// the mean is large against the spread), and `rstd` = 1 / sqrt(var + epsilon). The forward
/// pass computes them and the backward pass takes them back ([`Moments::VALUES`] f32 a group).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Moments {
    m: f32,
    delta: f32,
    rstd: f32,
}

impl Moments {
    /// The f32 values a group's moments are kept in.
    pub(crate) const VALUES: usize = 3;

    /// The moments as `[m, delta, rstd]`.
    pub(crate) fn to_values(self) -> [f32; 3] {
        [self.m, self.delta, self.rstd]
    }

    /// The moments from [`Moments::to_values`]'s values.
    pub(crate) fn from_values(v: &[f32]) -> Self {
        Moments {
            m: v[0],
            delta: v[1],
            rstd: v[2],
        }
    }

    /// The normalised value of `x`.
    #[inline(always)]
    fn xhat(self, x: f32) -> f32 {
        ((x - self.m) - self.delta) * self.rstd
    }
}

/// Values per block of the moments' sums: each block's lane sums are added up in f64.
const SUM_BLOCK: usize = 64 * LANES;

/// The [`Moments`] of `v` (two passes over the group's values as one run, in blocks of
/// [`SUM_BLOCK`]: a group's channels of a few values each cost no more than one long one).
#[inline(always)]
fn moments<const F: bool>(v: &[f32], epsilon: f64) -> Moments {
    let len = v.len().max(1) as f64;
    // sums of x - x0 (x0 the first value): the lanes add small numbers when the mean is large
    // against the spread
    let x0 = v.first().copied().unwrap_or(0.0);
    let mut sum = 0.0f64;
    for block in v.chunks(SUM_BLOCK) {
        let chunks = block.chunks_exact(LANES);
        let rest: f64 = chunks.remainder().iter().map(|&x| (x - x0) as f64).sum();
        let mut acc = [0.0f32; LANES];
        for c in chunks {
            for i in 0..LANES {
                acc[i] += c[i] - x0;
            }
        }
        sum += total(&acc) + rest;
    }
    let mean = x0 as f64 + sum / len;
    let m = mean as f32;
    let mut squares = 0.0f64;
    for block in v.chunks(SUM_BLOCK) {
        let chunks = block.chunks_exact(LANES);
        let rest: f64 = chunks
            .remainder()
            .iter()
            .map(|&x| (x as f64 - m as f64).powi(2))
            .sum();
        let mut acc = [0.0f32; LANES];
        for c in chunks {
            for i in 0..LANES {
                let d = c[i] - m;
                acc[i] = madd::<F>(d, d, acc[i]);
            }
        }
        squares += total(&acc) + rest;
    }
    // the squares are about m, not the mean: subtract the offset's share
    let var = (squares / len - (mean - m as f64).powi(2)).max(0.0);
    Moments {
        m,
        delta: (mean - m as f64) as f32,
        rstd: (1.0 / (var + epsilon).sqrt()) as f32,
    }
}

/// sigmoid(z), z clamped to ±87 (NaN stays NaN).
#[inline(always)]
fn sigmoid<const F: bool>(z: f32) -> f32 {
    let c = z.clamp(-SIGMOID_CLAMP, SIGMOID_CLAMP);
    sigmoid_core::<F>(c)
}

/// One group's output: `(x - mean) rstd gamma + beta`, then SiLU when the group's `silu`;
/// every value of `out` written, and the group's moments into `saved`.
#[inline(always)]
fn forward_group<const F: bool>(g: Group<'_>, out: &mut [MaybeUninit<f32>], saved: &mut Moments) {
    let mo = moments::<F>(g.values, g.epsilon);
    *saved = mo;
    let channels = out.chunks_mut(g.spatial).zip(g.values.chunks(g.spatial));
    for (j, (o, v)) in channels.enumerate() {
        let (a, b) = (g.gamma[j] * mo.rstd, g.beta[j]);
        if g.silu {
            for (y, &x) in o.iter_mut().zip(v) {
                y.write(output::<F, true>(x, mo, a, b));
            }
        } else {
            for (y, &x) in o.iter_mut().zip(v) {
                y.write(output::<F, false>(x, mo, a, b));
            }
        }
    }
}

/// Where a group's output goes when it is a convolution's zero-bordered input (the planes of
/// `conv::direct::pad_image`): each channel a plane of `plane` values, its `h` rows of `w`
/// values `wp` = `w + 2` apart from position `wp + 1` on, zero around them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Padded {
    pub h: usize,
    pub w: usize,
    pub wp: usize,
    pub plane: usize,
}

/// The group norm's output value for `x`, z = ((x - m) - delta) rstd gamma + beta (then SiLU
/// when `SILU`), `a` = gamma rstd, `b` = beta: what [`forward_group`] and
/// [`forward_group_padded`] write.
#[inline(always)]
fn output<const F: bool, const SILU: bool>(x: f32, mo: Moments, a: f32, b: f32) -> f32 {
    let z = madd::<F>((x - mo.m) - mo.delta, a, b);
    if SILU { z * sigmoid::<F>(z) } else { z }
}

/// One channel's output into its plane `dst` (the padding zero): each row in whole vectors
/// of [`LANES`] values, the last one running past the row's end (into its border and the next
/// row's values, written after it) where the source and the plane go on that far, else value
/// by value; the borders after each row.
#[inline(always)]
fn channel_padded<const F: bool, const SILU: bool>(
    (values, first): (&[f32], usize),
    (mo, a, b): (Moments, f32, f32),
    p: Padded,
    dst: &mut [MaybeUninit<f32>],
) {
    let zero = MaybeUninit::new(0.0);
    dst[..p.wp + 1].fill(zero);
    for y in 0..p.h {
        let (at, src) = ((y + 1) * p.wp + 1, first + y * p.w);
        let mut k = 0;
        while k < p.w {
            if src + k + LANES <= values.len() && at + k + LANES <= dst.len() {
                let xs: &[f32; LANES] = values[src + k..][..LANES].try_into().expect("lanes");
                let d: &mut [MaybeUninit<f32>; LANES] =
                    (&mut dst[at + k..][..LANES]).try_into().expect("lanes");
                for i in 0..LANES {
                    d[i] = MaybeUninit::new(output::<F, SILU>(xs[i], mo, a, b));
                }
                k += LANES;
            } else {
                dst[at + k] = MaybeUninit::new(output::<F, SILU>(values[src + k], mo, a, b));
                k += 1;
            }
        }
        // the row's right border and the next row's left border
        dst[at + p.w] = zero;
        dst[at + p.w + 1] = zero;
    }
    dst[(p.h + 1) * p.wp + 1..].fill(zero);
}

/// [`forward_group`] into the group's channels' padded planes `planes` (`[channels, plane]`,
/// [`Padded`]): every value of them written, the same values as [`forward_group`]'s where the
/// image is, zero around it.
#[inline(always)]
fn forward_group_padded<const F: bool>(
    g: Group<'_>,
    p: Padded,
    planes: &mut [MaybeUninit<f32>],
    saved: &mut Moments,
) {
    assert!(p.h * p.w == g.spatial && p.wp == p.w + 2 && p.plane >= (p.h + 2) * p.wp);
    assert_eq!(planes.len(), g.gamma.len() * p.plane, "a plane a channel");
    let mo = moments::<F>(g.values, g.epsilon);
    *saved = mo;
    for (j, dst) in planes.chunks_exact_mut(p.plane).enumerate() {
        let affine = (mo, g.gamma[j] * mo.rstd, g.beta[j]);
        let source = (g.values, j * g.spatial);
        if g.silu {
            channel_padded::<F, true>(source, affine, p, dst);
        } else {
            channel_padded::<F, false>(source, affine, p, dst);
        }
    }
}

/// The affine output's gradient dz from the output's `gy` at the normalised value `xhat`
/// (through SiLU when `SILU`).
#[inline(always)]
fn affine_grad<const F: bool, const SILU: bool>(xhat: f32, gy: f32, gamma: f32, beta: f32) -> f32 {
    if SILU {
        let z = madd::<F>(xhat, gamma, beta);
        let s = sigmoid::<F>(z);
        gy * s * madd::<F>(z, 1.0 - s, 1.0)
    } else {
        gy
    }
}

/// One channel's first backward pass: `d`, the output's gradient on entry, becomes
/// `dz gamma` (the normalised values' gradient, for now); returns the sums of dz xhat and dz
/// (the channel's d gamma and d beta; the sums of dxhat xhat and dxhat are gamma times them).
#[inline(always)]
fn channel_sums<const F: bool, const SILU: bool>(
    (x, dx): (&[f32], &mut [f32]),
    mo: Moments,
    (gamma, beta): (f32, f32),
) -> [f64; 2] {
    let whole = x.len() / LANES * LANES;
    let mut acc = [[0.0f32; LANES]; 2];
    let blocks = dx[..whole]
        .chunks_exact_mut(LANES)
        .zip(x[..whole].chunks_exact(LANES));
    for (d, xs) in blocks {
        for i in 0..LANES {
            let xhat = mo.xhat(xs[i]);
            let dz = affine_grad::<F, SILU>(xhat, d[i], gamma, beta);
            acc[0][i] = madd::<F>(dz, xhat, acc[0][i]);
            acc[1][i] += dz;
            d[i] = dz * gamma;
        }
    }
    let mut sums = [total(&acc[0]), total(&acc[1])];
    for (d, &x) in dx[whole..].iter_mut().zip(&x[whole..]) {
        let xhat = mo.xhat(x);
        let dz = affine_grad::<F, SILU>(xhat, *d, gamma, beta);
        sums[0] += (dz * xhat) as f64;
        sums[1] += dz as f64;
        *d = dz * gamma;
    }
    sums
}

/// One group's backward pass from its forward pass's moments `mo`, in the buffer `out.dx`
/// that holds the output's gradient: two passes, the second
/// `dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat))`.
#[inline(always)]
fn backward_group<const F: bool>(g: Group<'_>, mo: Moments, out: GroupGrads<'_>) {
    let (mut sum, mut sum_xhat) = (0.0f64, 0.0f64);
    let channels = out.dx.chunks_mut(g.spatial).zip(g.values.chunks(g.spatial));
    for (j, (dx, x)) in channels.enumerate() {
        let affine = (g.gamma[j], g.beta[j]);
        let sums = if g.silu {
            channel_sums::<F, true>((x, dx), mo, affine)
        } else {
            channel_sums::<F, false>((x, dx), mo, affine)
        };
        out.dgamma[j] = sums[0] as f32;
        out.dbeta[j] = sums[1] as f32;
        // dxhat = dz gamma, gamma one value a channel
        let gamma = g.gamma[j] as f64;
        sum += gamma * sums[1];
        sum_xhat += gamma * sums[0];
    }
    let len = g.values.len().max(1) as f64;
    let (m1, m2) = ((sum / len) as f32, (sum_xhat / len) as f32);
    for (d, &x) in out.dx.iter_mut().zip(g.values) {
        let xhat = mo.xhat(x);
        *d = mo.rstd * (*d - m1 - xhat * m2);
    }
}

dispatched!(forward, forward_group, (g: Group<'_>, out: &mut [MaybeUninit<f32>], saved: &mut Moments));
dispatched!(forward_padded, forward_group_padded, (g: Group<'_>, p: Padded, planes: &mut [MaybeUninit<f32>], saved: &mut Moments));
dispatched!(backward, backward_group, (g: Group<'_>, mo: Moments, out: GroupGrads<'_>));

#[cfg(test)]
mod tests {
    use super::*;

    /// The same values on every call, uniform on [-1, 1] (a linear congruential generator).
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The group's output and gradients in f64 from the definitions.
    fn reference(g: Group<'_>, dy: &[f32]) -> [Vec<f64>; 4] {
        let v: Vec<f64> = g.values.iter().map(|&x| x as f64).collect();
        let len = v.len() as f64;
        let mean = v.iter().sum::<f64>() / len;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / len;
        let rstd = 1.0 / (var + g.epsilon).sqrt();
        let (mut y, mut dxhat, mut xhats) = (vec![], vec![], vec![]);
        let mut dgamma = vec![0.0; g.gamma.len()];
        let mut dbeta = vec![0.0; g.gamma.len()];
        for (i, &x) in v.iter().enumerate() {
            let j = i / g.spatial;
            let (gm, bt) = (g.gamma[j] as f64, g.beta[j] as f64);
            let xhat = (x - mean) * rstd;
            let z = xhat * gm + bt;
            let s = 1.0 / (1.0 + (-z).exp());
            let (out, slope) = if g.silu {
                (z * s, s * (1.0 + z * (1.0 - s)))
            } else {
                (z, 1.0)
            };
            let dz = dy[i] as f64 * slope;
            y.push(out);
            dgamma[j] += dz * xhat;
            dbeta[j] += dz;
            dxhat.push(dz * gm);
            xhats.push(xhat);
        }
        let m1 = dxhat.iter().sum::<f64>() / len;
        let m2 = dxhat.iter().zip(&xhats).map(|(d, x)| d * x).sum::<f64>() / len;
        let dx = dxhat
            .iter()
            .zip(&xhats)
            .map(|(d, x)| rstd * (d - m1 - x * m2))
            .collect();
        [y, dx, dgamma, dbeta]
    }

    /// A group of `values` with its channels' affine map, epsilon 1e-5.
    fn group<'a>(
        (values, gamma, beta): (&'a [f32], &'a [f32], &'a [f32]),
        spatial: usize,
        silu: bool,
    ) -> Group<'a> {
        Group {
            values,
            gamma,
            beta,
            spatial,
            epsilon: 1e-5,
            silu,
        }
    }

    /// The forward pass's output (every value written over NaNs) and moments.
    fn forward_values(isa: Isa, g: Group<'_>) -> (Vec<f32>, Moments) {
        let mut y = vec![MaybeUninit::new(f32::NAN); g.values.len()];
        let mut mo = Moments::default();
        forward(isa, g, &mut y, &mut mo);
        // SAFETY: initialised above
        (y.iter().map(|v| unsafe { v.assume_init() }).collect(), mo)
    }

    fn assert_near(name: &str, ours: &[f32], want: &[f64], tolerance: f64) {
        let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        for (i, (&a, &b)) in ours.iter().zip(want).enumerate() {
            assert!(
                (a as f64 - b).abs() <= tolerance * scale,
                "{name}[{i}]: {a} vs {b} (scale {scale})"
            );
        }
    }

    /// Every compiled variant, forward and backward, against f64: channel sizes that are and are
    /// not multiples of the lanes, an offset large against the spread (the variance's
    /// cancellation), affine outputs far past SiLU's clamp, with and without SiLU.
    #[test]
    fn every_variant_matches_the_definitions_in_f64() {
        for isa in Isa::supported() {
            for (channels, spatial, offset, spread, gain, silu) in [
                (2, 784, 0.5, 3.0, 1.0, true),
                (4, 49, 0.0, 1.0, 1.0, false),
                (3, 17, -2.0, 0.5, 1.0, true),
                (2, 196, 1000.0, 0.01, 1.0, true),
                (2, 100, 0.0, 1.0, 200.0, true),
                (1, 5, 0.0, 1.0, 1.0, true),
            ] {
                let len = channels * spatial;
                let x: Vec<f32> = values(len, 1).iter().map(|v| offset + spread * v).collect();
                let gamma: Vec<f32> = values(channels, 2).iter().map(|v| gain * v).collect();
                let beta = values(channels, 3);
                let dy = values(len, 4);
                let g = group((&x, &gamma, &beta), spatial, silu);
                let want = reference(g, &dy);
                let (y, mo) = forward_values(isa, g);
                // the output's gradient in, the input's out; d gamma and d beta overwritten
                let (mut dx, mut dgamma, mut dbeta) = (
                    dy.clone(),
                    vec![f32::NAN; channels],
                    vec![f32::NAN; channels],
                );
                let grads = GroupGrads {
                    dx: &mut dx,
                    dgamma: &mut dgamma,
                    dbeta: &mut dbeta,
                };
                backward(isa, g, mo, grads);
                let case = format!("{isa:?} {channels}x{spatial} offset {offset} gain {gain}");
                let tolerance = 2e-5;
                assert_near(&format!("{case} y"), &y, &want[0], tolerance);
                assert_near(&format!("{case} dx"), &dx, &want[1], tolerance);
                assert_near(&format!("{case} dgamma"), &dgamma, &want[2], tolerance);
                assert_near(&format!("{case} dbeta"), &dbeta, &want[3], tolerance);
            }
        }
    }

    /// The output written into padded planes (over NaNs) is the plain output bit for bit where
    /// the image is, zero around it, on every compiled variant: rows wider and narrower than a
    /// vector, whose last vector runs past the row, the group's or the plane's end or not.
    #[test]
    fn padded_output_is_the_plain_output_bordered_with_zeros() {
        for isa in Isa::supported() {
            for (channels, h, w, silu) in [
                (2, 28, 28, true),
                (3, 14, 14, false),
                (2, 5, 12, true),
                (1, 3, 13, true),
                (2, 7, 7, true),
                (1, 1, 17, false),
                (4, 2, 33, true),
                (2, 4, 5, true),
                (1, 6, 3, false),
            ] {
                let spatial = h * w;
                let x = values(channels * spatial, 7);
                let gamma = values(channels, 8);
                let beta = values(channels, 9);
                let g = group((&x, &gamma, &beta), spatial, silu);
                let (y, mo) = forward_values(isa, g);
                let wp = w + 2;
                // the direct 3x3 kernels' plane (`conv::direct::Flat::new`: the run of rows
                // `wp` apart rounded up to 16, then the farthest tap), and the tightest one,
                // where the last rows' vectors would run past the plane's end
                let run = (h * wp).next_multiple_of(16);
                let conv_plane = (run + 2 * (wp + 1)).next_multiple_of(16);
                for plane in [conv_plane, (h + 2) * wp] {
                    let case = format!("{isa:?} {channels}x{h}x{w} silu {silu} plane {plane}");
                    check_padded(isa, g, Padded { h, w, wp, plane }, (&y, mo), &case);
                }
            }
        }
    }

    /// [`forward_padded`]'s planes (written over NaNs): `y` where the image is, zero around it,
    /// and the moments `mo`.
    fn check_padded(isa: Isa, g: Group<'_>, p: Padded, (y, mo): (&[f32], Moments), case: &str) {
        let channels = g.gamma.len();
        let mut planes = vec![MaybeUninit::new(f32::NAN); channels * p.plane];
        let mut saved = Moments::default();
        forward_padded(isa, g, p, &mut planes, &mut saved);
        assert_eq!(saved, mo, "{case}: the moments");
        for (j, dst) in planes.chunks(p.plane).enumerate() {
            for (q, v) in dst.iter().enumerate() {
                // SAFETY: every value was initialised (to NaN) above
                let v = unsafe { v.assume_init() };
                let (row, col) = (q / p.wp, q % p.wp);
                let inside = (1..=p.h).contains(&row) && (1..=p.w).contains(&col);
                let want = if inside {
                    y[j * g.spatial + (row - 1) * p.w + col - 1]
                } else {
                    0.0
                };
                assert_eq!(v.to_bits(), want.to_bits(), "{case}: channel {j} at {q}");
            }
        }
    }

    #[test]
    fn nan_input_gives_nan_and_infinities_stay_finite_elsewhere() {
        for isa in Isa::supported() {
            let mut x = values(32, 5);
            x[3] = f32::NAN;
            let (gamma, beta) = ([1.0f32], [0.0f32]);
            let g = Group {
                values: &x,
                gamma: &gamma,
                beta: &beta,
                spatial: 32,
                epsilon: 1e-5,
                silu: true,
            };
            let (y, _) = forward_values(isa, g);
            // a NaN in a group makes its moments NaN: every output of the group is NaN
            assert!(y.iter().all(|v| v.is_nan()), "{isa:?}: {y:?}");
        }
    }
}
