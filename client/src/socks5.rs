//! The SOCKS5 proxy (`loopmix-client socks5`, RFC 1928): every accepted
//! CONNECT becomes a stream to the exit.
//!
//! Only the parsing is done here, strictly and with a timeout; nothing is
//! resolved or connected locally (a local DNS lookup would tell the local
//! network where the user is going). Names travel to the exit as names,
//! except IP literals (`ATYP 3` "127.0.0.1", as browsers send it), which
//! travel as the address they are ([`crate::exit::normalize`]).
//! Replies: `0x07` for BIND / UDP ASSOCIATE / unknown commands, `0x08` for
//! unknown address types, the exit's code for failed connects, `0x01` when
//! the mixnet cannot carry the stream. A client offering no acceptable
//! method gets `0xFF`; a SOCKS4 request gets a SOCKS4 rejection. Anything
//! else is closed. (A hand-written parser: the crates' server helpers
//! resolve and connect locally, which is exactly what must not happen.)
//!
//! Stream isolation, as Tor's `IsolateSOCKSAuth`: username/password
//! authentication (RFC 1929, method `0x02`) is preferred when offered, and
//! any username and password are accepted, never checked: they are the
//! [`IsolationKey`] that chooses the stream's session with the exit, so
//! streams of different credentials cannot be linked there. No
//! authentication (`0x00`) and an empty username with an empty password
//! share one key. The sub-negotiation answers `01 00`; a wrong
//! sub-negotiation version or a request cut short gets `01 01` (failure)
//! and is closed. Credentials are never logged. (RFC 1929 asks for 1 to
//! 255 bytes each; the length byte bounds them at 255, and empty ones are
//! accepted as Tor and curl's `user:@` need.)

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::error::ClientError;
use loopmix_core::e2e::ClientAddress;
use prometheus::{IntCounterVec, Registry};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, info};

use crate::config::{ClientConfig, EarlyReply, SocksSection};
use crate::exit::normalize;
use crate::runtime::{Client, ClientEvent, write_atomic};
use crate::stream::frame::valid_name;
use crate::stream::io::{Filler, OpenError, Shared, open_with, pipe};
use crate::stream::mux::Role;
use crate::stream::{IsolationKey, Mux, StreamConfig, StreamMetrics, Target, code};

/// Where the proxy writes its bound address (in the client's data dir).
pub const SOCKS_ADDR_FILE: &str = "socks5.addr";

const VERSION: u8 = 5;
const NO_AUTH: u8 = 0x00;
const USER_PASS: u8 = 0x02;
const NO_ACCEPTABLE: u8 = 0xFF;
/// RFC 1929: the sub-negotiation's version, and its status bytes.
const AUTH_VERSION: u8 = 0x01;
const AUTH_OK: u8 = 0x00;
const AUTH_FAILED: u8 = 0x01;
const CMD_CONNECT: u8 = 0x01;
pub const COMMAND_NOT_SUPPORTED: u8 = 0x07;
pub const ADDRESS_NOT_SUPPORTED: u8 = 0x08;

/// What a SOCKS5 handshake asked for, or why it failed.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Connect(Target),
    /// Answered with this reply code, then closed.
    Refuse(u8),
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("not SOCKS5 (first byte {0:#04x})")]
    Version(u8),
    #[error("no acceptable authentication method offered")]
    NoMethod,
    #[error("username/password sub-negotiation version {0:#04x}, not 0x01")]
    AuthVersion(u8),
    #[error("username/password sub-negotiation cut short")]
    AuthTruncated,
    #[error("malformed request")]
    Malformed,
}

impl HandshakeError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Io(_) => "io",
            Self::Version(4) => "socks4",
            Self::Version(_) => "version",
            Self::NoMethod => "no_method",
            Self::AuthVersion(_) => "auth_version",
            Self::AuthTruncated => "auth_truncated",
            Self::Malformed => "malformed",
        }
    }
}

/// Reads the method negotiation, the username/password sub-negotiation if
/// chosen, and the request, answering all but the request: the caller
/// sends the final reply. The isolation key comes with the request.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
) -> Result<(IsolationKey, Request), HandshakeError> {
    let ver = s.read_u8().await?;
    if ver != VERSION {
        if ver == 4 {
            // SOCKS4: "request rejected or failed".
            let _ = s.write_all(&[0, 91, 0, 0, 0, 0, 0, 0]).await;
        }
        return Err(HandshakeError::Version(ver));
    }
    let n = s.read_u8().await?;
    let mut methods = vec![0u8; usize::from(n)];
    s.read_exact(&mut methods).await?;
    // Username/password first, as Tor: it is what isolates.
    let key = if methods.contains(&USER_PASS) {
        s.write_all(&[VERSION, USER_PASS]).await?;
        credentials(s).await?
    } else if methods.contains(&NO_AUTH) {
        s.write_all(&[VERSION, NO_AUTH]).await?;
        IsolationKey::NONE
    } else {
        s.write_all(&[VERSION, NO_ACCEPTABLE]).await?;
        return Err(HandshakeError::NoMethod);
    };
    Ok((key, request(s).await?))
}

/// The RFC 1929 sub-negotiation: `01 ULEN UNAME PLEN PASSWD`. Every
/// complete one succeeds; the credentials become the isolation key.
async fn credentials<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
) -> Result<IsolationKey, HandshakeError> {
    let ver = s.read_u8().await?;
    if ver != AUTH_VERSION {
        let _ = s.write_all(&[AUTH_VERSION, AUTH_FAILED]).await;
        return Err(HandshakeError::AuthVersion(ver));
    }
    async fn field<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<Vec<u8>> {
        let len = s.read_u8().await?;
        let mut b = vec![0u8; usize::from(len)];
        s.read_exact(&mut b).await?;
        Ok(b)
    }
    let user = field(s).await;
    let pass = match &user {
        Ok(_) => field(s).await,
        Err(_) => Ok(Vec::new()),
    };
    let (user, pass) = match (user, pass) {
        (Ok(u), Ok(p)) => (u, p),
        // A length that promises more than arrives (an over-long name
        // cut at the end of the input), or nothing at all.
        _ => {
            let _ = s.write_all(&[AUTH_VERSION, AUTH_FAILED]).await;
            return Err(HandshakeError::AuthTruncated);
        }
    };
    s.write_all(&[AUTH_VERSION, AUTH_OK]).await?;
    Ok(IsolationKey::credentials(user, pass))
}

/// The request after the method (and sub-)negotiation.
async fn request<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> Result<Request, HandshakeError> {
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await?;
    let [ver, cmd, rsv, atyp] = head;
    if ver != VERSION || rsv != 0 {
        return Err(HandshakeError::Malformed);
    }
    // The address is read in full even for commands we refuse, so the
    // reply is not sent into the middle of the request.
    let host = match atyp {
        0x01 => {
            let mut b = [0u8; 4];
            s.read_exact(&mut b).await?;
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
        0x04 => {
            let mut b = [0u8; 16];
            s.read_exact(&mut b).await?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        0x03 => {
            let len = s.read_u8().await?;
            let mut b = vec![0u8; usize::from(len)];
            s.read_exact(&mut b).await?;
            let port = s.read_u16().await?;
            if cmd != CMD_CONNECT {
                return Ok(Request::Refuse(COMMAND_NOT_SUPPORTED));
            }
            return Ok(match String::from_utf8(b) {
                Ok(name) if valid_name(&name) => {
                    Request::Connect(normalize(Target::Name(name, port)))
                }
                _ => Request::Refuse(code::HOST_UNREACHABLE),
            });
        }
        _ => return Ok(Request::Refuse(ADDRESS_NOT_SUPPORTED)),
    };
    let port = s.read_u16().await?;
    if cmd != CMD_CONNECT {
        return Ok(Request::Refuse(COMMAND_NOT_SUPPORTED));
    }
    match host {
        Some(ip) => Ok(Request::Connect(Target::Ip(SocketAddr::new(ip, port)))),
        None => Err(HandshakeError::Malformed),
    }
}

/// A reply with an all-zero IPv4 bound address (we bind nothing locally
/// that the client could use).
pub async fn reply<S: AsyncWrite + Unpin>(s: &mut S, code: u8) -> std::io::Result<()> {
    s.write_all(&[VERSION, code, 0, 0x01, 0, 0, 0, 0, 0, 0])
        .await
}

/// Proxy limits.
#[derive(Debug, Clone)]
pub struct SocksConfig {
    pub streams: StreamConfig,
    /// Connections handled at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Time a connection may take to send its request.
    pub handshake_timeout: Duration,
    /// When a CONNECT is answered (`socks.early_reply`).
    pub early_reply: EarlyReply,
}

impl Default for SocksConfig {
    fn default() -> Self {
        Self::from_section(&SocksSection::default())
    }
}

impl SocksConfig {
    /// The defaults, with the config file's `[socks]` section.
    pub fn from_section(section: &SocksSection) -> Self {
        Self {
            streams: StreamConfig {
                session_idle: section.session_idle,
                session_max_age: section.session_max_age,
                max_sessions: section.max_sessions,
                ..StreamConfig::default()
            },
            max_connections: 256,
            handshake_timeout: Duration::from_secs(10),
            early_reply: section.early_reply,
        }
    }
}

/// Runs the proxy on `listen` with streams to `exit` until stopped.
pub async fn run(
    cfg: ClientConfig,
    socks: SocksConfig,
    listen: SocketAddr,
    exit: ClientAddress,
    registry: &Registry,
) -> Result<(), ClientError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(ClientError::io(format!("binding the SOCKS5 port {listen}")))?;
    let bound = listener
        .local_addr()
        .map_err(ClientError::io("SOCKS5 address"))?;
    let data_dir = cfg.client.data_dir.clone();
    let metrics = StreamMetrics::new(registry)?;
    let handshakes = loopmix_net::metrics::counter_vec(
        registry,
        "loopmix_socks_handshakes_total",
        "SOCKS5 handshakes by result",
        &["result"],
    )?;
    let shared = Shared::new(
        Mux::client(exit, socks.streams.clone(), metrics, &mut rand::rng()),
        Role::Client,
    );
    let (client, mut events) =
        Client::start_with(cfg, registry, Some(Arc::new(Filler(shared.clone())))).await?;
    let cancel = tokio_util::sync::CancellationToken::new();
    tokio::spawn(shared.clone().housekeeping(cancel.clone()));
    {
        let shared = shared.clone();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                if let ClientEvent::Received { body, .. } = ev {
                    shared.on_message(&body, Vec::new());
                }
            }
        });
    }
    write_atomic(&data_dir_file(&data_dir), &format!("{bound}\n"))?;
    info!(socks5 = %bound, address = %client.address(), %exit, "SOCKS5 proxy listening");
    let limit = Arc::new(Semaphore::new(socks.max_connections));
    loop {
        // The semaphore is never closed: `acquire_owned` cannot fail here.
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return Ok(());
        };
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (shared, handshakes, timeout, early) = (
            shared.clone(),
            handshakes.clone(),
            socks.handshake_timeout,
            socks.early_reply,
        );
        tokio::spawn(async move {
            serve(shared, handshakes, timeout, early, sock).await;
            debug!(%peer, "SOCKS5 connection done");
            drop(permit);
        });
    }
}

fn data_dir_file(dir: &Path) -> std::path::PathBuf {
    dir.join(SOCKS_ADDR_FILE)
}

async fn serve(
    shared: Arc<Shared>,
    handshakes: IntCounterVec,
    timeout: Duration,
    early: EarlyReply,
    mut sock: TcpStream,
) {
    let count = |r: &str| handshakes.with_label_values(&[r]).inc();
    // The key is never logged: it is someone's username and password.
    let (isolation, target) = match tokio::time::timeout(timeout, handshake(&mut sock)).await {
        Err(_) => return count("timeout"),
        Ok(Err(e)) => {
            debug!(error = %e, "SOCKS5 handshake failed");
            return count(e.label());
        }
        Ok(Ok((_, Request::Refuse(c)))) => {
            let _ = reply(&mut sock, c).await;
            return count("unsupported");
        }
        Ok(Ok((k, Request::Connect(t)))) => (k, t),
    };
    let _ = sock.set_nodelay(true);
    match open_with(&shared, &isolation, target.clone(), early).await {
        Ok(att) => {
            count(if att.early { "early" } else { "ok" });
            if reply(&mut sock, 0).await.is_ok() {
                pipe(shared, sock, att).await;
            } else {
                shared
                    .mux()
                    .abort(&att.key, code::GENERAL_FAILURE, "socket");
            }
        }
        Err(OpenError::NoStream(why)) => {
            debug!(why, "cannot open a stream");
            let _ = reply(&mut sock, code::GENERAL_FAILURE).await;
            count("no_stream")
        }
        Err(OpenError::Refused(c)) => {
            debug!(%target, code = c, "stream refused");
            count("refused");
            let _ = reply(&mut sock, c).await;
        }
        Err(OpenError::Failed) => {
            count("failed");
            let _ = reply(&mut sock, code::GENERAL_FAILURE).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The handshake's result and everything it wrote back.
    async fn run_keyed(input: &[u8]) -> (Result<(IsolationKey, Request), HandshakeError>, Vec<u8>) {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(input).await.unwrap();
        a.shutdown().await.unwrap();
        let r = handshake(&mut b).await;
        drop(b);
        let mut out = Vec::new();
        a.read_to_end(&mut out).await.unwrap();
        (r, out)
    }

    async fn run_handshake(input: &[u8]) -> (Result<Request, HandshakeError>, Vec<u8>) {
        let (r, out) = run_keyed(input).await;
        (r.map(|(_, req)| req), out)
    }

    /// Methods `methods`, then the RFC 1929 sub-negotiation for
    /// `user`/`pass`, then a CONNECT to 10.0.0.1:80.
    fn with_credentials(methods: &[u8], user: &[u8], pass: &[u8]) -> Vec<u8> {
        let mut v = vec![5, methods.len() as u8];
        v.extend_from_slice(methods);
        v.extend_from_slice(&[1, user.len() as u8]);
        v.extend_from_slice(user);
        v.push(pass.len() as u8);
        v.extend_from_slice(pass);
        v.extend_from_slice(&[5, 1, 0, 1, 10, 0, 0, 1, 0, 80]);
        v
    }

    #[tokio::test]
    async fn credentials_are_the_isolation_key() {
        let (r, out) = run_keyed(&with_credentials(&[0, 2], b"alice", b"x")).await;
        let (key, req) = r.unwrap();
        assert_eq!(
            key,
            IsolationKey::credentials(b"alice".to_vec(), b"x".to_vec())
        );
        assert_eq!(
            req,
            Request::Connect(Target::Ip("10.0.0.1:80".parse().unwrap()))
        );
        // Method 0x02 chosen over 0x00, then success (01 00).
        assert_eq!(out, [5, 2, 1, 0]);
        // Any credentials are accepted; they only tell sessions apart.
        let (r, _) = run_keyed(&with_credentials(&[2], b"bob", b"")).await;
        let bob = r.unwrap().0;
        assert_ne!(bob, IsolationKey::NONE);
        assert_ne!(
            bob,
            IsolationKey::credentials(b"alice".to_vec(), b"x".to_vec())
        );
        // The longest fields RFC 1929 can carry (255 bytes each).
        let long = vec![b'u'; 255];
        let (r, out) = run_keyed(&with_credentials(&[2], &long, &long)).await;
        assert!(r.is_ok());
        assert_eq!(out, [5, 2, 1, 0]);
        // Empty credentials and no authentication share a key (as Tor).
        let (r, _) = run_keyed(&with_credentials(&[2], b"", b"")).await;
        assert_eq!(r.unwrap().0, IsolationKey::NONE);
        let (r, out) = run_keyed(&[5, 1, 0, 5, 1, 0, 1, 10, 0, 0, 1, 0, 80]).await;
        assert_eq!(r.unwrap().0, IsolationKey::NONE);
        assert_eq!(out, [5, 0]);
        // Never printed.
        let shown = format!(
            "{:?}",
            IsolationKey::credentials(b"alice".to_vec(), b"x".to_vec())
        );
        assert!(!shown.contains("alice"), "{shown}");
    }

    #[tokio::test]
    async fn bad_authentication_gets_the_rfc_codes() {
        // No acceptable method (GSSAPI only, unknown methods, none at
        // all): 05 FF, RFC 1928.
        for methods in [&[1u8][..], &[3, 0x80, 0xFE], &[]] {
            let mut v = vec![5, methods.len() as u8];
            v.extend_from_slice(methods);
            let (r, out) = run_keyed(&v).await;
            assert!(matches!(r, Err(HandshakeError::NoMethod)), "{methods:?}");
            assert_eq!(out, [5, 0xFF], "{methods:?}");
        }
        // A sub-negotiation version other than 0x01 (here a confused
        // client sending 0x05): failure status 01 01, closed.
        let mut v = with_credentials(&[2], b"alice", b"x");
        v[3] = 5;
        let (r, out) = run_keyed(&v).await;
        assert_eq!(r.unwrap_err().label(), "auth_version");
        assert_eq!(out, [5, 2, 1, 1]);
        // A username longer than what arrives (the length byte says 255,
        // 3 bytes follow): failure, never a panic.
        let (r, out) = run_keyed(&[5, 1, 2, 1, 255, b'a', b'b', b'c']).await;
        assert_eq!(r.unwrap_err().label(), "auth_truncated");
        assert_eq!(out, [5, 2, 1, 1]);
        // Garbage in place of the sub-negotiation; cut anywhere.
        let (r, out) = run_keyed(&[5, 1, 2, 0xde, 0xad, 0xbe, 0xef]).await;
        assert!(r.is_err());
        assert_eq!(out, [5, 2, 1, 1]);
        let full = with_credentials(&[2], b"alice", b"secret");
        for cut in 0..full.len() {
            let (r, out) = run_keyed(&full[..cut]).await;
            assert!(r.is_err(), "cut {cut}");
            // Once the sub-negotiation has begun, a cut gets 01 01.
            if (4..=16).contains(&cut) {
                assert_eq!(out, [5, 2, 1, 1], "cut {cut}");
            }
        }
    }

    #[tokio::test]
    async fn connect_by_name_ipv4_ipv6() {
        let mut req = vec![5, 1, 0, 5, 1, 0, 3, 11];
        req.extend_from_slice(b"example.org");
        req.extend_from_slice(&443u16.to_be_bytes());
        let (r, out) = run_handshake(&req).await;
        assert_eq!(
            r.unwrap(),
            Request::Connect(Target::Name("example.org".into(), 443))
        );
        assert_eq!(out, [5, 0]);

        let (r, _) = run_handshake(&[5, 2, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, 0, 80]).await;
        assert_eq!(
            r.unwrap(),
            Request::Connect(Target::Ip("127.0.0.1:80".parse().unwrap()))
        );
        let mut v6 = vec![5, 1, 0, 5, 1, 0, 4];
        v6.extend_from_slice(&[0; 15]);
        v6.push(1);
        v6.extend_from_slice(&[0, 22]);
        let (r, _) = run_handshake(&v6).await;
        assert_eq!(
            r.unwrap(),
            Request::Connect(Target::Ip("[::1]:22".parse().unwrap()))
        );
    }

    #[tokio::test]
    async fn ip_literal_names_are_addresses() {
        for (name, addr) in [
            ("127.0.0.1", "127.0.0.1:8000"),
            ("::1", "[::1]:8000"),
            ("[::1]", "[::1]:8000"),
            ("::ffff:10.0.0.1", "10.0.0.1:8000"),
        ] {
            let mut req = vec![5, 1, 0, 5, 1, 0, 3, name.len() as u8];
            req.extend_from_slice(name.as_bytes());
            req.extend_from_slice(&8000u16.to_be_bytes());
            let (r, _) = run_handshake(&req).await;
            assert_eq!(
                r.unwrap(),
                Request::Connect(Target::Ip(addr.parse().unwrap())),
                "{name}"
            );
        }
        // Not a literal: still a name, resolved (and checked) at the exit.
        let mut req = vec![5, 1, 0, 5, 1, 0, 3, 5];
        req.extend_from_slice(b"127.1");
        req.extend_from_slice(&80u16.to_be_bytes());
        let (r, _) = run_handshake(&req).await;
        assert_eq!(
            r.unwrap(),
            Request::Connect(Target::Name("127.1".into(), 80))
        );
    }

    #[tokio::test]
    async fn unsupported_and_garbage() {
        // BIND and UDP ASSOCIATE: 0x07 (after reading the whole request).
        for cmd in [2u8, 3, 9] {
            let (r, _) = run_handshake(&[5, 1, 0, 5, cmd, 0, 1, 1, 2, 3, 4, 0, 80]).await;
            assert_eq!(r.unwrap(), Request::Refuse(COMMAND_NOT_SUPPORTED));
        }
        let (r, _) = run_handshake(&[5, 1, 0, 5, 1, 0, 9]).await;
        assert_eq!(r.unwrap(), Request::Refuse(ADDRESS_NOT_SUPPORTED));
        // Only GSSAPI offered: 0xFF.
        let (r, out) = run_handshake(&[5, 1, 1]).await;
        assert!(matches!(r, Err(HandshakeError::NoMethod)));
        assert_eq!(out, [5, 0xFF]);
        // SOCKS4 gets a SOCKS4 rejection; HTTP is just closed.
        let (r, out) = run_handshake(&[4, 1, 0, 80, 1, 2, 3, 4, 0]).await;
        assert_eq!(r.unwrap_err().label(), "socks4");
        assert_eq!(out[..2], [0, 91]);
        let (r, out) = run_handshake(b"GET / HTTP/1.1\r\n\r\n").await;
        assert_eq!(r.unwrap_err().label(), "version");
        assert!(out.is_empty());
        // Truncated everywhere: an error, never a panic.
        let full = [5u8, 1, 0, 5, 1, 0, 1, 1, 2, 3, 4, 0, 80];
        for cut in 0..full.len() {
            assert!(run_handshake(&full[..cut]).await.0.is_err(), "cut {cut}");
        }
        // Empty and invalid names.
        let (r, _) = run_handshake(&[5, 1, 0, 5, 1, 0, 3, 0, 0, 80]).await;
        assert_eq!(r.unwrap(), Request::Refuse(code::HOST_UNREACHABLE));
    }
}
