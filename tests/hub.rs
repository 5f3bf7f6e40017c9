//! Downloading a model through `hf-hub` from a hub endpoint: a small local HTTP server speaks
//! the part of the hub's protocol that `hf-hub` uses, serving all-MiniLM-L6-v2's files.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Serves `GET /<org>/<name>/resolve/main/<file>` with `Range: bytes=N-[M]` from `dir`,
/// with the headers `hf-hub` reads (`etag`, `x-repo-commit`, `content-range`).
fn serve(dir: PathBuf) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let dir = dir.clone();
            std::thread::spawn(move || respond(stream, &dir));
        }
    });
    port
}

fn respond(mut stream: TcpStream, dir: &Path) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    reader.read_line(&mut request_line).unwrap();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 || line.trim().is_empty() {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
            let (start, end) = value.trim().split_once('-').unwrap();
            range = Some((start.parse::<u64>().unwrap(), end.parse::<u64>().ok()));
        }
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let file = path
        .split_once("/resolve/main/")
        .map(|(_, file)| dir.join(file))
        .filter(|file| file.is_file());
    let Some(file) = file else {
        let _ = stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let mut content = Vec::new();
    std::fs::File::open(&file)
        .unwrap()
        .read_to_end(&mut content)
        .unwrap();
    let size = content.len() as u64;
    let (start, end) = range.unwrap_or((0, None));
    let end = end.unwrap_or(size - 1).min(size - 1);
    let body = &content[start as usize..=end as usize];
    let name = file
        .file_name()
        .unwrap()
        .to_string_lossy()
        .replace('.', "-");
    let head = format!(
        "HTTP/1.1 206 Partial Content\r\netag: \"{name}-{size}\"\r\nx-repo-commit: {COMMIT}\r\n\
         content-range: bytes {start}-{end}/{size}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

fn embed(hf_home: &Path, endpoint: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_kd"))
        .args([
            "embed",
            "--model",
            common::MINILM,
            "--normalize",
            "It rains.",
        ])
        .env("HF_HOME", hf_home)
        .env("HF_ENDPOINT", endpoint)
        .output()
        .unwrap()
}

#[test]
fn a_hub_id_downloads_into_the_cache_then_works_offline() {
    let port = serve(common::minilm_dir());
    let hf_home = tempfile::tempdir().unwrap();
    let online = embed(hf_home.path(), &format!("http://127.0.0.1:{port}"));
    assert!(online.status.success(), "{}", common::stderr(&online));
    let snapshot = hf_home
        .path()
        .join("hub/models--sentence-transformers--all-MiniLM-L6-v2/snapshots")
        .join(COMMIT);
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(snapshot.join(file).is_file(), "{file} not in the cache");
    }
    let downloaded = std::fs::read(snapshot.join("model.safetensors")).unwrap();
    let original = std::fs::read(common::minilm_dir().join("model.safetensors")).unwrap();
    assert!(downloaded == original, "the downloaded weights differ");

    // The same embedding as from the shared cache, and again with the hub unreachable.
    let reference = common::kd_ok(&[
        "embed",
        "--model",
        common::MINILM,
        "--normalize",
        "It rains.",
    ]);
    assert_eq!(common::stdout(&online), reference);
    let offline = embed(hf_home.path(), "http://127.0.0.1:9");
    assert!(offline.status.success(), "{}", common::stderr(&offline));
    assert_eq!(common::stdout(&offline), reference);
}
