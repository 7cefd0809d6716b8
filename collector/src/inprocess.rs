//! The gateway and the matcher in one thread, their messages moved by hand
//! as their tasks move them: what the integration tests and the in-process
//! benchmark drive, on explicit time. Only with the feature `internals`.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::gateway::{Gateway, Pending};
use crate::matcher::Matcher;
use crate::messages::ToGateway;
use crate::store::SharedStore;

/// Both roles, with the matcher's requests queued for the gateway.
#[derive(Debug)]
pub struct InProcess {
    pub gateway: Gateway,
    pub matcher: Matcher,
    requests: mpsc::Receiver<ToGateway>,
}

impl InProcess {
    /// The roles over `store`, as `server` makes them; `requests` bounds
    /// the matcher's queue of watch requests.
    pub fn new(
        store: SharedStore,
        threshold: Duration,
        next_episode: i64,
        max_agents: usize,
        max_samples: usize,
        requests: usize,
    ) -> InProcess {
        let (tx, rx) = mpsc::channel(requests.max(1));
        InProcess {
            gateway: Gateway::new(store.clone(), max_agents),
            matcher: Matcher::new(store, tx, threshold, next_episode, max_samples),
            requests: rx,
        }
    }

    /// Moves what each role has for the other until neither has more: the
    /// gateway's messages to the matcher before its replies to hellos, as
    /// its task sends them.
    pub fn pump(&mut self, now_ms: i64) {
        loop {
            let mut moved = false;
            let Pending {
                to_matcher,
                replies,
            } = self.gateway.pending();
            for m in to_matcher {
                self.matcher.handle(m, now_ms);
                moved = true;
            }
            for (reply, res) in replies {
                let _ = reply.send(res);
            }
            while let Ok(r) = self.requests.try_recv() {
                self.gateway.request(r);
                moved = true;
            }
            if !moved {
                return;
            }
        }
    }
}
