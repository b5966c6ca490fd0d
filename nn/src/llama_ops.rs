//! Fused, multi-threaded CPU kernels for the Llama-style transformer core: RMSNorm, rotary
//! positions, SwiGLU, the causal softmax of attention (grouped-query heads share their keys
//! without copies) and the cross-entropy of a large vocabulary. Each is one pass forward and
//! one or two backward, over rows split between threads. Rows are independent and every sum
//! across rows adds fixed blocks in a fixed order, so results do not depend on the number of
//! threads. Off the CPU, or in another dtype, each falls back to a composition of candle ops,
//! which carries gradients on every device.
//!
//! Composed from candle's ops these ran one elementwise pass each (a dozen for a norm and its
//! backward, five for a log-softmax over 49k logits), several of them on one thread: most of a
//! SmolLM2 training step outside the matmuls.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, D, DType, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;

use crate::fused::contiguous_f32;
use crate::par::{MAP_CHUNK, for_rows, for_rows_costing, map2, sum_over_rows};

/// `e^x` in f32 to about 2 ulp (Cephes' `expf`: a degree-6 polynomial on [−ln2/2, ln2/2] and
/// an exponent built from bits), branch-free so that loops calling it vectorise. Inputs are
/// clamped to [−87, 88], so the result is never 0 or ∞ (`e^−87` ≈ 1.6e−38); NaN stays NaN.
#[inline(always)]
#[allow(clippy::excessive_precision)] // the coefficients as Cephes publishes them
pub(crate) fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_375;
    const C2: f32 = -2.121_944_4e-4;
    // 1.5 · 2²³: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * C1 - n * C2;
    let mut p = 1.987_569_15e-4_f32;
    p = p * r + 1.398_199_950_7e-3;
    p = p * r + 8.333_451_907_3e-3;
    p = p * r + 4.166_579_589_4e-2;
    p = p * r + 1.666_666_545_9e-1;
    p = p * r + 5.000_000_120_1e-1;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// `Σ f(i)` for `i < n`, in 16 interleaved partial sums added in a fixed order at the end:
/// independent chains of additions that vectorise, and the same result on every run.
#[inline(always)]
fn lane_sum(n: usize, f: impl Fn(usize) -> f32) -> f32 {
    const L: usize = 16;
    let mut acc = [0f32; L];
    let whole = n / L * L;
    for base in (0..whole).step_by(L) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(base + l);
        }
    }
    let mut sum = 0f32;
    for a in acc {
        sum += a;
    }
    for i in whole..n {
        sum += f(i);
    }
    sum
}

fn contiguous_u32<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [u32]> {
    let data = match storage {
        CpuStorage::U32(d) => d.as_slice(),
        _ => candle_core::bail!("{op}: the targets must be u32"),
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: the targets must be contiguous"),
    }
}

fn is_cpu_f32(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy

/// Per-row `−log softmax(logits)[target]`: logits `[N, V]`, targets `[N]` (u32) → `[N]`.
struct CrossEntropy;

/// (logits, targets, upstream `[N]`) → `(softmax(logits) − onehot(target)) · upstream`.
struct CrossEntropyGrad;

/// The row length of a `[N, V]` logits layout, checked against `n` targets.
fn ce_shape(logits: &Layout, targets: usize, op: &str) -> Result<usize> {
    match logits.dims() {
        [n, v] if *n == targets && *v > 0 => Ok(*v),
        d => candle_core::bail!("{op}: logits {d:?} do not fit {targets} targets"),
    }
}

/// `(max, log Σ e^(x − max))` of a row.
fn log_sum_exp(row: &[f32]) -> (f32, f32) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum = lane_sum(row.len(), |i| fast_exp(row[i] - max));
    (max, sum.ln())
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "dreamgym-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "cross_entropy")?;
        let t = contiguous_u32(s2, l2, "cross_entropy")?;
        let v = ce_shape(l1, t.len(), "cross_entropy")?;
        if let Some(bad) = t.iter().find(|&&t| t as usize >= v) {
            candle_core::bail!("cross_entropy: target {bad} is outside the {v} classes");
        }
        let mut out = vec![0f32; t.len()];
        // One output number per row, which reads a row of logits.
        for_rows_costing(&mut out, 1, v, |i, o| {
            let row = &x[i * v..(i + 1) * v];
            let (max, lse) = log_sum_exp(row);
            o[0] = max + lse - row[t[i] as usize];
        });
        Ok((CpuStorage::F32(out), Shape::from(t.len())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = logits.apply_op3_no_bwd(targets, &grad.contiguous()?, &CrossEntropyGrad)?;
        Ok((Some(g), None))
    }
}

impl CustomOp3 for CrossEntropyGrad {
    fn name(&self) -> &'static str {
        "dreamgym-cross-entropy-grad"
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
        let x = contiguous_f32(s1, l1, "cross_entropy_grad")?;
        let t = contiguous_u32(s2, l2, "cross_entropy_grad")?;
        let g = contiguous_f32(s3, l3, "cross_entropy_grad")?;
        let v = ce_shape(l1, t.len(), "cross_entropy_grad")?;
        if g.len() != t.len() {
            candle_core::bail!(
                "cross_entropy_grad: {} gradients for {} rows",
                g.len(),
                t.len()
            );
        }
        let mut out = vec![0f32; x.len()];
        for_rows(&mut out, v, |i, o| {
            let row = &x[i * v..(i + 1) * v];
            let (max, lse) = log_sum_exp(row);
            let shift = max + lse;
            for (o, x) in o.iter_mut().zip(row) {
                *o = g[i] * fast_exp(x - shift);
            }
            if let Some(o) = o.get_mut(t[i] as usize) {
                *o -= g[i];
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Per-row cross-entropy `−log softmax(logits)[target]` of logits `[N, V]` and class ids
/// `[N]`: `[N]`. Fused and multi-threaded on the CPU in f32; a target outside the classes is
/// an error.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let targets = targets.to_dtype(DType::U32)?;
    if is_cpu_f32(&[logits]) {
        logits
            .contiguous()?
            .apply_op2(&targets.contiguous()?, CrossEntropy)
    } else {
        let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
        logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?.neg()
    }
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

/// `x / √(mean(x²) + eps) · w` over rows of `x` (`[.., C]`, `w` `[C]`).
struct RmsNormOp {
    eps: f32,
}

/// (x, w, upstream) → the gradient of x.
struct RmsNormGradX {
    eps: f32,
}

/// (x, upstream) → the gradient of w, `[C]`.
struct RmsNormGradW {
    eps: f32,
}

#[inline]
fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let ms = lane_sum(row.len(), |i| row[i] * row[i]) / row.len() as f32;
    1.0 / (ms + eps).sqrt()
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "dreamgym-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "rms_norm")?;
        let w = contiguous_f32(s2, l2, "rms_norm")?;
        let c = w.len();
        let mut out = vec![0f32; x.len()];
        for_rows(&mut out, c, |i, o| {
            let row = &x[i * c..(i + 1) * c];
            let r = inv_rms(row, self.eps);
            for ((o, x), w) in o.iter_mut().zip(row).zip(w) {
                *o = x * r * w;
            }
        });
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
        let gx = x.apply_op3_no_bwd(w, &grad, &RmsNormGradX { eps: self.eps })?;
        let gw = x.apply_op2_no_bwd(&grad, &RmsNormGradW { eps: self.eps })?;
        Ok((Some(gx), Some(gw)))
    }
}

impl CustomOp3 for RmsNormGradX {
    fn name(&self) -> &'static str {
        "dreamgym-rms-norm-grad-x"
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
        let x = contiguous_f32(s1, l1, "rms_norm_grad")?;
        let w = contiguous_f32(s2, l2, "rms_norm_grad")?;
        let g = contiguous_f32(s3, l3, "rms_norm_grad")?;
        let c = w.len();
        let mut out = vec![0f32; x.len()];
        // y = x̂ · w with x̂ = x · r: dx = r · (g·w − x̂ · mean(g·w·x̂)).
        for_rows(&mut out, c, |i, o| {
            let (row, gr) = (&x[i * c..(i + 1) * c], &g[i * c..(i + 1) * c]);
            let r = inv_rms(row, self.eps);
            let dot = lane_sum(c, |j| gr[j] * w[j] * row[j]);
            let k = dot * r * r / c as f32;
            for (((o, x), g), w) in o.iter_mut().zip(row).zip(gr).zip(w) {
                *o = r * (g * w - x * k);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

impl CustomOp2 for RmsNormGradW {
    fn name(&self) -> &'static str {
        "dreamgym-rms-norm-grad-w"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "rms_norm_grad")?;
        let g = contiguous_f32(s2, l2, "rms_norm_grad")?;
        let c = l1.dims().last().copied().unwrap_or(0);
        if c == 0 {
            return Ok((CpuStorage::F32(Vec::new()), Shape::from(0)));
        }
        let total = sum_over_rows(x.len() / c, c, |i, acc| {
            let (row, gr) = (&x[i * c..(i + 1) * c], &g[i * c..(i + 1) * c]);
            let r = inv_rms(row, self.eps);
            for ((a, x), g) in acc.iter_mut().zip(row).zip(gr) {
                *a += g * x * r;
            }
        });
        Ok((CpuStorage::F32(total), Shape::from(c)))
    }
}

/// RMSNorm of the rows of `x` (`[.., C]`) scaled by `w` (`[C]`): fused and multi-threaded on
/// the CPU in f32, composed elsewhere.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    crate::fused::check_row_param(x, w, "rms_norm")?;
    if is_cpu_f32(&[x, w]) {
        x.contiguous()?
            .apply_op2(&w.contiguous()?, RmsNormOp { eps: eps as f32 })
    } else {
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(w)
    }
}

// ---------------------------------------------------------------------------------------------
// SwiGLU

/// `silu(a) · b`, elementwise.
struct SwiGlu;

/// (a, b, upstream) → the gradient of a.
struct SwiGluGradA;

/// (a, upstream) → the gradient of b, `silu(a) · upstream`.
struct SwiGluGradB;

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + fast_exp(-x))
}

fn same_len(a: &[f32], b: &[f32], op: &str) -> Result<()> {
    if a.len() != b.len() {
        candle_core::bail!("{op}: inputs of {} and {} elements", a.len(), b.len());
    }
    Ok(())
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "dreamgym-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = contiguous_f32(s1, l1, "swiglu")?;
        let b = contiguous_f32(s2, l2, "swiglu")?;
        same_len(a, b, "swiglu")?;
        let out = map2(a, b, |a, b| a * sigmoid(a) * b);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let ga = a.apply_op3_no_bwd(b, &grad, &SwiGluGradA)?;
        let gb = a.apply_op2_no_bwd(&grad, &SwiGluGradB)?;
        Ok((Some(ga), Some(gb)))
    }
}

impl CustomOp3 for SwiGluGradA {
    fn name(&self) -> &'static str {
        "dreamgym-swiglu-grad-a"
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
        let a = contiguous_f32(s1, l1, "swiglu_grad")?;
        let b = contiguous_f32(s2, l2, "swiglu_grad")?;
        let g = contiguous_f32(s3, l3, "swiglu_grad")?;
        same_len(a, b, "swiglu_grad")?;
        same_len(a, g, "swiglu_grad")?;
        // One pass over the three inputs: d silu(a)/da = σ(a) · (1 + a · (1 − σ(a))).
        let mut out = vec![0f32; a.len()];
        for_rows(&mut out, MAP_CHUNK, |i, o| {
            let r = i * MAP_CHUNK..i * MAP_CHUNK + o.len();
            for (((o, a), b), g) in o
                .iter_mut()
                .zip(&a[r.clone()])
                .zip(&b[r.clone()])
                .zip(&g[r])
            {
                let s = sigmoid(*a);
                *o = b * g * s * (1.0 + a * (1.0 - s));
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

impl CustomOp2 for SwiGluGradB {
    fn name(&self) -> &'static str {
        "dreamgym-swiglu-grad-b"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = contiguous_f32(s1, l1, "swiglu_grad")?;
        let g = contiguous_f32(s2, l2, "swiglu_grad")?;
        same_len(a, g, "swiglu_grad")?;
        let out = map2(a, g, |a, g| a * sigmoid(a) * g);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `silu(gate) · up` (Llama's MLP), fused and multi-threaded on the CPU in f32.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.dims() != up.dims() {
        candle_core::bail!("swiglu: gate {:?} and up {:?}", gate.dims(), up.dims());
    }
    if is_cpu_f32(&[gate, up]) {
        gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
    } else {
        candle_nn::ops::silu(gate)? * up
    }
}

// ---------------------------------------------------------------------------------------------
// Rotary positions

/// `x · cos + rotate_half(x) · sin` for `x` `[.., T, D]` and tables `[T, D]`; with `inverse`,
/// its transpose (the rotation back): the gradient of the forward rotation.
struct Rotary {
    inverse: bool,
}

impl CustomOp3 for Rotary {
    fn name(&self) -> &'static str {
        "dreamgym-rotary"
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
        let x = contiguous_f32(s1, l1, "rotary")?;
        let cos = contiguous_f32(s2, l2, "rotary")?;
        let sin = contiguous_f32(s3, l3, "rotary")?;
        let dims = l1.dims();
        let (t, d) = match dims {
            [.., t, d] if d % 2 == 0 && *d > 0 => (*t, *d),
            _ => candle_core::bail!("rotary: input {dims:?} needs [.., T, D] with D even"),
        };
        if l2.dims() != [t, d] || l3.dims() != [t, d] {
            candle_core::bail!(
                "rotary: tables {:?} and {:?} do not fit {dims:?}",
                l2.dims(),
                l3.dims()
            );
        }
        let h = d / 2;
        let mut out = vec![0f32; x.len()];
        for_rows(&mut out, d, |i, o| {
            let p = i % t;
            let (row, c, s) = (
                &x[i * d..(i + 1) * d],
                &cos[p * d..(p + 1) * d],
                &sin[p * d..(p + 1) * d],
            );
            let (x1, x2) = row.split_at(h);
            let (o1, o2) = o.split_at_mut(h);
            if self.inverse {
                // The transpose of the rotation below, exact for any tables.
                for j in 0..h {
                    o1[j] = x1[j] * c[j] + x2[j] * s[h + j];
                    o2[j] = x2[j] * c[h + j] - x1[j] * s[j];
                }
            } else {
                for j in 0..h {
                    o1[j] = x1[j] * c[j] - x2[j] * s[j];
                    o2[j] = x2[j] * c[h + j] + x1[j] * s[h + j];
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The gradient of a rotation is its transpose.
        let g = grad.contiguous()?.apply_op3_no_bwd(
            cos,
            sin,
            &Rotary {
                inverse: !self.inverse,
            },
        )?;
        Ok((Some(g), None, None))
    }
}

/// Rotary embedding in the "rotate half" layout, `x · cos + rotate_half(x) · sin`, for `x`
/// `[.., T, D]` and tables `[T, D]` (Llama's repeat the same frequencies in both halves). Fused
/// on the CPU in f32; the tables are constants (no gradient).
pub fn rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (cos, sin) = (cos.to_dtype(x.dtype())?, sin.to_dtype(x.dtype())?);
    if is_cpu_f32(&[x]) {
        x.contiguous()?.apply_op3(
            &cos.contiguous()?,
            &sin.contiguous()?,
            Rotary { inverse: false },
        )
    } else {
        let d = x.dim(D::Minus1)?;
        let (x1, x2) = (
            x.narrow(D::Minus1, 0, d / 2)?,
            x.narrow(D::Minus1, d / 2, d / 2)?,
        );
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
    }
}

// ---------------------------------------------------------------------------------------------
// Causal softmax

/// `softmax(scale · s)` over the last dimension of scores `[.., R, Tk]` under a causal mask:
/// row `r` is query `r mod t_q` of the last `t_q` positions, and sees keys `j ≤ (r mod t_q) +
/// Tk − t_q`; the rest are 0. Several query heads that share a key head stack their rows.
struct CausalSoftmax {
    t_q: usize,
    scale: f32,
}

/// (probabilities, upstream) → the gradient of the scores.
struct CausalSoftmaxGrad {
    scale: f32,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "dreamgym-causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, "causal_softmax")?;
        let t_k = l.dims().last().copied().unwrap_or(0);
        if t_k < self.t_q || self.t_q == 0 {
            candle_core::bail!("causal_softmax: {} queries but {t_k} keys", self.t_q);
        }
        let offset = t_k - self.t_q;
        let mut out = vec![0f32; x.len()];
        for_rows(&mut out, t_k, |i, o| {
            let seen = (i % self.t_q) + offset + 1;
            let row = &x[i * t_k..i * t_k + seen];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            for (o, x) in o.iter_mut().zip(row) {
                *o = fast_exp(self.scale * (x - max));
            }
            let inv = 1.0 / lane_sum(seen, |j| o[j]);
            for o in &mut o[..seen] {
                *o *= inv;
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(
            &grad.contiguous()?,
            &CausalSoftmaxGrad { scale: self.scale },
        )?))
    }
}

impl CustomOp2 for CausalSoftmaxGrad {
    fn name(&self) -> &'static str {
        "dreamgym-causal-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = contiguous_f32(s1, l1, "causal_softmax_grad")?;
        let g = contiguous_f32(s2, l2, "causal_softmax_grad")?;
        same_len(y, g, "causal_softmax_grad")?;
        let t_k = l1.dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; y.len()];
        for_rows(&mut out, t_k, |i, o| {
            let (y, g) = (&y[i * t_k..(i + 1) * t_k], &g[i * t_k..(i + 1) * t_k]);
            let dot = lane_sum(t_k, |j| y[j] * g[j]);
            for ((o, y), g) in o.iter_mut().zip(y).zip(g) {
                *o = self.scale * y * (g - dot);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `softmax(scale · scores)` over the last dimension under a causal mask, for scores
/// `[.., R, Tk]` whose rows are `t_q` queries (repeated `R / t_q` times, one block per query
/// head) at the last `t_q` of `Tk` positions. Fused on the CPU in f32.
pub fn causal_softmax(scores: &Tensor, t_q: usize, scale: f64) -> Result<Tensor> {
    let (r, t_k) = (scores.dim(D::Minus2)?, scores.dim(D::Minus1)?);
    if t_q == 0 || r % t_q != 0 || t_q > t_k {
        candle_core::bail!(
            "causal_softmax: {t_q} queries do not fit scores {:?}",
            scores.dims()
        );
    }
    if is_cpu_f32(&[scores]) {
        scores.contiguous()?.apply_op1(CausalSoftmax {
            t_q,
            scale: scale as f32,
        })
    } else {
        let mask = crate::causal_mask(t_q, t_k, scores.device())?
            .to_dtype(scores.dtype())?
            .repeat((r / t_q, 1))?;
        crate::softmax(&(scores * scale)?.broadcast_add(&mask)?)
    }
}

// ---------------------------------------------------------------------------------------------
// A few rows times a weight matrix

/// At most this many rows take [`linear`]'s dot-product path (a generation step has one).
pub const FEW_ROWS: usize = 4;

/// Weights read by one task of the dot-product path: enough to be worth a thread.
const DOT_TASK_WEIGHTS: usize = 1 << 16;

/// `x wᵀ` for `x` `[M, K]` with `M ≤ FEW_ROWS` and `w` `[N, K]`: one dot product per output,
/// each weight row read once for all M rows, the rows of `w` shared between threads.
struct FewRowsLinear;

/// The dot products of `x` (`m` rows of `k`) with the rows of `w`, written `[row of w][m]`
/// (compiled for the widest vector unit the CPU has).
struct Dots<'a> {
    x: &'a [f32],
    w: &'a [f32],
    k: usize,
    m: usize,
    out: &'a mut [f32],
}

impl pulp::WithSimd for Dots<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        const G: usize = 4;
        let Dots { x, w, k, m, out } = self;
        // Four weight rows at a time: four independent chains of fused multiply-adds and four
        // streams from memory in flight, each input vector loaded once for the four.
        for (wg, og) in w.chunks(G * k).zip(out.chunks_mut(G * m)) {
            let n = wg.len() / k;
            let row = |r: usize| S::as_simd_f32s(&wg[r.min(n - 1) * k..(r.min(n - 1) + 1) * k]);
            // A short last group repeats its last row; the repeats are not written.
            let rows: [(&[S::f32s], &[f32]); G] = [row(0), row(1), row(2), row(3)];
            for i in 0..m {
                let (xv, xt) = S::as_simd_f32s(&x[i * k..(i + 1) * k]);
                let mut acc = [simd.splat_f32s(0.0); G];
                for (v, a) in xv.iter().enumerate() {
                    for r in 0..G {
                        acc[r] = simd.mul_add_e_f32s(*a, rows[r].0[v], acc[r]);
                    }
                }
                for (r, row) in rows.iter().enumerate().take(n) {
                    let mut sum = simd.reduce_sum_f32s(acc[r]);
                    for (a, b) in xt.iter().zip(row.1) {
                        sum += a * b;
                    }
                    og[r * m + i] = sum;
                }
            }
        }
    }
}

impl CustomOp2 for FewRowsLinear {
    fn name(&self) -> &'static str {
        "dreamgym-few-rows-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "linear")?;
        let w = contiguous_f32(s2, l2, "linear")?;
        let (m, k, n) = match (l1.dims(), l2.dims()) {
            ([m, k], [n, kw]) if k == kw && *k > 0 => (*m, *k, *n),
            (a, b) => candle_core::bail!("linear: input {a:?} does not fit weight {b:?}"),
        };
        // Computed as [N, M], then turned to [M, N] (a copy of M·N numbers, M ≤ FEW_ROWS).
        let mut by_weight = vec![0f32; n * m];
        let arch = pulp::Arch::new();
        let rows_per_task = (DOT_TASK_WEIGHTS / k).max(1).next_multiple_of(4);
        let task = |(t, out): (usize, &mut [f32])| {
            let first = t * rows_per_task;
            let rows = out.len() / m.max(1);
            arch.dispatch(Dots {
                x,
                w: &w[first * k..(first + rows) * k],
                k,
                m,
                out,
            });
        };
        if n * k <= DOT_TASK_WEIGHTS || m == 0 {
            task((0, &mut by_weight[..]));
        } else {
            by_weight
                .par_chunks_mut(rows_per_task * m)
                .enumerate()
                .for_each(task);
        }
        let out = if m == 1 {
            by_weight
        } else {
            (0..m * n).map(|e| by_weight[(e % n) * m + e / n]).collect()
        };
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.matmul(w)?), Some(grad.t()?.matmul(x)?)))
    }
}

/// `x wᵀ` for `x` `[M, K]` and a weight `w` `[N, K]` (PyTorch's layout): `[M, N]`. With a few
/// rows on the CPU in f32 (a generation step), one dot product per output, reading each
/// weight row once, on several threads (gemm's path for one row reads at half the speed);
/// otherwise a matmul.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (m, k) = x.dims2()?;
    let n = w.dim(0)?;
    if (1..=FEW_ROWS).contains(&m) && k > 0 && n > 0 && is_cpu_f32(&[x, w]) {
        x.contiguous()?.apply_op2(&w.contiguous()?, FewRowsLinear)
    } else {
        x.matmul(&w.t()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{max_diff, rand};
    use candle_core::{Device, Var};

    /// The gradients of `Σ f(inputs) · up` through the fused op and through the f64
    /// composition of the same function, compared in f32.
    fn grads_agree(
        inputs: &[Var],
        fused: impl Fn(&[Tensor]) -> Result<Tensor>,
        composed: impl Fn(&[Tensor]) -> Result<Tensor>,
        tol: f32,
    ) {
        let xs: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
        let x64: Vec<Tensor> = xs.iter().map(|x| x.to_dtype(DType::F64).unwrap()).collect();
        let y = fused(&xs).unwrap();
        let y64 = composed(&x64).unwrap();
        assert_eq!(y.dims(), y64.dims());
        let y64_32 = y64.to_dtype(DType::F32).unwrap();
        assert!(
            max_diff(&y, &y64_32) < tol,
            "values {}",
            max_diff(&y, &y64_32)
        );
        let up = rand(y.dims(), 99);
        let g = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let g64 = (&y64 * up.to_dtype(DType::F64).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (i, x) in xs.iter().enumerate() {
            let a = g.get(x).unwrap();
            // The f64 copies are not Vars: their gradients flow back to the f32 Var.
            let b = g64.get(x).unwrap();
            let d = max_diff(a, &b.to_dtype(DType::F32).unwrap());
            assert!(d < tol, "input {i}: gradient differs by {d}");
        }
    }

    fn var(shape: &[usize], seed: u64, scale: f64) -> Var {
        Var::from_tensor(&(rand(shape, seed) * scale).unwrap()).unwrap()
    }

    #[test]
    fn fast_exp_is_within_a_few_ulp_of_exp() {
        let mut worst = 0f64;
        for i in -87_000..88_000 {
            let x = i as f32 / 1000.0 + 0.000_37;
            let exact = (x as f64).exp();
            worst = worst.max(((fast_exp(x) as f64 - exact) / exact).abs());
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert!(fast_exp(f32::NEG_INFINITY) > 0.0 && fast_exp(f32::INFINITY).is_finite());
        assert!(fast_exp(f32::NAN).is_nan());
    }

    #[test]
    fn cross_entropy_matches_log_softmax_and_its_gradient() {
        // Large enough to run on several threads.
        let logits = var(&[70, 301], 1, 4.0);
        let targets: Vec<u32> = (0..70).map(|i| (i * 37 % 301) as u32).collect();
        let t = Tensor::new(targets.as_slice(), &Device::Cpu).unwrap();
        grads_agree(
            &[logits],
            |x| cross_entropy(&x[0], &t),
            |x| {
                let logp = candle_nn::ops::log_softmax(&x[0], D::Minus1)?;
                logp.gather(&t.unsqueeze(1)?, 1)?.squeeze(1)?.neg()
            },
            1e-5,
        );
        let bad = Tensor::new(&[0u32, 301], &Device::Cpu).unwrap();
        let two = rand(&[2, 301], 3);
        let err = cross_entropy(&two, &bad).unwrap_err().to_string();
        assert!(err.contains("target 301"), "{err}");
        assert!(cross_entropy(&two, &t).is_err());
    }

    #[test]
    fn rms_norm_matches_its_composition_and_gradients() {
        let x = var(&[3, 40, 96], 4, 2.0);
        let w = Var::from_tensor(&(rand(&[96], 5) + 1.0).unwrap()).unwrap();
        grads_agree(
            &[x, w],
            |t| rms_norm(&t[0], &t[1], 1e-5),
            |t| {
                let ms = t[0].sqr()?.mean_keepdim(D::Minus1)?;
                t[0].broadcast_div(&(ms + 1e-5)?.sqrt()?)?
                    .broadcast_mul(&t[1])
            },
            2e-5,
        );
    }

    #[test]
    fn swiglu_matches_silu_times_up_and_gradients() {
        let a = var(&[5, 70, 96], 6, 4.0);
        let b = var(&[5, 70, 96], 7, 1.0);
        grads_agree(
            &[a, b],
            |t| swiglu(&t[0], &t[1]),
            |t| candle_nn::ops::silu(&t[0])? * &t[1],
            1e-5,
        );
        assert!(swiglu(&rand(&[2, 3], 1), &rand(&[3, 2], 2)).is_err());
    }

    #[test]
    fn rotary_matches_rotate_half_and_rotates_gradients_back() {
        let (t, d) = (9, 8);
        let x = var(&[2, 3, t, d], 8, 1.0);
        let ang: Vec<f32> = (0..t)
            .flat_map(|p| {
                (0..2).flat_map(move |_| (0..d / 2).map(move |f| p as f32 / (f + 1) as f32))
            })
            .collect();
        let cos =
            Tensor::from_vec(ang.iter().map(|a| a.cos()).collect(), (t, d), &Device::Cpu).unwrap();
        let sin =
            Tensor::from_vec(ang.iter().map(|a| a.sin()).collect(), (t, d), &Device::Cpu).unwrap();
        grads_agree(
            &[x],
            |x| rotary(&x[0], &cos, &sin),
            |x| {
                let (c, s) = (cos.to_dtype(DType::F64)?, sin.to_dtype(DType::F64)?);
                let (x1, x2) = (x[0].narrow(3, 0, d / 2)?, x[0].narrow(3, d / 2, d / 2)?);
                let rotated = Tensor::cat(&[&x2.neg()?, &x1], 3)?;
                x[0].broadcast_mul(&c)? + rotated.broadcast_mul(&s)?
            },
            1e-5,
        );
    }

    #[test]
    fn the_rotary_gradient_is_the_transpose_for_any_tables() {
        // Tables whose halves differ: the backward is still the exact transpose.
        let x = var(&[2, 4, 6], 17, 1.0);
        let (cos, sin) = (rand(&[4, 6], 18), rand(&[4, 6], 19));
        grads_agree(
            &[x],
            |x| rotary(&x[0], &cos, &sin),
            |x| {
                let (c, s) = (cos.to_dtype(DType::F64)?, sin.to_dtype(DType::F64)?);
                let (x1, x2) = (x[0].narrow(2, 0, 3)?, x[0].narrow(2, 3, 3)?);
                let rotated = Tensor::cat(&[&x2.neg()?, &x1], 2)?;
                x[0].broadcast_mul(&c)? + rotated.broadcast_mul(&s)?
            },
            1e-5,
        );
    }

    #[test]
    fn grouped_query_attention_equals_repeated_keys_and_its_gradients() {
        // 6 query heads on 2 key heads, 5 queries after 3 cached positions.
        let q = var(&[2, 6, 5, 8], 9, 1.0);
        let k = var(&[2, 2, 8, 8], 10, 1.0);
        let v = var(&[2, 2, 8, 8], 11, 1.0);
        let repeat = |x: &Tensor| -> Result<Tensor> {
            let (b, kv, t, d) = x.dims4()?;
            x.unsqueeze(2)?
                .broadcast_as((b, kv, 3, t, d))?
                .contiguous()?
                .reshape((b, kv * 3, t, d))
        };
        grads_agree(
            &[q, k, v],
            |t| crate::causal_attention(&t[0], &t[1], &t[2]),
            |t| {
                // softmax(q kᵀ / √d + mask) v with the keys copied for every query head.
                let (k, v) = (repeat(&t[1])?, repeat(&t[2])?);
                let scores = (t[0].matmul(&k.t()?)? / 8f64.sqrt())?;
                let mask = crate::causal_mask(5, 8, &Device::Cpu)?.to_dtype(DType::F64)?;
                candle_nn::ops::softmax(&scores.broadcast_add(&mask)?, D::Minus1)?.matmul(&v)
            },
            2e-5,
        );
        // The composed fallback (here in f64) stacks the heads the same way.
        let [q, k, v] = [9, 10, 11].map(|s| {
            rand(
                &[2, if s == 9 { 6 } else { 2 }, if s == 9 { 5 } else { 8 }, 8],
                s,
            )
        });
        let fused = crate::causal_attention(&q, &k, &v).unwrap();
        let f64_of = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let fallback = crate::causal_attention(&f64_of(&q), &f64_of(&k), &f64_of(&v)).unwrap();
        assert!(max_diff(&fused, &fallback.to_dtype(DType::F32).unwrap()) < 1e-5);
    }

    /// `Σ_j a[.., i, j] b[.., j, l]` over the last two dims of `[B, I, J]` and `[B, J, L]`, in
    /// f64 loops: the closed form the matmul gradients are checked against.
    fn product(a: &[f64], b: &[f64], (batch, i, j, l): (usize, usize, usize, usize)) -> Vec<f64> {
        let mut out = vec![0.0; batch * i * l];
        for bi in 0..batch {
            for r in 0..i {
                for c in 0..l {
                    out[(bi * i + r) * l + c] = (0..j)
                        .map(|t| a[(bi * i + r) * j + t] * b[(bi * j + t) * l + c])
                        .sum();
                }
            }
        }
        out
    }

    fn flat64(t: &Tensor) -> Vec<f64> {
        t.to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// `[B, R, C]` → `[B, C, R]` of a flat buffer.
    fn transposed(a: &[f64], (batch, r, c): (usize, usize, usize)) -> Vec<f64> {
        let mut out = vec![0.0; a.len()];
        for b in 0..batch {
            for i in 0..r {
                for j in 0..c {
                    out[(b * c + j) * r + i] = a[(b * r + i) * c + j];
                }
            }
        }
        out
    }

    #[test]
    fn matmul_gradients_of_transposed_operands_come_back_contiguous_and_frozen_ones_get_none() {
        // The vendored candle patch: `x wᵀ` and `q kᵀ` (batched) give w and k their gradient
        // in their own layout, equal to the closed form; `aᵀ b` likewise for a.
        let (batch, m, k, n) = (6, 5, 4, 3);
        let x = var(&[batch, m, k], 1, 1.0);
        let w = var(&[batch, n, k], 2, 1.0);
        let up = rand(&[batch, m, n], 3);
        let y = x.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap();
        let g = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let (gx, gw) = (g.get(x.as_tensor()).unwrap(), g.get(w.as_tensor()).unwrap());
        assert!(gx.is_contiguous() && gw.is_contiguous());
        let (xv, wv, uv) = (flat64(x.as_tensor()), flat64(w.as_tensor()), flat64(&up));
        // dL/dx = up · w; dL/dw = upᵀ · x.
        let want_x = product(&uv, &wv, (batch, m, n, k));
        let want_w = product(&transposed(&uv, (batch, m, n)), &xv, (batch, n, m, k));
        for (got, want) in [(flat64(gx), want_x), (flat64(gw), want_w.clone())] {
            let d = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(d < 1e-5, "gradient differs by {d}");
        }
        // The transposed operand on the left: (wᵀ)ᵀ-shaped a = [batch, k, m] used as aᵀ.
        let a = var(&[batch, k, m], 4, 1.0);
        let y = a
            .as_tensor()
            .t()
            .unwrap()
            .matmul(&w.as_tensor().t().unwrap())
            .unwrap();
        let g = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let ga = g.get(a.as_tensor()).unwrap();
        assert!(ga.is_contiguous());
        // dL/da = (up · w)ᵀ.
        let want_a = transposed(&product(&uv, &wv, (batch, m, n, k)), (batch, m, k));
        let d = flat64(ga)
            .iter()
            .zip(&want_a)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f64::max);
        assert!(
            d < 1e-5,
            "gradient of the transposed left operand differs by {d}"
        );
        // A frozen weight gets no gradient; the input still does, the same as before.
        // (Upstream computed the product for the frozen operand and kept it in the store.)
        let frozen_t = w.as_tensor().detach().t().unwrap();
        let y = x.as_tensor().matmul(&frozen_t).unwrap();
        let g = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(g.get(&frozen_t).is_none());
        let d = flat64(g.get(x.as_tensor()).unwrap())
            .iter()
            .zip(&product(&uv, &wv, (batch, m, n, k)))
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f64::max);
        assert!(
            d < 1e-5,
            "input gradient with a frozen weight differs by {d}"
        );
    }

    #[test]
    fn a_few_rows_times_a_weight_is_a_matmul_with_its_gradients() {
        // 70 × 1003 weights are shared between threads, the small ones are not; K = 70, 33
        // and 5 leave a tail after the vector lanes.
        // 1003 rows of w: the last group of four is short.
        for (m, n, k) in [(1, 1003, 70), (3, 1003, 70), (2, 3, 5), (4, 7, 33)] {
            let x = var(&[m, k], 15, 1.0);
            let w = var(&[n, k], 16, 1.0);
            grads_agree(
                &[x, w],
                |t| linear(&t[0], &t[1]),
                |t| t[0].matmul(&t[1].t()?),
                // The gradient of x sums 1000 products of order 1 (f32 rounding ~1e-5).
                1e-4,
            );
        }
        assert!(linear(&rand(&[1, 3], 1), &rand(&[4, 5], 2)).is_err());
        // No rows, no inputs or no outputs: an empty product, not a panic.
        let empty = linear(&rand(&[0, 5], 1), &rand(&[4, 5], 2)).unwrap();
        assert_eq!(empty.dims(), [0, 4]);
        let zero_k = linear(
            &Tensor::zeros((2, 0), DType::F32, &Device::Cpu).unwrap(),
            &Tensor::zeros((3, 0), DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap();
        assert_eq!(zero_k.dims(), [2, 3]);
    }

    #[test]
    fn results_do_not_depend_on_the_number_of_threads() {
        let x = rand(&[300, 96], 12);
        let w = Var::from_tensor(&(rand(&[96], 13) + 1.0).unwrap()).unwrap();
        let up = rand(&[300, 96], 14);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let x = Var::from_tensor(&x).unwrap();
                let y = rms_norm(x.as_tensor(), w.as_tensor(), 1e-5).unwrap();
                let g = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
                let gw: Vec<f32> = g.get(w.as_tensor()).unwrap().to_vec1().unwrap();
                let gx: Vec<f32> = g
                    .get(x.as_tensor())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                (gw, gx)
            })
        };
        let one = run(1);
        assert_eq!(one, run(3));
        assert_eq!(one, run(8));
    }
}
