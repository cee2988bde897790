//! The `loupe` command: parses flags, sets up logging, and runs a subcommand.
//! Set-up failures (bad flags, no usable ONNX Runtime, a model that does not
//! match its manifest) print one line and exit with code 2.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use loupe::bench::BenchConfig;
use loupe::config::{BenchArgs, Cli, Command, ServeArgs};
use loupe::grpc::GrpcError;
use loupe::runtime::{self, Lookup};
use loupe::serve::ServeError;
use loupe::server::StartError;
use loupe::store::StoreError;
use std::future::Future;

/// Exit code for a set-up problem the user can fix (flags, runtime, model).
const EXIT_SETUP: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    loupe::logging::init(&cli.log, cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Recipe(args) => args
            .server
            .resolve()
            .map_err(setup)
            .and_then(|server| client(loupe::cli::recipe(&server, args.action))),
        Command::Inspect(args) => args
            .server
            .resolve()
            .map_err(setup)
            .and_then(|server| inspect(&server, args)),
        Command::Results(args) => args
            .server
            .resolve()
            .map_err(setup)
            .and_then(|server| client(loupe::cli::results(&server, args.action))),
        Command::Bench(args) => bench(&args),
        Command::Demo(args) => demo(&args.dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Setup(message)) => {
            eprintln!("loupe: {message}");
            ExitCode::from(EXIT_SETUP)
        }
        Err(Failure::Other(error)) => {
            eprintln!("loupe: {error:#}");
            ExitCode::FAILURE
        }
        Err(Failure::Exit(code)) => ExitCode::from(code),
    }
}

/// `loupe inspect`: 0 when every part passed, 1 when any failed, 2 when a
/// file could not be inspected or the command could not run.
fn inspect(server: &loupe::config::ClientConfig, args: loupe::config::InspectArgs) -> Result<(), Failure> {
    use loupe::cli::InspectOutcome;
    match client(loupe::cli::inspect(server, args)) {
        Ok(InspectOutcome::AllPassed) => Ok(()),
        Ok(InspectOutcome::SomeFailed) => Err(Failure::Exit(1)),
        Ok(InspectOutcome::Errors) => Err(Failure::Exit(EXIT_SETUP)),
        Err(Failure::Other(error)) => Err(Failure::Setup(format!("{error:#}"))),
        Err(other) => Err(other),
    }
}

/// How a subcommand failed, which decides the exit code.
enum Failure {
    /// Fixable set-up: one line, exit 2.
    Setup(String),
    /// Anything else: exit 1.
    Other(anyhow::Error),
    /// An outcome the command has already reported: this code, no message.
    Exit(u8),
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Self::Other(error)
    }
}

fn setup<E: std::fmt::Display>(error: E) -> Failure {
    Failure::Setup(error.to_string())
}

/// Runs a client command on a small async runtime.
fn client<T>(command: impl Future<Output = anyhow::Result<T>>) -> Result<T, Failure> {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(tokio.block_on(command)?)
}

fn bench(args: &BenchArgs) -> Result<(), Failure> {
    let config = BenchConfig::from_args(args).map_err(setup)?;
    match loupe::bench::run(&config) {
        Ok(report) => {
            print!("{}", loupe::bench::report::summary(&report));
            if let Some(out) = &config.out {
                println!("report: {}", out.join("report.html").display());
            }
            Ok(())
        }
        Err(error) if error.is_setup() => Err(setup(error)),
        Err(error) => Err(Failure::Other(error.into())),
    }
}

/// `loupe demo DIR`: writes the parts and says what to run next.
fn demo(dir: &std::path::Path) -> Result<(), Failure> {
    let written = loupe::demo::write(dir).map_err(|error| Failure::Other(error.into()))?;
    let dir = dir.display();
    println!(
        "wrote {} good parts to teach ({dir}/train/good), {} good and {} defective parts to inspect ({dir}/test), and the defects' masks ({dir}/ground_truth)",
        written.train_good, written.test_good, written.test_defective
    );
    println!("with `loupe serve` running:");
    println!("  loupe recipe create demo");
    println!("  loupe recipe add-refs demo {dir}/train/good/*.png");
    println!("  loupe inspect --recipe demo --heatmap heat {dir}/test/*/*.png");
    println!("or score the whole folder offline: loupe bench {dir}");
    Ok(())
}

fn serve(args: &ServeArgs) -> Result<(), Failure> {
    let config = args.resolve().map_err(setup)?;
    let runtime = runtime::load(&Lookup::from_process(config.engine.onnxruntime.clone())).map_err(setup)?;
    tracing::info!(path = %runtime.path.display(), source = %runtime.source, version = %runtime.version, "ONNX Runtime loaded");
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data folder {}", config.data_dir.display()))?;

    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    tokio.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|error| setup(format!("cannot listen on {}: {error}", config.listen)))?;
        loupe::serve::serve(config, runtime, listener, loupe::serve::shutdown_signal())
            .await
            .map_err(|error| match error {
                ServeError::Model(error) => setup(error),
                error @ ServeError::Grpc(GrpcError::Tls { .. }) => setup(error),
                error @ ServeError::Metrics(_) => setup(error),
                ServeError::Start(StartError::Store(error @ StoreError::Locked { .. })) => setup(error),
                other => Failure::Other(other.into()),
            })
    })
}
