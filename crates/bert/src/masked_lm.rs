//! BERT's masked-LM head, HF's `BertOnlyMLMHead` under `cls.predictions.*`: a dense transform
//! with an activation and a layer norm, then a decoder tied to the word embeddings plus a
//! per-token bias. The other families' heads have the same shape under their own names
//! (`lm_head.*`, DistilBERT's `vocab_*`; see [`crate::family`]).

use crate::config::BertConfig;
use crate::kernels;
use crate::layers::{LayerNorm, Linear};
use crate::model::Activation;
use anyhow::{Result, ensure};
use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};

pub struct MaskedLmHead {
    transform: Linear,
    activation: Activation,
    layer_norm: LayerNorm,
    /// `[vocab]`; HF also names it `cls.predictions.decoder.bias` (the same tensor).
    bias: Tensor,
}

impl MaskedLmHead {
    /// Builds the head under `vb` with HF's names (`vb.pp("cls").pp("predictions")` for
    /// `BertForMaskedLM`). The decoder weight is not a parameter of its own: it is the word
    /// embedding matrix, passed to [`MaskedLmHead::forward`].
    pub fn new(config: &BertConfig, vb: VarBuilder) -> Result<Self> {
        let hidden = config.hidden_size;
        let transform = vb.pp("transform");
        Ok(Self {
            transform: Linear::new(hidden, hidden, transform.pp("dense"))?,
            activation: Activation::from_name(
                config.family().masked_lm_activation(&config.hidden_act),
            )?,
            layer_norm: LayerNorm::new(hidden, config.layer_norm_eps, transform.pp("LayerNorm"))?,
            bias: vb.get_with_hints(config.vocab_size, "bias", Init::Const(0.0))?,
        })
    }

    /// The logits over the vocabulary, `[n, vocab]`, at `positions` (`[n]` u32 indices into the
    /// flattened `[batch * seq]` rows of `hidden`, `[batch, seq, hidden]`). Only the positions
    /// asked for are scored: the vocabulary-wide product is the costliest in the model, and
    /// the other positions carry no masked-LM loss.
    pub fn forward(
        &self,
        hidden: &Tensor,
        positions: &Tensor,
        word_embeddings: &Tensor,
    ) -> Result<Tensor> {
        let (batch, seq, width) = hidden.dims3()?;
        ensure!(
            word_embeddings.dims() == [self.bias.dim(0)?, width],
            "word embeddings of shape {:?} do not match the head ({} tokens x {width})",
            word_embeddings.dims(),
            self.bias.dim(0)?
        );
        let rows = hidden
            .reshape((batch * seq, width))?
            .index_select(positions, 0)?;
        let xs = self.activation.forward(&self.transform.forward(&rows)?)?;
        let xs = self.layer_norm.forward(&xs)?;
        Ok(kernels::dense(&xs, word_embeddings, &self.bias)?)
    }
}
