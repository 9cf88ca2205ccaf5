//! Reverse-process parametrizations (SPEC section 1): how the two network outputs
//! `z_mu`, `z_sigma` become the mean and log-variance of `p(x_{t-1} | x_t)`.

use burn::tensor::Tensor;
use burn::tensor::activation::log_sigmoid;
use serde::{Deserialize, Serialize};

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
}

/// Per-row step coefficients, each `[n, 1]`, that the parametrizations need.
#[derive(Debug, Clone)]
pub struct StepCoefficients {
    /// sqrt(1 - b_t).
    pub sqrt_alpha: Tensor<2>,
    /// sqrt(b_t).
    pub sqrt_beta: Tensor<2>,
    /// logit(b_t) = ln(b_t / (1 - b_t)).
    pub logit_beta: Tensor<2>,
}

impl StepCoefficients {
    /// The host-side values of sqrt(1 - b_t), sqrt(b_t), logit(b_t) for one step, as f32.
    pub fn host_values(diffusion: &GaussianDiffusion, t: usize) -> [f32; 3] {
        let b = diffusion.beta(t);
        [
            (1.0 - b).sqrt() as f32,
            b.sqrt() as f32,
            (b / (1.0 - b)).ln() as f32,
        ]
    }
}

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
        }
    }
}
