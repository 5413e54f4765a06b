//! Accounting against real PostgreSQL and MariaDB servers from Debian's
//! packages, started by the test in a temp dir on 127.0.0.1. The database is
//! stopped mid-run: every record must still arrive once it is back.

#![cfg(feature = "database")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use relaybox_accounting::{Accounting, Backend, DatabaseBackend, DatabaseSettings, Retry};
use relaybox_proto::SessionStats;
use sqlx::Row;

fn stats(call_id: &str) -> SessionStats {
    SessionStats {
        call_id: call_id.into(),
        from_tag: "ft".into(),
        from_uri: "sip:alice@example.com".into(),
        to_tag: Some("tt".into()),
        to_uri: "sip:bob@example.com".into(),
        start_time: Some(1_700_000_000.0),
        duration: 30,
        caller_ua: "A".into(),
        callee_ua: "B".into(),
        username: None,
        relay_ip: Some("203.0.113.1".into()),
        dialog_id: None,
        timed_out: None,
        all_streams_ice: None,
        streams: vec![],
    }
}

fn settings(dburi: &str) -> DatabaseSettings {
    DatabaseSettings {
        dburi: dburi.into(),
        sessions_table: "media_sessions".into(),
        callid_column: "call_id".into(),
        fromtag_column: "from_tag".into(),
        totag_column: "to_tag".into(),
        info_column: "info".into(),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_port(port: u16) {
    for _ in 0..300 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("server on port {port} did not come up");
}

struct Server {
    child: Option<Child>,
    start: Box<dyn Fn() -> Child>,
    /// Shuts the server down and returns once it is down; `None`: SIGTERM
    /// to the child (MariaDB's normal shutdown closes every connection).
    stop: Option<Box<dyn Fn()>>,
    port: u16,
}

impl Server {
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            match &self.stop {
                Some(stop) => stop(),
                None => {
                    let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
                }
            }
            let _ = c.wait();
        }
    }
    fn start(&mut self) {
        self.child = Some((self.start)());
        wait_port(self.port);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn postgres(dir: &Path) -> Server {
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .expect("postgresql installed")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .max()
        .unwrap();
    let data = dir.join("pg");
    std::fs::create_dir_all(&data).unwrap();
    assert!(Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir).status().unwrap().success());
    let ok = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join("initdb"))
        .args(["-A", "trust", "-U", "postgres", "-D"])
        .arg(&data)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success(), "initdb failed");
    let port = free_port();
    let (bin2, data2, sock) = (bin.clone(), data.clone(), dir.to_path_buf());
    // The child is runuser, and SIGTERM is PostgreSQL's "smart" shutdown,
    // which lets open connections (the backend's pool) go on working:
    // pg_ctl's fast shutdown ends them and waits until the server is down.
    let (bin3, data3) = (bin.clone(), data.clone());
    let mut s = Server {
        child: None,
        stop: Some(Box::new(move || {
            let ok = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(bin3.join("pg_ctl"))
                .arg("-D")
                .arg(&data3)
                .args(["-m", "fast", "-w", "-t", "60", "stop"])
                .stdout(Stdio::null())
                .status()
                .unwrap();
            if !ok.success() {
                eprintln!("pg_ctl stop failed ({ok}); the server may still be up");
            }
        })),
        port,
        start: Box::new(move || {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(bin2.join("postgres"))
                .arg("-D")
                .arg(&data2)
                .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1", "-k"])
                .arg(&sock)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        }),
    };
    s.start();
    s
}

fn mariadb(dir: &Path) -> Server {
    let data: PathBuf = dir.join("my");
    let ok = Command::new("mariadb-install-db")
        .args(["--user=root", "--auth-root-authentication-method=normal", "--skip-test-db"])
        .arg(format!("--datadir={}", data.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success(), "mariadb-install-db failed");
    let port = free_port();
    let sock = dir.join("my.sock");
    let mut s = Server {
        child: None,
        stop: None,
        port,
        start: Box::new(move || {
            Command::new("mariadbd")
                .arg("--no-defaults")
                .arg("--user=root")
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--socket={}", sock.display()))
                .arg(format!("--port={port}"))
                .arg("--bind-address=127.0.0.1")
                .arg("--skip-grant-tables")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        }),
    };
    s.start();
    s
}

async fn wait_delivered(acc: &Accounting, timeout: Duration) {
    let until = tokio::time::Instant::now() + timeout;
    while acc.pending() > 0 {
        assert!(tokio::time::Instant::now() < until, "{} records still spooled", acc.pending());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn count(db: &DatabaseBackend) -> i64 {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM media_sessions").fetch_one(db.pool()).await.unwrap();
    row.try_get::<i64, _>(0).unwrap()
}

/// The scenario both servers go through.
async fn survive_an_outage(mut server: Server, dburi: &str, spool: &Path) {
    let db = Arc::new(DatabaseBackend::new(settings(dburi)).unwrap());
    let retry = Retry { first: Duration::from_millis(100), max: Duration::from_millis(500) };
    let acc = Accounting::start(spool, vec![db.clone() as Arc<dyn Backend>], retry, 1000).unwrap();
    for i in 0..5 {
        acc.record(&stats(&format!("before-{i}")));
    }
    wait_delivered(&acc, Duration::from_secs(30)).await;
    assert_eq!(count(&db).await, 5);

    server.stop();
    for i in 0..5 {
        acc.record(&stats(&format!("during-{i}")));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(acc.pending(), 5, "records made while the database is down stay spooled");

    server.start();
    wait_delivered(&acc, Duration::from_secs(60)).await;
    assert_eq!(count(&db).await, 10, "every record arrived after the outage");
    let row =
        sqlx::query("SELECT info FROM media_sessions WHERE call_id = 'during-3'").fetch_one(db.pool()).await.unwrap();
    let info: String = match row.try_get::<String, _>(0) {
        Ok(s) => s,
        Err(_) => String::from_utf8(row.try_get::<Vec<u8>, _>(0).unwrap()).unwrap(),
    };
    assert_eq!(SessionStats::from_json(&info).unwrap().call_id, "during-3");
    eprintln!("{dburi}: 10/10 records delivered across a database outage");
}

#[tokio::test]
#[ignore = "starts PostgreSQL: run by ci/test.sh as root"]
async fn postgresql_outage_loses_nothing_and_missing_rights_print_the_sql() {
    let dir = tempfile::tempdir().unwrap();
    let server = postgres(dir.path());
    let port = server.port;
    let admin = format!("postgres://postgres@127.0.0.1:{port}/postgres");

    // A user without CREATE on the schema: the error names the statement.
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&admin).await.unwrap();
    sqlx::query("CREATE ROLE weak LOGIN").execute(&pool).await.unwrap();
    sqlx::query("REVOKE CREATE ON SCHEMA public FROM PUBLIC").execute(&pool).await.unwrap();
    let weak = DatabaseBackend::new(settings(&format!("postgres://weak@127.0.0.1:{port}/postgres"))).unwrap();
    assert!(weak.insert(&stats("x")).await.is_err(), "no table, no rights: the insert fails (and stays spooled)");
    let why = weak.schema_error().expect("the schema error is kept");
    assert!(why.contains("CREATE TABLE IF NOT EXISTS media_sessions"), "{why}");

    survive_an_outage(server, &admin, &dir.path().join("spool")).await;
}

#[tokio::test]
#[ignore = "starts MariaDB: run by ci/test.sh as root"]
async fn mariadb_outage_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = mariadb(dir.path());
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&format!("mysql://root@127.0.0.1:{}/mysql", server.port)).await.unwrap();
    sqlx::query("CREATE DATABASE IF NOT EXISTS acct").execute(&pool).await.unwrap();
    pool.close().await;
    let uri = format!("mysql://root@127.0.0.1:{}/acct", server.port);
    survive_an_outage(server, &uri, &dir.path().join("spool")).await;
}
