//! Rayon's workers kept looking for work between the parallel kernels of a training step
//! (OpenMP's active wait, which PyTorch's CPU kernels get by default): a worker that finds no
//! work spins a little, then sleeps, and the next parallel kernel waits for it to wake. A step
//! of the MNIST U-Net runs about 130 parallel kernels with serial stretches between them (Burn's
//! own operations, the autodiff graph), and the other worker slept and woke about as often.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
#[cfg(feature = "flex")]
use std::time::{Duration, Instant};

/// Workers looking for work for a guard now.
#[cfg(feature = "flex")]
static SPINNING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[cfg(feature = "flex")]
/// How long a kept worker looks for work without finding any before it returns to rayon's
/// sleep (a serial stretch that long is rare inside a step).
const IDLE_LIMIT: Duration = Duration::from_millis(20);

/// While it lives, rayon's other workers look for work instead of sleeping ([`busy_workers`]).
#[must_use = "the workers are kept busy while the guard lives"]
pub struct BusyWorkers {
    running: Option<Arc<AtomicBool>>,
}

impl Drop for BusyWorkers {
    fn drop(&mut self) {
        if let Some(running) = &self.running {
            running.store(false, Ordering::Release);
        }
    }
}

/// Keeps every rayon worker but the calling thread looking for work (stealing each parallel
/// kernel's tasks as soon as they are pushed) until the guard drops, or until one of them has
/// found none for 20 ms. Costs a spinning core during the serial stretches; nothing with one
/// thread or without the flex kernels.
pub fn busy_workers() -> BusyWorkers {
    #[cfg(not(feature = "flex"))]
    {
        BusyWorkers { running: None }
    }
    #[cfg(feature = "flex")]
    spin_others()
}

/// [`busy_workers`] with rayon.
#[cfg(feature = "flex")]
fn spin_others() -> BusyWorkers {
    let threads = rayon::current_num_threads();
    if threads < 2 {
        return BusyWorkers { running: None };
    }
    let running = Arc::new(AtomicBool::new(true));
    // a worker that spawns pushes onto its own queue and could pop a spinner itself while it
    // waits in a join: a spinner on the spawning thread returns at once
    let spawner = rayon::current_thread_index();
    let others = threads - usize::from(spawner.is_some());
    for _ in 0..others {
        let running = running.clone();
        rayon::spawn(move || {
            if spawner.is_some() && rayon::current_thread_index() == spawner {
                return;
            }
            SPINNING.fetch_add(1, Ordering::AcqRel);
            let mut found = Instant::now();
            while running.load(Ordering::Acquire) {
                match rayon::yield_now() {
                    Some(rayon::Yield::Executed) => found = Instant::now(),
                    _ if found.elapsed() > IDLE_LIMIT => break,
                    _ => std::hint::spin_loop(),
                }
            }
            SPINNING.fetch_sub(1, Ordering::AcqRel);
        });
    }
    BusyWorkers {
        running: Some(running),
    }
}

/// The threads the flex kernels share (rayon's pool), 1 without flex.
pub fn worker_threads() -> usize {
    #[cfg(feature = "flex")]
    {
        rayon::current_num_threads()
    }
    #[cfg(not(feature = "flex"))]
    {
        1
    }
}

/// `f` of each item, the items spread over the kernels' threads (a task each, the kernels
/// inside a task sharing the threads with the other tasks), the results in the items' order;
/// one after the other without flex.
pub fn map_parallel<I: Send, O: Send>(items: Vec<I>, f: impl Fn(I) -> O + Sync + Send) -> Vec<O> {
    #[cfg(feature = "flex")]
    {
        use rayon::prelude::*;
        items.into_par_iter().with_max_len(1).map(f).collect()
    }
    #[cfg(not(feature = "flex"))]
    {
        items.into_iter().map(f).collect()
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use rayon::prelude::*;

    /// Under the guard, parallel work (nested joins, from a worker and from outside the pool)
    /// gives its exact result; once the guard drops, every kept worker stops looking within
    /// the idle limit.
    #[test]
    fn kept_workers_run_the_work_and_stop_when_the_guard_drops() {
        let sum = |n: u64| (0..n).into_par_iter().map(|i| i * i).sum::<u64>();
        let want = |n: u64| (n - 1) * n * (2 * n - 1) / 6;
        for outside in [true, false] {
            let round = || {
                let busy = busy_workers();
                for n in [1u64, 1000, 100_000] {
                    assert_eq!(sum(n), if n == 1 { 0 } else { want(n) });
                }
                drop(busy);
            };
            if outside {
                round();
            } else {
                rayon::scope(|s| s.spawn(|_| round()));
            }
            let start = Instant::now();
            while SPINNING.load(Ordering::Acquire) > 0 {
                assert!(
                    start.elapsed() < IDLE_LIMIT * 50,
                    "kept workers still spinning after the guard dropped"
                );
                std::thread::yield_now();
            }
        }
    }
}
