fn main() {
    eprintln!("piimg-agent: not yet implemented");
    std::process::exit(1);
}
