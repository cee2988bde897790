//! Bearer-token access control, in one tower layer around every service of
//! the server, so no RPC can be added without passing through it.
//!
//! The method path decides the role a call needs, deny by default: health
//! and reflection are open; the calls a line operator makes (inspecting,
//! reading recipes and results) need `operator`; every other path, including a Loupe
//! RPC added later and not listed here, needs `engineer`. A call without a
//! known token gets UNAUTHENTICATED, a token of too low a role
//! PERMISSION_DENIED, both with the role the call needs.

use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::body::Body;
use tonic::codegen::BoxFuture;
use tonic::codegen::http::{HeaderMap, Request, Response};
use tower::{Layer, Service};

use crate::config::{Role, Tokens};

/// Services anyone may call without a token: a load balancer or a line's
/// PLC must see health, and reflection reveals only the public API.
pub const OPEN_SERVICES: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// The methods (`service/Method`) an `operator` token may call; the rest
/// need `engineer`.
pub const OPERATOR_METHODS: [&str; 8] = [
    "loupe.v1.Inspection/Inspect",
    "loupe.v1.Inspection/InspectStream",
    "loupe.v1.Recipes/GetRecipe",
    "loupe.v1.Recipes/ListRecipes",
    // Reads a recipe, as GetRecipe does, whole.
    "loupe.v1.Recipes/ExportRecipe",
    "loupe.v1.Results/ListResults",
    "loupe.v1.Results/GetResult",
    "loupe.v1.Results/WatchResults",
];

/// What a call to a method path needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Nothing: open to all.
    Nothing,
    /// A token of at least this role.
    Role(Role),
}

/// What a call to `path` (`/package.Service/Method`) needs.
pub fn needs(path: &str) -> Needs {
    let method = path.strip_prefix('/').unwrap_or(path);
    // Only a well-formed `/service/Method` may be open or an operator's:
    // anything odd falls through to the strictest rule.
    if let Some((service, name)) = method.split_once('/')
        && !name.is_empty()
        && !name.contains('/')
    {
        if OPEN_SERVICES.contains(&service) {
            return Needs::Nothing;
        }
        if OPERATOR_METHODS.contains(&method) {
            return Needs::Role(Role::Operator);
        }
    }
    Needs::Role(Role::Engineer)
}

/// The bearer token of `authorization: Bearer TOKEN`, if present.
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get("authorization")?.as_bytes();
    // The scheme is case-insensitive (RFC 6750 via RFC 9110).
    let (scheme, token) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"Bearer ").then_some(token)
}

/// Lets a call to `path` with `headers` through, or says why not.
pub fn check(tokens: &Tokens, path: &str, headers: &HeaderMap) -> Result<(), Status> {
    let Needs::Role(needed) = needs(path) else {
        return Ok(());
    };
    let method = path.strip_prefix('/').unwrap_or(path);
    let Some(token) = bearer(headers) else {
        return Err(Status::unauthenticated(format!(
            "{method} needs a bearer token of role {needed}: send `authorization: Bearer TOKEN` metadata"
        )));
    };
    match tokens.role_of(token) {
        None => Err(Status::unauthenticated(format!(
            "unknown bearer token; {method} needs a token of role {needed}"
        ))),
        Some(role) if role.allows(needed) => Ok(()),
        Some(role) => Err(Status::permission_denied(format!(
            "{method} needs role {needed}; this token has role {role}"
        ))),
    }
}

/// Checks every call's token (see the module docs); without tokens it lets
/// every call through.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    tokens: Option<Arc<Tokens>>,
}

impl AuthLayer {
    /// Checks calls against `tokens`, or not at all with `None`.
    pub fn new(tokens: Option<Arc<Tokens>>) -> Self {
        Self { tokens }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorize {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around the server's routes.
#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
    tokens: Option<Arc<Tokens>>,
}

impl<S> Service<Request<Body>> for Authorize<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if let Some(tokens) = &self.tokens
            && let Err(status) = check(tokens, request.uri().path(), request.headers())
        {
            tracing::info!(method = %request.uri().path(), code = %super::status::code_name(status.code()), "call refused");
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPERATOR: &str = "operator-token-0123456789";
    const ENGINEER: &str = "engineer-token-0123456789";

    fn tokens() -> Tokens {
        Tokens::parse(&format!("operator {OPERATOR}\nengineer {ENGINEER}\n")).unwrap()
    }

    fn headers(authorization: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert("authorization", value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn the_path_decides_the_role_and_unknown_paths_need_an_engineer() {
        assert_eq!(needs("/grpc.health.v1.Health/Check"), Needs::Nothing);
        assert_eq!(needs("/grpc.health.v1.Health/Watch"), Needs::Nothing);
        assert_eq!(
            needs("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Needs::Nothing
        );
        for method in OPERATOR_METHODS {
            assert_eq!(
                needs(&format!("/{method}")),
                Needs::Role(Role::Operator),
                "{method}"
            );
        }
        for path in [
            "/loupe.v1.Recipes/CreateRecipe",
            "/loupe.v1.Recipes/DeleteRecipe",
            "/loupe.v1.Recipes/SomethingNew",
            "/loupe.v2.Inspection/Inspect",
            "/grpc.health.v1.Health/",
            "/grpc.health.v1.Health/Check/../../loupe.v1.Recipes/DeleteRecipe",
            "/grpc.health.v1.Health",
            "/",
            "",
        ] {
            assert_eq!(needs(path), Needs::Role(Role::Engineer), "{path}");
        }
    }

    /// The list of operator methods must name real RPCs: a renamed RPC
    /// would otherwise silently become engineer-only.
    #[test]
    fn every_operator_method_is_an_rpc_of_the_api() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET).unwrap();
        let rpcs: Vec<String> =
            set.file
                .iter()
                .flat_map(|file| {
                    file.service.iter().flat_map(move |service| {
                        service.method.iter().map(move |method| {
                            format!("{}.{}/{}", file.package(), service.name(), method.name())
                        })
                    })
                })
                .collect();
        assert!(rpcs.len() >= 8, "{rpcs:?}");
        for method in OPERATOR_METHODS {
            assert!(
                rpcs.iter().any(|rpc| rpc == method),
                "{method} is not an RPC: {rpcs:?}"
            );
        }
    }

    #[test]
    fn tokens_are_checked_against_the_role_the_call_needs() {
        let tokens = tokens();
        let list = "/loupe.v1.Recipes/ListRecipes";
        let create = "/loupe.v1.Recipes/CreateRecipe";

        let error = check(&tokens, list, &headers(None)).unwrap_err();
        assert_eq!(error.code(), tonic::Code::Unauthenticated);
        assert!(error.message().contains("role operator"), "{}", error.message());
        let error = check(&tokens, list, &headers(Some("Bearer not-a-known-token-at-all"))).unwrap_err();
        assert_eq!(error.code(), tonic::Code::Unauthenticated);
        let error = check(&tokens, list, &headers(Some(OPERATOR))).unwrap_err();
        assert_eq!(error.code(), tonic::Code::Unauthenticated, "no scheme");

        let operator = headers(Some(&format!("Bearer {OPERATOR}")));
        assert!(check(&tokens, list, &operator).is_ok());
        let error = check(&tokens, create, &operator).unwrap_err();
        assert_eq!(error.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            error.message(),
            "loupe.v1.Recipes/CreateRecipe needs role engineer; this token has role operator"
        );
        let engineer = headers(Some(&format!("bearer {ENGINEER}")));
        assert!(check(&tokens, create, &engineer).is_ok());
        assert!(check(&tokens, list, &engineer).is_ok());
        assert!(check(&tokens, "/grpc.health.v1.Health/Check", &headers(None)).is_ok());
    }
}
