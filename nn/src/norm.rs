//! LayerNorm and RMSNorm from elementwise and reduction ops, so that gradients flow through
//! them (candle's fused `layer_norm` and `rms_norm` have no backward pass).

use candle_core::{D, Result, Tensor};

use crate::ParamInit;

/// `(x - mean) / sqrt(var + eps) * weight + bias` over the last dimension (PyTorch's
/// `nn.LayerNorm`, biased variance).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    /// `[dim]`, initialised to 1.
    pub weight: Tensor,
    /// `[dim]`, initialised to 0; absent for a bias-free norm.
    pub bias: Option<Tensor>,
    eps: f64,
}

impl LayerNorm {
    /// A new norm named `name.weight` (and `name.bias` when `bias`).
    pub fn new(init: &mut ParamInit, name: &str, dim: usize, eps: f64, bias: bool) -> Result<Self> {
        Ok(Self {
            weight: init.constant(&format!("{name}.weight"), &[dim], 1.0)?,
            bias: if bias {
                Some(init.constant(&format!("{name}.bias"), &[dim], 0.0)?)
            } else {
                None
            },
            eps,
        })
    }

    /// Normalises `x` `[.., dim]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(self.weight.dtype())?;
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        // Weight and bias through the row ops: their gradients are sums over every row.
        let y = crate::mul_weight(
            &centred.broadcast_div(&(var + self.eps)?.sqrt()?)?,
            &self.weight,
        )?;
        match &self.bias {
            Some(b) => crate::add_bias(&y, b),
            None => Ok(y),
        }
    }
}

/// `x / sqrt(mean(x²) + eps) * weight` over the last dimension (Llama's `RMSNorm`).
#[derive(Debug, Clone)]
pub struct RmsNorm {
    /// `[dim]`, initialised to 1.
    pub weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// A new norm named `name.weight`.
    pub fn new(init: &mut ParamInit, name: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: init.constant(&format!("{name}.weight"), &[dim], 1.0)?,
            eps,
        })
    }

    /// Normalises `x` `[.., dim]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        crate::mul_weight(&x.broadcast_div(&(ms + self.eps)?.sqrt()?)?, &self.weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{check_gradients_reach_every_parameter, finite_difference_check};
    use candle_core::{Device, Var};
    use candle_nn::VarMap;

    fn input() -> Var {
        let v: Vec<f32> = (0..24).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.3).collect();
        Var::from_tensor(&Tensor::from_vec(v, (2, 3, 4), &Device::Cpu).unwrap()).unwrap()
    }

    #[test]
    fn layer_norm_matches_candles_fused_forward_and_carries_gradients() {
        let varmap = VarMap::new();
        let mut init = ParamInit::new(&varmap, &Device::Cpu, 0);
        let ln = LayerNorm::new(&mut init, "ln", 4, 1e-5, true).unwrap();
        // Non-trivial gain and bias.
        let w = Tensor::new(&[1.0f32, 2.0, -0.5, 0.3], &Device::Cpu).unwrap();
        let b = Tensor::new(&[0.1f32, 0.0, -0.2, 0.4], &Device::Cpu).unwrap();
        for (name, t) in [("ln.weight", &w), ("ln.bias", &b)] {
            varmap.data().lock().unwrap()[name].set(t).unwrap();
        }
        let x = input();
        let ours = ln.forward(x.as_tensor()).unwrap();
        let theirs = candle_nn::ops::layer_norm(x.as_tensor(), &w, &b, 1e-5).unwrap();
        let d = (ours - theirs)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-5, "{d}");
        let loss = || {
            let y = ln.forward(x.as_tensor())?;
            (y.sqr()? * y.sin()?)?.sum_all()
        };
        check_gradients_reach_every_parameter(&varmap, &loss().unwrap()).unwrap();
        for v in [&x, &varmap.data().lock().unwrap()["ln.weight"].clone()] {
            let r = finite_difference_check(&loss, v, 1e-2, 12).unwrap();
            assert!(r.max_rel_err < 2e-2, "{r:?}");
        }
    }

    #[test]
    fn rms_norm_matches_its_definition_and_gradients() {
        let varmap = VarMap::new();
        let mut init = ParamInit::new(&varmap, &Device::Cpu, 0);
        let n = RmsNorm::new(&mut init, "norm", 4, 1e-6).unwrap();
        let x = input();
        let y: Vec<Vec<Vec<f32>>> = n.forward(x.as_tensor()).unwrap().to_vec3().unwrap();
        let xs: Vec<Vec<Vec<f32>>> = x.as_tensor().to_vec3().unwrap();
        let row = &xs[1][2];
        let rms = (row.iter().map(|v| v * v).sum::<f32>() / 4.0 + 1e-6).sqrt();
        for (a, b) in y[1][2].iter().zip(row) {
            assert!((a - b / rms).abs() < 1e-5);
        }
        let loss = || (n.forward(x.as_tensor())?.exp()?).sum_all();
        check_gradients_reach_every_parameter(&varmap, &loss().unwrap()).unwrap();
        let r = finite_difference_check(&loss, &x, 1e-2, 12).unwrap();
        assert!(r.max_rel_err < 2e-2, "{r:?}");
    }
}
