"""Ctrl-C stops kd.distill as it stops `kd distill`: at the next step, with a checkpoint, and
KeyboardInterrupt saying to resume; the same call with resume=True finishes the run to the
uninterrupted result (tests/resume.rs checks the command line's side). Other Python threads run
while kd works: the GIL is released."""

import signal
import subprocess
import sys
import threading
import time

import kd
from conftest import ROOT, comparable

# Two examples a batch, 512 examples for 4 epochs: 1024 steps (a second or two: the stop comes
# within 100 ms), checkpointed every 100.
SETTINGS = {"training.batch_size": 2, "stages.0.epochs": 4, "training.eval_every": 100}
STEPS = 1024

# The child restores Python's own Ctrl-C handler: started from a background job (`cmd &` in a
# script, as CI may be), it inherits SIGINT ignored, which Python keeps, and the signal would
# never reach kd (session 32's CI run: the run finished and exited 0).
CALL = """
import signal, sys, kd
signal.signal(signal.SIGINT, signal.default_int_handler)
kd.distill(sys.argv[1], {settings!r}, sys.argv[2], cache_dir=sys.argv[3], resume={resume})
"""


def logged_steps(log):
    try:
        return sum(line.startswith('{"step"') for line in log.read_text().splitlines())
    except FileNotFoundError:
        return 0


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(recipe, workdir):
    out, cache = workdir / "interrupted", workdir / "interrupt-cache"
    log = out / "1-distill" / "log.jsonl"
    child = subprocess.Popen(
        [sys.executable, "-c", CALL.format(settings=SETTINGS, resume=False),
         str(recipe), str(out), str(cache)],
        stderr=subprocess.PIPE, text=True, cwd=ROOT)
    started = time.monotonic()
    while logged_steps(log) < 5:
        assert child.poll() is None, child.stderr.read()
        assert time.monotonic() - started < 120, "no progress"
        time.sleep(0.02)
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=120)
    # Python ends on an uncaught KeyboardInterrupt by the signal itself.
    assert child.returncode == -signal.SIGINT, stderr
    assert "KeyboardInterrupt: interrupted: checkpoint saved in" in stderr, stderr
    assert "resume=True" in stderr
    steps = logged_steps(log)
    assert 5 <= steps < STEPS, f"interrupted only after {steps} steps"
    assert (out / "1-distill" / "checkpoint" / "state.json").is_file()
    assert not (out / "summary.json").exists() or '"interrupted":true' in (
        out / "summary.json").read_text().replace(" ", "")

    resumed = kd.distill(recipe, SETTINGS, out, cache_dir=cache, resume=True)
    assert resumed["interrupted"] is False
    assert resumed["stages"][0]["steps"] == STEPS
    assert logged_steps(log) == STEPS

    straight = kd.distill(recipe, SETTINGS, workdir / "straight", cache_dir=cache)
    resumed, straight = comparable(resumed), comparable(straight)
    for summary in (resumed, straight):
        summary["stages"][0].pop("teacher_cache")
    assert resumed == straight
    assert (out / "model.safetensors").read_bytes() == (
        workdir / "straight" / "model.safetensors").read_bytes()


def test_other_threads_run_while_kd_works(recipe, workdir):
    ticks, done = [0], threading.Event()

    def tick():
        while not done.is_set():
            ticks[0] += 1
            time.sleep(0.001)

    ticker = threading.Thread(target=tick)
    ticker.start()
    started = time.monotonic()
    try:
        kd.distill(recipe, SETTINGS, workdir / "gil", cache_dir=workdir / "gil-cache")
    finally:
        done.set()
        ticker.join()
    seconds = time.monotonic() - started
    # Holding the GIL, kd would let the thread in only when it polls for signals (10 times a
    # second); released, it ticks hundreds of times a second.
    assert ticks[0] > 100 * seconds, f"{ticks[0]} ticks in {seconds:.2f} s"
