//! HTTP checks: one `GET` per measurement; a good answer has the expected status within the timeout.
//! A wrong status, a refused connection and a timeout are all bad answers (`Phase::Fail`); the
//! check fails the verification after `consecutive_failures` of them in a row (see `analysis`).

use gantry_pipeline::verify::HttpCheck;

use crate::analysis::Phase;
use crate::{Kind, Measurement};

/// Asks `check.url` once; the measurement's value is the status, if an answer came.
pub async fn probe(client: &reqwest::Client, check: &HttpCheck) -> Measurement {
    let answer = client.get(&check.url).timeout(check.timeout).send().await;
    let threshold = format!("status {}", check.expect_status);
    let (phase, value, detail) = match answer {
        Ok(a) => {
            let status = a.status().as_u16();
            let phase = if status == check.expect_status {
                Phase::Pass
            } else {
                Phase::Fail
            };
            (phase, Some(f64::from(status)), None)
        }
        Err(e) if e.is_timeout() => (
            Phase::Fail,
            None,
            Some(format!("no answer within {:?}", check.timeout)),
        ),
        Err(e) => (Phase::Fail, None, Some(crate::prometheus::chain(&e))),
    };
    Measurement::new(Kind::Http, &check.url, value, threshold, phase, detail)
}
