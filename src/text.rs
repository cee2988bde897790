//! Client-supplied text in messages and logs: quoted, and capped so that a
//! 4 MiB recipe name does not become a 4 MiB error message.

/// Most characters of a client's string repeated in a message.
pub const QUOTED_CHARS: usize = 64;

/// `text` as `{:?}` prints it, cut after [`QUOTED_CHARS`] characters with
/// the total length said.
pub fn quoted(text: &str) -> String {
    match text.char_indices().nth(QUOTED_CHARS) {
        None => format!("{text:?}"),
        Some((end, _)) => format!("{:?}... ({} bytes in all)", &text[..end], text.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_quoted_whole_and_long_text_is_cut() {
        assert_eq!(quoted("part-a"), "\"part-a\"");
        let long = "x".repeat(4 << 20);
        let message = quoted(&long);
        assert!(message.len() < 100, "{message}");
        assert!(
            message.ends_with(&format!("({} bytes in all)", 4 << 20)),
            "{message}"
        );
        // Cut on a character boundary.
        assert!(quoted(&"é".repeat(100)).starts_with(&format!("\"{}", "é".repeat(64))));
    }
}
