//! The real `tollgate` binary, configured the way an operator would.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tollgate::config::Settings;
use tollgate::contract::Outcome;
use tollgate::kafka::Client;

use crate::helpers::*;

pub(crate) fn tollgate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    // Settings come only from what each test sets.
    for (k, _) in std::env::vars() {
        if k.starts_with("TOLLGATE_") {
            c.env_remove(k);
        }
    }
    c.env("RUST_LOG", "info,librdkafka=warn,rdkafka=warn");
    // Binaries run side by side: each takes a free port unless a test picks one.
    c.env("TOLLGATE_SERVICE__HTTP_LISTEN", "127.0.0.1:0");
    c
}

/// Kills the process if the test fails before stopping it, so a failed test
/// leaves nothing running.
pub(crate) struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

pub(crate) fn sigterm(child: &Child) {
    let ok = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success();
    assert!(ok, "kill -TERM");
}

/// SIGTERM, then the process must exit 0 within the grace period (plus a
/// margin for a loaded machine).
pub(crate) fn stop_with_sigterm(child: &mut Child) {
    sigterm(child);
    let status = wait_exit(child, Duration::from_secs(40));
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

pub(crate) fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tollgate did not exit within {within:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn binary_configured_by_file_and_environment_decides_and_stops_cleanly_on_sigterm() {
    let infra = infra().await;
    let config = infra.dir.path().join("tollgate.toml");
    let t = &infra.topics;
    std::fs::write(
        &config,
        format!(
            r#"
[kafka]
bootstrap_servers = "overridden-by-env:1"
group_id = "{group}"
create_topics = false
[topics]
{topics}
[database]
url = "{db}"
[policy]
dir = "{pol}"
[auth]
public_keys = ["{key}"]
issuers = ["{ISSUER}"]
"#,
            group = infra.group,
            topics = toml::to_string(t).unwrap(),
            db = infra.database_url,
            pol = repo_policies().display(),
            key = infra.idp_public.display(),
        ),
    )
    .unwrap();
    let mut child = tollgate()
        .args(["serve", "--config"])
        .arg(&config)
        .env("TOLLGATE_KAFKA__BOOTSTRAP_SERVERS", &infra.bootstrap)
        .stdout(Stdio::null())
        .spawn()
        .map(Running)
        .unwrap();

    let client = Client::new(&Settings::default().kafka, &infra.bootstrap).unwrap();
    let token = || infra.token(TRAVEL, &[], 600);
    let body = request("bin-1", Some(&token()), "smart-tourism", "GX-610100-TOUR-0001", "api_call", "industry");
    client.produce(&t.requests, TRAVEL, body.to_string().as_bytes(), &[]).await.unwrap();
    let reader = client.reader(&[&t.decisions], "bin-reader").unwrap();
    let d = decision(&read_n(&reader, 1).await[0]);
    assert_eq!(d.outcome, Outcome::Approved, "{:?}", d.reasons);

    stop_with_sigterm(&mut child);
}

/// `tollgate serve` with nothing configured but the policy and `idp`'s key,
/// in `dir`, running once it printed its embedded cluster's address.
fn serve_embedded(dir: &std::path::Path, idp: &tollgate::auth::SigningKey) -> (Running, String) {
    let key = dir.join("idp.pub.pem");
    std::fs::write(&key, idp.public().to_pem()).unwrap();
    let mut child = tollgate()
        .arg("serve")
        .current_dir(dir)
        .env("TOLLGATE_POLICY__DIR", repo_policies())
        .env("TOLLGATE_AUTH__PUBLIC_KEYS", format!("[\"{}\"]", key.display()))
        .env("TOLLGATE_AUTH__ISSUERS", format!("[\"{ISSUER}\"]"))
        .stdout(Stdio::piped())
        .spawn()
        .map(Running)
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let bootstrap = loop {
        let line = lines.next().expect("tollgate printed its embedded bootstrap address").unwrap();
        if let Some(b) = line.strip_prefix("embedded kafka bootstrap: ") {
            break b.to_owned();
        }
    };
    // Its output keeps being read: a closed pipe would fail its next print.
    std::thread::spawn(move || lines.for_each(drop));
    (child, bootstrap)
}

#[test]
fn the_service_runs_without_transparent_huge_pages_so_it_holds_only_the_memory_it_touches() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, _) = serve_embedded(dir.path(), &tollgate::auth::SigningKey::generate("idp"));
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    // Linux 5.0 and later show the process's flag; older kernels, nothing to check.
    if let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) {
        assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
    }
    stop_with_sigterm(&mut child);
}

#[tokio::test]
async fn binary_without_kafka_configured_runs_an_embedded_cluster_others_can_reach() {
    let dir = tempfile::tempdir().unwrap();
    let idp = tollgate::auth::SigningKey::generate("idp");
    let (mut child, bootstrap) = serve_embedded(dir.path(), &idp);
    assert!(dir.path().join("tollgate.db").exists(), "the default database is a SQLite file");

    let client = Client::new(&Settings::default().kafka, &bootstrap).unwrap();
    let token = idp.sign(&tollgate::auth::Claims::new(RESCUE, ISSUER, "tollgate", 600));
    let body = request("emb-1", Some(&token), "highway-rescue", "GX-610000-RESC-0006", "api_call", "public_governance");
    client.produce("tollgate.requests", RESCUE, body.to_string().as_bytes(), &[]).await.unwrap();
    let reader = client.reader(&["tollgate.decisions"], "emb-reader").unwrap();
    let d = decision(&read_n(&reader, 1).await[0]);
    assert_eq!(d.outcome, Outcome::Approved, "{:?}", d.reasons);

    stop_with_sigterm(&mut child);
}

#[tokio::test]
async fn audit_verify_passes_on_an_intact_trail_and_names_a_tampered_record() {
    let mut app = spawn_app().await;
    let token = || app.infra.token(TRAVEL, &[], 600);
    for i in 0..3 {
        // One key, so one partition and one chain of three events.
        let body =
            request(&format!("a-{i}"), Some(&token()), "smart-tourism", "GX-610100-TOUR-0001", "query", "industry");
        app.send(TRAVEL, body.to_string().as_bytes()).await;
    }
    let _ = app.request_audit(3).await;
    // A re-sent request: its event is re-published behind the chain's head.
    let again = request("a-0", Some(&token()), "smart-tourism", "GX-610100-TOUR-0001", "query", "industry");
    app.send(TRAVEL, again.to_string().as_bytes()).await;
    let _ = app.request_audit(4).await;
    app.stop().await;

    let verify = |from_kafka: bool| {
        let mut c = tollgate();
        c.args(["audit", "verify"])
            .env("TOLLGATE_DATABASE__URL", &app.infra.database_url)
            .env("TOLLGATE_KAFKA__BOOTSTRAP_SERVERS", &app.infra.bootstrap)
            .env("TOLLGATE_TOPICS__AUDIT", &app.infra.topics.audit)
            .env("TOLLGATE_TOPICS__CHECKPOINTS", &app.infra.topics.checkpoints);
        if from_kafka {
            c.arg("--kafka");
        }
        c.output().unwrap()
    };
    let out = verify(false);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 events"));
    let out = verify(true);
    assert!(out.status.success(), "from the topic: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Distinct events (3 of the request chain, 1 policy_loaded); the copy apart.
    assert!(stdout.contains("ok: 4 events on 2 chain(s)") && stdout.contains("1 identical re-published"), "{stdout}");
    readme_verifier_accepts_republished_copies_and_rejects_a_differing_one(&app).await;

    // Rewrite the stored hash column new events chain onto, leaving the body.
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&app.infra.database_url).await.unwrap();
    let second = "seq = 2 AND chain LIKE 'tollgate.requests%'";
    let original: String =
        sqlx::query_scalar(&format!("SELECT hash FROM audit_events WHERE {second}")).fetch_one(&pool).await.unwrap();
    let set_hash = format!("UPDATE audit_events SET hash = $1 WHERE {second}");
    let changed = sqlx::query(&set_hash).bind("f".repeat(64)).execute(&pool).await.unwrap();
    assert_eq!(changed.rows_affected(), 1);
    let out = verify(false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("seq 2") && stderr.contains("hash column"), "{stderr}");
    sqlx::query(&set_hash).bind(original).execute(&pool).await.unwrap();
    pool.close().await;

    // Rewrite the outcome of the second event, as an insider with database access might.
    let pool = sqlx::AnyPool::connect(&app.infra.database_url).await.unwrap();
    let changed =
        sqlx::query("UPDATE audit_events SET body = REPLACE(body, '\"approved\"', '\"denied\"') WHERE seq = 2")
            .execute(&pool)
            .await
            .unwrap();
    assert_eq!(changed.rows_affected(), 1);
    pool.close().await;
    let out = verify(false);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("seq 2") && stderr.contains("changed record"), "{stderr}");
}

#[tokio::test]
async fn audit_verify_holds_chains_to_their_signed_checkpoints_and_the_database_to_the_trail() {
    let mut app = spawn_app().await;
    for i in 0..3 {
        let token = app.infra.token(TRAVEL, &[], 600);
        let body =
            request(&format!("c-{i}"), Some(&token), "smart-tourism", "GX-610100-TOUR-0001", "query", "industry");
        app.send(TRAVEL, body.to_string().as_bytes()).await;
    }
    let _ = app.request_audit(3).await;
    // The audit keys are public, like the grant keys.
    let (status, body) = app.get("/.well-known/audit-keys.json").await;
    let set: serde_json::Value = serde_json::from_str(&body).unwrap();
    let store = tollgate::store::Store::connect(&app.infra.database_url, 1).await.unwrap();
    let recorded = store.audit_keys().await.unwrap();
    assert_eq!((status, set["keys"][0]["kid"].as_str()), (200, Some(recorded[0].0.as_str())), "{body}");
    // A clean stop checkpoints every chain with new events.
    app.stop().await;
    let verify = |extra: &[&str]| {
        let out = tollgate()
            .args(["audit", "verify"])
            .args(extra)
            .env("TOLLGATE_DATABASE__URL", &app.infra.database_url)
            .env("TOLLGATE_KAFKA__BOOTSTRAP_SERVERS", &app.infra.bootstrap)
            .env("TOLLGATE_TOPICS__AUDIT", &app.infra.topics.audit)
            .env("TOLLGATE_TOPICS__CHECKPOINTS", &app.infra.topics.checkpoints)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    let (ok, out) = verify(&[]);
    // Checkpoints made while running (every 5 s) and at the stop.
    assert!(ok && out.contains(" signed checkpoint(s) hold") && out.contains("3 events, head"), "{out}");
    assert!(out.contains("checkpoint at 3"), "{out}");
    let (ok, out) = verify(&["--kafka"]);
    assert!(ok && out.contains("checkpoint at 3"), "from the topics: {out}");

    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&app.infra.database_url).await.unwrap();
    let exec = |sql: String| {
        let pool = pool.clone();
        async move { sqlx::query(&sql).execute(&pool).await.unwrap().rows_affected() }
    };
    let requests = "chain LIKE 'tollgate.requests%'";
    exec(format!("CREATE TABLE saved_events AS SELECT * FROM audit_events WHERE {requests}")).await;
    exec("CREATE TABLE saved_checkpoints AS SELECT * FROM audit_checkpoints".into()).await;
    let restore = || async {
        exec(format!("DELETE FROM audit_events WHERE {requests}")).await;
        exec("INSERT INTO audit_events SELECT * FROM saved_events".into()).await;
        exec("DELETE FROM audit_checkpoints".into()).await;
        exec("INSERT INTO audit_checkpoints SELECT * FROM saved_checkpoints".into()).await;
    };

    // The newest event deleted: the chain alone still verifies.
    assert_eq!(exec(format!("DELETE FROM audit_events WHERE {requests} AND seq = 3")).await, 1);
    let (ok, out) = verify(&[]);
    assert!(!ok && out.contains("ends at seq 2 (cut tail)"), "{out}");
    restore().await;
    // The whole chain removed.
    exec(format!("DELETE FROM audit_events WHERE {requests}")).await;
    let (ok, out) = verify(&[]);
    assert!(!ok && out.contains("(removed chain)"), "{out}");
    restore().await;
    // A checkpoint altered to certify less.
    exec(format!("UPDATE audit_checkpoints SET body = REPLACE(body, '\"seq\":3', '\"seq\":2') WHERE {requests}")).await;
    let (ok, out) = verify(&[]);
    assert!(!ok && out.contains("(forged or altered checkpoint)"), "{out}");
    restore().await;
    // The tail and its checkpoint both deleted: the decision it recorded remains.
    exec(format!("DELETE FROM audit_events WHERE {requests} AND seq = 3")).await;
    exec(format!("DELETE FROM audit_checkpoints WHERE {requests}")).await;
    let (ok, out) = verify(&[]);
    assert!(!ok && out.contains("no audit event records it (dropped record)"), "{out}");
    restore().await;
    // Only keys the auditor trusts: a JWKS without the key refuses its checkpoints.
    let jwks = app.infra.dir.path().join("other-keys.json");
    let stranger = tollgate::auth::SigningKey::generate("audit-other").public().to_jwk();
    std::fs::write(&jwks, serde_json::json!({ "keys": [stranger] }).to_string()).unwrap();
    let (ok, out) = verify(&["--keys", jwks.to_str().unwrap()]);
    assert!(!ok && out.contains("signed with unknown audit key"), "{out}");
    let (ok, out) = verify(&[]);
    assert!(ok, "restored: {out}");
    exec("DROP TABLE saved_events".into()).await;
    exec("DROP TABLE saved_checkpoints".into()).await;
    pool.close().await;
}

/// The contract's stand-alone verifier (docs/contract.md), run by python3 over the audit topic:
/// it must accept re-published copies anywhere (at-least-once) and reject
/// a differing event at a position already seen.
async fn readme_verifier_accepts_republished_copies_and_rejects_a_differing_one(app: &TestApp) {
    let readme = doc("docs/contract.md");
    let start = readme.find("```python\nimport hashlib, json").expect("the contract's verifier") + "```python\n".len();
    let snippet = &readme[start..start + readme[start..].find("```").unwrap()];
    let events: Vec<String> = app
        .client
        .read_to_end(&app.infra.topics.audit)
        .await
        .unwrap()
        .iter()
        .map(|m| String::from_utf8(m.payload.clone()).unwrap())
        .collect();
    let run = |lines: &[String]| {
        let script = format!("{snippet}\nimport sys\nverify([json.loads(l) for l in sys.stdin if l.strip()])\n");
        let mut child = std::process::Command::new("python3")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(lines.join("\n").as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run(&events);
    assert!(out.status.success(), "README verifier on the topic: {}", String::from_utf8_lossy(&out.stderr));
    // The re-published event again at the end, changed and re-hashed:
    // same position, different event.
    let mut forged: tollgate::contract::AuditEvent = serde_json::from_str(
        events.iter().find(|e| e.contains("\"seq\":1") && e.contains("tollgate.requests")).unwrap(),
    )
    .unwrap();
    forged.outcome = "denied".into();
    forged.hash = tollgate::audit::compute_hash(&forged);
    let mut tampered = events.clone();
    tampered.push(serde_json::to_string(&forged).unwrap());
    let out = run(&tampered);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("two different events"), "{stderr}");
    readme_checkpoint_verifier_accepts_the_checkpoints_and_names_a_cut_tail(app, &readme, snippet, &events).await;
}

/// The README's checkpoint verifier (Python's `cryptography`), over the
/// checkpoint topic with the audit keys the database recorded. CI installs
/// `cryptography`; a machine without it skips this part, saying so.
async fn readme_checkpoint_verifier_accepts_the_checkpoints_and_names_a_cut_tail(
    app: &TestApp,
    readme: &str,
    chain_snippet: &str,
    events: &[String],
) {
    let has_crypto = std::process::Command::new("python3")
        .args(["-c", "import cryptography"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_crypto {
        eprintln!("python3 has no `cryptography`: the README's checkpoint verifier is not run here (CI runs it)");
        return;
    }
    let start = readme.find("```python\nimport base64, json").expect("the README's checkpoint verifier") + 10;
    let snippet = &readme[start..start + readme[start..].find("```").unwrap()];
    let checkpoints: Vec<serde_json::Value> = app
        .client
        .read_to_end(&app.infra.topics.checkpoints)
        .await
        .unwrap()
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect();
    assert!(!checkpoints.is_empty(), "a stopped instance leaves its chains checkpointed");
    let store = tollgate::store::Store::connect(&app.infra.database_url, 1).await.unwrap();
    let keys: Vec<serde_json::Value> =
        store.audit_keys().await.unwrap().iter().map(|(_, jwk)| serde_json::from_str(jwk).unwrap()).collect();
    let run = |events: &[&String]| {
        let input = serde_json::json!({
            "events": events.iter().map(|e| serde_json::from_str::<serde_json::Value>(e).unwrap()).collect::<Vec<_>>(),
            "checkpoints": checkpoints,
            "jwks": {"keys": keys},
        });
        let script = format!(
            "{chain_snippet}\n{snippet}\nimport sys\nd = json.load(sys.stdin)\nheads, seen = verify(d['events'])\n\
             print(verify_checkpoints(d['checkpoints'], d['jwks'], seen))\n"
        );
        let mut child = std::process::Command::new("python3")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(input.to_string().as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let all: Vec<&String> = events.iter().collect();
    let out = run(&all);
    assert!(out.status.success(), "README checkpoint verifier: {}", String::from_utf8_lossy(&out.stderr));
    // The request chain's newest event left out.
    let head = checkpoints
        .iter()
        .filter(|c| c["chain"].as_str().unwrap().starts_with("tollgate.requests"))
        .map(|c| c["seq"].as_u64().unwrap())
        .max()
        .unwrap();
    let cut: Vec<&String> = events
        .iter()
        .filter(|e| !(e.contains("\"chain\":\"tollgate.requests") && e.contains(&format!("\"seq\":{head},"))))
        .collect();
    let out = run(&cut);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("cut tail, removed or forked chain"), "{stderr}");
}

/// `tollgate serve` on the test's topics, group, database and keys, all
/// from the environment; its log goes to a file in the test's directory.
pub(crate) fn serve(infra: &Infra) -> Command {
    let t = &infra.topics;
    let log = tempfile::Builder::new().suffix(".log").tempfile_in(infra.dir.path()).unwrap().keep().unwrap().0;
    let mut c = tollgate();
    c.arg("serve")
        .env("TOLLGATE_KAFKA__BOOTSTRAP_SERVERS", &infra.bootstrap)
        .env("TOLLGATE_KAFKA__GROUP_ID", &infra.group)
        .env("TOLLGATE_KAFKA__CREATE_TOPICS", "false")
        .envs(topic_env(t))
        .env("TOLLGATE_DATABASE__URL", &infra.database_url)
        .env("TOLLGATE_POLICY__DIR", repo_policies())
        .env("TOLLGATE_AUTH__PUBLIC_KEYS", format!("[\"{}\"]", infra.idp_public.display()))
        .env("TOLLGATE_AUTH__ISSUERS", format!("[\"{ISSUER}\"]"))
        .env("TOLLGATE_GRANT__SIGNING_KEY", &infra.grant_key_path)
        .stdout(Stdio::null())
        .stderr(log);
    c
}

fn run_ok(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    let mut child =
        tollgate().args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn policy_commands_check_test_explain_and_evaluate() {
    let shipped = repo_policies();
    let shipped = shipped.to_str().unwrap();
    let (ok, out) = run_ok(&["policy", "check", shipped], None);
    assert!(ok, "{out}");
    let (ok, out) = run_ok(&["policy", "test", shipped], None);
    assert!(ok && out.contains(" passed, 0 failed"), "{out}");

    // Lint findings fail the check, with their lines.
    let dir = tempfile::tempdir().unwrap();
    for f in ["model.conf", "policy.csv", "catalogue.toml"] {
        std::fs::copy(repo_policies().join(f), dir.path().join(f)).unwrap();
    }
    let rules = std::fs::read_to_string(dir.path().join("policy.csv")).unwrap();
    std::fs::write(
        dir.path().join("policy.csv"),
        format!("{rules}p, eco-monitor, eco-governance, eco-data, query, allow\np, ghost-role, smart-tourism, tourism-data, query, allow\n"),
    )
    .unwrap();
    let (ok, out) = run_ok(&["policy", "check", dir.path().to_str().unwrap(), "--json"], None);
    assert!(!ok);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let codes: Vec<&str> = report["findings"].as_array().unwrap().iter().map(|f| f["code"].as_str().unwrap()).collect();
    assert_eq!(codes, ["duplicate_rule", "role_never_granted"], "{out}");

    // A failing policy test fails `policy test`.
    std::fs::create_dir_all(dir.path().join("tests")).unwrap();
    std::fs::write(
        dir.path().join("tests/t.toml"),
        r#"
[[case]]
name = "travel may download visitor flows"
principal = { sub = "91610131MA6TG1L5X1" }
request = { scenario = "smart-tourism", dataset = "GX-610100-TOUR-0001", operation = "download", purpose = "industry" }
expect = { outcome = "approved" }
"#,
    )
    .unwrap();
    let (ok, out) = run_ok(&["policy", "test", dir.path().to_str().unwrap()], None);
    assert!(!ok && out.contains("FAIL t.toml: travel may download visitor flows"), "{out}");

    // Explain names the deny rule; eval gives one JSON line per probe.
    let probe = r#"{"principal":{"sub":"91610000MA6W2QK30C"},"request":{"scenario":"highway-rescue","dataset":"GX-610000-HWAY-0004","operation":"api_call","purpose":"public_governance"}}"#;
    let (ok, out) = run_ok(&["policy", "explain", "-", "--dir", shipped, "--json"], Some(probe));
    assert!(ok, "{out}");
    let ex: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(ex["matched_rules"][0], "p, *, *, grade:important, api_call, deny");
    let (ok, out) =
        run_ok(&["policy", "eval", "--requests", "-", "--dir", shipped], Some(&format!("{probe}\n{probe}\n")));
    assert!(ok);
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["reasons"][0]["code"], "policy.denied_by_rule");

    // Raw Casbin on a standard ACL model, no catalogue.
    std::fs::write(
        dir.path().join("acl.conf"),
        "[request_definition]\nr = sub, obj, act\n[policy_definition]\np = sub, obj, act\n[policy_effect]\ne = some(where (p.eft == allow))\n[matchers]\nm = r.sub == p.sub && r.obj == p.obj && r.act == p.act\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("acl.csv"), "p, alice, data1, read\np, bob, data2, write\n").unwrap();
    let (ok, out) = run_ok(
        &[
            "policy",
            "eval",
            "--raw",
            "--model",
            dir.path().join("acl.conf").to_str().unwrap(),
            "--policy",
            dir.path().join("acl.csv").to_str().unwrap(),
            "--requests",
            "-",
        ],
        Some("[\"alice\",\"data1\",\"read\"]\n[\"alice\",\"data2\",\"write\"]\n[\"bob\",\"data2\",\"write\"]\n"),
    );
    assert!(ok);
    assert_eq!(out, "true\nfalse\ntrue\n");
}

#[test]
fn policy_check_raw_names_priority_ties_and_refuses_what_it_cannot_decide_as_casbin() {
    let dir = tempfile::tempdir().unwrap();
    let model = "[request_definition]\nr = sub, obj, act\n[policy_definition]\np = priority, sub, obj, act, eft\n\
                 [role_definition]\ng = _, _\n[policy_effect]\ne = priority(p.eft) || deny\n\
                 [matchers]\nm = g(r.sub, p.sub) && r.obj == p.obj && r.act == p.act\n";
    let path = |f: &str| dir.path().join(f).to_str().unwrap().to_owned();
    std::fs::write(path("m.conf"), model).unwrap();
    let check = |rules: &str| {
        std::fs::write(path("p.csv"), rules).unwrap();
        run_ok(&["policy", "check", "--raw", "--model", &path("m.conf"), "--policy", &path("p.csv"), "--json"], None)
    };
    let (ok, out) = check(
        "p, 1, bob, d1, read, allow\np, 10, admin, d1, read, deny\ng, alice, admin\np, 10, alice, d1, read, allow\n",
    );
    assert!(!ok, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["findings"][0]["code"], "priority_tie");
    assert_eq!(report["findings"][0]["line"], 2);
    assert!(report["findings"][0]["message"].as_str().unwrap().starts_with("lines 2, 4 share priority 10"));

    let (ok, out) = check("p, 1, bob, d1, read, allow\np, 10, admin, d1, read, deny\np, 20, alice, d1, read, allow\n");
    assert!(ok, "{out}");
    let (ok, out) = check("p, 1, bob, d1, read, allow\np, high, admin, d1, read, deny\n");
    assert!(!ok);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(report["error"].as_str().unwrap().contains("priority `high` is not an integer"), "{out}");
}

#[tokio::test]
async fn sighup_reloads_the_policy_when_file_watching_is_off() {
    let infra = infra().await;
    let dir = policy_copy(&infra, false);
    let t = &infra.topics;
    let mut child = serve(&infra)
        .env("TOLLGATE_POLICY__DIR", &dir)
        .env("TOLLGATE_POLICY__WATCH", "false")
        .env("TOLLGATE_SERVICE__INSTANCE_ID", "hup-test")
        .spawn()
        .map(Running)
        .unwrap();
    let client = Client::new(&Settings::default().kafka, &infra.bootstrap).unwrap();
    // Wait until it decides (so its signal handlers are installed).
    let body = request("hup-0", None, "smart-tourism", "GX-610100-TOUR-0001", "query", "industry");
    client.produce(&t.requests, "k", body.to_string().as_bytes(), &[]).await.unwrap();
    let _ = read_n(&client.reader(&[&t.decisions], "hup-reader").unwrap(), 1).await;

    let rules = std::fs::read_to_string(dir.join("policy.csv")).unwrap();
    std::fs::write(
        dir.join("policy.csv"),
        format!("{rules}p, tourism-developer, smart-tourism, tourism-data, download, allow\n"),
    )
    .unwrap();
    let ok = Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap().success();
    assert!(ok);
    let audit = client.reader(&[&t.audit], "hup-audit").unwrap();
    let loaded = loop {
        let e = audit_event(&read_n(&audit, 1).await[0]);
        // The first is the start-up record ("started with …").
        if e.event_type == "policy_loaded" && e.reasons[0].message.contains("SIGHUP") {
            break e;
        }
    };
    assert_eq!(loaded.chain, "policy/hup-test");
    stop_with_sigterm(&mut child);
}

#[test]
fn loadgen_reports_tollgate_against_the_pass_through_and_the_crypto_ceiling() {
    let out = tollgate().args(["loadgen", "--requests", "60", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    for (run, name) in runs.iter().zip(["pass-through", "crypto ceiling", "tollgate"]) {
        assert_eq!(run["pipeline"], name);
        assert_eq!(run["completed"], 60, "{run}");
        // Decisions read twice for one request: none without a crash.
        assert_eq!(run["repeated"], 0, "{run}");
        assert!(run["latency_ms"]["p99"].as_f64().unwrap() >= run["latency_ms"]["p50"].as_f64().unwrap());
    }
    assert!(report["ratio"].as_f64().unwrap() > 0.0 && report["ceiling_ratio"].as_f64().unwrap() > 0.0);
    // The ceiling did its cryptography for every input, the warm-up included.
    let crypto = &runs[1]["crypto"];
    // (A batch prepared again after a rebalance is verified again: at least.)
    assert_eq!(crypto["refused"].as_u64(), Some(0), "{crypto}");
    assert!(crypto["verified"].as_u64().unwrap() >= 61 && crypto["signed"].as_u64().unwrap() >= 61, "{crypto}");
    // Every request has a token of its own, the warm-up included.
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!log.contains("replayed token refused"), "{log}");
}

#[tokio::test]
async fn loadgen_drives_a_running_instance_through_its_own_topics() {
    let infra = infra().await;
    let mut serving = Running(serve(&infra).spawn().unwrap());
    // The identity provider's private key, named as the instance knows it.
    let idp_key = infra.dir.path().join("test-idp.pem");
    std::fs::write(&idp_key, infra.idp.to_pkcs8_pem()).unwrap();
    let t = &infra.topics;
    let out = tollgate()
        .args(["loadgen", "--external", "--no-baseline", "--json", "--requests", "40", "--idp-key"])
        .arg(&idp_key)
        .env("TOLLGATE_KAFKA__BOOTSTRAP_SERVERS", &infra.bootstrap)
        .env("TOLLGATE_TOPICS__REQUESTS", &t.requests)
        .env("TOLLGATE_TOPICS__DECISIONS", &t.decisions)
        .env("TOLLGATE_AUTH__ISSUERS", format!("[\"{ISSUER}\"]"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{report}");
    assert_eq!(runs[0]["completed"], 40, "{report}");
    assert_eq!(report["database"], "the running instance's");
    // The running instance made those decisions: 41 with the warm-up, and
    // the demo's mix approves most of them (a token it did not trust, or the
    // wrong issuer, would deny every one).
    let client = Client::new(&Settings::default().kafka, &infra.bootstrap).unwrap();
    let decisions = read_n(&client.reader(&[&t.decisions], "lg-ext-reader").unwrap(), 41).await;
    let approved = decisions.iter().filter(|m| decision(m).outcome == Outcome::Approved).count();
    assert!(approved > 20, "{approved} of 41 approved");
    stop_with_sigterm(&mut serving);
}

#[tokio::test]
async fn logs_hold_no_tokens_or_secrets_even_at_debug_level() {
    let infra = infra().await;
    let secret = "hs256-secret-that-must-never-be-logged";
    let password = "sasl-password-that-must-never-be-logged";
    let mut child = serve(&infra)
        .env("RUST_LOG", "debug")
        .env("TOLLGATE_AUTH__ALLOW_HS256", "true")
        .env("TOLLGATE_AUTH__HS256_SECRET", secret)
        .env("TOLLGATE_KAFKA__PROPERTIES__SASL_PASSWORD", password)
        .spawn()
        .map(Running)
        .unwrap();
    let client = Client::new(&Settings::default().kafka, &infra.bootstrap).unwrap();
    let good = infra.token(TRAVEL, &[], 600);
    let expired = infra.token(TRAVEL, &[], -3600);
    let t = &infra.topics;
    let sends = [
        ("lg-1", Some(good.as_str()), None),
        // The same token again: a replay, which is logged.
        ("lg-2", Some(good.as_str()), None),
        ("lg-3", Some(expired.as_str()), None),
        ("lg-4", None, Some(format!("Bearer {}", infra.token(TRAVEL, &[], 600)))),
    ];
    let mut tokens = vec![good.clone(), expired.clone()];
    for (id, token, header) in &sends {
        let body = request(id, *token, "smart-tourism", "GX-610100-TOUR-0001", "query", "industry");
        let headers: Vec<(&str, &str)> = header.iter().map(|h| ("authorization", h.as_str())).collect();
        if let Some(h) = header {
            tokens.push(h.trim_start_matches("Bearer ").to_owned());
        }
        client.produce(&t.requests, TRAVEL, body.to_string().as_bytes(), &headers).await.unwrap();
    }
    let decided = read_n(&client.reader(&[&t.decisions], "lg-reader").unwrap(), sends.len()).await;
    let codes: Vec<Option<String>> =
        decided.iter().map(|m| decision(m).reasons.first().map(|r| r.code.clone())).collect();
    assert!(codes.contains(&Some("auth.token_replayed".into())), "{codes:?}");
    stop_with_sigterm(&mut child);

    let mut logs = String::new();
    for entry in std::fs::read_dir(infra.dir.path()).unwrap().flatten() {
        if entry.file_name().to_string_lossy().ends_with(".log") {
            logs.push_str(&std::fs::read_to_string(entry.path()).unwrap());
        }
    }
    assert!(logs.contains("replayed token refused"), "the debug log was written");
    for token in &tokens {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!logs.contains(signature), "a token signature is in the log");
        let claims = token.split('.').nth(1).unwrap();
        assert!(!logs.contains(claims), "a token's claims segment is in the log");
    }
    assert!(!logs.contains(secret), "the HS256 secret is in the log");
    assert!(!logs.contains(password), "the SASL password is in the log");
}

#[tokio::test]
async fn a_cluster_without_the_topics_is_refused_at_start_naming_them() {
    // The embedded cluster creates topics on demand; a real one does not.
    if std::env::var("TEST_KAFKA_BOOTSTRAP").is_err() {
        return;
    }
    let infra = infra().await;
    let out = serve(&infra)
        .env("TOLLGATE_TOPICS__GRANTS", "tollgate.grants.never-created")
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("topics missing on the cluster: tollgate.grants.never-created"), "{err}");
}

#[tokio::test]
async fn topics_keep_messages_as_long_as_the_law_requires_and_a_shorter_retention_is_reported_or_refused() {
    // The embedded cluster keeps nothing past its run and has no admin API.
    let Ok(bootstrap) = std::env::var("TEST_KAFKA_BOOTSTRAP") else { return };
    let infra = infra().await;
    let settings = infra.settings();
    let wanted = infra.topics.with_retention(&settings.kafka.retention);
    // Created by the suite with tollgate's own retention: nothing short.
    let short = tollgate::kafka::retention_shortfalls(&settings.kafka, &bootstrap, &wanted).await.unwrap();
    assert!(short.is_empty(), "{short:?}");
    let audit = wanted.iter().find(|(t, _)| *t == infra.topics.audit).unwrap();
    assert_eq!(audit.1, -1, "the audit trail is kept forever by default");

    // An audit topic someone created with the broker's usual seven days.
    let mut topics = tollgate::config::Topics::with_suffix(&uuid::Uuid::new_v4().simple().to_string()[..10]);
    topics.audit = format!("{}.seven-days", topics.audit);
    let mut created = topics.with_retention(&settings.kafka.retention);
    for (t, ms) in &mut created {
        if *t == topics.audit {
            *ms = 7 * 86_400_000;
        }
    }
    tollgate::kafka::ensure_topics(&settings.kafka, &bootstrap, &created).await.unwrap();
    let serve_on = |enforce: bool| {
        let mut c = serve(&infra);
        c.envs(topic_env(&topics)).env("TOLLGATE_KAFKA__ENFORCE_RETENTION", enforce.to_string());
        c
    };
    let out = serve_on(true).stderr(Stdio::piped()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&format!("{} keeps messages 7 days but must keep them forever", topics.audit)), "{err}");

    // Without enforcement it starts, saying so loudly.
    let log = infra.dir.path().join("short-retention.log");
    let mut child = Running(serve_on(false).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("TOPIC RETENTION SHORTER THAN REQUIRED") {
        assert!(std::time::Instant::now() < deadline, "no warning in {}", log.display());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop_with_sigterm(&mut child);

    // A retention below the legal floor is refused as configuration.
    let out =
        serve(&infra).env("TOLLGATE_KAFKA__RETENTION__RECORDS_DAYS", "30").stderr(Stdio::piped()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("records_days = 30 is below the legal minimum of 1095 days"),
        "{err}"
    );
}

#[tokio::test]
async fn audit_query_filters_stored_events_and_audit_tail_follows_the_topic() {
    let mut app = spawn_app().await;
    let tour = "GX-610100-TOUR-0001";
    let hway = "GX-610000-HWAY-0004";
    for (id, sub, scenario, dataset, op, class) in [
        ("q-1", TRAVEL, "smart-tourism", tour, "query", "industry"),
        ("q-2", TRAVEL, "smart-tourism", tour, "query", "industry"),
        ("dl-1", TRAVEL, "smart-tourism", tour, "download", "industry"),
        ("r-1", RESCUE, "highway-rescue", hway, "query", "public_governance"),
    ] {
        let token = app.infra.token(sub, &[], 600);
        app.send_json(&request(id, Some(&token), scenario, dataset, op, class)).await;
    }
    let _ = app.request_audit(4).await;

    // tail: only what matches, from the topic's end on.
    let mut tail = Running(
        tollgate()
            .args(["audit", "tail", "--enterprise", TRAVEL, "--outcome", "denied"])
            .env("TOLLGATE_KAFKA__BOOTSTRAP_SERVERS", &app.infra.bootstrap)
            .envs(topic_env(&app.infra.topics))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let (lines, stdout) = (lines.clone(), tail.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        })
    };
    // The tail joins at the end of the topic: send until it has seen one.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut n = 0;
    while lines.lock().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "audit tail printed nothing");
        n += 1;
        let (travel, rescue) = (app.infra.token(TRAVEL, &[], 600), app.infra.token(RESCUE, &[], 600));
        app.send_json(&request(&format!("t-dl-{n}"), Some(&travel), "smart-tourism", tour, "download", "industry"))
            .await;
        app.send_json(&request(
            &format!("t-r-{n}"),
            Some(&rescue),
            "highway-rescue",
            hway,
            "query",
            "public_governance",
        ))
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let _ = app.request_audit(4 + 2 * n).await;
    app.stop().await;
    let _ = tail.0.kill();
    let _ = reader.join();
    for line in lines.lock().unwrap().iter() {
        let e: tollgate::contract::AuditEvent = serde_json::from_str(line).unwrap();
        assert_eq!((e.subject.as_str(), e.outcome.as_str()), (TRAVEL, "denied"), "{line}");
    }

    let query = |args: &[&str]| {
        let out = tollgate()
            .args(["audit", "query"])
            .args(args)
            .env("TOLLGATE_DATABASE__URL", &app.infra.database_url)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let events = |args: &[&str]| -> Vec<tollgate::contract::AuditEvent> {
        let mut all = vec!["--json"];
        all.extend(args);
        query(&all).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let approved = events(&["--enterprise", TRAVEL, "--outcome", "approved"]);
    assert_eq!(approved.len(), 2, "{approved:?}");
    assert!(approved.windows(2).all(|w| w[0].occurred_at <= w[1].occurred_at), "oldest first");
    assert_eq!(events(&["--scenario", "highway-rescue"]).len(), 1 + n);
    assert_eq!(events(&["--dataset", tour, "--reason", "policy.no_matching_rule"]).len(), 1 + n);
    assert_eq!(events(&["--type", "policy_loaded"]).len(), 1);
    assert_eq!(events(&["--from", "1h", "--limit", "3"]).len(), 3);
    assert_eq!(events(&["--from", "1h"]).len(), 5 + 2 * n, "every event of this run");
    assert!(events(&["--to", "2000-01-01T00:00:00Z"]).is_empty());
    let table = query(&["--enterprise", RESCUE]);
    assert!(table.starts_with("occurred_at") && table.contains(hway), "{table}");
    assert!(query(&["--enterprise", "nobody"]).contains("no audit event matches"));
}

#[tokio::test]
async fn an_audit_export_verifies_without_tollgate_and_names_what_was_changed_in_it() {
    let app = three_approved_then_stopped("x").await;
    let dir = app.infra.dir.path().join("export");
    let out = tollgate()
        .args(["audit", "export", "--from", "1h", dir.to_str().unwrap()])
        .env("TOLLGATE_DATABASE__URL", &app.infra.database_url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("exported 4 events on 2 chain(s)"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["events.jsonl", "checkpoints.jsonl", "audit-keys.json", "MANIFEST.json", "verify.py", "README.txt"] {
        assert!(dir.join(f).exists(), "{f}");
    }
    let again = tollgate()
        .args(["audit", "export", "--from", "1h", dir.to_str().unwrap()])
        .env("TOLLGATE_DATABASE__URL", &app.infra.database_url)
        .output()
        .unwrap();
    assert!(!again.status.success(), "an export is never overwritten");

    let has_crypto = Command::new("python3")
        .args(["-c", "import cryptography"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_crypto {
        eprintln!("python3 has no `cryptography`: the export's verify.py is not run here (CI runs it)");
        return;
    }
    let verify = || {
        let out = Command::new("python3").arg(dir.join("verify.py")).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (ok, out) = verify();
    assert!(ok && out.starts_with("ok: 4 events on 2 chain(s)"), "{out}");

    let events_path = dir.join("events.jsonl");
    let original = std::fs::read_to_string(&events_path).unwrap();
    let reseal = |events: &str, manifest_change: &dyn Fn(&mut serde_json::Value)| {
        use sha2::Digest;
        std::fs::write(&events_path, events).unwrap();
        let mut manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("MANIFEST.json")).unwrap()).unwrap();
        manifest["files"]["events.jsonl"] = hex::encode(sha2::Sha256::digest(events.as_bytes())).into();
        manifest_change(&mut manifest);
        std::fs::write(dir.join("MANIFEST.json"), manifest.to_string()).unwrap();
    };
    // Changed in place: the manifest no longer matches.
    let changed = original.replacen("\"approved\"", "\"denied\"", 1);
    std::fs::write(&events_path, &changed).unwrap();
    let (ok, out) = verify();
    assert!(!ok && out.contains("events.jsonl differs from MANIFEST.json"), "{out}");
    // … and with the manifest redone: the event's hash does not.
    reseal(&changed, &|_| {});
    let (ok, out) = verify();
    assert!(!ok && out.contains("changed event: tollgate.requests"), "{out}");
    // The newest request event dropped and the manifest made to agree:
    // the signed checkpoint still certifies it.
    let kept: String = original
        .lines()
        .filter(|l| !(l.contains("\"seq\":3,") && l.contains("tollgate.requests")))
        .map(|l| format!("{l}\n"))
        .collect();
    let second: serde_json::Value = serde_json::from_str(
        kept.lines().find(|l| l.contains("\"seq\":2,") && l.contains("tollgate.requests")).unwrap(),
    )
    .unwrap();
    let chain = second["chain"].as_str().unwrap().to_owned();
    reseal(&kept, &|m| {
        m["chains"][&chain]["last_seq"] = 2.into();
        m["chains"][&chain]["last_hash"] = second["hash"].clone();
    });
    let (ok, out) = verify();
    assert!(!ok && out.contains("is not the one its checkpoint certified"), "{out}");
}

#[tokio::test]
async fn audit_prune_keeps_three_years_and_leaves_chains_that_still_verify_from_a_checkpoint() {
    let app = three_approved_then_stopped("p").await;
    let run = |args: &[&str]| {
        let out = tollgate().args(args).env("TOLLGATE_DATABASE__URL", &app.infra.database_url).output().unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    // Nothing younger than three years goes.
    let (ok, out) = run(&["audit", "prune", "--before", "30d"]);
    assert!(!ok && out.contains("the legal minimum (PIPL art. 56)"), "{out}");

    // The request chain made to look five years old (its stored time).
    let (pool, requests) = (five_years_old_request_chain(&app.infra).await, REQUEST_CHAINS);
    let head: i64 = sqlx::query_scalar(&format!("SELECT MAX(seq) FROM audit_checkpoints WHERE {requests}"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(head, 3, "the stop checkpointed the chain's head");
    let (ok, out) = run(&["audit", "prune", "--before", "1500d", "--json"]);
    assert!(ok, "{out}");
    let pruned: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!((pruned["events"].as_u64(), pruned["decisions"].as_u64()), (Some(2), Some(2)), "{out}");
    let left: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM audit_events WHERE {requests}"))
        .fetch_one(&pool)
        .await
        .unwrap();
    let decisions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM decisions").fetch_one(&pool).await.unwrap();
    let usage: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM usage_records").fetch_one(&pool).await.unwrap();
    assert_eq!((left, decisions, usage), (1, 1, 1), "the anchor event and what it recorded stay");
    pool.close().await;

    // What remains verifies from its checkpoint, chains, checkpoints and cross-checks.
    let (ok, out) = run(&["audit", "verify"]);
    assert!(ok && out.contains("checkpoint at 3"), "{out}");
}

#[tokio::test]
async fn with_audit_retention_days_set_an_instance_prunes_the_trail_on_its_own_and_it_still_verifies() {
    let app = three_approved_then_stopped("s").await;
    // The request chain made to look five years old (its stored time); the
    // stop checkpointed its head.
    let (pool, requests) = (five_years_old_request_chain(&app.infra).await, REQUEST_CHAINS);
    let count = format!("SELECT COUNT(*) FROM audit_events WHERE {requests}");
    assert_eq!(sqlx::query_scalar::<_, i64>(&count).fetch_one(&pool).await.unwrap(), 3);

    let app = app.restart_with(|s| s.audit.retention_days = 1095).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while sqlx::query_scalar::<_, i64>(&count).fetch_one(&pool).await.unwrap() != 1 {
        assert!(Instant::now() < deadline, "the scheduled prune did not cut the chain at its checkpoint");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let decisions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM decisions").fetch_one(&pool).await.unwrap();
    assert_eq!(decisions, 1, "the removed events' decisions went with them");
    pool.close().await;
    let out =
        tollgate().args(["audit", "verify"]).env("TOLLGATE_DATABASE__URL", &app.infra.database_url).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("checkpoint at 3"), "{text}{}", String::from_utf8_lossy(&out.stderr));
}

/// An instance that approved three tour requests and stopped (which
/// checkpointed its chains).
async fn three_approved_then_stopped(prefix: &str) -> TestApp {
    let mut app = spawn_app().await;
    for i in 0..3 {
        let token = app.infra.token(TRAVEL, &[], 600);
        let body = request(
            &format!("{prefix}-{i}"),
            Some(&token),
            "smart-tourism",
            "GX-610100-TOUR-0001",
            "query",
            "industry",
        );
        app.send(TRAVEL, body.to_string().as_bytes()).await;
    }
    let _ = app.request_audit(3).await;
    app.stop().await;
    app
}

const REQUEST_CHAINS: &str = "chain LIKE 'tollgate.requests%'";

/// The request chains made to look five years old (their stored time).
async fn five_years_old_request_chain(infra: &Infra) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&infra.database_url).await.unwrap();
    sqlx::query(&format!("UPDATE audit_events SET occurred_at = '2021-06-01T00:00:00+00:00' WHERE {REQUEST_CHAINS}"))
        .execute(&pool)
        .await
        .unwrap();
    pool
}
