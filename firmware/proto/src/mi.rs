//! The proxy's management interface, as far as the dispatcher uses it: the
//! JSON-RPC request that ends a dialog whose media timed out (OpenSIPS
//! `dlg_end_dlg`, Kamailio `dlg.end_dlg`), the dialog id forms each proxy
//! version accepts, the framing of the three transports (datagram, FIFO,
//! HTTP) and the proxy's answers.
//!
//! OpenSIPS's `mediaproxy` module sends `dialog_id` as one decimal number,
//! `h_entry << 32 | h_id`. Since OpenSIPS 3.1, `dlg_end_dlg` takes only the
//! form `dlg_list` prints, `<h_entry>.<h_id>` each in OpenSIPS's reverse hex
//! (least significant digit first), or a Call-ID; 3.0 took the number.
//! [`EndDialog`] tries the 3.1+ form first and the number after a 404.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::ParseError;

/// Which proxy listens on the management socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxy {
    OpenSips,
    Kamailio,
}

/// How a dialog is named in the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialogRef {
    /// OpenSIPS 3.1+: `dlg_list`'s `ID`, `<h_entry>.<h_id>` in reverse hex.
    ReverseHex(String),
    /// OpenSIPS 3.0 and older: the module's decimal number as it came.
    Number(String),
    /// What the module sent when it is not a number (a Call-ID, say): sent as is.
    Verbatim(String),
    /// Kamailio: `h_entry` and `h_id` as two numbers.
    Entry { h_entry: u64, h_id: u64 },
}

impl DialogRef {
    /// The text the proxy gets (and `dlg_list` prints, for OpenSIPS 3.1+).
    pub fn as_text(&self) -> String {
        match self {
            DialogRef::ReverseHex(s) | DialogRef::Number(s) | DialogRef::Verbatim(s) => s.clone(),
            DialogRef::Entry { h_entry, h_id } => format!("{h_entry}:{h_id}"),
        }
    }
}

/// OpenSIPS's reverse hex (`int2reverse_hex`): lowercase hex digits, least
/// significant first; 0 is `0`.
pub fn reverse_hex(mut n: u32) -> String {
    if n == 0 {
        return "0".to_string();
    }
    let mut out = String::new();
    while n != 0 {
        let digit = (n & 0xf) as u8;
        out.push(char::from(if digit < 10 { b'0' + digit } else { b'a' + digit - 10 }));
        n >>= 4;
    }
    out
}

/// The `dlg_list` id of the module's decimal `dialog_id`
/// (17511492765899 → `def.bc84e463`), or `None` when it is not a 64-bit number.
pub fn opensips_dialog_id(module_id: &str) -> Option<String> {
    let n: u64 = module_id.trim().parse().ok()?;
    let (h_entry, h_id) = ((n >> 32) as u32, n as u32);
    Some(format!("{}.{}", reverse_hex(h_entry), reverse_hex(h_id)))
}

/// The attempts to end one dialog: the first form to send, and the next one
/// after an answer. Sans-I/O: the dispatcher does the sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndDialog {
    proxy: Proxy,
    forms: Vec<DialogRef>,
}

impl EndDialog {
    /// The attempts for the module's `dialog_id`; an error names why the
    /// id cannot be used.
    pub fn new(proxy: Proxy, module_id: &str) -> Result<EndDialog, ParseError> {
        let invalid = || ParseError::InvalidValue { header: "dialog_id", value: module_id.to_string() };
        let id = module_id.trim();
        if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
            return Err(invalid());
        }
        let forms = match proxy {
            Proxy::Kamailio => {
                let (e, h) = id.split_once(':').ok_or_else(invalid)?;
                let h_entry = e.trim().parse().map_err(|_| invalid())?;
                let h_id = h.trim().parse().map_err(|_| invalid())?;
                alloc::vec![DialogRef::Entry { h_entry, h_id }]
            }
            Proxy::OpenSips => match opensips_dialog_id(id) {
                Some(hex) => alloc::vec![DialogRef::ReverseHex(hex), DialogRef::Number(id.to_string())],
                None => alloc::vec![DialogRef::Verbatim(id.to_string())],
            },
        };
        Ok(EndDialog { proxy, forms })
    }

    /// Every form, in the order they are tried.
    pub fn forms(&self) -> &[DialogRef] {
        &self.forms
    }

    /// The form to try after `answer` to the attempt `attempt` (0 is the
    /// first), or `None` when the answer is final: a success, an error other
    /// than "not found", or no other form left.
    pub fn next_after(&self, attempt: usize, answer: &Answer) -> Option<usize> {
        let next = attempt + 1;
        (answer.is_not_found() && next < self.forms.len()).then_some(next)
    }

    /// The JSON-RPC 2.0 request of attempt `attempt` with request id `id`.
    pub fn request(&self, attempt: usize, id: u64) -> String {
        let Some(form) = self.forms.get(attempt) else { return String::new() };
        let (method, params) = match (self.proxy, form) {
            (_, DialogRef::Entry { h_entry, h_id }) => ("dlg.end_dlg", serde_json::json!([h_entry, h_id])),
            (_, other) => ("dlg_end_dlg", serde_json::json!({ "dialog_id": other.as_text() })),
        };
        serde_json::json!({ "jsonrpc": "2.0", "method": method, "params": params, "id": id }).to_string()
    }
}

/// The proxy's answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `result` (its JSON text).
    Done(String),
    /// `error` with its code and message (OpenSIPS: 404 "Requested Dialog
    /// not found"; Kamailio: 404 "Requested Dialog not found" too).
    Refused { code: i64, message: String },
}

impl Answer {
    /// A JSON-RPC response, or OpenSIPS's plain `<code> <reason>` status
    /// line (what its MI answers when it cannot parse a request).
    pub fn parse(text: &str) -> Result<Answer, ParseError> {
        let text = text.trim();
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
            if let Some(e) = v.get("error") {
                let code = e.get("code").and_then(serde_json::Value::as_i64).unwrap_or(0);
                let message = e.get("message").and_then(serde_json::Value::as_str).unwrap_or_default().to_string();
                return Ok(Answer::Refused { code, message });
            }
            if let Some(r) = v.get("result") {
                return Ok(Answer::Done(r.to_string()));
            }
            return Err(ParseError::InvalidJson(format!("neither result nor error: {}", clip(text))));
        }
        let (code, message) = text.split_once(' ').unwrap_or((text, ""));
        match code.parse::<i64>() {
            Ok(code) if (100..1000).contains(&code) => Ok(Answer::Refused { code, message: message.to_string() }),
            _ => Err(ParseError::InvalidJson(format!("not a JSON-RPC answer: {}", clip(text)))),
        }
    }

    /// [`Answer::parse`] of the answer to the request with id `id`: a
    /// JSON-RPC answer with another `id` is refused (the reply socket or FIFO
    /// can be written by others than the proxy).
    pub fn parse_for(text: &str, id: u64) -> Result<Answer, ParseError> {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(text.trim()) {
            if v.get("id").and_then(serde_json::Value::as_u64) != Some(id) {
                return Err(ParseError::InvalidJson(format!("the answer is not to request {id}: {}", clip(text))));
            }
        }
        Answer::parse(text)
    }

    /// "No such dialog": the id was not in a form this proxy knows, or the
    /// dialog is gone.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Answer::Refused { code: 404, .. })
    }
}

/// At most 200 characters of `text`, for error messages.
fn clip(text: &str) -> &str {
    match text.char_indices().nth(200) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

/// The line written to the proxy's MI FIFO, naming the FIFO the proxy
/// answers on: OpenSIPS mi_fifo `:<reply fifo>:<request>\n`; Kamailio
/// jsonrpcs the request with a `reply_name` member. The reply FIFO's name is
/// a file name in the proxy's FIFO `reply_dir`, without `.` or `/`.
pub fn fifo_request(proxy: Proxy, reply_name: &str, request: &str) -> Result<String, ParseError> {
    if reply_name.is_empty() || reply_name.contains(['.', '/', '\\', ':']) || reply_name.chars().any(char::is_control) {
        return Err(ParseError::InvalidValue { header: "reply fifo", value: reply_name.to_string() });
    }
    match proxy {
        Proxy::OpenSips => Ok(format!(":{reply_name}:{request}\n")),
        Proxy::Kamailio => {
            let mut v: serde_json::Value =
                serde_json::from_str(request).map_err(|e| ParseError::InvalidJson(e.to_string()))?;
            let obj = v.as_object_mut().ok_or_else(|| ParseError::InvalidJson("not a JSON-RPC request".into()))?;
            obj.insert("reply_name".into(), serde_json::Value::String(reply_name.to_string()));
            Ok(format!("{v}\n"))
        }
    }
}

/// An `http://host[:port]/path` URL of the proxy's JSON-RPC over HTTP
/// (OpenSIPS mi_http: `http://127.0.0.1:8888/mi`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// `host` or `host:port` as written (the `Host` header).
    pub authority: String,
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl HttpUrl {
    pub fn parse(url: &str) -> Result<HttpUrl, ParseError> {
        let invalid = |why: &str| ParseError::InvalidValue { header: "url", value: format!("{url} ({why})") };
        let rest = url.strip_prefix("http://").ok_or_else(|| invalid("only http:// is supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(invalid("no host"));
        }
        if path.chars().any(|c| c.is_control() || c == ' ') {
            return Err(invalid("bad path"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, rest) = v6.split_once(']').ok_or_else(|| invalid("unclosed ["))?;
            let port = match rest.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| invalid("bad port"))?,
                None if rest.is_empty() => 80,
                None => return Err(invalid("bad port")),
            };
            (h.to_string(), port)
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| invalid("bad port"))?),
                None => (authority.to_string(), 80),
            }
        };
        if host.is_empty() || port == 0 {
            return Err(invalid("no host or port 0"));
        }
        Ok(HttpUrl { authority: authority.to_string(), host, port, path: path.to_string() })
    }

    /// An HTTP/1.1 POST of the JSON-RPC `body`; the connection closes after it.
    pub fn post(&self, body: &str) -> String {
        format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\nUser-Agent: relaybox\r\n\r\n{body}",
            self.path,
            self.authority,
            body.len()
        )
    }
}

/// The status and body of a complete HTTP/1.x response (read until the
/// server closed): `Content-Length` and chunked bodies are understood.
pub fn http_response(bytes: &[u8]) -> Result<(u16, String), ParseError> {
    let bad = |why: &str| ParseError::InvalidFraming(format!("HTTP response: {why}"));
    let split = bytes.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no end of header"))?;
    let head = core::str::from_utf8(&bytes[..split]).map_err(|_| ParseError::NotUtf8)?;
    let body = &bytes[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let mut parts = status.splitn(3, ' ');
    if !parts.next().unwrap_or_default().starts_with("HTTP/1.") {
        return Err(bad("not HTTP/1.x"));
    }
    let code: u16 = parts.next().and_then(|c| c.parse().ok()).ok_or_else(|| bad("no status code"))?;
    let (mut length, mut chunked) = (None, false);
    for line in lines {
        let (name, value) = line.split_once(':').ok_or_else(|| bad("malformed header"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| bad("bad Content-Length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    let body = if chunked {
        dechunk(body).ok_or_else(|| bad("broken chunked body"))?
    } else if let Some(n) = length {
        body.get(..n).ok_or_else(|| bad("body shorter than Content-Length"))?.to_vec()
    } else {
        body.to_vec()
    };
    Ok((code, String::from_utf8(body).map_err(|_| ParseError::NotUtf8)?))
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = core::str::from_utf8(&data[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issues_dialog_id_is_what_dlg_list_prints() {
        // 17511492765899 = 4077 << 32 | 911100107
        assert_eq!(opensips_dialog_id("17511492765899").as_deref(), Some("def.bc84e463"));
        assert_eq!(reverse_hex(0), "0");
        assert_eq!(reverse_hex(0x10), "01");
        assert_eq!(reverse_hex(u32::MAX), "ffffffff");
        assert_eq!(opensips_dialog_id("0").as_deref(), Some("0.0"));
        assert_eq!(opensips_dialog_id("4294967296").as_deref(), Some("1.0"));
        assert_eq!(opensips_dialog_id("18446744073709551615").as_deref(), Some("ffffffff.ffffffff"));
        assert_eq!(opensips_dialog_id("18446744073709551616"), None);
        assert_eq!(opensips_dialog_id("abc@host"), None);
        // Pairs seen in the e2e tests: the module's dialog_id and the `ID`
        // OpenSIPS 3.6.8's dlg_list printed for the same call.
        assert_eq!(opensips_dialog_id("3492254649611").as_deref(), Some("d23.b0d099a1"));
        assert_eq!(opensips_dialog_id("1241842141401").as_deref(), Some("121.9d84f832"));
    }

    #[test]
    fn opensips_gets_the_dlg_list_form_first_then_the_number() {
        let end = EndDialog::new(Proxy::OpenSips, "17511492765899").unwrap();
        let first: serde_json::Value = serde_json::from_str(&end.request(0, 7)).unwrap();
        assert_eq!(
            first,
            serde_json::json!({"jsonrpc": "2.0", "method": "dlg_end_dlg", "params": {"dialog_id": "def.bc84e463"}, "id": 7})
        );
        let second: serde_json::Value = serde_json::from_str(&end.request(1, 8)).unwrap();
        assert_eq!(second["params"]["dialog_id"], "17511492765899");
        assert_eq!(end.request(2, 9), "");
    }

    #[test]
    fn a_404_retries_with_the_number_once_and_nothing_else_retries() {
        let end = EndDialog::new(Proxy::OpenSips, "17511492765899").unwrap();
        let not_found =
            Answer::parse(r#"{"jsonrpc":"2.0","error":{"code":404,"message":"Requested Dialog not found"},"id":1}"#)
                .unwrap();
        assert!(not_found.is_not_found());
        assert_eq!(end.next_after(0, &not_found), Some(1));
        assert_eq!(end.next_after(1, &not_found), None, "no third form");
        let ok = Answer::parse(r#"{"jsonrpc":"2.0","result":"OK","id":1}"#).unwrap();
        assert_eq!(ok, Answer::Done("\"OK\"".into()));
        assert_eq!(end.next_after(0, &ok), None);
        let other = Answer::parse(r#"{"jsonrpc":"2.0","error":{"code":500,"message":"x"},"id":1}"#).unwrap();
        assert_eq!(end.next_after(0, &other), None);
        // A Call-ID (not a number) is sent once, as it is.
        let callid = EndDialog::new(Proxy::OpenSips, "abc@host").unwrap();
        assert_eq!(callid.forms(), &[DialogRef::Verbatim("abc@host".into())]);
        assert_eq!(callid.next_after(0, &not_found), None);
    }

    #[test]
    fn kamailio_gets_two_numbers_once() {
        let end = EndDialog::new(Proxy::Kamailio, "3456:91827").unwrap();
        let k: serde_json::Value = serde_json::from_str(&end.request(0, 7)).unwrap();
        assert_eq!(k["method"], "dlg.end_dlg");
        assert_eq!(k["params"], serde_json::json!([3456, 91827]));
        assert_eq!(k["id"], 7);
        let not_found = Answer::Refused { code: 404, message: String::new() };
        assert_eq!(end.next_after(0, &not_found), None);
        assert!(EndDialog::new(Proxy::Kamailio, "1234567").is_err());
        assert!(EndDialog::new(Proxy::OpenSips, "").is_err());
        assert!(EndDialog::new(Proxy::OpenSips, "a\nb").is_err());
    }

    #[test]
    fn answers_to_other_requests_are_refused() {
        let ok = r#"{"jsonrpc":"2.0","result":"OK","id":7}"#;
        assert_eq!(Answer::parse_for(ok, 7).unwrap(), Answer::Done("\"OK\"".into()));
        assert!(Answer::parse_for(ok, 8).is_err());
        assert!(Answer::parse_for(r#"{"jsonrpc":"2.0","result":"OK"}"#, 7).is_err());
        assert!(!Answer::parse_for("500 Internal error\n", 7).unwrap().is_not_found());
    }

    #[test]
    fn status_line_answers_and_garbage() {
        assert_eq!(
            Answer::parse("400 Bad request\n").unwrap(),
            Answer::Refused { code: 400, message: "Bad request".into() }
        );
        assert!(Answer::parse("hello").is_err());
        assert!(Answer::parse("{\"id\":1}").is_err());
        assert!(Answer::parse("").is_err());
    }

    #[test]
    fn fifo_framing() {
        assert_eq!(fifo_request(Proxy::OpenSips, "rbx_1", "{\"id\":1}").unwrap(), ":rbx_1:{\"id\":1}\n");
        let k = fifo_request(Proxy::Kamailio, "rbx_1", r#"{"jsonrpc":"2.0","id":1}"#).unwrap();
        assert!(k.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(k.trim()).unwrap();
        assert_eq!(v, serde_json::json!({"jsonrpc": "2.0", "id": 1, "reply_name": "rbx_1"}));
        assert!(fifo_request(Proxy::Kamailio, "rbx_1", "[1]").is_err());
        for bad in ["", "a.b", "../x", "a/b", "a:b", "a\nb"] {
            assert!(fifo_request(Proxy::OpenSips, bad, "{}").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn http_url_and_request() {
        let u = HttpUrl::parse("http://127.0.0.1:8888/mi").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("127.0.0.1", 8888, "/mi"));
        assert_eq!(
            u.post("{}"),
            "POST /mi HTTP/1.1\r\nHost: 127.0.0.1:8888\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\
             Connection: close\r\nUser-Agent: relaybox\r\n\r\n{}"
        );
        let v6 = HttpUrl::parse("http://[::1]:8080").unwrap();
        assert_eq!((v6.host.as_str(), v6.port, v6.path.as_str()), ("::1", 8080, "/"));
        assert_eq!(HttpUrl::parse("http://proxy/json").unwrap().port, 80);
        for bad in ["https://x/mi", "http://", "http://h:0/", "http://h:x/", "http://u@h/", "http://h/a b", "ftp://h"] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn http_responses() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\nhelloEXTRA";
        assert_eq!(http_response(r).unwrap(), (200, "hello".into()));
        let c = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2;x=1\r\nlo\r\n0\r\n\r\n";
        assert_eq!(http_response(c).unwrap(), (200, "hello".into()));
        let close = b"HTTP/1.0 404 Not Found\r\n\r\nnope";
        assert_eq!(http_response(close).unwrap(), (404, "nope".into()));
        assert!(http_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(http_response(b"SIP/2.0 200 OK\r\n\r\n").is_err());
        assert!(http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_err());
        assert!(http_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err());
    }
}
