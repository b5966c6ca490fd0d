//! Loading a Llama-family checkpoint in Hugging Face's layout: a folder with `config.json`,
//! `model.safetensors` (or shards listed in `model.safetensors.index.json`) and
//! `tokenizer.json`, as `save_pretrained` writes it. The parameter names are already the
//! core's; f16 and bf16 weights are widened to f32.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use dreamgym_nn::{GptConfig, MlpKind, NormKind, PositionKind, TransformerConfig};
use serde::Deserialize;
use tokenizers::Tokenizer;

use super::{LanguageModel, PromptFormat, SYSTEM_PROMPT, TextTokenizer};
use crate::PolicyError;

/// Longest context the loaded model is given (positions cost memory for the rotary tables).
const MAX_CONTEXT: usize = 2048;

/// A token id or a list of them (`eos_token_id` is either).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

impl OneOrMany {
    fn first(&self) -> Option<u32> {
        match self {
            OneOrMany::One(i) => Some(*i),
            OneOrMany::Many(v) => v.first().copied(),
        }
    }
}

/// The fields of a `LlamaConfig` that shape the model; the rest are ignored.
#[derive(Debug, Clone, Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    rope_theta: f64,
    rope_scaling: Option<serde_json::Value>,
    #[serde(default = "default_context")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    bos_token_id: Option<OneOrMany>,
    eos_token_id: Option<OneOrMany>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_context() -> usize {
    2048
}
fn default_act() -> String {
    "silu".into()
}

/// Loads a Llama-architecture checkpoint folder (`config.json`, safetensors weights,
/// `tokenizer.json`). Refuses what the core cannot run (another architecture, rope scaling,
/// biases, another activation) and a tokenizer that does not fit the model, with a message
/// saying which file and what it holds.
pub fn load_hf(dir: &Path, device: &Device) -> Result<LanguageModel, PolicyError> {
    let err = |m: String| PolicyError::Load(format!("{}: {m}", dir.display()));
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name)).map_err(|e| err(format!("cannot read {name}: {e}")))
    };
    let cfg: HfConfig = serde_json::from_str(&read("config.json")?)
        .map_err(|e| err(format!("config.json is not a Llama config: {e}")))?;
    if let Some(t) = &cfg.model_type
        && t != "llama"
    {
        return Err(err(format!(
            "config.json describes a `{t}` model; only the Llama architecture loads here"
        )));
    }
    let refuse = |what: &str| {
        err(format!(
            "config.json asks for {what}, which the core does not run"
        ))
    };
    if cfg.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(refuse("rope scaling"));
    }
    if cfg.attention_bias || cfg.mlp_bias {
        return Err(refuse("biases in the projections"));
    }
    if cfg.hidden_act != "silu" {
        return Err(refuse(&format!("the `{}` activation", cfg.hidden_act)));
    }
    let heads = cfg.num_attention_heads;
    if heads == 0 || !cfg.hidden_size.is_multiple_of(heads) {
        return Err(err(format!(
            "hidden_size {} does not split into {heads} heads",
            cfg.hidden_size
        )));
    }
    if cfg.head_dim.is_some_and(|d| d != cfg.hidden_size / heads) {
        return Err(refuse("a head width other than hidden_size / heads"));
    }

    let inner = Tokenizer::from_file(dir.join("tokenizer.json"))
        .map_err(|e| err(format!("tokenizer.json does not load: {e}")))?;
    let token_count = inner.get_vocab_size(true);
    if token_count > cfg.vocab_size {
        return Err(err(format!(
            "tokenizer.json has {token_count} tokens but the model's vocabulary is {}: they do \
             not belong together",
            cfg.vocab_size
        )));
    }
    let eos = cfg
        .eos_token_id
        .as_ref()
        .and_then(OneOrMany::first)
        .ok_or_else(|| err("config.json has no eos_token_id".into()))?;
    let bos = cfg
        .bos_token_id
        .as_ref()
        .and_then(OneOrMany::first)
        .unwrap_or(eos);
    // The tokenizer's own post-processor says whether a prompt starts with the start token.
    let add_bos = inner
        .encode("a", true)
        .ok()
        .is_some_and(|e| e.get_ids().first() == Some(&bos));
    let chat = std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .is_some_and(|t| t.contains("<|im_start|>"));
    let mut tokenizer = TextTokenizer::from_parts(inner, bos, eos, add_bos)?;
    tokenizer.pad_vocab(cfg.vocab_size);

    let config = GptConfig {
        transformer: TransformerConfig {
            n_layer: cfg.num_hidden_layers,
            n_embd: cfg.hidden_size,
            n_head: heads,
            n_kv_head: cfg.num_key_value_heads.unwrap_or(heads),
            block_size: cfg.max_position_embeddings.min(MAX_CONTEXT),
            norm: NormKind::RmsNorm,
            norm_eps: cfg.rms_norm_eps,
            positions: PositionKind::Rotary,
            rope_theta: cfg.rope_theta,
            mlp: MlpKind::SwiGlu,
            mlp_hidden: cfg.intermediate_size,
            bias: false,
            dropout: 0.0,
            init_std: 0.02,
        },
        vocab_size: cfg.vocab_size,
        tie_embeddings: cfg.tie_word_embeddings,
    };
    config
        .transformer
        .validate()
        .map_err(|e| err(format!("config.json: {e}")))?;
    let mut model = LanguageModel::with_config(config, tokenizer, device, None)?;
    if chat {
        model.format = PromptFormat::Chat(SYSTEM_PROMPT.into());
    }

    let weights = read_weights(dir, device).map_err(err)?;
    let names: Vec<String> = dreamgym_nn::sorted_vars(model.varmap())
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    for name in &names {
        let w = weights
            .get(name)
            .ok_or_else(|| err(format!("the weights have no `{name}`")))?;
        model.set_parameter(name, w)?;
    }
    Ok(model)
}

/// Every tensor of `model.safetensors`, or of the shards `model.safetensors.index.json` lists.
fn read_weights(dir: &Path, device: &Device) -> Result<HashMap<String, Tensor>, String> {
    let single = dir.join("model.safetensors");
    let files: Vec<std::path::PathBuf> = if single.exists() {
        vec![single]
    } else {
        let index = dir.join("model.safetensors.index.json");
        let text = std::fs::read_to_string(&index).map_err(|e| {
            format!("no model.safetensors, and model.safetensors.index.json does not read: {e}")
        })?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("model.safetensors.index.json is not JSON: {e}"))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or("model.safetensors.index.json has no weight_map")?;
        let mut shards: Vec<String> = map
            .values()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        shards.sort();
        shards.dedup();
        for s in &shards {
            if s.contains('/') || s.contains('\\') || s.starts_with('.') {
                return Err(format!("the index names a shard outside the folder: `{s}`"));
            }
        }
        shards.into_iter().map(|s| dir.join(s)).collect()
    };
    let mut out = HashMap::new();
    for f in files {
        let tensors = candle_core::safetensors::load(&f, device)
            .map_err(|e| format!("{} is not a readable safetensors file: {e}", f.display()))?;
        out.extend(tensors);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(dir: &Path, tie: bool) -> LanguageModel {
        let texts: Vec<String> = (0..40)
            .map(|i| format!("push the red cube {i} cm to the left; done"))
            .collect();
        let tok = TextTokenizer::train(&texts, 300).unwrap();
        let size = crate::language::tiny_size();
        let model = LanguageModel::new(&size, tok.clone(), &Device::Cpu, 3).unwrap();
        let mut tensors: HashMap<String, Tensor> = dreamgym_nn::sorted_vars(model.varmap())
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect();
        if !tie {
            let e = tensors["model.embed_tokens.weight"].clone();
            tensors.insert("lm_head.weight".into(), e);
        }
        candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
        std::fs::write(dir.join("tokenizer.json"), tok.to_json().unwrap()).unwrap();
        let config = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": 16,
            "intermediate_size": 24,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": tok.vocab_size() + 4,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "max_position_embeddings": 64,
            "tie_word_embeddings": tie,
            "hidden_act": "silu",
            "bos_token_id": tok.bos(),
            "eos_token_id": [tok.eos()],
            "torch_dtype": "float32"
        });
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        model
    }

    /// Pads the embedding table in the folder's weights to config.json's vocabulary.
    fn pad_vocab(dir: &Path) {
        let path = dir.join("model.safetensors");
        let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        let e = &tensors["model.embed_tokens.weight"];
        let extra = Tensor::zeros((4, 16), e.dtype(), &Device::Cpu).unwrap();
        let padded = Tensor::cat(&[e, &extra], 0).unwrap();
        tensors.insert("model.embed_tokens.weight".into(), padded);
        candle_core::safetensors::save(&tensors, &path).unwrap();
    }

    fn logits(model: &LanguageModel) -> Vec<f32> {
        let ids = Tensor::new(&[[3u32, 40, 7, 9]], &Device::Cpu).unwrap();
        let l = model.forward(&ids, None, None).unwrap();
        l.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn fine_tuning_a_pretrained_model_saves_only_what_changed_and_loads_back_on_its_base() {
        let base = tempfile::tempdir().unwrap();
        tiny(base.path(), true);
        pad_vocab(base.path());
        let runs = tempfile::tempdir().unwrap();
        // LoRA: only the adapters train and only they are saved.
        let mut model = crate::language::load_pretrained(base.path(), &Device::Cpu).unwrap();
        let original = logits(&model);
        let lora = dreamgym_nn::LoraConfig::default();
        assert_eq!(
            model.add_lora(&lora, 1).unwrap(),
            14,
            "7 projections, 2 blocks"
        );
        let trainable = model.trainable();
        assert_eq!(trainable.len(), 28);
        assert!(trainable.iter().all(|(n, _)| n.contains(".lora_")));
        assert_eq!(logits(&model), original, "B starts at zero");
        for (name, var) in &trainable {
            if name.contains("lora_B") {
                let w = Tensor::randn(0f32, 0.5, var.dims(), &Device::Cpu).unwrap();
                var.set(&w).unwrap();
            }
        }
        let adapted = logits(&model);
        assert_ne!(adapted, original);
        let stem = runs.path().join("lm");
        model.save(&stem, None, serde_json::json!({})).unwrap();
        let saved =
            candle_core::safetensors::load(stem.with_extension("safetensors"), &Device::Cpu)
                .unwrap();
        assert_eq!(saved.len(), 28, "the adapters alone");
        let loaded = LanguageModel::load(&stem, &Device::Cpu).unwrap();
        assert_eq!(loaded.lora(), Some(&lora));
        assert_eq!(logits(&loaded), adapted);
        // Every weight (no LoRA): the whole model is saved, and loads back the same.
        let full = crate::language::load_pretrained(base.path(), &Device::Cpu).unwrap();
        let (name, var) = &full.trainable()[0];
        assert!(!name.contains("lora"));
        var.set(&(var.as_tensor() * 1.5).unwrap()).unwrap();
        let changed = logits(&full);
        let stem2 = runs.path().join("full");
        full.save(&stem2, None, serde_json::json!({})).unwrap();
        assert_eq!(
            logits(&LanguageModel::load(&stem2, &Device::Cpu).unwrap()),
            changed
        );
        // Without its base, the adapter says where the base was.
        std::fs::remove_dir_all(base.path()).unwrap();
        let e = LanguageModel::load(&stem, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not there any more"), "{e}");
    }

    #[test]
    fn a_saved_pretrained_folder_loads_with_its_tokenizer_and_padded_vocabulary() {
        let dir = tempfile::tempdir().unwrap();
        // The vocabulary in config.json is 4 larger than the tokenizer's (as HF pads it):
        // the embedding table in the file must be that size too.
        let model = tiny(dir.path(), true);
        pad_vocab(dir.path());
        let loaded = load_hf(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(loaded.config().vocab_size, model.config().vocab_size + 4);
        let ids = Tensor::new(&[[3u32, 40, 7, 9]], &Device::Cpu).unwrap();
        let a = model.forward(&ids, None, None).unwrap();
        let b = loaded.forward(&ids, None, None).unwrap();
        let (a, b) = (
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.narrow(2, 0, model.config().vocab_size)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
        );
        assert_eq!(a, b);
        assert_eq!(
            loaded.tokenizer().encode("push the red cube").unwrap(),
            model.tokenizer().encode("push the red cube").unwrap()
        );
    }

    #[test]
    fn an_untied_head_loads_and_bad_folders_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        tiny(dir.path(), false);
        // The config says vocab + 4 but the file's tables are the tokenizer's size.
        let e = load_hf(dir.path(), &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("in the model and"), "{e}");

        let fix = |key: &str, value: serde_json::Value| {
            let path = dir.path().join("config.json");
            let mut c: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            c[key] = value;
            std::fs::write(&path, c.to_string()).unwrap();
        };
        let vocab = {
            let t = TextTokenizer::load(&dir.path().join("tokenizer.json")).unwrap();
            t.vocab_size()
        };
        fix("vocab_size", serde_json::json!(vocab));
        let m = load_hf(dir.path(), &Device::Cpu).unwrap();
        assert!(!m.config().tie_embeddings);

        fix("vocab_size", serde_json::json!(vocab - 1));
        let e = load_hf(dir.path(), &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("do not belong together"), "{e}");
        fix("vocab_size", serde_json::json!(vocab));

        fix("model_type", serde_json::json!("gpt2"));
        let e = load_hf(dir.path(), &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("`gpt2`"), "{e}");
        fix("model_type", serde_json::json!("llama"));

        fix(
            "rope_scaling",
            serde_json::json!({"type": "linear", "factor": 2.0}),
        );
        let e = load_hf(dir.path(), &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("rope scaling"), "{e}");
        fix("rope_scaling", serde_json::Value::Null);

        std::fs::write(
            dir.path().join("model.safetensors"),
            b"not a safetensors file",
        )
        .unwrap();
        let e = load_hf(dir.path(), &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("not a readable safetensors file"), "{e}");

        std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
        let e = load_hf(dir.path(), &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("no model.safetensors"), "{e}");

        std::fs::write(dir.path().join("tokenizer.json"), b"{").unwrap();
        let e = load_hf(dir.path(), &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("tokenizer.json does not load"), "{e}");

        std::fs::write(dir.path().join("config.json"), b"{}").unwrap();
        let e = load_hf(dir.path(), &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("not a Llama config"), "{e}");
    }
}
