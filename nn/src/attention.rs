//! Softmax and causal scaled dot-product attention from ops that carry gradients (candle's
//! `softmax_last_dim` and `sdpa` have no backward pass).

use candle_core::{D, Device, Result, Tensor};

/// Softmax over the last dimension (max-subtracted, differentiable).
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    candle_nn::ops::softmax(x, D::Minus1)
}

/// An additive mask `[t_q, t_k]`: 0 where query `i` may see key `j`, −∞ elsewhere. The
/// queries are the last `t_q` of the `t_k` positions (with a KV cache, `t_k - t_q` positions
/// came before), so query `i` sees keys `j <= i + t_k - t_q`.
pub fn causal_mask(t_q: usize, t_k: usize, device: &Device) -> Result<Tensor> {
    if t_q > t_k {
        candle_core::bail!("causal_mask: {t_q} queries but only {t_k} keys");
    }
    let offset = t_k - t_q;
    let m: Vec<f32> = (0..t_q)
        .flat_map(|i| {
            (0..t_k).map(move |j| {
                if j <= i + offset {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Tensor::from_vec(m, (t_q, t_k), device)
}

/// `softmax(q kᵀ / √d + causal mask) v` for `q` `[B, H, Tq, D]` and `k`, `v` `[B, KV, Tk, D]`
/// (`Tk >= Tq`: the queries are the last positions). With grouped-query attention (`KV < H`,
/// `H` a multiple of `KV`) query head `h` reads key head `h / (H / KV)`, as Hugging Face's
/// `repeat_kv`; the heads sharing a key head are stacked into one matmul instead of copying
/// the keys. The softmax is one fused pass each way on the CPU
/// ([`causal_softmax`](crate::causal_softmax)). Returns `[B, H, Tq, D]`.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (b, h, t_q, d) = q.dims4()?;
    let (bk, kv, _, dk) = k.dims4()?;
    if bk != b || dk != d || kv == 0 || h % kv != 0 || v.dims() != k.dims() {
        candle_core::bail!(
            "attention: queries {:?} do not fit keys {:?} and values {:?}",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    let rep = h / kv;
    let q = q.contiguous()?.reshape((b, kv, rep * t_q, d))?;
    // A transposed view is enough for the CPU's gemm; other devices need it contiguous.
    let scores = q.matmul(&k.contiguous()?.t()?)?;
    let p = crate::causal_softmax(&scores, t_q, 1.0 / (d as f64).sqrt())?;
    p.matmul(&v.contiguous()?)?.reshape((b, h, t_q, d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finite_difference_check;
    use candle_core::Var;

    fn rand(shape: (usize, usize, usize, usize), seed: u64) -> Var {
        let t = crate::test_util::rand(&[shape.0, shape.1, shape.2, shape.3], seed);
        Var::from_tensor(&t).unwrap()
    }

    #[test]
    fn rows_are_convex_combinations_of_past_values_only() {
        let (q, k, v) = (
            rand((1, 2, 5, 3), 1),
            rand((1, 2, 5, 3), 2),
            rand((1, 2, 5, 3), 3),
        );
        let y = causal_attention(q.as_tensor(), k.as_tensor(), v.as_tensor()).unwrap();
        // The first query sees only the first key: its output is the first value.
        let y0: Vec<f32> = y
            .get(0)
            .unwrap()
            .get(1)
            .unwrap()
            .get(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        let v0: Vec<f32> = v
            .get(0)
            .unwrap()
            .get(1)
            .unwrap()
            .get(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        for (a, b) in y0.iter().zip(&v0) {
            assert!((a - b).abs() < 1e-6);
        }
        // Changing the last value changes only the last position's output.
        let mut v2: Vec<f32> = v.flatten_all().unwrap().to_vec1().unwrap();
        for h in 0..2 {
            for d in 0..3 {
                v2[h * 15 + 4 * 3 + d] += 1.0;
            }
        }
        let v2 = Tensor::from_vec(v2, (1, 2, 5, 3), &Device::Cpu).unwrap();
        let y2 = causal_attention(q.as_tensor(), k.as_tensor(), &v2).unwrap();
        let diff: Vec<f32> = (y2 - &y)
            .unwrap()
            .abs()
            .unwrap()
            .max_keepdim(3)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for h in 0..2 {
            for t in 0..5 {
                assert_eq!(
                    diff[h * 5 + t] > 1e-6,
                    t == 4,
                    "head {h} position {t}: {diff:?}"
                );
            }
        }
    }

    #[test]
    fn attention_gradients_match_finite_differences() {
        let (q, k, v) = (
            rand((2, 2, 4, 3), 4),
            rand((2, 2, 4, 3), 5),
            rand((2, 2, 4, 3), 6),
        );
        let loss = || {
            causal_attention(q.as_tensor(), k.as_tensor(), v.as_tensor())?
                .sin()?
                .sum_all()
        };
        for var in [&q, &k, &v] {
            let r = finite_difference_check(&loss, var, 1e-2, 16).unwrap();
            assert!(r.max_abs_err < 2e-3, "{r:?}");
        }
    }

    #[test]
    fn a_kv_cache_offset_sees_the_earlier_keys() {
        let m: Vec<Vec<f32>> = causal_mask(2, 4, &Device::Cpu).unwrap().to_vec2().unwrap();
        assert_eq!(m[0], vec![0.0, 0.0, 0.0, f32::NEG_INFINITY]);
        assert_eq!(m[1], vec![0.0; 4]);
        assert!(causal_mask(3, 2, &Device::Cpu).is_err());
    }
}
