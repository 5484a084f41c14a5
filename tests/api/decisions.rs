use base64::Engine;
use tollgate::contract::GrantClaims;
use tollgate::contract::{DeadLetter, Outcome, UsageRecord};

use crate::helpers::*;

#[tokio::test]
async fn approved_request_yields_signed_grant_audit_event_and_usage_record() {
    let app = spawn_app().await;
    let token = || app.infra.token(TRAVEL, &[], 600);
    app.send_json(&request("r-approve-1", Some(&token()), "smart-tourism", "GX-610100-TOUR-0001", "query", "industry"))
        .await;

    let decisions = app.reader(&app.infra.topics.decisions);
    let m = &read_n(&decisions, 1).await[0];
    let d = decision(m);
    assert_eq!(m.key.as_deref(), Some(TRAVEL.as_bytes()), "decisions are keyed by subject");
    assert_eq!(d.outcome, Outcome::Approved, "{:?}", d.reasons);
    assert_eq!((d.request_id.as_str(), d.subject.as_str()), ("r-approve-1", TRAVEL));
    assert_eq!(d.matched_rules, vec!["p, tourism-developer, smart-tourism, tourism-data, query, allow"]);
    assert!(d.policy_version.starts_with("sha256:"));
    assert_eq!(d.trace_id.len(), 32);

    // The grant verifies with the configured grant key and names this decision.
    let grant = d.grant.as_ref().expect("approvals carry a grant");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    // The audience is the holder department's code (catalogue `holder`).
    v.set_audience(&["11610100MB00014076"]);
    let claims = jsonwebtoken::decode::<GrantClaims>(&grant.token, &app.infra.grant_key.public().decoding_key(), &v)
        .expect("grant verifies")
        .claims;
    assert_eq!(
        (claims.jti.as_str(), claims.sub.as_str(), claims.dataset.as_str()),
        (d.decision_id.as_str(), TRAVEL, "GX-610100-TOUR-0001")
    );

    let audit = app.request_audit(1).await;
    let e = audit_event(&audit[0]);
    assert_eq!((e.event_type.as_str(), e.outcome.as_str(), e.seq), ("decision", "approved", 1));
    // The instance decided; the requester is what it decided about.
    let instance = format!("tollgate/{}", app.settings.service.instance_id);
    assert_eq!((e.actor.as_str(), e.subject.as_str()), (instance.as_str(), TRAVEL));
    assert_eq!(audit[0].key.as_deref(), Some(e.chain.as_bytes()), "audit events are keyed by chain");
    tollgate::audit::verify([&e]).expect("chain verifies");

    let usage = read_n(&app.reader(&app.infra.topics.usage), 1).await;
    let u: UsageRecord = serde_json::from_slice(&usage[0].payload).unwrap();
    assert_eq!(
        (u.decision_id.as_str(), u.amount_fen, u.unit_price_fen, u.quantity),
        (d.decision_id.as_str(), 50, 50, 1)
    );
    assert!(!u.fee_waived);
    assert_eq!(u.quota.used, 1);
}

#[tokio::test]
async fn each_kind_of_denial_has_its_stable_reason_code_and_no_usage() {
    let app = spawn_app().await;
    let i = &app.infra;
    let good = i.token(TRAVEL, &[], 600);
    // Every request below carries its own token: a token id authorizes one request.
    let cases = [
        (
            request(
                "d-expired",
                Some(&i.token(TRAVEL, &[], -3600)),
                "smart-tourism",
                "GX-610100-TOUR-0001",
                "query",
                "industry",
            ),
            "auth.token_expired",
        ),
        (
            request("d-no-token", None, "smart-tourism", "GX-610100-TOUR-0001", "query", "industry"),
            "auth.token_missing",
        ),
        (
            request("d-forged", Some(&forge(&good)), "smart-tourism", "GX-610100-TOUR-0001", "query", "industry"),
            "auth.bad_signature",
        ),
        (
            request(
                "d-purpose",
                Some(&i.token(TRAVEL, &[], 600)),
                "smart-tourism",
                "GX-610100-TOUR-0001",
                "query",
                "public_welfare",
            ),
            "policy.purpose_not_allowed",
        ),
        (
            request(
                "d-core",
                Some(&i.token(TRAVEL, &[], 600)),
                "smart-tourism",
                "GX-610000-POPU-0015",
                "query",
                "industry",
            ),
            "policy.core_data",
        ),
        (
            request(
                "d-unknown",
                Some(&i.token(TRAVEL, &[], 600)),
                "smart-tourism",
                "GX-999999-NONE-0001",
                "query",
                "industry",
            ),
            "catalog.unknown_dataset",
        ),
        (
            request(
                "d-scenario",
                Some(&i.token(TRAVEL, &[], 600)),
                "space-tourism",
                "GX-610100-TOUR-0001",
                "query",
                "industry",
            ),
            "catalog.unknown_scenario",
        ),
        (
            request(
                "d-norule",
                Some(&i.token(TRAVEL, &[], 600)),
                "smart-tourism",
                "GX-610100-TOUR-0001",
                "download",
                "industry",
            ),
            "policy.no_matching_rule",
        ),
        (
            request(
                "d-deny-rule",
                Some(&i.token(RESCUE, &[], 600)),
                "highway-rescue",
                "GX-610000-HWAY-0004",
                "api_call",
                "public_governance",
            ),
            "policy.denied_by_rule",
        ),
        (
            request(
                "d-qualification",
                Some(&i.token(MEDICINE, &[], 600)),
                "precision-medicine",
                "GX-110000-HLTH-0007",
                "privacy_compute",
                "industry",
            ),
            "policy.qualification_missing",
        ),
    ];
    for (req, _) in &cases {
        app.send_json(req).await;
    }
    let got = read_n(&app.reader(&i.topics.decisions), cases.len()).await;
    for (req, want) in &cases {
        let id = req["request_id"].as_str().unwrap();
        let d = got.iter().map(decision).find(|d| d.request_id == id).unwrap_or_else(|| panic!("no decision for {id}"));
        assert_eq!(d.outcome, Outcome::Denied, "{id}");
        assert_eq!(d.reasons[0].code, *want, "{id}: {:?}", d.reasons);
        assert!(d.grant.is_none(), "{id}: denials carry no grant");
        if want.starts_with("auth.") {
            assert_eq!(d.subject, "", "{id}: an unverified subject is never echoed");
        }
    }
    let audit = app.request_audit(cases.len()).await;
    let events: Vec<_> = audit.iter().map(audit_event).collect();
    tollgate::audit::verify(&events).expect("audit chains verify");
    assert_no_more(&app.reader(&i.topics.usage)).await;
}

#[tokio::test]
async fn undecodable_input_goes_to_the_dead_letter_topic_with_its_reason() {
    let app = spawn_app().await;
    let garbage: &[u8] = b"{\"schema\":\"tollgate.access_request/v1\",\"request_id\":";
    app.send("some-key", garbage).await;
    app.send("k2", b"\xff\xfe not utf-8").await;
    app.send_json(&serde_json::json!({"schema": "tollgate.access_request/v7", "request_id": "x"})).await;

    let letters = read_n(&app.reader(&app.infra.topics.dlq), 3).await;
    let letters: Vec<DeadLetter> = letters.iter().map(|m| serde_json::from_slice(&m.payload).unwrap()).collect();
    let codes: Vec<&str> = letters.iter().map(|l| l.error.code.as_str()).collect();
    for want in ["input.invalid_json", "input.invalid_utf8", "input.unsupported_schema"] {
        assert!(codes.contains(&want), "{codes:?} lacks {want}");
    }
    let first = letters.iter().find(|l| l.error.code == "input.invalid_json").unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    assert_eq!(b64.decode(&first.payload_base64).unwrap(), garbage, "the original bytes are kept");
    assert_eq!(first.key_base64.as_deref().map(|k| b64.decode(k).unwrap()), Some(b"some-key".to_vec()));
    assert_eq!(first.source_topic, app.infra.topics.requests);

    let audit: Vec<_> = app.request_audit(3).await.iter().map(audit_event).collect();
    assert!(audit.iter().all(|e| e.event_type == "input_rejected"));
    let instance = format!("tollgate/{}", app.settings.service.instance_id);
    assert!(audit.iter().all(|e| e.actor == instance), "the instance rejected them: {audit:?}");
    assert_no_more(&app.reader(&app.infra.topics.decisions)).await;
}

#[tokio::test]
async fn token_in_the_authorization_header_is_accepted() {
    let app = spawn_app().await;
    let token = app.infra.token(RESCUE, &[], 600);
    let body = request("r-header", None, "highway-rescue", "GX-610000-HWAY-0004", "query", "public_governance");
    let auth = format!("Bearer {token}");
    app.client
        .produce(&app.infra.topics.requests, RESCUE, body.to_string().as_bytes(), &[("authorization", &auth)])
        .await
        .unwrap();
    let d = decision(&read_n(&app.reader(&app.infra.topics.decisions), 1).await[0]);
    assert_eq!(d.outcome, Outcome::Approved, "{:?}", d.reasons);
    assert_eq!(d.obligations, vec!["aggregate_only", "no_raw_export"]);
    let u: UsageRecord =
        serde_json::from_slice(&read_n(&app.reader(&app.infra.topics.usage), 1).await[0].payload).unwrap();
    assert!(u.fee_waived, "public governance use is free");
    assert_eq!(u.amount_fen, 0);
}

/// Changes one character inside the signature (not the last, whose spare
/// bits would make it invalid base64 rather than a wrong signature).
fn forge(token: &str) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    let i = chars.len() - 10;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

#[tokio::test]
async fn a_token_without_a_token_id_serves_many_requests_until_it_expires() {
    let app = spawn_app().await;
    let mut claims = tollgate::auth::Claims::new(TRAVEL, ISSUER, "tollgate", 600).with_roles(&["data_user"]);
    claims.jti = None;
    let token = app.infra.idp.sign(&claims);
    for id in ["nojti-1", "nojti-2"] {
        let body = request(id, Some(&token), "smart-tourism", "GX-610100-TOUR-0001", "query", "industry");
        app.send(TRAVEL, body.to_string().as_bytes()).await;
    }
    for m in read_n(&app.reader(&app.infra.topics.decisions), 2).await {
        let d = decision(&m);
        assert_eq!(d.outcome, Outcome::Approved, "{}: {:?}", d.request_id, d.reasons);
    }
}
