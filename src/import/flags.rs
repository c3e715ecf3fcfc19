//! statsd_exporter's command-line flags (kingpin syntax: `--flag=value`, `--flag value`,
//! `--flag` and `--no-flag` for booleans) translated into tallyd's sections, and an
//! exporter-toolkit web config file (`--web.config.file`: TLS and basic auth) with them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use saphyr::{MarkedYaml, YamlData};

use super::{Findings, Kind, quote};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Type {
    Str,
    Bool,
}

/// Every flag statsd_exporter takes (and `--web.config.file`, exporter-toolkit's), with its
/// type and default.
const FLAGS: &[(&str, Type, &str)] = &[
    ("web.listen-address", Type::Str, ":9102"),
    ("web.telemetry-path", Type::Str, "/metrics"),
    ("web.enable-lifecycle", Type::Bool, "false"),
    ("web.config.file", Type::Str, ""),
    ("statsd.listen-udp", Type::Str, ":9125"),
    ("statsd.listen-tcp", Type::Str, ":9125"),
    ("statsd.listen-unixgram", Type::Str, ""),
    ("statsd.unixsocket-mode", Type::Str, "755"),
    ("statsd.mapping-config", Type::Str, ""),
    ("statsd.read-buffer", Type::Str, "0"),
    ("statsd.cache-size", Type::Str, "1000"),
    ("statsd.cache-type", Type::Str, "lru"),
    ("statsd.event-queue-size", Type::Str, "10000"),
    ("statsd.event-flush-threshold", Type::Str, "1000"),
    ("statsd.event-flush-interval", Type::Str, "200ms"),
    ("statsd.udp-packet-queue-size", Type::Str, "10000"),
    ("statsd.parse-dogstatsd-tags", Type::Bool, "true"),
    ("statsd.parse-influxdb-tags", Type::Bool, "true"),
    ("statsd.parse-librato-tags", Type::Bool, "true"),
    ("statsd.parse-signalfx-tags", Type::Bool, "true"),
    ("statsd.relay.address", Type::Str, ""),
    ("statsd.relay.packet-length", Type::Str, "1400"),
    ("debug.dump-fsm", Type::Str, ""),
    ("check-config", Type::Bool, "false"),
    ("log.level", Type::Str, "info"),
    ("log.format", Type::Str, "logfmt"),
];

/// The flags as given: each set flag's value and where it was (`--flag`), defaults for the
/// rest.
pub(super) struct Flags {
    set: Vec<(&'static str, String)>,
}

impl Flags {
    /// Parses `args` as kingpin does; unknown flags and stray arguments are errors.
    pub(super) fn parse(args: &[String], f: &mut Findings) -> Self {
        let mut set = Vec::new();
        let mut it = args.iter().peekable();
        while let Some(arg) = it.next() {
            if arg == "--" {
                continue;
            }
            let Some(body) = arg.strip_prefix("--") else {
                f.push_at(
                    Kind::Error,
                    arg,
                    "unexpected argument (flags start with --)".into(),
                );
                continue;
            };
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            let known = |n: &str| FLAGS.iter().find(|(k, ..)| *k == n);
            let (flag, value) = match (known(name), name.strip_prefix("no-").and_then(known)) {
                (Some((k, Type::Bool, _)), _) if inline.is_none() => (*k, "true".to_string()),
                (Some((k, Type::Bool, _)), _) => {
                    f.push_at(
                        Kind::Error,
                        arg,
                        format!("--{k} takes no value: write --{k} or --no-{k}"),
                    );
                    continue;
                }
                (Some((k, Type::Str, _)), _) => {
                    match inline.or_else(|| it.next_if(|next| !next.starts_with("--")).cloned()) {
                        Some(v) => (*k, v),
                        None => {
                            f.push_at(Kind::Error, arg, format!("--{k} needs a value"));
                            continue;
                        }
                    }
                }
                (None, Some((k, Type::Bool, _))) if inline.is_none() => (*k, "false".to_string()),
                _ => {
                    f.push_at(Kind::Error, arg, format!("unknown long flag '--{name}'"));
                    continue;
                }
            };
            if set.iter().any(|(k, _)| *k == flag) {
                // As kingpin refuses it: none of statsd_exporter's flags repeats.
                f.push_at(
                    Kind::Error,
                    arg,
                    format!("flag '{flag}' cannot be repeated"),
                );
                continue;
            }
            set.push((flag, value));
        }
        Self { set }
    }

    /// The flag's value: as given, else its default.
    fn get(&self, flag: &str) -> &str {
        self.set
            .iter()
            .find(|(k, _)| *k == flag)
            .map(|(_, v)| v.as_str())
            .or_else(|| FLAGS.iter().find(|(k, ..)| *k == flag).map(|(.., d)| *d))
            .unwrap_or("")
    }

    fn given(&self, flag: &str) -> bool {
        self.set.iter().any(|(k, _)| *k == flag)
    }

    /// `--statsd.mapping-config`, if given.
    pub(super) fn mapping_config(&self) -> Option<PathBuf> {
        Some(self.get("statsd.mapping-config"))
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
    }

    fn on(&self, flag: &str) -> bool {
        self.get(flag) == "true"
    }
}

/// A listen address for tallyd: statsd_exporter's `:port` binds every IPv4 interface.
fn address(flag: &str, value: &str, f: &mut Findings) -> Option<String> {
    let at = format!("--{flag}={value}");
    let Some((host, port)) = value.rsplit_once(':') else {
        f.push_at(
            Kind::Error,
            &at,
            "bad listening address: host:port expected".into(),
        );
        return None;
    };
    if port.parse::<u16>().is_err() {
        f.push_at(Kind::Error, &at, "bad port".into());
        return None;
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip = match host {
        "" => {
            f.push_at(
                Kind::Note,
                &at,
                "an empty host: tallyd listens on 0.0.0.0, IPv4 only; statsd_exporter also takes \
                 IPv6 on a dual-stack host (write [::] for that)"
                    .into(),
            );
            "0.0.0.0".to_string()
        }
        "localhost" => "127.0.0.1".to_string(),
        h => match h.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(v4)) => v4.to_string(),
            Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
            Err(_) => {
                f.push_at(
                    Kind::Lossy,
                    &at,
                    format!(
                        "{h:?} is a host name; tallyd listens on IP addresses only (write the \
                         address it resolves to)"
                    ),
                );
                return None;
            }
        },
    };
    Some(format!("{ip}:{port}"))
}

/// Writes the sections the flags make into `out`: `udp = []` first when UDP is off (it must
/// precede every table), then `[http]`, the listeners, `[parse]`, `[relay]`, `[log]`.
pub(super) fn sections(
    flags: &Flags,
    f: &mut Findings,
    read: &dyn Fn(&Path) -> std::io::Result<String>,
    out: &mut String,
) {
    let udp = flags.get("statsd.listen-udp").to_string();
    let tcp = flags.get("statsd.listen-tcp").to_string();
    let unixgram = flags.get("statsd.listen-unixgram").to_string();
    if udp.is_empty() && tcp.is_empty() && unixgram.is_empty() {
        f.push_at(
            Kind::Error,
            "--statsd.listen-udp",
            "At least one of UDP/TCP/Unixgram listeners must be specified.".into(),
        );
    }
    if udp.is_empty() {
        out.push_str("# --statsd.listen-udp is empty: no UDP listener.\nudp = []\n\n");
    }
    let read_buffer = flags.get("statsd.read-buffer");
    let recv_buffer = match read_buffer.parse::<u64>() {
        Ok(0) => None,
        Ok(n) => Some(n),
        Err(_) => {
            f.push_at(
                Kind::Error,
                &format!("--statsd.read-buffer={read_buffer}"),
                "expected a number of bytes".into(),
            );
            None
        }
    };

    out.push_str("[http]\n");
    if let Some(a) = address("web.listen-address", flags.get("web.listen-address"), f) {
        let _ = writeln!(out, "listen = {}", quote(&a));
    }
    let path = flags.get("web.telemetry-path");
    if path.is_empty() || crate::config::OWN_PATHS.contains(&path) {
        f.push_at(
            Kind::Lossy,
            &format!("--web.telemetry-path={path}"),
            format!(
                "tallyd serves {} itself; the metrics stay at /metrics",
                if path.is_empty() { "/" } else { path }
            ),
        );
    } else if path != "/metrics" {
        let _ = writeln!(out, "metrics_path = {}", quote(path));
    }
    if flags.on("web.enable-lifecycle") {
        out.push_str("enable_lifecycle = true\n");
        f.push_at(
            Kind::Lossy,
            "--web.enable-lifecycle",
            "POST /-/reload works as in statsd_exporter; PUT /-/reload and /-/quit do not exist \
             in tallyd (stop it with systemctl stop or SIGTERM)"
                .into(),
        );
    }
    let web_config = flags.get("web.config.file");
    let mut users = Vec::new();
    if !web_config.is_empty() {
        web(Path::new(web_config), f, read, out, &mut users);
    }
    if !users.is_empty() {
        out.push_str("\n[http.basic_auth_users]\n");
        for (u, h) in users {
            let _ = writeln!(out, "{} = {}", quote(&u), quote(&h));
        }
    }
    out.push('\n');

    if !udp.is_empty()
        && let Some(a) = address("statsd.listen-udp", &udp, f)
    {
        let _ = writeln!(out, "[[udp]]\nlisten = {}", quote(&a));
        if let Some(b) = recv_buffer {
            let _ = writeln!(out, "recv_buffer = {b}");
        }
        out.push('\n');
    }
    if !tcp.is_empty()
        && let Some(a) = address("statsd.listen-tcp", &tcp, f)
    {
        let _ = writeln!(out, "[[tcp]]\nlisten = {}\n", quote(&a));
    }
    if !unixgram.is_empty() {
        let _ = writeln!(out, "[[unixgram]]\npath = {}", quote(&unixgram));
        let mode = flags.get("statsd.unixsocket-mode");
        match u32::from_str_radix(mode, 8) {
            Ok(m) if m <= 0o777 => {
                let _ = writeln!(out, "mode = \"0{m:o}\"");
            }
            _ => f.push_at(
                Kind::Warning,
                &format!("--statsd.unixsocket-mode={mode}"),
                "not an octal file mode; statsd_exporter ignores it, and tallyd uses 0660".into(),
            ),
        }
        if let Some(b) = recv_buffer {
            let _ = writeln!(out, "recv_buffer = {b}");
        }
        out.push('\n');
    }
    if recv_buffer.is_none() && flags.given("statsd.read-buffer") {
        f.push_at(
            Kind::Note,
            "--statsd.read-buffer=0",
            "0 keeps the kernel's default buffer in statsd_exporter; tallyd asks for 8MiB".into(),
        );
    }

    let tags = [
        ("statsd.parse-dogstatsd-tags", "dogstatsd_tags"),
        ("statsd.parse-influxdb-tags", "influxdb_tags"),
        ("statsd.parse-librato-tags", "librato_tags"),
        ("statsd.parse-signalfx-tags", "signalfx_tags"),
    ];
    out.push_str("[parse]\n");
    for (flag, key) in tags {
        let _ = writeln!(out, "{key} = {}", flags.on(flag));
    }
    out.push('\n');

    let relay = flags.get("statsd.relay.address");
    if !relay.is_empty() {
        let len = flags.get("statsd.relay.packet-length");
        let _ = writeln!(out, "[relay]\naddress = {}", quote(relay));
        f.push_at(
            Kind::Note,
            &format!("--statsd.relay.address={relay}"),
            "tallyd relays the lines its parser accepts; statsd_exporter relays every line, \
             malformed ones too"
                .into(),
        );
        match len.parse::<u64>() {
            Ok(n) if (1..=65_507).contains(&n) => {
                let _ = writeln!(out, "max_datagram_size = {n}");
            }
            _ => f.push_at(
                Kind::Error,
                &format!("--statsd.relay.packet-length={len}"),
                "expected a datagram size from 1 to 65507 bytes".into(),
            ),
        }
        out.push('\n');
    }

    let level = flags.get("log.level");
    let format = flags.get("log.format");
    out.push_str("[log]\n");
    match level {
        "debug" | "info" | "warn" | "error" => {
            let _ = writeln!(out, "level = \"{level}\"");
        }
        l => f.push_at(
            Kind::Error,
            &format!("--log.level={l}"),
            "expected debug, info, warn or error".into(),
        ),
    }
    match format {
        "logfmt" | "json" => {
            let _ = writeln!(out, "format = \"{format}\"");
        }
        l => f.push_at(
            Kind::Error,
            &format!("--log.format={l}"),
            "expected logfmt or json".into(),
        ),
    }
    out.push('\n');

    for (flag, why) in [
        (
            "statsd.cache-size",
            "tallyd's workers cache every line they resolve until a reload; there is no size to set",
        ),
        (
            "statsd.cache-type",
            "tallyd's workers cache every line they resolve until a reload; there is no size to set",
        ),
        (
            "statsd.event-queue-size",
            "tallyd's workers write into the store themselves; there is no event queue",
        ),
        (
            "statsd.event-flush-threshold",
            "tallyd's workers write into the store themselves; there is no event queue",
        ),
        (
            "statsd.event-flush-interval",
            "tallyd's workers write into the store themselves; there is no event queue",
        ),
        (
            "statsd.udp-packet-queue-size",
            "tallyd reads UDP in its workers; what the kernel drops is counted in tallyd_udp_kernel_drops_total",
        ),
        (
            "debug.dump-fsm",
            "tallyd has no matcher graph to dump; check-config reports rules that can never match",
        ),
        (
            "check-config",
            "run tallyd check-config on the imported file instead",
        ),
    ] {
        if flags.given(flag) {
            f.push_at(
                Kind::Note,
                &format!("--{flag}"),
                format!("no equivalent needed: {why}"),
            );
        }
    }
}

/// Reads an exporter-toolkit web config: TLS certificate and key, and basic auth users (their
/// bcrypt hashes, which tallyd takes as they are). Paths are relative to the file's directory.
fn web(
    path: &Path,
    f: &mut Findings,
    read: &dyn Fn(&Path) -> std::io::Result<String>,
    out: &mut String,
    users: &mut Vec<(String, String)>,
) {
    let name = path.display().to_string();
    let text = match read(path) {
        Ok(t) => t,
        Err(e) => {
            f.push_at(
                Kind::Error,
                &format!("--web.config.file={name}"),
                format!("cannot read: {e}"),
            );
            return;
        }
    };
    f.push_at(
        Kind::Note,
        &format!("--web.config.file={name}"),
        "statsd_exporter 0.30 takes no --web.config.file; read as exporter-toolkit's web config"
            .into(),
    );
    let at = |line: usize| format!("{name}:{line}");
    let docs = match super::yaml::load(&text) {
        Ok(d) => d,
        Err(e) => {
            f.push_at(
                Kind::Error,
                &at(e.marker().line()),
                format!("not valid YAML: {}", e.info()),
            );
            return;
        }
    };
    let Some(root) = docs.first() else { return };
    let dir = path.parent().unwrap_or(Path::new("."));
    let resolve = |p: &str| {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        }
    };
    let str_of = |n: &MarkedYaml<'_>| match &n.data {
        YamlData::Representation(s, ..) => Some(s.to_string()),
        _ => None,
    };
    let YamlData::Mapping(top) = &root.data else {
        return;
    };
    let (mut cert, mut key) = (None, None);
    for (k, v) in top {
        let line = v.span.start.line();
        match str_of(k).as_deref() {
            Some("tls_server_config") => {
                let YamlData::Mapping(tls) = &v.data else {
                    continue;
                };
                for (k, v) in tls {
                    let line = v.span.start.line();
                    let value = str_of(v).unwrap_or_default();
                    match str_of(k).as_deref() {
                        Some("cert_file") => cert = Some(resolve(&value)),
                        Some("key_file") => key = Some(resolve(&value)),
                        Some("client_auth_type") if value == "NoClientCert" => {}
                        Some("min_version") if value == "TLS12" => {}
                        Some("max_version") if value == "TLS13" => {}
                        Some("min_version") if value == "TLS10" || value == "TLS11" => f.push_at(
                            Kind::Lossy,
                            &at(line),
                            format!("min_version {value}: tallyd speaks TLS 1.2 and 1.3 only"),
                        ),
                        Some(other) => f.push_at(
                            Kind::Lossy,
                            &at(line),
                            format!(
                                "tls_server_config.{other}: tallyd's TLS has a certificate and a \
                                 key only (no client certificates, versions, ciphers or curves to set)"
                            ),
                        ),
                        None => {}
                    }
                }
            }
            Some("basic_auth_users") => {
                let YamlData::Mapping(u) = &v.data else {
                    continue;
                };
                for (user, hash) in u {
                    if let (Some(user), Some(hash)) = (str_of(user), str_of(hash)) {
                        users.push((user, hash));
                    }
                }
            }
            Some(other) => f.push_at(
                Kind::Lossy,
                &at(line),
                format!(
                    "{other}: tallyd has no equivalent (HTTP/2, response headers, rate limits)"
                ),
            ),
            None => {}
        }
    }
    match (cert, key) {
        (Some(c), Some(k)) => {
            let _ = writeln!(
                out,
                "tls_cert_file = {}\ntls_key_file = {}",
                quote(&c.display().to_string()),
                quote(&k.display().to_string())
            );
        }
        (None, None) => {}
        _ => f.push_at(
            Kind::Error,
            &name,
            "tls_server_config needs both cert_file and key_file".into(),
        ),
    }
}
