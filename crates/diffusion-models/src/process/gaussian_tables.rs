//! The per-step coefficients of a Gaussian run on a device ([`GaussianTables`]) and the reverse
//! kernel they form from the network's output.

use burn::tensor::{Device, Tensor};
use diffusion_core::decoder::OPEN_END;
use diffusion_core::parametrization::COEFFICIENTS;
use diffusion_core::{GaussianDiffusion, ReverseParametrization, StepCoefficients};

use super::respaced::Respaced;
use super::{Decoder, GaussianBound, tensor2};

/// Columns of [`GaussianTables`]: the parametrization's coefficients, b~_t and ln b~_t, then
/// sqrt(abar_t), sqrt(1 - abar_t), c_0 and c_t (the posterior mean's weights), how far the
/// clip range opens at the step, and the map [A, B, C, D] of a respaced chain's kernel
/// ([`Respaced::mapped_from`]; the identity [1, 0, 1, 0] elsewhere).
const COLUMNS: usize = COEFFICIENTS + 11;

/// The per-step coefficients of a run on one device, one row per step: row t holds step t's
/// values, gathered for a batch with one `select`. At t = 1 the posterior is a point mass: the
/// variance columns hold b~_2 there, as improved diffusion clips them (the decoder's kernel
/// interpolates between b~_2 and b_1); row 0, which nothing uses, repeats row 1. With a decoder
/// the clip range is open at t = 1: there x̂_0 is the decoder's mean, which must be free to
/// leave the range for the open bins of the lowest and highest levels (clipped, a background
/// pixel could not have more than Φ(half a bin / σ_1) of its probability), and x̂_0 scales the
/// noise error by sqrt(b_1) only.
#[derive(Debug, Clone)]
pub struct GaussianTables {
    /// `[T + 1, COLUMNS]`: the parametrization's coefficients, b~_t and ln b~_t, then the
    /// columns of [`Posterior`], then the map [A, B, C, D]; on a mapped respaced chain the
    /// coefficient and posterior columns of row k are the original chain's at s_k (its b~
    /// columns its own).
    pub(super) table: Tensor<2>,
    /// [`ClipRange`]'s ends as `[1, d]` tensors.
    clip: Option<(Tensor<2>, Tensor<2>)>,
    /// [`Respaced::network_steps`], indexed by t (entry 0 unused).
    pub(super) network_steps: Option<Vec<usize>>,
    /// [`Respaced::mapped_from`]'s map of each step's kernel, indexed by t (`None` where the
    /// kernel is the original one); `None` for other chains.
    maps: Option<Vec<Option<[f64; 4]>>>,
    /// [`GaussianBound::decoder`].
    pub(super) decoder: Option<Decoder>,
}

/// What re-forming the mean from a clipped x̂_0 needs of each row's step, `[n, 1]` each.
#[derive(Debug, Clone)]
pub struct Posterior {
    sqrt_abar: Tensor<2>,
    sqrt_one_minus_abar: Tensor<2>,
    c0: Tensor<2>,
    ct: Tensor<2>,
    /// How far the clip range opens on either side (0, or [`OPEN_END`] at a decoder's t = 1).
    slack: Tensor<2>,
}

impl GaussianTables {
    /// The tables of `bound`'s chain, uploaded once.
    pub fn new(bound: &GaussianBound, device: &Device) -> Self {
        let diffusion = &bound.diffusion;
        let steps = diffusion.steps();
        let maps = bound.respaced.as_ref().and_then(|r| r.maps(diffusion));
        let mut values = Vec::with_capacity((steps + 1) * COLUMNS);
        for k in 0..=steps {
            let k = k.max(1);
            // the chain and step whose kernel the network's output forms: the original chain
            // at s_k for a mapped respaced chain, else this one at k
            let (source, t) = match bound.respaced.as_ref() {
                Some(Respaced {
                    network_steps,
                    mapped_from: Some(original),
                }) => (original, network_steps[k - 1]),
                _ => (diffusion, k),
            };
            let (c0, ct, _) = source.posterior_coefficients(t);
            let clamped = |g: &GaussianDiffusion, t: usize| t.clamp(2, g.steps().max(2));
            let (_, _, source_var) = source.posterior_coefficients(clamped(source, t));
            let abar = source.alpha_bar(t);
            let mut coefficients = StepCoefficients::host_values(source, t);
            coefficients[4] = source_var.ln() as f32;
            values.extend_from_slice(&coefficients);
            // the posterior variance of this chain, the bound's q
            let (_, _, var) = diffusion.posterior_coefficients(clamped(diffusion, k));
            values.extend_from_slice(&[var as f32, var.ln() as f32]);
            let slack = if t == 1 && bound.decoder.is_some() {
                OPEN_END
            } else {
                0.0
            };
            values.extend_from_slice(&[
                abar.sqrt() as f32,
                (1.0 - abar).sqrt() as f32,
                c0 as f32,
                ct as f32,
                slack,
            ]);
            let map = maps
                .as_ref()
                .and_then(|m| m[k])
                .unwrap_or([1.0, 0.0, 1.0, 0.0]);
            values.extend(map.map(|v| v as f32));
        }
        let row = |v: &[f32]| tensor2(v.to_vec(), 1, v.len(), device);
        Self {
            table: tensor2(values, steps + 1, COLUMNS, device),
            clip: bound.clip.as_ref().map(|c| (row(&c.low), row(&c.high))),
            network_steps: bound.respaced.as_ref().map(|r| {
                std::iter::once(0)
                    .chain(r.network_steps.iter().copied())
                    .collect()
            }),
            maps,
            decoder: bound.decoder.clone(),
        }
    }

    /// The step the network is called at for the chain's step `t`.
    pub fn network_step(&self, t: usize) -> usize {
        self.network_steps.as_ref().map_or(t, |s| s[t])
    }

    /// The map of a mapped respaced chain's kernel at step `t`, `None` where it is the
    /// original kernel.
    pub(super) fn map(&self, t: usize) -> Option<[f64; 4]> {
        self.maps.as_ref().and_then(|m| m[t])
    }

    /// The map columns [A, B, C, D] of gathered rows (`[n, COLUMNS]`), for a mapped respaced
    /// chain.
    pub(super) fn map_columns(&self, rows: &Tensor<2>) -> Option<[Tensor<2>; 4]> {
        let n = rows.dims()[0];
        self.maps.as_ref().map(|_| {
            std::array::from_fn(|i| {
                let i = COLUMNS - 4 + i;
                rows.clone().slice([0..n, i..i + 1])
            })
        })
    }

    /// The coefficients, posterior variance and its log of gathered rows (`[n, COLUMNS]`), and
    /// the posterior mean's weights.
    pub(super) fn columns(rows: Tensor<2>) -> (StepCoefficients, Tensor<2>, Tensor<2>, Posterior) {
        let n = rows.dims()[0];
        let [a, b, c, e, v, lb, var, log_var, sa, so, c0, ct, slack] =
            std::array::from_fn(|i| rows.clone().slice([0..n, i..i + 1]));
        (
            StepCoefficients {
                sqrt_alpha: a,
                sqrt_beta: b,
                logit_beta: c,
                eps_weight: e,
                log_posterior_variance: v,
                log_beta: lb,
            },
            var,
            log_var,
            Posterior {
                sqrt_abar: sa,
                sqrt_one_minus_abar: so,
                c0,
                ct,
                slack,
            },
        )
    }

    /// Step t's coefficients as `[1, 1]` tensors, broadcast over the rows.
    pub fn at(&self, t: usize) -> StepCoefficients {
        Self::columns(self.table.clone().narrow(0, t, 1)).0
    }

    /// The reverse kernel's mean and log-variance from the network's output `z` at rows `x_t`
    /// whose steps' columns are `coefficients` and `posterior`: the parametrization's, with the
    /// mean re-formed from the clipped x̂_0 when the tables have a clip range.
    pub(super) fn kernel(
        &self,
        parametrization: ReverseParametrization,
        z: Tensor<2>,
        x_t: Tensor<2>,
        coefficients: &StepCoefficients,
        posterior: &Posterior,
    ) -> (Tensor<2>, Tensor<2>) {
        let Some((low, high)) = self
            .clip
            .as_ref()
            .filter(|_| parametrization.predicts_noise())
        else {
            return parametrization.mean_log_variance(z, x_t, coefficients);
        };
        let [n, two_d] = z.dims();
        let eps = z.clone().slice([0..n, 0..two_d / 2]);
        let log_var =
            parametrization.noise_log_variance(z.slice([0..n, two_d / 2..two_d]), coefficients);
        let x0 = (x_t.clone() - eps * posterior.sqrt_one_minus_abar.clone())
            / posterior.sqrt_abar.clone();
        let slack = posterior.slack.clone();
        let x0 = x0
            .max_pair(low.clone() - slack.clone())
            .min_pair(high.clone() + slack);
        let mean = x0 * posterior.c0.clone() + x_t * posterior.ct.clone();
        (mean, log_var)
    }
}
