//! Gradient checks for tests: every parameter of a model must receive a finite, non-zero
//! gradient (a fused op without a backward pass silently stops them), and analytic gradients
//! must agree with central finite differences.

use candle_core::{Result, Tensor, Var};
use candle_nn::VarMap;

use crate::NnError;

/// Back-propagates `loss` (a scalar) and fails, naming them, if any parameter of `varmap`
/// gets no gradient, a non-finite one, or one that is zero everywhere.
pub fn check_gradients_reach_every_parameter(
    varmap: &VarMap,
    loss: &Tensor,
) -> std::result::Result<(), NnError> {
    let grads = loss.backward()?;
    let mut bad = Vec::new();
    for (name, var) in crate::sorted_vars(varmap) {
        match grads.get(var.as_tensor()) {
            None => bad.push(format!("{name}: no gradient")),
            Some(g) => {
                let v: Vec<f32> = g
                    .flatten_all()?
                    .to_dtype(candle_core::DType::F32)?
                    .to_vec1()?;
                if v.iter().any(|x| !x.is_finite()) {
                    bad.push(format!("{name}: non-finite gradient"));
                } else if v.iter().all(|x| *x == 0.0) {
                    bad.push(format!("{name}: zero gradient"));
                }
            }
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(NnError::Config(format!(
            "parameters without a usable gradient: {}",
            bad.join("; ")
        )))
    }
}

/// How far analytic gradients were from finite differences.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FdReport {
    /// Largest |analytic − numeric|.
    pub max_abs_err: f64,
    /// Largest |analytic − numeric| / max(|analytic|, |numeric|, 1e-3).
    pub max_rel_err: f64,
    /// Elements probed.
    pub probed: usize,
}

/// Compares `d loss / d var` from back-propagation with central differences
/// `(f(x + eps) − f(x − eps)) / 2eps` at `probes` elements spread evenly over `var`. `loss`
/// must recompute the scalar from the current value of `var`; `var` is restored afterwards.
pub fn finite_difference_check(
    loss: &dyn Fn() -> Result<Tensor>,
    var: &Var,
    eps: f64,
    probes: usize,
) -> Result<FdReport> {
    let grads = loss()?.backward()?;
    let f64s = |t: &Tensor| -> Result<Vec<f64>> {
        t.flatten_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_vec1::<f64>()
    };
    let analytic: Vec<f64> = match grads.get(var.as_tensor()) {
        Some(g) => f64s(g)?,
        None => vec![0.0; var.elem_count()],
    };
    let original = var.as_tensor().copy()?;
    let flat = f64s(&original)?;
    let n = flat.len();
    let (mut max_abs, mut max_rel, mut probed) = (0.0f64, 0.0f64, 0);
    // Returns the value actually stored (rounded to the var's dtype) and the loss there.
    let eval_at = |i: usize, value: f64| -> Result<(f64, f64)> {
        let mut v = flat.clone();
        v[i] = value;
        let t =
            Tensor::from_vec(v, original.shape(), original.device())?.to_dtype(original.dtype())?;
        let stored = f64s(&t)?[i];
        var.set(&t)?;
        let l = loss()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
        Ok((stored, l))
    };
    for p in 0..probes.min(n) {
        let i = p * n / probes.min(n);
        let (hi, plus) = eval_at(i, flat[i] + eps)?;
        let (lo, minus) = eval_at(i, flat[i] - eps)?;
        let numeric = (plus - minus) / (hi - lo);
        let a = analytic[i];
        let abs = (a - numeric).abs();
        max_abs = max_abs.max(abs);
        max_rel = max_rel.max(abs / a.abs().max(numeric.abs()).max(1e-3));
        probed += 1;
    }
    var.set(&original)?;
    Ok(FdReport {
        max_abs_err: max_abs,
        max_rel_err: max_rel,
        probed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ParamInit;
    use candle_core::Device;

    #[test]
    fn a_parameter_cut_off_from_the_loss_is_named() {
        let varmap = VarMap::new();
        let mut init = ParamInit::new(&varmap, &Device::Cpu, 1);
        let used = init.uniform("used", &[3], 1.0).unwrap();
        let _unused = init.uniform("unused", &[3], 1.0).unwrap();
        let err =
            check_gradients_reach_every_parameter(&varmap, &used.sqr().unwrap().sum_all().unwrap())
                .unwrap_err()
                .to_string();
        assert!(err.contains("unused: no gradient"), "{err}");
        assert_eq!(err.matches("no gradient").count(), 1, "{err}");
        // candle's fused softmax has no backward: the check catches it.
        let varmap = VarMap::new();
        let mut init = ParamInit::new(&varmap, &Device::Cpu, 1);
        let w = init.uniform("w", &[2, 3], 1.0).unwrap();
        let y = candle_nn::ops::softmax_last_dim(&w).unwrap();
        let loss =
            (y * Tensor::new(&[[1f32, 2., 3.], [3., 1., 2.]], &Device::Cpu).unwrap()).unwrap();
        assert!(check_gradients_reach_every_parameter(&varmap, &loss.sum_all().unwrap()).is_err());
    }

    #[test]
    fn finite_differences_agree_on_a_known_function_and_catch_a_wrong_gradient() {
        let x =
            Var::from_tensor(&Tensor::new(&[0.3f32, -1.2, 2.0], &Device::Cpu).unwrap()).unwrap();
        let good = || (x.as_tensor().sqr()? * x.as_tensor().sin()?)?.sum_all();
        let r = finite_difference_check(&good, &x, 1e-2, 3).unwrap();
        assert_eq!(r.probed, 3);
        assert!(r.max_rel_err < 1e-2, "{r:?}");
        // A "gradient-free" path: detach hides x from back-propagation.
        let wrong = || {
            x.as_tensor()
                .detach()
                .sqr()?
                .sum_all()?
                .broadcast_add(&(x.as_tensor() * 0.0)?.sum_all()?)
        };
        let r = finite_difference_check(&wrong, &x, 1e-2, 3).unwrap();
        assert!(r.max_abs_err > 0.5, "{r:?}");
        assert_eq!(x.to_vec1::<f32>().unwrap(), vec![0.3, -1.2, 2.0]);
    }
}
