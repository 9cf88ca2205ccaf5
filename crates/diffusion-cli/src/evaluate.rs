//! `diffusion evaluate`: the bound K in bits on a run's held-out data, with L_null and -H(data).

use diffusion_models::evaluate::{BoundEstimate, Evaluation, evaluate_with};

use crate::args::{BaselinesArgs, EvaluateArgs};
use crate::common::{check_at_least_one, default_eval_points, load_run};

/// Runs `diffusion evaluate`.
pub fn cmd_evaluate(a: EvaluateArgs) -> Result<(), String> {
    let (run, manifest, model, device) = load_run(&a.run, &a.backend, a.weights)?;
    let n =
        a.n.unwrap_or_else(|| default_eval_points(manifest.config.diffusion.steps));
    check_at_least_one("--n", n)?;
    let sampler = a.sampler.sampler()?;
    let estimate = match (a.t_draws, a.full_sum) {
        (Some(k), _) => {
            check_at_least_one("--t-draws", k)?;
            BoundEstimate::Stratified(k)
        }
        (None, true) => BoundEstimate::FullSum,
        (None, false) => BoundEstimate::default_for(&manifest),
    };
    let samples = a
        .samples
        .unwrap_or(if manifest.image.is_some() { 0 } else { 10_000 });
    let eval = evaluate_with(
        &manifest, &run, &model, &device, n, samples, a.seed, &sampler, estimate,
    )
    .map_err(|e| e.to_string())?;
    if a.json {
        println!("{}", serde_json::to_string(&eval).expect("serialisable"));
    } else {
        print_evaluation(&eval);
    }
    Ok(())
}

/// Prints an evaluation as a table.
pub fn print_evaluation(e: &Evaluation) {
    let chain = e
        .sampler
        .as_ref()
        .map(|s| format!(", {s}"))
        .unwrap_or_default();
    let estimate = match e.bound_estimate.as_deref() {
        Some(s) if s != "full sum" => format!("; {s}"),
        _ => String::new(),
    };
    println!(
        "K          = {:+.4} ± {:.4} bits/point  (n = {}, T = {}{chain}{estimate})",
        e.k_bits, e.k_stderr_bits, e.n, e.steps_t
    );
    println!(
        "K / d      = {:+.4} bits/dim  (d = {}{})",
        e.k_bits_per_dim,
        e.dim,
        if e.dequantized {
            "; a bound on the discrete data"
        } else {
            ""
        }
    );
    if let Some(nll) = e.nll_bits_per_dim {
        let histogram = e
            .histogram_bits_per_dim
            .map(|h| format!("  (independent histograms: {h:.4})"))
            .unwrap_or_default();
        println!(
            "NLL        = {nll:.4} ± {:.4} bits/dim of the discrete data{histogram}",
            e.nll_stderr_bits_per_dim.unwrap_or(0.0)
        );
    }
    println!("L_null     = {:+.4} bits/point", e.l_null_bits);
    println!("K - L_null = {:+.4} bits/point", e.k_minus_l_null_bits);
    if let (Some(k), Some(l), Some(j)) = (
        e.k_bits_standardized,
        e.l_null_bits_standardized,
        e.log_jacobian_bits,
    ) {
        println!(
            "standardised: K = {k:+.4}, L_null = {l:+.4} bits/point; the change of units adds {j:+.4}"
        );
    }
    match (e.neg_data_entropy_bits, e.gap_bits) {
        (Some(h), Some(gap)) => {
            println!(
                "-H(data)   = {:+.4} ± {:.4} bits/point (the ceiling for K)",
                h,
                e.neg_data_entropy_stderr_bits.unwrap_or(0.0)
            );
            println!("gap        = {gap:+.4} bits/point (-H(data) - K)");
        }
        _ => println!("-H(data)   = unknown (data from a file)"),
    }
    if let (Some(ed), Some(n)) = (e.energy_distance, e.samples) {
        match e.energy_distance_floor {
            Some(floor) => println!(
                "energy     = {ed:.4} between {n} samples and fresh data (two data sets: {floor:.4})"
            ),
            None => println!("energy     = {ed:.4} between {n} samples and held-out data"),
        }
    }
    if let (Some(v), Some(p), Some(n)) = (e.valid_fraction, &e.phase_fractions, e.samples) {
        let phases: Vec<String> = p.iter().map(|f| format!("{:.3}", f)).collect();
        println!(
            "valid      = {:.4} of {n} samples; phases {}",
            v,
            phases.join(" ")
        );
    }
}

/// Runs `diffusion baselines`.
pub fn cmd_baselines(a: BaselinesArgs) -> Result<(), String> {
    let run = diffusion_models::RunDir::open(&a.run).map_err(|e| e.to_string())?;
    let manifest = run.manifest().map_err(|e| e.to_string())?;
    let b = diffusion_models::baselines::baselines(&manifest, &run, a.components, a.iterations)
        .map_err(|e| e.to_string())?;
    if a.json {
        println!("{}", serde_json::to_string(&b).expect("serialisable"));
        return Ok(());
    }
    println!(
        "fitted on {} training rows, scored on {} held-out rows (d = {})",
        b.train_rows, b.heldout_rows, b.dim
    );
    for x in &b.baselines {
        println!(
            "{:+.4} ± {:.4} bits/point ({:+.4} bits/dim)  {}",
            x.bits, x.stderr_bits, x.bits_per_dim, x.name
        );
    }
    Ok(())
}
