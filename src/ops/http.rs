//! `/healthz`, `/readyz`, `/metrics` and the grant keys
//! (`/.well-known/jwks.json`) over HTTP: the public part of the listener,
//! served on any interface. What the listener publishes beyond health comes
//! from a [`Published`] the app hands in, so this module needs no store.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use super::Health;

/// What the listener serves that lives below it (in the store).
pub trait Published: Send + Sync + 'static {
    /// The JWKS of the keys grants are signed with.
    fn jwks(&self) -> futures_util::future::BoxFuture<'_, Result<serde_json::Value, String>>;
}

#[derive(Clone)]
struct Shared {
    health: Arc<Health>,
    published: Arc<dyn Published>,
}

impl axum::extract::FromRef<Shared> for Arc<Health> {
    fn from_ref(s: &Shared) -> Arc<Health> {
        s.health.clone()
    }
}

/// The grant keys; data hosts cache them for five minutes, so a key
/// announced ahead (`grant.next_keys`) should be for longer than that.
async fn jwks(State(s): State<Shared>) -> axum::response::Response {
    match s.published.jwks().await {
        Ok(set) => ([(header::CACHE_CONTROL, "public, max-age=300")], axum::Json(set)).into_response(),
        Err(error) => {
            tracing::warn!(message = "jwks unavailable", %error);
            (StatusCode::SERVICE_UNAVAILABLE, "jwks unavailable\n").into_response()
        }
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let r = health.readiness();
    let status = if r.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(r))
}

async fn metrics(State(health): State<Arc<Health>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], health.metrics())
}

/// The bound listener, so a port conflict fails start-up rather than the
/// first probe.
pub struct HttpServer {
    listener: tokio::net::TcpListener,
}

impl HttpServer {
    pub async fn bind(addr: &str) -> std::io::Result<HttpServer> {
        Ok(HttpServer { listener: tokio::net::TcpListener::bind(addr).await? })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub async fn serve(
        self,
        health: Arc<Health>,
        published: Arc<dyn Published>,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let router = Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .route("/.well-known/jwks.json", get(jwks))
            .with_state(Shared { health, published });
        axum::serve(self.listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await
    }
}
