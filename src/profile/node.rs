//! A profile's top-level node settings: what the node is (`role`), what it runs on (`board`) and
//! what it is called (`hostname`).

use super::fields::{valid_hostname, Ctx};
use super::schema::ProfileSpec;
use piimg_agent::node::{Board, Role};

/// Role, board and hostname; None without a role, since every later section depends on it.
pub(super) fn check(ctx: &mut Ctx, spec: &ProfileSpec) -> Option<(Role, Board, String)> {
    let Some(role) = spec.role else {
        ctx.missing("role", "role (control-plane, worker or load-balancer)");
        return None;
    };
    let board = board(ctx, spec.board, role);
    let hostname = hostname(ctx, spec.hostname.as_deref());
    Some((role, board, hostname))
}

/// The board decides the kernel and firmware, and whether kubeadm accepts it as a control plane.
fn board(ctx: &mut Ctx, board: Option<Board>, role: Role) -> Board {
    let board = board.unwrap_or_else(|| {
        ctx.missing("board", "board (rpi3b, rpi3bplus, zero2w, rpi4b or cm4)");
        Board::Rpi4b
    });
    // kubeadm v1.31's preflight (checks_linux.go, Mem) fails a control-plane node with less than
    // 1700 MB of RAM, and no preflight error is ignored: these boards have 1 GiB or less.
    if role == Role::ControlPlane
        && matches!(board, Board::Rpi3b | Board::Rpi3bplus | Board::Zero2w)
    {
        ctx.err(
            "board",
            format!(
                "{board} has at most 1 GiB of RAM; kubeadm requires 1700 MB on a control-plane node (use rpi4b or cm4 with 2 GB or more)"
            ),
        );
    }
    board
}

/// The hostname names the node to Kubernetes and its peers, so it must be a valid DNS label.
fn hostname(ctx: &mut Ctx, hostname: Option<&str>) -> String {
    match hostname {
        Some(h) if valid_hostname(h) => h.to_string(),
        Some(h) => {
            ctx.err(
                "hostname",
                format!("`{h}` is not a valid host name (lowercase letters, digits and '-', at most 63)"),
            );
            h.to_string()
        }
        None => {
            ctx.missing("hostname", "hostname");
            String::new()
        }
    }
}
