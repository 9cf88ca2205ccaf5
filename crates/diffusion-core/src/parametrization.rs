//! Reverse-process parametrizations (SPEC section 1): how the two network outputs
//! `z_mu`, `z_sigma` become the mean and log-variance of `p(x_{t-1} | x_t)`.

#[cfg(feature = "burn")]
use burn::tensor::Tensor;
#[cfg(feature = "burn")]
use burn::tensor::activation::{log_sigmoid, sigmoid};
use serde::{Deserialize, Serialize};

#[cfg(feature = "burn")]
use crate::GaussianDiffusion;

/// How the network's outputs map to the reverse kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ReverseParametrization {
    /// `mu = z_mu`, `log sigma^2 = z_sigma` (the presentation's model).
    Direct,
    /// The paper's: `mu = x_t sqrt(1 - b_t) + z_mu sqrt(b_t)`,
    /// `sigma^2 = sigmoid(z_sigma + logit(b_t))`. With `z = 0` it is the forward kernel.
    #[default]
    Paper,
    /// Noise prediction with a learned variance (SPEC section 1; Nichol and Dhariwal 2021's
    /// "learned range"): `z_mu` predicts the noise eps of
    /// `x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`, `mu = (x_t - b_t / sqrt(1 - abar_t) z_mu)
    /// / sqrt(1 - b_t)`, and `log sigma^2 = v ln b_t + (1 - v) ln b~_t` with
    /// `v = sigmoid(z_sigma)`, so the variance stays strictly inside [b~_t, b_t] (their
    /// geometric mean for the untrained network). Gaussian diffusion only; trained with the bound
    /// or with `loss = "hybrid"`.
    Epsilon,
    /// Noise prediction with the variance fixed at the posterior's b~_t (Ho et al. 2020;
    /// `z_sigma` unused). Gaussian diffusion only; trained with the bound or `loss = "mse"`.
    EpsilonFixed,
}

impl ReverseParametrization {
    /// Whether the network predicts the noise (`epsilon` or `epsilon-fixed`).
    pub fn predicts_noise(&self) -> bool {
        matches!(self, Self::Epsilon | Self::EpsilonFixed)
    }
}

/// Per-row step coefficients, each `[n, 1]` (or `[1, 1]`, broadcast over the rows, when every
/// row has one step), that the parametrizations need.
#[cfg(feature = "burn")]
#[derive(Debug, Clone)]
pub struct StepCoefficients {
    /// sqrt(1 - b_t).
    pub sqrt_alpha: Tensor<2>,
    /// sqrt(b_t).
    pub sqrt_beta: Tensor<2>,
    /// logit(b_t) = ln(b_t / (1 - b_t)).
    pub logit_beta: Tensor<2>,
    /// b_t / sqrt(1 - abar_t), the noise's weight in the `epsilon` mean.
    pub eps_weight: Tensor<2>,
    /// ln b~_t, the posterior's log-variance (the `epsilon-fixed` kernel's variance and the
    /// lower end of the `epsilon` kernel's range).
    pub log_posterior_variance: Tensor<2>,
    /// ln b_t (the upper end of the `epsilon` kernel's range).
    pub log_beta: Tensor<2>,
}

/// How many per-row coefficients [`StepCoefficients::host_values`] gives.
pub const COEFFICIENTS: usize = 6;

#[cfg(feature = "burn")]
impl StepCoefficients {
    /// The host-side values of sqrt(1 - b_t), sqrt(b_t), logit(b_t), b_t / sqrt(1 - abar_t),
    /// ln b~_t and ln b_t for one step t, as f32 (the field order; ln b~_1 = ln 0 is -inf).
    pub fn host_values(diffusion: &GaussianDiffusion, t: usize) -> [f32; COEFFICIENTS] {
        let b = diffusion.beta(t);
        let (_, _, posterior_variance) = diffusion.posterior_coefficients(t);
        [
            (1.0 - b).sqrt() as f32,
            b.sqrt() as f32,
            (b / (1.0 - b)).ln() as f32,
            (b / (1.0 - diffusion.alpha_bar(t)).sqrt()) as f32,
            posterior_variance.ln() as f32,
            b.ln() as f32,
        ]
    }
}

#[cfg(feature = "burn")]
impl ReverseParametrization {
    /// Mean and log-variance, each `[n, d]`, from the network output `z = [z_mu, z_sigma]`
    /// (`[n, 2d]`) and the current point `x_t` (`[n, d]`).
    pub fn mean_log_variance(
        &self,
        z: Tensor<2>,
        x_t: Tensor<2>,
        coefficients: &StepCoefficients,
    ) -> (Tensor<2>, Tensor<2>) {
        let [n, two_d] = z.dims();
        let d = two_d / 2;
        let z_mu = z.clone().slice([0..n, 0..d]);
        let z_sigma = z.slice([0..n, d..two_d]);
        match self {
            Self::Direct => (z_mu, z_sigma),
            Self::Paper => {
                let mean =
                    x_t * coefficients.sqrt_alpha.clone() + z_mu * coefficients.sqrt_beta.clone();
                let log_var = log_sigmoid(z_sigma + coefficients.logit_beta.clone());
                (mean, log_var)
            }
            Self::Epsilon | Self::EpsilonFixed => {
                let mean = (x_t - z_mu * coefficients.eps_weight.clone())
                    / coefficients.sqrt_alpha.clone();
                (mean, self.noise_log_variance(z_sigma, coefficients))
            }
        }
    }

    /// The noise-predicting parametrizations' log-variance from the variance outputs
    /// `z_sigma` (`[n, d]`): `epsilon` interpolates between ln b~_t and ln b_t by
    /// sigmoid(z_sigma), `epsilon-fixed` is ln b~_t. The other parametrizations' variance
    /// comes with their mean ([`ReverseParametrization::mean_log_variance`]).
    pub fn noise_log_variance(
        &self,
        z_sigma: Tensor<2>,
        coefficients: &StepCoefficients,
    ) -> Tensor<2> {
        let low = coefficients.log_posterior_variance.clone();
        if *self == Self::Epsilon {
            let v = sigmoid(z_sigma);
            (v * (coefficients.log_beta.clone() - low.clone())) + low
        } else {
            low.expand(z_sigma.dims())
        }
    }
}
