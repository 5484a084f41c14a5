//! Human review over Kafka: a request the policy holds for review gets its
//! final decision from a reviewer of the dataset's holder department (or
//! the timeout), superseding the pending one.

use std::time::Duration;

use tollgate::auth::Claims;
use tollgate::contract::{AuditEvent, Decision, Outcome};

use crate::helpers::*;

/// The Xi'an tourism bureau (holder of GX-610100-TOUR-0001) and another department.
const XIAN_TOURISM: &str = "11610100MB00014076";
const TRANSPORT: &str = "11610000MB00011852";

fn reviewer(app: &TestApp, org: &str, roles: &[&str]) -> String {
    app.infra.idp.sign(&Claims::new(org, ISSUER, "tollgate", 600).with_roles(roles).for_organisation("Li Wei", org))
}

fn verdict(request_id: &str, verdict: &str, comment: &str, token: &str) -> Vec<u8> {
    serde_json::json!({"schema": "tollgate.review/v1", "request_id": request_id, "verdict": verdict, "comment": comment, "token": token})
        .to_string()
        .into_bytes()
}

impl TestApp {
    async fn send_verdict(&self, payload: &[u8]) {
        self.client.produce(&self.infra.topics.reviews, "reviewer", payload, &[]).await.expect("produce");
    }

    /// Sends a model-training request (held for review) and returns its pending decision.
    async fn pending(&self, id: &str, decisions: &tollgate::kafka::Reader) -> Decision {
        let token = self.infra.token(TRAVEL, &[], 600);
        self.send_json(&request(
            id,
            Some(&token),
            "smart-tourism",
            "GX-610100-TOUR-0001",
            "model_training",
            "industry",
        ))
        .await;
        let d = next_decision(decisions, id).await;
        assert_eq!(d.outcome, Outcome::PendingReview, "{:?}", d.reasons);
        d
    }
}

async fn next_decision(reader: &tollgate::kafka::Reader, request_id: &str) -> Decision {
    loop {
        let d = decision(&read_n(reader, 1).await[0]);
        if d.request_id == request_id {
            return d;
        }
    }
}

#[tokio::test]
async fn a_reviewer_of_the_holder_approves_and_the_final_decision_supersedes_the_pending_one_with_a_grant() {
    let app = spawn_app().await;
    let (decisions, replies) = (app.reader(&app.infra.topics.decisions), app.reader(&app.infra.topics.replies));
    let pending = app.pending("r-review-1", &decisions).await;
    let (status, queue) = app.get("/reviews").await;
    assert_eq!(status, 200);
    let queue: serde_json::Value = serde_json::from_str(&queue).unwrap();
    assert_eq!(queue["pending"][0]["request_id"], "r-review-1", "{queue}");
    assert_eq!(queue["pending"][0]["holder"], XIAN_TOURISM);
    let (_, other) = app.get(&format!("/reviews?holder={TRANSPORT}")).await;
    let other: serde_json::Value = serde_json::from_str(&other).unwrap();
    assert_eq!(other["pending"], serde_json::json!([]), "another department's queue holds none of it");

    app.send_verdict(&verdict(
        "r-review-1",
        "approve",
        "training on aggregates is fine",
        &reviewer(&app, XIAN_TOURISM, &["reviewer"]),
    ))
    .await;
    let answer = reply(&replies).await;
    let last = next_decision(&decisions, "r-review-1").await;
    assert_eq!(answer.outcome, "accepted", "{answer:?}");
    assert_eq!(answer.decision_id.as_deref(), Some(last.decision_id.as_str()));
    assert_eq!(last.outcome, Outcome::Approved, "{:?}", last.reasons);
    assert_eq!(last.supersedes.as_deref(), Some(pending.decision_id.as_str()));
    let review = last.review.as_ref().expect("the verdict is recorded");
    assert_eq!((review.reviewer.as_str(), review.organisation.as_str()), ("Li Wei", XIAN_TOURISM));
    assert!(last.grant.is_some(), "an approval after review carries a grant");
    let (_, queue) = app.get("/reviews").await;
    assert_eq!(serde_json::from_str::<serde_json::Value>(&queue).unwrap()["pending"], serde_json::json!([]));

    // The same request again gets the final decision, byte for byte.
    let token = app.infra.token(TRAVEL, &[], 600);
    app.send_json(&request(
        "r-review-1",
        Some(&token),
        "smart-tourism",
        "GX-610100-TOUR-0001",
        "model_training",
        "industry",
    ))
    .await;
    assert_eq!(next_decision(&decisions, "r-review-1").await, last);
    let audit: Vec<AuditEvent> = app.request_audit(3).await.iter().map(audit_event).collect();
    let event = audit.iter().find(|e| e.event_type == "review").expect("the verdict is audited");
    assert_eq!((event.actor.as_str(), event.outcome.as_str()), (XIAN_TOURISM, "approved"));
}

#[tokio::test]
async fn a_rejection_denies_the_request_with_the_reviewers_comment() {
    let app = spawn_app().await;
    let (decisions, replies) = (app.reader(&app.infra.topics.decisions), app.reader(&app.infra.topics.replies));
    app.pending("r-review-2", &decisions).await;
    let token = reviewer(&app, XIAN_TOURISM, &["reviewer"]);
    app.send_verdict(&verdict("r-review-2", "reject", "no training on visitor identities", &token)).await;
    assert_eq!(reply(&replies).await.outcome, "accepted");
    let last = next_decision(&decisions, "r-review-2").await;
    assert_eq!((last.outcome, last.reasons[0].code.as_str()), (Outcome::Denied, "review.rejected"));
    assert_eq!(last.reasons[0].message, "no training on visitor identities");
    assert!(last.grant.is_none());
}

#[tokio::test]
async fn verdicts_that_may_not_decide_are_refused_with_a_stable_code_and_change_nothing() {
    let app = spawn_app().await;
    let (decisions, replies) = (app.reader(&app.infra.topics.decisions), app.reader(&app.infra.topics.replies));
    app.pending("r-review-3", &decisions).await;
    let holder = reviewer(&app, XIAN_TOURISM, &["reviewer"]);
    let cases = [
        (verdict("r-review-3", "approve", "", &reviewer(&app, XIAN_TOURISM, &["data_user"])), "review.not_reviewer"),
        (verdict("r-review-3", "approve", "", &reviewer(&app, TRANSPORT, &["reviewer"])), "review.out_of_scope"),
        (verdict("r-review-3", "approve", "", &reviewer(&app, TRAVEL, &["reviewer"])), "review.out_of_scope"),
        (verdict("r-review-3", "reject", " ", &holder), "review.comment_required"),
        (verdict("r-no-such", "approve", "", &holder), "review.unknown_request"),
        (verdict("r-review-3", "approve", "", "not-a-jwt"), "auth.token_malformed"),
    ];
    for (payload, code) in &cases {
        app.send_verdict(payload).await;
        let answer = reply(&replies).await;
        assert_eq!((answer.outcome.as_str(), answer.reasons[0].code.as_str()), ("refused", *code), "{answer:?}");
    }
    // Someone of the requesting enterprise with a reviewer token for the
    // holder: no one reviews their own request.
    let own = app.infra.idp.sign(
        &Claims::new(TRAVEL, ISSUER, "tollgate", 600)
            .with_roles(&["reviewer"])
            .for_organisation("Li Wei", XIAN_TOURISM),
    );
    app.send_verdict(&verdict("r-review-3", "approve", "", &own)).await;
    assert_eq!(reply(&replies).await.reasons[0].code, "review.self_review");

    app.send_verdict(&verdict("r-review-3", "approve", "", &holder)).await;
    assert_eq!(reply(&replies).await.outcome, "accepted");
    app.send_verdict(&verdict("r-review-3", "reject", "changed my mind", &holder)).await;
    assert_eq!(reply(&replies).await.reasons[0].code, "review.already_decided");
}

#[tokio::test]
async fn a_request_pending_past_the_review_timeout_is_denied_review_timeout() {
    let infra = infra().await;
    let mut settings = infra.settings();
    settings.review.timeout_secs = 1;
    let app = start(infra, settings).await;
    let decisions = app.reader(&app.infra.topics.decisions);
    let pending = app.pending("r-review-4", &decisions).await;
    // Swept every 10 s.
    let last = tokio::time::timeout(Duration::from_secs(40), next_decision(&decisions, "r-review-4")).await.unwrap();
    assert_eq!((last.outcome, last.reasons[0].code.as_str()), (Outcome::Denied, "review.timeout"));
    assert_eq!(last.supersedes, Some(pending.decision_id));
    assert!(last.review.is_none());
}

#[tokio::test]
async fn a_reviewer_cannot_approve_what_the_policy_in_force_now_denies() {
    let infra = infra().await;
    let dir = policy_copy(&infra, false);
    let mut settings = infra.settings();
    settings.policy.dir = dir.clone();
    settings.policy.debounce_ms = 50;
    let app = start(infra, settings).await;
    let (decisions, replies) = (app.reader(&app.infra.topics.decisions), app.reader(&app.infra.topics.replies));
    app.pending("r-review-5", &decisions).await;
    // The enterprise leaves the scenario while its request waits.
    let rules = std::fs::read_to_string(dir.join("policy.csv")).unwrap();
    let admitted = format!("g, {TRAVEL}, tourism-developer, smart-tourism\n");
    std::fs::write(dir.join("policy.csv"), rules.replace(&admitted, "")).unwrap();
    let store = tollgate::store::Store::connect(&app.infra.database_url, 1).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let loaded =
        || async { store.audit_events().await.unwrap().iter().filter(|e| e.event_type == "policy_loaded").count() };
    while loaded().await < 2 {
        assert!(std::time::Instant::now() < deadline, "the edit was not loaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.send_verdict(&verdict("r-review-5", "approve", "", &reviewer(&app, XIAN_TOURISM, &["reviewer"]))).await;
    assert_eq!(reply(&replies).await.outcome, "accepted");
    let last = next_decision(&decisions, "r-review-5").await;
    assert_eq!((last.outcome, last.reasons[0].code.as_str()), (Outcome::Denied, "policy.no_matching_rule"));
    assert!(last.review.is_some() && last.grant.is_none());
}

#[tokio::test]
async fn a_verdict_read_again_publishes_exactly_what_it_published_before() {
    let app = spawn_app().await;
    let (decisions, replies) = (app.reader(&app.infra.topics.decisions), app.reader(&app.infra.topics.replies));
    app.pending("r-review-6", &decisions).await;
    app.send_verdict(&verdict("r-review-6", "approve", "", &reviewer(&app, XIAN_TOURISM, &["reviewer"]))).await;
    let first_reply = read_n(&replies, 1).await.remove(0);
    let first = read_n(&decisions, 1).await.remove(0);
    // A new consumer group reads every input again, as after a crash
    // before offsets were committed.
    let app = app.restart_with(|s| s.kafka.group_id = format!("{}-again", s.kafka.group_id)).await;
    let again_reply = read_n(&replies, 1).await.remove(0);
    assert_eq!(again_reply.payload, first_reply.payload, "the verdict's reply, byte for byte");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let m = read_n(&decisions, 1).await.remove(0);
        if decision(&m).request_id == "r-review-6" {
            seen.push(m.payload);
        }
    }
    assert!(seen.iter().all(|p| *p == first.payload), "request and verdict both publish the final decision");
    drop(app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_list_and_show_print_the_queue_from_the_database() {
    let app = spawn_app().await;
    let decisions = app.reader(&app.infra.topics.decisions);
    let pending = app.pending("r-review-7", &decisions).await;
    let run = |args: &[&str]| {
        let out = crate::binary::tollgate()
            .args(args)
            .env("TOLLGATE_DATABASE__URL", &app.infra.database_url)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let list: serde_json::Value = serde_json::from_str(&tokio::task::block_in_place(|| {
        run(&["review", "list", "--holder", XIAN_TOURISM, "--json"])
    }))
    .unwrap();
    assert_eq!(list["pending"][0]["pending_decision_id"], pending.decision_id.as_str(), "{list}");
    let other: serde_json::Value = serde_json::from_str(&tokio::task::block_in_place(|| {
        run(&["review", "list", "--holder", TRANSPORT, "--json"])
    }))
    .unwrap();
    assert_eq!(other["pending"], serde_json::json!([]), "another department's queue is empty");
    let text = tokio::task::block_in_place(|| run(&["review", "list"]));
    assert!(text.starts_with("1 request(s) pending review") && text.contains("r-review-7"), "{text}");
    let shown = tokio::task::block_in_place(|| run(&["review", "show", "r-review-7"]));
    assert!(shown.starts_with("r-review-7 PENDING"), "{shown}");

    // The queue's gauges, refreshed every 10 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(25);
    while !app.health.metrics().contains("\ntollgate_reviews_pending 1\n") {
        assert!(std::time::Instant::now() < deadline, "{}", app.health.metrics());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(app.health.metrics().contains("\ntollgate_review_oldest_pending_seconds "));
}
