"""PyTorch eager and ONNX Runtime reference for `kd bench --cases latency`.

Answers the same sentences as kd, one at a time, with the same model directory (kd writes HF
`BertForSequenceClassification` checkpoints): each sentence is tokenised (the fast HF
tokenizer), run, and its logits turned into probabilities, as kd does. `--runtime onnxruntime`
first exports the model with `torch.onnx.export` (dynamic batch and length) and runs it with
ONNX Runtime's full graph optimisations. Prints one JSON line with kd's latency fields.
Set up the interpreter with benches/setup.sh.
"""

import argparse
import json
from peak_memory import peak_rss_mb
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer


def percentile(sorted_ms, q):
    n = len(sorted_ms)
    return sorted_ms[min(max(int(np.ceil(n * q)), 1), n) - 1]


def export_onnx(model, tokenizer, path):
    sample = tokenizer("a short sentence", return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    dynamic = {name: {0: "batch", 1: "sequence"} for name in names}
    dynamic["logits"] = {0: "batch"}
    torch.onnx.export(
        model,
        (sample["input_ids"], sample["attention_mask"], sample["token_type_ids"]),
        str(path),
        input_names=names,
        output_names=["logits"],
        dynamic_axes=dynamic,
        opset_version=17,
        dynamo=False,
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--sentences", required=True)
    parser.add_argument("--runtime", choices=["pytorch", "onnxruntime"], required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=16)
    parser.add_argument("--max-seq-len", type=int, default=128)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    sentences = [json.loads(line) for line in Path(args.sentences).read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, attn_implementation="eager")
    model.eval()

    def encode(text, pair, tensors):
        return tokenizer(text, pair, truncation=True, max_length=args.max_seq_len, return_tensors=tensors)

    if args.runtime == "pytorch":
        def answer(text, pair):
            with torch.inference_mode():
                encoded = encode(text, pair, "pt")
                logits = model(**encoded).logits[0]
                return torch.softmax(logits, -1).numpy(), encoded["input_ids"].shape[1]
    else:
        import onnxruntime as ort

        directory = tempfile.TemporaryDirectory()
        path = Path(directory.name) / "model.onnx"
        export_onnx(model, tokenizer, path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def answer(text, pair):
            encoded = encode(text, pair, "np")
            feed = {name: encoded[name].astype(np.int64) for name in ("input_ids", "attention_mask", "token_type_ids")}
            logits = session.run(["logits"], feed)[0][0]
            exps = np.exp(logits - logits.max())
            return exps / exps.sum(), encoded["input_ids"].shape[1]

    for text, pair in (sentences * (args.warmup // len(sentences) + 1))[: args.warmup]:
        answer(text, pair)
    times_ms, tokens = [], 0
    for text, pair in sentences:
        start = time.perf_counter()
        _, length = answer(text, pair)
        times_ms.append((time.perf_counter() - start) * 1e3)
        tokens += length
    times_ms.sort()
    print(
        json.dumps(
            {
                "model": args.name,
                "runtime": args.runtime,
                "sentences": len(times_ms),
                "mean_tokens": tokens / len(times_ms),
                "mean_ms": sum(times_ms) / len(times_ms),
                "p50_ms": percentile(times_ms, 0.5),
                "p95_ms": percentile(times_ms, 0.95),
                "peak_rss_mb": peak_rss_mb(),
            }
        )
    )


if __name__ == "__main__":
    main()
