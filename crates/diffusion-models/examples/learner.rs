//! A network of this crate trained on the Swiss roll through burn-train's `Learner` (its
//! metrics, checkpoints and, on a terminal, its dashboard), then evaluated in bits.
//! Usage: `cargo run --release -p diffusion-models --features burn-train --example learner --
//! [batches]` (default 2,000 batches of 256).

use burn::optim::lr_scheduler::constant::ConstantLr;
use burn::tensor::Device;
use burn::train::metric::LossMetric;
use burn::train::{Learner, SupervisedTraining};
use diffusion_core::{BetaSchedule, GaussianDiffusion, MeanStderr, ReverseParametrization};
use diffusion_models::learner::{LearnerModule, rows_loader};
use diffusion_models::{GaussianBound, ModelConfig, ReverseModel, process};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let batches: usize = std::env::args().nth(1).map_or(Ok(2000), |s| s.parse())?;
    let (steps, batch) = (40, 256);
    let process = GaussianBound::new(
        GaussianDiffusion::new(BetaSchedule::paper().betas(steps)?, 2)?,
        ReverseParametrization::Paper,
    );
    let device = Device::flex();
    let train_device = device.clone().autodiff();
    let network = ModelConfig::default().init(2, 4, steps, &train_device);
    let module = LearnerModule {
        model: ReverseModel::new(network),
        process: process.clone(),
    };

    let roll = diffusion_data::SwissRoll::new(0.5)?;
    let points = roll.stream(0).next_batch(batches * batch);
    let held = roll.stream(1).next_batch(2000);
    let loader = |points: &[f32], stream, device: &Device| {
        let rng = diffusion_data::rng(0, stream);
        rows_loader(process.clone(), points, 2, batch, rng, device)
    };
    let folder = tempfile::tempdir()?;
    let result = SupervisedTraining::new(
        folder.path(),
        loader(&points, 2, &train_device),
        loader(&held, 3, &device),
    )
    .metric_train_numeric(LossMetric::new())
    .metric_valid_numeric(LossMetric::new())
    .num_epochs(1)
    .launch(Learner::new(
        module,
        // Burn's Adam (AdamConfig::new()) to the bit, one pass per parameter on flex
        diffusion_kernels::FusedAdam::new(0.9, 0.999, 1e-5).init(),
        ConstantLr::from(1e-3),
    ));

    let network = result.model.model.network;
    let mut rng = diffusion_data::rng(0, 4);
    let k = process::bound_bits_per_point(&process, &network, &held, &mut rng, &device, 16_384);
    let k = MeanStderr::of(&k).ok_or("no points")?;
    println!(
        "K = {:+.3} ± {:.3} bits/point after {batches} Learner steps (L_null = {:+.3})",
        k.mean,
        k.stderr,
        process.diffusion.l_null_bits()
    );
    Ok(())
}
