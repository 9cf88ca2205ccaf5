//! The discretised decoder of the chain's last step (Ho et al. 2020, eq. 13; SPEC section 7):
//! for integer data, p(k | x_1) = Π_i ∫ over pixel i's bin of N(x; μ_i, σ_i²), the outermost
//! bins extended to ±∞. It replaces the paper's fixed edge step, so the bound
//!
//! K = E_q[log p(k | x_1)] − Σ_{t=2..T} KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))
//!     − KL(q(x_T | x_0) || N(0, I))
//!
//! is a bound on the discrete data's log-probability itself: no dequantisation, no Jacobian.
//!
//! On the device the bin's probability is formed in log space from an approximation of
//! ln erfc that keeps its relative accuracy in both tails, where Φ(b) − Φ(a) in f32 would
//! lose every digit (a pixel a few σ from its bin).

#[cfg(feature = "burn")]
use burn::tensor::Tensor;

use crate::LN_2;
use crate::gaussian::GaussianDiffusion;

/// Bins whose lower (upper) end is the data's lowest (highest) level reach this many times the
/// levels' span (at least 1) below (above) it instead of to infinity: in the space the model
/// diffuses, where the data have unit scale, as good as infinite, and finite in every f32
/// operation that follows.
pub const OPEN_END: f32 = 1.0e3;

impl GaussianDiffusion {
    /// The part of the decoder's bound that does not depend on the model, for the points of
    /// `x0` (row-major `[n, d]`) on average, in bits: −KL(q(x_T | x_0) || N(0, I)) =
    /// ½ (d abar_T + d ln(1 − abar_T) − abar_T |x_0|²) nats.
    pub fn mean_decoder_constant_bits(&self, x0: &[f32]) -> f64 {
        let d = self.dim();
        let n = x0.len() / d.max(1);
        if n == 0 {
            return 0.0;
        }
        let mean_norm = x0.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / n as f64;
        let abar = self.alpha_bar(self.steps());
        let d = d as f64;
        0.5 * (d * abar + d * (1.0 - abar).ln() - abar * mean_norm) / LN_2
    }
}

/// ln Φ(z), the standard normal's log-CDF, element-wise. ln Φ(−|z|) = ln(erfc(|z|/√2) / 2) with
/// erfc in log space (Numerical Recipes' `erfcc`, relative error below 1.2e-7 for every
/// argument), and ln Φ(|z|) = ln(1 − Φ(−|z|)).
#[cfg(feature = "burn")]
pub fn log_normal_cdf(z: Tensor<2>) -> Tensor<2> {
    let a = z.clone().abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = (a.clone() * 0.5 + 1.0).recip();
    let mut poly = t.clone() * 0.170_872_77 - 0.822_152_23;
    for c in [
        1.488_515_9,
        -1.135_204,
        0.278_868_07,
        -0.186_288_06,
        0.096_784_18,
        0.374_091_96,
        1.000_023_7,
        -1.265_512_2,
    ] {
        poly = poly * t.clone() + c;
    }
    let tail = t.log() - a.clone() * a + poly - std::f32::consts::LN_2;
    let body = tail.clone().exp().neg().log1p();
    body.mask_where(z.lower_elem(0.0), tail)
}

/// ln P(x ∈ [lower, upper]) for x ~ N(mean, exp(log_var)), element-wise (`[n, d]` each). A bin
/// above the mean is reflected below it, so that P = Φ(b) − Φ(a) with a < 0 and
/// ln P = ln Φ(b) + ln(1 − e^{ln Φ(a) − ln Φ(b)}), the difference taken in log space (a series
/// where the bin is narrow against σ). Finite everywhere, and so are its gradients (the
/// probability is held above 1e-30).
#[cfg(feature = "burn")]
pub fn discretized_gaussian_log_prob(
    lower: Tensor<2>,
    upper: Tensor<2>,
    mean: Tensor<2>,
    log_var: Tensor<2>,
) -> Tensor<2> {
    let inv_sd = (log_var * -0.5).exp();
    let zl = (lower - mean.clone()) * inv_sd.clone();
    let zu = (upper - mean) * inv_sd;
    let reflect = (zl.clone() + zu.clone()).greater_elem(0.0);
    let a = zl.clone().mask_where(reflect.clone(), zu.clone().neg());
    let b = zu.mask_where(reflect, zl.neg());
    let log_b = log_normal_cdf(b);
    let r = log_normal_cdf(a) - log_b.clone();
    // 1 - e^r for r <= 0: a series near 0, where 1 - exp(r) would cancel (of r held near 0, so
    // that the branch not taken stays finite, gradients included)
    let near = r.clone().clamp_min(-1e-2);
    let series = near.clone().neg()
        * (near.clone() * (near.clone() * (near / 24.0 + 1.0 / 6.0) + 0.5) + 1.0);
    let direct = r.clone().exp().neg() + 1.0;
    let one_minus = direct.mask_where(r.greater_elem(-1e-2), series);
    log_b + one_minus.clamp_min(1e-30).log()
}

#[cfg(all(test, feature = "burn"))]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    /// ln(Φ(u) − Φ(l)) in f64 from libm's erfc, each tail from its own side.
    fn log_prob_f64(lower: f64, upper: f64, mean: f64, sd: f64) -> f64 {
        let phi = |z: f64| 0.5 * libm::erfc(-z / std::f64::consts::SQRT_2);
        let (zl, zu) = ((lower - mean) / sd, (upper - mean) / sd);
        if zl + zu > 0.0 {
            (phi(-zl) - phi(-zu)).ln()
        } else {
            (phi(zu) - phi(zl)).ln()
        }
    }

    fn tensor(v: &[f32], device: &Device) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v.to_vec(), [1, v.len()]), device)
    }

    #[test]
    fn log_normal_cdf_matches_f64_in_both_tails() {
        let device = Device::default();
        let z: Vec<f32> = (-60..=60).map(|i| i as f32 * 0.25).collect();
        let got = log_normal_cdf(tensor(&z, &device))
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        for (&z, &g) in z.iter().zip(&got) {
            let want = (0.5 * libm::erfc(-z as f64 / std::f64::consts::SQRT_2)).ln();
            let tol = 1e-6 * want.abs().max(1.0);
            assert!((g as f64 - want).abs() < tol, "z = {z}: {g} vs {want}");
        }
    }

    #[test]
    fn bin_log_probabilities_match_f64_from_the_centre_to_the_tails() {
        let device = Device::default();
        let (half, sd) = (0.5f64, 0.7f64);
        let mut cases = Vec::new();
        // bins of width 1 from far below the mean to far above, an open bin at each end, and
        // bins narrow against sd (the series)
        for i in -30..=30 {
            let c = i as f64 * 0.4;
            cases.push((c - half, c + half, sd));
            cases.push((c - 1e-3, c + 1e-3, sd));
        }
        cases.push((-OPEN_END as f64, 0.3, sd));
        cases.push((-0.2, OPEN_END as f64, sd));
        cases.push((-OPEN_END as f64, -5.0, sd));
        cases.push((6.0, OPEN_END as f64, sd));
        let col = |f: &dyn Fn(&(f64, f64, f64)) -> f64| -> Vec<f32> {
            cases.iter().map(|c| f(c) as f32).collect()
        };
        let got = discretized_gaussian_log_prob(
            tensor(&col(&|c| c.0), &device),
            tensor(&col(&|c| c.1), &device),
            tensor(&vec![0.0; cases.len()], &device),
            tensor(&col(&|c| (c.2 * c.2).ln()), &device),
        )
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
        for (c, &g) in cases.iter().zip(&got) {
            let want = log_prob_f64(c.0, c.1, 0.0, c.2);
            let tol = 2e-5 * want.abs().max(1.0);
            assert!((g as f64 - want).abs() < tol, "{c:?}: {g} vs {want}");
        }
    }

    #[test]
    fn decoder_constant_is_minus_the_prior_kl() {
        let g =
            GaussianDiffusion::new(crate::BetaSchedule::cosine().betas(50).unwrap(), 3).unwrap();
        let x0 = [0.3f32, -1.2, 2.0, 0.0, 0.5, -0.7];
        let abar = g.alpha_bar(50);
        let kl: f64 = x0
            .iter()
            .map(|&x| crate::kl_diag_gaussian_scalar(abar.sqrt() * x as f64, 1.0 - abar, 0.0, 0.0))
            .sum::<f64>()
            / 2.0;
        assert!((g.mean_decoder_constant_bits(&x0) + kl / LN_2).abs() < 1e-12);
    }
}
