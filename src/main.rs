//! The `dreamgym` command line: see `dreamgym --help`.

// Env steps allocate small observation and info values on worker threads that the caller
// frees; mimalloc's thread-local free lists make that cheaper than glibc's arenas.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let registry = dreamgym_envs::Registry::with_builtins();
    std::process::exit(dreamgym::cli::main_with_registry(registry));
}
