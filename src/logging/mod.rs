//! Log output on stderr: the `--log` filter, `--log-format text|json`, and
//! colour only for a person at a terminal; [`journal`] writes the core's
//! recipe changes and inspections as log lines.

pub mod journal;

use std::ffi::OsStr;
use std::io::IsTerminal;

use crate::config::LogFormat;

/// Installs the process's log subscriber: lines on stderr filtered by
/// `filter` (env-filter syntax; `info` when it does not parse), in
/// `format`. Call once, first thing.
pub fn init(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(colour(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            ))
            .init(),
        // Fields at the top level beside `message`, not under `fields`:
        // `jq 'select(.message == "SERVING") | .addr'`.
        LogFormat::Json => builder.json().flatten_event(true).with_ansi(false).init(),
    }
}

/// Whether text lines get colour codes: only at a terminal, and not when
/// `NO_COLOR` is set to anything but the empty string (no-color.org).
pub fn colour(is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    is_terminal && no_color.is_none_or(OsStr::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_at_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some(OsStr::new(""))));
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None));
        assert!(!colour(false, Some(OsStr::new("1"))));
    }
}
