//! The schedules, posteriors and bound constants of diffusion-core alone (built with
//! `default-features = false`: no Burn). Prints the cosine schedule at T = 1000 and the
//! Gaussian posterior q(x_{t-1} | x_t, x_0) at a few steps.

use diffusion_core::{BetaSchedule, GaussianDiffusion};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let betas = BetaSchedule::cosine().betas(1000)?;
    let diffusion = GaussianDiffusion::new(betas, 2)?;
    println!("cosine schedule, T = 1000");
    println!("    t      beta_t   abar_t   posterior mean and variance at x_0 = 1, x_t = 0");
    for t in [2, 10, 100, 500, 900, 1000] {
        let (mean, var) = diffusion.posterior_mean_variance(t, 1.0, 0.0);
        println!(
            "{t:>5}  {:>10.3e}  {:>7.4}  {mean:+.4}  {var:.3e}",
            diffusion.beta(t),
            diffusion.alpha_bar(t)
        );
    }
    let constants = diffusion.bound_constants();
    println!(
        "K's constant part: {:+.4} bits per point; L_null = {:+.4} bits per point",
        constants.sum_bits(),
        diffusion.l_null_bits()
    );
    Ok(())
}
