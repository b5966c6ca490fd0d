//! An LSTM with PyTorch's parameter layout (`weight_ih [4H, in]`, `weight_hh [4H, H]`,
//! `bias_ih`, `bias_hh`; gates i, f, g, o), whose cell update is one fused op with its own
//! backward pass.
//!
//! The input projection of the whole sequence is one matmul; each time step is then a
//! `[B, H] x [H, 4H]` matmul plus the fused cell. `candle_nn::lstm` splits every step into a
//! dozen small ops on strided views (measured in issue 4 at 0.33x PyTorch's speed).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use crate::fused::contiguous_f32;
use crate::{Linear, ParamInit};
use rayon::prelude::*;

// The gates' activations are the branch-free `fast_sigmoid` and `fast_tanh`, so the cell's
// loops vectorise (libm's `expf` was a tenth of M's training step).
use crate::fused::{fast_sigmoid as sigmoid, fast_tanh as tanh};

/// The gate activations of one row (`g`, `[4H]` pre-activations in PyTorch's i, f, g, o
/// order) into `act`: sigmoid of i, f and o, tanh of g. Whole-slice loops over branch-free
/// activations, which the compiler vectorises; returns the four `[H]` parts.
#[inline(always)]
fn activate<'a>(g: &[f32], act: &'a mut [f32]) -> (&'a [f32], &'a [f32], &'a [f32], &'a [f32]) {
    let h = g.len() / 4;
    for (y, &x) in act[..2 * h].iter_mut().zip(&g[..2 * h]) {
        *y = sigmoid(x);
    }
    for (y, &x) in act[2 * h..3 * h].iter_mut().zip(&g[2 * h..3 * h]) {
        *y = tanh(x);
    }
    for (y, &x) in act[3 * h..4 * h].iter_mut().zip(&g[3 * h..4 * h]) {
        *y = sigmoid(x);
    }
    let (i, rest) = act[..4 * h].split_at(h);
    let (f, rest) = rest.split_at(h);
    let (gg, o) = rest.split_at(h);
    (i, f, gg, o)
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
        let gates = contiguous_f32(s1, l1, "lstm cell")?;
        let c = contiguous_f32(s2, l2, "lstm cell")?;
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
        let mut act = vec![0f32; h4];
        for r in 0..b {
            let (i, f, gg, og) = activate(&gates[r * h4..(r + 1) * h4], &mut act);
            let cr = &c[r * h..(r + 1) * h];
            let (oh, oc) = out[r * 2 * h..(r + 1) * 2 * h].split_at_mut(h);
            for j in 0..h {
                let cn = f[j] * cr[j] + i[j] * gg[j];
                oh[j] = og[j] * tanh(cn);
                oc[j] = cn;
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
        let gates = contiguous_f32(s1, l1, "lstm cell backward")?;
        let c = contiguous_f32(s2, l2, "lstm cell backward")?;
        let grad = contiguous_f32(s3, l3, "lstm cell backward")?;
        let (b, h) = l2.shape().dims2()?;
        let h4 = 4 * h;
        let mut out = vec![0f32; b * 5 * h];
        let mut act = vec![0f32; h4];
        for r in 0..b {
            let (i, f, gg, og) = activate(&gates[r * h4..(r + 1) * h4], &mut act);
            let cr = &c[r * h..(r + 1) * h];
            let gr = &grad[r * 2 * h..(r + 1) * 2 * h];
            let o = &mut out[r * 5 * h..(r + 1) * 5 * h];
            for j in 0..h {
                let (i, f, gg, og) = (i[j], f[j], gg[j], og[j]);
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

/// The whole sequence from a zero state as one op: (input projections `[B, T, 4H]` including
/// both biases, `weight_hh` `[4H, H]`) → every step's h, `[B, T, H]`; each step's cell state
/// and gate activations stay in the op (`state`, `[B, T, 5H]`) for its backward pass. Each
/// step is one gemm into the gate slots plus the cell update; the backward pass is
/// backpropagation through time with one gemm per step for h's gradient, and `weight_hh`'s
/// gradient as one product over every step at the end, as cuDNN and PyTorch's CPU LSTM do. Composed of candle ops,
/// every step's slice of the projection would cost a zero-padded full-size gradient.
struct LstmSeq {
    state: std::sync::Arc<std::sync::Mutex<Vec<f32>>>,
}

/// (h `[B, T, H]`, weight_hh, upstream gradient of h) with the forward's cell states and gates
/// → `[B*T*4H + 4H*H]`: the projections' gradient, then weight_hh's.
struct LstmSeqBackward {
    state: std::sync::Arc<std::sync::Mutex<Vec<f32>>>,
}

/// `dst (+)= lhs · rhs` for `(m, n, k)`, each matrix given as (pointer, column stride, row
/// stride) in gemm's order; `accumulate` adds to `dst` instead of overwriting it.
///
/// # Safety
/// Every element the shapes and strides address must lie in its allocation, and `dst` must
/// not overlap `lhs` or `rhs`.
unsafe fn gemm_f32(
    (m, n, k): (usize, usize, usize),
    (dst, dst_cs, dst_rs): (*mut f32, isize, isize),
    accumulate: bool,
    (lhs, lhs_cs, lhs_rs): (*const f32, isize, isize),
    (rhs, rhs_cs, rhs_rs): (*const f32, isize, isize),
    parallelism: gemm::Parallelism,
) {
    let alpha = if accumulate { 1.0f32 } else { 0.0 };
    // SAFETY: as the caller guarantees.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs,
            dst_rs,
            accumulate,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            alpha,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        )
    }
}

fn parallelism() -> gemm::Parallelism {
    let n = candle_core::utils::get_num_threads();
    if n > 1 {
        gemm::Parallelism::Rayon(n)
    } else {
        gemm::Parallelism::None
    }
}

impl CustomOp2 for LstmSeq {
    fn name(&self) -> &'static str {
        "dreamgym-lstm-seq"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let proj = contiguous_f32(s1, l1, "lstm seq")?;
        let w = contiguous_f32(s2, l2, "lstm seq")?;
        let (b, t, h4) = l1.shape().dims3()?;
        let (wr, h) = l2.shape().dims2()?;
        if wr != h4 || h4 != 4 * h {
            candle_core::bail!(
                "lstm seq: projections {:?} do not fit weight_hh {:?}",
                l1.shape(),
                l2.shape()
            );
        }
        let (h5, srow, hrow) = (5 * h, t * 5 * h, t * h);
        let mut res = vec![0f32; b * t * h];
        let mut state = vec![0f32; b * t * h5];
        // weight_hh transposed to `[H, 4H]` once for the sequence: gemm multiplies by W's
        // `[4H, H]` layout only after repacking it, which it did at every one of the T steps.
        // Rows are padded off multiples of 128 floats (cache sets), as `Proj`'s inference copy.
        let ws = crate::fused::padded_stride(h4);
        let mut wt = vec![0f32; h * ws];
        for (i, row) in w.chunks(h).enumerate() {
            for (j, v) in row.iter().enumerate() {
                wt[j * ws + i] = *v;
            }
        }
        // Sequences are independent: each group of them runs all T steps on one thread (its
        // gemm and its cell updates), with no hand-off between threads from step to step. Group
        // sizes do not depend on the thread count, so neither do the numbers.
        let arch = pulp::Arch::new();
        let run = |((st, hr), pr): ((&mut [f32], &mut [f32]), &[f32])| {
            let g = hr.len() / hrow;
            let mut act = vec![0f32; h4];
            for step in 0..t {
                for r in 0..g {
                    let dst = r * srow + step * h5 + h;
                    st[dst..dst + h4]
                        .copy_from_slice(&pr[(r * t + step) * h4..(r * t + step + 1) * h4]);
                }
                if step > 0 {
                    // gates[r, :] += h_{t-1}[r, :] @ weight_hh^T
                    unsafe {
                        gemm_f32(
                            (g, h4, h),
                            (st.as_mut_ptr().add(step * h5 + h), 1, srow as isize),
                            true,
                            (hr.as_ptr().add((step - 1) * h), 1, hrow as isize),
                            (wt.as_ptr(), 1, ws as isize),
                            gemm::Parallelism::None,
                        );
                    }
                }
                arch.dispatch(CellsForward {
                    st: &mut *st,
                    hr: &mut *hr,
                    act: &mut act,
                    step,
                    h,
                    t,
                });
            }
        };
        let gs = group_size(b);
        state
            .par_chunks_mut(gs * srow)
            .zip(res.par_chunks_mut(gs * hrow))
            .zip(proj.par_chunks(gs * t * h4))
            .for_each(run);
        *self.state.lock().unwrap() = state;
        Ok((CpuStorage::F32(res), Shape::from((b, t, h))))
    }

    fn bwd(
        &self,
        proj: &Tensor,
        w: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let op = LstmSeqBackward {
            state: self.state.clone(),
        };
        let both = res.apply_op3_no_bwd(w, &grad.contiguous()?, &op)?;
        let n = proj.elem_count();
        let dproj = both.narrow(0, 0, n)?.reshape(proj.shape())?;
        let dw = both.narrow(0, n, w.elem_count())?.reshape(w.shape())?;
        Ok((Some(dproj), Some(dw)))
    }
}

impl CustomOp3 for LstmSeqBackward {
    fn name(&self) -> &'static str {
        "dreamgym-lstm-seq-backward"
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
        let hs = contiguous_f32(s1, l1, "lstm seq backward")?;
        let w = contiguous_f32(s2, l2, "lstm seq backward")?;
        let grad = contiguous_f32(s3, l3, "lstm seq backward")?;
        let (b, t, h) = l1.shape().dims3()?;
        let (h4, h5) = (4 * h, 5 * h);
        let state = self.state.lock().unwrap();
        if state.len() != b * t * h5 {
            candle_core::bail!("lstm seq backward: the forward pass's state is missing");
        }
        let mut out = vec![0f32; b * t * h4 + h4 * h];
        let (dproj, dw) = out.split_at_mut(b * t * h4);
        // Backpropagation through time, each group of sequences on one thread (as forward).
        let arch = pulp::Arch::new();
        let (srow, hrow, drow) = (t * h5, t * h, t * h4);
        let run = |((d, st), gr): ((&mut [f32], &[f32]), &[f32])| {
            let g = d.len() / drow;
            // dh and dc flowing back from the next step, per sequence of the group.
            let mut dh_next = vec![0f32; g * h];
            let mut dc_next = vec![0f32; g * h];
            for step in (0..t).rev() {
                arch.dispatch(CellsBackward {
                    d: &mut *d,
                    st,
                    gr,
                    dh_next: &dh_next,
                    dc_next: &mut dc_next,
                    step,
                    h,
                    t,
                });
                if step == 0 {
                    break;
                }
                unsafe {
                    // dh_{t-1} = dgates_t @ weight_hh   ([g, 4H] x [4H, H])
                    gemm_f32(
                        (g, h, h4),
                        (dh_next.as_mut_ptr(), 1, h as isize),
                        false,
                        (d.as_ptr().add(step * h4), 1, drow as isize),
                        (w.as_ptr(), 1, h as isize),
                        gemm::Parallelism::None,
                    );
                }
            }
        };
        let gs = group_size(b);
        dproj
            .par_chunks_mut(gs * drow)
            .zip(state.par_chunks(gs * srow))
            .zip(grad.par_chunks(gs * hrow))
            .for_each(run);
        // dW = Σ_t dgates_t^T @ h_{t-1}, as one product over every (sequence, step) row:
        // `[4H, B·T] x [B·T, H]` with each row's previous h beside it (zero before the first
        // step). Accumulated step by step it was T - 1 products of depth B, each repacking its
        // operands and reading and writing all of dW.
        if t > 1 {
            let mut prev = vec![0f32; b * t * h];
            for (p, hr) in prev.chunks_mut(t * h).zip(hs.chunks(t * h)) {
                p[h..].copy_from_slice(&hr[..(t - 1) * h]);
            }
            unsafe {
                gemm_f32(
                    (h4, h, b * t),
                    (dw.as_mut_ptr(), 1, h as isize),
                    false,
                    (dproj.as_ptr(), h4 as isize, 1),
                    (prev.as_ptr(), 1, h as isize),
                    parallelism(),
                );
            }
        }
        Ok((CpuStorage::F32(out), Shape::from(b * t * h4 + h4 * h)))
    }
}

/// One step's cell updates for a group of sequences in [`LstmSeq`]'s forward pass: the
/// gates' activations (written over their pre-activations in `st`), c and h.
///
/// A pulp op, not a closure: `Arch::dispatch` calls its op from three places (AVX-512, AVX2
/// and the fallback), so LLVM does not inline a large closure into them and compiles its
/// body once, for baseline x86-64 (SSE2, one lane at a time: measured, this loop ran
/// `mulss`). An `#[inline(always)]` `with_simd` is compiled inside each of them.
struct CellsForward<'a> {
    /// The group's `[g, T, 5H]` state (c, then the four gates).
    st: &'a mut [f32],
    /// The group's `[g, T, H]` hidden states.
    hr: &'a mut [f32],
    /// Scratch of `4H`.
    act: &'a mut [f32],
    step: usize,
    h: usize,
    t: usize,
}

impl pulp::WithSimd for CellsForward<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let Self {
            st,
            hr,
            act,
            step,
            h,
            t,
        } = self;
        let h5 = 5 * h;
        let (srow, hrow) = (t * h5, t * h);
        let cur = step * h5;
        for (st, hr) in st.chunks_exact_mut(srow).zip(hr.chunks_exact_mut(hrow)) {
            let hr = &mut hr[step * h..(step + 1) * h];
            let (i, f, gg, o) = activate(&st[cur + h..cur + h5], act);
            if step > 0 {
                let (prev, now) = st[cur - h5..cur + h].split_at_mut(h5);
                let cells = now.iter_mut().zip(&prev[..h]).zip(hr.iter_mut());
                for ((((now, prev), hr), (i, f)), (gg, o)) in
                    cells.zip(i.iter().zip(f)).zip(gg.iter().zip(o))
                {
                    let c = f * prev + i * gg;
                    *now = c;
                    *hr = o * tanh(c);
                }
            } else {
                let cells = st[cur..cur + h].iter_mut().zip(hr.iter_mut());
                for (((now, hr), i), (gg, o)) in cells.zip(i).zip(gg.iter().zip(o)) {
                    let c = i * gg;
                    *now = c;
                    *hr = o * tanh(c);
                }
            }
            // The backward pass reads the activations, not the pre-activations: computed
            // once here instead of again there (exp and tanh were most of its loop).
            st[cur + h..cur + h5].copy_from_slice(&act[..4 * h]);
        }
    }
}

/// One step of [`LstmSeq`]'s backward pass through the cells of a group of sequences: the
/// gates' gradients into `d`, and the cell state's gradient carried back in `dc_next`. A
/// pulp op for the reason [`CellsForward`] gives.
struct CellsBackward<'a> {
    /// The group's `[g, T, 4H]` gradients of the gates' pre-activations.
    d: &'a mut [f32],
    /// The forward pass's `[g, T, 5H]` state.
    st: &'a [f32],
    /// The upstream `[g, T, H]` gradient of h.
    gr: &'a [f32],
    /// `[g, H]`: h's gradient from the step after.
    dh_next: &'a [f32],
    /// `[g, H]`: c's gradient from the step after, replaced by this step's.
    dc_next: &'a mut [f32],
    step: usize,
    h: usize,
    t: usize,
}

impl pulp::WithSimd for CellsBackward<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let Self {
            d,
            st,
            gr,
            dh_next,
            dc_next,
            step,
            h,
            t,
        } = self;
        let (h4, h5) = (4 * h, 5 * h);
        let (srow, hrow, drow) = (t * h5, t * h, t * h4);
        let cur = step * h5;
        // c before the first step.
        let zeros = if step == 0 { vec![0f32; h] } else { Vec::new() };
        let rows = d
            .chunks_exact_mut(drow)
            .zip(st.chunks_exact(srow))
            .zip(gr.chunks_exact(hrow))
            .zip(dh_next.chunks_exact(h).zip(dc_next.chunks_exact_mut(h)));
        for (((d, st), gr), (dh_n, dc_n)) in rows {
            // The gates' activations, as the forward pass left them.
            let (c, gates) = st[cur..cur + h5].split_at(h);
            let (i, rest) = gates.split_at(h);
            let (f, rest) = rest.split_at(h);
            let (gg, o) = rest.split_at(h);
            let c_prev = if step > 0 {
                &st[cur - h5..cur - h5 + h]
            } else {
                &zeros[..]
            };
            let gr = &gr[step * h..(step + 1) * h];
            let (di, rest) = d[step * h4..(step + 1) * h4].split_at_mut(h);
            let (df, rest) = rest.split_at_mut(h);
            let (dg, d_o) = rest.split_at_mut(h);
            let ins = c.iter().zip(c_prev).zip(gr.iter().zip(dh_n));
            let gates = i.iter().zip(f).zip(gg.iter().zip(o));
            let outs = di
                .iter_mut()
                .zip(df.iter_mut())
                .zip(dg.iter_mut().zip(d_o.iter_mut()));
            let cells = ins.zip(gates).zip(outs).zip(dc_n.iter_mut());
            for (((((c, c_prev), (gr, dh_n)), ((i, f), (gg, o))), ((di, df), (dg, d_o))), dc_n) in
                cells
            {
                let tc = tanh(*c);
                let dh = gr + dh_n;
                let dc = *dc_n + dh * o * (1.0 - tc * tc);
                *di = dc * gg * i * (1.0 - i);
                *df = dc * c_prev * f * (1.0 - f);
                *dg = dc * i * (1.0 - gg * gg);
                *d_o = dh * tc * o * (1.0 - o);
                *dc_n = dc * f;
            }
        }
    }
}

/// Sequences in each group of [`LstmSeq`]'s passes (each group runs all its steps on one
/// thread): about an eighth of the batch, at least 4. Fixed by the batch alone, so the numbers
/// are the same on any number of threads. The cell's loops inside are compiled for the widest
/// vector unit the CPU has (AVX-512 or AVX2, chosen at run time), as `dreamgym_nn::par`'s
/// loops are: they use only exactly rounded operations, so every unit gives the same numbers.
fn group_size(b: usize) -> usize {
    b.div_ceil(8).max(4).min(b.max(1))
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

    /// Runs over `x` `[B, T, in]` from a zero state (training); returns every step's h
    /// `[B, T, H]` and the final (h, c). On the CPU the sequence is one fused op, and the
    /// returned final c carries no gradient (every h does).
    pub fn forward_from_zero(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, inp) = x.dims3()?;
        if x.device().is_cpu() && t > 0 {
            let h = self.hidden;
            // `add_bias`, not `broadcast_add`: its gradient is a sum of rows on all threads
            // (candle's strided reduction over the 10,000 rows of M's batch was a twelfth of
            // its training step).
            let proj = crate::add_bias(
                &self.input.forward(&x.reshape((b * t, inp))?)?,
                &self.bias_hh,
            )?
            .reshape((b, t, 4 * h))?;
            let op = LstmSeq {
                state: Default::default(),
            };
            let state = op.state.clone();
            let hs = proj.apply_op2(&self.weight_hh.contiguous()?, op)?;
            let h_last = hs.narrow(1, t - 1, 1)?.squeeze(1)?;
            // The final cell state, read from the op (no gradient flows through it).
            let c_last: Vec<f32> = {
                let st = state.lock().unwrap();
                (0..b)
                    .flat_map(|r| {
                        st[((r * t + t - 1) * 5 * h)..((r * t + t - 1) * 5 * h + h)].to_vec()
                    })
                    .collect()
            };
            let c_last = Tensor::from_vec(c_last, (b, h), x.device())?;
            return Ok((hs, h_last, c_last));
        }
        let (h0, c0) = self.zero_state(b, x.device())?;
        self.forward_seq(x, &h0, &c0)
    }

    /// A zero (h, c) for `b` sequences.
    pub fn zero_state(&self, b: usize, device: &candle_core::Device) -> Result<(Tensor, Tensor)> {
        let z = Tensor::zeros((b, self.hidden), candle_core::DType::F32, device)?;
        Ok((z.clone(), z))
    }

    /// Runs over `x` `[B, T, in]` from state (h, c) (`[B, H]` each); returns every step's h
    /// stacked `[B, T, H]` and the final (h, c), one step at a time.
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
            // Contiguous: cuBLAS refuses the strided step slice (and its transpose in the
            // backward pass) that the CPU's gemm takes.
            let xt = x.narrow(1, step, 1)?.squeeze(1)?.contiguous()?;
            (h, c) = self.step(&xt, &h, &c)?;
            hs.push(h.clone());
        }
        Ok((Tensor::stack(&hs, 1)?, h, c))
    }

    /// One step: `x` `[B, in]` from (h, c) → (h', c').
    pub fn step(&self, x: &Tensor, h: &Tensor, c: &Tensor) -> Result<(Tensor, Tensor)> {
        let gates = (crate::add_bias(&self.input.forward(x)?, &self.bias_hh)?
            + h.contiguous()?.matmul(&self.weight_hh.t()?)?)?;
        lstm_cell(&gates, c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        crate::test_util::uniform(shape, 1.5, seed)
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

    /// The fused sequence against the per-step path, outputs and gradients; returns the fused
    /// outputs and every parameter's gradient, flattened.
    fn sequence_against_steps(b: usize, inp: usize, hid: usize, t: usize) -> Vec<Vec<f32>> {
        let varmap = candle_nn::VarMap::new();
        let mut init = ParamInit::new(&varmap, &Device::Cpu, 3);
        let lstm = Lstm::new(&mut init, "lstm", inp, hid).unwrap();
        let x = rand(&[b, t, inp], 9);
        let up = rand(&[b, t, hid], 10);
        let zeros = Tensor::zeros((b, hid), candle_core::DType::F32, &Device::Cpu).unwrap();
        let (fused, hf, cf) = lstm.forward_from_zero(&x).unwrap();
        // The per-step path, one cell at a time.
        let mut hs = Vec::new();
        let (mut h, mut c) = (zeros.clone(), zeros.clone());
        for step in 0..t {
            let xt = x.narrow(1, step, 1).unwrap().squeeze(1).unwrap();
            (h, c) = lstm.step(&xt, &h, &c).unwrap();
            hs.push(h.clone());
        }
        let stepped = Tensor::stack(&hs, 1).unwrap();
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
        assert!(d(&fused, &stepped) < 1e-5 && d(&hf, &h) < 1e-5 && d(&cf, &c) < 1e-5);
        // (The fused path's final c carries no gradient; the training loss does not use it.)
        let loss1 = (&fused * &up).unwrap().sum_all().unwrap();
        let loss2 = (stepped * &up).unwrap().sum_all().unwrap();
        let (g1, g2) = (loss1.backward().unwrap(), loss2.backward().unwrap());
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut out = vec![flat(&fused)];
        for (_, var) in crate::sorted_vars(&varmap) {
            let (a, b) = (
                g1.get(var.as_tensor()).unwrap(),
                g2.get(var.as_tensor()).unwrap(),
            );
            assert!(d(a, b) < 1e-4, "{}", d(a, b));
            out.push(flat(a));
        }
        out
    }

    #[test]
    fn fused_sequence_matches_step_by_step_with_gradients() {
        sequence_against_steps(3, 4, 6, 7);
    }

    #[test]
    fn a_large_batch_is_split_by_sequence_and_gives_the_same_numbers_on_any_thread_count() {
        // 40 sequences of a 96-wide cell: enough work for the cell loops to share.
        let (b, hid) = (40, 96);
        assert!(b * 5 * hid >= crate::par::PAR_MIN_ELEMS / 4);
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| sequence_against_steps(b, 5, hid, 6))
        };
        let (one, three) = (run(1), run(3));
        for (i, (a, b)) in one.iter().zip(&three).enumerate() {
            let d = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(d == 0.0, "output {i} differs by {d}");
        }
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
