"""kd.export does what `kd export` does: the same report and files, which kd reloads; kd's
errors and wrong arguments raise before anything is written."""

import json

import kd
import pytest
from conftest import kd_json


def evaluate(model, data):
    return kd_json("eval", "--model", model, "--task", "sst2", "--data-dir", data)["metrics"]


def test_export_matches_the_command_line_and_reloads(teacher, data, workdir):
    out = workdir / "export-f16"
    report = kd.export(teacher, out, dtype="f16")
    assert isinstance(report, dict)
    assert report["precision"] == "f16" and report["format"] == "safetensors"
    assert report["weights_bytes_after"] < report["weights_bytes_before"]

    cli_out = workdir / "export-f16-cli"
    cli = kd_json("export", "--model", teacher, "--out", cli_out, "--dtype", "f16")
    assert report == cli
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in cli_out.iterdir())
    for file in out.iterdir():
        assert file.read_bytes() == (cli_out / file.name).read_bytes(), file.name

    full = evaluate(teacher, data)["accuracy"]
    assert abs(evaluate(out, data)["accuracy"] - full) < 0.05


def test_quantized_and_pruned_exports_reload(teacher, data, workdir):
    texts = workdir / "texts.txt"
    texts.write_text("a charming and affecting journey\nbleak and desperate\n")
    out = workdir / "export-int8"
    report = kd.export(str(teacher), str(out), quantize="int8", prune_vocab=[texts])
    assert report["quantized_tensors"] > 0
    assert report["vocab_after"] < report["vocab_before"] == 30522
    metrics = kd_json("eval", "--model", out, "--task", "sst2", "--data-dir", data)["metrics"]
    assert 0.0 <= metrics["accuracy"] <= 1.0
    # kd's own refusal of a non-empty output, then force.
    with pytest.raises(kd.KdError, match=r"output directory .*export-int8 is not empty"):
        kd.export(teacher, out)
    assert kd.export(teacher, out, force=True)["quantized_tensors"] == 0
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 8


def test_export_errors_write_nothing(teacher, workdir):
    out = workdir / "never-export"
    with pytest.raises(kd.KdError, match=r"model directory .*no-such-model does not exist"):
        kd.export(workdir / "no-such-model", out)
    with pytest.raises(TypeError, match="'model'"):
        kd.export(model=3, out=out)
    with pytest.raises(TypeError, match="'out'"):
        kd.export(teacher, None)
    with pytest.raises(ValueError, match=r"'dtype': expected one of \"f32\", \"f16\", \"bf16\""):
        kd.export(teacher, out, dtype="f64")
    with pytest.raises(ValueError, match="'quantize'"):
        kd.export(teacher, out, quantize="int4")
    with pytest.raises(ValueError, match="'format'"):
        kd.export(teacher, out, format="gguf")
    with pytest.raises(TypeError, match="'prune_vocab'"):
        kd.export(teacher, out, prune_vocab="texts.txt")
    assert not out.exists()
