//! A run interrupted with Ctrl-C or SIGTERM saves a checkpoint and exits; `--resume` continues it to the
//! same result as an uninterrupted run, and refuses changed inputs or a full disk without
//! touching the checkpoint.

mod common;

use std::os::unix::process::CommandExt;
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

/// A checkpoint's state and the files it names, by name.
fn checkpoint_files(checkpoint: &Path) -> Vec<(String, Vec<u8>)> {
    let state = std::fs::read(checkpoint.join("state.json")).unwrap();
    let names = serde_json::from_slice::<serde_json::Value>(&state).unwrap()["checkpoint"].take();
    let files = ["params", "optimizer"].map(|file| checkpoint.join(names[file].as_str().unwrap()));
    std::iter::once(checkpoint.join("state.json"))
        .chain(files)
        .map(|path| (path.display().to_string(), std::fs::read(path).unwrap()))
        .collect()
}

/// Resumes that must fail before touching the checkpoint in `out`: changed options, changed
/// training data (both named in the error), and a disk that fills up (a file-size limit
/// smaller than the weights) while the next checkpoint is written.
fn refused_resumes(resume: &[&str], out: &Path, data: &Path) {
    let checkpoint = out.join("checkpoint");
    let before = checkpoint_files(&checkpoint);

    let mut changed = resume.to_vec();
    changed.extend(["--lr", "1e-4"]);
    let error = common::kd_err(&changed);
    assert!(
        error.contains("training.lr: was 0.00005, is now 0.0001") && error.contains("--force"),
        "{error}"
    );
    let train = data.join("train.tsv");
    let original = std::fs::read(&train).unwrap();
    std::fs::write(&train, [&original[..], b"\na new sentence\t1"].concat()).unwrap();
    let error = common::kd_err(resume);
    assert!(
        error.contains(&format!("{}: changed", train.display())),
        "{error}"
    );
    std::fs::write(&train, original).unwrap();

    let limit = before[1].1.len() as u64 / 2; // half the weights
    let mut command = kd_command(resume);
    // SAFETY: only setrlimit, which is async-signal-safe, runs between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let rlimit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            match libc::setrlimit(libc::RLIMIT_FSIZE, &rlimit) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        })
    };
    let output = command.stderr(Stdio::piped()).output().unwrap();
    let error = common::stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{error}");
    assert!(
        error.contains("cannot write") && error.contains("File too large"),
        "{error}"
    );
    assert!(
        checkpoint_files(&checkpoint) == before,
        "a failed checkpoint write changed the checkpoint"
    );
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
            // Exited as shells report the signal: 130 for Ctrl-C, 143 for SIGTERM.
            assert_eq!(
                output.status.code(),
                Some(128 + signal),
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
        if signal == libc::SIGINT {
            refused_resumes(&resume, &out, Path::new(data));
        }
        if signal == libc::SIGTERM {
            // A damaged checkpoint is refused, named, with what to do; the intact one resumes.
            let params = common::checkpoint_params(&out.join("checkpoint"));
            let intact = std::fs::read(&params).unwrap();
            let mut flipped = intact.clone();
            *flipped.last_mut().unwrap() ^= 4;
            std::fs::write(&params, flipped).unwrap();
            let error = common::kd_err(&resume);
            assert!(
                error.contains(".safetensors is corrupt") && error.contains("--force"),
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
