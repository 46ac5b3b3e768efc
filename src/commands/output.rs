//! Plain output for the operator commands: aligned text tables (comfy-table),
//! timestamps, and progress on stderr (an indicatif bar on a terminal, a line
//! every N items otherwise).

use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

/// A text table: left-aligned columns separated by two spaces, no borders or
/// rules (a comfy-table without lines), so scripts can split it on whitespace.
pub struct Table {
    inner: comfy_table::Table,
    columns: usize,
}

/// Spaces between two columns.
const GAP: u16 = 2;

impl Table {
    pub fn new(headers: &[&'static str]) -> Self {
        let mut inner = comfy_table::Table::new();
        inner.load_style(comfy_table::presets::NOTHING).set_header(headers.to_vec());
        let columns = headers.len();
        for (i, column) in inner.column_iter_mut().enumerate() {
            column.set_padding((0, if i + 1 < columns { GAP } else { 0 }));
        }
        Self { inner, columns }
    }

    /// Adds a row; control characters (newlines, tabs) become spaces, and cells
    /// beyond the headers are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let clean: Vec<String> = cells
            .into_iter()
            .take(self.columns)
            .map(|c| if c.chars().any(char::is_control) { c.replace(char::is_control, " ") } else { c })
            .collect();
        self.inner.add_row(clean);
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// The header line and one line per row, each ending in a newline, without trailing spaces.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for line in self.inner.lines() {
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A timestamp for tables (UTC, seconds).
pub fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

pub fn opt_time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "-".into(), time)
}

pub fn opt(s: Option<&str>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or("-").to_owned()
}

/// Progress on stderr: an indicatif bar on a terminal (a spinner while the
/// total is unknown), a plain line every N items otherwise. The bar appears
/// with the first update, so a command that never reports progress draws none.
pub struct Progress {
    label: &'static str,
    total: Option<u64>,
    done: u64,
    every: u64,
    next_line: u64,
    /// Where the bar goes (a terminal), until it is drawn.
    target: Option<ProgressDrawTarget>,
    bar: Option<ProgressBar>,
    message: Option<String>,
}

/// Redraws of a bar per second at most.
const BAR_HZ: u8 = 10;

impl Progress {
    /// `every`: on a non-terminal, one line each time another `every` items are done.
    pub fn new(label: &'static str, total: Option<u64>, every: u64) -> Self {
        let tty = std::io::stderr().is_terminal();
        Self::with_terminal(label, total, every, tty.then(|| ProgressDrawTarget::stderr_with_hz(BAR_HZ)))
    }

    /// [`Progress::new`] drawing a bar to `target` (a terminal), or plain lines without one.
    fn with_terminal(label: &'static str, total: Option<u64>, every: u64, target: Option<ProgressDrawTarget>) -> Self {
        let every = every.max(1);
        Self { label, total, done: 0, every, next_line: every, target, bar: None, message: None }
    }

    /// True when progress is drawn as a bar on a terminal.
    pub fn on_terminal(&self) -> bool {
        self.target.is_some() || self.bar.is_some()
    }

    /// The bar, drawn now if it was not yet; `None` off a terminal.
    fn bar(&mut self) -> Option<&ProgressBar> {
        if let Some(target) = self.target.take() {
            let bar = ProgressBar::with_draw_target(self.total, target).with_prefix(self.label);
            bar.set_style(bar_style(self.total.is_some()));
            if let Some(msg) = self.message.take() {
                bar.set_message(msg);
            }
            // Keeps the spinner, rate and elapsed time moving between slow updates.
            bar.enable_steady_tick(Duration::from_millis(200));
            self.bar = Some(bar);
        }
        self.bar.as_ref()
    }

    fn text(&self) -> String {
        match self.total {
            Some(t) if t > 0 => format!("{}: {}/{t} ({}%)", self.label, self.done, self.done * 100 / t),
            _ => format!("{}: {}", self.label, self.done),
        }
    }

    /// Sets the total once it is known (a spinner turns into a bar).
    pub fn set_total(&mut self, total: u64) {
        if self.total != Some(total) {
            self.total = Some(total);
            if let Some(bar) = &self.bar {
                bar.set_length(total);
                bar.set_style(bar_style(true));
            }
        }
    }

    /// A short text beside the bar (what is being worked on); not shown off a terminal.
    pub fn set_message(&mut self, msg: String) {
        match &self.bar {
            Some(bar) => bar.set_message(msg),
            None => self.message = Some(msg),
        }
    }

    /// Records that `done` items are done.
    pub fn set(&mut self, done: u64) {
        self.done = done;
        if let Some(bar) = self.bar() {
            bar.set_position(done);
        } else if done >= self.next_line {
            eprintln!("{}", self.text());
            while self.next_line <= done {
                self.next_line += self.every;
            }
        }
    }

    /// Prints a message on its own line without garbling the bar.
    pub fn note(&mut self, msg: &str) {
        match &self.bar {
            Some(bar) => bar.println(msg),
            None => eprintln!("{msg}"),
        }
    }

    /// Final state: the bar stays drawn at its last value on a terminal (not
    /// filled up: a run that stopped early shows where it stopped).
    pub fn finish(&mut self) {
        if let Some(bar) = &self.bar {
            bar.set_message("");
            bar.abandon();
        }
    }
}

/// `label: [bar] done/total (percent, eta) message`, or for an unknown total
/// `spinner label: done (elapsed) message`.
fn bar_style(known_total: bool) -> ProgressStyle {
    let template = if known_total { BAR_TEMPLATE } else { SPINNER_TEMPLATE };
    // (The templates are fixed; a typo is caught by the unit test.)
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> ")
}

const BAR_TEMPLATE: &str = "{prefix}: [{wide_bar}] {pos}/{len} ({percent}%, eta {eta}) {msg}";
const SPINNER_TEMPLATE: &str = "{spinner} {prefix}: {human_pos} ({elapsed}) {msg}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_flatten_newlines() {
        let mut t = Table::new(&["ID", "TICKET", "ERROR"]);
        assert!(t.is_empty());
        t.row(vec!["1".into(), "ACC-1".into(), "boom\nagain".into()]);
        t.row(vec!["12".into(), "-".into(), "x".into()]);
        assert!(!t.is_empty());
        assert_eq!(t.render(), "ID  TICKET  ERROR\n1   ACC-1   boom again\n12  -       x\n");
    }

    #[test]
    fn tables_clean_every_control_character_and_keep_to_the_headers() {
        let mut t = Table::new(&["A", "B"]);
        t.row(vec!["x\ty\r".into(), "\u{1b}[31mred\u{7}".into(), "extra".into()]);
        t.row(vec!["only".into()]);
        let out = t.render();
        assert_eq!(out, "A     B\nx y    [31mred\nonly\n");
        assert!(out.chars().all(|c| c == '\n' || !c.is_control()), "{out:?}");
    }

    /// A terminal that records what is written to it.
    #[derive(Debug, Clone, Default)]
    struct Screen(std::sync::Arc<std::sync::Mutex<String>>);

    impl indicatif::TermLike for Screen {
        fn width(&self) -> u16 {
            100
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.write_str(&format!("{s}\n"))
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.0.lock().unwrap().push_str(s);
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            self.write_str("<clear>")
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn on_screen(label: &'static str, total: Option<u64>) -> (Progress, Screen) {
        let screen = Screen::default();
        let target = ProgressDrawTarget::term_like_with_hz(Box::new(screen.clone()), 100);
        (Progress::with_terminal(label, total, 1, Some(target)), screen)
    }

    #[test]
    fn on_a_terminal_progress_is_a_bar_that_ends_at_the_total() {
        let (mut p, screen) = on_screen("replayed", Some(4));
        assert!(p.on_terminal());
        for i in 1..=4 {
            p.set(i);
        }
        p.finish();
        let drawn = screen.0.lock().unwrap().clone();
        assert!(drawn.contains("replayed: [") && drawn.contains("] 4/4 (100%"), "{drawn}");
        assert!(drawn.contains("===="), "a full bar: {drawn}");
    }

    #[test]
    fn an_unknown_total_is_a_spinner_until_it_is_set() {
        let (mut p, screen) = on_screen("rows checked", None);
        p.set(20_000);
        p.note("a note");
        std::thread::sleep(Duration::from_millis(20));
        p.set(30_000);
        let spinning = screen.0.lock().unwrap().clone();
        assert!(spinning.contains("rows checked: 30,000") || spinning.contains("rows checked: 20,000"), "{spinning}");
        assert!(spinning.contains("a note"), "{spinning}");
        let (mut p, screen) = on_screen("reading", None);
        p.set_total(3);
        p.set_message("okta / Engineering".into());
        p.set(2);
        p.finish();
        let drawn = screen.0.lock().unwrap().clone();
        assert!(drawn.contains("] 2/3 (67%"), "{drawn}");
        assert!(drawn.contains("okta / Engineering"), "{drawn}");
        assert!(!drawn.contains("3/3"), "finishing does not fill the bar: {drawn}");
    }

    #[test]
    fn a_bar_is_drawn_only_once_progress_is_reported() {
        let (mut p, screen) = on_screen("replayed", Some(1));
        p.note("refused: not open");
        p.finish();
        assert!(p.on_terminal());
        assert_eq!(screen.0.lock().unwrap().as_str(), "", "nothing drawn");
    }

    #[test]
    fn both_bar_templates_parse() {
        for known in [true, false] {
            let template = if known { BAR_TEMPLATE } else { SPINNER_TEMPLATE };
            assert!(ProgressStyle::with_template(template).is_ok(), "{template}");
        }
    }

    #[test]
    fn a_table_with_empty_headers_keeps_its_header_line() {
        // `dlq show` skips the first (empty) line of a two-column key/value table.
        let mut t = Table::new(&["", ""]);
        t.row(vec!["ticket".into(), "ACC-1".into()]);
        t.row(vec!["error class".into(), "transient".into()]);
        assert_eq!(t.render(), "\nticket       ACC-1\nerror class  transient\n");
    }
}
