//! Rasters of binary rows: held-out data beside samples, and data noised by the forward chain.

use std::path::Path;

use diffusion_models::evaluate::SAMPLE_CHUNK_ROWS;
use diffusion_plot::{
    RasterPanel, RasterPanels, align_first_pulse, first_pulses, rotate_rows, save,
};

use super::{Plot, bit_rows};

impl Plot {
    /// `--what samples` of binary rows: a raster of --rows held-out rows beside one of as many
    /// samples, each aligned on its first pulse with `--align`.
    pub(super) fn raster_samples(&mut self, stem: &Path) -> Result<(), String> {
        let d = self.d;
        let mut data = bit_rows(&self.heldout(self.a.rows)?, d);
        let drawn = self.bound.sample(
            &self.model.network,
            self.a.rows,
            &mut self.rng,
            &self.device,
            self.manifest.chunk_rows(SAMPLE_CHUNK_ROWS),
        );
        let mut samples = bit_rows(&drawn, d);
        if self.a.align {
            align_first_pulse(&mut data);
            align_first_pulse(&mut samples);
        }
        let aligned = if self.a.align {
            ", aligned on the first pulse"
        } else {
            ""
        };
        let name = &self.name;
        let files = save(
            &RasterPanels {
                title: format!("{name}: data and samples{aligned}"),
                panels: vec![
                    RasterPanel {
                        title: "data".into(),
                        rows: data,
                    },
                    RasterPanel {
                        title: "samples".into(),
                        rows: samples,
                    },
                ],
            },
            stem,
        );
        self.keep(files)
    }

    /// `--what noising`: rasters of --rows held-out rows noised by q(x_t | x_0), one per step t,
    /// each noised row turned with its data row under `--align`.
    pub(super) fn noising(&mut self, stem: &Path) -> Result<(), String> {
        let d = self.d;
        let data = self.heldout(self.a.rows)?;
        // Each noised row turns with the data row it came from.
        let shifts = first_pulses(&bit_rows(&data, d));
        let panels = self
            .steps
            .iter()
            .map(|&t| {
                let mut rows = bit_rows(&self.bound.forward_sample(&data, t, &mut self.rng), d);
                if self.a.align {
                    rotate_rows(&mut rows, &shifts);
                }
                RasterPanel {
                    title: format!("t = {t}"),
                    rows,
                }
            })
            .collect();
        let name = &self.name;
        let files = save(
            &RasterPanels {
                title: format!("{name}: data noised by q(x_t | x_0)"),
                panels,
            },
            stem,
        );
        self.keep(files)
    }
}
