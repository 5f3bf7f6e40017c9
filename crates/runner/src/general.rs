//! General distillation: `kd distill` with a recipe whose `[data]` names a `corpus`. The
//! student learns a pre-trained teacher backbone's layers (TinyBERT's first stage) and, with a
//! masked-LM head, DistilBERT's `mlm` and the teacher's masked-LM distribution, on packed
//! unlabeled text without a task. The result is a backbone directory that task recipes start
//! from (`student.init`, `student.from`).

use crate::distill::{
    DistillOptions, output_dir, run_stages, step_loss, train_stage, trained_parameters,
};
use crate::recipe::{Recipe, Stage, StudentSpec};
use anyhow::{Context, Result, bail, ensure};
use candle_core::{D, DType, Tensor, Var};
use kd_bert::Mode;
use kd_data::{
    CorpusSource, EncodedExample, Masking, PackedCorpus, collate, expand_globs, pack_corpus,
};
use kd_losses::{DistillOutputs, EncoderShape, LossBatch, LossBreakdown, LossKind, Objective};
use kd_teacher::{Backbone, ModelFiles};
use kd_train::{Progress, StepLoss, Trainable};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

/// BERT's share of tokens chosen for the masked-LM loss.
const MASKING_PROBABILITY: f64 = 0.15;
/// Sequences set aside to measure the objective on, at most one in ten of the corpus.
const HELD_OUT_SEQUENCES: usize = 256;
const EVAL_BATCH_SIZE: usize = 64;
/// Seeds the held-out set's masking, the same at every evaluation.
const HELD_OUT_SEED: u64 = 0x5EED;

/// What a general-distillation run prints and writes to `summary.json`.
#[derive(Debug, Serialize)]
pub struct GeneralSummary {
    /// The recipe's `name`.
    pub recipe: String,
    /// The teacher backbone as the recipe names it: hub id or directory.
    pub teacher: String,
    /// Corpus files read (`data.corpus`'s patterns expanded).
    pub corpus_files: usize,
    /// Sequences the corpus packs into, of at most `data.max_seq_len` tokens, the held-out ones
    /// included.
    pub sequences: usize,
    /// Tokens in those sequences, special tokens included.
    pub tokens: usize,
    /// Sequences set aside to measure the objective on: one in ten of the corpus, at most 256.
    pub held_out_sequences: usize,
    /// The student backbone.
    pub student: StudentSummary,
    /// Each stage run, in the recipe's order (up to the interrupted one).
    pub stages: Vec<GeneralStageSummary>,
    /// Seconds this call took, from loading the teacher to the last stage's end.
    pub wall_time_s: f64,
    /// Whether a stop request ended the run early: the stage's checkpoint is saved for
    /// `--resume`, and no final backbone is written.
    pub interrupted: bool,
    /// The command line (or the caller) that started the run.
    pub command: String,
}

/// A general-distilled student's shape and size.
#[derive(Debug, Serialize)]
pub struct StudentSummary {
    /// Encoder layers.
    pub layers: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Parameters, embeddings and any masked-LM head included.
    pub params: usize,
    /// Whether it has a masked-LM head (a stage's objective reads masked-LM predictions), which
    /// is saved with it.
    pub mlm_head: bool,
}

/// What one general-distillation stage did.
#[derive(Debug, Serialize)]
pub struct GeneralStageSummary {
    /// The stage's name; its folder is `N-name/`.
    pub name: String,
    /// Updates trained, over every call of a resumed run.
    pub steps: usize,
    /// Passes over the training sequences: `steps` over the updates an epoch takes (below the
    /// stage's `epochs` when `max_steps` or an interruption stopped it).
    pub epochs_done: f64,
    /// Training tokens a second, padding and evaluation excluded.
    pub tokens_per_s: f64,
    /// Seconds spent training, evaluation excluded.
    pub train_seconds: f64,
    /// The objective on the held-out sequences at the last evaluation, by component.
    pub held_out: BTreeMap<String, f64>,
}

/// One general stage: a student, its teacher backbone, the objective, and the packed corpus.
struct GeneralDistillation<'a> {
    student: &'a Backbone,
    teacher: &'a Backbone,
    objective: &'a Objective,
    corpus: &'a PackedCorpus,
    /// Corpus sequences to train on, and those to evaluate on.
    train: &'a [usize],
    held_out: &'a [usize],
    /// BERT's masking, when the objective reads masked-LM predictions.
    masking: Option<&'a Masking>,
    seed: u64,
}

impl GeneralDistillation<'_> {
    /// The objective on corpus sequences `sequences`, masked from `seed` when masking applies.
    fn objective_on(
        &self,
        sequences: impl Iterator<Item = usize>,
        seed: u64,
        mode: Mode,
        step: usize,
        total_steps: usize,
    ) -> Result<(LossBreakdown, Option<(Tensor, Tensor)>)> {
        let mut examples: Vec<EncodedExample> = sequences.map(|i| self.corpus.example(i)).collect();
        let masked = self
            .masking
            .map(|masking| masking.apply(&mut examples, &mut StdRng::seed_from_u64(seed)))
            .unwrap_or_default();
        let indices: Vec<usize> = (0..examples.len()).collect();
        let device = self.student.params.device();
        let batch = collate(&examples, &indices, device)?;
        let seq_len = batch.input.input_ids.dim(1)?;
        let positions: Vec<u32> = masked
            .iter()
            .map(|token| (token.example * seq_len + token.position) as u32)
            .collect();
        let positions = Tensor::new(positions, device)?;
        let labels: Vec<u32> = masked.iter().map(|token| token.original).collect();
        let labels = Tensor::new(labels, device)?;

        let maps = self.objective.attention_maps();
        let student_states = self.student.model.forward_with(&batch.input, mode, maps)?;
        let student_logits = match self.masking {
            Some(_) => Some(self.student.mlm_logits(&student_states, &positions)?),
            None => None,
        };
        let teacher = if self.objective.needs_teacher() {
            let states = self
                .teacher
                .model
                .forward_with(&batch.input, Mode::Inference, maps)?;
            let logits = match self.teacher.mlm_head {
                Some(_) if self.objective.needs_teacher_logits() => {
                    Some(self.teacher.mlm_logits(&states, &positions)?)
                }
                _ => None,
            };
            Some((logits, states))
        } else {
            None
        };
        let teachers: Vec<DistillOutputs> = teacher
            .iter()
            .map(|(logits, states)| DistillOutputs {
                logits: logits.as_ref(),
                encoder: Some(states),
            })
            .collect();
        let breakdown = self.objective.compute(
            &DistillOutputs {
                logits: student_logits.as_ref(),
                encoder: Some(&student_states),
            },
            &teachers,
            &LossBatch {
                attention_mask: &batch.input.attention_mask,
                labels: Some(&labels),
                label_mask: None,
            },
            step,
            total_steps,
        )?;
        Ok((breakdown, student_logits.map(|logits| (logits, labels))))
    }
}

impl Trainable for GeneralDistillation<'_> {
    fn parameters(&self) -> Vec<(String, Var)> {
        trained_parameters(&self.student.params, self.objective)
    }

    fn example_lengths(&self) -> Vec<usize> {
        let lengths = self.corpus.lengths();
        self.train.iter().map(|&i| lengths[i]).collect()
    }

    fn loss(&self, indices: &[usize], step: usize, total_steps: usize) -> Result<StepLoss> {
        // Each step's masking depends on the seed and the step alone, so a resumed run masks
        // as an uninterrupted one would.
        let seed = self.seed ^ (step as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let sequences = indices.iter().map(|&i| self.train[i]);
        let (breakdown, _) = self.objective_on(
            sequences,
            seed,
            Mode::Train { dropout: true },
            step,
            total_steps,
        )?;
        Ok(step_loss(breakdown))
    }

    fn reseed_dropout(&self, seed: u64) {
        self.student.model.dropout_rng().reseed(seed);
    }

    /// The objective on the held-out sequences (the same masking every time), by component,
    /// as `loss` in total, and the masked-LM accuracy when the student predicts tokens.
    fn evaluate(&self) -> Result<BTreeMap<String, f64>> {
        let mut sums = BTreeMap::new();
        let (mut correct, mut predicted) = (0usize, 0usize);
        let batches = self.held_out.chunks(EVAL_BATCH_SIZE);
        let count = batches.len() as f64;
        for (index, batch) in batches.enumerate() {
            let seed = HELD_OUT_SEED.wrapping_add(index as u64);
            // Scheduled weights are taken at their final values.
            let (breakdown, logits) =
                self.objective_on(batch.iter().copied(), seed, Mode::Inference, 1, 1)?;
            let total = breakdown.total.to_dtype(DType::F32)?.to_scalar::<f32>()?;
            *sums.entry("loss".to_string()).or_insert(0.0) += total as f64 / count;
            for (name, value) in breakdown.components {
                *sums.entry(name).or_insert(0.0) += value as f64 / count;
            }
            if let Some((logits, labels)) = logits {
                let hits = logits.argmax(D::Minus1)?.eq(&labels)?;
                correct += hits.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()? as usize;
                predicted += labels.elem_count();
            }
        }
        if predicted > 0 {
            sums.insert("mlm_accuracy".into(), correct as f64 / predicted as f64);
        }
        Ok(sums)
    }

    fn save_model(&self, dir: &Path) -> Result<()> {
        self.student.save(dir)
    }
}

/// Runs a general-distillation recipe into `options.out`: stage folders with their logs and
/// checkpoints, the student backbone at the top with `summary.json`.
pub fn run(recipe: &Recipe, options: &DistillOptions, stop: &AtomicBool) -> Result<GeneralSummary> {
    let started = Instant::now();
    let data = &recipe.data;
    data.ensure_corpus_only()?;
    if recipe.teacher.is_none() {
        bail!("general distillation learns from one teacher backbone: use [teacher]");
    }
    let teacher_files = ModelFiles::resolve(&recipe.main_teacher().model)?;
    let mut teacher =
        Backbone::load_for_inference(&teacher_files, data.max_seq_len, &options.device)
            .with_context(|| format!("cannot load teacher {}", recipe.main_teacher().model))?;
    teacher.model.set_precision(recipe.training.precision);
    let needs_mlm_head = check_stages(recipe, &teacher)?;
    let student = build_student(recipe, &teacher, needs_mlm_head)?;
    let objectives = recipe
        .stages
        .iter()
        .enumerate()
        .map(|(index, stage)| {
            Objective::new(
                &stage.objective,
                &[EncoderShape::from(&teacher.config)],
                EncoderShape::from(&student.config),
                &options.device,
                recipe.training.seed.wrapping_add(index as u64),
            )
            .with_context(|| format!("stage {}", stage.name))
        })
        .collect::<Result<Vec<_>>>()?;
    let files = expand_globs(&data.corpus)?;
    let corpus = load_corpus(&files, &teacher, data.max_seq_len, options.cache_dir)?;
    let (train_set, held_out) = split_held_out(&corpus, data.max_train_examples);
    ensure!(
        !train_set.is_empty(),
        "the corpus packs into {} sequences: too few to train on",
        corpus.len()
    );
    let masking = needs_mlm_head
        .then(|| {
            Masking::new(
                &teacher.tokenizer,
                teacher.config.vocab_size,
                MASKING_PROBABILITY,
            )
        })
        .transpose()?;
    // Everything is loaded and checked before the output directory is touched.
    let out = output_dir(recipe, options)?;
    eprintln!(
        "{}: teacher {} ({} layers x {}), student {} layers x {} ({} parameters{}), {} sequences \
         ({} tokens) from {} files, {} held out",
        recipe.name,
        recipe.main_teacher().model,
        teacher.config.num_hidden_layers,
        teacher.config.hidden_size,
        student.config.num_hidden_layers,
        student.config.hidden_size,
        student.params.num_parameters(),
        if needs_mlm_head {
            ", masked-LM head"
        } else {
            ""
        },
        train_set.len(),
        train_set
            .iter()
            .map(|&i| corpus.sequence(i).len())
            .sum::<usize>(),
        files.len(),
        held_out.len(),
    );
    let run_stage = |index: usize, stage: &Stage, dir: &Path| {
        let objective = &objectives[index];
        let task = GeneralDistillation {
            student: &student,
            teacher: &teacher,
            objective,
            corpus: &corpus,
            train: &train_set,
            held_out: &held_out,
            masking: masking
                .as_ref()
                .filter(|_| objective.needs_student_logits()),
            seed: recipe.training.seed.wrapping_add(index as u64),
        };
        let state = train_stage(
            recipe,
            stage,
            dir,
            &task,
            "loss",
            true,
            options.resume,
            stop,
        )?;
        let steps_per_epoch = train_set.len().div_ceil(recipe.training.batch_size);
        let summary = GeneralStageSummary {
            name: stage.name.clone(),
            steps: state.step,
            epochs_done: state.step as f64 / steps_per_epoch as f64,
            tokens_per_s: state.tokens_per_s(),
            train_seconds: state.train_seconds,
            held_out: state
                .evaluations
                .last()
                .map(|evaluation| evaluation.dev.clone())
                .unwrap_or_default(),
        };
        Ok((state, summary))
    };
    let (stages, interrupted) = run_stages(recipe, &out, &student.params, run_stage)?;
    if !interrupted {
        student.save(out.path())?;
    }
    let summary = GeneralSummary {
        recipe: recipe.name.clone(),
        teacher: recipe.main_teacher().model.clone(),
        corpus_files: files.len(),
        sequences: corpus.len(),
        tokens: corpus.tokens(),
        held_out_sequences: held_out.len(),
        student: StudentSummary {
            layers: student.config.num_hidden_layers,
            hidden: student.config.hidden_size,
            params: student.params.num_parameters(),
            mlm_head: student.mlm_head.is_some(),
        },
        stages,
        wall_time_s: started.elapsed().as_secs_f64(),
        interrupted,
        command: options.command.clone(),
    };
    kd_bert::write_json_atomically(&out.join("summary.json"), &summary)?;
    Ok(summary)
}

/// Checks each stage's components against what general distillation has, and returns whether
/// the student needs a masked-LM head.
fn check_stages(recipe: &Recipe, teacher: &Backbone) -> Result<bool> {
    let mut needs_head = false;
    for stage in &recipe.stages {
        for component in &stage.objective.components {
            let kind = component.kind;
            if kind == LossKind::Hard {
                bail!(
                    "stage {}: general distillation has no task labels for `hard`; `mlm` is its \
                     loss against the masked tokens",
                    stage.name
                );
            }
            if kind.compares_teacher_predictions() && teacher.mlm_head.is_none() {
                bail!(
                    "stage {}: `{}` compares the teacher's masked-LM predictions, but teacher \
                     {} has no masked-LM head (no cls.predictions.* or lm_head.* weights); use `mlm` with \
                     `cosine` and layer losses, or a teacher with an MLM head",
                    stage.name,
                    kind.name(),
                    recipe.main_teacher().model
                );
            }
            needs_head |= kind == LossKind::Mlm || kind.compares_teacher_predictions();
        }
    }
    Ok(needs_head)
}

fn build_student(recipe: &Recipe, teacher: &Backbone, mlm_head: bool) -> Result<Backbone> {
    let seed = recipe.training.seed;
    let max_len = recipe.data.max_seq_len;
    let device = teacher.params.device();
    let mut student = match &recipe.student {
        StudentSpec::Distilbert { layers, from, .. } => {
            let loaded = from
                .as_ref()
                .map(|from| Backbone::load(&ModelFiles::resolve(from)?, max_len, device))
                .transpose()?;
            let source = loaded.as_ref().unwrap_or(teacher);
            kd_student::check_vocabulary(&teacher.tokenizer, &source.tokenizer)?;
            let layers = layers
                .clone()
                .unwrap_or_else(|| kd_student::every_other_layer(source.config.num_hidden_layers));
            kd_student::distilbert_backbone(source, &layers, mlm_head, seed)?
        }
        StudentSpec::Tinybert { shape, init: None } => {
            kd_student::tinybert_backbone(teacher, *shape, mlm_head, seed)?
        }
        StudentSpec::Tinybert {
            shape,
            init: Some(init),
        } => {
            let student = Backbone::load(&ModelFiles::resolve(init)?, max_len, device)?;
            kd_student::check_init_shape(init, &student.config, *shape)?;
            ensure!(
                student.mlm_head.is_some() || !mlm_head,
                "student checkpoint {init} has no masked-LM head, which the objective needs"
            );
            kd_student::check_vocabulary(&teacher.tokenizer, &student.tokenizer)
                .with_context(|| format!("cannot start the student from {init}"))?;
            student
        }
        StudentSpec::Model { model } => bail!(
            "student kind = \"model\" ({model}) takes a task model as it is, for task \
             distillation; general distillation (a corpus in [data]) starts a student from a \
             checkpoint with kind = \"tinybert\" and `init`"
        ),
    };
    student.model.set_precision(recipe.training.precision);
    Ok(student)
}

fn load_corpus(
    files: &[std::path::PathBuf],
    teacher: &Backbone,
    max_len: usize,
    cache_dir: &Path,
) -> Result<PackedCorpus> {
    let started = Instant::now();
    let mut progress: Option<Progress> = None;
    let mut report = |read: u64, total: u64| {
        let bar = progress.get_or_insert_with(|| Progress::new(total, "tokenise (bytes)"));
        bar.set_position(read);
    };
    let (corpus, source) = pack_corpus(files, &teacher.tokenizer, max_len, cache_dir, &mut report)?;
    if let Some(bar) = progress {
        bar.finish();
    }
    eprintln!(
        "corpus: {} sequences, {} tokens, {} in {:.1} s",
        corpus.len(),
        corpus.tokens(),
        match source {
            CorpusSource::Tokenised => "tokenised and cached",
            CorpusSource::Cached => "read from the cache",
        },
        started.elapsed().as_secs_f64()
    );
    Ok(corpus)
}

/// Splits the corpus into training sequences (the first `limit`, when capped) and every
/// n-th sequence held out, so the held-out set samples every file.
fn split_held_out(corpus: &PackedCorpus, limit: Option<usize>) -> (Vec<usize>, Vec<usize>) {
    let held = HELD_OUT_SEQUENCES.min(corpus.len() / 10).max(1);
    let stride = corpus.len().div_ceil(held).max(1);
    let (held_out, train): (Vec<usize>, Vec<usize>) =
        (0..corpus.len()).partition(|i| i % stride == stride / 2);
    let train = train
        .into_iter()
        .take(limit.unwrap_or(usize::MAX))
        .collect();
    (train, held_out)
}
