//! The checks the agent itself relies on (the builder validates everything; a hand-edited or
//! stale node.json gets clear console messages instead of odd failures later).

use crate::node::NodeConfig;

/// Problems found, one message each (empty: fine).
pub fn problems(cfg: &NodeConfig) -> Vec<String> {
    let mut p = Vec::new();
    let h = &cfg.hostname;
    if h.is_empty()
        || h.len() > 63
        || h.starts_with('-')
        || h.ends_with('-')
        || !h
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        p.push(format!("hostname {h:?} is not a DNS label"));
    }
    let i = &cfg.network.interface;
    if i.is_empty() || i.len() > 15 || i.contains('/') || i.contains(char::is_whitespace) {
        p.push(format!("interface name {i:?} is not valid"));
    }
    if let Some(gw) = &cfg.network.gateway {
        if cfg.network.address.addr().is_ipv4() != gw.is_ipv4() {
            p.push(format!(
                "gateway {gw} is not the same family as {}",
                cfg.network.address
            ));
        }
    }
    if cfg.role.is_kubernetes() && cfg.kubernetes.is_none() {
        p.push(format!("role {} needs a kubernetes section", cfg.role));
    }
    for (what, v) in [
        ("root_partuuid", &cfg.storage.root_partuuid),
        ("data_partuuid", &cfg.storage.data_partuuid),
    ] {
        if let Some(u) = v {
            if !is_partuuid(u) {
                p.push(format!(
                    "storage.{what} {u:?} is neither xxxxxxxx-NN nor a GUID"
                ));
            }
        }
    }
    p
}

/// MBR `0badc0de-03` or GPT `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (hex, any case).
pub fn is_partuuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    let hex = groups
        .iter()
        .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()));
    hex && (lens == [8, 2] || lens == [8, 4, 4, 4, 12])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::*;

    fn cfg() -> NodeConfig {
        NodeConfig::from_json(
            br#"{"schema":1,"hostname":"cp1","role":"control-plane","board":"rpi4b",
            "network":{"interface":"eth0","address":"10.0.2.15/24","gateway":"10.0.2.2"},
            "kubernetes":{"version":"v1.31.2","control_plane_endpoint":"10.0.2.10:6443",
              "pod_cidr":"10.244.0.0/16","service_cidr":"10.96.0.0/12","init":true,
              "token":"abcdef.0123456789abcdef","ca_cert_hash":"sha256:00"},
            "agent":{"status_port":9100},
            "storage":{"root_partuuid":"0badc0de-02","data_partuuid":"6C586E13-8CDB-4A1D-9C3E-0F2A1B3C4D5E"},
            "build_epoch":1700000000}"#,
        )
        .unwrap()
    }

    #[test]
    fn good_config_has_no_problems() {
        assert_eq!(problems(&cfg()), Vec::<String>::new());
    }

    #[test]
    fn each_problem_reported() {
        let mut c = cfg();
        c.hostname = "Bad_Name".into();
        c.network.interface = "a-very-long-interface-name".into();
        c.network.gateway = Some("fe80::1".parse().unwrap());
        c.kubernetes = None;
        c.storage.data_partuuid = Some("nope".into());
        let p = problems(&c);
        assert_eq!(p.len(), 5, "{p:#?}");
        assert!(p[0].contains("Bad_Name"));
        assert!(p[4].contains("data_partuuid"));
    }

    #[test]
    fn parse_errors_are_readable() {
        let e = NodeConfig::from_json(br#"{"schema":1,"hostname":"x"}"#).unwrap_err();
        assert!(
            e.to_string().starts_with("node config: missing field"),
            "{e}"
        );
        let e = NodeConfig::from_json(b"{").unwrap_err();
        assert!(e.to_string().contains("EOF"), "{e}");
    }
}
