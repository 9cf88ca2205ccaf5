//! Reading and writing 2-D arrays of points as CSV or NumPy `.npy` (little-endian `<f4`/`<f8`,
//! C order). The format is chosen by the file extension.

use std::fs;
use std::io::Write;
use std::path::Path;

/// Why data could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file system refused.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file's contents are not a valid array.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A parameter or value is invalid.
    #[error("{0}")]
    Invalid(String),
}

/// A dense row-major `[rows, cols]` array of f32.
#[derive(Debug, Clone, PartialEq)]
pub struct Array2 {
    /// Number of rows (points).
    pub rows: usize,
    /// Number of columns (dimensions).
    pub cols: usize,
    /// Row-major values, `rows * cols` of them.
    pub data: Vec<f32>,
}

impl Array2 {
    /// Wraps row-major data; `data.len()` must be `rows * cols`.
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self, DataError> {
        if data.len() != rows * cols {
            return Err(DataError::Invalid(format!(
                "array of {} values cannot have shape [{rows}, {cols}]",
                data.len()
            )));
        }
        Ok(Self { rows, cols, data })
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// Errors unless every value is finite; names the first bad row and column (0-based).
    pub fn check_finite(&self, path: &str) -> Result<(), DataError> {
        match self.data.iter().position(|v| !v.is_finite()) {
            None => Ok(()),
            Some(i) => Err(DataError::Format {
                path: path.into(),
                message: format!(
                    "non-finite value {} at row {}, column {}",
                    self.data[i],
                    i / self.cols.max(1),
                    i % self.cols.max(1)
                ),
            }),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Format {
    Csv,
    Npy,
}

fn format_of(path: &Path) -> Result<Format, DataError> {
    match path.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("csv") => Ok(Format::Csv),
        Some(e) if e.eq_ignore_ascii_case("npy") => Ok(Format::Npy),
        _ => Err(DataError::Invalid(format!(
            "{}: unknown file type; use a .csv or .npy file",
            path.display()
        ))),
    }
}

/// Checks that `path` names a .csv or .npy file, before any work is done.
pub fn check_extension(path: &Path) -> Result<(), DataError> {
    format_of(path).map(|_| ())
}

/// Reads an array from a .csv or .npy file, refusing non-finite values.
pub fn read(path: &Path) -> Result<Array2, DataError> {
    let bytes = fs::read(path).map_err(|source| DataError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse(&bytes, path)
}

/// Parses the bytes of a .csv or .npy file (`path` gives the format and the name in errors),
/// refusing empty arrays and non-finite values. Never panics, whatever the bytes.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Array2, DataError> {
    let shown = path.display().to_string();
    let array = match format_of(path)? {
        Format::Csv => parse_csv(bytes, &shown)?,
        Format::Npy => parse_npy(bytes, &shown)?,
    };
    if array.rows == 0 {
        return Err(DataError::Format {
            path: shown,
            message: "no data rows".into(),
        });
    }
    array.check_finite(&shown)?;
    Ok(array)
}

/// Writes an array to a .csv (with a header `x0,x1,...`) or .npy file, through a temporary file
/// renamed into place so that a failed write leaves no partial file.
pub fn write(path: &Path, array: &Array2) -> Result<(), DataError> {
    let bytes = match format_of(path)? {
        Format::Csv => to_csv(array),
        Format::Npy => to_npy(array),
    };
    write_atomic(path, &bytes).map_err(|source| DataError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Writes `bytes` to `path` via a temporary file in the same folder, fsync, then rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn to_csv(a: &Array2) -> Vec<u8> {
    let mut s = String::with_capacity(a.data.len() * 12);
    let header: Vec<String> = (0..a.cols).map(|j| format!("x{j}")).collect();
    s.push_str(&header.join(","));
    s.push('\n');
    for i in 0..a.rows {
        let row: Vec<String> = a.row(i).iter().map(|v| v.to_string()).collect();
        s.push_str(&row.join(","));
        s.push('\n');
    }
    s.into_bytes()
}

fn parse_csv(bytes: &[u8], path: &str) -> Result<Array2, DataError> {
    let fail = |message: String| DataError::Format {
        path: path.into(),
        message,
    };
    let text = std::str::from_utf8(bytes).map_err(|_| fail("not UTF-8 text".into()))?;
    let mut data = Vec::new();
    let mut cols = None;
    let mut rows = 0;
    for (lineno, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let parsed: Result<Vec<f32>, _> = fields.iter().map(|f| f.parse::<f32>()).collect();
        let values = match parsed {
            Ok(v) => v,
            // A header line is allowed first.
            Err(_) if rows == 0 && cols.is_none() => {
                cols = Some(fields.len());
                continue;
            }
            Err(_) => {
                return Err(fail(format!(
                    "line {}: not a list of numbers: {line:?}",
                    lineno + 1
                )));
            }
        };
        match cols {
            Some(c) if c != values.len() => {
                return Err(fail(format!(
                    "line {}: {} columns, expected {c}",
                    lineno + 1,
                    values.len()
                )));
            }
            _ => cols = Some(values.len()),
        }
        data.extend(values);
        rows += 1;
    }
    Array2::new(rows, cols.unwrap_or(0), data).map_err(|e| fail(e.to_string()))
}

fn to_npy(a: &Array2) -> Vec<u8> {
    let dict = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
        a.rows, a.cols
    );
    // magic (6) + version (2) + header length (2) + dict + padding + '\n', a multiple of 64
    let unpadded = 10 + dict.len() + 1;
    let pad = (64 - unpadded % 64) % 64;
    let header = format!("{dict}{}\n", " ".repeat(pad));
    let mut out = Vec::with_capacity(10 + header.len() + 4 * a.data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in &a.data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

fn parse_npy(bytes: &[u8], path: &str) -> Result<Array2, DataError> {
    let fail = |message: &str| DataError::Format {
        path: path.into(),
        message: format!("not a valid .npy file: {message}"),
    };
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(fail("missing magic string"));
    }
    let (header_len, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(fail("unsupported version")),
    };
    let end = start
        .checked_add(header_len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| fail("truncated header"))?;
    let header = std::str::from_utf8(&bytes[start..end]).map_err(|_| fail("header not text"))?;
    let field = |key: &str| -> Option<&str> {
        let i = header.find(&format!("'{key}'"))?;
        let rest = header[i + key.len() + 2..].trim_start().strip_prefix(':')?;
        Some(rest.trim_start())
    };
    let descr = field("descr").ok_or_else(|| fail("no descr"))?;
    let width = if descr.starts_with("'<f4'") {
        4
    } else if descr.starts_with("'<f8'") {
        8
    } else {
        return Err(fail("dtype must be little-endian float32 or float64"));
    };
    if !field("fortran_order").is_some_and(|f| f.starts_with("False")) {
        return Err(fail("Fortran order is not supported"));
    }
    let shape_text = field("shape").ok_or_else(|| fail("no shape"))?;
    let inner = shape_text
        .strip_prefix('(')
        .ok_or_else(|| fail("bad shape"))?;
    let close = inner.find(')').ok_or_else(|| fail("bad shape"))?;
    let dims: Result<Vec<usize>, _> = inner[..close]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::parse::<usize>)
        .collect();
    let dims = dims.map_err(|_| fail("bad shape"))?;
    let (rows, cols) = match dims[..] {
        [n] => (n, 1),
        [n, d] => (n, d),
        _ => return Err(fail("array must be 1-D or 2-D")),
    };
    let count = rows
        .checked_mul(cols)
        .filter(|c| c.checked_mul(width).is_some())
        .ok_or_else(|| fail("shape too large"))?;
    let body = &bytes[end..];
    if body.len() != count * width {
        return Err(fail(&format!(
            "expected {} bytes of data for shape [{rows}, {cols}], found {}",
            count * width,
            body.len()
        )));
    }
    let data = if width == 4 {
        body.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        body.chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect()
    };
    Array2::new(rows, cols, data).map_err(|e| fail(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("diffusion-data-{name}-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn csv_and_npy_round_trip() {
        let dir = tmpdir("rt");
        let a = Array2::new(3, 2, vec![1.5, -2.0, 0.25, 3.0e-7, -1e6, 7.0]).unwrap();
        for name in ["a.csv", "a.npy"] {
            let p = dir.join(name);
            write(&p, &a).unwrap();
            assert_eq!(read(&p).unwrap(), a, "{name}");
        }
        let npy = fs::read(dir.join("a.npy")).unwrap();
        assert_eq!(&npy[..8], b"\x93NUMPY\x01\x00");
        let header_len = u16::from_le_bytes([npy[8], npy[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        assert_eq!(npy.len(), 10 + header_len + 24);
    }

    #[test]
    fn bad_files_are_refused_with_a_reason() {
        let dir = tmpdir("bad");
        let cases: [(&str, &[u8], &str); 6] = [
            (
                "nan.csv",
                b"x0,x1\n1,2\nnan,3\n",
                "non-finite value NaN at row 1",
            ),
            ("ragged.csv", b"1,2\n3\n", "line 2: 1 columns"),
            (
                "words.csv",
                b"1,2\n3,abc\n",
                "line 2: not a list of numbers",
            ),
            ("empty.csv", b"x0,x1\n", "no data rows"),
            (
                "short.npy",
                b"\x93NUMPY\x01\x00\x10\x00{'descr'",
                "truncated header",
            ),
            ("junk.npy", b"hello world, not numpy", "missing magic"),
        ];
        for (name, bytes, want) in cases {
            let p = dir.join(name);
            fs::write(&p, bytes).unwrap();
            let err = read(&p).unwrap_err().to_string();
            assert!(err.contains(want), "{name}: {err}");
        }
        let mut npy = to_npy(&Array2::new(2, 2, vec![1.0; 4]).unwrap());
        npy.truncate(npy.len() - 3);
        fs::write(dir.join("trunc.npy"), &npy).unwrap();
        let err = read(&dir.join("trunc.npy")).unwrap_err().to_string();
        assert!(err.contains("expected 16 bytes"), "{err}");
        assert!(read(&dir.join("a.txt")).is_err());
    }

    /// Found by tests/fuzz_io.rs: a `)` before the shape's `(` made the parser slice `[1..0]`
    /// and panic; a shape whose byte count overflows must not panic either.
    #[test]
    fn malformed_shapes_are_errors() {
        let npy = to_npy(&Array2::new(3, 1, vec![0.0; 3]).unwrap());
        let text = String::from_utf8_lossy(&npy[10..]).into_owned();
        for (from, to) in [
            ("'shape': (", "'shape': )("),
            ("(3, 1)", "(4611686018427387904, 1)"),
        ] {
            let header = text.replacen(from, to, 1);
            let mut bad = npy[..8].to_vec();
            bad.extend_from_slice(&(header.len() as u16).to_le_bytes());
            bad.extend_from_slice(header.as_bytes());
            let err = parse(&bad, Path::new("f.npy")).unwrap_err().to_string();
            assert!(err.contains("shape"), "{to}: {err}");
        }
    }
}
