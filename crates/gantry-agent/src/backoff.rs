//! Capped exponential backoff with jitter, for calls that wait for the server to come back.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The first delay.
const FIRST: Duration = Duration::from_millis(250);
/// The longest delay (before jitter).
const CAP: Duration = Duration::from_secs(5);

/// Delays that double from [`FIRST`] up to [`CAP`], each with up to a quarter added at random so that
/// many agents do not knock on a restarted server at the same instant.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    cap: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new(CAP)
    }
}

impl Backoff {
    /// Delays capped at `cap`.
    pub(crate) fn new(cap: Duration) -> Backoff {
        Backoff {
            next: FIRST.min(cap),
            cap,
        }
    }

    /// The next delay.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.cap);
        base + base.mul_f64(jitter() / 4.0)
    }

    /// Starts over from the first delay.
    pub(crate) fn reset(&mut self) {
        self.next = FIRST.min(self.cap);
    }

    /// Sleeps for the next delay.
    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }
}

/// A number in `[0, 1)` that differs between calls and processes (no need for a good generator).
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    #[allow(clippy::cast_precision_loss)]
    let x = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_bounded_jitter() {
        let mut b = Backoff::new(Duration::from_secs(2));
        let bases = [250, 500, 1000, 2000, 2000, 2000];
        for base in bases {
            let d = b.next_delay();
            let base = Duration::from_millis(base);
            assert!(d >= base && d <= base + base / 4, "{d:?} for {base:?}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(250 + 63));
    }
}
