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
