//! piimg command-line entry point: errors become a message on stderr and exit status 1.

mod cli;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("piimg: error: {}", chain(&e));
            std::process::exit(1);
        }
    }
}

/// The error and its causes, outermost first, each said once: many library errors already
/// include their cause's text (`{path}: {source}`), which `{:#}` would print a second time.
fn chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
