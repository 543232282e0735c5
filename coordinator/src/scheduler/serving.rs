//! Who serves what: for each VM, the live agents that serve it (in ascending id order, as
//! placement wants them) and the regions they are in.

use foldhash::HashMap;

use hyperexport_proto::v1::Register;

/// The index of live agents by the VMs they serve.
#[derive(Default)]
pub(super) struct Serving {
    agents: HashMap<String, Vec<String>>,
    /// Per VM, each region with agents serving it and how many there.
    regions: HashMap<String, Vec<(String, u32)>>,
}

impl Serving {
    /// Adds (`add`) or removes an agent's VMs.
    pub fn index(&mut self, register: &Register, add: bool) {
        let id = &register.agent_id;
        for vm in &register.vms {
            let ids = self.agents.entry(vm.name.clone()).or_default();
            let changed = match (ids.binary_search(id), add) {
                (Err(at), true) => {
                    ids.insert(at, id.clone());
                    true
                }
                (Ok(at), false) => {
                    ids.remove(at);
                    true
                }
                _ => false,
            };
            if ids.is_empty() {
                self.agents.remove(&vm.name);
            }
            if changed {
                self.count_region(&vm.name, &register.region, add);
            }
        }
    }

    fn count_region(&mut self, vm: &str, region: &str, add: bool) {
        let regions = self.regions.entry(vm.to_string()).or_default();
        match (regions.iter().position(|(r, _)| r == region), add) {
            (Some(at), true) => regions[at].1 += 1,
            (None, true) => regions.push((region.to_string(), 1)),
            (Some(at), false) => {
                regions[at].1 -= 1;
                if regions[at].1 == 0 {
                    regions.swap_remove(at);
                }
            }
            (None, false) => {}
        }
        if regions.is_empty() {
            self.regions.remove(vm);
        }
    }

    /// The ids of the live agents serving `vm`, in ascending order.
    pub fn agents(&self, vm: &str) -> &[String] {
        self.agents.get(vm).map(Vec::as_slice).unwrap_or_default()
    }

    /// The one region all agents serving `vm` are in; `None` when none serves it or they are in
    /// several.
    pub fn only_region(&self, vm: &str) -> Option<&str> {
        match self.regions.get(vm).map(Vec::as_slice) {
            Some([(region, _)]) => Some(region),
            _ => None,
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

    #[test]
    fn follows_agents_and_their_regions_as_they_come_and_go() {
        let mut s = Serving::default();
        let (b, a, c) = (agent("b", "eu", &["vm1", "vm2"]), agent("a", "eu", &["vm1"]), agent("c", "us", &["vm2"]));
        s.index(&b, true);
        s.index(&a, true);
        s.index(&a, true);
        assert_eq!(s.agents("vm1"), ["a", "b"], "ascending ids, each once");
        assert_eq!((s.only_region("vm1"), s.only_region("vm2")), (Some("eu"), Some("eu")));
        s.index(&c, true);
        assert_eq!((s.agents("vm2"), s.only_region("vm2")), (&["b".to_string(), "c".to_string()][..], None));
        s.index(&b, false);
        s.index(&b, false);
        assert_eq!((s.agents("vm1"), s.only_region("vm1")), (&["a".to_string()][..], Some("eu")), "a still serves vm1 in eu");
        assert_eq!(s.only_region("vm2"), Some("us"));
        s.index(&a, false);
        s.index(&c, false);
        assert!(s.agents("vm1").is_empty() && s.only_region("vm1").is_none() && s.only_region("vm2").is_none());
        assert!(s.agents.is_empty() && s.regions.is_empty(), "nothing left behind");
    }
}
