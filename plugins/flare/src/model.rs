//! Resources, subscriptions and documents: validation (every error names its field), the
//! matching of document URLs against resource endpoints, and revisions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A validation error: the field and what is wrong with it.
#[derive(Clone, Debug, PartialEq)]
pub struct Invalid {
    /// The field (`endpoint.url`, ...).
    pub field: String,
    /// What is wrong.
    pub detail: String,
}

fn invalid(field: &str, detail: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        detail: detail.into(),
    }
}

/// What changes a document's revision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The field of the document holding its revision.
    pub field: String,
    /// A date layout (Go reference time) when the field is a date string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

/// A tracked resource.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    /// Its id.
    pub id: String,
    /// `http(s)://host/path/{wildcard}/...`.
    pub endpoint: String,
    /// How revisions are read.
    pub change: Change,
}

/// A parsed endpoint: scheme and host, then path segments, literal or wildcard.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    origin: String,
    segments: Vec<Segment>,
}

#[derive(Clone, Debug, PartialEq)]
enum Segment {
    Literal(String),
    Wildcard(String),
}

impl Endpoint {
    /// Parses and checks a resource endpoint.
    pub fn parse(endpoint: &str) -> Result<Endpoint, Invalid> {
        let field = "endpoint";
        let rest = endpoint
            .strip_prefix("http://")
            .map(|rest| ("http://", rest))
            .or_else(|| {
                endpoint
                    .strip_prefix("https://")
                    .map(|rest| ("https://", rest))
            });
        let Some((scheme, rest)) = rest else {
            return Err(invalid(field, "must be an http or https URL"));
        };
        if rest.contains('?') || rest.contains('#') {
            return Err(invalid(field, "must not have a query string or fragment"));
        }
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        if host.is_empty() {
            return Err(invalid(field, "has no host"));
        }
        if path.is_empty() {
            return Err(invalid(field, "has no path"));
        }
        let mut segments = Vec::new();
        let mut names = Vec::new();
        for segment in path.split('/') {
            if segment.contains('{') || segment.contains('}') {
                let name = segment
                    .strip_prefix('{')
                    .and_then(|s| s.strip_suffix('}'))
                    .filter(|name| !name.is_empty() && !name.contains(['{', '}']))
                    .ok_or_else(|| {
                        invalid(field, format!("segment {segment:?}: a wildcard must fill a whole path segment, as {{id}}"))
                    })?;
                if name == "revision" {
                    return Err(invalid(field, "{revision} is reserved"));
                }
                if names.contains(&name) {
                    return Err(invalid(field, format!("wildcard {{{name}}} appears twice")));
                }
                names.push(name);
                segments.push(Segment::Wildcard(name.to_owned()));
            } else {
                segments.push(Segment::Literal(segment.to_owned()));
            }
        }
        if names.is_empty() {
            return Err(invalid(field, "needs at least one {wildcard} path segment"));
        }
        Ok(Endpoint {
            origin: format!("{scheme}{host}"),
            segments,
        })
    }

    /// The wildcard names.
    pub fn wildcards(&self) -> Vec<&str> {
        self.segments
            .iter()
            .filter_map(|s| match s {
                Segment::Wildcard(name) => Some(name.as_str()),
                Segment::Literal(_) => None,
            })
            .collect()
    }

    /// The wildcard values when `url` is a document of this endpoint.
    pub fn capture(&self, url: &str) -> Option<BTreeMap<String, String>> {
        let rest = url.strip_prefix(&self.origin)?.strip_prefix('/')?;
        if rest.contains('?') {
            return None;
        }
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut values = BTreeMap::new();
        for (segment, part) in self.segments.iter().zip(parts) {
            match segment {
                Segment::Literal(literal) if literal == part => {}
                Segment::Wildcard(name) if !part.is_empty() => {
                    values.insert(name.clone(), part.to_owned());
                }
                _ => return None,
            }
        }
        Some(values)
    }
}

/// Checks a resource request; returns the resource (with `id`).
pub fn resource(body: &Value, id: String) -> Result<Resource, Invalid> {
    let Value::Object(body) = body else {
        return Err(invalid("body", "must be a JSON object"));
    };
    let endpoint = body
        .get("endpoint")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("endpoint", "is required (a URL)"))?;
    Endpoint::parse(endpoint)?;
    let change = body
        .get("change")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid("change", "is required: {field, format?}"))?;
    let field = change
        .get("field")
        .and_then(Value::as_str)
        .filter(|f| !f.is_empty())
        .ok_or_else(|| {
            invalid(
                "change.field",
                "is required (the document field holding the revision)",
            )
        })?;
    let format = match change.get("format") {
        None | Some(Value::Null) => None,
        Some(Value::String(format)) if !format.is_empty() => {
            layout_to_chrono(format).map_err(|detail| invalid("change.format", detail))?;
            Some(format.clone())
        }
        Some(_) => return Err(invalid("change.format", "must be a date layout string")),
    };
    Ok(Resource {
        id,
        endpoint: endpoint.to_owned(),
        change: Change {
            field: field.to_owned(),
            format,
        },
    })
}

/// How a subscriber is called for one action.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// URL template (wildcards and `{revision}` are filled in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// HTTP method, upper case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Headers (name → values).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, Vec<String>>,
}

/// A subscription.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Subscription {
    /// Its id.
    pub id: String,
    /// Its resource.
    pub resource_id: String,
    /// The default target.
    pub endpoint: Target,
    /// Per-action overrides: `create`, `update`, `delete`.
    #[serde(default)]
    pub actions: BTreeMap<String, Target>,
    /// Statuses that mean delivered.
    pub success: Vec<u16>,
    /// Statuses that end a delivery without success.
    pub discard: Vec<u16>,
    /// Send the document.
    pub document: bool,
    /// Wrap it in an envelope.
    pub envelope: bool,
    /// Extra envelope data (wildcards interpolated).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub data: Value,
    /// A Standard Webhooks secret: deliveries are signed when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl Subscription {
    /// The target of `action`: its override over the default.
    pub fn target(&self, action: &str) -> Target {
        let mut target = self.endpoint.clone();
        if let Some(over) = self.actions.get(action) {
            if over.url.is_some() {
                target.url = over.url.clone();
            }
            if over.method.is_some() {
                target.method = over.method.clone();
            }
            target
                .headers
                .extend(over.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        target
    }
}

const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];
const ACTIONS: &[&str] = &["create", "update", "delete"];

fn target(value: &Value, field: &str) -> Result<Target, Invalid> {
    let Value::Object(object) = value else {
        return Err(invalid(field, "must be an object"));
    };
    let mut target = Target::default();
    if let Some(url) = object.get("url").filter(|v| !v.is_null()) {
        let url = url
            .as_str()
            .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
            .ok_or_else(|| invalid(&format!("{field}.url"), "must be an http or https URL"))?;
        target.url = Some(url.to_owned());
    }
    if let Some(method) = object.get("method").filter(|v| !v.is_null()) {
        let method = method
            .as_str()
            .map(str::to_ascii_uppercase)
            .filter(|m| METHODS.contains(&m.as_str()))
            .ok_or_else(|| {
                invalid(
                    &format!("{field}.method"),
                    format!("must be one of {}", METHODS.join(", ")),
                )
            })?;
        target.method = Some(method);
    }
    if let Some(headers) = object.get("headers").filter(|v| !v.is_null()) {
        let Value::Object(headers) = headers else {
            return Err(invalid(
                &format!("{field}.headers"),
                "must map names to lists of values",
            ));
        };
        for (name, values) in headers {
            let values: Vec<String> = match values {
                Value::String(value) => vec![value.clone()],
                Value::Array(list) if list.iter().all(Value::is_string) => list
                    .iter()
                    .map(|v| v.as_str().unwrap_or_default().to_owned())
                    .collect(),
                _ => {
                    return Err(invalid(
                        &format!("{field}.headers.{name}"),
                        "must be a string or a list of strings",
                    ))
                }
            };
            target.headers.insert(name.clone(), values);
        }
    }
    Ok(target)
}

fn statuses(value: Option<&Value>, field: &str) -> Result<Vec<u16>, Invalid> {
    let list = value
        .and_then(Value::as_array)
        .filter(|l| !l.is_empty())
        .ok_or_else(|| invalid(field, "must be a non-empty list of HTTP status codes"))?;
    list.iter()
        .map(|code| {
            code.as_u64()
                .filter(|c| (100..=599).contains(c))
                .map(|c| c as u16)
                .ok_or_else(|| invalid(field, format!("{code} is not an HTTP status code")))
        })
        .collect()
}

/// Checks a subscription request for `resource`.
pub fn subscription(
    body: &Value,
    id: String,
    resource: &Resource,
) -> Result<Subscription, Invalid> {
    let Value::Object(body) = body else {
        return Err(invalid("body", "must be a JSON object"));
    };
    let endpoint_value = body
        .get("endpoint")
        .ok_or_else(|| invalid("endpoint", "is required"))?;
    let endpoint = target(endpoint_value, "endpoint")?;
    let mut actions = BTreeMap::new();
    if let Some(Value::Object(overrides)) = endpoint_value.get("actions") {
        for (action, value) in overrides {
            if !ACTIONS.contains(&action.as_str()) {
                return Err(invalid(
                    &format!("endpoint.actions.{action}"),
                    "is not an action (create, update, delete)",
                ));
            }
            actions.insert(
                action.clone(),
                target(value, &format!("endpoint.actions.{action}"))?,
            );
        }
    } else if endpoint_value.get("actions").is_some_and(|a| !a.is_null()) {
        return Err(invalid("endpoint.actions", "must be an object"));
    }
    for action in ACTIONS {
        let url = actions
            .get(*action)
            .and_then(|t| t.url.clone())
            .or(endpoint.url.clone());
        if url.is_none() {
            return Err(invalid(
                "endpoint.url",
                format!("is required (or a url for every action; {action} has none)"),
            ));
        }
    }
    let delivery = body.get("delivery").and_then(Value::as_object);
    let success = statuses(delivery.and_then(|d| d.get("success")), "delivery.success")?;
    let discard = statuses(delivery.and_then(|d| d.get("discard")), "delivery.discard")?;
    let content = body
        .get("content")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let flag = |name: &str| match content.get(name) {
        None | Some(Value::Null) => Ok(true),
        Some(Value::Bool(flag)) => Ok(*flag),
        Some(_) => Err(invalid(&format!("content.{name}"), "must be true or false")),
    };
    let document = flag("document")?;
    let envelope = flag("envelope")?;
    let data = body.get("data").cloned().unwrap_or(Value::Null);
    if !data.is_null() {
        if !envelope {
            return Err(invalid(
                "data",
                "is only sent in the envelope: set content.envelope",
            ));
        }
        let endpoint = Endpoint::parse(&resource.endpoint)
            .map_err(|_| invalid("data", "the resource's endpoint is unreadable"))?;
        let known = endpoint.wildcards();
        for name in wildcards_in(&data) {
            if !known.contains(&name.as_str()) {
                return Err(invalid(
                    "data",
                    format!(
                        "wildcard {{{name}}} is not one of the resource's ({})",
                        known.join(", ")
                    ),
                ));
            }
        }
    }
    let secret = match body.get("secret") {
        None | Some(Value::Null) => None,
        Some(Value::String(secret)) if !secret.is_empty() => Some(secret.clone()),
        Some(_) => return Err(invalid("secret", "must be a non-empty string")),
    };
    Ok(Subscription {
        id,
        resource_id: resource.id.clone(),
        endpoint,
        actions,
        success,
        discard,
        document,
        envelope,
        data,
        secret,
    })
}

/// The `{names}` used in the strings of `value`.
fn wildcards_in(value: &Value) -> Vec<String> {
    let mut names = Vec::new();
    let mut visit = |text: &str| {
        let mut rest = text;
        while let Some(start) = rest.find('{') {
            let Some(end) = rest[start..].find('}') else {
                break;
            };
            names.push(rest[start + 1..start + end].to_owned());
            rest = &rest[start + end + 1..];
        }
    };
    fn walk(value: &Value, visit: &mut dyn FnMut(&str)) {
        match value {
            Value::String(text) => visit(text),
            Value::Array(list) => list.iter().for_each(|v| walk(v, visit)),
            Value::Object(map) => map.values().for_each(|v| walk(v, visit)),
            _ => {}
        }
    }
    walk(value, &mut visit);
    names
}

/// Replaces `{name}` in every string of `value` by `values[name]`.
pub fn interpolate(value: &Value, values: &BTreeMap<String, String>) -> Value {
    match value {
        Value::String(text) => Value::String(fill(text, values)),
        Value::Array(list) => Value::Array(list.iter().map(|v| interpolate(v, values)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), interpolate(v, values)))
                .collect::<Map<_, _>>(),
        ),
        other => other.clone(),
    }
}

/// Replaces `{name}` in `text`.
pub fn fill(text: &str, values: &BTreeMap<String, String>) -> String {
    let mut out = text.to_owned();
    for (name, value) in values {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    out
}

/// A document's revision: the change field as a number, or as a date (milliseconds since the
/// epoch).
pub fn revision(content: &Value, change: &Change) -> Result<i64, Invalid> {
    let field = &change.field;
    let unsupported = || {
        invalid(field, format!("data type not supported: the revision field `{field}` must be a number or a date string"))
    };
    match content.get(field) {
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .ok_or_else(unsupported),
        Some(Value::String(text)) => {
            parse_date(text, change.format.as_deref()).map_err(|detail| invalid(field, detail))
        }
        None => Err(invalid(
            field,
            format!("data type not supported: the document has no field `{field}`"),
        )),
        Some(_) => Err(unsupported()),
    }
}

fn parse_date(text: &str, format: Option<&str>) -> Result<i64, String> {
    match format {
        None => chrono::DateTime::parse_from_rfc3339(text)
            .map(|d| d.timestamp_millis())
            .map_err(|err| format!("{text:?} is not an RFC 3339 date: {err}")),
        Some(layout) => {
            let pattern = layout_to_chrono(layout)?;
            // Go's `Z07:00` reads a literal `Z` as UTC; chrono's offsets do not.
            let utc = if layout.contains("Z07:00") {
                "+00:00"
            } else {
                "+0000"
            };
            let text = &match text.strip_suffix('Z') {
                Some(rest) if layout.contains("Z07") => format!("{rest}{utc}"),
                _ => text.to_owned(),
            };
            let zoned =
                chrono::DateTime::parse_from_str(text, &pattern).map(|d| d.timestamp_millis());
            zoned
                .or_else(|_| {
                    chrono::NaiveDateTime::parse_from_str(text, &pattern)
                        .map(|d| d.and_utc().timestamp_millis())
                })
                .or_else(|_| {
                    chrono::NaiveDate::parse_from_str(text, &pattern).map(|d| {
                        d.and_hms_opt(0, 0, 0)
                            .expect("midnight")
                            .and_utc()
                            .timestamp_millis()
                    })
                })
                .map_err(|err| format!("{text:?} does not match the layout {layout:?}: {err}"))
        }
    }
}

/// Translates a Go reference-time layout (`2006-01-02T15:04:05Z07:00`) into a chrono pattern.
pub fn layout_to_chrono(layout: &str) -> Result<String, String> {
    // Longest tokens first.
    const TOKENS: &[(&str, &str)] = &[
        ("Z07:00", "%:z"),
        ("-07:00", "%:z"),
        ("Z0700", "%z"),
        ("-0700", "%z"),
        ("January", "%B"),
        ("Monday", "%A"),
        ("2006", "%Y"),
        (".000000000", "%.9f"),
        (".000000", "%.6f"),
        (".000", "%.3f"),
        (".999999999", "%.f"),
        (".999999", "%.f"),
        (".999", "%.f"),
        ("Jan", "%b"),
        ("Mon", "%a"),
        ("MST", "%Z"),
        ("01", "%m"),
        ("02", "%d"),
        ("15", "%H"),
        ("03", "%I"),
        ("04", "%M"),
        ("05", "%S"),
        ("PM", "%p"),
        ("06", "%y"),
    ];
    let mut out = String::new();
    let mut rest = layout;
    let mut matched = false;
    'outer: while !rest.is_empty() {
        for (token, pattern) in TOKENS {
            if let Some(after) = rest.strip_prefix(token) {
                out.push_str(pattern);
                rest = after;
                matched = true;
                continue 'outer;
            }
        }
        let c = rest.chars().next().expect("not empty");
        if c == '%' {
            out.push_str("%%");
        } else {
            out.push(c);
        }
        rest = &rest[c.len_utf8()..];
    }
    if !matched {
        return Err(format!("{layout:?} is not a date layout (use Go's reference time, as 2006-01-02T15:04:05Z07:00)"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn endpoints_need_whole_segment_wildcards() {
        assert!(Endpoint::parse("http://api.io/users/{id}").is_ok());
        for (bad, what) in [
            ("ftp://api.io/users/{id}", "http"),
            ("http://api.io/users/{id}?x=1", "query"),
            ("http://api.io/users/x{id}", "whole path segment"),
            ("http://api.io/users/{id}/{id}", "twice"),
            ("http://api.io/users", "at least one"),
            ("http://api.io/users/{revision}", "reserved"),
            ("http:///users/{id}", "host"),
        ] {
            let err = Endpoint::parse(bad).unwrap_err();
            assert!(err.detail.contains(what), "{bad}: {err:?}");
        }
        let endpoint = Endpoint::parse("http://api.io/users/{id}/items/{item}").unwrap();
        let values = endpoint.capture("http://api.io/users/7/items/9").unwrap();
        assert_eq!(values["id"], "7");
        assert!(endpoint.capture("http://api.io/users/7").is_none());
        assert!(endpoint
            .capture("http://other.io/users/7/items/9")
            .is_none());
    }

    #[test]
    fn revisions_are_numbers_or_dates_in_go_layouts() {
        let change = |format: Option<&str>| Change {
            field: "updatedAt".into(),
            format: format.map(Into::into),
        };
        assert_eq!(
            revision(&json!({"updatedAt": 5}), &change(None)).unwrap(),
            5
        );
        let a = revision(&json!({"updatedAt": "2024-01-02T03:04:05Z"}), &change(None)).unwrap();
        let b = revision(
            &json!({"updatedAt": "2024-01-02T03:04:05Z"}),
            &change(Some("2006-01-02T15:04:05Z07:00")),
        )
        .unwrap();
        assert_eq!(a, b);
        let c = revision(
            &json!({"updatedAt": "2024-01-02 03:04:06"}),
            &change(Some("2006-01-02 15:04:05")),
        )
        .unwrap();
        assert_eq!(c - a, 1000);
        for doc in [
            json!({"updatedAt": true}),
            json!({"updatedAt": {}}),
            json!({}),
        ] {
            let err = revision(&doc, &change(None)).unwrap_err();
            assert!(err.detail.contains("data type not supported"), "{err:?}");
            assert_eq!(err.field, "updatedAt");
        }
    }
}
