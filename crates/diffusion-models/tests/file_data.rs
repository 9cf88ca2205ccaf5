//! The bound on a user's own data (SPEC section 6): in the data's own units, for data that are
//! neither centred nor scaled, in any dimension, for Gaussian and binomial runs.
//!
//! The reference is the forward kernel used as the reverse model (the untrained network with
//! the `paper` parametrization, whose readout starts at zero): that chain is the stationary
//! reversal of the forward process, so its p(x_0) is exactly the prior, N(0, I) on what the model
//! diffuses or i.i.d. Bernoulli(pi), and the exact K equals log p(x_0) in expectation, whatever
//! the data.

use burn::tensor::Device;
use diffusion_data::{Array2, io};
use diffusion_models::evaluate::{Evaluation, evaluate};
use diffusion_models::{Run, RunConfig, resolve};
use rand::Rng as _;
use rand_distr::StandardNormal;

const MEAN: [f64; 5] = [3.0, -2.0, 0.5, 10.0, 0.0];
const SD: [f64; 5] = [0.5, 2.0, 1.0, 3.0, 0.1];

/// -H(N(m, diag s^2)) in bits.
fn neg_entropy_bits() -> f64 {
    -SD.iter()
        .map(|s| 0.5 * (2.0 * std::f64::consts::PI * std::f64::consts::E * s * s).log2())
        .sum::<f64>()
}

fn gaussian_file(dir: &std::path::Path, rows: usize) -> std::path::PathBuf {
    let mut rng = diffusion_data::rng(42, 0);
    let data = (0..rows * 5)
        .map(|j| (MEAN[j % 5] + SD[j % 5] * rng.sample::<f64, _>(StandardNormal)) as f32)
        .collect();
    let path = dir.join("gauss5.npy");
    io::write(&path, &Array2::new(rows, 5, data).unwrap()).unwrap();
    path
}

fn config(path: &std::path::Path, standardize: &str, steps: usize) -> RunConfig {
    RunConfig::from_toml(&format!(
        r#"
        [diffusion]
        steps = 100
        schedule = {{ kind = "linear", start = 1e-4, end = 0.1 }}
        parametrization = "paper"
        [data]
        kind = "file"
        path = "{}"
        heldout_fraction = 0.25
        standardize = "{standardize}"
        [model]
        hidden = [64, 64]
        time = "sinusoidal"
        [train]
        steps = {steps}
        batch_size = 256
        log_every = 1000
        optimizer = {{ kind = "adam", lr = 3e-3 }}
        "#,
        path.display()
    ))
    .unwrap()
}

/// Creates the run and evaluates the untrained network (the forward kernel) on it.
fn forward_kernel_evaluation(config: RunConfig, dir: &std::path::Path) -> Evaluation {
    let device = Device::flex();
    let run = Run::create(resolve(config).unwrap(), dir, true, "flex").unwrap();
    let model = run.manifest.init_model(&device).unwrap();
    evaluate(&run.manifest, &run.dir, &model, &device, 100_000, 0, 1).unwrap()
}

#[test]
fn the_forward_kernel_on_standardised_data_is_the_fitted_gaussian() {
    let tmp = tempfile::tempdir().unwrap();
    let file = gaussian_file(tmp.path(), 4000);
    let e = forward_kernel_evaluation(config(&file, "per-coordinate", 1), &tmp.path().join("r"));
    // p(x) = N(x; m^, diag s^2) with the training rows' moments: K is its log-likelihood, which
    // is both the null model's (same held-out rows) and, up to estimating m and s on 3,000
    // rows, -H(data)
    assert_eq!((e.n, e.dim), (1000, 5));
    assert!(
        (e.k_bits - e.l_null_bits).abs() < 3.0 * e.k_stderr_bits,
        "K = {} ± {}, L_null = {}",
        e.k_bits,
        e.k_stderr_bits,
        e.l_null_bits
    );
    let h = neg_entropy_bits();
    assert!(
        (e.k_bits - h).abs() < 3.0 * e.k_stderr_bits + 0.05,
        "K = {} ± {}, -H = {h}",
        e.k_bits,
        e.k_stderr_bits
    );
    // the standardised figures and the Jacobian -sum log2 s_i add up
    let (ks, jac) = (e.k_bits_standardized.unwrap(), e.log_jacobian_bits.unwrap());
    assert!((ks + jac - e.k_bits).abs() < 1e-9);
    let want_jac = -SD.iter().map(|s| s.log2()).sum::<f64>();
    assert!((jac - want_jac).abs() < 0.05, "{jac} vs {want_jac}");
    assert!((e.k_bits_per_dim - e.k_bits / 5.0).abs() < 1e-12);
}

#[test]
fn the_forward_kernel_on_raw_data_is_the_standard_normal() {
    // unstandardised: the model's p(x_0) is N(0, I) itself, far from these data, and K must be
    // its log-likelihood: E log2 N(x; 0, I) = -1/2 sum (log 2 pi + s^2 + m^2) / ln 2. The
    // eq. 14 constants alone miss ½ (b_1 + abar_T)(d - |x|²) nats per point here, 0.56 bits.
    let tmp = tempfile::tempdir().unwrap();
    let file = gaussian_file(tmp.path(), 4000);
    let e = forward_kernel_evaluation(config(&file, "none", 1), &tmp.path().join("r"));
    let want = -MEAN
        .iter()
        .zip(SD)
        .map(|(m, s)| 0.5 * ((2.0 * std::f64::consts::PI).ln() + s * s + m * m))
        .sum::<f64>()
        / std::f64::consts::LN_2;
    // the held-out mean of |x|^2 varies: compare with its sample value instead of E
    let rows = io::read(&tmp.path().join("r").join("heldout.npy")).unwrap();
    let sample: f64 = rows
        .data
        .chunks_exact(5)
        .map(|r| {
            -r.iter()
                .map(|&x| 0.5 * ((2.0 * std::f64::consts::PI).ln() + (x as f64).powi(2)))
                .sum::<f64>()
                / std::f64::consts::LN_2
        })
        .sum::<f64>()
        / rows.rows as f64;
    assert!((sample - want).abs() < 5.0, "{sample} vs {want}");
    // K - log2 N(x; 0, I) has only the chain's Monte-Carlo noise: about 0.05 bits here
    assert!(
        (e.k_bits - sample).abs() < 0.15,
        "K = {} ± {}, log2 N(x; 0, I) = {sample}",
        e.k_bits,
        e.k_stderr_bits
    );
    assert!(e.k_bits_standardized.is_none() && e.log_jacobian_bits.is_none());
}

#[test]
fn a_trained_model_stays_below_the_data_entropy() {
    let tmp = tempfile::tempdir().unwrap();
    let file = gaussian_file(tmp.path(), 4000);
    let device = Device::flex();
    let run = Run::create(
        resolve(config(&file, "per-coordinate", 1500)).unwrap(),
        &tmp.path().join("r"),
        true,
        "flex",
    )
    .unwrap();
    let (model, _) = run.train(&device, &mut |_| {}).unwrap();
    let dir = diffusion_models::RunDir::open(&tmp.path().join("r")).unwrap();
    let manifest = dir.manifest().unwrap();
    let e = evaluate(&manifest, &dir, &model, &device, 100_000, 0, 1).unwrap();
    let h = neg_entropy_bits();
    // a bound: below -H(data) (up to noise), and a useful one: within 0.5 bits of it
    assert!(
        e.k_bits < h + 3.0 * e.k_stderr_bits,
        "K = {} ± {} above -H = {h}",
        e.k_bits,
        e.k_stderr_bits
    );
    assert!(e.k_bits > h - 0.5, "K = {} vs -H = {h}", e.k_bits);
}

#[test]
fn binomial_bound_is_exact_when_pi_is_not_the_activity() {
    // bits with activity 0.5, diffused towards Bernoulli(0.2) with abar_T > 0 (T steps of a
    // linear schedule that stops short): the forward kernel's p(x_0) is i.i.d. Bernoulli(0.2),
    // so K = L_null per point, which eq. 14's constants alone miss by
    // (b_1 + abar_T) logit(pi) sum_i (x_i - pi)
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = diffusion_data::rng(7, 0);
    let d = 12;
    let data: Vec<f32> = (0..2000 * d)
        .map(|_| f32::from(u8::from(rng.random::<bool>())))
        .collect();
    let file = tmp.path().join("bits.npy");
    io::write(&file, &Array2::new(2000, d, data).unwrap()).unwrap();
    let config = RunConfig::from_toml(&format!(
        r#"
        [diffusion]
        process = "binomial"
        steps = 50
        schedule = {{ kind = "linear", start = 0.01, end = 0.05 }}
        pi = 0.2
        parametrization = "paper"
        [data]
        kind = "file"
        path = "{}"
        [model]
        hidden = [32]
        [train]
        steps = 1
        batch_size = 16
        "#,
        file.display()
    ))
    .unwrap();
    let e = forward_kernel_evaluation(config, &tmp.path().join("r"));
    assert!(
        (e.k_bits - e.l_null_bits).abs() < 3.0 * e.k_stderr_bits.max(0.01),
        "K = {} ± {}, L_null = {}",
        e.k_bits,
        e.k_stderr_bits,
        e.l_null_bits
    );
    // what the correction is worth here, so that the test can tell
    let abar_t: f64 = (1..=50)
        .map(|t| 1.0 - (0.01 + 0.04 * (t - 1) as f64 / 49.0))
        .product();
    let logit = (0.2f64 / 0.8).ln();
    let missing = (0.01 + abar_t) * logit * d as f64 * (0.5 - 0.2) / std::f64::consts::LN_2;
    assert!(missing.abs() > 0.3, "{missing}");
}

#[test]
fn a_raw_unit_swiss_roll_file_gets_the_generator_runs_bound_plus_the_jacobian() {
    // one model, trained on the generator, evaluated on its own held-out points and on the
    // same kind of points written to a file in raw units (x c + m, shifted): after the file
    // run's standardisation the two are one problem, and K in the file's units is the
    // generator's K minus 2 log2 c
    let tmp = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let generator = RunConfig::from_toml(
        r#"
        [diffusion]
        steps = 20
        schedule = { kind = "linear", start = 1e-3, end = 0.3 }
        parametrization = "paper"
        [data]
        kind = "swiss-roll"
        [model]
        hidden = [64, 64]
        [train]
        steps = 400
        batch_size = 256
        log_every = 1000
        optimizer = { kind = "adam", lr = 3e-3 }
        "#,
    )
    .unwrap();
    let run = Run::create(
        resolve(generator).unwrap(),
        &tmp.path().join("gen"),
        true,
        "flex",
    )
    .unwrap();
    let (model, _) = run.train(&device, &mut |_| {}).unwrap();
    let gen_dir = diffusion_models::RunDir::open(&tmp.path().join("gen")).unwrap();
    let gen_manifest = gen_dir.manifest().unwrap();
    let k_gen = evaluate(&gen_manifest, &gen_dir, &model, &device, 4000, 0, 1).unwrap();

    let roll = diffusion_data::SwissRoll::new(0.5).unwrap();
    let (c, m) = (roll.scale(), roll.raw_mean());
    let points = roll.stream(99).next_batch(20_000);
    let raw: Vec<f32> = points
        .chunks_exact(2)
        .flat_map(|p| {
            [
                (p[0] as f64 * c + m[0] + 30.0) as f32,
                (p[1] as f64 * c + m[1] - 20.0) as f32,
            ]
        })
        .collect();
    let file = tmp.path().join("raw.npy");
    io::write(&file, &Array2::new(20_000, 2, raw).unwrap()).unwrap();
    let config = RunConfig::from_toml(&format!(
        r#"
        [diffusion]
        steps = 20
        schedule = {{ kind = "linear", start = 1e-3, end = 0.3 }}
        parametrization = "paper"
        [data]
        kind = "file"
        path = "{}"
        heldout_fraction = 0.2
        standardize = "global"
        [model]
        hidden = [64, 64]
        [train]
        steps = 1
        batch_size = 256
        "#,
        file.display()
    ))
    .unwrap();
    let file_run = Run::create(
        resolve(config).unwrap(),
        &tmp.path().join("file"),
        true,
        "flex",
    )
    .unwrap();
    let k_file = evaluate(
        &file_run.manifest,
        &file_run.dir,
        &model,
        &device,
        4000,
        0,
        1,
    )
    .unwrap();
    let want = k_gen.k_bits - 2.0 * c.log2();
    let tolerance = 3.0 * (k_gen.k_stderr_bits.powi(2) + k_file.k_stderr_bits.powi(2)).sqrt();
    assert!(
        (k_file.k_bits - want).abs() < tolerance,
        "file K = {} ± {}, generator K - 2 log2 c = {want} (± {})",
        k_file.k_bits,
        k_file.k_stderr_bits,
        k_gen.k_stderr_bits
    );
    // and the change of units is what it says: -2 log2 of the fitted scale, close to c
    let jac = k_file.log_jacobian_bits.unwrap();
    assert!(
        (jac + 2.0 * c.log2()).abs() < 0.02,
        "{jac} vs {}",
        -2.0 * c.log2()
    );
}
