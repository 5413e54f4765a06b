//! relaybox-e2e: the end-to-end test rig. It owns the network namespaces of
//! a test (two phones behind masquerading NAT routers, a server, an
//! "internet" bridge), nftables packet counters on the phones, the SIP proxy
//! (Kamailio or OpenSIPS with the `mediaproxy` module, each running its
//! reference configuration from `examples/`), SIPp callers and callees, and our `relaybox`
//! dispatcher and relays started from the cargo target directory. It only
//! drives the binaries from the outside (command line, config files, the
//! module socket, the management port, logs) and must not link to or reach
//! into the other crates: the tests judge the product as a user would.
//!
//! Tests that need root, Kamailio and SIPp are `#[ignore]`d and run by
//! `ci/test.sh` with `--include-ignored`. Everything is torn down on drop,
//! also when a test panics; namespace names carry the test process's pid, so
//! tests can run in parallel and leftovers of a killed run are removed by the
//! next one.

pub mod call;
pub mod counters;
pub mod netns;
pub mod process;
pub mod proxy;
pub mod relaybox;
pub mod rig;
pub mod sipp;
pub mod topology;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

pub use call::{Call, CallReport, CallSpec, MediaPath};
pub use proxy::{Proxy, ProxyOptions};
pub use relaybox::{Binaries, RelaySettings};
pub use rig::{Rig, SessionWatch};
pub use sipp::CallKind;
pub use topology::Side;

/// Debian packages the rig needs at run time.
pub const PACKAGES: &str = "iproute2 nftables procps kamailio kamailio-extra-modules sip-tester";

/// Finds `name` in `$ENV_VAR`, `$PATH`, /usr/sbin, /sbin or /usr/local/sbin
/// (a root PATH under sudo or cargo may lack the sbin directories).
pub fn find_program(name: &str, env_var: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env_var) {
        return Ok(p.into());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("`{name}` not found (apt-get install {PACKAGES}, or set {env_var})"))
}

/// Replaces every `{{NAME}}` of `vars` in `template`; fails if a
/// placeholder is left.
pub fn render_template(template: &str, vars: &[(&str, String)]) -> Result<String> {
    let mut out = template.to_owned();
    for (name, value) in vars {
        out = out.replace(&format!("{{{{{name}}}}}"), value);
    }
    if let Some(start) = out.find("{{") {
        let rest = &out[start..];
        let end = rest.find("}}").map(|e| e + 2).unwrap_or(rest.len().min(40));
        bail!("template placeholder {} has no value", &rest[..end]);
    }
    Ok(out)
}

/// Root, the tools and the pcap: fails with the package list when missing.
#[allow(unsafe_code)]
pub fn check_prerequisites() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("end-to-end tests need root (network namespaces, nftables)");
    }
    for (name, env) in [("ip", "IP"), ("nft", "NFT"), ("sysctl", "SYSCTL"), ("kamailio", "KAMAILIO"), ("sipp", "SIPP")]
    {
        find_program(name, env)?;
    }
    proxy::kamailio_module_dir()?;
    sipp::pcap_stats(&sipp::pcap_path())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_fills_and_refuses_leftovers() {
        let vars = [("A", "1".to_string()), ("B", "two".to_string())];
        assert_eq!(render_template("x={{A}} y={{B}} {{A}}", &vars).unwrap(), "x=1 y=two 1");
        let err = render_template("x={{A}} z={{C}}", &vars).unwrap_err().to_string();
        assert!(err.contains("{{C}}"), "{err}");
    }
}
