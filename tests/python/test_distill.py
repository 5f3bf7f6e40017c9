"""kd.distill does what `kd distill` does: the same summary and the same student from the same
recipe and settings, whether the recipe is a file or a dict; kd's errors and wrong arguments
raise, naming what is wrong, before anything is written."""

import inspect
import json
import tomllib

import kd
import pytest
from conftest import comparable, kd_json

SETTINGS = {"stages.0.epochs": 1, "training.eval_every": 10}


def test_distill_matches_the_command_line(recipe, workdir):
    cli_out, py_out = workdir / "cli-student", workdir / "py-student"
    command = ["distill", "--recipe", recipe, "--out", cli_out,
               "--cache-dir", workdir / "cli-cache", "--max-steps", "20",
               "--max-train-examples", "400"]
    for key, value in SETTINGS.items():
        command += ["--set", f"{key}={value}"]
    cli = kd_json(*command)

    summary = kd.distill(str(recipe), SETTINGS, py_out, cache_dir=workdir / "py-cache",
                         max_steps=20, max_train_examples=400)
    assert isinstance(summary, dict)
    assert summary["interrupted"] is False
    assert summary["stages"][0]["steps"] == 20
    assert summary["train_examples"] == 400
    assert summary["student"]["layers"] == 1
    assert comparable(summary) == comparable(cli)
    # What both wrote: the same summary file as returned, the same student.
    assert json.loads((py_out / "summary.json").read_text()) == summary
    assert (py_out / "model.safetensors").read_bytes() == (cli_out / "model.safetensors").read_bytes()


def test_a_recipe_given_as_a_dict_runs_as_its_file(recipe, workdir):
    as_file = kd.distill(recipe, SETTINGS, workdir / "from-file", max_steps=8,
                         cache_dir=workdir / "file-cache")
    with open(recipe, "rb") as file:
        table = tomllib.load(file)
    table["description"] = None  # a None leaves its key out
    as_dict = kd.distill(table, SETTINGS, workdir / "from-dict", max_steps=8,
                         cache_dir=workdir / "dict-cache")
    assert comparable(as_dict) == comparable(as_file)
    assert (workdir / "from-dict" / "model.safetensors").read_bytes() == (
        workdir / "from-file" / "model.safetensors").read_bytes()

    # Overrides apply to a dict as to a file; a str is read as --set reads it.
    quick = kd.distill(table, {"stages.0.epochs": "1", "training.max_steps": 3},
                       workdir / "dict-quick", cache_dir=workdir / "dict-cache")
    assert quick["stages"][0]["steps"] == 3


def test_kd_errors_raise_kd_error_and_write_nothing(recipe, workdir):
    out = workdir / "never"
    with pytest.raises(kd.KdError) as error:
        kd.distill(workdir / "missing.toml", out=out)
    assert f"cannot read recipe {workdir / 'missing.toml'}: " in str(error.value)
    assert "No such file" in str(error.value)  # the cause, as the command prints it
    assert isinstance(error.value, RuntimeError)

    with pytest.raises(kd.KdError, match="recipe given as a dict has no stages"):
        kd.distill({"name": "x", "student": {"kind": "distilbert"},
                    "training": {"lr": 1e-4}, "stages": []}, out=out)
    with pytest.raises(kd.KdError, match="invalid recipe given as a dict: missing field `student`"):
        kd.distill({"name": "x"}, out=out)
    with pytest.raises(kd.KdError, match="cannot apply the override stages.5.epochs=1: no field"):
        kd.distill(recipe, {"stages.5.epochs": 1}, out)
    with pytest.raises(kd.KdError, match=r"model directory .*no-such-teacher does not exist"):
        kd.distill(recipe, {"teacher.model": str(workdir / "no-such-teacher")}, out)
    assert not out.exists()


def test_wrong_arguments_raise_naming_them(recipe, workdir):
    out = workdir / "never"
    with pytest.raises(TypeError, match="'recipe'"):
        kd.distill(3, out=out)
    with pytest.raises(TypeError, match="'overrides'"):
        kd.distill(recipe, ["stages.0.epochs=1"], out)
    with pytest.raises(TypeError, match="'max_steps'"):
        kd.distill(recipe, out=out, max_steps="5")
    with pytest.raises(TypeError, match="'force'"):
        kd.distill(recipe, out=out, force="yes")
    with pytest.raises(TypeError):
        kd.distill(recipe, None, out, True)  # force is keyword-only
    with pytest.raises(ValueError, match="'device'"):
        kd.distill(recipe, out=out, device="tpu")
    with pytest.raises(TypeError, match=r'recipe\["stages"\]\[0\]: a set has no TOML form'):
        kd.distill({"name": "x", "stages": [{1, 2}]}, out=out)
    with pytest.raises(TypeError, match=r'overrides\["stages.0.epochs"\]: a NoneType'):
        kd.distill(recipe, {"stages.0.epochs": None}, out)
    assert not out.exists()


def test_signatures_show_their_defaults():
    assert str(inspect.signature(kd.distill)) == (
        "(recipe, overrides=None, out=None, *, force=False, resume=False, "
        "cache_dir='runs/cache', device=None, max_steps=None, max_train_examples=None)")
    assert "dtype='f32'" in str(inspect.signature(kd.export))
