"""PyTorch eager reference for `kd bench`: the same cases on the same shapes and threads.

Prints one JSON line with the fields kd's measurement has. `kd bench --pytorch PYTHON` runs
it once per case, in a fresh process, so that the peak memory is the case's own.
Set up the interpreter with benches/setup.sh.
"""

import argparse
import json
from peak_memory import peak_rss_mb
import time

import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification

SHAPES = {
    # layers, hidden, heads, intermediate, batch
    "small": (6, 384, 12, 1536, 32),
    "base": (12, 768, 12, 3072, 8),
}


def model(shape, layers, seed):
    _, hidden, heads, intermediate, _ = SHAPES[shape]
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=512,
        num_labels=2,
        attn_implementation="eager",
    )
    return BertForSequenceClassification(config)


def optimizer(net, lr=1e-5):
    """AdamW as kd runs it: weight decay on weights only (the global norm is clipped to 1 in
    `update`)."""
    decay = [p for n, p in net.named_parameters() if not n.endswith("bias") and "LayerNorm" not in n]
    no_decay = [p for n, p in net.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )


def update(net, opt, loss):
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()


def distillation_loss(student_out, teacher_out, labels, mask, temperature=2.0):
    """DistilBERT's objective: 5 * soft cross-entropy + 2 * hard + 1 * cosine of last states."""
    soft = F.kl_div(
        F.log_softmax(student_out.logits / temperature, -1),
        F.softmax(teacher_out.logits / temperature, -1),
        reduction="batchmean",
    ) * temperature**2
    hard = F.cross_entropy(student_out.logits, labels)
    real = mask.bool()
    s = student_out.hidden_states[-1][real]
    t = teacher_out.hidden_states[-1][real]
    cosine = F.cosine_embedding_loss(s, t, torch.ones(s.shape[0], device=s.device))
    return 5.0 * soft + 2.0 * hard + 1.0 * cosine


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", required=True, choices=SHAPES)
    parser.add_argument("--cases", required=True, choices=["gemm", "inference", "train", "distill"])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N, as kd names them")
    parser.add_argument(
        "--precision", default="f32", choices=["f32", "bf16"], help="bf16: autocast (mixed precision)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    # A GPU runs asynchronously: a step ends when its kernels have.
    synchronize = torch.cuda.synchronize if device.type == "cuda" else lambda: None

    # bf16 as PyTorch users run it: f32 parameters and optimizer, products under autocast.
    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    shape, case = args.shapes, args.cases
    layers, *_, batch = SHAPES[shape]
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30522, (batch, args.seq_len), generator=generator).to(device)
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 2, (batch,), generator=generator).to(device)
    teacher = model(shape, layers, 1).to(device)

    if case == "gemm":
        # The dense-layer product alone (FFN input: tokens x hidden by hidden x intermediate).
        _, hidden, _, intermediate, _ = SHAPES[shape]
        xs = torch.randn(batch * args.seq_len, hidden, generator=generator).to(device)
        weight = torch.randn(intermediate, hidden, generator=generator).to(device)
        bias = torch.zeros(intermediate, device=device)

        def step():
            with torch.no_grad(), autocast():
                F.linear(xs, weight, bias)

    elif case == "inference":
        teacher.eval()

        def step():
            with torch.no_grad(), autocast():
                teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True)

    elif case == "train":
        teacher.train()
        opt = optimizer(teacher)

        def step():
            with autocast():
                out = teacher(input_ids=ids, attention_mask=mask)
            update(teacher, opt, F.cross_entropy(out.logits.float(), labels))

    else:
        teacher.eval()
        student = model(shape, layers // 2, 2).to(device)
        student.train()
        opt = optimizer(student)

        def step():
            with torch.no_grad(), autocast():
                teacher_out = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            with autocast():
                student_out = student(input_ids=ids, attention_mask=mask, output_hidden_states=True)
                loss = distillation_loss(student_out, teacher_out, labels, mask)
            update(student, opt, loss)

    for _ in range(args.warmup):
        step()
    synchronize()
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        step()
        synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    print(
        json.dumps(
            {
                "shape": shape,
                "case": case,
                "times_ms": times,
                "min_ms": min(times),
                "median_ms": sorted(times)[len(times) // 2],
                "peak_rss_mb": peak_rss_mb(),
            }
        )
    )


if __name__ == "__main__":
    main()
