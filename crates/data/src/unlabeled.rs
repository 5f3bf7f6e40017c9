//! Transfer sets: text without labels for a teacher to label. Passages (lines of a text file,
//! or rows of a TSV column) are split into sentences, and sentences longer than the model's
//! maximum length into chunks between words; a cap keeps a seeded random choice of passages.

use crate::example::{Example, Label};
use crate::table::{Format, read_text, read_texts};
use crate::tokenizer::TextTokenizer;
use anyhow::{Context, Result, bail};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use std::path::{Path, PathBuf};

/// Reads unlabeled examples from `paths`: table files (TSV, CSV, JSON Lines, Parquet) by their
/// text column (and pair column, whose pairs are kept whole) of `columns`, other files a
/// passage a line. At most `limit`.
pub fn read_unlabeled(
    paths: &[PathBuf],
    columns: Option<(String, Option<String>)>,
    tokenizer: &TextTokenizer,
    limit: Option<usize>,
    seed: u64,
) -> Result<Vec<Example>> {
    if limit == Some(0) {
        bail!("max_unlabeled = 0 keeps no unlabeled text: raise it, or name no unlabeled files");
    }
    let mut passages = Vec::new();
    for path in paths {
        let read = read_passages(path, columns.as_ref())?;
        if read.is_empty() {
            bail!("unlabeled file {} holds no text", path.display());
        }
        passages.extend(read);
    }
    // A seeded random choice of passages when capped, kept in file order: the same files
    // give the same examples (and teacher-cache key) under any seed when nothing is dropped.
    let mut order: Vec<usize> = (0..passages.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    let limit = limit.unwrap_or(usize::MAX);
    let mut chosen = Vec::new();
    for index in order {
        if chosen.len() >= limit {
            break;
        }
        let (text, pair) = &passages[index];
        if pair.is_some() {
            chosen.push((index, text.clone(), pair.clone()));
            continue;
        }
        for sentence in split_sentences(text) {
            for piece in tokenizer.split_to_fit(sentence)? {
                chosen.push((index, piece, None));
            }
        }
    }
    chosen.truncate(limit);
    chosen.sort_by_key(|(index, ..)| *index);
    Ok(chosen
        .into_iter()
        .map(|(_, text, pair)| Example {
            text,
            pair,
            label: Label::Unlabeled,
        })
        .collect())
}

fn read_passages(
    path: &Path,
    columns: Option<&(String, Option<String>)>,
) -> Result<Vec<(String, Option<String>)>> {
    if Format::of(path).is_some() {
        let Some((text_column, pair_column)) = columns else {
            bail!(
                "{}: which column holds the text? give text_column",
                path.display()
            );
        };
        let rows = read_texts(path, text_column, pair_column.as_deref())?;
        return Ok(rows
            .into_iter()
            .map(|(_, text, pair)| (text, pair))
            .collect());
    }
    let text = read_text(path).with_context(|| "cannot read the unlabeled text")?;
    Ok(text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| (line.to_string(), None))
        .collect())
}

/// Splits a passage after `.`, `!` or `?` (and any closing quotes or brackets) where the next
/// word starts with a capital, a digit or a quote, and at HTML line breaks (IMDB's `<br />`).
pub(crate) fn split_sentences(passage: &str) -> Vec<&str> {
    let mut sentences = Vec::new();
    for block in passage.split("<br />").flat_map(|b| b.split("<br/>")) {
        let mut start = 0;
        let mut chars = block.char_indices().peekable();
        while let Some((_, c)) = chars.next() {
            if !matches!(c, '.' | '!' | '?') {
                continue;
            }
            while let Some(&(_, '.' | '!' | '?' | '"' | '\'' | ')' | ']')) = chars.peek() {
                chars.next();
            }
            let Some(&(end, ' ')) = chars.peek() else {
                continue;
            };
            let next = block[end..].trim_start().chars().next();
            if next.is_some_and(|n| n.is_uppercase() || n.is_ascii_digit() || n == '"') {
                sentences.push(&block[start..end]);
                start = end;
            }
        }
        sentences.push(&block[start..]);
    }
    sentences
        .into_iter()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::test_tokenizer;

    fn tokenizer(dir: &Path, max_len: usize) -> TextTokenizer {
        let words = ["the", "cat", "sat", "on", "mat", ".", "##s", "a", "dog"];
        test_tokenizer(dir, &words, max_len)
    }

    #[test]
    fn sentences_split_at_ends_and_line_breaks_not_inside() {
        assert_eq!(
            split_sentences("It works. Really!\" \"Yes,\" said I. e.g. this<br /><br />Next one?"),
            vec![
                "It works.",
                "Really!\"",
                "\"Yes,\" said I. e.g. this",
                "Next one?"
            ]
        );
        assert_eq!(split_sentences("  "), Vec::<&str>::new());
    }

    #[test]
    fn long_sentences_split_between_words_to_fit() {
        let dir = tempfile::tempdir().unwrap();
        // 6 tokens of content fit with [CLS] and [SEP]; "cats" is two tokens.
        let tokenizer = tokenizer(dir.path(), 8);
        assert_eq!(
            tokenizer.split_to_fit("the cat sat on the mat").unwrap(),
            vec!["the cat sat on the mat"]
        );
        let pieces = tokenizer
            .split_to_fit("the cat sat on the mat the cats sat")
            .unwrap();
        assert_eq!(pieces, vec!["the cat sat on the mat", "the cats sat"]);
        // Offsets are bytes of the original text: accents and unknown words slice cleanly.
        let pieces = tokenizer
            .split_to_fit("the Café sat on the mat the cats sat")
            .unwrap();
        assert_eq!(pieces, vec!["the Café sat on the mat", "the cats sat"]);
        let pieces = tokenizer.split_to_fit("a cat sat on the cats mat").unwrap();
        assert_eq!(pieces, vec!["a cat sat on the", "cats mat"]);
        for piece in &pieces {
            assert!(tokenizer.encode(piece, None).unwrap().ids.len() <= 8);
        }
    }

    #[test]
    fn transfer_sets_are_capped_seeded_and_read_from_text_or_tsv_columns() {
        let dir = tempfile::tempdir().unwrap();
        let tokenizer = tokenizer(dir.path(), 16);
        let text = dir.path().join("corpus.txt");
        std::fs::write(
            &text,
            "The cat sat. A dog sat.\n\nThe mat.\nA cat.\nThe dog.\n",
        )
        .unwrap();
        let tsv = dir.path().join("train.tsv");
        std::fs::write(&tsv, "sentence\tlabel\nthe dogs\t1\nthe cats\t0\n").unwrap();
        let paths = vec![text.clone(), tsv];
        let columns = Some(("sentence".to_string(), None));
        let read = |limit, seed| {
            read_unlabeled(&paths, columns.clone(), &tokenizer, limit, seed)
                .unwrap()
                .into_iter()
                .map(|e| {
                    assert_eq!(e.label, Label::Unlabeled);
                    e.text
                })
                .collect::<Vec<_>>()
        };
        let all = read(None, 1);
        assert_eq!(
            all,
            [
                "The cat sat.",
                "A dog sat.",
                "The mat.",
                "A cat.",
                "The dog.",
                "the dogs",
                "the cats"
            ]
        );
        assert_eq!(
            read(None, 2),
            all,
            "nothing dropped: file order under any seed"
        );
        let three = read(Some(3), 1);
        assert_eq!(three.len(), 3);
        assert_eq!(read(Some(3), 1), three, "the same seed chooses the same");
        assert!(
            (2..6).any(|seed| read(Some(3), seed) != three),
            "other seeds choose others"
        );
        assert!(three.iter().all(|text| all.contains(text)));

        // A file of no text is a mistake, not a transfer set; so is keeping none.
        std::fs::write(&text, "\n \n").unwrap();
        let error = read_unlabeled(&paths, columns.clone(), &tokenizer, None, 1).unwrap_err();
        assert!(
            error.to_string().ends_with("corpus.txt holds no text"),
            "{error}"
        );
        let error = read_unlabeled(&paths, columns.clone(), &tokenizer, Some(0), 1).unwrap_err();
        assert!(error.to_string().contains("max_unlabeled = 0"), "{error}");

        std::fs::write(&text, b"fine\n\xfe\n").unwrap();
        let error = read_unlabeled(&paths, columns, &tokenizer, None, 1).unwrap_err();
        assert!(
            format!("{error:#}").contains("corpus.txt:2: not valid UTF-8"),
            "{error:#}"
        );
    }
}
