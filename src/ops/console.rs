//! The console (`/console`): one server-rendered page for auditors,
//! reviewers and operators — readiness, the policy in force and its reload
//! history, live decisions (newest first, filtered), the review queue,
//! audit chains with their checkpoints, dead letters, and usage per
//! scenario per day as an SVG chart. Labels in Chinese or English
//! (`?lang=`, else `Accept-Language`).
//!
//! What must stay true: the page shows what the store and the instance
//! hold, never a token (audit events carry digests only); a remote viewer
//! needs a verified token (`auditor`/`operator`: everything; `reviewer`:
//! their department's queue only); every value is HTML-escaped.

use std::fmt::Write as _;

use crate::contract::AuditEvent;
use crate::metering::DailyUsage;
use crate::store::DecisionLine;

use super::{Health, chart};

/// Roles that see the whole console from another host.
pub const CONSOLE_ROLES: [&str; 2] = ["auditor", "operator"];
/// A role that sees its department's review queue.
pub const REVIEWER_ROLE: &str = "reviewer";

/// Who is looking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Viewer {
    /// Loopback, or an auditor's or operator's token.
    Everything,
    /// A reviewer's token: their department's (`org`) review queue only.
    Department(String),
}

/// What the decisions list is filtered by (each set must hold).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct ConsoleFilter {
    pub enterprise: Option<String>,
    pub dataset: Option<String>,
    pub outcome: Option<String>,
    pub reason: Option<String>,
    pub lang: Option<String>,
}

impl ConsoleFilter {
    /// Empty form fields mean "any".
    pub fn normalised(mut self) -> Self {
        for f in [&mut self.enterprise, &mut self.dataset, &mut self.outcome, &mut self.reason] {
            *f = f.take().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        }
        self
    }
}

/// A chain as the console shows it.
#[derive(Debug, Clone)]
pub struct ChainStatus {
    pub chain: String,
    pub head_seq: u64,
    /// The latest checkpoint: its seq and when it was signed.
    pub checkpoint: Option<(u64, String)>,
}

/// Everything the page shows that lives in the store.
#[derive(Debug, Clone)]
pub struct ConsoleData {
    pub policy_version: String,
    pub decisions: Vec<DecisionLine>,
    pub reviews: serde_json::Value,
    pub chains: Vec<ChainStatus>,
    /// The last `audit verify` recorded in the store, if any: when, and what it found.
    pub last_verification: Option<(String, String)>,
    pub dead_letters: Vec<AuditEvent>,
    pub policy_history: Vec<AuditEvent>,
    pub usage_period: String,
    pub usage: DailyUsage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Zh,
    En,
}

impl Lang {
    /// `?lang=` first, else the first language the browser accepts.
    pub fn choose(query: Option<&str>, accept_language: Option<&str>) -> Lang {
        let pick = query.or(accept_language).unwrap_or("zh");
        if pick.trim_start().to_ascii_lowercase().starts_with("en") { Lang::En } else { Lang::Zh }
    }

    fn code(self) -> &'static str {
        match self {
            Lang::Zh => "zh-CN",
            Lang::En => "en",
        }
    }
}

/// (key, 中文, English).
const LABELS: &[(&str, &str, &str)] = &[
    ("title", "tollgate 控制台", "tollgate console"),
    ("ready", "就绪", "Ready"),
    ("not_ready", "未就绪", "Not ready"),
    ("policy", "生效策略", "Policy in force"),
    ("history", "策略加载记录", "Policy reload history"),
    ("decisions", "实时决定", "Live decisions"),
    ("reviews", "待审核队列", "Review queue"),
    ("chains", "审计链与检查点", "Audit chains and checkpoints"),
    ("dead_letters", "死信", "Dead letters"),
    ("usage", "各场景每日用量", "Usage per scenario per day"),
    ("time", "时间", "Time"),
    ("request", "请求", "Request"),
    ("enterprise", "企业", "Enterprise"),
    ("dataset", "数据资源", "Dataset"),
    ("scenario", "场景", "Scenario"),
    ("operation", "操作", "Operation"),
    ("outcome", "结果", "Outcome"),
    ("reason", "原因代码", "Reason code"),
    ("filter", "筛选", "Filter"),
    ("any", "全部", "any"),
    ("holder", "数据持有部门", "Holder"),
    ("deadline", "截止", "Deadline"),
    ("chain", "链", "Chain"),
    ("head", "最新序号", "Head seq"),
    ("checkpoint", "最新检查点", "Latest checkpoint"),
    ("unchecked", "检查点后的事件", "Events since"),
    ("verified", "最近一次校验", "Latest verification"),
    ("never", "尚无", "none yet"),
    ("event", "事件", "Event"),
    ("actor", "操作者", "Actor"),
    ("none", "无", "none"),
    ("refresh", "自动刷新", "Auto-refresh"),
    ("version", "版本", "Version"),
];

fn t(lang: Lang, key: &str) -> &'static str {
    let (_, zh, en) = LABELS.iter().find(|(k, ..)| *k == key).copied().unwrap_or(("", "?", "?"));
    if lang == Lang::Zh { zh } else { en }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}\
td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}th{background:#f2f2f2}\
.approved{color:#176b2c}.denied{color:#b00020}.pending_review{color:#8a5a00}.bad{color:#b00020;font-weight:bold}\
nav a{margin-right:1em}code{font-size:12px}";

/// Reloads the page every 5 s while the box is ticked (kept across reloads).
const SCRIPT: &str = "const box=document.getElementById('refresh');box.checked=localStorage.getItem('tollgate.refresh')==='1';\
box.onchange=()=>localStorage.setItem('tollgate.refresh',box.checked?'1':'0');\
setInterval(()=>{if(box.checked)location.reload()},5000);";

fn page(lang: Lang, body: &str) -> String {
    format!(
        "<!DOCTYPE html><html lang=\"{}\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head>\
         <body>{body}<script>{SCRIPT}</script></body></html>",
        lang.code(),
        t(lang, "title")
    )
}

fn header(lang: Lang, health: &Health, filter: &ConsoleFilter) -> String {
    let r = health.readiness();
    let state = if r.ready {
        format!("<span class=\"approved\" id=\"readiness\">{}</span>", t(lang, "ready"))
    } else {
        format!("<span class=\"bad\" id=\"readiness\">{}: {}</span>", t(lang, "not_ready"), esc(&r.reasons.join("; ")))
    };
    let other = if lang == Lang::Zh { ("en", "English") } else { ("zh", "中文") };
    let keep = query_string(filter);
    format!(
        "<h1>{}</h1><p>{state} · <a href=\"?lang={}{keep}\">{}</a> · <label><input type=\"checkbox\" id=\"refresh\"> {}</label></p>",
        t(lang, "title"),
        other.0,
        other.1,
        t(lang, "refresh")
    )
}

/// The filter's fields as `&k=v` pairs, to keep them across a language switch.
fn query_string(f: &ConsoleFilter) -> String {
    let pairs =
        [("enterprise", &f.enterprise), ("dataset", &f.dataset), ("outcome", &f.outcome), ("reason", &f.reason)];
    pairs.iter().filter_map(|(k, v)| v.as_ref().map(|v| format!("&amp;{k}={}", esc(&urlencode(v))))).collect()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn table(head: &[&str], rows: impl Iterator<Item = Vec<String>>, id: &str) -> String {
    let mut out = format!("<table id=\"{id}\"><tr>");
    head.iter().for_each(|h| {
        let _ = write!(out, "<th>{h}</th>");
    });
    out.push_str("</tr>");
    for row in rows {
        out.push_str("<tr>");
        row.iter().for_each(|c| {
            let _ = write!(out, "<td>{c}</td>");
        });
        out.push_str("</tr>");
    }
    out + "</table>"
}

fn decisions(lang: Lang, data: &ConsoleData, f: &ConsoleFilter) -> String {
    let field = |name: &str, value: &Option<String>| {
        format!(
            "<label>{} <input name=\"{name}\" value=\"{}\" size=\"18\"></label> ",
            t(lang, name),
            esc(value.as_deref().unwrap_or(""))
        )
    };
    let mut outcome = format!(
        "<label>{} <select name=\"outcome\"><option value=\"\">{}</option>",
        t(lang, "outcome"),
        t(lang, "any")
    );
    for o in ["approved", "denied", "pending_review"] {
        let selected = if f.outcome.as_deref() == Some(o) { " selected" } else { "" };
        let _ = write!(outcome, "<option{selected}>{o}</option>");
    }
    outcome.push_str("</select></label> ");
    let form = format!(
        "<form method=\"get\" id=\"filter\"><input type=\"hidden\" name=\"lang\" value=\"{}\">{}{}{outcome}{}<button>{}</button></form>",
        if lang == Lang::Zh { "zh" } else { "en" },
        field("enterprise", &f.enterprise),
        field("dataset", &f.dataset),
        field("reason", &f.reason),
        t(lang, "filter")
    );
    let head =
        ["time", "request", "enterprise", "dataset", "scenario", "operation", "outcome", "reason"].map(|k| t(lang, k));
    let rows = data.decisions.iter().map(|d| {
        vec![
            esc(&d.decided_at),
            format!("<code>{}</code>", esc(&d.request_id)),
            esc(&d.subject),
            esc(&d.dataset),
            esc(&d.scenario),
            esc(&d.operation),
            format!("<span class=\"{0}\">{0}</span>", esc(&d.outcome)),
            esc(d.reason_code.as_deref().unwrap_or("")),
        ]
    });
    format!("<h2 id=\"decisions\">{}</h2>{form}{}", t(lang, "decisions"), table(&head, rows, "decision-table"))
}

/// The review queue (`{as_of, pending[]}` as `/reviews` serves it).
pub fn reviews(lang: Lang, queue: &serde_json::Value) -> String {
    let head = ["request", "enterprise", "dataset", "holder", "scenario", "time", "deadline"].map(|k| t(lang, k));
    let s = |v: &serde_json::Value, k: &str| esc(v[k].as_str().unwrap_or(""));
    let pending = queue["pending"].as_array().cloned().unwrap_or_default();
    let rows = pending.iter().map(|p| {
        vec![
            format!("<code>{}</code>", s(p, "request_id")),
            s(p, "subject"),
            s(p, "dataset"),
            s(p, "holder"),
            s(p, "scenario"),
            s(p, "pending_since"),
            s(p, "deadline"),
        ]
    });
    format!("<h2 id=\"reviews\">{}</h2>{}", t(lang, "reviews"), table(&head, rows, "review-table"))
}

fn chains(lang: Lang, data: &ConsoleData) -> String {
    let verified = match &data.last_verification {
        Some((at, found)) => format!("{}: {} — {}", t(lang, "verified"), esc(at), esc(found)),
        None => format!("{}: {} (<code>tollgate audit verify</code>)", t(lang, "verified"), t(lang, "never")),
    };
    let head = ["chain", "head", "checkpoint", "unchecked"].map(|k| t(lang, k));
    let rows = data.chains.iter().map(|c| {
        let (checkpoint, since) = match &c.checkpoint {
            Some((seq, at)) => (format!("#{seq} · {}", esc(at)), c.head_seq.saturating_sub(*seq)),
            None => (t(lang, "none").to_owned(), c.head_seq),
        };
        vec![format!("<code>{}</code>", esc(&c.chain)), c.head_seq.to_string(), checkpoint, since.to_string()]
    });
    format!(
        "<h2 id=\"chains\">{}</h2><p id=\"verification\">{verified}</p>{}",
        t(lang, "chains"),
        table(&head, rows, "chain-table")
    )
}

fn events(lang: Lang, id: &str, events: &[AuditEvent]) -> String {
    let head = ["time", "event", "actor", "outcome", "reason"].map(|k| t(lang, k));
    let rows = events.iter().map(|e| {
        let reason = e.reasons.first().map(|r| format!("{} — {}", esc(&r.code), esc(&r.message))).unwrap_or_default();
        vec![
            esc(&e.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            esc(e.event_type.as_str()),
            esc(&e.actor),
            esc(&e.outcome),
            reason,
        ]
    });
    format!("<h2 id=\"{id}\">{}</h2>{}", t(lang, id), table(&head, rows, &format!("{id}-table")))
}

/// The whole console, for a viewer who sees everything.
pub fn render(lang: Lang, health: &Health, data: &ConsoleData, filter: &ConsoleFilter) -> String {
    let nav: String = ["decisions", "reviews", "chains", "dead_letters", "usage", "history"]
        .iter()
        .map(|k| format!("<a href=\"#{k}\">{}</a>", t(lang, k)))
        .collect();
    let title = format!("{} {} (UTC)", t(lang, "usage"), data.usage_period);
    let body = format!(
        "{}<nav>{nav}</nav><p>{}: <code id=\"policy-version\">{}</code></p>{}{}{}{}<h2 id=\"usage\">{}</h2>{}{}",
        header(lang, health, filter),
        t(lang, "policy"),
        esc(&data.policy_version),
        decisions(lang, data, filter),
        reviews(lang, &data.reviews),
        chains(lang, data),
        events(lang, "dead_letters", &data.dead_letters),
        t(lang, "usage"),
        chart::svg(&title, &data.usage.series, data.usage.days),
        events(lang, "history", &data.policy_history),
    );
    page(lang, &body)
}

/// A reviewer's console: their department's queue and nothing else.
pub fn render_for_department(lang: Lang, health: &Health, department: &str, queue: &serde_json::Value) -> String {
    let body = format!(
        "{}<p>{}: <code>{}</code></p>{}",
        header(lang, health, &ConsoleFilter::default()),
        t(lang, "holder"),
        esc(department),
        reviews(lang, queue)
    );
    page(lang, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_has_both_languages_and_html_is_escaped() {
        for (key, zh, en) in LABELS {
            assert!(!zh.is_empty() && !en.is_empty(), "{key}");
            assert!(!zh.is_ascii() || *key == "title", "{key} has no Chinese label");
        }
        assert_eq!(esc("<script>\"x\"&'"), "&lt;script&gt;&quot;x&quot;&amp;&#39;");
        assert_eq!(Lang::choose(None, Some("en-US,en;q=0.9")), Lang::En);
        assert_eq!(Lang::choose(Some("zh"), Some("en-US")), Lang::Zh);
        assert_eq!(Lang::choose(None, None), Lang::Zh);
    }

    #[test]
    fn a_reviewer_page_shows_the_queue_it_is_given_and_no_decision_table() {
        let queue =
            serde_json::json!({"as_of": "now", "pending": [{"request_id": "r-1", "holder": "11610000MB0000000X"}]});
        let html = render_for_department(Lang::En, &Health::default(), "11610000MB0000000X", &queue);
        assert!(html.contains("r-1") && html.contains("review-table"));
        assert!(!html.contains("decision-table") && !html.contains("chain-table"));
    }
}
