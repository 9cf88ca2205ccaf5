//! # diffusion-data
//!
//! Seeded, streaming data generators for diffusion experiments and plain file I/O:
//!
//! - [`SwissRoll`]: the 2-D spiral of SPEC section 3, normalised to unit mean per-coordinate
//!   variance with exact (analytic) constants, so batches can be streamed without materialising a
//!   data set; with its exact log-density and the data entropy `H(data)` by quadrature.
//! - [`Heartbeat`]: the binary heartbeat sequences of the paper, with their exact entropy.
//! - [`io`]: reading and writing `[rows, cols]` arrays as CSV or NumPy `.npy`;
//! - [`split`]: the seeded held-out split of a data file.
//!
//! ```
//! use diffusion_data::SwissRoll;
//!
//! let roll = SwissRoll::new(0.5).unwrap();
//! let mut stream = roll.stream(7);
//! let batch = stream.next_batch(1000); // 1000 points, row-major [x0, y0, x1, y1, ...]
//! assert_eq!(batch.len(), 2000);
//! ```

#![warn(missing_docs)]

pub mod array;
pub mod baselines;
pub mod heartbeat;
pub mod idx;
pub mod io;
pub mod png_folder;
mod split;
pub mod standardize;
pub mod swiss_roll;

pub use heartbeat::{Heartbeat, HeartbeatStream};
pub use io::{Array2, DataError, ImageShape};
pub use split::split;
pub use standardize::{Scaling, Standardization};
pub use swiss_roll::{RollPosterior, SwissRoll, SwissRollStream};

/// A seeded random generator, the same on every platform (ChaCha8).
pub type Rng = rand_chacha::ChaCha8Rng;

/// The generator for `seed` and `stream` (distinct streams of one seed are independent).
pub fn rng(seed: u64, stream: u64) -> Rng {
    use rand::SeedableRng;
    let mut r = Rng::seed_from_u64(seed);
    r.set_stream(stream);
    r
}
