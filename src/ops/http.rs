//! `/healthz`, `/readyz`, `/metrics` and the grant keys
//! (`/.well-known/jwks.json`), served to anyone who reaches the listener;
//! and private pages (`/revocations`): who accessed what is itself
//! sensitive, so those answer loopback peers, and others only with a
//! verified bearer token carrying a role of `service.http_remote_roles`.
//! What the listener publishes beyond health comes from a [`Published`] the
//! app hands in, so this module needs no store.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use super::Health;
use super::console::{self, CONSOLE_ROLES, ConsoleData, ConsoleFilter, Lang, REVIEWER_ROLE, Viewer};

/// What the listener serves that lives below it (in the store).
pub trait Published: Send + Sync + 'static {
    /// The JWKS of the keys grants are signed with.
    fn jwks(&self) -> futures_util::future::BoxFuture<'_, Result<serde_json::Value, String>>;
    /// The JWKS of every key that signed audit checkpoints.
    fn audit_keys(&self) -> futures_util::future::BoxFuture<'_, Result<serde_json::Value, String>>;
    /// Grants revoked before they expired.
    fn revocations(&self) -> futures_util::future::BoxFuture<'_, Result<serde_json::Value, String>>;
    /// Requests pending review; only `holder`'s when given.
    fn reviews(&self, holder: Option<String>)
    -> futures_util::future::BoxFuture<'_, Result<serde_json::Value, String>>;
    /// What the console shows (see `console.rs`).
    fn console(&self, filter: ConsoleFilter) -> futures_util::future::BoxFuture<'_, Result<ConsoleData, String>>;
}

/// Who may read the private pages from another host.
pub struct RemoteAccess {
    /// Verifies bearer tokens; None: loopback only.
    pub verifier: Option<crate::auth::Verifier>,
    pub roles: Vec<String>,
}

impl RemoteAccess {
    pub fn loopback_only() -> Self {
        RemoteAccess { verifier: None, roles: Vec::new() }
    }

    /// None when `peer` may read private pages; else the status to answer.
    fn refusal(&self, peer: SocketAddr, headers: &axum::http::HeaderMap) -> Option<StatusCode> {
        if peer.ip().is_loopback() {
            return None;
        }
        if self.roles.is_empty() {
            return Some(StatusCode::FORBIDDEN);
        }
        match self.principal(headers) {
            Ok(p) if self.roles.iter().any(|r| p.roles.contains(r)) => None,
            Ok(_) => Some(StatusCode::FORBIDDEN),
            Err(status) => Some(status),
        }
    }

    /// Who is looking at the console: loopback sees everything; from
    /// elsewhere a verified token with an auditor's or operator's role
    /// does, a reviewer's sees their department's queue; else the status.
    fn viewer(&self, peer: SocketAddr, headers: &axum::http::HeaderMap) -> Result<Viewer, StatusCode> {
        if peer.ip().is_loopback() {
            return Ok(Viewer::Everything);
        }
        let p = self.principal(headers)?;
        if CONSOLE_ROLES.iter().any(|r| p.roles.contains(*r)) {
            Ok(Viewer::Everything)
        } else if p.roles.contains(REVIEWER_ROLE) && !p.organisation.is_empty() {
            Ok(Viewer::Department(p.organisation))
        } else {
            Err(StatusCode::FORBIDDEN)
        }
    }

    /// The bearer token's verified principal.
    fn principal(&self, headers: &axum::http::HeaderMap) -> Result<crate::auth::Principal, StatusCode> {
        let Some(verifier) = &self.verifier else { return Err(StatusCode::FORBIDDEN) };
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
        let token = bearer.ok_or(StatusCode::UNAUTHORIZED)?;
        verifier.verify(token.trim()).map_err(|_| StatusCode::UNAUTHORIZED)
    }
}

/// The console (private): everything for loopback, auditors and
/// operators; a reviewer's department's queue for a reviewer.
async fn console_page(
    State(s): State<Shared>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    axum::extract::Query(filter): axum::extract::Query<ConsoleFilter>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    let viewer = match s.remote.viewer(peer, &headers) {
        Ok(v) => v,
        Err(status) => {
            let why = "the console answers loopback peers, and others with a verified token of an auditor, operator or reviewer\n";
            return (status, why).into_response();
        }
    };
    let accept = headers.get(header::ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok());
    let lang = Lang::choose(filter.lang.as_deref(), accept);
    let html = match viewer {
        Viewer::Everything => {
            let filter = filter.normalised();
            s.published.console(filter.clone()).await.map(|data| console::render(lang, &s.health, &data, &filter))
        }
        Viewer::Department(org) => {
            let queue = s.published.reviews(Some(org.clone())).await;
            queue.map(|q| console::render_for_department(lang, &s.health, &org, &q))
        }
    };
    match html {
        Ok(html) => (
            [
                (header::CACHE_CONTROL, "no-store"),
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
                ),
            ],
            axum::response::Html(html),
        )
            .into_response(),
        Err(error) => {
            tracing::warn!(message = "console unavailable", %error);
            (StatusCode::SERVICE_UNAVAILABLE, "console unavailable\n").into_response()
        }
    }
}

#[derive(Clone)]
struct Shared {
    health: Arc<Health>,
    published: Arc<dyn Published>,
    remote: Arc<RemoteAccess>,
}

impl axum::extract::FromRef<Shared> for Arc<Health> {
    fn from_ref(s: &Shared) -> Arc<Health> {
        s.health.clone()
    }
}

/// The revocation list (private).
async fn revocations(
    State(s): State<Shared>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    if let Some(status) = s.remote.refusal(peer, &headers) {
        return (status, "the revocation list answers loopback peers and tokens with an allowed role\n")
            .into_response();
    }
    match s.published.revocations().await {
        Ok(list) => ([(header::CACHE_CONTROL, "no-store")], axum::Json(list)).into_response(),
        Err(error) => {
            tracing::warn!(message = "revocation list unavailable", %error);
            (StatusCode::SERVICE_UNAVAILABLE, "revocation list unavailable\n").into_response()
        }
    }
}

/// The review queue (private): `?holder=CODE` for one department's.
async fn reviews(
    State(s): State<Shared>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    if let Some(status) = s.remote.refusal(peer, &headers) {
        return (status, "the review queue answers loopback peers and tokens with an allowed role\n").into_response();
    }
    // A reviewer (not an auditor or operator) sees their department's only.
    let holder = match s.remote.viewer(peer, &headers) {
        Ok(Viewer::Department(org)) => Some(org),
        _ => query.get("holder").cloned(),
    };
    match s.published.reviews(holder).await {
        Ok(queue) => ([(header::CACHE_CONTROL, "no-store")], axum::Json(queue)).into_response(),
        Err(error) => {
            tracing::warn!(message = "review queue unavailable", %error);
            (StatusCode::SERVICE_UNAVAILABLE, "review queue unavailable\n").into_response()
        }
    }
}

/// The grant keys; data hosts cache them for five minutes, so a key
/// announced ahead (`grant.next_keys`) should be for longer than that.
async fn jwks(State(s): State<Shared>) -> axum::response::Response {
    public_key_set(s.published.jwks().await, "jwks")
}

async fn audit_keys(State(s): State<Shared>) -> axum::response::Response {
    public_key_set(s.published.audit_keys().await, "audit keys")
}

/// A public key set, cacheable for five minutes.
fn public_key_set(set: Result<serde_json::Value, String>, what: &str) -> axum::response::Response {
    match set {
        Ok(set) => ([(header::CACHE_CONTROL, "public, max-age=300")], axum::Json(set)).into_response(),
        Err(error) => {
            tracing::warn!(message = "public keys unavailable", keys = what, %error);
            (StatusCode::SERVICE_UNAVAILABLE, format!("{what} unavailable\n")).into_response()
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
        remote: RemoteAccess,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let router = Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .route("/.well-known/jwks.json", get(jwks))
            .route("/.well-known/audit-keys.json", get(audit_keys))
            .route("/revocations", get(revocations))
            .route("/reviews", get(reviews))
            .route("/console", get(console_page))
            .with_state(Shared { health, published, remote: Arc::new(remote) });
        axum::serve(self.listener, router.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Claims, SigningKey, Verifier};

    #[test]
    fn private_pages_answer_loopback_and_remote_peers_only_with_a_token_of_an_allowed_role() {
        let (loopback, remote): (SocketAddr, SocketAddr) =
            ("127.0.0.1:5000".parse().unwrap(), "10.1.2.3:5000".parse().unwrap());
        let none = axum::http::HeaderMap::new();
        assert_eq!(RemoteAccess::loopback_only().refusal(loopback, &none), None);
        assert_eq!(RemoteAccess::loopback_only().refusal(remote, &none), Some(StatusCode::FORBIDDEN));

        let idp = SigningKey::generate("idp");
        let verifier = Verifier::for_ed25519(&idp.public(), "iss", "tollgate");
        let access = RemoteAccess { verifier: Some(verifier), roles: vec!["data_host".into()] };
        let bearer = |roles: &[&str]| {
            let token = idp.sign(&Claims::new("11610100MB00014076", "iss", "tollgate", 600).with_roles(roles));
            let mut h = axum::http::HeaderMap::new();
            h.insert(header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
            h
        };
        assert_eq!(access.refusal(remote, &none), Some(StatusCode::UNAUTHORIZED));
        assert_eq!(access.refusal(remote, &bearer(&["data_user"])), Some(StatusCode::FORBIDDEN));
        assert_eq!(access.refusal(remote, &bearer(&["data_host"])), None);
        let mut forged = axum::http::HeaderMap::new();
        forged.insert(header::AUTHORIZATION, "Bearer a.b.c".parse().unwrap());
        assert_eq!(access.refusal(remote, &forged), Some(StatusCode::UNAUTHORIZED));
    }
}
