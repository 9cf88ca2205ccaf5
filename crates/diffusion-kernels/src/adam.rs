//! [`FusedAdam`]: Burn's Adam, computed the same way, in one pass per parameter on flex.

use burn::optim::{Adam, AdamConfig, AdamState, LearningRate, ModuleOptimizer, Optimizer};
use burn::tensor::{DType, Device, Tensor};

pub use crate::math::AdamScalars;

/// Adam (β1, β2, ε; no weight decay, no AMSGrad) as Burn's [`Adam`] computes it, with the same
/// state ([`AdamState`]), so the records of one load into the other.
///
/// Burn's `Adam` takes about ten tensor operations per parameter per step, each a pass over the
/// parameter's size that allocates its result; for the heartbeat model's 2M-value readout table
/// that is most of a training step. On flex in f32 this is one pass over the parameter, its
/// gradient and the two moments (updated in place, threads over chunks), with Burn's arithmetic
/// in Burn's order, so the values are Burn's to the bit. On any other device, or for another
/// dtype, it is Burn's `Adam` itself.
///
/// ```
/// use burn::optim::ModuleOptimizer;
/// use diffusion_kernels::FusedAdam;
///
/// let optimizer: ModuleOptimizer = FusedAdam::new(0.9, 0.999, 1e-8).init();
/// # let _ = optimizer;
/// ```
#[derive(Clone)]
pub struct FusedAdam {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    burn: Adam,
}

impl FusedAdam {
    /// Adam with moment decays `beta_1`, `beta_2` and `epsilon` added to the second moment's
    /// root (scaled as Burn scales it).
    pub fn new(beta_1: f32, beta_2: f32, epsilon: f32) -> Self {
        let burn = AdamConfig::new()
            .with_beta_1(beta_1)
            .with_beta_2(beta_2)
            .with_epsilon(epsilon)
            .build();
        Self {
            beta_1,
            beta_2,
            epsilon,
            burn,
        }
    }

    /// A module optimizer over every parameter (add gradient clipping with
    /// [`ModuleOptimizer::with_grad_clipping`]).
    pub fn init(self) -> ModuleOptimizer {
        ModuleOptimizer::from(self)
    }

    /// The scalars of step `time` (1 for the first) at learning rate `lr`, formed as Burn's
    /// `Adam` forms them.
    pub fn scalars(&self, time: usize, lr: LearningRate) -> AdamScalars {
        let time = time as i32;
        let bias_correction2_sqrt = (1.0 - self.beta_2.powi(time)).sqrt();
        AdamScalars {
            beta_1: (self.beta_1, 1.0 - self.beta_1),
            beta_2: (self.beta_2, 1.0 - self.beta_2),
            combined: bias_correction2_sqrt / (1.0 - self.beta_1.powi(time)),
            epsilon: self.epsilon * bias_correction2_sqrt,
            lr: lr as f32,
        }
    }
}

impl Optimizer for FusedAdam {
    type State<const D: usize> = AdamState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        // AMSGrad's state (from a record of Burn's) or moments of another dtype: Burn's step
        let foreign = state.as_ref().is_some_and(|s| {
            let m = &s.momentum;
            m.max_moment_2.is_some()
                || m.moment_1.dtype() != DType::F32
                || m.moment_2.dtype() != DType::F32
        });
        // its own step where the parameter and its gradient are both f32 on flex
        if foreign || !(crate::fused_here(&tensor) && crate::fused_here(&grad)) {
            return self.burn.step(lr, tensor, grad, state);
        }
        #[cfg(feature = "flex")]
        {
            use crate::flex::FusedAdamStep;
            use burn::backend::Dispatch;
            let (time, moment_1, moment_2) = match state {
                Some(s) => (s.momentum.time, s.momentum.moment_1, s.momentum.moment_2),
                // zero moments: m β1 + g (1 - β1) is then g (1 - β1), Burn's first step
                None => (0, grad.zeros_like(), grad.zeros_like()),
            };
            let time = time + 1;
            let (param, moment_1, moment_2) = <Dispatch as FusedAdamStep>::adam_step(
                tensor.into_dispatch(),
                grad.into_dispatch(),
                moment_1.into_dispatch(),
                moment_2.into_dispatch(),
                self.scalars(time, lr),
            );
            let momentum = burn::optim::AdaptiveMomentumState::new(
                time,
                Tensor::from_dispatch(moment_1),
                Tensor::from_dispatch(moment_2),
            );
            (Tensor::from_dispatch(param), Some(AdamState::new(momentum)))
        }
        #[cfg(not(feature = "flex"))]
        unreachable!("no fused step without the flex kernels")
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        <Adam as Optimizer>::to_device(state, device)
    }
}
