//! The BERT encoder of kd: HF `config.json` and safetensors loading (with or without the
//! `bert.` prefix), a forward pass that exposes every intermediate distillation losses need
//! (embedding output, each layer's hidden states, attention scores and probabilities, pooled
//! output), and a sequence-classification head.
//!
//! There is one model definition. [`Mode`] switches between the differentiable training path
//! (composed softmax and layer norm, dropout) and the inference path (candle's fused kernels,
//! which have no backward pass).

mod classifier;
mod config;
mod layers;
mod model;
mod params;

pub use classifier::BertForSequenceClassification;
pub use config::{BertConfig, ProblemType};
pub use layers::{DropoutRng, Mode};
pub use model::{BertInput, BertModel, BertOutput};
pub use params::{LoadReport, Params, write_atomically, write_json_atomically};
