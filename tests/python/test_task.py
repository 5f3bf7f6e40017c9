"""kd.finetune, kd.evaluate, kd.predict and kd.compare do what `kd finetune`, `kd eval`,
`kd predict` and `kd compare` do: the same reports, metrics, answers and rows; wrong
arguments raise naming the argument, before anything is written."""

import json
import os

import kd
import pytest
from conftest import kd_json, run_kd, write_tiny_model

SENTENCES = ["a gorgeous , witty , seductive movie .", "the acting is bad and the plot is worse"]


def without_times(report):
    """A fine-tuning report less what differs between two equal runs."""
    report = json.loads(json.dumps(report))
    for key in ["wall_time_s", "examples_per_s", "command"]:
        report.pop(key)
    for evaluation in report["history"]:
        evaluation.pop("train_seconds")
    return report


def test_finetune_matches_the_command_line(workdir, data):
    base = workdir / "tiny-for-finetune"
    write_tiny_model(base)
    settings = ["--epochs", "1", "--batch-size", "16", "--max-seq-len", "32", "--lr", "1e-3",
                "--max-steps", "12", "--eval-every", "6"]
    cli = kd_json("finetune", "--model", base, "--task", "sst2", "--data-dir", data,
                  "--out", workdir / "cli-finetuned", *settings)
    report = kd.finetune(base, workdir / "py-finetuned", task="sst2",
                         data={"data_dir": str(data), "max_seq_len": 32}, epochs=1,
                         batch_size=16, lr=1e-3, max_steps=12, eval_every=6)
    assert report["interrupted"] is False
    assert len(report["history"]) >= 2
    assert without_times(report) == without_times(cli)
    assert (workdir / "py-finetuned" / "model.safetensors").read_bytes() == (
        workdir / "cli-finetuned" / "model.safetensors").read_bytes()


def test_evaluate_and_predict_match_the_command_line(teacher, data):
    metrics = kd.evaluate(teacher, task="sst2", data={"data_dir": str(data)})
    assert metrics == kd_json("eval", "--model", teacher, "--task", "sst2", "--data-dir", data)

    answers = kd.predict(teacher, SENTENCES, batch_size=1)
    printed = run_kd("predict", "--model", teacher, *SENTENCES).stdout.strip().splitlines()
    assert answers == [json.loads(line) for line in printed]
    assert [answer["text"] for answer in answers] == SENTENCES
    assert set(answers[0]["probabilities"]) == {"0", "1"}
    # A sentence pair is a tuple; no texts, no answers.
    pair = kd.predict(teacher, [("a movie .", "a film .")])
    assert pair[0]["pair"] == "a film ."
    assert kd.predict(teacher, []) == []


def test_compare_gives_the_command_lines_figures(teacher, data, workdir):
    half = workdir / "teacher-f16"
    kd.export(teacher, half, dtype="f16")
    out = workdir / "compare"
    comparison = kd.compare([teacher, half], task="sst2", data={"data_dir": str(data)},
                            bootstrap=50, out=out)
    assert [row["model"] for row in comparison["rows"]] == [str(teacher), str(half)]
    assert comparison["table"] == (out / "compare.md").read_text()
    assert comparison["rows"] == json.loads((out / "compare.json").read_text())
    run_kd("compare", "--models", teacher, half, "--task", "sst2", "--data-dir", data,
           "--bootstrap", "50", "--out", workdir / "cli-compare")
    cli = json.loads((workdir / "cli-compare" / "compare.json").read_text())
    for row, printed in zip(comparison["rows"], cli):
        for key in ["metric", "value", "interval", "agreement", "kl_to_reference", "params"]:
            assert row[key] == printed[key], key
    # f16 weights answer as the f32 ones nearly everywhere.
    assert comparison["rows"][1]["agreement"] > 0.95
    # kd compare times each model in a kd process of its own and gives its peak memory; from
    # Python without KD_BIN the timing is in this process, whose peak is not the model's alone.
    assert all(printed["peak_rss_mb"] > 0 for printed in cli)
    if "KD_BIN" not in os.environ:
        assert all(row["peak_rss_mb"] is None for row in comparison["rows"])


def test_wrong_arguments_raise_naming_them(teacher, workdir):
    out = workdir / "never-finetuned"
    with pytest.raises(TypeError, match="epochs"):
        kd.finetune(teacher, out, task="sst2", epochs="3")
    with pytest.raises(TypeError, match="texts"):
        kd.predict(teacher, [1, 2])
    with pytest.raises(ValueError, match="argument 'data'.*colour"):
        kd.finetune(teacher, out, task="sst2", data={"colour": "blue"})
    with pytest.raises(ValueError, match="argument 'precision'"):
        kd.finetune(teacher, out, task="sst2", precision="f8")
    with pytest.raises(kd.KdError, match="no such task|unknown task|task"):
        kd.evaluate(teacher, task="no-such-task")
    assert not out.exists()
