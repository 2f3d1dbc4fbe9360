//! A small blocking HTTP client for the API, used by the CLI, the benchmark
//! and the tests.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::Value;

/// What went wrong talking to a node.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach {url}: {message}")]
    Transport { url: String, message: String },
    #[error("{status}: {message}")]
    Http { status: u16, message: String },
}

impl ClientError {
    /// The HTTP status, if the node answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Http { status, .. } => Some(*status),
            ClientError::Transport { .. } => None,
        }
    }
}

/// The answer to a read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadResult {
    /// Live values; empty if the key does not exist (or was deleted);
    /// several if concurrent writes left siblings.
    pub values: Vec<Vec<u8>>,
    /// Each value's dot (the write that made it), in the order of `values`.
    pub dots: Vec<String>,
    /// The context to pass to the next write of this key.
    pub context: String,
}

impl ReadResult {
    /// The values of a read's JSON document (see [`Client::get_document`]).
    pub fn from_document(doc: &Value) -> ReadResult {
        let siblings = doc["siblings"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        ReadResult {
            values: siblings
                .iter()
                .map(|s| {
                    let text = s["value"].as_str().unwrap_or_default();
                    if s["encoding"] == "base64" {
                        STANDARD.decode(text).unwrap_or_default()
                    } else {
                        text.as_bytes().to_vec()
                    }
                })
                .collect(),
            dots: siblings
                .iter()
                .map(|s| s["dot"].as_str().unwrap_or_default().to_string())
                .collect(),
            context: doc["context"].as_str().unwrap_or_default().to_string(),
        }
    }
}

#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

/// Percent-encodes a key for a URL path (slashes kept).
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The base URL for `base`: `http://` is assumed when it names no scheme,
/// and trailing slashes are dropped.
pub fn base_url(base: &str) -> String {
    let base = base.trim().trim_end_matches('/');
    if base.contains("://") {
        base.to_string()
    } else {
        format!("http://{base}")
    }
}

impl Client {
    /// `base` is like `http://127.0.0.1:8101`; without a scheme
    /// (`127.0.0.1:8101`) it means `http://`.
    pub fn new(base: &str, token: Option<String>) -> Client {
        Client::with_timeout(base, token, Duration::from_secs(10))
    }

    pub fn with_timeout(base: &str, token: Option<String>, timeout: Duration) -> Client {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(timeout))
            .max_idle_connections_per_host(64)
            .build();
        Client {
            agent: ureq::Agent::new_with_config(config),
            base: base_url(base),
            token,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn auth<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(t) => req.header("Authorization", format!("Bearer {t}")),
            None => req,
        }
    }

    fn finish(
        &self,
        url: &str,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(u16, Option<String>, Vec<u8>), ClientError> {
        let mut resp = r.map_err(|e| ClientError::Transport {
            url: url.to_string(),
            message: e.to_string(),
        })?;
        let status = resp.status().as_u16();
        let ctx = resp
            .headers()
            .get("x-cairn-context")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .map_err(|e| ClientError::Transport {
                url: url.to_string(),
                message: e.to_string(),
            })?;
        Ok((status, ctx, body))
    }

    fn error(status: u16, body: &[u8]) -> ClientError {
        let message = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
        ClientError::Http { status, message }
    }

    /// Writes a value; `context` is the one returned by a previous read.
    pub fn put(&self, key: &str, value: &[u8], context: Option<&str>) -> Result<(), ClientError> {
        let url = self.url(&format!("/v1/kv/{}", encode_key(key)));
        let mut req = self.auth(self.agent.put(&url));
        if let Some(c) = context {
            req = req.header("X-Cairn-Context", c);
        }
        let (status, _, body) = self.finish(&url, req.send(value))?;
        match status {
            200..=299 => Ok(()),
            _ => Err(Self::error(status, &body)),
        }
    }

    pub fn delete(&self, key: &str, context: Option<&str>) -> Result<(), ClientError> {
        let url = self.url(&format!("/v1/kv/{}", encode_key(key)));
        let mut req = self.auth(self.agent.delete(&url));
        if let Some(c) = context {
            req = req.header("X-Cairn-Context", c);
        }
        let (status, _, body) = self.finish(&url, req.call())?;
        match status {
            200..=299 => Ok(()),
            _ => Err(Self::error(status, &body)),
        }
    }

    pub fn get(&self, key: &str) -> Result<ReadResult, ClientError> {
        Ok(ReadResult::from_document(&self.get_document(key)?))
    }

    /// Reads a key as the node's JSON document: `{"key", "context",
    /// "siblings": [{"value", "encoding": "utf8"|"base64", "dot"}]}` (no
    /// siblings if the key does not exist).
    pub fn get_document(&self, key: &str) -> Result<Value, ClientError> {
        let url = self.url(&format!("/v1/kv/{}", encode_key(key)));
        let req = self
            .auth(self.agent.get(&url))
            .header("Accept", "application/json");
        let (status, _, body) = self.finish(&url, req.call())?;
        if !matches!(status, 200 | 300 | 404) {
            return Err(Self::error(status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Http {
            status,
            message: format!("bad JSON from node: {e}"),
        })
    }

    /// GETs a JSON document such as `/v1/status`.
    pub fn json(&self, path: &str) -> Result<Value, ClientError> {
        let url = self.url(path);
        let (status, _, body) = self.finish(&url, self.auth(self.agent.get(&url)).call())?;
        if status != 200 {
            return Err(Self::error(status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Http {
            status,
            message: format!("bad JSON from node: {e}"),
        })
    }

    /// POSTs an empty body to an admin endpoint and returns its JSON answer.
    pub fn post_json(&self, path: &str) -> Result<Value, ClientError> {
        let url = self.url(path);
        let (status, _, body) = self.finish(&url, self.auth(self.agent.post(&url)).send_empty())?;
        if status != 200 {
            return Err(Self::error(status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Http {
            status,
            message: format!("bad JSON from node: {e}"),
        })
    }

    /// GETs a text document such as `/metrics`.
    pub fn text(&self, path: &str) -> Result<(u16, String), ClientError> {
        let url = self.url(path);
        let (status, _, body) = self.finish(&url, self.agent.get(&url).call())?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// True if `/ready` answers 200.
    pub fn ready(&self) -> bool {
        matches!(self.text("/ready"), Ok((200, _)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_escaped() {
        assert_eq!(encode_key("a/b c?%"), "a/b%20c%3F%25");
    }

    #[test]
    fn a_base_without_a_scheme_is_http() {
        assert_eq!(base_url("127.0.0.1:8101"), "http://127.0.0.1:8101");
        assert_eq!(base_url("http://127.0.0.1:8101/"), "http://127.0.0.1:8101");
        assert_eq!(base_url("https://db.example:443"), "https://db.example:443");
    }
}
