//! The same Gaussian Swiss-roll training (presentation model, T = 100, Adam 1e-3, the
//! Monte-Carlo bound) through burn-train's `Learner` and through diffusion-models' own loop, on
//! the flex backend; prints steps/s of each. Usage: `cargo run --release -- [steps] [batch]`.

use std::time::Instant;

use burn::optim::AdamConfig;
use burn::optim::lr_scheduler::constant::ConstantLr;
use burn::tensor::Device;
use burn::train::metric::LossMetric;
use burn::train::{Learner, SupervisedTraining};
use diffusion_models::learner::{LearnerModule, rows_loader};
use diffusion_models::{Diffusion, RunConfig, RunDir, RunManifest, TrainingData};

const CONFIG: &str = include_str!("../../../configs/swiss_roll_presentation.toml");

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let steps = args.first().copied().unwrap_or(500);
    let batch = args.get(1).copied().unwrap_or(1024);
    let mut config = RunConfig::from_toml(CONFIG).unwrap();
    config.train.steps = steps;
    config.train.batch_size = batch;
    config.train.log_every = steps;
    let manifest = RunManifest::new(config, 2, "flex");
    let Diffusion::Gaussian(bound) = manifest.bound().unwrap() else {
        unreachable!("the Swiss roll is Gaussian")
    };
    let device = Device::flex();
    let roll = diffusion_data::SwissRoll::new(0.5).unwrap();
    let dir = std::env::temp_dir().join(format!("burn-train-compare-{}", std::process::id()));

    // This project's loop.
    let own_run = |round: usize| {
        let run = RunDir::create(&dir.join(format!("own-{round}")), true).unwrap();
        let start = Instant::now();
        diffusion_models::train(
            &manifest,
            TrainingData::swiss_roll(roll, 0),
            &device,
            &run,
            None,
            &mut |_| {},
        )
        .unwrap();
        start.elapsed().as_secs_f64()
    };

    // burn-train's Learner: the same model, loss, optimizer and batch.
    let points = roll.stream(0).next_batch(steps * batch);
    let loader = |points: &[f32], stream, device: &Device| {
        let rng = diffusion_data::rng(0, stream);
        rows_loader(bound.clone(), points, 2, batch, rng, device)
    };
    let learner_run = |round: usize| {
        let ad = device.clone().autodiff();
        ad.seed(0);
        let module = LearnerModule {
            model: manifest.init_model(&ad).unwrap(),
            process: bound.clone(),
        };
        let learner = Learner::new(module, AdamConfig::new().init(), ConstantLr::from(1e-3));
        let start = Instant::now();
        let result = SupervisedTraining::new(
            dir.join(format!("learner-{round}")),
            loader(&points, 2, &ad),
            loader(&points[..batch * 2], 3, &device),
        )
        .metric_train_numeric(LossMetric::new())
        .num_epochs(1)
        .launch(learner);
        let seconds = start.elapsed().as_secs_f64();
        assert!(result.error.is_none(), "{:?}", result.error);
        seconds
    };

    // Alternate, twice each, and keep each one's faster round (the first round also warms the
    // allocator and the thread pool).
    let (mut own, mut learner_s) = (f64::INFINITY, f64::INFINITY);
    for round in 0..2 {
        own = own.min(own_run(round));
        learner_s = learner_s.min(learner_run(round));
    }
    println!(
        "batch {batch}, {steps} steps: own loop {:.1} steps/s ({own:.2} s); burn-train Learner {:.1} steps/s ({learner_s:.2} s); ratio {:.2}",
        steps as f64 / own,
        steps as f64 / learner_s,
        own / learner_s
    );
    let _ = std::fs::remove_dir_all(&dir);
}
