//! TinyBERT-style data augmentation: new training examples made by replacing words with near
//! neighbours. TinyBERT draws candidates from BERT's masked-LM head (single-piece words) and
//! from GloVe (the rest); kd's teachers carry no masked-LM head, so candidates are the nearest
//! whole words of the model's own WordPiece vocabulary in its input-embedding space (cosine).
//! Only lowercase alphabetic words that are whole vocabulary entries are replaced.

use crate::example::Example;
use anyhow::{Result, bail};
use candle_core::{D, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeSet, HashMap};

/// Rows of the similarity matrix computed at once: bounds memory to this many vocabulary rows.
const BLOCK: usize = 512;

/// Each word's nearest whole words, best first.
#[derive(Debug, Clone, Default)]
pub struct WordNeighbours {
    candidates: HashMap<String, Vec<String>>,
}

/// Whether a token can be replaced and be a replacement: a whole lowercase word.
fn is_word(token: &str) -> bool {
    token.len() > 1 && token.bytes().all(|b| b.is_ascii_lowercase())
}

impl WordNeighbours {
    /// The `k` nearest whole words of each of `words` found in `vocab` (token strings by id),
    /// by cosine similarity of the rows of `embeddings` (`[vocab, hidden]`).
    pub fn new(
        vocab: &[String],
        embeddings: &Tensor,
        words: &BTreeSet<String>,
        k: usize,
    ) -> Result<Self> {
        let (rows, _) = embeddings.dims2()?;
        if rows != vocab.len() {
            bail!(
                "{} embedding rows for a vocabulary of {}",
                rows,
                vocab.len()
            );
        }
        let pool: Vec<u32> = (0..vocab.len() as u32)
            .filter(|&id| is_word(&vocab[id as usize]))
            .collect();
        let queries: Vec<u32> = pool
            .iter()
            .copied()
            .filter(|&id| words.contains(&vocab[id as usize]))
            .collect();
        let unit = |ids: &[u32]| -> Result<Tensor> {
            let rows = embeddings.index_select(&Tensor::new(ids, embeddings.device())?, 0)?;
            let norms = rows
                .sqr()?
                .sum_keepdim(D::Minus1)?
                .sqrt()?
                .clamp(1e-12, f64::MAX)?;
            Ok(rows.broadcast_div(&norms)?)
        };
        let pool_unit = unit(&pool)?.t()?.contiguous()?;
        let mut candidates = HashMap::with_capacity(queries.len());
        for block in queries.chunks(BLOCK) {
            let similarities: Vec<Vec<f32>> = unit(block)?.matmul(&pool_unit)?.to_vec2()?;
            for (&query, row) in block.iter().zip(similarities) {
                let mut order: Vec<usize> = (0..pool.len()).filter(|&i| pool[i] != query).collect();
                let k = k.min(order.len());
                if k == 0 {
                    continue;
                }
                let by_similarity = |a: &usize, b: &usize| row[*b].total_cmp(&row[*a]);
                order.select_nth_unstable_by(k - 1, by_similarity);
                order.truncate(k);
                order.sort_by(by_similarity);
                let words = order
                    .iter()
                    .map(|&i| vocab[pool[i] as usize].clone())
                    .collect();
                candidates.insert(vocab[query as usize].clone(), words);
            }
        }
        Ok(Self { candidates })
    }

    pub fn get(&self, word: &str) -> Option<&[String]> {
        self.candidates.get(word).map(Vec::as_slice)
    }

    /// The replaceable words of some texts, to give [`WordNeighbours::new`].
    pub fn words_of<'a>(texts: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
        texts
            .into_iter()
            .flat_map(str::split_whitespace)
            .filter(|word| is_word(word))
            .map(str::to_string)
            .collect()
    }
}

/// How many examples to make and how much to change each.
#[derive(Debug, Clone, Copy)]
pub struct AugmentConfig {
    /// New examples per original (TinyBERT: 20); duplicates of the original are dropped.
    pub per_example: usize,
    /// Probability of replacing each replaceable word (TinyBERT: 0.4).
    pub replace_prob: f64,
    pub seed: u64,
}

/// New examples, `config.per_example` per original at most, each with the original's label.
pub fn augment(
    examples: &[Example],
    neighbours: &WordNeighbours,
    config: &AugmentConfig,
) -> Vec<Example> {
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut out = Vec::with_capacity(examples.len() * config.per_example);
    // A variant is its words joined by single spaces: an original with other whitespace (a
    // newline, two spaces) is the same example when no word was replaced.
    let spaced = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    for example in examples {
        let (original_text, original_pair) =
            (spaced(&example.text), example.pair.as_deref().map(spaced));
        for _ in 0..config.per_example {
            let mut vary = |text: &str| -> String {
                text.split_whitespace()
                    .map(|word| match neighbours.get(word) {
                        Some(candidates) if rng.random_bool(config.replace_prob) => {
                            candidates[rng.random_range(0..candidates.len())].as_str()
                        }
                        _ => word,
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let text = vary(&example.text);
            let pair = example.pair.as_deref().map(&mut vary);
            if text != original_text || pair != original_pair {
                out.push(Example {
                    text,
                    pair,
                    label: example.label,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::example::Label;
    use candle_core::Device;

    /// Words on a circle: each one's neighbours are those at the nearest angles.
    fn circle() -> (Vec<String>, Tensor) {
        let vocab: Vec<String> = ["[PAD]", "good", "great", "fine", "bad", "awful", "##s", "x"]
            .map(String::from)
            .to_vec();
        let angles = [0.0f32, 0.0, 0.1, 0.3, 3.0, 3.1, 0.05, 0.02];
        let rows: Vec<f32> = angles.iter().flat_map(|a| [a.cos(), a.sin()]).collect();
        (vocab, Tensor::from_vec(rows, (8, 2), &Device::Cpu).unwrap())
    }

    #[test]
    fn neighbours_are_the_nearest_whole_words_best_first() {
        let (vocab, embeddings) = circle();
        let words = WordNeighbours::words_of(["good bad , unknown"]);
        let neighbours = WordNeighbours::new(&vocab, &embeddings, &words, 2).unwrap();
        // "##s" and "x" are nearer to "good" than "fine" is, but are not whole words.
        assert_eq!(neighbours.get("good").unwrap(), ["great", "fine"]);
        assert_eq!(neighbours.get("bad").unwrap(), ["awful", "fine"]);
        assert!(neighbours.get("unknown").is_none());
        assert!(
            neighbours.get("great").is_none(),
            "only the data's words are looked up"
        );
    }

    #[test]
    fn augmentation_replaces_words_at_the_given_rate_and_keeps_labels() {
        let (vocab, embeddings) = circle();
        let example = Example {
            text: "good good bad , good".into(),
            pair: Some("bad".into()),
            label: Label::Class(1),
        };
        let words = WordNeighbours::words_of(["good bad"]);
        let neighbours = WordNeighbours::new(&vocab, &embeddings, &words, 1).unwrap();
        let config = AugmentConfig {
            per_example: 400,
            replace_prob: 0.4,
            seed: 7,
        };
        let made = augment(std::slice::from_ref(&example), &neighbours, &config);
        let (mut replaced, mut total) = (0, 0);
        for new in &made {
            assert_eq!(new.label, Label::Class(1));
            assert_ne!((&new.text, &new.pair), (&example.text, &example.pair));
            let words: Vec<&str> = new.text.split(' ').chain(new.pair.as_deref()).collect();
            assert_eq!(words[3], ",", "other tokens stay");
            for (old, new) in ["good", "good", "bad", "good", "bad"]
                .iter()
                .zip(words.iter().filter(|w| **w != ","))
            {
                let expected = if *old == "good" { "great" } else { "awful" };
                assert!(new == old || *new == expected, "{old} became {new}");
                replaced += usize::from(new != old);
                total += 1;
            }
        }
        // Unchanged examples (0.6^5 of them) are dropped, so the rate among those kept is
        // 0.4 / (1 - 0.6^5).
        let rate = replaced as f64 / total as f64;
        assert!(
            (rate - 0.4 / (1.0 - 0.6f64.powi(5))).abs() < 0.03,
            "rate {rate}"
        );
        assert_eq!(made, augment(&[example], &neighbours, &config), "seeded");
        // An original whose words are spaced otherwise (a newline, which the TSV written
        // cannot hold) is not repeated either.
        let spaced = Example {
            text: "good\n bad".into(),
            pair: None,
            label: Label::Class(0),
        };
        let unchanged = AugmentConfig {
            replace_prob: 0.0,
            ..config
        };
        assert!(augment(&[spaced], &neighbours, &unchanged).is_empty());
    }
}
