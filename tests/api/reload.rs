use std::time::Duration;

use tollgate::contract::Outcome;

use crate::helpers::*;

/// Publishes a reloader's events to the test's audit topic.
fn outbox(infra: &Infra, store: &tollgate::store::Store) -> std::sync::Arc<tollgate::broker::outbox::Outbox> {
    let client = tollgate::kafka::Client::new(&infra.settings().kafka, &infra.bootstrap).unwrap();
    std::sync::Arc::new(tollgate::broker::outbox::Outbox::new(store.clone(), client, infra.topics.clone()))
}

/// Re-checks live grants after reloads only.
fn recheck(
    infra: &Infra,
    store: &tollgate::store::Store,
    health: &std::sync::Arc<tollgate::ops::Health>,
) -> (tollgate::broker::recheck::Recheck, Option<Duration>) {
    let outbox = outbox(infra, store);
    (tollgate::broker::recheck::Recheck::new(store.clone(), outbox, "test", health.clone()), None)
}

/// Waits for a policy audit event of `event_type` whose reason mentions
/// `needle` (an editor's partial write may be seen, and rejected, first).
async fn policy_event(
    reader: &tollgate::kafka::Reader,
    event_type: &str,
    needle: &str,
) -> tollgate::contract::AuditEvent {
    loop {
        let m =
            reader.next(WAIT).await.unwrap().unwrap_or_else(|| panic!("no {event_type} audit event with {needle:?}"));
        let e = audit_event(&m);
        if e.event_type == event_type && e.reasons.iter().any(|r| r.message.contains(needle)) {
            return e;
        }
    }
}

#[tokio::test]
async fn edited_policy_is_reloaded_and_a_bad_edit_keeps_the_last_good_one() {
    let infra = infra().await;
    let dir = policy_copy(&infra, true);
    let mut settings = infra.settings();
    settings.policy.dir = dir.clone();
    settings.policy.debounce_ms = 200;
    let app = start(infra, settings).await;
    let token = || app.infra.token(TRAVEL, &[], 600);
    let decisions = app.reader(&app.infra.topics.decisions);
    let audit = app.reader(&app.infra.topics.audit);
    let ask = |id: &str| request(id, Some(&token()), "smart-tourism", "GX-610100-TOUR-0001", "download", "industry");

    app.send_json(&ask("before")).await;
    let before = decision(&read_n(&decisions, 1).await[0]);
    assert_eq!(before.reasons[0].code, "policy.no_matching_rule");

    // The author grants downloads of tourism data.
    let rules = std::fs::read_to_string(dir.join("policy.csv")).unwrap();
    let granted = format!("{rules}\np, tourism-developer, smart-tourism, tourism-data, download, allow\n");
    std::fs::write(dir.join("policy.csv"), &granted).unwrap();
    let loaded = policy_event(&audit, "policy_loaded", "1 rule(s) added, 0 removed").await;
    assert_eq!(loaded.outcome, "loaded");
    assert_ne!(loaded.policy_version, before.policy_version);

    app.send_json(&ask("after")).await;
    let after = decision(&read_n(&decisions, 1).await[0]);
    assert_eq!(after.outcome, Outcome::Approved, "{:?}", after.reasons);
    assert_eq!(after.policy_version, loaded.policy_version);

    // A rule naming a scenario that does not exist: rejected, nothing changes.
    std::fs::write(
        dir.join("policy.csv"),
        format!("{granted}p, tourism-developer, smart-tourizm, tourism-data, query, allow\n"),
    )
    .unwrap();
    let rejected = policy_event(&audit, "policy_rejected", "unknown scenario smart-tourizm").await;
    assert_eq!(rejected.policy_version, loaded.policy_version, "the last good policy stays in force");

    // An edit that parses but breaks a shipped policy test: also rejected.
    std::fs::write(dir.join("policy.csv"), format!("{granted}p, *, *, grade:important, privacy_compute, deny\n"))
        .unwrap();
    let rejected = policy_event(&audit, "policy_rejected", "policy test(s) failed").await;
    assert_eq!(rejected.policy_version, loaded.policy_version);

    app.send_json(&ask("during-bad-edit")).await;
    let during = decision(&read_n(&decisions, 1).await[0]);
    assert_eq!(during.outcome, Outcome::Approved);
    assert_eq!(during.policy_version, loaded.policy_version);

    // The policy chain verifies like any other.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut app = app;
    app.stop().await;
    let pool_events =
        tollgate::store::Store::connect(&app.infra.database_url, 1).await.unwrap().audit_events().await.unwrap();
    let report = tollgate::audit::verify(&pool_events).unwrap();
    assert!(report.chains.keys().any(|c| c.starts_with("policy/")));

    // `tollgate policy status` shows the version in force and the rejected edit.
    let status = tollgate::broker::reload::policy_status(&pool_events);
    assert_eq!(status[0].version.as_deref(), Some(loaded.policy_version.as_str()));
    assert!(status[0].pending_rejection.as_deref().unwrap_or_default().contains("policy test(s) failed"), "{status:?}");
}

#[tokio::test]
async fn the_same_rejected_files_are_audited_once_and_a_new_bad_edit_again() {
    use std::sync::Arc;
    use tollgate::broker::reload::{ReloadOutcome, Reloader};

    let infra = infra().await;
    let dir = policy_copy(&infra, true);
    let store = tollgate::store::Store::connect(&infra.database_url, 1).await.unwrap();
    let policy = tollgate::broker::reload::build_checked(&dir).await.unwrap();
    let health = tollgate::ops::Health::new();
    let settings = tollgate::config::PolicySettings { dir: dir.clone(), watch: false, debounce_ms: 10 };
    let current = Arc::new(arc_swap::ArcSwap::from_pointee(policy));
    let reloader = Reloader::new(
        &settings,
        "dedupe",
        current.clone(),
        store.clone(),
        outbox(&infra, &store),
        health.clone(),
        recheck(&infra, &store, &health),
    );
    // A trigger with the files in force (SIGHUP, a touch) builds nothing.
    assert_eq!(reloader.reload("test").await, ReloadOutcome::Unchanged);
    assert_eq!(health.counters.policy_unchanged.load(std::sync::atomic::Ordering::Relaxed), 1);
    let rejections =
        || async { store.audit_events().await.unwrap().iter().filter(|e| e.event_type == "policy_rejected").count() };
    let rules = std::fs::read_to_string(dir.join("policy.csv")).unwrap();
    std::fs::write(dir.join("policy.csv"), format!("{rules}p, broken\n")).unwrap();
    assert!(matches!(reloader.reload("test").await, ReloadOutcome::Rejected { .. }));
    // An editor writing the same bad file again: rejected, not audited again.
    assert!(matches!(reloader.reload("test").await, ReloadOutcome::Rejected { .. }));
    assert_eq!(rejections().await, 1);
    // A different bad edit is news.
    std::fs::write(dir.join("policy.csv"), format!("{rules}p, broken, again\n")).unwrap();
    assert!(matches!(reloader.reload("test").await, ReloadOutcome::Rejected { .. }));
    assert_eq!(rejections().await, 2);
    let status = || async { tollgate::broker::reload::policy_status(&store.audit_events().await.unwrap()) };
    assert!(status().await[0].pending_rejection.is_some());
    // The author undoes the edit: the rejection is withdrawn (audited, and
    // gone from the status) ...
    std::fs::write(dir.join("policy.csv"), &rules).unwrap();
    assert_eq!(reloader.reload("test").await, ReloadOutcome::Unchanged);
    let events = store.audit_events().await.unwrap();
    let restored: Vec<_> = events.iter().filter(|e| e.event_type == "policy_restored").collect();
    assert_eq!(restored.len(), 1);
    assert_eq!(restored[0].policy_version, current.load().version());
    assert!(status().await[0].pending_rejection.is_none(), "{:?}", status().await);
    // ... and only once: another trigger with the same files is just unchanged.
    assert_eq!(reloader.reload("test").await, ReloadOutcome::Unchanged);
    assert_eq!(store.audit_events().await.unwrap().iter().filter(|e| e.event_type == "policy_restored").count(), 1);
    // Making the same bad edit again is news again.
    std::fs::write(dir.join("policy.csv"), format!("{rules}p, broken, again\n")).unwrap();
    assert!(matches!(reloader.reload("test").await, ReloadOutcome::Rejected { .. }));
    assert_eq!(rejections().await, 3);
    assert!(tollgate::audit::verify(&store.audit_events().await.unwrap()).is_ok());
}

#[tokio::test]
async fn reading_the_policy_files_triggers_no_reload_and_an_edit_does() {
    use std::sync::Arc;
    use std::sync::atomic::Ordering::Relaxed;
    use tollgate::broker::reload::Reloader;

    let infra = infra().await;
    let dir = policy_copy(&infra, true);
    let store = tollgate::store::Store::connect(&infra.database_url, 1).await.unwrap();
    let policy = tollgate::broker::reload::build_checked(&dir).await.unwrap();
    let health = tollgate::ops::Health::new();
    let settings = tollgate::config::PolicySettings { dir: dir.clone(), watch: true, debounce_ms: 50 };
    let reloader = Reloader::new(
        &settings,
        "watch",
        Arc::new(arc_swap::ArcSwap::from_pointee(policy)),
        store.clone(),
        outbox(&infra, &store),
        health.clone(),
        recheck(&infra, &store, &health),
    );
    let watch = reloader.watch_files();
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(reloader.run(watch, stop.clone()));
    let c = &health.counters;
    let reloads = || [&c.policy_reloads, &c.policy_rejections, &c.policy_unchanged].map(|n| n.load(Relaxed));

    // Linters, backups and the reload itself open and read the files.
    for _ in 0..5 {
        for f in ["model.conf", "policy.csv", "catalogue.toml", "tests/domain_rules.toml"] {
            std::fs::read_to_string(dir.join(f)).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(reloads(), [0, 0, 0], "[loaded, rejected, unchanged] after reads only");

    let rules = std::fs::read_to_string(dir.join("policy.csv")).unwrap();
    std::fs::write(
        dir.join("policy.csv"),
        format!("{rules}\np, tourism-developer, smart-tourism, tourism-data, download, allow\n"),
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while reloads()[0] == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the edit was not loaded: {:?}", reloads());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The reload's own reads of the new files start nothing further.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(reloads(), [1, 0, 0]);
    stop.cancel();
    running.await.unwrap();
}

/// What a crash between storing a policy event and publishing it leaves:
/// the event (and its outbox entry) in the database, not on the topic. No
/// input will ever be redelivered for it; the next start must publish it.
#[tokio::test]
async fn a_policy_event_stored_before_a_crash_reaches_the_topic_at_the_next_start() {
    let infra = infra().await;
    let store = tollgate::store::Store::connect(&infra.database_url, 1).await.unwrap();
    let now = chrono::Utc::now();
    let crashed = tollgate::store::Commit {
        idem_key: "policy:crashed:1".into(),
        kind: "policy",
        decision: None,
        messages: vec![],
        audit: tollgate::contract::AuditEvent {
            actor: "tollgate/crashed".into(),
            action: "reload".into(),
            outcome: "loaded".into(),
            policy_version: "sha256:before-the-crash".into(),
            ..tollgate::contract::AuditEvent::draft(
                "policy/crashed".into(),
                tollgate::contract::EventType::PolicyLoaded,
                now,
                "t".into(),
            )
        },
        usage: None,
        grant: None,
        review: None,
        supersedes: None,
        created_at: now.to_rfc3339(),
    };
    store.commit(crashed).await.unwrap();
    assert_eq!(store.outbox().await.unwrap().len(), 1, "stored and queued, never published");

    let settings = infra.settings();
    let mut app = start(infra, settings).await;
    let audit = app.reader(&app.infra.topics.audit);
    let mut chains = std::collections::BTreeSet::new();
    while chains.len() < 2 {
        let e = audit_event(&read_n(&audit, 1).await[0]);
        assert_eq!((e.event_type.as_str(), e.seq), ("policy_loaded", 1));
        chains.insert(e.chain);
    }
    assert!(chains.contains("policy/crashed"), "{chains:?}");
    // An event leaves the outbox once the broker acknowledged it, which a
    // reader may see first (seen once on tansu + PostgreSQL): wait for
    // it before stopping, since a stop cancels the start's drain.
    let deadline = std::time::Instant::now() + WAIT;
    while !store.outbox().await.unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "published events leave the outbox");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;

    // The topic holds every stored event: the same distinct count as the database.
    let stored = store.audit_events().await.unwrap().len();
    let out = crate::binary::tollgate()
        .args(["audit", "verify", "--kafka"])
        .env("TOLLGATE_KAFKA__BOOTSTRAP_SERVERS", &app.infra.bootstrap)
        .env("TOLLGATE_TOPICS__AUDIT", &app.infra.topics.audit)
        .env("TOLLGATE_TOPICS__CHECKPOINTS", &app.infra.topics.checkpoints)
        .env("TOLLGATE_DATABASE__URL", &app.infra.database_url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("ok: {stored} events on 2 chain(s)")), "{stdout}");
}

#[tokio::test]
async fn a_service_does_not_start_on_a_policy_whose_tests_fail_and_names_them() {
    use tollgate::app::{App, AppError};
    use tollgate::broker::reload::BuildError;

    let infra = infra().await;
    let dir = policy_copy(&infra, true);
    let rules = std::fs::read_to_string(dir.join("policy.csv")).unwrap();
    std::fs::write(dir.join("policy.csv"), format!("{rules}\np, *, *, grade:important, privacy_compute, deny\n"))
        .unwrap();
    let mut settings = infra.settings();
    settings.policy.dir = dir;
    // The first policy is built on a thread of its own (`build_apart`);
    // what it finds wrong reaches the caller all the same.
    let refused = App::build(settings).await.err().expect("the service refuses to start");
    match &refused {
        AppError::Policy { source: BuildError::TestsFailed(failed), .. } => {
            assert!(failed.iter().all(|f| f.contains("domain_rules.toml")), "{failed:?}")
        }
        other => panic!("expected failed policy tests, got {other}"),
    }
}

#[tokio::test]
async fn a_policy_built_for_the_service_keeps_no_copy_of_its_rules_text() {
    let policy = tollgate::broker::reload::build_checked(&repo_policies()).await.unwrap();
    assert!(policy.rule_count() > 0);
    // With 100k rules the text is 5.6 MB held for nothing: the service
    // compares versions by fingerprints, so reading the rules must fail.
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(policy.rules())));
    assert!(read.is_err(), "the service's policy still holds policy.csv's text");
}
