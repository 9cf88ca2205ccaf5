//! Gaussian diffusion (paper section 2, SPEC section 1): the forward closed form, the posterior
//! `q(x_{t-1} | x_t, x_0)`, the KL of diagonal Gaussians, the entropy terms and the constants of
//! the bound `K`.

#[cfg(feature = "burn")]
use burn::tensor::Tensor;

use crate::LN_2;
use crate::schedule::{ScheduleError, validate_betas};

/// A Gaussian forward process `q(x_t | x_{t-1}) = N(sqrt(1 - b_t) x_{t-1}, b_t I)` on
/// `dim`-dimensional data, with every derived array precomputed once in `f64`.
///
/// Steps are 1-based as in the paper: `t = 1..=T`.
#[derive(Debug, Clone)]
pub struct GaussianDiffusion {
    dim: usize,
    betas: Vec<f64>,
    /// abar_t = prod_{s <= t} (1 - b_s), index t - 1.
    alphas_cumprod: Vec<f64>,
}

/// The three entropy terms of the bound (paper eq. 14), in bits, for data of dimension d.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoundConstants {
    /// H_q(X_T | X_0) = d/2 (1 + log 2 pi (1 - abar_T)).
    pub h_q_xt_given_x0: f64,
    /// H_q(X_1 | X_0) = d/2 (1 + log 2 pi b_1).
    pub h_q_x1_given_x0: f64,
    /// H_p(X_T) = d/2 (1 + log 2 pi).
    pub h_p_xt: f64,
}

impl BoundConstants {
    /// The part of K that does not depend on the model:
    /// H_q(X_T|X_0) - H_q(X_1|X_0) - H_p(X_T), in bits.
    pub fn sum_bits(&self) -> f64 {
        self.h_q_xt_given_x0 - self.h_q_x1_given_x0 - self.h_p_xt
    }
}

impl GaussianDiffusion {
    /// Builds the process from `b_1..b_T` (validated as in [`validate_betas`]).
    pub fn new(betas: Vec<f64>, dim: usize) -> Result<Self, ScheduleError> {
        validate_betas(&betas)?;
        if dim == 0 {
            return Err(ScheduleError::InvalidParameter(
                "data dimension must be at least 1".into(),
            ));
        }
        let mut alphas_cumprod = Vec::with_capacity(betas.len());
        let mut abar = 1.0;
        for b in &betas {
            abar *= 1.0 - b;
            alphas_cumprod.push(abar);
        }
        Ok(Self {
            dim,
            betas,
            alphas_cumprod,
        })
    }

    /// Trajectory length T.
    pub fn steps(&self) -> usize {
        self.betas.len()
    }

    /// Data dimension d.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The betas, index t - 1.
    pub fn betas(&self) -> &[f64] {
        &self.betas
    }

    /// b_t.
    pub fn beta(&self, t: usize) -> f64 {
        self.betas[t - 1]
    }

    /// abar_t, with abar_0 = 1.
    pub fn alpha_bar(&self, t: usize) -> f64 {
        if t == 0 {
            1.0
        } else {
            self.alphas_cumprod[t - 1]
        }
    }

    /// Mean scale and standard deviation of q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I).
    pub fn q_sample_coefficients(&self, t: usize) -> (f64, f64) {
        let abar = self.alpha_bar(t);
        (abar.sqrt(), (1.0 - abar).sqrt())
    }

    /// The coefficients (c_0, c_t) of the posterior mean mu~_t = c_0 x_0 + c_t x_t, and the
    /// posterior variance b~_t, for t >= 1 (at t = 1 the posterior is a point mass at x_0).
    pub fn posterior_coefficients(&self, t: usize) -> (f64, f64, f64) {
        let b = self.beta(t);
        let abar = self.alpha_bar(t);
        let abar_prev = self.alpha_bar(t - 1);
        let c0 = abar_prev.sqrt() * b / (1.0 - abar);
        let ct = (1.0 - b).sqrt() * (1.0 - abar_prev) / (1.0 - abar);
        let var = (1.0 - abar_prev) / (1.0 - abar) * b;
        (c0, ct, var)
    }

    /// Mean and variance of q(x_{t-1} | x_t, x_0) for one coordinate.
    pub fn posterior_mean_variance(&self, t: usize, x0: f64, xt: f64) -> (f64, f64) {
        let (c0, ct, var) = self.posterior_coefficients(t);
        (c0 * x0 + ct * xt, var)
    }

    /// The entropy terms of the bound, in bits.
    pub fn bound_constants(&self) -> BoundConstants {
        let d = self.dim as f64;
        let h = |var: f64| d / 2.0 * (1.0 + (2.0 * std::f64::consts::PI * var).ln()) / LN_2;
        BoundConstants {
            h_q_xt_given_x0: h(1.0 - self.alpha_bar(self.steps())),
            h_q_x1_given_x0: h(self.beta(1)),
            h_p_xt: h(1.0),
        }
    }

    /// The part of K that does not depend on the model, for one point `x0`, in bits: eq. 14's
    /// entropy terms plus the exact prior and edge-step terms,
    /// ½ (b_1 + abar_T)(d − |x0|²) nats (SPEC section 6), which vanish on average for data with
    /// E|x0|² = d and are what make K a bound for data in any units.
    pub fn bound_constant_bits(&self, x0: &[f32]) -> f64 {
        // the mean over one point
        self.mean_bound_constant_bits(x0)
    }

    /// The mean of [`GaussianDiffusion::bound_constant_bits`] over the points of `x0` (`[n, d]`
    /// row-major): the entropy terms once, plus the prior and edge-step terms at the mean
    /// squared norm (they are linear in |x0|²).
    pub fn mean_bound_constant_bits(&self, x0: &[f32]) -> f64 {
        let n = x0.len() / self.dim.max(1);
        if n == 0 {
            return 0.0;
        }
        let mean_norm = x0.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / n as f64;
        let weight = self.beta(1) + self.alpha_bar(self.steps());
        self.bound_constants().sum_bits() + 0.5 * weight * (self.dim as f64 - mean_norm) / LN_2
    }

    /// L_null: the log-likelihood of N(0, I) on unit-variance data, -d/2 log2(2 pi e), in bits.
    pub fn l_null_bits(&self) -> f64 {
        -(self.dim as f64) / 2.0 * (2.0 * std::f64::consts::PI * std::f64::consts::E).log2()
    }
}

/// KL(N(mu_q, var_q) || N(mu_p, exp(logvar_p))) for one coordinate, in nats.
pub fn kl_diag_gaussian_scalar(mu_q: f64, var_q: f64, mu_p: f64, logvar_p: f64) -> f64 {
    0.5 * (logvar_p - var_q.ln() + (var_q + (mu_q - mu_p).powi(2)) * (-logvar_p).exp() - 1.0)
}

/// KL(N(mu_q, diag var_q) || N(mu_p, diag exp(logvar_p))) per row, in nats, summed over the
/// `d` coordinates of each row.
///
/// Shapes: `mu_q`, `mu_p`, `logvar_p` are `[n, d]`; `var_q` and `logvar_q` are `[n, 1]`
/// (the posterior variance is isotropic) and broadcast. Returns `[n]`.
#[cfg(feature = "burn")]
pub fn kl_diag_gaussian(
    mu_q: Tensor<2>,
    var_q: Tensor<2>,
    logvar_q: Tensor<2>,
    mu_p: Tensor<2>,
    logvar_p: Tensor<2>,
) -> Tensor<1> {
    let diff = mu_q - mu_p;
    let ratio = (diff.clone() * diff + var_q) * logvar_p.clone().neg().exp();
    let per_coord = (logvar_p - logvar_q + ratio - 1.0) * 0.5;
    per_coord.sum_dim(1).squeeze_dim(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BetaSchedule;

    fn linear100() -> GaussianDiffusion {
        GaussianDiffusion::new(BetaSchedule::linear(1e-4, 0.1).betas(100).unwrap(), 2).unwrap()
    }

    #[test]
    fn posterior_matches_numpy_golden() {
        // scripts/golden/core.py (output core.json), gaussian_posterior_linear_T100_*
        let g = linear100();
        let (m, v) = g.posterior_mean_variance(50, 0.7, -0.3);
        assert!((m - -0.2600639900285192).abs() < 1e-13);
        assert!((v - 0.048526153318094005).abs() < 1e-14);
        let (m, v) = g.posterior_mean_variance(2, 0.7, -0.3);
        assert!((m - 0.6173315176349554).abs() < 1e-13);
        assert!((v - 9.173773834891917e-05).abs() < 1e-17);
    }

    /// Bayes' rule done numerically: q(x_{t-1}|x_t,x_0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x_0) on a
    /// fine grid, whose mean and variance must match the closed form.
    #[test]
    fn posterior_matches_bayes_rule_on_a_grid() {
        let g = GaussianDiffusion::new(BetaSchedule::cosine().betas(50).unwrap(), 1).unwrap();
        for &(t, x0, xt) in &[(2usize, 0.7, -0.3), (10, -1.2, 0.4), (49, 0.3, 1.7)] {
            let b = g.beta(t);
            let (s_prev, sd_prev) = g.q_sample_coefficients(t - 1);
            let (mean_cf, var_cf) = g.posterior_mean_variance(t, x0, xt);
            let sd = var_cf.sqrt();
            let (lo, hi, n) = (mean_cf - 12.0 * sd, mean_cf + 12.0 * sd, 200_001);
            let h = (hi - lo) / (n - 1) as f64;
            let (mut z, mut m1, mut m2) = (0.0, 0.0, 0.0);
            for i in 0..n {
                let x = lo + h * i as f64;
                let lik = -(xt - (1.0 - b).sqrt() * x).powi(2) / (2.0 * b);
                let prior = -(x - s_prev * x0).powi(2) / (2.0 * sd_prev * sd_prev);
                let w = (lik + prior).exp();
                z += w;
                m1 += w * x;
                m2 += w * x * x;
            }
            let mean = m1 / z;
            let var = m2 / z - mean * mean;
            assert!(
                (mean - mean_cf).abs() < 1e-9 * (1.0 + mean_cf.abs()),
                "t={t}"
            );
            assert!(
                (var - var_cf).abs() < 1e-7 * var_cf,
                "t={t}: {var} vs {var_cf}"
            );
        }
    }

    #[test]
    fn entropy_terms_match_numpy_golden() {
        // scripts/golden/core.py (output core.json), gaussian_entropy_terms_bits_*
        let c = linear100().bound_constants();
        assert!((c.h_q_xt_given_x0 - 4.086062152752348).abs() < 1e-12);
        assert!((c.h_q_x1_given_x0 - -9.193521209188168).abs() < 1e-12);
        assert!((c.h_p_xt - 4.094191170361282).abs() < 1e-12);
        assert!((linear100().l_null_bits() - -4.094191170361282).abs() < 1e-12);
    }

    #[test]
    fn kl_closed_form_against_numerical_integral() {
        let (mq, vq, mp, lvp) = (0.3, 0.5f64, -0.4, (1.7f64).ln());
        let cf = kl_diag_gaussian_scalar(mq, vq, mp, lvp);
        let vp = lvp.exp();
        let logn = |x: f64, m: f64, v: f64| {
            -(x - m).powi(2) / (2.0 * v) - 0.5 * (2.0 * std::f64::consts::PI * v).ln()
        };
        let (lo, hi, n) = (-12.0, 12.0, 400_001);
        let h = (hi - lo) / (n - 1) as f64;
        let num: f64 = (0..n)
            .map(|i| {
                let x = lo + h * i as f64;
                let lq = logn(x, mq, vq);
                lq.exp() * (lq - logn(x, mp, vp)) * h
            })
            .sum();
        assert!((cf - num).abs() < 1e-9, "{cf} vs {num}");
        assert!(kl_diag_gaussian_scalar(0.1, 0.3, 0.1, 0.3f64.ln()).abs() < 1e-15);
    }

    /// The per-point constant is the exact prior and edge-step terms of the sampled model,
    /// computed here from their definitions: -KL(q(x_T | x_0) || N(0, I)) by the closed-form
    /// KL, plus E_q(x_1 | x_0) log p(x_0 | x_1) with p(x_0 | x_1) = N(sqrt(1 - b_1) x_1, b_1)
    /// (the forward kernel reversed against the prior) by quadrature over the noise; the batch
    /// constant is their mean over the points.
    #[test]
    fn bound_constant_is_the_exact_prior_and_edge_terms_and_the_batch_its_mean() {
        let q = linear100();
        let (b1, abar) = (q.beta(1), q.alpha_bar(q.steps()));
        let phi = |e: f64| (-0.5 * e * e).exp() / (2.0 * std::f64::consts::PI).sqrt();
        let log_n = |x: f64, m: f64, v: f64| {
            -0.5 * (2.0 * std::f64::consts::PI * v).ln() - (x - m).powi(2) / (2.0 * v)
        };
        let exact_bits = |x0: &[f32]| -> f64 {
            let mut nats = 0.0;
            for &x in x0 {
                let x = x as f64;
                nats -= kl_diag_gaussian_scalar(abar.sqrt() * x, 1.0 - abar, 0.0, 0.0);
                // the midpoint rule over e in [-12, 12]
                let (steps, lo, hi) = (24_000, -12.0, 12.0);
                let de = (hi - lo) / steps as f64;
                nats += (0..steps)
                    .map(|i| {
                        let e = lo + (i as f64 + 0.5) * de;
                        let x1 = (1.0 - b1).sqrt() * x + b1.sqrt() * e;
                        phi(e) * log_n(x, (1.0 - b1).sqrt() * x1, b1) * de
                    })
                    .sum::<f64>();
            }
            nats / LN_2
        };
        let x0: Vec<f32> = (0..2 * 9).map(|i| (i as f32 * 0.7).sin() * 2.5).collect();
        let mut mean = 0.0;
        for row in x0.chunks_exact(2) {
            let (got, want) = (q.bound_constant_bits(row), exact_bits(row));
            assert!((got - want).abs() < 1e-8, "{row:?}: {got} vs {want}");
            mean += want / 9.0;
        }
        let got = q.mean_bound_constant_bits(&x0);
        assert!((got - mean).abs() < 1e-8, "{got} vs {mean}");
    }
}
