//! The `dreamgym` command line: see `dreamgym --help`.

// Env steps allocate small observation and info values on worker threads that the caller
// frees; mimalloc's thread-local free lists make that cheaper than glibc's arenas.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (v2 and v3 headers of libmimalloc-sys
/// 0.1.49; the crate exports no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() {
    // Training allocates and frees the same large buffers every step; by default mimalloc
    // returns them to the OS after 10 ms and the next step faults the pages back in zeroed
    // (16% of a VAE training step in `perf`). Keep them mapped.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    let registry = dreamgym_envs::Registry::with_builtins();
    std::process::exit(dreamgym::cli::main_with_registry(registry));
}
