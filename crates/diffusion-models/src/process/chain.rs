//! The reverse chain, one driver for every process: x_T from the prior, then a kernel per step
//! down to x_0, each multiplied by the condition's factor r_t when there is one (paper section
//! 2.5; [`crate::condition`]), with the particle systems of resampled conditioning and
//! snapshots of the steps asked for. A process supplies only its kernels ([`ReverseChain`],
//! [`StepKernel`]) and its factors; the order in which the driver draws from the generator is
//! fixed here, so a seed gives the same chains whatever the process.

use std::sync::Arc;

use burn::tensor::{Device, Tensor};
use diffusion_data::Rng;

use super::{Process, host};
use crate::condition::{ConditionMode, Conditioning, DeviceFactor, Particles, StepFactor};
use crate::network::ReverseNetwork;

/// A reverse chain's shape and the tables its kernels read: every [`Process`]'s own, and
/// DDIM's (`crate::sampling::DdimChain`).
pub(crate) trait ChainShape {
    /// What the kernels need on the device.
    type ChainTables;
    /// The coordinates of one chain.
    fn chain_dim(&self) -> usize;
    /// The chain's steps T.
    fn chain_steps(&self) -> usize;
    /// The kernels' tables on `device`.
    fn chain_tables(&self, device: &Device) -> Self::ChainTables;
}

impl<P: Process> ChainShape for P {
    type ChainTables = P::Tables;

    fn chain_dim(&self) -> usize {
        self.dim()
    }

    fn chain_steps(&self) -> usize {
        self.steps()
    }

    fn chain_tables(&self, device: &Device) -> P::Tables {
        self.tables(device)
    }
}

/// What the chain driver needs of a reverse chain: its shape, its kernels and its factors. The
/// processes are reverse chains, and so is DDIM's (`crate::sampling::DdimChain`).
pub(crate) trait ReverseChain: ChainShape {
    /// One step's kernel.
    type Kernel: StepKernel;
    /// p(x_T) for `n` chains. `conditioned`: a factor will multiply it.
    fn prior(&self, n: usize, conditioned: bool, rng: &mut Rng, device: &Device) -> Self::Kernel;
    /// p(x_{t-1} | x_t) for the chains `x` (`[n, d]`) at step `t` (T down to 1: at t = 1 the
    /// edge step or the decoder), drawing whatever noise it needs now. `conditioned`: a factor
    /// will multiply it.
    #[allow(clippy::too_many_arguments)]
    fn kernel<N: ReverseNetwork>(
        &self,
        network: &N,
        tables: &Self::ChainTables,
        x: &Tensor<2>,
        t: usize,
        conditioned: bool,
        rng: &mut Rng,
        device: &Device,
    ) -> Self::Kernel;
    /// The factor r_k of `given` for `n` chains at the step that draws x_k.
    fn step_factor(&self, given: &Conditioning, n: usize, k: usize, rng: &mut Rng) -> StepFactor;
    /// A draw of the forward kernel q(x_t | x_{t-1}) for the chains `x` at step t − 1.
    fn renoise(&self, x: Tensor<2>, t: usize, rng: &mut Rng, device: &Device) -> Tensor<2>;
    /// ln ψ_t(x_t) per chain, the twisted mode's estimate of ln r(x_0) given the chains `x` at
    /// step `t` ≥ 2 whose kernel is `kernel` ([`ConditionMode::Twisted`]; `r` its factor).
    fn twist_log(
        &self,
        kernel: &Self::Kernel,
        x: &Tensor<2>,
        t: usize,
        r: &DeviceFactor,
    ) -> Tensor<1>;
}

/// One step's kernel, before the condition multiplies it.
pub(crate) trait StepKernel: Sized {
    /// ln Z_{t-1}(x_t) − ln h_t(x_t) per chain at step t, where Z_{t-1}(x_t) is the integral of
    /// this kernel against `f` (the factor h_{t-1} of the draw it makes) and h_t is `prev`'s soft
    /// factor at the chains `x` (the one they were drawn with): the weights of sequential Monte
    /// Carlo.
    /// Without `prev`, ln Z_{t-1}(x_t) alone.
    fn log_weight(&self, x: &Tensor<2>, f: &DeviceFactor, prev: Option<&DeviceFactor>)
    -> Tensor<1>;
    /// The kernel of the chains `picks`, in that order (after resampling).
    fn pick(self, picks: &[usize]) -> Self;
    /// A draw of the kernel, multiplied by `f` when given.
    fn draw(self, f: Option<&Factor>, rng: &mut Rng, device: &Device) -> Tensor<2>;
}

/// A step's factor, on the host as the process built it and on the device; a clone (the
/// constant mode's, every step) shares both.
#[derive(Debug, Clone)]
pub(crate) struct Factor {
    pub(crate) host: Arc<StepFactor>,
    pub(crate) device: DeviceFactor,
}

impl Factor {
    fn new(host: StepFactor, n: usize, d: usize, device: &Device) -> Self {
        Self {
            device: host.clone().upload(n, d, device),
            host: Arc::new(host),
        }
    }
}

/// Runs the reverse chain of `process` for `n` chains, multiplied by `given` at every step when
/// there is a condition; returns x_t (row-major `[n, d]`) for each t in `keep`, from T down
/// to 0. Renoised chains ([`Conditioning::renoised`]) keep each block's last draws: the x_t at
/// the top of a block is the one drawn before the block went back through the forward process.
pub(crate) fn run<P: ReverseChain, N: ReverseNetwork>(
    process: &P,
    network: &N,
    n: usize,
    keep: &[usize],
    given: Option<&Conditioning>,
    rng: &mut Rng,
    device: &Device,
) -> Vec<(usize, Vec<f32>)> {
    let (d, steps) = (process.chain_dim(), process.chain_steps());
    let tables = process.chain_tables(device);
    let conditioned = given.is_some();
    // the constant mode's one factor, built and uploaded once
    let constant = given
        .filter(|c| c.mode() == ConditionMode::Constant)
        .map(|c| Factor::new(process.step_factor(c, n, steps, rng), n, d, device));
    // the twisted mode's r itself, for its twisting functions
    let r = given
        .filter(|c| c.mode() == ConditionMode::Twisted)
        .map(|c| Factor::new(process.step_factor(c, n, 0, rng), n, d, device));
    let factor = |k: usize, rng: &mut Rng| {
        given.map(|c| match &constant {
            Some(f) => f.clone(),
            None => Factor::new(process.step_factor(c, n, k, rng), n, d, device),
        })
    };
    let mut out = Vec::new();
    let mut snapshot = |t: usize, x: &Tensor<2>| {
        if keep.contains(&t) {
            out.push((t, host(x.clone())));
        }
    };
    // x_T, times r_T
    let prior = process.prior(n, conditioned, rng, device);
    let mut prev = factor(steps, rng);
    let mut x = prior.draw(prev.as_ref(), rng, device);
    snapshot(steps, &x);
    // with resampling, each step first weighs the chains by Z_{t-1}(x_t) / h_t(x_t) and may
    // resample them (then the kernel's rows go with their chains)
    let mut particles = given.filter(|c| c.resamples()).map(|c| Particles::of(c, n));
    // the twisted mode's ln Z_t(x_{t+1}) − ln ψ_{t+1}(x_{t+1}) of each chain's last step
    let mut carry = vec![0.0f32; n];
    let [passes, jump] = given.and_then(Conditioning::renoising).unwrap_or([1, 1]);
    let mut top = steps;
    while top >= 1 {
        // the block of steps top, ..., low + 1, drawn `passes` times (renoised steps)
        let low = top.saturating_sub(jump);
        for pass in 1..=passes {
            if pass > 1 {
                // back from x_low to x_top through the forward process
                for t in low + 1..=top {
                    x = process.renoise(x, t, rng, device);
                }
            }
            for t in (low + 1..=top).rev() {
                let mut kernel = process.kernel(network, &tables, &x, t, conditioned, rng, device);
                let f = factor(t - 1, rng);
                if let (Some(p), Some(f), Some(h)) = (particles.as_mut(), &f, &prev) {
                    let system = (p, &mut carry);
                    kernel = weigh(process, kernel, &x, t, (f, h, r.as_ref()), system, rng);
                }
                x = kernel.draw(f.as_ref(), rng, device);
                if f.is_some() {
                    prev = f;
                }
                if pass == passes {
                    snapshot(t - 1, &x);
                }
            }
        }
        top = low;
    }
    out
}

/// Weighs the chains `x` before the draw of step `t` by Z_{t-1}(x_t) / h_t(x_t) (the factors
/// `f` = h_{t-1} and `h` = h_t; with the twisted mode's `r`, [`twisted_weight`]) and resamples
/// them when the particle system says so: the kernel's rows and the carry go with their chains.
fn weigh<P: ReverseChain>(
    process: &P,
    kernel: P::Kernel,
    x: &Tensor<2>,
    t: usize,
    (f, h, r): (&Factor, &Factor, Option<&Factor>),
    (particles, carry): (&mut Particles, &mut Vec<f32>),
    rng: &mut Rng,
) -> P::Kernel {
    let lw = host(kernel.log_weight(x, &f.device, Some(&h.device)));
    let lw = match r {
        Some(r) => twisted_weight(process, &kernel, x, t, (f, r), lw, carry),
        None => lw,
    };
    match particles.reweigh(&lw, t == 1, rng) {
        Some(picks) => {
            *carry = picks.iter().map(|&i| carry[i]).collect();
            kernel.pick(&picks)
        }
        None => kernel,
    }
}

/// The twisted mode's log-weights at step `t` ([`ConditionMode::Twisted`]): the proposal's
/// `lw` = ln Z_{t-1}(x_t) − ln h_t(x_t) (its factors h, `f` = h_{t-1}) becomes
/// ln ψ_t(x_t) − ln h_t(x_t) + `carry`, the carry (ln Z_{t-1}(x_t) − ln ψ_t(x_t)) moving on to
/// the next step; so that the chains weighed at step t target p(x_{t:T}) ψ_t(x_t). At t = 1,
/// where the factor is r itself, ψ_1 cancels: lw + carry.
fn twisted_weight<P: ReverseChain>(
    process: &P,
    kernel: &P::Kernel,
    x: &Tensor<2>,
    t: usize,
    (f, r): (&Factor, &Factor),
    lw: Vec<f32>,
    carry: &mut Vec<f32>,
) -> Vec<f32> {
    if t == 1 {
        return lw.iter().zip(carry.iter()).map(|(a, c)| a + c).collect();
    }
    let z = host(kernel.log_weight(x, &f.device, None));
    let psi = host(process.twist_log(kernel, x, t, &r.device));
    let out = (0..lw.len())
        .map(|i| lw[i] - z[i] + psi[i] + carry[i])
        .collect();
    *carry = (0..lw.len()).map(|i| z[i] - psi[i]).collect();
    out
}
