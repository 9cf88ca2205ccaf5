//! The held-out split of a data file: a seeded shuffle, then the first share of rows held out.

use rand::seq::SliceRandom;

use crate::{Array2, DataError, Rng};

/// Splits `points` by a shuffle drawn from `rng` into (training rows, held-out rows), holding
/// out `fraction` of the rows, rounded, and at least one row on each side.
///
/// ```
/// use diffusion_data::{Array2, split};
///
/// let points = Array2::new(10, 1, (0..10).map(|i| i as f32).collect())?;
/// let (train, held) = split(&points, 0.2, &mut diffusion_data::rng(0, 1))?;
/// assert_eq!((train.rows, held.rows), (8, 2));
/// let mut all: Vec<f32> = train.data.iter().chain(&held.data).copied().collect();
/// all.sort_by(f32::total_cmp);
/// assert_eq!(all, points.data);
/// # Ok::<(), diffusion_data::DataError>(())
/// ```
pub fn split(points: &Array2, fraction: f64, rng: &mut Rng) -> Result<(Array2, Array2), DataError> {
    if points.rows < 2 {
        return Err(DataError::Invalid(format!(
            "the data file has {} row(s); at least 2 are needed to hold some out",
            points.rows
        )));
    }
    let mut order: Vec<usize> = (0..points.rows).collect();
    order.shuffle(rng);
    let held = ((points.rows as f64 * fraction).round() as usize).clamp(1, points.rows - 1);
    let take = |idx: &[usize]| {
        let mut data = Vec::with_capacity(idx.len() * points.cols);
        for &i in idx {
            data.extend_from_slice(points.row(i));
        }
        Array2::new(idx.len(), points.cols, data)
    };
    Ok((take(&order[held..])?, take(&order[..held])?))
}
