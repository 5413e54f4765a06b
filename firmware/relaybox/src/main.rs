//! `relaybox`: the relay, the dispatcher and their command-line tools in one
//! static binary. This crate owns the I/O: sockets, TLS sessions, timers and
//! signals. Protocol parsing lives in `relaybox-proto`, session logic in
//! `relaybox-core`, settings in `relaybox-config`, TLS set-up in
//! `relaybox-tls`; this crate only wires them to the operating system.
//!
//! Cargo features choose what one binary can run (all by default): `relay`,
//! `dispatcher` (with `accounting-sql` for the SQL backend), `web`, `clock`.
//! A subcommand that was left out is not in `--help`, and the binary
//! answers it with clap's "unrecognized subcommand" (exit status 2).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use relaybox_config::{Config, DEFAULT_CONFIG_PATH};

mod cli;
#[cfg(feature = "relay")]
mod clock;
/// The relay's local control socket for the web page; declared here so that
/// it builds on its own, started from `relay::run()`.
#[cfg(feature = "relay")]
#[path = "relay/control.rs"]
mod control;
#[cfg(feature = "dispatcher")]
mod dispatcher;
#[cfg(feature = "clock")]
mod ntp;
#[cfg(feature = "relay")]
mod relay;
#[cfg(any(feature = "relay", feature = "dispatcher"))]
mod trust;

#[derive(Parser)]
#[command(name = "relaybox", version, about = "MediaProxy-compatible media relay and dispatcher")]
struct Cli {
    /// MediaProxy-style config.ini.
    #[arg(long, short, global = true, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a media relay: connects to the configured dispatchers over TLS.
    #[cfg(feature = "relay")]
    Relay,
    /// Run a dispatcher: module socket, relay TLS port, management port.
    #[cfg(feature = "dispatcher")]
    Dispatcher,
    /// Check a config file and print the settings it resolves to.
    CheckConfig,
    /// List the sessions of every relay, from the dispatcher's management port.
    Sessions(QueryArgs),
    /// Summarise every connected relay, from the dispatcher's management port.
    Summary(QueryArgs),
    /// Keep the system clock right over SNTP (boxes without a real-time
    /// clock start in 1970, and TLS refuses certificates until it is set).
    #[cfg(feature = "clock")]
    Clock(ntp::ClockArgs),
    /// Serve the box's configuration page over HTTPS ([Web] section).
    #[cfg(feature = "web")]
    Web {
        #[command(subcommand)]
        action: Option<WebAction>,
    },
}

#[derive(clap::Args)]
struct QueryArgs {
    /// Print the dispatcher's JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Management address (default: [Dispatcher] listen_management).
    #[arg(long)]
    management: Option<std::net::SocketAddr>,
    /// Plain TCP even when management_use_tls is on.
    #[arg(long)]
    plain: bool,
}

#[cfg(feature = "web")]
#[derive(Subcommand)]
enum WebAction {
    /// Read a new page password from standard input (one line) and store its
    /// argon2 hash next to the config file (web.passwd, mode 0600).
    SetPassword,
}

#[cfg(any(feature = "relay", feature = "dispatcher", feature = "web", feature = "clock"))]
fn init_tracing(level: relaybox_config::LogLevel) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level.as_tracing_filter()));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none())
        .with_target(false)
        .init();
}

#[cfg(any(feature = "relay", feature = "dispatcher", feature = "web"))]
fn init_logging(level: relaybox_config::LogLevel, config: &Config) {
    init_tracing(level);
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
}

/// At a daemon's start: the soft descriptor limit raised to the hard one,
/// and a clear refusal when the settings cannot fit in it.
#[cfg(any(feature = "relay", feature = "dispatcher", feature = "web"))]
fn descriptors(daemon: &str, budget: &relaybox_limits::DescriptorBudget) -> anyhow::Result<()> {
    if let Err(e) = relaybox_limits::raise_and_check(daemon, budget) {
        tracing::error!("{daemon} not started: {e}");
        return Err(anyhow::anyhow!("{daemon} not started: {e}"));
    }
    Ok(())
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    if !path.exists() && path.as_os_str() == DEFAULT_CONFIG_PATH {
        return Ok(Config::default());
    }
    Config::load(path).with_context(|| format!("loading {}", path.display()))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    #[cfg(feature = "clock")]
    if let Command::Clock(args) = cli.command {
        // The clock needs no config file: a broken one must not stop it.
        init_tracing(relaybox_config::LogLevel::Info);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        return runtime.block_on(ntp::run(args));
    }
    let config = load(&cli.config)?;
    #[cfg(any(feature = "relay", feature = "dispatcher", feature = "web"))]
    let runtime = || tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime");
    match cli.command {
        #[cfg(feature = "clock")]
        Command::Clock(_) => unreachable!("handled above"),
        #[cfg(feature = "relay")]
        Command::Relay => {
            init_logging(config.relay.log_level, &config);
            descriptors("relay", &relay::descriptor_budget(&config))?;
            runtime()?.block_on(relay::run(config))
        }
        #[cfg(feature = "dispatcher")]
        Command::Dispatcher => {
            init_logging(config.dispatcher.log_level, &config);
            descriptors("dispatcher", &dispatcher::descriptor_budget(&config))?;
            runtime()?.block_on(dispatcher::run(config))
        }
        #[cfg(feature = "web")]
        Command::Web { action: None } => {
            init_logging(relaybox_config::LogLevel::Info, &config);
            let per_port = config.web.max_connections as u64;
            let budget = relaybox_limits::DescriptorBudget::new()
                .add("connections (2 ports × [Web] max_connections)", 2 * per_port)
                .add("listeners, files, the relay's control socket and the runtime", 32);
            descriptors("web", &budget)?;
            runtime()?.block_on(relaybox_web::run(cli.config.clone()))
        }
        #[cfg(feature = "web")]
        Command::Web { action: Some(WebAction::SetPassword) } => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).context("reading the password from standard input")?;
            let password = line.trim_end_matches(['\n', '\r']);
            let path = relaybox_web::set_password(&cli.config, password)?;
            eprintln!("password hash stored in {}", path.display());
            Ok(())
        }
        Command::Sessions(q) => {
            let target = cli::Target::from_config(&config, q.management, q.plain);
            cli::run(&config, &target, relaybox_proto::mgmt::MgmtCommand::Sessions, q.json)
        }
        Command::Summary(q) => {
            let target = cli::Target::from_config(&config, q.management, q.plain);
            cli::run(&config, &target, relaybox_proto::mgmt::MgmtCommand::Summary, q.json)
        }
        Command::CheckConfig => {
            println!("{config:#?}");
            Ok(())
        }
    }
}
