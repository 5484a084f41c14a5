//! Typed settings, layered: built-in defaults < TOML file < environment
//! (`TOLLGATE_SECTION__KEY`, e.g. `TOLLGATE_KAFKA__BOOTSTRAP_SERVERS`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub service: ServiceSettings,
    pub kafka: KafkaSettings,
    pub topics: Topics,
    pub database: DatabaseSettings,
    pub auth: AuthSettings,
    pub policy: PolicySettings,
    pub grant: GrantSettings,
    pub review: ReviewSettings,
    pub audit: AuditSettings,
    pub telemetry: TelemetrySettings,
}

/// OpenTelemetry export (OTLP over HTTP). The standard `OTEL_*` variables
/// configure it as they configure any SDK (`OTEL_EXPORTER_OTLP_ENDPOINT`,
/// `OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`
/// and `OTEL_TRACES_SAMPLER_ARG`, `OTEL_RESOURCE_ATTRIBUTES`, …); a key
/// set here wins over its variable. Nothing is exported, and nothing is
/// built, unless an endpoint is set one way or the other.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// Base URL of an OTLP/HTTP receiver (`http://collector:4318`); spans go
    /// to `/v1/traces`, metrics to `/v1/metrics`.
    pub otlp_endpoint: Option<String>,
    /// `http/protobuf` (the default) or `http/json`.
    pub otlp_protocol: Option<String>,
    /// `service.name` of what is exported; default `tollgate`.
    pub service_name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSettings {
    /// Ed25519 PKCS#8 PEM private key that signs audit checkpoints (kid =
    /// file name up to its first dot). Unset: a key generated for this run
    /// (recorded in the database, so its checkpoints still verify there).
    pub signing_key: Option<PathBuf>,
    /// A chain is checkpointed once it has grown by this many events…
    pub checkpoint_every: u64,
    /// …or when it has new events and its last checkpoint is this old.
    pub checkpoint_secs: u64,
    /// The store keeps the trail this many days, pruned on a schedule as
    /// `audit prune` would (each chain cut at a signed checkpoint, with the
    /// records its removed events decided). 0: keep everything. At least
    /// 1095 (the legal minimum) when set.
    pub retention_days: u32,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings { signing_key: None, checkpoint_every: 1000, checkpoint_secs: 60, retention_days: 0 }
    }
}

impl AuditSettings {
    /// Refuses a retention below the legal floor.
    pub fn check(&self) -> Result<(), String> {
        match self.retention_days {
            d if d != 0 && d < RECORDS_MIN_DAYS => Err(format!(
                "audit.retention_days = {d} is below the legal minimum of {RECORDS_MIN_DAYS} days (the audit trail of personal-information processing, PIPL art. 56); 0 keeps everything"
            )),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReviewSettings {
    /// A request pending review longer than this is denied `review.timeout`.
    pub timeout_secs: u64,
}

impl Default for ReviewSettings {
    fn default() -> Self {
        ReviewSettings { timeout_secs: 7 * 24 * 3600 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceSettings {
    /// Names this instance in logs and in its policy audit chain
    /// (`policy/<instance_id>`); defaults to the host name.
    pub instance_id: String,
    /// How long in-flight work may take to finish after SIGTERM.
    pub shutdown_grace_secs: u64,
    /// Inputs larger than this go to the dead-letter topic unread.
    pub max_message_bytes: usize,
    /// How much of an input (payload, key and headers together) a dead
    /// letter carries; the rest is cut, its length and sha256 stated. Keep
    /// it well below the producer's and topics' `message.max.bytes`.
    pub dead_letter_max_bytes: usize,
    /// Outputs awaiting broker acknowledgement before intake pauses.
    pub max_in_flight: usize,
    /// Inputs already received that are decided together, in one database
    /// transaction (1 = one at a time).
    pub max_batch: usize,
    /// Address of `/healthz`, `/readyz` and `/metrics`; empty turns the
    /// HTTP endpoint off. Port 0 picks a free port (logged at start-up).
    pub http_listen: String,
    /// Who may read the listener's private pages (the revocation list) from
    /// another host: a bearer token verified like requesters' (`auth.*`)
    /// carrying one of these roles. Empty (the default): loopback only.
    pub http_remote_roles: Vec<String>,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        ServiceSettings {
            instance_id: std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "tollgate".into()),
            shutdown_grace_secs: 30,
            max_message_bytes: 64 * 1024,
            dead_letter_max_bytes: 64 * 1024,
            max_in_flight: 1000,
            max_batch: 256,
            http_listen: "127.0.0.1:9464".into(),
            http_remote_roles: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSettings {
    /// Unset: start an embedded in-process cluster (librdkafka's mock).
    pub bootstrap_servers: Option<String>,
    pub group_id: String,
    /// Create missing topics at start-up.
    pub create_topics: bool,
    pub partitions: i32,
    pub replication_factor: i32,
    /// librdkafka properties for both consumer and producer (SASL, TLS, …).
    /// From the environment, `_` in a key stands for `.`:
    /// `TOLLGATE_KAFKA__PROPERTIES__SECURITY_PROTOCOL=SASL_SSL`.
    #[serde(deserialize_with = "scalar_map")]
    pub properties: Properties,
    /// librdkafka properties for the consumer only.
    #[serde(deserialize_with = "scalar_map")]
    pub consumer: Properties,
    /// librdkafka properties for the producer only.
    #[serde(deserialize_with = "scalar_map")]
    pub producer: Properties,
    /// How outputs and input offsets reach Kafka.
    pub delivery: DeliveryMode,
    /// Join the group as a static member (`group.instance.id` =
    /// `service.instance_id`, which must then be unique per instance): an
    /// instance restarted after a crash gets its partitions back at once
    /// instead of after the session timeout, and brokers that keep a
    /// crashed member's partitions until it rejoins (tansu 0.6) need it.
    pub static_membership: bool,
    /// Transactional mode: the producer's `transactional.id`, stable per
    /// instance and unique in the cluster. Default `tollgate-<instance_id>`.
    pub transactional_id: Option<String>,
    /// How long each topic keeps its messages (set on the topics tollgate
    /// creates, checked on the ones it finds).
    pub retention: RetentionSettings,
    /// Refuse to start when a topic keeps messages for less than required
    /// (else a loud warning).
    pub enforce_retention: bool,
}

/// Days each class of topic keeps its messages; 0 keeps them forever.
/// Defaults and floors follow the law (DOMAIN.md): network logs at least
/// 6 months (Cybersecurity Law), personal-information processing records
/// at least 3 years (PIPL art. 56); the audit trail forever.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// `topics.audit` and `topics.checkpoints`: 0 (forever) or ≥ 1095.
    pub audit_days: u32,
    /// Requests, decisions, usage, grants, reviews, revocations, replies —
    /// records of processing, personal information included: ≥ 1095.
    pub records_days: u32,
    /// The dead-letter topic (operational logs): ≥ 183.
    pub logs_days: u32,
}

/// The legal floors, in days.
pub const RECORDS_MIN_DAYS: u32 = 1095;
pub const LOGS_MIN_DAYS: u32 = 183;

impl Default for RetentionSettings {
    fn default() -> Self {
        RetentionSettings { audit_days: 0, records_days: RECORDS_MIN_DAYS, logs_days: LOGS_MIN_DAYS }
    }
}

impl RetentionSettings {
    /// Refuses a retention below its legal floor.
    pub fn check(&self) -> Result<(), String> {
        let short = |name: &str, days: u32, min: u32, why: &str| {
            (days != 0 && days < min).then(|| format!("kafka.retention.{name} = {days} is below the legal minimum of {min} days ({why}); 0 keeps messages forever"))
        };
        let problem = short(
            "audit_days",
            self.audit_days,
            RECORDS_MIN_DAYS,
            "the audit trail of personal-information processing, PIPL art. 56",
        )
        .or_else(|| {
            short(
                "records_days",
                self.records_days,
                RECORDS_MIN_DAYS,
                "personal-information processing records, PIPL art. 56",
            )
        })
        .or_else(|| short("logs_days", self.logs_days, LOGS_MIN_DAYS, "network logs, Cybersecurity Law"));
        problem.map_or(Ok(()), Err)
    }

    /// `retention.ms` for `days` (-1: forever).
    pub fn ms(days: u32) -> i64 {
        if days == 0 { -1 } else { i64::from(days) * 86_400_000 }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryMode {
    /// Idempotent producer; an input's offset is stored once all its outputs
    /// are acknowledged. Outputs may repeat (identically) after a crash.
    #[default]
    AtLeastOnce,
    /// Each batch's outputs and input offsets in one Kafka transaction: they
    /// become visible (to `read_committed` consumers) together or not at all.
    Transactional,
}

/// librdkafka values are strings, but `TOLLGATE_…=5` arrives as a number
/// and `=true` as a boolean: accept any scalar and keep its text.
fn scalar_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Properties, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        S(String),
        B(bool),
        I(i64),
        U(u64),
        F(f64),
    }
    let raw: BTreeMap<String, Scalar> = BTreeMap::deserialize(d)?;
    Ok(Properties(
        raw.into_iter()
            .map(|(k, v)| {
                let text = match v {
                    Scalar::S(s) => s,
                    Scalar::B(b) => b.to_string(),
                    Scalar::I(i) => i.to_string(),
                    Scalar::U(u) => u.to_string(),
                    Scalar::F(f) => f.to_string(),
                };
                (k, text)
            })
            .collect(),
    ))
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            bootstrap_servers: None,
            group_id: "tollgate".into(),
            create_topics: true,
            partitions: 3,
            replication_factor: 1,
            properties: Properties::default(),
            consumer: Properties::default(),
            producer: Properties::default(),
            delivery: DeliveryMode::AtLeastOnce,
            static_membership: false,
            transactional_id: None,
            retention: RetentionSettings::default(),
            enforce_retention: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Topics {
    pub requests: String,
    pub decisions: String,
    pub audit: String,
    pub usage: String,
    pub dlq: String,
    /// Reviewers' verdicts (in).
    pub reviews: String,
    /// Operators' revoke commands (in).
    pub revocations: String,
    /// Grant events for data hosts (out).
    pub grants: String,
    /// Answers to commands (out).
    pub replies: String,
    /// Signed checkpoints of the audit chains (out).
    pub checkpoints: String,
    /// Data hosts' usage reports (in).
    pub usage_reports: String,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            requests: "tollgate.requests".into(),
            decisions: "tollgate.decisions".into(),
            audit: "tollgate.audit".into(),
            usage: "tollgate.usage".into(),
            dlq: "tollgate.dlq".into(),
            reviews: "tollgate.reviews".into(),
            revocations: "tollgate.revocations".into(),
            grants: "tollgate.grants".into(),
            replies: "tollgate.replies".into(),
            checkpoints: "tollgate.audit.checkpoints".into(),
            usage_reports: "tollgate.usage_reports".into(),
        }
    }
}

impl Topics {
    /// Every topic name with a suffix, for isolated test runs.
    pub fn with_suffix(suffix: &str) -> Self {
        let d = Topics::default();
        Topics {
            requests: format!("{}.{suffix}", d.requests),
            decisions: format!("{}.{suffix}", d.decisions),
            audit: format!("{}.{suffix}", d.audit),
            usage: format!("{}.{suffix}", d.usage),
            dlq: format!("{}.{suffix}", d.dlq),
            reviews: format!("{}.{suffix}", d.reviews),
            revocations: format!("{}.{suffix}", d.revocations),
            grants: format!("{}.{suffix}", d.grants),
            replies: format!("{}.{suffix}", d.replies),
            checkpoints: format!("{}.{suffix}", d.checkpoints),
            usage_reports: format!("{}.{suffix}", d.usage_reports),
        }
    }

    pub fn all(&self) -> [&str; 11] {
        [
            &self.requests,
            &self.reviews,
            &self.decisions,
            &self.audit,
            &self.usage,
            &self.dlq,
            &self.revocations,
            &self.grants,
            &self.replies,
            &self.checkpoints,
            &self.usage_reports,
        ]
    }

    /// Every topic with the `retention.ms` it must keep (-1: forever).
    pub fn with_retention(&self, r: &RetentionSettings) -> Vec<(&str, i64)> {
        let (audit, records, logs) = (
            RetentionSettings::ms(r.audit_days),
            RetentionSettings::ms(r.records_days),
            RetentionSettings::ms(r.logs_days),
        );
        self.all()
            .into_iter()
            .map(|t| {
                let ms = if t == self.audit || t == self.checkpoints {
                    audit
                } else if t == self.dlq {
                    logs
                } else {
                    records
                };
                (t, ms)
            })
            .collect()
    }

    /// The topics the decision loop consumes.
    pub fn inputs(&self) -> [&str; 4] {
        [&self.requests, &self.reviews, &self.revocations, &self.usage_reports]
    }

    /// Whether inputs of `topic` are commands (verdicts, revocations,
    /// usage reports), which act on what earlier inputs stored.
    pub fn is_command(&self, topic: &str) -> bool {
        topic == self.reviews || topic == self.revocations || topic == self.usage_reports
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://PATH` (created when missing) or `postgres://…`.
    pub url: String,
    pub max_connections: u32,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings { url: "sqlite://tollgate.db".into(), max_connections: 8 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// PEM public keys (RSA → RS256, P-256 → ES256, Ed25519 → EdDSA). A key's
    /// kid is its file name up to the first dot.
    pub public_keys: Vec<PathBuf>,
    /// A JWKS file (RSA, EC P-256 and OKP Ed25519 keys; kid from the set).
    pub jwks: Option<PathBuf>,
    /// Accepted `iss` values.
    pub issuers: Vec<String>,
    /// Accepted `aud` values; a token must name one of them.
    pub audience: Vec<String>,
    /// Clock skew tolerated on exp and nbf.
    pub leeway_secs: u64,
    /// HS256 is off unless this is true *and* a secret is set.
    pub allow_hs256: bool,
    pub hs256_secret: Option<Secret>,
    pub max_token_bytes: usize,
    /// A token id (`jti`) authorizes one request: another request with the
    /// same token is denied `auth.token_replayed` while the token is valid.
    /// Turn off for identity providers whose reusable access tokens carry a
    /// jti. Tokens without a jti are reusable until they expire either way.
    pub single_use_jti: bool,
    /// Verified tokens remembered until expiry (0 turns the cache off).
    pub token_cache_size: usize,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            public_keys: Vec::new(),
            jwks: None,
            issuers: Vec::new(),
            audience: vec!["tollgate".into()],
            leeway_secs: 30,
            allow_hs256: false,
            hs256_secret: None,
            max_token_bytes: 8192,
            single_use_jti: true,
            token_cache_size: 10_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySettings {
    /// Holds model.conf, policy.csv, catalogue.toml and tests/.
    pub dir: PathBuf,
    /// Reload on file changes (and always on SIGHUP).
    pub watch: bool,
    /// Quiet time after the last change before a reload starts.
    pub debounce_ms: u64,
}

impl Default for PolicySettings {
    fn default() -> Self {
        PolicySettings { dir: PathBuf::from("policies"), watch: true, debounce_ms: 500 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrantSettings {
    /// Ed25519 PKCS#8 PEM private key that signs grants. Unset: a key is
    /// generated at start-up (grants then cannot be verified after a restart).
    pub signing_key: Option<PathBuf>,
    /// Keys announced ahead of use: published in the JWKS but signing
    /// nothing yet (public or private PEM files; kid = file name up to its
    /// first dot). Rotate by announcing the next key here, then making it
    /// `signing_key` once data hosts' JWKS caches have it.
    pub next_keys: Vec<PathBuf>,
    pub issuer: String,
    pub ttl_secs: i64,
    /// How often live grants are decided again under the policy in force
    /// (besides after every reload that changes it), so a lapsed scenario
    /// authorization or registration revokes them; 0: only after reloads.
    pub recheck_secs: u64,
}

impl Default for GrantSettings {
    fn default() -> Self {
        GrantSettings {
            signing_key: None,
            next_keys: Vec::new(),
            issuer: "tollgate".into(),
            ttl_secs: 3600,
            recheck_secs: 300,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(#[from] Box<figment::Error>);

impl Settings {
    /// These settings for an instance run inside another program (the
    /// demo, loadgen, the tests) on a cluster whose topics that program has
    /// made: its bootstrap, database and grant key, no topic creation and no
    /// HTTP listener (a foreground run is not a service to probe).
    pub fn in_process(mut self, bootstrap: &str, database_url: &str, grant_key: PathBuf) -> Settings {
        self.kafka.bootstrap_servers = Some(bootstrap.to_owned());
        self.kafka.create_topics = false;
        self.database.url = database_url.to_owned();
        self.grant.signing_key = Some(grant_key);
        self.service.http_listen = String::new();
        self
    }

    /// Defaults, then `file` (when given, it must exist), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError(Box::new(figment::Error::from(format!(
                    "config file {} does not exist",
                    path.display()
                )))));
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        // TOLLGATE_LOG_FORMAT and TOLLGATE_CONFIG_FILE are read before settings.
        fig = fig.merge(Env::prefixed("TOLLGATE_").ignore(&["log_format", "config_file"]).split("__"));
        let mut settings: Settings = fig.extract().map_err(Box::new)?;
        settings.kafka.normalise_property_keys();
        settings.kafka.retention.check().map_err(|m| ConfigError(Box::new(figment::Error::from(m))))?;
        settings.audit.check().map_err(|m| ConfigError(Box::new(figment::Error::from(m))))?;
        Ok(settings)
    }
}

impl Settings {
    /// The settings as JSON with every secret replaced by `***`: the HS256
    /// key, secret librdkafka properties and a password in the database URL.
    pub fn redacted(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("settings serialize");
        if let Some(s) = v.pointer_mut("/auth/hs256_secret").filter(|s| !s.is_null()) {
            *s = "***".into();
        }
        for map in ["/kafka/properties", "/kafka/consumer", "/kafka/producer"] {
            for (k, value) in v.pointer_mut(map).and_then(|m| m.as_object_mut()).into_iter().flatten() {
                if is_secret_property(k) {
                    *value = "***".into();
                }
            }
        }
        if let Some(url) = v.pointer_mut("/database/url") {
            *url = redact_url_password(url.as_str().unwrap_or_default()).into();
        }
        v
    }
}

/// `scheme://user:password@host/…` → `scheme://user:***@host/…`.
fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (authority, path) = rest.split_once('/').map_or((rest, None), |(a, p)| (a, Some(p)));
    let Some((userinfo, host)) = authority.rsplit_once('@') else { return url.to_owned() };
    let Some((user, _)) = userinfo.split_once(':') else { return url.to_owned() };
    let path = path.map(|p| format!("/{p}")).unwrap_or_default();
    format!("{scheme}://{user}:***@{host}{path}")
}

fn is_secret_property(k: &str) -> bool {
    ["password", "secret", "sasl.oauthbearer.config", "ssl.key.pem"].iter().any(|s| k.contains(s))
}

impl KafkaSettings {
    /// Environment keys cannot hold dots; librdkafka keys never hold
    /// underscores, so `_` is read as `.`.
    fn normalise_property_keys(&mut self) {
        for map in [&mut self.properties, &mut self.consumer, &mut self.producer] {
            *map = std::mem::take(map).into_iter().map(|(k, v)| (k.replace('_', "."), v)).collect();
        }
    }
}

/// A secret from configuration (the HS256 key): usable, never printed —
/// `Debug` shows `***`, so settings can be logged whole.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// librdkafka properties. `Debug` leaves out the values of those that hold
/// secrets (`sasl.password`, `ssl.key.password`, …), so settings can be
/// logged whole.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Properties(BTreeMap<String, String>);

impl std::ops::Deref for Properties {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Properties {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl FromIterator<(String, String)> for Properties {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        Properties(iter.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a Properties {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl IntoIterator for Properties {
    type Item = (String, String);
    type IntoIter = std::collections::btree_map::IntoIter<String, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl std::fmt::Debug for Properties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, if is_secret_property(k) { "***" } else { v.as_str() })))
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
mod tests {
    use super::*;

    #[test]
    fn an_audit_retention_below_three_years_is_refused_and_zero_keeps_everything() {
        let with = |d| AuditSettings { retention_days: d, ..AuditSettings::default() }.check();
        assert!(with(0).is_ok() && with(1095).is_ok() && with(4000).is_ok());
        let err = with(365).unwrap_err();
        assert!(err.contains("audit.retention_days = 365 is below the legal minimum of 1095 days"), "{err}");
    }

    #[test]
    fn the_printed_configuration_redacts_secrets_and_database_passwords() {
        let mut s = Settings::default();
        s.auth.hs256_secret = Some(Secret::new("hs256-shared-secret"));
        s.kafka.properties.insert("sasl.password".into(), "kafka-pw".into());
        s.database.url = "postgres://tollgate:db-pw@postgres:5432/tollgate".into();
        let text = s.redacted().to_string();
        for secret in ["hs256-shared-secret", "kafka-pw", "db-pw"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("postgres://tollgate:***@postgres:5432/tollgate"), "{text}");
        assert_eq!(redact_url_password("sqlite://tollgate.db"), "sqlite://tollgate.db");
    }

    #[test]
    fn settings_print_without_their_secrets() {
        let mut s = Settings::default();
        s.auth.hs256_secret = Some(Secret::new("hs256-shared-secret"));
        s.kafka.properties.insert("sasl.password".into(), "sasl-pass-123".into());
        s.kafka.producer.insert("ssl.key.password".into(), "key-pass-456".into());
        s.kafka.properties.insert("sasl.username".into(), "tollgate".into());
        let printed = format!("{s:?}");
        for secret in ["hs256-shared-secret", "sasl-pass-123", "key-pass-456"] {
            assert!(!printed.contains(secret), "{printed}");
        }
        assert!(printed.contains("tollgate"), "non-secret properties still show");
    }

    #[test]
    fn file_overrides_defaults_and_env_overrides_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "tollgate.toml",
                r#"
                [kafka]
                bootstrap_servers = "file:9092"
                group_id = "from-file"
                [kafka.properties]
                "security.protocol" = "SASL_SSL"
                [database]
                url = "postgres://file/db"
                "#,
            )?;
            jail.set_env("TOLLGATE_KAFKA__BOOTSTRAP_SERVERS", "env:9092");
            jail.set_env("TOLLGATE_KAFKA__PROPERTIES__SASL_MECHANISM", "SCRAM-SHA-512");
            jail.set_env("TOLLGATE_KAFKA__CONSUMER__FETCH_WAIT_MAX_MS", "5");
            jail.set_env("TOLLGATE_KAFKA__PRODUCER__ENABLE_IDEMPOTENCE", "true");
            let s = Settings::load(Some(Path::new("tollgate.toml"))).expect("loads");
            assert_eq!(s.kafka.bootstrap_servers.as_deref(), Some("env:9092"));
            assert_eq!(s.kafka.group_id, "from-file");
            assert_eq!(s.database.url, "postgres://file/db");
            assert_eq!(s.kafka.properties.get("security.protocol").map(String::as_str), Some("SASL_SSL"));
            assert_eq!(s.kafka.properties.get("sasl.mechanism").map(String::as_str), Some("SCRAM-SHA-512"));
            assert_eq!(s.topics.requests, "tollgate.requests");
            // Numbers and booleans from the environment stay librdkafka text.
            assert_eq!(s.kafka.consumer.get("fetch.wait.max.ms").map(String::as_str), Some("5"));
            assert_eq!(s.kafka.producer.get("enable.idempotence").map(String::as_str), Some("true"));
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_errors_not_silently_ignored() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("tollgate.toml", "[kafka]\nbootstrap_server = \"typo:9092\"\n")?;
            assert!(Settings::load(Some(Path::new("tollgate.toml"))).is_err());
            Ok(())
        });
    }
}
