//! Wiring: `App::build` resolves configuration into running parts (Kafka,
//! database, policy, keys); `run_until_stopped` runs the decision loop until
//! the shutdown token is cancelled.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::auth::Verifier;
use crate::broker::DecisionService;
use crate::broker::checkpoint::Checkpointer;
use crate::broker::grant_keys::GrantKeys;
use crate::broker::outbox::Outbox;
use crate::broker::recheck::Recheck;
use crate::broker::reload::Reloader;
use crate::config::{DeliveryMode, Settings};
use crate::kafka::{self, Cluster, Limits, LoopClients};
use crate::ops::{Health, HttpServer, Telemetry};
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Kafka(#[from] kafka::KafkaError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("policy in {dir}: {source}")]
    Policy { dir: String, source: crate::broker::reload::BuildError },
    #[error(transparent)]
    Keys(#[from] crate::auth::KeyError),
    #[error(transparent)]
    Telemetry(#[from] crate::ops::TelemetryError),
    #[error("http endpoint {addr}: {source}")]
    Http { addr: String, source: std::io::Error },
}

pub struct App {
    settings: Settings,
    /// Kept alive for as long as the app runs when no cluster is configured.
    cluster: Cluster,
    service: Arc<DecisionService>,
    clients: LoopClients,
    reloader: Reloader,
    health: Arc<Health>,
    http: Option<HttpServer>,
    checkpointer: Checkpointer,
    /// OTLP exporters, when configured; flushed at a clean stop.
    telemetry: Option<Telemetry>,
}

impl App {
    pub async fn build(settings: Settings) -> Result<App, AppError> {
        Self::build_with_verifier(settings, None).await
    }

    /// As [`App::build`], with a ready-made token verifier instead of the
    /// configured key files (the demo acts as its own identity provider).
    pub async fn build_with_verifier(settings: Settings, verifier: Option<Verifier>) -> Result<App, AppError> {
        let cluster = connect_kafka(&settings).await?;
        let bootstrap = cluster.bootstrap_servers();
        let store = Store::connect(&settings.database.url, settings.database.max_connections).await?;
        let policy = Arc::new(ArcSwap::from_pointee(load_policy(&settings.policy.dir).await?));
        let verifier = match verifier {
            Some(v) => v,
            None => Verifier::from_settings(&settings.auth)?,
        };
        if verifier.key_count() == 0 {
            warn!(
                message = "no token verification keys configured (auth.public_keys / auth.jwks): every request will be denied with auth.unknown_key or auth.algorithm_not_allowed"
            );
        }
        let health = Health::new();
        let telemetry = Telemetry::start(&settings.telemetry, &settings.service.instance_id, &health)?;
        let http = match settings.service.http_listen.as_str() {
            "" => None,
            addr => {
                Some(HttpServer::bind(addr).await.map_err(|source| AppError::Http { addr: addr.to_owned(), source })?)
            }
        };
        let clients = loop_clients(&settings, bootstrap, health.clone())?;
        let client = kafka::Client::new(&settings.kafka, bootstrap)?;
        let outbox = Arc::new(Outbox::new(store.clone(), client, settings.topics.clone()));
        let instance = &settings.service.instance_id;
        let recheck = Recheck::new(store.clone(), outbox.clone(), instance, health.clone());
        let every = (settings.grant.recheck_secs > 0).then(|| Duration::from_secs(settings.grant.recheck_secs));
        let reloader = Reloader::new(
            &settings.policy,
            instance,
            policy.clone(),
            store.clone(),
            outbox,
            health.clone(),
            (recheck, every),
        );
        let checkpoints = kafka::Client::new(&settings.kafka, bootstrap)?;
        let checkpointer =
            Checkpointer::new(&settings.audit, instance, store.clone(), checkpoints, &settings.topics.checkpoints)?;
        checkpointer.record_key().await?;
        let grant_keys = Arc::new(GrantKeys::from_settings(&settings.grant, instance, store.clone())?);
        let service = Arc::new(DecisionService::new(&settings, policy, verifier, store, grant_keys, health.clone()));
        Ok(App { settings, cluster, service, clients, reloader, health, http, checkpointer, telemetry })
    }

    pub fn bootstrap_servers(&self) -> &str {
        self.cluster.bootstrap_servers()
    }

    pub fn is_embedded(&self) -> bool {
        self.cluster.is_embedded()
    }

    /// Where `/healthz`, `/readyz` and `/metrics` are served, when on.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http.as_ref().and_then(|h| h.local_addr().ok())
    }

    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    pub fn store(&self) -> &Store {
        self.service.store()
    }

    pub fn policy_version(&self) -> String {
        self.service.policy_version()
    }

    /// The public key data hosts use to verify new grants, as a JWK.
    pub fn grant_jwk(&self) -> serde_json::Value {
        self.service.grant_keys().active().public().to_jwk()
    }

    /// Runs until `shutdown` is cancelled, then stops within the grace
    /// period: in-flight outputs, the final checkpoint and the exporters'
    /// last requests get what is left of it after the signal, and whatever
    /// has not finished by then is left to the next start (as after a
    /// crash: inputs not acknowledged are re-delivered, stored events wait
    /// in the outbox). `Health::step` names the step under way.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), AppError> {
        let App { settings, cluster, service, clients, reloader, health, http, checkpointer, telemetry } = self;
        info!(message = "tollgate is consuming", bootstrap = %cluster.bootstrap_servers(), topics = ?settings.topics.inputs(), group = %settings.kafka.group_id,
              instance = %settings.service.instance_id);
        let grace = Duration::from_secs(settings.service.shutdown_grace_secs);
        let signalled = shutdown.clone();
        let stop_by = deadline_after_signal(&shutdown, grace);
        // The reloader stops with the service, also when the loop fails.
        let reload_stop = shutdown.child_token();
        let watch = reloader.watch_files();
        health.set_step("announcing the policy in force");
        // Stored before it is published: a stop meanwhile leaves the event
        // in the outbox for the next start, so it need not hold the stop up.
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {}
            _ = reloader.announce_start() => {}
        }
        let background = vec![
            tokio::spawn(reloader.run(watch, reload_stop.clone())),
            tokio::spawn(checkpointer.run(reload_stop.clone())),
        ];
        let serving = http.map(|server| serve_http(server, &service, &health, &settings, reload_stop.clone()));
        health.set_step("deciding");
        let result =
            kafka::run(clients, service.clone(), shutdown, grace, Limits::from(&settings.service), &health).await;
        reload_stop.cancel();
        let stop_by = if signalled.is_cancelled() {
            stop_by.await.unwrap_or_else(|_| tokio::time::Instant::now() + grace)
        } else {
            stop_by.abort();
            tokio::time::Instant::now() + grace
        };
        health.set_step("final checkpoint and the background tasks' last round");
        let finishing = async {
            service.grant_keys().release(chrono::Utc::now().timestamp()).await;
            for task in background.into_iter().chain(serving) {
                let _ = task.await;
            }
        };
        if tokio::time::timeout_at(stop_by.max(tokio::time::Instant::now() + LAST_STEPS), finishing).await.is_err() {
            warn!(
                message = "the grace period ended before the final checkpoint and queued events were done; the next start finishes them"
            );
        }
        if let Some(telemetry) = telemetry {
            health.set_step("exporting the last telemetry");
            // Waits for the exporters' last requests (their own threads).
            let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
        }
        // The pool closes with its last handle; a caller may still hold one.
        drop(cluster);
        health.set_step("stopped");
        info!(message = "tollgate stopped");
        Ok(result?)
    }
}

/// What the steps after the decision loop get even when draining it used
/// the whole grace period: enough for a final checkpoint on a live broker.
const LAST_STEPS: Duration = Duration::from_secs(2);

/// When the stop must be complete: `grace` after `shutdown` is cancelled.
fn deadline_after_signal(
    shutdown: &CancellationToken,
    grace: Duration,
) -> tokio::task::JoinHandle<tokio::time::Instant> {
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        tokio::time::Instant::now() + grace
    })
}

/// `/healthz`, `/readyz`, `/metrics`, the console and the public keys,
/// until `stop`.
fn serve_http(
    server: HttpServer,
    service: &Arc<DecisionService>,
    health: &Arc<Health>,
    settings: &Settings,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    if let Ok(addr) = server.local_addr() {
        info!(message = "serving /healthz, /readyz, /metrics and /console", %addr);
    }
    let health = health.clone();
    let published: Arc<dyn crate::ops::Published> = Arc::new(crate::broker::grant_keys::ForDataHosts {
        keys: service.grant_keys().clone(),
        store: service.store().clone(),
        policy: service.policy_handle(),
    });
    let remote = remote_access(settings);
    tokio::spawn(async move {
        if let Err(error) = server.serve(health, published, remote, stop).await {
            warn!(message = "http endpoint failed", %error);
        }
    })
}

/// The configured cluster, or an embedded one when none is; topics created
/// when `kafka.create_topics` says so.
async fn connect_kafka(settings: &Settings) -> Result<Cluster, AppError> {
    let cluster = Cluster::from_settings(&settings.kafka)?;
    if cluster.is_embedded() {
        warn!(
            message = "NO KAFKA CONFIGURED: using the EMBEDDED in-process Kafka; its data is lost when tollgate stops. Set kafka.bootstrap_servers (TOLLGATE_KAFKA__BOOTSTRAP_SERVERS) for a real cluster.",
            bootstrap_servers = %cluster.bootstrap_servers()
        );
    }
    let wanted = settings.topics.with_retention(&settings.kafka.retention);
    if settings.kafka.create_topics {
        cluster.create_topics(&settings.kafka, &wanted).await?;
    } else if !cluster.is_embedded() {
        // Subscribing to a topic that does not exist fails late and
        // obscurely (no partitions, or the whole group stalls): say so now.
        let missing =
            kafka::missing_topics(&settings.kafka, cluster.bootstrap_servers(), &settings.topics.all()).await?;
        if !missing.is_empty() {
            return Err(kafka::KafkaError::MissingTopics(missing).into());
        }
    }
    if !cluster.is_embedded() {
        check_retention(settings, cluster.bootstrap_servers(), &wanted).await?;
    }
    Ok(cluster)
}

/// Topics that keep messages for less than the law requires (created by
/// someone else, or changed since): refused with `kafka.enforce_retention`
/// before anything starts; otherwise reported loudly by a check in the
/// background, so a broker slow to describe configs (or without that API)
/// does not hold up the start.
async fn check_retention(settings: &Settings, bootstrap: &str, wanted: &[(&str, i64)]) -> Result<(), AppError> {
    if settings.kafka.enforce_retention {
        let short = kafka::retention_shortfalls(&settings.kafka, bootstrap, wanted).await?;
        return if short.is_empty() { Ok(()) } else { Err(kafka::KafkaError::ShortRetention(short).into()) };
    }
    let kafka_settings = settings.kafka.clone();
    let bootstrap = bootstrap.to_owned();
    let wanted: Vec<(String, i64)> = wanted.iter().map(|(t, ms)| ((*t).to_owned(), *ms)).collect();
    tokio::spawn(async move {
        let wanted: Vec<(&str, i64)> = wanted.iter().map(|(t, ms)| (t.as_str(), *ms)).collect();
        match kafka::retention_shortfalls(&kafka_settings, &bootstrap, &wanted).await {
            Ok(short) => {
                for s in &short {
                    tracing::error!(message = "TOPIC RETENTION SHORTER THAN REQUIRED: records will be deleted before the law allows", shortfall = %s);
                }
            }
            Err(error) => warn!(message = "could not read the topics' retention; it is not checked", %error),
        }
    });
    Ok(())
}

/// The same checks as a reload, tests included: nothing unvalidated is ever
/// in force, at start-up either.
async fn load_policy(dir: &std::path::Path) -> Result<crate::policy::Policy, AppError> {
    let policy = crate::broker::reload::build_apart(dir)
        .await
        .map_err(|source| AppError::Policy { dir: dir.display().to_string(), source })?;
    info!(message = "policy loaded", version = %policy.version(), rules = policy.rule_count(),
          datasets = policy.catalogue().datasets.len(), scenarios = policy.catalogue().scenarios.len());
    Ok(policy)
}

/// Who may read the listener's private pages from another host; loopback
/// only when no role is allowed or the keys do not load.
/// Private pages from other hosts: `http_remote_roles` for the JSON pages;
/// the console's own roles (auditor, operator, reviewer) for `/console`.
/// Both need the token keys.
fn remote_access(settings: &Settings) -> crate::ops::RemoteAccess {
    let roles = settings.service.http_remote_roles.clone();
    match Verifier::from_settings(&settings.auth) {
        Ok(verifier) => crate::ops::RemoteAccess { verifier: Some(verifier), roles },
        Err(error) => {
            warn!(message = "private pages and the console answer loopback only: the token keys do not load", %error);
            crate::ops::RemoteAccess::loopback_only()
        }
    }
}

/// The decision loop's consumer and producer; transactional when
/// `kafka.delivery` says so.
fn loop_clients(settings: &Settings, bootstrap: &str, health: Arc<Health>) -> Result<LoopClients, AppError> {
    let transactional_id = (settings.kafka.delivery == DeliveryMode::Transactional).then(|| {
        settings.kafka.transactional_id.clone().unwrap_or_else(|| format!("tollgate-{}", settings.service.instance_id))
    });
    let (kafka, topics, instance) = (&settings.kafka, settings.topics.inputs(), &settings.service.instance_id);
    Ok(LoopClients::new(kafka, bootstrap, &topics, health, transactional_id.as_deref(), instance)?)
}
