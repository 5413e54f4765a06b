//! Start-up warnings about certificate roles, shared by the relay and the
//! dispatcher (the checks themselves are `relaybox_tls::PeerRole`'s).

use relaybox_config::Config;
use relaybox_tls::{Marker, Role, TlsFiles};

/// Warns when unmarked peer certificates are accepted, and when our own
/// certificate carries no role (relaybox peers would refuse it).
pub(crate) fn warn_at_start(config: &Config, own: Role) {
    if config.tls.accept_unmarked_certificates {
        tracing::warn!(
            "[TLS] accept_unmarked_certificates = yes: peers whose certificate carries no relaybox role (made by \
             another CA, e.g. MediaProxy's) are accepted, and such a certificate could act in any role (relay, \
             dispatcher, management client); turn it off once every certificate comes from relaybox-ca"
        );
    }
    let files = TlsFiles::for_role(&config.tls.certs_path, own);
    if let Ok(Marker::Unmarked) = files.own_marker() {
        tracing::warn!(
            "{}: our certificate carries no relaybox role; relaybox peers refuse it unless they set \
             accept_unmarked_certificates = yes (relaybox-ca issue --kind {own} makes one that has it)",
            files.cert.display()
        );
    }
}
