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
}

impl MediaType {
    pub fn as_str(&self) -> &'static str {
        match self {
            MediaType::Audio => "audio",
            MediaType::Video => "video",
            MediaType::Image => "image",
            MediaType::Text => "text",
            MediaType::Application => "application",
            MediaType::Message => "message",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "audio" => MediaType::Audio,
            "video" => MediaType::Video,
            "image" => MediaType::Image,
            "text" => MediaType::Text,
            "application" => MediaType::Application,
            "message" => MediaType::Message,
            _ => return None,
        })
    }
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
    /// both ends: type first, then params, direction and port from the right.
    pub fn parse(item: &str) -> Result<Self, ParseError> {
        let bad = || ParseError::InvalidMedia(item.to_string());
        let (media_type, rest) = item.split_once(':').ok_or_else(bad)?;
        let media_type = MediaType::parse(media_type).ok_or_else(bad)?;
        let mut right = rest.rsplitn(4, ':');
        let params = right.next().ok_or_else(bad)?;
        let direction = right.next().and_then(Direction::parse).ok_or_else(bad)?;
        let port = right.next().and_then(|p| p.parse::<u16>().ok()).ok_or_else(bad)?;
        let ip = right.next().ok_or_else(bad)?;
        let ip = ip.strip_prefix('[').and_then(|i| i.strip_suffix(']')).unwrap_or(ip);
        let ip: IpAddr = ip.parse().map_err(|_| bad())?;
        let mut ice = false;
        for param in params.split(';').filter(|p| !p.is_empty()) {
            let (k, v) = param.split_once('=').ok_or_else(bad)?;
            if k == "ice" {
                ice = match v {
                    "yes" => true,
                    "no" => false,
                    _ => return Err(bad()),
                };
            }
        }
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
    fn rejects_bad_items() {
        for bad in [
            "",
            "audio",
            "audio:1.2.3.4",
            "audio:1.2.3.4:70000:sendrecv:ice=no",
            "audio:1.2.3.4:4000:sideways:ice=no",
            "audio:not-an-ip:4000:sendrecv:ice=no",
            "noise:1.2.3.4:4000:sendrecv:ice=no",
            "audio:1.2.3.4:4000:sendrecv:ice=maybe",
            "audio:1.2.3.4:4000:sendrecv:ice",
        ] {
            assert!(MediaItem::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(matches!(
            MediaItem::parse_list("audio:1.2.3.4:1:sendrecv:ice=no,audio:1.2.3.4:2:sendrecv:ice=no", 1),
            Err(ParseError::TooMany { .. })
        ));
    }
}
