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
        let centres: Vec<[f64; 2]> = (0..q)
            .map(|i| {
                let s = S_LO + (S_HI - S_LO) * (i as f64 + 0.5) / q as f64;
                [
                    (s * s.cos() - self.mean[0]) / self.scale,
                    (s * s.sin() - self.mean[1]) / self.scale,
                ]
            })
            .collect();
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
        // ../shared/golden/golden.json, swiss_roll_noise_*
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
    fn bad_noise_is_refused() {
        assert!(SwissRoll::new(0.0).is_err());
        assert!(SwissRoll::new(f64::NAN).is_err());
    }
}
