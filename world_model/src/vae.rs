//! V: the convolutional variational autoencoder of "World Models" (Ha & Schmidhuber, 2018).

use candle_core::{D, Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use crate::WmError;
use dreamgym_nn::{
    Linear, ParamInit, conv_out_size, conv_transpose_out_size, conv_transpose2d_act, conv2d_act,
    sigmoid_sse,
};

/// V's architecture and loss. The defaults are the paper's (4,348,547 parameters).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaeConfig {
    /// Side of the square input image.
    pub image_size: usize,
    /// Input channels (3 for RGB).
    pub channels: usize,
    /// Latent size.
    pub z_size: usize,
    /// Encoder convolutions' output channels (kernel `encoder_kernel`, stride 2, ReLU).
    pub encoder_channels: Vec<usize>,
    /// Encoder kernel size.
    pub encoder_kernel: usize,
    /// Width of the decoder's dense layer (reshaped to 1x1xN).
    pub decoder_dense: usize,
    /// Decoder transposed convolutions' output channels; the last layer outputs `channels`.
    pub decoder_channels: Vec<usize>,
    /// Decoder kernels, one per transposed convolution (stride 2), `decoder_channels.len() + 1`.
    pub decoder_kernels: Vec<usize>,
    /// The KL term is clamped below at `kl_tolerance * z_size` per sample (free bits).
    pub kl_tolerance: f32,
}

impl Default for VaeConfig {
    fn default() -> Self {
        Self {
            image_size: 64,
            channels: 3,
            z_size: 32,
            encoder_channels: vec![32, 64, 128, 256],
            encoder_kernel: 4,
            decoder_dense: 1024,
            decoder_channels: vec![128, 64, 32],
            decoder_kernels: vec![5, 5, 6, 6],
            kl_tolerance: 0.5,
        }
    }
}

impl VaeConfig {
    /// The encoder's final feature map side.
    fn encoder_out(&self) -> usize {
        self.encoder_channels.iter().fold(self.image_size, |s, _| {
            conv_out_size(s, self.encoder_kernel, 2)
        })
    }

    /// Checks that the layers fit together: the encoder does not shrink the image to nothing and
    /// the decoder grows 1x1 back to exactly `image_size`.
    pub fn validate(&self) -> Result<(), WmError> {
        let bad = |m: String| Err(WmError::Config(format!("vae: {m}")));
        if self.z_size == 0 || self.channels == 0 || self.decoder_dense == 0 {
            return bad("z_size, channels and decoder_dense must be positive".into());
        }
        if self.encoder_channels.is_empty() || self.encoder_channels.contains(&0) {
            return bad("encoder_channels must be a non-empty list of positive sizes".into());
        }
        // Sizes far past anything trainable would only fail later, as an allocation abort.
        let widest = [self.z_size, self.channels, self.decoder_dense]
            .into_iter()
            .chain(self.encoder_channels.iter().copied())
            .chain(self.decoder_channels.iter().copied())
            .max()
            .unwrap_or(0);
        if widest > 65_536 || self.image_size > 4096 || self.encoder_kernel > 64 {
            return bad(format!(
                "sizes must be at most 65536 (channels, z_size, decoder_dense), 4096 (image_size) \
                 and 64 (kernels); the largest given is {widest}"
            ));
        }
        if self.encoder_kernel == 0 {
            return bad("encoder_kernel must be positive".into());
        }
        let mut s = self.image_size;
        for _ in &self.encoder_channels {
            if s < self.encoder_kernel || self.encoder_kernel == 0 {
                return bad(format!(
                    "image_size {} is too small for {} encoder layers of kernel {}",
                    self.image_size,
                    self.encoder_channels.len(),
                    self.encoder_kernel
                ));
            }
            s = conv_out_size(s, self.encoder_kernel, 2);
        }
        if self.decoder_kernels.len() != self.decoder_channels.len() + 1 {
            return bad(format!(
                "decoder_kernels needs {} entries (one per decoder_channels entry, plus the output layer), got {}",
                self.decoder_channels.len() + 1,
                self.decoder_kernels.len()
            ));
        }
        if self.decoder_channels.contains(&0) || self.decoder_kernels.contains(&0) {
            return bad("decoder sizes must be positive".into());
        }
        let out = self
            .decoder_kernels
            .iter()
            .fold(1, |s, &k| conv_transpose_out_size(s, k, 2));
        if out != self.image_size {
            return bad(format!(
                "decoder_kernels {:?} grow 1x1 to {out}x{out}, not image_size {}",
                self.decoder_kernels, self.image_size
            ));
        }
        if self.kl_tolerance.is_nan() || self.kl_tolerance < 0.0 {
            return bad("kl_tolerance must be >= 0".into());
        }
        Ok(())
    }
}

/// The three terms of V's loss, each a scalar tensor (means over the batch).
pub struct VaeLoss {
    /// Reconstruction + clamped KL: what is minimised.
    pub total: Tensor,
    /// Summed squared error per image.
    pub reconstruction: Tensor,
    /// KL divergence to N(0, I) per image, after the free-bits clamp.
    pub kl: Tensor,
}

struct Conv {
    weight: Tensor,
    bias: Tensor,
}

/// V. Images are NHWC f32 in [0, 1]; parameter names and layouts match PyTorch's
/// (`encoder.{i}`, `mu`, `logvar`, `decoder_input`, `decoder.{i}`).
pub struct Vae {
    config: VaeConfig,
    varmap: VarMap,
    device: Device,
    encoder: Vec<Conv>,
    mu: Linear,
    logvar: Linear,
    decoder_input: Linear,
    decoder: Vec<Conv>,
}

impl Vae {
    /// A freshly initialised V on `device` (PyTorch's default initialisation, from `seed`).
    pub fn new(config: VaeConfig, device: &Device, seed: u64) -> Result<Self, WmError> {
        config.validate()?;
        let varmap = VarMap::new();
        let mut init = ParamInit::new(&varmap, device, seed);
        let k = config.encoder_kernel;
        let mut encoder = Vec::new();
        let mut cin = config.channels;
        for (i, &cout) in config.encoder_channels.iter().enumerate() {
            let bound = 1.0 / ((cin * k * k) as f32).sqrt();
            encoder.push(Conv {
                weight: init.uniform(&format!("encoder.{i}.weight"), &[cout, cin, k, k], bound)?,
                bias: init.uniform(&format!("encoder.{i}.bias"), &[cout], bound)?,
            });
            cin = cout;
        }
        let side = config.encoder_out();
        let flat = cin * side * side;
        let mu = Linear::new(&mut init, "mu", flat, config.z_size)?;
        let logvar = Linear::new(&mut init, "logvar", flat, config.z_size)?;
        let decoder_input = Linear::new(
            &mut init,
            "decoder_input",
            config.z_size,
            config.decoder_dense,
        )?;
        let mut decoder = Vec::new();
        let mut cin = config.decoder_dense;
        let outs: Vec<usize> = config
            .decoder_channels
            .iter()
            .copied()
            .chain([config.channels])
            .collect();
        for (i, (&cout, &k)) in outs.iter().zip(&config.decoder_kernels).enumerate() {
            // PyTorch's ConvTranspose2d computes fan_in from weight.size(1) = out channels.
            let bound = 1.0 / ((cout * k * k) as f32).sqrt();
            decoder.push(Conv {
                weight: init.uniform(&format!("decoder.{i}.weight"), &[cin, cout, k, k], bound)?,
                bias: init.uniform(&format!("decoder.{i}.bias"), &[cout], bound)?,
            });
            cin = cout;
        }
        Ok(Self {
            config,
            varmap,
            device: device.clone(),
            encoder,
            mu,
            logvar,
            decoder_input,
            decoder,
        })
    }

    /// The architecture.
    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// The parameters (for optimisers and checkpoints).
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// `[B, H, W, C]` in [0, 1] → (μ, log σ²), each `[B, z]`.
    pub fn encode(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let mut h = x.clone();
        for c in &self.encoder {
            h = conv2d_act(&h, &c.weight, &c.bias, 2, true)?;
        }
        // Flatten in PyTorch's NCHW order so the dense weights mean the same thing there.
        let b = h.dim(0)?;
        let h = h.permute((0, 3, 1, 2))?.contiguous()?.reshape((b, ()))?;
        Ok((self.mu.forward(&h)?, self.logvar.forward(&h)?))
    }

    /// `[B, z]` → images `[B, H, W, C]` in (0, 1).
    pub fn decode(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::sigmoid(&self.decode_logits(z)?)
    }

    /// The decoder before its final sigmoid.
    pub fn decode_logits(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        let b = z.dim(0)?;
        let mut h = self
            .decoder_input
            .forward(z)?
            .reshape((b, 1, 1, self.config.decoder_dense))?;
        let last = self.decoder.len() - 1;
        for (i, c) in self.decoder.iter().enumerate() {
            h = conv_transpose2d_act(&h, &c.weight, &c.bias, 2, i != last)?;
        }
        Ok(h)
    }

    /// z = μ + σ ε with the given noise `eps` (`[B, z]`).
    pub fn reparameterize(
        mu: &Tensor,
        logvar: &Tensor,
        eps: &Tensor,
    ) -> candle_core::Result<Tensor> {
        mu + (logvar * 0.5)?.exp()? * eps
    }

    /// The loss on images `x` with reparameterisation noise `eps`: summed squared error per
    /// image plus KL clamped below at `kl_tolerance * z_size`, both averaged over the batch.
    pub fn loss(&self, x: &Tensor, eps: &Tensor) -> candle_core::Result<VaeLoss> {
        let (mu, logvar) = self.encode(x)?;
        let z = Self::reparameterize(&mu, &logvar, eps)?;
        let reconstruction = sigmoid_sse(&self.decode_logits(&z)?, x)?.mean(0)?;
        // KL(N(mu, sigma) || N(0, 1)) = -0.5 * sum(1 + logvar - mu^2 - exp(logvar)).
        let kl = ((logvar.exp()? + mu.sqr()? - logvar)? - 1.0)?.sum(D::Minus1)? * 0.5;
        let floor = (self.config.kl_tolerance * self.config.z_size as f32) as f64;
        let kl = kl?.maximum(floor)?.mean(0)?;
        let total = (&reconstruction + &kl)?;
        Ok(VaeLoss {
            total,
            reconstruction,
            kl,
        })
    }
}

/// u8 HWC frames (concatenated) → an NHWC f32 tensor in [0, 1].
pub fn frames_to_tensor(
    frames: &[u8],
    batch: usize,
    side: usize,
    channels: usize,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let t = Tensor::from_slice(frames, (batch, side, side, channels), &Device::Cpu)?;
    (t.to_dtype(candle_core::DType::F32)? / 255.0)?.to_device(device)
}

/// An NHWC f32 tensor in [0, 1] → u8 frames, concatenated.
pub fn tensor_to_frames(x: &Tensor) -> candle_core::Result<Vec<u8>> {
    let v: Vec<f32> = x.flatten_all()?.to_device(&Device::Cpu)?.to_vec1()?;
    Ok(v.iter()
        .map(|p| (p.clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect())
}
