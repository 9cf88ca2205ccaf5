//! Conditional samples: the model's p(x_0) r(x_0) beside the exact conditional.

use std::path::Path;

use diffusion_models::conditional::Exact;
use diffusion_models::evaluate::SAMPLE_CHUNK_ROWS;
use diffusion_plot::{
    RasterPanel, RasterPanels, ScatterGrid, ScatterPanel, align_first_pulse, save,
};

use super::{Plot, bit_rows, pairs};

impl Plot {
    /// `--what conditional`: samples of the model given `--known` or `--observe` beside exact
    /// conditional samples, as scatter panels of 2-D points or rasters of binary rows.
    pub(super) fn conditional(&mut self, stem: &Path) -> Result<(), String> {
        let (d, a) = (self.d, &self.a);
        let m = if d == 2 { a.n } else { a.rows };
        let given = a
            .condition
            .resolve_for(&self.manifest, &self.run, self.bound.variable(), m, a.seed)?
            .ok_or("--what conditional needs a condition")?;
        let exact = Exact::of(&self.manifest.config.data, &given).map_err(|e| e.to_string())?;
        let drawn = self
            .bound
            .sample_given(
                &self.model.network,
                m,
                &given,
                &mut self.rng,
                &self.device,
                self.manifest.chunk_rows(SAMPLE_CHUNK_ROWS),
            )
            .map_err(|e| e.to_string())?;
        let truth = exact.sample(m, &mut self.rng);
        let mode =
            given.mode().name().to_string() + if given.resamples() { ", resampled" } else { "" };
        let name = &self.name;
        let title =
            format!("{name}: samples of p(x_0) r(x_0), {mode} r, beside the exact conditional");
        let files = if d == 2 {
            let panel = |title: &str, values: &[f32]| ScatterPanel {
                title: title.into(),
                points: pairs(values),
            };
            let panels = vec![
                panel("data", &self.heldout(m)?),
                panel("exact conditional", &truth),
                panel(&format!("model, {mode} r"), &drawn),
            ];
            let grid = ScatterGrid {
                title,
                rows: vec![("x_0".into(), panels)],
                range: 3.0,
            };
            save(&grid, stem)
        } else {
            let mut truth = bit_rows(&truth, d);
            let mut samples = bit_rows(&drawn, d);
            if self.a.align {
                align_first_pulse(&mut truth);
                align_first_pulse(&mut samples);
            }
            let rasters = RasterPanels {
                title,
                panels: vec![
                    RasterPanel {
                        title: "exact conditional".into(),
                        rows: truth,
                    },
                    RasterPanel {
                        title: format!("model, {mode} r"),
                        rows: samples,
                    },
                ],
            };
            save(&rasters, stem)
        };
        self.keep(files)
    }
}
