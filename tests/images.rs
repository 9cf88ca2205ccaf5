//! Images through the command line: an image file's shape recorded in the run, the U-Net and the
//! paper's convolutional network trained on it, the bound in bits per dimension of the 8-bit
//! data beside independent histograms, samples written as images, grids drawn without
//! `--image`, and bad image input refused.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use diffusion_data::{ImageShape, Rng, io};
use rand::Rng as _;

const SIDE: usize = 8;

/// `n` 8x8 grey images of 8-bit pixels, `[n, 8, 8]` as .npy: a bright vertical bar in the left
/// or right half on a dark background, with some pixel noise. Returns their labels: 0 for a bar
/// on the left, 1 on the right.
fn bars(path: &Path, n: usize, seed: u64) -> Vec<u8> {
    let mut rng: Rng = diffusion_data::rng(seed, 0);
    let mut pixels = Vec::with_capacity(n * SIDE * SIDE);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let column = if rng.random_bool(0.5) { 1 } else { 5 };
        labels.push(u8::from(column == 5));
        for _row in 0..SIDE {
            for c in 0..SIDE {
                let on = c == column || c == column + 1;
                let base: u8 = if on { 220 } else { 0 };
                let jitter: u8 = if rng.random_bool(0.2) { 30 } else { 0 };
                pixels.push(if on { base - jitter } else { jitter });
            }
        }
    }
    let mut out = Vec::new();
    {
        use npyz::WriterBuilder;
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&[n as u64, SIDE as u64, SIDE as u64])
            .writer(&mut out)
            .begin_nd()
            .unwrap();
        w.extend(pixels).unwrap();
        w.finish().unwrap();
    }
    std::fs::write(path, out).unwrap();
    labels
}

/// Labels as an IDX file of rank 1 (MNIST's label files).
fn write_labels(path: &Path, labels: &[u8]) {
    let mut bytes = vec![0, 0, 8, 1];
    bytes.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    bytes.extend_from_slice(labels);
    std::fs::write(path, bytes).unwrap();
}

fn config(train: &Path, test: &Path, model: &str) -> String {
    format!(
        r#"
[diffusion]
steps = 50
schedule = {{ kind = "cosine" }}
parametrization = "epsilon"
[data]
kind = "file"
path = "{}"
test_path = "{}"
standardize = "global"
dequantize = true
[model]
{model}
[train]
steps = 120
batch_size = 32
log_every = 60
loss = "hybrid"
optimizer = {{ kind = "adam", lr = 2e-3 }}
"#,
        s(train),
        s(test)
    )
}

const UNET: &str = r#"kind = "unet"
[model.unet]
channels = 8
channel_mult = [1, 2]
attention_resolutions = [4]
groups = 4"#;

const PAPER: &str = r#"kind = "paper-conv"
[model.conv]
n_layers_conv = 2
n_hidden_conv = 8
n_scales = 2
n_hidden_dense_lower = 32
n_temporal_basis = 4"#;

fn data(dir: &Path) -> (PathBuf, PathBuf) {
    let (train, test) = (dir.join("train.npy"), dir.join("test.npy"));
    let _ = bars(&train, 400, 1);
    let _ = bars(&test, 60, 2);
    (train, test)
}

fn f(v: &serde_json::Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// K from `diffusion terms` at every step of `steps` on the first 60 test images: the constant
/// part minus the terms' sum, plus the change of units; with the terms' rows.
fn k_from_terms(
    run_dir: &str,
    steps: std::ops::RangeInclusive<usize>,
) -> (f64, Vec<serde_json::Value>) {
    let all: Vec<String> = steps.map(|t| t.to_string()).collect();
    let terms = json(&run(&[
        "terms",
        "--run",
        run_dir,
        "--json",
        "--n",
        "60",
        "--steps",
        &all.join(","),
    ]));
    let rows = terms["terms"].as_array().unwrap().clone();
    let sum: f64 = rows.iter().map(|t| f(t, "kl_bits")).sum();
    let k = f(&terms, "constant_bits") - sum + f(&terms, "log_jacobian_bits");
    (k, rows)
}

/// The independent 256-level histograms' NLL in bits per pixel, computed here from the files.
fn histogram_bits_per_dim(train: &Path, test: &Path) -> f64 {
    let train = io::read(train).unwrap();
    let test = io::read(test).unwrap();
    let d = train.cols;
    let mut counts = vec![[0usize; 256]; d];
    for row in train.data.chunks(d) {
        for (j, &v) in row.iter().enumerate() {
            counts[j][v as usize] += 1;
        }
    }
    let mut bits = 0.0;
    for row in test.data.chunks(d) {
        for (j, &v) in row.iter().enumerate() {
            let p = (counts[j][v as usize] + 1) as f64 / (train.rows + 256) as f64;
            bits -= p.log2();
        }
    }
    bits / (test.rows * d) as f64
}

#[test]
fn a_unet_trains_on_images_and_reports_bits_per_dimension() {
    let dir = workdir("images-unet");
    let (train, test) = data(&dir);
    let run_dir = train_quick(&config(&train, &test, UNET), &dir, "unet");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["image"],
        serde_json::json!({"channels": 1, "height": 8, "width": 8})
    );

    let e = json(&run(&["evaluate", "--run", s(&run_dir), "--json"]));
    assert_eq!(e["bound_estimate"], "stratified, 32 steps per point");
    assert_eq!(e["n"], 60, "every test image");
    let d = 64.0;
    assert!((f(&e, "nll_bits_per_dim") + f(&e, "k_bits") / d).abs() < 1e-9);
    let histogram = histogram_bits_per_dim(&train, &test);
    assert!(
        (f(&e, "histogram_bits_per_dim") - histogram).abs() < 1e-9,
        "{} vs {histogram}",
        f(&e, "histogram_bits_per_dim")
    );
    // the full sum agrees with the estimate
    let full = json(&run(&[
        "evaluate",
        "--run",
        s(&run_dir),
        "--json",
        "--full-sum",
    ]));
    assert_eq!(full["bound_estimate"], "full sum");
    let tolerance = 4.0 * f(&e, "k_stderr_bits").hypot(f(&full, "k_stderr_bits"));
    assert!(
        (f(&e, "k_bits") - f(&full, "k_bits")).abs() < tolerance,
        "{} vs {}",
        e["k_bits"],
        full["k_bits"]
    );

    // samples are 8-bit images of the run's shape
    let samples = dir.join("samples.npy");
    run(&[
        "sample",
        "--run",
        s(&run_dir),
        "-n",
        "6",
        "--out",
        s(&samples),
    ]);
    let (a, shape) = io::read_shaped(&samples).unwrap();
    assert_eq!(
        shape,
        Some(ImageShape {
            channels: 1,
            height: 8,
            width: 8
        })
    );
    assert_eq!(a.rows, 6);
    assert!(
        a.data
            .iter()
            .all(|&v| (0.0..=255.0).contains(&v) && v.fract() == 0.0)
    );

    // grids drawn from the run's shape, no --image
    let pictures = dir.join("pictures");
    run(&[
        "plot",
        "--run",
        s(&run_dir),
        "--out",
        s(&pictures),
        "--what",
        "samples,trajectory",
        "--rows",
        "10",
    ]);
    for name in ["samples", "trajectory"] {
        assert!(
            png_size(&pictures.join(format!("{name}.png"))).0 > 100,
            "{name}"
        );
    }
}

#[test]
fn the_papers_network_trains_on_images() {
    let dir = workdir("images-paper");
    let (train, test) = data(&dir);
    let run_dir = train_quick(&config(&train, &test, PAPER), &dir, "paper");
    let e = json(&run(&[
        "evaluate",
        "--run",
        s(&run_dir),
        "--json",
        "--t-draws",
        "8",
    ]));
    assert_eq!(e["bound_estimate"], "stratified, 8 steps per point");
    let nll = f(&e, "nll_bits_per_dim");
    assert!(nll.is_finite() && nll > 0.0, "{nll}");
    // the run refers to its data files rather than copying them, and notices when one changes
    assert!(!run_dir.join("train.npy").exists() && !run_dir.join("heldout.npy").exists());
    let _ = bars(&train, 400, 3);
    fails(
        &["evaluate", "--run", s(&run_dir)],
        "has changed since the run was made",
    );
}

#[test]
fn bad_image_input_is_refused() {
    let dir = workdir("images-bad");
    let (train, _) = data(&dir);
    // a test file of another shape
    let other = dir.join("other.npy");
    let mut out = Vec::new();
    {
        use npyz::WriterBuilder;
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&[3, 4, 16])
            .writer(&mut out)
            .begin_nd()
            .unwrap();
        w.extend(vec![0u8; 3 * 64]).unwrap();
        w.finish().unwrap();
    }
    std::fs::write(&other, out).unwrap();
    let c = write_config(&dir, "shape.toml", &config(&train, &other, UNET));
    let o = dir.join("o");
    fails(
        &["train", "--config", s(&c), "--out", s(&o)],
        "images of 1x4x16, where the training data have images of 1x8x8",
    );
    // an image network on rows without a shape
    let flat = dir.join("flat.npy");
    io::write(&flat, &io::read(&train).unwrap()).unwrap();
    let c = write_config(&dir, "flat.toml", &config(&flat, &flat, UNET));
    fails(
        &["train", "--config", s(&c), "--out", s(&o)],
        "needs image data",
    );
    // attention at a resolution the network does not have
    let bad = UNET.replace("attention_resolutions = [4]", "attention_resolutions = [3]");
    let test = dir.join("test.npy");
    let c = write_config(&dir, "attention.toml", &config(&train, &test, &bad));
    fails(
        &["train", "--config", s(&c), "--out", s(&o)],
        "attention at resolution 3",
    );
    // a table for another kind
    let c = write_config(
        &dir,
        "table.toml",
        &config(&train, &test, "hidden = [8]\n[model.unet]\nchannels = 8"),
    );
    fails(
        &["train", "--config", s(&c), "--out", s(&o)],
        "model.unet is for kind = \"unet\"",
    );
    // nothing was left behind
    assert!(!o.exists());
}

/// `diffusion.decoder = "discretized"`: the pixels stay on their levels, K is a bound on the
/// 8-bit values themselves (no Jacobian, the decoder's term at t = 1 in the stratified estimate
/// and the full sum alike), samples are levels; data off the levels are refused.
#[test]
fn the_discretized_decoder_bounds_the_eight_bit_values() {
    let dir = workdir("images-decoder");
    let (train, test) = data(&dir);
    let text = config(&train, &test, PAPER)
        .replace("dequantize = true\n", "")
        .replace(
            "[data]",
            "decoder = \"discretized\"\nclip_denoised = true\n[data]",
        );
    let run_dir = train_quick(&text, &dir, "decoder");
    let e = json(&run(&["evaluate", "--run", s(&run_dir), "--json"]));
    let d = 64.0;
    assert!((f(&e, "nll_bits_per_dim") + f(&e, "k_bits") / d).abs() < 1e-9);
    assert!(e["log_jacobian_bits"].is_null(), "{e}");
    // a log-probability of integers: at most 0, and here short of 8 bits a pixel
    assert!(
        f(&e, "k_bits") < 0.0 && f(&e, "nll_bits_per_dim") < 8.0,
        "{e}"
    );
    let full = json(&run(&[
        "evaluate",
        "--run",
        s(&run_dir),
        "--json",
        "--full-sum",
    ]));
    let tolerance = 4.0 * f(&e, "k_stderr_bits").hypot(f(&full, "k_stderr_bits"));
    assert!(
        (f(&e, "k_bits") - f(&full, "k_bits")).abs() < tolerance,
        "{} vs {}",
        e["k_bits"],
        full["k_bits"]
    );
    // K = the constant part minus every term t = 1..T, the decoder's included
    let (k, rows) = k_from_terms(s(&run_dir), 1..=50);
    assert_eq!(rows[0]["t"], 1);
    let tolerance = 4.0 * f(&full, "k_stderr_bits").max(1.0);
    assert!(
        (k - f(&full, "k_bits")).abs() < tolerance,
        "{k} vs {}",
        full["k_bits"]
    );
    assert!(f(&rows[0], "kl_bits") > 0.0);
    fails(
        &["terms", "--run", s(&run_dir), "--steps", "0"],
        "outside 1..=50",
    );
    // samples on the levels, by the respaced chain too
    for extra in [
        &[][..],
        &["--sampler", "respaced", "--sample-steps", "10"][..],
    ] {
        let samples = dir.join("samples.npy");
        let mut args = vec![
            "sample",
            "--run",
            s(&run_dir),
            "-n",
            "6",
            "--out",
            s(&samples),
        ];
        args.extend_from_slice(extra);
        run(&args);
        let (a, _) = io::read_shaped(&samples).unwrap();
        assert!(
            a.data
                .iter()
                .all(|&v| (0.0..=255.0).contains(&v) && v.fract() == 0.0)
        );
    }
    // values off the 8-bit levels
    let half = dir.join("half.npy");
    let mut rows = io::read(&train).unwrap();
    rows.data[70] = 12.5;
    let shape = ImageShape {
        channels: 1,
        height: 8,
        width: 8,
    };
    io::write_images(&half, &rows, shape).unwrap();
    let c = write_config(&dir, "half.toml", &text.replace(s(&train), s(&half)));
    let o = dir.join("o");
    fails(
        &["train", "--config", s(&c), "--out", s(&o)],
        "value 12.5 at row 1, column 6 is not an integer in 0..=255",
    );
    assert!(!o.exists());
}

/// A folder of PNG files is image data: its shape is recorded and samples come out in it.
#[test]
fn a_folder_of_png_files_trains() {
    let dir = workdir("images-png");
    let (train, test) = data(&dir);
    let folder = dir.join("pngs");
    std::fs::create_dir(&folder).unwrap();
    let rows = io::read(&train).unwrap();
    for i in 0..100 {
        let file = std::fs::File::create(folder.join(format!("{i:03}.png"))).unwrap();
        let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), 8, 8);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        let pixels: Vec<u8> = rows.row(i).iter().map(|&v| v as u8).collect();
        encoder
            .write_header()
            .unwrap()
            .write_image_data(&pixels)
            .unwrap();
    }
    let text = config(&folder, &test, PAPER).replace("steps = 120", "steps = 20");
    let run_dir = train_quick(&text, &dir, "png");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(manifest["image"]["height"], 8);
    assert_eq!(manifest["data_dim"], 64);
    let samples = dir.join("s.npy");
    run(&[
        "sample",
        "--run",
        s(&run_dir),
        "-n",
        "2",
        "--out",
        s(&samples),
    ]);
    assert_eq!(io::read_shaped(&samples).unwrap().1.unwrap().len(), 64);
}

/// Held-out images completed through a respaced chain: inpainting holds the known pixels
/// exactly and reports the filled pixels' error as computed here from `sample`'s file of the
/// same draws; denoising sees the noise it was given; the k-NN labels, the per-step bound terms
/// and bad requests.
#[test]
fn held_out_images_are_inpainted_and_denoised() {
    let dir = workdir("images-complete");
    let (train, test) = (dir.join("train.npy"), dir.join("test.npy"));
    let train_labels = bars(&train, 400, 1);
    let test_labels = bars(&test, 60, 2);
    let (tl, vl) = (dir.join("train-labels"), dir.join("test-labels"));
    write_labels(&tl, &train_labels);
    write_labels(&vl, &test_labels);
    let text = config(&train, &test, UNET).replace(
        "parametrization = \"epsilon\"",
        "parametrization = \"epsilon\"\nclip_denoised = true",
    );
    let run_dir = train_quick(&text, &dir, "unet");
    let r = s(&run_dir);
    let chain = ["--sampler", "respaced", "--sample-steps", "10"];
    let inpaint = ["--from-test", "12", "--mask", "left-half"];
    let mut args = vec!["evaluate-conditional", "--run", r, "--json"];
    args.extend(inpaint);
    args.extend(chain);
    args.extend(["--labels", s(&tl), "--test-labels", s(&vl)]);
    let e = json(&run(&args));
    assert_eq!(e["images"], 12);
    assert_eq!(f(&e, "known_max_change"), 0.0);
    // the left and right bars are told apart on the true images
    assert_eq!(f(&e, "truth_label_accuracy"), 1.0);
    let accuracy = f(&e, "label_accuracy");
    assert!((0.0..=1.0).contains(&accuracy) && (accuracy * 12.0).fract() == 0.0);
    // the same completions from `sample`, their error computed here
    let out = dir.join("filled.npy");
    let mut args = vec!["sample", "--run", r, "-n", "12", "--out", s(&out)];
    args.extend(inpaint);
    args.extend(chain);
    run(&args);
    let filled = io::read(&out).unwrap();
    let truth = io::read(&test).unwrap();
    let (mut squared, mut count) = (0.0, 0);
    for i in 0..12 {
        for (j, (&a, &b)) in filled.row(i).iter().zip(truth.row(i)).enumerate() {
            if j % SIDE < SIDE / 2 {
                squared += ((a - b) as f64).powi(2);
                count += 1;
            } else {
                assert_eq!(a, b, "image {i}: known pixel {j} changed");
            }
        }
    }
    let mse = squared / count as f64;
    assert!(
        (f(&e, "mse") - mse).abs() < 1e-9 * (1.0 + mse),
        "{} vs {mse}",
        e["mse"]
    );
    assert!((f(&e, "psnr_db") - 10.0 * (255.0f64 * 255.0 / mse).log10()).abs() < 1e-9);

    // each image a particle system of four chains: samples in the order image r mod 3, their
    // known pixels held exactly
    let grouped = dir.join("grouped.npy");
    let mut args = vec!["sample", "--run", r, "-n", "12", "--out", s(&grouped)];
    args.extend(["--from-test", "3", "--mask", "left-half", "--resample"]);
    args.extend(chain);
    run(&args);
    let grouped = io::read(&grouped).unwrap();
    for i in 0..12 {
        for (j, (&a, &b)) in grouped.row(i).iter().zip(truth.row(i % 3)).enumerate() {
            if j % SIDE >= SIDE / 2 {
                assert_eq!(a, b, "sample {i}: known pixel {j} of image {}", i % 3);
            }
        }
    }

    // each completion the mean of three passes' draws: the known pixels as given, a smaller
    // error than the single draws' (the squared error is convex in the completion); one pass
    // is the plain draws
    let mut args = vec!["evaluate-conditional", "--run", r, "--json"];
    args.extend(inpaint);
    args.extend(chain);
    args.extend([
        "--average",
        "3",
        "--labels",
        s(&tl),
        "--test-labels",
        s(&vl),
    ]);
    let averaged = json(&run(&args));
    assert_eq!(averaged["averaged_draws"], 3);
    assert_eq!(f(&averaged, "known_max_change"), 0.0);
    assert!(f(&averaged, "mse") < f(&averaged, "draw_mse"), "{averaged}");
    let draws_labelled = f(&averaged, "draw_label_accuracy") * 36.0;
    assert!(
        (draws_labelled - draws_labelled.round()).abs() < 1e-9,
        "{averaged}"
    );
    for (average, name) in [("1", "once.npy"), ("3", "mean.npy")] {
        let file = dir.join(name);
        let mut args = vec!["sample", "--run", r, "-n", "12", "--out", s(&file)];
        args.extend(inpaint);
        args.extend(chain);
        args.extend(["--average", average]);
        run(&args);
        let got = io::read(&file).unwrap();
        if average == "1" {
            assert_eq!(got.data, filled.data, "--average 1 is the plain draws");
            continue;
        }
        for i in 0..12 {
            for (j, (&a, &b)) in got.row(i).iter().zip(truth.row(i)).enumerate() {
                if j % SIDE >= SIDE / 2 {
                    assert_eq!(a, b, "averaged, image {i}: known pixel {j} changed");
                }
            }
        }
        assert_ne!(got.data, filled.data);
    }

    // DDIM completes them too, the known pixels held exactly; denoising needs its noise
    // (eta > 0)
    let ddim_file = dir.join("ddim.npy");
    let mut args = vec!["sample", "--run", r, "-n", "12", "--out", s(&ddim_file)];
    args.extend(inpaint);
    args.extend(["--sampler", "ddim", "--sample-steps", "5"]);
    run(&args);
    let by_ddim = io::read(&ddim_file).unwrap();
    for i in 0..12 {
        for (j, (&a, &b)) in by_ddim.row(i).iter().zip(truth.row(i)).enumerate() {
            if j % SIDE >= SIDE / 2 {
                assert_eq!(a, b, "DDIM, image {i}: known pixel {j} changed");
            }
        }
    }
    assert_ne!(by_ddim.data, filled.data);
    let mut args = vec!["evaluate-conditional", "--run", r, "--json"];
    args.extend(["--from-test", "30", "--noisy-test", "40"]);
    args.extend(["--sampler", "ddim", "--sample-steps", "5", "--eta", "1"]);
    let e = json(&run(&args));
    assert!(f(&e, "mse") < f(&e, "input_mse"), "{e}");

    // denoising: the input's error is the noise's variance, up to its sampling error
    let mut args = vec!["evaluate-conditional", "--run", r, "--json"];
    args.extend(["--from-test", "30", "--noisy-test", "40"]);
    args.extend(chain);
    let e = json(&run(&args));
    let input = f(&e, "input_mse");
    // 1,920 squared normals: sd of the mean about 1600 sqrt(2 / 1920) = 52
    assert!((input - 1600.0).abs() < 250.0, "{input}");
    assert!(f(&e, "mse") < input, "{} vs {input}", e["mse"]);

    // pictures of both
    let pictures = dir.join("pictures");
    let mut args = vec!["plot", "--run", r, "--out", s(&pictures)];
    args.extend(["--what", "inpainting,denoising", "--from-test", "3"]);
    args.extend(chain);
    run(&args);
    for name in ["inpainting", "denoising"] {
        assert!(
            png_size(&pictures.join(format!("{name}.png"))).0 > 100,
            "{name}"
        );
    }

    // the bound's terms: K = constant - their sum over t = 2..T, in the data's units with the
    // Jacobian; against evaluate's full sum (other draws: within their standard errors)
    let (k, rows) = k_from_terms(r, 2..=50);
    assert_eq!(rows.len(), 49);
    let full = json(&run(&["evaluate", "--run", r, "--json", "--full-sum"]));
    let se = f(&full, "k_stderr_bits");
    assert!(
        (k - f(&full, "k_bits")).abs() < 6.0 * se,
        "{k} vs {} ± {se}",
        full["k_bits"]
    );

    // bad requests: one line each
    let o = s(&out);
    let sample = |extra: &[&'static str]| -> Vec<&str> {
        let mut v = vec!["sample", "--run", r, "-n", "12", "--out", o];
        v.extend(extra);
        v
    };
    fails(&sample(&["--mask", "left-half"]), "need --from-test");
    fails(
        &sample(&["--from-test", "12", "--mask", "left-half", "--average", "0"]),
        "--average must be at least 1",
    );
    fails(
        &sample(&["--average", "2"]),
        "--average takes the mean of conditioned draws",
    );
    fails(
        &sample(&["--from-test", "5", "--mask", "left-half"]),
        "not a multiple of --from-test 5",
    );
    fails(
        &sample(&["--from-test", "12", "--mask", "center:9"]),
        "larger than the run's 8x8",
    );
    fails(
        &sample(&["--from-test", "12", "--mask", "middle"]),
        "expected left-half",
    );
    fails(
        &sample(&["--from-test", "12"]),
        "one of --mask or --noisy-test",
    );
    fails(
        &sample(&["--from-test", "99", "--mask", "left-half"]),
        "60 held-out images",
    );
    let ddim = ["--sampler", "ddim", "--sample-steps", "5"];
    let with_ddim = |extra: &[&'static str]| [extra, &ddim[..]].concat();
    fails(
        &sample(&with_ddim(&[
            "--from-test",
            "3",
            "--mask",
            "left-half",
            "--resample",
        ])),
        "not DDIM",
    );
    fails(
        &sample(&with_ddim(&["--from-test", "12", "--noisy-test", "40"])),
        "--eta > 0",
    );
    fails(
        &["evaluate-conditional", "--run", r, "--known", "0=1"],
        "takes --from-test N",
    );
    fails(
        &sample(&["--known", "3=300"]),
        "outside the training data's range [0, 221]",
    );
}

/// Binomial diffusion on binarised images: `data.binarize` thresholds the grey files, the U-Net
/// gives one logit per pixel, the bound is reported in nats too, and samples are binary images.
#[test]
fn binarised_images_train_with_binomial_diffusion() {
    let dir = workdir("images-binary");
    let (train, test) = data(&dir);
    let text = format!(
        r#"
[diffusion]
process = "binomial"
steps = 40
schedule = {{ kind = "reciprocal" }}
[data]
kind = "file"
path = "{}"
test_path = "{}"
binarize = 128
[model]
{UNET}
[train]
steps = 60
batch_size = 32
log_every = 30
"#,
        s(&train),
        s(&test)
    );
    let run_dir = train_quick(&text, &dir, "binary");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("config.json")).unwrap()).unwrap();
    // pi is the training pixels' share at or above 128: the bars' 2 of 8 columns
    let pixels = io::read(&train).unwrap().data;
    let share = pixels.iter().filter(|&&v| v >= 128.0).count() as f64 / pixels.len() as f64;
    let pi = manifest["config"]["diffusion"]["pi"].as_f64().unwrap();
    assert!(
        (pi - share).abs() < 1e-9 && (pi - 0.25).abs() < 1e-9,
        "{pi} vs {share}"
    );
    let e = json(&run(&["evaluate", "--run", s(&run_dir), "--json"]));
    assert!((f(&e, "k_nats") - f(&e, "k_bits") * std::f64::consts::LN_2).abs() < 1e-9);
    let samples = dir.join("b.npy");
    run(&[
        "sample",
        "--run",
        s(&run_dir),
        "-n",
        "4",
        "--out",
        s(&samples),
    ]);
    let (a, shape) = io::read_shaped(&samples).unwrap();
    assert_eq!(shape.unwrap().len(), 64);
    assert!(a.data.iter().all(|&v| v == 0.0 || v == 1.0));
    // inpainted bits: the known ones held, the PSNR against a peak of 1
    let e = json(&run(&[
        "evaluate-conditional",
        "--run",
        s(&run_dir),
        "--json",
        "--from-test",
        "6",
        "--mask",
        "top-half",
    ]));
    assert_eq!(f(&e, "known_max_change"), 0.0);
    assert_eq!(f(&e, "peak"), 1.0);
    let mse = f(&e, "mse");
    assert!((0.0..=1.0).contains(&mse), "{mse}");
    assert!((f(&e, "psnr_db") + 10.0 * mse.log10()).abs() < 1e-9);
    // a threshold is for binomial runs
    let gaussian = config(&train, &test, UNET).replace("dequantize = true", "binarize = 128");
    let c = write_config(&dir, "gaussian.toml", &gaussian);
    fails(
        &["train", "--config", s(&c), "--out", s(&dir.join("g"))],
        "data.binarize = 128 is a finite threshold for binomial runs",
    );
}
