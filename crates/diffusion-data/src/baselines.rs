//! Models simpler than diffusion that any bound should beat, fitted on the training rows and
//! scored on held-out rows, in bits per row (log2-likelihoods, so higher is better, like K):
//!
//! - [`IndependentBernoulli`]: one probability per bit (binary data);
//! - [`BernoulliMixture`]: a mixture of K products of Bernoullis fitted by EM (binary data);
//! - [`PixelHistogram`]: one categorical distribution per coordinate over the integers
//!   0..=max (integer data, such as 8x8 digit counts 0..16).
//!
//! Every probability is smoothed (add-one counts, a Beta(1, 1) prior on the mixture means), so
//! a held-out value never seen in training has a finite log-likelihood.
//!
//! ```
//! use diffusion_data::Array2;
//! use diffusion_data::baselines::IndependentBernoulli;
//!
//! let train = Array2::new(2, 2, vec![1.0, 0.0, 1.0, 1.0]).unwrap();
//! let model = IndependentBernoulli::fit(&train);
//! // p(bit 0 = 1) = (2 + 1) / (2 + 2), p(bit 1 = 1) = (1 + 1) / (2 + 2)
//! let want = (0.75f64).log2() + (0.5f64).log2();
//! assert!((model.log_likelihood_bits(&[1.0, 0.0]) - want).abs() < 1e-12);
//! ```

use std::f64::consts::LN_2;

use crate::io::{Array2, DataError};

/// One Bernoulli per coordinate.
#[derive(Debug, Clone, PartialEq)]
pub struct IndependentBernoulli {
    /// p(x_i = 1), smoothed: (ones + 1) / (rows + 2).
    pub p: Vec<f64>,
}

impl IndependentBernoulli {
    /// Fits the probabilities on 0/1 rows (a value >= 0.5 counts as 1).
    pub fn fit(rows: &Array2) -> Self {
        let mut ones = vec![0.0f64; rows.cols];
        for i in 0..rows.rows {
            for (o, &v) in ones.iter_mut().zip(rows.row(i)) {
                *o += f64::from(u8::from(v >= 0.5));
            }
        }
        let n = rows.rows as f64;
        Self {
            p: ones.iter().map(|o| (o + 1.0) / (n + 2.0)).collect(),
        }
    }

    /// log2 p(row).
    pub fn log_likelihood_bits(&self, row: &[f32]) -> f64 {
        row.iter()
            .zip(&self.p)
            .map(|(&v, &p)| if v >= 0.5 { p.log2() } else { (1.0 - p).log2() })
            .sum()
    }
}

/// A mixture of `K` products of Bernoullis, p(x) = sum_k w_k prod_i mu_ki^x_i (1 - mu_ki)^(1-x_i).
#[derive(Debug, Clone, PartialEq)]
pub struct BernoulliMixture {
    /// Mixture weights w_k.
    pub weights: Vec<f64>,
    /// Means mu_k, `[K][d]`.
    pub means: Vec<Vec<f64>>,
    /// The mean training log-likelihood after each EM iteration, in bits per row (never
    /// decreasing, up to the smoothing prior).
    pub history: Vec<f64>,
}

impl BernoulliMixture {
    /// Fits `k` components by `iterations` EM steps, starting from random responsibilities
    /// (uniform draws normalised per row, from the generator of `seed`). The M step uses the
    /// MAP means under a Beta(1, 1) prior, (sum r x + 1) / (sum r + 2), and weights
    /// (sum r + 1) / (n + k).
    pub fn fit(rows: &Array2, k: usize, iterations: usize, seed: u64) -> Result<Self, DataError> {
        use rand::Rng as _;
        if k == 0 || rows.rows < k {
            return Err(DataError::Invalid(format!(
                "a mixture of {k} components needs at least {k} rows (have {})",
                rows.rows
            )));
        }
        let (n, d) = (rows.rows, rows.cols);
        let bits: Vec<f64> = rows
            .data
            .iter()
            .map(|&v| f64::from(u8::from(v >= 0.5)))
            .collect();
        let mut rng = crate::rng(seed, 0);
        let mut resp: Vec<f64> = (0..n * k).map(|_| rng.random::<f64>()).collect();
        for row in resp.chunks_exact_mut(k) {
            let sum: f64 = row.iter().sum();
            row.iter_mut().for_each(|r| *r /= sum);
        }
        let mut model = Self {
            weights: vec![1.0 / k as f64; k],
            means: vec![vec![0.5; d]; k],
            history: Vec::with_capacity(iterations),
        };
        for _ in 0..iterations {
            model.m_step(&bits, &resp, n, d, k);
            let mut total = 0.0;
            for i in 0..n {
                let row = &bits[i * d..(i + 1) * d];
                let logs: Vec<f64> = (0..k).map(|c| model.log_joint(c, row)).collect();
                let top = logs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = logs.iter().map(|l| (l - top).exp()).sum();
                for c in 0..k {
                    resp[i * k + c] = (logs[c] - top).exp() / sum;
                }
                total += top + sum.ln();
            }
            model.history.push(total / n as f64 / LN_2);
        }
        model.m_step(&bits, &resp, n, d, k);
        Ok(model)
    }

    fn m_step(&mut self, bits: &[f64], resp: &[f64], n: usize, d: usize, k: usize) {
        for c in 0..k {
            let mass: f64 = (0..n).map(|i| resp[i * k + c]).sum();
            let mut ones = vec![0.0f64; d];
            for i in 0..n {
                let r = resp[i * k + c];
                if r > 0.0 {
                    for (o, b) in ones.iter_mut().zip(&bits[i * d..(i + 1) * d]) {
                        *o += r * b;
                    }
                }
            }
            self.means[c] = ones.iter().map(|o| (o + 1.0) / (mass + 2.0)).collect();
            self.weights[c] = (mass + 1.0) / (n + k) as f64;
        }
    }

    /// ln w_c + ln p(row | c), row of 0.0/1.0.
    fn log_joint(&self, c: usize, row: &[f64]) -> f64 {
        self.weights[c].ln()
            + row
                .iter()
                .zip(&self.means[c])
                .map(|(&b, &m)| if b >= 0.5 { m.ln() } else { (1.0 - m).ln() })
                .sum::<f64>()
    }

    /// log2 p(row).
    pub fn log_likelihood_bits(&self, row: &[f32]) -> f64 {
        let row: Vec<f64> = row.iter().map(|&v| f64::from(u8::from(v >= 0.5))).collect();
        let logs: Vec<f64> = (0..self.weights.len())
            .map(|c| self.log_joint(c, &row))
            .collect();
        let top = logs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        (top + logs.iter().map(|l| (l - top).exp()).sum::<f64>().ln()) / LN_2
    }
}

/// One categorical distribution per coordinate over the integers 0..=max.
#[derive(Debug, Clone, PartialEq)]
pub struct PixelHistogram {
    /// p(x_i = v), `[d][max + 1]`, smoothed: (count + 1) / (rows + max + 1).
    pub p: Vec<Vec<f64>>,
}

impl PixelHistogram {
    /// Fits the histograms on rows of integers in 0..=`max`; other values are refused.
    pub fn fit(rows: &Array2, max: u32) -> Result<Self, DataError> {
        let levels = max as usize + 1;
        let mut counts = vec![vec![0.0f64; levels]; rows.cols];
        for (j, &v) in rows.data.iter().enumerate() {
            counts[j % rows.cols][level(v, max)?] += 1.0;
        }
        let n = rows.rows as f64;
        Ok(Self {
            p: counts
                .into_iter()
                .map(|c| c.iter().map(|k| (k + 1.0) / (n + levels as f64)).collect())
                .collect(),
        })
    }

    /// log2 P(row); a value outside 0..=max is an error.
    pub fn log_likelihood_bits(&self, row: &[f32]) -> Result<f64, DataError> {
        let max = (self.p[0].len() - 1) as u32;
        row.iter()
            .zip(&self.p)
            .map(|(&v, p)| Ok(p[level(v, max)?].log2()))
            .sum()
    }
}

/// The largest value of `rows` if every value is an integer in 0..=65535, else `None`.
pub fn integer_range(rows: &Array2) -> Option<u32> {
    let mut top = 0u32;
    for &v in &rows.data {
        if !((0.0..=65535.0).contains(&v) && v.fract() == 0.0) {
            return None;
        }
        top = top.max(v as u32);
    }
    Some(top)
}

fn level(v: f32, max: u32) -> Result<usize, DataError> {
    if (0.0..=max as f32).contains(&v) && v.fract() == 0.0 {
        Ok(v as usize)
    } else {
        Err(DataError::Invalid(format!(
            "value {v} is not an integer in 0..={max}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two clusters of bits that a mixture of two separates exactly, and one product cannot.
    fn clusters() -> Array2 {
        let mut data = Vec::new();
        for i in 0..40 {
            data.extend(if i % 3 == 0 {
                [1.0, 1.0, 1.0, 0.0]
            } else {
                [0.0, 0.0, 0.0, 1.0]
            });
        }
        Array2::new(40, 4, data).unwrap()
    }

    #[test]
    fn a_mixture_finds_two_clusters() {
        let rows = clusters();
        let mix = BernoulliMixture::fit(&rows, 2, 30, 0).unwrap();
        // 14 rows of the first kind, 26 of the second: EM (started from a mix of both in each
        // component at random) separates them; the likelihood rises (up to the prior's pull)
        for w in mix.history.windows(2) {
            assert!(w[1] >= w[0] - 1e-3, "{:?}", mix.history);
        }
        let ll = mix.log_likelihood_bits(&[1.0, 1.0, 1.0, 0.0]);
        // the first kind's component: weight (14 + 1)/(40 + 2), each bit right w.p. 15/16
        let want = (15.0f64 / 42.0).log2() + 4.0 * (15.0f64 / 16.0).log2();
        assert!((ll - want).abs() < 1e-3, "{ll} vs {want}");
        let independent =
            IndependentBernoulli::fit(&rows).log_likelihood_bits(&[1.0, 1.0, 1.0, 0.0]);
        // 14 ones of 40 in the first three bits, 26 in the last: p = 15/42 and 27/42
        assert!((independent - 4.0 * (15.0f64 / 42.0).log2()).abs() < 1e-12);
        assert!(ll > independent + 3.0);
        assert!(BernoulliMixture::fit(&rows, 41, 1, 0).is_err());
    }

    #[test]
    fn histograms_count_with_add_one_smoothing() {
        let rows = Array2::new(3, 2, vec![0.0, 2.0, 0.0, 2.0, 1.0, 0.0]).unwrap();
        assert_eq!(integer_range(&rows), Some(2));
        let h = PixelHistogram::fit(&rows, 2).unwrap();
        // column 0: counts [2, 1, 0] -> (3, 2, 1)/6; column 1: [1, 0, 2] -> (2, 1, 3)/6
        let got = h.log_likelihood_bits(&[0.0, 1.0]).unwrap();
        assert!((got - ((3.0f64 / 6.0).log2() + (1.0f64 / 6.0).log2())).abs() < 1e-12);
        assert!(h.log_likelihood_bits(&[3.0, 0.0]).is_err());
        assert!(h.log_likelihood_bits(&[0.5, 0.0]).is_err());
        assert_eq!(integer_range(&Array2::new(1, 1, vec![0.5]).unwrap()), None);
    }
}

/// The label each query row gets from its `k` nearest training rows (Euclidean distance over
/// the `d` values, ties to the nearer row): the label with the most votes, a tie between labels
/// going to the one whose nearest voter is nearer. `train` is `[m, d]` with one label each,
/// `queries` `[n, d]`.
pub fn knn_labels(train: &[f32], labels: &[u8], queries: &[f32], d: usize, k: usize) -> Vec<u8> {
    let k = k.clamp(1, labels.len().max(1));
    queries
        .chunks_exact(d)
        .map(|q| {
            let mut near: Vec<(f32, usize)> = train
                .chunks_exact(d)
                .enumerate()
                .map(|(i, row)| {
                    let dist = row
                        .iter()
                        .zip(q)
                        .map(|(a, b)| (a - b) * (a - b))
                        .sum::<f32>();
                    (dist, i)
                })
                .collect();
            let k = k.min(near.len());
            near.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            near.truncate(k);
            near.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let mut votes = [0usize; 256];
            for &(_, i) in &near {
                votes[labels[i] as usize] += 1;
            }
            let top = *votes.iter().max().unwrap_or(&0);
            // the nearest voter among the labels with the most votes
            near.iter()
                .map(|&(_, i)| labels[i])
                .find(|&l| votes[l as usize] == top)
                .unwrap_or(0)
        })
        .collect()
}

#[cfg(test)]
mod knn_tests {
    use super::knn_labels;

    #[test]
    fn nearest_rows_vote() {
        // three clusters on a line: around 0 (label 1), 10 (label 2), 20 (label 3)
        let train = [0.0, 0.5, -0.5, 10.0, 10.5, 9.5, 20.0, 20.5, 19.5f32];
        let labels = [1, 1, 1, 2, 2, 2, 3, 3, 3u8];
        let got = knn_labels(&train, &labels, &[0.2, 9.0, 30.0, 15.1], 1, 3);
        assert_eq!(got, vec![1, 2, 3, 3]);
        // k = 2 at 5.0: one voter each of labels 1 (0.5, distance 4.5) and 2 (9.5, 4.5): a tie
        // of votes and of distance, to the earlier row
        assert_eq!(knn_labels(&train, &labels, &[5.0], 1, 2), vec![1]);
        // k = 5 at 4.9: label 1 (three voters, at 4.4, 4.9, 5.4) beats label 2 (4.6, 5.1)
        assert_eq!(knn_labels(&train, &labels, &[4.9], 1, 5), vec![1]);
        // k = 5 at 5.2: label 2 (4.3, 4.8, 5.3) beats label 1 (4.7, 5.2)
        assert_eq!(knn_labels(&train, &labels, &[5.2], 1, 5), vec![2]);
        // two dimensions
        let train2 = [0.0, 0.0, 1.0, 1.0f32];
        assert_eq!(knn_labels(&train2, &[7, 9], &[0.9, 0.8], 2, 1), vec![9]);
    }
}
