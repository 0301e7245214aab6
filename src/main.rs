//! The `p2pimg` command: everything is in the library's [`p2pimg::cli`].

fn main() -> std::process::ExitCode {
    p2pimg::cli::main()
}
