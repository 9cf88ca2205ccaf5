//! `diffusion plot`: the presentation's pictures of a run, as PNG and SVG.

use std::path::{Path, PathBuf};

use diffusion_core::{Ddim, PredictionType, TimestepSpacing};
use diffusion_models::bound::Diffusion;
use diffusion_models::conditional::Exact;
use diffusion_models::config::LossKind;
use diffusion_models::evaluate::SAMPLE_CHUNK_ROWS;
use diffusion_models::evaluate::{BoundEstimate, evaluate_with, heldout_points, heldout_rows};
use diffusion_models::sampling::Sampler;
use diffusion_models::{Process, RunDir, RunManifest};
use diffusion_plot::{
    ArrowPanel, ArrowPanels, ImagePanel, ImagePanels, LineChart, RasterPanel, RasterPanels,
    ScatterGrid, ScatterPanel, Series, align_first_pulse, first_pulses, rotate_rows, save,
};

use crate::args::{ConditionArgs, PlotArgs, What};
use crate::common::load_run;

/// The random stream of the pictures' draws.
const PLOT_STREAM: u64 = 5;

impl What {
    fn name(self) -> &'static str {
        match self {
            Self::Trajectory => "trajectory",
            Self::Drift => "drift",
            Self::Loss => "loss",
            Self::Samples => "samples",
            Self::Noising => "noising",
            Self::Conditional => "conditional",
            Self::SamplingSteps => "sampling-steps",
            Self::Inpainting => "inpainting",
            Self::Denoising => "denoising",
        }
    }
}

/// The pictures that fit a run.
fn fitting(manifest: &RunManifest, bound: &Diffusion) -> Vec<What> {
    match bound {
        Diffusion::Gaussian(_) if manifest.data_dim == 2 => {
            vec![What::Trajectory, What::Drift, What::Loss]
        }
        Diffusion::Gaussian(_) if manifest.image.is_some_and(|s| s.channels == 1) => {
            vec![What::Samples, What::Trajectory, What::Loss]
        }
        Diffusion::Gaussian(_) => vec![What::Samples, What::Loss],
        Diffusion::Binomial(_) => vec![What::Samples, What::Noising, What::Loss],
    }
}

fn default_steps(steps: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..=10).map(|k| k * steps / 10).collect();
    v.dedup();
    v
}

fn pairs(values: &[f32]) -> Vec<[f32; 2]> {
    values.chunks_exact(2).map(|p| [p[0], p[1]]).collect()
}

fn bit_rows(values: &[f32], d: usize) -> Vec<Vec<bool>> {
    values
        .chunks_exact(d)
        .map(|r| r.iter().map(|&v| v >= 0.5).collect())
        .collect()
}

/// Reads `metrics.csv` of a run as (step, loss) points.
fn loss_series(run: &Path) -> Result<Series, String> {
    let path = run.join(diffusion_models::metrics::FILE);
    let points: Vec<(f64, f64)> = diffusion_models::metrics::read(&path)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|r| (r.step as f64, r.loss_bits))
        .collect();
    if points.is_empty() {
        return Err(format!("{} has no rows yet", path.display()));
    }
    let mut label = run
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| run.display().to_string());
    let loss = RunDir::open(run)
        .and_then(|r| r.manifest())
        .map(|m| m.config.train.loss);
    match loss {
        Ok(LossKind::Mse) => label.push_str(" (noise MSE, not bits)"),
        Ok(LossKind::Hybrid) => label.push_str(" (noise MSE + weighted bound, not bits)"),
        _ => {}
    }
    Ok(Series { label, points })
}

/// Runs `diffusion plot`.
pub fn cmd_plot(a: PlotArgs) -> Result<(), String> {
    if a.n == 0 || a.rows == 0 {
        return Err("-n and --rows must be at least 1".into());
    }
    let (run, manifest, model, device) = load_run(&a.run[0], &a.backend, a.weights)?;
    let bound = manifest.bound_of(&model).map_err(|e| e.to_string())?;
    let steps_t = bound.steps();
    let fits = fitting(&manifest, &bound);
    let what = if a.what.is_empty() {
        fits.clone()
    } else {
        a.what.clone()
    };
    // conditional samples are drawn when asked for, for the runs whose pictures they fit
    let mut allowed = fits.clone();
    if manifest.data_dim == 2 || matches!(bound, Diffusion::Binomial(_)) {
        allowed.push(What::Conditional);
    }
    allowed.push(What::SamplingSteps);
    if manifest.image.is_some() {
        allowed.extend([What::Inpainting, What::Denoising]);
    }
    if what.contains(&What::Conditional) && !a.condition.is_set() {
        return Err(
            "--what conditional needs a condition: --known, --observe, or their files".into(),
        );
    }
    if let Some(w) = what.iter().find(|w| !allowed.contains(w)) {
        let names: Vec<&str> = allowed.iter().map(|w| w.name()).collect();
        return Err(format!(
            "--what {} does not fit {} (it can draw: {})",
            w.name(),
            run.path().display(),
            names.join(", ")
        ));
    }
    let steps = if a.steps.is_empty() {
        default_steps(steps_t)
    } else {
        a.steps.clone()
    };
    if let Some(t) = steps.iter().find(|&&t| t > steps_t) {
        return Err(format!("--steps {t} is beyond T = {steps_t}"));
    }
    std::fs::create_dir_all(&a.out)
        .map_err(|e| format!("cannot create {}: {e}", a.out.display()))?;
    let name = run
        .path()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let d = manifest.data_dim;
    let mut rng = diffusion_data::rng(a.seed, PLOT_STREAM);
    let mut written: Vec<PathBuf> = Vec::new();
    let mut keep = |files: Result<Vec<PathBuf>, diffusion_plot::PlotError>| {
        files.map(|f| written.extend(f)).map_err(|e| e.to_string())
    };
    let heldout = |n: usize| heldout_points(&manifest, &run, n).map_err(|e| e.to_string());
    // grey images of the run's own shape unless --image says otherwise
    let image = a.image.or(manifest
        .image
        .filter(|s| s.channels == 1)
        .map(|s| (s.width, s.height)));
    if let Some((w, h)) = image
        && w * h != d
    {
        return Err(format!(
            "--image {w}x{h} has {} pixels, the run's rows have {d} values",
            w * h
        ));
    }
    for w in &what {
        let stem = a.out.join(w.name());
        match w {
            What::Trajectory if manifest.image.is_some() && image.is_some() => {
                let (width, height) = image.expect("matched");
                let chains = a.rows.clamp(1, 10);
                let data = heldout(chains)?;
                let n = data.len() / d;
                let mut forward: Vec<(usize, Vec<f32>)> = steps
                    .iter()
                    .map(|&t| (t, bound.forward_sample(&data, t, &mut rng)))
                    .collect();
                let mut reverse = bound.trajectory(&model.network, n, &steps, &mut rng, &device);
                let (lo, hi) = pixel_range(
                    &manifest,
                    &heldout_rows(&manifest, &run, 100).map_err(|e| e.to_string())?,
                );
                let panel = |title: &str, snapshots: &mut Vec<(usize, Vec<f32>)>| {
                    snapshots.sort_by_key(|(t, _)| *t);
                    for (_, x) in snapshots.iter_mut() {
                        manifest.to_data_units(x);
                    }
                    // one row per chain, t increasing to the right
                    let images = (0..n)
                        .flat_map(|c| {
                            snapshots
                                .iter()
                                .map(move |(_, x)| x[c * d..(c + 1) * d].to_vec())
                        })
                        .collect();
                    ImagePanel {
                        title: title.into(),
                        images,
                    }
                };
                let ts: Vec<String> = steps.iter().map(|t| t.to_string()).collect();
                keep(save(
                    &ImagePanels {
                        title: format!(
                            "{name}: x_t for t = {} (left to right), forward from held-out images and reverse from the model",
                            ts.join(", ")
                        ),
                        panels: vec![
                            panel("forward q(x_t)", &mut forward),
                            panel("reverse p(x_t)", &mut reverse),
                        ],
                        width,
                        height,
                        columns: steps.len(),
                        range: (lo, hi),
                    },
                    &stem,
                ))?;
            }
            What::Trajectory => {
                let data = heldout(a.n)?;
                let forward: Vec<ScatterPanel> = steps
                    .iter()
                    .map(|&t| ScatterPanel {
                        title: format!("t = {t}"),
                        points: pairs(&bound.forward_sample(&data, t, &mut rng)),
                    })
                    .collect();
                let n = data.len() / d;
                let mut reverse = bound.trajectory(&model.network, n, &steps, &mut rng, &device);
                reverse.sort_by_key(|(t, _)| *t);
                let reverse = reverse
                    .into_iter()
                    .map(|(t, x)| ScatterPanel {
                        title: format!("t = {t}"),
                        points: pairs(&x),
                    })
                    .collect();
                keep(save(
                    &ScatterGrid {
                        title: format!(
                            "{name}: forward q(x_t) from data (top), reverse p(x_t) from the model (bottom), T = {steps_t}"
                        ),
                        rows: vec![("q(x_t)".into(), forward), ("p(x_t)".into(), reverse)],
                        range: 3.0,
                    },
                    &stem,
                ))?;
            }
            What::Drift => {
                let Diffusion::Gaussian(g) = &bound else {
                    unreachable!("checked by fitting()")
                };
                let (k, r) = (15, 2.5f32);
                let grid: Vec<f32> = (0..k * k)
                    .flat_map(|i| {
                        let at = |j: usize| -r + 2.0 * r * j as f32 / (k - 1) as f32;
                        [at(i % k), at(i / k)]
                    })
                    .collect();
                let mut ts = vec![steps_t, steps_t / 2, (steps_t / 10).max(2)];
                ts.retain(|&t| t >= 2);
                ts.dedup();
                let spacing = 2.0 * r / (k - 1) as f32;
                let background = pairs(&heldout(a.n.min(2000))?);
                let mut panels = Vec::new();
                let tables = g.tables(&device);
                for &t in &ts {
                    let x = diffusion_models::process::tensor2(grid.clone(), k * k, 2, &device);
                    let (mean, _) = g.mean_log_variance(&model.network, &tables, x.clone(), t);
                    let delta = (mean - x).into_data().convert::<f32>();
                    let deltas = pairs(delta.as_slice::<f32>().map_err(|e| format!("{e:?}"))?);
                    // Each panel on its own scale: the median arrow 0.8 grid
                    // spacings long, none drawn longer than 1.5.
                    let scale = ArrowPanel::scale_to(&deltas, 0.5, 0.8 * spacing);
                    eprintln!(
                        "drift at t = {t}: arrows drawn x{scale:.2} (at most 1.5 grid spacings)"
                    );
                    panels.push(ArrowPanel {
                        title: format!("t = {t} (arrows x{scale:.2})"),
                        origins: pairs(&grid),
                        deltas,
                        scale,
                        background: background.clone(),
                        max_length: 1.5 * spacing,
                    });
                }
                keep(save(
                    &ArrowPanels {
                        title: format!(
                            "{name}: drift mu(x, t) - x of the reverse kernel over the data (each panel its own scale, long arrows capped)"
                        ),
                        panels,
                        range: 3.0,
                    },
                    &stem,
                ))?;
            }
            What::Loss => {
                let series = a
                    .run
                    .iter()
                    .map(|r| loss_series(r))
                    .collect::<Result<Vec<_>, _>>()?;
                keep(save(
                    &LineChart {
                        title: "Training loss: -K by Monte Carlo, mean over each logging interval"
                            .into(),
                        x_label: "step".into(),
                        y_label: "loss (bits per point)".into(),
                        series,
                    },
                    &stem,
                ))?;
            }
            What::Samples if image.is_some() => {
                let (width, height) = image.expect("matched");
                // in the data's own units: the held-out rows as read, the samples mapped back
                let data = heldout_rows(&manifest, &run, a.rows).map_err(|e| e.to_string())?;
                let drawn = match &a.from {
                    Some(file) => {
                        let rows = diffusion_data::io::read(file).map_err(|e| e.to_string())?;
                        if rows.cols != d {
                            return Err(format!(
                                "{}: rows of {} values, the run's images have {d}",
                                file.display(),
                                rows.cols
                            ));
                        }
                        rows.data[..a.rows.min(rows.rows) * d].to_vec()
                    }
                    None => {
                        let mut drawn = bound.sample(
                            &model.network,
                            a.rows,
                            &mut rng,
                            &device,
                            manifest.chunk_rows(SAMPLE_CHUNK_ROWS),
                        );
                        manifest.to_data_units(&mut drawn);
                        manifest.to_pixels(&mut drawn);
                        drawn
                    }
                };
                let (lo, hi) = pixel_range(&manifest, &data);
                let images = |v: &[f32]| v.chunks_exact(d).map(<[f32]>::to_vec).collect();
                keep(save(
                    &ImagePanels {
                        title: format!("{name}: held-out data and samples"),
                        panels: vec![
                            ImagePanel {
                                title: "held-out data".into(),
                                images: images(&data),
                            },
                            ImagePanel {
                                title: "samples".into(),
                                images: images(&drawn),
                            },
                        ],
                        width,
                        height,
                        columns: 10,
                        range: (lo, hi),
                    },
                    &stem,
                ))?;
            }
            What::Samples if matches!(bound, Diffusion::Gaussian(_)) => {
                // pairs of coordinates, in the space the model diffuses (standardised data)
                let data = heldout(a.n)?;
                let drawn = bound.sample(
                    &model.network,
                    data.len() / d,
                    &mut rng,
                    &device,
                    manifest.chunk_rows(SAMPLE_CHUNK_ROWS),
                );
                let coordinate_pairs: Vec<(usize, usize)> = if d == 1 {
                    vec![(0, 0)]
                } else {
                    (0..d / 2).take(5).map(|k| (2 * k, 2 * k + 1)).collect()
                };
                let panels = |v: &[f32]| {
                    coordinate_pairs
                        .iter()
                        .map(|&(i, j)| ScatterPanel {
                            title: format!("x{i} against x{j}"),
                            points: v.chunks_exact(d).map(|r| [r[i], r[j]]).collect(),
                        })
                        .collect::<Vec<_>>()
                };
                let units = if manifest
                    .standardization
                    .as_ref()
                    .is_some_and(|s| !s.is_identity())
                {
                    " (standardised units)"
                } else {
                    ""
                };
                keep(save(
                    &ScatterGrid {
                        title: format!("{name}: pairs of coordinates{units}"),
                        rows: vec![
                            ("held-out".into(), panels(&data)),
                            ("samples".into(), panels(&drawn)),
                        ],
                        range: 3.0,
                    },
                    &stem,
                ))?;
            }
            What::Samples => {
                let mut data = bit_rows(&heldout(a.rows)?, d);
                let drawn = bound.sample(
                    &model.network,
                    a.rows,
                    &mut rng,
                    &device,
                    manifest.chunk_rows(diffusion_models::evaluate::SAMPLE_CHUNK_ROWS),
                );
                let mut samples = bit_rows(&drawn, d);
                if a.align {
                    align_first_pulse(&mut data);
                    align_first_pulse(&mut samples);
                }
                let aligned = if a.align {
                    ", aligned on the first pulse"
                } else {
                    ""
                };
                keep(save(
                    &RasterPanels {
                        title: format!("{name}: data and samples{aligned}"),
                        panels: vec![
                            RasterPanel {
                                title: "data".into(),
                                rows: data,
                            },
                            RasterPanel {
                                title: "samples".into(),
                                rows: samples,
                            },
                        ],
                    },
                    &stem,
                ))?;
            }
            What::Conditional => {
                let m = if d == 2 { a.n } else { a.rows };
                let given = a
                    .condition
                    .resolve_for(&manifest, &run, bound.variable(), m, a.seed)?
                    .ok_or("--what conditional needs a condition")?;
                let exact = Exact::of(&manifest.config.data, &given).map_err(|e| e.to_string())?;
                let drawn = bound
                    .sample_given(
                        &model.network,
                        m,
                        &given,
                        &mut rng,
                        &device,
                        manifest.chunk_rows(SAMPLE_CHUNK_ROWS),
                    )
                    .map_err(|e| e.to_string())?;
                let truth = exact.sample(m, &mut rng);
                let mode = given.mode().name().to_string()
                    + if given.resamples() { ", resampled" } else { "" };
                let title = format!(
                    "{name}: samples of p(x_0) r(x_0), {mode} r, beside the exact conditional"
                );
                if d == 2 {
                    let panel = |title: &str, values: &[f32]| ScatterPanel {
                        title: title.into(),
                        points: pairs(values),
                    };
                    let panels = vec![
                        panel("data", &heldout(m)?),
                        panel("exact conditional", &truth),
                        panel(&format!("model, {mode} r"), &drawn),
                    ];
                    keep(save(
                        &ScatterGrid {
                            title,
                            rows: vec![("x_0".into(), panels)],
                            range: 3.0,
                        },
                        &stem,
                    ))?;
                } else {
                    let mut truth = bit_rows(&truth, d);
                    let mut samples = bit_rows(&drawn, d);
                    if a.align {
                        align_first_pulse(&mut truth);
                        align_first_pulse(&mut samples);
                    }
                    keep(save(
                        &RasterPanels {
                            title,
                            panels: vec![
                                RasterPanel {
                                    title: "exact conditional".into(),
                                    rows: truth,
                                },
                                RasterPanel {
                                    title: format!("model, {mode} r"),
                                    rows: samples,
                                },
                            ],
                        },
                        &stem,
                    ))?;
                }
            }
            What::Inpainting | What::Denoising => {
                let (width, height) =
                    image.ok_or("--what inpainting and denoising draw grey images")?;
                let task = completion_task(&a.condition, *w, &manifest, &run)?;
                let rows = task.from_test.unwrap_or(8);
                let shown = task
                    .test_task(&manifest, &run, a.seed)?
                    .expect("--from-test set");
                let per = COMPLETIONS_SHOWN;
                let sampler = a.sampler.sampler()?;
                let drawn = crate::complete::complete(
                    &task,
                    &shown,
                    &bound,
                    &sampler,
                    (&manifest, &model, &device),
                    rows * per,
                    a.seed,
                    SAMPLE_CHUNK_ROWS,
                )?;
                let (lo, hi) = pixel_range(&manifest, &shown.truth);
                let grey = (lo + hi) / 2.0;
                // one row per image: the truth, the input (unknown pixels grey), the completions
                let mut images = Vec::new();
                for r in 0..rows {
                    let at = |v: &[f32], i: usize| v[i * d..(i + 1) * d].to_vec();
                    images.push(at(&shown.truth, r));
                    let mut input = at(&shown.input, r);
                    input
                        .iter_mut()
                        .for_each(|v| *v = if v.is_nan() { grey } else { v.clamp(lo, hi) });
                    images.push(input);
                    // sample j * rows + r completes image r
                    images.extend((0..per).map(|j| at(&drawn, j * rows + r)));
                }
                let what = match w {
                    What::Inpainting => format!("{} unknown", task.mask.as_deref().unwrap_or("")),
                    _ => format!("noise of sd {:.1}", task.noisy_test.unwrap_or(0.0)),
                };
                keep(save(
                    &ImagePanels {
                        title: format!(
                            "{name}: held-out images, the input ({what}), and {per} completions each"
                        ),
                        panels: vec![ImagePanel {
                            title: String::new(),
                            images,
                        }],
                        width,
                        height,
                        columns: 2 + per,
                        range: (lo, hi),
                    },
                    &stem,
                ))?;
            }
            What::SamplingSteps => {
                let (quality, bound_k) =
                    sampling_steps(&manifest, &run, &model, &device, a.n, a.seed)?;
                let binary = matches!(bound, Diffusion::Binomial(_));
                let y = if binary {
                    "share of valid samples"
                } else {
                    "energy distance to fresh or held-out data"
                };
                keep(save(
                    &LineChart {
                        title: format!(
                            "{name}: sample quality against sampling steps K (T = {steps_t})"
                        ),
                        x_label: "sampling steps K".into(),
                        y_label: y.into(),
                        series: quality,
                    },
                    &stem,
                ))?;
                keep(save(
                    &LineChart {
                        title: format!(
                            "{name}: the bound K of the respaced chain against its steps"
                        ),
                        x_label: "sampling steps K".into(),
                        y_label: "K (bits per point)".into(),
                        series: vec![bound_k],
                    },
                    &a.out.join("sampling-steps-bound"),
                ))?;
            }
            What::Noising => {
                let data = heldout(a.rows)?;
                // Each noised row turns with the data row it came from.
                let shifts = first_pulses(&bit_rows(&data, d));
                let panels = steps
                    .iter()
                    .map(|&t| {
                        let mut rows = bit_rows(&bound.forward_sample(&data, t, &mut rng), d);
                        if a.align {
                            rotate_rows(&mut rows, &shifts);
                        }
                        RasterPanel {
                            title: format!("t = {t}"),
                            rows,
                        }
                    })
                    .collect();
                keep(save(
                    &RasterPanels {
                        title: format!("{name}: data noised by q(x_t | x_0)"),
                        panels,
                    },
                    &stem,
                ))?;
            }
        }
    }
    for f in &written {
        println!("{}", f.display());
    }
    Ok(())
}

/// The step counts K the sampling-steps picture visits: 10, 20, 50, 100, 200, 500, ... below T,
/// then T.
fn step_counts(steps: usize) -> Vec<usize> {
    let mut ks: Vec<usize> = [1, 2, 5]
        .iter()
        .flat_map(|&m| (1..7).map(move |e| m * 10usize.pow(e)))
        .filter(|&k| k < steps)
        .collect();
    ks.sort_unstable();
    ks.push(steps);
    ks
}

/// Sample quality of respaced and DDIM chains (and the data floor) and the respaced chain's K
/// against the number of steps, each point one `evaluate_with` on `n` samples.
fn sampling_steps(
    manifest: &RunManifest,
    run: &RunDir,
    model: &diffusion_models::ReverseModel<diffusion_models::Network>,
    device: &burn::tensor::Device,
    n: usize,
    seed: u64,
) -> Result<(Vec<Series>, Series), String> {
    let bound = manifest.bound_of(model).map_err(|e| e.to_string())?;
    let gaussian = matches!(bound, Diffusion::Gaussian(_));
    let points = 1000;
    let mut respaced = Vec::new();
    let mut ddim = Vec::new();
    let mut floor = Vec::new();
    let mut ks = Vec::new();
    for k in step_counts(bound.steps()) {
        let eval = |sampler| {
            evaluate_with(
                manifest,
                run,
                model,
                device,
                points,
                n,
                seed,
                &sampler,
                BoundEstimate::default_for(manifest),
            )
            .map_err(|e| e.to_string())
        };
        let e = eval(Sampler::Respaced(k))?;
        eprintln!("sampling steps {k}: respaced K = {:+.4} bits", e.k_bits);
        ks.push((k as f64, e.k_bits));
        match (e.energy_distance, e.valid_fraction) {
            (Some(ed), _) => {
                respaced.push((k as f64, ed));
                if let Some(f) = e.energy_distance_floor {
                    floor.push((k as f64, f));
                }
            }
            (None, Some(v)) => respaced.push((k as f64, v)),
            _ => {}
        }
        if gaussian {
            let options = Ddim {
                alphas_cumprod: Vec::new(),
                steps: k,
                eta: 0.0,
                timestep_spacing: TimestepSpacing::Leading,
                clip_sample: false,
                clip_sample_range: 1.0,
                set_alpha_to_one: true,
                prediction_type: PredictionType::Epsilon,
            };
            if let Some(ed) = eval(Sampler::Ddim(options))?.energy_distance {
                ddim.push((k as f64, ed));
            }
        }
    }
    let series = |label: &str, points: Vec<(f64, f64)>| Series {
        label: label.into(),
        points,
    };
    let mut quality = vec![series("respaced", respaced)];
    if !ddim.is_empty() {
        quality.push(series("DDIM, eta = 0", ddim));
    }
    if !floor.is_empty() {
        quality.push(series("two data sets (floor)", floor));
    }
    Ok((quality, series("respaced chain's K", ks)))
}

/// The values drawn white and black: 0 and 255 for 8-bit images, else the data's range.
/// Completions drawn for each image by `--what inpainting` and `denoising`.
const COMPLETIONS_SHOWN: usize = 4;

/// The condition of `--what inpainting` or `denoising`: the given `--from-test`, `--mask` and
/// `--noisy-test`, or their defaults (8 images; the left half unknown; noise of the data's own
/// standard deviation, a signal-to-noise ratio of 1).
fn completion_task(
    given: &ConditionArgs,
    what: What,
    manifest: &diffusion_models::RunManifest,
    run: &diffusion_models::RunDir,
) -> Result<ConditionArgs, String> {
    let mut task = given.clone();
    task.from_test = Some(given.from_test.unwrap_or(8));
    match what {
        What::Inpainting => {
            task.noisy_test = None;
            task.mask = Some(given.mask.clone().unwrap_or_else(|| "left-half".into()));
        }
        _ => {
            task.mask = None;
            let noise = match given.noisy_test {
                Some(s) => s,
                None => {
                    let rows = heldout_rows(manifest, run, 1000).map_err(|e| e.to_string())?;
                    pooled_sd(&rows)
                }
            };
            task.noisy_test = Some(noise);
        }
    }
    Ok(task)
}

/// The standard deviation of all values together.
fn pooled_sd(values: &[f32]) -> f64 {
    let n = values.len().max(1) as f64;
    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
    (values
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / n)
        .sqrt()
}

fn pixel_range(manifest: &diffusion_models::RunManifest, data: &[f32]) -> (f32, f32) {
    let lo = data.iter().cloned().fold(f32::INFINITY, f32::min);
    let hi = data.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    if manifest.image.is_some() && lo >= 0.0 && hi <= 255.0 && hi > 16.0 {
        (0.0, 255.0)
    } else {
        (lo, hi)
    }
}
