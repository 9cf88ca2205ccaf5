//! `diffusion sample`: draws from a trained run into a .csv or .npy file.

use diffusion_data::io;
use diffusion_models::data::streams;

use crate::args::SampleArgs;
use crate::common::{check_count, load_run, write_rows};

/// Runs `diffusion sample`.
pub fn cmd_sample(a: SampleArgs) -> Result<(), String> {
    check_count(a.n)?;
    io::check_extension(&a.out).map_err(|e| e.to_string())?;
    let (_, manifest, model, device) = load_run(&a.run, &a.backend)?;
    let bound = manifest.bound_of(&model).map_err(|e| e.to_string())?;
    let mut rng = diffusion_data::rng(a.seed, streams::SAMPLE);
    let data = bound.sample(
        &model.network,
        a.n,
        &mut rng,
        &device,
        diffusion_models::evaluate::SAMPLE_CHUNK_ROWS,
    );
    write_rows(&a.out, a.n, manifest.data_dim, data, "samples")
}
