//! A run interrupted with Ctrl-C or SIGTERM saves a checkpoint and exits; `--resume` continues it to the
//! same result as an uninterrupted run.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

fn finetune_args<'a>(model: &'a str, data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "finetune",
        "--model",
        model,
        "--task",
        "sst2",
        "--data-dir",
        data,
        "--out",
        out,
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--eval-every",
        "20",
        "--max-seq-len",
        "32",
    ]
}

fn kd_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kd"));
    command
        .args(args)
        .env("HF_HOME", common::hf_home())
        .stdout(Stdio::null());
    command
}

fn logged_steps(out: &Path) -> usize {
    common::logged_steps(&out.join("log.jsonl"))
}

/// Starts a run, sends `signal` once it has logged 30 steps, and returns the run's output.
fn interrupt(args: &[&str], out: &Path, signal: i32) -> std::process::Output {
    common::interrupt_after(kd_command(args), &out.join("log.jsonl"), 30, signal)
}

#[test]
fn an_interrupted_or_killed_run_resumes_to_the_uninterrupted_result() {
    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("model");
    common::write_tiny_model(&model);
    // 2000 SST-2 training sentences, the full dev set.
    let data = root.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let train = std::fs::read_to_string(common::glue_dir("SST-2").join("train.tsv")).unwrap();
    let train: Vec<&str> = train.lines().take(2001).collect();
    std::fs::write(data.join("train.tsv"), train.join("\n")).unwrap();
    let dev = common::glue_dir("SST-2").join("dev.tsv");
    std::fs::copy(dev, data.join("dev.tsv")).unwrap();
    let (model, data) = (model.to_str().unwrap(), data.to_str().unwrap());

    let straight = root.path().join("straight");
    let args = finetune_args(model, data, straight.to_str().unwrap());
    assert!(
        kd_command(&args)
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    );
    let read = |dir: &Path, file: &str| std::fs::read(dir.join(file)).unwrap();
    // Every evaluation, less its timing.
    let history = |dir: &Path| -> serde_json::Value {
        let mut history = serde_json::from_slice::<serde_json::Value>(&read(dir, "metrics.json"))
            .unwrap()["history"]
            .take();
        for evaluation in history.as_array_mut().unwrap() {
            evaluation.as_object_mut().unwrap().remove("train_seconds");
        }
        history
    };

    // Ctrl-C (SIGINT) and SIGTERM save a checkpoint where the run is; SIGKILL leaves the last
    // periodic one (every 20 steps) and log lines past it, which the resumed run replaces.
    let signals = [
        (libc::SIGINT, "interrupted"),
        (libc::SIGTERM, "terminated"),
        (libc::SIGKILL, "killed"),
    ];
    for (signal, name) in signals {
        let out = root.path().join(name);
        let args = finetune_args(model, data, out.to_str().unwrap());
        let output = interrupt(&args, &out, signal);
        if signal != libc::SIGKILL {
            assert_eq!(
                output.status.code(),
                Some(130),
                "{}",
                common::stderr(&output)
            );
            assert!(common::stderr(&output).contains("--resume"));
        }
        let steps = logged_steps(&out);
        assert!(steps < 500, "{name} only after {steps} steps");
        assert!(out.join("checkpoint/state.json").is_file());

        let mut resume = args.clone();
        resume.push("--resume");
        if signal == libc::SIGTERM {
            // A damaged checkpoint is refused, named, with what to do; the intact one resumes.
            let params = out.join("checkpoint/params.safetensors");
            let intact = std::fs::read(&params).unwrap();
            let mut flipped = intact.clone();
            *flipped.last_mut().unwrap() ^= 4;
            std::fs::write(&params, flipped).unwrap();
            let error = common::kd_err(&resume);
            assert!(
                error.contains("params.safetensors is corrupt") && error.contains("--force"),
                "{error}"
            );
            std::fs::write(&params, intact).unwrap();
        }
        assert!(
            kd_command(&resume)
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success()
        );
        assert_eq!(logged_steps(&out), 500, "{name}");
        assert!(
            read(&straight, "model.safetensors") == read(&out, "model.safetensors"),
            "the {name} and resumed run's best model differs from the uninterrupted run's"
        );
        assert_eq!(history(&straight), history(&out), "{name}");
    }
}
