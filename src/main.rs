//! piimg command-line entry point: errors become a message on stderr and exit status 1.

mod cli;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("piimg: error: {}", cli::error_chain(&e));
            std::process::exit(1);
        }
    }
}
