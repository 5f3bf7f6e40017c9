"""gpu_check.sh's report: reads what the check left in OUT and writes OUT/gpu.md (the section
for experiments/results/gpu.md) and OUT/gpu.json, against the targets of issue #36: steps at
most 0.8x PyTorch eager's time (f32 and bf16), the SST-2 recipe at least 1.5x faster than
PyTorch with length grouping.

Usage: gpu_report.py OUT PARITY TORCH_NOTE TOOLKIT RECIPE_WALL_MS STEPS CHECK_SECONDS
"""

import json
import sys
from pathlib import Path


def jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def main():
    out, parity, torch_note, toolkit, recipe_wall_ms, steps, check_seconds = sys.argv[1:8]
    out = Path(out)
    gpu = (out / "gpu.txt").read_text().strip()
    report = {"gpu": gpu, "toolkit": toolkit, "parity": parity, "pytorch": torch_note, "steps": [], "recipe": {}}
    lines = [
        f"GPU, driver, memory: {gpu}; CUDA toolkit {toolkit}; {torch_note}.",
        f"Parity (tests/gpu.rs, GPU against CPU): {parity}. Whole check: {check_seconds} s.",
        "",
        "| precision | shape | case | kd ms | PyTorch ms | kd / PyTorch | target 0.8 |",
        "|---|---|---|---|---|---|---|",
    ]
    for precision in ["f32", "bf16"]:
        path = out / f"bench-{precision}.json"
        if not path.exists():
            continue
        for row in json.loads(path.read_text())["results"]:
            kd, torch = row["kd"], row.get("pytorch")
            ratio = kd["median_ms"] / torch["median_ms"] if torch else None
            verdict = "" if ratio is None or kd["case"] == "gemm" else ("met" if ratio <= 0.8 else "missed")
            report["steps"].append({"precision": precision, "shape": kd["shape"], "case": kd["case"],
                                    "kd_ms": kd["median_ms"], "pytorch_ms": torch and torch["median_ms"], "ratio": ratio})
            torch_ms = f"{torch['median_ms']:.2f}" if torch else "n/a"
            ratio_text = f"{ratio:.2f}" if ratio else "n/a"
            lines.append(f"| {precision} | {kd['shape']} | {kd['case']} | {kd['median_ms']:.2f} | {torch_ms} | {ratio_text} | {verdict} |")

    summary = json.loads((out / "student.json").read_text()) if (out / "student.json").exists() else {}
    log = jsonl(out / "runs/student/1-distill/log.jsonl")
    evaluations = [entry["evaluation"] for entry in log if "evaluation" in entry]
    stage = (summary.get("stages") or [{}])[0]
    kd_train = evaluations[-1]["train_seconds"] if evaluations else None
    kd_teacher = stage.get("teacher_seconds")
    torch_rows = jsonl(out / "pytorch-distill.jsonl")
    torch_train = torch_rows[-1]["train_seconds"] if torch_rows else None
    kd_total = kd_train + kd_teacher if kd_train is not None and kd_teacher is not None else None
    speedup = torch_train / kd_total if torch_train and kd_total else None
    report["recipe"] = {
        "steps": int(steps), "kd_wall_ms": int(recipe_wall_ms), "kd_train_s": kd_train, "kd_teacher_s": kd_teacher,
        "kd_dev_accuracy": summary.get("student", {}).get("dev", {}).get("accuracy"),
        "pytorch_train_s": torch_train, "pytorch_dev_accuracy": torch_rows[-1]["dev_accuracy"] if torch_rows else None,
        "speedup": speedup,
    }
    recipe = report["recipe"]
    seconds = lambda value: "n/a" if value is None else f"{value:.1f}"
    lines += [
        "",
        f"SST-2 DistilBERT recipe, {steps} steps on the GPU: kd {seconds(kd_train)} s training + {seconds(kd_teacher)} s teacher "
        f"(whole command {int(recipe_wall_ms) / 1000:.1f} s), dev accuracy {recipe['kd_dev_accuracy']}; "
        f"PyTorch with length grouping {seconds(torch_train)} s, dev accuracy {recipe['pytorch_dev_accuracy']}; "
        + (f"kd {speedup:.2f}x faster (target 1.5x: {'met' if speedup >= 1.5 else 'missed'})." if speedup else "no ratio."),
    ]
    (out / "gpu.md").write_text("\n".join(lines) + "\n")
    (out / "gpu.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
