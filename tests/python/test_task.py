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


def test_an_empty_path_is_refused_naming_it(teacher, recipe, workdir, monkeypatch):
    # "" would be the current directory: finetune's run files among the user's.
    here = workdir / "empty-path-cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    for argument, call in [
        ("out", lambda: kd.finetune(teacher, "", task="sst2")),
        ("model", lambda: kd.finetune("", here / "out", task="sst2")),
        ("out", lambda: kd.distill(recipe, out="")),
        ("recipe", lambda: kd.distill("", out=here / "out")),
        ("cache_dir", lambda: kd.distill(recipe, out=here / "out", cache_dir="")),
        ("out", lambda: kd.compare([teacher], task="sst2", out="")),
        ("models", lambda: kd.compare([teacher, ""], task="sst2")),
        ("teacher", lambda: kd.compare([teacher], teacher="", task="sst2")),
        ("onnx_python", lambda: kd.compare([teacher], task="sst2", onnx_python="")),
        ("out", lambda: kd.export(teacher, "")),
        ("prune_vocab", lambda: kd.export(teacher, here / "out", prune_vocab=[""])),
        ("model", lambda: kd.predict("", ["a movie ."])),
        ("model", lambda: kd.evaluate("", task="sst2")),
    ]:
        with pytest.raises(ValueError, match=f"^argument '{argument}' is an empty path"):
            call()
    for key in ["data_dir", "train", "dev", "augment"]:
        with pytest.raises(ValueError, match=f"argument 'data': \"{key}\" is an empty path"):
            kd.finetune(teacher, here / "out", task="sst2", data={key: ""})
    with pytest.raises(ValueError, match="argument 'data': \"unlabeled\" is an empty path"):
        kd.finetune(teacher, here / "out", task="sst2", data={"unlabeled": ["a.txt", ""]})
    assert list(here.iterdir()) == []


def test_force_with_resume_is_refused(teacher, recipe, workdir):
    out = workdir / "never-forced"
    message = "^force=True cannot be used with resume=True"
    with pytest.raises(ValueError, match=message):
        kd.finetune(teacher, out, task="sst2", force=True, resume=True)
    with pytest.raises(ValueError, match=message):
        kd.distill(recipe, out=out, force=True, resume=True)
    assert not out.exists()


def test_wrong_values_and_types_name_the_argument_in_the_message(teacher, recipe, workdir):
    out = workdir / "never-negative"
    # str(e) names the argument: Python 3.9 and 3.10 print no exception notes.
    for argument, call in [
        ("epochs", lambda: kd.finetune(teacher, out, task="sst2", epochs=-1)),
        ("batch_size", lambda: kd.finetune(teacher, out, task="sst2", batch_size=-1)),
        ("seed", lambda: kd.finetune(teacher, out, task="sst2", seed=-1)),
        ("max_steps", lambda: kd.distill(recipe, out=out, max_steps=-1)),
        ("batch_size", lambda: kd.predict(teacher, ["a movie ."], batch_size=-1)),
        ("bootstrap", lambda: kd.compare([teacher], task="sst2", bootstrap=-5)),
    ]:
        with pytest.raises(ValueError) as error:
            call()
        assert str(error.value).startswith(f"argument '{argument}' must not be negative, not -")
    with pytest.raises(ValueError, match="argument 'seed': 1267650600228229401496703205376 is too"):
        kd.finetune(teacher, out, task="sst2", seed=2**100)
    for argument, call in [
        ("epochs", lambda: kd.finetune(teacher, out, task="sst2", epochs="3")),
        ("lr", lambda: kd.finetune(teacher, out, task="sst2", lr="fast")),
        ("data", lambda: kd.evaluate(teacher, data=["dev.tsv"])),
        ("overrides", lambda: kd.distill(recipe, ["stages.0.epochs=1"], out)),
        ("force", lambda: kd.export(teacher, out, force="yes")),
        ("texts", lambda: kd.predict(teacher, [1, 2])),
    ]:
        with pytest.raises(TypeError) as error:
            call()
        assert str(error.value).startswith(f"argument '{argument}': "), str(error.value)
    # One str where a list is meant is refused, not read as a list of letters.
    for argument, call in [
        ("texts", lambda: kd.predict(teacher, "a movie .")),
        ("models", lambda: kd.compare(str(teacher), task="sst2")),
        ("models", lambda: kd.compare(teacher, task="sst2")),
        ("prune_vocab", lambda: kd.export(teacher, out, prune_vocab="texts.txt")),
    ]:
        with pytest.raises(TypeError, match=f"^argument '{argument}': expected a list, not one"):
            call()
    assert not out.exists()


def test_kd_messages_speak_of_keyword_arguments_not_flags(teacher, data, workdir):
    out = workdir / "occupied"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(kd.KdError) as error:
        kd.export(teacher, out)
    assert "pass force=True to overwrite it" in str(error.value)
    assert "--" not in str(error.value)
    # A run's directory may hold an interrupted run, which force=True would delete.
    with pytest.raises(kd.KdError) as error:
        kd.finetune(teacher, out, task="sst2", data={"data_dir": str(data)})
    assert "resume=True to continue the run it holds, or force=True" in str(error.value)
    with pytest.raises(kd.KdError, match="^bootstrap=10: too few resamples"):
        kd.compare([teacher], task="sst2", data={"data_dir": str(data)}, bootstrap=10)
    # A "--" inside a name is no flag (the hub cache's models--org--name).
    with pytest.raises(kd.KdError) as error:
        kd.evaluate(workdir / "models--no--such", task="sst2")
    assert str(workdir / "models--no--such") in str(error.value)
    assert (out / "notes.txt").read_text() == "mine"
