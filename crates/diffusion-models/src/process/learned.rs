//! The bound of a Gaussian chain whose betas are trained with the network (the `learned`
//! schedule): the KL terms and K's constant part differentiable in the betas.

use burn::tensor::{Device, Tensor};
use diffusion_core::{LN_2, StepCoefficients};

use super::{GaussianBound, GaussianRows, steps_tensor, tensor2};
use crate::network::{LearnedBetas, ReverseNetwork};

impl GaussianBound {
    /// The KL terms (nats, `[n]`) of rows under the model's own trainable betas (the `learned`
    /// schedule), differentiable in them, and the constant part of K in bits (`[1]`,
    /// differentiable through H_q(X_T | X_0)). x_t is recomputed on the device from the rows'
    /// x_0 and noise (the reparametrisation x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps), so
    /// the gradient reaches the betas through x_t and the posterior alike. 1 - abar_t is summed
    /// as sum_{s <= t} b_s abar_{s-1} rather than subtracted, which keeps it accurate in f32
    /// where it is small.
    pub fn learned_kl_rows<N: ReverseNetwork>(
        &self,
        network: &N,
        schedule: &LearnedBetas,
        rows: GaussianRows,
        device: &Device,
    ) -> (Tensor<1>, Tensor<1>) {
        let (n, d, steps) = (rows.ts.len(), rows.d, self.diffusion.steps());
        let t = steps_tensor(&rows.ts, device);
        let index: Vec<usize> = rows.ts.iter().map(|&t| t - 1).collect();
        let index = steps_tensor(&index, device);
        let x0 = tensor2(rows.x0, n, d, device);
        let eps = tensor2(rows.noise, n, d, device);
        let betas = schedule.betas();
        let log_one_minus = schedule.log_one_minus_betas();
        let log_abar = log_one_minus.clone().cumsum(0); // ln abar_t, t = 1..T
        let zero = Tensor::<1>::zeros([1], device);
        let log_abar_prev =
            Tensor::cat(vec![zero.clone(), log_abar.clone().slice(0..steps - 1)], 0);
        let one_minus_abar = (betas.clone() * log_abar_prev.clone().exp()).cumsum(0);
        let one_minus_abar_prev =
            Tensor::cat(vec![zero, one_minus_abar.clone().slice(0..steps - 1)], 0);
        let at =
            |v: &Tensor<1>| -> Tensor<2> { v.clone().select(0, index.clone()).reshape([n, 1]) };
        let b = at(&betas);
        let log_b = b.clone().log();
        let (la, la_prev) = (at(&log_abar), at(&log_abar_prev));
        let (om, om_prev) = (at(&one_minus_abar), at(&one_minus_abar_prev));
        let sqrt_alpha = (at(&log_one_minus) * 0.5).exp();
        let sqrt_om = om.clone().sqrt();
        let x_t = x0.clone() * (la * 0.5).exp() + eps * sqrt_om.clone();
        let c0 = (la_prev * 0.5).exp() * b.clone() / om.clone();
        let ct = sqrt_alpha.clone() * om_prev.clone() / om.clone();
        let log_var = om_prev.log() - om.log() + log_b.clone();
        let mean_q = x0 * c0 + x_t.clone() * ct;
        let coefficients = StepCoefficients {
            sqrt_alpha,
            sqrt_beta: b.clone().sqrt(),
            logit_beta: at(&schedule.logit_betas()),
            eps_weight: b / sqrt_om,
            log_posterior_variance: log_var.clone(),
            log_beta: log_b,
        };
        let z = network.forward(x_t.clone(), t);
        let (mean_p, log_var_p) = self
            .parametrization
            .mean_log_variance(z, x_t, &coefficients);
        let kl = diffusion_kernels::kl_diag_gaussian(
            mean_q,
            log_var.clone().exp(),
            log_var,
            mean_p,
            log_var_p,
        );
        // H_q(X_T|X_0) - H_q(X_1|X_0) - H_p(X_T), the first through 1 - abar_T
        let fixed = self.diffusion.bound_constants();
        let half_d = d as f64 / 2.0;
        let h_xt = (one_minus_abar.slice(steps - 1..steps).log() * half_d
            + half_d * (1.0 + (2.0 * std::f64::consts::PI).ln()))
            / LN_2;
        let constant = h_xt - fixed.h_q_x1_given_x0 - fixed.h_p_xt;
        (kl, constant)
    }
}
