//! Policy hot reload. A change under `policy.dir` (debounced) or SIGHUP
//! builds the new policy off to the side, validates it and runs its tests;
//! only a policy that passes all of that is swapped in, atomically, between
//! decisions. Anything else leaves the last good policy in force. Both
//! outcomes are logged and audited on the instance's policy chain.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use chrono::Utc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::outbox::{self, Outbox};
use super::recheck::Recheck;
use crate::config::PolicySettings;
use crate::contract::{AuditEvent, EventType, Reason};
use crate::decide::policy_tests::run_tests;
use crate::domain::ChainId;
use crate::ops::Health;
use crate::policy::{CATALOGUE_FILE, MODEL_FILE, POLICY_FILE, Policy, version_of};
use crate::store::{Commit, Store};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    Unchanged,
    Loaded { old: String, new: String, added: usize, removed: usize },
    Rejected { reason: String },
}

/// An active watch on the policy directory; dropping it stops watching.
pub struct Watch {
    _watcher: Option<notify::RecommendedWatcher>,
    changes: mpsc::Receiver<()>,
    /// Installed with the watch: a SIGHUP before it would kill the process.
    #[cfg(unix)]
    hangup: Option<tokio::signal::unix::Signal>,
}

pub struct Reloader {
    dir: PathBuf,
    current: Arc<ArcSwap<Policy>>,
    /// Content hash of the last rejected files: the same bad files seen
    /// again (an editor writes in several steps) are audited once. What
    /// operators see is the audit trail (`tollgate policy status`).
    last_rejected: Mutex<Option<String>>,
    store: Store,
    /// Publishes policy audit events, which are stored (and queued there)
    /// first.
    outbox: Arc<Outbox>,
    instance_id: String,
    debounce: Duration,
    watch: bool,
    health: Arc<Health>,
    /// Revokes live grants a new policy no longer allows.
    recheck: Recheck,
    /// How often live grants are re-checked with no reload (None: never).
    recheck_every: Option<Duration>,
}

impl Reloader {
    /// Reloads `settings.dir` into `current`, auditing on the chain
    /// `policy/<instance_id>`.
    pub fn new(
        settings: &PolicySettings,
        instance_id: &str,
        current: Arc<ArcSwap<Policy>>,
        store: Store,
        outbox: Arc<Outbox>,
        health: Arc<Health>,
        recheck: (Recheck, Option<Duration>),
    ) -> Self {
        Reloader {
            recheck: recheck.0,
            recheck_every: recheck.1,
            dir: settings.dir.clone(),
            current,
            last_rejected: Mutex::new(None),
            store,
            outbox,
            instance_id: instance_id.to_owned(),
            debounce: Duration::from_millis(settings.debounce_ms),
            watch: settings.watch,
            health,
        }
    }
}

/// The files' combined hash even when they do not parse, so a rejection
/// names exactly what was rejected.
fn candidate_version(dir: &Path) -> String {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    let (m, p, c) = (read(MODEL_FILE), read(POLICY_FILE), read(CATALOGUE_FILE));
    version_of(&[(MODEL_FILE, &m), (POLICY_FILE, &p), (CATALOGUE_FILE, &c)])
}

/// Whether a watcher event can have changed a file's content (inotify also
/// reports opens and reads; a close after writing is a change).
fn is_edit(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match kind {
        EventKind::Access(access) => *access == AccessKind::Close(AccessMode::Write),
        _ => true,
    }
}

/// Why a policy directory cannot be put in force. Its text is the reason
/// audited with `policy_rejected`.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Invalid(#[from] crate::policy::PolicyError),
    #[error(transparent)]
    TestFile(#[from] crate::decide::policy_tests::TestFileError),
    #[error("{} policy test(s) failed: {}", .0.len(), .0.join(" | "))]
    TestsFailed(Vec<String>),
    #[error("policy build panicked: {0}")]
    Panicked(String),
    #[error("could not start the policy build thread")]
    Thread(#[source] std::io::Error),
}

/// Loads and fully validates the policy in `dir`, tests included.
pub async fn build_checked(dir: &Path) -> Result<Policy, BuildError> {
    let policy = Policy::load(dir).await?;
    let results = run_tests(&policy, dir)?;
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.passed)
        .map(|r| format!("{}: {}: {}", r.file, r.name, r.failures.join("; ")))
        .collect();
    if !failed.is_empty() {
        return Err(BuildError::TestsFailed(failed));
    }
    // The service never reads the rules as written (see `Policy::rules`).
    Ok(policy.without_rules_text())
}

/// [`build_checked`] on a thread of its own that ends with the build: how
/// the service builds its first policy. Building 100k rules allocates and
/// frees tens of MB. The allocator (mimalloc) keeps what a thread frees
/// with that thread's heap and gives it back later, as it next collects,
/// or at once when the thread ends; the thread that starts the service
/// hardly allocates again, so on it the build's garbage stayed resident
/// for good (98 MB at rest with 100k rules instead of 44 MB;
/// docs/performance.md).
/// A reload builds on the runtime's blocking pool, whose threads go on
/// working or end after 10 s idle.
pub async fn build_apart(dir: &Path) -> Result<Policy, BuildError> {
    let (dir, handle) = (dir.to_owned(), tokio::runtime::Handle::current());
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("tollgate-policy-build".into())
        .spawn(move || {
            let _ = done.send(handle.block_on(build_checked(&dir)));
        })
        .map_err(BuildError::Thread)?;
    result.await.unwrap_or_else(|_| Err(BuildError::Panicked("the build thread ended without a result".into())))
}

impl Reloader {
    /// Starts watching the policy directory. Called before decisions start,
    /// so no edit made after the first decision can go unnoticed.
    pub fn watch_files(&self) -> Watch {
        let (tx, rx) = mpsc::channel::<()>(1);
        #[cfg(unix)]
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        if !self.watch {
            return Watch {
                _watcher: None,
                changes: rx,
                #[cfg(unix)]
                hangup,
            };
        }
        // The watcher thread only signals; debouncing and the reload itself
        // run in `run`. Opening and reading a file is not a change: the
        // reload reads every policy file, and counting that as an edit
        // would rebuild the policy over and over.
        let handler = move |res: notify::Result<notify::Event>| {
            if res.is_ok_and(|event| is_edit(&event.kind)) {
                let _ = tx.try_send(());
            }
        };
        let watcher = match notify::recommended_watcher(handler) {
            Ok(mut w) => {
                use notify::Watcher;
                match w.watch(&self.dir, notify::RecursiveMode::Recursive) {
                    Ok(()) => Some(w),
                    Err(error) => {
                        warn!(message = "cannot watch the policy directory; reload with SIGHUP", dir = %self.dir.display(), %error);
                        None
                    }
                }
            }
            Err(error) => {
                warn!(message = "no file watcher; reload with SIGHUP", %error);
                None
            }
        };
        Watch {
            _watcher: watcher,
            changes: rx,
            #[cfg(unix)]
            hangup,
        }
    }

    /// Runs until `shutdown`: reloads on debounced file changes and SIGHUP.
    pub async fn run(self, watch: Watch, shutdown: CancellationToken) {
        #[cfg(unix)]
        let Watch { _watcher, changes: mut rx, hangup: mut hup } = watch;
        #[cfg(not(unix))]
        let Watch { _watcher, changes: mut rx } = watch;
        let mut last_recheck = tokio::time::Instant::now();
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<Option<()>>();
            let trigger = tokio::select! {
                _ = shutdown.cancelled() => break,
                // Events a broker outage held back go out once it is back.
                _ = tokio::time::sleep(outbox::RETRY_EVERY) => {
                    self.outbox.drain_logged().await;
                    self.recheck.expire_reviews_logged(&self.current.load_full()).await;
                    if self.recheck_every.is_some_and(|every| last_recheck.elapsed() >= every) {
                        last_recheck = tokio::time::Instant::now();
                        self.recheck.sweep_logged(&self.current.load_full()).await;
                    }
                    continue;
                }
                Some(()) = rx.recv() => {
                    // An editor saves in several steps: wait until the
                    // files have been quiet for the debounce period.
                    while let Ok(Some(())) = tokio::time::timeout(self.debounce, rx.recv()).await {}
                    "file change"
                }
                _ = hangup => "SIGHUP",
            };
            self.reload(trigger).await;
        }
    }

    /// Records the policy an instance starts with, so the policy chain
    /// says which version was in force from when, and re-checks live
    /// grants against it (the policy may have changed while no instance ran).
    pub async fn announce_start(&self) {
        let version = self.current.load().version().to_owned();
        let reason = Reason::new("policy.loaded", format!("started with {version}"));
        self.audit(EventType::PolicyLoaded, "loaded", version, reason, &candidate_version(&self.dir), Utc::now()).await;
        self.recheck.sweep_logged(&self.current.load_full()).await;
    }

    pub async fn reload(&self, trigger: &str) -> ReloadOutcome {
        let old = self.current.load_full();
        // The files' hash before and after the build: a rejection is
        // audited (and remembered, so the same files are audited once) only
        // for files that did not change while they were being checked —
        // else the reason would be filed under the next edit's hash, and
        // that edit's own rejection swallowed as a repeat.
        let candidate = candidate_version(&self.dir);
        if candidate == old.version() {
            self.files_in_force(&old, &candidate, trigger).await;
            return ReloadOutcome::Unchanged;
        }
        let outcome = match self.build(&old).await {
            Ok(None) => return ReloadOutcome::Unchanged,
            Ok(Some((new, added, removed))) => {
                let (old, new_version) = (old.version().to_owned(), new.version().to_owned());
                self.current.store(Arc::new(new));
                ReloadOutcome::Loaded { old, new: new_version, added, removed }
            }
            Err(error) => ReloadOutcome::Rejected { reason: error.to_string() },
        };
        let now = Utc::now();
        if let Some((event_type, word, version, reason)) = self.audit_entry(&outcome, &old, &candidate, trigger) {
            self.audit(event_type, word, version, reason, &candidate, now).await;
        }
        if let ReloadOutcome::Loaded { .. } = outcome {
            self.recheck.sweep_logged(&self.current.load_full()).await;
        }
        outcome
    }

    /// The files are the version in force (SIGHUP, a touch, an undone
    /// edit): nothing is built. An author who undoes a rejected edit
    /// withdraws it: the status must stop showing it, and making the same
    /// edit again is news.
    async fn files_in_force(&self, old: &Policy, candidate: &str, trigger: &str) {
        Health::count(&self.health.counters.policy_unchanged);
        let withdrawn = self.last_rejected.lock().expect("lock").take();
        if withdrawn.is_none() {
            return;
        }
        info!(message = "policy files are back at the version in force; the rejected edit is withdrawn", %trigger, in_force = %old.version());
        let message = format!(
            "the files are back at {}, which stays in force; the rejected edit is withdrawn ({trigger})",
            old.version()
        );
        let reason = Reason::new("policy.restored", message);
        self.audit(EventType::PolicyRestored, "restored", old.version().to_owned(), reason, candidate, Utc::now())
            .await;
    }

    /// Builds and checks the files off to the side: the new policy and how
    /// many rules it adds and removes, None when it is the version in force.
    /// Building 100k rules takes seconds of CPU: on a blocking thread, so
    /// the runtime's workers keep deciding meanwhile. The diff compares the
    /// two versions' rule fingerprints.
    async fn build(&self, old: &Arc<Policy>) -> Result<Option<(Policy, usize, usize)>, BuildError> {
        let dir = self.dir.clone();
        let handle = tokio::runtime::Handle::current();
        let previous = old.clone();
        tokio::task::spawn_blocking(move || {
            let new = handle.block_on(build_checked(&dir))?;
            if new.version() == previous.version() {
                return Ok(None);
            }
            let (added, removed) = previous.rule_changes(&new);
            Ok(Some((new, added, removed)))
        })
        .await
        .unwrap_or_else(|e| Err(BuildError::Panicked(e.to_string())))
    }

    /// What to audit of a reload (event type, outcome, version in force,
    /// reason), counted and logged; None for a rejection not to audit: the
    /// files changed while being checked (the change is checked next), or
    /// the same files were rejected before.
    fn audit_entry(
        &self,
        outcome: &ReloadOutcome,
        old: &Policy,
        candidate: &str,
        trigger: &str,
    ) -> Option<(EventType, &'static str, String, Reason)> {
        match outcome {
            ReloadOutcome::Unchanged => None,
            ReloadOutcome::Loaded { old, new, added, removed } => {
                Health::count(&self.health.counters.policy_reloads);
                info!(message = "policy reloaded", %trigger, old_version = %old, new_version = %new, rules_added = added, rules_removed = removed);
                *self.last_rejected.lock().expect("lock") = None;
                let message = format!("{old} -> {new}: {added} rule(s) added, {removed} removed ({trigger})");
                Some((EventType::PolicyLoaded, "loaded", new.clone(), Reason::new("policy.loaded", message)))
            }
            ReloadOutcome::Rejected { reason } => {
                if candidate_version(&self.dir) != candidate {
                    info!(message = "policy files changed while being checked; the change is checked next", %trigger);
                    return None;
                }
                if self.last_rejected.lock().expect("lock").replace(candidate.to_owned()).as_deref() == Some(candidate)
                {
                    return None;
                }
                Health::count(&self.health.counters.policy_rejections);
                error!(message = "policy edit rejected; the last good policy stays in force", %trigger, in_force = %old.version(), %reason);
                let message = format!("{reason} ({trigger}); {} stays in force", old.version());
                Some((
                    EventType::PolicyRejected,
                    "rejected",
                    old.version().to_owned(),
                    Reason::new("policy.rejected", message),
                ))
            }
        }
    }

    async fn audit(
        &self,
        event_type: EventType,
        outcome: &str,
        version: String,
        reason: Reason,
        files: &str,
        now: chrono::DateTime<Utc>,
    ) {
        let chain = ChainId::Policy { instance: self.instance_id.clone() }.to_string();
        let commit = Commit {
            idem_key: format!("policy:{}:{}", self.instance_id, uuid::Uuid::now_v7()),
            kind: "policy",
            decision: None,
            messages: vec![],
            audit: AuditEvent {
                actor: format!("tollgate/{}", self.instance_id),
                subject: String::new(),
                resource: self.dir.display().to_string(),
                action: "reload".into(),
                outcome: outcome.into(),
                reasons: vec![reason],
                policy_version: version,
                request_digest: files.trim_start_matches("sha256:").to_owned(),
                ..AuditEvent::draft(
                    chain.clone(),
                    event_type,
                    now,
                    opentelemetry::trace::TraceId::from_bytes(rand::random()).to_string(),
                )
            },
            usage: None,
            grant: None,
            review: None,
            supersedes: None,
            created_at: now.to_rfc3339(),
        };
        // Stored (and queued in the outbox) first: the database chain is
        // complete even if the broker is unreachable now, and the event is
        // published once it is back, also after a crash.
        match self.store.commit(commit).await {
            Ok(_) => {
                self.outbox.drain_logged().await;
            }
            Err(error) => error!(message = "policy audit event could not be stored", %error),
        }
    }
}

/// What an instance's policy chain says of it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstanceStatus {
    pub chain: String,
    pub version: Option<String>,
    pub loaded_at: Option<chrono::DateTime<chrono::Utc>>,
    pub loaded: String,
    /// A rejection after the last load: an edit waiting to be fixed.
    pub pending_rejection: Option<String>,
    pub rejected_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Per instance, from its policy chain: the version in force since when,
/// and any rejected edit since.
pub fn policy_status(events: &[AuditEvent]) -> Vec<InstanceStatus> {
    let mut by_chain: std::collections::BTreeMap<&str, InstanceStatus> = std::collections::BTreeMap::new();
    for e in events.iter().filter(|e| ChainId::parse(&e.chain).is_policy()) {
        let s = by_chain.entry(&e.chain).or_insert_with(|| InstanceStatus {
            chain: e.chain.clone(),
            version: None,
            loaded_at: None,
            loaded: String::new(),
            pending_rejection: None,
            rejected_at: None,
        });
        let message = e.reasons.first().map(|r| r.message.clone()).unwrap_or_default();
        match e.event_type {
            EventType::PolicyLoaded => {
                s.version = Some(e.policy_version.clone());
                s.loaded_at = Some(e.occurred_at);
                s.loaded = message;
                s.pending_rejection = None;
                s.rejected_at = None;
            }
            EventType::PolicyRejected => {
                s.pending_rejection = Some(message);
                s.rejected_at = Some(e.occurred_at);
            }
            EventType::PolicyRestored => {
                s.pending_rejection = None;
                s.rejected_at = None;
            }
            _ => {}
        }
    }
    by_chain.into_values().collect()
}
