//! The HTTP/1.1 server for the client API: one task per connection, reading
//! requests into one reusable buffer and writing each response with one
//! write, then calling [`crate::http::route`].
//!
//! It does what the API's clients need and no more: keep-alive (HTTP/1.1 by
//! default, HTTP/1.0 on request) and pipelined requests answered in order,
//! `Content-Length` and chunked request bodies, `Expect: 100-continue`,
//! `HEAD`. Request heads over 16 KiB are refused (431), bodies over the
//! value limit too (413); a malformed request gets 400 and the connection
//! is closed, as is one whose request stops arriving halfway for 30 s (an
//! idle keep-alive connection may wait for its next request indefinitely).
//!
//! A request body is handed on as an exact-size copy: the core keeps put
//! values, and a view into the read buffer would pin the whole buffer.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response as HttpResponse;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::http::AppState;

/// Largest request head (request line and headers).
const MAX_HEAD: usize = 16 * 1024;
/// Most headers in one request.
const MAX_HEADERS: usize = 64;
/// A refused body is read and dropped up to this size before the answer,
/// so the client sees the answer rather than a reset connection.
const MAX_DISCARD: u64 = 8 << 20;
/// How long a started request may go without sending anything.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a refused body may take to arrive.
const DISCARD_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts connections until the task is dropped.
pub async fn serve(listener: TcpListener, state: AppState) {
    let state = Arc::new(state);
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "http accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let st = state.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, st).await {
                tracing::debug!(error = %e, "http connection ended");
            }
        });
    }
}

/// A parsed request head.
struct Head {
    method: Method,
    target: String,
    headers: HeaderMap,
    content_length: Option<u64>,
    chunked: bool,
    keep_alive: bool,
    http10: bool,
    expect_continue: bool,
}

/// Why a request cannot be served; the connection closes after the answer.
struct Refusal {
    status: StatusCode,
    why: &'static str,
}

fn refuse(status: StatusCode, why: &'static str) -> Refusal {
    Refusal { status, why }
}

impl Refusal {
    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "head_too_large",
            StatusCode::NOT_IMPLEMENTED | StatusCode::EXPECTATION_FAILED => "unsupported",
            _ => "bad_request",
        }
    }
}

async fn connection(mut stream: TcpStream, st: Arc<AppState>) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(4096);
    let mut out = Vec::with_capacity(1024);
    loop {
        let head_len = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HEAD {
                let r = refuse(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "request head too large",
                );
                return answer_refusal(&mut stream, &mut out, r).await;
            }
            // Waiting for a new request has no limit; a started one must
            // keep arriving.
            let n = if buf.is_empty() {
                stream.read_buf(&mut buf).await?
            } else {
                read_more(&mut stream, &mut buf).await?
            };
            if n == 0 {
                return Ok(());
            }
        };
        let head = match parse_head(&buf[..head_len]) {
            Ok(h) => h,
            Err(r) => return answer_refusal(&mut stream, &mut out, r).await,
        };
        buf.advance(head_len);
        let limit = st.max_value_len as u64;
        let body = if head.chunked {
            match read_chunked(&mut stream, &mut buf, limit, head.expect_continue).await? {
                Ok(b) => b,
                Err(r) => return answer_refusal(&mut stream, &mut out, r).await,
            }
        } else {
            let n = head.content_length.unwrap_or(0);
            if n > limit {
                // Take the body off the wire first (if it is not absurd),
                // so the client reads the answer.
                if n <= MAX_DISCARD && !head.expect_continue {
                    let _ = tokio::time::timeout(
                        DISCARD_TIMEOUT,
                        discard(&mut stream, &mut buf, n as usize),
                    )
                    .await;
                }
                let r = refuse(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
                return answer_refusal(&mut stream, &mut out, r).await;
            }
            let n = n as usize;
            if head.expect_continue && buf.len() < n {
                stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
            }
            fill(&mut stream, &mut buf, n).await?;
            let body = Bytes::copy_from_slice(&buf[..n]);
            buf.advance(n);
            body
        };
        let is_head = head.method == Method::HEAD;
        let resp = crate::http::route(&st, &head.method, &head.target, head.headers, body).await;
        encode(&mut out, resp, is_head, head.keep_alive, head.http10).await;
        stream.write_all(&out).await?;
        if !head.keep_alive {
            return Ok(());
        }
    }
}

/// Answers a request that cannot be served, then closes.
async fn answer_refusal(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    r: Refusal,
) -> std::io::Result<()> {
    let body = serde_json::json!({"error": r.why, "kind": r.kind()}).to_string();
    out.clear();
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        r.status.as_u16(),
        r.status.canonical_reason().unwrap_or(""),
        body.len()
    );
    stream.write_all(out).await?;
    let _ = stream.shutdown().await;
    Ok(())
}

/// Writes the response into `out`: status line, headers, then the body
/// (none for HEAD, 1xx, 204 and 304).
async fn encode(out: &mut Vec<u8>, resp: HttpResponse, is_head: bool, keep: bool, http10: bool) {
    let (parts, body) = resp.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let status = parts.status;
    out.clear();
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if !bodiless {
        let _ = write!(out, "content-length: {}\r\n", body.len());
    }
    if !keep {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !bodiless && !is_head {
        out.extend_from_slice(&body);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Parses a request head (ending with the empty line).
fn parse_head(raw: &[u8]) -> Result<Head, Refusal> {
    let bad = |why| refuse(StatusCode::BAD_REQUEST, why);
    let text = std::str::from_utf8(raw).map_err(|_| bad("request head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("malformed request line"));
    };
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| bad("bad method"))?;
    if !target.starts_with('/') {
        return Err(bad("request target must be a path"));
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(bad("unsupported HTTP version")),
    };
    let mut h = Head {
        method,
        target: target.to_string(),
        headers: HeaderMap::new(),
        content_length: None,
        chunked: false,
        keep_alive: !http10,
        http10,
        expect_continue: false,
    };
    for line in lines {
        if line.is_empty() {
            continue;
        }
        if h.headers.len() >= MAX_HEADERS {
            return Err(refuse(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too many headers",
            ));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad("malformed header"))?;
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad("bad header name"))?;
        let value = value.trim_matches(|c| c == ' ' || c == '\t');
        let value = HeaderValue::from_str(value).map_err(|_| bad("bad header value"))?;
        if name == header::CONTENT_LENGTH {
            let n: u64 = value
                .to_str()
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad("bad content-length"))?;
            if h.content_length.is_some_and(|m| m != n) {
                return Err(bad("conflicting content-length"));
            }
            h.content_length = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            if !value.as_bytes().eq_ignore_ascii_case(b"chunked") {
                return Err(refuse(
                    StatusCode::NOT_IMPLEMENTED,
                    "only chunked transfer encoding is supported",
                ));
            }
            h.chunked = true;
        } else if name == header::CONNECTION {
            if has_token(value.as_bytes(), "close") {
                h.keep_alive = false;
            } else if has_token(value.as_bytes(), "keep-alive") {
                h.keep_alive = true;
            }
        } else if name == header::EXPECT {
            if !value.as_bytes().eq_ignore_ascii_case(b"100-continue") {
                return Err(refuse(
                    StatusCode::EXPECTATION_FAILED,
                    "unsupported expectation",
                ));
            }
            h.expect_continue = !http10;
        }
        h.headers.append(name, value);
    }
    if h.chunked && h.content_length.is_some() {
        return Err(bad("both content-length and chunked"));
    }
    Ok(h)
}

/// Reads more of a request that has started: 0 at the end of the stream, an
/// error if nothing arrives for [`READ_TIMEOUT`].
async fn read_more(stream: &mut TcpStream, buf: &mut BytesMut) -> std::io::Result<usize> {
    match tokio::time::timeout(READ_TIMEOUT, stream.read_buf(buf)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// Reads until `buf` holds at least `n` bytes.
async fn fill(stream: &mut TcpStream, buf: &mut BytesMut, n: usize) -> std::io::Result<()> {
    buf.reserve(n.saturating_sub(buf.len()));
    while buf.len() < n {
        if read_more(stream, buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

/// Reads and drops `n` bytes of body.
async fn discard(stream: &mut TcpStream, buf: &mut BytesMut, mut n: usize) -> std::io::Result<()> {
    loop {
        let take = n.min(buf.len());
        buf.advance(take);
        n -= take;
        if n == 0 {
            return Ok(());
        }
        if read_more(stream, buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Reads one CRLF-terminated line (without the CRLF).
async fn read_line(stream: &mut TcpStream, buf: &mut BytesMut) -> std::io::Result<Option<Bytes>> {
    loop {
        if let Some(i) = find(buf, b"\r\n") {
            let line = buf.split_to(i).freeze();
            buf.advance(2);
            return Ok(Some(line));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
        if read_more(stream, buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Reads a chunked body of at most `limit` bytes.
async fn read_chunked(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    limit: u64,
    expect_continue: bool,
) -> std::io::Result<Result<Bytes, Refusal>> {
    let bad = |why| Ok(Err(refuse(StatusCode::BAD_REQUEST, why)));
    if expect_continue && buf.is_empty() {
        stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    let mut body = Vec::new();
    loop {
        let Some(line) = read_line(stream, buf).await? else {
            return bad("chunk size line too long");
        };
        let size = line.split(|&b| b == b';').next().unwrap_or_default();
        let Some(size) = std::str::from_utf8(size)
            .ok()
            .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
        else {
            return bad("bad chunk size");
        };
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                match read_line(stream, buf).await? {
                    None => return bad("trailer too long"),
                    Some(l) if l.is_empty() => return Ok(Ok(Bytes::from(body))),
                    Some(_) => {}
                }
            }
        }
        if body.len() as u64 + size > limit {
            return Ok(Err(refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large",
            )));
        }
        let n = size as usize;
        fill(stream, buf, n + 2).await?;
        body.extend_from_slice(&buf[..n]);
        if &buf[n..n + 2] != b"\r\n" {
            return bad("chunk not followed by CRLF");
        }
        buf.advance(n + 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse() {
        let h = parse_head(
            b"PUT /v1/kv/a%20b?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nX-Cairn-Context: abc\r\n\r\n",
        )
        .ok()
        .unwrap();
        assert_eq!(h.method, Method::PUT);
        assert_eq!(h.target, "/v1/kv/a%20b?x=1");
        assert_eq!(h.content_length, Some(3));
        assert!(h.keep_alive && !h.chunked && !h.expect_continue);
        assert_eq!(h.headers.get("x-cairn-context").unwrap(), "abc");

        let h = parse_head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .ok()
            .unwrap();
        assert!(h.keep_alive && h.http10);
        let h = parse_head(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .ok()
            .unwrap();
        assert!(!h.keep_alive);
        let h = parse_head(
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
        )
        .ok()
        .unwrap();
        assert!(h.chunked && h.expect_continue);

        for bad in [
            &b"GET /\r\n\r\n"[..],
            b"GET / HTTP/2\r\n\r\n",
            b"GET http://x/ HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        ] {
            assert!(parse_head(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    /// A real connection: pipelined keep-alive requests, a chunked body with
    /// `Expect: 100-continue`, and the decoded bodies as the server saw them.
    #[tokio::test]
    async fn chunked_bodies_and_pipelining() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = BytesMut::new();
            let mut bodies = Vec::new();
            for _ in 0..2 {
                let end = loop {
                    if let Some(i) = find(&buf, b"\r\n\r\n") {
                        break i + 4;
                    }
                    s.read_buf(&mut buf).await.unwrap();
                };
                let head = parse_head(&buf[..end]).ok().unwrap();
                buf.advance(end);
                let body = if head.chunked {
                    read_chunked(&mut s, &mut buf, 1024, head.expect_continue)
                        .await
                        .unwrap()
                        .ok()
                        .unwrap()
                } else {
                    let n = head.content_length.unwrap() as usize;
                    fill(&mut s, &mut buf, n).await.unwrap();
                    buf.split_to(n).freeze()
                };
                bodies.push(body);
            }
            bodies
        });
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"PUT /a HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiPUT /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n")
            .await
            .unwrap();
        let mut cont = [0u8; 25];
        c.read_exact(&mut cont).await.unwrap();
        assert_eq!(&cont, b"HTTP/1.1 100 Continue\r\n\r\n");
        c.write_all(b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: x\r\n\r\n")
            .await
            .unwrap();
        let bodies = server.await.unwrap();
        assert_eq!(bodies, vec![Bytes::from("hi"), Bytes::from("abcde")]);
    }

    #[tokio::test]
    async fn responses_are_framed() {
        use axum::response::IntoResponse as _;
        let mut out = Vec::new();
        let resp = (StatusCode::OK, "body").into_response();
        encode(&mut out, resp, false, true, false).await;
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("content-length: 4\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nbody"), "{text}");
        encode(
            &mut out,
            StatusCode::NO_CONTENT.into_response(),
            false,
            false,
            false,
        )
        .await;
        let text = String::from_utf8(out.clone()).unwrap();
        assert_eq!(text, "HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n");
    }
}
