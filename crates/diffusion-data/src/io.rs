//! Reading and writing 2-D arrays of points as CSV (through the `csv` crate) or NumPy `.npy`
//! (through `npyz`; little-endian `<f4`/`<f8`, C order), and reading MNIST's IDX files of bytes
//! (names ending `-ubyte`, `.idx`, either with `.gz`: [`crate::idx`]) as one row per item, its
//! values flattened. The format is chosen by the file name.

use std::fs;
use std::io::Write;
use std::path::Path;

pub use crate::array::{Array2, DataError, ImageShape};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Format {
    Csv,
    Npy,
    Idx,
}

fn format_of(path: &Path) -> Result<Format, DataError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let stem = name.strip_suffix(".gz").unwrap_or(&name);
    match path.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("csv") => Ok(Format::Csv),
        Some(e) if e.eq_ignore_ascii_case("npy") => Ok(Format::Npy),
        _ if stem.ends_with("-ubyte") || stem.ends_with(".idx") => Ok(Format::Idx),
        _ => Err(DataError::Invalid(format!(
            "{}: unknown file type; use a .csv or .npy file, or an IDX file (-ubyte or .idx, \
             gzipped or not)",
            path.display()
        ))),
    }
}

/// The format of a file to write: .csv or .npy.
fn output_format_of(path: &Path) -> Result<Format, DataError> {
    match format_of(path) {
        Ok(Format::Idx) => Err(DataError::Invalid(format!(
            "{}: IDX files are read, not written; write a .csv or .npy file",
            path.display()
        ))),
        Ok(f) => Ok(f),
        Err(_) => Err(DataError::Invalid(format!(
            "{}: unknown file type; use a .csv or .npy file",
            path.display()
        ))),
    }
}

/// Checks that `path` names a .csv or .npy file to write, before any work is done.
pub fn check_extension(path: &Path) -> Result<(), DataError> {
    output_format_of(path).map(|_| ())
}

/// Reads an array from a .csv or .npy file, refusing non-finite values.
pub fn read(path: &Path) -> Result<Array2, DataError> {
    read_shaped(path).map(|(a, _)| a)
}

/// [`read`], with the image shape of each row when the file has one: an IDX file of rank 3 or
/// 4, an `.npy` of shape `[n, h, w]` or `[n, c, h, w]` (rows flattened channel-first), or a
/// folder of PNG files ([`crate::png_folder`]).
pub fn read_shaped(path: &Path) -> Result<(Array2, Option<ImageShape>), DataError> {
    if path.is_dir() {
        return crate::png_folder::read_folder(path).map(|(a, s)| (a, Some(s)));
    }
    let bytes = fs::read(path).map_err(|source| DataError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse_shaped(&bytes, path)
}

/// Parses the bytes of a .csv or .npy file (`path` gives the format and the name in errors),
/// refusing empty arrays and non-finite values. Never panics, whatever the bytes.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Array2, DataError> {
    parse_shaped(bytes, path).map(|(a, _)| a)
}

/// [`parse`], with the rows' image shape where the file has one (see [`read_shaped`]).
pub fn parse_shaped(bytes: &[u8], path: &Path) -> Result<(Array2, Option<ImageShape>), DataError> {
    let shown = path.display().to_string();
    let (array, shape) = parse_any(bytes, path, &shown)?;
    array.check_finite(&shown)?;
    Ok((array, shape))
}

/// Reads an array from a .csv or .npy file in which NaN (`nan` in a CSV) marks a missing value,
/// as in a file of conditions; infinities are refused.
pub fn read_with_gaps(path: &Path) -> Result<Array2, DataError> {
    let bytes = fs::read(path).map_err(|source| DataError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let shown = path.display().to_string();
    let (array, _) = parse_any(&bytes, path, &shown)?;
    if let Some(i) = array.data.iter().position(|v| v.is_infinite()) {
        return Err(DataError::Format {
            path: shown,
            message: format!(
                "infinite value at row {}, column {}",
                i / array.cols.max(1),
                i % array.cols.max(1)
            ),
        });
    }
    Ok(array)
}

fn parse_any(
    bytes: &[u8],
    path: &Path,
    shown: &str,
) -> Result<(Array2, Option<ImageShape>), DataError> {
    let (array, shape) = match format_of(path)? {
        Format::Csv => (parse_csv(bytes, shown)?, None),
        Format::Npy => parse_npy(bytes, shown)?,
        Format::Idx => {
            let a = crate::idx::parse(bytes).map_err(|message| DataError::Format {
                path: shown.into(),
                message,
            })?;
            let cols: usize = a.dims[1..].iter().product();
            if cols == 0 {
                return Err(DataError::Format {
                    path: shown.into(),
                    message: format!("IDX dimensions {:?}: items of no values", a.dims),
                });
            }
            if a.dims.len() > 4 {
                return Err(DataError::Format {
                    path: shown.into(),
                    message: format!(
                        "IDX dimensions {:?}: at most 4 (items, channels, height, width)",
                        a.dims
                    ),
                });
            }
            let array = Array2 {
                rows: a.dims[0],
                cols,
                data: a.data.iter().map(|&v| v as f32).collect(),
            };
            (array, ImageShape::of_item_dims(&a.dims[1..]))
        }
    };
    if array.rows == 0 {
        return Err(DataError::Format {
            path: shown.into(),
            message: "no data rows".into(),
        });
    }
    Ok((array, shape))
}

/// Writes an array to a .csv (with a header `x0,x1,...`) or .npy file, through a temporary file
/// renamed into place so that a failed write leaves no partial file.
pub fn write(path: &Path, array: &Array2) -> Result<(), DataError> {
    let io_err = |source| DataError::Io {
        path: path.display().to_string(),
        source,
    };
    let bytes = match output_format_of(path)? {
        Format::Csv => to_csv(array).map_err(io_err)?,
        _ => to_npy(array).map_err(io_err)?,
    };
    write_atomic(path, &bytes).map_err(io_err)
}

/// Writes `bytes` to `path` through a temporary file in the same folder (`tempfile`), `fsync`ed
/// and then renamed over `path`, so a reader sees the old file or the new one, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".diffusion-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map(|_| ()).map_err(|e| e.error)
}

fn to_csv(a: &Array2) -> std::io::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::with_capacity(a.data.len() * 12));
    w.write_record((0..a.cols).map(|j| format!("x{j}")))?;
    for i in 0..a.rows {
        w.write_record(a.row(i).iter().map(|v| v.to_string()))?;
    }
    w.into_inner().map_err(|e| e.into_error())
}

fn parse_csv(bytes: &[u8], path: &str) -> Result<Array2, DataError> {
    let fail = |message: String| DataError::Format {
        path: path.into(),
        message,
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .comment(Some(b'#'))
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let (mut data, mut cols, mut rows) = (Vec::new(), None, 0usize);
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                return Err(fail(match e.kind() {
                    csv::ErrorKind::Utf8 { .. } => format!("line {line}: not UTF-8 text"),
                    _ => format!("line {line}: {e}"),
                }));
            }
        }
        let line = record.position().map_or(0, |p| p.line());
        if record.iter().all(str::is_empty) {
            continue;
        }
        let parsed: Result<Vec<f32>, _> = record.iter().map(str::parse::<f32>).collect();
        let values = match parsed {
            Ok(v) => v,
            // A header line is allowed first.
            Err(_) if rows == 0 && cols.is_none() => {
                cols = Some(record.len());
                continue;
            }
            Err(_) => {
                let text = record.iter().collect::<Vec<_>>().join(",");
                let hint = if text.contains(';') || text.contains('\t') {
                    " (fields must be separated by commas)"
                } else {
                    ""
                };
                return Err(fail(format!(
                    "line {line}: not a list of numbers: {text:?}{hint}"
                )));
            }
        };
        match cols {
            Some(c) if c != values.len() => {
                return Err(fail(format!(
                    "line {line}: {} columns, expected {c}",
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

/// [`write()`] for rows that are images of `shape`: an `.npy` gets the shape `[n, c, h, w]`; a
/// CSV has one row per image, as [`write()`] writes it.
pub fn write_images(path: &Path, array: &Array2, shape: ImageShape) -> Result<(), DataError> {
    if shape.len() != array.cols {
        return Err(DataError::Invalid(format!(
            "rows of {} values are not images of {shape}",
            array.cols
        )));
    }
    if output_format_of(path)? != Format::Npy {
        return write(path, array);
    }
    let dims = [
        array.rows as u64,
        shape.channels as u64,
        shape.height as u64,
        shape.width as u64,
    ];
    let bytes = to_npy_shaped(array, &dims).map_err(|source| DataError::Io {
        path: path.display().to_string(),
        source,
    })?;
    write_atomic(path, &bytes).map_err(|source| DataError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn to_npy(a: &Array2) -> std::io::Result<Vec<u8>> {
    to_npy_shaped(a, &[a.rows as u64, a.cols as u64])
}

fn to_npy_shaped(a: &Array2, dims: &[u64]) -> std::io::Result<Vec<u8>> {
    use npyz::WriterBuilder;
    let mut out = Vec::with_capacity(128 + 4 * a.data.len());
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(dims)
        .writer(&mut out)
        .begin_nd()?;
    w.extend(a.data.iter().copied())?;
    w.finish()?;
    Ok(out)
}

fn parse_npy(bytes: &[u8], path: &str) -> Result<(Array2, Option<ImageShape>), DataError> {
    let fail = |message: &str| DataError::Format {
        path: path.into(),
        message: format!("not a valid .npy file: {message}"),
    };
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(fail("missing magic string"));
    }
    let mut body = bytes;
    let header = npyz::NpyHeader::from_reader(&mut body).map_err(|e| {
        let text = e.to_string();
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            fail("truncated header")
        } else if text.contains("shape") {
            fail(&format!("bad shape ({text})"))
        } else {
            fail(&text)
        }
    })?;
    let width = match header.dtype() {
        npyz::DType::Plain(t) if t.to_string() == "<f4" => 4,
        npyz::DType::Plain(t) if t.to_string() == "<f8" => 8,
        npyz::DType::Plain(t) if ["|u1", "<u1"].contains(&t.to_string().as_str()) => 1,
        _ => {
            return Err(fail(
                "dtype must be little-endian float32 or float64, or uint8",
            ));
        }
    };
    if header.order() != npyz::Order::C {
        return Err(fail("Fortran order is not supported"));
    }
    let dims = header
        .shape()
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| fail("shape too large")))
        .collect::<Result<Vec<usize>, _>>()?;
    let (rows, image) = match dims[..] {
        [n] => (n, None),
        [n, _] => (n, None),
        [n, ..] if dims.len() <= 4 => (n, ImageShape::of_item_dims(&dims[1..])),
        _ => {
            return Err(fail(&format!(
                "array of {} dimensions: must be [n], [n, d], [n, h, w] or [n, c, h, w]",
                dims.len()
            )));
        }
    };
    let cols = dims[1..]
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| fail("shape too large"))?;
    let count = rows
        .checked_mul(cols)
        .filter(|c| c.checked_mul(width).is_some())
        .ok_or_else(|| fail("shape too large"))?;
    if body.len() != count * width {
        return Err(fail(&format!(
            "expected {} bytes of data for shape [{rows}, {cols}], found {}",
            count * width,
            body.len()
        )));
    }
    let npy = npyz::NpyFile::with_header(header, body);
    let data = if width == 1 {
        npy.into_vec::<u8>()
            .map(|v| v.into_iter().map(f32::from).collect())
    } else if width == 4 {
        npy.into_vec::<f32>()
    } else {
        npy.into_vec::<f64>()
            .map(|v| v.into_iter().map(|x| x as f32).collect())
    }
    .map_err(|e| fail(&e.to_string()))?;
    let array = Array2::new(rows, cols, data).map_err(|e| fail(&e.to_string()))?;
    Ok((array, image))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn csv_and_npy_round_trip() {
        let tmp = tmpdir();
        let dir = tmp.path();
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
    fn gaps_are_read_where_asked_for() {
        let tmp = tmpdir();
        let p = tmp.path().join("known.csv");
        fs::write(&p, "x0,x1\nnan,0.5\n1.0,NaN\n").unwrap();
        let a = read_with_gaps(&p).unwrap();
        assert_eq!((a.rows, a.cols), (2, 2));
        assert!(a.data[0].is_nan() && a.data[3].is_nan());
        assert_eq!((a.data[1], a.data[2]), (0.5, 1.0));
        // the plain reader still refuses them, and neither takes infinities
        assert!(read(&p).is_err());
        fs::write(&p, "1.0,inf\n").unwrap();
        assert!(
            read_with_gaps(&p)
                .unwrap_err()
                .to_string()
                .contains("infinite")
        );
    }

    #[test]
    fn bad_files_are_refused_with_a_reason() {
        let tmp = tmpdir();
        let dir = tmp.path();
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
        let mut npy = to_npy(&Array2::new(2, 2, vec![1.0; 4]).unwrap()).unwrap();
        npy.truncate(npy.len() - 3);
        fs::write(dir.join("trunc.npy"), &npy).unwrap();
        let err = read(&dir.join("trunc.npy")).unwrap_err().to_string();
        assert!(err.contains("expected 16 bytes"), "{err}");
        assert!(read(&dir.join("a.txt")).is_err());
    }

    fn npy_of<T: npyz::AutoSerialize + Copy>(dims: &[u64], values: &[T]) -> Vec<u8> {
        use npyz::WriterBuilder;
        let mut out = Vec::new();
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(dims)
            .writer(&mut out)
            .begin_nd()
            .unwrap();
        w.extend(values.iter().copied()).unwrap();
        w.finish().unwrap();
        out
    }

    /// Image arrays: `[n, h, w]` and `[n, c, h, w]` .npy files (uint8 or float) and IDX files
    /// give one flattened row per image and its shape; a 5-D array is refused; images written
    /// back as .npy keep their shape.
    #[test]
    fn image_files_keep_their_shape() {
        let tmp = tmpdir();
        let dir = tmp.path();
        let pixels: Vec<u8> = (0..12).map(|v| v * 20).collect();
        let grey = dir.join("grey.npy");
        fs::write(&grey, npy_of(&[2, 2, 3], &pixels)).unwrap();
        let (a, s) = read_shaped(&grey).unwrap();
        assert_eq!((a.rows, a.cols), (2, 6));
        assert_eq!(a.data[7], 140.0);
        assert_eq!(
            s,
            Some(ImageShape {
                channels: 1,
                height: 2,
                width: 3
            })
        );
        let colour = dir.join("colour.npy");
        let floats: Vec<f64> = (0..24).map(|v| v as f64 / 2.0).collect();
        fs::write(&colour, npy_of(&[2, 3, 2, 2], &floats)).unwrap();
        let (a, s) = read_shaped(&colour).unwrap();
        assert_eq!((a.rows, a.cols, a.data[23]), (2, 12, 11.5));
        let s = s.unwrap();
        assert_eq!((s.channels, s.height, s.width, s.len()), (3, 2, 2, 12));
        let out = dir.join("back.npy");
        write_images(&out, &a, s).unwrap();
        assert_eq!(read_shaped(&out).unwrap(), (a.clone(), Some(s)));
        let wrong = ImageShape {
            channels: 1,
            height: 3,
            width: 3,
        };
        assert!(write_images(&out, &a, wrong).is_err());
        let deep = dir.join("deep.npy");
        fs::write(&deep, npy_of(&[1, 1, 1, 2, 2], &[0u8; 4])).unwrap();
        let err = read_shaped(&deep).unwrap_err().to_string();
        assert!(err.contains("5 dimensions"), "{err}");
        // an IDX file of 2 images of 2 x 3, and a flat 2-D .npy has no shape
        let mut idx = vec![0, 0, 0x08, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3];
        idx.extend(&pixels);
        let idx_path = dir.join("images-idx3-ubyte");
        fs::write(&idx_path, idx).unwrap();
        let (b, t) = read_shaped(&idx_path).unwrap();
        assert_eq!(
            (b.rows, b.cols, t),
            (
                2,
                6,
                Some(ImageShape {
                    channels: 1,
                    height: 2,
                    width: 3
                })
            )
        );
        let flat = dir.join("flat.npy");
        write(&flat, &b).unwrap();
        assert_eq!(read_shaped(&flat).unwrap().1, None);
    }

    #[test]
    fn csv_with_a_byte_order_mark_header_and_comments_is_read() {
        let text = "\u{feff}x,y\r\n# a comment\r\n1, 2.5\r\n\r\n-3,4e-2\r\n";
        let a = parse(text.as_bytes(), Path::new("f.csv")).unwrap();
        assert_eq!(a, Array2::new(2, 2, vec![1.0, 2.5, -3.0, 0.04]).unwrap());
        let b = parse("\u{feff}1,2\n3,4\n".as_bytes(), Path::new("f.csv")).unwrap();
        assert_eq!(b, Array2::new(2, 2, vec![1.0, 2.0, 3.0, 4.0]).unwrap());
        let err = parse(b"1;2\n3;4\n", Path::new("f.csv"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 2") && err.contains("separated by commas"),
            "{err}"
        );
    }

    /// Found by tests/fuzz_io.rs: a `)` before the shape's `(` made the parser slice `[1..0]`
    /// and panic; a shape whose byte count overflows must not panic either.
    #[test]
    fn malformed_shapes_are_errors() {
        let npy = to_npy(&Array2::new(3, 1, vec![0.0; 3]).unwrap()).unwrap();
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
