//! The `asmux` binary: all of it lives in the library.

/// musl's allocator serialises threads; see Cargo.toml.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    asmux::cli::main()
}
