//! An exponential moving average of a network's weights (improved-diffusion's `ema_rate`,
//! diffusers' `EMAModel`): after every optimizer step, ema ← d · ema + (1 − d) · θ, parameter by
//! parameter (`train.ema_decay` = d).

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;

/// `ema` moved toward `current` (a module of the same parameters, matched by their ids):
/// every float parameter becomes `decay` · ema + (1 − `decay`) · current. Parameters of `ema`
/// that `current` lacks are kept.
pub fn update<M: Module>(ema: M, current: &M, decay: f64) -> M {
    struct Collect(HashMap<ParamId, Tensor<1>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let value = param.val();
            let n = value.shape().num_elements();
            self.0.insert(param.id, value.reshape([n]));
        }
    }
    struct Blend {
        current: HashMap<ParamId, Tensor<1>>,
        decay: f64,
    }
    impl ModuleMapper for Blend {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let Some(current) = self.current.remove(&param.id) else {
                return param;
            };
            let decay = self.decay;
            param.map(|e| {
                let shape = e.shape();
                e * decay + current.reshape(shape) * (1.0 - decay)
            })
        }
    }
    let mut collect = Collect(HashMap::new());
    current.visit(&mut collect);
    ema.map(&mut Blend {
        current: collect.0,
        decay,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::LinearConfig;
    use burn::tensor::Device;

    fn values<M: Module>(m: &M) -> Vec<f32> {
        struct All(Vec<f32>);
        impl ModuleVisitor for All {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let data = param.val().into_data().convert::<f32>();
                self.0.extend_from_slice(data.as_slice::<f32>().unwrap());
            }
        }
        let mut all = All(Vec::new());
        m.visit(&mut all);
        all.0
    }

    #[test]
    fn the_average_follows_its_closed_form() {
        let device = Device::flex();
        let start = LinearConfig::new(3, 2).init(&device);
        let mut ema = start.clone();
        let mut model = start.clone();
        let d = 0.9;
        let mut want = values(&start);
        for k in 1..=3 {
            // a "step": every weight moves by k / 10
            model = model.map(&mut Shift(k as f32 / 10.0));
            ema = update(ema, &model, d);
            let now = values(&model);
            for (w, v) in want.iter_mut().zip(&now) {
                *w = (d * *w as f64 + (1.0 - d) * *v as f64) as f32;
            }
            for (got, w) in values(&ema).iter().zip(&want) {
                assert!((got - w).abs() < 1e-6, "step {k}: {got} vs {w}");
            }
        }
        // decay 0 is the model itself
        assert_eq!(values(&update(start, &model, 0.0)), values(&model));
    }

    struct Shift(f32);
    impl ModuleMapper for Shift {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let s = self.0;
            param.map(|t| t + s)
        }
    }
}
