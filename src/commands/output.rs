//! Plain output for the operator commands: aligned text tables, timestamps, and
//! progress on stderr (an in-place counter on a terminal, a line every N items
//! otherwise).

use chrono::{DateTime, Utc};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// A text table: left-aligned columns separated by two spaces.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Self {
        Self { headers: headers.to_vec(), rows: Vec::new() }
    }

    /// Adds a row; control characters (newlines, tabs) become spaces.
    pub fn row(&mut self, cells: Vec<String>) {
        let clean = cells
            .into_iter()
            .map(|c| if c.chars().any(char::is_control) { c.replace(char::is_control, " ") } else { c })
            .collect();
        self.rows.push(clean);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
            let mut text = String::new();
            for (i, c) in cells.enumerate().take(n) {
                if i > 0 {
                    text.push_str("  ");
                }
                text.push_str(c);
                if i + 1 < n {
                    text.extend(std::iter::repeat_n(' ', widths[i] - c.chars().count()));
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(&mut out, &mut self.headers.iter().copied());
        for r in &self.rows {
            line(&mut out, &mut r.iter().map(String::as_str));
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

/// Progress on stderr.
pub struct Progress {
    label: &'static str,
    total: Option<u64>,
    done: u64,
    tty: bool,
    every: u64,
    next_line: u64,
    last_draw: Option<Instant>,
    drawn: bool,
}

impl Progress {
    /// `every`: on a non-terminal, one line each time another `every` items are done.
    pub fn new(label: &'static str, total: Option<u64>, every: u64) -> Self {
        let every = every.max(1);
        Self {
            label,
            total,
            done: 0,
            tty: std::io::stderr().is_terminal(),
            every,
            next_line: every,
            last_draw: None,
            drawn: false,
        }
    }

    fn text(&self) -> String {
        match self.total {
            Some(t) if t > 0 => format!("{}: {}/{t} ({}%)", self.label, self.done, self.done * 100 / t),
            _ => format!("{}: {}", self.label, self.done),
        }
    }

    /// Records that `done` items are done.
    pub fn set(&mut self, done: u64) {
        self.done = done;
        if self.tty {
            let due = self.last_draw.is_none_or(|t| t.elapsed() >= Duration::from_millis(100));
            if due {
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[2K{}", self.text());
                let _ = err.flush();
                self.last_draw = Some(Instant::now());
                self.drawn = true;
            }
        } else if done >= self.next_line {
            eprintln!("{}", self.text());
            while self.next_line <= done {
                self.next_line += self.every;
            }
        }
    }

    /// Prints a message on its own line without garbling the counter.
    pub fn note(&mut self, msg: &str) {
        if self.tty && self.drawn {
            eprint!("\r\x1b[2K");
            self.last_draw = None;
        }
        eprintln!("{msg}");
    }

    /// Final state: the counter's last value on a terminal (and a newline).
    pub fn finish(&mut self) {
        if self.tty && (self.drawn || self.done > 0) {
            eprintln!("\r\x1b[2K{}", self.text());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_flatten_newlines() {
        let mut t = Table::new(&["ID", "TICKET", "ERROR"]);
        t.row(vec!["1".into(), "ACC-1".into(), "boom\nagain".into()]);
        t.row(vec!["12".into(), "-".into(), "x".into()]);
        assert_eq!(t.render(), "ID  TICKET  ERROR\n1   ACC-1   boom again\n12  -       x\n");
    }
}
