//! The particle systems of resampled conditioning ([`Conditioning::resampled`]): weights,
//! systematic resampling, and the rows it picks.

use burn::tensor::Tensor;
use diffusion_data::Rng;
use rand::Rng as _;

use super::Conditioning;

/// The weights of particle systems of chains ([`Conditioning::resampled`]): all the chains one
/// system, or consecutive groups of them each a system of its own.
#[derive(Debug, Clone)]
pub(crate) struct Particles {
    log_w: Vec<f64>,
    group: usize,
}

impl Particles {
    /// `m` chains of equal weight, in systems of `group` chains (0: one system).
    pub(crate) fn new(m: usize, group: usize) -> Self {
        Self {
            log_w: vec![0.0; m],
            group: if group == 0 { m.max(1) } else { group },
        }
    }

    /// The systems of `given`'s chunk of `m` chains.
    pub(crate) fn of(given: &Conditioning, m: usize) -> Self {
        Self::new(m, given.group)
    }

    /// Multiplies the weights by a step's (`log_weight`, per chain); returns the chains to carry
    /// on with, by systematic resampling within each system whose effective sample size is
    /// under half its chains, or within every system when `last` is set (then its weights are
    /// equal again). `None` when no chain moves.
    pub(crate) fn reweigh(
        &mut self,
        log_weight: &[f32],
        last: bool,
        rng: &mut Rng,
    ) -> Option<Vec<usize>> {
        let m = self.log_w.len();
        let mut picks: Vec<usize> = (0..m).collect();
        let mut moved = false;
        let group = self.group;
        for (g, (w, l)) in self
            .log_w
            .chunks_mut(group)
            .zip(log_weight.chunks(group))
            .enumerate()
        {
            if let Some(p) = reweigh_system(w, l, last, rng) {
                for (k, i) in p.into_iter().enumerate() {
                    picks[g * group + k] = g * group + i;
                }
                moved = true;
            }
        }
        moved.then_some(picks)
    }
}

/// [`Particles::reweigh`] for one system's log-weights `log_w` (indices within it).
fn reweigh_system(
    log_w: &mut [f64],
    log_weight: &[f32],
    last: bool,
    rng: &mut Rng,
) -> Option<Vec<usize>> {
    for (w, &l) in log_w.iter_mut().zip(log_weight) {
        // a NaN weight (a kernel that broke) counts as zero
        *w += if l.is_nan() {
            f64::NEG_INFINITY
        } else {
            l as f64
        };
    }
    let top = log_w.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if !top.is_finite() {
        // every chain at weight zero: nothing to prefer, carry on as we are
        log_w.iter_mut().for_each(|w| *w = 0.0);
        return None;
    }
    let w: Vec<f64> = log_w.iter().map(|l| (l - top).exp()).collect();
    let (sum, sum2) = w.iter().fold((0.0, 0.0), |(a, b), v| (a + v, b + v * v));
    let m = w.len();
    if !last && sum * sum / sum2 >= 0.5 * m as f64 {
        return None;
    }
    let u: f64 = rng.random();
    let mut picks = Vec::with_capacity(m);
    let mut acc = w[0] / sum;
    let mut i = 0;
    for k in 0..m {
        let target = (k as f64 + u) / m as f64;
        while acc < target && i + 1 < m {
            i += 1;
            acc += w[i] / sum;
        }
        picks.push(i);
    }
    log_w.iter_mut().for_each(|w| *w = 0.0);
    Some(picks)
}

/// The rows `picks` of `x`.
pub(crate) fn pick_rows(x: Tensor<2>, picks: &[usize]) -> Tensor<2> {
    let device = x.device();
    let idx: Vec<i64> = picks.iter().map(|&i| i as i64).collect();
    let idx = Tensor::<1, burn::tensor::Int>::from_data(
        burn::tensor::TensorData::new(idx, [picks.len()]),
        &device,
    );
    x.select(0, idx)
}
