//! Pictures of points: the 2-D trajectory, the drift of the reverse kernel, and pairs of
//! coordinates of Gaussian samples.

use std::path::Path;

use diffusion_models::Process;
use diffusion_models::bound::Diffusion;
use diffusion_models::evaluate::SAMPLE_CHUNK_ROWS;
use diffusion_plot::{ArrowPanel, ArrowPanels, ScatterGrid, ScatterPanel, save};

use super::{Plot, pairs};

impl Plot {
    /// `--what trajectory` of 2-D data: scatter panels of the forward q(x_t) from held-out
    /// data above the reverse p(x_t) from the model, one per step t.
    pub(super) fn point_trajectory(&mut self, stem: &Path) -> Result<(), String> {
        let data = self.heldout(self.a.n)?;
        let forward: Vec<ScatterPanel> = self
            .steps
            .iter()
            .map(|&t| ScatterPanel {
                title: format!("t = {t}"),
                points: pairs(&self.bound.forward_sample(&data, t, &mut self.rng)),
            })
            .collect();
        let n = data.len() / self.d;
        let mut reverse = self.bound.trajectory(
            &self.model.network,
            n,
            &self.steps,
            &mut self.rng,
            &self.device,
        );
        reverse.sort_by_key(|(t, _)| *t);
        let reverse = reverse
            .into_iter()
            .map(|(t, x)| ScatterPanel {
                title: format!("t = {t}"),
                points: pairs(&x),
            })
            .collect();
        let (name, steps_t) = (&self.name, self.steps_t);
        let files = save(
            &ScatterGrid {
                title: format!(
                    "{name}: forward q(x_t) from data (top), reverse p(x_t) from the model (bottom), T = {steps_t}"
                ),
                rows: vec![("q(x_t)".into(), forward), ("p(x_t)".into(), reverse)],
                range: 3.0,
            },
            stem,
        );
        self.keep(files)
    }

    /// `--what drift`: arrows of the reverse kernel's drift mu(x, t) - x on a grid over the
    /// held-out data, at t = T, T/2 and T/10.
    pub(super) fn drift(&mut self, stem: &Path) -> Result<(), String> {
        let Diffusion::Gaussian(g) = &self.bound else {
            unreachable!("checked by fitting()")
        };
        let (k, r) = (15, 2.5f32);
        let grid: Vec<f32> = (0..k * k)
            .flat_map(|i| {
                let at = |j: usize| -r + 2.0 * r * j as f32 / (k - 1) as f32;
                [at(i % k), at(i / k)]
            })
            .collect();
        let steps_t = self.steps_t;
        let mut ts = vec![steps_t, steps_t / 2, (steps_t / 10).max(2)];
        ts.retain(|&t| t >= 2);
        ts.dedup();
        let spacing = 2.0 * r / (k - 1) as f32;
        let background = pairs(&self.heldout(self.a.n.min(2000))?);
        let mut panels = Vec::new();
        let device = &self.device;
        let tables = g.tables(device);
        for &t in &ts {
            let x = diffusion_models::process::tensor2(grid.clone(), k * k, 2, device);
            let (mean, _) = g.mean_log_variance(&self.model.network, &tables, x.clone(), t);
            let delta = (mean - x).into_data().convert::<f32>();
            let deltas = pairs(delta.as_slice::<f32>().map_err(|e| format!("{e:?}"))?);
            // Each panel on its own scale: the median arrow 0.8 grid
            // spacings long, none drawn longer than 1.5.
            let scale = ArrowPanel::scale_to(&deltas, 0.5, 0.8 * spacing);
            eprintln!("drift at t = {t}: arrows drawn x{scale:.2} (at most 1.5 grid spacings)");
            panels.push(ArrowPanel {
                title: format!("t = {t} (arrows x{scale:.2})"),
                origins: pairs(&grid),
                deltas,
                scale,
                background: background.clone(),
                max_length: 1.5 * spacing,
            });
        }
        let name = &self.name;
        let files = save(
            &ArrowPanels {
                title: format!(
                    "{name}: drift mu(x, t) - x of the reverse kernel over the data (each panel its own scale, long arrows capped)"
                ),
                panels,
                range: 3.0,
            },
            stem,
        );
        self.keep(files)
    }

    /// `--what samples` of Gaussian rows that are not images: scatter panels of up to five
    /// pairs of coordinates, held-out data above samples, in standardised units.
    pub(super) fn point_samples(&mut self, stem: &Path) -> Result<(), String> {
        let d = self.d;
        // pairs of coordinates, in the space the model diffuses (standardised data)
        let data = self.heldout(self.a.n)?;
        let drawn = self.bound.sample(
            &self.model.network,
            data.len() / d,
            &mut self.rng,
            &self.device,
            self.manifest.chunk_rows(SAMPLE_CHUNK_ROWS),
        );
        let coordinate_pairs: Vec<(usize, usize)> = if d == 1 {
            vec![(0, 0)]
        } else {
            (0..d / 2).take(5).map(|k| (2 * k, 2 * k + 1)).collect()
        };
        let panels = |v: &[f32]| {
            coordinate_pairs
                .iter()
                .map(|&(i, j)| ScatterPanel {
                    title: format!("x{i} against x{j}"),
                    points: v.chunks_exact(d).map(|r| [r[i], r[j]]).collect(),
                })
                .collect::<Vec<_>>()
        };
        let units = if self
            .manifest
            .standardization
            .as_ref()
            .is_some_and(|s| !s.is_identity())
        {
            " (standardised units)"
        } else {
            ""
        };
        let name = &self.name;
        let files = save(
            &ScatterGrid {
                title: format!("{name}: pairs of coordinates{units}"),
                rows: vec![
                    ("held-out".into(), panels(&data)),
                    ("samples".into(), panels(&drawn)),
                ],
                range: 3.0,
            },
            stem,
        );
        self.keep(files)
    }
}
