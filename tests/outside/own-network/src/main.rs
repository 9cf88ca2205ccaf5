//! Your own Burn network as the reverse process: a small residual MLP, told t / T as an extra
//! input, trained on the Swiss roll with diffusion-models' Trainer and evaluated in bits.
//! Usage: `own-network [steps]` (default 10,000).

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Int, Tensor, activation::silu};
use diffusion_core::{BetaSchedule, GaussianDiffusion, MeanStderr, ReverseParametrization};
use diffusion_models::config::TrainConfig;
use diffusion_models::process::bound_bits_per_point;
use diffusion_models::{GaussianBound, ReverseModel, ReverseNetwork, Trainer, TrainingData};

#[derive(Module, Debug)]
struct ResidualMlp {
    input: Linear,
    blocks: Vec<Linear>,
    output: Linear,
    steps: usize,
}

impl ReverseNetwork for ResidualMlp {
    /// (x_t [n, 2], t [n]) to the Gaussian kernel's 2 + 2 raw outputs.
    fn forward(&self, x_t: Tensor<2>, t: Tensor<1, Int>) -> Tensor<2> {
        let time = t.float().unsqueeze_dim::<2>(1) / self.steps as f64;
        let mut h = silu(self.input.forward(Tensor::cat(vec![x_t, time], 1)));
        for block in &self.blocks {
            h = h.clone() + silu(block.forward(h));
        }
        self.output.forward(h)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let train_steps = std::env::args().nth(1).map_or(Ok(10_000), |s| s.parse())?;
    let steps = 40;
    let process = GaussianBound::new(
        GaussianDiffusion::new(BetaSchedule::paper().betas(steps)?, 2)?,
        ReverseParametrization::Paper,
    );
    let device = Device::flex().autodiff();
    device.seed(0); // the initial weights
    let layer = |inputs, outputs| LinearConfig::new(inputs, outputs).init(&device);
    let network = ResidualMlp {
        input: layer(3, 64),
        blocks: vec![layer(64, 64), layer(64, 64)],
        output: layer(64, 4),
        steps,
    };
    let config = TrainConfig {
        steps: train_steps,
        batch_size: 256,
        ..TrainConfig::default()
    };
    let roll = diffusion_data::SwissRoll::new(0.5)?;
    let data = TrainingData::swiss_roll(roll, 0);
    let trainer = Trainer::new(
        process.clone(),
        ReverseModel::new(network),
        &config,
        data,
        &device,
    );
    let model = trainer.fit(&mut [])?.model;

    // The full-sum bound on 2,000 fresh points, in bits per point.
    let points = roll.stream(1).next_batch(2000);
    let mut rng = diffusion_data::rng(0, 3);
    let k = bound_bits_per_point(
        &process,
        &model.network,
        &points,
        &mut rng,
        &Device::flex(),
        16_384,
    );
    let k = MeanStderr::of(&k).ok_or("no points")?;
    let l_null = process.diffusion.l_null_bits();
    println!(
        "K = {:+.3} ± {:.3} bits/point after {train_steps} steps (L_null = {l_null:+.3})",
        k.mean, k.stderr
    );
    Ok(())
}
