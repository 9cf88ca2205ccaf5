//! The sample files in `datasets/` hold exactly what the commands in its README generate.

use diffusion_data::{Heartbeat, SwissRoll, io};

fn file(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../datasets")
        .join(name)
}

#[test]
fn the_swiss_roll_samples_are_the_generator_at_seed_0() {
    let want = SwissRoll::new(0.5).unwrap().stream(0).next_batch(1000);
    for name in ["swiss_roll_1000.csv", "swiss_roll_1000.npy"] {
        let a = io::read(&file(name)).unwrap();
        assert_eq!((a.rows, a.cols), (1000, 2), "{name}");
        assert_eq!(a.data, want, "{name}");
    }
}

#[test]
fn the_heartbeat_samples_are_the_generator_at_seed_0() {
    let beat = Heartbeat::new(20, 5).unwrap();
    let want = beat.stream_with(diffusion_data::rng(0, 0)).next_batch(500);
    let a = io::read(&file("heartbeat_500.csv")).unwrap();
    assert_eq!((a.rows, a.cols), (500, 20));
    assert_eq!(a.data, want);
    for row in a.data.chunks_exact(20) {
        assert!(beat.phase_of(row).is_some(), "{row:?}");
    }
}

#[test]
fn the_digits_are_scikit_learns_and_their_binary_copy_is_thresholded_at_8() {
    let counts = io::read(&file("digits.npy")).unwrap();
    let bits = io::read(&file("digits_binary.npy")).unwrap();
    assert_eq!((counts.rows, counts.cols), (1797, 64));
    assert_eq!((bits.rows, bits.cols), (1797, 64));
    // the first image (a 0), as `sklearn.datasets.load_digits().data[0]` begins
    assert_eq!(
        counts.data[..16],
        [
            0., 0., 5., 13., 9., 1., 0., 0., 0., 0., 13., 15., 10., 15., 5., 0.
        ]
    );
    assert!(
        counts
            .data
            .iter()
            .all(|&v| (0.0..=16.0).contains(&v) && v.fract() == 0.0)
    );
    assert_eq!(
        counts.data.iter().map(|&v| v as f64).sum::<f64>(),
        561_718.0
    );
    for (c, b) in counts.data.iter().zip(&bits.data) {
        assert_eq!(*b, if *c >= 8.0 { 1.0 } else { 0.0 });
    }
}

/// datasets/mnist holds what `scripts/make_mnist.py` printed when it made the files: the
/// counts of each label, the sum of all pixels and the first label of each split, and no digit
/// in both.
#[test]
fn the_mnist_splits_are_what_the_script_made() {
    use diffusion_data::idx;
    let splits = [
        (
            "train",
            9000,
            [893, 1014, 899, 940, 876, 784, 899, 966, 844, 885],
            235_878_671u64,
            8u8,
        ),
        (
            "t10k",
            1000,
            [108, 113, 92, 92, 104, 79, 115, 104, 100, 93],
            26_267_929,
            2,
        ),
    ];
    let mut seen = std::collections::HashSet::new();
    for (prefix, n, counts, pixel_sum, first) in splits {
        let images = idx::read(&file(&format!("mnist/{prefix}-images-idx3-ubyte.gz"))).unwrap();
        let labels = idx::read(&file(&format!("mnist/{prefix}-labels-idx1-ubyte.gz"))).unwrap();
        assert_eq!(images.dims, vec![n, 28, 28], "{prefix}");
        assert_eq!(labels.dims, vec![n], "{prefix}");
        let mut got = [0usize; 10];
        labels.data.iter().for_each(|&l| got[l as usize] += 1);
        assert_eq!(got, counts, "{prefix}");
        assert_eq!(labels.data[0], first, "{prefix}");
        let sum: u64 = images.data.iter().map(|&v| v as u64).sum();
        assert_eq!(sum, pixel_sum, "{prefix}");
        for image in images.data.chunks_exact(784) {
            assert!(seen.insert(image.to_vec()), "{prefix}: a digit twice");
        }
    }
}

/// An IDX file is also data for `--data`: one row per digit, its 784 pixels 0..255; IDX files
/// are read, never written.
#[test]
fn idx_images_read_as_rows_and_are_not_an_output_format() {
    use diffusion_data::{idx, io};
    let path = file("mnist/t10k-images-idx3-ubyte.gz");
    let rows = io::read(&path).unwrap();
    let images = idx::read(&path).unwrap();
    assert_eq!((rows.rows, rows.cols), (1000, 784));
    assert!(
        rows.data
            .iter()
            .zip(&images.data)
            .all(|(&r, &b)| r == b as f32)
    );
    let err = io::check_extension(std::path::Path::new("out-ubyte.gz")).unwrap_err();
    assert!(
        err.to_string().contains("IDX files are read, not written"),
        "{err}"
    );
    let err = io::parse(b"\x89PNG", std::path::Path::new("digits.png")).unwrap_err();
    assert!(err.to_string().contains("unknown file type"), "{err}");
}
