//! The web console on `--console-listen`: a read-only page for the people
//! on the line, served by the same binary with its assets compiled in (no
//! CDN, works offline). It shows the recipes (settings, threshold and where
//! it comes from, drift state, pass and fail counts since the start), a live
//! feed of verdicts over server-sent events, a result page (frame, overlay,
//! regions, score against threshold) and a per-recipe chart of scores over
//! time with the threshold and the drift band.
//!
//! A transport like the gRPC one: it reads the core ([`Server`]) and the
//! audit trail ([`Audit`]) and converts, nothing else. The counts and the
//! feed come from a subscriber of the core's events ([`feed`]), never from
//! the inspection path. Results, their pictures and the chart's scores come
//! from the audit trail; with `--audit off` the console still shows the
//! recipes and the live feed, without result pages.

mod api;
mod assets;
mod feed;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::audit::Audit;
use crate::server::{Server, Subscription};

pub use feed::{FEED_CAPACITY, FeedItem, MAX_LIVE_PAGES};

/// Why the console could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The listen address could not be bound.
    #[error("cannot serve the console on {addr}: {source}")]
    Bind {
        /// The address of `--console-listen`.
        addr: SocketAddr,
        /// What the system said.
        source: std::io::Error,
    },
}

/// Binds `addr` for the console.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ConsoleError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ConsoleError::Bind { addr, source })
}

/// What the console's pages read; cloning shares it.
#[derive(Debug, Clone)]
struct Console {
    server: Arc<Server>,
    audit: Option<Audit>,
    feed: feed::Feed,
}

/// Starts the console on `listener` over `server` and, when on, the audit
/// trail: the subscriber that keeps the counts and the live feed (on
/// `subscription`, taken before the core started) and the HTTP listener.
/// Both tasks run until aborted.
pub fn spawn(
    server: Arc<Server>,
    audit: Option<Audit>,
    subscription: Subscription,
    listener: TcpListener,
) -> [JoinHandle<()>; 2] {
    let (feed, follower) = feed::start(subscription, audit.as_ref());
    let console = Console { server, audit, feed };
    let listening = tokio::spawn(async move {
        if let Err(error) = serve(console, listener, std::future::pending()).await {
            tracing::error!(%error, "the console listener stopped");
        }
    });
    [follower, listening]
}

/// Serves the console on `listener` until `stop` completes.
async fn serve(
    console: Console,
    listener: TcpListener,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(console))
        .with_graceful_shutdown(stop)
        .await
}

fn router(console: Console) -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route("/", get(assets::page))
        .route("/recipes/{name}", get(assets::page))
        .route("/results/{id}", get(assets::page))
        .route("/console.js", get(assets::script))
        .route("/console.css", get(assets::style))
        .route("/api/recipes", get(api::recipes))
        .route("/api/recipes/{name}", get(api::recipe))
        .route("/api/results", get(api::results))
        .route("/api/results/{id}", get(api::result))
        .route("/api/results/{id}/frame.png", get(api::frame))
        .route("/api/results/{id}/overlay.png", get(api::overlay))
        .route("/api/feed", get(feed::events))
        .fallback(api::not_found)
        .with_state(console)
}
