//! What the timing examples share: the best-of-five timer and the command line's
//! `[N] [REPEATS]`, run on a worker of rayon's pool.

use std::time::Instant;

/// Best of five rounds of `repeats` calls, in microseconds per call.
pub fn time(repeats: usize, f: impl Fn()) -> f64 {
    f();
    (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..repeats {
                f();
            }
            start.elapsed().as_secs_f64() / repeats as f64 * 1e6
        })
        .fold(f64::INFINITY, f64::min)
}

/// Two timings taken in turn, `rounds` rounds of `repeats` calls each (so that a machine whose
/// speed drifts slows both alike): each one's median round, in microseconds per call.
#[allow(dead_code)] // the layers example times one thing at a time
pub fn time_pair(rounds: usize, repeats: usize, f: impl Fn(), g: impl Fn()) -> (f64, f64) {
    let once = |h: &dyn Fn()| {
        let start = Instant::now();
        for _ in 0..repeats {
            h();
        }
        start.elapsed().as_secs_f64() / repeats as f64 * 1e6
    };
    f();
    g();
    let (mut a, mut b): (Vec<f64>, Vec<f64>) = (0..rounds).map(|_| (once(&f), once(&g))).unzip();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    (median(&mut a), median(&mut b))
}

/// Reads `[N] [REPEATS]` (defaults `n` and `repeats`), prints the sizes, the threads and the
/// kernels picked, and runs `run(N, REPEATS)` on a worker of rayon's pool.
pub fn main_with(n: usize, repeats: usize, run: impl FnOnce(usize, usize) + Send) {
    let mut args = std::env::args().skip(1);
    let n = args.next().map_or(n, |a| a.parse().expect("N: a number"));
    let repeats = args
        .next()
        .map_or(repeats, |a| a.parse().expect("REPEATS: a number"));
    println!(
        "n = {n}, {} threads, kernels {:?}",
        rayon::current_num_threads(),
        diffusion_kernels::Isa::detect()
    );
    rayon::ThreadPoolBuilder::new()
        .build()
        .expect("a thread pool")
        .install(|| run(n, repeats));
}
