//! The agent's backoff for calls that wait for the server to come back: [`gantry_api::backoff`]'s
//! delays from 250 ms, doubling up to 5 s, with jitter.

use std::time::Duration;

/// Capped exponential backoff with jitter, and a sleep.
#[derive(Debug)]
pub(crate) struct Backoff(gantry_api::backoff::Backoff);

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff(
            gantry_api::backoff::Backoff::new(Duration::from_millis(250), Duration::from_secs(5))
                .with_jitter(),
        )
    }
}

impl Backoff {
    /// Starts over from the first delay.
    pub(crate) fn reset(&mut self) {
        self.0.reset();
    }

    /// Sleeps for the next delay.
    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.0.next_delay()).await;
    }
}
