//! Vocabulary pruning. The kept tokens are those the given texts tokenise into, the special
//! tokens, and every single character with its `##` continuation, so that any other word still
//! splits into pieces rather than becoming `[UNK]`. Kept tokens keep their order, and the
//! tokenizer files are rewritten with the new ids. WordPiece takes the longest piece in the
//! vocabulary, and every piece the texts used is kept, so those texts tokenise exactly as
//! before.

use anyhow::{Context, Result, bail};
use kd_data::TextTokenizer;
use serde_json::{Map, Value};
use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// Lines tokenised together.
const LINES_PER_CHUNK: usize = 4096;

/// The token ids to keep, ascending, for the texts (plain-text files, a text a line).
pub fn kept_token_ids(model_dir: &Path, texts: &[PathBuf]) -> Result<Vec<u32>> {
    let tokenizer = prunable_tokenizer(model_dir)?;
    let vocab = tokenizer.vocab();
    let mut kept: BTreeSet<u32> = vocab
        .iter()
        .enumerate()
        .filter(|(_, token)| always_kept(token))
        .map(|(id, _)| id as u32)
        .chain(tokenizer.special_ids())
        .collect();
    let always = kept.len();
    for path in texts {
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut lines = BufReader::new(file).lines().enumerate();
        loop {
            let mut chunk = Vec::with_capacity(LINES_PER_CHUNK);
            for (number, line) in lines.by_ref().take(LINES_PER_CHUNK) {
                chunk.push(line.with_context(|| {
                    format!("cannot read {} line {}", path.display(), number + 1)
                })?);
            }
            if chunk.is_empty() {
                break;
            }
            let texts: Vec<&str> = chunk.iter().map(String::as_str).collect();
            kept.extend(tokenizer.piece_ids(&texts)?.into_iter().flatten());
        }
    }
    // Texts that add no token would leave single characters for every word: a model that
    // spells, not one that reads.
    if kept.len() == always {
        bail!(
            "the --prune-vocab files ({}) hold no text that needs a token beyond the special \
             and single-character ones: give the texts the model will read",
            texts
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(kept.into_iter().collect())
}

/// The tokenizer of `model_dir`, when its vocabulary can be pruned: WordPiece's can.
pub fn prunable_tokenizer(model_dir: &Path) -> Result<TextTokenizer> {
    let tokenizer = TextTokenizer::from_dir(model_dir, usize::MAX)?;
    let model = tokenizer.model_kind();
    if model != "WordPiece" {
        bail!(
            "the vocabulary of a {model} tokenizer cannot be pruned (kd prunes WordPiece \
             vocabularies; byte-level BPE, as RoBERTa's, needs every byte's merges): export \
             without --prune-vocab"
        );
    }
    Ok(tokenizer)
}

/// Special tokens by BERT's spelling (`[CLS]`, `[MASK]`, ...; not the `[unusedN]`
/// placeholders; the tokenizer's own special tokens are kept too, whatever their spelling) and
/// single characters, with or without the continuation prefix.
fn always_kept(token: &str) -> bool {
    let special = token.starts_with('[') && token.ends_with(']') && !token.starts_with("[unused");
    let character = token.strip_prefix("##").unwrap_or(token).chars().count() == 1;
    special || character
}

/// Writes the tokenizer files of `model_dir` into `out` with only the `kept` ids, renumbered
/// in order.
pub(crate) fn write_pruned_tokenizer(model_dir: &Path, out: &Path, kept: &[u32]) -> Result<()> {
    let tokenizer = TextTokenizer::from_dir(model_dir, usize::MAX)?;
    let vocab = tokenizer.vocab();
    let new_id: HashMap<u32, u32> = kept
        .iter()
        .enumerate()
        .map(|(new, &old)| (old, new as u32))
        .collect();
    let tokens: Vec<&str> = kept.iter().map(|&id| vocab[id as usize].as_str()).collect();
    let mut written = false;
    if model_dir.join("vocab.txt").is_file() {
        let text: String = tokens.iter().map(|token| format!("{token}\n")).collect();
        write_text(&out.join("vocab.txt"), &text)?;
        written = true;
    }
    if let Some(mut json) = read_json(&model_dir.join("tokenizer.json"))? {
        renumber_tokenizer(&mut json, &tokens, &new_id)?;
        write_text(&out.join("tokenizer.json"), &serde_json::to_string(&json)?)?;
        written = true;
    }
    if !written {
        bail!("{} has no vocab.txt or tokenizer.json", model_dir.display());
    }
    if let Some(mut config) = read_json(&model_dir.join("tokenizer_config.json"))? {
        // transformers lists added tokens by id here too.
        if let Some(Value::Object(decoder)) = config.get_mut("added_tokens_decoder") {
            *decoder = renumber_keys(decoder, &new_id);
        }
        write_text(
            &out.join("tokenizer_config.json"),
            &serde_json::to_string_pretty(&config)?,
        )?;
    }
    let special = model_dir.join("special_tokens_map.json");
    if special.is_file() {
        let text = std::fs::read_to_string(&special)?;
        write_text(&out.join("special_tokens_map.json"), &text)?;
    }
    Ok(())
}

/// Rewrites a `tokenizer.json` for the new ids: the WordPiece vocabulary, the added tokens,
/// the special tokens of the post-processor and the padding id.
fn renumber_tokenizer(json: &mut Value, tokens: &[&str], new_id: &HashMap<u32, u32>) -> Result<()> {
    let renumber = |value: &mut Value| -> Result<()> {
        let old = value.as_u64().context("a token id that is not a number")? as u32;
        let new = new_id
            .get(&old)
            .with_context(|| format!("special token id {old} is not kept"))?;
        *value = Value::from(*new);
        Ok(())
    };
    let vocab: Map<String, Value> = tokens
        .iter()
        .enumerate()
        .map(|(id, token)| (token.to_string(), Value::from(id)))
        .collect();
    json["model"]["vocab"] = Value::Object(vocab);
    if let Some(Value::Array(added)) = json.get_mut("added_tokens") {
        for token in added {
            renumber(&mut token["id"])?;
        }
    }
    if let Some(Value::Object(specials)) = json["post_processor"].get_mut("special_tokens") {
        // TemplateProcessing: {"[CLS]": {"ids": [101], ...}}.
        for special in specials.values_mut() {
            if let Some(Value::Array(ids)) = special.get_mut("ids") {
                ids.iter_mut().try_for_each(renumber)?;
            }
        }
    }
    for key in ["cls", "sep"] {
        // BertProcessing: {"cls": ["[CLS]", 101]}.
        if let Some(Value::Array(pair)) = json["post_processor"].get_mut(key)
            && let Some(id) = pair.get_mut(1)
        {
            renumber(id)?;
        }
    }
    if let Some(Value::Object(padding)) = json.get_mut("padding")
        && let Some(id) = padding.get_mut("pad_id")
    {
        renumber(id)?;
    }
    Ok(())
}

fn renumber_keys(map: &Map<String, Value>, new_id: &HashMap<u32, u32>) -> Map<String, Value> {
    map.iter()
        .filter_map(|(key, value)| {
            let new = new_id.get(&key.parse().ok()?)?;
            Some((new.to_string(), value.clone()))
        })
        .collect()
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let json = serde_json::from_str(&text)
        .with_context(|| format!("malformed JSON in {}", path.display()))?;
    Ok(Some(json))
}

fn write_text(path: &Path, text: &str) -> Result<()> {
    kd_bert::write_atomically(path, |tmp| Ok(std::fs::write(tmp, text)?))
}
