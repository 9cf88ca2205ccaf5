//! `diffusion evaluate-conditional`: conditioned samples of a run against the exact conditional
//! of its (generated) data.

use diffusion_models::conditional::{
    ConditionalEvaluation, ConditionalOptions, evaluate_conditional,
};

use crate::args::EvaluateConditionalArgs;
use crate::common::{check_at_least_one, check_count, load_run};

/// Runs `diffusion evaluate-conditional`.
pub fn cmd_evaluate_conditional(a: EvaluateConditionalArgs) -> Result<(), String> {
    check_count(a.n)?;
    check_at_least_one("--repeats", a.repeats)?;
    check_at_least_one("--particles", a.particles)?;
    if !a.condition.is_set() {
        return Err(
            "evaluate-conditional needs a condition: --known, --observe, their files, or \
             --from-test with --mask or --noisy-test"
                .into(),
        );
    }
    let (run, manifest, model, device) = load_run(&a.run, &a.backend, a.weights)?;
    if manifest.image.is_some() {
        return crate::complete::cmd_evaluate_images(&a, &run, &manifest, &model, &device);
    }
    if a.sampler.sampler()? != diffusion_models::sampling::Sampler::Ancestral {
        return Err("--sampler is for image runs here; generated data run the full chain".into());
    }
    let bound = manifest.bound_of(&model).map_err(|e| e.to_string())?;
    let given = a
        .condition
        .resolve_for(&manifest, &run, bound.variable(), a.n, a.seed)?
        .ok_or("evaluate-conditional needs a condition")?;
    let options = ConditionalOptions {
        n: a.n,
        repeats: a.repeats,
        particles: a.particles,
        seed: a.seed,
        model_slice: a.model_slice,
    };
    let eval = evaluate_conditional(&manifest, &model, &given, options, &device)
        .map_err(|e| e.to_string())?;
    if a.json {
        println!("{}", serde_json::to_string(&eval).expect("serialisable"));
    } else {
        print(&eval);
    }
    Ok(())
}

fn print(e: &ConditionalEvaluation) {
    let list = |v: &[f64]| {
        v.iter()
            .map(|f| format!("{f:.3}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let resampled = if e.resampled { ", resampled" } else { "" };
    let renoised = crate::condition::renoised_note(e.renoised);
    println!(
        "samples    = {} ({} r{resampled}{renoised})",
        e.samples, e.mode
    );
    if let (Some(c), Some(tv), Some(f), Some(p)) = (
        e.valid_consistent_fraction,
        e.total_variation,
        &e.phase_fractions,
        &e.exact_phases,
    ) {
        println!(
            "valid      = {c:.4} of the samples are valid sequences that agree with the known bits"
        );
        println!("phases     = {} (samples)", list(f));
        println!("exact      = {} (the true conditional)", list(p));
        println!("TV         = {tv:.4} (total-variation distance, invalid samples counted)");
    }
    if let (Some(ed), Some(floor), Some(m), Some(x)) = (
        e.energy_distance,
        e.energy_distance_floor,
        &e.sample_mean,
        &e.exact_mean,
    ) {
        let sets = e.repeats.unwrap_or(1);
        println!(
            "energy     = {ed:.5} ± {:.5} to exact posterior draws (mean of {sets} set(s))",
            e.energy_distance_stderr.unwrap_or(0.0)
        );
        println!(
            "floor      = {floor:.5} (sd {:.5}) between two exact sets, over {} pairs",
            e.energy_distance_floor_sd.unwrap_or(0.0),
            diffusion_models::conditional::FLOOR_PAIRS
        );
        println!(
            "ratio      = {:.2} ± {:.2} (1 for exact samples)",
            e.energy_ratio.unwrap_or(ed / floor),
            e.energy_ratio_stderr.unwrap_or(0.0)
        );
        println!("mean       = {} (samples), {} (exact)", list(m), list(x));
        if let (Some(s), Some(x)) = (&e.sample_sd, &e.exact_sd) {
            println!("sd         = {} (samples), {} (exact)", list(s), list(x));
        }
        if let Some(k) = e.model_slice_samples {
            match (
                e.model_slice_ratio,
                e.sampler_to_model_ratio,
                &e.model_slice_sd,
            ) {
                (Some(model), Some(sampler), Some(sd)) => {
                    println!(
                        "model      = {model:.2} (the model's own conditional, {k} unconditioned samples near the known values, against exact draws; sd {})",
                        list(sd)
                    );
                    println!(
                        "sampler    = {sampler:.2} (the samples against the model's own conditional)"
                    );
                }
                _ => println!("model      = no unconditioned sample fell near the known values"),
            }
        }
    }
}
