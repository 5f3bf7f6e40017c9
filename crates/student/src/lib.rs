//! Students for kd. A DistilBERT-style student keeps a subset of the teacher's layers (one in
//! two by default) and copies them, with the embeddings and optionally the task head; or it
//! copies them from another model that reads the same tokens at the same width, such as the
//! teacher's pre-trained backbone (DistilBERT's students start from pre-trained BERT). A
//! TinyBERT-style student has any depth, width, heads and FFN size, shares the teacher's
//! vocabulary and tokenizer, and is a BERT model from BERT's random initialisation whatever
//! the teacher's family. Both are
//! [`TaskModel`]s, so they save as HF directories that `kd eval` and `kd predict` load; for
//! general distillation, both come as [`Backbone`]s without a task head. A student is built on
//! the device of the model it is made from.

use anyhow::{Result, bail};
use kd_bert::{BertConfig, Params};
use kd_data::TextTokenizer;
use kd_teacher::{Backbone, TaskModel};
use serde::{Deserialize, Serialize};

/// The teacher layers a DistilBERT-style student keeps by default: one in two from the first,
/// as DistilBERT does.
pub fn every_other_layer(teacher_layers: usize) -> Vec<usize> {
    (0..teacher_layers).step_by(2).collect()
}

/// A DistilBERT-style student: student layer `i` is a copy of teacher layer `layers[i]`; the
/// embeddings and pooler are copied; the task head is copied or freshly initialised.
pub fn distilbert_student(
    teacher: &TaskModel,
    layers: &[usize],
    copy_head: bool,
    seed: u64,
) -> Result<TaskModel> {
    let config = layer_subset_config(&teacher.config, layers)?;
    let student = TaskModel::initialised(
        config,
        &teacher.tokenizer_dir,
        seed,
        teacher.tokenizer.max_len(),
        teacher.params.device(),
    )?;
    copy_layers(&teacher.params, &student.params, layers, |name| {
        name.starts_with("classifier.") && !copy_head
    })?;
    Ok(student)
}

/// A DistilBERT-style student for general distillation: copies of the teacher backbone's
/// `layers` and embeddings, with a masked-LM head if asked (the teacher's when it has one,
/// else freshly initialised).
pub fn distilbert_backbone(
    teacher: &Backbone,
    layers: &[usize],
    mlm_head: bool,
    seed: u64,
) -> Result<Backbone> {
    let config = layer_subset_config(&teacher.config, layers)?;
    let student = Backbone::initialised(
        config,
        &teacher.tokenizer_dir,
        mlm_head,
        seed,
        teacher.tokenizer.max_len(),
        teacher.params.device(),
    )?;
    let fresh_head = teacher.mlm_head.is_none();
    copy_layers(&teacher.params, &student.params, layers, |name| {
        fresh_head && name.starts_with("cls.")
    })?;
    Ok(student)
}

/// The teacher's config with as many layers as `layers` names, each checked to exist.
fn layer_subset_config(teacher: &BertConfig, layers: &[usize]) -> Result<BertConfig> {
    let teacher_layers = teacher.num_hidden_layers;
    if layers.is_empty() {
        bail!("a student needs at least one layer");
    }
    if let Some(&missing) = layers.iter().find(|&&l| l >= teacher_layers) {
        bail!(
            "the model whose layers the student copies has {teacher_layers} layers (0 to {}): \
             it has no layer {missing}; name the student's `layers` among them",
            teacher_layers - 1
        );
    }
    // A pruned teacher's layers keep their heads: student layer i has layer layers[i]'s.
    let pruned_heads = layers
        .iter()
        .enumerate()
        .filter_map(|(i, layer)| {
            let removed = teacher.pruned_heads.get(&layer.to_string())?;
            Some((i.to_string(), removed.clone()))
        })
        .collect();
    Ok(BertConfig {
        num_hidden_layers: layers.len(),
        pruned_heads,
        ..teacher.clone()
    })
}

/// Sets every student parameter but those `keep_fresh` names to its teacher counterpart
/// (student layer `i` from teacher layer `layers[i]`).
fn copy_layers(
    teacher: &Params,
    student: &Params,
    layers: &[usize],
    keep_fresh: impl Fn(&str) -> bool,
) -> Result<()> {
    for (name, var) in student.vars() {
        if keep_fresh(&name) {
            continue;
        }
        let source = teacher_name(&name, layers);
        let Some(teacher_var) = teacher.get(&source) else {
            bail!("the teacher has no parameter {source} for student parameter {name}");
        };
        var.set(teacher_var.as_tensor())?;
    }
    Ok(())
}

/// Checks that a DistilBERT-style student copied from `source` rather than from `teacher` can
/// be distilled from it: the same vocabulary (the student reads the teacher's token ids) and
/// the same width (the cosine loss compares their hidden states directly).
pub fn check_source(teacher: &TaskModel, source: &TaskModel) -> Result<()> {
    check_vocabulary(&teacher.tokenizer, &source.tokenizer)?;
    let (width, teacher_width) = (source.config.hidden_size, teacher.config.hidden_size);
    if width != teacher_width {
        bail!("the student's source model is {width} wide, the teacher {teacher_width}");
    }
    Ok(())
}

/// Refuses a student model whose vocabulary is not the teacher's: the teacher reads the
/// student's token ids, which would then name other words.
pub fn check_vocabulary(teacher: &TextTokenizer, student: &TextTokenizer) -> Result<()> {
    let (teacher, student) = (teacher.vocab(), student.vocab());
    if teacher != student {
        let differing = teacher
            .iter()
            .zip(&student)
            .position(|(a, b)| a != b)
            .unwrap_or(teacher.len().min(student.len()));
        bail!(
            "the student's model has a different vocabulary from the teacher's ({} and {} \
             tokens, the first difference at id {differing}): the teacher would read the \
             student's token ids as other words; start the student from a model with the \
             teacher's vocabulary",
            student.len(),
            teacher.len()
        );
    }
    Ok(())
}

/// The teacher parameter a DistilBERT-style student parameter is copied from.
fn teacher_name(student_name: &str, layers: &[usize]) -> String {
    const LAYER: &str = "bert.encoder.layer.";
    let Some(rest) = student_name.strip_prefix(LAYER) else {
        return student_name.to_string();
    };
    let (index, tail) = rest.split_once('.').expect("a layer parameter name");
    let index: usize = index.parse().expect("a layer index");
    format!("{LAYER}{}.{tail}", layers[index])
}

/// The shape of a TinyBERT-style student.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StudentShape {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub intermediate: usize,
}

/// A TinyBERT-style student of `shape`, with the teacher's vocabulary, tokenizer, positions
/// and task head labels, and BERT's initialisation (normal, std 0.02) from `seed`.
pub fn tinybert_student(teacher: &TaskModel, shape: StudentShape, seed: u64) -> Result<TaskModel> {
    TaskModel::initialised(
        shape.config(&teacher.config)?,
        &teacher.tokenizer_dir,
        seed,
        teacher.tokenizer.max_len(),
        teacher.params.device(),
    )
}

/// A TinyBERT-style student for general distillation: [`tinybert_student`]'s shape and
/// initialisation from a teacher backbone, with a masked-LM head if asked.
pub fn tinybert_backbone(
    teacher: &Backbone,
    shape: StudentShape,
    mlm_head: bool,
    seed: u64,
) -> Result<Backbone> {
    Backbone::initialised(
        shape.config(&teacher.config)?,
        &teacher.tokenizer_dir,
        mlm_head,
        seed,
        teacher.tokenizer.max_len(),
        teacher.params.device(),
    )
}

impl std::fmt::Display for StudentShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} layers x {}, {} heads, feed-forward {}",
            self.layers, self.hidden, self.heads, self.intermediate
        )
    }
}

/// Refuses a checkpoint `init` (of `config`) to start a TinyBERT-style student of `shape`
/// when its shape is another: the recipe's shape is what the run records and reports.
pub fn check_init_shape(init: &str, config: &BertConfig, shape: StudentShape) -> Result<()> {
    let found = StudentShape {
        layers: config.num_hidden_layers,
        hidden: config.hidden_size,
        heads: config.num_attention_heads,
        intermediate: config.intermediate_size,
    };
    if found != shape {
        bail!(
            "student checkpoint {init} is {found}; the recipe's shape says {shape}: make them \
             agree"
        );
    }
    Ok(())
}

impl StudentShape {
    /// The teacher's config in this shape, in BERT's architecture whatever the teacher's
    /// family (TinyBERT's students are BERT models reading the teacher's tokens).
    fn config(self, teacher: &BertConfig) -> Result<BertConfig> {
        let config = BertConfig {
            num_hidden_layers: self.layers,
            hidden_size: self.hidden,
            num_attention_heads: self.heads,
            intermediate_size: self.intermediate,
            pruned_heads: Default::default(),
            ..teacher.in_bert_architecture()
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;
    use kd_bert::{BertInput, Mode};
    use std::path::Path;

    const VOCAB: &str = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\ngood\nbad\nfilm\n";

    /// A 4-layer, 16-wide teacher with a 2-class head and a toy WordPiece vocabulary.
    fn tiny_teacher(dir: &Path) -> TaskModel {
        tiny_model(dir, VOCAB, 16, 3)
    }

    fn tiny_model(dir: &Path, vocab: &str, hidden: usize, seed: u64) -> TaskModel {
        std::fs::write(dir.join("vocab.txt"), vocab).unwrap();
        let mut config: BertConfig = serde_json::from_value(serde_json::json!({
            "vocab_size": 8, "hidden_size": hidden, "num_hidden_layers": 4,
            "num_attention_heads": 4, "intermediate_size": 32, "max_position_embeddings": 16,
        }))
        .unwrap();
        config.set_classification_head(
            &["neg".into(), "pos".into()],
            kd_bert::ProblemType::SingleLabelClassification,
        );
        TaskModel::initialised(config, dir, seed, 16, &candle_core::Device::Cpu).unwrap()
    }

    fn tensor(model: &TaskModel, name: &str) -> Tensor {
        model.params.get(name).unwrap().as_tensor().clone()
    }

    fn same(a: &Tensor, b: &Tensor) -> bool {
        a.dims() == b.dims()
            && (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                == 0.0
    }

    fn input() -> BertInput {
        let device = candle_core::Device::Cpu;
        BertInput {
            input_ids: Tensor::new(&[[2u32, 5, 7, 3]], &device).unwrap(),
            token_type_ids: Tensor::new(&[[0u32, 0, 0, 0]], &device).unwrap(),
            attention_mask: Tensor::new(&[[1u32, 1, 1, 1]], &device).unwrap(),
        }
    }

    #[test]
    fn distilbert_student_copies_every_other_teacher_layer() {
        let dir = tempfile::tempdir().unwrap();
        let teacher = tiny_teacher(dir.path());
        assert_eq!(every_other_layer(4), vec![0, 2]);
        assert_eq!(every_other_layer(6), vec![0, 2, 4]);
        let student = distilbert_student(&teacher, &every_other_layer(4), true, 9).unwrap();
        assert_eq!(student.config.num_hidden_layers, 2);
        let layer = |i: usize| format!("bert.encoder.layer.{i}.attention.self.query.weight");
        assert!(same(
            &tensor(&student, &layer(1)),
            &tensor(&teacher, &layer(2))
        ));
        assert!(!same(
            &tensor(&student, &layer(1)),
            &tensor(&teacher, &layer(1))
        ));
        for name in [
            "bert.embeddings.word_embeddings.weight",
            "bert.pooler.dense.weight",
            "classifier.weight",
        ] {
            assert!(
                same(&tensor(&student, name), &tensor(&teacher, name)),
                "{name}"
            );
        }
        let fresh_head = distilbert_student(&teacher, &[1, 3], false, 9).unwrap();
        assert!(!same(
            &tensor(&fresh_head, "classifier.weight"),
            &tensor(&teacher, "classifier.weight")
        ));
        // Copying every layer reproduces the teacher exactly.
        let clone = distilbert_student(&teacher, &[0, 1, 2, 3], true, 9).unwrap();
        let logits = |m: &TaskModel| m.model.forward(&input(), Mode::Inference).unwrap().0;
        assert!(same(&logits(&clone), &logits(&teacher)));
    }

    #[test]
    fn a_student_copied_from_another_source_takes_its_layers() {
        let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
        let teacher = tiny_teacher(dirs[0].path());
        let source = tiny_model(dirs[1].path(), VOCAB, 16, 8);
        check_source(&teacher, &source).unwrap();
        let student = distilbert_student(&source, &[1, 3], false, 9).unwrap();
        let name = "bert.encoder.layer.0.output.dense.weight";
        let source_layer = "bert.encoder.layer.1.output.dense.weight";
        assert!(same(
            &tensor(&student, name),
            &tensor(&source, source_layer)
        ));
        assert!(!same(
            &tensor(&student, name),
            &tensor(&teacher, source_layer)
        ));

        let other_words = VOCAB.replace("film", "movie");
        let error = |source: &TaskModel| check_source(&teacher, source).unwrap_err().to_string();
        let renamed = tiny_model(dirs[2].path(), &other_words, 16, 8);
        assert!(
            error(&renamed).contains("vocabulary"),
            "{}",
            error(&renamed)
        );
        let narrow = tiny_model(dirs[3].path(), VOCAB, 8, 8);
        assert!(error(&narrow).contains("8 wide"), "{}", error(&narrow));
    }

    #[test]
    fn a_layer_the_teacher_lacks_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let teacher = tiny_teacher(dir.path());
        let error = distilbert_student(&teacher, &[0, 4], true, 1)
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("no layer 4"), "{error}");
        assert!(distilbert_student(&teacher, &[], true, 1).is_err());
    }

    #[test]
    fn tinybert_student_has_its_shape_and_round_trips_through_disk() {
        let dir = tempfile::tempdir().unwrap();
        let teacher = tiny_teacher(dir.path());
        let shape = StudentShape {
            layers: 1,
            hidden: 8,
            heads: 2,
            intermediate: 12,
        };
        let student = tinybert_student(&teacher, shape, 5).unwrap();
        // embeddings (8+16+2)*8 + LN 16; layer: 3*(8*8+8) + (8*8+8) + LN 16 + (8*12+12)
        // + (12*8+8) + LN 16; pooler 8*8+8; classifier 8*2+2.
        let expected = 26 * 8 + 16 + 4 * 72 + 16 + 108 + 104 + 16 + 72 + 18;
        assert_eq!(student.params.num_parameters(), expected);
        let weight = tensor(&student, "bert.encoder.layer.0.intermediate.dense.weight");
        assert_eq!(weight.dims(), &[12, 8]);
        let bad = StudentShape { heads: 3, ..shape };
        assert!(tinybert_student(&teacher, bad, 5).is_err());

        let out = tempfile::tempdir().unwrap();
        student.save(out.path()).unwrap();
        let files = kd_teacher::ModelFiles::from_dir(out.path()).unwrap();
        let reloaded = TaskModel::load(&files, 16, &candle_core::Device::Cpu).unwrap();
        assert_eq!(reloaded.labels, vec!["neg", "pos"]);
        let logits = |m: &TaskModel| m.model.forward(&input(), Mode::Inference).unwrap().0;
        assert!(same(&logits(&reloaded), &logits(&student)));
    }
}
