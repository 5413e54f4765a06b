//! Bad input on the relay link, from both ends: a hand-driven relay talks
//! to the real dispatcher, and a hand-driven dispatcher to the real relay,
//! over real mutual TLS.

// Needs the relay feature, the first test also the dispatcher (all are on
// by default).
#![cfg(feature = "relay")]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use relaybox_tls::{ClientAuth, PeerRole, Role, TlsFiles};

fn read_line<S: std::io::Read>(r: &mut BufReader<S>) -> String {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    line
}

/// Reads lines until an empty one; returns them.
#[cfg(feature = "dispatcher")]
fn read_frame<S: std::io::Read>(r: &mut BufReader<S>) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let l = read_line(r);
        assert!(!l.is_empty(), "connection closed mid-frame after {lines:?}");
        let l = l.trim_end().to_string();
        if l.is_empty() {
            return lines;
        }
        lines.push(l);
    }
}

#[test]
#[cfg(feature = "dispatcher")]
fn dispatcher_survives_garbage_from_a_relay() {
    let mut rig = Rig::new();
    let d = rig.dispatcher("max_relay_line = 65536");
    let (certs, _) = rig.certs("fake-relay", "relay1");
    let config =
        relaybox_tls::client_config(&TlsFiles::for_role(&certs, Role::Relay), PeerRole::strict(Role::Dispatcher))
            .unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", rig.relay_port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::clone(&config), name).unwrap();
    let mut link = BufReader::new(rustls::StreamOwned::new(conn, tcp));

    // On connect the dispatcher asks for the relay's summary (its media
    // address) and the sessions it holds.
    assert_eq!(read_frame(&mut link), vec!["summary 0"]);
    link.get_mut()
        .write_all(b"0 {\"ip\":\"127.0.0.9\",\"version\":\"x\",\"status\":\"active\",\"uptime\":1,\"session_count\":0,\"stream_count\":{},\"bps_relayed\":0}\r\n")
        .unwrap();
    assert_eq!(read_frame(&mut link), vec!["sessions 1"]);
    link.get_mut().write_all(b"1 []\r\n").unwrap();
    link.get_mut().write_all(b"this is garbage\r\nexpired {not json\r\n99 answer to nothing\r\n").unwrap();
    let mut big = vec![b'y'; 100_000];
    big.extend_from_slice(b"\r\nping\r\n");
    link.get_mut().write_all(&big).unwrap();
    link.get_mut().flush().unwrap();
    assert_eq!(read_line(&mut link), "pong\r\n", "link must survive the garbage");

    // The link still carries calls.
    let socket = rig.socket.clone();
    let module = std::thread::spawn(move || {
        let mut m = Module::connect(&socket);
        m.request(&update("request", "via-fake", 1, "", "audio:127.0.0.1:4000:sendrecv:ice=no")).0
    });
    let frame = read_frame(&mut link);
    assert_eq!(frame[0], "update 2");
    assert!(frame.contains(&"call_id: via-fake".to_string()), "{frame:?}");
    link.get_mut().write_all(b"2 127.0.0.1 41000\r\n").unwrap();
    link.get_mut().flush().unwrap();
    assert_eq!(module.join().unwrap(), "127.0.0.1 41000\r\n");
    let log = d.log_text();
    assert!(log.contains("unparsable line"), "{log}");
    assert!(log.contains("bad line"), "the oversized line is reported: {log}");
    assert!(log.contains("media_ip=127.0.0.9"), "the media address comes from the summary: {log}");
}

#[test]
fn relay_answers_error_to_bad_commands_and_keeps_working() {
    let rig = Rig::new();
    let mut rig = rig;
    let (certs, _) = rig.certs("fake-dispatcher", "relay1");
    let server = relaybox_tls::server_config(
        &TlsFiles::for_role(&certs, Role::Dispatcher),
        ClientAuth::Required,
        PeerRole::strict(Role::Relay),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    rig.relay_port = listener.local_addr().unwrap().port();
    let cfg = rig.relay_config(&certs, free_port_range(10), "keepalive_interval = 3600");
    let relay = rig.spawn("relay", &cfg);
    let (tcp, _) = listener.accept().unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let conn = rustls::ServerConnection::new(Arc::clone(&server)).unwrap();
    let mut link = BufReader::new(rustls::StreamOwned::new(conn, tcp));

    let w = |link: &mut BufReader<_>, b: &[u8]| {
        let s: &mut rustls::StreamOwned<rustls::ServerConnection, TcpStream> = link.get_mut();
        s.write_all(b).unwrap();
        s.flush().unwrap();
    };
    w(&mut link, b"garbage without seq\r\n\r\n");
    w(&mut link, b"frobnicate 5\r\n\r\n");
    assert_eq!(read_line(&mut link), "5 error\r\n");
    w(&mut link, b"update 6\r\ncall_id: x\r\n\r\n");
    assert_eq!(read_line(&mut link), "6 error\r\n");
    let mut big = vec![b'z'; 200_000];
    big.extend_from_slice(b"\r\n\r\n");
    w(&mut link, &big);
    w(&mut link, b"summary 7\r\n\r\n");
    let summary = read_line(&mut link);
    assert!(summary.starts_with("7 {"), "{summary}");
    assert!(summary.contains("\"status\":\"active\""), "{summary}");
    let log = relay.log_text();
    assert!(log.contains("bad command"), "{log}");
}
