//! Mutual TLS for every connection between HyperExport processes (QUIC replication and gRPC):
//! each side presents a node certificate from the cluster CA (`pki`) and refuses a peer without
//! one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use super::pki::{CA_CERT, NODE_CERT, NODE_KEY};

/// The ALPN name of replication protocol version 1 (versions are also negotiated in-band).
pub const ALPN_REPLICA: &[u8] = b"hx-replica/1";

/// A failure to load or use TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file is missing or unreadable.
    #[error("{path}: {reason}")]
    File {
        /// Which file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the material or configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// A node's TLS identity and the CA it trusts.
#[derive(Clone)]
pub struct NodeTls {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    /// The same, as PEM, for tonic.
    pem: Arc<Pem>,
}

struct Pem {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn config_error(e: impl std::fmt::Display) -> TlsError {
    TlsError::Config(e.to_string())
}

impl NodeTls {
    /// Loads `ca.pem`, `node.pem` and `node-key.pem` from a folder made by `hyperexport ca issue`.
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        let file_error = |name: &str, reason: String| TlsError::File { path: dir.join(name), reason };
        let certs = |name: &str| -> Result<Vec<CertificateDer<'static>>, TlsError> {
            let path = dir.join(name);
            let certs = CertificateDer::pem_file_iter(&path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| file_error(name, e.to_string()))?;
            if certs.is_empty() {
                return Err(file_error(name, "holds no certificate".into()));
            }
            Ok(certs)
        };
        let mut roots = RootCertStore::empty();
        for ca in certs(CA_CERT)? {
            roots.add(ca).map_err(|e| file_error(CA_CERT, e.to_string()))?;
        }
        let chain = certs(NODE_CERT)?;
        let key = PrivateKeyDer::from_pem_file(dir.join(NODE_KEY)).map_err(|e| file_error(NODE_KEY, e.to_string()))?;
        let read = |name: &str| std::fs::read(dir.join(name)).map_err(|e| file_error(name, e.to_string()));
        let pem = Pem { ca: read(CA_CERT)?, cert: read(NODE_CERT)?, key: read(NODE_KEY)? };
        Ok(NodeTls { roots: Arc::new(roots), chain, key: Arc::new(key), pem: Arc::new(pem) })
    }

    /// The gRPC server side (the coordinator): demands a client certificate from the CA.
    pub fn grpc_server(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&self.pem.cert, &self.pem.key))
            .client_ca_root(tonic::transport::Certificate::from_pem(&self.pem.ca))
    }

    /// The gRPC client side (agents, the CLI): presents this node's certificate and accepts only
    /// a coordinator with a certificate from the CA for the host it dials.
    pub fn grpc_client(&self) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.pem.ca))
            .identity(tonic::transport::Identity::from_pem(&self.pem.cert, &self.pem.key))
    }

    /// A server configuration that demands a client certificate from the CA.
    pub fn server(&self, alpn: &[u8]) -> Result<rustls::ServerConfig, TlsError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::clone(&self.roots), provider()).build().map_err(config_error)?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_error)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(config_error)?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(config)
    }

    /// A client configuration that presents this node's certificate and accepts only servers
    /// with a certificate from the CA.
    pub fn client(&self, alpn: &[u8]) -> Result<rustls::ClientConfig, TlsError> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_error)?
            .with_root_certificates(Arc::clone(&self.roots))
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(config_error)?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(config)
    }

    /// The QUIC server side of replication.
    pub fn quic_server(&self) -> Result<quinn::ServerConfig, TlsError> {
        let crypto = QuicServerConfig::try_from(self.server(ALPN_REPLICA)?).map_err(config_error)?;
        Ok(quinn::ServerConfig::with_crypto(Arc::new(crypto)))
    }

    /// The QUIC client side of replication.
    pub fn quic_client(&self) -> Result<quinn::ClientConfig, TlsError> {
        let crypto = QuicClientConfig::try_from(self.client(ALPN_REPLICA)?).map_err(config_error)?;
        Ok(quinn::ClientConfig::new(Arc::new(crypto)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::pki;

    #[test]
    fn issued_certificates_load_and_a_second_ca_is_another_identity() {
        let dir = tempfile::tempdir().unwrap();
        pki::init_ca(&dir.path().join("ca"), "test CA").unwrap();
        assert!(matches!(pki::init_ca(&dir.path().join("ca"), "again"), Err(pki::PkiError::Exists(_))));
        pki::issue(&dir.path().join("ca"), "node-a", &["127.0.0.1".into()], 30, &dir.path().join("a")).unwrap();
        let a = NodeTls::load(&dir.path().join("a")).unwrap();
        a.quic_server().unwrap();
        a.quic_client().unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(dir.path().join("a/node-key.pem")).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        assert!(pki::issue(&dir.path().join("ca"), "bad name!", &[], 30, &dir.path().join("b")).is_err());
        assert!(pki::issue(&dir.path().join("ca"), "node-c", &[], 0, &dir.path().join("c")).is_err());
        let e = NodeTls::load(&dir.path().join("missing")).err().unwrap();
        assert!(e.to_string().contains("ca.pem"), "{e}");
    }
}
