//! `[network]`: the node's static address, gateway, resolvers, routes and time servers.

use super::fields::{parse_cidr, parse_ip, Ctx};
use super::schema::{NetworkSpec, RouteSpec};
use ipnet::IpNet;
use piimg_agent::node::{Board, Network, Role, Route};
use std::net::IpAddr;

/// The node's network, and its address when one parsed (later sections check against it).
pub(super) fn check(
    ctx: &mut Ctx,
    n: &NetworkSpec,
    role: Role,
    board: Board,
) -> (Network, Option<IpNet>) {
    let interface = super::wifi::interface(n);
    let wifi = super::wifi::check(ctx, n, board);
    let address = address(ctx, n.address.as_deref());
    let gateway = gateway(ctx, n.gateway.as_deref(), address);
    let dns: Vec<IpAddr> = n
        .dns
        .iter()
        .enumerate()
        .filter_map(|(i, d)| parse_ip(ctx, &format!("network.dns.{i}"), d))
        .collect();
    let routes = routes(ctx, &n.routes);
    let network = Network {
        interface,
        address: address.unwrap_or_else(|| IpNet::from(IpAddr::from([0, 0, 0, 0]))),
        gateway,
        dns,
        routes,
        ntp: n.ntp.clone(),
        wifi,
    };
    check_ntp(ctx, &n.ntp, role);
    (network, address)
}

/// A node needs a host address of its own: the subnet's network address is none.
fn address(ctx: &mut Ctx, address: Option<&str>) -> Option<IpNet> {
    let address = match address {
        Some(a) => parse_cidr(ctx, "network.address", a),
        None => {
            ctx.missing("network.address", "network.address (CIDR)");
            None
        }
    };
    if let Some(a) = address {
        if a.prefix_len() < a.max_prefix_len() && a.addr() == a.network() {
            ctx.err(
                "network.address",
                format!("`{a}` is the network address of its subnet, not a host address"),
            );
        }
    }
    address
}

/// A gateway off the node's subnet could never be reached.
fn gateway(ctx: &mut Ctx, gateway: Option<&str>, address: Option<IpNet>) -> Option<IpAddr> {
    let gateway = gateway.and_then(|g| parse_ip(ctx, "network.gateway", g));
    if let (Some(a), Some(g)) = (address, gateway) {
        if !a.trunc().contains(&g) {
            ctx.err(
                "network.gateway",
                format!("{g} is outside the node's subnet {}", a.trunc()),
            );
        }
    }
    gateway
}

/// Static routes; one with a bad destination or next hop is reported and left out.
fn routes(ctx: &mut Ctx, routes: &[RouteSpec]) -> Vec<Route> {
    let mut out = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        let to = parse_cidr(ctx, &format!("network.routes.{i}.to"), &r.to);
        let via = parse_ip(ctx, &format!("network.routes.{i}.via"), &r.via);
        if let (Some(to), Some(via)) = (to, via) {
            out.push(Route { to, via });
        }
    }
    out
}

/// A Pi has no RTC and kubeadm and kubelet wait for a synced clock.
fn check_ntp(ctx: &mut Ctx, ntp: &[String], role: Role) {
    if role.is_kubernetes() && ntp.is_empty() {
        ctx.missing(
            "network.ntp",
            "network.ntp (NTP servers, e.g. [\"pool.ntp.org\"] or your router: a Pi has no clock of its own, and kubeadm and kubelet start only once it is synced)",
        );
    }
    for (i, server) in ntp.iter().enumerate() {
        if server.is_empty() || server.contains(char::is_whitespace) {
            ctx.err(
                &format!("network.ntp.{i}"),
                format!("`{server}` is not a host, address or host:port"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{check, errors};
    use super::*;

    fn spec(text: &str) -> NetworkSpec {
        toml::from_str(text).expect("spec")
    }

    #[test]
    fn a_complete_network_checks_clean() {
        let n = spec(
            "address = \"192.168.50.21/24\"\ngateway = \"192.168.50.1\"\ndns = [\"192.168.50.1\"]\n\
             ntp = [\"pool.ntp.org\"]\nroutes = [{ to = \"10.8.0.0/16\", via = \"192.168.50.2\" }]",
        );
        let ((net, address), diags) =
            check(|ctx| super::check(ctx, &n, Role::Worker, Board::Rpi4b));
        assert!(diags.0.is_empty(), "{diags}");
        assert_eq!(address, "192.168.50.21/24".parse().ok());
        assert_eq!(net.interface, "eth0");
        assert_eq!(net.routes.len(), 1);
        assert_eq!(net.dns.len(), 1);
    }

    #[test]
    fn the_subnets_network_address_is_no_host_address() {
        let (a, diags) = check(|ctx| address(ctx, Some("192.168.50.0/24")));
        assert!(a.is_some());
        assert!(errors(&diags)[0].starts_with("network.address: `192.168.50.0/24` is the network"));
        let (a, diags) = check(|ctx| address(ctx, Some("192.168.50.300/24")));
        assert_eq!(a, None);
        assert!(errors(&diags)[0].contains("is not a CIDR"));
    }

    #[test]
    fn the_gateway_is_on_the_nodes_subnet() {
        let a = "192.168.50.21/24".parse().ok();
        let (g, diags) = check(|ctx| gateway(ctx, Some("192.168.50.1"), a));
        assert!(g.is_some() && diags.0.is_empty());
        let (_, diags) = check(|ctx| gateway(ctx, Some("10.1.1.1"), a));
        assert_eq!(
            errors(&diags),
            ["network.gateway: 10.1.1.1 is outside the node's subnet 192.168.50.0/24"]
        );
    }

    #[test]
    fn a_bad_route_is_named_by_its_index_and_left_out() {
        let rs: Vec<RouteSpec> = spec(
            "routes = [{ to = \"10.8.0.0/16\", via = \"192.168.50.2\" }, { to = \"10.9.0.0/33\", via = \"x\" }]",
        )
        .routes;
        let (out, diags) = check(|ctx| routes(ctx, &rs));
        assert_eq!(out.len(), 1);
        let e = errors(&diags);
        assert!(e[0].starts_with("network.routes.1.to: "), "{e:?}");
        assert!(e[1].starts_with("network.routes.1.via: "), "{e:?}");
    }

    #[test]
    fn kubernetes_nodes_need_time_servers() {
        let (_, diags) = check(|ctx| check_ntp(ctx, &[], Role::LoadBalancer));
        assert!(diags.0.is_empty());
        let (_, diags) = check(|ctx| check_ntp(ctx, &[], Role::Worker));
        assert!(errors(&diags)[0].starts_with("network.ntp: missing"));
        let (_, diags) = check(|ctx| check_ntp(ctx, &["a b".to_string()], Role::Worker));
        assert!(errors(&diags)[0].starts_with("network.ntp.0: `a b` is not a host"));
    }
}
