//! Who serves what: for each VM, the live agents that serve it (in ascending id order, as
//! placement wants them) and the regions they are in.

use foldhash::HashMap;

use hyperexport_proto::v1::Register;

/// The index of live agents by the VMs they serve.
#[derive(Default)]
pub(super) struct Serving {
    vms: HashMap<String, Servers>,
}

/// Who serves one VM.
#[derive(Default)]
struct Servers {
    /// Agent ids, in ascending order.
    agents: Vec<String>,
    /// Each region with agents serving it, and how many there.
    regions: Vec<(String, u32)>,
}

impl Serving {
    /// Adds (`add`) or removes an agent's VMs.
    pub fn index(&mut self, register: &Register, add: bool) {
        let (id, region) = (&register.agent_id, &register.region);
        for vm in &register.vms {
            let servers = self.vms.entry(vm.name.clone()).or_default();
            let at_region = servers.regions.iter().position(|(r, _)| r == region);
            match (servers.agents.binary_search(id), add) {
                (Err(at), true) => {
                    servers.agents.insert(at, id.clone());
                    match at_region {
                        Some(i) => servers.regions[i].1 += 1,
                        None => servers.regions.push((region.clone(), 1)),
                    }
                }
                (Ok(at), false) => {
                    servers.agents.remove(at);
                    if let Some(i) = at_region {
                        servers.regions[i].1 -= 1;
                        if servers.regions[i].1 == 0 {
                            servers.regions.swap_remove(i);
                        }
                    }
                }
                _ => {}
            }
            if servers.agents.is_empty() {
                self.vms.remove(&vm.name);
            }
        }
    }

    /// The ids of the live agents serving `vm`, in ascending order.
    pub fn agents(&self, vm: &str) -> &[String] {
        self.vms.get(vm).map(|s| s.agents.as_slice()).unwrap_or_default()
    }

    /// The ids of the live agents serving `vm` (ascending), and the one region they are all in
    /// (`None` when they are in several, or none serves it).
    pub fn agents_and_region(&self, vm: &str) -> (&[String], Option<&str>) {
        match self.vms.get(vm) {
            Some(s) => (&s.agents, if let [(region, _)] = s.regions.as_slice() { Some(region.as_str()) } else { None }),
            None => (&[], None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyperexport_proto::v1::Vm;

    fn agent(id: &str, region: &str, vms: &[&str]) -> Register {
        let vms = vms.iter().map(|n| Vm { name: n.to_string(), ..Default::default() }).collect();
        Register { agent_id: id.into(), region: region.into(), vms, ..Default::default() }
    }

    fn region<'a>(s: &'a Serving, vm: &str) -> Option<&'a str> {
        s.agents_and_region(vm).1
    }

    #[test]
    fn follows_agents_and_their_regions_as_they_come_and_go() {
        let mut s = Serving::default();
        let (b, a, c) = (agent("b", "eu", &["vm1", "vm2"]), agent("a", "eu", &["vm1"]), agent("c", "us", &["vm2"]));
        s.index(&b, true);
        s.index(&a, true);
        s.index(&a, true);
        assert_eq!(s.agents("vm1"), ["a", "b"], "ascending ids, each once");
        assert_eq!((region(&s, "vm1"), region(&s, "vm2")), (Some("eu"), Some("eu")));
        s.index(&c, true);
        assert_eq!(s.agents_and_region("vm2"), (&["b".to_string(), "c".to_string()][..], None));
        s.index(&b, false);
        s.index(&b, false);
        assert_eq!(s.agents_and_region("vm1"), (&["a".to_string()][..], Some("eu")), "a still serves vm1 in eu");
        assert_eq!(region(&s, "vm2"), Some("us"));
        s.index(&a, false);
        s.index(&c, false);
        assert!(s.agents("vm1").is_empty() && region(&s, "vm1").is_none() && region(&s, "vm2").is_none());
        assert!(s.vms.is_empty(), "nothing left behind");
    }
}
