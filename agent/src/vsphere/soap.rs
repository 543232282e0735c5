//! The vim25 SOAP calls the agent makes: each a POST of an envelope to `/sdk`, answered by an
//! envelope whose body holds `<Method>Response` or a `Fault`. A session is a login (its cookie
//! rides on every later call) and ends with a logout.

use roxmltree::{Document, Node};

use super::VsphereError;
use super::http::{HttpClient, Response};

/// A managed object reference as it goes on the wire: its type and id (`VirtualMachine`,
/// `vm-42`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MoRef {
    pub kind: String,
    pub id: String,
}

impl MoRef {
    /// Reads a reference from an element whose `type` attribute is the type and text the id.
    pub fn of(node: Node) -> Option<MoRef> {
        Some(MoRef { kind: node.attribute("type")?.to_string(), id: node.text()?.trim().to_string() })
    }

    /// The reference as the element `tag`.
    pub fn xml(&self, tag: &str) -> String {
        format!(r#"<{tag} type="{}">{}</{tag}>"#, escape(&self.kind), escape(&self.id))
    }
}

/// Escapes text for an XML element or attribute (the OVF writer's escaping).
pub use hyperexport_shared::ovf::escape;

/// The first descendant of `node` named `name` (any namespace).
pub fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.descendants().find(|n| n.is_element() && n.tag_name().name() == name)
}

/// The text of the first descendant named `name`.
pub fn text_of<'a>(node: Node<'a, '_>, name: &str) -> Option<&'a str> {
    child(node, name).and_then(|n| n.text()).map(str::trim)
}

/// The largest SOAP answer read (an inventory of many thousand VMs stays far below it).
const MAX_ANSWER: usize = 256 << 20;
/// Calls that only read, sent again once on a new connection if their answer breaks off.
const READ_ONLY: [&str; 3] = ["RetrieveServiceContent", "RetrievePropertiesEx", "QueryChangedDiskAreas"];

/// What the service instance offers (the part the agent uses).
#[derive(Debug, Clone)]
pub struct ServiceContent {
    pub root_folder: MoRef,
    pub property_collector: MoRef,
    pub view_manager: MoRef,
    pub session_manager: MoRef,
    /// "VMware vCenter Server 8.0.2 build-..." or the ESXi equivalent.
    pub full_name: String,
}

/// A logged-in session.
pub struct Session {
    http: HttpClient,
    cookie: Option<String>,
    /// What the server offers.
    pub content: ServiceContent,
}

impl Session {
    /// Reads the service content and logs in as `user`; the password is sent only in the
    /// login call and kept nowhere.
    pub fn login(http: HttpClient, user: &str, password: &str) -> Result<Session, VsphereError> {
        let mut session = Session { http, cookie: None, content: placeholder_content() };
        let body = session.call("RetrieveServiceContent", r#"<_this type="ServiceInstance">ServiceInstance</_this>"#)?;
        session.content = parse_content(&body)?;
        let login = format!(
            "{}<userName>{}</userName><password>{}</password>",
            session.content.session_manager.xml("_this"),
            escape(user),
            escape(password)
        );
        match session.call("Login", &login) {
            Ok(_) => Ok(session),
            Err(VsphereError::Fault { message, .. }) => Err(VsphereError::Login { user: user.to_string(), message }),
            Err(e) => Err(e),
        }
    }

    /// Ends the session (best effort: the server drops idle sessions too). Dropping a session
    /// ends it too, on the thread that drops it.
    pub fn logout(mut self) {
        self.end();
    }

    fn end(&mut self) {
        if self.cookie.is_none() {
            return;
        }
        let this = self.content.session_manager.xml("_this");
        if let Err(e) = self.call("Logout", &this) {
            tracing::debug!(error = %e, "vsphere logout failed");
        }
        self.cookie = None;
    }

    /// The server, `host:port`.
    pub fn addr(&self) -> &str {
        self.http.addr()
    }

    /// The session's cookie, for the other HTTP interfaces (the datastore's `/folder`).
    pub fn cookie(&self) -> Option<&str> {
        self.cookie.as_deref()
    }

    /// Calls `method` with the parameters `params` (XML); returns the response envelope's text.
    pub fn call(&mut self, method: &str, params: &str) -> Result<String, VsphereError> {
        let envelope = format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><{method} xmlns="urn:vim25">{params}</{method}></soapenv:Body></soapenv:Envelope>"#
        );
        let mut headers = vec![("Content-Type", "text/xml; charset=utf-8"), ("SOAPAction", "\"urn:vim25/6.5\"")];
        let cookie = self.cookie.clone();
        if let Some(c) = &cookie {
            headers.push(("Cookie", c.as_str()));
        }
        let response = self.http.request("POST", "/sdk", &headers, envelope.as_bytes(), MAX_ANSWER, READ_ONLY.contains(&method))?;
        if let Some(set) = response.header("set-cookie") {
            // `vmware_soap_session="..."; Path=/; ...`: the first pair is the session.
            self.cookie = set.split(';').next().map(|c| c.trim().to_string());
        }
        self.answer(method, response)
    }

    fn answer(&self, method: &str, response: Response) -> Result<String, VsphereError> {
        let text = String::from_utf8(response.body).map_err(|_| protocol(method, "the answer is not UTF-8"))?;
        let doc = Document::parse(&text).map_err(|e| match response.status {
            200 => protocol(method, &format!("the answer is not XML: {e}")),
            status => VsphereError::Http { addr: self.http.addr().to_string(), status, what: method.to_string() },
        })?;
        if let Some(fault) = child(doc.root(), "Fault") {
            let message = text_of(fault, "faultstring").unwrap_or("no message").to_string();
            let kind = child(fault, "detail")
                .and_then(|d| d.children().find(|n| n.is_element()))
                .map(|n| n.attribute(("http://www.w3.org/2001/XMLSchema-instance", "type")).unwrap_or(n.tag_name().name()).to_string());
            let message = match kind {
                Some(k) if !k.is_empty() => format!("{message} ({k})"),
                _ => message,
            };
            return Err(VsphereError::Fault { method: method.to_string(), message });
        }
        if response.status != 200 {
            return Err(VsphereError::Http { addr: self.http.addr().to_string(), status: response.status, what: method.to_string() });
        }
        Ok(text)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.end();
    }
}

fn protocol(method: &str, detail: &str) -> VsphereError {
    VsphereError::Protocol { method: method.to_string(), detail: detail.to_string() }
}

fn placeholder_content() -> ServiceContent {
    let none = MoRef { kind: String::new(), id: String::new() };
    ServiceContent {
        root_folder: none.clone(),
        property_collector: none.clone(),
        view_manager: none.clone(),
        session_manager: none,
        full_name: String::new(),
    }
}

fn parse_content(text: &str) -> Result<ServiceContent, VsphereError> {
    let bad = |what: &str| protocol("RetrieveServiceContent", what);
    let doc = Document::parse(text).map_err(|e| bad(&format!("the answer is not XML: {e}")))?;
    let returnval = child(doc.root(), "returnval").ok_or_else(|| bad("no returnval"))?;
    let moref = |name: &str| child(returnval, name).and_then(MoRef::of).ok_or_else(|| bad(&format!("no {name}")));
    Ok(ServiceContent {
        root_folder: moref("rootFolder")?,
        property_collector: moref("propertyCollector")?,
        view_manager: moref("viewManager")?,
        session_manager: moref("sessionManager")?,
        full_name: text_of(returnval, "fullName").unwrap_or("").to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_keeps_markup_out_of_values() {
        assert_eq!(escape(r#"a<b>&"c'"#), "a&lt;b&gt;&amp;&quot;c&apos;");
        let r = MoRef { kind: "Folder".into(), id: "group-<1>".into() };
        assert_eq!(r.xml("_this"), r#"<_this type="Folder">group-&lt;1&gt;</_this>"#);
    }

    #[test]
    fn service_content_is_read_and_a_broken_one_is_an_error() {
        let ok = r#"<Envelope><Body><RetrieveServiceContentResponse><returnval><rootFolder type="Folder">group-d1</rootFolder><propertyCollector type="PropertyCollector">propertyCollector</propertyCollector><viewManager type="ViewManager">ViewManager</viewManager><about><fullName>VMware vCenter Server 6.5.0</fullName></about><sessionManager type="SessionManager">SessionManager</sessionManager></returnval></RetrieveServiceContentResponse></Body></Envelope>"#;
        let c = parse_content(ok).unwrap();
        assert_eq!(c.root_folder, MoRef { kind: "Folder".into(), id: "group-d1".into() });
        assert_eq!(c.full_name, "VMware vCenter Server 6.5.0");
        assert!(parse_content("<Envelope><Body/></Envelope>").is_err());
        assert!(parse_content("not xml").is_err());
    }
}
