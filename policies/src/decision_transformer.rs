//! The Decision Transformer (Chen et al., "Decision Transformer: Reinforcement Learning via
//! Sequence Modeling", 2021): a causal transformer over (return-to-go, observation, action)
//! tokens, trained offline to predict each action from the tokens before it, and conditioned at
//! test time on the return it should reach.
//!
//! As in the authors' code (`kzl/decision-transformer`, `gym/decision_transformer/models/`):
//! each of the three token kinds has its own linear embedding, a learned timestep embedding is
//! added to all three tokens of a step, a LayerNorm follows, and the transformer has no position
//! embeddings of its own; the action is predicted from the observation token (tanh for Box
//! actions, logits for Discrete ones). Observations are normalised by the dataset's mean and
//! standard deviation and returns divided by `return_scale`; Box actions are mapped to
//! `[-1, 1]` by their bounds.
//!
//! Observations enter through one of three doors: a float vector through a linear embedding,
//! V's latents (the same, fed by a `LatentPolicy` in `agents`), or raw images through a small
//! convolutional encoder trained end to end with the transformer ([`ConvEncoderConfig`]), as
//! in the paper's Atari setup: pixels scaled to `[0, 1]`, DQN's torso (8×8 stride 4, 4×4
//! stride 2, 3×3 stride 1, ReLU after each), a linear layer to the embedding width and tanh.
//!
//! [`DtPolicy`] acts with it: the target return decreases by each reward received
//! ([`Policy::reward`]), and a [`KvCache`] makes each step cost three tokens' work until the
//! context of `K` steps is full (then the last `K` steps are recomputed each step, which is
//! what the model saw in training).

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use dreamgym_envs::{Space, Value};
use dreamgym_nn::{
    Embedding, KvCache, LayerNorm, ParamInit, PositionKind, Proj, Transformer, TransformerConfig,
    conv_out_size, conv2d_act,
};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{Policy, PolicyError};

/// The model's size and context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecisionTransformerConfig {
    /// The transformer core (`positions` must be `none`: time enters through the timestep
    /// embedding; `block_size` must hold `3 · context` tokens).
    pub transformer: TransformerConfig,
    /// K: steps of context.
    pub context: usize,
    /// Size of the timestep table; later timesteps use its last row.
    pub max_timestep: usize,
    /// Returns-to-go are divided by this before they are embedded.
    pub return_scale: f64,
    /// Whether the return-to-go is seen. False makes the same network plain behaviour cloning
    /// (the return tokens carry only their timestep): the baseline the paper compares with.
    #[serde(default = "yes")]
    pub condition_on_return: bool,
    /// Read image observations through a convolutional encoder trained with the transformer
    /// (the paper's Atari setup). `None`: observations are float vectors, embedded linearly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conv: Option<ConvEncoderConfig>,
}

/// The convolutional encoder for image observations: unpadded square convolutions, each
/// followed by ReLU, then a linear layer to the embedding width and tanh. The default is the
/// DQN torso the paper uses on Atari (32, 64, 64 channels; kernels 8, 4, 3; strides 4, 2, 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConvEncoderConfig {
    /// Output channels of each convolution.
    pub channels: Vec<usize>,
    /// Kernel side of each convolution.
    pub kernels: Vec<usize>,
    /// Stride of each convolution.
    pub strides: Vec<usize>,
}

impl Default for ConvEncoderConfig {
    fn default() -> Self {
        Self {
            channels: vec![32, 64, 64],
            kernels: vec![8, 4, 3],
            strides: vec![4, 2, 1],
        }
    }
}

impl ConvEncoderConfig {
    /// Checks the layers, naming the first bad field.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let bad = |m: String| Err(PolicyError::Config(m));
        let n = self.channels.len();
        if n == 0 || n > 16 {
            return bad(format!("conv.channels must name 1 to 16 layers, got {n}"));
        }
        if self.kernels.len() != n || self.strides.len() != n {
            return bad(format!(
                "conv.channels, conv.kernels and conv.strides must have one entry per layer; \
                 got {n}, {} and {}",
                self.kernels.len(),
                self.strides.len()
            ));
        }
        if self.channels.iter().any(|c| !(1..=4096).contains(c)) {
            return bad(format!(
                "conv.channels must each be in 1..=4096, got {:?}",
                self.channels
            ));
        }
        if self.kernels.iter().any(|k| !(1..=64).contains(k)) {
            return bad(format!(
                "conv.kernels must each be in 1..=64, got {:?}",
                self.kernels
            ));
        }
        if self.strides.iter().any(|s| !(1..=64).contains(s)) {
            return bad(format!(
                "conv.strides must each be in 1..=64, got {:?}",
                self.strides
            ));
        }
        Ok(())
    }

    /// The side of the feature map after every layer over a `height × width` image, or an
    /// error naming the layer the image is too small for.
    pub fn output_size(&self, height: usize, width: usize) -> Result<(usize, usize), PolicyError> {
        let (mut h, mut w) = (height, width);
        for (i, (k, s)) in self.kernels.iter().zip(&self.strides).enumerate() {
            if h < *k || w < *k {
                return Err(PolicyError::Incompatible(format!(
                    "a {height}x{width} image is too small for the conv encoder: layer {i} \
                     (kernel {k}) gets a {h}x{w} map"
                )));
            }
            (h, w) = (conv_out_size(h, *k, *s), conv_out_size(w, *k, *s));
        }
        Ok((h, w))
    }
}

fn yes() -> bool {
    true
}

impl Default for DecisionTransformerConfig {
    /// The paper's Gym size: 3 layers, 128 wide, 1 head, K = 20, dropout 0.1.
    fn default() -> Self {
        Self {
            transformer: TransformerConfig {
                positions: PositionKind::None,
                block_size: 60,
                ..TransformerConfig::default()
            },
            context: 20,
            max_timestep: 1024,
            return_scale: 1000.0,
            condition_on_return: true,
            conv: None,
        }
    }
}

impl DecisionTransformerConfig {
    /// Checks the settings, naming the first bad field.
    pub fn validate(&self) -> Result<(), PolicyError> {
        self.transformer.validate()?;
        let bad = |m: String| Err(PolicyError::Config(m));
        if self.transformer.positions != PositionKind::None {
            return bad(
                "transformer.positions must be \"none\" (the timestep embedding carries time)"
                    .into(),
            );
        }
        if !(1..=4096).contains(&self.context) {
            return bad(format!("context must be in 1..=4096, got {}", self.context));
        }
        if self.transformer.block_size < 3 * self.context {
            return bad(format!(
                "transformer.block_size ({}) must hold 3 tokens per step of context ({})",
                self.transformer.block_size,
                3 * self.context
            ));
        }
        if !(1..=1 << 20).contains(&self.max_timestep) {
            return bad(format!(
                "max_timestep must be in 1..=1048576, got {}",
                self.max_timestep
            ));
        }
        if !(self.return_scale.is_finite() && self.return_scale > 0.0) {
            return bad(format!(
                "return_scale must be a positive number, got {}",
                self.return_scale
            ));
        }
        if let Some(conv) = &self.conv {
            conv.validate()?;
        }
        Ok(())
    }
}

/// The action space as the model sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DtAction {
    /// A bounded Box: values mapped to `[-1, 1]`, predicted through tanh.
    Box {
        /// Lower bounds.
        low: Vec<f32>,
        /// Upper bounds.
        high: Vec<f32>,
    },
    /// `n` choices from `start`: embedded by id, predicted as logits.
    Discrete {
        /// Choices.
        n: usize,
        /// The smallest value (Gymnasium's `Discrete(n, start)`).
        #[serde(default)]
        start: i64,
    },
}

impl DtAction {
    /// The model's view of `space` (a bounded Box or a Discrete space).
    pub fn of(space: &Space) -> Result<Self, PolicyError> {
        match space {
            Space::Box(b) if b.is_bounded() && b.shape.len() == 1 => Ok(DtAction::Box {
                low: b.low.clone(),
                high: b.high.clone(),
            }),
            Space::Discrete(d) if (1..=1 << 20).contains(&d.n) => Ok(DtAction::Discrete {
                n: d.n as usize,
                start: d.start,
            }),
            other => Err(PolicyError::Incompatible(format!(
                "the Decision Transformer acts in a bounded 1-D Box or a Discrete space, not \
                 {other}"
            ))),
        }
    }

    /// Values per action in the model (Box: its length; Discrete: one id).
    pub fn width(&self) -> usize {
        match self {
            DtAction::Box { low, .. } => low.len(),
            DtAction::Discrete { .. } => 1,
        }
    }

    /// An env action as the model's values (Box: in `[-1, 1]`; Discrete: the id as a float).
    pub fn encode(&self, action: &Value) -> Result<Vec<f32>, PolicyError> {
        match (self, action) {
            (DtAction::Box { low, high }, Value::F32(a)) if a.len() == low.len() => Ok(a
                .iter()
                .zip(low.iter().zip(high))
                .map(|(x, (l, h))| {
                    (2.0 * (x - l) / (h - l).max(f32::MIN_POSITIVE) - 1.0).clamp(-1.0, 1.0)
                })
                .collect()),
            (DtAction::Discrete { n, start }, Value::Int(i))
                if (*start..*start + *n as i64).contains(i) =>
            {
                Ok(vec![(*i - *start) as f32])
            }
            _ => Err(PolicyError::Incompatible(format!(
                "action {} does not fit the model's {self:?}",
                action.describe()
            ))),
        }
    }

    /// The model's output for one step (Box: tanh values; Discrete: logits) as an env action.
    pub fn decode(&self, out: &[f32]) -> Value {
        match self {
            DtAction::Box { low, high } => Value::F32(
                out.iter()
                    .zip(low.iter().zip(high))
                    .map(|(y, (l, h))| l + (y.clamp(-1.0, 1.0) + 1.0) * 0.5 * (h - l))
                    .collect(),
            ),
            DtAction::Discrete { start, .. } => {
                let best = out
                    .iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, v)| {
                        if *v > bv { (i, *v) } else { (bi, bv) }
                    })
                    .0;
                Value::Int(start + best as i64)
            }
        }
    }
}

/// What a model was built for: the observations and their normalisation, and the actions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DtSpec {
    /// Per-element mean of float observations (length: the observation width; empty for
    /// images).
    pub obs_mean: Vec<f32>,
    /// Per-element standard deviation (floored, never zero).
    pub obs_std: Vec<f32>,
    /// The actions.
    pub action: DtAction,
    /// Image observations `[height, width, channels]` (u8, row-major HWC), read through the
    /// conv encoder and scaled to `[0, 1]`; `None` for float vectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<[usize; 3]>,
}

impl DtSpec {
    /// Spec of image observations `[height, width, channels]`.
    pub fn for_images(image: [usize; 3], action: DtAction) -> Self {
        Self {
            obs_mean: Vec::new(),
            obs_std: Vec::new(),
            action,
            image: Some(image),
        }
    }

    /// The `[height, width, channels]` of an env's images: a u8 Box of three dimensions, or
    /// the `pixels` entry of a Dict space. `None` when it observes no image.
    pub fn image_of(space: &Space) -> Option<[usize; 3]> {
        let b = match space {
            Space::Box(b) => b,
            Space::Dict(d) => d.spaces.get("pixels")?.as_box()?,
            _ => return None,
        };
        match (b.dtype, b.shape.as_slice()) {
            (dreamgym_envs::Dtype::U8, [h, w, c]) => Some([*h, *w, *c]),
            _ => None,
        }
    }

    /// Observation width: floats per step as the model reads them.
    pub fn obs_dim(&self) -> usize {
        match self.image {
            Some([h, w, c]) => h * w * c,
            None => self.obs_mean.len(),
        }
    }

    /// An env observation as the model's floats: a float vector normalised, or an image (a u8
    /// Box, or the `pixels` entry of a Dict) scaled to `[0, 1]`.
    pub fn observe(&self, obs: &Value) -> Result<Vec<f32>, PolicyError> {
        let Some([h, w, c]) = self.image else {
            let x = obs.as_f32().ok_or_else(|| {
                PolicyError::Incompatible(format!(
                    "the Decision Transformer takes float observations, got {}",
                    obs.describe()
                ))
            })?;
            return self.normalize(x);
        };
        let pixels = match obs {
            Value::U8(v) => Some(v),
            Value::Dict(d) => match d.get("pixels") {
                Some(Value::U8(v)) => Some(v),
                _ => None,
            },
            _ => None,
        };
        match pixels {
            Some(p) if p.len() == h * w * c => Ok(scale_pixels(p)),
            Some(p) => Err(PolicyError::Incompatible(format!(
                "the Decision Transformer was trained on {h}x{w}x{c} images ({} bytes), got {} \
                 bytes",
                h * w * c,
                p.len()
            ))),
            None => Err(PolicyError::Incompatible(format!(
                "the Decision Transformer reads {h}x{w}x{c} images (obs = \"pixels\"), got {}",
                obs.describe()
            ))),
        }
    }

    /// `(obs − mean) / std`, or an error naming the mismatch.
    pub fn normalize(&self, obs: &[f32]) -> Result<Vec<f32>, PolicyError> {
        if self.image.is_some() {
            return Err(PolicyError::Incompatible(
                "this Decision Transformer reads images, not float vectors".into(),
            ));
        }
        if obs.len() != self.obs_dim() {
            return Err(PolicyError::Incompatible(format!(
                "the Decision Transformer takes observations of {} values, got {}",
                self.obs_dim(),
                obs.len()
            )));
        }
        Ok(obs
            .iter()
            .zip(self.obs_mean.iter().zip(&self.obs_std))
            .map(|(x, (m, s))| (x - m) / s)
            .collect())
    }
}

/// Pixels as the conv encoder reads them: `x / 255`.
pub fn scale_pixels(pixels: &[u8]) -> Vec<f32> {
    pixels.iter().map(|&p| p as f32 * (1.0 / 255.0)).collect()
}

/// Sequences of steps for the model, all `[B, T, ·]` with `T <= context`.
pub struct DtBatch {
    /// Returns-to-go, already divided by `return_scale`: `[B, T, 1]` f32.
    pub returns: Tensor,
    /// Normalised observations `[B, T, obs_dim]` f32 (images: HWC flattened, in `[0, 1]`).
    pub obs: Tensor,
    /// Actions in the model's values (see [`DtAction::encode`]): `[B, T, width]` f32.
    pub actions: Tensor,
    /// Timesteps `[B, T]` u32.
    pub timesteps: Tensor,
}

#[derive(Clone)]
enum ActionEmbed {
    Box(Proj),
    Discrete(Embedding),
}

/// One convolution of the encoder.
#[derive(Clone)]
struct ConvLayer {
    /// `[out, in, k, k]` (PyTorch's layout).
    weight: Tensor,
    /// `[out]`.
    bias: Tensor,
    stride: usize,
}

#[derive(Clone)]
enum ObsEmbed {
    Linear(Proj),
    Conv {
        image: [usize; 3],
        layers: Vec<ConvLayer>,
        /// Flattened feature map → embedding width (then tanh).
        out: Proj,
    },
}

impl ObsEmbed {
    fn new(
        init: &mut ParamInit,
        config: &DecisionTransformerConfig,
        spec: &DtSpec,
    ) -> Result<Self, PolicyError> {
        let c = config.transformer.n_embd;
        match (&config.conv, spec.image) {
            (None, None) => Ok(ObsEmbed::Linear(Proj::new(
                init,
                "embed_state",
                spec.obs_dim(),
                c,
                true,
                0.02,
            )?)),
            (Some(conv), Some(image)) => {
                let [h, w, mut cin] = image;
                let (oh, ow) = conv.output_size(h, w)?;
                let mut layers = Vec::new();
                for (i, ((cout, k), stride)) in conv
                    .channels
                    .iter()
                    .zip(&conv.kernels)
                    .zip(&conv.strides)
                    .enumerate()
                {
                    // PyTorch's default for convolutions: U(±1/sqrt(fan_in)).
                    let bound = 1.0 / ((cin * k * k) as f32).sqrt();
                    let name = format!("state_encoder.conv{i}");
                    layers.push(ConvLayer {
                        weight: init.uniform(
                            &format!("{name}.weight"),
                            &[*cout, cin, *k, *k],
                            bound,
                        )?,
                        bias: init.uniform(&format!("{name}.bias"), &[*cout], bound)?,
                        stride: *stride,
                    });
                    cin = *cout;
                }
                let out = Proj::new(init, "state_encoder.out", oh * ow * cin, c, true, 0.02)?;
                Ok(ObsEmbed::Conv { image, layers, out })
            }
            (Some(_), None) => Err(PolicyError::Config(
                "the conv encoder (model.conv) reads image observations; these are float \
                 vectors (remove model.conv)"
                    .into(),
            )),
            (None, Some([h, w, ch])) => Err(PolicyError::Config(format!(
                "image observations ({h}x{w}x{ch}) need the conv encoder (model.conv = {{}}) or \
                 V (decision_transformer.encoder)"
            ))),
        }
    }

    /// `[B, T, obs_dim]` → `[B, T, C]`.
    fn forward(&self, obs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            ObsEmbed::Linear(p) => p.forward(obs),
            ObsEmbed::Conv { image, layers, out } => {
                let (b, t, _) = obs.dims3()?;
                let [h, w, c] = *image;
                let mut x = obs.reshape((b * t, h, w, c))?;
                for l in layers {
                    x = conv2d_act(&x, &l.weight, &l.bias, l.stride, true)?;
                }
                let x = x.flatten_from(1)?;
                out.forward(&x)?.tanh()?.reshape((b, t, ()))
            }
        }
    }
}

/// The model.
#[derive(Clone)]
pub struct DecisionTransformer {
    config: DecisionTransformerConfig,
    spec: DtSpec,
    varmap: VarMap,
    device: Device,
    embed_return: Proj,
    embed_obs: ObsEmbed,
    embed_action: ActionEmbed,
    embed_timestep: Embedding,
    embed_norm: LayerNorm,
    core: Transformer,
    predict_action: Proj,
}

/// The checkpoint's config: both halves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DtCheckpointConfig {
    /// Size and context.
    pub model: DecisionTransformerConfig,
    /// Observation and action description.
    pub spec: DtSpec,
}

/// The kind written in the checkpoint sidecar.
pub const CHECKPOINT_KIND: &str = "decision_transformer";

impl DecisionTransformer {
    /// A new model with parameters drawn from `seed`.
    pub fn new(
        config: &DecisionTransformerConfig,
        spec: DtSpec,
        device: &Device,
        seed: u64,
    ) -> Result<Self, PolicyError> {
        config.validate()?;
        if spec.image.is_some_and(|i| i.contains(&0)) {
            return Err(PolicyError::Config(
                "image observations need a height, width and channels of at least 1".into(),
            ));
        }
        if spec.image.is_some() && !(spec.obs_mean.is_empty() && spec.obs_std.is_empty()) {
            return Err(PolicyError::Config(
                "image observations are scaled to [0, 1], not normalised by statistics".into(),
            ));
        }
        if spec.image.is_none() && (spec.obs_dim() == 0 || spec.obs_std.len() != spec.obs_dim()) {
            return Err(PolicyError::Config(
                "the observation statistics are empty or of two lengths".into(),
            ));
        }
        if spec.obs_std.iter().any(|s| !(s.is_finite() && *s > 0.0))
            || spec.obs_mean.iter().any(|m| !m.is_finite())
        {
            return Err(PolicyError::Config(
                "observation means must be finite and standard deviations positive".into(),
            ));
        }
        let c = config.transformer.n_embd;
        let varmap = VarMap::new();
        let mut init = ParamInit::new(&varmap, device, seed);
        let p = |init: &mut ParamInit, name: &str, i, o| Proj::new(init, name, i, o, true, 0.02);
        let embed_return = p(&mut init, "embed_return", 1, c)?;
        let embed_obs = ObsEmbed::new(&mut init, config, &spec)?;
        let embed_action = match &spec.action {
            DtAction::Box { low, .. } => {
                ActionEmbed::Box(p(&mut init, "embed_action", low.len(), c)?)
            }
            DtAction::Discrete { n, .. } => {
                ActionEmbed::Discrete(Embedding::new(&mut init, "embed_action", *n, c, 0.02)?)
            }
        };
        let embed_timestep =
            Embedding::new(&mut init, "embed_timestep", config.max_timestep, c, 0.02)?;
        let embed_norm = LayerNorm::new(&mut init, "embed_ln", c, 1e-5, true)?;
        let core = Transformer::new(&mut init, "transformer.", &config.transformer, device)?;
        let outputs = match &spec.action {
            DtAction::Box { low, .. } => low.len(),
            DtAction::Discrete { n, .. } => *n,
        };
        let predict_action = p(&mut init, "predict_action", c, outputs)?;
        Ok(Self {
            config: config.clone(),
            spec,
            varmap,
            device: device.clone(),
            embed_return,
            embed_obs,
            embed_action,
            embed_timestep,
            embed_norm,
            core,
            predict_action,
        })
    }

    /// The config.
    pub fn config(&self) -> &DecisionTransformerConfig {
        &self.config
    }

    /// The observation and action description.
    pub fn spec(&self) -> &DtSpec {
        &self.spec
    }

    /// The parameters.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The tokens `[B, 3T, C]`, interleaved (R₁, s₁, a₁, R₂, …), normalised.
    fn tokens(&self, batch: &DtBatch) -> Result<Tensor, PolicyError> {
        let s = self.embed_observations(&batch.obs)?;
        self.tokens_from(&batch.returns, &s, &batch.actions, &batch.timesteps)
    }

    /// The observation embeddings `[B, T, C]` of observations `[B, T, obs_dim]` (before the
    /// timestep embedding is added): what acting computes once per step and keeps.
    fn embed_observations(&self, obs: &Tensor) -> Result<Tensor, PolicyError> {
        Ok(self
            .embed_obs
            .forward(obs)
            .map_err(dreamgym_nn::NnError::from)?)
    }

    /// [`tokens`](Self::tokens) from observations already embedded (`obs_emb`, `[B, T, C]`).
    fn tokens_from(
        &self,
        returns: &Tensor,
        obs_emb: &Tensor,
        actions: &Tensor,
        timesteps: &Tensor,
    ) -> Result<Tensor, PolicyError> {
        let (b, t, _) = obs_emb.dims3().map_err(dreamgym_nn::NnError::from)?;
        let c = self.config.transformer.n_embd;
        let run = || -> candle_core::Result<Tensor> {
            let time = self.embed_timestep_forward(timesteps)?;
            let returns = if self.config.condition_on_return {
                returns.clone()
            } else {
                returns.zeros_like()?
            };
            let r = (self.embed_return.forward(&returns)? + &time)?;
            let s = (obs_emb + &time)?;
            let a = match &self.embed_action {
                ActionEmbed::Box(p) => p.forward(actions)?,
                ActionEmbed::Discrete(e) => {
                    e.forward(&actions.squeeze(2)?.to_dtype(DType::U32)?)?
                }
            };
            let a = (a + &time)?;
            let stacked = Tensor::stack(&[&r, &s, &a], 2)?.reshape((b, 3 * t, c))?;
            self.embed_norm.forward(&stacked)
        };
        Ok(run().map_err(dreamgym_nn::NnError::from)?)
    }

    fn embed_timestep_forward(&self, timesteps: &Tensor) -> candle_core::Result<Tensor> {
        let last = (self.config.max_timestep - 1) as f64;
        let clipped = timesteps.to_dtype(DType::F32)?.clamp(0.0, last)?;
        self.embed_timestep.forward(&clipped.to_dtype(DType::U32)?)
    }

    /// This model with every projection's weight laid out for inference as well
    /// ([`Transformer::prepare_for_inference`]): the same outputs, full-context forward passes
    /// about twice as fast on the CPU. A snapshot for acting: training the original's
    /// parameters afterwards does not reach it.
    pub fn for_inference(&self) -> Result<Self, PolicyError> {
        let mut m = self.clone();
        let fresh = |e: candle_core::Error| PolicyError::from(dreamgym_nn::NnError::from(e));
        m.core.prepare_for_inference().map_err(fresh)?;
        m.predict_action.prepare_for_inference().map_err(fresh)?;
        Ok(m)
    }

    /// The action head's output at every observation token: `[B, T, width]` tanh values for
    /// Box actions, `[B, T, n]` logits for Discrete ones. `rng` (training) enables dropout.
    pub fn forward(
        &self,
        batch: &DtBatch,
        rng: Option<&mut ChaCha8Rng>,
    ) -> Result<Tensor, PolicyError> {
        let tokens = self.tokens(batch)?;
        let (b, n, c) = tokens.dims3().map_err(dreamgym_nn::NnError::from)?;
        let h = self.core.forward(&tokens, None, rng)?;
        self.head(&h, b, n / 3, c)
    }

    fn head(&self, h: &Tensor, b: usize, t: usize, c: usize) -> Result<Tensor, PolicyError> {
        // The hidden state of each observation token (position 3k + 1).
        let s = h
            .reshape((b, t, 3, c))
            .and_then(|h| h.narrow(2, 1, 1))
            .and_then(|h| h.squeeze(2))
            .map_err(dreamgym_nn::NnError::from)?;
        self.action_out(&s)
    }

    /// The action head on observation-token states `[.., C]`.
    fn action_out(&self, s: &Tensor) -> Result<Tensor, PolicyError> {
        let y = self
            .predict_action
            .forward(s)
            .map_err(dreamgym_nn::NnError::from)?;
        Ok(match self.spec.action {
            DtAction::Box { .. } => y.tanh().map_err(dreamgym_nn::NnError::from)?,
            DtAction::Discrete { .. } => y,
        })
    }

    /// The training loss: mean squared error of the predicted Box actions, or the
    /// cross-entropy of the Discrete ones.
    pub fn loss(
        &self,
        batch: &DtBatch,
        rng: Option<&mut ChaCha8Rng>,
    ) -> Result<Tensor, PolicyError> {
        let pred = self.forward(batch, rng)?;
        let run = || -> candle_core::Result<Tensor> {
            match self.spec.action {
                DtAction::Box { .. } => (pred - &batch.actions)?.sqr()?.mean_all(),
                DtAction::Discrete { n, .. } => {
                    let logits = pred.reshape(((), n))?;
                    let target = batch.actions.flatten_all()?.to_dtype(DType::U32)?;
                    candle_nn::loss::cross_entropy(&logits, &target)
                }
            }
        };
        Ok(run().map_err(dreamgym_nn::NnError::from)?)
    }

    /// Saves weights (and the optimiser, when given) with the config and spec beside them.
    pub fn save(
        &self,
        stem: &Path,
        optimizer: Option<&dreamgym_nn::Adam>,
        state: serde_json::Value,
    ) -> Result<(), PolicyError> {
        let config = DtCheckpointConfig {
            model: self.config.clone(),
            spec: self.spec.clone(),
        };
        dreamgym_nn::save_checkpoint(
            stem,
            CHECKPOINT_KIND,
            &config,
            &self.varmap,
            optimizer,
            state,
        )?;
        Ok(())
    }

    /// Loads a model saved by [`save`](Self::save).
    pub fn load(stem: &Path, device: &Device) -> Result<Self, PolicyError> {
        let (config, _): (DtCheckpointConfig, _) =
            dreamgym_nn::read_checkpoint_meta(stem, CHECKPOINT_KIND)?;
        let model = Self::new(&config.model, config.spec, device, 0)?;
        dreamgym_nn::load_weights(stem, &model.varmap)?;
        Ok(model)
    }
}

/// One step the policy has seen.
struct Seen {
    to_go: f32,
    /// The observation as read (kept without the cache, which recomputes everything).
    obs: Vec<f32>,
    /// Its embedding `[1, 1, C]`, computed once (with the cache: a conv encoder then runs
    /// once per frame, not K times).
    emb: Option<Tensor>,
    action: Vec<f32>,
    timestep: u32,
}

/// The Decision Transformer acting in an env, conditioned on a target return.
pub struct DtPolicy {
    model: Arc<DecisionTransformer>,
    target: f64,
    to_go: f64,
    /// The last `K` steps.
    history: Vec<Seen>,
    /// Steps taken this episode.
    steps: usize,
    cache: KvCache,
    use_cache: bool,
}

impl DtPolicy {
    /// Acts to reach `target` (a finite return, in the env's units), with a snapshot of
    /// `model` laid out for inference ([`DecisionTransformer::for_inference`]).
    pub fn new(model: Arc<DecisionTransformer>, target: f64) -> Result<Self, PolicyError> {
        let scaled = (target / model.config.return_scale) as f32;
        if !target.is_finite() || !scaled.is_finite() || scaled.abs() > 1e6 {
            return Err(PolicyError::Config(format!(
                "the target return must be a finite number within a million times the \
                 return scale ({}), got {target}",
                model.config.return_scale
            )));
        }
        Ok(Self {
            model: Arc::new(model.for_inference()?),
            target,
            to_go: target,
            history: Vec::new(),
            steps: 0,
            cache: KvCache::new(),
            use_cache: true,
        })
    }

    /// Without the KV cache: every step recomputes its whole context (for comparisons).
    pub fn without_cache(mut self) -> Self {
        self.use_cache = false;
        self
    }

    /// The return still to go (the target minus the rewards received so far).
    pub fn to_go(&self) -> f64 {
        self.to_go
    }

    /// The target return.
    pub fn target(&self) -> f64 {
        self.target
    }

    fn batch(&self, steps: &[Seen]) -> candle_core::Result<DtBatch> {
        let m = &self.model;
        let (t, d, w) = (steps.len(), m.spec.obs_dim(), m.spec.action.width());
        let dev = &m.device;
        let obs = if steps.iter().all(|s| s.emb.is_some()) {
            // Read from the embeddings instead.
            Tensor::zeros((1, t, 0), DType::F32, dev)?
        } else {
            Tensor::from_vec(
                steps.iter().flat_map(|s| s.obs.iter().copied()).collect(),
                (1, t, d),
                dev,
            )?
        };
        Ok(DtBatch {
            returns: Tensor::from_vec(steps.iter().map(|s| s.to_go).collect(), (1, t, 1), dev)?,
            obs,
            actions: Tensor::from_vec(
                steps
                    .iter()
                    .flat_map(|s| s.action.iter().copied())
                    .collect(),
                (1, t, w),
                dev,
            )?,
            timesteps: Tensor::from_vec(steps.iter().map(|s| s.timestep).collect(), (1, t), dev)?,
        })
    }

    fn predict(&mut self) -> Result<Vec<f32>, PolicyError> {
        let k = self.model.config.context;
        let n = self.steps;
        let window = &self.history[..];
        let fresh = |e: candle_core::Error| PolicyError::from(dreamgym_nn::NnError::from(e));
        let batch = self.batch(window).map_err(fresh)?;
        let embedded: Option<Vec<&Tensor>> = window.iter().map(|s| s.emb.as_ref()).collect();
        let tokens = match embedded {
            Some(embs) => {
                let obs_emb = Tensor::cat(&embs, 1).map_err(fresh)?;
                self.model.tokens_from(
                    &batch.returns,
                    &obs_emb,
                    &batch.actions,
                    &batch.timesteps,
                )?
            }
            None => self.model.tokens(&batch)?,
        };
        // The last action token is a placeholder: nothing before it depends on it.
        let known = 3 * window.len() - 1;
        let cached = self.use_cache && n <= k;
        let input = if cached {
            let from = self.cache.len();
            tokens.narrow(1, from, known - from).map_err(fresh)?
        } else {
            self.cache.clear();
            tokens.narrow(1, 0, known).map_err(fresh)?
        };
        let (core, cache) = (&self.model.core, &mut self.cache);
        let mut run = || {
            if cached {
                core.forward(&input, Some(cache), None)
            } else {
                core.forward_last(&input)
            }
        };
        // Products big enough to be shared between threads (the line the vendored candle's
        // matmul draws) run from rayon's workers, which share each op's work directly instead
        // of waking the pool and sleeping until it is done, op after op. Below it, the hand-off
        // to a worker costs more than it saves (a tenth of the paper-size step).
        let c = self.model.config.transformer.n_embd;
        let h = if input.dim(1).map_err(fresh)? * c * c >= 1 << 22 {
            dreamgym_nn::on_workers(run)?
        } else {
            run()?
        };
        // The last hidden state is the newest observation token's.
        let last = h
            .narrow(1, h.dim(1).map_err(fresh)? - 1, 1)
            .map_err(fresh)?;
        let y = self.model.action_out(&last)?;
        y.flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(fresh)
    }
}

impl Policy for DtPolicy {
    fn describe(&self) -> String {
        format!(
            "decision transformer (target return {:.1}, {:.1} to go)",
            self.target, self.to_go
        )
    }

    fn reset(&mut self, _episode_seed: u64) -> Result<(), PolicyError> {
        self.to_go = self.target;
        self.history.clear();
        self.steps = 0;
        self.cache.clear();
        Ok(())
    }

    fn act(&mut self, obs: &Value) -> Result<Value, PolicyError> {
        let obs = self.model.spec.observe(obs)?;
        let timestep = self.steps.min(u32::MAX as usize) as u32;
        let width = self.model.spec.action.width();
        // Only the last K steps are ever read: older ones are dropped (an image is 48 KB).
        let k = self.model.config.context;
        if self.history.len() == k {
            self.history.remove(0);
        }
        self.steps += 1;
        let (obs, emb) = if self.use_cache {
            let m = &self.model;
            let x = Tensor::from_vec(obs, (1, 1, m.spec.obs_dim()), &m.device)
                .map_err(dreamgym_nn::NnError::from)?;
            (Vec::new(), Some(m.embed_observations(&x)?))
        } else {
            (obs, None)
        };
        self.history.push(Seen {
            to_go: (self.to_go / self.model.config.return_scale) as f32,
            obs,
            emb,
            action: vec![0.0; width],
            timestep,
        });
        let out = self.predict()?;
        let action = self.model.spec.action.decode(&out);
        if let (Some(last), Ok(values)) = (
            self.history.last_mut(),
            self.model.spec.action.encode(&action),
        ) {
            last.action = values;
        }
        Ok(action)
    }

    fn reward(&mut self, reward: f64) {
        self.to_go -= reward;
    }

    fn fork(&self) -> Box<dyn Policy> {
        Box::new(DtPolicy {
            model: self.model.clone(),
            target: self.target,
            to_go: self.target,
            history: Vec::new(),
            steps: 0,
            cache: KvCache::new(),
            use_cache: self.use_cache,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dreamgym_envs::{BoxSpace, Discrete};
    use rand::SeedableRng;

    fn config(context: usize) -> DecisionTransformerConfig {
        DecisionTransformerConfig {
            transformer: TransformerConfig {
                n_layer: 2,
                n_embd: 16,
                n_head: 2,
                block_size: 3 * context,
                positions: PositionKind::None,
                dropout: 0.1,
                ..TransformerConfig::default()
            },
            context,
            max_timestep: 50,
            return_scale: 10.0,
            condition_on_return: true,
            conv: None,
        }
    }

    fn spec(action: DtAction) -> DtSpec {
        DtSpec {
            obs_mean: vec![0.1, -0.2, 0.3],
            obs_std: vec![1.0, 2.0, 0.5],
            action,
            image: None,
        }
    }

    /// The largest absolute difference of two `[B, T, n]` outputs at each step, flattened.
    fn step_diffs(a: &Tensor, b: &Tensor) -> Vec<f32> {
        (b - a)
            .and_then(|d| d.abs())
            .and_then(|d| d.max_keepdim(2))
            .and_then(|d| d.flatten_all())
            .and_then(|d| d.to_vec1())
            .unwrap()
    }

    /// 12x10 RGB frames through two small convolutions (5x4 then 3x2 maps).
    const IMAGE: [usize; 3] = [12, 10, 3];

    fn conv_config(context: usize) -> DecisionTransformerConfig {
        DecisionTransformerConfig {
            conv: Some(ConvEncoderConfig {
                channels: vec![4, 6],
                kernels: vec![4, 3],
                strides: vec![2, 1],
            }),
            ..config(context)
        }
    }

    fn frame(seed: u64) -> Vec<u8> {
        use rand::RngExt;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..IMAGE.iter().product::<usize>())
            .map(|_| rng.random())
            .collect()
    }

    fn image_batch(b: usize, t: usize, action: &DtAction, seed: u64) -> DtBatch {
        let base = batch(b, t, action, seed);
        let pixels: Vec<f32> = (0..b * t)
            .flat_map(|i| scale_pixels(&frame(seed * 1000 + i as u64)))
            .collect();
        let d = IMAGE.iter().product::<usize>();
        DtBatch {
            obs: Tensor::from_vec(pixels, (b, t, d), &Device::Cpu).unwrap(),
            ..base
        }
    }

    fn box_action() -> DtAction {
        DtAction::of(&Space::Box(BoxSpace::new(vec![-1.0, 0.0], vec![1.0, 2.0]))).unwrap()
    }

    fn batch(b: usize, t: usize, action: &DtAction, seed: u64) -> DtBatch {
        use rand::RngExt;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut f =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
        let dev = Device::Cpu;
        let actions = match action {
            DtAction::Box { low, .. } => {
                Tensor::from_vec(f(b * t * low.len()), (b, t, low.len()), &dev).unwrap()
            }
            DtAction::Discrete { n, .. } => Tensor::from_vec(
                (0..b * t).map(|i| (i % n) as f32).collect::<Vec<f32>>(),
                (b, t, 1),
                &dev,
            )
            .unwrap(),
        };
        DtBatch {
            returns: Tensor::from_vec(f(b * t), (b, t, 1), &dev).unwrap(),
            obs: Tensor::from_vec(f(b * t * 3), (b, t, 3), &dev).unwrap(),
            actions,
            timesteps: Tensor::from_vec(
                (0..b * t).map(|i| (i % t) as u32 * 7).collect::<Vec<u32>>(),
                (b, t),
                &dev,
            )
            .unwrap(),
        }
    }

    #[test]
    fn every_parameter_learns_from_box_and_discrete_actions() {
        for action in [box_action(), DtAction::Discrete { n: 4, start: 0 }] {
            let m = DecisionTransformer::new(&config(4), spec(action.clone()), &Device::Cpu, 1)
                .unwrap();
            let b = batch(2, 4, &action, 2);
            let mut rng = ChaCha8Rng::seed_from_u64(3);
            let loss = m.loss(&b, Some(&mut rng)).unwrap();
            assert!(loss.to_scalar::<f32>().unwrap().is_finite());
            dreamgym_nn::check_gradients_reach_every_parameter(m.varmap(), &loss)
                .unwrap_or_else(|e| panic!("{action:?}: {e}"));
            let out = m.forward(&b, None).unwrap();
            let width = match action {
                DtAction::Box { .. } => 2,
                DtAction::Discrete { n, .. } => n,
            };
            assert_eq!(out.dims(), &[2, 4, width]);
        }
    }

    #[test]
    fn the_conv_encoder_learns_end_to_end_and_sees_the_pixels() {
        for action in [box_action(), DtAction::Discrete { n: 3, start: 0 }] {
            let spec = DtSpec::for_images(IMAGE, action.clone());
            let m = DecisionTransformer::new(&conv_config(3), spec, &Device::Cpu, 11).unwrap();
            let b = image_batch(2, 3, &action, 12);
            let mut rng = ChaCha8Rng::seed_from_u64(13);
            let loss = m.loss(&b, Some(&mut rng)).unwrap();
            assert!(loss.to_scalar::<f32>().unwrap().is_finite());
            // Every convolution, the projection and the transformer get a gradient.
            dreamgym_nn::check_gradients_reach_every_parameter(m.varmap(), &loss)
                .unwrap_or_else(|e| panic!("{action:?}: {e}"));
            let names: Vec<String> = m.varmap().data().lock().unwrap().keys().cloned().collect();
            assert!(
                names.iter().any(|n| n == "state_encoder.conv1.weight"),
                "{names:?}"
            );
            assert!(
                !names.iter().any(|n| n == "embed_state.weight"),
                "{names:?}"
            );
            // One pixel of the last frame changes the last prediction and no earlier one.
            let y = m.forward(&b, None).unwrap();
            let mut obs: Vec<f32> = b.obs.flatten_all().unwrap().to_vec1().unwrap();
            let last = obs.len() - 7;
            obs[last] = 1.0 - obs[last];
            let b2 = DtBatch {
                obs: Tensor::from_vec(obs, b.obs.dims(), &Device::Cpu).unwrap(),
                ..b
            };
            let y2 = m.forward(&b2, None).unwrap();
            let d = step_diffs(&y, &y2);
            assert_eq!(d.len(), 6);
            for (i, diff) in d.iter().enumerate() {
                assert_eq!(*diff > 0.0, i == 5, "{d:?}");
            }
        }
    }

    #[test]
    fn an_image_policy_acts_on_frames_with_and_without_the_cache() {
        let action = box_action();
        let spec = DtSpec::for_images(IMAGE, action);
        let m =
            Arc::new(DecisionTransformer::new(&conv_config(3), spec, &Device::Cpu, 14).unwrap());
        let mut cached = DtPolicy::new(m.clone(), 20.0).unwrap();
        let mut plain = DtPolicy::new(m.clone(), 20.0).unwrap().without_cache();
        let space = Space::Box(BoxSpace::new(vec![-1.0, 0.0], vec![1.0, 2.0]));
        for step in 0..7 {
            let pixels = Value::U8(frame(step));
            // A Dict observation with a `pixels` entry is read the same way.
            let dict = Value::Dict([("pixels".to_string(), pixels.clone())].into());
            let (a, b) = (cached.act(&pixels).unwrap(), plain.act(&dict).unwrap());
            let (Value::F32(x), Value::F32(y)) = (&a, &b) else {
                panic!("{a:?} {b:?}")
            };
            for (u, v) in x.iter().zip(y) {
                assert!((u - v).abs() < 1e-5, "step {step}: {x:?} {y:?}");
            }
            assert!(space.contains(&a), "{a:?}");
            cached.reward(1.0);
            plain.reward(1.0);
        }
        // Frames of another size, and float vectors, are refused by name.
        let err = cached.act(&Value::U8(vec![0; 10])).unwrap_err();
        assert!(
            err.to_string()
                .contains("12x10x3 images (360 bytes), got 10"),
            "{err}"
        );
        let err = cached.act(&Value::F32(vec![0.0; 360])).unwrap_err();
        assert!(err.to_string().contains("obs = \"pixels\""), "{err}");
        // A saved image model loads with its image shape.
        let dir = tempfile::tempdir().unwrap();
        let stem = dir.path().join("dt");
        m.save(&stem, None, serde_json::json!({})).unwrap();
        let loaded = DecisionTransformer::load(&stem, &Device::Cpu).unwrap();
        assert_eq!(loaded.spec().image, Some(IMAGE));
        let b = image_batch(1, 3, &box_action(), 15);
        let diff: f32 = step_diffs(
            &m.forward(&b, None).unwrap(),
            &loaded.forward(&b, None).unwrap(),
        )
        .iter()
        .sum();
        assert_eq!(diff, 0.0);
    }

    #[test]
    fn conv_settings_that_cannot_work_are_errors() {
        let err = |c: &DecisionTransformerConfig, s: DtSpec| {
            DecisionTransformer::new(c, s, &Device::Cpu, 0)
                .err()
                .unwrap()
                .to_string()
        };
        let images = DtSpec::for_images(IMAGE, box_action());
        // Images without the encoder, the encoder without images, images too small.
        assert!(err(&config(3), images.clone()).contains("model.conv"));
        assert!(err(&conv_config(3), spec(box_action())).contains("remove model.conv"));
        let small = DtSpec::for_images([5, 5, 3], box_action());
        let e = err(&conv_config(3), small);
        assert!(e.contains("too small") && e.contains("layer 1"), "{e}");
        let mut uneven = conv_config(3);
        uneven.conv.as_mut().unwrap().strides.push(1);
        assert!(err(&uneven, images.clone()).contains("one entry per layer"));
        let mut zero = conv_config(3);
        zero.conv.as_mut().unwrap().kernels[0] = 0;
        assert!(err(&zero, images).contains("conv.kernels"));
    }

    #[test]
    fn an_action_is_predicted_from_what_came_before_it_only() {
        let action = box_action();
        let m =
            DecisionTransformer::new(&config(5), spec(action.clone()), &Device::Cpu, 4).unwrap();
        let b = batch(1, 5, &action, 5);
        let y = m.forward(&b, None).unwrap();
        // Changing action 2 changes predictions 3 and 4 only (prediction 2 comes from the
        // observation token before it).
        let mut a: Vec<f32> = b.actions.flatten_all().unwrap().to_vec1().unwrap();
        a[2 * 2] += 0.5;
        let b2 = DtBatch {
            actions: Tensor::from_vec(a, (1, 5, 2), &Device::Cpu).unwrap(),
            ..b
        };
        let y2 = m.forward(&b2, None).unwrap();
        let d = step_diffs(&y, &y2);
        for (t, diff) in d.iter().enumerate() {
            assert_eq!(*diff > 1e-6, t > 2, "step {t}: {d:?}");
        }
    }

    #[test]
    fn acting_with_the_cache_matches_recomputing_across_the_context_boundary() {
        for action in [box_action(), DtAction::Discrete { n: 3, start: 0 }] {
            let m = Arc::new(
                DecisionTransformer::new(&config(3), spec(action.clone()), &Device::Cpu, 6)
                    .unwrap(),
            );
            let mut cached = DtPolicy::new(m.clone(), 25.0).unwrap();
            let mut plain = DtPolicy::new(m.clone(), 25.0).unwrap().without_cache();
            for p in [&mut cached, &mut plain] {
                p.reset(0).unwrap();
            }
            for step in 0..8 {
                let obs = Value::F32(vec![step as f32 * 0.3, -0.5, (step as f32).sin()]);
                let (a, b) = (cached.act(&obs).unwrap(), plain.act(&obs).unwrap());
                match (&a, &b) {
                    (Value::F32(x), Value::F32(y)) => {
                        for (u, v) in x.iter().zip(y) {
                            assert!((u - v).abs() < 1e-5, "step {step}: {x:?} {y:?}");
                        }
                    }
                    _ => assert_eq!(a, b, "step {step}"),
                }
                let space = match &action {
                    DtAction::Box { .. } => {
                        Space::Box(BoxSpace::new(vec![-1.0, 0.0], vec![1.0, 2.0]))
                    }
                    DtAction::Discrete { n, .. } => Space::Discrete(Discrete::new(*n as u64)),
                };
                assert!(space.contains(&a), "{a:?}");
                cached.reward(1.5);
                plain.reward(1.5);
            }
            assert_eq!(cached.to_go(), 25.0 - 8.0 * 1.5);
            // A new episode starts from the target again.
            cached.reset(1).unwrap();
            assert_eq!(cached.to_go(), 25.0);
        }
    }

    #[test]
    fn the_target_return_changes_the_action() {
        let action = box_action();
        let m =
            Arc::new(DecisionTransformer::new(&config(3), spec(action), &Device::Cpu, 7).unwrap());
        let obs = Value::F32(vec![0.2, 0.1, -0.3]);
        let act = |target| DtPolicy::new(m.clone(), target).unwrap().act(&obs).unwrap();
        assert_ne!(act(0.0), act(500.0));
        assert_eq!(act(3.0), act(3.0));
    }

    #[test]
    fn saved_models_load_and_bad_input_is_an_error() {
        let action = DtAction::Discrete { n: 3, start: 0 };
        let m =
            DecisionTransformer::new(&config(3), spec(action.clone()), &Device::Cpu, 8).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let stem = dir.path().join("dt");
        m.save(&stem, None, serde_json::json!({})).unwrap();
        let loaded = DecisionTransformer::load(&stem, &Device::Cpu).unwrap();
        let b = batch(1, 3, &action, 9);
        let (x, y) = (
            m.forward(&b, None).unwrap(),
            loaded.forward(&b, None).unwrap(),
        );
        let d: f32 = (x - y)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(d, 0.0);
        assert_eq!(loaded.spec(), m.spec());
        // A target of NaN, observations of the wrong width, and spaces the model cannot act in.
        let m = Arc::new(m);
        let err = DtPolicy::new(m.clone(), f64::NAN).err().unwrap();
        assert!(err.to_string().contains("finite"), "{err}");
        let mut p = DtPolicy::new(m, 1.0).unwrap();
        let err = p.act(&Value::F32(vec![1.0; 5])).unwrap_err();
        assert!(err.to_string().contains("3 values, got 5"), "{err}");
        let unbounded = Space::Box(BoxSpace::new(vec![f32::NEG_INFINITY], vec![1.0]));
        assert!(DtAction::of(&unbounded).is_err());
        let mut bad = config(3);
        bad.transformer.block_size = 8;
        let err = DecisionTransformer::new(&bad, spec(action), &Device::Cpu, 0)
            .err()
            .unwrap();
        assert!(err.to_string().contains("block_size"), "{err}");
    }
}
