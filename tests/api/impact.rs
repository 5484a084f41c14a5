//! `tollgate policy impact`: a proposed policy replayed against the
//! decisions a running instance stored.

use crate::binary::tollgate;
use crate::helpers::*;

fn impact(dir: &std::path::Path, database_url: &str, extra: &[&str]) -> (bool, serde_json::Value) {
    let out = tollgate()
        .args(["policy", "impact", dir.to_str().unwrap(), "--database", database_url, "--since", "1d", "--json"])
        .args(extra)
        .output()
        .unwrap();
    let report =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), report)
}

#[tokio::test]
async fn impact_replays_stored_decisions_under_a_proposed_policy_and_counts_what_would_change() {
    let mut app = spawn_app().await;
    let travel = || app.infra.token(TRAVEL, &[], 600);
    let tour = "GX-610100-TOUR-0001";
    for i in 0..3 {
        app.send_json(&request(&format!("q-{i}"), Some(&travel()), "smart-tourism", tour, "query", "industry")).await;
    }
    app.send_json(&request("dl", Some(&travel()), "smart-tourism", tour, "download", "industry")).await;
    let rescue = app.infra.token(RESCUE, &[], 600);
    let hway = "GX-610000-HWAY-0004";
    app.send_json(&request("r-1", Some(&rescue), "highway-rescue", hway, "query", "public_governance")).await;
    app.send_json(&request("anon", None, "smart-tourism", tour, "query", "industry")).await;
    let _ = app.request_audit(6).await;
    app.stop().await;
    let url = app.infra.database_url.clone();

    // The policy in force, replayed: nothing changes.
    let unchanged = policy_copy(&app.infra, false);
    let (ok, report) = impact(&unchanged, &url, &["--max-changes", "0"]);
    assert!(ok, "{report}");
    assert_eq!(report["summary"]["replayed"], 5, "{report}");
    assert_eq!(report["summary"]["not_replayable"], 1, "the request without a token consulted no policy");
    assert_eq!(report["summary"]["changed"], 0, "{report}");

    // Travel loses query and gains download on tourism data.
    let rules = std::fs::read_to_string(unchanged.join("policy.csv")).unwrap();
    let deny = "p, tourism-developer, smart-tourism, tourism-data, query, deny";
    let allow = "p, tourism-developer, smart-tourism, tourism-data, download, allow";
    std::fs::write(unchanged.join("policy.csv"), format!("{rules}{deny}\n{allow}\n")).unwrap();
    let (ok, report) = impact(&unchanged, &url, &[]);
    assert!(ok, "no threshold, no failure: {report}");
    let summary = &report["summary"];
    assert_eq!(summary["changed"], 4, "{report}");
    assert_eq!(summary["by_kind"]["approved_to_denied"], 3);
    assert_eq!(summary["by_kind"]["denied_to_approved"], 1);
    assert_eq!(summary["by_rule"][deny]["approved_to_denied"], 3, "{report}");
    assert_eq!(summary["by_rule"][allow]["denied_to_approved"], 1, "{report}");
    assert_eq!(summary["by_enterprise"][TRAVEL]["approved_to_denied"], 3);
    assert!(summary["by_enterprise"].get(RESCUE).is_none(), "rescue is not affected");
    let changes = report["changes"].as_array().unwrap();
    let dl = changes.iter().find(|c| c["request_id"] == "dl").unwrap();
    assert_eq!((dl["before"]["outcome"].as_str(), dl["after"]["outcome"].as_str()), (Some("denied"), Some("approved")));
    assert_eq!(dl["before"]["reason"], "policy.no_matching_rule");
    assert!(dl["after"]["amount_fen"].as_i64().is_some(), "the new approval is priced: {dl}");

    // A policy repository's CI gates on the count.
    let (ok, report) = impact(&unchanged, &url, &["--max-changes", "3"]);
    assert!(!ok && report["ok"] == false);
    let (ok, _) = impact(&unchanged, &url, &["--max-changes", "4"]);
    assert!(ok);

    // What is stored to replay holds no token.
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let inputs: Vec<String> =
        sqlx::query_scalar("SELECT inputs FROM decisions WHERE inputs IS NOT NULL").fetch_all(&pool).await.unwrap();
    assert_eq!(inputs.len(), 5);
    assert!(inputs.iter().all(|i| !i.contains("eyJ") && i.contains("\"used\"")), "{inputs:?}");
    pool.close().await;
}
