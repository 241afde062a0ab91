//! Where the gateway is: the IPv4 default route of `/proc/net/route`
//! (Linux), parsed by a pure function.

use std::net::Ipv4Addr;

const RTF_UP: u32 = 0x1;
const RTF_GATEWAY: u32 = 0x2;
/// `/proc/net/route` is small; a longer one is cut here.
const MAX_ROUTE_TABLE: u64 = 1 << 20;

/// The gateway of this host's IPv4 default route (the lowest metric), from
/// `/proc/net/route`; `None` when there is none or the file cannot be read.
pub fn default_gateway() -> Option<Ipv4Addr> {
    use std::io::Read;
    let file = std::fs::File::open("/proc/net/route").ok()?;
    let mut table = String::new();
    file.take(MAX_ROUTE_TABLE).read_to_string(&mut table).ok()?;
    parse_default_gateway(&table)
}

/// The default route's gateway in a `/proc/net/route` table: destination
/// and mask 0, flags up and gateway, lowest metric first. Addresses are
/// the kernel's `%08X` of a network-order word, so their bytes are the
/// native-endian bytes of the number.
pub fn parse_default_gateway(table: &str) -> Option<Ipv4Addr> {
    let mut best: Option<(u32, Ipv4Addr)> = None;
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // Iface Destination Gateway Flags RefCnt Use Metric Mask MTU Window IRTT
        let [_, destination, gateway, flags, _, _, metric, mask, ..] = fields[..] else {
            continue;
        };
        let hex = |s: &str| u32::from_str_radix(s, 16).ok();
        let (Some(destination), Some(gateway), Some(flags), Some(mask)) =
            (hex(destination), hex(gateway), hex(flags), hex(mask))
        else {
            continue;
        };
        let Ok(metric) = metric.parse::<u32>() else {
            continue;
        };
        if destination != 0 || mask != 0 || flags & (RTF_UP | RTF_GATEWAY) != RTF_UP | RTF_GATEWAY {
            continue;
        }
        let ip = Ipv4Addr::from(gateway.to_ne_bytes());
        if ip.is_unspecified() {
            continue;
        }
        if best.is_none_or(|(m, _)| metric < m) {
            best = Some((metric, ip));
        }
    }
    best.map(|(_, ip)| ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(ip: [u8; 4]) -> String {
        format!("{:08X}", u32::from_ne_bytes(ip))
    }

    #[test]
    fn finds_the_default_route_with_the_lowest_metric() {
        let table = format!(
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
             eth0\t{}\t00000000\t0001\t0\t0\t0\t{}\t0\t0\t0\n\
             wlan0\t00000000\t{}\t0003\t0\t0\t600\t00000000\t0\t0\t0\n\
             eth0\t00000000\t{}\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
             down0\t00000000\t{}\t0002\t0\t0\t1\t00000000\t0\t0\t0\n\
             junk\n",
            word([10, 0, 1, 0]),
            word([255, 255, 255, 0]),
            word([192, 168, 2, 1]),
            word([10, 0, 1, 1]),
            word([10, 9, 9, 9]),
        );
        assert_eq!(
            parse_default_gateway(&table),
            Some(Ipv4Addr::new(10, 0, 1, 1))
        );
    }

    #[test]
    fn no_default_route_is_none() {
        assert_eq!(parse_default_gateway(""), None);
        let table = format!(
            "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
             eth0\t{}\t00000000\t0001\t0\t0\t0\t{}\n",
            word([10, 0, 1, 0]),
            word([255, 255, 255, 0]),
        );
        assert_eq!(parse_default_gateway(&table), None);
    }
}
