# Type stubs of kd's native module (crates/python/src/lib.rs); kd/__init__.py re-exports them.
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

_Path = Union[str, "os.PathLike[str]"]

class KdError(RuntimeError):
    """An error from kd; its message is kd's own, with every cause (as the kd command prints
    it), its command-line flags written as keyword arguments (``--force`` as ``force=True``)."""

def finetune(
    model: _Path,
    out: _Path,
    *,
    task: Optional[str] = None,
    data: Optional[Mapping[str, Any]] = None,
    epochs: int = 3,
    lr: float = 5e-5,
    batch_size: int = 32,
    seed: int = 42,
    warmup: float = 0.1,
    weight_decay: float = 0.01,
    eval_every: Optional[int] = None,
    max_steps: Optional[int] = None,
    precision: str = "f32",
    device: Optional[str] = None,
    force: bool = False,
    resume: bool = False,
) -> Dict[str, Any]:
    """Fine-tune a checkpoint on a task's labels, as ``kd finetune`` does; the best epoch is
    saved in ``out`` as an HF model directory.

    Args:
        model: a hub id (e.g. sentence-transformers/all-MiniLM-L6-v2) or a model directory.
        out: the output folder (refused when not empty, unless ``force`` or ``resume``).
        task: a GLUE task (SST-2, CoLA, MRPC, RTE, STS-B), or your own task's name.
        data: the rest of kd's data description, the command's Data options by name:
            ``data_dir``, ``train``, ``dev``, ``text_column``, ``pair_column``,
            ``label_column``, ``regression``, ``max_seq_len``, ``max_train_examples``,
            ``augment``... (files as .tsv, .csv, .jsonl or .parquet).
        epochs, lr, batch_size, seed, warmup, weight_decay: the training settings.
        eval_every: evaluate and checkpoint every N updates, besides each epoch's end.
        max_steps: quick setting: stop after this many updates.
        precision: "f32", or "bf16" (the encoder's products in bf16).
        device: "cpu", "cuda" or "cuda:N" (default: a GPU when there is one, else the CPU).
        force: start the run in ``out`` again, replacing what it holds (not with ``resume``).
        resume: continue the interrupted run in ``out`` from its last checkpoint.

    Returns:
        The run's report, as ``kd finetune`` prints it: ``metric``, ``value`` (the best dev
        value), ``best_epoch``, ``examples_per_s``, ``wall_time_s``, ``interrupted``...

    Raises:
        KdError: kd refused or failed (nothing is written when the model, data or ``out``
            are refused).
        KeyboardInterrupt: Ctrl-C stopped the run, a checkpoint saved in ``out``; call again
            with the same arguments and ``resume=True``. (When the run had finished, its
            message says so: ``out`` is complete.)
        TypeError, ValueError: an argument of the wrong type or value (a negative count, an
            empty path, ``force`` with ``resume``), named in the message.
    """

def evaluate(
    model: _Path,
    *,
    task: Optional[str] = None,
    data: Optional[Mapping[str, Any]] = None,
    batch_size: int = 128,
    device: Optional[str] = None,
) -> Dict[str, Any]:
    """Evaluate a task model on a task's dev file, as ``kd eval`` does.

    Args:
        model: a task model directory (with a task head).
        task: a GLUE task (SST-2, CoLA, MRPC, RTE, STS-B), or your own task's name.
        data: the rest of kd's data description, the command's Data options by name:
            ``data_dir``, ``train``, ``dev``, ``text_column``, ``pair_column``,
            ``label_column``, ``regression``, ``max_seq_len``, ``max_train_examples``,
            ``augment``... (files as .tsv, .csv, .jsonl or .parquet).
            ``data={"dev": "my.csv", ...}`` evaluates on another file.
        batch_size: examples a batch.
        device: "cpu", "cuda" or "cuda:N".

    Returns:
        ``{"task", "data", "examples", "metrics": {name: value}}``.

    Raises:
        KdError: kd refused or failed.
        KeyboardInterrupt: Ctrl-C; an evaluation cannot stop part-way, so it finishes first
            (standard error says so) and its result is dropped.
        TypeError, ValueError: an argument of the wrong type or value, named in the message.
    """

def predict(
    model: _Path,
    texts: Sequence[Union[str, Tuple[str, str]]],
    *,
    batch_size: int = 64,
    max_seq_len: int = 128,
    device: Optional[str] = None,
) -> List[Dict[str, Any]]:
    """A task model's answers to ``texts``, as ``kd predict`` writes them.

    Args:
        model: a task model: hub id or directory.
        texts: a list (not one str), each a text or a (text, pair) tuple for a sentence-pair
            task.
        batch_size: texts a batch (batched by length; the answers keep the texts' order).
        max_seq_len: texts are truncated to this many tokens.
        device: "cpu", "cuda" or "cuda:N".

    Returns:
        A dict a text, in order: ``text`` (and ``pair``), then ``label`` and
        ``probabilities`` (by label), or ``score`` for a regression model.

    Raises:
        KdError: kd refused or failed.
        KeyboardInterrupt: Ctrl-C stopped it after its current batches; no answers are kept.
        TypeError, ValueError: an argument of the wrong type or value, named in the message.
    """

def compare(
    models: Sequence[_Path],
    *,
    teacher: Optional[_Path] = None,
    task: Optional[str] = None,
    data: Optional[Mapping[str, Any]] = None,
    out: Optional[_Path] = None,
    force: bool = False,
    bootstrap: int = 1000,
    threads: int = 2,
    onnx_python: Optional[_Path] = None,
    device: Optional[str] = None,
) -> Dict[str, Any]:
    """Models side by side on the same dev examples, as ``kd compare`` does.

    Args:
        models: a list (not one path) of task models (directories or hub ids, ONNX exports
            among them); the first is the reference unless ``teacher``.
        teacher: the reference model.
        task: a GLUE task (SST-2, CoLA, MRPC, RTE, STS-B), or your own task's name.
        data: the rest of kd's data description, the command's Data options by name:
            ``data_dir``, ``train``, ``dev``, ``text_column``, ``pair_column``,
            ``label_column``, ``regression``, ``max_seq_len``, ``max_train_examples``,
            ``augment``... (files as .tsv, .csv, .jsonl or .parquet).
        out: also write compare.md, compare.json and the charts here.
        force: replace what ``out`` holds.
        bootstrap: resamples for the metric's 95% interval.
        threads: threads for the latency and throughput measurements.
        onnx_python: a Python with onnxruntime, to run the ONNX exports among ``models``.
        device: where kd's models run.

    Returns:
        ``{"rows": [...], "table": "..."}``: a row a model (the reference first) with its
        metric and interval, agreement, KL and McNemar's test against the reference, size,
        p50 and p95 latency at batch 1, throughput and peak memory; and the markdown table.
        Latency is timed in a fresh kd process when ``$KD_BIN`` names the kd program, else in
        this process, whose peak memory is not the model's alone: ``peak_rss_mb`` is then None.

    Raises:
        KdError: kd refused or failed.
        KeyboardInterrupt: Ctrl-C; a comparison cannot stop part-way, so it finishes first
            (standard error says so; ``out``, when given, is then complete).
        TypeError, ValueError: an argument of the wrong type or value, named in the message.
    """

def distill(
    recipe: Union[_Path, Mapping[str, Any]],
    overrides: Optional[Mapping[str, Any]] = None,
    out: Optional[_Path] = None,
    *,
    force: bool = False,
    resume: bool = False,
    cache_dir: _Path = "runs/cache",
    device: Optional[str] = None,
    max_steps: Optional[int] = None,
    max_train_examples: Optional[int] = None,
) -> Dict[str, Any]:
    """Distil a student from a teacher by a recipe, as ``kd distill`` does.

    Args:
        recipe: a recipe file (TOML, see experiments/recipes/), or a dict with a recipe's
            TOML structure (``tomllib.load`` of a recipe file gives one; a None value leaves
            its key out). Relative paths in either are taken from the current directory.
        overrides: recipe keys to new values, applied first as ``kd distill --set key=value``
            (``{"stages.0.epochs": 1, "teacher.model": "runs/teacher"}``): a str value is read
            as --set reads it (TOML, else a plain string), any other value as itself.
        out: the output folder (refused when not empty, unless ``force`` or ``resume``);
            ``runs/<recipe name>`` by default.
        force: start the run in ``out`` again, replacing what it holds (not with ``resume``).
        resume: continue the interrupted run in ``out`` from its last checkpoint.
        cache_dir: where teacher outputs are cached, shared by runs with the same teacher
            and data.
        device: "cpu", "cuda" or "cuda:N"; by default the recipe's ``training.device``, else
            the first GPU when kd was built with CUDA and one is visible, else the CPU.
        max_steps: quick setting: stop each stage after this many updates.
        max_train_examples: quick setting: train on the first N training examples only.

    Returns:
        The run's summary, as ``kd distill`` prints it and writes it to ``out/summary.json``:
        for a task recipe ``recipe``, ``task``, ``metric``, ``teacher`` and ``student``
        (``layers``, ``hidden``, ``params``, ``dev`` metrics), ``stages``, ``wall_time_s``...;
        a general or multi-task recipe's summary has its own fields.

    Raises:
        KdError: kd refused or failed (nothing is written when the recipe, its models or
            data, or ``out`` are refused).
        KeyboardInterrupt: Ctrl-C stopped the run, a checkpoint saved in ``out``; call again
            with the same arguments and ``resume=True``. (When the run had finished, its
            message says so: ``out`` is complete.)
        TypeError, ValueError: an argument of the wrong type or value (a negative count, an
            empty path, ``force`` with ``resume``), named in the message.
    """

def export(
    model: _Path,
    out: _Path,
    *,
    dtype: str = "f32",
    quantize: Optional[str] = None,
    format: str = "safetensors",
    prune_vocab: Optional[Sequence[_Path]] = None,
    restore_heads: bool = False,
    force: bool = False,
) -> Dict[str, Any]:
    """Write a compact copy of a model, as ``kd export`` does.

    Args:
        model: the model to export: a hub id or a model directory.
        out: the directory to write (refused when not empty, unless ``force``).
        dtype: the floating-point weights' precision: "f32", "f16" or "bf16".
        quantize: store weights as int8 (weight-only, one scale per row): "int8" the dense
            layers', "int8-embeddings" the word embeddings' too; kd dequantizes them when it
            loads the model.
        format: "safetensors" (an HF directory), or "onnx" (a task model's graph, opset 17,
            f32, dynamic batch and length).
        prune_vocab: a list of text files (a text a line): keep only the tokens they use,
            plus the special and single-character tokens; the embeddings and tokenizer are
            rewritten together.
        restore_heads: write a model whose attention heads were pruned at full shape, those
            heads zero, for tools that do not prune heads.
        force: replace what ``out`` holds.

    Returns:
        The export's report, as ``kd export`` prints it: ``weights_bytes_before``,
        ``weights_bytes_after``, ``vocab_before``, ``vocab_after``, ``quantized_tensors``,
        ``precision``, ``format``.

    Raises:
        KdError: kd refused or failed; nothing is written when the model or options are
            refused.
        KeyboardInterrupt: Ctrl-C; an export cannot stop part-way, so it finishes first
            (standard error says so) and ``out`` is complete.
        TypeError, ValueError: an argument of the wrong type or value, named in the message.
    """
