//! Every route of the page over real HTTPS, in-process against a temp
//! config dir: authentication, sessions, CSRF and Origin checks, the
//! settings form (validation, atomic save, rollback, apply), rate limiting,
//! body limits, path traversal, the HTTP redirect, status, metrics,
//! certificates and network pages.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use relaybox_config::Config;

fn parses(text: &str) -> Config {
    Config::parse(text, "config.ini", Path::new("/tmp")).unwrap()
}

#[test]
fn every_page_requires_a_login() {
    let web = Web::start("");
    for path in [
        "/status",
        "/settings",
        "/certs",
        "/network",
        "/certs/file/ca.pem",
        "/",
        "/status?x=1",
        "/logs",
        "/logs/saved/previous.log",
        "/backup",
        "/backup/download",
    ] {
        let r = web.get(path, None);
        if path == "/" {
            assert_eq!(r.header("location"), Some("/status"));
            continue;
        }
        assert_eq!(r.status, 303, "{path}");
        assert_eq!(r.header("location"), Some("/login"), "{path}");
    }
    assert_eq!(web.get("/api/status", None).status, 401);
    assert_eq!(web.get("/metrics", None).status, 401);
    let forged = Session { id: "0".repeat(64), csrf: String::new() };
    assert_eq!(web.get("/status", Some(&forged)).status, 303);
    for path in [
        "/settings",
        "/settings/apply",
        "/settings/rollback",
        "/certs/upload",
        "/certs/csr",
        "/logout",
        "/network",
        "/system",
        "/system/reboot",
        "/backup/restore",
        "/backup/factory-reset",
    ] {
        let r = web.req("POST", path, &[], &form(&[("port_range", "50000:50100")]));
        assert_eq!(r.status, 401, "{path}");
    }
    assert!(web.config_text().contains("port_range = 40000:40100"));
    let css = web.get("/static/style.css", None);
    assert_eq!(css.status, 200);
    assert!(css.header("content-type").unwrap().starts_with("text/css"));
    let login = web.get("/login", None);
    assert!(login.header("content-security-policy").unwrap().contains("default-src 'self'"));
    assert_eq!(login.header("x-frame-options"), Some("DENY"));
}

#[test]
fn login_and_logout() {
    let web = Web::start("");
    let wrong = web.try_login("not the password");
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("Wrong password"));
    assert!(wrong.cookie("relaybox_session").is_none());

    let ok = web.try_login(PASSWORD);
    assert_eq!(ok.status, 303);
    let set = ok.set_cookies().into_iter().find(|c| c.starts_with("relaybox_session=")).unwrap().to_string();
    for attr in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "{set}");
    }
    let id = ok.cookie("relaybox_session").unwrap();
    assert_eq!(id.len(), 64, "256-bit id as hex");
    let s = web.login();
    assert_ne!(s.id, id, "every login gets a new id");
    let status = web.get("/status", Some(&s));
    assert_eq!(status.status, 200);
    assert!(status.body.contains("Log out"));

    let no_token = web.post("/logout", &s, &[]);
    assert_eq!(no_token.status, 403);
    let out = web.post("/logout", &s, &[("csrf", &s.csrf)]);
    assert_eq!(out.status, 303);
    assert_eq!(out.header("location"), Some("/login"));
    assert!(out.set_cookies().iter().any(|c| c.starts_with("relaybox_session=;") && c.contains("Max-Age=0")));
    assert_eq!(web.get("/status", Some(&s)).status, 303, "the session is gone on the server");
}

#[test]
fn without_a_password_the_page_says_how_to_set_one_and_refuses_login() {
    let web = Web::start("");
    std::fs::remove_file(relaybox_web::password_path(&web.config)).unwrap();
    let page = web.get("/login", None);
    assert!(page.body.contains("No password is set"), "{}", page.body);
    assert!(page.body.contains("web set-password"));
    assert!(!page.body.contains(r#"type="password""#));
    let token = page.cookie("relaybox_login").unwrap();
    let cookie = format!("relaybox_login={token}");
    let r = web.req("POST", "/login", &[("Cookie", &cookie)], &form(&[("csrf", &token), ("password", "")]));
    assert_eq!(r.status, 403);
    assert!(r.body.contains("No password is set"));
    assert!(r.cookie("relaybox_session").is_none());
}

#[test]
fn posts_need_the_csrf_token_and_a_same_origin() {
    let web = Web::start("");
    let s = web.login();
    let change = [("port_range", "50000:50100"), ("dispatchers", "127.0.0.1")];
    assert_eq!(web.post("/settings", &s, &change).status, 403, "no token");
    let mut wrong = change.to_vec();
    wrong.push(("csrf", "00"));
    assert_eq!(web.post("/settings", &s, &wrong).status, 403, "wrong token");
    let mut right = change.to_vec();
    right.push(("csrf", &s.csrf));
    let cookie = s.cookie();
    for origin in ["https://evil.example", "null", "http://127.0.0.1"] {
        let r = web.req("POST", "/settings", &[("Cookie", &cookie), ("Origin", origin)], &form(&right));
        assert_eq!(r.status, 403, "{origin}");
    }
    assert!(web.config_text().contains("port_range = 40000:40100"), "nothing saved");
    // A login form posted from another site is refused too.
    let page = web.get("/login", None);
    let token = page.cookie("relaybox_login").unwrap();
    let r = web.req(
        "POST",
        "/login",
        &[("Cookie", &format!("relaybox_login={token}")), ("Origin", "https://evil.example")],
        &form(&[("csrf", &token), ("password", PASSWORD)]),
    );
    assert_eq!(r.status, 403);
    // The same form from the page's own origin works.
    let origin = format!("https://{}", web.https);
    let r = web.req("POST", "/settings", &[("Cookie", &cookie), ("Origin", &origin)], &form(&right));
    assert_eq!(r.status, 303, "{}", r.body);
}

#[test]
fn validation_errors_are_shown_next_to_their_field_and_nothing_is_saved() {
    let web = Web::start("");
    let s = web.login();
    let before = web.config_text();
    let r = web.post(
        "/settings",
        &s,
        &[
            ("csrf", &s.csrf),
            ("port_range", "40001:40100"),
            ("stream_timeout", "soon"),
            ("relay_ip", "224.0.0.1"),
            ("dispatchers", "127.0.0.1"),
        ],
    );
    assert_eq!(r.status, 422);
    let field = |name: &str| {
        let at = r.body.find(&format!(r#"id="field-{name}""#)).unwrap_or_else(|| panic!("no field {name}"));
        let end = r.body[at..].find("</div>").unwrap() + at;
        r.body[at..end].to_string()
    };
    assert!(field("port_range").contains("start must be even (got 40001)"), "{}", field("port_range"));
    assert!(
        field("port_range").contains("field-error") || r.body.contains(r#"field field-error" id="field-port_range""#)
    );
    assert!(field("stream_timeout").contains(r#"id="error-stream_timeout""#));
    assert!(field("relay_ip").contains("not a unicast address"), "{}", field("relay_ip"));
    assert!(!field("dispatchers").contains("class=\"err\""));
    assert!(field("port_range").contains(r#"value="40001:40100""#), "the typed value stays in the form");
    assert_eq!(web.config_text(), before);
    assert!(!relaybox_web::files::prev_path(&web.config).exists());
}

#[test]
fn settings_the_relay_could_not_use_are_refused_with_a_message() {
    let web = Web::start("");
    let s = web.login();
    let before = web.config_text();
    let field = |body: &str, name: &str| {
        let at = body.find(&format!(r#"id="field-{name}""#)).unwrap_or_else(|| panic!("no field {name}"));
        let end = body[at..].find("</div>").unwrap() + at;
        body[at..end].to_string()
    };
    // Relay and advertised addresses of two families, both ways round.
    for (relay_ip, advertised_ip) in [("2001:db8::1", "203.0.113.5"), ("192.0.2.1", "2001:db8::5")] {
        let r = web.post(
            "/settings",
            &s,
            &[
                ("csrf", &s.csrf),
                ("dispatchers", "127.0.0.1"),
                ("relay_ip", relay_ip),
                ("advertised_ip", advertised_ip),
            ],
        );
        assert_eq!(r.status, 422, "{relay_ip} / {advertised_ip}");
        let error = field(&r.body, "advertised_ip");
        assert!(error.contains(r#"id="error-advertised_ip""#) && error.contains("another family"), "{error}");
        assert_eq!(web.config_text(), before);
    }
    // Passports with control characters (BEL, ESC, a tab, NUL, C1 NEL).
    for passport in ["CN:re\u{7}lay", "O:Example Ltd, CN:\u{1b}[2Jrelay", "O:a,\tCN:b", "CN:a\0b", "CN:a\u{85}b"] {
        let r = web.post("/settings", &s, &[("csrf", &s.csrf), ("dispatchers", "127.0.0.1"), ("passport", passport)]);
        assert_eq!(r.status, 422, "{passport:?}: {}", r.body);
        let error = field(&r.body, "passport");
        assert!(error.contains(r#"id="error-passport""#) && error.contains("control character"), "{error}");
        assert_eq!(web.config_text(), before, "{passport:?}");
    }
    // The same families and a printable passport are saved.
    let r = web.post(
        "/settings",
        &s,
        &[
            ("csrf", &s.csrf),
            ("dispatchers", "127.0.0.1"),
            ("relay_ip", "2001:db8::1"),
            ("advertised_ip", "2001:db8::5"),
            ("passport", "O:Zürich AG, CN:*dispatcher"),
        ],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(parses(&web.config_text()).relay.passport.unwrap().to_string(), "O:Zürich AG, CN:*dispatcher");
}

#[test]
fn saving_is_atomic_keeps_the_rest_of_the_file_and_rolls_back() {
    let web = Web::start("");
    let s = web.login();
    let before = web.config_text();
    let r = web.post(
        "/settings",
        &s,
        &[
            ("csrf", &s.csrf),
            ("dispatchers", "127.0.0.1:25060 192.0.2.9"),
            ("port_range", "50000:50100"),
            ("log_level", "INFO"),
            ("auto_detect_interfaces", "yes"),
            ("stream_timeout", "60"),
            ("action", "save"),
        ],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("/settings?done=saved"));
    let after = web.config_text();
    let c = parses(&after);
    assert_eq!((c.relay.port_range.start, c.relay.port_range.end), (50000, 50100));
    assert_eq!(c.relay.stream_timeout, Duration::from_secs(60));
    assert!(c.relay.auto_detect_interfaces);
    assert_eq!(c.relay.dispatchers.len(), 2);
    assert!(after.contains("; the operator's comment") && after.contains("; keep me") && after.contains("[Web]"));
    assert_eq!(std::fs::read_to_string(relaybox_web::files::prev_path(&web.config)).unwrap(), before);
    let page = web.get("/settings?done=saved", Some(&s));
    assert!(page.body.contains(r#"value="50000:50100""#));
    assert!(page.body.contains("Saved."));
    let leftovers: Vec<_> = std::fs::read_dir(web.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty());

    let back = web.post("/settings/rollback", &s, &[("csrf", &s.csrf)]);
    assert_eq!(back.status, 303);
    assert_eq!(web.config_text(), before, "rollback restores the previous file exactly");
    assert_eq!(std::fs::read_to_string(relaybox_web::files::prev_path(&web.config)).unwrap(), after);
    assert!(web.get("/settings", Some(&s)).body.contains(r#"value="40000:40100""#));
}

#[test]
fn a_crash_between_temp_write_and_rename_leaves_the_old_file_intact() {
    let web = Web::start("");
    let before = web.config_text();
    // The first half of an atomic save, then "power cut": no rename.
    let tmp = relaybox_web::files::write_temp(&web.config, b"[Relay]\nport_range = 50000:", 0o640).unwrap();
    assert!(tmp.exists() && tmp.parent() == web.config.parent());
    assert_eq!(web.config_text(), before);
    Config::load(&web.config).expect("the old file still parses");
    let s = web.login();
    assert!(web.get("/settings", Some(&s)).body.contains(r#"value="40000:40100""#));
    // The next save completes and sweeps the stray temporary file.
    let r =
        web.post("/settings", &s, &[("csrf", &s.csrf), ("port_range", "40000:40200"), ("dispatchers", "127.0.0.1")]);
    assert_eq!(r.status, 303);
    assert!(!tmp.exists());
    assert!(Config::load(&web.config).unwrap().relay.port_range.end == 40200);
}

#[test]
fn wrong_passwords_lock_the_address_out() {
    // login_attempts = 3, lockout = 4 s: room for the two TLS requests of
    // the right-password attempt on a loaded machine.
    let web = Web::start("");
    assert_eq!(web.try_login("wrong-1").status, 401);
    assert_eq!(web.try_login("wrong-2").status, 401);
    let third = web.try_login("wrong-3");
    assert_eq!(third.status, 429);
    assert!(third.body.contains("Too many wrong passwords"));
    let right = web.try_login(PASSWORD);
    assert_eq!(right.status, 429, "locked out even with the right password");
    assert!(right.cookie("relaybox_session").is_none());
    std::thread::sleep(Duration::from_millis(4300));
    assert_eq!(web.try_login(PASSWORD).status, 303);
}

#[test]
fn logins_beyond_the_password_queue_are_refused_at_once_and_not_counted() {
    // One check at a time and one waiting: of six logins from six
    // addresses sent together, the ones beyond those two get 503 at once.
    let web = Web::start("max_parallel_logins = 1\nlogin_queue = 1\nmetrics_lan_only = yes");
    let sources: Vec<std::net::IpAddr> = (11..17).map(|n| format!("127.0.0.{n}").parse().unwrap()).collect();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(sources.len()));
    let addr = web.https;
    let threads: Vec<_> = sources
        .into_iter()
        .map(|from| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let conn = Conn::open(from, addr, Duration::from_secs(60));
                barrier.wait();
                let (cookie, body) = login_request("not the password");
                conn.unwrap().send("POST", "/login", &[("Cookie", &cookie)], &body).unwrap()
            })
        })
        .collect();
    let answers: Vec<Resp> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    let busy: Vec<&Resp> = answers.iter().filter(|r| r.status == 503).collect();
    let checked = statuses.iter().filter(|s| **s == 401).count();
    assert_eq!(busy.len() + checked, 6, "{statuses:?}");
    assert!(!busy.is_empty() && checked >= 2, "{statuses:?}");
    for r in &busy {
        assert_eq!(r.header("retry-after"), Some("5"));
        assert!(r.body.contains("busy checking other logins"), "{}", r.body);
    }
    let m = web.get("/metrics", None);
    assert!(m.body.contains(&format!("relaybox_web_password_checks_total {checked}\n")), "{}", m.body);
    let refused = format!("relaybox_web_logins_refused_total{{reason=\"busy\"}} {}\n", busy.len());
    assert!(m.body.contains(&refused), "{}", m.body);
    // Nobody was locked out by a refusal: the right password works at once.
    assert_eq!(web.try_login(PASSWORD).status, 303);
}

#[test]
fn oversize_bodies_are_refused() {
    let web = Web::start(""); // max_body = 8192
    let s = web.login();
    let big = "x".repeat(20_000);
    let r = web.post("/settings", &s, &[("csrf", &s.csrf), ("dispatchers", &big)]);
    assert_eq!(r.status, 413);
    let r = web.post("/certs/upload", &s, &[("csrf", &s.csrf), ("kind", "ca"), ("pem", &big)]);
    assert_eq!(r.status, 413);
    let page = web.get("/login", None);
    let token = page.cookie("relaybox_login").unwrap();
    let r = web.req(
        "POST",
        "/login",
        &[("Cookie", &format!("relaybox_login={token}"))],
        &form(&[("csrf", &token), ("password", &big)]),
    );
    assert_eq!(r.status, 413);
    assert!(web.config_text().contains("port_range = 40000:40100"));
}

#[test]
fn file_routes_refuse_path_traversal() {
    let web = Web::start("");
    let s = web.login();
    assert_eq!(web.get("/certs/file/ca.pem", Some(&s)).status, 200);
    for path in [
        "/certs/file/..%2F..%2Fconfig.ini",
        "/certs/file/..%2Fweb.passwd",
        "/certs/file/../../web.passwd",
        "/certs/file/%2e%2e/config.ini",
        "/certs/file/relay.key",
        "/certs/file/dispatcher.key",
        "/certs/file/.%2Frelay.key",
        "/certs/file/%2Fetc%2Fpasswd",
        "/static/..%2F..%2FCargo.toml",
        "/static/../../../etc/passwd",
        "/static/%2e%2e%2fsrc%2flib.rs",
    ] {
        let r = web.get(path, Some(&s));
        assert!(r.status == 404 || r.status == 400, "{path}: {}", r.status);
        for secret in ["PRIVATE KEY", "argon2", "[Relay]", "root:", "[package]"] {
            assert!(!r.body.contains(secret), "{path} leaked {secret}");
        }
    }
}

#[test]
fn plain_http_only_redirects_to_https() {
    let web = Web::start("");
    let r = http(web.http, "GET", "/settings?x=1", &[], b"");
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some(format!("https://127.0.0.1:{}/settings?x=1", web.https.port()).as_str()));
    let r = http(web.http, "GET", "/", &[("Host", "relaybox.lan:80")], b"");
    assert_eq!(r.header("location"), Some(format!("https://relaybox.lan:{}/", web.https.port()).as_str()));
    let r = http(web.http, "GET", "/", &[("Host", "evil\"><script>")], b"");
    assert_eq!(r.header("location"), Some(format!("https://127.0.0.1:{}/", web.https.port()).as_str()));
    let r = http(web.http, "POST", "/login", &[], &form(&[("password", PASSWORD)]));
    assert_eq!(r.status, 301, "no login over plain HTTP");
    assert!(r.cookie("relaybox_session").is_none());
}

#[test]
fn status_page_and_json_show_the_relay_from_its_control_socket() {
    let web = Web::start("");
    let s = web.login();
    let down = web.get("/status", Some(&s));
    assert_eq!(down.status, 200);
    assert!(down.body.contains("does not answer"), "{}", down.body);
    fake_relay(&web.socket);
    let page = web.get("/status", Some(&s));
    for needed in [
        "call-&lt;b&gt;1&lt;/b&gt;", // escaped
        "sip:alice@example.com",
        "PCMA",
        "198.51.100.7:4000",
        "192.0.2.1:40002",
        "00:01:15",
        "01:02:05",
        "userspace",
        "4 used, 96 free",
        "127.0.0.1:25060",
        "bandwidth-chart",
        "<polyline",
        "/static/app.js",
        "27.5 kbit/s",
        "in 200 packets since start",
    ] {
        assert!(page.body.contains(needed), "status page lacks {needed}:\n{}", page.body);
    }
    assert!(!page.body.contains("<b>1</b>"));
    // The box's clock: no NTP answer yet, then one `relaybox clock` recorded.
    assert!(page.body.contains("id=\"box-clock\"") && page.body.contains("no NTP answer recorded"), "{}", page.body);
    std::fs::write(web.config.parent().unwrap().join("clock"), "1795590000\n").unwrap();
    let page = web.get("/status", Some(&s));
    assert!(page.body.contains("last NTP answer 00:00:0"), "{}", page.body);
    let api = web.get("/api/status", Some(&s));
    assert_eq!(api.status, 200);
    assert!(api.header("content-type").unwrap().starts_with("application/json"));
    let j: serde_json::Value = serde_json::from_str(&api.body).unwrap();
    assert_eq!(j["sessions"][0]["streams"][0]["caller_packets"], 100);
    assert_eq!(j["metrics"]["summary"]["session_count"], 1);
    assert!(j["html"].as_str().unwrap().contains("sip:bob@example.com"));
}

#[test]
fn apply_sends_sighup_to_the_relay_on_the_control_socket() {
    let web = Web::start("");
    let s = web.login();
    let r = web.post("/settings/apply", &s, &[("csrf", &s.csrf)]);
    assert_eq!(r.status, 502, "no relay: the page says so");
    assert!(r.body.contains("could not be told"));
    fake_relay(&web.socket);
    let before = HUPS.load(Ordering::SeqCst);
    let r = web.post(
        "/settings",
        &s,
        &[("csrf", &s.csrf), ("port_range", "50000:50100"), ("dispatchers", "127.0.0.1"), ("action", "apply")],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let location = r.header("location").unwrap().to_string();
    assert_eq!(location, format!("/settings?done=applied&pid={}", std::process::id()));
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while HUPS.load(Ordering::SeqCst) == before {
        assert!(std::time::Instant::now() < until, "no SIGHUP arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(web.config_text().contains("port_range = 50000:50100"));
    let page = web.get(&location, Some(&s));
    assert!(page.body.contains("halt gracefully"));
    assert!(page.body.contains("calls in progress go on"));
}

#[test]
fn metrics_need_a_login_or_a_lan_address_by_setting() {
    let web = Web::start("");
    fake_relay(&web.socket);
    assert_eq!(web.get("/metrics", None).status, 401);
    let s = web.login();
    let m = web.get("/metrics", Some(&s));
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"));
    for line in [
        "relaybox_relay_up 1",
        "relaybox_sessions 1",
        "relaybox_streams{media=\"audio\"} 1",
        "relaybox_relayed_bytes_total 34300",
        "relaybox_relayed_packets_total 200",
        "relaybox_session_packets 199",
        "relaybox_ports{state=\"used\"} 4",
        "relaybox_ports{state=\"free\"} 96",
        "relaybox_latch_drops_total 3",
        "relaybox_port_bind_failures_total 2",
        "relaybox_relay_status{status=\"active\"} 1",
        "relaybox_datapath{mode=\"userspace\"} 1",
        "# TYPE relaybox_relayed_bytes_total counter",
    ] {
        assert!(m.body.lines().any(|l| l == line), "missing {line}:\n{}", m.body);
    }

    let lan = Web::start("metrics_lan_only = yes");
    let m = lan.get("/metrics", None);
    assert_eq!(m.status, 200, "127.0.0.1 is on the LAN side");
    assert!(m.body.contains("relaybox_relay_up 0"));

    let off = Web::start("metrics = no");
    let s = off.login();
    assert_eq!(off.get("/metrics", Some(&s)).status, 404);
}

#[test]
fn certificates_page_uploads_and_requests() {
    let mut web = Web::start("");
    let s = web.login();
    let page = web.get("/certs", Some(&s));
    assert_eq!(page.status, 200);
    assert!(page.body.contains("CN=web test CA") && page.body.contains("CN=edge-relay"));
    let fp = relaybox_ca::fingerprint_sha256(&std::fs::read_to_string(web.certs.join("relay.crt")).unwrap()).unwrap();
    assert!(page.body.contains(&fp), "fingerprint shown");
    assert!(!page.body.contains("expires in"), "365 days: no warning");

    // A certificate close to expiry, with its key: accepted, and warned about.
    let soon = web.ca.issue(relaybox_ca::Role::Relay, &relaybox_ca::Subject::new("soon-relay"), 10).unwrap();
    let r = web.post(
        "/certs/upload",
        &s,
        &[("csrf", &s.csrf), ("kind", "relay"), ("pem", &soon.cert_pem), ("key", &soon.key_pem)],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(std::fs::read_to_string(web.certs.join("relay.crt")).unwrap().trim(), soon.cert_pem.trim());
    let page = web.get("/certs", Some(&s));
    assert!(page.body.contains("CN=soon-relay") && page.body.contains("expires in"), "{}", page.body);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(web.certs.join("relay.key")).unwrap().permissions().mode() & 0o777, 0o600);

    // A key that does not match, garbage, a dispatcher's certificate as the
    // relay's, a non-CA as CA: refused, nothing replaced.
    let other = web.ca.issue(relaybox_ca::Role::Relay, &relaybox_ca::Subject::new("other"), 30).unwrap();
    let dispatcher = web.ca.issue(relaybox_ca::Role::Dispatcher, &relaybox_ca::Subject::new("dispatcher"), 30).unwrap();
    for (kind, pem, key, why) in [
        ("relay", other.cert_pem.as_str(), soon.key_pem.as_str(), "does not match"),
        (
            "relay",
            dispatcher.cert_pem.as_str(),
            dispatcher.key_pem.as_str(),
            "dispatcher role; this daemon needs a relay certificate",
        ),
        (
            "relay",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            soon.key_pem.as_str(),
            "Nothing was replaced",
        ),
        ("ca", other.cert_pem.as_str(), "", "not a CA certificate"),
        ("crl", other.cert_pem.as_str(), "", "CRL"),
    ] {
        let r = web.post("/certs/upload", &s, &[("csrf", &s.csrf), ("kind", kind), ("pem", pem), ("key", key)]);
        assert_eq!(r.status, 422, "{kind}");
        assert!(r.body.contains(why), "{kind}: {}", r.body);
    }
    assert_eq!(std::fs::read_to_string(web.certs.join("relay.crt")).unwrap().trim(), soon.cert_pem.trim());
    // A CRL from the CA is accepted.
    let crl = web.ca.crl_pem().unwrap();
    let r = web.post("/certs/upload", &s, &[("csrf", &s.csrf), ("kind", "crl"), ("pem", &crl)]);
    assert_eq!(r.status, 303, "{}", r.body);

    // Key + CSR made on the box; the key never leaves it.
    let r = web.post("/certs/csr", &s, &[("csrf", &s.csrf), ("cn", "box-relay"), ("o", "Example Ltd")]);
    assert_eq!(r.status, 200);
    assert!(r.body.contains("BEGIN CERTIFICATE REQUEST"));
    assert_eq!(std::fs::metadata(web.certs.join("relay-csr.key")).unwrap().permissions().mode() & 0o777, 0o600);
    let csr = web.get("/certs/file/relay.csr", Some(&s));
    assert_eq!(csr.status, 200);
    assert!(csr.body.contains("BEGIN CERTIFICATE REQUEST"));
    assert_eq!(web.get("/certs/file/relay-csr.key", Some(&s)).status, 404);
    let bad = web.post("/certs/csr", &s, &[("csrf", &s.csrf), ("cn", "")]);
    assert_eq!(bad.status, 422);
    web.server.take();
}

#[test]
fn certificates_that_the_dispatcher_would_refuse_are_not_installed() {
    let web = Web::start("");
    // No CRL: a CA upload is then checked against relay.crt only (a CRL of
    // the old CA would refuse a new CA before that).
    std::fs::remove_file(web.certs.join("crl.pem")).unwrap();
    let s = web.login();
    let ca_before = std::fs::read_to_string(web.certs.join("ca.pem")).unwrap();
    let relay_before = std::fs::read_to_string(web.certs.join("relay.crt")).unwrap();
    let mut other = relaybox_ca::CertificateAuthority::create(&relaybox_ca::Subject::new("other CA"), 30).unwrap();

    // A CA that did not sign the installed relay.crt.
    let r = web.post("/certs/upload", &s, &[("csrf", &s.csrf), ("kind", "ca"), ("pem", &other.cert_pem())]);
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("Nothing was replaced"), "{}", r.body);
    assert!(r.body.contains("certs/relay.crt: is not signed by a CA in ca.pem"), "{}", r.body);
    // A relay certificate (with its own key) from a CA that is not ca.pem.
    let stranger = other.issue(relaybox_ca::Role::Relay, &relaybox_ca::Subject::new("edge-relay"), 30).unwrap();
    let r = web.post(
        "/certs/upload",
        &s,
        &[("csrf", &s.csrf), ("kind", "relay"), ("pem", &stranger.cert_pem), ("key", &stranger.key_pem)],
    );
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("is not signed by a CA in ca.pem"), "{}", r.body);
    assert_eq!(std::fs::read_to_string(web.certs.join("ca.pem")).unwrap(), ca_before);
    assert_eq!(std::fs::read_to_string(web.certs.join("relay.crt")).unwrap(), relay_before);

    // Both CAs in ca.pem: the installed relay.crt still chains, accepted.
    let both = format!("{}{}", ca_before.trim_end(), "\n") + &other.cert_pem();
    let r = web.post("/certs/upload", &s, &[("csrf", &s.csrf), ("kind", "ca"), ("pem", &both)]);
    assert_eq!(r.status, 303, "{}", r.body);
    // Now the other CA's relay certificate chains too.
    let r = web.post(
        "/certs/upload",
        &s,
        &[("csrf", &s.csrf), ("kind", "relay"), ("pem", &stranger.cert_pem), ("key", &stranger.key_pem)],
    );
    assert_eq!(r.status, 303, "{}", r.body);
}

#[test]
fn network_page_lists_interfaces() {
    let web = Web::start("");
    let s = web.login();
    let page = web.get("/network", Some(&s));
    assert_eq!(page.status, 200);
    assert!(page.body.contains(r#"<td class="mono">lo</td><td>loopback</td>"#), "{}", page.body);
    assert!(page.body.contains("127.0.0.1/8"));
}

/// A process that looks like the clock daemon in /proc (argv[0] ends in
/// `relaybox`, an argument `clock`); a shell that sleeps, ended by SIGTERM.
fn fake_clock_daemon(named: &str) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    std::process::Command::new("sh").arg0(named).args(["-c", "sleep 30; :", "x", "clock"]).spawn().unwrap()
}

fn exited_within(child: &mut std::process::Child, limit: Duration) -> bool {
    let until = std::time::Instant::now() + limit;
    while std::time::Instant::now() < until {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn the_system_page_sets_host_name_and_ntp_servers_and_restarts_the_clock() {
    let web = Web::start("");
    let conf = web.dir.path().join("system.conf");
    std::fs::write(
        &conf,
        "# Box-wide settings.\nHOSTNAME=relaybox\n# keep me\nNTP_SERVERS=\"0.debian.pool.ntp.org\"\n",
    )
    .unwrap();
    let s = web.login();
    let page = web.get("/system", Some(&s));
    assert_eq!(page.status, 200);
    assert!(page.body.contains(r#"id="hostname" name="hostname" value="relaybox""#), "{}", page.body);
    assert!(page.body.contains(r#"value="0.debian.pool.ntp.org""#), "{}", page.body);

    let mut clock = fake_clock_daemon("/usr/bin/relaybox");
    std::fs::write(web.dir.path().join("clock.pid"), format!("{}\n", clock.id())).unwrap();
    let r = web.post(
        "/system",
        &s,
        &[("csrf", &s.csrf), ("hostname", "edge-7.example.net"), ("ntp_servers", "10.0.2.2:12345, ntp.example.com")],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some(format!("/system?done=restarted&pid={}&host=set", clock.id()).as_str()));
    let set = web.dir.path().join("hostname-set");
    assert_eq!(std::fs::read_to_string(&set).unwrap(), "edge-7.example.net\n", "the running host name is set at once");
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        "# Box-wide settings.\nHOSTNAME=\"edge-7.example.net\"\n# keep me\nNTP_SERVERS=\"10.0.2.2:12345 ntp.example.com\"\n"
    );
    assert!(exited_within(&mut clock, Duration::from_secs(5)), "the clock daemon was not told to restart");
    let page = web.get("/system?done=restarted&pid=1&host=set", Some(&s));
    assert!(page.body.contains("told to restart with the new NTP servers"), "{}", page.body);
    assert!(page.body.contains("The host name is now "), "{}", page.body);

    // The same servers again: nothing to restart.
    let r = web.post(
        "/system",
        &s,
        &[("csrf", &s.csrf), ("hostname", "edge-8"), ("ntp_servers", "10.0.2.2:12345 ntp.example.com")],
    );
    assert_eq!(r.header("location"), Some("/system?done=unchanged-ntp&host=set"));
    assert!(std::fs::read_to_string(&conf).unwrap().contains("HOSTNAME=\"edge-8\"\n"));
    assert_eq!(std::fs::read_to_string(&set).unwrap(), "edge-7.example.net\nedge-8\n");
    // A command that fails: saved, and the page says it waits for the boot.
    std::fs::write(web.dir.path().join("hostname.sh"), "#!/bin/sh\nexit 3\n").unwrap();
    let r = web.post(
        "/system",
        &s,
        &[("csrf", &s.csrf), ("hostname", "edge-9"), ("ntp_servers", "10.0.2.2:12345 ntp.example.com")],
    );
    assert_eq!(r.header("location"), Some("/system?done=unchanged-ntp&host=boot"));
    assert!(std::fs::read_to_string(&conf).unwrap().contains("HOSTNAME=\"edge-9\"\n"));
    let page = web.get("/system?done=unchanged-ntp&host=boot", Some(&s));
    assert!(page.body.contains("it changes at the next boot"), "{}", page.body);
}

#[test]
fn the_system_page_refuses_what_the_shell_would_run_and_leaves_the_file_alone() {
    let web = Web::start("");
    let conf = web.dir.path().join("system.conf");
    let before = "HOSTNAME=relaybox\nNTP_SERVERS=\"pool.ntp.org\"\n";
    std::fs::write(&conf, before).unwrap();
    let s = web.login();
    let r = web.post(
        "/system",
        &s,
        &[("csrf", &s.csrf), ("hostname", "box;reboot"), ("ntp_servers", "pool.ntp.org $(reboot) host:70000")],
    );
    assert_eq!(r.status, 422);
    assert!(r.body.contains(r#"id="error-hostname""#) && r.body.contains(r#"id="error-ntp_servers""#), "{}", r.body);
    assert!(r.body.contains("$(reboot)") && r.body.contains("70000"), "each bad server is named: {}", r.body);
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), before);
    // Without the form's token nothing happens either.
    let r = web.post("/system", &s, &[("csrf", "stale"), ("hostname", "x"), ("ntp_servers", "")]);
    assert_eq!(r.status, 403);
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), before);

    // A stale pid file naming some other process: saved, nobody signalled.
    let mut other = fake_clock_daemon("sh");
    std::fs::write(web.dir.path().join("clock.pid"), format!("{}\n", other.id())).unwrap();
    let r = web.post("/system", &s, &[("csrf", &s.csrf), ("hostname", "relaybox"), ("ntp_servers", "")]);
    assert!(r.header("location").is_some_and(|l| l.starts_with("/system?done=saved")), "{:?}", r.header("location"));
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), "HOSTNAME=\"relaybox\"\nNTP_SERVERS=\"\"\n");
    assert!(!exited_within(&mut other, Duration::from_millis(300)), "a process that is not the clock was signalled");
    other.kill().unwrap();
    other.wait().unwrap();
}

const NETWORK_CONF: &str = "# Network settings.\nWAN_MODE=dhcp\nLAN_ADDRESS=\nWAN_IF=enp1s0\n";

#[test]
fn the_network_page_saves_a_static_wan_for_the_next_boot() {
    let web = Web::start("");
    let conf = web.dir.path().join("network.conf");
    std::fs::write(&conf, NETWORK_CONF).unwrap();
    let s = web.login();
    let page = web.get("/network", Some(&s));
    assert_eq!(page.status, 200);
    assert!(page.body.contains(r#"<table id="interfaces">"#) && page.body.contains(">lo<"), "{}", page.body);
    assert!(page.body.contains("<option selected>dhcp</option>"), "{}", page.body);
    assert!(page.body.contains("WAN interface enp1s0, LAN interface eth1 (board default)"), "{}", page.body);
    let r = web.post(
        "/network",
        &s,
        &[
            ("csrf", &s.csrf),
            ("wan_mode", "static"),
            ("wan_address", "10.0.2.15/24"),
            ("wan_gateway", "10.0.2.2"),
            ("wan_dns", "10.0.2.3, 2001:db8::53"),
            ("lan_address", "192.168.50.1/24"),
        ],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("/network?done=saved"));
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        "# Network settings.\nWAN_MODE=\"static\"\nLAN_ADDRESS=\"192.168.50.1/24\"\nWAN_IF=enp1s0\n\
         WAN_ADDRESS=\"10.0.2.15/24\"\nWAN_GATEWAY=\"10.0.2.2\"\nWAN_DNS=\"10.0.2.3 2001:db8::53\"\n"
    );
    let page = web.get("/network?done=saved", Some(&s));
    assert!(page.body.contains("take effect at the next boot"), "{}", page.body);
    assert!(page.body.contains(r#"action="/system/reboot""#), "a reboot button follows a save: {}", page.body);
    assert!(page.body.contains("<option selected>static</option>"), "{}", page.body);
    assert!(page.body.contains(r#"id="wan_gateway" name="wan_gateway" value="10.0.2.2""#), "{}", page.body);
    // Back to DHCP: the static values stay in the file for next time.
    let r = web.post(
        "/network",
        &s,
        &[
            ("csrf", &s.csrf),
            ("wan_mode", "dhcp"),
            ("wan_address", "10.0.2.15/24"),
            ("wan_gateway", "10.0.2.2"),
            ("wan_dns", "10.0.2.3"),
            ("lan_address", ""),
        ],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(text.contains("WAN_MODE=\"dhcp\"\n") && text.contains("LAN_ADDRESS=\"\"\n"), "{text}");
}

#[test]
fn the_network_page_refuses_settings_that_would_cut_the_box_off() {
    let web = Web::start("");
    let conf = web.dir.path().join("network.conf");
    std::fs::write(&conf, NETWORK_CONF).unwrap();
    let s = web.login();
    let r = web.post(
        "/network",
        &s,
        &[
            ("csrf", &s.csrf),
            ("wan_mode", "static"),
            ("wan_address", "10.0.2.15/24"),
            ("wan_gateway", "10.0.3.1"),
            ("wan_dns", "$(reboot)"),
            ("lan_address", "10.0.2.1/16"),
        ],
    );
    assert_eq!(r.status, 422);
    for id in ["wan_gateway", "wan_dns", "lan_address"] {
        assert!(r.body.contains(&format!(r#"id="error-{id}""#)), "{id} marked: {}", r.body);
    }
    assert!(!r.body.contains(r#"id="error-wan_address""#), "{}", r.body);
    assert!(r.body.contains("is not a host of the WAN network 10.0.2.0/24"), "{}", r.body);
    assert!(r.body.contains(r#"value="10.0.3.1""#), "what was typed is shown again: {}", r.body);
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), NETWORK_CONF);
    let r = web.post("/network", &s, &[("csrf", &s.csrf), ("wan_mode", "static")]);
    assert_eq!(r.status, 422);
    assert!(r.body.contains(r#"id="error-wan_address""#), "{}", r.body);
    let r = web.post("/network", &s, &[("csrf", "stale"), ("wan_mode", "dhcp")]);
    assert_eq!(r.status, 403);
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), NETWORK_CONF);
}

#[test]
fn the_reboot_button_runs_the_reboot_command_after_answering() {
    let web = Web::start("reboot_command = reboot.sh");
    let script = web.dir.path().join("reboot.sh");
    let marker = web.dir.path().join("rebooted");
    std::fs::write(&script, "#!/bin/sh\necho yes > \"$(dirname \"$0\")/rebooted\"\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let s = web.login();
    let page = web.get("/system", Some(&s));
    assert!(page.body.contains(r#"action="/system/reboot""#) && page.body.contains("data-confirm"), "{}", page.body);
    let r = web.post("/system/reboot", &s, &[("csrf", "stale")]);
    assert_eq!(r.status, 403);
    std::thread::sleep(Duration::from_millis(800));
    assert!(!marker.exists(), "rebooted without the form's token");
    let r = web.post("/system/reboot", &s, &[("csrf", &s.csrf)]);
    assert_eq!(r.status, 200);
    assert!(r.body.contains("The box is rebooting"), "{}", r.body);
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while !marker.exists() {
        assert!(std::time::Instant::now() < until, "the reboot command never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "yes\n");
}

/// The Update page is behind the login like every page; an upload needs the
/// session's CSRF token in its header (and a same-origin request), is cut
/// off above `[Update] max_bundle_size`, and what cannot be installed is
/// reported on `/api/update` with nothing written.
#[test]
fn firmware_uploads_need_the_token_and_stay_within_their_limit() {
    let web = Web::start(
        "\n[Update]\nmax_bundle_size = 1048576\nwork_dir = update-work\nrelease_file = no-release\nboot_dir = boot\n",
    );
    assert_eq!(web.get("/update", None).status, 303);
    assert_eq!(web.get("/api/update", None).status, 401);
    assert_eq!(web.req("POST", "/update/upload", &[], b"bundle").status, 401);
    let s = web.login();
    let page = web.get("/update", Some(&s));
    assert_eq!(page.status, 200);
    assert!(page.body.contains(r#"id="update-form""#) && page.body.contains(r#"id="slots-unknown""#), "{}", page.body);
    let cookie = s.cookie();
    let upload = |headers: &[(&str, &str)], body: &[u8]| {
        let mut h = vec![("Cookie", cookie.as_str())];
        h.extend_from_slice(headers);
        web.req("POST", "/update/upload", &h, body)
    };
    assert_eq!(upload(&[], b"bundle").status, 403, "no token");
    assert_eq!(upload(&[("x-csrf-token", "00")], b"bundle").status, 403, "wrong token");
    let evil = upload(&[("x-csrf-token", &s.csrf), ("Origin", "https://evil.example")], b"bundle");
    assert_eq!(evil.status, 403, "cross-origin");
    let work = web.dir.path().join("update-work");
    let big = vec![0u8; 1536 * 1024];
    let r = upload(&[("x-csrf-token", &s.csrf)], &big);
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.body.contains("max_bundle_size"), "{}", r.body);
    let uploads = || std::fs::read_dir(&work).map(|d| d.count()).unwrap_or(0);
    assert_eq!(uploads(), 0, "a refused upload is not kept");
    // A bundle this box cannot take (here: it has no release file) is refused.
    let r = upload(&[("x-csrf-token", &s.csrf)], b"not a bundle");
    assert_eq!(r.status, 202, "{}", r.body);
    let until = std::time::Instant::now() + Duration::from_secs(20);
    let job = loop {
        let r = web.get("/api/update", Some(&s));
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        if v["job"]["running"] == false && !v["job"]["ok"].is_null() {
            break v;
        }
        assert!(std::time::Instant::now() < until, "the install never finished: {v}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(job["job"]["ok"], false, "{job}");
    assert!(job["job"]["message"].as_str().unwrap().contains("no-release"), "{job}");
    assert!(job["html"].as_str().unwrap().contains(r#"id="install-result""#), "{job}");
    assert!(!web.dir.path().join("boot").exists(), "nothing written");
    assert_eq!(uploads(), 0, "the upload is removed once done");
}

#[test]
fn the_logs_page_shows_the_end_of_the_log_and_the_saved_logs() {
    let web = Web::start("log_command = logread.sh\nlog_max_bytes = 4096\nlog_dir = log");
    let script = web.dir.path().join("logread.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\ni=0; while [ $i -lt 2000 ]; do echo \"line $i <b>\"; i=$((i+1)); done\necho 'relaybox-relay: connected to dispatcher'\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(web.dir.path().join("log")).unwrap();
    std::fs::write(web.dir.path().join("log/previous.log"), "the last boot ended here\n").unwrap();
    assert_eq!(web.get("/logs", None).status, 303, "a login first");
    let s = web.login();
    let page = web.get("/logs", Some(&s));
    assert_eq!(page.status, 200);
    let log = page.body.split(r#"<pre class="mono" id="log">"#).nth(1).unwrap().split("</pre>").next().unwrap();
    assert!(log.ends_with("relaybox-relay: connected to dispatcher\n"), "{log}");
    assert!(log.contains("line 1999 &lt;b&gt;") && !log.contains("line 0 "), "the end only, escaped: {log}");
    assert!(log.len() < 4096 * 2, "bounded by log_max_bytes");
    assert!(page.body.contains(r#"<a href="/logs/saved/previous.log">"#), "{}", page.body);
    assert!(!page.body.contains("current.log"), "only the logs that exist");
    let saved = web.get("/logs/saved/previous.log", Some(&s));
    assert_eq!((saved.status, saved.body.as_str()), (200, "the last boot ended here\n"));
    for bad in ["/logs/saved/..%2Fconfig.ini", "/logs/saved/config.ini", "/logs/saved/current.log"] {
        assert_eq!(web.get(bad, Some(&s)).status, 404, "{bad}");
    }
    // No logread on this machine: the page says why.
    std::fs::remove_file(&script).unwrap();
    let page = web.get("/logs", Some(&s));
    assert!(page.body.contains(r#"id="log-error">cannot run"#), "{}", page.body);
}

fn base64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[test]
fn the_backup_page_downloads_restores_at_the_next_boot_and_refuses_bad_backups() {
    let web = Web::start("");
    std::fs::write(web.dir.path().join("system.conf"), "HOSTNAME=\"edge-1\"\nNTP_SERVERS=\"\"\n").unwrap();
    let s = web.login();
    assert_eq!(web.get("/backup/download", None).status, 303, "a login first");
    let download = web.get("/backup/download", Some(&s));
    assert_eq!(download.status, 200);
    assert_eq!(download.header("content-type"), Some("application/x-tar"));
    let tar = download.body.as_bytes().to_vec();
    let file = web.dir.path().join("backup.tar");
    std::fs::write(&file, &tar).unwrap();
    let out = std::process::Command::new("tar").arg("tf").arg(&file).output().unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    for f in ["config.ini", "system.conf", "web.passwd", "tls/ca.pem", "tls/relay.crt", "tls/relay.key"] {
        assert!(listing.lines().any(|l| l == f), "{f} not in the backup:\n{listing}");
    }

    // The box changes; the backup brings the old configuration back at the next boot.
    std::fs::write(web.dir.path().join("system.conf"), "HOSTNAME=\"changed\"\n").unwrap();
    let page = web.post("/backup/restore", &s, &[("csrf", &s.csrf), ("backup", &base64(&tar))]);
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("Reboot to apply it") && page.body.contains(r#"id="pending""#), "{}", page.body);
    assert_eq!(std::fs::read_to_string(web.dir.path().join("system.conf")).unwrap(), "HOSTNAME=\"changed\"\n");
    let done = relaybox_web::backup::boot(web.dir.path()).unwrap();
    assert!(done[0].starts_with("restored a backup"), "{done:?}");
    assert_eq!(
        std::fs::read_to_string(web.dir.path().join("system.conf")).unwrap(),
        "HOSTNAME=\"edge-1\"\nNTP_SERVERS=\"\"\n"
    );

    // A backup whose relay certificate another CA signed is refused whole.
    let other = relaybox_ca::CertificateAuthority::create(&relaybox_ca::Subject::new("other CA"), 30).unwrap();
    let stranger = {
        let mut ca = other;
        ca.issue(relaybox_ca::Role::Relay, &relaybox_ca::Subject::new("stranger"), 30).unwrap()
    };
    let forged = web.dir.path().join("forged");
    std::fs::create_dir_all(forged.join("tls")).unwrap();
    let out = std::process::Command::new("tar").arg("xf").arg(&file).arg("-C").arg(&forged).output().unwrap();
    assert!(out.status.success());
    std::fs::write(forged.join("tls/relay.crt"), &stranger.cert_pem).unwrap();
    std::fs::write(forged.join("tls/relay.key"), &stranger.key_pem).unwrap();
    let forged_tar = web.dir.path().join("forged.tar");
    let out =
        std::process::Command::new("tar").arg("cf").arg(&forged_tar).arg("-C").arg(&forged).arg(".").output().unwrap();
    assert!(out.status.success());
    let page = web.post(
        "/backup/restore",
        &s,
        &[("csrf", &s.csrf), ("backup", &base64(&std::fs::read(&forged_tar).unwrap()))],
    );
    assert_eq!(page.status, 422, "{}", page.body);
    assert!(page.body.contains("Nothing was restored: tls/relay.crt"), "{}", page.body);
    assert!(relaybox_web::backup::pending(web.dir.path()).is_none());
    let page = web.post("/backup/restore", &s, &[("csrf", &s.csrf), ("backup", "bm90IGEgdGFy")]);
    assert_eq!(page.status, 422);
    let page = web.post("/backup/restore", &s, &[("csrf", "stale"), ("backup", &base64(&tar))]);
    assert_eq!(page.status, 403);
}

#[test]
fn the_factory_reset_asks_first_then_empties_the_partition_at_the_reboot() {
    let web = Web::start("reboot_command = reboot.sh");
    let script = web.dir.path().join("reboot.sh");
    std::fs::write(&script, "#!/bin/sh\necho yes > \"$(dirname \"$0\")/rebooted\"\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let s = web.login();
    let page = web.get("/backup", Some(&s));
    let form = page.body.split(r#"id="factory-reset""#).nth(1).expect("the factory reset form");
    assert!(form.starts_with(" data-confirm=\"Erase every setting"), "asks first: {form}");
    assert_eq!(web.post("/backup/factory-reset", &s, &[("csrf", "stale")]).status, 403);
    assert!(relaybox_web::backup::pending(web.dir.path()).is_none());
    let r = web.post("/backup/factory-reset", &s, &[("csrf", &s.csrf)]);
    assert_eq!(r.status, 200);
    assert!(r.body.contains("rebooting to its factory settings"), "{}", r.body);
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while !web.dir.path().join("rebooted").exists() {
        assert!(std::time::Instant::now() < until, "the reboot command never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(relaybox_web::backup::pending(web.dir.path()), Some("a factory reset"));
    relaybox_web::backup::boot(web.dir.path()).unwrap();
    assert_eq!(std::fs::read_dir(web.dir.path()).unwrap().count(), 0, "nothing kept");
}

#[test]
fn the_system_page_sets_a_remote_syslog_host_and_restarts_syslogd() {
    let web = Web::start("syslog_pid_file = syslogd.pid");
    let conf = web.dir.path().join("system.conf");
    std::fs::write(&conf, "HOSTNAME=relaybox\nNTP_SERVERS=\"\"\nLOG_BUFFER_KB=256\n").unwrap();
    let s = web.login();
    let mut syslogd = fake_clock_daemon("/sbin/syslogd");
    std::fs::write(web.dir.path().join("syslogd.pid"), format!("{}\n", syslogd.id())).unwrap();
    let fields = |host: &'static str| [("hostname", "relaybox"), ("ntp_servers", ""), ("syslog_host", host)];
    let post = |host: &'static str| {
        let mut f: Vec<(&str, &str)> = vec![("csrf", &s.csrf)];
        f.extend(fields(host));
        web.post("/system", &s, &f)
    };
    let r = post("logs.example.net:1514;reboot");
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(!exited_within(&mut syslogd, Duration::from_millis(300)), "nothing restarted for a refused value");
    let r = post("logs.example.net:1514");
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        "HOSTNAME=\"relaybox\"\nNTP_SERVERS=\"\"\nLOG_BUFFER_KB=256\nSYSLOG_HOST=\"logs.example.net:1514\"\n"
    );
    assert!(exited_within(&mut syslogd, Duration::from_secs(5)), "syslogd was not told to restart");
    let page = web.get("/system", Some(&s));
    assert!(page.body.contains(r#"name="syslog_host" value="logs.example.net:1514""#), "{}", page.body);
}
