//! The client HTTP API (axum).
//!
//! | method | path            | answer |
//! |--------|-----------------|--------|
//! | PUT    | `/v1/kv/{key}`  | body = value; `X-Cairn-Context` = context from a read (optional). 204 when W replicas made it durable |
//! | GET    | `/v1/kv/{key}`  | one value: 200, raw body; several concurrent values: 300 + JSON; none: 404. Always `X-Cairn-Context` |
//! | DELETE | `/v1/kv/{key}`  | `X-Cairn-Context` as for PUT; 204 |
//! | GET    | `/v1/status`    | node, versions, peers and drift (JSON) |
//! | GET    | `/v1/version`   | this binary's release, protocol range and schema (JSON) |
//! | GET    | `/health`       | 200 while the process runs |
//! | GET    | `/ready`        | 200 while the node serves (reads included), else 503 with the reason |
//! | GET    | `/metrics`      | Prometheus text format |
//! | POST   | `/v1/admin/finalize[?target=V]` | raise the cluster version (default: this release); 409 naming the node that blocks it |
//! | POST   | `/v1/admin/backup` | take a backup now; answers its manifest fields |
//! | GET    | `/v1/admin/backups` | the backups kept in `data_dir/backups`, oldest first |
//!
//! With `Accept: application/json`, GET always answers JSON:
//! `{"key": ..., "context": ..., "siblings": [{"value": ..., "encoding": "utf8"|"base64", "dot": ...}]}`.
//! The context is URL-safe base64 (no padding) of the core's context token:
//! the causal context of the read, authenticated with a key derived from the
//! cluster secret and bound to the key read. Pass it back unchanged on the
//! next write of the same key to supersede what was read; a context that is
//! forged, altered, read from another key, of an unknown format, truncated
//! or oversized is refused with 400 and kind `bad_context`, and the write
//! changes nothing. Every error is JSON `{"error": ..., "kind": ...}`, those
//! the router answers itself included: 400 bad key, context or request, 401
//! missing token (on `/v1/kv` and `/v1/admin` when a token is configured),
//! 404 no such path, 405 method not allowed, 408 body stalled, 409 admin
//! command refused, 413 body too large (refused on its declared length,
//! before reading it), 429 overloaded, 503 no quorum, node unavailable or not
//! ready, or too many connections (the message says which).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes as BodyBytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use cairn_core::api::{AdminCommand, BackupInfo};
use cairn_core::version::ReleaseId;
use cairn_core::{ClientError, Context, NodeId, Request, Response};
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use tower_service::Service as _;

use crate::driver::{DriverHandle, Snapshot};
use crate::metrics::NodeMetrics;
use crate::peers::TransportStats;

/// The header carrying the causal context.
pub const CONTEXT_HEADER: &str = "x-cairn-context";

#[derive(Clone)]
pub struct AppState {
    pub driver: DriverHandle,
    pub metrics: Arc<NodeMetrics>,
    pub transport: Arc<TransportStats>,
    pub token: Option<Arc<str>>,
    pub members: Arc<BTreeMap<NodeId, SocketAddr>>,
    pub max_key_len: usize,
    pub max_value_len: usize,
    /// The longest context token accepted, in bytes (before base64).
    pub max_context_len: usize,
    /// Where this node's backups are kept.
    pub backups_dir: Arc<PathBuf>,
}

pub fn router(state: AppState) -> Router {
    router_with(Arc::new(state))
}

fn router_with(state: Arc<AppState>) -> Router {
    let body_limit = state.max_value_len;
    Router::new()
        .route(
            "/v1/kv/{*key}",
            get(get_key).put(put_key).delete(delete_key),
        )
        .route("/v1/admin/finalize", post(admin_finalize))
        .route("/v1/admin/backup", post(admin_backup))
        .route("/v1/admin/backups", get(admin_backups))
        .route("/v1/status", get(status))
        .route("/v1/version", get(version))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(body_limit))
        // One reference count per request instead of one per field.
        .with_state(state)
}

/// Limits on client connections (see [`serve`]).
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Connections served at once; more are refused as they arrive.
    pub max_connections: usize,
    /// Time from the first byte of a request to the end of its headers.
    pub header_timeout: Duration,
    /// Time a connection may stay without a request, and a request body
    /// may stay without a byte arriving.
    pub idle_timeout: Duration,
}

/// The answer to a connection over the limit, written (if the socket takes
/// it at once) before closing.
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
connection: close\r\n\
content-length: 69\r\n\r\n\
{\"error\":\"too many client connections\",\"kind\":\"too_many_connections\"}";

/// Serves the API on `listener` until the task is dropped.
///
/// Every connection is served by hyper's HTTP/1.1 server. Key-value requests
/// in their plain form (`GET`, `PUT` or `DELETE` on `/v1/kv/{key}`, a key
/// that decodes to UTF-8, a body with a `Content-Length` within the limit)
/// go straight to their handlers, without routing, extractors or the
/// boxed services of the router; anything else, including every malformed
/// variant of those, goes through the router, which answers it as before.
///
/// At most `limits.max_connections` connections are served at once: one
/// arriving beyond that is answered 503 (if its socket takes the answer at
/// once) and closed, so idle clients cannot take the descriptors storage
/// needs. A connection is closed once it has been idle (no request, nothing
/// read or written) for `limits.idle_timeout`, or has sent part of a request
/// but not all its headers within `limits.header_timeout`.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState, limits: ConnectionLimits) {
    let state = Arc::new(state);
    let router = router_with(state.clone());
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut refusing = false;
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // E.g. out of file descriptors: wait for some to close.
                tracing::warn!(error = %e, "http accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if !refusing {
                tracing::warn!(
                    %remote,
                    max_client_connections = limits.max_connections,
                    "refusing client connections: too many open"
                );
                refusing = true;
            }
            let _ = stream.try_write(TOO_MANY_CONNECTIONS);
            drop(stream);
            continue;
        };
        if refusing {
            tracing::info!("accepting client connections again");
            refusing = false;
        }
        let _ = stream.set_nodelay(true);
        let (st, router) = (state.clone(), router.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let activity = Arc::new(Activity::new());
            let seen = activity.clone();
            let service = hyper::service::service_fn(move |req| {
                let (st, router, seen) = (st.clone(), router.clone(), seen.clone());
                async move {
                    seen.set(BUSY);
                    let resp = handle(&st, router, req, limits.idle_timeout).await;
                    seen.set(IDLE);
                    Ok::<_, Infallible>(resp)
                }
            });
            let io = Watched {
                io: stream,
                activity: activity.clone(),
            };
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(io), service)
                .without_shutdown();
            tokio::select! {
                r = conn => match r {
                    Ok(parts) => linger(parts.io.into_inner().io, limits.idle_timeout).await,
                    Err(e) => tracing::trace!(error = %e, "http connection ended"),
                },
                why = activity.expired(limits) => {
                    tracing::debug!(%remote, why, "closing client connection");
                }
            }
        });
    }
}

/// Closes a connection whose last answer may have left part of a request
/// unread (a body refused on its declared length): closing a socket with
/// unread data resets it, and the client would likely lose the answer. So
/// the write side is shut first, then what the client still sends is read
/// and discarded until it closes, for at most 2 s (or `idle`) and 4 MiB.
async fn linger(mut stream: tokio::net::TcpStream, idle: Duration) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    if stream.shutdown().await.is_err() {
        return;
    }
    let deadline = tokio::time::Instant::now() + idle.min(Duration::from_secs(2));
    let mut buf = [0u8; 16 * 1024];
    let mut left: usize = 4 << 20;
    while left > 0 {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            _ => return,
        }
    }
}

/// What a connection is doing, for its timeouts.
const IDLE: u64 = 0;
/// Part of a request arrived, not yet all its headers.
const HEAD: u64 = 1;
/// A request is being handled.
const BUSY: u64 = 2;

/// A connection's state and when it entered it, in one word:
/// milliseconds since `origin` << 2 | state.
struct Activity {
    origin: Instant,
    word: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            origin: Instant::now(),
            word: AtomicU64::new(IDLE),
        }
    }

    fn now(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn state(&self) -> u64 {
        self.word.load(Ordering::Relaxed) & 3
    }

    fn set(&self, state: u64) {
        self.word.store(self.now() << 2 | state, Ordering::Relaxed);
    }

    /// Completes once the connection has been idle, or in its headers,
    /// for too long; says which.
    async fn expired(&self, limits: ConnectionLimits) -> &'static str {
        loop {
            let word = self.word.load(Ordering::Relaxed);
            let (limit, why) = match word & 3 {
                IDLE => (limits.idle_timeout, "idle timeout"),
                HEAD => (limits.header_timeout, "request headers timed out"),
                _ => {
                    // Handling a request; its body has a timeout of its own.
                    tokio::time::sleep(limits.idle_timeout.min(limits.header_timeout)).await;
                    continue;
                }
            };
            let deadline = self.origin + Duration::from_millis(word >> 2) + limit;
            if Instant::now() >= deadline && self.word.load(Ordering::Relaxed) == word {
                return why;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// A client socket that records its activity: the first bytes read while
/// idle start a request's header timeout; bytes written while idle (the end
/// of a response a slow client is reading) keep the connection alive.
struct Watched {
    io: tokio::net::TcpStream,
    activity: Arc<Activity>,
}

impl tokio::io::AsyncRead for Watched {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before && self.activity.state() == IDLE {
            self.activity.set(HEAD);
        }
        r
    }
}

impl tokio::io::AsyncWrite for Watched {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) && self.activity.state() == IDLE {
            self.activity.set(IDLE);
        }
        r
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) && self.activity.state() == IDLE {
            self.activity.set(IDLE);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// One request: a plain key-value request directly, anything else through
/// the router. A body declared over the limit is refused before it is read;
/// a body that stalls for `stall` is refused with 408.
async fn handle(
    st: &AppState,
    mut router: Router,
    req: axum::http::Request<hyper::body::Incoming>,
    stall: Duration,
) -> HttpResponse {
    let declared = content_length(req.headers());
    if let Some(n) = declared.filter(|&n| n > st.max_value_len) {
        return too_large(n, st.max_value_len).into_response();
    }
    let fast = match *req.method() {
        Method::GET | Method::DELETE => true,
        // Chunked bodies: the router reads them.
        Method::PUT => declared.is_some(),
        _ => false,
    };
    let key = if fast { kv_key(req.uri().path()) } else { None };
    let Some(key) = key else {
        // Read here, within the limit and the stall timeout, whatever the
        // route; the router's handlers then take it from memory.
        let (parts, body) = req.into_parts();
        let body = match read_body(body, st.max_value_len, declared.unwrap_or(0), stall).await {
            Ok(b) => b,
            Err(e) => return e.into_response(),
        };
        let (method, path) = (parts.method.clone(), parts.uri.path().to_string());
        let req = axum::http::Request::from_parts(parts, axum::body::Body::from(body));
        let resp = match router.call(req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        };
        return json_error(resp, &method, &path).await;
    };
    let (parts, body) = req.into_parts();
    match parts.method {
        Method::GET => get_kv(st, key, &parts.headers).await,
        Method::DELETE => delete_kv(st, key, &parts.headers).await,
        _ => {
            let len = declared.unwrap_or(0);
            match read_body(body, len, len, stall).await {
                Ok(value) => put_kv(st, key, &parts.headers, value).await,
                Err(e) => e.into_response(),
            }
        }
    }
}

/// An error answered by the router itself (no route, wrong method, an
/// extractor's rejection) in the documented JSON form; other answers as
/// they are.
async fn json_error(resp: HttpResponse, method: &Method, path: &str) -> HttpResponse {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if status.as_u16() < 400 || is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = match body.collect().await {
        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).trim().to_string(),
        Err(_) => String::new(),
    };
    let reason = status.canonical_reason().unwrap_or("error").to_lowercase();
    let (kind, message) = match status {
        StatusCode::NOT_FOUND => ("not_found", format!("no such path: {path}")),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            format!("method {method} not allowed on {path}"),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => ("too_large", text),
        _ if status.is_client_error() => ("bad_request", text),
        _ => ("internal", text),
    };
    let message = if message.is_empty() { reason } else { message };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_TYPE);
    let body = Json(json!({"error": message, "kind": kind})).into_response();
    let (body_parts, body) = body.into_parts();
    parts.headers.extend(body_parts.headers);
    HttpResponse::from_parts(parts, body)
}

fn too_large(len: usize, limit: usize) -> ApiError {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("request body of {len} bytes exceeds the limit of {limit}"),
    )
}

fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Reads a body of at most `limit` bytes into memory of its own, copied
/// once out of the connection's read buffer (see [`put_key`]); `capacity`
/// is its declared length (hyper enforces it). Refused with 413 past the
/// limit, with 408 if no byte arrives for `stall`.
async fn read_body(
    mut body: hyper::body::Incoming,
    limit: usize,
    capacity: usize,
    stall: Duration,
) -> Result<Bytes, ApiError> {
    let mut value = bytes::BytesMut::with_capacity(capacity.min(limit));
    loop {
        let frame = match tokio::time::timeout(stall, body.frame()).await {
            Err(_) => {
                return Err(error(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    format!(
                        "the request body stalled: nothing arrived for {} ms",
                        stall.as_millis()
                    ),
                ))
            }
            Ok(None) => break,
            Ok(Some(frame)) => frame.map_err(|e| {
                error(
                    StatusCode::BAD_REQUEST,
                    "bad_body",
                    format!("cannot read the request body: {e}"),
                )
            })?,
        };
        if let Ok(data) = frame.into_data() {
            if data.len() > limit - value.len() {
                return Err(too_large(value.len() + data.len(), limit));
            }
            value.extend_from_slice(&data);
        }
    }
    Ok(value.freeze())
}

/// The key of a `/v1/kv/{key}` path, percent-decoded as the router decodes
/// it; None if the path is not one, or the key is empty or not UTF-8 once
/// decoded (the router answers those).
fn kv_key(path: &str) -> Option<String> {
    let raw = path.strip_prefix("/v1/kv/").filter(|k| !k.is_empty())?;
    let key = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()?;
    Some(key.into_owned())
}

/// A failed request: status code, a machine-readable kind and the reason.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> HttpResponse {
        (
            self.status,
            Json(json!({"error": self.message, "kind": self.kind})),
        )
            .into_response()
    }
}

fn error(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        kind,
        message: message.into(),
    }
}

/// Maps a core error to a status code; the message is the core's reason.
fn client_error(e: &ClientError) -> ApiError {
    let (status, kind) = match e {
        ClientError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        ClientError::Timeout { .. } => (StatusCode::SERVICE_UNAVAILABLE, "quorum_timeout"),
        ClientError::Overloaded => (StatusCode::TOO_MANY_REQUESTS, "overloaded"),
        ClientError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
        ClientError::Refused(_) => (StatusCode::CONFLICT, "refused"),
        ClientError::BadContext(_) => (StatusCode::BAD_REQUEST, "bad_context"),
    };
    error(status, kind, e.to_string())
}

fn outcome_of(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=299 => "ok",
        300 => "siblings",
        404 => "not_found",
        400..=499 => "bad_request",
        _ => "unavailable",
    }
}

impl AppState {
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Constant-time comparison: the token is a credential.
        let ok = given.is_some_and(|g| {
            g.len() == token.len()
                && g.bytes()
                    .zip(token.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        if ok {
            Ok(())
        } else {
            Err(error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong bearer token",
            ))
        }
    }

    fn key(&self, key: String) -> Result<Bytes, ApiError> {
        if key.is_empty() {
            return Err(error(StatusCode::BAD_REQUEST, "bad_key", "empty key"));
        }
        if key.len() > self.max_key_len {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "bad_key",
                format!(
                    "key of {} bytes exceeds the limit of {}",
                    key.len(),
                    self.max_key_len
                ),
            ));
        }
        Ok(Bytes::from(key))
    }

    /// Runs one KV operation, recording its metrics.
    async fn kv(
        &self,
        op: &'static str,
        headers: &HeaderMap,
        f: impl std::future::Future<Output = Result<HttpResponse, ApiError>>,
    ) -> HttpResponse {
        let started = Instant::now();
        let resp = match self.authorize(headers) {
            Err(e) => e.into_response(),
            Ok(()) => f.await.unwrap_or_else(IntoResponse::into_response),
        };
        self.metrics.observe(
            op,
            outcome_of(resp.status()),
            started.elapsed().as_secs_f64(),
        );
        resp
    }
}

/// Encodes a context for the header.
pub fn context_to_header(ctx: &Context) -> String {
    URL_SAFE_NO_PAD.encode(ctx.as_bytes())
}

/// Parses the context header; absent or empty means "saw nothing". Only
/// the encoding is checked here (and the length, before decoding); the
/// core checks the token itself.
fn context_from(headers: &HeaderMap, max_len: usize) -> Result<Context, ApiError> {
    let Some(v) = headers.get(CONTEXT_HEADER) else {
        return Ok(Context::new());
    };
    let bad = |why: String| error(StatusCode::BAD_REQUEST, "bad_context", why);
    let s = v
        .to_str()
        .map_err(|_| bad("bad context: the header is not ASCII".into()))?
        .trim();
    if s.is_empty() {
        return Ok(Context::new());
    }
    // Base64 takes 4 characters for 3 bytes.
    if s.len() > max_len.div_ceil(3) * 4 {
        return Err(bad(format!(
            "bad context: oversized: {} characters of base64, more than the limit of {max_len} bytes",
            s.len()
        )));
    }
    let raw = URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .or_else(|_| STANDARD.decode(s))
        .map_err(|e| bad(format!("bad context: not base64: {e}")))?;
    Ok(Context::from(raw))
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"))
}

async fn get_key(
    State(st): State<Arc<AppState>>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> HttpResponse {
    get_kv(&st, key, &headers).await
}

async fn get_kv(st: &AppState, key: String, headers: &HeaderMap) -> HttpResponse {
    st.kv("get", headers, async {
        let key = st.key(key)?;
        let resp = st.driver.request(Request::Get { key: key.clone() }).await;
        let (siblings, context) = match resp {
            Response::Read { siblings, context } => (siblings, context),
            Response::Error(e) => return Err(client_error(&e)),
            _ => {
                return Err(error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "unexpected answer to a read",
                ))
            }
        };
        let ctx = context_to_header(&context);
        let live: Vec<_> = siblings.iter().filter(|s| s.value.is_some()).collect();
        let ctx_header = HeaderValue::from_str(&ctx)
            .map_err(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "bad context"))?;
        if !wants_json(headers) && live.len() == 1 {
            let value = live[0].value.clone().unwrap_or_default();
            return Ok((
                StatusCode::OK,
                [
                    (header::HeaderName::from_static(CONTEXT_HEADER), ctx_header),
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    ),
                ],
                value,
            )
                .into_response());
        }
        let status = match live.len() {
            0 => StatusCode::NOT_FOUND,
            1 => StatusCode::OK,
            _ if wants_json(headers) => StatusCode::OK,
            _ => StatusCode::MULTIPLE_CHOICES,
        };
        let sibs: Vec<Value> = live
            .iter()
            .map(|s| {
                let v = s.value.as_ref().map(|b| b.as_ref()).unwrap_or_default();
                let (value, encoding) = match std::str::from_utf8(v) {
                    Ok(t) => (t.to_string(), "utf8"),
                    Err(_) => (STANDARD.encode(v), "base64"),
                };
                json!({"value": value, "encoding": encoding, "dot": s.dot.to_string()})
            })
            .collect();
        let body = json!({
            "key": String::from_utf8_lossy(&key),
            "context": ctx,
            "siblings": sibs,
        });
        Ok((
            status,
            [(header::HeaderName::from_static(CONTEXT_HEADER), ctx_header)],
            Json(body),
        )
            .into_response())
    })
    .await
}

async fn write(st: &AppState, request: Request) -> Result<HttpResponse, ApiError> {
    match st.driver.request(request).await {
        Response::Written => Ok(StatusCode::NO_CONTENT.into_response()),
        Response::Error(e) => Err(client_error(&e)),
        _ => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "unexpected answer to a write",
        )),
    }
}

async fn put_key(
    State(st): State<Arc<AppState>>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: BodyBytes,
) -> HttpResponse {
    // The body is a view into the connection's read buffer (8 KiB or
    // more); the core keeps the value, so keeping the view would pin that
    // whole buffer per stored value and make every later read on the
    // connection allocate (and fault in) a fresh one.
    let value = Bytes::copy_from_slice(&body);
    drop(body);
    put_kv(&st, key, &headers, value).await
}

/// A put of `value`, which must own its memory (see [`put_key`]).
async fn put_kv(st: &AppState, key: String, headers: &HeaderMap, value: Bytes) -> HttpResponse {
    st.kv("put", headers, async {
        let key = st.key(key)?;
        let context = context_from(headers, st.max_context_len)?;
        write(
            st,
            Request::Put {
                key,
                value,
                context,
            },
        )
        .await
    })
    .await
}

async fn delete_key(
    State(st): State<Arc<AppState>>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> HttpResponse {
    delete_kv(&st, key, &headers).await
}

async fn delete_kv(st: &AppState, key: String, headers: &HeaderMap) -> HttpResponse {
    st.kv("delete", headers, async {
        let key = st.key(key)?;
        let context = context_from(headers, st.max_context_len)?;
        write(st, Request::Delete { key, context }).await
    })
    .await
}

async fn health() -> &'static str {
    "ok\n"
}

async fn ready(State(st): State<Arc<AppState>>) -> HttpResponse {
    if st.driver.is_ready() {
        return (StatusCode::OK, "ready\n").into_response();
    }
    let why = match st.driver.snapshot().await {
        Some(s) => s.not_ready.unwrap_or_else(|| "not serving".into()),
        None => "node is stopping".into(),
    };
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
        format!("not ready: {why}"),
    )
    .into_response()
}

#[derive(serde::Deserialize)]
struct FinalizeQuery {
    target: Option<String>,
}

async fn admin_finalize(
    State(st): State<Arc<AppState>>,
    Query(q): Query<FinalizeQuery>,
    headers: HeaderMap,
) -> HttpResponse {
    if let Err(e) = st.authorize(&headers) {
        return e.into_response();
    }
    let target = q.target.filter(|t| !t.is_empty());
    match st.driver.admin(AdminCommand::Finalize { target }).await {
        Response::Finalized { cluster_version } => {
            Json(json!({"cluster_version": cluster_version})).into_response()
        }
        Response::Error(e) => client_error(&e).into_response(),
        _ => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "unexpected answer to finalize",
        )
        .into_response(),
    }
}

fn backup_json(info: &BackupInfo) -> Value {
    json!({
        "label": info.label,
        "release": info.release,
        "schema": info.schema,
        "epoch": info.epoch,
        "reason": info.reason,
    })
}

/// The manifests of the backups kept, oldest first.
async fn list_backups(dir: Arc<PathBuf>) -> Vec<crate::backup::Manifest> {
    tokio::task::spawn_blocking(move || crate::backup::list(&dir))
        .await
        .unwrap_or_default()
}

async fn admin_backup(State(st): State<Arc<AppState>>, headers: HeaderMap) -> HttpResponse {
    if let Err(e) = st.authorize(&headers) {
        return e.into_response();
    }
    match st.driver.admin(AdminCommand::Backup).await {
        Response::BackedUp { info } => {
            let listed = list_backups(st.backups_dir.clone()).await;
            match listed.into_iter().find(|m| m.label == info.label) {
                Some(m) => Json(json!(m)).into_response(),
                // Already pruned (retention) or listing failed: the core's view.
                None => Json(backup_json(&info)).into_response(),
            }
        }
        Response::Error(e) => client_error(&e).into_response(),
        _ => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "unexpected answer to backup",
        )
        .into_response(),
    }
}

async fn admin_backups(State(st): State<Arc<AppState>>, headers: HeaderMap) -> HttpResponse {
    if let Err(e) = st.authorize(&headers) {
        return e.into_response();
    }
    let list = list_backups(st.backups_dir.clone()).await;
    Json(json!({
        "dir": st.backups_dir.display().to_string(),
        "backups": list,
    }))
    .into_response()
}

async fn metrics(State(st): State<Arc<AppState>>, headers: HeaderMap) -> HttpResponse {
    let snap = st.driver.snapshot().await;
    let format = crate::metrics::Format::negotiate(
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()),
    );
    let (metrics, backups) = (st.metrics.clone(), st.backups_dir.clone());
    let body = tokio::task::spawn_blocking(move || metrics.render(snap.as_ref(), &backups, format))
        .await
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, format.content_type())], body).into_response()
}

/// This binary's release table row as JSON.
pub fn version_json(release: &cairn_core::version::Release) -> Value {
    json!({
        "release": release.version,
        "protocols": {"min": release.protocols.min, "max": release.protocols.max},
        "schema": release.schema,
        "features": release.features.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>(),
    })
}

async fn version(State(st): State<Arc<AppState>>) -> Json<Value> {
    let mut v = match st.driver.snapshot().await {
        Some(s) => version_json(s.release),
        None => version_json(ReleaseId::current().release()),
    };
    v["binary"] = json!(env!("CARGO_PKG_VERSION"));
    v["releases_supported"] = json!(cairn_core::version::RELEASES
        .iter()
        .map(|r| r.version)
        .collect::<Vec<_>>());
    Json(v)
}

/// Parses "a.b.c" for ordering; unparsable parts count as zero.
fn semver(v: &str) -> (u64, u64, u64) {
    let mut it = v
        .split(['.', '-', '+'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    )
}

fn drift(release: &str, newest: &str) -> String {
    if semver(release) >= semver(newest) {
        "current".into()
    } else {
        format!("behind {newest}")
    }
}

/// The status document for a snapshot.
pub fn status_json(
    s: &Snapshot,
    members: &BTreeMap<NodeId, SocketAddr>,
    transport: &TransportStats,
    ready: bool,
) -> Value {
    let mut newest = s.release.version.to_string();
    for p in &s.peers {
        if let Some(info) = &p.info {
            if semver(&info.release) > semver(&newest) {
                newest = info.release.to_string();
            }
        }
    }
    let peers: Vec<Value> = s
        .peers
        .iter()
        .map(|p| {
            let link = transport.link(p.id);
            let mut v = json!({
                "id": p.id.0,
                "node": p.id.to_string(),
                "addr": members.get(&p.id).map(|a| a.to_string()),
                "up": p.up,
                "protocol": p.protocol,
                "refused": p.refused,
                "connected": link.connected,
                "transport_error": link.last_error,
            });
            if let Some(info) = &p.info {
                v["release"] = json!(info.release);
                v["protocols"] = json!({"min": info.protocols.min, "max": info.protocols.max});
                v["schema"] = json!(info.schema);
                v["epoch"] = json!(info.epoch);
                v["health"] = json!(format!("{:?}", info.health));
                v["cluster_version"] = json!(info.cluster_version);
                v["drift"] = json!(drift(&info.release, &newest));
            } else {
                v["release"] = Value::Null;
                v["health"] = json!("unknown");
                v["drift"] = json!("unknown");
            }
            v
        })
        .collect();
    json!({
        "id": s.id.0,
        "node": s.id.to_string(),
        "release": s.release.version,
        "protocols": {"min": s.release.protocols.min, "max": s.release.protocols.max},
        "schema": s.self_info.schema,
        "release_schema": s.release.schema,
        "epoch": s.epoch,
        "phase": format!("{:?}", s.phase),
        "health": format!("{:?}", s.self_info.health),
        "ready": ready,
        "not_ready_reason": s.not_ready,
        "cluster_version": s.self_info.cluster_version,
        "active_cluster_version": s.cluster_version,
        "live_schema": s.schema,
        "refusal": s.refusal,
        "migration": {
            "state": s.migration.state,
            "from": (s.migration.state != "none").then_some(s.migration.from),
            "to": (s.migration.state != "none").then_some(s.migration.to),
            "error": s.migration.error,
        },
        "newest_release_seen": newest,
        "drift": drift(s.release.version, &newest),
        "keys": s.keys,
        "hints": s.hints,
        "pending_ops": s.pending_ops,
        "halt_reason": s.halt_reason,
        "peers": peers,
    })
}

async fn status(State(st): State<Arc<AppState>>) -> HttpResponse {
    match st.driver.snapshot().await {
        Some(s) => Json(status_json(
            &s,
            &st.members,
            &st.transport,
            st.driver.is_ready(),
        ))
        .into_response(),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "node is stopping",
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path takes exactly the keys the router's `{*key}` route
    /// would hand its handlers, decoded the same way.
    #[tokio::test]
    async fn fast_path_keys_match_the_router() {
        async fn echo(Path(key): Path<String>) -> String {
            key
        }
        let mut router: Router = Router::new().route("/v1/kv/{*key}", get(echo));
        for path in [
            "/v1/kv/plain",
            "/v1/kv/a/b//c/",
            "/v1/kv/gr%C3%BCss",
            "/v1/kv/a%2Fb",
            "/v1/kv/sp%20ace+plus",
            "/v1/kv/%25",
            "/v1/kv/%zz",
            "/v1/kv/%FF",
            "/v1/kv/",
            "/v1/kv",
            "/v1/kvx",
        ] {
            let req = axum::http::Request::get(path)
                .body(axum::body::Body::empty())
                .unwrap();
            let resp = router.call(req).await.unwrap();
            let routed = if resp.status() == StatusCode::OK {
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                Some(String::from_utf8(body.to_vec()).unwrap())
            } else {
                None
            };
            assert_eq!(kv_key(path), routed, "{path}");
        }
    }

    #[test]
    fn drift_orders_releases() {
        assert_eq!(drift("0.2.0", "0.2.0"), "current");
        assert_eq!(drift("0.1.0", "0.2.0"), "behind 0.2.0");
        assert_eq!(drift("0.10.0", "0.9.0"), "current");
    }

    #[test]
    fn context_header_round_trips() {
        let ctx = Context::from(vec![0xC1, 1, 2, 3, 0xFF]);
        let mut h = HeaderMap::new();
        h.insert(
            CONTEXT_HEADER,
            HeaderValue::from_str(&context_to_header(&ctx)).unwrap(),
        );
        assert_eq!(context_from(&h, 64).unwrap(), ctx);
        h.insert(CONTEXT_HEADER, HeaderValue::from_static(""));
        assert_eq!(context_from(&h, 64).unwrap(), Context::new());
        h.insert(CONTEXT_HEADER, HeaderValue::from_static("!!!"));
        let e = context_from(&h, 64).unwrap_err();
        assert_eq!((e.status, e.kind), (StatusCode::BAD_REQUEST, "bad_context"));
        let long = "A".repeat(100);
        h.insert(CONTEXT_HEADER, HeaderValue::from_str(&long).unwrap());
        let e = context_from(&h, 64).unwrap_err();
        assert_eq!((e.status, e.kind), (StatusCode::BAD_REQUEST, "bad_context"));
        assert!(e.message.contains("oversized"), "{}", e.message);
        assert_eq!(
            client_error(&ClientError::BadContext("forged".into())).status,
            StatusCode::BAD_REQUEST
        );
    }
}
