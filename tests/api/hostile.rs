//! The hostile-input corpus (tests/corpus/hostile.toml) through the running
//! service: every case ends in exactly the outcome it names.

use std::collections::HashMap;

use base64::Engine;
use tollgate::auth::{Claims, SigningKey};
use tollgate::contract::DeadLetter;

use crate::helpers::*;

#[derive(serde::Deserialize)]
struct Corpus {
    case: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    payload_hex: Option<String>,
    #[serde(default)]
    authorization: Option<String>,
    expect: String,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    key: Option<String>,
}

fn b64(v: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

fn tokens(infra: &Infra) -> HashMap<&'static str, String> {
    let idp = &infra.idp;
    let claims = || Claims::new(TRAVEL, ISSUER, "tollgate", 600);
    let mut not_yet = claims();
    not_yet.nbf = Some(chrono::Utc::now().timestamp() + 3600);
    let valid = infra.token(TRAVEL, &[], 600);
    let mut forged: Vec<char> = valid.chars().collect();
    let i = forged.len() - 10;
    forged[i] = if forged[i] == 'A' { 'B' } else { 'A' };
    let mut hs_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs_header.kid = Some(idp.kid.clone());
    let hs256 = jsonwebtoken::encode(
        &hs_header,
        &claims(),
        &jsonwebtoken::EncodingKey::from_secret(idp.public().to_pem().as_bytes()),
    )
    .unwrap();
    let none = format!(
        "{}.{}.",
        b64(&serde_json::json!({"alg": "none", "typ": "JWT"})),
        b64(&serde_json::to_value(claims()).unwrap())
    );
    let exp = chrono::Utc::now().timestamp() + 600;
    HashMap::from([
        ("valid", valid.clone()),
        ("expired", infra.token(TRAVEL, &[], -3600)),
        ("not_yet_valid", idp.sign(&not_yet)),
        ("wrong_iss", idp.sign(&Claims::new(TRAVEL, "https://idp.evil.example", "tollgate", 600))),
        ("wrong_aud", idp.sign(&Claims::new(TRAVEL, ISSUER, "someone-else", 600))),
        ("bad_sig", forged.into_iter().collect()),
        ("alg_none", none),
        ("hs256_pubkey", hs256),
        ("unknown_kid", SigningKey::generate("someone-else").sign(&claims())),
        ("injected_kid", SigningKey::generate("../../../../dev/null").sign(&claims())),
        // A real header and payload with a signature that is not base64.
        ("bad_base64", format!("{}.@@@not-base64@@@", valid.rsplit_once('.').unwrap().0)),
        ("garbled_payload", "eyJhbGciOiJFZERTQSJ9.!!!not-base64!!!.c2ln".to_owned()),
        ("huge", "a".repeat(20_000)),
        ("no_sub", idp.sign(&serde_json::json!({"iss": ISSUER, "aud": "tollgate", "exp": exp}))),
        ("non_uscc", idp.sign(&Claims::new("alice", ISSUER, "tollgate", 600))),
        ("no_exp", idp.sign(&serde_json::json!({"sub": TRAVEL, "iss": ISSUER, "aud": "tollgate"}))),
        ("two_parts", valid.rsplit_once('.').unwrap().0.to_owned()),
        ("five_parts", format!("{valid}.e30.e30")),
        ("issued_in_future", idp.sign(&Claims { iat: Some(exp + 10 * 365 * 86_400), ..claims() })),
    ])
}

/// Fills the placeholders of one case.
fn fill(text: &str, id: &str, tokens: &HashMap<&str, String>) -> String {
    let mut out = text.replace("{{id}}", id);
    for (name, token) in tokens {
        out = out.replace(&format!("{{{{{name}}}}}"), token);
    }
    while let Some(start) = out.find("{{") {
        let end = out[start..].find("}}").map(|e| start + e).expect("closed placeholder");
        let (kind, n) = out[start + 2..end].split_once(':').expect("sized placeholder");
        let n: usize = n.parse().unwrap();
        let value = match kind {
            "big" => "a".repeat(n),
            "fields" => (0..n).map(|i| format!("\"f{i}\"")).collect::<Vec<_>>().join(","),
            "nest" => format!("{}{}", "[".repeat(n), "]".repeat(n)),
            other => panic!("unknown placeholder {other}"),
        };
        out.replace_range(start..end + 2, &value);
    }
    out
}

#[tokio::test]
async fn every_hostile_input_gets_its_expected_outcome() {
    let app = spawn_app().await;
    let text =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/hostile.toml"))
            .unwrap();
    let corpus: Corpus = toml::from_str(&text).unwrap();
    assert!(corpus.case.len() >= 50, "the corpus keeps at least 50 cases");
    let shared = app.infra.token(TRAVEL, &[], 600);

    let mut by_id = HashMap::new();
    let mut by_payload = HashMap::new();
    for (i, case) in corpus.case.iter().enumerate() {
        let id = format!("h-{i:03}");
        // Fresh tokens per case: a token id authorizes one request.
        let mut tokens = tokens(&app.infra);
        tokens.insert("shared", shared.clone());
        let payload: Vec<u8> = match (&case.payload, &case.payload_hex) {
            (Some(p), _) => fill(p, &id, &tokens).into_bytes(),
            (None, Some(h)) => hex::decode(h.replace(' ', "")).unwrap(),
            _ => panic!("{}: no payload", case.name),
        };
        let auth = case.authorization.as_ref().map(|a| fill(a, &id, &tokens));
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let key = case.key.as_deref().unwrap_or(&case.name);
        app.client.produce(&app.infra.topics.requests, key, &payload, &headers).await.unwrap();
        if case.expect == "dead_letter" {
            let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&payload));
            assert!(by_payload.insert(digest, (payload, case)).is_none(), "{}: payloads must differ", case.name);
        } else {
            by_id.insert(id, case);
        }
    }

    let decisions = read_n(&app.reader(&app.infra.topics.decisions), by_id.len()).await;
    for m in &decisions {
        let d = decision(m);
        let case = by_id.remove(&d.request_id).unwrap_or_else(|| panic!("unexpected decision {}", d.request_id));
        assert_eq!(d.outcome.as_str(), case.expect, "{}: {:?}", case.name, d.reasons);
        assert_eq!(d.reasons.first().map(|r| r.code.as_str()), case.code.as_deref(), "{}", case.name);
    }
    let dlq = app.reader(&app.infra.topics.dlq);
    let letters = read_n(&dlq, by_payload.len()).await;
    for m in &letters {
        let letter: DeadLetter = serde_json::from_slice(&m.payload).unwrap();
        let (original, case) = by_payload.remove(&letter.payload_sha256).expect("a dead letter for a corpus case");
        assert_eq!(Some(letter.error.code.as_str()), case.code.as_deref(), "{}: {}", case.name, letter.error.message);
        // The letter carries the input, cut to its size limit when larger.
        let carried = base64::engine::general_purpose::STANDARD.decode(&letter.payload_base64).unwrap();
        assert_eq!(letter.payload_bytes as usize, original.len(), "{}", case.name);
        assert_eq!(letter.truncated, carried.len() < original.len(), "{}", case.name);
        assert!(original.starts_with(&carried), "{}", case.name);
    }
    assert!(by_id.is_empty() && by_payload.is_empty());
    assert_no_more(&dlq).await;
}

/// The contract's reason-code tables (docs/contract.md) are a contract:
/// every code in them must be one a test makes tollgate produce and checks
/// (the corpus above, a decision or dead-letter test, or a unit test),
/// never one only the documentation knows.
#[test]
fn every_reason_code_in_the_contract_is_produced_by_a_test() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = doc("docs/contract.md");
    let table = &readme[readme.find("### Reason codes").unwrap()..readme.find("## Tokens").unwrap()];
    let codes: Vec<&str> = table
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .flat_map(|l| l.split(" |").next().unwrap().split(" / "))
        .map(|c| c.trim_matches('`'))
        .collect();
    assert!(codes.len() >= 30, "{codes:?}");
    // What tests say: the test tree, policy tests, and the test modules of src/.
    let mut tested = String::new();
    let mut read_dir = |dir: &std::path::Path, only_tests: bool| {
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if let Ok(text) = std::fs::read_to_string(&path) {
                    let part = if only_tests { text.split_once("#[cfg(test)]").map_or("", |(_, t)| t) } else { &text };
                    tested.push_str(part);
                }
            }
        }
    };
    read_dir(&root.join("tests"), false);
    read_dir(&root.join("policies/tests"), false);
    read_dir(&root.join("src"), true);
    let untested: Vec<&&str> = codes.iter().filter(|c| !tested.contains(&format!("\"{c}\""))).collect();
    assert!(untested.is_empty(), "documented reason codes no test checks: {untested:?}");
}
