//! `metrics.csv`: a row `step,loss_bits,lr,wall_time_s` every `log_every` steps, written and
//! read through one serde type ([`MetricsRow`]) and the `csv` crate.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::run::{RunDir, RunError};

/// The file's name in a run folder.
pub const FILE: &str = "metrics.csv";

/// Its header line's fields, [`MetricsRow`]'s fields in order.
const HEADER: [&str; 4] = ["step", "loss_bits", "lr", "wall_time_s"];

/// One row of `metrics.csv`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MetricsRow {
    /// Steps done.
    pub step: usize,
    /// The mean training loss since the previous row (bits for the bound; see
    /// [`crate::config::LossKind`] for the others).
    pub loss_bits: f64,
    /// The learning rate of the last of those steps.
    pub lr: f64,
    /// Training wall time so far, seconds (rounded to milliseconds).
    pub wall_time_s: f64,
}

fn corrupt(path: &Path, message: String) -> RunError {
    RunError::Corrupt {
        path: path.display().to_string(),
        message,
    }
}

/// The rows of a `metrics.csv` file, refusing a missing header or a malformed row (by line).
pub fn read(path: &Path) -> Result<Vec<MetricsRow>, RunError> {
    let bytes = fs::read(path).map_err(|source| RunError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse(&bytes, path)
}

/// [`read`] of bytes already in memory (`path` names them in errors).
pub fn parse(bytes: &[u8], path: &Path) -> Result<Vec<MetricsRow>, RunError> {
    let mut reader = csv::Reader::from_reader(bytes);
    let header = reader
        .headers()
        .map_err(|e| corrupt(path, format!("not a metrics file: {e}")))?;
    if header.iter().ne(HEADER) {
        return Err(corrupt(path, "not a metrics file (wrong header)".into()));
    }
    reader
        .deserialize::<MetricsRow>()
        .map(|row| {
            row.map_err(|e| {
                let line = e.position().map_or(0, |p| p.line());
                corrupt(path, format!("line {line} is not a metrics row"))
            })
        })
        .collect()
}

fn to_bytes(rows: &[MetricsRow]) -> Vec<u8> {
    let mut w = csv::Writer::from_writer(Vec::new());
    if rows.is_empty() {
        w.write_record(HEADER).expect("writing to memory");
    }
    for row in rows {
        w.serialize(row).expect("writing to memory");
    }
    w.into_inner().expect("writing to memory")
}

/// Appends rows to a run's `metrics.csv` as training goes.
pub struct MetricsWriter {
    file: fs::File,
    path: std::path::PathBuf,
}

impl MetricsWriter {
    /// Starts the run's `metrics.csv` afresh (a header only), or, with `keep_until = Some(step)`
    /// (a resumed run), keeps the rows of steps up to `step` and drops the rest.
    pub fn open(run: &RunDir, keep_until: Option<usize>) -> Result<Self, RunError> {
        let path = run.file(FILE);
        let kept: Vec<MetricsRow> = match keep_until {
            // A resumed run's file may end in a row cut short by the crash: keep what parses.
            Some(step) => fs::read(&path)
                .map(|bytes| {
                    csv::Reader::from_reader(&bytes[..])
                        .deserialize::<MetricsRow>()
                        .map_while(Result::ok)
                        .filter(|r| r.step <= step)
                        .collect()
                })
                .unwrap_or_default(),
            None => Vec::new(),
        };
        run.write(FILE, &to_bytes(&kept))?;
        let file = fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|source| RunError::Io {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Self { file, path })
    }

    fn io(&self, source: std::io::Error) -> RunError {
        RunError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// Appends one row and flushes it to the file.
    pub fn append(&mut self, row: MetricsRow) -> Result<(), RunError> {
        use std::io::Write;
        let mut w = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(Vec::new());
        w.serialize(MetricsRow {
            wall_time_s: (row.wall_time_s * 1000.0).round() / 1000.0,
            ..row
        })
        .expect("writing to memory");
        let bytes = w.into_inner().expect("writing to memory");
        self.file.write_all(&bytes).map_err(|e| self.io(e))?;
        self.file.flush().map_err(|e| self.io(e))
    }

    /// Makes the rows so far durable (before a checkpoint names this step).
    pub fn sync(&self) -> Result<(), RunError> {
        self.file.sync_data().map_err(|e| self.io(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_a_resume_keeps_the_rows_up_to_its_step() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path(), false).unwrap();
        let mut w = MetricsWriter::open(&run, None).unwrap();
        let rows: Vec<MetricsRow> = (1..=4)
            .map(|i| MetricsRow {
                step: 100 * i,
                loss_bits: -1.0 / i as f64,
                lr: 1e-3 * 0.5f64.powi(i as i32),
                wall_time_s: 0.25 * i as f64,
            })
            .collect();
        for r in &rows {
            w.append(*r).unwrap();
        }
        let text = fs::read_to_string(run.file(FILE)).unwrap();
        assert!(text.starts_with("step,loss_bits,lr,wall_time_s\n100,-1.0,0.0005,0.25\n"));
        assert_eq!(read(&run.file(FILE)).unwrap(), rows);
        // a crash mid-row, then a resume from step 200
        fs::write(run.file(FILE), format!("{text}500,-0.2")).unwrap();
        let mut w = MetricsWriter::open(&run, Some(200)).unwrap();
        assert_eq!(read(&run.file(FILE)).unwrap(), rows[..2]);
        w.append(rows[2]).unwrap();
        assert_eq!(read(&run.file(FILE)).unwrap(), rows[..3]);
    }

    #[test]
    fn a_malformed_file_is_refused_with_its_line() {
        let err = parse(
            b"step,loss_bits,lr,wall_time_s\n1,2,3,4\n2,x,3,4\n",
            Path::new("m"),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(err, "m: line 3 is not a metrics row");
        let err = parse(b"a,b\n1,2\n", Path::new("m"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("wrong header"), "{err}");
    }
}
