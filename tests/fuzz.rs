//! Bad input at scale: arbitrary bytes and mutated valid files for every reader of user files
//! (task TSV, CSV, JSON Lines and Parquet files, `config.json`, tokenizer files, safetensors weights, kd's checked checkpoints
//! and caches) give an error, never a panic or an abort. Each property runs `CASES` cases.

use candle_core::Device;
use kd_bert::{BertConfig, BertModel, Params};
use kd_data::{DataSpec, TextTokenizer};
use proptest::prelude::*;
use std::path::Path;

const CASES: u32 = 2500;

/// A valid file's bytes with some bytes replaced, inserted or cut: near misses, which reach
/// deeper into a parser than random bytes do.
fn mutated(valid: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
    let edits = prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..6);
    (edits, any::<prop::sample::Index>()).prop_map(move |(edits, cut)| {
        let mut bytes = valid.to_vec();
        for (at, byte, kind) in edits {
            let at = at.index(bytes.len() + 1);
            match kind {
                0 if at < bytes.len() => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                _ if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => {}
            }
        }
        if cut.index(4) == 0 {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        bytes
    })
}

/// Valid-looking or arbitrary bytes.
fn input(valid: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![mutated(valid), prop::collection::vec(any::<u8>(), 0..300)]
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

const TSV: &[u8] = b"sentence\tlabel\na fine film\t1\nboring\t0\n\"quoted\ttab\"\t1\n";
const OWN_TSV: &[u8] = b"id\ttext\ttopic\n1\train again\tweather\n2\tgoal!\tsport\n";
const CSV: &[u8] = b"id,text,topic\n1,\"rain, again\",weather\n2,goal!,sport\n";
const JSONL: &[u8] =
    b"{\"text\": \"rain\", \"topic\": \"weather\"}\n{\"topic\": 1, \"text\": null}\n";
/// pandas' Parquet of 30 rows (`tests/fixtures/make_table_fixtures.py`).
const PARQUET: &[u8] = include_bytes!("fixtures/tables/topics.parquet");
const CONFIG: &[u8] = br#"{"model_type": "bert", "vocab_size": 30, "hidden_size": 8,
"num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 16,
"max_position_embeddings": 16, "id2label": {"0": "neg", "1": "pos"},
"pruned_heads": {"1": [0]}}"#;
const VOCAB: &[u8] = b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\nfilm\n##s\n";

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn task_tsv_files(bytes in input(TSV), own in input(OWN_TSV)) {
        let dir = tempfile::tempdir().unwrap();
        let glue = DataSpec { task: Some("SST-2".into()), ..DataSpec::default() };
        let path = write(dir.path(), "dev.tsv", &bytes);
        let _ = glue.task_spec().unwrap().read(&path, &mut Vec::new());
        let spec = DataSpec {
            task: Some("topics".into()),
            text_column: Some("text".into()),
            label_column: Some("topic".into()),
            ..DataSpec::default()
        };
        let path = write(dir.path(), "own.tsv", &own);
        let _ = spec.task_spec().unwrap().read(&path, &mut Vec::new());
    }

    #[test]
    fn task_csv_json_lines_and_parquet_files(
        csv in input(CSV),
        jsonl in input(JSONL),
        parquet in input(PARQUET),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let spec = DataSpec {
            task: Some("topics".into()),
            text_column: Some("text".into()),
            label_column: Some("topic".into()),
            ..DataSpec::default()
        };
        let spec = spec.task_spec().unwrap();
        for (name, bytes) in [("own.csv", &csv), ("own.jsonl", &jsonl), ("own.parquet", &parquet)] {
            let _ = spec.read(&write(dir.path(), name, bytes), &mut Vec::new());
        }
    }

    #[test]
    fn model_configs(bytes in input(CONFIG)) {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "config.json", &bytes);
        if let Ok(config) = BertConfig::from_file(&path) {
            // A config that validates builds a model, whatever its numbers.
            if config.hidden_size * config.intermediate_size * config.vocab_size < 1 << 22 {
                let params = Params::new(&Device::Cpu);
                let _ = BertModel::new(&config, params.var_builder(), true);
            }
        }
    }

    #[test]
    fn tokenizer_files(vocab in input(VOCAB), json in prop::collection::vec(any::<u8>(), 0..200)) {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "vocab.txt", &vocab);
        if let Ok(tokenizer) = TextTokenizer::from_dir(dir.path(), 16) {
            let _ = tokenizer.encode("the films of the night", Some("the"));
        }
        let other = tempfile::tempdir().unwrap();
        write(other.path(), "tokenizer.json", &json);
        let _ = TextTokenizer::from_dir(other.path(), 16);
    }

    #[test]
    fn safetensors_weights_and_checked_files(bytes in safetensors_input()) {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "model.safetensors", &bytes);
        let params = Params::new(&Device::Cpu);
        let vb = params.var_builder();
        let _ = vb.get((2, 3), "w");
        let _ = params.load(&path, |_| false);
        let _ = kd_bert::read_checked(&path, "delete it");
    }
}

/// A small checked safetensors file (kd's checkpoint layout), mutated, or arbitrary bytes.
fn safetensors_input() -> impl Strategy<Value = Vec<u8>> {
    static VALID: std::sync::OnceLock<&'static [u8]> = std::sync::OnceLock::new();
    let valid = VALID.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let tensor = candle_core::Tensor::arange(0f32, 6.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        kd_bert::write_checked(&path, &[("w".into(), tensor)], Default::default()).unwrap();
        Box::leak(std::fs::read(&path).unwrap().into_boxed_slice())
    });
    input(valid)
}
