//! Which proxy serves a target: one proxy, from where the user set it,
//! minus the hosts that `NO_PROXY` sends direct.
//!
//! Where the proxy comes from, first match wins (the binary decides the
//! first two; [`ProxyRules::from_env`] the rest):
//!
//! 1. the command line (`--proxy URL`, or `--proxy none` for no proxy),
//! 2. the config file (`proxy = "URL"` or `"none"`),
//! 3. `https_proxy` / `HTTPS_PROXY` (ferry's connections are tunnels, as
//!    HTTPS through a proxy is: the CONNECT kind of proxy),
//! 4. `all_proxy` / `ALL_PROXY`.
//!
//! `no_proxy` / `NO_PROXY` applies to all of them, as curl does: a comma
//! list of `*` (no proxy at all), host names (`example.com` also covers
//! `a.example.com`; `.example.com` and `*.example.com` the same), IP
//! addresses and networks (`10.0.0.0/8`, `2001:db8::/32`). A `:port` on
//! an entry is ignored.

use std::fmt;
use std::net::IpAddr;

use tracing::debug;

use crate::url::{ProxyUrl, ProxyUrlError};

/// Where the proxy setting came from, for logs and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `--proxy` on the command line.
    Flag,
    /// The `proxy` key of the config file.
    Config,
    /// An environment variable, by name.
    Env(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag => f.write_str("--proxy"),
            Source::Config => f.write_str("the config file's proxy key"),
            Source::Env(name) => f.write_str(name),
        }
    }
}

/// The proxy to use, if any, and the hosts to reach without it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyRules {
    proxy: Option<(ProxyUrl, Source)>,
    bypass: Bypass,
}

/// Why [`ProxyRules::from_env`] failed: a variable holds no proxy URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name} is not a proxy URL: {error}")]
pub struct EnvError {
    /// The variable.
    pub name: &'static str,
    /// What is wrong with its value.
    pub error: ProxyUrlError,
}

/// The proxy variables, the lower-case spelling first (curl's order).
const PROXY_VARS: [&str; 4] = ["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"];
const NO_PROXY_VARS: [&str; 2] = ["no_proxy", "NO_PROXY"];

impl ProxyRules {
    /// No proxy: everything direct.
    pub fn direct() -> Self {
        ProxyRules::default()
    }

    /// `proxy` for every target, set by `source`.
    pub fn new(proxy: ProxyUrl, source: Source) -> Self {
        ProxyRules {
            proxy: Some((proxy, source)),
            bypass: Bypass::default(),
        }
    }

    /// The same, sending the hosts `bypass` names direct.
    pub fn with_bypass(mut self, bypass: Bypass) -> Self {
        self.bypass = bypass;
        self
    }

    /// From the environment (`var` reads one variable): the first of
    /// `https_proxy`, `HTTPS_PROXY`, `all_proxy`, `ALL_PROXY` that is set
    /// and not empty, and `no_proxy`/`NO_PROXY`.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, EnvError> {
        let mut rules = ProxyRules::direct().with_bypass(Bypass::from_env(&var));
        for name in PROXY_VARS {
            let Some(value) = var(name).filter(|v| !v.trim().is_empty()) else {
                continue;
            };
            let proxy = value.parse().map_err(|error| EnvError { name, error })?;
            rules.proxy = Some((proxy, Source::Env(name)));
            break;
        }
        Ok(rules)
    }

    /// The proxy set, whatever the target, and where it was set.
    pub fn proxy(&self) -> Option<(&ProxyUrl, Source)> {
        self.proxy.as_ref().map(|(url, source)| (url, *source))
    }

    /// The hosts that go direct.
    pub fn bypass(&self) -> &Bypass {
        &self.bypass
    }

    /// The proxy to reach `host` through, or `None` to go direct; logs
    /// (debug) the choice and why.
    pub fn select(&self, host: &str) -> Option<&ProxyUrl> {
        let (proxy, source) = self.proxy.as_ref()?;
        if let Some(entry) = self.bypass.matching(host) {
            debug!(%host, %proxy, %entry, "no proxy for this host: NO_PROXY names it");
            return None;
        }
        debug!(%host, %proxy, %source, "through the proxy");
        Some(proxy)
    }
}

/// The `NO_PROXY` list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bypass {
    entries: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    All,
    /// A host name and its subdomains (lower case, no leading dot).
    Domain(String),
    /// An address or a network.
    Net {
        ip: IpAddr,
        prefix: u8,
    },
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::All => f.write_str("*"),
            Entry::Domain(name) => f.write_str(name),
            Entry::Net { ip, prefix } => write!(f, "{ip}/{prefix}"),
        }
    }
}

impl Bypass {
    /// From `no_proxy`, or else `NO_PROXY`.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Self {
        NO_PROXY_VARS
            .iter()
            .find_map(|name| var(name))
            .map(|list| Bypass::parse(&list))
            .unwrap_or_default()
    }

    /// A comma (or space) separated list; entries that are neither names
    /// nor addresses are skipped.
    pub fn parse(list: &str) -> Self {
        let entries = list
            .split([',', ' '])
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .filter_map(parse_entry)
            .collect();
        Bypass { entries }
    }

    /// Whether `host` goes direct.
    pub fn covers(&self, host: &str) -> bool {
        self.matching(host).is_some()
    }

    fn matching(&self, host: &str) -> Option<&Entry> {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let ip = host.parse::<IpAddr>().ok();
        self.entries.iter().find(|entry| match (entry, ip) {
            (Entry::All, _) => true,
            (Entry::Domain(name), None) => {
                host == *name
                    || host
                        .strip_suffix(name.as_str())
                        .is_some_and(|head| head.ends_with('.'))
            }
            (Entry::Net { ip: net, prefix }, Some(ip)) => in_network(ip, *net, *prefix),
            _ => false,
        })
    }
}

fn parse_entry(entry: &str) -> Option<Entry> {
    if entry == "*" {
        return Some(Entry::All);
    }
    let (address, prefix) = match entry.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix.parse::<u8>().ok()?)),
        None => (entry, None),
    };
    let bare = address.trim_start_matches('[');
    let bare = match bare.split_once(']') {
        Some((v6, _port)) => v6,
        None => bare,
    };
    if let Ok(ip) = bare.parse::<IpAddr>() {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        return (prefix <= max).then_some(Entry::Net { ip, prefix });
    }
    if prefix.is_some() {
        return None;
    }
    // `host:port` and `1.2.3.4:port`: the port is ignored.
    let host = match address.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => address,
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        return Some(Entry::Net { ip, prefix });
    }
    let name = host
        .trim_start_matches('*')
        .trim_start_matches('.')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    valid.then_some(Entry::Domain(name))
}

fn in_network(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    let (ip, net, bits) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(a.to_bits()), u128::from(b.to_bits()), 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (a.to_bits(), b.to_bits(), 128),
        // An IPv4-mapped IPv6 address against an IPv4 entry.
        (IpAddr::V6(a), IpAddr::V4(b)) => match a.to_ipv4_mapped() {
            Some(a) => (u128::from(a.to_bits()), u128::from(b.to_bits()), 32),
            None => return false,
        },
        (IpAddr::V4(_), IpAddr::V6(_)) => return false,
    };
    let shift = bits - u32::from(prefix);
    if shift >= bits {
        return true;
    }
    (ip >> shift) == (net >> shift)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::url::Scheme;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn no_proxy_covers_names_suffixes_addresses_and_networks() {
        let bypass = Bypass::parse(
            "localhost, .corp.example.com,*.lab.example, example.org:8080, 203.0.113.5, \
             198.51.100.0/24, [2001:db8::1], 2001:db8:f::/48",
        );
        for host in [
            "localhost",
            "LOCALHOST.",
            "corp.example.com",
            "a.corp.example.com",
            "x.lab.example",
            "example.org",
            "www.example.org",
            "203.0.113.5",
            "198.51.100.200",
            "2001:db8::1",
            "[2001:db8::1]",
            "2001:db8:f::9",
            "::ffff:198.51.100.1",
        ] {
            assert!(bypass.covers(host), "{host} should go direct");
        }
        for host in [
            "example.com",
            "notcorp.example.com",
            "badexample.org",
            "203.0.113.6",
            "198.51.101.1",
            "2001:db8::2",
            "lab.example.net",
        ] {
            assert!(!bypass.covers(host), "{host} should go through the proxy");
        }
        assert!(Bypass::parse("*").covers("anything.example"));
        assert!(!Bypass::parse("").covers("localhost"));
        // Junk entries are skipped, not fatal.
        assert!(Bypass::parse("10.0.0.0/99, a b, ,example.net").covers("example.net"));
    }

    #[test]
    fn the_environment_chooses_https_proxy_before_all_proxy() {
        let rules = ProxyRules::from_env(env(&[
            ("ALL_PROXY", "socks5h://s:1080"),
            ("HTTPS_PROXY", "http://h:3128"),
        ]))
        .unwrap();
        let (proxy, source) = rules.proxy().unwrap();
        assert_eq!(
            (proxy.scheme, source),
            (Scheme::Http, Source::Env("HTTPS_PROXY"))
        );
        let rules = ProxyRules::from_env(env(&[
            ("https_proxy", ""),
            ("all_proxy", "socks5h://s:1080"),
            ("no_proxy", "server.example"),
        ]))
        .unwrap();
        assert_eq!(rules.proxy().unwrap().1, Source::Env("all_proxy"));
        assert_eq!(rules.select("server.example"), None);
        assert_eq!(rules.select("relay.example").unwrap().host, "s");
        // Lower case first, as curl reads them.
        let rules =
            ProxyRules::from_env(env(&[("https_proxy", "a:1"), ("HTTPS_PROXY", "b:1")])).unwrap();
        assert_eq!(rules.proxy().unwrap().0.host, "a");
        assert_eq!(
            ProxyRules::from_env(env(&[])).unwrap(),
            ProxyRules::direct()
        );
        let err = ProxyRules::from_env(env(&[("ALL_PROXY", "socks4://s:1")])).unwrap_err();
        assert_eq!(err.name, "ALL_PROXY");
    }

    #[test]
    fn a_flag_proxy_still_honours_no_proxy() {
        let proxy: ProxyUrl = "socks5h://s:1080".parse().unwrap();
        let rules =
            ProxyRules::new(proxy.clone(), Source::Flag).with_bypass(Bypass::parse("10.0.0.0/8"));
        assert_eq!(rules.select("10.1.2.3"), None);
        assert_eq!(rules.select("203.0.113.1"), Some(&proxy));
        assert_eq!(ProxyRules::direct().select("203.0.113.1"), None);
    }
}
