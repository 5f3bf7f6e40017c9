//! What the end-to-end tests share: where the shared data and model cache are, and running
//! the `kd` binary.

#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use kd_bert::{BertConfig, BertInput, BertModel, Params};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// `$KD_SHARED_DIR`, or `../shared` beside the workspace root.
pub fn shared_dir() -> PathBuf {
    std::env::var_os("KD_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared"))
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn hf_home() -> PathBuf {
    shared_dir().join("hf-cache")
}

pub fn glue_dir(task: &str) -> PathBuf {
    shared_dir().join("data/glue").join(task)
}

/// The snapshot directory of all-MiniLM-L6-v2 in the shared cache.
pub fn minilm_dir() -> PathBuf {
    let cache = hf_hub::Cache::new(hf_home().join("hub"));
    let config = cache
        .model(MINILM.to_string())
        .get("config.json")
        .expect("all-MiniLM-L6-v2 in the shared hub cache (set KD_SHARED_DIR?)");
    config.parent().unwrap().to_path_buf()
}

pub fn kd_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kd"));
    command
        .args(args)
        .env("HF_HOME", hf_home())
        .env("KD_SHARED_DIR", shared_dir())
        .current_dir(workspace_root());
    command
}

/// Runs `kd` with the shared cache as `HF_HOME`.
pub fn kd(args: &[&str]) -> Output {
    kd_command(args).output().expect("run kd")
}

/// Runs `kd` with `input` on its standard input.
pub fn kd_with_stdin(args: &[&str], input: &[u8]) -> Output {
    run_with_stdin(kd_command(args), input)
}

/// Runs `command` with `input` on its standard input.
pub fn run_with_stdin(mut command: Command, input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the command");
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().expect("run the command")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `kd` and returns its standard output, failing the test with its errors otherwise.
pub fn kd_ok(args: &[&str]) -> String {
    let output = kd(args);
    assert!(
        output.status.success(),
        "kd {args:?} failed:\n{}",
        stderr(&output)
    );
    stdout(&output)
}

/// Runs `kd`, expects it to fail, and returns its standard error.
pub fn kd_err(args: &[&str]) -> String {
    let output = kd(args);
    assert!(
        !output.status.success(),
        "kd {args:?} should have failed:\n{}",
        stdout(&output)
    );
    stderr(&output)
}

/// A tiny BERT encoder (MiniLM's vocabulary and tokenizer, 8 wide, 2 layers) in `dir`.
pub fn write_tiny_model(dir: &Path) {
    write_tiny_model_sized(dir, 8, 0.02);
}

/// [`write_tiny_model`] `hidden` wide (the feed-forward twice that), its weights drawn with
/// standard deviation `init_range`.
pub fn write_tiny_model_sized(dir: &Path, hidden: usize, init_range: f64) {
    std::fs::create_dir_all(dir).unwrap();
    let config = serde_json::json!({
        "model_type": "bert", "vocab_size": 30522, "hidden_size": hidden, "num_hidden_layers": 2,
        "num_attention_heads": 2, "intermediate_size": 2 * hidden, "max_position_embeddings": 64,
        "type_vocab_size": 2, "hidden_act": "gelu",
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let config: BertConfig = serde_json::from_value(config).unwrap();
    let params = Params::new(&Device::Cpu);
    BertModel::new(&config, params.var_builder(), true).unwrap();
    params.init_bert(init_range, 1).unwrap();
    params.save(&dir.join("model.safetensors")).unwrap();
    std::fs::copy(
        minilm_dir().join("tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
}

/// A tiny bare encoder of `family` (16 wide, 2 layers; ELECTRA's embeddings 8 wide) with
/// MiniLM's WordPiece tokenizer, written as that family's HF checkpoint, in `dir`.
pub fn write_tiny_family_model(dir: &Path, family: kd_bert::Family) {
    std::fs::create_dir_all(dir).unwrap();
    let mut config = serde_json::json!({
        "model_type": family.model_type(), "vocab_size": 30522, "hidden_size": 16,
        "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32,
        "max_position_embeddings": 66, "type_vocab_size": 2, "hidden_act": "gelu",
        "pad_token_id": 0, "embedding_size": 8, "layer_norm_eps": 1e-5,
    });
    if family == kd_bert::Family::DistilBert {
        let json = config.as_object_mut().unwrap();
        for (theirs, ours) in [
            ("dim", "hidden_size"),
            ("n_layers", "num_hidden_layers"),
            ("n_heads", "num_attention_heads"),
            ("hidden_dim", "intermediate_size"),
            ("activation", "hidden_act"),
        ] {
            let value = json.remove(ours).unwrap();
            json.insert(theirs.into(), value);
        }
    }
    let config = BertConfig::from_json(config.as_object().unwrap().clone()).unwrap();
    config.write(&dir.join("config.json")).unwrap();
    let params = Params::new(&Device::Cpu).in_family(family);
    BertModel::new(
        &config,
        params.var_builder().pp("bert"),
        family.pooler_is_head(),
    )
    .unwrap();
    params.init_bert(0.1, 1).unwrap();
    params.save(&dir.join("model.safetensors")).unwrap();
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(minilm_dir().join(file), dir.join(file)).unwrap();
    }
}

/// Fine-tunes all-MiniLM-L6-v2 on 1000 SST-2 sentences for one epoch (a quick teacher, about
/// 80% dev accuracy) into `out`, and returns the report `kd finetune` prints.
pub fn quick_sst2_teacher(out: &Path) -> serde_json::Value {
    let out = out.to_str().unwrap();
    let stdout = kd_ok(&[
        "finetune",
        "--model",
        MINILM,
        "--task",
        "sst2",
        "--out",
        out,
        "--epochs",
        "1",
        "--max-train-examples",
        "1000",
        "--lr",
        "1e-4",
    ]);
    serde_json::from_str(stdout.trim()).unwrap()
}

/// Runs `kd distill` on `recipe` into `out` with its teacher cache in `cache`, and returns
/// the summary it prints.
pub fn distill_recipe(recipe: &Path, out: &Path, cache: &Path) -> serde_json::Value {
    let stdout = kd_ok(&[
        "distill",
        "--recipe",
        recipe.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    serde_json::from_str(stdout.trim()).unwrap()
}

/// Writes `message` to the test binary's standard error past libtest's capture, so that a
/// passing test's log still says what it skipped or checked.
pub fn note(message: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "note: {message}");
}

/// The reference Python environment's interpreter (`.venv-ref`, PyTorch and transformers:
/// `benches/setup.sh`), where it exists; otherwise notes that `check` is skipped. CI has none:
/// it is too heavy to install on every run.
pub fn reference_python(check: &str) -> Option<PathBuf> {
    let python = workspace_root().join(".venv-ref/bin/python");
    if !python.is_file() {
        note(&format!(
            "skipping {check}: no .venv-ref with PyTorch and transformers (benches/setup.sh)"
        ));
        return None;
    }
    Some(python)
}

/// An interpreter with ONNX Runtime, onnx and tokenizers: `$KD_ONNX_PYTHON`, `.venv-onnx`
/// (what `.ci/run` installs from `tests/fixtures/onnx-requirements.txt`) or `.venv-ref`.
/// Without one the ONNX Runtime `check` is skipped with a note, except in CI (`CI` set),
/// where it must run.
pub fn onnx_python(check: &str) -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("KD_ONNX_PYTHON").map(PathBuf::from),
        Some(workspace_root().join(".venv-onnx/bin/python")),
        Some(workspace_root().join(".venv-ref/bin/python")),
    ];
    let found = candidates
        .into_iter()
        .flatten()
        .find(|python| python.is_file());
    if found.is_none() {
        let setup = "python3 -m venv .venv-onnx && .venv-onnx/bin/pip install -r \
                     tests/fixtures/onnx-requirements.txt";
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs {check}, but no Python with ONNX Runtime was found ({setup})"
        );
        note(&format!(
            "skipping {check}: no Python with ONNX Runtime ({setup})"
        ));
    }
    found
}

/// The logits HF transformers gives for `texts` with the model in `dir`
/// (`tests/fixtures/check_hf_load.py`, which fails on any missing or unexpected weight); `None`
/// without the reference environment.
pub fn transformers_logits(dir: &Path, texts: &[&str]) -> Option<Vec<Vec<f64>>> {
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let check = format!("transformers reading the model {name}");
    let output = Command::new(reference_python(&check)?)
        .arg(workspace_root().join("tests/fixtures/check_hf_load.py"))
        .arg(dir)
        .args(texts)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let rows = stdout(&output)
        .lines()
        .map(|line| {
            let answer: serde_json::Value = serde_json::from_str(line).unwrap();
            let logits = answer["logits"].as_array().unwrap();
            logits.iter().map(|v| v.as_f64().unwrap()).collect()
        })
        .collect();
    Some(rows)
}

/// A logged value of every training step: `loss`, or a component such as `cosine`.
pub fn logged(log: &Path, name: &str) -> Vec<f64> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|entry| entry["step"].is_number())
        .map(|entry| match name {
            "loss" => entry["loss"].as_f64().unwrap(),
            component => entry["components"][component].as_f64().unwrap(),
        })
        .collect()
}

/// Training steps logged so far in a run's `log.jsonl` (0 before it exists).
pub fn logged_steps(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .map(|log| log.lines().filter(|l| l.starts_with("{\"step\"")).count())
        .unwrap_or(0)
}

/// The weights file of the checkpoint in `checkpoint_dir`, as its `state.json` names it.
pub fn checkpoint_params(checkpoint_dir: &Path) -> PathBuf {
    let state = std::fs::read(checkpoint_dir.join("state.json")).unwrap();
    let state: serde_json::Value = serde_json::from_slice(&state).unwrap();
    checkpoint_dir.join(state["checkpoint"]["params"].as_str().unwrap())
}

/// Starts `command`, sends `signal` once its `log` holds `steps` training steps, and returns
/// the run's output (standard error captured).
pub fn interrupt_after(mut command: Command, log: &Path, steps: usize, signal: i32) -> Output {
    let child = command.stderr(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    while logged_steps(log) < steps {
        assert!(started.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, signal) };
    child.wait_with_output().unwrap()
}

/// Writes a small corpus (Brown sentences and IMDB reviews) into `dir`.
pub fn write_corpus(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let corpus = shared_dir().join("data/corpus");
    for (file, lines) in [("brown.txt", 300), ("imdb_unsup_50k.txt", 40)] {
        let text = std::fs::read_to_string(corpus.join(file)).unwrap();
        let head: Vec<&str> = text.lines().take(lines).collect();
        std::fs::write(dir.join(file), head.join("\n")).unwrap();
    }
}

/// The largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// Asserts that `files` in `dir` have mode 0644, whatever mode their writer (safetensors:
/// 0600) or the copied source (the read-only hub cache) had.
pub fn assert_readable_by_all(dir: &Path, files: &[&str]) {
    #[cfg(unix)]
    for name in files {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o644, "{name}: {mode:o}");
    }
}

pub const TOPICS: [(&str, [&str; 6]); 3] = [
    (
        "weather",
        ["rain", "snow", "storm", "wind", "forecast", "thunder"],
    ),
    (
        "sport",
        ["football", "goal", "tennis", "coach", "referee", "stadium"],
    ),
    (
        "food",
        ["pizza", "soup", "bread", "cheese", "salad", "cake"],
    ),
];
const TEMPLATES: [&str; 4] = [
    "the {} and the {} were all anyone talked about",
    "i read about {} and {} this morning",
    "{} again , then more {}",
    "nothing but {} and {} all week",
];

/// `count` examples `text<TAB>id<TAB>topic`, the topic named by the words used.
pub fn topic_tsv(count: usize, offset: usize) -> String {
    let mut tsv = "id\ttext\ttopic\n".to_string();
    for i in offset..offset + count {
        let (topic, words) = TOPICS[i % 3];
        let template = TEMPLATES[(i / 3) % 4];
        let text = template.replacen("{}", words[(i * 5) % 6], 1).replacen(
            "{}",
            words[(i * 7 + 1) % 6],
            1,
        );
        tsv += &format!("{i}\t{text}\t{topic}\n");
    }
    tsv
}

/// Writes the topics task (240 training and 60 dev examples of [`topic_tsv`]) under `root`
/// and returns its folder and the data flags that describe it (at most 32 tokens).
pub fn topic_task(root: &Path) -> (PathBuf, Vec<String>) {
    let data = root.join("topics");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("train.tsv"), topic_tsv(240, 0)).unwrap();
    std::fs::write(data.join("dev.tsv"), topic_tsv(60, 1000)).unwrap();
    let flags = [
        "--task",
        "topics",
        "--data-dir",
        data.to_str().unwrap(),
        "--text-column",
        "text",
        "--label-column",
        "topic",
        "--max-seq-len",
        "32",
    ];
    (data.clone(), flags.map(String::from).to_vec())
}

/// `texts` (each with `pair` as its second text, when given) encoded for `model` and padded
/// into one batch.
pub fn text_batch(
    model: &kd_teacher::TaskModel,
    texts: &[&str],
    pair: Option<&str>,
) -> kd_data::Batch {
    let examples: Vec<kd_data::Example> = texts
        .iter()
        .map(|text| kd_data::Example {
            text: text.to_string(),
            pair: pair.map(str::to_string),
            label: kd_data::Label::Unlabeled,
        })
        .collect();
    let encoded = model.encode(&examples).unwrap();
    let indices: Vec<usize> = (0..texts.len()).collect();
    kd_data::collate(&encoded, &indices, &Device::Cpu).unwrap()
}

/// An input tensor's rows as int64, ONNX's index type.
pub fn rows_i64(tensor: &Tensor) -> Vec<Vec<i64>> {
    let rows = tensor.to_dtype(DType::I64).unwrap();
    rows.to_vec2::<i64>().unwrap()
}

/// The logits ONNX Runtime computes for `input` with the export in `dir` (after ONNX's full
/// checker), and ONNX Runtime's version; `None` where no Python has it (never in CI).
pub fn onnx_runtime_logits(dir: &Path, input: &BertInput) -> Option<(Tensor, String)> {
    let name = dir.file_name().unwrap().to_string_lossy();
    let python = onnx_python(&format!("ONNX Runtime running {name}"))?;
    let inputs = serde_json::json!({
        "input_ids": rows_i64(&input.input_ids),
        "attention_mask": rows_i64(&input.attention_mask),
        "token_type_ids": rows_i64(&input.token_type_ids),
    });
    let script = workspace_root().join("tests/fixtures/check_onnx_ort.py");
    let mut command = std::process::Command::new(python);
    command.arg(script).arg(dir);
    let output = run_with_stdin(command, inputs.to_string().as_bytes());
    assert!(output.status.success(), "{}", stderr(&output));
    let answer: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    let logits: Vec<Vec<f32>> = serde_json::from_value(answer["logits"].clone()).unwrap();
    let version = answer["onnxruntime"].as_str().unwrap().to_string();
    Some((Tensor::new(logits, &Device::Cpu).unwrap(), version))
}
