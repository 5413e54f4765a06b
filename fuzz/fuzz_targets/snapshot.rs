//! The relay's session snapshot (`state_file`) as read back at start: a
//! damaged or hostile file is refused or restored into a consistent table,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relaybox_core::{CoreConfig, SessionTable, Snapshot};

fuzz_target!(|data: &[u8]| {
    let Ok(snapshot) = Snapshot::decode(data) else { return };
    let config = CoreConfig { port_range: (20000, 20200), max_sessions: 64, ..CoreConfig::default() };
    let mut table = SessionTable::restore(config, snapshot, 1_000_000);
    while table.poll_event().is_some() {}
    assert_eq!(table.ports_in_use() + table.ports_free(), 200, "every port is held or free");
    table.handle_timeout(u64::MAX);
    while table.poll_event().is_some() {}
    assert_eq!(table.session_count(), 0, "every restored session ends by itself");
    assert_eq!(table.ports_free(), 200);
});
