//! `kd augment` on SST-2 with the real all-MiniLM-L6-v2 vocabulary and embeddings: every new
//! sentence is an original with some lowercase words swapped for vocabulary words, labels
//! are kept, the file reads back as the task's TSV, and nothing is overwritten silently.

mod common;

use kd_data::{Example, TaskSpec};

#[test]
fn augmented_sentences_swap_words_of_an_original_and_keep_its_label() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sst2-augmented.tsv");
    let out_arg = out.to_str().unwrap();
    let args = [
        "augment",
        "--model",
        common::MINILM,
        "--task",
        "sst2",
        "--out",
        out_arg,
        "--per-example",
        "3",
        "--max-train-examples",
        "100",
    ];
    common::kd_ok(&args);

    let spec = TaskSpec::glue("SST-2").unwrap();
    let mut labels = vec!["0".to_string(), "1".to_string()];
    let originals: Vec<Example> = spec
        .read(&common::glue_dir("SST-2").join("train.tsv"), &mut labels)
        .unwrap()
        .into_iter()
        .take(100)
        .collect();
    let augmented = spec.read(&out, &mut labels).unwrap();
    assert!(
        augmented.len() > 150 && augmented.len() <= 300,
        "{} made",
        augmented.len()
    );
    let vocab = std::fs::read_to_string(common::minilm_dir().join("vocab.txt")).unwrap();
    let vocab: std::collections::HashSet<&str> = vocab.lines().collect();
    let words = |text: &str| {
        text.split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    for new in &augmented {
        let new_words = words(&new.text);
        let source = originals.iter().find(|original| {
            let old_words = words(&original.text);
            original.label == new.label
                && old_words.len() == new_words.len()
                && old_words.iter().zip(&new_words).all(|(old, new)| {
                    old == new
                        || (old.bytes().all(|b| b.is_ascii_lowercase())
                            && vocab.contains(new.as_str()))
                })
        });
        assert!(source.is_some(), "{:?} comes from no original", new.text);
        assert_ne!(source.unwrap().text, new.text);
    }

    // A second run refuses to replace the file, and leaves it as it was.
    let before = std::fs::read(&out).unwrap();
    let error = common::kd_err(&args);
    assert!(error.contains("--force"), "{error}");
    assert_eq!(std::fs::read(&out).unwrap(), before);

    // Settings that would write a file of no examples are refused before it is written.
    let none = dir.path().join("none.tsv");
    for flag in ["--per-example", "--candidates"] {
        let mut args = args.to_vec();
        args[6] = none.to_str().unwrap();
        match flag {
            "--per-example" => args[8] = "0",
            _ => args.extend([flag, "0"]),
        }
        let error = common::kd_err(&args);
        assert!(
            error.contains(&format!("{flag} 0 would write no")),
            "{error}"
        );
        assert!(!none.exists());
    }
}
