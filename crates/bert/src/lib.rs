//! The BERT encoder of kd: HF `config.json` and safetensors loading (with or without the
//! `bert.` prefix), a forward pass that exposes every intermediate distillation losses need
//! (embedding output, each layer's hidden states, attention scores and probabilities, pooled
//! output), a sequence-classification head, and attention heads and feed-forward neurons
//! masked ([`Masks`]; HF's `head_mask`) or pruned away (`pruned_heads`, a smaller
//! `intermediate_size`).
//!
//! There is one model definition, on kd's fused CPU kernels ([`ops`]: softmax, layer norm and
//! GELU, each with a hand-written backward pass) for f32 on the CPU and on candle's tensor ops
//! elsewhere or when forced ([`kernels`] chooses). [`Mode`] switches dropout on for training and
//! cuts the graph after each layer for inference; [`Precision`] runs its products in bf16 with f32
//! master weights.

mod attention;
mod checked;
mod classifier;
mod config;
pub mod device;
pub mod family;
mod fused_attention;
pub mod int8;
pub mod kernels;
mod layers;
mod masked_lm;
mod math;
mod model;
pub mod ops;
mod params;
mod pool;
pub mod precision;
mod prune;

pub use checked::{CheckedFile, read_checked, write_checked};
pub use classifier::BertForSequenceClassification;
pub use config::{BertConfig, INT8_KEY, ProblemType};
pub use device::DeviceName;
pub use family::Family;
pub use layers::{DropoutRng, FrozenWeights, Linear, Mode};
pub use masked_lm::MaskedLmHead;
pub use math::vectorised;
pub use model::{
    AttentionMaps, AttentionProjections, BertInput, BertModel, BertOutput, LastLayer, Masks,
};
pub use params::{LoadReport, Params, write_atomically, write_json_atomically};
pub use pool::with_busy_workers;
pub use precision::Precision;
pub use prune::{prune_ffn, prune_heads, restore_heads};
