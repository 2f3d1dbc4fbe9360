//! Peer transport: TCP connections carrying the core's envelopes as opaque,
//! length-delimited frames, after a mutual authentication exchange.
//!
//! Connections are one-way: every node dials each peer once and only sends on
//! that connection; what a node receives arrives on connections its peers
//! dialed. A dialer reconnects with exponential backoff. Each peer has a
//! bounded send queue; when it is full new messages are dropped and counted
//! (the core tolerates loss and retries what matters).
//!
//! Authentication (before any envelope), with `secret` the cluster secret:
//! 1. both sides send `AUTH_MAGIC | node id (u32 BE) | 32-byte random nonce`;
//! 2. the dialer sends `HMAC-SHA256(secret, "dial" | nonce_d | nonce_a | id_d | id_a)`;
//! 3. the acceptor checks it and answers `0x00 | HMAC(secret, "accept" | ...)`,
//!    or `0x01 | reason` and closes;
//! 4. the dialer checks the acceptor's proof.
//!
//! A peer without the secret never gets past step 3, and nothing it sends
//! reaches the core. Both sides log the refusal and keep it for `/v1/status`.
//!
//! Until a connection is authenticated it costs little: frames longer than
//! [`HANDSHAKE_MAX_FRAME`] close it as soon as their length is read (nothing
//! is allocated for them), the whole exchange must finish within
//! [`AUTH_TIMEOUT`], and at most [`MAX_UNAUTHENTICATED`] accepted
//! connections are in it at once (more are closed as they arrive).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cairn_core::NodeId;
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{Framed, FramedWrite, LengthDelimitedCodec};

use crate::driver::DriverMsg;

type HmacSha256 = Hmac<Sha256>;

const AUTH_MAGIC: &[u8; 8] = b"CAIRNAU1";
const NONCE_LEN: usize = 32;
/// The whole authentication exchange must finish within this.
const AUTH_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest frame accepted before authentication: the hello is 44 bytes,
/// a proof 32, a refusal a short reason.
pub const HANDSHAKE_MAX_FRAME: usize = 1024;
/// Accepted connections still authenticating at once; more are closed.
pub const MAX_UNAUTHENTICATED: usize = 64;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Counters and per-peer connection state, shared with status and metrics.
#[derive(Debug, Default)]
pub struct TransportStats {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub auth_failures: AtomicU64,
    pub connects: AtomicU64,
    /// What the transport knows about each peer.
    pub links: Mutex<BTreeMap<NodeId, LinkState>>,
}

/// The transport's view of one peer, for `/v1/status`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LinkState {
    /// Our outbound connection is established and authenticated.
    pub connected: bool,
    /// The last connection or authentication error, if any.
    pub last_error: Option<String>,
}

impl TransportStats {
    fn set_link(&self, peer: NodeId, connected: bool, error: Option<String>) {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        let l = links.entry(peer).or_default();
        l.connected = connected;
        if error.is_some() || connected {
            l.last_error = error;
        }
    }

    pub fn link(&self, peer: NodeId) -> LinkState {
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links.get(&peer).cloned().unwrap_or_default()
    }
}

/// The sending half: one bounded queue per peer.
#[derive(Clone)]
pub struct PeerSender {
    queues: Arc<BTreeMap<NodeId, mpsc::Sender<Bytes>>>,
    stats: Arc<TransportStats>,
}

impl PeerSender {
    /// Queues an envelope for a peer; drops it (and counts) if the queue is full.
    pub fn send(&self, to: NodeId, bytes: Bytes) {
        if let Some(q) = self.queues.get(&to) {
            if q.try_send(bytes).is_err() {
                self.stats
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Everything the transport needs.
#[derive(Clone)]
pub struct TransportConfig {
    pub id: NodeId,
    pub secret: Arc<[u8]>,
    pub members: BTreeMap<NodeId, SocketAddr>,
    pub queue: usize,
    pub max_frame: usize,
}

fn codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(max_frame)
        .new_codec()
}

/// Starts the listener and one dialer per peer. Returns the sending half.
pub fn start(
    cfg: TransportConfig,
    listener: TcpListener,
    driver: mpsc::Sender<DriverMsg>,
    stats: Arc<TransportStats>,
) -> PeerSender {
    let mut queues = BTreeMap::new();
    for (&peer, &addr) in &cfg.members {
        if peer == cfg.id {
            continue;
        }
        let (tx, rx) = mpsc::channel(cfg.queue);
        queues.insert(peer, tx);
        tokio::spawn(dial_loop(cfg.clone(), peer, addr, rx, stats.clone()));
    }
    tokio::spawn(accept_loop(cfg, listener, driver, stats.clone()));
    PeerSender {
        queues: Arc::new(queues),
        stats,
    }
}

fn proof(secret: &[u8], role: &[u8], nonces: (&[u8], &[u8]), ids: (NodeId, NodeId)) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(secret).expect("hmac takes any key length");
    mac.update(b"cairn-peer-auth-v1");
    mac.update(role);
    mac.update(nonces.0);
    mac.update(nonces.1);
    mac.update(&ids.0 .0.to_be_bytes());
    mac.update(&ids.1 .0.to_be_bytes());
    mac.finalize().into_bytes().into()
}

fn verify(
    secret: &[u8],
    role: &[u8],
    nonces: (&[u8], &[u8]),
    ids: (NodeId, NodeId),
    tag: &[u8],
) -> bool {
    let mut mac = HmacSha256::new_from_slice(secret).expect("hmac takes any key length");
    mac.update(b"cairn-peer-auth-v1");
    mac.update(role);
    mac.update(nonces.0);
    mac.update(nonces.1);
    mac.update(&ids.0 .0.to_be_bytes());
    mac.update(&ids.1 .0.to_be_bytes());
    mac.verify_slice(tag).is_ok()
}

fn hello(id: NodeId, nonce: &[u8; NONCE_LEN]) -> Bytes {
    let mut b = BytesMut::with_capacity(8 + 4 + NONCE_LEN);
    b.extend_from_slice(AUTH_MAGIC);
    b.extend_from_slice(&id.0.to_be_bytes());
    b.extend_from_slice(nonce);
    b.freeze()
}

fn parse_hello(frame: &[u8]) -> Result<(NodeId, [u8; NONCE_LEN]), String> {
    if frame.len() != 8 + 4 + NONCE_LEN || &frame[..8] != AUTH_MAGIC {
        return Err("not a cairn peer (bad authentication hello)".into());
    }
    let id = NodeId(u32::from_be_bytes([
        frame[8], frame[9], frame[10], frame[11],
    ]));
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&frame[12..]);
    Ok((id, nonce))
}

fn nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut n);
    n
}

type Conn = Framed<TcpStream, LengthDelimitedCodec>;

async fn next_frame(conn: &mut Conn) -> Result<BytesMut, String> {
    match conn.next().await {
        None => Err("connection closed during authentication".into()),
        Some(Err(e)) => Err(format!("read error during authentication: {e}")),
        Some(Ok(f)) => Ok(f),
    }
}

/// A connection framed for the authentication exchange: short frames only.
fn handshake_conn(stream: TcpStream) -> Conn {
    Framed::new(stream, codec(HANDSHAKE_MAX_FRAME))
}

/// Bounds a whole authentication exchange by [`AUTH_TIMEOUT`].
async fn deadline<T>(
    exchange: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(AUTH_TIMEOUT, exchange)
        .await
        .map_err(|_| "timed out during authentication".to_string())?
}

/// Dialer side of the exchange; returns the connection once both are proven.
async fn authenticate_dialer(
    cfg: &TransportConfig,
    peer: NodeId,
    conn: &mut Conn,
) -> Result<(), String> {
    let mine = nonce();
    conn.send(hello(cfg.id, &mine))
        .await
        .map_err(|e| format!("write error: {e}"))?;
    let (their_id, theirs) = parse_hello(&next_frame(conn).await?)?;
    if their_id != peer {
        return Err(format!(
            "expected node {peer} at this address but {their_id} answered (check members)"
        ));
    }
    let ids = (cfg.id, peer);
    let tag = proof(&cfg.secret, b"dial", (&mine, &theirs), ids);
    conn.send(Bytes::copy_from_slice(&tag))
        .await
        .map_err(|e| format!("write error: {e}"))?;
    let answer = next_frame(conn).await?;
    match answer.first() {
        Some(0) if verify(&cfg.secret, b"accept", (&mine, &theirs), ids, &answer[1..]) => Ok(()),
        Some(0) => Err(format!(
            "authentication failed: {peer} could not prove it holds the cluster secret"
        )),
        Some(1) => Err(format!(
            "refused by {peer}: {}",
            String::from_utf8_lossy(&answer[1..])
        )),
        _ => Err("malformed authentication answer".into()),
    }
}

/// Acceptor side; returns the authenticated peer id.
async fn authenticate_acceptor(cfg: &TransportConfig, conn: &mut Conn) -> Result<NodeId, String> {
    let (their_id, theirs) = parse_hello(&next_frame(conn).await?)?;
    let mine = nonce();
    conn.send(hello(cfg.id, &mine))
        .await
        .map_err(|e| format!("write error: {e}"))?;
    let tag = next_frame(conn).await?;
    let ids = (their_id, cfg.id);
    if !verify(&cfg.secret, b"dial", (&theirs, &mine), ids, &tag) {
        return refuse(
            conn,
            format!("authentication failed: node {their_id} does not hold the cluster secret"),
        )
        .await;
    }
    if their_id == cfg.id || !cfg.members.contains_key(&their_id) {
        return refuse(
            conn,
            format!("node {their_id} is not a member of this cluster"),
        )
        .await;
    }
    let reply = proof(&cfg.secret, b"accept", (&theirs, &mine), ids);
    let mut b = BytesMut::with_capacity(33);
    b.extend_from_slice(&[0]);
    b.extend_from_slice(&reply);
    conn.send(b.freeze())
        .await
        .map_err(|e| format!("write error: {e}"))?;
    Ok(their_id)
}

async fn refuse(conn: &mut Conn, reason: String) -> Result<NodeId, String> {
    let mut b = BytesMut::new();
    b.extend_from_slice(&[1]);
    b.extend_from_slice(reason.as_bytes());
    let _ = conn.send(b.freeze()).await;
    Err(reason)
}

async fn dial_loop(
    cfg: TransportConfig,
    peer: NodeId,
    addr: SocketAddr,
    mut queue: mpsc::Receiver<Bytes>,
    stats: Arc<TransportStats>,
) {
    let mut backoff = BACKOFF_MIN;
    let mut last_logged: Option<String> = None;
    loop {
        let attempt = async {
            let stream = tokio::time::timeout(AUTH_TIMEOUT, TcpStream::connect(addr))
                .await
                .map_err(|_| format!("connect to {addr} timed out"))?
                .map_err(|e| format!("connect to {addr}: {e}"))?;
            let _ = stream.set_nodelay(true);
            let mut conn = handshake_conn(stream);
            deadline(authenticate_dialer(&cfg, peer, &mut conn)).await?;
            // Authenticated: envelopes may be as long as the core allows.
            conn.codec_mut().set_max_frame_length(cfg.max_frame);
            Ok::<Conn, String>(conn)
        };
        let conn = match attempt.await {
            Ok(c) => c,
            Err(e) => {
                let auth = e.contains("authentication") || e.contains("refused by");
                if auth {
                    stats.auth_failures.fetch_add(1, Ordering::Relaxed);
                }
                if last_logged.as_deref() != Some(e.as_str()) {
                    if auth {
                        tracing::error!(%peer, %addr, error = %e, "peer refused");
                    } else {
                        tracing::debug!(%peer, %addr, error = %e, "cannot reach peer");
                    }
                    last_logged = Some(e.clone());
                }
                stats.set_link(peer, false, Some(e));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        tracing::info!(%peer, %addr, "connected to peer");
        stats.connects.fetch_add(1, Ordering::Relaxed);
        stats.set_link(peer, true, None);
        backoff = BACKOFF_MIN;
        last_logged = None;
        let err = send_loop(conn, &mut queue, &stats).await;
        match err {
            None => return, // the node is stopping
            Some(e) => {
                tracing::info!(%peer, error = %e, "peer connection lost");
                stats.set_link(peer, false, Some(e));
            }
        }
    }
}

/// Writes queued envelopes until the connection fails (Some(reason)) or the
/// queue closes (None).
async fn send_loop(
    conn: Conn,
    queue: &mut mpsc::Receiver<Bytes>,
    stats: &TransportStats,
) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    // The two directions as owned halves: writing and watching for the
    // close need no lock between them.
    let parts = conn.into_parts();
    if !parts.read_buf.is_empty() {
        return Some("unexpected data from peer".to_string());
    }
    let (mut reader, mut writer) = parts.io.into_split();
    if !parts.write_buf.is_empty() {
        if let Err(e) = writer.write_all(&parts.write_buf).await {
            return Some(format!("write: {e}"));
        }
    }
    let mut sink: FramedWrite<_, LengthDelimitedCodec> = FramedWrite::new(writer, parts.codec);
    let mut probe = [0u8; 1];
    loop {
        tokio::select! {
            msg = queue.recv() => {
                let msg = msg?;
                if let Err(e) = sink.feed(msg).await {
                    return Some(format!("write: {e}"));
                }
                let mut n = 1;
                // Coalesce whatever else is waiting into one flush.
                while n < 256 {
                    match queue.try_recv() {
                        Ok(m) => {
                            if let Err(e) = sink.feed(m).await {
                                return Some(format!("write: {e}"));
                            }
                            n += 1;
                        }
                        Err(_) => break,
                    }
                }
                if let Err(e) = SinkExt::<Bytes>::flush(&mut sink).await {
                    return Some(format!("write: {e}"));
                }
                stats.sent.fetch_add(n, Ordering::Relaxed);
            }
            // The acceptor never sends after authentication: anything here is
            // the connection closing.
            r = reader.read(&mut probe) => {
                return Some(match r {
                    Ok(0) => "closed by peer".to_string(),
                    Err(e) => format!("read: {e}"),
                    Ok(_) => "unexpected data from peer".to_string(),
                });
            }
        }
    }
}

async fn accept_loop(
    cfg: TransportConfig,
    listener: TcpListener,
    driver: mpsc::Sender<DriverMsg>,
    stats: Arc<TransportStats>,
) {
    let unauthenticated = Arc::new(tokio::sync::Semaphore::new(MAX_UNAUTHENTICATED));
    let mut refusing = false;
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "peer accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = unauthenticated.clone().try_acquire_owned() else {
            stats.auth_failures.fetch_add(1, Ordering::Relaxed);
            if !refusing {
                tracing::warn!(
                    %remote,
                    limit = MAX_UNAUTHENTICATED,
                    "closing peer connections: too many still authenticating"
                );
                refusing = true;
            }
            continue;
        };
        refusing = false;
        let _ = stream.set_nodelay(true);
        let cfg = cfg.clone();
        let driver = driver.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut conn = handshake_conn(stream);
            let authenticated = deadline(authenticate_acceptor(&cfg, &mut conn)).await;
            drop(slot);
            let from = match authenticated {
                Ok(id) => id,
                Err(e) => {
                    stats.auth_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%remote, error = %e, "refused peer connection");
                    return;
                }
            };
            conn.codec_mut().set_max_frame_length(cfg.max_frame);
            tracing::debug!(peer = %from, %remote, "accepted peer connection");
            while let Some(frame) = conn.next().await {
                let bytes = match frame {
                    Ok(f) => f.freeze(),
                    Err(e) => {
                        tracing::debug!(peer = %from, error = %e, "peer connection error");
                        return;
                    }
                };
                stats.received.fetch_add(1, Ordering::Relaxed);
                if driver.send(DriverMsg::Peer { from, bytes }).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_depend_on_secret_role_and_nonces() {
        let ids = (NodeId(1), NodeId(2));
        let n = ([1u8; 32], [2u8; 32]);
        let t = proof(b"secret-secret-secret", b"dial", (&n.0, &n.1), ids);
        assert!(verify(
            b"secret-secret-secret",
            b"dial",
            (&n.0, &n.1),
            ids,
            &t
        ));
        assert!(!verify(
            b"other-secret-secret",
            b"dial",
            (&n.0, &n.1),
            ids,
            &t
        ));
        assert!(!verify(
            b"secret-secret-secret",
            b"accept",
            (&n.0, &n.1),
            ids,
            &t
        ));
        assert!(!verify(
            b"secret-secret-secret",
            b"dial",
            (&n.1, &n.0),
            ids,
            &t
        ));
        assert!(!verify(
            b"secret-secret-secret",
            b"dial",
            (&n.0, &n.1),
            (NodeId(2), NodeId(1)),
            &t
        ));
    }

    #[test]
    fn hello_round_trips_and_rejects_garbage() {
        let n = nonce();
        let h = hello(NodeId(7), &n);
        assert_eq!(parse_hello(&h).unwrap(), (NodeId(7), n));
        assert!(parse_hello(b"GET / HTTP/1.1\r\n").is_err());
    }
}
