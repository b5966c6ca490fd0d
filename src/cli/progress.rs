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
                plain_line("\ninterrupted twice: exiting without saving");
                std::process::exit(130);
            }
            plain_line("\nstopping after the current step (Ctrl-C again to quit at once)");
            f.stop();
        });
        flag
    })
}

/// Draws one bar per stage on stderr, prints notes on stderr and stage summaries on stdout.
/// When stderr is not a terminal (CI logs, `nohup`), the bar becomes a plain line every
/// [`PLAIN_EVERY`] and at the end of each stage.
pub struct CliProgress {
    bar: Mutex<Option<ProgressBar>>,
    plain: Option<Mutex<Option<Plain>>>,
}

/// Writes a progress line on stderr, ignoring a closed stream.
fn plain_line(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// How often a plain progress line is printed.
pub const PLAIN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// A stage's progress without a terminal.
struct Plain {
    stage: String,
    total: u64,
    pos: u64,
    status: String,
    started: std::time::Instant,
    printed: std::time::Instant,
}

impl Plain {
    fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64();
        let rate = self.pos as f64 / secs.max(1e-9);
        let eta = if self.pos > 0 && self.total > self.pos {
            format!(", eta {:.0} s", (self.total - self.pos) as f64 / rate)
        } else {
            String::new()
        };
        let status = if self.status.is_empty() {
            String::new()
        } else {
            format!(", {}", self.status)
        };
        format!(
            "{}: {}/{} ({:.1}/s, {:.0} s{eta}{status})",
            self.stage, self.pos, self.total, rate, secs
        )
    }
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
        use std::io::IsTerminal;
        Self {
            bar: Mutex::new(None),
            plain: (!std::io::stderr().is_terminal()).then(|| Mutex::new(None)),
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
        // A closed pipe (`| head`) must not stop the work: lines that cannot be written are
        // dropped.
        let emit = || {
            use std::io::Write;
            let _ = if stdout {
                writeln!(std::io::stdout(), "{line}")
            } else {
                writeln!(std::io::stderr(), "{line}")
            };
        };
        match self.bar.lock().ok().and_then(|g| g.clone()) {
            Some(bar) => bar.suspend(emit),
            None => emit(),
        }
    }
}

impl Progress for CliProgress {
    fn begin(&self, stage: &str, total: u64) {
        // Nothing to do (a stage already done): no bar, no line.
        if total == 0 {
            return;
        }
        if let Some(plain) = &self.plain {
            let now = std::time::Instant::now();
            plain_line(&format!("{stage}: 0/{total}"));
            if let Ok(mut p) = plain.lock() {
                *p = Some(Plain {
                    stage: stage.to_string(),
                    total,
                    pos: 0,
                    status: String::new(),
                    started: now,
                    printed: now,
                });
            }
            return;
        }
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
        if let Some(plain) = &self.plain
            && let Ok(mut guard) = plain.lock()
            && let Some(p) = guard.as_mut()
        {
            p.pos += n;
            // The last unit's line is printed by `end`.
            if p.pos < p.total && p.printed.elapsed() >= PLAIN_EVERY {
                p.printed = std::time::Instant::now();
                plain_line(&p.line());
            }
        }
    }

    fn status(&self, text: &str) {
        if let Some(plain) = &self.plain
            && let Ok(mut guard) = plain.lock()
            && let Some(p) = guard.as_mut()
        {
            p.status = text.to_string();
        }
        let text = text.to_string();
        self.with_bar(|b| b.set_message(text));
    }

    fn end(&self) {
        if let Some(plain) = &self.plain
            && let Ok(mut guard) = plain.lock()
            && let Some(p) = guard.take()
        {
            plain_line(&p.line());
        }
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

/// Progress as JSON lines on stdout, one object per event, for programs that drive the
/// command line (`dreamgym run --progress json`; the Python package's `dreamgym.run`):
///
/// - `{"event": "begin", "stage", "total"}` when a stage starts;
/// - `{"event": "advance", "stage", "done", "total", "status"}` at most every
///   [`JSON_EVERY`], and for the last unit (`status`: the stage's latest line, such as
///   `mean return 12.3`, or empty);
/// - `{"event": "note", "text"}`, `{"event": "done", "text"}` (a stage's summary),
///   `{"event": "end", "stage"}`.
///
/// Other output of the command stays plain text. Ctrl-C (SIGINT) stops as in a terminal.
pub struct JsonProgress {
    stage: Mutex<JsonStage>,
}

/// How often a JSON `advance` event is written.
pub const JSON_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

#[derive(Default)]
struct JsonStage {
    name: String,
    done: u64,
    total: u64,
    status: String,
    written: Option<std::time::Instant>,
}

impl JsonProgress {
    /// A reporter with Ctrl-C wired to [`Progress::interrupted`].
    pub fn new() -> Self {
        stop_flag();
        Self {
            stage: Mutex::new(JsonStage::default()),
        }
    }
}

impl Default for JsonProgress {
    fn default() -> Self {
        Self::new()
    }
}

/// Writes one event line on stdout, ignoring a closed stream.
pub fn json_line(event: serde_json::Value) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{event}");
    let _ = out.flush();
}

impl Progress for JsonProgress {
    fn begin(&self, stage: &str, total: u64) {
        if let Ok(mut s) = self.stage.lock() {
            *s = JsonStage {
                name: stage.to_string(),
                done: 0,
                total,
                status: String::new(),
                written: None,
            };
        }
        json_line(serde_json::json!({"event": "begin", "stage": stage, "total": total}));
    }

    fn advance(&self, n: u64) {
        let Ok(mut s) = self.stage.lock() else { return };
        s.done += n;
        let due = s.written.is_none_or(|t| t.elapsed() >= JSON_EVERY);
        if due || s.done >= s.total {
            s.written = Some(std::time::Instant::now());
            json_line(serde_json::json!({
                "event": "advance", "stage": s.name, "done": s.done, "total": s.total,
                "status": s.status
            }));
        }
    }

    fn status(&self, text: &str) {
        if let Ok(mut s) = self.stage.lock() {
            s.status = text.to_string();
        }
    }

    fn end(&self) {
        let stage = self
            .stage
            .lock()
            .map(|s| s.name.clone())
            .unwrap_or_default();
        json_line(serde_json::json!({"event": "end", "stage": stage}));
    }

    fn note(&self, text: &str) {
        json_line(serde_json::json!({"event": "note", "text": text}));
    }

    fn done(&self, summary: &str) {
        json_line(serde_json::json!({"event": "done", "text": summary}));
    }

    fn interrupted(&self) -> bool {
        stop_flag().is_set()
    }
}
