//! The dense layer.

use candle_core::Tensor;

use crate::ParamInit;

/// A dense layer `y = x W^T + b` with PyTorch's weight layout `[out, in]`.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out, in]`
    pub weight: Tensor,
    /// `[out]`
    pub bias: Tensor,
}

impl Linear {
    /// A new layer named `name.weight` / `name.bias`, PyTorch's default initialisation.
    pub fn new(
        init: &mut ParamInit,
        name: &str,
        inp: usize,
        out: usize,
    ) -> candle_core::Result<Self> {
        let bound = 1.0 / (inp as f32).sqrt();
        Ok(Self {
            weight: init.uniform(&format!("{name}.weight"), &[out, inp], bound)?,
            bias: init.uniform(&format!("{name}.bias"), &[out], bound)?,
        })
    }

    /// Applies the layer to `[N, in]`. The bias is added by [`crate::add_bias`], whose
    /// gradient is a plain sum of rows: candle's broadcast-add backward reduces over the rows
    /// with a strided walk, which was a tenth of M's training step (`[10000, 1024]` for the
    /// LSTM's input projection of 100 sequences of 100 steps).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        crate::add_bias(&x.matmul(&self.weight.t()?)?, &self.bias)
    }
}
