//! The vSphere provider: a small vim25 SOAP client of our own (`soap.rs` over `http.rs`) and
//! the inventory (`inventory.rs`). Sources are named `vsphere://USER@HOST[:PORT][/DATACENTER]`;
//! the password comes from a file or the environment and is sent only in the login call.
//! An export snapshots the VM and reads the snapshot's disk files through the datastore's
//! `/folder` interface by byte ranges (`export.rs`, `snapshot.rs`, `datastore.rs`).
//!
//! Not built yet (issue "vSphere provider"): CBT, the NFC export lease path, the VM's OVF
//! descriptor in the point.

pub mod datastore;
pub mod export;
pub mod http;
pub mod inventory;
pub mod props;
pub mod snapshot;
pub mod soap;

use std::time::Duration;

use http::{HttpClient, Trust};
use soap::Session;

/// What went wrong talking to vSphere. No variant carries the password.
#[derive(Debug, thiserror::Error)]
pub enum VsphereError {
    #[error("bad vSphere source {url:?}: {why}")]
    Url { url: String, why: String },
    #[error("cannot reach vSphere at {addr}: {detail}")]
    Unreachable { addr: String, detail: String },
    #[error("TLS with vSphere at {addr}: {detail}")]
    Tls { addr: String, detail: String },
    #[error("vSphere at {addr} answered HTTP {status} to {what}")]
    Http { addr: String, status: u16, what: String },
    #[error("vSphere refused the login of user {user:?}: {message}")]
    Login { user: String, message: String },
    #[error("vSphere call {method} failed: {message}")]
    Fault { method: String, message: String },
    #[error("no VM named {name:?} on vSphere at {host}")]
    NoVm { name: String, host: String },
    #[error("{count} VMs are named {name:?} (in {folders}): give the datacenter in the source URL")]
    AmbiguousVm { name: String, count: usize, folders: String },
    #[error("VM {vm:?} has no snapshot named {name:?}")]
    NoSnapshot { vm: String, name: String },
    #[error("VM {vm:?} has {count} snapshots named {name:?}: remove the others first")]
    AmbiguousSnapshot { vm: String, name: String, count: usize },
    #[error("unexpected answer from vSphere to {method}: {detail}")]
    Protocol { method: String, detail: String },
}

impl VsphereError {
    /// Whether trying again cannot help (a wrong name or password); the others may pass.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            VsphereError::Url { .. }
                | VsphereError::Login { .. }
                | VsphereError::NoVm { .. }
                | VsphereError::AmbiguousVm { .. }
                | VsphereError::NoSnapshot { .. }
                | VsphereError::AmbiguousSnapshot { .. }
        )
    }
}

/// A parsed `vsphere://USER@HOST[:PORT][/DATACENTER]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsphereUrl {
    pub user: String,
    pub host: String,
    /// 443 unless given.
    pub port: u16,
    /// Empty: every datacenter.
    pub datacenter: String,
}

impl VsphereUrl {
    /// Parses the source; a password in the URL is refused (it would end up in process lists
    /// and job listings).
    pub fn parse(url: &str) -> Result<VsphereUrl, VsphereError> {
        let bad = |why: &str| VsphereError::Url { url: redact(url), why: why.to_string() };
        let rest = url.strip_prefix("vsphere://").ok_or_else(|| bad("it does not start with vsphere://"))?;
        let (authority, datacenter) = rest.split_once('/').unwrap_or((rest, ""));
        let (user, hostport) = authority.rsplit_once('@').ok_or_else(|| bad("no user: write vsphere://USER@HOST"))?;
        if user.contains(':') {
            return Err(bad("a password does not go in the URL: give --vsphere-password-file or HYPEREXPORT_VSPHERE_PASSWORD"));
        }
        if user.is_empty() {
            return Err(bad("the user is empty"));
        }
        let port_of = |p: &str| p.parse::<u16>().map_err(|_| bad(&format!("port {p:?} is not a number from 1 to 65535")));
        // `[v6 address]` or `[v6 address]:port`, else `host` or `host:port`.
        let (host, port) = match hostport.strip_prefix('[').and_then(|r| r.split_once(']')) {
            Some((h, "")) => (h, 443),
            Some((h, rest)) => (h, port_of(rest.strip_prefix(':').ok_or_else(|| bad("junk after the ] of the address"))?)?),
            None => match hostport.rsplit_once(':') {
                Some((h, p)) => (h, port_of(p)?),
                None => (hostport, 443),
            },
        };
        if host.is_empty() || port == 0 {
            return Err(bad("no host (or port 0)"));
        }
        Ok(VsphereUrl { user: user.to_string(), host: host.to_string(), port, datacenter: datacenter.trim_end_matches('/').to_string() })
    }
}

/// `url` with anything between `//` and `@` that looks like a password removed.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if url[s + 3..at].contains(':') => {
            let user = url[s + 3..at].split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// How to reach and log in to a vSphere server.
#[derive(Clone)]
pub struct Connection {
    pub url: VsphereUrl,
    pub password: String,
    /// `None`: plain HTTP (the simulator, or a proxy that terminates TLS on this host).
    pub trust: Option<Trust>,
    pub timeout: Duration,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("url", &self.url).field("password", &"***").field("trust", &self.trust).finish()
    }
}

impl Connection {
    /// Logs in.
    pub fn session(&self) -> Result<Session, VsphereError> {
        let http = HttpClient::new(&self.url.host, self.url.port, self.trust.clone(), self.timeout)?;
        Session::login(http, &self.url.user, &self.password)
    }

    /// The VMs `filter` accepts (of the URL's datacenter when it names one), in one session.
    pub fn inventory(&self, filter: &inventory::Filter) -> Result<Vec<inventory::VsphereVm>, VsphereError> {
        let mut session = self.session()?;
        let mut filter = filter.clone();
        if !self.url.datacenter.is_empty() && filter.folder.is_empty() {
            filter.folder = format!("/{}", self.url.datacenter);
        }
        let listed = inventory::list(&mut session, &filter);
        session.logout();
        listed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_urls_are_parsed_and_a_password_in_one_is_refused() {
        let u = VsphereUrl::parse("vsphere://admin@vc.example:8443/DC0").unwrap();
        assert_eq!((u.user.as_str(), u.host.as_str(), u.port, u.datacenter.as_str()), ("admin", "vc.example", 8443, "DC0"));
        let u = VsphereUrl::parse("vsphere://administrator@vsphere.local@vc.example").unwrap();
        assert_eq!((u.user.as_str(), u.host.as_str(), u.port), ("administrator@vsphere.local", "vc.example", 443));
        let e = VsphereUrl::parse("vsphere://admin:hunter2@vc.example").unwrap_err().to_string();
        assert!(e.contains("password does not go in the URL") && !e.contains("hunter2"), "{e}");
        let u = VsphereUrl::parse("vsphere://admin@[::1]").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 443));
        let u = VsphereUrl::parse("vsphere://admin@[fd00::5]:8443/DC0").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.datacenter.as_str()), ("fd00::5", 8443, "DC0"));
        for bad in [
            "http://a@b",
            "vsphere://vc.example",
            "vsphere://@vc",
            "vsphere://a@",
            "vsphere://a@h:99999",
            "vsphere://a@h:0",
            "vsphere://a@[::1]x",
        ] {
            assert!(VsphereUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
