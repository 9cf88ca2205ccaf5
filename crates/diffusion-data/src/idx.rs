//! MNIST's IDX format (LeCun et al.): a big-endian header, then the values row-major. The magic
//! number's third byte is the element type (only `0x08`, unsigned bytes, here: MNIST's images and
//! labels) and its fourth the number of dimensions, each given next as a 32-bit size. Files may
//! be gzipped (told by gzip's own magic bytes, not by the name).

use std::io::Read;
use std::path::Path;

use crate::array::DataError;

/// An IDX array of unsigned bytes: its dimensions (`[n]` for labels, `[n, h, w]` for images)
/// and its values, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimensions, outermost first.
    pub dims: Vec<usize>,
    /// `dims.iter().product()` values, row-major.
    pub data: Vec<u8>,
}

/// Reads an IDX file of unsigned bytes, gzipped or not.
pub fn read(path: &Path) -> Result<IdxArray, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse(&bytes).map_err(|message| DataError::Format {
        path: path.display().to_string(),
        message,
    })
}

/// Parses the bytes of an IDX file of unsigned bytes, gzipped or not.
pub fn parse(bytes: &[u8]) -> Result<IdxArray, String> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut raw)
            .map_err(|e| format!("not a valid gzip stream: {e}"))?;
        return parse_raw(&raw);
    }
    parse_raw(bytes)
}

fn parse_raw(bytes: &[u8]) -> Result<IdxArray, String> {
    let Some(magic) = bytes.get(..4) else {
        return Err("not an IDX file: shorter than its 4-byte magic number".into());
    };
    if magic[0] != 0 || magic[1] != 0 {
        return Err("not an IDX file: its magic number does not start with two zero bytes".into());
    }
    if magic[2] != 0x08 {
        return Err(format!(
            "IDX element type 0x{:02x}: only unsigned bytes (0x08) are read",
            magic[2]
        ));
    }
    let rank = magic[3] as usize;
    if rank == 0 {
        return Err("IDX file with no dimensions".into());
    }
    let header = 4 + 4 * rank;
    let Some(sizes) = bytes.get(4..header) else {
        return Err(format!(
            "truncated IDX header: {rank} dimensions need {header} bytes, the file has {}",
            bytes.len()
        ));
    };
    let dims: Vec<usize> = sizes
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or("IDX dimensions overflow")?;
    let data = &bytes[header..];
    if data.len() != count {
        return Err(format!(
            "IDX dimensions {dims:?} need {count} values, the file has {}{}",
            data.len(),
            if data.len() < count {
                " (truncated)"
            } else {
                ""
            }
        ));
    }
    Ok(IdxArray {
        dims,
        data: data.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, 0x08, dims.len() as u8];
        for d in dims {
            out.extend(d.to_be_bytes());
        }
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn plain_and_gzipped_files_give_the_same_array() {
        let bytes = idx(
            &[2, 2, 3],
            &[0, 1, 2, 3, 4, 5, 250, 251, 252, 253, 254, 255],
        );
        let plain = parse(&bytes).unwrap();
        assert_eq!(plain.dims, vec![2, 2, 3]);
        assert_eq!(plain.data[6], 250);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &bytes).unwrap();
        assert_eq!(parse(&gz.finish().unwrap()).unwrap(), plain);
    }

    #[test]
    fn broken_files_are_refused_with_the_reason() {
        let full = idx(&[2, 3], &[1, 2, 3, 4, 5, 6]);
        let cases: [(Vec<u8>, &str); 6] = [
            (full[..full.len() - 1].to_vec(), "truncated"),
            (full[..6].to_vec(), "truncated IDX header"),
            (vec![1, 2], "shorter than"),
            (b"PK\x03\x04rest".to_vec(), "two zero bytes"),
            (
                vec![0, 0, 0x0d, 1, 0, 0, 0, 1, 0, 0, 0, 0],
                "element type 0x0d",
            ),
            (vec![0x1f, 0x8b, 8, 0, 1, 2], "gzip"),
        ];
        for (bytes, want) in cases {
            let err = parse(&bytes).unwrap_err();
            assert!(err.contains(want), "{err} lacks {want}");
        }
    }
}
