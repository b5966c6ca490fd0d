//! What every dreamgym model needs, on candle.
//!
//! - [`device`] picks a compute device by name; [`NnError`] is the one error type.
//! - [`ParamInit`] creates named parameters from a seed, so a seed fixes every weight.
//! - Layers: [`Linear`], NHWC [`conv2d`] / [`conv_transpose2d`] (im2col + one gemm),
//!   [`Embedding`], [`Lstm`] (with a fused sequence op on the CPU), [`LayerNorm`], [`RmsNorm`],
//!   [`softmax`] and [`causal_attention`]. Every one is built from ops that carry gradients:
//!   candle's fused `layer_norm`, `rms_norm`, `softmax_last_dim` and `sdpa` have no backward
//!   pass, so gradients would silently stop there.
//! - Fused CPU ops ([`bias_relu`], [`sigmoid_sse`], the LSTM sequence; for the Llama core
//!   [`rms_norm`], [`rotary`], [`swiglu`], [`causal_softmax`], [`cross_entropy`] and the
//!   few-row [`linear`] of a generation step, multi-threaded with results independent of the
//!   thread count), each with a composition of candle ops as the fallback on other devices.
//! - [`Adam`] (and AdamW through `weight_decay`) with clipping by value or global norm; its
//!   moments are saved in checkpoints so a resumed run takes the same steps.
//! - Checkpoints ([`save_checkpoint`], [`load_weights`], [`load_optimizer`]): safetensors with
//!   sorted names, a JSON sidecar with the config and CRC-32s, written atomically.
//! - Checks for tests: [`check_gradients_reach_every_parameter`] and
//!   [`finite_difference_check`].
//!
//! Parameter names and layouts follow PyTorch, so checkpoints load there unchanged.

mod attention;
mod check;
mod checkpoint;
mod conv;
mod device;
mod embedding;
mod error;
mod fused;
mod init;
mod linear;
mod llama_ops;
mod lstm;
mod norm;
mod optim;
pub mod par;
pub use par::on_workers;
#[cfg(test)]
mod test_util;
mod transformer;

pub use attention::{causal_attention, causal_mask, softmax};
pub use check::{FdReport, check_gradients_reach_every_parameter, finite_difference_check};
pub use checkpoint::{
    checkpoint_kind, checkpoint_paths, load_optimizer, load_weights, param_count,
    read_checkpoint_meta, safetensors_bytes, save_checkpoint, sorted_vars, tensors_bytes,
    weights_crc32,
};
pub use conv::{
    conv_out_size, conv_transpose_out_size, conv_transpose2d, conv_transpose2d_act, conv2d,
    conv2d_act,
};
pub use device::device;
pub use embedding::Embedding;
pub use error::NnError;
pub use fused::{
    add_bias, bias_relu, contiguous_f32, fast_exp, fast_sigmoid, gelu_tanh, mul_constant,
    mul_weight, sigmoid_sse, sum_rows,
};
pub use init::{ParamInit, standard_normal};
pub use linear::Linear;
pub use llama_ops::{causal_softmax, cross_entropy, linear, rms_norm, rotary, swiglu};
pub use lstm::{Lstm, lstm_cell};
pub use norm::{LayerNorm, RmsNorm};
pub use optim::{Adam, AdamConfig};
pub use transformer::{
    Dropout, Gpt, GptConfig, KvCache, LORA_TARGETS, LoraConfig, LoraPair, MlpKind, NormKind,
    PositionKind, Proj, Transformer, TransformerConfig,
};

/// The names most models use.
pub mod prelude {
    pub use crate::{
        Adam, AdamConfig, Embedding, LayerNorm, Linear, Lstm, NnError, ParamInit, RmsNorm,
        causal_attention, device, softmax,
    };
}
