//! The client end of the transport: `loupe recipe`, `loupe inspect` and
//! `loupe bench --server` all connect through [`connect`]. TLS follows the
//! address's scheme (`https://`) and the client's TLS files; the bearer
//! token, if any, rides on every call.

use std::net::IpAddr;

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::{ClientConfig, Token};

/// A channel to a Loupe server that sends the bearer token on every call.
pub type Connection = InterceptedService<Channel, Bearer>;

/// Adds `authorization: Bearer TOKEN` to every call (or nothing, without a
/// token).
#[derive(Clone)]
pub struct Bearer(Option<AsciiMetadataValue>);

impl Bearer {
    /// Sends `token`, if there is one.
    pub fn new(token: Option<&Token>) -> Self {
        Self(token.map(|token| {
            let mut value = MetadataValue::try_from(format!("Bearer {}", token.as_str())).expect(
                "the token was checked for visible ASCII when the flags were resolved; this is a bug",
            );
            // Never put it in HPACK's tables, where a later request could
            // probe for it through the compressed sizes.
            value.set_sensitive(true);
            value
        }))
    }
}

// Error reports and logs must never carry the token.
impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Bearer(..)"
        } else {
            "Bearer(none)"
        })
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Why a client could not connect.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The address cannot be used.
    #[error("bad server address {server:?}: {reason}")]
    Address {
        /// The address given.
        server: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS files were refused when the TLS client was set up.
    #[error("TLS set-up for {server}: {reason}")]
    Tls {
        /// The address given.
        server: String,
        /// What the TLS library said.
        reason: String,
    },
    /// The server could not be reached, or the TLS handshake failed.
    #[error("cannot reach the Loupe server at {server}: {reason}")]
    Unreachable {
        /// The address given.
        server: String,
        /// The cause, with its causes.
        reason: String,
    },
}

/// A refused or failed call on one line: its code and message and, for a
/// failure below gRPC (a TLS alert, a closed connection), the causes, which
/// tonic's message alone ("transport error") leaves out.
pub fn describe(status: &tonic::Status) -> String {
    let head = format!("{:?}: {}", status.code(), status.message());
    super::with_causes(vec![head], std::error::Error::source(status))
}

/// The endpoint for `config`: TLS for an `https://` address, trusting the
/// given CA (or the system's roots) and presenting the client certificate.
pub fn endpoint(config: &ClientConfig) -> Result<Endpoint, ConnectError> {
    let server = &config.server;
    let endpoint = Endpoint::from_shared(server.clone()).map_err(|error| ConnectError::Address {
        server: server.clone(),
        reason: super::causes(&error),
    })?;
    let Some(tls) = &config.tls else {
        if config.token.is_some() && !is_local(&endpoint) {
            tracing::warn!(%server, "sending the bearer token in clear text; use an https:// address");
        }
        return Ok(endpoint);
    };
    let mut client_tls = ClientTlsConfig::new();
    client_tls = match &tls.ca {
        Some(ca) => client_tls.ca_certificate(Certificate::from_pem(&ca.pem)),
        None => client_tls.with_native_roots(),
    };
    if let Some(identity) = &tls.identity {
        client_tls = client_tls.identity(Identity::from_pem(&identity.cert.pem, &identity.key.pem));
    }
    endpoint
        .tls_config(client_tls)
        .map_err(|error| ConnectError::Tls {
            server: server.clone(),
            reason: super::causes(&error),
        })
}

fn is_local(endpoint: &Endpoint) -> bool {
    match endpoint.uri().host() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// `channel` with `token` sent on every call.
pub fn authorized(channel: Channel, token: Option<&Token>) -> Connection {
    InterceptedService::new(channel, Bearer::new(token))
}

/// Connects to the server `config` names.
pub async fn connect(config: &ClientConfig) -> Result<Connection, ConnectError> {
    let channel = endpoint(config)?
        .connect()
        .await
        .map_err(|error| ConnectError::Unreachable {
            server: config.server.clone(),
            reason: super::causes(&error),
        })?;
    Ok(authorized(channel, config.token.as_ref()))
}
