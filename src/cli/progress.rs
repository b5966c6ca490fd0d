//! Progress bars and Ctrl-C for the library's long work: the CLI's [`Progress`].

use std::sync::Mutex;

use dreamgym_agents::{Progress, StopFlag};
use indicatif::{ProgressBar, ProgressStyle};

/// Raised by the first Ctrl-C; a second one exits at once.
static STOP: std::sync::OnceLock<StopFlag> = std::sync::OnceLock::new();

/// The process-wide stop flag, with the Ctrl-C handler installed on first use.
pub fn stop_flag() -> &'static StopFlag {
    STOP.get_or_init(|| {
        let flag = StopFlag::default();
        let f = flag.clone();
        let _ = ctrlc::set_handler(move || {
            if f.is_set() {
                eprintln!("\ninterrupted twice: exiting without saving");
                std::process::exit(130);
            }
            eprintln!("\nstopping after the current step (Ctrl-C again to quit at once)");
            f.stop();
        });
        flag
    })
}

/// Draws one bar per stage on stderr (hidden when stderr is not a terminal), prints notes on
/// stderr and stage summaries on stdout.
pub struct CliProgress {
    bar: Mutex<Option<ProgressBar>>,
}

impl Default for CliProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl CliProgress {
    /// A reporter with Ctrl-C wired to [`Progress::interrupted`].
    pub fn new() -> Self {
        stop_flag();
        Self {
            bar: Mutex::new(None),
        }
    }

    fn with_bar(&self, f: impl FnOnce(&ProgressBar)) {
        if let Ok(guard) = self.bar.lock()
            && let Some(bar) = guard.as_ref()
        {
            f(bar);
        }
    }

    fn print(&self, line: &str, stdout: bool) {
        let emit = || {
            if stdout {
                println!("{line}");
            } else {
                eprintln!("{line}");
            }
        };
        match self.bar.lock().ok().and_then(|g| g.clone()) {
            Some(bar) => bar.suspend(emit),
            None => emit(),
        }
    }
}

impl Progress for CliProgress {
    fn begin(&self, stage: &str, total: u64) {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{stage:>10} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} ({{per_sec}}, eta {{eta}}) {{msg}}"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        if let Ok(mut guard) = self.bar.lock()
            && let Some(old) = guard.replace(bar)
        {
            old.finish_and_clear();
        }
    }

    fn advance(&self, n: u64) {
        self.with_bar(|b| b.inc(n));
    }

    fn status(&self, text: &str) {
        let text = text.to_string();
        self.with_bar(|b| b.set_message(text));
    }

    fn end(&self) {
        if let Ok(mut guard) = self.bar.lock()
            && let Some(bar) = guard.take()
        {
            bar.finish_and_clear();
        }
    }

    fn note(&self, text: &str) {
        self.print(text, false);
    }

    fn done(&self, summary: &str) {
        self.print(summary, true);
    }

    fn interrupted(&self) -> bool {
        stop_flag().is_set()
    }
}
