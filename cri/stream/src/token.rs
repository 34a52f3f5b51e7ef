//! Single-use, expiring tokens for pending streaming requests.
//!
//! The CRI `Exec`/`Attach`/`PortForward` RPCs only hand out a URL; the
//! request itself waits here until the kubelet connects. A token is the
//! only credential the streaming endpoint checks, so it must be
//! unguessable, usable once, and short-lived; the cache is bounded so
//! that a caller cannot grow it without limit (the kubelet's
//! `maxInFlight`).
//!
//! Time comes from `tokio::time::Instant` so that tests can pause and
//! advance it instead of sleeping.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use tokio::time::Instant;

/// Random bytes in a token: 128 bits, as RFC 4122 UUIDs and session
/// identifiers are considered unguessable at.
const TOKEN_BYTES: usize = 16;

/// The kubelet's request cache keeps tokens for one minute.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);

/// The kubelet's `maxInFlight`.
pub const DEFAULT_CAPACITY: usize = 1000;

/// A TTL past which `Instant` arithmetic could overflow is no more useful
/// than this one, and the cap keeps `insert` panic-free.
const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The kubelet reports this as `ResourceExhausted`.
    #[error("maximum number of in-flight requests exceeded")]
    Full,
    #[error("no randomness for a token: {0}")]
    Random(String),
}

/// Pending values keyed by random tokens; each token can be consumed once,
/// before its TTL runs out.
pub struct TokenCache<T> {
    ttl: Duration,
    capacity: usize,
    state: Mutex<State<T>>,
}

struct State<T> {
    entries: HashMap<String, Entry<T>>,
    /// Entries by expiry, so eviction pops the oldest without a scan. The
    /// sequence number separates entries inserted at the same instant.
    by_deadline: BTreeMap<(Instant, u64), String>,
    next_seq: u64,
}

struct Entry<T> {
    key: (Instant, u64),
    value: T,
}

impl<T> TokenCache<T> {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        TokenCache {
            ttl: ttl.min(MAX_TTL),
            capacity,
            state: Mutex::new(State { entries: HashMap::new(), by_deadline: BTreeMap::new(), next_seq: 0 }),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Stores `value` and returns its token (URL-safe base64, no padding).
    pub fn insert(&self, value: T) -> Result<String, TokenError> {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.evict_expired(now);
        if state.entries.len() >= self.capacity {
            return Err(TokenError::Full);
        }
        let token = loop {
            let token = random_token()?;
            // A collision at 128 bits means a broken RNG, but a silent
            // overwrite would hand one request to another caller.
            if !state.entries.contains_key(&token) {
                break token;
            }
        };
        let key = (now + self.ttl, state.next_seq);
        state.next_seq += 1;
        state.by_deadline.insert(key, token.clone());
        state.entries.insert(token.clone(), Entry { key, value });
        Ok(token)
    }

    /// Removes and returns the value behind `token`, unless it is unknown,
    /// already used or expired.
    pub fn consume(&self, token: &str) -> Option<T> {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = state.entries.remove(token)?;
        state.by_deadline.remove(&entry.key);
        state.evict_expired(now);
        (now < entry.key.0).then_some(entry.value)
    }

    /// Tokens held, expired ones included until the next insert or consume.
    pub fn len(&self) -> usize {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> State<T> {
    fn evict_expired(&mut self, now: Instant) {
        while let Some(entry) = self.by_deadline.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let token = entry.remove();
            self.entries.remove(&token);
        }
    }
}

fn random_token() -> Result<String, TokenError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| TokenError::Random(e.to_string()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_works_once() {
        let cache = TokenCache::new(DEFAULT_TTL, DEFAULT_CAPACITY);
        let token = cache.insert("exec").unwrap();
        assert_eq!(cache.consume(&token), Some("exec"));
        assert_eq!(cache.consume(&token), None);
        assert_eq!(cache.consume("not-a-token"), None);
        assert!(cache.is_empty());
    }

    #[test]
    fn tokens_are_url_safe_and_distinct() {
        let cache = TokenCache::new(DEFAULT_TTL, DEFAULT_CAPACITY);
        let tokens: Vec<String> = (0..100).map(|i| cache.insert(i).unwrap()).collect();
        for token in &tokens {
            // 16 bytes in unpadded base64.
            assert_eq!(token.len(), 22, "{token}");
            assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{token}");
        }
        let distinct: std::collections::HashSet<&String> = tokens.iter().collect();
        assert_eq!(distinct.len(), tokens.len());
        for (i, token) in tokens.iter().enumerate() {
            assert_eq!(cache.consume(token), Some(i));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_expire_after_the_ttl() {
        let ttl = Duration::from_secs(60);
        let cache = TokenCache::new(ttl, DEFAULT_CAPACITY);
        let early = cache.insert(1).unwrap();
        let late = cache.insert(2).unwrap();
        tokio::time::advance(ttl - Duration::from_millis(1)).await;
        assert_eq!(cache.consume(&early), Some(1));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(cache.consume(&late), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_ttl_token_is_born_expired() {
        let cache = TokenCache::new(Duration::ZERO, DEFAULT_CAPACITY);
        let token = cache.insert(()).unwrap();
        assert_eq!(cache.consume(&token), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_cache_refuses_until_tokens_are_used_or_expire() {
        let ttl = Duration::from_secs(60);
        let cache = TokenCache::new(ttl, 2);
        let first = cache.insert(1).unwrap();
        let _second = cache.insert(2).unwrap();
        assert_eq!(cache.insert(3), Err(TokenError::Full));

        assert_eq!(cache.consume(&first), Some(1));
        let third = cache.insert(3).unwrap();
        assert_eq!(cache.insert(4), Err(TokenError::Full));

        // Expired entries are evicted on insert, freeing their slots.
        tokio::time::advance(ttl).await;
        assert_eq!(cache.len(), 2);
        cache.insert(5).unwrap();
        cache.insert(6).unwrap();
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.consume(&third), None);
    }
}
