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
#[cfg(feature = "relay")]
mod firewall;
#[cfg(feature = "clock")]
mod ntp;
#[cfg(feature = "relay")]
mod relay;
#[cfg(any(feature = "relay", feature = "dispatcher"))]
mod trust;
mod update;
mod watchdog;

#[derive(Parser)]
#[command(name = "relaybox", version, about = "MediaProxy-compatible media relay and dispatcher")]
struct Cli {
    /// MediaProxy-style config.ini (the box's images set RELAYBOX_CONFIG to
    /// /config/relaybox.ini).
    #[arg(long, short, global = true, env = "RELAYBOX_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
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
    /// Print the shell completion script for SHELL (bash, zsh, fish, elvish,
    /// powershell) on standard output.
    Completions { shell: clap_complete::Shell },
    /// Write the manual pages (relaybox.1 and one per command) into DIR; the
    /// Debian package is built with them (cargo xtask deb).
    #[command(hide = true)]
    ManPages { dir: PathBuf },
    /// Firmware updates of the box: install a signed bundle into the other
    /// slot, show the slots, mark the running slot good, check its health,
    /// count a try at boot.
    Update {
        #[command(subcommand)]
        action: update::UpdateAction,
    },
    /// Program the box's firewall (nftables table inet relaybox_fw): the
    /// relay's ports everywhere, the web page on the LAN only.
    #[cfg(feature = "relay")]
    Firewall(firewall::FirewallArgs),
    /// Feed the hardware watchdog ([Watchdog]) while the relay answers on its
    /// control socket.
    Watchdog {
        /// Feed it as long as this process runs, without checking the relay
        /// (a box that runs no relay).
        #[arg(long)]
        always: bool,
    },
    /// The box's configuration directory (the config file's) as a whole:
    /// backup, restore, factory reset.
    #[cfg(feature = "web")]
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[cfg(feature = "web")]
#[derive(Subcommand)]
enum ConfigAction {
    /// Write a backup (tar) of the configuration to FILE ("-": standard output).
    Backup { file: PathBuf },
    /// Check a backup and stage it; the next boot replaces the configuration
    /// with it.
    Restore { file: PathBuf },
    /// Empty the configuration at the next boot (the defaults are written then).
    FactoryReset,
    /// Check a configuration directory as the box reads it (provisioning).
    Check { dir: PathBuf },
    /// At boot (init): a pending factory reset or restore, an interrupted
    /// certificate replacement.
    Boot,
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
    /// Make the page's self-signed certificate for this host name when there
    /// is none ([TLS] certs_path/web.crt); print its SHA-256 fingerprint.
    Certificate,
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

/// `completions` and `man-pages`: made from the command line's definition,
/// no config file needed.
fn documentation(command: &Command) -> Option<anyhow::Result<()>> {
    use clap::CommandFactory;
    match command {
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "relaybox", &mut script);
            Some(std::io::Write::write_all(&mut std::io::stdout(), &script).context("writing the script"))
        }
        Command::ManPages { dir } => Some(
            std::fs::create_dir_all(dir)
                .and_then(|()| clap_mangen::generate_to(Cli::command(), dir))
                .with_context(|| format!("writing the manual pages into {}", dir.display())),
        ),
        _ => None,
    }
}

/// `relaybox config ...` on the directory of `config_path`.
#[cfg(feature = "web")]
fn config_action(config_path: &std::path::Path, action: &ConfigAction) -> anyhow::Result<()> {
    use relaybox_web::backup;
    let dir = relaybox_web::auth::config_dir(config_path);
    match action {
        ConfigAction::Backup { file } => {
            let data = backup::backup(&dir)?;
            if file.as_os_str() == "-" {
                std::io::Write::write_all(&mut std::io::stdout(), &data)?;
            } else {
                relaybox_web::files::write_atomic(file, &data, 0o600)
                    .with_context(|| format!("writing {}", file.display()))?;
                eprintln!(
                    "backup of {} written to {} ({} bytes; it holds private keys)",
                    dir.display(),
                    file.display(),
                    data.len()
                );
            }
        }
        ConfigAction::Restore { file } => {
            let data = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            let names = backup::stage_restore(&dir, &data, backup::MAX_BACKUP)
                .with_context(|| format!("{} not restored", file.display()))?;
            eprintln!("backup checked and staged ({}); reboot to apply it", names.join(" "));
        }
        ConfigAction::FactoryReset => {
            backup::request_factory_reset(&dir)?;
            eprintln!("factory reset requested: {} is emptied at the next boot; reboot to apply it", dir.display());
        }
        ConfigAction::Check { dir } => {
            backup::check_dir(dir)?;
            eprintln!("{}: the box would accept this configuration", dir.display());
        }
        ConfigAction::Boot => {
            for line in backup::boot(&dir)? {
                println!("{line}");
            }
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(done) = documentation(&cli.command) {
        return done;
    }
    #[cfg(feature = "clock")]
    if let Command::Clock(args) = cli.command {
        // The clock needs no config file: a broken one must not stop it.
        init_tracing(relaybox_config::LogLevel::Info);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        return runtime.block_on(ntp::run(args));
    }
    if let Command::Update { action } = cli.command {
        // An update must stay possible when the settings do not load (the
        // new firmware may be the fix): the defaults serve then. The boot
        // check runs before the config partition is mounted and rcK's
        // tryboot reboot after it is unmounted: the defaults are theirs.
        let quiet = matches!(action, update::UpdateAction::BootCheck { .. } | update::UpdateAction::TrybootReboot);
        let config = load(&cli.config).unwrap_or_else(|e| {
            if !quiet {
                eprintln!("relaybox update: {e:#}; using the default settings");
            }
            Config::default()
        });
        return update::run(&config, action);
    }
    if let Command::Watchdog { always } = cli.command {
        // Nor the watchdog: with a broken file it feeds on the defaults, so
        // that the box does not reset in a loop over a typo.
        init_tracing(relaybox_config::LogLevel::Info);
        let config = load(&cli.config).unwrap_or_else(|e| {
            tracing::warn!("watchdog: {e:#}; using the default [Watchdog] and [Relay] control_socket");
            Config::default()
        });
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        return runtime.block_on(watchdog::run(config, always));
    }
    #[cfg(feature = "web")]
    if let Command::Config { action } = &cli.command {
        // No config file needed: a broken one must not stop a restore or a reset.
        return config_action(&cli.config, action);
    }
    let config = load(&cli.config)?;
    #[cfg(any(feature = "relay", feature = "dispatcher", feature = "web"))]
    let runtime = || tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime");
    match cli.command {
        Command::Completions { .. } | Command::ManPages { .. } | Command::Update { .. } | Command::Watchdog { .. } => {
            unreachable!("handled above")
        }
        #[cfg(feature = "web")]
        Command::Config { .. } => unreachable!("handled above"),
        #[cfg(feature = "clock")]
        Command::Clock(_) => unreachable!("handled above"),
        #[cfg(feature = "web")]
        Command::Web { action: Some(WebAction::Certificate) } => {
            for line in relaybox_web::ensure_certificate(&config.tls.certs_path)? {
                println!("{line}");
            }
            Ok(())
        }
        #[cfg(feature = "relay")]
        Command::Firewall(args) => firewall::run(&config, &args),
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
