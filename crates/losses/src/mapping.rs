//! Which teacher layer each student layer learns from.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// A mapping from student layers to teacher layers, for a student of M layers and a teacher of
/// N. Layers count from 1, as in the papers; 0 is the embedding output, which pairs only with
/// the other model's embedding output. In a recipe: `"uniform"`, `"skip"`, `{ last_k = 1 }`,
/// `{ explicit = [[0, 0], [1, 3]] }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerMapping {
    /// TinyBERT's g(m) = m·N/M (rounded down) for every student layer m: the top student layer
    /// learns from the top teacher layer.
    Uniform,
    /// BERT-PKD-Skip: student layer m learns from teacher layer m·N/M for m < M, every
    /// (N/M)-th teacher layer below the top (whose output the prediction loss covers).
    Skip,
    /// The student's top k layers learn from the teacher's top k, in order; `last_k = 1` is
    /// DistilBERT's last hidden state.
    LastK(usize),
    /// (student, teacher) pairs, e.g. BERT-PKD-Last for 6 and 12 layers:
    /// `[[1, 7], [2, 8], [3, 9], [4, 10], [5, 11]]`.
    Explicit(Vec<(usize, usize)>),
}

/// As a recipe writes it: `"uniform"`, `{ last_k = 1 }`.
impl std::fmt::Display for LayerMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Uniform => f.write_str("\"uniform\""),
            Self::Skip => f.write_str("\"skip\""),
            Self::LastK(k) => write!(f, "{{ last_k = {k} }}"),
            Self::Explicit(pairs) => {
                let pairs: Vec<String> = pairs.iter().map(|(s, t)| format!("[{s}, {t}]")).collect();
                write!(f, "{{ explicit = [{}] }}", pairs.join(", "))
            }
        }
    }
}

impl LayerMapping {
    /// The (student, teacher) layer pairs, checked against the models' depths so that a
    /// mapping naming a layer either model lacks fails when the objective is built.
    pub fn pairs(
        &self,
        student_layers: usize,
        teacher_layers: usize,
    ) -> Result<Vec<(usize, usize)>> {
        let (m, n) = (student_layers, teacher_layers);
        let pairs: Vec<_> = match self {
            Self::Uniform => (1..=m).map(|s| (s, s * n / m)).collect(),
            Self::Skip => (1..m).map(|s| (s, s * n / m)).collect(),
            Self::LastK(k) => {
                if *k > m.min(n) {
                    bail!(
                        "last_k = {k} needs that many layers in a {m}-layer student and a {n}-layer teacher"
                    );
                }
                (1..=*k).map(|i| (m - k + i, n - k + i)).collect()
            }
            Self::Explicit(pairs) => pairs.clone(),
        };
        if pairs.is_empty() {
            bail!(
                "layer mapping {self} pairs no layers of a {m}-layer student and a {n}-layer teacher"
            );
        }
        for &(s, t) in &pairs {
            if s > m {
                bail!("layer mapping {self} names student layer {s}, the student has {m}");
            }
            if t > n {
                bail!("layer mapping {self} names teacher layer {t}, the teacher has {n}");
            }
            if (s == 0) != (t == 0) {
                bail!(
                    "layer mapping {self} pairs student layer {s} with teacher layer {t}: the \
                     embedding output (layer 0) pairs only with the embedding output"
                );
            }
        }
        Ok(pairs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LayerMapping::*;

    #[test]
    fn generated_mappings_pair_the_layers_the_papers_pair() -> Result<()> {
        assert_eq!(Uniform.pairs(4, 12)?, [(1, 3), (2, 6), (3, 9), (4, 12)]);
        assert_eq!(Uniform.pairs(4, 6)?, [(1, 1), (2, 3), (3, 4), (4, 6)]);
        assert_eq!(
            Skip.pairs(6, 12)?,
            [(1, 2), (2, 4), (3, 6), (4, 8), (5, 10)]
        );
        assert_eq!(LastK(1).pairs(6, 12)?, [(6, 12)]);
        assert_eq!(LastK(3).pairs(6, 12)?, [(4, 10), (5, 11), (6, 12)]);
        let explicit = Explicit(vec![(0, 0), (1, 7), (2, 12)]);
        assert_eq!(explicit.pairs(2, 12)?, [(0, 0), (1, 7), (2, 12)]);
        Ok(())
    }

    #[test]
    fn mappings_naming_missing_layers_are_errors() {
        let cases = [
            (
                Explicit(vec![(7, 12)]),
                "layer mapping { explicit = [[7, 12]] } names student layer 7, the student has 6",
            ),
            (
                Explicit(vec![(1, 13)]),
                "teacher layer 13, the teacher has 12",
            ),
            (Explicit(vec![(0, 3)]), "embedding output"),
            (Explicit(vec![]), "pairs no layers"),
            (LastK(0), "layer mapping { last_k = 0 } pairs no layers"),
            (LastK(7), "last_k = 7"),
        ];
        for (mapping, message) in cases {
            let error = mapping.pairs(6, 12).unwrap_err().to_string();
            assert!(error.contains(message), "{mapping:?}: {error}");
        }
        // A teacher shallower than the student would map layer 1 to the embeddings.
        assert!(Uniform.pairs(4, 2).is_err());
        assert!(Skip.pairs(1, 12).is_err());
    }
}
