//! # diffusion-plot
//!
//! The pictures of diffusion experiments, each written as a PNG and an SVG of fixed size (so the
//! files are stable from run to run):
//!
//! - [`ScatterGrid`]: rows of 2-D scatter panels, e.g. q(x_t) above p(x_t) at the same steps
//!   (the paper's Figure 1);
//! - [`ArrowPanels`]: a drift field, mu(x, t) - x as arrows at a few t;
//! - [`LineChart`]: curves such as loss against step, several runs on one chart;
//! - [`RasterPanels`]: binary sequences as rows of black and white cells (the paper's Figure 2);
//! - [`ImagePanels`]: rows of data read as small grey images, e.g. 8x8 digits (the paper's
//!   Figure 3 for our data).
//!
//! The data are plain numbers: nothing here knows about models or backends.
//!
//! ```
//! use diffusion_plot::{LineChart, Series, save};
//!
//! let chart = LineChart {
//!     title: "loss".into(),
//!     x_label: "step".into(),
//!     y_label: "-K (bits)".into(),
//!     series: vec![Series { label: "run".into(), points: vec![(0.0, 3.0), (100.0, 2.5)] }],
//! };
//! let folder = std::env::temp_dir().join(format!("diffusion-plot-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&folder).unwrap();
//! let files = save(&chart, &folder.join("loss"))?; // loss.png and loss.svg
//! assert!(files.iter().all(|f| f.is_file()));
//! # std::fs::remove_dir_all(&folder).unwrap();
//! # Ok::<(), diffusion_plot::PlotError>(())
//! ```

#![warn(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

/// What a plotters backend refused while a picture was drawn.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DrawError(pub String);

impl From<&str> for DrawError {
    fn from(message: &str) -> Self {
        Self(message.into())
    }
}

/// Why a picture was not written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The drawing or the file failed.
    #[error("cannot draw {path}: {message}")]
    Draw {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The data cannot be drawn.
    #[error("{0}")]
    Data(String),
}

/// The font every picture uses (DejaVu Sans, bundled; see `fonts/DejaVuSans-LICENSE.txt`).
const FONT: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TrueType font, checked by the tests.
        let _ = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT);
    });
}

/// A picture that can be drawn on any plotters backend.
pub trait Picture {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);
    /// Draws the picture on `root`.
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), DrawError>;
}

/// Writes `picture` to `stem.png` and `stem.svg`, returning both paths.
pub fn save(picture: &impl Picture, stem: &Path) -> Result<Vec<PathBuf>, PlotError> {
    register_font();
    let size = picture.size();
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    let fail = |path: &Path, message: String| PlotError::Draw {
        path: path.display().to_string(),
        message,
    };
    {
        let root = BitMapBackend::new(&png, size).into_drawing_area();
        picture.draw(&root).map_err(|e| fail(&png, e.0))?;
        root.present().map_err(|e| fail(&png, e.to_string()))?;
    }
    {
        let root = SVGBackend::new(&svg, size).into_drawing_area();
        picture.draw(&root).map_err(|e| fail(&svg, e.0))?;
        root.present().map_err(|e| fail(&svg, e.to_string()))?;
    }
    Ok(vec![png, svg])
}

fn err<E: std::fmt::Display>(e: E) -> DrawError {
    DrawError(e.to_string())
}

/// 2-D points inside the square of half-width `r` as small dots of the first colour, `alpha`
/// opaque (scatter panels, and the data behind arrows).
fn draw_points<DB: DrawingBackend>(
    chart: &mut ChartContext<
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf32, plotters::coord::types::RangedCoordf32>,
    >,
    points: &[[f32; 2]],
    r: f32,
    alpha: f64,
) -> Result<(), DrawError> {
    chart
        .draw_series(
            points
                .iter()
                .filter(|p| p[0].abs() <= r && p[1].abs() <= r)
                .map(|p| Circle::new((p[0], p[1]), 1, PALETTE[0].mix(alpha).filled())),
        )
        .map(|_| ())
        .map_err(err)
}

/// Colours of the series, in order (colour-blind safe, Okabe-Ito).
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(120, 120, 120),
    RGBColor(0, 0, 0),
];

/// A 2-D scatter panel.
#[derive(Debug, Clone)]
pub struct ScatterPanel {
    /// The panel's title, e.g. `t = 50`.
    pub title: String,
    /// The points.
    pub points: Vec<[f32; 2]>,
}

/// Rows of scatter panels on common axes [-range, range]^2, each row with a label.
#[derive(Debug, Clone)]
pub struct ScatterGrid {
    /// The picture's title.
    pub title: String,
    /// (row label, panels); every row should have the same number of panels.
    pub rows: Vec<(String, Vec<ScatterPanel>)>,
    /// Half-width of the axes.
    pub range: f32,
}

const PANEL: u32 = 200;
const TITLE_H: u32 = 40;
const LABEL_W: u32 = 90;

fn split_title<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
) -> Result<DrawingArea<DB, Shift>, DrawError> {
    root.fill(&WHITE).map_err(err)?;
    let (top, rest) = root.split_vertically(TITLE_H);
    top.titled(title, (FAMILY, 22)).map_err(err)?;
    Ok(rest)
}

impl Picture for ScatterGrid {
    fn size(&self) -> (u32, u32) {
        let cols = self.rows.iter().map(|r| r.1.len()).max().unwrap_or(1) as u32;
        (
            LABEL_W + cols * PANEL,
            TITLE_H + self.rows.len().max(1) as u32 * PANEL,
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), DrawError> {
        let body = split_title(root, &self.title)?;
        let rows = body.split_evenly((self.rows.len().max(1), 1));
        let r = self.range;
        for ((label, panels), row) in self.rows.iter().zip(rows) {
            let (left, right) = row.split_horizontally(LABEL_W);
            left.draw_text(
                label,
                &(FAMILY, 18).into_text_style(&left),
                (8, PANEL as i32 / 2 - 9),
            )
            .map_err(err)?;
            let cells = right.split_evenly((1, panels.len().max(1)));
            for (panel, cell) in panels.iter().zip(cells) {
                let mut chart = ChartBuilder::on(&cell)
                    .caption(&panel.title, (FAMILY, 15))
                    .margin(4)
                    .x_label_area_size(18)
                    .y_label_area_size(24)
                    .build_cartesian_2d(-r..r, -r..r)
                    .map_err(err)?;
                chart
                    .configure_mesh()
                    .disable_mesh()
                    .x_labels(3)
                    .y_labels(3)
                    .label_style((FAMILY, 10))
                    .draw()
                    .map_err(err)?;
                draw_points(&mut chart, &panel.points, r, 0.5)?;
            }
        }
        Ok(())
    }
}

/// One panel of arrows: from each origin, the displacement `delta` times the panel's `scale`,
/// over faint background points (the data, say).
#[derive(Debug, Clone)]
pub struct ArrowPanel {
    /// The panel's title.
    pub title: String,
    /// Where the arrows start.
    pub origins: Vec<[f32; 2]>,
    /// The displacement at each origin.
    pub deltas: Vec<[f32; 2]>,
    /// Arrow length = scale x displacement (each panel its own, as the paper's Figure 1).
    pub scale: f32,
    /// Points drawn faintly behind the arrows.
    pub background: Vec<[f32; 2]>,
    /// Arrows are drawn at most this long (axis units), keeping their direction.
    pub max_length: f32,
}

impl ArrowPanel {
    /// The scale at which the `q`-quantile (0..=1) of the arrows' lengths is `length` long (1 if
    /// they are all 0). A quantile rather than the longest keeps a few long arrows far from the
    /// data from shrinking the rest to dots.
    pub fn scale_to(deltas: &[[f32; 2]], q: f32, length: f32) -> f32 {
        let mut lengths: Vec<f32> = deltas
            .iter()
            .map(|v| (v[0] * v[0] + v[1] * v[1]).sqrt())
            .filter(|l| l.is_finite())
            .collect();
        lengths.sort_by(f32::total_cmp);
        let at = match lengths.len() {
            0 => 0.0,
            n => lengths[((n - 1) as f32 * q.clamp(0.0, 1.0)).round() as usize],
        };
        if at > 0.0 { length / at } else { 1.0 }
    }
}

/// Panels of arrows on common axes, e.g. the drift mu(x, t) - x of a reverse kernel.
#[derive(Debug, Clone)]
pub struct ArrowPanels {
    /// The picture's title.
    pub title: String,
    /// The panels, left to right.
    pub panels: Vec<ArrowPanel>,
    /// Half-width of the axes.
    pub range: f32,
}

impl Picture for ArrowPanels {
    fn size(&self) -> (u32, u32) {
        (
            self.panels.len().max(1) as u32 * 2 * PANEL,
            TITLE_H + 2 * PANEL,
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), DrawError> {
        let body = split_title(root, &self.title)?;
        let r = self.range;
        for (panel, cell) in self
            .panels
            .iter()
            .zip(body.split_evenly((1, self.panels.len().max(1))))
        {
            let mut chart = ChartBuilder::on(&cell)
                .caption(&panel.title, (FAMILY, 16))
                .margin(6)
                .x_label_area_size(22)
                .y_label_area_size(30)
                .build_cartesian_2d(-r..r, -r..r)
                .map_err(err)?;
            chart
                .configure_mesh()
                .disable_mesh()
                .label_style((FAMILY, 11))
                .draw()
                .map_err(err)?;
            draw_points(&mut chart, &panel.background, r, 0.25)?;
            let color = PALETTE[1];
            for (o, d) in panel.origins.iter().zip(&panel.deltas) {
                let (mut dx, mut dy) = (panel.scale * d[0], panel.scale * d[1]);
                let len = (dx * dx + dy * dy).sqrt();
                if len > panel.max_length {
                    (dx, dy) = (dx * panel.max_length / len, dy * panel.max_length / len);
                }
                let end = (o[0] + dx, o[1] + dy);
                chart
                    .draw_series(LineSeries::new([(o[0], o[1]), end], color.stroke_width(1)))
                    .map_err(err)?;
                chart
                    .draw_series([Circle::new(end, 2, color.filled())])
                    .map_err(err)?;
            }
        }
        Ok(())
    }
}

/// A named curve.
#[derive(Debug, Clone)]
pub struct Series {
    /// The legend entry.
    pub label: String,
    /// (x, y) points in order of x.
    pub points: Vec<(f64, f64)>,
}

/// Curves on one chart with a legend.
#[derive(Debug, Clone)]
pub struct LineChart {
    /// The chart's title.
    pub title: String,
    /// The x axis' label.
    pub x_label: String,
    /// The y axis' label.
    pub y_label: String,
    /// The curves.
    pub series: Vec<Series>,
}

fn bounds(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return None;
    }
    let pad = ((hi - lo) * 0.05).max(1e-9);
    Some((lo - pad, hi + pad))
}

impl Picture for LineChart {
    fn size(&self) -> (u32, u32) {
        (900, 560)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), DrawError> {
        root.fill(&WHITE).map_err(err)?;
        let all = || self.series.iter().flat_map(|s| s.points.iter());
        let (x0, x1) = bounds(all().map(|p| p.0)).ok_or("no finite points to draw")?;
        let (y0, y1) = bounds(all().map(|p| p.1)).ok_or("no finite points to draw")?;
        // A few early or diverged values would flatten every other curve: cap the axis at the
        // 90th percentile plus half the spread below it, and say so in the title.
        let mut ys: Vec<f64> = all().map(|p| p.1).filter(|v| v.is_finite()).collect();
        ys.sort_by(f64::total_cmp);
        let p90 = ys[(ys.len() - 1) * 9 / 10];
        let cap = p90 + 0.5 * (p90 - ys[0]).max(1e-9);
        let (y1, title) = if y1 > cap {
            (cap, format!("{} (y axis cut at {cap:.3})", self.title))
        } else {
            (y1, self.title.clone())
        };
        let mut chart = ChartBuilder::on(root)
            .caption(&title, (FAMILY, 20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .label_style((FAMILY, 13))
            .axis_desc_style((FAMILY, 15))
            .draw()
            .map_err(err)?;
        for (i, s) in self.series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(
                    s.points
                        .iter()
                        .copied()
                        .filter(|p| p.1.is_finite())
                        .map(|(x, y)| (x, y.min(y1))),
                    color.stroke_width(2),
                ))
                .map_err(err)?
                .label(&s.label)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FAMILY, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        Ok(())
    }
}

/// A panel of binary rows (1 = black).
#[derive(Debug, Clone)]
pub struct RasterPanel {
    /// The panel's title.
    pub title: String,
    /// The rows, each of the same length.
    pub rows: Vec<Vec<bool>>,
}

/// Raster panels side by side, e.g. heartbeat samples, or the data noised at a few steps.
#[derive(Debug, Clone)]
pub struct RasterPanels {
    /// The picture's title.
    pub title: String,
    /// The panels.
    pub panels: Vec<RasterPanel>,
}

const CELL: u32 = 8;

impl RasterPanels {
    fn grid(&self) -> (u32, u32) {
        let cols = self
            .panels
            .iter()
            .flat_map(|p| p.rows.iter().map(Vec::len))
            .max()
            .unwrap_or(1) as u32;
        let rows = self.panels.iter().map(|p| p.rows.len()).max().unwrap_or(1) as u32;
        (cols.max(1), rows.max(1))
    }
}

impl Picture for RasterPanels {
    fn size(&self) -> (u32, u32) {
        let (cols, rows) = self.grid();
        let panel_w = cols * CELL + 40;
        // wide enough for the title (about 11 px a character at the title's size)
        let title_w = 11 * self.title.chars().count() as u32 + 20;
        (
            (self.panels.len().max(1) as u32 * panel_w).max(title_w),
            TITLE_H + 30 + rows * CELL + 20,
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), DrawError> {
        let body = split_title(root, &self.title)?;
        for (panel, cell) in self
            .panels
            .iter()
            .zip(body.split_evenly((1, self.panels.len().max(1))))
        {
            cell.draw_text(&panel.title, &(FAMILY, 15).into_text_style(&cell), (20, 6))
                .map_err(err)?;
            for (r, row) in panel.rows.iter().enumerate() {
                for (c, &bit) in row.iter().enumerate() {
                    let x = 20 + (c as u32 * CELL) as i32;
                    let y = 30 + (r as u32 * CELL) as i32;
                    let fill = if bit { BLACK } else { RGBColor(235, 235, 235) };
                    cell.draw(&Rectangle::new(
                        [(x, y), (x + CELL as i32 - 1, y + CELL as i32 - 1)],
                        fill.filled(),
                    ))
                    .map_err(err)?;
                }
            }
        }
        Ok(())
    }
}

/// A panel of small images: each row of values is one `width` x `height` image, row-major.
#[derive(Debug, Clone)]
pub struct ImagePanel {
    /// The panel's title.
    pub title: String,
    /// The images, `width * height` values each.
    pub images: Vec<Vec<f32>>,
}

/// Image panels side by side, each a grid of `columns` images a row, drawn as grey levels from
/// white (`range.0` or less) to black (`range.1` or more).
#[derive(Debug, Clone)]
pub struct ImagePanels {
    /// The picture's title.
    pub title: String,
    /// The panels.
    pub panels: Vec<ImagePanel>,
    /// Pixels per image row.
    pub width: usize,
    /// Pixel rows per image.
    pub height: usize,
    /// Images per row of a panel.
    pub columns: usize,
    /// The values drawn white and black.
    pub range: (f32, f32),
}

const PIXEL: u32 = 6;
const IMAGE_GAP: u32 = 6;

impl ImagePanels {
    fn panel_size(&self) -> (u32, u32) {
        let count = self
            .panels
            .iter()
            .map(|p| p.images.len())
            .max()
            .unwrap_or(1);
        let cols = self.columns.clamp(1, count.max(1)) as u32;
        let rows = count.div_ceil(self.columns.max(1)).max(1) as u32;
        let step_x = self.width as u32 * PIXEL + IMAGE_GAP;
        let step_y = self.height as u32 * PIXEL + IMAGE_GAP;
        (cols * step_x + 40, rows * step_y + 50)
    }
}

impl Picture for ImagePanels {
    fn size(&self) -> (u32, u32) {
        let (w, h) = self.panel_size();
        let title_w = 11 * self.title.chars().count() as u32 + 20;
        (
            (self.panels.len().max(1) as u32 * w).max(title_w),
            TITLE_H + h,
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), DrawError> {
        let body = split_title(root, &self.title)?;
        let (lo, hi) = self.range;
        let span = if hi > lo { hi - lo } else { 1.0 };
        let columns = self.columns.max(1);
        let (step_x, step_y) = (
            (self.width as u32 * PIXEL + IMAGE_GAP) as i32,
            (self.height as u32 * PIXEL + IMAGE_GAP) as i32,
        );
        for (panel, cell) in self
            .panels
            .iter()
            .zip(body.split_evenly((1, self.panels.len().max(1))))
        {
            cell.draw_text(&panel.title, &(FAMILY, 15).into_text_style(&cell), (20, 6))
                .map_err(err)?;
            for (k, image) in panel.images.iter().enumerate() {
                let (x0, y0) = (
                    20 + (k % columns) as i32 * step_x,
                    30 + (k / columns) as i32 * step_y,
                );
                for (j, &v) in image.iter().take(self.width * self.height).enumerate() {
                    let ink = if v.is_finite() {
                        ((v - lo) / span).clamp(0.0, 1.0)
                    } else {
                        0.0
                    };
                    let level = (255.0 * (1.0 - ink)).round() as u8;
                    let x = x0 + ((j % self.width) as u32 * PIXEL) as i32;
                    let y = y0 + ((j / self.width) as u32 * PIXEL) as i32;
                    cell.draw(&Rectangle::new(
                        [(x, y), (x + PIXEL as i32, y + PIXEL as i32)],
                        RGBColor(level, level, level).filled(),
                    ))
                    .map_err(err)?;
                }
                // a thin frame so that white images stay visible
                cell.draw(&Rectangle::new(
                    [
                        (x0 - 1, y0 - 1),
                        (
                            x0 + (self.width as u32 * PIXEL) as i32,
                            y0 + (self.height as u32 * PIXEL) as i32,
                        ),
                    ],
                    RGBColor(200, 200, 200),
                ))
                .map_err(err)?;
            }
        }
        Ok(())
    }
}

/// Rotates each row left so that its first 1 is in column 0 (rows without a 1 stay).
pub fn align_first_pulse(rows: &mut [Vec<bool>]) {
    let shifts = first_pulses(rows);
    rotate_rows(rows, &shifts);
}

/// The column of each row's first 1 (0 for a row of zeros).
pub fn first_pulses(rows: &[Vec<bool>]) -> Vec<usize> {
    rows.iter()
        .map(|row| row.iter().position(|&b| b).unwrap_or(0))
        .collect()
}

/// Rotates row i left by `shifts[i]`: e.g. noised sequences by the first pulse of the data they
/// came from, so the picture shows the noise, not a realignment on it.
pub fn rotate_rows(rows: &mut [Vec<bool>], shifts: &[usize]) {
    for (row, &k) in rows.iter_mut().zip(shifts) {
        if !row.is_empty() {
            let k = k % row.len();
            row.rotate_left(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noised_rows_rotate_with_their_data() {
        let data = vec![vec![false, true, false], vec![false, false, true]];
        let mut noised = vec![vec![true, true, false], vec![true, false, false]];
        rotate_rows(&mut noised, &first_pulses(&data));
        // row 0 turns left by 1, row 1 by 2
        assert_eq!(
            noised,
            vec![vec![true, false, true], vec![false, true, false]]
        );
        let mut d = data.clone();
        align_first_pulse(&mut d);
        assert_eq!(d, vec![vec![true, false, false], vec![true, false, false]]);
    }

    #[test]
    fn arrows_scale_to_a_quantile_of_their_lengths() {
        let deltas: Vec<[f32; 2]> = (1..=5).map(|i| [0.0, i as f32]).collect();
        assert_eq!(ArrowPanel::scale_to(&deltas, 0.5, 1.5), 0.5);
        assert_eq!(ArrowPanel::scale_to(&deltas, 1.0, 10.0), 2.0);
        assert_eq!(ArrowPanel::scale_to(&[[0.0, 0.0]], 0.5, 1.0), 1.0);
        assert_eq!(ArrowPanel::scale_to(&[], 0.5, 1.0), 1.0);
    }

    #[test]
    fn the_bundled_font_loads() {
        assert!(plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    }

    #[test]
    fn rows_align_on_their_first_pulse() {
        let mut rows = vec![
            vec![false, false, true, false],
            vec![true, false, false, true],
            vec![false; 4],
        ];
        align_first_pulse(&mut rows);
        assert_eq!(rows[0], [true, false, false, false]);
        assert_eq!(rows[1], [true, false, false, true]);
        assert_eq!(rows[2], [false; 4]);
    }

    #[test]
    fn bounds_pad_and_skip_non_finite() {
        let (lo, hi) = bounds([1.0, f64::NAN, 3.0].into_iter()).unwrap();
        assert!((lo - 0.9).abs() < 1e-12 && (hi - 3.1).abs() < 1e-12);
        assert!(bounds([f64::NAN].into_iter()).is_none());
    }
}
