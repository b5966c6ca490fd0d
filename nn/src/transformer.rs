//! One decoder-only transformer core (GPT-2 / Llama family) that the Decision Transformer and
//! the language model share: pre-norm blocks `x + attn(norm(x))`, `x + mlp(norm(x))`, then a
//! final norm.
//!
//! Each choice is a config field: LayerNorm or RMSNorm; learned, rotary or no positions;
//! GELU or SwiGLU MLP; multi-head or grouped-query attention; biases; dropout (seeded, so a
//! seed fixes training). A [`KvCache`] makes step-by-step acting and generation cost one
//! token's work per step; a cached step gives the same output as a full forward pass (tested).
//!
//! Every op is built from candle ops that carry gradients (see the crate docs: candle's fused
//! norms, softmax and `sdpa` do not). Parameter names follow Hugging Face's Llama
//! (`layers.{i}.self_attn.q_proj.weight`, `layers.{i}.mlp.gate_proj.weight`,
//! `layers.{i}.input_layernorm.weight`, `norm.weight`) under a prefix of the caller's choice;
//! [`Gpt`] puts the core under `model.` beside `lm_head`, as Llama checkpoints do.

use candle_core::{DType, Device, Result, Tensor};
use std::mem::MaybeUninit;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{Embedding, LayerNorm, NnError, ParamInit, RmsNorm, causal_attention};

/// Which normalisation the blocks use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// LayerNorm (GPT-2).
    LayerNorm,
    /// RMSNorm (Llama).
    RmsNorm,
}

/// How positions enter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PositionKind {
    /// A learned table added to the input (GPT-2), `embed_positions.weight`.
    Learned,
    /// Rotary embeddings on queries and keys (Llama, "rotate half" layout).
    Rotary,
    /// None: the caller adds its own (the Decision Transformer's timestep embedding).
    None,
}

/// The feed-forward part of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MlpKind {
    /// `down(gelu(up(x)))` (GPT-2, tanh approximation).
    Gelu,
    /// `down(silu(gate(x)) * up(x))` (Llama).
    SwiGlu,
}

/// The transformer's shape and choices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransformerConfig {
    /// Blocks.
    pub n_layer: usize,
    /// Width of the residual stream.
    pub n_embd: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads: `n_head` (or 0) for multi-head attention, fewer for grouped-query
    /// attention (each shared by `n_head / n_kv_head` query heads).
    pub n_kv_head: usize,
    /// The most positions a sequence (with its cache) may hold.
    pub block_size: usize,
    /// Normalisation.
    pub norm: NormKind,
    /// The norms' epsilon.
    pub norm_eps: f64,
    /// Positions.
    pub positions: PositionKind,
    /// Rotary base θ.
    pub rope_theta: f64,
    /// Feed-forward kind.
    pub mlp: MlpKind,
    /// Hidden width of the MLP (0: `4 · n_embd`).
    pub mlp_hidden: usize,
    /// Biases on projections and LayerNorms (GPT-2 has them, Llama not).
    pub bias: bool,
    /// Dropout on the input and on each residual branch while training.
    pub dropout: f32,
    /// Standard deviation of the initial weights (embeddings and projections; the
    /// projections into the residual stream get `init_std / √(2 · n_layer)`). GPT-2's 0.02
    /// suits widths near 768; narrow models learn attention far faster from "small init",
    /// `√(2 / (5 · n_embd))` ([`TransformerConfig::small_init`]).
    pub init_std: f64,
}

impl Default for TransformerConfig {
    /// The Decision Transformer paper's size: 3 layers, 128 wide, 1 head, GPT-2 choices.
    fn default() -> Self {
        Self {
            n_layer: 3,
            n_embd: 128,
            n_head: 1,
            n_kv_head: 0,
            block_size: 60,
            norm: NormKind::LayerNorm,
            norm_eps: 1e-5,
            positions: PositionKind::Learned,
            rope_theta: 10_000.0,
            mlp: MlpKind::Gelu,
            mlp_hidden: 0,
            bias: true,
            dropout: 0.1,
            init_std: 0.02,
        }
    }
}

impl TransformerConfig {
    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        if self.n_kv_head == 0 {
            self.n_head
        } else {
            self.n_kv_head
        }
    }

    /// "Small init" (Nguyen & Salazar, 2019; GPT-NeoX's `small_init`): `√(2 / (5 · n_embd))`,
    /// 0.056 for a 128-wide model.
    pub fn small_init(n_embd: usize) -> f64 {
        (2.0 / (5.0 * n_embd.max(1) as f64)).sqrt()
    }

    /// Width of one head.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head.max(1)
    }

    /// Hidden width of the MLP.
    pub fn hidden(&self) -> usize {
        if self.mlp_hidden == 0 {
            4 * self.n_embd
        } else {
            self.mlp_hidden
        }
    }

    /// Checks the shape, naming the first bad field.
    pub fn validate(&self) -> std::result::Result<(), NnError> {
        let bad = |m: String| Err(NnError::Config(m));
        if !(1..=256).contains(&self.n_layer) {
            return bad(format!("n_layer must be in 1..=256, got {}", self.n_layer));
        }
        if !(1..=65_536).contains(&self.n_embd) || !(1..=1024).contains(&self.n_head) {
            return bad(format!(
                "n_embd must be in 1..=65536 and n_head in 1..=1024, got {} and {}",
                self.n_embd, self.n_head
            ));
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return bad(format!(
                "n_embd ({}) must be a multiple of n_head ({})",
                self.n_embd, self.n_head
            ));
        }
        let kv = self.kv_heads();
        if kv > self.n_head || !self.n_head.is_multiple_of(kv) {
            return bad(format!(
                "n_kv_head ({}) must divide n_head ({})",
                self.n_kv_head, self.n_head
            ));
        }
        if self.positions == PositionKind::Rotary && !self.head_dim().is_multiple_of(2) {
            return bad(format!(
                "rotary positions need an even head width, got {}",
                self.head_dim()
            ));
        }
        if !(1..=1 << 20).contains(&self.block_size) {
            return bad(format!(
                "block_size must be in 1..=1048576, got {}",
                self.block_size
            ));
        }
        if !(1..=1 << 20).contains(&self.hidden()) {
            return bad(format!(
                "mlp_hidden must be at most 1048576, got {}",
                self.hidden()
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        if !(self.norm_eps > 0.0 && self.rope_theta > 0.0) {
            return bad("norm_eps and rope_theta must be positive".into());
        }
        if !(self.init_std > 0.0 && self.init_std <= 1.0) {
            return bad(format!("init_std must be in (0, 1], got {}", self.init_std));
        }
        Ok(())
    }
}

/// Low-rank adapters (LoRA; Hu et al., 2021) on a model's projections: `W x` becomes
/// `W x + (alpha / rank) · B A x` with `A` `[rank, in]` and `B` `[out, rank]`, and only `A`
/// and `B` train. As in Hugging Face PEFT: `A` starts uniform in ±1/√in (Kaiming-uniform with
/// a = √5), `B` at zero (the adapted model starts equal to the base), and the adapters are
/// named `base_model.model.<projection>.lora_A.weight` / `lora_B.weight`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank of each adapter.
    pub rank: usize,
    /// Scale numerator: the update is scaled by `alpha / rank`.
    pub alpha: f64,
    /// Projections adapted, by their Hugging Face names (`q_proj`, `k_proj`, `v_proj`,
    /// `o_proj`, `gate_proj`, `up_proj`, `down_proj`).
    pub targets: Vec<String>,
}

/// The projections a [`LoraConfig`] may name.
pub const LORA_TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

impl Default for LoraConfig {
    /// Rank 8, alpha 16, on every projection of every block (PEFT's "all-linear" without the
    /// output head).
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            targets: LORA_TARGETS.iter().map(|t| t.to_string()).collect(),
        }
    }
}

impl LoraConfig {
    /// The update's scale, `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank.max(1) as f64
    }

    /// Checks the rank, alpha and targets, naming the first bad one.
    pub fn validate(&self) -> std::result::Result<(), NnError> {
        if !(1..=4096).contains(&self.rank) {
            return Err(NnError::Config(format!(
                "lora.rank must be in 1..=4096, got {}",
                self.rank
            )));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(NnError::Config(format!(
                "lora.alpha must be a positive number, got {}",
                self.alpha
            )));
        }
        if self.targets.is_empty() {
            return Err(NnError::Config(format!(
                "lora.targets must name at least one of {}",
                LORA_TARGETS.join(", ")
            )));
        }
        if let Some(bad) = self
            .targets
            .iter()
            .find(|t| !LORA_TARGETS.contains(&t.as_str()))
        {
            return Err(NnError::Config(format!(
                "lora.targets: unknown projection `{bad}`; the projections are {}",
                LORA_TARGETS.join(", ")
            )));
        }
        Ok(())
    }
}

/// One adapter: `scale · B A x`.
#[derive(Debug, Clone)]
pub struct LoraPair {
    /// `[rank, in]`.
    pub a: Tensor,
    /// `[out, rank]`.
    pub b: Tensor,
    /// `alpha / rank`.
    pub scale: f64,
}

/// A projection `x Wᵀ (+ b)` with PyTorch's layout `[out, in]`, on inputs of any rank, with
/// an optional LoRA adapter.
#[derive(Debug, Clone)]
pub struct Proj {
    /// `[out, in]`.
    pub weight: Tensor,
    /// `[out]`, when the layer has one.
    pub bias: Option<Tensor>,
    /// A low-rank adapter added to the output, when the model has them.
    pub lora: Option<LoraPair>,
    /// The weight laid out for inference ([`prepare_for_inference`](Self::prepare_for_inference)).
    inference: Option<Tensor>,
}

impl Proj {
    /// `name.weight` from `N(0, std²)`, `name.bias` zero when `bias`.
    pub fn new(
        init: &mut ParamInit,
        name: &str,
        inp: usize,
        out: usize,
        bias: bool,
        std: f32,
    ) -> Result<Self> {
        Ok(Self {
            weight: init.normal(&format!("{name}.weight"), &[out, inp], std)?,
            bias: if bias {
                Some(init.constant(&format!("{name}.bias"), &[out], 0.0)?)
            } else {
                None
            },
            lora: None,
            inference: None,
        })
    }

    /// A projection with these weights and no adapter.
    pub fn from_weight(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            lora: None,
            inference: None,
        }
    }

    /// Keeps a second copy of the weight, transposed to `[in, out]` (rows padded off powers of
    /// two), that inputs of more than [`crate::llama_ops::FEW_ROWS`] rows multiply on the CPU.
    /// gemm multiplies `x Wᵀ` with `W` in PyTorch's `[out, in]` layout by first repacking `W`,
    /// on every call: for the few dozen rows of an acting step that repacking took as long as
    /// the product. With the transposed copy it reads the weight as it lies (the same
    /// products, equal to rounding; bit for bit at the Decision Transformer's sizes). A snapshot: a weight trained after this is not seen
    /// by the copy, so only a model that no longer trains (a policy acting) is prepared.
    pub fn prepare_for_inference(&mut self) -> Result<()> {
        self.inference = None;
        if !(self.weight.device().is_cpu() && self.weight.dtype() == DType::F32) {
            return Ok(());
        }
        let (out, inp) = self.weight.dims2()?;
        let stride = crate::fused::padded_stride(out);
        let t = self.weight.detach().t()?.contiguous()?;
        let t = if stride > out {
            let pad = Tensor::zeros((inp, stride - out), DType::F32, self.weight.device())?;
            Tensor::cat(&[&t, &pad], 1)?.narrow(1, 0, out)?
        } else {
            t
        };
        // Row-major `[in, out]` rows `stride` apart (what gemm reads without repacking).
        if t.stride() != [stride, 1] {
            candle_core::bail!("prepare_for_inference: unexpected layout {:?}", t.layout());
        }
        self.inference = Some(t);
        Ok(())
    }

    /// Attaches a LoRA adapter named `base_model.model.{name}.lora_A.weight` (and `lora_B`).
    fn add_lora(&mut self, init: &mut ParamInit, name: &str, cfg: &LoraConfig) -> Result<()> {
        let (out, inp) = self.weight.dims2()?;
        let stem = format!("base_model.model.{name}");
        self.lora = Some(LoraPair {
            a: init.uniform(
                &format!("{stem}.lora_A.weight"),
                &[cfg.rank, inp],
                1.0 / (inp as f32).sqrt(),
            )?,
            b: init.constant(&format!("{stem}.lora_B.weight"), &[out, cfg.rank], 0.0)?,
            scale: cfg.scale(),
        });
        Ok(())
    }

    /// Stops gradients at the weight and bias (they become constants); an adapter still
    /// trains.
    fn freeze(&mut self) {
        self.weight = self.weight.detach();
        self.bias = self.bias.as_ref().map(|b| b.detach());
    }

    /// Applies the layer to `[.., in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let inp = *dims.last().unwrap_or(&0);
        let rows = x.elem_count() / inp.max(1);
        let x = x.reshape((rows, inp))?;
        let mut y = match &self.inference {
            Some(t) if rows > crate::llama_ops::FEW_ROWS && x.device().is_cpu() => {
                x.contiguous()?.matmul(t)?
            }
            _ => crate::linear(&x, &self.weight)?,
        };
        if let Some(bias) = &self.bias {
            y = crate::add_bias(&y, bias)?;
        }
        if let Some(l) = &self.lora {
            let update = x.matmul(&l.a.t()?)?.matmul(&l.b.t()?)?;
            y = (y + update.affine(l.scale, 0.0)?)?;
        }
        let mut out = dims;
        if let Some(last) = out.last_mut() {
            *last = self.weight.dim(0)?;
        }
        y.reshape(out)
    }
}

#[derive(Debug, Clone)]
enum Norm {
    Layer(LayerNorm),
    Rms(RmsNorm),
}

impl Norm {
    fn new(init: &mut ParamInit, name: &str, cfg: &TransformerConfig) -> Result<Self> {
        Ok(match cfg.norm {
            NormKind::LayerNorm => Norm::Layer(LayerNorm::new(
                init,
                name,
                cfg.n_embd,
                cfg.norm_eps,
                cfg.bias,
            )?),
            NormKind::RmsNorm => Norm::Rms(RmsNorm::new(init, name, cfg.n_embd, cfg.norm_eps)?),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Norm::Layer(n) => n.forward(x),
            Norm::Rms(n) => n.forward(x),
        }
    }

    fn freeze(&mut self) {
        match self {
            Norm::Layer(n) => {
                n.weight = n.weight.detach();
                n.bias = n.bias.as_ref().map(|b| b.detach());
            }
            Norm::Rms(n) => n.weight = n.weight.detach(),
        }
    }
}

/// Mask elements drawn from one stream of the mask's seed.
const DROPOUT_BLOCK: usize = 4096;

/// Seeded dropout for training: the mask comes from the caller's generator, so a seed fixes
/// every dropped unit (candle's `dropout` draws from an unseeded generator).
pub struct Dropout<'a> {
    /// Probability of dropping a unit.
    pub p: f32,
    /// Where the masks come from.
    pub rng: &'a mut ChaCha8Rng,
}

impl Dropout<'_> {
    fn apply(&mut self, x: &Tensor) -> Result<Tensor> {
        if self.p <= 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 / (1.0 - self.p);
        if !x.device().is_cpu() {
            // On a GPU the mask is drawn there (drawing millions of numbers on the host and
            // copying them over each step cost more than the step): the device's generator,
            // reseeded from the caller's, so a seed still fixes every mask on that device. The
            // CPU and a GPU draw different masks.
            x.device().set_seed(self.rng.random::<u64>())?;
            let u = Tensor::rand(0f32, 1f32, x.dims(), x.device())?;
            let mask = u
                .ge(self.p as f64)?
                .to_dtype(x.dtype())?
                .affine(keep as f64, 0.0)?;
            return x.mul(&mask);
        }
        // One draw from the caller's generator seeds the mask; each block of it has its own
        // stream of that seed, so blocks are drawn on several threads and the mask is the same
        // on any number of them.
        let seed = self.rng.random::<u64>();
        let p = self.p;
        let mask = |i: usize, o: &mut [MaybeUninit<f32>]| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(i as u64);
            for o in o.iter_mut() {
                o.write(if rng.random::<f32>() < p { 0.0 } else { keep });
            }
        };
        let n = x.elem_count();
        // SAFETY: `mask` writes every element of each block it is given.
        let mask = unsafe { crate::par::collect_rows(n, DROPOUT_BLOCK, DROPOUT_BLOCK, mask) };
        let mask = Tensor::from_vec(mask, x.dims(), x.device())?.to_dtype(x.dtype())?;
        crate::mul_constant(x, &mask)
    }
}

fn dropout(d: &mut Option<Dropout>, x: Tensor) -> Result<Tensor> {
    match d {
        Some(d) => d.apply(&x),
        None => Ok(x),
    }
}

/// Keys and values of the positions seen so far, per layer: a forward pass with a cache
/// processes only the new positions.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every position (a new sequence).
    pub fn clear(&mut self) {
        self.layers.clear();
        self.len = 0;
    }
}

#[derive(Debug, Clone)]
struct Block {
    input_norm: Norm,
    q: Proj,
    k: Proj,
    v: Proj,
    o: Proj,
    post_norm: Norm,
    gate: Option<Proj>,
    up: Proj,
    down: Proj,
}

impl Block {
    fn new(init: &mut ParamInit, name: &str, cfg: &TransformerConfig) -> Result<Self> {
        let (c, hd, kv) = (cfg.n_embd, cfg.head_dim(), cfg.kv_heads());
        // GPT-2: the projections into the residual stream start smaller, std / √(2 layers).
        let std = cfg.init_std as f32;
        let out_std = std / ((2 * cfg.n_layer) as f32).sqrt();
        let p = |init: &mut ParamInit, n: &str, i, o, std| {
            Proj::new(init, &format!("{name}.{n}"), i, o, cfg.bias, std)
        };
        Ok(Self {
            input_norm: Norm::new(init, &format!("{name}.input_layernorm"), cfg)?,
            q: p(init, "self_attn.q_proj", c, cfg.n_head * hd, std)?,
            k: p(init, "self_attn.k_proj", c, kv * hd, std)?,
            v: p(init, "self_attn.v_proj", c, kv * hd, std)?,
            o: p(init, "self_attn.o_proj", cfg.n_head * hd, c, out_std)?,
            post_norm: Norm::new(init, &format!("{name}.post_attention_layernorm"), cfg)?,
            gate: match cfg.mlp {
                MlpKind::SwiGlu => Some(p(init, "mlp.gate_proj", c, cfg.hidden(), std)?),
                MlpKind::Gelu => None,
            },
            up: p(init, "mlp.up_proj", c, cfg.hidden(), std)?,
            down: p(init, "mlp.down_proj", cfg.hidden(), c, out_std)?,
        })
    }

    /// The block's projections by their Hugging Face names.
    fn projections(&mut self) -> Vec<(&'static str, &mut Proj)> {
        let mut p: Vec<(&'static str, &mut Proj)> = vec![
            ("self_attn.q_proj", &mut self.q),
            ("self_attn.k_proj", &mut self.k),
            ("self_attn.v_proj", &mut self.v),
            ("self_attn.o_proj", &mut self.o),
        ];
        if let Some(g) = &mut self.gate {
            p.push(("mlp.gate_proj", g));
        }
        p.push(("mlp.up_proj", &mut self.up));
        p.push(("mlp.down_proj", &mut self.down));
        p
    }

    fn freeze(&mut self) {
        self.input_norm.freeze();
        self.post_norm.freeze();
        for (_, p) in self.projections() {
            p.freeze();
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        x: &Tensor,
        cfg: &TransformerConfig,
        rope: Option<(&Tensor, &Tensor)>,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        drop: &mut Option<Dropout>,
        last_only: bool,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (h, kv, hd) = (cfg.n_head, cfg.kv_heads(), cfg.head_dim());
        let n = self.input_norm.forward(x)?;
        let heads = |y: Tensor, t: usize, heads: usize| -> Result<Tensor> {
            y.reshape((b, t, heads, hd))?.transpose(1, 2)?.contiguous()
        };
        // `last_only`: every position's keys and values, the rest for the last position only.
        let (x, nq, tq) = if last_only && t > 1 {
            (x.narrow(1, t - 1, 1)?, n.narrow(1, t - 1, 1)?, 1)
        } else {
            (x.clone(), n.clone(), t)
        };
        let mut q = heads(self.q.forward(&nq)?, tq, h)?;
        let mut k = heads(self.k.forward(&n)?, t, kv)?;
        let v = heads(self.v.forward(&n)?, t, kv)?;
        if let Some((cos, sin)) = rope {
            let (qc, qs) = (cos.narrow(0, t - tq, tq)?, sin.narrow(0, t - tq, tq)?);
            q = crate::rotary(&q, &qc, &qs)?;
            k = crate::rotary(&k, cos, sin)?;
        }
        let (k, v) = match cache {
            Some(slot) => {
                let (k, v) = match slot.take() {
                    Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                    None => (k, v),
                };
                *slot = Some((k.detach(), v.detach()));
                (k, v)
            }
            None => (k, v),
        };
        let y = causal_attention(&q, &k, &v)?
            .transpose(1, 2)?
            .reshape((b, tq, h * hd))?;
        let x = (x + dropout(drop, self.o.forward(&y)?)?)?;
        let n = self.post_norm.forward(&x)?;
        let hidden = match &self.gate {
            Some(gate) => crate::swiglu(&gate.forward(&n)?, &self.up.forward(&n)?)?,
            None => crate::gelu_tanh(&self.up.forward(&n)?)?,
        };
        x + dropout(drop, self.down.forward(&hidden)?)?
    }
}

/// The rotary tables `[positions, D]` (each frequency twice, halves side by side).
fn rotary_tables(cfg: &TransformerConfig, device: &Device) -> Result<(Tensor, Tensor)> {
    let (d, n) = (cfg.head_dim(), cfg.block_size);
    let inv: Vec<f64> = (0..d / 2)
        .map(|i| cfg.rope_theta.powf(-((2 * i) as f64) / d as f64))
        .collect();
    let mut cos = Vec::with_capacity(n * d);
    let mut sin = Vec::with_capacity(n * d);
    for p in 0..n {
        for _half in 0..2 {
            for f in &inv {
                let a = p as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
    }
    Ok((
        Tensor::from_vec(cos, (n, d), device)?,
        Tensor::from_vec(sin, (n, d), device)?,
    ))
}

/// The decoder core: input embeddings `[B, T, n_embd]` in, normalised hidden states out.
#[derive(Debug, Clone)]
pub struct Transformer {
    config: TransformerConfig,
    positions: Option<Tensor>,
    rope: Option<(Tensor, Tensor)>,
    blocks: Vec<Block>,
    norm: Norm,
}

impl Transformer {
    /// A new core with parameters named under `prefix` (`""` or ending in `.`).
    pub fn new(
        init: &mut ParamInit,
        prefix: &str,
        config: &TransformerConfig,
        device: &Device,
    ) -> std::result::Result<Self, NnError> {
        config.validate()?;
        let positions = match config.positions {
            PositionKind::Learned => Some(init.normal(
                &format!("{prefix}embed_positions.weight"),
                &[config.block_size, config.n_embd],
                config.init_std as f32,
            )?),
            _ => None,
        };
        let rope = match config.positions {
            PositionKind::Rotary => Some(rotary_tables(config, device)?),
            _ => None,
        };
        let blocks = (0..config.n_layer)
            .map(|i| Block::new(init, &format!("{prefix}layers.{i}"), config))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config: config.clone(),
            positions,
            rope,
            blocks,
            norm: Norm::new(init, &format!("{prefix}norm"), config)?,
        })
    }

    /// The config.
    pub fn config(&self) -> &TransformerConfig {
        &self.config
    }

    /// Makes every parameter a constant (no gradient flows into it); adapters added later
    /// still train.
    pub fn freeze(&mut self) {
        self.positions = self.positions.as_ref().map(|p| p.detach());
        self.norm.freeze();
        for b in &mut self.blocks {
            b.freeze();
        }
    }

    /// Lays every projection's weight out for inference as well
    /// ([`Proj::prepare_for_inference`]): faster forward passes over more than a few rows on the
    /// CPU, the same numbers, twice the weights' memory. For a model that no longer trains.
    pub fn prepare_for_inference(&mut self) -> Result<()> {
        for b in &mut self.blocks {
            for (_, p) in b.projections() {
                p.prepare_for_inference()?;
            }
        }
        Ok(())
    }

    /// Attaches LoRA adapters, created in `init`, to the projections `cfg` names in every
    /// block; parameters are named under `prefix` like the core's own. Returns how many.
    pub fn add_lora(
        &mut self,
        init: &mut ParamInit,
        prefix: &str,
        cfg: &LoraConfig,
    ) -> std::result::Result<usize, NnError> {
        cfg.validate()?;
        let mut added = 0;
        for (i, block) in self.blocks.iter_mut().enumerate() {
            for (name, proj) in block.projections() {
                let short = name.rsplit('.').next().unwrap_or(name);
                if cfg.targets.iter().any(|t| t == short) {
                    proj.add_lora(init, &format!("{prefix}layers.{i}.{name}"), cfg)?;
                    added += 1;
                }
            }
        }
        if added == 0 {
            return Err(NnError::Config(format!(
                "lora.targets ({}) name no projection of this model",
                cfg.targets.join(", ")
            )));
        }
        Ok(added)
    }

    /// Runs the blocks on `x` `[B, T, n_embd]`. With a `cache`, `x` holds the positions after
    /// the cached ones, which are attended to and extended. `dropout` (training only) drops
    /// input and residual-branch units with the config's probability.
    pub fn forward(
        &self,
        x: &Tensor,
        cache: Option<&mut KvCache>,
        rng: Option<&mut ChaCha8Rng>,
    ) -> std::result::Result<Tensor, NnError> {
        self.run(x, cache, rng, false)
    }

    /// The last position's hidden state `[B, 1, n_embd]` of [`forward`](Self::forward) on `x`,
    /// without a cache or dropout: the last block computes every position's keys and values
    /// and the rest for the last position alone (an acting step that recomputes its context
    /// needs no more).
    pub fn forward_last(&self, x: &Tensor) -> std::result::Result<Tensor, NnError> {
        self.run(x, None, None, true)
    }

    fn run(
        &self,
        x: &Tensor,
        mut cache: Option<&mut KvCache>,
        rng: Option<&mut ChaCha8Rng>,
        last_only: bool,
    ) -> std::result::Result<Tensor, NnError> {
        let (_, t, c) = x.dims3()?;
        if c != self.config.n_embd {
            return Err(NnError::Config(format!(
                "transformer: inputs of width {c}, the model is {} wide",
                self.config.n_embd
            )));
        }
        let start = cache.as_ref().map_or(0, |c| c.len());
        if start + t > self.config.block_size {
            return Err(NnError::Config(format!(
                "transformer: {} positions (with {start} cached) exceed block_size {}",
                start + t,
                self.config.block_size
            )));
        }
        let mut drop = rng.map(|rng| Dropout {
            p: self.config.dropout,
            rng,
        });
        let mut x = match &self.positions {
            Some(table) => x.broadcast_add(&table.narrow(0, start, t)?)?,
            None => x.clone(),
        };
        x = dropout(&mut drop, x)?;
        let rope = match &self.rope {
            Some((cos, sin)) => Some((cos.narrow(0, start, t)?, sin.narrow(0, start, t)?)),
            None => None,
        };
        if let Some(c) = cache.as_deref_mut()
            && c.layers.len() != self.blocks.len()
        {
            c.layers = vec![None; self.blocks.len()];
        }
        let last_block = self.blocks.len().saturating_sub(1);
        for (i, block) in self.blocks.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = block.forward(
                &x,
                &self.config,
                rope.as_ref().map(|(c, s)| (c, s)),
                slot,
                &mut drop,
                last_only && i == last_block,
            )?;
        }
        if let Some(c) = cache {
            c.len += t;
        }
        Ok(self.norm.forward(&x)?)
    }
}

/// A language model: token embeddings, the core, and a head onto the vocabulary (tied to the
/// embeddings or its own).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GptConfig {
    /// The core.
    pub transformer: TransformerConfig,
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Whether the output head reuses the token embeddings (GPT-2, SmolLM2) or has its own.
    pub tie_embeddings: bool,
}

impl Default for GptConfig {
    fn default() -> Self {
        Self {
            transformer: TransformerConfig {
                block_size: 256,
                ..TransformerConfig::default()
            },
            vocab_size: 256,
            tie_embeddings: true,
        }
    }
}

/// A decoder-only language model (names: `model.embed_tokens.weight`, `model.layers.*`,
/// `model.norm.weight`, `lm_head.weight` when untied).
#[derive(Debug, Clone)]
pub struct Gpt {
    config: GptConfig,
    embed: Embedding,
    core: Transformer,
    head: Option<Proj>,
}

impl Gpt {
    /// A new model.
    pub fn new(
        init: &mut ParamInit,
        config: &GptConfig,
        device: &Device,
    ) -> std::result::Result<Self, NnError> {
        if !(1..=1 << 24).contains(&config.vocab_size) {
            return Err(NnError::Config(format!(
                "vocab_size must be in 1..=16777216, got {}",
                config.vocab_size
            )));
        }
        let c = config.transformer.n_embd;
        config.transformer.validate()?;
        let std = config.transformer.init_std as f32;
        let embed = Embedding::new(init, "model.embed_tokens", config.vocab_size, c, std)?;
        let core = Transformer::new(init, "model.", &config.transformer, device)?;
        let head = if config.tie_embeddings {
            None
        } else {
            Some(Proj::new(
                init,
                "lm_head",
                c,
                config.vocab_size,
                false,
                std,
            )?)
        };
        Ok(Self {
            config: config.clone(),
            embed,
            core,
            head,
        })
    }

    /// The config.
    pub fn config(&self) -> &GptConfig {
        &self.config
    }

    /// Freezes every parameter (embeddings, norms, projections, head) and attaches LoRA
    /// adapters created in `init` (their own parameter map, so they save apart from the
    /// base): from here on only the adapters get gradients. Returns how many adapters.
    pub fn add_lora(
        &mut self,
        init: &mut ParamInit,
        cfg: &LoraConfig,
    ) -> std::result::Result<usize, NnError> {
        if self
            .core
            .blocks
            .iter_mut()
            .any(|b| b.projections().iter().any(|(_, p)| p.lora.is_some()))
        {
            return Err(NnError::Config(
                "the model already has LoRA adapters".into(),
            ));
        }
        // Checked before anything is frozen, so a bad config leaves the model as it was.
        cfg.validate()?;
        let targeted = self.core.blocks.iter_mut().any(|b| {
            b.projections().iter().any(|(name, _)| {
                let short = name.rsplit('.').next().unwrap_or(name);
                cfg.targets.iter().any(|t| t == short)
            })
        });
        if !targeted {
            return Err(NnError::Config(format!(
                "lora.targets ({}) name no projection of this model",
                cfg.targets.join(", ")
            )));
        }
        self.embed.weight = self.embed.weight.detach();
        if let Some(h) = &mut self.head {
            h.freeze();
        }
        self.core.freeze();
        self.core.add_lora(init, "model.", cfg)
    }

    /// Logits `[B, T, vocab]` for token ids `[B, T]` (after the cached positions, if any).
    pub fn forward(
        &self,
        ids: &Tensor,
        cache: Option<&mut KvCache>,
        rng: Option<&mut ChaCha8Rng>,
    ) -> std::result::Result<Tensor, NnError> {
        let h = self.hidden(ids, cache, rng)?;
        self.head(&h)
    }

    /// The final hidden states `[B, T, n_embd]` for token ids `[B, T]`: [`forward`](Self::forward)
    /// without the head, for a caller that needs logits at a few positions only.
    pub fn hidden(
        &self,
        ids: &Tensor,
        cache: Option<&mut KvCache>,
        rng: Option<&mut ChaCha8Rng>,
    ) -> std::result::Result<Tensor, NnError> {
        let x = self.embed.forward(ids)?;
        self.core.forward(&x, cache, rng)
    }

    /// Logits (f32) for hidden states `[.., n_embd]`.
    pub fn head(&self, h: &Tensor) -> std::result::Result<Tensor, NnError> {
        let logits = match &self.head {
            Some(head) => head.forward(h)?,
            None => Proj::from_weight(self.embed.weight.clone(), None).forward(h)?,
        };
        Ok(logits.to_dtype(DType::F32)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{max_diff, rand};
    use crate::{check_gradients_reach_every_parameter, finite_difference_check};
    use candle_core::{DType, Var};
    use candle_nn::VarMap;
    use rand::SeedableRng;

    fn tiny(norm: NormKind, positions: PositionKind, mlp: MlpKind, kv: usize) -> TransformerConfig {
        TransformerConfig {
            n_layer: 2,
            n_embd: 8,
            n_head: 4,
            n_kv_head: kv,
            block_size: 12,
            norm,
            positions,
            mlp,
            mlp_hidden: 12,
            bias: norm == NormKind::LayerNorm,
            dropout: 0.0,
            ..Default::default()
        }
    }

    fn variants() -> Vec<TransformerConfig> {
        vec![
            tiny(NormKind::LayerNorm, PositionKind::Learned, MlpKind::Gelu, 0),
            tiny(NormKind::RmsNorm, PositionKind::Rotary, MlpKind::SwiGlu, 2),
            tiny(NormKind::RmsNorm, PositionKind::None, MlpKind::Gelu, 1),
        ]
    }

    fn build(cfg: &TransformerConfig, seed: u64) -> (VarMap, Transformer) {
        let vm = VarMap::new();
        let mut init = ParamInit::new(&vm, &Device::Cpu, seed);
        let t = Transformer::new(&mut init, "", cfg, &Device::Cpu).unwrap();
        (vm, t)
    }

    #[test]
    fn every_parameter_of_every_variant_gets_a_gradient() {
        for cfg in variants() {
            let (vm, t) = build(&cfg, 1);
            let x = rand(&[2, 5, 8], 2);
            let y = t.forward(&x, None, None).unwrap();
            let loss = y.sqr().unwrap().mean_all().unwrap();
            check_gradients_reach_every_parameter(&vm, &loss)
                .unwrap_or_else(|e| panic!("{cfg:?}: {e}"));
        }
        // The language model, tied and untied, through its logits.
        for tie in [true, false] {
            let vm = VarMap::new();
            let mut init = ParamInit::new(&vm, &Device::Cpu, 3);
            let cfg = GptConfig {
                transformer: variants()[1].clone(),
                vocab_size: 11,
                tie_embeddings: tie,
            };
            let gpt = Gpt::new(&mut init, &cfg, &Device::Cpu).unwrap();
            let ids = Tensor::new(&[[1u32, 4, 7, 10], [0, 2, 2, 9]], &Device::Cpu).unwrap();
            let logits = gpt.forward(&ids, None, None).unwrap();
            assert_eq!(logits.dims(), &[2, 4, 11]);
            let loss = logits.sqr().unwrap().mean_all().unwrap();
            check_gradients_reach_every_parameter(&vm, &loss).unwrap();
            let names: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
            assert_eq!(
                names.iter().any(|n| n == "lm_head.weight"),
                !tie,
                "{names:?}"
            );
            assert!(
                names
                    .iter()
                    .any(|n| n == "model.layers.1.mlp.gate_proj.weight")
            );
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        for cfg in variants() {
            // In f64, so that the differences are exact to many digits.
            let vm = VarMap::new();
            let mut init = ParamInit::new(&vm, &Device::Cpu, 4).with_dtype(DType::F64);
            let t = Transformer::new(&mut init, "", &cfg, &Device::Cpu).unwrap();
            let x = rand(&[1, 4, 8], 5).to_dtype(DType::F64).unwrap();
            let vars = vm.data().lock().unwrap().clone();
            // GPT-2's 0.02 initialisation makes gradients tiny: probe at weights of order one,
            // drawn in name order (the map's own order differs from run to run).
            for (i, (name, var)) in crate::sorted_vars(&vm).iter().enumerate() {
                let shape = var.as_tensor().dims().to_vec();
                let mut w = (rand(&shape, 100 + i as u64) * 0.5).unwrap();
                if name.ends_with("norm.weight") {
                    w = (w + 1.0).unwrap();
                }
                var.set(&w.to_dtype(DType::F64).unwrap()).unwrap();
            }
            for name in [
                "layers.0.self_attn.q_proj.weight",
                "layers.0.self_attn.k_proj.weight",
                "layers.0.self_attn.v_proj.weight",
                "layers.1.mlp.down_proj.weight",
                "layers.1.mlp.up_proj.weight",
                "norm.weight",
            ] {
                let var: &Var = &vars[name];
                let loss = || {
                    let y = t
                        .forward(&x, None, None)
                        .map_err(candle_core::Error::wrap)?;
                    (y.sin()? * 3.0)?.sum_all()
                };
                // Central differences in f64: a step of 1e-5 keeps the truncation error (h²)
                // far below the tolerance.
                let r = finite_difference_check(&loss, var, 1e-5, 12).unwrap();
                assert!(
                    r.max_rel_err < 1e-4,
                    "{name} in {:?}/{:?}: {r:?}",
                    cfg.norm,
                    cfg.positions
                );
            }
        }
    }

    #[test]
    fn a_cached_step_by_step_pass_equals_the_full_pass() {
        for cfg in variants() {
            let (_, t) = build(&cfg, 6);
            let x = rand(&[2, 7, 8], 7);
            let full = t.forward(&x, None, None).unwrap();
            let mut cache = KvCache::new();
            // A prefix of three positions, then one at a time.
            let mut parts = vec![
                t.forward(&x.narrow(1, 0, 3).unwrap(), Some(&mut cache), None)
                    .unwrap(),
            ];
            for i in 3..7 {
                parts.push(
                    t.forward(&x.narrow(1, i, 1).unwrap(), Some(&mut cache), None)
                        .unwrap(),
                );
            }
            assert_eq!(cache.len(), 7);
            let stepped = Tensor::cat(&parts, 1).unwrap();
            let d = max_diff(&full, &stepped);
            assert!(d < 1e-5, "{:?}: {d}", cfg.positions);
            // The cache refuses to grow past block_size, with a clear error.
            let err = t
                .forward(&rand(&[2, 6, 8], 8), Some(&mut cache), None)
                .unwrap_err();
            assert!(err.to_string().contains("block_size"), "{err}");
        }
    }

    #[test]
    fn the_last_position_alone_and_the_inference_layout_give_the_full_pass() {
        for cfg in variants() {
            let (_, t) = build(&cfg, 16);
            // 2 x 7 = 14 rows: past the few-rows path, through gemm.
            let x = rand(&[2, 7, 8], 17);
            let full = t.forward(&x, None, None).unwrap();
            let last = full.narrow(1, 6, 1).unwrap();
            let d = max_diff(&t.forward_last(&x).unwrap(), &last);
            assert!(d < 1e-5, "{:?} {:?}: {d}", cfg.norm, cfg.positions);
            let mut fast = t.clone();
            fast.prepare_for_inference().unwrap();
            // The transposed copy gives gemm the same products (to rounding: at some shapes it
            // picks other kernels).
            let d = max_diff(&fast.forward(&x, None, None).unwrap(), &full);
            assert!(d < 1e-6, "{:?} {:?}: {d}", cfg.norm, cfg.positions);
            let d = max_diff(&fast.forward_last(&x).unwrap(), &last);
            assert!(d < 1e-5, "{:?} {:?}: {d}", cfg.norm, cfg.positions);
            // One position: the last is the only one.
            let one = x.narrow(1, 0, 1).unwrap();
            let d = max_diff(
                &t.forward_last(&one).unwrap(),
                &t.forward(&one, None, None).unwrap(),
            );
            assert!(d < 1e-6, "{d}");
        }
    }

    #[test]
    fn a_prepared_projection_multiplies_any_shape_like_the_plain_one() {
        // Widths off and on multiples of 16 and 128 (the padded row stride), rows on both
        // sides of the few-rows path.
        for (i, (inp, out)) in [(8, 5), (33, 128), (128, 256), (7, 300)]
            .into_iter()
            .enumerate()
        {
            let w = rand(&[out, inp], 30 + i as u64);
            let b = rand(&[out], 40 + i as u64);
            let plain = Proj::from_weight(w.clone(), Some(b.clone()));
            let mut fast = Proj::from_weight(w, Some(b));
            fast.prepare_for_inference().unwrap();
            for rows in [1, 4, 5, 37] {
                let x = rand(&[rows, inp], 50 + rows as u64);
                let (y, z) = (plain.forward(&x).unwrap(), fast.forward(&x).unwrap());
                assert_eq!(z.dims(), [rows, out]);
                assert!(max_diff(&y, &z) < 1e-5, "{inp}x{out}, {rows} rows");
            }
        }
    }

    #[test]
    fn outputs_never_depend_on_later_positions() {
        for cfg in variants() {
            let (_, t) = build(&cfg, 9);
            let x = rand(&[1, 6, 8], 10);
            let y = t.forward(&x, None, None).unwrap();
            let mut v: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            // A perturbation LayerNorm cannot remove (not a constant shift).
            v[4 * 8..]
                .iter_mut()
                .enumerate()
                .for_each(|(i, a)| *a += (i as f32 * 0.7).sin());
            let x2 = Tensor::from_vec(v, (1, 6, 8), &Device::Cpu).unwrap();
            let y2 = t.forward(&x2, None, None).unwrap();
            let early = max_diff(&y.narrow(1, 0, 4).unwrap(), &y2.narrow(1, 0, 4).unwrap());
            let late = max_diff(&y.narrow(1, 4, 2).unwrap(), &y2.narrow(1, 4, 2).unwrap());
            assert!(early < 1e-6 && late > 1e-3, "{early} {late}");
        }
    }

    #[test]
    fn rotary_scores_depend_only_on_the_distance_between_positions() {
        let cfg = tiny(NormKind::RmsNorm, PositionKind::Rotary, MlpKind::SwiGlu, 0);
        let (cos, sin) = rotary_tables(&cfg, &Device::Cpu).unwrap();
        let q = rand(&[1, 1, 1, 2], 11);
        let k = rand(&[1, 1, 1, 2], 12);
        let score = |m: usize, n: usize| -> f32 {
            let rq = crate::rotary(
                &q,
                &cos.narrow(0, m, 1).unwrap(),
                &sin.narrow(0, m, 1).unwrap(),
            )
            .unwrap();
            let rk = crate::rotary(
                &k,
                &cos.narrow(0, n, 1).unwrap(),
                &sin.narrow(0, n, 1).unwrap(),
            )
            .unwrap();
            (rq * rk).unwrap().sum_all().unwrap().to_scalar().unwrap()
        };
        // Head width 2, θ = 10000: one frequency, 1 radian per position; closed form
        // q·R(n−m)·k.
        let (qv, kv): (Vec<f32>, Vec<f32>) = (
            q.flatten_all().unwrap().to_vec1().unwrap(),
            k.flatten_all().unwrap().to_vec1().unwrap(),
        );
        for (m, n) in [(0, 0), (1, 4), (5, 2), (7, 10)] {
            let a = (n as f32) - (m as f32);
            let expected = (qv[0] * kv[0] + qv[1] * kv[1]) * a.cos()
                + (qv[1] * kv[0] - qv[0] * kv[1]) * a.sin();
            assert!((score(m, n) - expected).abs() < 1e-5, "{m},{n}");
            assert!((score(m, n) - score(m + 1, n + 1)).abs() < 1e-5);
        }
    }

    #[test]
    fn a_seed_fixes_weights_and_dropout_and_bad_shapes_are_errors() {
        let mut cfg = variants()[0].clone();
        cfg.dropout = 0.5;
        let (_, a) = build(&cfg, 13);
        let (_, b) = build(&cfg, 13);
        let x = rand(&[1, 5, 8], 14);
        let run = |t: &Transformer, seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            t.forward(&x, None, Some(&mut rng)).unwrap()
        };
        assert_eq!(max_diff(&run(&a, 1), &run(&b, 1)), 0.0);
        assert!(max_diff(&run(&a, 1), &run(&a, 2)) > 1e-3);
        // A mask of many blocks (drawn on several threads) is the same on any number of them,
        // keeps about 1 - p of the units, and scales them by 1 / (1 - p).
        let big = Tensor::ones((40, 1000), DType::F32, &Device::Cpu).unwrap();
        let masked = |threads: usize| -> Vec<f32> {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut rng = ChaCha8Rng::seed_from_u64(5);
                let mut d = Dropout {
                    p: 0.25,
                    rng: &mut rng,
                };
                d.apply(&big)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            })
        };
        let m = masked(1);
        assert_eq!(m, masked(3));
        let kept = m.iter().filter(|v| **v != 0.0).count() as f64 / m.len() as f64;
        assert!((kept - 0.75).abs() < 0.01, "kept {kept}");
        assert!(
            m.iter()
                .all(|v| *v == 0.0 || (*v - 1.0 / 0.75).abs() < 1e-6)
        );
        // Without a generator (evaluation) there is no dropout.
        assert_eq!(
            max_diff(
                &a.forward(&x, None, None).unwrap(),
                &b.forward(&x, None, None).unwrap()
            ),
            0.0
        );
        for (field, bad) in [
            (
                "n_head",
                TransformerConfig {
                    n_head: 3,
                    ..cfg.clone()
                },
            ),
            (
                "n_kv_head",
                TransformerConfig {
                    n_kv_head: 3,
                    ..cfg.clone()
                },
            ),
            (
                "dropout",
                TransformerConfig {
                    dropout: 1.0,
                    ..cfg.clone()
                },
            ),
            (
                "even head width",
                TransformerConfig {
                    n_head: 8,
                    positions: PositionKind::Rotary,
                    ..cfg.clone()
                },
            ),
        ] {
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
        let err = a.forward(&rand(&[1, 5, 6], 15), None, None).unwrap_err();
        assert!(err.to_string().contains("width 6"), "{err}");
    }

    fn lora_gpt(dtype: DType) -> (VarMap, Gpt, GptConfig) {
        let cfg = GptConfig {
            transformer: variants()[1].clone(),
            vocab_size: 11,
            tie_embeddings: true,
        };
        let vm = VarMap::new();
        let mut init = ParamInit::new(&vm, &Device::Cpu, 21).with_dtype(dtype);
        let gpt = Gpt::new(&mut init, &cfg, &Device::Cpu).unwrap();
        (vm, gpt, cfg)
    }

    fn lora_ids() -> Tensor {
        Tensor::new(&[[1u32, 4, 7, 10], [0, 2, 2, 9]], &Device::Cpu).unwrap()
    }

    /// Draws every adapter's `B` away from zero (it starts at zero, where `A` gets no gradient).
    fn randomize_b(adapters: &VarMap, dtype: DType) {
        for (i, (name, var)) in crate::sorted_vars(adapters).iter().enumerate() {
            if name.contains("lora_B") {
                let w = (rand(var.dims(), 300 + i as u64) * 0.3).unwrap();
                var.set(&w.to_dtype(dtype).unwrap()).unwrap();
            }
        }
    }

    #[test]
    fn lora_starts_as_the_base_and_only_its_adapters_train() {
        let (base, mut gpt, _) = lora_gpt(DType::F32);
        let before = gpt.forward(&lora_ids(), None, None).unwrap();
        let adapters = VarMap::new();
        let mut init = ParamInit::new(&adapters, &Device::Cpu, 22);
        let cfg = LoraConfig {
            rank: 2,
            alpha: 4.0,
            targets: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
        };
        assert_eq!(
            gpt.add_lora(&mut init, &cfg).unwrap(),
            6,
            "3 targets in 2 blocks"
        );
        let names: Vec<String> = crate::sorted_vars(&adapters)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names.len(), 12);
        assert!(
            names.contains(&"base_model.model.model.layers.1.mlp.down_proj.lora_A.weight".into()),
            "{names:?}"
        );
        // B starts at zero: the adapted model is the base.
        let after = gpt.forward(&lora_ids(), None, None).unwrap();
        assert_eq!(max_diff(&before, &after), 0.0);
        randomize_b(&adapters, DType::F32);
        let logits = gpt.forward(&lora_ids(), None, None).unwrap();
        assert!(max_diff(&before, &logits) > 1e-4);
        let loss = logits.sqr().unwrap().mean_all().unwrap();
        check_gradients_reach_every_parameter(&adapters, &loss).unwrap();
        let grads = loss.backward().unwrap();
        for (name, var) in crate::sorted_vars(&base) {
            assert!(
                grads.get(&var).is_none(),
                "{name} is frozen but got a gradient"
            );
        }
        let others = LoraConfig {
            targets: vec!["up_proj".into()],
            ..cfg.clone()
        };
        assert!(gpt.add_lora(&mut init, &others).is_err(), "adapters twice");
        // A config that names nothing here (gate_proj on a GELU model), or a bad rank, is
        // refused before anything is frozen: every base weight still trains.
        for bad in [
            LoraConfig {
                targets: vec!["gate_proj".into()],
                ..cfg.clone()
            },
            LoraConfig {
                rank: 0,
                ..cfg.clone()
            },
        ] {
            let base = VarMap::new();
            let mut init = ParamInit::new(&base, &Device::Cpu, 25);
            let gelu = GptConfig {
                transformer: variants()[0].clone(),
                vocab_size: 11,
                tie_embeddings: true,
            };
            let mut gpt = Gpt::new(&mut init, &gelu, &Device::Cpu).unwrap();
            let mut adapter_init = ParamInit::new(&adapters, &Device::Cpu, 26);
            assert!(gpt.add_lora(&mut adapter_init, &bad).is_err(), "{bad:?}");
            let logits = gpt.forward(&lora_ids(), None, None).unwrap();
            let loss = logits.sqr().unwrap().mean_all().unwrap();
            check_gradients_reach_every_parameter(&base, &loss).unwrap();
        }
    }

    #[test]
    fn lora_equals_its_merged_weight_and_matches_finite_differences() {
        // The core in f64 (the language model's logits come out in f32).
        let cfg = variants()[1].clone();
        let core = |vm: &VarMap| {
            let mut init = ParamInit::new(vm, &Device::Cpu, 21).with_dtype(DType::F64);
            Transformer::new(&mut init, "", &cfg, &Device::Cpu).unwrap()
        };
        let mut adapted = core(&VarMap::new());
        let adapters = VarMap::new();
        let mut init = ParamInit::new(&adapters, &Device::Cpu, 23).with_dtype(DType::F64);
        let lora = LoraConfig {
            rank: 3,
            alpha: 6.0,
            targets: vec!["k_proj".into()],
        };
        adapted.add_lora(&mut init, "", &lora).unwrap();
        randomize_b(&adapters, DType::F64);
        // The same base with W + (alpha / rank) B A in place of each k_proj.
        let merged_vm = VarMap::new();
        let merged = core(&merged_vm);
        let vars = adapters.data().lock().unwrap().clone();
        for layer in 0..2 {
            let stem = format!("base_model.model.layers.{layer}.self_attn.k_proj");
            let a = vars[&format!("{stem}.lora_A.weight")].as_tensor().clone();
            let b = vars[&format!("{stem}.lora_B.weight")].as_tensor().clone();
            let name = format!("layers.{layer}.self_attn.k_proj.weight");
            let w = merged_vm.data().lock().unwrap()[&name].clone();
            let update = (b.matmul(&a).unwrap() * lora.scale()).unwrap();
            w.set(&(w.as_tensor() + update).unwrap()).unwrap();
        }
        let x = rand(&[2, 5, 8], 24).to_dtype(DType::F64).unwrap();
        let y = adapted.forward(&x, None, None).unwrap();
        let y_merged = merged.forward(&x, None, None).unwrap();
        let diff: f64 = (&y - &y_merged)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(diff < 1e-12, "{diff}");
        let loss = || {
            adapted
                .forward(&x, None, None)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?
                .sin()?
                .sum_all()
        };
        for var in vars.values() {
            let r = finite_difference_check(&loss, var, 1e-5, 8).unwrap();
            assert!(r.max_abs_err < 1e-6, "{r:?}");
        }
    }

    #[test]
    fn bad_lora_configs_are_refused_by_name() {
        for (bad, what) in [
            (
                LoraConfig {
                    rank: 0,
                    ..LoraConfig::default()
                },
                "rank",
            ),
            (
                LoraConfig {
                    alpha: f64::NAN,
                    ..LoraConfig::default()
                },
                "alpha",
            ),
            (
                LoraConfig {
                    targets: vec!["lm_head".into()],
                    ..LoraConfig::default()
                },
                "lm_head",
            ),
            (
                LoraConfig {
                    targets: vec![],
                    ..LoraConfig::default()
                },
                "targets",
            ),
        ] {
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains(what), "{what}: {err}");
        }
        // gate_proj on a GELU model names nothing there.
        let vm = VarMap::new();
        let mut init = ParamInit::new(&vm, &Device::Cpu, 1);
        let mut core = Transformer::new(&mut init, "", &variants()[0], &Device::Cpu).unwrap();
        let err = core
            .add_lora(
                &mut init,
                "",
                &LoraConfig {
                    targets: vec!["gate_proj".into()],
                    ..LoraConfig::default()
                },
            )
            .unwrap_err();
        assert!(err.to_string().contains("no projection"), "{err}");
    }
}
