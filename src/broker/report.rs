//! Data hosts' usage reports, in batch order inside the batch's
//! transaction: the report judged by `decide::report` against the grant as
//! stored, and — accepted — a usage record with `basis: report`, priced
//! when the item charges on report, flagged when beyond the grant. The
//! reply, the record and the audit event are stored as the report's
//! outcome (`report:<report_id>`), so a redelivered report changes nothing
//! and publishes the same bytes again.
//!
//! What must stay true: reported units are counted once; a refused report
//! stores no usage; every report, accepted or refused, is audited.

use super::DecisionService;
use super::prepare::Origin;
use crate::audit;
use crate::auth::{AuthError, Principal};
use crate::contract::{
    AuditEvent, Basis, EventType, REPLY_SCHEMA, Reply, Reported, USAGE_SCHEMA, UsageRecord, UsageReport,
};
use crate::decide::report::{ReportCharge, ReportInput, evaluate_report};
use crate::metering::period_of;
use crate::ops::Health;
use crate::policy::Policy;
use crate::store::{Batch, Commit, Output, ReportedGrant, StoreError, Stream, reported_period};

impl DecisionService {
    /// Answers one usage report (see the module documentation).
    pub(super) async fn report(
        &self,
        batch: &mut Batch,
        policy: &Policy,
        origin: &Origin<'_>,
        report: UsageReport,
        identity: Result<Principal, AuthError>,
    ) -> Result<Commit, StoreError> {
        let now = origin.now;
        let grant = batch.reported_grant(&report.decision_id).await?;
        let (for_grant, in_period) = match &grant {
            Some(g) => (
                batch.reported_for_grant(&report.decision_id).await?,
                batch.usage_in_period(&g.subject, &g.facts.dataset, &reported_period(&period_of(now))).await?,
            ),
            None => (0, 0),
        };
        let price = grant.as_ref().and_then(|g| policy.catalogue().datasets.get(&g.facts.dataset)).map(|d| &d.price);
        let judged = evaluate_report(&ReportInput {
            report: &report,
            host: identity.as_ref(),
            grant: grant.as_ref().map(|g| &g.facts),
            price,
            reported_for_grant: for_grant,
            reported_in_period: in_period,
            now,
            leeway_secs: self.token_leeway_secs,
        });
        let host = identity.as_ref().map_or("unauthenticated", |p| p.organisation.as_str()).to_owned();
        let usage = match (&judged, &grant) {
            (Ok(charge), Some(g)) => Some(self.reported_usage(&report, g, charge, &host, now)),
            _ => None,
        };
        let counters = &self.health.counters;
        match &judged {
            Ok(c) if !c.flags.is_empty() => Health::count(&counters.reports_exceeding),
            _ => {}
        }
        Health::count(if judged.is_ok() { &counters.reports_accepted } else { &counters.reports_refused });
        let (outcome, reasons) = match &judged {
            Ok(c) => ("accepted", c.flags.clone()),
            Err(refusal) => ("refused", vec![refusal.clone()]),
        };
        let reply = Reply {
            schema: REPLY_SCHEMA.into(),
            command_id: report.report_id.clone(),
            command: "usage_report".into(),
            outcome: outcome.into(),
            reasons: reasons.clone(),
            revoked: Vec::new(),
            decision_id: Some(report.decision_id.clone()),
            replied_at: now,
            trace_id: origin.trace_id.clone(),
        };
        let payload = serde_json::to_string(&reply).expect("replies serialise");
        Ok(Commit {
            idem_key: origin.idem_key.clone(),
            kind: "command",
            decision: None,
            messages: vec![Output { stream: Stream::Replies, key: report.report_id.clone(), payload }],
            audit: AuditEvent {
                actor: host,
                subject: grant.as_ref().map(|g| g.subject.clone()).unwrap_or_default(),
                resource: report.dataset.clone(),
                action: "report".into(),
                outcome: outcome.into(),
                reasons,
                policy_version: policy.version().to_owned(),
                request_digest: audit::digest(&origin.msg.payload),
                ..AuditEvent::draft(origin.chain.clone(), EventType::UsageReport, now, origin.trace_id.clone())
            },
            usage,
            grant: None,
            review: None,
            supersedes: None,
            created_at: super::rfc3339(now),
        })
    }

    /// The usage record of an accepted report: the approval's terms, the
    /// units served, the report's charge and flags.
    fn reported_usage(
        &self,
        report: &UsageReport,
        grant: &ReportedGrant,
        charge: &ReportCharge,
        host: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> UsageRecord {
        let approval = &grant.approval;
        UsageRecord {
            schema: USAGE_SCHEMA.into(),
            usage_id: self.source.id().to_string(),
            quantity: report.units,
            unit_price_fen: charge.unit_price_fen,
            amount_fen: charge.amount_fen,
            fee_waived: charge.fee_waived,
            period: period_of(now),
            quota: charge.quota,
            recorded_at: now,
            basis: Basis::Report,
            report: Some(Reported {
                report_id: report.report_id.clone(),
                host: host.to_owned(),
                served_from: report.served_from,
                served_to: report.served_to,
            }),
            flags: charge.flags.clone(),
            ..approval.clone()
        }
    }
}
