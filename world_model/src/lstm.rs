//! An LSTM with PyTorch's parameter layout (`weight_ih [4H, in]`, `weight_hh [4H, H]`,
//! `bias_ih`, `bias_hh`; gates i, f, g, o), whose cell update is one fused op with its own
//! backward pass.
//!
//! The input projection of the whole sequence is one matmul; each time step is then a
//! `[B, H] x [H, 4H]` matmul plus the fused cell. `candle_nn::lstm` splits every step into a
//! dozen small ops on strided views (measured in issue 4 at 0.33x PyTorch's speed).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use crate::nn::{Linear, ParamInit};

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// tanh through one `exp` (glibc's `tanhf` goes through `expm1f` and was 10% of M's step).
fn tanh(x: f32) -> f32 {
    if x.abs() > 15.0 {
        return x.signum();
    }
    1.0 - 2.0 / ((2.0 * x).exp() + 1.0)
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(d) => d.as_slice(),
        _ => candle_core::bail!("{op}: only f32 is supported"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: inputs must be contiguous"),
    }
}

/// (gates `[B, 4H]`, c `[B, H]`) → `[B, 2H]` = (h', c').
struct Cell;

/// (gates, c, grad of `[h', c']`) → `[B, 5H]` = (grad of gates, grad of c).
struct CellBackward;

impl CustomOp2 for Cell {
    fn name(&self) -> &'static str {
        "dreamgym-lstm-cell"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let gates = slice(s1, l1, "lstm cell")?;
        let c = slice(s2, l2, "lstm cell")?;
        let (b, h4) = l1.shape().dims2()?;
        let h = h4 / 4;
        if l2.shape().dims2()? != (b, h) || h4 != 4 * h {
            candle_core::bail!(
                "lstm cell: gates {:?} do not fit state {:?}",
                l1.shape(),
                l2.shape()
            );
        }
        let mut out = vec![0f32; b * 2 * h];
        for r in 0..b {
            let g = &gates[r * h4..(r + 1) * h4];
            let cr = &c[r * h..(r + 1) * h];
            let o = &mut out[r * 2 * h..(r + 1) * 2 * h];
            for j in 0..h {
                let i = sigmoid(g[j]);
                let f = sigmoid(g[h + j]);
                let gg = tanh(g[2 * h + j]);
                let og = sigmoid(g[3 * h + j]);
                let cn = f * cr[j] + i * gg;
                o[j] = og * tanh(cn);
                o[h + j] = cn;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((b, 2 * h))))
    }

    fn bwd(
        &self,
        gates: &Tensor,
        c: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let h = c.dim(1)?;
        let both = gates.apply_op3_no_bwd(c, &grad.contiguous()?, &CellBackward)?;
        Ok((
            Some(both.narrow(1, 0, 4 * h)?),
            Some(both.narrow(1, 4 * h, h)?),
        ))
    }
}

impl CustomOp3 for CellBackward {
    fn name(&self) -> &'static str {
        "dreamgym-lstm-cell-backward"
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
        let gates = slice(s1, l1, "lstm cell backward")?;
        let c = slice(s2, l2, "lstm cell backward")?;
        let grad = slice(s3, l3, "lstm cell backward")?;
        let (b, h) = l2.shape().dims2()?;
        let h4 = 4 * h;
        let mut out = vec![0f32; b * 5 * h];
        for r in 0..b {
            let g = &gates[r * h4..(r + 1) * h4];
            let cr = &c[r * h..(r + 1) * h];
            let gr = &grad[r * 2 * h..(r + 1) * 2 * h];
            let o = &mut out[r * 5 * h..(r + 1) * 5 * h];
            for j in 0..h {
                let i = sigmoid(g[j]);
                let f = sigmoid(g[h + j]);
                let gg = tanh(g[2 * h + j]);
                let og = sigmoid(g[3 * h + j]);
                let cn = f * cr[j] + i * gg;
                let tc = tanh(cn);
                let dh = gr[j];
                let dc = gr[h + j] + dh * og * (1.0 - tc * tc);
                o[j] = dc * gg * i * (1.0 - i);
                o[h + j] = dc * cr[j] * f * (1.0 - f);
                o[2 * h + j] = dc * i * (1.0 - gg * gg);
                o[3 * h + j] = dh * tc * og * (1.0 - og);
                o[4 * h + j] = dc * f;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((b, 5 * h))))
    }
}

/// One LSTM cell update from pre-activation `gates` `[B, 4H]` and cell state `c` `[B, H]`:
/// returns (h', c'). Differentiable; on non-CPU devices it is composed from candle ops.
pub fn lstm_cell(gates: &Tensor, c: &Tensor) -> Result<(Tensor, Tensor)> {
    let h = c.dim(1)?;
    if gates.device().is_cpu() {
        let both = gates.contiguous()?.apply_op2(&c.contiguous()?, Cell)?;
        return Ok((both.narrow(1, 0, h)?, both.narrow(1, h, h)?));
    }
    let chunks = gates.chunk(4, 1)?;
    let i = candle_nn::ops::sigmoid(&chunks[0])?;
    let f = candle_nn::ops::sigmoid(&chunks[1])?;
    let g = chunks[2].tanh()?;
    let o = candle_nn::ops::sigmoid(&chunks[3])?;
    let cn = ((f * c)? + (i * g)?)?;
    let hn = (o * cn.tanh()?)?;
    Ok((hn, cn))
}

/// A single-layer LSTM (batch first).
#[derive(Debug, Clone)]
pub struct Lstm {
    input: Linear,
    /// `[4H, H]`
    weight_hh: Tensor,
    /// `[4H]`
    bias_hh: Tensor,
    hidden: usize,
}

impl Lstm {
    /// A new LSTM named `name.weight_ih` etc. with PyTorch's initialisation (U(±1/√H)).
    pub fn new(init: &mut ParamInit, name: &str, inp: usize, hidden: usize) -> Result<Self> {
        let bound = 1.0 / (hidden as f32).sqrt();
        let weight_ih = init.uniform(&format!("{name}.weight_ih"), &[4 * hidden, inp], bound)?;
        let weight_hh = init.uniform(&format!("{name}.weight_hh"), &[4 * hidden, hidden], bound)?;
        let bias_ih = init.uniform(&format!("{name}.bias_ih"), &[4 * hidden], bound)?;
        let bias_hh = init.uniform(&format!("{name}.bias_hh"), &[4 * hidden], bound)?;
        Ok(Self {
            input: Linear {
                weight: weight_ih,
                bias: bias_ih,
            },
            weight_hh,
            bias_hh,
            hidden,
        })
    }

    /// Hidden size.
    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// Runs over `x` `[B, T, in]` from state (h, c) (`[B, H]` each); returns every step's h
    /// stacked `[B, T, H]` and the final (h, c).
    pub fn forward_seq(
        &self,
        x: &Tensor,
        h0: &Tensor,
        c0: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let t = x.dim(1)?;
        // Each step's input projection is its own matmul: slicing one projection of the whole
        // sequence would make every step's backward pass materialise a zero-padded gradient of
        // the full [B, T, 4H] tensor (candle's narrow backward), 100x the work at T = 100.
        let (mut h, mut c) = (h0.clone(), c0.clone());
        let mut hs = Vec::with_capacity(t);
        for step in 0..t {
            let xt = x.narrow(1, step, 1)?.squeeze(1)?;
            (h, c) = self.step(&xt, &h, &c)?;
            hs.push(h.clone());
        }
        Ok((Tensor::stack(&hs, 1)?, h, c))
    }

    /// One step: `x` `[B, in]` from (h, c) → (h', c').
    pub fn step(&self, x: &Tensor, h: &Tensor, c: &Tensor) -> Result<(Tensor, Tensor)> {
        let gates = (self.input.forward(x)?.broadcast_add(&self.bias_hh)?
            + h.contiguous()?.matmul(&self.weight_hh.t()?)?)?;
        lstm_cell(&gates, c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.5f32..1.5)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// The same cell from candle ops (the path non-CPU devices take).
    fn composed(gates: &Tensor, c: &Tensor) -> (Tensor, Tensor) {
        let ch = gates.chunk(4, 1).unwrap();
        let i = candle_nn::ops::sigmoid(&ch[0]).unwrap();
        let f = candle_nn::ops::sigmoid(&ch[1]).unwrap();
        let g = ch[2].tanh().unwrap();
        let o = candle_nn::ops::sigmoid(&ch[3]).unwrap();
        let cn = ((f * c).unwrap() + (i * g).unwrap()).unwrap();
        let hn = (o * cn.tanh().unwrap()).unwrap();
        (hn, cn)
    }

    #[test]
    fn fused_cell_matches_composed_ops_with_gradients() {
        let g = Var::from_tensor(&rand(&[3, 20], 1)).unwrap();
        let c = Var::from_tensor(&rand(&[3, 5], 2)).unwrap();
        let (wh, wc) = (rand(&[3, 5], 3), rand(&[3, 5], 4));
        let (h1, c1) = lstm_cell(&g, &c).unwrap();
        let (h2, c2) = composed(&g, &c);
        let d = |a: &Tensor, b: &Tensor| {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert!(d(&h1, &h2) < 1e-6 && d(&c1, &c2) < 1e-6);
        let l1 = ((h1 * &wh).unwrap() + (c1 * &wc).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let l2 = ((h2 * &wh).unwrap() + (c2 * &wc).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let (g1, g2) = (l1.backward().unwrap(), l2.backward().unwrap());
        for v in [&g, &c] {
            assert!(d(g1.get(v).unwrap(), g2.get(v).unwrap()) < 1e-5);
        }
    }
}
