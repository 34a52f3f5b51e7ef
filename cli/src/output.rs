//! Writing to stdout. `println!` panics when stdout is a closed pipe
//! (`tote ps | head -1`); docker just ends there, and so does tote.

use std::fmt;
use std::io::{self, Write};

/// The code a process killed by SIGPIPE reports (128 + 13), what docker
/// gives in the same case.
const EXIT_BROKEN_PIPE: i32 = 141;

/// Writes formatted text to stdout; a closed pipe ends tote quietly.
pub fn write(args: fmt::Arguments<'_>, newline: bool) {
    let mut stdout = io::stdout().lock();
    let result = stdout.write_fmt(args).and_then(|()| if newline { stdout.write_all(b"\n") } else { Ok(()) });
    if let Err(error) = result {
        if error.kind() == io::ErrorKind::BrokenPipe {
            std::process::exit(EXIT_BROKEN_PIPE);
        }
        eprintln!("cannot write to stdout: {error}");
    }
}

/// `println!` for tote's output.
macro_rules! outln {
    () => { $crate::output::write(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::output::write(format_args!($($arg)*), true) };
}

/// `print!` for tote's output.
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::write(format_args!($($arg)*), false) };
}

pub(crate) use {out, outln};
