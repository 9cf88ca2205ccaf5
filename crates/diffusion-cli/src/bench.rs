//! `diffusion bench`: one timed workload on one backend, printed as a JSON line. `cargo xtask
//! bench` runs each workload in its own process (so the peak resident memory is that workload's)
//! and collects the lines into BENCHMARKS.md beside the PyTorch reference's.

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::Device;
use diffusion_models::data::streams;
use diffusion_models::{Diffusion, RunConfig, RunDir, RunManifest, TrainingData, train};
use serde_json::{Value, json};

use crate::args::{BenchArgs, Workload};
use crate::common::read_config;

/// Peak resident memory of this process so far, MiB (Linux; None elsewhere).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The best rate over `repeat` timed products `[m, k] x [k, n]` (after one untimed), GFLOP/s.
fn product_gflops(m: usize, k: usize, n: usize, device: &burn::tensor::Device) -> f64 {
    use burn::tensor::{Distribution, Tensor};
    let a = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), device);
    let b = Tensor::<2>::random([k, n], Distribution::Normal(0.0, 1.0), device);
    let flop = 2.0 * (m * k * n) as f64;
    // enough products for about 0.2 s at 100 GFLOP/s, at least 3
    let repeat = ((2e10 / flop) as usize).max(3);
    let once = || {
        let c = diffusion_kernels::product(a.clone(), b.clone());
        // the value read back, so that a lazy backend runs it
        c.slice([0..1, 0..1]).into_scalar::<f32>()
    };
    once();
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let start = Instant::now();
        for _ in 0..repeat {
            once();
        }
        best = best.min(start.elapsed().as_secs_f64() / repeat as f64);
    }
    flop / best / 1e9
}

/// Runs `diffusion bench`.
pub fn cmd_bench(a: BenchArgs) -> Result<(), String> {
    if a.workload == Workload::Matmul {
        return bench_matmul(&a);
    }
    let (config_path, config) = bench_config(&a)?;
    if a.steps == 0 || a.n == 0 {
        return Err("--steps and -n must be at least 1".into());
    }
    let (backend, device) = a.backend.resolve()?;
    // the same resolution as `diffusion train` (a binomial run's pi from the data)
    let resolved = diffusion_models::resolve(config).map_err(|e| e.to_string())?;
    let (config, data) = (resolved.config, resolved.data);
    let manifest = RunManifest::new(config.clone(), resolved.dim, backend.name())
        .with_image(resolved.image)
        .with_standardization(resolved.standardization.clone());
    let bound = manifest.bound().map_err(|e| e.to_string())?;
    let mut out = json!({
        "workload": format!("{:?}", a.workload).to_lowercase(),
        "config": config_path.display().to_string(),
        "kernels": format!("{:?}", diffusion_kernels::Isa::detect()),
        "backend": backend.name(),
        "device": crate::backend::describe(backend, a.backend.adapter()),
        "steps_t": bound.steps(),
        "threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
    });
    match a.workload {
        Workload::Train => bench_train(&a, &manifest, data, &device, &mut out)?,
        Workload::Sample => bench_sample(&a, &manifest, &bound, &device, &mut out)?,
        Workload::Matmul => unreachable!("timed above"),
        Workload::Evaluate => bench_evaluate(&a, &manifest, &bound, data, &device, &mut out)?,
    }
    out["peak_rss_mib"] = json!(peak_rss_mib());
    println!("{out}");
    Ok(())
}

/// The `matmul` workload: a square product of side `--side` and a layer-sized one, printed as
/// a JSON line.
fn bench_matmul(a: &BenchArgs) -> Result<(), String> {
    let (backend, device) = a.backend.resolve()?;
    if a.side == 0 {
        return Err("--side must be at least 1".into());
    }
    let out = json!({
        "workload": "matmul",
        "backend": backend.name(),
        "device": crate::backend::describe(backend, a.backend.adapter()),
        "threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "kernels": format!("{:?}", diffusion_kernels::Isa::detect()),
        "side": a.side,
        "square_gflops": product_gflops(a.side, a.side, a.side, &device),
        "layer_gflops": product_gflops(4096, 128, 128, &device),
        "peak_rss_mib": peak_rss_mib(),
    });
    println!("{out}");
    Ok(())
}

/// The `--config` read and validated for timing: `--batch-size` applied, checkpoints and
/// progress lines off.
fn bench_config(a: &BenchArgs) -> Result<(PathBuf, RunConfig), String> {
    let config_path = a
        .config
        .clone()
        .ok_or("--config is needed to time training, sampling or evaluation")?;
    let mut config = read_config(&config_path)?;
    if let Some(b) = a.batch_size {
        config.train.batch_size = b;
    }
    config.train.checkpoint_every = 0;
    config.train.log_every = usize::MAX;
    config
        .validate()
        .map_err(|e| format!("config {}: {e}", config_path.display()))?;
    Ok((config_path, config))
}

/// The `train` workload: 10 untimed steps, then `--steps` timed ones in a fresh temporary run;
/// their rates go into `out`.
fn bench_train(
    a: &BenchArgs,
    manifest: &RunManifest,
    data: TrainingData,
    device: &Device,
    out: &mut Value,
) -> Result<(), String> {
    let batch = manifest.config.train.batch_size;
    let dir = tempfile::Builder::new()
        .prefix("diffusion-bench-")
        .tempdir()
        .map_err(|e| format!("cannot make a temporary run folder: {e}"))?;
    let run = RunDir::create(dir.path(), true).map_err(|e| e.to_string())?;
    // 10 untimed steps first (allocator, thread pool), then a fresh run of the timed ones.
    let mut warm = manifest.clone();
    warm.config.train.steps = 10;
    train(&warm, data.clone(), device, &run, None, &mut |_| {}).map_err(|e| e.to_string())?;
    let mut timed = manifest.clone();
    timed.config.train.steps = a.steps;
    let start = Instant::now();
    // the steps' time as the last step reports it (with `log_every` off, only the last
    // step reports), before the run's final checkpoint is written: PyTorch's side
    // writes none, and for the heartbeat model (2M parameters and their Adam moments)
    // it would be a tenth of a second on top
    let mut steps_s = None;
    let (_, summary) = train(&timed, data, device, &run, None, &mut |p| {
        steps_s = Some(p.elapsed_s)
    })
    .map_err(|e| e.to_string())?;
    let seconds = start.elapsed().as_secs_f64();
    let loop_s = steps_s.unwrap_or(summary.wall_time_s);
    drop(dir);
    out["batch"] = json!(batch);
    out["steps"] = json!(a.steps);
    out["seconds"] = json!(seconds);
    out["loop_seconds"] = json!(loop_s);
    out["steps_per_s"] = json!(a.steps as f64 / loop_s);
    out["examples_per_s"] = json!((a.steps * batch) as f64 / loop_s);
    Ok(())
}

/// The `sample` workload: `-n` points drawn through the whole chain of a fresh model; the rate
/// goes into `out`.
fn bench_sample(
    a: &BenchArgs,
    manifest: &RunManifest,
    bound: &Diffusion,
    device: &Device,
    out: &mut Value,
) -> Result<(), String> {
    let model = manifest.init_model(device).map_err(|e| e.to_string())?;
    let mut rng = diffusion_data::rng(0, streams::SAMPLE);
    let start = Instant::now();
    let drawn = bound.sample(
        &model.network,
        a.n,
        &mut rng,
        device,
        manifest.chunk_rows(diffusion_models::evaluate::SAMPLE_CHUNK_ROWS),
    );
    let seconds = start.elapsed().as_secs_f64();
    if drawn.iter().any(|v| !v.is_finite()) {
        return Err("sampling produced non-finite values".into());
    }
    out["n"] = json!(a.n);
    out["seconds"] = json!(seconds);
    out["point_steps_per_s"] = json!((a.n * bound.steps()) as f64 / seconds);
    Ok(())
}

/// The `evaluate` workload: the bound of a fresh model on `-n` held-out points; the rate and
/// the mean K go into `out`.
fn bench_evaluate(
    a: &BenchArgs,
    manifest: &RunManifest,
    bound: &Diffusion,
    data: TrainingData,
    device: &Device,
    out: &mut Value,
) -> Result<(), String> {
    let model = manifest.init_model(device).map_err(|e| e.to_string())?;
    let mut source = data;
    *source.rng_mut() = diffusion_data::rng(0, streams::HELDOUT);
    let points = source.next_batch(a.n);
    let mut rng = diffusion_data::rng(0, streams::EVAL_NOISE);
    let start = Instant::now();
    let k = bound.bound_bits_per_point(
        &model.network,
        &points,
        &mut rng,
        device,
        manifest.chunk_rows(diffusion_models::evaluate::CHUNK_ROWS),
    );
    let seconds = start.elapsed().as_secs_f64();
    out["n"] = json!(a.n);
    out["seconds"] = json!(seconds);
    out["rows_per_s"] = json!((a.n * bound.terms()) as f64 / seconds);
    out["k_bits"] = json!(k.iter().sum::<f64>() / k.len() as f64);
    Ok(())
}
