//! The `http` executor's input, checked and turned into a request.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde_json::{Map, Value as Json};

use crate::StepError;
use crate::executors::Input;
use crate::executors::input::{type_name, wrong_type};

pub(super) const METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];
const FIELDS: [&str; 8] = [
    "method",
    "url",
    "headers",
    "query",
    "body",
    "json",
    "expect_status",
    "timeout",
];

/// A validated request.
#[derive(Debug)]
pub(super) struct Request {
    pub(super) method: Method,
    pub(super) url: Url,
    pub(super) headers: HeaderMap,
    pub(super) body: Option<Body>,
    pub(super) expect: Expect,
    pub(super) timeout: Option<Duration>,
}

#[derive(Debug)]
pub(super) enum Body {
    Json(Json),
    Text(String),
}

/// Which statuses count as success.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Expect {
    Success,
    Codes(Vec<u16>),
}

impl Expect {
    pub(super) fn matches(&self, status: StatusCode) -> bool {
        match self {
            Self::Success => status.is_success(),
            Self::Codes(codes) => codes.contains(&status.as_u16()),
        }
    }

    pub(super) fn describe(&self) -> String {
        match self {
            Self::Success => "2xx".to_owned(),
            Self::Codes(codes) => codes
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

impl Request {
    pub(super) fn parse(value: &Json) -> Result<Self, StepError> {
        let input = Input::new(value)?;
        input.deny_unknown(&FIELDS)?;
        let method = match input.str("method")? {
            None => Method::GET,
            Some(name) => {
                let upper = name.trim().to_ascii_uppercase();
                METHODS
                    .iter()
                    .find(|m| m.as_str() == upper)
                    .cloned()
                    .ok_or_else(|| {
                        let names: Vec<_> = METHODS.iter().map(Method::as_str).collect();
                        StepError::invalid_input(format!(
                            "`method` must be one of {} (got `{name}`)",
                            names.join(", ")
                        ))
                    })?
            }
        };
        let mut url = parse_url(input.required_str("url")?)?;
        if let Some(query) = input.object("query")? {
            add_query(&mut url, query)?;
        }
        let headers = match input.object("headers")? {
            Some(headers) => parse_headers(headers)?,
            None => HeaderMap::new(),
        };
        let body = match (input.get("body"), input.bool("json")?) {
            (None, _) => None,
            (Some(Json::String(text)), None | Some(false)) => Some(Body::Text(text.clone())),
            (Some(other), Some(false)) => {
                return Err(StepError::invalid_input(format!(
                    "`body` must be a string when `json` is false, not {}",
                    type_name(other)
                )));
            }
            (Some(value), _) => Some(Body::Json(value.clone())),
        };
        let expect = match input.get("expect_status") {
            None => Expect::Success,
            Some(Json::Array(items)) if !items.is_empty() => {
                Expect::Codes(items.iter().map(status_code).collect::<Result<_, _>>()?)
            }
            Some(Json::Array(_)) => {
                return Err(StepError::invalid_input(
                    "`expect_status` must list at least one status code",
                ));
            }
            Some(single) => Expect::Codes(vec![status_code(single)?]),
        };
        Ok(Self {
            method,
            url,
            headers,
            body,
            expect,
            timeout: input.duration("timeout")?,
        })
    }

    /// The request as messages name it: method and URL without query or credentials.
    pub(super) fn target(&self) -> String {
        let mut url = self.url.clone();
        url.set_query(None);
        url.set_fragment(None);
        // Both only fail for URLs that cannot have credentials, which then have none.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        format!("{} {url}", self.method)
    }
}

fn parse_url(text: &str) -> Result<Url, StepError> {
    let url = Url::parse(text.trim())
        .map_err(|e| StepError::invalid_input(format!("`url` is not a valid URL: {e}")))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(StepError::invalid_input(format!(
            "`url` must be http or https, not `{other}`"
        ))),
    }
}

/// A scalar as a header value or query parameter; `None` for lists, mappings and `null`.
fn scalar_text(value: &Json) -> Option<String> {
    match value {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        Json::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn add_query(url: &mut Url, query: &Map<String, Json>) -> Result<(), StepError> {
    let mut pairs = Vec::new();
    for (name, value) in query {
        let field = format!("query.{name}");
        match value {
            Json::Null => {}
            Json::Array(items) => {
                for item in items {
                    let text = scalar_text(item)
                        .ok_or_else(|| wrong_type(&field, "a list of scalars", item))?;
                    pairs.push((name.as_str(), text));
                }
            }
            other => {
                let text = scalar_text(other).ok_or_else(|| {
                    wrong_type(&field, "a string, number, boolean or list", other)
                })?;
                pairs.push((name.as_str(), text));
            }
        }
    }
    if !pairs.is_empty() {
        url.query_pairs_mut().extend_pairs(pairs);
    }
    Ok(())
}

fn parse_headers(headers: &Map<String, Json>) -> Result<HeaderMap, StepError> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let field = format!("headers.{name}");
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            StepError::invalid_input(format!("`{field}` is not a valid header name"))
        })?;
        let Some(text) = scalar_text(value) else {
            if value.is_null() {
                continue;
            }
            return Err(wrong_type(&field, "a string, number or boolean", value));
        };
        let value = HeaderValue::from_str(&text).map_err(|_| {
            StepError::invalid_input(format!("`{field}` holds characters a header value cannot"))
        })?;
        map.append(header, value);
    }
    Ok(map)
}

fn status_code(value: &Json) -> Result<u16, StepError> {
    value
        .as_u64()
        .and_then(|n| u16::try_from(n).ok())
        .filter(|n| (100..=599).contains(n))
        .ok_or_else(|| {
            StepError::invalid_input(format!(
                "`expect_status` must hold status codes from 100 to 599, not {value}"
            ))
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn bad_inputs_name_the_field() {
        let message = |input: Json| Request::parse(&input).unwrap_err().message;
        assert_eq!(message(json!({})), "`url` is required");
        assert_eq!(
            message(json!({"url": "http://x", "method": "FETCH"})),
            "`method` must be one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS (got `FETCH`)"
        );
        assert!(message(json!({"url": "not a url"})).starts_with("`url` is not a valid URL"));
        assert_eq!(
            message(json!({"url": "ftp://x"})),
            "`url` must be http or https, not `ftp`"
        );
        assert_eq!(
            message(json!({"url": "http://x", "headers": {"X-A": [1]}})),
            "`headers.X-A` must be a string, number or boolean, not a list"
        );
        assert_eq!(
            message(json!({"url": "http://x", "expect_status": [200, 700]})),
            "`expect_status` must hold status codes from 100 to 599, not 700"
        );
        assert_eq!(
            message(json!({"url": "http://x", "body": [1], "json": false})),
            "`body` must be a string when `json` is false, not a list"
        );
        assert!(
            message(json!({"url": "http://x", "expected_status": 200}))
                .starts_with("unknown field `expected_status`")
        );
    }

    #[test]
    fn targets_hide_query_and_credentials() {
        let request =
            Request::parse(&json!({"url": "https://user:pw@api.example/v1/x?key=secret"})).unwrap();
        assert_eq!(request.target(), "GET https://api.example/v1/x");
    }
}
