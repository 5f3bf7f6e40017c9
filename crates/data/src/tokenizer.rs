//! BERT's WordPiece tokenizer, from `tokenizer.json` or, failing that, `vocab.txt`.

use anyhow::{Context, Result, anyhow, bail};
use std::path::Path;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// A model directory's tokenizer files, as the hub and kd's outputs hold them: a tokenizer
/// needs one of the first two.
pub const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// The shortest sequences a tokenizer makes: a token of each sentence of a pair, with its
/// `[CLS]` and two `[SEP]`.
const MIN_LEN: usize = 5;

/// Token ids of one example, with `[CLS]`/`[SEP]` and segment ids, unpadded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
}

pub struct TextTokenizer {
    inner: Tokenizer,
    /// The same tokenizer without truncation, to find where long texts can be split.
    untruncated: Tokenizer,
    max_len: usize,
}

impl TextTokenizer {
    /// Loads the tokenizer of a model directory, truncating to `max_len` tokens (longest
    /// sequence first for pairs, as HF does). Padding is left to the batcher.
    pub fn from_dir(dir: &Path, max_len: usize) -> Result<Self> {
        if max_len < MIN_LEN {
            bail!(
                "max_seq_len {max_len} leaves no room for text: a sentence pair's [CLS] and two \
                 [SEP] take three tokens ({MIN_LEN} at least; 128 by default)"
            );
        }
        let json = dir.join("tokenizer.json");
        let vocab = dir.join("vocab.txt");
        let mut inner = if json.is_file() {
            Tokenizer::from_file(&json)
                .map_err(|e| anyhow!("cannot load tokenizer {}: {e}", json.display()))?
        } else if vocab.is_file() {
            wordpiece_from_vocab(&vocab, lowercase_from_config(dir)?)?
        } else {
            bail!(
                "{} has no tokenizer: expected {} or {}",
                dir.display(),
                json.display(),
                vocab.display()
            );
        };
        inner.with_padding(None);
        let untruncated = inner.clone();
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| anyhow!("invalid max length {max_len}: {e}"))?;
        Ok(Self {
            inner,
            untruncated,
            max_len,
        })
    }

    pub fn encode(&self, text: &str, pair: Option<&str>) -> Result<Encoded> {
        let encoding = match pair {
            Some(pair) => self.inner.encode((text, pair), true),
            None => self.inner.encode(text, true),
        }
        .map_err(|e| anyhow!("cannot tokenize {text:?}: {e}"))?;
        Ok(Encoded {
            ids: encoding.get_ids().to_vec(),
            type_ids: encoding.get_type_ids().to_vec(),
        })
    }

    /// Splits `text` into pieces that each fit the maximum length with `[CLS]` and `[SEP]`,
    /// cutting between words (inside a word only when one word alone is too long).
    pub fn split_to_fit(&self, text: &str) -> Result<Vec<String>> {
        let budget = self.max_len.saturating_sub(2).max(1);
        let encoding = self
            .untruncated
            .encode(text, false)
            .map_err(|e| anyhow!("cannot tokenize {text:?}: {e}"))?;
        let (offsets, words) = (encoding.get_offsets(), encoding.get_word_ids());
        let starts_word = |token: usize| words[token] != words[token - 1];
        let mut pieces = Vec::new();
        let mut start = 0;
        while encoding.len() - start > budget {
            let end = start + budget;
            let cut = (start + 1..=end)
                .rev()
                .find(|&token| starts_word(token))
                .unwrap_or(end);
            pieces.push(text[offsets[start].0..offsets[cut].0].trim().to_string());
            start = cut;
        }
        let rest = offsets.get(start).map_or("", |offset| &text[offset.0..]);
        pieces.push(rest.trim().to_string());
        pieces.retain(|piece| !piece.is_empty());
        Ok(pieces)
    }

    /// The word-piece ids of each text, without special tokens or truncation, tokenised in
    /// parallel.
    pub fn piece_ids(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let encodings = self
            .untruncated
            .encode_batch(texts.to_vec(), false)
            .map_err(|e| anyhow!("cannot tokenize: {e}"))?;
        Ok(encodings.iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// The id of a special token such as `[MASK]`.
    pub fn token_id(&self, token: &str) -> Result<u32> {
        self.inner
            .token_to_id(token)
            .with_context(|| format!("the vocabulary has no {token}"))
    }

    /// Token strings by id (added tokens included).
    pub fn vocab(&self) -> Vec<String> {
        let mut vocab = vec![String::new(); self.inner.get_vocab_size(true)];
        for (token, id) in self.inner.get_vocab(true) {
            if let Some(slot) = vocab.get_mut(id as usize) {
                *slot = token;
            }
        }
        vocab
    }

    /// The number of ids the tokenizer can produce (added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Refuses a tokenizer that produces ids past a model's `vocab_size` embedding rows: it is
    /// another model's (a model may have more rows than its tokenizer ids, never fewer).
    pub fn check_fits(&self, vocab_size: usize, dir: &Path) -> Result<()> {
        let size = self.vocab_size();
        if size > vocab_size {
            bail!(
                "the tokenizer in {} has {size} tokens but the model's embedding matrix has \
                 {vocab_size} rows: it is another model's tokenizer",
                dir.display()
            );
        }
        Ok(())
    }

    /// The ids of the tokens the tokenizer marks special (`[CLS]`, `<s>`, `<pad>`, ...).
    pub fn special_ids(&self) -> Vec<u32> {
        self.inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, token)| token.special)
            .map(|(id, _)| id)
            .collect()
    }

    /// The kind of the tokenizer's model, as `tokenizer.json` names it (`WordPiece`, `BPE`,
    /// `Unigram`, `WordLevel`).
    pub fn model_kind(&self) -> &'static str {
        use tokenizers::models::ModelWrapper;
        match self.inner.get_model() {
            ModelWrapper::WordPiece(_) => "WordPiece",
            ModelWrapper::BPE(_) => "BPE",
            ModelWrapper::Unigram(_) => "Unigram",
            ModelWrapper::WordLevel(_) => "WordLevel",
        }
    }

    /// The length sequences are truncated to.
    pub fn max_len(&self) -> usize {
        self.max_len
    }
}

/// `do_lower_case` from `tokenizer_config.json`; BERT's default (true) when absent.
fn lowercase_from_config(dir: &Path) -> Result<bool> {
    let path = dir.join("tokenizer_config.json");
    if !path.is_file() {
        return Ok(true);
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let config: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("malformed tokenizer config {}", path.display()))?;
    Ok(config
        .get("do_lower_case")
        .and_then(|v| v.as_bool())
        .unwrap_or(true))
}

fn wordpiece_from_vocab(vocab: &Path, lowercase: bool) -> Result<Tokenizer> {
    let model = WordPiece::from_file(&vocab.to_string_lossy())
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| anyhow!("cannot load vocabulary {}: {e}", vocab.display()))?;
    let mut tokenizer = Tokenizer::new(model);
    let special = |token: &str| {
        tokenizer
            .token_to_id(token)
            .map(|id| (token.to_string(), id))
            .with_context(|| format!("vocabulary {} lacks {token}", vocab.display()))
    };
    let processor = BertProcessing::new(special("[SEP]")?, special("[CLS]")?);
    tokenizer
        .with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)))
        .map_err(|e| anyhow!("cannot set up the tokenizer: {e}"))?;
    tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
    tokenizer.with_post_processor(Some(processor));
    Ok(tokenizer)
}

/// A WordPiece tokenizer over `[PAD] [UNK] [CLS] [SEP] [MASK]` (ids 0 to 4) and then `words`,
/// written as `vocab.txt` into `dir`, for tests.
#[cfg(test)]
pub(crate) fn test_tokenizer(dir: &Path, words: &[&str], max_len: usize) -> TextTokenizer {
    let vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .chain(words)
        .fold(String::new(), |vocab, token| vocab + token + "\n");
    std::fs::write(dir.join("vocab.txt"), vocab).unwrap();
    TextTokenizer::from_dir(dir, max_len).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_too_short_for_text_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let shortest = test_tokenizer(dir.path(), &["ok"], MIN_LEN);
        assert_eq!(shortest.encode("ok", Some("ok")).unwrap().ids.len(), 5);
        let error = TextTokenizer::from_dir(dir.path(), 2).err().unwrap();
        assert!(
            error
                .to_string()
                .starts_with("max_seq_len 2 leaves no room for text")
        );
    }
}
