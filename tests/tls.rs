//! TLS and access control end to end: a real server on 127.0.0.1:0 with a
//! CA and certificates made here (rcgen), real TLS clients (the clients'
//! own connection code, from their own flags), the token roles, and the
//! `loupe` binary's refusals and client flags.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use clap::Parser;
use common::TestServer;
use loupe::config::{Cli, ClientConfig, Command as Subcommand, Security};
use loupe::grpc::client;
use loupe::proto::inspection_client::InspectionClient;
use loupe::proto::recipes_client::RecipesClient;
use loupe::proto::{CreateRecipeRequest, DeleteRecipeRequest, GetRecipeRequest, ListRecipesRequest};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const OPERATOR: &str = "operator-7f3c9a1e5b2d4f60";
const ENGINEER: &str = "engineer-2b8e6d0c4a9f1e37";

/// A CA with a server certificate (localhost, 127.0.0.1) and a client
/// certificate, and a stranger CA with a client certificate of its own, as
/// PEM files in a temporary folder.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, pem: String| std::fs::write(dir.path().join(name), pem).unwrap();
        for (prefix, ca_name) in [("", "Loupe test CA"), ("stranger-", "Someone else's CA")] {
            let (ca_pem, issuer) = ca(ca_name);
            write(&format!("{prefix}ca.pem"), ca_pem);
            if prefix.is_empty() {
                let (cert, key) = leaf(
                    &["localhost", "127.0.0.1"],
                    ExtendedKeyUsagePurpose::ServerAuth,
                    &issuer,
                );
                write("server.pem", cert);
                write("server-key.pem", key);
            }
            let (cert, key) = leaf(&[], ExtendedKeyUsagePurpose::ClientAuth, &issuer);
            write(&format!("{prefix}client.pem"), cert);
            write(&format!("{prefix}client-key.pem"), key);
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_owned()
    }
}

fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

fn leaf(
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'static, KeyPair>,
) -> (String, String) {
    let names: Vec<String> = names.iter().map(|&name| name.to_owned()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params.distinguished_name.push(DnType::CommonName, "loupe test");
    params.extended_key_usages.push(usage);
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// `loupe serve FLAGS` resolved (on loopback), as the binary would.
fn serve_security(flags: &[String]) -> Security {
    let args = ["loupe", "serve", "--listen", "127.0.0.1:0"].map(String::from);
    let cli = Cli::try_parse_from(args.into_iter().chain(flags.iter().cloned())).unwrap();
    let Subcommand::Serve(serve) = cli.command else {
        unreachable!("parsed `serve`");
    };
    serve.resolve().unwrap().security
}

/// `loupe recipe FLAGS list`'s connection, resolved as the binary would.
fn client_flags(flags: &[String]) -> ClientConfig {
    let args = ["loupe", "recipe"].map(String::from);
    let list = std::iter::once("list".to_owned());
    let cli = Cli::try_parse_from(args.into_iter().chain(flags.iter().cloned()).chain(list)).unwrap();
    let Subcommand::Recipe(recipe) = cli.command else {
        unreachable!("parsed `recipe`");
    };
    recipe.server.resolve().unwrap()
}

/// A server with `flags` (TLS, tokens), once the model is warm; `ready`
/// gives, for the server's port, a connection that gets through, used to
/// wait for that.
async fn start(data: &Path, flags: &[String], ready: impl FnOnce(u16) -> ClientConfig) -> TestServer {
    let mut config = common::config(data);
    config.security = serve_security(flags);
    let server = TestServer::start(config).await;
    let ready = ready(server.addr.port());
    common::wait_serving_on(client::connect(&ready).await.unwrap(), "").await;
    server
}

/// ListRecipes over a fresh connection: the number of recipes, or why the
/// connection or the call failed.
async fn list(config: &ClientConfig) -> Result<usize, String> {
    let connection = client::connect(config).await.map_err(|e| e.to_string())?;
    RecipesClient::new(connection)
        .list_recipes(ListRecipesRequest::default())
        .await
        .map(|response| response.into_inner().recipes.len())
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))
}

fn https(port: u16) -> String {
    format!("https://127.0.0.1:{port}")
}

/// The `loupe` binary with `args`, no `LOUPE_*` variables of the caller's.
fn loupe(args: &[String], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_loupe"));
    for (name, _) in std::env::vars() {
        if name.starts_with("LOUPE_") {
            command.env_remove(name);
        }
    }
    command.args(args).envs(env.iter().copied()).output().unwrap()
}

async fn loupe_async(args: Vec<String>, env: Vec<(&'static str, &'static str)>) -> Output {
    tokio::task::spawn_blocking(move || loupe(&args, &env))
        .await
        .unwrap()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|&arg| arg.to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_trusts_the_ca_gets_through_and_a_plaintext_one_does_not() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let tls = strings(&[
        "--tls-cert",
        &pki.arg("server.pem"),
        "--tls-key",
        &pki.arg("server-key.pem"),
    ]);
    let trusted = |port: u16| {
        client_flags(&strings(&[
            "--server",
            &https(port),
            "--tls-ca",
            &pki.arg("ca.pem"),
        ]))
    };
    let server = start(data.path(), &tls, trusted).await;

    let trusted = trusted(server.addr.port());
    let mut health = HealthClient::new(client::connect(&trusted).await.unwrap());
    let status = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    assert_eq!(list(&trusted).await, Ok(0));

    let plaintext = ClientConfig::plaintext(format!("http://{}", server.addr));
    assert!(
        list(&plaintext).await.is_err(),
        "plaintext got through a TLS server"
    );

    let stranger = client_flags(&strings(&[
        "--server",
        &https(server.addr.port()),
        "--tls-ca",
        &pki.arg("stranger-ca.pem"),
    ]));
    let error = list(&stranger).await.unwrap_err();
    assert!(error.contains("certificate"), "{error}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_lets_in_only_clients_with_a_certificate_from_the_ca() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let flags = strings(&[
        "--tls-cert",
        &pki.arg("server.pem"),
        "--tls-key",
        &pki.arg("server-key.pem"),
        "--tls-client-ca",
        &pki.arg("ca.pem"),
    ]);
    let with_cert = |port: u16, prefix: &str| {
        client_flags(&strings(&[
            "--server",
            &https(port),
            "--tls-ca",
            &pki.arg("ca.pem"),
            "--tls-cert",
            &pki.arg(&format!("{prefix}client.pem")),
            "--tls-key",
            &pki.arg(&format!("{prefix}client-key.pem")),
        ]))
    };
    let server = start(data.path(), &flags, |port| with_cert(port, "")).await;
    let port = server.addr.port();
    let url = https(port);

    assert_eq!(list(&with_cert(port, "")).await, Ok(0));
    let without = client_flags(&strings(&["--server", &url, "--tls-ca", &pki.arg("ca.pem")]));
    assert!(
        list(&without).await.is_err(),
        "a client without a certificate got through"
    );
    assert!(
        list(&with_cert(port, "stranger-")).await.is_err(),
        "a certificate from another CA got through"
    );

    // The binary, with the same flags a user types.
    let output = loupe_async(
        strings(&[
            "recipe",
            "--server",
            &url,
            "--tls-ca",
            &pki.arg("ca.pem"),
            "--tls-cert",
            &pki.arg("client.pem"),
            "--tls-key",
            &pki.arg("client-key.pem"),
            "list",
        ]),
        vec![],
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "no recipes");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_decide_what_each_role_may_call() {
    let data = tempfile::tempdir().unwrap();
    let tokens = data.path().join("tokens");
    std::fs::write(
        &tokens,
        format!("# line 3\noperator {OPERATOR}\nengineer {ENGINEER}\n"),
    )
    .unwrap();
    let flags = strings(&["--auth-tokens", tokens.to_str().unwrap()]);
    // Health needs no token: waiting for SERVING without one shows it.
    let plaintext = |port: u16| ClientConfig::plaintext(format!("http://127.0.0.1:{port}"));
    let server = start(&data.path().join("server"), &flags, plaintext).await;
    let url = format!("http://{}", server.addr);
    let as_role = |token: Option<&str>| {
        let mut args = strings(&["--server", &url]);
        if let Some(token) = token {
            args.extend(strings(&["--token", token]));
        }
        client_flags(&args)
    };
    let connect = |token: Option<&str>| {
        let config = as_role(token);
        async move { client::connect(&config).await.unwrap() }
    };

    // Reflection stays open too.
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(connect(None).await);
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    assert!(answers.message().await.unwrap().is_some());

    let error = list(&as_role(None)).await.unwrap_err();
    assert!(error.starts_with("Unauthenticated: "), "{error}");
    assert!(error.contains("role operator"), "{error}");
    let error = list(&as_role(Some("not-a-token-of-this-server")))
        .await
        .unwrap_err();
    assert!(error.starts_with("Unauthenticated: "), "{error}");

    // An operator reads recipes and inspects, but changes nothing.
    assert_eq!(list(&as_role(Some(OPERATOR))).await, Ok(0));
    let mut operator = RecipesClient::new(connect(Some(OPERATOR)).await);
    let create = || CreateRecipeRequest {
        name: "tile".into(),
        settings: None,
    };
    let status = operator.create_recipe(create()).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "loupe.v1.Recipes/CreateRecipe needs role engineer; this token has role operator"
    );
    let mut inspection = InspectionClient::new(connect(Some(OPERATOR)).await);
    let frame = common::raw(common::texture(1, 0.0, 0.0));
    let status = inspection
        .inspect(common::request("tile", frame, "f1"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "past the token check: {status:?}");

    // An engineer may do all of it.
    let mut engineer = RecipesClient::new(connect(Some(ENGINEER)).await);
    engineer.create_recipe(create()).await.unwrap();
    let recipe = operator
        .get_recipe(GetRecipeRequest { name: "tile".into() })
        .await
        .unwrap();
    assert_eq!(recipe.get_ref().name, "tile");
    let delete = || DeleteRecipeRequest { name: "tile".into() };
    assert_eq!(
        operator.delete_recipe(delete()).await.unwrap_err().code(),
        Code::PermissionDenied
    );

    // The binary sends LOUPE_TOKEN; without it the server refuses.
    let output = loupe_async(
        strings(&["recipe", "--server", &url, "list"]),
        vec![("LOUPE_TOKEN", OPERATOR)],
    )
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("tile "));
    let output = loupe_async(strings(&["recipe", "--server", &url, "list"]), vec![]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("Unauthenticated"));

    engineer.delete_recipe(delete()).await.unwrap();
    assert_eq!(list(&as_role(Some(ENGINEER))).await, Ok(0));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_key_that_does_not_match_its_certificate_stops_the_server() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let mut config = common::config(data.path());
    config.security = serve_security(&strings(&[
        "--tls-cert",
        &pki.arg("server.pem"),
        "--tls-key",
        &pki.arg("client-key.pem"),
    ]));
    let error = TestServer::start(config)
        .await
        .join(std::time::Duration::from_secs(60))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("TLS set-up (--tls-cert "), "{error}");
    assert!(
        error.contains("server.pem") && error.contains("client-key.pem"),
        "{error}"
    );
}

/// Refusals that happen before anything starts: exit code 2 and one line
/// naming the flag. `--onnxruntime` points nowhere, so a flag that is
/// wrongly let through fails at once (with another message) instead of
/// starting a server.
#[test]
fn serve_refuses_bad_security_flags_with_exit_code_2() {
    let pki = Pki::new();
    let not_pem = pki.path("tokens");
    std::fs::write(&not_pem, "operator short\n").unwrap();
    let refused = |flags: &[&str]| {
        let mut args = strings(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--onnxruntime",
            "/nonexistent/libonnxruntime.so",
        ]);
        args.extend(strings(flags));
        let output = loupe(&args, &[]);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(2), "{flags:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        stderr
    };
    let missing = pki.arg("missing.pem");
    let stderr = refused(&["--tls-cert", &missing, "--tls-key", &pki.arg("server-key.pem")]);
    assert!(
        stderr.starts_with("loupe: --tls-cert: cannot read ") && stderr.contains("missing.pem"),
        "{stderr}"
    );
    let stderr = refused(&[
        "--tls-cert",
        &pki.arg("server.pem"),
        "--tls-key",
        not_pem.to_str().unwrap(),
    ]);
    assert!(
        stderr.starts_with("loupe: --tls-key: ") && stderr.contains("not a PEM private key"),
        "{stderr}"
    );
    let stderr = refused(&["--tls-cert", &pki.arg("server.pem")]);
    assert!(stderr.contains("--tls-cert: needs --tls-key"), "{stderr}");
    let stderr = refused(&["--auth-tokens", not_pem.to_str().unwrap()]);
    assert!(
        stderr.contains("--auth-tokens: ") && stderr.contains("line 1: the token has 5 characters"),
        "{stderr}"
    );
    assert!(!stderr.contains("short"), "the token leaked: {stderr}");

    let mut args = strings(&[
        "serve",
        "--listen",
        "0.0.0.0:0",
        "--onnxruntime",
        "/nonexistent/libonnxruntime.so",
    ]);
    let output = loupe(&args, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--listen: 0.0.0.0:0 is not a loopback address"),
        "{stderr}"
    );
    assert!(
        stderr.contains("--tls-cert/--tls-key") && stderr.contains("--insecure"),
        "{stderr}"
    );
    // With --insecure the address is let through (and the missing runtime
    // stops it next).
    args.push("--insecure".to_owned());
    let output = loupe(&args, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("--listen"), "{stderr}");
}
