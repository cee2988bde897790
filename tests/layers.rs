//! The layers keep their arrows one way: nothing below the transports names
//! tonic, the generated proto types, the HTTP front ends (axum, the console)
//! or the gRPC layer, so another front end or a model of another kind
//! attaches without touching the core. Fails, naming the file
//! and line, when a lower layer reaches up.

use std::path::{Path, PathBuf};

/// Folders (under `src/`) of the layers below the transport.
const LOWER_LAYERS: [&str; 8] = [
    "audit",
    "server",
    "engine",
    "imaging",
    "scoring",
    "reference",
    "model",
    "store",
];

/// What the lower layers must not name.
const FORBIDDEN: [&str; 6] = [
    "tonic",
    "crate::proto",
    "prost",
    "axum",
    "crate::console",
    "crate::grpc",
];

fn rust_files(folder: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(folder).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_lower_layer_names_the_transport() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for layer in LOWER_LAYERS {
        rust_files(&src.join(layer), &mut files);
    }
    assert!(
        files.len() > 20,
        "found only {} files; did the layout change?",
        files.len()
    );
    let mut offences = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (number, line) in text.lines().enumerate() {
            for word in FORBIDDEN {
                if line.contains(word) {
                    offences.push(format!("{}:{}: {}", file.display(), number + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        offences.is_empty(),
        "lower layers name the transport:\n{}",
        offences.join("\n")
    );
}
