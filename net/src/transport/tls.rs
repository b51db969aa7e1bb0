//! TLS 1.3 with raw public keys (RFC 7250): each side presents its Ed25519
//! identity key, and each side pins the key it expects. No X.509, no CA, no
//! host names: a node's identity *is* its key in the topology.
//!
//! Only the ring crypto provider is used, passed explicitly: a second rustls
//! provider in the process makes the implicit default lookup panic.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use ed25519_dalek::VerifyingKey;
use ed25519_dalek::pkcs8::DecodePublicKey;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer,
    UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, PeerIncompatible, SignatureScheme};

use loopmix_core::keys::{IdentityKeypair, NodeId};

pub const ALPN: &[u8] = b"loopmix/1";

/// The set of identities allowed to connect to us. Shared with the verifier
/// so a topology update takes effect for the next handshake.
///
/// A provider also accepts keys that are not in the list, as *clients*
/// ([`PeerAllowList::accept_clients`], off by default, so a mix refuses
/// them). Whether a connected peer is a listed node or a client is decided
/// with [`PeerAllowList::contains`] / [`PeerAllowList::kind_of`] when the
/// connection is accepted.
///
/// A third set holds the pinned directory authorities
/// ([`PeerAllowList::set_authorities`]): they connect only to probe that
/// the node's endpoint answers (a QUIC handshake, then close). The ingress
/// recognises them with [`PeerAllowList::is_authority`] *before* deciding a
/// [`PeerKind`], and never reads a packet from them; they are deliberately
/// not a `PeerKind`, so no packet path can ever see one.
#[derive(Clone, Default)]
pub struct PeerAllowList {
    nodes: Arc<RwLock<HashSet<NodeId>>>,
    clients: Arc<AtomicBool>,
    authorities: Arc<RwLock<HashSet<NodeId>>>,
}

impl PeerAllowList {
    pub fn replace(&self, ids: impl IntoIterator<Item = NodeId>) {
        let set: HashSet<NodeId> = ids.into_iter().collect();
        match self.nodes.write() {
            Ok(mut g) => *g = set,
            Err(p) => *p.into_inner() = set,
        }
    }

    pub fn insert(&self, id: NodeId) {
        match self.nodes.write() {
            Ok(mut g) => g.insert(id),
            Err(p) => p.into_inner().insert(id),
        };
    }

    /// Replaces the pinned directory authorities whose probe connections
    /// are accepted (they carry no packets).
    pub fn set_authorities(&self, ids: impl IntoIterator<Item = NodeId>) {
        let set: HashSet<NodeId> = ids.into_iter().collect();
        match self.authorities.write() {
            Ok(mut g) => *g = set,
            Err(p) => *p.into_inner() = set,
        }
    }

    /// Whether `id` is a pinned directory authority (a prober).
    pub fn is_authority(&self, id: &NodeId) -> bool {
        match self.authorities.read() {
            Ok(g) => g.contains(id),
            Err(p) => p.into_inner().contains(id),
        }
    }

    /// Whether `id` is a listed (topology) node.
    pub fn contains(&self, id: &NodeId) -> bool {
        match self.nodes.read() {
            Ok(g) => g.contains(id),
            Err(p) => p.into_inner().contains(id),
        }
    }

    /// Accept (`true`) or refuse (`false`, the default) keys that are not
    /// listed, as clients. Applies from the next handshake on; connections
    /// already up stay up.
    pub fn accept_clients(&self, on: bool) {
        self.clients.store(on, Ordering::Relaxed);
    }

    /// Whether unlisted keys are accepted as clients.
    pub fn accepts_clients(&self) -> bool {
        self.clients.load(Ordering::Relaxed)
    }

    /// What `id` is to us now: a listed node, or (when clients are
    /// accepted) a client. `None`: it would be refused.
    pub fn kind_of(&self, id: &NodeId) -> Option<PeerKind> {
        if self.contains(id) {
            Some(PeerKind::Node)
        } else if self.accepts_clients() {
            Some(PeerKind::Client)
        } else {
            None
        }
    }
}

/// Who is on the other end of an accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerKind {
    /// A node of the current topology (mix or provider).
    Node,
    /// A key not in the topology, accepted because this node serves clients.
    Client,
}

impl PeerKind {
    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            PeerKind::Node => "node",
            PeerKind::Client => "client",
        }
    }
}

/// Called when a peer is refused, with a short reason (a metric label).
pub type RefusalHook = Arc<dyn Fn(&'static str) + Send + Sync>;

#[derive(Debug, thiserror::Error)]
#[error("TLS setup: {0}")]
pub struct TlsError(String);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The node id inside an Ed25519 SubjectPublicKeyInfo.
pub fn node_id_from_spki(spki: &[u8]) -> Option<NodeId> {
    VerifyingKey::from_public_key_der(spki)
        .ok()
        .map(|k| NodeId(k.to_bytes()))
}

fn certified_key(
    identity: &IdentityKeypair,
    p: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let der = identity.pkcs8_der().map_err(|e| TlsError(e.to_string()))?;
    let key = p
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der.to_vec())))
        .map_err(|e| TlsError(e.to_string()))?;
    let spki = identity
        .node_id()
        .spki_der()
        .ok_or_else(|| TlsError("identity key has no SPKI form".into()))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(spki)],
        key,
    )))
}

fn verify_sig(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algs: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature_with_raw_key(
        message,
        &SubjectPublicKeyInfoDer::from(cert.as_ref()),
        dss,
        algs,
    )
}

/// Client side: accepts exactly one server key.
struct PinnedServer {
    expected: NodeId,
    algs: WebPkiSupportedAlgorithms,
    on_refuse: RefusalHook,
}

impl fmt::Debug for PinnedServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PinnedServer({:?})", self.expected)
    }
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match node_id_from_spki(end_entity.as_ref()) {
            Some(id) if id == self.expected => Ok(ServerCertVerified::assertion()),
            _ => {
                (self.on_refuse)("server_key_mismatch");
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        _m: &[u8],
        _c: &CertificateDer<'_>,
        _d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_sig(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// Server side: accepts any key in the allow-list, and any other valid key
/// when the list accepts clients.
struct AllowListedClients {
    allowed: PeerAllowList,
    algs: WebPkiSupportedAlgorithms,
    on_refuse: RefusalHook,
}

impl fmt::Debug for AllowListedClients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AllowListedClients")
    }
}

impl ClientCertVerifier for AllowListedClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match node_id_from_spki(end_entity.as_ref()) {
            Some(id) if self.allowed.kind_of(&id).is_some() || self.allowed.is_authority(&id) => {
                Ok(ClientCertVerified::assertion())
            }
            Some(_) => {
                (self.on_refuse)("unknown_peer_key");
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ))
            }
            None => {
                (self.on_refuse)("bad_peer_key");
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::BadEncoding,
                ))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        _m: &[u8],
        _c: &CertificateDer<'_>,
        _d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_sig(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

pub fn server_config(
    identity: &IdentityKeypair,
    allowed: PeerAllowList,
    on_refuse: RefusalHook,
) -> Result<rustls::ServerConfig, TlsError> {
    let p = provider();
    let key = certified_key(identity, &p)?;
    let verifier = Arc::new(AllowListedClients {
        allowed,
        algs: p.signature_verification_algorithms,
        on_refuse,
    });
    let mut cfg = rustls::ServerConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(
            rustls::server::AlwaysResolvesServerRawPublicKeys::new(key),
        ));
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

pub fn client_config(
    identity: &IdentityKeypair,
    expected_server: NodeId,
    on_refuse: RefusalHook,
) -> Result<rustls::ClientConfig, TlsError> {
    let p = provider();
    let key = certified_key(identity, &p)?;
    let verifier = Arc::new(PinnedServer {
        expected: expected_server,
        algs: p.signature_verification_algorithms,
        on_refuse,
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(
            rustls::client::AlwaysResolvesClientRawPublicKeys::new(key),
        ));
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}
