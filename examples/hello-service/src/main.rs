//! A tiny HTTP service: `GET /healthz` answers `ok`, `GET /hello?name=X` answers a greeting.
//! Standard library only, so that the example builds anywhere Rust does.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

fn respond(path: &str) -> (u16, String) {
    match path.split_once('?') {
        _ if path == "/healthz" => (200, "ok".to_string()),
        Some(("/hello", query)) => {
            let name = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("name="))
                .unwrap_or("world");
            (200, format!("hello, {name}"))
        }
        None if path == "/hello" => (200, "hello, world".to_string()),
        _ => (404, "not found".to_string()),
    }
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--self-check") {
        let (code, body) = respond("/hello?name=gantry");
        println!("self-check: {code} {body}");
        return if code == 200 {
            Ok(())
        } else {
            Err(std::io::Error::other("self-check failed"))
        };
    }
    let addr = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:8081".to_string());
    let listener = TcpListener::bind(&addr)?;
    eprintln!("listening on {addr}");
    for stream in listener.incoming() {
        let mut stream = stream?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line)?;
        let path = line.split_whitespace().nth(1).unwrap_or("/");
        let (code, body) = respond(path);
        write!(
            stream,
            "HTTP/1.1 {code} OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::respond;

    #[test]
    fn health() {
        assert_eq!(respond("/healthz"), (200, "ok".to_string()));
    }

    #[test]
    fn greets_by_name() {
        assert_eq!(respond("/hello?name=ada").1, "hello, ada");
        assert_eq!(respond("/hello").1, "hello, world");
    }

    #[test]
    fn unknown_paths_are_404() {
        assert_eq!(respond("/nope").0, 404);
    }
}
