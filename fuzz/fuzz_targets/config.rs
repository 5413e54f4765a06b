//! Everything that reads the operator's text: config.ini (MediaProxy's
//! dialect), the box's network.conf and system.conf, passports.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relaybox_config::{Config, NetworkSettings, Passport, SystemSettings};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = Config::parse(text, "fuzz.ini", std::path::Path::new("/etc/relaybox")) {
        let _ = format!("{config:?}");
    }
    let network = NetworkSettings::parse(text);
    if network.check().is_ok() {
        // A checked setting is written back and reads the same.
        let written = network.apply_to(text).expect("checked settings apply");
        assert_eq!(NetworkSettings::parse(&written).check().is_ok(), true, "{written:?}");
    }
    let system = SystemSettings::parse(text);
    if system.check().is_ok() {
        let written = system.apply_to(text).expect("checked settings apply");
        assert!(SystemSettings::parse(&written).check().is_ok(), "{written:?}");
    }
    let _ = Passport::parse(text);
});
