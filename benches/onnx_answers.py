"""ONNX Runtime's side of `kd compare --onnx-python`: runs an ONNX export that kd wrote
(`kd export --format onnx`) on the dev sentences and prints one JSON line: the logits of every
sentence (batches of 32 grouped by length and padded to their longest, as kd batches them),
the throughput of that pass, the latency of
answering one sentence at a time from text to probabilities (p50, p95, after a warm-up), the
peak resident memory, and the parameters stored in the graph. Tokenises with the `tokenizers`
library from the export's tokenizer.json, as kd does. Set up the interpreter with
benches/setup.sh.
"""

import argparse
import json
from peak_memory import peak_rss_mb
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from tokenizers import Tokenizer

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def percentile(sorted_ms, q):
    n = len(sorted_ms)
    return sorted_ms[min(max(int(np.ceil(n * q)), 1), n) - 1]


def feed(encodings, names):
    """The inputs `names` (those the graph takes) of a batch, padded with zeros to its longest
    sentence."""
    width = max(len(e.ids) for e in encodings)
    arrays = {name: np.zeros((len(encodings), width), dtype=np.int64) for name in INPUTS}
    for row, e in enumerate(encodings):
        for name, values in zip(INPUTS, (e.ids, e.attention_mask, e.type_ids)):
            arrays[name][row, : len(values)] = values
    return {name: arrays[name] for name in names}


def parameters(path):
    """Counts of the graph's weights (f32, or int8 stored as int8 or uint8; an int8 tensor's
    scales and zero points are not counted), all and without the embedding tables."""
    graph = onnx.load(str(path), load_external_data=False).graph
    kinds = (onnx.TensorProto.FLOAT, onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    weights = [
        t for t in graph.initializer if t.data_type in kinds and len(t.dims) > 0 and not t.name.endswith("_scale")
    ]
    count = lambda ts: int(sum(np.prod(t.dims) for t in ts))
    return count(weights), count([t for t in weights if "embeddings" not in t.name])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="the export's directory")
    parser.add_argument("--sentences", required=True, help="JSON Lines of [text, pair]")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-len", type=int, default=128)
    args = parser.parse_args()

    model = Path(args.model)
    sentences = [json.loads(line) for line in Path(args.sentences).read_text().splitlines()]
    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    tokenizer.enable_truncation(args.max_seq_len)
    tokenizer.no_padding()
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(model / "model.onnx"), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def encode(batch):
        return tokenizer.encode_batch([(t, p) if p is not None else t for t, p in batch])

    encodings = encode(sentences)
    order = sorted(range(len(sentences)), key=lambda i: len(encodings[i].ids))
    logits = [None] * len(sentences)
    start = time.perf_counter()
    for first in range(0, len(order), args.batch_size):
        batch = order[first : first + args.batch_size]
        rows = session.run(["logits"], feed([encodings[i] for i in batch], names))[0]
        for i, row in zip(batch, rows):
            logits[i] = row.tolist()
    throughput = len(sentences) / (time.perf_counter() - start)

    def answer(sentence):
        row = session.run(["logits"], feed(encode([sentence]), names))[0][0]
        exps = np.exp(row - row.max())
        return exps / exps.sum()

    for sentence in (sentences * (args.warmup // len(sentences) + 1))[: args.warmup]:
        answer(sentence)
    times_ms = []
    for sentence in sentences:
        start = time.perf_counter()
        answer(sentence)
        times_ms.append((time.perf_counter() - start) * 1e3)
    times_ms.sort()
    params, without_embeddings = parameters(model / "model.onnx")
    print(
        json.dumps(
            {
                "logits": logits,
                "throughput_per_s": throughput,
                "p50_ms": percentile(times_ms, 0.5),
                "p95_ms": percentile(times_ms, 0.95),
                "peak_rss_mb": peak_rss_mb(),
                "params": params,
                "params_without_embeddings": without_embeddings,
            }
        )
    )


if __name__ == "__main__":
    main()
