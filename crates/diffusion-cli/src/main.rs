//! `diffusion`: train, evaluate and sample diffusion probabilistic models, and generate data.
//!
//! Argument types are in `args`; each subcommand is one file (`train`, `evaluate`, `sample`,
//! `plot`, `gradient_variance`, `bench`, `data`); `backend` (and `gpu`) turn `--backend` into a
//! Burn device, the only place a backend is named. Every command returns `Err(one line)` on bad
//! input, printed here.

mod args;
mod backend;
mod bench;
mod common;
mod complete;
mod condition;
mod data;
mod evaluate;
mod evaluate_conditional;
#[cfg(feature = "wgpu")]
mod gpu;
mod gradient_variance;
mod plot;
mod sample;
mod train;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};

/// mimalloc keeps freed tensor buffers for reuse; with the system allocator every step's large
/// buffers went back to the kernel and came back as fresh zeroed pages (page faults and
/// clear_page were about a sixth of a training step's time).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h (the same index in its v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory stays with the process: by default mimalloc hands pages it has not reused
/// within 10 ms back to the kernel, and a training step's buffers came back as fresh
/// transparent huge pages, each zeroed by the kernel on its first write (about 2.8 page faults
/// a step at batch 4096, 2 % of the step's time in `clear_page`). The process's peak memory
/// is unchanged: this only keeps what it has already used.
fn keep_freed_memory() {
    // SAFETY: sets one of mimalloc's options; the purge delay is read when a purge is
    // scheduled, so setting it after allocations have been made is allowed.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

fn main() -> ExitCode {
    // before any thread starts, so that every thread inherits it
    diffusion_kernels::flush_subnormals();
    keep_freed_memory();
    // A bug must still end in one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let msg = msg.lines().next().unwrap_or_default().to_string();
        // A GPU that goes away (or a graphics context that cannot be had) leaves Burn's wgpu
        // runtime waiting on it from other threads: end the process here rather than hang.
        let gpu_gone = [
            "device lost",
            "Device lost",
            "adapter context",
            "Parent device is lost",
        ]
        .iter()
        .any(|m| msg.contains(m));
        if gpu_gone {
            eprintln!(
                "error: the GPU stopped answering ({msg}); checkpoints written so far are kept \
                 (resume with `diffusion train --resume DIR`)"
            );
            std::process::exit(1);
        }
        eprintln!("error: internal error: {msg}");
    }));
    if let Err(message) = diffusion_kernels::Isa::cap() {
        eprintln!("error: {message}");
        return ExitCode::from(2);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print in full; a usage error in one line, exit code 2.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let text = e.render().to_string();
            let message: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            eprintln!("{} (see --help)", message.join(" "));
            return ExitCode::from(2);
        }
    };
    // The command runs on a worker of Burn's rayon pool rather than beside it: a parallel
    // tensor op then starts on this thread and the other workers steal from it, instead of
    // this thread waking the pool and sleeping until it is done, once per op. With one thread
    // per core that was a quarter of a training step at batch 1024 (wake-ups, yields and
    // context switches). RAYON_NUM_THREADS still sets the pool's size; the workers get the
    // main thread's usual 8 MiB stack.
    let run = || std::panic::catch_unwind(|| run(cli));
    let result = match rayon::ThreadPoolBuilder::new().stack_size(8 << 20).build() {
        Ok(pool) => pool.install(run),
        Err(_) => run(),
    };
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("error: {}", e.replace('\n', " "));
            ExitCode::FAILURE
        }
        Err(_) => ExitCode::from(101),
    }
}

/// Runs one command.
pub fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Train(a) => crate::train::cmd_train(a),
        Command::Evaluate(a) => crate::evaluate::cmd_evaluate(a),
        Command::Sample(a) => crate::sample::cmd_sample(a),
        Command::Baselines(a) => crate::evaluate::cmd_baselines(a),
        Command::Terms(a) => crate::evaluate::cmd_terms(a),
        Command::EvaluateConditional(a) => crate::evaluate_conditional::cmd_evaluate_conditional(a),
        Command::Plot(a) => crate::plot::cmd_plot(a),
        Command::Bench(a) => crate::bench::cmd_bench(a),
        Command::GradientVariance(a) => crate::gradient_variance::cmd_gradient_variance(a),
        Command::Devices => crate::backend::list_devices(),
        Command::Data(c) => crate::data::cmd_data(c),
    }
}
