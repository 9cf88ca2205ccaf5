//! Where a run's x_0 come from ([`TrainingData`]), and the independent random streams of one
//! seed ([`streams`]).

use diffusion_data::{
    Array2, DataError, Heartbeat, HeartbeatStream, Rng, Standardization, SwissRoll, SwissRollStream,
};
use rand::Rng as _;

use crate::config::DataConfig;

/// Where training batches come from.
#[derive(Debug, Clone)]
pub enum TrainingData {
    /// Fresh Swiss-roll points every batch.
    SwissRoll(SwissRollStream),
    /// Fresh heartbeat sequences every batch.
    Heartbeat(HeartbeatStream),
    /// Rows drawn uniformly (with replacement) from a fixed set, in the data's own units, and
    /// then dequantised and standardised when the run says so.
    Points {
        /// The training rows.
        points: Array2,
        /// What is done to each batch (none for binomial runs).
        transform: Option<Standardization>,
        /// The row sampler (and the dequantisation noise).
        rng: Rng,
    },
}

impl TrainingData {
    /// The generator stream of a data config, drawing from `rng`, with the data dimension;
    /// `None` for file data (its rows come from the file).
    pub fn generator(data: &DataConfig, rng: Rng) -> Result<Option<(Self, usize)>, DataError> {
        Ok(match data {
            DataConfig::SwissRoll { noise } => {
                Some((Self::SwissRoll(SwissRoll::new(*noise)?.stream_with(rng)), 2))
            }
            DataConfig::Heartbeat { length, period } => Some((
                Self::Heartbeat(Heartbeat::new(*length, *period)?.stream_with(rng)),
                *length,
            )),
            DataConfig::File { .. } => None,
        })
    }

    /// The Swiss-roll stream of a run seed.
    pub fn swiss_roll(roll: SwissRoll, seed: u64) -> Self {
        Self::SwissRoll(roll.stream_with(diffusion_data::rng(seed, streams::TRAIN_DATA)))
    }

    /// The heartbeat stream of a run seed.
    pub fn heartbeat(beat: Heartbeat, seed: u64) -> Self {
        Self::Heartbeat(beat.stream_with(diffusion_data::rng(seed, streams::TRAIN_DATA)))
    }

    /// Row sampling from `points` under a run seed, each batch put through `transform`.
    pub fn points(points: Array2, transform: Option<Standardization>, seed: u64) -> Self {
        Self::Points {
            points,
            transform: transform.filter(|t| !t.is_identity()),
            rng: diffusion_data::rng(seed, streams::TRAIN_DATA),
        }
    }

    /// The generator that draws the batches (its position is the stream's state).
    pub fn rng_mut(&mut self) -> &mut Rng {
        match self {
            Self::SwissRoll(s) => s.rng_mut(),
            Self::Heartbeat(s) => s.rng_mut(),
            Self::Points { rng, .. } => rng,
        }
    }

    /// The next `n` points, row-major.
    pub fn next_batch(&mut self, n: usize) -> Vec<f32> {
        match self {
            Self::SwissRoll(s) => s.next_batch(n),
            Self::Heartbeat(s) => s.next_batch(n),
            Self::Points {
                points,
                transform,
                rng,
            } => {
                let mut out = Vec::with_capacity(n * points.cols);
                for _ in 0..n {
                    let i = rng.random_range(0..points.rows);
                    out.extend_from_slice(points.row(i));
                }
                if let Some(t) = transform {
                    t.apply_with(&mut out, rng);
                }
                out
            }
        }
    }
}

/// The independent random streams of one seed.
pub mod streams {
    /// Training batches.
    pub const TRAIN_DATA: u64 = 0;
    /// Held-out points (generator data) and the held-out split (file data).
    pub const HELDOUT: u64 = 1;
    /// Steps t and noise during training.
    pub const TRAIN_NOISE: u64 = 2;
    /// Noise of the full-sum evaluation.
    pub const EVAL_NOISE: u64 = 3;
    /// The reverse chain when sampling.
    pub const SAMPLE: u64 = 4;
    /// The dequantisation noise of held-out rows (file data the run dequantises).
    pub const DEQUANTIZE: u64 = 8;
    /// Fresh data for the sample metrics, and a second set for their noise floor.
    pub const METRIC_A: u64 = 6;
    /// See [`METRIC_A`].
    pub const METRIC_B: u64 = 7;
    /// The noise of observations made for conditioning (noisy held-out images).
    pub const CONDITION: u64 = 9;
}
