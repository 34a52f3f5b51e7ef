//! The event stream: what happened to containers, images and volumes, for
//! `tote events` (live, plus a short history for `--since`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::broadcast;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Nanoseconds since the epoch.
    pub time_nanos: u128,
    pub kind: &'static str,
    pub action: String,
    pub id: String,
    pub attributes: BTreeMap<String, String>,
}

/// How many past events `--since` can reach.
const HISTORY: usize = 1024;

pub struct Events {
    sender: broadcast::Sender<Event>,
    history: Mutex<VecDeque<Event>>,
}

impl Default for Events {
    fn default() -> Self {
        Self { sender: broadcast::channel(256).0, history: Mutex::new(VecDeque::new()) }
    }
}

impl Events {
    pub fn publish(&self, kind: &'static str, action: &str, id: &str, attributes: &[(&str, &str)]) {
        let time_nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let event = Event {
            time_nanos,
            kind,
            action: action.into(),
            id: id.into(),
            attributes: attributes.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        let mut history = self.history.lock().expect("events lock");
        if history.len() == HISTORY {
            history.pop_front();
        }
        history.push_back(event.clone());
        let _ = self.sender.send(event);
    }

    /// Past events at or after `since` (ns), and the live ones after them.
    pub fn subscribe(&self, since: Option<u128>) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let history = self.history.lock().expect("events lock");
        let receiver = self.sender.subscribe();
        let past = match since {
            Some(since) => history.iter().filter(|e| e.time_nanos >= since).cloned().collect(),
            None => Vec::new(),
        };
        (past, receiver)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_get_history_since_and_live_events() {
        let events = Events::default();
        events.publish("container", "create", "a", &[("name", "web")]);
        let (past, mut live) = events.subscribe(Some(0));
        assert_eq!(past.len(), 1);
        assert_eq!(past[0].attributes["name"], "web");
        events.publish("container", "start", "a", &[]);
        assert_eq!(live.recv().await.unwrap().action, "start");
        assert!(events.subscribe(None).0.is_empty());
    }
}
