//! The `asmux` binary: all of it lives in the library.

fn main() -> std::process::ExitCode {
    asmux::cli::main()
}
