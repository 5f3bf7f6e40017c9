"""What the Python package's tests share: the shared data and model cache (as the Rust tests
find them), the `kd` binary to compare with, and a tiny teacher on a small slice of SST-2.

Run by experiments/scripts/python_tests.sh, against the wheel it builds and installs."""

import array
import json
import os
import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("KD_SHARED_DIR", ROOT.parent / "shared")).resolve()
# The kd binary cargo built: in $CARGO_TARGET_DIR when set, as cargo puts it.
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
KD_BIN = Path(os.environ.get("KD_BIN", TARGET / "release" / "kd"))
MINILM = "models--sentence-transformers--all-MiniLM-L6-v2"

# kd in this process and the kd binary read the same cache and data (before kd is imported).
os.environ["HF_HOME"] = str(SHARED / "hf-cache")
os.environ["KD_SHARED_DIR"] = str(SHARED)

# The distillation recipe of the tests: a one-layer DistilBERT-style student of the tiny
# teacher, on the shipped recipe's objective.
RECIPE = """\
name = "py-tiny"

[teacher]
model = "{teacher}"

[student]
kind = "distilbert"

[data]
task = "SST-2"
data_dir = "{data}"
max_seq_len = 32

[training]
lr = 1e-3
batch_size = 16
seed = 42

[[stages]]
name = "distill"
epochs = 2

[stages.objective]
temperature = 2.0
components = [
    {{ kind = "soft_ce", weight = 5.0 }},
    {{ kind = "hard", weight = 2.0 }},
    {{ kind = "cosine", weight = 1.0 }},
]
"""


def run_kd(*args, check=True):
    """Runs the kd binary; returns the completed process (standard output and error text)."""
    if not KD_BIN.is_file():
        pytest.fail(f"no kd binary at {KD_BIN}: cargo build --release -p kd-experiments")
    result = subprocess.run(
        [str(KD_BIN), *map(str, args)], capture_output=True, text=True, cwd=ROOT
    )
    if check and result.returncode != 0:
        pytest.fail(f"kd {' '.join(map(str, args))} failed:\n{result.stderr}")
    return result


def kd_json(*args):
    """Runs the kd binary and returns the JSON object it prints last."""
    return json.loads(run_kd(*args).stdout.strip().splitlines()[-1])


def write_tiny_model(directory: Path, hidden=8, layers=2, seed=0):
    """A tiny BERT encoder (MiniLM's vocabulary and tokenizer, 8 wide, 2 layers) in
    `directory`, as tests/common's write_tiny_model writes it."""
    directory.mkdir(parents=True)
    vocab, positions = 30522, 64
    config = {
        "model_type": "bert", "vocab_size": vocab, "hidden_size": hidden,
        "num_hidden_layers": layers, "num_attention_heads": 2,
        "intermediate_size": 2 * hidden, "max_position_embeddings": positions,
        "type_vocab_size": 2, "hidden_act": "gelu",
    }
    (directory / "config.json").write_text(json.dumps(config))
    rng = random.Random(seed)
    shapes = {
        "embeddings.word_embeddings.weight": [vocab, hidden],
        "embeddings.position_embeddings.weight": [positions, hidden],
        "embeddings.token_type_embeddings.weight": [2, hidden],
        "embeddings.LayerNorm.weight": [hidden],
        "embeddings.LayerNorm.bias": [hidden],
        "pooler.dense.weight": [hidden, hidden],
        "pooler.dense.bias": [hidden],
    }
    for layer in range(layers):
        prefix = f"encoder.layer.{layer}."
        for name in ["attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense"]:
            shapes[prefix + name + ".weight"] = [hidden, hidden]
            shapes[prefix + name + ".bias"] = [hidden]
        shapes[prefix + "intermediate.dense.weight"] = [2 * hidden, hidden]
        shapes[prefix + "intermediate.dense.bias"] = [2 * hidden]
        shapes[prefix + "output.dense.weight"] = [hidden, 2 * hidden]
        shapes[prefix + "output.dense.bias"] = [hidden]
        for norm in ["attention.output.LayerNorm", "output.LayerNorm"]:
            shapes[prefix + norm + ".weight"] = [hidden]
            shapes[prefix + norm + ".bias"] = [hidden]
    header, blobs, offset = {}, [], 0
    for name, shape in shapes.items():
        count = 1
        for size in shape:
            count *= size
        if "LayerNorm" in name or name.endswith(".bias"):
            fill = 1.0 if name.endswith("LayerNorm.weight") else 0.0
            values = array.array("f", [fill]) * count
        else:
            values = array.array("f", (rng.gauss(0.0, 0.02) for _ in range(count)))
        blob = values.tobytes()
        header[name] = {"dtype": "F32", "shape": shape,
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(directory / "model.safetensors", "wb") as file:
        file.write(struct.pack("<Q", len(text)))
        file.write(text)
        for blob in blobs:
            file.write(blob)
    snapshots = sorted((SHARED / "hf-cache" / "hub" / MINILM / "snapshots").glob("*/tokenizer.json"))
    if not snapshots:
        pytest.fail(f"all-MiniLM-L6-v2 not in {SHARED}/hf-cache (set KD_SHARED_DIR?)")
    shutil.copy(snapshots[0], directory / "tokenizer.json")


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("kd")


@pytest.fixture(scope="session")
def data(workdir):
    """The first 512 SST-2 training sentences and 200 dev sentences."""
    directory = workdir / "data"
    directory.mkdir()
    glue = SHARED / "data" / "glue" / "SST-2"
    for name, lines in [("train.tsv", 513), ("dev.tsv", 201)]:
        with open(glue / name, encoding="utf-8") as file:
            head = [next(file) for _ in range(lines)]
        (directory / name).write_text("".join(head), encoding="utf-8")
    return directory


@pytest.fixture(scope="session")
def teacher(workdir, data):
    """The tiny encoder fine-tuned on `data` for a few steps by the kd binary: a task model."""
    base = workdir / "tiny"
    write_tiny_model(base)
    out = workdir / "teacher"
    run_kd("finetune", "--model", base, "--task", "sst2", "--data-dir", data, "--out", out,
           "--epochs", "1", "--batch-size", "16", "--max-seq-len", "32", "--lr", "1e-3")
    return out


@pytest.fixture(scope="session")
def recipe(workdir, teacher, data):
    """The test recipe's file."""
    path = workdir / "py-tiny.toml"
    path.write_text(RECIPE.format(teacher=teacher, data=data))
    return path


def comparable(summary):
    """A summary less what differs between two equal runs: times, speeds and the command."""
    summary = json.loads(json.dumps(summary))
    for key in ["wall_time_s", "command"]:
        summary.pop(key)
    for stage in summary["stages"]:
        for key in ["examples_per_s", "teacher_seconds"]:
            stage.pop(key)
    return summary
