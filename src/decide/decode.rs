//! Bytes → request: anything that is not a well-formed v1 access request is
//! a [`Rejection`] with a stable code (its input goes to the dead-letter
//! topic); identity is taken from the token only, never from the body.

use crate::contract::{
    AccessRequest, REQUEST_SCHEMA, REVIEW_SCHEMA, REVOKE_SCHEMA, ReviewVerdict, RevokeCommand, USAGE_REPORT_SCHEMA,
    UsageReport,
};

/// Why an input could not be read as a request at all: it goes to the
/// dead-letter topic with this code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Rejection {
    pub code: &'static str,
    pub message: String,
}

impl Rejection {
    pub(crate) fn new(code: &'static str, message: impl Into<String>) -> Self {
        Rejection { code, message: message.into() }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DecodedRequest {
    pub request: AccessRequest,
    /// The token from the body, else from an `authorization: Bearer` header.
    pub token: Option<String>,
}

const MAX_ID_LEN: usize = 128;
const MAX_FIELD_LEN: usize = 256;
const MAX_STATEMENT_LEN: usize = 2000;
const MAX_FIELDS: usize = 200;

/// Reads an access request. Anything that is not a well-formed v1 request is
/// a [`Rejection`]; a well-formed request with bad *content* (an unknown
/// dataset, a bad token) is decided and denied instead, so the requester
/// gets a reason on the decisions topic.
pub fn decode(payload: &[u8], authorization: Option<&[u8]>, max_bytes: usize) -> Result<DecodedRequest, Rejection> {
    let request: AccessRequest = parse(payload, max_bytes, REQUEST_SCHEMA)?;
    validate_shape(&request)?;
    let token = request.token.clone().or_else(|| bearer(authorization));
    Ok(DecodedRequest { request, token })
}

/// Reads an operator's revoke command (`tollgate.revoke/v1`) and its token
/// (body, else `authorization: Bearer` header). As for requests, a command
/// that is not well-formed is a [`Rejection`]; bad content (an empty
/// reason, a bad token) is answered with a refusal.
pub fn decode_revoke(
    payload: &[u8],
    authorization: Option<&[u8]>,
    max_bytes: usize,
) -> Result<(RevokeCommand, Option<String>), Rejection> {
    let command: RevokeCommand = parse(payload, max_bytes, REVOKE_SCHEMA)?;
    check_id("command_id", &command.command_id)?;
    check_text("reason", &command.reason)?;
    let token = command.token.clone().or_else(|| bearer(authorization));
    Ok((command, token))
}

/// Reads a reviewer's verdict (`tollgate.review/v1`) and its token (body,
/// else `authorization: Bearer` header); bad content (no comment on a
/// rejection, a bad token) is answered with a refusal, not dead-lettered.
pub fn decode_verdict(
    payload: &[u8],
    authorization: Option<&[u8]>,
    max_bytes: usize,
) -> Result<(ReviewVerdict, Option<String>), Rejection> {
    let verdict: ReviewVerdict = parse(payload, max_bytes, REVIEW_SCHEMA)?;
    check_id("request_id", &verdict.request_id)?;
    check_text("comment", &verdict.comment)?;
    let token = verdict.token.clone().or_else(|| bearer(authorization));
    Ok((verdict, token))
}

/// Reads a data host's usage report (`tollgate.usage_report/v1`) and its
/// token (body, else `authorization: Bearer` header).
pub fn decode_report(
    payload: &[u8],
    authorization: Option<&[u8]>,
    max_bytes: usize,
) -> Result<(UsageReport, Option<String>), Rejection> {
    let report: UsageReport = parse(payload, max_bytes, USAGE_REPORT_SCHEMA)?;
    check_id("report_id", &report.report_id)?;
    check_id("decision_id", &report.decision_id)?;
    if report.units == 0 {
        return Err(Rejection::new("input.invalid_request", "units must be at least 1"));
    }
    let token = report.token.clone().or_else(|| bearer(authorization));
    Ok((report, token))
}

/// A message of `schema`, parsed from its text (serde_json rejects
/// duplicate keys only when deserialising a struct from text).
fn parse<T: serde::de::DeserializeOwned>(payload: &[u8], max_bytes: usize, schema: &str) -> Result<T, Rejection> {
    let text = versioned_json(payload, max_bytes, schema)?;
    serde_json::from_str(text).map_err(|e| Rejection::new("input.invalid_request", e.to_string()))
}

/// An id: 1..=128 printable characters.
fn check_id(name: &str, s: &str) -> Result<(), Rejection> {
    if s.is_empty() || s.len() > MAX_ID_LEN || s.chars().any(char::is_control) {
        return Err(Rejection::new(
            "input.invalid_request",
            format!("{name} must be 1..={MAX_ID_LEN} printable characters"),
        ));
    }
    Ok(())
}

/// Free text of at most 2000 bytes.
fn check_text(name: &str, s: &str) -> Result<(), Rejection> {
    if s.len() > MAX_STATEMENT_LEN {
        return Err(Rejection::new("input.invalid_request", format!("{name} is longer than {MAX_STATEMENT_LEN}")));
    }
    Ok(())
}

fn bearer(authorization: Option<&[u8]>) -> Option<String> {
    authorization
        .and_then(|h| std::str::from_utf8(h).ok())
        .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
        .map(|t| t.trim().to_owned())
}

/// The payload as text, once it is known to be JSON of `schema` within
/// `max_bytes`.
fn versioned_json<'p>(payload: &'p [u8], max_bytes: usize, schema: &str) -> Result<&'p str, Rejection> {
    if payload.len() > max_bytes {
        return Err(Rejection::new(
            "input.too_large",
            format!("{} bytes exceeds the limit of {max_bytes}", payload.len()),
        ));
    }
    let text = std::str::from_utf8(payload)
        .map_err(|e| Rejection::new("input.invalid_utf8", format!("payload is not UTF-8: {e}")))?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| Rejection::new("input.invalid_json", e.to_string()))?;
    match value.get("schema").and_then(|s| s.as_str()) {
        Some(s) if s == schema => Ok(text),
        Some(other) => Err(Rejection::new(
            "input.unsupported_schema",
            format!("schema {:?} is not supported; expected {schema}", truncate(other, 64)),
        )),
        None if value.get("schema").is_some() => {
            Err(Rejection::new("input.unsupported_schema", format!("schema must be the string {schema}")))
        }
        None => Err(Rejection::new("input.missing_schema", format!("no schema field; expected {schema}"))),
    }
}

pub(super) fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

fn validate_shape(r: &AccessRequest) -> Result<(), Rejection> {
    check_id("request_id", &r.request_id)?;
    for (name, v) in [("dataset", &r.dataset), ("scenario", &r.scenario)] {
        if v.len() > MAX_FIELD_LEN {
            return Err(Rejection::new("input.invalid_request", format!("{name} is longer than {MAX_FIELD_LEN}")));
        }
    }
    check_text("purpose.statement", &r.purpose.statement)?;
    if r.fields.len() > MAX_FIELDS || r.fields.iter().any(|f| f.len() > MAX_FIELD_LEN) {
        return Err(Rejection::new("input.invalid_request", "too many or too long fields"));
    }
    Ok(())
}
