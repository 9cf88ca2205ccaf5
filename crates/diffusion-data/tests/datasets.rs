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
