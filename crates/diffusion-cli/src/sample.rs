//! `diffusion sample`: draws from a trained run into a .csv or .npy file, optionally
//! conditioned by known values and noisy observations (paper section 2.5).

use burn::tensor::Device;
use diffusion_data::{Array2, io};
use diffusion_models::data::streams;
use diffusion_models::evaluate::SAMPLE_CHUNK_ROWS;
use diffusion_models::sampling::Sampler;
use diffusion_models::{Conditioning, Diffusion, Network, ReverseModel, RunManifest};

use crate::args::SampleArgs;
use crate::common::{check_at_least_one, check_count, load_run, write_rows};

/// Runs `diffusion sample`.
pub fn cmd_sample(a: SampleArgs) -> Result<(), String> {
    check_count(a.n)?;
    check_at_least_one("--particles", a.particles)?;
    io::check_extension(&a.out).map_err(|e| e.to_string())?;
    let (run, manifest, model, device) = load_run(&a.run, &a.backend, a.weights)?;
    let bound = manifest.bound_of(&model).map_err(|e| e.to_string())?;
    let given = a
        .condition
        .resolve_for(&manifest, &run, bound.variable(), a.n, a.seed)?;
    let sampler = a.sampler.sampler()?;
    let mut rng = diffusion_data::rng(a.seed, streams::SAMPLE);
    let mut data = match &given {
        None => bound
            .sample_with(
                &model.network,
                &sampler,
                a.n,
                &mut rng,
                &device,
                manifest.chunk_rows(SAMPLE_CHUNK_ROWS),
            )
            .map_err(|e| e.to_string())?,
        Some(given) => draw_given(
            &bound,
            &sampler,
            given,
            (&manifest, &model, &device),
            a.n,
            &mut rng,
            a.particles,
            (a.condition.average.unwrap_or(1), &mut |_| Ok(())),
        )?,
    };
    manifest.to_data_units(&mut data);
    manifest.to_pixels(&mut data);
    match manifest.image {
        Some(shape) => {
            let array = Array2::new(a.n, manifest.data_dim, data).map_err(|e| e.to_string())?;
            io::write_images(&a.out, &array, shape).map_err(|e| e.to_string())?;
            eprintln!("wrote {} images of {shape} to {}", a.n, a.out.display());
            Ok(())
        }
        None => write_rows(&a.out, a.n, manifest.data_dim, data, "samples"),
    }
}

/// `n` samples of `bound`'s model multiplied by `given`, through `sampler`'s chain (the full
/// one, the respaced chain as a process of its own, or DDIM's), in the space the model
/// diffuses, `particles` chains at a time (256 for images); particle systems in groups come
/// back in the order of `--from-test`. With `average` K > 1, each sample is the mean of its
/// draws in K passes, one after another from `rng` (`each` sees every pass's draws first).
#[allow(clippy::too_many_arguments)] // the chain, its condition, and how many of it
pub fn draw_given(
    bound: &Diffusion,
    sampler: &Sampler,
    given: &Conditioning,
    run: (&RunManifest, &ReverseModel<Network>, &Device),
    n: usize,
    rng: &mut diffusion_data::Rng,
    particles: usize,
    (average, each): (usize, &mut EachPass<'_>),
) -> Result<Vec<f32>, String> {
    if average <= 1 {
        return draw_pass(bound, sampler, given, run, n, rng, particles);
    }
    let mut sum: Vec<f64> = Vec::new();
    for _ in 0..average {
        let drawn = draw_pass(bound, sampler, given, run, n, rng, particles)?;
        each(&drawn)?;
        sum.resize(drawn.len(), 0.0);
        sum.iter_mut()
            .zip(&drawn)
            .for_each(|(s, &v)| *s += v as f64);
    }
    Ok(mean_of_sums(&sum, average))
}

/// What sees each pass's draws of an averaged sample.
pub type EachPass<'a> = dyn FnMut(&[f32]) -> Result<(), String> + 'a;

/// The means `sum / count` as f32: exact sums of `count` equal f32 values (`count` under 2^29)
/// give that value back bit for bit, so known values stay as given.
pub fn mean_of_sums(sum: &[f64], count: usize) -> Vec<f32> {
    sum.iter().map(|&s| (s / count as f64) as f32).collect()
}

/// One pass of [`draw_given`]: `n` chains.
fn draw_pass(
    bound: &Diffusion,
    sampler: &Sampler,
    given: &Conditioning,
    (manifest, model, device): (&RunManifest, &ReverseModel<Network>, &Device),
    n: usize,
    rng: &mut diffusion_data::Rng,
    particles: usize,
) -> Result<Vec<f32>, String> {
    let drawn = bound
        .sample_given_with(
            &model.network,
            sampler,
            n,
            given,
            rng,
            device,
            manifest.chunk_rows(particles),
        )
        .map_err(|e| e.to_string())?;
    Ok(match given.particle_group() {
        Some(group) => crate::condition::ungroup(drawn, manifest.data_dim, group),
        None => drawn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sums of equal f32 values give each value back bit for bit (known values stay as given);
    /// other sums their mean, rounded once.
    #[test]
    fn means_of_equal_draws_are_the_draws() {
        let values = [0.1f32, -3.7e-5, 255.0, 1.0 / 3.0, f32::MIN_POSITIVE, 7.0e30];
        for count in [1usize, 2, 3, 7, 8, 1000] {
            let sums: Vec<f64> = values.iter().map(|&v| v as f64 * count as f64).collect();
            let means = mean_of_sums(&sums, count);
            for (m, v) in means.iter().zip(values) {
                assert_eq!(m.to_bits(), v.to_bits(), "{v} x {count}");
            }
        }
        assert_eq!(mean_of_sums(&[1.0 + 2.0 + 4.0], 3), vec![7.0f32 / 3.0]);
    }
}
