//! The training loop shared by fine-tuning and distillation: length-bucketed epochs, AdamW
//! with warmup and decay, evaluation at an interval with the best model kept, a JSONL log of
//! every loss component, checkpoints to resume from, and a clean stop on Ctrl-C or NaN.

use crate::optim::{AdamW, AdamWConfig, LinearSchedule};
use crate::run::{Progress, RunDir};
use anyhow::{Context, Result, bail};
use candle_core::{Tensor, Var};
use rand::{SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Instant;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    /// Fraction of the updates spent warming the learning rate up.
    pub warmup: f64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    /// Stop after this many updates (a quick setting).
    pub max_steps: Option<usize>,
    pub seed: u64,
    /// Evaluate and checkpoint every this many updates, besides the end of each epoch.
    pub eval_every: Option<usize>,
    /// Which model to keep: the best evaluation's or the last's.
    #[serde(default)]
    pub keep: Keep,
    /// The metric is a loss: lower is better.
    #[serde(default)]
    pub minimize: bool,
}

/// Which model a run keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    /// The best by the dev metric.
    #[default]
    Best,
    /// The last (for stages whose dev metric means nothing yet, such as TinyBERT's
    /// intermediate-layer distillation).
    Last,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        Self {
            epochs: 3,
            batch_size: 32,
            lr: 5e-5,
            warmup: 0.1,
            weight_decay: 0.01,
            max_grad_norm: 1.0,
            max_steps: None,
            seed: 42,
            eval_every: None,
            keep: Keep::Best,
            minimize: false,
        }
    }
}

impl TrainerConfig {
    /// Refuses settings that would train nothing or the wrong way (no epochs or steps, an
    /// empty batch or one the job's ranks cannot share, a learning rate that is not positive,
    /// warmup beyond the whole run), each named as recipes and the command line name it;
    /// before any output is written.
    pub fn check(&self) -> Result<()> {
        let at_least_one = [
            ("epochs", Some(self.epochs)),
            ("batch_size", Some(self.batch_size)),
            ("max_steps", self.max_steps),
            ("eval_every", self.eval_every),
        ];
        for (name, value) in at_least_one {
            if value == Some(0) {
                bail!("{name} (--{}) must be at least 1", name.replace('_', "-"));
            }
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("lr (--lr) must be a positive number, got {}", self.lr);
        }
        if !(0.0..=1.0).contains(&self.warmup) {
            bail!(
                "warmup (--warmup) is the fraction of the updates spent warming up: it must lie \
                 in [0, 1], got {}",
                self.warmup
            );
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            bail!(
                "weight_decay (--weight-decay) must not be negative, got {}",
                self.weight_decay
            );
        }
        let ranks = kd_parallel::world().size();
        if self.batch_size < ranks {
            bail!(
                "a batch of {} examples cannot be shared by {ranks} ranks: raise batch_size to \
                 at least the number of ranks (it is the global batch), or run fewer ranks",
                self.batch_size,
            );
        }
        Ok(())
    }
}

/// The loss of one batch: the total to minimise and each component's value, for the log.
pub struct StepLoss {
    pub total: Tensor,
    pub components: BTreeMap<String, f64>,
}

/// What the loop trains.
pub trait Trainable {
    /// Every trained parameter under a unique name (a student's and its losses' projections).
    fn parameters(&self) -> Vec<(String, Var)>;
    /// Training examples' lengths, for bucketing; batches are lists of their indices.
    fn example_lengths(&self) -> Vec<usize>;
    /// One epoch's batches, lists of example indices, drawn with `rng`; by default batches
    /// of similar lengths (see [`kd_data::batch_plan`]). Every epoch has as many batches.
    fn batch_plan(
        &self,
        lengths: &[usize],
        batch_size: usize,
        rng: &mut StdRng,
    ) -> Vec<Vec<usize>> {
        kd_data::batch_plan(lengths, batch_size, Some(rng))
    }
    /// The loss on the examples at `indices` at update `step` of `total_steps` (for scheduled
    /// loss weights and temperatures).
    fn loss(&self, indices: &[usize], step: usize, total_steps: usize) -> Result<StepLoss>;
    /// Reseeds dropout, so that a resumed run draws what an uninterrupted one would.
    fn reseed_dropout(&self, seed: u64);
    /// Dev metrics; the one [`train`] is given selects the best model (higher is better, or
    /// lower when [`TrainerConfig::minimize`]).
    fn evaluate(&self) -> Result<BTreeMap<String, f64>>;
    /// Writes the model to keep (an HF model directory) into `dir`.
    fn save_model(&self, dir: &Path) -> Result<()>;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Evaluation {
    pub step: usize,
    pub epoch: usize,
    /// Mean training loss since the previous evaluation.
    pub train_loss: f64,
    /// Training time up to this evaluation (evaluations excluded), for time-to-accuracy.
    #[serde(default)]
    pub train_seconds: f64,
    pub dev: BTreeMap<String, f64>,
}

/// Where a run stands; saved with every checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    pub step: usize,
    pub total_steps: usize,
    pub epoch: usize,
    /// Batches of the current epoch already trained on.
    pub batches_done: usize,
    pub best_value: Option<f64>,
    pub best_step: usize,
    /// The metric's value for the model kept: the best's, or with [`Keep::Last`] the last
    /// evaluation's.
    #[serde(default)]
    pub kept_value: Option<f64>,
    pub evaluations: Vec<Evaluation>,
    pub examples_seen: usize,
    /// Tokens in those examples, padding excluded.
    #[serde(default)]
    pub tokens_seen: usize,
    pub train_seconds: f64,
    /// Loss summed over the updates since the last evaluation, and their count.
    pub interval_loss: f64,
    pub interval_steps: usize,
    pub interrupted: bool,
    /// The checkpoint's weight and optimizer files (named by the step they hold).
    #[serde(default)]
    pub checkpoint: CheckpointFiles,
}

/// The files of a checkpoint besides `state.json`. Each checkpoint writes them under names
/// carrying its step, then `state.json` (atomically) naming them, and only then deletes the
/// previous ones: a run killed or out of disk at any moment of a checkpoint leaves the previous
/// checkpoint whole, never new weights beside an old optimizer state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointFiles {
    pub params: String,
    pub optimizer: String,
}

impl Default for CheckpointFiles {
    /// The names checkpoints had before they carried the step.
    fn default() -> Self {
        Self {
            params: "params.safetensors".into(),
            optimizer: "optimizer.safetensors".into(),
        }
    }
}

impl CheckpointFiles {
    fn at_step(step: usize) -> Self {
        Self {
            params: format!("params-{step}.safetensors"),
            optimizer: format!("optimizer-{step}.safetensors"),
        }
    }

    fn contains(&self, name: &str) -> bool {
        name == self.params || name == self.optimizer
    }
}

impl TrainState {
    /// Training examples per second, evaluation excluded.
    pub fn examples_per_s(&self) -> f64 {
        self.examples_seen as f64 / self.train_seconds.max(1e-9)
    }

    /// Training tokens per second, evaluation excluded.
    pub fn tokens_per_s(&self) -> f64 {
        self.tokens_seen as f64 / self.train_seconds.max(1e-9)
    }
}

const CHECKPOINT: &str = "checkpoint";

/// Trains `model` into `out`: the best model by `metric` is saved at the top of `out`, the
/// latest checkpoint under `out/checkpoint`, every step and evaluation in `out/log.jsonl`.
/// With `resume`, training continues from the checkpoint in `out`. When `stop` turns true
/// (Ctrl-C), a checkpoint is written and the state returned with `interrupted` set.
///
/// Data-parallel under `mpirun` ([`kd_parallel::world`]): every rank draws the same batches
/// (`batch_size` is the global batch) and takes its share of each; losses divide by the global
/// batch's counts and gradients are summed over the ranks before clipping and AdamW, so the
/// ranks follow the single-process run. Rank 0 alone evaluates (the others get its metrics),
/// logs and writes; Ctrl-C on any rank checkpoints the whole job.
pub fn train(
    model: &dyn Trainable,
    config: &TrainerConfig,
    metric: &str,
    out: &RunDir,
    resume: bool,
    stop: &AtomicBool,
) -> Result<TrainState> {
    config.check()?;
    let world = kd_parallel::world();
    let lengths = model.example_lengths();
    let epoch_rng = |epoch: usize| StdRng::seed_from_u64(config.seed.wrapping_add(epoch as u64));
    // Every rank draws the same plan. A batch too small to give each rank an example (an
    // epoch's last) is left out under data parallelism.
    let plan_of = |epoch: usize| -> Vec<Vec<usize>> {
        let mut plan = model.batch_plan(&lengths, config.batch_size, &mut epoch_rng(epoch));
        plan.retain(|batch| batch.len() >= world.size());
        plan
    };
    let steps_per_epoch = plan_of(1).len();
    let total_steps = config
        .max_steps
        .unwrap_or(usize::MAX)
        .min(steps_per_epoch * config.epochs);
    let schedule = LinearSchedule {
        peak: config.lr,
        warmup_steps: (total_steps as f64 * config.warmup).round() as usize,
        total_steps,
    };
    let parameters = model.parameters();
    let mut optimizer = AdamW::new(
        parameters.clone(),
        AdamWConfig {
            weight_decay: config.weight_decay,
            max_grad_norm: Some(config.max_grad_norm),
            ..AdamWConfig::default()
        },
    )?;
    let mut state = if resume {
        load_checkpoint(&out.join(CHECKPOINT), &parameters, &mut optimizer)?
    } else {
        TrainState {
            step: 0,
            total_steps,
            epoch: 1,
            batches_done: 0,
            best_value: None,
            best_step: 0,
            kept_value: None,
            evaluations: Vec::new(),
            examples_seen: 0,
            tokens_seen: 0,
            train_seconds: 0.0,
            interval_loss: 0.0,
            interval_steps: 0,
            interrupted: false,
            checkpoint: CheckpointFiles::default(),
        }
    };
    state.interrupted = false;
    world.check_same(
        "the weights training starts from",
        fingerprint(&parameters)?,
    )?;
    let mut log = match world.is_leader() {
        true => {
            if resume {
                truncate_log(&out.join("log.jsonl"), state.step)?;
            }
            // A new run starts a new log (over one that `--force` left); a resumed run goes on
            // with its own.
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(resume)
                .write(true)
                .truncate(!resume)
                .open(out.join("log.jsonl"))
                .context("cannot open the run log")?;
            Some(log)
        }
        false => None,
    };
    let leader = world.is_leader();
    let progress = Progress::new(total_steps as u64, "train");
    progress.set_position(state.step as u64);
    while state.step < total_steps && state.epoch <= config.epochs {
        let plan = plan_of(state.epoch);
        for indices in plan.iter().skip(state.batches_done) {
            if state.step >= total_steps {
                break;
            }
            if stop_requested(stop) {
                state.interrupted = true;
                if leader {
                    save_checkpoint(&out.join(CHECKPOINT), &parameters, &optimizer, &mut state)?;
                }
                progress.finish();
                world.barrier();
                return Ok(state);
            }
            let started = Instant::now();
            // Each rank draws its own dropout masks; rank 0 draws a single process's.
            model.reseed_dropout(
                config
                    .seed
                    .wrapping_mul(1_000_003)
                    .wrapping_add(state.step as u64)
                    .wrapping_add((world.rank() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            );
            let memory = |error| out_of_memory(error, indices.len(), out.path());
            let (value, components, grads) = {
                let _means = world
                    .is_parallel()
                    .then(|| kd_losses::global_means(move |count| world.sum_one(count)));
                let mut loss = model
                    .loss(world.share(indices), state.step, total_steps)
                    .map_err(memory)?;
                // The ranks' shares of the loss and of each component add up to the batch's.
                let mut values: Vec<f64> = std::iter::once(loss.total.to_scalar::<f32>()? as f64)
                    .chain(loss.components.values().copied())
                    .collect();
                world.sum(&mut values);
                for (component, value) in loss.components.values_mut().zip(&values[1..]) {
                    *component = *value;
                }
                let grads = match values[0].is_finite() {
                    true => Some(loss.total.backward().map_err(|e| memory(e.into()))?),
                    false => None,
                };
                (values[0], loss.components, grads)
            };
            let Some(mut grads) = grads else {
                // Models and checkpoints are written at evaluations: say what there is.
                let kept = match (state.evaluations.last(), config.keep) {
                    (None, _) => "nothing is saved: no evaluation came before it".to_string(),
                    (Some(last), Keep::Best) => format!(
                        "the best model (step {}) and the checkpoint of step {} are kept in {}",
                        state.best_step,
                        last.step,
                        out.path().display()
                    ),
                    (Some(last), Keep::Last) => format!(
                        "the model and the checkpoint of step {} are kept in {}",
                        last.step,
                        out.path().display()
                    ),
                };
                bail!(
                    "loss is {value} at step {} ({}): stopping; {kept}",
                    state.step + 1,
                    format_components(&components),
                );
            };
            let lr = schedule.lr(state.step);
            // Timed apart: the wait for the slowest rank, then the all-reduce itself.
            let waiting = Instant::now();
            if world.is_parallel() {
                world.barrier();
            }
            let communicating = Instant::now();
            kd_parallel::sum_gradients(&mut grads, &parameters)?;
            let (wait, communication) = (
                (communicating - waiting).as_secs_f64(),
                communicating.elapsed().as_secs_f64(),
            );
            let grad_norm = optimizer.step(&grads, lr).map_err(memory)?;
            state.train_seconds += started.elapsed().as_secs_f64();
            state.step += 1;
            state.batches_done += 1;
            state.examples_seen += indices.len();
            state.tokens_seen += indices.iter().map(|&i| lengths[i]).sum::<usize>();
            state.interval_loss += value;
            state.interval_steps += 1;
            if let Some(log) = &mut log {
                let mut line = serde_json::json!({
                    "step": state.step, "epoch": state.epoch, "lr": lr, "loss": value,
                    "grad_norm": grad_norm, "components": components,
                });
                if world.is_parallel() {
                    // The gradients' all-reduce, and the wait for the slowest rank before it.
                    line["allreduce_s"] = communication.into();
                    line["wait_s"] = wait.into();
                }
                writeln!(log, "{line}")?;
            }
            progress.step(format!(
                "epoch {} loss {:.4} {:.0} ex/s {:.0} tok/s",
                state.epoch,
                state.interval_loss / state.interval_steps as f64,
                state.examples_per_s(),
                state.tokens_per_s()
            ));
            let epoch_done = state.batches_done == plan.len();
            let interval = config
                .eval_every
                .is_some_and(|every| state.step.is_multiple_of(every));
            if epoch_done || interval || state.step == total_steps {
                let dev = evaluate_on_leader(model)?;
                let value = *dev
                    .get(metric)
                    .with_context(|| format!("evaluation has no metric {metric}"))?;
                progress.println(format!(
                    "step {} (epoch {}): train loss {:.4}, dev {}",
                    state.step,
                    state.epoch,
                    state.interval_loss / state.interval_steps.max(1) as f64,
                    match config.minimize {
                        // Losses, not shares.
                        true => format_components(&dev),
                        false => format_metrics(&dev),
                    }
                ));
                let evaluation = Evaluation {
                    step: state.step,
                    epoch: state.epoch,
                    train_loss: state.interval_loss / state.interval_steps.max(1) as f64,
                    train_seconds: state.train_seconds,
                    dev,
                };
                if let Some(log) = &mut log {
                    writeln!(log, "{}", serde_json::json!({ "evaluation": evaluation }))?;
                }
                state.evaluations.push(evaluation);
                (state.interval_loss, state.interval_steps) = (0.0, 0);
                let better = |best: f64| match config.minimize {
                    true => value < best,
                    false => value > best,
                };
                if state.best_value.is_none_or(better) {
                    state.best_value = Some(value);
                    state.best_step = state.step;
                    if config.keep == Keep::Best {
                        state.kept_value = Some(value);
                        if leader {
                            model.save_model(out.path())?;
                        }
                    }
                }
                if config.keep == Keep::Last {
                    state.kept_value = Some(value);
                    if leader {
                        model.save_model(out.path())?;
                    }
                }
                if epoch_done {
                    state.epoch += 1;
                    state.batches_done = 0;
                }
                if leader {
                    save_checkpoint(&out.join(CHECKPOINT), &parameters, &optimizer, &mut state)?;
                }
            }
        }
        if state.batches_done != 0 {
            // The plan ran out without an evaluation only when max_steps ended it.
            break;
        }
    }
    progress.finish();
    // What rank 0 wrote (the model, the checkpoint) is there before any rank reads it.
    world.barrier();
    Ok(state)
}

/// Dev metrics, computed by rank 0 and handed to every rank, so that all agree on the best
/// step.
fn evaluate_on_leader(model: &dyn Trainable) -> Result<BTreeMap<String, f64>> {
    let world = kd_parallel::world();
    if !world.is_parallel() {
        return model.evaluate();
    }
    let bytes = match world.is_leader() {
        true => serde_json::to_vec(&model.evaluate()?)?,
        false => Vec::new(),
    };
    Ok(serde_json::from_slice(&world.broadcast(bytes))?)
}

/// A hash of every parameter's bits, to check that all ranks start from the same weights.
fn fingerprint(parameters: &[(String, Var)]) -> Result<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    if kd_parallel::world().is_parallel() {
        for (name, var) in parameters {
            name.hash(&mut hasher);
            let values = var.flatten_all()?.to_dtype(candle_core::DType::F32)?;
            for value in values.to_vec1::<f32>()? {
                value.to_bits().hash(&mut hasher);
            }
        }
    }
    Ok(hasher.finish())
}

/// A device's out-of-memory error (CUDA's, cuBLAS's) told as such: the batch size to lower,
/// and the checkpoint, which a failed step never touches, kept. Other errors pass unchanged.
fn out_of_memory(error: anyhow::Error, batch_size: usize, out: &Path) -> anyhow::Error {
    let text = format!("{error:#}").to_lowercase();
    if !["out_of_memory", "out of memory", "alloc_failed"]
        .iter()
        .any(|sign| text.contains(sign))
    {
        return error;
    }
    error.context(format!(
        "the device ran out of memory at batch size {batch_size}: lower it (--batch-size, or \
         training.batch_size in a recipe: a new run), or free the device; the last checkpoint \
         in {} is intact, and --resume continues from it",
        out.display()
    ))
}

/// Drops the log lines of steps after `step`: those a killed run trained past its last
/// checkpoint, and that the resumed run trains again.
fn truncate_log(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|line| {
            let entry: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            let logged = entry["step"]
                .as_u64()
                .or_else(|| entry["evaluation"]["step"].as_u64());
            logged.is_some_and(|logged| logged as usize <= step)
        })
        .map(|line| format!("{line}\n"))
        .collect();
    kd_bert::write_atomically(path, |tmp| Ok(std::fs::write(tmp, kept)?))
}

fn save_checkpoint(
    dir: &Path,
    parameters: &[(String, Var)],
    optimizer: &AdamW,
    state: &mut TrainState,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let files = CheckpointFiles::at_step(state.step);
    let tensors: Vec<(String, Tensor)> = parameters
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().clone()))
        .collect();
    kd_bert::write_checked(&dir.join(&files.params), &tensors, Default::default())?;
    optimizer.save(&dir.join(&files.optimizer))?;
    state.checkpoint = files;
    kd_bert::write_json_atomically(&dir.join("state.json"), state)?;
    // The previous checkpoint's files, now that state.json no longer names them, and what an
    // interrupted write left.
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = name.ends_with(".safetensors") || name.ends_with(".tmp");
        if stale && !state.checkpoint.contains(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

fn load_checkpoint(
    dir: &Path,
    parameters: &[(String, Var)],
    optimizer: &mut AdamW,
) -> Result<TrainState> {
    let state_path = dir.join("state.json");
    let text = std::fs::read_to_string(&state_path)
        .with_context(|| format!("cannot resume: no checkpoint at {}", state_path.display()))?;
    let state: TrainState = serde_json::from_str(&text)
        .with_context(|| format!("malformed checkpoint state {}", state_path.display()))?;
    let params_path = dir.join(&state.checkpoint.params);
    let tensors = kd_bert::read_checked(&params_path, crate::optim::CHECKPOINT_REMEDY)?.tensors;
    for (name, var) in parameters {
        let tensor = tensors
            .get(name)
            .with_context(|| format!("checkpoint {} lacks {name}", params_path.display()))?;
        var.set(&tensor.to_device(var.device())?)
            .with_context(|| format!("checkpoint tensor {name} does not fit"))?;
    }
    optimizer.load(&dir.join(&state.checkpoint.optimizer))?;
    Ok(state)
}

pub fn format_metrics(metrics: &BTreeMap<String, f64>) -> String {
    metrics
        .iter()
        .map(|(name, value)| format!("{name} {:.2}%", value * 100.0))
        .collect::<Vec<_>>()
        .join(", ")
}

fn format_components(components: &BTreeMap<String, f64>) -> String {
    components
        .iter()
        .map(|(name, value)| format!("{name} {value:.4}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The error of work that a stop request ended before it had anything to keep (a teacher's
/// outputs half computed): the run stops as at a checkpoint, and `--resume` does it again.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

impl Interrupted {
    /// Whether `error` is, or was caused by, an [`Interrupted`].
    pub fn caused(error: &anyhow::Error) -> bool {
        error.chain().any(|cause| cause.is::<Interrupted>())
    }
}

/// Whether `stop` is raised on any rank of the job: a collective, so that every rank stops
/// at the same point (a Ctrl-C reaches the ranks at different moments, or only one).
pub fn stop_requested(stop: &AtomicBool) -> bool {
    let raised = stop.load(Ordering::SeqCst);
    kd_parallel::world().sum_one(f64::from(u8::from(raised))) > 0.0
}

/// The signal that stopped the run, once one has.
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// A flag that turns true on Ctrl-C (SIGINT), or SIGTERM or SIGHUP as schedulers and
/// shutdowns send, for [`train`] to stop at the next step; a second one leaves at once.
pub fn interrupt_flag() -> Result<&'static AtomicBool> {
    static STOP: AtomicBool = AtomicBool::new(false);
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    let mut result = Ok(());
    INSTALLED.call_once(|| {
        result = Signals::new([SIGINT, SIGTERM, SIGHUP]).map(|mut signals| {
            std::thread::spawn(move || {
                for signal in signals.forever() {
                    STOP_SIGNAL.store(signal, Ordering::SeqCst);
                    if STOP.swap(true, Ordering::SeqCst) {
                        // A second signal while the checkpoint is written.
                        std::process::exit(interrupted_exit_code());
                    }
                    eprintln!("\ninterrupted: saving a checkpoint (Ctrl-C again to quit at once)");
                }
            });
        });
    });
    result.context("cannot install the Ctrl-C handler")?;
    Ok(&STOP)
}

/// The exit status of a run a signal stopped, as shells report one the signal killed:
/// 128 + its number (130 for Ctrl-C, 143 for SIGTERM).
pub fn interrupted_exit_code() -> i32 {
    128 + match STOP_SIGNAL.load(Ordering::SeqCst) {
        0 => SIGINT,
        signal => signal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_train_nothing_or_the_wrong_way_are_refused_by_name() {
        TrainerConfig::default().check().unwrap();
        let refused = |config: TrainerConfig| config.check().unwrap_err().to_string();
        let base = TrainerConfig::default;
        for (config, expected) in [
            (
                TrainerConfig {
                    epochs: 0,
                    ..base()
                },
                "epochs (--epochs) must be at least 1",
            ),
            (
                TrainerConfig {
                    batch_size: 0,
                    ..base()
                },
                "batch_size (--batch-size)",
            ),
            (
                TrainerConfig {
                    max_steps: Some(0),
                    ..base()
                },
                "max_steps (--max-steps)",
            ),
            (
                TrainerConfig {
                    eval_every: Some(0),
                    ..base()
                },
                "eval_every (--eval-every)",
            ),
            (
                TrainerConfig { lr: 0.0, ..base() },
                "lr (--lr) must be a positive number, got 0",
            ),
            (
                TrainerConfig {
                    lr: -1e-4,
                    ..base()
                },
                "got -0.0001",
            ),
            (
                TrainerConfig {
                    lr: f64::NAN,
                    ..base()
                },
                "got NaN",
            ),
            (
                TrainerConfig {
                    warmup: 2.0,
                    ..base()
                },
                "in [0, 1], got 2",
            ),
            (
                TrainerConfig {
                    weight_decay: -0.1,
                    ..base()
                },
                "weight_decay",
            ),
        ] {
            let error = refused(config);
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn a_device_out_of_memory_names_the_batch_size_and_the_checkpoint() {
        let out = Path::new("runs/x");
        for raw in [
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")",
            "CublasError(CUBLAS_STATUS_ALLOC_FAILED)",
        ] {
            let error = out_of_memory(anyhow::anyhow!(raw).context("step 3"), 32, out);
            let text = format!("{error:#}");
            assert!(
                text.contains("out of memory at batch size 32")
                    && text.contains("runs/x is intact")
                    && text.contains(raw),
                "{text}"
            );
        }
        let other = out_of_memory(anyhow::anyhow!("shape mismatch"), 32, out);
        assert_eq!(format!("{other:#}"), "shape mismatch");
    }
}
