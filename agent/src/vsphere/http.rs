//! A small blocking HTTP/1.1 client for the vSphere endpoints (SOAP at `/sdk`, the datastore's
//! `/folder` downloads): one kept-alive connection, plain or TLS (rustls with ring),
//! the server's certificate checked against a CA, pinned by its SHA-256 thumbprint, or (only
//! when asked for explicitly) not checked.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use super::VsphereError;

/// How the server's certificate is trusted.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Certificates signed by these CAs (PEM), for the server's host name.
    Ca(Vec<CertificateDer<'static>>),
    /// Exactly the certificate with this SHA-256 digest (what vSphere shows as its thumbprint).
    Thumbprint([u8; 32]),
    /// Any certificate: only with the explicit insecure flag.
    Insecure,
}

/// Parses a SHA-256 thumbprint written as 64 hex digits, with or without `:` between bytes.
pub fn parse_thumbprint(text: &str) -> Result<[u8; 32], String> {
    let hex_digits: String = text.chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(&hex_digits).map_err(|e| format!("thumbprint {text:?} is not hex: {e}"))?;
    bytes.try_into().map_err(|b: Vec<u8>| format!("thumbprint {text:?} has {} bytes; a SHA-256 thumbprint has 32", b.len()))
}

/// One HTTP answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// A connection to one server (`host:port`), opened on first use and again after it closes.
pub struct HttpClient {
    addr: String,
    host: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
    conn: Option<BufReader<Box<dyn Stream>>>,
}

impl HttpClient {
    /// A client of `host:port`; `trust` is `None` for plain HTTP.
    pub fn new(host: &str, port: u16, trust: Option<Trust>, timeout: Duration) -> Result<Self, VsphereError> {
        let addr = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        let tls = trust.map(|t| tls_config(t, &addr)).transpose()?;
        Ok(HttpClient { addr, host: host.to_string(), tls, timeout, conn: None })
    }

    /// `host:port` of the server.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn connect(&self) -> Result<BufReader<Box<dyn Stream>>, VsphereError> {
        let unreachable = |e: std::io::Error| VsphereError::Unreachable { addr: self.addr.clone(), detail: e.to_string() };
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "the name resolves to no address");
        let mut tcp = None;
        for a in std::net::ToSocketAddrs::to_socket_addrs(&self.addr).map_err(unreachable)? {
            match TcpStream::connect_timeout(&a, self.timeout) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let tcp = tcp.ok_or_else(|| unreachable(last))?;
        tcp.set_read_timeout(Some(self.timeout)).map_err(unreachable)?;
        tcp.set_write_timeout(Some(self.timeout)).map_err(unreachable)?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Stream> = match &self.tls {
            None => Box::new(tcp),
            Some(config) => {
                let name = ServerName::try_from(self.host.clone())
                    .map_err(|e| VsphereError::Tls { addr: self.addr.clone(), detail: format!("server name {:?}: {e}", self.host) })?;
                let conn = rustls::ClientConnection::new(Arc::clone(config), name)
                    .map_err(|e| VsphereError::Tls { addr: self.addr.clone(), detail: e.to_string() })?;
                Box::new(rustls::StreamOwned::new(conn, tcp))
            }
        };
        Ok(BufReader::new(stream))
    }

    /// Sends a request and reads the answer (of `max_body` bytes at most). A kept-alive
    /// connection the server had closed (the request could not be sent, or the connection
    /// ended before any answer) is opened again once; a request that is `idempotent` (it only
    /// reads) is also sent again once on a new connection when its answer broke off. Nothing
    /// else is sent twice, so a call that starts a task is never repeated.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        max_body: usize,
        idempotent: bool,
    ) -> Result<Response, VsphereError> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n", self.addr, body.len());
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let reused = self.conn.is_some();
        match self.exchange(head.as_bytes(), body, max_body) {
            Err((e, failure)) if (failure == Failure::Stale && reused) || (failure == Failure::Answer && idempotent) => {
                tracing::debug!(addr = %self.addr, error = %e, "vsphere request sent again on a new connection");
                self.exchange(head.as_bytes(), body, max_body).map_err(|(e, _)| e)
            }
            other => other.map_err(|(e, _)| e),
        }
    }

    /// One request on the open connection (or a new one); on failure, the error and where it
    /// failed.
    fn exchange(&mut self, head: &[u8], body: &[u8], max_body: usize) -> Result<Response, (VsphereError, Failure)> {
        if self.conn.is_none() {
            self.conn = Some(self.connect().map_err(|e| (e, Failure::Connect))?);
        }
        let addr = self.addr.clone();
        let conn = self.conn.as_mut().expect("just connected");
        let sent = (|| {
            conn.get_mut().write_all(head)?;
            conn.get_mut().write_all(body)?;
            conn.get_mut().flush()
        })();
        let result = match sent {
            Ok(()) => read_response(conn, max_body).map_err(|e| {
                let stale = matches!(e.kind(), std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset);
                (e, if stale { Failure::Stale } else { Failure::Answer })
            }),
            Err(e) => Err((e, Failure::Stale)),
        };
        match result {
            Ok((response, keep)) => {
                if !keep {
                    self.conn = None;
                }
                Ok(response)
            }
            Err((e, failure)) => {
                self.conn = None;
                let error = match e.kind() {
                    std::io::ErrorKind::InvalidData if e.get_ref().is_some_and(|i| i.is::<rustls::Error>()) => {
                        VsphereError::Tls { addr, detail: e.to_string() }
                    }
                    _ => VsphereError::Unreachable { addr, detail: e.to_string() },
                };
                Err((error, failure))
            }
        }
    }
}

/// Where an exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// No connection could be opened.
    Connect,
    /// A kept-alive connection was found closed before the server saw the request.
    Stale,
    /// The request was sent; its answer failed or broke off.
    Answer,
}

/// Longest status or header line accepted.
const MAX_LINE: u64 = 16 << 10;
/// Most header lines accepted.
const MAX_HEADERS: usize = 200;

fn bad(what: impl Into<String>) -> std::io::Error {
    std::io::Error::other(what.into())
}

fn cut_off() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the server closed the connection in the middle of its answer")
}

/// Fills `buf` from the answer; an early end says the answer broke off.
fn read_body(conn: &mut impl BufRead, buf: &mut [u8]) -> std::io::Result<()> {
    conn.read_exact(buf).map_err(|e| if e.kind() == std::io::ErrorKind::UnexpectedEof { cut_off() } else { e })
}

/// Reads one line of at most [`MAX_LINE`] bytes.
fn read_line(conn: &mut impl BufRead, line: &mut String) -> std::io::Result<usize> {
    line.clear();
    let n = conn.take(MAX_LINE).read_line(line)?;
    if n as u64 == MAX_LINE && !line.ends_with('\n') {
        return Err(bad(format!("a line of the answer is longer than {MAX_LINE} bytes")));
    }
    Ok(n)
}

/// Reads a response whose body is `max_body` bytes at most; whether the connection stays open.
fn read_response(conn: &mut impl BufRead, max_body: usize) -> std::io::Result<(Response, bool)> {
    let mut line = String::new();
    if read_line(conn, &mut line)? == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "the server closed the connection before answering"));
    }
    let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        read_line(conn, &mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if headers.len() == MAX_HEADERS {
            return Err(bad(format!("more than {MAX_HEADERS} header lines")));
        }
        let (name, value) = l.split_once(':').ok_or_else(|| bad(format!("bad header line {l:?}")))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let find = |n: &str| headers.iter().find(|(h, _)| h == n).map(|(_, v)| v.clone());
    let keep = !find("connection").is_some_and(|c| c.eq_ignore_ascii_case("close"));
    let too_big = |n: u128| bad(format!("an answer of {n} bytes, more than the {max_body} expected"));
    let body = if find("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        read_chunked(conn, max_body)?
    } else if let Some(len) = find("content-length") {
        let len: u64 = len.parse().map_err(|_| bad(format!("bad content-length {len:?}")))?;
        if len > max_body as u64 {
            return Err(too_big(len.into()));
        }
        let mut body = vec![0; len as usize];
        read_body(conn, &mut body)?;
        body
    } else {
        let mut body = Vec::new();
        conn.take(max_body as u64 + 1).read_to_end(&mut body)?;
        if body.len() > max_body {
            return Err(too_big(body.len() as u128));
        }
        return Ok((Response { status, headers, body }, false));
    };
    Ok((Response { status, headers, body }, keep))
}

fn read_chunked(conn: &mut impl BufRead, max_body: usize) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        if read_line(conn, &mut line)? == 0 {
            return Err(cut_off());
        }
        let size = line.trim().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size, 16).map_err(|_| bad(format!("bad chunk size {line:?}")))?;
        if size == 0 {
            // Trailers, then the blank line.
            loop {
                if read_line(conn, &mut line)? == 0 {
                    return Err(cut_off());
                }
                if line.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        let end = start
            .checked_add(size)
            .filter(|e| *e <= max_body)
            .ok_or_else(|| bad(format!("a chunked answer longer than the {max_body} bytes expected")))?;
        body.resize(end, 0);
        read_body(conn, &mut body[start..])?;
        read_line(conn, &mut line)?;
    }
}

fn tls_config(trust: Trust, addr: &str) -> Result<Arc<rustls::ClientConfig>, VsphereError> {
    let tls_error = |e: rustls::Error| VsphereError::Tls { addr: addr.to_string(), detail: e.to_string() };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        rustls::ClientConfig::builder_with_provider(Arc::clone(&provider)).with_safe_default_protocol_versions().map_err(tls_error)?;
    let config = match trust {
        Trust::Ca(certs) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs {
                roots.add(cert).map_err(tls_error)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Thumbprint(digest) => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(Pinned { digest: Some(digest), provider })).with_no_client_auth()
        }
        Trust::Insecure => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(Pinned { digest: None, provider })).with_no_client_auth()
        }
    };
    Ok(Arc::new(config))
}

/// Accepts the certificate whose SHA-256 is `digest` (any, with `None`); signatures are still
/// checked, so the peer holds the certificate's key.
#[derive(Debug)]
struct Pinned {
    digest: Option<[u8; 32]>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.digest {
            Some(want) => {
                let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
                if got != want {
                    return Err(rustls::Error::General(format!(
                        "the server's certificate has thumbprint {}, not the pinned {}",
                        hex::encode(got),
                        hex::encode(want)
                    )));
                }
                Ok(ServerCertVerified::assertion())
            }
            None => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_and_sized_bodies_are_read_whole() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n";
        let (r, keep) = read_response(&mut &raw[..], 100).unwrap();
        assert_eq!((r.status, r.body.as_slice(), keep), (200, &b"hello world"[..], true));
        let raw = b"HTTP/1.1 500 Internal\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc";
        let (r, keep) = read_response(&mut &raw[..], 100).unwrap();
        assert_eq!((r.status, r.body.as_slice(), keep), (500, &b"abc"[..], false));
    }

    #[test]
    fn a_broken_answer_is_an_error_not_a_panic() {
        for raw in [
            &b""[..],
            b"garbage\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            assert!(read_response(&mut &raw[..], 100).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn a_chunked_answer_cut_off_says_so() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n",
        ] {
            let e = read_response(&mut &raw[..], 100).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{raw:?}");
            assert!(e.to_string().contains("in the middle of its answer"), "{e}");
        }
    }

    /// A server on loopback that cuts its first answer off after the headers and answers
    /// `hello` on later connections; returns its port and how many requests it saw.
    fn flaky_server() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{BufRead, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming().take(2) {
                let mut stream = stream.unwrap();
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
                    line.clear();
                }
                let first = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
                let answer: &[u8] = if first {
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
                };
                stream.write_all(answer).unwrap();
            }
        });
        (port, seen)
    }

    #[test]
    fn a_read_only_request_whose_answer_broke_off_is_sent_once_more_and_others_are_not() {
        let (port, seen) = flaky_server();
        let mut client = HttpClient::new("127.0.0.1", port, None, Duration::from_secs(5)).unwrap();
        let r = client.request("POST", "/sdk", &[], b"", 100, true).unwrap();
        assert_eq!((r.body.as_slice(), seen.load(std::sync::atomic::Ordering::SeqCst)), (&b"hello"[..], 2));

        let (port, seen) = flaky_server();
        let mut client = HttpClient::new("127.0.0.1", port, None, Duration::from_secs(5)).unwrap();
        let e = client.request("POST", "/sdk", &[], b"", 100, false).unwrap_err();
        assert!(e.to_string().contains("in the middle of its answer"), "{e}");
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1, "a call that may change something is not repeated");
    }

    #[test]
    fn an_answer_larger_than_expected_is_refused_before_it_is_read() {
        let sized = b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\n";
        assert!(read_response(&mut &sized[..], 1 << 20).unwrap_err().to_string().contains("more than"));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n";
        assert!(read_response(&mut &chunked[..], 1 << 20).is_err());
        let long = [b"HTTP/1.1 200 OK\r\nX: ".as_slice(), &[b'a'; 20_000]].concat();
        assert!(read_response(&mut &long[..], 100).unwrap_err().to_string().contains("longer than"));
    }

    #[test]
    fn thumbprints_are_read_with_or_without_colons() {
        let hex64 = "ab".repeat(32);
        assert_eq!(parse_thumbprint(&hex64).unwrap(), [0xab; 32]);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_thumbprint(&colons).unwrap(), [0xab; 32]);
        assert!(parse_thumbprint("abcd").unwrap_err().contains("32"));
        assert!(parse_thumbprint("zz").is_err());
    }
}
