//! The bridge plugin's `ipMasq` rules, removed by the runtime when the
//! plugin cannot remove them itself.
//!
//! On DEL, the bridge plugin (1.1.1, and upstream still) learns which
//! addresses to stop masquerading by reading them off the container's
//! interface. When the network namespace is already gone, so is the
//! interface: the plugin then only releases the address, and leaves its
//! `CNI-<hash>` chain in the nat table and the POSTROUTING rule that jumps
//! to it. This removes both, found by the chain name the plugin derives
//! from the network name and container id, so it needs no address and
//! touches no other container's rules.

use sha2::{Digest as _, Sha512};

use super::NetworkError;
use super::plugin::{ExecError, PluginExec};

/// The bridge plugin's chain for a container (its `utils.FormatChainName`:
/// `CNI-` and the start of the hex SHA-512 of name and id, 28 characters).
pub(crate) fn chain_name(network: &str, container_id: &str) -> String {
    let hash = hex::encode(Sha512::digest(format!("{network}{container_id}")));
    format!("CNI-{}", &hash[..24])
}

/// Deletes the masquerade chain `chain` and every POSTROUTING rule jumping
/// to it, in the nat table `tool` (`iptables` or `ip6tables`) manages.
/// Nothing to delete is fine.
pub(crate) fn remove_leftovers(exec: &dyn PluginExec, tool: &str, chain: &str) -> Result<(), NetworkError> {
    let listing = iptables(exec, tool, &["-w", "-t", "nat", "-S"])?;
    let listing = String::from_utf8_lossy(&listing);
    for rule in listing.lines().map(split_rule) {
        if rule.first().map(String::as_str) == Some("-A")
            && rule.get(1).map(String::as_str) == Some("POSTROUTING")
            && jumps_to(&rule, chain)
        {
            let mut delete: Vec<&str> = vec!["-w", "-t", "nat", "-D"];
            delete.extend(rule[1..].iter().map(String::as_str));
            iptables(exec, tool, &delete)?;
        }
    }
    if listing.lines().any(|line| line == format!("-N {chain}")) {
        iptables(exec, tool, &["-w", "-t", "nat", "-F", chain])?;
        iptables(exec, tool, &["-w", "-t", "nat", "-X", chain])?;
    }
    Ok(())
}

fn jumps_to(rule: &[String], chain: &str) -> bool {
    rule.windows(2).any(|pair| pair[0] == "-j" && pair[1] == chain)
}

/// Splits a line of `iptables -S` into arguments: words, or double-quoted
/// strings with `\"` and `\\` escapes (how it prints comments).
fn split_rule(line: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c == ' ' {
            chars.next();
            continue;
        }
        let mut arg = String::new();
        if c == '"' {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => arg.extend(chars.next()),
                    '"' => break,
                    c => arg.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|&c| c != ' ') {
                arg.push(c);
            }
        }
        args.push(arg);
    }
    args
}

fn iptables(exec: &dyn PluginExec, tool: &str, args: &[&str]) -> Result<Vec<u8>, NetworkError> {
    exec.run(tool, args).map_err(|e| match e {
        ExecError::Spawn(source) => NetworkError::CommandSpawn { program: tool.to_string(), source },
        ExecError::Exit { status, stderr, .. } => NetworkError::Command {
            command: format!("{tool} {}", args.join(" ")),
            status,
            stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_match_the_plugins() {
        // sha512("totec1") in hex starts f2ae5ffe55bf63aabd30e58c, as
        // Python's hashlib says; bridge 1.1.1 names the chain from that.
        assert_eq!(chain_name("tote", "c1"), "CNI-f2ae5ffe55bf63aabd30e58c");
    }

    #[test]
    fn splits_quoted_comments() {
        let line = r#"-A POSTROUTING -s 10.88.0.2/32 -m comment --comment "name: \"tote\" id: \"c1\"" -j CNI-abc"#;
        assert_eq!(
            split_rule(line),
            [
                "-A",
                "POSTROUTING",
                "-s",
                "10.88.0.2/32",
                "-m",
                "comment",
                "--comment",
                r#"name: "tote" id: "c1""#,
                "-j",
                "CNI-abc"
            ]
        );
    }
}
