//! The element-wise part of a fused layer over contiguous f32 rows: `y = act(z + b + s)` in
//! place, and the backward `g *= act'(y)` from the output alone.
//!
//! `exp` is the Cephes single-precision algorithm (range reduction and a short polynomial),
//! `ln(1 + e)` on [0, 1] (softplus' second term) one fitted polynomial, and softplus' derivative
//! `1 - e^-y` comes from `exp`'s reduction without cancellation; all branch-free, so every loop
//! vectorises. On x86-64 each loop is compiled three
//! times, plain, for AVX2 + FMA (the polynomials then use fused multiply-adds) and for AVX-512,
//! and the widest the CPU runs is picked at run time ([`Isa::detect`]). A block of 512 values
//! holding one outside the polynomials' domains (|x| > 87, infinities, NaN) goes through the
//! scalar definitions instead, so special values are libm's.
//!
//! Accuracy, tested against f64 over dense sweeps for every compiled variant the CPU runs:
//! softplus and sigmoid within 4 ulp, tanh within 4, the derivatives within 8.

// The polynomial coefficients are Cephes' as published (some digits beyond f32's) and, for
// ln(1 + e), the shortest decimals of the f32 values `scripts/fit_ln_1p.py` prints.
#![allow(clippy::excessive_precision)]

use crate::{Activation, LEAKY_RELU_SLOPE};

/// Values checked for special values before each vectorised block.
const BLOCK: usize = 512;
/// Values computed together inside a block: four AVX-512 vectors.
const GROUP: usize = 64;

const LOG2E: f32 = core::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 * 2^23: adding and subtracting it rounds an f32 below 2^22 to the nearest integer.
const ROUNDER: f32 = 12_582_912.0;
/// |x| up to which e^-|x| is a normal f32 (the domain of [`exp_core`] used here).
const MODERATE: f32 = 87.0;
/// Below this |x|, tanh is Cephes' odd polynomial.
const TANH_POLY_BELOW: f32 = 0.625;

/// a b + c: one fused instruction in the kernels compiled with FMA (`F`), two otherwise (where
/// `mul_add` would be a call into libm).
#[inline(always)]
pub(crate) fn madd<const F: bool>(a: f32, b: f32, c: f32) -> f32 {
    if F { a.mul_add(b, c) } else { a * b + c }
}

/// `c[0] x^(N-1) + c[1] x^(N-2) + ... + c[N-1]` by Horner's rule, one multiply-add a
/// coefficient.
#[inline(always)]
fn horner<const F: bool, const N: usize>(x: f32, c: [f32; N]) -> f32 {
    c[1..].iter().fold(c[0], |p, &ci| madd::<F>(p, x, ci))
}

/// e^x = 2^n (1 + q) for x in [-87, 88] (Cephes `expf`): x = n ln 2 + r with |r| <= ln 2 / 2,
/// q = e^r - 1 from the polynomial (to q's relative accuracy), and 2^n.
#[inline(always)]
fn exp_reduced<const F: bool>(x: f32) -> (f32, f32) {
    // t = 1.5 2^23 + n exactly, so n is also in t's low bits (integer arithmetic on the bits
    // vectorises, where a saturating `as i32` cast does not)
    let t = madd::<F>(x, LOG2E, ROUNDER);
    let n = t - ROUNDER;
    let r = madd::<F>(-n, LN2_LO, madd::<F>(-n, LN2_HI, x));
    let z = r * r;
    let p = horner::<F, _>(
        r,
        [
            1.987_569_1e-4,
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            5.000_000_1e-1,
        ],
    );
    // 2^n from its exponent bits (n in [-126, 127] on this domain)
    let scale = f32::from_bits(
        t.to_bits()
            .wrapping_sub(ROUNDER.to_bits())
            .wrapping_add(127)
            << 23,
    );
    (madd::<F>(p, z, r), scale)
}

/// e^x for x in [-87, 88] (Cephes `expf`).
#[inline(always)]
pub(crate) fn exp_core<const F: bool>(x: f32) -> f32 {
    let (q, scale) = exp_reduced::<F>(x);
    (q + 1.0) * scale
}

/// ln(1 + e) for e in [0, 1], with the relative accuracy of `log1p`: e P(e - 1/2), P a
/// degree-9 polynomial fitted to ln(1 + e) / e on [0, 1] (Chebyshev least squares; within 5e-9
/// of it in f64, within 1.8 ulp of ln(1 + e) evaluated in f32), one multiply-add chain where
/// Cephes' `logf` needs a range reduction and a longer one.
#[inline(always)]
fn ln_1p_unit<const F: bool>(e: f32) -> f32 {
    let u = e - 0.5;
    let p = horner::<F, _>(
        u,
        [
            -3.256_378_5e-3,
            5.253_458e-3,
            -6.742_963e-3,
            1.157_609_65e-2,
            -2.057_159_9e-2,
            3.663_548e-2,
            -6.768_761e-2,
            1.326_090_1e-1,
            -2.885_271e-1,
            8.109_302e-1,
        ],
    );
    p * e
}

/// |x| <= 87; false for NaN.
#[inline(always)]
fn moderate(x: f32) -> bool {
    x.abs() <= MODERATE
}

/// softplus(x) = max(x, 0) + ln(1 + e^-|x|) for |x| <= 87.
#[inline(always)]
fn softplus_core<const F: bool>(x: f32) -> f32 {
    let high = if x > 0.0 { x } else { 0.0 };
    high + ln_1p_unit::<F>(exp_core::<F>(-x.abs()))
}

/// ln sigmoid(x) = -softplus(-x) for |x| <= 87.
#[inline(always)]
fn log_sigmoid_core<const F: bool>(x: f32) -> f32 {
    -softplus_core::<F>(-x)
}

/// sigmoid(x) for |x| <= 87: 1 / (1 + e) for x >= 0 and e / (1 + e) below, e = e^-|x|.
#[inline(always)]
pub(crate) fn sigmoid_core<const F: bool>(x: f32) -> f32 {
    let e = exp_core::<F>(-x.abs());
    let top = if x >= 0.0 { 1.0 } else { e };
    top / (1.0 + e)
}

/// tanh(x) for |x| <= 43 (Cephes `tanhf`): an odd polynomial below 0.625, else
/// 1 - 2 / (e^2|x| + 1) with x's sign.
#[inline(always)]
fn tanh_core<const F: bool>(x: f32) -> f32 {
    let a = x.abs();
    let z = x * x;
    let p = horner::<F, _>(
        z,
        [
            -5.704_988_7e-3,
            2.063_908_9e-2,
            -5.373_971_6e-2,
            1.333_144_2e-1,
            -3.333_328_2e-1,
        ],
    );
    let small = madd::<F>(p * z, x, x);
    let large = 1.0 - 2.0 / (exp_core::<F>(a + a) + 1.0);
    if a < TANH_POLY_BELOW {
        small
    } else {
        large.copysign(x)
    }
}

/// max(x, 0), keeping NaN (as Burn's `relu`).
#[inline(always)]
fn relu(x: f32) -> f32 {
    if x <= 0.0 { 0.0 } else { x }
}

/// x, or the slope times x below 0 (NaN stays NaN; the product is Burn's `leaky_relu`'s, bit for
/// bit).
#[inline(always)]
fn leaky_relu(x: f32) -> f32 {
    if x < 0.0 { x * LEAKY_RELU_SLOPE } else { x }
}

/// 1 - e^-y for 0 <= y <= 87 without cancellation: with e^-y = 2^n (1 + q) ([`exp_reduced`]),
/// 1 - e^-y = (1 - 2^n) - 2^n q, where 1 - 2^n is exact (0 for n = 0, where the result is -q
/// to q's relative accuracy).
#[inline(always)]
fn one_minus_exp_neg_core<const F: bool>(y: f32) -> f32 {
    let (q, scale) = exp_reduced::<F>(-y);
    madd::<F>(-scale, q, 1.0 - scale)
}

/// The scalar definitions, for values outside the vectorised domains.
pub(crate) mod scalar {
    /// ln(1 + e^x).
    pub fn softplus(x: f32) -> f32 {
        if x > 0.0 {
            x + (-x).exp().ln_1p()
        } else {
            x.exp().ln_1p()
        }
    }

    /// ln(1 / (1 + e^-x)) = -softplus(-x).
    pub fn log_sigmoid(x: f32) -> f32 {
        -softplus(-x)
    }

    /// 1 / (1 + e^-x).
    pub fn sigmoid(x: f32) -> f32 {
        if x >= 0.0 {
            1.0 / (1.0 + (-x).exp())
        } else {
            let e = x.exp();
            e / (1.0 + e)
        }
    }

    /// tanh(x).
    pub fn tanh(x: f32) -> f32 {
        x.tanh()
    }

    /// 1 - e^-y: softplus' at the point where softplus is y.
    pub fn one_minus_exp_neg(y: f32) -> f32 {
        -(-y).exp_m1()
    }
}

/// Applies `core` to every element of `xs` in place, or `fallback` to a block holding a value
/// outside `domain`.
#[inline(always)]
fn map_blocks(
    xs: &mut [f32],
    domain: fn(f32) -> bool,
    core: fn(f32) -> f32,
    fallback: fn(f32) -> f32,
) {
    for block in xs.chunks_mut(BLOCK) {
        // a fold rather than `all`, so that the scan vectorises
        if block.iter().fold(true, |ok, &x| ok & domain(x)) {
            // fixed-size groups, so that several vectors' polynomial chains interleave (one
            // vector's chain alone is latency-bound)
            let mut groups = block.chunks_exact_mut(GROUP);
            for g in &mut groups {
                let g: &mut [f32; GROUP] = g.try_into().expect("a group");
                g.iter_mut().for_each(|x| *x = core(*x));
            }
            groups
                .into_remainder()
                .iter_mut()
                .for_each(|x| *x = core(*x));
        } else {
            block
                .iter_mut()
                .for_each(|x| *x = if domain(*x) { core(*x) } else { fallback(*x) });
        }
    }
}

/// `grads[i] *= core(ys[i])`, blockwise as [`map_blocks`].
#[inline(always)]
fn scale_blocks(
    ys: &[f32],
    grads: &mut [f32],
    domain: fn(f32) -> bool,
    core: fn(f32) -> f32,
    fallback: fn(f32) -> f32,
) {
    for (block, g) in ys.chunks(BLOCK).zip(grads.chunks_mut(BLOCK)) {
        if block.iter().fold(true, |ok, &y| ok & domain(y)) {
            let mut groups = g.chunks_exact_mut(GROUP).zip(block.chunks_exact(GROUP));
            for (g, y) in &mut groups {
                let g: &mut [f32; GROUP] = g.try_into().expect("a group");
                let y: &[f32; GROUP] = y.try_into().expect("a group");
                g.iter_mut().zip(y).for_each(|(g, &y)| *g *= core(y));
            }
            let done = block.len() / GROUP * GROUP;
            g[done..]
                .iter_mut()
                .zip(&block[done..])
                .for_each(|(g, &y)| *g *= core(y));
        } else {
            g.iter_mut()
                .zip(block)
                .for_each(|(g, &y)| *g *= if domain(y) { core(y) } else { fallback(y) });
        }
    }
}

fn softplus_output(y: f32) -> bool {
    (0.0..=MODERATE).contains(&y)
}

fn tanh_domain(x: f32) -> bool {
    x.abs() <= 43.0
}

/// `grads[i] *= d(ys[i])`.
#[inline(always)]
fn scale(ys: &[f32], grads: &mut [f32], d: fn(f32) -> f32) {
    grads.iter_mut().zip(ys).for_each(|(g, &y)| *g *= d(y));
}

/// `act` of every element, in place.
#[inline(always)]
fn activate<const F: bool>(xs: &mut [f32], act: Activation) {
    match act {
        Activation::Softplus => map_blocks(xs, moderate, softplus_core::<F>, scalar::softplus),
        Activation::Sigmoid => map_blocks(xs, moderate, sigmoid_core::<F>, scalar::sigmoid),
        Activation::Tanh => map_blocks(xs, tanh_domain, tanh_core::<F>, scalar::tanh),
        Activation::LogSigmoid => {
            map_blocks(xs, moderate, log_sigmoid_core::<F>, scalar::log_sigmoid)
        }
        Activation::Relu => xs.iter_mut().for_each(|x| *x = relu(*x)),
        Activation::LeakyRelu => xs.iter_mut().for_each(|x| *x = leaky_relu(*x)),
        Activation::Identity => {}
    }
}

/// `grads *= act'` where the activation's output is `ys`.
#[inline(always)]
fn derivative<const F: bool>(ys: &[f32], grads: &mut [f32], act: Activation) {
    match act {
        Activation::Softplus => scale_blocks(
            ys,
            grads,
            softplus_output,
            one_minus_exp_neg_core::<F>,
            scalar::one_minus_exp_neg,
        ),
        // 1 - e^y = 1 - e^-(-y): softplus' at -y
        Activation::LogSigmoid => scale_blocks(
            ys,
            grads,
            |y| softplus_output(-y),
            |y| one_minus_exp_neg_core::<F>(-y),
            |y| scalar::one_minus_exp_neg(-y),
        ),
        Activation::Sigmoid => scale(ys, grads, |y| y * (1.0 - y)),
        Activation::Tanh => scale(ys, grads, |y| 1.0 - y * y),
        Activation::Relu => scale(ys, grads, |y| if y > 0.0 { 1.0 } else { 0.0 }),
        Activation::LeakyRelu => {
            scale(ys, grads, |y| if y >= 0.0 { 1.0 } else { LEAKY_RELU_SLOPE })
        }
        Activation::Identity => {}
    }
}

/// Rows of `out` (`h` wide, the first being row `row0` of the whole batch): add `bias` and the
/// shift row (row `r` of `shift` when it has a row per batch row, else its only row), then
/// `act`.
#[inline(always)]
fn forward_rows<const F: bool>(rows: Rows<'_>, out: &mut [f32], act: Activation) {
    let h = rows.bias.len();
    for (i, row) in out.chunks_exact_mut(h).enumerate() {
        let r = rows.row0 + i;
        let s = rows.shift_row(r);
        match rows.product {
            // the product itself, for an input of a few columns: row = sum_c x[r, c] w[c]
            Some(Small { x, w, k }) => {
                for ((o, &b), &s) in row.iter_mut().zip(rows.bias).zip(s) {
                    *o = b + s;
                }
                for (c, &xc) in x[r * k..(r + 1) * k].iter().enumerate() {
                    for (o, &wc) in row.iter_mut().zip(&w[c * h..(c + 1) * h]) {
                        *o = madd::<F>(xc, wc, *o);
                    }
                }
            }
            None => {
                for ((o, &b), &s) in row.iter_mut().zip(rows.bias).zip(s) {
                    *o += b + s;
                }
            }
        }
        activate::<F>(row, act);
    }
}

/// A product `x w` with `x` `[n, k]` of a few columns, computed row by row in the element-wise
/// pass instead of by gemm (whose packing dominates at such k).
#[derive(Clone, Copy)]
pub(crate) struct Small<'a> {
    /// `[n, k]`, row-major.
    pub x: &'a [f32],
    /// `[k, h]`, row-major.
    pub w: &'a [f32],
    pub k: usize,
}

/// `out[i] += a[r, i] b[r]` over the rows r of `b` (`[len, n]`): `a` is `[len, m]`, `out`
/// `[m, n]` (a product `aᵀ b` of few rows, summed along the long dimension).
#[inline(always)]
fn accumulate_rows<const F: bool>(a: &[f32], b: &[f32], out: &mut [f32], m: usize) {
    let n = out.len() / m.max(1);
    for (ar, br) in a.chunks_exact(m).zip(b.chunks_exact(n)) {
        for (&ai, oi) in ar.iter().zip(out.chunks_exact_mut(n)) {
            for (o, &bv) in oi.iter_mut().zip(br) {
                *o = madd::<F>(ai, bv, *o);
            }
        }
    }
}

/// `out[r, j] = sum_i x[r, i] wt[j, i]` for rows of `x` (`[len, k]`) and the few rows of `wt`
/// (`[h, k]`, h <= [`SMALL_K`]): a product with few output columns (a readout), as h dot
/// products per row summed side by side in 16 lanes each (gemm's kernels are 16 rows tall).
#[inline(always)]
fn dot_rows<const F: bool>(x: &[f32], wt: &[f32], out: &mut [f32], k: usize) {
    const LANES: usize = 16;
    let h = wt.len() / k.max(1);
    assert!(
        h <= SMALL_K,
        "dot_rows takes at most {SMALL_K} output columns"
    );
    let chunks = k / LANES;
    for (xr, o) in x.chunks_exact(k).zip(out.chunks_exact_mut(h.max(1))) {
        let mut acc = [[0.0f32; LANES]; SMALL_K];
        for c in 0..chunks {
            let xc: &[f32; LANES] = xr[c * LANES..(c + 1) * LANES].try_into().expect("lanes");
            for (j, a) in acc.iter_mut().enumerate().take(h) {
                let w: &[f32; LANES] = wt[j * k + c * LANES..j * k + (c + 1) * LANES]
                    .try_into()
                    .expect("lanes");
                for l in 0..LANES {
                    a[l] = madd::<F>(xc[l], w[l], a[l]);
                }
            }
        }
        for (j, (o, a)) in o.iter_mut().zip(&acc).enumerate() {
            // the lanes in a fixed order, then the columns past the last full chunk
            let mut sum = a.iter().sum::<f32>();
            for i in chunks * LANES..k {
                sum = madd::<F>(xr[i], wt[j * k + i], sum);
            }
            *o = sum;
        }
    }
}

/// Inputs of at most this many columns take [`Small`].
pub(crate) const SMALL_K: usize = 8;

/// What the forward pass adds to each row.
#[derive(Clone, Copy)]
pub(crate) struct Rows<'a> {
    /// `[h]`.
    pub bias: &'a [f32],
    /// `[n, h]` or `[1, h]`, or with `index` a table of rows.
    pub shift: &'a [f32],
    /// Which row of `shift` each batch row takes (all below its row count).
    pub index: Option<&'a [usize]>,
    /// The product to compute here (the output then holds nothing yet), or none (the output
    /// holds `x w`).
    pub product: Option<Small<'a>>,
    /// The batch row of the first row handed to a kernel.
    pub row0: usize,
}

impl Rows<'_> {
    fn shift_row(&self, r: usize) -> &[f32] {
        let h = self.bias.len();
        let row = match self.index {
            Some(index) => index[r],
            None if self.shift.len() == h => 0,
            None => r,
        };
        &self.shift[row * h..(row + 1) * h]
    }
}

/// `table[index[r]] += grad[r]` for the rows of `grad` (`h` wide), into `table` (`[rows, h]`).
pub(crate) fn scatter_rows(grad: &[f32], index: &[usize], table: &mut [f32], h: usize) {
    sum_rows_kernel(Isa::detect(), grad, Some(index), table, h);
}

/// The rows of `grad` (`h` wide) summed into `out`: into its row `index[r]` (`out` `[rows, h]`),
/// or without `index` all into `out` (`[h]`).
#[inline(always)]
fn sum_rows<const F: bool>(grad: &[f32], index: Option<&[usize]>, out: &mut [f32], h: usize) {
    let add = |o: &mut [f32], g: &[f32]| o.iter_mut().zip(g).for_each(|(o, &g)| *o += g);
    match index {
        Some(index) => {
            for (g, &i) in grad.chunks_exact(h).zip(index) {
                add(&mut out[i * h..(i + 1) * h], g);
            }
        }
        None => grad.chunks_exact(h).for_each(|g| add(out, g)),
    }
}

/// e^x: [`exp_core`] on its domain, libm's elsewhere.
#[inline(always)]
fn exp_any<const F: bool>(x: f32) -> f32 {
    if (-87.0..=88.0).contains(&x) {
        exp_core::<F>(x)
    } else {
        x.exp()
    }
}

/// The diagonal Gaussian KL per row, `out[r] = ½ Σ_c (lvp - lvq + (vq + (mq - mp)²) e^-lvp - 1)`
/// over rows of `d` columns, `vq` and `lvq` `qd` wide (1: one value for the row, or d), with
/// `diffusion_core::kl_diag_gaussian`'s operations in its order.
#[inline(always)]
fn gaussian_kl_rows<const F: bool>(q: GaussianRows<'_>, out: &mut [f32]) {
    let (d, qd) = (q.d, q.qd);
    for (r, o) in out.iter_mut().enumerate() {
        let mut sum = 0.0f32;
        for c in 0..d {
            let (i, j) = (r * d + c, r * qd + c.min(qd - 1));
            let diff = q.mu_q[i] - q.mu_p[i];
            let ratio = (diff * diff + q.var_q[j]) * exp_any::<F>(-q.logvar_p[i]);
            sum += (q.logvar_p[i] - q.logvar_q[j] + ratio - 1.0) * 0.5;
        }
        *o = sum;
    }
}

/// [`gaussian_kl_rows`]' gradients for the rows' output gradients `g`, into the buffers given
/// (each `None` when not wanted): mu_q's and mu_p's `[n, d]`, var_q's and logvar_q's `[n, qd]`
/// (summed into, so they start at zero), logvar_p's `[n, d]`.
#[inline(always)]
fn gaussian_kl_grad_rows<const F: bool>(q: GaussianRows<'_>, g: &[f32], out: GaussianGrads<'_>) {
    let (d, qd) = (q.d, q.qd);
    let GaussianGrads {
        mut mu_q,
        mut var_q,
        mut logvar_q,
        mut mu_p,
        mut logvar_p,
    } = out;
    for (r, &g) in g.iter().enumerate() {
        for c in 0..d {
            let (i, j) = (r * d + c, r * qd + c.min(qd - 1));
            let diff = q.mu_q[i] - q.mu_p[i];
            let e = exp_any::<F>(-q.logvar_p[i]);
            let half = 0.5 * g;
            let dm = (g * diff) * e;
            if let Some(v) = mu_q.as_deref_mut() {
                v[i] = dm;
            }
            if let Some(v) = mu_p.as_deref_mut() {
                v[i] = -dm;
            }
            if let Some(v) = var_q.as_deref_mut() {
                v[j] += half * e;
            }
            if let Some(v) = logvar_q.as_deref_mut() {
                v[j] -= half;
            }
            if let Some(v) = logvar_p.as_deref_mut() {
                // ½ g - (½ g (diff² + vq)) e: the product that can be huge taken last
                v[i] = half - (half * (diff * diff + q.var_q[j])) * e;
            }
        }
    }
}

/// Rows of the Gaussian KL's inputs (see [`gaussian_kl_rows`]).
#[derive(Clone, Copy)]
pub(crate) struct GaussianRows<'a> {
    pub mu_q: &'a [f32],
    pub var_q: &'a [f32],
    pub logvar_q: &'a [f32],
    pub mu_p: &'a [f32],
    pub logvar_p: &'a [f32],
    pub d: usize,
    pub qd: usize,
}

impl<'a> GaussianRows<'a> {
    /// Rows `r0..r0 + len`.
    pub(crate) fn rows(&self, r0: usize, len: usize) -> GaussianRows<'a> {
        let (d, qd) = (self.d, self.qd);
        GaussianRows {
            mu_q: &self.mu_q[r0 * d..(r0 + len) * d],
            var_q: &self.var_q[r0 * qd..(r0 + len) * qd],
            logvar_q: &self.logvar_q[r0 * qd..(r0 + len) * qd],
            mu_p: &self.mu_p[r0 * d..(r0 + len) * d],
            logvar_p: &self.logvar_p[r0 * d..(r0 + len) * d],
            d,
            qd,
        }
    }
}

/// Where [`gaussian_kl_grad_rows`] writes each input's gradient.
pub(crate) struct GaussianGrads<'a> {
    pub mu_q: Option<&'a mut [f32]>,
    pub var_q: Option<&'a mut [f32]>,
    pub logvar_q: Option<&'a mut [f32]>,
    pub mu_p: Option<&'a mut [f32]>,
    pub logvar_p: Option<&'a mut [f32]>,
}

/// The scalars of one Adam step, as Burn's `Adam` forms them (f32 arithmetic).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamScalars {
    /// β1 and 1 - β1.
    pub beta_1: (f32, f32),
    /// β2 and 1 - β2.
    pub beta_2: (f32, f32),
    /// sqrt(1 - β2^t) / (1 - β1^t).
    pub combined: f32,
    /// ε sqrt(1 - β2^t).
    pub epsilon: f32,
    /// The learning rate.
    pub lr: f32,
}

/// One Adam step in place, element by element, with Burn's operations in Burn's order (each
/// rounded to f32, no fused multiply-add): m = m β1 + g (1 - β1), v = v β2 + g² (1 - β2),
/// p -= (m c) / (sqrt(v) + ε') lr.
#[inline(always)]
fn adam_rows<const F: bool>(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    s: AdamScalars,
) {
    let _ = F;
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        *m = *m * s.beta_1.0 + g * s.beta_1.1;
        *v = *v * s.beta_2.0 + (g * g) * s.beta_2.1;
        let step = (*m * s.combined) / (v.sqrt() + s.epsilon);
        *p -= step * s.lr;
    }
}

/// The widest instruction set the kernels are compiled for that this CPU runs (ordered
/// narrowest first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// The target's baseline (SSE2 on x86-64).
    Base,
    /// AVX2 with FMA.
    Avx2,
    /// AVX-512F (with AVX2 and FMA).
    Avx512,
}

/// The environment variable that caps the kernels' instruction set at `avx512`, `avx2` or
/// `base` (a cap at or above what the CPU runs has no effect): to test and time the narrower
/// kernels on a wider CPU. Unset, the kernels run the widest the CPU has. gemm's matrix products pick
/// their own.
pub const ISA_VARIABLE: &str = "DIFFUSION_KERNELS_ISA";

impl Isa {
    /// What the kernels run: the widest instruction set this CPU has, capped by
    /// [`ISA_VARIABLE`] where it is set to one of its values; read once.
    pub fn detect() -> Isa {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            let cpu = Isa::cpu();
            match Isa::cap() {
                Ok(Some(cap)) => cap.min(cpu),
                _ => cpu,
            }
        })
    }

    /// The cap [`ISA_VARIABLE`] sets: none where it is unset, an error naming the values it
    /// takes for any other value (which [`Isa::detect`] ignores).
    pub fn cap() -> Result<Option<Isa>, String> {
        let Some(value) = std::env::var_os(ISA_VARIABLE) else {
            return Ok(None);
        };
        match value.to_str().map(str::trim) {
            Some("avx512") => Ok(Some(Isa::Avx512)),
            Some("avx2") => Ok(Some(Isa::Avx2)),
            Some("base") => Ok(Some(Isa::Base)),
            _ => Err(format!(
                "{ISA_VARIABLE}={} is none of avx512, avx2, base",
                value.to_string_lossy()
            )),
        }
    }

    /// The widest instruction set the kernels are compiled for that this CPU runs.
    fn cpu() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            use std::is_x86_feature_detected as has;
            if !(has!("avx2") && has!("fma")) {
                Isa::Base
            } else if has!("avx512f") {
                Isa::Avx512
            } else {
                Isa::Avx2
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Base
    }

    /// Every variant this CPU runs, up to [`ISA_VARIABLE`]'s cap, narrowest first (for
    /// tests).
    pub fn supported() -> Vec<Isa> {
        let best = Isa::detect();
        [Isa::Base, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|&i| i <= best)
            .collect()
    }
}

/// The three compilations of one kernel, and the pick among them.
macro_rules! dispatched {
    ($name:ident, $inner:ident, ($($arg:ident: $ty:ty),*)) => {
        pub(crate) fn $name(isa: Isa, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) {
                    $inner::<true>($($arg),*)
                }
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn avx512($($arg: $ty),*) {
                    $inner::<true>($($arg),*)
                }
                match isa {
                    // SAFETY (both): `isa` is at most what `Isa::detect` found on this CPU.
                    Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    Isa::Base => {}
                }
            }
            let _ = isa;
            $inner::<false>($($arg),*)
        }
    };
}

dispatched!(forward_kernel, forward_rows, (rows: Rows<'_>, out: &mut [f32], act: Activation));
dispatched!(backward_kernel, derivative, (ys: &[f32], grads: &mut [f32], act: Activation));
dispatched!(dot_kernel, dot_rows, (x: &[f32], wt: &[f32], out: &mut [f32], k: usize));
dispatched!(activate_kernel, activate, (xs: &mut [f32], act: Activation));
dispatched!(accumulate_kernel, accumulate_rows, (a: &[f32], b: &[f32], out: &mut [f32], m: usize));
dispatched!(adam_kernel, adam_rows, (p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: AdamScalars));
dispatched!(gaussian_kl_kernel, gaussian_kl_rows, (q: GaussianRows<'_>, out: &mut [f32]));
dispatched!(gaussian_kl_grad_kernel, gaussian_kl_grad_rows, (q: GaussianRows<'_>, g: &[f32], out: GaussianGrads<'_>));
dispatched!(sum_rows_kernel, sum_rows, (grad: &[f32], index: Option<&[usize]>, out: &mut [f32], h: usize));

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f64) -> f64 {
        (a as f64 - b).abs() / (b.abs() * f32::EPSILON as f64).max(f32::MIN_POSITIVE as f64)
    }

    fn activated(isa: Isa, act: Activation, xs: &[f32]) -> Vec<f32> {
        let mut out = xs.to_vec();
        let zeros = vec![0.0; xs.len()];
        let rows = Rows {
            bias: &zeros,
            shift: &zeros,
            index: None,
            product: None,
            row0: 0,
        };
        forward_kernel(isa, rows, &mut out, act);
        out
    }

    fn sweep() -> Vec<f32> {
        let mut xs: Vec<f32> = (0..100_001)
            .map(|i| -100.0 + 200.0 * i as f32 / 100_000.0)
            .collect();
        xs.extend((1..2000).map(|i| 1e-6 * i as f32));
        xs.extend((1..2000).map(|i| -1e-6 * i as f32));
        xs.extend([
            0.0, -0.0, 1e-30, -1e-30, 87.0, -87.0, 87.5, -87.5, 150.0, -150.0,
        ]);
        xs
    }

    fn exact(act: Activation, x: f64) -> f64 {
        match act {
            Activation::Softplus => x.max(0.0) + (-x.abs()).exp().ln_1p(),
            Activation::LogSigmoid => x.min(0.0) - (-x.abs()).exp().ln_1p(),
            Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Activation::Tanh => x.tanh(),
            Activation::Relu => x.max(0.0),
            Activation::LeakyRelu if x < 0.0 => x * LEAKY_RELU_SLOPE as f64,
            Activation::LeakyRelu => x,
            Activation::Identity => x,
        }
    }

    /// Every compiled variant against f64 definitions over a dense sweep, and special values.
    #[test]
    fn activations_are_within_four_ulp_and_keep_special_values() {
        let xs = sweep();
        for isa in Isa::supported() {
            for act in Activation::ALL {
                let ys = activated(isa, act, &xs);
                for (&x, &y) in xs.iter().zip(&ys) {
                    let want = exact(act, x as f64);
                    let err = ulps(y, want);
                    assert!(
                        err <= 4.0,
                        "{act:?} {isa:?} at {x}: {y} vs {want} ({err} ulp)"
                    );
                }
                let specials = activated(isa, act, &[f32::NAN, f32::INFINITY, f32::NEG_INFINITY]);
                assert!(specials[0].is_nan(), "{act:?} {isa:?} of NaN");
                assert_eq!(
                    specials[1],
                    exact(act, f64::INFINITY) as f32,
                    "{act:?} of +inf"
                );
                assert_eq!(
                    specials[2],
                    exact(act, f64::NEG_INFINITY) as f32,
                    "{act:?} of -inf"
                );
            }
        }
    }

    /// Dot products of rows with few columns, every compiled variant, against f64: k below,
    /// at and past the lane width, every h up to SMALL_K.
    #[test]
    fn dot_rows_against_f64() {
        let value = |i: usize| ((i as f32) * 0.377).sin();
        for isa in Isa::supported() {
            for k in [1, 15, 16, 37, 128] {
                for h in 1..=SMALL_K {
                    let len = 5;
                    let x: Vec<f32> = (0..len * k).map(value).collect();
                    let wt: Vec<f32> = (0..h * k).map(|i| value(i + 1000)).collect();
                    let mut out = vec![f32::NAN; len * h];
                    dot_kernel(isa, &x, &wt, &mut out, k);
                    for r in 0..len {
                        for j in 0..h {
                            let want: f64 = (0..k)
                                .map(|i| x[r * k + i] as f64 * wt[j * k + i] as f64)
                                .sum();
                            let got = out[r * h + j] as f64;
                            assert!(
                                (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                                "{isa:?} k {k} h {h} row {r} column {j}: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The derivative from the output against f64 derivatives at the same input.
    #[test]
    fn derivatives_from_the_output_are_within_eight_ulp() {
        let xs = sweep();
        for isa in Isa::supported() {
            for act in Activation::ALL {
                let ys = activated(isa, act, &xs);
                let mut grads = vec![1.0f32; xs.len()];
                backward_kernel(isa, &ys, &mut grads, act);
                for ((&x, &y), &g) in xs.iter().zip(&ys).zip(&grads) {
                    // the derivative at the f32 output actually produced, in f64
                    let y = y as f64;
                    let want = match act {
                        Activation::Softplus => -(-y).exp_m1(),
                        Activation::LogSigmoid => -y.exp_m1(),
                        Activation::Sigmoid => y * (1.0 - y),
                        Activation::Tanh => 1.0 - y * y,
                        Activation::Relu => f64::from(u8::from(y > 0.0)),
                        Activation::LeakyRelu if y < 0.0 => LEAKY_RELU_SLOPE as f64,
                        Activation::LeakyRelu => 1.0,
                        Activation::Identity => 1.0,
                    };
                    let err = ulps(g, want);
                    // 1 - y^2 and y (1 - y) cancel near |y| = 1 in f32 as in f64 on the
                    // rounded y: compare absolutely there
                    let close = (g as f64 - want).abs() <= 4.0 * f32::EPSILON as f64;
                    assert!(
                        err <= 8.0 || close,
                        "{act:?}' {isa:?} at {x}: {g} vs {want}"
                    );
                }
            }
        }
    }

    /// Bias and shift rows are added before the activation, per row or broadcast, and a
    /// kernel handed rows from `row0` on takes their own shift rows.
    #[test]
    fn bias_and_shift_are_added_per_row_or_broadcast() {
        let bias = [0.5f32, -1.0, 2.0];
        let per_row = [1.0f32, 2.0, 3.0, -4.0, -5.0, -6.0];
        let one_row = [0.25f32, 0.0, -0.25];
        let z = [0.0f32, 1.0, -1.0, 2.0, -2.0, 0.5];
        for isa in Isa::supported() {
            for (shift, row0) in [(&per_row[..], 0), (&one_row[..], 0), (&per_row[..], 1)] {
                let mut out = z[row0 * 3..].to_vec();
                let rows = Rows {
                    bias: &bias,
                    shift,
                    index: None,
                    product: None,
                    row0,
                };
                forward_kernel(isa, rows, &mut out, Activation::Relu);
                for (k, &o) in out.iter().enumerate() {
                    let (r, j) = (row0 + k / 3, k % 3);
                    let s = if shift.len() == 3 {
                        shift[j]
                    } else {
                        shift[r * 3 + j]
                    };
                    assert_eq!(
                        o,
                        (z[r * 3 + j] + bias[j] + s).max(0.0),
                        "{isa:?} ({r}, {j})"
                    );
                }
            }
        }
    }

    /// With an index each row takes its own table row, from `row0` on; the scatter is its
    /// transpose (sums of the rows that took each table row).
    #[test]
    fn table_rows_by_index_and_their_scatter() {
        let bias = [0.0f32, 1.0];
        let table = [10.0f32, 20.0, 30.0, 40.0, 50.0, 60.0];
        let index = [2usize, 0, 2];
        let z = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        for isa in Isa::supported() {
            for row0 in [0, 1] {
                let mut out = z[row0 * 2..].to_vec();
                let rows = Rows {
                    bias: &bias,
                    shift: &table,
                    index: Some(&index),
                    product: None,
                    row0,
                };
                forward_kernel(isa, rows, &mut out, Activation::Relu);
                for (k, &o) in out.iter().enumerate() {
                    let (r, j) = (row0 + k / 2, k % 2);
                    assert_eq!(o, z[r * 2 + j] + bias[j] + table[index[r] * 2 + j]);
                }
            }
        }
        let mut sums = [0.0f32; 6];
        scatter_rows(&z, &index, &mut sums, 2);
        assert_eq!(sums, [3.0, 4.0, 0.0, 0.0, 6.0, 8.0]);
    }

    /// An input of a few columns: the product computed in the pass equals the sum by hand.
    #[test]
    fn small_products_in_the_pass() {
        let (n, k, h) = (5, 3, 4);
        let x: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..k * h).map(|i| (i as f32 * 0.71).cos()).collect();
        let bias = [0.1f32, -0.2, 0.3, 0.0];
        let shift = [1.0f32, 0.0, -1.0, 0.5];
        for isa in Isa::supported() {
            let mut out = vec![f32::NAN; n * h];
            let rows = Rows {
                bias: &bias,
                shift: &shift,
                index: None,
                product: Some(Small { x: &x, w: &w, k }),
                row0: 0,
            };
            forward_kernel(isa, rows, &mut out, Activation::Identity);
            for r in 0..n {
                for j in 0..h {
                    let want = bias[j]
                        + shift[j]
                        + (0..k).map(|c| x[r * k + c] * w[c * h + j]).sum::<f32>();
                    let got = out[r * h + j];
                    assert!(
                        (got - want).abs() <= 1e-6,
                        "{isa:?} ({r}, {j}): {got} vs {want}"
                    );
                }
            }
        }
    }
}
