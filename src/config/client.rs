//! Flags of the client commands, `loupe recipe`, `loupe inspect` and
//! `loupe results`, and
//! the connection flags they share with `loupe bench --server`: TLS trust,
//! a client certificate, a bearer token.

use std::fmt;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::access::token_problem;
use super::tls::{self, Identity, PemFile};
use super::{ConfigError, SettingsArgs};

/// Where a client command finds the server.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// The Loupe server's address; `https://` connects with TLS.
    #[arg(
        long,
        env = "LOUPE_SERVER",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub server: String,

    #[command(flatten)]
    pub credentials: CredentialArgs,
}

impl ServerArgs {
    /// Validates the flags into a [`ClientConfig`].
    pub fn resolve(&self) -> Result<ClientConfig, ConfigError> {
        self.credentials.resolve("server", &self.server)
    }
}

/// How a client proves who it is and whom it trusts; like `--server`, the
/// flags may come before or after a `recipe` action. The variables differ
/// from `loupe serve`'s (`LOUPE_CLIENT_CERT`, not `LOUPE_TLS_CERT`) so that a
/// server and a client on one machine never pick up each other's identity.
#[derive(Debug, Clone, Args)]
pub struct CredentialArgs {
    /// Trust this CA certificate (PEM) for the server's certificate, for an
    /// https:// server; without it, the system's trusted roots.
    #[arg(long, env = "LOUPE_TLS_CA", value_name = "FILE", global = true)]
    pub tls_ca: Option<PathBuf>,

    /// Client certificate (PEM) for a server that asks for one (mutual
    /// TLS); needs --tls-key.
    #[arg(
        long = "tls-cert",
        env = "LOUPE_CLIENT_CERT",
        value_name = "FILE",
        global = true
    )]
    pub client_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(
        long = "tls-key",
        env = "LOUPE_CLIENT_KEY",
        value_name = "FILE",
        global = true
    )]
    pub client_key: Option<PathBuf>,

    /// Bearer token sent as `authorization: Bearer TOKEN` on every call
    /// (for a server started with --auth-tokens). Prefer the variable: a
    /// command line is visible to every user of the machine.
    #[arg(
        long,
        env = "LOUPE_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        global = true
    )]
    pub token: Option<String>,
}

impl CredentialArgs {
    /// The first of these flags that was given, if any.
    pub fn first_given(&self) -> Option<&'static str> {
        [
            ("tls-ca", self.tls_ca.is_some()),
            ("tls-cert", self.client_cert.is_some()),
            ("tls-key", self.client_key.is_some()),
            ("token", self.token.is_some()),
        ]
        .into_iter()
        .find_map(|(flag, given)| given.then_some(flag))
    }

    /// Validates these flags for the server at `server` (given by
    /// `--{server_flag}`) into a [`ClientConfig`].
    pub fn resolve(&self, server_flag: &'static str, server: &str) -> Result<ClientConfig, ConfigError> {
        // `host:port` as `loupe serve --listen` takes it means plaintext.
        let server = &with_scheme(server);
        let https = server
            .get(..8)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"));
        let identity = tls::identity(
            ("tls-cert", self.client_cert.as_deref()),
            ("tls-key", self.client_key.as_deref()),
        )?;
        let ca = self
            .tls_ca
            .as_deref()
            .map(|path| tls::certificates("tls-ca", path))
            .transpose()?;
        let tls = if https {
            Some(ClientTls { ca, identity })
        } else {
            // A CA or certificate for a plaintext address is a mistake the
            // user would otherwise find only as a puzzling refusal.
            let flag = match (&ca, &identity) {
                (Some(_), _) => Some("tls-ca"),
                (None, Some(_)) => Some("tls-cert"),
                (None, None) => None,
            };
            if let Some(flag) = flag {
                return Err(ConfigError {
                    flag,
                    reason: format!("TLS needs an https:// address; --{server_flag} is {server}"),
                });
            }
            None
        };
        let token = match &self.token {
            Some(token) => match token_problem(token) {
                Some(problem) => {
                    return Err(ConfigError {
                        flag: "token",
                        reason: problem.to_owned(),
                    });
                }
                None => Some(Token(token.clone())),
            },
            None => None,
        };
        Ok(ClientConfig {
            server: server.to_owned(),
            tls,
            token,
        })
    }
}

/// `server` with `http://` in front when it names no scheme.
fn with_scheme(server: &str) -> String {
    if server.contains("://") {
        server.to_owned()
    } else {
        format!("http://{server}")
    }
}

/// A resolved client connection: where the server is and how to reach it.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The server's address (`http://` or `https://`).
    pub server: String,
    /// TLS, for an `https://` address.
    pub tls: Option<ClientTls>,
    /// The bearer token sent on every call.
    pub token: Option<Token>,
}

impl ClientConfig {
    /// A plaintext connection to `server`, without a token.
    pub fn plaintext(server: impl Into<String>) -> Self {
        Self {
            server: server.into(),
            tls: None,
            token: None,
        }
    }
}

/// A client's TLS files, read and checked.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// The CA to trust for the server's certificate; `None`: the system's
    /// roots.
    pub ca: Option<PemFile>,
    /// The client's certificate and key for mutual TLS.
    pub identity: Option<Identity>,
}

/// A bearer token, checked to fit in gRPC metadata.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// The token's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

// Logs and error reports must never carry the token.
impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

/// `loupe recipe ...`.
#[derive(Debug, Args)]
pub struct RecipeArgs {
    #[command(flatten)]
    pub server: ServerArgs,

    /// What to do with recipes.
    #[command(subcommand)]
    pub action: RecipeAction,
}

/// Recipe actions.
#[derive(Debug, Subcommand)]
pub enum RecipeAction {
    /// Creates a recipe.
    Create {
        /// Recipe name: letters, digits, '-', '_', '.'.
        name: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Changes a recipe's settings (unset flags keep their current value).
    Update {
        /// Recipe name.
        name: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Lists the recipes.
    List,
    /// Shows one recipe.
    Show {
        /// Recipe name.
        name: String,
        /// Print the settings as JSON (usable with --settings).
        #[arg(long, env = "LOUPE_JSON")]
        json: bool,
    },
    /// Deletes a recipe and its reference.
    Delete {
        /// Recipe name.
        name: String,
    },
    /// Sends good frames (image files) to a recipe's golden reference.
    AddRefs {
        /// Recipe name.
        name: String,
        /// Image files of good parts.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Start the reference afresh instead of adding to it.
        #[arg(long, env = "LOUPE_REPLACE")]
        replace: bool,
        /// Leave out files that cannot be read or that the server refuses
        /// (each named on stderr) and enroll the others.
        #[arg(long, env = "LOUPE_SKIP_BAD")]
        skip_bad: bool,
    },
    /// Writes a recipe (settings, good frames, reference) to one file, to
    /// import on another server.
    Export {
        /// Recipe name.
        name: String,
        /// The recipe file to write (replaced whole, never half-written).
        file: PathBuf,
    },
    /// Creates a recipe from a file `recipe export` wrote.
    Import {
        /// The recipe file.
        file: PathBuf,
        /// Create the recipe under this name instead of the one in the file.
        #[arg(long = "name", env = "LOUPE_IMPORT_NAME", value_name = "NEW")]
        rename: Option<String>,
    },
}

/// `loupe inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub server: ServerArgs,

    /// Recipe to inspect against.
    #[arg(long, env = "LOUPE_RECIPE")]
    pub recipe: String,

    /// Image files to inspect.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,

    /// Write a heatmap overlay PNG per file into this folder, at the
    /// file's relative path (`good/000.png` becomes
    /// `DIR/good/000.overlay.png`), so no two inputs share one. Regions
    /// are outlined and the verdict stamped on it.
    #[arg(long, env = "LOUPE_HEATMAP_DIR", value_name = "DIR")]
    pub heatmap: Option<PathBuf>,

    /// Overlays without region outlines and verdict stamp.
    #[arg(long, env = "LOUPE_PLAIN_HEATMAP", requires = "heatmap")]
    pub plain_heatmap: bool,

    /// Print one JSON object a line per file (the API's fields) instead of
    /// text.
    #[arg(long, env = "LOUPE_JSON")]
    pub json: bool,
}

/// `loupe results ...`.
#[derive(Debug, Args)]
pub struct ResultsArgs {
    #[command(flatten)]
    pub server: ServerArgs,

    /// What to read from the audit trail.
    #[command(subcommand)]
    pub action: ResultsAction,
}

/// A verdict to filter on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VerdictArg {
    /// Passed parts.
    Pass,
    /// Failed parts.
    Fail,
}

/// Audit-trail actions.
#[derive(Debug, Subcommand)]
pub enum ResultsAction {
    /// Lists recorded verdicts, newest first.
    List {
        /// Only this recipe's.
        #[arg(long, env = "LOUPE_RECIPE")]
        recipe: Option<String>,
        /// Only this verdict.
        #[arg(long, env = "LOUPE_VERDICT", value_enum)]
        verdict: Option<VerdictArg>,
        /// Only those of the last DURATION: a number with s, m, h or d
        /// (`30m`, `8h`, `7d`).
        #[arg(long, env = "LOUPE_SINCE", value_name = "DURATION", value_parser = parse_ago)]
        since: Option<std::time::Duration>,
        /// Most results printed.
        #[arg(long, env = "LOUPE_LIMIT", default_value_t = 20)]
        limit: usize,
        /// One JSON object a line (the API's fields).
        #[arg(long, env = "LOUPE_JSON")]
        json: bool,
    },
    /// Shows one result; with --save-images, writes its frame and overlay.
    Show {
        /// The result's id (from `loupe results list`).
        id: String,
        /// Write `ID.frame.png` and `ID.overlay.png` into this folder (when
        /// the server kept them).
        #[arg(long, env = "LOUPE_SAVE_IMAGES", value_name = "DIR")]
        save_images: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long, env = "LOUPE_JSON")]
        json: bool,
    },
    /// Prints each new result as it is recorded, until interrupted.
    Watch {
        /// Only this recipe's.
        #[arg(long, env = "LOUPE_RECIPE")]
        recipe: Option<String>,
        /// One JSON object a line.
        #[arg(long, env = "LOUPE_JSON")]
        json: bool,
    },
}

/// A duration such as `90s`, `30m`, `8h` or `7d`.
pub fn parse_ago(text: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("expected a duration such as 90s, 30m, 8h or 7d, got `{text}`");
    let (number, unit) = text.split_at(text.len().checked_sub(1).ok_or_else(bad)?);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    number
        .checked_mul(seconds)
        .map(std::time::Duration::from_secs)
        .ok_or_else(bad)
}
