//! Continuous token buckets (contract §5), in memory, keyed by the authenticated token. The
//! clock is a parameter so the maths is testable. Memory is bounded: buckets that have refilled
//! completely are indistinguishable from new ones and are dropped when the map grows, and the
//! map never holds more than [`MAX_BUCKETS`] entries.

use std::collections::HashMap;
use std::sync::Mutex;

/// Upper bound on tracked keys per limiter.
pub const MAX_BUCKETS: usize = 10_000;

/// `capacity` requests per `window_ms`, refilled continuously.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub capacity: f64,
    pub window_ms: f64,
}

/// Notifications send: 10 per 60 s.
pub const SEND_RATE: Rate = Rate {
    capacity: 10.0,
    window_ms: 60_000.0,
};
/// Assistant reload: 5 per 60 s.
pub const RELOAD_RATE: Rate = Rate {
    capacity: 5.0,
    window_ms: 60_000.0,
};

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last_ms: i64,
}

#[derive(Debug)]
pub struct RateLimiter {
    rate: Rate,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn new(rate: Rate) -> Self {
        RateLimiter {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn refill(&self, b: &mut Bucket, now_ms: i64) {
        let elapsed = (now_ms - b.last_ms).max(0) as f64;
        b.tokens =
            (b.tokens + elapsed / self.rate.window_ms * self.rate.capacity).min(self.rate.capacity);
        b.last_ms = now_ms;
    }

    /// Takes one token for `key`. `Err(retry_after_secs)` when denied (whole seconds, rounded
    /// up, at least 1). Denied calls cost nothing.
    pub fn try_acquire(&self, key: &str, now_ms: i64) -> Result<(), u64> {
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(key) && map.len() >= MAX_BUCKETS {
            self.prune(&mut map, now_ms);
        }
        if !map.contains_key(key) && map.len() >= MAX_BUCKETS {
            // Still full of active buckets: evict the fullest one (the least recently limited).
            if let Some(k) = map
                .iter()
                .max_by(|a, b| a.1.tokens.total_cmp(&b.1.tokens))
                .map(|(k, _)| k.clone())
            {
                map.remove(&k);
            }
        }
        let b = map.entry(key.to_string()).or_insert(Bucket {
            tokens: self.rate.capacity,
            last_ms: now_ms,
        });
        self.refill(b, now_ms);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let retry_ms = (1.0 - b.tokens) / self.rate.capacity * self.rate.window_ms;
            Err(((retry_ms / 1000.0).ceil() as u64).max(1))
        }
    }

    /// Drops buckets that have refilled completely.
    fn prune(&self, map: &mut HashMap<String, Bucket>, now_ms: i64) {
        map.retain(|_, b| {
            let mut b2 = *b;
            self.refill(&mut b2, now_ms);
            b2.tokens < self.rate.capacity
        });
    }

    pub fn len(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_burst_then_retry_after_six() {
        let l = RateLimiter::new(SEND_RATE);
        for i in 0..10 {
            assert_eq!(l.try_acquire("t", 1_000 + i), Ok(()));
        }
        // 10 ms into the burst, 10/60000*10 = 0.00167 tokens refilled; need 0.99833 → 5.99 s.
        assert_eq!(l.try_acquire("t", 1_010), Err(6));
        // After 6 s exactly one token is back.
        assert_eq!(l.try_acquire("t", 7_010), Ok(()));
        assert_eq!(l.try_acquire("t", 7_010), Err(6));
        // Half way: 3 s left.
        assert_eq!(l.try_acquire("t", 10_010), Err(3));
    }

    #[test]
    fn reload_burst_then_retry_after_twelve() {
        let l = RateLimiter::new(RELOAD_RATE);
        for _ in 0..5 {
            assert_eq!(l.try_acquire("t", 0), Ok(()));
        }
        assert_eq!(l.try_acquire("t", 0), Err(12));
        assert_eq!(l.try_acquire("t", 11_999), Err(1));
        assert_eq!(l.try_acquire("t", 12_000), Ok(()));
    }

    #[test]
    fn keys_are_independent() {
        let l = RateLimiter::new(RELOAD_RATE);
        for _ in 0..5 {
            l.try_acquire("a", 0).unwrap();
        }
        assert!(l.try_acquire("a", 0).is_err());
        assert!(l.try_acquire("b", 0).is_ok());
    }

    #[test]
    fn memory_is_bounded() {
        let l = RateLimiter::new(SEND_RATE);
        for i in 0..(MAX_BUCKETS * 3) {
            let _ = l.try_acquire(&format!("k{i}"), 0);
        }
        assert!(l.len() <= MAX_BUCKETS);
        // Once refilled, a new key prunes them all.
        let _ = l.try_acquire("late", 120_000);
        assert_eq!(l.len(), 1);
    }
}
