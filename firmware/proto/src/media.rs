//! One `media` item of an `update`: `type:ip:port:direction:params`.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::net::IpAddr;

use crate::ParseError;

/// The SDP media type of a stream (`m=` line).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MediaType {
    Audio,
    Video,
    /// T.38 fax over udptl.
    Image,
    Text,
    Application,
    Message,
    /// Any other type: MediaProxy relays a stream whatever its `m=` type.
    Other(String),
}

impl MediaType {
    pub fn as_str(&self) -> &str {
        match self {
            MediaType::Audio => "audio",
            MediaType::Video => "video",
            MediaType::Image => "image",
            MediaType::Text => "text",
            MediaType::Application => "application",
            MediaType::Message => "message",
            MediaType::Other(name) => name,
        }
    }

    /// Any SDP token (`m=` types are tokens); `None` for an empty name or
    /// one with characters a token cannot have.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "audio" => MediaType::Audio,
            "video" => MediaType::Video,
            "image" => MediaType::Image,
            "text" => MediaType::Text,
            "application" => MediaType::Application,
            "message" => MediaType::Message,
            "" => return None,
            other if other.bytes().all(is_token_char) => MediaType::Other(other.to_string()),
            _ => return None,
        })
    }
}

/// RFC 4566 `token-char`.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`{|}~".contains(&b)
}

impl fmt::Display for MediaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The SDP direction attribute of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "sendrecv" => Direction::SendRecv,
            "sendonly" => Direction::SendOnly,
            "recvonly" => Direction::RecvOnly,
            "inactive" => Direction::Inactive,
            _ => return None,
        })
    }
}

/// One stream as the proxy module describes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MediaItem {
    pub media_type: MediaType,
    pub ip: IpAddr,
    /// 0 for a rejected or removed stream.
    pub port: u16,
    pub direction: Direction,
    /// `ice=yes`: the endpoint offers ICE candidates.
    pub ice: bool,
}

impl MediaItem {
    /// Hold as the module signals it: `0.0.0.0` or a direction that does not
    /// let the other side send to this one.
    pub fn is_hold(&self) -> bool {
        self.ip.is_unspecified() || matches!(self.direction, Direction::SendOnly | Direction::Inactive)
    }

    /// A port of 0 rejects or removes the stream.
    pub fn is_rejected(&self) -> bool {
        self.port == 0
    }

    /// Parses one item. The address may be IPv6, so the fields are taken from
    /// both ends: the type first, then from the right the parameters (every
    /// trailing `name=value`, none or several: `ice=no:foo=bar`), the
    /// direction and the port. As MediaProxy does, parameters other than
    /// `ice` are ignored and any `ice` value but `yes` means no ICE.
    pub fn parse(item: &str) -> Result<Self, ParseError> {
        let bad = || ParseError::InvalidMedia(item.to_string());
        let (media_type, mut rest) = item.split_once(':').ok_or_else(bad)?;
        let media_type = MediaType::parse(media_type).ok_or_else(bad)?;
        let mut ice = false;
        while let Some((head, last)) = rest.rsplit_once(':') {
            if !last.contains('=') {
                break;
            }
            // Older relaybox parts wrote `;`-separated parameters.
            for param in last.split(';').filter(|p| !p.is_empty()) {
                let (k, v) = param.split_once('=').ok_or_else(bad)?;
                if k == "ice" {
                    ice = v == "yes";
                }
            }
            rest = head;
        }
        let mut right = rest.rsplitn(3, ':');
        let direction = right.next().and_then(Direction::parse).ok_or_else(bad)?;
        let port = right.next().and_then(|p| p.parse::<u16>().ok()).ok_or_else(bad)?;
        let ip = right.next().ok_or_else(bad)?;
        let ip = ip.strip_prefix('[').and_then(|i| i.strip_suffix(']')).unwrap_or(ip);
        let ip: IpAddr = ip.parse().map_err(|_| bad())?;
        Ok(MediaItem { media_type, ip, port, direction, ice })
    }

    /// Parses the whole `media` header: comma-separated items, empty for none.
    pub fn parse_list(value: &str, max_items: usize) -> Result<Vec<Self>, ParseError> {
        let mut items = Vec::new();
        for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            if items.len() == max_items {
                return Err(ParseError::TooMany { what: "media items", limit: max_items });
            }
            items.push(MediaItem::parse(item)?);
        }
        Ok(items)
    }

    /// Encodes a list as the `media` header value.
    pub fn encode_list(items: &[MediaItem]) -> String {
        let mut out = String::new();
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&item.to_string());
        }
        out
    }
}

impl fmt::Display for MediaItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}:ice={}",
            self.media_type,
            self.ip,
            self.port,
            self.direction.as_str(),
            if self.ice { "yes" } else { "no" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_example_items() {
        let items = MediaItem::parse_list(
            "audio:192.168.1.10:4000:sendrecv:ice=no,video:192.168.1.10:4002:sendrecv:ice=yes",
            16,
        )
        .unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].media_type, MediaType::Audio);
        assert_eq!(items[0].port, 4000);
        assert!(!items[0].ice);
        assert_eq!(items[1].media_type, MediaType::Video);
        assert!(items[1].ice);
        assert_eq!(
            MediaItem::encode_list(&items),
            "audio:192.168.1.10:4000:sendrecv:ice=no,video:192.168.1.10:4002:sendrecv:ice=yes"
        );
    }

    #[test]
    fn ipv6_and_hold() {
        let m = MediaItem::parse("audio:2001:db8::1:5000:sendonly:ice=no").unwrap();
        assert_eq!(m.ip, "2001:db8::1".parse::<IpAddr>().unwrap());
        assert_eq!(m.port, 5000);
        assert!(m.is_hold());
        assert!(MediaItem::parse("audio:0.0.0.0:5000:sendrecv:ice=no").unwrap().is_hold());
        assert!(MediaItem::parse("image:10.0.0.1:0:sendrecv:ice=no").unwrap().is_rejected());
    }

    #[test]
    fn items_as_mediaproxy_accepts_them() {
        // MediaProxy's test scripts send no parameters at all.
        let m = MediaItem::parse("audio:192.0.2.1:40000:sendrecv").unwrap();
        assert_eq!((m.port, m.direction, m.ice), (40000, Direction::SendRecv, false));
        let m = MediaItem::parse("audio:2001:db8::1:5000:sendrecv").unwrap();
        assert_eq!((m.ip, m.port), ("2001:db8::1".parse::<IpAddr>().unwrap(), 5000));
        // Several parameters; only `ice` means something.
        let m = MediaItem::parse("video:192.0.2.1:4002:recvonly:foo=bar:ice=yes:x=").unwrap();
        assert_eq!((m.media_type, m.direction, m.ice), (MediaType::Video, Direction::RecvOnly, true));
        assert!(!MediaItem::parse("audio:192.0.2.1:4000:sendrecv:ice=no:foo=bar").unwrap().ice);
        assert!(!MediaItem::parse("audio:1.2.3.4:4000:sendrecv:ice=maybe").unwrap().ice);
        assert!(MediaItem::parse("audio:1.2.3.4:4000:sendrecv:ice=yes;x=1").unwrap().ice);
        // Any media type.
        let m = MediaItem::parse("noise:1.2.3.4:4000:sendrecv:ice=no").unwrap();
        assert_eq!(m.media_type, MediaType::Other("noise".into()));
        assert_eq!(m.to_string(), "noise:1.2.3.4:4000:sendrecv:ice=no");
    }

    #[test]
    fn rejects_bad_items() {
        for bad in [
            "",
            "audio",
            "audio:1.2.3.4",
            "audio:1.2.3.4:4000",
            ":1.2.3.4:4000:sendrecv",
            "au dio:1.2.3.4:4000:sendrecv",
            "audio:1.2.3.4:70000:sendrecv:ice=no",
            "audio:1.2.3.4:4000:sideways:ice=no",
            "audio:not-an-ip:4000:sendrecv:ice=no",
            "audio:1.2.3.4:4000:sendrecv:ice",
            "audio:1.2.3.4:4000:sendrecv:ice=no:junk",
        ] {
            assert!(MediaItem::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(matches!(
            MediaItem::parse_list("audio:1.2.3.4:1:sendrecv:ice=no,audio:1.2.3.4:2:sendrecv:ice=no", 1),
            Err(ParseError::TooMany { .. })
        ));
    }
}
