//! Moving values between the host and a device: a row-major matrix up, any tensor's values
//! down. Used by the processes, the conditions and the samplers alike.

use burn::tensor::{Device, Tensor, TensorData};
use diffusion_data::Rng;
use rand::Rng as _;
use rand_distr::StandardNormal;

/// A row-major `[rows, cols]` f32 tensor from host values.
pub fn tensor2(values: Vec<f32>, rows: usize, cols: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, [rows, cols]), device)
}

/// A tensor's values on the host.
pub(crate) fn host<const D: usize>(x: Tensor<D>) -> Vec<f32> {
    x.into_data()
        .convert::<f32>()
        .as_slice::<f32>()
        .expect("f32 data")
        .to_vec()
}

/// `[n, d]` standard normals drawn on the host in f64 from `rng`, row-major: the noise of the
/// reverse chains and samplers.
pub(crate) fn normal(rng: &mut Rng, n: usize, d: usize, device: &Device) -> Tensor<2> {
    let v = (0..n * d)
        .map(|_| rng.sample::<f64, _>(StandardNormal) as f32)
        .collect();
    tensor2(v, n, d, device)
}
