//! Metering from evidence: data hosts report what they served under a
//! grant on the usage-reports topic; tollgate checks each report against
//! the grant, prices it when the item charges on report, flags one beyond
//! the grant and refuses the rest with stable codes.

use tollgate::auth::Claims;
use tollgate::contract::{AuditEvent, Basis, Reply, UsageRecord};

use crate::helpers::*;

/// The Xi'an Municipal Transport Bureau: holds and hosts the ridership data.
const TRANSIT_HOLDER: &str = "11610100MB00014441";
const RIDERSHIP: &str = "GX-610100-TRAN-0002";

fn host_token(app: &TestApp, org: &str, roles: &[&str]) -> String {
    app.infra.idp.sign(&Claims::new(org, ISSUER, "tollgate", 600).with_roles(roles))
}

impl TestApp {
    async fn report(&self, payload: &serde_json::Value) {
        let key = payload["decision_id"].as_str().unwrap();
        self.client.produce(&self.infra.topics.usage_reports, key, payload.to_string().as_bytes(), &[]).await.unwrap();
    }

    /// An approved request for `records` ridership records: its approval's
    /// usage record.
    async fn ridership_grant(&self, id: &str, records: u64) -> UsageRecord {
        let mut body =
            request(id, Some(&self.infra.token(TRAVEL, &[], 600)), "smart-tourism", RIDERSHIP, "query", "industry");
        body["volume"] = serde_json::json!({"records": records});
        self.send(TRAVEL, body.to_string().as_bytes()).await;
        let usage = self.reader(&self.infra.topics.usage);
        loop {
            let u: UsageRecord = serde_json::from_slice(&read_n(&usage, 1).await[0].payload).unwrap();
            if u.request_id == id {
                return u;
            }
        }
    }
}

fn report(id: &str, grant: &UsageRecord, units: u64, token: &str) -> serde_json::Value {
    serde_json::json!({
        "schema": "tollgate.usage_report/v1", "report_id": id, "decision_id": grant.decision_id,
        "dataset": grant.dataset, "operation": "query", "units": units, "unit": "record",
        "served_from": grant.recorded_at, "served_to": chrono::Utc::now(), "token": token,
    })
}

/// The next usage record written for a report.
async fn reported(usage: &tollgate::kafka::Reader) -> UsageRecord {
    loop {
        let u: UsageRecord = serde_json::from_slice(&read_n(usage, 1).await[0].payload).unwrap();
        if u.basis == Basis::Report {
            return u;
        }
    }
}

async fn answer(replies: &tollgate::kafka::Reader, id: &str) -> Reply {
    loop {
        let r: Reply = serde_json::from_slice(&read_n(replies, 1).await[0].payload).unwrap();
        if r.command_id == id {
            return r;
        }
    }
}

#[tokio::test]
async fn a_host_report_is_charged_per_record_served_once_and_flagged_beyond_its_grant() {
    let app = spawn_app().await;
    let approval = app.ridership_grant("m-1", 1500).await;
    // Charged on report: the approval reserves the quota, costs nothing.
    assert_eq!((approval.basis, approval.quantity, approval.amount_fen), (Basis::Approval, 1500, 0));
    let (replies, usage) = (app.reader(&app.infra.topics.replies), app.reader(&app.infra.topics.usage));
    let host = host_token(&app, TRANSIT_HOLDER, &["data_host"]);

    let first = report("rep-1", &approval, 1000, &host);
    app.report(&first).await;
    let accepted = answer(&replies, "rep-1").await;
    assert_eq!((accepted.command.as_str(), accepted.outcome.as_str()), ("usage_report", "accepted"), "{accepted:?}");
    let u = reported(&usage).await;
    assert_eq!((u.basis, u.quantity, u.unit_price_fen, u.amount_fen), (Basis::Report, 1000, 1, 1000));
    assert_eq!((u.decision_id.as_str(), u.request_id.as_str()), (approval.decision_id.as_str(), "m-1"));
    assert_eq!(u.report.as_ref().map(|r| r.host.as_str()), Some(TRANSIT_HOLDER));
    assert!(u.flags.is_empty());

    // Redelivered: the same answer and the same record again (same
    // usage_id: consumers keep one), nothing counted twice.
    app.report(&first).await;
    assert_eq!(answer(&replies, "rep-1").await, accepted);
    assert_eq!(reported(&usage).await, u);

    // 1000 + 700 > the 1500 the grant allowed: accepted, charged, flagged.
    app.report(&report("rep-2", &approval, 700, &host)).await;
    let flagged = answer(&replies, "rep-2").await;
    assert_eq!(flagged.outcome, "accepted");
    assert_eq!(flagged.reasons.iter().map(|r| r.code.as_str()).collect::<Vec<_>>(), ["usage.exceeds_grant"]);
    let second = reported(&usage).await;
    assert_eq!(second.report.as_ref().map(|r| r.report_id.as_str()), Some("rep-2"));
    assert_eq!((second.amount_fen, second.flags[0].code.as_str()), (700, "usage.exceeds_grant"));
    let (_, metrics) = app.get("/metrics").await;
    assert!(metrics.contains("tollgate_usage_exceeds_grant_total 1"), "{metrics}");
    assert!(metrics.contains("tollgate_usage_reports_total{outcome=\"accepted\"} 2"), "{metrics}");

    let store = tollgate::store::Store::connect(&app.infra.database_url, 1).await.unwrap();
    assert_eq!(store.reported_units(&approval.decision_id).await.unwrap(), 1700, "rep-1 counted once");
    let audit: Vec<AuditEvent> = app.request_audit(4).await.iter().map(audit_event).collect();
    let reports: Vec<_> = audit.iter().filter(|e| e.event_type == "usage_report").collect();
    assert!(reports.iter().all(|e| e.actor == TRANSIT_HOLDER && e.subject == TRAVEL), "{reports:?}");

    // Reconciliation: one grant over, one within, one with no report.
    let within = app.ridership_grant("m-1b", 500).await;
    let silent = app.ridership_grant("m-1c", 300).await;
    app.report(&report("rep-3", &within, 200, &host)).await;
    assert_eq!(answer(&replies, "rep-3").await.outcome, "accepted");
    let out = crate::binary::tollgate()
        .args(["usage", "reconcile", "--period", &approval.period, "--json"])
        .env("TOLLGATE_DATABASE__URL", &app.infra.database_url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let line = |d: &UsageRecord| {
        r["grants"].as_array().unwrap().iter().find(|g| g["decision_id"] == d.decision_id.as_str()).unwrap().clone()
    };
    let figures = |g: serde_json::Value| {
        (
            g["approved"].as_u64(),
            g["reported"].as_u64(),
            g["reports"].as_u64(),
            g["charged_fen"].as_i64(),
            g["status"].as_str().map(str::to_owned),
        )
    };
    assert_eq!(figures(line(&approval)), (Some(1500), Some(1700), Some(2), Some(1700), Some("over".into())));
    assert_eq!(figures(line(&within)), (Some(500), Some(200), Some(1), Some(200), Some("within".into())));
    assert_eq!(figures(line(&silent)), (Some(300), Some(0), Some(0), Some(0), Some("no_report".into())));
    let t = &r["totals"];
    assert_eq!(
        (t["grants"].as_u64(), t["over"].as_u64(), t["within"].as_u64(), t["no_report"].as_u64()),
        (Some(3), Some(1), Some(1), Some(1))
    );
    assert_eq!((t["approved_fen"].as_i64(), t["reported_fen"].as_i64()), (Some(0), Some(1900)));
}

#[tokio::test]
async fn reports_on_unknown_or_revoked_grants_or_from_other_departments_are_refused_and_audited() {
    let app = spawn_app().await;
    let approval = app.ridership_grant("m-2", 100).await;
    let replies = app.reader(&app.infra.topics.replies);
    let host = host_token(&app, TRANSIT_HOLDER, &["data_host"]);
    let code = |r: Reply| (r.outcome, r.reasons.first().map(|x| x.code.clone()).unwrap_or_default());
    let refused = |c: &str| ("refused".to_owned(), c.to_owned());

    let mut r = report("bad-1", &approval, 10, &host);
    r["decision_id"] = "no-such-grant".into();
    app.report(&r).await;
    assert_eq!(code(answer(&replies, "bad-1").await), refused("report.unknown_grant"));

    let tourism_bureau = host_token(&app, "11610100MB00014076", &["data_host"]);
    app.report(&report("bad-2", &approval, 10, &tourism_bureau)).await;
    assert_eq!(code(answer(&replies, "bad-2").await), refused("report.not_holder"));

    let not_a_host = host_token(&app, TRANSIT_HOLDER, &["reviewer"]);
    app.report(&report("bad-3", &approval, 10, &not_a_host)).await;
    assert_eq!(code(answer(&replies, "bad-3").await), refused("report.not_data_host"));

    let mut wrong_unit = report("bad-4", &approval, 10, &host);
    wrong_unit["unit"] = "megabyte".into();
    app.report(&wrong_unit).await;
    assert_eq!(code(answer(&replies, "bad-4").await), refused("report.unit_mismatch"));

    // Revoked by an operator: usage served after that is refused.
    let operator =
        app.infra.idp.sign(&Claims::new("11610000MB0001111E", ISSUER, "tollgate", 600).with_roles(&["operator"]));
    let command = serde_json::json!({"schema": "tollgate.revoke/v1", "command_id": "c-m2", "token": operator,
        "target": {"grant": approval.decision_id}, "reason": "contract ended"});
    app.client.produce(&app.infra.topics.revocations, "ops", command.to_string().as_bytes(), &[]).await.unwrap();
    assert_eq!(answer(&replies, "c-m2").await.outcome, "accepted");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    app.report(&report("bad-5", &approval, 10, &host)).await;
    assert_eq!(code(answer(&replies, "bad-5").await), refused("report.grant_revoked"));

    let store = tollgate::store::Store::connect(&app.infra.database_url, 1).await.unwrap();
    assert_eq!(store.reported_units(&approval.decision_id).await.unwrap(), 0, "a refused report counts nothing");
    let audit: Vec<AuditEvent> = app.request_audit(7).await.iter().map(audit_event).collect();
    let refusals = audit.iter().filter(|e| e.event_type == "usage_report" && e.outcome == "refused").count();
    assert_eq!(refusals, 5);
}

#[tokio::test]
async fn usage_report_sums_the_period_and_the_first_revenue_past_the_cap_is_audited_once() {
    let infra = infra().await;
    // A cap of 100 fen a year: three tour calls at 50 fen pass it.
    let policy = policy_copy(&infra, false);
    let catalogue = policy.join("catalogue.toml");
    let text = std::fs::read_to_string(&catalogue).unwrap();
    std::fs::write(&catalogue, text.replacen("yearly_revenue_cap_fen = 50000000", "yearly_revenue_cap_fen = 100", 1))
        .unwrap();
    let mut settings = infra.settings();
    settings.policy.dir = policy.clone();
    settings.grant.recheck_secs = 1;
    let app = start(infra, settings).await;
    for i in 0..3 {
        let token = app.infra.token(TRAVEL, &[], 600);
        app.send_json(&request(
            &format!("t-{i}"),
            Some(&token),
            "smart-tourism",
            "GX-610100-TOUR-0001",
            "query",
            "industry",
        ))
        .await;
    }
    let approval = app.ridership_grant("t-r", 400).await;
    let host = host_token(&app, TRANSIT_HOLDER, &["data_host"]);
    let replies = app.reader(&app.infra.topics.replies);
    app.report(&report("t-rep", &approval, 250, &host)).await;
    assert_eq!(answer(&replies, "t-rep").await.outcome, "accepted");

    // A command on this database and policy: its standard output.
    let cli = |args: &[&str]| {
        let out = crate::binary::tollgate()
            .args(args)
            .env("TOLLGATE_DATABASE__URL", &app.infra.database_url)
            .env("TOLLGATE_POLICY__DIR", &policy)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let run = |format: &str| cli(&["usage", "report", "--period", &approval.period, "--format", format]);
    let doc: serde_json::Value = serde_json::from_str(&run("json")).unwrap();
    let lines = doc["lines"].as_array().unwrap();
    let line = |item: &str| lines.iter().find(|l| l["price_item"] == item).unwrap().clone();
    let tour = line("tour-flow-api");
    assert_eq!(
        (tour["approvals"].as_u64(), tour["approved_units"].as_u64(), tour["charged_fen"].as_i64()),
        (Some(3), Some(3), Some(150))
    );
    let transit = line("transit-records");
    assert_eq!(
        (
            transit["approvals"].as_u64(),
            transit["approved_units"].as_u64(),
            transit["reports"].as_u64(),
            transit["reported_units"].as_u64(),
            transit["charged_fen"].as_i64()
        ),
        (Some(1), Some(400), Some(1), Some(250), Some(250))
    );
    assert_eq!(doc["charged_fen"].as_i64(), Some(400));
    let revenue = &doc["revenue"];
    assert_eq!(
        (revenue["revenue_fen"].as_i64(), revenue["cap_fen"].as_i64(), revenue["excess_fen"].as_i64()),
        (Some(400), Some(100), Some(300))
    );
    let csv = run("csv");
    assert!(csv.starts_with("subject,dataset,scenario,price_item,approvals,approved_units,reports,reported_units,charged_fen,waived_records,waived_units\n"), "{csv}");
    assert!(
        csv.contains(&format!("{TRAVEL},GX-610100-TOUR-0001,smart-tourism,tour-flow-api,3,3,0,0,150,0,0")),
        "{csv}"
    );
    let chart = app.infra.dir.path().join("usage.svg");
    cli(&["usage", "report", "--period", &approval.period, "--chart", chart.to_str().unwrap()]);
    let svg = std::fs::read_to_string(&chart).unwrap();
    // One line for the one scenario, its five records in the legend, the
    // y axis topped at a round 5 (all on one day).
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{svg}");
    assert_eq!(svg.matches("<polyline").count(), 1, "{svg}");
    assert!(svg.contains(">smart-tourism (5)</text>") && svg.contains("text-anchor=\"end\">5</text>"), "{svg}");
    let table = run("table");
    assert!(table.contains("EXCEEDED by 300 fen, to be deducted next period"), "{table}");

    // The yearly disclosure: grants per scenario and enterprise, ceilings
    // and actual prices, revenue against the cap.
    let year = &approval.period[..4];
    let disclose = |more: &[&str]| cli(&[&["disclosure", "--year", year][..], more].concat());
    let d: serde_json::Value = serde_json::from_str(&disclose(&["--json"])).unwrap();
    let grants = d["grants"].as_array().unwrap();
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!((grants[0]["subject"].as_str(), grants[0]["grants"].as_u64()), (Some(TRAVEL), Some(4)));
    let product = |code: &str| d["products"].as_array().unwrap().iter().find(|p| p["dataset"] == code).unwrap().clone();
    let tour = product("GX-610100-TOUR-0001");
    assert_eq!(
        (tour["ceiling_fen"].as_i64(), tour["charged_units"].as_u64(), tour["actual_price_fen"].as_str()),
        (Some(80), Some(3), Some("50.00"))
    );
    let transit = product(RIDERSHIP);
    assert_eq!(
        (transit["charged_units"].as_u64(), transit["charged_fen"].as_i64(), transit["actual_price_fen"].as_str()),
        (Some(250), Some(250), Some("1.00"))
    );
    assert_eq!((d["revenue_fen"].as_i64(), d["revenue"]["excess_fen"].as_i64()), (Some(400), Some(300)));
    let dir = app.infra.dir.path().join("disclosure");
    let wrote = disclose(&["--out", dir.to_str().unwrap()]);
    assert!(wrote.starts_with("wrote "), "{wrote}");
    let md = std::fs::read_to_string(dir.join(format!("disclosure-{year}.md"))).unwrap();
    assert!(md.contains("Revenue in") && md.contains("¥4.00 of a permitted ¥1.00; ¥3.00 beyond it"), "{md}");
    assert!(dir.join(format!("disclosure-{year}.json")).exists());

    // The re-check notices the crossing and audits it once.
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&app.infra.database_url).await.unwrap();
    let count = "SELECT COUNT(*) FROM audit_events WHERE event_type = 'revenue_cap_exceeded'";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while sqlx::query_scalar::<_, i64>(count).fetch_one(&pool).await.unwrap() == 0 {
        assert!(std::time::Instant::now() < deadline, "the crossing was never audited");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(sqlx::query_scalar::<_, i64>(count).fetch_one(&pool).await.unwrap(), 1, "audited once");
    let body: String = sqlx::query_scalar("SELECT body FROM audit_events WHERE event_type = 'revenue_cap_exceeded'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let event: AuditEvent = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (event.reasons[0].code.as_str(), event.subject.as_str()),
        ("usage.revenue_cap_exceeded", "91610000MA6TGP0D8K")
    );
    assert!(event.reasons[0].message.contains("the excess of 300 fen"), "{}", event.reasons[0].message);
    let (_, metrics) = app.get("/metrics").await;
    assert!(
        metrics.contains("tollgate_revenue_year_fen 400") && metrics.contains("tollgate_revenue_cap_fen 100"),
        "{metrics}"
    );
    pool.close().await;
}
