//! A `loupe serve` process for tests of the real binary as a user starts it:
//! its stderr read line by line on a thread, every line kept, so a test can
//! wait for a line in any order and check them all at the end.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::sync::mpsc;

/// Longest wait for a line of the server's log.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// `BINARY serve` on 127.0.0.1:0 with its data in `data`, no metrics
/// listener or console, one model thread, and none of the caller's `LOUPE_*` log or
/// runtime variables.
pub fn serve(binary: &Path, data: &Path) -> Command {
    let mut command = Command::new(binary);
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "none",
            "--console-listen",
            "none",
        ])
        .args(["--threads", "1", "--data-dir"])
        .arg(data);
    for var in [
        "LOUPE_LOG",
        "LOUPE_LOG_FORMAT",
        "LOUPE_ONNXRUNTIME",
        "ORT_DYLIB_PATH",
        "NO_COLOR",
        loupe::failpoint::VAR,
    ] {
        command.env_remove(var);
    }
    command
}

/// A running server; killed when dropped.
pub struct Served {
    child: Child,
    log: mpsc::UnboundedReceiver<String>,
    /// Every stderr line read so far.
    pub lines: Vec<String>,
}

impl Served {
    /// Starts `command` with stderr piped.
    pub fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the loupe binary runs");
        let stderr = child.stderr.take().unwrap();
        let (lines, log) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            log,
            lines: Vec::new(),
        }
    }

    /// The first line, seen before or arriving now, that `matches`.
    pub async fn find(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        if let Some(line) = self.lines.iter().find(|line| matches(line)) {
            return line.clone();
        }
        let wait = async {
            while let Some(line) = self.log.recv().await {
                self.lines.push(line.clone());
                if matches(&line) {
                    return line;
                }
            }
            panic!(
                "the server exited before logging {what}; its log:\n{}",
                self.lines.join("\n")
            );
        };
        match tokio::time::timeout(PATIENCE, wait).await {
            Ok(line) => line,
            Err(_) => panic!("no log line with {what}; its log:\n{}", self.lines.join("\n")),
        }
    }

    /// The first JSON line, seen before or arriving now, for which
    /// `matches` holds.
    pub async fn find_json(
        &mut self,
        what: &str,
        matches: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let line = self
            .find(what, |line| {
                serde_json::from_str::<serde_json::Value>(line).is_ok_and(|value| matches(&value))
            })
            .await;
        serde_json::from_str(&line).unwrap()
    }

    /// SIGTERM, then waits for the exit and reads the rest of the log.
    pub async fn terminate(&mut self) -> ExitStatus {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill reads no memory; the pid is our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let drain = async {
            while let Some(line) = self.log.recv().await {
                self.lines.push(line);
            }
        };
        tokio::time::timeout(PATIENCE, drain)
            .await
            .expect("the server did not close its stderr after SIGTERM");
        self.child.wait().unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
