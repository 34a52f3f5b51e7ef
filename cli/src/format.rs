//! How docker prints things: tab-aligned tables, "5 seconds ago",
//! "4.26MB"/"1.5MiB", truncated ids and quoted commands.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tote_api::v1::PortBinding;

use crate::template::{Methods, Template, TemplateError};

/// docker's tabwriter: cells at least 10 wide, 3 spaces of padding.
const MIN_CELL_WIDTH: usize = 10;
const CELL_PADDING: usize = 3;
/// Length of a short id.
pub const SHORT_ID: usize = 12;

/// Aligns tab-separated lines into columns as Go's tabwriter does for
/// docker: every tab-terminated cell is padded; the last one is not.
pub fn tabwrite(text: &str) -> String {
    let lines: Vec<Vec<&str>> = text.lines().map(|line| line.split('\t').collect()).collect();
    let mut widths: Vec<usize> = Vec::new();
    for cells in &lines {
        for (column, cell) in cells.iter().take(cells.len() - 1).enumerate() {
            let width = (cell.chars().count() + CELL_PADDING).max(MIN_CELL_WIDTH);
            if column == widths.len() {
                widths.push(width);
            } else {
                widths[column] = widths[column].max(width);
            }
        }
    }
    let mut out = String::new();
    for cells in &lines {
        let last = cells.len() - 1;
        for (column, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if column < last {
                let pad = widths[column] - cell.chars().count();
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    }
    out
}

/// A listing's `--format`: docker's `table` prefix adds a header row and
/// aligns the columns; `json` is `{{json .}}`; `\t` and `\n` are escapes.
pub struct Listing {
    table: bool,
    template: Template,
}

/// Headers for a table: a field's header is its value in the header
/// object; a method's (`{{.Label "k"}}`) is its name in capitals.
struct HeaderMethods;

impl Methods for HeaderMethods {
    fn call(&self, name: &str, args: &[Value]) -> Option<Value> {
        (!args.is_empty()).then(|| Value::String(name.to_uppercase()))
    }
}

impl Listing {
    pub fn new(format: Option<&str>, default_table: &str) -> Result<Self, TemplateError> {
        let format = match format.map(str::trim) {
            None | Some("" | "table") => default_table,
            Some("json") => "{{json .}}",
            Some(format) => format,
        };
        let (table, body) = match format.strip_prefix("table") {
            Some(rest) => (true, rest),
            None => (false, format),
        };
        let body = body.trim_matches(' ').replace("\\t", "\t").replace("\\n", "\n");
        Ok(Listing { table, template: Template::parse(&body)? })
    }

    /// The rows, each rendered with its own methods.
    pub fn render(&self, header: &Value, rows: &[(Value, &dyn Methods)]) -> Result<String, TemplateError> {
        let mut out = String::new();
        if self.table {
            out.push_str(&self.template.render_with(header, &HeaderMethods)?);
            out.push('\n');
        }
        for (row, methods) in rows {
            out.push_str(&self.template.render_with(row, *methods)?);
            out.push('\n');
        }
        Ok(if self.table { tabwrite(&out) } else { out })
    }
}

/// Unix seconds now.
pub fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// "5 seconds ago", "About a minute ago", for a unix time.
pub fn ago(unix: i64, now: i64) -> String {
    let seconds = u64::try_from(now.saturating_sub(unix)).unwrap_or(0);
    format!("{} ago", human_duration(Duration::from_secs(seconds)))
}

/// docker's `units.HumanDuration`.
pub fn human_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    let minutes = seconds / 60;
    // docker rounds hours to the nearest, the rest down.
    let hours = u64::try_from((duration.as_millis() + 1_800_000) / 3_600_000).unwrap_or(u64::MAX);
    match () {
        _ if seconds < 1 => "Less than a second".to_string(),
        _ if seconds == 1 => "1 second".to_string(),
        _ if seconds < 60 => format!("{seconds} seconds"),
        _ if minutes == 1 => "About a minute".to_string(),
        _ if minutes < 60 => format!("{minutes} minutes"),
        _ if hours == 1 => "About an hour".to_string(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if hours < 24 * 7 * 2 => format!("{} days", hours / 24),
        _ if hours < 24 * 30 * 2 => format!("{} weeks", hours / 24 / 7),
        _ if hours < 24 * 365 * 2 => format!("{} months", hours / 24 / 30),
        _ => format!("{} years", seconds / 3600 / 24 / 365),
    }
}

const DECIMAL_UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
const BINARY_UNITS: [&str; 9] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"];

/// Decimal units, 3 significant digits: image sizes and network I/O
/// ("4.26MB", "23.4kB"), docker's `HumanSizeWithPrecision(size, 3)`.
pub fn human_size(bytes: u64) -> String {
    scaled(bytes, 1000.0, &DECIMAL_UNITS, 3)
}

/// Decimal units, 4 significant digits: disk usage and reclaimed space
/// ("16.43MB"), docker's `HumanSize`.
pub fn human_size_4(bytes: u64) -> String {
    scaled(bytes, 1000.0, &DECIMAL_UNITS, 4)
}

/// Binary units, 4 significant digits: memory ("1.5MiB", "1.944GiB"),
/// docker's `BytesSize`.
pub fn binary_size(bytes: u64) -> String {
    scaled(bytes, 1024.0, &BINARY_UNITS, 4)
}

fn scaled(bytes: u64, base: f64, units: &[&str], precision: usize) -> String {
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= base && unit < units.len() - 1 {
        size /= base;
        unit += 1;
    }
    format!("{}{}", go_general(size, precision), units[unit])
}

/// Go's `%.<precision>g` for a non-negative number: significant digits
/// without trailing zeros, exponent form when the number needs it.
pub fn go_general(value: f64, precision: usize) -> String {
    if value == 0.0 {
        return "0".to_string();
    }
    let precision = precision.max(1);
    let scientific = format!("{:.*e}", precision - 1, value);
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i64 = exponent.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let digits = digits.trim_end_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    let significant = i64::try_from(digits.len()).unwrap_or(i64::MAX);
    let precision = i64::try_from(precision).unwrap_or(i64::MAX);
    let point = exponent + 1;
    let exponent_limit = if precision > significant && significant >= point { significant } else { precision };
    if exponent < -4 || exponent >= exponent_limit {
        let (first, rest) = digits.split_at(1);
        let fraction = if rest.is_empty() { String::new() } else { format!(".{rest}") };
        let sign = if exponent < 0 { '-' } else { '+' };
        return format!("{first}{fraction}e{sign}{:02}", exponent.abs());
    }
    fixed_point(digits, point)
}

/// The digits `0.digits × 10^point` written out without an exponent.
fn fixed_point(digits: &str, point: i64) -> String {
    if point <= 0 {
        let zeros = "0".repeat(usize::try_from(-point).unwrap_or(0));
        return format!("0.{zeros}{digits}");
    }
    let point = usize::try_from(point).unwrap_or(0);
    if digits.len() <= point {
        return format!("{digits}{}", "0".repeat(point - digits.len()));
    }
    let (whole, fraction) = digits.split_at(point);
    format!("{whole}.{fraction}")
}

/// An id as docker shows it: without `sha256:`, 12 characters unless
/// `--no-trunc`.
pub fn short_id(id: &str, no_trunc: bool) -> String {
    let bare = id.strip_prefix("sha256:").unwrap_or(id);
    if no_trunc { bare.to_string() } else { bare.chars().take(SHORT_ID).collect() }
}

/// Cuts `text` to `max` characters, the last being an ellipsis.
pub fn ellipsis(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Go's `strconv.Quote`: double quotes, with `"`, `\` and control
/// characters escaped.
pub fn go_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `ps`'s PORTS column: `127.0.0.1:8080->80/tcp, 443/tcp`.
pub fn ports(bindings: &[PortBinding]) -> String {
    let mut sorted: Vec<&PortBinding> = bindings.iter().collect();
    sorted.sort_by_key(|b| (b.container_port, b.protocol.clone(), b.host_ip.clone(), b.host_port));
    sorted.iter().map(|binding| port(binding)).collect::<Vec<_>>().join(", ")
}

fn port(binding: &PortBinding) -> String {
    let private = format!("{}/{}", binding.container_port, protocol(binding));
    if binding.host_port == 0 {
        return private;
    }
    format!("{}->{private}", host_address(binding))
}

/// The protocol of a binding, tcp when toted left it empty.
pub fn protocol(binding: &PortBinding) -> &str {
    if binding.protocol.is_empty() { "tcp" } else { &binding.protocol }
}

/// `ip:port` on the host, with IPv6 addresses in brackets.
pub fn host_address(binding: &PortBinding) -> String {
    let ip = if binding.host_ip.is_empty() { "0.0.0.0" } else { &binding.host_ip };
    if ip.contains(':') { format!("[{ip}]:{}", binding.host_port) } else { format!("{ip}:{}", binding.host_port) }
}

/// Go's default time format, in UTC: `2024-01-02 15:04:05 +0000 UTC`.
pub fn utc_time(unix: i64) -> String {
    let time = chrono::DateTime::from_timestamp(unix, 0).unwrap_or_default();
    time.format("%Y-%m-%d %H:%M:%S +0000 UTC").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_like_docker() {
        let table = tabwrite("CONTAINER ID\tIMAGE\tNAMES\n0123456789ab\tbusybox:latest\tweb\n");
        assert_eq!(
            table,
            "CONTAINER ID   IMAGE            NAMES\n\
             0123456789ab   busybox:latest   web\n"
        );
        // Short cells still take 10 columns; empty cells are padded too.
        assert_eq!(tabwrite("A\tB\n\tx\n"), "A         B\n          x\n");
    }

    #[test]
    fn listings_follow_docker_formats() {
        use serde_json::json;

        use crate::template::NoMethods;
        let header = json!({"ID": "CONTAINER ID", "Names": "NAMES"});
        let rows = [(json!({"ID": "0123456789ab", "Names": "web"}), &NoMethods as &dyn Methods)];
        let table = Listing::new(Some("table {{.ID}}\\t{{.Names}}"), "").unwrap();
        assert_eq!(table.render(&header, &rows).unwrap(), "CONTAINER ID   NAMES\n0123456789ab   web\n");
        let plain = Listing::new(Some("{{.ID}}: {{.Names}}"), "").unwrap();
        assert_eq!(plain.render(&header, &rows).unwrap(), "0123456789ab: web\n");
        let default = Listing::new(None, "table {{.Names}}").unwrap();
        assert_eq!(default.render(&header, &rows).unwrap(), "NAMES\nweb\n");
        let json = Listing::new(Some("json"), "").unwrap();
        assert_eq!(json.render(&header, &rows).unwrap(), "{\"ID\":\"0123456789ab\",\"Names\":\"web\"}\n");
    }

    #[test]
    fn durations_read_like_docker() {
        let d = Duration::from_secs;
        assert_eq!(human_duration(Duration::from_millis(300)), "Less than a second");
        assert_eq!(human_duration(d(1)), "1 second");
        assert_eq!(human_duration(d(5)), "5 seconds");
        assert_eq!(human_duration(d(60)), "About a minute");
        assert_eq!(human_duration(d(119)), "About a minute");
        assert_eq!(human_duration(d(120)), "2 minutes");
        assert_eq!(human_duration(d(3600)), "About an hour");
        assert_eq!(human_duration(d(2 * 3600)), "2 hours");
        assert_eq!(human_duration(d(3 * 86_400)), "3 days");
        assert_eq!(human_duration(d(21 * 86_400)), "3 weeks");
        assert_eq!(human_duration(d(90 * 86_400)), "3 months");
        assert_eq!(human_duration(d(3 * 365 * 86_400)), "3 years");
        assert_eq!(ago(100, 105), "5 seconds ago");
        assert_eq!(ago(100, 190), "About a minute ago");
    }

    #[test]
    fn sizes_use_docker_units() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(4_261_000), "4.26MB");
        assert_eq!(human_size(23_400), "23.4kB");
        assert_eq!(human_size(1_000_000), "1MB");
        assert_eq!(human_size(1_234_567_890), "1.23GB");
        assert_eq!(human_size(999_999), "1e+03kB");
        assert_eq!(human_size_4(16_430_000), "16.43MB");
        assert_eq!(human_size_4(4_261_000), "4.261MB");
        assert_eq!(human_size_4(0), "0B");
        assert_eq!(binary_size(1_572_864), "1.5MiB");
        assert_eq!(binary_size(2_087_354_368), "1.944GiB");
        assert_eq!(binary_size(512), "512B");
    }

    #[test]
    fn go_general_matches_go() {
        assert_eq!(go_general(1.5, 3), "1.5");
        assert_eq!(go_general(100.0, 3), "100");
        assert_eq!(go_general(1000.0, 3), "1e+03");
        assert_eq!(go_general(0.5, 3), "0.5");
        assert_eq!(go_general(0.00001234, 3), "1.23e-05");
        assert_eq!(go_general(12.345, 4), "12.35");
    }

    #[test]
    fn ids_commands_and_ports() {
        assert_eq!(short_id("sha256:0123456789abcdef", false), "0123456789ab");
        assert_eq!(short_id("sha256:0123456789abcdef", true), "0123456789abcdef");
        assert_eq!(go_quote(&ellipsis("/docker-entrypoint.sh nginx -g daemon off;", 20)), "\"/docker-entrypoint.…\"");
        assert_eq!(go_quote("sh -c \"x\"\n"), "\"sh -c \\\"x\\\"\\n\"");
        let binding = |ip: &str, host, ctr, proto: &str| PortBinding {
            host_ip: ip.into(),
            host_port: host,
            container_port: ctr,
            protocol: proto.into(),
        };
        let list = [binding("127.0.0.1", 8080, 80, "tcp"), binding("", 0, 443, ""), binding("::", 53, 53, "udp")];
        assert_eq!(ports(&list), "[::]:53->53/udp, 127.0.0.1:8080->80/tcp, 443/tcp");
    }

    #[test]
    fn times_are_go_formatted() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00 +0000 UTC");
        assert_eq!(utc_time(1_704_207_845), "2024-01-02 15:04:05 +0000 UTC");
        assert_eq!(utc_time(951_782_400), "2000-02-29 00:00:00 +0000 UTC");
    }
}
