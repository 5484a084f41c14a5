//! Every kind of published message held to the bytes it had: a decision
//! with its grant, a denial, audit events, a usage record, a dead letter and
//! an `output.refused` letter, for fixed inputs, keys, clock and ids. A
//! change that alters any of them (a refactoring must not) fails here; one
//! that means to change the contract regenerates the file on purpose:
//!
//!     TOLLGATE_BLESS=1 cargo test --test api golden
//!
//! and the diff of `tests/golden/outputs.jsonl` shows what changed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tollgate::auth::{Claims, SigningKey, Verifier};
use tollgate::broker::grant_keys::GrantKeys;
use tollgate::broker::{DecisionService, Source};
use tollgate::kafka::{ConsumedMessage, Processor};

use crate::helpers::*;

/// A fixed clock and ids counted up from a fixed UUIDv7.
struct Fixed(AtomicU64);

impl Source for Fixed {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        "2026-11-26T10:00:00.123456789Z".parse().unwrap()
    }

    fn id(&self) -> uuid::Uuid {
        uuid::Uuid::from_u128(
            0x019a_c0de_0000_7000_8000_0000_0000_0000 + u128::from(self.0.fetch_add(1, Ordering::SeqCst)),
        )
    }
}

fn golden(file: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(file)
}

async fn service() -> (DecisionService, SigningKey) {
    let idp = SigningKey::from_pem_file(&golden("idp.pem")).unwrap();
    let policy = tollgate::policy::Policy::load(&repo_policies()).await.unwrap();
    let mut settings = tollgate::config::Settings::default();
    settings.service.instance_id = "golden".into();
    settings.service.max_message_bytes = 64 * 1024;
    settings.service.dead_letter_max_bytes = 64 * 1024;
    settings.grant.signing_key = Some(golden("grants.pem"));
    let store = tollgate::store::Store::connect("sqlite::memory:", 1).await.unwrap();
    let keys = GrantKeys::from_settings(&settings.grant, "golden", store.clone()).unwrap();
    let service = DecisionService::new(
        &settings,
        Arc::new(arc_swap::ArcSwap::from_pointee(policy)),
        Verifier::for_ed25519(&idp.public(), ISSUER, "tollgate"),
        store,
        Arc::new(keys),
        tollgate::ops::Health::new(),
    )
    .with_source(Box::new(Fixed(AtomicU64::new(0))));
    (service, idp)
}

fn input(offset: i64, payload: String) -> ConsumedMessage {
    ConsumedMessage {
        topic: "tollgate.requests".into(),
        partition: 0,
        offset,
        key: Some(TRAVEL.as_bytes().to_vec()),
        payload: payload.into_bytes(),
        headers: vec![("traceparent".into(), b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_vec())],
    }
}

#[tokio::test]
async fn every_published_message_keeps_its_bytes_for_the_same_input_and_clock() {
    let (service, idp) = service().await;
    // Valid until 2100, so the real clock the signature check reads never
    // expires it; signed deterministically (Ed25519).
    let token = |jti: &str| {
        idp.sign(&Claims {
            sub: TRAVEL.into(),
            iss: ISSUER.into(),
            aud: "tollgate".into(),
            exp: 4_102_444_800,
            nbf: None,
            iat: None,
            jti: Some(jti.into()),
            roles: vec!["data_user".into()],
            qualifications: vec![],
            name: None,
            org: None,
        })
    };
    let approved =
        request("golden-1", Some(&token("j-1")), "smart-tourism", "GX-610100-TOUR-0001", "query", "industry");
    let denied =
        request("golden-2", Some(&token("j-2")), "smart-tourism", "GX-610100-TOUR-0001", "query", "public_welfare");
    let msgs = vec![input(0, approved.to_string()), input(1, denied.to_string()), input(2, "{".into())];
    let prepared = service.prepare(&msgs);
    let outputs = service.process_batch(&msgs, prepared).await.unwrap();
    let refused = service.refused(&msgs[0], &outputs[0][0], "Broker: Message size too large", false);

    let mut lines = String::new();
    for m in outputs.iter().flatten().chain([&refused]) {
        let line = serde_json::json!({"topic": m.topic, "key": m.key, "payload": m.payload});
        lines.push_str(&format!("{line}\n"));
    }
    let path = golden("outputs.jsonl");
    if std::env::var_os("TOLLGATE_BLESS").is_some() {
        std::fs::write(&path, &lines).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap();
    for (i, (got, want)) in lines.lines().zip(want.lines()).enumerate() {
        assert_eq!(got, want, "message {i} changed");
    }
    assert_eq!(lines.lines().count(), want.lines().count());
}

/// The contract as a file: the golden outputs and every JSON example of the
/// README and docs/ validate against `asyncapi.yaml` with Python's `jsonschema` (CI
/// also validates every message of a demo run). A machine without
/// `pyyaml` and `jsonschema` skips this, saying so.
#[test]
fn the_golden_outputs_and_the_documented_examples_match_the_asyncapi_document() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    if !python_has("yaml, jsonschema") {
        eprintln!("python3 lacks pyyaml or jsonschema: asyncapi.yaml is not checked here (CI checks it)");
        return;
    }
    let out = std::process::Command::new("python3")
        .current_dir(root)
        .args(["tests/contract/validate.py", "asyncapi.yaml", "--jsonl", "tests/golden/outputs.jsonl"])
        .args(doc_files().iter().flat_map(|f| [std::ffi::OsString::from("--readme"), f.clone().into_os_string()]))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains(" 0 failure(s)"), "{text}{}", String::from_utf8_lossy(&out.stderr));
}
