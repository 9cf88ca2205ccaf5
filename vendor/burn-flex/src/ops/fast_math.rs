//! Vectorised, multi-threaded `exp`, `ln`, `sigmoid` and `log_sigmoid` (with the latter's
//! backward) for contiguous f32 data.
//!
//! (Local patch, written to be offered upstream: see `vendor/README.md` of the project that
//! carries it.) The generic unary kernel calls libm's `expf`/`logf` once per element on one
//! thread; in MLP training with softplus those two calls were over a quarter of a step. Here the
//! Cephes single-precision algorithms (range reduction plus a short polynomial, branch-free) run
//! over slices, which the compiler vectorises; on x86-64 the loop is compiled again for AVX2 with
//! FMA and for AVX-512, and the widest the CPU runs is chosen at run time. Long slices are split
//! across rayon's pool.
//!
//! Accuracy: `exp` and `ln` within about 2 ulp for every finite input, the sigmoids within 4;
//! inputs outside the polynomials' domains (exp: beyond [-87, 88]; ln: zero, negative,
//! subnormal, infinite; the sigmoids: |x| > 87) and NaN go to the scalar definitions (libm's
//! `expf`/`logf`, and the activations' own scalar sigmoids), so the special values are theirs.

use crate::ops::activation::{log_sigmoid_f32, sigmoid_f32};

/// Elements per rayon task, and the length below which one thread does everything: the split
/// of every patched element-wise loop (here, the maps of `unary`, the broadcast rows of
/// `binary`).
#[cfg(feature = "rayon")]
pub(crate) const TASK: usize = 8 * 1024;
#[cfg(feature = "rayon")]
pub(crate) const PARALLEL_MIN: usize = 32 * 1024;
/// Elements checked for special values before each vectorised block.
const BLOCK: usize = 512;

const LOG2E: f32 = core::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 * 2^23: adding and subtracting it rounds an f32 below 2^22 to the nearest integer.
const ROUNDER: f32 = 12_582_912.0;
const EXP_LO: f32 = -87.0;
const EXP_HI: f32 = 88.0;

/// a b + c: one fused instruction in the kernels compiled with FMA (`F`), two otherwise (where
/// `mul_add` would be a call into libm).
#[inline(always)]
fn madd<const F: bool>(a: f32, b: f32, c: f32) -> f32 {
    if F { a.mul_add(b, c) } else { a * b + c }
}

/// e^x for x in [EXP_LO, EXP_HI] (Cephes `expf`).
#[inline(always)]
fn exp_core<const F: bool>(x: f32) -> f32 {
    // t = 1.5 2^23 + n exactly, so n is also in t's low bits (integer arithmetic on the bits
    // vectorises, where a saturating `as i32` cast does not)
    let t = madd::<F>(x, LOG2E, ROUNDER);
    let n = t - ROUNDER;
    let r = madd::<F>(-n, LN2_LO, madd::<F>(-n, LN2_HI, x));
    let z = r * r;
    let mut p = 1.987_569_1e-4;
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        5.000_000_1e-1,
    ] {
        p = madd::<F>(p, r, c);
    }
    let y = madd::<F>(p, z, r) + 1.0;
    // 2^n from its exponent bits (n in [-126, 127] on this domain)
    let scale = f32::from_bits(
        t.to_bits()
            .wrapping_sub(ROUNDER.to_bits())
            .wrapping_add(127)
            << 23,
    );
    y * scale
}

/// ln x for normal positive finite x (Cephes `logf`).
#[inline(always)]
fn ln_core<const F: bool>(x: f32) -> f32 {
    const SQRT_HALF: f32 = core::f32::consts::FRAC_1_SQRT_2;
    let bits = x.to_bits();
    // x = m 2^k with m in [0.5, 1)
    let k = ((bits >> 23) & 0xff) as i32 - 126;
    let m = f32::from_bits((bits & 0x807f_ffff) | 0x3f00_0000);
    let small = m < SQRT_HALF;
    let k = (k - small as i32) as f32;
    let f = if small { m + m - 1.0 } else { m - 1.0 };
    ln_reduced::<F>(f, k)
}

/// ln((1 + f) 2^k) for f in [sqrt(1/2) - 1, sqrt(2) - 1] (the Cephes `logf` polynomial).
#[inline(always)]
fn ln_reduced<const F: bool>(f: f32, k: f32) -> f32 {
    let z = f * f;
    let mut p = 7.037_683_6e-2;
    for c in [
        -1.151_461e-1,
        1.167_699_9e-1,
        -1.242_014_1e-1,
        1.424_932_3e-1,
        -1.666_805_8e-1,
        2.000_071_4e-1,
        -2.499_999_4e-1,
        3.333_333_1e-1,
    ] {
        p = madd::<F>(p, f, c);
    }
    let p = p * f * z;
    let y = madd::<F>(-0.5, z, madd::<F>(LN2_LO, k, p));
    madd::<F>(LN2_HI, k, f + y)
}

/// ln(1 + e) for e in [0, 1], with the relative accuracy of `log1p`: 1 + e = (1 + f) 2^k with
/// f computed from e without rounding 1 + e.
#[inline(always)]
fn ln_1p_unit<const F: bool>(e: f32) -> f32 {
    const SQRT2_MINUS_1: f32 = core::f32::consts::SQRT_2 - 1.0;
    let big = e > SQRT2_MINUS_1;
    let f = if big { (e - 1.0) * 0.5 } else { e };
    ln_reduced::<F>(f, if big { 1.0 } else { 0.0 })
}

#[inline(always)]
fn exp_in_domain(x: f32) -> bool {
    (EXP_LO..=EXP_HI).contains(&x)
}

#[inline(always)]
fn ln_in_domain(x: f32) -> bool {
    (f32::MIN_POSITIVE..=f32::MAX).contains(&x)
}

/// Applies `core` to every element of `xs` in place, or libm's `fallback` to a block holding a
/// value outside `domain`.
#[inline(always)]
fn apply_blocks(
    xs: &mut [f32],
    domain: fn(f32) -> bool,
    core: fn(f32) -> f32,
    fallback: fn(f32) -> f32,
) {
    for block in xs.chunks_mut(BLOCK) {
        // a fold rather than `all`, so that the scan vectorises
        let inside = block.iter().fold(true, |ok, &x| ok & domain(x));
        if inside {
            for x in block.iter_mut() {
                *x = core(*x);
            }
        } else {
            for x in block.iter_mut() {
                *x = if domain(*x) { core(*x) } else { fallback(*x) };
            }
        }
    }
}

/// ln sigmoid(x) = min(x, 0) - ln(1 + e^-|x|) for |x| <= 87 (the domain of `exp_core`).
#[inline(always)]
fn log_sigmoid_core<const F: bool>(x: f32) -> f32 {
    let low = if x < 0.0 { x } else { 0.0 };
    low - ln_1p_unit::<F>(exp_core::<F>(-x.abs()))
}

/// sigmoid(-x), the derivative of ln sigmoid(x), for |x| <= 87: e / (1 + e) for x >= 0 and
/// 1 / (1 + e) below, e = e^-|x|.
#[inline(always)]
fn sigmoid_neg_core<const F: bool>(x: f32) -> f32 {
    let e = exp_core::<F>(-x.abs());
    let top = if x >= 0.0 { e } else { 1.0 };
    top / (1.0 + e)
}

/// sigmoid(x) = 1 / (1 + e^-x) for |x| <= 87.
#[inline(always)]
fn sigmoid_core<const F: bool>(x: f32) -> f32 {
    sigmoid_neg_core::<F>(-x)
}

/// |x| <= 87; false for NaN.
#[inline(always)]
fn moderate(x: f32) -> bool {
    x.abs() <= -EXP_LO
}

/// sigmoid(-x) by the activations' scalar definition, for values outside [`moderate`].
fn sigmoid_neg_scalar(x: f32) -> f32 {
    sigmoid_f32(-x)
}

/// `grads[i] *= core(xs[i])`, blockwise as [`apply_blocks`].
#[inline(always)]
fn scale_blocks(xs: &[f32], grads: &mut [f32], core: fn(f32) -> f32, fallback: fn(f32) -> f32) {
    for (block, g) in xs.chunks(BLOCK).zip(grads.chunks_mut(BLOCK)) {
        let inside = block.iter().fold(true, |ok, &x| ok & moderate(x));
        if inside {
            for (g, &x) in g.iter_mut().zip(block) {
                *g *= core(x);
            }
        } else {
            for (g, &x) in g.iter_mut().zip(block) {
                *g *= if moderate(x) { core(x) } else { fallback(x) };
            }
        }
    }
}

/// The element-wise functions with a vectorised kernel.
#[derive(Clone, Copy)]
enum Op {
    Exp,
    Ln,
    LogSigmoid,
    Sigmoid,
}

#[inline(always)]
fn apply<const F: bool>(xs: &mut [f32], op: Op) {
    match op {
        Op::Exp => apply_blocks(xs, exp_in_domain, exp_core::<F>, f32::exp),
        Op::Ln => apply_blocks(xs, ln_in_domain, ln_core::<F>, f32::ln),
        Op::LogSigmoid => apply_blocks(xs, moderate, log_sigmoid_core::<F>, log_sigmoid_f32),
        Op::Sigmoid => apply_blocks(xs, moderate, sigmoid_core::<F>, sigmoid_f32),
    }
}

fn apply_serial(xs: &mut [f32], op: Op) {
    apply::<false>(xs, op)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn apply_avx2(xs: &mut [f32], op: Op) {
    apply::<true>(xs, op)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn apply_avx512(xs: &mut [f32], op: Op) {
    apply::<true>(xs, op)
}

fn sigmoid_neg_scale_serial(xs: &[f32], grads: &mut [f32]) {
    scale_blocks(xs, grads, sigmoid_neg_core::<false>, sigmoid_neg_scalar)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sigmoid_neg_scale_avx2(xs: &[f32], grads: &mut [f32]) {
    scale_blocks(xs, grads, sigmoid_neg_core::<true>, sigmoid_neg_scalar)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn sigmoid_neg_scale_avx512(xs: &[f32], grads: &mut [f32]) {
    scale_blocks(xs, grads, sigmoid_neg_core::<true>, sigmoid_neg_scalar)
}

/// The widest instruction set the kernels are compiled for that this CPU runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Isa {
    Base,
    #[cfg_attr(not(all(target_arch = "x86_64", feature = "std")), allow(dead_code))]
    Avx2,
    #[cfg_attr(not(all(target_arch = "x86_64", feature = "std")), allow(dead_code))]
    Avx512,
}

#[cfg(all(target_arch = "x86_64", feature = "std"))]
fn isa() -> Isa {
    use std::is_x86_feature_detected as has;
    if !(has!("avx2") && has!("fma")) {
        Isa::Base
    } else if has!("avx512f") {
        Isa::Avx512
    } else {
        Isa::Avx2
    }
}

#[cfg(not(all(target_arch = "x86_64", feature = "std")))]
fn isa() -> Isa {
    Isa::Base
}

/// `op` over `xs` with the best kernel this CPU runs, on one thread.
fn kernel(xs: &mut [f32], op: Op) {
    match isa() {
        // SAFETY (both): the CPU supports the features these functions are compiled for.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { apply_avx512(xs, op) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { apply_avx2(xs, op) },
        _ => apply_serial(xs, op),
    }
}

fn run(xs: &mut [f32], op: Op) {
    #[cfg(feature = "rayon")]
    if xs.len() >= PARALLEL_MIN {
        use rayon::prelude::*;
        xs.par_chunks_mut(TASK).for_each(|c| kernel(c, op));
        return;
    }
    kernel(xs, op)
}

fn sigmoid_neg_scale_kernel(xs: &[f32], grads: &mut [f32]) {
    match isa() {
        // SAFETY (both): the CPU supports the features these functions are compiled for.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { sigmoid_neg_scale_avx512(xs, grads) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { sigmoid_neg_scale_avx2(xs, grads) },
        _ => sigmoid_neg_scale_serial(xs, grads),
    }
}

/// e^x of every element, in place.
pub fn exp_inplace(xs: &mut [f32]) {
    run(xs, Op::Exp)
}

/// ln x of every element, in place.
pub fn ln_inplace(xs: &mut [f32]) {
    run(xs, Op::Ln)
}

/// ln sigmoid(x) = -ln(1 + e^-x) of every element, in place.
pub fn log_sigmoid_inplace(xs: &mut [f32]) {
    run(xs, Op::LogSigmoid)
}

/// sigmoid(x) = 1 / (1 + e^-x) of every element, in place.
pub fn sigmoid_inplace(xs: &mut [f32]) {
    run(xs, Op::Sigmoid)
}

/// `grads[i] *= sigmoid(-xs[i])`: the backward pass of ln sigmoid. The slices have one length.
pub fn log_sigmoid_backward_inplace(xs: &[f32], grads: &mut [f32]) {
    assert_eq!(
        xs.len(),
        grads.len(),
        "log_sigmoid_backward: length mismatch"
    );
    #[cfg(feature = "rayon")]
    if xs.len() >= PARALLEL_MIN {
        use rayon::prelude::*;
        grads
            .par_chunks_mut(TASK)
            .zip(xs.par_chunks(TASK))
            .for_each(|(g, x)| sigmoid_neg_scale_kernel(x, g));
        return;
    }
    sigmoid_neg_scale_kernel(xs, grads)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    type Kernel = Box<dyn Fn(&mut [f32])>;

    /// Every compiled kernel for `op` that this CPU runs, and the public multi-threaded entry.
    fn kernels_for(op: Op) -> Vec<Kernel> {
        let mut v: Vec<Kernel> = vec![Box::new(move |xs| apply_serial(xs, op))];
        #[cfg(all(target_arch = "x86_64", feature = "std"))]
        {
            if isa() != Isa::Base {
                v.push(Box::new(move |xs| unsafe { apply_avx2(xs, op) }));
            }
            if isa() == Isa::Avx512 {
                v.push(Box::new(move |xs| unsafe { apply_avx512(xs, op) }));
            }
        }
        v.push(Box::new(move |xs| run(xs, op)));
        v
    }

    type BackwardKernel = Box<dyn Fn(&[f32], &mut [f32])>;

    fn backward_kernels() -> Vec<BackwardKernel> {
        let mut v: Vec<BackwardKernel> = vec![Box::new(sigmoid_neg_scale_serial)];
        #[cfg(all(target_arch = "x86_64", feature = "std"))]
        {
            if isa() != Isa::Base {
                v.push(Box::new(|xs, gs| unsafe { sigmoid_neg_scale_avx2(xs, gs) }));
            }
            if isa() == Isa::Avx512 {
                v.push(Box::new(|xs, gs| unsafe {
                    sigmoid_neg_scale_avx512(xs, gs)
                }));
            }
        }
        v.push(Box::new(log_sigmoid_backward_inplace));
        v
    }

    fn ulps(a: f32, b: f32) -> f64 {
        ((a as f64) - (b as f64)).abs()
            / (b.abs() as f64 * f32::EPSILON as f64).max(f64::MIN_POSITIVE)
    }

    /// Every kernel against f64 `exp`/`ln` rounded to f32, over a dense sweep of each domain,
    /// and the special values exactly as libm gives them.
    #[test]
    fn exp_and_ln_are_within_two_ulp_and_keep_the_special_values() {
        let mut xs: Vec<f32> = (0..200_001)
            .map(|i| -87.0 + 175.0 * i as f32 / 200_000.0)
            .collect();
        xs.extend([
            0.0, -0.0, 1e-30, -1e-30, 88.5, 88.7, 89.0, -87.3, -100.0, -104.0, -200.0,
        ]);
        xs.extend([f32::INFINITY, f32::NEG_INFINITY, f32::NAN]);
        let kernels_exp = kernels_for(Op::Exp);
        for kernel_exp in &kernels_exp {
            let mut ys = xs.clone();
            kernel_exp(&mut ys);
            for (&x, &y) in xs.iter().zip(&ys) {
                let want = (x as f64).exp() as f32;
                if x.is_nan() {
                    assert!(y.is_nan());
                } else if want.is_infinite() || want < f32::MIN_POSITIVE {
                    assert_eq!(y.to_bits(), x.exp().to_bits(), "exp({x})");
                } else {
                    assert!(ulps(y, want) <= 2.0, "exp({x}) = {y}, not {want}");
                }
            }
        }
        let mut xs: Vec<f32> = (0..200_001)
            .map(|i| 2f32.powf(-125.0 + 252.0 * i as f32 / 200_000.0))
            .collect();
        xs.extend((0..20_001).map(|i| 0.5 + i as f32 / 20_000.0));
        xs.extend([
            1.0,
            0.0,
            -0.0,
            -1.0,
            1e-40,
            f32::MAX,
            f32::INFINITY,
            f32::NAN,
        ]);
        let kernels_ln = kernels_for(Op::Ln);
        for kernel_ln in &kernels_ln {
            let mut ys = xs.clone();
            kernel_ln(&mut ys);
            for (&x, &y) in xs.iter().zip(&ys) {
                let want = (x as f64).ln() as f32;
                if !(f32::MIN_POSITIVE..=f32::MAX).contains(&x) {
                    assert_eq!(y.to_bits(), x.ln().to_bits(), "ln({x})");
                } else if want == 0.0 {
                    assert_eq!(y, 0.0, "ln({x})");
                } else {
                    // absolute error near x = 1, where ln x is tiny
                    let err = ((y as f64) - (x as f64).ln()).abs();
                    assert!(
                        ulps(y, want) <= 2.0 || err <= 1.5e-8,
                        "ln({x}) = {y}, not {want}"
                    );
                }
            }
        }
    }

    /// sigmoid against f64 over [-100, 100] and the special values.
    #[test]
    fn sigmoid_is_within_four_ulp() {
        let mut xs: Vec<f32> = (0..400_001)
            .map(|i| -100.0 + 200.0 * i as f32 / 400_000.0)
            .collect();
        xs.extend([0.0, -0.0, 87.5, -87.5, 104.0, -104.0, 1e30, -1e30]);
        xs.extend([f32::INFINITY, f32::NEG_INFINITY, f32::NAN]);
        for sigmoid in &kernels_for(Op::Sigmoid) {
            let mut ys = xs.clone();
            sigmoid(&mut ys);
            for (&x, &y) in xs.iter().zip(&ys) {
                let want = (1.0 / (1.0 + (-(x as f64)).exp())) as f32;
                if x.is_nan() {
                    assert!(y.is_nan());
                } else if want.abs() < f32::MIN_POSITIVE {
                    assert!(
                        y.abs() < f32::MIN_POSITIVE,
                        "sigmoid({x}) = {y}, not {want}"
                    );
                } else {
                    assert!(ulps(y, want) <= 4.0, "sigmoid({x}) = {y}, not {want}");
                }
            }
        }
    }

    /// ln sigmoid and its derivative sigmoid(-x) against f64, over [-100, 100] (both tails, where
    /// the result is tiny in relative terms or saturates), and the special values.
    #[test]
    fn log_sigmoid_and_its_backward_are_within_four_ulp() {
        let mut xs: Vec<f32> = (0..400_001)
            .map(|i| -100.0 + 200.0 * i as f32 / 400_000.0)
            .collect();
        xs.extend([
            0.0, -0.0, 1e-30, -1e-30, 87.5, 104.0, -104.0, 200.0, -200.0, 1e30, -1e30,
        ]);
        let specials = [f32::INFINITY, f32::NEG_INFINITY, f32::NAN];
        xs.extend(specials);
        let exact = |x: f64| -> f64 {
            if x >= 0.0 {
                -(-x).exp().ln_1p()
            } else {
                x - x.exp().ln_1p()
            }
        };
        let kernels = kernels_for(Op::LogSigmoid);
        for log_sigmoid in &kernels {
            let mut ys = xs.clone();
            log_sigmoid(&mut ys);
            for (&x, &y) in xs.iter().zip(&ys) {
                let want = exact(x as f64) as f32;
                if x.is_nan() {
                    assert!(y.is_nan());
                } else if want.is_infinite() {
                    assert_eq!(y, want, "log_sigmoid({x})");
                } else if want == 0.0 || want.abs() < f32::MIN_POSITIVE {
                    assert!(
                        y.abs() < f32::MIN_POSITIVE,
                        "log_sigmoid({x}) = {y}, not {want}"
                    );
                } else {
                    assert!(ulps(y, want) <= 4.0, "log_sigmoid({x}) = {y}, not {want}");
                }
            }
        }
        let grads: Vec<f32> = (0..xs.len()).map(|i| 1.0 + (i % 7) as f32).collect();
        for backward in &backward_kernels() {
            let mut got = grads.clone();
            backward(&xs, &mut got);
            for ((&x, &g), &y) in xs.iter().zip(&grads).zip(&got) {
                let want = (g as f64 / (1.0 + (x as f64).exp())) as f32;
                if x.is_nan() {
                    assert!(y.is_nan());
                } else if want.abs() < f32::MIN_POSITIVE {
                    assert!(
                        y.abs() < f32::MIN_POSITIVE,
                        "{g} sigmoid(-{x}) = {y}, not {want}"
                    );
                } else {
                    assert!(ulps(y, want) <= 4.0, "{g} sigmoid(-{x}) = {y}, not {want}");
                }
            }
        }
    }
}
