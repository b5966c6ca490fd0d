//! LayerNorm and RMSNorm with gradients (candle's fused `layer_norm` and `rms_norm` have no
//! backward pass). LayerNorm is one fused op each way on the CPU for f32 (the composition took
//! about twenty passes over the activations); elsewhere, and for RMSNorm, elementwise and
//! reduction ops.

use candle_core::{CpuStorage, CustomOp3, D, DType, Layout, Result, Shape, Tensor};

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
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            let bias = match &self.bias {
                Some(b) => b.clone(),
                None => self.weight.zeros_like()?,
            };
            crate::fused::check_row_param(&x, &self.weight, "layer_norm")?;
            return x.contiguous()?.apply_op3(
                &self.weight.contiguous()?,
                &bias.contiguous()?,
                FusedLayerNorm { eps: self.eps },
            );
        }
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        // Off the CPU or in f64 (finite differences): candle's ops, gradients on every device.
        let y = centred
            .broadcast_div(&(var + self.eps)?.sqrt()?)?
            .broadcast_mul(&self.weight)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// LayerNorm in one pass per row: (x, weight, bias) → y.
struct FusedLayerNorm {
    eps: f64,
}

/// Its gradient: (x, weight, upstream) → `[rows + 2, C]`: dx, then d(weight), then d(bias).
struct FusedLayerNormBackward {
    eps: f64,
}

/// Mean and 1/σ of one row (f64 accumulation, as PyTorch's CPU kernel accumulates wider).
fn row_stats(row: &[f32], eps: f64) -> (f32, f32) {
    let n = row.len().max(1) as f64;
    let mean = row.iter().map(|v| *v as f64).sum::<f64>() / n;
    let var = row.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean as f32, (1.0 / (var + eps).sqrt()) as f32)
}

impl CustomOp3 for FusedLayerNorm {
    fn name(&self) -> &'static str {
        "dreamgym-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = crate::contiguous_f32(s1, l1, "layer_norm")?;
        let w = crate::contiguous_f32(s2, l2, "layer_norm")?;
        let b = crate::contiguous_f32(s3, l3, "layer_norm")?;
        let c = w.len().max(1);
        if x.len() % c != 0 || b.len() != w.len() {
            candle_core::bail!("layer_norm: rows of {c} do not fit {} elements", x.len());
        }
        let mut out = vec![0f32; x.len()];
        crate::par::for_rows(&mut out, c, |i, o| {
            let row = &x[i * c..(i + 1) * c];
            let (mean, rstd) = row_stats(row, self.eps);
            for (o, (x, (w, b))) in o.iter_mut().zip(row.iter().zip(w.iter().zip(b))) {
                *o = (x - mean) * rstd * w + b;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = w.dim(0)?;
        let rows = x.elem_count() / c.max(1);
        let packed = x.apply_op3_no_bwd(
            &w.contiguous()?,
            &grad.contiguous()?,
            &FusedLayerNormBackward { eps: self.eps },
        )?;
        let dx = packed.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = packed.narrow(0, rows, 1)?.reshape(c)?;
        let db = packed.narrow(0, rows + 1, 1)?.reshape(c)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

impl CustomOp3 for FusedLayerNormBackward {
    fn name(&self) -> &'static str {
        "dreamgym-layer-norm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = crate::contiguous_f32(s1, l1, "layer_norm_backward")?;
        let w = crate::contiguous_f32(s2, l2, "layer_norm_backward")?;
        let dy = crate::contiguous_f32(s3, l3, "layer_norm_backward")?;
        let c = w.len().max(1);
        if x.len() % c != 0 || dy.len() != x.len() {
            candle_core::bail!(
                "layer_norm_backward: rows of {c} do not fit {} and {} elements",
                x.len(),
                dy.len()
            );
        }
        let rows = x.len() / c;
        // Each row's mean and 1/σ once, then dx row by row and the parameters' gradients as
        // sums over fixed blocks of rows (the same numbers on any number of threads).
        let mut stats = vec![0f32; 2 * rows];
        crate::par::for_rows_costing(&mut stats, 2, 2 * c, |i, s| {
            let (mean, rstd) = row_stats(&x[i * c..(i + 1) * c], self.eps);
            s[0] = mean;
            s[1] = rstd;
        });
        let mut out = vec![0f32; (rows + 2) * c];
        let (dx_all, params) = out.split_at_mut(rows * c);
        crate::par::for_rows_costing(dx_all, c, 3 * c, |i, dx| {
            let (row, dy) = (&x[i * c..(i + 1) * c], &dy[i * c..(i + 1) * c]);
            let (mean, rstd) = (stats[2 * i], stats[2 * i + 1]);
            let (mut sum_g, mut sum_gx) = (0f64, 0f64);
            for j in 0..c {
                let xhat = (row[j] - mean) * rstd;
                let g = dy[j] * w[j];
                sum_g += g as f64;
                sum_gx += (g * xhat) as f64;
            }
            let (mg, mgx) = ((sum_g / c as f64) as f32, (sum_gx / c as f64) as f32);
            for j in 0..c {
                let xhat = (row[j] - mean) * rstd;
                dx[j] = rstd * (dy[j] * w[j] - mg - xhat * mgx);
            }
        });
        let sums = crate::par::sum_over_rows(rows, 2 * c, |i, acc| {
            let (row, dy) = (&x[i * c..(i + 1) * c], &dy[i * c..(i + 1) * c]);
            let (mean, rstd) = (stats[2 * i], stats[2 * i + 1]);
            let (dw, db) = acc.split_at_mut(c);
            for j in 0..c {
                dw[j] += dy[j] * (row[j] - mean) * rstd;
                db[j] += dy[j];
            }
        });
        params.copy_from_slice(&sums);
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, c))))
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
        crate::rms_norm(x, &self.weight, self.eps)
    }
}

#[cfg(test)]
mod fused_tests {
    use super::*;
    use crate::test_util::{max_diff, rand};
    use candle_core::{Device, Var};
    use candle_nn::VarMap;

    #[test]
    fn fused_layer_norm_matches_the_composed_one_and_its_gradients() {
        for bias in [true, false] {
            let varmap = VarMap::new();
            let mut init = ParamInit::new(&varmap, &Device::Cpu, 0);
            let mut ln = LayerNorm::new(&mut init, "ln", 7, 1e-5, bias).unwrap();
            // Non-trivial weight and bias.
            ln.weight = Var::from_tensor(&(rand(&[7], 31) + 1.0).unwrap())
                .unwrap()
                .as_tensor()
                .clone();
            if bias {
                ln.bias = Some(
                    Var::from_tensor(&rand(&[7], 32))
                        .unwrap()
                        .as_tensor()
                        .clone(),
                );
            }
            let x = Var::from_tensor(&(rand(&[3, 4, 7], 33) * 3.0).unwrap()).unwrap();
            let up = rand(&[3, 4, 7], 34);
            let fused = ln.forward(&x).unwrap();
            // The composition is what the f64 path runs: compute it in f64, compare in f32.
            let mut ln64 = ln.clone();
            ln64.weight = ln.weight.to_dtype(DType::F64).unwrap();
            ln64.bias = ln.bias.as_ref().map(|b| b.to_dtype(DType::F64).unwrap());
            let composed = ln64.forward(&x.to_dtype(DType::F64).unwrap()).unwrap();
            assert!(max_diff(&fused, &composed.to_dtype(DType::F32).unwrap()) < 1e-5);
            let loss = |y: &Tensor| {
                (y * up.to_dtype(y.dtype()).unwrap())
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap()
            };
            let (g1, g2) = (loss(&fused), loss(&composed));
            let f32_of = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            assert!(max_diff(g1.get(&x).unwrap(), &f32_of(g2.get(&x).unwrap())) < 1e-5);
            // The composed path reaches the f32 parameters through its f64 copies.
            let w = &ln.weight;
            assert!(max_diff(g1.get(w).unwrap(), &f32_of(g2.get(w).unwrap())) < 1e-5);
            if let Some(b) = &ln.bias {
                assert!(max_diff(g1.get(b).unwrap(), &f32_of(g2.get(b).unwrap())) < 1e-5);
            }
        }
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
