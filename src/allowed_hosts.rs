//! The operator-wide allow-list of Imburse hosts. An account's `baseUrl` decides where the
//! operator sends requests signed with the account's key pair, and whoever may create an
//! account may name any Secret of its namespace: without this list, they could make the
//! operator sign for a credential they cannot read and send it to a host of their choosing.

use std::{fmt, net::IpAddr, str::FromStr};

use url::{Host, Url};

/// The documented Imburse hosts. Loopback is not among them: in a cluster it is the operator's
/// own pod, where nothing should receive signed requests; a local sandbox is named explicitly.
pub const DEFAULT_ALLOWED_HOSTS: &[&str] = &[
    "sandbox-api.imbursepayments.com",
    "api-sandbox.imbursepayments.com",
    "api.imbursepayments.com",
];

/// One entry of the list.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    /// A DNS name, lowercase, without a trailing dot.
    Name(String),
    /// `*.suffix`, kept as `.suffix`: any name with at least one more label.
    Subdomains(String),
    Ip(IpAddr),
}

/// Hosts an account's `baseUrl` may name. Ports, schemes and paths do not matter: the list
/// says who may receive signed requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedHosts(Vec<Pattern>);

/// An entry that is not a host name, a `*.suffix` wildcard or an IP address.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0:?} is not an allowed-host entry: use a host name, *.domain or an IP address, without scheme, port or path"
)]
pub struct InvalidEntry(String);

/// Why a base URL is refused. Names the host only: a URL may carry a password.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("baseUrl is not a valid URL")]
    Invalid,
    #[error("baseUrl must not carry a user name or password")]
    UserInfo,
    #[error("baseUrl has no host")]
    NoHost,
    #[error("Imburse host {0:?} is not in the operator's allowed hosts (--allowed-imburse-hosts)")]
    NotAllowed(String),
}

impl AllowedHosts {
    /// Parses the entries, ignoring blank ones.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, InvalidEntry> {
        entries
            .iter()
            .map(AsRef::as_ref)
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| parse_entry(e).ok_or_else(|| InvalidEntry(e.into())))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Checks a base URL, parsed exactly as the Imburse client parses it, so that the host
    /// checked is the host connected to.
    pub fn check(&self, base_url: &str) -> Result<(), Refusal> {
        let url = Url::parse(base_url).map_err(|_| Refusal::Invalid)?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Refusal::UserInfo);
        }
        let allowed = match url.host().ok_or(Refusal::NoHost)? {
            Host::Domain(name) => {
                let name = normalize_name(name).ok_or(Refusal::Invalid)?;
                self.0.iter().any(|p| match p {
                    Pattern::Name(n) => *n == name,
                    Pattern::Subdomains(suffix) => {
                        name.len() > suffix.len() && name.ends_with(suffix.as_str())
                    }
                    Pattern::Ip(_) => false,
                })
            }
            Host::Ipv4(ip) => self.0.contains(&Pattern::Ip(ip.into())),
            Host::Ipv6(ip) => self.0.contains(&Pattern::Ip(ip.into())),
        };
        if allowed {
            Ok(())
        } else {
            Err(Refusal::NotAllowed(
                url.host_str().unwrap_or_default().to_owned(),
            ))
        }
    }
}

impl Default for AllowedHosts {
    fn default() -> Self {
        Self::parse(DEFAULT_ALLOWED_HOSTS).unwrap_or_else(|_| Self(Vec::new()))
    }
}

impl FromStr for AllowedHosts {
    type Err = InvalidEntry;

    /// A comma-separated list, as given on the command line.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(&s.split(',').collect::<Vec<_>>())
    }
}

impl fmt::Display for AllowedHosts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries: Vec<String> = self
            .0
            .iter()
            .map(|p| match p {
                Pattern::Name(n) => n.clone(),
                Pattern::Subdomains(s) => format!("*{s}"),
                Pattern::Ip(ip) => ip.to_string(),
            })
            .collect();
        f.write_str(&entries.join(","))
    }
}

fn parse_entry(entry: &str) -> Option<Pattern> {
    let unbracketed = entry
        .strip_prefix('[')
        .and_then(|e| e.strip_suffix(']'))
        .unwrap_or(entry);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Some(Pattern::Ip(ip));
    }
    match entry.strip_prefix("*.") {
        Some(suffix) => normalize_name(suffix).map(|s| Pattern::Subdomains(format!(".{s}"))),
        None => normalize_name(entry).map(Pattern::Name),
    }
}

/// A DNS name in lowercase without its trailing dot (`api.example.com.` names the same host
/// as `api.example.com`), or `None` when it is not made of non-empty labels of letters,
/// digits, `-` and `_`.
fn normalize_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let valid = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    valid.then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(entries: &[&str]) -> AllowedHosts {
        AllowedHosts::parse(entries).expect("valid entries")
    }

    #[test]
    fn defaults_allow_only_the_documented_hosts() {
        let hosts = AllowedHosts::default();
        for ok in [
            "https://sandbox-api.imbursepayments.com",
            "https://api-sandbox.imbursepayments.com/",
            "https://api.imbursepayments.com",
        ] {
            assert_eq!(hosts.check(ok), Ok(()), "{ok}");
        }
        for refused in [
            "https://evil.example",
            "https://imbursepayments.com",
            "https://other.imbursepayments.com",
            "http://127.0.0.1:8080",
            "http://[::1]:9000/",
            "http://localhost:1",
            "http://10.0.0.1",
        ] {
            assert!(hosts.check(refused).is_err(), "{refused}");
        }
        assert_eq!(hosts.to_string(), DEFAULT_ALLOWED_HOSTS.join(","));
    }

    #[test]
    fn host_case_and_ports_do_not_matter() {
        let hosts = hosts(&["API.ImbursePayments.com"]);
        for ok in [
            "https://api.imbursepayments.com",
            "https://API.IMBURSEPAYMENTS.COM",
            "https://api.imbursepayments.com:8443/prefix/",
            "https://api.imbursepayments.com:443",
        ] {
            assert_eq!(hosts.check(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn trailing_dots_name_the_same_host_and_nothing_more() {
        let hosts = hosts(&["api.imbursepayments.com.", "*.imburse.example."]);
        assert_eq!(hosts.check("https://api.imbursepayments.com."), Ok(()));
        assert_eq!(hosts.check("https://api.imbursepayments.com"), Ok(()));
        assert_eq!(hosts.check("https://eu.imburse.example."), Ok(()));
        for refused in [
            "https://api.imbursepayments.com..",
            "https://api.imbursepayments.com.evil.example",
            "https://api.imbursepayments.com.evil.example.",
        ] {
            assert!(hosts.check(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn wildcards_match_subdomains_only() {
        let hosts = hosts(&["*.imbursepayments.com"]);
        assert_eq!(hosts.check("https://api.imbursepayments.com"), Ok(()));
        assert_eq!(hosts.check("https://a.b.imbursepayments.com"), Ok(()));
        for refused in [
            "https://imbursepayments.com",
            "https://evilimbursepayments.com",
            "https://imbursepayments.com.evil.example",
        ] {
            assert!(
                matches!(hosts.check(refused), Err(Refusal::NotAllowed(_))),
                "{refused}"
            );
        }
    }

    #[test]
    fn user_information_cannot_smuggle_a_host() {
        let hosts = AllowedHosts::default();
        assert_eq!(
            hosts.check("https://api.imbursepayments.com@evil.example"),
            Err(Refusal::UserInfo)
        );
        assert_eq!(
            hosts.check("https://user:password@api.imbursepayments.com"),
            Err(Refusal::UserInfo)
        );
        // A host that only looks like an allowed one when read naively.
        assert!(
            hosts
                .check("https://evil.example#@api.imbursepayments.com")
                .is_err()
        );
        assert!(
            hosts
                .check("https://evil.example\\@api.imbursepayments.com")
                .is_err()
        );
        assert!(
            hosts
                .check("https://api.imbursepayments.com%2eevil.example")
                .is_err()
        );
    }

    #[test]
    fn refusals_never_echo_the_url() {
        let refusal = AllowedHosts::default()
            .check("https://user:hunter2@evil.example")
            .unwrap_err();
        assert!(!refusal.to_string().contains("hunter2"));
        let refusal = AllowedHosts::default()
            .check("https://evil.example/hunter2")
            .unwrap_err();
        assert_eq!(refusal, Refusal::NotAllowed("evil.example".into()));
    }

    #[test]
    fn ip_addresses_match_as_addresses() {
        let hosts = hosts(&["::1", "[fd00::1]", "127.0.0.1"]);
        for ok in [
            "http://[::1]:9000",
            "http://[0:0:0:0:0:0:0:1]",
            "https://[FD00::1]/",
            "http://127.0.0.1",
            // The URL parser reads these as 127.0.0.1, and so does the HTTP client.
            "http://127.1",
            "http://2130706433",
        ] {
            assert_eq!(hosts.check(ok), Ok(()), "{ok}");
        }
        for refused in [
            "http://[::2]",
            "http://[::ffff:127.0.0.1]",
            "http://127.0.0.2",
            "http://localhost",
        ] {
            assert!(hosts.check(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn malformed_urls_and_entries_are_refused() {
        let hosts = AllowedHosts::default();
        assert_eq!(hosts.check("not a url"), Err(Refusal::Invalid));
        assert_eq!(
            hosts.check("api.imbursepayments.com"),
            Err(Refusal::Invalid)
        );
        for bad in [
            "https://api.imbursepayments.com",
            "api.imbursepayments.com:443",
            "api.imbursepayments.com/x",
            "*",
            "*.",
            "a.*.example",
            "..",
        ] {
            assert!(AllowedHosts::parse(&[bad]).is_err(), "{bad}");
        }
        let parsed: AllowedHosts = " api.imbursepayments.com , ,*.example.com"
            .parse()
            .expect("valid list");
        assert_eq!(parsed.to_string(), "api.imbursepayments.com,*.example.com");
    }
}
