//! The language controller: a Llama-architecture language model (RMSNorm, rotary positions,
//! SwiGLU, grouped-query attention, tied embeddings; Hugging Face parameter names) on the
//! shared transformer core, a byte-level BPE tokenizer, sampling with a KV cache (greedy,
//! temperature, top-p), optional grammar-constrained decoding for the Tabletop action
//! language, and [`LanguagePolicy`], which acts in `Tabletop-v0`'s language mode.
//!
//! A prompt is the observation text followed by `"\naction: "`; the model writes the action
//! and ends it with the end token. Training (SFT) lives in `dreamgym-agents`.

mod gguf;
mod hf;
mod preference;
mod tokenizer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Var;
use candle_core::{D, DType, Device, Tensor};
use candle_nn::VarMap;
use dreamgym_envs::Value;
use dreamgym_envs::builtin::tabletop::command::{is_complete_program, is_viable_prefix};
use dreamgym_nn::{
    Gpt, GptConfig, KvCache, LoraConfig, MlpKind, NormKind, ParamInit, PositionKind,
    TransformerConfig,
};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{Policy, PolicyError};

pub use gguf::{SYSTEM_PROMPT, load_gguf};
pub use hf::load_hf;
pub use preference::{
    MAX_WEIGHT, MIN_BETA, PreferenceLoss, PreferenceLossKind, PreferenceMetrics, PreferencePair,
    completion_logps, pair_logps, preference_loss, reference_logps,
};
pub use tokenizer::{BOS, EOS, TextTokenizer};

/// The kind written in the checkpoint sidecar.
pub const LM_CHECKPOINT_KIND: &str = "language_model";

/// The kind of a checkpoint that holds what fine-tuning changed in a pretrained base model
/// (its LoRA adapters, or every weight), and where the base is.
pub const FINETUNE_CHECKPOINT_KIND: &str = "language_model_finetune";

/// The config of a [`FINETUNE_CHECKPOINT_KIND`] checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneConfig {
    /// The pretrained model (a GGUF file or a Hugging Face folder), as an absolute path.
    pub base: PathBuf,
    /// The base's architecture.
    pub model: GptConfig,
    /// [`base_fingerprint`] of the base when it was fine-tuned: another model of the same
    /// architecture (SmolLM2-135M and -Instruct, two quantisations) at that path is refused.
    #[serde(default)]
    pub base_fingerprint: String,
    /// The adapters, when only they were trained (the checkpoint then holds only them).
    pub lora: Option<LoraConfig>,
}

/// What follows the observation in a prompt.
pub const PROMPT_SUFFIX: &str = "\naction: ";

/// The mean of `values` over the positions where `mask` (same shape, f32 weights) is
/// non-zero, weighted by it; 0 when the mask is empty.
pub fn masked_mean(values: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let count = mask.sum_all()?.to_scalar::<f32>()?.max(1e-6);
    (values * mask)?.sum_all()?.affine(1.0 / count as f64, 0.0)
}

/// Whether `path` names a pretrained model [`load_pretrained`] reads: a `.gguf` file, or a
/// folder with `config.json` and `tokenizer.json` (Hugging Face's layout).
pub fn is_pretrained(path: &Path) -> bool {
    (path.is_file() && path.extension().is_some_and(|e| e == "gguf"))
        || (path.is_dir()
            && path.join("config.json").is_file()
            && path.join("tokenizer.json").is_file())
}

/// An identity for a pretrained model's files, cheap to compute: the size and the CRC-32 of
/// the first MiB of a GGUF file (its header: metadata and tensor table), or of a Hugging Face
/// folder's `config.json` and the sizes of its weight files.
pub fn base_fingerprint(path: &Path) -> Result<String, PolicyError> {
    let io = |p: &Path, e: std::io::Error| PolicyError::Load(format!("{}: {e}", p.display()));
    let head = |p: &Path| -> Result<(u64, u32), PolicyError> {
        use std::io::Read;
        let file = std::fs::File::open(p).map_err(|e| io(p, e))?;
        let len = file.metadata().map_err(|e| io(p, e))?.len();
        let mut buf = Vec::new();
        file.take(1 << 20)
            .read_to_end(&mut buf)
            .map_err(|e| io(p, e))?;
        Ok((len, crc32fast::hash(&buf)))
    };
    if path.is_dir() {
        let (_, config) = head(&path.join("config.json"))?;
        let mut sizes = Vec::new();
        let entries = std::fs::read_dir(path).map_err(|e| io(path, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.ends_with(".safetensors") {
                let len = entry.metadata().map_err(|e| io(&entry.path(), e))?.len();
                sizes.push(format!("{name}:{len}"));
            }
        }
        sizes.sort();
        Ok(format!("config {config:08x}; {}", sizes.join(", ")))
    } else {
        let (len, crc) = head(path)?;
        Ok(format!("{len} bytes; header {crc:08x}"))
    }
}

/// A pretrained Llama-family model: a GGUF file, or a Hugging Face checkpoint folder. The
/// model remembers where it came from, so that fine-tuning saves only what it changed.
pub fn load_pretrained(path: &Path, device: &Device) -> Result<LanguageModel, PolicyError> {
    let mut model = if path.is_dir() {
        load_hf(path, device)?
    } else {
        load_gguf(path, device)?
    };
    model.base = Some(std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()));
    Ok(model)
}

/// A 2-layer, 16-wide size for tests.
#[cfg(test)]
pub(crate) fn tiny_size() -> LlamaSize {
    LlamaSize {
        n_layer: 2,
        n_embd: 16,
        n_head: 4,
        n_kv_head: 2,
        mlp_hidden: 24,
        block_size: 64,
        dropout: 0.0,
    }
}

/// The prompt for an observation text.
pub fn prompt_for(observation: &str) -> String {
    format!("{observation}{PROMPT_SUFFIX}")
}

/// The size of a Llama-architecture model (the rest of the choices are Llama's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlamaSize {
    /// Blocks.
    pub n_layer: usize,
    /// Width.
    pub n_embd: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (grouped-query attention when fewer than `n_head`).
    pub n_kv_head: usize,
    /// SwiGLU hidden width.
    pub mlp_hidden: usize,
    /// Context, tokens.
    pub block_size: usize,
    /// Dropout while training.
    pub dropout: f32,
}

impl Default for LlamaSize {
    /// About 0.9 M parameters with a 512-token vocabulary.
    fn default() -> Self {
        Self {
            n_layer: 4,
            n_embd: 128,
            n_head: 4,
            n_kv_head: 2,
            mlp_hidden: 344,
            block_size: 384,
            dropout: 0.0,
        }
    }
}

impl LlamaSize {
    /// The model config for a vocabulary size.
    pub fn gpt(&self, vocab_size: usize) -> GptConfig {
        GptConfig {
            transformer: TransformerConfig {
                n_layer: self.n_layer,
                n_embd: self.n_embd,
                n_head: self.n_head,
                n_kv_head: self.n_kv_head,
                block_size: self.block_size,
                norm: NormKind::RmsNorm,
                norm_eps: 1e-5,
                positions: PositionKind::Rotary,
                rope_theta: 10_000.0,
                mlp: MlpKind::SwiGlu,
                mlp_hidden: self.mlp_hidden,
                bias: false,
                dropout: self.dropout,
                // GPT-2's 0.02 is too small for a model this narrow: with it, 4 layers 128
                // wide did not learn to copy an instruction's colour in 600 steps; with small
                // init they did in 300 (policies/examples/copy_probe.rs).
                init_std: TransformerConfig::small_init(self.n_embd),
            },
            vocab_size,
            tie_embeddings: true,
        }
    }
}

/// How an observation becomes a prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptFormat {
    /// The observation and `"\naction: "` (models trained here).
    Plain,
    /// A ChatML conversation (SmolLM2's template) with this system message, the observation
    /// as the user's turn, and the assistant's turn opened.
    Chat(String),
}

/// A language model with its tokenizer.
pub struct LanguageModel {
    format: PromptFormat,
    config: GptConfig,
    gpt: Gpt,
    tokenizer: TextTokenizer,
    varmap: VarMap,
    device: Device,
    /// The pretrained file or folder it was loaded from.
    base: Option<PathBuf>,
    /// LoRA adapters and their own parameters.
    lora: Option<(LoraConfig, VarMap)>,
}

impl std::fmt::Debug for LanguageModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LanguageModel({:?}, {:?})", self.config, self.tokenizer)
    }
}

/// The tokenizer file beside a checkpoint stem.
pub fn tokenizer_path(stem: &Path) -> PathBuf {
    let mut name = stem.file_name().unwrap_or_default().to_os_string();
    name.push(".tokenizer.json");
    stem.with_file_name(name)
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// The model wrote the end token.
    End,
    /// The token budget ran out.
    Budget,
    /// The context is full.
    Context,
    /// Constrained decoding found no allowed token (the grammar has no continuation).
    Stuck,
}

/// How to pick tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sampling {
    /// 0 picks the most likely token (greedy); above 0 samples from the softened distribution.
    pub temperature: f32,
    /// Nucleus sampling: keep the most likely tokens whose probabilities add up to this.
    pub top_p: f32,
    /// Most tokens to generate.
    pub max_new_tokens: usize,
    /// Mask tokens that cannot continue a valid program of the Tabletop action language.
    pub constrained: bool,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            max_new_tokens: 96,
            constrained: false,
        }
    }
}

/// A generated completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Its text.
    pub text: String,
    /// Tokens generated (the end token included).
    pub tokens: usize,
    /// Their ids, as sampled (the end token included): what RL scores and trains on, with no
    /// round trip through text.
    pub ids: Vec<u32>,
    /// Why it stopped.
    pub stop: Stop,
}

fn nn<E: Into<dreamgym_nn::NnError>>(e: E) -> PolicyError {
    PolicyError::Model(e.into())
}

impl LanguageModel {
    /// A new model with parameters drawn from `seed`.
    pub fn new(
        size: &LlamaSize,
        tokenizer: TextTokenizer,
        device: &Device,
        seed: u64,
    ) -> Result<Self, PolicyError> {
        let config = size.gpt(tokenizer.vocab_size());
        Self::with_config(config, tokenizer, device, Some(seed))
    }

    /// A model of `config`, its weights drawn from `seed`, or all zero without one (for a
    /// model whose weights are loaded next).
    fn with_config(
        config: GptConfig,
        tokenizer: TextTokenizer,
        device: &Device,
        seed: Option<u64>,
    ) -> Result<Self, PolicyError> {
        if config.vocab_size != tokenizer.vocab_size() {
            return Err(PolicyError::Load(format!(
                "the tokenizer has {} tokens but the model's vocabulary is {}: they do not \
                 belong together",
                tokenizer.vocab_size(),
                config.vocab_size
            )));
        }
        let varmap = VarMap::new();
        let mut init = match seed {
            Some(seed) => ParamInit::new(&varmap, device, seed),
            None => ParamInit::placeholders(&varmap, device),
        };
        let gpt = Gpt::new(&mut init, &config, device)?;
        Ok(Self {
            format: PromptFormat::Plain,
            config,
            gpt,
            tokenizer,
            varmap,
            device: device.clone(),
            base: None,
            lora: None,
        })
    }

    /// Freezes the model and attaches LoRA adapters (drawn from `seed`) to the projections
    /// `cfg` names: from here on [`trainable`](Self::trainable) is the adapters alone, and
    /// [`save`](Self::save) writes only them. Returns how many projections were adapted.
    pub fn add_lora(&mut self, cfg: &LoraConfig, seed: u64) -> Result<usize, PolicyError> {
        if self.lora.is_some() {
            return Err(PolicyError::Config(
                "the model already has LoRA adapters".into(),
            ));
        }
        let varmap = VarMap::new();
        let mut init = ParamInit::new(&varmap, &self.device, seed);
        let n = self.gpt.add_lora(&mut init, cfg)?;
        self.lora = Some((cfg.clone(), varmap));
        Ok(n)
    }

    /// The LoRA config, when the model has adapters.
    pub fn lora(&self) -> Option<&LoraConfig> {
        self.lora.as_ref().map(|(c, _)| c)
    }

    /// The pretrained file or folder the model was loaded from.
    pub fn base(&self) -> Option<&Path> {
        self.base.as_deref()
    }

    /// The parameters that train, sorted by name: the adapters when there are any, else
    /// every parameter.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        match &self.lora {
            Some((_, adapters)) => dreamgym_nn::sorted_vars(adapters),
            None => dreamgym_nn::sorted_vars(&self.varmap),
        }
    }

    /// Loads a checkpoint saved by [`save`](Self::save) from this same model into its
    /// trainable parameters (resuming training).
    pub fn load_trainable(&self, stem: &Path) -> Result<(), PolicyError> {
        let params = match &self.lora {
            Some((_, adapters)) => adapters,
            None => &self.varmap,
        };
        Ok(dreamgym_nn::load_weights(stem, params)?)
    }

    /// The model config.
    pub fn config(&self) -> &GptConfig {
        &self.config
    }

    /// The prompt for an observation text.
    pub fn prompt(&self, observation: &str) -> String {
        match &self.format {
            PromptFormat::Plain => prompt_for(observation),
            PromptFormat::Chat(system) => format!(
                "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{observation}<|im_end|>\n<|im_start|>assistant\n"
            ),
        }
    }

    /// Replaces a parameter's value (loading pretrained weights), checking its shape.
    fn set_parameter(&self, name: &str, value: &Tensor) -> Result<(), PolicyError> {
        let data = self.varmap.data().lock().map_err(|_| {
            PolicyError::Load("the parameter table is poisoned by an earlier panic".into())
        })?;
        let var = data
            .get(name)
            .ok_or_else(|| PolicyError::Load(format!("the model has no parameter `{name}`")))?;
        if var.dims() != value.dims() {
            return Err(PolicyError::Load(format!(
                "`{name}` is {:?} in the model and {:?} in the file",
                var.dims(),
                value.dims()
            )));
        }
        var.set(&value.to_dtype(var.dtype()).map_err(nn)?)
            .map_err(nn)
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// The parameters.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Logits `[B, T, vocab]` for ids `[B, T]`.
    pub fn forward(
        &self,
        ids: &Tensor,
        cache: Option<&mut KvCache>,
        rng: Option<&mut ChaCha8Rng>,
    ) -> Result<Tensor, PolicyError> {
        Ok(self.gpt.forward(ids, cache, rng)?)
    }

    /// The final hidden states `[B, T, n_embd]` for ids `[B, T]` (the model without its
    /// head: what a reward head reads).
    pub fn hidden(&self, ids: &Tensor) -> Result<Tensor, PolicyError> {
        Ok(self.gpt.hidden(ids, None, None)?)
    }

    /// The cross-entropy of each next-token target: `targets` `[B, T]` in, `[B, T]` out.
    pub fn token_losses(
        &self,
        inputs: &Tensor,
        targets: &Tensor,
        rng: Option<&mut ChaCha8Rng>,
    ) -> Result<Tensor, PolicyError> {
        let logits = self.forward(inputs, None, rng)?;
        let run = || -> candle_core::Result<Tensor> {
            let v = self.config.vocab_size;
            dreamgym_nn::cross_entropy(&logits.reshape(((), v))?, &targets.flatten_all()?)?
                .reshape(targets.dims())
        };
        run().map_err(nn)
    }

    /// The cross-entropy of the next-token targets at the flat positions `at` (u32 indices
    /// into the `B · T` positions of `inputs` `[B, T]`): `[at.len()]`. The head runs at those
    /// positions only: SFT's loss needs the completion's few tokens, not the prompt's
    /// hundreds (with a 49k-token vocabulary, the head over every position cost more than
    /// the rest of the model).
    pub fn token_losses_at(
        &self,
        inputs: &Tensor,
        targets: &Tensor,
        at: &Tensor,
        rng: Option<&mut ChaCha8Rng>,
    ) -> Result<Tensor, PolicyError> {
        let h = self.gpt.hidden(inputs, None, rng)?;
        let run = || -> candle_core::Result<Tensor> {
            let c = h.dim(D::Minus1)?;
            h.reshape(((), c))?.index_select(at, 0)
        };
        let picked = run().map_err(nn)?;
        let logits = self.gpt.head(&picked)?;
        let run =
            || dreamgym_nn::cross_entropy(&logits, &targets.flatten_all()?.index_select(at, 0)?);
        run().map_err(nn)
    }

    /// The mean cross-entropy of `targets` `[B, T]` over the positions where `mask` `[B, T]`
    /// (f32, 0 or 1) is 1: the completion-only loss.
    pub fn masked_loss(
        &self,
        inputs: &Tensor,
        targets: &Tensor,
        mask: &Tensor,
        rng: Option<&mut ChaCha8Rng>,
    ) -> Result<Tensor, PolicyError> {
        let losses = self.token_losses(inputs, targets, rng)?;
        masked_mean(&losses, mask).map_err(nn)
    }

    /// Token ids of a prompt, with the start token: refuses one that leaves no room in the
    /// context for an answer.
    pub fn prompt_ids(&self, prompt: &str) -> Result<Vec<u32>, PolicyError> {
        let mut ids = if self.tokenizer.add_bos() {
            vec![self.tokenizer.bos()]
        } else {
            vec![]
        };
        ids.extend(self.tokenizer.encode(prompt)?);
        if ids.is_empty() {
            return Err(PolicyError::Config(
                "the prompt is empty and this model adds no start token: nothing to continue"
                    .into(),
            ));
        }
        let block = self.config.transformer.block_size;
        if ids.len() >= block {
            return Err(PolicyError::Config(format!(
                "the prompt is {} tokens, and the model's context is {block}: no room to answer",
                ids.len()
            )));
        }
        Ok(ids)
    }

    /// Continues `prompt` token by token with the KV cache. Runs on one of rayon's workers
    /// (`dreamgym_nn::on_workers`): the prompt's forward pass shares its ops with the other
    /// workers directly (prefill of 128 tokens 274-322 -> 400 tokens/s for SmolLM2 on 2 cores).
    pub fn generate(
        &self,
        prompt: &str,
        sampling: &Sampling,
        rng: &mut ChaCha8Rng,
    ) -> Result<Generation, PolicyError> {
        dreamgym_nn::on_workers(|| self.generate_here(prompt, sampling, rng))
    }

    /// [`Self::generate`] on the calling thread.
    fn generate_here(
        &self,
        prompt: &str,
        sampling: &Sampling,
        rng: &mut ChaCha8Rng,
    ) -> Result<Generation, PolicyError> {
        let temperature_ok = sampling.temperature.is_finite() && sampling.temperature >= 0.0;
        let top_p_ok = sampling.top_p > 0.0 && sampling.top_p <= 1.0;
        if !(temperature_ok && top_p_ok) {
            return Err(PolicyError::Config(format!(
                "temperature must be finite and >= 0 and top_p in (0, 1], got {} and {}",
                sampling.temperature, sampling.top_p
            )));
        }
        let ids = self.prompt_ids(prompt)?;
        let block = self.config.transformer.block_size;
        let mut cache = KvCache::new();
        let input = Tensor::new(ids.as_slice(), &self.device)
            .and_then(|t| t.unsqueeze(0))
            .map_err(nn)?;
        let mut logits = self.last_logits(&input, &mut cache)?;
        let mut out: Vec<u32> = Vec::new();
        let mut text = String::new();
        let mut len = ids.len();
        let stop = loop {
            if out.len() >= sampling.max_new_tokens {
                break Stop::Budget;
            }
            if len >= block {
                break Stop::Context;
            }
            if sampling.constrained {
                self.constrain(&mut logits, &text);
                if logits.iter().all(|l| *l == f32::NEG_INFINITY) {
                    break Stop::Stuck;
                }
            }
            let next = pick(&logits, sampling, rng);
            out.push(next);
            if next == self.tokenizer.eos() {
                break Stop::End;
            }
            text.push_str(self.tokenizer.piece(next));
            len += 1;
            let input = Tensor::new(&[[next]], &self.device).map_err(nn)?;
            logits = self.last_logits(&input, &mut cache)?;
        };
        let body: Vec<u32> = out
            .iter()
            .copied()
            .filter(|&t| t != self.tokenizer.eos())
            .collect();
        let mut text = self.tokenizer.decode(&body)?;
        if sampling.constrained && stop != Stop::End {
            // Cut off by the budget or the context in the middle of a command: keep the
            // whole commands before it, so that constrained decoding still gives a program.
            text = complete_commands(&text);
        }
        Ok(Generation {
            text,
            tokens: out.len(),
            ids: out,
            stop,
        })
    }

    fn last_logits(&self, input: &Tensor, cache: &mut KvCache) -> Result<Vec<f32>, PolicyError> {
        let logits = self.forward(input, Some(cache), None)?;
        let t = logits.dim(1).map_err(nn)?;
        logits
            .narrow(1, t - 1, 1)
            .and_then(|l| l.flatten_all())
            .and_then(|l| l.to_dtype(DType::F32))
            .and_then(|l| l.to_vec1::<f32>())
            .map_err(nn)
    }

    /// Masks every token that cannot continue `text` into a valid program; the end token
    /// only where `text` is a whole program. A token whose first character cannot continue
    /// `text` is masked without parsing it whole (what extends a program extends it one
    /// character at a time): each first character is tried once, which spares most of a
    /// 49k-token vocabulary's parses.
    fn constrain(&self, logits: &mut [f32], text: &str) {
        let complete = is_complete_program(text);
        let mut candidate = String::with_capacity(text.len() + 16);
        let mut first_ok: [Option<bool>; 128] = [None; 128];
        for (id, l) in logits.iter_mut().enumerate() {
            let id = id as u32;
            let allowed = if id == self.tokenizer.eos() {
                complete
            } else if id == self.tokenizer.bos() {
                false
            } else {
                let piece = self.tokenizer.piece(id);
                match piece.as_bytes().first() {
                    Some(&c) if c.is_ascii() && piece.is_ascii() => {
                        let ok = *first_ok[c as usize].get_or_insert_with(|| {
                            candidate.clear();
                            candidate.push_str(text);
                            candidate.push(c as char);
                            is_viable_prefix(&candidate)
                        });
                        ok && (piece.len() == 1 || {
                            candidate.clear();
                            candidate.push_str(text);
                            candidate.push_str(piece);
                            is_viable_prefix(&candidate)
                        })
                    }
                    _ => false,
                }
            };
            if !allowed {
                *l = f32::NEG_INFINITY;
            }
        }
    }

    /// Saves weights (and the optimiser's moments, when given), the config, and the
    /// tokenizer beside them as `<stem>.tokenizer.json`. A model loaded from a pretrained
    /// base saves only what fine-tuning changes (its adapters, or every weight without
    /// them) and where the base is: the base's own file is not copied.
    pub fn save(
        &self,
        stem: &Path,
        optimizer: Option<&dreamgym_nn::Adam>,
        state: serde_json::Value,
    ) -> Result<(), PolicyError> {
        if let Some(base) = &self.base {
            let config = FinetuneConfig {
                base: base.clone(),
                model: self.config.clone(),
                base_fingerprint: base_fingerprint(base)?,
                lora: self.lora().cloned(),
            };
            let params = match &self.lora {
                Some((_, adapters)) => adapters,
                None => &self.varmap,
            };
            dreamgym_nn::save_checkpoint(
                stem,
                FINETUNE_CHECKPOINT_KIND,
                &config,
                params,
                optimizer,
                state,
            )?;
            return Ok(());
        }
        let json = self.tokenizer.to_json()?;
        dreamgym_base::write_atomic(&tokenizer_path(stem), json.as_bytes())
            .map_err(|e| PolicyError::Load(e.to_string()))?;
        dreamgym_nn::save_checkpoint(
            stem,
            LM_CHECKPOINT_KIND,
            &self.config,
            &self.varmap,
            optimizer,
            state,
        )?;
        Ok(())
    }

    /// Loads a model saved by [`save`](Self::save): one trained here, or a fine-tuned
    /// pretrained model (its base is read from where it was when training ran).
    pub fn load(stem: &Path, device: &Device) -> Result<Self, PolicyError> {
        if dreamgym_nn::checkpoint_kind(stem)? == FINETUNE_CHECKPOINT_KIND {
            let (config, _): (FinetuneConfig, serde_json::Value) =
                dreamgym_nn::read_checkpoint_meta(stem, FINETUNE_CHECKPOINT_KIND)?;
            return Self::load_finetuned(stem, &config, device);
        }
        let (config, _): (GptConfig, serde_json::Value) =
            dreamgym_nn::read_checkpoint_meta(stem, LM_CHECKPOINT_KIND)?;
        let tokenizer = TextTokenizer::load(&tokenizer_path(stem))?;
        let model = Self::with_config(config, tokenizer, device, None)?;
        dreamgym_nn::load_weights(stem, &model.varmap)?;
        Ok(model)
    }

    fn load_finetuned(
        stem: &Path,
        config: &FinetuneConfig,
        device: &Device,
    ) -> Result<Self, PolicyError> {
        if !config.base.exists() {
            return Err(PolicyError::Load(format!(
                "{} was fine-tuned from {}, which is not there any more: put the base model \
                 back at that path (SmolLM2's GGUF comes back with scripts/fetch-smollm2.sh)",
                stem.display(),
                config.base.display()
            )));
        }
        let mut model = load_pretrained(&config.base, device)?;
        let changed = !config.base_fingerprint.is_empty()
            && base_fingerprint(&config.base)? != config.base_fingerprint;
        if changed || model.config != config.model {
            return Err(PolicyError::Load(format!(
                "{} was fine-tuned from another model than the one now at {}",
                stem.display(),
                config.base.display()
            )));
        }
        match &config.lora {
            Some(lora) => {
                model.add_lora(lora, 0)?;
                if let Some((_, adapters)) = &model.lora {
                    dreamgym_nn::load_weights(stem, adapters)?;
                }
            }
            None => dreamgym_nn::load_weights(stem, &model.varmap)?,
        }
        Ok(model)
    }
}

/// The longest prefix of `text`, ended at a command separator, that is a whole program; the
/// whole text when it is one, and when no prefix is.
fn complete_commands(text: &str) -> String {
    if is_complete_program(text) {
        return text.to_string();
    }
    text.char_indices()
        .filter(|(_, c)| *c == ';' || *c == '\n')
        .map(|(i, _)| &text[..i])
        .rev()
        .find(|prefix| is_complete_program(prefix))
        .unwrap_or(text)
        .trim_end()
        .to_string()
}

/// Picks a token: the most likely at temperature 0, else a draw from the top-p nucleus of
/// the softened distribution. Masked tokens are `-inf`.
fn pick(logits: &[f32], sampling: &Sampling, rng: &mut ChaCha8Rng) -> u32 {
    let argmax = logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i as u32);
    if sampling.temperature == 0.0 {
        return argmax;
    }
    let top = logits[argmax as usize];
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_finite())
        .map(|(i, l)| (i as u32, (((l - top) / sampling.temperature) as f64).exp()))
        .collect();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let total: f64 = probs.iter().map(|p| p.1).sum();
    let mut kept = Vec::new();
    let mut mass = 0.0;
    for (i, p) in probs {
        kept.push((i, p));
        mass += p / total;
        if mass >= sampling.top_p as f64 {
            break;
        }
    }
    let kept_total: f64 = kept.iter().map(|p| p.1).sum();
    let mut u = rng.random::<f64>() * kept_total;
    for (i, p) in &kept {
        if u < *p {
            return *i;
        }
        u -= p;
    }
    kept.last().map_or(argmax, |k| k.0)
}

/// Whether a space holds language observations: text, or a Dict with a `text` key.
pub fn is_text_space(space: &dreamgym_envs::Space) -> bool {
    match space {
        dreamgym_envs::Space::Text(_) => true,
        dreamgym_envs::Space::Dict(d) => {
            matches!(d.spaces.get("text"), Some(dreamgym_envs::Space::Text(_)))
        }
        _ => false,
    }
}

/// The text of a language observation: the observation itself, or its `text` key.
pub fn observation_text(obs: &Value) -> Option<&str> {
    match obs {
        Value::Text(t) => Some(t),
        Value::Dict(d) => d.get("text").and_then(Value::as_text),
        _ => None,
    }
}

/// A language model acting in a language env: each observation becomes a prompt, and the
/// generated text is the action.
pub struct LanguagePolicy {
    model: Arc<LanguageModel>,
    sampling: Sampling,
    name: String,
    rng: ChaCha8Rng,
    /// The last generation, for inspection (reports, the chat command).
    pub last: Option<Generation>,
}

impl LanguagePolicy {
    /// A policy around a loaded model.
    pub fn new(model: Arc<LanguageModel>, sampling: Sampling, name: &str) -> Self {
        Self {
            model,
            sampling,
            name: name.into(),
            rng: ChaCha8Rng::seed_from_u64(0),
            last: None,
        }
    }

    /// The model.
    pub fn model(&self) -> &Arc<LanguageModel> {
        &self.model
    }
}

impl Policy for LanguagePolicy {
    fn describe(&self) -> String {
        format!(
            "language model {}{}",
            self.name,
            if self.sampling.constrained {
                " (constrained)"
            } else {
                ""
            }
        )
    }

    fn reset(&mut self, episode_seed: u64) -> Result<(), PolicyError> {
        self.rng = ChaCha8Rng::seed_from_u64(dreamgym_base::derive_seed(episode_seed, "lm", 0));
        self.last = None;
        Ok(())
    }

    fn act(&mut self, obs: &Value) -> Result<Value, PolicyError> {
        let text = observation_text(obs).ok_or_else(|| {
            PolicyError::Incompatible(format!(
                "a language model reads text observations, got {}",
                obs.describe()
            ))
        })?;
        let prompt = self.model.prompt(text);
        let generation = self
            .model
            .generate(&prompt, &self.sampling, &mut self.rng)?;
        let action = Value::Text(generation.text.clone());
        self.last = Some(generation);
        Ok(action)
    }

    fn fork(&self) -> Box<dyn Policy> {
        Box::new(LanguagePolicy::new(
            self.model.clone(),
            self.sampling,
            &self.name,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn tiny() -> LanguageModel {
        let texts: Vec<String> = (0..50)
            .map(|i| {
                format!("instruction: push the red cube {i}\naction: push red cube left {i} cm")
            })
            .collect();
        let tok = TextTokenizer::train(&texts, 300).unwrap();
        LanguageModel::new(&tiny_size(), tok, &Device::Cpu, 3).unwrap()
    }

    #[test]
    fn the_loss_at_chosen_positions_is_the_masked_loss_with_the_same_gradients() {
        let model = tiny();
        let cpu = Device::Cpu;
        let ids = Tensor::new(&[[1u32, 5, 9, 3, 7], [2, 4, 6, 8, 10]], &cpu).unwrap();
        let targets = Tensor::new(&[[5u32, 9, 3, 7, 11], [4, 6, 8, 10, 12]], &cpu).unwrap();
        let mask = [[0f32, 0., 1., 1., 0.], [0., 1., 1., 1., 1.]];
        let at: Vec<u32> = mask
            .iter()
            .flatten()
            .enumerate()
            .filter(|(_, m)| **m > 0.0)
            .map(|(j, _)| j as u32)
            .collect();
        let mask = Tensor::new(&mask, &cpu).unwrap();
        let at = Tensor::new(at.as_slice(), &cpu).unwrap();
        let full = model.masked_loss(&ids, &targets, &mask, None).unwrap();
        let part = model
            .token_losses_at(&ids, &targets, &at, None)
            .unwrap()
            .mean_all()
            .unwrap();
        let (a, b) = (
            full.to_scalar::<f32>().unwrap(),
            part.to_scalar::<f32>().unwrap(),
        );
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        let (ga, gb) = (full.backward().unwrap(), part.backward().unwrap());
        for (name, var) in dreamgym_nn::sorted_vars(model.varmap()) {
            let (x, y) = (ga.get(&var).unwrap(), gb.get(&var).unwrap());
            let diff: f32 = (x - y)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(diff < 1e-5, "{name}: {diff}");
        }
    }

    #[test]
    fn a_program_cut_off_mid_command_keeps_its_whole_commands() {
        assert_eq!(
            complete_commands("push red cube left 3 cm; push blue ball to (1"),
            "push red cube left 3 cm"
        );
        assert_eq!(
            complete_commands("move to (1, 2); move to (3, 4)\npush"),
            "move to (1, 2); move to (3, 4)"
        );
        assert_eq!(
            complete_commands("push red cube left 3 cm"),
            "push red cube left 3 cm"
        );
        assert_eq!(
            complete_commands("push red"),
            "push red",
            "nothing whole: unchanged"
        );
    }

    #[test]
    fn constrained_decoding_only_writes_valid_programs() {
        let model = tiny();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for seed in 0..6 {
            let sampling = Sampling {
                temperature: 1.0 + seed as f32,
                top_p: 1.0,
                max_new_tokens: 40,
                constrained: true,
            };
            let g = model
                .generate("instruction: x\naction: ", &sampling, &mut rng)
                .unwrap();
            // An untrained model writes noise, but only noise the grammar allows.
            assert!(is_viable_prefix(&g.text), "{g:?}");
            if g.stop == Stop::End {
                assert!(is_complete_program(&g.text), "{g:?}");
            }
        }
    }

    #[test]
    fn generation_stops_at_its_budget_and_refuses_long_prompts() {
        let model = tiny();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let sampling = Sampling {
            max_new_tokens: 5,
            temperature: 1.0,
            ..Sampling::default()
        };
        let g = model.generate("a", &sampling, &mut rng).unwrap();
        assert!(g.tokens <= 5 && (g.stop == Stop::Budget || g.stop == Stop::End));
        let long = "word ".repeat(100);
        let e = model.generate(&long, &sampling, &mut rng).unwrap_err();
        assert!(e.to_string().contains("no room to answer"), "{e}");
        let bad = Sampling {
            temperature: f32::NAN,
            ..Sampling::default()
        };
        assert!(model.generate("a", &bad, &mut rng).is_err());
    }

    #[test]
    fn the_kv_cache_matches_a_full_forward_pass() {
        let model = tiny();
        let ids: Vec<u32> = model.tokenizer().encode("push red cube left 3 cm").unwrap();
        let full = model
            .forward(
                &Tensor::new(ids.as_slice(), &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap(),
                None,
                None,
            )
            .unwrap();
        let mut cache = KvCache::new();
        for (t, id) in ids.iter().enumerate() {
            let step = model
                .forward(
                    &Tensor::new(&[[*id]], &Device::Cpu).unwrap(),
                    Some(&mut cache),
                    None,
                )
                .unwrap();
            let a = step.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = full
                .narrow(1, t, 1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let d = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            assert!(d < 1e-4, "position {t}: {d}");
        }
    }

    #[test]
    fn the_masked_loss_counts_only_masked_positions_and_saves_round_trip() {
        let model = tiny();
        let ids = Tensor::new(&[[1u32, 5, 9, 12]], &Device::Cpu).unwrap();
        let targets = Tensor::new(&[[5u32, 9, 12, 1]], &Device::Cpu).unwrap();
        let logits = model.forward(&ids, None, None).unwrap();
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
        let lp = |t: usize, id: usize| -> f32 {
            logp.get(0)
                .unwrap()
                .get(t)
                .unwrap()
                .get(id)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let mask = Tensor::new(&[[0f32, 0.0, 1.0, 1.0]], &Device::Cpu).unwrap();
        let loss = model
            .masked_loss(&ids, &targets, &mask, None)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let expect = -(lp(2, 12) + lp(3, 1)) / 2.0;
        assert!((loss - expect).abs() < 1e-5, "{loss} vs {expect}");
        // Every parameter learns from the completion tokens.
        let l = model.masked_loss(&ids, &targets, &mask, None).unwrap();
        let grads = l.backward().unwrap();
        for (name, var) in dreamgym_nn::sorted_vars(model.varmap()) {
            let g: &Var = &var;
            let grad = grads
                .get(g.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient"));
            let n = grad
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(n > 0.0 && n.is_finite(), "{name}: {n}");
        }
        let dir = tempfile::tempdir().unwrap();
        let stem = dir.path().join("lm");
        model.save(&stem, None, serde_json::json!({})).unwrap();
        let back = LanguageModel::load(&stem, &Device::Cpu).unwrap();
        let again = back.forward(&ids, None, None).unwrap();
        let d = (again - &logits)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0);
        // A tokenizer from another model is refused.
        let other = TextTokenizer::train(&["completely different text here"; 20], 270).unwrap();
        std::fs::write(tokenizer_path(&stem), other.to_json().unwrap()).unwrap();
        let e = LanguageModel::load(&stem, &Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("do not belong together"), "{e}");
    }
}

#[cfg(test)]
mod learning {
    use super::*;
    use dreamgym_nn::{Adam, AdamConfig};

    /// The model learns to copy a word from its prompt through the masked loss: the smallest
    /// thing SFT needs (a broken mask, attention or rotary table fails it).
    #[test]
    fn a_tiny_model_learns_to_copy_a_word_from_the_prompt() {
        let words = ["red", "green", "blue", "yellow", "purple", "orange"];
        let example = |i: usize, j: usize| {
            (
                format!(
                    "noise {j} colour: {} more noise {}\naction: ",
                    words[i],
                    j * 7
                ),
                format!("push {}", words[i]),
            )
        };
        let texts: Vec<String> = (0..60)
            .map(|k| {
                let (p, c) = example(k % 6, k);
                format!("{p}{c}")
            })
            .collect();
        let tok = TextTokenizer::train(&texts, 300).unwrap();
        let size = LlamaSize {
            n_layer: 2,
            n_embd: 32,
            n_head: 4,
            n_kv_head: 2,
            mlp_hidden: 64,
            block_size: 64,
            dropout: 0.0,
        };
        let model = LanguageModel::new(&size, tok, &Device::Cpu, 1).unwrap();
        let mut opt = Adam::new(
            dreamgym_nn::sorted_vars(model.varmap()),
            AdamConfig {
                lr: 3e-3,
                ..Default::default()
            },
        )
        .unwrap();
        let t = model.tokenizer().clone();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let len = 40;
        for _ in 0..300 {
            let (mut inputs, mut targets, mut masks) = (vec![], vec![], vec![]);
            for _ in 0..8 {
                let (p, c) = example(rng.random_range(0..6), rng.random_range(0..50));
                let mut ids = vec![t.bos()];
                ids.extend(t.encode(&p).unwrap());
                let first = ids.len();
                ids.extend(t.encode(&c).unwrap());
                ids.push(t.eos());
                let mut x = ids[..ids.len() - 1].to_vec();
                let mut y = ids[1..].to_vec();
                let mut m: Vec<f32> = (1..ids.len()).map(|j| (j >= first) as u8 as f32).collect();
                x.resize(len, t.eos());
                y.resize(len, t.eos());
                m.resize(len, 0.0);
                inputs.extend(x);
                targets.extend(y);
                masks.extend(m);
            }
            let x = Tensor::from_vec(inputs, (8, len), &Device::Cpu).unwrap();
            let y = Tensor::from_vec(targets, (8, len), &Device::Cpu).unwrap();
            let m = Tensor::from_vec(masks, (8, len), &Device::Cpu).unwrap();
            let loss = model.masked_loss(&x, &y, &m, None).unwrap();
            opt.step(loss.backward().unwrap()).unwrap();
        }
        let mut right = 0;
        for i in 0..6 {
            let (p, c) = example(i, 99);
            let g = model.generate(&p, &Sampling::default(), &mut rng).unwrap();
            right += (g.text == c) as usize;
        }
        assert_eq!(right, 6, "copied {right} of 6");
    }
}
