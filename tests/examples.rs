//! The Python examples in `examples/`, run as a user runs them: the pinned
//! packages in the venv `make test` sets up (`.loupe/examples-venv`), stubs
//! generated from `proto/`, a real server on 127.0.0.1:0, generated parts as
//! PNG files. Also checks that the README shows each example verbatim.
//! Without the venv (plain `cargo test`) the test says that it skipped.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{PART_SIZE, TestServer, scratched, texture};

const EXAMPLES: [&str; 4] = ["health.py", "flow.py", "stream.py", "update.py"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The examples' Python, or `None` when the venv is not there.
fn python() -> Option<PathBuf> {
    let python = std::env::var_os("LOUPE_EXAMPLES_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".loupe/examples-venv/bin/python"));
    python.exists().then_some(python)
}

fn png(rgb: Vec<u8>, path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_raw(PART_SIZE as u32, PART_SIZE as u32, rgb)
        .unwrap()
        .save(path)
        .unwrap();
}

/// Runs `python examples/NAME ARGS` with the stubs in `stubs`, off the
/// runtime that serves.
async fn example(python: &Path, stubs: &Path, name: &str, args: &[String]) -> Output {
    let mut command = Command::new(python);
    command
        .arg(root().join("examples").join(name))
        .args(args)
        .env("PYTHONPATH", stubs)
        .current_dir(root());
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    eprintln!(
        "{name}: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_readme_shows_every_example_verbatim() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    for name in EXAMPLES {
        let code = std::fs::read_to_string(root().join("examples").join(name)).unwrap();
        assert!(
            readme.contains(&format!("```python\n{code}```")),
            "README.md does not show examples/{name} as it is"
        );
    }
}

#[tokio::test]
async fn the_python_examples_run_as_written() {
    let Some(python) = python() else {
        eprintln!(
            "SKIPPED the_python_examples_run_as_written: no .loupe/examples-venv (`make test` or `make examples-venv` makes it)"
        );
        return;
    };
    let stubs = tempfile::tempdir().unwrap();
    // Relative to the checkout, as the README's command names them.
    let protos: Vec<String> = std::fs::read_dir(root().join("proto/loupe/v1"))
        .unwrap()
        .map(|entry| format!("proto/loupe/v1/{}", entry.unwrap().file_name().to_string_lossy()))
        .collect();
    let generated = Command::new(&python)
        .args(["-m", "grpc_tools.protoc", "-Iproto"])
        .arg(format!("--python_out={}", stubs.path().display()))
        .arg(format!("--grpc_python_out={}", stubs.path().display()))
        .args(&protos)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );

    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(common::config(data.path())).await;
    let address = server.addr.to_string();
    let work = tempfile::tempdir().unwrap();
    for i in 0..5u64 {
        png(
            texture(i + 1, i as f32 * 1.7, i as f32 * 0.9),
            &work.path().join(format!("good/{i:03}.png")),
        );
    }
    png(texture(100, 0.3, 1.1), &work.path().join("parts/good.png"));
    png(scratched(), &work.path().join("parts/scratch.png"));
    let path = |p: &str| work.path().join(p).display().to_string();
    let with_server =
        |rest: &[String]| [vec!["--server".to_owned(), address.clone()], rest.to_vec()].concat();

    let health = example(&python, stubs.path(), "health.py", &with_server(&[])).await;
    assert!(health.status.success());
    assert!(stdout(&health).contains("SERVING"));

    let overlay = path("scratch.overlay.png");
    let flow_args = with_server(&[
        "--recipe".into(),
        "weave".into(),
        "--overlay".into(),
        overlay.clone(),
        path("good"),
        path("parts/scratch.png"),
    ]);
    let flow = example(&python, stubs.path(), "flow.py", &flow_args).await;
    assert!(flow.status.success());
    let text = stdout(&flow);
    assert!(text.contains("recipe weave: 5 good frames"), "{text}");
    assert!(
        text.contains("scratch.png: VERDICT_FAIL"),
        "the encoded file fails: {text}"
    );
    assert!(text.contains("raw: VERDICT_FAIL"), "the raw buffer fails: {text}");
    assert!(std::fs::read(&overlay).unwrap().starts_with(b"\x89PNG"));
    // Run again: the recipe is there, its good frames are replaced.
    let again = example(&python, stubs.path(), "flow.py", &flow_args).await;
    assert!(again.status.success());
    assert!(stdout(&again).contains("recipe weave: 5 good frames"));

    let stream = example(
        &python,
        stubs.path(),
        "stream.py",
        &with_server(&["--recipe".into(), "weave".into(), path("parts")]),
    )
    .await;
    assert_eq!(stream.status.code(), Some(1), "a part failed");
    let text = stdout(&stream);
    assert!(text.contains("good.png: VERDICT_PASS"), "{text}");
    assert!(text.contains("scratch.png: VERDICT_FAIL"), "{text}");
    assert!(text.contains("2 frames, 1 failed"), "{text}");

    let update = example(
        &python,
        stubs.path(),
        "update.py",
        &with_server(&[
            "--recipe".into(),
            "weave".into(),
            "--sensitivity".into(),
            "1.2".into(),
        ]),
    )
    .await;
    assert!(update.status.success());
    let text = stdout(&update);
    assert!(text.contains("sensitivity 1 -> 1.2,"), "{text}");
    assert!(text.contains("match mode MATCH_MODE_GLOBAL"), "{text}");
    assert!(text.contains("reference rebuilt: False"), "{text}");
    server.stop().await.unwrap();
}
