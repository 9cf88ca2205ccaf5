//! Mean and standard error of a sample, in f64.

use serde::{Deserialize, Serialize};

/// A sample mean with its standard error (sample standard deviation / sqrt(n)).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MeanStderr {
    /// The sample mean.
    pub mean: f64,
    /// Its standard error; 0 for a sample of one.
    pub stderr: f64,
    /// Sample size.
    pub n: usize,
}

impl MeanStderr {
    /// Mean and standard error of `values` (two-pass, f64). Returns `None` for an empty slice.
    pub fn of(values: &[f64]) -> Option<Self> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let stderr = if n > 1 {
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            (var / n as f64).sqrt()
        } else {
            0.0
        };
        Some(Self { mean, stderr, n })
    }
}

/// The energy distance between two point sets (row-major, `d` columns each):
/// `2 E|X - Y| - E|X - X'| - E|Y - Y'|` with |.| the Euclidean norm and each expectation the mean
/// over all pairs, i = j included (the V-statistic: exactly 0 for identical sets, and never
/// negative). Székely and Rizzo (2013); zero in the population iff the distributions are equal.
pub fn energy_distance(a: &[f32], b: &[f32], d: usize) -> f64 {
    fn mean_distance(a: &[f32], b: &[f32], d: usize) -> f64 {
        let mut sum = 0.0f64;
        for p in a.chunks_exact(d) {
            for q in b.chunks_exact(d) {
                let sq: f64 = p
                    .iter()
                    .zip(q)
                    .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
                    .sum();
                sum += sq.sqrt();
            }
        }
        sum / ((a.len() / d) * (b.len() / d)) as f64
    }
    2.0 * mean_distance(a, b, d) - mean_distance(a, a, d) - mean_distance(b, b, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn energy_distance_values() {
        // point masses 5 apart: 2 * 5 - 0 - 0
        assert!((energy_distance(&[0.0, 0.0], &[3.0, 4.0], 2) - 10.0).abs() < 1e-12);
        let a = [0.0, 1.0, 2.0];
        assert_eq!(energy_distance(&a, &a, 1), 0.0);
        // {0, 1} against {1}: 2 * 0.5 - (0 + 1 + 1 + 0) / 4 - 0 = 0.5, symmetric
        assert!((energy_distance(&[0.0, 1.0], &[1.0], 1) - 0.5).abs() < 1e-12);
        assert!((energy_distance(&[1.0], &[0.0, 1.0], 1) - 0.5).abs() < 1e-12);
        // invariant under a common shift
        let shifted: Vec<f32> = [0.0f32, 1.0].iter().map(|v| v + 7.0).collect();
        assert!((energy_distance(&shifted, &[8.0], 1) - 0.5).abs() < 1e-12);
    }

    /// Two sets of n draws of one distribution are not at energy distance 0: the statistic's
    /// expectation is E|X - X'| (1/n + 1/m) (the zero diagonal of each set's own mean distance),
    /// 2 / (3 n) for U(0, 1). This is why a conditional sampler's energy distance is read against
    /// a floor of exact sets of the same size, averaged over many pairs.
    #[test]
    fn energy_distance_of_one_distribution_has_the_closed_form_expectation() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut uniform = || {
            // xorshift64*: the top 24 bits as a float in [0, 1)
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32
        };
        let (n, pairs) = (100, 2000);
        let values: Vec<f64> = (0..pairs)
            .map(|_| {
                let a: Vec<f32> = (0..n).map(|_| uniform()).collect();
                let b: Vec<f32> = (0..n).map(|_| uniform()).collect();
                energy_distance(&a, &b, 1)
            })
            .collect();
        let m = MeanStderr::of(&values).unwrap();
        let want = 2.0 / (3.0 * n as f64);
        assert!(
            (m.mean - want).abs() < 4.0 * m.stderr,
            "{} ± {} against {want}",
            m.mean,
            m.stderr
        );
        // and it is no small correction: one pair's spread is of the mean's own size
        let sd = m.stderr * (pairs as f64).sqrt();
        assert!(sd > 0.3 * want && sd < 3.0 * want, "sd {sd}");
    }

    #[test]
    fn mean_and_stderr_of_a_small_sample() {
        let m = MeanStderr::of(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(m.mean, 2.5);
        // sample variance 5/3, stderr sqrt(5/3/4)
        assert!((m.stderr - (5.0f64 / 12.0).sqrt()).abs() < 1e-15);
        assert!(MeanStderr::of(&[]).is_none());
        assert_eq!(MeanStderr::of(&[7.0]).unwrap().stderr, 0.0);
    }
}
