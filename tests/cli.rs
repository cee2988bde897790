//! The `loupe` client commands as a script uses them: the real binary
//! against a real server on 127.0.0.1:0, generated parts as PNG files.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{PART_SIZE, TestServer, clients, enroll, scratched, texture};

fn png(rgb: Vec<u8>, path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_raw(PART_SIZE as u32, PART_SIZE as u32, rgb)
        .unwrap()
        .save(path)
        .unwrap();
}

/// Runs `loupe ARGS` in `dir` off the runtime that serves.
async fn loupe(dir: &Path, args: Vec<String>) -> Output {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_loupe"))
            .args(&args)
            .current_dir(dir)
            .env_remove("LOUPE_SERVER")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|&a| a.to_owned()).collect()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn inspect_exits_by_verdict_and_prints_json_lines() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(common::config(data.path())).await;
    let (mut recipes, _) = clients(&server).await;
    enroll(&mut recipes, "weave").await;
    let work = tempfile::tempdir().unwrap();
    // MVTec-style folders: the same file name in two folders.
    png(texture(100, 0.3, 1.1), &work.path().join("good/000.png"));
    png(scratched(), &work.path().join("crack/000.png"));
    // A scheme-less address, after the action's own flags.
    let address = server.addr.to_string();

    let passed = loupe(
        work.path(),
        args(&[
            "inspect",
            "--recipe",
            "weave",
            "good/000.png",
            "--server",
            &address,
        ]),
    )
    .await;
    assert_eq!(passed.status.code(), Some(0), "{passed:?}");
    assert!(stdout(&passed).starts_with("good/000.png: PASS"), "{passed:?}");

    let mixed = loupe(
        work.path(),
        args(&[
            "inspect",
            "--server",
            &address,
            "--recipe",
            "weave",
            "--json",
            "--heatmap",
            "heat",
            "good/000.png",
            "crack/000.png",
        ]),
    )
    .await;
    assert_eq!(mixed.status.code(), Some(1), "{mixed:?}");
    let lines: Vec<serde_json::Value> = stdout(&mixed)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{mixed:?}");
    assert_eq!(lines[0]["verdict"], "VERDICT_PASS");
    assert_eq!(lines[1]["verdict"], "VERDICT_FAIL");
    assert_eq!(lines[1]["frame_id"], "crack/000.png");
    assert!(lines[1]["score"].as_f64().unwrap() > lines[1]["threshold"].as_f64().unwrap());
    assert!(!lines[1]["regions"].as_array().unwrap().is_empty());
    assert!(lines[1]["timings"]["total_us"].as_u64().unwrap() > 0);
    // One overlay each, none overwriting the other.
    for (line, name) in lines
        .iter()
        .zip(["heat/good/000.overlay.png", "heat/crack/000.overlay.png"])
    {
        assert_eq!(line["overlay"], name);
        assert!(work.path().join(name).is_file(), "{name} missing");
    }

    let missing = loupe(
        work.path(),
        args(&[
            "inspect",
            "--server",
            &address,
            "--recipe",
            "weave",
            "good/000.png",
            "nothing.png",
        ]),
    )
    .await;
    assert_eq!(missing.status.code(), Some(2), "{missing:?}");
    assert!(stdout(&missing).contains("nothing.png: ERROR"), "{missing:?}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn add_refs_names_a_bad_file_and_skips_it_when_asked() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(common::config(data.path())).await;
    let work = tempfile::tempdir().unwrap();
    for i in 0..3 {
        png(
            texture(i + 1, 0.0, 0.0),
            &work.path().join(format!("good/{i}.png")),
        );
    }
    std::fs::write(work.path().join("good/broken.png"), b"not a png").unwrap();
    let address = server.addr.to_string();
    let created = loupe(
        work.path(),
        args(&["recipe", "create", "weave", "--server", &address]),
    )
    .await;
    assert_eq!(created.status.code(), Some(0), "{created:?}");
    let files = ["good/0.png", "good/broken.png", "good/1.png", "good/2.png"];
    let add = |extra: &[&str]| {
        let mut list = args(&["recipe", "add-refs", "weave", "--server", &address]);
        list.extend(files.iter().chain(extra).map(|&a| a.to_owned()));
        list
    };

    let refused = loupe(work.path(), add(&[])).await;
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("good/broken.png"), "{stderr}");

    let skipped = loupe(work.path(), add(&["--skip-bad"])).await;
    assert_eq!(skipped.status.code(), Some(0), "{skipped:?}");
    let stderr = String::from_utf8_lossy(&skipped.stderr);
    assert!(stderr.contains("skipped good/broken.png"), "{stderr}");
    assert!(stdout(&skipped).contains("references 3"), "{skipped:?}");

    // A partial update from the CLI keeps what it does not name.
    let updated = loupe(
        work.path(),
        args(&[
            "recipe",
            "update",
            "weave",
            "--sensitivity",
            "2",
            "--server",
            &address,
        ]),
    )
    .await;
    assert_eq!(updated.status.code(), Some(0), "{updated:?}");
    let shown = loupe(
        work.path(),
        args(&["recipe", "show", "weave", "--server", &address]),
    )
    .await;
    let text = stdout(&shown);
    assert!(text.contains("calibrated, scaled by sensitivity 2"), "{text}");
    assert!(text.contains("reference_size") && text.contains("8192"), "{text}");
    assert!(text.contains("calibrated threshold"), "{text}");
    server.stop().await.unwrap();
}

/// The quickstart on generated parts: `loupe demo`, then the README's
/// commands, with the known answer: every good part passes, the defects
/// fail.
#[tokio::test]
async fn the_demo_parts_have_a_known_answer() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(common::config(data.path())).await;
    let work = tempfile::tempdir().unwrap();
    let address = server.addr.to_string();
    let demo = loupe(work.path(), args(&["demo", "parts"])).await;
    assert!(demo.status.success(), "{demo:?}");
    assert!(
        stdout(&demo).contains("loupe recipe add-refs demo parts/train/good/*.png"),
        "{demo:?}"
    );
    let files = |sub: &str| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(work.path().join(sub))
            .unwrap()
            .map(|entry| format!("{sub}/{}", entry.unwrap().file_name().to_string_lossy()))
            .collect();
        names.sort();
        names
    };
    let created = loupe(
        work.path(),
        args(&["recipe", "create", "demo", "--server", &address]),
    )
    .await;
    assert!(created.status.success(), "{created:?}");
    // Ten of the thirty good parts, to keep the debug build's enrollment short.
    let add = [
        args(&["recipe", "add-refs", "demo", "--server", &address]),
        files("parts/train/good")[..10].to_vec(),
    ]
    .concat();
    let added = loupe(work.path(), add).await;
    assert!(added.status.success(), "{added:?}");
    let inspect = |set: &str| {
        [
            args(&["inspect", "--recipe", "demo", "--json", "--server", &address]),
            files(set),
        ]
        .concat()
    };
    let good = loupe(work.path(), inspect("parts/test/good")).await;
    assert_eq!(
        good.status.code(),
        Some(0),
        "every good part passes: {}",
        stdout(&good)
    );
    for kind in ["parts/test/scratch", "parts/test/spot"] {
        let bad = loupe(work.path(), inspect(kind)).await;
        let passed: Vec<String> = stdout(&bad)
            .lines()
            .filter(|line| line.contains("VERDICT_PASS"))
            .map(str::to_owned)
            .collect();
        assert!(passed.is_empty(), "{kind}: defects that pass: {passed:?}");
        assert_eq!(bad.status.code(), Some(1));
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_recipe_exported_to_a_file_imports_under_a_new_name() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(common::config(data.path())).await;
    let (mut recipes, _) = clients(&server).await;
    enroll(&mut recipes, "weave").await;
    let work = tempfile::tempdir().unwrap();
    png(scratched(), &work.path().join("crack.png"));
    let address = server.addr.to_string();
    let run = |list: &[&str]| {
        let mut list = args(list);
        list.extend(["--server".to_owned(), address.clone()]);
        loupe(work.path(), list)
    };

    let exported = run(&["recipe", "export", "weave", "weave.recipe"]).await;
    assert_eq!(exported.status.code(), Some(0), "{exported:?}");
    assert!(
        stdout(&exported).starts_with("exported weave to weave.recipe"),
        "{exported:?}"
    );
    let file = std::fs::read(work.path().join("weave.recipe")).unwrap();
    assert!(file.starts_with(b"LOUPEREC"));
    // Written whole: nothing but the file is left in the folder.
    let mut names: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["crack.png", "weave.recipe"]);

    let taken = run(&["recipe", "import", "weave.recipe"]).await;
    assert_eq!(taken.status.code(), Some(1), "{taken:?}");
    assert!(
        String::from_utf8_lossy(&taken.stderr).contains("exists"),
        "{taken:?}"
    );

    let imported = run(&["recipe", "import", "weave.recipe", "--name", "weave-copy"]).await;
    assert_eq!(imported.status.code(), Some(0), "{imported:?}");
    assert!(
        stdout(&imported).starts_with("weave-copy  revision 1  references 5"),
        "{imported:?}"
    );

    let judged = run(&["inspect", "--recipe", "weave-copy", "--json", "crack.png"]).await;
    assert_eq!(judged.status.code(), Some(1), "{judged:?}");
    let line: serde_json::Value = serde_json::from_str(stdout(&judged).trim()).unwrap();
    assert_eq!(line["verdict"], "VERDICT_FAIL");
    server.stop().await.unwrap();
}
