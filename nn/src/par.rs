//! Row-parallel loops for the fused CPU ops: rows (or fixed chunks of an elementwise map) are
//! split between rayon's threads when there is enough work, each task compiled for the widest
//! vector unit the CPU has, and every sum across rows adds fixed blocks in a fixed order, so
//! results do not depend on the number of threads.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// Below this many elements of work an op runs on the calling thread: waking rayon's workers
/// costs tens of microseconds, about what a vectorised pass over 2^16 elements takes (at
/// 2^14, a Decision Transformer's uncached acting step, 60 tokens, took a quarter longer).
pub const PAR_MIN_ELEMS: usize = 1 << 16;

/// Rows summed together before the per-block sums are added, in order (weight gradients).
pub const SUM_BLOCK_ROWS: usize = 64;

/// Calls `f(row index, output row)` for every `row`-long row of `out`, on several threads
/// when there is enough work (`cost` per row, in elements touched). Each task is compiled for
/// the widest vector unit the CPU has (AVX-512 or AVX2, chosen at run time; the loops use only
/// exactly rounded operations, so every unit gives the same numbers).
pub fn for_rows<F>(out: &mut [f32], row: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync + Send,
{
    for_rows_costing(out, row, row, f)
}

/// [`for_rows`] for rows that each cost `cost` elements of work.
pub fn for_rows_costing<T, F>(out: &mut [T], row: usize, cost: usize, f: F)
where
    T: Send,
    F: Fn(usize, &mut [T]) + Sync + Send,
{
    for_rows_with(out, row, cost, &FnRows(f))
}

/// The body of a row loop: writes row `i` into `out`. Implemented with an
/// `#[inline(always)]` `row`, a kernel's loops are compiled for the vector unit
/// [`for_rows_with`] picks. A closure's are only if LLVM chooses to inline it there: `pulp`
/// calls its op from three places (AVX-512, AVX2 and the fallback), and a large closure is
/// then compiled once, for baseline x86-64 (SSE2, one lane at a time; measured on M's mixture
/// NLL).
pub trait RowKernel<T>: Sync {
    /// Writes row `i` into `out`.
    fn row(&self, i: usize, out: &mut [T]);
}

/// A closure as a [`RowKernel`].
struct FnRows<F>(F);

impl<T, F: Fn(usize, &mut [T]) + Sync> RowKernel<T> for FnRows<F> {
    #[inline(always)]
    fn row(&self, i: usize, out: &mut [T]) {
        (self.0)(i, out)
    }
}

/// A chunk of rows from `first` on, as one op for `pulp`'s dispatch.
struct RowsOp<'a, T, K> {
    kernel: &'a K,
    first: usize,
    chunk: &'a mut [T],
    row: usize,
}

impl<T, K: RowKernel<T>> pulp::WithSimd for RowsOp<'_, T, K> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        for (i, o) in self.chunk.chunks_mut(self.row).enumerate() {
            self.kernel.row(self.first + i, o);
        }
    }
}

/// [`for_rows_costing`] with a [`RowKernel`]: calls `kernel.row(row index, output row)` for
/// every `row`-long row of `out`, on several threads when there is enough work.
pub fn for_rows_with<T, K>(out: &mut [T], row: usize, cost: usize, kernel: &K)
where
    T: Send,
    K: RowKernel<T>,
{
    let (row, cost) = (row.max(1), cost.max(1));
    let arch = pulp::Arch::new();
    let run = |first: usize, chunk: &mut [T]| {
        arch.dispatch(RowsOp {
            kernel,
            first,
            chunk,
            row,
        })
    };
    let rows = out.len() / row;
    if rows * cost < PAR_MIN_ELEMS {
        run(0, out);
    } else {
        let per_task = (PAR_MIN_ELEMS / 4 / cost).max(1);
        out.par_chunks_mut(per_task * row)
            .enumerate()
            .for_each(|(t, chunk)| run(t * per_task, chunk));
    }
}

/// `sum over rows of f(row index)`, each `[c]`: blocks of [`SUM_BLOCK_ROWS`] rows summed on
/// any thread, the block sums added in order, so the result is the same on any number of
/// threads.
pub fn sum_over_rows<F>(rows: usize, c: usize, f: F) -> Vec<f32>
where
    F: Fn(usize, &mut [f32]) + Sync + Send,
{
    let blocks = rows.div_ceil(SUM_BLOCK_ROWS);
    let mut partial = vec![0f32; blocks * c];
    let arch = pulp::Arch::new();
    let block = |b: usize, acc: &mut [f32]| {
        arch.dispatch(|| {
            for r in b * SUM_BLOCK_ROWS..rows.min((b + 1) * SUM_BLOCK_ROWS) {
                f(r, acc);
            }
        })
    };
    if rows * c < PAR_MIN_ELEMS {
        partial
            .chunks_mut(c.max(1))
            .enumerate()
            .for_each(|(b, a)| block(b, a));
    } else {
        partial
            .par_chunks_mut(c.max(1))
            .enumerate()
            .for_each(|(b, a)| block(b, a));
    }
    let mut total = vec![0f32; c];
    for p in partial.chunks(c.max(1)) {
        for (t, x) in total.iter_mut().zip(p) {
            *t += x;
        }
    }
    total
}

/// A vector of `n` elements written row by row by `f(row index, row)` ([`for_rows_costing`]),
/// without clearing the memory first (a serial pass over every output, the size of the op
/// itself for an elementwise map).
///
/// # Safety
/// `f` must write every element of each row it is given.
pub(crate) unsafe fn collect_rows<F>(n: usize, row: usize, cost: usize, f: F) -> Vec<f32>
where
    F: Fn(usize, &mut [MaybeUninit<f32>]) + Sync + Send,
{
    let mut out = Vec::with_capacity(n);
    for_rows_costing(&mut out.spare_capacity_mut()[..n], row, cost, f);
    // SAFETY: the caller's `f` wrote each of the first `n` elements.
    unsafe { out.set_len(n) };
    out
}

/// Elements an elementwise map hands to [`for_rows`] as one row.
pub const MAP_CHUNK: usize = 4096;

/// The elementwise map `f` of two equally long inputs, on several threads when large.
pub fn map2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync + Send) -> Vec<f32> {
    assert_eq!(a.len(), b.len(), "map2: inputs of different lengths");
    // SAFETY: `o` is no longer than what is left of `a` and `b`, so the zip writes all of it.
    unsafe {
        collect_rows(a.len(), MAP_CHUNK, MAP_CHUNK, |i, o| {
            let (a, b) = (&a[i * MAP_CHUNK..], &b[i * MAP_CHUNK..]);
            for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
                o.write(f(*a, *b));
            }
        })
    }
}

/// The elementwise map `f` of one input, on several threads when large.
pub fn map1(a: &[f32], f: impl Fn(f32) -> f32 + Sync + Send) -> Vec<f32> {
    // SAFETY: `o` is no longer than what is left of `a`, so the zip writes all of it.
    unsafe {
        collect_rows(a.len(), MAP_CHUNK, MAP_CHUNK, |i, o| {
            for (o, a) in o.iter_mut().zip(&a[i * MAP_CHUNK..]) {
                o.write(f(*a));
            }
        })
    }
}

/// `f(x_row, p)` for every `c`-long row of `x`, with `p` a `[c]` parameter (a bias, a
/// weight), on several threads when large. `x` must hold whole rows.
pub fn map_rows(x: &[f32], p: &[f32], f: impl Fn(f32, f32) -> f32 + Sync + Send) -> Vec<f32> {
    let c = p.len().max(1);
    assert!(
        x.len().is_multiple_of(c),
        "map_rows: {} elements are not rows of {c}",
        x.len()
    );
    // SAFETY: every row is `c` long, as `p` and the row of `x`, so the zip writes all of it.
    unsafe {
        collect_rows(x.len(), c, c, |i, o| {
            for ((o, x), p) in o.iter_mut().zip(&x[i * c..]).zip(p) {
                o.write(f(*x, *p));
            }
        })
    }
}

/// Runs `f` on one of rayon's worker threads and waits for it. The multi-threaded ops `f` runs
/// then share their work with the other workers directly, instead of each op handing its work
/// to the pool from outside and putting the calling thread to sleep until it is done (a
/// wake-up on both sides per op).
pub fn on_workers<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    rayon::join(f, || ()).0
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};
    use candle_nn::VarMap;

    use crate::test_util::{max_diff, rand};
    use crate::{LayerNorm, ParamInit, add_bias, gelu_tanh, mul_constant, sum_rows};

    /// Runs `f` with rayon's work on `threads` threads.
    fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(f)
    }

    /// Layer norm, bias, GELU and a constant mask on rows large enough to be shared between
    /// threads, forward and backward: every output and gradient, flattened.
    fn row_ops(rows: usize, c: usize) -> Vec<Vec<f32>> {
        let varmap = VarMap::new();
        let mut init = ParamInit::new(&varmap, &Device::Cpu, 0);
        let mut ln = LayerNorm::new(&mut init, "ln", c, 1e-5, true).unwrap();
        let w = Var::from_tensor(&(rand(&[c], 1) + 1.0).unwrap()).unwrap();
        let b = Var::from_tensor(&rand(&[c], 2)).unwrap();
        ln.weight = w.as_tensor().clone();
        ln.bias = Some(b.as_tensor().clone());
        let x = Var::from_tensor(&(rand(&[rows, c], 3) * 3.0).unwrap()).unwrap();
        let mask = rand(&[rows, c], 4)
            .ge(0.0)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let y = ln.forward(&x).unwrap();
        let y = gelu_tanh(&add_bias(&y, &b).unwrap()).unwrap();
        let y = mul_constant(&y, &mask).unwrap();
        let up = rand(&[rows, c], 5);
        let g = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        vec![
            flat(&y),
            flat(g.get(&x).unwrap()),
            flat(g.get(&w).unwrap()),
            flat(g.get(&b).unwrap()),
            flat(&sum_rows(&up).unwrap()),
        ]
    }

    #[test]
    fn row_ops_give_the_same_numbers_on_any_number_of_threads_and_match_the_composition() {
        // 600 × 192 elements: above the threshold, split between threads.
        let (rows, c) = (600, 192);
        assert!(rows * c > super::PAR_MIN_ELEMS);
        let one = on_threads(1, || row_ops(rows, c));
        let three = on_threads(3, || row_ops(rows, c));
        assert_eq!(one, three);
        // The same forward pass from candle's broadcast ops, in f64.
        let x = (rand(&[rows, c], 3) * 3.0)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let (w, b) = ((rand(&[c], 1) + 1.0).unwrap(), rand(&[c], 2));
        let (w, b) = (
            w.to_dtype(DType::F64).unwrap(),
            b.to_dtype(DType::F64).unwrap(),
        );
        let mean = x.mean_keepdim(1).unwrap();
        let centred = x.broadcast_sub(&mean).unwrap();
        let var = centred.sqr().unwrap().mean_keepdim(1).unwrap();
        let norm = centred
            .broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
            .unwrap();
        let y = norm.broadcast_mul(&w).unwrap().broadcast_add(&b).unwrap();
        let y = y.broadcast_add(&b).unwrap().gelu().unwrap();
        let mask = rand(&[rows, c], 4)
            .ge(0.0)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let want = (y * mask).unwrap().to_dtype(DType::F32).unwrap();
        let got = Tensor::from_vec(one[0].clone(), (rows, c), &Device::Cpu).unwrap();
        assert!(max_diff(&got, &want) < 1e-5, "{}", max_diff(&got, &want));
        // The rows' sum, added in f64.
        let up = rand(&[rows, c], 5).to_vec2::<f32>().unwrap();
        for (j, s) in one[4].iter().enumerate() {
            let direct: f64 = up.iter().map(|r| r[j] as f64).sum();
            assert!((*s as f64 - direct).abs() < 1e-4, "{s} vs {direct}");
        }
    }

    #[test]
    fn a_batch_of_small_products_is_the_same_as_each_product_alone() {
        // 64 products of 60 × 60 × 32: small each, large together, so the batch is shared
        // between threads product by product (vendor/candle-core's matmul).
        let a = rand(&[64, 60, 32], 6);
        let b = rand(&[64, 32, 60], 7);
        let run = || a.matmul(&b).unwrap();
        let (one, three) = (on_threads(1, run), on_threads(3, run));
        assert_eq!(max_diff(&one, &three), 0.0);
        for i in [0, 31, 63] {
            let alone = a.get(i).unwrap().matmul(&b.get(i).unwrap()).unwrap();
            assert_eq!(max_diff(&three.get(i).unwrap(), &alone), 0.0);
        }
        // A transposed right operand (attention's `q kᵀ`), against a product in f64.
        let k = rand(&[64, 60, 32], 8);
        let got = on_threads(3, || a.matmul(&k.t().unwrap()).unwrap());
        let want = a
            .to_dtype(DType::F64)
            .unwrap()
            .matmul(&k.to_dtype(DType::F64).unwrap().t().unwrap())
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        assert!(max_diff(&got, &want) < 1e-5);
    }
}
