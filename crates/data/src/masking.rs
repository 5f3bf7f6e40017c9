//! BERT's masked-LM corruption: each ordinary token is chosen with a probability (15%), and a
//! chosen token becomes `[MASK]` (80%), a random token (10%) or stays itself (10%); the model
//! predicts the original at every chosen position.

use crate::batch::EncodedExample;
use crate::tokenizer::TextTokenizer;
use anyhow::{Result, ensure};
use rand::Rng;

pub struct Masking {
    probability: f64,
    mask_id: u32,
    vocab_size: u32,
    /// Tokens never chosen: `[CLS]`, `[SEP]`, `[PAD]`.
    special: [u32; 3],
}

/// A position the model must predict: which example, which token, and the original id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaskedToken {
    pub example: usize,
    pub position: usize,
    pub original: u32,
}

impl Masking {
    pub fn new(tokenizer: &TextTokenizer, vocab_size: usize, probability: f64) -> Result<Self> {
        ensure!(
            (0.0..=1.0).contains(&probability) && probability > 0.0,
            "the masking probability must lie in (0, 1], got {probability}"
        );
        Ok(Self {
            probability,
            mask_id: tokenizer.token_id("[MASK]")?,
            vocab_size: vocab_size as u32,
            special: ["[CLS]", "[SEP]", "[PAD]"].map(|t| tokenizer.token_id(t).unwrap_or(u32::MAX)),
        })
    }

    /// Corrupts `examples` in place, returning the chosen positions in order. At least one
    /// token is chosen when any is ordinary, so that the loss of a batch is never empty.
    pub fn apply(&self, examples: &mut [EncodedExample], rng: &mut impl Rng) -> Vec<MaskedToken> {
        let mut ordinary = Vec::new();
        for (example, encoded) in examples.iter().enumerate() {
            for (position, id) in encoded.ids.iter().enumerate() {
                if !self.special.contains(id) {
                    ordinary.push((example, position));
                }
            }
        }
        let mut chosen: Vec<(usize, usize)> = ordinary
            .iter()
            .copied()
            .filter(|_| rng.random_bool(self.probability))
            .collect();
        if chosen.is_empty() && !ordinary.is_empty() {
            chosen.push(ordinary[rng.random_range(0..ordinary.len())]);
        }
        chosen
            .into_iter()
            .map(|(example, position)| {
                let id = &mut examples[example].ids[position];
                let original = *id;
                let roll: f64 = rng.random();
                if roll < 0.8 {
                    *id = self.mask_id;
                } else if roll < 0.9 {
                    *id = rng.random_range(0..self.vocab_size);
                }
                MaskedToken {
                    example,
                    position,
                    original,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::example::Label;
    use crate::tokenizer::test_tokenizer;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn fifteen_percent_of_ordinary_tokens_are_chosen_most_become_mask_and_specials_never() {
        let dir = tempfile::tempdir().unwrap();
        let tokenizer = test_tokenizer(dir.path(), &["a", "b"], 512);
        let masking = Masking::new(&tokenizer, 1000, 0.15).unwrap();
        let original: Vec<u32> = std::iter::once(2)
            .chain((0..400).map(|i| 5 + i % 2))
            .chain([3])
            .collect();
        let mut examples: Vec<EncodedExample> = (0..50)
            .map(|_| EncodedExample {
                ids: original.clone(),
                type_ids: vec![0; original.len()],
                label: Label::Unlabeled,
            })
            .collect();
        let chosen = masking.apply(&mut examples, &mut StdRng::seed_from_u64(7));
        let ordinary = 50.0 * 400.0;
        let share = chosen.len() as f64 / ordinary;
        assert!((share - 0.15).abs() < 0.01, "{share}");
        let (mut masked, mut random, mut kept) = (0.0, 0.0, 0.0);
        for token in &chosen {
            assert!(token.position > 0 && token.position <= 400, "{token:?}");
            assert_eq!(token.original, original[token.position]);
            match examples[token.example].ids[token.position] {
                4 => masked += 1.0,
                id if id == token.original => kept += 1.0,
                _ => random += 1.0,
            }
        }
        let n = chosen.len() as f64;
        assert!((masked / n - 0.8).abs() < 0.02, "{}", masked / n);
        // A random draw can land on the original id (2 in 1000): counted as kept.
        assert!((random / n - 0.1).abs() < 0.015, "{}", random / n);
        assert!((kept / n - 0.1).abs() < 0.015, "{}", kept / n);
        // A batch too short for 15% to choose any still gets one masked token.
        let mut short = vec![EncodedExample {
            ids: vec![2, 5, 3],
            type_ids: vec![0; 3],
            label: Label::Unlabeled,
        }];
        for seed in 0..20 {
            let chosen = masking.apply(&mut short.clone(), &mut StdRng::seed_from_u64(seed));
            assert_eq!(chosen.len(), 1);
            assert_eq!((chosen[0].position, chosen[0].original), (1, 5));
        }
        short[0].ids = vec![2, 3];
        assert!(
            masking
                .apply(&mut short, &mut StdRng::seed_from_u64(0))
                .is_empty()
        );
        // Unchosen positions are untouched.
        let changed = examples
            .iter()
            .flat_map(|e| e.ids.iter().zip(&original))
            .filter(|(a, b)| a != b)
            .count();
        assert!(changed <= chosen.len());
    }
}
