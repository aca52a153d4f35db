//! The `asmux` binary: all of it lives in the library.

/// jemalloc, in every build: glibc's and musl's allocators both make threads wait for
/// each other's arena locks when memory allocated on one worker is freed on another,
/// which asmux does for every request and delivery (figures in the README).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    asmux::cli::main()
}
