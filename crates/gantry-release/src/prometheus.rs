//! A client of Prometheus's HTTP API: instant queries (`/api/v1/query`) and range queries
//! (`/api/v1/query_range`), reduced to the sample values.
//!
//! An answer that is not a success (unreachable, a timeout, a non-2xx status, `"status": "error"`,
//! a body that is not the API's JSON) is a [`QueryError`]; an empty result is an empty list, which
//! the caller calls inconclusive.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

/// A query that could not be answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryError(pub String);

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for QueryError {}

/// One Prometheus server, over a shared HTTP client.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    timeout: Duration,
}

impl Client {
    /// The server at `address` (`http://127.0.0.1:9090`, maybe with a path prefix); each query
    /// gives up after `timeout`.
    #[must_use]
    pub fn new(http: reqwest::Client, address: &str, timeout: Duration) -> Client {
        Client {
            http,
            base: address.trim_end_matches('/').to_string(),
            timeout,
        }
    }

    /// The values of an instant query at the server's now: one per series of a vector, or the
    /// scalar.
    ///
    /// # Errors
    /// The server could not be reached or did not answer with a result.
    pub async fn instant(&self, query: &str) -> Result<Vec<f64>, QueryError> {
        self.get("query", &[("query", query.to_string())]).await
    }

    /// Every value of every series of a range query from `start` to `end`, every `step`.
    ///
    /// # Errors
    /// As [`Client::instant`].
    pub async fn range(
        &self,
        query: &str,
        start: SystemTime,
        end: SystemTime,
        step: Duration,
    ) -> Result<Vec<f64>, QueryError> {
        let secs = |t: SystemTime| {
            let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
            format!("{}.{:03}", d.as_secs(), d.subsec_millis())
        };
        let params = [
            ("query", query.to_string()),
            ("start", secs(start)),
            ("end", secs(end)),
            ("step", format!("{}ms", step.as_millis().max(1))),
        ];
        self.get("query_range", &params).await
    }

    async fn get(&self, endpoint: &str, params: &[(&str, String)]) -> Result<Vec<f64>, QueryError> {
        let url = format!("{}/api/v1/{endpoint}", self.base);
        let answer = self
            .http
            .get(&url)
            .query(params)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| QueryError(format!("{url}: {}", chain(&e))))?;
        let status = answer.status();
        let body = answer
            .bytes()
            .await
            .map_err(|e| QueryError(format!("{url}: {}", chain(&e))))?;
        parse(&body).map_err(|e| {
            if status.is_success() {
                QueryError(format!("{url}: {e}"))
            } else {
                QueryError(format!("{url}: {status}: {e}"))
            }
        })
    }
}

/// An error with its sources, as `a: b: c`.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    data: Option<Data>,
    error: Option<String>,
    #[serde(rename = "errorType")]
    error_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum Data {
    Vector(Vec<Instant>),
    Matrix(Vec<Range>),
    Scalar((f64, String)),
    String(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
struct Instant {
    value: (f64, String),
}

#[derive(Deserialize)]
struct Range {
    values: Vec<(f64, String)>,
}

/// The values of an API answer's body.
fn parse(body: &[u8]) -> Result<Vec<f64>, String> {
    let answer: Answer = serde_json::from_slice(body).map_err(|e| {
        let start = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        format!("not a Prometheus API answer ({e}): {start}")
    })?;
    if answer.status != "success" {
        return Err(format!(
            "{}: {}",
            answer.error_type.as_deref().unwrap_or("error"),
            answer.error.as_deref().unwrap_or("no message")
        ));
    }
    let number = |(_, v): &(f64, String)| {
        v.parse::<f64>()
            .map_err(|_| format!("`{v}` is not a sample value"))
    };
    match answer.data {
        None => Err("a success without data".into()),
        Some(Data::Vector(v)) => v.iter().map(|s| number(&s.value)).collect(),
        Some(Data::Matrix(m)) => m.iter().flat_map(|s| &s.values).map(number).collect(),
        Some(Data::Scalar(s)) => Ok(vec![number(&s)?]),
        Some(Data::String(_)) => Err("the query gives a string, not a number".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_each_result_type() {
        let vector = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"code":"200"},"value":[1700000000.5,"0.25"]},
            {"metric":{"code":"500"},"value":[1700000000.5,"NaN"]}]}}"#;
        let v = parse(vector).unwrap();
        assert_eq!(v[0], 0.25);
        assert!(v[1].is_nan());
        let scalar =
            br#"{"status":"success","data":{"resultType":"scalar","result":[1700000000,"+Inf"]}}"#;
        assert_eq!(parse(scalar).unwrap(), [f64::INFINITY]);
        let matrix = br#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{},"values":[[1,"1"],[2,"2"]]},{"metric":{},"values":[[1,"3"]]}]}}"#;
        assert_eq!(parse(matrix).unwrap(), [1.0, 2.0, 3.0]);
        let empty = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert!(parse(empty).unwrap().is_empty());
    }

    #[test]
    fn errors_say_why() {
        let bad = br#"{"status":"error","errorType":"bad_data","error":"parse error at char 4"}"#;
        assert_eq!(parse(bad).unwrap_err(), "bad_data: parse error at char 4");
        let html = b"<html>502 Bad Gateway</html>";
        assert!(
            parse(html)
                .unwrap_err()
                .starts_with("not a Prometheus API answer")
        );
        let string = br#"{"status":"success","data":{"resultType":"string","result":[1,"x"]}}"#;
        assert!(parse(string).unwrap_err().contains("a string"));
    }
}
