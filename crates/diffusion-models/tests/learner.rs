//! burn-train's Learner trains our model: the full-sum bound improves, and the Learner's own
//! inference step (minus the Monte-Carlo K) agrees with the library's evaluation of the result.

use burn::data::dataloader::batcher::Batcher;
use burn::optim::AdamConfig;
use burn::optim::lr_scheduler::constant::ConstantLr;
use burn::tensor::Device;
use burn::train::metric::LossMetric;
use burn::train::{
    ExecutionStrategy, InferenceStep, Learner, MultiDeviceOptim, SupervisedTraining,
    TrainingStrategy,
};
use diffusion_core::{BetaSchedule, GaussianDiffusion, MeanStderr, ReverseParametrization};
use diffusion_models::learner::{BoundBatcher, LearnerModule, rows_loader};
use diffusion_models::{GaussianBound, ModelConfig, Network, ReverseModel, process};

#[test]
fn the_learner_improves_the_bound_and_its_loss_is_minus_the_bound() {
    check_learner(None, 600);
}

/// burn-train's data-parallel strategy (one model copy per device, gradients gathered on the
/// first) runs our model unchanged; here on two flex devices, the route a user takes across
/// several GPUs.
#[test]
fn the_learner_trains_data_parallel_across_two_devices() {
    // each optimizer step takes one batch per device: twice the batches for as many steps
    check_learner(Some(vec![Device::flex(), Device::flex()]), 1200);
}

fn check_learner(devices: Option<Vec<Device>>, batches: usize) {
    let (steps, batch) = (20, 256);
    let process = GaussianBound::new(
        GaussianDiffusion::new(BetaSchedule::linear(1e-3, 0.3).betas(steps).unwrap(), 2).unwrap(),
        ReverseParametrization::Paper,
    );
    let device = Device::flex();
    let ad = device.clone().autodiff();
    ad.seed(0);
    let config = ModelConfig {
        hidden: vec![64, 64],
        ..ModelConfig::default()
    };
    let module = LearnerModule {
        model: ReverseModel::new(config.init(2, 4, steps, &ad)),
        process: process.clone(),
    };
    let roll = diffusion_data::SwissRoll::new(0.5).unwrap();
    let points = roll.stream(0).next_batch(batches * batch);
    let held = roll.stream(1).next_batch(2000);
    // per point, with the same x_t draws for every network (so differences are paired)
    let k_of = |network: &Network| {
        let mut rng = diffusion_data::rng(0, 4);
        process::bound_bits_per_point(&process, network, &held, &mut rng, &device, 16_384)
    };
    // the untrained network (readout zero) is the forward kernel
    let before = k_of(&config.init(2, 4, steps, &device));

    let loader = |points: &[f32], stream, device: &Device| {
        let rng = diffusion_data::rng(0, stream);
        rows_loader(process.clone(), points, 2, batch, rng, device)
    };
    let folder = tempfile::tempdir().unwrap();
    let training = SupervisedTraining::new(
        folder.path(),
        loader(&points, 2, &ad),
        loader(&held, 3, &device),
    )
    .metric_train_numeric(LossMetric::new())
    .num_epochs(1);
    let training = match devices {
        Some(devices) => training.with_training_strategy(TrainingStrategy::Default(
            ExecutionStrategy::multi(devices, MultiDeviceOptim::OptimMainDevice),
        )),
        None => training,
    };
    let result = training.launch(Learner::new(
        module,
        AdamConfig::new().init(),
        ConstantLr::from(1e-2),
    ));
    assert!(result.error.is_none(), "{:?}", result.error);
    assert!(result.interrupted.is_none());
    let trained = result.model;
    let after_points = k_of(&trained.model.network);
    let gain: Vec<f64> = after_points
        .iter()
        .zip(&before)
        .map(|(a, b)| a - b)
        .collect();
    let gain = MeanStderr::of(&gain).unwrap();
    let after = MeanStderr::of(&after_points).unwrap();
    eprintln!(
        "Learner: K {:.4} -> {:.4} ± {:.4} bits/point, gain {:.4} ± {:.4}",
        MeanStderr::of(&before).unwrap().mean,
        after.mean,
        after.stderr,
        gain.mean,
        gain.stderr
    );
    assert!(gain.mean > 5.0 * gain.stderr, "K did not improve");

    // The inference step's loss over many batches of held-out rows: an unbiased estimate of -K.
    let batcher = BoundBatcher::new(process.clone(), diffusion_data::rng(1, 5));
    let rows: Vec<Vec<f32>> = held.chunks_exact(2).map(<[f32]>::to_vec).collect();
    let losses: Vec<f64> = (0..40)
        .flat_map(|_| rows.chunks(500))
        .map(|chunk| {
            let batch = batcher.batch(chunk.to_vec(), &device);
            InferenceStep::step(&trained, batch)
                .loss
                .into_scalar::<f32>() as f64
        })
        .collect();
    let mc = MeanStderr::of(&losses).unwrap();
    let tol = 3.0 * (mc.stderr.powi(2) + after.stderr.powi(2)).sqrt();
    assert!(
        (-mc.mean - after.mean).abs() < tol,
        "inference step -{:.4} ± {:.4} vs full sum {:.4} ± {:.4}",
        mc.mean,
        mc.stderr,
        after.mean,
        after.stderr
    );
}
