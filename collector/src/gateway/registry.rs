//! Host names and their numbers: a host keeps its number for the
//! collector's life, whichever stream it speaks on.

use std::collections::HashMap;
use std::sync::Arc;

use crate::messages::HostId;

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Grows by one entry per distinct host name ever greeted (bounded in
/// practice by the fleet, and by the hosts a CA vouches for once streams
/// are authenticated).
#[derive(Debug, Default)]
pub(crate) struct Hosts {
    names: Vec<Arc<str>>,
    ids: Map<Arc<str>, HostId>,
}

impl Hosts {
    /// The number of `name`, given now if it has none.
    pub(crate) fn id(&mut self, name: &str) -> HostId {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = HostId(u32::try_from(self.names.len()).unwrap_or(u32::MAX));
        let name: Arc<str> = Arc::from(name);
        self.names.push(name.clone());
        self.ids.insert(name, id);
        id
    }

    /// The name of `id`, if it has one.
    pub(crate) fn get(&self, id: HostId) -> Option<Arc<str>> {
        self.names.get(id.0 as usize).cloned()
    }

    pub(crate) fn name(&self, id: HostId) -> Arc<str> {
        self.names
            .get(id.0 as usize)
            .cloned()
            .unwrap_or_else(|| Arc::from("?"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_keeps_its_number() {
        let mut h = Hosts::default();
        let a = h.id("alpha");
        let b = h.id("beta");
        assert_ne!(a, b);
        assert_eq!(h.id("alpha"), a);
        assert_eq!(&*h.name(b), "beta");
        assert_eq!(&*h.name(HostId(99)), "?");
    }
}
