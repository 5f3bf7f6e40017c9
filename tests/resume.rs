//! A run interrupted with Ctrl-C saves a checkpoint and exits; `--resume` continues it to the
//! same result as an uninterrupted run.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
    std::fs::read_to_string(out.join("log.jsonl"))
        .map(|log| log.lines().filter(|l| l.starts_with("{\"step\"")).count())
        .unwrap_or(0)
}

#[test]
fn an_interrupted_run_resumes_to_the_uninterrupted_result() {
    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("model");
    common::write_tiny_model(&model);
    // 2000 SST-2 training sentences, the full dev set.
    let data = root.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let train = std::fs::read_to_string(common::glue_dir("SST-2").join("train.tsv")).unwrap();
    let train: Vec<&str> = train.lines().take(2001).collect();
    std::fs::write(data.join("train.tsv"), train.join("\n")).unwrap();
    std::fs::copy(
        common::glue_dir("SST-2").join("dev.tsv"),
        data.join("dev.tsv"),
    )
    .unwrap();
    let (model, data) = (model.to_str().unwrap(), data.to_str().unwrap());

    let straight = root.path().join("straight");
    let status = kd_command(&finetune_args(model, data, straight.to_str().unwrap()))
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());

    // Interrupt a second run part-way with SIGINT, as Ctrl-C does.
    let interrupted = root.path().join("interrupted");
    let args = finetune_args(model, data, interrupted.to_str().unwrap());
    let child = kd_command(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while logged_steps(&interrupted) < 30 {
        assert!(started.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(130),
        "{}",
        common::stderr(&output)
    );
    assert!(common::stderr(&output).contains("--resume"));
    let steps = logged_steps(&interrupted);
    assert!(steps < 500, "interrupted only after {steps} steps");
    assert!(interrupted.join("checkpoint/state.json").is_file());

    let mut resume = args.clone();
    resume.push("--resume");
    let status = kd_command(&resume).stderr(Stdio::null()).status().unwrap();
    assert!(status.success());
    assert_eq!(logged_steps(&interrupted), 500);

    let read = |dir: &Path, file: &str| std::fs::read(dir.join(file)).unwrap();
    assert!(
        read(&straight, "model.safetensors") == read(&interrupted, "model.safetensors"),
        "the resumed run's best model differs from the uninterrupted run's"
    );
    let metrics = |dir: &Path| -> serde_json::Value {
        serde_json::from_slice(&read(dir, "metrics.json")).unwrap()
    };
    assert_eq!(
        metrics(&straight)["history"],
        metrics(&interrupted)["history"]
    );
}
