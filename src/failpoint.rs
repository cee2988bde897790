//! Fault injection for tests: named steps where the process stops (to be
//! killed there) or the engine thread panics, when the environment variable
//! [`VAR`] names them. Only tests set it; unset, each point is one
//! comparison with a value read once.

use std::sync::OnceLock;

/// The environment variable that names a failpoint.
pub const VAR: &str = "LOUPE_FAILPOINT";

fn chosen(step: &str) -> bool {
    static CHOSEN: OnceLock<Option<String>> = OnceLock::new();
    CHOSEN
        .get_or_init(|| std::env::var(VAR).ok().filter(|value| !value.is_empty()))
        .as_deref()
        == Some(step)
}

/// When [`VAR`] names `step`, says so on stderr and blocks the calling
/// thread for ever, to be killed there (a step of a recipe change).
pub fn stop_here(step: &str) {
    if chosen(step) {
        eprintln!("loupe: failpoint {step} reached; waiting to be killed");
        loop {
            std::thread::park();
        }
    }
}

/// When [`VAR`] names `step`, panics (the engine thread's supervision is
/// tested so).
pub fn panic_here(step: &str) {
    if chosen(step) {
        panic!("failpoint {step} reached");
    }
}
