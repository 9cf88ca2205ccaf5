//! `diffusion data`: the built-in data sets written to a .csv or .npy file.

use diffusion_data::{Heartbeat, SwissRoll, io};

use crate::args::DataCommand;
use crate::common::{check_count, write_rows};

/// Runs `diffusion data ...`.
pub fn cmd_data(command: DataCommand) -> Result<(), String> {
    match command {
        DataCommand::SwissRoll {
            n,
            out,
            seed,
            noise,
        } => {
            check_count(n)?;
            io::check_extension(&out).map_err(|e| e.to_string())?;
            let roll = SwissRoll::new(noise).map_err(|e| e.to_string())?;
            let data = roll.stream(seed).next_batch(n);
            write_rows(&out, n, 2, data, "Swiss-roll points")
        }
        DataCommand::Heartbeat {
            n,
            out,
            seed,
            length,
            period,
        } => {
            check_count(n)?;
            io::check_extension(&out).map_err(|e| e.to_string())?;
            let beat = Heartbeat::new(length, period).map_err(|e| e.to_string())?;
            let data = beat.stream_with(diffusion_data::rng(seed, 0)).next_batch(n);
            write_rows(&out, n, length, data, "heartbeat sequences")
        }
    }
}
