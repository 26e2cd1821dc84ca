//! `gantry server`: its flags, its logging, its async runtime and its signals, around
//! [`gantry_server::serve`]. The configuration is resolved by [`gantry_server::config::load`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use gantry_server::LogFormat;

/// `gantry server`'s options. Every option can also be set in the configuration file and through a
/// `GANTRY_*` environment variable (flags win over the environment, which wins over the file).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The address to listen on (default `127.0.0.1:8080`; port 0 picks a free port). Env: `GANTRY_LISTEN`
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Where the server keeps its database, tokens and git mirrors (default `./gantry-data`). Env: `GANTRY_DATA_DIR`
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// `sqlite://PATH` or `postgres://...` (default: `sqlite://DATA_DIR/gantry.db`). Env: `GANTRY_DATABASE_URL`
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// How long a job stays leased to an agent without a heartbeat (default `30s`). Env: `GANTRY_LEASE_TIMEOUT`
    #[arg(long, value_name = "DURATION")]
    lease_timeout: Option<String>,
    /// `text` (default) or `json`. Env: `GANTRY_LOG_FORMAT`
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// The server's public URL, for links in commit statuses. Env: `GANTRY_EXTERNAL_URL`
    #[arg(long, value_name = "URL")]
    external_url: Option<String>,
    /// The configuration file (default: `gantry.toml` in the current directory, when it exists). Env: `GANTRY_CONFIG`
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl From<Args> for gantry_server::Args {
    fn from(a: Args) -> gantry_server::Args {
        gantry_server::Args {
            listen: a.listen,
            data_dir: a.data_dir,
            database_url: a.database_url,
            lease_timeout: a.lease_timeout,
            log_format: a.log_format,
            external_url: a.external_url,
            config: a.config,
        }
    }
}

/// Runs `gantry server` until SIGTERM or Ctrl-C; returns the process exit code.
///
/// # Errors
/// When it cannot start.
pub fn main(args: Args) -> anyhow::Result<u8> {
    let (config, generated) =
        gantry_server::config::load(&args.into(), &|k| std::env::var(k).ok())?;
    init_logging(config.log_format);
    if let Some(t) = &generated.admin_token {
        eprintln!(
            "gantry server: generated the admin token (stored in {}): {t}",
            config.data_dir.join("admin-token").display()
        );
    }
    if let Some(t) = &generated.registration_token {
        eprintln!(
            "gantry server: generated the registration token (stored in {}): {t}",
            config.data_dir.join("registration-token").display()
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let server = gantry_server::serve(config).await?;
        eprintln!("gantry server: listening on {}", server.url());
        let stop = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = term.recv() => {}
                r = tokio::signal::ctrl_c() => r?,
            }
            Ok::<(), std::io::Error>(())
        };
        stop.await.context("cannot wait for signals")?;
        tracing::info!("shutting down");
        tokio::time::timeout(Duration::from_secs(30), server.shutdown())
            .await
            .ok();
        Ok::<u8, anyhow::Error>(0)
    })
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("GANTRY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
