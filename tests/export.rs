//! Compact exports: f16, bf16 and int8 exports reload in kd with logits close to the
//! original's; a pruned vocabulary gives the same logits on the texts it was pruned for and
//! still tokenises any text; candle-transformers' BERT reads the exports with kd's hidden
//! states; the ONNX export (of a model with pruned heads too) runs in tract (and ONNX
//! Runtime) with kd's logits; files are
//! written 0644 and an output directory is never overwritten silently; `kd compare` puts an
//! export beside its original.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use kd_bert::{BertConfig, BertInput, Mode, ProblemType};
use kd_data::{Example, Label};
use kd_export::{ExportOptions, Format, Precision, Quantization, export};
use kd_teacher::{ModelFiles, TaskModel};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const SENTENCES: [&str; 4] = [
    "a gorgeous , witty , seductive movie .",
    "the acting is bad and the plot is worse",
    "it 's a charming and often affecting journey .",
    "unflinchingly bleak and desperate",
];

/// A small random SST-2-shaped classifier with MiniLM's tokenizer, saved in `dir`.
fn tiny_classifier(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let minilm = common::minilm_dir();
    for file in ["tokenizer.json", "vocab.txt", "tokenizer_config.json"] {
        std::fs::copy(minilm.join(file), dir.join(file)).unwrap();
    }
    let mut config: BertConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 64,
        "type_vocab_size": 2, "hidden_act": "gelu",
    }))
    .unwrap();
    config.set_classification_head(
        &["0".into(), "1".into()],
        ProblemType::SingleLabelClassification,
    );
    // BERT's 0.02 makes logits tiny; a wider draw makes their differences measurable.
    let model = TaskModel::initialised(config, dir, 5, 64, &candle_core::Device::Cpu).unwrap();
    model.params.init_bert(0.2, 5).unwrap();
    model.save(dir).unwrap();
}

/// The model's logits and last hidden state on the first `n` of `SENTENCES`, padded into
/// one batch, and that batch's input.
fn outputs_on(dir: &Path, n: usize) -> (Tensor, Tensor, BertInput) {
    let model = TaskModel::load(
        &ModelFiles::from_dir(dir).unwrap(),
        64,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    outputs_of(&model, n)
}

fn outputs_of(model: &TaskModel, n: usize) -> (Tensor, Tensor, BertInput) {
    let batch = common::text_batch(model, &SENTENCES[..n], None);
    let (logits, states) = model.model.forward(&batch.input, Mode::Inference).unwrap();
    (logits, states.last_hidden_state().clone(), batch.input)
}

/// The model's logits and last hidden state on `SENTENCES`.
fn outputs(dir: &Path) -> (Tensor, Tensor) {
    let (logits, states, _) = outputs_on(dir, SENTENCES.len());
    (logits, states)
}

fn largest_magnitude(tensor: &Tensor) -> f32 {
    let magnitudes = tensor.abs().unwrap();
    magnitudes.max_all().unwrap().to_scalar::<f32>().unwrap()
}

fn exported(root: &Path, name: &str, options: ExportOptions) -> std::path::PathBuf {
    let out = root.join(name);
    let model = ModelFiles::from_dir(&root.join("model")).unwrap();
    export(&model, &out, &options).unwrap();
    out
}

#[test]
fn exports_reload_in_kd_with_the_original_logits_within_their_precision() {
    let root = tempfile::tempdir().unwrap();
    tiny_classifier(&root.path().join("model"));
    let (logits, _) = outputs(&root.path().join("model"));
    let scale = largest_magnitude(&logits);
    assert!(scale > 0.1, "logits too small to compare: {scale}");
    let cases = [
        ("f16", Precision::F16, None, 2e-3),
        ("bf16", Precision::Bf16, None, 2e-2),
        ("int8", Precision::F32, Some(Quantization::Int8), 3e-2),
        (
            "int8-embeddings",
            Precision::F32,
            Some(Quantization::Int8Embeddings),
            3e-2,
        ),
    ];
    for (name, precision, quantize, tolerance) in cases {
        let options = ExportOptions {
            precision,
            quantize,
            ..ExportOptions::default()
        };
        let dir = exported(root.path(), name, options);
        let difference = common::max_abs_diff(&outputs(&dir).0, &logits) / scale;
        assert!(
            difference < tolerance,
            "{name}: relative difference {difference}"
        );
        assert!(difference > 0.0, "{name}: the export changed nothing");
        // Loaded to answer with, an int8 export computes in int8 where the CPU can: the inputs
        // quantized too, which this small, wide-weighted model feels as much as its weights.
        let files = ModelFiles::from_dir(&dir).unwrap();
        let frozen = TaskModel::load_for_inference(&files, 64, &candle_core::Device::Cpu).unwrap();
        let (answers, _, _) = outputs_of(&frozen, SENTENCES.len());
        let difference = common::max_abs_diff(&answers, &logits) / scale;
        assert!(difference < 2.0 * tolerance, "{name} frozen: {difference}");
        let bytes = |dir: &Path| {
            std::fs::metadata(dir.join("model.safetensors"))
                .unwrap()
                .len()
        };
        assert!(
            bytes(&dir) < bytes(&root.path().join("model")),
            "{name} is no smaller"
        );
    }
    // int8 stores the dense weights as I8 with a scale per row (output channel); the word
    // embeddings stay f32 unless int8-embeddings asks (then one scale per token).
    let query = "bert.encoder.layer.0.attention.self.query.weight";
    let words = "bert.embeddings.word_embeddings.weight";
    let expected = [
        ("int8", query, Some(32)),
        ("int8", words, None),
        ("int8-embeddings", query, Some(32)),
        ("int8-embeddings", words, Some(30522)),
    ];
    for (export, tensor, scales) in expected {
        let file = std::fs::read(root.path().join(export).join("model.safetensors")).unwrap();
        let tensors = safetensors::SafeTensors::deserialize(&file).unwrap();
        let dtype = tensors.tensor(tensor).unwrap().dtype();
        let scale = tensors.tensor(&format!("{tensor}_scale")).ok();
        let scale_rows = scale.map(|scale| scale.shape()[0]);
        match scales {
            Some(rows) => assert_eq!((dtype, scale_rows), (safetensors::Dtype::I8, Some(rows))),
            None => assert_eq!((dtype, scale_rows), (safetensors::Dtype::F32, None)),
        }
    }
}

#[test]
fn a_pruned_vocabulary_keeps_the_logits_of_its_texts_and_tokenises_any_text() {
    let root = tempfile::tempdir().unwrap();
    tiny_classifier(&root.path().join("model"));
    let texts = root.path().join("texts.txt");
    std::fs::write(&texts, SENTENCES.join("\n")).unwrap();
    let options = ExportOptions {
        prune_vocab: vec![texts.clone()],
        ..ExportOptions::default()
    };
    let pruned = exported(root.path(), "pruned", options);
    let config = BertConfig::from_file(&pruned.join("config.json")).unwrap();
    assert!(
        config.vocab_size < 3000,
        "{} tokens kept",
        config.vocab_size
    );
    let (logits, _) = outputs(&root.path().join("model"));
    assert_eq!(common::max_abs_diff(&outputs(&pruned).0, &logits), 0.0);

    // Words the texts never used fall back to the kept pieces (characters at worst).
    let model = TaskModel::load(
        &ModelFiles::from_dir(&pruned).unwrap(),
        64,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let encoded = model.tokenizer.encode("zebras quixotically", None).unwrap();
    let vocab = model.tokenizer.vocab();
    let tokens: Vec<&str> = encoded
        .ids
        .iter()
        .map(|&id| vocab[id as usize].as_str())
        .collect();
    assert!(!tokens.contains(&"[UNK]"), "{tokens:?}");
    assert_eq!(tokens.first(), Some(&"[CLS]"));
    let pieces: String = tokens[1..tokens.len() - 1]
        .iter()
        .map(|t| t.trim_start_matches("##"))
        .collect();
    assert_eq!(pieces, "zebrasquixotically");

    // transformers loads the pruned vocabulary, in f32 and in f16, with the same answers
    // (where the reference environment exists).
    if common::reference_python("transformers reading the pruned vocabulary").is_some() {
        let options = ExportOptions {
            precision: Precision::F16,
            prune_vocab: vec![texts],
            ..ExportOptions::default()
        };
        let half = exported(root.path(), "pruned-f16", options);
        for (dir, tolerance) in [(&pruned, 1e-4), (&half, 1e-2)] {
            let theirs = common::transformers_logits(dir, &SENTENCES).unwrap();
            let ours = outputs(dir).0.to_vec2::<f32>().unwrap();
            for (theirs, ours) in theirs.iter().zip(ours) {
                for (theirs, ours) in theirs.iter().zip(ours) {
                    assert!(
                        (theirs - ours as f64).abs() < tolerance,
                        "{theirs} against {ours}"
                    );
                }
            }
        }
    }

    // Readable by everyone, as model files are meant to be shared.
    common::assert_readable_by_all(
        &pruned,
        &[
            "model.safetensors",
            "config.json",
            "tokenizer.json",
            "vocab.txt",
        ],
    );
}

#[test]
fn candle_transformers_bert_reads_exports_with_kds_hidden_states() {
    let root = tempfile::tempdir().unwrap();
    tiny_classifier(&root.path().join("model"));
    for (name, precision, tolerance) in
        [("f32", Precision::F32, 1e-4), ("f16", Precision::F16, 1e-4)]
    {
        let options = ExportOptions {
            precision,
            ..ExportOptions::default()
        };
        let dir = exported(root.path(), name, options);
        let (_, ours) = outputs(&dir);
        let config: candle_transformers::models::bert::Config =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        let weights = [dir.join("model.safetensors")];
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&weights, DType::F32, &Device::Cpu) }
            .unwrap();
        let bert = candle_transformers::models::bert::BertModel::load(vb, &config).unwrap();
        let model = TaskModel::load(
            &ModelFiles::from_dir(&dir).unwrap(),
            64,
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let encoded = model
            .encode(&[Example {
                text: SENTENCES[0].into(),
                pair: None,
                label: Label::Unlabeled,
            }])
            .unwrap();
        let ids = Tensor::new(encoded[0].ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let theirs = bert
            .forward(&ids, &ids.zeros_like().unwrap(), None)
            .unwrap();
        let ours = ours
            .narrow(0, 0, 1)
            .unwrap()
            .narrow(1, 0, ids.dim(1).unwrap())
            .unwrap();
        let difference = common::max_abs_diff(&theirs, &ours);
        assert!(difference < tolerance, "{name}: {difference}");
    }
}

/// The logits tract computes for `input` with the exported graph.
fn tract_logits(onnx: &Path, input: &BertInput) -> Tensor {
    use tract_onnx::prelude::{Framework, InferenceModelExt, IntoRunnable, tract_ndarray};
    let model = tract_onnx::onnx()
        .model_for_path(onnx)
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let array = |tensor: &Tensor| {
        let rows = common::rows_i64(tensor);
        let shape = (rows.len(), rows[0].len());
        let array = tract_ndarray::Array2::from_shape_vec(shape, rows.concat()).unwrap();
        tract_onnx::prelude::Tensor::from(array).into()
    };
    // In the graph's order; MPNet's graph has no token types.
    let inputs = [
        &input.input_ids,
        &input.attention_mask,
        &input.token_type_ids,
    ];
    let count = model.model().inputs.len();
    let outputs = model
        .run(inputs[..count].iter().map(|tensor| array(tensor)).collect())
        .unwrap();
    let logits = outputs[0].to_plain_array_view::<f32>().unwrap();
    let shape = logits.shape().to_vec();
    Tensor::from_iter(logits.iter().copied(), &Device::Cpu)
        .unwrap()
        .reshape(shape)
        .unwrap()
}

#[test]
fn the_onnx_export_runs_in_tract_and_onnx_runtime_with_kds_logits() {
    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("model");
    tiny_classifier(&model);
    let scale = largest_magnitude(&outputs(&model).0);
    // f32 matches kd to 1e-4; int8 (activations quantized at run time, weights per channel,
    // word embeddings per token) within a few percent of the logits' scale.
    let cases = [
        ("onnx", None, 1e-4),
        (
            "onnx-int8",
            Some(Quantization::Int8Embeddings),
            5e-2 * scale,
        ),
    ];
    for (name, quantize, tolerance) in cases {
        let options = ExportOptions {
            format: Format::Onnx,
            quantize,
            ..ExportOptions::default()
        };
        let onnx = exported(root.path(), name, options);
        common::assert_readable_by_all(&onnx, &["model.onnx", "config.json", "tokenizer.json"]);
        // A padded batch of four, then one sentence alone: batch and length are dynamic.
        for n in [SENTENCES.len(), 1] {
            let (logits, _, input) = outputs_on(&model, n);
            let theirs = tract_logits(&onnx.join("model.onnx"), &input);
            assert_eq!(theirs.dims(), logits.dims());
            let difference = common::max_abs_diff(&theirs, &logits);
            assert!(
                difference < tolerance,
                "{name} in tract, {n} sentences: {difference}"
            );
            if quantize.is_some() {
                assert!(difference > 1e-6, "{name}: nothing was quantized");
            }
            if let Some((theirs, version)) = common::onnx_runtime_logits(&onnx, &input) {
                let difference = common::max_abs_diff(&theirs, &logits);
                common::note(&format!(
                    "{name} in ONNX Runtime {version}, a batch of {n}: logits within \
                     {difference:.2e} of kd's (tolerance {tolerance:.2e})"
                ));
                assert!(
                    difference < tolerance,
                    "{name} in ONNX Runtime {version}: {difference}"
                );
            }
        }
    }
    let bytes = |name: &str| {
        let path = root.path().join(name).join("model.onnx");
        std::fs::metadata(path).unwrap().len()
    };
    assert!(
        bytes("onnx-int8") * 3 < bytes("onnx"),
        "int8 is not a third the size"
    );

    // kd itself runs safetensors models, and says what to do with an ONNX export.
    let onnx = root.path().join("onnx");
    let error = common::kd_err(&["eval", "--model", onnx.to_str().unwrap(), "--task", "sst2"]);
    assert!(error.contains("is an ONNX export"), "{error}");
    let error = common::kd_err(&[
        "export",
        "--model",
        model.to_str().unwrap(),
        "--out",
        root.path().join("onnx-f16").to_str().unwrap(),
        "--format",
        "onnx",
        "--dtype",
        "f16",
    ]);
    assert!(error.contains("--dtype is for safetensors"), "{error}");
    assert!(!root.path().join("onnx-f16").exists());
}

/// A model whose heads were pruned (`kd prune`; a different count in each layer) exports to
/// ONNX as it is, no heads restored, with kd's logits in tract and ONNX Runtime: a BERT model on
/// sentences, and MPNet's family fixture (tests/fixtures/families/mpnet) on its reference
/// input, whose graph takes the remaining heads' rows of the shared relative-position bias.
#[test]
fn a_model_with_pruned_heads_exports_to_onnx_with_kds_logits() {
    let root = tempfile::tempdir().unwrap();
    let bert = root.path().join("bert");
    tiny_classifier(&bert);
    let mpnet = root.path().join("mpnet");
    std::fs::create_dir(&mpnet).unwrap();
    let fixture = common::workspace_root().join("tests/fixtures/families/mpnet");
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture.join(file), mpnet.join(file)).unwrap();
    }
    // kd loads a model with its tokenizer, here one of the fixture's 99 tokens; the reference
    // input is ids already.
    let special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].map(String::from);
    let vocab: Vec<String> = special
        .into_iter()
        .chain((5..99).map(|id| format!("t{id}")))
        .collect();
    std::fs::write(mpnet.join("vocab.txt"), vocab.join("\n")).unwrap();
    let reference =
        candle_core::safetensors::load(fixture.join("expected.safetensors"), &Device::Cpu).unwrap();
    let ids = |name: &str| reference[name].to_dtype(DType::U32).unwrap();
    let mpnet_input = BertInput {
        input_ids: ids("input_ids"),
        token_type_ids: ids("token_type_ids"),
        attention_mask: ids("attention_mask"),
    };
    let remove = BTreeMap::from([(0, BTreeSet::from([1, 3])), (1, BTreeSet::from([0]))]);
    for original in [bert, mpnet] {
        let name = original.file_name().unwrap().to_string_lossy().into_owned();
        let pruned = TaskModel::load(&ModelFiles::from_dir(&original).unwrap(), 64, &Device::Cpu)
            .unwrap()
            .prune_heads(&remove)
            .unwrap();
        let model = root.path().join(format!("{name}-pruned"));
        std::fs::create_dir(&model).unwrap();
        pruned.save(&model).unwrap();
        kd_teacher::copy_tokenizer_files(&original, &model).unwrap();
        let onnx = root.path().join(format!("{name}-onnx"));
        let options = ExportOptions {
            format: Format::Onnx,
            ..ExportOptions::default()
        };
        export(&ModelFiles::from_dir(&model).unwrap(), &onnx, &options).unwrap();
        let inputs = if name == "mpnet" {
            vec![mpnet_input.clone()]
        } else {
            [SENTENCES.len(), 1]
                .map(|n| common::text_batch(&pruned, &SENTENCES[..n], None).input)
                .to_vec()
        };
        for input in inputs {
            let (logits, _) = pruned.model.forward(&input, Mode::Inference).unwrap();
            let shape = input.input_ids.dims2().unwrap();
            let difference =
                common::max_abs_diff(&tract_logits(&onnx.join("model.onnx"), &input), &logits);
            assert!(
                difference < 1e-4,
                "{name}, tract, input {shape:?}: {difference}"
            );
            if let Some((theirs, version)) = common::onnx_runtime_logits(&onnx, &input) {
                let difference = common::max_abs_diff(&theirs, &logits);
                assert!(
                    difference < 1e-4,
                    "{name}, ONNX Runtime {version}, input {shape:?}: {difference}"
                );
            }
        }
    }
}

/// `kd export` writes its directory whole: a non-empty one is refused without `--force`, and
/// with it an earlier model is replaced (none of its files left beside the new ones) while a
/// directory of other files is kept; an export that fails (texts that prune the vocabulary to
/// nothing) leaves nothing behind.
#[test]
fn kd_export_replaces_an_earlier_model_whole_and_reports_what_it_wrote() {
    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("model");
    tiny_classifier(&model);
    let mine = root.path().join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join("keep.txt"), "mine").unwrap();
    let export_to = |out: &Path, options: &[&str]| {
        let mut args = vec!["export", "--model", model.to_str().unwrap()];
        args.extend(["--out", out.to_str().unwrap()]);
        args.extend(options);
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>()
    };
    fn as_str(args: &[String]) -> Vec<&str> {
        args.iter().map(String::as_str).collect()
    }
    let error = common::kd_err(&as_str(&export_to(&mine, &[])));
    assert!(error.contains("not empty"), "{error}");
    let error = common::kd_err(&as_str(&export_to(&mine, &["--force"])));
    assert!(error.contains("holds no model"), "{error}");
    assert_eq!(
        std::fs::read_to_string(mine.join("keep.txt")).unwrap(),
        "mine"
    );

    let out = root.path().join("out");
    common::kd_ok(&as_str(&export_to(&out, &["--format", "onnx"])));
    assert!(out.join("model.onnx").is_file());
    let report = common::kd_ok(&as_str(&export_to(
        &out,
        &["--dtype", "f16", "--quantize", "int8", "--force"],
    )));
    let report: serde_json::Value = serde_json::from_str(report.trim()).unwrap();
    assert_eq!(report["precision"], "f16");
    assert_eq!(report["quantized_tensors"], 2 * 6 + 2);
    assert!(report["weights_bytes_after"].as_u64() < report["weights_bytes_before"].as_u64());
    assert!(
        !out.join("model.onnx").exists(),
        "the earlier export's graph is gone"
    );
    let eval = common::kd_ok(&["eval", "--model", out.to_str().unwrap(), "--task", "sst2"]);
    assert!(eval.contains("accuracy"), "{eval}");

    let blank = root.path().join("blank.txt");
    std::fs::write(&blank, "\n  \n").unwrap();
    let failed = root.path().join("failed");
    let error = common::kd_err(&as_str(&export_to(
        &failed,
        &["--prune-vocab", blank.to_str().unwrap()],
    )));
    assert!(error.contains("hold no text"), "{error}");
    assert!(!failed.exists());
    let leftovers: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn kd_compare_puts_an_export_beside_its_original() {
    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("model");
    tiny_classifier(&model);
    let options = ExportOptions {
        precision: Precision::F16,
        quantize: Some(Quantization::Int8),
        ..ExportOptions::default()
    };
    let small = exported(root.path(), "small", options);
    let dev = root.path().join("dev.tsv");
    let sst2 = std::fs::read_to_string(common::glue_dir("SST-2").join("dev.tsv")).unwrap();
    std::fs::write(&dev, sst2.lines().take(41).collect::<Vec<_>>().join("\n")).unwrap();
    let out = root.path().join("compare");
    let compare = |other: &Path| -> Vec<String> {
        let args = [
            "compare",
            "--models",
            model.to_str().unwrap(),
            other.to_str().unwrap(),
        ];
        let data = [
            "--task",
            "sst2",
            "--dev",
            dev.to_str().unwrap(),
            "--bootstrap",
            "200",
        ];
        args.iter()
            .chain(&data)
            .map(|arg| arg.to_string())
            .collect()
    };
    let mut args = compare(&small);
    args.extend(["--out".to_string(), out.to_str().unwrap().to_string()]);
    let table = common::kd_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(table.contains("| accuracy |"), "{table}");
    for chart in ["metric-latency", "metric-size"] {
        for format in ["png", "svg"] {
            let path = out.join(format!("{chart}.{format}"));
            assert!(path.is_file(), "{} missing (no font?)", path.display());
        }
    }
    assert_eq!(
        std::fs::read_to_string(out.join("compare.md"))
            .unwrap()
            .trim(),
        table.trim()
    );
    let rows: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("compare.json")).unwrap()).unwrap();
    let [original, export] = rows.as_array().unwrap().as_slice() else {
        panic!("{rows}");
    };
    assert_eq!(original["agreement"], 1.0);
    assert_eq!(original["mcnemar"]["p_value"], 1.0);
    assert!(export["agreement"].as_f64().unwrap() >= 0.9, "{export}");
    assert!(
        export["kl_to_reference"].as_f64().unwrap() < 0.01,
        "{export}"
    );
    assert!(export["weights_mb"].as_f64() < original["weights_mb"].as_f64());
    assert_eq!(export["params"], original["params"]);
    for row in [original, export] {
        let (low, high) = (row["interval"][0].as_f64(), row["interval"][1].as_f64());
        assert!(
            low <= row["value"].as_f64() && row["value"].as_f64() <= high,
            "{row}"
        );
        assert!(row["p50_ms"].as_f64().unwrap() > 0.0);
        assert!(row["peak_rss_mb"].as_f64().unwrap() > 0.0);
    }

    // An ONNX export runs in ONNX Runtime beside kd's rows (where a Python has it: always in
    // CI); without --onnx-python, kd says what it needs.
    let onnx_options = ExportOptions {
        format: Format::Onnx,
        ..ExportOptions::default()
    };
    let onnx = exported(root.path(), "onnx", onnx_options);
    let mut args = compare(&onnx);
    // Refused before any model is timed or the output directory made.
    let refused_out = root.path().join("refused");
    let mut refused = args.clone();
    refused.extend(["--out".to_string(), refused_out.display().to_string()]);
    let error = common::kd_err(&refused.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(error.contains("--onnx-python"), "{error}");
    assert!(!refused_out.exists());
    let mut few = compare(&small);
    *few.last_mut().unwrap() = "5".into();
    let error = common::kd_err(&few.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(error.contains("too few resamples"), "{error}");
    if let Some(python) = common::onnx_python("kd compare --onnx-python") {
        args.extend(["--onnx-python".to_string(), python.display().to_string()]);
        let table = common::kd_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let row = table
            .lines()
            .find(|line| line.contains("(onnxruntime)"))
            .unwrap_or_else(|| panic!("{table}"));
        // Same answers as kd's (agreement 100%, KL 0.00), same parameters.
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(cells[4], "100.00%", "{row}");
        assert_eq!(cells[5], "0.00", "{row}");
        let original_row = table
            .lines()
            .find(|line| line.contains("/model |"))
            .unwrap();
        let original_cells: Vec<&str> = original_row.split('|').map(str::trim).collect();
        assert_eq!(cells[2], original_cells[2], "{table}");
        assert_eq!(cells[7..9], original_cells[7..9], "{table}");
    }
}
