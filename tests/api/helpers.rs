//! `spawn_app()`: a running tollgate on fresh topics and a fresh database.
//!
//! By default: the embedded Kafka (one per test) and a SQLite file. Pointed
//! at real services by environment:
//!   TEST_KAFKA_BOOTSTRAP=127.0.0.1:9092       a Kafka-protocol broker
//!   TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432   a PostgreSQL server
//!                                                (a database per test is created)

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::Connection;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tollgate::app::{App, AppError};
use tollgate::auth::{Claims, SigningKey};
use tollgate::config::{Settings, Topics};
use tollgate::contract::{AuditEvent, Decision, REQUEST_SCHEMA};
use tollgate::kafka::embedded::EmbeddedKafka;
use tollgate::kafka::{Client, ConsumedMessage, Reader};

pub const ISSUER: &str = "https://idp.test.tollgate";
pub const TRAVEL: &str = "91610131MA6TG1L5X1";
pub const RESCUE: &str = "91610000MA6W2QK30C";
pub const MEDICINE: &str = "91110108MA01RX7C4G";

/// How long a test waits for one output before it calls it missing.
pub const WAIT: Duration = Duration::from_secs(30);

pub struct Infra {
    pub bootstrap: String,
    pub database_url: String,
    pub topics: Topics,
    pub group: String,
    pub dir: tempfile::TempDir,
    pub idp: SigningKey,
    pub idp_public: PathBuf,
    /// Signs grants; its public half verifies them.
    pub grant_key: SigningKey,
    pub grant_key_path: PathBuf,
}

pub struct TestApp {
    pub infra: Infra,
    pub client: Client,
    pub settings: Settings,
    /// The instance's readiness and metrics, as `/readyz` and `/metrics` serve them.
    pub health: std::sync::Arc<tollgate::ops::Health>,
    /// Where the instance's HTTP listener is.
    pub http: std::net::SocketAddr,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<Result<(), AppError>>>,
    /// A test that does not stop its app still lets it wind down.
    _stop_on_drop: tokio_util::sync::DropGuard,
}

/// Whether python3 has these modules (`"yaml, jsonschema"`): the checks that
/// use them skip, saying so, on a machine without them (CI installs them).
pub fn python_has(modules: &str) -> bool {
    std::process::Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A documentation file of the repository (`README.md`, `docs/contract.md`).
pub fn doc(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// The Markdown files users read: the README and `docs/`.
pub fn doc_files() -> Vec<PathBuf> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("docs")).unwrap().flatten().map(|e| e.path()).collect();
    files.retain(|p| p.extension().is_some_and(|e| e == "md"));
    files.sort();
    files.insert(0, root.join("README.md"));
    files.push(root.join("ARCHITECTURE.md"));
    files
}

pub fn repo_policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

/// A copy of the shipped policies a test may edit, in the test's directory;
/// `with_tests`: their tests too (a reload runs them).
pub fn policy_copy(infra: &Infra, with_tests: bool) -> PathBuf {
    let dir = infra.dir.path().join("policies");
    std::fs::create_dir_all(dir.join("tests")).unwrap();
    let tests: &[&str] = if with_tests { &["tests/domain_rules.toml"] } else { &[] };
    for f in ["model.conf", "policy.csv", "catalogue.toml"].iter().chain(tests) {
        std::fs::copy(repo_policies().join(f), dir.join(f)).unwrap();
    }
    dir
}

/// `TOLLGATE_TOPICS__*` for every topic of `topics`, for the binary.
pub fn topic_env(topics: &Topics) -> Vec<(String, String)> {
    let map = serde_json::to_value(topics).unwrap();
    map.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (format!("TOLLGATE_TOPICS__{}", k.to_uppercase()), v.as_str().unwrap().to_owned()))
        .collect()
}

/// The next reply on the replies topic.
pub async fn reply(reader: &tollgate::kafka::Reader) -> tollgate::contract::Reply {
    serde_json::from_slice(&read_n(reader, 1).await[0].payload).unwrap()
}

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

/// One embedded cluster for the whole test binary (tests isolate by topic
/// and group). It lives until the process exits, so clients that tests leave
/// behind never see their broker vanish.
fn embedded_kafka() -> &'static EmbeddedKafka {
    static CLUSTER: std::sync::OnceLock<EmbeddedKafka> = std::sync::OnceLock::new();
    CLUSTER.get_or_init(|| EmbeddedKafka::start(1).expect("embedded kafka starts"))
}

async fn fresh_database(dir: &Path, id: &str) -> String {
    match std::env::var("TEST_DATABASE_URL") {
        Ok(base) => {
            let base = base.trim_end_matches('/');
            let name = format!("tollgate_test_{id}");
            let mut admin =
                sqlx::PgConnection::connect(&format!("{base}/postgres")).await.expect("connect to PostgreSQL");
            sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.expect("create test database");
            format!("{base}/{name}")
        }
        Err(_) => format!("sqlite://{}", dir.join("tollgate.db").display()),
    }
}

pub async fn infra() -> Infra {
    init_logs();
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let dir = tempfile::tempdir().unwrap();
    let topics = Topics::with_suffix(&id);
    let settings = Settings::default();
    let bootstrap = match std::env::var("TEST_KAFKA_BOOTSTRAP") {
        Ok(b) => {
            let wanted = topics.with_retention(&settings.kafka.retention);
            tollgate::kafka::ensure_topics(&settings.kafka, &b, &wanted).await.expect("create topics");
            b
        }
        Err(_) => {
            let k = embedded_kafka();
            for t in topics.all() {
                k.create_topic(t, 3).unwrap();
            }
            k.bootstrap_servers().to_owned()
        }
    };
    let database_url = fresh_database(dir.path(), &id).await;
    let idp = SigningKey::generate("test-idp");
    let idp_public = dir.path().join("test-idp.pub.pem");
    std::fs::write(&idp_public, idp.public().to_pem()).unwrap();
    let grant_key_path = dir.path().join("grants.pem");
    std::fs::write(&grant_key_path, SigningKey::generate("grants").to_pkcs8_pem()).unwrap();
    let grant_key = SigningKey::from_pem_file(&grant_key_path).unwrap();
    Infra {
        bootstrap,
        database_url,
        topics,
        group: format!("tollgate-{id}"),
        dir,
        idp,
        idp_public,
        grant_key,
        grant_key_path,
    }
}

impl Infra {
    /// Settings for a tollgate instance on this infrastructure.
    pub fn settings(&self) -> Settings {
        let mut s = Settings::default().in_process(&self.bootstrap, &self.database_url, self.grant_key_path.clone());
        s.kafka.group_id = self.group.clone();
        s.topics = self.topics.clone();
        s.policy.dir = repo_policies();
        s.auth.public_keys = vec![self.idp_public.clone()];
        s.auth.issuers = vec![ISSUER.into()];
        s.service.shutdown_grace_secs = 10;
        // Tests run side by side: each takes a free port.
        s.service.http_listen = "127.0.0.1:0".into();
        s
    }

    pub fn token(&self, sub: &str, qualifications: &[&str], ttl: i64) -> String {
        self.idp.sign(
            &Claims::new(sub, ISSUER, "tollgate", ttl).with_roles(&["data_user"]).with_qualifications(qualifications),
        )
    }
}

pub async fn spawn_app() -> TestApp {
    let infra = infra().await;
    let settings = infra.settings();
    start(infra, settings).await
}

pub async fn start(infra: Infra, settings: Settings) -> TestApp {
    let client = Client::new(&settings.kafka, &infra.bootstrap).unwrap();
    let app = App::build(settings.clone()).await.expect("app builds");
    let health = app.health();
    let http = app.http_addr().expect("tests run with the HTTP listener on");
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let _stop_on_drop = shutdown.clone().drop_guard();
    TestApp { infra, client, settings, health, http, shutdown, handle: Some(handle), _stop_on_drop }
}

/// A v1 access request as JSON.
pub fn request(
    id: &str,
    token: Option<&str>,
    scenario: &str,
    dataset: &str,
    op: &str,
    class: &str,
) -> serde_json::Value {
    let mut v = serde_json::json!({
        "schema": REQUEST_SCHEMA,
        "request_id": id,
        "dataset": dataset,
        "operation": op,
        "scenario": scenario,
        "purpose": {"class": class, "statement": "integration test"},
    });
    if let Some(t) = token {
        v["token"] = t.into();
    }
    v
}

impl TestApp {
    pub async fn send(&self, key: &str, payload: &[u8]) {
        self.client.produce(&self.infra.topics.requests, key, payload, &[]).await.expect("produce");
    }

    pub async fn send_json(&self, v: &serde_json::Value) {
        self.send("test", v.to_string().as_bytes()).await;
    }

    pub fn reader(&self, topic: &str) -> Reader {
        self.client.reader(&[topic], &format!("reader-{}", uuid::Uuid::new_v4())).unwrap()
    }

    /// The next `n` audit events of request chains (policy chains skipped).
    pub async fn request_audit(&self, n: usize) -> Vec<ConsumedMessage> {
        let reader = self.reader(&self.infra.topics.audit);
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let m = read_n(&reader, 1).await.remove(0);
            if !audit_event(&m).chain.starts_with("policy/") {
                out.push(m);
            }
        }
        out
    }

    /// Stops the instance (as SIGTERM would) and waits for it.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            h.await.expect("app task").expect("app stopped cleanly");
        }
    }

    /// Stops this instance and starts a new one on the same topics, group
    /// and database.
    pub async fn restart(self) -> TestApp {
        self.restart_with(|_| {}).await
    }

    /// As [`TestApp::restart`], with `change` made to the settings.
    pub async fn restart_with(mut self, change: impl FnOnce(&mut Settings)) -> TestApp {
        self.stop().await;
        let TestApp { infra, mut settings, .. } = self;
        change(&mut settings);
        start(infra, settings).await
    }

    /// GET `path` from the instance's HTTP listener → (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        let port = self.http.port();
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || http_get(port, &path)).await.unwrap().expect("http listener answers")
    }
}

/// GET http://127.0.0.1:port/path → (status, body); None when unreachable.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((status, body))
}

/// Reads `n` messages (or fails after WAIT without one).
pub async fn read_n(reader: &Reader, n: usize) -> Vec<ConsumedMessage> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match reader.next(WAIT).await.expect("read") {
            Some(m) => out.push(m),
            None => panic!("only {} of {n} messages arrived", out.len()),
        }
    }
    out
}

/// Asserts nothing more arrives for a short while.
pub async fn assert_no_more(reader: &Reader) {
    if let Some(m) = reader.next(Duration::from_secs(2)).await.expect("read") {
        panic!("unexpected extra message: {}", String::from_utf8_lossy(&m.payload));
    }
}

pub fn decision(m: &ConsumedMessage) -> Decision {
    serde_json::from_slice(&m.payload).expect("a decision")
}

pub fn audit_event(m: &ConsumedMessage) -> AuditEvent {
    serde_json::from_slice(&m.payload).expect("an audit event")
}
