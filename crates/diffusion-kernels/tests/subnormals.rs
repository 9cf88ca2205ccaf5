//! `flush_subnormals`: subnormal products become zero on the thread that calls it and (Linux) on
//! the threads it starts afterwards; other threads keep them.

use std::hint::black_box;

fn product() -> f32 {
    // 1e-30 * 1e-10 = 1e-40, under f32's smallest normal 1.18e-38
    black_box(1e-30f32) * black_box(1e-10f32)
}

#[test]
fn subnormals_are_flushed_on_the_thread_and_its_children() {
    let unflushed = std::thread::spawn(product).join().unwrap();
    assert!(unflushed > 0.0 && !unflushed.is_normal(), "{unflushed:e}");
    let (here, child) = std::thread::spawn(|| {
        if !diffusion_kernels::flush_subnormals() {
            // not x86-64: nothing is changed
            return (product(), std::thread::spawn(product).join().unwrap());
        }
        // a subnormal input reads as zero too (DAZ): 1.4e-45 * 1e30 would be a normal 1.4e-15
        let input = black_box(f32::from_bits(1)) * black_box(1e30f32);
        assert_eq!(input, 0.0);
        (product(), std::thread::spawn(product).join().unwrap())
    })
    .join()
    .unwrap();
    if cfg!(all(target_arch = "x86_64", target_os = "linux")) {
        assert_eq!((here, child), (0.0, 0.0));
    } else if cfg!(target_arch = "x86_64") {
        // whether a new thread inherits MXCSR is the operating system's choice
        assert_eq!(here, 0.0);
    } else {
        assert_eq!((here, child), (unflushed, unflushed));
    }
}
