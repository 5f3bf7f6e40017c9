"""kd: knowledge distillation for BERT-family models, from Python.

The functions run kd's commands in this process (finetune, evaluate, predict, distill,
compare, export) and return what the command prints, as Python dicts and lists. They
release the GIL while they work, print kd's progress to standard error, and raise
KeyboardInterrupt at Ctrl-C once kd has stopped: a training run at its next step, with a
checkpoint that the same call with ``resume=True`` continues; predict after its current
batches; evaluate, compare and export when their work is done (they cannot stop part-way).
kd's errors raise :class:`KdError` with kd's full message.

    import kd
    teacher = kd.finetune("sentence-transformers/all-MiniLM-L6-v2", "runs/teacher",
                          task="sst2", epochs=1, data={"max_train_examples": 2000})
    summary = kd.distill("experiments/recipes/sst2-distilbert-l3.toml",
                         {"teacher.model": "runs/teacher", "stages.0.epochs": 1},
                         out="runs/student")
    print(summary["student"]["dev"]["accuracy"])
    print(kd.predict("runs/student", ["a gorgeous , witty movie ."]))
"""

from ._native import KdError, compare, distill, evaluate, export, finetune, predict

__all__ = ["KdError", "compare", "distill", "evaluate", "export", "finetune", "predict"]
