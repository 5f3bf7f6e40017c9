//! Knowledge-distillation losses for BERT students, on the outputs of `kd_bert`'s encoder:
//! prediction-layer losses (soft cross-entropy and KL at a temperature, hard labels, MSE),
//! DistilBERT's cosine loss, TinyBERT's embedding, hidden-state and attention losses, MiniLM's
//! attention KL and value relation, MiniLMv2's attention relations, BERT-PKD's normalised
//! `[CLS]` loss, FSP and NST (MMD) Gram-matrix losses as TextBrewer defines them, and MT-DNN's
//! ensemble of teachers; layer mappings between student and teacher; and [`Objective`], a
//! weighted, scheduled sum of them built from a recipe. Every loss is differentiable with
//! respect to the student (and the objective's projections); the teacher side is a constant.

mod gram;
mod intermediate;
mod mapping;
mod mean;
mod objective;
mod prediction;
mod relation;
mod schedule;
mod score_mse;
#[cfg(test)]
mod testing;

pub use gram::{fsp_loss, mmd_loss};
pub use intermediate::{attention_kl, cosine_loss, pkd_loss};
pub use mapping::LayerMapping;
pub use mean::{GlobalMeans, global_means, masked_mean, mean_count, mse};
pub use objective::{
    ComponentConfig, DistillOutputs, EncoderShape, LossBatch, LossBreakdown, LossKind, Objective,
    ObjectiveConfig,
};
pub use prediction::{
    hard_cross_entropy, kl_divergence, soft_cross_entropy, soft_targets, weighted_average,
};
pub use relation::relation_kl;
pub use schedule::Schedule;
pub use score_mse::attention_score_mse;
