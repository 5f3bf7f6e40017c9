//! Unlabeled corpora for general distillation. Plain-text files (named by globs) are streamed
//! line by line, split into sentences, tokenised in parallel and packed into sequences of up
//! to the maximum length as BERT's pre-training does: consecutive sentences of a file share a
//! sequence until the next would not fit, and a sentence longer than a sequence is cut. The
//! packed ids are cached on disk under a key of the files' bytes, the vocabulary and the length,
//! so that a second epoch, run or recipe does not tokenise the text again.

use crate::batch::EncodedExample;
use crate::example::Label;
use crate::tokenizer::TextTokenizer;
use crate::unlabeled::split_sentences;
use anyhow::{Context, Result, bail, ensure};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// Lines tokenised together: enough to keep every thread busy, few enough to stream.
const LINES_PER_CHUNK: usize = 8192;
/// Bumped whenever packing changes, so that older caches are not read.
const PACKING_VERSION: u32 = 1;

/// Token sequences, each `[CLS] pieces [SEP]`, stored end to end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackedCorpus {
    ids: Vec<u32>,
    /// Where each sequence starts in `ids`, and where the last one ends.
    offsets: Vec<u32>,
}

/// Where a packed corpus came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CorpusSource {
    Tokenised,
    Cached,
}

impl PackedCorpus {
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tokens in all sequences, special tokens included.
    pub fn tokens(&self) -> usize {
        self.ids.len()
    }

    pub fn sequence(&self, index: usize) -> &[u32] {
        &self.ids[self.offsets[index] as usize..self.offsets[index + 1] as usize]
    }

    pub fn lengths(&self) -> Vec<usize> {
        self.offsets
            .windows(2)
            .map(|w| (w[1] - w[0]) as usize)
            .collect()
    }

    /// Sequence `index` as a single-segment example without a label.
    pub fn example(&self, index: usize) -> EncodedExample {
        let ids = self.sequence(index).to_vec();
        EncodedExample {
            type_ids: vec![0; ids.len()],
            ids,
            label: Label::Unlabeled,
        }
    }

    fn save(&self, path: &Path) -> Result<()> {
        let tensors = [
            (
                "ids".to_string(),
                Tensor::new(self.ids.as_slice(), &Device::Cpu)?,
            ),
            (
                "offsets".to_string(),
                Tensor::new(self.offsets.as_slice(), &Device::Cpu)?,
            ),
        ];
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create cache directory {}", dir.display()))?;
        }
        kd_bert::write_checked(path, &tensors, HashMap::new())
    }

    /// The corpus a cache file holds; `None` for a file an earlier kd wrote without a
    /// checksum (tokenised again). A damaged file is an error.
    fn load(path: &Path) -> Result<Option<Self>> {
        let file = kd_bert::read_checked(path, "delete it to tokenise the corpus again")?;
        if !file.verified {
            return Ok(None);
        }
        let mut tensors = file.tensors;
        let mut take = |name: &str| -> Result<Vec<u32>> {
            let tensor = tensors.remove(name).with_context(|| format!("no {name}"))?;
            Ok(tensor.to_vec1::<u32>()?)
        };
        let corpus = Self {
            ids: take("ids")?,
            offsets: take("offsets")?,
        };
        let consistent = corpus.offsets.first() == Some(&0)
            && corpus.offsets.last() == Some(&(corpus.ids.len() as u32))
            && corpus.offsets.windows(2).all(|w| w[0] < w[1]);
        ensure!(
            consistent,
            "corpus cache {}: its offsets do not match its ids; delete it to tokenise again",
            path.display()
        );
        Ok(Some(corpus))
    }
}

/// The files the globs name, sorted within each glob; a glob matching no file is an error.
pub fn expand_globs(patterns: &[String]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for pattern in patterns {
        let mut matched: Vec<PathBuf> = glob::glob(pattern)
            .with_context(|| format!("invalid glob {pattern:?}"))?
            .filter_map(|entry| entry.ok().filter(|path| path.is_file()))
            .collect();
        if matched.is_empty() {
            bail!("{pattern:?} matches no file");
        }
        matched.sort();
        files.extend(matched);
    }
    Ok(files)
}

/// Packs `files` into sequences of at most `max_len` tokens, or reads them from `cache_dir`
/// when the same files, vocabulary and length were packed before. `progress` is told how many
/// bytes of text have been read, out of the total it is first given.
pub fn pack_corpus(
    files: &[PathBuf],
    tokenizer: &TextTokenizer,
    max_len: usize,
    cache_dir: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(PackedCorpus, CorpusSource)> {
    ensure!(max_len >= 3, "sequences of {max_len} tokens hold no text");
    let key = cache_key(files, tokenizer, max_len)?;
    let path = cache_dir.join(format!("corpus-{key:016x}.safetensors"));
    if path.is_file()
        && let Some(corpus) = PackedCorpus::load(&path)?
    {
        return Ok((corpus, CorpusSource::Cached));
    }
    let total: u64 = files
        .iter()
        .map(|file| Ok(std::fs::metadata(file)?.len()))
        .collect::<std::io::Result<Vec<_>>>()?
        .iter()
        .sum();
    let mut packer = Packer::new(tokenizer, max_len)?;
    let mut read = 0;
    for file in files {
        read = packer.add_file(file, tokenizer, read, &mut |bytes| progress(bytes, total))?;
    }
    let corpus = packer.corpus;
    if corpus.is_empty() {
        bail!("the corpus files hold no text");
    }
    corpus.save(&path)?;
    Ok((corpus, CorpusSource::Tokenised))
}

struct Packer {
    corpus: PackedCorpus,
    /// Word pieces of the sequence being filled.
    current: Vec<u32>,
    budget: usize,
    cls: u32,
    sep: u32,
}

impl Packer {
    fn new(tokenizer: &TextTokenizer, max_len: usize) -> Result<Self> {
        Ok(Self {
            corpus: PackedCorpus {
                ids: Vec::new(),
                offsets: vec![0],
            },
            current: Vec::new(),
            budget: max_len - 2,
            cls: tokenizer.token_id("[CLS]")?,
            sep: tokenizer.token_id("[SEP]")?,
        })
    }

    /// Streams one file; returns the bytes read so far, `read` before it.
    fn add_file(
        &mut self,
        path: &Path,
        tokenizer: &TextTokenizer,
        mut read: u64,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64> {
        let file = std::fs::File::open(path)
            .with_context(|| format!("cannot read corpus file {}", path.display()))?;
        let mut lines = BufReader::new(file).lines().enumerate();
        loop {
            let mut chunk = Vec::with_capacity(LINES_PER_CHUNK);
            for (number, line) in lines.by_ref().take(LINES_PER_CHUNK) {
                let line = line.with_context(|| {
                    format!("cannot read {} line {}", path.display(), number + 1)
                })?;
                read += line.len() as u64 + 1;
                chunk.push(line);
            }
            if chunk.is_empty() {
                break;
            }
            let sentences: Vec<&str> = chunk.iter().flat_map(|l| split_sentences(l)).collect();
            for pieces in tokenizer.piece_ids(&sentences)? {
                self.add_sentence(&pieces);
            }
            progress(read);
        }
        // Sequences do not run from one file into the next.
        self.flush();
        Ok(read)
    }

    fn add_sentence(&mut self, pieces: &[u32]) {
        for part in pieces.chunks(self.budget) {
            if self.current.len() + part.len() > self.budget {
                self.flush();
            }
            self.current.extend_from_slice(part);
        }
    }

    fn flush(&mut self) {
        if self.current.is_empty() {
            return;
        }
        let ids = &mut self.corpus.ids;
        ids.push(self.cls);
        ids.append(&mut self.current);
        ids.push(self.sep);
        self.corpus.offsets.push(ids.len() as u32);
    }
}

/// A hash of the files' names and bytes, the vocabulary, the length and the packing version.
fn cache_key(files: &[PathBuf], tokenizer: &TextTokenizer, max_len: usize) -> Result<u64> {
    let mut hasher = DefaultHasher::new();
    (PACKING_VERSION, max_len, tokenizer.vocab()).hash(&mut hasher);
    for file in files {
        hash_file(file, &mut hasher)?;
    }
    Ok(hasher.finish())
}

/// Feeds a file's bytes to `hasher`, a megabyte at a time.
pub fn hash_file(path: &Path, hasher: &mut impl Hasher) -> Result<()> {
    for_each_chunk(path, |chunk| chunk.hash(hasher))?;
    Ok(())
}

/// Calls `each` on a file's bytes, a megabyte at a time; returns the file's size.
pub fn for_each_chunk(path: &Path, mut each: impl FnMut(&[u8])) -> Result<usize> {
    let cannot_read = || format!("cannot read {}", path.display());
    let mut file = std::fs::File::open(path).with_context(cannot_read)?;
    let (mut buffer, mut size) = (vec![0u8; 1 << 20], 0);
    loop {
        let read = file.read(&mut buffer).with_context(cannot_read)?;
        if read == 0 {
            return Ok(size);
        }
        each(&buffer[..read]);
        size += read;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::test_tokenizer;

    fn tokenizer(dir: &Path, max_len: usize) -> TextTokenizer {
        let words = ["the", "cat", "sat", "on", "mat", ".", "a", "dog", "ran"];
        test_tokenizer(dir, &words, max_len)
    }

    fn pack(dir: &Path, files: &[PathBuf], max_len: usize) -> (PackedCorpus, CorpusSource) {
        let tokenizer = tokenizer(dir, max_len);
        let mut seen = Vec::new();
        let packed = pack_corpus(
            files,
            &tokenizer,
            max_len,
            &dir.join("cache"),
            &mut |r, t| seen.push((r, t)),
        )
        .unwrap();
        if packed.1 == CorpusSource::Tokenised {
            let (read, total) = *seen.last().unwrap();
            assert_eq!(read, total, "progress reaches the total");
        }
        packed
    }

    #[test]
    fn sentences_are_packed_until_the_next_does_not_fit_and_files_are_not_joined() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("a.txt");
        let second = dir.path().join("b.txt");
        // Sentences of 4, 4 and 5 pieces; a budget of 8 pieces (max_len 10).
        std::fs::write(&first, "The cat sat. A dog ran.\nThe cat sat on.\n").unwrap();
        // One sentence of 10 pieces: cut at the budget.
        std::fs::write(&second, "the cat sat on the mat the cat sat on\n").unwrap();
        let (corpus, source) = pack(dir.path(), &[first.clone(), second.clone()], 10);
        assert_eq!(source, CorpusSource::Tokenised);
        let sequences: Vec<&[u32]> = (0..corpus.len()).map(|i| corpus.sequence(i)).collect();
        assert_eq!(
            sequences,
            [
                &[2, 5, 6, 7, 10, 11, 12, 13, 10, 3][..],
                &[2, 5, 6, 7, 8, 10, 3],
                &[2, 5, 6, 7, 8, 5, 9, 5, 6, 3],
                &[2, 7, 8, 3],
            ]
        );
        assert_eq!(corpus.lengths(), [10, 7, 10, 4]);
        assert_eq!(corpus.tokens(), 31);

        // Read back from the cache; a changed file or length packs afresh.
        let (cached, source) = pack(dir.path(), &[first.clone(), second.clone()], 10);
        assert_eq!((cached, source), (corpus, CorpusSource::Cached));
        assert_eq!(
            pack(dir.path(), std::slice::from_ref(&first), 10).1,
            CorpusSource::Tokenised
        );
        assert_eq!(
            pack(dir.path(), &[first.clone(), second.clone()], 12).1,
            CorpusSource::Tokenised
        );
        std::fs::write(&second, "the dog ran\n").unwrap();
        assert_eq!(
            pack(dir.path(), &[first, second], 10).1,
            CorpusSource::Tokenised
        );
    }

    #[test]
    fn invalid_text_and_empty_globs_are_errors_naming_the_place() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.txt");
        std::fs::write(&file, b"the cat\nthe \xff dog\n").unwrap();
        let tokenizer = tokenizer(dir.path(), 16);
        let error = pack_corpus(&[file], &tokenizer, 16, dir.path(), &mut |_, _| {}).unwrap_err();
        assert!(format!("{error:#}").contains("bad.txt line 2"), "{error:#}");
        let pattern = format!("{}/*.none", dir.path().display());
        let error = expand_globs(&[pattern]).unwrap_err();
        assert!(error.to_string().contains("matches no file"), "{error}");
    }
}
