//! `piimg fs`: placeholder until the writers' CLI lands.

#[derive(Debug, clap::Subcommand)]
pub enum FsCmd {}

pub fn run(cmd: FsCmd) -> anyhow::Result<()> {
    match cmd {}
}
