//! Bad input ends with a clear error naming the file, line or field, and `kd finetune` writes
//! nothing: the output directory is not even created.

mod common;

use candle_core::Device;
use common::write_tiny_model;
use std::path::{Path, PathBuf};

fn write_data(dir: &Path, train: &str, dev: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("train.tsv"), train).unwrap();
    std::fs::write(dir.join("dev.tsv"), dev).unwrap();
}

const TRAIN: &str = "sentence\tlabel\na fine film\t1\na dull film\t0\ngreat fun\t1\nboring\t0\n";
const DEV: &str = "sentence\tlabel\nquite good\t1\nvery bad\t0\n";

struct Case {
    root: tempfile::TempDir,
}

impl Case {
    fn new() -> Self {
        let case = Self {
            root: tempfile::tempdir().unwrap(),
        };
        write_tiny_model(&case.model());
        write_data(&case.data(), TRAIN, DEV);
        case
    }

    fn model(&self) -> PathBuf {
        self.root.path().join("model")
    }

    fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }

    fn out(&self) -> PathBuf {
        self.root.path().join("out")
    }

    fn finetune(&self, task: &str) -> std::process::Output {
        self.finetune_with(task, &[])
    }

    /// `kd finetune` with `flags` after the usual ones.
    fn finetune_with(&self, task: &str, flags: &[&str]) -> std::process::Output {
        let (model, data, out) = (self.model(), self.data(), self.out());
        let mut args = vec![
            "finetune",
            "--model",
            model.to_str().unwrap(),
            "--task",
            task,
            "--data-dir",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--epochs",
            "1",
            "--batch-size",
            "2",
        ];
        args.extend(flags);
        common::kd(&args)
    }

    /// Runs `kd finetune`, expects failure with every `needle` in the message, and checks
    /// that nothing was written.
    fn fails_with(&self, needles: &[&str]) {
        self.fails_with_flags(&[], needles);
    }

    /// [`Case::fails_with`] for `kd finetune` with `flags` added.
    fn fails_with_flags(&self, flags: &[&str], needles: &[&str]) {
        let output = self.finetune_with("sst2", flags);
        let error = common::stderr(&output);
        assert!(
            !output.status.success(),
            "should fail: {}",
            common::stdout(&output)
        );
        for needle in needles {
            assert!(error.contains(needle), "error lacks {needle:?}: {error}");
        }
        assert!(
            !self.out().exists(),
            "output directory created despite the error"
        );
    }
}

#[test]
fn a_valid_tiny_setup_trains() {
    let case = Case::new();
    let output = case.finetune("sst2");
    assert!(output.status.success(), "{}", common::stderr(&output));
    assert!(case.out().join("model.safetensors").is_file());
}

#[test]
fn missing_config_is_named() {
    let case = Case::new();
    std::fs::remove_file(case.model().join("config.json")).unwrap();
    case.fails_with(&["has no", "config.json"]);
}

#[test]
fn malformed_config_names_the_file_and_line() {
    let case = Case::new();
    std::fs::write(
        case.model().join("config.json"),
        "{\n  \"hidden_size\": 8,\n  \"vocab_size\": oops\n}",
    )
    .unwrap();
    case.fails_with(&["malformed model config", "config.json", "line 3"]);
}

#[test]
fn config_missing_a_field_names_it() {
    let case = Case::new();
    std::fs::write(case.model().join("config.json"), "{\"hidden_size\": 8}").unwrap();
    case.fails_with(&["config.json", "missing field `vocab_size`"]);
}

#[test]
fn weights_lacking_a_tensor_name_it() {
    let case = Case::new();
    let path = case.model().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    tensors
        .remove("encoder.layer.1.output.dense.weight")
        .unwrap();
    candle_core::safetensors::save(&tensors, &path).unwrap();
    case.fails_with(&["model.safetensors", "encoder.layer.1.output.dense.weight"]);
}

#[test]
fn tsv_row_with_wrong_column_count_names_file_and_line() {
    let case = Case::new();
    write_data(
        &case.data(),
        "sentence\tlabel\nfine\t1\nbad\t0\textra\n",
        DEV,
    );
    case.fails_with(&["train.tsv:3", "expected 2", "found 3"]);
}

#[test]
fn unknown_label_in_dev_names_file_line_and_label() {
    let case = Case::new();
    write_data(&case.data(), TRAIN, "sentence\tlabel\ngood\t1\nmeh\t2\n");
    case.fails_with(&["dev.tsv:3", "unknown label \"2\""]);
}

#[test]
fn empty_dataset_is_named() {
    let case = Case::new();
    write_data(&case.data(), "sentence\tlabel\n", DEV);
    case.fails_with(&["train.tsv", "has no examples"]);
}

#[test]
fn missing_column_lists_the_columns() {
    let case = Case::new();
    write_data(&case.data(), "text\tlabel\nfine\t1\n", DEV);
    case.fails_with(&[
        "train.tsv",
        "no column \"sentence\"",
        "columns: text, label",
    ]);
}

#[test]
fn unknown_task_lists_the_known_ones() {
    let case = Case::new();
    let output = case.finetune("sst3");
    let error = common::stderr(&output);
    assert!(
        error.contains("unknown task \"sst3\"") && error.contains("SST-2, CoLA"),
        "{error}"
    );
    assert!(!case.out().exists());
}

#[test]
fn missing_model_directory_and_uncached_hub_id_are_named() {
    let error = common::kd_err(&["embed", "--model", "./no/such/dir", "x"]);
    assert!(
        error.contains("model directory ./no/such/dir does not exist"),
        "{error}"
    );
    // An empty name, or one with a stray space, is no hub id to ask the network for.
    for model in ["", "runs/teacher "] {
        let error = common::kd_err(&["embed", "--model", model, "x"]);
        assert!(
            error.contains("is empty or has spaces around it"),
            "{error}"
        );
    }
    // A hub id absent from the cache, with the hub unreachable (a closed local port).
    let empty_cache = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kd"))
        .args(["embed", "--model", "nobody/no-such-model", "x"])
        .env("HF_HOME", empty_cache.path())
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .unwrap();
    let error = common::stderr(&output);
    assert!(!output.status.success());
    assert!(
        error.contains("config.json") && error.contains("nobody/no-such-model"),
        "{error}"
    );
}

#[test]
fn an_output_directory_that_cannot_be_written_is_named_before_any_work() {
    let case = Case::new();
    let finetune = |out: &str, flag: Option<&str>| {
        let (model, data) = (case.model(), case.data());
        let mut args = vec![
            "finetune",
            "--model",
            model.to_str().unwrap(),
            "--task",
            "sst2",
            "--data-dir",
            data.to_str().unwrap(),
            "--out",
            out,
        ];
        args.extend(flag);
        common::kd_err(&args)
    };
    // /proc refuses new entries even to root, for whom permission bits mean nothing.
    let error = finetune("/proc/kd-run", None);
    assert!(
        error.contains("cannot create output directory /proc/kd-run"),
        "{error}"
    );
    let error = finetune("/proc", Some("--resume"));
    assert!(
        error.contains("cannot write in output directory /proc"),
        "{error}"
    );
    // --force clears an earlier kd run only: a directory of other files stays as it is.
    let error = finetune("/proc", Some("--force"));
    assert!(
        error.contains("/proc is not empty and holds no earlier kd run"),
        "{error}"
    );
}

/// A GPU asked of a kd built without CUDA, on the command line or in a recipe, is refused
/// before anything is read or written, with the way to build one.
#[cfg(not(feature = "cuda"))]
#[test]
fn a_gpu_asked_of_a_build_without_cuda_is_refused_before_any_work() {
    let case = Case::new();
    case.fails_with_flags(
        &["--device", "cuda:1"],
        &["--device cuda:1", "--features cuda"],
    );

    let out = case.out();
    let recipe = common::workspace_root().join("experiments/recipes/sst2-distilbert-l3.toml");
    let error = common::kd_err(&[
        "distill",
        "--recipe",
        recipe.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--set",
        "training.device=cuda",
    ]);
    assert!(error.contains("--features cuda"), "{error}");
    assert!(!out.exists(), "output directory created despite the error");

    let error = common::kd_err(&["eval", "--model", ".", "--device", "gpu"]);
    assert!(error.contains("expected cpu, cuda or cuda:N"), "{error}");
}
