//! `make install` and `make dist` as a user runs them, with this build's
//! binary standing in for the release one (`LOUPE=`): the installed (or
//! unpacked) binary, started from a folder outside the checkout with no
//! `ORT_DYLIB_PATH` or `LOUPE_ONNXRUNTIME` and no Rust toolchain on the
//! PATH, loads the ONNX Runtime library lying next to it and reaches
//! SERVING. Skipped, saying why, where `make` or `tar` is missing.

mod process;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use loupe::runtime::LIBRARY_FILE;
use process::{Served, serve};

/// A PATH with the system's tools only: no `~/.cargo/bin`.
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn available(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !found {
        eprintln!("skipped: `{tool}` is not installed");
    }
    found
}

/// `make ARGS` in the checkout, outside any make that runs the tests.
fn make(args: &[String]) -> Output {
    let output = Command::new("make")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["--no-print-directory", "--silent"])
        .args(args)
        .env_remove("MAKEFLAGS")
        .env_remove("MAKELEVEL")
        .env_remove("MFLAGS")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "make {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn var(name: &str, value: &Path) -> String {
    format!("{name}={}", value.display())
}

/// Starts `binary` as a user of an installed copy would: from `cwd`, with
/// nothing of the build's environment, and checks that it found its
/// library in `library_dir` and reached SERVING.
async fn serves_with_its_own_library(binary: &Path, cwd: &Path, library_dir: &Path) {
    let data = tempfile::tempdir().unwrap();
    let mut command = serve(binary, data.path());
    command
        .env_clear()
        .env("PATH", SYSTEM_PATH)
        .current_dir(cwd)
        .args(["--log-format", "json"]);
    let mut served = Served::spawn(command);
    let loaded = served
        .find_json("ONNX Runtime loaded", |line| {
            line["message"] == "ONNX Runtime loaded"
        })
        .await;
    assert_eq!(loaded["source"], "next to the executable", "{loaded}");
    let path = PathBuf::from(loaded["path"].as_str().unwrap());
    assert_eq!(
        path.canonicalize().unwrap(),
        library_dir.join(LIBRARY_FILE).canonicalize().unwrap()
    );
    let serving = served
        .find_json("SERVING", |line| line["message"] == "SERVING")
        .await;
    assert!(
        serving["addr"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{serving}"
    );
    let status = served.terminate().await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn make_install_puts_a_binary_on_the_path_that_finds_its_library() {
    if !available("make") {
        return;
    }
    let prefix = tempfile::tempdir().unwrap();
    let prefix = prefix.path();
    make(&[
        "install".into(),
        var("PREFIX", prefix),
        var("LOUPE", env!("CARGO_BIN_EXE_loupe").as_ref()),
    ]);
    let lib = prefix.join("lib/loupe");
    assert!(lib.join("loupe").is_file());
    assert!(lib.join(LIBRARY_FILE).is_file());
    let link = prefix.join("bin/loupe");
    assert_eq!(std::fs::read_link(&link).unwrap(), lib.join("loupe"));
    let unit = std::fs::read_to_string(prefix.join("lib/systemd/system/loupe.service")).unwrap();
    let exec = format!("ExecStart={} serve --data-dir /var/lib/loupe", link.display());
    assert!(unit.lines().any(|line| line == exec), "no {exec:?} in\n{unit}");
    for line in ["DynamicUser=yes", "StateDirectory=loupe", "Restart=on-failure"] {
        assert!(unit.lines().any(|l| l == line), "no {line:?} in the unit");
    }

    // Through the link in bin/, from a folder outside the checkout.
    let elsewhere = tempfile::tempdir().unwrap();
    serves_with_its_own_library(&link, elsewhere.path(), &lib).await;

    make(&["uninstall".into(), var("PREFIX", prefix)]);
    assert!(!link.exists() && std::fs::symlink_metadata(&link).is_err());
    assert!(!lib.exists());
    assert!(!prefix.join("lib/systemd/system/loupe.service").exists());
}

#[tokio::test]
async fn make_install_with_destdir_stages_files_that_name_the_final_paths() {
    if !available("make") {
        return;
    }
    let stage = tempfile::tempdir().unwrap();
    let stage = stage.path();
    make(&[
        "install".into(),
        "PREFIX=/opt/loupe".into(),
        var("DESTDIR", stage),
        var("LOUPE", env!("CARGO_BIN_EXE_loupe").as_ref()),
    ]);
    assert!(stage.join("opt/loupe/lib/loupe").join(LIBRARY_FILE).is_file());
    assert_eq!(
        std::fs::read_link(stage.join("opt/loupe/bin/loupe")).unwrap(),
        Path::new("/opt/loupe/lib/loupe/loupe")
    );
    let unit = std::fs::read_to_string(stage.join("opt/loupe/lib/systemd/system/loupe.service")).unwrap();
    assert!(unit.contains("\nExecStart=/opt/loupe/bin/loupe serve "), "{unit}");
}

#[tokio::test]
async fn the_dist_tarball_unpacked_elsewhere_serves_without_rust() {
    if !available("make") || !available("tar") {
        return;
    }
    let dist = tempfile::tempdir().unwrap();
    let printed = make(&[
        "dist".into(),
        var("DIST_DIR", dist.path()),
        var("LOUPE", env!("CARGO_BIN_EXE_loupe").as_ref()),
    ]);
    let version = env!("CARGO_PKG_VERSION");
    let name = format!("loupe-{version}-{}-linux", std::env::consts::ARCH);
    let tarball = dist.path().join(format!("{name}.tar.gz"));
    assert!(
        String::from_utf8_lossy(&printed.stdout).contains(&tarball.display().to_string()),
        "{printed:?}"
    );

    let unpacked = tempfile::tempdir().unwrap();
    let listing = Command::new("tar")
        .arg("-xzvf")
        .arg(&tarball)
        .arg("-C")
        .arg(unpacked.path())
        .output()
        .unwrap();
    assert!(listing.status.success(), "{listing:?}");
    let mut files: Vec<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter(|line| !line.ends_with('/'))
        .map(|line| line.strip_prefix(&format!("{name}/")).unwrap_or(line).to_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "LICENSE",
            "README.md",
            "install.sh",
            LIBRARY_FILE,
            "licenses/LICENSE-efficientnet-lite0.txt",
            "licenses/LICENSE-onnxruntime.txt",
            "licenses/ThirdPartyNotices-onnxruntime.txt",
            "licenses/rust-crates.txt",
            "loupe",
            "loupe.service",
        ]
    );
    let folder = unpacked.path().join(&name);
    let elsewhere = tempfile::tempdir().unwrap();
    serves_with_its_own_library(&folder.join("loupe"), elsewhere.path(), &folder).await;
}
