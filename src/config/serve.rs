//! Flags of `loupe serve` and the configuration they resolve into,
//! including how the listener is protected: TLS, client certificates,
//! bearer tokens, and the rule that a non-loopback address needs TLS or an
//! explicit `--insecure`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;

use super::access::Tokens;
use super::tls::{self, Identity, PemFile};
use super::{ConfigError, EngineArgs, EngineConfig, at_least};
use crate::audit::AuditConfig;

/// Flags of `loupe serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on for gRPC.
    #[arg(long, env = "LOUPE_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Address to serve Prometheus metrics on (plain HTTP, `GET /metrics`,
    /// text exposition format), or `none` to serve none.
    #[arg(
        long,
        env = "LOUPE_METRICS_LISTEN",
        default_value = "127.0.0.1:9464",
        value_name = "ADDR|none"
    )]
    pub metrics_listen: ListenOr,

    /// Address to serve the read-only web console on (plain HTTP: recipes,
    /// a live feed of verdicts, result pages, score charts), or `none` to
    /// serve none.
    #[arg(
        long,
        env = "LOUPE_CONSOLE_LISTEN",
        default_value = "127.0.0.1:8080",
        value_name = "ADDR|none"
    )]
    pub console_listen: ListenOr,

    /// Folder for recipes and references; created if missing.
    #[arg(
        long,
        env = "LOUPE_DATA_DIR",
        default_value = "loupe-data",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,

    #[command(flatten)]
    pub engine: EngineArgs,

    /// Largest gRPC message accepted, in bytes.
    #[arg(long, env = "LOUPE_MAX_MESSAGE_BYTES", default_value_t = 64 << 20)]
    pub max_message_bytes: usize,

    /// Largest frame accepted, in pixels (width x height), checked before
    /// any pixel memory is allocated. Also caps what an encoded file may
    /// claim, which stops decompression bombs.
    #[arg(long, env = "LOUPE_MAX_FRAME_PIXELS", default_value_t = 64 << 20)]
    pub max_frame_pixels: u64,

    /// Most bytes decoding one frame may hold (its pixels at the decoder's
    /// sample width, read from the header before anything is allocated);
    /// a larger frame gets INVALID_ARGUMENT.
    #[arg(long, env = "LOUPE_MAX_FRAME_BYTES", default_value_t = crate::imaging::DEFAULT_MAX_FRAME_BYTES)]
    pub max_frame_bytes: u64,

    /// Most bytes all frames being decoded and judged may hold at once
    /// [default: a quarter of the machine's memory]. Past it, a unary call
    /// with a deadline waits for memory until then, one without gets
    /// RESOURCE_EXHAUSTED, and a stream waits.
    #[arg(long, env = "LOUPE_MAX_DECODE_BYTES")]
    pub max_decode_bytes: Option<u64>,

    /// Most good frames one AddReferences call may send.
    #[arg(long, env = "LOUPE_MAX_REFERENCES", default_value_t = 1000)]
    pub max_references: usize,

    /// Most bytes of good frames one AddReferences call may send (the call
    /// holds them all until the reference is built).
    #[arg(long, env = "LOUPE_MAX_REFERENCE_BYTES", default_value_t = 2 << 30)]
    pub max_reference_bytes: u64,

    /// Most bytes the features of one enrollment may hold while its
    /// reference is built [default: a quarter of the machine's memory]; an
    /// enrollment above it is refused after its first frame.
    #[arg(long, env = "LOUPE_MAX_ENROLLMENT_BYTES")]
    pub max_enrollment_bytes: Option<u64>,

    /// Most good frames a recipe stores.
    #[arg(long, env = "LOUPE_MAX_RECIPE_FRAMES", default_value_t = 5000)]
    pub max_recipe_frames: u64,

    /// Most bytes of good frames a recipe stores on disk.
    #[arg(long, env = "LOUPE_MAX_RECIPE_BYTES", default_value_t = 10 << 30)]
    pub max_recipe_bytes: u64,

    /// Most frames accepted for inspection at once (running or waiting);
    /// beyond that a request gets RESOURCE_EXHAUSTED at once.
    #[arg(long, env = "LOUPE_MAX_PENDING", default_value_t = 64)]
    pub max_pending: usize,

    /// Most gRPC connections open at once. Past it the server accepts no
    /// more until one closes: further clients wait in the kernel's backlog.
    #[arg(long, env = "LOUPE_MAX_CONNECTIONS", default_value_t = 256)]
    pub max_connections: usize,

    /// Most bytes of request messages all calls may be receiving at once
    /// [default: a quarter of the machine's memory]; at least
    /// --max-message-bytes. A message's length is reserved when its first
    /// bytes arrive; past the budget the call is held back by HTTP/2 flow
    /// control until other messages are decoded.
    #[arg(long, env = "LOUPE_MAX_RECEIVE_BYTES")]
    pub max_receive_bytes: Option<u64>,

    /// Most waiting frames of one recipe judged together in one model run
    /// and one search (1 turns batching off). Only frames that are already
    /// waiting are batched; none is held back to fill a batch.
    #[arg(long, env = "LOUPE_MAX_BATCH", default_value_t = DEFAULT_MAX_BATCH)]
    pub max_batch: usize,

    /// Seconds to let in-flight requests finish after SIGINT or SIGTERM.
    #[arg(
        long,
        env = "LOUPE_SHUTDOWN_GRACE",
        default_value_t = 10,
        visible_alias = "shutdown-grace",
        value_name = "SECS"
    )]
    pub shutdown_grace_secs: u64,

    /// Serve gRPC over TLS with this certificate chain (PEM, the server's
    /// own certificate first); needs --tls-key.
    #[arg(long, env = "LOUPE_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "LOUPE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// Mutual TLS: refuse every connection without a client certificate
    /// signed by this CA (PEM); needs --tls-cert and --tls-key.
    #[arg(long, env = "LOUPE_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,

    /// Bearer tokens and their roles, one `ROLE TOKEN` a line (`#` comment
    /// lines and blank lines allowed). `operator` may call Inspect,
    /// InspectStream, GetRecipe, ListRecipes and the Results calls;
    /// `engineer` may call
    /// everything. Clients send `authorization: Bearer TOKEN`.
    /// grpc.health.v1 and reflection stay open without a token. Without
    /// this flag no token is checked.
    #[arg(long, env = "LOUPE_AUTH_TOKENS", value_name = "FILE")]
    pub auth_tokens: Option<PathBuf>,

    /// Record every verdict and recipe change in the audit trail
    /// (`DATA_DIR/audit/`), readable through the Results service and
    /// `loupe results`.
    #[arg(long, env = "LOUPE_AUDIT", default_value = "on", value_name = "on|off")]
    pub audit: Switch,

    /// Events held for the audit writer before later ones are dropped (and
    /// counted in loupe_audit_records_dropped_total).
    #[arg(long, env = "LOUPE_AUDIT_QUEUE", default_value_t = 1024, value_name = "N")]
    pub audit_queue: usize,

    /// Share of PASS verdicts whose frame and overlay are kept, 0 to 1:
    /// every k-th, k = 1 / the share (every FAIL's are kept).
    #[arg(
        long,
        env = "LOUPE_AUDIT_PASS_SAMPLE",
        default_value_t = 0.01,
        value_name = "F"
    )]
    pub audit_pass_sample: f64,

    /// Days the audit trail keeps a result (and its files).
    #[arg(long, env = "LOUPE_RETAIN_DAYS", default_value_t = 90, value_name = "D")]
    pub retain_days: u32,

    /// Most bytes of frame and overlay files the audit trail keeps; past it
    /// the oldest files are removed first (their results stay). A number
    /// of bytes, or with a suffix: KiB, MiB, GiB, TiB (or KB, MB, GB, TB).
    #[arg(
        long,
        env = "LOUPE_RETAIN_BYTES",
        default_value = "10GiB",
        value_name = "BYTES"
    )]
    pub retain_bytes: ByteSize,

    /// Serve plaintext gRPC on a non-loopback --listen address anyway
    /// (without TLS such an address is refused); logged as a warning.
    #[arg(long, env = "LOUPE_INSECURE")]
    pub insecure: bool,
}

/// Where `--metrics-listen` or `--console-listen` says to serve: an
/// address, or nowhere (`none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenOr(pub Option<SocketAddr>);

impl std::str::FromStr for ListenOr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.eq_ignore_ascii_case("none") {
            return Ok(Self(None));
        }
        text.parse()
            .map(|addr| Self(Some(addr)))
            .map_err(|_| format!("expected an address such as 127.0.0.1:9464, or `none`; got `{text}`"))
    }
}

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switch(pub bool);

impl std::str::FromStr for Switch {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "on" | "true" | "yes" => Ok(Self(true)),
            "off" | "false" | "no" => Ok(Self(false)),
            _ => Err(format!("expected `on` or `off`, got `{text}`")),
        }
    }
}

/// A number of bytes, with an optional unit suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        let shift = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "kb" | "kib" => 10,
            "m" | "mb" | "mib" => 20,
            "g" | "gb" | "gib" => 30,
            "t" | "tb" | "tib" => 40,
            _ => return Err(format!("expected bytes such as 500MiB or 10GiB, got `{text}`")),
        };
        let number: u64 = number
            .parse()
            .map_err(|_| format!("expected bytes such as 500MiB or 10GiB, got `{text}`"))?;
        number
            .checked_mul(1 << shift)
            .map(Self)
            .ok_or_else(|| format!("`{text}` is more bytes than fit in 64 bits"))
    }
}

/// Waiting frames judged together by default. With 4 frames in flight on a
/// stream, batches of 2 leave the other 2 frames travelling and decoding
/// while the engine works; batches of up to 4 measured slower
/// (`cargo bench --bench service`).
pub const DEFAULT_MAX_BATCH: usize = 2;

/// Resolved limits on what a client may send.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest gRPC message, bytes.
    pub max_message_bytes: usize,
    /// Largest frame, pixels.
    pub max_frame_pixels: u64,
    /// Most bytes decoding one frame may hold.
    pub max_frame_bytes: u64,
    /// Most bytes all frames in flight may hold.
    pub max_decode_bytes: u64,
    /// Most frames in one AddReferences call.
    pub max_references: usize,
    /// Most bytes in one AddReferences call.
    pub max_reference_bytes: u64,
    /// Most bytes one enrollment's features may hold.
    pub max_enrollment_bytes: u64,
    /// Most good frames per recipe.
    pub max_recipe_frames: u64,
    /// Most bytes of good frames per recipe.
    pub max_recipe_bytes: u64,
    /// Most frames accepted for inspection at once.
    pub max_pending: usize,
    /// Most gRPC connections open at once.
    pub max_connections: usize,
    /// Most request message bytes being received at once.
    pub max_receive_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 << 20,
            max_frame_pixels: 64 << 20,
            max_frame_bytes: crate::imaging::DEFAULT_MAX_FRAME_BYTES,
            max_decode_bytes: 1 << 30,
            max_references: 1000,
            max_reference_bytes: 2 << 30,
            max_enrollment_bytes: 4 << 30,
            max_recipe_frames: 5000,
            max_recipe_bytes: 10 << 30,
            max_pending: 64,
            max_connections: 256,
            max_receive_bytes: 1 << 30,
        }
    }
}

/// Resolved `loupe serve` configuration, passed down whole.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Metrics listen address; `None` serves no metrics.
    pub metrics_listen: Option<SocketAddr>,
    /// Console listen address; `None` serves no console.
    pub console_listen: Option<SocketAddr>,
    /// Data folder.
    pub data_dir: PathBuf,
    /// Engine settings.
    pub engine: EngineConfig,
    /// Client limits.
    pub limits: Limits,
    /// Most waiting frames judged in one model run.
    pub max_batch: usize,
    /// Grace period at shutdown.
    pub shutdown_grace: std::time::Duration,
    /// TLS and tokens for the gRPC listener.
    pub security: Security,
    /// The audit trail; `None` keeps none.
    pub audit: Option<AuditConfig>,
}

/// How the gRPC listener is protected; the transport applies it.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// TLS; `None` serves plaintext.
    pub tls: Option<ServerTls>,
    /// Bearer tokens; `None` checks none.
    pub tokens: Option<Arc<Tokens>>,
}

/// The server's TLS files, read and checked.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The server's certificate chain and key.
    pub identity: Identity,
    /// The CA client certificates must be signed by (mutual TLS).
    pub client_ca: Option<PemFile>,
}

/// Whether `addr` is reachable from this machine only (127.0.0.0/8, ::1).
pub fn is_loopback(addr: &SocketAddr) -> bool {
    match addr.ip() {
        IpAddr::V4(ip) => ip.is_loopback(),
        IpAddr::V6(ip) => ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

impl ServeConfig {
    /// What to warn about at start-up: who can reach the service and what
    /// they may do there. Empty on loopback. (Plaintext off loopback got
    /// past [`ServeArgs::resolve`] only with `--insecure`.)
    pub fn exposure_warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Some(metrics) = self.metrics_listen.filter(|addr| !is_loopback(addr)) {
            warnings.push(format!(
                "serving metrics on {metrics} over plain HTTP without tokens: anyone on the network can read \
                 recipe names and inspection counts"
            ));
        }
        if let Some(console) = self.console_listen.filter(|addr| !is_loopback(addr)) {
            warnings.push(format!(
                "serving the console on {console} over plain HTTP without tokens: anyone on the network can see \
                 recipes, verdicts and the kept frames"
            ));
        }
        warnings.extend(self.grpc_exposure_warning());
        warnings
    }

    fn grpc_exposure_warning(&self) -> Option<String> {
        if is_loopback(&self.listen) {
            return None;
        }
        let listen = self.listen;
        let tokens = self.security.tokens.is_some();
        let warning = match &self.security.tls {
            None if tokens => format!(
                "serving gRPC on {listen} without TLS (--insecure): anyone on the network can read frames \
                 and verdicts, and reuse the bearer tokens, which travel in clear text"
            ),
            None => format!(
                "serving gRPC on {listen} without TLS or tokens (--insecure): anyone on the network can read \
                 frames and verdicts, and change or delete recipes"
            ),
            Some(_) if tokens => return None,
            Some(tls) if tls.client_ca.is_some() => format!(
                "no --auth-tokens on {listen}: any client with a certificate from --tls-client-ca may change \
                 or delete recipes"
            ),
            Some(_) => {
                format!("no --auth-tokens on {listen}: anyone who can reach it may change or delete recipes")
            }
        };
        Some(warning)
    }
}

impl ServeArgs {
    /// Validates the flags into a [`ServeConfig`].
    pub fn resolve(&self) -> Result<ServeConfig, ConfigError> {
        at_least("max-message-bytes", self.max_message_bytes as u64, 1024)?;
        at_least("max-frame-pixels", self.max_frame_pixels, 1)?;
        at_least("max-frame-bytes", self.max_frame_bytes, 1024)?;
        let max_decode_bytes = self.max_decode_bytes.unwrap_or_else(quarter_of_memory);
        let max_enrollment_bytes = self.max_enrollment_bytes.unwrap_or_else(quarter_of_memory);
        if max_decode_bytes < self.max_frame_bytes {
            return Err(ConfigError {
                flag: "max-decode-bytes",
                reason: format!(
                    "is {max_decode_bytes}, below --max-frame-bytes {}: no frame could ever be decoded",
                    self.max_frame_bytes
                ),
            });
        }
        // The default grows with --max-message-bytes; a given value is checked.
        let max_receive_bytes = self
            .max_receive_bytes
            .unwrap_or_else(|| quarter_of_memory().max(self.max_message_bytes as u64));
        if max_receive_bytes < self.max_message_bytes as u64 {
            return Err(ConfigError {
                flag: "max-receive-bytes",
                reason: format!(
                    "is {max_receive_bytes}, below --max-message-bytes {}: a message of the largest size \
                     could never be received",
                    self.max_message_bytes
                ),
            });
        }
        at_least("max-connections", self.max_connections as u64, 1)?;
        at_least("max-references", self.max_references as u64, 1)?;
        at_least("max-pending", self.max_pending as u64, 1)?;
        at_least("max-batch", self.max_batch as u64, 1)?;
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError {
                flag: "data-dir",
                reason: "must not be empty".to_owned(),
            });
        }
        Ok(ServeConfig {
            listen: self.listen,
            metrics_listen: self.metrics_listen.0,
            console_listen: self.console_listen.0,
            data_dir: self.data_dir.clone(),
            engine: self.engine.resolve()?,
            limits: Limits {
                max_message_bytes: self.max_message_bytes,
                max_frame_pixels: self.max_frame_pixels,
                max_frame_bytes: self.max_frame_bytes,
                max_decode_bytes,
                max_references: self.max_references,
                max_reference_bytes: self.max_reference_bytes,
                max_enrollment_bytes,
                max_recipe_frames: self.max_recipe_frames,
                max_recipe_bytes: self.max_recipe_bytes,
                max_pending: self.max_pending,
                max_connections: self.max_connections,
                max_receive_bytes,
            },
            max_batch: self.max_batch,
            shutdown_grace: std::time::Duration::from_secs(self.shutdown_grace_secs),
            security: self.security()?,
            audit: self.audit()?,
        })
    }

    fn audit(&self) -> Result<Option<AuditConfig>, ConfigError> {
        if !self.audit.0 {
            return Ok(None);
        }
        at_least("audit-queue", self.audit_queue as u64, 1)?;
        at_least("retain-days", u64::from(self.retain_days), 1)?;
        if !(0.0..=1.0).contains(&self.audit_pass_sample) {
            return Err(ConfigError {
                flag: "audit-pass-sample",
                reason: format!("must be between 0 and 1, got {}", self.audit_pass_sample),
            });
        }
        Ok(Some(AuditConfig {
            queue: self.audit_queue,
            pass_sample: self.audit_pass_sample,
            retain: std::time::Duration::from_secs(u64::from(self.retain_days) * 86_400),
            retain_bytes: self.retain_bytes.0,
            stall: None,
        }))
    }

    fn security(&self) -> Result<Security, ConfigError> {
        let identity = tls::identity(
            ("tls-cert", self.tls_cert.as_deref()),
            ("tls-key", self.tls_key.as_deref()),
        )?;
        let tls = match (identity, &self.tls_client_ca) {
            (Some(identity), client_ca) => Some(ServerTls {
                identity,
                client_ca: client_ca
                    .as_deref()
                    .map(|path| tls::certificates("tls-client-ca", path))
                    .transpose()?,
            }),
            (None, Some(_)) => {
                return Err(ConfigError {
                    flag: "tls-client-ca",
                    reason: "needs --tls-cert and --tls-key: client certificates are checked only over TLS"
                        .to_owned(),
                });
            }
            (None, None) => None,
        };
        if tls.is_none() && !self.insecure && !is_loopback(&self.listen) {
            return Err(ConfigError {
                flag: "listen",
                reason: format!(
                    "{} is not a loopback address and TLS is off: give --tls-cert/--tls-key, or --insecure \
                     to serve plaintext on the network anyway",
                    self.listen
                ),
            });
        }
        let tokens = self.auth_tokens.as_deref().map(read_tokens).transpose()?;
        Ok(Security {
            tls,
            tokens: tokens.map(Arc::new),
        })
    }
}

/// A quarter of the machine's memory (`MemTotal` in /proc/meminfo), or 1 GiB
/// where that cannot be read; never below the default per-frame limit.
fn quarter_of_memory() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|info| {
        let line = info.lines().find(|line| line.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib.saturating_mul(1024))
    });
    total
        .map_or(1 << 30, |bytes| bytes / 4)
        .max(crate::imaging::DEFAULT_MAX_FRAME_BYTES)
}

fn read_tokens(path: &Path) -> Result<Tokens, ConfigError> {
    let refuse = |reason: String| ConfigError {
        flag: "auth-tokens",
        reason,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|error| refuse(format!("cannot read {}: {error}", path.display())))?;
    Tokens::parse(&text).map_err(|error| refuse(format!("{}: {error}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_take_binary_suffixes_and_refuse_the_rest() {
        let parse = |text: &str| text.parse::<ByteSize>().map(|size| size.0);
        assert_eq!(parse("1234"), Ok(1234));
        assert_eq!(parse("500MiB"), Ok(500 << 20));
        assert_eq!(parse("10GiB"), Ok(10 << 30));
        assert_eq!(parse("2 gb"), Ok(2 << 30));
        assert!(parse("10 parsecs").unwrap_err().contains("500MiB"));
        assert!(parse("-1").is_err());
        assert!(parse("99999999999TiB").unwrap_err().contains("64 bits"));
    }

    #[test]
    fn switches_are_on_or_off() {
        assert_eq!("on".parse::<Switch>(), Ok(Switch(true)));
        assert_eq!("OFF".parse::<Switch>(), Ok(Switch(false)));
        assert!("maybe".parse::<Switch>().is_err());
    }
}
