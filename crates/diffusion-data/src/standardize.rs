//! Putting a user's data into the units a diffusion model expects, and back: x' = (x - m) / s
//! ([`Standardization`]), with optional uniform dequantisation of integer data first.
//!
//! A density in the standardised space is one in the data's own units up to the Jacobian:
//! log p(x) = log p'(x') - sum_i ln s_i, so a bound K' in bits becomes K' + [`log_jacobian_bits`]
//! (SPEC section 6). Dequantising integer data k to k + u, u ~ U[0, 1)^d, makes any density on
//! the continuous values a bound on the discrete ones: log P(k) >= E_u log p(k + u).
//!
//! [`log_jacobian_bits`]: Standardization::log_jacobian_bits
//!
//! ```
//! use diffusion_data::{Array2, Scaling, Standardization};
//!
//! let rows = Array2::new(3, 2, vec![1.0, 10.0, 2.0, 20.0, 3.0, 30.0]).unwrap();
//! let s = Standardization::fit(&rows, Scaling::PerCoordinate, false);
//! assert_eq!(s.mean, vec![2.0, 20.0]);
//! let mut row = vec![3.0, 10.0];
//! s.apply(&mut row);
//! assert!((row[0] - 1.2247449).abs() < 1e-6 && (row[1] + 1.2247449).abs() < 1e-6);
//! s.invert(&mut row);
//! assert!((row[0] - 3.0).abs() < 1e-6 && (row[1] - 10.0).abs() < 1e-5);
//! ```

use std::f64::consts::LN_2;

use rand::Rng as _;
use serde::{Deserialize, Serialize};

use crate::io::Array2;

/// How the scale s of a [`Standardization`] is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scaling {
    /// Neither centred nor scaled (m = 0, s = 1): the data are used as they are.
    None,
    /// Centred per coordinate and divided by one scale, so the mean per-coordinate variance is
    /// 1 (as the Swiss-roll generator does).
    Global,
    /// Centred and scaled to unit variance per coordinate.
    PerCoordinate,
}

impl Scaling {
    /// The name used in configs.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Global => "global",
            Self::PerCoordinate => "per-coordinate",
        }
    }
}

/// x' = (x + u - m) / s per coordinate, with u ~ U[0, 1) when the data are dequantised and
/// u = 0 otherwise; m and s are fitted on the training rows (on x + u in distribution).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Standardization {
    /// How the scale was chosen.
    pub scaling: Scaling,
    /// Whether uniform noise on [0, 1) is added to every value first.
    pub dequantize: bool,
    /// The centre m subtracted, one per coordinate (zeros for [`Scaling::None`]).
    pub mean: Vec<f64>,
    /// The scale s divided by, one per coordinate (all equal for [`Scaling::Global`]).
    pub scale: Vec<f64>,
    /// The training rows' mean per coordinate (of x + u when dequantised), whatever the scaling.
    pub data_mean: Vec<f64>,
    /// Their standard deviation per coordinate: with `data_mean`, the null model
    /// N(data_mean, diag data_sd^2) of the data.
    pub data_sd: Vec<f64>,
    /// Bounded data: x mapped through y = logit(alpha + (1 - 2 alpha) x / levels) before the
    /// centring and scaling (m and s are then of y), as flows do for images (RealNVP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit: Option<Logit>,
    /// The training rows' smallest and largest value over all coordinates (the largest plus 1
    /// when dequantised: the values x + u lie in [min, max + 1)), in the data's own units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<[f64; 2]>,
}

/// The logit map of bounded data on [0, levels): y = logit(p), p = alpha + (1 - 2 alpha) x / levels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Logit {
    /// The upper end of the data's range (for dequantised integers 0..=max, max + 1).
    pub levels: f64,
    /// The margin that keeps p inside (0, 1): p lies in [alpha, 1 - alpha].
    pub alpha: f64,
}

impl Logit {
    fn forward(&self, x: f64) -> f64 {
        let p = self.alpha + (1.0 - 2.0 * self.alpha) * x / self.levels;
        (p / (1.0 - p)).ln()
    }

    fn inverse(&self, y: f64) -> f64 {
        let p = 1.0 / (1.0 + (-y).exp());
        (p - self.alpha) * self.levels / (1.0 - 2.0 * self.alpha)
    }

    /// ln |dy/dx| at x.
    fn log_derivative(&self, x: f64) -> f64 {
        let p = self.alpha + (1.0 - 2.0 * self.alpha) * x / self.levels;
        ((1.0 - 2.0 * self.alpha) / self.levels).ln() - p.ln() - (1.0 - p).ln()
    }
}

/// A coordinate whose standard deviation is at most this is constant: it is not scaled (s = 1).
pub const MIN_SCALE: f64 = 1e-12;

fn floor(s: f64) -> f64 {
    if s > MIN_SCALE { s } else { 1.0 }
}

impl Standardization {
    /// Fits m and s on `rows`. When `dequantize`, the moments are those of x + u with
    /// u ~ U[0, 1) (mean + 1/2, variance + 1/12), computed exactly rather than from a draw.
    pub fn fit(rows: &Array2, scaling: Scaling, dequantize: bool) -> Self {
        let d = rows.cols;
        let n = rows.rows.max(1) as f64;
        let mut mean = vec![0.0f64; d];
        for i in 0..rows.rows {
            for (m, &v) in mean.iter_mut().zip(rows.row(i)) {
                *m += v as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n);
        let mut var = vec![0.0f64; d];
        for i in 0..rows.rows {
            for ((s, &v), m) in var.iter_mut().zip(rows.row(i)).zip(&mean) {
                *s += (v as f64 - m).powi(2);
            }
        }
        var.iter_mut().for_each(|s| *s /= n);
        if dequantize {
            mean.iter_mut().for_each(|m| *m += 0.5);
            var.iter_mut().for_each(|s| *s += 1.0 / 12.0);
        }
        let sd: Vec<f64> = var.iter().map(|v| floor(v.sqrt())).collect();
        let range = rows.data.iter().fold(None, |r: Option<[f64; 2]>, &v| {
            let v = v as f64;
            Some(r.map_or([v, v], |[lo, hi]| [lo.min(v), hi.max(v)]))
        });
        let range = range.map(|[lo, hi]| [lo, if dequantize { hi + 1.0 } else { hi }]);
        let (centre, scale) = match scaling {
            Scaling::None => (vec![0.0; d], vec![1.0; d]),
            Scaling::Global => {
                let s = floor((var.iter().sum::<f64>() / d.max(1) as f64).sqrt());
                (mean.clone(), vec![s; d])
            }
            Scaling::PerCoordinate => (mean.clone(), sd.clone()),
        };
        Self {
            scaling,
            dequantize,
            mean: centre,
            scale,
            data_mean: mean,
            data_sd: sd,
            logit: None,
            range,
        }
    }

    /// [`Standardization::fit`] with the logit map of bounded data first: the null model stays
    /// that of x (moments as `fit` computes them), while m and s are fitted on y = logit(...) of
    /// one dequantised draw of the rows (from the generator of `seed`).
    pub fn fit_logit(
        rows: &Array2,
        scaling: Scaling,
        dequantize: bool,
        logit: Logit,
        seed: u64,
    ) -> Result<Self, crate::DataError> {
        let mut base = Self::fit(rows, scaling, dequantize);
        let top = if dequantize {
            logit.levels - 1.0
        } else {
            logit.levels
        };
        if let Some(v) = rows
            .data
            .iter()
            .find(|&&v| !(0.0..=top).contains(&(v as f64)))
        {
            return Err(crate::DataError::Invalid(format!(
                "value {v} lies outside [0, {top}], the range of the logit map (levels = {})",
                logit.levels
            )));
        }
        if !(logit.alpha > 0.0 && logit.alpha < 0.5) {
            return Err(crate::DataError::Invalid(format!(
                "logit alpha = {} must lie in (0, 0.5)",
                logit.alpha
            )));
        }
        let mut y = rows.data.clone();
        let mut rng = crate::rng(seed, 0);
        base.dequantize(&mut y, &mut rng);
        for v in y.iter_mut() {
            *v = logit.forward(*v as f64) as f32;
        }
        let mapped = Array2::new(rows.rows, rows.cols, y).expect("same shape");
        let fitted = Self::fit(&mapped, scaling, false);
        base.mean = fitted.mean;
        base.scale = fitted.scale;
        base.logit = Some(logit);
        Ok(base)
    }

    /// The identity (no scaling, no dequantisation) for `d` coordinates with the given null
    /// model moments.
    pub fn identity(d: usize) -> Self {
        Self {
            scaling: Scaling::None,
            dequantize: false,
            mean: vec![0.0; d],
            scale: vec![1.0; d],
            data_mean: vec![0.0; d],
            data_sd: vec![1.0; d],
            logit: None,
            range: None,
        }
    }

    /// The data dimension.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Whether this changes nothing (no scaling and no dequantisation).
    pub fn is_identity(&self) -> bool {
        !self.dequantize && self.scaling == Scaling::None && self.logit.is_none()
    }

    /// Standardises rows in place (row-major, `dim()` columns), without dequantising.
    pub fn apply(&self, rows: &mut [f32]) {
        let d = self.dim();
        for row in rows.chunks_exact_mut(d) {
            for (i, v) in row.iter_mut().enumerate() {
                *v = self.value(i, *v as f64) as f32;
            }
        }
    }

    /// Adds u ~ U[0, 1) to every value in place (drawn from `rng` in row-major order) when the
    /// data are dequantised; does nothing otherwise.
    pub fn dequantize(&self, rows: &mut [f32], rng: &mut crate::Rng) {
        if self.dequantize {
            for v in rows.iter_mut() {
                let u: f64 = rng.random();
                *v = (*v as f64 + u) as f32;
            }
        }
    }

    /// Dequantises (when asked, with u drawn from `rng` in row-major order) and standardises
    /// rows in place.
    pub fn apply_with(&self, rows: &mut [f32], rng: &mut crate::Rng) {
        self.dequantize(rows, rng);
        self.apply(rows);
    }

    /// Maps standardised rows back to the data's own units in place (continuous values: a
    /// dequantised sample is k + u, not rounded).
    pub fn invert(&self, rows: &mut [f32]) {
        let d = self.dim();
        for row in rows.chunks_exact_mut(d) {
            for (i, v) in row.iter_mut().enumerate() {
                let y = *v as f64 * self.scale[i] + self.mean[i];
                *v = match &self.logit {
                    Some(l) => l.inverse(y),
                    None => y,
                } as f32;
            }
        }
    }

    /// Standardises one value of coordinate `i` (no dequantisation).
    pub fn value(&self, i: usize, v: f64) -> f64 {
        let y = match &self.logit {
            Some(l) => l.forward(v),
            None => v,
        };
        (y - self.mean[i]) / self.scale[i]
    }

    /// [`Standardization::range`] in the standardised space: each coordinate's lower and upper
    /// end (the maps are increasing).
    pub fn standardized_range(&self) -> Option<(Vec<f64>, Vec<f64>)> {
        let [lo, hi] = self.range?;
        let ends = |v: f64| (0..self.dim()).map(|i| self.value(i, v)).collect();
        Some((ends(lo), ends(hi)))
    }

    /// What adding the Jacobian turns a log-density in the standardised space into, in the
    /// data's own units, for the point `row` (in those units, dequantised): -sum_i log2 s_i
    /// bits, plus sum_i log2 |dy_i/dx_i| with the logit map.
    pub fn log_jacobian_bits(&self, row: &[f32]) -> f64 {
        let scales = -self.scale.iter().map(|s| s.ln()).sum::<f64>();
        let map = match &self.logit {
            Some(l) => row.iter().map(|&x| l.log_derivative(x as f64)).sum::<f64>(),
            None => 0.0,
        };
        (scales + map) / LN_2
    }

    /// The null model's log-likelihood of one row in the data's own units, in bits:
    /// log2 N(x; data_mean, diag data_sd^2) (x a dequantised value when the data are).
    pub fn null_log_likelihood_bits(&self, row: &[f32]) -> f64 {
        let half_log_2pi = 0.5 * (2.0 * std::f64::consts::PI).ln();
        row.iter()
            .zip(&self.data_mean)
            .zip(&self.data_sd)
            .map(|((&x, m), s)| -half_log_2pi - s.ln() - 0.5 * ((x as f64 - m) / s).powi(2))
            .sum::<f64>()
            / LN_2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fitted_moments_and_scales() {
        let rows = Array2::new(4, 2, vec![0.0, 5.0, 2.0, 5.0, 4.0, 5.0, 6.0, 5.0]).unwrap();
        // column 0: mean 3, variance 5; column 1 constant
        let p = Standardization::fit(&rows, Scaling::PerCoordinate, false);
        assert_eq!(p.mean, vec![3.0, 5.0]);
        assert!((p.scale[0] - 5f64.sqrt()).abs() < 1e-12);
        assert_eq!(p.scale[1], 1.0);
        let g = Standardization::fit(&rows, Scaling::Global, false);
        assert!(g.scale.iter().all(|&s| (s - 2.5f64.sqrt()).abs() < 1e-12));
        let n = Standardization::fit(&rows, Scaling::None, false);
        assert_eq!(
            (n.mean.clone(), n.scale.clone()),
            (vec![0.0; 2], vec![1.0; 2])
        );
        assert_eq!(n.data_mean, vec![3.0, 5.0]);
        // the range over all values, and through the map per coordinate
        assert_eq!(p.range, Some([0.0, 6.0]));
        let (lo, hi) = p.standardized_range().unwrap();
        assert!(
            (lo[0] + 3.0 / 5f64.sqrt()).abs() < 1e-12 && (hi[0] - 3.0 / 5f64.sqrt()).abs() < 1e-12
        );
        assert_eq!((lo[1], hi[1]), (-5.0, 1.0));
        // dequantised: + 1/2 on the mean, + 1/12 on the variance, values up to max + 1
        let q = Standardization::fit(&rows, Scaling::PerCoordinate, true);
        assert_eq!(q.mean, vec![3.5, 5.5]);
        assert_eq!(q.range, Some([0.0, 7.0]));
        assert!((q.scale[0] - (5.0f64 + 1.0 / 12.0).sqrt()).abs() < 1e-12);
        assert!((q.scale[1] - (1.0f64 / 12.0).sqrt()).abs() < 1e-12);
        assert!(
            (q.log_jacobian_bits(&[0.0, 0.0]) + q.scale.iter().map(|s| s.log2()).sum::<f64>())
                .abs()
                < 1e-12
        );
    }

    #[test]
    fn dequantised_rows_stay_inside_their_bins_and_invert() {
        let rows = Array2::new(2, 3, vec![0.0, 3.0, 16.0, 1.0, 7.0, 9.0]).unwrap();
        let s = Standardization::fit(&rows, Scaling::Global, true);
        let mut rng = crate::rng(1, 0);
        let mut x = rows.data.clone();
        s.apply_with(&mut x, &mut rng);
        s.invert(&mut x);
        for (a, b) in x.iter().zip(&rows.data) {
            assert!(*a >= *b - 1e-4 && *a < *b + 1.0 + 1e-4, "{a} from {b}");
        }
    }

    #[test]
    fn null_model_is_the_fitted_gaussian() {
        let rows = Array2::new(2, 1, vec![1.0, 3.0]).unwrap(); // mean 2, sd 1
        let s = Standardization::fit(&rows, Scaling::PerCoordinate, false);
        let want = (-0.5 * (2.0 * std::f64::consts::PI).ln() - 0.5) / LN_2;
        assert!((s.null_log_likelihood_bits(&[3.0]) - want).abs() < 1e-12);
    }
}

#[cfg(test)]
mod logit_tests {
    use super::*;

    #[test]
    fn the_logit_map_inverts_and_its_jacobian_is_the_derivative() {
        let rows = Array2::new(3, 2, vec![0.0, 16.0, 8.0, 3.0, 16.0, 0.0]).unwrap();
        let logit = Logit {
            levels: 17.0,
            alpha: 0.05,
        };
        let s = Standardization::fit_logit(&rows, Scaling::Global, true, logit, 0).unwrap();
        let mut rng = crate::rng(5, 0);
        let mut x = rows.data.clone();
        s.dequantize(&mut x, &mut rng);
        let raw = x.clone();
        s.apply(&mut x);
        let mut back = x.clone();
        s.invert(&mut back);
        for (a, b) in back.iter().zip(&raw) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
        // the Jacobian against a central difference of the whole map, coordinate by coordinate
        let jac = s.log_jacobian_bits(&raw[..2]);
        let h = 1e-4f64;
        let numeric: f64 = (0..2)
            .map(|i| {
                let v = raw[i] as f64;
                ((s.value(i, v + h) - s.value(i, v - h)) / (2.0 * h))
                    .abs()
                    .log2()
            })
            .sum();
        assert!((jac - numeric).abs() < 1e-4, "{jac} vs {numeric}");
        // values outside the range are refused
        let bad = Array2::new(1, 2, vec![17.0, 0.0]).unwrap();
        assert!(Standardization::fit_logit(&bad, Scaling::Global, true, logit, 0).is_err());
    }
}
