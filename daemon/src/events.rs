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
/// The most bytes of text the history keeps (about 130 bytes an event).
const HISTORY_BYTES: usize = 256 << 10;

/// Past events, oldest first, in two buffers allocated once: a fixed-size
/// entry per event, and the events' strings back to back. As a `VecDeque`
/// of `Event`s each entry was seven small allocations that lived for the
/// next thousand events, scattered among everything else the daemon
/// allocated meanwhile: they kept megabytes of otherwise free heap from
/// going back to the system.
#[derive(Default)]
struct History {
    /// Time, kind, and how many bytes of `text` are the event's.
    entries: VecDeque<(u128, &'static str, usize)>,
    /// Per event: action, id, then each attribute's key and value, every
    /// string as its length (u32, little endian) and its bytes.
    text: VecDeque<u8>,
}

impl History {
    fn push(&mut self, time_nanos: u128, kind: &'static str, strings: &[&str]) {
        let len: usize = strings.iter().map(|s| 4 + s.len()).sum();
        if len > HISTORY_BYTES || strings.iter().any(|s| u32::try_from(s.len()).is_err()) {
            return;
        }
        if self.entries.capacity() == 0 {
            self.entries.reserve_exact(HISTORY);
            self.text.reserve_exact(HISTORY_BYTES);
        }
        while self.entries.len() >= HISTORY || self.text.len() + len > HISTORY_BYTES {
            let Some((_, _, old)) = self.entries.pop_front() else { break };
            self.text.drain(..old);
        }
        for s in strings {
            let n = u32::try_from(s.len()).expect("checked above");
            self.text.extend(n.to_le_bytes());
            self.text.extend(s.as_bytes());
        }
        self.entries.push_back((time_nanos, kind, len));
    }

    /// The events at or after `since` (ns), oldest first.
    fn since(&mut self, since: u128) -> Vec<Event> {
        let text = self.text.make_contiguous();
        let mut events = Vec::new();
        let mut offset = 0;
        for &(time_nanos, kind, len) in &self.entries {
            let record = &text[offset..offset + len];
            offset += len;
            if time_nanos < since {
                continue;
            }
            let mut strings = Strings(record);
            let action = strings.next().unwrap_or_default();
            let id = strings.next().unwrap_or_default();
            let mut attributes = BTreeMap::new();
            while let (Some(key), Some(value)) = (strings.next(), strings.next()) {
                attributes.insert(key, value);
            }
            events.push(Event { time_nanos, kind, action, id, attributes });
        }
        events
    }
}

/// The length-prefixed strings of one history record.
struct Strings<'a>(&'a [u8]);

impl Iterator for Strings<'_> {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        let (len, rest) = self.0.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
        let (text, rest) = rest.split_at_checked(len)?;
        self.0 = rest;
        Some(String::from_utf8_lossy(text).into_owned())
    }
}

pub struct Events {
    sender: broadcast::Sender<Event>,
    history: Mutex<History>,
}

impl Default for Events {
    fn default() -> Self {
        Self { sender: broadcast::channel(256).0, history: Mutex::new(History::default()) }
    }
}

impl Events {
    pub fn publish(&self, kind: &'static str, action: &str, id: &str, attributes: &[(&str, &str)]) {
        let time_nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let mut strings = vec![action, id];
        strings.extend(attributes.iter().flat_map(|(k, v)| [*k, *v]));
        let mut history = self.history.lock().expect("events lock");
        history.push(time_nanos, kind, &strings);
        // Subscribers join under the same lock, so none misses this event.
        if self.sender.receiver_count() > 0 {
            let event = Event {
                time_nanos,
                kind,
                action: action.into(),
                id: id.into(),
                attributes: attributes.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            };
            let _ = self.sender.send(event);
        }
    }

    /// Past events at or after `since` (ns), and the live ones after them.
    pub fn subscribe(&self, since: Option<u128>) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let mut history = self.history.lock().expect("events lock");
        let receiver = self.sender.subscribe();
        let past = match since {
            Some(since) => history.since(since),
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

    #[test]
    fn history_keeps_the_latest_events_whole() {
        let events = Events::default();
        for i in 0..HISTORY + 10 {
            let code = i.to_string();
            events.publish("container", "die", &format!("id{i}"), &[("name", "web"), ("exitCode", &code)]);
        }
        let (past, _) = events.subscribe(Some(0));
        assert_eq!(past.len(), HISTORY);
        assert_eq!(past[0].id, "id10");
        let last = past.last().unwrap();
        assert_eq!((last.kind, last.action.as_str()), ("container", "die"));
        assert_eq!(last.attributes["exitCode"], (HISTORY + 9).to_string());
        assert!(past.windows(2).all(|w| w[0].time_nanos <= w[1].time_nanos));
        // `since` skips what came before it.
        let since = past[100].time_nanos;
        assert!(events.subscribe(Some(since)).0.iter().all(|e| e.time_nanos >= since));
    }

    #[test]
    fn history_is_bounded_in_bytes_too() {
        let events = Events::default();
        let big = "x".repeat(HISTORY_BYTES / 4);
        for i in 0..10 {
            events.publish("image", "pull", &format!("{i}"), &[("name", &big)]);
        }
        let (past, _) = events.subscribe(Some(0));
        assert!(past.len() < 4 && past.last().unwrap().id == "9", "{}", past.len());
        // An event too big for the history is still sent live.
        let (_, mut live) = events.subscribe(None);
        events.publish("image", "pull", "huge", &[("name", &"y".repeat(HISTORY_BYTES))]);
        assert_eq!(live.try_recv().unwrap().id, "huge");
    }
}
