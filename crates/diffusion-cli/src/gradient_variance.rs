//! `diffusion gradient-variance`: how noisy the training gradient is with uniform and with
//! importance-sampled steps t.

use diffusion_models::RunDir;

use crate::args::GradientVarianceArgs;
use crate::common::check_at_least_one;

/// Runs `diffusion gradient-variance`.
pub fn cmd_gradient_variance(a: GradientVarianceArgs) -> Result<(), String> {
    if a.batches < 2 {
        return Err("--batches must be at least 2".into());
    }
    let run = RunDir::open(&a.run).map_err(|e| e.to_string())?;
    let manifest = run.manifest().map_err(|e| e.to_string())?;
    let batch_size = a.batch_size.unwrap_or(manifest.config.train.batch_size);
    check_at_least_one("--batch-size", batch_size)?;
    let (_, device) = a.backend.resolve()?;
    let g = diffusion_models::gradient_variance::gradient_variance(
        &manifest, &run, &device, a.batches, batch_size, a.seed,
    )
    .map_err(|e| e.to_string())?;
    if a.json {
        println!("{}", serde_json::to_string(&g).expect("serialisable"));
        return Ok(());
    }
    println!(
        "{} batches of {} per estimator (minus the Monte-Carlo K, bits per point)",
        g.batches, g.batch_size
    );
    for (name, s) in [("uniform t", &g.uniform), ("importance t", &g.importance)] {
        println!(
            "{name:<13} loss {:+.4} (variance {:.4e})  gradient variance {:.4e}",
            s.loss_mean, s.loss_variance, s.gradient_variance
        );
    }
    println!(
        "importance sampling divides the gradient variance by {:.2} and the loss variance by {:.2}",
        g.gradient_variance_ratio,
        g.uniform.loss_variance / g.importance.loss_variance
    );
    Ok(())
}
