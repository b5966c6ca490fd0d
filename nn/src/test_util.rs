//! Helpers for this crate's unit tests.

use candle_core::{Device, Tensor};

/// A CPU tensor of `shape` with values uniform in `[-bound, bound)`, fixed by `seed`.
pub(crate) fn uniform(shape: &[usize], bound: f32, seed: u64) -> Tensor {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("a test tensor")
}

/// Values uniform in `[-1, 1)`.
pub(crate) fn rand(shape: &[usize], seed: u64) -> Tensor {
    uniform(shape, 1.0, seed)
}

/// The largest absolute elementwise difference.
pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("tensors of one shape")
}
