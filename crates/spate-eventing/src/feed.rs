//! A `Feed` is a log plus the router that reads it: what a Broker and a
//! Channel have in common, and what trigger and subscription workers consume.

use std::sync::Arc;

use spate_log::EventLog;
use tokio::sync::watch;

use crate::router::{self, RouterHandle};

pub struct Feed {
    pub log: Arc<dyn EventLog>,
    pub(crate) router: RouterHandle,
    /// Dropping the feed stops its router.
    _stop: watch::Sender<bool>,
}

impl Feed {
    /// Starts the router over `log` (needs a Tokio runtime). `label` names it in logs.
    pub fn new(log: Arc<dyn EventLog>, label: String) -> Arc<Feed> {
        let (stop, stop_rx) = watch::channel(false);
        let router = router::spawn(log.clone(), label, stop_rx);
        Arc::new(Feed { log, router, _stop: stop })
    }
}
