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
    let ignores_mem = spec
        .kubernetes
        .as_ref()
        .and_then(|k| k.ignore_preflight_errors.as_deref())
        // kubeadm compares check names case-insensitively.
        .is_some_and(|checks| checks.iter().any(|c| c.eq_ignore_ascii_case("Mem")));
    let board = board(ctx, spec.board, role, ignores_mem);
    let hostname = hostname(ctx, spec.hostname.as_deref());
    Some((role, board, hostname))
}

/// The board decides the kernel and firmware, and whether kubeadm accepts it as a control plane.
fn board(ctx: &mut Ctx, board: Option<Board>, role: Role, ignores_mem: bool) -> Board {
    let board = board.unwrap_or_else(|| {
        ctx.missing("board", "board (rpi3b, rpi3bplus, zero2w, rpi4b or cm4)");
        Board::Rpi4b
    });
    // kubeadm v1.31's preflight (checks_linux.go, Mem) fails a control-plane node with less than
    // 1700 MB of RAM unless the profile has it ignore that check: these boards have 1 GiB.
    let small = matches!(board, Board::Rpi3b | Board::Rpi3bplus | Board::Zero2w);
    if role == Role::ControlPlane && small {
        if ignores_mem {
            ctx.warn(
                "kubernetes.ignore_preflight_errors",
                format!(
                    "{board} has at most 1 GiB of RAM, below the 1700 MB kubeadm requires on a control-plane node; its Mem check is ignored: fit for a QEMU test cluster, not for a cluster you rely on"
                ),
            );
        } else {
            ctx.err(
                "board",
                format!(
                    "{board} has at most 1 GiB of RAM; kubeadm requires 1700 MB on a control-plane node (use rpi4b or cm4 with 2 GB or more; for a QEMU test cluster, kubernetes.ignore_preflight_errors = [\"Mem\"])"
                ),
            );
        }
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

#[cfg(test)]
mod tests {
    use super::super::testing::{check, errors, warnings};
    use super::*;

    fn spec(text: &str) -> ProfileSpec {
        toml::from_str(text).expect("spec")
    }

    #[test]
    fn a_complete_node_checks_clean() {
        let s = spec("hostname = \"cp1\"\nboard = \"cm4\"\nrole = \"control-plane\"");
        let (out, diags) = check(|ctx| super::check(ctx, &s));
        assert_eq!(
            out,
            Some((Role::ControlPlane, Board::Cm4, "cp1".to_string()))
        );
        assert!(diags.0.is_empty(), "{diags}");
    }

    #[test]
    fn without_a_role_nothing_else_is_checked() {
        let (out, diags) = check(|ctx| super::check(ctx, &spec("board = \"rpi4b\"")));
        assert_eq!(out, None);
        assert_eq!(errors(&diags).len(), 1);
        assert!(
            errors(&diags)[0].starts_with("role: missing: role"),
            "{diags}"
        );
    }

    #[test]
    fn small_boards_are_workers_or_load_balancers_only() {
        let (b, diags) = check(|ctx| board(ctx, Some(Board::Rpi3b), Role::Worker, false));
        assert_eq!(b, Board::Rpi3b);
        assert!(diags.0.is_empty());
        let (_, diags) = check(|ctx| board(ctx, Some(Board::Zero2w), Role::ControlPlane, false));
        assert!(errors(&diags)[0].starts_with("board: zero2w has at most 1 GiB"));
        assert!(errors(&diags)[0].contains("kubernetes.ignore_preflight_errors = [\"Mem\"]"));
    }

    /// kubeadm's own way past its Mem check, asked for in the profile: a warning, no error.
    #[test]
    fn a_small_control_plane_that_ignores_the_mem_check_is_only_warned_about() {
        for list in ["[\"Mem\"]", "[\"Swap\", \"mem\"]"] {
            let s = spec(&format!(
                "hostname = \"cp1\"\nboard = \"rpi3b\"\nrole = \"control-plane\"\n\
                 [kubernetes]\nignore_preflight_errors = {list}"
            ));
            let (out, diags) = check(|ctx| super::check(ctx, &s));
            assert!(out.is_some());
            assert!(errors(&diags).is_empty(), "{list}: {diags}");
            assert!(
                warnings(&diags)[0].starts_with(
                    "kubernetes.ignore_preflight_errors: rpi3b has at most 1 GiB of RAM, below the 1700 MB"
                ),
                "{list}: {diags}"
            );
        }
        let s = spec(
            "hostname = \"cp1\"\nboard = \"rpi3b\"\nrole = \"control-plane\"\n\
             [kubernetes]\nignore_preflight_errors = [\"Swap\"]",
        );
        let (_, diags) = check(|ctx| super::check(ctx, &s));
        assert!(errors(&diags)[0].starts_with("board: rpi3b has at most 1 GiB"));
    }

    #[test]
    fn a_missing_board_is_reported() {
        let (_, diags) = check(|ctx| board(ctx, None, Role::Worker, false));
        assert!(errors(&diags)[0].starts_with("board: missing: board"));
    }

    #[test]
    fn hostnames_are_dns_labels() {
        let (h, diags) = check(|ctx| hostname(ctx, Some("w-1")));
        assert_eq!(h, "w-1");
        assert!(diags.0.is_empty());
        let (_, diags) = check(|ctx| hostname(ctx, Some("W_1")));
        assert!(errors(&diags)[0].starts_with("hostname: `W_1` is not a valid host name"));
        let (_, diags) = check(|ctx| hostname(ctx, None));
        assert!(errors(&diags)[0].starts_with("hostname: missing"));
    }
}
