//! Data parallelism under `mpirun -np 2` (one thread a rank): `kd distill` and `kd finetune`
//! end with the single process's weights and dev history, the teacher cache two ranks build is
//! the single process's byte for byte, a signalled rank checkpoints the job and a killed one
//! stops it naming it, `--resume` (under 2 ranks, or 1) ends where the uninterrupted run ends,
//! and bad launches are refused.
//!
//! They need Open MPI (`mpirun`, and `mpicc` with libclang to build kd with `--features mpi`,
//! which the first test that needs it does, into `$KD_MPI_TARGET` or `target/mpi`); without
//! them they are skipped with a note, except in CI (`CI` set), which installs them
//! (experiments/scripts/mpi_setup.sh).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// kd built with `--features mpi`, or `None` (with a note) where Open MPI is missing.
fn mpi_kd() -> Option<&'static Path> {
    static BUILT: OnceLock<Option<PathBuf>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let have = |tool: &str| Command::new(tool).arg("--version").output().is_ok();
            if !have("mpirun") || !have("mpicc") {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "CI has no Open MPI (experiments/scripts/mpi_setup.sh installs it)"
                );
                common::note(
                    "skipping the data-parallel tests: no Open MPI (experiments/scripts/mpi_setup.sh)",
                );
                return None;
            }
            // `KD_MPI_TARGET` (CI: a folder kept between runs), else target/mpi.
            let target = std::env::var_os("KD_MPI_TARGET")
                .map(PathBuf::from)
                .unwrap_or_else(|| common::workspace_root().join("target/mpi"));
            let status = Command::new(env!("CARGO"))
                .args(["build", "--release", "--features", "mpi", "-p", "kd-experiments"])
                .env("CARGO_TARGET_DIR", &target)
                .current_dir(common::workspace_root())
                .status()
                .expect("run cargo");
            assert!(status.success(), "cargo build --features mpi failed");
            Some(target.join("release/kd"))
        })
        .as_deref()
}

/// `mpirun -np 2` running `kd args`, one thread a rank.
fn mpirun(kd: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("mpirun");
    command
        .args(["-np", "2", "--oversubscribe", "-x", "RAYON_NUM_THREADS=1"])
        .arg(kd)
        .args(args)
        .env("HF_HOME", common::hf_home())
        // CI runs as root, which Open MPI refuses unless told.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .current_dir(common::workspace_root());
    command
}

fn ok(output: Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed:\n{}",
        common::stderr(&output)
    );
    common::stdout(&output)
}

/// A tiny SST-2 teacher (MiniLM's vocabulary, 16 wide, 2 layers) fine-tuned for 40 steps, and
/// a data directory of 600 training sentences and 200 dev sentences.
fn tiny_task(root: &Path) -> (PathBuf, PathBuf) {
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for (file, lines) in [("train.tsv", 601), ("dev.tsv", 201)] {
        let text = std::fs::read_to_string(common::glue_dir("SST-2").join(file)).unwrap();
        let text: Vec<&str> = text.lines().take(lines).collect();
        std::fs::write(data.join(file), text.join("\n") + "\n").unwrap();
    }
    let model = root.join("tiny");
    common::write_tiny_model_sized(&model, 16, 0.1);
    // Without dropout: each rank draws its own masks, which a single process does not.
    let config = model.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    json["hidden_dropout_prob"] = 0.0.into();
    json["attention_probs_dropout_prob"] = 0.0.into();
    std::fs::write(&config, json.to_string()).unwrap();
    let teacher = root.join("teacher");
    common::kd_ok(&strs(&finetune_args(
        &model,
        &data,
        &teacher,
        &["--max-steps", "40", "--batch-size", "16"],
    )));
    (teacher, data)
}

fn finetune_args(model: &Path, data: &Path, out: &Path, more: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "finetune",
        "--model",
        model.to_str().unwrap(),
        "--task",
        "sst2",
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--lr",
        "1e-3",
        "--max-seq-len",
        "32",
        "--eval-every",
        "10",
    ]
    .map(String::from)
    .into();
    args.extend(more.iter().map(|s| s.to_string()));
    args
}

/// A DistilBERT-style recipe on the tiny teacher: cached logits (soft cross-entropy) and
/// cached hidden states (the cosine loss), 20 steps.
fn write_recipe(root: &Path, teacher: &Path, data: &Path) -> PathBuf {
    let recipe = root.join("recipe.toml");
    let text = format!(
        r#"name = "parallel"
[teacher]
model = "{teacher}"
[student]
kind = "distilbert"
copy_head = true
[data]
task = "SST-2"
data_dir = "{data}"
max_seq_len = 32
[training]
lr = 1e-3
batch_size = 16
seed = 7
eval_every = 5
max_steps = 20
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
"#,
        teacher = teacher.display(),
        data = data.display()
    );
    std::fs::write(&recipe, text).unwrap();
    recipe
}

fn distill_args(recipe: &Path, out: &Path, cache: &Path, more: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "distill",
        "--recipe",
        recipe.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ]
    .map(String::from)
    .into();
    args.extend(more.iter().map(|s| s.to_string()));
    args
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Every tensor of two safetensors files agrees within `tolerance`, relative to the tensor's
/// largest magnitude.
fn assert_weights_match(a: &Path, b: &Path, tolerance: f32) {
    let read = |path: &Path| candle_core::safetensors::load(path, &candle_core::Device::Cpu);
    let (a, b) = (read(a).unwrap(), read(b).unwrap());
    assert_eq!(
        a.keys().collect::<std::collections::BTreeSet<_>>(),
        b.keys().collect()
    );
    for (name, tensor) in &a {
        // Its gradient is rounding noise (softmax ignores a bias shared by all keys), which
        // AdamW's normalised step turns into steps of the learning rate's size either way.
        if name.ends_with("key.bias") {
            continue;
        }
        let scale = tensor
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .max(1e-12);
        let difference = common::max_abs_diff(tensor, &b[name]) / scale;
        assert!(
            difference <= tolerance,
            "{name}: relative difference {difference}"
        );
    }
}

/// The dev metrics of every evaluation in a run's log, in order.
fn dev_history(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter_map(|line| {
            let entry: serde_json::Value = serde_json::from_str(line).ok()?;
            let evaluation = entry.get("evaluation")?;
            Some(serde_json::json!([evaluation["step"], evaluation["dev"]]))
        })
        .collect()
}

/// The cache's files by name, with their bytes.
fn cache_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(entry.path()).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn two_ranks_follow_one_process_and_share_the_teacher_cache() {
    let Some(kd) = mpi_kd() else { return };
    let root = tempfile::tempdir().unwrap();
    let (teacher, data) = tiny_task(root.path());
    let recipe = write_recipe(root.path(), &teacher, &data);

    // kd distill: one process (the build without MPI), then two ranks.
    let (single, parallel) = (root.path().join("single"), root.path().join("parallel"));
    let (single_cache, parallel_cache) = (root.path().join("cache-1"), root.path().join("cache-2"));
    common::kd_ok(&strs(&distill_args(&recipe, &single, &single_cache, &[])));
    let output = mpirun(
        kd,
        &strs(&distill_args(&recipe, &parallel, &parallel_cache, &[])),
    )
    .output()
    .unwrap();
    let stderr = common::stderr(&output);
    ok(output, "kd distill under mpirun -np 2");
    assert!(
        stderr.contains("rank 0 of 2") && stderr.contains("rank 1 of 2"),
        "{stderr}"
    );
    assert_weights_match(
        &single.join("model.safetensors"),
        &parallel.join("model.safetensors"),
        1e-5,
    );
    let stage_log = |out: &Path| out.join("1-distill/log.jsonl");
    let history = dev_history(&stage_log(&single));
    assert_eq!(history.len(), 4, "{history:?}");
    assert_eq!(history, dev_history(&stage_log(&parallel)));
    let (one, two) = (cache_files(&single_cache), cache_files(&parallel_cache));
    assert!(
        one.len() >= 2,
        "cache files: {one:?}",
        one = one.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    let names = |files: &[(String, Vec<u8>)]| files.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&one), names(&two), "the cache files two ranks wrote");
    for ((name, a), (_, b)) in one.iter().zip(&two) {
        let first = a.iter().zip(b).position(|(x, y)| x != y);
        assert!(
            a == b,
            "{name}: sizes {} and {}, first difference at {first:?}",
            a.len(),
            b.len()
        );
    }

    // kd finetune, an odd batch (15): the ranks' shares differ in size.
    let tiny = root.path().join("tiny");
    let more = ["--max-steps", "20", "--batch-size", "15", "--seed", "3"];
    let (single, parallel) = (root.path().join("ft-1"), root.path().join("ft-2"));
    common::kd_ok(&strs(&finetune_args(&tiny, &data, &single, &more)));
    ok(
        mpirun(kd, &strs(&finetune_args(&tiny, &data, &parallel, &more)))
            .output()
            .unwrap(),
        "kd finetune under mpirun -np 2",
    );
    assert_weights_match(
        &single.join("model.safetensors"),
        &parallel.join("model.safetensors"),
        1e-5,
    );
    let history = dev_history(&single.join("log.jsonl"));
    assert_eq!(history.len(), 2);
    assert_eq!(history, dev_history(&parallel.join("log.jsonl")));
}

/// The pid of rank `rank` among `mpirun`'s children (Open MPI puts the rank in each one's
/// environment).
fn rank_pid(mpirun: u32, rank: usize) -> Option<i32> {
    let wanted = format!("OMPI_COMM_WORLD_RANK={rank}");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // The parent pid is the second field after the parenthesised command name.
            let parent: u32 = stat
                .rsplit(')')
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            let environ = std::fs::read(entry.path().join("environ")).ok()?;
            let has_rank = environ
                .split(|&b| b == 0)
                .any(|var| var == wanted.as_bytes());
            (parent == mpirun && has_rank).then_some(pid)
        })
}

#[test]
fn a_signalled_or_killed_rank_stops_the_job_and_resume_ends_where_the_uninterrupted_run_ends() {
    let Some(kd) = mpi_kd() else { return };
    let root = tempfile::tempdir().unwrap();
    let (teacher, data) = tiny_task(root.path());
    let recipe = write_recipe(root.path(), &teacher, &data);
    let cache = root.path().join("cache");
    let longer = [
        "--set",
        "stages.0.epochs=10",
        "--set",
        "training.max_steps=300",
        "--set",
        "training.eval_every=25",
    ];
    let straight = root.path().join("straight");
    ok(
        mpirun(
            kd,
            &strs(&distill_args(&recipe, &straight, &cache, &longer)),
        )
        .output()
        .unwrap(),
        "the uninterrupted run",
    );

    // SIGTERM on rank 1 alone checkpoints the whole job at one step; SIGKILL ends it, leaving
    // the last periodic checkpoint.
    for (signal, name) in [(libc::SIGTERM, "terminated"), (libc::SIGKILL, "killed")] {
        let out = root.path().join(name);
        let args = distill_args(&recipe, &out, &cache, &longer);
        let stderr_path = root.path().join(format!("{name}.txt"));
        let mut job = mpirun(kd, &strs(&args))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        let log = out.join("1-distill/log.jsonl");
        let started = std::time::Instant::now();
        let pid = loop {
            if log.is_file() && common::logged_steps(&log) >= 30 {
                let pid = rank_pid(job.id(), 1).expect("rank 1's process");
                // SAFETY: kill(2) on a pid just read, a child of the job's mpirun.
                unsafe { libc::kill(pid, signal) };
                break pid;
            }
            assert!(
                started.elapsed().as_secs() < 120 && job.try_wait().unwrap().is_none(),
                "the job ended or stalled before 30 steps"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        let status = job.wait().unwrap();
        let stderr = std::fs::read_to_string(&stderr_path).unwrap();
        assert!(!status.success(), "{stderr}");
        let steps = common::logged_steps(&log);
        assert!(steps < 300, "{name} only after {steps} steps");
        let state: serde_json::Value = serde_json::from_slice(
            &std::fs::read(out.join("1-distill/checkpoint/state.json")).unwrap(),
        )
        .unwrap();
        if signal == libc::SIGKILL {
            assert!(
                stderr.contains("rank 1") && stderr.contains(&pid.to_string()),
                "the error names neither rank 1 nor its pid {pid}:\n{stderr}"
            );
        } else {
            // Rank 0 saved where the job stood, after the signal reached rank 1.
            assert_eq!(state["interrupted"], true, "{stderr}");
            assert_eq!(state["step"].as_u64().unwrap() as usize, steps);
        }

        let mut resume = args.clone();
        resume.push("--resume".into());
        let (model, uninterrupted) = (
            out.join("model.safetensors"),
            straight.join("model.safetensors"),
        );
        if signal == libc::SIGKILL {
            ok(mpirun(kd, &strs(&resume)).output().unwrap(), "--resume");
            assert!(
                std::fs::read(&uninterrupted).unwrap() == std::fs::read(&model).unwrap(),
                "the killed and resumed job's model differs from the uninterrupted job's"
            );
        } else {
            // Another world size, the same global batch: one process goes on.
            common::kd_ok(&strs(&resume));
            assert_weights_match(&uninterrupted, &model, 1e-5);
        }
        assert_eq!(common::logged_steps(&log), 300);
    }
}

#[test]
fn bad_launches_are_refused_and_a_world_of_one_is_a_single_process() {
    let Some(kd) = mpi_kd() else { return };
    let root = tempfile::tempdir().unwrap();
    let (teacher, data) = tiny_task(root.path());
    let recipe = write_recipe(root.path(), &teacher, &data);
    let cache = root.path().join("cache");
    let run =
        |out: &str, more: &[&str]| distill_args(&recipe, &root.path().join(out), &cache, more);
    let failure = |mut command: Command| {
        let output = command.output().unwrap();
        assert!(!output.status.success());
        common::stderr(&output)
    };

    // kd built without MPI, launched by mpirun: each rank would run the whole job alone.
    let plain = Path::new(env!("CARGO_BIN_EXE_kd"));
    let error = failure(mpirun(plain, &strs(&run("plain", &[]))));
    assert!(
        error.contains("built without MPI") && error.contains("--features mpi"),
        "{error}"
    );
    assert!(!root.path().join("plain").exists());

    // More ranks than examples in a batch.
    let error = failure(mpirun(
        kd,
        &strs(&run("tiny-batch", &["--set", "training.batch_size=1"])),
    ));
    assert!(error.contains("cannot be shared by 2 ranks"), "{error}");
    assert!(
        !root.path().join("tiny-batch").exists(),
        "refused before writing"
    );

    // Ranks started with different settings (Open MPI's MPMD form: one command a rank).
    let mut differing = mpirun(kd, &strs(&run("differing", &[])));
    differing
        .arg(":")
        .args(["-np", "1", "-x", "RAYON_NUM_THREADS=1"])
        .arg(kd)
        .args(run("differing", &["--set", "training.lr=2e-3"]));
    // The first `-np 2` becomes `-np 1`: one rank a command.
    let args: Vec<String> = differing
        .get_args()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    let mut command = Command::new("mpirun");
    command
        .args(args.iter().map(|arg| if arg == "2" { "1" } else { arg }))
        .envs(differing.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .current_dir(common::workspace_root());
    let error = failure(command);
    assert!(
        error.contains("differ in their settings or data") && error.contains("rank(s) 1"),
        "{error}"
    );

    // mpirun -np 1: the single process's result.
    let single = root.path().join("single");
    common::kd_ok(&strs(&run("single", &[])));
    let mut one = Command::new("mpirun");
    one.args(["-np", "1", "-x", "RAYON_NUM_THREADS=1"])
        .arg(kd)
        .args(run("one", &[]))
        .env("HF_HOME", common::hf_home())
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    ok(one.output().unwrap(), "mpirun -np 1");
    assert_weights_match(
        &single.join("model.safetensors"),
        &root.path().join("one/model.safetensors"),
        1e-5,
    );
}
