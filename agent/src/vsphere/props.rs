//! The property collector: the properties of objects, read with `RetrievePropertiesEx` (pages
//! followed with `ContinueRetrievePropertiesEx`), of every object of some types under the root
//! folder (through a container view) or of one object; and waiting for a task to end.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use roxmltree::{Document, Node};

use super::VsphereError;
use super::soap::{MoRef, Session, child, escape, text_of};

/// The XML Schema instance namespace (`xsi:type`).
pub const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// An object's properties as the property collector returned them.
pub struct Object {
    pub id: MoRef,
    /// Property path → the `val` element's XML text (re-parsed on use).
    props: HashMap<String, String>,
}

impl Object {
    /// Runs `f` on a complex value (its `val` element).
    pub fn with<T>(&self, prop: &str, f: impl FnOnce(Node) -> Option<T>) -> Option<T> {
        let xml = self.props.get(prop).filter(|v| v.starts_with('<'))?;
        // The prefixes it uses were declared on the envelope.
        let wrapped = format!(r#"<w xmlns="urn:vim25" xmlns:xsi="{XSI}" xmlns:xsd="http://www.w3.org/2001/XMLSchema">{xml}</w>"#);
        let doc = Document::parse(&wrapped).ok()?;
        f(doc.root_element().first_element_child()?)
    }

    /// A simple value (a reference gives its id).
    pub fn text(&self, prop: &str) -> Option<&str> {
        self.props.get(prop).map(String::as_str).filter(|v| !v.starts_with('<'))
    }
}

/// Lists the objects of `kinds` under the root folder with `props`, through a container view
/// (destroyed afterwards) and as many pages as the collector gives.
pub fn objects(session: &mut Session, kinds: &[&str], props: &[&str]) -> Result<Vec<Object>, VsphereError> {
    let types: String = kinds.iter().map(|k| format!("<type>{}</type>", escape(k))).collect();
    let create = format!(
        "{}{}{types}<recursive>true</recursive>",
        session.content.view_manager.xml("_this"),
        session.content.root_folder.xml("container")
    );
    let answer = session.call("CreateContainerView", &create)?;
    let view = Document::parse(&answer)
        .ok()
        .and_then(|d| child(d.root(), "returnval").and_then(MoRef::of))
        .ok_or_else(|| VsphereError::Protocol { method: "CreateContainerView".into(), detail: "no view in the answer".into() })?;
    let listed = collect(session, &view, kinds, props);
    if let Err(e) = session.call("DestroyView", &view.xml("_this")) {
        tracing::debug!(error = %e, "destroying a vsphere container view failed");
    }
    listed
}

fn collect(session: &mut Session, view: &MoRef, kinds: &[&str], props: &[&str]) -> Result<Vec<Object>, VsphereError> {
    let paths = path_set(props);
    let prop_sets: String = kinds.iter().map(|k| format!("<propSet><type>{k}</type>{paths}</propSet>")).collect();
    let spec = format!(
        r#"<specSet>{prop_sets}<objectSet>{}<skip>true</skip><selectSet xsi:type="TraversalSpec"><name>view</name><type>ContainerView</type><path>view</path><skip>false</skip></selectSet></objectSet></specSet>"#,
        view.xml("obj")
    );
    let collector = session.content.property_collector.xml("_this");
    let mut answer = session.call("RetrievePropertiesEx", &format!("{collector}{spec}<options/>"))?;
    let mut out = Vec::new();
    loop {
        let (objects, token) = parse_objects(&answer)?;
        out.extend(objects);
        let Some(token) = token else { break };
        answer = session.call("ContinueRetrievePropertiesEx", &format!("{collector}<token>{}</token>", escape(&token)))?;
    }
    Ok(out)
}

/// The objects of a `RetrievePropertiesEx` answer, and the token of the next page if any.
fn parse_objects(answer: &str) -> Result<(Vec<Object>, Option<String>), VsphereError> {
    let doc = Document::parse(answer)
        .map_err(|e| VsphereError::Protocol { method: "RetrievePropertiesEx".into(), detail: format!("the answer is not XML: {e}") })?;
    let Some(returnval) = child(doc.root(), "returnval") else { return Ok((Vec::new(), None)) };
    let mut out = Vec::new();
    for obj in returnval.children().filter(|n| n.is_element() && n.tag_name().name() == "objects") {
        let Some(id) = child(obj, "obj").and_then(MoRef::of) else { continue };
        let mut values = HashMap::new();
        for set in obj.children().filter(|n| n.is_element() && n.tag_name().name() == "propSet") {
            let (Some(name), Some(val)) = (text_of(set, "name"), child(set, "val")) else { continue };
            values.insert(name.to_string(), value_text(answer, val));
        }
        out.push(Object { id, props: values });
    }
    Ok((out, text_of(returnval, "token").map(str::to_string)))
}

/// A `val` element as text: its text when it is a simple value, else its XML.
fn value_text(source: &str, val: Node) -> String {
    if val.children().any(|n| n.is_element()) { source[val.range()].to_string() } else { val.text().unwrap_or("").trim().to_string() }
}

/// The `pathSet` elements asking for `props`.
fn path_set(props: &[&str]) -> String {
    props.iter().map(|p| format!("<pathSet>{}</pathSet>", escape(p))).collect()
}

/// The properties `props` of the object `obj`.
pub fn properties(session: &mut Session, obj: &MoRef, props: &[&str]) -> Result<Object, VsphereError> {
    let paths = path_set(props);
    let spec = format!(
        "<specSet><propSet><type>{}</type>{paths}</propSet><objectSet>{}<skip>false</skip></objectSet></specSet>",
        escape(&obj.kind),
        obj.xml("obj")
    );
    let collector = session.content.property_collector.xml("_this");
    let answer = session.call("RetrievePropertiesEx", &format!("{collector}{spec}<options/>"))?;
    let mut objects = parse_objects(&answer)?.0;
    objects
        .pop()
        .ok_or_else(|| VsphereError::Protocol { method: "RetrievePropertiesEx".into(), detail: format!("no properties of {}", obj.id) })
}

/// Waits for `task` (started by `method`) to end: its result (a reference's id, or empty) when
/// it succeeded, its error when it failed. Polls with growing pauses, for `limit` at most.
pub fn wait_task(session: &mut Session, task: &MoRef, method: &str, limit: Duration) -> Result<String, VsphereError> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        let info = properties(session, task, &["info.state", "info.error", "info.result"])?;
        match info.text("info.state") {
            Some("success") => return Ok(info.text("info.result").unwrap_or("").to_string()),
            Some("error") => {
                let message = info
                    .with("info.error", |e| text_of(e, "localizedMessage").map(str::to_string))
                    .or_else(|| info.with("info.error", |e| child(e, "fault").and_then(|f| f.attribute((XSI, "type"))).map(str::to_string)))
                    .unwrap_or_else(|| "the task failed".into());
                return Err(VsphereError::Fault { method: method.to_string(), message });
            }
            _ if started.elapsed() > limit => {
                return Err(VsphereError::Fault { method: method.to_string(), message: format!("still running after {limit:?}") });
            }
            _ => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}
