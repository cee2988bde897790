//! The `--auth-tokens` file: bearer tokens and the role each one grants.
//!
//! One token a line, `ROLE TOKEN`, the role `operator` or `engineer`, the
//! token at least [`MIN_TOKEN_CHARS`] visible ASCII characters without
//! spaces (what gRPC metadata can carry). Lines starting with `#` and blank
//! lines are ignored. A line that breaks a rule is refused with its number,
//! never with the token. Which calls a role may make is decided in the
//! transport (`grpc::auth`), not here.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// Fewest characters a token may have: 16 random characters are beyond
/// guessing over the network, a short word is not.
pub const MIN_TOKEN_CHARS: usize = 16;

/// What a token lets its holder do. An engineer may do all an operator may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Runs the line: inspects frames and reads recipes.
    Operator,
    /// Also teaches and changes recipes: create, update, add references,
    /// delete.
    Engineer,
}

impl Role {
    /// The role's name in the token file and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Engineer => "engineer",
        }
    }

    /// Whether a token of this role may make a call that needs `needed`.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }

    fn parse(name: &str) -> Option<Self> {
        [Role::Operator, Role::Engineer]
            .into_iter()
            .find(|role| role.name() == name)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A line of a token file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct TokenFileError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong (never the token itself).
    pub reason: String,
}

/// Why a token cannot be sent as gRPC metadata, if it cannot.
pub fn token_problem(token: &str) -> Option<&'static str> {
    if token.is_empty() {
        Some("the token is empty")
    } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
        Some("a token may hold only visible ASCII characters (no spaces)")
    } else {
        None
    }
}

struct Entry {
    role: Role,
    digest: [u8; 32],
}

/// The tokens of a token file, kept only as SHA-256 digests.
pub struct Tokens {
    entries: Vec<Entry>,
}

// Counts only: the digests are as good as the tokens to a guesser offline.
impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = |role| self.entries.iter().filter(|e| e.role == role).count();
        f.debug_struct("Tokens")
            .field("operator", &count(Role::Operator))
            .field("engineer", &count(Role::Engineer))
            .finish()
    }
}

impl Tokens {
    /// Parses a token file's text.
    pub fn parse(text: &str) -> Result<Self, TokenFileError> {
        let mut entries: Vec<Entry> = Vec::new();
        let mut first_line = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let refuse = |reason: String| TokenFileError { line: number, reason };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(role), Some(token), None) = (fields.next(), fields.next(), fields.next()) else {
                return Err(refuse("expected `ROLE TOKEN` (two fields)".to_owned()));
            };
            let role = Role::parse(role).ok_or_else(|| {
                refuse(format!(
                    "unknown role `{role}`; the roles are operator and engineer"
                ))
            })?;
            if let Some(problem) = token_problem(token) {
                return Err(refuse(problem.to_owned()));
            }
            let chars = token.chars().count();
            if chars < MIN_TOKEN_CHARS {
                return Err(refuse(format!(
                    "the token has {chars} characters; at least {MIN_TOKEN_CHARS} are needed"
                )));
            }
            let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            if let Some(earlier) = entries.iter().position(|e| e.digest == digest) {
                return Err(refuse(format!(
                    "the same token as line {}; each token must grant one role",
                    first_line[earlier]
                )));
            }
            entries.push(Entry { role, digest });
            first_line.push(number);
        }
        if entries.is_empty() {
            return Err(TokenFileError {
                line: text.lines().count(),
                reason: "no tokens: every call but health and reflection would be refused".to_owned(),
            });
        }
        Ok(Self { entries })
    }

    /// The role `token` grants, if it is one of these tokens. Takes the same
    /// time whichever token matches, or none: the presented token is hashed
    /// and compared with every digest in constant time.
    pub fn role_of(&self, token: &[u8]) -> Option<Role> {
        let digest: [u8; 32] = Sha256::digest(token).into();
        // 0: no match; otherwise 1 + the role's index.
        let mut found = 0u8;
        for entry in &self.entries {
            let code = entry.role as u8 + 1;
            found.conditional_assign(&code, entry.digest.ct_eq(&digest));
        }
        match found {
            0 => None,
            1 => Some(Role::Operator),
            _ => Some(Role::Engineer),
        }
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none (never true of a parsed file).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPERATOR: &str = "op-0123456789abcdef";
    const ENGINEER: &str = "eng-0123456789abcdef";

    #[test]
    fn a_token_file_maps_each_token_to_its_role() {
        let text = format!("# line tokens\n\noperator {OPERATOR}\n  engineer\t{ENGINEER}  \n");
        let tokens = Tokens::parse(&text).unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens.role_of(OPERATOR.as_bytes()), Some(Role::Operator));
        assert_eq!(tokens.role_of(ENGINEER.as_bytes()), Some(Role::Engineer));
        assert_eq!(tokens.role_of(b"op-0123456789abcdeX"), None);
        assert_eq!(tokens.role_of(b""), None);
        assert_eq!(format!("{tokens:?}"), "Tokens { operator: 1, engineer: 1 }");
    }

    #[test]
    fn bad_lines_are_refused_with_their_number_and_without_the_token() {
        let refused = |text: &str| Tokens::parse(text).unwrap_err().to_string();
        let error = refused(&format!("operator {OPERATOR}\nadmin {ENGINEER}\n"));
        assert_eq!(
            error,
            "line 2: unknown role `admin`; the roles are operator and engineer"
        );
        let error = refused("# short\noperator short-token\n");
        assert_eq!(
            error,
            "line 2: the token has 11 characters; at least 16 are needed"
        );
        assert!(!error.contains("short-token"));
        assert!(refused(&format!("operator {OPERATOR} extra")).starts_with("line 1: expected `ROLE TOKEN`"));
        assert!(refused("operator\n").starts_with("line 1: expected `ROLE TOKEN`"));
        assert!(refused("operator tökentökentökentöken").contains("visible ASCII"));
        let error = refused(&format!("operator {OPERATOR}\n\nengineer {OPERATOR}\n"));
        assert!(error.starts_with("line 3: the same token as line 1"), "{error}");
        assert!(refused("# nothing here\n\n").contains("no tokens"));
    }

    #[test]
    fn an_engineer_may_do_what_an_operator_may() {
        assert!(Role::Engineer.allows(Role::Operator));
        assert!(Role::Engineer.allows(Role::Engineer));
        assert!(Role::Operator.allows(Role::Operator));
        assert!(!Role::Operator.allows(Role::Engineer));
    }

    #[test]
    fn tokens_that_metadata_cannot_carry_are_named() {
        assert!(token_problem("abc").is_none());
        assert!(token_problem("").is_some());
        assert!(token_problem("a b").is_some());
    }
}
