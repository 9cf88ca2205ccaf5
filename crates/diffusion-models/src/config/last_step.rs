//! The last reverse step of a Gaussian chain: the paper's edge step or DDPM's discretised
//! decoder.

use serde::{Deserialize, Serialize};

/// The last reverse step of a Gaussian chain ([`super::DiffusionConfig::decoder`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LastStep {
    /// The paper's fixed edge step, N(sqrt(1 - b_1) x_1, b_1 I).
    #[default]
    Edge,
    /// The network's kernel at t = 1, discretised to 8-bit bins.
    Discretized,
}

impl LastStep {
    /// The paper's edge step (the default, left out of a written config).
    pub(super) fn is_edge(&self) -> bool {
        *self == Self::Edge
    }
}
