//! SNTP (RFC 4330, NTPv4 packet format of RFC 5905) for the box's clock:
//! a client request and the checks and arithmetic on the server's reply.
//! Times are nanoseconds since the Unix epoch (`i128`, so that a clock at
//! 1970 and a server in 2036's second NTP era both fit); the caller reads
//! and sets its clock.

use crate::ParseError;

/// Length of an NTP packet without extensions or authenticator.
pub const PACKET_LEN: usize = 48;
/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_TO_UNIX: i128 = 2_208_988_800;
const NANOS: i128 = 1_000_000_000;
/// One NTP era: 2^32 seconds.
const ERA: i128 = 1 << 32;
const VERSION: u8 = 4;
const MODE_CLIENT: u8 = 3;
const MODE_SERVER: u8 = 4;
const LEAP_ALARM: u8 = 3;

/// A 64-bit NTP timestamp (seconds since 1900 in the current era, fraction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// From nanoseconds since the Unix epoch (wraps into the NTP era).
    pub fn from_unix_nanos(nanos: i128) -> Self {
        let secs = nanos.div_euclid(NANOS) + NTP_TO_UNIX;
        let frac = (nanos.rem_euclid(NANOS) << 32) / NANOS;
        Timestamp(((secs.rem_euclid(ERA) as u64) << 32) | frac as u64)
    }

    /// To nanoseconds since the Unix epoch, RFC 4330's way for the era: a
    /// seconds value with its top bit clear is in era 1 (2036-2104).
    pub fn to_unix_nanos(self) -> i128 {
        let secs = i128::from(self.0 >> 32);
        let era = if secs & (1 << 31) == 0 { ERA } else { 0 };
        let frac = (i128::from(self.0 & 0xffff_ffff) * NANOS) >> 32;
        (secs + era - NTP_TO_UNIX) * NANOS + frac
    }

    fn read(b: &[u8]) -> Self {
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[..8]);
        Timestamp(u64::from_be_bytes(v))
    }
}

/// A client request sent at `now` (Unix nanoseconds). Its transmit
/// timestamp comes back as the reply's originate timestamp: keep it to
/// match the reply with [`Reply::parse`].
pub fn request(now: i128) -> ([u8; PACKET_LEN], Timestamp) {
    let mut p = [0u8; PACKET_LEN];
    p[0] = (VERSION << 3) | MODE_CLIENT;
    let sent = Timestamp::from_unix_nanos(now);
    p[40..48].copy_from_slice(&sent.0.to_be_bytes());
    (p, sent)
}

/// A server's answer, checked, with the offset and delay it gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub stratum: u8,
    /// Add this to the local clock to get the server's time (nanoseconds).
    pub offset: i128,
    /// The round trip minus the server's processing time (nanoseconds).
    pub delay: i128,
}

impl Reply {
    /// Checks a reply to the request sent as `sent` (at `t1`, local Unix
    /// nanoseconds) and received at `t4`: a server-mode packet, a
    /// synchronised server (no leap alarm, stratum 1-15), our originate
    /// timestamp echoed (so a stray or spoofed datagram is refused), and
    /// non-zero server timestamps.
    pub fn parse(packet: &[u8], sent: Timestamp, t1: i128, t4: i128) -> Result<Reply, ParseError> {
        if packet.len() < PACKET_LEN {
            return Err(ParseError::Ntp("shorter than 48 bytes"));
        }
        let (leap, version, mode) = (packet[0] >> 6, (packet[0] >> 3) & 7, packet[0] & 7);
        if mode != MODE_SERVER || !(3..=4).contains(&version) {
            return Err(ParseError::Ntp("not a server reply"));
        }
        let stratum = packet[1];
        if leap == LEAP_ALARM || stratum == 0 || stratum > 15 {
            // Stratum 0 is a kiss-o'-death (RATE, DENY): the server says go away.
            return Err(ParseError::Ntp("server not synchronised or refusing"));
        }
        if Timestamp::read(&packet[24..32]) != sent {
            return Err(ParseError::Ntp("not the answer to our request"));
        }
        let (received, transmitted) = (Timestamp::read(&packet[32..40]), Timestamp::read(&packet[40..48]));
        if received.0 == 0 || transmitted.0 == 0 {
            return Err(ParseError::Ntp("zero"));
        }
        let (t2, t3) = (received.to_unix_nanos(), transmitted.to_unix_nanos());
        let offset = ((t2 - t1) + (t3 - t4)) / 2;
        let delay = (t4 - t1) - (t3 - t2);
        Ok(Reply { stratum, offset, delay })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i128 = NANOS;

    /// A server reply to `req`, the server's clock reading `t2` and `t3`.
    fn reply(req: &[u8; PACKET_LEN], t2: i128, t3: i128, stratum: u8) -> [u8; PACKET_LEN] {
        let mut p = [0u8; PACKET_LEN];
        p[0] = (VERSION << 3) | MODE_SERVER;
        p[1] = stratum;
        p[24..32].copy_from_slice(&req[40..48]);
        p[32..40].copy_from_slice(&Timestamp::from_unix_nanos(t2).0.to_be_bytes());
        p[40..48].copy_from_slice(&Timestamp::from_unix_nanos(t3).0.to_be_bytes());
        p
    }

    #[test]
    fn timestamps_round_trip_in_both_eras_to_the_nanosecond_scale() {
        for unix in [0, 1_795_587_062 * S + 123_456_789, 2_085_978_496 * S + 1, 2_500_000_000 * S] {
            let back = Timestamp::from_unix_nanos(unix).to_unix_nanos();
            assert!((back - unix).abs() <= 1, "{unix} -> {back}");
        }
        // 1970-01-01 is NTP second 2208988800 of era 0.
        assert_eq!(Timestamp::from_unix_nanos(0).0 >> 32, 2_208_988_800);
    }

    #[test]
    fn a_box_that_woke_up_in_1970_learns_the_offset_to_2026() {
        let t1 = 5 * S; // five seconds after boot, no RTC
        let (req, sent) = request(t1);
        assert_eq!(req[0], 0x23, "version 4, client mode");
        let server = 1_795_587_062 * S;
        let p = reply(&req, server + 10_000_000, server + 10_000_100, 2);
        let t4 = t1 + 20_000_000; // 20 ms round trip
        let r = Reply::parse(&p, sent, t1, t4).unwrap();
        assert_eq!(r.stratum, 2);
        // The 100 ns the server held the request split evenly: 50 ns off at most.
        assert!((r.offset - (server - t1)).abs() <= 50, "{}", r.offset);
        assert!((r.delay - 19_999_900).abs() < 4, "{}", r.delay);
    }

    #[test]
    fn only_a_synchronised_server_answering_our_request_counts() {
        let t1 = 1_795_587_062 * S;
        let (req, sent) = request(t1);
        let good = reply(&req, t1, t1, 3);
        assert!(Reply::parse(&good, sent, t1, t1).is_ok());
        let mut other = good;
        other[24] ^= 1;
        assert!(Reply::parse(&other, sent, t1, t1).is_err(), "originate mismatch");
        assert!(Reply::parse(&reply(&req, t1, t1, 0), sent, t1, t1).is_err(), "kiss-o'-death");
        assert!(Reply::parse(&reply(&req, t1, t1, 16), sent, t1, t1).is_err(), "unsynchronised");
        let mut alarm = good;
        alarm[0] |= 0xc0;
        assert!(Reply::parse(&alarm, sent, t1, t1).is_err(), "leap alarm");
        let mut client = good;
        client[0] = (VERSION << 3) | MODE_CLIENT;
        assert!(Reply::parse(&client, sent, t1, t1).is_err(), "a request is not a reply");
        assert!(Reply::parse(&good[..47], sent, t1, t1).is_err());
        let mut zero = good;
        zero[40..48].fill(0);
        assert!(Reply::parse(&zero, sent, t1, t1).is_err());
    }
}
