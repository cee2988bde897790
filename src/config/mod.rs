//! Command-line flags (each with a `LOUPE_*` environment variable) and the
//! validated configuration they resolve into, one file per command: `serve`,
//! the client commands (`recipe`, `inspect`, `results`), `bench`, and the engine and
//! recipe-settings flags they share; `tls.rs` reads the PEM files the TLS
//! flags name and `access.rs` the `--auth-tokens` file.

mod access;
mod bench;
mod client;
mod engine;
mod serve;
mod settings;
mod tls;

use clap::{Parser, Subcommand};

pub use access::{MIN_TOKEN_CHARS, Role, TokenFileError, Tokens};
pub use bench::{BenchArgs, FormatArg};
pub use client::{
    ClientConfig, ClientTls, CredentialArgs, InspectArgs, RecipeAction, RecipeArgs, ResultsAction,
    ResultsArgs, ServerArgs, Token, VerdictArg, parse_ago,
};
pub use engine::{EngineArgs, EngineConfig};
pub use serve::{
    ByteSize, DEFAULT_MAX_BATCH, Limits, ListenOr, Security, ServeArgs, ServeConfig, ServerTls, Switch,
    is_loopback,
};
pub use settings::SettingsArgs;
pub use tls::{Identity, PemFile};

/// Loupe: visual quality inspection against a golden reference, over gRPC.
#[derive(Debug, Parser)]
#[command(name = "loupe", version, about, propagate_version = true)]
pub struct Cli {
    /// Log filter, in `tracing` env-filter syntax (`info`, `loupe=debug`, ...).
    #[arg(long, env = "LOUPE_LOG", default_value = "info,ort=warn", global = true)]
    pub log: String,

    /// Log line format on stderr: `text` for people (coloured only at a
    /// terminal, and never with `NO_COLOR` set), `json` for log collectors
    /// (one object a line).
    #[arg(long, env = "LOUPE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `2026-12-03T06:10:44.123Z  INFO loupe::grpc: SERVING addr=127.0.0.1:50051`.
    Text,
    /// `{"timestamp":"...","level":"INFO","message":"SERVING","addr":"127.0.0.1:50051","target":"loupe::grpc"}`.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the gRPC inspection service.
    Serve(ServeArgs),
    /// Manages recipes on a running server.
    Recipe(RecipeArgs),
    /// Inspects image files on a running server and prints the verdicts.
    /// Exits 0 when every part passed, 1 when any failed, 2 when a file
    /// could not be inspected (or on any other error).
    Inspect(InspectArgs),
    /// Reads the audit trail of a running server: recorded verdicts, one
    /// result with its images, or new results live.
    Results(ResultsArgs),
    /// Benchmarks a recipe on a folder of images (MVTec AD layout or golden
    /// pairs): AUROC, F1, false-reject and escape rates, pixel AUROC, AUPRO,
    /// defect recall, latency; a summary on stdout and, with --out, report
    /// files.
    Bench(BenchArgs),
    /// Writes a small folder of generated parts with a known answer (good
    /// parts to teach, good and defective parts to inspect, the defects'
    /// masks) for a first run without images of one's own.
    Demo(DemoArgs),
}

/// `loupe demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// The folder to write (created if needed; files of the same names are
    /// replaced).
    pub dir: std::path::PathBuf,
}

/// A flag value that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("--{flag}: {reason}")]
pub struct ConfigError {
    /// The flag's long name.
    pub flag: &'static str,
    /// What is wrong.
    pub reason: String,
}

fn at_least(flag: &'static str, value: u64, min: u64) -> Result<(), ConfigError> {
    if value < min {
        return Err(ConfigError {
            flag,
            reason: format!("must be at least {min}, got {value}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use clap::CommandFactory;

    fn serve(args: &[&str]) -> Result<ServeConfig, String> {
        let cli = Cli::try_parse_from(["loupe", "serve"].iter().chain(args)).map_err(|e| e.to_string())?;
        let Command::Serve(serve) = cli.command else {
            unreachable!("parsed `serve`");
        };
        serve.resolve().map_err(|e| e.to_string())
    }

    #[test]
    fn audit_flags_resolve_into_the_audit_config() {
        let audit = serve(&[]).unwrap().audit.expect("on by default");
        assert_eq!(audit.queue, 1024);
        assert_eq!(audit.retain_bytes, 10 << 30);
        assert_eq!(audit.retain.as_secs(), 90 * 86_400);
        let audit = serve(&[
            "--retain-bytes",
            "500MiB",
            "--retain-days",
            "7",
            "--audit-pass-sample",
            "1",
        ])
        .unwrap()
        .audit
        .unwrap();
        assert_eq!(
            (audit.retain_bytes, audit.retain.as_secs(), audit.pass_sample),
            (500 << 20, 7 * 86_400, 1.0)
        );
        assert!(serve(&["--audit", "off"]).unwrap().audit.is_none());
        let error = serve(&["--audit-pass-sample", "2"]).unwrap_err();
        assert!(error.contains("--audit-pass-sample"), "{error}");
    }

    #[test]
    fn settings_flags_override_the_base() {
        let cli = Cli::try_parse_from([
            "loupe",
            "recipe",
            "create",
            "part",
            "--input-size",
            "320x160",
            "--mode",
            "aligned",
            "--roi",
            "1,2,30,40",
            "--threshold",
            "2.5",
        ])
        .unwrap();
        let Command::Recipe(RecipeArgs {
            action: RecipeAction::Create { name, settings },
            ..
        }) = cli.command
        else {
            panic!("parsed as something else");
        };
        assert_eq!(name, "part");
        let settings = settings.apply(crate::engine::RecipeSettings::default()).unwrap();
        assert_eq!((settings.input_width, settings.input_height), (320, 160));
        assert_eq!(settings.match_mode, crate::engine::MatchMode::Aligned);
        assert_eq!(
            settings.roi.map(|r| (r.x, r.y, r.width, r.height)),
            Some((1, 2, 30, 40))
        );
        assert_eq!(settings.threshold, Some(2.5));
        assert!(settings::parse_size("256").is_err());
        assert!(settings::parse_roi("1,2,3").is_err());
    }

    fn update_of(args: &[&str]) -> Result<crate::engine::SettingsUpdate, String> {
        let cli = Cli::try_parse_from(["loupe", "recipe", "update", "part"].iter().chain(args))
            .map_err(|e| e.to_string())?;
        let Command::Recipe(RecipeArgs {
            action: RecipeAction::Update { settings, .. },
            ..
        }) = cli.command
        else {
            panic!("parsed as something else");
        };
        settings.update().map_err(|e| e.to_string())
    }

    #[test]
    fn an_update_names_only_the_flags_given() {
        use crate::engine::Setting;
        let update = update_of(&["--sensitivity", "1.5", "--no-keep-aspect", "--no-threshold"]).unwrap();
        assert_eq!(
            update.settings,
            [Setting::KeepAspect, Setting::Threshold, Setting::Sensitivity]
        );
        assert!(!update.values.keep_aspect);
        assert_eq!(update.values.threshold, None);
        assert!(update_of(&["--keep-aspect"]).unwrap().values.keep_aspect);
        assert!(update_of(&["--threshold", "2", "--no-threshold"]).is_err());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("settings.json");
        std::fs::write(
            &file,
            r#"{"neighborhood": 2, "input_width": 320, "input_height": 160}"#,
        )
        .unwrap();
        let update = update_of(&["--settings", file.to_str().unwrap(), "--sensitivity", "3"]).unwrap();
        assert_eq!(
            update.settings,
            [Setting::InputSize, Setting::Neighborhood, Setting::Sensitivity]
        );
        assert_eq!((update.values.neighborhood, update.values.sensitivity), (2, 3.0));
        // A typo is refused, named, instead of being ignored.
        std::fs::write(&file, r#"{"keepaspect": true}"#).unwrap();
        let error = update_of(&["--settings", file.to_str().unwrap()]).unwrap_err();
        assert!(error.contains("\"keepaspect\" is not a setting"), "{error}");
        assert!(error.contains("keep_aspect"), "{error}");
    }

    #[test]
    fn a_server_address_without_a_scheme_is_plaintext() {
        let config = client(&["--server", "10.0.0.5:50051"]).unwrap();
        assert_eq!(config.server, "http://10.0.0.5:50051");
        let config = client(&["--server", "https://line-3:50051"]).unwrap();
        assert_eq!(config.server, "https://line-3:50051");
    }

    #[test]
    fn connection_flags_go_before_or_after_the_action() {
        for args in [
            ["loupe", "recipe", "list", "--server", "h:1"],
            ["loupe", "recipe", "--server", "h:1", "list"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            let Command::Recipe(recipe) = cli.command else {
                panic!("parsed as something else");
            };
            assert_eq!(recipe.server.server, "h:1");
        }
    }

    #[test]
    fn the_log_format_goes_before_or_after_the_subcommand() {
        for args in [
            ["loupe", "--log-format", "json", "serve"],
            ["loupe", "serve", "--log-format", "json"],
        ] {
            assert_eq!(Cli::try_parse_from(args).unwrap().log_format, LogFormat::Json);
        }
        assert_eq!(
            Cli::try_parse_from(["loupe", "serve"]).unwrap().log_format,
            LogFormat::Text
        );
        let error = Cli::try_parse_from(["loupe", "serve", "--log-format", "xml"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("text") && error.contains("json"), "{error}");
    }

    #[test]
    fn bench_flags_are_parsed() {
        let cli = Cli::try_parse_from([
            "loupe",
            "bench",
            "data/tiles",
            "--format",
            "pairs",
            "--out",
            "/tmp/r",
            "--train-limit",
            "20",
            "--mode",
            "global",
            "--input-size",
            "128x128",
        ])
        .unwrap();
        let Command::Bench(args) = cli.command else {
            panic!("parsed as something else");
        };
        assert_eq!(args.dir, PathBuf::from("data/tiles"));
        assert_eq!(args.format, Some(FormatArg::Pairs));
        assert_eq!(args.train_limit, Some(20));
        assert_eq!(args.gallery, 6);
        assert!(args.server.is_none());
        let settings = args
            .settings
            .apply(crate::engine::RecipeSettings::default())
            .unwrap();
        assert_eq!(
            (settings.input_width, settings.match_mode),
            (128, crate::engine::MatchMode::Global)
        );
    }

    #[test]
    fn a_cuda_device_needs_a_cuda_build() {
        let result = serve(&["--device", "cuda:1"]);
        if cfg!(feature = "cuda") {
            assert_eq!(result.unwrap().engine.model.device, crate::model::Device::Cuda(1));
        } else {
            let error = result.unwrap_err();
            assert!(
                error.starts_with("--device: cuda:1: this build has no CUDA support"),
                "{error}"
            );
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_need_no_flags() {
        let config = serve(&[]).unwrap();
        assert_eq!(config.listen, "127.0.0.1:50051".parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("loupe-data"));
        assert_eq!(config.limits.max_message_bytes, 64 << 20);
        assert_eq!(config.limits.max_connections, 256);
        assert!(config.limits.max_receive_bytes >= config.limits.max_message_bytes as u64);
        assert!(config.engine.model.threads >= 1);
        assert!(config.engine.model.path.is_none());
        assert_eq!(config.engine.model.device, crate::model::Device::Cpu);
    }

    #[test]
    fn metrics_listen_defaults_to_loopback_and_none_turns_it_off() {
        let config = serve(&[]).unwrap();
        assert_eq!(config.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(serve(&["--metrics-listen", "none"]).unwrap().metrics_listen, None);
        assert_eq!(
            serve(&["--metrics-listen", "127.0.0.1:0"])
                .unwrap()
                .metrics_listen,
            Some("127.0.0.1:0".parse().unwrap())
        );
        let error = serve(&["--metrics-listen", "off"]).unwrap_err();
        assert!(
            error.contains("--metrics-listen") && error.contains("`none`"),
            "{error}"
        );
        let config = serve(&["--metrics-listen", "0.0.0.0:9464"]).unwrap();
        let warnings = config.exposure_warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("serving metrics on 0.0.0.0:9464"),
            "{warnings:?}"
        );
    }

    #[test]
    fn console_listen_defaults_to_loopback_and_none_turns_it_off() {
        let config = serve(&[]).unwrap();
        assert_eq!(config.console_listen, Some("127.0.0.1:8080".parse().unwrap()));
        assert!(config.exposure_warnings().is_empty());
        assert_eq!(serve(&["--console-listen", "none"]).unwrap().console_listen, None);
        let error = serve(&["--console-listen", "8080"]).unwrap_err();
        assert!(error.contains("--console-listen"), "{error}");
        let config = serve(&["--console-listen", "0.0.0.0:8080"]).unwrap();
        let warnings = config.exposure_warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("serving the console on 0.0.0.0:8080"),
            "{warnings:?}"
        );
    }

    #[test]
    fn flags_are_parsed() {
        let config = serve(&[
            "--listen",
            "0.0.0.0:6000",
            "--insecure",
            "--data-dir",
            "/tmp/x",
            "--threads",
            "3",
            "--max-pending",
            "5",
            "--onnxruntime",
            "/opt/ort.so",
        ])
        .unwrap();
        assert_eq!(config.listen.port(), 6000);
        assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(config.engine.model.threads, 3);
        assert_eq!(config.limits.max_pending, 5);
        assert_eq!(config.engine.onnxruntime, Some(PathBuf::from("/opt/ort.so")));
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_name() {
        assert!(serve(&["--listen", "nowhere"]).unwrap_err().contains("--listen"));
        assert!(serve(&["--threads", "0"]).unwrap_err().contains("--threads"));
        assert!(
            serve(&["--device", "gpu"])
                .unwrap_err()
                .contains("cpu, cuda or cuda:N")
        );
        assert!(
            serve(&["--max-message-bytes", "10"])
                .unwrap_err()
                .contains("at least 1024")
        );
        assert!(
            serve(&["--max-connections", "0"])
                .unwrap_err()
                .contains("--max-connections")
        );
        let error = serve(&["--max-message-bytes", "2000000", "--max-receive-bytes", "1000000"]).unwrap_err();
        assert!(
            error.contains("--max-receive-bytes") && error.contains("below --max-message-bytes 2000000"),
            "{error}"
        );
        let config = serve(&["--max-connections", "2", "--max-receive-bytes", "3000000"]).unwrap_err();
        assert!(config.contains("below --max-message-bytes"), "{config}");
        let config = serve(&["--max-message-bytes", "2000000", "--max-receive-bytes", "3000000"]).unwrap();
        assert_eq!(config.limits.max_receive_bytes, 3_000_000);
    }

    fn client(args: &[&str]) -> Result<ClientConfig, String> {
        let cli = Cli::try_parse_from(["loupe", "recipe"].iter().chain(args).chain(&["list"]))
            .map_err(|e| e.to_string())?;
        let Command::Recipe(recipe) = cli.command else {
            unreachable!("parsed `recipe`");
        };
        recipe.server.resolve().map_err(|e| e.to_string())
    }

    /// PEM files the flags accept (the PEM layer does not parse the DER).
    fn pem_files() -> (tempfile::TempDir, String, String) {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nAAEC\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let path = |p: PathBuf| p.to_str().unwrap().to_owned();
        (dir, path(cert), path(key))
    }

    #[test]
    fn a_network_address_needs_tls_or_insecure() {
        let error = serve(&["--listen", "0.0.0.0:50051"]).unwrap_err();
        assert_eq!(
            error,
            "--listen: 0.0.0.0:50051 is not a loopback address and TLS is off: give --tls-cert/--tls-key, \
             or --insecure to serve plaintext on the network anyway"
        );
        assert!(serve(&["--listen", "[::]:50051"]).is_err());
        assert!(serve(&["--listen", "192.168.10.5:50051"]).is_err());
        for loopback in ["127.0.0.1:1", "127.8.9.10:1", "[::1]:1", "[::ffff:127.0.0.1]:1"] {
            let config = serve(&["--listen", loopback]).unwrap();
            assert!(config.exposure_warnings().is_empty(), "{loopback}");
        }

        let config = serve(&["--listen", "0.0.0.0:50051", "--insecure"]).unwrap();
        let warnings = config.exposure_warnings();
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("without TLS or tokens (--insecure)"),
            "{warnings:?}"
        );

        let (_dir, cert, key) = pem_files();
        let tls = [
            "--listen",
            "0.0.0.0:50051",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ];
        let config = serve(&tls).unwrap();
        assert!(config.security.tls.as_ref().unwrap().client_ca.is_none());
        let warnings = config.exposure_warnings();
        assert!(
            warnings[0].starts_with("no --auth-tokens on 0.0.0.0:50051"),
            "{warnings:?}"
        );
    }

    #[test]
    fn tls_and_token_flags_are_checked_with_the_flag_named() {
        let (dir, cert, key) = pem_files();
        let error = serve(&["--tls-key", &key]).unwrap_err();
        assert!(error.starts_with("--tls-key: needs --tls-cert"), "{error}");
        let error = serve(&["--tls-client-ca", &cert]).unwrap_err();
        assert!(
            error.starts_with("--tls-client-ca: needs --tls-cert and --tls-key"),
            "{error}"
        );
        let config = serve(&["--tls-cert", &cert, "--tls-key", &key, "--tls-client-ca", &cert]).unwrap();
        assert!(config.security.tls.unwrap().client_ca.is_some());
        let error = serve(&["--tls-cert", &cert, "--tls-key", &key, "--tls-client-ca", &key]).unwrap_err();
        assert!(
            error.starts_with("--tls-client-ca: ") && error.contains("key.pem"),
            "{error}"
        );

        let tokens = dir.path().join("tokens");
        std::fs::write(
            &tokens,
            "operator 0123456789abcdef\n# comment\nroot 0123456789abcdefg\n",
        )
        .unwrap();
        let tokens = tokens.to_str().unwrap();
        let error = serve(&["--auth-tokens", tokens]).unwrap_err();
        assert_eq!(
            error,
            format!(
                "--auth-tokens: {tokens}: line 3: unknown role `root`; the roles are operator and engineer"
            )
        );
        let missing = dir.path().join("missing");
        let error = serve(&["--auth-tokens", missing.to_str().unwrap()]).unwrap_err();
        assert!(error.starts_with("--auth-tokens: cannot read "), "{error}");
    }

    #[test]
    fn client_flags_resolve_into_one_connection() {
        let config = client(&[]).unwrap();
        assert_eq!(config.server, "http://127.0.0.1:50051");
        assert!(config.tls.is_none() && config.token.is_none());

        let (_dir, cert, key) = pem_files();
        let config = client(&[
            "--server",
            "https://line-3.local:50051",
            "--tls-ca",
            &cert,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--token",
            "0123456789abcdef",
        ])
        .unwrap();
        let tls = config.tls.as_ref().unwrap();
        assert!(tls.ca.is_some() && tls.identity.is_some());
        assert_eq!(config.token.as_ref().unwrap().as_str(), "0123456789abcdef");
        assert!(
            !format!("{config:?}").contains("0123456789abcdef"),
            "Debug shows the token"
        );
        // https:// alone trusts the system's roots.
        assert!(
            client(&["--server", "HTTPS://line-3.local:50051"])
                .unwrap()
                .tls
                .unwrap()
                .ca
                .is_none()
        );

        let error = client(&["--tls-ca", &cert]).unwrap_err();
        assert_eq!(
            error,
            "--tls-ca: TLS needs an https:// address; --server is http://127.0.0.1:50051"
        );
        let error = client(&["--server", "https://h:1", "--tls-cert", &cert]).unwrap_err();
        assert!(error.starts_with("--tls-cert: needs --tls-key"), "{error}");
        let error = client(&["--token", "two words"]).unwrap_err();
        assert!(
            error.starts_with("--token: ") && error.contains("visible ASCII"),
            "{error}"
        );
    }

    #[test]
    fn bench_takes_the_connection_flags_only_with_a_server() {
        let bench = |args: &[&str]| {
            let cli = Cli::try_parse_from(["loupe", "bench", "data"].iter().chain(args)).unwrap();
            let Command::Bench(args) = cli.command else {
                unreachable!("parsed `bench`");
            };
            crate::bench::BenchConfig::from_args(&args).map_err(|e| e.to_string())
        };
        let error = bench(&["--token", "0123456789abcdef"]).unwrap_err();
        assert!(error.contains("--token: only with --server"), "{error}");
        let config = bench(&["--server", "http://127.0.0.1:1", "--token", "0123456789abcdef"]).unwrap();
        let server = config.server.unwrap();
        assert_eq!(server.server, "http://127.0.0.1:1");
        assert!(server.token.is_some());
    }

    #[test]
    fn every_flag_has_an_env_variable_and_help() {
        fn walk(command: &clap::Command) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") || arg.is_positional() {
                    continue;
                }
                let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
                assert!(
                    env.as_deref().is_some_and(|e| e.starts_with("LOUPE_")),
                    "{} --{id} has no LOUPE_ env variable",
                    command.get_name()
                );
                assert!(arg.get_help().is_some(), "--{id} has no help");
            }
            for sub in command.get_subcommands() {
                walk(sub);
            }
        }
        walk(&Cli::command());
    }
}
