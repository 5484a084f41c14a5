use std::collections::{BTreeMap, BTreeSet};

use tollgate::contract::{Outcome, UsageRecord};

use crate::helpers::*;

#[tokio::test]
async fn redelivered_request_gets_its_original_decision_byte_for_byte() {
    let app = spawn_app().await;
    let token = || app.infra.token(TRAVEL, &[], 600);
    let body =
        request("r-twice", Some(&token()), "smart-tourism", "GX-610100-TOUR-0001", "query", "industry").to_string();
    app.send(TRAVEL, body.as_bytes()).await;
    app.send(TRAVEL, body.as_bytes()).await;

    let decisions = read_n(&app.reader(&app.infra.topics.decisions), 2).await;
    assert_eq!(decisions[0].payload, decisions[1].payload, "same decision, same bytes");
    assert_eq!(decision(&decisions[0]).outcome, Outcome::Approved);

    // Usage and audit are re-published identically, never recorded twice.
    let usage = read_n(&app.reader(&app.infra.topics.usage), 2).await;
    assert_eq!(usage[0].payload, usage[1].payload);
    let audit: Vec<_> = app.request_audit(2).await.iter().map(audit_event).collect();
    let report = tollgate::audit::verify(&audit).unwrap();
    assert_eq!(report.duplicates, 1);
}

#[tokio::test]
async fn request_decided_in_an_earlier_batch_is_republished_from_the_store_byte_for_byte() {
    let app = spawn_app().await;
    let body = request(
        "r-later",
        Some(&app.infra.token(TRAVEL, &[], 600)),
        "smart-tourism",
        "GX-610100-TOUR-0001",
        "query",
        "industry",
    )
    .to_string();
    app.send(TRAVEL, body.as_bytes()).await;
    let (decisions, usage) = (app.reader(&app.infra.topics.decisions), app.reader(&app.infra.topics.usage));
    let first = read_n(&decisions, 1).await.remove(0);
    assert_eq!(decision(&first).outcome, Outcome::Approved);
    // Decided and stored: the same request again is a batch of its own,
    // answered from the database.
    app.send(TRAVEL, body.as_bytes()).await;
    let again = read_n(&decisions, 1).await.remove(0);
    assert_eq!(first.payload, again.payload);
    let usage = read_n(&usage, 2).await;
    assert_eq!(usage[0].payload, usage[1].payload);
    let audit = app.request_audit(2).await;
    assert_eq!(audit[0].payload, audit[1].payload, "the audit event is re-published byte for byte");

    // The stored outcome holds the audit event and usage record by
    // reference: their bytes are written once, in their own tables.
    sqlx::any::install_default_drivers();
    let db = sqlx::AnyPool::connect(&app.infra.database_url).await.unwrap();
    let stored: String = sqlx::query_scalar("SELECT outputs FROM outcomes WHERE idem_key = 'request:r-later'")
        .fetch_one(&db)
        .await
        .unwrap();
    let event = audit_event(&audit[0]);
    assert!(!stored.contains(&event.hash), "{stored}");
    assert!(stored.contains(&format!("\"seq\":{}", event.seq)), "{stored}");
    let record: UsageRecord = serde_json::from_slice(&usage[0].payload).unwrap();
    assert!(stored.contains(&record.usage_id) && !stored.contains("amount_fen"), "{stored}");
}

#[tokio::test]
async fn restart_mid_stream_loses_nothing_and_decides_nothing_twice() {
    let app = spawn_app().await;
    send_batch(&app, 0..40).await;
    let reader = app.reader(&app.infra.topics.decisions);
    // Stop while the first batch is still being worked on.
    let _ = read_n(&reader, 5).await;
    let app = app.restart().await;
    send_batch(&app, 40..80).await;

    let mut by_request: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut bytes: BTreeMap<String, BTreeSet<Vec<u8>>> = BTreeMap::new();
    let mut seen = 5;
    while by_request.len() < 75 {
        let m = read_n(&reader, 1).await.remove(0);
        let d = decision(&m);
        seen += 1;
        by_request.entry(d.request_id.clone()).or_default().insert(d.decision_id.clone());
        bytes.entry(d.request_id).or_default().insert(m.payload);
        assert!(seen < 400, "far more decisions than requests");
    }
    for (id, decisions) in &by_request {
        assert_eq!(decisions.len(), 1, "{id} was decided more than once");
        assert_eq!(bytes[id].len(), 1, "{id} was re-published with different bytes");
    }
    // Every usage record belongs to exactly one approval: the ledger in the
    // topic matches the decisions.
    let usage = read_n(&app.reader(&app.infra.topics.usage), 75).await;
    let ids: BTreeSet<String> =
        usage.iter().map(|m| serde_json::from_slice::<UsageRecord>(&m.payload).unwrap().request_id).collect();
    assert!(ids.len() >= 75);
    let audit: Vec<_> = app.request_audit(75).await.iter().map(audit_event).collect();
    tollgate::audit::verify(&audit).expect("audit chains verify across the restart");
}

#[tokio::test]
async fn monthly_quota_is_enforced_from_the_usage_ledger() {
    let infra = infra().await;
    let mut settings = infra.settings();
    settings.policy.dir = quota_of_two(&infra);
    let app = start(infra, settings).await;

    let token = || app.infra.token(TRAVEL, &[], 600);
    let reader = app.reader(&app.infra.topics.decisions);
    let mut outcomes = Vec::new();
    for i in 0..3 {
        // One at a time, so the ledger order is the request order.
        app.send_json(&request(
            &format!("q-{i}"),
            Some(&token()),
            "smart-tourism",
            "GX-610100-TOUR-0001",
            "query",
            "industry",
        ))
        .await;
        outcomes.push(decision(&read_n(&reader, 1).await[0]));
    }
    assert_eq!(outcomes[0].outcome, Outcome::Approved);
    assert_eq!(outcomes[1].grant.as_ref().unwrap().quota.unwrap().remaining, 0);
    assert_eq!(outcomes[2].reasons[0].code, "quota.exceeded");
    let audit: Vec<_> = app.request_audit(3).await.iter().map(audit_event).collect();
    assert!(audit.iter().any(|e| e.event_type == "quota_exceeded"));
}

/// A copy of the shipped policies with a quota of 2 calls on GX-610100-TOUR-0001.
fn quota_of_two(infra: &Infra) -> std::path::PathBuf {
    let dir = infra.dir.path().join("policies");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["model.conf", "policy.csv"] {
        std::fs::copy(repo_policies().join(f), dir.join(f)).unwrap();
    }
    let catalogue = std::fs::read_to_string(repo_policies().join("catalogue.toml")).unwrap();
    let patched = catalogue.replacen("cap_fen = 80, monthly_quota = 100000", "cap_fen = 80, monthly_quota = 2", 1);
    assert_ne!(patched, catalogue);
    std::fs::write(dir.join("catalogue.toml"), patched).unwrap();
    dir
}

#[tokio::test]
async fn quota_and_repeats_hold_within_one_batch() {
    let infra = infra().await;
    let mut settings = infra.settings();
    settings.policy.dir = quota_of_two(&infra);
    // Queued before the service starts, so its first fetch takes them all
    // into one batch: decisions there are drafted before any is stored.
    let client = tollgate::kafka::Client::new(&settings.kafka, &infra.bootstrap).unwrap();
    let body = |i: usize| {
        let token = infra.token(TRAVEL, &[], 600);
        request(&format!("b-{i}"), Some(&token), "smart-tourism", "GX-610100-TOUR-0001", "query", "industry")
            .to_string()
    };
    let first = body(0);
    for payload in [first.clone(), first.clone(), body(1), body(2), first] {
        client.produce(&infra.topics.requests, TRAVEL, payload.as_bytes(), &[]).await.unwrap();
    }
    let app = start(infra, settings).await;

    let messages = read_n(&app.reader(&app.infra.topics.decisions), 5).await;
    let decided: Vec<_> = messages.iter().map(decision).collect();
    let ids: Vec<&str> = decided.iter().map(|d| d.request_id.as_str()).collect();
    assert_eq!(ids, ["b-0", "b-0", "b-1", "b-2", "b-0"]);
    assert_eq!(messages[0].payload, messages[1].payload, "a repeat is the same decision");
    assert_eq!(messages[0].payload, messages[4].payload);
    assert_eq!(decided[0].outcome, Outcome::Approved);
    assert_eq!(decided[2].grant.as_ref().unwrap().quota.unwrap().remaining, 0);
    assert_eq!(decided[3].reasons[0].code, "quota.exceeded", "the batch's own approvals count");
    let usage = read_n(&app.reader(&app.infra.topics.usage), 4).await;
    let ids: BTreeSet<String> =
        usage.iter().map(|m| serde_json::from_slice::<UsageRecord>(&m.payload).unwrap().request_id).collect();
    assert_eq!(ids, BTreeSet::from(["b-0".to_owned(), "b-1".to_owned()]));
}

async fn send_batch(app: &TestApp, range: std::ops::Range<usize>) {
    for i in range {
        let token = app.infra.token(TRAVEL, &[], 600);
        let body =
            request(&format!("r-{i:03}"), Some(&token), "smart-tourism", "GX-610100-TOUR-0001", "query", "industry");
        app.send(TRAVEL, body.to_string().as_bytes()).await;
    }
}

#[tokio::test]
async fn token_ids_are_forgotten_once_their_token_has_expired() {
    let infra = infra().await;
    let store = tollgate::store::Store::connect(&infra.database_url, 1).await.unwrap();
    let now = chrono::Utc::now().timestamp();
    let mut batch = store.begin().await.unwrap();
    use tollgate::store::TokenUse;
    assert_eq!(batch.use_token(ISSUER, "old", "r-1", now - 3600).await.unwrap(), TokenUse::Fresh);
    assert_eq!(batch.use_token(ISSUER, "live", "r-2", now + 3600).await.unwrap(), TokenUse::Fresh);
    // Within one batch too, another request with a used id is a replay.
    assert_eq!(batch.use_token(ISSUER, "live", "r-3", now + 3600).await.unwrap(), TokenUse::UsedBy("r-2".into()));
    batch.finish().await.unwrap();

    assert_eq!(store.purge_token_uses(now, 60).await.unwrap(), 1, "only the expired token's row goes");
    let mut batch = store.begin().await.unwrap();
    assert_eq!(batch.use_token(ISSUER, "old", "r-4", now + 3600).await.unwrap(), TokenUse::Fresh);
    assert_eq!(batch.use_token(ISSUER, "live", "r-5", now + 3600).await.unwrap(), TokenUse::UsedBy("r-2".into()));
    // The same request again is not a replay.
    assert_eq!(batch.use_token(ISSUER, "live", "r-2", now + 3600).await.unwrap(), TokenUse::Fresh);
    batch.finish().await.unwrap();
}

/// Fails its first batch as a conflict (another instance stored a token id
/// first), then passes every input through to `out`.
struct ConflictOnce {
    tripped: std::sync::atomic::AtomicBool,
    out: String,
}

impl tollgate::kafka::Processor for ConflictOnce {
    type Prepared = ();

    fn prepare(&self, _: &[tollgate::kafka::ConsumedMessage]) {}

    async fn process_batch(
        &self,
        msgs: &[tollgate::kafka::ConsumedMessage],
        _: (),
    ) -> Result<Vec<Vec<tollgate::kafka::OutgoingMessage>>, tollgate::kafka::ProcessError> {
        if !self.tripped.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(tollgate::kafka::ProcessError::Conflict("token id stored by another instance".into()));
        }
        Ok(msgs
            .iter()
            .map(|m| {
                let payload = String::from_utf8_lossy(&m.payload).into_owned();
                vec![tollgate::kafka::OutgoingMessage {
                    topic: self.out.clone(),
                    key: "k".into(),
                    payload,
                    headers: vec![],
                }]
            })
            .collect())
    }

    fn refused(
        &self,
        _: &tollgate::kafka::ConsumedMessage,
        output: &tollgate::kafka::OutgoingMessage,
        _: &str,
        _: bool,
    ) -> tollgate::kafka::OutgoingMessage {
        output.clone()
    }
}

#[tokio::test]
async fn a_conflict_with_another_instance_is_decided_again_at_once_without_pausing() {
    let infra = infra().await;
    let settings = infra.settings();
    let health = tollgate::ops::Health::new();
    let pipeline = tollgate::kafka::LoopClients::new(
        &settings.kafka,
        &infra.bootstrap,
        &[&infra.topics.requests],
        health.clone(),
        None,
        "c",
    )
    .unwrap();
    let processor =
        std::sync::Arc::new(ConflictOnce { tripped: Default::default(), out: infra.topics.decisions.clone() });
    let stop = tokio_util::sync::CancellationToken::new();
    let limits = tollgate::kafka::Limits::from(&settings.service);
    let run = {
        let (stop, health) = (stop.clone(), health.clone());
        tokio::spawn(async move {
            tollgate::kafka::run(pipeline, processor, stop, std::time::Duration::from_secs(5), limits, &health).await
        })
    };
    let client = tollgate::kafka::Client::new(&settings.kafka, &infra.bootstrap).unwrap();
    for i in 0..3 {
        client.produce(&infra.topics.requests, "one-partition", format!("input-{i}").as_bytes(), &[]).await.unwrap();
    }
    let reader = client.reader(&[&infra.topics.decisions], "conflict-test").unwrap();
    let out: Vec<Vec<u8>> = read_n(&reader, 3).await.into_iter().map(|m| m.payload).collect();
    assert_eq!(out, [b"input-0".to_vec(), b"input-1".to_vec(), b"input-2".to_vec()], "in order, each once");
    stop.cancel();
    run.await.unwrap().unwrap();
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(get(&health.counters.conflicts), 1);
    assert_eq!(get(&health.counters.processing_retries), 0, "a conflict is not an outage");
}
