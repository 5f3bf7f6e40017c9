//! Pre-trained encoders without a task head: sentence embeddings (`kd embed`), and the teacher
//! and student of general distillation, with its masked-LM head when the checkpoint has one.

use crate::resolve::ModelFiles;
use crate::task_model::save_model_dir;
use anyhow::{Context, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use kd_bert::{
    AttentionMaps, BertConfig, BertModel, BertOutput, FrozenWeights, MaskedLmHead, Mode, Params,
};
use kd_data::{Example, TextTokenizer, collate, encode_examples};
use std::path::{Path, PathBuf};

/// A tensor every masked-LM head has, by kd's name (BERT's; each family has its own).
const MLM_HEAD_TENSOR: &str = "cls.predictions.transform.dense.weight";

/// How [`Backbone::embed`] turns token states into one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over real tokens, as sentence-transformers does.
    Mean,
    /// The `[CLS]` token's final state.
    Cls,
}

/// An encoder and, optionally, its masked-LM head.
pub struct Backbone {
    pub config: BertConfig,
    pub params: Params,
    pub model: BertModel,
    pub mlm_head: Option<MaskedLmHead>,
    pub tokenizer: TextTokenizer,
    /// Where the tokenizer files are, to copy them beside a saved model.
    pub tokenizer_dir: PathBuf,
}

impl Backbone {
    /// Loads an encoder checkpoint (names with or without the `bert.` prefix; a pooler or a
    /// task head in the file is left unused), with its masked-LM head when the file has one.
    pub fn load(files: &ModelFiles, max_len: usize, device: &Device) -> Result<Self> {
        let config = BertConfig::from_file(&files.config)?;
        let weights = unsafe { MmapedSafetensors::new(&files.weights) }
            .with_context(|| format!("cannot read weights file {}", files.weights.display()))?;
        let has_head = config
            .family()
            .checkpoint_names(MLM_HEAD_TENSOR)
            .iter()
            .any(|name| weights.get(name).is_ok());
        let backbone = Self::build(config, &files.dir, has_head, max_len, device)?;
        backbone.params.load(&files.weights, |_| false)?;
        Ok(backbone)
    }

    /// Loads a backbone to answer with, never to train (see [`BertModel::freeze`]).
    pub fn load_for_inference(files: &ModelFiles, max_len: usize, device: &Device) -> Result<Self> {
        let mut backbone = Self::load(files, max_len, device)?;
        backbone.model.freeze(FrozenWeights::F32)?;
        Ok(backbone)
    }

    /// The encoder `model` names (a directory or a hub id, [`ModelFiles::resolve`]), loaded
    /// to answer with ([`Self::load_for_inference`]).
    pub fn open(model: &str, max_len: usize, device: &Device) -> Result<Self> {
        Self::load_for_inference(&ModelFiles::resolve(model)?, max_len, device)
    }

    /// A backbone for `config`, with a masked-LM head if asked, BERT-initialised from `seed`,
    /// with the tokenizer of `tokenizer_dir`.
    pub fn initialised(
        config: BertConfig,
        tokenizer_dir: &Path,
        mlm_head: bool,
        seed: u64,
        max_len: usize,
        device: &Device,
    ) -> Result<Self> {
        let backbone = Self::build(config, tokenizer_dir, mlm_head, max_len, device)?;
        backbone
            .params
            .init_bert(backbone.config.initializer_range, seed)?;
        Ok(backbone)
    }

    fn build(
        mut config: BertConfig,
        tokenizer_dir: &Path,
        mlm_head: bool,
        max_len: usize,
        device: &Device,
    ) -> Result<Self> {
        let family = config.family();
        let architecture = match mlm_head {
            true => family.masked_lm_architecture().with_context(|| {
                format!(
                    "{} models have no masked-LM head (ELECTRA's discriminator predicts \
                     replaced tokens)",
                    family.model_type()
                )
            })?,
            false => family.base_architecture(),
        };
        config.architectures = Some(vec![architecture]);
        let tokenizer =
            TextTokenizer::from_dir(tokenizer_dir, max_len.min(config.max_sequence_length()))?;
        tokenizer.check_fits(config.vocab_size, tokenizer_dir)?;
        let params = Params::new(device).in_family(family);
        let vb = params.var_builder();
        let model = BertModel::new(&config, vb.pp("bert"), false)?;
        let mlm_head = mlm_head
            .then(|| MaskedLmHead::new(&config, vb.pp("cls").pp("predictions")))
            .transpose()?;
        Ok(Self {
            config,
            params,
            model,
            mlm_head,
            tokenizer,
            tokenizer_dir: tokenizer_dir.to_path_buf(),
        })
    }

    /// The masked-LM logits, `[n, vocab]`, at `positions` (`[n]` u32 indices into the
    /// flattened `[batch * seq]` tokens of `output`).
    pub fn mlm_logits(&self, output: &BertOutput, positions: &Tensor) -> Result<Tensor> {
        let head = self
            .mlm_head
            .as_ref()
            .context("the model has no masked-LM head")?;
        head.forward(
            output.last_hidden_state(),
            positions,
            self.model.word_embeddings(),
        )
    }

    /// Writes `config.json`, `model.safetensors` (HF's `BertModel` layout under `bert.`, or
    /// `BertForMaskedLM`'s with the head) and the tokenizer files into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        save_model_dir(dir, &self.config, &self.params, &self.tokenizer_dir)
    }

    /// One embedding per text, `[n, hidden]`.
    pub fn embed(&self, texts: &[String], pooling: Pooling, normalize: bool) -> Result<Tensor> {
        let examples: Vec<Example> = texts
            .iter()
            .map(|text| Example {
                text: text.clone(),
                pair: None,
                label: kd_data::Label::Class(0),
            })
            .collect();
        let encoded = encode_examples(&self.tokenizer, &examples)?;
        let indices: Vec<usize> = (0..encoded.len()).collect();
        let batch = collate(&encoded, &indices, self.params.device())?;
        let output = self
            .model
            .forward_with(&batch.input, Mode::Inference, AttentionMaps::Skip)?;
        let pooled = match pooling {
            Pooling::Mean => output.mean_pooled(&batch.input.attention_mask)?,
            Pooling::Cls => output.last_hidden_state().narrow(1, 0, 1)?.squeeze(1)?,
        };
        if !normalize {
            return Ok(pooled);
        }
        let norms = pooled
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12, f64::MAX)?;
        Ok(pooled.broadcast_div(&norms)?.to_dtype(DType::F32)?)
    }
}
