//! Property tests (fuzzing) of the data-file readers (our use of the `csv` and `npyz` crates): whatever the bytes, `io::parse` returns an
//! array or an error, never panics; what `io::write` writes parses back to the same array.

use std::path::Path;

use diffusion_data::{Array2, io};
use proptest::prelude::*;

fn arrays() -> impl Strategy<Value = Array2> {
    (1usize..6, 1usize..5).prop_flat_map(|(rows, cols)| {
        prop::collection::vec(-1e6f32..1e6, rows * cols)
            .prop_map(move |data| Array2::new(rows, cols, data).unwrap())
    })
}

/// The bytes io::write produces for `array` as `ext`.
fn written(array: &Array2, ext: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("a.{ext}"));
    io::write(&path, array).unwrap();
    std::fs::read(&path).unwrap()
}

/// Text made of the characters a CSV parser cares about.
fn csv_like() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![
            "0", "1", "7", ".", ",", "-", "+", "e", "E", "\n", "\r\n", " ", "x0", "NaN", "inf",
            "\"", "1e999", "#", "\u{feff}", "é",
        ]),
        0..60,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = io::parse(&bytes, Path::new("f.csv"));
        let _ = io::parse(&bytes, Path::new("f.npy"));
        let _ = io::parse(&bytes, Path::new("f-ubyte"));
    }

    /// IDX bytes behind a valid magic number (unsigned bytes, 1 to 4 dimensions): an array of
    /// the header's shape, or an error.
    #[test]
    fn idx_like_bytes_never_panic(rank in 1u8..5, rest in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut bytes = vec![0, 0, 8, rank];
        bytes.extend(rest);
        if let Ok(a) = io::parse(&bytes, Path::new("f-ubyte")) {
            prop_assert!(a.rows >= 1 && a.cols >= 1);
            prop_assert_eq!(a.data.len(), a.rows * a.cols);
            prop_assert!(a.data.iter().all(|v| (0.0..=255.0).contains(v)));
        }
    }

    #[test]
    fn csv_like_text_never_panics(text in csv_like()) {
        if let Ok(a) = io::parse(text.as_bytes(), Path::new("f.csv")) {
            prop_assert!(a.rows >= 1 && a.cols >= 1);
            prop_assert_eq!(a.data.len(), a.rows * a.cols);
            prop_assert!(a.data.iter().all(|v| v.is_finite()));
        }
    }

    #[test]
    fn written_files_parse_back(array in arrays()) {
        for ext in ["csv", "npy"] {
            let back = io::parse(&written(&array, ext), Path::new(&format!("f.{ext}"))).unwrap();
            prop_assert_eq!((back.rows, back.cols), (array.rows, array.cols));
            prop_assert_eq!(&back.data, &array.data);
        }
    }

    /// Damaged .npy files: a byte changed, the file cut short, or bytes inserted.
    #[test]
    fn damaged_npy_never_panics(
        array in arrays(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        how in 0u8..3,
    ) {
        let mut bytes = written(&array, "npy");
        let i = at.index(bytes.len());
        match how {
            0 => bytes[i] = byte,
            1 => bytes.truncate(i),
            _ => bytes.insert(i, byte),
        }
        if let Ok(a) = io::parse(&bytes, Path::new("f.npy")) {
            prop_assert_eq!(a.data.len(), a.rows * a.cols);
        }
    }
}
