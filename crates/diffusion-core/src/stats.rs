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

#[cfg(test)]
mod tests {
    use super::*;

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
