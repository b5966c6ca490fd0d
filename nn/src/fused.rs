//! Fused CPU ops, each one pass forward and one backward, with a composition of candle ops
//! (which carries gradients on every device) as the fallback off the CPU:
//! `relu(x + bias)`, `x + bias`, `x * weight` (rows), GELU (tanh) and the per-sample squared
//! error of `sigmoid(logits)`.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};

use crate::par::{map_rows, map1, map2, sum_over_rows};

/// The contiguous f32 data of a custom op's CPU input, or an error naming `op`.
pub fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = match storage {
        CpuStorage::F32(d) => d.as_slice(),
        _ => candle_core::bail!("{op}: only f32 is supported"),
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// `relu(x + b)` over the last dimension of `x` (`[.., C]`, `b` `[C]`), one pass each way.
struct BiasRelu;

/// The gradient mask of [`BiasRelu`]: (output, upstream gradient) → gradient where output > 0.
struct ReluMask;

impl CustomOp2 for BiasRelu {
    fn name(&self) -> &'static str {
        "dreamgym-bias-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "bias_relu")?;
        let b = contiguous_f32(s2, l2, "bias_relu")?;
        let c = b.len();
        if c == 0 || x.len() % c != 0 || l1.dims().last() != Some(&c) {
            candle_core::bail!(
                "bias_relu: bias {:?} does not fit input {:?}",
                l2.dims(),
                l1.dims()
            );
        }
        let out = map_rows(x, b, |x, b| (x + b).max(0.0));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let gx = res.apply_op2_no_bwd(&grad.contiguous()?, &ReluMask)?;
        let gb = sum_rows(&gx)?;
        Ok((Some(gx), Some(gb)))
    }
}

impl CustomOp2 for ReluMask {
    fn name(&self) -> &'static str {
        "dreamgym-relu-mask"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = contiguous_f32(s1, l1, "relu_mask")?;
        let g = contiguous_f32(s2, l2, "relu_mask")?;
        if y.len() != g.len() {
            candle_core::bail!("relu_mask: inputs of {} and {} elements", y.len(), g.len());
        }
        let out = map2(y, g, |y, g| if y > 0.0 { g } else { 0.0 });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `relu(x + bias)`, bias over the last dimension; fused on the CPU.
pub fn bias_relu(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.contiguous()?.apply_op2(&bias.contiguous()?, BiasRelu)
    } else {
        x.broadcast_add(bias)?.relu()
    }
}

/// The sum over every leading dimension of `g` (`[.., C]` → `[C]`): the gradient of a
/// parameter broadcast over rows. candle's reduction over leading dimensions walks a strided
/// index per element (a seventh of a transformer's training step); this adds whole rows.
pub fn sum_rows(g: &Tensor) -> Result<Tensor> {
    let c = g.dim(candle_core::D::Minus1)?;
    if g.device().is_cpu() && g.dtype() == DType::F32 {
        g.contiguous()?.apply_op1_no_bwd(&SumRows)
    } else {
        g.reshape(((), c))?.sum(0)
    }
}

struct SumRows;

impl CustomOp1 for SumRows {
    fn name(&self) -> &'static str {
        "dreamgym-sum-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = contiguous_f32(s, l, "sum_rows")?;
        let c = l.dims().last().copied().unwrap_or(1).max(1);
        let acc = sum_over_rows(g.len() / c, c, |i, acc| {
            for (a, x) in acc.iter_mut().zip(&g[i * c..(i + 1) * c]) {
                *a += *x;
            }
        });
        Ok((CpuStorage::F32(acc), Shape::from(c)))
    }
}

/// Checks that `p` is a vector as long as the last dimension of `x`.
pub(crate) fn check_row_param(x: &Tensor, p: &Tensor, op: &str) -> Result<usize> {
    let c = x.dim(candle_core::D::Minus1)?;
    if p.dims() != [c] {
        candle_core::bail!(
            "{op}: the parameter is {:?}, the rows are {c} long",
            p.dims()
        );
    }
    Ok(c)
}

/// `x + b` with `b` (`[C]`) added to every row of `x` (`[.., C]`).
struct AddBias;

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "dreamgym-add-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "add_bias")?;
        let b = contiguous_f32(s2, l2, "add_bias")?;
        let out = map_rows(x, b, |x, b| x + b);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.clone()), Some(sum_rows(grad)?)))
    }
}

/// `x + b`, `b` added to every row (the last dimension); one pass each way on the CPU.
pub fn add_bias(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    check_row_param(x, b, "add_bias")?;
    if x.device().is_cpu() && x.dtype() == DType::F32 && b.dtype() == DType::F32 {
        x.contiguous()?.apply_op2(&b.contiguous()?, AddBias)
    } else {
        x.broadcast_add(b)
    }
}

/// `x * m` elementwise, with `m` a constant (no gradient flows into it).
struct MulConstant;

impl CustomOp2 for MulConstant {
    fn name(&self) -> &'static str {
        "dreamgym-mul-constant"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "mul_constant")?;
        let m = contiguous_f32(s2, l2, "mul_constant")?;
        if x.len() != m.len() {
            candle_core::bail!(
                "mul_constant: inputs of {} and {} elements",
                x.len(),
                m.len()
            );
        }
        let out = map2(x, m, |x, m| x * m);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        m: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let gx = grad.contiguous()?.apply_op2_no_bwd(m, &MulConstant)?;
        Ok((Some(gx), None))
    }
}

/// `x * m` elementwise (same shapes), where `m` is a constant such as a dropout mask: the
/// backward pass is one product, `grad * m`, and computes no gradient for `m` (candle's `mul`
/// computes both). One pass each way on the CPU.
pub fn mul_constant(x: &Tensor, m: &Tensor) -> Result<Tensor> {
    if x.dims() != m.dims() {
        candle_core::bail!(
            "mul_constant: shapes {:?} and {:?} differ",
            x.dims(),
            m.dims()
        );
    }
    let m = m.detach();
    if x.device().is_cpu() && x.dtype() == DType::F32 && m.dtype() == DType::F32 {
        x.contiguous()?.apply_op2(&m.contiguous()?, MulConstant)
    } else {
        x.mul(&m)
    }
}

/// `x * w` with `w` (`[C]`) multiplying every row of `x` (`[.., C]`).
struct MulWeight;

impl CustomOp2 for MulWeight {
    fn name(&self) -> &'static str {
        "dreamgym-mul-weight"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "mul_weight")?;
        let w = contiguous_f32(s2, l2, "mul_weight")?;
        let out = map_rows(x, w, |x, w| x * w);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let gx = grad.apply_op2_no_bwd(&w.contiguous()?, &MulWeight)?;
        let gw = sum_rows(&(&grad * x)?)?;
        Ok((Some(gx), Some(gw)))
    }
}

/// `x * w`, `w` multiplying every row (the last dimension); one pass each way on the CPU.
pub fn mul_weight(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    check_row_param(x, w, "mul_weight")?;
    if x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32 {
        x.contiguous()?.apply_op2(&w.contiguous()?, MulWeight)
    } else {
        x.broadcast_mul(w)
    }
}

/// `gelu(x)` in the tanh approximation (GPT-2's; PyTorch's `gelu(approximate="tanh")`), one
/// pass each way. candle's own gelu backward runs a dozen elementwise passes, two of them
/// `powf`: a third of a Decision Transformer's training step.
struct GeluTanh;

/// The gradient of [`GeluTanh`]: (input, upstream gradient) → upstream · gelu'(input).
struct GeluTanhGrad;

const GELU_K0: f32 = 0.797_884_6; // √(2/π)
const GELU_K1: f32 = 0.044_715;

/// `tanh` as a rational function (Eigen's 13/6 minimax fit for f32), clamped to ±7.9 (beyond
/// which tanh is within 3e-7 of ±1): branch-free, so the compiler vectorises the loops that
/// call it. libm's scalar `tanhf` (through `expm1f`) was a sixth of a Decision Transformer's
/// training step.
/// Absolute error below 5e-7 everywhere (about 4 ulp of 1, near |x| = 6; tested against f64).
#[inline(always)]
#[allow(clippy::excessive_precision)] // the coefficients as Eigen publishes them
pub(crate) fn fast_tanh(x: f32) -> f32 {
    const A1: f32 = 4.893_524_6e-3;
    const A3: f32 = 6.372_619_3e-4;
    const A5: f32 = 1.485_722_4e-5;
    const A7: f32 = 5.122_297e-8;
    const A9: f32 = -8.604_671_5e-11;
    const A11: f32 = 2.000_188e-13;
    const A13: f32 = -2.760_768_5e-16;
    const B0: f32 = 4.893_525e-3;
    const B2: f32 = 2.268_434_6e-3;
    const B4: f32 = 1.185_347e-4;
    const B6: f32 = 1.198_258_4e-6;
    let x = x.clamp(-7.905_311, 7.905_311);
    let x2 = x * x;
    let mut p = x2 * A13 + A11;
    p = x2 * p + A9;
    p = x2 * p + A7;
    p = x2 * p + A5;
    p = x2 * p + A3;
    p = x2 * p + A1;
    p *= x;
    let mut q = x2 * B6 + B4;
    q = x2 * q + B2;
    q = x2 * q + B0;
    p / q
}

/// `e^x`, branch-free, so that loops calling it vectorise (glibc's `expf` is one call per
/// element: a tenth of M's training step). Cody–Waite reduction `x = n ln2 + r` with
/// `|r| <= ln2/2` (`n` rounded by the 1.5·2^23 trick, which needs no `floor` instruction),
/// Cephes' degree-6 polynomial for `e^r`, and `2^n` written into the exponent bits.
/// Relative error below 3e-7 on [-87.3, 88] (tested against f64); 0 below -87.3 (where
/// f32 leaves normal numbers), and it saturates at e^88 ≈ 1.65e38 instead of overflowing.
#[inline(always)]
#[allow(clippy::excessive_precision)] // Cephes' coefficients as published
pub fn fast_exp(x: f32) -> f32 {
    const LO: f32 = -87.336_55;
    const HI: f32 = 88.0;
    const LN2_HI: f32 = 0.693_359_375;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(LO, HI);
    let n = (xc * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_15e-4;
    p = p * r + 1.398_199_95e-3;
    p = p * r + 8.333_451_9e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_55e-1;
    p = p * r + 5.000_000_1e-1;
    let e_r = p * (r * r) + r + 1.0;
    let two_n = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < LO { 0.0 } else { e_r * two_n }
}

/// The logistic sigmoid through [`fast_exp`] (relative error below 5e-7).
#[inline(always)]
pub fn fast_sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + fast_exp(-x))
}

impl CustomOp1 for GeluTanh {
    fn name(&self) -> &'static str {
        "dreamgym-gelu-tanh"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, "gelu_tanh")?;
        let out = map1(x, |x| {
            0.5 * x * (1.0 + fast_tanh(GELU_K0 * (x + GELU_K1 * x * x * x)))
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            x.apply_op2_no_bwd(&grad.contiguous()?, &GeluTanhGrad)?,
        ))
    }
}

impl CustomOp2 for GeluTanhGrad {
    fn name(&self) -> &'static str {
        "dreamgym-gelu-tanh-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "gelu_tanh_grad")?;
        let g = contiguous_f32(s2, l2, "gelu_tanh_grad")?;
        if x.len() != g.len() {
            candle_core::bail!(
                "gelu_tanh_grad: inputs of {} and {} elements",
                x.len(),
                g.len()
            );
        }
        let out = map2(x, g, |x, g| {
            let t = fast_tanh(GELU_K0 * (x + GELU_K1 * x * x * x));
            let dt = GELU_K0 * (1.0 + 3.0 * GELU_K1 * x * x);
            g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dt)
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `gelu(x)`, tanh approximation; fused on the CPU for f32, candle's composition elsewhere.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(GeluTanh)
    } else {
        x.gelu()
    }
}

/// Per-sample summed squared error of `sigmoid(logits)` against `target` (`[B, ..]` each):
/// `[B]`. One pass each way on the CPU.
struct SigmoidSse;

/// (logits, target, upstream `[B]`) → gradient of the logits.
struct SigmoidSseBackward;

impl CustomOp2 for SigmoidSse {
    fn name(&self) -> &'static str {
        "dreamgym-sigmoid-sse"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let l = contiguous_f32(s1, l1, "sigmoid_sse")?;
        let t = contiguous_f32(s2, l2, "sigmoid_sse")?;
        if l1.dims() != l2.dims() || l1.dims().is_empty() {
            candle_core::bail!(
                "sigmoid_sse: logits {:?} and target {:?} differ",
                l1.dims(),
                l2.dims()
            );
        }
        let b = l1.dims()[0];
        let per = l.len() / b.max(1);
        let out = (0..b)
            .map(|i| {
                let (lr, tr) = (&l[i * per..(i + 1) * per], &t[i * per..(i + 1) * per]);
                lr.iter()
                    .zip(tr)
                    .map(|(l, t)| {
                        let d = 1.0 / (1.0 + (-l).exp()) - t;
                        (d * d) as f64
                    })
                    .sum::<f64>() as f32
            })
            .collect();
        Ok((CpuStorage::F32(out), Shape::from(b)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        target: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = logits.apply_op3_no_bwd(target, &grad.contiguous()?, &SigmoidSseBackward)?;
        Ok((Some(g), None))
    }
}

impl candle_core::CustomOp3 for SigmoidSseBackward {
    fn name(&self) -> &'static str {
        "dreamgym-sigmoid-sse-backward"
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
        let l = contiguous_f32(s1, l1, "sigmoid_sse")?;
        let t = contiguous_f32(s2, l2, "sigmoid_sse")?;
        let g = contiguous_f32(s3, l3, "sigmoid_sse")?;
        let per = l.len() / g.len().max(1);
        let out = l
            .iter()
            .zip(t)
            .enumerate()
            .map(|(i, (l, t))| {
                let y = 1.0 / (1.0 + (-l).exp());
                g[i / per] * 2.0 * (y - t) * y * (1.0 - y)
            })
            .collect();
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Per-sample `sum((sigmoid(logits) - target)^2)`, `[B]`; fused on the CPU.
pub fn sigmoid_sse(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    if logits.device().is_cpu() {
        logits
            .contiguous()?
            .apply_op2(&target.contiguous()?, SigmoidSse)
    } else {
        (candle_nn::ops::sigmoid(logits)? - target)?
            .sqr()?
            .flatten_from(1)?
            .sum(1)
    }
}

/// A row stride of at least `n` floats, a multiple of 16 and not of 128: rows a multiple of
/// 128 floats apart fall into the same cache sets when gemm reads down a column of them (a
/// 2,048-float stride ran at two thirds of the speed).
pub(crate) fn padded_stride(n: usize) -> usize {
    let s = n.next_multiple_of(16);
    if s.is_multiple_of(128) { s + 16 } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{max_diff, rand};
    use candle_core::Var;

    #[test]
    fn row_bias_and_weight_match_broadcast_ops_and_their_gradients() {
        let x = Var::from_tensor(&rand(&[4, 3, 5], 21)).unwrap();
        let b = Var::from_tensor(&rand(&[5], 22)).unwrap();
        let up = rand(&[4, 3, 5], 23);
        let loss = |y: &Tensor| (y * &up).unwrap().sum_all().unwrap().backward().unwrap();
        for (fused, composed) in [
            (add_bias(&x, &b).unwrap(), x.broadcast_add(&b).unwrap()),
            (mul_weight(&x, &b).unwrap(), x.broadcast_mul(&b).unwrap()),
        ] {
            assert!(max_diff(&fused, &composed) < 1e-6);
            let (g1, g2) = (loss(&fused), loss(&composed));
            assert!(max_diff(g1.get(&x).unwrap(), g2.get(&x).unwrap()) < 1e-6);
            assert!(max_diff(g1.get(&b).unwrap(), g2.get(&b).unwrap()) < 1e-5);
        }
        assert!(add_bias(&x, &rand(&[4], 1)).is_err());
        assert!(mul_weight(&x, &rand(&[5, 1], 1)).is_err());
        // Rows of a strided view are summed as its logical layout.
        let t = rand(&[5, 3], 24).t().unwrap();
        let want = t.sum(0).unwrap();
        assert!(max_diff(&sum_rows(&t).unwrap(), &want) < 1e-6);
    }

    #[test]
    fn mul_constant_matches_mul_and_gives_the_constant_no_gradient() {
        let x = Var::from_tensor(&rand(&[4, 3, 5], 31)).unwrap();
        let m = Var::from_tensor(&rand(&[4, 3, 5], 32)).unwrap();
        let up = rand(&[4, 3, 5], 33);
        let fused = mul_constant(&x, &m).unwrap();
        let composed = x.mul(&m).unwrap();
        assert!(max_diff(&fused, &composed) < 1e-7);
        let g1 = (&fused * &up)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (&composed * &up)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(max_diff(g1.get(&x).unwrap(), g2.get(&x).unwrap()) < 1e-7);
        assert!(g1.get(&m).is_none(), "the constant got a gradient");
        assert!(g2.get(&m).is_some());
        assert!(mul_constant(&x, &rand(&[4, 3, 4], 1)).is_err());
    }

    #[test]
    fn gradients_of_nodes_used_several_times_add_up() {
        // The vendored candle stores a node's first gradient as it is and adds the later ones
        // (vendor/candle-core/PATCHED.md): x used four ways, one through a transposed view.
        let x = Var::from_tensor(&rand(&[3, 4], 34)).unwrap();
        let w = rand(&[4, 3], 35);
        let y = ((x.as_tensor() * 2.0).unwrap() + x.as_tensor()).unwrap();
        let z = (y.sum_all().unwrap()
            + x.t().unwrap().mul(&w).unwrap().sum_all().unwrap()
            + x.sqr().unwrap().sum_all().unwrap())
        .unwrap();
        let g = z.backward().unwrap();
        let got = g.get(&x).unwrap();
        assert!(got.is_contiguous());
        // d/dx: 2 + 1 + wᵀ + 2x.
        let want = ((w.t().unwrap() + 3.0).unwrap() + (x.as_tensor() * 2.0).unwrap()).unwrap();
        assert!(max_diff(got, &want) < 1e-6);
        // A gradient reached only through a transposed view is stored contiguous.
        let g = x
            .t()
            .unwrap()
            .mul(&w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let got = g.get(&x).unwrap();
        assert!(got.is_contiguous());
        assert!(max_diff(got, &w.t().unwrap()) < 1e-7);
    }

    #[test]
    fn fast_exp_is_within_3e7_relative_of_exp() {
        let mut worst = 0f64;
        let mut x = -87.3f32;
        while x <= 88.0 {
            let exact = (x as f64).exp();
            let err = ((fast_exp(x) as f64 - exact) / exact).abs();
            worst = worst.max(err);
            x += 0.000_37;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(fast_exp(0.0), 1.0);
        assert_eq!(fast_exp(-100.0), 0.0);
        assert_eq!(fast_exp(f32::NEG_INFINITY), 0.0);
        assert!(fast_exp(1e9).is_finite() && fast_exp(1e9) > 1e38);
        let s = fast_sigmoid(2.0) as f64;
        assert!((s - 1.0 / (1.0 + (-2f64).exp())).abs() < 1e-7);
    }

    #[test]
    fn fast_tanh_is_within_5e7_of_tanh_everywhere() {
        let mut worst = 0f64;
        // Dense over [-12, 12] (both clamps included), and the exact points.
        for i in -1_200_000..=1_200_000 {
            let x = i as f32 * 1e-5;
            let err = (fast_tanh(x) as f64 - (x as f64).tanh()).abs();
            worst = worst.max(err);
        }
        assert!(worst < 5e-7, "worst absolute error {worst:e}");
        assert_eq!(fast_tanh(0.0), 0.0);
        assert_eq!(fast_tanh(f32::INFINITY), fast_tanh(8.0));
        assert!(fast_tanh(-1e-3) < 0.0 && fast_tanh(1e-3) > 0.0);
    }

    #[test]
    fn fused_gelu_matches_candles_gelu_and_its_gradient() {
        let x = Var::from_tensor(&(rand(&[6, 7, 9], 16) * 4.0).unwrap()).unwrap();
        let up = rand(&[6, 7, 9], 17);
        let fused = gelu_tanh(&x).unwrap();
        let composed = x.gelu().unwrap();
        assert!(max_diff(&fused, &composed) < 1e-6);
        let loss = |y: &Tensor| (y * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let (g1, g2) = (loss(&fused), loss(&composed));
        assert!(max_diff(g1.get(&x).unwrap(), g2.get(&x).unwrap()) < 1e-5);
        // f64 (finite-difference models) takes candle's composition.
        let x64 = x.as_tensor().to_dtype(DType::F64).unwrap();
        assert_eq!(gelu_tanh(&x64).unwrap().dtype(), DType::F64);
    }

    #[test]
    fn fused_bias_relu_and_sigmoid_sse_match_composed_ops() {
        let x = Var::from_tensor(&rand(&[4, 3, 5], 11)).unwrap();
        let b = Var::from_tensor(&rand(&[5], 12)).unwrap();
        let up = rand(&[4, 3, 5], 13);
        let fused = bias_relu(&x, &b).unwrap();
        let composed = x.broadcast_add(&b).unwrap().relu().unwrap();
        assert!(max_diff(&fused, &composed) < 1e-7);
        let g1 = (fused * &up)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (composed * &up)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [&x, &b] {
            assert!(max_diff(g1.get(v).unwrap(), g2.get(v).unwrap()) < 1e-5);
        }
        let l = Var::from_tensor(&(rand(&[3, 4, 4, 2], 14) * 3.0).unwrap()).unwrap();
        let t = ((rand(&[3, 4, 4, 2], 15) + 1.0).unwrap() * 0.5).unwrap();
        let w = rand(&[3], 16);
        let fused = sigmoid_sse(&l, &t).unwrap();
        let composed = (candle_nn::ops::sigmoid(&l).unwrap() - &t)
            .unwrap()
            .sqr()
            .unwrap()
            .flatten_from(1)
            .unwrap()
            .sum(1)
            .unwrap();
        assert!(max_diff(&fused, &composed) < 1e-5);
        let g1 = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (composed * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(max_diff(g1.get(&l).unwrap(), g2.get(&l).unwrap()) < 1e-6);
    }
}
