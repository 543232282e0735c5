//! Sender and receiver over loopback QUIC with real certificates.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyperexport_shared::Repository;
use hyperexport_shared::compress::Compression;
use hyperexport_shared::keys::Secret;
use hyperexport_shared::repo::InitOptions;

use super::receiver::Receiver;
use super::sender::{SendOptions, send_point};
use super::tls::NodeTls;
use super::{ReplicationError, pki};
use crate::export::{ExportOptions, export};
use crate::progress::NoProgress;

fn key() -> Secret {
    Secret::KeyFile(vec![4; 32])
}

fn node(ca: &Path, name: &str, out: &Path) -> NodeTls {
    pki::issue(ca, name, &["127.0.0.1".into()], 1, out).unwrap();
    NodeTls::load(out).unwrap()
}

/// A repository with one point of a 3 MiB image whose chunks differ from one another.
fn exported(dir: &Path) -> Arc<Repository> {
    let image = dir.join("vm.img");
    // Incompressible (xorshift), so that what crosses the wire is what was stored.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..3u32 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(&image, data).unwrap();
    let opts = InitOptions { chunk_size: 1 << 16, compression: Compression::Zstd(1), secret: Some(key()) };
    let repo = Arc::new(Repository::init(&dir.join("repo"), opts).unwrap());
    let source = Arc::new(crate::source::open(&image, None).unwrap());
    let opts = ExportOptions {
        chunk_size: 1 << 16,
        compression: Compression::Zstd(1),
        threads: 2,
        upload_concurrency: 2,
        lock_wait: Duration::from_secs(5),
        faults: Default::default(),
        throttle: None,
    };
    export(&repo, &source, &opts, &NoProgress).unwrap();
    repo
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_replicates_once_and_a_stranger_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, other_ca) = (dir.path().join("ca"), dir.path().join("other-ca"));
    pki::init_ca(&ca, "cluster").unwrap();
    pki::init_ca(&other_ca, "elsewhere").unwrap();
    let receiver = Receiver::bind(([127, 0, 0, 1], 0).into(), dir.path().join("replicas"), &node(&ca, "b", &dir.path().join("b"))).unwrap();
    let addr = receiver.local_addr();
    tokio::spawn(receiver.run());
    let repo = exported(dir.path());
    let point = repo.list_points().unwrap().pop().unwrap();
    let sender = node(&ca, "a", &dir.path().join("a"));
    let options =
        SendOptions { streams: 3, server_name: "127.0.0.1".into(), progress: None, retention: Default::default(), throttle: None };

    let first = send_point(Arc::clone(&repo), point.clone(), addr, &sender, &options).await.unwrap();
    assert_eq!((first.chunks, first.chunks_sent), (48, 48), "{first:?}");
    assert!(first.wire_bytes >= first.chunk_bytes_sent, "{first:?}");
    let replica = Repository::open(&dir.path().join("replicas").join(&repo.config().id), Some(&key())).unwrap();
    assert_eq!(replica.list_points().unwrap(), vec![point.clone()]);
    for (i, id) in point.disks[0].chunks.iter().enumerate() {
        let id = id.expect("no holes in this image");
        let len = point.disks[0].chunk_len(i);
        assert_eq!(replica.load_chunk(&id, len).unwrap(), repo.load_chunk(&id, len).unwrap());
    }

    let again = send_point(Arc::clone(&repo), point.clone(), addr, &sender, &options).await.unwrap();
    assert_eq!((again.chunks, again.chunks_sent, again.chunk_bytes_sent), (48, 0, 0), "{again:?}");
    assert!(again.wire_bytes < first.wire_bytes / 10, "{again:?} vs {first:?}");

    let stranger = node(&other_ca, "a", &dir.path().join("stranger"));
    let e = send_point(Arc::clone(&repo), point, addr, &stranger, &options).await.unwrap_err();
    assert!(matches!(e, ReplicationError::Connection { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_gets_nothing() {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    pki::init_ca(&ca, "cluster").unwrap();
    let root = dir.path().join("replicas");
    let receiver = Receiver::bind(([127, 0, 0, 1], 0).into(), root.clone(), &node(&ca, "b", &dir.path().join("b"))).unwrap();
    let addr = receiver.local_addr();
    tokio::spawn(receiver.run());
    // Trusts the receiver, shows no certificate of its own.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(ca.join(pki::CA_CERT)).unwrap()).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![super::tls::ALPN_REPLICA.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let attempt = async {
        let conn = endpoint.connect(addr, "127.0.0.1").map_err(|e| e.to_string())?.await.map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let hello = hyperexport_shared::wire::Frame::Hello { versions: vec![1], repo: Default::default() };
        super::frames::write(&mut send, &hello).await.map_err(|e| e.to_string())?;
        super::frames::read(&mut recv).await.map_err(|e| e.to_string())
    };
    let outcome = tokio::time::timeout(Duration::from_secs(20), attempt).await.expect("the receiver answers or closes");
    assert!(outcome.is_err(), "a peer without a certificate got {outcome:?}");
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0, "nothing was written for it");
}
