//! Grants as data hosts check them: the JWKS the HTTP listener publishes,
//! and key rotation (a retired key stays published exactly as long as a
//! grant it signed can be valid).

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use tollgate::auth::SigningKey;
use tollgate::auth::grant::{GrantCheck, verify_grant};
use tollgate::contract::Outcome;

use crate::helpers::*;

/// The Xi'an tourism bureau's code: the holder of GX-610100-TOUR-0001.
const XIAN_TOURISM: &str = "11610100MB00014076";

pub(crate) async fn approved_grant(app: &TestApp, id: &str) -> String {
    let token = app.infra.token(TRAVEL, &[], 600);
    app.send_json(&request(id, Some(&token), "smart-tourism", "GX-610100-TOUR-0001", "query", "industry")).await;
    let reader = app.reader(&app.infra.topics.decisions);
    loop {
        let d = decision(&read_n(&reader, 1).await[0]);
        if d.request_id == id {
            assert_eq!(d.outcome, Outcome::Approved, "{:?}", d.reasons);
            return d.grant.expect("approvals carry a grant").token;
        }
    }
}

pub(crate) async fn jwks(app: &TestApp) -> JwkSet {
    let (status, body) = app.get("/.well-known/jwks.json").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("a JWKS")
}

fn kids(set: &JwkSet) -> Vec<String> {
    set.keys.iter().filter_map(|k| k.common.key_id.clone()).collect()
}

pub(crate) fn check() -> GrantCheck {
    GrantCheck { issuer: Some("tollgate".into()), audience: Some(XIAN_TOURISM.into()), ..GrantCheck::default() }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test]
async fn a_grant_verifies_with_the_jwks_the_http_listener_publishes_and_names_its_holder_by_code() {
    let app = spawn_app().await;
    let grant = approved_grant(&app, "r-jwks-1").await;
    let set = jwks(&app).await;
    assert_eq!(kids(&set), ["grants"]);
    let claims = verify_grant(&grant, &set, &check(), now()).expect("the grant verifies");
    assert_eq!((claims.aud.as_str(), claims.request_id.as_str()), (XIAN_TOURISM, "r-jwks-1"));
    let other_host = GrantCheck { audience: Some("11610000MB00011852".into()), ..check() };
    assert_eq!(verify_grant(&grant, &set, &other_host, now()).unwrap_err().code(), "grant.wrong_audience");
}

#[tokio::test]
async fn after_rotation_the_old_key_is_published_until_the_last_grant_it_signed_expires() {
    let infra = infra().await;
    let mut settings = infra.settings();
    // Long enough for a restart and a decision, short enough to wait out.
    settings.grant.ttl_secs = 15;
    // The next key is announced (public half only) before it signs anything.
    let next = SigningKey::generate("grants-next");
    let (next_public, next_private) =
        (infra.dir.path().join("grants-next.pub.pem"), infra.dir.path().join("grants-next.pem"));
    std::fs::write(&next_public, next.public().to_pem()).unwrap();
    std::fs::write(&next_private, next.to_pkcs8_pem()).unwrap();
    settings.grant.next_keys = vec![next_public];
    let app = start(infra, settings).await;
    let old_grant = approved_grant(&app, "r-rotate-1").await;
    assert_eq!(kids(&jwks(&app).await), ["grants", "grants-next"]);

    let app = app
        .restart_with(|s| {
            s.grant.signing_key = Some(next_private);
            s.grant.next_keys.clear();
        })
        .await;
    let new_grant = approved_grant(&app, "r-rotate-2").await;
    assert_eq!(jsonwebtoken::decode_header(&new_grant).unwrap().kid.as_deref(), Some("grants-next"));
    let set = jwks(&app).await;
    assert_eq!(kids(&set), ["grants", "grants-next"], "the old key stays while its grants are valid");
    let old = verify_grant(&old_grant, &set, &check(), now()).expect("the old key's grant still verifies");
    verify_grant(&new_grant, &set, &check(), now()).expect("the new key's grant verifies");

    // Once the last grant the old key signed has expired, it leaves the JWKS.
    let deadline = Instant::now() + Duration::from_secs(30);
    while kids(&jwks(&app).await) != ["grants-next"] {
        assert!(now() <= old.exp + 5 && Instant::now() < deadline, "old key still published after its grants expired");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(now() >= old.exp, "the old key left the JWKS before its last grant expired");
}

fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = crate::binary::tollgate().args(args).envs(env.iter().copied()).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_jwks_and_grant_verify_answer_as_the_readme_shows() {
    let app = spawn_app().await;
    let grant = approved_grant(&app, "r-cli-1").await;
    let key_path = app.infra.grant_key_path.to_str().unwrap().to_owned();
    let env = [("TOLLGATE_DATABASE__URL", app.infra.database_url.as_str()), ("TOLLGATE_GRANT__SIGNING_KEY", &key_path)];
    let file = app.infra.dir.path().join("jwks.json");
    let (ok, _) = tokio::task::block_in_place(|| run(&["grant", "jwks", "--out", file.to_str().unwrap()], &env));
    assert!(ok);
    let written: JwkSet = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(kids(&written), ["grants"]);

    let file = file.to_str().unwrap();
    let (ok, out) = tokio::task::block_in_place(|| {
        run(&["grant", "verify", &grant, "--jwks", file, "--audience", XIAN_TOURISM], &[])
    });
    assert!(ok, "{out}");
    assert!(
        out.starts_with("VALID grant ") && out.contains(": query on GX-610100-TOUR-0001 in smart-tourism\n"),
        "{out}"
    );
    assert!(out.contains(&format!("\"aud\": \"{XIAN_TOURISM}\"")), "{out}");

    let mut parts: Vec<&str> = grant.split('.').collect();
    let other = approved_grant(&app, "r-cli-2").await;
    parts[1] = other.split('.').nth(1).unwrap();
    let spliced = parts.join(".");
    let (ok, out) = tokio::task::block_in_place(|| run(&["grant", "verify", &spliced, "--jwks", file], &[]));
    assert!(!ok && out.starts_with("INVALID grant.bad_signature: "), "{out}");

    // From the listener's URL, as JSON; and another holder's check refuses it.
    let url = format!("http://{}/.well-known/jwks.json", app.http);
    let (ok, out) = tokio::task::block_in_place(|| run(&["grant", "verify", &grant, "--jwks", &url, "--json"], &[]));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(ok && report["valid"] == true && report["claims"]["request_id"] == "r-cli-1", "{out}");
    let args = ["grant", "verify", &grant, "--jwks", &url, "--audience", "11610000MB00011852", "--json"];
    let (ok, out) = tokio::task::block_in_place(|| run(&args, &[]));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(!ok && report["code"] == "grant.wrong_audience", "{out}");
}
