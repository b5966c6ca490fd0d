//! Convolutions in NHWC layout as im2col + one matrix product.
//!
//! candle 0.11's CPU `conv_transpose2d` is a direct loop and its conv weight gradient is slow
//! (measured in issue 4: up to 9x slower than PyTorch per layer). Here a convolution is
//! `im2col(x) @ W`, and a transposed convolution is `col2im(x @ W)`, so all arithmetic runs in
//! candle's gemm-backed `matmul`, whose backward pass is itself two matmuls. `im2col` and
//! `col2im` are pure data movement and each is the other's adjoint, which gives each its
//! backward pass. Images stay NHWC (`[batch, height, width, channels]`) end to end: that is how
//! observations arrive, and it makes the matmul output already the next layer's input layout.
//!
//! Weights keep PyTorch's layouts (`[out, in, kh, kw]` for a convolution, `[in, out, kh, kw]`
//! for a transposed one) so checkpoints load into PyTorch unchanged.
//!
//! On devices other than the CPU the same functions run candle's own NCHW kernels (permuting
//! around them); a test checks both paths agree on the CPU.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

use crate::fused::{bias_relu, contiguous_f32};

/// Geometry of a square-kernel, unpadded, strided convolution over NHWC images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    batch: usize,
    /// Image side (input of a convolution, output of a transposed one).
    h: usize,
    w: usize,
    channels: usize,
    kernel: usize,
    stride: usize,
    /// Output side of the convolution over that image.
    oh: usize,
    ow: usize,
}

impl Geometry {
    fn cols(&self) -> usize {
        self.kernel * self.kernel * self.channels
    }
}

/// Spatial size after an unpadded convolution: `(size - kernel) / stride + 1`.
pub fn conv_out_size(size: usize, kernel: usize, stride: usize) -> usize {
    (size - kernel) / stride + 1
}

/// Spatial size after an unpadded transposed convolution: `(size - 1) * stride + kernel`.
pub fn conv_transpose_out_size(size: usize, kernel: usize, stride: usize) -> usize {
    (size - 1) * stride + kernel
}

/// `[B, H, W, C]` → `[B*OH*OW, C*KH*KW]`, each row one output pixel's receptive field in
/// (c, kh, kw) order.
struct Im2Col(Geometry);

/// The adjoint of [`Im2Col`]: `[B*OH*OW, C*KH*KW]` → `[B, H, W, C]`, summing overlaps.
struct Col2Im(Geometry);

/// [`Im2Col`]'s rows, each written whole by [`im2col_row`], on several threads when large.
fn im2col(g: &Geometry, src: &[f32]) -> Vec<f32> {
    let rows = g.batch * g.oh * g.ow;
    let cols = g.cols();
    // SAFETY: `im2col_row` writes every one of a row's `cols` = (c, ky, kx) elements.
    unsafe {
        crate::par::collect_rows(rows * cols, cols, cols, |r, row| im2col_row(g, src, r, row))
    }
}

/// Output pixel `r`'s receptive field, columns in (c, ky, kx) order: PyTorch's weight layout
/// `[out, in, kh, kw]` is then a plain `[out, in*kh*kw]` matrix, with no copy.
fn im2col_row(g: &Geometry, src: &[f32], r: usize, row: &mut [std::mem::MaybeUninit<f32>]) {
    let kk = g.kernel * g.kernel;
    let per_image = g.oh * g.ow;
    let img_size = g.h * g.w * g.channels;
    let b = r / per_image;
    let rem = r % per_image;
    let (oy, ox) = (rem / g.ow, rem % g.ow);
    let img = &src[b * img_size..(b + 1) * img_size];
    for ky in 0..g.kernel {
        let y = oy * g.stride + ky;
        for kx in 0..g.kernel {
            let start = (y * g.w + ox * g.stride + kx) * g.channels;
            let px = &img[start..start + g.channels];
            let base = ky * g.kernel + kx;
            for (c, v) in px.iter().enumerate() {
                row[c * kk + base].write(*v);
            }
        }
    }
}

/// [`Col2Im`]: each image sums its own rows' overlaps, images on several threads.
fn col2im(g: &Geometry, src: &[f32], dst: &mut [f32]) {
    let cols = g.cols();
    let kk = g.kernel * g.kernel;
    let per_image = g.oh * g.ow;
    let img_size = g.h * g.w * g.channels;
    crate::par::for_rows_costing(dst, img_size, per_image * cols, |b, img| {
        let rows = &src[b * per_image * cols..(b + 1) * per_image * cols];
        for (rem, row) in rows.chunks(cols).enumerate() {
            let (oy, ox) = (rem / g.ow, rem % g.ow);
            for ky in 0..g.kernel {
                let y = oy * g.stride + ky;
                for kx in 0..g.kernel {
                    let start = (y * g.w + ox * g.stride + kx) * g.channels;
                    let px = &mut img[start..start + g.channels];
                    let base = ky * g.kernel + kx;
                    for (c, o) in px.iter_mut().enumerate() {
                        *o += row[c * kk + base];
                    }
                }
            }
        }
    });
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "dreamgym-im2col"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let src = contiguous_f32(storage, layout, "im2col")?;
        let rows = g.batch * g.oh * g.ow;
        if src.len() != g.batch * g.h * g.w * g.channels {
            candle_core::bail!("im2col: {} elements do not fit {g:?}", src.len());
        }
        let dst = im2col(&g, src);
        Ok((CpuStorage::F32(dst), Shape::from((rows, g.cols()))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.contiguous()?.apply_op1(Col2Im(self.0))?))
    }
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "dreamgym-col2im"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let src = contiguous_f32(storage, layout, "col2im")?;
        if src.len() != g.batch * g.oh * g.ow * g.cols() {
            candle_core::bail!("col2im: {} elements do not fit {g:?}", src.len());
        }
        let mut dst = vec![0f32; g.batch * g.h * g.w * g.channels];
        col2im(&g, src, &mut dst);
        Ok((
            CpuStorage::F32(dst),
            Shape::from((g.batch, g.h, g.w, g.channels)),
        ))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.contiguous()?.apply_op1(Im2Col(self.0))?))
    }
}

fn check_f32(x: &Tensor, what: &str) -> Result<()> {
    if x.dtype() != DType::F32 {
        candle_core::bail!("{what}: expected f32, got {:?}", x.dtype());
    }
    Ok(())
}

/// Unpadded strided convolution of NHWC `x` (`[B, H, W, Cin]`) with a PyTorch-layout weight
/// `[Cout, Cin, K, K]` and bias `[Cout]`; returns `[B, OH, OW, Cout]`.
pub fn conv2d(x: &Tensor, weight: &Tensor, bias: &Tensor, stride: usize) -> Result<Tensor> {
    conv2d_act(x, weight, bias, stride, false)
}

/// [`conv2d`] followed by ReLU when `relu` (bias and ReLU fused on the CPU).
pub fn conv2d_act(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    relu: bool,
) -> Result<Tensor> {
    check_f32(x, "conv2d")?;
    let (b, h, w, cin) = x.dims4()?;
    let (cout, wcin, k, k2) = weight.dims4()?;
    if wcin != cin || k != k2 || k > h || k > w || stride == 0 {
        candle_core::bail!(
            "conv2d: input {:?} does not fit weight {:?} with stride {stride}",
            x.dims(),
            weight.dims()
        );
    }
    let (oh, ow) = (conv_out_size(h, k, stride), conv_out_size(w, k, stride));
    if !x.device().is_cpu() {
        let y = x
            .permute((0, 3, 1, 2))?
            .conv2d(weight, 0, stride, 1, 1)?
            .broadcast_add(&bias.reshape((1, cout, 1, 1))?)?;
        let y = y.permute((0, 2, 3, 1))?.contiguous()?;
        return if relu { y.relu() } else { Ok(y) };
    }
    let g = Geometry {
        batch: b,
        h,
        w,
        channels: cin,
        kernel: k,
        stride,
        oh,
        ow,
    };
    let cols = x.contiguous()?.apply_op1(Im2Col(g))?;
    // [Cout, Cin, K, K] is [Cout, Cin*K*K] in im2col's column order: a view, transposed.
    let wmat = weight.reshape((cout, cin * k * k))?.t()?;
    let y = cols.matmul(&wmat)?;
    let y = if relu {
        bias_relu(&y, bias)?
    } else {
        y.broadcast_add(bias)?
    };
    y.reshape((b, oh, ow, cout))
}

/// Unpadded strided transposed convolution of NHWC `x` (`[B, H, W, Cin]`) with a PyTorch-layout
/// weight `[Cin, Cout, K, K]` and bias `[Cout]`; returns `[B, (H-1)*s+K, (W-1)*s+K, Cout]`.
pub fn conv_transpose2d(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
) -> Result<Tensor> {
    conv_transpose2d_act(x, weight, bias, stride, false)
}

/// [`conv_transpose2d`] followed by ReLU when `relu` (bias and ReLU fused on the CPU).
pub fn conv_transpose2d_act(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    relu: bool,
) -> Result<Tensor> {
    check_f32(x, "conv_transpose2d")?;
    let (b, h, w, cin) = x.dims4()?;
    let (wcin, cout, k, k2) = weight.dims4()?;
    if wcin != cin || k != k2 || stride == 0 {
        candle_core::bail!(
            "conv_transpose2d: input {:?} does not fit weight {:?} with stride {stride}",
            x.dims(),
            weight.dims()
        );
    }
    let (oh, ow) = (
        conv_transpose_out_size(h, k, stride),
        conv_transpose_out_size(w, k, stride),
    );
    if !x.device().is_cpu() {
        let y = x
            .permute((0, 3, 1, 2))?
            .conv_transpose2d(weight, 0, 0, stride, 1)?
            .broadcast_add(&bias.reshape((1, cout, 1, 1))?)?;
        let y = y.permute((0, 2, 3, 1))?.contiguous()?;
        return if relu { y.relu() } else { Ok(y) };
    }
    // The transposed convolution's output is the image a convolution of the same geometry reads.
    let g = Geometry {
        batch: b,
        h: oh,
        w: ow,
        channels: cout,
        kernel: k,
        stride,
        oh: h,
        ow: w,
    };
    // [Cin, Cout, K, K] is [Cin, Cout*K*K] in col2im's column order: a view.
    let wmat = weight.reshape((cin, cout * k * k))?;
    let cols = x.reshape((b * h * w, cin))?.matmul(&wmat)?;
    let y = cols.apply_op1(Col2Im(g))?;
    if relu {
        bias_relu(&y, bias)
    } else {
        y.broadcast_add(bias)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{max_diff, rand};
    use candle_core::Var;

    /// candle's own NCHW kernels, the reference the fast path must match.
    fn reference_conv(x: &Tensor, w: &Tensor, b: &Tensor, s: usize, transpose: bool) -> Tensor {
        let xn = x.permute((0, 3, 1, 2)).unwrap();
        let y = if transpose {
            xn.conv_transpose2d(w, 0, 0, s, 1).unwrap()
        } else {
            xn.conv2d(w, 0, s, 1, 1).unwrap()
        };
        let c = b.dims1().unwrap();
        y.broadcast_add(&b.reshape((1, c, 1, 1)).unwrap())
            .unwrap()
            .permute((0, 2, 3, 1))
            .unwrap()
    }

    #[test]
    fn conv2d_matches_candle_reference_forward_and_backward() {
        // Sizes where the kernel tiles the input exactly: candle 0.11's own conv2d backward
        // returns a wrongly sized input gradient otherwise (e.g. 9x11 input, k4 s2 gives 9x10).
        // The last is large enough for im2col to run on several threads.
        for (h, cin, cout, k, s) in [
            (10, 3, 4, 4, 2),
            (7, 2, 5, 3, 1),
            (10, 4, 3, 4, 3),
            (64, 4, 4, 4, 2),
        ] {
            let x = Var::from_tensor(&rand(&[2, h, h + s, cin], 1)).unwrap();
            let w = Var::from_tensor(&rand(&[cout, cin, k, k], 2)).unwrap();
            let b = Var::from_tensor(&rand(&[cout], 3)).unwrap();
            let ours = conv2d(&x, &w, &b, s).unwrap();
            let refr = reference_conv(&x, &w, &b, s, false);
            assert_eq!(ours.dims(), refr.dims());
            assert!(max_diff(&ours, &refr) < 1e-5);
            // Same upstream gradient through both: every input's gradient must agree.
            let up = rand(ours.dims(), 4);
            let g1 = (ours * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (refr * &up).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &w, &b] {
                let (a, r) = (g1.get(v).unwrap(), g2.get(v).unwrap());
                assert!(max_diff(a, r) < 1e-4, "grad differs by {}", max_diff(a, r));
            }
        }
    }

    #[test]
    fn conv_transpose2d_matches_candle_reference_forward_and_backward() {
        // The last is large enough for col2im to run on several threads.
        for (h, cin, cout, k, s) in [
            (1, 6, 4, 5, 2),
            (3, 3, 2, 6, 2),
            (4, 2, 3, 3, 1),
            (16, 4, 8, 4, 2),
        ] {
            let x = Var::from_tensor(&rand(&[2, h, h + 1, cin], 5)).unwrap();
            let w = Var::from_tensor(&rand(&[cin, cout, k, k], 6)).unwrap();
            let b = Var::from_tensor(&rand(&[cout], 7)).unwrap();
            let ours = conv_transpose2d(&x, &w, &b, s).unwrap();
            let refr = reference_conv(&x, &w, &b, s, true);
            assert_eq!(ours.dims(), refr.dims());
            assert!(max_diff(&ours, &refr) < 1e-5);
            let up = rand(ours.dims(), 8);
            let g1 = (ours * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (refr * &up).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &w, &b] {
                let (a, r) = (g1.get(v).unwrap(), g2.get(v).unwrap());
                assert!(max_diff(a, r) < 1e-4, "grad differs by {}", max_diff(a, r));
            }
        }
    }

    #[test]
    fn im2col_and_col2im_are_adjoint() {
        // <im2col(x), y> == <x, col2im(y)> for any x, y: the property each backward relies on.
        let g = Geometry {
            batch: 2,
            h: 7,
            w: 6,
            channels: 3,
            kernel: 3,
            stride: 2,
            oh: 3,
            ow: 2,
        };
        let x = rand(&[2, 7, 6, 3], 9);
        let y = rand(&[2 * 3 * 2, 27], 10);
        // Column order (c, ky, kx): column 9 of the first row is channel 1 at (0, 0).
        let cols = x.apply_op1(Im2Col(g)).unwrap().to_vec2::<f32>().unwrap();
        let img = x.to_vec3::<f32>().map(|_| ()).err();
        assert!(img.is_some(), "x is 4-d");
        let x4: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(cols[0][9], x4[1]);
        assert_eq!(cols[0][1], x4[3], "(c 0, ky 0, kx 1) is pixel (0, 1)");
        let lhs = (x.apply_op1(Im2Col(g)).unwrap() * &y).unwrap();
        let rhs = (y.apply_op1(Col2Im(g)).unwrap() * &x).unwrap();
        let (l, r) = (
            lhs.sum_all().unwrap().to_scalar::<f32>().unwrap(),
            rhs.sum_all().unwrap().to_scalar::<f32>().unwrap(),
        );
        assert!((l - r).abs() < 1e-4, "{l} vs {r}");
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let x = rand(&[1, 8, 8, 3], 1);
        let w = rand(&[4, 2, 4, 4], 2);
        let b = rand(&[4], 3);
        assert!(conv2d(&x, &w, &b, 2).is_err());
        assert!(conv_transpose2d(&x, &w, &b, 2).is_err());
        let big = rand(&[4, 3, 9, 9], 2);
        assert!(conv2d(&x, &big, &b, 2).is_err());
    }
}
