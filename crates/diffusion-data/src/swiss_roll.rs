//! The Swiss roll (SPEC section 3): `u ~ U(0, 1)`, `s = 1.5 pi (1 + 2u)`, the point
//! `(s cos s, s sin s)` plus isotropic Gaussian noise, then centred and divided by one constant so
//! that the mean per-coordinate variance is 1.

use rand::Rng as _;
use rand_distr::StandardNormal;
use std::f64::consts::PI;

use crate::{DataError, Rng};

/// The Swiss-roll distribution at a given noise level (in the spiral's raw units).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SwissRoll {
    noise: f64,
    mean: [f64; 2],
    scale: f64,
}

const S_LO: f64 = 1.5 * PI;
const S_HI: f64 = 4.5 * PI;

impl SwissRoll {
    /// The distribution with isotropic noise of standard deviation `noise` (> 0; the
    /// presentation's default is 0.5).
    pub fn new(noise: f64) -> Result<Self, DataError> {
        if !(noise.is_finite() && noise > 0.0) {
            return Err(DataError::Invalid(format!(
                "Swiss-roll noise must be finite and > 0, got {noise}"
            )));
        }
        // Exact moments of s uniform on [1.5 pi, 4.5 pi] (length 3 pi):
        // E[s cos s] = [s sin s + cos s] / 3pi = 2,  E[s sin s] = [sin s - s cos s] / 3pi = 2/(3 pi),
        // E[s^2] = (S_HI^3 - S_LO^3) / (9 pi).
        let len = S_HI - S_LO;
        let mx = ((S_HI * S_HI.sin() + S_HI.cos()) - (S_LO * S_LO.sin() + S_LO.cos())) / len;
        let my = ((S_HI.sin() - S_HI * S_HI.cos()) - (S_LO.sin() - S_LO * S_LO.cos())) / len;
        let es2 = (S_HI.powi(3) - S_LO.powi(3)) / (3.0 * len);
        let var = (es2 - mx * mx - my * my) / 2.0 + noise * noise;
        Ok(Self {
            noise,
            mean: [mx, my],
            scale: var.sqrt(),
        })
    }

    /// The noise level in raw units.
    pub fn noise(&self) -> f64 {
        self.noise
    }

    /// The raw mean that is subtracted.
    pub fn raw_mean(&self) -> [f64; 2] {
        self.mean
    }

    /// The constant the centred points are divided by.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// A seeded stream of points.
    pub fn stream(&self, seed: u64) -> SwissRollStream {
        self.stream_with(crate::rng(seed, 0))
    }

    /// A stream drawing from a given generator.
    pub fn stream_with(&self, rng: Rng) -> SwissRollStream {
        SwissRollStream { roll: *self, rng }
    }

    /// One normalised point.
    pub fn sample_one(&self, rng: &mut Rng) -> [f64; 2] {
        let u: f64 = rng.random();
        let s = S_LO + (S_HI - S_LO) * u;
        let nx: f64 = rng.sample(StandardNormal);
        let ny: f64 = rng.sample(StandardNormal);
        [
            (s * s.cos() + self.noise * nx - self.mean[0]) / self.scale,
            (s * s.sin() + self.noise * ny - self.mean[1]) / self.scale,
        ]
    }

    /// Number of quadrature nodes over s for the log-density: the node spacing along the
    /// spiral (arc length up to 3 pi x 4.5 pi per unit of u) is kept under a tenth of the noise,
    /// where the midpoint rule's error on this smooth Gaussian integrand is far below 1e-6 bits.
    pub fn quadrature_nodes(&self) -> usize {
        let arc = (S_HI - S_LO) * S_HI;
        ((10.0 * arc / self.noise).ceil() as usize).max(2000)
    }

    /// The exact log-density (nats) of normalised points (row-major pairs), by the midpoint
    /// rule over s: p(x) = E_s N(x; (c(s) - m)/k, (noise/k)^2 I).
    pub fn log_density(&self, points: &[f64]) -> Vec<f64> {
        let q = self.quadrature_nodes();
        let centres = self.centres();
        let sigma = self.noise / self.scale;
        let inv2v = 1.0 / (2.0 * sigma * sigma);
        let log_norm = -(2.0 * PI * sigma * sigma).ln() - (q as f64).ln();
        points
            .chunks_exact(2)
            .map(|p| {
                let d2: Vec<f64> = centres
                    .iter()
                    .map(|c| -((p[0] - c[0]).powi(2) + (p[1] - c[1]).powi(2)) * inv2v)
                    .collect();
                let m = d2.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                m + d2.iter().map(|v| (v - m).exp()).sum::<f64>().ln() + log_norm
            })
            .collect()
    }

    /// The data entropy H(data) in bits, by Monte Carlo over `n` fresh points (seeded) and
    /// quadrature over s; returns (H, standard error). -H(data) is the ceiling for the bound K.
    pub fn entropy_bits(&self, n: usize, seed: u64) -> (f64, f64) {
        let pts = self.stream_with(crate::rng(seed, 0xE27)).next_batch_f64(n);
        let lp: Vec<f64> = self
            .log_density(&pts)
            .into_iter()
            .map(|v| -v / std::f64::consts::LN_2)
            .collect();
        let n = lp.len() as f64;
        let mean = lp.iter().sum::<f64>() / n;
        let var = lp.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, (var / n).sqrt())
    }
}

impl SwissRoll {
    /// The quadrature nodes over s as normalised spiral centres (c(s) − m) / k.
    fn centres(&self) -> Vec<[f64; 2]> {
        let q = self.quadrature_nodes();
        (0..q)
            .map(|i| {
                let s = S_LO + (S_HI - S_LO) * (i as f64 + 0.5) / q as f64;
                [
                    (s * s.cos() - self.mean[0]) / self.scale,
                    (s * s.sin() - self.mean[1]) / self.scale,
                ]
            })
            .collect()
    }

    /// The exact posterior p(x | observations) ∝ p_data(x) Π_i r_i(x_i) of a normalised point
    /// given, per coordinate, nothing (`None`), a known value (`Some((v, 0.0))`: the conditional
    /// of the other coordinate, inpainting) or a noisy observation `Some((y, s))` with
    /// r_i = N(y, s²) (denoising). Computed by the same quadrature over s as the log-density:
    /// a mixture over the nodes of products of Gaussians.
    pub fn posterior(
        &self,
        observations: [Option<(f64, f64)>; 2],
    ) -> Result<RollPosterior, DataError> {
        for (i, o) in observations.iter().enumerate() {
            if let Some((y, s)) = *o
                && !(y.is_finite() && s.is_finite() && s >= 0.0)
            {
                return Err(DataError::Invalid(format!(
                    "observation ({y}, noise {s}) of coordinate {i}: both must be finite, noise >= 0"
                )));
            }
        }
        let sigma2 = (self.noise / self.scale).powi(2);
        let centres = self.centres();
        // log weight of a node: Π_i N(y_i; c_i, sigma² + s_i²) over the observed coordinates
        let log_w: Vec<f64> = centres
            .iter()
            .map(|c| {
                (0..2)
                    .filter_map(|i| {
                        observations[i].map(|(y, s)| log_normal(y, c[i], sigma2 + s * s))
                    })
                    .sum()
            })
            .collect();
        let top = log_w.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = log_w.iter().map(|l| (l - top).exp()).collect();
        let total: f64 = w.iter().sum();
        if !(total.is_finite() && total > 0.0) {
            return Err(DataError::Invalid(
                "the observation has no weight under the Swiss roll".into(),
            ));
        }
        let mut cdf = Vec::with_capacity(w.len());
        let mut acc = 0.0;
        for v in &w {
            acc += v / total;
            cdf.push(acc);
        }
        // given the node, each coordinate is Gaussian: its mean and variance
        let kernels: Vec<[(f64, f64); 2]> = centres
            .iter()
            .map(|c| {
                [0, 1].map(|i| match observations[i] {
                    None => (c[i], sigma2),
                    Some((y, 0.0)) => (y, 0.0),
                    Some((y, s)) => {
                        let s2 = s * s;
                        (
                            (c[i] * s2 + y * sigma2) / (sigma2 + s2),
                            sigma2 * s2 / (sigma2 + s2),
                        )
                    }
                })
            })
            .collect();
        Ok(RollPosterior {
            observations,
            weights: w.into_iter().map(|v| v / total).collect(),
            cdf,
            kernels,
        })
    }
}

fn log_normal(x: f64, mean: f64, var: f64) -> f64 {
    -0.5 * ((x - mean).powi(2) / var + (2.0 * PI * var).ln())
}

/// The exact posterior of a Swiss-roll point given observations of its coordinates
/// ([`SwissRoll::posterior`]).
#[derive(Debug, Clone)]
pub struct RollPosterior {
    observations: [Option<(f64, f64)>; 2],
    weights: Vec<f64>,
    cdf: Vec<f64>,
    kernels: Vec<[(f64, f64); 2]>,
}

impl RollPosterior {
    /// The coordinates that are not known exactly (the ones the density is over).
    pub fn free(&self) -> Vec<usize> {
        (0..2)
            .filter(|&i| !matches!(self.observations[i], Some((_, s)) if s == 0.0))
            .collect()
    }

    /// `n` exact draws, row-major `[n, 2]` (known coordinates at their values).
    pub fn sample(&self, n: usize, rng: &mut Rng) -> Vec<f64> {
        let mut out = Vec::with_capacity(2 * n);
        for _ in 0..n {
            let u: f64 = rng.random();
            let node = self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1);
            for (m, v) in self.kernels[node] {
                let z: f64 = rng.sample(StandardNormal);
                out.push(m + v.sqrt() * z);
            }
        }
        out
    }

    /// The posterior mean.
    pub fn mean(&self) -> [f64; 2] {
        let mut m = [0.0; 2];
        for (w, k) in self.weights.iter().zip(&self.kernels) {
            m[0] += w * k[0].0;
            m[1] += w * k[1].0;
        }
        m
    }

    /// The log-density (nats) of the free coordinates ([`RollPosterior::free`]) at points
    /// (row-major pairs; the known coordinates' entries are ignored).
    pub fn log_density(&self, points: &[f64]) -> Vec<f64> {
        let free = self.free();
        points
            .chunks_exact(2)
            .map(|p| {
                let terms: Vec<f64> = self
                    .weights
                    .iter()
                    .zip(&self.kernels)
                    .map(|(w, k)| {
                        w.ln()
                            + free
                                .iter()
                                .map(|&i| log_normal(p[i], k[i].0, k[i].1))
                                .sum::<f64>()
                    })
                    .collect();
                let top = terms.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                top + terms.iter().map(|t| (t - top).exp()).sum::<f64>().ln()
            })
            .collect()
    }
}

/// A seeded stream of Swiss-roll points.
#[derive(Debug, Clone)]
pub struct SwissRollStream {
    roll: SwissRoll,
    rng: Rng,
}

impl SwissRollStream {
    /// The stream's generator: its position (`get_word_pos`/`set_word_pos`) is the stream's
    /// whole state, which is what a checkpoint saves and a resumed run restores.
    pub fn rng_mut(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// The next `n` points as f32, row-major `[n, 2]`.
    pub fn next_batch(&mut self, n: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(2 * n);
        for _ in 0..n {
            let p = self.roll.sample_one(&mut self.rng);
            out.push(p[0] as f32);
            out.push(p[1] as f32);
        }
        out
    }

    /// The next `n` points in f64, row-major `[n, 2]`.
    pub fn next_batch_f64(&mut self, n: usize) -> Vec<f64> {
        let mut out = Vec::with_capacity(2 * n);
        for _ in 0..n {
            out.extend(self.roll.sample_one(&mut self.rng));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_match_numpy_golden() {
        // scripts/golden/core.py (output scripts/golden/core.json), swiss_roll_noise_*: closed
        // form; the literals below (an older midpoint rule) differ from it by < 2e-12
        let r = SwissRoll::new(0.5).unwrap();
        assert!((r.raw_mean()[0] - 2.0000000000018505).abs() < 1e-9);
        assert!((r.raw_mean()[1] - 0.2122065907889963).abs() < 1e-9);
        assert!((r.scale() - 6.807481592829968).abs() < 1e-9);
        let r = SwissRoll::new(0.05).unwrap();
        assert!((r.scale() - 6.789278727281628).abs() < 1e-9);
    }

    #[test]
    fn stream_is_seeded_and_normalised() {
        let r = SwissRoll::new(0.5).unwrap();
        let a = r.stream(3).next_batch(100_000);
        assert_eq!(a, r.stream(3).next_batch(100_000));
        assert_ne!(a[..10], r.stream(4).next_batch(5)[..]);
        let n = a.len() as f64 / 2.0;
        let (mut mx, mut my) = (0.0, 0.0);
        for p in a.chunks(2) {
            mx += p[0] as f64;
            my += p[1] as f64;
        }
        mx /= n;
        my /= n;
        let var: f64 = a
            .chunks(2)
            .map(|p| ((p[0] as f64 - mx).powi(2) + (p[1] as f64 - my).powi(2)) / 2.0)
            .sum::<f64>()
            / n;
        // standard errors at n = 1e5 are about 0.003 for the mean and 0.004 for the variance
        assert!(mx.abs() < 0.015 && my.abs() < 0.015, "{mx} {my}");
        assert!((var - 1.0).abs() < 0.02, "{var}");
    }

    #[test]
    fn entropy_matches_numpy_golden() {
        // golden: 1.9484 +- 0.0056 (noise 0.5), -1.3821 +- 0.0055 (noise 0.05); both estimates
        // are Monte Carlo, so allow 4 combined standard errors.
        for (noise, h_ref, se_ref, n) in [
            (0.5, 1.9484075859718393, 0.0055534180592413844, 20_000),
            (0.05, -1.3821405863911347, 0.005499682281470788, 4_000),
        ] {
            let (h, se) = SwissRoll::new(noise).unwrap().entropy_bits(n, 1);
            let tol = 4.0 * (se * se + se_ref * se_ref).sqrt();
            assert!(
                (h - h_ref).abs() < tol,
                "noise {noise}: {h} +- {se} vs {h_ref}"
            );
        }
    }

    #[test]
    fn log_density_integrates_to_one() {
        // Grid integral of p over a box covering the roll (|x|, |y| < 2.5 in normalised units).
        let r = SwissRoll::new(0.5).unwrap();
        let (n, half) = (160usize, 2.6);
        let h = 2.0 * half / n as f64;
        let mut pts = Vec::with_capacity(2 * n * n);
        for i in 0..n {
            for j in 0..n {
                pts.push(-half + h * (i as f64 + 0.5));
                pts.push(-half + h * (j as f64 + 0.5));
            }
        }
        let total: f64 = r.log_density(&pts).iter().map(|l| l.exp() * h * h).sum();
        assert!((total - 1.0).abs() < 2e-3, "{total}");
    }

    #[test]
    fn inpainting_conditional_is_the_joint_over_the_marginal() {
        // p(y | x) from the posterior against p_data(x, y) / ∫ p_data(x, y') dy', both by the
        // roll's own log-density: integrates to 1, and agrees pointwise.
        let r = SwissRoll::new(0.5).unwrap();
        for x in [-1.2, 0.1, 0.9] {
            let post = r.posterior([Some((x, 0.0)), None]).unwrap();
            assert_eq!(post.free(), [1]);
            let (n, lo, hi) = (1200usize, -4.0, 4.0);
            let h = (hi - lo) / n as f64;
            let pts: Vec<f64> = (0..n)
                .flat_map(|j| [x, lo + h * (j as f64 + 0.5)])
                .collect();
            let cond: Vec<f64> = post.log_density(&pts).iter().map(|l| l.exp()).collect();
            let joint: Vec<f64> = r.log_density(&pts).iter().map(|l| l.exp()).collect();
            let marginal: f64 = joint.iter().sum::<f64>() * h;
            let total: f64 = cond.iter().sum::<f64>() * h;
            assert!((total - 1.0).abs() < 1e-6, "x = {x}: {total}");
            for j in (0..n).step_by(37) {
                let want = joint[j] / marginal;
                assert!(
                    (cond[j] - want).abs() < 1e-6 * (1.0 + want),
                    "x = {x}, j = {j}"
                );
            }
            // exact draws hold x and have the density's mean in y
            let draws = post.sample(20_000, &mut crate::rng(9, 0));
            assert!(draws.chunks(2).all(|p| p[0] == x));
            let mean_y = draws.chunks(2).map(|p| p[1]).sum::<f64>() / 20_000.0;
            let want: f64 = pts.chunks(2).zip(&cond).map(|(p, c)| p[1] * c * h).sum();
            let sd: f64 = (pts
                .chunks(2)
                .zip(&cond)
                .map(|(p, c)| (p[1] - want).powi(2) * c * h))
            .sum::<f64>()
            .sqrt();
            assert!(
                (mean_y - want).abs() < 4.0 * sd / (20_000f64).sqrt(),
                "{mean_y} {want}"
            );
            assert!((post.mean()[1] - want).abs() < 1e-6);
        }
    }

    #[test]
    fn denoising_posterior_integrates_to_one() {
        // p(x | y) ∝ p_data(x) N(y; x, s² I): the grid integral of the posterior density is 1,
        // and its ratio to p_data(x) N(y; x, s²) is the same constant everywhere.
        let r = SwissRoll::new(0.5).unwrap();
        let (y, s) = ([0.4, -0.8], 0.3);
        let post = r.posterior([Some((y[0], s)), Some((y[1], s))]).unwrap();
        let (n, lo, hi) = (200usize, -2.0, 1.5);
        let h = (hi - lo) / n as f64;
        let mut pts = Vec::with_capacity(2 * n * n);
        for i in 0..n {
            for j in 0..n {
                pts.push(lo + h * (i as f64 + 0.5));
                pts.push(lo + h * (j as f64 + 0.5));
            }
        }
        let lp = post.log_density(&pts);
        let total: f64 = lp.iter().map(|l| l.exp() * h * h).sum();
        assert!((total - 1.0).abs() < 2e-3, "{total}");
        let data = r.log_density(&pts);
        let ratio = |k: usize| {
            let p = &pts[2 * k..2 * k + 2];
            lp[k] - data[k] - log_normal(y[0], p[0], s * s) - log_normal(y[1], p[1], s * s)
        };
        let r0 = ratio(n * n / 2 + n / 2);
        for k in (0..n * n).step_by(997) {
            assert!((ratio(k) - r0).abs() < 1e-6, "{k}: {} vs {r0}", ratio(k));
        }
        // the draws' mean is the posterior mean
        let draws = post.sample(20_000, &mut crate::rng(2, 0));
        let m = post.mean();
        for (i, want) in m.iter().enumerate() {
            let mean = draws.iter().skip(i).step_by(2).sum::<f64>() / 20_000.0;
            assert!(
                (mean - want).abs() < 0.01,
                "coordinate {i}: {mean} vs {want}"
            );
        }
    }

    #[test]
    fn bad_observations_are_refused() {
        let r = SwissRoll::new(0.5).unwrap();
        assert!(r.posterior([Some((f64::NAN, 0.0)), None]).is_err());
        assert!(r.posterior([Some((0.0, -1.0)), None]).is_err());
    }

    #[test]
    fn bad_noise_is_refused() {
        assert!(SwissRoll::new(0.0).is_err());
        assert!(SwissRoll::new(f64::NAN).is_err());
    }
}
