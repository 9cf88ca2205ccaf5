//! `diffusion evaluate`: the bound K in bits on a run's held-out data, with L_null and -H(data).

use std::path::Path;

use diffusion_models::evaluate::{
    BoundEstimate, BoundTerms, Evaluation, bound_terms, evaluate_with, term_steps,
};

use crate::args::{BaselinesArgs, EvaluateArgs, TermsArgs};
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
        if e.dequantized || e.nll_bits_per_dim.is_some() {
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
    if let Some(nats) = e.k_nats {
        println!("K          = {nats:+.4} nats/point");
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

/// Steps per end of the chain that `diffusion terms` shows by default.
const TERM_STEPS_PER_END: usize = 16;

/// Runs `diffusion terms`.
pub fn cmd_terms(a: TermsArgs) -> Result<(), String> {
    let (run, manifest, model, device) = load_run(&a.run, &a.backend, a.weights)?;
    check_at_least_one("--n", a.n)?;
    let steps_t = manifest.config.diffusion.steps;
    let first = manifest.bound().map_err(|e| e.to_string())?.first_step();
    let decoded = first == 1;
    let steps = terms_steps(a.steps, first, steps_t)?;
    let terms = bound_terms(&manifest, &run, &model, &device, a.n, &steps, a.seed)
        .map_err(|e| e.to_string())?;
    if let Some(path) = &a.out {
        write_terms_csv(path, &terms)?;
    }
    if a.json {
        println!("{}", serde_json::to_string(&terms).expect("serialisable"));
        return Ok(());
    }
    print_terms(&terms, decoded, first);
    Ok(())
}

/// The steps of `--steps` (each in `first..=steps_t`), sorted and without repeats, or by
/// default [`TERM_STEPS_PER_END`] at each end of the chain.
fn terms_steps(
    steps: Option<Vec<usize>>,
    first: usize,
    steps_t: usize,
) -> Result<Vec<usize>, String> {
    Ok(match steps {
        Some(mut steps) => {
            if let Some(t) = steps.iter().find(|&&t| !(first..=steps_t).contains(&t)) {
                return Err(format!(
                    "--steps: step {t} is outside {first}..={steps_t} (the bound's terms of a chain of T = {steps_t})"
                ));
            }
            steps.sort_unstable();
            steps.dedup();
            steps
        }
        None => term_steps(first, steps_t, TERM_STEPS_PER_END),
    })
}

/// Writes the terms to `path` as CSV: `t,kl_bits,kl_stderr_bits,kl_bits_per_dim`.
fn write_terms_csv(path: &Path, terms: &BoundTerms) -> Result<(), String> {
    let d = terms.dim as f64;
    let mut csv = String::from("t,kl_bits,kl_stderr_bits,kl_bits_per_dim\n");
    for s in &terms.terms {
        csv += &format!(
            "{},{},{},{}\n",
            s.t,
            s.kl_bits,
            s.kl_stderr_bits,
            s.kl_bits / d
        );
    }
    std::fs::write(path, csv).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Prints the terms as a table, then K as their sum (`decoded`: the step t = 1 is the
/// decoder's; `first`: the first step of the sum).
fn print_terms(terms: &BoundTerms, decoded: bool, first: usize) {
    let d = terms.dim as f64;
    println!(
        "KL(q(x_(t-1) | x_t, x_0) || p(x_(t-1) | x_t)) in bits{}, mean over {} held-out points (T = {}, d = {})",
        if decoded {
            " (at t = 1: -log2 of the decoder's probability of x_0)"
        } else {
            ""
        },
        terms.n,
        terms.steps_t,
        terms.dim
    );
    println!(
        "{:>6}  {:>12}  {:>10}  {:>10}",
        "t", "bits/point", "± s.e.", "bits/dim"
    );
    for s in &terms.terms {
        println!(
            "{:>6}  {:>12.4}  {:>10.4}  {:>10.5}",
            s.t,
            s.kl_bits,
            s.kl_stderr_bits,
            s.kl_bits / d
        );
    }
    println!(
        "K = {:+.4} bits/point ({}) - the sum of the terms over t = {first}..T{}",
        terms.constant_bits,
        if decoded {
            "minus the prior's KL"
        } else {
            "the entropy terms and the edge step"
        },
        if terms.log_jacobian_bits != 0.0 {
            format!(
                ", {:+.4} more in the data's own units",
                terms.log_jacobian_bits
            )
        } else {
            String::new()
        }
    );
}
