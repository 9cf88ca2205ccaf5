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
/// back in the order of `--from-test`.
pub fn draw_given(
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
