//! Seeded parameter creation: every weight is a function of the seed.

use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Creates named parameters into a [`VarMap`], initialised from a seeded generator (candle's
/// own initialisers draw from an unseeded thread RNG), so that a seed fixes every weight.
pub struct ParamInit<'a> {
    varmap: &'a VarMap,
    device: &'a Device,
    rng: ChaCha8Rng,
    dtype: candle_core::DType,
    /// Every parameter zero, none drawn: the model's weights are loaded next.
    placeholders: bool,
}

impl<'a> ParamInit<'a> {
    /// Parameters go into `varmap`, on `device`, drawn from `seed`.
    pub fn new(varmap: &'a VarMap, device: &'a Device, seed: u64) -> Self {
        Self {
            varmap,
            device,
            rng: ChaCha8Rng::seed_from_u64(seed),
            dtype: candle_core::DType::F32,
            placeholders: false,
        }
    }

    /// Parameters that are all zero, for a model whose weights are loaded right after it is
    /// built (drawing SmolLM2's 135 M random numbers took seconds).
    pub fn placeholders(varmap: &'a VarMap, device: &'a Device) -> Self {
        Self {
            placeholders: true,
            ..Self::new(varmap, device, 0)
        }
    }

    /// Parameters of `dtype` instead of f32 (the same draws, converted): f64 models make
    /// finite-difference checks and parity comparisons exact to far more digits.
    pub fn with_dtype(mut self, dtype: candle_core::DType) -> Self {
        self.dtype = dtype;
        self
    }

    /// A parameter drawn uniformly from `[-bound, bound]` (PyTorch's default for linear and
    /// convolution layers uses `bound = 1/sqrt(fan_in)`).
    pub fn uniform(
        &mut self,
        name: &str,
        shape: &[usize],
        bound: f32,
    ) -> candle_core::Result<Tensor> {
        let n: usize = shape.iter().product();
        if self.placeholders {
            return self.insert(name, vec![0.0; n], shape);
        }
        let data: Vec<f32> = (0..n)
            .map(|_| self.rng.random_range(-bound..=bound))
            .collect();
        self.insert(name, data, shape)
    }

    /// A parameter drawn from `N(0, std²)` (GPT-2's and Llama's embeddings and projections use
    /// `std = 0.02`).
    pub fn normal(&mut self, name: &str, shape: &[usize], std: f32) -> candle_core::Result<Tensor> {
        let n: usize = shape.iter().product();
        if self.placeholders {
            return self.insert(name, vec![0.0; n], shape);
        }
        let data: Vec<f32> = (0..n)
            .map(|_| std * standard_normal(&mut self.rng))
            .collect();
        self.insert(name, data, shape)
    }

    /// A parameter filled with `value` (norm gains: 1; biases: 0).
    pub fn constant(
        &mut self,
        name: &str,
        shape: &[usize],
        value: f32,
    ) -> candle_core::Result<Tensor> {
        let n: usize = shape.iter().product();
        self.insert(name, vec![value; n], shape)
    }

    fn insert(
        &mut self,
        name: &str,
        data: Vec<f32>,
        shape: &[usize],
    ) -> candle_core::Result<Tensor> {
        let t = Tensor::from_vec(data, shape, self.device)?.to_dtype(self.dtype)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        self.varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("the parameter map's lock is poisoned".into()))?
            .insert(name.to_string(), var);
        Ok(out)
    }
}

/// A standard normal draw (Box-Muller; portable across platforms given the same generator).
pub fn standard_normal<R: rand::Rng + ?Sized>(rng: &mut R) -> f32 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}
