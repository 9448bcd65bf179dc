//! `[load_balancer]`: the HAProxy frontend's address and the API servers behind it.

use super::draft::LbDraft;
use super::fields::Ctx;
use super::schema::LoadBalancerSpec;
use super::DEFAULT_API_PORT;
use piimg_agent::node::{Backend, Role};
use std::net::SocketAddr;

/// The section as this profile sets it; only a load-balancer node may have one.
pub(super) fn check(ctx: &mut Ctx, lb: Option<&LoadBalancerSpec>, role: Role) -> LbDraft {
    let mut out = LbDraft {
        bind: None,
        backends: None,
        backend_port: DEFAULT_API_PORT,
    };
    match (lb, role) {
        (Some(lb), Role::LoadBalancer) => {
            out.bind = bind(ctx, lb.bind.as_deref().unwrap_or("0.0.0.0:6443"));
            out.backend_port = lb.backend_port.unwrap_or(DEFAULT_API_PORT);
            out.backends = lb.backends.as_deref().map(|bs| backends(ctx, bs));
        }
        (None, Role::LoadBalancer) => out.bind = "0.0.0.0:6443".parse().ok(),
        (Some(_), _) => ctx.err(
            "load_balancer",
            format!("only a load-balancer node takes [load_balancer] (this node is a {role})"),
        ),
        (None, _) => {}
    }
    out
}

/// HAProxy binds an address, not a name.
fn bind(ctx: &mut Ctx, bind: &str) -> Option<SocketAddr> {
    match bind.parse::<SocketAddr>() {
        Ok(b) => Some(b),
        Err(_) => {
            ctx.err(
                "load_balancer.bind",
                format!("`{bind}` is not address:port (e.g. 0.0.0.0:6443)"),
            );
            None
        }
    }
}

/// Listed backends, named in order; one that is not address:port is reported and left out.
fn backends(ctx: &mut Ctx, bs: &[String]) -> Vec<Backend> {
    let mut out = Vec::new();
    for (i, b) in bs.iter().enumerate() {
        match b.parse::<SocketAddr>() {
            Ok(a) => out.push(Backend {
                name: format!("backend{}", i + 1),
                address: a,
            }),
            Err(_) => ctx.err(
                &format!("load_balancer.backends.{i}"),
                format!("`{b}` is not address:port"),
            ),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::testing::{check, errors};
    use super::*;

    fn spec(text: &str) -> LoadBalancerSpec {
        toml::from_str(text).expect("spec")
    }

    #[test]
    fn a_load_balancer_without_the_section_binds_every_address() {
        let (lb, diags) = check(|ctx| super::check(ctx, None, Role::LoadBalancer));
        assert!(diags.0.is_empty());
        assert_eq!(lb.bind, "0.0.0.0:6443".parse().ok());
        assert!(lb.backends.is_none());
        assert_eq!(lb.backend_port, DEFAULT_API_PORT);
    }

    #[test]
    fn listed_backends_are_named_in_order() {
        let s = spec("bind = \"192.168.50.10:6443\"\nbackends = [\"192.168.50.11:6443\"]\nbackend_port = 7443");
        let (lb, diags) = check(|ctx| super::check(ctx, Some(&s), Role::LoadBalancer));
        assert!(diags.0.is_empty(), "{diags}");
        let b = lb.backends.expect("backends");
        assert_eq!(b[0].name, "backend1");
        assert_eq!(lb.backend_port, 7443);
    }

    #[test]
    fn a_backend_by_name_is_reported_by_index() {
        let (out, diags) = check(|ctx| backends(ctx, &["cp1:6443".to_string()]));
        assert!(out.is_empty());
        assert_eq!(
            errors(&diags),
            ["load_balancer.backends.0: `cp1:6443` is not address:port"]
        );
    }

    #[test]
    fn a_bad_bind_is_reported() {
        let (b, diags) = check(|ctx| bind(ctx, "all:6443"));
        assert_eq!(b, None);
        assert!(errors(&diags)[0].starts_with("load_balancer.bind: `all:6443`"));
    }

    #[test]
    fn only_a_load_balancer_takes_the_section() {
        let s = spec("bind = \"0.0.0.0:6443\"");
        let (lb, diags) = check(|ctx| super::check(ctx, Some(&s), Role::Worker));
        assert!(lb.bind.is_none());
        assert_eq!(
            errors(&diags),
            ["load_balancer: only a load-balancer node takes [load_balancer] (this node is a worker)"]
        );
    }
}
