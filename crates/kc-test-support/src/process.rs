//! A child process that is killed and reaped when its guard drops, on success, error or panic.

use std::process::{Child, ExitStatus};

/// Owns a child process: dropping the guard kills it (SIGKILL) and waits for it, and says so on stdout (for the
/// person at `cargo xtask`'s terminal; a test's output is captured).
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Child,
}

impl ChildGuard {
    /// Guards `child`, called `name` in messages.
    pub fn new(name: impl Into<String>, child: Child) -> Self {
        Self { name: name.into(), child }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The child itself (e.g. to wait for it with its stdin kept open).
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The exit status if the process has ended, without blocking.
    ///
    /// # Errors
    /// As [`Child::try_wait`].
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }
}

impl Drop for ChildGuard {
    #[allow(clippy::print_stdout)] // The xtask reports every process it stops.
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return; // already ended and reaped
        }
        if let Err(err) = self.child.kill() {
            eprintln!("could not kill {} (pid {}): {err}", self.name, self.child.id());
        }
        match self.child.wait() {
            Ok(status) => println!("stopped {} (pid {}, {status})", self.name, self.child.id()),
            Err(err) => eprintln!("waiting for {} (pid {}): {err}", self.name, self.child.id()),
        }
    }
}
