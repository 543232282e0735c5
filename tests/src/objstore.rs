//! Object store servers on loopback for the tests: moto's S3 server and Azurite's Blob service
//! (installed under `target/peers` by `scripts/object-peers.sh`), and a TCP proxy that drops
//! connections in the middle of requests.

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::{Sandbox, Service, wait_until};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Installs the servers once per test process.
fn peers() -> PathBuf {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let out = Command::new("bash").arg(root().join("scripts/object-peers.sh")).output().expect("bash runs");
        assert!(
            out.status.success(),
            "scripts/object-peers.sh failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
    root().join("target/peers")
}

/// The credentials every test store accepts (moto takes any; these are Azurite's well-known
/// development account).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's development account key (public, documented by Microsoft).
pub const AZURITE_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A store server started by the test; stopped on drop.
pub struct ObjectServer {
    _service: Service,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

impl ObjectServer {
    /// `HOST:PORT` of the server.
    pub fn addr(&self) -> &str {
        self.endpoint.trim_start_matches("http://")
    }
}

fn start(sb: &Sandbox, name: &str, mut cmd: Command, said: &'static str) -> ObjectServer {
    let log = sb.path(&format!("{name}.log"));
    let child = cmd
        .stdin(Stdio::null())
        .stdout(fs::File::create(&log).expect("log file"))
        .stderr(fs::File::create(sb.path(&format!("{name}.err"))).expect("log file"))
        .spawn()
        .unwrap_or_else(|e| panic!("{name} starts: {e}"));
    let service = Service { child, log: log.clone() };
    let find = || {
        let text = fs::read_to_string(&log).unwrap_or_default() + &fs::read_to_string(sb.path(&format!("{name}.err"))).unwrap_or_default();
        text.lines()
            .find_map(|l| l.split_once(said).map(|(_, url)| url.split_whitespace().next().unwrap_or("").trim_end_matches('/').to_string()))
    };
    wait_until(Duration::from_secs(60), &format!("{name} to listen"), || find().is_some());
    ObjectServer { _service: service, endpoint: find().expect("address") }
}

impl Sandbox {
    /// Starts moto's S3 server on a free loopback port.
    pub fn start_s3(&self) -> ObjectServer {
        let mut cmd = Command::new(peers().join("moto/bin/moto_server"));
        cmd.args(["-H", "127.0.0.1", "-p", "0"]);
        start(self, "moto", cmd, "Running on ")
    }

    /// Starts moto's S3 server with signatures checked: its first four requests (which moto
    /// takes unauthenticated) create an IAM user allowed everything, its access key and bucket
    /// `bucket`; every later request must be signed with that key. Returns the server and the
    /// key's id and secret.
    pub fn start_s3_with_keys(&self, bucket: &str) -> (ObjectServer, String, String) {
        let mut cmd = Command::new(peers().join("moto/bin/moto_server"));
        cmd.args(["-H", "127.0.0.1", "-p", "0"]).env("INITIAL_NO_AUTH_ACTION_COUNT", "4");
        let s3 = start(self, "moto-iam", cmd, "Running on ");
        // moto routes an unsigned IAM call by the credential scope of its Authorization header.
        let iam = [
            (
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=AKIASETUP/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0".to_string(),
            ),
            ("Content-Type", "application/x-www-form-urlencoded".to_string()),
        ];
        let policy = "%7B%22Version%22%3A%222012-10-17%22%2C%22Statement%22%3A%5B%7B%22Effect%22%3A%22Allow%22%2C%22Action%22%3A%22%2A%22%2C%22Resource%22%3A%22%2A%22%7D%5D%7D";
        for form in [
            "Action=CreateUser&UserName=hx&Version=2010-05-08".to_string(),
            format!("Action=PutUserPolicy&UserName=hx&PolicyName=all&PolicyDocument={policy}&Version=2010-05-08"),
        ] {
            let (status, body) = http_with_body(s3.addr(), "POST", "/", &iam, &form);
            assert_eq!(status, 200, "{form}: {body}");
        }
        let (status, body) = http_with_body(s3.addr(), "POST", "/", &iam, "Action=CreateAccessKey&UserName=hx&Version=2010-05-08");
        assert_eq!(status, 200, "CreateAccessKey: {body}");
        let field = |tag: &str| body.split(&format!("<{tag}>")).nth(1).and_then(|r| r.split('<').next()).expect(tag).to_string();
        let (id, secret) = (field("AccessKeyId"), field("SecretAccessKey"));
        create_bucket(&s3, bucket);
        (s3, id, secret)
    }

    /// Starts Azurite's Blob service on a free loopback port, its data in the sandbox.
    pub fn start_azurite(&self) -> ObjectServer {
        let mut cmd = Command::new(peers().join("azurite/node_modules/.bin/azurite-blob"));
        cmd.args(["--blobHost", "127.0.0.1", "--blobPort", "0", "--silent", "--skipApiVersionCheck", "--location"])
            .arg(self.path("azurite"));
        start(self, "azurite", cmd, "successfully listens on ")
    }
}

/// The environment that points `hyperexport` at moto (any keys work there).
pub fn s3_env() -> Vec<(&'static str, &'static str)> {
    vec![("AWS_ACCESS_KEY_ID", "hyperexport-test"), ("AWS_SECRET_ACCESS_KEY", "hyperexport-test-secret"), ("AWS_REGION", "us-east-1")]
}

/// The environment that points `hyperexport` at Azurite at `endpoint`.
pub fn azurite_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AZURE_STORAGE_USE_EMULATOR", "true".into()),
        ("AZURITE_BLOB_STORAGE_URL", endpoint.to_string()),
        ("AZURE_STORAGE_ACCOUNT_NAME", AZURITE_ACCOUNT.into()),
        ("AZURE_STORAGE_ACCOUNT_KEY", AZURITE_KEY.into()),
    ]
}

/// One plain HTTP/1.1 request; returns the status and body.
pub fn http(addr: &str, method: &str, path: &str, headers: &[(&str, String)]) -> (u16, String) {
    http_with_body(addr, method, path, headers, "")
}

/// One plain HTTP/1.1 request with a body; returns the status and body.
pub fn http_with_body(addr: &str, method: &str, path: &str, headers: &[(&str, String)], body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the store");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("send");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read answer");
    let status = answer.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// Creates bucket `name` on moto.
pub fn create_bucket(s3: &ObjectServer, name: &str) {
    let (status, body) = http(s3.addr(), "PUT", &format!("/{name}"), &[]);
    assert_eq!(status, 200, "create bucket {name}: {body}");
}

/// The keys under `prefix` in moto's bucket (moto answers unsigned listings).
pub fn s3_keys(s3: &ObjectServer, bucket: &str, prefix: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut after = String::new();
    loop {
        let (status, body) = http(s3.addr(), "GET", &format!("/{bucket}?list-type=2&prefix={prefix}&start-after={after}"), &[]);
        assert_eq!(status, 200, "list {bucket}/{prefix}: {body}");
        let page: Vec<String> = body.split("<Key>").skip(1).filter_map(|p| p.split_once("</Key>")).map(|(k, _)| k.to_string()).collect();
        let Some(last) = page.last().cloned() else { return keys };
        keys.extend(page);
        if !body.contains("<IsTruncated>true</IsTruncated>") {
            return keys;
        }
        after = last;
    }
}

/// Creates container `name` on Azurite, signed with its development key (Shared Key).
pub fn create_container(azurite: &ObjectServer, name: &str) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let date = httpdate();
    let version = "2021-08-06";
    let resource = format!("/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{name}\nrestype:container");
    let to_sign = format!("PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n{resource}");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &b64.decode(AZURITE_KEY).expect("key is base64"));
    let signature = b64.encode(ring::hmac::sign(&key, to_sign.as_bytes()).as_ref());
    let headers =
        [("x-ms-date", date), ("x-ms-version", version.to_string()), ("Authorization", format!("SharedKey {AZURITE_ACCOUNT}:{signature}"))];
    let (status, body) = http(azurite.addr(), "PUT", &format!("/{AZURITE_ACCOUNT}/{name}?restype=container"), &headers);
    assert_eq!(status, 201, "create container {name}: {body}");
}

/// Now as an HTTP date (RFC 7231).
fn httpdate() -> String {
    let out = Command::new("date").args(["-u", "+%a, %d %b %Y %H:%M:%S GMT"]).env("LC_ALL", "C").output().expect("date runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A TCP proxy that cuts every `every`-th connection once `after` bytes went from the client
/// to the server: a server that drops connections in the middle of uploads.
pub struct DroppingProxy {
    /// `HOST:PORT` to connect to instead of the server.
    pub addr: String,
    drops: Arc<AtomicU64>,
}

impl DroppingProxy {
    /// Forwards to `target`.
    pub fn start(target: &str, every: u64, after: u64) -> DroppingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy port");
        let addr = listener.local_addr().unwrap().to_string();
        let drops = Arc::new(AtomicU64::new(0));
        let (target, counted) = (target.to_string(), drops.clone());
        std::thread::spawn(move || {
            for (n, client) in listener.incoming().flatten().enumerate() {
                let Ok(server) = TcpStream::connect(&target) else { continue };
                let cut_after = (n as u64 % every == every - 1).then_some(after);
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let counted = counted.clone();
                std::thread::spawn(move || copy_then_cut(client, server, cut_after, &counted));
                std::thread::spawn(move || {
                    let (mut from, mut to) = (s2, c2);
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(Shutdown::Both);
                });
            }
        });
        DroppingProxy { addr, drops }
    }

    /// How many connections it has cut so far.
    pub fn drops(&self) -> u64 {
        self.drops.load(Ordering::SeqCst)
    }
}

fn copy_then_cut(mut from: TcpStream, mut to: TcpStream, cut_after: Option<u64>, drops: &AtomicU64) {
    let mut sent = 0u64;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if cut_after.is_some_and(|limit| sent + n as u64 > limit) {
            drops.fetch_add(1, Ordering::SeqCst);
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
            return;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n as u64;
    }
    let _ = to.shutdown(Shutdown::Both);
}
