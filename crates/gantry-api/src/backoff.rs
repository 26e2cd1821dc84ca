//! Capped exponential backoff, the one used by the agent (calls that wait for the server to come
//! back), the server's delivery processor (retries of failed deliveries) and commit statuses (posts
//! to a forge). Only delays: the callers sleep.

use std::time::Duration;

/// Delays that start at `first` and double up to `cap`; with [`Backoff::with_jitter`], each one has
/// up to a quarter added at random, so that many clients do not knock on a restarted server at the
/// same instant.
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    jitter: bool,
    next: Duration,
}

impl Backoff {
    /// Delays from `first` (at most `cap`), doubling up to `cap`, without jitter.
    #[must_use]
    pub fn new(first: Duration, cap: Duration) -> Backoff {
        Backoff {
            first,
            cap,
            jitter: false,
            next: first.min(cap),
        }
    }

    /// The same delays, each with up to a quarter added at random.
    #[must_use]
    pub fn with_jitter(self) -> Backoff {
        Backoff {
            jitter: true,
            ..self
        }
    }

    /// The delay after failed attempt number `attempt` (1 for the first), without jitter: `first`
    /// doubled for each further attempt, capped.
    #[must_use]
    pub fn after_attempt(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(30);
        self.first.saturating_mul(1 << doublings).min(self.cap)
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = self.next.saturating_mul(2).min(self.cap);
        if self.jitter {
            base + base.mul_f64(jitter() / 4.0)
        } else {
            base
        }
    }

    /// Starts over from the first delay.
    pub fn reset(&mut self) {
        self.next = self.first.min(self.cap);
    }
}

/// A number in `[0, 1)` that differs between calls and processes (no need for a good generator):
/// each `RandomState` has new keys, drawn at random once per thread and then counted up.
fn jitter() -> f64 {
    use std::hash::BuildHasher;
    let h = std::collections::hash_map::RandomState::new().hash_one(0u8);
    #[allow(clippy::cast_precision_loss)]
    let x = (h >> 11) as f64 / (1u64 << 53) as f64;
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_up_to_the_cap_with_bounded_jitter() {
        let mut b = Backoff::new(250 * MS, 2000 * MS).with_jitter();
        for base in [250, 500, 1000, 2000, 2000, 2000] {
            let d = b.next_delay();
            let base = base * MS;
            assert!(d >= base && d <= base + base / 4, "{d:?} for {base:?}");
        }
        b.reset();
        assert!(b.next_delay() <= (250 + 63) * MS);
        let draws: std::collections::HashSet<u64> = (0..8).map(|_| jitter().to_bits()).collect();
        assert!(draws.len() > 1, "the jitter changes between calls");
    }

    #[test]
    fn without_jitter_the_delays_are_exact() {
        let mut b = Backoff::new(MS * 1000, Duration::MAX);
        let delays: Vec<_> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [1000, 2000, 4000, 8000]);
        let b = Backoff::new(2000 * MS, 10_000 * MS);
        let delays: Vec<_> = (1..=5).map(|n| b.after_attempt(n).as_millis()).collect();
        assert_eq!(delays, [2000, 4000, 8000, 10_000, 10_000]);
        assert_eq!(b.after_attempt(0), 2000 * MS);
        assert_eq!(b.after_attempt(u32::MAX), 10_000 * MS);
        assert_eq!(Backoff::new(5000 * MS, 1000 * MS).next_delay(), 1000 * MS);
    }
}
