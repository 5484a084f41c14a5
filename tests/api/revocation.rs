//! Withdrawing grants: operators' revoke commands over Kafka, and grants
//! the policy no longer allows. Data hosts learn of each on the grants
//! topic and from the revocation list; `verify_grant` with that list
//! refuses the grant.

use std::time::Duration;

use tollgate::auth::Claims;
use tollgate::auth::grant::verify_grant;
use tollgate::contract::{AuditEvent, GrantEvent};

use crate::grants::{approved_grant, check, jwks};
use crate::helpers::*;

/// An operator at the provincial data bureau.
const OPERATOR: &str = "11610000MB0001111E";

fn operator_token(app: &TestApp, roles: &[&str]) -> String {
    app.infra.idp.sign(&Claims::new(OPERATOR, ISSUER, "tollgate", 600).with_roles(roles))
}

fn revoke(id: &str, token: &str, target: serde_json::Value, reason: &str) -> Vec<u8> {
    serde_json::json!({"schema": "tollgate.revoke/v1", "command_id": id, "token": token, "target": target, "reason": reason})
        .to_string()
        .into_bytes()
}

impl TestApp {
    async fn command(&self, payload: &[u8]) {
        self.client.produce(&self.infra.topics.revocations, "ops", payload, &[]).await.expect("produce");
    }
}

fn jti(grant: &str) -> String {
    let v = jsonwebtoken::dangerous::insecure_decode::<serde_json::Value>(grant).unwrap();
    v.claims["jti"].as_str().unwrap().to_owned()
}

async fn revocation_list(app: &TestApp) -> serde_json::Value {
    let (status, body) = app.get("/revocations").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn an_operator_revokes_a_grant_and_data_hosts_see_it_on_the_grants_topic_and_the_revocation_list() {
    let app = spawn_app().await;
    let grant = approved_grant(&app, "r-revoke-1").await;
    let (replies, events) = (app.reader(&app.infra.topics.replies), app.reader(&app.infra.topics.grants));
    let id = jti(&grant);
    let command =
        revoke("c-1", &operator_token(&app, &["operator"]), serde_json::json!({"grant": id}), "contract ended");
    app.command(&command).await;

    let answer = reply(&replies).await;
    assert_eq!((answer.outcome.as_str(), answer.revoked.clone()), ("accepted", vec![id.clone()]), "{answer:?}");
    let m = &read_n(&events, 1).await[0];
    let event: GrantEvent = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(m.key.as_deref(), Some(id.as_bytes()), "grant events are keyed by decision id");
    assert_eq!(
        (event.event.as_str(), event.reason.code.as_str(), event.by.as_str()),
        ("revoked", "revoke.command", OPERATOR)
    );
    assert_eq!((event.reason.message.as_str(), event.holder.as_str()), ("contract ended", "11610100MB00014076"));

    let list = revocation_list(&app).await;
    assert_eq!(list["revoked"][0]["decision_id"], id.as_str(), "{list}");
    let with_list = check().with_revocation_list(&list).unwrap();
    let refused = verify_grant(&grant, &jwks(&app).await, &with_list, chrono::Utc::now().timestamp()).unwrap_err();
    assert_eq!(refused.code(), "grant.revoked");

    // The same command again (a retry or a redelivery) gets the same answer,
    // and changes nothing more.
    app.command(&command).await;
    assert_eq!(reply(&replies).await, answer);
    let audit: Vec<AuditEvent> = app.request_audit(3).await.iter().map(audit_event).collect();
    let revocation = audit.iter().find(|e| e.event_type == "revocation").expect("the revocation is audited");
    assert_eq!((revocation.actor.as_str(), revocation.outcome.as_str()), (OPERATOR, "accepted"));
    assert_eq!(revocation.resource, format!("grant:{id}"));
}

#[tokio::test]
async fn a_revoke_command_is_refused_with_a_stable_code_and_changes_nothing() {
    let app = spawn_app().await;
    let grant = approved_grant(&app, "r-refuse-1").await;
    let id = jti(&grant);
    let replies = app.reader(&app.infra.topics.replies);
    let operator = operator_token(&app, &["operator"]);
    let target = serde_json::json!({"grant": id});
    let cases = [
        ("c-role", revoke("c-role", &operator_token(&app, &["data_user"]), target.clone(), "x"), "revoke.not_operator"),
        ("c-reason", revoke("c-reason", &operator, target.clone(), "  "), "revoke.reason_missing"),
        (
            "c-unknown",
            revoke("c-unknown", &operator, serde_json::json!({"grant": "no-such"}), "x"),
            "revoke.unknown_grant",
        ),
        ("c-token", revoke("c-token", "not-a-jwt", target.clone(), "x"), "auth.token_malformed"),
    ];
    for (command_id, payload, code) in &cases {
        app.command(payload).await;
        let answer = reply(&replies).await;
        assert_eq!(&answer.command_id, command_id);
        assert_eq!((answer.outcome.as_str(), answer.reasons[0].code.as_str()), ("refused", *code), "{answer:?}");
        assert!(answer.revoked.is_empty());
    }
    assert_eq!(revocation_list(&app).await["revoked"], serde_json::json!([]), "refusals revoke nothing");

    // Revoking it twice: the second is refused as already revoked.
    app.command(&revoke("c-first", &operator, target.clone(), "breach")).await;
    assert_eq!(reply(&replies).await.outcome, "accepted");
    app.command(&revoke("c-second", &operator, target, "breach")).await;
    assert_eq!(reply(&replies).await.reasons[0].code, "revoke.already_revoked");
}

#[tokio::test]
async fn revoking_an_enterprise_withdraws_all_its_live_grants_and_no_one_elses() {
    let app = spawn_app().await;
    let mut want = vec![jti(&approved_grant(&app, "r-ent-1").await), jti(&approved_grant(&app, "r-ent-2").await)];
    let replies = app.reader(&app.infra.topics.replies);
    let target = serde_json::json!({"enterprise": TRAVEL});
    app.command(&revoke("c-ent", &operator_token(&app, &["operator"]), target, "licence withdrawn")).await;
    let mut revoked = reply(&replies).await.revoked;
    revoked.sort();
    want.sort();
    assert_eq!(revoked, want);
    let target = serde_json::json!({"enterprise": RESCUE});
    app.command(&revoke("c-other", &operator_token(&app, &["operator"]), target, "licence withdrawn")).await;
    let answer = reply(&replies).await;
    assert_eq!((answer.outcome.as_str(), answer.revoked.len()), ("accepted", 0), "nothing of another enterprise");
}

#[tokio::test]
async fn a_policy_edit_revokes_the_live_grants_it_no_longer_allows() {
    let infra = infra().await;
    // The shipped policy without its tests (they approve this enterprise).
    let dir = policy_copy(&infra, false);
    let mut settings = infra.settings();
    settings.policy.dir = dir.clone();
    settings.policy.debounce_ms = 50;
    let app = start(infra, settings).await;
    let grant = approved_grant(&app, "r-policy-1").await;
    let events = app.reader(&app.infra.topics.grants);

    // The enterprise leaves the smart-tourism scenario.
    let rules = std::fs::read_to_string(dir.join("policy.csv")).unwrap();
    let admitted = format!("g, {TRAVEL}, tourism-developer, smart-tourism\n");
    assert!(rules.contains(&admitted));
    std::fs::write(dir.join("policy.csv"), rules.replace(&admitted, "")).unwrap();

    let event: GrantEvent = serde_json::from_slice(&read_n(&events, 1).await[0].payload).unwrap();
    assert_eq!((event.decision_id, event.by.as_str()), (jti(&grant), "policy"));
    assert_eq!(event.reason.code, "policy.no_matching_rule");
    assert_ne!(event.granted_under, event.revoked_under, "both policy versions are named");
    let list = revocation_list(&app).await;
    assert_eq!(list["revoked"][0]["reason"]["code"], "policy.no_matching_rule", "{list}");
    let store = tollgate::store::Store::connect(&app.infra.database_url, 1).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let audited = loop {
        let events = store.audit_events().await.unwrap();
        if let Some(e) = events.into_iter().find(|e| e.event_type == "policy_revocation") {
            break e;
        }
        assert!(std::time::Instant::now() < deadline, "no policy_revocation audit event");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((audited.subject.as_str(), audited.outcome.as_str()), (TRAVEL, "revoked"));
}

#[tokio::test]
async fn an_expired_grant_is_not_revoked_but_named_as_expired() {
    let infra = infra().await;
    let mut settings = infra.settings();
    settings.grant.ttl_secs = 1;
    let app = start(infra, settings).await;
    let id = jti(&approved_grant(&app, "r-expired-1").await);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let replies = app.reader(&app.infra.topics.replies);
    app.command(&revoke("c-late", &operator_token(&app, &["operator"]), serde_json::json!({"grant": id}), "late"))
        .await;
    let answer = reply(&replies).await;
    assert_eq!((answer.outcome.as_str(), answer.reasons[0].code.as_str()), ("refused", "revoke.grant_expired"));
}
